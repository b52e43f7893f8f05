//! What the kernel data plane must hold for one connection, computed from the connection alone.
//! Pure: no netlink, no namespaces. [`super::KernelDriver`] executes it.
//!
//! - Kernel mechanism (same node): a veth pair, `interface` in the client's namespace and
//!   `nse-<id>` created directly in the endpoint's namespace.
//! - VXLAN (different nodes): on each side a VXLAN device created in the node's namespace, where
//!   the underlay address lives, and placed directly into the workload's namespace.
//! - IP payload: the client gets `src_ip_addrs` and `src_routes`, the endpoint `dst_ip_addrs`.
//!   Ethernet payload: the endpoint's interface joins its bridge, which holds `dst_ip_addrs`.
//! - Open vSwitch nodes: only the workload legs ([`Wiring::Legs`], planned by
//!   [`crate::ovs::plan::legs`]): the switch itself is the controller's (OVSDB and OpenFlow).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use meshwire_models::{Connection, ForwarderKind, Mechanism, Payload, Route, Topology};

use crate::ovs::plan::Leg;

/// What every alias of ours starts with; the connection id follows.
pub const ALIAS_PREFIX: &str = "meshwire:";

/// The interface alias marking what Meshwire created, and for which connection.
pub fn alias(connection_id: &str) -> String {
    format!("{ALIAS_PREFIX}{connection_id}")
}

/// The alias of an SR-IOV VF lent to a connection (`meshwire-vf:<id>`): a VF is given back,
/// never deleted, so sweeps that delete what carries [`ALIAS_PREFIX`] never match it.
pub const VF_ALIAS_PREFIX: &str = "meshwire-vf:";

/// The routing protocol number on routes Meshwire installs (`ip route show proto 200`).
pub const ROUTE_PROTOCOL: u8 = 200;

/// One side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The workload's namespace (`None`: the driver's own).
    pub netns: Option<String>,
    pub ifname: String,
    /// On the interface, or on the bridge when there is one.
    pub addrs: Vec<IpNet>,
    pub routes: Vec<Route>,
    pub bridge: Option<String>,
    pub mtu: u32,
    /// A fixed MAC address for the interface (the OVS data plane derives them from the id).
    pub mac: Option<[u8; 6]>,
    /// Permanent neighbour entries (IP payload over MPLS carries no ARP).
    pub neighbors: Vec<(IpAddr, [u8; 6])>,
    /// The interface is lent, not created (an SR-IOV VF): marked
    /// `meshwire-vf:<id>/<name>/<pci>` and given back under its name on removal.
    pub lent: Option<Lent>,
    /// A vL3 router's end: the namespace forwards, and this end's routes (to members) replace
    /// whatever route a prefix had, and those of ours it no longer wants are deleted.
    pub router: bool,
    /// A vL3 member's end: the namespace's resolver is its router, for the zone.
    pub resolver: Option<Resolver>,
    /// The routes' metric (0: the kernel's default). A vL3 peer leg's routes take
    /// [`PEER_ROUTE_METRIC`], so the route to a member on its own leg (metric 0) always wins
    /// and a peer leg's route replacing another never replaces a member's own.
    pub metric: u32,
}

/// The metric of the routes a vL3 peer leg carries to the members behind its far side.
pub const PEER_ROUTE_METRIC: u32 = 100;

/// A vL3 member's resolver: written to `/etc/netns/<namespace>/resolv.conf` (what `ip netns
/// exec` shows a program as `/etc/resolv.conf`), marked with the connection's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    pub server: IpAddr,
    pub zone: String,
}

/// What a lent interface is on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lent {
    /// Its name on the node while it is not lent.
    pub host: String,
    /// Its PCI address (the kernel's parent device of a real VF's netdev).
    pub pci: String,
}

impl End {
    /// The alias marking this end as connection `id`'s.
    pub fn alias(&self, id: &str) -> String {
        match &self.lent {
            Some(l) => vf_alias(id, &l.host, &l.pci),
            None => alias(id),
        }
    }
}

/// The alias of a VF lent to connection `id`: its name on the node and its PCI address.
pub fn vf_alias(id: &str, host: &str, pci: &str) -> String {
    format!("{VF_ALIAS_PREFIX}{id}/{host}/{pci}")
}

