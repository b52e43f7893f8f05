//! `meshwire lab up|down|inspect`: containerlab-format labs with their own controller.
//!
//! `up`: check the file, create namespaces, links and bridges (rolled back on failure), start a
//! controller for the lab (embedded redb store in /run/meshwire/labs/<lab>/) and a node agent
//! in each host's namespace (kernel or Open vSwitch), register the lab's hosts and links as the topology, and
//! apply the manifests the lab lists. `down` stops that controller and removes everything by name.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_labs::runner;
use meshwire_labs::spec::{Kind, Lab};

use crate::client;

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Create the lab, start its controller and apply its manifests.
    Up {
        file: PathBuf,
        /// The lab controller's reconcile interval (how fast it notices and heals failures).
        #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
        reconcile_interval: Duration,
        /// Wire the hosts from the lab's controller itself (`--dataplane kernel`, and the ovs
        /// hosts' workload legs) instead of a node agent (`meshwire node`) in each host's
        /// namespace, which reaches the controller over the lab's management network with a
        /// token of its own (the default).
        #[arg(long)]
        in_process: bool,
        /// The lab controller's REST address (default: a free loopback port); fixed when
        /// another lab's controller must reach it (a federated domain).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// This lab's domain, for vL3 networks shared with another lab's controller (see
        /// `meshwire controller --domain`).
        #[arg(long, value_name = "DNS-NAME", requires = "federation_secrets")]
        domain: Option<String>,
        /// A domain to federate with, `DOMAIN[=URL]` (see `meshwire controller --federate`).
        #[arg(long = "federate", value_name = "DOMAIN[=URL]", requires = "domain")]
        federate: Vec<String>,
        /// One file per federated domain holding the shared secret (see `meshwire controller
        /// --federation-secrets`).
        #[arg(long, value_name = "DIR", requires = "domain")]
        federation_secrets: Option<PathBuf>,
    },
    /// Stop or start the node agent of one host of a lab (the data plane keeps forwarding
    /// while it is away).
    NodeAgent {
        lab: String,
        node: String,
        #[arg(value_enum)]
        action: AgentAction,
    },
    /// Stop the lab's controller and remove its namespaces, links and bridges (by name, so it also
    /// cleans up after a crash). Takes the lab file or just the lab's name.
    Down { lab: String },
    /// Show the lab's nodes, interfaces, addresses and connections.
    Inspect { file: PathBuf },
    /// Restart the lab's controller on the same store and addresses (the data plane keeps
    /// forwarding): after an upgrade, or to watch it resync without touching unchanged flows.
    Restart {
        lab: String,
        /// SIGKILL instead of SIGTERM: emulate a crash.
        #[arg(long)]
        kill: bool,
    },
    /// (Internal) the data-plane agent of an emulated appliance; `lab up` starts it in the
    /// appliance's namespace.
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = meshwire_labs::appliance::LAB_NETCONF_PORT)]
        port: u16,
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AgentAction {
    /// Start it again with the same command line.
    Start,
    /// SIGTERM.
    Stop,
    /// SIGKILL: emulate a crash.
    Kill,
}

fn dir(name: &str) -> PathBuf {
    runner::state_dir(name)
}

/// The REST address of a running lab's controller.
pub fn controller_url(name: &str) -> anyhow::Result<String> {
    Ok(runner::controller_url(name)?)
}

pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            file,
            reconcile_interval,
            in_process,
            listen,
            domain,
            federate,
            federation_secrets,
        } => {
            let mut extra = Vec::new();
            if let Some(d) = domain {
                extra.extend(["--domain".to_string(), d]);
            }
            for f in federate {
                extra.extend(["--federate".to_string(), f]);
            }
            if let Some(dir) = federation_secrets {
                let dir = std::fs::canonicalize(&dir)
                    .with_context(|| format!("--federation-secrets {}", dir.display()))?;
                extra.extend(["--federation-secrets".into(), dir.display().to_string()]);
            }
            let opts = Options {
                interval: reconcile_interval,
                agents: !in_process,
                listen,
                extra,
            };
            up(&file, &opts).await
        }
        LabCommand::NodeAgent { lab, node, action } => {
            let d = dir(&lab);
            match action {
                AgentAction::Start => {
                    let pid = crate::lab_agents::spawn(&d, &node).await?;
                    crate::lab_agents::wait_attached(
                        &controller_url(&lab)?,
                        &node,
                        Duration::from_secs(20),
                    )
                    .await?;
                    println!("lab {lab}: the agent of node {node} (pid {pid}) is attached");
                }
                AgentAction::Stop | AgentAction::Kill => {
                    let kill = matches!(action, AgentAction::Kill);
                    match crate::lab_agents::stop(&d, &node, kill).await? {
                        Some(pid) => println!(
                            "lab {lab}: the agent of node {node} (pid {pid}) {}",
                            if kill { "was killed" } else { "stopped" }
                        ),
                        None => println!("lab {lab}: the agent of node {node} was not running"),
                    }
                }
            }
            Ok(())
        }
        LabCommand::Down { lab } => {
            let name = if Path::new(&lab).is_file() {
                Lab::load(Path::new(&lab))?.name
            } else {
                lab
            };
            for r in down(&name).await? {
                println!("removed {r}");
            }
            println!("lab {name} is down");
            Ok(())
        }
        LabCommand::Inspect { file } => inspect(&file).await,
        LabCommand::Restart { lab, kill } => restart(&lab, kill).await,
        LabCommand::Agent {
            dir,
            port,
            interval,
        } => {
            tracing_subscriber::fmt().with_target(false).init();
            Ok(meshwire_labs::agent::run(dir, port, interval).await?)
        }
    }
}

