//! vL3 networks shared across domains: two controllers, each with its own store, federate
//! through each other's REST API with a secret the two domains share.
//!
//! The vL3's *home* domain holds the service (`db-replication`, with `vl3.delegations`
//! giving each federated domain a part of the prefix). A federated domain's routers offer it
//! as `db-replication@home` (upstream's `service@domain`), and its clients request that name.
//! Every round, and whenever its members change, the federated domain's controller sends its
//! side (its live routers and their underlay addresses, its members, the legs it wants between
//! its routers and the home's, with their VNIs and addresses) to the home's controller, and
//! gets the home's side back: the service's address plan (imported as the local service
//! `db-replication@home`, its members taking addresses from the delegated part only), the
//! home's routers and members, and the legs the home could not take (a VNI in use there).
//!
//! Each controller records its own end of each leg as a vL3 peer leg with `vl3.remote` set and
//! wires only that end (a VXLAN from its router to the other domain's router's host); the
//! other domain wires the other end with the same VNI and addresses. Routes and names of the
//! other domain's members ride on those legs, so every member reaches every other, in either
//! domain, by address and by name.
//!
//! A domain that cannot be reached leaves everything as it is: each domain keeps working
//! inside, and the legs to it carry traffic again as soon as the underlay does. Only when no
//! exchange has succeeded for the lease are its legs closed (a domain removed for good).

mod legs;

use std::collections::BTreeMap;
use std::time::Duration;

use meshwire_models::federation::{FedLeg, FedMember, FedRouter, Vl3Exchange};
use meshwire_models::service::split_domain;
use meshwire_models::{NetworkService, Object, Payload, Vl3Role};

use crate::client::{Client, ClientOptions};
use crate::controller::{Controller, Precondition};
use crate::state::State;
use crate::ControllerError;

/// Where a home domain's controller takes exchanges.
pub const EXCHANGE_PATH: &str = "/api/v1/registry/vl3-exchange";
/// A topology node's label naming the underlay address other domains' tunnels reach it on
/// (else its `underlay_address`).
pub const ADDRESS_LABEL: &str = "meshwire.io/federation-address";
/// How long one exchange may take (a home holds one up to [`Federation::hold`]).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a home holds an exchange that brings it nothing new, waiting for a change of its
/// own side to answer with.
pub const HOLD: Duration = Duration::from_secs(3);

/// This controller's domain and the domains it federates with.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    pub domain: String,
    pub peers: BTreeMap<String, Peer>,
    /// How long a domain's side is kept without a successful exchange.
    pub lease: Duration,
    /// A PEM CA certificate to trust for peers' https URLs with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// How long this controller, as a home, holds an exchange that changes nothing
    /// ([`HOLD`]; zero answers at once).
    pub hold: Duration,
}

/// A domain federated with: its controller's REST URL (several for HA, comma-separated) and
/// the secret both domains hold.
#[derive(Clone)]
pub struct Peer {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What this controller holds of another domain's side of one vL3.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub routers: Vec<FedRouter>,
    pub members: Vec<FedMember>,
    /// Home side: the legs the federated domain wants.
    pub legs: Vec<FedLeg>,
    /// Federated side: the legs the home holds its end of.
    pub accepted: Vec<FedLeg>,
    /// Federated side: legs the home refused, by (owner, other) → VNIs not to offer again.
    pub refused: BTreeMap<(String, String), Vec<u32>>,
    /// When the last exchange succeeded.
    pub at_ms: u64,
    /// Federated side: the digest of the home's side last taken.
    pub digest: Option<u64>,
}

/// The views, by (other domain, local service name), and the pairs whose wiring failed.
#[derive(Debug, Default)]
pub(crate) struct Views {
    pub views: BTreeMap<(String, String), View>,
    /// (service, local router, remote router@domain) → (failures, not before ms).
    pub retries: BTreeMap<(String, String, String), (u32, u64)>,
}

/// The underlay address other domains reach `node` on. Only kernel nodes take legs to other
/// domains (an Open vSwitch node's router is not federated: its bridge would need a tunnel
/// port to a host outside the topology).
pub(crate) fn node_address(state: &State, node: &str) -> Option<std::net::IpAddr> {
    let n = state.topology().nodes.get(node)?;
    if n.forwarder != meshwire_models::ForwarderKind::Kernel {
        return None;
    }
    n.labels
        .get(ADDRESS_LABEL)
        .and_then(|a| a.parse().ok())
        .or(n.underlay_address)
}

