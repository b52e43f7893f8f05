//! Input: a real etcd cluster of three members on loopback (fast elections: leases of 1 s), two
//! candidates campaigning on it, members killed and started again. Output: one leader at a
//! time; a deposed leader's fenced writes refused by etcd (nothing written); a standby taking
//! over once the leader's lease runs out, or at once when it resigns; writes through one lost
//! member, refused while quorum is lost, and back with it.

use std::time::Duration;

use meshwire_controller::store::election::{Candidate, Election};
use meshwire_controller::store::{etcd_store::EtcdStore, Expect, Store, StoreError};
use meshwire_labs::etcd::LocalEtcdCluster;

/// A real three-member etcd, or None when etcd is not installed and the run does not require
/// it (CI sets MESHWIRE_REQUIRE_ALL=1, so there it must exist).
async fn cluster() -> Option<LocalEtcdCluster> {
    match LocalEtcdCluster::start(3).await {
        Ok(c) => Some(c),
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => {
            eprintln!("SKIP: {e}");
            None
        }
        Err(e) => panic!("etcd is required: {e}"),
    }
}

async fn connect(c: &LocalEtcdCluster) -> EtcdStore {
    meshwire_controller::store::open_etcd(&c.spec(), &Default::default())
        .await
        .unwrap()
}

fn election(s: &EtcdStore, name: &str) -> Election {
    Election::new(
        s.client(),
        s.describe(),
        Duration::from_secs(1),
        Candidate {
            id: name.into(),
            api: format!("http://{name}.test:7600"),
            agents: None,
        },
    )
}

#[tokio::test]
async fn dev_etcd_ha_one_leader_and_a_deposed_leader_cannot_write() {
    let Some(c) = cluster().await else { return };
    let (sa, sb) = (connect(&c).await, connect(&c).await);
    let (ea, eb) = (election(&sa, "a"), election(&sb, "b"));
    let la = ea.campaign().await.unwrap();
    assert!(la.holds());
    let fa = sa.fenced(la.fence());
    fa.put("/meshwire/v1/t/x", b"a1".to_vec(), Expect::Any)
        .await
        .unwrap();

    // While a's lease is kept alive, b only stands by (three leases), and knows who leads.
    let mut leader = eb.leader();
    let b = tokio::spawn(async move { (eb.campaign().await, eb) });
    let seen = tokio::time::timeout(Duration::from_secs(3), leader.wait_for(|l| l.is_some()))
        .await
        .expect("b sees the leader")
        .unwrap()
        .clone();
    assert_eq!(seen.unwrap().id, "a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.is_finished(), "b must not lead while a does");
    assert!(la.holds());

    // a stops renewing (dropped: as a pause or a partition, its keepalive is gone and nothing
    // is revoked): once
    // the lease runs out b leads, and a knows it may not act, without asking anyone.
    let probe = la.probe();
    drop(la);
    let (lb, eb) = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("b leads once a's lease ran out")
        .unwrap();
    let lb = lb.unwrap();
    assert!(!probe.holds(), "a's lease has run out on its own clock");
    let fb = sb.fenced(lb.fence());
    fb.put("/meshwire/v1/t/x", b"b1".to_vec(), Expect::Any)
        .await
        .unwrap();

    // a wakes up and writes: etcd refuses it, whatever the write's own condition.
    for expect in [Expect::Any, Expect::Absent] {
        match fa.put("/meshwire/v1/t/x", b"a2".to_vec(), expect).await {
            Err(StoreError::Fenced { revision, .. }) => assert!(revision > 0),
            other => panic!("a deposed leader's write must be fenced: {other:?}"),
        }
    }
    assert!(matches!(
        fa.delete("/meshwire/v1/t/x", Expect::Any).await,
        Err(StoreError::Fenced { .. })
    ));
    let now = sa.get("/meshwire/v1/t/x").await.unwrap().unwrap();
    assert_eq!(now.value, b"b1", "nothing of a's was written");

    // b resigns: a standby takes over at once, not a lease later.
    let ec = election(&sa, "c");
    let t = std::time::Instant::now();
    let c_wins = tokio::spawn(async move { ec.campaign().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    lb.resign().await;
    let lc = tokio::time::timeout(Duration::from_secs(5), c_wins)
        .await
        .expect("c leads after b resigned")
        .unwrap()
        .unwrap();
    eprintln!("takeover after a resignation: {:?}", t.elapsed());
    assert!(lc.holds());
    drop(eb);
}

#[tokio::test]
async fn dev_etcd_ha_one_member_lost_is_nothing_two_lost_refuse_writes_until_quorum_returns() {
    let Some(mut c) = cluster().await else { return };
    let s = connect(&c).await;
    s.put("/meshwire/v1/t/q", b"1".to_vec(), Expect::Any)
        .await
        .unwrap();
    c.kill(0);
    for i in 0..20u8 {
        s.put("/meshwire/v1/t/q", vec![b'2', i], Expect::Any)
            .await
            .expect("two of three members keep the store writable");
    }
    c.kill(1);
    let t = std::time::Instant::now();
    let err = s
        .put("/meshwire/v1/t/q", b"3".to_vec(), Expect::Any)
        .await
        .expect_err("no quorum: no write");
    eprintln!(
        "write without quorum refused after {:?}: {err}",
        t.elapsed()
    );
    assert!(
        matches!(err, StoreError::Backend { op: "put", .. }),
        "{err}"
    );
    c.restart(1).await.unwrap();
    // The member rejoins; the next write goes through (the client may need a moment to
    // reconnect: a bounded number of tries, each one its own answer).
    let mut ok = false;
    for _ in 0..20 {
        if s.put("/meshwire/v1/t/q", b"4".to_vec(), Expect::Any)
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "writes resume with quorum");
    assert_eq!(
        s.get("/meshwire/v1/t/q").await.unwrap().unwrap().value,
        b"4"
    );
}
