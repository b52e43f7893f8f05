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
use meshwire_models::{Connection, Object, ObjectKey, ObjectKind};
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

mod auth;
mod convert;
pub mod forward;

use auth::caller_of;
pub use auth::{grpc_role, GrpcAuth, GrpcAuthService, NodeAuthorizer};
use convert::{endpoint_from_pb, endpoint_to_pb, service_from_pb, service_to_pb, status};
pub use convert::{from_pb, to_pb};

use pb::connection as c;
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
    services(
        server.layer(GrpcAuth {
            tokens,
            nodes: None,
        }),
        nsm,
    )
}

/// The NSM services on the controller's agent listener, where node agents forward their
/// workloads' calls: every call is authenticated by `nodes` and bound to that node (a node
/// requests and closes its own clients' connections and registers its own endpoints only).
/// The agent protocol's own service is added beside them by the caller.
pub fn node_router(
    server: tonic::transport::Server,
    ctl: Controller,
    nodes: NodeAuthorizer,
) -> GrpcRouter {
    let streams = crate::streams::Streams::new(crate::streams::DEFAULT_MAX_STREAMS, None);
    let nsm = Nsm { ctl, streams };
    services(
        server.layer(GrpcAuth {
            tokens: None,
            nodes: Some(nodes),
        }),
        nsm,
    )
}

fn services(
    mut server: tonic::transport::Server<
        tower::layer::util::Stack<GrpcAuth, tower::layer::util::Identity>,
    >,
    nsm: Nsm,
) -> GrpcRouter {
    server
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
        self.streams.spawn(permit, feed);
        Ok(Response::new(channel_stream(rx)))
    }
}

// ---- registry ------------------------------------------------------------------------------

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
    nsm.streams.spawn(permit, feed);
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
        let mut mw = service_from_pb(&s)?;
        // Upstream's registration has no vL3 plan: the one a manifest gave stays.
        mw.vl3 = self
            .ctl
            .services()
            .into_iter()
            .find(|o| o.name == mw.name)
            .and_then(|o| o.vl3);
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
