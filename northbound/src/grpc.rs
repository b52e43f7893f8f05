//! The NSM v1 gRPC API, wire-compatible with the published `networkservicemesh/api`
//! (Apache-2.0): `networkservice.NetworkService` (Request, Close), `connection.MonitorConnection`
//! and the registry's `NetworkServiceRegistry` and `NetworkServiceEndpointRegistry` (Register,
//! Find with watch, Unregister). Our `.proto` files (`northbound/proto/`) keep upstream's
//! packages, message names and field numbers, so existing NSM clients and endpoints talk to
//! Meshwire unchanged.
//!
//! Mapping to Meshwire's model:
//! - A request names the client's node in the label `nodeName` (upstream's well-known label,
//!   also the one `{{.nodeName}}` templates use); the first path segment's name, when set, is
//!   the client workload (its namespace in labs).
//! - Mechanism preferences map by type (`KERNEL`, `VXLAN`, `GRE`, `MPLS`, `VLAN`, `MEMIF`); a
//!   kernel preference's `name` parameter is the client's interface name.
//! - A request carrying the id of a live connection is a refresh: the connection is returned.
//! - An endpoint registered over gRPC gives its node as `nodeName` in its service labels
//!   (and optionally `netns`); it accepts kernel and VXLAN.

// tonic's handlers return `Result<_, tonic::Status>` (176 bytes); our helpers return the same
// so `?` works without boxing and unboxing every error.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use meshwire_controller::{ConnectionFilter, Controller, ControllerError, Event};
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, Labels, Mechanism, MechanismKind,
    NetworkService as MwService, NetworkServiceEndpoint as MwEndpoint, Object, ObjectKey,
    ObjectKind,
};
use tonic::{Request, Response, Status};

/// Generated from `northbound/proto/`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    pub mod connectioncontext {
        tonic::include_proto!("connectioncontext");
    }
    pub mod connection {
        tonic::include_proto!("connection");
    }
    pub mod networkservice {
        tonic::include_proto!("networkservice");
    }
    pub mod registry {
        tonic::include_proto!("registry");
    }
}

use pb::connection as c;
use pb::connectioncontext as cc;
use pb::networkservice as ns;
use pb::registry as reg;

/// The gRPC services over one controller.
#[derive(Clone)]
pub struct Nsm {
    ctl: Controller,
    streams: Arc<crate::streams::Streams>,
}

impl Nsm {
    /// A permit for one more long-lived stream.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.streams.admit().ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{} streams are open, the most this controller serves; retry later",
                self.streams.max()
            ))
        })
    }
}

/// The router serving all four services, open.
pub fn router(ctl: Controller) -> GrpcRouter {
    router_with(ctl, None)
}

/// The router type: the four services behind [`GrpcAuth`].
pub type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<GrpcAuth, tower::layer::util::Identity>,
>;

/// The router serving all four services; with `tokens`, every call needs
/// `authorization: Bearer <token>` metadata with the role the method needs.
pub fn router_with(ctl: Controller, tokens: Option<Arc<crate::auth::Tokens>>) -> GrpcRouter {
    router_with_streams(
        ctl,
        tokens,
        crate::streams::Streams::new(crate::streams::DEFAULT_MAX_STREAMS, None),
    )
}

/// As [`router_with`], with the stream bound and shutdown shared with the REST API.
pub fn router_with_streams(
    ctl: Controller,
    tokens: Option<Arc<crate::auth::Tokens>>,
    streams: Arc<crate::streams::Streams>,
) -> GrpcRouter {
    build(tonic::transport::Server::builder(), ctl, tokens, streams)
}

