//! The OpenAPI 3.1 description of the REST API, served at `/openapi.json`, with Swagger UI at
//! `/docs` (its files are built into the binary: no network needed).
//!
//! Schemas come from the code: the document specs are the very structs the manifest parser
//! reads (`meshwire_models::manifest::Raw*Spec`), connections and requests are the models'
//! types. Operations are listed here in one table, the object collections in a loop over
//! [`COLLECTIONS`], so a route added to the router without a line here is caught by the test
//! that walks the router with every documented operation.

use serde_json::Value;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr,
    Required, ResponseBuilder, ResponsesBuilder,
};
use utoipa::ToSchema;

use crate::objects::{Collection, COLLECTIONS};
use meshwire_models::manifest::{
    RawDeviceSpec, RawEndpointSpec, RawLinkSpec, RawNodeSpec, RawServiceSpec,
};
use meshwire_models::{Connection, ConnectionRequest};

/// `metadata` of a document.
#[derive(ToSchema)]
pub struct Metadata {
    /// 1 to 253 letters, digits, `-`, `_` and `.`, starting with a letter or digit.
    pub name: String,
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub labels: Option<Value>,
}

/// `metadata` of a list.
#[derive(ToSchema)]
pub struct ListMeta {
    /// Pass as `?continue=` for the next page; absent on the last page.
    #[schema(rename = "continue")]
    pub cont: Option<String>,
}

/// An endpoint's live state.
#[derive(ToSchema)]
pub struct EndpointStatus {
    /// Withdrawn by its eNSM (device or link down) or by an operator.
    pub down: bool,
    /// Live connections to it.
    pub connections: u32,
}

/// An RFC 9457 problem document. `code` is stable; `field` names the field at fault.
#[derive(ToSchema)]
pub struct ProblemDoc {
    #[schema(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub field: Option<String>,
}

/// A list of connections.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ConnectionList {
    pub api_version: String,
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<Connection>,
}

macro_rules! documents {
    ($($doc:ident, $list:ident, $spec:ty, $status:ty;)*) => {$(
        /// A document of this kind, as manifests, the REST API and custom resources carry it.
        #[derive(ToSchema)]
        #[schema(rename_all = "camelCase")]
        pub struct $doc {
            pub api_version: String,
            pub kind: String,
            pub metadata: Metadata,
            pub spec: Option<$spec>,
            pub status: Option<$status>,
        }

        /// A page of documents of this kind.
        #[derive(ToSchema)]
        #[schema(rename_all = "camelCase")]
        pub struct $list {
            pub api_version: String,
            pub kind: String,
            pub metadata: ListMeta,
            pub items: Vec<$doc>,
        }
    )*};
}

/// No status.
#[derive(ToSchema)]
pub struct NoStatus {}

documents! {
    NetworkServiceDocument, NetworkServiceList, RawServiceSpec, NoStatus;
    NetworkServiceEndpointDocument, NetworkServiceEndpointList, RawEndpointSpec, EndpointStatus;
    NodeDocument, NodeList, RawNodeSpec, NoStatus;
    LinkDocument, LinkList, RawLinkSpec, NoStatus;
    DeviceDocument, DeviceList, RawDeviceSpec, NoStatus;
}

fn schema_names(c: Collection) -> (&'static str, &'static str) {
    use meshwire_models::ObjectKind as K;
    match c.kind {
        K::NetworkService => ("NetworkServiceDocument", "NetworkServiceList"),
        K::NetworkServiceEndpoint => (
            "NetworkServiceEndpointDocument",
            "NetworkServiceEndpointList",
        ),
        K::Node => ("NodeDocument", "NodeList"),
        K::Link => ("LinkDocument", "LinkList"),
        K::Device => ("DeviceDocument", "DeviceList"),
    }
}

fn add<T: ToSchema>(c: ComponentsBuilder) -> ComponentsBuilder {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    c.schema_from::<T>().schemas_from_iter(deps)
}

