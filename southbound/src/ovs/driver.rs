//! The driver: `Driver` for Open vSwitch (deltas wire and unwire; a full set sweeps, observes,
//! resyncs every node's flows and collects leftover ports).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use meshwire_controller::driver::{
    Desired, Driver, DriverError, DriverEvent, Health, Observation, Report, Scope, Update,
};
use meshwire_models::{Connection, ForwarderKind, Topology};
use serde_json::{json, Value};

use super::flows::resolve;
use super::plan::FlowTemplate;
use super::*;
use crate::openflow::channel::Switch;

/// How long flows wait for vswitchd to number the ports they use.
const PORT_NUMBER_WAIT: Duration = Duration::from_secs(5);

impl OvsDriver {
    /// Resolves templates, waiting (briefly) for vswitchd to number new ports.
    pub(super) async fn resolve_all(
        &self,
        node: &str,
        templates: &[FlowTemplate],
    ) -> Result<Vec<FlowSpec>, DriverError> {
        let attempt = || -> Result<Vec<FlowSpec>, String> {
            let (numbers, _) = self.read_ports(node).map_err(|e| e.reason)?;
            templates.iter().map(|t| resolve(t, &numbers)).collect()
        };
        // vswitchd numbers a new port a moment after the transaction that added it: look again
        // at each update of the node's replica, not on a timer.
        let session = self.session(node)?;
        session
            .wait_until(PORT_NUMBER_WAIT, |_| attempt().is_ok())
            .await;
        attempt().map_err(|e| self.err(format!("node {node}"), e))
    }

    /// [`sync_flows`] on a node's switch, counting what changed.
    pub(super) async fn sync_flows(
        &self,
        node: &str,
        sw: &Switch,
        desired: Vec<FlowSpec>,
        may_delete: &(dyn Fn(u64) -> bool + Sync),
        cookie: u64,
        mask: u64,
    ) -> Result<SyncStats, DriverError> {
        let stats = sync_flows(sw, desired, may_delete, cookie, mask)
            .await
            .map_err(|e| self.err(format!("node {node}"), e))?;
        if stats.changed() > 0 {
            let mut t = lock(&self.inner.stats);
            t.added += stats.added as u64;
            t.modified += stats.modified as u64;
            t.deleted += stats.deleted as u64;
            t.bundles += 1;
            tracing::info!(%node, added = stats.added, modified = stats.modified, deleted = stats.deleted, unchanged = stats.unchanged, "flows synced in one bundle");
        }
        Ok(stats)
    }

    pub(super) fn plan(&self, c: &Connection) -> Result<plan::Plan, DriverError> {
        let t = lock(&self.inner.topology);
        plan::plan(c, &TopoUplinks(&t)).map_err(|r| self.err(format!("connection {}", c.id), r))
    }
    /// Every desired connection (snapshot), for full node syncs.
    pub(super) fn desired_snapshot(&self) -> Vec<Connection> {
        self.inner.ledger.snapshot()
    }

    /// The full flow set of `node` (infra and every desired connection whose ports are numbered),
    /// applied as one bundle. Connections whose ports are not ready keep whatever they have.
    pub async fn resync_node(&self, node: &str) -> Result<SyncStats, DriverError> {
        let sw = self.ensure_node(node).await?;
        self.db(node).await?;
        let l = self.node_lock(node);
        let _g = l.lock().await;
        let info = self.node_info(node)?;
        let (numbers, _) = self.read_ports(node)?;
        let mut desired: Vec<FlowSpec> = Vec::new();
        for t in plan::infra_flows(node, &info.uplink_nets) {
            desired.push(resolve(&t, &numbers).map_err(|e| self.err(format!("node {node}"), e))?);
        }
        let mut keep: HashSet<u64> = HashSet::new();
        for (domain, templates) in self.domain_templates(node) {
            match templates
                .iter()
                .map(|t| resolve(t, &numbers))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => desired.extend(f),
                Err(e) => {
                    tracing::debug!(%node, %domain, error = %e, "domain ports not ready; its flows stay as they are");
                    keep.insert(plan::domain_cookie(&domain));
                }
            }
        }
        for c in self.desired_snapshot() {
            let Ok(p) = self.plan(&c) else { continue };
            let mine: Vec<&FlowTemplate> = p.flows.iter().filter(|f| f.node == node).collect();
            match mine
                .iter()
                .map(|t| resolve(t, &numbers))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => desired.extend(f),
                Err(_) => {
                    keep.insert(p.cookie);
                }
            }
        }
        let known_all = self.inner.ledger.known();
        let may_delete = |c: u64| (known_all || c == plan::INFRA_COOKIE) && !keep.contains(&c);
        self.sync_flows(
            node,
            &sw,
            desired,
            &may_delete,
            plan::COOKIE_TAG,
            plan::COOKIE_TAG_MASK,
        )
        .await
    }
}

