//! Negotiation: which mechanism joins a client to an endpoint, over which path, with which
//! parameters. Pure: it reads the topology and claims from the pools it is given.
//!
//! - Same vertex: a local mechanism (kernel veth, memif) that the client wants, the endpoint
//!   offers and the node's forwarder can wire.
//! - Different vertices: the client's preferences (default VXLAN, GRE, MPLS, VLAN) intersected
//!   with what both ends' forwarders and the endpoint support. Tunnels need only their ends;
//!   MPLS and VLAN need every vertex of the path. The path must carry the payload MTU plus the
//!   encapsulation. The number (VNI, key, labels, VLAN id) comes from the intersection of the
//!   endpoint's range and, for a device, the device's range.
//!
//! Each refusal keeps its reason so the caller can say exactly why nothing fitted.

use std::net::IpAddr;

use meshwire_models::mechanism::Range;
use meshwire_models::{
    EndpointLocation, Hop, Mechanism, MechanismKind, NetworkServiceEndpoint, PathSegment, Topology,
};

use crate::path::{Constraints, Graph, Path};
use crate::pool::{NumberPool, PoolError};

/// Why an endpoint could not be used.
#[derive(Debug, Clone)]
pub enum Reject {
    NoPath(String),
    NoMechanism(String),
    Pool(PoolError),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::NoPath(s) | Reject::NoMechanism(s) => f.write_str(s),
            Reject::Pool(e) => write!(f, "{e}"),
        }
    }
}

/// The number pools negotiation claims from.
#[derive(Debug, Clone)]
pub struct NumberPools {
    pub vni: NumberPool,
    pub gre_key: NumberPool,
    pub mpls_label: NumberPool,
    pub vlan_id: NumberPool,
}

impl Default for NumberPools {
    fn default() -> Self {
        NumberPools {
            vni: NumberPool::new("vxlan vni"),
            gre_key: NumberPool::new("gre key"),
            mpls_label: NumberPool::new("mpls label"),
            vlan_id: NumberPool::new("vlan id"),
        }
    }
}

impl NumberPools {
    /// Claims (or, with `used == false`, releases) the numbers a mechanism holds.
    pub fn mark(&mut self, m: &Mechanism, used: bool) -> Result<(), PoolError> {
        let (pool, values): (&mut NumberPool, Vec<u32>) = match m {
            Mechanism::Vxlan { vni, .. } => (&mut self.vni, vec![*vni]),
            Mechanism::Gre { key, .. } => (&mut self.gre_key, vec![*key]),
            Mechanism::Mpls {
                label_out,
                label_in,
            } => (&mut self.mpls_label, vec![*label_out, *label_in]),
            Mechanism::Vlan { id } => (&mut self.vlan_id, vec![*id]),
            _ => return Ok(()),
        };
        for v in values {
            if used {
                pool.claim_exact(v)?;
            } else {
                pool.release(v);
            }
        }
        Ok(())
    }
}

/// What negotiation settled on.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub path: Vec<PathSegment>,
    pub hops: Vec<Hop>,
    /// MTU usable inside the connection.
    pub mtu: u32,
}

/// Everything negotiation needs to know about one request and one candidate endpoint.
pub struct Offer<'a> {
    pub topology: &'a Topology,
    pub graph: &'a Graph,
    pub client_vertex: &'a str,
    pub endpoint: &'a NetworkServiceEndpoint,
    pub preferences: &'a [MechanismKind],
    pub client_interface: &'a str,
    pub endpoint_interface: &'a str,
    pub connection_id: &'a str,
    /// Smallest payload MTU the connection must carry.
    pub min_mtu: u32,
    /// Links and vertices to avoid (healing around a failure).
    pub avoid_links: &'a [String],
    pub avoid_vertices: &'a [String],
    /// The VF claimed for the client (a request with an SR-IOV token).
    pub vf: Option<&'a crate::state::VfChoice>,
}

const REMOTE_DEFAULT: [MechanismKind; 4] = [
    MechanismKind::Vxlan,
    MechanismKind::Gre,
    MechanismKind::Mpls,
    MechanismKind::Vlan,
];
const LOCAL_DEFAULT: [MechanismKind; 3] = [
    MechanismKind::Kernel,
    MechanismKind::Memif,
    MechanismKind::SriovVf,
];

/// Negotiates a wiring for `offer`, claiming numbers from `pools`. On error nothing is claimed.
pub fn negotiate(offer: &Offer, pools: &mut NumberPools) -> Result<Wiring, Reject> {
    let ep_vertex = offer.endpoint.location.vertex();
    if !offer.topology.has_vertex(ep_vertex) {
        let what = match offer.endpoint.location {
            EndpointLocation::Node { .. } => "node",
            EndpointLocation::Device { .. } => "device",
        };
        return Err(Reject::NoPath(format!(
            "{}: its {what} {ep_vertex:?} is not in the topology",
            offer.endpoint.name
        )));
    }
    if offer.avoid_vertices.iter().any(|v| v == ep_vertex) {
        return Err(Reject::NoPath(format!(
            "{}: {ep_vertex} has failed",
            offer.endpoint.name
        )));
    }
    if offer.client_vertex == ep_vertex {
        local(offer, ep_vertex)
    } else {
        remote(offer, ep_vertex, pools)
    }
}

