//! SR-IOV: a node's physical functions (PFs), their virtual functions (VFs) and the pools the
//! node offers them in.
//!
//! A node's configuration comes in the shape upstream's SR-IOV forwarder reads
//! (`physicalFunctions`, keyed by the PF's PCI address, each with its kernel drivers,
//! capabilities and service domains), and accepts the SR-IOV network device plugin's selector
//! vocabulary (`resourceList` with `vendors`, `devices`, `drivers` and `pfNames`, a PF name
//! optionally narrowed to VF ranges: `ens1f0#0-3,6`). Each PF × service domain × capability is a
//! pool named `<domain>/<capability>` (upstream's resource names); a `resourceList` entry is a
//! pool of its own name.
//!
//! Everything here is checked where it enters: PCI addresses have the kernel's form, names that
//! become device plugin resource names (and so socket file names and environment variable
//! names) are DNS-like, interface names follow the kernel's rules.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::check_ifname;

/// Most VFs one PF may have (PCIe's `TotalVFs` is 16 bits; real NICs stop at a few hundred).
pub const MAX_VFS: u32 = 65_535;
/// Most pools one node may configure.
pub const MAX_POOLS: usize = 256;

/// A PCI address in the kernel's form: `DDDD:BB:DD.F` (domain, bus, device, function; hex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciAddress(String);

impl PciAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PciAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PciAddress> for String {
    fn from(p: PciAddress) -> String {
        p.0
    }
}

impl std::str::FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "PCI address {:?} must look like 0000:01:00.0 (domain:bus:device.function, hex)",
                s.chars().take(40).collect::<String>()
            )
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let mut parts: Vec<&str> = rest.split(':').collect();
        // The short form upstream accepts (`01:00.0`) is in domain 0000.
        if parts.len() == 2 {
            parts.insert(0, "0000");
        }
        let [domain, bus, device] = parts.as_slice() else {
            return Err(bad());
        };
        let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(domain, 4) && hex(bus, 2) && hex(device, 2) && hex(function, 1)) {
            return Err(bad());
        }
        let dev = u8::from_str_radix(device, 16).map_err(|_| bad())?;
        let func = u8::from_str_radix(function, 16).map_err(|_| bad())?;
        if dev > 0x1f || func > 7 {
            return Err(bad());
        }
        Ok(PciAddress(
            format!("{domain}:{bus}:{device}.{function}").to_ascii_lowercase(),
        ))
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One PF as upstream's SR-IOV forwarder configures it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhysicalFunction {
    /// The PF's driver (compared with what the kernel says; a mismatch is logged).
    #[serde(default)]
    pub pf_kernel_driver: Option<String>,
    /// The VFs' kernel driver (the one giving them netdevs). Accepted for upstream's shape;
    /// the VFs are used with whatever driver they have.
    #[serde(default)]
    pub vf_kernel_driver: Option<String>,
    /// What the PF offers (`10G`, `intel`): each one with each service domain is a pool.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The service domains the PF's VFs serve.
    #[serde(default)]
    pub service_domains: Vec<String>,
}

/// The SR-IOV network device plugin's device selectors (the subset that applies to VFs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selectors {
    /// PCI vendor ids (hex, `8086`).
    #[serde(default)]
    pub vendors: Vec<String>,
    /// PCI device ids of the VFs (hex, `154c`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// VF kernel drivers.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// PF interface names, each optionally with VF ranges: `ens1f0`, `ens1f0#0-3,6`.
    #[serde(default)]
    pub pf_names: Vec<String>,
}

/// One pool in the SR-IOV network device plugin's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSelector {
    /// The pool's name: `<domain>/<name>`, or a bare name under `resourcePrefix`.
    pub resource_name: String,
    /// The prefix of a bare name (the device plugin's default: `intel.com`).
    #[serde(default)]
    pub resource_prefix: Option<String>,
    #[serde(default)]
    pub selectors: Selectors,
}

/// A node's SR-IOV configuration (`meshwire node --sriov-config FILE`, YAML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SriovConfig {
    #[serde(default)]
    pub physical_functions: BTreeMap<PciAddress, PhysicalFunction>,
    #[serde(default)]
    pub resource_list: Vec<ResourceSelector>,
    /// Limited attachments of an endpoint reached from this node (a radio's), published to the
    /// kubelet as a device plugin resource of that many devices, so the scheduler places pods
    /// that need one only where one is free. No VF is involved.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// A resource of `count` interchangeable devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attachment {
    /// `<domain>/<name>`, e.g. `radio.example.com/radio1`.
    pub resource_name: String,
    /// How many pods may hold one at once (the endpoint's capacity).
    pub count: u32,
}

