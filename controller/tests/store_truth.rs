//! Input: connection requests, closes and reconcile rounds through the controller, over a store
//! that refuses chosen writes or deletes and a driver that can hold `apply` at a gate. Output:
//! what callers are told, what the store holds, what is wired, and what a restart brings back.
//! The rule under test: what is reported done is stored; what is removed is removed from the
//! store first; a request nobody waits for any more is undone on purpose; one record the store
//! refuses never stops a reconcile round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use meshwire_controller::driver::{
    Dataplanes, Desired, Driver, DriverError, Health, Observation, Report, Scope, Update,
    PEER_OBSERVE_TIMEOUT,
};
use meshwire_controller::store::faulty::FaultyStore;
use meshwire_controller::store::Store;
use meshwire_controller::{
    Config, ConnectionFilter, Controller, ControllerError, Event, ManualClock, RecordingDriver,
};
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, ForwarderKind, Manifest,
};
use tokio::sync::Notify;

const TOPOLOGY: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e1}\nspec: {network_service_names: [vpn], location: {node: n1}}\n";

/// A recording driver whose `apply` can be held at a gate.
struct GatedDriver {
    inner: RecordingDriver,
    hold: AtomicBool,
    entered: Notify,
    release: Notify,
}

impl GatedDriver {
    fn new(hold: bool) -> Arc<GatedDriver> {
        Arc::new(GatedDriver {
            inner: RecordingDriver::new(),
            hold: AtomicBool::new(hold),
            entered: Notify::new(),
            release: Notify::new(),
        })
    }
}

#[async_trait]
impl Driver for GatedDriver {
    fn name(&self) -> &str {
        "gated"
    }
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        let wires = matches!(&desired.update, Update::Delta { upsert, .. } if !upsert.is_empty());
        if wires && self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.inner.converge(desired).await
    }
}

async fn start(store: Arc<dyn Store>, driver: Arc<dyn Driver>) -> Controller {
    let ctl = Controller::start(
        store,
        driver,
        Arc::new(ManualClock::new(1_000_000)),
        Config::default(),
    )
    .await
    .unwrap();
    ctl.apply(Manifest::parse("t.yaml", TOPOLOGY).unwrap())
        .await
        .unwrap();
    ctl
}

fn req(name: &str) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "vpn".into(),
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

fn live(ctl: &Controller) -> Vec<Connection> {
    ctl.connections(&ConnectionFilter::default())
}

/// Input: the store takes the `programming` record, then refuses the `up` one. Output: the
/// request fails with a store error (retryable: 503 at the edge), nothing stays wired, stored or
/// claimed.
#[tokio::test]
async fn dev_store_refusing_the_up_record_undoes_the_request() {
    let store = Arc::new(FaultyStore::default());
    let driver = Arc::new(RecordingDriver::new());
    let ctl = start(store.clone(), driver.clone()).await;
    let usage = ctl.pool_usage();
    store.put_budget.store(1, Ordering::SeqCst);
    let e = ctl.request(req("w1")).await.unwrap_err();
    assert!(matches!(e, ControllerError::Store(_)), "{e}");
    assert!(driver.installed().is_empty());
    assert!(live(&ctl).is_empty());
    assert!(store.connection_keys().await.is_empty());
    assert_eq!(ctl.pool_usage(), usage);
}

/// Input: a live connection whose close meets a store that refuses the delete, then a store
/// that takes it, then a restart. Output: the first close fails and the connection stays (with
/// the reason); the second closes it; the restart brings nothing back.
#[tokio::test]
async fn dev_store_refusing_a_delete_keeps_the_connection() {
    let store = Arc::new(FaultyStore::default());
    let driver = Arc::new(RecordingDriver::new());
    let ctl = start(store.clone(), driver.clone()).await;
    let c = ctl.request(req("w1")).await.unwrap();
    store.refuse_deletes.store(true, Ordering::SeqCst);
    let e = ctl.close(&c.id).await.unwrap_err();
    assert!(matches!(e, ControllerError::Store(_)), "{e}");
    let kept = ctl.connection(&c.id).expect("the connection stays");
    assert!(
        kept.last_error
            .as_deref()
            .is_some_and(|m| m.contains("close")),
        "{kept:?}"
    );
    assert_eq!(store.connection_keys().await.len(), 1);
    // An object delete the store refuses leaves the object, in memory as in the store.
    let ep = meshwire_models::ObjectKey {
        kind: meshwire_models::ObjectKind::NetworkServiceEndpoint,
        name: "e1".into(),
    };
    assert!(ctl.delete(std::slice::from_ref(&ep)).await.is_err());
    assert!(ctl.object(&ep).is_some());

    store.refuse_deletes.store(false, Ordering::SeqCst);
    ctl.close(&c.id).await.unwrap();
    assert!(store.connection_keys().await.is_empty());
    let again = start(store.clone(), Arc::new(RecordingDriver::new())).await;
    assert!(live(&again).is_empty());
}

