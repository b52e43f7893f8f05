//! `meshwire bench vl3`: how long N members of a vL3 take to reach each other (every pair,
//! checked), and the outage of a member whose router is lost until it reaches its peers again.
//!
//! Two hosts (namespaces with an underlay veth between them), three virtual routers (r1 and r3
//! on n1, r2 on n2), N members alternating between the hosts, one controller with the kernel
//! data plane in this process. Reachability is a UDP echo: each member runs one, and from each
//! member a probe to every other member's address is sent every millisecond until it is
//! echoed; the mesh time runs from the first request to the last pair confirmed. The heal: the
//! router serving member m0 is deleted (its namespace) while m0 probes a member behind another
//! router; the outage runs until the echo comes back. There is no peer to run beside it here
//! (upstream's vL3 needs Kubernetes and VPP), so the line has figures and no ratio. Then the
//! same across two domains ([`crate::vl3_domains`]).

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::clock::SystemClock;
use meshwire_controller::store::redb_store::RedbStore;
use meshwire_controller::{Config, Controller};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};
use meshwire_southbound::KernelDriver;

use crate::setup::{first_packet, pct, sh, socket_in, BenchNetns, Echo};

const P: &str = "mwv3";

fn manifests() -> String {
    let nse = |name: &str, node: &str| {
        format!("---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {name}}}\nspec: {{network_service_names: [db], location: {{node: {node}, netns: {P}-{name}}}}}\n")
    };
    format!(
        "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{forwarder: kernel, netns: {P}-n1}}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: n2}}\nspec: {{forwarder: kernel, netns: {P}-n2}}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {{name: n1-n2}}\nspec: {{endpoints: [\"n1:eth1\", \"n2:eth1\"], addresses: [\"192.168.231.1/24\", \"192.168.231.2/24\"]}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: db}}\nspec: {{payload: IP, vl3: {{prefix: 10.95.0.0/16}}}}\n{}{}{}",
        nse("r1", "n1"),
        nse("r2", "n2"),
        nse("r3", "n1")
    )
}

fn host(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "n1"
    } else {
        "n2"
    }
}

