//! SR-IOV VFs lent to clients: moved from the node's namespace into the client's and renamed
//! there, then configured as any end ([`KernelDriver::configure`]); given back by the reverse
//! (down, its own name again, back to the node, our mark cleared). A VF is never created or
//! deleted: it belongs to its PF.
//!
//! Every step is idempotent and finds a half-done lend or return by our mark
//! (`meshwire-vf:<id>/<name>`), so a crash at any point converges on the next apply or removal.
//!
//! The PF-side settings (`IFLA_VF_MAC`, `IFLA_VF_VLAN` on the PF, [`crate::sriov::vfmsg`]) are
//! sent when the PF is a real SR-IOV device in `/sys`; on a stand-in PF (a sysfs tree elsewhere,
//! veths as VFs) the MAC is set on the VF's netdev alone and the VLAN is not applied.

use std::fs::File;
use std::os::fd::AsRawFd;

use meshwire_controller::driver::{DriverError, Failure};
use meshwire_models::Connection;
use rtnetlink::{Handle, LinkUnspec};

use super::wiring::{End, VfLend};
use super::{netns, ns_name, KernelDriver};
use crate::sriov::vfmsg::{self, VfSettings};

/// A namespace's file: a named one, or this process's own.
fn ns_file(ns: &Option<String>) -> std::io::Result<File> {
    match ns {
        Some(n) => netns::open(n),
        None => File::open("/proc/self/ns/net"),
    }
}

