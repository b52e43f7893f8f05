//! What Open vSwitch must hold for one connection, computed from the connection alone. Pure: no
//! OVSDB, no OpenFlow socket, no netlink. [`super::OvsDriver`] resolves port names to OpenFlow
//! port numbers and installs the result.
//!
//! On every node a connection touches, the workload's interface is one end of a veth pair whose
//! other end (`mwc…`/`mwe…`) is a port of `br-int`. Flows then join the ports:
//!
//! | mechanism | client node | endpoint node | transit node |
//! |-----------|-------------|---------------|--------------|
//! | kernel (same node) | client port ⇄ endpoint port | | |
//! | VXLAN / GRE | port → set tun_id, tun_dst → flow-based tunnel port; tunnel port + tun_id → port | mirror | – |
//! | MPLS | port (IPv4) → push label_out → uplink; uplink + label_in → pop → port | mirror | uplink ⇄ uplink by label |
//!
//! Every flow carries the connection's cookie: [`COOKIE_TAG`] in the top 16 bits marks the flow as
//! Meshwire's, the low 48 bits identify the connection. Resync reads and deletes only flows whose
//! cookie carries the tag.

use std::net::IpAddr;

use meshwire_models::{Connection, Mechanism, Payload};

use crate::kernel::wiring::{self, End};
use crate::openflow::{Action, OxmField};

/// "MW": the top 16 bits of every cookie Meshwire installs.
pub const COOKIE_TAG: u64 = 0x4d57 << 48;
pub const COOKIE_TAG_MASK: u64 = 0xffff << 48;
/// The cookie of a node's own flows (uplink ⇄ bridge wiring).
pub const INFRA_COOKIE: u64 = COOKIE_TAG;
/// The integration bridge Meshwire owns on every ovs node.
pub const BRIDGE: &str = "br-int";

const ETH_IPV4: u16 = 0x0800;
const ETH_MPLS: u16 = 0x8847;
const ETH_ARP: u16 = 0x0806;

/// FNV-1a, 64 bits, of a name: stable across runs and versions (unlike `DefaultHasher`).
pub fn fnv1a(s: &str) -> u64 {
    meshwire_models::document::fnv1a64(s.as_bytes())
}

/// The cookie of a connection's flows (never the infra cookie).
pub fn cookie(connection_id: &str) -> u64 {
    COOKIE_TAG | (fnv1a(connection_id) & 0xffff_ffff_ffff).max(1)
}

/// The datapath id Meshwire gives a node's bridge, so a switch that connects is known by it.
pub fn datapath_id(node: &str) -> u64 {
    // Top 16 bits 0x4d57 too: an id never clashes with OVS's MAC-derived defaults in practice.
    COOKIE_TAG | (fnv1a(node) & 0xffff_ffff_ffff)
}

/// A locally administered MAC for one end of a connection (0: client, 1: endpoint).
pub fn mac(connection_id: &str, end: u8) -> [u8; 6] {
    let h = fnv1a(connection_id).to_be_bytes();
    [0x02, 0x4d ^ end, h[0], h[1], h[2], h[3]]
}

/// The node-side name of a connection's veth on `br-int` (`mwc` client, `mwe` endpoint).
pub fn port_name(connection_id: &str, endpoint: bool) -> String {
    let short: String = connection_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    format!("mw{}{short}", if endpoint { 'e' } else { 'c' })
}

/// A port of `br-int`, by name until the driver knows its number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// The bridge's internal port, where the node's underlay address lives.
    Local,
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    Output(PortRef),
    Raw(Action),
}

/// A flow before port numbers are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTemplate {
    pub node: String,
    pub cookie: u64,
    pub priority: u16,
    pub in_port: PortRef,
    pub matches: Vec<OxmField>,
    pub actions: Vec<Act>,
}

/// A flow-based tunnel port a connection needs on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelPort {
    pub name: String,
    /// `vxlan` or `gre`.
    pub kind: &'static str,
    pub dst_port: Option<u16>,
}

