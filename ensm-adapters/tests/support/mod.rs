//! Helpers shared by the tests that run against a real appliance.

use std::time::Duration;

use meshwire_controller::driver::{Desired, Driver, DriverError, Scope};
use meshwire_ensm_adapters::ensm::Ensm;
use meshwire_ensm_adapters::netconf::{Auth, HostKey, Session, Target};
use meshwire_labs::appliance::Appliance;
use meshwire_models::Connection;

/// A NETCONF session of the test's own on `dev`, to look at what the device holds.
pub async fn look(dev: &Appliance) -> Session {
    Session::connect(&Target {
        device: "test-observer".into(),
        host: "127.0.0.1".into(),
        port: dev.port,
        user: "root".into(),
        auth: Auth::Key {
            path: dev.client_key(),
            passphrase: None,
        },
        host_key: HostKey::AcceptAny,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn version() -> u64 {
    VERSION.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

fn scope(d: &Ensm) -> Scope {
    Scope::Device(d.device().name.clone())
}

/// Hands the eNSM a delta that wires `c`.
#[allow(dead_code)]
pub async fn apply(d: &Ensm, c: &Connection) -> Result<(), DriverError> {
    d.converge(&Desired::upsert(scope(d), version(), c))
        .await
        .map(drop)
}

/// Hands the eNSM a delta that unwires `c`.
#[allow(dead_code)]
pub async fn remove(d: &Ensm, c: &Connection) -> Result<(), DriverError> {
    d.converge(&Desired::remove(scope(d), version(), c))
        .await
        .map(drop)
}
