//! Device profiles: data, not code. A profile maps a negotiated mechanism and its parameters to
//! the device's YANG configuration (a template to apply, and one to undo it). An operator adds a
//! device kind by adding a profile file; it is checked when loaded: every `{{variable}}` must be
//! one the mechanism provides, and every template must render to well-formed XML.
//!
//! ```yaml
//! apiVersion: meshwire.io/v1
//! kind: DeviceProfile
//! metadata: {name: meshwire-appliance}
//! spec:
//!   commit: {confirmTimeout: 60, settle: 100ms}  # optional: confirmed commit, confirmed at
//!                                         # once; time the data plane needs after a commit
//!   mechanisms:
//!     vxlan:
//!       range: {start: 5000, end: 5999}   # the VNIs the device accepts (optional)
//!       config: <tunnels ...>{{vni}}...</tunnels>
//!       remove: <tunnels ...><tunnel nc:operation="remove">...</tunnel></tunnels>
//! ```
//! Variables: `connection`, `name` (`mw` + 8 hex digits of the id, fits 15 characters),
//! `address` (the device's address with prefix), `peer_address`, `mtu`; VXLAN `vni`, `remote`,
//! `local`, `port`; GRE `key`, `remote`, `local`; MPLS `label_out` (towards the device),
//! `label_in` (towards the client); VLAN `vlan`.

use std::collections::BTreeMap;
use std::path::Path;

use meshwire_models::mechanism::{Capabilities, GreCap, MplsCap, Range, VlanCap, VxlanCap};
use meshwire_models::{Connection, Mechanism, MechanismKind};
use serde::Deserialize;

use crate::netconf::xml::escape;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {file}: {reason}")]
pub struct ProfileError {
    pub file: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    yang: Vec<String>,
    #[serde(default)]
    commit: Option<RawCommit>,
    #[serde(default)]
    inventory: Option<Inventory>,
    #[serde(default)]
    cross_connect: Option<RawCrossConnect>,
    mechanisms: BTreeMap<String, RawMechanism>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrossConnect {
    config: String,
    remove: String,
}

/// How the device joins two of its tunnels when it passes a connection on along a service
/// chain. Variables: `name`, `connection` (the incoming connection), `next` (the onward one),
/// `a` and `b` (their tunnels' names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossConnect {
    pub config: String,
    pub remove: String,
}

const CROSS_CONNECT_VARS: [&str; 5] = ["name", "connection", "next", "a", "b"];

/// How to find what Meshwire owns on the device, for resync: a subtree filter for get-config,
/// the element of one entry, its key leaf and the leaf carrying `meshwire:<connection id>`, and
/// how to remove an entry given only its key (`{{name}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    pub filter: String,
    pub entry: String,
    pub key: String,
    pub owner: String,
    pub remove: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCommit {
    confirm_timeout: Option<u32>,
    /// e.g. `100ms`.
    settle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMechanism {
    #[serde(default)]
    range: Option<Range>,
    config: String,
    remove: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub range: Option<Range>,
    pub config: String,
    pub remove: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    /// YANG modules the device must have (informational, shown to operators).
    pub yang: Vec<String>,
    /// Confirmed commit with this timeout (seconds), confirmed once the connection is up.
    pub confirm_timeout: Option<u32>,
    /// How long the device takes after a commit to program its data plane: the eNSM reports
    /// a connection up only after it (so the client's first packets do not race the device).
    pub settle: std::time::Duration,
    /// Finding Meshwire's entries on the device (without it, resync cannot see orphans).
    pub inventory: Option<Inventory>,
    /// Joining two tunnels (service chains); without it the device cannot be a chain element.
    pub cross_connect: Option<CrossConnect>,
    pub mechanisms: BTreeMap<MechanismKind, Template>,
}

const COMMON: [&str; 5] = ["connection", "name", "address", "peer_address", "mtu"];

fn variables(kind: MechanismKind) -> Vec<&'static str> {
    let own: &[&str] = match kind {
        MechanismKind::Vxlan => &["vni", "remote", "local", "port"],
        MechanismKind::Gre => &["key", "remote", "local"],
        MechanismKind::Mpls => &["label_in", "label_out"],
        MechanismKind::Vlan => &["vlan"],
        _ => &[],
    };
    COMMON.iter().chain(own).copied().collect()
}