/// One workload leg: the workload's interface and its peer on the node's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub node: String,
    pub workload: End,
    pub bridge_port: End,
    /// The client's leg (else the endpoint's).
    pub client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub cookie: u64,
    pub legs: Vec<Leg>,
    pub tunnels: Vec<(String, TunnelPort)>,
    pub flows: Vec<FlowTemplate>,
}

impl Plan {
    /// Every node the connection touches (legs, tunnels and transit).
    pub fn nodes(&self) -> Vec<String> {
        let mut n: Vec<String> = self.flows.iter().map(|f| f.node.clone()).collect();
        n.extend(self.legs.iter().map(|l| l.node.clone()));
        n.sort();
        n.dedup();
        n
    }
}

/// The uplink (the underlay interface) of `node` on `link`, from the topology.
pub trait Uplinks {
    fn uplink(&self, node: &str, link: &str) -> Option<String>;
}

fn output(p: &PortRef) -> Act {
    Act::Output(p.clone())
}

fn tunnel_port(m: &Mechanism) -> Option<TunnelPort> {
    match m {
        Mechanism::Vxlan { port, .. } => Some(TunnelPort {
            name: if *port == 4789 {
                "mw-vxlan".into()
            } else {
                format!("mw-vxlan{port}")
            },
            kind: "vxlan",
            dst_port: (*port != 4789).then_some(*port),
        }),
        Mechanism::Gre { .. } => Some(TunnelPort {
            name: "mw-gre".into(),
            kind: "gre",
            dst_port: None,
        }),
        _ => None,
    }
}

fn v4(a: IpAddr) -> Result<std::net::Ipv4Addr, String> {
    match a {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => Err(format!(
            "underlay address {a} is IPv6; the OVS tunnels here use an IPv4 underlay"
        )),
    }
}

/// The workload legs of `c` (client's first): what a node's hands wire, from the connection
/// alone (no topology). The rest of the plan is the switch's: [`plan`].
pub fn legs(c: &Connection) -> Result<Vec<Leg>, String> {
    if let Some(d) = c
        .placement
        .endpoint_device
        .as_ref()
        .or(c.placement.client_device.as_ref())
    {
        return Err(format!(
            "endpoint is external device {d}; the Open vSwitch data plane does not terminate device tunnels yet (put the client on a kernel node)"
        ));
    }
    let w = wiring::plan_ends(c);
    let (mut client, mut endpoint) = (w.0, w.1);
    let endpoint_node = c
        .hops
        .last()
        .map(|h| h.to.clone())
        .ok_or("connection has no hops")?;
    let mechanism = c.mechanism().ok_or("connection has no mechanism")?;
    let node_end = |node_ns: &Option<String>, endpoint_side: bool| End {
        netns: node_ns.clone(),
        ifname: port_name(&c.id, endpoint_side),
        addrs: vec![],
        routes: vec![],
        bridge: None,
        mtu: c.mtu,
        mac: None,
        neighbors: vec![],
        lent: None,
        router: false,
        resolver: None,
        metric: 0,
    };
    client.mac = Some(mac(&c.id, 0));
    endpoint.mac = Some(mac(&c.id, 1));
    if let Mechanism::Kernel {
        interface,
        peer_interface,
    } = mechanism
    {
        client.ifname = interface.clone();
        endpoint.ifname = peer_interface.clone();
    }
    if matches!(mechanism, Mechanism::Mpls { .. }) {
        if c.payload == Payload::Ethernet {
            return Err("MPLS here carries IPv4 payload only (no pseudowire); an Ethernet service needs VXLAN or GRE".into());
        }
        // No ARP crosses an MPLS path: each side knows the other's MAC.
        for a in &c.ip_context.dst_ip_addrs {
            client.neighbors.push((a.addr(), mac(&c.id, 1)));
        }
        for a in &c.ip_context.src_ip_addrs {
            endpoint.neighbors.push((a.addr(), mac(&c.id, 0)));
        }
    }
    if let Some(m) = domain_member(c) {
        // The endpoint is the domain itself: one leg, the client's. Frames may cross a VXLAN
        // tunnel to the other nodes: leave room for its header.
        let mtu = c.mtu.saturating_sub(DOMAIN_OVERHEAD);
        client.mtu = mtu;
        let mut port = node_end(&c.placement.client_node_netns, false);
        port.mtu = mtu;
        return Ok(vec![Leg {
            node: m.node,
            workload: client,
            bridge_port: port,
            client: true,
        }]);
    }
    Ok(vec![
        Leg {
            node: c.client.node.clone(),
            workload: client,
            bridge_port: node_end(&c.placement.client_node_netns, false),
            client: true,
        },
        Leg {
            node: endpoint_node,
            workload: endpoint,
            bridge_port: node_end(&c.placement.endpoint_node_netns, true),
            client: false,
        },
    ])
}

