//! The registry in Kubernetes: `NetworkService` and `NetworkServiceEndpoint` custom resources
//! (`networkservicemesh.io/v1`, the CRDs of `deploy/crds.yaml`, shaped as upstream NSM's) kept
//! in step with the controller's registry, both ways.
//!
//! - **Kubernetes → registry.** A kube-runtime controller per kind (a reflector watching one
//!   namespace, and a reconcile per object) puts each resource into the registry. A finalizer
//!   (`meshwire.io/registry`) makes deletion go through the registry first: a resource is gone
//!   from Kubernetes only once it is gone from the registry (a service still used by
//!   connections stays, and the deletion is retried). A resource the registry refuses (a bad
//!   spec) is logged with the field at fault and left alone until it changes.
//! - **Registry → Kubernetes.** Objects registered another way (gRPC, REST, eNSMs) are created
//!   as resources labelled `app.kubernetes.io/managed-by: meshwire`, updated while they stay
//!   ours, and deleted when they leave the registry. Resources a user wrote are never
//!   overwritten: for them Kubernetes is the source of truth, re-read every 5 minutes.
//!
//! Names are the resources' names; the registry has one namespace, the one watched.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller as KubeController};
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use meshwire_controller::{Controller, ControllerError, Event, Precondition};
use meshwire_models::{Manifest, Object, ObjectKey, ObjectKind};
use serde_json::{json, Value};

pub const GROUP: &str = "networkservicemesh.io";
pub const FINALIZER: &str = "meshwire.io/registry";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const OURS: &str = "meshwire";
/// How often a resource is re-read even when nothing changed (the registry may have drifted).
pub const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{key}: registry: {source}")]
    Registry {
        key: String,
        #[source]
        source: ControllerError,
    },
    #[error("{key}: Kubernetes API: {source}")]
    Kube {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("{key}: finalizer: {reason}")]
    Finalizer { key: String, reason: String },
}

/// The custom resource of a registry kind.
pub fn resource(kind: ObjectKind) -> Option<ApiResource> {
    let (k, plural) = match kind {
        ObjectKind::NetworkService => ("NetworkService", "networkservices"),
        ObjectKind::NetworkServiceEndpoint => ("NetworkServiceEndpoint", "networkserviceendpoints"),
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", k),
        plural,
    ))
}

/// A resource as a registry object: its document goes through the manifest parser, so the
/// rules and the error messages are the manifests' own.
pub fn to_object(kind: ObjectKind, o: &DynamicObject) -> Result<Object, String> {
    let mut meta = json!({ "name": o.name_any() });
    if !o.labels().is_empty() {
        meta["labels"] = json!(o.labels());
    }
    let doc = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": kind.as_str(),
        "metadata": meta,
        "spec": o.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    let file = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let m = Manifest::parse(&file, &doc.to_string()).map_err(|e| e.to_string())?;
    m.objects
        .into_iter()
        .next()
        .ok_or_else(|| format!("{file}: empty"))
}

/// A registry object as a resource we own.
pub fn to_resource(obj: &Object, ar: &ApiResource, namespace: &str) -> DynamicObject {
    let doc = obj.to_document();
    let mut d = DynamicObject::new(&obj.key().name, ar).within(namespace);
    d.labels_mut().insert(MANAGED_BY.into(), OURS.into());
    d.data = json!({ "spec": doc["spec"].clone() });
    d
}

fn ours(o: &DynamicObject) -> bool {
    o.labels().get(MANAGED_BY).map(String::as_str) == Some(OURS)
}

/// What one reconcile needs.
pub struct Ctx {
    pub ctl: Controller,
    pub api: Api<DynamicObject>,
    pub kind: ObjectKind,
}

