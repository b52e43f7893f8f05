//! The controller: one state owner, a store, a driver and a reconcile loop.
//!
//! ```text
//!  northbound (REST, CLI) ──request/close/apply──▶ Controller ──plan (pure)──▶ State (mutex)
//!                                                     │  ▲
//!                                    write-ahead put  │  │ restore at start
//!                                                     ▼  │
//!                                                   Store (redb | etcd | memory)
//!                                                     │
//!                    Desired: delta (versioned)       ▼      ▲ events (device, switch, interface)
//!                                                   Driver (southbound)
//!  reconcile loop (every interval, or at an event) ── full set ──▶ swept, Report per connection
//!                       ──▶ repair in place | heal elsewhere | close | expire
//! ```
//!
//! Life of a request: take the per-(client, service) lock; plan under the state mutex (select,
//! path, negotiate, claim); record the connection as `programming` in the store *before* touching
//! the data plane (so a crash leaves a record the reconcile loop finishes or cleans); hand the
//! driver a delta that wires it; record `up`. If the driver fails, its partial work is removed, the claims
//! are given back and the record deleted: a failed request leaks nothing.
//!
//! Guarantees: connection records in the store are a superset of what the data plane may hold;
//! claims are derived from records, so a restart restores them exactly; the state mutex is never
//! held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use meshwire_models::{
    Connection, ConnectionState, Manifest, NetworkService, Object, ObjectKey, Topology,
};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::driver::Driver;
use crate::error::ControllerError;
use crate::state::{Change, Config, State};
use crate::store::{Expect, Store};

pub(crate) const OBJECTS: &str = "/meshwire/v1/objects/";
pub(crate) const CONNECTIONS: &str = "/meshwire/v1/connections/";

/// Reads everything `store` holds into a new state; with the revision to watch from (the
/// first list's: a change between the two lists is then seen again, which is harmless).
pub(crate) async fn load(
    store: &dyn Store,
    config: Config,
) -> Result<(State, crate::store::Revision), ControllerError> {
    let mut state = State::new(config);
    let (objects, at) = store.list(OBJECTS).await?;
    for e in &objects {
        let obj: Object =
            serde_json::from_slice(&e.value).map_err(|err| ControllerError::Corrupt {
                key: e.key.clone(),
                reason: err.to_string(),
            })?;
        state.upsert(obj);
    }
    let (conns, _) = store.list(CONNECTIONS).await?;
    for e in &conns {
        let c: Connection =
            serde_json::from_slice(&e.value).map_err(|err| ControllerError::Corrupt {
                key: e.key.clone(),
                reason: err.to_string(),
            })?;
        state.restore(c).map_err(|err| ControllerError::Corrupt {
            key: e.key.clone(),
            reason: err.to_string(),
        })?;
    }
    Ok((state, at))
}

/// Something that happened, for watchers (SSE, logs, tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Connection {
        id: String,
        state: ConnectionState,
        endpoint: String,
        detail: Option<String>,
    },
    Object {
        key: String,
        change: String,
    },
    /// An endpoint was withdrawn (down) or came back.
    Endpoint {
        name: String,
        down: bool,
        reason: String,
    },
    /// A driver reported something in the data plane (a device down, a switch reconnected, an
    /// interface gone); the reconcile loop looks at once.
    DataPlane {
        scope: String,
        happened: crate::driver::Happened,
        detail: String,
    },
    /// An underlay link went down or came back, as the data plane at one of its ends saw it.
    Link {
        name: String,
        up: bool,
        reason: String,
    },
}

/// One object applied or deleted.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub key: String,
    pub change: Change,
}

/// An endpoint as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    #[serde(flatten)]
    pub endpoint: meshwire_models::NetworkServiceEndpoint,
    pub down: bool,
    pub connections: u32,
}

/// What one reconcile round did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReconcileReport {
    pub expired: Vec<String>,
    pub repaired: Vec<String>,
    pub healed: Vec<String>,
    pub closed: Vec<String>,
    pub still_healing: Vec<String>,
    /// Abandoned requests (a `programming` record no request owns) that were undone.
    pub undone: Vec<String>,
    /// What failed this round and is retried next round (connection ids, objects, `(observe)`).
    pub failed: Vec<String>,
    /// Connections left alone this round: they wait after a failed repair or heal.
    pub deferred: Vec<String>,
}

