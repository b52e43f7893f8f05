//! Our ends of the legs between this domain's vL3 routers and another domain's: planned from
//! the views ([`super::View`]), recorded as vL3 peer legs with `vl3.remote` set, wired (our
//! end only), updated when the other side's members move, closed when a router goes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use meshwire_models::federation::{FedLeg, FedMember};
use meshwire_models::service::split_domain;
use meshwire_models::{
    ClientRef, Connection, ConnectionState, Hop, IpContext, Labels, Mechanism, MechanismKind,
    PathSegment, Payload, Placement, Route, Vl3Leg, Vl3Member, Vl3Role,
};

use crate::controller::Controller;
use crate::vl3::ROUTER_LABEL;
use crate::ControllerError;

/// The UDP port of tunnels between domains.
const PORT: u16 = 4789;
/// Their MTU: a 1500-byte underlay less VXLAN's 50 bytes.
const MTU: u32 = 1450;

/// One end of a leg as this domain sees it.
#[derive(Debug, Clone, PartialEq)]
struct End {
    service: String,
    domain: String,
    local: String,
    node: String,
    netns: String,
    remote: String,
    vni: u32,
    local_addr: IpNet,
    remote_addr: IpNet,
    local_underlay: IpAddr,
    remote_underlay: IpAddr,
    /// Whether this domain chose the leg's parameters (and holds its addresses).
    owned: bool,
}

/// A 128-bit FNV-1a over `parts`: the same leg gets the same id and interface name in both
/// domains.
pub(super) fn digest(parts: &[&str]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    h
}

/// The leg's id and interface name, from (home service, federated domain, its router, the
/// home's router): both domains compute the same.
fn names(home_service: &str, fed_domain: &str, owner: &str, other: &str) -> (String, String) {
    let h = digest(&[home_service, fed_domain, owner, other]);
    (
        uuid::Uuid::from_u128(h).to_string(),
        format!("mwf{:010x}", (h >> 64) as u64 & 0xff_ffff_ffff),
    )
}

/// A federated leg's parameters as its owner recorded them.
pub(super) fn as_owned(c: &Connection) -> Option<FedLeg> {
    // Only the owner holds the leg's addresses.
    c.address_pool?;
    let Some(Mechanism::Vxlan { vni, port, .. }) = c.hops.first().map(|h| &h.mechanism) else {
        return None;
    };
    Some(FedLeg {
        owner: c.labels.get(ROUTER_LABEL)?.clone(),
        other: split_domain(&c.network_service_endpoint_name).0.to_string(),
        vni: *vni,
        port: *port,
        owner_addr: *c.ip_context.src_ip_addrs.first()?,
        other_addr: *c.ip_context.dst_ip_addrs.first()?,
        why: None,
    })
}

/// A leg the home holds its end of, as the federated domain names it (home side).
pub(super) fn as_accepted(c: &Connection) -> Option<FedLeg> {
    if c.address_pool.is_some() {
        return None;
    }
    let Some(Mechanism::Vxlan { vni, port, .. }) = c.hops.first().map(|h| &h.mechanism) else {
        return None;
    };
    Some(FedLeg {
        owner: split_domain(&c.network_service_endpoint_name).0.to_string(),
        other: c.labels.get(ROUTER_LABEL)?.clone(),
        vni: *vni,
        port: *port,
        owner_addr: *c.ip_context.dst_ip_addrs.first()?,
        other_addr: *c.ip_context.src_ip_addrs.first()?,
        why: None,
    })
}

/// The live routers of `service` that can take legs to other domains (on a kernel node with
/// an underlay address): name → (node, namespace, address).
fn federable(
    s: &crate::state::State,
    service: &str,
    now: u64,
) -> BTreeMap<String, (String, String, IpAddr)> {
    crate::vl3::live_routers(s, service, now)
        .into_iter()
        .filter_map(|(n, (node, ns))| {
            super::node_address(s, node)
                .map(|a| (n.to_string(), (node.to_string(), ns.to_string(), a)))
        })
        .collect()
}

