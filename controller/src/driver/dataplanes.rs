//! The composite driver the controller holds: it routes each connection's halves to the driver
//! of its node's forwarder and to the eNSM of each device it touches, splits a full set by
//! scope, and merges the drivers' event streams into one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use meshwire_models::{Connection, ForwarderKind, Topology};
use tokio::sync::broadcast;

use super::{
    Desired, Driver, DriverError, DriverEvent, Failure, Observation, Report, Scope, Update,
    EVENT_BUFFER, PEER_OBSERVE_TIMEOUT,
};

/// Finds the driver of a device no eNSM attached in process (an eNSM in another process, by the
/// URL its endpoints registered with).
pub type DeviceResolver = Box<dyn Fn(&str) -> Option<Arc<dyn Driver>> + Send + Sync>;

/// Routes each connection to the driver of its client node's forwarder (kernel nodes to the
/// netlink driver, ovs nodes to the Open vSwitch driver). A forwarder with no driver here gets an
/// error naming it.
///
/// A connection whose endpoint is an external device has two halves: the device's eNSM
/// (attached with [`Dataplanes::attach_device`]) configures the device, and the node driver wires
/// the client's side of the tunnel. The device goes first: it may refuse (its own error then
/// fails the request, and nothing is left on the node).
pub struct Dataplanes {
    drivers: Vec<(ForwarderKind, Arc<dyn Driver>)>,
    devices: Mutex<HashMap<String, Arc<dyn Driver>>>,
    resolver: Mutex<Option<DeviceResolver>>,
    topology: Mutex<Topology>,
    name: String,
    events: broadcast::Sender<DriverEvent>,
}

impl Dataplanes {
    pub fn new(drivers: Vec<(ForwarderKind, Arc<dyn Driver>)>) -> Self {
        let name = drivers
            .iter()
            .map(|(k, d)| format!("{k}={}", d.name()))
            .collect::<Vec<_>>()
            .join(",");
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let d = Dataplanes {
            drivers,
            devices: Mutex::default(),
            resolver: Mutex::default(),
            topology: Mutex::new(Topology::default()),
            name,
            events,
        };
        for (_, driver) in &d.drivers {
            d.forward(driver);
        }
        d
    }