/// The plan for `c`, or why Open vSwitch cannot carry it.
pub fn plan(c: &Connection, uplinks: &dyn Uplinks) -> Result<Plan, String> {
    let legs = legs(c)?;
    let client_node = c.client.node.clone();
    let endpoint_node = c
        .hops
        .last()
        .map(|h| h.to.clone())
        .ok_or("connection has no hops")?;
    let mechanism = c.mechanism().ok_or("connection has no mechanism")?;
    let cookie = cookie(&c.id);
    if let Some(m) = domain_member(c) {
        // The domain's flows are computed across all members by the driver.
        return Ok(Plan {
            cookie,
            legs,
            tunnels: vec![(m.node, domain_tunnel())],
            flows: vec![],
        });
    }
    let pc = PortRef::Name(port_name(&c.id, false));
    let pe = PortRef::Name(port_name(&c.id, true));
    let flow =
        |node: &str, in_port: &PortRef, matches: Vec<OxmField>, actions: Vec<Act>| FlowTemplate {
            node: node.to_string(),
            cookie,
            priority: 100,
            in_port: in_port.clone(),
            matches,
            actions,
        };
    let mut flows = Vec::new();
    let mut tunnels = Vec::new();
    match mechanism {
        Mechanism::Kernel { .. } => {
            if client_node != endpoint_node {
                return Err(format!(
                    "a veth joins two ends on one node, but the client is on {client_node} and the endpoint on {endpoint_node}"
                ));
            }
            flows.push(flow(&client_node, &pc, vec![], vec![output(&pe)]));
            flows.push(flow(&client_node, &pe, vec![], vec![output(&pc)]));
        }
        Mechanism::Vxlan {
            vni: key,
            src_ip,
            dst_ip,
            ..
        }
        | Mechanism::Gre {
            key,
            src_ip,
            dst_ip,
        } => {
            let tp = tunnel_port(mechanism).ok_or("not a tunnel")?;
            let t = PortRef::Name(tp.name.clone());
            for (node, port, remote) in [
                (&client_node, &pc, v4(*dst_ip)?),
                (&endpoint_node, &pe, v4(*src_ip)?),
            ] {
                tunnels.push((node.clone(), tp.clone()));
                flows.push(flow(
                    node,
                    port,
                    vec![],
                    vec![
                        Act::Raw(Action::SetField(OxmField::TunnelId(*key as u64, None))),
                        Act::Raw(Action::SetField(OxmField::TunIpv4Dst(remote))),
                        output(&t),
                    ],
                ));
                flows.push(flow(
                    node,
                    &t,
                    vec![OxmField::TunnelId(*key as u64, None)],
                    vec![output(port)],
                ));
            }
        }
        Mechanism::Mpls {
            label_out,
            label_in,
        } => {
            let mpls = |label: u32| vec![OxmField::EthType(ETH_MPLS), OxmField::MplsLabel(label)];
            let up = |node: &str, link: &Option<String>| -> Result<PortRef, String> {
                let link = link.as_deref().ok_or("an MPLS hop has no link")?;
                uplinks
                    .uplink(node, link)
                    .map(PortRef::Name)
                    .ok_or_else(|| format!("{node} has no interface on link {link}"))
            };
            let first = c.hops.first().ok_or("connection has no hops")?;
            let last = c.hops.last().ok_or("connection has no hops")?;
            let (u_c, u_e) = (
                up(&client_node, &first.link)?,
                up(&endpoint_node, &last.link)?,
            );
            let push = |label: u32, out: &PortRef| {
                vec![
                    Act::Raw(Action::PushMpls(ETH_MPLS)),
                    Act::Raw(Action::SetField(OxmField::MplsLabel(label))),
                    output(out),
                ]
            };
            let pop = |out: &PortRef| vec![Act::Raw(Action::PopMpls(ETH_IPV4)), output(out)];
            flows.push(flow(
                &client_node,
                &pc,
                vec![OxmField::EthType(ETH_IPV4)],
                push(*label_out, &u_c),
            ));
            flows.push(flow(&client_node, &u_c, mpls(*label_in), pop(&pc)));
            flows.push(flow(&endpoint_node, &u_e, mpls(*label_out), pop(&pe)));
            flows.push(flow(
                &endpoint_node,
                &pe,
                vec![OxmField::EthType(ETH_IPV4)],
                push(*label_in, &u_e),
            ));
            // Transit nodes switch by label between the link they come in on and the next.
            for pair in c.hops.windows(2) {
                let node = &pair[0].to;
                let (a, b) = (up(node, &pair[0].link)?, up(node, &pair[1].link)?);
                flows.push(flow(node, &a, mpls(*label_out), vec![output(&b)]));
                flows.push(flow(node, &b, mpls(*label_in), vec![output(&a)]));
            }
        }
        other => {
            return Err(format!(
                "Open vSwitch here does not wire {} connections",
                other.kind()
            ))
        }
    }
    tunnels.sort();
    tunnels.dedup();
    Ok(Plan {
        cookie,
        legs,
        tunnels,
        flows,
    })
}

