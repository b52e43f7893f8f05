//! The Open vSwitch data plane: OVSDB for bridges and ports, OpenFlow 1.3 for flows, netlink for
//! the veth legs between workloads and the node's bridge.
//!
//! ```text
//!  Controller ─Desired (delta | full)─▶ OvsDriver ──plan::plan (pure)──▶ legs, tunnel ports, flow templates
//!                                        │
//!                                        ├─ legs driver (the node agents, or a KernelDriver here):
//!                                        │    workload ⇄ bridge veth legs, the underlay on br-int
//!                                        ├─ per node: ovsdb::Client (reconnects with jittered backoff)
//!                                        │    br-int, uplinks, flow-based tunnel ports, leg ports
//!                                        └─ per node: openflow Switch (the node's vswitchd dials our
//!                                             listener; known by the datapath id we gave br-int)
//!                                             flows diffed by cookie, changes applied in one bundle
//! ```
//!
//! Rooms: [`flows`] (diff and bundle), `switches` (OpenFlow and OVSDB connections),
//! `bridge` (OVSDB rows), `domains` (distributed L2), `collection` (orphans), `driver`
//! (the `Driver` impl and node resync), [`plan`] (pure: what a connection needs).
//!
//! Ownership: rows we create carry `external_ids:meshwire-owner=meshwire` (ports also
//! `meshwire-connection=<id>`); flows carry a cookie whose top 16 bits are [`plan::COOKIE_TAG`].
//! Resync reads only what carries these marks, so flows, ports and bridges of others are never
//! touched.
//!
//! Reconciliation: a full set computes, per node, the full set of flows the desired connections
//! need, reads the installed flows with our tag, and applies the difference (deletes, adds,
//! modifies) atomically in one bundle. Unchanged flows are not touched, so their counters and
//! durations survive a controller restart; after an ovs-vswitchd restart (which loses all flows)
//! the switch is resynced as soon as it reconnects.

mod bridge;
mod collection;
mod domains;
mod driver;
pub mod flows;
pub mod plan;
mod switches;

pub use flows::{add_flow, diff_flows, sync_flows, FlowSpec, SyncStats};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meshwire_controller::driver::DriverError;
use meshwire_models::Topology;
use serde_json::{json, Value};

use crate::kernel::KernelDriver;
use crate::openflow::channel::{self, Switch};
use crate::ovsdb::session::Session;
use meshwire_controller::driver::Driver;
use plan::Uplinks;

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

/// What the driver needs of an ovs node.
struct NodeInfo {
    ovsdb: String,
    /// Its ends of every link: ports of br-int.
    uplinks: Vec<String>,
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

struct Inner {
    /// The node-local hands: workload legs and the underlay on the bridge (netlink on the
    /// node). The node agents, or a kernel driver in this process when it wires every node.
    legs: Arc<dyn Driver>,
    target: String,
    switch_timeout: Duration,
    topology: Mutex<Topology>,
    /// Per node: its OVSDB session (reconnecting, with a replica) and the connect count last seen.
    sessions: Mutex<HashMap<String, (Arc<Session>, u64)>>,
    switches: Mutex<HashMap<u64, Switch>>,
    switch_up: tokio::sync::Notify,
    /// The desired set as handed. Until the first full set (a controller that just restarted)
    /// no connection flow is deleted: the switch keeps forwarding what it has.
    ledger: meshwire_controller::driver::Ledger,
    /// Switches connected and lost, for the controller.
    events: tokio::sync::broadcast::Sender<meshwire_controller::driver::DriverEvent>,
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

/// Where an Open vSwitch node's underlay lives, for the hands that put it on the bridge.
pub(crate) struct Underlay {
    pub netns: Option<String>,
    /// Its ends of every link: ports of br-int.
    pub uplinks: Vec<String>,
    /// The addresses of those ends: they live on br-int's internal port.
    pub addrs: Vec<ipnet::IpNet>,
}

/// The underlay of `node`, when it is an Open vSwitch node of `t`.
pub(crate) fn underlay_of(t: &Topology, node: &str) -> Option<Underlay> {
    let n = t.nodes.get(node)?;
    if n.forwarder != meshwire_models::ForwarderKind::Ovs {
        return None;
    }
    let mut addrs: Vec<ipnet::IpNet> = t
        .links
        .values()
        .filter_map(|l| l.end_at(node).and_then(|e| e.address))
        .filter(|a| a.addr().is_ipv4())
        .collect();
    addrs.sort();
    addrs.dedup();
    Some(Underlay {
        netns: n.netns.clone(),
        uplinks: uplinks_of(t, node),
        addrs,
    })
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
    /// Starts the OpenFlow listener and the task that tracks switches; this process wires the
    /// workload legs of every node (its namespaces are local).
    pub async fn start(config: OvsConfig) -> Result<OvsDriver, DriverError> {
        Self::start_with(config, Arc::new(KernelDriver::without_events())).await
    }

    /// [`OvsDriver::start`] with the node-local work (workload legs, the underlay on the
    /// bridge) left to `legs`: the node agents' driver, where each node wires its own.
    pub async fn start_with(
        config: OvsConfig,
        legs: Arc<dyn Driver>,
    ) -> Result<OvsDriver, DriverError> {
        let tls = config.tls.is_some();
        let (listen, mut events) =
            channel::listen_with(config.listen, channel::ListenOptions { tls: config.tls })
                .await
                .map_err(|e| {
                    DriverError::new(
                        "ovs",
                        format!("openflow listener {}", config.listen),
                        e.to_string(),
                    )
                })?;
        let inner = Arc::new(Inner {
            legs,
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
            ledger: Default::default(),
            events: tokio::sync::broadcast::channel(meshwire_controller::driver::EVENT_BUFFER).0,
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
