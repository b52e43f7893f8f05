//! Switches: the OpenFlow connection of each ovs node (found by the datapath id we gave its
//! br-int), its OVSDB session, and waiting for both.

use meshwire_controller::backoff::Backoff;
use meshwire_controller::driver::{DriverEvent, Happened, Scope};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_controller::driver::DriverError;
use meshwire_models::ForwarderKind;
use serde_json::Value;

use meshwire_controller::driver::Failure;

use crate::ovsdb::client::OvsdbError;

use super::*;
use crate::openflow::channel::{Switch, SwitchEvent};
use crate::openflow::Message;
use crate::ovsdb::ops::Op;
use crate::ovsdb::session::{Session, SessionConfig};
use crate::ovsdb::Client;

impl OvsDriver {
    pub(super) fn node_of_dpid(&self, dpid: u64) -> Option<String> {
        lock(&self.inner.topology)
            .nodes
            .values()
            .find(|n| n.forwarder == ForwarderKind::Ovs && plan::datapath_id(&n.name) == dpid)
            .map(|n| n.name.clone())
    }

    fn tell(&self, node: &str, happened: Happened, detail: String) {
        let _ = self.inner.events.send(DriverEvent {
            scope: Scope::Node(node.to_string()),
            happened,
            detail,
        });
    }