/// A node's own flows: the uplinks and the bridge's internal port (which holds the underlay
/// addresses) wired to each other, so tunnel packets and ARP reach the host stack and leave by
/// the right uplink: by destination subnet when there are several, else (and as the fallback)
/// out of all of them. Lowest priorities: connection flows win.
pub fn infra_flows(node: &str, uplinks: &[(String, Vec<ipnet::Ipv4Net>)]) -> Vec<FlowTemplate> {
    let f = |priority, in_port, matches, actions| FlowTemplate {
        node: node.to_string(),
        cookie: INFRA_COOKIE,
        priority,
        in_port,
        matches,
        actions,
    };
    let mut flows = Vec::new();
    for (u, _) in uplinks {
        flows.push(f(
            1,
            PortRef::Name(u.clone()),
            vec![],
            vec![Act::Output(PortRef::Local)],
        ));
    }
    if uplinks.len() > 1 {
        for (u, nets) in uplinks {
            for n in nets.iter().filter(|n| n.prefix_len() > 0) {
                let out = vec![Act::Output(PortRef::Name(u.clone()))];
                // An all-ones mask is an exact match: OVS reports it without one, and so do we.
                let mask = (n.prefix_len() < 32).then(|| n.netmask());
                flows.push(f(
                    10,
                    PortRef::Local,
                    vec![
                        OxmField::EthType(ETH_IPV4),
                        OxmField::Ipv4Dst(n.network(), mask),
                    ],
                    out.clone(),
                ));
                flows.push(f(
                    10,
                    PortRef::Local,
                    vec![
                        OxmField::EthType(ETH_ARP),
                        OxmField::ArpTpa(n.network(), mask),
                    ],
                    out,
                ));
            }
        }
    }
    if !uplinks.is_empty() {
        flows.push(f(
            1,
            PortRef::Local,
            vec![],
            uplinks
                .iter()
                .map(|(u, _)| Act::Output(PortRef::Name(u.clone())))
                .collect(),
        ));
    }
    flows
}

