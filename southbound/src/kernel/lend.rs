//! SR-IOV VFs lent to clients: moved from the node's namespace into the client's and renamed
//! there, then configured as any end ([`KernelDriver::configure`]); given back by the reverse
//! (down, its own name again, back to the node, our mark cleared). A VF is never created or
//! deleted: it belongs to its PF.
//!
//! Every step is idempotent and finds a half-done lend or return by our mark
//! (`meshwire-vf:<id>/<name>/<pci>`), so a crash at any point converges on the next apply or
//! removal. A mark is something a workload could write on an interface of its own, so a real VF
//! must also be the VF: the kernel gives a VF netdev's PCI address as its parent device, and an
//! interface whose parent is not the VF is never moved (a stand-in's veths have no parent: there
//! the mark alone is taken).
//!
//! The PF-side settings (`IFLA_VF_MAC`, `IFLA_VF_VLAN` on the PF, [`crate::sriov::vfmsg`]) are
//! sent for real PFs; on a stand-in the MAC is set on the VF's netdev alone and the VLAN is not
//! applied.

use std::fs::File;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use meshwire_controller::driver::{DriverError, Failure};
use meshwire_models::Connection;
use rtnetlink::{Handle, LinkUnspec};

use super::wiring::{End, VfLend};
use super::{found, netns, ns_name, Found, KernelDriver};
use crate::sriov::vfmsg::{self, VfSettings};

/// A namespace's file: a named one, or this process's own.
fn ns_file(ns: &Option<String>) -> std::io::Result<File> {
    match ns {
        Some(n) => netns::open(n),
        None => File::open("/proc/self/ns/net"),
    }
}

/// The PF's interface name from `/sys` (a real PF).
fn pf_netdev(pf: &str) -> Option<String> {
    let pf: meshwire_models::sriov::PciAddress = pf.parse().ok()?;
    let dev = std::path::Path::new("/sys/bus/pci/devices").join(pf.as_str());
    std::fs::read_dir(dev.join("net"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| meshwire_models::validate::check_ifname(n).is_ok())
}

/// Every interface of `h`'s namespace carrying `alias`; an error when the namespace cannot be
/// listed (a return must not be taken as done when it could not look).
async fn with_alias(h: &Handle, alias: &str) -> Result<Vec<Found>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await? {
        let f = found(&m);
        if f.alias.as_deref() == Some(alias) {
            out.push(f);
        }
    }
    Ok(out)
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
            Some(f) if f.alias.as_deref() == Some(ours.as_str()) && self.is_vf(&f, &vf.pci) => {
                return Ok(())
            }
            Some(_) => return Err(self
                .err(
                    c,
                    format!("{}/{}", ns_name(&end.netns), end.ifname),
                    "an interface of that name is already there and is not this connection's VF",
                )
                .with(Failure::Conflict {
                    object: format!("interface {}/{}", ns_name(&end.netns), end.ifname),
                })),
            None => {}
        }
        if let Some(f) = Self::find(&client, &vf.host_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .filter(|f| f.alias.as_deref() == Some(ours.as_str()) && self.is_vf(f, &vf.pci))
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
        if !self.is_vf(&f, &vf.pci) {
            return Err(self
                .err(
                    c,
                    &at,
                    format!(
                        "the interface of that name is not the VF (its device is {:?})",
                        f.parent
                    ),
                )
                .with(Failure::Conflict { object: at.clone() }));
        }
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
            let lent = with_alias(&client, &ours)
                .await
                .map_err(|e| self.err(c, &at, e))?
                .into_iter()
                .find(|f| self.is_vf(f, &vf.pci));
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
        let back = with_alias(&node, &ours)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .into_iter()
            .find(|f| self.is_vf(f, &vf.pci));
        if let Some(f) = back {
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

    /// Sets the VF's MAC and VLAN on its PF (a real PF; nothing on a stand-in).
    async fn pf_settings(
        &self,
        c: &Connection,
        vf: &VfLend,
        mac: Option<[u8; 6]>,
        vlan: Option<u16>,
    ) -> Result<(), DriverError> {
        if self.sriov_standin || (mac.is_none() && vlan.is_none()) {
            return Ok(());
        }
        let at = format!("PF {}", vf.pf);
        let pf_name = pf_netdev(&vf.pf)
            .ok_or_else(|| self.err(c, &at, "no interface of this PF under /sys"))?;
        let node = self.handle(c, &vf.node_netns).await?;
        let pf = Self::find(&node, &pf_name)
            .await
            .map_err(|e| self.err(c, &at, e))?
            .ok_or_else(|| self.err(c, &at, format!("{pf_name} is not in the node's namespace")))?;
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

    /// Gives back a VF found lent to no desired connection: its own name, moved to the node's
    /// namespace `home` (when elsewhere), our mark cleared. `pci` is the VF's address from the
    /// mark; an interface that is not that VF is left alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn give_back(
        &self,
        h: &Handle,
        ns: &Option<String>,
        index: u32,
        parent: Option<&str>,
        host: &str,
        pci: &str,
        home: &Option<String>,
    ) -> Result<(), String> {
        meshwire_models::validate::check_ifname(host)?;
        if !self.sriov_standin && parent != Some(pci) {
            return Err(format!(
                "carries a VF's mark for {pci} but is not that VF (its device is {parent:?}); left alone"
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(parent: Option<&str>) -> Found {
        Found {
            index: 7,
            alias: Some("meshwire-vf:c1/pf0v0/0000:3b:01.0".into()),
            parent: parent.map(str::to_string),
        }
    }

    #[test]
    fn a_real_vf_is_known_by_its_pci_address_not_by_a_mark() {
        let real = KernelDriver::for_node("n1");
        assert!(real.is_vf(&f(Some("0000:3b:01.0")), "0000:3b:01.0"));
        assert!(
            !real.is_vf(&f(None), "0000:3b:01.0"),
            "a veth with our mark"
        );
        assert!(!real.is_vf(&f(Some("0000:3b:01.1")), "0000:3b:01.0"));
        let standin = KernelDriver::for_node("n1").sriov_standin(true);
        assert!(standin.is_vf(&f(None), "0000:3b:01.0"));
    }

    #[tokio::test]
    async fn a_forged_mark_on_something_else_is_left_alone_by_the_sweep() {
        let (conn, h, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        let d = KernelDriver::for_node("n1");
        let e = d
            .give_back(
                &h,
                &Some("pod".into()),
                7,
                None,
                "pf0v0",
                "0000:3b:01.0",
                &Some("n1".into()),
            )
            .await
            .unwrap_err();
        assert!(e.contains("is not that VF"), "{e}");
    }
}
