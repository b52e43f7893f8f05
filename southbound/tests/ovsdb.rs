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
