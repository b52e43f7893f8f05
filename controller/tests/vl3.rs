//! Input: a vL3 service (10.90.0.0/16) with three routers on two nodes, members requesting it,
//! one member's router lost, a router removed, a restart on the same store. Output: the
//! routers' peer legs (one per pair, pinned to the pair), each carrying a /32 route to every
//! member behind the other side via that side's leg address, and the members' names; the
//! members' addresses unique, kept through a heal and a restart, given back on close; routers
//! that go take only their own peer legs with them.

use std::collections::BTreeSet;
use std::sync::Arc;

use meshwire_controller::driver::Health;
use meshwire_controller::store::{memory::MemoryStore, Store};
use meshwire_controller::{Config, Controller, ManualClock, RecordingDriver};
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, Manifest, ObjectKey, ObjectKind,
    Vl3Role,
};

const DOCS: &str = r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n1}
spec: {forwarder: kernel, underlayAddress: 192.0.2.1}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n2}
spec: {forwarder: kernel, underlayAddress: 192.0.2.2}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: n1-n2}
spec: {endpoints: ["n1:eth1", "n2:eth1"]}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: db}
spec: {payload: IP, vl3: {prefix: 10.90.0.0/16}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: r1}
spec: {network_service_names: [db], location: {node: n1, netns: r1}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: r2}
spec: {network_service_names: [db], location: {node: n2, netns: r2}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: r3}
spec: {network_service_names: [db], location: {node: n1, netns: r3}}
"#;

