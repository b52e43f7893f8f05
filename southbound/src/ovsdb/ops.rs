//! Transaction operations (RFC 7047 section 5.2) and the data notation (section 5.1).

use serde_json::{json, Value};

/// The `external_ids` key marking rows Meshwire created, so resync deletes only ours.
pub const OWNER_KEY: &str = "meshwire-owner";
pub const OWNER: &str = "meshwire";

pub fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

pub fn named_uuid(n: &str) -> Value {
    json!(["named-uuid", n])
}

pub fn set(items: Vec<Value>) -> Value {
    json!(["set", items])
}

pub fn map(pairs: &[(&str, &str)]) -> Value {
    json!([
        "map",
        pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

/// `external_ids` for a row we create.
pub fn owner_ids() -> Value {
    map(&[(OWNER_KEY, OWNER)])
}

/// A condition `[column, function, value]`.
pub fn cond(column: &str, function: &str, value: Value) -> Value {
    json!([column, function, value])
}

/// Rows whose `external_ids` carry our owner key.
pub fn owned_by_us() -> Value {
    cond("external_ids", "includes", owner_ids())
}

/// The value of `key` in a row's `external_ids` map (`["map", [[k, v], ...]]`), read as data,
/// never by matching text.
pub fn external_id<'a>(row: &'a Value, key: &str) -> Option<&'a str> {
    let pairs = row.get("external_ids")?.as_array()?;
    if pairs.first()?.as_str()? != "map" {
        return None;
    }
    pairs.get(1)?.as_array()?.iter().find_map(|p| {
        let kv = p.as_array()?;
        (kv.first()?.as_str()? == key).then_some(())?;
        kv.get(1)?.as_str()
    })
}

/// Whether a row carries our owner mark (`external_ids:meshwire-owner=meshwire`).
pub fn is_ours(row: &Value) -> bool {
    external_id(row, OWNER_KEY) == Some(OWNER)
}

/// A mutation `[column, mutator, value]`.
pub fn mutation(column: &str, mutator: &str, value: Value) -> Value {
    json!([column, mutator, value])
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Insert {
        table: String,
        row: Value,
        uuid_name: Option<String>,
    },
    Select {
        table: String,
        conditions: Vec<Value>,
        columns: Option<Vec<String>>,
    },
    Update {
        table: String,
        conditions: Vec<Value>,
        row: Value,
    },
    Mutate {
        table: String,
        conditions: Vec<Value>,
        mutations: Vec<Value>,
    },
    Delete {
        table: String,
        conditions: Vec<Value>,
    },
    /// Waits until the selected rows' `columns` are (`==`) or are not (`!=`) `rows`.
    Wait {
        table: String,
        conditions: Vec<Value>,
        columns: Vec<String>,
        until_equal: bool,
        rows: Vec<Value>,
        timeout_ms: Option<u64>,
    },
    Commit {
        durable: bool,
    },
    Abort,
    Comment(String),
    Assert {
        lock: String,
    },
}

impl Op {
    pub fn to_json(&self) -> Value {
        match self {
            Op::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut v = json!({"op": "insert", "table": table, "row": row});
                if let Some(n) = uuid_name {
                    v["uuid-name"] = json!(n);
                }
                v
            }
            Op::Select {
                table,
                conditions,
                columns,
            } => {
                let mut v = json!({"op": "select", "table": table, "where": conditions});
                if let Some(c) = columns {
                    v["columns"] = json!(c);
                }
                v
            }
            Op::Update {
                table,
                conditions,
                row,
            } => json!({"op": "update", "table": table, "where": conditions, "row": row}),
            Op::Mutate {
                table,
                conditions,
                mutations,
            } => {
                json!({"op": "mutate", "table": table, "where": conditions, "mutations": mutations})
            }
            Op::Delete { table, conditions } => {
                json!({"op": "delete", "table": table, "where": conditions})
            }
            Op::Wait {
                table,
                conditions,
                columns,
                until_equal,
                rows,
                timeout_ms,
            } => {
                let mut v = json!({"op": "wait", "table": table, "where": conditions, "columns": columns, "until": if *until_equal { "==" } else { "!=" }, "rows": rows});
                if let Some(t) = timeout_ms {
                    v["timeout"] = json!(t);
                }
                v
            }
            Op::Commit { durable } => json!({"op": "commit", "durable": durable}),
            Op::Abort => json!({"op": "abort"}),
            Op::Comment(c) => json!({"op": "comment", "comment": c}),
            Op::Assert { lock } => json!({"op": "assert", "lock": lock}),
        }
    }

    /// How errors name the operation: `insert into Bridge`.
    pub fn summary(&self) -> String {
        match self {
            Op::Insert { table, .. } => format!("insert into {table}"),
            Op::Select { table, .. } => format!("select from {table}"),
            Op::Update { table, .. } => format!("update {table}"),
            Op::Mutate { table, .. } => format!("mutate {table}"),
            Op::Delete { table, .. } => format!("delete from {table}"),
            Op::Wait { table, .. } => format!("wait on {table}"),
            Op::Commit { .. } => "commit".into(),
            Op::Abort => "abort".into(),
            Op::Comment(_) => "comment".into(),
            Op::Assert { lock } => format!("assert lock {lock}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_read_from_the_map_not_from_text() {
        assert!(is_ours(&json!({"external_ids": owner_ids()})));
        // The key as a value, or the owner key with another owner: not ours.
        assert!(!is_ours(
            &json!({"external_ids": ["map", [["note", "meshwire-owner"]]]})
        ));
        assert!(!is_ours(
            &json!({"external_ids": ["map", [["meshwire-owner", "someone-else"]]]})
        ));
        assert!(!is_ours(&json!({"name": "br-int"})));
        let row = json!({"external_ids": map(&[("a", "1"), ("meshwire-connection", "c-1")])});
        assert_eq!(external_id(&row, "meshwire-connection"), Some("c-1"));
        assert_eq!(external_id(&row, "b"), None);
    }
}