/// Most devices one attachment resource may have.
pub const MAX_ATTACHMENTS: u32 = 4096;

/// One virtual function as its node found it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vf {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pci: PciAddress,
    /// Its PF and its number there (`virtfnN`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pf: PciAddress,
    pub index: u32,
    /// The PF's interface name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pf_netdev: Option<String>,
    /// The VF's interface name (none when bound to vfio-pci or to no driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<String>,
    /// PCI vendor and device ids (hex, without `0x`).
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub device: String,
}

/// A device plugin token as its node reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub pool: String,
    /// Handed to a container by the kubelet.
    pub allocated: bool,
}

/// What a node's agent reports of its SR-IOV pools: each pool's VFs, the PFs whose link is
/// down (their VFs unusable), and the device plugin's tokens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSriov {
    pub pools: BTreeMap<String, Vec<Vf>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub pfs_down: Vec<PciAddress>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenInfo>,
}

/// Most tokens a node may report (every pool's VFs).
pub const MAX_TOKENS: usize = 65_536;

impl NodeSriov {
    /// Checks what an agent sent: names, sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.pools.len() > MAX_POOLS {
            return Err(format!("{} pools; at most {MAX_POOLS}", self.pools.len()));
        }
        if self.tokens.len() > MAX_TOKENS {
            return Err(format!(
                "{} tokens; at most {MAX_TOKENS}",
                self.tokens.len()
            ));
        }
        for (name, vfs) in &self.pools {
            check_pool_name(name)?;
            if vfs.len() > MAX_VFS as usize {
                return Err(format!("pool {name}: {} VFs; at most {MAX_VFS}", vfs.len()));
            }
            for v in vfs {
                if let Some(n) = &v.netdev {
                    check_ifname(n).map_err(|e| format!("pool {name}: VF {}: {e}", v.pci))?;
                }
            }
        }
        for (id, t) in &self.tokens {
            check_token(id)?;
            if !self.pools.contains_key(&t.pool) {
                return Err(format!("token {id}: pool {} is not reported", t.pool));
            }
        }
        Ok(())
    }
}

/// A device plugin token ID as a request may carry it: 1 to 63 letters, digits and `-` (the
/// kubelet's device ID limit).
pub fn check_token(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "token {:?} must be 1 to 63 letters, digits or '-' (like sriov-<uuid>)",
            id.chars().take(70).collect::<String>()
        ));
    }
    Ok(())
}

/// A PF name with the VFs a selector takes from it (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfName {
    pub name: String,
    pub vfs: Option<Vec<u32>>,
}

impl std::str::FromStr for PfName {
    type Err = String;
    /// `ens1f0` or `ens1f0#0-3,6`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, ranges) = match s.split_once('#') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        check_ifname(name)?;
        let vfs = match ranges {
            None => None,
            Some(r) => {
                let mut out = Vec::new();
                for part in r.split(',') {
                    let bad = || format!("pfNames {s:?}: VF range {part:?} must be N or N-M");
                    let (lo, hi) = match part.split_once('-') {
                        Some((a, b)) => (a.trim(), b.trim()),
                        None => (part.trim(), part.trim()),
                    };
                    let lo: u32 = lo.parse().map_err(|_| bad())?;
                    let hi: u32 = hi.parse().map_err(|_| bad())?;
                    if lo > hi || hi >= MAX_VFS {
                        return Err(bad());
                    }
                    out.extend(lo..=hi);
                }
                out.sort_unstable();
                out.dedup();
                Some(out)
            }
        };
        Ok(PfName {
            name: name.to_string(),
            vfs,
        })
    }
}

/// A pool name that is also a device plugin resource name: `<domain>/<name>`, the domain a
/// DNS name, the name letters, digits, `-`, `_` and `.` (1 to 63), both starting and ending with a
/// letter or digit.
pub fn check_pool_name(name: &str) -> Result<(), String> {
    let (domain, local) = name
        .split_once('/')
        .ok_or_else(|| format!("pool {name:?} must be <domain>/<name>, like worker.domain/10G"))?;
    check_dns_name(domain).map_err(|e| format!("pool {name:?}: {e}"))?;
    check_label_like(local, 63).map_err(|e| format!("pool {name:?}: {e}"))
}

