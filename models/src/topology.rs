//! The topology the controller computes paths over: nodes (hosts with a forwarder), devices
//! (external appliances) and links between them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::mechanism::{Capabilities, MechanismKind};

/// The forwarder that wires connections on a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwarderKind {
    /// Linux kernel networking through netlink (veth, VXLAN, bridge).
    #[default]
    Kernel,
    /// Open vSwitch, programmed over OVSDB and OpenFlow 1.3.
    Ovs,
}

impl ForwarderKind {
    /// What this forwarder can wire. The kernel forwarder of these hosts has no GRE, MPLS or
    /// VLAN modules; Open vSwitch's userspace datapath does GRE, VXLAN and MPLS.
    pub fn supports(self, kind: MechanismKind) -> bool {
        match self {
            ForwarderKind::Kernel => {
                // SR-IOV: the node's agent lends VFs of its PFs.
                matches!(
                    kind,
                    MechanismKind::Kernel | MechanismKind::Vxlan | MechanismKind::SriovVf
                )
            }
            ForwarderKind::Ovs => matches!(
                kind,
                MechanismKind::Kernel
                    | MechanismKind::Vxlan
                    | MechanismKind::Gre
                    | MechanismKind::Mpls
                    | MechanismKind::Vlan
            ),
        }
    }
}

impl std::fmt::Display for ForwarderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForwarderKind::Kernel => "kernel",
            ForwarderKind::Ovs => "ovs",
        })
    }
}

/// A host of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub forwarder: ForwarderKind,
    /// The address tunnels from and to this node use. When absent, the address of the node's end
    /// of the first link on a path is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_address: Option<IpAddr>,
    /// The node's network namespace, when it is emulated by one (labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// ovs nodes: the OVSDB remote of the node's Open vSwitch (`unix:PATH` or `tcp:HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovsdb: Option<String>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// An external appliance, exposed to the mesh by an eNSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    /// The device profile (`meshwire-appliance`, `ietf-interfaces`, ...).
    pub kind: String,
    /// Management address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Data-plane address tunnels terminate on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_address: Option<IpAddr>,
    pub mechanisms: Capabilities,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The URL of the device's eNSM when it runs in its own process (`meshwire ensm`). The
    /// controller calls the device's eNSM only here, with the device's own credential; a
    /// device object is written by an admin or by that device's eNSM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensm: Option<String>,
}

/// One end of a link: a node or device and its interface there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkEnd {
    pub vertex: String,
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpNet>,
}

impl LinkEnd {
    /// Parses containerlab's `node:interface`.
    pub fn parse(text: &str) -> Result<LinkEnd, String> {
        match text.split_once(':') {
            Some((v, i)) if !v.is_empty() && !i.is_empty() && !i.contains(':') => Ok(LinkEnd {
                vertex: v.to_string(),
                interface: i.to_string(),
                address: None,
            }),
            _ => Err(format!("{text:?} is not of the form node:interface")),
        }
    }
}

/// A link of the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub a: LinkEnd,
    pub b: LinkEnd,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default = "default_cost")]
    pub cost: u32,
    #[serde(default = "default_up")]
    pub up: bool,
}

pub fn default_mtu() -> u32 {
    1500
}
pub fn default_cost() -> u32 {
    10
}
fn default_up() -> bool {
    true
}

impl Link {
    /// The end of this link at `vertex`, if it touches it.
    pub fn end_at(&self, vertex: &str) -> Option<&LinkEnd> {
        if self.a.vertex == vertex {
            Some(&self.a)
        } else if self.b.vertex == vertex {
            Some(&self.b)
        } else {
            None
        }
    }

    /// The vertex at the other end from `vertex`.
    pub fn other(&self, vertex: &str) -> Option<&str> {
        if self.a.vertex == vertex {
            Some(&self.b.vertex)
        } else if self.b.vertex == vertex {
            Some(&self.a.vertex)
        } else {
            None
        }
    }
}

/// The whole topology, as the controller and the CLI see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Topology {
    pub nodes: BTreeMap<String, Node>,
    pub devices: BTreeMap<String, Device>,
    pub links: BTreeMap<String, Link>,
}

impl Topology {
    pub fn has_vertex(&self, name: &str) -> bool {
        self.nodes.contains_key(name) || self.devices.contains_key(name)
    }

    /// What a vertex's forwarder (node) or profile (device) can wire.
    pub fn vertex_supports(&self, name: &str, kind: MechanismKind) -> bool {
        if let Some(n) = self.nodes.get(name) {
            n.forwarder.supports(kind)
        } else if let Some(d) = self.devices.get(name) {
            d.mechanisms.supports(kind)
        } else {
            false
        }
    }

    pub fn vertex_capabilities(&self, name: &str) -> Option<Capabilities> {
        if let Some(n) = self.nodes.get(name) {
            let mut caps = Capabilities::all();
            for k in MechanismKind::ALL {
                if !n.forwarder.supports(k) {
                    match k {
                        MechanismKind::Kernel => caps.kernel = None,
                        MechanismKind::Memif => caps.memif = None,
                        MechanismKind::Vxlan => caps.vxlan = None,
                        MechanismKind::Gre => caps.gre = None,
                        MechanismKind::Mpls => caps.mpls = None,
                        MechanismKind::Vlan => caps.vlan = None,
                        MechanismKind::SriovVf => caps.sriov_vf = None,
                    }
                }
            }
            Some(caps)
        } else {
            self.devices.get(name).map(|d| d.mechanisms.clone())
        }
    }

    pub fn underlay_address(&self, name: &str) -> Option<IpAddr> {
        self.nodes
            .get(name)
            .and_then(|n| n.underlay_address)
            .or_else(|| self.devices.get(name).and_then(|d| d.underlay_address))
    }
}
