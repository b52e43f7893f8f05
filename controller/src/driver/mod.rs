//! The southbound boundary: the one trait data-plane drivers implement, and what crosses it.
//!
//! The controller hands a driver the **desired state of a scope** (the nodes of one forwarder,
//! one node, one device), **versioned**, and the driver makes reality match:
//!
//! - [`Update::Delta`]: wire these connections, unwire those. Idempotent: applying a delta twice,
//!   or over a half-done earlier attempt, converges; unwiring what is not there succeeds.
//! - [`Update::Full`]: the complete set at a version. The driver removes everything carrying
//!   Meshwire's mark that no listed connection holds (what a crash, a lost delta or an operator's
//!   restart left), except what a newer delta changed (see [`Ledger`]), and reports what it sees
//!   of each listed connection ([`Health`]). It does not re-create what is missing on its own:
//!   the controller repairs by delta, so every repair is recorded, evented and backed off.
//!
//! Every answer is a [`Report`] naming the version it reflects; every failure a typed
//! [`DriverError`]. What happens in the data plane between calls (a device down, a switch
//! reconnected, an interface deleted) arrives on the driver's event stream
//! ([`Driver::subscribe`]) and makes the controller look at once instead of at its next round.
//! All of it is plain serializable data, so the same exchange runs in process (the kernel, Open
//! vSwitch and eNSM drivers) or over a wire (a remote eNSM today; node agents next).

mod dataplanes;
mod error;
mod guard;
mod ledger;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use meshwire_models::{Connection, ForwarderKind, Topology};
use tokio::sync::broadcast;

pub use dataplanes::{Dataplanes, DeviceResolver};
pub use error::{DriverError, Failure};
pub use guard::LeaderGuard;
pub use ledger::Ledger;

/// How long one data-plane peer (a node driver, a device's eNSM) may take to answer a full set.
pub const PEER_OBSERVE_TIMEOUT: Duration = Duration::from_secs(8);

/// How many events a driver's stream holds for a slow reader; one that falls further behind
/// learns it lagged, and the controller then looks at everything.
pub const EVENT_BUFFER: usize = 256;

/// What a desired state covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum Scope {
    /// Everything the driver covers (what the controller hands its composite driver).
    All,
    /// Every node of one forwarder kind, driven from this process.
    Forwarder(ForwarderKind),
    /// One node (a node agent's).
    Node(String),
    /// One device (its eNSM's).
    Device(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => write!(f, "all"),
            Scope::Forwarder(k) => write!(f, "{k} nodes"),
            Scope::Node(n) => write!(f, "node {n}"),
            Scope::Device(d) => write!(f, "device {d}"),
        }
    }
}

/// The desired state of one scope at one version. It borrows the connections it names when
/// it can (a delta of one connection costs no copy of it); read from a wire, it owns them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Desired<'a> {
    pub scope: Scope,
    /// Increases with every change the controller makes; a full set's version is taken with its
    /// snapshot, a delta's after the change it carries was recorded.
    pub version: u64,
    pub update: Update<'a>,
}

/// A change to the desired state, or all of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Update<'a> {
    /// Unwire `remove` (first), then wire `upsert`.
    Delta {
        #[serde(default)]
        upsert: Cow<'a, [Connection]>,
        #[serde(default)]
        remove: Cow<'a, [Connection]>,
    },
    /// Everything desired in the scope. `shared` holds connections another driver wires in the
    /// same namespaces (an Open vSwitch node's workload legs beside a kernel node's): never
    /// swept, never reported on.
    Full {
        connections: Cow<'a, [Connection]>,
        #[serde(default)]
        shared: Cow<'a, [Connection]>,
    },
}

impl<'a> Desired<'a> {
    pub fn upsert(scope: Scope, version: u64, c: &'a Connection) -> Desired<'a> {
        Desired {
            scope,
            version,
            update: Update::Delta {
                upsert: Cow::Borrowed(std::slice::from_ref(c)),
                remove: Cow::Borrowed(&[]),
            },
        }
    }

    pub fn remove(scope: Scope, version: u64, c: &'a Connection) -> Desired<'a> {
        Desired {
            scope,
            version,
            update: Update::Delta {
                upsert: Cow::Borrowed(&[]),
                remove: Cow::Borrowed(std::slice::from_ref(c)),
            },
        }
    }

    pub fn full(scope: Scope, version: u64, connections: Vec<Connection>) -> Desired<'a> {
        Desired {
            scope,
            version,
            update: Update::Full {
                connections: Cow::Owned(connections),
                shared: Cow::Borrowed(&[]),
            },
        }
    }

    /// Whether this is a full set.
    pub fn is_full(&self) -> bool {
        matches!(self.update, Update::Full { .. })
    }
}

/// What a driver saw of one desired connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "health", rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    /// Our wiring is gone or partial while both ends exist: repair in place.
    Missing {
        reason: String,
    },
    /// The endpoint's side is gone (its namespace, device or node): heal onto another endpoint.
    EndpointLost {
        reason: String,
    },
    /// The client is gone: close the connection.
    ClientGone {
        reason: String,
    },
    /// A link or vertex on the path failed: heal onto another path.
    PathFailed {
        reason: String,
        links: Vec<String>,
        vertices: Vec<String>,
    },
}

