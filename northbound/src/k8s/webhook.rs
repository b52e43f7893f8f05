//! The mutating admission webhook: a pod (or a pod template of a Deployment, DaemonSet,
//! StatefulSet, ReplicaSet or Job) annotated `networkservicemesh.io: kernel://vpn-gateway/nsm-1?app=foo`
//! (upstream's format, several comma-separated) gets an init container that requests those
//! services before the app starts (`meshwire nsc-init`, reading `NSM_NETWORK_SERVICES` as
//! upstream's cmd-nsc-init does).
//!
//! The answer is an `admission.k8s.io/v1` AdmissionReview whose `patch` is a base64 RFC 6902
//! JSON patch. A malformed annotation is refused with the reason (the pod would otherwise start
//! without its network). Anything else (other operations, kinds, pods without the annotation)
//! is allowed unchanged. Served over HTTPS only (the API server requires it).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use meshwire_models::nsurl::NsUrl;

/// The annotation, as upstream names it.
pub const ANNOTATION: &str = "networkservicemesh.io";
/// The URL label naming the SR-IOV device plugin resource a service's VF comes from
/// (upstream's `sriovToken`).
pub const SRIOV_TOKEN_LABEL: &str = "sriovToken";
/// The variable the init container reads the URLs from, as upstream names it.
pub const ENV: &str = "NSM_NETWORK_SERVICES";
/// The init container's name.
pub const INIT_NAME: &str = "meshwire-nsc-init";

/// What the injected init container looks like.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The image holding the `meshwire` binary.
    pub image: String,
    /// The controller's gRPC address the init container requests from.
    pub controller_grpc: String,
    /// A Secret in the pod's namespace with keys `token` (a bearer token with role operator) and
    /// `ca.crt` (the CA of the controller's certificate): mounted into the init container, which
    /// then speaks TLS and sends the token. `None`: a plain, open gRPC API (a lab).
    pub credentials: Option<String>,
}

/// Where the credentials Secret is mounted in the init container.
pub const CREDENTIALS_DIR: &str = "/var/run/meshwire";
/// The name of the injected volume.
pub const CREDENTIALS_VOLUME: &str = "meshwire-nsc-credentials";

/// The webhook's routes: `POST /mutate`, and `/healthz`.
pub fn router(inj: Injection) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(move |body: Bytes| {
                let inj = inj.clone();
                async move { mutate(&inj, &body) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
}

fn mutate(inj: &Injection, body: &Bytes) -> Response {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {e}"),
            )
                .into_response()
        }
    };
    let Some(req) = review.get("request") else {
        return (StatusCode::BAD_REQUEST, "AdmissionReview without request").into_response();
    };
    let uid = req["uid"].as_str().unwrap_or_default().to_string();
    let api_version = review["apiVersion"]
        .as_str()
        .unwrap_or("admission.k8s.io/v1")
        .to_string();
    let response = match review_request(inj, req) {
        Ok(None) => json!({ "uid": uid, "allowed": true }),
        Ok(Some(patch)) => {
            let bytes = serde_json::to_vec(&patch).unwrap_or_default();
            tracing::info!(%uid, name = %req["name"].as_str().unwrap_or(""), namespace = %req["namespace"].as_str().unwrap_or(""), "injected the NSM init container");
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        }
        Err(reason) => {
            tracing::warn!(%uid, %reason, "refused");
            json!({
                "uid": uid,
                "allowed": false,
                "status": { "code": 400, "reason": "BadRequest", "message": reason },
            })
        }
    };
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response()
}

