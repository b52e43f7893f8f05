//! `bench failover`: highly available controllers on a three-member etcd (loopback, heartbeat
//! 50 ms, election timeout 500 ms, leader lease 1 s).
//!
//! - Failover: three `meshwire controller` processes; the leader is killed (`kill -9`) and the
//!   time until the first request succeeds through the client given all three is taken, over
//!   several kills (the killed one starts again as a standby each time). The anchor is what
//!   Kubernetes' client-go leader election gives with its defaults (a 15 s lease, 2 s retry):
//!   a killed leader is replaced after its lease runs out, 15 s.
//! - Fenced writes: request throughput of one controller (no data plane) on the same etcd with
//!   its store fenced (each write a transaction comparing the leader key) beside the same run
//!   with unconditional writes, interleaved.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meshwire_controller::client::{Client, ClientOptions};
use meshwire_controller::store::election::{Candidate, Election};
use meshwire_controller::store::{open_etcd, Store};
use meshwire_controller::{Config, Controller, NullDriver, SystemClock};
use meshwire_labs::etcd::LocalEtcdCluster;

use crate::table;

/// client-go's `LeaseDuration` default: a killed leader is replaced once it has run out.
const CLIENT_GO_LEASE: Duration = Duration::from_secs(15);

struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(meshwire_labs::ports::free_port()?)
}

/// A controller on `spec` at `port`, once it says `ready`.
fn start(spec: &str, port: u16) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("finding the meshwire binary")?;
    let mut child = Command::new(exe)
        .args(["controller", "--store", spec, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--grpc-listen",
            "off",
            "--leader-lease",
            "1s",
            "--log",
            "error",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a controller")?;
    let out = child.stdout.take().context("controller stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && l.starts_with("ready ") {
                sent = tx.send(()).is_ok();
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .context("a controller did not say ready")?;
    Ok(Proc { child, port })
}

/// Which of `procs` leads (its `/readyz` is not a standby's).
async fn leader(procs: &[Proc]) -> anyhow::Result<usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, p) in procs.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/readyz", p.port);
            if let Ok(r) = http.get(url).send().await {
                if r.status().is_success()
                    && !r.text().await.unwrap_or_default().contains("standby")
                {
                    return Ok(i);
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(name: &str) -> serde_json::Value {
    serde_json::json!({"network_service": "vpn", "client": {"node": "n1", "name": name}, "mechanisms": ["vxlan"]})
}

async fn failovers(spec: &str, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(start(spec, free_port()?)?);
    }
    let urls: Vec<String> = procs
        .iter()
        .map(|p| format!("http://127.0.0.1:{}", p.port))
        .collect();
    let client = Client::new(&urls.join(","), ClientOptions::default())?;
    client
        .manifest::<serde_json::Value>("bench", crate::rest::WORLD.to_string(), false)
        .await?;
    let mut took = Vec::new();
    for k in 0..kills {
        let l = leader(&procs).await?;
        let port = procs[l].port;
        let _ = procs[l].child.kill();
        let killed = Instant::now();
        let c: serde_json::Value = loop {
            match client
                .post("/api/v1/connections", &request(&format!("f{k}")))
                .await
            {
                Ok(c) => break c,
                // No leader yet, past the client's own wait for an election: again.
                Err(_) if killed.elapsed() < Duration::from_secs(30) => {}
                Err(e) => return Err(e).context("no request succeeded within 30 s of the kill"),
            }
        };
        took.push(killed.elapsed());
        let _ = procs[l].child.wait();
        procs[l] = start(spec, port)?;
        if let Some(id) = c["id"].as_str() {
            client
                .delete::<serde_json::Value>(&format!("/api/v1/connections/{id}"))
                .await?;
        }
    }
    Ok(took)
}

/// Requests per second of one controller on `store`, `n` requests from 8 tasks.
async fn throughput(store: Arc<dyn Store>, n: usize, round: usize) -> anyhow::Result<f64> {
    let ctl = Controller::start(
        store,
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(meshwire_models::Manifest::parse(
        "bench",
        crate::rest::WORLD,
    )?)
    .await?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let ctl = ctl.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                let r = serde_json::from_value(request(&format!("t{round}-{w}-{i}")))?;
                let c = ctl.request(r).await?;
                ctl.close(&c.id).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((n / 8 * 8) as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let kills = ((10.0 * scale).round() as usize).max(3);
    let n = ((400.0 * scale).round() as usize).max(48);
    let cluster = LocalEtcdCluster::start(3)
        .await
        .context("bench failover needs etcd-server (apt-get install etcd-server)")?;
    let spec = cluster.spec();

    let mut took = failovers(&spec, kills).await?;
    took.sort();
    let p50 = took[took.len() / 2];
    let max = took[took.len() - 1];

    // Fenced against unconditional writes, interleaved, on the same cluster.
    let plain = open_etcd(&spec, &Default::default()).await?;
    let election = Election::new(
        plain.client(),
        plain.describe(),
        Duration::from_secs(1),
        Candidate {
            id: "bench".into(),
            api: "http://127.0.0.1:1".into(),
            agents: None,
        },
    );
    // The three controllers above have stopped: this candidate leads at once.
    let leadership = election.campaign().await?;
    let fenced: Arc<dyn Store> = Arc::new(plain.fenced(leadership.fence()));
    let plain: Arc<dyn Store> = Arc::new(plain);
    let (mut f, mut u) = (Vec::new(), Vec::new());
    for round in 0..2 {
        u.push(throughput(plain.clone(), n, round * 2).await?);
        f.push(throughput(fenced.clone(), n, round * 2 + 1).await?);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (fenced_rps, unfenced_rps) = (best(&f), best(&u));
    leadership.resign().await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{}",
        table(&[
            (
                "kills (leader `kill -9`, 3 controllers, 3 etcd members)",
                kills.to_string()
            ),
            (
                "failover p50 (kill to first acknowledged request)",
                format!("{:.0} ms", ms(p50))
            ),
            ("failover max", format!("{:.0} ms", ms(max))),
            (
                "client-go defaults (15 s lease): a killed leader replaced after",
                "15000 ms".into()
            ),
            (
                "requests/s, fenced writes (request + close, 8 tasks)",
                format!("{fenced_rps:.0}")
            ),
            (
                "requests/s, unconditional writes",
                format!("{unfenced_rps:.0}")
            ),
        ])
    );
    println!(
        "failover: kills={kills} failover_p50_ms={:.0} failover_max_ms={:.0} anchor_clientgo_ms={:.0} ratio_vs_clientgo={:.1} fenced_rps={fenced_rps:.0} unfenced_rps={unfenced_rps:.0} ratio_vs_unfenced={:.2}",
        ms(p50),
        ms(max),
        ms(CLIENT_GO_LEASE),
        CLIENT_GO_LEASE.as_secs_f64() / p50.as_secs_f64(),
        fenced_rps / unfenced_rps
    );
    drop(cluster);
    Ok(())
}
