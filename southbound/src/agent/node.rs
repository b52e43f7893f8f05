//! The agent's side: `meshwire node` on each host.
//!
//! It attaches to a controller (the next one in its list when one does not answer), applies
//! every `Converge` it receives to its node-local driver in order, answers each with a report
//! or a typed error, and passes the driver's events up. When the stream ends it keeps the data
//! plane exactly as it is and attaches again with backoff; the controller's full set after the
//! attach resyncs by diff, so nothing already right is touched (a restarted agent adopts what
//! its predecessor built: the interfaces carry our mark and match the desired set).

use std::sync::Arc;
use std::time::Duration;

use meshwire_controller::backoff::Backoff;
use meshwire_controller::{Desired, Driver, DriverError, DriverEvent};
use meshwire_models::Topology;
use tokio::sync::{broadcast, mpsc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::pb;
use super::{PROTOCOL, STREAM_BUFFER};

/// How an agent reaches its controller.
#[derive(Debug, Clone)]
pub struct NodeAgentOptions {
    /// The node this agent wires.
    pub node: String,
    /// Controllers' agent addresses (`http://HOST:PORT` or `https://...`), tried in turn.
    pub controllers: Vec<String>,
    /// This node's secret (`None`: the controller is open, loopback only).
    pub token: Option<String>,
    /// Trust this PEM CA for `https` controllers (else the system's roots).
    pub ca: Option<Vec<u8>>,
    /// How long to wait for a controller to accept a connection.
    pub connect_timeout: Duration,
    /// The node's SR-IOV pools as they change: reported at every attach and every change.
    pub sriov: Option<tokio::sync::watch::Receiver<meshwire_models::sriov::NodeSriov>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("controller {url}: {reason}")]
    Controller {
        url: String,
        reason: String,
        /// Whether attaching again may work (a refused credential will not).
        retryable: bool,
    },
}

impl NodeError {
    pub fn retryable(&self) -> bool {
        match self {
            NodeError::Controller { retryable, .. } => *retryable,
        }
    }
}

