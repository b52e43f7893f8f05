//! Input: a leader controller writing to a store, and a standby's replica of that store whose
//! first watch fails as one that fell behind a compaction. Output: the replica reads the state
//! again instead of dying, then follows every later change (a request, a close, an object).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::store::{Entry, Expect, Revision, Store, StoreError, WatchEvent};
use meshwire_controller::{Config, Controller, NullDriver, SystemClock};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};
use tokio::sync::mpsc;

/// A memory store whose first watch says it fell behind a compaction.
struct Compacting {
    inner: MemoryStore,
    first: AtomicBool,
}

#[async_trait]
impl Store for Compacting {
    fn describe(&self) -> String {
        "compacting".into()
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        self.inner.put(key, value, expect).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        self.inner.delete(key, expect).await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
        if self.first.swap(false, Ordering::SeqCst) {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx
                .send(Err(StoreError::Compacted {
                    store: "compacting".into(),
                    from: after,
                    oldest: after + 100,
                }))
                .await;
            return Ok(rx);
        }
        self.inner.watch(prefix, after).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn req(name: &str) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "s".into(),
        client: ClientRef {
            node: "n1".into(),
            name: Some(name.into()),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

/// Waits (bounded) until `ok` holds of the replica.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "the replica: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dev_a_replica_behind_a_compaction_reads_again_and_follows() {
    let store = Arc::new(Compacting {
        inner: MemoryStore::default(),
        first: AtomicBool::new(true),
    });
    let leader = Controller::start(
        store.clone(),
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await
    .unwrap();
    let docs = "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], location: {node: n1}, ipamPrefix: 10.0.0.0/24}\n";
    leader
        .apply(Manifest::parse("t.yaml", docs).unwrap())
        .await
        .unwrap();
    let first = leader.request(req("a")).await.unwrap();

    let (replica, _follow) = Controller::replica(store.clone(), Config::default())
        .await
        .unwrap();
    assert!(replica.connection(&first.id).is_some());
    // The first watch failed as compacted: the replica read everything again and watches on.
    let second = leader.request(req("b")).await.unwrap();
    until("sees a new connection", || {
        replica.connection(&second.id).is_some()
    })
    .await;
    leader.close(&first.id).await.unwrap();
    until("sees a closed one go", || {
        replica.connection(&first.id).is_none()
    })
    .await;
    let more = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s2}\n";
    leader
        .apply(Manifest::parse("t2.yaml", more).unwrap())
        .await
        .unwrap();
    until("sees a new object", || {
        replica
            .objects(meshwire_models::ObjectKind::NetworkService)
            .len()
            == 2
    })
    .await;
    // It writes nothing, whatever it is asked.
    assert!(
        replica.request(req("c")).await.is_err(),
        "a replica does not write"
    );
    assert!(leader.connections(&Default::default()).len() == 1);
    // Its claims follow the leader's: the same address pairs in use.
    assert_eq!(replica.pool_usage(), leader.pool_usage());
    assert_eq!(
        replica.connection(&second.id),
        leader.connection(&second.id)
    );
}
