//! Health: the task that keeps the session alive, polls SNMP, takes traps, and withdraws and
//! restores endpoints with the registrar.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::snmp::Monitor;

use super::*;

impl Ensm {
    /// Endpoints that must be withdrawn now, with why.
    pub(super) fn wanted_down(&self) -> BTreeMap<String, String> {
        let h = self.health();
        let mut out = BTreeMap::new();
        for e in &self.inner.device.endpoints {
            if !h.reachable {
                out.insert(
                    e.name.clone(),
                    format!(
                        "device {} unreachable: {}",
                        self.inner.device.name,
                        h.last_error.clone().unwrap_or_default()
                    ),
                );
            } else if let Some(i) = e.interfaces.iter().find(|i| h.down_interfaces.contains(*i)) {
                out.insert(
                    e.name.clone(),
                    format!("device {} interface {i} is down", self.inner.device.name),
                );
            }
        }
        out
    }

    /// Tells the registrar about endpoints whose state changed.
    pub(super) async fn publish(&self) {
        let want = self.wanted_down();
        // Withdrawals are re-asserted every round: an endpoint applied again (a controller
        // restart, an operator's re-apply) comes back up in the controller, and must not stay
        // up while its device is down. Setting what is already set changes nothing there.
        let (to_down, to_up): (Vec<(String, String)>, Vec<String>) = {
            let h = self.health();
            (
                want.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
                h.withdrawn
                    .iter()
                    .filter(|n| !want.contains_key(*n))
                    .cloned()
                    .collect(),
            )
        };
        for (n, reason) in to_down {
            match self
                .inner
                .registrar
                .set_endpoint_down(&n, true, &reason)
                .await
            {
                Ok(()) => {
                    if self.health().withdrawn.insert(n.clone()) {
                        self.tell(Happened::EndpointWithdrawn { endpoint: n }, reason);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %n, error = %e, "withdrawing endpoint failed; retrying")
                }
            }
        }
        for n in to_up {
            let reason = format!("device {} healthy", self.inner.device.name);
            match self
                .inner
                .registrar
                .set_endpoint_down(&n, false, &reason)
                .await
            {
                Ok(()) => {
                    if self.health().withdrawn.remove(&n) {
                        self.tell(Happened::EndpointRestored { endpoint: n }, reason);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %n, error = %e, "restoring endpoint failed; retrying")
                }
            }
        }
    }

    /// Tells the controller (nobody listening is fine: the registrar was told too).
    fn tell(&self, happened: Happened, detail: String) {
        let _ = self.inner.events.send(DriverEvent {
            scope: Scope::Device(self.inner.device.name.clone()),
            happened,
            detail,
        });
    }

    /// Applies what a poll says: an interface goes down on its second not-up poll in a row.
    pub(super) fn polled_interfaces(&self, statuses: &[(String, bool)]) {
        let confirmed: Vec<(String, bool)> = {
            let mut h = self.health();
            statuses
                .iter()
                .filter_map(|(n, up)| {
                    if *up {
                        h.doubtful.remove(n);
                        Some((n.clone(), true))
                    } else if h.doubtful.insert(n.clone()) {
                        None
                    } else {
                        Some((n.clone(), false))
                    }
                })
                .collect()
        };
        self.set_interfaces(&confirmed);
    }

    /// Applies what SNMP says about the data interfaces.
    /// A change is told to the controller: the link on that interface is down (or back).
    pub(super) fn set_interfaces(&self, statuses: &[(String, bool)]) {
        let changed: Vec<(String, bool)> = {
            let mut h = self.health();
            statuses
                .iter()
                .filter(|(name, up)| {
                    if *up {
                        h.down_interfaces.remove(name)
                    } else {
                        h.down_interfaces.insert(name.clone())
                    }
                })
                .cloned()
                .collect()
        };
        let device = &self.inner.device.name;
        for (interface, up) in changed {
            tracing::warn!(%device, %interface, up, "data interface changed");
            let (happened, detail) = if up {
                let detail = format!("device {device} interface {interface} is up");
                (Happened::LinkUp { interface }, detail)
            } else {
                let detail = format!("device {device} interface {interface} is down");
                (Happened::LinkDown { interface }, detail)
            };
            self.tell(happened, detail);
        }
    }

