//! The one small trait southbound drivers implement. The controller never sees a wire format:
//! it hands a driver the connections it wants and asks what the data plane really has.
//!
//! Contract:
//! - `apply` makes the data plane carry a connection; it is idempotent (applying twice, or over
//!   a half-done earlier attempt, converges) and tags everything it creates as Meshwire's.
//! - `remove` undoes `apply`; idempotent; it succeeds when there is nothing left to remove.
//! - `observe` reports, for the desired connections it is given, which are missing or broken and
//!   why, so the reconcile loop can repair in place or heal elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meshwire_models::{Connection, ForwarderKind, Topology};

/// A data-plane operation that failed, naming the driver, the object, the reason and what kind
/// of failure it was (so callers know whether trying again may help). Serializable, so it
/// crosses a wire (a remote eNSM, a node agent) unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{driver} driver: {target}: {reason}")]
pub struct DriverError {
    pub driver: String,
    /// What was being wired (`connection 1a2b…`, `netns clab-x-client`, `switch br-int`).
    pub target: String,
    pub reason: String,
    #[serde(default)]
    pub failure: Failure,
}

/// The kind of a data-plane failure.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Failure {
    /// The peer answered, and said no: `by` names it (`device fw1`, `switch n1`), `peer_error`
    /// is its own error (a NETCONF error-tag and message, an errno). The same request will be
    /// refused again until something changes.
    Refused { by: String, peer_error: String },
    /// The peer did not answer (connect failed, timed out, session closed). Later may work.
    Unreachable { peer: String },
    /// Something in the way is not Meshwire's (it carries no mark of ours), so it is left
    /// alone: an operator has to act.
    Conflict { object: String },
    /// The request cannot be expressed for this peer (a profile without the needed template, a
    /// number outside its range).
    Invalid,
    /// A local failure (an OS call, a namespace not there yet). Later may work.
    #[default]
    Local,
}

impl DriverError {
    /// A local failure (see [`Failure::Local`]); use [`with`](Self::with) to say otherwise.
    pub fn new(
        driver: impl Into<String>,
        target: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> DriverError {
        DriverError {
            driver: driver.into(),
            target: target.into(),
            reason: reason.to_string(),
            failure: Failure::Local,
        }
    }

    pub fn with(mut self, failure: Failure) -> DriverError {
        self.failure = failure;
        self
    }

    /// Whether the same operation may succeed later without anyone changing anything.
    pub fn retryable(&self) -> bool {
        matches!(self.failure, Failure::Unreachable { .. } | Failure::Local)
    }
}

/// How long one data-plane peer (a node driver, a device's eNSM) may take to observe.
pub const PEER_OBSERVE_TIMEOUT: Duration = Duration::from_secs(8);

/// What a driver sees of one desired connection.
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

/// The result of `observe`: health per connection id (absent ids are healthy).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    pub connections: HashMap<String, Health>,
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn apply(&self, connection: &Connection) -> Result<(), DriverError>;
    async fn remove(&self, connection: &Connection) -> Result<(), DriverError>;
    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError>;
    /// The topology changed (and once at start): drivers that manage nodes (bridges, tunnel
    /// ports, switch channels) bring them in line here. Errors are logged, never fatal: a node
    /// that cannot be reached now is retried at the next change or reconcile.
    async fn topology(&self, _topology: &Topology) -> Result<(), DriverError> {
        Ok(())
    }
    /// Once at start, with every connection the controller holds: remove what carries our mark
    /// in the data plane and belongs to none of them (what a crash left). Returns how many
    /// objects went. Never fatal: what cannot be swept now stays until the next start.
    async fn sweep(&self, _desired: &[Connection], _topology: &Topology) -> usize {
        0
    }
}

/// Routes each connection to the driver of its client node's forwarder (kernel nodes to the
/// netlink driver, ovs nodes to the Open vSwitch driver). A forwarder with no driver here gets an
/// error naming it.
///
/// A connection whose endpoint is an external device has two halves: the device's eNSM
/// (attached with [`Dataplanes::attach_device`]) configures the device, and the node driver wires
/// the client's side of the tunnel. The device goes first: it may refuse (its own error then
/// fails the request, and nothing is left on the node).
/// Finds the driver of a device no eNSM attached in process (an eNSM in another process, by the
/// URL its endpoints registered with).
pub type DeviceResolver = Box<dyn Fn(&str) -> Option<Arc<dyn Driver>> + Send + Sync>;

pub struct Dataplanes {
    drivers: Vec<(ForwarderKind, Arc<dyn Driver>)>,
    devices: Mutex<HashMap<String, Arc<dyn Driver>>>,
    resolver: Mutex<Option<DeviceResolver>>,
    topology: Mutex<Topology>,
    name: String,
}