/// At most `n` bytes of `s` from byte `from` (a char boundary), cut back to a char boundary: for
/// quoting a template near an error, whatever its characters.
fn near(s: &str, from: usize, n: usize) -> &str {
    let mut end = (from + n).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[from..end]
}

/// `{{name}}` occurrences in `t`, or the first malformed one.
fn placeholders(t: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ near {:?}", near(rest, i, 20)))?;
        let name = after[..j].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(format!(
                "unclosed or malformed {{{{ near {:?} (variables look like {{{{vni}}}})",
                near(rest, i, 24)
            ));
        }
        out.push(name.to_string());
        rest = &after[j + 2..];
    }
    Ok(out)
}

/// The profiles shipped with Meshwire, by name; a file of the same name in a profile directory
/// takes precedence.
pub const BUILTIN: [(&str, &str); 2] = [
    (
        "meshwire-appliance",
        include_str!("../../profiles/meshwire-appliance.yaml"),
    ),
    (
        "ietf-interfaces",
        include_str!("../../profiles/ietf-interfaces.yaml"),
    ),
];

/// Renders `t` with `vars` (values XML-escaped); a variable not in `vars` is an error.
pub fn render(t: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after.find("}}").ok_or("unclosed {{")?;
        let name = after[..j].trim();
        let v = vars
            .get(name)
            .ok_or_else(|| format!("no value for {{{{{name}}}}}"))?;
        out.push_str(&escape(v));
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn sample(kind: MechanismKind) -> BTreeMap<&'static str, String> {
    variables(kind)
        .into_iter()
        .map(|v| (v, "1".to_string()))
        .collect()
}

