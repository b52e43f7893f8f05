//! Input: our OVSDB client against a real ovsdb-server with the Open_vSwitch schema, next to
//! ovs-vsctl as another tool. Output: what each sees; a failed transaction names its operation
//! and changes nothing; resync deletes only rows with our owner key; a monitor sees changes.

use std::time::Duration;

use meshwire_southbound::ovsdb::ops::{self, Op};
use meshwire_southbound::ovsdb::{Client, OvsdbError};
use serde_json::json;

mod support;
use support::Ovs;

const DB: &str = "Open_vSwitch";

fn add_our_bridge(name: &str) -> Vec<Op> {
    vec![
        Op::Insert {
            table: "Bridge".into(),
            row: json!({"name": name, "external_ids": ops::owner_ids()}),
            uuid_name: Some("br".into()),
        },
        Op::Mutate {
            table: "Open_vSwitch".into(),
            conditions: vec![],
            mutations: vec![ops::mutation(
                "bridges",
                "insert",
                ops::set(vec![ops::named_uuid("br")]),
            )],
        },
        Op::Comment(format!("meshwire: add bridge {name}")),
    ]
}

#[tokio::test]
async fn dev_real_ovsdb_transact_owner_tags_errors_and_monitor() {
    let Some(ovs) = Ovs::start(None) else { return };
    let c = Client::connect(&ovs.db()).await.unwrap();
    assert!(c.list_dbs().await.unwrap().contains(&DB.to_string()));
    let schema = c.get_schema(DB).await.unwrap();
    assert!(schema["tables"]["Bridge"]["columns"]["external_ids"].is_object());
    c.echo().await.unwrap();

    let mut updates = c.notifications().unwrap();
    let initial = c
        .monitor(
            DB,
            "bridges",
            json!({"Bridge": {"columns": ["name", "external_ids"]}}),
        )
        .await
        .unwrap();
    assert!(initial.get("Bridge").is_none(), "no bridges yet: {initial}");

    // Ours through the client, another tool's through ovs-vsctl.
    let r = c.transact(DB, &add_our_bridge("mw-ours")).await.unwrap();
    assert_eq!(r[0]["uuid"][0], "uuid");
    ovs.vsctl("add-br other-tool");
    let brs = ovs.vsctl("list-br");
    assert!(
        brs.contains("mw-ours") && brs.contains("other-tool"),
        "{brs}"
    );
    assert!(ovs
        .vsctl("get Bridge mw-ours external_ids")
        .contains("meshwire-owner=meshwire"));

    // The monitor saw our insert.
    let (method, params) = tokio::time::timeout(Duration::from_secs(10), updates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(method, "update");
    assert!(params.to_string().contains("mw-ours"), "{params}");

    // A transaction that breaks the schema fails as a whole and names the operation.
    let mut bad = add_our_bridge("mw-bad");
    bad.insert(
        1,
        Op::Insert {
            table: "Bridge".into(),
            row: json!({"no_such_column": 1}),
            uuid_name: None,
        },
    );
    let err = c.transact(DB, &bad).await.unwrap_err();
    assert!(
        matches!(&err, OvsdbError::Transaction { index: 1, op, .. } if op == "insert into Bridge"),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_column"), "{err}");
    assert!(
        !ovs.vsctl("list-br").contains("mw-bad"),
        "nothing of the failed transaction applied"
    );

    // Resync: select what carries our owner key and detach exactly that.
    let sel = c
        .transact(
            DB,
            &[Op::Select {
                table: "Bridge".into(),
                conditions: vec![ops::owned_by_us()],
                columns: Some(vec!["_uuid".into(), "name".into()]),
            }],
        )
        .await
        .unwrap();
    let rows = sel[0]["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "mw-ours");
    let ours: Vec<serde_json::Value> = rows.iter().map(|r| r["_uuid"].clone()).collect();
    c.transact(
        DB,
        &[Op::Mutate {
            table: "Open_vSwitch".into(),
            conditions: vec![],
            mutations: vec![ops::mutation("bridges", "delete", ops::set(ours))],
        }],
    )
    .await
    .unwrap();
    let brs = ovs.vsctl("list-br");
    assert!(
        !brs.contains("mw-ours") && brs.contains("other-tool"),
        "only ours removed: {brs}"
    );
}

/// Input: a session with a monitor on a real ovsdb-server, changes made by ovs-vsctl, the server
/// killed and restarted. Output: the replica follows every change (typed rows), the session
/// reconnects by itself and the replica is whole again; echo probes go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_real_ovsdb_session_replica_follows_changes_and_survives_a_server_restart() {
    use meshwire_southbound::ovsdb::session::{Session, SessionConfig};
    let Some(mut ovs) = Ovs::start(None) else {
        return;
    };
    // Every column of the tables the driver reads.
    let mut monitor = serde_json::Map::new();
    for t in ["Open_vSwitch", "Bridge", "Port", "Interface", "Controller"] {
        monitor.insert(t.to_string(), json!([{}]));
    }
    let s = Session::start(
        &ovs.db(),
        SessionConfig {
            db: DB.into(),
            monitor: serde_json::Value::Object(monitor),
            probe: Duration::from_millis(100),
        },
    );
    assert!(s.wait_synced(1, Duration::from_secs(10)).await);
    assert_eq!(s.replica().open_vswitch().unwrap().len(), 1);

    ovs.vsctl("add-br brx -- add-port brx p1 -- set interface p1 type=internal -- set-controller brx tcp:127.0.0.1:1");
    let seen = s
        .wait_until(Duration::from_secs(5), |s| {
            let r = s.replica();
            let br = r.bridges().unwrap();
            br.len() == 1 && br[0].ports.len() == 2 && r.controllers().unwrap().len() == 1
        })
        .await;
    assert!(seen, "replica: {:?}", s.replica().bridges());
    // update2 "modify": a port goes, a map key comes.
    ovs.vsctl("del-port brx p1 -- br-set-external-id brx team blue");
    assert!(
        s.wait_until(Duration::from_secs(5), |s| {
            let b = &s.replica().bridges().unwrap()[0];
            b.ports.len() == 1 && b.external_ids.get("team").map(String::as_str) == Some("blue")
        })
        .await
    );
    let ifaces = s.replica().interfaces().unwrap();
    assert!(ifaces.iter().all(|i| i.name != "p1"), "{ifaces:?}");

    // The server dies and comes back: the session reconnects on its own.
    ovs.restart_db();
    assert!(
        s.wait_synced(2, Duration::from_secs(15)).await,
        "reconnected: {:?}",
        s.counters()
    );
    ovs.vsctl("add-br bry");
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s
            .replica()
            .bridges()
            .unwrap()
            .len()
            == 2)
            .await
    );
    // The idle session probes the server every 100 ms.
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s.counters().2 >= 2)
            .await,
        "{:?}",
        s.counters()
    );
    assert!(s.counters().0 >= 2);
    // Transactions go through the session's current client.
    let c = s.client().await.unwrap();
    c.transact(DB, &add_our_bridge("mw-sess")).await.unwrap();
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s
            .replica()
            .bridges()
            .unwrap()
            .len()
            == 3)
            .await
    );
}

