//! Bridge domains: the flows that join a distributed L2 domain's members across nodes.

use std::collections::BTreeMap;

use meshwire_controller::driver::DriverError;
use meshwire_models::ForwarderKind;

use super::plan::FlowTemplate;
use super::*;

impl OvsDriver {
    /// Each distributed domain with members, as flow templates for `node`.
    pub(super) fn domain_templates(&self, node: &str) -> Vec<(String, Vec<FlowTemplate>)> {
        let mut members: BTreeMap<String, Vec<plan::Member>> = BTreeMap::new();
        for c in self.desired_snapshot() {
            if let Some(m) = plan::domain_member(&c) {
                members.entry(m.domain.clone()).or_default().push(m);
            }
        }
        // A domain whose VNI is taken by another gets no flows (apply refuses its members).
        for (d, _) in plan::colliding_domains(members.keys().map(String::as_str)) {
            members.remove(&d);
        }
        let t = lock(&self.inner.topology);
        members
            .into_iter()
            .map(|(domain, ms)| {
                let mut local: Vec<String> = ms
                    .iter()
                    .filter(|m| m.node == node)
                    .map(|m| m.port.clone())
                    .collect();
                local.sort();
                let mut others: Vec<&str> = ms
                    .iter()
                    .filter(|m| m.node != node)
                    .map(|m| m.node.as_str())
                    .collect();
                others.sort();
                others.dedup();
                let remotes: Vec<std::net::Ipv4Addr> = others
                    .iter()
                    .filter_map(|r| remote_addr(&t, node, r))
                    .collect();
                let flows = plan::domain_flows(&domain, node, &local, &remotes);
                (domain, flows)
            })
            .collect()
    }

    /// Brings one domain's flows in line on every ovs node that is up (members came or went).
    pub(super) async fn sync_domain(&self, domain: &str) -> Result<(), DriverError> {
        let nodes: Vec<String> = lock(&self.inner.topology)
            .nodes
            .values()
            .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
            .map(|n| n.name.clone())
            .collect();
        let cookie = plan::domain_cookie(domain);
        let mut first = None;
        for node in nodes {
            let has_switch = lock(&self.inner.switches).contains_key(&plan::datapath_id(&node));
            let members_here = self
                .domain_templates(&node)
                .iter()
                .any(|(d, f)| d == domain && !f.is_empty());
            if !members_here && !has_switch {
                continue;
            }
            let r = async {
                let sw = self.ensure_node(&node).await?;
                self.db(&node).await?;
                let l = self.node_lock(&node);
                let _g = l.lock().await;
                // Members as they are now, under the node's lock: a concurrent apply of another
                // member syncs after us with a set that includes both.
                let templates: Vec<FlowTemplate> = self
                    .domain_templates(&node)
                    .into_iter()
                    .filter(|(d, _)| d == domain)
                    .flat_map(|(_, f)| f)
                    .collect();
                let flows = self.resolve_all(&node, &templates).await?;
                self.sync_flows(&node, &sw, flows, &|k| k == cookie, cookie, u64::MAX)
                    .await
            }
            .await;
            if let Err(e) = r {
                // One node that is down must not fail the member being wired elsewhere; the
                // reconcile loop brings that node in line when it is back.
                tracing::warn!(%node, %domain, error = %e, "domain flows not synced on this node");
                if members_here {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
