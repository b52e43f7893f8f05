//! Input: a node's SR-IOV report (pools, VFs, tokens, PFs down) as its agent sends it, and
//! requests with tokens. Output: which VF each connection is lent, the refusals (token unknown,
//! not allocated, in use; pool exhausted; PF down), and the claims after a close and a restart.

use std::sync::Arc;
use std::time::Duration;

use meshwire_controller::driver::{DriverEvent, Happened, Scope};
use meshwire_controller::store::{memory::MemoryStore, Store};
use meshwire_controller::{
    Config, Controller, ControllerError, Event, ManualClock, RecordingDriver,
};
use meshwire_models::sriov::{NodeSriov, TokenInfo, Vf};
use meshwire_models::{ClientRef, ConnectionRequest, ConnectionState, Manifest, Mechanism};

const DOCS: &str = r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n1}
spec: {forwarder: kernel, underlayAddress: 192.0.2.1}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: net}
spec: {payload: ETHERNET}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: pf}
spec:
  network_service_names: [net]
  location: {node: n1}
  mechanisms: {sriovVf: {vlan: 100}}
  ipamPrefix: 10.80.0.0/24
"#;

const PF: &str = "0000:3b:00.0";

/// Tokens t1, t2 and t4 allocated by the kubelet, t3 not.
const FOUR_TOKENS: &[(&str, bool)] = &[
    ("sriov-t1", true),
    ("sriov-t2", true),
    ("sriov-t3", false),
    ("sriov-t4", true),
];

fn vf(i: u32) -> Vf {
    Vf {
        pci: format!("0000:3b:01.{i}").parse().unwrap(),
        pf: PF.parse().unwrap(),
        index: i,
        pf_netdev: Some("pf0".into()),
        netdev: Some(format!("pf0v{i}")),
        driver: Some("iavf".into()),
        iommu_group: Some(format!("{}", 40 + i)),
        vendor: "8086".into(),
        device: "1889".into(),
    }
}

fn report(tokens: &[(&str, bool)], pf_down: bool) -> NodeSriov {
    NodeSriov {
        pools: [("d.example/10G".to_string(), vec![vf(0), vf(1)])].into(),
        pfs_down: if pf_down {
            vec![PF.parse().unwrap()]
        } else {
            vec![]
        },
        tokens: tokens
            .iter()
            .map(|(id, allocated)| {
                (
                    id.to_string(),
                    TokenInfo {
                        pool: "d.example/10G".into(),
                        allocated: *allocated,
                    },
                )
            })
            .collect(),
    }
}

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

/// Sends the node's report as its agent would and waits until the controller has taken it.
async fn send(ctl: &Controller, driver: &RecordingDriver, r: NodeSriov) {
    let mut events = ctl.subscribe();
    driver.report(DriverEvent {
        scope: Scope::Node("n1".into()),
        happened: Happened::NodeSriov { sriov: r },
        detail: "report".into(),
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::DataPlane {
                happened: Happened::NodeSriov { .. },
                ..
            } = events.recv().await.unwrap()
            {
                return;
            }
        }
    })
    .await
    .expect("the report is taken");
}

fn req(pod: &str, token: Option<&str>) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "net".into(),
        client: ClientRef {
            node: "n1".into(),
            name: Some(pod.into()),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: token.map(str::to_string),
    }
}

fn lent(c: &meshwire_models::Connection) -> (String, String, Option<u16>) {
    match c.mechanism() {
        Some(Mechanism::SriovVf {
            pci_address,
            token,
            vlan,
            ..
        }) => (pci_address.clone(), token.clone(), *vlan),
        other => panic!("not a VF: {other:?}"),
    }
}

