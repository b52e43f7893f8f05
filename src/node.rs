//! `meshwire node` (the agent on each host) and the controller's side of the agents: their
//! credentials, their listener.

// The NSM endpoint's resolver and authorizer answer in `tonic::Status` (176 bytes), as tonic
// handlers do.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshwire_southbound::agent::{AgentHub, Credentials, HubConfig, NodeAgentOptions};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// This host's node: a meshwire.io/v1 Node of the topology. The agent wires only what of
    /// each connection lives here (the client's side on the client's node, the endpoint's side
    /// on the endpoint's): on a kernel node veths and VXLAN devices; on an ovs node the veth
    /// legs between workloads and br-int, and the underlay on br-int (the controller keeps
    /// OVSDB and OpenFlow). It may attach only with this node's token.
    #[arg(long, env = "MESHWIRE_NODE")]
    node: String,
    /// The controllers' agent listeners (`http://HOST:PORT`, or `https://` with TLS),
    /// comma-separated; the next is tried when one does not answer.
    #[arg(
        long,
        env = "MESHWIRE_CONTROLLER_AGENTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7602"
    )]
    controller: Vec<String>,
    /// A file holding this node's token (from the controller's --agent-tokens); else the
    /// environment variable MESHWIRE_NODE_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust this PEM CA for an https controller (else the system's roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Where the agent keeps what must outlive it (the namespaces it has wired in, so a
    /// restarted agent still sweeps a leftover there).
    #[arg(
        long,
        env = "MESHWIRE_NODE_STATE",
        default_value = "/var/lib/meshwire/node"
    )]
    state_dir: PathBuf,
    /// How long to wait for a controller to accept a connection.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// The node's NSM endpoint for its workloads (NetworkService, MonitorConnection and both
    /// registries, as upstream's per-node manager serves them): a unix socket; `off` for none.
    #[arg(
        long,
        env = "NSM_SOCKET",
        default_value = "/var/lib/networkservicemesh/nsm.io.sock"
    )]
    nsm_socket: String,
    /// The same NSM endpoint on a TCP address too (off by default; loopback unless you mean it).
    #[arg(long, value_name = "ADDR:PORT")]
    nsm_listen: Option<SocketAddr>,
    /// SR-IOV: this node's PFs and pools (YAML in the shape of upstream's SR-IOV forwarder:
    /// `physicalFunctions: {PCI: {pfKernelDriver, vfKernelDriver, capabilities,
    /// serviceDomains}}`; and/or the SR-IOV network device plugin's `resourceList` selectors).
    /// Each pool is published to the kubelet as a device plugin resource, and the controller
    /// lends its VFs to clients that present one of its tokens. A file that does not exist
    /// means no SR-IOV on this node (logged): one DaemonSet can name a per-node key of a
    /// ConfigMap (`/etc/meshwire/sriov/$(NODE_NAME).yaml`); a file that exists and is wrong stops
    /// the agent.
    #[arg(long, env = "MESHWIRE_SRIOV_CONFIG", value_name = "FILE")]
    sriov_config: Option<PathBuf>,
    /// Where sysfs is, for the SR-IOV inventory (a stand-in tree for tests and labs).
    #[arg(long, default_value = "/sys", value_name = "DIR")]
    sysfs_root: PathBuf,
    /// The kubelet's device plugin directory (its kubelet.sock and the plugins' sockets); `off`
    /// for no device plugin (tokens are then only in --state-dir).
    #[arg(
        long,
        default_value = "/var/lib/kubelet/device-plugins",
        value_name = "DIR"
    )]
    device_plugin_dir: String,
    /// Log filter, e.g. info, debug.
    #[arg(long, env = "MESHWIRE_LOG", default_value = "info")]
    log: String,
}

