//! Node resources the controller lends out: SR-IOV pools as each node's agent reports them
//! (its VFs, the PFs whose link is down, its device plugin's tokens), and their use.

use crate::controller::Controller;
use crate::driver::{DriverEvent, Happened, Scope};
use crate::state::PoolUsage;

impl Controller {
    /// Applies a node's SR-IOV report: only the node the event came from is updated, and a
    /// report that breaks the rules is dropped (logged), never half applied.
    pub(crate) fn sriov_event(&self, e: &DriverEvent) {
        let Happened::NodeSriov { sriov } = &e.happened else {
            return;
        };
        let Scope::Node(node) = &e.scope else {
            tracing::warn!(scope = %e.scope, "an SR-IOV report not from a node; ignored");
            return;
        };
        if let Err(why) = sriov.validate() {
            tracing::warn!(%node, error = %why, "SR-IOV report refused");
            return;
        }
        tracing::info!(
            %node,
            pools = sriov.pools.len(),
            tokens = sriov.tokens.len(),
            pfs_down = sriov.pfs_down.len(),
            "SR-IOV pools reported"
        );
        self.state().set_node_sriov(node, sriov.clone());
    }

    /// Every SR-IOV pool on every node with its use (`get resources`).
    pub fn sriov_usage(&self) -> Vec<PoolUsage> {
        self.state().sriov_usage()
    }
}
