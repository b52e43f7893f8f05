//! Meshwire's northbound: the REST API over the [`Controller`]. It knows no driver.
//!
//! This is the surface the `meshwire` CLI uses (`/api/v1/manifests`, services, endpoints,
//! topology, connections, resources) plus `/healthz`, `/readyz` and `/api/v1/events` (SSE,
//! resumable). Every error is an RFC 9457
//! `application/problem+json` document with a stable `code`; the mapping from controller errors
//! to HTTP statuses lives in one place, [`Problem::from`].
//!
//! Layers, outermost first: request tracing, then a body size limit (manifests and requests are
//! small; a large body is refused before it is read).

pub mod auth;
mod connections;
pub mod events;
pub mod grpc;
pub mod idempotency;
pub mod k8s;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod policy;
mod problem;
pub mod streams;
pub mod tls;
pub mod ui;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use meshwire_controller::Controller;
use meshwire_models::Manifest;
use serde::{Deserialize, Serialize};

use connections::{close_connection, get_connection, list_connections, request_connection};
pub(crate) use problem::{json_body, ApiResult};
pub use problem::{ApiError, Problem, Q};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The REST router over `ctl`, open (no tokens).
pub fn router(ctl: Controller) -> Router {
    router_with(ctl, Options::default())
}

/// What the binary adds to the router.
#[derive(Default)]
pub struct Options {
    /// Extra lines for `/metrics` (what only the binary sees, such as the eNSMs' sessions).
    pub extra_metrics: Option<metrics::Extra>,
    /// Bearer tokens with roles; `None` leaves the API open.
    pub tokens: Option<auth::Tokens>,
    /// The bound on long-lived streams and the shutdown that ends them (shared with the gRPC
    /// API); by default 256 streams, ended never.
    pub streams: Option<std::sync::Arc<streams::Streams>>,
}

/// The REST router with `opts`.
pub fn router_with(ctl: Controller, opts: Options) -> Router {
    let log = events::EventLog::start(&ctl, 10_000);
    let streams = opts
        .streams
        .unwrap_or_else(|| streams::Streams::new(streams::DEFAULT_MAX_STREAMS, None));
    let m = metrics::Metrics::new(opts.extra_metrics);
    let tokens = opts.tokens.map(std::sync::Arc::new);
    let scrape = m.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move |State(ctl): State<Controller>| {
                let scrape = scrape.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        scrape.render(&ctl),
                    )
                }
            }),
        )
        .route(
            "/api/v1/events",
            get(
                move |headers: axum::http::HeaderMap, Q(q): Q<EventsQuery>| {
                    let log = log.clone();
                    let streams = streams.clone();
                    async move {
                        let from_header = headers
                            .get("last-event-id")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok());
                        events::stream(log, q.since.or(from_header), &streams)
                    }
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/api/v1/manifests",
            post(apply_manifest).delete(delete_manifest),
        )
        .route("/api/v1/endpoints/{name}/status", put(endpoint_status))
        .route("/api/v1/registry/objects", post(register_objects))
        .route(
            meshwire_controller::federation::EXCHANGE_PATH,
            post(federation_exchange),
        )
        .route("/api/v1/topology", get(topology))
        .route("/api/v1/topology/status", get(topology_status))
        .route("/api/v1/resources", get(resources))
        .route(
            "/api/v1/connections",
            get(list_connections).post(request_connection),
        )
        .route(
            "/api/v1/connections/{id}",
            get(get_connection).delete(close_connection),
        );
    let api_doc = openapi::document();
    let router = ui::routes(objects::routes(router))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", api_doc))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-route",
                "no such API path; see /api/v1/...",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            idempotency::Keys::default(),
            idempotency::layer,
        ));
    let router = match tokens {
        Some(t) => router.layer(axum::middleware::from_fn_with_state(t, auth::check)),
        None => router.layer(axum::middleware::from_fn(auth::open)),
    };
    router
        .layer(axum::middleware::from_fn(problems_only))
        .layer(axum::middleware::from_fn_with_state(m, metrics::timed))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctl)
}

/// Every error leaves as a problem document: what axum's own extractors and router answer
/// (a body over the limit, a method the route does not have) is rewritten with its text as the
/// detail.
async fn problems_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        _ => "error",
    };
    let detail = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => format!("request body over {BODY_LIMIT} bytes"),
        (_, true) => status.canonical_reason().unwrap_or("error").to_string(),
        (_, false) => text,
    };
    let mut out = Problem::new(status, code, detail).into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

async fn readyz(State(ctl): State<Controller>) -> ApiResult<&'static str> {
    ctl.ready()
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", e.to_string()))?;
    Ok("ready\n")
}

#[derive(Deserialize)]
struct FileQuery {
    file: Option<String>,
}

