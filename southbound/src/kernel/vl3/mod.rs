//! The kernel data plane's part of a vL3 network (see the controller's `vl3` module): its
//! routers forward, their member routes follow the members, each router namespace answers
//! DNS for the zone ([`dns`]), and each member namespace's resolver is its router.
//!
//! Everything here derives from the desired set: the zones from the connections the driver
//! holds, after every delta and full set ([`Routers::sync`]).

pub mod dns;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use meshwire_models::{Connection, Route, Vl3Role};
use rtnetlink::Handle;

use super::netns;
use super::sweep::{our_routes, route_oif, route_prefix};
use super::wiring::endpoint_vertex;

/// Where `ip netns exec` finds a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The DNS servers of the vL3 routers this driver holds, by namespace.
#[derive(Default)]
pub struct Routers {
    servers: tokio::sync::Mutex<HashMap<String, Server>>,
}

struct Server {
    zone: Arc<RwLock<dns::Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Routers {
    /// Serves DNS in every router namespace the desired set has here, with its zone now;
    /// stops the servers of routers it no longer has.
    pub async fn sync(&self, conns: &[Connection], node: Option<&str>) {
        let want = zones(conns, node);
        let mut servers = self.servers.lock().await;
        servers.retain(|ns, _| {
            let keep = want.contains_key(ns);
            if !keep {
                tracing::info!(netns = %ns, "vL3 router gone: its DNS server stops");
            }
            keep
        });
        for (ns, zone) in want {
            if let Some(s) = servers.get(&ns) {
                if !s.task.is_finished() {
                    *s.zone.write().unwrap_or_else(|p| p.into_inner()) = zone;
                    continue;
                }
            }
            let shared = Arc::new(RwLock::new(zone));
            match serve(&ns, shared.clone()).await {
                Ok(task) => {
                    tracing::info!(netns = %ns, "vL3 router: DNS server listening on port 53");
                    servers.insert(ns, Server { zone: shared, task });
                }
                Err(e) => {
                    tracing::warn!(netns = %ns, error = %e, "vL3 router: cannot serve DNS (tried again at the next change)")
                }
            }
        }
    }

    /// The zone a router namespace answers from now (tests, status).
    pub async fn zone(&self, ns: &str) -> Option<dns::Zone> {
        let servers = self.servers.lock().await;
        servers
            .get(ns)
            .map(|s| s.zone.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The zone of every router namespace the connections have on `node` (`None`: on every node):
/// each member's name at its router; through each peer leg, the far side's members.
pub fn zones(conns: &[Connection], node: Option<&str>) -> BTreeMap<String, dns::Zone> {
    let here = |n: &str| node.is_none_or(|x| x == n);
    let mut out: BTreeMap<String, dns::Zone> = BTreeMap::new();
    let mut add = |ns: &Option<String>, zone: &str, members: Vec<(Option<String>, IpAddr)>| {
        let Some(ns) = ns else { return };
        let z = out.entry(ns.clone()).or_insert_with(|| dns::Zone {
            zone: zone.to_ascii_lowercase(),
            names: BTreeMap::new(),
        });
        for (name, addr) in members {
            if let (Some(n), IpAddr::V4(a)) = (name, addr) {
                z.names.entry(n).or_default().insert(a);
            }
        }
    };
    for c in conns {
        let Some(leg) = &c.vl3 else { continue };
        let p = &c.placement;
        match leg.role {
            Vl3Role::Member => {
                if here(endpoint_vertex(c)) {
                    let m = c
                        .ip_context
                        .src_ip_addrs
                        .first()
                        .map(|a| (leg.name.clone(), a.addr()));
                    add(&p.endpoint_netns, &leg.zone, m.into_iter().collect());
                }
            }
            Vl3Role::Peer => {
                let far = |ms: &[meshwire_models::Vl3Member]| {
                    ms.iter().map(|m| (m.name.clone(), m.addr)).collect()
                };
                if here(&c.client.node) {
                    add(&p.client_netns, &leg.zone, far(&leg.endpoint_members));
                }
                if here(endpoint_vertex(c)) {
                    add(&p.endpoint_netns, &leg.zone, far(&leg.client_members));
                }
            }
        }
    }
    out
}

/// Binds port 53 (UDP and TCP) in `ns` and serves `zone` there until aborted.
async fn serve(
    ns: &str,
    zone: Arc<RwLock<dns::Zone>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (udp, tcp) = netns::in_netns(Some(ns), || {
        let udp = std::net::UdpSocket::bind(("0.0.0.0", 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind(("0.0.0.0", 53))?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .await?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let mut server = hickory_server::Server::new(dns::Handler(zone));
    server.register_socket(udp);
    server.register_listener(tcp, std::time::Duration::from_secs(5), 64);
    let label = ns.to_string();
    Ok(tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::warn!(netns = %label, error = %e, "vL3 router: DNS server stopped");
        }
    }))
}

/// Turns forwarding on in a router's namespace (a named one only: never the host's own).
pub async fn forward_in(ns: &Option<String>) -> std::io::Result<()> {
    let Some(ns) = ns else {
        return Err(std::io::Error::other(
            "a vL3 router needs its own namespace; the host's forwarding is left as it is",
        ));
    };
    netns::in_netns(Some(ns), || {
        let path = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(path)?.trim() != "1" {
            std::fs::write(path, "1")?;
        }
        Ok(())
    })
    .await
}

/// Deletes our routes on interface `index` that `wanted` does not have (a member that left
/// or moved behind another router).
pub async fn prune_routes(
    h: &Handle,
    index: u32,
    wanted: &[Route],
) -> Result<usize, rtnetlink::Error> {
    let mut n = 0;
    for m in our_routes(h).await? {
        let (Some(prefix), Some(oif)) = (route_prefix(&m), route_oif(&m)) else {
            continue;
        };
        if oif != index || wanted.iter().any(|r| r.prefix.trunc() == prefix) {
            continue;
        }
        h.route().del(m).execute().await?;
        n += 1;
    }
    Ok(n)
}

fn resolv_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_ETC).join(ns).join("resolv.conf")
}

fn mark(id: &str) -> String {
    format!("# meshwire:{id} ")
}

/// Makes the vL3 router `server` the resolver of namespace `ns` for `zone` (what `ip netns
/// exec` shows programs as `/etc/resolv.conf`), marked with connection `id`.
pub fn write_resolver(ns: &str, id: &str, server: IpAddr, zone: &str) -> std::io::Result<()> {
    // Only a namespace `ip netns` names: a pod's is given its resolver by `nsc-init`.
    if ns.contains('/') || !std::path::Path::new("/run/netns").join(ns).exists() {
        return Ok(());
    }
    let path = resolv_path(ns);
    let text = format!(
        "{}vL3 zone {zone}: written by meshwire, removed when the connection closes\nsearch {zone}\nnameserver {server}\noptions timeout:1 attempts:2\n",
        mark(id)
    );
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("meshwire-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Removes `ns`'s resolver if connection `id` wrote it (and the directory if left empty).
pub fn forget_resolver(ns: &str, id: &str) {
    if ns.contains('/') {
        return;
    }
    let path = resolv_path(ns);
    let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(&mark(id)));
    if ours {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(netns = %ns, error = %e, "removing the vL3 resolver failed");
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
