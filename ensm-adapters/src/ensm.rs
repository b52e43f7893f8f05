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
//! One NETCONF session per device is shared by all its connections; transactions on it are
//! serialized (a second `<lock>` from the same session would be refused).
//!
//! An endpoint with `next` in the device file is a service-chain element: it is registered with
//! that onward service, the controller composes the onward leg (the device as its client) and
//! hands over the incoming leg with `chain.onward` set; the eNSM joins the two tunnels with the
//! profile's `crossConnect`, in the same transaction as the incoming tunnel. It never calls
//! back into the controller.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meshwire_controller::driver::{Driver, DriverError, Health, Observation};
use meshwire_models::mechanism::Capabilities;
use meshwire_models::{
    Connection, Device, EndpointLocation, Mechanism, MechanismKind, NetworkServiceEndpoint, Object,
};

use crate::device::DeviceFile;
use crate::netconf::client::{NetconfError, Session};
use crate::netconf::xml::{Datastore, DefaultOperation};
use crate::profile::{self, Profile};
use crate::snmp::Monitor;

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

/// Where an eNSM registers its device and endpoints, and reports their health.
#[async_trait]
pub trait Registrar: Send + Sync + 'static {
    async fn register(&self, objects: Vec<Object>) -> Result<(), String>;
    async fn set_endpoint_down(
        &self,
        endpoint: &str,
        down: bool,
        reason: &str,
    ) -> Result<(), String>;
}

#[async_trait]
impl Registrar for meshwire_controller::Controller {
    async fn register(&self, objects: Vec<Object>) -> Result<(), String> {
        self.apply(meshwire_models::Manifest {
            objects,
            warnings: Vec::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
    async fn set_endpoint_down(
        &self,
        endpoint: &str,
        down: bool,
        reason: &str,
    ) -> Result<(), String> {
        meshwire_controller::Controller::set_endpoint_down(self, endpoint, down, reason)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
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
    next_attempt: Instant,
    backoff: Duration,
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
}

/// An eNSM for one device. Cheap to clone.
#[derive(Clone)]
pub struct Ensm {
    inner: Arc<Inner>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// ±20% jitter from the clock's low bits (no RNG dependency; spreading, not security).
fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let f = 0.8 + (n % 1000) as f64 / 2500.0;
    d.mul_f64(f)
}

fn transport_failure(e: &NetconfError) -> bool {
    matches!(
        e,
        NetconfError::Connect { .. }
            | NetconfError::Closed { .. }
            | NetconfError::Timeout { .. }
            | NetconfError::Protocol { .. }
    )
}

impl Ensm {
    /// Builds the eNSM (nothing is contacted yet).
    pub fn new(device: DeviceFile, profile: Profile, registrar: Arc<dyn Registrar>) -> Ensm {
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
                    next_attempt: Instant::now(),
                    backoff: BACKOFF_MIN,
                    if_names: HashMap::new(),
                    counters,
                }),
                wake: tokio::sync::Notify::new(),
                name,
                url: std::sync::OnceLock::new(),
            }),
        }
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
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, String> {
        self.inner
            .registrar
            .register(self.objects())
            .await
            .map_err(|e| format!("eNSM {}: registering: {e}", self.inner.device.name))?;
        let this = self.clone();
        let first = this.check_device().await;
        this.publish().await;
        if let Err(e) = first {
            tracing::warn!(device = %self.inner.device.name, error = %e, "device not reachable at start; endpoints withdrawn until it is");
        }
        let this = self.clone();
        Ok(tokio::spawn(async move { this.run().await }))
    }

