//! Input: a controller (memory store) whose node data plane is a recording driver, and an eNSM
//! for a real netconfd behind a real sshd loaded with our `meshwire-appliance` YANG model.
//! Output: the eNSM registers the device and its endpoint with the profile's VNI range; a
//! request configures the device in one transaction (and close removes exactly it); a config
//! the device refuses fails the request with the device's own error, leaves the device as it was
//! and gives the pools back; an orphan of ours is removed and a foreign entry kept; config
//! deleted behind our back is repaired; an unreachable device withdraws (never deletes) its
//! endpoint, which comes back with the device.
//! Needs root, netconfd and openssh-server; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::look;

use meshwire_controller::driver::{Dataplanes, Driver, RecordingDriver};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, SystemClock};
use meshwire_ensm_adapters::device::DeviceFile;
use meshwire_ensm_adapters::ensm::Ensm;
use meshwire_ensm_adapters::netconf::{Datastore, DefaultOperation, Session};
use meshwire_ensm_adapters::profile::Profile;
use meshwire_labs::appliance::{self, Appliance};
use meshwire_models::{ClientRef, ConnectionRequest, ForwarderKind, Manifest, MechanismKind};

const NS: &str = "urn:meshwire:params:xml:ns:yang:meshwire-appliance";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn device() -> Option<Appliance> {
    if !appliance::runnable("the eNSM test") {
        return None;
    }
    Some(Appliance::start(&[crate_dir().join("yang/meshwire-appliance@2026-11-23.yang")]).unwrap())
}

fn device_file(dev: &Appliance, dir: &Path, capacity: u32) -> DeviceFile {
    let text = format!(
        "apiVersion: meshwire.io/v1\nkind: EnsmDevice\nmetadata: {{name: fw1}}\nspec:\n  profile: meshwire-appliance\n  underlayAddress: 192.168.70.2\n  netconf:\n    host: 127.0.0.1\n    port: {}\n    user: root\n    keyFile: {}\n    hostKey: {{fingerprint: \"{}\"}}\n    timeout: 5s\n  endpoints:\n    - name: fw1\n      services: [firewall]\n      labels: {{app: firewall}}\n      capacity: {capacity}\n      ipamPrefix: 172.16.20.0/24\n      routes: [10.70.0.0/16]\n",
        dev.port,
        dev.client_key().display(),
        dev.fingerprint().unwrap()
    );
    let f = dir.join("fw1.yaml");
    std::fs::write(&f, text).unwrap();
    DeviceFile::load(&f).unwrap()
}