fn parse_manifest(q: &FileQuery, body: &Bytes) -> ApiResult<Manifest> {
    let file = q.file.as_deref().unwrap_or("(request body)");
    let text = std::str::from_utf8(body).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-manifest",
            format!("{file}: not UTF-8 text"),
        )
    })?;
    let m = Manifest::parse(file, text).map_err(|e| {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid-manifest", e.to_string());
        p.field = Some(e.field.clone());
        p
    })?;
    if m.objects.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-manifest",
            format!("{file}: no documents"),
        )
        .into());
    }
    Ok(m)
}

#[derive(Serialize)]
struct ApplyResult {
    applied: Vec<meshwire_controller::Applied>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

async fn apply_manifest(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    Q(q): Q<FileQuery>,
    body: Bytes,
) -> ApiResult<Json<ApplyResult>> {
    let m = parse_manifest(&q, &body)?;
    for o in &m.objects {
        caller.may_put(&ctl, o)?;
    }
    let warnings = m.warnings.clone();
    Ok(Json(ApplyResult {
        applied: ctl.apply(m).await?,
        warnings,
    }))
}

async fn delete_manifest(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    Q(q): Q<FileQuery>,
    body: Bytes,
) -> ApiResult<Json<ApplyResult>> {
    let m = parse_manifest(&q, &body)?;
    // Delete in reverse order, so endpoints go before their services and links before nodes.
    let keys: Vec<_> = m.objects.iter().rev().map(|o| o.key()).collect();
    for (o, k) in m.objects.iter().rev().zip(&keys) {
        // Both what the file says and what is stored: either may be the admin object.
        caller.may_write(o)?;
        caller.may_delete(&ctl, k)?;
    }
    Ok(Json(ApplyResult {
        applied: ctl.delete(&keys).await?,
        warnings: vec![],
    }))
}

/// `?since=ID`: resume after event ID (as the `Last-Event-ID` header does).
#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

/// An endpoint withdrawn by its eNSM (device or link down) or restored.
#[derive(serde::Deserialize)]
struct EndpointStatus {
    down: bool,
    #[serde(default)]
    reason: String,
}

async fn endpoint_status(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let s: EndpointStatus = json_body("endpoint status", &body)?;
    caller.may_set_status(&ctl, &name)?;
    let changed = ctl.set_endpoint_down(&name, s.down, &s.reason).await?;
    Ok(Json(
        serde_json::json!({"endpoint": name, "down": s.down, "changed": changed}),
    ))
}

/// Another domain's controller sends its side of a shared vL3 and gets ours: authenticated
/// by the secret the two domains share (its bearer token here), not by the API's tokens.
async fn federation_exchange(
    State(ctl): State<Controller>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<Json<meshwire_models::federation::Vl3Exchange>> {
    let Some(secret) = auth::bearer(&headers) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the secret this domain shares with yours is required (Authorization: Bearer <secret>)",
        )
        .into());
    };
    let theirs: meshwire_models::federation::Vl3Exchange = json_body("vL3 exchange", &body)?;
    Ok(Json(ctl.federation_accept(Some(secret), theirs).await?))
}

/// Registration by eNSMs: objects in the controller's own JSON form.
async fn register_objects(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    body: Bytes,
) -> ApiResult<Json<Vec<meshwire_controller::Applied>>> {
    let objects: Vec<meshwire_models::Object> = json_body("objects", &body)?;
    for o in &objects {
        caller.may_put(&ctl, o)?;
    }
    Ok(Json(
        ctl.apply(meshwire_models::Manifest {
            objects,
            warnings: vec![],
        })
        .await?,
    ))
}

async fn topology(State(ctl): State<Controller>) -> Json<meshwire_models::Topology> {
    Json(ctl.topology())
}

/// Links reported down that the topology still has (a deleted link is no longer news), and
/// how the node agents stand.
async fn topology_status(State(ctl): State<Controller>) -> Json<serde_json::Value> {
    let links = ctl.topology().links;
    let down: std::collections::BTreeMap<String, String> = ctl
        .links_down()
        .into_iter()
        .filter(|(name, _)| links.contains_key(name))
        .collect();
    Json(serde_json::json!({ "linksDown": down, "agents": ctl.agents() }))
}

