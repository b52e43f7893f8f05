//! `meshwire controller`: the daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshwire_controller::{Config, Controller, Dataplanes, Driver, NullDriver, SystemClock};
use meshwire_models::ForwarderKind;

#[derive(clap::Args)]
pub struct Args {
    /// Where state lives: redb:PATH (embedded, one file), etcd://HOST:PORT[,HOST:PORT] (distributed) or memory (lost on exit).
    #[arg(long, env = "MESHWIRE_STORE", default_value = "redb:./meshwire.redb")]
    store: String,
    /// Reach etcd over TLS (https), trusting this PEM CA for its servers. Off loopback, give it.
    #[arg(long, env = "MESHWIRE_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<std::path::PathBuf>,
    /// The client certificate (PEM) presented to etcd, where etcd runs with --client-cert-auth;
    /// needs --etcd-key and --etcd-ca.
    #[arg(long, env = "MESHWIRE_ETCD_CERT", value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --etcd-cert.
    #[arg(
        long,
        env = "MESHWIRE_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    etcd_key: Option<std::path::PathBuf>,
    /// An etcd user (etcd with `auth enable`); its password from MESHWIRE_ETCD_PASSWORD or
    /// --etcd-password-file, never from the command line. Give the user read and write on the
    /// prefix /meshwire/ (etcd roles), and keep TLS on: etcd's auth token travels with every call.
    #[arg(long, env = "MESHWIRE_ETCD_USER", value_name = "NAME")]
    etcd_user: Option<String>,
    /// A file holding --etcd-user's password (a mounted secret).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<std::path::PathBuf>,
    /// Address of the REST API. Off loopback, give --tokens and --tls-cert/--tls-key.
    #[arg(long, env = "MESHWIRE_LISTEN", default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// Address of the NSM-compatible gRPC API (networkservice.NetworkService,
    /// connection.MonitorConnection, the registry); `off` to not serve it. With
    /// --tls-cert/--tls-key it is served over TLS with the same certificate as the REST API.
    #[arg(long, env = "MESHWIRE_GRPC_LISTEN", default_value = "127.0.0.1:7601")]
    grpc_listen: String,
    /// How often desired connections are compared with the data plane (repair, heal, expiry).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconcile_interval: Duration,
    /// Which data planes wire connections, comma-separated: `kernel` (veth, VXLAN and bridges in
    /// network namespaces, over netlink; needs root), `ovs` (Open vSwitch nodes over OVSDB and
    /// OpenFlow 1.3: VXLAN, GRE, MPLS), or `none` (plan, negotiate and record without touching a
    /// device). With both, each connection goes to the data plane of its client node's forwarder.
    /// `agents` instead of `kernel`: kernel nodes are wired by the `meshwire node` agent on each
    /// host, which attaches at --agent-listen, and so are the workload legs of ovs nodes (with
    /// `agents,ovs` this process speaks only OVSDB and OpenFlow); it touches no namespace.
    #[arg(long, default_value = "none", value_delimiter = ',', value_parser = ["none", "kernel", "ovs", "agents"])]
    dataplane: Vec<String>,
    #[command(flatten)]
    agents: crate::node::HubArgs,
    #[command(flatten)]
    ha: crate::leader::HaArgs,
    /// Where the OpenFlow listener binds (ovs data plane): Open vSwitch bridges dial this.
    #[arg(long, default_value = "127.0.0.1:6653")]
    openflow_listen: SocketAddr,
    /// What bridges are told to dial (`tcp:IP:PORT`) when it differs from --openflow-listen
    /// (listening on 0.0.0.0, or behind NAT).
    #[arg(long)]
    openflow_advertise: Option<String>,
    /// Speak OpenFlow over TLS with this PEM certificate chain (switches dial `ssl:IP:PORT`);
    /// needs --openflow-tls-key and --openflow-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["openflow_tls_key", "openflow_tls_ca"])]
    openflow_tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --openflow-tls-cert.
    #[arg(long, value_name = "FILE", requires = "openflow_tls_cert")]
    openflow_tls_key: Option<std::path::PathBuf>,
    /// Switches must present a certificate this PEM CA signed (on each node: `ovs-vsctl set-ssl
    /// KEY CERT CA`).
    #[arg(long, value_name = "FILE", requires = "openflow_tls_cert")]
    openflow_tls_ca: Option<std::path::PathBuf>,
    /// Connection addresses come from here when an endpoint has no ipamPrefix.
    #[arg(long, default_value = "172.16.0.0/16")]
    ipam_prefix: ipnet::IpNet,
    /// Run an eNSM in this process for the device described in FILE (repeatable): it registers
    /// the device's endpoints and configures the device over NETCONF for connections to them.
    #[arg(long = "ensm-device", value_name = "FILE")]
    ensm_devices: Vec<std::path::PathBuf>,
    /// Directories searched for device profiles named in device files (before the shipped
    /// ones: meshwire-appliance, ietf-interfaces).
    #[arg(long = "profile-dir", value_name = "DIR")]
    profile_dirs: Vec<std::path::PathBuf>,
    /// Bearer tokens with roles (viewer, operator, admin) for the REST and gRPC APIs, from a YAML file:
    /// `tokens: [{name: oss, role: operator, tokenEnv: VAR}, {name: ops, role: admin,
    /// tokenFile: PATH}, {name: fw1-ensm, role: operator, device: fw1, tokenEnv: FW1}]`. A token
    /// with `device` is that device's eNSM: it may write only that device's objects, and the
    /// controller presents it when calling that device's eNSM (and to no one else). Without
    /// this file the APIs are open, so they may listen on loopback only.
    #[arg(long, value_name = "FILE")]
    tokens: Option<std::path::PathBuf>,
    /// Serve the REST and gRPC APIs over TLS with this PEM certificate chain (leaf first);
    /// needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Keep the registry in step with the NetworkService and NetworkServiceEndpoint custom
    /// resources (networkservicemesh.io/v1) of this Kubernetes namespace, both ways. The API
    /// server comes from the in-cluster service account or the kubeconfig.
    #[arg(long, value_name = "NAMESPACE")]
    k8s_namespace: Option<String>,
    /// This controller's domain (a DNS name, e.g. site-a.example) when it shares vL3 networks
    /// with other domains: the home of a vL3 delegates parts of its prefix to other domains
    /// (spec.vl3.delegations), whose routers offer it as `service@home-domain`.
    #[arg(long, value_name = "DNS-NAME", requires = "federation_secrets")]
    domain: Option<String>,
    /// A domain this one federates with: `DOMAIN=URL` (its controller's REST API, several
    /// comma-separated for HA) to import its vL3s, or just `DOMAIN` to only answer it.
    /// Repeat for several domains.
    #[arg(long = "federate", value_name = "DOMAIN[=URL]", requires = "domain")]
    federate: Vec<String>,
    /// A directory with one file per federated domain, named by the domain, holding the secret
    /// both domains share (at least 16 characters; a Kubernetes Secret mounted as a volume
    /// has this shape). Exchanges are refused without it.
    #[arg(long, value_name = "DIR", requires = "domain")]
    federation_secrets: Option<std::path::PathBuf>,
    /// A PEM CA certificate to trust for federated domains' https URLs (a private CA).
    #[arg(long, value_name = "FILE", requires = "domain")]
    federation_ca: Option<std::path::PathBuf>,
    /// How long this controller waits to ask a federated domain again after an exchange
    /// failed. Answered exchanges follow each other at once: the other domain holds one until
    /// its side changes, and one is sent again as soon as this side changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    federation_interval: Duration,
    /// How long the legs to a domain that cannot be reached are kept (it keeps working inside,
    /// and traffic to it resumes when the underlay does); then they are closed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    federation_lease: Duration,
    /// Log filter, e.g. info, debug, meshwire_controller=debug.
    #[arg(long, env = "MESHWIRE_LOG", default_value = "info")]
    log: String,
}

