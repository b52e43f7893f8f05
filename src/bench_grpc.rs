//! `meshwire bench grpc`: Request/Close cycles per second through the NSM-compatible gRPC API
//! (a tonic client built from the same NSM v1 protos), one client and 16 concurrent ones,
//! against a controller with a memory store and a recording data plane, so the figure is the
//! API and the controller, not the kernel. REST request/close is measured side by side.
//! The Python (grpcio) client upstream NSM users would bring is not run here yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, RecordingDriver, SystemClock};
use meshwire_northbound::grpc::pb::{connection as c, networkservice as ns};

const WORLD: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n2}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-n2}\nspec: {endpoints: [\"n1:eth1\", \"n2:eth1\"], addresses: [\"10.0.0.1/24\", \"10.0.0.2/24\"]}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: gw}\nspec: {network_service_names: [vpn], location: {node: n2}, mechanisms: {kernel: {}, vxlan: {}}}\n";

fn request(client: usize) -> ns::NetworkServiceRequest {
    ns::NetworkServiceRequest {
        connection: Some(c::Connection {
            network_service: "vpn".into(),
            labels: HashMap::from([("nodeName".to_string(), "n1".to_string())]),
            path: Some(c::Path {
                index: 0,
                path_segments: vec![c::PathSegment {
                    name: format!("nsc-{client}"),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        mechanism_preferences: vec![c::Mechanism {
            cls: "REMOTE".into(),
            r#type: "VXLAN".into(),
            parameters: HashMap::new(),
        }],
    }
}

async fn grpc_cycles(url: &str, clients: usize, per_client: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut nsc = ns::network_service_client::NetworkServiceClient::connect(url).await?;
            for _ in 0..per_client {
                let conn = nsc.request(request(k)).await?.into_inner();
                nsc.close(conn).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((clients * per_client) as f64 / t.elapsed().as_secs_f64())
}

async fn rest_cycles(url: &str, n: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({"network_service": "vpn", "client": {"node": "n1", "name": "rest"}, "mechanisms": ["vxlan"]});
    let t = Instant::now();
    for _ in 0..n {
        let c: serde_json::Value = http
            .post(format!("{url}/api/v1/connections"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = c["id"].as_str().context("no id")?;
        http.delete(format!("{url}/api/v1/connections/{id}"))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let n = ((5000.0 * scale).round() as usize).max(200);
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(RecordingDriver::quiet()),
        Arc::new(SystemClock),
        Config::default(),
    )
    .await?;
    ctl.apply(meshwire_models::Manifest::parse("bench", WORLD)?)
        .await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_url = format!("http://{}", grpc.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from_listener(grpc, true, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server =
        tokio::spawn(meshwire_northbound::grpc::router(ctl.clone()).serve_with_incoming(incoming));
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rest_url = format!("http://{}", rest.local_addr()?);
    let app = meshwire_northbound::router(ctl.clone());
    let rest_server = tokio::spawn(async move { axum::serve(rest, app).await });
    // Warm up.
    grpc_cycles(&grpc_url, 1, 50).await?;
    let one = grpc_cycles(&grpc_url, 1, n).await?;
    let many = grpc_cycles(&grpc_url, 16, n / 16).await?;
    let rest_one = rest_cycles(&rest_url, n).await?;
    server.abort();
    rest_server.abort();
    anyhow::ensure!(ctl.connection_count() == 0, "connections left behind");
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["REQUEST/CLOSE CYCLES", "PER SECOND"]);
    t.add_row(vec![
        format!("gRPC (NSM v1), 1 client, {n} cycles"),
        format!("{one:.0}"),
    ]);
    t.add_row(vec![
        format!("gRPC (NSM v1), 16 clients, {} cycles", n / 16 * 16),
        format!("{many:.0}"),
    ]);
    t.add_row(vec![
        format!("REST, 1 client, {n} cycles"),
        format!("{rest_one:.0}"),
    ]);
    println!("{t}");
    println!(
        "Memory store and a recording data plane: the API and the controller, not the kernel."
    );
    println!(
        "grpc: cycles={n} grpc_1_per_s={one:.0} grpc_16_per_s={many:.0} rest_1_per_s={rest_one:.0}"
    );
    Ok(())
}