fn members_of(view: &[FedMember], router: &str) -> Vec<Vl3Member> {
    let mut m: Vec<Vl3Member> = view
        .iter()
        .filter(|m| m.router == router)
        .map(|m| Vl3Member {
            addr: m.addr,
            name: m.name.clone(),
        })
        .collect();
    m.sort();
    m
}

/// Why an end was not opened.
#[derive(Debug)]
enum Open {
    /// Its VNI is in use here: the owner should offer another.
    Refused(String),
    /// Recording or wiring it failed: tried again at the next exchange.
    Failed(String),
}

impl std::fmt::Display for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Open::Refused(e) | Open::Failed(e) => f.write_str(e),
        }
    }
}

fn vni_of(c: &Connection) -> Option<u32> {
    match c.hops.first().map(|h| &h.mechanism) {
        Some(Mechanism::Vxlan { vni, .. }) => Some(*vni),
        _ => None,
    }
}

impl Controller {
    /// The record of end `e`, carrying routes to (and names of) `remote_members`.
    fn federated_record(&self, e: &End, remote_members: Vec<Vl3Member>) -> Connection {
        let (home, fed_domain, owner, other) = if e.owned {
            (
                split_domain(&e.service).0,
                self.domain_name(),
                &e.local,
                &e.remote,
            )
        } else {
            (e.service.as_str(), e.domain.as_str(), &e.remote, &e.local)
        };
        let (id, ifname) = names(home, fed_domain, owner, other);
        let remote = format!("{}@{}", e.remote, e.domain);
        let (zone, gateway) = {
            let s = self.state();
            let v = s.service(&e.service).and_then(|s| s.vl3.clone());
            (
                v.as_ref()
                    .map(|v| v.zone(&e.service).to_string())
                    .unwrap_or_default(),
                v.map_or(e.local_addr.addr(), |v| v.gateway()),
            )
        };
        let node_netns = self
            .state()
            .topology()
            .nodes
            .get(&e.node)
            .and_then(|n| n.netns.clone());
        let now = self.now();
        Connection {
            id,
            network_service: e.service.clone(),
            network_service_endpoint_name: remote.clone(),
            payload: Payload::Ip,
            client: ClientRef {
                node: e.node.clone(),
                name: Some(e.netns.clone()),
            },
            labels: Labels::from([(ROUTER_LABEL.to_string(), e.local.clone())]),
            interface: ifname.clone(),
            preferences: vec![MechanismKind::Vxlan],
            path: vec![PathSegment {
                name: e.node.clone(),
                link: None,
            }],
            hops: vec![Hop {
                from: e.node.clone(),
                to: remote,
                link: None,
                mechanism: Mechanism::Vxlan {
                    vni: e.vni,
                    src_ip: e.local_underlay,
                    dst_ip: e.remote_underlay,
                    port: PORT,
                },
            }],
            placement: Placement {
                client_netns: Some(e.netns.clone()),
                client_node_netns: node_netns,
                ..Default::default()
            },
            ip_context: IpContext {
                src_ip_addrs: vec![e.local_addr],
                dst_ip_addrs: vec![e.remote_addr],
                src_routes: remote_members
                    .iter()
                    .map(|m| Route {
                        prefix: IpNet::from(m.addr),
                        next_hop: Some(e.remote_addr.addr()),
                    })
                    .collect(),
                dst_routes: vec![],
                excluded_prefixes: vec![],
            },
            // The owner holds the leg's addresses in its pool; the other end holds none.
            address_pool: self
                .state()
                .service(&e.service)
                .and_then(|s| s.vl3.as_ref())
                .filter(|_| e.owned)
                .map(|v| v.member_prefix()),
            mtu: MTU,
            state: ConnectionState::Programming,
            created_at_ms: now,
            updated_at_ms: now,
            generation: 0,
            last_error: None,
            chain: Default::default(),
            request_key: None,
            vl3: Some(Vl3Leg {
                role: Vl3Role::Peer,
                zone,
                gateway,
                name: None,
                client_members: vec![],
                endpoint_members: remote_members,
                remote: Some(e.domain.clone()),
            }),
            dns_context: None,
        }
    }

