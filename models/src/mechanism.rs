//! Connection mechanisms: what an endpoint or a hop can do ([`Capabilities`]) and what a
//! connection got after negotiation ([`Mechanism`]).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The kinds of mechanism Meshwire negotiates, in NSM's vocabulary.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MechanismKind {
    /// A kernel interface pair (veth) between two namespaces of one node.
    Kernel,
    /// Shared memory (memif), only when both ends are on one node.
    Memif,
    Vxlan,
    Gre,
    Mpls,
    Vlan,
    /// An SR-IOV virtual function handed to the client.
    SriovVf,
}

impl MechanismKind {
    pub const ALL: [MechanismKind; 7] = [
        MechanismKind::Kernel,
        MechanismKind::Memif,
        MechanismKind::Vxlan,
        MechanismKind::Gre,
        MechanismKind::Mpls,
        MechanismKind::Vlan,
        MechanismKind::SriovVf,
    ];

    /// Local mechanisms connect two workloads of one node and cannot cross a link.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            MechanismKind::Kernel | MechanismKind::Memif | MechanismKind::SriovVf
        )
    }

    /// Tunnels ride the IP underlay: only their two ends must support them. MPLS and VLAN are
    /// carried hop by hop, so every transit node must support them too.
    pub fn is_tunnel(self) -> bool {
        matches!(self, MechanismKind::Vxlan | MechanismKind::Gre)
    }

    /// Bytes the encapsulation adds to every packet (IPv4 underlay). VXLAN and GRE carry the
    /// whole Ethernet frame (GRE as transparent Ethernet bridging, as Open vSwitch does):
    /// outer IPv4 20 + GRE with key 8 + inner Ethernet 14 = 42.
    pub fn overhead(self) -> u32 {
        match self {
            MechanismKind::Kernel | MechanismKind::Memif | MechanismKind::SriovVf => 0,
            MechanismKind::Vxlan => 50,
            MechanismKind::Gre => 42,
            MechanismKind::Mpls => 4,
            MechanismKind::Vlan => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MechanismKind::Kernel => "kernel",
            MechanismKind::Memif => "memif",
            MechanismKind::Vxlan => "vxlan",
            MechanismKind::Gre => "gre",
            MechanismKind::Mpls => "mpls",
            MechanismKind::Vlan => "vlan",
            MechanismKind::SriovVf => "sriov-vf",
        }
    }
}

impl std::fmt::Display for MechanismKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MechanismKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "kernel" | "veth" => Ok(MechanismKind::Kernel),
            "memif" | "shared-memory" => Ok(MechanismKind::Memif),
            "vxlan" => Ok(MechanismKind::Vxlan),
            "gre" => Ok(MechanismKind::Gre),
            "mpls" => Ok(MechanismKind::Mpls),
            "vlan" => Ok(MechanismKind::Vlan),
            "sriov-vf" | "sriov" | "vfio" => Ok(MechanismKind::SriovVf),
            other => Err(format!(
                "unknown mechanism {other:?} (expected kernel, memif, vxlan, gre, mpls, vlan or sriov-vf)"
            )),
        }
    }
}

/// An inclusive range of numbers (VNIs, keys, labels, VLAN ids).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start: u32,
    pub end: u32,
}

impl Range {
    pub const fn new(start: u32, end: u32) -> Self {
        Range { start, end }
    }

    pub fn contains(&self, v: u32) -> bool {
        self.start <= v && v <= self.end
    }

    pub fn intersect(&self, other: &Range) -> Option<Range> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start <= end).then_some(Range { start, end })
    }

    /// Checks `start <= end` and that both lie in `limits`, naming the rule broken.
    pub fn check(&self, limits: Range) -> Result<(), String> {
        if self.start > self.end {
            return Err(format!("start {} is above end {}", self.start, self.end));
        }
        if !limits.contains(self.start) || !limits.contains(self.end) {
            return Err(format!(
                "{}..{} is outside the allowed {}..{}",
                self.start, self.end, limits.start, limits.end
            ));
        }
        Ok(())
    }
}

