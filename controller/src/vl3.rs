//! The router mesh of each vL3 network service. Every live endpoint of a vL3 service is a
//! virtual router; every pair of routers is joined by one *peer* leg, a connection the
//! controller requests itself (the router named first asks, pinned to the other), negotiated
//! and wired as any connection (a veth on one host, a tunnel across hosts). Each peer leg
//! carries, on each side, a `/32` route to every member behind the other side, via the other
//! side's address on the leg, and the members' names for the routers' DNS.
//!
//! [`plan`] compares what the records hold with what the endpoints and members call for and
//! says what to do (pure); [`Controller::vl3_sync`] does it, after each member's request,
//! close or heal and in every reconcile round. Adding or removing a router only adds or
//! closes its own peer legs and updates the routes of the others: members' legs are never
//! touched.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, EndpointLocation, Labels, Route,
    Vl3Member, Vl3Role,
};

use crate::controller::Controller;
use crate::state::State;

/// The label on a peer leg naming the router that asked (its client side).
pub const ROUTER_LABEL: &str = "meshwire.io/vl3-router";

/// Pairs of routers (service, from, to) whose joining failed: (failures, not before, ms).
/// Bounded by the pairs of live routers: a pair joined or no longer planned is forgotten.
pub type Retries = BTreeMap<(String, String, String), (u32, u64)>;

/// What the mesh needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Join two routers: `from` asks for the service, pinned to `to`.
    Join {
        service: String,
        from: String,
        node: String,
        netns: String,
        to: String,
    },
    /// A peer leg whose routers are not both live any more (or a second one for a pair).
    Close { id: String, why: String },
    /// A peer leg whose routes and names are behind: the record as it should be.
    Update(Box<Connection>),
}

/// What the vL3 services' meshes need at `now_ms`.
pub fn plan(state: &State, now_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    for svc in state.services() {
        plan_service(state, svc, now_ms, &mut steps);
    }
    steps
}

/// [`plan`] for one service.
fn plan_service(
    state: &State,
    svc: &meshwire_models::NetworkService,
    now_ms: u64,
    steps: &mut Vec<Step>,
) {
    if svc.vl3.is_none() {
        // No longer a vL3 (its spec changed): its routers' legs go.
        for c in state.connections() {
            let peer = c.vl3.as_ref().is_some_and(|v| v.role == Vl3Role::Peer);
            if peer && c.network_service == svc.name && !c.state.is_final() {
                steps.push(Step::Close {
                    id: c.id.clone(),
                    why: format!("{} is no longer a vL3", svc.name),
                });
            }
        }
        return;
    }
    let routers = live_routers(state, &svc.name, now_ms);
    let mut members: BTreeMap<&str, Vec<Vl3Member>> = BTreeMap::new();
    let mut peers: Vec<&Connection> = Vec::new();
    for c in state.connections() {
        let Some(leg) = c.vl3.as_ref().filter(|_| c.network_service == svc.name) else {
            continue;
        };
        if c.state.is_final() {
            continue;
        }
        match leg.role {
            Vl3Role::Member => {
                if let Some(a) = c.ip_context.src_ip_addrs.first() {
                    members
                        .entry(c.network_service_endpoint_name.as_str())
                        .or_default()
                        .push(Vl3Member {
                            addr: a.addr(),
                            name: leg.name.clone(),
                        });
                }
            }
            // Legs to another domain's routers are the federation's (crate::federation).
            Vl3Role::Peer if leg.remote.is_some() => {}
            Vl3Role::Peer => peers.push(c),
        }
    }
    for m in members.values_mut() {
        m.sort();
    }
    let mut joined: BTreeSet<(&str, &str)> = BTreeSet::new();
    for p in peers {
        let from = p.labels.get(ROUTER_LABEL).map(String::as_str).unwrap_or("");
        let to = p.network_service_endpoint_name.as_str();
        let pair = if from < to { (from, to) } else { (to, from) };
        if !routers.contains_key(from) || !routers.contains_key(to) {
            steps.push(Step::Close {
                id: p.id.clone(),
                why: format!("router {from} or {to} is no longer a live endpoint"),
            });
            continue;
        }
        if !joined.insert(pair) {
            steps.push(Step::Close {
                id: p.id.clone(),
                why: format!("a second peer leg between {from} and {to}"),
            });
            continue;
        }
        if p.state != ConnectionState::Up {
            continue;
        }
        let none = Vec::new();
        let (near, far) = (
            members.get(from).unwrap_or(&none),
            members.get(to).unwrap_or(&none),
        );
        let (mine, theirs) = (
            p.ip_context.src_ip_addrs.first().map(IpNet::addr),
            p.ip_context.dst_ip_addrs.first().map(IpNet::addr),
        );
        let routes = |ms: &[Vl3Member], via| -> Vec<Route> {
            ms.iter()
                .map(|m| Route {
                    prefix: IpNet::from(m.addr),
                    next_hop: via,
                })
                .collect()
        };
        let mut want = p.clone();
        want.ip_context.src_routes = routes(far, theirs);
        want.ip_context.dst_routes = routes(near, mine);
        if let Some(leg) = want.vl3.as_mut() {
            leg.client_members = near.clone();
            leg.endpoint_members = far.clone();
        }
        if want != *p {
            steps.push(Step::Update(Box::new(want)));
        }
    }
    let names: Vec<&str> = routers.keys().copied().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if !joined.contains(&(*a, *b)) {
                let (node, netns) = routers[a];
                steps.push(Step::Join {
                    service: svc.name.clone(),
                    from: a.to_string(),
                    node: node.to_string(),
                    netns: netns.to_string(),
                    to: b.to_string(),
                });
            }
        }
    }
}