fn well_formed(xml: &str) -> Result<(), String> {
    // A config is a forest of elements: wrap it the way <config> does.
    let doc = format!("<config xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\">{xml}</config>");
    roxmltree::Document::parse(&doc)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError {
            file: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        Profile::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Profile, ProfileError> {
        let err = |reason: String| ProfileError {
            file: file.to_string(),
            reason,
        };
        let (name, spec): (String, RawSpec) =
            crate::doc::parse(text, "DeviceProfile").map_err(err)?;
        let mut mechanisms = BTreeMap::new();
        for (k, m) in spec.mechanisms {
            let kind: MechanismKind = k
                .parse()
                .map_err(|_| err(format!("mechanisms.{k}: not a mechanism")))?;
            if !matches!(
                kind,
                MechanismKind::Vxlan
                    | MechanismKind::Gre
                    | MechanismKind::Mpls
                    | MechanismKind::Vlan
            ) {
                return Err(err(format!(
                    "mechanisms.{k}: a device is reached over vxlan, gre, mpls or vlan"
                )));
            }
            let known = variables(kind);
            for (which, t) in [("config", &m.config), ("remove", &m.remove)] {
                for v in placeholders(t).map_err(|e| err(format!("mechanisms.{k}.{which}: {e}")))? {
                    if !known.contains(&v.as_str()) {
                        return Err(err(format!(
                            "mechanisms.{k}.{which}: unknown variable {{{{{v}}}}} (known for {k}: {})",
                            known.join(", ")
                        )));
                    }
                }
                let r = render(t, &sample(kind))
                    .map_err(|e| err(format!("mechanisms.{k}.{which}: {e}")))?;
                well_formed(&r).map_err(|e| {
                    err(format!("mechanisms.{k}.{which}: not well-formed XML: {e}"))
                })?;
            }
            if let Some(r) = &m.range {
                if r.start > r.end {
                    return Err(err(format!(
                        "mechanisms.{k}.range: start {} is above end {}",
                        r.start, r.end
                    )));
                }
            }
            mechanisms.insert(
                kind,
                Template {
                    range: m.range,
                    config: m.config,
                    remove: m.remove,
                },
            );
        }
        if let Some(inv) = &spec.inventory {
            for v in placeholders(&inv.remove).map_err(|e| err(format!("inventory.remove: {e}")))? {
                if v != "name" {
                    return Err(err(format!(
                        "inventory.remove: unknown variable {{{{{v}}}}} (only {{{{name}}}}, the entry's key)"
                    )));
                }
            }
            let vars = BTreeMap::from([("name", "1".to_string())]);
            let r =
                render(&inv.remove, &vars).map_err(|e| err(format!("inventory.remove: {e}")))?;
            well_formed(&r)
                .map_err(|e| err(format!("inventory.remove: not well-formed XML: {e}")))?;
            well_formed(&inv.filter)
                .map_err(|e| err(format!("inventory.filter: not well-formed XML: {e}")))?;
            for (what, v) in [
                ("entry", &inv.entry),
                ("key", &inv.key),
                ("owner", &inv.owner),
            ] {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(err(format!(
                        "inventory.{what}: {v:?} is not an element name"
                    )));
                }
            }
        }
        let cross_connect = match spec.cross_connect {
            None => None,
            Some(x) => {
                for (which, t) in [("config", &x.config), ("remove", &x.remove)] {
                    for v in
                        placeholders(t).map_err(|e| err(format!("crossConnect.{which}: {e}")))?
                    {
                        if !CROSS_CONNECT_VARS.contains(&v.as_str()) {
                            return Err(err(format!(
                                "crossConnect.{which}: unknown variable {{{{{v}}}}} (known: {})",
                                CROSS_CONNECT_VARS.join(", ")
                            )));
                        }
                    }
                    let sample = CROSS_CONNECT_VARS
                        .iter()
                        .map(|v| (*v, "1".to_string()))
                        .collect();
                    let r = render(t, &sample)
                        .map_err(|e| err(format!("crossConnect.{which}: {e}")))?;
                    well_formed(&r).map_err(|e| {
                        err(format!("crossConnect.{which}: not well-formed XML: {e}"))
                    })?;
                }
                Some(CrossConnect {
                    config: x.config,
                    remove: x.remove,
                })
            }
        };
        let settle = match spec.commit.as_ref().and_then(|c| c.settle.as_deref()) {
            None => std::time::Duration::ZERO,
            Some(t) => {
                let d = humantime::parse_duration(t)
                    .map_err(|e| err(format!("commit.settle {t:?}: {e}")))?;
                if d > std::time::Duration::from_secs(10) {
                    return Err(err(format!("commit.settle {t}: at most 10s")));
                }
                d
            }
        };
        if mechanisms.is_empty() {
            return Err(err(
                "spec.mechanisms: a profile needs at least one mechanism".into(),
            ));
        }
        Ok(Profile {
            name,
            description: spec.description,
            yang: spec.yang,
            confirm_timeout: spec.commit.as_ref().and_then(|c| c.confirm_timeout),
            settle,
            inventory: spec.inventory,
            cross_connect,
            mechanisms,
        })
    }

    /// What the device offers, with the profile's ranges, for the endpoints it registers.
    pub fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities {
            kernel: None,
            memif: None,
            vxlan: None,
            gre: None,
            mpls: None,
            vlan: None,
            sriov_vf: None,
        };
        for (k, t) in &self.mechanisms {
            match k {
                MechanismKind::Vxlan => {
                    let mut v = VxlanCap::default();
                    if let Some(r) = t.range {
                        v.vni_range = r;
                    }
                    c.vxlan = Some(v);
                }
                MechanismKind::Gre => {
                    let mut g = GreCap::default();
                    if let Some(r) = t.range {
                        g.key_range = r;
                    }
                    c.gre = Some(g);
                }
                MechanismKind::Mpls => {
                    let mut m = MplsCap::default();
                    if let Some(r) = t.range {
                        m.label_range = r;
                    }
                    c.mpls = Some(m);
                }
                MechanismKind::Vlan => {
                    let mut v = VlanCap::default();
                    if let Some(r) = t.range {
                        v.id_range = r;
                    }
                    c.vlan = Some(v);
                }
                _ => {}
            }
        }
        c
    }

    /// The device's config for `c` and how to undo it, or why the profile cannot express it.
    pub fn render_for(&self, c: &Connection) -> Result<(String, String), ProfileError> {
        self.render_as(c, false)
    }

    /// The same for a connection whose *client* is the device (it passes traffic on along a
    /// chain): the tunnel seen from the client's side.
    pub fn render_for_client(&self, c: &Connection) -> Result<(String, String), ProfileError> {
        self.render_as(c, true)
    }

    fn render_as(
        &self,
        c: &Connection,
        client_side: bool,
    ) -> Result<(String, String), ProfileError> {
        let err = |reason: String| ProfileError {
            file: self.name.clone(),
            reason: format!("connection {}: {reason}", c.id),
        };
        let m = c
            .hops
            .last()
            .map(|h| &h.mechanism)
            .ok_or_else(|| err("no mechanism".into()))?;
        let t = self
            .mechanisms
            .get(&m.kind())
            .ok_or_else(|| err(format!("the profile has no {} template", m.kind())))?;
        let vars = if client_side {
            client_vars(c, m)
        } else {
            connection_vars(c, m)
        };
        Ok((
            render(&t.config, &vars).map_err(err)?,
            render(&t.remove, &vars).map_err(err)?,
        ))
    }
}

