//! The eNSM: one device, exposed as one or more network service endpoints.
//!
//! ```text
//!  Ensm::start ── register Device + NSEs ──▶ Registrar (the controller, in process or over REST)
//!     │
//!     ├─ Driver::apply(c)   range check → profile render → one NETCONF transaction
//!     │                     (lock, edit candidate, [confirmed] commit, unlock; discard on failure)
//!     ├─ Driver::remove(c)  the profile's undo, same transaction shape
//!     ├─ Driver::observe    device unreachable or a data link down → EndpointLost;
//!     │                     our entry missing on the device → Missing (repaired in place);
//!     │                     entries marked meshwire:<id> that no connection wants → removed
//!     │                     (after two rounds, so a connection being set up is never taken)
//!     └─ health task        NETCONF keepalive and reconnect with jittered backoff, SNMP poll
//!                           of sysUpTime + ifOperStatus, linkDown/linkUp traps; endpoints are
//!                           withdrawn (marked down, never deleted) and restored accordingly.
//! ```
//! Rooms: `driver` (the `Driver` impl), `elements` (range check, rendering, cross-connect),
//! `session` (the shared session, its backoff, transactions), `inventory` (our entries on the
//! device, orphan removal) and `health` (keepalive, SNMP, traps, endpoint withdrawal).
//!
//! One NETCONF session per device is shared by all its connections; transactions on it are
//! serialized (a second `<lock>` from the same session would be refused).
//!
//! An endpoint with `next` in the device file is a service-chain element: it is registered with
//! that onward service, the controller composes the onward leg (the device as its client) and
//! hands over the incoming leg with `chain.onward` set; the eNSM joins the two tunnels with the
//! profile's `crossConnect`, in the same transaction as the incoming tunnel. It never calls
//! back into the controller.

mod driver;
mod elements;
mod health;
mod inventory;
mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use meshwire_controller::clock::{Clock, SystemClock};
use meshwire_controller::driver::{DriverEvent, Happened, Scope, EVENT_BUFFER};
use meshwire_models::mechanism::Capabilities;
use meshwire_models::{Device, EndpointLocation, MechanismKind, NetworkServiceEndpoint, Object};

use crate::device::DeviceFile;
use crate::netconf::client::Session;
use crate::profile::{self, Profile};

/// Loads a device file and its profile: a path, or a name looked up in `profile_dirs` and then
/// among the shipped profiles.
pub fn load(
    device: &std::path::Path,
    profile_dirs: &[std::path::PathBuf],
) -> Result<(DeviceFile, Profile), String> {
    let d = DeviceFile::load(device).map_err(|e| e.to_string())?;
    let p = match d.profile_path(profile_dirs) {
        Ok(path) => Profile::load(&path).map_err(|e| e.to_string())?,
        Err(e) => match profile::BUILTIN.iter().find(|(n, _)| *n == d.profile) {
            Some((n, text)) => {
                Profile::parse(&format!("(built-in {n})"), text).map_err(|e| e.to_string())?
            }
            None => {
                return Err(format!(
                    "{e}; shipped profiles: {}",
                    profile::BUILTIN.map(|(n, _)| n).join(", ")
                ))
            }
        },
    };
    Ok((d, p))
}

/// Why a registrar (the controller, in process or over REST) did not take a registration or
/// an endpoint's status. The health task tries again either way; `retryable` says whether that
/// can help without anyone acting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrarError {
    /// The controller answered no (an invalid object, an unknown endpoint, a missing role).
    #[error("{what}: the controller refused it ({code}): {reason}")]
    Refused {
        what: String,
        code: String,
        reason: String,
    },
    /// The controller did not answer, or could not store it now.
    #[error("{what}: controller {controller} did not take it: {reason}")]
    Unreachable {
        what: String,
        controller: String,
        reason: String,
    },
}

impl RegistrarError {
    pub fn retryable(&self) -> bool {
        matches!(self, RegistrarError::Unreachable { .. })
    }

