//! Bearer-token check for gRPC calls: a tower layer in front of the services that maps each
//! method to the role it needs and passes the authenticated caller on in the request.

// tonic's handlers return `Result<_, tonic::Status>` (176 bytes); the helpers return the same.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Status};

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

/// Finds the node a presented node token speaks for: `Ok(Some(node))`, `Ok(None)` when node
/// agents attach without credentials (loopback only), or the refusal.
pub type NodeAuthorizer = Arc<dyn Fn(Option<&str>) -> Result<Option<String>, Status> + Send + Sync>;

/// Bearer-token check for gRPC calls (a tower layer in front of the services).
#[derive(Clone)]
pub struct GrpcAuth {
    pub(super) tokens: Option<Arc<crate::auth::Tokens>>,
    /// On the agent listener: node tokens instead, and the caller bound to its node.
    pub(super) nodes: Option<NodeAuthorizer>,
}

impl<S> tower::Layer<S> for GrpcAuth {
    type Service = GrpcAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthService {
            inner,
            tokens: self.tokens.clone(),
            nodes: self.nodes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuthService<S> {
    inner: S,
    tokens: Option<Arc<crate::auth::Tokens>>,
    nodes: Option<NodeAuthorizer>,
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
        if let Some(nodes) = &self.nodes {
            match nodes(crate::auth::bearer(req.headers())) {
                Ok(Some(node)) => caller = crate::policy::Caller::node(&node),
                Ok(None) => {}
                Err(status) => {
                    tracing::warn!(method = %req.uri().path(), error = %status.message(), "node call refused");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        } else if let Some(tokens) = &self.tokens {
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
pub(super) fn caller_of<T>(req: &Request<T>) -> Result<crate::policy::Caller, Status> {
    req.extensions()
        .get::<crate::policy::Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}
