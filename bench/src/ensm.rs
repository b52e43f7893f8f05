//! `meshwire bench ensm`: connection setup through an eNSM, from the request to the first
//! packet, on the `firewall` lab (an emulated appliance: netconfd behind sshd, and its agent
//! programming the data plane). Each round: POST a request, then probe the appliance's tunnel
//! address from the client namespace until it answers; then close. The same is measured to a
//! workload endpoint on another host (`two-node` lab), as the baseline without a device.
//! There is no peer implementation to run side by side (upstream NSM has no eNSM), so the
//! last line carries figures only.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn lab_file(name: &str) -> PathBuf {
    let here = PathBuf::from("labs").join(name).join("lab.yaml");
    if here.exists() {
        return here;
    }
    // The workspace's labs/, beside this crate's directory.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("labs")
        .join(name)
        .join("lab.yaml")
}

struct Round {
    answered: f64,
    first_packet: f64,
}

/// One lab's rounds: request → first reply from `target` (a field of the connection's IP
/// context) → close.
async fn rounds(
    lab: &str,
    body: serde_json::Value,
    netns: &str,
    n: usize,
) -> anyhow::Result<Vec<Round>> {
    let exe = std::env::current_exe()?;
    let _ = Command::new(&exe).args(["lab", "down", lab]).output();
    let up = Command::new(&exe)
        .args(["lab", "up"])
        .arg(lab_file(lab))
        .output()
        .context("lab up")?;
    if !up.status.success() {
        bail!(
            "lab up {lab}: {}",
            String::from_utf8_lossy(&up.stderr).trim()
        );
    }
    let result = async {
        let url = meshwire_labs::runner::controller_url(lab)?;
        let http = reqwest::Client::new();
        let mut out = Vec::with_capacity(n);
        for i in 0..n + 2 {
            let t = Instant::now();
            let resp = http
                .post(format!("{url}/api/v1/connections"))
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            let c: serde_json::Value = resp.json().await?;
            if !status.is_success() {
                bail!("request on lab {lab}: {c}");
            }
            let answered = t.elapsed().as_secs_f64();
            let target = c["ip_context"]["dst_ip_addrs"][0]
                .as_str()
                .and_then(|a| a.split('/').next())
                .context("no endpoint address")?
                .to_string();
            let first_packet = loop {
                let ok = Command::new("ip")
                    .args([
                        "netns", "exec", netns, "ping", "-c1", "-W0.2", "-q", &target,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?
                    .success();
                if ok {
                    break t.elapsed().as_secs_f64();
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("{target} did not answer within 10 s on lab {lab}");
                }
            };
            let id = c["id"].as_str().context("no id")?;
            let closed = http
                .delete(format!("{url}/api/v1/connections/{id}"))
                .send()
                .await?;
            if !closed.status().is_success() {
                bail!(
                    "close on lab {lab}: {}",
                    closed.text().await.unwrap_or_default()
                );
            }
            // Two warm-up rounds are not counted.
            if i >= 2 {
                out.push(Round {
                    answered,
                    first_packet,
                });
            }
        }
        Ok(out)
    }
    .await;
    let _ = Command::new(&exe).args(["lab", "down", lab]).output();
    result
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    if !meshwire_labs::appliance::available() {
        bail!(
            "bench ensm needs root, netconfd, openssh-server and snmpd (scripts/install-deps.sh)"
        );
    }
    let n = ((40.0 * scale).round() as usize).max(10);
    let ensm = rounds(
        "firewall",
        serde_json::json!({"network_service": "firewall", "client": {"node": "worker", "name": "clab-firewall-client"}}),
        "clab-firewall-client",
        n,
    )
    .await?;
    let local = rounds(
        "two-node",
        serde_json::json!({"network_service": "two-node", "client": {"node": "n1", "name": "clab-two-node-client"}, "mechanisms": ["vxlan"]}),
        "clab-two-node-client",
        n,
    )
    .await?;
    let stats = |v: &[Round], f: fn(&Round) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).map(|s| s * 1000.0).collect();
        (pct(&mut x, 0.5), pct(&mut x, 0.99))
    };
    let (e_ans50, e_ans99) = stats(&ensm, |r| r.answered);
    let (e_fp50, e_fp99) = stats(&ensm, |r| r.first_packet);
    let (l_ans50, l_ans99) = stats(&local, |r| r.answered);
    let (l_fp50, l_fp99) = stats(&local, |r| r.first_packet);
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "SETUP (ms)",
        "REQUEST ANSWERED p50",
        "p99",
        "FIRST PACKET p50",
        "p99",
    ]);
    t.add_row(vec![
        format!("through the eNSM (firewall appliance, VXLAN), {n} rounds"),
        format!("{e_ans50:.1}"),
        format!("{e_ans99:.1}"),
        format!("{e_fp50:.1}"),
        format!("{e_fp99:.1}"),
    ]);
    t.add_row(vec![
        format!("workload endpoint on another host (VXLAN, no device), {n} rounds"),
        format!("{l_ans50:.1}"),
        format!("{l_ans99:.1}"),
        format!("{l_fp50:.1}"),
        format!("{l_fp99:.1}"),
    ]);
    println!("{t}");
    println!("The appliance's profile waits 100 ms after each commit for its data plane (commit.settle).");
    println!(
        "ensm: rounds={n} answered_p50_ms={e_ans50:.1} answered_p99_ms={e_ans99:.1} first_packet_p50_ms={e_fp50:.1} first_packet_p99_ms={e_fp99:.1} local_first_packet_p50_ms={l_fp50:.1} local_first_packet_p99_ms={l_fp99:.1}"
    );
    Ok(())
}