/// Protocol limits of each numbered resource.
pub mod limits {
    use super::Range;
    /// VXLAN network identifiers (24 bits, 0 reserved here).
    pub const VNI: Range = Range::new(1, 16_777_215);
    /// GRE keys (32 bits, 0 means "no key").
    pub const GRE_KEY: Range = Range::new(1, u32::MAX);
    /// MPLS labels (20 bits, 0..15 reserved).
    pub const MPLS_LABEL: Range = Range::new(16, 1_048_575);
    /// 802.1Q VLAN ids.
    pub const VLAN_ID: Range = Range::new(1, 4094);
}

/// What an endpoint (or a node's forwarder) supports, with the ranges it accepts.
/// A mechanism that is `None` is not supported.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memif: Option<KernelCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gre: Option<GreCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpls: Option<MplsCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_vf: Option<SriovCap>,
}

/// What an endpoint reached over SR-IOV VFs asks of them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SriovCap {
    /// The VLAN (1 to 4094) the PF tags its clients' VFs with: the endpoint's network on the
    /// wire. None: untagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KernelCap {}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanCap {
    #[serde(default = "default_vni_range")]
    pub vni_range: Range,
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GreCap {
    #[serde(default = "default_gre_range")]
    pub key_range: Range,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MplsCap {
    #[serde(default = "default_mpls_range")]
    pub label_range: Range,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VlanCap {
    #[serde(default = "default_vlan_range")]
    pub id_range: Range,
}

fn default_vni_range() -> Range {
    limits::VNI
}
fn default_vxlan_port() -> u16 {
    4789
}
fn default_gre_range() -> Range {
    limits::GRE_KEY
}
fn default_mpls_range() -> Range {
    limits::MPLS_LABEL
}
fn default_vlan_range() -> Range {
    limits::VLAN_ID
}

impl Default for VxlanCap {
    fn default() -> Self {
        VxlanCap {
            vni_range: limits::VNI,
            port: 4789,
        }
    }
}
impl Default for GreCap {
    fn default() -> Self {
        GreCap {
            key_range: limits::GRE_KEY,
        }
    }
}
impl Default for MplsCap {
    fn default() -> Self {
        MplsCap {
            label_range: limits::MPLS_LABEL,
        }
    }
}
impl Default for VlanCap {
    fn default() -> Self {
        VlanCap {
            id_range: limits::VLAN_ID,
        }
    }
}

impl Default for Capabilities {
    /// An endpoint that says nothing accepts kernel, VXLAN and GRE with their full ranges;
    /// MPLS, VLAN, memif and SR-IOV must be offered explicitly.
    fn default() -> Self {
        Capabilities {
            kernel: Some(KernelCap {}),
            memif: None,
            vxlan: Some(VxlanCap::default()),
            gre: Some(GreCap::default()),
            mpls: None,
            vlan: None,
            sriov_vf: None,
        }
    }
}

impl Capabilities {
    /// Everything, with full ranges (used for forwarders that can do it all).
    pub fn all() -> Self {
        Capabilities {
            kernel: Some(KernelCap {}),
            memif: Some(KernelCap {}),
            vxlan: Some(VxlanCap::default()),
            gre: Some(GreCap::default()),
            mpls: Some(MplsCap::default()),
            vlan: Some(VlanCap::default()),
            sriov_vf: Some(SriovCap::default()),
        }
    }

    pub fn supports(&self, kind: MechanismKind) -> bool {
        match kind {
            MechanismKind::Kernel => self.kernel.is_some(),
            MechanismKind::Memif => self.memif.is_some(),
            MechanismKind::Vxlan => self.vxlan.is_some(),
            MechanismKind::Gre => self.gre.is_some(),
            MechanismKind::Mpls => self.mpls.is_some(),
            MechanismKind::Vlan => self.vlan.is_some(),
            MechanismKind::SriovVf => self.sriov_vf.is_some(),
        }
    }

    /// The range of numbers this side accepts for `kind` (VNI, key, label, VLAN id), if numbered.
    pub fn range(&self, kind: MechanismKind) -> Option<Range> {
        match kind {
            MechanismKind::Vxlan => self.vxlan.as_ref().map(|c| c.vni_range),
            MechanismKind::Gre => self.gre.as_ref().map(|c| c.key_range),
            MechanismKind::Mpls => self.mpls.as_ref().map(|c| c.label_range),
            MechanismKind::Vlan => self.vlan.as_ref().map(|c| c.id_range),
            _ => None,
        }
    }

    pub fn kinds(&self) -> Vec<MechanismKind> {
        MechanismKind::ALL
            .into_iter()
            .filter(|k| self.supports(*k))
            .collect()
    }

    /// Checks every range against the protocol limits; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let checks = [
            (
                "vxlan.vniRange",
                self.vxlan.as_ref().map(|c| c.vni_range),
                limits::VNI,
            ),
            (
                "gre.keyRange",
                self.gre.as_ref().map(|c| c.key_range),
                limits::GRE_KEY,
            ),
            (
                "mpls.labelRange",
                self.mpls.as_ref().map(|c| c.label_range),
                limits::MPLS_LABEL,
            ),
            (
                "vlan.idRange",
                self.vlan.as_ref().map(|c| c.id_range),
                limits::VLAN_ID,
            ),
        ];
        for (field, range, lim) in checks {
            if let Some(r) = range {
                r.check(lim).map_err(|rule| (field.to_string(), rule))?;
            }
        }
        if let Some(v) = &self.vxlan {
            if v.port == 0 {
                return Err(("vxlan.port".into(), "must not be 0".into()));
            }
        }
        Ok(())
    }
}

