//! Netlink handles per network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that creates it. So for each namespace
//! a short-lived dedicated thread enters it (`setns`), creates the socket and hands it back; the
//! connection task then runs on the runtime like any other. Nothing forks, and the runtime's own
//! threads never change namespace.
//!
//! With a watcher set ([`Namespaces::watch`]), each socket also joins the kernel's link group, and
//! every interface deleted in the namespace is passed to the watcher: the data plane's changes
//! arrive as events instead of waiting for the next full look.
//!
//! Handles are cached by name and inode: a namespace deleted and created again under the same name
//! gets a fresh socket, and [`Namespaces::forget`] drops a handle once its namespace is gone so our
//! socket does not keep the namespace (and its interfaces) alive.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rtnetlink::Handle;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

struct Cached {
    inode: u64,
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(w) = &self.watch {
            w.abort();
        }
    }
}

/// Called with (namespace, interface name, alias) for each interface deleted in a namespace
/// we hold a socket in.
pub type OnGone = Arc<dyn Fn(&Option<String>, &str, Option<&str>) + Send + Sync>;

/// The kernel's link notification group (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

#[derive(Default)]
pub struct Namespaces {
    cache: Mutex<HashMap<Option<String>, Cached>>,
    watcher: std::sync::OnceLock<OnGone>,
}

/// The path of namespace `name`: only ever one component under [`NETNS_DIR`]. A name with a
/// `/`, `..` or a control character is refused here too, whatever checked it before, so no
/// caller can reach `/proc/<pid>/ns/net` or another directory's namespaces through a name.
/// Runs `f` on a short-lived thread that entered the named namespace (`None`: this
/// process's), inside the current runtime: a socket `f` creates stays in that namespace.
/// Nothing forks.
pub(crate) async fn in_netns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let target = ns.map(path).transpose()?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || {
            let result = (|| {
                if let Some(p) = target {
                    let file = File::open(&p)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| std::io::Error::other(format!("setns {}: {e}", p.display())),
                    )?;
                }
                let _guard = rt.enter();
                f()
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("namespace thread died"))?
}

pub fn path(name: &str) -> std::io::Result<PathBuf> {
    meshwire_models::validate::check_netns(name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    Ok(PathBuf::from(NETNS_DIR).join(name))
}

/// Whether the namespace exists (`None`, our own, always does; an invalid name never does).
pub fn exists(ns: &Option<String>) -> bool {
    ns.as_ref()
        .is_none_or(|n| path(n).is_ok_and(|p| p.exists()))
}

fn inode(ns: &Option<String>) -> std::io::Result<u64> {
    match ns {
        None => Ok(0),
        Some(n) => std::fs::metadata(path(n)?).map(|m| m.ino()),
    }
}

/// Opens a namespace for `IFLA_NET_NS_FD`.
pub fn open(name: &str) -> std::io::Result<File> {
    File::open(path(name)?)
}

impl Namespaces {
    /// Passes every interface deletion in the namespaces handled from now on to `on_gone`.
    pub fn watch(&self, on_gone: OnGone) {
        let _ = self.watcher.set(on_gone);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<String>, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle whose socket lives in `ns`.
    pub async fn handle(&self, ns: &Option<String>) -> std::io::Result<Handle> {
        let ino = inode(ns).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("namespace {}: {e}", ns.as_deref().unwrap_or("(own)")),
            )
        })?;
        if let Some(c) = self.lock().get(ns) {
            if c.inode == ino {
                return Ok(c.handle.clone());
            }
        }
        let watching = self.watcher.get().is_some();
        let ((conn, handle, _), monitor) = in_netns(ns.as_deref(), move || {
            // Requests and notifications on separate sockets: a burst of link events that
            // overflows the monitor's buffer must never touch the requests.
            let requests = rtnetlink::new_connection()?;
            let monitor = if watching {
                Some(rtnetlink::new_connection()?)
            } else {
                None
            };
            Ok((requests, monitor))
        })
        .await?;
        let watch = match (self.watcher.get(), monitor) {
            (Some(on_gone), Some((mut mconn, mhandle, messages))) => {
                use rtnetlink::sys::AsyncSocket;
                let sock = mconn.socket_mut().socket_mut();
                // Bound to a port of its own: the kernel skips port 0 when it multicasts a
                // change nobody asked to hear echoed (a socket that never sends stays unbound).
                sock.bind_auto()?;
                sock.add_membership(RTNLGRP_LINK)?;
                let ns = ns.clone();
                let on_gone = on_gone.clone();
                // One task owns the monitor's connection and its reader: aborting it (the
                // namespace forgotten) closes the socket, which must not keep the namespace.
                Some(tokio::spawn(async move {
                    let _keep = mhandle;
                    let label = ns.clone().unwrap_or_else(|| "(own)".into());
                    tokio::select! {
                        _ = mconn => {}
                        _ = watch_links(ns, messages, on_gone) => {}
                    }
                    tracing::debug!(netns = %label, "link notifications ended; the full set still looks every round");
                }))
            }
            _ => None,
        };
        let task = tokio::spawn(conn);
        self.lock().insert(
            ns.clone(),
            Cached {
                inode: ino,
                handle: handle.clone(),
                task,
                watch,
            },
        );
        Ok(handle)
    }

    /// Whether a socket of ours lives in namespace `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.lock().contains_key(&Some(name.to_string()))
    }

    /// Drops the handle of a namespace that is gone.
    pub fn forget(&self, ns: &Option<String>) {
        self.lock().remove(ns);
    }
}

