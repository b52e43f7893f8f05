//! `meshwire`: the one binary that composes Meshwire's crates: the controller daemon, the client
//! commands (over the daemon's REST API) and the benchmarks.

mod client;
mod daemon;
mod dot;
mod kube_cmds;
mod lab;
mod lab_agents;
mod lab_sriov;
mod leader;
mod node;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Meshwire: L2/L3 network services for cloud-native workloads, in the Network Service Mesh model.
///
/// Start a controller, apply NetworkService / NetworkServiceEndpoint manifests (upstream NSM's
/// format) and a topology (meshwire.io/v1 Node, Link, Device), then request a service for a client.
#[derive(Parser)]
#[command(
    name = "meshwire",
    version,
    about,
    long_about,
    after_help = "Example:\n  meshwire controller --store redb:./meshwire.redb &\n  meshwire apply -f examples/vpn-gateway.yaml\n  meshwire request secure-intranet-connectivity --client client --label app=sarah\n  meshwire get connections"
)]
struct Cli {
    /// The controller's REST address, for the client commands.
    #[arg(
        long,
        global = true,
        env = "MESHWIRE_CONTROLLER",
        default_value = "http://127.0.0.1:7600"
    )]
    controller: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
    /// Graphviz (`get topology` only): `meshwire get topology -o dot | dot -Tsvg > topo.svg`.
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Services,
    Endpoints,
    Connections,
    Topology,
    Resources,
    /// Which controller leads (each of --controller's list asked in turn: leader, standby or
    /// unreachable).
    Leader,
    All,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller daemon (REST API, store, reconcile loop).
    Controller(Box<daemon::Args>),
    /// Run the agent of one host (a node of forwarder kernel): it attaches to the controller
    /// (`meshwire controller --dataplane agents`), wires that node's part of each connection
    /// (veth, VXLAN, bridges in its namespaces) and reports what happens there. When the
    /// controller is away it keeps the data plane as it is.
    Node(node::NodeArgs),
    /// Run the eNSM of one physical appliance in its own process (a device in another site):
    /// it registers the device's endpoints with the controller, configures the device over
    /// NETCONF for the connections routed to them, and withdraws them when the device or one
    /// of its data links goes down (SNMP).
    Ensm(daemon::EnsmArgs),
    /// Run the Kubernetes mutating admission webhook: pods annotated `networkservicemesh.io:
    /// kernel://SERVICE/IFNAME?labels` get an init container that requests those services.
    Webhook(kube_cmds::WebhookArgs),
    /// Request a pod's network services over the NSM gRPC API, then exit (the init container
    /// the webhook injects; reads NSM_NETWORK_SERVICES, NODE_NAME and POD_NAME).
    NscInit(kube_cmds::NscInitArgs),
    /// Create or update the objects of manifest files (a file, or every .yaml/.yml/.json of a directory).
    Apply {
        /// File or directory.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the objects named in manifest files.
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Check manifest files without a controller; prints what they hold or the first error.
    Validate {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Show services, endpoints, connections, the topology, pool usage, or all of them.
    Get {
        #[arg(value_enum)]
        kind: Kind,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Endpoints and connections: only those of this service.
        #[arg(long)]
        service: Option<String>,
        /// Endpoints: only those whose labels contain these, e.g. app=vpn-gateway,zone=z1.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Request a network service for a client; prints the negotiated connection.
    Request {
        /// The NetworkService name.
        service: String,
        /// The topology node the client runs on.
        #[arg(long)]
        client: String,
        /// The client workload's name on that node (default: the node itself).
        #[arg(long)]
        name: Option<String>,
        /// A client label, matched against the service's source selectors (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Acceptable mechanisms, best first (repeatable): kernel, memif, vxlan, gre, mpls, vlan.
        #[arg(long = "mechanism")]
        mechanisms: Vec<meshwire_models::MechanismKind>,
        /// Interface name in the client (default nsm-1, or the next free nsm-N).
        #[arg(long)]
        interface: Option<String>,
        /// An SR-IOV device plugin token the kubelet allocated to this client (from its
        /// NSM_SRIOV_TOKENS_<pool> variable): the client gets a free VF of the token's pool on
        /// its node, moved into its namespace.
        #[arg(long, value_name = "TOKEN")]
        sriov_token: Option<String>,
        /// Make the request at most once: a retry with the same key gets the same connection
        /// (from whichever controller leads then) instead of a second one. Default: a fresh
        /// key per invocation, so this command's own retries on another controller are safe.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Close a connection and release everything it holds.
    Close { id: String },
    /// Labs: containerlab-format topologies as network namespaces, with their own controller.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Run a benchmark; prints a table and a last line `NAME: key=value ...`.
    Bench(meshwire_bench::Args),
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    meshwire_models::labels::parse_label(s)
}

fn main() {
    let cli = Cli::parse();
    // One TLS provider for the whole process (etcd's and gRPC clients build their TLS from the
    // process default, and more than one provider is linked in).
    meshwire_controller::store::etcd_store::ensure_crypto_provider();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = client::api(&cli.controller)?;
    match cli.command {
        Command::Controller(args) => daemon::run(*args).await,
        Command::Ensm(args) => daemon::ensm(args).await,
        Command::Node(args) => node::run(args).await,
        Command::Webhook(args) => kube_cmds::webhook(args).await,
        Command::NscInit(args) => kube_cmds::nsc_init(args).await,
        Command::Apply { file } => client::apply(&api, &file, false).await,
        Command::Delete { file } => client::apply(&api, &file, true).await,
        Command::Validate { file } => client::validate(&file),
        Command::Get {
            kind,
            output,
            service,
            selector,
        } => client::get(&api, kind, output, &client::Filter { service, selector }).await,
        Command::Request {
            service,
            client,
            name,
            labels,
            mechanisms,
            interface,
            sriov_token,
            idempotency_key,
            output,
        } => {
            let req = meshwire_models::ConnectionRequest {
                network_service: service,
                client: meshwire_models::ClientRef { node: client, name },
                labels: labels.into_iter().collect(),
                mechanisms,
                interface,
                excluded_prefixes: vec![],
                sriov_token,
            };
            client::request(&api, req, idempotency_key, output).await
        }
        Command::Close { id } => client::close(&api, &id).await,
        Command::Lab(cmd) => lab::run(cmd).await,
        Command::Bench(args) => meshwire_bench::run(args).await,
    }
}
