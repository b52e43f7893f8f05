//! Node agents in labs (`meshwire lab up`, unless `--in-process`): each host runs its own
//! `meshwire node` inside its namespace, reaching the controller over the lab's management
//! network (real TCP through veths) with a token of its own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use meshwire_labs::spec::Lab;

use crate::client;

fn agents_dir(d: &Path) -> PathBuf {
    d.join("agents")
}

/// A fresh random secret, hex.
fn secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for an agent token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes one token per host (readable by root only) and the controller's
/// `--agent-tokens` file naming them; returns that file.
pub fn write_tokens(lab: &Lab, d: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = agents_dir(d);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut table = String::from("agents:\n");
    for n in lab.nodes.values().filter(|n| n.is_host()) {
        let f = dir.join(format!("{}.token", n.name));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&f)
            .with_context(|| format!("writing {}", f.display()))?;
        std::io::Write::write_all(&mut out, secret()?.as_bytes())?;
        table.push_str(&format!(
            "  - {{node: {}, tokenFile: \"{}\"}}\n",
            n.name,
            f.display()
        ));
    }
    let t = d.join("agents.yaml");
    std::fs::write(&t, table).with_context(|| format!("writing {}", t.display()))?;
    Ok(t)
}

/// The command line of `node`'s agent, kept so it can be started again the same way.
fn command(lab: &Lab, d: &Path, node: &str, agents_url: &str) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding the meshwire binary")?;
    Ok(vec![
        "netns".into(),
        "exec".into(),
        lab.netns(node),
        exe.display().to_string(),
        "node".into(),
        "--node".into(),
        node.into(),
        "--controller".into(),
        agents_url.into(),
        "--token-file".into(),
        agents_dir(d)
            .join(format!("{node}.token"))
            .display()
            .to_string(),
        "--state-dir".into(),
        agents_dir(d)
            .join(format!("{node}.state"))
            .display()
            .to_string(),
        "--nsm-socket".into(),
        agents_dir(d)
            .join(format!("{node}.nsm.sock"))
            .display()
            .to_string(),
    ])
}

/// Starts every host's agent and waits until the controller shows each attached.
pub async fn start_all(lab: &Lab, d: &Path, url: &str, agents_url: &str) -> anyhow::Result<()> {
    let hosts: Vec<String> = lab
        .nodes
        .values()
        .filter(|n| n.is_host())
        .map(|n| n.name.clone())
        .collect();
    for n in &hosts {
        let mut args = command(lab, d, n, agents_url)?;
        args.extend(crate::lab_sriov::prepare(lab, &agents_dir(d), n).await?);
        std::fs::write(
            agents_dir(d).join(format!("{n}.args")),
            serde_json::to_vec(&args)?,
        )?;
        spawn(d, n).await?;
    }
    for n in &hosts {
        wait_attached(url, n, Duration::from_secs(20)).await?;
    }
    Ok(())
}

/// Starts `node`'s agent with its saved command line (appending to its log).
pub async fn spawn(d: &Path, node: &str) -> anyhow::Result<u32> {
    let dir = agents_dir(d);
    let args: Vec<String> = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{node}.args"))).with_context(|| {
            format!("node {node} has no agent in this lab (was it brought up with --in-process?)")
        })?,
    )?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{node}.log")))?;
    let child = std::process::Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the agent of node {node}"))?;
    let pid = child.id();
    std::fs::write(dir.join(format!("{node}.pid")), pid.to_string())?;
    Ok(pid)
}

/// Stops `node`'s agent (SIGTERM, or SIGKILL to emulate a crash) and waits until it is gone.
pub async fn stop(d: &Path, node: &str, kill: bool) -> anyhow::Result<Option<u32>> {
    let Ok(pid) = std::fs::read_to_string(agents_dir(d).join(format!("{node}.pid"))) else {
        return Ok(None);
    };
    let pid: u32 = pid.trim().parse().context("agent pid file")?;
    let alive = || !crate::lab::exited(&pid.to_string());
    if !alive() {
        return Ok(None);
    }
    let signal = if kill { "-KILL" } else { "-TERM" };
    let _ = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await;
    for _ in 0..1500 {
        if !alive() {
            return Ok(Some(pid));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the agent of node {node} (pid {pid}) has not exited within 30 s")
}

/// Waits until the controller at `url` shows `node`'s agent attached.
pub async fn wait_attached(url: &str, node: &str, within: Duration) -> anyhow::Result<()> {
    let api = client::api(url)?;
    let t = std::time::Instant::now();
    loop {
        let status: serde_json::Value = api.get("/api/v1/topology/status").await?;
        if status["agents"][node]["state"] == "attached" {
            return Ok(());
        }
        if t.elapsed() > within {
            bail!(
                "the agent of node {node} did not attach within {} s: {}",
                within.as_secs(),
                status["agents"][node]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
