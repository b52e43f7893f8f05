//! The object collections: network services, endpoints, nodes, links and devices, each with
//! create, read, replace, delete and a filtered, paginated list.
//!
//! Every resource is a manifest document (`apiVersion`, `kind`, `metadata`, `spec`), the same
//! shape a manifest file or a Kubernetes custom resource has, so what `GET` returns can be
//! `PUT` back or applied as a file. Conventions follow the Kubernetes API where one exists:
//! - lists are `{"apiVersion": "v1", "kind": "List", "metadata": {"continue": ...}, "items": [...]}`
//!   with `?limit=N&continue=TOKEN`, and filter by `labelSelector` (`k=v`, `k!=v`, `k`, `!k`),
//!   `service` and `node`;
//! - `ETag` on every object; `If-Match` on `PUT` and `DELETE` refuses a stale write with 412;
//!   `If-None-Match: *` makes a `PUT` create-only; `If-None-Match` on `GET` answers 304;
//! - `POST` creates (409 when the name is taken); `PUT` creates or replaces;
//! - fields the controller ignores come back as `Warning` headers.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meshwire_controller::{Controller, Precondition};
use meshwire_models::{EndpointLocation, Labels, Manifest, Object, ObjectKey, ObjectKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{ApiResult, Problem, Q};

/// One collection of the REST API.
#[derive(Debug, Clone, Copy)]
pub struct Collection {
    /// The path segment under `/api/v1/`.
    pub path: &'static str,
    pub kind: ObjectKind,
    pub api_version: &'static str,
}

pub const COLLECTIONS: [Collection; 5] = [
    Collection {
        path: "services",
        kind: ObjectKind::NetworkService,
        api_version: meshwire_models::manifest::NSM_API,
    },
    Collection {
        path: "endpoints",
        kind: ObjectKind::NetworkServiceEndpoint,
        api_version: meshwire_models::manifest::NSM_API,
    },
    Collection {
        path: "nodes",
        kind: ObjectKind::Node,
        api_version: meshwire_models::manifest::MESHWIRE_API,
    },
    Collection {
        path: "links",
        kind: ObjectKind::Link,
        api_version: meshwire_models::manifest::MESHWIRE_API,
    },
    Collection {
        path: "devices",
        kind: ObjectKind::Device,
        api_version: meshwire_models::manifest::MESHWIRE_API,
    },
];

/// Largest page a list returns.
pub const MAX_LIMIT: usize = 1000;

/// The query of every list.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// `k=v,k2!=v2,k3,!k4`: all must hold.
    pub label_selector: Option<String>,
    /// Endpoints offering this service; connections to it.
    pub service: Option<String>,
    /// Endpoints on this node; links with an end on it; connections whose client or path is on it.
    pub node: Option<String>,
    /// Page size (1 to 1000); without it, everything.
    pub limit: Option<usize>,
    /// The `metadata.continue` of the previous page.
    #[serde(rename = "continue")]
    pub cont: Option<String>,
    /// Connections only: requested, programming, up, healing, closed or failed.
    pub state: Option<String>,
    /// Connections only: to this endpoint.
    pub endpoint: Option<String>,
}

impl ListQuery {
    pub fn limit(&self) -> ApiResult<Option<usize>> {
        match self.limit {
            None => Ok(None),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(Some(n)),
            Some(n) => Err(invalid_query(
                "limit",
                format!("{n} is outside 1..={MAX_LIMIT}"),
            )),
        }
    }

    /// The sort key the previous page ended at.
    pub fn after(&self) -> ApiResult<Option<String>> {
        self.cont
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                decode_token(c).ok_or_else(|| {
                    invalid_query(
                        "continue",
                        "not a token this server issued: pass metadata.continue of the previous page",
                    )
                })
            })
            .transpose()
    }
}

pub(crate) fn invalid_query(field: &str, detail: impl Into<String>) -> crate::ApiError {
    let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid-query", detail);
    p.field = Some(field.to_string());
    p.into()
}

