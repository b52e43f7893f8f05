//! The driver: `Driver` for a device (deltas configure and unconfigure; a full set observes
//! and removes orphan entries).

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use meshwire_controller::driver::{
    Desired, Driver, DriverError, DriverEvent, Health, Observation, Report, Update,
};
use meshwire_models::Connection;

use super::*;

#[async_trait]
impl Driver for Ensm {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        let mut report = Report::at(desired.version);
        match &desired.update {
            Update::Delta { upsert, remove } => {
                for c in remove.iter() {
                    self.remove(c).await?;
                }
                for c in upsert.iter() {
                    self.apply(c).await?;
                }
            }
            // Orphans go only when two full sets in a row find them (see `remove_orphans`):
            // a full set is a snapshot that may predate a connection configured since.
            Update::Full { connections, .. } => {
                report.observation = self.observe(connections).await?
            }
        }
        Ok(report)
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<DriverEvent>> {
        Some(self.inner.events.subscribe())
    }
}

impl Ensm {
    async fn apply(&self, c: &Connection) -> Result<(), DriverError> {
        self.accepts(c).map_err(|r| self.err(c, r))?;
        let as_client = self.is_client(c);
        let (mut config, _) = if as_client {
            self.inner.profile.render_for_client(c)
        } else {
            self.inner.profile.render_for(c)
        }
        .map_err(|e| self.err(c, e))?;
        // A chain element: the controller composed the onward leg; the cross-connect joining
        // the two goes in the same transaction as the incoming tunnel.
        if let Some((xc, _)) = self.cross_connect(c)? {
            config.push_str(&xc);
        }
        self.transaction(&config)
            .await
            .map_err(|e| self.device_err(c, e))?;
        if !self.inner.profile.settle.is_zero() {
            tokio::time::sleep(self.inner.profile.settle).await;
        }
        tracing::info!(device = %self.inner.device.name, connection = %c.id, mechanism = %c.mechanism().map(|m| m.summary()).unwrap_or_default(), "device configured");
        Ok(())
    }

    async fn remove(&self, c: &Connection) -> Result<(), DriverError> {
        let rendered = if self.is_client(c) {
            self.inner.profile.render_for_client(c)
        } else {
            self.inner.profile.render_for(c)
        };
        let (_, mut undo) = match rendered {
            Ok(x) => x,
            // A connection this profile cannot express was never configured.
            Err(_) => return Ok(()),
        };
        // Exactly ours, and only if it is there: some devices refuse removing what is absent
        // (yuma123 checks the entry's mandatory choice even then).
        let mut present = true;
        if self.inner.profile.inventory.is_some() {
            let entries = self.inventory().await.map_err(|e| self.device_err(c, e))?;
            present = entries.iter().any(|(_, id)| *id == c.id);
        }
        // A chain element: its cross-connect was written with the tunnel, so it goes with it
        // (first: it refers to the tunnel). The controller closes the onward leg.
        if let Some((_, xc_undo)) = self.cross_connect(c)? {
            undo = format!("{xc_undo}{undo}");
        }
        if present {
            self.transaction(&undo)
                .await
                .map_err(|e| self.device_err(c, e))?;
            tracing::info!(device = %self.inner.device.name, connection = %c.id, "device config removed");
        }
        Ok(())
    }

    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
        let mut obs = Observation::default();
        // Only endpoints the health task has withdrawn count as lost (the task debounces and
        // restores them); what this round sees alone never takes an endpoint down.
        let down: BTreeMap<String, String> = {
            let want = self.wanted_down();
            let h = self.health();
            want.into_iter()
                .filter(|(n, _)| h.withdrawn.contains(n))
                .collect()
        };
        let entries = if self.health().reachable {
            self.check_device().await.ok()
        } else {
            None
        };
        let Some(entries) = entries else {
            // The health task decides (and publishes) whether the device is down.
            self.inner.wake.notify_one();
            for c in desired.iter().filter(|c| !self.is_client(c)) {
                if let Some(reason) = down.get(&c.network_service_endpoint_name) {
                    obs.connections.insert(
                        c.id.clone(),
                        Health::EndpointLost {
                            reason: reason.clone(),
                        },
                    );
                }
            }
            return Ok(obs);
        };
        let present: HashSet<&str> = entries.iter().map(|(_, id)| id.as_str()).collect();
        for c in desired {
            if let Some(reason) = down
                .get(&c.network_service_endpoint_name)
                .filter(|_| !self.is_client(c))
            {
                obs.connections.insert(
                    c.id.clone(),
                    Health::EndpointLost {
                        reason: reason.clone(),
                    },
                );
            } else if self.inner.profile.inventory.is_some() && !present.contains(c.id.as_str()) {
                obs.connections.insert(
                    c.id.clone(),
                    Health::Missing {
                        reason: format!("device {} has no config for it", self.inner.device.name),
                    },
                );
            }
        }
        let want: HashSet<&str> = desired.iter().map(|c| c.id.as_str()).collect();
        self.remove_orphans(&want, &entries).await;
        Ok(obs)
    }
}
