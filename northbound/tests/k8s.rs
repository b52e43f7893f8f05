//! Kubernetes, without an API server: the registry sync against kube's mocked service
//! (`tower-test`), with every request it makes checked (method, path, body) and answered as
//! kube-apiserver would; and the admission webhook over real HTTPS with an AdmissionReview as
//! kube-apiserver sends it (captured from a GKE cluster, published in kube-rs's tests) plus the
//! NSM annotation.
//!
//! Input → output:
//! - a NetworkServiceEndpoint resource without our finalizer → a JSON patch adding it, nothing
//!   in the registry yet; the same resource with the finalizer → in the registry, no request;
//! - a resource with a bad spec → nothing in the registry, no request, no error;
//! - a deleted resource (deletionTimestamp) → out of the registry, then a patch removing the
//!   finalizer; a service still used by a connection → stays, error, no patch;
//! - an endpoint registered over the API → GET (404) then POST of a resource labelled ours;
//!   a user's resource → left alone;
//! - the whole runtime (reflector + controller) on a mocked LIST/WATCH → the resource reaches
//!   the registry through the finalizer round trip;
//! - the webhook: annotated pod → base64 JSON patch adding the init container with the URLs;
//!   bad annotation → refused with the reason; plain pod → allowed, no patch.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::api::{Api, DynamicObject};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use meshwire_controller::driver::RecordingDriver;
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, Precondition, SystemClock};
use meshwire_models::{Manifest, ObjectKey, ObjectKind};
use meshwire_northbound::k8s::sync::{self, Ctx, FINALIZER};
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn controller() -> Controller {
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(RecordingDriver::new()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(
        Manifest::parse(
            "t",
            "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    ctl
}

fn nse(name: &str, finalizers: &[&str], deleting: bool) -> DynamicObject {
    let ar = sync::resource(ObjectKind::NetworkServiceEndpoint).unwrap();
    let mut o = DynamicObject::new(name, &ar).within("nsm-system");
    o.data = json!({"spec": {"network_service_names": ["vpn"], "network_service_labels": {"vpn": {"labels": {"app": "gw"}}}, "location": {"node": "n1"}}});
    o.metadata.finalizers =
        (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
    o.metadata.resource_version = Some("7".into());
    if deleting {
        o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::chrono::Utc::now(),
        ));
    }
    o
}

fn mock(kind: ObjectKind, ctl: &Controller) -> (Arc<Ctx>, Handle, Client) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "nsm-system");
    let ar = sync::resource(kind).unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "nsm-system", &ar);
    (
        Arc::new(Ctx {
            ctl: ctl.clone(),
            api,
            kind,
        }),
        handle,
        client,
    )
}

async fn next(
    h: &mut Handle,
) -> (
    http::Method,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("the sync made no request")
        .expect("service closed");
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, uri, body, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn not_found(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("\"{name}\" not found"), "reason": "NotFound", "code": 404})
}

const NSE_PATH: &str =
    "/apis/networkservicemesh.io/v1/namespaces/nsm-system/networkserviceendpoints";

