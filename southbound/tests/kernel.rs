//! Input: connections handed to the kernel driver, in network namespaces made for each test.
//! Output: what `ip` sees, whether ping passes, and what `observe` reports after we break things.
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set (CI), where it must run.

use std::process::Command;

use std::sync::atomic::{AtomicU64, Ordering};

use meshwire_controller::driver::{
    Desired, Driver, DriverError, Happened, Health, Observation, Scope,
};
use meshwire_models::{
    ClientRef, Connection, ConnectionState, Hop, IpContext, Mechanism, Payload, Placement, Route,
    Topology,
};
use meshwire_southbound::KernelDriver;

static VERSION: AtomicU64 = AtomicU64::new(1);

fn version() -> u64 {
    VERSION.fetch_add(1, Ordering::SeqCst) + 1
}

const SCOPE: Scope = Scope::Forwarder(meshwire_models::ForwarderKind::Kernel);

async fn apply(d: &KernelDriver, c: &Connection) -> Result<(), DriverError> {
    d.converge(&Desired::upsert(SCOPE, version(), c))
        .await
        .map(drop)
}

async fn remove(d: &KernelDriver, c: &Connection) -> Result<(), DriverError> {
    d.converge(&Desired::remove(SCOPE, version(), c))
        .await
        .map(drop)
}

/// A full set: what the driver sees of `desired` (it sweeps too).
async fn observe(d: &KernelDriver, desired: &[Connection]) -> Result<Observation, DriverError> {
    Ok(
        d.converge(&Desired::full(SCOPE, version(), desired.to_vec()))
            .await?
            .observation,
    )
}

/// A full set in `topology`: how many objects it swept.
async fn sweep(d: &KernelDriver, desired: &[Connection], topology: &Topology) -> usize {
    d.topology(topology).await.unwrap();
    d.converge(&Desired::full(SCOPE, version(), desired.to_vec()))
        .await
        .unwrap()
        .swept
}

/// Namespaces created for one test and deleted when it ends, even on failure.
struct Netns(Vec<String>);

impl Netns {
    fn new(tag: &str, names: &[&str]) -> Option<Netns> {
        if !nix_is_root() {
            assert!(
                std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
                "kernel tests need root"
            );
            eprintln!("SKIP: not root");
            return None;
        }
        let all: Vec<String> = names
            .iter()
            .map(|n| format!("mwt{}-{tag}-{n}", std::process::id() % 10000))
            .collect();
        for n in &all {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        Some(Netns(all))
    }
    fn name(&self, i: usize) -> String {
        self.0[i].clone()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `addr` answers within 5 s, probing every 200 ms: a new bridge port may stay disabled
/// until the kernel's rate-limited link-watch work runs (up to a second under load).
fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "1", "-i", "0.2", "-w", "5", addr,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn conn(id: &str, m: Mechanism, placement: Placement, payload: Payload, mtu: u32) -> Connection {
    Connection {
        id: id.into(),
        network_service: "s".into(),
        network_service_endpoint_name: "e".into(),
        payload,
        client: ClientRef {
            node: "n".into(),
            name: None,
        },
        labels: Default::default(),
        interface: "nsm-1".into(),
        preferences: vec![],
        path: vec![],
        hops: vec![Hop {
            from: "a".into(),
            to: "b".into(),
            link: None,
            mechanism: m,
        }],
        placement,
        ip_context: IpContext {
            src_ip_addrs: vec!["172.16.0.1/31".parse().unwrap()],
            dst_ip_addrs: vec!["172.16.0.0/31".parse().unwrap()],
            src_routes: vec![Route {
                prefix: "10.60.0.0/16".parse().unwrap(),
                next_hop: Some("172.16.0.0".parse().unwrap()),
            }],
            ..Default::default()
        },
        address_pool: None,
        mtu,
        state: ConnectionState::Programming,
        created_at_ms: 0,
        updated_at_ms: 0,
        generation: 0,
        last_error: None,
        chain: Default::default(),
        request_key: None,
        vl3: None,
        dns_context: None,
    }
}

/// A veth connection `nsm-1` ↔ `nse-<first 8 of id>` between `c_ns` and `e_ns`, IP payload.
fn veth(id: &str, c_ns: &str, e_ns: &str) -> Connection {
    let m = Mechanism::Kernel {
        interface: "nsm-1".into(),
        peer_interface: format!("nse-{}", &id[..8]),
    };
    let placement = Placement {
        client_netns: Some(c_ns.to_string()),
        endpoint_netns: Some(e_ns.to_string()),
        ..Default::default()
    };
    conn(id, m, placement, Payload::Ip, 1500)
}

/// Input: a veth connection; its endpoint's namespace deleted (`ip netns del`, as a workload
/// is torn down). Output: the driver says so at once (the namespace itself lives on while our
/// sockets are in it, so no interface deletion is heard: its name going is the news), and the
/// next full set reports the endpoint lost.
#[tokio::test]
async fn dev_a_deleted_namespace_is_reported_at_once() {
    let Some(ns) = Netns::new("nsgone", &["c", "e"]) else {
        return;
    };
    let (c_ns, e_ns) = (ns.name(0), ns.name(1));
    let id = "33333333-cccc";
    let c = veth(id, &c_ns, &e_ns);
    let d = KernelDriver::new();
    apply(&d, &c).await.unwrap();
    let mut events = d.subscribe().expect("the kernel driver reports events");
    sh(&format!("ip netns del {e_ns}"));
    let gone = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.unwrap();
            if matches!(&e.happened, Happened::NamespaceGone { .. }) {
                return e;
            }
        }
    })
    .await
    .expect("NamespaceGone within 10 s");
    assert_eq!(
        gone.happened,
        Happened::NamespaceGone {
            netns: e_ns.clone()
        }
    );
    let obs = observe(&d, std::slice::from_ref(&c)).await.unwrap();
    assert!(
        matches!(obs.connections.get(id), Some(Health::EndpointLost { .. })),
        "{obs:?}"
    );
    remove(&d, &c).await.unwrap();
}

