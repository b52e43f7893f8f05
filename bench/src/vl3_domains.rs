//! `meshwire bench vl3`, its two-domain part: one vL3 shared by two controllers, each with its
//! own store and kernel data plane in this process. The home (`b.bench`, hosts' namespace
//! `mwv3d-hb`, routers rb1 and rb2) serves its registry API on loopback; the federated domain
//! (`a.bench`, `mwv3d-ha`, router ra1) exchanges with it as a controller does (the home holds an
//! exchange until its side changes; one is sent again when the other side changes). Measured: from the first member's request to every pair across the domains
//! confirmed by a UDP echo (N members on each side), and the outage of a federated member's
//! probe to a home member whose router is lost, until the echo comes back (the home heals the
//! member onto its other router; the held exchange brings that to the federated domain).

use std::future::IntoFuture;
use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_controller::clock::SystemClock;
use meshwire_controller::federation::{Federation, Peer};
use meshwire_controller::store::redb_store::RedbStore;
use meshwire_controller::{Config, Controller};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};
use meshwire_southbound::KernelDriver;

use crate::setup::{first_packet, sh, socket_in, BenchNetns, Echo};

const P: &str = "mwv3d";
const SECRET: &str = "bench-secret-of-two-domains";

/// The two-domain figures.
pub struct Figures {
    pub members: usize,
    pub mesh_ms: f64,
    pub pairs: usize,
    pub heal_ms: Vec<f64>,
}

fn node(name: &str, addr: &str) -> String {
    format!("---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: {name}, labels: {{meshwire.io/federation-address: {addr}}}}}\nspec: {{forwarder: kernel, netns: {P}-{name}, underlayAddress: {addr}}}\n")
}

fn router(name: &str, service: &str, node: &str) -> String {
    format!("---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {name}}}\nspec: {{network_service_names: [\"{service}\"], location: {{node: {node}, netns: {P}-{name}}}}}\n")
}

fn home_manifests() -> String {
    format!(
        "{}---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: db}}\nspec: {{payload: IP, vl3: {{prefix: 10.96.0.0/16, delegations: {{a.bench: 10.96.128.0/17}}}}}}\n{}{}",
        node("hb", "192.168.233.2"),
        router("rb1", "db", "hb"),
        router("rb2", "db", "hb"),
    )
}

fn away_manifests() -> String {
    format!(
        "{}{}",
        node("ha", "192.168.233.1"),
        router("ra1", "db@b.bench", "ha")
    )
}