    pub(crate) fn domain_name(&self) -> &str {
        self.federation().map_or("", |f| f.domain.as_str())
    }

    /// Records and wires a new end; undone when wiring fails. `claimed`: the owner claimed
    /// its numbers and addresses already; otherwise the VNI is claimed here (a VNI in use is
    /// [`Open::Refused`], with why).
    async fn open_end(&self, c: Connection, claimed: bool) -> Result<(), Open> {
        let _flight = self.in_flight(&c.id);
        let _guard = self.lock_key(c.client.workload(), &c.network_service).await;
        {
            let mut s = self.state();
            // Opened meanwhile (a second exchange for the same leg): nothing to do.
            if s.connection(&c.id).is_some() {
                return Ok(());
            }
            if claimed {
                s.commit(c.clone());
            } else {
                s.restore(c.clone())
                    .map_err(|e| Open::Refused(e.to_string()))?;
            }
        }
        let r = async {
            self.persist(&c).await.map_err(|e| e.to_string())?;
            self.wire(&c).await.map_err(|e| e.to_string())?;
            let mut up = c.clone();
            let _ = up.transition(ConnectionState::Up, self.now());
            self.persist(&up).await.map_err(|e| e.to_string())?;
            self.state().update(&c.id, |x| {
                x.state = ConnectionState::Up;
                x.updated_at_ms = up.updated_at_ms;
            });
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = r {
            drop(_guard);
            self.undo(&c, &format!("wiring a leg to another domain failed: {e}"))
                .await;
            return Err(Open::Failed(e));
        }
        tracing::info!(connection = %c.id, service = %c.network_service, router = %c.client.workload(), remote = %c.network_service_endpoint_name, "vL3 leg to another domain up");
        Ok(())
    }

    /// Routes and names of an existing end brought to `want`: data plane first, then record.
    async fn update_end(&self, want: Connection) -> Result<(), ControllerError> {
        let _guard = self
            .lock_key(want.client.workload(), &want.network_service)
            .await;
        let Some(have) = self.connection(&want.id) else {
            return Ok(());
        };
        let mut next = have.clone();
        next.ip_context.src_routes = want.ip_context.src_routes;
        if let Some(v) = next.vl3.as_mut() {
            v.endpoint_members = want.vl3.map(|w| w.endpoint_members).unwrap_or_default();
        }
        if next == have {
            return Ok(());
        }
        next.updated_at_ms = self.now().max(have.updated_at_ms);
        self.wire(&next)
            .await
            .map_err(|e| ControllerError::Driver {
                connection: next.id.clone(),
                source: Box::new(e),
            })?;
        self.persist(&next).await?;
        self.state().update(&next.id, |c| {
            c.ip_context = next.ip_context.clone();
            c.vl3 = next.vl3.clone();
            c.updated_at_ms = next.updated_at_ms;
        });
        Ok(())
    }

    /// What this controller holds of `domain`'s side of `service`.
    pub(super) async fn view(&self, domain: &str, service: &str) -> Option<super::View> {
        self.inner
            .federated
            .lock()
            .await
            .views
            .get(&(domain.to_string(), service.to_string()))
            .cloned()
    }

    /// Closes one of our ends; a failure is logged and tried again at the next exchange.
    async fn close_end(&self, id: &str) {
        if let Err(e) = self.close_leg(id).await {
            tracing::warn!(connection = %id, error = %e, "closing a leg to another domain failed; retrying next round");
        }
    }

    /// Our ends to `domain` for `service`: (local router, remote router) → record.
    fn ends_to(&self, domain: &str, service: &str) -> BTreeMap<(String, String), Connection> {
        self.state()
            .connections()
            .filter(|c| {
                c.network_service == service
                    && c.remote_domain() == Some(domain)
                    && !c.state.is_final()
            })
            .filter_map(|c| {
                let local = c.labels.get(ROUTER_LABEL)?.clone();
                let remote = split_domain(&c.network_service_endpoint_name).0.to_string();
                Some(((local, remote), c.clone()))
            })
            .collect()
    }

    /// Closes our ends to `domain` for `service` that `which` picks.
    pub(super) async fn close_federated(
        &self,
        domain: &str,
        service: &str,
        which: impl Fn(&Connection) -> bool,
    ) {
        for (_, c) in self.ends_to(domain, service) {
            if which(&c) {
                self.close_end(&c.id).await;
            }
        }
    }

    /// Federated side: a leg between every live router of ours (with an address) and every
    /// router of the home's; new ones claimed here, refused ones offered again with another
    /// VNI, ends whose routers went closed, routes kept to the home's members.
    pub(super) async fn sync_owned(&self, domain: &str, service: &str) {
        // One mesh change at a time: the local mesh's and every exchange's.
        let _one = self.inner.vl3.lock().await;
        let Some(view) = self.view(domain, service).await else {
            return;
        };
        let now = self.now();
        let (mine, vl3) = {
            let s = self.state();
            (
                federable(&s, service, now),
                s.service(service).and_then(|s| s.vl3.clone()),
            )
        };
        let Some(vl3) = vl3 else { return };
        let theirs: BTreeMap<&str, IpAddr> = view
            .routers
            .iter()
            .map(|r| (r.name.as_str(), r.address))
            .collect();
        let have = self.ends_to(domain, service);
        // Make before break: routes move onto the legs that stay before any leg closes (a
        // member behind a router that went is routed through its new router first).
        for ((local, remote), c) in &have {
            let accepted = view
                .accepted
                .iter()
                .any(|l| l.owner == *local && l.other == *remote && Some(l.vni) == vni_of(c));
            let Some(via) = c.ip_context.dst_ip_addrs.first().map(IpNet::addr) else {
                continue;
            };
            if accepted && mine.contains_key(local) && theirs.contains_key(remote.as_str()) {
                let mut want = c.clone();
                let members = members_of(&view.members, remote);
                want.ip_context.src_routes = members
                    .iter()
                    .map(|m| Route {
                        prefix: IpNet::from(m.addr),
                        next_hop: Some(via),
                    })
                    .collect();
                if let Some(v) = want.vl3.as_mut() {
                    v.endpoint_members = members;
                }
                if let Err(e) = self.update_end(want).await {
                    tracing::warn!(connection = %c.id, error = %e, "updating a leg to another domain failed; retrying next round");
                }
            }
        }
        // Ends no longer wanted, or whose VNI the home refused.
        for ((local, remote), c) in &have {
            let vni = vni_of(c).unwrap_or(0);
            let refused = view
                .refused
                .get(&(local.clone(), remote.clone()))
                .is_some_and(|v| v.contains(&vni));
            if !mine.contains_key(local) || !theirs.contains_key(remote.as_str()) || refused {
                tracing::info!(connection = %c.id, %local, %remote, %domain, refused, "closing a leg to another domain");
                self.close_end(&c.id).await;
            }
        }
        let have = self.ends_to(domain, service);
        let mut retries = std::mem::take(&mut self.inner.federated.lock().await.retries);
        for (local, (node, netns, underlay)) in &mine {
            for (remote, address) in &theirs {
                let pair = (local.clone(), remote.to_string());
                let members = members_of(&view.members, remote);
                if let Some(c) = have.get(&pair) {
                    // Its tunnel ends moved (the router on another host, a new underlay
                    // address): closed, and built again at the next exchange.
                    let moved = match c.hops.first().map(|h| &h.mechanism) {
                        Some(Mechanism::Vxlan { src_ip, dst_ip, .. }) => {
                            (src_ip, dst_ip) != (underlay, address)
                                || c.client.node != *node
                                || c.client.name.as_deref() != Some(netns.as_str())
                        }
                        _ => true,
                    };
                    if moved {
                        tracing::info!(connection = %c.id, %local, %remote, %domain, "a leg to another domain moved; closing it to build it again");
                        self.close_end(&c.id).await;
                        continue;
                    }
                    // Routes only over a leg the home has its end of: a route over a
                    // half-built leg would leave neighbour resolution to retry in a second.
                    let accepted = view.accepted.iter().any(|l| {
                        l.owner == *local && l.other == *remote && Some(l.vni) == vni_of(c)
                    });
                    let members = if accepted { members } else { vec![] };
                    let (Some(la), Some(ra)) = (
                        c.ip_context.src_ip_addrs.first(),
                        c.ip_context.dst_ip_addrs.first(),
                    ) else {
                        continue;
                    };
                    let e = End {
                        service: service.to_string(),
                        domain: domain.to_string(),
                        local: local.clone(),
                        node: node.clone(),
                        netns: netns.clone(),
                        remote: remote.to_string(),
                        vni: 0,
                        local_addr: *la,
                        remote_addr: *ra,
                        local_underlay: *underlay,
                        remote_underlay: *address,
                        owned: true,
                    };
                    let mut want = self.federated_record(&e, members);
                    want.id = c.id.clone();
                    if let Err(err) = self.update_end(want).await {
                        tracing::warn!(connection = %c.id, error = %err, "updating a leg to another domain failed; retrying next round");
                    }
                    continue;
                }
                let key = (
                    service.to_string(),
                    local.clone(),
                    format!("{remote}@{domain}"),
                );
                if retries.get(&key).is_some_and(|(_, at)| *at > now) {
                    continue;
                }
                let avoid = view.refused.get(&pair).cloned().unwrap_or_default();
                let (id, _) = names(split_domain(service).0, self.domain_name(), local, remote);
                let seed = (digest(&[&id]) & u128::from(u64::MAX)) as u64;
                let claimed = self.state().claim_federated(&vl3, seed, &avoid);
                let (vni, a, b) = match claimed {
                    Ok(x) => x,
                    Err(err) => {
                        tracing::warn!(%service, %local, %remote, %domain, error = %err, "no VNI or address for a leg to another domain");
                        continue;
                    }
                };
                let e = End {
                    service: service.to_string(),
                    domain: domain.to_string(),
                    local: local.clone(),
                    node: node.clone(),
                    netns: netns.clone(),
                    remote: remote.to_string(),
                    vni,
                    local_addr: a,
                    remote_addr: b,
                    local_underlay: *underlay,
                    remote_underlay: *address,
                    owned: true,
                };
                // No routes yet: the home has no end of it until the next exchange.
                let c = self.federated_record(&e, vec![]);
                match self.open_end(c, true).await {
                    Ok(()) => {
                        retries.remove(&key);
                    }
                    Err(err) => {
                        let failures = retries.get(&key).map_or(0, |r| r.0) + 1;
                        let wait = crate::backoff::Backoff::REQUEUE
                            .delay(failures - 1, now ^ u64::from(failures));
                        tracing::warn!(%service, %local, %remote, %domain, error = %err, failures, retry_in_ms = wait.as_millis() as u64, "a leg to another domain failed");
                        retries.insert(key, (failures, now + wait.as_millis() as u64));
                    }
                }
            }
        }
        // Bounded: only pairs still planned keep a backoff.
        retries.retain(|(s, l, r), _| {
            s != service
                || (mine.contains_key(l)
                    && r.strip_suffix(&format!("@{domain}"))
                        .is_some_and(|r| theirs.contains_key(r)))
        });
        self.inner.federated.lock().await.retries = retries;
    }

    /// Home side: our end of every leg the federated domain wants between one of its routers
    /// and a live router of ours; a VNI in use here is refused (returned, with why).
    pub(super) async fn sync_home(&self, domain: &str, service: &str) -> Vec<FedLeg> {
        // One mesh change at a time: the local mesh's and every exchange's.
        let _one = self.inner.vl3.lock().await;
        let Some(view) = self.view(domain, service).await else {
            return vec![];
        };
        let now = self.now();
        let mine = federable(&self.state(), service, now);
        let theirs: BTreeMap<&str, IpAddr> = view
            .routers
            .iter()
            .map(|r| (r.name.as_str(), r.address))
            .collect();
        let mut wanted: BTreeMap<(String, String), Connection> = BTreeMap::new();
        for l in &view.legs {
            let (Some((node, netns, underlay)), Some(address)) =
                (mine.get(&l.other), theirs.get(l.owner.as_str()))
            else {
                continue;
            };
            let e = End {
                service: service.to_string(),
                domain: domain.to_string(),
                local: l.other.clone(),
                node: node.clone(),
                netns: netns.clone(),
                remote: l.owner.clone(),
                vni: l.vni,
                local_addr: l.other_addr,
                remote_addr: l.owner_addr,
                local_underlay: *underlay,
                remote_underlay: *address,
                owned: false,
            };
            let c = self.federated_record(&e, members_of(&view.members, &l.owner));
            wanted.insert((l.other.clone(), l.owner.clone()), c);
        }
        // Ends not wanted any more, or wanted with other parameters.
        let same = |a: &Connection, b: &Connection| {
            a.hops == b.hops
                && a.ip_context.src_ip_addrs == b.ip_context.src_ip_addrs
                && a.ip_context.dst_ip_addrs == b.ip_context.dst_ip_addrs
                && a.client == b.client
        };
        for (pair, c) in self.ends_to(domain, service) {
            if !wanted.get(&pair).is_some_and(|w| same(w, &c)) {
                tracing::info!(connection = %c.id, local = %pair.0, remote = %pair.1, %domain, "closing a leg the other domain no longer wants");
                self.close_end(&c.id).await;
            }
        }
        let have = self.ends_to(domain, service);
        let mut refused = Vec::new();
        for (pair, c) in wanted {
            if have.contains_key(&pair) {
                if let Err(e) = self.update_end(c).await {
                    tracing::warn!(local = %pair.0, remote = %pair.1, error = %e, "updating a leg to another domain failed; retrying at the next exchange");
                }
                continue;
            }
            let vni = vni_of(&c).unwrap_or(0);
            match self.open_end(c, false).await {
                Ok(()) => continue,
                Err(Open::Failed(why)) => {
                    tracing::warn!(local = %pair.0, remote = %pair.1, %domain, vni, %why, "our end of a leg to another domain failed; tried again at the next exchange");
                    continue;
                }
                Err(Open::Refused(why)) => {
                    tracing::warn!(local = %pair.0, remote = %pair.1, %domain, vni, %why, "refusing a leg from another domain");
                    if let Some(l) = view
                        .legs
                        .iter()
                        .find(|l| l.other == pair.0 && l.owner == pair.1)
                    {
                        let mut l = l.clone();
                        l.why = Some(why);
                        refused.push(l);
                    }
                }
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_domains_name_a_leg_alike() {
        let (id, ifname) = names("db", "site-a.example", "ra1", "rb1");
        assert_eq!(
            (id.clone(), ifname.clone()),
            names("db", "site-a.example", "ra1", "rb1")
        );
        assert_ne!(id, names("db", "site-a.example", "ra1", "rb2").0);
        assert!(ifname.len() <= 15, "{ifname}");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }
}
