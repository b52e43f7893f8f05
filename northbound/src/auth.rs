//! Bearer tokens with roles for the REST API: `viewer` reads, `operator` also changes services,
//! endpoints, topology and connections, `admin` also changes admin objects (devices, endpoints on
//! devices, nodes with an OVSDB remote: see [`crate::policy`]) and endpoints' health. A token
//! bound to a device (`device:` in the token file) is that device's eNSM: it may change only
//! that device's objects. Without a token table the API is open, as on loopback by
//! default; with one, every route but `/healthz` and `/readyz` (probes), the API's description
//! and the operator page's static assets (`/ui`, no data in them) needs a token: none or
//! an unknown one is 401, too small a role 403, both as problem documents. Tokens are compared
//! in constant time and never logged.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// One token: who it is (for logs), its role, and for an eNSM's token the one device it
/// speaks for (the controller also presents that token when it calls the device's eNSM).
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub secret: String,
    pub device: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.device {
            Some(d) => write!(f, "Token({}, {}, device {d})", self.name, self.role),
            None => write!(f, "Token({}, {})", self.name, self.role),
        }
    }
}

impl Token {
    /// The caller this token authenticates.
    pub fn caller(&self) -> crate::policy::Caller {
        crate::policy::Caller {
            name: self.name.clone(),
            role: self.role,
            device: self.device.clone(),
            node: None,
        }
    }
}

/// The token table.
#[derive(Debug, Clone, Default)]
pub struct Tokens(pub Vec<Token>);

pub use meshwire_models::secret::constant_time_eq as same;

impl Tokens {
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let mut found = None;
        for t in &self.0 {
            if same(t.secret.as_bytes(), presented.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }

    /// The secret of the token bound to `device` (what the controller presents to that
    /// device's eNSM, and only to it).
    pub fn device_secret(&self, device: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|t| t.device.as_deref() == Some(device))
            .map(|t| t.secret.as_str())
    }
}

/// The token of an `Authorization: Bearer <token>` header (HTTP or gRPC metadata).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// The role a request needs at the route: reads `viewer`, changes `operator`. Which objects an
/// operator may change is then decided per object ([`crate::policy`]): devices, endpoints on
/// devices and nodes with an OVSDB remote are admin objects whatever route carries them.
pub fn required(method: &Method, path: &str) -> Option<Role> {
    // Probes, and the API's own description (no state in it).
    if path == "/healthz"
        || path == "/readyz"
        || path == "/openapi.json"
        || path.starts_with("/docs")
        || crate::ui::is_asset(path)
        // Another domain's controller: its own secret, checked by the controller.
        || path == meshwire_controller::federation::EXCHANGE_PATH
    {
        return None;
    }
    Some(match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Role::Viewer,
        _ => Role::Operator,
    })
}

fn refuse(status: StatusCode, code: &str, detail: String) -> Response {
    let mut r = Problem::new(status, code, detail).into_response();
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(v) = "Bearer realm=\"meshwire\"".parse() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// Middleware: checks the bearer token against `tokens`.
pub async fn check(
    axum::extract::State(tokens): axum::extract::State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(need) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let mut req = req;
    let presented = bearer(req.headers());
    let Some(presented) = presented else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>)".into(),
        );
    };
    let Some(t) = tokens.find(presented) else {
        tracing::warn!(path = %req.uri().path(), "request with an unknown token refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown token".into(),
        );
    };
    // An eNSM's token counts as an operator at the route; the policy keeps it to its device.
    let role = if t.device.is_some() {
        t.role.max(Role::Operator)
    } else {
        t.role
    };
    if role < need {
        tracing::warn!(token = %t.name, role = %t.role, need = %need, path = %req.uri().path(), "request refused: role too small");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} needs role {need}; token {} has {}",
                req.method(),
                req.uri().path(),
                t.name,
                t.role
            ),
        );
    }
    let caller = t.caller();
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Without a token table every request is the open API's caller (loopback only).
pub async fn open(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(crate::policy::Caller::open());
    next.run(req).await
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for crate::policy::Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        parts
            .extensions
            .get::<crate::policy::Caller>()
            .cloned()
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a bearer token is required (Authorization: Bearer <token>)".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_method_and_route() {
        assert_eq!(required(&Method::GET, "/healthz"), None);
        assert_eq!(required(&Method::GET, "/metrics"), Some(Role::Viewer));
        assert_eq!(
            required(&Method::GET, "/api/v1/connections"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/connections"),
            Some(Role::Operator)
        );
        assert_eq!(
            required(&Method::DELETE, "/api/v1/connections/x"),
            Some(Role::Operator)
        );
        // Admin objects are decided per object (policy), whatever the route.
        assert_eq!(
            required(&Method::POST, "/api/v1/registry/objects"),
            Some(Role::Operator)
        );
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn tokens_match_exactly_and_print_no_secret() {
        let t = Tokens(vec![Token {
            name: "oss".into(),
            role: Role::Operator,
            secret: "s3cret-token".into(),
            device: None,
        }]);
        assert_eq!(t.find("s3cret-token").map(|t| t.role), Some(Role::Operator));
        assert!(t.find("s3cret-toke").is_none() && t.find("s3cret-token ").is_none());
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
