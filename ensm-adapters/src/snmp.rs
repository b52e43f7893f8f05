//! SNMP monitoring of a device (async-snmp): sysUpTime and ifOperStatus of its data interfaces,
//! over v2c or v3 (USM, authPriv). The eNSM polls it to learn that a device or one of its links
//! went down, and withdraws the endpoints that depend on it.

use std::net::SocketAddr;
use std::time::Duration;

use async_snmp::{oid, Auth, AuthProtocol, Client, Oid, PrivProtocol, UsmConfig, Value};

/// sysUpTime.0
pub fn sys_uptime() -> Oid {
    oid!(1, 3, 6, 1, 2, 1, 1, 3, 0)
}

/// ifDescr.<ifIndex>
pub fn if_descr(index: u32) -> Oid {
    Oid::new([1, 3, 6, 1, 2, 1, 2, 2, 1, 2, index])
}

/// ifOperStatus.<ifIndex>
pub fn if_oper_status(index: u32) -> Oid {
    Oid::new([1, 3, 6, 1, 2, 1, 2, 2, 1, 8, index])
}

#[derive(Clone)]
pub enum SnmpAuth {
    V2c {
        community: String,
    },
    /// authPriv with SHA-256 and AES-128.
    V3 {
        user: String,
        auth_password: String,
        priv_password: String,
    },
}

impl std::fmt::Debug for SnmpAuth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnmpAuth::V2c { .. } => f.write_str("V2c(***)"),
            SnmpAuth::V3 { user, .. } => write!(f, "V3({user}, ***)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SnmpTarget {
    pub device: String,
    pub addr: SocketAddr,
    pub auth: SnmpAuth,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnmpError {
    #[error("snmp {device} ({addr}): {what}: {reason}")]
    Request {
        device: String,
        addr: String,
        what: String,
        reason: String,
    },
    #[error("snmp {device}: {what}: unexpected value {value}")]
    Value {
        device: String,
        what: String,
        value: String,
    },
}

/// ifOperStatus values (RFC 2863).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperStatus {
    Up,
    Down,
    /// testing(3), unknown(4), dormant(5), notPresent(6), lowerLayerDown(7).
    Other(i32),
}

impl OperStatus {
    pub fn is_up(self) -> bool {
        self == OperStatus::Up
    }
}

/// One poll of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Hundredths of a second since the agent started: a smaller value than the previous poll
    /// means the device restarted.
    pub uptime_ticks: u32,
    /// (ifIndex, ifDescr, ifOperStatus) of the interfaces asked for.
    pub interfaces: Vec<(u32, String, OperStatus)>,
}

pub struct Monitor {
    target: SnmpTarget,
    client: Client,
}

impl Monitor {
    pub async fn connect(target: SnmpTarget) -> Result<Monitor, SnmpError> {
        let (device, addr) = (target.device.clone(), target.addr.to_string());
        let err = |what: &str, reason: String| SnmpError::Request {
            device: device.clone(),
            addr: addr.clone(),
            what: what.to_string(),
            reason,
        };
        let auth: Auth = match &target.auth {
            SnmpAuth::V2c { community } => Auth::v2c(community.clone()),
            SnmpAuth::V3 {
                user,
                auth_password,
                priv_password,
            } => UsmConfig::new(user.clone())
                .auth_priv(
                    AuthProtocol::Sha256,
                    auth_password.clone(),
                    PrivProtocol::Aes128,
                    priv_password.clone(),
                )
                .map_err(|e| err("v3 keys", e.to_string()))?
                .into(),
        };
        let mut builder = Client::builder(target.addr, auth).request_timeout(target.timeout);
        // One retry: a poll that fails twice in a row is news for the eNSM, not noise.
        if let Ok(r) = async_snmp::Retry::fixed(1, Duration::ZERO) {
            builder = builder.retry(r);
        }
        let client = builder
            .connect()
            .await
            .map_err(|e| err("connect", e.to_string()))?;
        Ok(Monitor { target, client })
    }

