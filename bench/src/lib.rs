//! Meshwire's benchmarks, behind `meshwire bench NAME`: a table, then one last line
//! `NAME: key=value ...` with each figure and each `ratio_vs_<peer>=` (higher is better for us),
//! the peer run side by side in the same run.
//!
//! This crate is the binary's tooling, linked only into `meshwire bench`; like the binary it
//! reports failures with `anyhow`. The product's libraries never depend on it.

mod agents;
mod ensm;
mod failover;
mod grpc;
mod heap;
mod netconf;
mod ovs;
mod rest;
mod setup;
mod snmp;
mod sriov;
mod ui;
mod vl3;
mod vl3_domains;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::state::{Avoid, Config, State};
use meshwire_controller::store::{
    etcd_store::EtcdStore, memory::MemoryStore, redb_store::RedbStore, Expect, Store,
};
use meshwire_controller::{Controller, NullDriver, SystemClock};
use meshwire_labs::etcd::LocalEtcd;
use meshwire_models::mechanism::Capabilities;
use meshwire_models::{
    ClientRef, ConnectionRequest, Destination, EndpointLocation, ForwarderKind, Link, LinkEnd,
    Match, NetworkService, NetworkServiceEndpoint, Node, Object, Payload,
};

#[derive(clap::Args)]
pub struct Args {
    /// core: selection + path on 10,000 nodes / 100,000 endpoints, request/close cycles, memory
    /// per connection. store: writes per second, redb against etcd (needs etcd-server).
    /// setup: request to first packet through the kernel data plane vs an `ip` script, setup and
    /// teardown rates (needs root). openflow: flows per second into a real ovs-vswitchd against
    /// `ovs-ofctl --bundle` and os-ken, and reconcile time. ovsdb: ports per second against
    /// `ovs-vsctl` and the OVS Python IDL (needs openvswitch-switch; the Python peers come from
    /// scripts/bench-deps.sh).
    /// netconf: edit-config + commit round trips against a real netconfd, against ncclient.
    /// snmp: GETs per second against a real snmpd, against snmpget and pysnmp.
    /// ensm: connection setup through an eNSM (emulated appliance lab), request to first packet.
    /// grpc: Request/Close cycles through the NSM-compatible gRPC API (and REST beside it).
    /// rest: the REST API under wrk at 64 connections (GET list, GET one, POST).
    /// ui: the operator page in headless Chromium with 1,000 nodes and 10,000 connections (needs
    /// chromium and chromium-driver).
    /// agents: request to first packet across two hosts wired by node agents over gRPC, beside
    /// the in-process kernel driver (needs root).
    /// failover: three controllers on a three-member etcd, the leader killed ten times: kill to
    /// first acknowledged request, beside client-go's default lease; request throughput with
    /// fenced writes beside unconditional ones (needs etcd-server).
    /// sriov: an SR-IOV VF lent to a pod (request to interface ready) beside a veth on the same
    /// node, and device plugin Allocate round trips per second (needs root; a stand-in PF).
    /// vl3: N members of a vL3 (10, 100) until every pair reaches each other, and a member's
    /// outage when its router is lost (needs root).
    #[arg(value_parser = ["core", "store", "setup", "openflow", "ovsdb", "netconf", "snmp", "ensm", "grpc", "rest", "ui", "agents", "failover", "sriov", "vl3"])]
    name: String,
    /// Scale the workload down (e.g. 0.1) for a quick look; figures are then not comparable.
    #[arg(long, default_value = "1.0")]
    scale: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.name.as_str() {
        "core" => core(args.scale).await,
        "setup" => crate::setup::run(args.scale).await,
        "openflow" => crate::ovs::openflow(args.scale).await,
        "ovsdb" => crate::ovs::ovsdb(args.scale).await,
        "netconf" => crate::netconf::run(args.scale).await,
        "snmp" => crate::snmp::run(args.scale).await,
        "ensm" => crate::ensm::run(args.scale).await,
        "grpc" => crate::grpc::run(args.scale).await,
        "rest" => crate::rest::run(args.scale).await,
        "ui" => crate::ui::run(args.scale).await,
        "agents" => crate::agents::run(args.scale).await,
        "failover" => crate::failover::run(args.scale).await,
        "sriov" => crate::sriov::run(args.scale).await,
        "vl3" => crate::vl3::run(args.scale).await,
        _ => store(args.scale).await,
    }
}

/// A deterministic xorshift generator (benchmarks must be repeatable).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn table(rows: &[(&str, String)]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["measure", "value"]);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v.clone()]);
    }
    t
}

fn node(name: String, i: usize) -> Object {
    let addr = std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    Object::Node(Node {
        name,
        forwarder: ForwarderKind::Kernel,
        underlay_address: Some(addr.into()),
        netns: None,
        ovsdb: None,
        labels: Default::default(),
    })
}