impl Health {
    /// How grave a verdict is: of two views of one connection, the graver wins.
    pub fn rank(&self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Missing { .. } => 1,
            Health::PathFailed { .. } => 2,
            Health::EndpointLost { .. } => 3,
            Health::ClientGone { .. } => 4,
        }
    }
}

/// Health per connection id (absent ids are healthy).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    pub connections: HashMap<String, Health>,
}

impl Observation {
    /// Takes in another view of the same connections: of two, the graver wins.
    pub fn merge(&mut self, seen: Observation) {
        for (id, h) in seen.connections {
            if self
                .connections
                .get(&id)
                .is_none_or(|n| h.rank() > n.rank())
            {
                self.connections.insert(id, h);
            }
        }
    }
}

/// A driver's answer to a [`Desired`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The version the scope now reflects.
    pub version: u64,
    /// For a full set: what the driver saw of each listed connection.
    #[serde(default)]
    pub observation: Observation,
    /// For a full set: how many objects carrying our mark it removed.
    #[serde(default)]
    pub swept: usize,
    /// For a delta: the interfaces it created anew (none of that name was there before), by
    /// name. Whoever holds one open, as a switch holds its port, must open it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
}

impl Report {
    pub fn at(version: u64) -> Report {
        Report {
            version,
            ..Report::default()
        }
    }
}

/// Something that happened in the data plane between calls.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverEvent {
    pub scope: Scope,
    pub happened: Happened,
    /// For people: what exactly, in the driver's words.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Happened {
    /// A device's eNSM withdrew an endpoint (the device stopped answering, or the endpoint's
    /// data interface went down).
    EndpointWithdrawn { endpoint: String },
    /// The endpoint's device and interfaces are healthy again.
    EndpointRestored { endpoint: String },
    /// A switch (re)connected its OpenFlow channel: its flows may be stale.
    SwitchConnected { node: String },
    /// A switch's channel closed.
    SwitchLost { node: String },
    /// An interface carrying our mark went away (deleted, or its namespace with it).
    InterfaceGone { netns: String, ifname: String },
    /// A named network namespace the driver wired in was deleted (a workload gone).
    NamespaceGone { netns: String },
    /// A data interface of the scope's device or node went down (confirmed, not a bare trap):
    /// the underlay link on it is down.
    LinkDown { interface: String },
    /// That interface is up again.
    LinkUp { interface: String },
    /// A node's agent attached (first time, or again): the controller sends it its full set.
    NodeAttached { node: String },
    /// A node's agent went away; the node's data plane keeps forwarding as it was.
    NodeDetached { node: String },
    /// A node's agent has been away longer than its lease: the endpoints on it are lost.
    NodeLost { node: String },
    /// A node's SR-IOV pools, VFs and device plugin tokens as they are now (at every attach and
    /// at every change); the node is the event's scope.
    NodeSriov {
        sriov: meshwire_models::sriov::NodeSriov,
    },
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Makes the scope's data plane match `desired` (see the module documentation).
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError>;

    /// The topology changed (and once at start): drivers that manage nodes (bridges, tunnel
    /// ports, switch channels) bring them in line here. Errors are logged, never fatal: a node
    /// that cannot be reached now is retried at the next change or full set.
    async fn topology(&self, _topology: &Topology) -> Result<(), DriverError> {
        Ok(())
    }

    /// The driver's events, from now on (`None`: it has none). Bounded ([`EVENT_BUFFER`]).
    fn subscribe(&self) -> Option<broadcast::Receiver<DriverEvent>> {
        None
    }
}

/// Wires nothing; every connection is healthy. For a controller without a data plane (planning
/// only, or when an external system does the wiring).
pub struct NullDriver;

#[async_trait]
impl Driver for NullDriver {
    fn name(&self) -> &str {
        "none"
    }
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        Ok(Report::at(desired.version))
    }
}

#[cfg(any(test, feature = "testing"))]
pub use crate::testing::RecordingDriver;