/// How the gRPC API is served beyond its controller.
#[derive(Default)]
pub struct GrpcOptions {
    /// Bearer tokens with roles; `None` leaves the API open.
    pub tokens: Option<Arc<crate::auth::Tokens>>,
    /// The stream bound and shutdown shared with the REST API (by default its own).
    pub streams: Option<Arc<crate::streams::Streams>>,
    /// Serve over TLS (HTTP/2 with ALPN `h2`) with this certificate and key.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The router with `opts`; fails only on a TLS configuration rustls will not take.
pub fn router_with_options(
    ctl: Controller,
    opts: GrpcOptions,
) -> Result<GrpcRouter, tonic::transport::Error> {
    let streams = opts
        .streams
        .unwrap_or_else(|| crate::streams::Streams::new(crate::streams::DEFAULT_MAX_STREAMS, None));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = opts.tls {
        server = server.tls_config(tls)?;
    }
    Ok(build(server, ctl, opts.tokens, streams))
}

fn build(
    server: tonic::transport::Server,
    ctl: Controller,
    tokens: Option<Arc<crate::auth::Tokens>>,
    streams: Arc<crate::streams::Streams>,
) -> GrpcRouter {
    let nsm = Nsm { ctl, streams };
    server
        .layer(GrpcAuth { tokens })
        .add_service(ns::network_service_server::NetworkServiceServer::new(nsm.clone()))
        .add_service(c::monitor_connection_server::MonitorConnectionServer::new(nsm.clone()))
        .add_service(reg::network_service_registry_server::NetworkServiceRegistryServer::new(
            nsm.clone(),
        ))
        .add_service(
            reg::network_service_endpoint_registry_server::NetworkServiceEndpointRegistryServer::new(
                nsm,
            ),
        )
}

/// The role a gRPC method needs: finding and monitoring read; requests, closes and
/// registrations change.
pub fn grpc_role(path: &str) -> crate::auth::Role {
    use crate::auth::Role;
    let method = path.rsplit('/').next().unwrap_or("");
    match method {
        "Find" | "MonitorConnections" => Role::Viewer,
        _ => Role::Operator,
    }
}

/// Bearer-token check for gRPC calls (a tower layer in front of the services).
#[derive(Clone)]
pub struct GrpcAuth {
    tokens: Option<Arc<crate::auth::Tokens>>,
}

impl<S> tower::Layer<S> for GrpcAuth {
    type Service = GrpcAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuthService<S> {
    inner: S,
    tokens: Option<Arc<crate::auth::Tokens>>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for GrpcAuthService<S>
where
    S: tower::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::BoxBody>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn futures::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let mut caller = crate::policy::Caller::open();
        if let Some(tokens) = &self.tokens {
            let need = grpc_role(req.uri().path());
            let presented = crate::auth::bearer(req.headers());
            let refusal = match presented.map(|p| tokens.find(p)) {
                None => Some(Status::unauthenticated(
                    "a bearer token is required (metadata authorization: Bearer <token>)",
                )),
                Some(None) => {
                    tracing::warn!(method = %req.uri().path(), "gRPC call with an unknown token refused");
                    Some(Status::unauthenticated("unknown token"))
                }
                Some(Some(t)) if t.role < need && t.device.is_none() => {
                    tracing::warn!(token = %t.name, role = %t.role, %need, method = %req.uri().path(), "gRPC call refused: role too small");
                    Some(Status::permission_denied(format!(
                        "{} needs role {need}; token {} has {}",
                        req.uri().path(),
                        t.name,
                        t.role
                    )))
                }
                Some(Some(t)) => {
                    caller = t.caller();
                    None
                }
            };
            if let Some(status) = refusal {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        req.extensions_mut().insert(caller);
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Box::pin(inner.call(req))
    }
}

/// The caller [`GrpcAuth`] authenticated (it is in every request it passes on).
fn caller_of<T>(req: &Request<T>) -> Result<crate::policy::Caller, Status> {
    req.extensions()
        .get::<crate::policy::Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The one mapping from controller errors to gRPC statuses (the REST side's is
/// [`crate::Problem`]'s `From`). Store and record details stay in the log.
fn status(e: ControllerError) -> Status {
    use ControllerError as E;
    match &e {
        E::Store(_) | E::Corrupt { .. } => {
            tracing::error!(error = %e, code = e.code(), "gRPC call failed");
            let p = crate::Problem::from(e);
            if p.status == 503 {
                Status::unavailable(p.detail)
            } else {
                Status::internal(p.detail)
            }
        }
        E::UnknownService { .. }
        | E::UnknownConnection { .. }
        | E::NotFound { .. }
        | E::UnknownNode { .. } => Status::not_found(e.to_string()),
        E::NoEndpoint { .. }
        | E::NoMatchingEndpoint { .. }
        | E::NoPath { .. }
        | E::NoCapableEndpoint { .. }
        | E::InUse { .. }
        | E::PreconditionFailed { .. } => Status::failed_precondition(e.to_string()),
        E::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        E::NoCapacity { .. } | E::PoolExhausted { .. } => Status::resource_exhausted(e.to_string()),
        E::Invalid { .. } => Status::invalid_argument(e.to_string()),
        E::Forbidden(_) => Status::permission_denied(e.to_string()),
        E::Driver { .. } | E::Cancelled => Status::unavailable(e.to_string()),
    }
}

fn labels(m: &HashMap<String, String>) -> Labels {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn map(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Upstream's mechanism type names.
fn mech_type(k: MechanismKind) -> &'static str {
    match k {
        MechanismKind::Kernel => "KERNEL",
        MechanismKind::Memif => "MEMIF",
        MechanismKind::Vxlan => "VXLAN",
        MechanismKind::Gre => "GRE",
        MechanismKind::Mpls => "MPLS",
        MechanismKind::Vlan => "VLAN",
        MechanismKind::SriovVf => "VFIO",
    }
}

fn mechanism(m: &Mechanism) -> c::Mechanism {
    let mut p = HashMap::new();
    let local = matches!(m, Mechanism::Kernel { .. } | Mechanism::Memif { .. });
    match m {
        Mechanism::Kernel {
            interface,
            peer_interface,
        } => {
            p.insert("name".into(), interface.clone());
            p.insert("peer_name".into(), peer_interface.clone());
        }
        Mechanism::Memif { socket } => {
            p.insert("socketfile".into(), socket.clone());
        }
        Mechanism::Vxlan {
            vni,
            src_ip,
            dst_ip,
            port,
        } => {
            p.insert("vni".into(), vni.to_string());
            p.insert("src_ip".into(), src_ip.to_string());
            p.insert("dst_ip".into(), dst_ip.to_string());
            p.insert("dst_port".into(), port.to_string());
        }
        Mechanism::Gre {
            key,
            src_ip,
            dst_ip,
        } => {
            p.insert("key".into(), key.to_string());
            p.insert("src_ip".into(), src_ip.to_string());
            p.insert("dst_ip".into(), dst_ip.to_string());
        }
        Mechanism::Mpls {
            label_out,
            label_in,
        } => {
            p.insert("label_out".into(), label_out.to_string());
            p.insert("label_in".into(), label_in.to_string());
        }
        Mechanism::Vlan { id } => {
            p.insert("vlan_id".into(), id.to_string());
        }
        Mechanism::SriovVf { pci_address } => {
            p.insert("pci_address".into(), pci_address.clone());
        }
    }
    c::Mechanism {
        cls: if local { "LOCAL" } else { "REMOTE" }.into(),
        r#type: mech_type(m.kind()).into(),
        parameters: p,
    }
}

/// A Meshwire connection as an NSM `Connection`.
pub fn to_pb(x: &Connection) -> c::Connection {
    let route = |r: &meshwire_models::Route| cc::Route {
        prefix: r.prefix.to_string(),
        next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
    };
    let ip = &x.ip_context;
    let mut segments: Vec<c::PathSegment> = vec![c::PathSegment {
        name: x.client.workload().to_string(),
        id: x.id.clone(),
        ..Default::default()
    }];
    segments.extend(x.path.iter().map(|p| c::PathSegment {
        name: p.name.clone(),
        id: x.id.clone(),
        ..Default::default()
    }));
    segments.push(c::PathSegment {
        name: x.network_service_endpoint_name.clone(),
        id: x.id.clone(),
        ..Default::default()
    });
    c::Connection {
        id: x.id.clone(),
        network_service: x.network_service.clone(),
        mechanism: x.mechanism().map(mechanism),
        context: Some(cc::ConnectionContext {
            ip_context: Some(cc::IpContext {
                src_ip_addrs: ip.src_ip_addrs.iter().map(|a| a.to_string()).collect(),
                dst_ip_addrs: ip.dst_ip_addrs.iter().map(|a| a.to_string()).collect(),
                src_routes: ip.src_routes.iter().map(route).collect(),
                dst_routes: ip.dst_routes.iter().map(route).collect(),
                excluded_prefixes: ip.excluded_prefixes.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            mtu: x.mtu,
            ..Default::default()
        }),
        labels: map(&x.labels),
        path: Some(c::Path {
            index: 0,
            path_segments: segments,
        }),
        network_service_endpoint_name: x.network_service_endpoint_name.clone(),
        payload: x.payload.to_string(),
        state: match x.state {
            ConnectionState::Up | ConnectionState::Programming | ConnectionState::Requested => {
                c::State::Up as i32
            }
            _ => c::State::Down as i32,
        },
    }
}

/// An NSM request as a Meshwire request.
pub fn from_pb(r: &ns::NetworkServiceRequest) -> Result<ConnectionRequest, Status> {
    let conn = r
        .connection
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("connection: required"))?;
    if conn.network_service.is_empty() {
        return Err(Status::invalid_argument(
            "connection.network_service: required",
        ));
    }
    let node = conn.labels.get("nodeName").cloned().ok_or_else(|| {
        Status::invalid_argument(
            "connection.labels.nodeName: required (the node the client runs on)",
        )
    })?;
    let workload = conn
        .path
        .as_ref()
        .and_then(|p| p.path_segments.first())
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty() && *n != node);
    let mut mechanisms = Vec::new();
    let mut interface = None;
    for m in &r.mechanism_preferences {
        let kind: MechanismKind = m
            .r#type
            .parse()
            .map_err(|e: String| Status::invalid_argument(format!("mechanism_preferences: {e}")))?;
        if kind == MechanismKind::Kernel {
            interface = m.parameters.get("name").cloned().filter(|n| !n.is_empty());
        }
        if !mechanisms.contains(&kind) {
            mechanisms.push(kind);
        }
    }
    let excluded_prefixes = conn
        .context
        .as_ref()
        .and_then(|c| c.ip_context.as_ref())
        .map(|ip| {
            ip.excluded_prefixes
                .iter()
                .map(|p| {
                    p.parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "context.ip_context.excluded_prefixes: {p:?} is not a prefix"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(ConnectionRequest {
        network_service: conn.network_service.clone(),
        client: ClientRef {
            node,
            name: workload,
        },
        labels: labels(&conn.labels),
        mechanisms,
        interface,
        excluded_prefixes,
    })
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream fed by a task through a channel.
fn channel_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> Stream_<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }))
}

#[tonic::async_trait]
impl ns::network_service_server::NetworkService for Nsm {
    async fn request(
        &self,
        req: Request<ns::NetworkServiceRequest>,
    ) -> Result<Response<c::Connection>, Status> {
        let caller = caller_of(&req)?;
        let r = req.into_inner();
        // A refresh of a live connection returns it as it is.
        if let Some(id) = r
            .connection
            .as_ref()
            .map(|c| &c.id)
            .filter(|i| !i.is_empty())
        {
            if let Some(existing) = self.ctl.connection(id) {
                caller.may_close(&existing).map_err(status)?;
                return Ok(Response::new(to_pb(&existing)));
            }
        }
        let mw = from_pb(&r)?;
        caller.may_request(&mw).map_err(status)?;
        let conn = self.ctl.request(mw).await.map_err(status)?;
        Ok(Response::new(to_pb(&conn)))
    }

    async fn close(&self, req: Request<c::Connection>) -> Result<Response<()>, Status> {
        let caller = caller_of(&req)?;
        let id = req.into_inner().id;
        if let Some(existing) = self.ctl.connection(&id) {
            caller.may_close(&existing).map_err(status)?;
        }
        match self.ctl.close(&id).await {
            // Closing what is not there is done (upstream's Close is idempotent).
            Ok(_) | Err(ControllerError::UnknownConnection { .. }) => Ok(Response::new(())),
            Err(e) => Err(status(e)),
        }
    }
}

#[tonic::async_trait]
impl c::monitor_connection_server::MonitorConnection for Nsm {
    type MonitorConnectionsStream = Stream_<c::ConnectionEvent>;

    async fn monitor_connections(
        &self,
        req: Request<c::MonitorScopeSelector>,
    ) -> Result<Response<Self::MonitorConnectionsStream>, Status> {
        let permit = self.admit()?;
        let scope = req.into_inner();
        let wanted = move |x: &Connection| {
            scope.network_services.is_empty() || scope.network_services.contains(&x.network_service)
        };
        let mut events = self.ctl.subscribe();
        let initial: Vec<Connection> = self
            .ctl
            .connections(&ConnectionFilter::default())
            .into_iter()
            .filter(|x| wanted(x))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let ctl = self.ctl.clone();
        let stopping = self.streams.stopping();
        let feed = async move {
            // The initial state in pages (one message of every connection passes gRPC's 4 MiB
            // at a few thousand): the first is INITIAL_STATE_TRANSFER, the rest UPDATEs.
            let mut kind = c::ConnectionEventType::InitialStateTransfer;
            let mut pages = initial.chunks(crate::streams::INITIAL_PAGE).peekable();
            if pages.peek().is_none() {
                let first = c::ConnectionEvent {
                    r#type: kind as i32,
                    connections: HashMap::new(),
                };
                if tx.send(Ok(first)).await.is_err() {
                    return;
                }
            }
            for page in pages {
                let ev = c::ConnectionEvent {
                    r#type: kind as i32,
                    connections: page.iter().map(|x| (x.id.clone(), to_pb(x))).collect(),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                kind = c::ConnectionEventType::Update;
            }
            drop(initial);
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Tell the watcher rather than skip: it monitors again and gets the
                        // whole state (as SSE's reset).
                        tracing::warn!(missed = n, "connection monitor fell behind; ending it");
                        let _ = tx
                            .send(Err(Status::aborted(format!(
                                "this monitor fell behind by {n} events; monitor again for the whole state"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                };
                let Event::Connection { id, state, .. } = ev else {
                    continue;
                };
                let (kind, conn) = match ctl.connection(&id) {
                    Some(x) if !state.is_final() => (c::ConnectionEventType::Update, x),
                    _ => {
                        // Closed: the id is what clients key on.
                        let gone = c::Connection {
                            id: id.clone(),
                            state: c::State::Down as i32,
                            ..Default::default()
                        };
                        if tx
                            .send(Ok(c::ConnectionEvent {
                                r#type: c::ConnectionEventType::Delete as i32,
                                connections: HashMap::from([(id, gone)]),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                };
                if !wanted(&conn) {
                    continue;
                }
                let ev = c::ConnectionEvent {
                    r#type: kind as i32,
                    connections: HashMap::from([(id, to_pb(&conn))]),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stopping => {}
                _ = feed => {}
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }
}

// ---- registry ------------------------------------------------------------------------------

fn service_to_pb(s: &MwService) -> reg::NetworkService {
    reg::NetworkService {
        name: s.name.clone(),
        payload: s.payload.to_string(),
        matches: s
            .matches
            .iter()
            .map(|m| reg::Match {
                source_selector: map(&m.source_selector),
                routes: m
                    .routes
                    .iter()
                    .map(|d| reg::Destination {
                        destination_selector: map(&d.destination_selector),
                        weight: d.weight.unwrap_or(0),
                    })
                    .collect(),
                fallthrough: m.fallthrough,
                metadata: (!m.labels.is_empty()).then(|| reg::Metadata {
                    labels: map(&m.labels),
                }),
            })
            .collect(),
        path_ids: vec![],
    }
}

fn service_from_pb(s: &reg::NetworkService) -> Result<MwService, Status> {
    if s.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    let payload = match s.payload.to_ascii_uppercase().as_str() {
        "" | "IP" => meshwire_models::Payload::Ip,
        "ETHERNET" => meshwire_models::Payload::Ethernet,
        other => {
            return Err(Status::invalid_argument(format!(
                "payload: {other:?} is not IP or ETHERNET"
            )))
        }
    };
    Ok(MwService {
        name: s.name.clone(),
        payload,
        matches: s
            .matches
            .iter()
            .map(|m| meshwire_models::Match {
                source_selector: labels(&m.source_selector),
                routes: m
                    .routes
                    .iter()
                    .map(|d| meshwire_models::Destination {
                        destination_selector: labels(&d.destination_selector),
                        weight: (d.weight > 0).then_some(d.weight),
                    })
                    .collect(),
                fallthrough: m.fallthrough,
                labels: m
                    .metadata
                    .as_ref()
                    .map(|md| labels(&md.labels))
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn endpoint_to_pb(e: &MwEndpoint) -> reg::NetworkServiceEndpoint {
    let mut labels: HashMap<String, reg::NetworkServiceLabels> = e
        .network_service_labels
        .iter()
        .map(|(s, l)| (s.clone(), reg::NetworkServiceLabels { labels: map(l) }))
        .collect();
    // Where it lives, in the labels upstream clients can read.
    for s in &e.network_service_names {
        let l = labels.entry(s.clone()).or_default();
        l.labels
            .entry("nodeName".into())
            .or_insert_with(|| e.location.vertex().to_string());
    }
    reg::NetworkServiceEndpoint {
        name: e.name.clone(),
        network_service_names: e.network_service_names.clone(),
        network_service_labels: labels,
        url: e.url.clone().unwrap_or_default(),
        expiration_time: e.expires_at_ms.map(timestamp_ms),
        initial_registration_time: None,
        path_ids: vec![],
    }
}

fn endpoint_from_pb(e: &reg::NetworkServiceEndpoint) -> Result<MwEndpoint, Status> {
    if e.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    if e.network_service_names.is_empty() {
        return Err(Status::invalid_argument(
            "network_service_names: at least one",
        ));
    }
    let from_labels = |key: &str| {
        e.network_service_labels
            .values()
            .find_map(|l| l.labels.get(key).cloned())
    };
    let node = from_labels("nodeName").ok_or_else(|| {
        Status::invalid_argument(
            "network_service_labels.<service>.labels.nodeName: required (the node the endpoint runs on)",
        )
    })?;
    let expires_at_ms = e
        .expiration_time
        .as_ref()
        .filter(|t| t.seconds != 0 || t.nanos != 0)
        .map(|t| meshwire_models::manifest::timestamp_ms(t.seconds, t.nanos.into()))
        .transpose()
        .map_err(|rule| Status::invalid_argument(format!("expiration_time: {rule}")))?;
    let caps: meshwire_models::Capabilities =
        serde_json::from_value(serde_json::json!({"kernel": {}, "vxlan": {}}))
            .map_err(|err| Status::internal(err.to_string()))?;
    Ok(MwEndpoint {
        name: e.name.clone(),
        network_service_names: e.network_service_names.clone(),
        network_service_labels: e
            .network_service_labels
            .iter()
            .map(|(s, l)| (s.clone(), labels(&l.labels)))
            .collect(),
        url: (!e.url.is_empty()).then(|| e.url.clone()),
        expires_at_ms,
        location: meshwire_models::EndpointLocation::Node {
            node,
            netns: from_labels("netns"),
        },
        mechanisms: caps,
        capacity: None,
        ipam_prefix: None,
        routes: vec![],
        interface: None,
        bridge: None,
    })
}

async fn apply(ctl: &Controller, o: Object) -> Result<(), Status> {
    ctl.apply(meshwire_models::Manifest {
        objects: vec![o],
        warnings: vec![],
    })
    .await
    .map(|_| ())
    .map_err(status)
}

async fn unregister(
    ctl: &Controller,
    caller: &crate::policy::Caller,
    kind: ObjectKind,
    name: &str,
) -> Result<(), Status> {
    let key = ObjectKey {
        kind,
        name: name.to_string(),
    };
    caller.may_delete(ctl, &key).map_err(status)?;
    match ctl.delete(&[key]).await {
        Ok(_) | Err(ControllerError::NotFound { .. }) => Ok(()),
        Err(e) => Err(status(e)),
    }
}

/// Streams `initial`, then (with `watch`) every change of objects of `kind` that `keep`
/// accepts, as `make(object, deleted)`. A watcher that falls behind is told (ABORTED: find
/// again) instead of silently missing changes; the stream ends at shutdown.
fn find_stream<T, F, K>(
    nsm: &Nsm,
    permit: tokio::sync::OwnedSemaphorePermit,
    initial: Vec<T>,
    watch: bool,
    kind: ObjectKind,
    make: F,
    keep: K,
) -> Stream_<T>
where
    T: Send + 'static,
    F: Fn(&Controller, &str, bool) -> Option<T> + Send + 'static,
    K: Fn(&T) -> bool + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut events = nsm.ctl.subscribe();
    let ctl = nsm.ctl.clone();
    let stopping = nsm.streams.stopping();
    let feed = async move {
        for x in initial {
            if tx.send(Ok(x)).await.is_err() {
                return;
            }
        }
        if !watch {
            return;
        }
        let prefix = format!("{kind}/");
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, %kind, "registry watcher fell behind; ending it");
                    let _ = tx
                        .send(Err(Status::aborted(format!(
                            "this watch fell behind by {n} events; find again for the whole registry"
                        ))))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            let Event::Object { key, change } = ev else {
                continue;
            };
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(x) = make(&ctl, name, change == "deleted") {
                if keep(&x) && tx.send(Ok(x)).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = stopping => {}
            _ = feed => {}
        }
    });
    channel_stream(rx)
}

#[tonic::async_trait]
impl reg::network_service_registry_server::NetworkServiceRegistry for Nsm {
    type FindStream = Stream_<reg::NetworkServiceResponse>;

    async fn register(
        &self,
        req: Request<reg::NetworkService>,
    ) -> Result<Response<reg::NetworkService>, Status> {
        let caller = caller_of(&req)?;
        let s = req.into_inner();
        let mw = service_from_pb(&s)?;
        let obj = Object::NetworkService(mw.clone());
        caller.may_put(&self.ctl, &obj).map_err(status)?;
        apply(&self.ctl, obj).await?;
        Ok(Response::new(service_to_pb(&mw)))
    }

    async fn find(
        &self,
        req: Request<reg::NetworkServiceQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        let permit = self.admit()?;
        let q = req.into_inner();
        let name = q.network_service.map(|s| s.name).unwrap_or_default();
        let matches = move |n: &str| name.is_empty() || name == n;
        let initial: Vec<reg::NetworkServiceResponse> = self
            .ctl
            .services()
            .iter()
            .filter(|s| matches(&s.name))
            .map(|s| reg::NetworkServiceResponse {
                network_service: Some(service_to_pb(s)),
                deleted: false,
            })
            .collect();
        let stream = find_stream(
            self,
            permit,
            initial,
            q.watch,
            ObjectKind::NetworkService,
            |ctl, name, deleted| {
                let s = ctl
                    .services()
                    .into_iter()
                    .find(|s| s.name == name)
                    .map(|s| service_to_pb(&s))
                    .unwrap_or(reg::NetworkService {
                        name: name.to_string(),
                        ..Default::default()
                    });
                Some(reg::NetworkServiceResponse {
                    network_service: Some(s),
                    deleted,
                })
            },
            move |r| r.network_service.as_ref().is_some_and(|s| matches(&s.name)),
        );
        Ok(Response::new(stream))
    }

    async fn unregister(&self, req: Request<reg::NetworkService>) -> Result<Response<()>, Status> {
        let caller = caller_of(&req)?;
        unregister(
            &self.ctl,
            &caller,
            ObjectKind::NetworkService,
            &req.into_inner().name,
        )
        .await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl reg::network_service_endpoint_registry_server::NetworkServiceEndpointRegistry for Nsm {
    type FindStream = Stream_<reg::NetworkServiceEndpointResponse>;

    async fn register(
        &self,
        req: Request<reg::NetworkServiceEndpoint>,
    ) -> Result<Response<reg::NetworkServiceEndpoint>, Status> {
        let caller = caller_of(&req)?;
        let e = req.into_inner();
        let mw = endpoint_from_pb(&e)?;
        let obj = Object::NetworkServiceEndpoint(mw.clone());
        caller.may_write(&obj).map_err(status)?;
        // Replacing a stored admin object (an endpoint on a device) is an admin change.
        caller.may_delete(&self.ctl, &obj.key()).map_err(status)?;
        apply(&self.ctl, obj).await?;
        Ok(Response::new(endpoint_to_pb(&mw)))
    }

    async fn find(
        &self,
        req: Request<reg::NetworkServiceEndpointQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        let permit = self.admit()?;
        let q = req.into_inner();
        let want = q.network_service_endpoint.unwrap_or_default();
        let keep = move |e: &reg::NetworkServiceEndpoint| {
            (want.name.is_empty() || want.name == e.name)
                && (want.network_service_names.is_empty()
                    || want
                        .network_service_names
                        .iter()
                        .any(|s| e.network_service_names.contains(s)))
        };
        let initial: Vec<reg::NetworkServiceEndpointResponse> = self
            .ctl
            .endpoints()
            .iter()
            .map(|v| endpoint_to_pb(&v.endpoint))
            .filter(|e| keep(e))
            .map(|e| reg::NetworkServiceEndpointResponse {
                network_service_endpoint: Some(e),
                deleted: false,
            })
            .collect();
        let keep2 = keep.clone();
        let stream = find_stream(
            self,
            permit,
            initial,
            q.watch,
            ObjectKind::NetworkServiceEndpoint,
            |ctl, name, deleted| {
                let e = ctl
                    .endpoints()
                    .into_iter()
                    .find(|v| v.endpoint.name == name)
                    .map(|v| endpoint_to_pb(&v.endpoint))
                    .unwrap_or(reg::NetworkServiceEndpoint {
                        name: name.to_string(),
                        ..Default::default()
                    });
                Some(reg::NetworkServiceEndpointResponse {
                    network_service_endpoint: Some(e),
                    deleted,
                })
            },
            move |r| r.deleted || r.network_service_endpoint.as_ref().is_some_and(&keep2),
        );
        Ok(Response::new(stream))
    }

    async fn unregister(
        &self,
        req: Request<reg::NetworkServiceEndpoint>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&req)?;
        unregister(
            &self.ctl,
            &caller,
            ObjectKind::NetworkServiceEndpoint,
            &req.into_inner().name,
        )
        .await?;
        Ok(Response::new(()))
    }
}
