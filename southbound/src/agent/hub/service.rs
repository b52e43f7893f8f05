//! The `NodeAgent` gRPC service the agents attach to: credentials and hello, the stream's
//! replies and events, detach.

// tonic's handlers return `Result<_, tonic::Status>` (176 bytes); the helpers return the same.
#![allow(clippy::result_large_err)]

use super::*;

/// The `NodeAgent` gRPC service.
#[derive(Clone)]
pub struct AgentService {
    pub(super) inner: Arc<Inner>,
}

type ToAgentStream = Pin<Box<dyn Stream<Item = Result<pb::ToAgent, Status>> + Send + 'static>>;

/// How long an agent has to say hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl pb::node_agent_server::NodeAgent for AgentService {
    type AttachStream = ToAgentStream;

    async fn attach(
        &self,
        req: Request<Streaming<pb::FromAgent>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "a local peer".into());
        let bound = self
            .inner
            .config
            .credentials
            .node_of(presented.as_deref())
            .inspect_err(|e| tracing::warn!(%peer, error = %e.message(), "agent refused"))?
            .map(str::to_string);
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::FromAgent {
                msg: Some(pb::from_agent::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of an agent's stream is its hello",
                ))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no hello within {} s",
                    HELLO_TIMEOUT.as_secs()
                )))
            }
        };
        let node = hello.node.clone();
        meshwire_models::validate::check_name(&node)
            .map_err(|e| Status::invalid_argument(format!("hello.node {node:?}: {e}")))?;
        if let Some(b) = &bound {
            if *b != node {
                tracing::warn!(%peer, token_node = %b, claimed = %node, "agent refused: its token is another node's");
                return Err(Status::permission_denied(format!(
                    "this token is node {b}'s agent credential; it may not attach as node {node}"
                )));
            }
        }
        if hello.protocol != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "agent protocol {} is not spoken here (this controller speaks {PROTOCOL}); run the same meshwire version on both",
                hello.protocol
            )));
        }
        let topology = self
            .inner
            .topology
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Kernel nodes and Open vSwitch nodes alike (of those, the agent wires the legs).
        match topology.nodes.get(&node) {
            Some(_) => {}
            None => {
                return Err(Status::failed_precondition(format!(
                    "node {node} is not in the topology (apply a meshwire.io/v1 Node named {node:?}); retrying is right"
                )))
            }
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
            let old = links.insert(
                node.clone(),
                Link {
                    generation,
                    tx: Some(tx.clone()),
                    pending: Pending::new(),
                    away_since: None,
                    instance: hello.instance,
                },
            );
            old.map(|o| (o.instance, o.tx.is_some(), o.pending))
        };
        let restarted = match replaced {
            Some((instance, live, pending)) => {
                // The old stream's callers learn it is gone (their senders drop here).
                drop(pending);
                if live {
                    tracing::info!(%node, "agent attached again; its earlier stream is replaced");
                }
                instance != hello.instance
            }
            None => false,
        };
        let welcome = pb::ToAgent {
            msg: Some(pb::to_agent::Msg::Welcome(pb::Welcome {
                protocol: PROTOCOL,
                lease_ms: self.inner.config.lease.as_millis() as u64,
            })),
        };
        let topo = topology_message(&topology).map_err(|e| Status::internal(e.to_string()))?;
        // The channel is new and empty: both fit.
        let _ = tx.try_send(Ok(welcome));
        let _ = tx.try_send(Ok(topo));
        tracing::info!(%node, %peer, agent = %hello.agent_version, restarted, "agent attached");
        self.inner.emit(
            &node,
            Happened::NodeAttached { node: node.clone() },
            format!("the agent of node {node} attached from {peer}"),
        );
        self.inner.attached.notify_waiters();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            read_agent(&inner, &node, generation, &mut inbound).await;
            detach(inner, node, generation);
        });
        Ok(Response::new(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        ))))
    }
}

/// Reads an attached agent's replies and events until its stream ends.
async fn read_agent(
    inner: &Inner,
    node: &str,
    generation: u64,
    inbound: &mut Streaming<pb::FromAgent>,
) {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(%node, "agent closed its stream");
                return;
            }
            Err(e) => {
                tracing::warn!(%node, error = %e.message(), "agent stream failed");
                return;
            }
        };
        match msg.msg {
            Some(pb::from_agent::Msg::Reply(r)) => {
                let answer = if !r.error.is_empty() {
                    Err(
                        serde_json::from_slice::<DriverError>(&r.error).unwrap_or_else(|e| {
                            DriverError::new(
                                "agents",
                                format!("node {node}"),
                                format!("unreadable error from the agent: {e}"),
                            )
                        }),
                    )
                } else {
                    serde_json::from_slice::<Report>(&r.report).map_err(|e| {
                        DriverError::new(
                            "agents",
                            format!("node {node}"),
                            format!("unreadable report from the agent: {e}"),
                        )
                    })
                };
                let waiting = {
                    let mut links = inner.links.lock().unwrap_or_else(|p| p.into_inner());
                    links
                        .get_mut(node)
                        .filter(|l| l.generation == generation)
                        .and_then(|l| l.pending.remove(&r.seq))
                };
                if let Some(w) = waiting {
                    let _ = w.send(answer);
                }
            }
            Some(pb::from_agent::Msg::Event(e)) => {
                match serde_json::from_slice::<DriverEvent>(&e.event) {
                    Ok(mut ev) => {
                        // An agent speaks for its own node only.
                        ev.scope = Scope::Node(node.to_string());
                        let _ = inner.events.send(ev);
                    }
                    Err(err) => {
                        tracing::warn!(%node, error = %err, "unreadable event from the agent")
                    }
                }
            }
            Some(pb::from_agent::Msg::Hello(_)) | None => {
                tracing::warn!(%node, "agent sent a second hello or an empty message; ignored");
            }
        }
    }
}

/// The stream of `generation` ended: the node is away from now, and lost when its lease ends
/// without a new attach.
fn detach(inner: Arc<Inner>, node: String, generation: u64) {
    {
        let mut links = inner.links.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = links.get_mut(&node).filter(|l| l.generation == generation) else {
            return;
        };
        l.tx = None;
        l.pending.clear();
        l.away_since = Some(tokio::time::Instant::now());
    }
    let lease = inner.config.lease;
    inner.emit(
        &node,
        Happened::NodeDetached { node: node.clone() },
        format!(
            "the agent of node {node} is away; its data plane keeps forwarding, and its endpoints stay for the lease ({} s)",
            lease.as_secs()
        ),
    );
    tokio::spawn(async move {
        tokio::time::sleep(lease).await;
        let still_away = inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .is_some_and(|l| l.generation == generation && l.tx.is_none());
        if still_away {
            tracing::warn!(%node, lease = ?lease, "agent lease ended: its endpoints are withdrawn");
            inner.emit(
                &node,
                Happened::NodeLost { node: node.clone() },
                format!(
                    "the agent of node {node} has been away longer than its lease ({} s): the endpoints on it heal elsewhere",
                    lease.as_secs()
                ),
            );
        }
    });
}
