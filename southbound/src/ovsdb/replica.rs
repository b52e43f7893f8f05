//! A local copy of the monitored tables, fed by `update`, `update2` and `update3` notifications
//! (RFC 7047 section 4.1.6, and the OVS extensions in ovsdb-server(7)). Sans-IO: values in,
//! state out, so it is property-tested without a server.
//!
//! `update2` modifications carry differences, not values: a scalar column holds its new value;
//! a set column holds the elements to toggle (present: removed, absent: added); a map column
//! holds, per key, a pair to add, a pair to remove (same value) or a new value (other value).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One row: column name → value in OVSDB notation.
pub type Row = Map<String, Value>;

/// The last transaction id the server reported, for `monitor_cond_since` after a reconnect.
pub const ZERO_TXN: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ovsdb update: table {table} row {uuid}: {reason}")]
pub struct UpdateError {
    pub table: String,
    pub uuid: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replica {
    pub tables: BTreeMap<String, BTreeMap<String, Row>>,
    /// From `monitor_cond_since` and `update3`.
    pub last_txn_id: Option<String>,
    /// Column kinds from the schema; without it, kinds are guessed from the values.
    kinds: BTreeMap<(String, String), ColumnKind>,
}

/// How a column's `update2` differences apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Scalar,
    Set,
    Map,
}

/// Column kinds of every table of a schema (`get_schema` result).
pub fn column_kinds(schema: &Value) -> BTreeMap<(String, String), ColumnKind> {
    let mut out = BTreeMap::new();
    for (t, table) in schema["tables"].as_object().into_iter().flatten() {
        for (c, col) in table["columns"].as_object().into_iter().flatten() {
            let ty = &col["type"];
            // Only columns that can hold more than one value are diffed; an optional (0..1)
            // column's "modify" carries its new value, as ovsdb_datum_diff does.
            let many = match ty.get("max") {
                Some(Value::String(s)) => s == "unlimited",
                Some(m) => m.as_u64().is_some_and(|m| m > 1),
                None => false,
            };
            let kind = match (many, ty.get("value").is_some()) {
                (true, true) => ColumnKind::Map,
                (true, false) => ColumnKind::Set,
                _ => ColumnKind::Scalar,
            };
            out.insert((t.clone(), c.clone()), kind);
        }
    }
    out
}

/// The elements of a set value (`["set", [...]]`, or a single atom).
pub fn set_elements(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "set" => {
            a[1].as_array().cloned().unwrap_or_default()
        }
        other => vec![other.clone()],
    }
}

/// The pairs of a map value (`["map", [[k, v], ...]]`).
pub fn map_pairs(v: &Value) -> Option<Vec<(Value, Value)>> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "map" => Some(
            a[1].as_array()?
                .iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some((p.first()?.clone(), p.get(1)?.clone()))
                })
                .collect(),
        ),
        _ => None,
    }
}

fn is_set(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.len() == 2 && a[0] == "set")
}

/// A set value in canonical notation (single atoms stay bare, as the server sends them).
fn make_set(items: Vec<Value>) -> Value {
    if items.len() == 1
        && !matches!(items[0], Value::Array(ref a) if a.first().is_some_and(|t| t == "set" || t == "map"))
    {
        return items.into_iter().next().unwrap_or(Value::Null);
    }
    Value::Array(vec![Value::String("set".into()), Value::Array(items)])
}

/// Applies one `update2` column difference to `old`, the column's kind known.
pub fn apply_diff_as(kind: ColumnKind, old: Option<&Value>, diff: &Value) -> Value {
    match kind {
        ColumnKind::Scalar => diff.clone(),
        ColumnKind::Map => apply_diff(
            Some(old.unwrap_or(&Value::Array(vec![
                Value::String("map".into()),
                Value::Array(vec![]),
            ]))),
            diff,
        ),
        ColumnKind::Set => {
            let mut items = old.map(set_elements).unwrap_or_default();
            for e in set_elements(diff) {
                match items.iter().position(|x| *x == e) {
                    Some(i) => {
                        items.remove(i);
                    }
                    None => items.push(e),
                }
            }
            make_set(items)
        }
    }
}

/// Applies one `update2` column difference to `old`, guessing the column's kind from the values.
pub fn apply_diff(old: Option<&Value>, diff: &Value) -> Value {
    let Some(old) = old else {
        return diff.clone();
    };
    if let (Some(mut pairs), Some(changes)) = (map_pairs(old), map_pairs(diff)) {
        for (k, v) in changes {
            match pairs.iter().position(|(pk, _)| *pk == k) {
                Some(i) if pairs[i].1 == v => {
                    pairs.remove(i);
                }
                Some(i) => pairs[i].1 = v,
                None => pairs.push((k, v)),
            }
        }
        return Value::Array(vec![
            Value::String("map".into()),
            Value::Array(
                pairs
                    .into_iter()
                    .map(|(k, v)| Value::Array(vec![k, v]))
                    .collect(),
            ),
        ]);
    }
    // A set column: the old value is a set (or a bare atom of a set column) and the diff lists
    // elements to toggle. A scalar column: the diff is the new value.
    if is_set(old) || is_set(diff) {
        let mut items = set_elements(old);
        for e in set_elements(diff) {
            match items.iter().position(|x| *x == e) {
                Some(i) => {
                    items.remove(i);
                }
                None => items.push(e),
            }
        }
        return make_set(items);
    }
    diff.clone()
}