impl OvsDriver {
    /// A delta for the node-local hands.
    async fn legs(
        &self,
        version: u64,
        upsert: &[Connection],
        remove: &[Connection],
    ) -> Result<Report, DriverError> {
        self.inner
            .legs
            .converge(&Desired {
                scope: Scope::Forwarder(ForwarderKind::Ovs),
                version,
                update: Update::Delta {
                    upsert: upsert.into(),
                    remove: remove.into(),
                },
            })
            .await
    }

    async fn apply(&self, c: &Connection, desired_version: u64) -> Result<(), DriverError> {
        let p = self.plan(c)?;
        if let Some(m) = plan::domain_member(c) {
            let mut domains: Vec<String> = self
                .desired_snapshot()
                .iter()
                .filter_map(plan::domain_member)
                .map(|m| m.domain)
                .collect();
            domains.push(m.domain.clone());
            if let Some((_, other)) = plan::colliding_domains(domains.iter().map(String::as_str))
                .into_iter()
                .find(|(d, _)| *d == m.domain)
            {
                return Err(self.err(
                    format!("connection {}", c.id),
                    format!(
                        "bridge domain {} would share VNI {:#x} with domain {other}; rename one of them",
                        m.domain,
                        plan::domain_vni(&m.domain)
                    ),
                ));
            }
        }
        for node in p.nodes() {
            self.ensure_node(&node).await?;
        }
        // The node's hands wire the legs (and the underlay on the bridge); a bridge port they
        // had to create anew is opened again by vswitchd.
        let created = self
            .legs(desired_version, std::slice::from_ref(c), &[])
            .await?
            .created;
        let mut recreated: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for leg in &p.legs {
            if created.contains(&leg.bridge_port.ifname) {
                recreated
                    .entry(leg.node.clone())
                    .or_default()
                    .push(leg.bridge_port.ifname.clone());
            }
        }
        for node in p.nodes() {
            let db = self.db(&node).await?;
            let sw = self.ensure_node(&node).await?;
            let l = self.node_lock(&node);
            let _g = l.lock().await;
            let mut want: Vec<(String, Value, Option<&str>)> = p
                .legs
                .iter()
                .filter(|leg| leg.node == node)
                .map(|leg| {
                    (
                        leg.bridge_port.ifname.clone(),
                        json!({}),
                        Some(c.id.as_str()),
                    )
                })
                .collect();
            for (n, t) in &p.tunnels {
                if *n == node {
                    want.push((t.name.clone(), Self::tunnel_row(t), None));
                }
            }
            let recreate = recreated.get(&node).cloned().unwrap_or_default();
            self.ensure_ports(&node, &db, &want, &recreate).await?;
            let templates: Vec<FlowTemplate> =
                p.flows.iter().filter(|f| f.node == node).cloned().collect();
            let flows = self.resolve_all(&node, &templates).await?;
            let cookie = p.cookie;
            self.sync_flows(&node, &sw, flows, &|k| k == cookie, cookie, u64::MAX)
                .await?;
        }
        if let Some(m) = plan::domain_member(c) {
            self.sync_domain(&m.domain).await?;
        }
        Ok(())
    }

    async fn remove(&self, c: &Connection, version: u64) -> Result<(), DriverError> {
        let Ok(p) = self.plan(c) else {
            return Ok(());
        };
        for node in p.nodes() {
            let (Ok(db), Ok(sw)) = (self.db(&node).await, self.ensure_node(&node).await) else {
                // The node is unreachable: its leftovers go at its next resync.
                continue;
            };
            let l = self.node_lock(&node);
            let _g = l.lock().await;
            let cookie = p.cookie;
            self.sync_flows(&node, &sw, vec![], &|k| k == cookie, cookie, u64::MAX)
                .await?;
            let names: Vec<String> = p
                .legs
                .iter()
                .filter(|leg| leg.node == node)
                .map(|leg| leg.bridge_port.ifname.clone())
                .collect();
            self.remove_ports(&node, &db, &names).await?;
        }
        if let Some(m) = plan::domain_member(c) {
            self.sync_domain(&m.domain).await?;
        }
        self.legs(version, &[], std::slice::from_ref(c)).await?;
        Ok(())
    }

