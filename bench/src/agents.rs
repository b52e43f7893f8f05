//! `meshwire bench agents`: request to first packet across two hosts whose data plane runs in
//! node agents, beside the in-process kernel driver in the same run.
//!
//! Two host namespaces joined by a veth (the underlay), a client namespace on n1 and an
//! endpoint namespace on n2 answering UDP echo. In-process: one controller with
//! `KernelDriver::new()` wires both sides. Agents: a controller with the agent hub serving its
//! gRPC listener on loopback, and two agents (`agent::node::run`, each with
//! `KernelDriver::for_node`) attached to it over their own gRPC streams; each request's two
//! sides go to the two agents and come back acknowledged before the request returns. Both run as
//! tasks of this process (the wire between them is real gRPC over TCP; the agents are not
//! separate processes here, the labs run them as processes).
//!
//! Then one controller with many agents (1,000 at scale 1, in one load process started from
//! this binary, each on its own gRPC connection over loopback, acknowledging without wiring)
//! and many connections (100,000): the controller's heap per agent and per connection, request
//! to the agent's acknowledgement, and a full set to every agent while one holds 10,000.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, Driver, SystemClock};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};
use meshwire_southbound::agent::{node, AgentHub, Credentials, HubConfig, NodeAgentOptions};
use meshwire_southbound::KernelDriver;

use crate::setup::{first_packet, heal, pct, sh, socket_in, BenchNetns, Echo, HealPlace};

const P: &str = "mwagb";

/// The hosts and workloads, with the underlay between the hosts.
fn namespaces() -> anyhow::Result<BenchNetns> {
    let ns = BenchNetns::create(P, &["n1", "n2", "c", "e"])?;
    sh(&format!(
        "ip -n {P}-n1 link add eth1 type veth peer name eth1 netns {P}-n2 && ip -n {P}-n1 addr add 192.168.202.1/24 dev eth1 && ip -n {P}-n2 addr add 192.168.202.2/24 dev eth1 && ip -n {P}-n1 link set eth1 up && ip -n {P}-n2 link set eth1 up"
    ))?;
    Ok(ns)
}