/// Opaque page tokens: the last sort key, hex-encoded.
pub(crate) fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_token(t: &str) -> Option<String> {
    if !t.len().is_multiple_of(2) || t.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Cuts a sorted list into a page: items after `after`, at most `limit`, and the next token.
pub(crate) fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    after: Option<String>,
    limit: Option<usize>,
) -> (Vec<T>, Option<String>) {
    let mut items: Vec<T> = match &after {
        Some(a) => items.into_iter().filter(|i| key(i) > *a).collect(),
        None => items,
    };
    match limit {
        Some(n) if items.len() > n => {
            items.truncate(n);
            let next = items.last().map(|i| encode_token(&key(i)));
            (items, next)
        }
        _ => (items, None),
    }
}

/// A label selector: every requirement must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k` and `!k`, comma-separated.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key_ok = |k: &str| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            if !key_ok(key) {
                return Err(format!(
                    "{part:?}: expected key=value, key!=value, key or !key, with keys of letters, digits, -_./"
                ));
            }
            out.push(req);
        }
        Ok(Selector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

pub(crate) fn selector(q: &ListQuery) -> ApiResult<Selector> {
    Selector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| invalid_query("labelSelector", e))
}

/// Whether `obj` passes the list's filters.
fn keep(obj: &Object, sel: &Selector, q: &ListQuery) -> bool {
    let empty = Labels::new();
    match obj {
        Object::NetworkService(_) => sel.matches(&empty),
        Object::NetworkServiceEndpoint(e) => {
            let services: Vec<&String> = match &q.service {
                Some(s) => e.network_service_names.iter().filter(|n| *n == s).collect(),
                None => e.network_service_names.iter().collect(),
            };
            let on_node = match (&q.node, &e.location) {
                (None, _) => true,
                (Some(n), EndpointLocation::Node { node, .. }) => n == node,
                (Some(_), EndpointLocation::Device { .. }) => false,
            };
            on_node
                && services
                    .iter()
                    .any(|s| sel.matches(e.labels_for(s).unwrap_or(&empty)))
        }
        Object::Node(n) => q.node.as_ref().is_none_or(|x| *x == n.name) && sel.matches(&n.labels),
        Object::Device(d) => sel.matches(&d.labels),
        Object::Link(l) => {
            q.node
                .as_ref()
                .is_none_or(|x| *x == l.a.vertex || *x == l.b.vertex)
                && sel.matches(&empty)
        }
    }
}

/// Endpoints' live state by name, read once per answer (not once per item of a list).
type Statuses = std::collections::HashMap<String, Value>;

fn statuses(ctl: &Controller, kind: ObjectKind) -> Statuses {
    if kind != ObjectKind::NetworkServiceEndpoint {
        return Statuses::new();
    }
    ctl.endpoints()
        .into_iter()
        .map(|v| {
            (
                v.endpoint.name,
                json!({ "down": v.down, "connections": v.connections }),
            )
        })
        .collect()
}

/// The resource: the document plus, for endpoints, its `status`.
fn resource(obj: &Object, statuses: &Statuses) -> Value {
    let mut doc = obj.to_document();
    if let Some(s) = statuses.get(&obj.key().name) {
        doc["status"] = s.clone();
    }
    doc
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

/// `If-Match` / `If-None-Match` values: `*` or quoted tags (weak ones compare as strong).
fn tags(headers: &HeaderMap, name: header::HeaderName) -> ApiResult<Option<Vec<String>>> {
    let mut out = Vec::new();
    let mut seen = false;
    for v in headers.get_all(&name) {
        seen = true;
        let v = v.to_str().map_err(|_| {
            let mut p = Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-header",
                format!("{name}: not ASCII"),
            );
            p.field = Some(name.to_string());
            crate::ApiError::from(p)
        })?;
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let t = t.strip_prefix("W/").unwrap_or(t);
            out.push(t.trim_matches('"').to_string());
        }
    }
    if seen && out.is_empty() {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-header",
            format!("{name}: empty; give \"*\" or the quoted ETag read"),
        );
        p.field = Some(name.to_string());
        return Err(p.into());
    }
    Ok(seen.then_some(out))
}

