//! The kernel data plane's part of a vL3 network (see the controller's `vl3` module): its
//! routers forward, their member routes follow the members, each router namespace answers
//! DNS for the zone ([`dns`]), and each member namespace's resolver is its router.
//!
//! Everything here derives from the desired set: the zones from the connections the driver
//! holds, after every delta and full set ([`Routers::sync`]).

pub mod dns;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use meshwire_models::{Connection, Route, Vl3Role};
use rtnetlink::Handle;

use super::netns;
use super::sweep::{our_routes, route_oif, route_prefix};
use super::wiring::endpoint_vertex;

/// Where `ip netns exec` finds a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The DNS servers of the vL3 routers this driver holds, by namespace and gateway.
#[derive(Default)]
pub struct Routers {
    servers: tokio::sync::Mutex<HashMap<(String, Ipv4Addr), Server>>,
}

struct Server {
    zone: Arc<RwLock<dns::Zone>>,
    task: tokio::task::JoinHandle<()>,
    /// The namespace's inode when the server started: a namespace deleted and created again
    /// under the same name is another one, and gets a server of its own.
    ino: Option<u64>,
}

/// The inode of named namespace `ns` now (`None`: there is none).
fn netns_ino(ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(std::path::Path::new("/run/netns").join(ns))
        .ok()
        .map(|m| m.ino())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Routers {
    /// Serves DNS on each router's gateway address in every router namespace the desired set
    /// has here, with its zones now; stops the servers of routers it no longer has (or whose
    /// namespace was replaced). A router with no member yet holds no gateway address: its
    /// server starts at a later sync.
    pub async fn sync(&self, conns: &[Connection], node: Option<&str>) {
        let want = zones(conns, node);
        let mut servers = self.servers.lock().await;
        servers.retain(|(ns, gw), s| {
            let keep = want.contains_key(&(ns.clone(), *gw)) && netns_ino(ns) == s.ino;
            if !keep {
                tracing::info!(netns = %ns, gateway = %gw, "vL3 router gone (or its namespace replaced): its DNS server stops");
            }
            keep
        });
        for (key, zone) in want {
            if let Some(s) = servers.get(&key) {
                if !s.task.is_finished() {
                    *s.zone.write().unwrap_or_else(|p| p.into_inner()) = zone;
                    continue;
                }
            }
            let (ns, gw) = &key;
            let Some(ino) = netns_ino(ns) else {
                continue;
            };
            let shared = Arc::new(RwLock::new(zone));
            match serve(ns, *gw, shared.clone()).await {
                Ok(task) => {
                    tracing::info!(netns = %ns, gateway = %gw, "vL3 router: DNS server listening on port 53");
                    servers.insert(
                        key,
                        Server {
                            zone: shared,
                            task,
                            ino: Some(ino),
                        },
                    );
                }
                // No member leg holds the gateway yet.
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    tracing::debug!(netns = %ns, gateway = %gw, "vL3 router without members: no DNS server yet")
                }
                Err(e) => {
                    tracing::warn!(netns = %ns, gateway = %gw, error = %e, "vL3 router: cannot serve DNS (tried again at the next change)")
                }
            }
        }
    }
}

/// The zones of every router (namespace, gateway) the connections have on `node` (`None`: on
/// every node): each member's name at its router; through each peer leg, the far side's
/// members.
pub fn zones(conns: &[Connection], node: Option<&str>) -> BTreeMap<(String, Ipv4Addr), dns::Zone> {
    let here = |n: &str| node.is_none_or(|x| x == n);
    let mut out: BTreeMap<(String, Ipv4Addr), dns::Zone> = BTreeMap::new();
    let mut add = |ns: &Option<String>,
                   leg: &meshwire_models::Vl3Leg,
                   members: Vec<(Option<String>, IpAddr)>| {
        let (Some(ns), IpAddr::V4(gw)) = (ns, leg.gateway) else {
            return;
        };
        let zone = leg.zone.trim_end_matches('.').to_ascii_lowercase();
        let names = out
            .entry((ns.clone(), gw))
            .or_default()
            .zones
            .entry(zone)
            .or_default();
        for (name, addr) in members {
            if let (Some(n), IpAddr::V4(a)) = (name, addr) {
                names.entry(n).or_default().insert(a);
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
                    add(&p.endpoint_netns, leg, m.into_iter().collect());
                }
            }
            Vl3Role::Peer => {
                let far = |ms: &[meshwire_models::Vl3Member]| {
                    ms.iter().map(|m| (m.name.clone(), m.addr)).collect()
                };
                if here(&c.client.node) {
                    add(&p.client_netns, leg, far(&leg.endpoint_members));
                }
                if here(endpoint_vertex(c)) && leg.remote.is_none() {
                    add(&p.endpoint_netns, leg, far(&leg.client_members));
                }
            }
        }
    }
    out
}

/// Binds port 53 (UDP and TCP) on the gateway `gw` in `ns` (only there: not on the router's
/// other interfaces) and serves `zone` until aborted.
async fn serve(
    ns: &str,
    gw: Ipv4Addr,
    zone: Arc<RwLock<dns::Zone>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (udp, tcp) = netns::in_netns(Some(ns), move || {
        let udp = std::net::UdpSocket::bind((gw, 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((gw, 53))?;
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
    match std::fs::read_to_string(&path) {
        Ok(t) if t == text => return Ok(()),
        // Someone else's file: left as it is (never overwritten, never deleted).
        Ok(t) if !t.starts_with("# meshwire:") => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not ours; left as it is",
                path.display()
            )))
        }
        _ => {}
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