fn manifests() -> String {
    format!(
        r#"
apiVersion: meshwire.io/v1
kind: Node
metadata: {{name: n1}}
spec: {{forwarder: kernel, netns: {P}-n1}}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {{name: n2}}
spec: {{forwarder: kernel, netns: {P}-n2}}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {{name: n1-n2}}
spec: {{endpoints: ["n1:eth1", "n2:eth1"], addresses: ["192.168.202.1/24", "192.168.202.2/24"]}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {{name: cross}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {{name: e}}
spec: {{network_service_names: [cross], location: {{node: n2, netns: {P}-e}}, ipamPrefix: 172.22.0.0/16}}
"#
    )
}

/// A controller whose data plane is an agent hub (open, on a loopback port), with `manifests`
/// applied: the hub, the agents' URL, the listener's task and the controller.
pub(crate) async fn hub_controller(
    lease: Duration,
    manifests: Manifest,
) -> anyhow::Result<(AgentHub, String, tokio::task::JoinHandle<()>, Controller)> {
    let hub = AgentHub::new(HubConfig {
        lease,
        credentials: Credentials::Open,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from_listener(l, true, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let router = tonic::transport::Server::builder().add_service(hub.service());
    let server = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(hub.clone()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(manifests).await?;
    hub.topology(&ctl.topology()).await?;
    Ok((hub, url, server, ctl))
}

/// `n` requests, each timed to its first echoed packet, then closed together.
async fn rounds(
    ctl: &Controller,
    probe: &std::net::UdpSocket,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let req = ConnectionRequest {
        network_service: "cross".into(),
        client: ClientRef {
            node: "n1".into(),
            name: Some(format!("{P}-c")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    };
    let mut lat = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = ctl.request(req.clone()).await?;
        first_packet(probe, c.ip_context.dst_ip_addrs[0].addr())?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(c.id);
    }
    for id in ids {
        ctl.close(&id).await?;
    }
    Ok(lat)
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(LOAD_ENV) {
        return load(&spec).await;
    }
    let n = ((200.0 * scale).round() as usize).max(10);
    let _ns = namespaces().context("bench agents needs root and iproute2")?;
    let _echo = Echo::start(&format!("{P}-e"))?;
    let probe = socket_in(&format!("{P}-c"), 0)?;
    probe.set_read_timeout(Some(Duration::from_millis(1)))?;
    let manifests = Manifest::parse("bench", &manifests())?;

    // In process: the controller wires both hosts itself.
    let kernel = Arc::new(KernelDriver::new());
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        kernel.clone(),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(manifests.clone()).await?;
    let mut inprocess = rounds(&ctl, &probe, n).await?;
    kernel.settled().await;
    drop(ctl);

    // Heal by polling: a driver that reports nothing, a reconcile round every 250 ms.
    let heal_rounds = ((10.0 * scale).round() as usize).max(3);
    let quiet = Arc::new(KernelDriver::without_events());
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        quiet.clone(),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(manifests.clone()).await?;
    let polling = HealPlace {
        prefix: P,
        node: "n2",
        interval: Duration::from_millis(250),
        vni_start: 21_000,
    };
    let mut heal_polling = heal(&ctl, &probe, heal_rounds, &polling).await?;
    quiet.settled().await;
    drop(ctl);

    // Agents: the same requests, each side wired by its host's agent over gRPC.
    let (hub, url, server, ctl) = hub_controller(Duration::from_secs(30), manifests).await?;
    let mut agents = Vec::new();
    let mut drivers = Vec::new();
    for name in ["n1", "n2"] {
        let d = Arc::new(KernelDriver::for_node(name));
        drivers.push(d.clone());
        let opts = NodeAgentOptions {
            node: name.into(),
            controllers: vec![url.clone()],
            token: None,
            ca: None,
            connect_timeout: Duration::from_secs(2),
            sriov: None,
        };
        agents.push(tokio::spawn(node::run(opts, d, |_| {})));
    }
    let t = Instant::now();
    while hub.attached().len() < 2 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the agents did not attach within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut via_agents = rounds(&ctl, &probe, n).await?;
    // Heal by events alone: the endpoint host's agent reports the interface gone with its
    // namespace, and the controller looks at once; its rounds are an hour apart.
    let events = HealPlace {
        prefix: P,
        node: "n2",
        interval: Duration::from_secs(3600),
        vni_start: 22_000,
    };
    let mut heal_events = heal(&ctl, &probe, heal_rounds, &events).await?;
    for d in &drivers {
        d.settled().await;
    }
    for a in agents {
        a.abort();
    }
    server.abort();

    let (ip50, ip99) = (pct(&mut inprocess, 0.5), pct(&mut inprocess, 0.99));
    let (ag50, ag99) = (pct(&mut via_agents, 0.5), pct(&mut via_agents, 0.99));
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "request -> first packet, across two hosts (VXLAN)",
        "p50 ms",
        "p99 ms",
        "samples",
    ]);
    t.add_row(vec![
        "node agents (gRPC, one per host)".to_string(),
        format!("{ag50:.2}"),
        format!("{ag99:.2}"),
        n.to_string(),
    ]);
    t.add_row(vec![
        "in-process kernel driver".to_string(),
        format!("{ip50:.2}"),
        format!("{ip99:.2}"),
        n.to_string(),
    ]);
    let (hp50, hpmax) = (
        pct(&mut heal_polling, 0.5),
        heal_polling.iter().copied().fold(0.0, f64::max),
    );
    let (he50, hemax) = (
        pct(&mut heal_events, 0.5),
        heal_events.iter().copied().fold(0.0, f64::max),
    );
    t.add_row(vec![
        "heal, endpoint namespace deleted: agents' events, rounds 1 h apart (p50 / max)"
            .to_string(),
        format!("{he50:.0}"),
        format!("{hemax:.0}"),
        heal_rounds.to_string(),
    ]);
    t.add_row(vec![
        "heal, endpoint namespace deleted: polling every 250 ms, no events (p50 / max)".to_string(),
        format!("{hp50:.0}"),
        format!("{hpmax:.0}"),
        heal_rounds.to_string(),
    ]);
    println!("{t}");
    println!("goal: agents p99 under 10 ms and at least half the in-process speed (ratio_vs_inprocess >= 0.5); healing faster by events than by polling");
    drop(_echo);
    drop(_ns);

    let f = fleet(scale).await?;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["one controller, agents over loopback gRPC", "value"]);
    for (k, v) in [
        (
            "agents (one load process, one connection each)",
            f.agents.to_string(),
        ),
        ("connections", f.connections.to_string()),
        (
            "controller heap per agent",
            format!("{:.0} B", f.per_agent_bytes),
        ),
        (
            "controller heap per connection",
            format!("{:.0} B", f.per_connection_bytes),
        ),
        (
            "request -> agent's acknowledgement p50",
            format!("{:.3} ms", f.ack_p50_ms),
        ),
        (
            "request -> agent's acknowledgement p99",
            format!("{:.3} ms", f.ack_p99_ms),
        ),
        (
            "full set of every connection to every agent (its part), n0 holding",
            format!("{} connections: {:.0} ms", f.resync_n, f.resync_ms),
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    println!(
        "agents: agents_p50_ms={ag50:.2} agents_p99_ms={ag99:.2} inprocess_p50_ms={ip50:.2} inprocess_p99_ms={ip99:.2} samples={n} heal_events_p50_ms={he50:.0} heal_events_max_ms={hemax:.0} heal_polling_p50_ms={hp50:.0} heal_polling_max_ms={hpmax:.0} fleet_agents={} fleet_connections={} bytes_per_agent={:.0} bytes_per_connection={:.0} ack_p50_ms={:.3} ack_p99_ms={:.3} resync_{}_ms={:.0} ratio_vs_inprocess={:.2} ratio_vs_polling={:.2}",
        f.agents,
        f.connections,
        f.per_agent_bytes,
        f.per_connection_bytes,
        f.ack_p50_ms,
        f.ack_p99_ms,
        f.resync_n,
        f.resync_ms,
        ip99 / ag99,
        hp50 / he50
    );
    Ok(())
}

/// The environment variable that turns `meshwire bench agents` into the load process of
/// [`fleet`]: `URL COUNT`.
const LOAD_ENV: &str = "MESHWIRE_BENCH_AGENT_LOAD";

/// The load process: `count` agents (`n0`..), each on its own gRPC connection to `url`, each
/// with a data plane that acknowledges and wires nothing. Runs until killed.
pub async fn load(spec: &str) -> anyhow::Result<()> {
    let (url, count) = spec
        .split_once(' ')
        .context("MESHWIRE_BENCH_AGENT_LOAD: URL COUNT")?;
    let count: usize = count.parse()?;
    for i in 0..count {
        let opts = NodeAgentOptions {
            node: format!("n{i}"),
            controllers: vec![url.to_string()],
            token: None,
            ca: None,
            connect_timeout: Duration::from_secs(10),
            sriov: None,
        };
        let d: Arc<dyn Driver> = Arc::new(meshwire_controller::NullDriver);
        tokio::spawn(node::run(opts, d, |_| {}));
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Manifests of `n` nodes, each with its own service `s{i}` and endpoint `ep{i}` on it (every
/// connection then lives on one node: one agent acknowledges it).
fn fleet_manifests(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        // n0 holds the resync's many connections: a pool of its own size.
        let pool = if i == 0 {
            "100.64.0.0/10".to_string()
        } else {
            format!("10.{}.{}.0/24", 64 + i / 256, i % 256)
        };
        s.push_str(&format!(
            "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: n{i}}}\nspec: {{forwarder: kernel}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: s{i}}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: ep{i}}}\nspec: {{network_service_names: [s{i}], location: {{node: n{i}, netns: e{i}}}, ipamPrefix: {pool}}}\n"
        ));
    }
    s
}

/// What one controller costs with many agents: memory per agent and per connection, request to
/// agent acknowledgement under that load, and a full set to every agent while one holds many
/// connections.
pub struct Fleet {
    pub agents: usize,
    pub connections: usize,
    pub per_agent_bytes: f64,
    pub per_connection_bytes: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub resync_n: usize,
    pub resync_ms: f64,
}

pub async fn fleet(scale: f64) -> anyhow::Result<Fleet> {
    let agents = ((1000.0 * scale).round() as usize).max(10);
    let conns = ((100_000.0 * scale).round() as usize).max(100);
    let resync_n = ((10_000.0 * scale).round() as usize).clamp(10, conns);
    let manifests = Manifest::parse("fleet", &fleet_manifests(agents))?;
    let (hub, url, server, ctl) = hub_controller(Duration::from_secs(600), manifests).await?;

    let before_agents = crate::heap::in_use();
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "agents"])
        .env(LOAD_ENV, format!("{url} {agents}"))
        .env("MESHWIRE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the agents' load process")?;
    let t = Instant::now();
    while hub.attached().len() < agents {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "{} of {agents} agents attached within 120 s",
            hub.attached().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attach_s = t.elapsed().as_secs_f64();
    let with_agents = crate::heap::in_use();

    // resync_n connections on n0 first, the rest spread over the other nodes.
    let mut lat = Vec::with_capacity(conns);
    for i in 0..conns {
        let node = if i < resync_n {
            0
        } else {
            1 + i % (agents - 1)
        };
        let req = ConnectionRequest {
            network_service: format!("s{node}"),
            client: ClientRef {
                node: format!("n{node}"),
                name: Some(format!("c{i}")),
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        };
        let t = Instant::now();
        ctl.request(req).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let with_conns = crate::heap::in_use();

    // The full set of every connection, to every agent at once (each gets its part; n0's
    // holds resync_n connections): what an attach after a controller restart costs at most.
    let all = ctl.connections(&Default::default());
    let mut resync = Vec::new();
    for v in 0..3 {
        let t = Instant::now();
        let r = hub
            .converge(&meshwire_controller::Desired::full(
                meshwire_controller::Scope::All,
                u64::MAX / 2 + v,
                all.clone(),
            ))
            .await?;
        anyhow::ensure!(
            r.observation.connections.is_empty(),
            "agents reported trouble"
        );
        resync.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = child.kill().await;
    server.abort();
    println!("{agents} agents attached in {attach_s:.1} s");
    Ok(Fleet {
        agents,
        connections: conns,
        per_agent_bytes: with_agents.saturating_sub(before_agents) as f64 / agents as f64,
        per_connection_bytes: with_conns.saturating_sub(with_agents) as f64 / conns as f64,
        ack_p50_ms: pct(&mut lat.clone(), 0.5),
        ack_p99_ms: pct(&mut lat, 0.99),
        resync_n,
        resync_ms: pct(&mut resync, 0.5),
    })
}
