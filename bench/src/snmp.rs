//! `meshwire bench snmp`: sequential SNMP v2c GETs per second against one real snmpd, our
//! monitor (async-snmp) against `snmpget` in a loop and pysnmp, side by side in the same run;
//! and v3 authPriv for us.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_ensm_adapters::snmp::{Monitor, SnmpAuth, SnmpTarget};
use meshwire_labs::appliance::SnmpAgent;

const PYSNMP_PY: &str = include_str!("peers/pysnmp_gets.py");

async fn rate(m: &Monitor, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for _ in 0..n {
        m.uptime().await?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let n = ((2000.0 * scale).round() as usize).max(50);
    let agent = SnmpAgent::start(None)
        .context("bench snmp needs root and snmpd (scripts/install-deps.sh)")?;
    let target = |auth| SnmpTarget {
        device: "bench".into(),
        addr: agent.addr,
        auth,
        timeout: Duration::from_secs(2),
    };
    let v2c = Monitor::connect(target(SnmpAuth::V2c {
        community: "public".into(),
    }))
    .await?;
    let mut up = false;
    for _ in 0..100 {
        if v2c.uptime().await.is_ok() {
            up = true;
            break;
        }
    }
    if !up {
        bail!("snmpd did not answer");
    }
    let mw = rate(&v2c, n).await?;
    let v3 = Monitor::connect(target(SnmpAuth::V3 {
        user: "mwuser".into(),
        auth_password: "authpass123".into(),
        priv_password: "privpass123".into(),
    }))
    .await?;
    v3.uptime().await?;
    let mw_v3 = rate(&v3, n).await?;

    // snmpget: one process per GET, as a shell loop would.
    let k = (n / 10).max(20);
    let host = agent.addr.ip().to_string();
    let t0 = Instant::now();
    for _ in 0..k {
        let out = Command::new("snmpget")
            .args(["-v2c", "-c", "public", "-Oqv", &host, "1.3.6.1.2.1.1.3.0"])
            .output()
            .context("snmpget (apt-get install snmp)")?;
        if !out.status.success() {
            bail!("snmpget: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    let snmpget = k as f64 / t0.elapsed().as_secs_f64();

    let has_pysnmp = Command::new("python3")
        .args(["-c", "import pysnmp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let pysnmp = if has_pysnmp {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("pysnmp_gets.py");
        std::fs::write(&script, PYSNMP_PY)?;
        let out = Command::new("python3")
            .arg(&script)
            .args([host.clone(), "161".into(), n.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("pysnmp: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .parse()?;
        Some(n as f64 / secs)
    } else {
        None
    };
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["sequential GETs of sysUpTime.0, one snmpd", "GETs/s"]);
    t.add_row(vec![
        "meshwire (async-snmp), v2c".to_string(),
        format!("{mw:.0}"),
    ]);
    t.add_row(vec![
        "meshwire (async-snmp), v3 authPriv SHA-256/AES-128".to_string(),
        format!("{mw_v3:.0}"),
    ]);
    t.add_row(vec![
        format!("snmpget in a loop, v2c ({k} runs)"),
        format!("{snmpget:.0}"),
    ]);
    t.add_row(vec![
        "pysnmp (asyncio), v2c".to_string(),
        pysnmp
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "not installed (scripts/bench-deps.sh)".into()),
    ]);
    println!("{t}");
    let mut line = format!(
        "snmp: gets={n} mw_v2c_gets_per_s={mw:.0} mw_v3_gets_per_s={mw_v3:.0} snmpget_per_s={snmpget:.0} ratio_vs_snmpget={:.2}",
        mw / snmpget
    );
    if let Some(p) = pysnmp {
        line.push_str(&format!(
            " pysnmp_gets_per_s={p:.0} ratio_vs_pysnmp={:.2}",
            mw / p
        ));
    }
    println!("{line}");
    Ok(())
}
