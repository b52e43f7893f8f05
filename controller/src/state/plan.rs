//! Planning one connection: select an endpoint (never one already in its chain), find a path,
//! negotiate the mechanism, claim numbers and addresses.

use ipnet::IpNet;
use meshwire_models::labels::format_labels;
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, EndpointLocation, IpContext,
    NetworkServiceEndpoint, Payload, Placement, Route,
};

use crate::error::ControllerError;
use crate::negotiate::{negotiate, Offer, Reject};
use crate::path::Graph;
use crate::pool::{AddressPools, AddressShape, PoolError};
use crate::select::{matching, order_by_load};

use super::{Avoid, State};

impl State {
    /// Selects an endpoint, computes the path, negotiates the mechanism and claims its numbers
    /// and addresses. The connection is returned in state `requested`, not yet recorded: pass it
    /// to [`commit`](Self::commit), or to [`unclaim`](Self::unclaim) to give its claims back.
    pub fn plan(
        &mut self,
        req: &ConnectionRequest,
        id: &str,
        now_ms: u64,
        avoid: &Avoid,
        interface: Option<&str>,
    ) -> Result<Connection, ControllerError> {
        let service_name = &req.network_service;
        let service =
            self.services
                .get(service_name)
                .ok_or_else(|| ControllerError::UnknownService {
                    service: service_name.clone(),
                })?;
        let client_is_device = self.topology.devices.contains_key(&req.client.node);
        if !self.topology.nodes.contains_key(&req.client.node) && !client_is_device {
            return Err(ControllerError::UnknownNode {
                node: req.client.node.clone(),
            });
        }
        if self.graph_dirty {
            self.graph = Graph::build(&self.topology);
            self.graph_dirty = false;
        }
        let names = self
            .by_service
            .get(service_name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let live: Vec<&NetworkServiceEndpoint> = names
            .iter()
            .filter_map(|n| self.endpoints.get(n))
            .filter(|e| {
                // A device passing a connection on never lands on itself.
                let itself = client_is_device && e.nse.location.vertex() == req.client.node;
                // A vL3's routers are namespaces on nodes (the mesh joins only those).
                let router = service.vl3.is_none()
                    || matches!(
                        e.nse.location,
                        EndpointLocation::Node { netns: Some(_), .. }
                    );
                avoid.pinned.as_ref().is_none_or(|p| *p == e.nse.name)
                    && router
                    && !e.down
                    && e.nse.expires_at_ms.is_none_or(|t| t > now_ms)
                    && !avoid.endpoints.contains(&e.nse.name)
                    && !itself
            })
            .map(|e| &e.nse)
            .collect();
        if live.is_empty() {
            let down: Vec<&str> = names
                .iter()
                .filter(|n| self.endpoints.get(*n).is_some_and(|e| e.down))
                .map(String::as_str)
                .collect();
            return Err(ControllerError::NoEndpoint {
                service: service_name.clone(),
                detail: if down.is_empty() {
                    String::new()
                } else {
                    format!(" that is up (withdrawn: {})", down.join(", "))
                },
            });
        }
        // A vL3's peer leg joins the two routers it names, whatever the service's matches.
        let matched = if avoid.pinned.is_some() {
            live.clone()
        } else {
            matching(service, &req.labels, &live)
        };
        if matched.is_empty() {
            return Err(ControllerError::NoMatchingEndpoint {
                service: service_name.clone(),
                labels: format_labels(&req.labels),
            });
        }
        let matched = without_chain(matched, &avoid.chain)?;
        let with_room: Vec<(&NetworkServiceEndpoint, u32)> = matched
            .iter()
            .map(|e| (*e, self.load.get(&e.name).copied().unwrap_or(0)))
            .filter(|(e, load)| avoid.pinned.is_some() || e.capacity.is_none_or(|cap| *load < cap))
            .collect();
        if with_room.is_empty() {
            return Err(ControllerError::NoCapacity {
                service: service_name.clone(),
                count: matched.len(),
            });
        }
        let turn = self.turns.entry(service_name.clone()).or_default();
        let mut ordered = order_by_load(with_room, *turn);
        *turn = turn.wrapping_add(1);
        // A vL3 member joins the router on its own node first (its traffic to members
        // elsewhere crosses one tunnel, between routers).
        if service.vl3.is_some() {
            ordered.sort_by_key(|e| e.location.vertex() != req.client.node);
        }

        let workload = req.client.workload().to_string();
        let client_interface = match interface.or(req.interface.as_deref()) {
            Some(i) => i.to_string(),
            None => {
                let used = self.client_ifaces.get(&workload);
                (1..)
                    .map(|n| format!("nsm-{n}"))
                    .find(|n| used.is_none_or(|u| !u.contains(n)))
                    .expect("unbounded")
            }
        };
        let endpoint_interface = meshwire_models::connection::endpoint_interface_for(id);
        let payload = service.payload;
        // A token claims a VF on the client's node first: it does not depend on the endpoint.
        let vf = match &req.sriov_token {
            Some(_) if client_is_device => {
                return Err(ControllerError::Invalid {
                    what: "request".into(),
                    field: "sriov_token".into(),
                    rule: "a device is no SR-IOV client".into(),
                })
            }
            Some(t) => Some(self.choose_vf(&req.client.node, t, id)?),
            None => None,
        };
        let vf_prefs = [meshwire_models::MechanismKind::SriovVf];
        let preferences: &[meshwire_models::MechanismKind] = if vf.is_some() {
            &vf_prefs
        } else {
            &req.mechanisms
        };

        let mut rejects: Vec<Reject> = Vec::new();
        for nse in ordered {
            let offer = Offer {
                topology: &self.topology,
                graph: &self.graph,
                client_vertex: &req.client.node,
                endpoint: nse,
                preferences,
                client_interface: &client_interface,
                endpoint_interface: &endpoint_interface,
                connection_id: id,
                min_mtu: self.config.min_mtu,
                avoid_links: &avoid.links,
                avoid_vertices: &avoid.vertices,
                vf: vf.as_ref(),
            };
            let wiring = match negotiate(&offer, &mut self.numbers) {
                Ok(w) => w,
                Err(r) => {
                    rejects.push(r);
                    continue;
                }
            };
            let member = service.vl3.as_ref().filter(|_| avoid.pinned.is_none());
            // A vL3's addresses, members' and peer legs' alike, come from its own prefix: no
            // other pool can hand out one of them.
            let prefix = match &service.vl3 {
                Some(v) => v.member_prefix(),
                None => nse.ipam_prefix.unwrap_or(self.config.ipam_prefix),
            };
            // A healing member keeps the address its recorded version holds.
            let kept = member.and_then(|_| {
                self.connections
                    .get(id)
                    .filter(|o| o.address_pool == Some(prefix))
                    .and_then(|o| o.ip_context.src_ip_addrs.first().copied())
            });
            let claimed = match (member, kept) {
                (Some(v), Some(a)) => Ok(super::vl3::member_context(v, a)),
                (Some(v), None) => {
                    super::vl3::member_address(&mut self.addresses, v, &req.excluded_prefixes)
                }
                (None, _) => match &service.vl3 {
                    Some(v) => super::vl3::peer_addresses(&mut self.addresses, v),
                    None => address(
                        &mut self.addresses,
                        prefix,
                        payload,
                        nse,
                        &req.excluded_prefixes,
                    ),
                },
            };
            let ip = match claimed {
                Ok(ip) => ip,
                Err(e) => {
                    for h in &wiring.hops {
                        let _ = self.numbers.mark(&h.mechanism, false);
                    }
                    rejects.push(Reject::Pool(e));
                    continue;
                }
            };
            let node_netns = |v: &str| self.topology.nodes.get(v).and_then(|n| n.netns.clone());
            let client_node_netns = node_netns(&req.client.node);
            let (endpoint_netns, endpoint_node_netns) = match &nse.location {
                EndpointLocation::Node { node, netns } => {
                    (netns.clone().or_else(|| node_netns(node)), node_netns(node))
                }
                EndpointLocation::Device { .. } => (None, None),
            };
            let placement = Placement {
                client_netns: if client_is_device {
                    None
                } else {
                    req.client
                        .name
                        .clone()
                        .or_else(|| client_node_netns.clone())
                },
                client_node_netns,
                endpoint_netns,
                endpoint_node_netns,
                bridge: (payload == Payload::Ethernet)
                    .then(|| nse.bridge.clone().unwrap_or_else(|| "nsm-br0".to_string())),
                endpoint_device: match &nse.location {
                    EndpointLocation::Device { device } => Some(device.clone()),
                    EndpointLocation::Node { .. } => None,
                },
                client_device: client_is_device.then(|| req.client.node.clone()),
            };
            if let Some(v) = &vf {
                self.sriov.claim(&req.client.node, v, id);
            }
            return Ok(Connection {
                id: id.to_string(),
                network_service: service_name.clone(),
                network_service_endpoint_name: nse.name.clone(),
                payload,
                client: ClientRef {
                    node: req.client.node.clone(),
                    name: req.client.name.clone(),
                },
                labels: req.labels.clone(),
                interface: client_interface,
                preferences: req.mechanisms.clone(),
                path: wiring.path,
                hops: wiring.hops,
                placement,
                ip_context: ip,
                address_pool: Some(prefix),
                mtu: wiring.mtu,
                state: ConnectionState::Requested,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                generation: 0,
                last_error: None,
                chain: Default::default(),
                request_key: None,
                vl3: service
                    .vl3
                    .as_ref()
                    .map(|v| super::vl3::leg(v, service_name, req, avoid.pinned.is_some())),
                dns_context: member.map(|v| super::vl3::dns_context(v, service_name)),
            });
        }
        Err(classify(service_name, rejects))
    }
}

/// Addresses and routes for a connection to `nse`.
fn address(
    pools: &mut AddressPools,
    prefix: IpNet,
    payload: Payload,
    nse: &NetworkServiceEndpoint,
    excluded: &[IpNet],
) -> Result<IpContext, PoolError> {
    let (client, endpoint) = match payload {
        Payload::Ip => {
            let pair = pools.claim(prefix, AddressShape::Pair, excluded, &[])?;
            (pair[1], pair[0])
        }
        Payload::Ethernet => {
            // One L2 domain per endpoint: the endpoint holds the first host address.
            let host = pools.claim(prefix, AddressShape::Host, excluded, &[1])?;
            (host[0], AddressPools::host_at(prefix, 1))
        }
    };
    Ok(IpContext {
        src_ip_addrs: vec![client],
        dst_ip_addrs: vec![endpoint],
        src_routes: nse
            .routes
            .iter()
            .map(|p| Route {
                prefix: *p,
                next_hop: Some(endpoint.addr()),
            })
            .collect(),
        dst_routes: vec![],
        excluded_prefixes: excluded.to_vec(),
    })
}

/// One error for all the endpoints that were refused: the specific kind when they agree.
/// The matching endpoints less those already in the chain; a chain left with none would loop.
fn without_chain<'a>(
    matched: Vec<&'a NetworkServiceEndpoint>,
    chain: &[String],
) -> Result<Vec<&'a NetworkServiceEndpoint>, ControllerError> {
    if chain.is_empty() {
        return Ok(matched);
    }
    let rest: Vec<&NetworkServiceEndpoint> = matched
        .iter()
        .filter(|e| !chain.contains(&e.name))
        .copied()
        .collect();
    match (rest.is_empty(), matched.first()) {
        (true, Some(back)) => Err(ControllerError::ChainCycle {
            chain: format!("{} → {}", chain.join(" → "), back.name),
            endpoint: back.name.clone(),
        }),
        _ => Ok(rest),
    }
}

fn classify(service: &str, rejects: Vec<Reject>) -> ControllerError {
    let detail = rejects
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if !rejects.is_empty() && rejects.iter().all(|r| matches!(r, Reject::NoPath(_))) {
        return ControllerError::NoPath {
            service: service.to_string(),
            detail,
        };
    }
    if let Some(Reject::Pool(e)) = rejects.iter().find(|r| matches!(r, Reject::Pool(_))) {
        if rejects.iter().all(|r| matches!(r, Reject::Pool(_))) {
            return ControllerError::PoolExhausted {
                service: service.to_string(),
                source: e.clone(),
            };
        }
    }
    ControllerError::NoCapableEndpoint {
        service: service.to_string(),
        detail,
    }
}