fn precondition(headers: &HeaderMap) -> ApiResult<Precondition> {
    if let Some(none) = tags(headers, header::IF_NONE_MATCH)? {
        if none.iter().any(|t| t == "*") {
            return Ok(Precondition::Absent);
        }
    }
    Ok(match tags(headers, header::IF_MATCH)? {
        None => Precondition::Any,
        Some(t) if t.iter().any(|t| t == "*") => Precondition::Exists,
        Some(t) => Precondition::Matches(t),
    })
}

/// Reads one document of `coll`'s kind from a request body.
fn parse_body(coll: Collection, body: &Bytes) -> ApiResult<(Object, Vec<String>)> {
    let text = std::str::from_utf8(body).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-object",
            "request body: not UTF-8 text",
        )
    })?;
    let m = Manifest::parse("request body", text).map_err(|e| {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-object",
            e.to_string(),
        );
        p.field = Some(e.field.clone());
        crate::ApiError::from(p)
    })?;
    let Manifest {
        mut objects,
        warnings,
    } = m;
    if objects.len() != 1 {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-object",
            format!(
                "request body: expected one {} document, got {}",
                coll.kind,
                objects.len()
            ),
        );
        p.field = Some("kind".into());
        return Err(p.into());
    }
    let obj = objects.remove(0);
    if obj.key().kind != coll.kind {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-object",
            format!(
                "request body is a {}; /api/v1/{} takes {} {}",
                obj.key().kind,
                coll.path,
                coll.api_version,
                coll.kind
            ),
        );
        p.field = Some("kind".into());
        return Err(p.into());
    }
    Ok((obj, warnings))
}

fn object_response(
    ctl: &Controller,
    status: StatusCode,
    coll: Collection,
    obj: &Object,
    warnings: &[String],
) -> Response {
    let statuses = statuses(ctl, obj.key().kind);
    let mut resp = (status, axum::Json(resource(obj, &statuses))).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&quoted(&obj.etag())) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/{}/{}", coll.path, obj.key().name)) {
            h.insert(header::LOCATION, v);
        }
    }
    for w in warnings {
        // RFC 7234 warn-code 299 ("miscellaneous persistent warning"), as Kubernetes sends.
        let text = w.replace('"', "'");
        if let Ok(v) = HeaderValue::from_str(&format!("299 meshwire \"{text}\"")) {
            h.append(header::WARNING, v);
        }
    }
    resp
}

fn key(coll: Collection, name: String) -> ObjectKey {
    ObjectKey {
        kind: coll.kind,
        name,
    }
}

async fn list(ctl: Controller, coll: Collection, q: ListQuery) -> ApiResult<Response> {
    let sel = selector(&q)?;
    let (limit, after) = (q.limit()?, q.after()?);
    let objects: Vec<Object> = ctl
        .objects(coll.kind)
        .into_iter()
        .filter(|o| keep(o, &sel, &q))
        .collect();
    let (items, next) = page(objects, |o| o.key().name, after, limit);
    let statuses = statuses(&ctl, coll.kind);
    let items: Vec<Value> = items.iter().map(|o| resource(o, &statuses)).collect();
    let mut metadata = serde_json::Map::new();
    if let Some(n) = next {
        metadata.insert("continue".into(), Value::String(n));
    }
    Ok(axum::Json(json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": metadata,
        "items": items,
    }))
    .into_response())
}

async fn create(
    ctl: Controller,
    caller: crate::policy::Caller,
    coll: Collection,
    body: Bytes,
) -> ApiResult<Response> {
    let (obj, warnings) = parse_body(coll, &body)?;
    caller.may_put(&ctl, &obj)?;
    ctl.put_object(obj.clone(), Precondition::Absent).await?;
    Ok(object_response(
        &ctl,
        StatusCode::CREATED,
        coll,
        &obj,
        &warnings,
    ))
}

async fn read(
    ctl: Controller,
    coll: Collection,
    name: String,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = key(coll, name);
    let obj = ctl
        .object(&key)
        .ok_or_else(|| meshwire_controller::ControllerError::NotFound {
            key: key.to_string(),
        })?;
    if let Some(t) = tags(&headers, header::IF_NONE_MATCH)? {
        let etag = obj.etag();
        if t.iter().any(|t| *t == etag || t == "*") {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(v) = HeaderValue::from_str(&quoted(&etag)) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            return Ok(resp);
        }
    }
    Ok(object_response(&ctl, StatusCode::OK, coll, &obj, &[]))
}

