//! The reconcile loop: desired connections against what the data plane observes.
//!
//! Each round expires lapsed endpoint registrations, hands the driver the full desired set (it
//! sweeps leftovers and says what it sees, time-boxed by [`OBSERVE_TIMEOUT`]), then for each connection repairs it in place, heals it onto another
//! endpoint or path, closes it (client gone) or undoes it (an abandoned request). Every step
//! records in the store before memory follows, and one connection that fails (a store that does
//! not answer, a driver that refuses) never stops the others: a data-plane failure requeues it
//! with its own backoff ([`crate::requeue`]), a store failure is retried next round.

use std::time::Duration;

use meshwire_models::{Connection, ConnectionRequest, ConnectionState, ObjectKey};

use crate::controller::{Controller, Event, ReconcileReport};
use tokio::sync::broadcast;

use crate::driver::{DriverEvent, Health, Observation, Update};
use crate::error::ControllerError;
use crate::lifecycle::{Done, Steps};
use crate::state::Avoid;

/// How long one round waits for the data plane's observation: a last resort above the
/// per-peer bound ([`crate::driver::PEER_OBSERVE_TIMEOUT`]) that composite drivers apply.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(12);

impl Controller {
    /// Runs [`reconcile_once`](Self::reconcile_once) every `interval`, and at once when the
    /// driver reports something in the data plane (events that arrive together make one
    /// round), until the task is dropped.
    pub fn spawn_reconciler(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        // Subscribed before the task runs: nothing reported from here on is missed.
        let mut events = this.inner.driver.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    got = next_event(&mut events) => {
                        let Some(first) = got else {
                            events = None;
                            continue;
                        };
                        // A lag (None) means events were missed: look.
                        let mut look = first.as_ref().is_none_or(needs_a_round);
                        if let Some(e) = first {
                            this.note(e);
                        }
                        // What else arrived with it joins this round.
                        while let Some(Ok(e)) = events.as_mut().map(|rx| rx.try_recv()) {
                            look |= needs_a_round(&e);
                            this.note(e);
                        }
                        if !look {
                            continue;
                        }
                    }
                }
                match this.reconcile_once().await {
                    Ok(r) if !r.is_quiet() => tracing::info!(report = ?r, "reconciled"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile round failed; retrying next interval")
                    }
                }
            }
        })
    }

    /// Logs a driver's event and passes it on to watchers.
    fn note(&self, e: DriverEvent) {
        if !matches!(e.happened, crate::driver::Happened::NodeSriov { .. }) {
            tracing::info!(scope = %e.scope, happened = ?e.happened, detail = %e.detail, "data-plane event");
        }
        self.link_event(&e);
        self.agent_event(&e);
        self.sriov_event(&e);
        // Watchers get a node's pools without its tokens: a token claims a VF.
        let happened = match e.happened {
            crate::driver::Happened::NodeSriov { mut sriov } => {
                sriov.tokens.clear();
                crate::driver::Happened::NodeSriov { sriov }
            }
            other => other,
        };
        self.emit(Event::DataPlane {
            scope: e.scope.to_string(),
            happened,
            detail: e.detail,
        });
    }

    /// One round: expire lapsed endpoints, compare desired connections with what the driver
    /// observes, then repair, heal or close each that differs.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, ControllerError> {
        let _one = self.inner.reconciling.lock().await;
        let mut report = ReconcileReport::default();
        self.prune_requeue();
        let now = self.now();
        let expired = self.state().expired_endpoints(now);
        for name in expired {
            let key = ObjectKey {
                kind: meshwire_models::ObjectKind::NetworkServiceEndpoint,
                name: name.clone(),
            };
            // One endpoint the store cannot delete now is tried again next round; it must not
            // stop the others, nor the healing below.
            match self.delete(std::slice::from_ref(&key)).await {
                Ok(_) => {
                    tracing::info!(endpoint = %name, "endpoint registration expired");
                    report.expired.push(name);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "expiring the endpoint failed; retrying next round");
                    report.failed.push(format!("NetworkServiceEndpoint/{name}"));
                }
            }
        }
        let full = self.desired_set();
        // A data plane that does not answer in time (or fails) is reported and treated as
        // having seen nothing wrong: withdrawn endpoints, failed links and abandoned requests
        // are still acted on this round.
        let observed = match tokio::time::timeout(OBSERVE_TIMEOUT, self.converge_all(&full)).await {
            Ok(Ok(r)) => {
                if r.swept > 0 {
                    tracing::info!(
                        swept = r.swept,
                        version = r.version,
                        "removed leftovers no desired connection holds"
                    );
                }
                r.observation
            }
            Ok(Err(e)) => {
                self.driver_failed();
                tracing::warn!(error = %e, "the data plane did not take the full set; acting on what the controller knows");
                report.failed.push("(observe)".into());
                Observation::default()
            }
            Err(_) => {
                self.driver_failed();
                tracing::warn!(timeout = ?OBSERVE_TIMEOUT, "the data plane did not answer the full set in time; acting on what the controller knows");
                report.failed.push("(observe)".into());
                Observation::default()
            }
        };
        let Update::Full {
            connections: desired,
            ..
        } = full.update
        else {
            return Ok(report);
        };
        let desired = desired.into_owned();
        for c in desired {
            let _guard = self.lock_key(c.client.workload(), &c.network_service).await;
            // The connection may have been closed or rewired while we waited.
            let Some(current) = self.connection(&c.id) else {
                continue;
            };
            // Changed since the snapshot (a request finishing, a heal): what was observed may
            // predate it. The next round looks again.
            if current.generation != c.generation || current.updated_at_ms != c.updated_at_ms {
                continue;
            }
            // A request being set up is its request's; one nobody sets up was abandoned (a
            // crash, a cancelled caller): nobody was told it exists, so it is undone.
            if current.state == ConnectionState::Programming {
                if self.is_in_flight(&current.id) {
                    continue;
                }
                tracing::info!(connection = %current.id, "abandoned request; undoing it");
                if self.undo(&current, "abandoned request").await {
                    self.emit(Event::Connection {
                        id: current.id.clone(),
                        state: ConnectionState::Failed,
                        endpoint: current.network_service_endpoint_name.clone(),
                        detail: Some("abandoned request undone".into()),
                    });
                    report.undone.push(current.id.clone());
                } else {
                    report.failed.push(current.id.clone());
                }
                continue;
            }
            // An onward leg whose previous leg is gone (a crash between the two legs, a close
            // that failed half-way): nobody uses it.
            if self.is_orphan_leg(&current) {
                tracing::info!(connection = %current.id, previous = ?current.chain.previous, "orphan onward leg of a service chain; closing");
                drop(_guard);
                match self.close(&current.id).await {
                    Ok(_) => report.closed.push(current.id.clone()),
                    Err(e) => {
                        tracing::warn!(connection = %current.id, error = %e, "closing the orphan leg failed; retrying next round");
                        report.failed.push(current.id.clone());
                    }
                }
                continue;
            }
            let (endpoint_ok, broken_link) = {
                let s = self.state();
                // A leg to another domain's router: that domain answers for its end, and the
                // federation for the leg (crate::federation); here it is only repaired.
                let ep = c.remote_domain().is_some()
                    || s.endpoint(&c.network_service_endpoint_name)
                        .is_some_and(|e| !e.down);
                let t = s.topology();
                let broken = c
                    .path
                    .iter()
                    .filter_map(|p| p.link.as_ref())
                    .find(|l| t.links.get(*l).is_none_or(|l| !l.up))
                    .cloned();
                (ep, broken)
            };
            let health = observed
                .connections
                .get(&c.id)
                .cloned()
                .unwrap_or(Health::Healthy);
            // One that failed lately waits out its backoff alone; the round goes on.
            let fine = matches!(health, Health::Healthy)
                && endpoint_ok
                && broken_link.is_none()
                && current.state == ConnectionState::Up;
            let gone = matches!(health, Health::ClientGone { .. });
            if !fine && !gone && self.is_deferred(&c.id) {
                report.deferred.push(c.id.clone());
                continue;
            }
            let health = match health {
                Health::EndpointLost { reason } | Health::PathFailed { reason, .. }
                    if c.remote_domain().is_some() =>
                {
                    Health::Missing { reason }
                }
                h => h,
            };
            let outcome = match (&health, endpoint_ok, broken_link) {
                (Health::ClientGone { reason }, _, _) => {
                    tracing::info!(connection = %c.id, %reason, "client gone; closing");
                    drop(_guard);
                    // A failed close is retried next round; it must not stall the others.
                    match self.close(&c.id).await {
                        Ok(_) => report.closed.push(c.id.clone()),
                        Err(e) => {
                            tracing::warn!(connection = %c.id, error = %e, "closing failed; retrying next round")
                        }
                    }
                    continue;
                }
                (_, false, _) => {
                    let why = format!("endpoint {} is gone", c.network_service_endpoint_name);
                    self.heal(
                        current,
                        Avoid::endpoint(&c.network_service_endpoint_name),
                        why,
                    )
                    .await
                }
                (Health::EndpointLost { reason }, _, _) => {
                    self.state()
                        .set_endpoint_down(&c.network_service_endpoint_name, true);
                    let why = format!(
                        "endpoint {} lost: {reason}",
                        c.network_service_endpoint_name
                    );
                    self.heal(
                        current,
                        Avoid::endpoint(&c.network_service_endpoint_name),
                        why,
                    )
                    .await
                }
                (
                    Health::PathFailed {
                        reason,
                        links,
                        vertices,
                    },
                    _,
                    _,
                ) => {
                    self.heal(
                        current,
                        Avoid {
                            links: links.clone(),
                            vertices: vertices.clone(),
                            ..Default::default()
                        },
                        format!("path failed: {reason}"),
                    )
                    .await
                }
                (_, true, Some(link)) => {
                    self.heal(
                        current,
                        Avoid {
                            links: vec![link.clone()],
                            ..Default::default()
                        },
                        format!("link {link} is down"),
                    )
                    .await
                }
                (Health::Missing { reason }, true, None) => self.repair(current, reason).await,
                (Health::Healthy, true, None) if current.state != ConnectionState::Up => {
                    self.repair(current, "unfinished").await
                }
                (Health::Healthy, true, None) => Ok(Outcome::Nothing),
            };
            let outcome = match outcome {
                Ok(o) => o,
                // One connection the store cannot record now is retried next round; it never
                // stops the round.
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "reconciling the connection failed; retrying next round");
                    report.failed.push(c.id.clone());
                    continue;
                }
            };
            match outcome {
                Outcome::Nothing => {}
                Outcome::Repaired => report.repaired.push(c.id.clone()),
                Outcome::Healed => report.healed.push(c.id.clone()),
                Outcome::StillHealing => report.still_healing.push(c.id.clone()),
                Outcome::Requeued => report.failed.push(c.id.clone()),
            }
        }
        // vL3 meshes: routers joined and left, members' routes where they live now.
        self.vl3_sync(true).await;
        Ok(report)
    }

    /// Re-applies a connection where it is (the lifecycle's wire and record steps). A data
    /// plane that fails requeues it; its wiring is the desired one, so nothing is undone.
    async fn repair(&self, c: Connection, reason: &str) -> Result<Outcome, ControllerError> {
        tracing::info!(connection = %c.id, %reason, "repairing in place");
        let mut steps = Steps::default();
        let wired = self.wire_step(&mut steps, &c).await;
        steps.hold();
        match wired {
            Ok(()) => {
                self.requeue_clear(&c.id);
                let now = self.now();
                let mut up = c.clone();
                up.state = ConnectionState::Up;
                up.updated_at_ms = now;
                up.last_error = None;
                // Stored first; memory follows what the store holds.
                self.persist(&up).await?;
                self.state().update(&c.id, |m| {
                    m.state = ConnectionState::Up;
                    m.updated_at_ms = now;
                    m.last_error = None;
                });
                self.emit(Event::Connection {
                    id: c.id.clone(),
                    state: ConnectionState::Up,
                    endpoint: c.network_service_endpoint_name.clone(),
                    detail: Some("repaired".into()),
                });
                Ok(Outcome::Repaired)
            }
            Err(e) => {
                let wait = self.requeue_after(&c.id, &e);
                let msg = e.to_string();
                tracing::warn!(connection = %c.id, error = %msg, retryable = e.retryable(), retry_in_ms = wait.as_millis() as u64, "repair failed; requeued");
                let updated = self.state().update(&c.id, |c| c.last_error = Some(msg));
                if let Some(c) = updated {
                    self.persist(&c).await?;
                }
                Ok(Outcome::Requeued)
            }
        }
    }

    /// Moves a connection onto another endpoint or path. The old wiring and its claims are kept
    /// until a replacement is planned, so a failed heal changes nothing but the state.
    async fn heal(
        &self,
        old: Connection,
        mut avoid: Avoid,
        why: String,
    ) -> Result<Outcome, ControllerError> {
        // An onward leg never heals onto an endpoint already in its chain.
        if let Some(previous) = old
            .chain
            .previous
            .as_deref()
            .and_then(|p| self.connection(p))
        {
            avoid.chain = self.chain_endpoints(&previous);
        }
        let now = self.now();
        let marked = self.state().update(&old.id, |c| {
            c.state = ConnectionState::Healing;
            c.updated_at_ms = now;
            c.last_error = Some(why.clone());
        });
        if let Some(m) = &marked {
            if old.state != ConnectionState::Healing {
                self.persist(m).await?;
                tracing::warn!(connection = %old.id, reason = %why, "healing");
                self.emit(Event::Connection {
                    id: old.id.clone(),
                    state: ConnectionState::Healing,
                    endpoint: old.network_service_endpoint_name.clone(),
                    detail: Some(why.clone()),
                });
            }
        }
        // A vL3 peer leg joins two given routers: it heals between them or not at all.
        if old
            .vl3
            .as_ref()
            .is_some_and(|v| v.role == meshwire_models::Vl3Role::Peer)
        {
            avoid.pinned = Some(old.network_service_endpoint_name.clone());
        }
        let req = ConnectionRequest {
            network_service: old.network_service.clone(),
            client: old.client.clone(),
            labels: old.labels.clone(),
            mechanisms: old.preferences.clone(),
            interface: Some(old.interface.clone()),
            excluded_prefixes: old.ip_context.excluded_prefixes.clone(),
            // A healed VF connection claims a VF again with the same token.
            sriov_token: old.sriov_token().map(str::to_string),
        };
        let planned = self
            .state()
            .plan(&req, &old.id, now, &avoid, Some(&old.interface));
        let mut steps = Steps::default();
        let mut new = match planned {
            Ok(n) => {
                steps.did(Done::Claimed(Box::new(n.clone())));
                n
            }
            Err(e) => {
                let msg = format!("{why}; no replacement yet: {e}");
                let updated = self.state().update(&old.id, |c| c.last_error = Some(msg));
                if let Some(c) = updated {
                    self.persist(&c).await?;
                }
                return Ok(Outcome::StillHealing);
            }
        };
        new.chain.previous = old.chain.previous.clone();
        // A chain element keeps its onward leg on the same endpoint; another endpoint gets an
        // onward leg of its own, and the old one is closed once the heal holds.
        if new.network_service_endpoint_name == old.network_service_endpoint_name {
            new.chain.onward = old.chain.onward.clone();
        } else {
            match self.onward_step(&mut steps, &new).await {
                Ok(b) => new.chain.onward = b.map(|b| b.id),
                Err(e) => {
                    self.unwind(steps, &new, "no onward leg").await;
                    let msg = format!(
                        "{why}; replacement via {} has no onward leg: {e}",
                        new.network_service_endpoint_name
                    );
                    let updated = self.state().update(&old.id, |c| c.last_error = Some(msg));
                    if let Some(c) = updated {
                        self.persist(&c).await?;
                    }
                    return Ok(Outcome::StillHealing);
                }
            }
        }
        // Break before make: the replacement reuses the client's interface name.
        if let Err(e) = self.unwire(&old).await {
            tracing::warn!(connection = %old.id, error = %e, "removing the old wiring failed; continuing");
        }
        if let Err(e) = self.wire_step(&mut steps, &new).await {
            let wait = self.requeue_after(&old.id, &e);
            tracing::warn!(connection = %old.id, endpoint = %new.network_service_endpoint_name, error = %e, retryable = e.retryable(), retry_in_ms = wait.as_millis() as u64, "replacement failed; requeued");
            self.unwind(steps, &new, "replacement failed").await;
            let msg = format!(
                "{why}; replacement via {} failed: {e}",
                new.network_service_endpoint_name
            );
            let updated = self.state().update(&old.id, |c| c.last_error = Some(msg));
            if let Some(c) = updated {
                self.persist(&c).await?;
            }
            return Ok(Outcome::StillHealing);
        }
        new.state = ConnectionState::Up;
        new.generation = old.generation + 1;
        new.created_at_ms = old.created_at_ms;
        new.updated_at_ms = self.now();
        new.last_error = Some(format!("healed: {why}"));
        // Stored before it is live in memory: if the store cannot take it, the replacement is
        // taken down again and the connection stays healing with its old claims.
        if let Err(e) = self.persist(&new).await {
            self.unwind(steps, &new, "recording the replacement failed")
                .await;
            let msg = format!("{why}; recording the replacement failed: {e}");
            self.state().update(&old.id, |c| c.last_error = Some(msg));
            return Err(e);
        }
        steps.hold();
        {
            let mut s = self.state();
            s.remove_connection(&old.id);
            s.commit(new.clone());
        }
        self.requeue_clear(&new.id);
        tracing::info!(connection = %new.id, from = %old.network_service_endpoint_name, to = %new.network_service_endpoint_name, "healed");
        if old.chain.onward != new.chain.onward {
            self.close_onward(&old.id, old.chain.onward.as_deref())
                .await;
        }
        self.emit(Event::Connection {
            id: new.id.clone(),
            state: ConnectionState::Up,
            endpoint: new.network_service_endpoint_name.clone(),
            detail: Some(format!("healed: {why}")),
        });
        Ok(Outcome::Healed)
    }
}