impl ReconcileReport {
    /// Nothing happened (connections only waiting out a backoff count as nothing).
    pub fn is_quiet(&self) -> bool {
        ReconcileReport {
            deferred: vec![],
            ..self.clone()
        } == ReconcileReport::default()
    }
}

/// Filters for listing connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub service: Option<String>,
    pub node: Option<String>,
    pub state: Option<ConnectionState>,
    pub endpoint: Option<String>,
}

/// What an object write expects of the stored object ([`Controller::put_object`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    Any,
    /// Only create (`If-None-Match: *`, or a POST).
    Absent,
    /// Only replace (`If-Match: *`).
    Exists,
    /// Only when the stored object's [`Object::etag`] is one of these (`If-Match`).
    Matches(Vec<String>),
}

#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

/// One async lock per (client workload, service).
type KeyLocks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) locks: Mutex<KeyLocks>,
    pub(crate) events: broadcast::Sender<Event>,
    /// One reconcile round at a time (the periodic one and those an endpoint withdrawal runs).
    pub(crate) reconciling: tokio::sync::Mutex<()>,
    /// One object write at a time, so a conditional write sees what it replaces.
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// Data-plane operations that failed (apply, remove, repair, heal), for metrics.
    pub(crate) driver_errors: std::sync::atomic::AtomicU64,
    /// Connections a request is setting up right now: a `programming` record not in here was
    /// abandoned (a crash, a cancelled caller) and reconcile undoes it.
    pub(crate) in_flight: Mutex<std::collections::HashSet<String>>,
    /// Connections waiting after a failed repair or heal (see [`crate::requeue`]).
    pub(crate) requeue: Mutex<crate::requeue::Requeues>,
    /// The desired state's version (see [`crate::desired`]).
    pub(crate) version: std::sync::atomic::AtomicU64,
    /// Links the data plane reported down, with why (see [`crate::links`]).
    pub(crate) links_down: Mutex<std::collections::BTreeMap<String, String>>,
    /// How each node agent stands, as its events said (see [`crate::links`]).
    pub(crate) agents: Mutex<std::collections::BTreeMap<String, crate::links::AgentState>>,
    /// One vL3 mesh sync at a time, with the pairs of routers whose joining failed: (failures,
    /// not before this time in ms), so a router that cannot be reached is not asked every
    /// round (see [`crate::vl3`]).
    pub(crate) vl3: tokio::sync::Mutex<crate::vl3::Retries>,
    /// This controller's domain and the domains it federates with (see [`crate::federation`]).
    pub(crate) federation: std::sync::OnceLock<crate::federation::Federation>,
    /// Other domains' sides of shared vL3s.
    pub(crate) federated: tokio::sync::Mutex<crate::federation::Views>,
    /// Counts changes of the vL3s (members, routers, legs): an exchange under way is sent
    /// again, and a home holding an exchange answers (see [`crate::federation`]).
    pub(crate) federation_wake: tokio::sync::watch::Sender<u64>,
}

pub(crate) fn is_topology(kind: meshwire_models::ObjectKind) -> bool {
    use meshwire_models::ObjectKind as K;
    matches!(kind, K::Node | K::Link | K::Device)
}

fn object_key(key: &ObjectKey) -> String {
    format!("{OBJECTS}{}/{}", key.kind, key.name)
}

pub(crate) fn connection_key(id: &str) -> String {
    format!("{CONNECTIONS}{id}")
}