/// The JSON patch for one admission request, `None` when nothing is to change.
pub fn review_request(inj: &Injection, req: &Value) -> Result<Option<Value>, String> {
    if req["operation"].as_str() != Some("CREATE") {
        return Ok(None);
    }
    let kind = req["kind"]["kind"].as_str().unwrap_or("");
    let obj = &req["object"];
    // Where the pod spec lives: the object itself for a pod, its template for workloads.
    let (meta_ptr, spec_ptr) = match kind {
        "Pod" => ("/metadata", "/spec"),
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            ("/spec/template/metadata", "/spec/template/spec")
        }
        _ => return Ok(None),
    };
    let annotation = obj
        .pointer(&format!("{meta_ptr}/annotations/{ANNOTATION}"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if annotation.trim().is_empty() {
        return Ok(None);
    }
    let urls =
        NsUrl::parse_list(annotation).map_err(|e| format!("annotation {ANNOTATION}: {e}"))?;
    let spec = obj.pointer(spec_ptr).cloned().unwrap_or(json!({}));
    let inits = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if inits.iter().any(|c| c["name"] == INIT_NAME) {
        return Ok(None); // already injected (a re-run of the webhook)
    }
    let services: Vec<&str> = urls.iter().map(|u| u.service.as_str()).collect();
    // `?sriovToken=<domain>/<capability>`: the init container asks for one device of that
    // device plugin resource per URL naming it, so the kubelet hands it the tokens
    // (NSM_SRIOV_TOKENS_<pool>); an init container's devices are the pod's (the kubelet
    // reuses them for the app containers), so the pod asks for no more than before.
    let mut pools: std::collections::BTreeMap<String, u64> = Default::default();
    for u in &urls {
        if let Some(pool) = u.labels.get(SRIOV_TOKEN_LABEL) {
            meshwire_models::sriov::check_pool_name(pool)
                .map_err(|e| format!("annotation {ANNOTATION}: {SRIOV_TOKEN_LABEL}: {e}"))?;
            *pools.entry(pool.clone()).or_default() += 1;
        }
    }
    let mut container = json!({
        "name": INIT_NAME,
        "image": inj.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["meshwire", "nsc-init"],
        "env": [
            { "name": ENV, "value": annotation },
            { "name": "MESHWIRE_GRPC", "value": inj.controller_grpc },
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
        ],
        // It creates the pod's interfaces: NET_ADMIN in the pod's own network namespace.
        "securityContext": { "capabilities": { "add": ["NET_ADMIN"] } },
        "resources": {
            "requests": { "cpu": "50m", "memory": "32Mi" },
            "limits": { "cpu": "200m", "memory": "64Mi" },
        },
    });
    for (pool, n) in &pools {
        container["resources"]["requests"][pool] = json!(n.to_string());
        container["resources"]["limits"][pool] = json!(n.to_string());
    }
    if inj.credentials.is_some() {
        if let Some(env) = container["env"].as_array_mut() {
            env.push(json!({ "name": "MESHWIRE_TOKEN_FILE", "value": format!("{CREDENTIALS_DIR}/token") }));
            env.push(
                json!({ "name": "MESHWIRE_CA_CERT", "value": format!("{CREDENTIALS_DIR}/ca.crt") }),
            );
        }
        container["volumeMounts"] =
            json!([{ "name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": true }]);
    }
    let mut ops = Vec::new();
    if spec.get("initContainers").is_some_and(Value::is_array) {
        // Before the app's own init containers, so they already see the interfaces.
        ops.push(json!({ "op": "add", "path": format!("{spec_ptr}/initContainers/0"), "value": container }));
    } else {
        ops.push(json!({ "op": "add", "path": format!("{spec_ptr}/initContainers"), "value": [container] }));
    }
    if let Some(secret) = &inj.credentials {
        let volume = json!({ "name": CREDENTIALS_VOLUME, "secret": { "secretName": secret } });
        if spec.get("volumes").is_some_and(Value::is_array) {
            ops.push(
                json!({ "op": "add", "path": format!("{spec_ptr}/volumes/-"), "value": volume }),
            );
        } else {
            ops.push(
                json!({ "op": "add", "path": format!("{spec_ptr}/volumes"), "value": [volume] }),
            );
        }
    }
    let label_path = format!("{meta_ptr}/labels");
    let label = json!("true");
    if obj.pointer(&label_path).is_some_and(Value::is_object) {
        ops.push(json!({ "op": "add", "path": format!("{label_path}/meshwire.io~1nsc"), "value": label }));
    } else {
        ops.push(json!({ "op": "add", "path": label_path, "value": { "meshwire.io/nsc": label } }));
    }
    tracing::debug!(services = ?services, kind, "patch built");
    Ok(Some(Value::Array(ops)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inj() -> Injection {
        Injection {
            image: "ghcr.io/meshwire/meshwire:0.1".into(),
            controller_grpc: "meshwire.nsm-system:7601".into(),
            credentials: None,
        }
    }

    #[test]
    fn deployment_template_is_patched() {
        let req = json!({
            "operation": "CREATE", "kind": {"kind": "Deployment"},
            "object": {"spec": {"template": {
                "metadata": {"annotations": {ANNOTATION: "kernel://vpn/nsm-1"}},
                "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "own"}]}}}}
        });
        let p = review_request(&inj(), &req).unwrap().unwrap();
        assert_eq!(p[0]["path"], "/spec/template/spec/initContainers/0");
        assert_eq!(p[1]["path"], "/spec/template/metadata/labels");
        let mut obj = req["object"].clone();
        json_patch::patch(
            &mut obj,
            &serde_json::from_value::<json_patch::Patch>(p).unwrap(),
        )
        .unwrap();
        let inits = obj["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap();
        assert_eq!(
            (inits[0]["name"].as_str(), inits[1]["name"].as_str()),
            (Some(INIT_NAME), Some("own"))
        );
    }

    /// Input: a pod with a volume of its own, and a webhook configured with the credentials
    /// Secret. Output: the init container mounts the Secret and is told where the token and CA
    /// are; the pod's own volume stays.
    #[test]
    fn nb_sriov_token_urls_ask_the_kubelet_for_devices_of_their_pool() {
        let req = json!({
            "operation": "CREATE", "kind": {"kind": "Pod"},
            "object": {"metadata": {"annotations": {ANNOTATION:
                "kernel://a/nsm-1?sriovToken=worker.domain/10G,kernel://b/nsm-2?sriovToken=worker.domain/10G"}},
                "spec": {"containers": [{"name": "app"}]}}
        });
        let p = review_request(&inj(), &req).unwrap().unwrap();
        let init = &p[0]["value"][0];
        assert_eq!(init["resources"]["limits"]["worker.domain/10G"], "2");
        assert_eq!(init["resources"]["requests"]["worker.domain/10G"], "2");
        let bad = json!({
            "operation": "CREATE", "kind": {"kind": "Pod"},
            "object": {"metadata": {"annotations": {ANNOTATION: "kernel://a?sriovToken=nodomain"}},
                "spec": {"containers": [{"name": "app"}]}}
        });
        let e = review_request(&inj(), &bad).unwrap_err();
        assert!(e.contains("sriovToken"), "{e}");
    }

    #[test]
    fn nb_credentials_secret_is_mounted_for_the_init_container() {
        let inj = Injection {
            credentials: Some("meshwire-nsc".into()),
            ..inj()
        };
        let req = json!({
            "operation": "CREATE", "kind": {"kind": "Pod"},
            "object": {"metadata": {"annotations": {ANNOTATION: "kernel://vpn/nsm-1"}},
                "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "own"}]}}
        });
        let p = review_request(&inj, &req).unwrap().unwrap();
        let mut obj = req["object"].clone();
        json_patch::patch(
            &mut obj,
            &serde_json::from_value::<json_patch::Patch>(p).unwrap(),
        )
        .unwrap();
        let vols = obj["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols[0]["name"], "own");
        assert_eq!(vols[1]["secret"]["secretName"], "meshwire-nsc");
        let init = &obj["spec"]["initContainers"][0];
        assert_eq!(init["volumeMounts"][0]["name"], CREDENTIALS_VOLUME);
        let env = init["env"].as_array().unwrap();
        let var = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            var("MESHWIRE_TOKEN_FILE"),
            Some(json!("/var/run/meshwire/token"))
        );
        assert_eq!(
            var("MESHWIRE_CA_CERT"),
            Some(json!("/var/run/meshwire/ca.crt"))
        );
    }

    #[test]
    fn others_pass_unchanged() {
        for req in [
            json!({"operation": "UPDATE", "kind": {"kind": "Pod"}, "object": {"metadata": {"annotations": {ANNOTATION: "kernel://vpn"}}}}),
            json!({"operation": "CREATE", "kind": {"kind": "Service"}, "object": {}}),
            json!({"operation": "CREATE", "kind": {"kind": "Pod"}, "object": {"metadata": {"annotations": {"other": "x"}}}}),
        ] {
            assert_eq!(review_request(&inj(), &req), Ok(None));
        }
    }
}
