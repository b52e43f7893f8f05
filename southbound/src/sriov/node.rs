//! SR-IOV on one node, as its agent runs it: the pools from the configuration and sysfs, the
//! device plugin publishing them, and the PFs' link state from netlink notifications, joined
//! into the report the controller lends VFs from ([`NodeSriov`]).
//!
//! ```text
//!  sysfs ──▶ pools ──▶ DevicePlugins ◀── usable VFs per pool ◀── PF links (RTNLGRP_LINK)
//!                          │ tokens                                   │
//!                          └──────────────▶ NodeSriov report ◀────────┘ ──▶ controller
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use meshwire_models::sriov::{NodeSriov, PciAddress, SriovConfig, TokenInfo};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use tokio::sync::watch;

use super::deviceplugin::{DevicePluginError, DevicePlugins, PluginConfig, Usable};
use super::inventory::{Pool, SriovError, Sysfs};
use super::tokens::Tokens;

/// The netlink multicast group of link changes.
const RTNLGRP_LINK: u32 = 1;

/// How a node runs SR-IOV.
#[derive(Debug, Clone)]
pub struct SriovOptions {
    pub config: SriovConfig,
    /// Where sysfs is (`/sys`; a stand-in tree in tests and labs).
    pub sysfs_root: PathBuf,
    /// The kubelet's plugin directory (`None`: no device plugin, e.g. outside Kubernetes; the
    /// tokens are then only in the state directory).
    pub plugin_dir: Option<PathBuf>,
    /// Where the tokens are kept.
    pub state_dir: PathBuf,
    /// The named network namespace the PFs' interfaces are in (`None`: this process's).
    pub netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SriovNodeError {
    #[error(transparent)]
    Inventory(#[from] SriovError),
    #[error(transparent)]
    DevicePlugin(#[from] DevicePluginError),
    #[error("SR-IOV: PF link state over netlink: {0}")]
    Netlink(std::io::Error),
}

/// The running SR-IOV side of a node; dropping it stops the device plugin and the watch.
pub struct SriovNode {
    report: watch::Receiver<NodeSriov>,
    pools: Vec<Pool>,
    _plugins: Option<DevicePlugins>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SriovNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SriovNode {
    /// Reads the pools, starts the device plugin and the PF link watch.
    pub async fn start(opts: SriovOptions) -> Result<SriovNode, SriovNodeError> {
        let sysfs = Sysfs::new(&opts.sysfs_root);
        let pools = sysfs.pools(&opts.config)?;
        for p in &pools {
            tracing::info!(pool = %p.name, vfs = p.vfs.len(), "SR-IOV pool");
        }
        let mut sizes: BTreeMap<String, usize> = pools
            .iter()
            .map(|p| (p.name.clone(), p.vfs.len()))
            .collect();
        // Attachments are devices of their own, with no VF behind them.
        for a in &opts.config.attachments {
            tracing::info!(resource = %a.resource_name, count = a.count, "attachment resource");
            sizes.insert(a.resource_name.clone(), a.count as usize);
        }
        // PF interface name → PCI address, for the link watch.
        let pf_names: BTreeMap<String, PciAddress> = pools
            .iter()
            .flat_map(|p| p.vfs.iter())
            .filter_map(|v| v.pf_netdev.clone().map(|n| (n, v.pf.clone())))
            .collect();
        let (usable_tx, usable_rx) = watch::channel(Usable::new());
        let (plugins, tokens_rx) = match &opts.plugin_dir {
            Some(dir) => {
                let p = DevicePlugins::start(
                    PluginConfig {
                        dir: dir.clone(),
                        state_dir: opts.state_dir.clone(),
                        pools: sizes.clone(),
                    },
                    usable_rx,
                )
                .await?;
                let rx = p.tokens();
                (Some(p), rx)
            }
            None => {
                let mut t = Tokens::load(&opts.state_dir).map_err(DevicePluginError::from)?;
                if t.resize(&sizes) {
                    t.save(&opts.state_dir).map_err(DevicePluginError::from)?;
                }
                (None, watch::channel(t).1)
            }
        };
        let links = pf_links(pf_names.keys().cloned().collect(), opts.netns.clone()).await?;
        let (report_tx, report) = watch::channel(NodeSriov::default());
        let task = tokio::spawn(publish(
            pools.clone(),
            pf_names,
            links,
            tokens_rx,
            usable_tx,
            report_tx,
        ));
        Ok(SriovNode {
            report,
            pools,
            _plugins: plugins,
            task,
        })
    }

    /// The node's report as it changes.
    pub fn report(&self) -> watch::Receiver<NodeSriov> {
        self.report.clone()
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
}

/// Joins tokens and PF link states into the report and the device plugin's usable counts.
async fn publish(
    pools: Vec<Pool>,
    pf_names: BTreeMap<String, PciAddress>,
    mut links: watch::Receiver<BTreeMap<String, bool>>,
    mut tokens: watch::Receiver<Tokens>,
    usable: watch::Sender<Usable>,
    report: watch::Sender<NodeSriov>,
) {
    loop {
        let up = links.borrow_and_update().clone();
        let t = tokens.borrow_and_update().clone();
        let pfs_down: BTreeSet<PciAddress> = pf_names
            .iter()
            .filter(|(name, _)| !up.get(*name).copied().unwrap_or(false))
            .map(|(_, pci)| pci.clone())
            .collect();
        let counts: Usable = pools
            .iter()
            .map(|p| {
                let n = p.vfs.iter().filter(|v| !pfs_down.contains(&v.pf)).count();
                (p.name.clone(), n)
            })
            .collect();
        usable.send_if_modified(|cur| {
            let changed = *cur != counts;
            *cur = counts.clone();
            changed
        });
        let next = NodeSriov {
            pools: pools
                .iter()
                .map(|p| (p.name.clone(), p.vfs.clone()))
                .collect(),
            pfs_down: pfs_down.into_iter().collect(),
            tokens: t
                .pools
                .iter()
                .filter(|(pool, _)| pools.iter().any(|p| &p.name == *pool))
                .flat_map(|(pool, ts)| {
                    ts.iter().map(|tk| {
                        (
                            tk.id.clone(),
                            TokenInfo {
                                pool: pool.clone(),
                                allocated: tk.allocated,
                            },
                        )
                    })
                })
                .collect(),
        };
        report.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next.clone();
            changed
        });
        tokio::select! {
            r = links.changed() => if r.is_err() { return },
            r = tokens.changed() => if r.is_err() { return },
        }
    }
}

type Connection = (
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    rtnetlink::Handle,
    futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
);

/// A netlink connection opened in the named namespace (from a thread that entered it: a socket
/// stays in the namespace it was created in).
async fn connection_in(ns: &str) -> std::io::Result<Connection> {
    let path = crate::kernel::netns::path(ns)?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sriov-netns".into())
        .spawn(move || {
            let r = (|| {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| std::io::Error::other(format!("setns {}: {e}", path.display())))?;
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })();
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("namespace thread died"))?
}

/// Whether a link is usable: administratively up with a carrier.
fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::LowerUp)
}

fn name_of(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The named links' state in this process's namespace: a dump, then each notification.
async fn pf_links(
    names: BTreeSet<String>,
    netns: Option<String>,
) -> Result<watch::Receiver<BTreeMap<String, bool>>, SriovNodeError> {
    let (mut conn, handle, mut messages) = match netns {
        None => rtnetlink::new_connection().map_err(SriovNodeError::Netlink)?,
        Some(ns) => connection_in(&ns).await.map_err(SriovNodeError::Netlink)?,
    };
    {
        use rtnetlink::sys::AsyncSocket;
        let sock = conn.socket_mut().socket_mut();
        sock.bind_auto().map_err(SriovNodeError::Netlink)?;
        sock.add_membership(RTNLGRP_LINK)
            .map_err(SriovNodeError::Netlink)?;
    }
    tokio::spawn(conn);
    let mut state: BTreeMap<String, bool> = names.iter().map(|n| (n.clone(), false)).collect();
    let mut dump = handle.link().get().execute();
    while let Some(m) = dump
        .try_next()
        .await
        .map_err(|e| SriovNodeError::Netlink(std::io::Error::other(e.to_string())))?
    {
        if let Some(n) = name_of(&m).filter(|n| names.contains(*n)) {
            state.insert(n.to_string(), is_up(&m));
        }
    }
    let (tx, rx) = watch::channel(state);
    tokio::spawn(async move {
        let _keep = handle;
        while let Some((msg, _)) = messages.next().await {
            let (m, present) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => (m, true),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => (m, false),
                _ => continue,
            };
            let Some(n) = name_of(&m)
                .filter(|n| names.contains(*n))
                .map(str::to_string)
            else {
                continue;
            };
            let up = present && is_up(&m);
            tx.send_if_modified(|s| s.insert(n.clone(), up) != Some(up));
        }
    });
    Ok(rx)
}
