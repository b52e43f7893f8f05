//! Input: our SNMP monitor against the real snmpd (net-snmp) running in a namespace that plays
//! the device: a management veth to the host, and a data link (a veth pair) inside. Output:
//! sysUpTime and ifOperStatus over v2c and v3 authPriv; a data link taken down is seen down; a
//! wrong v3 password and a dead agent are errors naming the device.
//! Needs root and snmpd; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshwire_ensm_adapters::snmp::{Monitor, OperStatus, SnmpAuth, SnmpError, SnmpTarget};

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A namespace with snmpd, reachable from the host at 169.254.<k>.2:161.
struct Agent {
    ns: String,
    host_if: String,
    addr: std::net::SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Option<Agent> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root || !std::path::Path::new("/usr/sbin/snmpd").exists() {
            assert!(
                std::env::var("MESHWIRE_REQUIRE_ALL").is_err(),
                "the SNMP test needs root and snmpd"
            );
            eprintln!("SKIP: needs root and snmpd");
            return None;
        }
        let k = std::process::id() % 200 + 20;
        let ns = format!("mwsnmp{}", std::process::id());
        let host_if = format!("mwsn{}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().unwrap();
        let mut a = Agent {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr: format!("169.254.{k}.2:161").parse().unwrap(),
            child: None,
            _dir: dir,
        };
        assert!(ip(&["netns", "add", &ns]));
        assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
        assert!(ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "mgmt0", "netns", &ns
        ]));
        assert!(ip(&[
            "addr",
            "add",
            &format!("169.254.{k}.1/30"),
            "dev",
            &host_if
        ]));
        assert!(ip(&["link", "set", &host_if, "up"]));
        assert!(ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("169.254.{k}.2/30"),
            "dev",
            "mgmt0"
        ]));
        assert!(ip(&["-n", &ns, "link", "set", "mgmt0", "up"]));
        assert!(ip(&[
            "-n", &ns, "link", "add", "data0", "type", "veth", "peer", "name", "data1"
        ]));
        assert!(ip(&["-n", &ns, "link", "set", "data0", "up"]));
        assert!(ip(&["-n", &ns, "link", "set", "data1", "up"]));
        let d = a._dir.path().display().to_string();
        std::fs::write(
            format!("{d}/snmpd.conf"),
            "rocommunity public 169.254.0.0/16\ncreateUser mwuser SHA-256 \"authpass123\" AES \"privpass123\"\nrouser mwuser priv\n",
        )
        .unwrap();
        a.child = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "env"])
                .arg(format!("SNMP_PERSISTENT_DIR={d}"))
                .args(["snmpd", "-f", "-Lf"])
                .arg(format!("{d}/snmpd.log"))
                .args(["-C", "-c"])
                .arg(format!("{d}/snmpd.conf"))
                .arg(format!("udp:169.254.{k}.2:161"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        Some(a)
    }

    fn ifindex(&self, name: &str) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-o", "link", "show", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        ip(&["netns", "del", &self.ns]);
        ip(&["link", "del", &self.host_if]);
    }
}

fn target(a: &Agent, auth: SnmpAuth) -> SnmpTarget {
    SnmpTarget {
        device: "radio-1".into(),
        addr: a.addr,
        auth,
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn dev_real_snmpd_v2c_and_v3_health_link_down_and_errors() {
    let Some(mut agent) = Agent::start() else {
        return;
    };
    let data0 = agent.ifindex("data0");
    let v2c = Monitor::connect(target(
        &agent,
        SnmpAuth::V2c {
            community: "public".into(),
        },
    ))
    .await
    .unwrap();
    // snmpd needs a moment to bind.
    let mut health = None;
    for _ in 0..50 {
        if let Ok(h) = v2c.poll(&[data0]).await {
            health = Some(h);
            break;
        }
    }
    let h = health.expect("snmpd answers");
    assert_eq!(
        h.interfaces,
        vec![(data0, "data0".to_string(), OperStatus::Up)]
    );

    // v3 authPriv (SHA-256, AES-128).
    let v3 = Monitor::connect(target(
        &agent,
        SnmpAuth::V3 {
            user: "mwuser".into(),
            auth_password: "authpass123".into(),
            priv_password: "privpass123".into(),
        },
    ))
    .await
    .unwrap();
    let t1 = v3.uptime().await.unwrap();
    assert!(t1 >= h.uptime_ticks, "{t1} < {}", h.uptime_ticks);

    // The data link's far end goes down: data0 is no longer up.
    assert!(ip(&["-n", &agent.ns, "link", "set", "data1", "down"]));
    let mut seen = None;
    for _ in 0..50 {
        let h = v2c.poll(&[data0]).await.unwrap();
        if h.interfaces[0].2 != OperStatus::Up {
            seen = Some(h.interfaces[0].2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.is_some(), "data0 seen down");

    // A wrong v3 password is refused, naming the device.
    let bad = Monitor::connect(target(
        &agent,
        SnmpAuth::V3 {
            user: "mwuser".into(),
            auth_password: "wrong-password".into(),
            priv_password: "privpass123".into(),
        },
    ))
    .await;
    let e = match bad {
        Ok(m) => m.uptime().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(e.to_string().contains("radio-1"), "{e}");

    // The agent dies: polls fail within the timeout.
    agent.stop();
    match v2c.poll(&[data0]).await {
        Err(SnmpError::Request { device, .. }) => assert_eq!(device, "radio-1"),
        other => panic!("{other:?}"),
    }
}