async fn start(store: Arc<dyn Store>) -> (Controller, Arc<RecordingDriver>) {
    let driver = Arc::new(RecordingDriver::new());
    let ctl = Controller::start(
        store,
        driver.clone(),
        Arc::new(ManualClock::new(1_000_000)),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(Manifest::parse("t.yaml", DOCS).unwrap())
        .await
        .unwrap();
    (ctl, driver)
}

fn member(name: &str, node: &str) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "db".into(),
        client: ClientRef {
            node: node.into(),
            name: Some(name.into()),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

fn legs(ctl: &Controller, role: Vl3Role) -> Vec<Connection> {
    ctl.connections(&Default::default())
        .into_iter()
        .filter(|c| c.vl3.as_ref().is_some_and(|v| v.role == role))
        .collect()
}

fn pair(c: &Connection) -> (String, String) {
    let from = c.labels["meshwire.io/vl3-router"].clone();
    let to = c.network_service_endpoint_name.clone();
    (from.clone().min(to.clone()), from.max(to))
}

/// Every peer leg routes every member behind its far side via that side, on both sides.
fn assert_routes(ctl: &Controller) {
    let members = legs(ctl, Vl3Role::Member);
    for p in legs(ctl, Vl3Role::Peer) {
        let from = p.labels["meshwire.io/vl3-router"].clone();
        let behind = |router: &str| -> BTreeSet<String> {
            members
                .iter()
                .filter(|m| m.network_service_endpoint_name == router)
                .map(|m| m.ip_context.src_ip_addrs[0].to_string())
                .collect()
        };
        let routes = |rs: &[meshwire_models::Route], via| -> BTreeSet<String> {
            rs.iter()
                .inspect(|r| assert_eq!(r.next_hop, Some(via), "{p:?}"))
                .map(|r| r.prefix.to_string())
                .collect()
        };
        let (mine, theirs) = (
            p.ip_context.src_ip_addrs[0].addr(),
            p.ip_context.dst_ip_addrs[0].addr(),
        );
        assert_eq!(
            routes(&p.ip_context.src_routes, theirs),
            behind(&p.network_service_endpoint_name)
        );
        assert_eq!(routes(&p.ip_context.dst_routes, mine), behind(&from));
    }
}

#[tokio::test]
async fn vl3_mesh_members_heal_restart_and_routers_leaving() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (ctl, driver) = start(store.clone()).await;
    ctl.reconcile_once().await.unwrap();
    let peers = legs(&ctl, Vl3Role::Peer);
    // Their addresses are the vL3's own, never the gateway.
    for p in &peers {
        for a in p
            .ip_context
            .src_ip_addrs
            .iter()
            .chain(&p.ip_context.dst_ip_addrs)
        {
            assert!(a.addr().to_string().starts_with("10.90.0."), "{a}");
            assert_ne!(a.addr().to_string(), "10.90.0.1");
        }
    }
    let pairs: BTreeSet<_> = peers.iter().map(pair).collect();
    assert_eq!(
        pairs,
        BTreeSet::from([
            ("r1".to_string(), "r2".to_string()),
            ("r1".into(), "r3".into()),
            ("r2".into(), "r3".into())
        ])
    );
    // Members: the router of their own node first; one address each, never the gateway.
    let a = ctl.request(member("a", "n1")).await.unwrap();
    let b = ctl.request(member("b", "n2")).await.unwrap();
    let c = ctl.request(member("c", "n1")).await.unwrap();
    assert_eq!(b.network_service_endpoint_name, "r2");
    assert_ne!(a.network_service_endpoint_name, "r2");
    let addrs: BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|m| m.ip_context.src_ip_addrs[0].to_string())
        .collect();
    assert_eq!(addrs.len(), 3);
    assert!(!addrs.contains("10.90.0.1/32"), "{addrs:?}");
    assert_eq!(a.vl3.as_ref().unwrap().name.as_deref(), Some("a"));
    assert_eq!(
        a.dns_context.as_ref().unwrap().configs[0].search_domains,
        ["db"]
    );
    assert_routes(&ctl);
    // The data plane was handed the peer legs' new routes.
    let installed = driver.installed();
    for p in legs(&ctl, Vl3Role::Peer) {
        let d = installed.iter().find(|x| x.id == p.id).unwrap();
        assert_eq!(d.ip_context, p.ip_context);
    }

    // a's router is lost: a heals onto another router with its address; routes follow.
    let lost = a.network_service_endpoint_name.clone();
    driver.break_connection(
        &a.id,
        Health::EndpointLost {
            reason: "netns gone".into(),
        },
    );
    let r = ctl.reconcile_once().await.unwrap();
    assert!(r.healed.contains(&a.id), "{r:?}");
    let healed = ctl.connection(&a.id).unwrap();
    assert_ne!(healed.network_service_endpoint_name, lost);
    assert_eq!(healed.ip_context.src_ip_addrs, a.ip_context.src_ip_addrs);
    assert_eq!(healed.state, ConnectionState::Up);
    assert_routes(&ctl);

    // A restart on the same store: the same legs and addresses; a new member gets a new one.
    drop(ctl);
    let (ctl, _driver) = start(store.clone()).await;
    ctl.reconcile_once().await.unwrap();
    assert_eq!(legs(&ctl, Vl3Role::Peer).len(), 3);
    let d = ctl.request(member("d", "n2")).await.unwrap();
    assert!(!addrs.contains(&d.ip_context.src_ip_addrs[0].to_string()));
    assert_routes(&ctl);

    // Router r3 is removed: only its two peer legs go; the r1-r2 leg stays as it was.
    let kept: Vec<String> = legs(&ctl, Vl3Role::Peer)
        .iter()
        .filter(|p| pair(p) == ("r1".into(), "r2".into()))
        .map(|p| p.id.clone())
        .collect();
    for m in legs(&ctl, Vl3Role::Member) {
        if m.network_service_endpoint_name == "r3" {
            ctl.close(&m.id).await.unwrap();
        }
    }
    ctl.delete(&[ObjectKey {
        kind: ObjectKind::NetworkServiceEndpoint,
        name: "r3".into(),
    }])
    .await
    .unwrap();
    ctl.reconcile_once().await.unwrap();
    let now: Vec<String> = legs(&ctl, Vl3Role::Peer)
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(now, kept);
    assert_routes(&ctl);

    // A member that closes gives its address back: the next member may take it.
    ctl.close(&b.id).await.unwrap();
    assert_routes(&ctl);
    let e = ctl.request(member("e", "n2")).await.unwrap();
    assert!(e.ip_context.src_ip_addrs[0]
        .addr()
        .to_string()
        .starts_with("10.90.0."));
    // No address is held twice (the gateway is every router's, on purpose).
    let held: Vec<String> = ctl
        .connections(&Default::default())
        .iter()
        .flat_map(|c| {
            c.ip_context
                .src_ip_addrs
                .iter()
                .chain(&c.ip_context.dst_ip_addrs)
                .map(|a| a.addr().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|a| a != "10.90.0.1")
        .collect();
    let unique: BTreeSet<&String> = held.iter().collect();
    assert_eq!(unique.len(), held.len(), "{held:?}");

    // The service is no longer a vL3: its routers' legs go.
    ctl.apply(
        Manifest::parse(
            "t.yaml",
            "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: db}\nspec: {payload: IP}\n",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    ctl.reconcile_once().await.unwrap();
    assert!(legs(&ctl, Vl3Role::Peer).is_empty());
}