    /// A controller's own error, typed: a store that failed is worth another try, the rest not.
    fn from_controller(what: &str, e: meshwire_controller::ControllerError) -> RegistrarError {
        match e {
            meshwire_controller::ControllerError::Store(s) => RegistrarError::Unreachable {
                what: what.to_string(),
                controller: "(in process)".into(),
                reason: s.to_string(),
            },
            e => RegistrarError::Refused {
                what: what.to_string(),
                code: e.code().to_string(),
                reason: e.to_string(),
            },
        }
    }
}

/// Where an eNSM registers its device and endpoints, and reports their health.
#[async_trait]
pub trait Registrar: Send + Sync + 'static {
    async fn register(&self, objects: Vec<Object>) -> Result<(), RegistrarError>;
    async fn set_endpoint_down(
        &self,
        endpoint: &str,
        down: bool,
        reason: &str,
    ) -> Result<(), RegistrarError>;
}

#[async_trait]
impl Registrar for meshwire_controller::Controller {
    async fn register(&self, objects: Vec<Object>) -> Result<(), RegistrarError> {
        self.apply(meshwire_models::Manifest {
            objects,
            warnings: Vec::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| RegistrarError::from_controller("register", e))
    }
    async fn set_endpoint_down(
        &self,
        endpoint: &str,
        down: bool,
        reason: &str,
    ) -> Result<(), RegistrarError> {
        meshwire_controller::Controller::set_endpoint_down(self, endpoint, down, reason)
            .await
            .map(|_| ())
            .map_err(|e| RegistrarError::from_controller(&format!("endpoint {endpoint} status"), e))
    }
}

/// Counters and state an operator can read (`meshwire ensm`, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub device: String,
    pub reachable: bool,
    pub last_error: Option<String>,
    pub down_interfaces: Vec<String>,
    pub withdrawn: Vec<String>,
    pub sessions_opened: u64,
    pub transactions: u64,
    pub refused: u64,
    pub orphans_removed: u64,
}

struct Health_ {
    reachable: bool,
    last_error: Option<String>,
    /// Data interfaces the device reports down (by ifDescr).
    down_interfaces: BTreeSet<String>,
    /// Interfaces a poll saw not up once: a second poll in a row makes them down (a trap
    /// makes them down at once).
    doubtful: BTreeSet<String>,
    /// Endpoints we told the registrar are down.
    withdrawn: BTreeSet<String>,
    /// Entries suspected orphan at the last observe.
    suspects: HashSet<String>,
    /// Unix ms (the eNSM's clock) before which no new session is tried.
    next_attempt_ms: u64,
    /// Failed session opens in a row (the backoff's exponent).
    failures: u32,
    if_names: HashMap<u32, String>,
    counters: Status,
}

struct Inner {
    device: DeviceFile,
    profile: Profile,
    registrar: Arc<dyn Registrar>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// One NETCONF transaction at a time on the shared session.
    txn: tokio::sync::Mutex<()>,
    health: Mutex<Health_>,
    /// Wakes the health task (a trap arrived, or a call found the session dead).
    wake: tokio::sync::Notify,
    name: String,
    /// Where the controller reaches this eNSM when it runs in its own process.
    url: std::sync::OnceLock<String>,
    /// Time, injected (the session backoff reads it).
    clock: Arc<dyn Clock>,
    /// Endpoints withdrawn and restored, for the controller (see [`Driver::subscribe`]).
    events: tokio::sync::broadcast::Sender<DriverEvent>,
}

/// An eNSM for one device. Cheap to clone.
#[derive(Clone)]
pub struct Ensm {
    inner: Arc<Inner>,
}

impl Ensm {
    /// Builds the eNSM (nothing is contacted yet).
    pub fn new(device: DeviceFile, profile: Profile, registrar: Arc<dyn Registrar>) -> Ensm {
        Self::with_clock(device, profile, registrar, Arc::new(SystemClock))
    }