#[tokio::test]
async fn k8s_resource_into_the_registry_through_the_finalizer() {
    let ctl = controller().await;
    let (ctx, mut h, _) = mock(ObjectKind::NetworkServiceEndpoint, &ctl);
    let key = ObjectKey {
        kind: ObjectKind::NetworkServiceEndpoint,
        name: "gw1".into(),
    };

    // First sight: the finalizer goes on, nothing else yet.
    let obj = nse("gw1", &[], false);
    let server = tokio::spawn(async move {
        let (m, uri, body, send) = next(&mut h).await;
        assert_eq!(
            (m, uri.as_str()),
            (http::Method::PATCH, format!("{NSE_PATH}/gw1?").as_str())
        );
        assert_eq!(
            body,
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
        );
        reply(
            send,
            200,
            serde_json::to_value(nse("gw1", &[FINALIZER], false)).unwrap(),
        );
        h
    });
    let action = sync::reconcile(Arc::new(obj), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut h = server.await.unwrap();
    assert!(ctl.object(&key).is_none());

    // With the finalizer: into the registry, with no request at all.
    let action = sync::reconcile(Arc::new(nse("gw1", &[FINALIZER], false)), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(sync::RESYNC));
    let o = ctl.object(&key).expect("in the registry");
    let v = ctl.find_endpoints(Some("vpn"), &[("app".to_string(), "gw".to_string())].into());
    assert_eq!(v.len(), 1, "{o:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), h.next_request())
            .await
            .is_err(),
        "no request expected"
    );

    // A bad spec: refused, logged, nothing changes, no request.
    let mut bad = nse("bad1", &[FINALIZER], false);
    bad.data["spec"]["location"] = json!({"node": "n1", "device": "fw"});
    sync::reconcile(Arc::new(bad), ctx.clone()).await.unwrap();
    assert!(ctl
        .object(&ObjectKey {
            kind: ObjectKind::NetworkServiceEndpoint,
            name: "bad1".into()
        })
        .is_none());

    // Deleted in Kubernetes: out of the registry, then the finalizer comes off.
    let server = tokio::spawn(async move {
        let (m, uri, body, send) = next(&mut h).await;
        assert_eq!(
            (m, uri.as_str()),
            (http::Method::PATCH, format!("{NSE_PATH}/gw1?").as_str())
        );
        assert_eq!(
            body,
            json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                   {"op": "remove", "path": "/metadata/finalizers/0"}])
        );
        reply(
            send,
            200,
            serde_json::to_value(nse("gw1", &[], true)).unwrap(),
        );
    });
    sync::reconcile(Arc::new(nse("gw1", &[FINALIZER], true)), ctx)
        .await
        .unwrap();
    server.await.unwrap();
    assert!(ctl.object(&key).is_none());
}

#[tokio::test]
async fn k8s_service_in_use_is_not_let_go() {
    let ctl = controller().await;
    // An endpoint and a connection using the service.
    ctl.apply(Manifest::parse("t", "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [vpn], location: {node: n1}}\n").unwrap()).await.unwrap();
    ctl.request(
        serde_json::from_value(json!({"network_service": "vpn", "client": {"node": "n1"}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let (ctx, mut h, _) = mock(ObjectKind::NetworkService, &ctl);
    let ar = sync::resource(ObjectKind::NetworkService).unwrap();
    let mut svc = DynamicObject::new("vpn", &ar).within("nsm-system");
    svc.data = json!({"spec": {"payload": "IP"}});
    svc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    svc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::chrono::Utc::now(),
    ));
    let e = sync::reconcile(Arc::new(svc), ctx).await.unwrap_err();
    assert!(e.to_string().contains("still used by 1 connection"), "{e}");
    assert!(ctl
        .object(&ObjectKey {
            kind: ObjectKind::NetworkService,
            name: "vpn".into()
        })
        .is_some());
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_millis(100), h.next_request()).await,
            Ok(Some(_))
        ),
        "the finalizer must stay"
    );
}

#[tokio::test]
async fn k8s_registry_objects_become_resources() {
    let ctl = controller().await;
    let (ctx, mut h, _) = mock(ObjectKind::NetworkServiceEndpoint, &ctl);
    let ar = sync::resource(ObjectKind::NetworkServiceEndpoint).unwrap();
    let doc = Manifest::parse("grpc", "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: from-grpc}\nspec: {network_service_names: [vpn], location: {node: n1}}\n").unwrap();
    let obj = doc.objects[0].clone();
    ctl.put_object(obj.clone(), Precondition::Any)
        .await
        .unwrap();
    let key = obj.key();

    let server = tokio::spawn(async move {
        let (m, uri, _, send) = next(&mut h).await;
        assert_eq!(
            (m, uri.as_str()),
            (http::Method::GET, format!("{NSE_PATH}/from-grpc").as_str())
        );
        reply(send, 404, not_found("from-grpc"));
        let (m, uri, body, send) = next(&mut h).await;
        assert_eq!(
            (m, uri.as_str()),
            (http::Method::POST, format!("{NSE_PATH}?").as_str())
        );
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshwire"
        );
        assert_eq!(body["spec"]["network_service_names"], json!(["vpn"]));
        assert_eq!(body["kind"], "NetworkServiceEndpoint");
        reply(send, 201, body);
        // Then a user's resource of the same name: left alone (GET only).
        let (m, _, _, send) = next(&mut h).await;
        assert_eq!(m, http::Method::GET);
        let mut users = serde_json::to_value(nse("from-grpc", &[FINALIZER], false)).unwrap();
        users["spec"]["capacity"] = json!(3);
        reply(send, 200, users);
        h
    });
    sync::push(&ctl, &ctx.api, &ar, "nsm-system", &key)
        .await
        .unwrap();
    sync::push(&ctl, &ctx.api, &ar, "nsm-system", &key)
        .await
        .unwrap();
    let mut h = server.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), h.next_request())
            .await
            .is_err()
    );
}

