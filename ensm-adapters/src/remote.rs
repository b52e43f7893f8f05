//! An eNSM in its own process (`meshwire ensm --device FILE --controller URL`), for a device in
//! another site. NSM's shape: an endpoint registers with a URL, and the mesh calls that URL for
//! the connections routed to it.
//!
//! ```text
//!  meshwire ensm ── register Device + NSEs (url = our address) ──▶ controller REST
//!        ▲          endpoint down / up                        ──▶ PUT /api/v1/endpoints/{n}/status
//!        │
//!  controller's Dataplanes ── POST /ensm/v1/converge (a Desired as JSON → a Report) ──┘
//!        (a RemoteEnsm, found from the endpoint's url)
//! ```
//! The wire format is the driver boundary itself: the controller's `Desired` (a versioned delta
//! or full set) in, its `Report` out, as JSON. Errors come back as 502 carrying the typed
//! `DriverError`, so the request fails exactly as in process. Its events (endpoints withdrawn
//! and restored) reach the controller through the registrar's endpoint status calls.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use meshwire_controller::client::{Client, ClientError, ClientOptions};
use meshwire_controller::driver::{Desired, Driver, DriverError, Failure, Report, Update};
use meshwire_models::secret::constant_time_eq as same;
use meshwire_models::Object;

use crate::ensm::{Ensm, Registrar, RegistrarError};

/// How long reaching a remote eNSM (or the controller) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one call to a remote eNSM may take, its device transaction included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The routes a remote eNSM serves, open (loopback only).
pub fn router(ensm: Ensm) -> Router {
    router_with_token(ensm, None)
}

/// The routes a remote eNSM serves; with `token`, every call must carry
/// `Authorization: Bearer <token>` (the controller's `MESHWIRE_ENSM_TOKEN`), else 401.
pub fn router_with_token(ensm: Ensm, token: Option<String>) -> Router {
    let r = Router::new()
        .route("/ensm/v1/converge", post(converge))
        .route("/ensm/v1/status", get(status))
        .with_state(ensm);
    match token {
        Some(t) => r.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let ok = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|p| same(p.trim().as_bytes(), t.as_bytes()));
                async move {
                    if ok {
                        next.run(req).await
                    } else {
                        tracing::warn!(path = %req.uri().path(), "eNSM call without the right token refused");
                        axum::response::IntoResponse::into_response((
                            StatusCode::UNAUTHORIZED,
                            "this eNSM needs Authorization: Bearer <MESHWIRE_ENSM_TOKEN>",
                        ))
                    }
                }
            },
        )),
        None => r,
    }
}

type Reply<T> = Result<Json<T>, (StatusCode, String)>;

/// The eNSM's error whole (its kind and the device's own words), as JSON: the controller's
/// side reads it back typed.
fn refused(e: DriverError) -> (StatusCode, String) {
    let body = serde_json::to_string(&e).unwrap_or_else(|_| e.reason.clone());
    (StatusCode::BAD_GATEWAY, body)
}

async fn converge(State(e): State<Ensm>, Json(d): Json<Desired<'static>>) -> Reply<Report> {
    e.converge(&d).await.map(Json).map_err(refused)
}

async fn status(State(e): State<Ensm>) -> Json<crate::ensm::Status> {
    Json(e.status())
}

/// The controller's side: a device whose eNSM runs elsewhere, reached at `url`.
pub struct RemoteEnsm {
    device: String,
    url: String,
    http: reqwest::Client,
    name: String,
    token: Option<String>,
}

impl RemoteEnsm {
    /// The eNSM of `device` at `url`; `token` is sent as the bearer token of every call.
    pub fn new(device: &str, url: &str, token: Option<String>) -> RemoteEnsm {
        RemoteEnsm {
            token,
            device: device.to_string(),
            url: url.trim_end_matches('/').to_string(),
            // A device transaction may take a confirmed commit's while; reaching the eNSM
            // may not: a dead eNSM costs one connect timeout, not a minute, per call.
            http: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            name: format!("ensm:{device}@{url}"),
        }
    }

    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        target: &str,
        body: &B,
    ) -> Result<T, DriverError> {
        let err = |reason: String| DriverError::new(self.name.clone(), target.to_string(), reason);
        let mut rb = self.http.post(format!("{}/ensm/v1/{op}", self.url));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.json(body).send().await.map_err(|e| {
            err(format!("eNSM of device {} unreachable: {e}", self.device)).with(
                Failure::Unreachable {
                    peer: format!("the eNSM of device {} at {}", self.device, self.url),
                },
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            // The eNSM's typed error when it sent one; otherwise its words, refused by it.
            return Err(match serde_json::from_str::<DriverError>(&text) {
                Ok(remote) => err(remote.reason).with(remote.failure),
                Err(_) => err(format!("{status}: {}", text.trim())).with(Failure::Refused {
                    by: format!("the eNSM of device {}", self.device),
                    peer_error: status.to_string(),
                }),
            });
        }
        resp.json()
            .await
            .map_err(|e| err(format!("unreadable answer: {e}")))
    }
}

#[async_trait]
impl Driver for RemoteEnsm {
    fn name(&self) -> &str {
        &self.name
    }
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        let target = match &desired.update {
            Update::Delta { upsert, remove } => {
                let ids: Vec<&str> = remove
                    .iter()
                    .chain(upsert.iter())
                    .map(|c| c.id.as_str())
                    .collect();
                format!("connection {}", ids.join(","))
            }
            Update::Full { .. } => format!("device {}", self.device),
        };
        self.call("converge", &target, desired).await
    }
}

/// Registration with a controller over its REST API (the northbound's own client).
pub struct RestRegistrar {
    api: Client,
}

impl RestRegistrar {
    /// `token`: a bearer token (role admin, or the device's own) when the controller requires
    /// one.
    pub fn new(
        controller: &str,
        token: Option<String>,
    ) -> Result<Arc<RestRegistrar>, RegistrarError> {
        let api = Client::new(
            controller,
            ClientOptions {
                token,
                ca_pem: None,
                timeout: Some(Duration::from_secs(30)),
            },
        )
        .map_err(|e| RegistrarError::Refused {
            what: "registrar".into(),
            code: "client".into(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(RestRegistrar { api }))
    }

    fn typed(&self, what: &str, e: ClientError) -> RegistrarError {
        match e {
            ClientError::Refused {
                status,
                code,
                detail,
            } if status < 500 => RegistrarError::Refused {
                what: what.to_string(),
                code,
                reason: detail,
            },
            e => RegistrarError::Unreachable {
                what: what.to_string(),
                controller: self.api.base().to_string(),
                reason: e.to_string(),
            },
        }
    }
}

#[async_trait]
impl Registrar for RestRegistrar {
    async fn register(&self, objects: Vec<Object>) -> Result<(), RegistrarError> {
        self.api
            .post::<_, serde_json::Value>("/api/v1/registry/objects", &objects)
            .await
            .map(drop)
            .map_err(|e| self.typed("register", e))
    }
    async fn set_endpoint_down(
        &self,
        endpoint: &str,
        down: bool,
        reason: &str,
    ) -> Result<(), RegistrarError> {
        self.api
            .put::<_, serde_json::Value>(
                &format!("/api/v1/endpoints/{endpoint}/status"),
                &serde_json::json!({"down": down, "reason": reason}),
            )
            .await
            .map(drop)
            .map_err(|e| self.typed(&format!("endpoint {endpoint} status"), e))
    }
}
