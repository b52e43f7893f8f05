//! `meshwire bench rest`: the REST API under load from wrk, 64 connections, 2 threads, against a
//! controller with a memory store and a data plane that does nothing (`NullDriver`) in this
//! process, so the figures are the API and the controller, not the kernel. Measured: `GET /api/v1/connections` (a list
//! of 10 connections), `GET /api/v1/connections/{id}`, and `POST /api/v1/connections` (each a
//! new client, so every POST plans, negotiates, allocates and stores a connection). Side by
//! side: the same list bytes from a bare axum route with no controller, the ceiling this
//! framework and machine allow (`ratio_vs_bare_axum`, 1.0 would be no cost at all).
//! wrk comes from Debian (`scripts/bench-deps.sh`).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, NullDriver, SystemClock};

pub(crate) const WORLD: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n2}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-n2}\nspec: {endpoints: [\"n1:eth1\", \"n2:eth1\"], addresses: [\"10.0.0.1/24\", \"10.0.0.2/24\"]}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n2}, mechanisms: {kernel: {}, vxlan: {}}, ipamPrefix: 10.128.0.0/9}\n";

/// A new client per POST: wrk's Lua keeps a counter per thread, and each thread gets its own
/// id in `setup` (an unseeded `math.random` gives every thread the same names, so two threads
/// would ask for the same client at once and wait on each other's per-client lock).
const POST_LUA: &str = r#"
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
local t = os.time()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body = string.format('{"network_service":"vpn","client":{"node":"n1","name":"w-%d-%d-%d"},"mechanisms":["vxlan"]}', t, tid, n)
  return wrk.format(nil, nil, nil, body)
end
"#;

struct Load {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

fn ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, scale) = if let Some(v) = t.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Runs wrk and reads its summary.
fn wrk(url: &str, secs: u64, script: Option<&std::path::Path>) -> anyhow::Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("wrk (apt-get install wrk, or scripts/bench-deps.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let per_s = field("Requests/sec:")
        .and_then(|v| v.parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let p50_ms = field("50%").and_then(|v| ms(&v)).unwrap_or(f64::NAN);
    let p99_ms = field("99%").and_then(|v| ms(&v)).unwrap_or(f64::NAN);
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.parse().ok())
        })
        .unwrap_or(0);
    let errors = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Load {
        per_s,
        p50_ms,
        p99_ms,
        requests,
        errors,
    })
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let secs = ((10.0 * scale).round() as u64).clamp(2, 60);
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(meshwire_models::Manifest::parse("bench", WORLD)?)
        .await?;
    let mut first = String::new();
    for i in 0..10 {
        let c = ctl
            .request(serde_json::from_value(serde_json::json!({
                "network_service": "vpn", "client": {"node": "n1", "name": format!("seed-{i}")}
            }))?)
            .await?;
        if i == 0 {
            first = c.id;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = meshwire_northbound::router(ctl.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The peer: the list's bytes from a bare route.
    let list_bytes = reqwest::get(format!("{url}/api/v1/connections"))
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    anyhow::ensure!(list_bytes.len() > 1000, "list too small to mean anything");
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}", bare.local_addr()?);
    let bytes = list_bytes.clone();
    let bare_app = axum::Router::new().route(
        "/api/v1/connections",
        axum::routing::get(move || {
            let b = bytes.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], b) }
        }),
    );
    let bare_server = tokio::spawn(async move { axum::serve(bare, bare_app).await });

    let dir = tempfile::tempdir()?;
    let lua = dir.path().join("post.lua");
    std::fs::write(&lua, POST_LUA)?;
    let list_url = format!("{url}/api/v1/connections");
    let one_url = format!("{url}/api/v1/connections/{first}");
    let bare_list_url = format!("{bare_url}/api/v1/connections");
    let (list, one, bare, post) = tokio::task::spawn_blocking(move || {
        let list = wrk(&list_url, secs, None)?;
        let one = wrk(&one_url, secs, None)?;
        let bare = wrk(&bare_list_url, secs, None)?;
        let post = wrk(&list_url, secs.div_ceil(2), Some(&lua))?;
        Ok::<_, anyhow::Error>((list, one, bare, post))
    })
    .await??;
    server.abort();
    bare_server.abort();
    let created = ctl.connection_count().saturating_sub(10);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "wrk, 64 connections, 2 threads",
        "REQUESTS/S",
        "p50 ms",
        "p99 ms",
        "REQUESTS",
        "NON-2xx",
    ]);
    for (name, l) in [
        (
            format!(
                "GET /api/v1/connections (10 items, {} bytes)",
                list_bytes.len()
            ),
            &list,
        ),
        ("GET /api/v1/connections/{id}".to_string(), &one),
        (
            format!("POST /api/v1/connections (new client each; {created} made)"),
            &post,
        ),
        (
            "peer: the same list bytes from a bare axum route".to_string(),
            &bare,
        ),
    ] {
        t.add_row(vec![
            name,
            format!("{:.0}", l.per_s),
            format!("{:.2}", l.p50_ms),
            format!("{:.2}", l.p99_ms),
            l.requests.to_string(),
            l.errors.to_string(),
        ]);
    }
    println!("{t}");
    println!("Memory store and a null data plane, in this process with wrk on the same 2 cores: the API and the controller, not the kernel.");
    anyhow::ensure!(
        list.errors == 0 && one.errors == 0 && post.errors == 0,
        "the API answered errors under load"
    );
    println!(
        "rest: get_list_per_s={:.0} get_list_p99_ms={:.2} get_one_per_s={:.0} get_one_p99_ms={:.2} post_per_s={:.0} post_p99_ms={:.2} bare_axum_per_s={:.0} ratio_vs_bare_axum={:.2}",
        list.per_s,
        list.p99_ms,
        one.per_s,
        one.p99_ms,
        post.per_s,
        post.p99_ms,
        bare.per_s,
        list.per_s / bare.per_s
    );
    Ok(())
}