/// Kubernetes → registry, for one resource.
pub async fn reconcile(o: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    let key = ObjectKey {
        kind: ctx.kind,
        name: o.name_any(),
    };
    let label = key.to_string();
    let ctl = ctx.ctl.clone();
    let kind = ctx.kind;
    finalizer(&ctx.api, FINALIZER, o, |ev| async move {
        match ev {
            Finalize::Apply(o) => {
                match to_object(kind, &o) {
                    // What the registry already holds (our own resources among them): nothing
                    // to do.
                    Ok(obj) if ctl.object(&key).as_ref() == Some(&obj) => {}
                    Ok(obj) => {
                        // Custom resources may hold operator objects only (an endpoint on a
                        // device is its eNSM's or an admin's).
                        if let Err(e) = crate::policy::Caller::kubernetes().may_put(&ctl, &obj) {
                            tracing::warn!(object = %key, error = %e, "resource refused");
                            return Ok(Action::requeue(RESYNC));
                        }
                        let applied = ctl.put_object(obj, Precondition::Any).await.map_err(|source| {
                            SyncError::Registry { key: key.to_string(), source }
                        })?;
                        tracing::debug!(object = %key, change = ?applied.change, "from Kubernetes");
                    }
                    // A bad spec: say so and wait for the resource to change.
                    Err(e) => tracing::warn!(object = %key, error = %e, "resource refused"),
                }
                Ok(Action::requeue(RESYNC))
            }
            Finalize::Cleanup(_) => {
                match ctl.delete_object(&key, Precondition::Any).await {
                    Ok(()) | Err(ControllerError::NotFound { .. }) => {
                        tracing::info!(object = %key, "deleted in Kubernetes: removed from the registry");
                        Ok(Action::await_change())
                    }
                    Err(source) => Err(SyncError::Registry { key: key.to_string(), source }),
                }
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => SyncError::Finalizer {
            key: label,
            reason: other.to_string(),
        },
    })
}

fn error_policy(_: Arc<DynamicObject>, e: &SyncError, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "Kubernetes sync failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// Registry → Kubernetes, for one object (after it changed in the registry).
pub async fn push(
    ctl: &Controller,
    api: &Api<DynamicObject>,
    ar: &ApiResource,
    namespace: &str,
    key: &ObjectKey,
) -> Result<(), SyncError> {
    let kerr = |source| SyncError::Kube {
        key: key.to_string(),
        source,
    };
    let current = api.get_opt(&key.name).await.map_err(kerr)?;
    match (ctl.object(key), current) {
        (Some(obj), None) => {
            api.create(&PostParams::default(), &to_resource(&obj, ar, namespace))
                .await
                .map_err(kerr)?;
            tracing::info!(object = %key, "registered elsewhere: created in Kubernetes");
        }
        (Some(obj), Some(cur)) if ours(&cur) => {
            let want = to_resource(&obj, ar, namespace);
            if cur.data.get("spec") != want.data.get("spec") {
                api.patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": want.data["spec"] })),
                )
                .await
                .map_err(kerr)?;
                tracing::info!(object = %key, "updated in Kubernetes");
            }
        }
        (None, Some(cur)) if ours(&cur) && cur.metadata.deletion_timestamp.is_none() => {
            api.delete(&key.name, &DeleteParams::default())
                .await
                .map_err(kerr)?;
            tracing::info!(object = %key, "left the registry: deleted in Kubernetes");
        }
        // A user's resource (Kubernetes is its source of truth), or nothing on either side.
        _ => {}
    }
    Ok(())
}

/// Runs both directions for both kinds in `namespace` until the process ends.
pub async fn run(client: Client, namespace: String, ctl: Controller) {
    let mut tasks = Vec::new();
    for kind in [
        ObjectKind::NetworkService,
        ObjectKind::NetworkServiceEndpoint,
    ] {
        let Some(ar) = resource(kind) else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        let ctx = Arc::new(Ctx {
            ctl: ctl.clone(),
            api: api.clone(),
            kind,
        });
        tasks.push(tokio::spawn(
            KubeController::new_with(api, watcher::Config::default(), ar)
                .run(reconcile, error_policy, ctx)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "reconcile");
                    }
                }),
        ));
    }
    tasks.push(tokio::spawn(pusher(client, namespace, ctl)));
    futures::future::join_all(tasks).await;
}

/// Registry → Kubernetes: everything at start, then each change.
pub async fn pusher(client: Client, namespace: String, ctl: Controller) {
    let mut events = ctl.subscribe();
    let apis: Vec<(ObjectKind, ApiResource, Api<DynamicObject>)> = [
        ObjectKind::NetworkService,
        ObjectKind::NetworkServiceEndpoint,
    ]
    .into_iter()
    .filter_map(|k| {
        let ar = resource(k)?;
        let api = Api::namespaced_with(client.clone(), &namespace, &ar);
        Some((k, ar, api))
    })
    .collect();
    let one = |key: ObjectKey| {
        let apis = &apis;
        let ctl = &ctl;
        let namespace = &namespace;
        async move {
            // A vL3 imported from another domain (`service@domain`): its home's object, and no
            // Kubernetes name can hold the `@`. It stays in the registry.
            if key.name.contains('@') {
                return;
            }
            if let Some((_, ar, api)) = apis.iter().find(|(k, _, _)| *k == key.kind) {
                if let Err(e) = push(ctl, api, ar, namespace, &key).await {
                    tracing::warn!(error = %e, "registry → Kubernetes");
                }
            }
        }
    };
    for (kind, _, _) in &apis {
        for o in ctl.objects(*kind) {
            one(o.key()).await;
        }
    }
    loop {
        match events.recv().await {
            Ok(Event::Object { key, .. }) => {
                if let Some(k) = parse_key(&key) {
                    one(k).await;
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "registry events lagged: pushing everything again"
                );
                for (kind, _, _) in &apis {
                    for o in ctl.objects(*kind) {
                        one(o.key()).await;
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `Kind/name` (the events' form) back into a key.
pub fn parse_key(key: &str) -> Option<ObjectKey> {
    let (kind, name) = key.split_once('/')?;
    let kind = match kind {
        "NetworkService" => ObjectKind::NetworkService,
        "NetworkServiceEndpoint" => ObjectKind::NetworkServiceEndpoint,
        _ => return None,
    };
    Some(ObjectKey {
        kind,
        name: name.to_string(),
    })
}
