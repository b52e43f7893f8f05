//! SR-IOV VFs as the controller lends them: each node's pools as its agent reports them, and
//! which VF and which token each connection holds. Claims derive from connections (a VF is
//! claimed while a recorded connection's mechanism names it), as every other pool's do, so a
//! restart restores them from the store and nothing is handed out twice.

use std::collections::BTreeMap;

use meshwire_models::sriov::{NodeSriov, Vf};
use meshwire_models::{Connection, Mechanism};
use serde::Serialize;

use crate::error::ControllerError;
use crate::pool::PoolError;

use super::State;

/// What SR-IOV claims the controller holds.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// Each node's report.
    pub(super) nodes: BTreeMap<String, NodeSriov>,
    /// (node, VF PCI address) → connection.
    pub(super) vfs: BTreeMap<(String, String), String>,
    /// Token → connection.
    pub(super) tokens: BTreeMap<String, String>,
    /// (node, pool) → the index of the VF lent last: the next choice starts after it, so a VF
    /// that cannot be lent (something else in its way) does not stop its pool.
    pub(super) turn: BTreeMap<(String, String), usize>,
}

impl Claims {
    /// Claims a chosen VF and its token for connection `id`.
    pub(super) fn claim(&mut self, node: &str, choice: &VfChoice, id: &str) {
        self.vfs.insert(
            (node.to_string(), choice.vf.pci.to_string()),
            id.to_string(),
        );
        self.tokens.insert(choice.token.clone(), id.to_string());
        let index = self
            .nodes
            .get(node)
            .and_then(|r| r.pools.get(&choice.pool))
            .and_then(|vfs| vfs.iter().position(|v| v.pci == choice.vf.pci));
        if let Some(i) = index {
            self.turn.insert((node.to_string(), choice.pool.clone()), i);
        }
    }
}

/// A VF chosen for a request.
#[derive(Debug, Clone)]
pub struct VfChoice {
    pub vf: Vf,
    pub pool: String,
    pub token: String,
}

/// One pool on one node, for `get resources`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    pub node: String,
    pub pool: String,
    /// VFs in the pool.
    pub total: usize,
    /// VFs lent to connections.
    pub allocated: usize,
    /// VFs whose PF link is down.
    pub unhealthy: usize,
    /// Tokens the kubelet has handed to pods, of the pool's tokens.
    pub tokens_allocated: usize,
    pub tokens: usize,
}

/// The (node, VF, token) a connection holds, if it holds one.
fn held(c: &Connection) -> Option<(String, String, String)> {
    c.hops.iter().find_map(|h| match &h.mechanism {
        Mechanism::SriovVf {
            pci_address, token, ..
        } => Some((h.from.clone(), pci_address.clone(), token.clone())),
        _ => None,
    })
}

impl State {
    /// A node's agent reported its SR-IOV pools (replacing what it said before).
    pub fn set_node_sriov(&mut self, node: &str, report: NodeSriov) {
        if report.pools.is_empty() && report.tokens.is_empty() {
            self.sriov.nodes.remove(node);
        } else {
            self.sriov.nodes.insert(node.to_string(), report);
        }
    }

    /// Every pool on every node with its use.
    pub fn sriov_usage(&self) -> Vec<PoolUsage> {
        let mut out = Vec::new();
        for (node, r) in &self.sriov.nodes {
            for (pool, vfs) in &r.pools {
                let allocated = vfs
                    .iter()
                    .filter(|v| {
                        self.sriov
                            .vfs
                            .contains_key(&(node.clone(), v.pci.to_string()))
                    })
                    .count();
                let unhealthy = vfs.iter().filter(|v| r.pfs_down.contains(&v.pf)).count();
                let tokens: Vec<_> = r.tokens.values().filter(|t| &t.pool == pool).collect();
                out.push(PoolUsage {
                    node: node.clone(),
                    pool: pool.clone(),
                    total: vfs.len(),
                    allocated,
                    unhealthy,
                    tokens_allocated: tokens.iter().filter(|t| t.allocated).count(),
                    tokens: tokens.len(),
                });
            }
        }
        out
    }

