//! Reading and checking a containerlab-format lab file. Pure: no namespaces are touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

pub const HOST_LABEL: &str = "meshwire.io/host";
pub const MANIFESTS_LABEL: &str = "meshwire.io/manifests";
/// On a host node: `kernel` (default) or `ovs` (the lab runs an Open vSwitch in the node).
pub const FORWARDER_LABEL: &str = "meshwire.io/forwarder";
/// On a `meshwire-appliance` node: its eNSM device file (endpoints, profile, underlay address;
/// the lab fills in how to reach the emulated device).
pub const DEVICE_LABEL: &str = "meshwire.io/device";
/// On a `meshwire-appliance` node: the device's startup configuration (NETCONF XML).
pub const STARTUP_LABEL: &str = "meshwire.io/startup";

/// A lab file that cannot be run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct LabError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Linux,
    Bridge,
    /// An emulated appliance: a namespace with netconfd behind sshd, snmpd and an agent that
    /// applies the device's running configuration to the namespace's data plane.
    Appliance,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub kind: Kind,
    pub exec: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Appliances: the device file and the startup configuration, resolved against the lab
    /// file's directory.
    pub device_file: Option<PathBuf>,
    pub startup: Option<PathBuf>,
}

impl LabNode {
    /// The host this node is a workload on, if it is one.
    pub fn host(&self) -> Option<&str> {
        self.labels.get(HOST_LABEL).map(String::as_str)
    }

    /// Whether the node is a network namespace (linux nodes and appliances).
    pub fn has_netns(&self) -> bool {
        matches!(self.kind, Kind::Linux | Kind::Appliance)
    }

    /// A host node whose forwarder is the Linux kernel (where a node agent runs, with agents).
    pub fn is_kernel_host(&self) -> bool {
        self.kind == Kind::Linux && self.host().is_none() && !self.is_ovs()
    }

    /// A host node (kernel or Open vSwitch): it runs a node agent.
    pub fn is_host(&self) -> bool {
        self.is_kernel_host() || self.is_ovs()
    }