/// Input: two clients of one real ovsdb-server asking for the same lock. Output: one holds it,
/// the other waits; steal moves it and tells the loser; an `assert` of a lock not held fails
/// the transaction and names the operation.
#[tokio::test]
async fn dev_real_ovsdb_lock_steal_unlock_and_assert() {
    let Some(ovs) = Ovs::start(None) else { return };
    let a = Client::connect(&ovs.db()).await.unwrap();
    let b = Client::connect(&ovs.db()).await.unwrap();
    let mut a_notes = a.notifications().unwrap();
    assert!(a.lock("meshwire_controller").await.unwrap());
    assert!(
        !b.lock("meshwire_controller").await.unwrap(),
        "queued behind a"
    );
    // A queued request must be withdrawn before stealing.
    b.unlock("meshwire_controller").await.unwrap();
    let assert_lock = [Op::Assert {
        lock: "meshwire_controller".into(),
    }];
    a.transact(DB, &assert_lock).await.unwrap();
    assert!(b.steal("meshwire_controller").await.unwrap());
    // (The server may also have told a "locked" when it got the lock.)
    let stolen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((method, params)) = a_notes.recv().await {
            if method == "stolen" {
                return params[0].as_str().map(str::to_string);
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(stolen.as_deref(), Some("meshwire_controller"));
    match a.transact(DB, &assert_lock).await {
        Err(OvsdbError::Transaction { op, error, .. }) => {
            assert_eq!(op, "assert lock meshwire_controller");
            assert_eq!(error, "not owner");
        }
        other => panic!("{other:?}"),
    }
    // b gives it up; a withdraws its stolen request and asks again: it gets it.
    b.unlock("meshwire_controller").await.unwrap();
    a.unlock("meshwire_controller").await.unwrap();
    assert!(a.lock("meshwire_controller").await.unwrap());
    a.transact(DB, &assert_lock).await.unwrap();
}

/// Input: our client over TCP to a real ovsdb-server, with the operations the resync and
/// bootstrap paths do not use. Output: update, wait (both ways), commit, abort and delete behave
/// as RFC 7047 says, and each failure names its operation.
#[tokio::test]
async fn dev_real_ovsdb_update_wait_commit_abort_delete_over_tcp() {
    let Some(ovs) = Ovs::start(None) else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctl = std::fs::read_dir(ovs.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy().contains("ovsdb-server.")
                && p.extension().is_some_and(|x| x == "ctl")
        })
        .expect("ovsdb-server control socket");
    let out = std::process::Command::new("ovs-appctl")
        .args([
            "-t",
            ctl.to_str().unwrap(),
            "ovsdb-server/add-remote",
            &format!("ptcp:{port}:127.0.0.1"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server opens a new remote in its next main-loop turn; a second control command is
    // answered in a later turn, so once it returns the listener is up.
    let mut c = None;
    for _ in 0..3 {
        let barrier = std::process::Command::new("ovs-appctl")
            .args(["-t", ctl.to_str().unwrap(), "ovsdb-server/list-remotes"])
            .output()
            .unwrap();
        assert!(barrier.status.success());
        if let Ok(x) = Client::connect(&format!("tcp:127.0.0.1:{port}")).await {
            c = Some(x);
            break;
        }
    }
    let c = c.expect("TCP remote up");
    c.transact(DB, &add_our_bridge("mw-a")).await.unwrap();
    let name_is = vec![ops::cond("name", "==", json!("mw-a"))];
    // update
    let r = c
        .transact(
            DB,
            &[
                Op::Update {
                    table: "Bridge".into(),
                    conditions: name_is.clone(),
                    row: json!({"external_ids": ops::map(&[("meshwire-owner", "meshwire"), ("x", "1")])}),
                },
                Op::Commit { durable: false },
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[0]["count"], 1);
    assert!(ovs
        .vsctl("get Bridge mw-a external_ids")
        .contains("x=\"1\""));
    // wait: holds now, and fails at once when asked for what is not so
    let wait = |equal: bool| Op::Wait {
        table: "Bridge".into(),
        conditions: name_is.clone(),
        columns: vec!["name".into()],
        until_equal: equal,
        rows: vec![json!({"name": "mw-a"})],
        timeout_ms: Some(0),
    };
    c.transact(DB, &[wait(true)]).await.unwrap();
    match c.transact(DB, &[wait(false)]).await {
        Err(OvsdbError::Transaction { op, error, .. }) => {
            assert_eq!(
                (op.as_str(), error.as_str()),
                ("wait on Bridge", "timed out")
            )
        }
        other => panic!("{other:?}"),
    }
    // abort: the whole transaction is rolled back
    let mut aborted = add_our_bridge("mw-b");
    aborted.push(Op::Abort);
    match c.transact(DB, &aborted).await {
        Err(OvsdbError::Transaction { op, error, .. }) => {
            assert_eq!((op.as_str(), error.as_str()), ("abort", "aborted"))
        }
        other => panic!("{other:?}"),
    }
    assert!(!ovs.vsctl("list-br").contains("mw-b"));
    // delete: detach and delete in one transaction
    let sel = c
        .transact(
            DB,
            &[Op::Select {
                table: "Bridge".into(),
                conditions: name_is.clone(),
                columns: Some(vec!["_uuid".into()]),
            }],
        )
        .await
        .unwrap();
    let uuid = sel[0]["rows"][0]["_uuid"].clone();
    let r = c
        .transact(
            DB,
            &[
                Op::Mutate {
                    table: "Open_vSwitch".into(),
                    conditions: vec![],
                    mutations: vec![ops::mutation("bridges", "delete", ops::set(vec![uuid]))],
                },
                Op::Delete {
                    table: "Bridge".into(),
                    conditions: name_is,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[1]["count"], 1);
    assert!(!ovs.vsctl("list-br").contains("mw-a"));
}