    /// Passes `driver`'s events on to this composite's subscribers, until its stream ends.
    fn forward(&self, driver: &Arc<dyn Driver>) {
        let (Some(mut rx), Ok(rt)) = (driver.subscribe(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let tx = self.events.clone();
        let name = driver.name().to_string();
        rt.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let _ = tx.send(e);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(driver = %name, missed = n, "driver events lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// `driver` (an eNSM) configures device `device` from now on.
    pub fn attach_device(&self, device: &str, driver: Arc<dyn Driver>) {
        tracing::info!(%device, ensm = driver.name(), "eNSM attached");
        let before = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), driver.clone());
        if before.is_none_or(|b| !Arc::ptr_eq(&b, &driver)) {
            self.forward(&driver);
        }
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

    fn driver_for(&self, c: &Connection) -> Result<(ForwarderKind, &Arc<dyn Driver>), DriverError> {
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
            .map(|(k, d)| (*k, d))
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

    /// Both halves of one connection: each device first (it may refuse), then the node; a
    /// failure undoes the halves already wired.
    async fn wire(&self, version: u64, c: &Connection) -> Result<(), DriverError> {
        let mut devices = Vec::new();
        for d in [&c.placement.endpoint_device, &c.placement.client_device]
            .into_iter()
            .flatten()
        {
            devices.push((Scope::Device(d.clone()), self.device_driver(c, d)?));
        }
        // Between two devices there is nothing for a node to wire.
        let node = match (&c.placement.endpoint_device, &c.placement.client_device) {
            (Some(_), Some(_)) => None,
            _ => Some(self.driver_for(c)?),
        };
        let mut done: Vec<(Scope, Arc<dyn Driver>)> = Vec::new();
        let halves = devices
            .into_iter()
            .chain(node.map(|(kind, d)| (Scope::Forwarder(kind), d.clone())));
        for (scope, d) in halves {
            if let Err(e) = d
                .converge(&Desired::upsert(scope.clone(), version, c))
                .await
            {
                for (scope, undo) in done {
                    let _ = undo.converge(&Desired::remove(scope, version, c)).await;
                }
                return Err(e);
            }
            done.push((scope, d));
        }
        Ok(())
    }

    /// Every half is tried; the first error is returned.
    async fn unwire(&self, version: u64, c: &Connection) -> Result<(), DriverError> {
        let mut first = None;
        if c.placement.endpoint_device.is_none() || c.placement.client_device.is_none() {
            let r = match self.driver_for(c) {
                Ok((kind, d)) => d
                    .converge(&Desired::remove(Scope::Forwarder(kind), version, c))
                    .await
                    .map(drop),
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
                    let scope = Scope::Device(d.clone());
                    if let Err(e) = drv.converge(&Desired::remove(scope, version, c)).await {
                        first.get_or_insert(e);
                    }
                }
                // Nothing can be removed from a device nobody manages; its eNSM resyncs.
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "device half left to its eNSM's full set")
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Every node driver and every device's eNSM gets its part at once, each within
    /// [`PEER_OBSERVE_TIMEOUT`]: one dead eNSM costs a round that timeout, not one call after
    /// another. A node driver that fails or does not answer fails the whole; a device that
    /// does not answer is skipped (its eNSM reports the device's loss through its endpoints).
    async fn full(&self, version: u64, desired: &[Connection]) -> Result<Report, DriverError> {
        let node_half = |c: &&Connection| {
            c.placement.endpoint_device.is_none() || c.placement.client_device.is_none()
        };
        let nodes = self.drivers.iter().map(|(kind, d)| {
            let (mine, shared): (Vec<&Connection>, Vec<&Connection>) = desired
                .iter()
                .filter(node_half)
                .partition(|c| self.forwarder_of(c) == Some(*kind));
            let want = Desired {
                scope: Scope::Forwarder(*kind),
                version,
                update: Update::Full {
                    connections: mine.into_iter().cloned().collect(),
                    shared: shared.into_iter().cloned().collect(),
                },
            };
            async move {
                match tokio::time::timeout(PEER_OBSERVE_TIMEOUT, d.converge(&want)).await {
                    Ok(r) => r,
                    Err(_) => Err(DriverError::new(
                        d.name().to_string(),
                        want.scope.to_string(),
                        format!("no answer within {} s", PEER_OBSERVE_TIMEOUT.as_secs()),
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
            let ids: HashSet<String> = mine.iter().map(|c| c.id.clone()).collect();
            let want = Desired::full(Scope::Device(name.clone()), version, mine);
            async move {
                let seen = tokio::time::timeout(PEER_OBSERVE_TIMEOUT, d.converge(&want)).await;
                (name, ids, seen)
            }
        });
        let (node_views, device_views) = futures::future::join(
            futures::future::join_all(nodes),
            futures::future::join_all(device_views),
        )
        .await;
        let mut report = Report::at(version);
        for v in node_views {
            let v = v?;
            report.swept += v.swept;
            report
                .observation
                .connections
                .extend(v.observation.connections);
        }
        for (name, ids, seen) in device_views {
            // A device that cannot be asked is the eNSM's to report (as EndpointLost); an
            // error here must not hide the node drivers' view.
            let seen = match seen {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(device = %name, error = %e, "eNSM full set failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(device = %name, timeout = ?PEER_OBSERVE_TIMEOUT, "eNSM full set timed out");
                    continue;
                }
            };
            report.swept += seen.swept;
            merge(&mut report.observation, seen.observation, &ids);
        }
        Ok(report)
    }
}

/// Adds a device's view: only its own connections, and never a milder verdict over the node's.
fn merge(into: &mut Observation, seen: Observation, ids: &HashSet<String>) {
    for (id, h) in seen.connections {
        if !ids.contains(&id) || h.rank() == 0 {
            continue;
        }
        if into
            .connections
            .get(&id)
            .is_none_or(|n| h.rank() > n.rank())
        {
            into.connections.insert(id, h);
        }
    }
}

#[async_trait]
impl Driver for Dataplanes {
    fn name(&self) -> &str {
        &self.name
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        match &desired.update {
            Update::Delta { upsert, remove } => {
                for c in remove.iter() {
                    self.unwire(desired.version, c).await?;
                }
                for c in upsert.iter() {
                    self.wire(desired.version, c).await?;
                }
                Ok(Report::at(desired.version))
            }
            Update::Full { connections, .. } => self.full(desired.version, connections).await,
        }
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

    fn subscribe(&self) -> Option<broadcast::Receiver<DriverEvent>> {
        Some(self.events.subscribe())
    }
}
