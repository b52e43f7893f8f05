//! Collection: our ports whose connection is no longer desired.

use std::collections::HashSet;

use meshwire_controller::driver::DriverError;

use super::*;

impl OvsDriver {
    /// Removes our connection ports whose connection is not desired.
    pub(super) async fn collect_orphans(&self, node: &str) -> Result<usize, DriverError> {
        if !self.inner.ledger.known() {
            return Ok(0);
        }
        let db = self.db(node).await?;
        let l = self.node_lock(node);
        let _g = l.lock().await;
        let (_, conns) = self.read_ports(node)?;
        let desired: HashSet<String> = self
            .inner
            .ledger
            .snapshot()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let orphans: Vec<(String, String)> = conns
            .into_iter()
            .filter(|(_, id)| !desired.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let names: Vec<String> = orphans.iter().map(|(n, _)| n.clone()).collect();
        self.remove_ports(node, &db, &names).await?;
        // Their veths carry the connection's alias: the legs driver's sweep takes them.
        for (name, id) in &orphans {
            tracing::info!(%node, port = %name, connection = %id, "removed a port of a connection that is no longer desired");
        }
        Ok(orphans.len())
    }
}
