//! The controller's side of the node agents: the driver of kernel nodes, and the service the
//! agents attach to.
//!
//! Each agent holds one stream. What the controller wants of a node goes down it as a
//! `Converge` (the node's part of a delta or full set, with the controller's version) and comes
//! back as a `Reply` with the same sequence number; the agent's events come up it at any time.
//!
//! - A delta is split by node: a connection's client side goes to the client's node, its
//!   endpoint side to the endpoint's (the agent's [`crate::KernelDriver::for_node`] wires only
//!   what lives there). Wiring onto a node whose agent is not attached fails as unreachable;
//!   a removal there is left to the agent's next full set, which sweeps it.
//! - A full set goes to every attached agent at once. A node whose agent is away keeps its
//!   connections as they are (no verdict) until its **lease** ends; after that the endpoints on
//!   it are reported lost, so their connections heal onto other hosts.
//! - Attach, detach and lease expiry are events ([`Happened::NodeAttached`], ...): an attach
//!   makes the controller send the node its full set at once.

// tonic's handlers return `Result<_, tonic::Status>` (176 bytes); the helpers return the same.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use meshwire_controller::driver::{Happened, PEER_OBSERVE_TIMEOUT};
use meshwire_controller::{
    Desired, Driver, DriverError, DriverEvent, Health, Report, Scope, Update,
};
use meshwire_models::{Connection, ForwarderKind, Topology};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::pb;
use super::{PROTOCOL, REPLY_TIMEOUT, STREAM_BUFFER};
use crate::kernel::wiring::endpoint_vertex;

mod service;
pub use service::AgentService;

/// Who may attach as which node.
#[derive(Clone)]
pub enum Credentials {
    /// Any agent may attach as any node (loopback only: the binary refuses it elsewhere).
    Open,
    /// Per node, its agent's secret.
    Tokens(BTreeMap<String, String>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Open => write!(f, "Open"),
            Credentials::Tokens(t) => write!(f, "Tokens({} nodes)", t.len()),
        }
    }
}