    /// The shared session, opened if there is none (respecting the backoff).
    async fn session(&self) -> Result<Session, String> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        {
            let h = self.health();
            if Instant::now() < h.next_attempt {
                return Err(format!(
                    "device unreachable: {} (next attempt in {} ms)",
                    h.last_error.clone().unwrap_or_default(),
                    h.next_attempt
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                ));
            }
        }
        match Session::connect(&self.inner.device.netconf).await {
            Ok(s) => {
                let mut h = self.health();
                h.backoff = BACKOFF_MIN;
                h.counters.sessions_opened += 1;
                tracing::info!(device = %self.inner.device.name, framing = ?s.framing(), "NETCONF session open");
                *guard = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                let mut h = self.health();
                let wait = jitter(h.backoff);
                h.next_attempt = Instant::now() + wait;
                h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
                h.reachable = false;
                h.last_error = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Forgets a dead session and marks the device unreachable.
    /// Forgets `dead` (if it is still the current session) and marks the device unreachable.
    /// A late error on an older session leaves a newer, healthy one alone.
    async fn lost(&self, dead: &Session, why: &str) {
        {
            let mut current = self.inner.session.lock().await;
            match current.as_ref() {
                Some(s) if s.same(dead) => *current = None,
                _ => return,
            }
        }
        {
            let mut h = self.health();
            h.reachable = false;
            h.last_error = Some(why.to_string());
            h.next_attempt = Instant::now();
        }
        self.inner.wake.notify_one();
    }

    /// One NETCONF transaction on the shared session.
    async fn transaction(&self, config: &str) -> Result<(), NetconfError> {
        let session = self.session().await.map_err(|e| NetconfError::Connect {
            device: self.inner.device.name.clone(),
            addr: format!(
                "{}:{}",
                self.inner.device.netconf.host, self.inner.device.netconf.port
            ),
            reason: e,
        })?;
        // The transaction runs in a task of its own: if our caller is cancelled (a client
        // hung up), it still ends with commit or discard and unlock, never leaving the
        // candidate locked on the shared session.
        let this = self.clone();
        let config = config.to_string();
        let task = tokio::spawn(async move {
            let t = this.inner.txn.lock().await;
            let r = session
                .apply_config(
                    DefaultOperation::Merge,
                    &config,
                    this.inner.profile.confirm_timeout,
                )
                .await;
            drop(t);
            {
                let mut h = this.health();
                h.counters.transactions += 1;
                if matches!(r, Err(NetconfError::Rpc { .. })) {
                    h.counters.refused += 1;
                }
            }
            if let Err(e) = &r {
                // A lock held by another session of ours (a lost one) frees with a new session.
                if transport_failure(e) || e.error_tag() == Some("lock-denied") {
                    this.lost(&session, &e.to_string()).await;
                }
            }
            r
        });
        task.await.map_err(|e| NetconfError::Closed {
            device: format!("{} (transaction task: {e})", self.inner.device.name),
        })?
    }

    fn err(&self, c: &Connection, reason: impl std::fmt::Display) -> DriverError {
        DriverError {
            driver: self.inner.name.clone(),
            target: format!("connection {}", c.id),
            reason: reason.to_string(),
        }
    }

    /// Whether the negotiated parameters are ones this device accepts (the eNSM's part of the
    /// negotiation: the controller offered from the registered ranges; the device has the last
    /// word).
    fn accepts(&self, c: &Connection) -> Result<(), String> {
        let me = Some(self.inner.device.name.as_str());
        let as_client = c.placement.client_device.as_deref() == me;
        if c.placement.endpoint_device.as_deref() != me && !as_client {
            return Err(format!(
                "connection's endpoint is {:?}, not device {}",
                c.placement.endpoint_device, self.inner.device.name
            ));
        }
        if !as_client
            && !self
                .inner
                .device
                .endpoints
                .iter()
                .any(|e| e.name == c.network_service_endpoint_name)
        {
            return Err(format!(
                "endpoint {} is not one of device {}'s",
                c.network_service_endpoint_name, self.inner.device.name
            ));
        }
        let m = c
            .hops
            .last()
            .map(|h| &h.mechanism)
            .ok_or("connection has no mechanism")?;
        let t = self
            .inner
            .profile
            .mechanisms
            .get(&m.kind())
            .ok_or_else(|| {
                format!(
                    "device {} does not terminate {}",
                    self.inner.device.name,
                    m.kind()
                )
            })?;
        let (what, value) = match m {
            Mechanism::Vxlan { vni, .. } => ("VNI", *vni),
            Mechanism::Gre { key, .. } => ("GRE key", *key),
            Mechanism::Mpls { label_out, .. } => ("MPLS label", *label_out),
            Mechanism::Vlan { id } => ("VLAN", *id),
            _ => return Ok(()),
        };
        if let Some(r) = t.range {
            if value < r.start || value > r.end {
                return Err(format!(
                    "{what} {value} is outside the device's range {}..{}",
                    r.start, r.end
                ));
            }
        }
        Ok(())
    }

    /// Reads Meshwire's entries on the device: (key, connection id).
    /// Reads Meshwire's entries on the device (an empty list when the profile has no
    /// inventory: the device is still asked, as the keepalive).
    async fn inventory(&self) -> Result<Vec<(String, String)>, NetconfError> {
        let session = self.session().await.map_err(|e| NetconfError::Connect {
            device: self.inner.device.name.clone(),
            addr: self.inner.device.netconf.host.clone(),
            reason: e,
        })?;
        let inv = self.inner.profile.inventory.as_ref();
        let r = session
            .get_config(Datastore::Running, inv.map(|i| i.filter.as_str()))
            .await;
        match r {
            Ok(data) => match inv {
                None => Ok(Vec::new()),
                Some(inv) => {
                    profile::owned_entries(inv, &data).map_err(|reason| NetconfError::Protocol {
                        device: self.inner.device.name.clone(),
                        what: "get-config".into(),
                        reason,
                    })
                }
            },
            Err(e) => {
                if transport_failure(&e) {
                    self.lost(&session, &e.to_string()).await;
                }
                Err(e)
            }
        }
    }

    /// Contacts the device (opening the session if needed) and reads its inventory: the
    /// keepalive. Updates reachability.
    async fn check_device(&self) -> Result<Vec<(String, String)>, String> {
        // One failure (an idle session the device closed, one slow reply) is retried at once
        // on a fresh session before the device counts as unreachable.
        let first = self.inventory().await;
        let r = match first {
            Ok(v) => Ok(v),
            Err(_) => self.inventory().await,
        };
        match r {
            Ok(v) => {
                let mut h = self.health();
                if !h.reachable {
                    tracing::info!(device = %self.inner.device.name, "device reachable");
                }
                h.reachable = true;
                h.last_error = None;
                Ok(v)
            }
            Err(e) => {
                let mut h = self.health();
                h.reachable = false;
                h.last_error = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Endpoints that must be withdrawn now, with why.
    fn wanted_down(&self) -> BTreeMap<String, String> {
        let h = self.health();
        let mut out = BTreeMap::new();
        for e in &self.inner.device.endpoints {
            if !h.reachable {
                out.insert(
                    e.name.clone(),
                    format!(
                        "device {} unreachable: {}",
                        self.inner.device.name,
                        h.last_error.clone().unwrap_or_default()
                    ),
                );
            } else if let Some(i) = e.interfaces.iter().find(|i| h.down_interfaces.contains(*i)) {
                out.insert(
                    e.name.clone(),
                    format!("device {} interface {i} is down", self.inner.device.name),
                );
            }
        }
        out
    }

    /// Tells the registrar about endpoints whose state changed.
    async fn publish(&self) {
        let want = self.wanted_down();
        // Withdrawals are re-asserted every round: an endpoint applied again (a controller
        // restart, an operator's re-apply) comes back up in the controller, and must not stay
        // up while its device is down. Setting what is already set changes nothing there.
        let (to_down, to_up): (Vec<(String, String)>, Vec<String>) = {
            let h = self.health();
            (
                want.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
                h.withdrawn
                    .iter()
                    .filter(|n| !want.contains_key(*n))
                    .cloned()
                    .collect(),
            )
        };
        for (n, reason) in to_down {
            match self
                .inner
                .registrar
                .set_endpoint_down(&n, true, &reason)
                .await
            {
                Ok(()) => {
                    self.health().withdrawn.insert(n);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %n, error = %e, "withdrawing endpoint failed; retrying")
                }
            }
        }
        for n in to_up {
            let reason = format!("device {} healthy", self.inner.device.name);
            match self
                .inner
                .registrar
                .set_endpoint_down(&n, false, &reason)
                .await
            {
                Ok(()) => {
                    self.health().withdrawn.remove(&n);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %n, error = %e, "restoring endpoint failed; retrying")
                }
            }
        }
    }

    /// Applies what a poll says: an interface goes down on its second not-up poll in a row.
    fn polled_interfaces(&self, statuses: &[(String, bool)]) {
        let confirmed: Vec<(String, bool)> = {
            let mut h = self.health();
            statuses
                .iter()
                .filter_map(|(n, up)| {
                    if *up {
                        h.doubtful.remove(n);
                        Some((n.clone(), true))
                    } else if h.doubtful.insert(n.clone()) {
                        None
                    } else {
                        Some((n.clone(), false))
                    }
                })
                .collect()
        };
        self.set_interfaces(&confirmed);
    }

    /// Applies what SNMP says about the data interfaces.
    fn set_interfaces(&self, statuses: &[(String, bool)]) {
        let mut h = self.health();
        for (name, up) in statuses {
            let changed = if *up {
                h.down_interfaces.remove(name)
            } else {
                h.down_interfaces.insert(name.clone())
            };
            if changed {
                tracing::warn!(device = %self.inner.device.name, interface = %name, up, "data interface changed");
            }
        }
    }

    /// The health task: keepalive/reconnect, SNMP poll and traps, publishing endpoint state.
    async fn run(self) {
        let snmp = self.inner.device.snmp.clone();
        let interval = snmp
            .as_ref()
            .map(|s| s.poll_interval)
            .unwrap_or(Duration::from_secs(2));
        let (trap_tx, mut trap_rx) = tokio::sync::mpsc::channel::<crate::snmp::LinkTrap>(64);
        let trap_setup = snmp.as_ref().and_then(|s| {
            s.trap_listen
                .map(|l| (l, s.trap_community.clone(), s.target.addr.ip()))
        });
        if let Some((listen, community, agent)) = trap_setup {
            let device = self.inner.device.name.clone();
            // Traps are v2c: only with the device's community, and only from the device.
            let receiver = match &community {
                Some(c) => crate::snmp::trap_receiver(listen, c).await,
                None => Err("traps need snmp.community (v3 traps are not accepted)".to_string()),
            };
            match receiver {
                Ok(rx) => {
                    tracing::info!(%device, %listen, "listening for linkDown/linkUp traps");
                    tokio::spawn(async move {
                        loop {
                            let n = match rx.recv().await {
                                Ok(n) => n,
                                Err(e) => {
                                    tracing::debug!(%device, error = %e, "trap receive failed");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            };
                            if n.source.ip() != agent {
                                tracing::warn!(%device, source = %n.source, "trap from another address ignored");
                                continue;
                            }
                            let Ok(oid) = n.notification.trap_oid() else {
                                continue;
                            };
                            if let Some(t) = crate::snmp::link_trap(&oid, n.notification.varbinds())
                            {
                                if trap_tx.send(t).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(%device, error = %e, "no trap receiver; relying on polls"),
            }
        }
        let mut monitor: Option<Monitor> = None;
        // A fixed cadence: traps arriving in between never postpone the next poll.
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A trap is a hint, never a verdict (v2c traps are easy to forge from the device's
        // address): it triggers a poll at once, and only what the poll confirms is applied.
        let mut trapped: Vec<(String, bool)> = Vec::new();
        loop {
            let by_trap = tokio::select! {
                _ = tick.tick() => false,
                _ = self.inner.wake.notified() => false,
                Some(t) = trap_rx.recv() => {
                    let name = self.health().if_names.get(&t.if_index).cloned();
                    let Some(name) = name else { continue };
                    tracing::info!(device = %self.inner.device.name, interface = %name, up = t.up, "link trap; confirming by a poll");
                    if trapped.len() >= 64 {
                        trapped.remove(0);
                    }
                    trapped.push((name, t.up));
                    true
                }
            };
            if !by_trap {
                if let Err(e) = self.check_device().await {
                    tracing::debug!(device = %self.inner.device.name, error = %e, "keepalive failed");
                }
            }
            if let Some(s) = &snmp {
                if monitor.is_none() {
                    monitor = Monitor::connect(s.target.clone()).await.ok();
                }
                if let Some(m) = &monitor {
                    let need_map = self.health().if_names.len() < s.interfaces.len();
                    if need_map {
                        match m.if_indexes(&s.interfaces).await {
                            Ok(map) => {
                                self.health().if_names =
                                    map.into_iter().map(|(n, i)| (i, n)).collect()
                            }
                            Err(e) => {
                                // Not answering (yet) says nothing about the data links.
                                tracing::debug!(device = %self.inner.device.name, error = %e, "SNMP walk failed");
                                self.publish().await;
                                continue;
                            }
                        }
                    }
                    let indexes: Vec<u32> = self.health().if_names.keys().copied().collect();
                    match m.poll(&indexes).await {
                        Ok(p) => {
                            let names = self.health().if_names.clone();
                            // An index that now names another interface (the device
                            // renumbered them, e.g. after a reboot): map again next round.
                            if p.interfaces
                                .iter()
                                .any(|(i, d, _)| names.get(i).is_some_and(|n| n != d))
                            {
                                self.health().if_names.clear();
                                self.publish().await;
                                continue;
                            }
                            let st: Vec<(String, bool)> = p
                                .interfaces
                                .iter()
                                .filter_map(|(i, _, s)| {
                                    names.get(i).map(|n| (n.clone(), s.is_up()))
                                })
                                .collect();
                            // An interface the device no longer lists is down.
                            let missing: Vec<(String, bool)> = s
                                .interfaces
                                .iter()
                                .filter(|n| !names.values().any(|v| v == *n))
                                .map(|n| (n.clone(), false))
                                .collect();
                            // A trap the poll agrees with is two observations: applied now.
                            let confirmed =
                                crate::snmp::confirmed_traps(&mut trapped, &st, &missing);
                            self.polled_interfaces(&st);
                            self.polled_interfaces(&missing);
                            self.set_interfaces(&confirmed);
                            if !missing.is_empty() {
                                self.health().if_names.clear();
                            }
                        }
                        Err(e) => {
                            tracing::debug!(device = %self.inner.device.name, error = %e, "SNMP poll failed");
                            // The device's health is judged by NETCONF; SNMP silence alone
                            // withdraws nothing, but the ifIndex map is refreshed.
                            self.health().if_names.clear();
                        }
                    }
                }
            }
            // Traps no poll could confirm this round are dropped.
            trapped.clear();
            self.publish().await;
        }
    }

    /// Whether the device is the connection's client (the onward leg of a chain).
    fn is_client(&self, c: &Connection) -> bool {
        c.placement.client_device.as_deref() == Some(self.inner.device.name.as_str())
    }

    /// The cross-connect joining `c` to its onward leg, when the controller gave it one
    /// (`c` reaches a chain element): (config, undo).
    fn cross_connect(&self, c: &Connection) -> Result<Option<(String, String)>, DriverError> {
        // The cross-connect lives on the endpoint's device; the device that is the client of
        // the onward leg configures only that leg's client half.
        let Some(onward) = c.chain.onward.as_deref().filter(|_| !self.is_client(c)) else {
            return Ok(None);
        };
        let xc = self.inner.profile.cross_connect.as_ref().ok_or_else(|| {
            self.err(
                c,
                format!(
                    "endpoint {} passes connections on (onward leg {onward}), but profile {} has no crossConnect",
                    c.network_service_endpoint_name, self.inner.profile.name
                ),
            )
        })?;
        let vars = cross_connect_vars(&c.id, onward);
        let config = profile::render(&xc.config, &vars).map_err(|e| self.err(c, e))?;
        let undo = profile::render(&xc.remove, &vars).map_err(|e| self.err(c, e))?;
        Ok(Some((config, undo)))
    }

    /// Removes Meshwire entries no connection wants, seen orphan twice in a row.
    async fn remove_orphans(&self, desired: &HashSet<&str>, entries: &[(String, String)]) {
        let Some(inv) = &self.inner.profile.inventory else {
            return;
        };
        let orphans: Vec<&String> = entries
            .iter()
            .filter(|(_, id)| !desired.contains(id.as_str()))
            .map(|(k, _)| k)
            .collect();
        let confirmed: Vec<String> = {
            let mut h = self.health();
            let c = orphans
                .iter()
                .filter(|k| h.suspects.contains(k.as_str()))
                .map(|k| k.to_string())
                .collect();
            h.suspects = orphans.iter().map(|k| k.to_string()).collect();
            c
        };
        if confirmed.is_empty() {
            return;
        }
        let mut each = Vec::new();
        for k in &confirmed {
            let vars = BTreeMap::from([("name", k.clone())]);
            match profile::render(&inv.remove, &vars) {
                Ok(x) => each.push((k.clone(), x)),
                Err(e) => {
                    tracing::warn!(device = %self.inner.device.name, entry = %k, error = %e, "cannot render removal");
                    return;
                }
            }
        }
        let all: String = each.iter().map(|(_, x)| x.as_str()).collect();
        let removed: Vec<String> = match self.transaction(&all).await {
            Ok(()) => confirmed,
            // One entry the device will not remove (something still refers to it) must not
            // keep the others: try them one by one.
            Err(e) if each.len() > 1 => {
                tracing::warn!(device = %self.inner.device.name, error = %e, "orphan removal refused as a whole; trying each");
                let mut ok = Vec::new();
                for (k, x) in each {
                    match self.transaction(&x).await {
                        Ok(()) => ok.push(k),
                        Err(e) => {
                            tracing::warn!(device = %self.inner.device.name, entry = %k, error = %e, "orphan removal refused; retrying next round")
                        }
                    }
                }
                ok
            }
            Err(e) => {
                tracing::warn!(device = %self.inner.device.name, error = %e, "orphan removal failed; retrying next round");
                Vec::new()
            }
        };
        if !removed.is_empty() {
            tracing::info!(device = %self.inner.device.name, entries = ?removed, "removed Meshwire entries no connection wants");
            let mut h = self.health();
            h.counters.orphans_removed += removed.len() as u64;
            for k in &removed {
                h.suspects.remove(k);
            }
        }
    }
}

fn cross_connect_vars(id: &str, onward: &str) -> BTreeMap<&'static str, String> {
    let a = profile::tunnel_name(id);
    BTreeMap::from([
        ("name", format!("xc{}", &a[2..])),
        ("connection", id.to_string()),
        ("next", onward.to_string()),
        ("a", a),
        ("b", profile::tunnel_name(onward)),
    ])
}

#[async_trait]
impl Driver for Ensm {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn apply(&self, c: &Connection) -> Result<(), DriverError> {
        self.accepts(c).map_err(|r| self.err(c, r))?;
        let as_client = self.is_client(c);
        let (mut config, _) = if as_client {
            self.inner.profile.render_for_client(c)
        } else {
            self.inner.profile.render_for(c)
        }
        .map_err(|e| self.err(c, e))?;
        // A chain element: the controller composed the onward leg; the cross-connect joining
        // the two goes in the same transaction as the incoming tunnel.
        if let Some((xc, _)) = self.cross_connect(c)? {
            config.push_str(&xc);
        }
        self.transaction(&config)
            .await
            .map_err(|e| self.err(c, e))?;
        if !self.inner.profile.settle.is_zero() {
            tokio::time::sleep(self.inner.profile.settle).await;
        }
        tracing::info!(device = %self.inner.device.name, connection = %c.id, mechanism = %c.mechanism().map(|m| m.summary()).unwrap_or_default(), "device configured");
        Ok(())
    }

    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        let rendered = if self.is_client(c) {
            self.inner.profile.render_for_client(c)
        } else {
            self.inner.profile.render_for(c)
        };
        let (_, mut undo) = match rendered {
            Ok(x) => x,
            // A connection this profile cannot express was never configured.
            Err(_) => return Ok(()),
        };
        // Exactly ours, and only if it is there: some devices refuse removing what is absent
        // (yuma123 checks the entry's mandatory choice even then).
        let mut present = true;
        if self.inner.profile.inventory.is_some() {
            let entries = self.inventory().await.map_err(|e| self.err(c, e))?;
            present = entries.iter().any(|(_, id)| *id == c.id);
        }
        // A chain element: its cross-connect was written with the tunnel, so it goes with it
        // (first: it refers to the tunnel). The controller closes the onward leg.
        if let Some((_, xc_undo)) = self.cross_connect(c)? {
            undo = format!("{xc_undo}{undo}");
        }
        if present {
            self.transaction(&undo).await.map_err(|e| self.err(c, e))?;
            tracing::info!(device = %self.inner.device.name, connection = %c.id, "device config removed");
        }
        Ok(())
    }

    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
        let mut obs = Observation::default();
        // Only endpoints the health task has withdrawn count as lost (the task debounces and
        // restores them); what this round sees alone never takes an endpoint down.
        let down: BTreeMap<String, String> = {
            let want = self.wanted_down();
            let h = self.health();
            want.into_iter()
                .filter(|(n, _)| h.withdrawn.contains(n))
                .collect()
        };
        let entries = if self.health().reachable {
            self.check_device().await.ok()
        } else {
            None
        };
        let Some(entries) = entries else {
            // The health task decides (and publishes) whether the device is down.
            self.inner.wake.notify_one();
            for c in desired.iter().filter(|c| !self.is_client(c)) {
                if let Some(reason) = down.get(&c.network_service_endpoint_name) {
                    obs.connections.insert(
                        c.id.clone(),
                        Health::EndpointLost {
                            reason: reason.clone(),
                        },
                    );
                }
            }
            return Ok(obs);
        };
        let present: HashSet<&str> = entries.iter().map(|(_, id)| id.as_str()).collect();
        for c in desired {
            if let Some(reason) = down
                .get(&c.network_service_endpoint_name)
                .filter(|_| !self.is_client(c))
            {
                obs.connections.insert(
                    c.id.clone(),
                    Health::EndpointLost {
                        reason: reason.clone(),
                    },
                );
            } else if self.inner.profile.inventory.is_some() && !present.contains(c.id.as_str()) {
                obs.connections.insert(
                    c.id.clone(),
                    Health::Missing {
                        reason: format!("device {} has no config for it", self.inner.device.name),
                    },
                );
            }
        }
        let want: HashSet<&str> = desired.iter().map(|c| c.id.as_str()).collect();
        self.remove_orphans(&want, &entries).await;
        Ok(obs)
    }
}
