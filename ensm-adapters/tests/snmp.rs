//! Input: our SNMP monitor against the real snmpd (net-snmp) running in a namespace that plays
//! the device: a management veth to the host, and a data link (a veth pair) inside. Output:
//! sysUpTime and ifOperStatus over v2c and v3 authPriv; a data link taken down is announced by a
//! linkDown trap and then polled down; a wrong v3 password and a dead agent are errors naming the
//! device.
//! Needs root and snmpd; skipped otherwise unless MESHWIRE_REQUIRE_ALL is set.

use std::time::Duration;

use meshwire_labs::appliance::SnmpAgent;

use meshwire_ensm_adapters::snmp::{
    link_trap, Monitor, OperStatus, SnmpAuth, SnmpError, SnmpTarget,
};

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .status()
        .map(|st| st.success())
        .unwrap_or(false)
}

fn agent(trap_port: u16) -> Option<SnmpAgent> {
    let root = std::process::Command::new("id")
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
    Some(SnmpAgent::start(Some(trap_port)).unwrap())
}

fn target(a: &SnmpAgent, auth: SnmpAuth) -> SnmpTarget {
    SnmpTarget {
        device: "radio-1".into(),
        addr: a.addr,
        auth,
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn dev_real_snmpd_v2c_and_v3_health_link_down_and_errors() {
    // The trap receiver listens before the agent exists: no linkDown can be missed.
    let traps = meshwire_ensm_adapters::snmp::trap_receiver("0.0.0.0:0".parse().unwrap(), "public")
        .await
        .unwrap();
    let Some(mut agent) = agent(traps.local_addr().port()) else {
        return;
    };
    let data0 = agent.ifindex("data0").unwrap();
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
    // snmpd checks ifOperStatus every second and sends linkDown; wait for that event.
    let trap = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let n = traps.recv().await.unwrap();
            let Ok(oid) = n.notification.trap_oid() else {
                continue;
            };
            if let Some(t) = link_trap(&oid, n.notification.varbinds()) {
                if t.if_index == data0 && !t.up {
                    return t;
                }
            }
        }
    })
    .await
    .expect("a linkDown trap for data0 within 15 s");
    assert_eq!(trap.if_index, data0);
    // The poll agrees with the trap.
    let h = v2c.poll(&[data0]).await.unwrap();
    assert_ne!(h.interfaces[0].2, OperStatus::Up, "data0 polled down");

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
