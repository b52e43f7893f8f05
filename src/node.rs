//! `meshwire node` (the agent on each host) and the controller's side of the agents: their
//! credentials, their listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshwire_southbound::agent::{AgentHub, Credentials, HubConfig, NodeAgentOptions};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// This host's node: a meshwire.io/v1 Node of forwarder kernel. The agent wires only what of
    /// each connection lives here (the client's side on the client's node, the endpoint's side
    /// on the endpoint's) and may attach only with this node's token.
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
    /// Log filter, e.g. info, debug.
    #[arg(long, env = "MESHWIRE_LOG", default_value = "info")]
    log: String,
}

/// Runs the agent until it is stopped (SIGTERM, Ctrl-C) or a controller refuses it for good.
/// Stopping leaves the data plane as it is: a restarted agent adopts it.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
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
            .remember_in(args.state_dir.join("namespaces.json")),
    );
    let opts = NodeAgentOptions {
        node: args.node.clone(),
        controllers: args.controller.clone(),
        token,
        ca,
        connect_timeout: args.connect_timeout,
    };
    let first = std::sync::Once::new();
    let agent = meshwire_southbound::agent::node::run(opts, driver, move |url| {
        first.call_once(|| crate::daemon::announce_ready(url));
    });
    tokio::select! {
        r = agent => r.with_context(|| format!("node {}", args.node)),
        _ = crate::daemon::shutdown() => {
            tracing::info!(node = %args.node, "node agent stopped; the data plane stays as it is");
            Ok(())
        }
    }
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
        let secret = match (&t.token_env, &t.token_file) {
            (Some(v), None) => std::env::var(v)
                .with_context(|| format!("{at}: environment variable {v} is not set"))?,
            (None, Some(p)) => std::fs::read_to_string(p)
                .with_context(|| format!("{at}: {}", p.display()))?
                .trim()
                .to_string(),
            _ => anyhow::bail!("{at}: give exactly one of tokenEnv, tokenFile"),
        };
        anyhow::ensure!(
            secret.len() >= 16,
            "{at}: a token has at least 16 characters"
        );
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

/// The agents' driver and its listener, served until the returned task is aborted.
pub async fn hub(
    args: &HubArgs,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<(AgentHub, tokio::task::JoinHandle<()>)> {
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
    if tls.is_none() && !args.agent_listen.ip().is_loopback() {
        tracing::warn!(listen = %args.agent_listen, "--agent-listen: node tokens travel in clear text off loopback; give --tls-cert/--tls-key");
    }
    let hub = AgentHub::new(HubConfig {
        lease: args.agent_lease,
        credentials,
    });
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
    let router = server.add_service(hub.service());
    let listen = args.agent_listen;
    tracing::info!(%listen, lease = ?args.agent_lease, "node agents may attach");
    let task = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "agent listener stopped");
        }
    });
    Ok((hub, task))
}