impl Credentials {
    /// The node the presented bearer token speaks for (`Ok(None)`: any, the hub is open).
    pub fn node_of(&self, presented: Option<&str>) -> Result<Option<&str>, Status> {
        let Credentials::Tokens(t) = self else {
            return Ok(None);
        };
        let p = presented.ok_or_else(|| {
            Status::unauthenticated(
                "a node token is required (metadata authorization: Bearer <token>)",
            )
        })?;
        t.iter()
            .find(|(_, s)| meshwire_models::secret::constant_time_eq(s.as_bytes(), p.as_bytes()))
            .map(|(n, _)| Some(n.as_str()))
            .ok_or_else(|| Status::unauthenticated("unknown node token"))
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a node's endpoints outlive its agent's stream.
    pub lease: Duration,
    pub credentials: Credentials,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Report, DriverError>>>;

/// One node's agent, attached or not.
struct Link {
    /// Increases with every attach: a stream that ended only detaches its own attach.
    generation: u64,
    /// `None` while detached.
    tx: Option<mpsc::Sender<Result<pb::ToAgent, Status>>>,
    pending: Pending,
    /// When the stream ended (or the hub started, for a node never attached).
    away_since: Option<tokio::time::Instant>,
    instance: u64,
}

struct Inner {
    links: Mutex<HashMap<String, Link>>,
    topology: Mutex<Topology>,
    events: broadcast::Sender<DriverEvent>,
    seq: AtomicU64,
    generation: AtomicU64,
    config: HubConfig,
    started: tokio::time::Instant,
    /// Woken at every attach.
    attached: tokio::sync::Notify,
}

/// The driver of nodes whose data plane runs in node agents: kernel nodes, and the node-local
/// legs of Open vSwitch nodes ([`AgentHub::plane`]).
#[derive(Clone)]
pub struct AgentHub {
    inner: Arc<Inner>,
    /// The nodes whose full sets this handle sends: those of this forwarder kind.
    plane: ForwarderKind,
}

/// How a node's agent stands, for the driver.
enum Presence {
    Attached(mpsc::Sender<Result<pb::ToAgent, Status>>),
    /// Away, within its lease.
    Away,
    /// Away past its lease, for this long.
    Lost(Duration),
}

impl AgentHub {
    pub fn new(config: HubConfig) -> AgentHub {
        let (events, _) = broadcast::channel(meshwire_controller::driver::EVENT_BUFFER);
        AgentHub {
            inner: Arc::new(Inner {
                links: Mutex::default(),
                topology: Mutex::default(),
                events,
                seq: AtomicU64::new(1),
                generation: AtomicU64::new(1),
                config,
                started: tokio::time::Instant::now(),
                attached: tokio::sync::Notify::new(),
            }),
            plane: ForwarderKind::Kernel,
        }
    }

    /// The same agents as the driver of another forwarder's nodes: `Ovs` gives the workload
    /// legs of Open vSwitch nodes (and their underlay on the bridge) to those nodes' agents,
    /// for the Open vSwitch driver. Each handle's full sets cover its own nodes only; events
    /// reach the subscribers of the first.
    pub fn plane(&self, kind: ForwarderKind) -> AgentHub {
        AgentHub {
            inner: self.inner.clone(),
            plane: kind,
        }
    }

    /// The gRPC service the agents attach to.
    pub fn service(&self) -> pb::node_agent_server::NodeAgentServer<AgentService> {
        pb::node_agent_server::NodeAgentServer::new(AgentService {
            inner: self.inner.clone(),
        })
        .max_decoding_message_size(super::MAX_MESSAGE)
        .max_encoding_message_size(super::MAX_MESSAGE)
    }

    /// Who may attach as which node (also what the NSM services beside the hub authenticate
    /// node agents with).
    pub fn credentials(&self) -> &Credentials {
        &self.inner.config.credentials
    }

    /// The nodes with an agent attached now.
    pub fn attached(&self) -> Vec<String> {
        let links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = links
            .iter()
            .filter(|(_, l)| l.tx.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

impl Inner {
    fn presence(&self, node: &str) -> Presence {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let since = match links.get(node) {
            Some(Link { tx: Some(tx), .. }) => return Presence::Attached(tx.clone()),
            Some(l) => l.away_since.unwrap_or(self.started),
            None => self.started,
        };
        let away = since.elapsed();
        if away > self.config.lease {
            Presence::Lost(away)
        } else {
            Presence::Away
        }
    }

    /// [`Inner::presence`]; but for wiring, in the first lease after this hub started (a
    /// controller restarted or took over as leader), a node whose agent is not back yet is
    /// waited for until that lease ends: its agent is on its way.
    async fn presence_soon(&self, node: &str, wiring: bool) -> Presence {
        loop {
            let attached = self.attached.notified();
            let p = self.presence(node);
            let grace = self.config.lease.saturating_sub(self.started.elapsed());
            if !wiring || !matches!(p, Presence::Away) || grace.is_zero() {
                return p;
            }
            if tokio::time::timeout(grace, attached).await.is_err() {
                return self.presence(node);
            }
        }
    }

    fn emit(&self, node: &str, happened: Happened, detail: String) {
        let _ = self.events.send(DriverEvent {
            scope: Scope::Node(node.to_string()),
            happened,
            detail,
        });
    }

    /// Sends `desired` to `node`'s agent and waits for its reply.
    async fn call(
        &self,
        node: &str,
        tx: mpsc::Sender<Result<pb::ToAgent, Status>>,
        desired: &Desired<'_>,
        timeout: Duration,
    ) -> Result<Report, DriverError> {
        let target = format!("node {node}");
        let unreachable = |why: String| {
            DriverError::new("agents", target.clone(), why).with(
                meshwire_controller::driver::Failure::Unreachable {
                    peer: format!("the agent of node {node}"),
                },
            )
        };
        let body = serde_json::to_vec(desired)
            .map_err(|e| DriverError::new("agents", target.clone(), e))?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            match links.get_mut(node) {
                Some(l) if l.tx.is_some() => {
                    l.pending.insert(seq, done);
                }
                _ => return Err(unreachable("its agent is not attached".into())),
            }
        }
        let msg = pb::ToAgent {
            msg: Some(pb::to_agent::Msg::Converge(pb::Converge {
                seq,
                desired: body,
            })),
        };
        let forget = || {
            if let Some(l) = self
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(node)
            {
                l.pending.remove(&seq);
            }
        };
        match tokio::time::timeout(timeout, tx.send(Ok(msg))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(unreachable("its stream closed".into()));
            }
            Err(_) => {
                forget();
                return Err(unreachable(format!(
                    "its stream is full ({STREAM_BUFFER} messages waiting for {} s)",
                    timeout.as_secs()
                )));
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unreachable("its stream ended before it answered".into())),
            Err(_) => {
                forget();
                Err(unreachable(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    /// The kernel nodes `c` has a side on.
    fn nodes_of(&self, c: &Connection) -> Vec<String> {
        let t = self.topology.lock().unwrap_or_else(|p| p.into_inner());
        sides(&t, c).map(str::to_string).collect()
    }

    /// `connections` grouped by the kernel nodes each has a side on.
    fn by_node(&self, connections: &[Connection]) -> HashMap<String, Vec<Connection>> {
        let t = self.topology.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: HashMap<String, Vec<Connection>> = HashMap::new();
        for c in connections {
            for n in sides(&t, c) {
                out.entry(n.to_string()).or_default().push(c.clone());
            }
        }
        out
    }

    fn nodes_of_kind(&self, kind: ForwarderKind) -> Vec<String> {
        self.topology
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .iter()
            .filter(|(_, n)| n.forwarder == kind)
            .map(|(name, _)| name.clone())
            .collect()
    }

    async fn delta(
        &self,
        version: u64,
        upsert: &[Connection],
        remove: &[Connection],
    ) -> Result<Report, DriverError> {
        type Parts = BTreeMap<String, (Vec<Connection>, Vec<Connection>)>;
        let mut parts: Parts = BTreeMap::new();
        for c in upsert {
            for n in self.nodes_of(c) {
                parts.entry(n).or_default().0.push(c.clone());
            }
        }
        for c in remove {
            for n in self.nodes_of(c) {
                parts.entry(n).or_default().1.push(c.clone());
            }
        }
        let calls = parts.into_iter().map(|(node, (up, rm))| async move {
            let tx = match self.presence_soon(&node, !up.is_empty()).await {
                Presence::Attached(tx) => tx,
                _ if up.is_empty() => {
                    tracing::info!(%node, removals = rm.len(), "agent away: its next full set sweeps what was removed");
                    return (node, up, Ok(Report::at(version)));
                }
                _ => {
                    let e = DriverError::new(
                        "agents",
                        format!("node {node}"),
                        "its agent is not attached (is `meshwire node` running there, and can it reach the controller?)",
                    )
                    .with(meshwire_controller::driver::Failure::Unreachable {
                        peer: format!("the agent of node {node}"),
                    });
                    return (node, up, Err(e));
                }
            };
            let want = Desired {
                scope: Scope::Node(node.clone()),
                version,
                update: Update::Delta {
                    upsert: up.as_slice().into(),
                    remove: rm.into(),
                },
            };
            let r = self.call(&node, tx, &want, REPLY_TIMEOUT).await;
            (node, up, r)
        });
        let results = futures::future::join_all(calls).await;
        let mut first = None;
        for (_, _, r) in &results {
            if let Err(e) = r {
                first.get_or_insert_with(|| e.clone());
            }
        }
        let Some(e) = first else {
            return Ok(Report::at(version));
        };
        // Undo what the other nodes wired for this delta: a connection is wired on all its
        // nodes or on none.
        for (node, up, r) in results {
            if r.is_err() || up.is_empty() {
                continue;
            }
            if let Presence::Attached(tx) = self.presence(&node) {
                let undo = Desired {
                    scope: Scope::Node(node.clone()),
                    version,
                    update: Update::Delta {
                        upsert: Vec::new().into(),
                        remove: up.into(),
                    },
                };
                if let Err(u) = self.call(&node, tx, &undo, REPLY_TIMEOUT).await {
                    tracing::warn!(%node, error = %u, "undoing a half-wired delta failed; the next full set sweeps it");
                }
            }
        }
        Err(e)
    }

    async fn full(
        &self,
        plane: ForwarderKind,
        version: u64,
        connections: &[Connection],
        shared: &[Connection],
    ) -> Result<Report, DriverError> {
        let nodes = self.nodes_of_kind(plane);
        let mut report = Report::at(version);
        let mut calls = Vec::new();
        // Each connection is looked at once, whatever the number of nodes.
        let mut mine = self.by_node(connections);
        let mut theirs = self.by_node(shared);
        for node in nodes {
            let mine = mine.remove(&node).unwrap_or_default();
            match self.presence(&node) {
                Presence::Attached(tx) => {
                    let theirs = theirs.remove(&node).unwrap_or_default();
                    calls.push(async move {
                        let want = Desired {
                            scope: Scope::Node(node.clone()),
                            version,
                            update: Update::Full {
                                connections: mine.into(),
                                shared: theirs.into(),
                            },
                        };
                        let r = self.call(&node, tx, &want, PEER_OBSERVE_TIMEOUT).await;
                        (node, r)
                    });
                }
                Presence::Away => {}
                Presence::Lost(away) => {
                    for c in mine.iter().filter(|c| endpoint_vertex(c) == node) {
                        report.observation.connections.insert(
                            c.id.clone(),
                            Health::EndpointLost {
                                reason: format!(
                                    "node {node}'s agent has been away for {} s (lease {} s)",
                                    away.as_secs(),
                                    self.config.lease.as_secs()
                                ),
                            },
                        );
                    }
                }
            }
        }
        for (node, r) in futures::future::join_all(calls).await {
            match r {
                Ok(seen) => {
                    report.swept += seen.swept;
                    report.observation.merge(seen.observation);
                }
                // One agent's failure must not hide the others' view; its connections keep
                // their state until it answers.
                Err(e) => tracing::warn!(%node, error = %e, "agent full set failed"),
            }
        }
        Ok(report)
    }
}

/// The nodes of topology `t` that `c` has a side on: its client's and its endpoint's (once
/// when they are the same); a device has none.
fn sides<'c>(t: &Topology, c: &'c Connection) -> impl Iterator<Item = &'c str> {
    let (client, endpoint) = (c.client.node.as_str(), endpoint_vertex(c));
    let client = t.nodes.contains_key(client).then_some(client);
    let endpoint =
        (endpoint != c.client.node && t.nodes.contains_key(endpoint)).then_some(endpoint);
    client.into_iter().chain(endpoint)
}

#[async_trait]
impl Driver for AgentHub {
    fn name(&self) -> &str {
        "agents"
    }

    async fn converge(&self, desired: &Desired<'_>) -> Result<Report, DriverError> {
        match &desired.update {
            Update::Delta { upsert, remove } => {
                self.inner.delta(desired.version, upsert, remove).await
            }
            Update::Full {
                connections,
                shared,
            } => {
                self.inner
                    .full(self.plane, desired.version, connections, shared)
                    .await
            }
        }
    }

    async fn topology(&self, t: &Topology) -> Result<(), DriverError> {
        {
            let mut have = self
                .inner
                .topology
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Every plane hands the same topology: the agents hear it once.
            if *have == *t {
                return Ok(());
            }
            *have = t.clone();
        }
        let msg = topology_message(t)?;
        let txs: Vec<_> = {
            let links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
            links.values().filter_map(|l| l.tx.clone()).collect()
        };
        for tx in txs {
            // A full stream is a stuck agent: its next attach brings the topology anyway.
            let _ = tx.try_send(Ok(msg.clone()));
        }
        Ok(())
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<DriverEvent>> {
        Some(self.inner.events.subscribe())
    }
}

fn topology_message(t: &Topology) -> Result<pb::ToAgent, DriverError> {
    let body = serde_json::to_vec(t).map_err(|e| DriverError::new("agents", "topology", e))?;
    Ok(pb::ToAgent {
        msg: Some(pb::to_agent::Msg::Topology(pb::TopologyUpdate {
            topology: body,
        })),
    })
}