fn check_label_like(s: &str, max: usize) -> Result<(), String> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty()
        || s.len() > max
        || !edge(s.chars().next())
        || !edge(s.chars().last())
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{s:?} must be 1 to {max} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("domain {s:?} must be 1 to 253 bytes"));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.starts_with(|c: char| c.is_ascii_alphanumeric())
            && label.ends_with(|c: char| c.is_ascii_alphanumeric())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!(
                "domain {s:?}: each dot-separated part must be 1 to 63 letters, digits or '-', not starting or ending with '-'"
            ));
        }
    }
    Ok(())
}

/// Where a pool's VFs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// Every VF of these PFs.
    Pf(PciAddress),
    /// VFs matching the device plugin's selectors.
    Selected(Selectors),
}

/// A pool as configured: its name and where its VFs come from (one pool may draw on several
/// PFs: every PF with the same domain and capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub sources: Vec<PoolSource>,
    /// The VF kernel driver the configuration names for it, if any.
    pub vf_driver: Option<String>,
}

impl SriovConfig {
    /// Parses and checks a YAML document.
    pub fn from_yaml(text: &str) -> Result<SriovConfig, String> {
        let de = serde_yaml::Deserializer::from_str(text);
        let c: SriovConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })?;
        c.pools()?;
        Ok(c)
    }

    /// The pools this configuration defines, by name; errors name the field.
    pub fn pools(&self) -> Result<BTreeMap<String, PoolSpec>, String> {
        let mut pools: BTreeMap<String, PoolSpec> = BTreeMap::new();
        for (pci, pf) in &self.physical_functions {
            let at = format!("physicalFunctions.{pci}");
            if pf.capabilities.is_empty() || pf.service_domains.is_empty() {
                return Err(format!(
                    "{at}: needs at least one capability and one service domain (its pools are <domain>/<capability>)"
                ));
            }
            for d in [&pf.pf_kernel_driver, &pf.vf_kernel_driver]
                .into_iter()
                .flatten()
            {
                check_label_like(d, 64).map_err(|e| format!("{at}: driver {e}"))?;
            }
            for domain in &pf.service_domains {
                for cap in &pf.capabilities {
                    let name = format!("{domain}/{cap}");
                    check_pool_name(&name).map_err(|e| format!("{at}: {e}"))?;
                    let p = pools.entry(name.clone()).or_insert_with(|| PoolSpec {
                        name,
                        sources: Vec::new(),
                        vf_driver: pf.vf_kernel_driver.clone(),
                    });
                    p.sources.push(PoolSource::Pf(pci.clone()));
                }
            }
        }
        for (i, r) in self.resource_list.iter().enumerate() {
            let at = format!("resourceList[{i}]");
            let name = if r.resource_name.contains('/') {
                r.resource_name.clone()
            } else {
                let prefix = r.resource_prefix.as_deref().unwrap_or("intel.com");
                format!("{prefix}/{}", r.resource_name)
            };
            check_pool_name(&name).map_err(|e| format!("{at}.resourceName: {e}"))?;
            let s = &r.selectors;
            for (field, ids) in [("vendors", &s.vendors), ("devices", &s.devices)] {
                for id in ids {
                    if id.is_empty() || id.len() > 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!(
                            "{at}.selectors.{field}: {id:?} must be a PCI id of 1 to 4 hex digits"
                        ));
                    }
                }
            }
            for d in &s.drivers {
                check_label_like(d, 64).map_err(|e| format!("{at}.selectors.drivers: {e}"))?;
            }
            for p in &s.pf_names {
                p.parse::<PfName>()
                    .map_err(|e| format!("{at}.selectors.pfNames: {e}"))?;
            }
            if s.pf_names.is_empty() && s.vendors.is_empty() && s.devices.is_empty() {
                return Err(format!(
                    "{at}.selectors: name pfNames, vendors or devices (a pool of every VF on the node is almost never meant)"
                ));
            }
            if pools.contains_key(&name) {
                return Err(format!("{at}: pool {name} is defined twice"));
            }
            pools.insert(
                name.clone(),
                PoolSpec {
                    name,
                    sources: vec![PoolSource::Selected(s.clone())],
                    vf_driver: s.drivers.first().cloned(),
                },
            );
        }
        for (i, a) in self.attachments.iter().enumerate() {
            let at = format!("attachments[{i}]");
            check_pool_name(&a.resource_name).map_err(|e| format!("{at}.resourceName: {e}"))?;
            if a.count == 0 || a.count > MAX_ATTACHMENTS {
                return Err(format!(
                    "{at}.count: {} must be 1 to {MAX_ATTACHMENTS}",
                    a.count
                ));
            }
            if pools.contains_key(&a.resource_name)
                || self.attachments[..i]
                    .iter()
                    .any(|b| b.resource_name == a.resource_name)
            {
                return Err(format!("{at}: {} is defined twice", a.resource_name));
            }
        }
        if pools.len() > MAX_POOLS {
            return Err(format!(
                "{} pools configured; at most {MAX_POOLS}",
                pools.len()
            ));
        }
        Ok(pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_have_the_kernels_form() {
        assert_eq!(
            "0000:3B:02.1".parse::<PciAddress>().unwrap().as_str(),
            "0000:3b:02.1"
        );
        assert_eq!(
            "3b:02.1".parse::<PciAddress>().unwrap().as_str(),
            "0000:3b:02.1"
        );
        for bad in [
            "",
            "3b.1",
            "0000:3b:02",
            "0000:3b:20.0",
            "0000:3b:02.8",
            "../../etc",
            "0000:3b:02.1/x",
            "0000:3g:02.1",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pf_names_take_vf_ranges() {
        let p: PfName = "ens1f0#0-2,5,1".parse().unwrap();
        assert_eq!(p.name, "ens1f0");
        assert_eq!(p.vfs, Some(vec![0, 1, 2, 5]));
        assert_eq!("ens1f0".parse::<PfName>().unwrap().vfs, None);
        for bad in [
            "ens1f0#3-1",
            "ens1f0#x",
            "a/b#1",
            "ens1f0#",
            "verylonginterfacename",
        ] {
            assert!(bad.parse::<PfName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_shape_gives_domain_capability_pools() {
        let c = SriovConfig::from_yaml(
            "physicalFunctions:\n  0000:01:00.0:\n    pfKernelDriver: ice\n    vfKernelDriver: iavf\n    capabilities: [intel, 10G]\n    serviceDomains: [worker.domain]\n  0000:02:00.0:\n    capabilities: [10G]\n    serviceDomains: [worker.domain]\nresourceList:\n  - resourceName: radio\n    resourcePrefix: sriov.nsm.xyz.io\n    selectors: {pfNames: [\"ens2f0#0-1\"]}\n",
        )
        .unwrap();
        let pools = c.pools().unwrap();
        let names: Vec<&str> = pools.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "sriov.nsm.xyz.io/radio",
                "worker.domain/10G",
                "worker.domain/intel"
            ]
        );
        assert_eq!(pools["worker.domain/10G"].sources.len(), 2);
    }

    #[test]
    fn bad_configuration_is_refused_naming_the_field() {
        for (yaml, says) in [
            ("physicalFunctions:\n  nope: {capabilities: [a], serviceDomains: [d]}\n", "PCI address"),
            ("physicalFunctions:\n  0000:01:00.0: {capabilities: [a]}\n", "service domain"),
            ("physicalFunctions:\n  0000:01:00.0: {capabilities: [\"a b\"], serviceDomains: [d]}\n", "0000:01:00.0"),
            ("physicalFunctions:\n  0000:01:00.0: {capabilities: [a], serviceDomains: [\"-d\"]}\n", "domain"),
            ("resourceList:\n  - {resourceName: x/y, selectors: {}}\n", "resourceList[0].selectors"),
            ("resourceList:\n  - {resourceName: x/y, selectors: {pfNames: [\"e#9-1\"]}}\n", "pfNames"),
            ("resourceList:\n  - {resourceName: x/y, selectors: {vendors: [zz]}}\n", "vendors"),
            ("bogus: 1\n", "bogus"),
            ("attachments:\n  - {resourceName: r.example/a, count: 0}\n", "attachments[0].count"),
            ("attachments:\n  - {resourceName: noslash, count: 1}\n", "attachments[0].resourceName"),
            ("attachments:\n  - {resourceName: r.example/a, count: 1}\n  - {resourceName: r.example/a, count: 2}\n", "defined twice"),
        ] {
            let e = SriovConfig::from_yaml(yaml).unwrap_err();
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }
}