    fn err(&self, what: &str, reason: impl std::fmt::Display) -> SnmpError {
        SnmpError::Request {
            device: self.target.device.clone(),
            addr: self.target.addr.to_string(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    /// ifIndex of each interface named in `names` (by ifDescr), walking ifDescr once. Names the
    /// device does not have are left out.
    pub async fn if_indexes(
        &self,
        names: &[String],
    ) -> Result<std::collections::BTreeMap<String, u32>, SnmpError> {
        let table = Oid::new([1, 3, 6, 1, 2, 1, 2, 2, 1, 2]);
        let rows = self
            .client
            .walk(table.clone())
            .map_err(|e| self.err("walk ifDescr", e))?
            .collect()
            .await
            .map_err(|e| self.err("walk ifDescr", e))?;
        let mut out = std::collections::BTreeMap::new();
        for vb in rows {
            let Some(descr) = vb.value.as_str() else {
                continue;
            };
            if let Some(&index) = vb.oid.arcs().get(table.arcs().len()) {
                if names.iter().any(|n| n == descr) {
                    out.insert(descr.to_string(), index);
                }
            }
        }
        Ok(out)
    }

    /// One GET of sysUpTime (the cheapest liveness probe).
    pub async fn uptime(&self) -> Result<u32, SnmpError> {
        let r = self
            .client
            .get(&sys_uptime())
            .await
            .map_err(|e| self.err("get sysUpTime.0", e))?;
        match r.varbinds.first().map(|v| &v.value) {
            Some(Value::TimeTicks(t)) => Ok(*t),
            other => Err(SnmpError::Value {
                device: self.target.device.clone(),
                what: "sysUpTime.0".into(),
                value: format!("{other:?}"),
            }),
        }
    }

    /// sysUpTime and, for each ifIndex, its ifDescr and ifOperStatus, in one GET.
    pub async fn poll(&self, if_indexes: &[u32]) -> Result<Health, SnmpError> {
        let mut oids = vec![sys_uptime()];
        for i in if_indexes {
            oids.push(if_descr(*i));
            oids.push(if_oper_status(*i));
        }
        let r = self
            .client
            .get_many(&oids)
            .await
            .map_err(|e| self.err("get sysUpTime, ifDescr, ifOperStatus", e))?;
        let value = |k: usize| r.varbinds.get(k).map(|v| v.value.clone());
        let uptime_ticks = match value(0) {
            Some(Value::TimeTicks(t)) => t,
            other => {
                return Err(SnmpError::Value {
                    device: self.target.device.clone(),
                    what: "sysUpTime.0".into(),
                    value: format!("{other:?}"),
                })
            }
        };
        let mut interfaces = Vec::new();
        for (n, i) in if_indexes.iter().enumerate() {
            let descr = value(1 + 2 * n)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let status = match value(2 + 2 * n).and_then(|v| v.as_i32()) {
                Some(1) => OperStatus::Up,
                Some(2) => OperStatus::Down,
                Some(x) => OperStatus::Other(x),
                None => {
                    return Err(SnmpError::Value {
                        device: self.target.device.clone(),
                        what: format!("ifOperStatus.{i}"),
                        value: format!("{:?}", value(2 + 2 * n)),
                    })
                }
            };
            interfaces.push((*i, descr, status));
        }
        Ok(Health {
            uptime_ticks,
            interfaces,
        })
    }
}

/// A linkDown or linkUp notification (RFC 2863): which ifIndex, and whether it went up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTrap {
    pub if_index: u32,
    pub up: bool,
}

/// linkDown (snmpTraps.3) and linkUp (snmpTraps.4).
pub fn link_trap(trap_oid: &Oid, varbinds: &[async_snmp::VarBind]) -> Option<LinkTrap> {
    let traps = [1u32, 3, 6, 1, 6, 3, 1, 1, 5];
    let arcs = trap_oid.arcs();
    if arcs.len() != 10 || arcs[..9] != traps {
        return None;
    }
    let up = match arcs[9] {
        3 => false,
        4 => true,
        _ => return None,
    };
    // The first varbind is ifIndex.<n> = n; fall back to the instance of any ifTable column.
    let if_table = [1u32, 3, 6, 1, 2, 1, 2, 2, 1];
    let if_index = varbinds.iter().find_map(|vb| {
        let a = vb.oid.arcs();
        (a.len() == 11 && a[..9] == if_table).then(|| a[10])
    })?;
    Some(LinkTrap { if_index, up })
}

/// Receives v2c notifications with `community` on `listen`.
pub async fn trap_receiver(
    listen: SocketAddr,
    community: &str,
) -> Result<async_snmp::notification::NotificationReceiver, String> {
    async_snmp::notification::NotificationReceiver::builder()
        .bind(listen.to_string())
        .community(community.as_bytes().to_vec())
        .accept_all_notifications()
        .build()
        .await
        .map_err(|e| format!("trap receiver on {listen}: {e}"))
}

/// The link traps (`(interface, up)`) a poll agrees with: `polled` is what the poll read,
/// `missing` the interfaces the device no longer lists (down). Drains `trapped`: a trap the poll
/// contradicts is forgotten, never applied.
pub fn confirmed_traps(
    trapped: &mut Vec<(String, bool)>,
    polled: &[(String, bool)],
    missing: &[(String, bool)],
) -> Vec<(String, bool)> {
    trapped
        .drain(..)
        .filter(|t| polled.contains(t) || (!t.1 && missing.contains(t)))
        .collect()
}

#[cfg(test)]
mod trap_tests {
    use super::*;

    #[test]
    fn link_traps_are_recognised() {
        let vb = |o: Vec<u32>| async_snmp::VarBind::new(Oid::new(o), Value::Integer(1));
        let down = Oid::new([1, 3, 6, 1, 6, 3, 1, 1, 5, 3]);
        let up = Oid::new([1, 3, 6, 1, 6, 3, 1, 1, 5, 4]);
        let idx = vec![vb(vec![1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 7])];
        assert_eq!(
            link_trap(&down, &idx),
            Some(LinkTrap {
                if_index: 7,
                up: false
            })
        );
        assert_eq!(
            link_trap(&up, &idx),
            Some(LinkTrap {
                if_index: 7,
                up: true
            })
        );
        assert_eq!(
            link_trap(&Oid::new([1, 3, 6, 1, 6, 3, 1, 1, 5, 1]), &idx),
            None
        );
        assert_eq!(link_trap(&down, &[]), None);
    }

    /// Input: linkDown traps for eth1 and eth2 and a linkUp for eth3, then a poll that reads
    /// eth1 up, eth2 down and eth3 up. Output: only what the poll confirms (eth2 down, eth3 up);
    /// the forged or stale linkDown for eth1 withdraws nothing.
    #[test]
    fn dev_a_trap_is_applied_only_when_a_poll_confirms_it() {
        let mut trapped = vec![
            ("eth1".to_string(), false),
            ("eth2".to_string(), false),
            ("eth3".to_string(), true),
        ];
        let polled = vec![
            ("eth1".to_string(), true),
            ("eth2".to_string(), false),
            ("eth3".to_string(), true),
        ];
        let got = confirmed_traps(&mut trapped, &polled, &[]);
        assert_eq!(
            got,
            vec![("eth2".to_string(), false), ("eth3".to_string(), true)]
        );
        assert!(trapped.is_empty());
        // An interface the device stopped listing confirms a linkDown.
        let mut trapped = vec![("eth4".to_string(), false)];
        let got = confirmed_traps(&mut trapped, &[], &[("eth4".to_string(), false)]);
        assert_eq!(got, vec![("eth4".to_string(), false)]);
    }
}
