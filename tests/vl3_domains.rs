//! Input: two domains, each a lab with its own controller and store and three hosts (a node
//! agent and one vL3 router on each): `site-b.example` is the home of `db-replication`
//! (10.90.0.0/16, 10.90.128.0/17 delegated to site-a), `site-a.example`'s routers offer it as
//! `db-replication@site-b.example`. The controllers federate with a shared secret; site-a's
//! reaches site-b's through a TCP relay the test can cut (the control path between the
//! sites), and the sites' WAN bridges are joined by one link (the data path).
//! Output, with real packets and real DNS queries: every member of either domain resolves and
//! pings every other; site-a's members take addresses from their delegated part only; a TCP
//! stream runs between the domains. A home router is lost: its member heals onto another
//! router with the same address, its name still resolves in the other domain, and members on
//! other routers never lose each other. The domains are cut apart (link and control path):
//! each keeps working inside, a new member joins site-a meanwhile; when the cut is restored,
//! traffic between domains resumes and the new member is reachable from site-b by name.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::lab::{root, Lab};
use support::vl3::{getent, pinger, stop};

/// A TCP relay to `to` that can be cut (new and open connections dropped) and restored.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let flag = open.clone();
        std::thread::spawn(move || {
            for inbound in l.incoming().flatten() {
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut a, mut b) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = a.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 16 * 1024];
                        while flag.load(Ordering::SeqCst) {
                            match a.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = a.shutdown(std::net::Shutdown::Both);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, open }
    }

    fn set(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// Whether `to` answers a ping from `node` within 15 s, asked once a second: a route being
/// moved from one leg to another may answer "unreachable" for an instant, which ends a single
/// `ping -w` at once.
fn reach(lab: &Lab, node: &str, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if lab
            .exec(node, &["ping", "-c", "1", "-W", "1", to])
            .status
            .success()
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Up legs of `lab`: (to routers of the other domain, between its own routers).
fn legs(lab: &Lab) -> (usize, usize) {
    let out = lab.meshwire(&["get", "connections", "-o", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let peers: Vec<&serde_json::Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["vl3"]["role"] == "peer" && c["state"] == "up")
        .collect();
    let remote = peers
        .iter()
        .filter(|c| c["vl3"]["remote"].is_string())
        .count();
    (remote, peers.len() - remote)
}

fn member(lab: &Lab, service: &str, host: &str, name: &str) -> (String, String, String) {
    let c = lab.request(&[
        service,
        "--client",
        host,
        "--name",
        &lab.ns(name),
        "--label",
        &format!("podName={name}"),
    ]);
    let addr = c["ip_context"]["src_ip_addrs"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{c}"))
        .trim_end_matches("/32")
        .to_string();
    (
        c["id"].as_str().unwrap().to_string(),
        addr,
        c["network_service_endpoint_name"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn nb_lab_vl3_across_two_domains_reaches_by_name_heals_and_survives_a_cut() {
    if !root() {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();
    for d in ["site-a.example", "site-b.example"] {
        std::fs::write(secrets.path().join(d), "a-secret-both-sites-share\n").unwrap();
    }
    let dir = secrets.path().to_str().unwrap();
    let b_port = meshwire_labs::ports::free_port().unwrap();
    let relay = Relay::start(b_port);
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/vl3-domains");
    let to_b = format!("site-b.example=http://127.0.0.1:{}", relay.port);
    // site-a first: it creates the WAN bridge site-b plugs into. Dropped last.
    let a = Lab::up_file(
        "vl3a",
        &root_dir.join("site-a/lab.yaml"),
        &[
            "--domain",
            "site-a.example",
            "--federate",
            &to_b,
            "--federation-secrets",
            dir,
        ],
    );
    let listen = format!("127.0.0.1:{b_port}");
    let b = Lab::up_file(
        "vl3b",
        &root_dir.join("site-b/lab.yaml"),
        &[
            "--listen",
            &listen,
            "--domain",
            "site-b.example",
            "--federate",
            "site-a.example",
            "--federation-secrets",
            dir,
        ],
    );
    // Three routers each: nine legs between the domains, three inside each (bounded look).
    let deadline = Instant::now() + Duration::from_secs(30);
    while legs(&a) != (9, 3) || legs(&b) != (9, 3) {
        assert!(
            Instant::now() < deadline,
            "meshed: site-a {:?}, site-b {:?}\n{}\n{}",
            legs(&a),
            legs(&b),
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let remote = "db-replication@site-b.example";
    let members = [
        (&a, "dba1", member(&a, remote, "a1", "dba1")),
        (&a, "dba2", member(&a, remote, "a2", "dba2")),
        (&b, "dbb1", member(&b, "db-replication", "b1", "dbb1")),
        (&b, "dbb2", member(&b, "db-replication", "b2", "dbb2")),
    ];
    let part: ipnet::IpNet = "10.90.128.0/17".parse().unwrap();
    for (lab, name, (_, addr, _)) in &members {
        let ip: std::net::IpAddr = addr.parse().unwrap();
        assert_eq!(
            part.contains(&ip),
            lab.name == "vl3a",
            "{name} at {addr}: site-a's members and only they take site-a's part"
        );
    }
    // Every member reaches every other, in either domain, by name.
    for (from_lab, from, _) in &members {
        for (_, to, (_, addr, _)) in &members {
            if from == to {
                continue;
            }
            let full = format!("{to}.db-replication");
            let deadline = Instant::now() + Duration::from_secs(10);
            // The other domain hears of a new member at its next exchange.
            while getent(from_lab, from, &full).as_deref() != Some(addr.as_str()) {
                assert!(
                    Instant::now() < deadline,
                    "{from} resolves {full} as {addr}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(reach(from_lab, from, &full), "{from} pings {full}");
        }
    }
    assert_eq!(
        getent(&a, "dba1", "dbb2").as_deref(),
        Some(members[3].2 .1.as_str()),
        "short names through the search domain, across domains"
    );
    // A TCP stream between the domains.
    let srv = a.iperf3_server("dba1", 5201);
    let out = b.exec(
        "dbb2",
        &["iperf3", "-c", "dba1.db-replication", "-t", "2", "-J"],
    );
    drop(srv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!(
        "iperf3 dbb2 (site-b) -> dba1 (site-a): {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(bps > 0.0, "{}", String::from_utf8_lossy(&out.stderr));

    // rb1 (dbb1's router, site-b) is lost while dba1 pings dbb1 and dba2 pings dbb2.
    let (dbb1_id, dbb1_addr, dbb1_router) = members[2].2.clone();
    assert_eq!(dbb1_router, "rb1");
    let healed = pinger(&a, "dba1", &dbb1_addr);
    let between = pinger(&a, "dba2", &members[3].2 .1);
    // A measurement window, not a wait for a state: replies before the loss.
    std::thread::sleep(Duration::from_millis(500));
    meshwire_labs::lose::lose_namespace(&b.ns("rb1")).unwrap();
    b.wait_event(Duration::from_secs(20), |e| {
        e["event"] == "connection"
            && e["id"] == dbb1_id.as_str()
            && e["state"] == "up"
            && e["endpoint"] != "rb1"
    })
    .expect("dbb1 healed onto another router");
    let c = b.connection(&dbb1_id);
    assert_eq!(
        c["ip_context"]["src_ip_addrs"][0],
        format!("{dbb1_addr}/32"),
        "the same address after the heal: {c}"
    );
    assert!(
        reach(&a, "dba1", "dbb1.db-replication"),
        "site-a reaches dbb1 after its heal"
    );
    // A measurement window: replies after the heal.
    std::thread::sleep(Duration::from_millis(1500));
    let (n, gap) = stop(between);
    eprintln!(
        "dba2 -> dbb2 while rb1 was lost: {n} replies, largest gap {:.0} ms",
        gap * 1000.0
    );
    assert!(
        n > 20 && gap < 0.5,
        "members on other routers never lose each other"
    );
    let (n, gap) = stop(healed);
    eprintln!(
        "dba1 -> dbb1 (across domains) through its heal: {n} replies, outage {:.0} ms",
        gap * 1000.0
    );
    assert!(
        n > 30,
        "dba1's ping gets replies again after dbb1's heal ({n})"
    );

    // The domains are cut apart: the link between the sites and the controllers' path.
    relay.set(false);
    let cut = Command::new("ip")
        .args(["link", "set", "mwvl3ab", "down"])
        .status()
        .unwrap();
    assert!(cut.success());
    assert!(
        reach(&a, "dba1", "dba2.db-replication"),
        "site-a works inside"
    );
    assert!(
        reach(&b, "dbb1", "dbb2.db-replication"),
        "site-b works inside"
    );
    assert!(
        a.silent("dba1", &members[3].2 .1),
        "nothing crosses the cut"
    );
    // A member joins site-a meanwhile, from the plan it imported before.
    let (_, dba3_addr, _) = member(&a, remote, "a3", "dba3");
    assert!(
        reach(&a, "dba1", "dba3.db-replication"),
        "the new member, inside site-a"
    );
    // Restored: traffic crosses again, and site-b learns the new member.
    let up = Command::new("ip")
        .args(["link", "set", "mwvl3ab", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    relay.set(true);
    assert!(
        reach(&a, "dba1", &members[3].2 .1),
        "traffic between the domains resumes"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while getent(&b, "dbb2", "dba3.db-replication").as_deref() != Some(dba3_addr.as_str()) {
        assert!(
            Instant::now() < deadline,
            "site-b learns dba3 after the cut"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        reach(&b, "dbb2", "dba3.db-replication"),
        "site-b reaches the new member"
    );
    drop(b);
    drop(a);
}