impl Replica {
    pub fn new() -> Self {
        Replica::default()
    }

    /// A replica that knows each column's kind from `schema` (a `get_schema` result), so a
    /// one-element set diffed against a one-element set toggles instead of replacing.
    pub fn with_schema(schema: &Value) -> Self {
        Replica {
            kinds: column_kinds(schema),
            ..Replica::default()
        }
    }

    /// Drops all rows (a monitor restarted without history).
    pub fn clear(&mut self) {
        self.tables.clear();
    }

    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flat_map(|t| t.iter())
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    /// Applies `update` (RFC 7047) table-updates: `{table: {uuid: {"old": .., "new": ..}}}`.
    pub fn apply_update(&mut self, updates: &Value) -> Result<(), UpdateError> {
        let Some(tables) = updates.as_object() else {
            return Ok(());
        };
        for (table, rows) in tables {
            let t = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows.as_object().into_iter().flatten() {
                match change.get("new").and_then(|n| n.as_object()) {
                    None => {
                        t.remove(uuid);
                    }
                    Some(new) => {
                        let row = t.entry(uuid.clone()).or_default();
                        for (k, v) in new {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies `update2` table-updates: `{table: {uuid: {"initial"|"insert"|"modify"|"delete": ..}}}`.
    pub fn apply_update2(&mut self, updates: &Value) -> Result<(), UpdateError> {
        let Some(tables) = updates.as_object() else {
            return Ok(());
        };
        for (table, rows) in tables {
            let t = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows.as_object().into_iter().flatten() {
                let err = |reason: &str| UpdateError {
                    table: table.clone(),
                    uuid: uuid.clone(),
                    reason: reason.to_string(),
                };
                let Some(change) = change.as_object() else {
                    return Err(err("row update is not an object"));
                };
                if let Some(row) = change.get("initial").or_else(|| change.get("insert")) {
                    let row = row.as_object().ok_or_else(|| err("row is not an object"))?;
                    t.insert(uuid.clone(), row.clone());
                } else if change.contains_key("delete") {
                    t.remove(uuid);
                } else if let Some(diff) = change.get("modify") {
                    let diff = diff
                        .as_object()
                        .ok_or_else(|| err("modify is not an object"))?;
                    let row = t
                        .get_mut(uuid)
                        .ok_or_else(|| err("modify of a row the replica does not have"))?;
                    for (col, d) in diff {
                        let v = match self.kinds.get(&(table.clone(), col.clone())) {
                            Some(k) => apply_diff_as(*k, row.get(col), d),
                            None => apply_diff(row.get(col), d),
                        };
                        row.insert(col.clone(), v);
                    }
                } else {
                    return Err(err("no initial, insert, modify or delete"));
                }
            }
        }
        Ok(())
    }

    /// Applies an `update3` notification's params: `[monitor id, last txn id, table-updates2]`.
    pub fn apply_update3(&mut self, params: &Value) -> Result<(), UpdateError> {
        if let Some(txn) = params.get(1).and_then(|t| t.as_str()) {
            self.last_txn_id = Some(txn.to_string());
        }
        self.apply_update2(params.get(2).unwrap_or(&Value::Null))
    }

    /// Applies a notification by method name; other methods are ignored.
    pub fn apply_notification(&mut self, method: &str, params: &Value) -> Result<(), UpdateError> {
        match method {
            "update" => self.apply_update(params.get(1).unwrap_or(&Value::Null)),
            "update2" => self.apply_update2(params.get(1).unwrap_or(&Value::Null)),
            "update3" => self.apply_update3(params),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn update2_insert_modify_delete() {
        let mut r = Replica::new();
        r.apply_update2(&json!({"Bridge": {"u1": {"initial": {"name": "br0", "ports": ["set", []], "external_ids": ["map", [["a", "1"]]]}}}}))
            .unwrap();
        r.apply_update2(&json!({"Bridge": {"u1": {"modify": {
            "ports": ["uuid", "p1"],
            "external_ids": ["map", [["a", "1"], ["b", "2"]]],
            "name": "br1"
        }}}}))
        .unwrap();
        let row = r.row("Bridge", "u1").unwrap();
        assert_eq!(row["name"], "br1");
        assert_eq!(
            row["ports"],
            json!(["uuid", "p1"]),
            "one element: bare atom"
        );
        assert_eq!(
            row["external_ids"],
            json!(["map", [["b", "2"]]]),
            "a removed, b added"
        );
        r.apply_update2(
            &json!({"Bridge": {"u1": {"modify": {"ports": ["set", [["uuid", "p2"]]]}}}}),
        )
        .unwrap();
        assert_eq!(
            set_elements(&r.row("Bridge", "u1").unwrap()["ports"]).len(),
            2
        );
        r.apply_update3(&json!(["m", "txn-7", {"Bridge": {"u1": {"delete": null}}}]))
            .unwrap();
        assert!(r.row("Bridge", "u1").is_none());
        assert_eq!(r.last_txn_id.as_deref(), Some("txn-7"));
        let e = r
            .apply_update2(&json!({"Port": {"nope": {"modify": {"name": "x"}}}}))
            .unwrap_err();
        assert!(e.to_string().contains("Port row nope"), "{e}");
    }

    #[test]
    fn optional_columns_are_replaced_not_toggled() {
        let schema = json!({"tables": {"Interface": {"columns": {
            "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
            "options": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
            "name": {"type": "string"}
        }}}});
        let mut r = Replica::with_schema(&schema);
        r.apply_update2(&json!({"Interface": {"i": {"insert": {"name": "eth1", "ofport": 5}}}}))
            .unwrap();
        r.apply_update2(&json!({"Interface": {"i": {"modify": {"ofport": -1}}}}))
            .unwrap();
        assert_eq!(r.row("Interface", "i").unwrap()["ofport"], json!(-1));
        assert_eq!(r.interfaces().unwrap()[0].ofport, Some(-1));
        r.apply_update2(
            &json!({"Interface": {"i": {"modify": {"options": ["map", [["key", "flow"]]]}}}}),
        )
        .unwrap();
        assert_eq!(r.interfaces().unwrap()[0].options["key"], "flow");
    }

    fn arb_set() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::btree_set(0u8..20, 0..6).prop_map(|s| s.into_iter().collect())
    }

    fn set_of(items: &[u8]) -> Value {
        make_set(
            items
                .iter()
                .map(|i| json!(["uuid", format!("u{i}")]))
                .collect(),
        )
    }

    proptest! {
        /// A set diff is the symmetric difference: applying old △ new to old gives new.
        #[test]
        fn set_diffs_toggle(old in arb_set(), new in arb_set()) {
            let diff: Vec<u8> = old.iter().filter(|x| !new.contains(x)).chain(new.iter().filter(|x| !old.contains(x))).copied().collect();
            let got = apply_diff(Some(&set_of(&old)), &json!(["set", diff.iter().map(|i| json!(["uuid", format!("u{i}")])).collect::<Vec<_>>()]));
            let mut got: Vec<String> = set_elements(&got).iter().map(|v| v[1].as_str().unwrap_or("").to_string()).collect();
            got.sort();
            let mut want: Vec<String> = new.iter().map(|i| format!("u{i}")).collect();
            want.sort();
            if new.is_empty() {
                // An emptied set.
                prop_assert!(got.is_empty());
            } else {
                prop_assert_eq!(got, want);
            }
        }

        /// Map diffs: every key added, removed or changed ends as the new map says.
        #[test]
        fn map_diffs(old in prop::collection::btree_map(0u8..10, 0u8..3, 0..6), new in prop::collection::btree_map(0u8..10, 0u8..3, 0..6)) {
            let m = |m: &std::collections::BTreeMap<u8, u8>| json!(["map", m.iter().map(|(k, v)| json!([k.to_string(), v.to_string()])).collect::<Vec<_>>()]);
            let mut diff = Vec::new();
            for (k, v) in &old {
                match new.get(k) {
                    None => diff.push(json!([k.to_string(), v.to_string()])),
                    Some(n) if n != v => diff.push(json!([k.to_string(), n.to_string()])),
                    _ => {}
                }
            }
            for (k, v) in &new {
                if !old.contains_key(k) {
                    diff.push(json!([k.to_string(), v.to_string()]));
                }
            }
            let got = apply_diff(Some(&m(&old)), &json!(["map", diff]));
            let mut pairs = map_pairs(&got).unwrap();
            pairs.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
            let want: Vec<(Value, Value)> = new.iter().map(|(k, v)| (json!(k.to_string()), json!(v.to_string()))).collect();
            prop_assert_eq!(pairs, want);
        }

        #[test]
        fn arbitrary_updates_never_panic(tables in prop::collection::vec((0u8..3, 0u8..4, 0u8..5), 0..20)) {
            let mut r = Replica::new();
            for (t, u, kind) in tables {
                let change = match kind {
                    0 => json!({"insert": {"name": format!("n{u}")}}),
                    1 => json!({"modify": {"name": "m", "s": ["set", [1, 2]]}}),
                    2 => json!({"delete": null}),
                    3 => json!({"initial": 7}),
                    _ => json!(null),
                };
                let _ = r.apply_update2(&json!({ format!("T{t}"): { format!("u{u}"): change } }));
            }
        }
    }
}