impl Controller {
    /// Starts a controller over `store`, restoring everything it holds.
    pub async fn start(
        store: Arc<dyn Store>,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Result<Controller, ControllerError> {
        let (state, _) = load(&*store, config).await?;
        tracing::info!(store = %store.describe(), driver = driver.name(), connections = state.connection_count(), "controller state restored");
        if let Err(e) = driver.topology(state.topology()).await {
            tracing::warn!(error = %e, "data plane could not take the topology yet; retried at the next change");
        }
        let held: Vec<Connection> = state
            .connections()
            .filter(|c| !c.state.is_final())
            .cloned()
            .collect();
        // The first full set: what a crash left in the data plane goes before anything else is
        // wired (its observation is the first reconcile round's to act on).
        let version = crate::desired::first_version();
        let first = crate::driver::Desired::full(crate::driver::Scope::All, version, held);
        match tokio::time::timeout(crate::reconcile::OBSERVE_TIMEOUT, driver.converge(&first)).await
        {
            Ok(Ok(r)) if r.swept > 0 => {
                tracing::info!(
                    swept = r.swept,
                    "removed what a crash left in the data plane"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the data plane did not take the first full set; the first reconcile round sends it again")
            }
            Err(_) => {
                tracing::warn!(timeout = ?crate::reconcile::OBSERVE_TIMEOUT, "the data plane did not answer the first full set; the first reconcile round sends it again")
            }
        }
        let ctl = Controller::assemble(state, store, driver, clock);
        ctl.inner
            .version
            .store(version, std::sync::atomic::Ordering::SeqCst);
        Ok(ctl)
    }

    /// A controller around `state`, nothing started.
    pub(crate) fn assemble(
        state: State,
        store: Arc<dyn Store>,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
    ) -> Controller {
        let (events, _) = broadcast::channel(4096);
        Controller {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                store,
                driver,
                clock,
                locks: Mutex::default(),
                events,
                reconciling: tokio::sync::Mutex::new(()),
                writes: tokio::sync::Mutex::new(()),
                driver_errors: std::sync::atomic::AtomicU64::new(0),
                in_flight: Mutex::default(),
                requeue: Mutex::default(),
                version: std::sync::atomic::AtomicU64::new(1),
                links_down: Mutex::default(),
                agents: Mutex::default(),
                vl3: tokio::sync::Mutex::default(),
                federation: std::sync::OnceLock::new(),
                federated: tokio::sync::Mutex::default(),
                federation_wake: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    pub(crate) fn emit(&self, ev: Event) {
        let _ = self.inner.events.send(ev);
    }

    /// How many data-plane operations have failed since start.
    pub fn driver_errors(&self) -> u64 {
        self.inner
            .driver_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn driver_failed(&self) {
        self.inner
            .driver_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn store_name(&self) -> String {
        self.inner.store.describe()
    }

    pub fn driver_name(&self) -> String {
        self.inner.driver.name().to_string()
    }

    /// Serializes work on one client's connections to one service.
    pub(crate) async fn lock_key(
        &self,
        workload: &str,
        service: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() > 4096 {
                locks.retain(|_, m| Arc::strong_count(m) > 1);
            }
            locks
                .entry((workload.to_string(), service.to_string()))
                .or_default()
                .clone()
        };
        m.lock_owned().await
    }

    pub(crate) async fn persist(&self, c: &Connection) -> Result<(), ControllerError> {
        let bytes = serde_json::to_vec(c).map_err(|e| ControllerError::Corrupt {
            key: connection_key(&c.id),
            reason: e.to_string(),
        })?;
        self.inner
            .store
            .put(&connection_key(&c.id), bytes, Expect::Any)
            .await?;
        Ok(())
    }

    // ---- objects ----------------------------------------------------------------------------

    /// Applies every object of a manifest: stored first, then made live.
    /// Hands the driver the current topology (after a node, device or link changed).
    pub(crate) async fn push_topology(&self) {
        let t = self.topology();
        if let Err(e) = self.inner.driver.topology(&t).await {
            tracing::warn!(error = %e, "data plane could not take the topology; retried at the next change");
        }
    }

    pub async fn apply(&self, manifest: Manifest) -> Result<Vec<Applied>, ControllerError> {
        let topo_changed = manifest.objects.iter().any(|o| is_topology(o.key().kind));
        let out = self.apply_objects(manifest).await;
        if topo_changed {
            self.push_topology().await;
        }
        out
    }

    async fn apply_objects(&self, manifest: Manifest) -> Result<Vec<Applied>, ControllerError> {
        let _w = self.inner.writes.lock().await;
        self.apply_locked(manifest).await
    }

    async fn apply_locked(&self, manifest: Manifest) -> Result<Vec<Applied>, ControllerError> {
        // Every way in (files, REST, gRPC, custom resources, eNSMs) ends here: nothing is
        // stored that the validator refuses, and a refused object stores none of the batch.
        for obj in &manifest.objects {
            obj.validate().map_err(|e| ControllerError::Invalid {
                what: obj.key().to_string(),
                field: e.field,
                rule: e.rule,
            })?;
        }
        let mut out = Vec::new();
        for obj in manifest.objects {
            let key = obj.key();
            let bytes = serde_json::to_vec(&obj).map_err(|e| ControllerError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            self.inner
                .store
                .put(&object_key(&key), bytes, Expect::Any)
                .await?;
            let change = self.state().upsert(obj);
            if change != Change::Unchanged {
                tracing::info!(object = %key, ?change, "applied");
                self.emit(Event::Object {
                    key: key.to_string(),
                    change: format!("{change:?}").to_lowercase(),
                });
            }
            out.push(Applied {
                key: key.to_string(),
                change,
            });
        }
        Ok(out)
    }

    /// Deletes objects. Endpoints and links go at once (their connections heal); a service, node
    /// or device still in use is refused.
    pub async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Applied>, ControllerError> {
        let out = self.delete_objects(keys).await;
        if keys.iter().any(|k| is_topology(k.kind)) {
            self.push_topology().await;
        }
        out
    }

    async fn delete_objects(&self, keys: &[ObjectKey]) -> Result<Vec<Applied>, ControllerError> {
        let _w = self.inner.writes.lock().await;
        self.delete_locked(keys).await
    }

    async fn delete_locked(&self, keys: &[ObjectKey]) -> Result<Vec<Applied>, ControllerError> {
        let mut out = Vec::new();
        for key in keys {
            // Out of memory first (this also checks it is not in use, and no request plans
            // onto it meanwhile), out of the store next; when the store cannot delete it, it
            // goes back, so memory never says less than the store, which a restart would
            // bring back.
            let removed = self.state().remove(key)?;
            if let Err(e) = self.inner.store.delete(&object_key(key), Expect::Any).await {
                tracing::warn!(object = %key, error = %e, "the store could not delete the object; it stays");
                self.state().upsert(removed);
                return Err(e.into());
            }
            tracing::info!(object = %key, "deleted");
            self.emit(Event::Object {
                key: key.to_string(),
                change: "deleted".into(),
            });
            out.push(Applied {
                key: key.to_string(),
                change: Change::Updated,
            });
        }
        Ok(out)
    }

    /// The object stored under `key`.
    pub fn object(&self, key: &ObjectKey) -> Option<Object> {
        self.state().object(key)
    }

    /// Every object of `kind`, by name.
    pub fn objects(&self, kind: meshwire_models::ObjectKind) -> Vec<Object> {
        self.state().objects(kind)
    }

    /// Writes one object if `cond` holds for what is stored now (checked and written under the
    /// write lock, so two conditional writers cannot both win). Returns the change.
    pub async fn put_object(
        &self,
        obj: Object,
        cond: Precondition,
    ) -> Result<Applied, ControllerError> {
        let key = obj.key();
        let topo = is_topology(key.kind);
        let out = {
            let _w = self.inner.writes.lock().await;
            self.check(&key, &cond)?;
            self.apply_locked(Manifest {
                objects: vec![obj],
                warnings: vec![],
            })
            .await
        };
        if topo {
            self.push_topology().await;
        }
        out?.pop().ok_or(ControllerError::NotFound {
            key: key.to_string(),
        })
    }

    /// Deletes one object if `cond` holds (see [`Controller::put_object`]).
    pub async fn delete_object(
        &self,
        key: &ObjectKey,
        cond: Precondition,
    ) -> Result<(), ControllerError> {
        let out = {
            let _w = self.inner.writes.lock().await;
            self.check(key, &cond)?;
            if self.object(key).is_none() {
                return Err(ControllerError::NotFound {
                    key: key.to_string(),
                });
            }
            self.delete_locked(std::slice::from_ref(key)).await
        };
        if is_topology(key.kind) {
            self.push_topology().await;
        }
        out.map(|_| ())
    }

    fn check(&self, key: &ObjectKey, cond: &Precondition) -> Result<(), ControllerError> {
        let current = self.object(key).map(|o| o.etag());
        match (cond, current) {
            (Precondition::Any, _) | (Precondition::Absent, None) => Ok(()),
            (Precondition::Absent, Some(_)) => Err(ControllerError::AlreadyExists {
                key: key.to_string(),
            }),
            (Precondition::Exists, None) | (Precondition::Matches(_), None) => {
                Err(ControllerError::NotFound {
                    key: key.to_string(),
                })
            }
            (Precondition::Exists, Some(_)) => Ok(()),
            (Precondition::Matches(want), Some(have)) => {
                if want.contains(&have) {
                    Ok(())
                } else {
                    Err(ControllerError::PreconditionFailed {
                        key: key.to_string(),
                        expected: want.join(" or "),
                        actual: have,
                    })
                }
            }
        }
    }

    pub fn services(&self) -> Vec<NetworkService> {
        self.state().services().into_iter().cloned().collect()
    }

    /// Endpoints offering `service` (any when `None`) whose labels for it contain `selector`
    /// (registry find with label filters).
    pub fn find_endpoints(
        &self,
        service: Option<&str>,
        selector: &meshwire_models::Labels,
    ) -> Vec<EndpointView> {
        self.endpoints()
            .into_iter()
            .filter(|v| {
                let e = &v.endpoint;
                let services: Vec<&String> = match service {
                    Some(s) => e.network_service_names.iter().filter(|n| *n == s).collect(),
                    None => e.network_service_names.iter().collect(),
                };
                services.iter().any(|s| {
                    crate::select::selector_matches(e.labels_for(s), selector, &Default::default())
                })
            })
            .collect()
    }

    pub fn endpoints(&self) -> Vec<EndpointView> {
        let s = self.state();
        s.endpoints()
            .into_iter()
            .map(|e| EndpointView {
                endpoint: e.nse.clone(),
                down: e.down,
                connections: s.load_of(&e.nse.name),
            })
            .collect()
    }

    pub fn topology(&self) -> Topology {
        self.state().topology().clone()
    }

    pub fn pool_usage(&self) -> std::collections::BTreeMap<&'static str, usize> {
        self.state().pool_usage()
    }

    pub fn connections(&self, f: &ConnectionFilter) -> Vec<Connection> {
        let s = self.state();
        let mut v: Vec<Connection> = s
            .connections()
            .filter(|c| f.service.as_ref().is_none_or(|x| *x == c.network_service))
            .filter(|c| {
                f.node
                    .as_ref()
                    .is_none_or(|x| *x == c.client.node || c.path.iter().any(|p| p.name == *x))
            })
            .filter(|c| f.state.is_none_or(|x| x == c.state))
            .filter(|c| {
                f.endpoint
                    .as_ref()
                    .is_none_or(|x| *x == c.network_service_endpoint_name)
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        v
    }

    pub fn connection(&self, id: &str) -> Option<Connection> {
        self.state().connection(id).cloned()
    }

    pub fn connection_count(&self) -> usize {
        self.state().connection_count()
    }

    /// Whether the store answers.
    pub async fn ready(&self) -> Result<(), ControllerError> {
        Ok(self.inner.store.health().await?)
    }

    /// Marks an endpoint down (withdrawn: no new connections, and its connections heal onto
    /// another endpoint at once) or up again. The registration is kept either way. Returns
    /// whether anything changed; an unknown endpoint is an error.
    pub async fn set_endpoint_down(
        &self,
        name: &str,
        down: bool,
        reason: &str,
    ) -> Result<bool, ControllerError> {
        let changed = {
            let mut s = self.state();
            let was =
                s.endpoint(name)
                    .map(|e| e.down)
                    .ok_or_else(|| ControllerError::NotFound {
                        key: format!("NetworkServiceEndpoint/{name}"),
                    })?;
            s.set_endpoint_down(name, down);
            was != down
        };
        if changed {
            if down {
                tracing::warn!(endpoint = %name, %reason, "endpoint withdrawn");
            } else {
                tracing::info!(endpoint = %name, %reason, "endpoint back");
            }
            self.emit(Event::Endpoint {
                name: name.to_string(),
                down,
                reason: reason.to_string(),
            });
            let affected = self
                .state()
                .connections()
                .any(|c| c.network_service_endpoint_name == name && !c.state.is_final());
            if down && affected {
                // Heal now rather than at the next tick.
                let this = self.clone();
                tokio::spawn(async move {
                    match this.reconcile_once().await {
                        Ok(r) if !r.is_quiet() => {
                            tracing::info!(report = ?r, "reconciled after endpoint withdrawal")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "reconcile after endpoint withdrawal failed")
                        }
                    }
                });
            }
        }
        Ok(changed)
    }
}