enum Outcome {
    Nothing,
    Repaired,
    Healed,
    StillHealing,
    /// The data plane failed it; it waits its backoff.
    Requeued,
}

/// Whether an event calls for a round at once. An agent that went away only informs (its
/// node keeps forwarding; its lease's end is the event that heals). A link's state only informs (a device whose
/// data link is down withdraws its endpoints, and that event heals). A switch that (re)connects or goes is the
/// Open vSwitch driver's to handle first: it bootstraps and resyncs a reconnected switch itself,
/// and the interval's round looks after it, as before events existed (with a round at once on
/// top, TCP through a restarted ovs-vswitchd did not resume in the labs under a full test run).
fn needs_a_round(e: &DriverEvent) -> bool {
    !matches!(
        e.happened,
        crate::driver::Happened::SwitchConnected { .. }
            | crate::driver::Happened::SwitchLost { .. }
            | crate::driver::Happened::LinkDown { .. }
            | crate::driver::Happened::LinkUp { .. }
            | crate::driver::Happened::NodeDetached { .. }
            | crate::driver::Happened::NodeSriov { .. }
    )
}

/// The driver's next event: `Some(Some(e))`, or `Some(None)` when some were missed (look
/// anyway), or `None` when the stream ended. Never returns without a stream.
async fn next_event(
    events: &mut Option<broadcast::Receiver<DriverEvent>>,
) -> Option<Option<DriverEvent>> {
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(e) => Some(Some(e)),
        Err(broadcast::error::RecvError::Lagged(n)) => {
            tracing::warn!(
                missed = n,
                "data-plane events lagged; looking at everything"
            );
            Some(None)
        }
        Err(broadcast::error::RecvError::Closed) => None,
    }
}
