//! SR-IOV on one node, as its agent runs it: the pools from the configuration and sysfs, the
//! device plugin publishing them, and the PFs' link state from netlink notifications, joined
//! into the report the controller lends VFs from ([`NodeSriov`]).
//!
//! ```text
//!  sysfs ──▶ pools ──▶ DevicePlugins ◀── usable VFs per pool ◀── PF links (RTNLGRP_LINK)
//!                          │ tokens                                   │
//!                          └──────────────▶ NodeSriov report ◀────────┘ ──▶ controller
//! ```
//!
//! The pools are read again whenever a link of the node comes or goes (a VF given back, a VF
//! whose netdev reappears after a driver rebind): sysfs shows a VF's netdev only in the
//! namespace it is in, so a VF lent when the agent started has none until it is back.

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

/// The links of the node as the watch sees them: each PF's state, and a count of every link
/// change (the pools are read again at each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Links {
    pf_up: BTreeMap<String, bool>,
    changes: u64,
}

/// The running SR-IOV side of a node; dropping it stops the device plugin and the watches.
pub struct SriovNode {
    report: watch::Receiver<NodeSriov>,
    pools: Vec<Pool>,
    _plugins: Option<DevicePlugins>,
    /// Without a device plugin the tokens never change; their sender lives here so the report
    /// keeps following the links.
    _tokens: Option<watch::Sender<Tokens>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SriovNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
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
        for (pci, pf) in &opts.config.physical_functions {
            let Some(want) = &pf.pf_kernel_driver else {
                continue;
            };
            if let Ok(found) = sysfs.pf(pci) {
                if found.driver.as_deref() != Some(want.as_str()) {
                    tracing::warn!(pf = %pci, configured = %want, found = ?found.driver, "the PF's driver is not the one configured");
                }
            }
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
        let (plugins, tokens_rx, tokens_tx) = match &opts.plugin_dir {
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
                (Some(p), rx, None)
            }
            None => {
                let mut t = Tokens::load(&opts.state_dir).map_err(DevicePluginError::from)?;
                if t.resize(&sizes) {
                    t.save(&opts.state_dir).map_err(DevicePluginError::from)?;
                }
                let (tx, rx) = watch::channel(t);
                (None, rx, Some(tx))
            }
        };
        let (links, watch_task) =
            pf_links(pf_names.keys().cloned().collect(), opts.netns.clone()).await?;
        let (report_tx, report) = watch::channel(NodeSriov::default());
        let task = tokio::spawn(publish(
            sysfs,
            opts.config.clone(),
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
            _tokens: tokens_tx,
            tasks: vec![task, watch_task],
        })
    }

    /// The node's report as it changes.
    pub fn report(&self) -> watch::Receiver<NodeSriov> {
        self.report.clone()
    }

    /// The pools as read at start.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
}

/// Whether a VF can be lent: its PF is up and it has a netdev here.
fn usable(v: &meshwire_models::sriov::Vf, pfs_down: &BTreeSet<PciAddress>) -> bool {
    !pfs_down.contains(&v.pf) && v.netdev.is_some()
}

/// Joins tokens, pools and PF link states into the report and the device plugin's usable
/// counts, again at every change of any of them. A closed source is taken as one that no
/// longer changes (logged), never as a reason to stop.
#[allow(clippy::too_many_arguments)]
async fn publish(
    sysfs: Sysfs,
    config: SriovConfig,
    mut pools: Vec<Pool>,
    pf_names: BTreeMap<String, PciAddress>,
    mut links: watch::Receiver<Links>,
    mut tokens: watch::Receiver<Tokens>,
    usable_tx: watch::Sender<Usable>,
    report: watch::Sender<NodeSriov>,
) {
    let (mut links_open, mut tokens_open) = (true, true);
    let mut seen_changes = links.borrow().changes;
    loop {
        let l = links.borrow_and_update().clone();
        if l.changes != seen_changes {
            seen_changes = l.changes;
            match sysfs.pools(&config) {
                Ok(p) => pools = p,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the SR-IOV pools again failed; keeping the last")
                }
            }
        }
        let t = tokens.borrow_and_update().clone();
        let pfs_down: BTreeSet<PciAddress> = pf_names
            .iter()
            .filter(|(name, _)| !l.pf_up.get(*name).copied().unwrap_or(false))
            .map(|(_, pci)| pci.clone())
            .collect();
        let counts: Usable = pools
            .iter()
            .map(|p| {
                let n = p.vfs.iter().filter(|v| usable(v, &pfs_down)).count();
                (p.name.clone(), n)
            })
            .collect();
        usable_tx.send_if_modified(|cur| {
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
            r = links.changed(), if links_open => if r.is_err() {
                tracing::warn!("the PF link watch ended; PF states stay as last seen");
                links_open = false;
            },
            r = tokens.changed(), if tokens_open => if r.is_err() {
                tokens_open = false;
            },
            () = std::future::pending::<()>(), if !links_open && !tokens_open => {}
        }
    }
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

/// The node's links as they change: a dump of the named PFs' state, then each notification
/// (every link change counts; a lost notification, seen as an error on the socket, dumps again).
/// The task owns the connection; aborting it closes the socket.
async fn pf_links(
    names: BTreeSet<String>,
    netns: Option<String>,
) -> Result<(watch::Receiver<Links>, tokio::task::JoinHandle<()>), SriovNodeError> {
    let (mut conn, handle, mut messages) =
        crate::kernel::netns::in_netns(netns.as_deref(), rtnetlink::new_connection)
            .await
            .map_err(SriovNodeError::Netlink)?;
    {
        use rtnetlink::sys::AsyncSocket;
        let sock = conn.socket_mut().socket_mut();
        sock.bind_auto().map_err(SriovNodeError::Netlink)?;
        sock.add_membership(RTNLGRP_LINK)
            .map_err(SriovNodeError::Netlink)?;
    }
    let dump = |handle: rtnetlink::Handle, names: BTreeSet<String>| async move {
        let mut state: BTreeMap<String, bool> = names.iter().map(|n| (n.clone(), false)).collect();
        let mut s = handle.link().get().execute();
        while let Some(m) = s.try_next().await? {
            if let Some(n) = name_of(&m).filter(|n| names.contains(*n)) {
                state.insert(n.to_string(), is_up(&m));
            }
        }
        Ok::<_, rtnetlink::Error>(state)
    };
    let conn_task = tokio::spawn(conn);
    let first = dump(handle.clone(), names.clone())
        .await
        .map_err(|e| SriovNodeError::Netlink(std::io::Error::other(e.to_string())))?;
    let (tx, rx) = watch::channel(Links {
        pf_up: first,
        changes: 0,
    });
    let task = tokio::spawn(async move {
        let _conn = AbortOnDrop(conn_task);
        while let Some((msg, _)) = messages.next().await {
            let (m, present) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => (m, true),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => (m, false),
                NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => {
                    // Notifications were lost: look at everything again.
                    match dump(handle.clone(), names.clone()).await {
                        Ok(state) => tx.send_modify(|l| {
                            l.pf_up = state;
                            l.changes += 1;
                        }),
                        Err(e) => tracing::warn!(error = %e, "dumping the PF links again failed"),
                    }
                    continue;
                }
                _ => continue,
            };
            let pf = name_of(&m)
                .filter(|n| names.contains(*n))
                .map(str::to_string);
            let up = present && is_up(&m);
            tx.send_modify(|l| {
                l.changes += 1;
                if let Some(n) = pf {
                    l.pf_up.insert(n, up);
                }
            });
        }
        tracing::warn!("the node's link notifications ended");
    });
    Ok((rx, task))
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