/// `--domain`, `--federate` and `--federation-secrets` as the controller takes them.
fn federation(args: &Args) -> anyhow::Result<Option<meshwire_controller::federation::Federation>> {
    use meshwire_controller::federation::{Federation, Peer};
    let Some(domain) = &args.domain else {
        return Ok(None);
    };
    meshwire_models::service::check_dns_name(domain)
        .map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    let dir = args
        .federation_secrets
        .as_ref()
        .context("--domain needs --federation-secrets DIR")?;
    let mut peers = std::collections::BTreeMap::new();
    for f in &args.federate {
        let (d, url) = f.split_once('=').unwrap_or((f.as_str(), ""));
        meshwire_models::service::check_dns_name(d)
            .map_err(|e| anyhow::anyhow!("--federate {f}: {e}"))?;
        anyhow::ensure!(
            d != domain,
            "--federate {f}: that is this controller's own domain"
        );
        for u in url.split(',').filter(|u| !u.is_empty()) {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "--federate {f}: {u} is not an http(s) URL"
            );
        }
        let secret = read_secret(
            &format!("--federation-secrets for {d}"),
            None,
            Some(&dir.join(d)),
        )?;
        peers.insert(
            d.to_string(),
            Peer {
                url: url.to_string(),
                secret,
            },
        );
    }
    let ca_pem = match &args.federation_ca {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("--federation-ca {}", p.display()))?)
        }
        None => None,
    };
    Ok(Some(Federation {
        domain: domain.clone(),
        peers,
        lease: args.federation_lease,
        ca_pem,
        hold: meshwire_controller::federation::HOLD,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: meshwire_northbound::auth::Role,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<std::path::PathBuf>,
    /// The device this token's eNSM speaks for.
    #[serde(default)]
    device: Option<String>,
}

/// A token's secret, from exactly one of an environment variable and a file (never from a
/// table), at least 16 characters; `at` names the entry in errors. Both token tables use it.
pub fn read_secret(
    at: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let secret = match (env, file) {
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
    Ok(secret)
}

/// Reads the token table; secrets come from the environment or files, never from the table.
fn load_tokens(path: &std::path::Path) -> anyhow::Result<meshwire_northbound::auth::Tokens> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--tokens {}", path.display()))?;
    let f: TokenFile =
        serde_yaml::from_str(&text).with_context(|| format!("--tokens {}", path.display()))?;
    let mut out = Vec::new();
    for (i, t) in f.tokens.into_iter().enumerate() {
        let at = format!("{}: tokens[{i}] ({})", path.display(), t.name);
        let secret = read_secret(&at, t.token_env.as_deref(), t.token_file.as_deref())?;
        if let Some(d) = &t.device {
            meshwire_models::validate::check_name(d)
                .map_err(|e| anyhow::anyhow!("{at}: device: {e}"))?;
            anyhow::ensure!(
                !out.iter()
                    .any(|o: &meshwire_northbound::auth::Token| o.device.as_deref() == Some(d)),
                "{at}: device {d} has a token already: one credential per eNSM"
            );
        }
        anyhow::ensure!(
            !out.iter().any(
                |o: &meshwire_northbound::auth::Token| meshwire_northbound::auth::same(
                    o.secret.as_bytes(),
                    secret.as_bytes()
                )
            ),
            "{at}: the same secret as another token: give each its own"
        );
        out.push(meshwire_northbound::auth::Token {
            name: t.name,
            role: t.role,
            secret,
            device: t.device,
        });
    }
    anyhow::ensure!(!out.is_empty(), "{}: no tokens", path.display());
    Ok(meshwire_northbound::auth::Tokens(out))
}

/// The `--log` filter, with the vL3 routers' DNS library's per-query lines at `warn` unless the
/// filter names it (`--log info,hickory_server=info` shows every query).
pub fn log_filter(spec: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let spec = if spec.contains("hickory") {
        spec.to_string()
    } else {
        format!("{spec},hickory_server=warn,hickory_proto=warn,hickory_net=warn")
    };
    tracing_subscriber::EnvFilter::try_new(&spec).context("--log")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&args.log)?)
        .with_target(false)
        .init();
    let tokens = args.tokens.as_deref().map(load_tokens).transpose()?;
    let federation = federation(&args)?;
    let grpc_addr: Option<SocketAddr> = match args.grpc_listen.as_str() {
        "off" | "none" => None,
        a => Some(
            a.parse()
                .with_context(|| format!("--grpc-listen {a}: expected ADDR:PORT or off"))?,
        ),
    };
    // An API without credentials is for this host only.
    for (what, addr) in [
        ("--listen", Some(args.listen)),
        ("--grpc-listen", grpc_addr),
    ] {
        let Some(addr) = addr else { continue };
        if !addr.ip().is_loopback() {
            anyhow::ensure!(
                tokens.is_some(),
                "{what} {addr} is not a loopback address and no --tokens was given: anyone who reaches it could change the mesh. Give --tokens FILE (and --tls-cert/--tls-key), or listen on 127.0.0.1"
            );
            if args.tls_cert.is_none() {
                tracing::warn!(listen = %addr, "{what}: tokens travel in clear text off loopback; give --tls-cert/--tls-key");
            }
        }
    }
    let store_opts = meshwire_controller::store::OpenOptions {
        etcd_tls: args
            .etcd_ca
            .clone()
            .map(|ca| meshwire_controller::store::etcd_store::EtcdTls {
                ca,
                cert: args.etcd_cert.clone(),
                key: args.etcd_key.clone(),
            }),
        etcd_user: match &args.etcd_user {
            None => None,
            Some(name) => {
                let at = format!("--etcd-user {name}");
                let password = match &args.etcd_password_file {
                    Some(f) => read_secret(&at, None, Some(f))?,
                    None => read_secret(&at, Some("MESHWIRE_ETCD_PASSWORD"), None)?,
                };
                Some(meshwire_controller::store::etcd_store::EtcdUser {
                    name: name.clone(),
                    password,
                })
            }
        },
    };
    // On etcd, controllers elect a leader: this one stands by until it leads, then writes
    // through a fenced store and calls the data plane only while its lease holds.
    let (store, leadership, bound) = if args.store.starts_with("etcd://") {
        let etcd = meshwire_controller::store::open_etcd(&args.store, &store_opts)
            .await
            .with_context(|| format!("opening store {}", args.store))?;
        let standby_tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(meshwire_northbound::tls::server_config(c, k)?),
            _ => None,
        };
        let agents = args
            .dataplane
            .iter()
            .any(|d| d == "agents")
            .then(|| format!("http://{}", args.agents.agent_listen));
        let config = Config {
            ipam_prefix: args.ipam_prefix,
            ..Config::default()
        };
        let (store, l, bound) = crate::leader::lead(
            &args.ha,
            etcd,
            args.listen,
            standby_tls,
            agents,
            tokens.clone(),
            config,
        )
        .await?;
        (store, Some(l), Some(bound))
    } else {
        let store = meshwire_controller::store::open_with(&args.store, &store_opts)
            .await
            .with_context(|| format!("opening store {}", args.store))?;
        (store, None, None)
    };
    let mut planes: Vec<(ForwarderKind, Arc<dyn Driver>)> = Vec::new();
    anyhow::ensure!(
        !(args.dataplane.iter().any(|d| d == "kernel") && args.dataplane.iter().any(|d| d == "agents")),
        "--dataplane kernel,agents: both would wire kernel nodes; give `kernel` (this process wires every node) or `agents` (the agent on each host wires its node)"
    );
    // The agents' hub first: the Open vSwitch driver gives it its nodes' legs.
    let agent_hub = match args.dataplane.iter().any(|d| d == "agents") {
        true => Some(crate::node::hub(&args.agents)?),
        false => None,
    };
    for d in &args.dataplane {
        match d.as_str() {
            "agents" => {
                if let Some(hub) = &agent_hub {
                    planes.push((ForwarderKind::Kernel, Arc::new(hub.clone())));
                }
            }
            "kernel" => planes.push((
                ForwarderKind::Kernel,
                Arc::new(meshwire_southbound::KernelDriver::new()),
            )),
            "ovs" => {
                let tls = match (
                    &args.openflow_tls_cert,
                    &args.openflow_tls_key,
                    &args.openflow_tls_ca,
                ) {
                    (Some(c), Some(k), Some(ca)) => Some(
                        meshwire_southbound::openflow::channel::tls_server_config(c, k, ca)
                            .context("--openflow-tls-cert/--openflow-tls-key/--openflow-tls-ca")?,
                    ),
                    _ => None,
                };
                if tls.is_none() && !args.openflow_listen.ip().is_loopback() {
                    tracing::warn!(listen = %args.openflow_listen, "OpenFlow off loopback without TLS: any host that reaches it can pose as a switch; give --openflow-tls-cert/--openflow-tls-key/--openflow-tls-ca");
                }
                let config = meshwire_southbound::OvsConfig {
                    listen: args.openflow_listen,
                    advertise: args.openflow_advertise.clone(),
                    tls,
                    ..Default::default()
                };
                // With agents, each ovs node's agent wires its workload legs; else this process.
                let ovs = match &agent_hub {
                    Some(hub) => {
                        meshwire_southbound::OvsDriver::start_with(
                            config,
                            Arc::new(hub.plane(ForwarderKind::Ovs)),
                        )
                        .await
                    }
                    None => meshwire_southbound::OvsDriver::start(config).await,
                }
                .context("starting the OVS data plane")?;
                planes.push((ForwarderKind::Ovs, Arc::new(ovs)));
            }
            _ => {}
        }
    }
    // Device files are checked before anything starts.
    let mut devices = Vec::new();
    for f in &args.ensm_devices {
        devices.push(
            meshwire_ensm_adapters::ensm::load(f, &args.profile_dirs)
                .map_err(anyhow::Error::msg)?,
        );
    }
    // Always behind Dataplanes: it routes by the client node's forwarder and sends the device
    // half of a connection to the device's eNSM (in process, or remote by its URL).
    if planes.is_empty() {
        planes.push((ForwarderKind::Kernel, Arc::new(NullDriver)));
        planes.push((ForwarderKind::Ovs, Arc::new(NullDriver)));
    }
    let planes = Arc::new(Dataplanes::new(planes));
    let dataplanes = Some(planes.clone());
    let driver: Arc<dyn Driver> = match &leadership {
        Some(l) => Arc::new(meshwire_controller::driver::LeaderGuard::new(
            planes,
            l.probe(),
        )),
        None => planes,
    };
    let config = Config {
        ipam_prefix: args.ipam_prefix,
        ..Config::default()
    };
    let ctl = Controller::start(store, driver, Arc::new(SystemClock), config)
        .await
        .context("starting the controller")?;
    if let Some(f) = federation {
        tracing::info!(domain = %f.domain, peers = ?f.peers.keys().collect::<Vec<_>>(), "federating vL3 networks");
        ctl.set_federation(f);
    }
    if let Some(l) = &leadership {
        crate::leader::follow(l.clone());
    }
    let agent_listener = match &agent_hub {
        Some(hub) => {
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => Some(meshwire_northbound::tls::grpc_server_config(c, k)?),
                _ => None,
            };
            Some(crate::node::serve_hub(&args.agents, hub, ctl.clone(), tls).await?)
        }
        None => None,
    };
    let mut ensms = Vec::new();
    let mut devices_seen: Vec<meshwire_ensm_adapters::ensm::Ensm> = Vec::new();
    if let Some(planes) = &dataplanes {
        // Devices whose eNSM runs in its own process are reached at the URL of the Device
        // object (written only by an admin or by that device's eNSM), with that device's own
        // token; an endpoint's `url` never decides where a credential goes.
        let lookup = ctl.clone();
        let secrets = tokens.clone();
        planes.set_resolver(Box::new(move |device: &str| {
            let key = meshwire_models::ObjectKey {
                kind: meshwire_models::ObjectKind::Device,
                name: device.to_string(),
            };
            let url = match lookup.object(&key) {
                Some(meshwire_models::Object::Device(d)) => d.ensm?,
                _ => return None,
            };
            let secret = secrets
                .as_ref()
                .and_then(|t| t.device_secret(device))
                .map(str::to_string);
            if secrets.is_some() && secret.is_none() {
                tracing::warn!(%device, %url, "no token is bound to this device: its eNSM is called without a credential");
            }
            tracing::info!(%device, %url, "remote eNSM found");
            Some(Arc::new(meshwire_ensm_adapters::remote::RemoteEnsm::new(
                device, &url, secret,
            )) as Arc<dyn Driver>)
        }));
        for (device, profile) in devices {
            let name = device.name.clone();
            let e = meshwire_ensm_adapters::ensm::Ensm::new(device, profile, Arc::new(ctl.clone()));
            planes.attach_device(&name, Arc::new(e.clone()));
            ensms.push(e.start().await.map_err(anyhow::Error::msg)?);
            devices_seen.push(e);
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(meshwire_northbound::tls::server_config(c, k)?),
        _ => None,
    };
    let k8s = match &args.k8s_namespace {
        Some(nsname) => {
            let client = kube::Client::try_default()
                .await
                .context("--k8s-namespace: no Kubernetes API server (in-cluster service account or kubeconfig)")?;
            tracing::info!(namespace = %nsname, "syncing the registry with Kubernetes");
            Some(tokio::spawn(meshwire_northbound::k8s::sync::run(
                client,
                nsname.clone(),
                ctl.clone(),
            )))
        }
        None => None,
    };
    let reconciler = ctl.spawn_reconciler(args.reconcile_interval);
    let federating = ctl.spawn_federation(args.federation_interval);
    // A leader keeps the server it ran as a standby; otherwise the REST address binds now.
    let listener = match bound {
        Some(front) => Err(front),
        None => Ok(tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?),
    };
    tracing::info!(listen = %args.listen, tls = tls.is_some(), store = %ctl.store_name(), dataplane = %ctl.driver_name(), "meshwire controller ready");
    announce_ready(&args.listen.to_string());
    // One bound on long-lived streams for both APIs, and one signal that ends them at
    // shutdown (an open event stream must not hold the graceful shutdown forever).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let streams = meshwire_northbound::streams::Streams::new(
        meshwire_northbound::streams::DEFAULT_MAX_STREAMS,
        Some(stop_rx),
    );
    let grpc = match grpc_addr {
        None => None,
        Some(addr) => {
            // Bind here so a taken port is an error at start, not a log line later.
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (gRPC)"))?;
            let incoming = tonic::transport::server::TcpIncoming::from_listener(l, true, None)
                .map_err(|e| anyhow::anyhow!("gRPC listener on {addr}: {e}"))?;
            // The same certificate as the REST API: one --tls-cert/--tls-key serves both.
            let grpc_tls = match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => Some(meshwire_northbound::tls::grpc_server_config(c, k)?),
                _ => None,
            };
            let router = meshwire_northbound::grpc::router_with_options(
                ctl.clone(),
                meshwire_northbound::grpc::GrpcOptions {
                    tokens: tokens.clone().map(Arc::new),
                    streams: Some(streams.clone()),
                    tls: grpc_tls,
                },
            )
            .map_err(|e| anyhow::anyhow!("gRPC TLS with --tls-cert/--tls-key: {e}"))?;
            tracing::info!(listen = %addr, tls = args.tls_cert.is_some(), "NSM gRPC API ready");
            Some(tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            }))
        }
    };
    let extra: Option<meshwire_northbound::metrics::Extra> =
        (!devices_seen.is_empty()).then(|| {
            let f: meshwire_northbound::metrics::Extra =
                Arc::new(move || device_metrics(&devices_seen));
            f
        });

    let app = meshwire_northbound::router_with(
        ctl,
        meshwire_northbound::Options {
            extra_metrics: extra,
            tokens,
            streams: Some(streams),
        },
    );
    let stopping = async move {
        shutdown().await;
        tracing::info!("shutting down: ending open streams");
        let _ = stop_tx.send(true);
    };
    match (listener, &tls) {
        (Err(front), _) => front.lead(app, stopping).await,
        (Ok(listener), Some(cfg)) => {
            meshwire_northbound::tls::serve(listener, app, cfg.clone(), stopping).await
        }
        (Ok(listener), None) => axum::serve(listener, app)
            .with_graceful_shutdown(stopping)
            .await
            .context("serving the REST API")?,
    }
    reconciler.abort();
    if let Some(f) = federating {
        f.abort();
    }
    if let Some(k) = k8s {
        k.abort();
    }
    if let Some(g) = grpc {
        g.abort();
    }
    if let Some(a) = agent_listener {
        a.abort();
    }
    for e in ensms {
        e.abort();
    }
    if let Some(l) = leadership {
        // A standby takes over now rather than when the lease runs out.
        l.resign().await;
    }
    tracing::info!("meshwire controller stopped");
    Ok(())
}