#[tokio::test]
async fn dev_veth_apply_is_idempotent_repairs_and_removes_only_ours() {
    let Some(ns) = Netns::new("veth", &["c", "e"]) else {
        return;
    };
    let (c_ns, e_ns) = (ns.name(0), ns.name(1));
    let id = "11111111-aaaa";
    let c = veth(id, &c_ns, &e_ns);
    let d = KernelDriver::new();
    apply(&d, &c).await.unwrap();
    apply(&d, &c).await.unwrap();
    assert!(ping(&c_ns, "172.16.0.0"));
    assert!(sh(&format!("ip -n {c_ns} route show proto 200"))
        .contains("10.60.0.0/16 via 172.16.0.0 dev nsm-1"));
    assert!(sh(&format!("ip -n {e_ns} -d link show nse-11111111"))
        .contains(&format!("alias meshwire:{id}")));
    assert!(observe(&d, std::slice::from_ref(&c))
        .await
        .unwrap()
        .connections
        .is_empty());

    // Somebody deletes the endpoint side: the driver reports it at once (both ends of the pair
    // go), then a full set sees it missing, and a delta repairs it.
    let mut events = d.subscribe().expect("the kernel driver reports events");
    sh(&format!("ip -n {e_ns} link del nse-11111111"));
    let gone = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .unwrap();
    assert!(
        matches!(&gone.happened, Happened::InterfaceGone { ifname, .. } if ifname == "nse-11111111" || ifname == "nsm-1"),
        "{gone:?}"
    );
    assert!(gone.detail.contains(id), "{gone:?}");
    let obs = observe(&d, std::slice::from_ref(&c)).await.unwrap();
    assert!(
        matches!(obs.connections.get(id), Some(Health::Missing { .. })),
        "{obs:?}"
    );
    apply(&d, &c).await.unwrap();
    assert!(ping(&c_ns, "172.16.0.0"));

    remove(&d, &c).await.unwrap();
    remove(&d, &c).await.unwrap();
    // Out of service and the client's name free at once (the endpoint's end has lost its
    // carrier); both deleted from the kernel in the next batch.
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
    assert!(
        sh(&format!("ip -n {e_ns} link")).contains("LOWERLAYERDOWN")
            || !sh(&format!("ip -n {e_ns} link")).contains("nse-")
    );
    d.settled().await;
    assert!(!sh(&format!("ip -n {e_ns} link")).contains("nse-"));
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("mwr"));
    assert!(!sh(&format!("ip -n {e_ns} link")).contains("mwr"));

    // An interface of the same name that is not ours: refused, and left alone by remove.
    sh(&format!("ip -n {c_ns} link add nsm-1 type bridge"));
    let err = apply(&d, &c).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists and is not this connection's"),
        "{err}"
    );
    remove(&d, &c).await.unwrap();
    assert!(sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
}