    pub(super) fn on_event(&self, ev: SwitchEvent) {
        match ev {
            SwitchEvent::Connected(sw) => {
                let dpid = sw.datapath_id;
                lock(&self.inner.switches).insert(dpid, sw);
                if let Some(node) = self.node_of_dpid(dpid) {
                    // A switch that (re)connects may be a restarted vswitchd: no flows, and a new
                    // internal port without the underlay address. Bootstrap it again.
                    lock(&self.inner.bootstrapped).remove(&node);
                }
                self.inner.switch_up.notify_waiters();
                let Some(node) = self.node_of_dpid(dpid) else {
                    tracing::info!(
                        dpid = format!("{dpid:#x}"),
                        "a switch that is no node of ours connected"
                    );
                    return;
                };
                tracing::info!(%node, dpid = format!("{dpid:#x}"), "switch connected; resyncing");
                self.tell(
                    &node,
                    Happened::SwitchConnected { node: node.clone() },
                    format!("switch {dpid:#x} connected"),
                );
                let d = self.clone();
                let sw = lock(&self.inner.switches).get(&dpid).cloned();
                tokio::spawn(async move {
                    // Claim the master role; a newer generation (time based) wins over a
                    // controller instance that came before this one.
                    if let Some(sw) = sw {
                        let generation_id = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|t| t.as_millis() as u64)
                            .unwrap_or(0);
                        match sw
                            .request(Message::RoleRequest(crate::openflow::Role {
                                role: ROLE_MASTER,
                                generation_id,
                            }))
                            .await
                        {
                            Ok(_) => tracing::debug!(%node, generation_id, "master role"),
                            Err(e) => tracing::warn!(%node, error = %e, "role request refused"),
                        }
                    }
                    // Jitter: a hundred switches coming back at once are not resynced in lockstep.
                    tokio::time::sleep(Backoff::RECONNECT.delay(0, dpid) / 2).await;
                    if let Err(e) = d.resync_node(&node).await {
                        tracing::warn!(%node, error = %e, "resync after reconnect failed; the reconcile loop retries");
                    }
                });
            }
            SwitchEvent::Disconnected {
                dpid,
                conn_id,
                reason,
            } => {
                // A late event of an older connection must not drop the switch's new one.
                let mut switches = lock(&self.inner.switches);
                if switches.get(&dpid).is_some_and(|s| s.conn_id == conn_id) {
                    switches.remove(&dpid);
                }
                drop(switches);
                tracing::warn!(dpid = format!("{dpid:#x}"), %reason, "switch disconnected");
                if let Some(node) = self.node_of_dpid(dpid) {
                    self.tell(
                        &node,
                        Happened::SwitchLost { node: node.clone() },
                        format!("switch {dpid:#x}: {reason}"),
                    );
                }
            }
            SwitchEvent::Error {
                dpid,
                xid,
                kind,
                code,
                offending,
            } => {
                tracing::warn!(dpid = format!("{dpid:#x}"), xid, kind, code, request = ?offending, "switch refused a request");
            }
            SwitchEvent::PortStatus { dpid, reason, port } => {
                tracing::debug!(dpid = format!("{dpid:#x}"), reason, port = %port.name, "port status");
            }
            SwitchEvent::PacketIn { .. } => {}
        }
    }

    pub(super) fn err(
        &self,
        target: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> DriverError {
        DriverError::new("ovs", target.to_string(), reason.to_string())
    }

    pub(super) fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.node_locks)
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// The node as the topology describes it.
    pub(super) fn node_info(&self, node: &str) -> Result<NodeInfo, DriverError> {
        let t = lock(&self.inner.topology);
        let n = t
            .nodes
            .get(node)
            .ok_or_else(|| self.err(format!("node {node}"), "not in the topology"))?;
        if n.forwarder != ForwarderKind::Ovs {
            return Err(self.err(
                format!("node {node}"),
                format!(
                    "its forwarder is {}; the OVS driver wires ovs nodes only",
                    n.forwarder
                ),
            ));
        }
        let ovsdb = n.ovsdb.clone().ok_or_else(|| {
            self.err(
                format!("node {node}"),
                "has no spec.ovsdb (the OVSDB remote of its Open vSwitch)",
            )
        })?;
        let uplinks = uplinks_of(&t, node);
        let uplink_nets = uplinks
            .iter()
            .map(|u| {
                let mut nets: Vec<ipnet::Ipv4Net> = t
                    .links
                    .values()
                    .filter_map(|l| l.end_at(node))
                    .filter(|e| e.interface == *u)
                    .filter_map(|e| match e.address {
                        Some(ipnet::IpNet::V4(a)) => Some(a.trunc()),
                        _ => None,
                    })
                    .collect();
                nets.sort();
                nets.dedup();
                (u.clone(), nets)
            })
            .collect();
        Ok(NodeInfo {
            ovsdb,
            uplinks,
            uplink_nets,
        })
    }

    /// The node's OVSDB session, started on first use (it reconnects by itself, with jittered
    /// exponential backoff, and keeps a replica of the node's tables).
    pub(super) fn session(&self, node: &str) -> Result<Arc<Session>, DriverError> {
        let remote = self.node_info(node)?.ovsdb;
        let mut all = lock(&self.inner.sessions);
        if let Some((s, _)) = all.get(node) {
            if s.remote() == remote {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(Session::start(
            &remote,
            SessionConfig {
                db: DB.into(),
                monitor: monitored(),
                probe: Duration::from_secs(5),
            },
        ));
        all.insert(node.to_string(), (s.clone(), 0));
        Ok(s)
    }

    /// The node's connected OVSDB client. A session that reconnected since last time may face a
    /// database that changed behind our back: the node is bootstrapped again.
    pub(super) async fn db(&self, node: &str) -> Result<Arc<Client>, DriverError> {
        let s = self.session(node)?;
        let mut client = s.client().await;
        if client.is_none() {
            s.wait_synced(s.counters().0 + 1, Duration::from_secs(3))
                .await;
            client = s.client().await;
        }
        let Some(c) = client else {
            return Err(self
                .err(
                    format!("node {node} ovsdb {}", s.remote()),
                    format!(
                        "not connected ({} connect(s) so far; the session retries with backoff)",
                        s.counters().0
                    ),
                )
                .with(Failure::Unreachable {
                    peer: format!("ovsdb-server of node {node} at {}", s.remote()),
                }));
        };
        let connects = s.counters().0;
        let mut all = lock(&self.inner.sessions);
        if let Some(entry) = all.get_mut(node) {
            if entry.1 != connects {
                if entry.1 != 0 {
                    tracing::warn!(%node, remote = %s.remote(), "OVSDB session reconnected; bootstrapping the node again");
                }
                entry.1 = connects;
                lock(&self.inner.bootstrapped).remove(node);
            }
        }
        Ok(c)
    }

    pub(super) async fn transact(
        &self,
        node: &str,
        db: &Client,
        ops: &[Op],
    ) -> Result<Vec<Value>, DriverError> {
        db.transact(DB, ops).await.map_err(|e| {
            let failure = match &e {
                OvsdbError::Io { peer, .. } | OvsdbError::Closed { peer } => Failure::Unreachable {
                    peer: format!("ovsdb-server {peer}"),
                },
                OvsdbError::Rpc { peer, error, .. }
                | OvsdbError::Transaction { peer, error, .. } => Failure::Refused {
                    by: format!("ovsdb-server {peer}"),
                    peer_error: error.clone(),
                },
            };
            self.err(format!("node {node}"), e).with(failure)
        })
    }

    /// Makes the node ready: `br-int` (ours, netdev datapath, secure fail mode, OpenFlow 1.3,
    /// our controller and datapath id) with its uplinks, the switch connected, and the node's
    /// own flows. Cheap once done.
    pub async fn ensure_node(&self, node: &str) -> Result<Switch, DriverError> {
        self.ensure_node_within(node, self.inner.switch_timeout)
            .await
    }

    /// [`OvsDriver::ensure_node`], waiting at most `wait` for the switch to connect (the
    /// reconcile loop does not wait: a node whose switch is away is reported, not waited for).
    pub(super) async fn ensure_node_within(
        &self,
        node: &str,
        wait: Duration,
    ) -> Result<Switch, DriverError> {
        let db = self.db(node).await?;
        let dpid = plan::datapath_id(node);
        if lock(&self.inner.bootstrapped).contains(node) {
            if let Some(sw) = lock(&self.inner.switches).get(&dpid).cloned() {
                return Ok(sw);
            }
        }
        let info = self.node_info(node)?;
        let uplinks = info.uplinks.clone();
        let l = self.node_lock(node);
        let _g = l.lock().await;
        self.ensure_bridge(node, &db, &uplinks).await?;
        // The underlay addresses move onto the bridge's internal port by the node's hands
        // (the legs driver), with the node's first leg and at every full set.
        let sw = self.wait_switch(node, dpid, wait).await?;
        let flows = self
            .resolve_all(node, &plan::infra_flows(node, &info.uplink_nets))
            .await?;
        self.sync_flows(
            node,
            &sw,
            flows,
            &|c| c == plan::INFRA_COOKIE,
            plan::INFRA_COOKIE,
            u64::MAX,
        )
        .await?;
        lock(&self.inner.bootstrapped).insert(node.to_string());
        Ok(sw)
    }

    pub(super) async fn wait_switch(
        &self,
        node: &str,
        dpid: u64,
        wait: Duration,
    ) -> Result<Switch, DriverError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.switch_up.notified();
            if let Some(sw) = lock(&self.inner.switches).get(&dpid).cloned() {
                return Ok(sw);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.err(
                    format!("node {node} switch {dpid:#x}"),
                    format!(
                        "not connected to {} (waited {} ms; is ovs-vswitchd running, and can it reach the controller?)",
                        self.inner.target,
                        wait.as_millis()
                    ),
                ).with(Failure::Unreachable {
                    peer: format!("ovs-vswitchd of node {node} (datapath {dpid:#x})"),
                }));
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }
}