/// Runs the agent until it is stopped (SIGTERM, Ctrl-C) or a controller refuses it for good.
/// Stopping leaves the data plane as it is: a restarted agent adopts it.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(crate::daemon::log_filter(&args.log)?)
        .with_target(false)
        .init();
    meshwire_models::validate::check_name(&args.node)
        .map_err(|e| anyhow::anyhow!("--node {:?}: {e}", args.node))?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--token-file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("MESHWIRE_NODE_TOKEN").ok(),
    };
    for c in &args.controller {
        anyhow::ensure!(
            c.starts_with("http://") || c.starts_with("https://"),
            "--controller {c}: expected http://HOST:PORT or https://HOST:PORT"
        );
        if token.is_some() && c.starts_with("http://") {
            let host = c.trim_start_matches("http://");
            if !host.starts_with("127.")
                && !host.starts_with("[::1]")
                && !host.starts_with("localhost")
            {
                tracing::warn!(controller = %c, "the node token travels in clear text; give the controller --tls-cert/--tls-key and use https://");
            }
        }
    }
    let ca = args
        .ca
        .as_deref()
        .map(|p| std::fs::read(p).with_context(|| format!("--ca {}", p.display())))
        .transpose()?;
    let driver = Arc::new(
        meshwire_southbound::KernelDriver::for_node(&args.node)
            .remember_in(args.state_dir.join("namespaces.json"))
            // A sysfs tree elsewhere is a stand-in PF's: its VFs are veths.
            .sriov_standin(args.sysfs_root != Path::new("/sys")),
    );
    let sriov = match &args.sriov_config {
        None => None,
        Some(path) if !path.exists() => {
            tracing::warn!(file = %path.display(), "no SR-IOV configuration for this node: SR-IOV off");
            None
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--sriov-config {}", path.display()))?;
            let config = meshwire_models::sriov::SriovConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("--sriov-config {}: {e}", path.display()))?;
            let plugin_dir =
                (args.device_plugin_dir != "off").then(|| PathBuf::from(&args.device_plugin_dir));
            let node = meshwire_southbound::sriov::node::SriovNode::start(
                meshwire_southbound::sriov::node::SriovOptions {
                    config,
                    sysfs_root: args.sysfs_root.clone(),
                    plugin_dir,
                    state_dir: args.state_dir.clone(),
                    netns: None,
                },
            )
            .await
            .with_context(|| format!("SR-IOV ({})", path.display()))?;
            Some(node)
        }
    };
    let opts = NodeAgentOptions {
        node: args.node.clone(),
        controllers: args.controller.clone(),
        token,
        ca,
        connect_timeout: args.connect_timeout,
        sriov: sriov.as_ref().map(|s| s.report()),
    };
    let nsm = serve_nsm(&args, opts.token.as_deref(), opts.ca.as_deref())?;
    let first = std::sync::Once::new();
    let agent = meshwire_southbound::agent::node::run(opts, driver, move |url| {
        first.call_once(|| crate::daemon::announce_ready(url));
    });
    let result = tokio::select! {
        r = agent => r.with_context(|| format!("node {}", args.node)),
        _ = crate::daemon::shutdown() => {
            tracing::info!(node = %args.node, "node agent stopped; the data plane stays as it is");
            Ok(())
        }
    };
    for t in nsm {
        t.abort();
    }
    drop(sriov);
    if args.nsm_socket != "off" {
        let _ = std::fs::remove_file(&args.nsm_socket);
    }
    result
}

/// A client's `inodeURL` as the name of its namespace on this host.
fn resolve_netns(url: &str) -> Result<String, tonic::Status> {
    use meshwire_southbound::kernel::locate::{locate, Located};
    let r = meshwire_models::netns_ref::NetnsRef::parse(url)
        .map_err(|e| tonic::Status::invalid_argument(format!("inodeURL: {e}")))?;
    match locate(&r) {
        Ok(Located::Named(n)) => Ok(n),
        Ok(Located::Process { pid }) => Err(tonic::Status::failed_precondition(format!(
            "inodeURL {url}: the namespace of process {pid} has no name here, and the data plane opens namespaces by name (`ip netns attach NAME {pid}` names it)"
        ))),
        Err(e) if e.retryable() => Err(tonic::Status::not_found(format!("inodeURL {url}: {e}"))),
        Err(e) => Err(tonic::Status::internal(format!("inodeURL {url}: {e}"))),
    }
}

/// Serves the node's NSM endpoint (unix socket, optional TCP), forwarding to the controllers.
fn serve_nsm(
    args: &NodeArgs,
    token: Option<&str>,
    ca: Option<&[u8]>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    if args.nsm_socket == "off" && args.nsm_listen.is_none() {
        return Ok(Vec::new());
    }
    let mut endpoints = Vec::new();
    for url in &args.controller {
        let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
            .with_context(|| format!("--controller {url}"))?
            .connect_timeout(args.connect_timeout)
            .timeout(Duration::from_secs(30));
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            ep = ep
                .tls_config(tls)
                .with_context(|| format!("--controller {url}: TLS"))?;
        }
        endpoints.push(ep);
    }
    let upstream = tonic::transport::Channel::balance_list(endpoints.into_iter());
    let fwd = meshwire_northbound::grpc::forward::NodeForwarder::new(
        &args.node,
        upstream,
        token,
        Arc::new(resolve_netns),
    )
    .map_err(anyhow::Error::msg)?;
    let mut tasks = Vec::new();
    if args.nsm_socket != "off" {
        let path = Path::new(&args.nsm_socket);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--nsm-socket: {}", dir.display()))?;
        }
        // A socket left by a predecessor is ours to replace.
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("--nsm-socket {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("--nsm-socket {}", path.display()))?;
        }
        let incoming =
            futures::stream::unfold(
                l,
                |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) },
            );
        let router = fwd.router();
        let at = path.display().to_string();
        tracing::info!(socket = %at, node = %args.node, "NSM endpoint ready");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!(socket = %at, error = %e, "NSM endpoint stopped");
            }
        }));
    }
    if let Some(addr) = args.nsm_listen {
        if !addr.ip().is_loopback() {
            tracing::warn!(listen = %addr, "--nsm-listen off loopback: anyone who reaches it acts as this node's workloads");
        }
        let router = fwd.router();
        tracing::info!(listen = %addr, node = %args.node, "NSM endpoint ready (TCP)");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = router.serve(addr).await {
                tracing::error!(listen = %addr, error = %e, "NSM endpoint stopped");
            }
        }));
    }
    Ok(tasks)
}