async fn refused(ctl: &Controller, r: ConnectionRequest, says: &str, exhausted: bool) {
    match ctl.request(r).await {
        Err(e @ ControllerError::Sriov { .. }) => {
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(
                matches!(
                    e,
                    ControllerError::Sriov {
                        exhausted: true,
                        ..
                    }
                ),
                exhausted,
                "{e}"
            );
        }
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn nb_tokens_claim_vfs_once_and_claims_survive_a_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (ctl, driver) = start(store.clone()).await;
    let _loop = ctl.spawn_reconciler(Duration::from_secs(3600));
    // Before any report: the node has no pools.
    refused(
        &ctl,
        req("p1", Some("sriov-t1")),
        "reports no SR-IOV pools",
        false,
    )
    .await;
    send(&ctl, &driver, report(FOUR_TOKENS, false)).await;

    let c1 = ctl.request(req("p1", Some("sriov-t1"))).await.unwrap();
    assert_eq!(c1.state, ConnectionState::Up);
    assert_eq!(
        lent(&c1),
        ("0000:3b:01.0".into(), "sriov-t1".into(), Some(100))
    );
    refused(
        &ctl,
        req("p9", Some("sriov-t1")),
        "in use by connection",
        false,
    )
    .await;
    refused(
        &ctl,
        req("p9", Some("sriov-t3")),
        "not allocated to any pod",
        false,
    )
    .await;
    refused(
        &ctl,
        req("p9", Some("sriov-nope")),
        "not one of this node's",
        false,
    )
    .await;
    match ctl.request(req("p9", None)).await {
        Err(e) => assert!(e.to_string().contains("device plugin token"), "{e}"),
        Ok(c) => panic!("a VF without a token: {c:?}"),
    }
    let c2 = ctl.request(req("p2", Some("sriov-t2"))).await.unwrap();
    assert_eq!(lent(&c2).0, "0000:3b:01.1");
    refused(
        &ctl,
        req("p4", Some("sriov-t4")),
        "has no free VF (2 VFs: 2 lent",
        true,
    )
    .await;
    let usage = ctl.sriov_usage();
    assert_eq!(
        (
            usage[0].total,
            usage[0].allocated,
            usage[0].tokens_allocated
        ),
        (2, 2, 3)
    );

    // A close gives the VF and the token back.
    ctl.close(&c1.id).await.unwrap();
    let c4 = ctl.request(req("p4", Some("sriov-t4"))).await.unwrap();
    assert_eq!(lent(&c4).0, "0000:3b:01.0");

    // A restart on the same store: the claims come back with the connections.
    drop(_loop);
    drop(ctl);
    let (ctl, driver) = start(store).await;
    let _loop = ctl.spawn_reconciler(Duration::from_secs(3600));
    send(&ctl, &driver, report(FOUR_TOKENS, false)).await;
    refused(
        &ctl,
        req("p9", Some("sriov-t2")),
        "in use by connection",
        false,
    )
    .await;
    refused(&ctl, req("p1", Some("sriov-t1")), "has no free VF", true).await;
    assert_eq!(ctl.sriov_usage()[0].allocated, 2);

    // The PF's link down: its VFs are not lent.
    ctl.close(&c2.id).await.unwrap();
    send(&ctl, &driver, report(FOUR_TOKENS, true)).await;
    refused(
        &ctl,
        req("p1", Some("sriov-t1")),
        "2 on a PF whose link is down",
        true,
    )
    .await;
    assert_eq!(ctl.sriov_usage()[0].unhealthy, 2);
}

#[tokio::test]
async fn nb_the_next_vf_after_the_last_lent_and_two_records_of_one_vf_refuse_the_restore() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (ctl, driver) = start(store.clone()).await;
    let _loop = ctl.spawn_reconciler(Duration::from_secs(3600));
    send(
        &ctl,
        &driver,
        report(&[("sriov-t1", true), ("sriov-t2", true)], false),
    )
    .await;
    // VF 0 lent and given back: the next request gets VF 1 (a VF that cannot be lent fails
    // one request, not every one).
    let c1 = ctl.request(req("p1", Some("sriov-t1"))).await.unwrap();
    assert_eq!(lent(&c1).0, "0000:3b:01.0");
    ctl.close(&c1.id).await.unwrap();
    let c2 = ctl.request(req("p2", Some("sriov-t2"))).await.unwrap();
    assert_eq!(lent(&c2).0, "0000:3b:01.1");

    // A second record claiming c2's VF (written by hand): the restore refuses to start.
    let mut twin = c2.clone();
    twin.id = "0badc0de-0000-0000-0000-000000000000".into();
    store
        .put(
            &format!("/meshwire/v1/connections/{}", twin.id),
            serde_json::to_vec(&twin).unwrap(),
            meshwire_controller::store::Expect::Any,
        )
        .await
        .unwrap();
    drop(_loop);
    drop(ctl);
    let driver = Arc::new(RecordingDriver::new());
    let again = Controller::start(
        store,
        driver,
        Arc::new(ManualClock::new(1_000_000)),
        Config::default(),
    )
    .await;
    match again {
        Err(e @ ControllerError::Corrupt { .. }) => {
            assert!(e.to_string().contains("0000:3b:01.1"), "{e}")
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a VF claimed twice was restored"),
    }
}