    /// Checks `token` on `node` for connection `id` and chooses a free, usable VF of its pool
    /// (claimed with [`Claims::claim`] once the plan holds).
    pub(super) fn choose_vf(
        &self,
        node: &str,
        token: &str,
        id: &str,
    ) -> Result<VfChoice, ControllerError> {
        let refuse = |detail: String, exhausted: bool| ControllerError::Sriov {
            node: node.to_string(),
            detail,
            exhausted,
        };
        let r = self.sriov.nodes.get(node).ok_or_else(|| {
            refuse(
                "the node reports no SR-IOV pools (is its agent attached and running with --sriov-config?)".into(),
                false,
            )
        })?;
        let t = r.tokens.get(token).ok_or_else(|| {
            refuse(
                format!("token {token} is not one of this node's device plugin tokens"),
                false,
            )
        })?;
        if !t.allocated {
            return Err(refuse(
                format!("token {token} was not allocated to any pod by the kubelet"),
                false,
            ));
        }
        if let Some(other) = self.sriov.tokens.get(token).filter(|o| o.as_str() != id) {
            return Err(refuse(
                format!("token {token} is in use by connection {other}"),
                false,
            ));
        }
        let vfs = r.pools.get(&t.pool).map(Vec::as_slice).unwrap_or(&[]);
        let holder = |v: &Vf| self.sriov.vfs.get(&(node.to_string(), v.pci.to_string()));
        let usable = |v: &&Vf| !r.pfs_down.contains(&v.pf) && v.netdev.is_some();
        let after = self
            .sriov
            .turn
            .get(&(node.to_string(), t.pool.clone()))
            .map_or(0, |i| i + 1);
        // A connection healing on the same node keeps its VF when it can; otherwise the next
        // free one after the last lent.
        let free = vfs
            .iter()
            .filter(usable)
            .find(|v| holder(v).is_some_and(|h| h == id))
            .or_else(|| {
                vfs.iter()
                    .cycle()
                    .skip(after % vfs.len().max(1))
                    .take(vfs.len())
                    .filter(usable)
                    .find(|v| holder(v).is_none())
            });
        let Some(vf) = free.cloned() else {
            let down = vfs.iter().filter(|v| r.pfs_down.contains(&v.pf)).count();
            return Err(refuse(
                format!(
                    "pool {} has no free VF ({} VFs: {} lent, {down} on a PF whose link is down)",
                    t.pool,
                    vfs.len(),
                    vfs.iter().filter(|v| holder(v).is_some()).count(),
                ),
                true,
            ));
        };
        Ok(VfChoice {
            vf,
            pool: t.pool.clone(),
            token: token.to_string(),
        })
    }

    /// Claims (or gives back) what a recorded connection holds. A VF or token another
    /// connection already holds is an error (two records claiming one VF), and nothing changes.
    pub(super) fn mark_vf(&mut self, c: &Connection, used: bool) -> Result<(), PoolError> {
        let Some((node, pci, token)) = held(c) else {
            return Ok(());
        };
        if used {
            let taken = |holder: Option<&String>| holder.is_some_and(|h| *h != c.id);
            if taken(self.sriov.vfs.get(&(node.clone(), pci.clone()))) {
                return Err(PoolError::Taken {
                    pool: format!("sriov VFs of node {node}"),
                    value: pci,
                });
            }
            if !token.is_empty() && taken(self.sriov.tokens.get(&token)) {
                return Err(PoolError::Taken {
                    pool: format!("sriov tokens of node {node}"),
                    value: token,
                });
            }
            self.sriov.vfs.insert((node, pci), c.id.clone());
            if !token.is_empty() {
                self.sriov.tokens.insert(token, c.id.clone());
            }
        } else {
            // A connection healing keeps its id: what its recorded version still holds stays
            // claimed when a replacement plan is given back.
            let kept = self.connections.get(&c.id).and_then(held);
            let keeps_vf = kept
                .as_ref()
                .is_some_and(|(n, p, _)| *n == node && *p == pci);
            let keeps_token = kept.as_ref().is_some_and(|(_, _, t)| *t == token);
            if !keeps_vf && self.sriov.vfs.get(&(node.clone(), pci.clone())) == Some(&c.id) {
                self.sriov.vfs.remove(&(node, pci));
            }
            if !keeps_token && self.sriov.tokens.get(&token) == Some(&c.id) {
                self.sriov.tokens.remove(&token);
            }
        }
        Ok(())
    }
}