/// Reads the link notifications of one namespace's socket until it closes.
async fn watch_links(
    ns: Option<String>,
    mut messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    on_gone: OnGone,
) {
    use futures::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    while let Some((msg, _)) = messages.next().await {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload else {
            continue;
        };
        let mut name = None;
        let mut alias = None;
        let mut retired = false;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::IfAlias(a) => alias = Some(a.clone()),
                LinkAttribute::Group(g) => retired = *g == super::retire::RETIRED_GROUP,
                _ => {}
            }
        }
        // What our own removal retired is expected to go.
        if retired {
            continue;
        }
        if let Some(name) = name {
            on_gone(&ns, &name, alias.as_deref());
        }
    }
}

/// Turns off transmit checksum offload on `ifname` in `ns` (ETHTOOL_STXCSUM over SIOCETHTOOL,
/// from a thread that entered the namespace). A veth offloads checksums to the "hardware"; the
/// Open vSwitch userspace datapath reads such packets with the checksum still unfilled and would
/// tunnel them that way, so TCP across it fails while ping works.
pub async fn disable_tx_checksum(ns: &Option<String>, ifname: &str) -> std::io::Result<()> {
    let target = ns.as_deref().map(path).transpose()?;
    let name = ifname.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-ethtool".into())
        .spawn(move || {
            let result = (|| {
                if let Some(p) = target {
                    let f = File::open(&p)?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        std::io::Error::other(format!("setns {}: {e}", p.display()))
                    })?;
                }
                let sock = std::net::UdpSocket::bind("0.0.0.0:0")
                    .or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
                ethtool_set_tx_csum(&sock, &name, false)
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("namespace thread died"))?
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool_set_tx_csum(sock: &std::net::UdpSocket, ifname: &str, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SIOCETHTOOL: u64 = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 {
        return Err(std::io::Error::other(format!(
            "{ifname:?} is not an interface name"
        )));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: on as u32,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a valid, fully initialised ifreq whose data pointer refers to `value`,
    // which outlives the call; the kernel reads and writes only those two structures.
    let rc = unsafe { nix::libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_names_never_leave_the_namespace_directory() {
        for bad in ["../../proc/1/ns/net", "../netns/x", "a/b", "..", "", "x\0"] {
            let e = path(bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(!exists(&Some(bad.to_string())));
        }
        assert_eq!(
            path("clab-x-y").unwrap(),
            PathBuf::from("/run/netns/clab-x-y")
        );
    }
}