    /// The health task: keepalive/reconnect, SNMP poll and traps, publishing endpoint state.
    pub(super) async fn run(self) {
        let snmp = self.inner.device.snmp.clone();
        let interval = snmp
            .as_ref()
            .map(|s| s.poll_interval)
            .unwrap_or(Duration::from_secs(2));
        let (trap_tx, mut trap_rx) = tokio::sync::mpsc::channel::<crate::snmp::LinkTrap>(64);
        let trap_setup = snmp.as_ref().and_then(|s| {
            s.trap_listen
                .map(|l| (l, s.trap_community.clone(), s.target.addr.ip()))
        });
        if let Some((listen, community, agent)) = trap_setup {
            let device = self.inner.device.name.clone();
            // Traps are v2c: only with the device's community, and only from the device.
            let receiver = match &community {
                Some(c) => crate::snmp::trap_receiver(listen, c).await,
                None => Err("traps need snmp.community (v3 traps are not accepted)".to_string()),
            };
            match receiver {
                Ok(rx) => {
                    tracing::info!(%device, %listen, "listening for linkDown/linkUp traps");
                    tokio::spawn(async move {
                        loop {
                            let n = match rx.recv().await {
                                Ok(n) => n,
                                Err(e) => {
                                    tracing::debug!(%device, error = %e, "trap receive failed");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            };
                            if n.source.ip() != agent {
                                tracing::warn!(%device, source = %n.source, "trap from another address ignored");
                                continue;
                            }
                            let Ok(oid) = n.notification.trap_oid() else {
                                continue;
                            };
                            if let Some(t) = crate::snmp::link_trap(&oid, n.notification.varbinds())
                            {
                                if trap_tx.send(t).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(%device, error = %e, "no trap receiver; relying on polls"),
            }
        }
        let mut monitor: Option<Monitor> = None;
        // A fixed cadence: traps arriving in between never postpone the next poll.
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A trap is a hint, never a verdict (v2c traps are easy to forge from the device's
        // address): it triggers a poll at once, and only what the poll confirms is applied.
        let mut trapped: Vec<(String, bool)> = Vec::new();
        loop {
            let by_trap = tokio::select! {
                _ = tick.tick() => false,
                _ = self.inner.wake.notified() => false,
                Some(t) = trap_rx.recv() => {
                    let name = self.health().if_names.get(&t.if_index).cloned();
                    let Some(name) = name else { continue };
                    tracing::info!(device = %self.inner.device.name, interface = %name, up = t.up, "link trap; confirming by a poll");
                    if trapped.len() >= 64 {
                        trapped.remove(0);
                    }
                    trapped.push((name, t.up));
                    true
                }
            };
            if !by_trap {
                if let Err(e) = self.check_device().await {
                    tracing::debug!(device = %self.inner.device.name, error = %e, "keepalive failed");
                }
            }
            if let Some(s) = &snmp {
                if monitor.is_none() {
                    monitor = Monitor::connect(s.target.clone()).await.ok();
                }
                if let Some(m) = &monitor {
                    let need_map = self.health().if_names.len() < s.interfaces.len();
                    if need_map {
                        match m.if_indexes(&s.interfaces).await {
                            Ok(map) => {
                                self.health().if_names =
                                    map.into_iter().map(|(n, i)| (i, n)).collect()
                            }
                            Err(e) => {
                                // Not answering (yet) says nothing about the data links.
                                tracing::debug!(device = %self.inner.device.name, error = %e, "SNMP walk failed");
                                self.publish().await;
                                continue;
                            }
                        }
                    }
                    let indexes: Vec<u32> = self.health().if_names.keys().copied().collect();
                    match m.poll(&indexes).await {
                        Ok(p) => {
                            let names = self.health().if_names.clone();
                            // An index that now names another interface (the device
                            // renumbered them, e.g. after a reboot): map again next round.
                            if p.interfaces
                                .iter()
                                .any(|(i, d, _)| names.get(i).is_some_and(|n| n != d))
                            {
                                self.health().if_names.clear();
                                self.publish().await;
                                continue;
                            }
                            let st: Vec<(String, bool)> = p
                                .interfaces
                                .iter()
                                .filter_map(|(i, _, s)| {
                                    names.get(i).map(|n| (n.clone(), s.is_up()))
                                })
                                .collect();
                            // An interface the device no longer lists is down.
                            let missing: Vec<(String, bool)> = s
                                .interfaces
                                .iter()
                                .filter(|n| !names.values().any(|v| v == *n))
                                .map(|n| (n.clone(), false))
                                .collect();
                            // A trap the poll agrees with is two observations: applied now.
                            let confirmed =
                                crate::snmp::confirmed_traps(&mut trapped, &st, &missing);
                            self.polled_interfaces(&st);
                            self.polled_interfaces(&missing);
                            self.set_interfaces(&confirmed);
                            if !missing.is_empty() {
                                self.health().if_names.clear();
                            }
                        }
                        Err(e) => {
                            tracing::debug!(device = %self.inner.device.name, error = %e, "SNMP poll failed");
                            // The device's health is judged by NETCONF; SNMP silence alone
                            // withdraws nothing, but the ifIndex map is refreshed.
                            self.health().if_names.clear();
                        }
                    }
                }
            }
            // Traps no poll could confirm this round are dropped.
            trapped.clear();
            self.publish().await;
        }
    }
}