    /// A host node whose forwarder is Open vSwitch.
    pub fn is_ovs(&self) -> bool {
        self.kind == Kind::Linux
            && self.host().is_none()
            && self.labels.get(FORWARDER_LABEL).map(String::as_str) == Some("ovs")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabEnd {
    pub node: String,
    pub interface: String,
    pub address: Option<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabLink {
    pub a: LabEnd,
    pub b: LabEnd,
    pub mtu: Option<u32>,
}

/// A checked lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    pub name: String,
    pub file: PathBuf,
    pub nodes: BTreeMap<String, LabNode>,
    pub links: Vec<LabLink>,
    /// Manifest files to apply, resolved against the lab file's directory.
    pub manifests: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct RawLab {
    name: Option<String>,
    topology: Option<RawTopology>,
}

#[derive(Deserialize, Default)]
struct RawTopology {
    #[serde(default)]
    defaults: RawNode,
    #[serde(default)]
    kinds: BTreeMap<String, RawNode>,
    #[serde(default)]
    nodes: BTreeMap<String, Option<RawNode>>,
    #[serde(default)]
    links: Vec<RawLink>,
}

/// containerlab's node fields that matter here; the others (image, binds, env, ...) are ignored.
#[derive(Deserialize, Default, Clone)]
struct RawNode {
    kind: Option<String>,
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawLink {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    ipv4: Vec<String>,
    mtu: Option<u32>,
}

/// The 1-based line of the `nth` (0-based) line containing `needle`, or 1.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}

impl Lab {
    pub fn load(path: &Path) -> Result<Lab, LabError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LabError {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Lab::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lab, LabError> {
        let file = path.display().to_string();
        let err = |line: usize, reason: String| LabError {
            file: file.clone(),
            line,
            reason,
        };
        let raw: RawLab = serde_yaml::from_str(text)
            .map_err(|e| err(e.location().map(|l| l.line()).unwrap_or(1), e.to_string()))?;
        let name = raw
            .name
            .ok_or_else(|| err(1, "name: required (the lab's name)".into()))?;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                line_of(text, "name:", 0),
                format!("name {name:?}: use 1 to 32 letters, digits, '-' or '_'"),
            ));
        }
        let topo = raw
            .topology
            .ok_or_else(|| err(1, "topology: required".into()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut manifests = Vec::new();
        let mut add_manifests = |labels: &BTreeMap<String, String>| {
            for m in labels
                .get(MANIFESTS_LABEL)
                .into_iter()
                .flat_map(|v| v.split(','))
            {
                let p = dir.join(m.trim());
                if !manifests.contains(&p) {
                    manifests.push(p);
                }
            }
        };
        add_manifests(&topo.defaults.labels);
        let mut nodes = BTreeMap::new();
        for (n, raw_node) in &topo.nodes {
            let line = line_of(text, &format!("{n}:"), 0);
            let raw_node = raw_node.clone().unwrap_or_default();
            let kind_name = raw_node
                .kind
                .clone()
                .or_else(|| topo.defaults.kind.clone())
                .unwrap_or_else(|| "linux".into());
            let kind = match kind_name.as_str() {
                "linux" => Kind::Linux,
                                "bridge" => Kind::Bridge,
                "meshwire-appliance" => Kind::Appliance,
                other => {
                    return Err(err(
                        line,
                        format!("node {n}: kind {other:?} is not supported here (linux, bridge or meshwire-appliance)"),
                    ))
                }
            };
            let kind_def = topo.kinds.get(&kind_name).cloned().unwrap_or_default();
            let mut labels = topo.defaults.labels.clone();
            labels.extend(kind_def.labels.clone());
            labels.extend(raw_node.labels.clone());
            // The node's namespace is `clab-<lab>-<node>`: one path component, well under 255.
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(
                    line,
                    format!("node {n:?}: use 1 to 64 letters, digits, '-' or '_'"),
                ));
            }
            if kind == Kind::Bridge && n.len() > 15 {
                return Err(err(
                    line,
                    format!("bridge {n}: a Linux interface name has at most 15 characters"),
                ));
            }
            add_manifests(&raw_node.labels);
            let exec = [topo.defaults.exec.clone(), kind_def.exec, raw_node.exec].concat();
            let base = path.parent().unwrap_or(Path::new("."));
            let file_label = |l: &str| labels.get(l).map(|f| base.join(f));
            let (device_file, startup) = (file_label(DEVICE_LABEL), file_label(STARTUP_LABEL));
            if kind == Kind::Appliance {
                match &device_file {
                    None => {
                        return Err(err(
                            line,
                            format!(
                            "appliance {n}: label {DEVICE_LABEL} must name its eNSM device file"
                        ),
                        ))
                    }
                    Some(f) if !f.exists() => {
                        return Err(err(
                            line_of(text, DEVICE_LABEL, 0),
                            format!("appliance {n}: device file {} does not exist", f.display()),
                        ))
                    }
                    _ => {}
                }
                if let Some(f) = startup.as_ref().filter(|f| !f.exists()) {
                    return Err(err(
                        line_of(text, STARTUP_LABEL, 0),
                        format!("appliance {n}: startup file {} does not exist", f.display()),
                    ));
                }
                if n.len() > 40 {
                    return Err(err(line, format!("appliance {n}: at most 40 characters")));
                }
            }
            nodes.insert(
                n.clone(),
                LabNode {
                    name: n.clone(),
                    kind,
                    exec,
                    labels,
                    device_file: device_file.filter(|_| kind == Kind::Appliance),
                    startup: startup.filter(|_| kind == Kind::Appliance),
                },
            );
        }
        for node in nodes.values() {
            if let Some(f) = node.labels.get(FORWARDER_LABEL) {
                if f != "kernel" && f != "ovs" {
                    let line = line_of(text, FORWARDER_LABEL, 0);
                    return Err(err(
                        line,
                        format!(
                            "node {}: {FORWARDER_LABEL} {f:?} is not kernel or ovs",
                            node.name
                        ),
                    ));
                }
            }
            if let Some(h) = node.host() {
                let line = line_of(text, &format!("{HOST_LABEL}: {h}"), 0);
                match nodes.get(h) {
                    None => return Err(err(line, format!("node {}: host {h:?} is not a node of this lab", node.name))),
                    Some(host) if host.host().is_some() || host.kind != Kind::Linux => {
                        return Err(err(line, format!("node {}: host {h:?} must be a linux node that is not itself a workload", node.name)))
                    }
                    _ => {}
                }
            }
        }
        let mut links = Vec::new();
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        for (i, l) in topo.links.iter().enumerate() {
            let first = l
                .endpoints
                .first()
                .map(String::as_str)
                .unwrap_or("endpoints");
            let line = line_of(text, first, 0);
            if l.endpoints.len() != 2 {
                return Err(err(
                    line,
                    format!(
                        "link {}: needs exactly two endpoints like [\"a:eth1\", \"b:eth1\"]",
                        i + 1
                    ),
                ));
            }
            if !l.ipv4.is_empty() && l.ipv4.len() != 2 {
                return Err(err(
                    line,
                    format!("link {}: ipv4 needs one address per endpoint", i + 1),
                ));
            }
            let mut ends = Vec::new();
            for (j, e) in l.endpoints.iter().enumerate() {
                let eline = line_of(text, e, 0);
                let Some((node, iface)) = e.split_once(':') else {
                    return Err(err(
                        eline,
                        format!("link endpoint {e:?} is not of the form node:interface"),
                    ));
                };
                if !nodes.contains_key(node) {
                    return Err(err(
                        eline,
                        format!("link endpoint {e:?}: unknown node {node:?}"),
                    ));
                }
                if let Err(rule) = meshwire_models::validate::check_ifname(iface) {
                    return Err(err(eline, format!("link endpoint {e:?}: {rule}")));
                }
                if !used.insert((node.to_string(), iface.to_string())) {
                    return Err(err(line_of(text, e, 1), format!("link endpoint {e:?}: interface {iface} of {node} is already used by another link")));
                }
                let address = match l.ipv4.get(j) {
                    // "" leaves an end (a bridge port) without an address.
                    None => None,
                    Some(a) if a.is_empty() => None,
                    Some(a) => Some(a.parse::<IpNet>().map_err(|_| {
                        err(
                            line_of(text, a, 0),
                            format!("address {a:?} is not an address with prefix like 10.0.0.1/24"),
                        )
                    })?),
                };
                if address.is_some() && nodes[node].kind == Kind::Bridge {
                    return Err(err(
                        line,
                        format!("link endpoint {e:?}: a bridge port takes no address"),
                    ));
                }
                ends.push(LabEnd {
                    node: node.to_string(),
                    interface: iface.to_string(),
                    address,
                });
            }
            if let Some(m) = l.mtu {
                if !(68..=65535).contains(&m) {
                    return Err(err(
                        line,
                        format!("link {}: mtu {m} is outside 68..65535", i + 1),
                    ));
                }
            }
            let b = ends.pop().expect("two ends");
            let a = ends.pop().expect("two ends");
            links.push(LabLink { a, b, mtu: l.mtu });
        }
        Ok(Lab {
            name,
            file: path.to_path_buf(),
            nodes,
            links,
            manifests,
        })
    }

    /// The namespace of a linux node.
    pub fn netns(&self, node: &str) -> String {
        format!("clab-{}-{node}", self.name)
    }

    /// The `meshwire.io/v1` topology of the lab: hosts as kernel-forwarder nodes, links between
    /// hosts as links.
    pub fn manifests(&self) -> String {
        self.manifests_with(&|_| None)
    }

    /// Like [`Lab::manifests`], with the OVSDB remote of each ovs node. Hosts on one bridge (an L2
    /// segment, like a top-of-rack switch) get a link between each pair of them.
    pub fn manifests_with(&self, ovsdb: &dyn Fn(&str) -> Option<String>) -> String {
        let is_host = |n: &str| {
            self.nodes
                .get(n)
                .is_some_and(|n| n.kind == Kind::Linux && n.host().is_none())
        };
        let mut out = String::new();
        for n in self.nodes.values().filter(|n| is_host(&n.name)) {
            let fwd = match (n.is_ovs(), ovsdb(&n.name)) {
                (true, Some(db)) => format!("forwarder: ovs, ovsdb: \"{db}\""),
                (true, None) => "forwarder: ovs".to_string(),
                _ => "forwarder: kernel".to_string(),
            };
            // The address other domains' tunnels reach this host on (federated vL3s).
            let labels = n
                .labels
                .iter()
                .filter(|(k, _)| k.starts_with("meshwire.io/federation"))
                .map(|(k, v)| format!("{k}: \"{v}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!(", labels: {{{labels}}}")
            };
            out.push_str(&format!(
                "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {{name: {}{labels}}}\nspec: {{{fwd}, netns: {}}}\n",
                n.name,
                self.netns(&n.name)
            ));
        }
        // Appliances are vertices too (their eNSM registers the Device): links to them are
        // part of the topology.
        let is_vertex =
            |n: &str| is_host(n) || self.nodes.get(n).is_some_and(|n| n.kind == Kind::Appliance);
        let mut links: Vec<LabLink> = self
            .links
            .iter()
            .filter(|l| is_vertex(&l.a.node) && is_vertex(&l.b.node))
            .cloned()
            .collect();
        for br in self.nodes.values().filter(|n| n.kind == Kind::Bridge) {
            let ends: Vec<&LabEnd> = self
                .links
                .iter()
                .filter_map(|l| {
                    if l.a.node == br.name && is_host(&l.b.node) {
                        Some(&l.b)
                    } else if l.b.node == br.name && is_host(&l.a.node) {
                        Some(&l.a)
                    } else {
                        None
                    }
                })
                .collect();
            for (i, a) in ends.iter().enumerate() {
                for b in &ends[i + 1..] {
                    let mtu = self
                        .links
                        .iter()
                        .filter(|l| [&l.a, &l.b].iter().any(|e| e.node == br.name))
                        .filter_map(|l| l.mtu)
                        .min();
                    links.push(LabLink {
                        a: (*a).clone(),
                        b: (*b).clone(),
                        mtu,
                    });
                }
            }
        }
        for l in &links {
            let mut spec = format!(
                "endpoints: [\"{}:{}\", \"{}:{}\"]",
                l.a.node, l.a.interface, l.b.node, l.b.interface
            );
            if let (Some(a), Some(b)) = (l.a.address, l.b.address) {
                spec.push_str(&format!(", addresses: [\"{a}\", \"{b}\"]"));
            }
            if let Some(m) = l.mtu {
                spec.push_str(&format!(", mtu: {m}"));
            }
            out.push_str(&format!(
                "---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {{name: {}-{}-{}-{}}}\nspec: {{{spec}}}\n",
                l.a.node, l.a.interface, l.b.node, l.b.interface
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: t\ntopology:\n  nodes:\n    h1: {kind: linux}\n    h2:\n      kind: linux\n    w1:\n      kind: linux\n      labels: {meshwire.io/host: h1}\n    br1: {kind: bridge}\n  links:\n    - endpoints: [\"h1:eth1\", \"h2:eth1\"]\n      ipv4: [\"192.168.9.1/24\", \"192.168.9.2/24\"]\n    - endpoints: [\"w1:eth1\", \"br1:p1\"]\n";

    fn check(text: &str) -> Result<Lab, String> {
        Lab::parse(Path::new("lab.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn file_good_lab_and_its_topology() {
        let lab = check(GOOD).unwrap();
        assert_eq!(lab.netns("w1"), "clab-t-w1");
        let m = lab.manifests();
        assert!(
            m.contains("name: h1") && m.contains("name: h2") && !m.contains("name: w1"),
            "{m}"
        );
        assert!(
            m.contains("addresses: [\"192.168.9.1/24\", \"192.168.9.2/24\"]"),
            "{m}"
        );
        assert_eq!(
            m.matches("kind: Link").count(),
            1,
            "only host-to-host links are topology"
        );
    }

    #[test]
    fn file_bad_labs_name_line_and_reason() {
        let cases = [
            (
                GOOD.replace("\"h2:eth1\"]", "\"h9:eth1\"]"),
                "lab.yaml:12: link endpoint \"h9:eth1\": unknown node \"h9\"",
            ),
            (
                GOOD.replace("\"h2:eth1\"]", "\"h2:a/b\"]"),
                "lab.yaml:12: link endpoint \"h2:a/b\": interface name \"a/b\" may not contain",
            ),
            (
                GOOD.replace("\"br1:p1\"", "\"h1:eth1\""),
                "lab.yaml:14: link endpoint \"h1:eth1\": interface eth1 of h1 is already used",
            ),
            (
                GOOD.replace("192.168.9.2/24", "192.168.9.300/24"),
                "lab.yaml:13: address \"192.168.9.300/24\" is not an address",
            ),
            (
                GOOD.replace("h2:\n      kind: linux", "h2:\n      kind: nokia_srlinux"),
                "lab.yaml:5: node h2: kind \"nokia_srlinux\" is not supported",
            ),
            (
                GOOD.replace("meshwire.io/host: h1", "meshwire.io/host: nowhere"),
                "lab.yaml:9: node w1: host \"nowhere\" is not a node",
            ),
        ];
        for (text, want) in cases {
            let got = check(&text).unwrap_err();
            assert!(got.starts_with(want), "want {want:?}, got {got:?}");
        }
    }
}