fn local(offer: &Offer, vertex: &str) -> Result<Wiring, Reject> {
    let prefs: Vec<MechanismKind> = if offer.preferences.is_empty() {
        LOCAL_DEFAULT.to_vec()
    } else {
        offer
            .preferences
            .iter()
            .copied()
            .filter(|k| k.is_local())
            .collect()
    };
    let mut why = Vec::new();
    for kind in &prefs {
        if !offer.endpoint.mechanisms.supports(*kind) {
            why.push(format!("{kind}: not offered by the endpoint"));
        } else if !offer.topology.vertex_supports(vertex, *kind) {
            why.push(format!("{kind}: {vertex}'s forwarder cannot wire it"));
        } else {
            let mechanism = match kind {
                MechanismKind::Kernel => Mechanism::Kernel {
                    interface: offer.client_interface.to_string(),
                    peer_interface: offer.endpoint_interface.to_string(),
                },
                MechanismKind::SriovVf => match offer.vf {
                    Some(v) => Mechanism::SriovVf {
                        pci_address: v.vf.pci.to_string(),
                        pf: v.vf.pf.to_string(),
                        vf: v.vf.index,
                        netdev: v.vf.netdev.clone().unwrap_or_default(),
                        pool: v.pool.clone(),
                        token: v.token.clone(),
                        vlan: offer
                            .endpoint
                            .mechanisms
                            .sriov_vf
                            .as_ref()
                            .and_then(|c| c.vlan),
                    },
                    None => {
                        why.push(format!(
                            "{kind}: a VF is claimed with a device plugin token (the request's sriov_token, upstream's tokenID)"
                        ));
                        continue;
                    }
                },
                _ => Mechanism::Memif {
                    socket: format!("/run/meshwire/memif/{}.sock", offer.connection_id),
                },
            };
            return Ok(Wiring {
                path: vec![PathSegment {
                    name: vertex.to_string(),
                    link: None,
                }],
                hops: vec![Hop {
                    from: vertex.to_string(),
                    to: vertex.to_string(),
                    link: None,
                    mechanism,
                }],
                mtu: 1500,
            });
        }
    }
    if prefs.is_empty() {
        why.push(format!(
            "client and endpoint are both on {vertex}, where only kernel, memif or sriov-vf can join them, but the client asked for {}",
            offer.preferences.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
        ));
    }
    Err(Reject::NoMechanism(format!(
        "{}: {}",
        offer.endpoint.name,
        why.join("; ")
    )))
}

fn remote(offer: &Offer, ep_vertex: &str, pools: &mut NumberPools) -> Result<Wiring, Reject> {
    let g = offer.graph;
    let (Some(from), Some(to)) = (g.vertex(offer.client_vertex), g.vertex(ep_vertex)) else {
        return Err(Reject::NoPath(format!(
            "{} or {ep_vertex} is not in the topology",
            offer.client_vertex
        )));
    };
    let prefs: Vec<MechanismKind> = if offer.preferences.is_empty() {
        REMOTE_DEFAULT.to_vec()
    } else {
        offer
            .preferences
            .iter()
            .copied()
            .filter(|k| !k.is_local())
            .collect()
    };
    if prefs.is_empty() {
        return Err(Reject::NoMechanism(format!(
            "{}: client on {} and endpoint on {ep_vertex} are on different vertices and a local mechanism cannot cross a link",
            offer.endpoint.name, offer.client_vertex
        )));
    }
    let avoid_links: Vec<usize> = offer
        .avoid_links
        .iter()
        .filter_map(|l| g.link_index(l))
        .collect();
    let avoid_vertices: Vec<usize> = offer
        .avoid_vertices
        .iter()
        .filter_map(|v| g.vertex(v))
        .collect();
    let mut why: Vec<String> = Vec::new();
    let mut only_path_failures = true;
    let mut pool_errors: Vec<PoolError> = Vec::new();
    for kind in prefs {
        let ep_caps = &offer.endpoint.mechanisms;
        if !offer.topology.vertex_supports(offer.client_vertex, kind) {
            why.push(format!(
                "{kind}: {}'s forwarder cannot wire it",
                offer.client_vertex
            ));
            only_path_failures = false;
            continue;
        }
        if !ep_caps.supports(kind) {
            why.push(format!("{kind}: not offered by the endpoint"));
            only_path_failures = false;
            continue;
        }
        if !offer.topology.vertex_supports(ep_vertex, kind) {
            why.push(format!("{kind}: {ep_vertex} cannot wire it"));
            only_path_failures = false;
            continue;
        }
        let hop_by_hop = !kind.is_tunnel();
        let topo = offer.topology;
        let vertex_ok = |v: usize| {
            !avoid_vertices.contains(&v) && (!hop_by_hop || topo.vertex_supports(g.name(v), kind))
        };
        let link_ok = |l: usize| !avoid_links.contains(&l);
        let min_mtu = offer.min_mtu + kind.overhead();
        let c = Constraints {
            min_mtu,
            vertex_ok: &vertex_ok,
            link_ok: &link_ok,
        };
        let Some(path) = g.shortest(from, to, &c) else {
            why.push(format!(
                "{kind}: no path from {} to {ep_vertex} with links up and MTU >= {min_mtu}{}",
                offer.client_vertex,
                if hop_by_hop {
                    format!(" where every hop supports {kind}")
                } else {
                    String::new()
                }
            ));
            continue;
        };
        // The number range both the endpoint and, for a device, the device accept.
        // A device at either end (the endpoint, or the client of a chain's onward leg) has the
        // last word on its numbers.
        let mut range = ep_caps.range(kind);
        for v in [ep_vertex, offer.client_vertex] {
            if let Some(dev) = offer.topology.devices.get(v) {
                range = match (range, dev.mechanisms.range(kind)) {
                    (Some(a), Some(b)) => a.intersect(&b),
                    (a, None) => a,
                    (None, b) => b,
                };
            }
        }
        let Some(range) = range else {
            why.push(format!(
                "{kind}: the endpoint's and device's ranges do not overlap"
            ));
            only_path_failures = false;
            continue;
        };
        match wire(offer, kind, range, &path, ep_vertex, pools) {
            Ok(w) => return Ok(w),
            Err(Reject::Pool(e)) => {
                // Try the next mechanism; report exhaustion if it is the only reason.
                why.push(format!("{kind}: {e}"));
                pool_errors.push(e);
                only_path_failures = false;
            }
            Err(other) => {
                why.push(format!("{kind}: {other}"));
                only_path_failures = false;
            }
        }
    }
    let text = format!("{}: {}", offer.endpoint.name, why.join("; "));
    if !pool_errors.is_empty() && pool_errors.len() == why.len() {
        return Err(Reject::Pool(pool_errors.swap_remove(0)));
    }
    if only_path_failures {
        Err(Reject::NoPath(text))
    } else {
        Err(Reject::NoMechanism(text))
    }
}

