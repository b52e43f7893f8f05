//! A stand-in for SR-IOV hardware: the sysfs tree a PF with VFs has, written under a directory
//! of one's choosing, for machines without SR-IOV NICs (tests, labs, benchmarks). The VFs'
//! netdevs are whatever interfaces the caller names (real veths whose peers join a bridge on
//! the node, as a NIC's embedded switch would), so moving, renaming, addressing and traffic stay
//! real; only the PCI side is files.
//!
//! Written: `bus/pci/devices/<pf>/{sriov_totalvfs,sriov_numvfs,virtfnN,vendor,device,driver,
//! net/<pf>}`, the same for each VF (with `iommu_group` and `physfn`), `class/net/<name>`
//! links, `bus/pci/drivers/<driver>` and `kernel/iommu_groups/<n>` directories.

use std::path::{Path, PathBuf};

use meshwire_models::sriov::PciAddress;

/// One VF to write: its PCI address and its netdev.
#[derive(Debug, Clone)]
pub struct StandInVf {
    pub pci: PciAddress,
    pub netdev: String,
}

/// One PF to write.
#[derive(Debug, Clone)]
pub struct StandInPf {
    pub pci: PciAddress,
    pub netdev: String,
    pub pf_driver: String,
    pub vf_driver: String,
    /// `sriov_totalvfs` (at least `vfs.len()`).
    pub total_vfs: u32,
    pub vfs: Vec<StandInVf>,
    /// The first VF's IOMMU group; the others follow.
    pub first_iommu_group: u32,
}

fn io(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn write(path: PathBuf, text: &str) -> std::io::Result<()> {
    std::fs::write(&path, format!("{text}\n")).map_err(|e| io(&path, e))
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io(path, e))
}

fn link(target: &Path, at: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&at);
    std::os::unix::fs::symlink(target, &at).map_err(|e| io(&at, e))
}

impl StandInPf {
    /// Writes this PF and its VFs under `root`.
    pub fn write(&self, root: &Path) -> std::io::Result<()> {
        let devices = root.join("bus/pci/devices");
        let pf = devices.join(self.pci.as_str());
        mkdir(&pf.join("net").join(&self.netdev))?;
        write(pf.join("sriov_totalvfs"), &self.total_vfs.to_string())?;
        write(pf.join("sriov_numvfs"), &self.vfs.len().to_string())?;
        write(pf.join("vendor"), "0x8086")?;
        write(pf.join("device"), "0x1592")?;
        write(pf.join("net").join(&self.netdev).join("operstate"), "up")?;
        self.driver(root, &pf, &self.pf_driver)?;
        mkdir(&root.join("class/net"))?;
        link(
            &pf.join("net").join(&self.netdev),
            root.join("class/net").join(&self.netdev),
        )?;
        link(&pf, pf.join("net").join(&self.netdev).join("device"))?;
        for (i, vf) in self.vfs.iter().enumerate() {
            let dir = devices.join(vf.pci.as_str());
            mkdir(&dir.join("net").join(&vf.netdev))?;
            write(dir.join("vendor"), "0x8086")?;
            write(dir.join("device"), "0x1889")?;
            self.driver(root, &dir, &self.vf_driver)?;
            let group = root
                .join("kernel/iommu_groups")
                .join((self.first_iommu_group + i as u32).to_string());
            mkdir(&group)?;
            link(&group, dir.join("iommu_group"))?;
            link(&pf, dir.join("physfn"))?;
            link(&dir, pf.join(format!("virtfn{i}")))?;
            link(
                &dir.join("net").join(&vf.netdev),
                root.join("class/net").join(&vf.netdev),
            )?;
            link(&dir, dir.join("net").join(&vf.netdev).join("device"))?;
        }
        Ok(())
    }

    fn driver(&self, root: &Path, dev: &Path, driver: &str) -> std::io::Result<()> {
        let d = root.join("bus/pci/drivers").join(driver);
        mkdir(&d)?;
        link(&d, dev.join("driver"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sriov::inventory::Sysfs;
    use meshwire_models::sriov::SriovConfig;

    pub(crate) fn pf(n: usize) -> StandInPf {
        StandInPf {
            pci: "0000:3b:00.0".parse().unwrap(),
            netdev: "pf0".into(),
            pf_driver: "ice".into(),
            vf_driver: "iavf".into(),
            total_vfs: 8,
            vfs: (0..n)
                .map(|i| StandInVf {
                    pci: format!("0000:3b:01.{i}").parse().unwrap(),
                    netdev: format!("pf0v{i}"),
                })
                .collect(),
            first_iommu_group: 40,
        }
    }

    #[test]
    fn the_inventory_reads_what_a_pf_shows() {
        let dir = tempfile::tempdir().unwrap();
        pf(3).write(dir.path()).unwrap();
        let sys = Sysfs::new(dir.path());
        let found = sys.pf(&"0000:3b:00.0".parse().unwrap()).unwrap();
        assert_eq!((found.total_vfs, found.num_vfs), (8, 3));
        assert_eq!(found.netdev.as_deref(), Some("pf0"));
        assert_eq!(found.driver.as_deref(), Some("ice"));
        let v = &found.vfs[2];
        assert_eq!(v.pci.as_str(), "0000:3b:01.2");
        assert_eq!(v.netdev.as_deref(), Some("pf0v2"));
        assert_eq!(v.driver.as_deref(), Some("iavf"));
        assert_eq!(v.iommu_group.as_deref(), Some("42"));
        assert_eq!((v.vendor.as_str(), v.device.as_str()), ("8086", "1889"));
        assert_eq!(sys.pfs().unwrap().len(), 1);
        assert!(
            sys.pf(&"0000:3b:01.0".parse().unwrap()).is_err(),
            "a VF is no PF"
        );
        assert!(sys.pf(&"0000:99:00.0".parse().unwrap()).is_err());
    }

    #[test]
    fn pools_take_vfs_by_pf_and_by_selectors() {
        let dir = tempfile::tempdir().unwrap();
        pf(4).write(dir.path()).unwrap();
        let c = SriovConfig::from_yaml(
            "physicalFunctions:\n  0000:3b:00.0: {capabilities: [10G], serviceDomains: [worker.domain]}\nresourceList:\n  - resourceName: radio\n    resourcePrefix: sriov.nsm.xyz.io\n    selectors: {pfNames: [\"pf0#1-2\"], drivers: [iavf]}\n  - resourceName: none\n    selectors: {vendors: [\"15b3\"]}\n",
        )
        .unwrap();
        let pools = Sysfs::new(dir.path()).pools(&c).unwrap();
        let count: Vec<(&str, usize)> = pools
            .iter()
            .map(|p| (p.name.as_str(), p.vfs.len()))
            .collect();
        assert_eq!(
            count,
            [
                ("intel.com/none", 0),
                ("sriov.nsm.xyz.io/radio", 2),
                ("worker.domain/10G", 4)
            ]
        );
        let radio: Vec<u32> = pools[1].vfs.iter().map(|v| v.index).collect();
        assert_eq!(radio, [1, 2]);
    }
}
