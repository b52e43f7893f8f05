//! The Linux kernel data plane, over rtnetlink.
//!
//! ```text
//!  Controller ──Desired (delta | full)──▶ KernelDriver ──wiring::plan (pure)──▶ Wiring
//!                                            │
//!                                            ├─ Namespaces: one netlink socket per netns,
//!                                            │  opened on a thread that entered it
//!                                            └─ link / address / route requests per end
//! ```
//!
//! Everything created carries the alias `meshwire:<connection id>`, and routes carry protocol
//! [`wiring::ROUTE_PROTOCOL`]: an interface of the same name that is not ours is never touched,
//! and `remove` deletes only what carries our alias. Every operation is idempotent: applying over
//! a complete or half-done wiring converges, and removing what is already gone succeeds.

pub mod known;
mod legs;
mod lend;
pub mod locate;
pub mod netns;
mod nsgone;
mod observe;
pub mod retire;
pub mod sweep;
pub mod vl3;
pub mod wiring;

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use async_trait::async_trait;
use futures::TryStreamExt;
use meshwire_controller::driver::{
    Desired, Driver, DriverError, DriverEvent, Failure, Happened, Ledger, Report, Scope, Update,
    EVENT_BUFFER,
};
use meshwire_models::{Connection, Topology};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder,
};

use netns::Namespaces;
use retire::Retirer;
use wiring::{alias, End, Wiring};

const EEXIST: i32 = 17;
pub(crate) const ENODEV: i32 = 19;

/// Wires connections with veth pairs, VXLAN devices and bridges in network namespaces.
/// [`KernelDriver::new`] also reports interfaces of desired connections that go away;
/// [`KernelDriver::without_events`] does not (a helper inside another driver).
#[derive(Default)]
pub struct KernelDriver {
    namespaces: std::sync::Arc<Namespaces>,
    /// Watches for named namespaces deleted ([`nsgone`]); aborted with the driver.
    ns_removals: Option<AbortOnDrop>,
    /// Removal retires interfaces at once and deletes them in batches ([`retire`]).
    retirer: Retirer,
    /// The desired set as handed (deltas and full sets).
    ledger: std::sync::Arc<Ledger>,
    /// Interfaces of desired connections that went away.
    events: Option<tokio::sync::broadcast::Sender<DriverEvent>>,
    /// The namespaces of the topology's nodes are swept too.
    topology: std::sync::Mutex<Topology>,
    /// What the last sweep found unwanted ([`sweep`]).
    suspects: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When the last sweep ran, and the least time between two.
    last_sweep: std::sync::Mutex<Option<tokio::time::Instant>>,
    sweep_interval: std::sync::Mutex<std::time::Duration>,
    /// `Some(node)`: this driver holds one node's part of each connection (a node agent's);
    /// `None`: every node's (the controller's own host holds all of them).
    node: Option<String>,
    /// The namespaces this driver has wired in ([`known`]): swept even when no desired
    /// connection names them any more.
    known: known::Known,
    /// SR-IOV VFs are a stand-in's (veths, a sysfs tree elsewhere than `/sys`): no PF-side
    /// settings, and a VF is recognised by our mark alone (a real VF also by its PCI address,
    /// which the kernel gives as its netdev's parent device).
    sriov_standin: bool,
    /// The DNS servers of the vL3 routers here ([`vl3`]).
    vl3: vl3::Routers,
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An interface as we found it.
pub(crate) struct Found {
    index: u32,
    alias: Option<String>,
    /// The kernel's parent device (a real VF's netdev: its PCI address).
    parent: Option<String>,
}

pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn ns_name(ns: &Option<String>) -> &str {
    ns.as_deref().unwrap_or("(host)")
}

pub(crate) fn found(msg: &LinkMessage) -> Found {
    let alias = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.clone()),
        _ => None,
    });
    let parent = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::ParentDevName(s) => Some(s.clone()),
        _ => None,
    });
    Found {
        index: msg.header.index,
        alias,
        parent,
    }
}

impl KernelDriver {
    pub fn new() -> Self {
        Self::with_events(
            Scope::Forwarder(meshwire_models::ForwarderKind::Kernel),
            None,
        )
    }

