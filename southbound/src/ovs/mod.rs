//! The Open vSwitch data plane: OVSDB for bridges and ports, OpenFlow 1.3 for flows, netlink for
//! the veth legs between workloads and the node's bridge.
//!
//! ```text
//!  Controller ─apply/remove/observe─▶ OvsDriver ──plan::plan (pure)──▶ legs, tunnel ports, flow templates
//!                                        │
//!                                        ├─ KernelDriver helpers: workload ⇄ node veth legs (netlink)
//!                                        ├─ per node: ovsdb::Client (reconnects with jittered backoff)
//!                                        │    br-int, uplinks, flow-based tunnel ports, leg ports
//!                                        └─ per node: openflow Switch (the node's vswitchd dials our
//!                                             listener; known by the datapath id we gave br-int)
//!                                             flows diffed by cookie, changes applied in one bundle
//! ```
//!
//! Ownership: rows we create carry `external_ids:meshwire-owner=meshwire` (ports also
//! `meshwire-connection=<id>`); flows carry a cookie whose top 16 bits are [`plan::COOKIE_TAG`].
//! Resync reads only what carries these marks, so flows, ports and bridges of others are never
//! touched.
//!
//! Reconciliation: `observe` computes, per node, the full set of flows the desired connections
//! need, reads the installed flows with our tag, and applies the difference (deletes, adds,
//! modifies) atomically in one bundle. Unchanged flows are not touched, so their counters and
//! durations survive a controller restart; after an ovs-vswitchd restart (which loses all flows)
//! the switch is resynced as soon as it reconnects.

pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meshwire_controller::driver::{Driver, DriverError, Health, Observation};
use meshwire_models::{Connection, ForwarderKind, Topology};
use serde_json::{json, Value};

use crate::kernel::wiring::End;
use crate::kernel::{netns, KernelDriver};
use crate::openflow::channel::{self, Switch, SwitchEvent};
use crate::openflow::{
    Action, FlowMod, FlowModCommand, Instruction, Message, MultipartReply, MultipartRequest,
    OxmField, ANY, NO_BUFFER,
};
use crate::ovsdb::ops::{self, cond, Op, OWNER_KEY};
use crate::ovsdb::session::{Session, SessionConfig};
use crate::ovsdb::Client;
use plan::{Act, FlowTemplate, PortRef, TunnelPort, Uplinks, BRIDGE};

/// `external_ids` key naming the connection a port belongs to.
pub const CONNECTION_KEY: &str = "meshwire-connection";
const DB: &str = "Open_vSwitch";
/// OFPP_LOCAL.
const PORT_LOCAL: u32 = 0xffff_fffe;
/// OFPCR_ROLE_MASTER.
const ROLE_MASTER: u32 = 2;

/// Where switches reach the controller.
#[derive(Debug, Clone)]
pub struct OvsConfig {
    /// The OpenFlow listener (switches connect here).
    pub listen: SocketAddr,
    /// What bridges are told to dial (`tcp:IP:PORT`); defaults to `tcp:<listen>`. Needed when
    /// listening on 0.0.0.0.
    pub advertise: Option<String>,
    /// How long `apply` waits for a node's switch to connect.
    pub switch_timeout: Duration,
    /// TLS with client certificates for switches (`ssl:` targets); `None`: plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Default for OvsConfig {
    fn default() -> Self {
        OvsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6653)),
            advertise: None,
            switch_timeout: Duration::from_secs(15),
            tls: None,
        }
    }
}

/// What one flow sync changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

impl SyncStats {
    pub fn changed(&self) -> usize {
        self.added + self.modified + self.deleted
    }
}

/// A flow with port numbers: what is compared with the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    pub cookie: u64,
    pub priority: u16,
    /// in_port first, then the others in a canonical order.
    pub matches: Vec<OxmField>,
    pub actions: Vec<Action>,
}

/// Canonical key of a flow: priority and its match fields in a fixed order.
fn flow_key(priority: u16, matches: &[OxmField]) -> (u16, Vec<Vec<u8>>) {
    let mut m: Vec<Vec<u8>> = matches
        .iter()
        .map(|f| {
            let mut v = Vec::new();
            f.encode(&mut v);
            v
        })
        .collect();
    m.sort();
    (priority, m)
}

/// The flow mods that turn `installed` into `desired`: deletes (strict, by our cookie), adds and
/// modifies. Flows present and equal are left alone. Pure.
pub fn diff_flows(
    installed: &[FlowSpec],
    desired: &[FlowSpec],
    may_delete: &(dyn Fn(u64) -> bool + Sync),
) -> (Vec<FlowMod>, SyncStats) {
    let mut stats = SyncStats::default();
    let have: HashMap<_, &FlowSpec> = installed
        .iter()
        .map(|f| (flow_key(f.priority, &f.matches), f))
        .collect();
    let want: HashMap<_, &FlowSpec> = desired
        .iter()
        .map(|f| (flow_key(f.priority, &f.matches), f))
        .collect();
    let mut mods = Vec::new();
    for (k, f) in &have {
        if !want.contains_key(k) && may_delete(f.cookie) {
            stats.deleted += 1;
            mods.push(flow_mod(FlowModCommand::DeleteStrict, f, u64::MAX));
        }
    }
    for (k, f) in &want {
        match have.get(k) {
            None => {
                stats.added += 1;
                mods.push(flow_mod(FlowModCommand::Add, f, 0));
            }
            Some(h) if h.cookie != f.cookie => {
                stats.modified += 1;
                mods.push(flow_mod(FlowModCommand::Add, f, 0));
            }
            Some(h) if h.actions != f.actions => {
                stats.modified += 1;
                mods.push(flow_mod(FlowModCommand::ModifyStrict, f, u64::MAX));
            }
            Some(_) => stats.unchanged += 1,
        }
    }
    (mods, stats)
}

fn flow_mod(command: FlowModCommand, f: &FlowSpec, cookie_mask: u64) -> FlowMod {
    let delete = matches!(
        command,
        FlowModCommand::Delete | FlowModCommand::DeleteStrict
    );
    FlowMod {
        cookie: f.cookie,
        cookie_mask,
        table_id: 0,
        command,
        idle_timeout: 0,
        hard_timeout: 0,
        priority: f.priority,
        buffer_id: NO_BUFFER,
        out_port: ANY,
        out_group: ANY,
        flags: 0,
        matches: f.matches.clone(),
        instructions: if delete {
            vec![]
        } else {
            vec![Instruction::ApplyActions(f.actions.clone())]
        },
    }
}

