//! Input: the `vl3` lab (three hosts, each with its own node agent and one virtual router of
//! `db-replication`, 10.90.0.0/16), four database-like members requesting the service as
//! upstream's clients name themselves (`podName`).
//! Output, with real packets and real DNS queries: each member gets one address of the vL3
//! and the router of its own host; every member reaches every other by name (`getent hosts`
//! through the resolver the data plane gave its namespace, short names through the search
//! domain) and by ping; a TCP stream (iperf3) runs between hosts. Then the router serving two
//! members is deleted: both heal onto other routers with the same addresses and their names
//! still resolve, while the two members on the other routers never lose each other (a 20 ms
//! ping between them through the heal). A member that closes gives its address and its name
//! back, and its namespace's resolver file goes.

use std::time::Duration;

mod support;
use support::lab::{root, Lab};
use support::vl3::{getent, pinger, stop};

const MEMBERS: [(&str, &str); 4] = [("db1", "h1"), ("db2", "h2"), ("db3", "h3"), ("db4", "h1")];

#[test]
fn nb_lab_vl3_members_reach_each_other_by_name_across_hosts_and_keep_addresses_when_healed() {
    if !root() {
        return;
    }
    let lab = Lab::up("vl3");
    // The routers' mesh (three peer legs) is the reconcile round's to join: looked at until
    // it is there (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab.meshwire(&["get", "connections", "-o", "json"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["vl3"]["role"] == "peer" && c["state"] == "up")
            .count();
        if up == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "routers meshed: {all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ids = Vec::new();
    let mut addrs = Vec::new();
    for (name, host) in MEMBERS {
        let c = lab.request(&[
            "db-replication",
            "--client",
            host,
            "--name",
            &lab.ns(name),
            "--label",
            &format!("podName={name}"),
        ]);
        let addr = c["ip_context"]["src_ip_addrs"][0].as_str().unwrap();
        assert!(addr.starts_with("10.90.") && addr.ends_with("/32"), "{c}");
        // The router of its own host.
        assert_eq!(
            c["network_service_endpoint_name"],
            format!("r{}", &host[1..]),
            "{c}"
        );
        assert_eq!(
            c["dns_context"]["configs"][0]["dns_server_ips"][0], "10.90.0.1",
            "{c}"
        );
        ids.push(c["id"].as_str().unwrap().to_string());
        addrs.push(addr.trim_end_matches("/32").to_string());
    }
    let unique: std::collections::BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(unique.len(), 4, "one address each: {addrs:?}");
    // Every member reaches every other by name: full and short.
    for (i, (from, _)) in MEMBERS.iter().enumerate() {
        for (j, (to, _)) in MEMBERS.iter().enumerate() {
            if i == j {
                continue;
            }
            let full = format!("{to}.db-replication");
            assert_eq!(
                getent(&lab, from, &full).as_deref(),
                Some(addrs[j].as_str()),
                "{from} resolves {full}"
            );
            assert_eq!(
                getent(&lab, from, to).as_deref(),
                Some(addrs[j].as_str()),
                "{from} resolves {to} through the search domain"
            );
            assert!(lab.ping(from, &full), "{from} pings {full}");
        }
    }
    assert_eq!(getent(&lab, "db1", "nobody.db-replication"), None);
    // A TCP stream between hosts (db2 on h2 to db3 on h3, through r2 and r3).
    let srv = lab.iperf3_server("db3", 5201);
    let out = lab.exec(
        "db2",
        &["iperf3", "-c", "db3.db-replication", "-t", "2", "-J"],
    );
    drop(srv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("iperf3 db2 -> db3 across hosts: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 0.0, "{}", String::from_utf8_lossy(&out.stderr));

    // r1 (db1 and db4's router) is lost; db2 and db3 keep talking meanwhile.
    let between = pinger(&lab, "db2", &addrs[2]);
    let healed = pinger(&lab, "db1", &addrs[1]);
    // A measurement window, not a wait for a state: replies before the loss.
    std::thread::sleep(Duration::from_millis(500));
    // It stops forwarding (every interface down), then its namespace goes.
    meshwire_labs::lose::lose_namespace(&lab.ns("r1")).unwrap();
    for id in [&ids[0], &ids[3]] {
        lab.wait_event(Duration::from_secs(20), |e| {
            e["event"] == "connection"
                && e["id"] == id.as_str()
                && e["state"] == "up"
                && e["endpoint"] != "r1"
        })
        .expect("healed onto another router");
    }
    for (k, id) in [(0usize, &ids[0]), (3, &ids[3])] {
        let c = lab.connection(id);
        assert_eq!(
            c["ip_context"]["src_ip_addrs"][0],
            format!("{}/32", addrs[k]),
            "the same address after the heal: {c}"
        );
    }
    assert!(lab.ping("db1", &addrs[1]), "db1 reaches db2 after the heal");
    assert!(lab.ping("db4", "db3.db-replication"));
    assert_eq!(
        getent(&lab, "db3", "db1").as_deref(),
        Some(addrs[0].as_str()),
        "db1's name follows it"
    );
    // A measurement window: replies after the heal.
    std::thread::sleep(Duration::from_millis(500));
    let (n, gap) = stop(between);
    eprintln!(
        "db2 -> db3 while r1 was lost: {n} replies, largest gap {:.0} ms",
        gap * 1000.0
    );
    assert!(
        n > 20 && gap < 0.5,
        "members on other routers never lose each other"
    );
    let (n, gap) = stop(healed);
    eprintln!(
        "db1 -> db2 through the heal: {n} replies, outage {:.0} ms",
        gap * 1000.0
    );
    assert!(n > 30, "db1's ping gets replies again after the heal ({n})");

    // A member that closes gives back its address and name; its resolver file goes.
    let out = lab.meshwire(&["close", &ids[3]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(getent(&lab, "db1", "db4.db-replication"), None);
    assert!(!std::path::Path::new(&format!("/etc/netns/{}/resolv.conf", lab.ns("db4"))).exists());
    let again = lab.request(&[
        "db-replication",
        "--client",
        "h1",
        "--name",
        &lab.ns("db4"),
        "--label",
        "podName=db5",
    ]);
    assert!(again["ip_context"]["src_ip_addrs"][0].as_str().is_some());
    assert_eq!(
        getent(&lab, "db2", "db5").as_deref(),
        again["ip_context"]["src_ip_addrs"][0]
            .as_str()
            .map(|a| a.trim_end_matches("/32"))
    );
}
