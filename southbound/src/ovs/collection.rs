//! Collection: our ports (and their veths) whose connection is no longer desired.

use std::collections::HashSet;

use meshwire_controller::driver::DriverError;
use meshwire_models::Connection;

use super::*;
use crate::kernel::wiring::End;

impl OvsDriver {
    /// Removes our connection ports (and their veths) whose connection is not desired.
    pub(super) async fn collect_orphans(&self, node: &str) -> Result<usize, DriverError> {
        if !self.inner.ledger.known() {
            return Ok(0);
        }
        let db = self.db(node).await?;
        let l = self.node_lock(node);
        let _g = l.lock().await;
        let netns = self.node_info(node)?.netns;
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
        for (name, id) in &orphans {
            let end = End {
                netns: netns.clone(),
                ifname: name.clone(),
                addrs: vec![],
                routes: vec![],
                bridge: None,
                mtu: 1500,
                mac: None,
                neighbors: vec![],
            };
            let ghost = ghost_connection(id);
            let _ = self.inner.kernel.delete_end(&ghost, &end).await;
            tracing::info!(%node, port = %name, connection = %id, "removed a port of a connection that is no longer desired");
        }
        Ok(orphans.len())
    }
}

/// A stand-in carrying only an id, for deleting what a forgotten connection left behind.
fn ghost_connection(id: &str) -> Connection {
    Connection {
        id: id.to_string(),
        network_service: String::new(),
        network_service_endpoint_name: String::new(),
        payload: Default::default(),
        client: meshwire_models::ClientRef {
            node: String::new(),
            name: None,
        },
        labels: Default::default(),
        interface: String::new(),
        preferences: vec![],
        path: vec![],
        hops: vec![],
        placement: Default::default(),
        ip_context: Default::default(),
        address_pool: None,
        mtu: 1500,
        state: meshwire_models::ConnectionState::Closed,
        created_at_ms: 0,
        updated_at_ms: 0,
        generation: 0,
        last_error: None,
        chain: Default::default(),
    }
}