#[tokio::test]
async fn dev_vxlan_between_nodes_into_workload_namespaces_and_lost_endpoint() {
    // Two nodes joined by an underlay veth; one workload namespace on each.
    let Some(ns) = Netns::new("vx", &["n1", "n2", "c", "e"]) else {
        return;
    };
    let (n1, n2, c_ns, e_ns) = (ns.name(0), ns.name(1), ns.name(2), ns.name(3));
    sh(&format!(
        "ip -n {n1} link add eth1 type veth peer name eth1 netns {n2} && ip -n {n1} addr add 192.168.77.1/24 dev eth1 && ip -n {n2} addr add 192.168.77.2/24 dev eth1 && ip -n {n1} link set eth1 up && ip -n {n2} link set eth1 up"
    ));
    let id = "22222222-bbbb";
    let m = Mechanism::Vxlan {
        vni: 5001,
        src_ip: "192.168.77.1".parse().unwrap(),
        dst_ip: "192.168.77.2".parse().unwrap(),
        port: 4789,
    };
    let placement = Placement {
        client_netns: Some(c_ns.clone()),
        client_node_netns: Some(n1.clone()),
        endpoint_netns: Some(e_ns.clone()),
        endpoint_node_netns: Some(n2.clone()),
        bridge: None,
        endpoint_device: None,
        client_device: None,
    };
    let c = conn(id, m, placement, Payload::Ip, 1450);
    let d = KernelDriver::new();
    apply(&d, &c).await.unwrap();
    apply(&d, &c).await.unwrap();
    assert!(ping(&c_ns, "172.16.0.0"), "ping across VXLAN");
    let link = sh(&format!("ip -n {c_ns} -d link show nsm-1"));
    assert!(
        link.contains("vxlan id 5001") && link.contains("mtu 1450"),
        "{link}"
    );
    assert!(
        !sh(&format!("ip -n {n1} link")).contains("nsm-1"),
        "the device lives in the workload namespace"
    );

    // The endpoint's namespace disappears: reported lost, and remove still succeeds.
    sh(&format!("ip netns del {e_ns}"));
    let obs = observe(&d, std::slice::from_ref(&c)).await.unwrap();
    assert!(
        matches!(obs.connections.get(id), Some(Health::EndpointLost { .. })),
        "{obs:?}"
    );
    remove(&d, &c).await.unwrap();
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
}

#[tokio::test]
async fn dev_ethernet_endpoint_side_joins_bridge() {
    let Some(ns) = Netns::new("br", &["c1", "c2", "e"]) else {
        return;
    };
    let d = KernelDriver::new();
    let e_ns = ns.name(2);
    for (i, addr) in [(0usize, "10.9.0.2/24"), (1, "10.9.0.3/24")] {
        let id = format!("3333333{i}-cccc");
        let m = Mechanism::Kernel {
            interface: "nsm-1".into(),
            peer_interface: format!("nse-3333333{i}"),
        };
        let placement = Placement {
            client_netns: Some(ns.name(i)),
            endpoint_netns: Some(e_ns.clone()),
            bridge: Some("br-svc".into()),
            ..Default::default()
        };
        let mut c = conn(&id, m, placement, Payload::Ethernet, 1500);
        c.ip_context = IpContext {
            src_ip_addrs: vec![addr.parse().unwrap()],
            dst_ip_addrs: vec!["10.9.0.1/24".parse().unwrap()],
            ..Default::default()
        };
        apply(&d, &c).await.unwrap();
    }
    assert!(
        ping(&ns.name(0), "10.9.0.3"),
        "client to client over the bridge"
    );
    assert!(
        ping(&ns.name(1), "10.9.0.1"),
        "client to the bridge's address"
    );
}

