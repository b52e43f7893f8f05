//! Input: manifests and connection requests through the controller, with a recording driver and
//! a manual clock. Output: the connections planned, the errors, what the driver was asked, and
//! the state after restarts and reconcile rounds.

use std::sync::Arc;

use meshwire_controller::driver::{DriverEvent, Happened, Health, Scope};
use meshwire_controller::store::{memory::MemoryStore, redb_store::RedbStore, Store};
use meshwire_controller::{
    Config, ConnectionFilter, Controller, ControllerError, Event, ManualClock, RecordingDriver,
};
use meshwire_models::{
    ClientRef, ConnectionRequest, ConnectionState, Manifest, Mechanism, MechanismKind, ObjectKey,
    ObjectKind,
};

const TOPOLOGY: &str = r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n1}
spec: {forwarder: ovs, underlayAddress: 192.0.2.1}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n2}
spec: {forwarder: ovs, underlayAddress: 192.0.2.2}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n3}
spec: {forwarder: kernel, underlayAddress: 192.0.2.3}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: n1-n2}
spec: {endpoints: ["n1:eth1", "n2:eth1"], cost: 10}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: n1-n3}
spec: {endpoints: ["n1:eth2", "n3:eth1"], cost: 10}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: n3-n2}
spec: {endpoints: ["n3:eth2", "n2:eth2"], cost: 10}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: vpn}
spec: {payload: IP}
"#;

fn endpoint(name: &str, node: &str, extra: &str) -> String {
    format!(
        "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {name}}}\nspec:\n  network_service_names: [vpn]\n  network_service_labels: {{vpn: {{labels: {{app: gw}}}}}}\n  location: {{node: {node}}}\n  routes: [10.60.0.0/16]\n{extra}"
    )
}

struct Harness {
    ctl: Controller,
    driver: Arc<RecordingDriver>,
    clock: ManualClock,
    store: Arc<dyn Store>,
}

async fn harness_on(store: Arc<dyn Store>, docs: &[String]) -> Harness {
    let driver = Arc::new(RecordingDriver::new());
    let clock = ManualClock::new(1_000_000);
    let ctl = Controller::start(
        store.clone(),
        driver.clone(),
        Arc::new(clock.clone()),
        Config::default(),
    )
    .await
    .unwrap();
    for d in docs {
        ctl.apply(Manifest::parse("t.yaml", d).unwrap())
            .await
            .unwrap();
    }
    Harness {
        ctl,
        driver,
        clock,
        store,
    }
}

async fn harness(docs: &[String]) -> Harness {
    harness_on(Arc::new(MemoryStore::default()), docs).await
}

fn req(node: &str, mechanisms: &[MechanismKind]) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "vpn".into(),
        client: ClientRef {
            node: node.into(),
            name: None,
        },
        labels: [("app".to_string(), "sarah".to_string())].into(),
        mechanisms: mechanisms.to_vec(),
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

#[tokio::test]
async fn nb_same_node_gets_kernel_veth_with_addresses_and_routes() {
    let h = harness(&[TOPOLOGY.into(), endpoint("e1", "n1", "")]).await;
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    assert_eq!(c.state, ConnectionState::Up);
    assert!(
        matches!(c.mechanism(), Some(Mechanism::Kernel { interface, .. }) if interface == "nsm-1")
    );
    assert_eq!(c.ip_context.src_ip_addrs[0].to_string(), "172.16.0.1/31");
    assert_eq!(c.ip_context.dst_ip_addrs[0].to_string(), "172.16.0.0/31");
    assert_eq!(
        c.ip_context.src_routes[0].prefix.to_string(),
        "10.60.0.0/16"
    );
    assert_eq!(h.driver.installed().len(), 1);
    // A second connection of the same client gets its own interface and addresses.
    let c2 = h.ctl.request(req("n1", &[])).await.unwrap();
    assert_eq!(c2.interface, "nsm-2");
    assert_eq!(c2.ip_context.src_ip_addrs[0].to_string(), "172.16.0.3/31");
}