/// The in-process eNSMs' device sessions, in the OpenMetrics text format.
fn device_metrics(ensms: &[meshwire_ensm_adapters::ensm::Ensm]) -> String {
    let mut out = String::from(
        "# HELP meshwire_device_reachable Whether the eNSM's NETCONF session to the device is up.\n# TYPE meshwire_device_reachable gauge\n",
    );
    for e in ensms {
        let s = e.status();
        out.push_str(&format!(
            "meshwire_device_reachable{{device=\"{}\"}} {}\n",
            s.device,
            u8::from(s.reachable)
        ));
    }
    for (name, help, get) in [
        (
            "meshwire_device_sessions_opened",
            "NETCONF sessions opened to the device.",
            (|s: &meshwire_ensm_adapters::ensm::Status| s.sessions_opened)
                as fn(&meshwire_ensm_adapters::ensm::Status) -> u64,
        ),
        (
            "meshwire_device_transactions",
            "NETCONF transactions run on the device.",
            |s| s.transactions,
        ),
        (
            "meshwire_device_refused",
            "Transactions the device refused.",
            |s| s.refused,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for e in ensms {
            let s = e.status();
            out.push_str(&format!(
                "{name}_total{{device=\"{}\"}} {}\n",
                s.device,
                get(&s)
            ));
        }
    }
    out
}

pub async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[derive(clap::Args)]
pub struct EnsmArgs {
    /// The device file: which appliance, how to reach it, its profile and endpoints.
    #[arg(long, value_name = "FILE")]
    device: std::path::PathBuf,
    /// The controller's REST address, where the device's endpoints are registered.
    #[arg(
        long,
        env = "MESHWIRE_CONTROLLER",
        default_value = "http://127.0.0.1:7600"
    )]
    controller: String,
    /// Where this eNSM listens for the controller's calls (apply, remove, observe).
    #[arg(long, default_value = "127.0.0.1:7610")]
    listen: SocketAddr,
    /// The URL the controller uses to reach this eNSM (default http://<listen>).
    #[arg(long)]
    advertise: Option<String>,
    /// Directories searched for the device's profile (before the shipped ones).
    #[arg(long = "profile-dir", value_name = "DIR")]
    profile_dirs: Vec<std::path::PathBuf>,
    /// This eNSM's own credential: the secret of the controller's token bound to this device
    /// (`device:` in the controller's --tokens file). The controller must present it on every
    /// call, and this eNSM presents it to the controller when it registers. Give it through
    /// the environment; without it the call API is open and may listen on loopback only.
    #[arg(long, env = "MESHWIRE_ENSM_TOKEN", hide_env_values = true)]
    ensm_token: Option<String>,
    #[arg(long, env = "MESHWIRE_LOG", default_value = "info")]
    log: String,
}

