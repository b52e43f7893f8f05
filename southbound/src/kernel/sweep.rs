//! The sweep: what carries our mark and belongs to no desired connection is removed.
//!
//! Run with every full set, over the namespaces this controller wires (its nodes' and its
//! connections' ends), never over every namespace of the host: another controller's interfaces
//! in namespaces we do not manage are not ours to judge. A full set is a snapshot, and a
//! connection wired just after it was taken is not in it; so an object is removed only when two
//! full sets in a row find it unwanted (the second was taken after anything wired before the
//! first), except before anything was wired since start, when the first full set removes at
//! once. Removed are
//! - interfaces with a `meshwire:<id>` alias whose connection is not desired (a crash between
//!   wiring and recording, a record deleted by hand), and interfaces retired but not yet deleted
//!   (a crash during teardown);
//! - SR-IOV VFs lent (`meshwire-vf:<id>/<name>`) to a connection not desired: given back to the
//!   node under their own name, never deleted;
//! - routes with our protocol ([`super::wiring::ROUTE_PROTOCOL`]) that no desired connection
//!   installs on that interface.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use meshwire_models::{Connection, Topology};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::netns;
use super::retire::{delete_retired, take_out_of_service, RETIRED_GROUP};
use super::wiring::{self, Wiring, ALIAS_PREFIX, ROUTE_PROTOCOL};
use super::KernelDriver;

/// The least time between two sweeps, by default.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub interfaces: usize,
    pub routes: usize,
}

/// One interface as the sweep sees it.
struct Link {
    name: String,
    alias: Option<String>,
    group: u32,
    /// The kernel's parent device (a real VF's PCI address).
    parent: Option<String>,
}

fn namespaces_of(
    desired: &[Connection],
    topology: &Topology,
    node: Option<&str>,
) -> BTreeSet<Option<String>> {
    let mut out: BTreeSet<Option<String>> = topology
        .nodes
        .values()
        .filter(|n| node.is_none_or(|me| n.name == me))
        .filter_map(|n| n.netns.clone())
        .map(Some)
        .collect();
    for c in desired {
        let Ok(Some(w)) = wiring::plan_in(c, node, topology) else {
            continue;
        };
        for e in w.ends() {
            out.insert(e.netns.clone());
        }
        if let Wiring::Vxlan {
            client, endpoint, ..
        } = &w
        {
            for s in client.iter().chain(endpoint.iter()) {
                out.insert(s.underlay_netns.clone());
            }
        }
    }
    out
}

/// (namespace, interface, prefix) of every route a desired connection installs.
type RouteKey = (Option<String>, String, IpNet);

fn desired_routes(
    desired: &[Connection],
    topology: &Topology,
    node: Option<&str>,
) -> HashSet<RouteKey> {
    let mut out = HashSet::new();
    for c in desired {
        let Ok(Some(w)) = wiring::plan_in(c, node, topology) else {
            continue;
        };
        for e in w.ends() {
            let on = e.bridge.clone().unwrap_or_else(|| e.ifname.clone());
            for r in &e.routes {
                out.insert((e.netns.clone(), on.clone(), r.prefix.trunc()));
            }
        }
    }
    out
}

async fn links(h: &Handle) -> Result<HashMap<u32, Link>, rtnetlink::Error> {
    let mut out = HashMap::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await? {
        let mut l = Link {
            name: String::new(),
            alias: None,
            group: 0,
            parent: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::Group(g) => l.group = *g,
                LinkAttribute::ParentDevName(p) => l.parent = Some(p.clone()),
                _ => {}
            }
        }
        out.insert(m.header.index, l);
    }
    Ok(out)
}