/// This domain's side of local vL3 `service` (sent as `home_name`): live routers with an
/// address, members by router, and (federated side) the legs it owns towards `peer`.
pub(crate) fn side(
    state: &State,
    me: &str,
    service: &str,
    home_name: &str,
    peer: &str,
    now_ms: u64,
) -> Vl3Exchange {
    let routers: Vec<FedRouter> = crate::vl3::live_routers(state, service, now_ms)
        .into_iter()
        .filter_map(|(name, (node, _))| {
            node_address(state, node).map(|address| FedRouter {
                name: name.to_string(),
                address,
            })
        })
        .collect();
    let mut members = Vec::new();
    let mut legs = Vec::new();
    for c in state.connections() {
        let Some(leg) = c.vl3.as_ref() else { continue };
        if c.network_service != service || c.state.is_final() {
            continue;
        }
        match leg.role {
            Vl3Role::Member => {
                if let Some(a) = c.ip_context.src_ip_addrs.first() {
                    members.push(FedMember {
                        router: c.network_service_endpoint_name.clone(),
                        addr: a.addr(),
                        name: leg.name.clone(),
                    });
                }
            }
            Vl3Role::Peer if leg.remote.as_deref() == Some(peer) => {
                if let Some(l) = legs::as_owned(c) {
                    legs.push(l);
                }
            }
            Vl3Role::Peer => {}
        }
    }
    members.sort();
    legs.sort();
    Vl3Exchange {
        domain: me.to_string(),
        service: home_name.to_string(),
        routers,
        members,
        legs,
        refused: vec![],
        vl3: None,
        digest: None,
        seen: None,
    }
}

/// A digest of a home's side (its routers, members, legs and plan): equal digests, nothing
/// new.
fn digest_of(x: &Vl3Exchange) -> u64 {
    let text =
        serde_json::to_string(&(&x.routers, &x.members, &x.legs, &x.vl3)).unwrap_or_default();
    (legs::digest(&[&text]) & u128::from(u64::MAX)) as u64
}

impl Controller {
    /// Sets this controller's domain and the domains it federates with (before it serves).
    pub fn set_federation(&self, f: Federation) {
        let _ = self.inner.federation.set(f);
    }

    pub(crate) fn federation(&self) -> Option<&Federation> {
        self.inner.federation.get()
    }

    /// This controller's federation settings, if it has any.
    pub fn federation_config(&self) -> Option<Federation> {
        self.federation().cloned()
    }