/// Runs the agent until the process ends: attach, serve, and attach again when the stream
/// ends. `on_attached(url)` is called at every attach. Returns only when a controller refuses
/// the agent for good (its credential, its node name, its protocol).
pub async fn run(
    opts: NodeAgentOptions,
    driver: Arc<dyn Driver>,
    on_attached: impl Fn(&str) + Send + Sync,
) -> Result<(), NodeError> {
    if opts.controllers.is_empty() {
        return Err(NodeError::Controller {
            url: String::new(),
            reason: "no controller address given".into(),
            retryable: false,
        });
    }
    let instance: u64 = rand_instance();
    let mut failures = 0u32;
    let mut next = 0usize;
    // Subscribed once: events between two streams wait here (bounded), and the controller's
    // full set after the attach covers any that were lost.
    let mut events = driver.subscribe();
    loop {
        let url = opts.controllers[next % opts.controllers.len()].clone();
        next += 1;
        match session(
            &opts,
            &url,
            instance,
            driver.as_ref(),
            &mut events,
            &on_attached,
        )
        .await
        {
            Ok(()) => {
                failures = 0;
                tracing::warn!(controller = %url, "controller stream ended; the data plane stays as it is; attaching again");
            }
            Err(e) if !e.retryable() => return Err(e),
            // Highly available controllers: the next of the list at once (a standby binds no
            // agent port); one backoff per pass over the whole list.
            Err(e) if !next.is_multiple_of(opts.controllers.len()) => {
                tracing::debug!(error = %e, "cannot attach here; trying the next controller");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = Backoff::RECONNECT.delay(failures, instance);
                tracing::warn!(error = %e, retry_in = ?wait, "cannot attach; the data plane stays as it is");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn rand_instance() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    meshwire_models::document::fnv1a64(format!("{t}/{}", std::process::id()).as_bytes())
}

/// One attach: returns `Ok` when an established stream ended, an error when none was made.
async fn session(
    opts: &NodeAgentOptions,
    url: &str,
    instance: u64,
    driver: &dyn Driver,
    events: &mut Option<broadcast::Receiver<DriverEvent>>,
    on_attached: &(impl Fn(&str) + Send + Sync),
) -> Result<(), NodeError> {
    let fail = |reason: String, retryable: bool| NodeError::Controller {
        url: url.to_string(),
        reason,
        retryable,
    };
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| fail(format!("not a URL: {e}"), false))?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &opts.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| fail(format!("TLS: {e}"), false))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {e}"), true))?;
    let mut client = pb::node_agent_client::NodeAgentClient::new(channel)
        .max_decoding_message_size(super::MAX_MESSAGE)
        .max_encoding_message_size(super::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<pb::FromAgent>(STREAM_BUFFER);
    let hello = pb::FromAgent {
        msg: Some(pb::from_agent::Msg::Hello(pb::Hello {
            node: opts.node.clone(),
            protocol: PROTOCOL,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            mechanisms: vec!["kernel".into(), "vxlan".into()],
            instance,
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| fail("stream closed".into(), true))?;
    let mut req = tonic::Request::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }));
    if let Some(t) = &opts.token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| fail("the token is not valid metadata".into(), false))?;
        req.metadata_mut().insert("authorization", v);
    }
    let mut inbound = client
        .attach(req)
        .await
        .map_err(|s| {
            // A refused credential, a bad name or another protocol will be refused again; a
            // node missing from the topology may be added (FailedPrecondition without
            // "protocol"), and anything else may pass.
            let for_good = match s.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument => true,
                tonic::Code::FailedPrecondition => s.message().contains("protocol"),
                _ => false,
            };
            let retryable = !for_good;
            fail(format!("{:?}: {}", s.code(), s.message()), retryable)
        })?
        .into_inner();
    let mut welcomed = false;
    let mut sriov = opts.sriov.clone();
    // The report again now and then: one lost on the controller's side (a lagging event
    // stream) is not waited for until the next change.
    let mut resend = tokio::time::interval(SRIOV_RESEND);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(s) if !welcomed => return Err(fail(format!("{:?}: {}", s.code(), s.message()), true)),
                    Err(s) => {
                        tracing::warn!(controller = %url, error = %s.message(), "controller stream failed");
                        return Ok(());
                    }
                };
                match msg.msg {
                    Some(pb::to_agent::Msg::Welcome(w)) => {
                        welcomed = true;
                        tracing::info!(controller = %url, node = %opts.node, lease_ms = w.lease_ms, "attached");
                        on_attached(url);
                        // A controller (perhaps a new one) learns the node's pools at once.
                        if let Some(rx) = sriov.as_mut() {
                            let report = rx.borrow_and_update().clone();
                            if tx.send(sriov_event(&opts.node, report)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Some(pb::to_agent::Msg::Topology(t)) => {
                        match serde_json::from_slice::<Topology>(&t.topology) {
                            Ok(t) => {
                                if let Err(e) = driver.topology(&t).await {
                                    tracing::warn!(error = %e, "topology");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "unreadable topology from the controller"),
                        }
                    }
                    Some(pb::to_agent::Msg::Converge(c)) => {
                        let reply = converge(driver, &opts.node, c).await;
                        if tx.send(reply).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => {}
                }
            }
            _ = resend.tick(), if welcomed && sriov.is_some() => {
                let report = sriov.as_ref().map(|r| r.borrow().clone()).unwrap_or_default();
                if tx.send(sriov_event(&opts.node, report)).await.is_err() {
                    return Ok(());
                }
            }
            changed = next_sriov(&mut sriov), if welcomed => {
                let Some(report) = changed else { continue };
                if tx.send(sriov_event(&opts.node, report)).await.is_err() {
                    return Ok(());
                }
            }
            ev = next_event(events) => {
                let Some(ev) = ev else { continue };
                match serde_json::to_vec(&ev) {
                    Ok(event) => {
                        let m = pb::FromAgent { msg: Some(pb::from_agent::Msg::Event(pb::Event { event })) };
                        if tx.send(m).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "event not sent"),
                }
            }
        }
    }
}

/// How often the SR-IOV report is sent again without a change.
const SRIOV_RESEND: Duration = Duration::from_secs(30);

/// The SR-IOV report as an event for the controller.
fn sriov_event(node: &str, sriov: meshwire_models::sriov::NodeSriov) -> pb::FromAgent {
    let ev = DriverEvent {
        scope: meshwire_controller::driver::Scope::Node(node.to_string()),
        detail: format!("{} SR-IOV pool(s)", sriov.pools.len()),
        happened: meshwire_controller::driver::Happened::NodeSriov { sriov },
    };
    pb::FromAgent {
        msg: Some(pb::from_agent::Msg::Event(pb::Event {
            event: serde_json::to_vec(&ev).unwrap_or_default(),
        })),
    }
}

/// The next SR-IOV report; pends forever without one (or once its sender is gone).
async fn next_sriov(
    rx: &mut Option<tokio::sync::watch::Receiver<meshwire_models::sriov::NodeSriov>>,
) -> Option<meshwire_models::sriov::NodeSriov> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return None;
    }
    Some(r.borrow_and_update().clone())
}

/// The driver's next event; pends forever without a stream, and skips a lag (the controller's
/// next full set sees what the lost events said).
async fn next_event(events: &mut Option<broadcast::Receiver<DriverEvent>>) -> Option<DriverEvent> {
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(e) => Some(e),
        Err(broadcast::error::RecvError::Lagged(n)) => {
            tracing::warn!(missed = n, "node events lagged");
            None
        }
        Err(broadcast::error::RecvError::Closed) => {
            *events = None;
            None
        }
    }
}

/// Applies one `Converge` and builds its reply.
async fn converge(driver: &dyn Driver, node: &str, c: pb::Converge) -> pb::FromAgent {
    let result = match serde_json::from_slice::<Desired<'static>>(&c.desired) {
        Ok(d) => {
            let t = std::time::Instant::now();
            let r = driver.converge(&d).await;
            tracing::debug!(version = d.version, full = d.is_full(), took = ?t.elapsed(), ok = r.is_ok(), "converged");
            r
        }
        Err(e) => Err(DriverError::new(
            "node agent",
            format!("node {node}"),
            format!("unreadable desired state from the controller: {e}"),
        )
        .with(meshwire_controller::driver::Failure::Invalid)),
    };
    let (report, error) = match result {
        Ok(r) => (serde_json::to_vec(&r).unwrap_or_default(), Vec::new()),
        Err(e) => (
            Vec::new(),
            serde_json::to_vec(&e).unwrap_or_else(|_| b"{}".to_vec()),
        ),
    };
    pb::FromAgent {
        msg: Some(pb::from_agent::Msg::Reply(pb::Reply {
            seq: c.seq,
            report,
            error,
        })),
    }
}
