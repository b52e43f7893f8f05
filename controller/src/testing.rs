//! Test doubles of the data plane, for tests of the controller and of the crates above it:
//! built only with `cfg(test)` or the `testing` feature, never into the product.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use meshwire_models::Connection;

use tokio::sync::broadcast;

use crate::driver::{
    Desired, Driver, DriverError, DriverEvent, Failure, Health, Observation, Report, Update,
    EVENT_BUFFER,
};

/// An in-memory driver that records what it was asked and holds "installed" state, with knobs
/// to make it fail or report breakage. For tests and benchmarks of the controller core.
pub struct RecordingDriver {
    inner: Mutex<Recording>,
    events: broadcast::Sender<DriverEvent>,
    /// Full sets answered so far (`watch`, so tests wait for one without sleeping).
    fulls: tokio::sync::watch::Sender<u64>,
}

impl Default for RecordingDriver {
    fn default() -> Self {
        RecordingDriver {
            inner: Mutex::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            fulls: tokio::sync::watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct Recording {
    installed: std::collections::BTreeMap<String, Connection>,
    log: Vec<String>,
    fail_apply_endpoints: HashSet<String>,
    broken: HashMap<String, Health>,
    record_log: bool,
}

impl RecordingDriver {
    pub fn new() -> Self {
        let d = RecordingDriver::default();
        d.lock().record_log = true;
        d
    }

    /// Without a log (benchmarks: constant memory).
    pub fn quiet() -> Self {
        RecordingDriver::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `apply` fails for connections to this endpoint.
    pub fn fail_endpoint(&self, endpoint: &str, fail: bool) {
        let mut r = self.lock();
        if fail {
            r.fail_apply_endpoints.insert(endpoint.to_string());
        } else {
            r.fail_apply_endpoints.remove(endpoint);
        }
    }

    /// Reports `health` for a connection at the next full set (and forgets its wiring).
    pub fn break_connection(&self, id: &str, health: Health) {
        let mut r = self.lock();
        r.installed.remove(id);
        r.broken.insert(id.to_string(), health);
    }

    pub fn installed(&self) -> Vec<Connection> {
        self.lock().installed.values().cloned().collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Returns once `n` full sets have been answered (one at the controller's start, then one
    /// per reconcile round).
    pub async fn full_sets(&self, n: u64) {
        let mut rx = self.fulls.subscribe();
        let _ = rx.wait_for(|seen| *seen >= n).await;
    }

    /// Sends `event` to the driver's subscribers, as a real driver does when the data plane
    /// changes under it.
    pub fn report(&self, event: DriverEvent) {
        let _ = self.events.send(event);
    }

    fn apply(&self, c: &Connection) -> Result<(), DriverError> {
        let mut r = self.lock();
        if r.record_log {
            r.log.push(format!(
                "apply {} -> {}",
                c.id, c.network_service_endpoint_name
            ));
        }
        if r.fail_apply_endpoints
            .contains(&c.network_service_endpoint_name)
        {
            return Err(DriverError::new(
                "recording",
                format!("connection {}", c.id),
                format!(
                    "endpoint {} refuses wiring",
                    c.network_service_endpoint_name
                ),
            )
            .with(Failure::Refused {
                by: format!("endpoint {}", c.network_service_endpoint_name),
                peer_error: "refuses wiring".into(),
            }));
        }
        r.broken.remove(&c.id);
        r.installed.insert(c.id.clone(), c.clone());
        Ok(())
    }

    fn remove(&self, c: &Connection) {
        let mut r = self.lock();
        if r.record_log {
            r.log.push(format!(
                "remove {} -> {}",
                c.id, c.network_service_endpoint_name
            ));
        }
        r.installed.remove(&c.id);
    }

    fn observe(&self, desired: &[Connection]) -> Observation {
        let r = self.lock();
        let mut obs = Observation::default();
        for c in desired {
            if let Some(h) = r.broken.get(&c.id) {
                obs.connections.insert(c.id.clone(), h.clone());
            } else if !r.installed.contains_key(&c.id) {
                obs.connections.insert(
                    c.id.clone(),
                    Health::Missing {
                        reason: "not installed".into(),
                    },
                );
            }
        }
        obs
    }
}

#[async_trait]
impl Driver for RecordingDriver {
    fn name(&self) -> &str {
        "recording"
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        let mut report = Report::at(desired.version);
        match &desired.update {
            Update::Delta { upsert, remove } => {
                for c in remove.iter() {
                    self.remove(c);
                }
                for c in upsert.iter() {
                    self.apply(c)?;
                }
            }
            Update::Full { connections, .. } => {
                report.observation = self.observe(connections);
                self.fulls.send_modify(|n| *n += 1);
            }
        }
        Ok(report)
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<DriverEvent>> {
        Some(self.events.subscribe())
    }
}