fn member(i: usize) -> ConnectionRequest {
    ConnectionRequest {
        network_service: "db".into(),
        client: ClientRef {
            node: host(i).into(),
            name: Some(format!("{P}-m{i}")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

fn router_ns(name: &str) -> anyhow::Result<()> {
    sh(&format!(
        "ip netns add {P}-{name} && ip -n {P}-{name} link set lo up"
    ))
}

struct Round {
    members: usize,
    requests_ms: f64,
    mesh_ms: f64,
    pairs: usize,
}

/// N members joined and every pair confirmed; then all closed again.
async fn mesh(ctl: &Controller, n: usize) -> anyhow::Result<Round> {
    let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ns = BenchNetns::create(P, &refs)?;
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
    let mut ids = Vec::with_capacity(n);
    let mut addrs: Vec<IpAddr> = Vec::with_capacity(n);
    for i in 0..n {
        let c = ctl.request(member(i)).await?;
        addrs.push(
            c.ip_context
                .src_ip_addrs
                .first()
                .map(|a| a.addr())
                .ok_or_else(|| anyhow::anyhow!("{} has no address", c.id))?,
        );
        ids.push(c.id);
    }
    let requests_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut pairs = 0;
    for (i, probe) in probes.iter().enumerate() {
        for (j, a) in addrs.iter().enumerate() {
            if i != j {
                first_packet(probe, *a).map_err(|e| anyhow::anyhow!("m{i} -> m{j} ({a}): {e}"))?;
                pairs += 1;
            }
        }
    }
    let mesh_ms = t.elapsed().as_secs_f64() * 1e3;
    for id in ids {
        ctl.close(&id).await?;
    }
    Ok(Round {
        members: n,
        requests_ms,
        mesh_ms,
        pairs,
    })
}

/// `rounds` times: the router serving m0 is deleted; m0's outage until m1 (on the other host)
/// echoes again. The router comes back for the next round.
async fn heal(ctl: &Controller, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let _ns = BenchNetns::create(P, &["m0", "m1"])?;
    let _echo = Echo::start(&format!("{P}-m1"))?;
    let probe = socket_in(&format!("{P}-m0"), 0)?;
    probe.set_read_timeout(Some(Duration::from_millis(1)))?;
    let a = ctl.request(member(0)).await?;
    let b = ctl.request(member(1)).await?;
    let to = b
        .ip_context
        .src_ip_addrs
        .first()
        .map(|a| a.addr())
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    first_packet(&probe, to)?;
    let mut outages = Vec::new();
    for _ in 0..rounds {
        let lost = ctl
            .connection(&a.id)
            .map(|c| c.network_service_endpoint_name)
            .ok_or_else(|| anyhow::anyhow!("m0's connection vanished"))?;
        let t = Instant::now();
        // The router stops forwarding (every interface down), then its namespace goes.
        meshwire_labs::lose::lose_namespace(&format!("{P}-{lost}")).map_err(anyhow::Error::msg)?;
        first_packet(&probe, to).map_err(|e| anyhow::anyhow!("after losing {lost}: {e}"))?;
        outages.push(t.elapsed().as_secs_f64() * 1e3);
        // The lost router comes back (its endpoint registered again) for the next round.
        router_ns(&lost)?;
        let node = if lost == "r2" { "n2" } else { "n1" };
        ctl.apply(Manifest::parse(
            "bench",
            &format!("apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {lost}}}\nspec: {{network_service_names: [db], location: {{node: {node}, netns: {P}-{lost}}}}}\n"),
        )?)
        .await?;
        ctl.reconcile_once().await?;
    }
    ctl.close(&a.id).await?;
    ctl.close(&b.id).await?;
    Ok(outages)
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let big = ((100.0 * scale).round() as usize).max(10);
    let rounds = ((5.0 * scale).round() as usize).max(2);
    let _hosts = BenchNetns::create(P, &["n1", "n2", "r1", "r2", "r3"])?;
    sh(&format!(
        "ip -n {P}-n1 link add eth1 type veth peer name eth1 netns {P}-n2 && ip -n {P}-n1 addr add 192.168.231.1/24 dev eth1 && ip -n {P}-n2 addr add 192.168.231.2/24 dev eth1 && ip -n {P}-n1 link set eth1 up && ip -n {P}-n2 link set eth1 up"
    ))?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(&dir.path().join("bench.redb"))?);
    let ctl = Controller::start(
        store,
        Arc::new(KernelDriver::new()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(Manifest::parse("bench", &manifests())?).await?;
    // The routers' mesh first (three peer legs), as an operator's vL3 stands before members.
    ctl.reconcile_once().await?;
    let reconciler = ctl.spawn_reconciler(Duration::from_millis(250));
    let small = mesh(&ctl, 10).await?;
    let large = mesh(&ctl, big).await?;
    let mut outages = heal(&ctl, rounds).await?;
    reconciler.abort();
    let mut two = crate::vl3_domains::run(5, rounds).await?;

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "members (2 hosts, 3 routers)",
        "requests ms",
        "full mesh ms",
        "pairs confirmed",
    ]);
    for r in [&small, &large] {
        t.add_row(vec![
            r.members.to_string(),
            format!("{:.0}", r.requests_ms),
            format!("{:.0}", r.mesh_ms),
            r.pairs.to_string(),
        ]);
    }
    println!("{t}");
    let (h50, hmax) = (
        pct(&mut outages, 0.5),
        outages.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "heal (router of m0 deleted -> m0 reaches m1 again): p50 {h50:.0} ms, max {hmax:.0} ms over {} rounds",
        outages.len()
    );
    let (d50, dmax) = (
        pct(&mut two.heal_ms, 0.5),
        two.heal_ms.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "two domains ({} members each, two controllers, two stores): every pair across them ({}) confirmed {:.0} ms after the first request; heal of a home member seen from the other domain: p50 {d50:.0} ms, max {dmax:.0} ms over {} rounds",
        two.members, two.pairs, two.mesh_ms, two.heal_ms.len()
    );
    println!(
        "vl3: mesh_10_ms={:.0} mesh_{}_ms={:.0} requests_{}_ms={:.0} heal_p50_ms={h50:.0} heal_max_ms={hmax:.0} domains_mesh_ms={:.0} domains_heal_p50_ms={d50:.0} domains_heal_max_ms={dmax:.0}",
        small.mesh_ms, large.members, large.mesh_ms, large.members, large.requests_ms, two.mesh_ms
    );
    Ok(())
}