/// Input: two broken connections; the store refuses the first one's record. Output: the round
/// completes, reports the first as failed and repairs the second; the next round, with the store
/// back, finds nothing to do.
#[tokio::test]
async fn timer_one_unstorable_connection_never_stops_a_round() {
    let store = Arc::new(FaultyStore::default());
    let driver = Arc::new(RecordingDriver::new());
    let ctl = start(store.clone(), driver.clone()).await;
    let a = ctl.request(req("w1")).await.unwrap();
    let b = ctl.request(req("w2")).await.unwrap();
    for c in [&a, &b] {
        driver.break_connection(
            &c.id,
            Health::Missing {
                reason: "veth gone".into(),
            },
        );
    }
    store.refuse_puts_of.lock().unwrap().insert(a.id.clone());
    let r = ctl.reconcile_once().await.unwrap();
    assert_eq!(r.failed, vec![a.id.clone()], "{r:?}");
    assert_eq!(r.repaired, vec![b.id.clone()], "{r:?}");
    // The first was rewired although its record was refused; with the store back, the next
    // round finds both healthy and up, as stored.
    store.refuse_puts_of.lock().unwrap().clear();
    let r = ctl.reconcile_once().await.unwrap();
    assert!(r.is_quiet(), "{r:?}");
    assert_eq!(driver.installed().len(), 2);
}

/// Input: a request whose caller goes away while the data plane is wiring it. Output: the
/// request runs to its end and is then closed on purpose (nobody was told it exists): nothing
/// stays wired or stored, and a Closed event says so.
#[tokio::test]
async fn nb_cancelled_request_is_undone_on_purpose() {
    let store = Arc::new(FaultyStore::default());
    let driver = GatedDriver::new(true);
    let ctl = start(store.clone(), driver.clone()).await;
    let mut events = ctl.subscribe();
    let caller = {
        let ctl = ctl.clone();
        tokio::spawn(async move { ctl.request(req("w1")).await })
    };
    driver.entered.notified().await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    driver.release.notify_one();
    loop {
        if let Event::Connection {
            state: ConnectionState::Closed,
            ..
        } = events.recv().await.unwrap()
        {
            break;
        }
    }
    assert!(live(&ctl).is_empty());
    assert!(driver.inner.installed().is_empty());
    assert!(store.connection_keys().await.is_empty());
}

/// Input: a controller that dies while wiring a request (its `programming` record is stored),
/// and a new controller on the same store. Output: the new controller's first round undoes the
/// abandoned request: record deleted, claims released, nothing wired.
#[tokio::test]
async fn dev_abandoned_programming_record_is_undone_at_reconcile() {
    let store = Arc::new(FaultyStore::default());
    let stuck = GatedDriver::new(true);
    let first = start(store.clone(), stuck.clone()).await;
    tokio::spawn({
        let first = first.clone();
        async move { first.request(req("w1")).await }
    });
    stuck.entered.notified().await;
    assert_eq!(store.connection_keys().await.len(), 1);

    let driver = Arc::new(RecordingDriver::new());
    let second = start(store.clone(), driver.clone()).await;
    let restored = live(&second);
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].state, ConnectionState::Programming);
    let r = second.reconcile_once().await.unwrap();
    assert_eq!(r.undone, vec![restored[0].id.clone()], "{r:?}");
    assert!(live(&second).is_empty());
    assert!(store.connection_keys().await.is_empty());
    assert!(driver.installed().is_empty());
}

/// A driver whose `observe` never answers.
struct Silent;

#[async_trait]
impl Driver for Silent {
    fn name(&self) -> &str {
        "silent"
    }
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        if desired.is_full() {
            std::future::pending().await
        }
        Ok(Report::at(desired.version))
    }
}

/// A device's eNSM that sees every connection as lost.
struct Lost;

#[async_trait]
impl Driver for Lost {
    fn name(&self) -> &str {
        "lost"
    }
    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        let Update::Full { connections, .. } = &desired.update else {
            return Ok(Report::at(desired.version));
        };
        Ok(Report {
            version: desired.version,
            swept: 0,
            created: vec![],
            observation: Observation {
                connections: connections
                    .iter()
                    .map(|c| {
                        (
                            c.id.clone(),
                            Health::EndpointLost {
                                reason: "device down".into(),
                            },
                        )
                    })
                    .collect(),
            },
        })
    }
}

/// Input: three devices' eNSMs, two of which never answer `observe`, and one that reports its
/// connection lost. Output: the observation arrives after one per-peer timeout (the dead ones
/// are asked at once, not one after another) and carries the live device's verdict.
#[tokio::test(start_paused = true)]
async fn timer_dead_ensms_cost_one_timeout_together() {
    let ctl = start(
        Arc::new(FaultyStore::default()),
        Arc::new(RecordingDriver::new()),
    )
    .await;
    let base = ctl.request(req("w1")).await.unwrap();
    let dp = Dataplanes::new(vec![(
        ForwarderKind::Kernel,
        Arc::new(RecordingDriver::new()) as Arc<dyn Driver>,
    )]);
    dp.attach_device("dead1", Arc::new(Silent));
    dp.attach_device("dead2", Arc::new(Silent));
    dp.attach_device("alive", Arc::new(Lost));
    let mut desired = Vec::new();
    for (i, device) in ["dead1", "dead2", "alive"].into_iter().enumerate() {
        let mut c = base.clone();
        c.id = format!("c{i}");
        c.placement.endpoint_device = Some(device.into());
        desired.push(c);
    }
    let t0 = tokio::time::Instant::now();
    let obs = dp
        .converge(&Desired::full(Scope::All, 7, desired))
        .await
        .unwrap()
        .observation;
    let took = t0.elapsed();
    assert!(
        took >= PEER_OBSERVE_TIMEOUT && took < PEER_OBSERVE_TIMEOUT * 2,
        "{took:?}"
    );
    assert!(matches!(
        obs.connections.get("c2"),
        Some(Health::EndpointLost { .. })
    ));
}