/// A connection that joins a distributed bridge domain: its endpoint is no workload but the
/// domain's instance in the node's `br-int` (an Ethernet endpoint with a bridge and no
/// namespace of its own, on an ovs node). Every node with members floods the domain's frames to its local
/// members and, over VXLAN, to every other node with members (split horizon: frames from a
/// tunnel go to local members only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub domain: String,
    pub node: String,
    pub port: String,
}

pub fn domain_member(c: &Connection) -> Option<Member> {
    let bridge = c.placement.bridge.as_ref()?;
    let p = &c.placement;
    // No namespace of its own: the endpoint is the node itself.
    let on_node = p.endpoint_netns.is_none() || p.endpoint_netns == p.endpoint_node_netns;
    (c.payload == Payload::Ethernet && on_node).then(|| Member {
        domain: bridge.clone(),
        node: c.client.node.clone(),
        port: port_name(&c.id, false),
    })
}

/// The VNI a domain's inter-node tunnels use: 0xE00000 plus 20 bits of its name (kept out of
/// the VNI ranges endpoints usually offer).
pub fn domain_vni(domain: &str) -> u32 {
    0x00E0_0000 | (fnv1a(domain) & 0x000F_FFFF) as u32
}

/// Domains whose VNI (a hash of the name) is already another domain's, each with that other
/// domain: first come (in name order) keeps the VNI. Their frames would mix on the wire, so
/// they are refused instead of wired.
pub fn colliding_domains<'a>(domains: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut names: Vec<&str> = domains.into_iter().collect();
    names.sort();
    names.dedup();
    let mut owner: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for d in names {
        match owner.get(&domain_vni(d)) {
            Some(first) => out.push((d.to_string(), first.to_string())),
            None => {
                owner.insert(domain_vni(d), d);
            }
        }
    }
    out
}

/// The cookie of a domain's flows on every node (recomputed as members come and go).
pub fn domain_cookie(domain: &str) -> u64 {
    COOKIE_TAG | (fnv1a(&format!("domain:{domain}")) & 0xffff_ffff_ffff).max(1)
}

/// What a domain's VXLAN adds to a frame (outer IPv4, UDP, VXLAN, inner Ethernet).
pub const DOMAIN_OVERHEAD: u32 = 50;

/// The VXLAN port distributed domains use.
pub fn domain_tunnel() -> TunnelPort {
    TunnelPort {
        name: "mw-vxlan".into(),
        kind: "vxlan",
        dst_port: None,
    }
}

/// The flows of `domain` on `node`: `local` member ports, `remotes` the underlay addresses of
/// the other nodes with members.
pub fn domain_flows(
    domain: &str,
    node: &str,
    local: &[String],
    remotes: &[std::net::Ipv4Addr],
) -> Vec<FlowTemplate> {
    let vni = domain_vni(domain) as u64;
    let cookie = domain_cookie(domain);
    let tunnel = PortRef::Name(domain_tunnel().name);
    let mut flows = Vec::new();
    for p in local {
        let mut actions: Vec<Act> = local
            .iter()
            .filter(|q| *q != p)
            .map(|q| Act::Output(PortRef::Name(q.clone())))
            .collect();
        for r in remotes {
            actions.push(Act::Raw(Action::SetField(OxmField::TunnelId(vni, None))));
            actions.push(Act::Raw(Action::SetField(OxmField::TunIpv4Dst(*r))));
            actions.push(Act::Output(tunnel.clone()));
        }
        flows.push(FlowTemplate {
            node: node.to_string(),
            cookie,
            priority: 100,
            in_port: PortRef::Name(p.clone()),
            matches: vec![],
            actions,
        });
    }
    if !local.is_empty() && !remotes.is_empty() {
        flows.push(FlowTemplate {
            node: node.to_string(),
            cookie,
            priority: 100,
            in_port: tunnel,
            matches: vec![OxmField::TunnelId(vni, None)],
            actions: local
                .iter()
                .map(|q| Act::Output(PortRef::Name(q.clone())))
                .collect(),
        });
    }
    flows
}

#[cfg(test)]
mod tests;