    /// Tells the federation (the exchanges under way, held or sent) that a vL3 changed here.
    pub(crate) fn federation_wake(&self) {
        self.inner
            .federation_wake
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Exchanges with every federated domain every `interval` (and at once when members
    /// change), until the task is dropped. Only the leader runs it.
    pub fn spawn_federation(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let f = self.federation()?.clone();
        if f.peers.is_empty() {
            return None;
        }
        let ctl = self.clone();
        Some(tokio::spawn(async move {
            ctl.seed_views().await;
            let clients: BTreeMap<String, Client> = f
                .peers
                .iter()
                // A domain given without a URL is only answered.
                .filter(|(_, p)| !p.url.is_empty())
                .filter_map(|(d, p)| {
                    let opts = ClientOptions {
                        token: Some(p.secret.clone()),
                        ca_pem: f.ca_pem.clone(),
                        timeout: Some(EXCHANGE_TIMEOUT),
                    };
                    match Client::new(&p.url, opts) {
                        Ok(c) => Some((d.clone(), c)),
                        Err(e) => {
                            tracing::error!(domain = %d, url = %p.url, error = %e, "cannot federate with this domain");
                            None
                        }
                    }
                })
                .collect();
            let domains = clients.into_iter().map(|(domain, client)| {
                let (ctl, f) = (ctl.clone(), f.clone());
                async move {
                    loop {
                        let started = tokio::time::Instant::now();
                        let ok = ctl.federate_once(&f, &domain, &client).await;
                        // A home that answered holds the next exchange until it has news; one
                        // that failed is asked again after `interval`. Never faster than a
                        // tenth of it.
                        let pause = if ok { interval / 10 } else { interval };
                        tokio::time::sleep_until(started + pause).await;
                    }
                }
            });
            let expiry = async {
                loop {
                    ctl.expire_federated().await;
                    tokio::time::sleep(interval).await;
                }
            };
            tokio::join!(futures::future::join_all(domains), expiry);
        }))
    }

    /// One exchange with `domain` for every vL3 of its this domain's routers offer
    /// (`service@domain`): send our side, import the home's plan, wire our ends. An exchange
    /// the home holds is sent again at once when our side changes. Whether every exchange
    /// was answered.
    pub async fn federate_once(&self, f: &Federation, domain: &str, client: &Client) -> bool {
        let suffix = format!("@{domain}");
        let imported: Vec<String> = {
            let s = self.state();
            let mut names: Vec<String> = s
                .endpoints()
                .iter()
                .flat_map(|e| e.nse.network_service_names.iter())
                .filter(|n| n.ends_with(&suffix))
                .cloned()
                .collect();
            names.sort();
            names.dedup();
            names
        };
        let mut all_ok = true;
        for local in imported {
            let (home_name, _) = split_domain(&local);
            let seen = self.view(domain, &local).await.and_then(|v| v.digest);
            let mut changes = self.inner.federation_wake.subscribe();
            let ours = Vl3Exchange {
                seen,
                ..side(
                    &self.state(),
                    &f.domain,
                    &local,
                    home_name,
                    domain,
                    self.now(),
                )
            };
            let call = client.post::<_, Vl3Exchange>(EXCHANGE_PATH, &ours);
            tokio::pin!(call);
            let answer = loop {
                tokio::select! {
                    r = &mut call => break Some(r),
                    _ = changes.changed() => {
                        // Our side changed while the home held the exchange: send it again.
                        let now = side(&self.state(), &f.domain, &local, home_name, domain, self.now());
                        if (&now.routers, &now.members, &now.legs) != (&ours.routers, &ours.members, &ours.legs) {
                            break None;
                        }
                    }
                }
            };
            let Some(answer) = answer else { continue };
            let theirs = match answer {
                Ok(x) => x,
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(domain, service = %local, error = %e, retry = e.retryable(), "vL3 exchange with the other domain failed; keeping what it said last");
                    continue;
                }
            };
            if let Err(e) = self.import(domain, &local, theirs).await {
                all_ok = false;
                tracing::warn!(domain, service = %local, error = %e, "the other domain's side of the vL3 was not taken");
            }
        }
        all_ok
    }

    /// Takes the home's answer: its plan as local service `local`, its routers and members,
    /// then our ends of the legs.
    async fn import(
        &self,
        domain: &str,
        local: &str,
        theirs: Vl3Exchange,
    ) -> Result<(), ControllerError> {
        theirs
            .validate(None)
            .map_err(|e| ControllerError::Invalid {
                what: format!("vL3 exchange from {domain}"),
                field: e.field,
                rule: e.rule,
            })?;
        let Some(plan) = theirs.vl3.clone() else {
            return Err(ControllerError::Invalid {
                what: format!("vL3 exchange from {domain}"),
                field: "vl3".into(),
                rule: "the home domain sent no address plan".into(),
            });
        };
        let want = NetworkService {
            name: local.to_string(),
            payload: Payload::Ip,
            matches: vec![],
            vl3: Some(plan),
        };
        let have = self.state().service(local).cloned();
        if have.as_ref() != Some(&want) {
            tracing::info!(%domain, service = %local, "vL3 plan imported from its home domain");
            self.put_object(Object::NetworkService(want), Precondition::Any)
                .await?;
        }
        {
            let mut v = self.inner.federated.lock().await;
            let view = v
                .views
                .entry((domain.to_string(), local.to_string()))
                .or_default();
            view.routers = theirs.routers;
            view.members = theirs.members;
            view.digest = theirs.digest;
            view.accepted = theirs.legs;
            // Refusals of routers no longer there are forgotten.
            let routers = &view.routers;
            view.refused
                .retain(|(_, other), _| routers.iter().any(|r| &r.name == other));
            for l in theirs.refused {
                tracing::warn!(%domain, service = %local, owner = %l.owner, other = %l.other, vni = l.vni, why = ?l.why, "the home domain refused a leg; another VNI is offered");
                let avoid = view.refused.entry((l.owner, l.other)).or_default();
                if !avoid.contains(&l.vni) && avoid.len() < 64 {
                    avoid.push(l.vni);
                }
            }
            view.at_ms = self.now();
        }
        self.sync_owned(domain, local).await;
        Ok(())
    }

    /// Home side: checks the caller's secret and side, keeps it, wires our ends of the legs it
    /// wants, and answers with our side.
    pub async fn federation_accept(
        &self,
        secret: Option<&str>,
        theirs: Vl3Exchange,
    ) -> Result<Vl3Exchange, ControllerError> {
        let Some(f) = self.federation() else {
            return Err(ControllerError::Forbidden(
                "this controller federates with no domain (start it with --domain and --federate)"
                    .into(),
            ));
        };
        let known = f.peers.get(&theirs.domain).is_some_and(|p| {
            secret.is_some_and(|s| {
                meshwire_models::secret::constant_time_eq(s.as_bytes(), p.secret.as_bytes())
            })
        });
        if !known {
            tracing::warn!(domain = %theirs.domain, "vL3 exchange refused: unknown domain or wrong secret");
            return Err(ControllerError::Forbidden(format!(
                "domain {:?} is not federated with {} or its secret is wrong",
                theirs.domain, f.domain
            )));
        }
        let service = self
            .state()
            .service(&theirs.service)
            .cloned()
            .ok_or_else(|| ControllerError::UnknownService {
                service: theirs.service.clone(),
            })?;
        let Some(part) = service
            .vl3
            .as_ref()
            .and_then(|v| v.delegations.get(&theirs.domain).copied())
        else {
            return Err(ControllerError::Forbidden(format!(
                "network service {} delegates no part of its vL3 to {} (spec.vl3.delegations)",
                theirs.service, theirs.domain
            )));
        };
        theirs
            .validate(Some(part))
            .map_err(|e| ControllerError::Invalid {
                what: format!("vL3 exchange from {}", theirs.domain),
                field: e.field,
                rule: e.rule,
            })?;
        let domain = theirs.domain.clone();
        let name = theirs.service.clone();
        let seen = theirs.seen;
        // Changes from here on count for the hold below.
        let mut changes = self.inner.federation_wake.subscribe();
        // The caller brought news of its own: answered at once (its lease, and the legs it
        // waits for, are refreshed by the answer).
        let theirs_changed = {
            let mut v = self.inner.federated.lock().await;
            let view = v.views.entry((domain.clone(), name.clone())).or_default();
            let changed = (&view.routers, &view.members, &view.legs)
                != (&theirs.routers, &theirs.members, &theirs.legs);
            view.routers = theirs.routers;
            view.members = theirs.members;
            view.legs = theirs.legs;
            view.at_ms = self.now();
            changed
        };
        let refused = self.sync_home(&domain, &name).await;
        let plan = service.vl3.map(|mut plan| {
            // What the caller needs: the prefix, the zone and its own part.
            plan.domain = Some(plan.zone(&name).to_string());
            plan.members = Some(part);
            plan.delegations.clear();
            plan
        });
        // Nothing new for the caller: held until our side changes, or for the hold.
        let until = tokio::time::Instant::now() + f.hold;
        loop {
            let mut ours = side(&self.state(), &f.domain, &name, &name, &domain, self.now());
            // The legs we hold our end of: the caller routes over those only.
            ours.legs = self
                .state()
                .connections()
                .filter(|c| {
                    c.network_service == name
                        && c.remote_domain() == Some(domain.as_str())
                        && c.state == meshwire_models::ConnectionState::Up
                })
                .filter_map(legs::as_accepted)
                .collect();
            ours.legs.sort();
            ours.vl3 = plan.clone();
            ours.digest = Some(digest_of(&ours));
            ours.refused = refused.clone();
            let news = ours.digest != seen || !ours.refused.is_empty() || theirs_changed;
            if news || tokio::time::Instant::now() >= until {
                return Ok(ours);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Legs restored from the store count from now for the lease: a domain that never
    /// answers again still has them closed when the lease runs out.
    async fn seed_views(&self) {
        let now = self.now();
        let restored: Vec<(String, String)> = self
            .state()
            .connections()
            .filter_map(|c| Some((c.remote_domain()?.to_string(), c.network_service.clone())))
            .collect();
        let mut v = self.inner.federated.lock().await;
        for key in restored {
            v.views.entry(key).or_insert_with(|| View {
                at_ms: now,
                ..Default::default()
            });
        }
    }

    /// Closes the legs to domains no exchange has reached for the lease, and forgets them.
    pub async fn expire_federated(&self) {
        let Some(f) = self.federation() else { return };
        let now = self.now();
        let lease = f.lease.as_millis() as u64;
        let gone: Vec<(String, String)> = {
            let v = self.inner.federated.lock().await;
            v.views
                .iter()
                .filter(|(_, view)| now.saturating_sub(view.at_ms) > lease)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for (domain, service) in gone {
            tracing::warn!(%domain, %service, lease_ms = lease, "no vL3 exchange with the other domain for the lease; closing the legs to it");
            self.inner
                .federated
                .lock()
                .await
                .views
                .remove(&(domain.clone(), service.clone()));
            self.close_federated(&domain, &service, |_| true).await;
        }
    }
}