async fn replace(
    ctl: Controller,
    caller: crate::policy::Caller,
    coll: Collection,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let cond = precondition(&headers)?;
    let (obj, warnings) = parse_body(coll, &body)?;
    caller.may_write(&obj)?;
    // Replacing an admin object is an admin change, whatever the new one is.
    caller.may_delete(&ctl, &obj.key())?;
    if obj.key().name != name {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-object",
            format!(
                "metadata.name {:?} differs from the name in the path, {name:?}",
                obj.key().name
            ),
        );
        p.field = Some("metadata.name".into());
        return Err(p.into());
    }
    let create_only = cond == Precondition::Absent;
    let applied = match ctl.put_object(obj.clone(), cond).await {
        // RFC 9110 13.1.2: a false If-None-Match on a write is 412.
        Err(meshwire_controller::ControllerError::AlreadyExists { key }) if create_only => {
            let mut p = Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                format!("{key} already exists and If-None-Match: * asked to create only"),
            );
            p.field = Some("If-None-Match".into());
            return Err(p.into());
        }
        r => r?,
    };
    let status = if applied.change == meshwire_controller::Change::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(object_response(&ctl, status, coll, &obj, &warnings))
}

async fn remove(
    ctl: Controller,
    caller: crate::policy::Caller,
    coll: Collection,
    name: String,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.may_delete(&ctl, &key(coll, name.clone()))?;
    let cond = match precondition(&headers)? {
        Precondition::Absent => Precondition::Any,
        c => c,
    };
    ctl.delete_object(&key(coll, name), cond).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Adds every collection's routes to `router`.
pub fn routes(mut router: Router<Controller>) -> Router<Controller> {
    for coll in COLLECTIONS {
        router = router
            .route(
                &format!("/api/v1/{}", coll.path),
                get(move |State(ctl): State<Controller>, Q(q): Q<ListQuery>| list(ctl, coll, q))
                    .post(
                        move |State(ctl): State<Controller>,
                              caller: crate::policy::Caller,
                              body: Bytes| create(ctl, caller, coll, body),
                    ),
            )
            .route(
                &format!("/api/v1/{}/{{name}}", coll.path),
                get(
                    move |State(ctl): State<Controller>,
                          Path(name): Path<String>,
                          headers: HeaderMap| read(ctl, coll, name, headers),
                )
                .put(
                    move |State(ctl): State<Controller>,
                          caller: crate::policy::Caller,
                          Path(name): Path<String>,
                          headers: HeaderMap,
                          body: Bytes| {
                        replace(ctl, caller, coll, name, headers, body)
                    },
                )
                .delete(
                    move |State(ctl): State<Controller>,
                          caller: crate::policy::Caller,
                          Path(name): Path<String>,
                          headers: HeaderMap| {
                        remove(ctl, caller, coll, name, headers)
                    },
                ),
            );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let l: Labels = [("app".to_string(), "fw".to_string())].into();
        for (s, want) in [
            ("", true),
            ("app=fw", true),
            ("app==fw", true),
            ("app!=fw", false),
            ("app", true),
            ("!app", false),
            ("zone", false),
            ("!zone", true),
            ("app=fw,zone!=a", true),
        ] {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("a b=c").is_err());
    }

    #[test]
    fn tokens_and_pages() {
        for k in ["", "a", "név/ünï"] {
            assert_eq!(decode_token(&encode_token(k)).as_deref(), Some(k));
        }
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("abc"), None);
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let (p1, t1) = page(names.clone(), |s| s.clone(), None, Some(2));
        assert_eq!((p1.len(), t1.is_some()), (2, true));
        let (p2, _) = page(
            names.clone(),
            |s| s.clone(),
            t1.and_then(|t| decode_token(&t)),
            Some(2),
        );
        assert_eq!(p2, vec!["n2".to_string(), "n3".to_string()]);
        let (all, none) = page(names, |s| s.clone(), None, None);
        assert_eq!((all.len(), none), (5, None));
    }
}
