//! Helpers shared by the tests that run against a real appliance.

use std::time::Duration;

use meshwire_ensm_adapters::netconf::{Auth, HostKey, Session, Target};
use meshwire_labs::appliance::Appliance;

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