/// Teardown is fast because removal retires (down, renamed, its name free) and deletion follows
/// in batches; whatever a crash left (an interface of a connection nobody holds, a retired one
/// never deleted, a route of ours on nothing desired) is removed by the start sweep, and what
/// is desired or not ours stays.
#[tokio::test]
async fn dev_removal_retires_at_once_and_the_start_sweep_removes_what_a_crash_left() {
    let Some(ns) = Netns::new("sweep", &["c", "e"]) else {
        return;
    };
    let (c_ns, e_ns) = (ns.name(0), ns.name(1));
    let placement = Placement {
        client_netns: Some(c_ns.clone()),
        endpoint_netns: Some(e_ns.clone()),
        ..Default::default()
    };
    let kernel = |i: u32| Mechanism::Kernel {
        interface: format!("nsm-{i}"),
        peer_interface: format!("nse-{i}"),
    };
    // Connection `i`: nsm-i ⇄ nse-i on 172.16.i.0/31, with a route of ours to `route`.
    let routed = |id: &str, i: u32, route: &str| {
        let mut c = conn(id, kernel(i), placement.clone(), Payload::Ip, 1500);
        c.ip_context.src_ip_addrs = vec![format!("172.16.{i}.1/31").parse().unwrap()];
        c.ip_context.dst_ip_addrs = vec![format!("172.16.{i}.0/31").parse().unwrap()];
        c.ip_context.src_routes = vec![Route {
            prefix: route.parse().unwrap(),
            next_hop: Some(format!("172.16.{i}.0").parse().unwrap()),
        }];
        c
    };
    let wanted = routed("aaaaaaaa-1", 1, "10.60.0.0/16");
    let orphan = routed("bbbbbbbb-2", 2, "10.61.0.0/16");
    let retired = conn(
        "cccccccc-3",
        kernel(3),
        placement.clone(),
        Payload::Ip,
        1500,
    );

    let crashed = KernelDriver::new();
    for c in [&wanted, &orphan, &retired] {
        apply(&crashed, c).await.unwrap();
    }
    // Removal returns with the name free, before the kernel has deleted anything.
    remove(&crashed, &retired).await.unwrap();
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("nsm-3"));
    // A crash now: the retired interfaces may or may not be deleted yet; the orphan's wiring
    // stays. Somebody else's interface, with somebody else's alias, is not ours.
    drop(crashed);
    sh(&format!(
        "ip -n {c_ns} link add other0 type bridge && ip -n {c_ns} link set other0 alias theirs:1"
    ));
    // A route of ours that no desired connection installs, on a desired interface.
    sh(&format!(
        "ip -n {c_ns} route add 10.62.0.0/16 via 172.16.1.0 dev nsm-1 proto 200"
    ));
    // A retired interface of the crashed driver that was never deleted.
    sh(&format!(
        "ip -n {c_ns} link add mwr999 type bridge && ip -n {c_ns} link set mwr999 group 19799"
    ));

    let d = KernelDriver::new();
    d.set_sweep_interval(std::time::Duration::ZERO);
    let swept = sweep(&d, std::slice::from_ref(&wanted), &Topology::default()).await;
    let links = sh(&format!("ip -n {c_ns} link"));
    assert!(
        !links.contains("nsm-2") && !links.contains("mwr"),
        "{links}"
    );
    assert!(
        links.contains("nsm-1") && links.contains("other0"),
        "{links}"
    );
    assert!(!sh(&format!("ip -n {e_ns} link")).contains("nse-2"));
    let routes = sh(&format!("ip -n {c_ns} route show proto 200"));
    assert!(
        routes.contains("10.60.0.0/16") && !routes.contains("10.62.0.0/16"),
        "the desired connection's route stays, the stray one goes: {routes}"
    );
    assert!(swept >= 3, "swept {swept}");
    assert!(
        ping(&c_ns, "172.16.1.0"),
        "the desired connection still carries traffic"
    );
    // A second sweep finds nothing.
    assert_eq!(
        sweep(&d, std::slice::from_ref(&wanted), &Topology::default()).await,
        0
    );
    // Once this driver has wired something, a full set is a snapshot that may predate it: what
    // one full set finds unwanted goes only when the next finds it unwanted too.
    let late = routed("dddddddd-4", 4, "10.63.0.0/16");
    apply(&d, &late).await.unwrap();
    assert_eq!(
        sweep(&d, std::slice::from_ref(&wanted), &Topology::default()).await,
        0
    );
    assert!(sh(&format!("ip -n {c_ns} link")).contains("nsm-4"));
    assert!(sweep(&d, std::slice::from_ref(&wanted), &Topology::default()).await >= 2);
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("nsm-4"));
}