    /// [`new`](Self::new), reading time from `clock` (tests move it by hand).
    pub fn with_clock(
        device: DeviceFile,
        profile: Profile,
        registrar: Arc<dyn Registrar>,
        clock: Arc<dyn Clock>,
    ) -> Ensm {
        let name = format!("ensm:{}", device.name);
        let counters = Status {
            device: device.name.clone(),
            ..Default::default()
        };
        Ensm {
            inner: Arc::new(Inner {
                device,
                profile,
                registrar,
                session: tokio::sync::Mutex::new(None),
                txn: tokio::sync::Mutex::new(()),
                health: Mutex::new(Health_ {
                    reachable: false,
                    last_error: Some("not contacted yet".into()),
                    down_interfaces: BTreeSet::new(),
                    doubtful: BTreeSet::new(),
                    withdrawn: BTreeSet::new(),
                    suspects: HashSet::new(),
                    next_attempt_ms: 0,
                    failures: 0,
                    if_names: HashMap::new(),
                    counters,
                }),
                wake: tokio::sync::Notify::new(),
                name,
                url: std::sync::OnceLock::new(),
                clock,
                events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            }),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Registers the endpoints with this URL: the controller calls it for their connections
    /// (an eNSM in its own process). Set before [`Ensm::start`].
    pub fn set_url(&self, url: &str) {
        let _ = self.inner.url.set(url.to_string());
    }

    pub fn device(&self) -> &DeviceFile {
        &self.inner.device
    }

    fn health(&self) -> MutexGuard<'_, Health_> {
        self.inner.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        let h = self.health();
        Status {
            reachable: h.reachable,
            last_error: h.last_error.clone(),
            down_interfaces: h.down_interfaces.iter().cloned().collect(),
            withdrawn: h.withdrawn.iter().cloned().collect(),
            ..h.counters.clone()
        }
    }

    /// What the device offers: its mechanisms with the profile's ranges, restricted to the
    /// device file's `mechanisms` when it lists some.
    pub fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.profile.capabilities();
        let only = &self.inner.device.mechanisms;
        if !only.is_empty() {
            if !only.contains(&MechanismKind::Vxlan) {
                c.vxlan = None;
            }
            if !only.contains(&MechanismKind::Gre) {
                c.gre = None;
            }
            if !only.contains(&MechanismKind::Mpls) {
                c.mpls = None;
            }
            if !only.contains(&MechanismKind::Vlan) {
                c.vlan = None;
            }
        }
        c
    }

    /// The Device and its NetworkServiceEndpoints, as registered.
    pub fn objects(&self) -> Vec<Object> {
        let d = &self.inner.device;
        let caps = self.capabilities();
        let mut out = vec![Object::Device(Device {
            name: d.name.clone(),
            kind: self.inner.profile.name.clone(),
            address: d.address,
            underlay_address: Some(d.underlay_address),
            mechanisms: caps.clone(),
            labels: d.labels.clone(),
            ensm: self.inner.url.get().cloned(),
        })];
        for e in &d.endpoints {
            out.push(Object::NetworkServiceEndpoint(NetworkServiceEndpoint {
                name: e.name.clone(),
                network_service_names: e.services.clone(),
                network_service_labels: e
                    .services
                    .iter()
                    .map(|s| (s.clone(), e.labels.clone()))
                    .collect::<BTreeMap<_, _>>(),
                url: self.inner.url.get().cloned(),
                expires_at_ms: None,
                location: EndpointLocation::Device {
                    device: d.name.clone(),
                },
                mechanisms: caps.clone(),
                capacity: e.capacity,
                ipam_prefix: e.ipam_prefix,
                routes: e.routes.clone(),
                interface: None,
                bridge: None,
                next: e.next.as_ref().map(|n| meshwire_models::ChainNext {
                    service: n.service.clone(),
                    labels: n.labels.clone(),
                }),
            }));
        }
        out
    }

    /// Registers the device and its endpoints, tries the device once, and starts the health
    /// task (keepalive, reconnect, SNMP, traps). Endpoints of a device that cannot be reached
    /// now are registered and withdrawn at once; they come back when the device does.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, RegistrarError> {
        self.inner.registrar.register(self.objects()).await?;
        let this = self.clone();
        let first = this.check_device().await;
        this.publish().await;
        if let Err(e) = first {
            tracing::warn!(device = %self.inner.device.name, error = %e, "device not reachable at start; endpoints withdrawn until it is");
        }
        let this = self.clone();
        Ok(tokio::spawn(async move { this.run().await }))
    }
}