fn link(a: &str, b: &str, cost: u32) -> Object {
    let end = |v: &str, other: &str| LinkEnd {
        vertex: v.to_string(),
        interface: format!("to-{other}"),
        address: None,
    };
    Object::Link(Link {
        name: format!("{a}--{b}"),
        a: end(a, b),
        b: end(b, a),
        mtu: 9000,
        cost,
        up: true,
    })
}

/// A 10,000-node three-tier Clos: 4 super-spines; 48 pods of 4 spines and 204 leaves (each leaf
/// to its pod's 4 spines, each spine to every super-spine); 12 border leaves on the super-spines.
fn clos(scale: f64) -> (Vec<Object>, Vec<String>) {
    let pods = ((48.0 * scale).round() as usize).max(2);
    let mut objs = Vec::new();
    let mut leaves = Vec::new();
    let mut i = 0;
    let mut add = |objs: &mut Vec<Object>, name: String| {
        objs.push(node(name, i));
        i += 1;
    };
    for s in 0..4 {
        add(&mut objs, format!("super{s}"));
    }
    for p in 0..pods {
        for s in 0..4 {
            let spine = format!("p{p}-spine{s}");
            add(&mut objs, spine.clone());
            for ss in 0..4 {
                objs.push(link(&spine, &format!("super{ss}"), 10));
            }
        }
        for l in 0..204 {
            let leaf = format!("p{p}-leaf{l}");
            add(&mut objs, leaf.clone());
            for s in 0..4 {
                objs.push(link(&leaf, &format!("p{p}-spine{s}"), 10));
            }
            leaves.push(leaf);
        }
    }
    for b in 0..12 {
        let leaf = format!("border{b}");
        add(&mut objs, leaf.clone());
        for ss in 0..4 {
            objs.push(link(&leaf, &format!("super{ss}"), 10));
        }
        leaves.push(leaf);
    }
    (objs, leaves)
}

fn endpoint(name: String, service: &str, node: &str, zone: usize) -> Object {
    Object::NetworkServiceEndpoint(NetworkServiceEndpoint {
        name,
        network_service_names: vec![service.to_string()],
        network_service_labels: [(
            service.to_string(),
            [
                ("app".to_string(), service.to_string()),
                ("zone".to_string(), format!("z{zone}")),
            ]
            .into(),
        )]
        .into(),
        url: None,
        expires_at_ms: None,
        location: EndpointLocation::Node {
            node: node.to_string(),
            netns: None,
        },
        mechanisms: Capabilities::default(),
        capacity: None,
        ipam_prefix: None,
        routes: vec![],
        interface: None,
        bridge: None,
        next: None,
    })
}

/// Services with zone-affine matches (a client labelled zone=zN prefers endpoints in zN, falls
/// through to any), and `per_service` endpoints each on random leaves.
fn populate(state: &mut State, scale: f64, rng: &mut Rng) -> (Vec<String>, usize, usize, usize) {
    let (topo, leaves) = clos(scale);
    let nodes = topo.iter().filter(|o| matches!(o, Object::Node(_))).count();
    for o in topo {
        state.upsert(o);
    }
    let services = ((1000.0 * scale).round() as usize).max(1);
    let per_service = 100;
    for s in 0..services {
        let name = format!("svc{s}");
        let zone_match = Match {
            source_selector: Default::default(),
            routes: vec![Destination {
                destination_selector: [("zone".to_string(), "{{.zone}}".to_string())].into(),
                weight: None,
            }],
            fallthrough: true,
            labels: Default::default(),
        };
        state.upsert(Object::NetworkService(NetworkService {
            name: name.clone(),
            vl3: None,
            payload: Payload::Ip,
            matches: vec![zone_match, Match::default()],
        }));
        for e in 0..per_service {
            let leaf = &leaves[rng.below(leaves.len())];
            state.upsert(endpoint(format!("{name}-e{e}"), &name, leaf, rng.below(4)));
        }
    }
    (leaves, nodes, services, services * per_service)
}

