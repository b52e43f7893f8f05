//! The node's PFs and VFs as sysfs shows them, read under a configurable root (`/sys` on a
//! real host; a tree a test builds elsewhere).
//!
//! ```text
//! <root>/bus/pci/devices/<pf>/sriov_totalvfs, sriov_numvfs, virtfnN -> ../<vf>, net/<pfname>/
//! <root>/bus/pci/devices/<vf>/net/<ifname>/, driver -> .../<name>, iommu_group -> .../<n>,
//!                             vendor, device
//! <root>/class/net/<ifname>/device -> the PCI device of an interface
//! ```
//!
//! Nothing here writes: binding drivers and moving netdevs are the wiring's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use meshwire_models::sriov::Vf;
use meshwire_models::sriov::{PciAddress, PfName, PoolSource, Selectors, SriovConfig, MAX_VFS};

/// Why the node's SR-IOV inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error("sysfs {path}: {source}")]
    Sysfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PF {pci}: {why}")]
    Pf { pci: String, why: String },
    #[error("SR-IOV configuration: {0}")]
    Config(String),
}

impl SriovError {
    /// Whether reading again may help (a PF whose VFs are being created, a racing driver bind).
    pub fn retryable(&self) -> bool {
        matches!(self, SriovError::Sysfs { .. })
    }
}

/// One physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pf {
    pub pci: PciAddress,
    pub netdev: Option<String>,
    pub driver: Option<String>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub vfs: Vec<Vf>,
}

/// A pool's VFs as found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    pub name: String,
    pub vfs: Vec<Vf>,
}

/// The sysfs tree under `root`.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

fn read(path: &Path) -> Result<String, SriovError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SriovError::Sysfs {
            path: path.to_path_buf(),
            source,
        })
}

/// The last component of a symlink's target (`driver -> ../../bus/pci/drivers/iavf` → `iavf`).
fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The single interface under a device's `net/` directory.
fn netdev(dev: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dev.join("net"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| meshwire_models::validate::check_ifname(n).is_ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

fn hex_id(s: &str) -> String {
    s.trim_start_matches("0x").to_ascii_lowercase()
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn device(&self, pci: &PciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(pci.as_str())
    }

    /// The PF at `pci` with its VFs.
    pub fn pf(&self, pci: &PciAddress) -> Result<Pf, SriovError> {
        let dir = self.device(pci);
        if !dir.is_dir() {
            return Err(SriovError::Pf {
                pci: pci.to_string(),
                why: format!("no such PCI device under {}", self.root.display()),
            });
        }
        let total = dir.join("sriov_totalvfs");
        if !total.exists() {
            return Err(SriovError::Pf {
                pci: pci.to_string(),
                why: "not SR-IOV capable (no sriov_totalvfs)".into(),
            });
        }
        let number = |p: &Path| -> Result<u32, SriovError> {
            let s = read(p)?;
            s.parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_VFS)
                .ok_or_else(|| SriovError::Pf {
                    pci: pci.to_string(),
                    why: format!("{} holds {s:?}, not a VF count", p.display()),
                })
        };
        let total_vfs = number(&total)?;
        let num_vfs = number(&dir.join("sriov_numvfs"))?;
        let pf_netdev = netdev(&dir);
        let mut vfs = Vec::new();
        for index in 0..num_vfs {
            let link = dir.join(format!("virtfn{index}"));
            let Some(name) = link_name(&link) else {
                // VFs appear one by one after sriov_numvfs is written.
                return Err(SriovError::Sysfs {
                    path: link,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "VF not there yet"),
                });
            };
            let vf_pci: PciAddress = name.parse().map_err(|why| SriovError::Pf {
                pci: pci.to_string(),
                why,
            })?;
            let vf_dir = self.device(&vf_pci);
            vfs.push(Vf {
                pf: pci.clone(),
                index,
                pf_netdev: pf_netdev.clone(),
                netdev: netdev(&vf_dir),
                driver: link_name(&vf_dir.join("driver")),
                iommu_group: link_name(&vf_dir.join("iommu_group")),
                vendor: hex_id(&read(&vf_dir.join("vendor")).unwrap_or_default()),
                device: hex_id(&read(&vf_dir.join("device")).unwrap_or_default()),
                pci: vf_pci,
            });
        }
        Ok(Pf {
            pci: pci.clone(),
            netdev: pf_netdev,
            driver: link_name(&dir.join("driver")),
            total_vfs,
            num_vfs,
            vfs,
        })
    }

    /// Every SR-IOV capable PF that has an interface (`class/net/*/device/sriov_totalvfs`).
    pub fn pfs(&self) -> Result<Vec<Pf>, SriovError> {
        let net = self.root.join("class/net");
        let entries = std::fs::read_dir(&net).map_err(|source| SriovError::Sysfs {
            path: net.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let dev = e.path().join("device");
            if !dev.join("sriov_totalvfs").exists() {
                continue;
            }
            let Ok(real) = std::fs::canonicalize(&dev) else {
                continue;
            };
            let Some(pci) = real
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<PciAddress>().ok())
            else {
                continue;
            };
            out.push(self.pf(&pci)?);
        }
        out.sort_by(|a, b| a.pci.cmp(&b.pci));
        Ok(out)
    }

    /// The configured pools with the VFs each draws on. A VF may be in several pools (one PF
    /// serving `domain/intel` and `domain/10G`); a claim is per VF, so it is still handed out
    /// once.
    pub fn pools(&self, config: &SriovConfig) -> Result<Vec<Pool>, SriovError> {
        let specs = config.pools().map_err(SriovError::Config)?;
        let selected = specs
            .values()
            .flat_map(|s| s.sources.iter())
            .any(|s| matches!(s, PoolSource::Selected(_)));
        let all = if selected { self.pfs()? } else { Vec::new() };
        let mut by_pf: BTreeMap<PciAddress, Pf> = BTreeMap::new();
        let mut out = Vec::new();
        for spec in specs.values() {
            let mut vfs: Vec<Vf> = Vec::new();
            for source in &spec.sources {
                match source {
                    PoolSource::Pf(pci) => {
                        if !by_pf.contains_key(pci) {
                            by_pf.insert(pci.clone(), self.pf(pci)?);
                        }
                        if let Some(pf) = by_pf.get(pci) {
                            vfs.extend(pf.vfs.iter().cloned());
                        }
                    }
                    PoolSource::Selected(sel) => {
                        for pf in &all {
                            vfs.extend(pf.vfs.iter().filter(|v| selects(sel, v)).cloned());
                        }
                    }
                }
            }
            vfs.sort_by(|a, b| a.pci.cmp(&b.pci));
            vfs.dedup_by(|a, b| a.pci == b.pci);
            out.push(Pool {
                name: spec.name.clone(),
                vfs,
            });
        }
        Ok(out)
    }
}

/// Whether the device plugin's selectors take `vf` (every named selector must match).
pub fn selects(sel: &Selectors, vf: &Vf) -> bool {
    let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| hex_id(x) == v);
    let vendor = any(&sel.vendors, &vf.vendor);
    let device = any(&sel.devices, &vf.device);
    let driver = sel.drivers.is_empty()
        || vf
            .driver
            .as_deref()
            .is_some_and(|d| sel.drivers.iter().any(|x| x == d));
    let pf = sel.pf_names.is_empty()
        || sel
            .pf_names
            .iter()
            .filter_map(|p| p.parse::<PfName>().ok())
            .any(|p| {
                vf.pf_netdev.as_deref() == Some(p.name.as_str())
                    && p.vfs.as_ref().is_none_or(|r| r.contains(&vf.index))
            });
    vendor && device && driver && pf
}
