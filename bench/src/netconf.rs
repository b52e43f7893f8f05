//! `meshwire bench netconf`: edit-config + commit round trips per second against one real
//! netconfd (behind sshd), Meshwire's client and ncclient (PyPI) side by side in the same run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_ensm_adapters::netconf::{
    Auth, Datastore, DefaultOperation, HostKey, Operation, Session, Target,
};
use meshwire_labs::appliance::{self, Appliance};

const NCCLIENT_PY: &str = include_str!("peers/ncclient_commits.py");
const IF_NS: &str = "urn:ietf:params:xml:ns:yang:ietf-interfaces";

fn config(i: usize) -> String {
    format!("<interfaces xmlns=\"{IF_NS}\"><interface><name>mw0</name><description>meshwire {i}</description><type xmlns:ianaift=\"urn:ietf:params:xml:ns:yang:iana-if-type\">ianaift:l2vlan</type></interface></interfaces>")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    if !appliance::available() {
        bail!("bench netconf needs root, netconfd and openssh-server (scripts/install-deps.sh)");
    }
    let n = ((300.0 * scale).round() as usize).max(20);
    let dev = Appliance::start(&Appliance::ietf_interfaces())?;
    let s = Session::connect(&Target {
        device: "bench".into(),
        host: "127.0.0.1".into(),
        port: dev.port,
        user: "root".into(),
        auth: Auth::Key {
            path: dev.client_key(),
            passphrase: None,
        },
        host_key: HostKey::Fingerprint(dev.fingerprint()?),
        timeout: Duration::from_secs(30),
    })
    .await?;
    // Warm up, then measure each round trip pair.
    for i in 0..5 {
        s.edit_config(Datastore::Candidate, DefaultOperation::Merge, &config(i))
            .await?;
        s.ok(Operation::Commit {
            confirm_timeout: None,
            persist: None,
        })
        .await?;
    }
    let mut each = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        s.edit_config(
            Datastore::Candidate,
            DefaultOperation::Merge,
            &config(i + 5),
        )
        .await?;
        s.ok(Operation::Commit {
            confirm_timeout: None,
            persist: None,
        })
        .await?;
        each.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mw = t0.elapsed().as_secs_f64();
    s.close().await?;
    let mw_rate = n as f64 / mw;
    let (p50, p99) = (pct(&mut each, 0.5), pct(&mut each, 0.99));

    let has_ncclient = Command::new("python3")
        .args(["-c", "import ncclient"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let nc = if has_ncclient {
        let script = dev.path("ncclient_commits.py");
        std::fs::write(&script, NCCLIENT_PY)?;
        let out = Command::new("python3")
            .arg(&script)
            .args([
                dev.port.to_string(),
                dev.client_key().display().to_string(),
                n.to_string(),
            ])
            .output()
            .context("running ncclient")?;
        if !out.status.success() {
            bail!("ncclient: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .parse::<f64>()?,
        )
    } else {
        None
    };
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        format!("{n} × (edit-config + commit), one netconfd over SSH"),
        "round trips/s".into(),
        "per pair".into(),
    ]);
    t.add_row(vec![
        "meshwire".into(),
        format!("{mw_rate:.0}"),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
    ]);
    match nc {
        Some(secs) => t.add_row(vec![
            "ncclient".to_string(),
            format!("{:.0}", n as f64 / secs),
            format!("mean {:.2} ms", secs * 1e3 / n as f64),
        ]),
        None => t.add_row(vec![
            "ncclient".to_string(),
            "not installed (scripts/bench-deps.sh)".to_string(),
            "-".to_string(),
        ]),
    };
    println!("{t}");
    let mut line = format!(
        "netconf: pairs={n} mw_pairs_per_s={mw_rate:.0} mw_p50_ms={p50:.2} mw_p99_ms={p99:.2}"
    );
    if let Some(secs) = nc {
        let rate = n as f64 / secs;
        line.push_str(&format!(
            " ncclient_pairs_per_s={rate:.0} ratio_vs_ncclient={:.2}",
            mw_rate / rate
        ));
    }
    println!("{line}");
    Ok(())
}