fn wire(
    offer: &Offer,
    kind: MechanismKind,
    range: Range,
    path: &Path,
    ep_vertex: &str,
    pools: &mut NumberPools,
) -> Result<Wiring, Reject> {
    let g = offer.graph;
    let t = offer.topology;
    let segments: Vec<PathSegment> = path
        .vertices
        .iter()
        .enumerate()
        .map(|(i, &v)| PathSegment {
            name: g.name(v).to_string(),
            link: path.links.get(i).map(|&l| g.link_name(l).to_string()),
        })
        .collect();
    let link_mtu = path.mtu.min(9000);
    let mtu = link_mtu - kind.overhead();
    let underlay = |vertex: &str, link: usize| -> Result<IpAddr, Reject> {
        t.underlay_address(vertex)
            .or_else(|| t.links.get(g.link_name(link)).and_then(|l| l.end_at(vertex)).and_then(|e| e.address).map(|a| a.addr()))
            .ok_or_else(|| Reject::NoMechanism(format!("{kind}: {vertex} has no underlay address: set spec.underlayAddress on it or give its link an address")))
    };
    let hops = match kind {
        MechanismKind::Vxlan | MechanismKind::Gre => {
            let src_ip = underlay(offer.client_vertex, path.links[0])?;
            let dst_ip = underlay(ep_vertex, path.links[path.links.len() - 1])?;
            let mechanism = if kind == MechanismKind::Vxlan {
                let port = offer
                    .endpoint
                    .mechanisms
                    .vxlan
                    .as_ref()
                    .map(|v| v.port)
                    .unwrap_or(4789);
                Mechanism::Vxlan {
                    vni: pools.vni.claim(range).map_err(Reject::Pool)?,
                    src_ip,
                    dst_ip,
                    port,
                }
            } else {
                Mechanism::Gre {
                    key: pools.gre_key.claim(range).map_err(Reject::Pool)?,
                    src_ip,
                    dst_ip,
                }
            };
            vec![Hop {
                from: offer.client_vertex.to_string(),
                to: ep_vertex.to_string(),
                link: None,
                mechanism,
            }]
        }
        MechanismKind::Mpls | MechanismKind::Vlan => {
            let mechanism = if kind == MechanismKind::Mpls {
                let labels = pools
                    .mpls_label
                    .claim_many(range, 2)
                    .map_err(Reject::Pool)?;
                Mechanism::Mpls {
                    label_out: labels[0],
                    label_in: labels[1],
                }
            } else {
                Mechanism::Vlan {
                    id: pools.vlan_id.claim(range).map_err(Reject::Pool)?,
                }
            };
            path.links
                .iter()
                .enumerate()
                .map(|(i, &l)| Hop {
                    from: g.name(path.vertices[i]).to_string(),
                    to: g.name(path.vertices[i + 1]).to_string(),
                    link: Some(g.link_name(l).to_string()),
                    mechanism: mechanism.clone(),
                })
                .collect()
        }
        other => return Err(Reject::NoMechanism(format!("{other} cannot cross a link"))),
    };
    Ok(Wiring {
        path: segments,
        hops,
        mtu,
    })
}