async fn controller(
    dir: &std::path::Path,
    name: &str,
    docs: &str,
    f: Federation,
) -> anyhow::Result<Controller> {
    let store = Arc::new(RedbStore::open(&dir.join(format!("{name}.redb")))?);
    let ctl = Controller::start(
        store,
        Arc::new(KernelDriver::new()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(Manifest::parse("bench", docs)?).await?;
    ctl.set_federation(f);
    Ok(ctl)
}

fn federation(domain: &str, peer: &str, url: &str) -> Federation {
    Federation {
        domain: domain.into(),
        peers: [(
            peer.to_string(),
            Peer {
                url: url.into(),
                secret: SECRET.into(),
            },
        )]
        .into(),
        lease: Duration::from_secs(600),
        ca_pem: None,
        hold: meshwire_controller::federation::HOLD,
    }
}

fn member(service: &str, node: &str, name: &str) -> ConnectionRequest {
    ConnectionRequest {
        network_service: service.into(),
        client: ClientRef {
            node: node.into(),
            name: Some(format!("{P}-{name}")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

fn addr(c: &meshwire_models::Connection) -> anyhow::Result<IpAddr> {
    c.ip_context
        .src_ip_addrs
        .first()
        .map(|a| a.addr())
        .ok_or_else(|| anyhow::anyhow!("{} has no address", c.id))
}

/// `n` members on each side, every pair across the domains confirmed; then the heal rounds.
pub async fn run(n: usize, rounds: usize) -> anyhow::Result<Figures> {
    let a_names: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    let b_names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    let mut all: Vec<&str> = vec!["ha", "hb", "ra1", "rb1", "rb2"];
    all.extend(a_names.iter().map(String::as_str));
    all.extend(b_names.iter().map(String::as_str));
    let _ns = BenchNetns::create(P, &all)?;
    sh(&format!(
        "ip -n {P}-ha link add eth1 type veth peer name eth1 netns {P}-hb && ip -n {P}-ha addr add 192.168.233.1/24 dev eth1 && ip -n {P}-hb addr add 192.168.233.2/24 dev eth1 && ip -n {P}-ha link set eth1 up && ip -n {P}-hb link set eth1 up"
    ))?;
    let dir = tempfile::tempdir()?;
    let home = controller(
        dir.path(),
        "home",
        &home_manifests(),
        federation("b.bench", "a.bench", ""),
    )
    .await?;
    home.reconcile_once().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        axum::serve(listener, meshwire_northbound::router(home.clone())).into_future(),
    );
    let away = controller(
        dir.path(),
        "away",
        &away_manifests(),
        federation("a.bench", "b.bench", &url),
    )
    .await?;
    let tasks = [
        home.spawn_reconciler(Duration::from_millis(250)),
        away.spawn_reconciler(Duration::from_millis(250)),
    ];
    let exchanges = away
        .spawn_federation(Duration::from_secs(1))
        .ok_or_else(|| anyhow::anyhow!("no federation task"))?;
    // The legs between the domains first, as an operator's federation stands before members.
    let deadline = Instant::now() + Duration::from_secs(10);
    while away
        .connections(&Default::default())
        .iter()
        .filter(|c| c.remote_domain().is_some())
        .count()
        < 2
    {
        anyhow::ensure!(Instant::now() < deadline, "no legs between the domains");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let names: Vec<&String> = a_names.iter().chain(b_names.iter()).collect();
    let _echoes: Vec<Echo> = names
        .iter()
        .map(|m| Echo::start(&format!("{P}-{m}")))
        .collect::<anyhow::Result<_>>()?;
    let probes: Vec<UdpSocket> = names
        .iter()
        .map(|m| {
            let s = socket_in(&format!("{P}-{m}"), 0)?;
            s.set_read_timeout(Some(Duration::from_millis(1)))?;
            Ok(s)
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let mut conns = Vec::new();
    for m in &a_names {
        conns.push((&away, away.request(member("db@b.bench", "ha", m)).await?));
    }
    for m in &b_names {
        conns.push((&home, home.request(member("db", "hb", m)).await?));
    }
    let addrs: Vec<IpAddr> = conns
        .iter()
        .map(|(_, c)| addr(c))
        .collect::<anyhow::Result<_>>()?;
    let mut pairs = 0;
    for i in 0..n {
        for j in n..2 * n {
            first_packet(&probes[i], addrs[j])
                .map_err(|e| anyhow::anyhow!("{} -> {}: {e}", names[i], names[j]))?;
            first_packet(&probes[j], addrs[i])
                .map_err(|e| anyhow::anyhow!("{} -> {}: {e}", names[j], names[i]))?;
            pairs += 2;
        }
    }
    let mesh_ms = t.elapsed().as_secs_f64() * 1e3;

    // Heal: b0's router is lost while a0 probes b0 across the domains.
    let b0 = conns[n].1.id.clone();
    let mut heal_ms = Vec::new();
    for _ in 0..rounds {
        let lost = home
            .connection(&b0)
            .map(|c| c.network_service_endpoint_name)
            .ok_or_else(|| anyhow::anyhow!("b0's connection vanished"))?;
        let t = Instant::now();
        meshwire_labs::lose::lose_namespace(&format!("{P}-{lost}")).map_err(anyhow::Error::msg)?;
        first_packet(&probes[0], addrs[n])
            .map_err(|e| anyhow::anyhow!("a0 -> b0 after losing {lost}: {e}"))?;
        heal_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // The lost router comes back for the next round.
        sh(&format!(
            "ip netns add {P}-{lost} && ip -n {P}-{lost} link set lo up"
        ))?;
        home.apply(Manifest::parse("bench", &router(&lost, "db", "hb"))?)
            .await?;
        home.reconcile_once().await?;
    }
    for (ctl, c) in &conns {
        ctl.close(&c.id).await?;
    }
    exchanges.abort();
    for t in tasks {
        t.abort();
    }
    server.abort();
    // Every leg closed here, so both data planes are clean before the namespaces go.
    for ctl in [&away, &home] {
        let ids: Vec<String> = ctl
            .connections(&Default::default())
            .into_iter()
            .map(|c| c.id)
            .collect();
        for id in ids {
            let _ = ctl.close(&id).await;
        }
    }
    Ok(Figures {
        members: n,
        mesh_ms,
        pairs,
        heal_ms,
    })
}