async fn resources(State(ctl): State<Controller>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "pools": ctl.pool_usage(),
        "connections": ctl.connection_count(),
        "sriov": ctl.sriov_usage(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use meshwire_controller::store::memory::MemoryStore;
    use meshwire_controller::{Config, NullDriver, SystemClock};
    use tower::ServiceExt;

    async fn app() -> Router {
        let ctl = Controller::start(
            Arc::new(MemoryStore::default()),
            Arc::new(NullDriver),
            Arc::new(SystemClock),
            Config::default(),
        )
        .await
        .unwrap();
        router(ctl)
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value, String) {
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            ctype,
        )
    }

    #[tokio::test]
    async fn nb_manifest_request_close_and_problems() {
        let app = app().await;
        let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}}\n";
        let (st, v, _) = call(&app, "POST", "/api/v1/manifests?file=x.yaml", docs).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["applied"].as_array().unwrap().len(), 3);

        let (st, v, ctype) = call(
            &app,
            "POST",
            "/api/v1/manifests?file=bad.yaml",
            "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\n",
        )
        .await;
        assert_eq!(
            (st, ctype.as_str()),
            (StatusCode::BAD_REQUEST, "application/problem+json")
        );
        assert_eq!(v["detail"], "bad.yaml: document 1: metadata.name: required");
        assert_eq!(v["field"], "metadata.name");

        let (_, v, _) = call(
            &app,
            "GET",
            "/api/v1/endpoints?service=s&labelSelector=",
            "",
        )
        .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        let (_, v, _) = call(&app, "GET", "/api/v1/endpoints?labelSelector=app=nope", "").await;
        assert_eq!(v["items"].as_array().unwrap().len(), 0);
        let (st, v, _) = call(&app, "GET", "/api/v1/endpoints?labelSelector==x", "").await;
        assert_eq!(
            (st, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("labelSelector"))
        );

        let (st, c, _) = call(
            &app,
            "POST",
            "/api/v1/connections",
            r#"{"network_service":"s","client":{"node":"n1"}}"#,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        let id = c["id"].as_str().unwrap();
        let (st, list, _) = call(&app, "GET", "/api/v1/connections?state=up&service=s", "").await;
        assert_eq!(
            (st, list["items"].as_array().unwrap().len()),
            (StatusCode::OK, 1)
        );
        let (st, v, _) = call(&app, "GET", "/api/v1/connections?state=sideways", "").await;
        assert_eq!(
            (st, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("state"))
        );

        let (st, v, _) = call(
            &app,
            "POST",
            "/api/v1/connections",
            r#"{"network_service":"nope","client":{"node":"n1"}}"#,
        )
        .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown-service"))
        );
        let (st, v, _) = call(&app, "POST", "/api/v1/connections", "{").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid-request"))
        );

        let (st, _, _) = call(&app, "DELETE", &format!("/api/v1/connections/{id}"), "").await;
        assert_eq!(st, StatusCode::OK);
        let (st, v, _) = call(&app, "DELETE", &format!("/api/v1/connections/{id}"), "").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown-connection"))
        );
    }

    /// Input: names that would leave the namespace directory or make no interface, by REST
    /// request and by every object door. Output: 422 naming the field; nothing stored.
    #[tokio::test]
    async fn nb_hostile_names_are_refused_where_they_enter() {
        let app = app().await;
        let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}}\n";
        let (st, _, _) = call(&app, "POST", "/api/v1/manifests", docs).await;
        assert_eq!(st, StatusCode::OK);
        for (body, field) in [
            (
                r#"{"network_service":"s","client":{"node":"n1","name":"../../proc/1/ns/net"}}"#,
                "client.name",
            ),
            (
                r#"{"network_service":"s","client":{"node":"n1","name":"../netns/other"}}"#,
                "client.name",
            ),
            (
                r#"{"network_service":"s","client":{"node":"n1","name":"w"},"interface":"a/b"}"#,
                "interface",
            ),
            (
                r#"{"network_service":"s","client":{"node":"../n1"}}"#,
                "client.node",
            ),
        ] {
            let (st, v, _) = call(&app, "POST", "/api/v1/connections", body).await;
            assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
            assert_eq!(v["field"], field, "{body}");
        }
        // The registry door (the controller's own JSON) takes the same validator.
        let objects = r#"[{"kind":"NetworkServiceEndpoint","object":{"name":"evil","network_service_names":["s"],"location":{"node":{"node":"n1","netns":"../../proc/1/ns/net"}},"mechanisms":{"kernel":{}}}}]"#;
        let (st, v, _) = call(&app, "POST", "/api/v1/registry/objects", objects).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["field"], "spec.location.netns");
        let (st, _, _) = call(&app, "GET", "/api/v1/endpoints/evil", "").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "nothing stored");
        // A manifest names the field too.
        let node =
            "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n9}\nspec: {netns: ../x}\n";
        let (st, v, _) = call(&app, "POST", "/api/v1/manifests", node).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["field"], "spec.netns");
        let (_, list, _) = call(&app, "GET", "/api/v1/connections", "").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn nb_oversized_body_refused() {
        let app = app().await;
        let big = "#".repeat(BODY_LIMIT + 1);
        let (st, v, ctype) = call(&app, "POST", "/api/v1/manifests", &big).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(v["code"], "body-too-large");
        let (st, v, ctype) = call(&app, "PATCH", "/api/v1/services", "").await;
        assert_eq!(
            (st, ctype.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "application/problem+json")
        );
        assert_eq!(v["code"], "method-not-allowed");
    }
}
