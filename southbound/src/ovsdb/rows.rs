//! Typed rows of the Open_vSwitch schema tables Meshwire uses, read from OVSDB notation
//! (a replica's rows or `select` results). Unknown columns are ignored; a column of the wrong
//! shape is an error naming the table, row and column.

use std::collections::BTreeMap;

use serde_json::Value;

use super::replica::{map_pairs, set_elements, Replica, Row};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ovsdb row {table}/{uuid}: column {column}: {reason}")]
pub struct RowError {
    pub table: &'static str,
    pub uuid: String,
    pub column: &'static str,
    pub reason: String,
}

struct Cols<'a> {
    table: &'static str,
    uuid: &'a str,
    row: &'a Row,
}

impl Cols<'_> {
    fn err(&self, column: &'static str, reason: impl Into<String>) -> RowError {
        RowError {
            table: self.table,
            uuid: self.uuid.to_string(),
            column,
            reason: reason.into(),
        }
    }

    fn string(&self, c: &'static str) -> Result<String, RowError> {
        match self.row.get(c) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.err(c, format!("expected a string, got {v}"))),
        }
    }

    /// An optional (0..1) string column.
    fn opt_string(&self, c: &'static str) -> Result<Option<String>, RowError> {
        match self.row.get(c) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => match set_elements(v).as_slice() {
                [] => Ok(None),
                [Value::String(s)] => Ok(Some(s.clone())),
                _ => Err(self.err(c, format!("expected an optional string, got {v}"))),
            },
        }
    }

    fn opt_int(&self, c: &'static str) -> Result<Option<i64>, RowError> {
        match self.row.get(c) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_i64()),
            Some(v) => match set_elements(v).as_slice() {
                [] => Ok(None),
                [Value::Number(n)] => Ok(n.as_i64()),
                _ => Err(self.err(c, format!("expected an optional integer, got {v}"))),
            },
        }
    }

    fn opt_bool(&self, c: &'static str) -> Result<Option<bool>, RowError> {
        match self.row.get(c) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => match set_elements(v).as_slice() {
                [] => Ok(None),
                [Value::Bool(b)] => Ok(Some(*b)),
                _ => Err(self.err(c, format!("expected an optional boolean, got {v}"))),
            },
        }
    }

    fn uuids(&self, c: &'static str) -> Result<Vec<String>, RowError> {
        let Some(v) = self.row.get(c) else {
            return Ok(vec![]);
        };
        set_elements(v)
            .iter()
            .map(|e| match e {
                Value::Array(a) if a.len() == 2 && a[0] == "uuid" => a[1]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(c, "uuid is not a string")),
                other => Err(self.err(c, format!("expected uuids, got {other}"))),
            })
            .collect()
    }

    fn strings(&self, c: &'static str) -> Result<Vec<String>, RowError> {
        let Some(v) = self.row.get(c) else {
            return Ok(vec![]);
        };
        set_elements(v)
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(c, format!("expected strings, got {e}")))
            })
            .collect()
    }

    fn map(&self, c: &'static str) -> Result<BTreeMap<String, String>, RowError> {
        let Some(v) = self.row.get(c) else {
            return Ok(BTreeMap::new());
        };
        let pairs = map_pairs(v).ok_or_else(|| self.err(c, format!("expected a map, got {v}")))?;
        Ok(pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVswitch {
    pub uuid: String,
    pub bridges: Vec<String>,
    pub ovs_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub uuid: String,
    pub name: String,
    pub ports: Vec<String>,
    pub controller: Vec<String>,
    pub datapath_type: String,
    pub datapath_id: Option<String>,
    pub fail_mode: Option<String>,
    pub protocols: Vec<String>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub uuid: String,
    pub name: String,
    pub interfaces: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub uuid: String,
    pub name: String,
    pub kind: String,
    /// The OpenFlow port number, once ovs-vswitchd has assigned it (-1: it failed).
    pub ofport: Option<i64>,
    pub options: BTreeMap<String, String>,
    pub error: Option<String>,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    pub uuid: String,
    pub target: String,
    pub is_connected: Option<bool>,
    pub external_ids: BTreeMap<String, String>,
}

impl OpenVswitch {
    pub const TABLE: &'static str = "Open_vSwitch";
    pub fn from_row(uuid: &str, row: &Row) -> Result<Self, RowError> {
        let c = Cols {
            table: Self::TABLE,
            uuid,
            row,
        };
        Ok(OpenVswitch {
            uuid: uuid.to_string(),
            bridges: c.uuids("bridges")?,
            ovs_version: c.opt_string("ovs_version")?,
        })
    }
}

impl Bridge {
    pub const TABLE: &'static str = "Bridge";
    pub fn from_row(uuid: &str, row: &Row) -> Result<Self, RowError> {
        let c = Cols {
            table: Self::TABLE,
            uuid,
            row,
        };
        Ok(Bridge {
            uuid: uuid.to_string(),
            name: c.string("name")?,
            ports: c.uuids("ports")?,
            controller: c.uuids("controller")?,
            datapath_type: c.string("datapath_type")?,
            datapath_id: c.opt_string("datapath_id")?,
            fail_mode: c.opt_string("fail_mode")?,
            protocols: c.strings("protocols")?,
            other_config: c.map("other_config")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

impl Port {
    pub const TABLE: &'static str = "Port";
    pub fn from_row(uuid: &str, row: &Row) -> Result<Self, RowError> {
        let c = Cols {
            table: Self::TABLE,
            uuid,
            row,
        };
        Ok(Port {
            uuid: uuid.to_string(),
            name: c.string("name")?,
            interfaces: c.uuids("interfaces")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

impl Interface {
    pub const TABLE: &'static str = "Interface";
    pub fn from_row(uuid: &str, row: &Row) -> Result<Self, RowError> {
        let c = Cols {
            table: Self::TABLE,
            uuid,
            row,
        };
        Ok(Interface {
            uuid: uuid.to_string(),
            name: c.string("name")?,
            kind: c.string("type")?,
            ofport: c.opt_int("ofport")?,
            options: c.map("options")?,
            error: c.opt_string("error")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

impl Controller {
    pub const TABLE: &'static str = "Controller";
    pub fn from_row(uuid: &str, row: &Row) -> Result<Self, RowError> {
        let c = Cols {
            table: Self::TABLE,
            uuid,
            row,
        };
        Ok(Controller {
            uuid: uuid.to_string(),
            target: c.string("target")?,
            is_connected: c.opt_bool("is_connected")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

macro_rules! typed {
    ($name:ident, $ty:ty) => {
        /// Every row of the table, typed; rows that do not parse are errors.
        pub fn $name(&self) -> Result<Vec<$ty>, RowError> {
            self.rows(<$ty>::TABLE)
                .map(|(u, r)| <$ty>::from_row(u, r))
                .collect()
        }
    };
}

impl Replica {
    typed!(open_vswitch, OpenVswitch);
    typed!(bridges, Bridge);
    typed!(ports, Port);
    typed!(interfaces, Interface);
    typed!(controllers, Controller);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_parse_from_notation_and_errors_name_the_column() {
        let row = json!({"name": "eth1", "type": "", "ofport": 3, "options": ["map", [["key", "flow"]]], "external_ids": ["map", []], "error": ["set", []]});
        let i = Interface::from_row("u1", row.as_object().unwrap()).unwrap();
        assert_eq!(
            (i.ofport, i.options["key"].as_str(), i.error),
            (Some(3), "flow", None)
        );
        let row = json!({"name": "br-int", "ports": ["set", [["uuid", "a"], ["uuid", "b"]]], "controller": ["uuid", "c"], "protocols": "OpenFlow13", "fail_mode": ["set", ["secure"]]});
        let b = Bridge::from_row("u2", row.as_object().unwrap()).unwrap();
        assert_eq!(b.ports, vec!["a", "b"]);
        assert_eq!(b.controller, vec!["c"]);
        assert_eq!(b.protocols, vec!["OpenFlow13"]);
        assert_eq!(b.fail_mode.as_deref(), Some("secure"));
        let bad = json!({"name": 7});
        let e = Port::from_row("u3", bad.as_object().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb row Port/u3: column name: expected a string, got 7"
        );
    }
}