impl Dataplanes {
    pub fn new(drivers: Vec<(ForwarderKind, Arc<dyn Driver>)>) -> Self {
        let name = drivers
            .iter()
            .map(|(k, d)| format!("{k}={}", d.name()))
            .collect::<Vec<_>>()
            .join(",");
        Dataplanes {
            drivers,
            devices: Mutex::default(),
            resolver: Mutex::default(),
            topology: Mutex::new(Topology::default()),
            name,
        }
    }

    /// `driver` (an eNSM) configures device `device` from now on.
    pub fn attach_device(&self, device: &str, driver: Arc<dyn Driver>) {
        tracing::info!(%device, ensm = driver.name(), "eNSM attached");
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), driver);
    }

    /// How devices with no attached eNSM are found (called again each time one is missing).
    pub fn set_resolver(&self, r: DeviceResolver) {
        *self.resolver.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The attached driver of `device`, or a resolved one (which is then attached).
    fn device(&self, device: &str) -> Option<Arc<dyn Driver>> {
        if let Some(d) = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
        {
            return Some(d.clone());
        }
        let found = self
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|r| r(device))?;
        self.attach_device(device, found.clone());
        Some(found)
    }

    pub fn detach_device(&self, device: &str) {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device);
    }

    /// The eNSMs of the connection's devices (its endpoint's, its client's), in that order.
    fn device_drivers(&self, c: &Connection) -> Result<Vec<Arc<dyn Driver>>, DriverError> {
        let mut out = Vec::new();
        for d in [&c.placement.endpoint_device, &c.placement.client_device]
            .into_iter()
            .flatten()
        {
            out.push(self.device_driver(c, d)?);
        }
        Ok(out)
    }

    fn device_driver(&self, c: &Connection, d: &str) -> Result<Arc<dyn Driver>, DriverError> {
        self.device(d).ok_or_else(|| {
            DriverError::new(
                self.name.clone(),
                format!("connection {}", c.id),
                format!("no eNSM is attached for device {d} (start it in the controller with --ensm-device, or run `meshwire ensm`)"),
            )
            .with(Failure::Unreachable {
                peer: format!("the eNSM of device {d}"),
            })
        })
    }

    /// The node that wires the connection's node half: the client's node, or the endpoint's
    /// when the client is a device.
    fn node_of(c: &Connection) -> &str {
        match &c.placement.client_device {
            Some(_) => c.hops.last().map(|h| h.to.as_str()).unwrap_or_default(),
            None => c.client.node.as_str(),
        }
    }

    /// The forwarder of [`node_of`](Self::node_of); `None` when the node is not in the
    /// topology this driver was given (never guessed).
    fn forwarder_of(&self, c: &Connection) -> Option<ForwarderKind> {
        self.topology
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(Self::node_of(c))
            .map(|n| n.forwarder)
    }

    fn driver_for(&self, c: &Connection) -> Result<&Arc<dyn Driver>, DriverError> {
        let node = Self::node_of(c);
        let Some(kind) = self.forwarder_of(c) else {
            return Err(DriverError::new(
                self.name.clone(),
                format!("connection {}", c.id),
                format!("node {node} is not in the data plane's topology (apply a meshwire.io/v1 Node named {node:?})"),
            )
            .with(Failure::Invalid));
        };
        self.drivers
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d)
            .ok_or_else(|| {
                DriverError::new(
                    self.name.clone(),
                    format!("connection {}", c.id),
                    format!(
                        "node {node} has forwarder {kind}, which this controller does not drive (start it with --dataplane including {kind})"
                    ),
                )
                .with(Failure::Invalid)
            })
    }
}