/// Reads the switch's flows in scope (`cookie`/`mask`, all tables) and applies the difference to
/// `desired` atomically in one bundle; `may_delete` guards which installed flows may go. Flows
/// already as desired are not touched (their counters and durations survive).
pub async fn sync_flows(
    sw: &Switch,
    desired: Vec<FlowSpec>,
    may_delete: &(dyn Fn(u64) -> bool + Sync),
    cookie: u64,
    mask: u64,
) -> Result<SyncStats, channel::ChannelError> {
    let parts = sw
        .request(Message::MultipartRequest(MultipartRequest::Flow {
            flags: 0,
            table_id: 0xff,
            out_port: ANY,
            out_group: ANY,
            cookie,
            cookie_mask: mask,
            matches: vec![],
        }))
        .await?;
    let installed: Vec<FlowSpec> = parts
        .iter()
        .flat_map(|m| match m {
            Message::MultipartReply(MultipartReply::Flow { flows, .. }) => {
                flows.iter().map(from_stats).collect::<Vec<_>>()
            }
            _ => vec![],
        })
        .collect();
    let (mods, stats) = diff_flows(&installed, &desired, may_delete);
    if !mods.is_empty() {
        sw.bundle(mods.into_iter().map(Message::FlowMod).collect())
            .await?;
    }
    Ok(stats)
}

/// The flow mod that adds `f` (for bulk installs and benchmarks).
pub fn add_flow(f: &FlowSpec) -> FlowMod {
    flow_mod(FlowModCommand::Add, f, 0)
}

fn resolve(t: &FlowTemplate, ports: &HashMap<String, u32>) -> Result<FlowSpec, String> {
    let num = |p: &PortRef| match p {
        PortRef::Local => Ok(PORT_LOCAL),
        PortRef::Name(n) => ports
            .get(n)
            .copied()
            .ok_or_else(|| format!("port {n} has no OpenFlow number on {}", t.node)),
    };
    let mut matches = vec![OxmField::InPort(num(&t.in_port)?)];
    matches.extend(t.matches.iter().cloned());
    let actions = t
        .actions
        .iter()
        .map(|a| match a {
            Act::Output(p) => num(p).map(|port| Action::Output { port, max_len: 0 }),
            Act::Raw(a) => Ok(a.clone()),
        })
        .collect::<Result<_, _>>()?;
    Ok(FlowSpec {
        cookie: t.cookie,
        priority: t.priority,
        matches,
        actions,
    })
}

fn from_stats(s: &crate::openflow::FlowStats) -> FlowSpec {
    let actions = s
        .instructions
        .iter()
        .flat_map(|i| match i {
            Instruction::ApplyActions(a) => a.clone(),
            _ => vec![],
        })
        .collect();
    FlowSpec {
        cookie: s.cookie,
        priority: s.priority,
        matches: s.matches.clone(),
        actions,
    }
}

/// What the driver needs of an ovs node.
struct NodeInfo {
    netns: Option<String>,
    ovsdb: String,
    /// Its ends of every link: ports of br-int.
    uplinks: Vec<String>,
    /// The addresses of those ends: they live on br-int's internal port.
    addrs: Vec<ipnet::IpNet>,
    /// Each uplink with the IPv4 subnets behind it.
    uplink_nets: Vec<(String, Vec<ipnet::Ipv4Net>)>,
}

/// Interface name → OpenFlow port number.
type PortNumbers = HashMap<String, u32>;
/// Port name → the connection it belongs to.
type PortOwners = HashMap<String, String>;

/// The tables a node's OVSDB session keeps in its replica.
fn monitored() -> Value {
    let mut m = serde_json::Map::new();
    for t in ["Open_vSwitch", "Bridge", "Port", "Interface", "Controller"] {
        m.insert(t.to_string(), json!([{}]));
    }
    Value::Object(m)
}

/// Desired connections as the driver last learnt them (apply, remove, observe), with sequence
/// numbers so an observe that started earlier neither resurrects a removed connection nor drops
/// one applied meanwhile.
#[derive(Default)]
struct Desired {
    seq: u64,
    conns: HashMap<String, (Connection, u64)>,
    removed: HashMap<String, u64>,
    /// `seq` when the previous `observe` took its set: anything applied later may be missing
    /// from the controller's (earlier) snapshot and is kept.
    observed_seq: u64,
}

struct Inner {
    kernel: KernelDriver,
    target: String,
    switch_timeout: Duration,
    topology: Mutex<Topology>,
    /// Per node: its OVSDB session (reconnecting, with a replica) and the connect count last seen.
    sessions: Mutex<HashMap<String, (Arc<Session>, u64)>>,
    switches: Mutex<HashMap<u64, Switch>>,
    switch_up: tokio::sync::Notify,
    desired: Mutex<Desired>,
    /// Set by the first `observe`, which brings the complete desired set. Until then (a
    /// controller that just restarted) no connection flow is deleted: the switch keeps forwarding
    /// what it has.
    desired_known: std::sync::atomic::AtomicBool,
    node_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    bootstrapped: Mutex<HashSet<String>>,
    stats: Mutex<SyncTotals>,
}

/// Counters of everything the driver changed on switches (for tests, logs and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTotals {
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    pub bundles: u64,
}

/// The Open vSwitch driver. Cheap to clone.
#[derive(Clone)]
pub struct OvsDriver {
    inner: Arc<Inner>,
    listen: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use crate::backoff::backoff;

struct TopoUplinks<'a>(&'a Topology);

impl Uplinks for TopoUplinks<'_> {
    fn uplink(&self, node: &str, link: &str) -> Option<String> {
        self.0
            .links
            .get(link)
            .and_then(|l| l.end_at(node))
            .map(|e| e.interface.clone())
    }
}

/// The underlay interfaces of `node`: its ends of every link.
fn uplinks_of(t: &Topology, node: &str) -> Vec<String> {
    let mut u: Vec<String> = t
        .links
        .values()
        .filter_map(|l| l.end_at(node).map(|e| e.interface.clone()))
        .collect();
    u.sort();
    u.dedup();
    u
}