fn bench_request(leaves: &[String], services: usize, rng: &mut Rng) -> ConnectionRequest {
    ConnectionRequest {
        network_service: format!("svc{}", rng.below(services)),
        client: ClientRef {
            node: leaves[rng.below(leaves.len())].clone(),
            name: Some(format!("w{}", rng.below(1_000_000))),
        },
        labels: [("zone".to_string(), format!("z{}", rng.below(4)))].into(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    }
}

async fn core(scale: f64) -> anyhow::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let config = Config {
        ipam_prefix: "100.64.0.0/10".parse()?,
        ..Config::default()
    };

    // 1. Selection + path (+ negotiation and claims) on the big topology.
    let mut state = State::new(config.clone());
    let (leaves, nodes, services, endpoints) = populate(&mut state, scale, &mut rng);
    let samples = 20_000;
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let req = bench_request(&leaves, services, &mut rng);
        let t = Instant::now();
        let c = state
            .plan(&req, &format!("b{i}"), 0, &Avoid::default(), None)
            .context("planning")?;
        lat.push(t.elapsed());
        state.unclaim(&c);
    }
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));

    // 2. Heap per live connection: 100,000 planned and recorded connections in the state.
    let live = ((100_000.0 * scale).round() as usize).max(1000);
    let before = crate::heap::in_use() as i64;
    for i in 0..live {
        let req = bench_request(&leaves, services, &mut rng);
        let c = state.plan(&req, &format!("{:032x}", i), 0, &Avoid::default(), None)?;
        state.commit(c);
    }
    let per_conn = (crate::heap::in_use() as i64 - before) as f64 / live as f64;
    drop(state);

    // 3. Request/close cycles through the controller (memory store, no data plane), one core.
    let cycles = ((100_000.0 * scale).round() as usize).max(1000);
    let rate = std::thread::spawn(move || -> anyhow::Result<f64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ctl = Controller::start(
                Arc::new(MemoryStore::default()),
                Arc::new(NullDriver),
                Arc::new(SystemClock),
                config,
            )
            .await?;
            let mut m = meshwire_models::Manifest::default();
            m.objects.push(node("n1".into(), 1));
            m.objects.push(node("n2".into(), 2));
            m.objects.push(link("n1", "n2", 10));
            m.objects.push(Object::NetworkService(NetworkService {
                name: "svc0".into(),
                vl3: None,
                payload: Payload::Ip,
                matches: vec![],
            }));
            for e in 0..4 {
                m.objects.push(endpoint(format!("e{e}"), "svc0", "n2", 0));
            }
            ctl.apply(m).await?;
            let req = ConnectionRequest {
                network_service: "svc0".into(),
                client: ClientRef {
                    node: "n1".into(),
                    name: None,
                },
                labels: Default::default(),
                mechanisms: vec![],
                interface: None,
                excluded_prefixes: vec![],
                sriov_token: None,
            };
            let t = Instant::now();
            for _ in 0..cycles {
                let c = ctl.request(req.clone()).await?;
                ctl.close(&c.id).await?;
            }
            Ok(cycles as f64 / t.elapsed().as_secs_f64())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??;

    println!(
        "{}",
        table(&[
            (
                "topology",
                format!("{nodes} nodes (3-tier Clos), {endpoints} endpoints, {services} services")
            ),
            (
                "select+path+negotiate p50",
                format!("{p50:.1} µs (goal p99 < 1000)")
            ),
            ("select+path+negotiate p99", format!("{p99:.1} µs")),
            (
                "request/close cycles, 1 core",
                format!("{rate:.0}/s (goal > 20000)")
            ),
            (
                "heap per live connection",
                format!("{per_conn:.0} B at {live} live (goal < 2048)")
            ),
        ])
    );
    println!("core: select_path_p50_us={p50:.1} select_path_p99_us={p99:.1} cycles_per_s={rate:.0} bytes_per_conn={per_conn:.0} nodes={nodes} endpoints={endpoints}");
    Ok(())
}

async fn write_rate(
    store: Arc<dyn Store>,
    writers: usize,
    per_writer: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let value = vec![b'x'; 1024];
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, value, tag) = (store.clone(), value.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                store
                    .put(&format!("/bench/{tag}/{w}/{i}"), value.clone(), Expect::Any)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((writers * per_writer) as f64 / t.elapsed().as_secs_f64())
}

async fn store(scale: f64) -> anyhow::Result<()> {
    let n = ((2000.0 * scale).round() as usize).max(100);
    let dir = tempfile::tempdir()?;
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("bench.redb"))?);
    let etcd = LocalEtcd::start()
        .await
        .context("bench store needs etcd-server (apt-get install etcd-server)")?;
    let etcd_store: Arc<dyn Store> = Arc::new(EtcdStore::connect_with(&[etcd.url()], None).await?);
    let mut figures = BTreeMap::new();
    for (name, s) in [("redb", redb), ("etcd", etcd_store)] {
        figures.insert(
            format!("{name}_seq_wps"),
            write_rate(s.clone(), 1, n, "seq").await?,
        );
        figures.insert(
            format!("{name}_16_wps"),
            write_rate(s, 16, n / 16, "par").await?,
        );
    }
    let ratio_seq = figures["redb_seq_wps"] / figures["etcd_seq_wps"];
    let ratio_16 = figures["redb_16_wps"] / figures["etcd_16_wps"];
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "store (1 KiB values, fsync per commit)",
        "1 writer",
        "16 writers",
    ]);
    for name in ["redb", "etcd"] {
        t.add_row(vec![
            name.to_string(),
            format!("{:.0} writes/s", figures[&format!("{name}_seq_wps")]),
            format!("{:.0} writes/s", figures[&format!("{name}_16_wps")]),
        ]);
    }
    println!("{t}");
    println!(
        "store: redb_seq_wps={:.0} redb_16_wps={:.0} etcd_seq_wps={:.0} etcd_16_wps={:.0} ratio_vs_etcd={ratio_seq:.2} ratio_vs_etcd_16={ratio_16:.2}",
        figures["redb_seq_wps"], figures["redb_16_wps"], figures["etcd_seq_wps"], figures["etcd_16_wps"]
    );
    Ok(())
}