/// The runtime itself: reflector (LIST then WATCH), controller, finalizer, registry.
#[tokio::test]
async fn k8s_runtime_watch_to_registry() {
    let ctl = controller().await;
    let (_, mut h, client) = mock(ObjectKind::NetworkServiceEndpoint, &ctl);
    let server = tokio::spawn(async move {
        let mut finalized = false;
        let mut told = false;
        while let Some((req, send)) = h.next_request().await {
            let (m, uri) = (req.method().clone(), req.uri().to_string());

            let list_kind = if uri.contains("networkserviceendpoints") {
                "NetworkServiceEndpointList"
            } else {
                "NetworkServiceList"
            };
            let nse_items = |fin: bool| {
                if fin {
                    vec![nse("gw9", &[FINALIZER], false)]
                } else {
                    vec![nse("gw9", &[], false)]
                }
            };
            match m {
                http::Method::GET
                    if uri.contains("watch=true")
                        && uri.contains("networkserviceendpoints")
                        && finalized
                        && !told =>
                {
                    // The finalizer's patch, coming back through the watch as the API server sends it.
                    told = true;
                    let mut o = serde_json::to_value(nse("gw9", &[FINALIZER], false)).unwrap();
                    o["metadata"]["resourceVersion"] = json!("8");
                    let line = format!("{}\n", json!({"type": "MODIFIED", "object": o}));
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .body(Body::from(line.into_bytes()))
                            .unwrap(),
                    );
                }
                http::Method::GET if uri.contains("watch=true") => {
                    // No changes to report: the watch ends and the watcher comes back later.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    send.send_response(
                        Response::builder().status(200).body(Body::empty()).unwrap(),
                    );
                }
                http::Method::GET if uri.contains("networkserviceendpoints?") => {
                    let items = if list_kind == "NetworkServiceEndpointList" {
                        nse_items(finalized)
                    } else {
                        vec![]
                    };
                    reply(
                        send,
                        200,
                        json!({"apiVersion": "networkservicemesh.io/v1", "kind": list_kind,
                        "metadata": {"resourceVersion": if finalized { "8" } else { "7" }}, "items": items}),
                    );
                }
                http::Method::GET if uri.contains("networkservices?") => {
                    reply(
                        send,
                        200,
                        json!({"apiVersion": "networkservicemesh.io/v1", "kind": list_kind, "metadata": {"resourceVersion": "7"}, "items": []}),
                    );
                }
                http::Method::GET => {
                    // The pusher reading back a registry object: not in Kubernetes.
                    let name = uri.rsplit('/').next().unwrap_or("").to_string();
                    reply(send, 404, not_found(&name));
                }
                http::Method::POST => {
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    reply(send, 201, body);
                }
                http::Method::PATCH => {
                    assert!(uri.contains("networkserviceendpoints/gw9"), "{uri}");
                    finalized = true;
                    reply(
                        send,
                        200,
                        serde_json::to_value(nse("gw9", &[FINALIZER], false)).unwrap(),
                    );
                }
                other => panic!("unexpected {other} {uri}"),
            }
        }
    });
    let key = ObjectKey {
        kind: ObjectKind::NetworkServiceEndpoint,
        name: "gw9".into(),
    };
    // The registry's own event says when the object arrives.
    let mut events = ctl.subscribe();
    let run = tokio::spawn(sync::run(client, "nsm-system".into(), ctl.clone()));
    let arrived = async {
        loop {
            match events.recv().await {
                Ok(meshwire_controller::Event::Object { key: k, .. })
                    if k.ends_with("NetworkServiceEndpoint/gw9") =>
                {
                    return
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    let found = tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .is_ok()
        && ctl.object(&key).is_some();
    run.abort();
    server.abort();
    assert!(found, "the watched resource never reached the registry");
}

/// The webhook over real HTTPS with the AdmissionReview kube-apiserver sends.
#[tokio::test]
async fn k8s_webhook_over_https() {
    use meshwire_northbound::k8s::webhook::{self, Injection};
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let cfg = meshwire_northbound::tls::server_config(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = webhook::router(Injection {
        image: "meshwire:test".into(),
        controller_grpc: "meshwire:7601".into(),
        credentials: None,
    });
    let server = tokio::spawn(meshwire_northbound::tls::serve(
        listener,
        app,
        cfg,
        std::future::pending(),
    ));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let review = |annotation: Option<&str>| {
        let mut v: Value = serde_json::from_str(GKE_POD_CREATE).unwrap();
        if let Some(a) = annotation {
            v["request"]["object"]["metadata"]["annotations"]["networkservicemesh.io"] = json!(a);
        }
        v
    };
    let post = |v: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("https://{addr}/mutate"))
                .json(&v)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };

    let out = post(review(Some(
        "kernel://vpn-gateway/nsm-1?app=foo,kernel://dns/nsm-2",
    )))
    .await;
    let resp = &out["response"];
    assert_eq!(
        (out["kind"].as_str(), resp["uid"].as_str()),
        (
            Some("AdmissionReview"),
            Some("0c9a8d74-9cb7-44dd-b98e-09fd62def2f4")
        )
    );
    assert_eq!(
        (resp["allowed"].as_bool(), resp["patchType"].as_str()),
        (Some(true), Some("JSONPatch"))
    );
    use base64::Engine;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review(None)["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], webhook::INIT_NAME);
    assert_eq!(init["image"], "meshwire:test");
    let env = init["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "NSM_NETWORK_SERVICES"
        && e["value"] == "kernel://vpn-gateway/nsm-1?app=foo,kernel://dns/nsm-2"));
    assert!(env
        .iter()
        .any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"));
    assert_eq!(
        pod["metadata"]["labels"]["app"], "echo-server",
        "existing labels kept"
    );
    assert_eq!(pod["metadata"]["labels"]["meshwire.io/nsc"], "true");
    assert_eq!(
        pod["spec"]["containers"][0]["name"], "echo-server",
        "the app is untouched"
    );

    let out = post(review(Some("kernel://vpn gateway/nsm-1"))).await;
    assert_eq!(out["response"]["allowed"], false);
    assert!(
        out["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("networkservicemesh.io"),
        "{out}"
    );

    let out = post(review(None)).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());

    let r = http
        .post(format!("https://{addr}/mutate"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.abort();
}

/// An AdmissionReview for a pod CREATE, as kube-apiserver sent it (captured from a GKE cluster;
/// published in kube-rs's kube-core tests).
const GKE_POD_CREATE: &str = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"requestKind":{"group":"","version":"v1","kind":"Pod"},"requestResource":{"group":"","version":"v1","resource":"pods"},"name":"echo-pod","namespace":"colin-coder","operation":"CREATE","userInfo":{"username":"colin@coder.com","groups":["system:authenticated"],"extra":{"iam.gke.io/user-assertion":["REDACTED"],"user-assertion.cloud.google.com":["REDACTED"]}},"object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"echo-pod","namespace":"colin-coder","creationTimestamp":null,"labels":{"app":"echo-server"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"annotations\":{},\"labels\":{\"app\":\"echo-server\"},\"name\":\"echo-pod\",\"namespace\":\"colin-coder\"},\"spec\":{\"containers\":[{\"image\":\"jmalloc/echo-server\",\"name\":\"echo-server\",\"ports\":[{\"containerPort\":8080,\"name\":\"http-port\"}]}]}}\n"},"managedFields":[{"manager":"kubectl","operation":"Update","apiVersion":"v1","time":"2021-03-29T23:02:16Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}},"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"echo-server\"}":{".":{},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},"f:resources":{},"f:terminationMessagePath":{},"f:terminationMessagePolicy":{}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:terminationGracePeriodSeconds":{}}}}]},"spec":{"volumes":[{"name":"default-token-rxbqq","secret":{"secretName":"default-token-rxbqq"}}],"containers":[{"name":"echo-server","image":"jmalloc/echo-server","ports":[{"name":"http-port","containerPort":8080,"protocol":"TCP"}],"resources":{},"volumeMounts":[{"name":"default-token-rxbqq","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"Always"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true},"status":{}},"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}"#;

/// The manifests of `deploy/` say what the code does: the CRDs' group, kinds and plurals are
/// those the sync watches, the webhook's path is the one served, the Role covers both kinds.
#[test]
fn k8s_deploy_manifests_match_the_code() {
    use serde::Deserialize;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut docs = Vec::new();
    for f in ["crds.yaml", "controller.yaml", "webhook.yaml"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            docs.push(Value::deserialize(d).unwrap());
        }
    }
    for kind in [
        ObjectKind::NetworkService,
        ObjectKind::NetworkServiceEndpoint,
    ] {
        let ar = sync::resource(kind).unwrap();
        let crd = docs
            .iter()
            .find(|d| {
                d["kind"] == "CustomResourceDefinition" && d["spec"]["names"]["kind"] == ar.kind
            })
            .unwrap_or_else(|| panic!("no CRD for {}", ar.kind));
        assert_eq!(crd["spec"]["group"], ar.group);
        assert_eq!(crd["spec"]["names"]["plural"], ar.plural);
        assert_eq!(crd["spec"]["versions"][0]["name"], ar.version);
        let role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
        assert!(role["rules"][0]["resources"]
            .as_array()
            .unwrap()
            .contains(&json!(ar.plural)));
    }
    let hook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["service"]["path"],
        "/mutate"
    );
    let ctl = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "meshwire")
        .unwrap();
    let args = ctl["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(args.contains(&json!("--k8s-namespace=nsm-system")));
    // Off loopback, both APIs need tokens and TLS (the controller refuses to start otherwise, and
    // gRPC shares the REST certificate); etcd is reached over TLS.
    let has = |prefix: &str| {
        args.iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with(prefix)))
    };
    for need in [
        "--grpc-listen=0.0.0.0",
        "--tokens=",
        "--tls-cert=",
        "--tls-key=",
        "--etcd-ca=",
        "--etcd-cert=",
    ] {
        assert!(has(need), "controller args lack {need}: {args:?}");
    }
    // Every token the table names comes from a variable the container sets, and one of them is
    // the init containers' operator token.
    let table = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "meshwire")
        .unwrap();
    let tokens: Value =
        serde_yaml::from_str(table["data"]["tokens.yaml"].as_str().unwrap()).unwrap();
    let env: Vec<&str> = ctl["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for t in tokens["tokens"].as_array().unwrap() {
        let var = t["tokenEnv"].as_str().unwrap();
        assert!(
            env.contains(&var),
            "token {} reads {var}, which is not set",
            t["name"]
        );
    }
    assert!(tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "nsc" && t["role"] == "operator"));
    // The webhook injects the credentials Secret into the init containers.
    let hook_deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "meshwire-webhook")
        .unwrap();
    let hook_args = hook_deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(hook_args.contains(&json!("--nsc-secret=meshwire-nsc")));
}

/// Input: NetworkServiceEndpoint custom resources whose namespace or name would leave the
/// namespace directory. Output: refused by the same validator as every other door, naming the
/// field; nothing reaches the registry.
#[test]
fn k8s_hostile_names_in_custom_resources_are_refused() {
    for (name, netns, field) in [
        ("gw", "../../proc/1/ns/net", "spec.location.netns"),
        ("gw", "../netns/other", "spec.location.netns"),
        ("a..b/c", "ok", "metadata.name"),
    ] {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networkservicemesh.io/v1",
            "kind": "NetworkServiceEndpoint",
            "metadata": {"name": name, "namespace": "nsm-system"},
            "spec": {"network_service_names": ["vpn"], "location": {"node": "n1", "netns": netns}},
        }))
        .unwrap();
        let e = sync::to_object(ObjectKind::NetworkServiceEndpoint, &o).unwrap_err();
        assert!(e.contains(field), "{name} {netns}: {e}");
    }
}
