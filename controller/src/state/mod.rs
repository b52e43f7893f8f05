//! The controller's in-memory state and its pure operations: registry, topology, selection,
//! negotiation, pools and load. No I/O and no clock: callers pass `now`. The async
//! [`Controller`](crate::Controller) wraps this behind a mutex and talks to the store and driver.

mod plan;
mod sriov;
mod vl3;

pub use sriov::{PoolUsage, VfChoice};

use std::collections::{BTreeMap, HashMap, HashSet};

use ipnet::IpNet;
use meshwire_models::{
    Connection, NetworkService, NetworkServiceEndpoint, Object, ObjectKey, ObjectKind, Payload,
    Topology,
};

use crate::error::ControllerError;
use crate::negotiate::NumberPools;
use crate::path::Graph;
use crate::pool::{AddressPools, AddressShape, PoolError};

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where connection addresses come from when an endpoint has no `ipamPrefix`.
    pub ipam_prefix: IpNet,
    /// The payload MTU every connection must carry at least.
    pub min_mtu: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ipam_prefix: "172.16.0.0/16".parse().expect("valid prefix"),
            min_mtu: 1280,
        }
    }
}

/// A registered endpoint and what the controller knows of its health.
#[derive(Debug, Clone)]
pub struct EndpointEntry {
    pub nse: NetworkServiceEndpoint,
    /// Set when the data plane reported the endpoint lost; cleared when it is applied again.
    pub down: bool,
}

/// What to avoid when planning (healing around a failure).
#[derive(Debug, Clone, Default)]
pub struct Avoid {
    pub endpoints: Vec<String>,
    /// The endpoints of the service chain this leg continues, root first: never selected again
    /// (a chain that can only go back to one of them is refused as a cycle).
    pub chain: Vec<String>,
    pub links: Vec<String>,
    pub vertices: Vec<String>,
    /// Only this endpoint may be selected: the peer legs of a vL3 join two given routers.
    pub pinned: Option<String>,
}

impl Avoid {
    /// Avoid one endpoint (it is gone or lost).
    pub fn endpoint(name: &str) -> Avoid {
        Avoid {
            endpoints: vec![name.to_string()],
            ..Default::default()
        }
    }
}

/// Whether applying an object changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Default)]
pub struct State {
    pub config: Config,
    services: HashMap<String, NetworkService>,
    endpoints: HashMap<String, EndpointEntry>,
    /// Endpoint names per service, in registration order.
    by_service: HashMap<String, Vec<String>>,
    topology: Topology,
    graph: Graph,
    graph_dirty: bool,
    /// Ordered maps for what grows with the connections: a hash map's growth moves every
    /// entry at once under the state mutex (tens of ms at 100,000 connections, felt by every
    /// request in flight); a B-tree grows one node at a time.
    connections: BTreeMap<String, Connection>,
    load: HashMap<String, u32>,
    /// Client interface names in use, per client workload.
    client_ifaces: BTreeMap<String, HashSet<String>>,
    numbers: NumberPools,
    addresses: AddressPools,
    /// Round-robin turn per service.
    turns: HashMap<String, usize>,
    /// SR-IOV pools per node and the VFs and tokens connections hold.
    sriov: sriov::Claims,
}

impl State {
    pub fn new(config: Config) -> Self {
        State {
            config,
            ..Default::default()
        }
    }

    // ---- registry and topology ------------------------------------------------------------

    /// Adds or replaces an object.
    pub fn upsert(&mut self, obj: Object) -> Change {
        let key = obj.key();
        let change = |old: Option<bool>| match old {
            None => Change::Created,
            Some(true) => Change::Unchanged,
            Some(false) => Change::Updated,
        };
        match obj {
            Object::NetworkService(s) => {
                let old = self.services.get(&s.name).map(|o| *o == s);
                self.services.insert(s.name.clone(), s);
                change(old)
            }
            Object::NetworkServiceEndpoint(e) => {
                let old = self.endpoints.get(&e.name).map(|o| o.nse == e && !o.down);
                self.unindex(&e.name);
                for svc in &e.network_service_names {
                    self.by_service
                        .entry(svc.clone())
                        .or_default()
                        .push(e.name.clone());
                }
                self.endpoints.insert(
                    e.name.clone(),
                    EndpointEntry {
                        nse: e,
                        down: false,
                    },
                );
                change(old)
            }
            Object::Node(n) => {
                self.graph_dirty = true;
                let old = self.topology.nodes.get(&n.name).map(|o| *o == n);
                self.topology.nodes.insert(n.name.clone(), n);
                change(old)
            }
            Object::Device(d) => {
                self.graph_dirty = true;
                let old = self.topology.devices.get(&d.name).map(|o| *o == d);
                self.topology.devices.insert(d.name.clone(), d);
                change(old)
            }
            Object::Link(l) => {
                self.graph_dirty = true;
                let old = self.topology.links.get(&l.name).map(|o| *o == l);
                let _ = key;
                self.topology.links.insert(l.name.clone(), l);
                change(old)
            }
        }
    }