/// How `lab up` starts the lab's controller.
struct Options {
    interval: Duration,
    agents: bool,
    listen: Option<std::net::SocketAddr>,
    /// More controller arguments (federation).
    extra: Vec<String>,
}

async fn up(file: &Path, opts: &Options) -> anyhow::Result<()> {
    let agents = opts.agents;
    let lab = Lab::load(file)?;
    // Agents are for hosts (kernel or Open vSwitch); a lab of appliances alone has none.
    let agents = agents && lab.nodes.values().any(|n| n.is_host());
    for m in &lab.manifests {
        // Check the lab's manifests before creating anything.
        let text = std::fs::read_to_string(m).with_context(|| {
            format!(
                "{}: manifest {} listed in labels",
                file.display(),
                m.display()
            )
        })?;
        meshwire_models::Manifest::parse(&m.display().to_string(), &text)?;
    }
    let d = dir(&lab.name);
    if !runner::namespaces(&lab.name).await.is_empty() {
        bail!(
            "lab {} is already up; run `meshwire lab down {}` first",
            lab.name,
            lab.name
        );
    }
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let rt = match runner::up_with(&lab, &d, agents).await {
        Ok(rt) => rt,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&d);
            return Err(e.into());
        }
    };
    let started = async {
        let devices = appliances(&lab, &rt).await?;
        start(&lab, &rt, opts, &devices, agents).await
    };
    match started.await {
        Ok(url) => {
            println!(
                "lab {} is up: {} namespaces, controller at {url}",
                lab.name,
                lab.nodes.values().filter(|n| n.has_netns()).count()
            );
            println!("export MESHWIRE_CONTROLLER={url}");
            Ok(())
        }
        Err(e) => {
            let _ = down(&lab.name).await;
            Err(e.context(format!("lab {}: rolled back", lab.name)))
        }
    }
}

/// For each appliance: the eNSM device file (the lab's template completed with how to reach the
/// emulated device) and its data-plane agent, started in its namespace.
async fn appliances(lab: &Lab, rt: &runner::Runtime) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let exe = std::env::current_exe().context("finding the meshwire binary")?;
    for (name, a) in &rt.appliances {
        let node = &lab.nodes[name];
        let template = node
            .device_file
            .as_ref()
            .ok_or_else(|| anyhow!("appliance {name}: no device file"))?;
        let text = std::fs::read_to_string(template)
            .with_context(|| format!("appliance {name}: {}", template.display()))?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text)
            .with_context(|| format!("appliance {name}: {}", template.display()))?;
        let spec = v
            .get_mut("spec")
            .and_then(|s| s.as_mapping_mut())
            .ok_or_else(|| anyhow!("{}: no spec", template.display()))?;
        let y = |s: String| serde_yaml::Value::String(s);
        let netconf = serde_yaml::from_str::<serde_yaml::Value>(&format!(
            "{{host: \"{}\", port: {}, user: root, keyFile: \"{}\", hostKey: {{fingerprint: \"{}\"}}, timeout: 5s}}",
            a.mgmt,
            a.port,
            a.client_key.display(),
            a.fingerprint
        ))?;
        spec.entry(y("netconf".into())).or_insert(netconf);
        let snmp = serde_yaml::from_str::<serde_yaml::Value>(&format!(
            "{{address: \"{}:161\", community: public, interfaces: [{}], pollInterval: 500ms, trapListen: \"{}:{}\"}}",
            a.mgmt,
            a.data_interfaces.join(", "),
            a.host, a.trap_port
        ))?;
        spec.entry(y("snmp".into())).or_insert(snmp);
        if !spec.contains_key("profile") {
            spec.insert(y("profile".into()), y("meshwire-appliance".into()));
        }
        let out = a.dir.join("device.yaml");
        std::fs::write(&out, serde_yaml::to_string(&v)?)?;
        // Fail early, with the file's own error, rather than in the controller's log.
        meshwire_ensm_adapters::ensm::load(&out, &[])
            .map_err(|e| anyhow!("appliance {name}: {e} (from {})", template.display()))?;
        files.push(out);
        let log = std::fs::File::create(a.dir.join("agent.log"))?;
        std::process::Command::new("ip")
            .args(["netns", "exec", &a.netns])
            .arg(&exe)
            .args(["lab", "agent", "--dir"])
            .arg(&a.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("appliance {name}: starting its agent"))?;
    }
    Ok(files)
}