/// The live routers of vL3 `service`: its endpoints, up, not lapsed, in a namespace of a
/// node; name → (node, namespace).
pub(crate) fn live_routers<'s>(
    state: &'s State,
    service: &str,
    now_ms: u64,
) -> BTreeMap<&'s str, (&'s str, &'s str)> {
    state
        .endpoints()
        .into_iter()
        .filter(|e| {
            e.nse.offers(service) && !e.down && e.nse.expires_at_ms.is_none_or(|t| t > now_ms)
        })
        .filter_map(|e| match &e.nse.location {
            EndpointLocation::Node {
                node,
                netns: Some(ns),
            } => Some((e.nse.name.as_str(), (node.as_str(), ns.as_str()))),
            _ => None,
        })
        .collect()
}

impl Controller {
    /// Brings every vL3's mesh to what [`plan`] says. Failures are logged and left to the next
    /// round; one sync at a time. `joins`: also join routers (a reconcile round does; a
    /// member's request or close only updates routes, so it is answered without waiting for
    /// new tunnels between routers).
    pub(crate) async fn vl3_sync(&self, joins: bool) {
        // A member came, went or healed: other domains hear of it now.
        self.federation_wake();
        let mut retries = self.inner.vl3.lock().await;
        let now = self.now();
        let steps = plan(&self.state(), now);
        // Forget the pairs no longer to be joined (joined, or a router gone).
        retries.retain(|k, _| {
            !joins
                || steps.iter().any(|s| {
                    matches!(s, Step::Join { service, from, to, .. }
                    if (service, from, to) == (&k.0, &k.1, &k.2))
                })
        });
        for step in steps {
            match step {
                Step::Join {
                    service,
                    from,
                    node,
                    netns,
                    to,
                } => {
                    let key = (service.clone(), from.clone(), to.clone());
                    if !joins || retries.get(&key).is_some_and(|(_, at)| *at > now) {
                        continue;
                    }
                    let req = ConnectionRequest {
                        network_service: service.clone(),
                        client: ClientRef {
                            node,
                            name: Some(netns),
                        },
                        labels: Labels::from([(ROUTER_LABEL.to_string(), from.clone())]),
                        mechanisms: vec![],
                        interface: None,
                        excluded_prefixes: vec![],
                        sriov_token: None,
                    };
                    match self.request_leg(req, None, None, Some(to.clone())).await {
                        Ok(c) => {
                            retries.remove(&key);
                            tracing::info!(%service, %from, %to, connection = %c.id, "vL3 routers joined")
                        }
                        Err(e) => {
                            let failures = retries.get(&key).map_or(0, |r| r.0) + 1;
                            let wait = crate::backoff::Backoff::REQUEUE
                                .delay(failures - 1, now ^ u64::from(failures));
                            retries.insert(key, (failures, now + wait.as_millis() as u64));
                            tracing::warn!(%service, %from, %to, error = %e, failures, retry_in_ms = wait.as_millis() as u64, "joining vL3 routers failed");
                        }
                    }
                }
                Step::Close { id, why } => {
                    tracing::info!(connection = %id, reason = %why, "closing a vL3 peer leg");
                    if let Err(e) = self.close_leg(&id).await {
                        tracing::warn!(connection = %id, error = %e, "closing a vL3 peer leg failed; retrying next round");
                    }
                }
                Step::Update(want) => {
                    if let Err(e) = self.vl3_update(&want.id).await {
                        tracing::warn!(connection = %want.id, error = %e, "updating a vL3 peer leg's routes failed; retrying next round");
                    }
                }
            }
        }
    }

    /// Updates peer leg `id`'s routes and names to what the state calls for now (not what an
    /// earlier plan said: a member may have healed since), on the data plane first, then in
    /// the record: a record ahead of the data plane would never be retried.
    async fn vl3_update(&self, id: &str) -> Result<(), crate::ControllerError> {
        let Some((workload, service)) = self
            .connection(id)
            .map(|c| (c.client.workload().to_string(), c.network_service.clone()))
        else {
            return Ok(());
        };
        let _guard = self.lock_key(&workload, &service).await;
        // Only this service's mesh is looked at again.
        let fresh = {
            let state = self.state();
            let mut steps = Vec::new();
            if let Some(svc) = state.service(&service) {
                plan_service(&state, svc, self.now(), &mut steps);
            }
            steps.into_iter().find_map(|s| match s {
                Step::Update(c) if c.id == id => Some(c),
                _ => None,
            })
        };
        let Some(mut next) = fresh else {
            return Ok(());
        };
        next.updated_at_ms = self.now().max(next.updated_at_ms);
        self.wire(&next)
            .await
            .map_err(|e| crate::ControllerError::Driver {
                connection: next.id.clone(),
                source: Box::new(e),
            })?;
        self.persist(&next).await?;
        let (ip, leg, at) = (
            next.ip_context.clone(),
            next.vl3.clone(),
            next.updated_at_ms,
        );
        self.state().update(id, |c| {
            c.ip_context = ip;
            c.vl3 = leg;
            c.updated_at_ms = at;
        });
        Ok(())
    }
}