#[async_trait]
impl Driver for Dataplanes {
    fn name(&self) -> &str {
        &self.name
    }
    async fn apply(&self, c: &Connection) -> Result<(), DriverError> {
        let devices = self.device_drivers(c)?;
        // Between two devices there is nothing for a node to wire.
        let node = match (&c.placement.endpoint_device, &c.placement.client_device) {
            (Some(_), Some(_)) => None,
            _ => Some(self.driver_for(c)?),
        };
        let mut done: Vec<&Arc<dyn Driver>> = Vec::new();
        for d in &devices {
            if let Err(e) = d.apply(c).await {
                for undo in done {
                    let _ = undo.remove(c).await;
                }
                return Err(e);
            }
            done.push(d);
        }
        if let Some(node) = node {
            if let Err(e) = node.apply(c).await {
                for undo in done {
                    let _ = undo.remove(c).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Every half is tried; the first error is returned.
    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        let mut first = None;
        if c.placement.endpoint_device.is_none() || c.placement.client_device.is_none() {
            let r = match self.driver_for(c) {
                Ok(d) => d.remove(c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        for d in [&c.placement.endpoint_device, &c.placement.client_device]
            .into_iter()
            .flatten()
        {
            match self.device_driver(c, d) {
                Ok(drv) => {
                    if let Err(e) = drv.remove(c).await {
                        first.get_or_insert(e);
                    }
                }
                // Nothing can be removed from a device nobody manages; its eNSM resyncs.
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "device half left to its eNSM's resync")
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
    /// Every node driver and every device's eNSM is asked at once, each within
    /// [`PEER_OBSERVE_TIMEOUT`]: one dead eNSM costs a round that timeout, not one call after
    /// another. A node driver that fails or does not answer fails the observation; a device that
    /// does not answer is skipped (its eNSM reports the device's loss through its endpoints).
    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
        let nodes = self.drivers.iter().map(|(kind, d)| {
            let mine: Vec<Connection> = desired
                .iter()
                .filter(|c| self.forwarder_of(c) == Some(*kind))
                .filter(|c| {
                    c.placement.endpoint_device.is_none() || c.placement.client_device.is_none()
                })
                .cloned()
                .collect();
            async move {
                match tokio::time::timeout(PEER_OBSERVE_TIMEOUT, d.observe(&mine)).await {
                    Ok(r) => r,
                    Err(_) => Err(DriverError::new(
                        d.name().to_string(),
                        format!("{kind} nodes"),
                        format!("no observation within {} s", PEER_OBSERVE_TIMEOUT.as_secs()),
                    )
                    .with(Failure::Unreachable {
                        peer: format!("the {kind} data plane"),
                    })),
                }
            }
        });
        for c in desired {
            for d in [&c.placement.endpoint_device, &c.placement.client_device]
                .into_iter()
                .flatten()
            {
                let _ = self.device(d);
            }
        }
        let devices: Vec<(String, Arc<dyn Driver>)> = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let device_views = devices.into_iter().map(|(name, d)| {
            let mine: Vec<Connection> = desired
                .iter()
                .filter(|c| {
                    c.placement.endpoint_device.as_deref() == Some(name.as_str())
                        || c.placement.client_device.as_deref() == Some(name.as_str())
                })
                .cloned()
                .collect();
            async move {
                let seen = tokio::time::timeout(PEER_OBSERVE_TIMEOUT, d.observe(&mine)).await;
                (name, mine, seen)
            }
        });
        let (node_views, device_views) = futures::future::join(
            futures::future::join_all(nodes),
            futures::future::join_all(device_views),
        )
        .await;
        let mut obs = Observation::default();
        for v in node_views {
            obs.connections.extend(v?.connections);
        }
        for (name, mine, seen) in device_views {
            // A device that cannot be asked is the eNSM's to report (as EndpointLost); an
            // error here must not hide the node drivers' view.
            let seen = match seen {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::warn!(device = %name, error = %e, "eNSM observe failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(device = %name, timeout = ?PEER_OBSERVE_TIMEOUT, "eNSM observe timed out");
                    continue;
                }
            };
            let ids: HashSet<&str> = mine.iter().map(|c| c.id.as_str()).collect();
            for (id, h) in seen.connections {
                // Only its own connections, and never a milder verdict over the node's.
                if !ids.contains(id.as_str()) || h == Health::Healthy {
                    continue;
                }
                let rank = |h: &Health| match h {
                    Health::Healthy => 0,
                    Health::Missing { .. } => 1,
                    Health::PathFailed { .. } => 2,
                    Health::EndpointLost { .. } => 3,
                    Health::ClientGone { .. } => 4,
                };
                if obs.connections.get(&id).is_none_or(|n| rank(&h) > rank(n)) {
                    obs.connections.insert(id, h);
                }
            }
        }
        Ok(obs)
    }
    /// Every node driver sweeps with the whole desired set (a kernel leg of an Open vSwitch
    /// connection is still wanted when the kernel driver looks).
    async fn sweep(&self, desired: &[Connection], topology: &Topology) -> usize {
        let mut n = 0;
        for (_, d) in &self.drivers {
            n += d.sweep(desired, topology).await;
        }
        n
    }
    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        *self.topology.lock().unwrap_or_else(|p| p.into_inner()) = t.clone();
        let mut first = None;
        for (_, d) in &self.drivers {
            if let Err(e) = d.topology(t).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
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
    async fn apply(&self, _: &Connection) -> Result<(), DriverError> {
        Ok(())
    }
    async fn remove(&self, _: &Connection) -> Result<(), DriverError> {
        Ok(())
    }
    async fn observe(&self, _: &[Connection]) -> Result<Observation, DriverError> {
        Ok(Observation::default())
    }
}

#[cfg(any(test, feature = "testing"))]
pub use crate::testing::RecordingDriver;