/// (connection id, name on the node, PCI address) of a lent VF's alias.
pub fn parse_vf_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.strip_prefix(VF_ALIAS_PREFIX)?.splitn(3, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// An SR-IOV VF lent to a connection's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfLend {
    pub pci: String,
    /// Its PF's PCI address and its number there.
    pub pf: String,
    pub vf: u32,
    /// The VF's name on its node while it is not lent.
    pub host_name: String,
    /// The node's namespace, where the VF lives while not lent.
    pub node_netns: Option<String>,
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    Veth {
        client: End,
        endpoint: End,
    },
    Vxlan {
        /// `None` when the client is an external device (its eNSM configures that side).
        client: Option<Side>,
        /// `None` when the endpoint is an external device.
        endpoint: Option<Side>,
        vni: u32,
        port: u16,
    },
    /// On Open vSwitch nodes: each leg a veth pair, the workload's interface and its peer that
    /// joins the node's bridge.
    Legs(Vec<Leg>),
    /// A VF of the client node's PF, moved into the client's namespace; the PF's embedded
    /// switch carries it, so the endpoint side has nothing on the node.
    Vf {
        client: End,
        vf: VfLend,
    },
}

/// One side of a tunnel: the workload end and where its tunnel socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub end: End,
    pub underlay_netns: Option<String>,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
}

impl Wiring {
    /// The ends this data plane wires, client first (one when the other is a device).
    pub fn ends(&self) -> Vec<&End> {
        self.sides().into_iter().map(|(e, _)| e).collect()
    }

    /// The ends with whether each is the client's.
    pub fn sides(&self) -> Vec<(&End, bool)> {
        match self {
            Wiring::Veth { client, endpoint } => vec![(client, true), (endpoint, false)],
            Wiring::Vxlan {
                client, endpoint, ..
            } => client
                .iter()
                .map(|c| (&c.end, true))
                .chain(endpoint.iter().map(|e| (&e.end, false)))
                .collect(),
            Wiring::Legs(legs) => legs
                .iter()
                .flat_map(|l| [(&l.workload, l.client), (&l.bridge_port, l.client)])
                .collect(),
            Wiring::Vf { client, .. } => vec![(client, true)],
        }
    }
}

fn v4(a: IpAddr, what: &str) -> Result<Ipv4Addr, String> {
    match a {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => Err(format!(
            "{what} {a} is IPv6; the kernel VXLAN wiring uses an IPv4 underlay"
        )),
    }
}

/// The workload ends of `c` (client, endpoint): names, addresses, routes, bridge, MTU.
pub fn plan_ends(c: &Connection) -> (End, End) {
    let p = &c.placement;
    let ethernet = c.payload == Payload::Ethernet;
    let peer = c
        .vl3
        .as_ref()
        .is_some_and(|v| v.role == meshwire_models::Vl3Role::Peer);
    let client = End {
        netns: p.client_netns.clone(),
        ifname: c.interface.clone(),
        addrs: c.ip_context.src_ip_addrs.clone(),
        routes: c.ip_context.src_routes.clone(),
        bridge: None,
        mtu: c.mtu,
        mac: None,
        neighbors: Vec::new(),
        lent: None,
        router: peer,
        metric: if peer { PEER_ROUTE_METRIC } else { 0 },
        resolver: match &c.vl3 {
            Some(v) if !peer => Some(Resolver {
                server: v.gateway,
                zone: v.zone.clone(),
            }),
            _ => None,
        },
    };
    let endpoint = End {
        netns: p.endpoint_netns.clone(),
        ifname: c.endpoint_interface(),
        addrs: c.ip_context.dst_ip_addrs.clone(),
        routes: c.ip_context.dst_routes.clone(),
        bridge: if ethernet { p.bridge.clone() } else { None },
        mtu: c.mtu,
        mac: None,
        neighbors: Vec::new(),
        lent: None,
        router: c.vl3.is_some(),
        metric: if peer { PEER_ROUTE_METRIC } else { 0 },
        resolver: None,
    };
    (client, endpoint)
}

