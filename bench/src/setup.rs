//! `meshwire bench setup`: connection setup through the real kernel data plane, request to first
//! packet, against the same wiring done by an `ip` script; setup and teardown rates.
//!
//! First packet: a UDP echo runs in the endpoint's namespace; a socket made in the client's
//! namespace sends to the connection's endpoint address every millisecond until the echo returns.
//! Both sockets are created on threads that entered the namespaces: nothing forks per probe.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::store::redb_store::RedbStore;
use meshwire_controller::{Config, ConnectionFilter, Controller, SystemClock};
use meshwire_models::{ClientRef, ConnectionRequest, Manifest};
use meshwire_southbound::KernelDriver;

const P: &str = "mwbench";

pub(crate) fn sh(cmd: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A UDP socket bound inside namespace `ns`.
pub(crate) fn socket_in(ns: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<UdpSocket> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(UdpSocket::bind(("0.0.0.0", port))?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Echoes UDP in `ns` until dropped.
pub(crate) struct Echo(Arc<AtomicBool>);
impl Echo {
    pub(crate) fn start(ns: &str) -> anyhow::Result<Echo> {
        let s = socket_in(ns, 7)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Echo(stop))
    }
}
impl Drop for Echo {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Sends a fresh nonce to `addr:7` every millisecond until that nonce is echoed back (at most
/// 5 s). Matching the nonce, not the source address, means a late echo of an earlier probe never
/// counts, and replies from an anycast endpoint (source: its link address) do.
pub(crate) fn first_packet(probe: &UdpSocket, addr: IpAddr) -> anyhow::Result<()> {
    let to = SocketAddr::new(addr, 7);
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = probe.send_to(&nonce, to);
        while let Ok((n, _)) = probe.recv_from(&mut buf) {
            if buf[..n] == nonce {
                return Ok(());
            }
        }
    }
    bail!("no echo from {addr} within 5 s")
}

/// Named namespaces `<prefix>-<name>`, loopback up, deleted when dropped (and any an earlier
/// run left behind deleted first).
pub(crate) struct BenchNetns(Vec<String>);

impl BenchNetns {
    pub(crate) fn create(prefix: &str, names: &[&str]) -> anyhow::Result<BenchNetns> {
        let ns = BenchNetns(names.iter().map(|n| format!("{prefix}-{n}")).collect());
        ns.delete();
        for n in &ns.0 {
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"))?;
        }
        Ok(ns)
    }

    fn delete(&self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
            // A vL3 member's resolver, when a run ended before its connection closed.
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

struct Namespaces;
impl Namespaces {
    fn create() -> anyhow::Result<Namespaces> {
        let _ = Self::cleanup();
        for n in ["n1", "n2", "c", "e1", "e2"] {
            sh(&format!(
                "ip netns add {P}-{n} && ip -n {P}-{n} link set lo up"
            ))?;
        }
        sh(&format!(
            "ip -n {P}-n1 link add eth1 type veth peer name eth1 netns {P}-n2 && ip -n {P}-n1 addr add 192.168.201.1/24 dev eth1 && ip -n {P}-n2 addr add 192.168.201.2/24 dev eth1 && ip -n {P}-n1 link set eth1 up && ip -n {P}-n2 link set eth1 up"
        ))?;
        Ok(Namespaces)
    }
    fn cleanup() -> anyhow::Result<()> {
        for n in ["n1", "n2", "c", "e1", "e2", "ha", "hb"] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &format!("{P}-{n}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        Ok(())
    }
}
impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Self::cleanup();
    }
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
spec: {{endpoints: ["n1:eth1", "n2:eth1"], addresses: ["192.168.201.1/24", "192.168.201.2/24"]}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {{name: same}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {{name: cross}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {{name: e1}}
spec: {{network_service_names: [same], location: {{node: n1, netns: {P}-e1}}, ipamPrefix: 172.20.0.0/16}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {{name: e2}}
spec: {{network_service_names: [cross], location: {{node: n2, netns: {P}-e2}}, ipamPrefix: 172.21.0.0/16}}
"#
    )
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn count_links(ns: &str) -> usize {
    std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("nsm-") || l.contains("nse-") || l.contains(": mwr"))
                .count()
        })
        .unwrap_or(usize::MAX)
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let n = ((200.0 * scale).round() as usize).max(10);
    let rate_n = ((1000.0 * scale).round() as usize).max(20);
    let _ns = Namespaces::create().context("bench setup needs root and iproute2")?;
    let _echo1 = Echo::start(&format!("{P}-e1"))?;
    let _echo2 = Echo::start(&format!("{P}-e2"))?;
    let probe = socket_in(&format!("{P}-c"), 0)?;
    probe.set_read_timeout(Some(Duration::from_millis(1)))?;

    let dir = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(&dir.path().join("bench.redb"))?);
    let kernel = Arc::new(KernelDriver::new());
    let ctl = Controller::start(
        store,
        kernel.clone(),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(Manifest::parse("bench", &manifests())?).await?;
    let req = |svc: &str, node: &str| ConnectionRequest {
        network_service: svc.into(),
        client: ClientRef {
            node: node.into(),
            name: Some(format!("{P}-c")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    };

    // Meshwire: request -> first packet, same node (veth) and cross node (VXLAN).
    let mut results: Vec<(&str, Vec<f64>)> = Vec::new();
    for (label, svc, node) in [
        ("meshwire same node", "same", "n1"),
        ("meshwire cross node", "cross", "n1"),
    ] {
        let mut lat = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let c = ctl.request(req(svc, node)).await?;
            first_packet(&probe, c.ip_context.dst_ip_addrs[0].addr())?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            ids.push(c.id);
        }
        for id in ids {
            ctl.close(&id).await?;
        }
        kernel.settled().await;
        results.push((label, lat));
    }

    // The floor: the same wiring by an `ip` script.
    for (label, cross) in [
        ("ip script same node", false),
        ("ip script cross node", true),
    ] {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let (c_addr, e_addr) = (
                format!("10.99.{}.{}", i / 64, (i % 64) * 4 + 1),
                format!("10.99.{}.{}", i / 64, (i % 64) * 4),
            );
            let script = if cross {
                format!(
                    "ip -n {P}-n1 link add ipc{i} type vxlan id {vni} local 192.168.201.1 remote 192.168.201.2 dstport 4789 && ip -n {P}-n1 link set ipc{i} netns {P}-c && \
                     ip -n {P}-n2 link add ipe{i} type vxlan id {vni} local 192.168.201.2 remote 192.168.201.1 dstport 4789 && ip -n {P}-n2 link set ipe{i} netns {P}-e2 && \
                     ip -n {P}-c addr add {c_addr}/31 dev ipc{i} && ip -n {P}-e2 addr add {e_addr}/31 dev ipe{i} && ip -n {P}-c link set ipc{i} up && ip -n {P}-e2 link set ipe{i} up",
                    vni = 100_000 + i
                )
            } else {
                format!(
                    "ip -n {P}-c link add ipc{i} type veth peer name ipe{i} netns {P}-e1 && ip -n {P}-c addr add {c_addr}/31 dev ipc{i} && ip -n {P}-e1 addr add {e_addr}/31 dev ipe{i} && ip -n {P}-c link set ipc{i} up && ip -n {P}-e1 link set ipe{i} up"
                )
            };
            let t = Instant::now();
            sh(&script)?;
            first_packet(&probe, e_addr.parse()?)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for i in 0..n {
            let _ = sh(&format!(
                "ip -n {P}-c link del ipc{i}; ip -n {P}-e2 link del ipe{i} 2>/dev/null; true"
            ));
        }
        results.push((label, lat));
    }

    // Setup and teardown rate on one node.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(rate_n);
    for _ in 0..rate_n {
        ids.push(ctl.request(req("same", "n1")).await?.id);
    }
    let setup_rate = rate_n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for id in &ids {
        ctl.close(id).await?;
    }
    let closed_rate = rate_n as f64 / t.elapsed().as_secs_f64();
    // Until the last interface is deleted from the kernel, not only out of service.
    kernel.settled().await;
    let teardown_rate = rate_n as f64 / t.elapsed().as_secs_f64();
    let left = count_links(&format!("{P}-c"))
        + count_links(&format!("{P}-e1"))
        + count_links(&format!("{P}-e2"));
    let claims: usize = ctl.pool_usage().values().sum();
    let live = ctl.connections(&ConnectionFilter::default()).len();

    // Heal outage: two endpoints answer 10.70.0.1; the selected one is cut (its side down, its
    // namespace deleted) and the reconcile loop (250 ms) moves the client to the other.
    let outages = heal_rounds(&ctl, &probe, 5).await?;

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "request -> first packet",
        "p50 ms",
        "p99 ms",
        "samples",
    ]);
    let mut fig = std::collections::BTreeMap::new();
    for (label, lat) in &mut results {
        let (p50, p99) = (pct(lat, 0.5), pct(lat, 0.99));
        t.add_row(vec![
            label.to_string(),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            lat.len().to_string(),
        ]);
        fig.insert(label.replace(' ', "_"), (p50, p99));
    }
    println!("{t}");
    let mut o = outages.clone();
    let (heal_p50, heal_max) = (pct(&mut o, 0.5), o.last().copied().unwrap_or(0.0));
    println!("heal outage (endpoint cut -> echo again, reconcile 250 ms): p50 {heal_p50:.0} ms, max {heal_max:.0} ms over {} rounds (goal < 1000 ms)", outages.len());
    println!("setup: {rate_n} connections on one node at {setup_rate:.0}/s (goal >= 100/s); teardown {teardown_rate:.0}/s until the last interface is deleted (closes answered at {closed_rate:.0}/s); left behind: {left} interfaces, {claims} pool claims, {live} connections");
    let (ms, mc) = (fig["meshwire_same_node"], fig["meshwire_cross_node"]);
    let (is, ic) = (fig["ip_script_same_node"], fig["ip_script_cross_node"]);
    println!(
        "setup: same_p50_ms={:.2} same_p99_ms={:.2} cross_p50_ms={:.2} cross_p99_ms={:.2} ip_same_p50_ms={:.2} ip_same_p99_ms={:.2} ip_cross_p50_ms={:.2} ip_cross_p99_ms={:.2} setup_per_s={setup_rate:.0} teardown_per_s={teardown_rate:.0} close_answered_per_s={closed_rate:.0} heal_p50_ms={heal_p50:.0} heal_max_ms={heal_max:.0} left_interfaces={left} left_claims={claims} ratio_vs_ip_same={:.2} ratio_vs_ip_cross={:.2}",
        ms.0, ms.1, mc.0, mc.1, is.0, is.1, ic.0, ic.1, is.1 / ms.1, ic.1 / mc.1
    );
    Ok(())
}

/// Where heal rounds run: namespaces named `{prefix}-...`, both endpoints on `node`, rounds
/// every `interval` (and at once on a data-plane event).
pub(crate) struct HealPlace {
    pub prefix: &'static str,
    pub node: &'static str,
    pub interval: Duration,
    /// The endpoints' VXLAN numbers start here (a deleted namespace's tunnels leave the kernel
    /// after `ip netns del` returns: each place keeps to numbers of its own).
    pub vni_start: u32,
}

/// An endpoint namespace for the heal rounds, answering 10.70.0.1.
fn heal_endpoint(prefix: &str, name: &str) -> anyhow::Result<Echo> {
    let ns = format!("{prefix}-{name}");
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .stderr(std::process::Stdio::null())
        .status();
    sh(&format!(
        "ip netns add {ns} && ip -n {ns} link set lo up && ip -n {ns} addr add 10.70.0.1/32 dev lo"
    ))?;
    Echo::start(&ns)
}

async fn heal_rounds(
    ctl: &Controller,
    probe: &UdpSocket,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    let place = HealPlace {
        prefix: P,
        node: "n1",
        interval: Duration::from_millis(250),
        vni_start: 20_000,
    };
    heal(ctl, probe, rounds, &place).await
}

/// Heal rounds: two endpoints answer 10.70.0.1; the selected one is cut (its side down, its
/// namespace deleted) and the time until the client's echo comes back is measured.
pub(crate) async fn heal(
    ctl: &Controller,
    probe: &UdpSocket,
    rounds: usize,
    place: &HealPlace,
) -> anyhow::Result<Vec<f64>> {
    let (prefix, node, vni) = (place.prefix, place.node, place.vni_start);
    let reconciler = ctl.spawn_reconciler(place.interval);
    let nse = |name: &str| {
        format!(
            "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {name}}}\nspec: {{network_service_names: [heal], location: {{node: {node}, netns: {prefix}-{name}}}, routes: [10.70.0.0/16], ipamPrefix: 172.23.0.0/16, mechanisms: {{kernel: {{}}, vxlan: {{vniRange: {{start: {vni}, end: {}}}}}}}}}\n",
            vni + 999
        )
    };
    ctl.apply(Manifest::parse(
        "bench",
        "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: heal}\n",
    )?)
    .await?;
    let mut echoes = vec![heal_endpoint(prefix, "ha")?, heal_endpoint(prefix, "hb")?];
    ctl.apply(Manifest::parse(
        "bench",
        &format!("{}---\n{}", nse("ha"), nse("hb")),
    )?)
    .await?;
    let c = ctl
        .request(ConnectionRequest {
            network_service: "heal".into(),
            client: ClientRef {
                node: "n1".into(),
                name: Some(format!("{prefix}-c")),
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: Some("nsm-heal".into()),
            excluded_prefixes: vec![],
            sriov_token: None,
        })
        .await?;
    let anycast: IpAddr = "10.70.0.1".parse()?;
    first_packet(probe, anycast)?;
    let mut outages = Vec::new();
    for _ in 0..rounds {
        let current = ctl.connection(&c.id).context("heal connection vanished")?;
        let lost = current.network_service_endpoint_name.clone();
        let ns = format!("{prefix}-{lost}");
        let t = Instant::now();
        sh(&format!(
            "ip -n {ns} link set {} down && ip netns del {ns}",
            current.endpoint_interface()
        ))?;
        first_packet(probe, anycast).context("traffic did not come back after the heal")?;
        outages.push(t.elapsed().as_secs_f64() * 1e3);
        // Bring the lost endpoint back for the next round.
        echoes.push(heal_endpoint(prefix, &lost)?);
        ctl.apply(Manifest::parse("bench", &nse(&lost))?).await?;
    }
    reconciler.abort();
    ctl.close(&c.id).await?;
    for n in ["ha", "hb"] {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &format!("{prefix}-{n}")])
            .stderr(std::process::Stdio::null())
            .status();
    }
    drop(echoes);
    Ok(outages)
}