    /// What it sees of each desired connection; then every reachable node's flows resynced and
    /// its leftover ports collected.
    async fn observe(&self, desired: &[Connection]) -> Result<Observation, DriverError> {
        let mut obs = Observation::default();
        let mut nodes_down: HashMap<String, String> = HashMap::new();
        let mut involved: Vec<String> = Vec::new();
        let mut plans = Vec::new();
        for c in desired {
            match self.plan(c) {
                Ok(p) => {
                    involved.extend(p.nodes());
                    plans.push((c, p));
                }
                Err(e) => {
                    obs.connections.insert(
                        c.id.clone(),
                        Health::Missing {
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
        involved.sort();
        involved.dedup();
        let mut ports: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for n in &involved {
            let r = async {
                self.ensure_node_within(n, Duration::from_millis(200))
                    .await?;
                self.db(n).await?;
                self.read_ports(n)
            }
            .await;
            match r {
                Ok((numbers, _)) => {
                    ports.insert(n.clone(), numbers);
                }
                Err(e) => {
                    nodes_down.insert(n.clone(), e.to_string());
                }
            }
        }
        // What the node's hands see of the legs (a namespace gone, an interface missing) comes
        // from the legs driver; here: is each leg's port on the bridge.
        for (c, p) in &plans {
            let mut health = p
                .nodes()
                .into_iter()
                .find(|n| nodes_down.contains_key(n))
                .map(|n| Health::Missing {
                    reason: format!("node {n}: {}", nodes_down[&n]),
                });
            if health.is_none() {
                for leg in &p.legs {
                    let numbered = ports
                        .get(&leg.node)
                        .is_some_and(|m| m.contains_key(&leg.bridge_port.ifname));
                    if !numbered {
                        health = Some(Health::Missing {
                            reason: format!(
                                "{}: leg {}/{} ⇄ {} is not on the bridge",
                                leg.node,
                                leg.workload.netns.as_deref().unwrap_or("(host)"),
                                leg.workload.ifname,
                                leg.bridge_port.ifname,
                            ),
                        });
                        break;
                    }
                }
            }
            if let Some(h) = health {
                obs.connections.insert(c.id.clone(), h);
            }
        }
        // Flows: one atomic diff per reachable node; then ports nobody wants.
        // Nodes no desired connection touches are resynced too (when their switch is here), so
        // what a removal could not reach on them goes once they are back.
        let idle: Vec<String> = {
            let t = lock(&self.inner.topology);
            let sw = lock(&self.inner.switches);
            t.nodes
                .values()
                .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
                .filter(|n| !involved.contains(&n.name))
                .filter(|n| sw.contains_key(&plan::datapath_id(&n.name)))
                .map(|n| n.name.clone())
                .collect()
        };
        for n in involved
            .iter()
            .filter(|n| !nodes_down.contains_key(*n))
            .chain(idle.iter())
        {
            if let Err(e) = self.resync_node(n).await {
                tracing::warn!(node = %n, error = %e, "resync failed");
            }
            if let Err(e) = self.collect_orphans(n).await {
                tracing::warn!(node = %n, error = %e, "removing leftover ports failed");
            }
        }
        Ok(obs)
    }
}

#[async_trait]
impl Driver for OvsDriver {
    fn name(&self) -> &str {
        "ovs"
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        match &desired.update {
            Update::Delta { upsert, remove } => {
                let _wiring = self
                    .inner
                    .ledger
                    .delta(desired.version, upsert, remove)
                    .await;
                for c in remove.iter() {
                    self.remove(c, desired.version).await?;
                }
                for c in upsert.iter() {
                    self.apply(c, desired.version).await?;
                }
                Ok(Report::at(desired.version))
            }
            Update::Full {
                connections,
                shared,
            } => {
                let (_held, mine) = self.inner.ledger.full(desired.version, connections).await;
                let mut observation = self.observe(&mine).await?;
                // Then the node's hands: they sweep leftover legs (ours, of no connection here
                // or in another data plane), put the underlay back on each bridge and say what
                // they see of the legs; the graver view of a connection wins.
                let legs = self
                    .inner
                    .legs
                    .converge(&Desired {
                        scope: Scope::Forwarder(ForwarderKind::Ovs),
                        version: desired.version,
                        update: Update::Full {
                            connections: mine.as_slice().into(),
                            shared: shared.clone(),
                        },
                    })
                    .await?;
                observation.merge(legs.observation);
                Ok(Report {
                    version: desired.version,
                    observation,
                    swept: legs.swept,
                    created: Vec::new(),
                })
            }
        }
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<DriverEvent>> {
        Some(self.inner.events.subscribe())
    }

    /// Takes the topology at once and bootstraps its ovs nodes in the background (a node whose
    /// switch is slow to connect must not hold up the controller or the request that changed
    /// the topology); deltas and full sets wait for a node they need.
    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        *lock(&self.inner.topology) = t.clone();
        self.inner.legs.topology(t).await?;
        let nodes: Vec<String> = t
            .nodes
            .values()
            .filter(|n| n.forwarder == ForwarderKind::Ovs && n.ovsdb.is_some())
            .map(|n| n.name.clone())
            .collect();
        for n in nodes {
            // Uplinks may have changed: bootstrap again.
            lock(&self.inner.bootstrapped).remove(&n);
            let d = self.clone();
            tokio::spawn(async move {
                if let Err(e) = d.ensure_node(&n).await {
                    tracing::warn!(node = %n, error = %e, "node not ready yet; retried when a connection needs it");
                }
            });
        }
        Ok(())
    }
}