async fn start(
    lab: &Lab,
    rt: &runner::Runtime,
    opts: &Options,
    devices: &[PathBuf],
    agents: bool,
) -> anyhow::Result<String> {
    let interval = opts.interval;
    let d = dir(&lab.name);
    let listen = match opts.listen {
        Some(a) => a,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], meshwire_labs::ports::free_port()?)),
    };
    let url = format!("http://{listen}");
    let grpc_port = meshwire_labs::ports::free_port()?;
    let mut args: Vec<String> = vec![
        "controller".into(),
        "--log".into(),
        "info".into(),
        "--grpc-listen".into(),
        format!("127.0.0.1:{grpc_port}"),
    ];
    let ovs = lab.nodes.values().any(|n| n.is_ovs());
    let kernel = if agents { "agents" } else { "kernel" };
    match rt.controller_ip.filter(|_| ovs) {
        Some(ip) => args.extend([
            "--dataplane".into(),
            format!("{kernel},ovs"),
            "--openflow-listen".into(),
            format!("{ip}:6653"),
        ]),
        None => args.extend(["--dataplane".into(), kernel.into()]),
    }
    let agents_url = match (agents, rt.controller_ip) {
        (false, _) => None,
        (true, None) => bail!(
            "lab {}: no management network for the agents (no host?)",
            lab.name
        ),
        (true, Some(ip)) => {
            let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
            let tokens = crate::lab_agents::write_tokens(lab, &d)?;
            args.extend([
                "--agent-listen".into(),
                format!("{ip}:{port}"),
                "--agent-tokens".into(),
                tokens.display().to_string(),
                "--agent-lease".into(),
                "5s".into(),
            ]);
            Some(format!("http://{ip}:{port}"))
        }
    };
    args.extend([
        "--store".into(),
        format!("redb:{}", d.join("state.redb").display()),
        "--listen".into(),
        listen.to_string(),
        "--reconcile-interval".into(),
        humantime::format_duration(interval).to_string(),
    ]);
    for f in devices {
        args.extend(["--ensm-device".into(), f.display().to_string()]);
    }
    args.extend(opts.extra.iter().cloned());
    std::fs::write(d.join("controller.args"), serde_json::to_vec(&args)?)?;
    std::fs::write(d.join("controller.url"), &url)?;
    std::fs::write(
        d.join("controller.grpc"),
        format!("http://127.0.0.1:{grpc_port}"),
    )?;
    spawn_controller(&d, &args, &url).await?;
    let api = client::api(&url)?;
    let topo = d.join("topology.yaml");
    std::fs::write(&topo, lab.manifests_with(&|n| rt.ovsdb.get(n).cloned()))?;
    client::apply(&api, &topo, false)
        .await
        .context("registering the lab's topology")?;
    if let Some(a) = &agents_url {
        crate::lab_agents::start_all(lab, &d, &url, a).await?;
    }
    for m in &lab.manifests {
        client::apply(&api, m, false)
            .await
            .with_context(|| format!("applying {}", m.display()))?;
    }
    Ok(url)
}

/// Starts the lab's controller with `args` (appending to its log) and waits until it answers.
async fn spawn_controller(d: &Path, args: &[String], url: &str) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("controller.log"))?;
    let exe = std::env::current_exe().context("finding the meshwire binary")?;
    let child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the lab's controller")?;
    std::fs::write(d.join("controller.pid"), child.id().to_string())?;
    let api = client::api(url)?;
    for _ in 0..200 {
        if api
            .get::<serde_json::Value>("/api/v1/resources")
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = std::fs::read_to_string(d.join("controller.log")).unwrap_or_default();
    bail!(
        "the lab's controller did not start: {}",
        tail.lines().last().unwrap_or("(no log)")
    )
}

