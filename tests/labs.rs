//! Input: the seed labs in labs/, brought up with `meshwire lab up` as a user would, and
//! requests through the lab's controller. Output: real traffic (ping, iperf3) between the
//! namespaces, and the outage when an endpoint is lost.
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set (CI), where it must run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::lab::{http_get, lab_file, nsm_stubs, root, Lab, BIN};

fn addr(v: &serde_json::Value, field: &str) -> String {
    v["ip_context"][field][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn nb_lab_vpn_gateway_ping_and_iperf3_to_the_corporate_network() {
    if !root() {
        return;
    }
    let lab = Lab::up("vpn-gateway");
    let c = lab.request(&[
        "secure-intranet-connectivity",
        "--client",
        "worker",
        "--name",
        "clab-vpn-gateway-client",
        "--label",
        "app=sarah",
    ]);
    assert_eq!(
        c["hops"][0]["mechanism"]["type"], "kernel",
        "same host: veth"
    );
    // The client never configured anything: its route to the corporate network is ours.
    let routes = String::from_utf8(
        Command::new("ip")
            .args(["-n", &lab.ns("client"), "route", "show", "proto", "200"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        routes.contains("10.60.0.0/16 via 172.16.10.0 dev nsm-1"),
        "{routes}"
    );
    assert!(
        lab.ping("client", "10.60.0.10"),
        "client reaches corp through the gateway"
    );
    // iperf3 through the gateway.
    let bps = iperf3(&lab, "corp", "client", "10.60.0.10", 5399, 1);
    eprintln!(
        "iperf3 client -> corp through the gateway: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 0.0);
    let inspect = lab.meshwire(&["lab", "inspect", lab_file("vpn-gateway").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("172.16.10.1/31"));
    // Close: the client's interface is gone again.
    let out = lab.meshwire(&["close", c["id"].as_str().unwrap()]);
    assert!(out.status.success());
    assert!(lab.silent("client", "10.60.0.10"));
}

#[test]
fn nb_lab_bridge_three_clients_one_l2_domain() {
    if !root() {
        return;
    }
    let lab = Lab::up("bridge");
    let addrs: Vec<String> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| {
            addr(
                &lab.request(&[
                    "l2-bridge",
                    "--client",
                    "worker",
                    "--name",
                    &format!("clab-bridge-{c}"),
                ]),
                "src_ip_addrs",
            )
        })
        .collect();
    assert!(
        lab.ping("c1", &addrs[1]) && lab.ping("c1", &addrs[2]) && lab.ping("c3", &addrs[1]),
        "{addrs:?}"
    );
    assert!(lab.ping("c2", "10.80.0.1"), "the bridge's own address");
}

#[test]
fn nb_lab_two_node_negotiates_vxlan() {
    if !root() {
        return;
    }
    let lab = Lab::up("two-node");
    let c = lab.request(&[
        "two-node",
        "--client",
        "n1",
        "--name",
        "clab-two-node-client",
    ]);
    assert_eq!(c["hops"][0]["mechanism"]["type"], "vxlan", "{c}");
    assert_eq!(c["hops"][0]["mechanism"]["vni"], 7000);
    assert!(
        lab.ping("client", &addr(&c, "dst_ip_addrs")),
        "traffic crosses the VXLAN between hosts"
    );
    // A client that insists on a veth across hosts is refused, with the reason.
    let out = lab.meshwire(&[
        "request",
        "two-node",
        "--client",
        "n1",
        "--name",
        "clab-two-node-client",
        "--mechanism",
        "kernel",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a local mechanism cannot cross a link"));
}

#[test]
fn timer_lab_heal_moves_client_to_the_other_endpoint() {
    if !root() {
        return;
    }
    let lab = Lab::up("heal");
    let c = lab.request(&[
        "icmp-responder",
        "--client",
        "worker",
        "--name",
        "clab-heal-client",
    ]);
    let (id, first) = (
        c["id"].as_str().unwrap().to_string(),
        c["network_service_endpoint_name"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert!(lab.ping("client", "10.70.0.1"));
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("client"),
            "ping",
            "-i",
            "0.02",
            "-D",
            "-O",
            "-w",
            "30",
            "10.70.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A measurement window, not a wait for a state: 500 ms of replies before the loss.
    std::thread::sleep(Duration::from_millis(500));
    // The endpoint is lost: its side stops forwarding and its namespace is deleted.
    let ep_if = format!("nse-{}", &id.replace('-', "")[..8]);
    assert!(Command::new("ip")
        .args(["-n", &lab.ns(&first), "link", "set", &ep_if, "down"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["netns", "del", &lab.ns(&first)])
        .status()
        .unwrap()
        .success());
    // The controller's own event: the connection is up again, on another endpoint.
    lab.wait_event(Duration::from_secs(20), |e| {
        e["event"] == "connection"
            && e["id"] == id.as_str()
            && e["state"] == "up"
            && e["endpoint"] != first.as_str()
    })
    .expect("healed onto the other endpoint");
    let healed = lab.connection(&id);
    assert_eq!(
        (healed["id"].as_str(), healed["interface"].as_str()),
        (Some(id.as_str()), Some("nsm-1"))
    );
    // A measurement window: 500 ms of replies after the heal.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &ping.id().to_string()])
        .status();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let outage = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "heal outage (largest gap between ping replies, 20 ms interval): {:.0} ms",
        outage * 1000.0
    );
    assert!(
        times.len() > 10 && times.last().unwrap() > &(times[0] + outage),
        "traffic flows again after the heal"
    );
}

#[test]
fn nb_lab_bad_file_refused_before_anything_is_created() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "name: badlab\ntopology:\n  nodes:\n    a: {kind: linux}\n  links:\n    - endpoints: [\"a:eth1\", \"ghost:eth1\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["lab", "up", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:6: link endpoint \"ghost:eth1\": unknown node \"ghost\""),
        "{err}"
    );
    let ns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!ns.contains("clab-badlab-"), "{ns}");
    // A failing exec half way is rolled back and names the step.
    std::fs::write(
        &f,
        "name: badlab\ntopology:\n  nodes:\n    a: {kind: linux, exec: [\"false\"]}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["lab", "up", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node a: exec `false`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!ns.contains("clab-badlab-"), "rolled back: {ns}");
}

/// iperf3 for `secs` seconds from `client` to `addr` (server `server` on `port`); received bits/s.
fn iperf3(lab: &Lab, server: &str, client: &str, addr: &str, port: u16, secs: u32) -> f64 {
    let srv = lab.iperf3_server(server, port);
    let out = lab.exec(
        client,
        &[
            "iperf3",
            "-c",
            addr,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    drop(srv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// `cookie -> (duration seconds, n_packets)` of the flows on an ovs node's br-int.
fn ovs_flows(lab: &Lab, node: &str) -> Vec<(String, f64, u64)> {
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow13", "dump-flows"])
        .arg(format!(
            "unix:/run/meshwire/labs/{}/ovs/{node}/br-int.mgmt",
            lab.name
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("cookie="))
        .map(|l| {
            let field = |k: &str| {
                l.split(&format!("{k}="))
                    .nth(1)
                    .and_then(|r| r.split([',', 's', ' ']).next())
                    .unwrap_or("")
                    .to_string()
            };
            (
                field("cookie"),
                field("duration").parse().unwrap_or(0.0),
                field("n_packets").parse().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn nb_lab_ovs_two_node_vxlan_gre_mpls_carry_ping_and_iperf3() {
    if !root() {
        return;
    }
    let lab = Lab::up("ovs-two-node");
    let mut conns = Vec::new();
    for m in ["vxlan", "gre", "mpls"] {
        let c = lab.request(&[
            "tunnel-gateway",
            "--client",
            "n1",
            "--name",
            &format!("clab-ovs-two-node-c-{m}"),
            "--mechanism",
            m,
        ]);
        assert_eq!(c["hops"][0]["mechanism"]["type"], m, "{c}");
        assert_eq!(c["state"], "up", "{c}");
        conns.push((m, c));
    }
    for (i, (m, c)) in conns.iter().enumerate() {
        let client = format!("c-{m}");
        let dst = addr(c, "dst_ip_addrs");
        assert!(lab.ping(&client, &dst), "{m}: ping across Open vSwitch");
        let bps = iperf3(&lab, "gateway", &client, &dst, 5301 + i as u16, 1);
        eprintln!("iperf3 over OVS {m}: {:.2} Gbit/s", bps / 1e9);
        assert!(bps > 1e6, "{m}: iperf3 carried {bps} bit/s");
    }
    // Every flow on the nodes is ours (cookie tag 0x4d57), two per connection per node plus the
    // uplink wiring.
    for node in ["n1", "n2"] {
        let flows = ovs_flows(&lab, node);
        assert_eq!(flows.len(), 2 + 3 * 2, "{node}: {flows:?}");
        assert!(flows.iter().all(|f| f.0.starts_with("0x4d57")), "{flows:?}");
    }
    // Closing one removes its flows and ports, and leaves the others.
    let (_, gre) = &conns[1];
    assert!(lab
        .meshwire(&["close", gre["id"].as_str().unwrap()])
        .status
        .success());
    assert_eq!(ovs_flows(&lab, "n1").len(), 2 + 2 * 2);
    let ports = Command::new("ovs-vsctl")
        .arg("--db=unix:/run/meshwire/labs/ovs-two-node/ovs/n2/db.sock")
        .args(["list-ports", "br-int"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout).to_string();
    let id8: String = gre["id"].as_str().unwrap().chars().take(8).collect();
    assert!(!ports.contains(&id8), "{ports}");
    assert!(lab.ping("c-vxlan", &addr(&conns[0].1, "dst_ip_addrs")));
}

#[test]
fn timer_lab_ovs_controller_and_vswitchd_restart_during_iperf3() {
    if !root() {
        return;
    }
    let lab = Lab::up("ovs-two-node");
    let c = lab.request(&[
        "tunnel-gateway",
        "--client",
        "n1",
        "--name",
        "clab-ovs-two-node-c-vxlan",
        "--mechanism",
        "vxlan",
    ]);
    let dst = addr(&c, "dst_ip_addrs");
    assert!(lab.ping("c-vxlan", &dst));
    let srv = lab.iperf3_server("gateway", 5391);
    let client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("c-vxlan"),
            "iperf3",
            "-c",
            &dst,
            "-p",
            "5391",
            "-t",
            "20",
            "-i",
            "0.5",
            "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A measurement window: iperf3 runs 1.5 s before anything is touched.
    std::thread::sleep(Duration::from_millis(1500));

    // Another tool's flow and port on the same bridge: Meshwire must never touch them.
    let mgmt = "unix:/run/meshwire/labs/ovs-two-node/ovs/n1/br-int.mgmt";
    assert!(Command::new("ovs-ofctl")
        .args([
            "-O",
            "OpenFlow13",
            "add-flow",
            mgmt,
            "cookie=0x1234,priority=5,in_port=99,actions=drop"
        ])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ovs-vsctl")
        .args([
            "--db=unix:/run/meshwire/labs/ovs-two-node/ovs/n1/db.sock",
            "add-port",
            "br-int",
            "other0",
            "--",
            "set",
            "interface",
            "other0",
            "type=internal"
        ])
        .status()
        .unwrap()
        .success());

    // 1. The controller crashes and comes back: no flow is deleted or re-added.
    let before = ovs_flows(&lab, "n1");
    let t = Instant::now();
    let out = lab.meshwire(&["lab", "restart", "ovs-two-node", "--kill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A stability window, not a wait: over 1.5 s (six reconcile rounds of 250 ms) of the
    // restarted controller, no flow may change.
    std::thread::sleep(Duration::from_millis(1500));
    let after = ovs_flows(&lab, "n1");
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.0, b.0);
        assert!(
            a.1 + 0.01 >= b.1 + elapsed - 0.2,
            "flow {} was re-installed (duration {} then {} after {elapsed:.1} s)",
            a.0,
            b.1,
            a.1
        );
    }
    assert!(
        after.iter().zip(&before).any(|(a, b)| a.2 > b.2),
        "traffic kept flowing through the same flows"
    );
    assert!(
        after.iter().any(|f| f.0 == "0x1234"),
        "the foreign flow survives: {after:?}"
    );

    // 2. ovs-vswitchd of n1 is killed and started again: it comes back with no flows and the
    // controller resyncs it as soon as it reconnects.
    let d = "/run/meshwire/labs/ovs-two-node/ovs/n1";
    let pid = std::fs::read_to_string(format!("{d}/ovs-vswitchd.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    // Gone, not just signalled: `tail --pid` returns when the process has exited.
    assert!(Command::new("tail")
        .args(["--pid", pid.trim(), "-f", "/dev/null"])
        .status()
        .unwrap()
        .success());
    let restarted = Instant::now();
    assert!(Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1"), "env"])
        .args([
            format!("OVS_RUNDIR={d}"),
            format!("OVS_LOGDIR={d}"),
            format!("OVS_DBDIR={d}")
        ])
        .args([
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            "--detach",
            "--no-chdir"
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
    let mut back = None;
    while restarted.elapsed() < Duration::from_secs(15) {
        if lab
            .exec("c-vxlan", &["ping", "-c", "1", "-W", "1", &dst])
            .status
            .success()
        {
            back = Some(restarted.elapsed());
            break;
        }
    }
    let back = back.expect("connectivity returns after ovs-vswitchd restarts");
    let ports = Command::new("ovs-vsctl")
        .args([
            "--db=unix:/run/meshwire/labs/ovs-two-node/ovs/n1/db.sock",
            "list-ports",
            "br-int",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ports.stdout).contains("other0"),
        "the foreign port survives every resync"
    );
    eprintln!(
        "ovs-vswitchd restart: connectivity back {:.0} ms after it was started again",
        back.as_secs_f64() * 1000.0
    );
    let out = client.wait_with_output().unwrap();
    drop(srv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let intervals = v["intervals"].as_array().cloned().unwrap_or_default();
    let moving = intervals
        .iter()
        .filter(|i| i["sum"]["bytes"].as_u64().unwrap_or(0) > 0)
        .count();
    // The same TCP stream resumes after the switch came back. TCP's retransmission timer
    // doubles through an outage (0.2, 0.4, 0.8, 1.6 s...), so the stream may stay quiet for
    // about as long again as the outage lasted: the run is long enough (20 s) for that, and
    // the claim is "data after the gap", not "data in the very last interval".
    let bytes = |i: &serde_json::Value| i["sum"]["bytes"].as_u64().unwrap_or(0);
    let gap = intervals.iter().position(|i| bytes(i) == 0);
    let resumed = gap.map(|g| intervals[g..].iter().any(|i| bytes(i) > 0));
    eprintln!(
        "iperf3 during both restarts: {moving}/{} half-second intervals carried data, first quiet interval {gap:?}",
        intervals.len()
    );
    assert!(!intervals.is_empty(), "iperf3 reported no intervals");
    assert!(
        resumed.unwrap_or(true),
        "iperf3's stream carries data again after the outage: {intervals:?}"
    );
}

#[test]
fn nb_lab_ovs_three_node_distributed_bridge_domain_and_mpls_rerouted_through_a_transit_node() {
    if !root() {
        return;
    }
    let lab = Lab::up("ovs-three-node");
    // Distributed bridge domain: a client on each node joins its node's instance of "blue".
    let blue: Vec<String> = (1..=3)
        .map(|i| {
            let c = lab.request(&[
                "blue",
                "--client",
                &format!("n{i}"),
                "--name",
                &format!("clab-ovs-three-node-c{i}"),
                "--label",
                &format!("nodeName=n{i}"),
            ]);
            assert_eq!(
                c["network_service_endpoint_name"],
                format!("blue-n{i}"),
                "{c}"
            );
            addr(&c, "src_ip_addrs")
        })
        .collect();
    for (from, to) in [("c1", 1), ("c1", 2), ("c2", 2), ("c3", 0)] {
        assert!(
            lab.ping(from, &blue[to]),
            "{from} -> {}: one L2 domain over three nodes",
            blue[to]
        );
    }
    let bps = iperf3(&lab, "c3", "c1", &blue[2], 5321, 1);
    eprintln!(
        "iperf3 across the distributed bridge domain (n1 -> n3): {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 1e6);

    // MPLS from n1 to n3 takes the direct link...
    let c = lab.request(&[
        "tunnel-gateway",
        "--client",
        "n1",
        "--name",
        "clab-ovs-three-node-app",
        "--mechanism",
        "mpls",
    ]);
    let path = |c: &serde_json::Value| -> Vec<String> {
        c["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(path(&c), ["n1", "n3"]);
    assert!(lab.ping("app", &addr(&c, "dst_ip_addrs")));
    // ...and when that link goes down, the controller reroutes it through n2, which switches
    // the labels.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("down.yaml");
    std::fs::write(&f, "apiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-eth2-n3-eth2}\nspec: {endpoints: [\"n1:eth2\", \"n3:eth2\"], addresses: [\"10.0.13.1/24\", \"10.0.13.3/24\"], up: false}\n").unwrap();
    assert!(lab
        .meshwire(&["apply", "-f", f.to_str().unwrap()])
        .status
        .success());
    let id = c["id"].as_str().unwrap();
    // The controller's own event: the connection healed (onto another path).
    lab.wait_event(Duration::from_secs(20), |e| {
        e["event"] == "connection"
            && e["id"] == id
            && e["state"] == "up"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("healed"))
    })
    .expect("rerouted through n2");
    let healed = lab.connection(id);
    assert_eq!(path(&healed), ["n1", "n2", "n3"]);
    let transit = ovs_flows(&lab, "n2");
    assert_eq!(
        transit
            .iter()
            .filter(|f| !f.0.starts_with("0x4d57000000000000"))
            .count(),
        2 + 2, // two label-switching flows; blue's flows for c2 (from c2, from the tunnel)
        "{transit:?}"
    );
    let dst = addr(&healed, "dst_ip_addrs");
    assert!(lab.ping("app", &dst), "MPLS through the transit node");
    let bps = iperf3(&lab, "gateway", "app", &dst, 5322, 1);
    eprintln!(
        "iperf3 over MPLS through a transit node: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 1e6);
}

/// Whether a TCP connection to `addr:port` from `node` is refused or times out within 1 s (the
/// firewall dropped it) rather than reaching a listener.
fn tcp_blocked(lab: &Lab, node: &str, addr: &str, port: u16) -> bool {
    !lab.exec(
        node,
        &[
            "timeout",
            "1",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port}"),
        ],
    )
    .status
    .success()
}

#[test]
fn nb_lab_firewall_appliance_passes_allowed_traffic_and_drops_the_rest() {
    if !root() {
        return;
    }
    let lab = Lab::up("firewall");
    let c = lab.request(&[
        "firewall",
        "--client",
        "worker",
        "--name",
        "clab-firewall-client",
    ]);
    // The device's session shows in the lab controller's metrics.
    let metrics = http_get(&lab.url, "/metrics");
    assert!(
        metrics.contains("meshwire_device_reachable{device=\"fw1\"} 1"),
        "{metrics}"
    );
    // Negotiated with the eNSM: VXLAN with a VNI from the device profile's range, to the
    // device's underlay address.
    let m = &c["hops"][0]["mechanism"];
    assert_eq!(m["type"], "vxlan");
    let vni = m["vni"].as_u64().unwrap();
    assert!((5000..=5999).contains(&vni), "{m}");
    assert_eq!(m["dst_ip"], "192.168.70.2");
    assert_eq!(c["network_service_endpoint_name"], "fw1");
    // The appliance's agent turned its NETCONF config into a VXLAN interface.
    let id = c["id"].as_str().unwrap();
    let tunnel = format!("mw{}", &id.replace('-', "")[..8]);
    let fw_addr = addr(&c, "dst_ip_addrs");
    assert!(lab.wait_link("fw1", &tunnel), "{}", lab.logs());
    assert!(
        lab.ping("client", &fw_addr),
        "the appliance's tunnel address; {}",
        lab.logs()
    );
    let links = String::from_utf8(
        lab.exec("fw1", &["ip", "-d", "link", "show", &tunnel])
            .stdout,
    )
    .unwrap();
    assert!(links.contains(&format!("vxlan id {vni}")), "{links}");
    // Its policy: iperf3 (tcp 5201) to the protected network passes, ping and other TCP do not.
    let bps = iperf3(&lab, "server", "client", "10.70.0.10", 5201, 2);
    eprintln!(
        "iperf3 client -> server through the firewall appliance: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 0.0, "allowed traffic passes");
    assert!(
        !lab.exec("client", &["ping", "-c", "2", "-W", "1", "10.70.0.10"])
            .status
            .success(),
        "ping is dropped"
    );
    let srv = lab.iperf3_server("server", 5202);
    assert!(
        tcp_blocked(&lab, "client", "10.70.0.10", 5202),
        "tcp 5202 is dropped"
    );
    assert!(
        !tcp_blocked(&lab, "fw1", "10.70.0.10", 5202),
        "the listener is there"
    );
    drop(srv);
    // Close: the device's config and the tunnel go; the operator's policy stays.
    assert!(lab.meshwire(&["close", id]).status.success());
    let gone = lab.wait_links("fw1", Duration::from_secs(5), |links| {
        !links
            .lines()
            .any(|l| l.split_whitespace().next() == Some(tunnel.as_str()))
    });
    assert!(gone, "tunnel {tunnel} removed from the appliance");
    let rules = String::from_utf8(lab.exec("fw1", &["nft", "list", "ruleset"]).stdout).unwrap();
    assert!(
        rules.contains("rule 10") && rules.contains("rule 30"),
        "{rules}"
    );
}

#[test]
fn nb_lab_radio_appliance_capacity_is_enforced_and_freed() {
    if !root() {
        return;
    }
    let lab = Lab::up("radio");
    let a = lab.request(&["radio", "--client", "worker", "--name", "clab-radio-c1"]);
    let b = lab.request(&["radio", "--client", "worker", "--name", "clab-radio-c2"]);
    for c in [&a, &b] {
        let id = c["id"].as_str().unwrap().replace('-', "");
        assert!(
            lab.wait_link("radio1", &format!("mw{}", &id[..8])),
            "{}",
            lab.logs()
        );
    }
    assert!(
        lab.ping("c1", &addr(&a, "dst_ip_addrs")) && lab.ping("c2", &addr(&b, "dst_ip_addrs")),
        "{}",
        lab.logs()
    );
    let out = lab.meshwire(&[
        "request",
        "radio",
        "--client",
        "worker",
        "--name",
        "clab-radio-c3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no capacity"),
        "{err}"
    );
    assert!(lab
        .meshwire(&["close", a["id"].as_str().unwrap()])
        .status
        .success());
    let c = lab.request(&["radio", "--client", "worker", "--name", "clab-radio-c3"]);
    assert!(
        lab.ping("c3", &addr(&c, "dst_ip_addrs")),
        "the freed place is taken"
    );
}

#[test]
fn timer_lab_firewall_ha_heals_onto_the_second_appliance_when_a_link_fails() {
    if !root() {
        return;
    }
    let lab = Lab::up("ha-firewall");
    let c = lab.request(&[
        "firewall",
        "--client",
        "worker",
        "--name",
        "clab-ha-firewall-client",
    ]);
    let first = c["network_service_endpoint_name"]
        .as_str()
        .unwrap()
        .to_string();
    let other = if first == "fw1" { "fw2" } else { "fw1" };
    assert!(lab.ping("client", "10.79.0.1"));
    // Probe every ~25 ms while the serving appliance's data link goes down: one ping process
    // per probe (a single `ping -i` backs off while replies are missing, which would
    // exaggerate the outage), printing the time of each reply.
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c",
            "end=$((SECONDS+8)); while [ $SECONDS -lt $end ]; do ping -c1 -W0.1 -q 10.79.0.1 >/dev/null && date +%s.%N; sleep 0.01; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A measurement window: 1.5 s of probes before the cut.
    std::thread::sleep(Duration::from_millis(1500));
    let cut = Instant::now();
    assert!(Command::new("ip")
        .args(["-n", &lab.ns(&first), "link", "set", "eth1", "down"])
        .status()
        .unwrap()
        .success());
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let replies: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let outage = replies
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    let healed = lab.meshwire(&["get", "connections", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&healed.stdout).unwrap();
    assert_eq!(v[0]["network_service_endpoint_name"], other, "{v}");
    assert_eq!(
        v[0]["id"], c["id"],
        "same connection, healed in place of the old"
    );
    let endpoints = String::from_utf8(lab.meshwire(&["get", "endpoints"]).stdout).unwrap();
    assert!(
        endpoints.contains("down"),
        "the failed appliance's endpoint is withdrawn, not deleted: {endpoints}"
    );
    assert!(
        replies.last().is_some_and(|t| *t > replies[0] + 3.0),
        "traffic resumed after the cut ({} replies)",
        replies.len()
    );
    eprintln!(
        "appliance data link down -> traffic through {other}: outage {:.0} ms (cut at +{:.1} s)",
        outage * 1000.0,
        cut.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string("/run/meshwire/labs/ha-firewall/controller.log")
        .unwrap_or_default();
    for l in log.lines().filter(|l| {
        l.contains("trap")
            || l.contains("withdrawn")
            || l.contains("healed")
            || l.contains("interface changed")
    }) {
        eprintln!("  {l}");
    }
    assert!(outage < 8.0);
}

#[test]
fn nb_lab_sfc_client_traffic_crosses_the_firewall_appliance_then_the_vpn_gateway() {
    if !root() {
        return;
    }
    let lab = Lab::up("sfc");
    let c = lab.request(&[
        "secure-intranet-connectivity",
        "--client",
        "worker",
        "--name",
        "clab-sfc-client",
        "--label",
        "app=sarah",
    ]);
    assert_eq!(c["network_service_endpoint_name"], "fw1");
    // The appliance's eNSM passed the connection on: a second connection, fw1 → gateway.
    let all: serde_json::Value =
        serde_json::from_slice(&lab.meshwire(&["get", "connections", "-o", "json"]).stdout)
            .unwrap();
    let onward = all
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["client"]["node"] == "fw1")
        .unwrap_or_else(|| panic!("no onward connection: {all}"))
        .clone();
    assert_eq!(onward["network_service_endpoint_name"], "vpn-gateway");
    assert_eq!(onward["hops"][0]["mechanism"]["type"], "vxlan");
    let id = c["id"].as_str().unwrap();
    let b = onward["id"].as_str().unwrap();
    for t in [id, b] {
        let name = format!("mw{}", &t.replace('-', "")[..8]);
        assert!(lab.wait_link("fw1", &name), "{}", lab.logs());
    }
    assert!(
        lab.ping("client", "10.60.0.10"),
        "client reaches corp through the chain; {}",
        lab.logs()
    );
    let bps = iperf3(&lab, "corp", "client", "10.60.0.10", 5401, 1);
    eprintln!(
        "iperf3 client -> corp through the firewall appliance and the VPN gateway: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 0.0);
    // Both elements carried it: the appliance's cross-connect (NAT counter) and the gateway's
    // end of the onward connection.
    let nat = String::from_utf8(
        lab.exec(
            "fw1",
            &["nft", "list", "table", "ip", "meshwire_appliance_nat"],
        )
        .stdout,
    )
    .unwrap();
    let packets: u64 = nat
        .split("packets ")
        .nth(1)
        .and_then(|x| x.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(packets > 0, "{nat}");
    let gw_if = format!("nse-{}", &b.replace('-', "")[..8]);
    let stats = String::from_utf8(
        lab.exec(
            "gateway",
            &[
                "cat",
                &format!("/sys/class/net/{gw_if}/statistics/rx_packets"),
            ],
        )
        .stdout,
    )
    .unwrap();
    assert!(
        stats.trim().parse::<u64>().unwrap_or(0) > 100,
        "{gw_if}: {stats}"
    );
    // The onward leg is the chain's, not a client's: closing it alone is refused.
    let alone = lab.meshwire(&["close", b]);
    assert!(!alone.status.success());
    assert!(
        String::from_utf8_lossy(&alone.stderr).contains("onward leg"),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    // Closing the client's connection closes the onward one and removes both from the device.
    assert!(lab.meshwire(&["close", id]).status.success());
    let left = lab.meshwire(&["get", "connections", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "[]");
    let clean = lab.wait_links("fw1", Duration::from_secs(5), |links| !links.contains("mw"));
    assert!(clean, "{}", lab.logs());
}

#[test]
fn nb_lab_down_takes_only_its_own_namespaces_when_names_share_a_prefix() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in ["mwpfx", "mwpfx-x"] {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("name: {name}\ntopology:\n  nodes:\n    n1: {{kind: linux}}\n"),
        )
        .unwrap();
        let _ = Command::new(BIN).args(["lab", "down", name]).output();
        let out = Command::new(BIN)
            .args(["lab", "up"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(name);
    }
    let out = Command::new(BIN)
        .args(["lab", "down", "mwpfx"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let still = list.contains("clab-mwpfx-x-n1");
    let gone = !list.lines().any(|l| l.starts_with("clab-mwpfx-n1"));
    let _ = Command::new(BIN).args(["lab", "down", "mwpfx-x"]).output();
    assert!(gone && still, "{list}");
}

/// Through the NSM-compatible gRPC API: a client built from the NSM v1 protos (tonic) requests
/// the seed's VPN service for a workload of the lab, gets a working connection, and closes it;
/// then a Python client with stubs generated from the upstream protos does the same (registry
/// Find, Request, traffic, Close).
#[test]
fn nb_lab_vpn_gateway_over_the_nsm_grpc_api() {
    use meshwire_northbound::grpc::pb::{connection as c, networkservice as ns};
    use std::collections::HashMap;
    if !root() {
        return;
    }
    let lab = Lab::up("vpn-gateway");
    let url = std::fs::read_to_string("/run/meshwire/labs/vpn-gateway/controller.grpc").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut nsc = rt
        .block_on(ns::network_service_client::NetworkServiceClient::connect(
            url.clone(),
        ))
        .unwrap();
    let req = ns::NetworkServiceRequest {
        connection: Some(c::Connection {
            network_service: "secure-intranet-connectivity".into(),
            labels: HashMap::from([
                ("nodeName".to_string(), "worker".to_string()),
                ("app".to_string(), "sarah".to_string()),
            ]),
            path: Some(c::Path {
                index: 0,
                path_segments: vec![c::PathSegment {
                    name: "clab-vpn-gateway-client".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        mechanism_preferences: vec![c::Mechanism {
            cls: "LOCAL".into(),
            r#type: "KERNEL".into(),
            parameters: HashMap::from([("name".to_string(), "nsm-grpc".to_string())]),
        }],
    };
    let conn = rt.block_on(nsc.request(req)).unwrap().into_inner();
    assert_eq!(conn.mechanism.as_ref().unwrap().r#type, "KERNEL");
    assert_eq!(
        conn.mechanism.as_ref().unwrap().parameters["name"],
        "nsm-grpc"
    );
    assert!(
        lab.ping("client", "10.60.0.10"),
        "the workload reaches corp through the gateway"
    );
    let links = String::from_utf8(lab.exec("client", &["ip", "-br", "link"]).stdout).unwrap();
    assert!(links.contains("nsm-grpc"), "{links}");
    rt.block_on(nsc.close(conn)).unwrap();
    assert!(lab.silent("client", "10.60.0.10"));

    // Then a client that was not written against our code: Python stubs that grpcio-tools
    // generates from the upstream networkservicemesh/api protos (tests/interop/nsm-api).
    upstream_python_client(&lab, url.trim().trim_start_matches("http://"));
}

fn upstream_python_client(lab: &Lab, target: &str) {
    let Some(stubs) = nsm_stubs() else {
        return;
    };
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let client = |args: &[&str]| {
        let out = Command::new("python3")
            .arg(here.join("nsm_client.py"))
            .arg(stubs.path())
            .arg(target)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nsm_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let conn = client(&[
        "request",
        "secure-intranet-connectivity",
        "worker",
        "clab-vpn-gateway-client",
        "nsm-py",
    ]);
    let v: serde_json::Value = serde_json::from_str(&conn).unwrap();
    assert_eq!(v["mechanism"]["type"], "KERNEL", "{v}");
    assert_eq!(v["mechanism"]["parameters"]["name"], "nsm-py", "{v}");
    assert!(
        v["_registry"]["endpoints"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    assert!(
        v["context"]["ip_context"]["src_ip_addrs"][0].is_string(),
        "{v}"
    );
    assert!(
        lab.ping("client", "10.60.0.10"),
        "the Python client's workload reaches corp through the gateway"
    );
    let file = stubs.path().join("conn.json");
    std::fs::write(&file, conn).unwrap();
    assert_eq!(client(&["close", file.to_str().unwrap()]).trim(), "closed");
    assert!(lab.silent("client", "10.60.0.10"));
}