/// The wiring for `c`, or why the kernel data plane cannot carry it.
pub fn plan(c: &Connection) -> Result<Wiring, String> {
    let p = &c.placement;
    let (mut client, mut endpoint) = plan_ends(c);
    match c.mechanism() {
        Some(Mechanism::Kernel { .. }) if p.endpoint_device.is_some() || p.client_device.is_some() => Err(format!("device {}: a veth cannot reach a device (use VXLAN)", p.endpoint_device.as_deref().or(p.client_device.as_deref()).unwrap_or_default())),
        Some(Mechanism::Kernel { interface, peer_interface }) => {
            client.ifname = interface.clone();
            endpoint.ifname = peer_interface.clone();
            if client.netns == endpoint.netns {
                return Err(format!("client and endpoint are both in namespace {:?}; a veth needs two", client.netns));
            }
            Ok(Wiring::Veth { client, endpoint })
        }
        Some(Mechanism::Vxlan { vni, src_ip, dst_ip, port }) => {
            let (local, remote) = (v4(*src_ip, "client underlay")?, v4(*dst_ip, "endpoint underlay")?);
            Ok(Wiring::Vxlan {
                client: p.client_device.is_none().then(|| Side { end: client, underlay_netns: p.client_node_netns.clone(), local, remote }),
                // A leg to another domain's router: that domain wires its end.
                endpoint: (p.endpoint_device.is_none() && c.remote_domain().is_none()).then(|| Side { end: endpoint, underlay_netns: p.endpoint_node_netns.clone(), local: remote, remote: local }),
                vni: *vni,
                port: *port,
            })
        }
        Some(Mechanism::SriovVf { pci_address, pf, vf, netdev, vlan, .. }) => {
            if p.client_device.is_some() {
                return Err("a device is no SR-IOV client".into());
            }
            meshwire_models::validate::check_ifname(netdev).map_err(|e| format!("VF {pci_address}: {e}"))?;
            client.lent = Some(Lent {
                host: netdev.clone(),
                pci: pci_address.clone(),
            });
            client.mac = Some(crate::ovs::plan::mac(&c.id, 0));
            Ok(Wiring::Vf {
                client,
                vf: VfLend {
                    pci: pci_address.clone(),
                    pf: pf.clone(),
                    vf: *vf,
                    host_name: netdev.clone(),
                    node_netns: p.client_node_netns.clone(),
                    vlan: *vlan,
                },
            })
        }
        Some(other) => Err(format!("the kernel data plane cannot wire {} (these hosts have no GRE, MPLS or VLAN modules); use an ovs node", other.kind())),
        None => Err("connection has no mechanism".into()),
    }
}

/// The vertex a connection's endpoint is on: where its last hop ends (else its path's last
/// segment, else the client's node).
pub fn endpoint_vertex(c: &Connection) -> &str {
    c.hops
        .last()
        .map(|h| h.to.as_str())
        .or_else(|| c.path.last().map(|s| s.name.as_str()))
        .unwrap_or(c.client.node.as_str())
}

/// The part of `c`'s wiring that lives on node `node`, or `None` when nothing does: a veth pair
/// lives on the client's node (both ends are there); of a tunnel, the client's side lives on the
/// client's node and the endpoint's side on the endpoint's.
pub fn plan_on(c: &Connection, node: &str) -> Result<Option<Wiring>, String> {
    let (client_here, endpoint_here) = (c.client.node == node, endpoint_vertex(c) == node);
    if !client_here && !endpoint_here {
        return Ok(None);
    }
    Ok(match plan(c)? {
        w @ (Wiring::Veth { .. } | Wiring::Vf { .. }) => client_here.then_some(w),
        w @ Wiring::Legs(_) => Some(w),
        Wiring::Vxlan {
            client,
            endpoint,
            vni,
            port,
        } => {
            let client = client.filter(|_| client_here);
            let endpoint = endpoint.filter(|_| endpoint_here);
            (client.is_some() || endpoint.is_some()).then_some(Wiring::Vxlan {
                client,
                endpoint,
                vni,
                port,
            })
        }
    })
}

/// [`plan`] for a driver of every node (`node` is `None`), [`plan_on`] for one node's.
pub fn plan_for(c: &Connection, node: Option<&str>) -> Result<Option<Wiring>, String> {
    match node {
        None => plan(c).map(Some),
        Some(n) => plan_on(c, n),
    }
}