/// Our routes (by protocol) in `h`'s namespace, both families.
pub(crate) async fn our_routes(h: &Handle) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let mut out = Vec::new();
    for filter in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = h.route().get(filter).execute();
        while let Some(m) = s.try_next().await? {
            if m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

pub(crate) fn route_prefix(m: &RouteMessage) -> Option<IpNet> {
    let len = m.header.destination_prefix_length;
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    IpNet::new(dst, len).ok().map(|n| n.trunc())
}

pub(crate) fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

impl KernelDriver {
    /// Removes what carries our mark in the namespaces this driver wires (those of `desired`,
    /// of the topology's nodes, and those it remembers wiring in) and belongs to none of
    /// `desired`. Namespaces that cannot be entered are skipped (logged).
    ///
    /// `at_once`: remove what is unwanted now (nothing was wired since start); otherwise only
    /// what the previous sweep found unwanted too.
    /// Between two sweeps at least [`SWEEP_INTERVAL`] passes (see
    /// [`KernelDriver::set_sweep_interval`]): leftovers are rare (a crash, a lost delta), and a
    /// sweep lists every link and route of every namespace we wire.
    pub async fn sweep_unwanted(
        &self,
        desired: &[Connection],
        topology: &Topology,
        at_once: bool,
    ) -> Swept {
        // Only the first sweep may remove at once: a driver that never wires anything (the
        // kernel driver beside Open vSwitch nodes) stays "untouched" while the other driver
        // wires, so every later sweep follows the two-in-a-row rule and the interval.
        let at_once = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let every = *self
                .sweep_interval
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let at_once = at_once && last.is_none();
            if !at_once && last.is_some_and(|t| now.duration_since(t) < every) {
                return Swept::default();
            }
            *last = Some(now);
            at_once
        };
        let mut suspects = HashSet::new();
        let ids: HashSet<&str> = desired.iter().map(|c| c.id.as_str()).collect();
        let node = self.node.as_deref();
        let routes = desired_routes(desired, topology, node);
        // (connection, VF) of every VF a desired connection holds.
        let lent: HashSet<(String, String)> = desired
            .iter()
            .filter_map(|c| match c.mechanism() {
                Some(meshwire_models::Mechanism::SriovVf { pci_address, .. }) => {
                    Some((c.id.clone(), pci_address.clone()))
                }
                _ => None,
            })
            .collect();
        let mut swept = Swept::default();
        // Where this node's VFs live when not lent (an agent's node only).
        let home: Option<Option<String>> =
            node.map(|n| topology.nodes.get(n).and_then(|x| x.netns.clone()));
        let mut all = namespaces_of(desired, topology, node);
        for k in self.known.all() {
            if netns::exists(&Some(k.clone())) {
                all.insert(Some(k));
            } else {
                self.known.forget(&k);
            }
        }
        for ns in all {
            if !netns::exists(&ns) {
                continue;
            }
            let label = ns.as_deref().unwrap_or("(own)").to_string();
            match self
                .sweep_one(&ns, &ids, &routes, &lent, &home, at_once, &mut suspects)
                .await
            {
                Ok(s) => {
                    if s != Swept::default() {
                        tracing::info!(netns = %label, interfaces = s.interfaces, routes = s.routes, "swept what no desired connection holds");
                    }
                    swept.interfaces += s.interfaces;
                    swept.routes += s.routes;
                }
                Err(e) => {
                    tracing::warn!(netns = %label, error = %e, "sweeping the namespace failed; left as it is")
                }
            }
        }
        *self.suspects.lock().unwrap_or_else(|p| p.into_inner()) = suspects;
        swept
    }

    /// Whether an unwanted object goes now: at once, or when the previous sweep found it
    /// unwanted too. Either way it is remembered for the next.
    fn confirmed(&self, key: String, at_once: bool, suspects: &mut HashSet<String>) -> bool {
        let before = self
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        suspects.insert(key);
        at_once || before
    }

    #[allow(clippy::too_many_arguments)]
    async fn sweep_one(
        &self,
        ns: &Option<String>,
        ids: &HashSet<&str>,
        routes: &HashSet<RouteKey>,
        lent: &HashSet<(String, String)>,
        home: &Option<Option<String>>,
        at_once: bool,
        suspects: &mut HashSet<String>,
    ) -> Result<Swept, String> {
        let h = self
            .namespaces
            .handle(ns)
            .await
            .map_err(|e| e.to_string())?;
        let mut swept = Swept::default();
        let all = links(&h).await.map_err(|e| format!("list links: {e}"))?;
        // Routes first: deleting an interface takes its routes with it, uncounted.
        for m in our_routes(&h)
            .await
            .map_err(|e| format!("list routes: {e}"))?
        {
            let (Some(prefix), Some(oif)) = (route_prefix(&m), route_oif(&m)) else {
                continue;
            };
            let Some(on) = all.get(&oif) else { continue };
            if routes.contains(&(ns.clone(), on.name.clone(), prefix)) {
                continue;
            }
            let key = format!("route {}/{} {prefix}", ns.as_deref().unwrap_or(""), on.name);
            if !self.confirmed(key, at_once, suspects) {
                continue;
            }
            if h.route().del(m).execute().await.is_ok() {
                swept.routes += 1;
            }
        }
        let mut retired = false;
        for (index, l) in &all {
            if l.group == RETIRED_GROUP {
                retired = true;
                swept.interfaces += 1;
                continue;
            }
            // A VF lent to no desired connection (its removal was lost while the agent was
            // away, or a heal moved the connection to another VF): given back to the node,
            // never deleted.
            if let Some((id, host, pci)) = l.alias.as_deref().and_then(wiring::parse_vf_alias) {
                if lent.contains(&(id.to_string(), pci.to_string())) || home.is_none() {
                    continue;
                }
                let key = format!("vf {}/{} {id}", ns.as_deref().unwrap_or(""), l.name);
                if !self.confirmed(key, at_once, suspects) {
                    continue;
                }
                let home = home.as_ref().unwrap_or(&None);
                match self
                    .give_back(&h, ns, *index, l.parent.as_deref(), host, pci, home)
                    .await
                {
                    Ok(()) => swept.interfaces += 1,
                    Err(e) => {
                        tracing::warn!(vf = %host, connection = %id, error = %e, "giving back a leftover VF failed")
                    }
                }
                continue;
            }
            let Some(id) = l
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
            else {
                continue;
            };
            if ids.contains(id) {
                continue;
            }
            let key = format!("link {}/{} {id}", ns.as_deref().unwrap_or(""), l.name);
            if !self.confirmed(key, at_once, suspects) {
                continue;
            }
            if take_out_of_service(&h, *index).await.is_ok() {
                retired = true;
                swept.interfaces += 1;
            }
        }
        if retired {
            delete_retired(&h)
                .await
                .map_err(|e| format!("delete retired interfaces: {e}"))?;
        }
        Ok(swept)
    }
}