    fn unindex(&mut self, endpoint: &str) {
        if let Some(old) = self.endpoints.get(endpoint) {
            for svc in &old.nse.network_service_names {
                if let Some(list) = self.by_service.get_mut(svc) {
                    list.retain(|n| n != endpoint);
                    if list.is_empty() {
                        self.by_service.remove(svc);
                    }
                }
            }
        }
    }

    /// Removes an object. A service, node or device still used by live connections is refused;
    /// removing an endpoint or link leaves its connections for the reconcile loop to heal.
    pub fn remove(&mut self, key: &ObjectKey) -> Result<Object, ControllerError> {
        let not_found = || ControllerError::NotFound {
            key: key.to_string(),
        };
        let in_use = |conns: Vec<&Connection>| -> Result<(), ControllerError> {
            match conns.first() {
                None => Ok(()),
                Some(c) => Err(ControllerError::InUse {
                    object: key.to_string(),
                    count: conns.len(),
                    first: c.id.clone(),
                }),
            }
        };
        match key.kind {
            ObjectKind::NetworkService => {
                in_use(
                    self.connections
                        .values()
                        .filter(|c| c.network_service == key.name)
                        .collect(),
                )?;
                self.services
                    .remove(&key.name)
                    .map(Object::NetworkService)
                    .ok_or_else(not_found)
            }
            ObjectKind::NetworkServiceEndpoint => {
                self.unindex(&key.name);
                self.endpoints
                    .remove(&key.name)
                    .map(|e| Object::NetworkServiceEndpoint(e.nse))
                    .ok_or_else(not_found)
            }
            ObjectKind::Node | ObjectKind::Device => {
                in_use(
                    self.connections
                        .values()
                        .filter(|c| {
                            c.client.node == key.name || c.path.iter().any(|s| s.name == key.name)
                        })
                        .collect(),
                )?;
                self.graph_dirty = true;
                let removed = if key.kind == ObjectKind::Node {
                    self.topology.nodes.remove(&key.name).map(Object::Node)
                } else {
                    self.topology.devices.remove(&key.name).map(Object::Device)
                };
                removed.ok_or_else(not_found)
            }
            ObjectKind::Link => {
                self.graph_dirty = true;
                self.topology
                    .links
                    .remove(&key.name)
                    .map(Object::Link)
                    .ok_or_else(not_found)
            }
        }
    }

    /// The object under `key`, as applied.
    pub fn object(&self, key: &ObjectKey) -> Option<Object> {
        let n = &key.name;
        match key.kind {
            ObjectKind::NetworkService => self.services.get(n).cloned().map(Object::NetworkService),
            ObjectKind::NetworkServiceEndpoint => self
                .endpoints
                .get(n)
                .map(|e| Object::NetworkServiceEndpoint(e.nse.clone())),
            ObjectKind::Node => self.topology.nodes.get(n).cloned().map(Object::Node),
            ObjectKind::Device => self.topology.devices.get(n).cloned().map(Object::Device),
            ObjectKind::Link => self.topology.links.get(n).cloned().map(Object::Link),
        }
    }

    /// Every object of `kind`, sorted by name.
    pub fn objects(&self, kind: ObjectKind) -> Vec<Object> {
        let mut v: Vec<Object> = match kind {
            ObjectKind::NetworkService => self
                .services
                .values()
                .cloned()
                .map(Object::NetworkService)
                .collect(),
            ObjectKind::NetworkServiceEndpoint => self
                .endpoints
                .values()
                .map(|e| Object::NetworkServiceEndpoint(e.nse.clone()))
                .collect(),
            ObjectKind::Node => self
                .topology
                .nodes
                .values()
                .cloned()
                .map(Object::Node)
                .collect(),
            ObjectKind::Device => self
                .topology
                .devices
                .values()
                .cloned()
                .map(Object::Device)
                .collect(),
            ObjectKind::Link => self
                .topology
                .links
                .values()
                .cloned()
                .map(Object::Link)
                .collect(),
        };
        v.sort_by(|a, b| a.key().name.cmp(&b.key().name));
        v
    }