/// Input: a VXLAN connection from node n1 to node n2, handed to two drivers, one per node (as
/// node agents hold them), each with both nodes in its topology. Output: each wires only its own
/// side (n1's driver the client's interface, n2's the endpoint's), the two sides carry ping
/// together, each one's full set sweeps nothing of the other's side, a leftover of ours in n2's
/// namespace is swept by n2's driver and never by n1's, and each removes only its own side.
#[tokio::test]
async fn dev_node_drivers_each_wire_their_own_side_of_a_tunnel() {
    let Some(ns) = Netns::new("nd", &["n1", "n2", "c", "e"]) else {
        return;
    };
    let (n1, n2, c_ns, e_ns) = (ns.name(0), ns.name(1), ns.name(2), ns.name(3));
    sh(&format!(
        "ip -n {n1} link add eth1 type veth peer name eth1 netns {n2} && ip -n {n1} addr add 192.168.78.1/24 dev eth1 && ip -n {n2} addr add 192.168.78.2/24 dev eth1 && ip -n {n1} link set eth1 up && ip -n {n2} link set eth1 up"
    ));
    let m = Mechanism::Vxlan {
        vni: 5002,
        src_ip: "192.168.78.1".parse().unwrap(),
        dst_ip: "192.168.78.2".parse().unwrap(),
        port: 4789,
    };
    let placement = Placement {
        client_netns: Some(c_ns.clone()),
        client_node_netns: Some(n1.clone()),
        endpoint_netns: Some(e_ns.clone()),
        endpoint_node_netns: Some(n2.clone()),
        bridge: None,
        endpoint_device: None,
        client_device: None,
    };
    let mut c = conn("33333333-cccc", m, placement, Payload::Ip, 1450);
    c.client.node = "n1".into();
    c.hops[0].from = "n1".into();
    c.hops[0].to = "n2".into();
    let mut topology = Topology::default();
    for (name, netns) in [("n1", &n1), ("n2", &n2)] {
        topology.nodes.insert(
            name.into(),
            serde_json::from_value(serde_json::json!({
                "name": name, "forwarder": "kernel", "netns": netns
            }))
            .unwrap(),
        );
    }
    let (d1, d2) = (KernelDriver::for_node("n1"), KernelDriver::for_node("n2"));
    for d in [&d1, &d2] {
        d.topology(&topology).await.unwrap();
        d.set_sweep_interval(std::time::Duration::ZERO);
    }
    apply(&d1, &c).await.unwrap();
    assert!(sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
    assert!(
        !sh(&format!("ip -n {e_ns} link")).contains("nse-"),
        "n1's driver leaves the endpoint's side to n2's"
    );
    apply(&d2, &c).await.unwrap();
    assert!(ping(&c_ns, "172.16.0.0"), "ping across the two halves");

    // Each one's full set (with a sweep) keeps the other's side.
    for d in [&d1, &d2] {
        assert_eq!(sweep(d, std::slice::from_ref(&c), &topology).await, 0);
        let obs = observe(d, std::slice::from_ref(&c)).await.unwrap();
        assert!(obs.connections.is_empty(), "{obs:?}");
    }
    assert!(ping(&c_ns, "172.16.0.0"), "still after both full sets");

    // A crash's leftover in n2's namespace (our mark, no desired connection): n1's driver never
    // looks there, n2's sweeps it (two sweeps in a row find it unwanted).
    sh(&format!(
        "ip -n {n2} link add mwleft0 type veth peer name mwleft1 && ip -n {n2} link set mwleft0 alias meshwire:99999999-dead"
    ));
    for _ in 0..2 {
        assert_eq!(sweep(&d1, std::slice::from_ref(&c), &topology).await, 0);
    }
    assert!(sh(&format!("ip -n {n2} link")).contains("mwleft0"));
    let swept = sweep(&d2, std::slice::from_ref(&c), &topology).await
        + sweep(&d2, std::slice::from_ref(&c), &topology).await;
    assert_eq!(swept, 1);
    d2.settled().await;
    assert!(!sh(&format!("ip -n {n2} link")).contains("mwleft0"));
    assert!(ping(&c_ns, "172.16.0.0"), "the connection is untouched");

    // n2's driver removes its side only.
    remove(&d2, &c).await.unwrap();
    d2.settled().await;
    assert!(!sh(&format!("ip -n {e_ns} link")).contains("nse-"));
    assert!(sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
    remove(&d1, &c).await.unwrap();
    d1.settled().await;
    assert!(!sh(&format!("ip -n {c_ns} link")).contains("nsm-1"));
}