#[tokio::test]
async fn nb_seed_example_client_speaks_vxlan_service_offers_vxlan_and_gre() {
    let h = harness(&[
        TOPOLOGY.into(),
        endpoint(
            "e2",
            "n2",
            "  mechanisms: {vxlan: {vniRange: {start: 5000, end: 5001}}, gre: {}}\n",
        ),
    ])
    .await;
    let c = h
        .ctl
        .request(req("n1", &[MechanismKind::Vxlan]))
        .await
        .unwrap();
    match c.mechanism().unwrap() {
        Mechanism::Vxlan {
            vni,
            src_ip,
            dst_ip,
            port,
        } => {
            assert_eq!(
                (*vni, src_ip.to_string(), dst_ip.to_string(), *port),
                (5000, "192.0.2.1".into(), "192.0.2.2".into(), 4789)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.path.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["n1", "n2"]
    );
    // GRE preferred and offered: GRE.
    let c = h
        .ctl
        .request(req("n1", &[MechanismKind::Gre, MechanismKind::Vxlan]))
        .await
        .unwrap();
    assert!(matches!(c.mechanism(), Some(Mechanism::Gre { .. })));
    // The VNI range holds two; a third VXLAN-only request finds the pool exhausted, with a clear message.
    h.ctl
        .request(req("n1", &[MechanismKind::Vxlan]))
        .await
        .unwrap();
    let err = h
        .ctl
        .request(req("n1", &[MechanismKind::Vxlan]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ControllerError::PoolExhausted { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("vxlan vni pool exhausted: every value in 5000..5001 is in use"),
        "{err}"
    );
}

#[tokio::test]
async fn nb_mpls_needs_every_hop_and_vxlan_does_not() {
    // n3 (kernel forwarder) cannot do MPLS; the direct n1-n2 link is the only MPLS path.
    let h = harness(&[
        TOPOLOGY.into(),
        endpoint("e2", "n2", "  mechanisms: {mpls: {}, vxlan: {}}\n"),
    ])
    .await;
    let c = h
        .ctl
        .request(req("n1", &[MechanismKind::Mpls]))
        .await
        .unwrap();
    assert_eq!(c.hops.len(), 1);
    let Some(Mechanism::Mpls {
        label_out,
        label_in,
    }) = c.mechanism()
    else {
        panic!()
    };
    assert_ne!(label_out, label_in);
    // Take the direct link down: MPLS has no path left, VXLAN goes around via n3.
    let down = TOPOLOGY
        .split("---")
        .find(|d| d.contains("name: n1-n2"))
        .unwrap()
        .replace("cost: 10}", "cost: 10, up: false}");
    h.ctl
        .apply(Manifest::parse("t.yaml", &down).unwrap())
        .await
        .unwrap();
    let err = h
        .ctl
        .request(req("n1", &[MechanismKind::Mpls]))
        .await
        .unwrap_err();
    assert!(matches!(err, ControllerError::NoPath { .. }), "{err}");
    assert!(
        err.to_string().contains("where every hop supports mpls"),
        "{err}"
    );
    let c = h
        .ctl
        .request(req("n1", &[MechanismKind::Vxlan]))
        .await
        .unwrap();
    assert_eq!(
        c.path.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["n1", "n3", "n2"]
    );
}

#[tokio::test]
async fn nb_errors_are_specific_and_leak_nothing() {
    let h = harness(&[TOPOLOGY.into(), endpoint("e3", "n3", "  capacity: 1\n")]).await;
    let mut unknown = req("n1", &[]);
    unknown.network_service = "nope".into();
    assert!(matches!(
        h.ctl.request(unknown).await,
        Err(ControllerError::UnknownService { .. })
    ));
    assert!(matches!(
        h.ctl.request(req("ghost", &[])).await,
        Err(ControllerError::UnknownNode { .. })
    ));
    // GRE on a kernel-forwarder endpoint node: no capable endpoint, with the reason.
    let err = h
        .ctl
        .request(req("n1", &[MechanismKind::Gre]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ControllerError::NoCapableEndpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gre: n3 cannot wire it"), "{err}");
    // The driver refuses: the request fails and nothing stays claimed or stored.
    h.driver.fail_endpoint("e3", true);
    let err = h.ctl.request(req("n1", &[])).await.unwrap_err();
    assert!(matches!(err, ControllerError::Driver { .. }), "{err}");
    assert!(
        h.ctl.pool_usage().values().all(|v| *v == 0),
        "{:?}",
        h.ctl.pool_usage()
    );
    assert_eq!(h.ctl.connection_count(), 0);
    assert!(h
        .store
        .list("/meshwire/v1/connections/")
        .await
        .unwrap()
        .0
        .is_empty());
    assert_eq!(
        h.driver
            .log()
            .iter()
            .filter(|l| l.starts_with("remove"))
            .count(),
        1,
        "partial wiring undone"
    );
    // Capacity 1: the second request is refused as full; closing frees it.
    h.driver.fail_endpoint("e3", false);
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    assert!(matches!(
        h.ctl.request(req("n1", &[])).await,
        Err(ControllerError::NoCapacity { .. })
    ));
    h.ctl.close(&c.id).await.unwrap();
    h.ctl.request(req("n1", &[])).await.unwrap();
    // A service in use cannot be deleted.
    let err = h
        .ctl
        .delete(&[ObjectKey {
            kind: ObjectKind::NetworkService,
            name: "vpn".into(),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, ControllerError::InUse { .. }), "{err}");
}

#[tokio::test]
async fn nb_least_loaded_then_round_robin() {
    let h = harness(&[
        TOPOLOGY.into(),
        endpoint("a", "n2", ""),
        endpoint("b", "n2", ""),
    ])
    .await;
    let mut picks = Vec::new();
    for _ in 0..4 {
        picks.push(
            h.ctl
                .request(req("n1", &[]))
                .await
                .unwrap()
                .network_service_endpoint_name,
        );
    }
    picks.sort();
    assert_eq!(picks, vec!["a", "a", "b", "b"]);
}

#[tokio::test]
async fn dev_restart_restores_objects_connections_and_claims_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (conns, usage) = {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let h = harness_on(store, &[TOPOLOGY.into(), endpoint("e2", "n2", "")]).await;
        for _ in 0..5 {
            h.ctl.request(req("n1", &[])).await.unwrap();
        }
        let gone = h.ctl.request(req("n1", &[])).await.unwrap();
        h.ctl.close(&gone.id).await.unwrap();
        (
            h.ctl.connections(&ConnectionFilter::default()),
            h.ctl.pool_usage(),
        )
    };
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let h = harness_on(store, &[]).await;
    assert_eq!(h.ctl.connections(&ConnectionFilter::default()), conns);
    assert_eq!(h.ctl.pool_usage(), usage);
    assert_eq!(h.ctl.services().len(), 1);
    assert_eq!(h.ctl.topology().links.len(), 3);
    // New claims do not collide with restored ones.
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    let vni = |c: &meshwire_models::Connection| match c.mechanism() {
        Some(Mechanism::Vxlan { vni, .. }) => *vni,
        _ => 0,
    };
    assert!(conns
        .iter()
        .all(|o| vni(o) != vni(&c) && o.ip_context.src_ip_addrs != c.ip_context.src_ip_addrs));
}

#[tokio::test]
async fn timer_reconcile_heals_repairs_expires_and_closes() {
    let h = harness(&[
        TOPOLOGY.into(),
        endpoint("a", "n2", "  expiration_time: \"1970-01-01T00:20:00Z\"\n"),
        endpoint("b", "n2", ""),
    ])
    .await;
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    assert!(h.ctl.reconcile_once().await.unwrap().is_quiet());
    // Wiring vanished but both ends are there: repaired in place, same endpoint.
    h.driver.break_connection(
        &c.id,
        Health::Missing {
            reason: "vxlan device gone".into(),
        },
    );
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.repaired, vec![c.id.clone()]);
    assert_eq!(
        h.ctl
            .connection(&c.id)
            .unwrap()
            .network_service_endpoint_name,
        c.network_service_endpoint_name
    );
    // The endpoint is lost: healed onto the other one, same id and interface, next generation.
    h.driver.break_connection(
        &c.id,
        Health::EndpointLost {
            reason: "netns gone".into(),
        },
    );
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.healed, vec![c.id.clone()]);
    let healed = h.ctl.connection(&c.id).unwrap();
    assert_ne!(
        healed.network_service_endpoint_name,
        c.network_service_endpoint_name
    );
    assert_eq!(
        (healed.interface.as_str(), healed.generation, healed.state),
        ("nsm-1", 1, ConnectionState::Up)
    );
    // Endpoint "a" expires (00:20:00 = 1,200,000 ms); a connection on it heals to "b".
    let on_b = h
        .ctl
        .connections(&ConnectionFilter {
            endpoint: Some("b".into()),
            ..Default::default()
        })
        .len();
    h.clock.advance(300_000);
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.expired, vec!["a".to_string()]);
    assert!(h.ctl.endpoints().iter().all(|e| e.endpoint.name == "b"));
    assert_eq!(
        h.ctl
            .connections(&ConnectionFilter {
                endpoint: Some("b".into()),
                ..Default::default()
            })
            .len(),
        on_b.max(1)
    );
    // With no endpoint left the connection waits in healing, keeping its claims.
    h.ctl
        .delete(&[ObjectKey {
            kind: ObjectKind::NetworkServiceEndpoint,
            name: "b".into(),
        }])
        .await
        .unwrap();
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.still_healing, vec![c.id.clone()]);
    let waiting = h.ctl.connection(&c.id).unwrap();
    assert_eq!(waiting.state, ConnectionState::Healing);
    assert!(waiting
        .last_error
        .unwrap()
        .contains("no endpoint offers network service"));
    assert!(h.ctl.pool_usage()["vxlan-vni"] == 1);
    // The endpoint comes back: the connection still holds it, so it is re-applied in place.
    h.ctl
        .apply(Manifest::parse("t.yaml", &endpoint("b", "n2", "")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        h.ctl.reconcile_once().await.unwrap().repaired,
        vec![c.id.clone()]
    );
    assert_eq!(h.ctl.connection(&c.id).unwrap().state, ConnectionState::Up);
    // The client disappears: closed and released.
    h.driver.break_connection(
        &c.id,
        Health::ClientGone {
            reason: "netns gone".into(),
        },
    );
    assert_eq!(
        h.ctl.reconcile_once().await.unwrap().closed,
        vec![c.id.clone()]
    );
    assert!(h.ctl.pool_usage().values().all(|v| *v == 0));
}

#[tokio::test]
async fn timer_link_down_reroutes_connection() {
    let h = harness(&[TOPOLOGY.into(), endpoint("e2", "n2", "")]).await;
    let c = h
        .ctl
        .request(req("n1", &[MechanismKind::Vxlan]))
        .await
        .unwrap();
    assert_eq!(c.path.len(), 2);
    let down = TOPOLOGY
        .split("---")
        .find(|d| d.contains("name: n1-n2"))
        .unwrap()
        .replace("cost: 10}", "cost: 10, up: false}");
    h.ctl
        .apply(Manifest::parse("t.yaml", &down).unwrap())
        .await
        .unwrap();
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.healed, vec![c.id.clone()]);
    let now = h.ctl.connection(&c.id).unwrap();
    assert_eq!(
        now.path.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["n1", "n3", "n2"]
    );
}

/// A device as the client (the onward leg of a chain through an appliance): it is planned like
/// any client, its numbers come from the device's range as well as the endpoint's, its own
/// endpoints are never chosen, and the placement names it so its eNSM wires that side.
#[tokio::test]
async fn nb_device_client_uses_the_device_range_and_never_lands_on_itself() {
    let device = "apiVersion: meshwire.io/v1\nkind: Device\nmetadata: {name: fw1}\nspec:\n  kind: meshwire-appliance\n  underlayAddress: 192.0.2.9\n  mechanisms: {vxlan: {vniRange: {start: 5000, end: 5001}}}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n3-fw1}\nspec: {endpoints: [\"n3:eth3\", \"fw1:eth1\"], cost: 10}\n".to_string();
    let own = "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: fw1-ep}\nspec:\n  network_service_names: [vpn]\n  network_service_labels: {vpn: {labels: {app: gw}}}\n  location: {device: fw1}\n  mechanisms: {vxlan: {vniRange: {start: 5000, end: 5001}}}\n".to_string();
    let h = harness(&[
        TOPOLOGY.to_string(),
        device,
        own,
        endpoint("gw", "n3", "  mechanisms: {vxlan: {}}\n"),
    ])
    .await;
    for _ in 0..2 {
        let c = h
            .ctl
            .request(req("fw1", &[MechanismKind::Vxlan]))
            .await
            .unwrap();
        assert_eq!(
            c.network_service_endpoint_name, "gw",
            "not its own endpoint"
        );
        assert_eq!(c.placement.client_device.as_deref(), Some("fw1"));
        assert_eq!(c.placement.client_netns, None);
        let Some(Mechanism::Vxlan { vni, .. }) = c.mechanism() else {
            panic!("{c:?}")
        };
        assert!((5000..=5001).contains(vni), "the device's range: {vni}");
    }
    // The device's range is used up: the third is refused, not given a number it would refuse.
    let e = h
        .ctl
        .request(req("fw1", &[MechanismKind::Vxlan]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("vni"), "{e}");
}

#[tokio::test]
async fn timer_a_failed_repair_is_requeued_alone_with_backoff() {
    let h = harness(&[TOPOLOGY.into(), endpoint("a", "n2", "")]).await;
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    let other = h.ctl.request(req("n3", &[])).await.unwrap();
    let missing = || Health::Missing {
        reason: "vxlan device gone".into(),
    };
    // The endpoint refuses wiring: the repair fails and the connection is requeued.
    h.driver.fail_endpoint("a", true);
    h.driver.break_connection(&c.id, missing());
    let r = h.ctl.reconcile_once().await.unwrap();
    assert!(r.repaired.is_empty(), "{r:?}");
    assert_eq!(r.failed, vec![c.id.clone()], "{r:?}");
    // A refusal will not pass by itself: it waits the longest (60 s) while the others go on.
    h.driver.break_connection(&c.id, missing());
    h.driver.break_connection(&other.id, missing());
    h.driver.fail_endpoint("a", false);
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.deferred, vec![c.id.clone()], "{r:?}");
    assert_eq!(r.repaired, vec![other.id.clone()], "{r:?}");
    assert!(h.ctl.connection(&c.id).unwrap().last_error.is_some());
    // Its time comes: repaired, and forgotten by the requeue.
    h.clock.advance(60_001);
    h.driver.break_connection(&c.id, missing());
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(r.repaired, vec![c.id.clone()], "{r:?}");
    assert!(r.deferred.is_empty());
    h.driver.break_connection(&c.id, missing());
    let r = h.ctl.reconcile_once().await.unwrap();
    assert_eq!(
        r.repaired,
        vec![c.id.clone()],
        "a success clears the backoff: {r:?}"
    );
}

/// Input: a connection up, a reconcile loop whose interval is an hour, then the driver reports
/// an interface of it gone (and its wiring is broken). Output: the controller passes the event
/// to watchers and repairs the connection at once, without waiting for the interval.
#[tokio::test]
async fn event_a_driver_event_runs_a_round_at_once() {
    let h = harness(&[TOPOLOGY.into(), endpoint("a", "n2", "")]).await;
    let c = h.ctl.request(req("n1", &[])).await.unwrap();
    let mut events = h.ctl.subscribe();
    let _loop = h.ctl.spawn_reconciler(std::time::Duration::from_secs(3600));
    // The start's full set and the loop's first round.
    h.driver.full_sets(2).await;
    h.driver.break_connection(
        &c.id,
        Health::Missing {
            reason: "nsm-1 deleted".into(),
        },
    );
    h.driver.report(DriverEvent {
        scope: Scope::Node("n1".into()),
        happened: Happened::InterfaceGone {
            netns: "n1".into(),
            ifname: "nsm-1".into(),
        },
        detail: "nsm-1 was deleted".into(),
    });
    let mut noted = false;
    let repaired = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match events.recv().await.unwrap() {
                Event::DataPlane { happened, .. } => {
                    noted = matches!(happened, Happened::InterfaceGone { .. })
                }
                Event::Connection { id, state, .. }
                    if id == c.id && state == ConnectionState::Up =>
                {
                    break
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(repaired.is_ok(), "not repaired within 30 s of the event");
    assert!(noted, "the event reached watchers first");
    assert!(h.driver.installed().iter().any(|i| i.id == c.id));
}

/// A driver that remembers the version of everything it is handed.
#[derive(Default)]
struct Versions(std::sync::Mutex<Vec<u64>>);

#[async_trait::async_trait]
impl meshwire_controller::Driver for Versions {
    fn name(&self) -> &str {
        "versions"
    }
    async fn converge(
        &self,
        desired: &meshwire_controller::Desired<'_>,
    ) -> Result<meshwire_controller::Report, meshwire_controller::DriverError> {
        self.0.lock().unwrap().push(desired.version);
        Ok(meshwire_controller::Report::at(desired.version))
    }
}

/// Input: a controller that wires a connection, then another controller process on the same
/// store (a restart, a new leader) handing the same driver its first full set. Output: the
/// versions only increase, across the two: a driver that outlived the first (a node agent)
/// takes the second's full set as newer than anything the first sent it.
#[tokio::test]
async fn dev_versions_increase_across_controller_processes() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let driver = Arc::new(Versions::default());
    let start = || {
        Controller::start(
            store.clone(),
            driver.clone(),
            Arc::new(meshwire_controller::SystemClock),
            Config::default(),
        )
    };
    let a = start().await.unwrap();
    let docs = [TOPOLOGY.to_string(), endpoint("gw1", "n3", "")];
    for d in &docs {
        a.apply(Manifest::parse("t.yaml", d).unwrap())
            .await
            .unwrap();
    }
    let req = ConnectionRequest {
        network_service: "vpn".into(),
        client: ClientRef {
            node: "n3".into(),
            name: Some("w".into()),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    };
    a.request(req).await.unwrap();
    drop(a);
    let _b = start().await.unwrap();
    let v = driver.0.lock().unwrap().clone();
    assert!(v.len() >= 3, "{v:?}");
    assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
}
