//! `meshwire bench ui`: the operator page (`/ui`) in headless Chromium against a controller in
//! this process (memory store, null data plane) holding 1,000 nodes (4 spines, 996 leaves, each
//! leaf on two spines), 100 endpoints and 10,000 connections. Measured in the browser: the time
//! from navigation to the first complete picture (graph laid out, list drawn), the time one live
//! update takes to apply, and from a request returning to the page having drawn it. Side by side:
//! the same elements, style and layout in a bare cytoscape.js instance (no API, no list), the floor
//! this graph library sets for drawing the graph (`ratio_vs_bare_cytoscape`: its time over the
//! time our page takes to show the graph, fetching included; 1.0 would be no cost of our own).
//! Needs chromium and chromium-driver.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_controller::store::memory::MemoryStore;
use meshwire_controller::{Config, Controller, NullDriver, SystemClock};
use meshwire_labs::browser::{open_ui, Chromedriver};
use meshwire_models::{ClientRef, ConnectionRequest, NetworkService, Object, Payload};

const SPINES: usize = 4;

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let nodes = ((1000.0 * scale).round() as usize).max(SPINES + 2);
    let connections = ((10_000.0 * scale).round() as usize).max(10);
    let endpoints = 100.min(nodes - SPINES);
    let ctl = Controller::start(
        Arc::new(MemoryStore::default()),
        Arc::new(NullDriver),
        Arc::new(SystemClock),
        Config {
            ipam_prefix: "100.64.0.0/10".parse()?,
            ..Config::default()
        },
    )
    .await?;
    let mut m = meshwire_models::Manifest::default();
    let spine = |s: usize| format!("spine{s}");
    let leaf = |l: usize| format!("leaf{l}");
    for s in 0..SPINES {
        m.objects.push(crate::node(spine(s), s));
    }
    let leaves = nodes - SPINES;
    for l in 0..leaves {
        m.objects.push(crate::node(leaf(l), SPINES + l));
        m.objects
            .push(crate::link(&leaf(l), &spine(l % SPINES), 10));
        m.objects
            .push(crate::link(&leaf(l), &spine((l + 1) % SPINES), 10));
    }
    m.objects.push(Object::NetworkService(NetworkService {
        name: "svc".into(),
        vl3: None,
        payload: Payload::Ip,
        matches: vec![],
    }));
    for e in 0..endpoints {
        m.objects.push(crate::endpoint(
            format!("gw{e}"),
            "svc",
            &leaf(e * leaves / endpoints),
            0,
        ));
    }
    ctl.apply(m).await?;
    let mut rng = crate::Rng(0x5eed_0f01);
    let req = |n: usize, rng: &mut crate::Rng| ConnectionRequest {
        network_service: "svc".into(),
        client: ClientRef {
            node: leaf(rng.below(leaves)),
            name: Some(format!("w{n}")),
        },
        labels: Default::default(),
        mechanisms: vec![],
        interface: None,
        excluded_prefixes: vec![],
        sriov_token: None,
    };
    for n in 0..connections {
        ctl.request(req(n, &mut rng)).await?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = meshwire_northbound::router(ctl.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let driver = Chromedriver::start()?;
    let c = driver.session(1400, 900).await?;
    let t = Instant::now();
    let shown = open_ui(&c, &url).await.context("opening the page")?;
    let wall = t.elapsed();
    anyhow::ensure!(shown == "ready", "the page did not draw ({shown})");
    let first_ms = c
        .execute("return window.meshwire.timings.firstRender;", vec![])
        .await?
        .as_f64()
        .context("firstRender")?;
    let phases = c
        .execute("return window.meshwire.timings.phases;", vec![])
        .await?;
    let graph_ms = c
        .execute("return window.meshwire.timings.graphShown;", vec![])
        .await?
        .as_f64()
        .context("graphShown")?;
    let drawn = c
        .execute(
            "return [window.meshwire.cy.nodes('.vertex').length, window.meshwire.cy.edges('.link').length, window.meshwire.connections.size];",
            vec![],
        )
        .await?;
    anyhow::ensure!(
        drawn == serde_json::json!([nodes, 2 * leaves, connections]),
        "the page drew {drawn}, not {nodes} nodes, {} links and {connections} connections",
        2 * leaves
    );

    // One update at a time: a request, then the page's drawing of it.
    let updates = 20;
    let mut apply = Vec::new();
    let mut to_screen = Vec::new();
    for n in 0..updates {
        c.execute(
            r#"window.__seen = new Promise((resolve) => {
                 const f = (e) => { if (e.detail.kind === "connection" && e.detail.event.state === "up") {
                   removeEventListener("meshwire:update", f);
                   resolve([performance.now(), window.meshwire.timings.lastUpdate]); } };
                 addEventListener("meshwire:update", f); });
               window.__asked = performance.now();"#,
            vec![],
        )
        .await?;
        let t = Instant::now();
        ctl.request(req(connections + n, &mut rng)).await?;
        let answered = t.elapsed();
        let seen = c
            .execute_async(
                "const done = arguments[arguments.length - 1]; window.__seen.then((v) => done([v[0] - window.__asked, v[1]]));",
                vec![],
            )
            .await?;
        let total = seen[0].as_f64().unwrap_or(f64::NAN);
        // From the request's answer to the page's drawing: the page's whole delay less the
        // request's own time.
        to_screen.push((total - answered.as_secs_f64() * 1000.0).max(0.0));
        apply.push(seen[1].as_f64().unwrap_or(f64::NAN));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (apply_ms, screen_ms) = (med(&mut apply), med(&mut to_screen));

    // The peer: the same elements and layout in a bare cytoscape.js instance.
    let bare_ms = c
        .execute(
            r#"const els = window.meshwire.cy.json().elements;
               const all = [...(els.nodes || []), ...(els.edges || [])];
               const div = document.createElement("div");
               div.style.cssText = "position:absolute;left:0;top:0;width:1000px;height:800px";
               document.body.appendChild(div);
               const vertices = all.filter((e) => e.group === "nodes" && e.classes.includes("vertex")).length;
               const t0 = performance.now();
               const cy = cytoscape({ container: div, elements: all, style: window.meshwire.cy.style().json(),
                 layout: vertices > 400 ? { name: "grid", animate: false, avoidOverlap: true }
                 : { name: "cose", randomize: false, animate: false, numIter: 1500 } });
               cy.fit(undefined, 30);
               const ms = performance.now() - t0;
               cy.destroy(); div.remove();
               return ms;"#,
            vec![],
        )
        .await?
        .as_f64()
        .context("bare cytoscape")?;
    let _ = c.close().await;
    server.abort();

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["headless Chromium, 1400×900", "ms"]);
    t.add_row(vec![
        format!("first picture: {nodes} nodes, {} links, {endpoints} endpoints, {connections} connections (page's own clock)", 2 * leaves),
        format!("{first_ms:.0}"),
    ]);
    t.add_row(vec![
        "  of which the graph, drawn while the connections load".to_string(),
        format!("{graph_ms:.0}"),
    ]);
    t.add_row(vec![
        "  the same, navigation to ready as the test saw it".to_string(),
        format!("{:.0}", wall.as_secs_f64() * 1000.0),
    ]);
    t.add_row(vec![
        format!("one connection update applied (median of {updates})"),
        format!("{apply_ms:.1}"),
    ]);
    t.add_row(vec![
        "request answered -> drawn on the page (median)".to_string(),
        format!("{screen_ms:.1}"),
    ]);
    t.add_row(vec![
        "peer: bare cytoscape.js, same elements, style and layout, no API".to_string(),
        format!("{bare_ms:.0}"),
    ]);
    println!("{t}");
    println!("Where the first picture's time went (ms): {phases}");
    println!(
        "ui: nodes={nodes} connections={connections} first_render_ms={first_ms:.0} graph_shown_ms={graph_ms:.0} update_apply_ms={apply_ms:.1} request_to_screen_ms={screen_ms:.1} bare_cytoscape_ms={bare_ms:.0} ratio_vs_bare_cytoscape={:.2}",
        bare_ms / graph_ms.max(1e-9)
    );
    Ok(())
}
