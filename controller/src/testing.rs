//! Test doubles of the data plane, for tests of the controller and of the crates above it:
//! built only with `cfg(test)` or the `testing` feature, never into the product.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use meshwire_models::Connection;

use crate::driver::{Driver, DriverError, Failure, Health, Observation};

/// An in-memory driver that records what it was asked and holds "installed" state, with knobs
/// to make it fail or report breakage. For tests and benchmarks of the controller core.
#[derive(Default)]
pub struct RecordingDriver {
    inner: Mutex<Recording>,
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

    /// Reports `health` for a connection at the next `observe` (and forgets its wiring).
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
}

#[async_trait]
impl Driver for RecordingDriver {
    fn name(&self) -> &str {
        "recording"
    }

    async fn apply(&self, c: &Connection) -> Result<(), DriverError> {
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

    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        let mut r = self.lock();
        if r.record_log {
            r.log.push(format!(
                "remove {} -> {}",
                c.id, c.network_service_endpoint_name
            ));
        }
        r.installed.remove(&c.id);
        Ok(())
    }

    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
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
        Ok(obs)
    }
}