const TOPOLOGY: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-fw1}\nspec: {endpoints: [\"n1:eth1\", \"fw1:eth1\"], addresses: [\"192.168.70.1/24\", \"192.168.70.2/24\"]}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: firewall}\nspec: {payload: IP}\n";

struct World {
    ctl: Controller,
    ensm: Ensm,
    _node: Arc<RecordingDriver>,
    session: Session,
    _dir: tempfile::TempDir,
}

async fn world(dev: &Appliance, profile: &Path, capacity: u32) -> World {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(RecordingDriver::new());
    let planes = Arc::new(Dataplanes::new(vec![(
        ForwarderKind::Kernel,
        node.clone() as Arc<dyn Driver>,
    )]));
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        planes.clone(),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(Manifest::parse("t", TOPOLOGY).unwrap())
        .await
        .unwrap();
    let ensm = Ensm::new(
        device_file(dev, dir.path(), capacity),
        Profile::load(profile).unwrap(),
        Arc::new(ctl.clone()),
    );
    planes.attach_device("fw1", Arc::new(ensm.clone()));
    ensm.start().await.unwrap();
    let session = look(dev).await;
    World {
        ctl,
        ensm,
        _node: node,
        session,
        _dir: dir,
    }
}

fn request(name: &str) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "firewall".into(),
        client: ClientRef {
            node: "n1".into(),
            name: Some(name.into()),
        },
        labels: Default::default(),
        mechanisms: vec![MechanismKind::Vxlan],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

async fn running(s: &Session) -> String {
    s.get_config(
        Datastore::Running,
        Some(&format!("<tunnels xmlns=\"{NS}\"/>")),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn dev_ensm_registers_configures_removes_and_resyncs() {
    let Some(dev) = device() else { return };
    let w = world(
        &dev,
        &crate_dir().join("profiles/meshwire-appliance.yaml"),
        2,
    )
    .await;

    // Registered: the device with the profile's VNI range, and its endpoint.
    let t = w.ctl.topology();
    let d = &t.devices["fw1"];
    let vx = d.mechanisms.vxlan.as_ref().unwrap();
    assert_eq!((vx.vni_range.start, vx.vni_range.end), (5000, 5999));
    let eps = w.ctl.endpoints();
    assert_eq!(eps.len(), 1);
    assert!(!eps[0].down, "reachable device: endpoint up");

    // A request: negotiated VXLAN to the device's underlay, configured on the device.
    let c = w.ctl.request(request("c1")).await.unwrap();
    let m = c.mechanism().unwrap().clone();
    let meshwire_models::Mechanism::Vxlan { vni, dst_ip, .. } = m else {
        panic!("{m:?}")
    };
    assert!((5000..=5999).contains(&vni));
    assert_eq!(dst_ip.to_string(), "192.168.70.2");
    let cfg = running(&w.session).await;
    assert!(cfg.contains(&format!("meshwire:{}", c.id)), "{cfg}");
    assert!(cfg.contains(&format!("<vni>{vni}</vni>")), "{cfg}");
    assert_eq!(w.ensm.status().transactions, 1);

    // Capacity: the endpoint takes two; the third gets a clear error.
    let c2 = w.ctl.request(request("c2")).await.unwrap();
    let e = w.ctl.request(request("c3")).await.unwrap_err().to_string();
    assert!(e.contains("capacity"), "{e}");
    w.ctl.close(&c2.id).await.unwrap();

    // Deleted behind our back: repaired by the reconcile round.
    let name = format!("mw{}", &c.id.replace('-', "")[..8]);
    w.session
        .apply_config(
            DefaultOperation::Merge,
            &format!("<tunnels xmlns=\"{NS}\" xmlns:nc=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><tunnel nc:operation=\"remove\"><name>{name}</name></tunnel></tunnels>"),
            None,
        )
        .await
        .unwrap();
    assert!(!running(&w.session).await.contains(&c.id));
    let r = w.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.repaired, vec![c.id.clone()]);
    assert!(running(&w.session).await.contains(&c.id));

    // An orphan of ours goes (after two rounds); a foreign entry stays.
    let tunnel = |n: &str, d: &str| {
        format!("<tunnels xmlns=\"{NS}\"><tunnel><name>{n}</name><description>{d}</description><vxlan><vni>77</vni><remote>10.9.9.9</remote></vxlan></tunnel></tunnels>")
    };
    w.session
        .apply_config(
            DefaultOperation::Merge,
            &format!(
                "{}{}",
                tunnel("mwdead0001", "meshwire:dead0001-gone"),
                tunnel("ops1", "hand-made by ops")
            ),
            None,
        )
        .await
        .unwrap();
    w.ctl.reconcile_once().await.unwrap();
    assert!(
        running(&w.session).await.contains("mwdead0001"),
        "one round is not enough"
    );
    w.ctl.reconcile_once().await.unwrap();
    let cfg = running(&w.session).await;
    assert!(!cfg.contains("mwdead0001"), "{cfg}");
    assert!(cfg.contains("ops1") && cfg.contains(&c.id), "{cfg}");
    assert_eq!(w.ensm.status().orphans_removed, 1);

    // Close removes exactly ours; removing again is a no-op.
    w.ctl.close(&c.id).await.unwrap();
    support::remove(&w.ensm, &c).await.unwrap();
    let cfg = running(&w.session).await;
    assert!(!cfg.contains(&c.id) && cfg.contains("ops1"), "{cfg}");
}

#[tokio::test]
async fn dev_ensm_refused_config_leaves_device_and_pools_as_they_were() {
    let Some(dev) = device() else { return };
    // A profile whose tunnel address is not an ip-prefix: netconfd refuses it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(crate_dir().join("profiles/meshwire-appliance.yaml"))
        .unwrap()
        .replacen(
            "<address>{{address}}</address>",
            "<address>not-an-address-{{vni}}</address>",
            1,
        );
    std::fs::write(&bad, text).unwrap();
    let w = world(&dev, &bad, 4).await;
    let before = running(&w.session).await;
    let pools = w.ctl.pool_usage();
    let e = w.ctl.request(request("c1")).await.unwrap_err().to_string();
    assert!(
        e.contains("ensm:fw1") && e.contains("edit-config refused") && e.contains("mwa:address"),
        "{e}"
    );
    assert_eq!(running(&w.session).await, before, "device left as it was");
    assert_eq!(w.ctl.pool_usage(), pools, "pools given back");
    assert_eq!(w.ctl.connection_count(), 0);
    assert_eq!(w.ensm.status().refused, 1, "{:?}", w.ensm.status());
}

/// Waits for the controller's event that `endpoint` went down (or came back).
async fn endpoint_event(
    events: &mut tokio::sync::broadcast::Receiver<meshwire_controller::Event>,
    endpoint: &str,
    down: bool,
) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(meshwire_controller::Event::Endpoint { name, down: d, .. })
                    if name == endpoint && d == down =>
                {
                    return
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no event: endpoint {endpoint} down={down}"));
}

#[tokio::test]
async fn dev_ensm_unreachable_device_withdraws_endpoint_and_it_comes_back() {
    let Some(mut dev) = device() else { return };
    let w = world(
        &dev,
        &crate_dir().join("profiles/meshwire-appliance.yaml"),
        4,
    )
    .await;
    let c = w.ctl.request(request("c1")).await.unwrap();
    let mut events = w.ctl.subscribe();
    dev.stop();
    // The health task notices within its keepalive interval (2 s by default) and withdraws.
    endpoint_event(&mut events, "fw1", true).await;
    assert!(w.ctl.endpoints()[0].down, "{:?}", w.ensm.status());
    assert_eq!(w.ctl.endpoints().len(), 1, "withdrawn, not deleted");
    let e = w.ctl.request(request("c2")).await.unwrap_err().to_string();
    assert!(e.contains("withdrawn: fw1"), "{e}");
    // The connection waits (healing: there is no other firewall) with the old claims kept.
    let r = w.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.still_healing, vec![c.id.clone()], "{r:?}");
    let now = w.ctl.connection(&c.id).unwrap();
    assert_eq!(
        now.state,
        meshwire_models::ConnectionState::Healing,
        "{now:?}"
    );

    dev.restart().unwrap();
    endpoint_event(&mut events, "fw1", false).await;
    assert!(!w.ctl.endpoints()[0].down, "{:?}", w.ensm.status());
    // The restarted device lost its config; the next round puts the connection back on it.
    w.ctl.reconcile_once().await.unwrap();
    let session = look(&dev).await;
    assert!(running(&session).await.contains(&c.id));
    assert_eq!(
        w.ctl.connection(&c.id).unwrap().state,
        meshwire_models::ConnectionState::Up
    );
    assert!(w.ensm.status().sessions_opened >= 2);
}

/// Input: an eNSM (not started: no health task) whose clock only moves by hand, a device
/// that goes away and comes back. Output: after a failed session open the eNSM waits its
/// backoff on that clock: while the clock stands still it does not try the device again, even
/// once the device is back; moved past the backoff, it reconnects and applies.
#[tokio::test]
async fn dev_ensm_session_backoff_follows_the_injected_clock() {
    let Some(mut dev) = device() else { return };
    let w = world(
        &dev,
        &crate_dir().join("profiles/meshwire-appliance.yaml"),
        8,
    )
    .await;
    let c = w.ctl.request(request("c1")).await.unwrap();
    let clock = meshwire_controller::ManualClock::new(1_000_000);
    let ensm = Ensm::with_clock(
        w.ensm.device().clone(),
        Profile::load(&crate_dir().join("profiles/meshwire-appliance.yaml")).unwrap(),
        Arc::new(w.ctl.clone()),
        Arc::new(clock.clone()),
    );
    dev.stop();
    let first = support::apply(&ensm, &c).await.unwrap_err();
    assert!(!first.reason.contains("next attempt in"), "{first}");
    assert!(first.retryable(), "{first:?}");
    let waiting = support::apply(&ensm, &c).await.unwrap_err();
    assert!(waiting.reason.contains("next attempt in"), "{waiting}");
    dev.restart().unwrap();
    // The device is back, but the clock has not moved: no new attempt.
    let again = support::apply(&ensm, &c).await.unwrap_err();
    assert!(again.reason.contains("next attempt in"), "{again}");
    // Past the longest backoff (10 s): it reconnects and applies.
    clock.advance(10_001);
    support::apply(&ensm, &c).await.unwrap();
    assert_eq!(ensm.status().sessions_opened, 1);
}
