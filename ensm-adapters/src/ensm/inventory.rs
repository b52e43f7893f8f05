//! Inventory: Meshwire's entries on the device (the keepalive reads them), and the removal of
//! those no connection wants.

use std::collections::{BTreeMap, HashSet};

use crate::netconf::client::NetconfError;
use crate::netconf::xml::Datastore;
use crate::profile::{self};

use super::session::transport_failure;
use super::*;

impl Ensm {
    /// Reads Meshwire's entries on the device (an empty list when the profile has no
    /// inventory: the device is still asked, as the keepalive).
    pub(super) async fn inventory(&self) -> Result<Vec<(String, String)>, NetconfError> {
        let session = self.session().await.map_err(|e| NetconfError::Connect {
            device: self.inner.device.name.clone(),
            addr: self.inner.device.netconf.host.clone(),
            reason: e,
        })?;
        let inv = self.inner.profile.inventory.as_ref();
        let r = session
            .get_config(Datastore::Running, inv.map(|i| i.filter.as_str()))
            .await;
        match r {
            Ok(data) => match inv {
                None => Ok(Vec::new()),
                Some(inv) => {
                    profile::owned_entries(inv, &data).map_err(|reason| NetconfError::Protocol {
                        device: self.inner.device.name.clone(),
                        what: "get-config".into(),
                        reason,
                    })
                }
            },
            Err(e) => {
                if transport_failure(&e) {
                    self.lost(&session, &e.to_string()).await;
                }
                Err(e)
            }
        }
    }

    /// Contacts the device (opening the session if needed) and reads its inventory: the
    /// keepalive. Updates reachability.
    pub(super) async fn check_device(&self) -> Result<Vec<(String, String)>, String> {
        // One failure (an idle session the device closed, one slow reply) is retried at once
        // on a fresh session before the device counts as unreachable.
        let first = self.inventory().await;
        let r = match first {
            Ok(v) => Ok(v),
            Err(_) => self.inventory().await,
        };
        match r {
            Ok(v) => {
                let mut h = self.health();
                if !h.reachable {
                    tracing::info!(device = %self.inner.device.name, "device reachable");
                }
                h.reachable = true;
                h.last_error = None;
                Ok(v)
            }
            Err(e) => {
                let mut h = self.health();
                h.reachable = false;
                h.last_error = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Removes Meshwire entries no connection wants, seen orphan twice in a row.
    pub(super) async fn remove_orphans(
        &self,
        desired: &HashSet<&str>,
        entries: &[(String, String)],
    ) {
        let Some(inv) = &self.inner.profile.inventory else {
            return;
        };
        let orphans: Vec<&String> = entries
            .iter()
            .filter(|(_, id)| !desired.contains(id.as_str()))
            .map(|(k, _)| k)
            .collect();
        let confirmed: Vec<String> = {
            let mut h = self.health();
            let c = orphans
                .iter()
                .filter(|k| h.suspects.contains(k.as_str()))
                .map(|k| k.to_string())
                .collect();
            h.suspects = orphans.iter().map(|k| k.to_string()).collect();
            c
        };
        if confirmed.is_empty() {
            return;
        }
        let mut each = Vec::new();
        for k in &confirmed {
            let vars = BTreeMap::from([("name", k.clone())]);
            match profile::render(&inv.remove, &vars) {
                Ok(x) => each.push((k.clone(), x)),
                Err(e) => {
                    tracing::warn!(device = %self.inner.device.name, entry = %k, error = %e, "cannot render removal");
                    return;
                }
            }
        }
        let all: String = each.iter().map(|(_, x)| x.as_str()).collect();
        let removed: Vec<String> = match self.transaction(&all).await {
            Ok(()) => confirmed,
            // One entry the device will not remove (something still refers to it) must not
            // keep the others: try them one by one.
            Err(e) if each.len() > 1 => {
                tracing::warn!(device = %self.inner.device.name, error = %e, "orphan removal refused as a whole; trying each");
                let mut ok = Vec::new();
                for (k, x) in each {
                    match self.transaction(&x).await {
                        Ok(()) => ok.push(k),
                        Err(e) => {
                            tracing::warn!(device = %self.inner.device.name, entry = %k, error = %e, "orphan removal refused; retrying next round")
                        }
                    }
                }
                ok
            }
            Err(e) => {
                tracing::warn!(device = %self.inner.device.name, error = %e, "orphan removal failed; retrying next round");
                Vec::new()
            }
        };
        if !removed.is_empty() {
            tracing::info!(device = %self.inner.device.name, entries = ?removed, "removed Meshwire entries no connection wants");
            let mut h = self.health();
            h.counters.orphans_removed += removed.len() as u64;
            for k in &removed {
                h.suspects.remove(k);
            }
        }
    }
}
