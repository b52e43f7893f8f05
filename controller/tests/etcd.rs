//! Input: the store conformance steps and a controller restart, against a real etcd-server
//! started for the test. Output: the same behaviour as the embedded store.

use std::sync::Arc;

use meshwire_controller::store::{
    etcd_store::{EtcdStore, LocalEtcd},
    Expect, Store, StoreError, WatchEvent,
};
use meshwire_controller::{Config, ConnectionFilter, Controller, NullDriver, SystemClock};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};

/// A real etcd-server, or None when it is not installed and the run does not require it (CI sets
/// MESHWIRE_REQUIRE_ALL=1, so there it must exist).
async fn etcd() -> Option<LocalEtcd> {
    match LocalEtcd::start().await {
        Ok(e) => Some(e),
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => {
            eprintln!("SKIP: {e}");
            None
        }
        Err(e) => panic!("etcd is required: {e}"),
    }
}

async fn connect(e: &LocalEtcd) -> EtcdStore {
    e.store().await.unwrap()
}

#[tokio::test]
async fn dev_etcd_conditions_watch_and_resume() {
    let Some(e) = etcd().await else { return };
    let s = connect(&e).await;
    let r1 = s.put("/t/a", b"1".to_vec(), Expect::Absent).await.unwrap();
    assert!(matches!(
        s.put("/t/a", b"x".to_vec(), Expect::Absent).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut w = s.watch("/t/", r1).await.unwrap();
    let r2 = s
        .put("/t/a", b"2".to_vec(), Expect::ModRevision(r1))
        .await
        .unwrap();
    let err = s
        .put("/t/a", b"3".to_vec(), Expect::ModRevision(r1))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("expected revision {r1}, found revision {r2}")),
        "{err}"
    );
    assert!(s.delete("/t/a", Expect::ModRevision(r2)).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(matches!(ev, WatchEvent::Put(_)));
    }
    assert_eq!(seen, vec![true, false]);
    let (list, _) = s.list("/t/").await.unwrap();
    assert!(list.is_empty());
}

#[tokio::test]
async fn dev_etcd_controller_restart_restores_state() {
    let Some(e) = etcd().await else { return };
    let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}}\n";
    let before = {
        let store: Arc<dyn Store> = Arc::new(connect(&e).await);
        let ctl = Controller::start(
            store,
            Arc::new(NullDriver),
            Arc::new(SystemClock),
            Config::default(),
        )
        .await
        .unwrap();
        ctl.apply(Manifest::parse("t.yaml", docs).unwrap())
            .await
            .unwrap();
        let req = ConnectionRequest {
            network_service: "s".into(),
            client: ClientRef {
                node: "n1".into(),
                name: None,
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
        };
        ctl.request(req).await.unwrap();
        (
            ctl.connections(&ConnectionFilter::default()),
            ctl.pool_usage(),
        )
    };
    let store: Arc<dyn Store> = Arc::new(connect(&e).await);
    let ctl = Controller::start(
        store,
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            ctl.connections(&ConnectionFilter::default()),
            ctl.pool_usage()
        ),
        before
    );
    assert_eq!(ctl.endpoints().len(), 1);
}