/// The PF's interface name when the PF is a real SR-IOV device in `/sys`.
fn real_pf_netdev(pf: &str) -> Option<String> {
    let pf: meshwire_models::sriov::PciAddress = pf.parse().ok()?;
    let dev = std::path::Path::new("/sys/bus/pci/devices").join(pf.as_str());
    if !dev.join("sriov_totalvfs").exists() {
        return None;
    }
    std::fs::read_dir(dev.join("net"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| meshwire_models::validate::check_ifname(n).is_ok())
}

impl KernelDriver {
    /// Moves the VF into the client's namespace under the connection's interface name.
    pub(super) async fn lend_vf(
        &self,
        c: &Connection,
        end: &End,
        vf: &VfLend,
    ) -> Result<(), DriverError> {
        let ours = end.alias(&c.id);
        let at = format!("VF {} ({})", vf.pci, vf.host_name);
        let client = self.handle(c, &end.netns).await?;
        // Already lent (or moved and not yet renamed).
        match Self::find(&client, &end.ifname)
            .await
            .map_err(|e| self.err(c, &at, e))?
        {
            Some(f) if f.alias.as_deref() == Some(ours.as_str()) => return Ok(()),
            Some(_) => {
                return Err(self
                    .err(
                        c,
                        format!("{}/{}", ns_name(&end.netns), end.ifname),
                        "an interface of that name is already there and is not this connection's",
                    )
                    .with(Failure::Conflict {
                        object: format!("interface {}/{}", ns_name(&end.netns), end.ifname),
                    }))
            }
            None => {}
        }
        if let Some(f) = Self::find(&client, &vf.host_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .filter(|f| f.alias.as_deref() == Some(ours.as_str()))
        {
            return self.rename(c, &client, f.index, &end.ifname, &at).await;
        }
        let node = self.handle(c, &vf.node_netns).await?;
        let f = Self::find(&node, &vf.host_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .ok_or_else(|| {
                self.err(
                    c,
                    &at,
                    format!(
                        "not in the node's namespace {} (lent to another client, or gone)",
                        ns_name(&vf.node_netns)
                    ),
                )
            })?;
        if let Some(a) = f.alias.as_deref().filter(|a| *a != ours && !a.is_empty()) {
            return Err(self
                .err(c, &at, format!("carries another mark ({a}); left alone"))
                .with(Failure::Conflict { object: at.clone() }));
        }
        // Marked first: a crash from here on leaves a VF we recognise.
        node.link()
            .set(
                LinkUnspec::new_with_index(f.index)
                    .alias(ours.clone())
                    .down()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| self.err(c, &at, format!("mark: {e}")))?;
        self.pf_settings(c, vf, end.mac, vf.vlan).await?;
        let target = ns_file(&end.netns).map_err(|e| self.err(c, &at, e))?;
        node.link()
            .set(
                LinkUnspec::new_with_index(f.index)
                    .setns_by_fd(target.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| self.err(c, &at, format!("move into {}: {e}", ns_name(&end.netns))))?;
        let moved = Self::find(&client, &vf.host_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .ok_or_else(|| self.err(c, &at, "vanished while being moved"))?;
        self.rename(c, &client, moved.index, &end.ifname, &at).await
    }

    async fn rename(
        &self,
        c: &Connection,
        h: &Handle,
        index: u32,
        name: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        h.link()
            .set(LinkUnspec::new_with_index(index).down().name(name).build())
            .execute()
            .await
            .map_err(|e| self.err(c, at, format!("rename to {name}: {e}")))
    }

    /// Gives the VF back to its node: down, its own name, moved back, our mark cleared. A
    /// client namespace already gone took the VF with it: the kernel returns a real VF to the
    /// initial namespace itself (a stand-in veth is destroyed with it).
    pub(super) async fn return_vf(
        &self,
        c: &Connection,
        end: &End,
        vf: &VfLend,
    ) -> Result<(), DriverError> {
        let ours = end.alias(&c.id);
        let at = format!("VF {} ({})", vf.pci, vf.host_name);
        if netns::exists(&end.netns) {
            let client = self.handle(c, &end.netns).await?;
            let mut lent = None;
            for name in [&end.ifname, &vf.host_name] {
                if let Some(f) = Self::find(&client, name)
                    .await
                    .map_err(|e| self.err(c, &at, e))?
                    .filter(|f| f.alias.as_deref() == Some(ours.as_str()))
                {
                    lent = Some(f);
                    break;
                }
            }
            if let Some(f) = lent {
                self.rename(c, &client, f.index, &vf.host_name, &at).await?;
                let home = ns_file(&vf.node_netns).map_err(|e| self.err(c, &at, e))?;
                client
                    .link()
                    .set(
                        LinkUnspec::new_with_index(f.index)
                            .setns_by_fd(home.as_raw_fd())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| {
                        self.err(
                            c,
                            &at,
                            format!("move back to {}: {e}", ns_name(&vf.node_netns)),
                        )
                    })?;
            }
        } else {
            self.namespaces.forget(&end.netns);
        }
        let node = self.handle(c, &vf.node_netns).await?;
        // Found by our mark, whatever its name: a real VF whose namespace was deleted comes
        // back to the host under the name it had in the pod.
        let name = self.links(&vf.node_netns).await.and_then(|l| {
            l.into_iter()
                .find(|(_, a)| a.as_deref() == Some(ours.as_str()))
                .map(|(n, _)| n)
        });
        let found = match name {
            Some(n) => Self::find(&node, &n)
                .await
                .map_err(|e| self.err(c, &at, e))?,
            None => None,
        };
        if let Some(f) = found {
            node.link()
                .set(
                    LinkUnspec::new_with_index(f.index)
                        .alias("")
                        .down()
                        .name(vf.host_name.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| self.err(c, &at, format!("clear mark: {e}")))?;
            // The PF forgets the client's VLAN.
            self.pf_settings(c, vf, None, vf.vlan.map(|_| 0)).await?;
            tracing::info!(connection = %c.id, vf = %vf.pci, netdev = %vf.host_name, "VF given back");
        }
        Ok(())
    }

    /// Sets the VF's MAC and VLAN on its PF, when the PF is real.
    async fn pf_settings(
        &self,
        c: &Connection,
        vf: &VfLend,
        mac: Option<[u8; 6]>,
        vlan: Option<u16>,
    ) -> Result<(), DriverError> {
        if mac.is_none() && vlan.is_none() {
            return Ok(());
        }
        let Some(pf_name) = real_pf_netdev(&vf.pf) else {
            tracing::debug!(connection = %c.id, pf = %vf.pf, "stand-in PF: no PF-side VF settings");
            return Ok(());
        };
        let at = format!("PF {} ({pf_name})", vf.pf);
        let node = self.handle(c, &vf.node_netns).await?;
        let pf = Self::find(&node, &pf_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .ok_or_else(|| self.err(c, &at, "not in the node's namespace"))?;
        let msg = vfmsg::encode(&VfSettings {
            pf_index: pf.index,
            vf: vf.vf,
            mac,
            vlan,
        });
        node.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err(c, &at, format!("VF {} settings: {e}", vf.vf)))
    }
}

impl KernelDriver {
    /// Gives back a VF found lent to no desired connection: its own name, moved to the node's
    /// namespace `home` (when elsewhere), our mark cleared.
    pub(super) async fn give_back(
        &self,
        h: &Handle,
        ns: &Option<String>,
        index: u32,
        host: &str,
        home: &Option<String>,
    ) -> Result<(), String> {
        meshwire_models::validate::check_ifname(host)?;
        let mut set = LinkUnspec::new_with_index(index).down().name(host);
        let elsewhere = ns != home;
        let file = if elsewhere {
            Some(ns_file(home).map_err(|e| format!("namespace {}: {e}", ns_name(home)))?)
        } else {
            None
        };
        if !elsewhere {
            set = set.alias("");
        }
        h.link()
            .set(set.build())
            .execute()
            .await
            .map_err(|e| format!("rename {host}: {e}"))?;
        let Some(f) = file else {
            return Ok(());
        };
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(f.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("move {host} to {}: {e}", ns_name(home)))?;
        let node = self
            .namespaces
            .handle(home)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(found) = Self::find(&node, host).await.map_err(|e| e.to_string())? {
            node.link()
                .set(LinkUnspec::new_with_index(found.index).alias("").build())
                .execute()
                .await
                .map_err(|e| format!("clear the mark of {host}: {e}"))?;
        }
        tracing::info!(vf = %host, from = %ns_name(ns), "leftover VF given back");
        Ok(())
    }
}
