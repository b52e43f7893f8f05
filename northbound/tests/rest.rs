//! Input: the REST router over a controller (memory store, recording driver), called in
//! process. Output: create, read, replace and delete of every collection with ETags and
//! If-Match/If-None-Match; pages that cover a list exactly once; label selectors; idempotent
//! creates; problem documents naming the field for bad bodies and queries; the OpenAPI document
//! and Swagger UI; and, with tokens, every documented operation answering 401 without a token
//! and 403 to a viewer where it writes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use meshwire_controller::driver::RecordingDriver;
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, SystemClock};
use meshwire_northbound::auth::{Role, Token, Tokens};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn controller() -> Controller {
    Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(RecordingDriver::new()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap()
}

struct Reply {
    status: StatusCode,
    body: Value,
    headers: axum::http::HeaderMap,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(b.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    }
}

fn etag(r: &Reply) -> String {
    r.headers["etag"].to_str().unwrap().to_string()
}

fn node(name: &str, zone: &str) -> String {
    json!({"apiVersion": "meshwire.io/v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"zone": zone}}, "spec": {"forwarder": "kernel"}})
    .to_string()
}

#[tokio::test]
async fn rest_crud_with_etags() {
    let app = meshwire_northbound::router(controller().await);
    let r = call(&app, "POST", "/api/v1/nodes", &[], &node("n1", "a")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["location"], "/api/v1/nodes/n1");
    assert_eq!(r.body["spec"]["forwarder"], "kernel");
    let v1 = etag(&r);

    let r = call(&app, "POST", "/api/v1/nodes", &[], &node("n1", "a")).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("already-exists"))
    );

    let r = call(&app, "GET", "/api/v1/nodes/n1", &[], "").await;
    assert_eq!((r.status, etag(&r)), (StatusCode::OK, v1.clone()));
    let r = call(
        &app,
        "GET",
        "/api/v1/nodes/n1",
        &[("if-none-match", &v1)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // A replace with the tag read wins once; the same stale tag then loses.
    let r = call(
        &app,
        "PUT",
        "/api/v1/nodes/n1",
        &[("if-match", &v1)],
        &node("n1", "b"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v2 = etag(&r);
    assert_ne!(v1, v2);
    let r = call(
        &app,
        "PUT",
        "/api/v1/nodes/n1",
        &[("if-match", &v1)],
        &node("n1", "c"),
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition-failed"))
    );
    let r = call(
        &app,
        "PUT",
        "/api/v1/nodes/n1",
        &[("if-none-match", "*")],
        &node("n1", "c"),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call(
        &app,
        "PUT",
        "/api/v1/nodes/n2",
        &[("if-none-match", "*")],
        &node("n2", "c"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(
        &app,
        "PUT",
        "/api/v1/nodes/n9",
        &[("if-match", "*")],
        &node("n9", "c"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bodies at fault, each naming the field.
    let r = call(&app, "PUT", "/api/v1/nodes/other", &[], &node("n1", "a")).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.name"))
    );
    let svc = json!({"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService", "metadata": {"name": "s"}}).to_string();
    let r = call(&app, "POST", "/api/v1/nodes", &[], &svc).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("kind"))
    );
    let bad = json!({"apiVersion": "meshwire.io/v1", "kind": "Node", "metadata": {"name": "n3"}, "spec": {"forwarder": "vpp"}}).to_string();
    let r = call(&app, "POST", "/api/v1/nodes", &[], &bad).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.forwarder"))
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = call(&app, "POST", "/api/v1/nodes", &[], "{\"apiVersion\": ").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // What GET returns can be PUT back unchanged.
    let r = call(&app, "GET", "/api/v1/nodes/n1", &[], "").await;
    let again = call(
        &app,
        "PUT",
        "/api/v1/nodes/n1",
        &[("if-match", &etag(&r))],
        &r.body.to_string(),
    )
    .await;
    assert_eq!((again.status, etag(&again)), (StatusCode::OK, etag(&r)));

    let r = call(&app, "DELETE", "/api/v1/nodes/n1", &[("if-match", &v1)], "").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call(&app, "DELETE", "/api/v1/nodes/n1", &[("if-match", &v2)], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&app, "DELETE", "/api/v1/nodes/n1", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rest_pages_selectors_and_filters() {
    let app = meshwire_northbound::router(controller().await);
    for i in 0..7 {
        let zone = if i % 2 == 0 { "even" } else { "odd" };
        let r = call(
            &app,
            "POST",
            "/api/v1/nodes",
            &[],
            &node(&format!("n{i}"), zone),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut url = "/api/v1/nodes?limit=3".to_string();
    loop {
        let r = call(&app, "GET", &url, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["kind"], "List");
        for i in r.body["items"].as_array().unwrap() {
            seen.push(i["metadata"]["name"].as_str().unwrap().to_string());
        }
        match r.body["metadata"]["continue"].as_str() {
            Some(c) => url = format!("/api/v1/nodes?limit=3&continue={c}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("n{i}")).collect::<Vec<_>>());

    let r = call(&app, "GET", "/api/v1/nodes?labelSelector=zone=odd", &[], "").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
    let r = call(
        &app,
        "GET",
        "/api/v1/nodes?labelSelector=zone!=odd,zone",
        &[],
        "",
    )
    .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 4);
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("continue=zz", "continue"),
        ("labelSelector=a%20b", "labelSelector"),
    ] {
        let r = call(&app, "GET", &format!("/api/v1/nodes?{q}"), &[], "").await;
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{q}"
        );
    }
    let r = call(&app, "GET", "/api/v1/nodes?limit=abc", &[], "").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid-query"))
    );

    // Endpoints carry their status and filter by service, node and labels.
    let link = json!({"apiVersion": "meshwire.io/v1", "kind": "Link", "metadata": {"name": "l01"},
                      "spec": {"endpoints": ["n0:eth1", "n1:eth1"], "addresses": ["10.0.0.1/24", "10.0.0.2/24"]}});
    assert_eq!(
        call(&app, "POST", "/api/v1/links", &[], &link.to_string())
            .await
            .status,
        StatusCode::CREATED
    );
    let svc = json!({"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService", "metadata": {"name": "vpn"}});
    assert_eq!(
        call(&app, "POST", "/api/v1/services", &[], &svc.to_string())
            .await
            .status,
        StatusCode::CREATED
    );
    for (name, node, app_label) in [("e0", "n0", "gw"), ("e1", "n1", "fw")] {
        let nse = json!({"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkServiceEndpoint",
            "metadata": {"name": name},
            "spec": {"network_service_names": ["vpn"], "network_service_labels": {"vpn": {"labels": {"app": app_label}}},
                     "location": {"node": node}}});
        let r = call(&app, "POST", "/api/v1/endpoints", &[], &nse.to_string()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["status"], json!({"down": false, "connections": 0}));
    }
    let r = call(
        &app,
        "GET",
        "/api/v1/endpoints?service=vpn&labelSelector=app=fw",
        &[],
        "",
    )
    .await;
    assert_eq!(r.body["items"][0]["metadata"]["name"], "e1");
    let r = call(&app, "GET", "/api/v1/endpoints?node=n0", &[], "").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = call(&app, "GET", "/api/v1/links?node=n1", &[], "").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

    // Hostile names are refused where they enter, naming the field: the client's namespace,
    // the interface, an endpoint's namespace (through manifests and registry objects).
    for (body, field) in [
        (
            json!({"network_service": "vpn", "client": {"node": "n0", "name": "../../proc/1/ns/net"}}),
            "client.name",
        ),
        (
            json!({"network_service": "vpn", "client": {"node": "n0", "name": "../netns/other"}}),
            "client.name",
        ),
        (
            json!({"network_service": "vpn", "client": {"node": "n0", "name": "w1"}, "interface": "a/b"}),
            "interface",
        ),
        (
            json!({"network_service": "vpn", "client": {"node": "n0", "name": "w1"}, "interface": "sixteen-bytes-xx"}),
            "interface",
        ),
    ] {
        let r = call(&app, "POST", "/api/v1/connections", &[], &body.to_string()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["field"], field, "{}", r.body);
    }
    let hostile_ep = "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: evil}\nspec: {network_service_names: [vpn], location: {node: n0, netns: \"../../proc/1/ns/net\"}}\n";
    let r = call(&app, "POST", "/api/v1/manifests", &[], hostile_ep).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body["field"].as_str().unwrap().contains("netns"),
        "{}",
        r.body
    );
    let objects = r#"[{"kind":"NetworkServiceEndpoint","object":{"name":"evil","network_service_names":["vpn"],"location":{"node":{"node":"n0","netns":"../x"}},"mechanisms":{}}}]"#;
    let r = call(&app, "POST", "/api/v1/registry/objects", &[], objects).await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("netns"),
        "{}",
        r.body
    );

    // Idempotent connection requests: one connection however often the client retries.
    let req = json!({"network_service": "vpn", "client": {"node": "n0", "name": "w1"}, "labels": {"team": "x"}}).to_string();
    let key = [("idempotency-key", "req-1")];
    let a = call(&app, "POST", "/api/v1/connections", &key, &req).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let b = call(&app, "POST", "/api/v1/connections", &key, &req).await;
    assert_eq!(
        (b.status, &b.body["id"]),
        (StatusCode::CREATED, &a.body["id"])
    );
    assert_eq!(b.headers["idempotent-replayed"], "true");
    let other =
        json!({"network_service": "vpn", "client": {"node": "n1", "name": "w2"}}).to_string();
    let c = call(&app, "POST", "/api/v1/connections", &key, &other).await;
    assert_eq!(
        (c.status, c.body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency-key-reused")
        )
    );
    let r = call(
        &app,
        "GET",
        "/api/v1/connections?labelSelector=team=x&limit=1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(r.body["metadata"].get("continue").is_none());

    // In use: the client's node cannot go while the connection lives.
    let r = call(&app, "DELETE", "/api/v1/nodes/n0", &[], "").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("in-use"))
    );
    let r = call(
        &app,
        "POST",
        "/api/v1/connections",
        &[],
        "{\"network_service\": 5}",
    )
    .await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("network_service"))
    );
}

#[tokio::test]
async fn rest_openapi_and_swagger_ui() {
    let app = meshwire_northbound::router(controller().await);
    let r = call(&app, "GET", "/openapi.json", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
    for p in [
        "/api/v1/services",
        "/api/v1/endpoints/{name}",
        "/api/v1/devices",
        "/api/v1/connections/{id}",
    ] {
        assert!(r.body["paths"].get(p).is_some(), "{p}");
    }
    let resp = app
        .clone()
        .oneshot(Request::get("/docs/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&html).contains("swagger"),
        "not Swagger UI"
    );
}

/// Every documented operation, walked from the OpenAPI document itself.
#[tokio::test]
async fn rest_every_operation_needs_a_token_and_the_role() {
    let tokens = Tokens(vec![
        Token {
            name: "v".into(),
            role: Role::Viewer,
            secret: "view-secret".into(),
            device: None,
        },
        Token {
            name: "o".into(),
            role: Role::Operator,
            secret: "op-secret".into(),
            device: None,
        },
    ]);
    let app = meshwire_northbound::router_with(
        controller().await,
        meshwire_northbound::Options {
            tokens: Some(tokens),
            ..Default::default()
        },
    );
    let doc = serde_json::to_value(meshwire_northbound::openapi::document()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path.replace("{name}", "x").replace("{id}", "x");
        for method in item.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            let r = call(&app, &m, &uri, &[], "").await;
            if path == "/healthz" || path == "/readyz" {
                assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{m} {path}");
                continue;
            }
            // Another domain's controller: its shared secret, never an API token.
            if path == "/api/v1/registry/vl3-exchange" {
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path}");
                for t in ["nope", "view-secret", "op-secret"] {
                    let auth = format!("Bearer {t}");
                    let r = call(
                        &app,
                        &m,
                        &uri,
                        &[("authorization", &auth)],
                        "{\"domain\": \"x.example\", \"service\": \"db\"}",
                    )
                    .await;
                    assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path} with {t}");
                }
                checked += 1;
                continue;
            }
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path}");
            assert_eq!(r.headers["content-type"], "application/problem+json");
            let r = call(&app, &m, &uri, &[("authorization", "Bearer nope")], "").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path}");
            if path == "/api/v1/events" {
                checked += 1;
                continue; // a stream: with a good token it never ends (tested in the CLI tests)
            }
            let viewer = call(
                &app,
                &m,
                &uri,
                &[("authorization", "Bearer view-secret")],
                "",
            )
            .await;
            if m == "GET" {
                assert_ne!(viewer.status, StatusCode::FORBIDDEN, "{m} {path}");
            } else {
                assert_eq!(viewer.status, StatusCode::FORBIDDEN, "{m} {path}");
                let admin_only = path.starts_with("/api/v1/devices")
                    || path.ends_with("/status")
                    || path == "/api/v1/registry/objects";
                // Admin objects are refused by what the body or the stored object is
                // (rest_admin_objects_whatever_the_route); the route alone lets an operator in.
                let op = call(&app, &m, &uri, &[("authorization", "Bearer op-secret")], "").await;
                if !admin_only {
                    assert_ne!(op.status, StatusCode::FORBIDDEN, "{m} {path}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 35, "only {checked} operations");
}

/// Input: an operator's token and an eNSM's token bound to device fw1, writing admin objects
/// (a device, an endpoint on a device, a node with an OVSDB remote) through every REST door.
/// Output: the operator is refused (403 naming the object) whatever the route; fw1's token may
/// write fw1's objects and set their status, and nothing of anyone else's.
#[tokio::test]
async fn rest_admin_objects_whatever_the_route() {
    let tokens = Tokens(vec![
        Token {
            name: "oss".into(),
            role: Role::Operator,
            secret: "op-secret-000001".into(),
            device: None,
        },
        Token {
            name: "root".into(),
            role: Role::Admin,
            secret: "admin-secret-0001".into(),
            device: None,
        },
        Token {
            name: "fw1-ensm".into(),
            role: Role::Operator,
            secret: "fw1-secret-00001".into(),
            device: Some("fw1".into()),
        },
    ]);
    let app = meshwire_northbound::router_with(
        controller().await,
        meshwire_northbound::Options {
            tokens: Some(tokens),
            ..Default::default()
        },
    );
    let op = [("authorization", "Bearer op-secret-000001")];
    let admin = [("authorization", "Bearer admin-secret-0001")];
    let fw1 = [("authorization", "Bearer fw1-secret-00001")];
    let device = |name: &str| {
        format!("apiVersion: meshwire.io/v1\nkind: Device\nmetadata: {{name: {name}}}\nspec: {{kind: meshwire-appliance, ensm: \"http://evil.example:1\"}}\n")
    };
    let ovs_node = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: ovs, ovsdb: \"tcp:192.0.2.1:6640\"}\n";
    let on_device = "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: fw1-ep}\nspec: {network_service_names: [s], location: {device: fw1}}\n";
    for (what, body) in [
        ("device", device("fw1")),
        ("ovs node", ovs_node.to_string()),
        ("endpoint on a device", on_device.to_string()),
    ] {
        let r = call(&app, "POST", "/api/v1/manifests", &op, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains("admin object"),
            "{}",
            r.body
        );
    }
    let r = call(&app, "POST", "/api/v1/devices", &op, &device("fw1")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "PUT", "/api/v1/nodes/n1", &op, ovs_node).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let objects = r#"[{"kind":"Device","object":{"name":"fw2","kind":"meshwire-appliance","mechanisms":{}}}]"#;
    let r = call(&app, "POST", "/api/v1/registry/objects", &op, objects).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // An admin may; the device's own eNSM may write its own device and endpoints.
    let r = call(&app, "POST", "/api/v1/devices", &admin, &device("fw2")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let svc = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n";
    assert_eq!(
        call(&app, "POST", "/api/v1/manifests", &op, svc)
            .await
            .status,
        StatusCode::OK
    );
    let r = call(
        &app,
        "POST",
        "/api/v1/manifests",
        &fw1,
        &format!("{}---\n{on_device}", device("fw1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(
        &app,
        "PUT",
        "/api/v1/endpoints/fw1-ep/status",
        &fw1,
        r#"{"down":true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // ... but nothing of another device, and no plain object either.
    let r = call(&app, "DELETE", "/api/v1/devices/fw2", &fw1, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = call(&app, "PUT", "/api/v1/devices/fw2", &fw1, &device("fw2")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "POST", "/api/v1/nodes", &fw1, &node("n9", "a")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The operator may not withdraw an endpoint, nor delete the device.
    let r = call(
        &app,
        "PUT",
        "/api/v1/endpoints/fw1-ep/status",
        &op,
        r#"{"down":false}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "DELETE", "/api/v1/manifests", &op, &device("fw1")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(&app, "DELETE", "/api/v1/devices/fw1", &op, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nor turn a stored admin object into a plain one of the same name, by any door: the
    // endpoint on fw1 re-located onto a node, the OVS node (stored by the admin) without its
    // OVSDB remote.
    let r = call(&app, "PUT", "/api/v1/nodes/n1", &admin, ovs_node).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let plain_ep = "apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: fw1-ep}
spec: {network_service_names: [s], location: {node: n1}}
";
    let plain_node = "apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n1}
spec: {forwarder: kernel}
";
    for body in [plain_ep, plain_node] {
        let r = call(&app, "POST", "/api/v1/manifests", &op, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains("admin object"),
            "{}",
            r.body
        );
    }
    let objects = r#"[{"kind":"Node","object":{"name":"n1","forwarder":"kernel"}}]"#;
    let r = call(&app, "POST", "/api/v1/registry/objects", &op, objects).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = call(&app, "PUT", "/api/v1/endpoints/fw1-ep", &op, plain_ep).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

/// Input: a store that fails every write with an error naming a file of the server. Output: a
/// write answers 503 with a stable message saying to retry; neither the path nor the backend's
/// words reach the caller; a connection request gets the same and leaves nothing behind.
#[tokio::test]
async fn rest_store_failures_answer_a_stable_message() {
    let store = Arc::new(meshwire_controller::store::faulty::FaultyStore::default());
    let ctl = Controller::start(
        store.clone(),
        Arc::new(RecordingDriver::new()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    let app = meshwire_northbound::router(ctl.clone());
    let world = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n1}}\n";
    let r = call(&app, "POST", "/api/v1/manifests", &[], world).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    store
        .refuse_puts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let svc =
        "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: other}\n";
    let conn =
        json!({"network_service": "vpn", "client": {"node": "n1", "name": "w1"}}).to_string();
    for (path, body) in [
        ("/api/v1/services", svc),
        ("/api/v1/connections", conn.as_str()),
    ] {
        let r = call(&app, "POST", path, &[], body).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.body
        );
        let text = r.body.to_string();
        assert!(
            !text.contains("/var/lib/meshwire") && !text.contains("input/output"),
            "{text}"
        );
        assert!(
            r.body["detail"].as_str().unwrap().contains("Retry"),
            "{text}"
        );
    }
    assert_eq!(ctl.connection_count(), 0);
}
