//! The client commands: they talk to the daemon over its REST API.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use meshwire_models::labels::format_labels;
use meshwire_models::{Connection, ConnectionRequest, Manifest, NetworkService, Object, Topology};
use serde_json::Value;

use crate::{Kind, Output};

/// The controller's REST client (the northbound's own).
pub use meshwire_controller::client::Client as Api;

/// A client of the controller at `base`; `MESHWIRE_TOKEN`, when set, is sent as the bearer
/// token, and `MESHWIRE_CA_CERT` (a PEM file) is trusted for an https controller.
pub fn api(base: &str) -> anyhow::Result<Api> {
    let ca_pem = match std::env::var_os("MESHWIRE_CA_CERT") {
        Some(p) => Some(
            std::fs::read(&p)
                .with_context(|| format!("MESHWIRE_CA_CERT {}", Path::new(&p).display()))?,
        ),
        None => None,
    };
    Ok(Api::new(
        base,
        meshwire_controller::client::ClientOptions {
            token: std::env::var("MESHWIRE_TOKEN").ok(),
            ca_pem,
            timeout: None,
        },
    )?)
}

/// The manifest files named by `path`: itself, or the .yaml/.yml/.json files of a directory, sorted.
fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{} holds no .yaml, .yml or .json file", path.display());
        }
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn read_manifest(path: &Path) -> anyhow::Result<(String, Manifest)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let m = Manifest::parse(&path.display().to_string(), &text)?;
    Ok((text, m))
}

pub fn validate(path: &Path) -> anyhow::Result<()> {
    for f in manifest_files(path)? {
        let (_, m) = read_manifest(&f)?;
        for w in &m.warnings {
            eprintln!("warning: {w}");
        }
        for o in &m.objects {
            println!("{}: {} ok", f.display(), o.key());
        }
    }
    Ok(())
}

