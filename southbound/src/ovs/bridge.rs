//! The bridge: typed OVSDB rows for br-int, its controller, uplinks, tunnel ports and leg ports,
//! and the port numbers and owners read back from the replica.

use std::collections::{HashMap, HashSet};

use meshwire_controller::driver::DriverError;
use serde_json::{json, Value};

use super::plan::{TunnelPort, BRIDGE};
use meshwire_controller::driver::Failure;

use super::*;
use crate::ovsdb::ops::{self, cond, Op, OWNER_KEY};
use crate::ovsdb::Client;

impl OvsDriver {
    pub(super) async fn ensure_bridge(
        &self,
        node: &str,
        db: &Client,
        uplinks: &[String],
    ) -> Result<(), DriverError> {
        let name_is = |n: &str| vec![cond("name", "==", json!(n))];
        let r = self
            .transact(
                node,
                db,
                &[
                    Op::Select {
                        table: "Open_vSwitch".into(),
                        conditions: vec![],
                        columns: Some(vec!["_uuid".into()]),
                    },
                    Op::Select {
                        table: "Bridge".into(),
                        conditions: name_is(BRIDGE),
                        columns: Some(vec![
                            "_uuid".into(),
                            "controller".into(),
                            "external_ids".into(),
                        ]),
                    },
                    Op::Select {
                        table: "Controller".into(),
                        conditions: vec![ops::owned_by_us()],
                        columns: Some(vec!["_uuid".into(), "target".into()]),
                    },
                    Op::Select {
                        table: "Port".into(),
                        conditions: vec![],
                        columns: Some(vec!["name".into()]),
                    },
                ],
            )
            .await?;
        let rows = |i: usize| -> Vec<Value> {
            r.get(i)
                .and_then(|v| v.get("rows"))
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let root = rows(0);
        let bridge = rows(1).into_iter().next();
        let controllers = rows(2);
        let ports: HashSet<String> = if bridge.is_some() {
            self.bridge_port_names(node, db).await?
        } else {
            HashSet::new()
        };
        let dpid = format!("{:016x}", plan::datapath_id(node));
        let mut txn = Vec::new();
        match &bridge {
            None => {
                if root.is_empty() {
                    txn.push(Op::Insert {
                        table: "Open_vSwitch".into(),
                        row: json!({}),
                        uuid_name: Some("root".into()),
                    });
                }
                txn.push(Op::Insert {
                    table: "Interface".into(),
                    row: json!({"name": BRIDGE, "type": "internal", "external_ids": ops::owner_ids()}),
                    uuid_name: Some("bi".into()),
                });
                txn.push(Op::Insert {
                    table: "Port".into(),
                    row: json!({"name": BRIDGE, "interfaces": ops::named_uuid("bi"), "external_ids": ops::owner_ids()}),
                    uuid_name: Some("bp".into()),
                });
                txn.push(Op::Insert {
                    table: "Controller".into(),
                    row: json!({"target": self.inner.target, "max_backoff": 1000, "inactivity_probe": 5000, "external_ids": ops::owner_ids()}),
                    uuid_name: Some("ctl".into()),
                });
                txn.push(Op::Insert {
                    table: "Bridge".into(),
                    row: json!({
                        "name": BRIDGE,
                        "ports": ops::named_uuid("bp"),
                        "controller": ops::named_uuid("ctl"),
                        "datapath_type": "netdev",
                        "fail_mode": "secure",
                        "protocols": ops::set(vec![json!("OpenFlow13")]),
                        "other_config": ops::map(&[("datapath-id", &dpid)]),
                        "external_ids": ops::owner_ids(),
                    }),
                    uuid_name: Some("br".into()),
                });
                let root_cond = if root.is_empty() {
                    vec![cond("_uuid", "==", ops::named_uuid("root"))]
                } else {
                    vec![]
                };
                txn.push(Op::Mutate {
                    table: "Open_vSwitch".into(),
                    conditions: root_cond,
                    mutations: vec![ops::mutation(
                        "bridges",
                        "insert",
                        ops::set(vec![ops::named_uuid("br")]),
                    )],
                });
            }
            Some(b) => {
                if !ops::is_ours(b) {
                    return Err(self
                        .err(
                            format!("node {node} bridge {BRIDGE}"),
                            "exists and is not Meshwire's (no external_ids:meshwire-owner); Meshwire leaves it alone",
                        )
                        .with(Failure::Conflict {
                            object: format!("bridge {BRIDGE} on node {node}"),
                        }));
                }
                let targets: Vec<&str> = controllers
                    .iter()
                    .filter_map(|c| c.get("target").and_then(|t| t.as_str()))
                    .collect();
                if targets.is_empty() {
                    txn.push(Op::Insert {
                        table: "Controller".into(),
                        row: json!({"target": self.inner.target, "max_backoff": 1000, "inactivity_probe": 5000, "external_ids": ops::owner_ids()}),
                        uuid_name: Some("ctl".into()),
                    });
                    txn.push(Op::Mutate {
                        table: "Bridge".into(),
                        conditions: name_is(BRIDGE),
                        mutations: vec![ops::mutation(
                            "controller",
                            "insert",
                            ops::set(vec![ops::named_uuid("ctl")]),
                        )],
                    });
                } else if targets.iter().any(|t| *t != self.inner.target) {
                    tracing::info!(%node, old = ?targets, new = %self.inner.target, "pointing the bridge at this controller");
                    txn.push(Op::Update {
                        table: "Controller".into(),
                        conditions: vec![ops::owned_by_us()],
                        row: json!({"target": self.inner.target}),
                    });
                }
            }
        }
        for (i, u) in uplinks.iter().enumerate() {
            if ports.contains(u) {
                continue;
            }
            let (ni, np) = (format!("ui{i}"), format!("up{i}"));
            txn.push(Op::Insert {
                table: "Interface".into(),
                row: json!({"name": u, "external_ids": ops::owner_ids()}),
                uuid_name: Some(ni.clone()),
            });
            txn.push(Op::Insert {
                table: "Port".into(),
                row: json!({"name": u, "interfaces": ops::named_uuid(&ni), "external_ids": ops::owner_ids()}),
                uuid_name: Some(np.clone()),
            });
            txn.push(Op::Mutate {
                table: "Bridge".into(),
                conditions: name_is(BRIDGE),
                mutations: vec![ops::mutation(
                    "ports",
                    "insert",
                    ops::set(vec![ops::named_uuid(&np)]),
                )],
            });
        }
        if !txn.is_empty() {
            txn.push(Op::Comment(format!("meshwire: bootstrap {node}")));
            self.transact(node, db, &txn).await?;
            tracing::info!(%node, operations = txn.len(), "bridge bootstrapped");
        }
        Ok(())
    }

    /// Adds the ports `names` (with their interface type and options) to `br-int` when missing;
    /// a port in `recreate` is removed first (its veth was recreated, so vswitchd must reopen it).
    pub(super) async fn ensure_ports(
        &self,
        node: &str,
        db: &Client,
        want: &[(String, Value, Option<&str>)],
        recreate: &[String],
    ) -> Result<(), DriverError> {
        if want.is_empty() {
            return Ok(());
        }
        if !recreate.is_empty() {
            self.remove_ports(node, db, recreate).await?;
        }
        let have = self.bridge_port_names(node, db).await?;
        let mut txn = Vec::new();
        for (i, (name, iface, conn)) in want.iter().enumerate() {
            if have.contains(name) {
                continue;
            }
            let mut ids = vec![(OWNER_KEY, ops::OWNER)];
            if let Some(c) = conn {
                ids.push((CONNECTION_KEY, c));
            }
            let mut row = iface.clone();
            row["name"] = json!(name);
            row["external_ids"] = ops::map(&ids);
            let (ni, np) = (format!("i{i}"), format!("p{i}"));
            txn.push(Op::Insert {
                table: "Interface".into(),
                row,
                uuid_name: Some(ni.clone()),
            });
            txn.push(Op::Insert {
                table: "Port".into(),
                row: json!({"name": name, "interfaces": ops::named_uuid(&ni), "external_ids": ops::map(&ids)}),
                uuid_name: Some(np.clone()),
            });
            txn.push(Op::Mutate {
                table: "Bridge".into(),
                conditions: vec![cond("name", "==", json!(BRIDGE))],
                mutations: vec![ops::mutation(
                    "ports",
                    "insert",
                    ops::set(vec![ops::named_uuid(&np)]),
                )],
            });
        }
        if !txn.is_empty() {
            self.transact(node, db, &txn).await?;
        }
        Ok(())
    }

    /// Removes our ports named `names` from `br-int` (the rows go with the reference).
    pub(super) async fn remove_ports(
        &self,
        node: &str,
        db: &Client,
        names: &[String],
    ) -> Result<(), DriverError> {
        let r = self
            .transact(
                node,
                db,
                &[Op::Select {
                    table: "Port".into(),
                    conditions: vec![ops::owned_by_us()],
                    columns: Some(vec!["_uuid".into(), "name".into()]),
                }],
            )
            .await?;
        let uuids: Vec<Value> = r
            .first()
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| names.iter().any(|x| x == n))
            })
            .filter_map(|p| p.get("_uuid").cloned())
            .collect();
        if uuids.is_empty() {
            return Ok(());
        }
        self.transact(
            node,
            db,
            &[Op::Mutate {
                table: "Bridge".into(),
                conditions: vec![cond("name", "==", json!(BRIDGE))],
                mutations: vec![ops::mutation("ports", "delete", ops::set(uuids))],
            }],
        )
        .await
        .map(|_| ())
    }

    /// Names of the ports of `br-int` (a port of that name on another bridge does not count).
    pub(super) async fn bridge_port_names(
        &self,
        node: &str,
        db: &Client,
    ) -> Result<HashSet<String>, DriverError> {
        let r = self
            .transact(
                node,
                db,
                &[
                    Op::Select {
                        table: "Bridge".into(),
                        conditions: vec![cond("name", "==", json!(BRIDGE))],
                        columns: Some(vec!["ports".into()]),
                    },
                    Op::Select {
                        table: "Port".into(),
                        conditions: vec![],
                        columns: Some(vec!["_uuid".into(), "name".into()]),
                    },
                ],
            )
            .await?;
        let ours: HashSet<String> = r
            .first()
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .and_then(|rows| rows.first())
            .and_then(|b| b.get("ports"))
            .map(crate::ovsdb::replica::set_elements)
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u.get(1).and_then(|u| u.as_str()).map(str::to_string))
            .collect();
        Ok(r.get(1)
            .and_then(|v| v.get("rows"))
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("_uuid")
                    .and_then(|u| u.get(1))
                    .and_then(|u| u.as_str())
                    .is_some_and(|u| ours.contains(u))
            })
            .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect())
    }

    /// Interface name → OpenFlow port number (only those vswitchd has numbered), and our
    /// connection ports (name → connection id), from the session's replica; interfaces of
    /// `br-int` only (port numbers are per bridge).
    pub(super) fn read_ports(&self, node: &str) -> Result<(PortNumbers, PortOwners), DriverError> {
        let s = self.session(node)?;
        let replica = s.replica();
        let bad = |e: crate::ovsdb::rows::RowError| self.err(format!("node {node}"), e);
        let ports: HashSet<String> = replica
            .bridges()
            .map_err(bad)?
            .into_iter()
            .filter(|b| b.name == BRIDGE)
            .flat_map(|b| b.ports)
            .collect();
        let on_bridge: HashSet<String> = replica
            .ports()
            .map_err(bad)?
            .into_iter()
            .filter(|p| ports.contains(&p.uuid))
            .flat_map(|p| p.interfaces)
            .collect();
        let ifaces: Vec<_> = replica
            .interfaces()
            .map_err(bad)?
            .into_iter()
            .filter(|i| on_bridge.contains(&i.uuid))
            .collect();
        let mut numbers = HashMap::new();
        let mut conns = HashMap::new();
        for i in ifaces {
            if let Some(n) = i.ofport.filter(|n| *n > 0) {
                numbers.insert(i.name.clone(), n as u32);
            }
            if let Some(id) = i.external_ids.get(CONNECTION_KEY) {
                conns.insert(i.name.clone(), id.clone());
            }
        }
        Ok((numbers, conns))
    }

    pub(super) fn tunnel_row(t: &TunnelPort) -> Value {
        let mut opts = vec![
            ("remote_ip", "flow".to_string()),
            ("key", "flow".to_string()),
        ];
        if let Some(p) = t.dst_port {
            opts.push(("dst_port", p.to_string()));
        }
        let pairs: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
        json!({"type": t.kind, "options": ops::map(&pairs)})
    }
}