/// Stops the lab's controller (SIGTERM, or SIGKILL to emulate a crash) and waits until it is gone.
async fn stop_controller(d: &Path, signal: &str) -> Option<String> {
    let pid = std::fs::read_to_string(d.join("controller.pid")).ok()?;
    let pid = pid.trim().to_string();
    let alive = |pid: &str| !exited(pid);
    if !alive(&pid) {
        return None;
    }
    let _ = tokio::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .await;
    // A killed process may take seconds to finish exiting on a loaded host (a thread inside a
    // netlink call waits for the kernel first); its store stays locked until it has.
    for _ in 0..1500 {
        if !alive(&pid) {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(%pid, "the lab controller has not exited within 30 s");
    Some(pid)
}

/// Whether process `pid` has exited entirely: gone, or a zombie none of whose threads remain.
/// A killed process's first thread can be a zombie while its other threads are still exiting,
/// and its files (the store's lock) are released only when the last one has.
pub(crate) fn exited(pid: &str) -> bool {
    let zombie = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st == "Z"),
        Err(_) => return true,
    };
    zombie
        && std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count() <= 1)
            .unwrap_or(true)
}

/// Restarts the lab's controller on the same store and addresses; the data plane keeps running.
async fn restart(name: &str, kill: bool) -> anyhow::Result<()> {
    let d = dir(name);
    let args: Vec<String> = serde_json::from_slice(
        &std::fs::read(d.join("controller.args"))
            .with_context(|| format!("lab {name} is not up"))?,
    )?;
    let url = controller_url(name)?;
    let old = stop_controller(&d, if kill { "-KILL" } else { "-TERM" }).await;
    spawn_controller(&d, &args, &url).await?;
    println!(
        "lab {name}: controller {} and started again at {url}",
        match old {
            Some(pid) if kill => format!("(pid {pid}) killed"),
            Some(pid) => format!("(pid {pid}) stopped"),
            None => "was not running".into(),
        }
    );
    Ok(())
}

async fn down(name: &str) -> anyhow::Result<Vec<String>> {
    let d = dir(name);
    let mut removed = Vec::new();
    if let Some(pid) = stop_controller(&d, "-TERM").await {
        removed.push(format!("controller (pid {pid})"));
    }
    removed.extend(runner::down(name).await.map_err(|e| anyhow!(e))?);
    if d.exists() {
        std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        removed.push(d.display().to_string());
    }
    Ok(removed)
}

async fn inspect(file: &Path) -> anyhow::Result<()> {
    let lab = Lab::load(file)?;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "NODE",
        "KIND",
        "NAMESPACE",
        "INTERFACE",
        "STATE",
        "ADDRESSES",
    ]);
    let addrs = runner::addresses(&lab).await;
    for n in lab.nodes.values() {
        let kind = match (n.kind, n.host()) {
            (Kind::Bridge, _) => "bridge".to_string(),
            (Kind::Linux, Some(h)) => format!("workload on {h}"),
            (Kind::Linux, None) => "host".to_string(),
            (Kind::Appliance, _) => "appliance".to_string(),
        };
        let ns = if n.has_netns() {
            lab.netns(&n.name)
        } else {
            "-".into()
        };
        let mine: Vec<_> = addrs.iter().filter(|a| a.0 == n.name).collect();
        if mine.is_empty() {
            t.add_row(vec![
                n.name.clone(),
                kind.clone(),
                ns.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for (_, ifname, state, a) in mine {
            t.add_row(vec![
                n.name.clone(),
                kind.clone(),
                ns.clone(),
                ifname.clone(),
                state.clone(),
                a.clone(),
            ]);
        }
    }
    println!("{t}");
    let mut links = Table::new();
    links
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["LINK", "ADDRESSES", "MTU"]);
    for l in &lab.links {
        let show = |a: Option<ipnet::IpNet>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        links.add_row(vec![
            format!(
                "{}:{} <-> {}:{}",
                l.a.node, l.a.interface, l.b.node, l.b.interface
            ),
            format!("{} <-> {}", show(l.a.address), show(l.b.address)),
            l.mtu
                .map(|m| m.to_string())
                .unwrap_or_else(|| "default".into()),
        ]);
    }
    if !lab.links.is_empty() {
        println!("{links}");
    }
    match controller_url(&lab.name) {
        Ok(url) => {
            println!("controller: {url}");
            client::get(
                &client::api(&url)?,
                crate::Kind::Connections,
                crate::Output::Table,
                &client::Filter::default(),
            )
            .await?;
        }
        Err(e) => println!("{e}"),
    }
    Ok(())
}