/// Applies (or deletes) every file; each is checked locally first so errors name the real file.
pub async fn apply(api: &Api, path: &Path, delete: bool) -> anyhow::Result<()> {
    let files = manifest_files(path)?;
    let mut parsed = Vec::new();
    for f in &files {
        parsed.push((f, read_manifest(f)?));
    }
    if delete {
        parsed.reverse();
    }
    for (f, (text, m)) in parsed {
        for w in &m.warnings {
            eprintln!("warning: {w}");
        }
        let out: Value = api.manifest(&f.display().to_string(), text, delete).await?;
        for a in out["applied"].as_array().into_iter().flatten() {
            let change = if delete {
                "deleted"
            } else {
                a["change"].as_str().unwrap_or("")
            };
            println!("{} {change}", a["key"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

fn print<T: serde::Serialize>(
    v: &T,
    output: Output,
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(v)?),
        Output::Table => println!("{}", table()),
        Output::Dot => bail!("-o dot draws the topology only: meshwire get topology -o dot"),
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn connection_rows(t: &mut Table, conns: &[Connection]) {
    for c in conns {
        t.add_row(vec![
            c.id.clone(),
            c.network_service.clone(),
            c.client.workload().to_string(),
            c.network_service_endpoint_name.clone(),
            c.mechanism().map(|m| m.summary()).unwrap_or_default(),
            format!(
                "{} -> {}",
                c.ip_context
                    .src_ip_addrs
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                c.ip_context
                    .dst_ip_addrs
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            c.path
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(">"),
            c.state.to_string(),
        ]);
    }
}

const CONN_HEADER: [&str; 8] = [
    "ID",
    "SERVICE",
    "CLIENT",
    "ENDPOINT",
    "MECHANISM",
    "ADDRESSES (client -> endpoint)",
    "PATH",
    "STATE",
];

/// Filters for `get`.
#[derive(Default)]
pub struct Filter {
    pub service: Option<String>,
    pub selector: Option<String>,
}

impl Filter {
    fn query(&self, with_selector: bool) -> String {
        let mut q: Vec<String> = Vec::new();
        if let Some(s) = &self.service {
            q.push(format!("service={s}"));
        }
        if let (true, Some(s)) = (with_selector, &self.selector) {
            q.push(format!("labelSelector={s}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// Every item of a list resource, following `metadata.continue` page by page.
async fn list(api: &Api, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cont {
            Some(c) => format!("{path}{sep}limit=1000&continue={c}"),
            None => format!("{path}{sep}limit=1000"),
        };
        let page: Value = api.get(&url).await?;
        if let Some(v) = page["items"].as_array() {
            items.extend(v.iter().cloned());
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = Some(c.to_string()),
            _ => return Ok(items),
        }
    }
}

/// The objects of list items (documents), each with its `status`.
fn objects(items: &[Value]) -> Vec<(Object, Value)> {
    items
        .iter()
        .filter_map(|doc| {
            let m = Manifest::parse("(api)", &doc.to_string()).ok()?;
            let o = m.objects.into_iter().next()?;
            Some((o, doc["status"].clone()))
        })
        .collect()
}

pub async fn get(api: &Api, kind: Kind, output: Output, filter: &Filter) -> anyhow::Result<()> {
    if output == Output::Dot && !matches!(kind, Kind::Topology) {
        bail!("-o dot draws the topology only: meshwire get topology -o dot");
    }
    match kind {
        Kind::Services => {
            let items = list(api, "/api/v1/services").await?;
            let v: Vec<NetworkService> = objects(&items)
                .into_iter()
                .filter_map(|(o, _)| match o {
                    Object::NetworkService(s) => Some(s),
                    _ => None,
                })
                .collect();
            print(&items, output, || {
                let mut t = table(&["NAME", "PAYLOAD", "MATCHES"]);
                for s in &v {
                    t.add_row(vec![
                        s.name.clone(),
                        s.payload.to_string(),
                        s.matches.len().to_string(),
                    ]);
                }
                t
            })
        }
        Kind::Endpoints => {
            let items = list(api, &format!("/api/v1/endpoints{}", filter.query(true))).await?;
            print(&items, output, || {
                let mut t = table(&[
                    "NAME",
                    "SERVICES",
                    "LOCATION",
                    "MECHANISMS",
                    "CONNECTIONS",
                    "STATUS",
                ]);
                for (o, status) in objects(&items) {
                    let Object::NetworkServiceEndpoint(nse) = o else {
                        continue;
                    };
                    let services = nse
                        .network_service_names
                        .iter()
                        .map(|s| match nse.labels_for(s) {
                            Some(l) if !l.is_empty() => format!("{s}{{{}}}", format_labels(l)),
                            _ => s.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    let cap = nse.capacity.map(|c| format!("/{c}")).unwrap_or_default();
                    t.add_row(vec![
                        nse.name.clone(),
                        services,
                        nse.location.vertex().to_string(),
                        nse.mechanisms
                            .kinds()
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        format!("{}{cap}", status["connections"]),
                        if status["down"].as_bool() == Some(true) {
                            "down".into()
                        } else {
                            "up".into()
                        },
                    ]);
                }
                t
            })
        }
        Kind::Connections => {
            let items = list(api, &format!("/api/v1/connections{}", filter.query(false))).await?;
            let v: Vec<Connection> = items
                .iter()
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect();
            print(&v, output, || {
                let mut t = table(&CONN_HEADER);
                connection_rows(&mut t, &v);
                t
            })
        }
        Kind::Topology => {
            let v: Topology = api.get("/api/v1/topology").await?;
            if output == Output::Dot {
                let status: Value = api.get("/api/v1/topology/status").await?;
                let endpoints = list(api, "/api/v1/endpoints").await?;
                let endpoints: Vec<(String, String, bool)> = objects(&endpoints)
                    .into_iter()
                    .filter_map(|(o, status)| match o {
                        Object::NetworkServiceEndpoint(e) => Some((
                            e.name.clone(),
                            e.location.vertex().to_string(),
                            status["down"].as_bool() == Some(true),
                        )),
                        _ => None,
                    })
                    .collect();
                let down: std::collections::BTreeSet<String> = status["linksDown"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                print!("{}", crate::dot::topology(&v, &endpoints, &down));
                return Ok(());
            }
            print(&v, output, || {
                let mut t = table(&["KIND", "NAME", "DETAIL"]);
                for n in v.nodes.values() {
                    t.add_row(vec![
                        "node".into(),
                        n.name.clone(),
                        format!(
                            "forwarder={} underlay={}",
                            n.forwarder,
                            n.underlay_address
                                .map(|a| a.to_string())
                                .unwrap_or("-".into())
                        ),
                    ]);
                }
                for d in v.devices.values() {
                    t.add_row(vec![
                        "device".into(),
                        d.name.clone(),
                        format!("kind={}", d.kind),
                    ]);
                }
                for l in v.links.values() {
                    t.add_row(vec![
                        "link".into(),
                        l.name.clone(),
                        format!(
                            "{}:{} <-> {}:{} mtu={} cost={} {}",
                            l.a.vertex,
                            l.a.interface,
                            l.b.vertex,
                            l.b.interface,
                            l.mtu,
                            l.cost,
                            if l.up { "up" } else { "down" }
                        ),
                    ]);
                }
                t
            })
        }
        Kind::Resources => {
            let v: Value = api.get("/api/v1/resources").await?;
            print(&v, output, || {
                let mut t = table(&["POOL", "IN USE"]);
                for (k, n) in v["pools"].as_object().into_iter().flatten() {
                    t.add_row(vec![k.clone(), n.to_string()]);
                }
                t
            })?;
            let vfs = v["sriov"].as_array().cloned().unwrap_or_default();
            if output != Output::Table || vfs.is_empty() {
                return Ok(());
            }
            println!();
            let mut t = table(&[
                "NODE",
                "SR-IOV POOL",
                "VFS",
                "ALLOCATED",
                "UNHEALTHY",
                "TOKENS ALLOCATED",
            ]);
            for p in &vfs {
                let n = |k: &str| p[k].as_u64().unwrap_or(0).to_string();
                t.add_row(vec![
                    p["node"].as_str().unwrap_or_default().to_string(),
                    p["pool"].as_str().unwrap_or_default().to_string(),
                    n("total"),
                    n("allocated"),
                    n("unhealthy"),
                    format!("{}/{}", n("tokensAllocated"), n("tokens")),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        Kind::Leader => {
            let mut rows = Vec::new();
            for base in api.bases() {
                let (role, leader) = match api.probe(base, "/readyz").await {
                    Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                        Ok(v) if v["role"] == "standby" => (
                            "standby".to_string(),
                            v["leader"].as_str().unwrap_or("(electing)").to_string(),
                        ),
                        _ => ("leader".to_string(), base.clone()),
                    },
                    Ok((status, body)) => (
                        format!("not ready ({status})"),
                        body.lines().next().unwrap_or_default().to_string(),
                    ),
                    Err(e) => ("unreachable".to_string(), e.to_string()),
                };
                rows.push(serde_json::json!({"controller": base, "role": role, "leader": leader}));
            }
            print(&rows, output, || {
                let mut t = table(&["CONTROLLER", "ROLE", "LEADER"]);
                for r in &rows {
                    t.add_row(vec![
                        r["controller"].as_str().unwrap_or_default().to_string(),
                        r["role"].as_str().unwrap_or_default().to_string(),
                        r["leader"].as_str().unwrap_or_default().to_string(),
                    ]);
                }
                t
            })
        }
        Kind::All => {
            for k in [
                Kind::Topology,
                Kind::Services,
                Kind::Endpoints,
                Kind::Connections,
            ] {
                Box::pin(get(api, k, output, filter)).await?;
            }
            Ok(())
        }
    }
}

pub async fn request(
    api: &Api,
    req: ConnectionRequest,
    key: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let key = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let c: Connection = api.post_once("/api/v1/connections", &req, &key).await?;
    print(&c, output, || {
        let mut t = table(&CONN_HEADER);
        connection_rows(&mut t, std::slice::from_ref(&c));
        t
    })
}

pub async fn close(api: &Api, id: &str) -> anyhow::Result<()> {
    let c: Connection = api.delete(&format!("/api/v1/connections/{id}")).await?;
    println!(
        "connection {} closed (service {}, endpoint {})",
        c.id, c.network_service, c.network_service_endpoint_name
    );
    Ok(())
}