    /// A driver reporting its events under `scope`, of every node or of `node` alone.
    fn with_events(scope: Scope, node: Option<String>) -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
        let mut d = KernelDriver {
            events: Some(tx.clone()),
            sweep_interval: std::sync::Mutex::new(sweep::SWEEP_INTERVAL),
            node,
            ..KernelDriver::default()
        };
        let ledger = d.ledger.clone();
        // A namespace we wired in, deleted: its name goes first (our sockets keep the rest).
        let (held, tx2, scope2) = (d.namespaces.clone(), tx.clone(), scope.clone());
        d.ns_removals = nsgone::watch(std::sync::Arc::new(move |name: &str| {
            if !held.holds(name) {
                return;
            }
            let _ = tx2.send(DriverEvent {
                scope: scope2.clone(),
                happened: Happened::NamespaceGone {
                    netns: name.to_string(),
                },
                detail: format!("namespace {name} was deleted"),
            });
        }))
        .map(AbortOnDrop);
        d.namespaces
            .watch(std::sync::Arc::new(move |ns, ifname, alias| {
                // Only an interface of a connection still desired is news: what a delta removed
                // (and the peer that went with it) is not.
                let Some(id) = alias.and_then(|a| a.strip_prefix(wiring::ALIAS_PREFIX)) else {
                    return;
                };
                if !ledger.contains(id) {
                    return;
                }
                let netns = ns_name(ns).to_string();
                let _ = tx.send(DriverEvent {
                    scope: scope.clone(),
                    happened: Happened::InterfaceGone {
                        netns: netns.clone(),
                        ifname: ifname.to_string(),
                    },
                    detail: format!("{netns}/{ifname} of connection {id} was deleted"),
                });
            }));
        d
    }

    /// The kernel driver of one node (a node agent's): it wires, observes and sweeps only what
    /// of each connection lives on `node` ([`wiring::plan_on`]): the client's side on the
    /// client's node, the endpoint's on the endpoint's.
    /// Its events carry `Scope::Node(node)`.
    pub fn for_node(node: &str) -> Self {
        Self::with_events(Scope::Node(node.to_string()), Some(node.to_string()))
    }

    /// Remembers the namespaces it wires in `path` (a node agent's state), so a restarted
    /// agent still sweeps a leftover in a namespace no desired connection names any more.
    pub fn remember_in(mut self, path: std::path::PathBuf) -> Self {
        self.known = known::Known::at(path);
        self
    }

    /// Treats SR-IOV VFs as a stand-in's (see the field): for `meshwire node --sysfs-root`
    /// elsewhere than `/sys`.
    pub fn sriov_standin(mut self, standin: bool) -> Self {
        self.sriov_standin = standin;
        self
    }

    /// Whether `f` is the VF at `pci`: a real VF's netdev has it as its parent device.
    fn is_vf(&self, f: &Found, pci: &str) -> bool {
        self.sriov_standin || f.parent.as_deref() == Some(pci)
    }

    /// The part of `c` this driver wires (`None`: nothing of it is here).
    fn plan(&self, c: &Connection) -> Result<Option<Wiring>, String> {
        let t = self.topology.lock().unwrap_or_else(|p| p.into_inner());
        wiring::plan_in(c, self.node.as_deref(), &t)
    }

    /// A kernel driver for use inside another driver (its workload legs): no events.
    pub fn without_events() -> Self {
        KernelDriver {
            sweep_interval: std::sync::Mutex::new(sweep::SWEEP_INTERVAL),
            ..KernelDriver::default()
        }
    }

    /// The least time between two sweeps (default [`sweep::SWEEP_INTERVAL`]; zero: every full
    /// set sweeps).
    pub fn set_sweep_interval(&self, every: std::time::Duration) {
        *self
            .sweep_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = every;
    }

    /// Returns once every interface removed so far is deleted from the kernel (removal takes
    /// it out of service at once; deletion follows in batches).
    pub async fn settled(&self) {
        self.retirer.settled().await
    }

    fn err(
        &self,
        c: &Connection,
        what: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> DriverError {
        DriverError::new(
            "kernel",
            format!("connection {} {what}", c.id),
            reason.to_string(),
        )
    }

    async fn handle(&self, c: &Connection, ns: &Option<String>) -> Result<Handle, DriverError> {
        self.namespaces
            .handle(ns)
            .await
            .map_err(|e| self.err(c, format!("netns {}", ns_name(ns)), e))
    }

    async fn find(h: &Handle, name: &str) -> Result<Option<Found>, rtnetlink::Error> {
        match h
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(Some(msg)) => Ok(Some(found(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `end`'s interface exists; refuses one of that name that is not this connection's.
    async fn existing(&self, c: &Connection, end: &End) -> Result<bool, DriverError> {
        let h = self.handle(c, &end.netns).await?;
        let at = || format!("{}/{}", ns_name(&end.netns), end.ifname);
        match Self::find(&h, &end.ifname).await.map_err(|e| self.err(c, at(), e))? {
            None => Ok(false),
            Some(f) if f.alias.as_deref() == Some(end.alias(&c.id).as_str()) => Ok(true),
            Some(f) => Err(self
                .err(
                    c,
                    at(),
                    format!("an interface of that name already exists and is not this connection's (alias {:?}); Meshwire leaves it alone", f.alias.unwrap_or_default()),
                )
                .with(Failure::Conflict { object: format!("interface {}", at()) })),
        }
    }

    async fn create_veth(
        &self,
        c: &Connection,
        client: &End,
        endpoint: &End,
    ) -> Result<(), DriverError> {
        let h = self.handle(c, &client.netns).await?;
        let fd = match &endpoint.netns {
            Some(n) if endpoint.netns != client.netns => {
                Some(netns::open(n).map_err(|e| self.err(c, format!("netns {n}"), e))?)
            }
            _ => None,
        };
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(endpoint.ifname.clone())
            .mtu(endpoint.mtu);
        if let Some(f) = &fd {
            peer = peer.setns_by_fd(f.as_raw_fd());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(client.ifname.clone())
            .mtu(client.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        h.link().add(msg).execute().await.map_err(|e| {
            self.err(
                c,
                format!("veth {}/{}", ns_name(&client.netns), client.ifname),
                e,
            )
        })
    }

    async fn create_vxlan(
        &self,
        c: &Connection,
        side: &wiring::Side,
        vni: u32,
        port: u16,
    ) -> Result<(), DriverError> {
        let h = self.handle(c, &side.underlay_netns).await?;
        let mut b = LinkVxlan::new(&side.end.ifname, vni)
            .local(side.local)
            .remote(side.remote)
            .port(port)
            .mtu(side.end.mtu);
        let fd = match &side.end.netns {
            Some(n) if side.end.netns != side.underlay_netns => {
                Some(netns::open(n).map_err(|e| self.err(c, format!("netns {n}"), e))?)
            }
            _ => None,
        };
        if let Some(f) = &fd {
            b = b.setns_by_fd(f.as_raw_fd());
        }
        h.link().add(b.build()).execute().await.map_err(|e| {
            self.err(
                c,
                format!(
                    "vxlan {} in {}",
                    side.end.ifname,
                    ns_name(&side.underlay_netns)
                ),
                e,
            )
        })
    }

    /// Tags, addresses, bridges, routes and brings up one end. Idempotent.
    async fn configure(&self, c: &Connection, end: &End) -> Result<(), DriverError> {
        let h = self.handle(c, &end.netns).await?;
        let at = format!("{}/{}", ns_name(&end.netns), end.ifname);
        let f = Self::find(&h, &end.ifname)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .ok_or_else(|| self.err(c, &at, "interface vanished while being wired"))?;
        let mut set = LinkUnspec::new_with_index(f.index)
            .alias(end.alias(&c.id))
            .mtu(end.mtu)
            .up();
        if let Some(mac) = end.mac {
            set = set.address(mac.to_vec());
        }
        let set = set.build();
        h.link()
            .set(set)
            .execute()
            .await
            .map_err(|e| self.err(c, &at, format!("set alias/mtu/up: {e}")))?;
        let mut addr_index = f.index;
        if let Some(br) = &end.bridge {
            let bridge = match Self::find(&h, br).await.map_err(|e| self.err(c, &at, e))? {
                Some(b) => b,
                None => {
                    match h.link().add(LinkBridge::new(br).build()).execute().await {
                        Ok(()) => {}
                        Err(e) if errno(&e) == Some(EEXIST) => {}
                        Err(e) => {
                            return Err(self.err(
                                c,
                                format!("bridge {}/{br}", ns_name(&end.netns)),
                                e,
                            ))
                        }
                    }
                    Self::find(&h, br)
                        .await
                        .map_err(|e| self.err(c, &at, e))?
                        .ok_or_else(|| self.err(c, br, "bridge vanished"))?
                }
            };
            h.link()
                .set(LinkUnspec::new_with_index(bridge.index).up().build())
                .execute()
                .await
                .map_err(|e| self.err(c, br, e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(f.index)
                        .controller(bridge.index)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| self.err(c, &at, format!("join bridge {br}: {e}")))?;
            addr_index = bridge.index;
        }
        for a in &end.addrs {
            match h
                .address()
                .add(addr_index, a.addr(), a.prefix_len())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(self.err(c, &at, format!("address {a}: {e}"))),
            }
        }
        for (ip, mac) in &end.neighbors {
            h.neighbours()
                .add(addr_index, *ip)
                .link_layer_address(mac)
                .state(rtnetlink::packet_route::neighbour::NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| self.err(c, &at, format!("neighbour {ip}: {e}")))?;
        }
        if end.router {
            if let Err(e) = vl3::forward_in(&end.netns).await {
                return Err(self.err(c, &at, format!("vL3 router forwarding: {e}")));
            }
        }
        for r in &end.routes {
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(r.prefix.addr(), r.prefix.prefix_len())
                .map_err(|e| self.err(c, &at, format!("route {}: {e:?}", r.prefix)))?;
            match r.next_hop {
                Some(nh) => {
                    b = b.gateway(nh).map_err(|e| {
                        self.err(c, &at, format!("route {} via {nh}: {e:?}", r.prefix))
                    })?;
                }
                // On the link: a next hop may then be reached through it.
                None => b = b.scope(rtnetlink::packet_route::route::RouteScope::Link),
            }
            if end.metric > 0 {
                b = b.priority(end.metric);
            }
            let msg = b
                .output_interface(addr_index)
                .protocol(RouteProtocol::Other(wiring::ROUTE_PROTOCOL))
                .build();
            // A router's member routes move between its legs as members heal: replaced.
            let add = h.route().add(msg);
            let add = if end.router { add.replace() } else { add };
            match add.execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(self.err(c, &at, format!("route {}: {e}", r.prefix))),
            }
        }
        if end.router {
            vl3::prune_routes(&h, addr_index, &end.routes)
                .await
                .map_err(|e| self.err(c, &at, format!("pruning vL3 routes: {e}")))?;
        }
        if let (Some(r), Some(ns)) = (&end.resolver, &end.netns) {
            if let Err(e) = vl3::write_resolver(ns, &c.id, r.server, &r.zone) {
                tracing::warn!(connection = %c.id, netns = %ns, error = %e, "writing the vL3 resolver failed; names will not resolve there");
            }
        }
        Ok(())
    }

    /// Takes `end`'s interface out of service if it is this connection's: retired at once (down,
    /// renamed, its name free), deleted in the next batch ([`retire`]). Whether it retired one.
    async fn delete(&self, c: &Connection, end: &End) -> Result<bool, DriverError> {
        if !netns::exists(&end.netns) {
            self.namespaces.forget(&end.netns);
            return Ok(false);
        }
        let h = self.handle(c, &end.netns).await?;
        let at = format!("{}/{}", ns_name(&end.netns), end.ifname);
        match Self::find(&h, &end.ifname)
            .await
            .map_err(|e| self.err(c, &at, e))?
        {
            Some(f) if f.alias.as_deref() == Some(alias(&c.id).as_str()) => self
                .retirer
                .retire(&h, &end.netns, f.index)
                .await
                .map(|()| true)
                .map_err(|e| self.err(c, &at, format!("delete: {e}"))),
            Some(f) => {
                tracing::warn!(connection = %c.id, interface = %at, alias = ?f.alias, "not ours; left in place");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Interface name → alias of every link in `ns`, or None when the namespace is gone.
    async fn links(&self, ns: &Option<String>) -> Option<HashMap<String, Option<String>>> {
        if !netns::exists(ns) {
            self.namespaces.forget(ns);
            return None;
        }
        let h = self.namespaces.handle(ns).await.ok()?;
        let mut out = HashMap::new();
        let mut stream = h.link().get().execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(n) = name {
                out.insert(n, found(&msg).alias);
            }
        }
        Some(out)
    }
}

impl KernelDriver {
    /// Wires `c`'s part here; the names of the interfaces it had to create.
    async fn apply(&self, c: &Connection) -> Result<Vec<String>, DriverError> {
        let Some(w) = self.plan(c).map_err(|r| self.err(c, "", r))? else {
            return Ok(Vec::new());
        };
        // Remembered before anything is created: a crash halfway still leaves it known.
        for end in w.ends() {
            self.known.note(&end.netns);
        }
        if let Wiring::Vxlan {
            client, endpoint, ..
        } = &w
        {
            for side in client.iter().chain(endpoint.iter()) {
                self.known.note(&side.underlay_netns);
            }
        }
        let mut created = Vec::new();
        match &w {
            Wiring::Veth { client, endpoint } => {
                if !self.existing(c, client).await? {
                    // A leftover half (the peer) of an earlier attempt would block the pair.
                    self.delete(c, endpoint).await?;
                    self.create_veth(c, client, endpoint).await?;
                    created.extend([client.ifname.clone(), endpoint.ifname.clone()]);
                }
            }
            Wiring::Vxlan {
                client,
                endpoint,
                vni,
                port,
            } => {
                for side in client.iter().chain(endpoint.iter()) {
                    if !self.existing(c, &side.end).await? {
                        self.create_vxlan(c, side, *vni, *port).await?;
                        created.push(side.end.ifname.clone());
                    }
                }
            }
            Wiring::Legs(legs) => return self.apply_legs(c, legs).await,
            Wiring::Vf { client, vf } => self.lend_vf(c, client, vf).await?,
        }
        for end in w.ends() {
            self.configure(c, end).await?;
        }
        Ok(created)
    }

    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        let Ok(Some(w)) = self.plan(c) else {
            return Ok(());
        };
        for end in w.ends() {
            if let (Some(_), Some(ns)) = (&end.resolver, &end.netns) {
                vl3::forget_resolver(ns, &c.id);
            }
        }
        match &w {
            // A veth's peer goes with it: retiring the client's end stops both (the peer loses
            // its carrier) and the batch deletes both. The endpoint's end is only retired by
            // itself when the client's is gone (a leftover half, a deleted client namespace).
            Wiring::Veth { client, endpoint } => {
                if !self.delete(c, client).await? {
                    self.delete(c, endpoint).await?;
                }
            }
            Wiring::Vxlan { .. } => {
                for end in w.ends() {
                    self.delete(c, end).await?;
                }
            }
            Wiring::Vf { client, vf } => self.return_vf(c, client, vf).await?,
            // Each leg is a veth: the bridge's end goes, and its peer with it.
            Wiring::Legs(legs) => {
                for leg in legs {
                    if !self.delete(c, &leg.bridge_port).await? {
                        self.delete(c, &leg.workload).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for KernelDriver {
    fn name(&self) -> &str {
        "kernel"
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        match &desired.update {
            Update::Delta { upsert, remove } => {
                let _wiring = self.ledger.delta(desired.version, upsert, remove).await;
                for c in remove.iter() {
                    self.remove(c).await?;
                }
                let mut report = Report::at(desired.version);
                for c in upsert.iter() {
                    report.created.extend(self.apply(c).await?);
                }
                if upsert.iter().chain(remove.iter()).any(|c| c.vl3.is_some()) {
                    self.vl3
                        .sync(&self.ledger.snapshot(), self.node.as_deref())
                        .await;
                }
                Ok(report)
            }
            Update::Full {
                connections,
                shared,
            } => {
                let at_once = self.ledger.untouched();
                let (_held, mine) = self.ledger.full(desired.version, connections).await;
                let mut all = mine.clone();
                all.extend(shared.iter().cloned());
                let topology = self
                    .topology
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let swept = self.sweep_unwanted(&all, &topology, at_once).await;
                self.underlays(&topology).await;
                self.vl3.sync(&mine, self.node.as_deref()).await;
                Ok(Report {
                    version: desired.version,
                    observation: self.observe(&mine).await,
                    swept: swept.interfaces + swept.routes,
                    created: Vec::new(),
                })
            }
        }
    }

    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        *self.topology.lock().unwrap_or_else(|p| p.into_inner()) = t.clone();
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<DriverEvent>> {
        self.events.as_ref().map(|tx| tx.subscribe())
    }
}