/// The controller's options for node agents.
#[derive(clap::Args, Clone)]
pub struct HubArgs {
    /// Where node agents attach (`--dataplane agents`). Off loopback, give --agent-tokens.
    #[arg(long, env = "MESHWIRE_AGENT_LISTEN", default_value = "127.0.0.1:7602")]
    pub agent_listen: SocketAddr,
    /// One token per node agent, from a YAML file: `agents: [{node: n1, tokenEnv: N1},
    /// {node: n2, tokenFile: PATH}]`. An agent may attach only as the node its token names.
    /// These tokens open nothing else (not the REST or NSM APIs).
    #[arg(long, value_name = "FILE")]
    pub agent_tokens: Option<PathBuf>,
    /// How long a node's endpoints outlive its agent's stream before they heal elsewhere.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub agent_lease: Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentTokenFile {
    agents: Vec<AgentToken>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentToken {
    node: String,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

/// Reads the agents' tokens; secrets come from the environment or files, never from the table.
fn load_agent_tokens(path: &Path) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--agent-tokens {}", path.display()))?;
    let f: AgentTokenFile = serde_yaml::from_str(&text)
        .with_context(|| format!("--agent-tokens {}", path.display()))?;
    let mut out = std::collections::BTreeMap::new();
    for (i, t) in f.agents.into_iter().enumerate() {
        let at = format!("{}: agents[{i}] ({})", path.display(), t.node);
        meshwire_models::validate::check_name(&t.node)
            .map_err(|e| anyhow::anyhow!("{at}: node: {e}"))?;
        let secret =
            crate::daemon::read_secret(&at, t.token_env.as_deref(), t.token_file.as_deref())?;
        anyhow::ensure!(
            !out.values()
                .any(|s: &String| meshwire_models::secret::constant_time_eq(
                    s.as_bytes(),
                    secret.as_bytes()
                )),
            "{at}: the same secret as another node's: give each its own"
        );
        anyhow::ensure!(
            out.insert(t.node.clone(), secret).is_none(),
            "{at}: node {} has a token already: one credential per agent",
            t.node
        );
    }
    anyhow::ensure!(!out.is_empty(), "{}: no agents", path.display());
    Ok(Credentials::Tokens(out))
}

/// The agents' driver (its listener is served by [`serve_hub`] once the controller runs).
pub fn hub(args: &HubArgs) -> anyhow::Result<AgentHub> {
    let credentials = match &args.agent_tokens {
        Some(p) => load_agent_tokens(p)?,
        None => {
            anyhow::ensure!(
                args.agent_listen.ip().is_loopback(),
                "--agent-listen {} is not a loopback address and no --agent-tokens was given: anyone who reaches it could pose as a node. Give --agent-tokens FILE (and --tls-cert/--tls-key), or listen on 127.0.0.1",
                args.agent_listen
            );
            Credentials::Open
        }
    };
    Ok(AgentHub::new(HubConfig {
        lease: args.agent_lease,
        credentials,
    }))
}

/// Serves the agent listener until the returned task is aborted: the agent protocol, and the
/// NSM services the agents forward their workloads' calls to (each bound to its node).
pub async fn serve_hub(
    args: &HubArgs,
    hub: &AgentHub,
    ctl: meshwire_controller::Controller,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if tls.is_none() && !args.agent_listen.ip().is_loopback() {
        tracing::warn!(listen = %args.agent_listen, "--agent-listen: node tokens travel in clear text off loopback; give --tls-cert/--tls-key");
    }
    let l = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("cannot listen on {} (node agents)", args.agent_listen))?;
    let incoming = tonic::transport::server::TcpIncoming::from_listener(l, true, None)
        .map_err(|e| anyhow::anyhow!("agent listener on {}: {e}", args.agent_listen))?;
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("agent TLS with --tls-cert/--tls-key: {e}"))?;
    }
    let credentials = hub.credentials().clone();
    let nodes: meshwire_northbound::grpc::NodeAuthorizer = Arc::new(move |presented| {
        credentials
            .node_of(presented)
            .map(|n| n.map(str::to_string))
    });
    let router =
        meshwire_northbound::grpc::node_router(server, ctl, nodes).add_service(hub.service());
    let listen = args.agent_listen;
    tracing::info!(%listen, lease = ?args.agent_lease, "node agents may attach");
    Ok(tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "agent listener stopped");
        }
    }))
}
