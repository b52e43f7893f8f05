//! Input: the agents lab (three hosts; `lab up` runs a `meshwire node` process in each
//! host's namespace, reaching the controller over the lab's management network with its own
//! token) and requests through the lab's controller. Output: real traffic (ping, iperf3) across
//! hosts while agents and the controller crash and come back, the interfaces' ifindex before and
//! after, an impostor refused, and a heal when an agent stays away past its lease. The
//! ovs-two-node lab: the agents of Open vSwitch hosts wire the workload legs (the controller
//! speaks only OVSDB and OpenFlow to those hosts).
//! Needs root; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set (CI), where it must run.

use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::lab::{assert_every_interval_carried_data, http_get, root, Lab, BIN};

const STATE: &str = "/run/meshwire/labs/agents";

/// The ifindex of `ifname` in `node`'s namespace.
fn ifindex(lab: &Lab, node: &str, ifname: &str) -> String {
    let out = lab.exec(node, &["ip", "-o", "link", "show", ifname]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The controller's view of the agents (`GET /api/v1/topology/status`).
fn agents(lab: &Lab) -> serde_json::Value {
    let r = http_get(&lab.url, "/api/v1/topology/status");
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["agents"].clone()
}

/// A request that needed `node`'s agent while it was away: refused, saying why.
fn assert_refused_as_away(out: &std::process::Output, node: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a request through an away agent");
    assert!(
        err.contains(&format!("node {node}")) && err.contains("agent is not attached"),
        "{err}"
    );
}

/// The lab's `meshwire lab node-agent LAB NODE ACTION`, which must succeed.
fn node_agent(lab: &Lab, node: &str, action: &str) {
    let out = lab.meshwire(&["lab", "node-agent", &lab.name, node, action]);
    assert!(
        out.status.success(),
        "node-agent {node} {action}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
}

/// The data-plane event of `node`'s agent (`node-attached`, `node-detached`, `node-lost`).
fn agent_event(lab: &Lab, kind: &str, node: &str, within: Duration) -> bool {
    lab.wait_event(within, |e| {
        e["event"] == "data-plane" && e["happened"]["kind"] == kind && e["happened"]["node"] == node
    })
    .is_some()
}

fn request(lab: &Lab) -> (serde_json::Value, String, String) {
    let c = lab.request(&[
        "responder",
        "--client",
        "n1",
        "--name",
        "clab-agents-client",
    ]);
    let ep = c["network_service_endpoint_name"]
        .as_str()
        .unwrap()
        .to_string();
    let host = if ep == "ep-a" { "n2" } else { "n3" }.to_string();
    (c, ep, host)
}

#[test]
fn nb_lab_agents_cross_host_vxlan_carries_iperf3_through_agent_and_controller_crashes() {
    if !root() {
        return;
    }
    let lab = Lab::up("agents");
    let status = agents(&lab);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(status[n]["state"], "attached", "{status}");
    }
    let (c, ep, host) = request(&lab);
    assert_eq!(c["hops"][0]["mechanism"]["type"], "vxlan", "{c}");
    assert!(lab.ping("client", "10.71.0.1"), "{}", lab.logs());
    let id = c["id"].as_str().unwrap().to_string();
    let ep_if = format!("nse-{}", &id.replace('-', "")[..8]);
    let before = (ifindex(&lab, "client", "nsm-1"), ifindex(&lab, &ep, &ep_if));
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");

    let srv = lab.iperf3_server(&ep, 5401);
    let iperf = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client")])
        .args([
            "iperf3",
            "-c",
            "10.71.0.1",
            "-p",
            "5401",
            "-t",
            "15",
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

    // 1. Both agents of the connection crash. The data plane keeps forwarding; the controller
    //    sees them away; wiring onto a node whose agent is away fails, and says why.
    node_agent(&lab, "n1", "kill");
    node_agent(&lab, &host, "kill");
    assert!(agent_event(
        &lab,
        "node-detached",
        "n1",
        Duration::from_secs(10)
    ));
    let out = lab.meshwire(&[
        "request",
        "responder",
        "--client",
        "n1",
        "--name",
        "clab-agents-client",
        "--interface",
        "nsm-2",
    ]);
    assert_refused_as_away(&out, "n1");

    // 2. They come back: nothing is recreated.
    node_agent(&lab, "n1", "start");
    node_agent(&lab, &host, "start");

    // 3. The controller crashes and comes back: the agents attach again by themselves.
    let out = lab.meshwire(&["lab", "restart", "agents", "--kill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["n1", host.as_str()] {
        assert!(
            agent_event(&lab, "node-attached", n, Duration::from_secs(15)),
            "the agent of {n} attaches to the restarted controller\n{}",
            lab.logs()
        );
    }

    let out = iperf.wait_with_output().unwrap();
    drop(srv);
    assert_every_interval_carried_data(
        &out.stdout,
        "through two agent crashes and a controller crash",
        20,
    );
    let after = (ifindex(&lab, "client", "nsm-1"), ifindex(&lab, &ep, &ep_if));
    assert_eq!(before, after, "the interfaces were not recreated");
    let conn = lab.connection(&id);
    assert_eq!(conn["state"], "up", "{conn}");

    // 4. An agent presenting another node's identity is refused, and says why.
    let agents_url = {
        let args: Vec<String> =
            serde_json::from_slice(&std::fs::read(format!("{STATE}/agents/n1.args")).unwrap())
                .unwrap();
        let i = args.iter().position(|a| a == "--controller").unwrap();
        args[i + 1].clone()
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1"), BIN, "node", "--node", "n1"])
        .args(["--controller", &agents_url, "--token-file"])
        .arg(format!("{STATE}/agents/n2.token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an impostor is refused: {err}");
    assert!(
        err.contains("PermissionDenied") && err.contains("node n2's agent credential"),
        "{err}"
    );
    assert_eq!(agents(&lab)["n1"]["state"], "attached");
}

#[test]
fn timer_lab_agents_away_past_its_lease_heals_the_client_onto_the_other_host() {
    if !root() {
        return;
    }
    let lab = Lab::up("agents");
    let (c, first, host) = request(&lab);
    let id = c["id"].as_str().unwrap().to_string();
    assert!(lab.ping("client", "10.71.0.1"), "{}", lab.logs());
    let ep_if = format!("nse-{}", &id.replace('-', "")[..8]);

    // The endpoint's host loses its agent for good: within the lease nothing moves; after it
    // (5 s in labs) the endpoint is lost and the client heals onto the other host.
    node_agent(&lab, &host, "stop");
    assert!(
        lab.wait_event(Duration::from_secs(30), |e| {
            e["event"] == "connection"
                && e["id"] == id.as_str()
                && e["state"] == "up"
                && e["endpoint"] != first.as_str()
        })
        .is_some(),
        "healed onto the other host\n{}",
        lab.logs()
    );
    assert_eq!(agents(&lab)[&host]["state"], "lost");
    assert!(lab.ping("client", "10.71.0.1"), "{}", lab.logs());
    // The old endpoint's side is still where the stopped agent left it...
    let has_ep_if = |links: &str| {
        links.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| n.starts_with(&ep_if))
        })
    };
    assert!(has_ep_if(&String::from_utf8_lossy(
        &lab.exec(&first, &["ip", "-br", "link"]).stdout
    )));
    // ...until its agent comes back: the first full set sweeps what nobody wants any more.
    node_agent(&lab, &host, "start");
    assert!(
        lab.wait_links(&first, Duration::from_secs(15), |links| !has_ep_if(links)),
        "the agent swept the old endpoint side\n{}",
        lab.logs()
    );
    assert!(lab.ping("client", "10.71.0.1"));
}

/// Input: a client generated from the upstream protos (Python, grpcio-tools) running in the
/// client's namespace on n1, asking through n1's NSM socket as an unmodified upstream client
/// does: no `nodeName`, no path, its namespace only as the kernel mechanism's `inodeURL`.
/// Output: the agent names the node and finds the namespace; the client gets its interface
/// and pings through it.
#[test]
fn nb_lab_agents_an_unmodified_upstream_client_requests_through_its_nodes_socket() {
    if !root() {
        return;
    }
    let Some(stubs) = support::lab::nsm_stubs() else {
        return;
    };
    let lab = Lab::up("agents");
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "python3"])
        .arg(here.join("nsm_client.py"))
        .arg(stubs.path())
        .arg(format!("unix://{STATE}/agents/n1.nsm.sock"))
        .args(["upstream-request", "responder", "nsm-py"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mechanism"]["parameters"]["name"], "nsm-py", "{v}");
    let conn = lab.connection(v["id"].as_str().unwrap());
    assert_eq!(conn["client"]["node"], "n1", "{conn}");
    assert_eq!(conn["client"]["name"], "clab-agents-client", "{conn}");
    assert!(lab.ping("client", "10.71.0.1"), "{}", lab.logs());
}

#[test]
fn nb_lab_ovs_hosts_agents_wire_the_workload_legs_and_a_crash_leaves_traffic_flowing() {
    if !root() {
        return;
    }
    let lab = Lab::up("ovs-two-node");
    let status = agents(&lab);
    for n in ["n1", "n2"] {
        assert_eq!(status[n]["state"], "attached", "{status}");
    }
    let c = lab.request(&[
        "tunnel-gateway",
        "--client",
        "n1",
        "--name",
        "clab-ovs-two-node-c-vxlan",
        "--mechanism",
        "vxlan",
    ]);
    assert_eq!(c["state"], "up", "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let dst = c["ip_context"]["dst_ip_addrs"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(lab.ping("c-vxlan", &dst), "{}", lab.logs());
    // The client's interface and its peer on n1's br-int (`mwc` + the id's first 8 hex digits).
    let port: String = format!(
        "mwc{}",
        id.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(8)
            .collect::<String>()
    );
    let before = (
        ifindex(&lab, "c-vxlan", "nsm-1"),
        ifindex(&lab, "n1", &port),
    );
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");

    let srv = lab.iperf3_server("gateway", 5411);
    let iperf = Command::new("ip")
        .args(["netns", "exec", &lab.ns("c-vxlan")])
        .args([
            "iperf3", "-c", &dst, "-p", "5411", "-t", "8", "-i", "0.5", "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A measurement window: iperf3 runs 1.5 s before anything is touched.
    std::thread::sleep(Duration::from_millis(1500));

    // n1's agent crashes: its legs keep forwarding; a new connection from n1 needs its hands,
    // so it fails at once and says why (the controller does not wire n1's namespaces itself).
    node_agent(&lab, "n1", "kill");
    assert!(agent_event(
        &lab,
        "node-detached",
        "n1",
        Duration::from_secs(10)
    ));
    let out = lab.meshwire(&[
        "request",
        "tunnel-gateway",
        "--client",
        "n1",
        "--name",
        "clab-ovs-two-node-c-gre",
        "--mechanism",
        "gre",
    ]);
    assert_refused_as_away(&out, "n1");
    // It comes back and adopts its legs: nothing is recreated; the request now goes through.
    node_agent(&lab, "n1", "start");
    let out = iperf.wait_with_output().unwrap();
    drop(srv);
    assert_every_interval_carried_data(&out.stdout, "over OVS VXLAN through an agent crash", 10);
    let after = (
        ifindex(&lab, "c-vxlan", "nsm-1"),
        ifindex(&lab, "n1", &port),
    );
    assert_eq!(before, after, "the legs were not recreated");
    let gre = lab.request(&[
        "tunnel-gateway",
        "--client",
        "n1",
        "--name",
        "clab-ovs-two-node-c-gre",
        "--mechanism",
        "gre",
    ]);
    assert_eq!(gre["state"], "up", "{gre}");
    let gre_dst = gre["ip_context"]["dst_ip_addrs"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(lab.ping("c-gre", &gre_dst), "{}", lab.logs());
    assert_eq!(lab.connection(&id)["state"], "up");
}
