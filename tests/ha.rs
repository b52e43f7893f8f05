//! Input: three `meshwire controller` processes on a three-member etcd (real processes, loopback,
//! leases of 1 s, no data plane), the CLI given all three (`--controller A,B,C`) requesting in
//! a loop; the leader killed (`kill -9`), then the next leader paused (`SIGSTOP`) past its
//! lease and resumed. Output: one leader at a time; requests succeed again on the new leader
//! (the time is printed); the connections afterwards are exactly those acknowledged, with no
//! VNI or address held twice; the paused leader writes nothing when it wakes up (etcd's
//! revision does not move) and comes back as a standby by itself; a request repeated with its
//! `Idempotency-Key` after a failover gets the same connection; a leader stopped with SIGTERM
//! hands over at once and exits; a standby serves the same connections from its replica;
//! `nsc-init` given every controller's gRPC address reaches the leader.
//! With root, the same three controllers drive a node agent (real namespaces) given all three:
//! iperf3 through a connection carries data in every half-second interval while the leader is
//! killed; the agent goes on to the new leader by itself, and nothing is recreated.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshwire_labs::etcd::LocalEtcdCluster;

mod support;
use support::ha::*;
use support::lab::{assert_every_interval_carried_data, root};

#[test]
fn nb_ha_three_controllers_fail_over_without_losing_or_doubling_anything() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = match rt.block_on(LocalEtcdCluster::start(3)) {
        Ok(c) => c,
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => return eprintln!("SKIP: {e}"),
        Err(e) => panic!("etcd is required: {e}"),
    };
    let spec = cluster.spec();
    let grpc: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let ctls: Vec<Ctl> = grpc
        .iter()
        .map(|g| controller_with(&spec, &["--grpc-listen", g]))
        .collect();
    let refs: Vec<&Ctl> = ctls.iter().collect();
    let urls = urls_of(&ctls);
    let first = leader(&refs, Duration::from_secs(10));
    // `get leader` asks each controller of the list: one leads, the others name it (once each
    // standby has heard who leads: bounded).
    let lead_url = format!("http://127.0.0.1:{}", ctls[first].port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cli(&urls, &["get", "leader", "-o", "json"]);
        let roles: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let agreed = roles.len() == 3
            && roles.iter().all(|r| {
                let leads = r["controller"] == lead_url.as_str();
                r["role"] == if leads { "leader" } else { "standby" }
                    && r["leader"] == lead_url.as_str()
            });
        if agreed {
            break;
        }
        assert!(Instant::now() < deadline, "{roles:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vpn-gateway.yaml");
    let out = cli(&urls, &["apply", "-f", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Requests in a loop through all three; the leader is killed after the fifth.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut failed = Vec::new();
    let mut killed_at = None;
    let mut back_after = None;
    for i in 0..40 {
        let r = request(&urls, &format!("w{i}"));
        match r {
            Ok(id) => {
                acked.insert(id);
                if let (Some(k), None) = (killed_at, back_after) {
                    back_after = Some(Instant::now().duration_since(k));
                }
            }
            Err(e) => failed.push(e),
        }
        if i == 4 {
            signal(ctls[first].pid, "-KILL");
            killed_at = Some(Instant::now());
        }
        if back_after.is_some() && acked.len() >= 15 {
            break;
        }
    }
    let back_after = back_after.expect("requests succeed again on a new leader");
    eprintln!(
        "leader killed: the next request acknowledged {back_after:?} later; {} acknowledged, {} failed: {failed:?}",
        acked.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "every request waits for the new leader: {failed:?}"
    );
    let rest: Vec<&Ctl> = (0..3).filter(|i| *i != first).map(|i| &ctls[i]).collect();
    let second = leader(&rest, Duration::from_secs(10));

    // Exactly the acknowledged connections (the leader's view), and nothing held twice.
    let lead_now = format!("http://127.0.0.1:{}", rest[second].port);
    let all = connections(&lead_now);
    let ids: BTreeSet<String> = all
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, acked, "the connections are those acknowledged");
    let mut vnis = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for c in &all {
        assert!(
            vnis.insert(c["hops"][0]["mechanism"]["vni"].as_u64().unwrap()),
            "VNI held twice: {c}"
        );
        for a in c["ip_context"]["src_ip_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(c["ip_context"]["dst_ip_addrs"].as_array().unwrap())
        {
            assert!(addrs.insert(a.to_string()), "address held twice: {a}");
        }
    }

    // A standby serves reads from its replica of the store (kept from etcd's watch): the same
    // connections, once the watch has brought the last change.
    let standby = rest.iter().find(|c| c.port != rest[second].port).unwrap();
    let standby_url = format!("http://127.0.0.1:{}", standby.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen: BTreeSet<String> = connections(&standby_url)
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        if seen == acked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby's replica: {seen:?} vs {acked:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The new leader pauses past its lease; the last controller takes over and changes the
    // mesh; the paused one wakes up, writes nothing, and stands by.
    let paused = rest[second];
    // A request with an Idempotency-Key, acknowledged by this leader; the same request again
    // after the next failover gets the same connection (the key is stored with it).
    let keyed = |urls: &str| {
        let out = cli(
            urls,
            &[
                "request",
                "secure-intranet-connectivity",
                "--client",
                "client",
                "--name",
                "keyed",
                "--idempotency-key",
                "k-1",
                "-o",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let once = keyed(&urls);
    signal(paused.pid, "-STOP");
    let last: Vec<&Ctl> = rest
        .iter()
        .copied()
        .filter(|c| c.port != paused.port)
        .collect();
    leader(&last, Duration::from_secs(10));
    let last_url = format!("http://127.0.0.1:{}", last[0].port);
    let id = request(&last_url, "after-pause").expect("the third leader takes requests");
    assert_eq!(
        keyed(&last_url),
        once,
        "a retry with the same key: the same connection"
    );
    let before = revision(&spec);
    signal(paused.pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while leads(paused.port) != Some(false) {
        assert!(
            Instant::now() < deadline,
            "the paused leader comes back as a standby"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        revision(&spec),
        before,
        "the paused leader wrote nothing after it woke up"
    );
    let now: BTreeSet<String> = connections(&last_url)
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        now.contains(&id) && now.contains(&once) && now.len() == acked.len() + 2,
        "{now:?}"
    );

    // A leader stopped on purpose (SIGTERM) hands over at once (its lease revoked) and exits.
    let t = Instant::now();
    signal(last[0].pid, "-TERM");
    leader(&[paused], Duration::from_secs(5));
    eprintln!("handover after SIGTERM: {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state =
            std::fs::read_to_string(format!("/proc/{}/status", last[0].pid)).unwrap_or_default();
        if state.is_empty() || state.contains("State:\tZ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped leader exits: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cluster);
}

#[test]
fn nb_ha_leader_killed_during_iperf3_through_the_kernel_data_plane() {
    if !root() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = match rt.block_on(LocalEtcdCluster::start(3)) {
        Ok(c) => c,
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => return eprintln!("SKIP: {e}"),
        Err(e) => panic!("etcd is required: {e}"),
    };
    let tag = format!("mwha{:x}", std::process::id() & 0xffff);
    let (node, client, ep, late) = (
        format!("{tag}-n1"),
        format!("{tag}-c"),
        format!("{tag}-e"),
        format!("{tag}-c2"),
    );
    let _ns = Namespaces::new(&[node.clone(), client.clone(), ep.clone(), late.clone()]);
    let spec = cluster.spec();
    let agent_ports: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let ctls: Vec<Ctl> = agent_ports
        .iter()
        .map(|a| controller_with(&spec, &["--dataplane", "agents", "--agent-listen", a]))
        .collect();
    let refs: Vec<&Ctl> = ctls.iter().collect();
    let urls = urls_of(&ctls);
    let first = leader(&refs, Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yaml");
    std::fs::write(
        &manifest,
        format!(
            "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{forwarder: kernel, netns: {node}}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: s}}\nspec: {{payload: IP}}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: ep}}\nspec: {{network_service_names: [s], location: {{node: n1, netns: {ep}}}, mechanisms: {{kernel: {{}}}}, ipamPrefix: 10.99.0.0/24}}\n"
        ),
    )
    .unwrap();
    let out = cli(&urls, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Node n1's agent, given every controller's agent listener: it attaches to the leader.
    let agent_urls: Vec<String> = agent_ports.iter().map(|a| format!("http://{a}")).collect();
    let agent = Command::new(BIN)
        .args([
            "node",
            "--node",
            "n1",
            "--controller",
            &agent_urls.join(","),
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--nsm-socket")
        .arg(dir.path().join("nsm.sock"))
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Agent(agent);
    let lead_port = ctls[first].port;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent_attached(lead_port, "n1") {
        assert!(
            Instant::now() < deadline,
            "the agent attaches to the leader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let req = |name: &str| {
        let out = cli(
            &urls,
            &[
                "request", "s", "--client", "n1", "--name", name, "-o", "json",
            ],
        );
        assert!(
            out.status.success(),
            "request {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let c = req(&client);
    let dst = c["ip_context"]["dst_ip_addrs"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ep_if = c["hops"][0]["mechanism"]["peer_interface"]
        .as_str()
        .unwrap()
        .to_string();
    let before = (ifindex(&client, "nsm-1"), ifindex(&ep, &ep_if));
    assert!(
        !before.0.is_empty() && !before.1.is_empty(),
        "{before:?} {c}"
    );

    let mut srv = Command::new("ip")
        .args(["netns", "exec", &ep, "iperf3", "-s", "-p", "5421", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The server listens once its port is open in the endpoint's namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "exec", &ep, "ss", "-ltn"])
            .output()
            .unwrap()
            .stdout,
    )
    .contains(":5421")
    {
        assert!(Instant::now() < deadline, "iperf3 server listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let iperf = Command::new("ip")
        .args(["netns", "exec", &client])
        .args([
            "iperf3", "-c", &dst, "-p", "5421", "-t", "6", "-i", "0.5", "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(ctls[first].pid, "-KILL");
    // A request meanwhile waits for the new leader, then is wired by the agent, which went
    // on to the new leader by itself.
    let t = Instant::now();
    let c2 = req(&late);
    eprintln!(
        "leader killed during iperf3: a request was wired by the next leader {:?} later",
        t.elapsed()
    );
    assert_eq!(c2["state"], "up", "{c2}");
    let out = iperf.wait_with_output().unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    assert_every_interval_carried_data(&out.stdout, "through a leader kill", 10);
    let after = (ifindex(&client, "nsm-1"), ifindex(&ep, &ep_if));
    assert_eq!(before, after, "the new leader recreated nothing");
    let ids: BTreeSet<String> = connections(&urls)
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_string() + c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|s| s.starts_with("up")), "{ids:?}");
    // Close both through the leader before the namespaces go.
    for c in [&c, &c2] {
        let out = cli(&urls, &["close", c["id"].as_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Input: three controllers on a three-member etcd; two members killed (quorum lost), then
/// started again. Output: a request meanwhile fails with a clear error (the store cannot
/// answer, or no leader can be elected), nothing is lost, and requests succeed again once
/// quorum is back.
#[test]
fn nb_ha_quorum_lost_refuses_writes_clearly_then_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = match rt.block_on(LocalEtcdCluster::start(3)) {
        Ok(c) => c,
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => return eprintln!("SKIP: {e}"),
        Err(e) => panic!("etcd is required: {e}"),
    };
    let spec = cluster.spec();
    let ctls: Vec<Ctl> = (0..3).map(|_| controller_with(&spec, &[])).collect();
    let refs: Vec<&Ctl> = ctls.iter().collect();
    let urls = urls_of(&ctls);
    leader(&refs, Duration::from_secs(10));
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vpn-gateway.yaml");
    let out = cli(&urls, &["apply", "-f", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = request(&urls, "q0").expect("a request with quorum");

    cluster.kill(0);
    cluster.kill(1);
    let t = Instant::now();
    let err = request(&urls, "q1").expect_err("no quorum: no write");
    eprintln!(
        "without quorum a request failed after {:?}: {}",
        t.elapsed(),
        err.trim()
    );
    assert!(
        err.contains("store") || err.contains("no leader"),
        "a clear error: {err}"
    );

    rt.block_on(async {
        cluster.restart(0).await.unwrap();
        cluster.restart(1).await.unwrap();
    });
    let t = Instant::now();
    let after = request(&urls, "q2").expect("requests succeed again with quorum");
    eprintln!(
        "quorum back: a request acknowledged {:?} later",
        t.elapsed()
    );
    leader(&refs, Duration::from_secs(20));
    let ids: BTreeSet<String> = connections(&urls)
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&before) && ids.contains(&after), "{ids:?}");
    assert!(
        !ids.iter().any(|i| i.is_empty()) && ids.len() == 2,
        "the failed request left nothing: {ids:?}"
    );
}

/// Input: two controllers on one etcd; clients asking the standby's REST API on fresh
/// connections, four at a time, while the leader is killed and the standby takes over.
/// Output: every request gets an HTTP answer: at the handover the standby's server becomes the
/// leader's, no connection is closed unanswered and none is refused.
#[test]
fn nb_ha_handover_answers_every_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = match rt.block_on(meshwire_labs::etcd::LocalEtcd::start()) {
        Ok(e) => e,
        Err(e) if std::env::var("MESHWIRE_REQUIRE_ALL").is_err() => return eprintln!("SKIP: {e}"),
        Err(e) => panic!("etcd is required: {e}"),
    };
    let spec = format!("etcd://{}", etcd.endpoint);
    let ctls: Vec<Ctl> = (0..2).map(|_| controller_with(&spec, &[])).collect();
    let refs: Vec<&Ctl> = ctls.iter().collect();
    let first = leader(&refs, Duration::from_secs(10));
    let standby = ctls[1 - first].port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let askers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    // No pool: every request opens its own connection.
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap();
                    let url = format!("http://127.0.0.1:{standby}/api/v1/services");
                    let (mut answered, mut errors) = (0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) => {
                                let _ = r.bytes().await;
                                answered += 1;
                            }
                            Err(e) => errors.push(format!("{e:?}")),
                        }
                    }
                    (answered, errors)
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    signal(ctls[first].pid, "-KILL");
    let deadline = Instant::now() + Duration::from_secs(15);
    while leads(standby) != Some(true) {
        assert!(Instant::now() < deadline, "the standby took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for a in askers {
        let (n, errors) = a.join().unwrap();
        assert!(errors.is_empty(), "requests left unanswered: {errors:?}");
        answered += n;
    }
    eprintln!("{answered} requests answered across the handover");
    assert!(answered > 0);
}