/// `meshwire ensm`: one device's eNSM in its own process.
pub async fn ensm(args: EnsmArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_target(false)
        .init();
    anyhow::ensure!(
        args.ensm_token.is_some() || args.listen.ip().is_loopback(),
        "--listen {} is not a loopback address and MESHWIRE_ENSM_TOKEN is not set: anyone who reaches it could change the device's configuration. Set this device's token, or listen on 127.0.0.1",
        args.listen
    );
    let (device, profile) = meshwire_ensm_adapters::ensm::load(&args.device, &args.profile_dirs)
        .map_err(anyhow::Error::msg)?;
    let name = device.name.clone();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let e = meshwire_ensm_adapters::ensm::Ensm::new(
        device,
        profile,
        // The device's own credential authenticates it to the controller too.
        meshwire_ensm_adapters::remote::RestRegistrar::new(
            &args.controller,
            args.ensm_token
                .clone()
                .or_else(|| std::env::var("MESHWIRE_TOKEN").ok()),
        )?,
    );
    e.set_url(&url);
    let health = e.start().await?;
    tracing::info!(device = %name, %url, controller = %args.controller, "eNSM ready");
    announce_ready(&url);
    axum::serve(
        listener,
        meshwire_ensm_adapters::remote::router_with_token(e, args.ensm_token.clone()),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("serving the eNSM API")?;
    health.abort();
    Ok(())
}

/// One line on stdout for supervisors and scripts, `ready <address>`: the API accepts
/// connections from now on (its listener is bound; the eNSM has registered). The log shares
/// stdout; no log line starts with `ready `. A closed stdout is not an error.
pub fn announce_ready(at: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {at}");
    let _ = out.flush();
}