/// What this data plane wires of `c` on `node` (`None`: on every node), where topology `t`
/// says what forwards at the client's node: on an Open vSwitch node, the workload legs alone.
pub fn plan_in(c: &Connection, node: Option<&str>, t: &Topology) -> Result<Option<Wiring>, String> {
    let ovs = t
        .nodes
        .get(&c.client.node)
        .is_some_and(|n| n.forwarder == ForwarderKind::Ovs);
    if !ovs {
        return plan_for(c, node);
    }
    let legs: Vec<Leg> = crate::ovs::plan::legs(c)?
        .into_iter()
        .filter(|l| node.is_none_or(|n| l.node == n))
        .collect();
    Ok((!legs.is_empty()).then_some(Wiring::Legs(legs)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meshwire_models::{ClientRef, ConnectionState, Hop, IpContext, Placement};

    /// A connection for driver tests (shared with the OVS plan's tests).
    pub(crate) fn conn(m: Mechanism, payload: Payload) -> Connection {
        Connection {
            id: "0123abcd-ffff".into(),
            network_service: "s".into(),
            network_service_endpoint_name: "e".into(),
            payload,
            client: ClientRef {
                node: "n1".into(),
                name: None,
            },
            labels: Default::default(),
            interface: "nsm-1".into(),
            preferences: vec![],
            path: vec![],
            hops: vec![Hop {
                from: "n1".into(),
                to: "n2".into(),
                link: None,
                mechanism: m,
            }],
            placement: Placement {
                client_netns: Some("c".into()),
                client_node_netns: Some("n1".into()),
                endpoint_netns: Some("e".into()),
                endpoint_node_netns: Some("n2".into()),
                bridge: Some("br0".into()),
                endpoint_device: None,
                client_device: None,
            },
            ip_context: IpContext {
                src_ip_addrs: vec!["172.16.0.1/31".parse().unwrap()],
                dst_ip_addrs: vec!["172.16.0.0/31".parse().unwrap()],
                ..Default::default()
            },
            address_pool: None,
            mtu: 1450,
            state: ConnectionState::Up,
            created_at_ms: 0,
            updated_at_ms: 0,
            generation: 0,
            last_error: None,
            chain: Default::default(),
            request_key: None,
            vl3: None,
            dns_context: None,
        }
    }

    #[test]
    fn a_vf_is_lent_to_the_client_alone_and_its_mark_names_it() {
        let m = Mechanism::SriovVf {
            pci_address: "0000:3b:01.1".into(),
            pf: "0000:3b:00.0".into(),
            vf: 1,
            netdev: "pf0v1".into(),
            pool: "d.example/10G".into(),
            token: "sriov-1".into(),
            vlan: Some(100),
        };
        let c = conn(m.clone(), Payload::Ethernet);
        let Ok(Wiring::Vf { client, vf }) = plan(&c) else {
            panic!("not a VF wiring")
        };
        assert_eq!(
            (client.ifname.as_str(), client.netns.as_deref()),
            ("nsm-1", Some("c"))
        );
        assert_eq!(
            (vf.host_name.as_str(), vf.node_netns.as_deref(), vf.vf),
            ("pf0v1", Some("n1"), 1)
        );
        let a = client.alias(&c.id);
        assert!(a.len() <= 128, "the kernel's alias limit");
        assert_eq!(
            parse_vf_alias(&a),
            Some((c.id.as_str(), "pf0v1", "0000:3b:01.1"))
        );
        assert!(
            !a.starts_with(ALIAS_PREFIX),
            "never matched by the deleting sweeps"
        );
        assert!(plan_on(&c, "n1").unwrap().is_some());
        assert!(
            plan_on(&c, "n2").unwrap().is_none(),
            "nothing on the endpoint's node"
        );
        let mut bad = c.clone();
        if let Mechanism::SriovVf { netdev, .. } = &mut bad.hops[0].mechanism {
            *netdev = "../etc".into();
        }
        assert!(plan(&bad).is_err());
    }

    #[test]
    fn vxlan_sides_mirror_each_other() {
        let m = Mechanism::Vxlan {
            vni: 7,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: "10.0.0.2".parse().unwrap(),
            port: 4789,
        };
        let Wiring::Vxlan {
            client,
            endpoint,
            vni,
            ..
        } = plan(&conn(m, Payload::Ip)).unwrap()
        else {
            panic!()
        };
        assert_eq!(vni, 7);
        let (client, endpoint) = (client.unwrap(), endpoint.unwrap());
        assert_eq!(
            (client.local, client.remote),
            (endpoint.remote, endpoint.local)
        );
        assert_eq!(
            (
                client.underlay_netns.as_deref(),
                client.end.netns.as_deref()
            ),
            (Some("n1"), Some("c"))
        );
        assert_eq!(endpoint.end.ifname, "nse-0123abcd");
        assert_eq!(endpoint.end.bridge, None, "IP payload: no bridge");
    }

    #[test]
    fn device_endpoint_gets_only_the_client_half() {
        let m = Mechanism::Vxlan {
            vni: 5001,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: "10.0.0.9".parse().unwrap(),
            port: 4789,
        };
        let mut c = conn(m, Payload::Ip);
        c.placement.endpoint_device = Some("fw1".into());
        let w = plan(&c).unwrap();
        assert_eq!(w.ends().len(), 1);
        assert_eq!(w.ends()[0].ifname, "nsm-1");
        let mut chained = c.clone();
        chained.placement.endpoint_device = None;
        chained.placement.client_device = Some("fw1".into());
        let w = plan(&chained).unwrap();
        assert_eq!(w.sides().len(), 1);
        assert!(!w.sides()[0].1, "only the endpoint's side");
        c.hops[0].mechanism = Mechanism::Kernel {
            interface: "nsm-1".into(),
            peer_interface: "nse-1".into(),
        };
        assert!(plan(&c).unwrap_err().contains("device fw1"));
    }

    #[test]
    fn ethernet_endpoint_joins_its_bridge_and_gre_is_refused() {
        let m = Mechanism::Kernel {
            interface: "nsm-1".into(),
            peer_interface: "nse-0123abcd".into(),
        };
        let w = plan(&conn(m, Payload::Ethernet)).unwrap();
        assert_eq!(w.ends()[1].bridge.as_deref(), Some("br0"));
        let gre = Mechanism::Gre {
            key: 1,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: "10.0.0.2".parse().unwrap(),
        };
        assert!(plan(&conn(gre, Payload::Ip))
            .unwrap_err()
            .contains("cannot wire gre"));
    }

    /// Input: a VXLAN connection from n1 to n2 and a veth on n1. Output: n1 holds the tunnel's
    /// client side and the whole veth pair, n2 the tunnel's endpoint side and nothing of the
    /// veth, n3 nothing; a driver of every node gets everything.
    #[test]
    fn each_node_holds_its_own_side() {
        let vx = conn(
            Mechanism::Vxlan {
                vni: 7,
                src_ip: "10.0.0.1".parse().unwrap(),
                dst_ip: "10.0.0.2".parse().unwrap(),
                port: 4789,
            },
            Payload::Ip,
        );
        let sides = |w: Option<Wiring>| {
            w.map(|w| {
                w.sides()
                    .iter()
                    .map(|(_, client)| *client)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(sides(plan_on(&vx, "n1").unwrap()), Some(vec![true]));
        assert_eq!(sides(plan_on(&vx, "n2").unwrap()), Some(vec![false]));
        assert_eq!(sides(plan_on(&vx, "n3").unwrap()), None);
        assert_eq!(sides(plan_for(&vx, None).unwrap()), Some(vec![true, false]));
        let mut veth = conn(
            Mechanism::Kernel {
                interface: "nsm-1".into(),
                peer_interface: "nse-1".into(),
            },
            Payload::Ip,
        );
        veth.hops[0].to = "n1".into();
        assert_eq!(
            sides(plan_on(&veth, "n1").unwrap()),
            Some(vec![true, false])
        );
        assert_eq!(sides(plan_on(&veth, "n2").unwrap()), None);
    }

    /// On an Open vSwitch node only the workload legs are wired here: the client's leg on the
    /// client's node (its peer named for br-int), the endpoint's on the endpoint's; on a kernel
    /// node the same connection is a pair of VXLAN devices.
    #[test]
    fn an_ovs_node_holds_its_workload_legs() {
        let gre = conn(
            Mechanism::Gre {
                key: 7,
                src_ip: "10.0.0.1".parse().unwrap(),
                dst_ip: "10.0.0.2".parse().unwrap(),
            },
            Payload::Ip,
        );
        let mut t = Topology::default();
        for n in ["n1", "n2"] {
            t.nodes.insert(
                n.into(),
                meshwire_models::Node {
                    name: n.into(),
                    forwarder: ForwarderKind::Ovs,
                    underlay_address: None,
                    netns: Some(n.into()),
                    ovsdb: Some(format!("unix:/{n}.sock")),
                    labels: Default::default(),
                },
            );
        }
        let legs = |w: Option<Wiring>| match w {
            Some(Wiring::Legs(l)) => l
                .iter()
                .map(|l| (l.node.clone(), l.client, l.bridge_port.ifname.clone()))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            legs(plan_in(&gre, Some("n1"), &t).unwrap()),
            vec![("n1".to_string(), true, "mwc0123abcd".to_string())]
        );
        assert_eq!(
            legs(plan_in(&gre, Some("n2"), &t).unwrap()),
            vec![("n2".to_string(), false, "mwe0123abcd".to_string())]
        );
        assert_eq!(legs(plan_in(&gre, None, &t).unwrap()).len(), 2);
        assert_eq!(plan_in(&gre, Some("n3"), &t).unwrap(), None);
        // The same connection on kernel nodes: GRE is refused (no module), VXLAN is wired.
        t.nodes
            .values_mut()
            .for_each(|n| n.forwarder = ForwarderKind::Kernel);
        assert!(plan_in(&gre, Some("n1"), &t).is_err());
    }
}