    pub fn services(&self) -> Vec<&NetworkService> {
        let mut v: Vec<_> = self.services.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn service(&self, name: &str) -> Option<&NetworkService> {
        self.services.get(name)
    }

    pub fn endpoints(&self) -> Vec<&EndpointEntry> {
        let mut v: Vec<_> = self.endpoints.values().collect();
        v.sort_by(|a, b| a.nse.name.cmp(&b.nse.name));
        v
    }

    pub fn endpoint(&self, name: &str) -> Option<&EndpointEntry> {
        self.endpoints.get(name)
    }

    pub fn load_of(&self, endpoint: &str) -> u32 {
        self.load.get(endpoint).copied().unwrap_or(0)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn set_endpoint_down(&mut self, name: &str, down: bool) {
        if let Some(e) = self.endpoints.get_mut(name) {
            e.down = down;
        }
    }

    /// Endpoints whose registration lapsed at `now`.
    pub fn expired_endpoints(&self, now_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .endpoints
            .values()
            .filter(|e| e.nse.expires_at_ms.is_some_and(|t| t <= now_ms))
            .map(|e| e.nse.name.clone())
            .collect();
        v.sort();
        v
    }

    // ---- connections ----------------------------------------------------------------------

    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.connections.values()
    }

    pub fn connection(&self, id: &str) -> Option<&Connection> {
        self.connections.get(id)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Values in use in each pool: (vni, gre key, mpls label, vlan id, addresses).
    pub fn pool_usage(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("vxlan-vni", self.numbers.vni.in_use()),
            ("gre-key", self.numbers.gre_key.in_use()),
            ("mpls-label", self.numbers.mpls_label.in_use()),
            ("vlan-id", self.numbers.vlan_id.in_use()),
            ("addresses", self.addresses.in_use()),
        ])
    }

    /// Records a planned (or restored) connection, counting it against its endpoint.
    pub fn commit(&mut self, conn: Connection) {
        // Planned connections claimed their VF already; this re-marks a heal's replacement
        // (same id) after its old version gave its claims back.
        let _ = self.mark_vf(&conn, true);
        // A healed vL3 member's address was given back with its old version: held again.
        if conn.vl3.is_some() {
            self.mark_addresses(&conn, true);
        }
        *self
            .load
            .entry(conn.network_service_endpoint_name.clone())
            .or_default() += 1;
        self.client_ifaces
            .entry(conn.client.workload().to_string())
            .or_default()
            .insert(conn.interface.clone());
        if let Some(old) = self.connections.insert(conn.id.clone(), conn) {
            self.forget(&old);
        }
    }

    /// Replaces a recorded connection's fields that do not change claims (state, error).
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut Connection)) -> Option<Connection> {
        let c = self.connections.get_mut(id)?;
        f(c);
        Some(c.clone())
    }

    /// Removes a recorded connection and gives back its claims.
    pub fn remove_connection(&mut self, id: &str) -> Option<Connection> {
        let c = self.connections.remove(id)?;
        self.forget(&c);
        self.unclaim(&c);
        Some(c)
    }

    fn forget(&mut self, c: &Connection) {
        if let Some(l) = self.load.get_mut(&c.network_service_endpoint_name) {
            *l = l.saturating_sub(1);
            if *l == 0 {
                self.load.remove(&c.network_service_endpoint_name);
            }
        }
        let w = c.client.workload();
        if let Some(set) = self.client_ifaces.get_mut(w) {
            if !self
                .connections
                .values()
                .any(|o| o.client.workload() == w && o.interface == c.interface)
            {
                set.remove(&c.interface);
            }
            if set.is_empty() {
                self.client_ifaces.remove(w);
            }
        }
    }

    /// Gives back the numbers and addresses a connection holds.
    pub fn unclaim(&mut self, c: &Connection) {
        for h in &c.hops {
            let _ = self.numbers.mark(&h.mechanism, false);
        }
        self.mark_addresses(c, false);
        let _ = self.mark_vf(c, false);
    }

    /// Re-claims exactly what a stored connection holds (restore after restart).
    pub fn restore(&mut self, c: Connection) -> Result<(), PoolError> {
        let mut seen = HashSet::new();
        for h in &c.hops {
            // MPLS and VLAN repeat one claim on every hop.
            if seen.insert(format!("{:?}", h.mechanism)) {
                self.numbers.mark(&h.mechanism, true)?;
            }
        }
        self.mark_addresses(&c, true);
        self.mark_vf(&c, true)?;
        self.commit(c);
        Ok(())
    }

    fn mark_addresses(&mut self, c: &Connection, used: bool) {
        let Some(prefix) = c.address_pool else { return };
        let member = c
            .vl3
            .as_ref()
            .is_some_and(|v| v.role == meshwire_models::Vl3Role::Member);
        let shape = if c.payload == Payload::Ip && !member {
            AddressShape::Pair
        } else {
            AddressShape::Host
        };
        // A vL3 member keeps its address across a heal: the replacement (same id) holds the
        // one the recorded connection holds, so giving back the replacement's gives back
        // nothing while the recorded one still holds it.
        if !used && member {
            let held = self.connections.get(&c.id).is_some_and(|o| {
                o.address_pool == c.address_pool
                    && o.ip_context.src_ip_addrs.first() == c.ip_context.src_ip_addrs.first()
            });
            if held {
                return;
            }
        }
        if let Some(a) = c.ip_context.src_ip_addrs.first() {
            self.addresses.mark(prefix, shape, a.addr(), used);
        }
    }
}