/// Meshwire's entries in a get-config reply (`data`, the inner XML of `<data>`): (key, connection
/// id) for each `entry` whose `owner` leaf reads `meshwire:<id>` (anything after a space is free
/// text). Entries of others are not returned.
pub fn owned_entries(inv: &Inventory, data: &str) -> Result<Vec<(String, String)>, String> {
    let doc = format!("<data>{data}</data>");
    let doc = roxmltree::Document::parse(&doc).map_err(|e| format!("get-config reply: {e}"))?;
    let mut out = Vec::new();
    for e in doc
        .descendants()
        .filter(|n| n.has_tag_name(inv.entry.as_str()))
    {
        let leaf = |name: &str| {
            e.children()
                .find(|c| c.has_tag_name(name))
                .and_then(|c| c.text())
                .map(str::trim)
        };
        let (Some(key), Some(owner)) = (leaf(&inv.key), leaf(&inv.owner)) else {
            continue;
        };
        if let Some(id) = owner.strip_prefix("meshwire:") {
            let id = id.split_whitespace().next().unwrap_or_default();
            if !id.is_empty() {
                out.push((key.to_string(), id.to_string()));
            }
        }
    }
    Ok(out)
}

/// The tunnel's name on the device for connection `id` (`mw` + 8 hex digits).
pub fn tunnel_name(id: &str) -> String {
    let short: String = id
        .chars()
        .filter(|ch| ch.is_ascii_hexdigit())
        .take(8)
        .collect();
    format!("mw{short}")
}

/// The template variables of connection `c` as the device sees it when it is the client.
pub fn client_vars(c: &Connection, m: &Mechanism) -> BTreeMap<&'static str, String> {
    let mut v = connection_vars(c, m);
    let first = |a: &[ipnet::IpNet]| a.first().map(|x| x.to_string()).unwrap_or_default();
    v.insert("address", first(&c.ip_context.src_ip_addrs));
    v.insert(
        "peer_address",
        c.ip_context
            .dst_ip_addrs
            .first()
            .map(|a| a.addr().to_string())
            .unwrap_or_default(),
    );
    let (remote, local) = (v.get("local").cloned(), v.get("remote").cloned());
    if let (Some(r), Some(l)) = (remote, local) {
        v.insert("remote", r);
        v.insert("local", l);
    }
    if let (Some(o), Some(i)) = (v.get("label_in").cloned(), v.get("label_out").cloned()) {
        v.insert("label_out", o);
        v.insert("label_in", i);
    }
    v
}

/// The template variables of connection `c` as the device (the endpoint side) sees it.
pub fn connection_vars(c: &Connection, m: &Mechanism) -> BTreeMap<&'static str, String> {
    let mut v: BTreeMap<&'static str, String> = BTreeMap::new();
    v.insert("connection", c.id.clone());
    v.insert("name", tunnel_name(&c.id));
    v.insert(
        "address",
        c.ip_context
            .dst_ip_addrs
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    v.insert(
        "peer_address",
        c.ip_context
            .src_ip_addrs
            .first()
            .map(|a| a.addr().to_string())
            .unwrap_or_default(),
    );
    v.insert("mtu", c.mtu.to_string());
    match m {
        Mechanism::Vxlan {
            vni,
            src_ip,
            dst_ip,
            port,
        } => {
            v.insert("vni", vni.to_string());
            v.insert("remote", src_ip.to_string());
            v.insert("local", dst_ip.to_string());
            v.insert("port", port.to_string());
        }
        Mechanism::Gre {
            key,
            src_ip,
            dst_ip,
        } => {
            v.insert("key", key.to_string());
            v.insert("remote", src_ip.to_string());
            v.insert("local", dst_ip.to_string());
        }
        Mechanism::Mpls {
            label_out,
            label_in,
        } => {
            v.insert("label_out", label_out.to_string());
            v.insert("label_in", label_in.to_string());
        }
        Mechanism::Vlan { id } => {
            v.insert("vlan", id.to_string());
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests;