fn json(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn any_object() -> Schema {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

fn text() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

/// One operation: method, path, summary, request body, success status and body, more statuses.
struct Op {
    method: HttpMethod,
    path: String,
    summary: String,
    params: Vec<(&'static str, ParameterIn, &'static str, Type)>,
    body: Option<(&'static str, RefOr<Schema>)>,
    ok: (u16, &'static str, Option<(&'static str, RefOr<Schema>)>),
    errors: &'static [u16],
    headers_etag: bool,
    /// Needs no token (probes).
    open: bool,
}

impl Op {
    fn new(method: HttpMethod, path: impl Into<String>, summary: impl Into<String>) -> Op {
        Op {
            method,
            path: path.into(),
            summary: summary.into(),
            params: vec![],
            body: None,
            ok: (200, "OK", None),
            errors: &[],
            headers_etag: false,
            open: false,
        }
    }
}

const READ_ERRORS: &[u16] = &[400, 401, 403, 404];
const WRITE_ERRORS: &[u16] = &[400, 401, 403, 404, 409, 412, 413, 422];
const CONN_ERRORS: &[u16] = &[400, 401, 403, 404, 409, 413, 422, 502, 503];

fn list_params() -> Vec<(&'static str, ParameterIn, &'static str, Type)> {
    vec![
        (
            "labelSelector",
            ParameterIn::Query,
            "k=v, k!=v, k or !k, comma-separated; all must hold",
            Type::String,
        ),
        (
            "service",
            ParameterIn::Query,
            "only those offering (endpoints) or using (connections) this service",
            Type::String,
        ),
        (
            "node",
            ParameterIn::Query,
            "only those on this node",
            Type::String,
        ),
        (
            "limit",
            ParameterIn::Query,
            "page size, 1 to 1000; without it, everything",
            Type::Integer,
        ),
        (
            "continue",
            ParameterIn::Query,
            "metadata.continue of the previous page",
            Type::String,
        ),
    ]
}

fn operations() -> Vec<Op> {
    use HttpMethod::*;
    let mut ops = vec![
        Op {
            ok: (200, "Alive", Some(("text/plain", text().into()))),
            open: true,
            ..Op::new(Get, "/healthz", "Liveness probe (no token needed)")
        },
        Op {
            ok: (200, "Store and data plane answer", Some(("text/plain", text().into()))),
            open: true,
            errors: &[503],
            ..Op::new(Get, "/readyz", "Readiness probe (no token needed)")
        },
        Op {
            ok: (200, "OpenMetrics text", Some(("application/openmetrics-text", text().into()))),
            errors: &[401, 403],
            ..Op::new(Get, "/metrics", "Prometheus metrics: connections by state, endpoints, request latency, driver errors, device sessions")
        },
        Op {
            params: vec![("since", ParameterIn::Query, "resume after this event id (as Last-Event-ID does)", Type::Integer)],
            ok: (200, "Server-Sent Events: `id` (resume from it), `event` (connection, endpoint, object or reset) and JSON `data`", Some(("text/event-stream", reference("SseEvent")))),
            errors: &[400, 401, 403],
            ..Op::new(Get, "/api/v1/events", "Connection, endpoint and object changes as Server-Sent Events, resumable")
        },
        Op {
            params: vec![("file", ParameterIn::Query, "file name, for error messages", Type::String)],
            body: Some(("application/yaml", text().into())),
            ok: (200, "What changed", Some(("application/json", any_object().into()))),
            errors: &[400, 401, 403, 404, 409, 413, 422],
            ..Op::new(Post, "/api/v1/manifests", "Apply manifest documents (YAML or JSON, several per body)")
        },
        Op {
            params: vec![("file", ParameterIn::Query, "file name, for error messages", Type::String)],
            body: Some(("application/yaml", text().into())),
            ok: (200, "What was deleted", Some(("application/json", any_object().into()))),
            errors: &[400, 401, 403, 404, 409, 413, 422],
            ..Op::new(Delete, "/api/v1/manifests", "Delete the objects of manifest documents")
        },
        Op {
            ok: (200, "Nodes, devices and links", Some(("application/json", any_object().into()))),
            errors: &[401, 403],
            ..Op::new(Get, "/api/v1/topology", "The topology paths are computed over")
        },
        Op {
            ok: (200, "The links the data plane reported down, each with why (`linksDown`), and how each node agent stands (`agents`: attached, away or lost)", Some(("application/json", any_object().into()))),
            errors: &[401, 403],
            ..Op::new(Get, "/api/v1/topology/status", "What the data plane observed of the topology")
        },
        Op {
            ok: (200, "Number pools in use (`pools`), the connection count, and each node's SR-IOV VF pools (`sriov`: node, pool, total, allocated, unhealthy, tokens, tokensAllocated)", Some(("application/json", any_object().into()))),
            errors: &[401, 403],
            ..Op::new(Get, "/api/v1/resources", "Pools in use: numbers, addresses, SR-IOV VFs")
        },
        Op {
            params: {
                let mut p = list_params();
                p.push(("state", ParameterIn::Query, "requested, programming, up, healing, closed or failed", Type::String));
                p.push(("endpoint", ParameterIn::Query, "only those to this endpoint", Type::String));
                p
            },
            ok: (200, "A page of connections, oldest first", Some(("application/json", reference("ConnectionList")))),
            errors: &[400, 401, 403],
            ..Op::new(Get, "/api/v1/connections", "List connections")
        },
        Op {
            params: vec![("Idempotency-Key", ParameterIn::Header, "retries with the same key and body get the first answer", Type::String)],
            body: Some(("application/json", reference("ConnectionRequest"))),
            ok: (201, "The connection, up", Some(("application/json", reference("Connection")))),
            errors: CONN_ERRORS,
            ..Op::new(Post, "/api/v1/connections", "Request a network service for a client")
        },
        Op {
            params: vec![("id", ParameterIn::Path, "connection id", Type::String)],
            ok: (200, "The connection", Some(("application/json", reference("Connection")))),
            errors: READ_ERRORS,
            ..Op::new(Get, "/api/v1/connections/{id}", "Read a connection")
        },
        Op {
            params: vec![("id", ParameterIn::Path, "connection id", Type::String)],
            ok: (200, "The connection, closed", Some(("application/json", reference("Connection")))),
            errors: &[400, 401, 403, 404, 502],
            ..Op::new(Delete, "/api/v1/connections/{id}", "Close a connection")
        },
        Op {
            params: vec![("name", ParameterIn::Path, "endpoint name", Type::String)],
            body: Some(("application/json", reference("EndpointStatusChange"))),
            ok: (200, "Whether anything changed", Some(("application/json", any_object().into()))),
            errors: &[400, 401, 403, 404, 413],
            ..Op::new(Put, "/api/v1/endpoints/{name}/status", "Withdraw or restore an endpoint (eNSMs; admin)")
        },
        Op {
            body: Some(("application/json", ObjectBuilder::new().schema_type(Type::Array).into())),
            ok: (200, "What changed", Some(("application/json", ObjectBuilder::new().schema_type(Type::Array).into()))),
            errors: &[400, 401, 403, 413, 422],
            ..Op::new(Post, "/api/v1/registry/objects", "Register objects in the controller's internal form (eNSMs; admin)")
        },
        Op {
            body: Some(("application/json", any_object().into())),
            ok: (200, "This domain's side of the shared vL3", Some(("application/json", any_object().into()))),
            errors: &[400, 401, 403, 404, 413, 422],
            ..Op::new(Post, "/api/v1/registry/vl3-exchange", "Exchange sides of a vL3 shared by two domains (another domain's controller; its shared secret as the bearer token)")
        },
    ];
    for c in COLLECTIONS {
        let (doc, list) = schema_names(c);
        let base = format!("/api/v1/{}", c.path);
        let item = format!("{base}/{{name}}");
        let name = ("name", ParameterIn::Path, "object name", Type::String);
        let if_match = (
            "If-Match",
            ParameterIn::Header,
            "the ETag read; a stale one is refused with 412",
            Type::String,
        );
        ops.push(Op {
            params: list_params(),
            ok: (
                200,
                "A page of documents, by name",
                Some(("application/json", reference(list))),
            ),
            errors: &[400, 401, 403],
            ..Op::new(Get, &base, format!("List {}", c.kind))
        });
        ops.push(Op {
            params: vec![(
                "Idempotency-Key",
                ParameterIn::Header,
                "retries with the same key and body get the first answer",
                Type::String,
            )],
            body: Some(("application/json", reference(doc))),
            ok: (201, "Created", Some(("application/json", reference(doc)))),
            errors: WRITE_ERRORS,
            headers_etag: true,
            ..Op::new(
                Post,
                &base,
                format!("Create a {} (409 if the name is taken)", c.kind),
            )
        });
        ops.push(Op {
            params: vec![
                name.clone(),
                (
                    "If-None-Match",
                    ParameterIn::Header,
                    "answer 304 when the ETag still matches",
                    Type::String,
                ),
            ],
            ok: (
                200,
                "The document",
                Some(("application/json", reference(doc))),
            ),
            errors: &[304, 400, 401, 403, 404],
            headers_etag: true,
            ..Op::new(Get, &item, format!("Read a {}", c.kind))
        });
        ops.push(Op {
            params: vec![
                name.clone(),
                if_match.clone(),
                (
                    "If-None-Match",
                    ParameterIn::Header,
                    "`*`: create only",
                    Type::String,
                ),
            ],
            body: Some(("application/json", reference(doc))),
            ok: (
                200,
                "Replaced (201 when created)",
                Some(("application/json", reference(doc))),
            ),
            errors: &[201, 400, 401, 403, 404, 409, 412, 413, 422],
            headers_etag: true,
            ..Op::new(Put, &item, format!("Create or replace a {}", c.kind))
        });
        ops.push(Op {
            params: vec![name, if_match],
            ok: (204, "Deleted", None),
            errors: &[400, 401, 403, 404, 409, 412],
            ..Op::new(
                Delete,
                &item,
                format!("Delete a {} (409 while connections use it)", c.kind),
            )
        });
    }
    ops
}

/// One Server-Sent Event of `/api/v1/events`.
#[derive(ToSchema)]
pub struct SseEvent {
    /// Increasing, and unique across restarts and failovers (an id of another process gets a
    /// `reset`); pass as `Last-Event-ID` or `?since=` to resume after it.
    pub id: Option<String>,
    /// connection, endpoint, object or reset.
    pub event: Option<String>,
    /// A JSON object describing the change.
    pub data: String,
}

/// An endpoint withdrawn or restored.
#[derive(ToSchema)]
pub struct EndpointStatusChange {
    pub down: bool,
    pub reason: Option<String>,
}

fn method_name(m: &HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Patch => "patch",
        HttpMethod::Head => "head",
        HttpMethod::Options => "options",
        HttpMethod::Trace => "trace",
    }
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for op in operations() {
        let mut b = OperationBuilder::new()
            .summary(Some(op.summary.clone()))
            .operation_id(Some(format!(
                "{}{}",
                method_name(&op.method),
                op.path.replace(['/', '{', '}', '-'], "_")
            )));
        for (name, at, desc, ty) in &op.params {
            let required = if matches!(at, ParameterIn::Path) {
                Required::True
            } else {
                Required::False
            };
            let schema: Schema = ObjectBuilder::new().schema_type(ty.clone()).into();
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(at.clone())
                    .description(Some(*desc))
                    .required(required)
                    .schema(Some(schema)),
            );
        }
        if let Some((ctype, schema)) = &op.body {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .content(*ctype, json(schema.clone()))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let mut responses = ResponsesBuilder::new();
        let (code, desc, body) = &op.ok;
        let mut ok = ResponseBuilder::new().description(*desc);
        if let Some((ctype, schema)) = body {
            ok = ok.content(*ctype, json(schema.clone()));
        }
        if op.headers_etag {
            ok = ok.header(
                "ETag",
                utoipa::openapi::HeaderBuilder::new()
                    .schema(text())
                    .description(Some("the object's version, for If-Match"))
                    .build(),
            );
        }
        responses = responses.response(code.to_string(), ok.build());
        for e in op.errors {
            let r = match e {
                201 => ResponseBuilder::new()
                    .description("Created")
                    .content(
                        "application/json",
                        json(match &op.ok.2 {
                            Some((_, s)) => s.clone(),
                            None => any_object().into(),
                        }),
                    )
                    .build(),
                304 => ResponseBuilder::new().description("Not modified").build(),
                _ => ResponseBuilder::new()
                    .description(
                        axum::http::StatusCode::from_u16(*e)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("error"),
                    )
                    .content("application/problem+json", json(reference("ProblemDoc")))
                    .build(),
            };
            responses = responses.response(e.to_string(), r);
        }
        b = b.responses(responses.build());
        if op.open {
            b = b.securities(Some(
                Vec::<utoipa::openapi::security::SecurityRequirement>::new(),
            ));
        }
        paths = paths.path(op.path.clone(), PathItem::new(op.method, b.build()));
    }
    let mut c = ComponentsBuilder::new();
    c = add::<ProblemDoc>(c);
    c = add::<Connection>(c);
    c = add::<ConnectionRequest>(c);
    c = add::<ConnectionList>(c);
    c = add::<EndpointStatusChange>(c);
    c = add::<SseEvent>(c);
    c = add::<NetworkServiceDocument>(c);
    c = add::<NetworkServiceList>(c);
    c = add::<NetworkServiceEndpointDocument>(c);
    c = add::<NetworkServiceEndpointList>(c);
    c = add::<NodeDocument>(c);
    c = add::<NodeList>(c);
    c = add::<LinkDocument>(c);
    c = add::<LinkList>(c);
    c = add::<DeviceDocument>(c);
    c = add::<DeviceList>(c);
    let mut components = c.build();
    for coll in COLLECTIONS {
        let (doc, _) = schema_names(coll);
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(doc) {
            for (field, value) in [
                ("apiVersion", coll.api_version),
                ("kind", coll.kind.as_str()),
            ] {
                if let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut(field) {
                    p.enum_values = Some(vec![Value::String(value.to_string())]);
                }
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut("Metadata") {
        if let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut("name") {
            p.pattern = Some("^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$".into());
        }
    }
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let c = components;
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Meshwire")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Meshwire's northbound REST API: network services, endpoints, topology, devices and connections. \
                     Resources are manifest documents (apiVersion, kind, metadata, spec). Errors are RFC 9457 problem documents. \
                     With a token table, every operation but the probes needs `Authorization: Bearer <token>`: \
                     viewer reads, operator writes, admin manages devices and endpoint health.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(c))
        .security(Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema that is there.
    #[test]
    fn references_resolve() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(refs.len() > 20);
        for r in refs {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(schemas.contains_key(name), "dangling {r}");
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