/// A negotiated mechanism with its parameters, as programmed on a hop.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mechanism {
    /// A veth pair: `interface` in the client, `peer_interface` in the endpoint.
    Kernel {
        interface: String,
        peer_interface: String,
    },
    Memif {
        socket: String,
    },
    Vxlan {
        vni: u32,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        src_ip: IpAddr,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        dst_ip: IpAddr,
        port: u16,
    },
    Gre {
        key: u32,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        src_ip: IpAddr,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        dst_ip: IpAddr,
    },
    /// `label_out` is pushed towards the endpoint, `label_in` towards the client.
    Mpls {
        label_out: u32,
        label_in: u32,
    },
    Vlan {
        id: u32,
    },
    /// A virtual function of the client node's SR-IOV PF, lent to the client: its netdev moves
    /// into the client's namespace (the PF's embedded switch joins it to the other VFs and the
    /// wire).
    #[serde(rename = "sriov-vf")]
    SriovVf {
        /// The VF's PCI address.
        pci_address: String,
        /// Its PF's PCI address and its number there (`virtfnN`).
        #[serde(default)]
        pf: String,
        #[serde(default)]
        vf: u32,
        /// The VF's interface name on its node while it is not lent.
        #[serde(default)]
        netdev: String,
        /// The pool and the device plugin token it was claimed from.
        #[serde(default)]
        pool: String,
        #[serde(default)]
        token: String,
        /// The VLAN the PF tags the VF's traffic with (the endpoint's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<u16>,
    },
}

impl Mechanism {
    pub fn kind(&self) -> MechanismKind {
        match self {
            Mechanism::Kernel { .. } => MechanismKind::Kernel,
            Mechanism::Memif { .. } => MechanismKind::Memif,
            Mechanism::Vxlan { .. } => MechanismKind::Vxlan,
            Mechanism::Gre { .. } => MechanismKind::Gre,
            Mechanism::Mpls { .. } => MechanismKind::Mpls,
            Mechanism::Vlan { .. } => MechanismKind::Vlan,
            Mechanism::SriovVf { .. } => MechanismKind::SriovVf,
        }
    }

    /// One line for tables: `vxlan vni=5001 10.0.0.1->10.0.0.2`.
    pub fn summary(&self) -> String {
        match self {
            Mechanism::Kernel {
                interface,
                peer_interface,
            } => {
                format!("kernel {interface}<->{peer_interface}")
            }
            Mechanism::Memif { socket } => format!("memif {socket}"),
            Mechanism::Vxlan {
                vni,
                src_ip,
                dst_ip,
                ..
            } => {
                format!("vxlan vni={vni} {src_ip}->{dst_ip}")
            }
            Mechanism::Gre {
                key,
                src_ip,
                dst_ip,
            } => format!("gre key={key} {src_ip}->{dst_ip}"),
            Mechanism::Mpls {
                label_out,
                label_in,
            } => {
                format!("mpls out={label_out} in={label_in}")
            }
            Mechanism::Vlan { id } => format!("vlan {id}"),
            Mechanism::SriovVf {
                pci_address,
                pool,
                vlan,
                ..
            } => match vlan {
                Some(v) => format!("sriov-vf {pci_address} pool={pool} vlan={v}"),
                None => format!("sriov-vf {pci_address} pool={pool}"),
            },
        }
    }
}