impl OvsDriver {
    /// Starts the OpenFlow listener and the task that tracks switches.
    pub async fn start(config: OvsConfig) -> Result<OvsDriver, DriverError> {
        let tls = config.tls.is_some();
        let (listen, mut events) =
            channel::listen_with(config.listen, channel::ListenOptions { tls: config.tls })
                .await
                .map_err(|e| DriverError {
                    driver: "ovs".into(),
                    target: format!("openflow listener {}", config.listen),
                    reason: e.to_string(),
                })?;
        let inner = Arc::new(Inner {
            kernel: KernelDriver::new(),
            target: config.advertise.clone().unwrap_or_else(|| {
                if tls {
                    format!("ssl:{listen}")
                } else {
                    format!("tcp:{listen}")
                }
            }),
            switch_timeout: config.switch_timeout,
            topology: Mutex::default(),
            sessions: Mutex::default(),
            switches: Mutex::default(),
            switch_up: Default::default(),
            desired: Mutex::default(),
            desired_known: Default::default(),
            node_locks: Mutex::default(),
            bootstrapped: Mutex::default(),
            stats: Mutex::default(),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let d = OvsDriver { inner, listen };
                d.on_event(ev);
            }
        });
        tracing::info!(%listen, "OpenFlow listener ready");
        Ok(OvsDriver { inner, listen })
    }

    /// The address switches connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn totals(&self) -> SyncTotals {
        *lock(&self.inner.stats)
    }

    fn node_of_dpid(&self, dpid: u64) -> Option<String> {
        lock(&self.inner.topology)
            .nodes
            .values()
            .find(|n| n.forwarder == ForwarderKind::Ovs && plan::datapath_id(&n.name) == dpid)
            .map(|n| n.name.clone())
    }

    fn on_event(&self, ev: SwitchEvent) {
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
                    tokio::time::sleep(backoff(0, dpid) / 2).await;
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

    fn err(&self, target: impl std::fmt::Display, reason: impl std::fmt::Display) -> DriverError {
        DriverError {
            driver: "ovs".into(),
            target: target.to_string(),
            reason: reason.to_string(),
        }
    }

    fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.node_locks)
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// The node as the topology describes it.
    fn node_info(&self, node: &str) -> Result<NodeInfo, DriverError> {
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
        let mut addrs: Vec<ipnet::IpNet> = t
            .links
            .values()
            .filter_map(|l| l.end_at(node).and_then(|e| e.address))
            .filter(|a| a.addr().is_ipv4())
            .collect();
        addrs.sort();
        addrs.dedup();
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
            netns: n.netns.clone(),
            ovsdb,
            uplinks,
            addrs,
            uplink_nets,
        })
    }

    /// The node's OVSDB session, started on first use (it reconnects by itself, with jittered
    /// exponential backoff, and keeps a replica of the node's tables).
    fn session(&self, node: &str) -> Result<Arc<Session>, DriverError> {
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
    async fn db(&self, node: &str) -> Result<Arc<Client>, DriverError> {
        let s = self.session(node)?;
        let mut client = s.client().await;
        if client.is_none() {
            s.wait_synced(s.counters().0 + 1, Duration::from_secs(3))
                .await;
            client = s.client().await;
        }
        let Some(c) = client else {
            return Err(self.err(
                format!("node {node} ovsdb {}", s.remote()),
                format!(
                    "not connected ({} connect(s) so far; the session retries with backoff)",
                    s.counters().0
                ),
            ));
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

    async fn transact(
        &self,
        node: &str,
        db: &Client,
        ops: &[Op],
    ) -> Result<Vec<Value>, DriverError> {
        db.transact(DB, ops)
            .await
            .map_err(|e| self.err(format!("node {node}"), e))
    }

    /// Makes the node ready: `br-int` (ours, netdev datapath, secure fail mode, OpenFlow 1.3,
    /// our controller and datapath id), its uplinks with the underlay address moved onto the
    /// bridge, the switch connected, and the node's own flows. Cheap once done.
    pub async fn ensure_node(&self, node: &str) -> Result<Switch, DriverError> {
        self.ensure_node_within(node, self.inner.switch_timeout)
            .await
    }

    /// [`OvsDriver::ensure_node`], waiting at most `wait` for the switch to connect (the
    /// reconcile loop does not wait: a node whose switch is away is reported, not waited for).
    async fn ensure_node_within(&self, node: &str, wait: Duration) -> Result<Switch, DriverError> {
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
        // The internal port appears once vswitchd has created it.
        let mut last = String::new();
        let mut placed = false;
        for _ in 0..100 {
            match self
                .inner
                .kernel
                .underlay_on_bridge(&info.netns, &uplinks, &info.addrs, BRIDGE)
                .await
            {
                Ok(()) => {
                    placed = true;
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !placed {
            return Err(self.err(
                format!("node {node}"),
                format!(
                    "could not put the underlay addresses {:?} on {BRIDGE}: {last}",
                    info.addrs
                ),
            ));
        }
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

    async fn wait_switch(
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
                ));
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    async fn ensure_bridge(
        &self,
        node: &str,
        db: &Client,
        uplinks: &[String],
    ) -> Result<(), DriverError> {
        let name_is = |n: &str| vec![cond("name", "==", json!(n))];
        let r = self
            .transact(
                node,
                db,
                &[
                    Op::Select {
                        table: "Open_vSwitch".into(),
                        conditions: vec![],
                        columns: Some(vec!["_uuid".into()]),
                    },
                    Op::Select {
                        table: "Bridge".into(),
                        conditions: name_is(BRIDGE),
                        columns: Some(vec![
                            "_uuid".into(),
                            "controller".into(),
                            "external_ids".into(),
                        ]),
                    },
                    Op::Select {
                        table: "Controller".into(),
                        conditions: vec![ops::owned_by_us()],
                        columns: Some(vec!["_uuid".into(), "target".into()]),
                    },
                    Op::Select {
                        table: "Port".into(),
                        conditions: vec![],
                        columns: Some(vec!["name".into()]),
                    },
                ],
            )
            .await?;
        let rows = |i: usize| -> Vec<Value> {
            r.get(i)
                .and_then(|v| v.get("rows"))
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let root = rows(0);
        let bridge = rows(1).into_iter().next();
        let controllers = rows(2);
        let ports: HashSet<String> = if bridge.is_some() {
            self.bridge_port_names(node, db).await?
        } else {
            HashSet::new()
        };
        let dpid = format!("{:016x}", plan::datapath_id(node));
        let mut txn = Vec::new();
        match &bridge {
            None => {
                if root.is_empty() {
                    txn.push(Op::Insert {
                        table: "Open_vSwitch".into(),
                        row: json!({}),
                        uuid_name: Some("root".into()),
                    });
                }
                txn.push(Op::Insert {
                    table: "Interface".into(),
                    row: json!({"name": BRIDGE, "type": "internal", "external_ids": ops::owner_ids()}),
                    uuid_name: Some("bi".into()),
                });
                txn.push(Op::Insert {
                    table: "Port".into(),
                    row: json!({"name": BRIDGE, "interfaces": ops::named_uuid("bi"), "external_ids": ops::owner_ids()}),
                    uuid_name: Some("bp".into()),
                });
                txn.push(Op::Insert {
                    table: "Controller".into(),
                    row: json!({"target": self.inner.target, "max_backoff": 1000, "inactivity_probe": 5000, "external_ids": ops::owner_ids()}),
                    uuid_name: Some("ctl".into()),
                });
                txn.push(Op::Insert {
                    table: "Bridge".into(),
                    row: json!({
                        "name": BRIDGE,
                        "ports": ops::named_uuid("bp"),
                        "controller": ops::named_uuid("ctl"),
                        "datapath_type": "netdev",
                        "fail_mode": "secure",
                        "protocols": ops::set(vec![json!("OpenFlow13")]),
                        "other_config": ops::map(&[("datapath-id", &dpid)]),
                        "external_ids": ops::owner_ids(),
                    }),
                    uuid_name: Some("br".into()),
                });
                let root_cond = if root.is_empty() {
                    vec![cond("_uuid", "==", ops::named_uuid("root"))]
                } else {
                    vec![]
                };
                txn.push(Op::Mutate {
                    table: "Open_vSwitch".into(),
                    conditions: root_cond,
                    mutations: vec![ops::mutation(
                        "bridges",
                        "insert",
                        ops::set(vec![ops::named_uuid("br")]),
                    )],
                });
            }
            Some(b) => {
                let ours = b
                    .get("external_ids")
                    .map(|ids| ids.to_string().contains(OWNER_KEY))
                    .unwrap_or(false);
                if !ours {
                    return Err(self.err(
                        format!("node {node} bridge {BRIDGE}"),
                        "exists and is not Meshwire's (no external_ids:meshwire-owner); Meshwire leaves it alone",
                    ));
                }
                let targets: Vec<&str> = controllers
                    .iter()
                    .filter_map(|c| c.get("target").and_then(|t| t.as_str()))
                    .collect();
                if targets.is_empty() {
                    txn.push(Op::Insert {
                        table: "Controller".into(),
                        row: json!({"target": self.inner.target, "max_backoff": 1000, "inactivity_probe": 5000, "external_ids": ops::owner_ids()}),
                        uuid_name: Some("ctl".into()),
                    });
                    txn.push(Op::Mutate {
                        table: "Bridge".into(),
                        conditions: name_is(BRIDGE),
                        mutations: vec![ops::mutation(
                            "controller",
                            "insert",
                            ops::set(vec![ops::named_uuid("ctl")]),
                        )],
                    });
                } else if targets.iter().any(|t| *t != self.inner.target) {
                    tracing::info!(%node, old = ?targets, new = %self.inner.target, "pointing the bridge at this controller");
                    txn.push(Op::Update {
                        table: "Controller".into(),
                        conditions: vec![ops::owned_by_us()],
                        row: json!({"target": self.inner.target}),
                    });
                }
            }
        }
        for (i, u) in uplinks.iter().enumerate() {
            if ports.contains(u) {
                continue;
            }
            let (ni, np) = (format!("ui{i}"), format!("up{i}"));
            txn.push(Op::Insert {
                table: "Interface".into(),
                row: json!({"name": u, "external_ids": ops::owner_ids()}),
                uuid_name: Some(ni.clone()),
            });
            txn.push(Op::Insert {
                table: "Port".into(),
                row: json!({"name": u, "interfaces": ops::named_uuid(&ni), "external_ids": ops::owner_ids()}),
                uuid_name: Some(np.clone()),
            });
            txn.push(Op::Mutate {
                table: "Bridge".into(),
                conditions: name_is(BRIDGE),
                mutations: vec![ops::mutation(
                    "ports",
                    "insert",
                    ops::set(vec![ops::named_uuid(&np)]),
                )],
            });
        }
        if !txn.is_empty() {
            txn.push(Op::Comment(format!("meshwire: bootstrap {node}")));
            self.transact(node, db, &txn).await?;
            tracing::info!(%node, operations = txn.len(), "bridge bootstrapped");
        }
        Ok(())
    }

    /// Adds the ports `names` (with their interface type and options) to `br-int` when missing;
    /// a port in `recreate` is removed first (its veth was recreated, so vswitchd must reopen it).
    async fn ensure_ports(
        &self,
        node: &str,
        db: &Client,
        want: &[(String, Value, Option<&str>)],
        recreate: &[String],
    ) -> Result<(), DriverError> {
        if want.is_empty() {
            return Ok(());
        }
        if !recreate.is_empty() {
            self.remove_ports(node, db, recreate).await?;
        }
        let have = self.bridge_port_names(node, db).await?;
        let mut txn = Vec::new();
        for (i, (name, iface, conn)) in want.iter().enumerate() {
            if have.contains(name) {
                continue;
            }
            let mut ids = vec![(OWNER_KEY, ops::OWNER)];
            if let Some(c) = conn {
                ids.push((CONNECTION_KEY, c));
            }
            let mut row = iface.clone();
            row["name"] = json!(name);
            row["external_ids"] = ops::map(&ids);
            let (ni, np) = (format!("i{i}"), format!("p{i}"));
            txn.push(Op::Insert {
                table: "Interface".into(),
                row,
                uuid_name: Some(ni.clone()),
            });
            txn.push(Op::Insert {
                table: "Port".into(),
                row: json!({"name": name, "interfaces": ops::named_uuid(&ni), "external_ids": ops::map(&ids)}),
                uuid_name: Some(np.clone()),
            });
            txn.push(Op::Mutate {
                table: "Bridge".into(),
                conditions: vec![cond("name", "==", json!(BRIDGE))],
                mutations: vec![ops::mutation(
                    "ports",
                    "insert",
                    ops::set(vec![ops::named_uuid(&np)]),
                )],
            });
        }
        if !txn.is_empty() {
            self.transact(node, db, &txn).await?;
        }
        Ok(())
    }

    /// Removes our ports named `names` from `br-int` (the rows go with the reference).
    async fn remove_ports(
        &self,
        node: &str,
        db: &Client,
        names: &[String],
    ) -> Result<(), DriverError> {
        let r = self
            .transact(
                node,
                db,
                &[Op::Select {
                    table: "Port".into(),
                    conditions: vec![ops::owned_by_us()],
                    columns: Some(vec!["_uuid".into(), "name".into()]),
                }],
            )
            .await?;
        let uuids: Vec<Value> = r
            .first()
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| names.iter().any(|x| x == n))
            })
            .filter_map(|p| p.get("_uuid").cloned())
            .collect();
        if uuids.is_empty() {
            return Ok(());
        }
        self.transact(
            node,
            db,
            &[Op::Mutate {
                table: "Bridge".into(),
                conditions: vec![cond("name", "==", json!(BRIDGE))],
                mutations: vec![ops::mutation("ports", "delete", ops::set(uuids))],
            }],
        )
        .await
        .map(|_| ())
    }

    /// Names of the ports of `br-int` (a port of that name on another bridge does not count).
    async fn bridge_port_names(
        &self,
        node: &str,
        db: &Client,
    ) -> Result<HashSet<String>, DriverError> {
        let r = self
            .transact(
                node,
                db,
                &[
                    Op::Select {
                        table: "Bridge".into(),
                        conditions: vec![cond("name", "==", json!(BRIDGE))],
                        columns: Some(vec!["ports".into()]),
                    },
                    Op::Select {
                        table: "Port".into(),
                        conditions: vec![],
                        columns: Some(vec!["_uuid".into(), "name".into()]),
                    },
                ],
            )
            .await?;
        let ours: HashSet<String> = r
            .first()
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .and_then(|rows| rows.first())
            .and_then(|b| b.get("ports"))
            .map(crate::ovsdb::replica::set_elements)
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u.get(1).and_then(|u| u.as_str()).map(str::to_string))
            .collect();
        Ok(r.get(1)
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("_uuid")
                    .and_then(|u| u.get(1))
                    .and_then(|u| u.as_str())
                    .is_some_and(|u| ours.contains(u))
            })
            .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect())
    }

    /// Interface name → OpenFlow port number (only those vswitchd has numbered), and our
    /// connection ports (name → connection id), from the session's replica; interfaces of
    /// `br-int` only (port numbers are per bridge).
    fn read_ports(&self, node: &str) -> Result<(PortNumbers, PortOwners), DriverError> {
        let s = self.session(node)?;
        let replica = s.replica();
        let bad = |e: crate::ovsdb::rows::RowError| self.err(format!("node {node}"), e);
        let ports: HashSet<String> = replica
            .bridges()
            .map_err(bad)?
            .into_iter()
            .filter(|b| b.name == BRIDGE)
            .flat_map(|b| b.ports)
            .collect();
        let on_bridge: HashSet<String> = replica
            .ports()
            .map_err(bad)?
            .into_iter()
            .filter(|p| ports.contains(&p.uuid))
            .flat_map(|p| p.interfaces)
            .collect();
        let ifaces: Vec<_> = replica
            .interfaces()
            .map_err(bad)?
            .into_iter()
            .filter(|i| on_bridge.contains(&i.uuid))
            .collect();
        let mut numbers = HashMap::new();
        let mut conns = HashMap::new();
        for i in ifaces {
            if let Some(n) = i.ofport.filter(|n| *n > 0) {
                numbers.insert(i.name.clone(), n as u32);
            }
            if let Some(id) = i.external_ids.get(CONNECTION_KEY) {
                conns.insert(i.name.clone(), id.clone());
            }
        }
        Ok((numbers, conns))
    }

    /// Resolves templates, waiting (briefly) for vswitchd to number new ports.
    async fn resolve_all(
        &self,
        node: &str,
        templates: &[FlowTemplate],
    ) -> Result<Vec<FlowSpec>, DriverError> {
        let mut last = String::new();
        for _ in 0..100 {
            let (numbers, _) = self.read_ports(node)?;
            match templates
                .iter()
                .map(|t| resolve(t, &numbers))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => return Ok(f),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(self.err(format!("node {node}"), last))
    }

    /// [`sync_flows`] on a node's switch, counting what changed.
    async fn sync_flows(
        &self,
        node: &str,
        sw: &Switch,
        desired: Vec<FlowSpec>,
        may_delete: &(dyn Fn(u64) -> bool + Sync),
        cookie: u64,
        mask: u64,
    ) -> Result<SyncStats, DriverError> {
        let stats = sync_flows(sw, desired, may_delete, cookie, mask)
            .await
            .map_err(|e| self.err(format!("node {node}"), e))?;
        if stats.changed() > 0 {
            let mut t = lock(&self.inner.stats);
            t.added += stats.added as u64;
            t.modified += stats.modified as u64;
            t.deleted += stats.deleted as u64;
            t.bundles += 1;
            tracing::info!(%node, added = stats.added, modified = stats.modified, deleted = stats.deleted, unchanged = stats.unchanged, "flows synced in one bundle");
        }
        Ok(stats)
    }

    fn plan(&self, c: &Connection) -> Result<plan::Plan, DriverError> {
        let t = lock(&self.inner.topology);
        plan::plan(c, &TopoUplinks(&t)).map_err(|r| self.err(format!("connection {}", c.id), r))
    }

    fn tunnel_row(t: &TunnelPort) -> Value {
        let mut opts = vec![
            ("remote_ip", "flow".to_string()),
            ("key", "flow".to_string()),
        ];
        if let Some(p) = t.dst_port {
            opts.push(("dst_port", p.to_string()));
        }
        let pairs: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
        json!({"type": t.kind, "options": ops::map(&pairs)})
    }

    /// Every desired connection (snapshot), for full node syncs.
    fn desired_snapshot(&self) -> Vec<Connection> {
        lock(&self.inner.desired)
            .conns
            .values()
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// The full flow set of `node` (infra and every desired connection whose ports are numbered),
    /// applied as one bundle. Connections whose ports are not ready keep whatever they have.
    pub async fn resync_node(&self, node: &str) -> Result<SyncStats, DriverError> {
        let sw = self.ensure_node(node).await?;
        self.db(node).await?;
        let l = self.node_lock(node);
        let _g = l.lock().await;
        let info = self.node_info(node)?;
        let (numbers, _) = self.read_ports(node)?;
        let mut desired: Vec<FlowSpec> = Vec::new();
        for t in plan::infra_flows(node, &info.uplink_nets) {
            desired.push(resolve(&t, &numbers).map_err(|e| self.err(format!("node {node}"), e))?);
        }
        let mut keep: HashSet<u64> = HashSet::new();
        for (domain, templates) in self.domain_templates(node) {
            match templates
                .iter()
                .map(|t| resolve(t, &numbers))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => desired.extend(f),
                Err(e) => {
                    tracing::debug!(%node, %domain, error = %e, "domain ports not ready; its flows stay as they are");
                    keep.insert(plan::domain_cookie(&domain));
                }
            }
        }
        for c in self.desired_snapshot() {
            let Ok(p) = self.plan(&c) else { continue };
            let mine: Vec<&FlowTemplate> = p.flows.iter().filter(|f| f.node == node).collect();
            match mine
                .iter()
                .map(|t| resolve(t, &numbers))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => desired.extend(f),
                Err(_) => {
                    keep.insert(p.cookie);
                }
            }
        }
        let known_all = self
            .inner
            .desired_known
            .load(std::sync::atomic::Ordering::Acquire);
        let may_delete = |c: u64| (known_all || c == plan::INFRA_COOKIE) && !keep.contains(&c);
        self.sync_flows(
            node,
            &sw,
            desired,
            &may_delete,
            plan::COOKIE_TAG,
            plan::COOKIE_TAG_MASK,
        )
        .await
    }

    /// Each distributed domain with members, as flow templates for `node`.
    fn domain_templates(&self, node: &str) -> Vec<(String, Vec<FlowTemplate>)> {
        let mut members: BTreeMap<String, Vec<plan::Member>> = BTreeMap::new();
        for c in self.desired_snapshot() {
            if let Some(m) = plan::domain_member(&c) {
                members.entry(m.domain.clone()).or_default().push(m);
            }
        }
        // A domain whose VNI is taken by another gets no flows (apply refuses its members).
        for (d, _) in plan::colliding_domains(members.keys().map(String::as_str)) {
            members.remove(&d);
        }
        let t = lock(&self.inner.topology);
        members
            .into_iter()
            .map(|(domain, ms)| {
                let mut local: Vec<String> = ms
                    .iter()
                    .filter(|m| m.node == node)
                    .map(|m| m.port.clone())
                    .collect();
                local.sort();
                let mut others: Vec<&str> = ms
                    .iter()
                    .filter(|m| m.node != node)
                    .map(|m| m.node.as_str())
                    .collect();
                others.sort();
                others.dedup();
                let remotes: Vec<std::net::Ipv4Addr> = others
                    .iter()
                    .filter_map(|r| remote_addr(&t, node, r))
                    .collect();
                let flows = plan::domain_flows(&domain, node, &local, &remotes);
                (domain, flows)
            })
            .collect()
    }

    /// Brings one domain's flows in line on every ovs node that is up (members came or went).
    async fn sync_domain(&self, domain: &str) -> Result<(), DriverError> {
        let nodes: Vec<String> = lock(&self.inner.topology)
            .nodes
            .values()
            .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
            .map(|n| n.name.clone())
            .collect();
        let cookie = plan::domain_cookie(domain);
        let mut first = None;
        for node in nodes {
            let has_switch = lock(&self.inner.switches).contains_key(&plan::datapath_id(&node));
            let members_here = self
                .domain_templates(&node)
                .iter()
                .any(|(d, f)| d == domain && !f.is_empty());
            if !members_here && !has_switch {
                continue;
            }
            let r = async {
                let sw = self.ensure_node(&node).await?;
                self.db(&node).await?;
                let l = self.node_lock(&node);
                let _g = l.lock().await;
                // Members as they are now, under the node's lock: a concurrent apply of another
                // member syncs after us with a set that includes both.
                let templates: Vec<FlowTemplate> = self
                    .domain_templates(&node)
                    .into_iter()
                    .filter(|(d, _)| d == domain)
                    .flat_map(|(_, f)| f)
                    .collect();
                let flows = self.resolve_all(&node, &templates).await?;
                self.sync_flows(&node, &sw, flows, &|k| k == cookie, cookie, u64::MAX)
                    .await
            }
            .await;
            if let Err(e) = r {
                // One node that is down must not fail the member being wired elsewhere; the
                // reconcile loop brings that node in line when it is back.
                tracing::warn!(%node, %domain, error = %e, "domain flows not synced on this node");
                if members_here {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes our connection ports (and their veths) whose connection is not desired.
    async fn collect_orphans(&self, node: &str) -> Result<usize, DriverError> {
        if !self
            .inner
            .desired_known
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(0);
        }
        let db = self.db(node).await?;
        let l = self.node_lock(node);
        let _g = l.lock().await;
        let netns = self.node_info(node)?.netns;
        let (_, conns) = self.read_ports(node)?;
        let desired: HashSet<String> = lock(&self.inner.desired).conns.keys().cloned().collect();
        let orphans: Vec<(String, String)> = conns
            .into_iter()
            .filter(|(_, id)| !desired.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let names: Vec<String> = orphans.iter().map(|(n, _)| n.clone()).collect();
        self.remove_ports(node, &db, &names).await?;
        for (name, id) in &orphans {
            let end = End {
                netns: netns.clone(),
                ifname: name.clone(),
                addrs: vec![],
                routes: vec![],
                bridge: None,
                mtu: 1500,
                mac: None,
                neighbors: vec![],
            };
            let ghost = ghost_connection(id);
            let _ = self.inner.kernel.delete_end(&ghost, &end).await;
            tracing::info!(%node, port = %name, connection = %id, "removed a port of a connection that is no longer desired");
        }
        Ok(orphans.len())
    }
}

/// The underlay address of `to` as `from` reaches it: `to`'s end of a link between them, else
/// its declared underlay address, else the address of any of its link ends.
fn remote_addr(t: &Topology, from: &str, to: &str) -> Option<std::net::Ipv4Addr> {
    let v4 = |a: Option<ipnet::IpNet>| match a {
        Some(ipnet::IpNet::V4(n)) => Some(n.addr()),
        _ => None,
    };
    t.links
        .values()
        .filter(|l| l.end_at(from).is_some())
        .find_map(|l| v4(l.end_at(to).and_then(|e| e.address)))
        .or_else(|| match t.nodes.get(to).and_then(|n| n.underlay_address) {
            Some(std::net::IpAddr::V4(a)) => Some(a),
            _ => None,
        })
        .or_else(|| {
            t.links
                .values()
                .find_map(|l| v4(l.end_at(to).and_then(|e| e.address)))
        })
}

/// A stand-in carrying only an id, for deleting what a forgotten connection left behind.
fn ghost_connection(id: &str) -> Connection {
    Connection {
        id: id.to_string(),
        network_service: String::new(),
        network_service_endpoint_name: String::new(),
        payload: Default::default(),
        client: meshwire_models::ClientRef {
            node: String::new(),
            name: None,
        },
        labels: Default::default(),
        interface: String::new(),
        preferences: vec![],
        path: vec![],
        hops: vec![],
        placement: Default::default(),
        ip_context: Default::default(),
        address_pool: None,
        mtu: 1500,
        state: meshwire_models::ConnectionState::Closed,
        created_at_ms: 0,
        updated_at_ms: 0,
        generation: 0,
        last_error: None,
    }
}

#[async_trait]
impl Driver for OvsDriver {
    fn name(&self) -> &str {
        "ovs"
    }

    /// The workload legs are kernel veths: swept as the kernel driver sweeps its own.
    async fn sweep(&self, desired: &[Connection], topology: &Topology) -> usize {
        let s = self.inner.kernel.sweep_unwanted(desired, topology).await;
        s.interfaces + s.routes
    }

    /// Takes the topology at once and bootstraps its ovs nodes in the background (a node whose
    /// switch is slow to connect must not hold up the controller or the request that changed
    /// the topology); `apply` and `observe` wait for a node they need.
    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        *lock(&self.inner.topology) = t.clone();
        let nodes: Vec<String> = t
            .nodes
            .values()
            .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
            .map(|n| n.name.clone())
            .collect();
        for n in nodes {
            // Uplinks may have changed: bootstrap again.
            lock(&self.inner.bootstrapped).remove(&n);
            let d = self.clone();
            tokio::spawn(async move {
                if let Err(e) = d.ensure_node(&n).await {
                    tracing::warn!(node = %n, error = %e, "node not ready yet; retried when a connection needs it");
                }
            });
        }
        Ok(())
    }

    async fn apply(&self, c: &Connection) -> Result<(), DriverError> {
        let p = self.plan(c)?;
        if let Some(m) = plan::domain_member(c) {
            let mut domains: Vec<String> = self
                .desired_snapshot()
                .iter()
                .filter_map(plan::domain_member)
                .map(|m| m.domain)
                .collect();
            domains.push(m.domain.clone());
            if let Some((_, other)) = plan::colliding_domains(domains.iter().map(String::as_str))
                .into_iter()
                .find(|(d, _)| *d == m.domain)
            {
                return Err(self.err(
                    format!("connection {}", c.id),
                    format!(
                        "bridge domain {} would share VNI {:#x} with domain {other}; rename one of them",
                        m.domain,
                        plan::domain_vni(&m.domain)
                    ),
                ));
            }
        }
        {
            let mut d = lock(&self.inner.desired);
            d.seq += 1;
            let seq = d.seq;
            d.conns.insert(c.id.clone(), (c.clone(), seq));
            d.removed.remove(&c.id);
        }
        for node in p.nodes() {
            self.ensure_node(&node).await?;
        }
        let mut recreated: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for leg in &p.legs {
            let existed = self.inner.kernel.end_present(c, &leg.bridge_port).await == Some(true)
                && self.inner.kernel.end_present(c, &leg.workload).await == Some(true);
            self.inner
                .kernel
                .veth_pair(c, &leg.workload, &leg.bridge_port)
                .await?;
            netns::disable_tx_checksum(&leg.workload.netns, &leg.workload.ifname)
                .await
                .map_err(|e| {
                    self.err(
                        format!(
                            "connection {} {}/{}",
                            c.id,
                            leg.workload.netns.as_deref().unwrap_or("(host)"),
                            leg.workload.ifname
                        ),
                        format!("turning off tx checksum offload: {e}"),
                    )
                })?;
            if !existed {
                recreated
                    .entry(leg.node.clone())
                    .or_default()
                    .push(leg.bridge_port.ifname.clone());
            }
        }
        for node in p.nodes() {
            let db = self.db(&node).await?;
            let sw = self.ensure_node(&node).await?;
            let l = self.node_lock(&node);
            let _g = l.lock().await;
            let mut want: Vec<(String, Value, Option<&str>)> = p
                .legs
                .iter()
                .filter(|leg| leg.node == node)
                .map(|leg| {
                    (
                        leg.bridge_port.ifname.clone(),
                        json!({}),
                        Some(c.id.as_str()),
                    )
                })
                .collect();
            for (n, t) in &p.tunnels {
                if *n == node {
                    want.push((t.name.clone(), Self::tunnel_row(t), None));
                }
            }
            let recreate = recreated.get(&node).cloned().unwrap_or_default();
            self.ensure_ports(&node, &db, &want, &recreate).await?;
            let templates: Vec<FlowTemplate> =
                p.flows.iter().filter(|f| f.node == node).cloned().collect();
            let flows = self.resolve_all(&node, &templates).await?;
            let cookie = p.cookie;
            self.sync_flows(&node, &sw, flows, &|k| k == cookie, cookie, u64::MAX)
                .await?;
        }
        if let Some(m) = plan::domain_member(c) {
            self.sync_domain(&m.domain).await?;
        }
        Ok(())
    }

    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        {
            let mut d = lock(&self.inner.desired);
            d.seq += 1;
            let seq = d.seq;
            d.conns.remove(&c.id);
            d.removed.insert(c.id.clone(), seq);
        }
        let Ok(p) = self.plan(c) else {
            return Ok(());
        };
        for node in p.nodes() {
            let (Ok(db), Ok(sw)) = (self.db(&node).await, self.ensure_node(&node).await) else {
                // The node is unreachable: its leftovers go at its next resync.
                continue;
            };
            let l = self.node_lock(&node);
            let _g = l.lock().await;
            let cookie = p.cookie;
            self.sync_flows(&node, &sw, vec![], &|k| k == cookie, cookie, u64::MAX)
                .await?;
            let names: Vec<String> = p
                .legs
                .iter()
                .filter(|leg| leg.node == node)
                .map(|leg| leg.bridge_port.ifname.clone())
                .collect();
            self.remove_ports(&node, &db, &names).await?;
        }
        if let Some(m) = plan::domain_member(c) {
            self.sync_domain(&m.domain).await?;
        }
        for leg in &p.legs {
            self.inner.kernel.delete_end(c, &leg.bridge_port).await?;
            self.inner.kernel.delete_end(c, &leg.workload).await?;
        }
        Ok(())
    }

    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
        {
            let mut d = lock(&self.inner.desired);
            let since = d.observed_seq;
            let recent: Vec<(String, (Connection, u64))> = d
                .conns
                .iter()
                .filter(|(_, (_, s))| *s > since)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let removed = d.removed.clone();
            d.conns = desired
                .iter()
                .filter(|c| !removed.contains_key(&c.id))
                .map(|c| (c.id.clone(), (c.clone(), 0)))
                .collect();
            d.conns.extend(recent);
            d.removed.clear();
            d.observed_seq = d.seq;
        }
        self.inner
            .desired_known
            .store(true, std::sync::atomic::Ordering::Release);
        let mut obs = Observation::default();
        let mut nodes_down: HashMap<String, String> = HashMap::new();
        let mut involved: Vec<String> = Vec::new();
        let mut plans = Vec::new();
        for c in desired {
            match self.plan(c) {
                Ok(p) => {
                    involved.extend(p.nodes());
                    plans.push((c, p));
                }
                Err(e) => {
                    obs.connections.insert(
                        c.id.clone(),
                        Health::Missing {
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
        involved.sort();
        involved.dedup();
        let mut ports: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for n in &involved {
            let r = async {
                self.ensure_node_within(n, Duration::from_millis(200))
                    .await?;
                self.db(n).await?;
                self.read_ports(n)
            }
            .await;
            match r {
                Ok((numbers, _)) => {
                    ports.insert(n.clone(), numbers);
                }
                Err(e) => {
                    nodes_down.insert(n.clone(), e.to_string());
                }
            }
        }
        for (c, p) in &plans {
            let mut health = None;
            for (i, leg) in p.legs.iter().enumerate() {
                let client = i == 0;
                for ns in [&leg.workload.netns, &leg.bridge_port.netns] {
                    if !netns::exists(ns) {
                        let reason =
                            format!("namespace {} is gone", ns.as_deref().unwrap_or("(host)"));
                        health.get_or_insert(if client {
                            Health::ClientGone { reason }
                        } else {
                            Health::EndpointLost { reason }
                        });
                    }
                }
            }
            if health.is_none() {
                if let Some(n) = p.nodes().into_iter().find(|n| nodes_down.contains_key(n)) {
                    health = Some(Health::Missing {
                        reason: format!("node {n}: {}", nodes_down[&n]),
                    });
                }
            }
            if health.is_none() {
                for leg in &p.legs {
                    let numbered = ports
                        .get(&leg.node)
                        .is_some_and(|m| m.contains_key(&leg.bridge_port.ifname));
                    let present = self.inner.kernel.end_present(c, &leg.workload).await
                        == Some(true)
                        && self.inner.kernel.end_present(c, &leg.bridge_port).await == Some(true);
                    if !numbered || !present {
                        health = Some(Health::Missing {
                            reason: format!(
                                "{}: leg {}/{} ⇄ {} is {}",
                                leg.node,
                                leg.workload.netns.as_deref().unwrap_or("(host)"),
                                leg.workload.ifname,
                                leg.bridge_port.ifname,
                                if present {
                                    "not on the bridge"
                                } else {
                                    "missing"
                                }
                            ),
                        });
                        break;
                    }
                }
            }
            if let Some(h) = health {
                obs.connections.insert(c.id.clone(), h);
            }
        }
        // Flows: one atomic diff per reachable node; then ports nobody wants.
        // Nodes no desired connection touches are resynced too (when their switch is here), so
        // what a removal could not reach on them goes once they are back.
        let idle: Vec<String> = {
            let t = lock(&self.inner.topology);
            let sw = lock(&self.inner.switches);
            t.nodes
                .values()
                .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
                .filter(|n| !involved.contains(&n.name))
                .filter(|n| sw.contains_key(&plan::datapath_id(&n.name)))
                .map(|n| n.name.clone())
                .collect()
        };
        for n in involved
            .iter()
            .filter(|n| !nodes_down.contains_key(*n))
            .chain(idle.iter())
        {
            if let Err(e) = self.resync_node(n).await {
                tracing::warn!(node = %n, error = %e, "resync failed");
            }
            if let Err(e) = self.collect_orphans(n).await {
                tracing::warn!(node = %n, error = %e, "removing leftover ports failed");
            }
        }
        Ok(obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cookie: u64, prio: u16, in_port: u32, out: u32) -> FlowSpec {
        FlowSpec {
            cookie,
            priority: prio,
            matches: vec![OxmField::InPort(in_port), OxmField::EthType(0x0800)],
            actions: vec![Action::Output {
                port: out,
                max_len: 0,
            }],
        }
    }

    #[test]
    fn diff_leaves_equal_flows_alone_and_changes_only_the_rest() {
        let installed = vec![
            spec(5, 100, 1, 2),
            spec(5, 100, 2, 1),
            spec(6, 100, 3, 4),
            spec(9, 100, 7, 8),
        ];
        let mut moved = spec(5, 100, 2, 9);
        // Same flow, match fields in another order: still equal.
        moved.matches.reverse();
        let desired = vec![spec(5, 100, 1, 2), moved, spec(5, 100, 5, 6)];
        let (mods, st) = diff_flows(&installed, &desired, &|c| c != 9);
        assert_eq!(
            st,
            SyncStats {
                added: 1,
                modified: 1,
                deleted: 1,
                unchanged: 1
            }
        );
        assert_eq!(mods.len(), 3);
        assert!(mods
            .iter()
            .any(|m| m.command == FlowModCommand::DeleteStrict
                && m.cookie == 6
                && m.cookie_mask == u64::MAX));
        // Cookie 9 is protected (not ours to delete).
        assert!(!mods.iter().any(|m| m.cookie == 9));
        let (none, st) = diff_flows(&installed[..2], &installed[..2], &|_| true);
        assert!(none.is_empty());
        assert_eq!(st.unchanged, 2);
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let b: Vec<Duration> = (0..10).map(|f| backoff(f, 7)).collect();
        assert!(b[0] >= Duration::from_millis(50) && b[0] <= Duration::from_millis(100));
        assert!(b[9] <= Duration::from_secs(5));
        assert!(b[5] > b[0]);
    }
}
