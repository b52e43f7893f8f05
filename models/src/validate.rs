//! One validator for every way in: names that become paths, interfaces or command arguments,
//! and bounds on everything a caller controls the size of.
//!
//! Whatever carries an object or a request into Meshwire (a manifest file, a REST body, a gRPC
//! registration, a custom resource, a lab file, a device file) ends in [`Object::validate`] or
//! [`ConnectionRequest::validate`], so a rule holds whichever door was used:
//! - a network namespace name is one path component: 1 to 255 bytes, no `/`, no NUL, no control
//!   character, not `.` or `..`; it is only ever resolved under the namespace directory;
//! - an interface name follows the kernel's `dev_valid_name`: 1 to 15 bytes, no `/`, `:` or
//!   whitespace, not `.` or `..`;
//! - object names are 1 to 253 letters, digits, `-`, `_` and `.`, starting with a letter or digit;
//! - label sets, prefix lists and mechanism lists have a maximum size ([`limits`]), so the cost
//!   of planning a request is bounded by these numbers, not by the body size.

use crate::connection::ConnectionRequest;
use crate::endpoint::EndpointLocation;
use crate::labels::Labels;
use crate::manifest::Object;

/// The bounds every entry point enforces.
pub mod limits {
    /// Labels in one set (a request's, an endpoint's per service, a selector).
    pub const LABELS: usize = 64;
    /// Bytes of a label key (Kubernetes: a 253-byte prefix, `/`, a 63-byte name).
    pub const LABEL_KEY: usize = 317;
    /// Bytes of a label value.
    pub const LABEL_VALUE: usize = 1024;
    /// Prefixes a client may exclude from its addresses.
    pub const EXCLUDED_PREFIXES: usize = 256;
    /// Mechanism preferences of one request.
    pub const MECHANISMS: usize = 16;
    /// Services one endpoint offers.
    pub const SERVICES: usize = 64;
    /// Routes one endpoint hands its clients.
    pub const ROUTES: usize = 256;
    /// `matches` of one service, and destinations of one match.
    pub const MATCHES: usize = 64;
    /// Bytes of a URL (an endpoint's, a device's eNSM, an OVSDB remote).
    pub const URL: usize = 2048;
}

/// A field that breaks a rule: the dotted path of the field and the rule, for a 4xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Invalid {
    pub field: String,
    pub rule: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same rule under `prefix` (`spec.` + `location.netns`).
    pub fn under(self, prefix: &str) -> Invalid {
        Invalid {
            field: format!("{prefix}{}", self.field),
            rule: self.rule,
        }
    }
}

fn at(field: &str) -> impl Fn(String) -> Invalid + '_ {
    move |rule| Invalid::new(field, rule)
}

/// Object names: 1 to 253 characters of letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit (Kubernetes names fit).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{:?} must be 1 to 253 characters long",
            shorten(name)
        ));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} contains {c:?}: use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// A vL3's delegations to other domains and its own part: inside the prefix, apart from each
/// other, never the whole prefix, named by DNS names.
fn check_vl3_parts(v: &crate::service::Vl3) -> Result<(), Invalid> {
    check_count(
        "spec.vl3.delegations",
        v.delegations.len(),
        limits::SERVICES,
    )?;
    let mut seen: Vec<(&str, ipnet::IpNet)> = Vec::new();
    for (d, p) in &v.delegations {
        let field = format!("spec.vl3.delegations.{d}");
        crate::service::check_dns_name(d).map_err(|r| Invalid::new(&field, r))?;
        if !v.prefix.contains(p) || p.prefix_len() <= v.prefix.prefix_len() || *p != p.trunc() {
            return Err(Invalid::new(
                &field,
                format!(
                    "{p} is not a network prefix inside {} (and smaller than it)",
                    v.prefix
                ),
            ));
        }
        if p.contains(&v.gateway()) {
            return Err(Invalid::new(
                &field,
                format!(
                    "{p} holds the gateway {}; delegate a part without it",
                    v.gateway()
                ),
            ));
        }
        if let Some((o, _)) = seen.iter().find(|(_, q)| q.contains(p) || p.contains(q)) {
            return Err(Invalid::new(
                &field,
                format!("{p} overlaps the part of {o}"),
            ));
        }
        seen.push((d, *p));
    }
    if let Some(m) = v.members {
        if !v.prefix.contains(&m) || m != m.trunc() {
            return Err(Invalid::new(
                "spec.vl3.members",
                format!("{m} is not a network prefix inside {}", v.prefix),
            ));
        }
    }
    Ok(())
}

/// A service's name: an object name, or upstream's `name@domain` for a service whose home is
/// another domain (the domain a DNS name).
pub fn check_service_name(name: &str) -> Result<(), String> {
    let (svc, domain) = crate::service::split_domain(name);
    check_name(svc)?;
    if let Some(d) = domain {
        crate::service::check_dns_name(d).map_err(|e| format!("{name:?}: domain {e}"))?;
    }
    Ok(())
}

/// An object's name: a service's may name another domain (`name@domain`), others may not.
pub fn check_object_name(kind: crate::manifest::ObjectKind, name: &str) -> Result<(), String> {
    match kind {
        crate::manifest::ObjectKind::NetworkService => check_service_name(name),
        _ => check_name(name),
    }
}

/// Linux interface names (the kernel's `dev_valid_name`): 1 to 15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {:?} must be 1 to 15 bytes long",
            shorten(name)
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        || name == "."
        || name == ".."
    {
        return Err(format!(
            "interface name {name:?} may not contain '/', ':', spaces or control characters, nor be '.' or '..'"
        ));
    }
    Ok(())
}

/// Network namespace names: one path component under the namespace directory (`/run/netns`):
/// 1 to 255 bytes, no `/`, no NUL or other control character, not `.` or `..`.
pub fn check_netns(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "namespace name {:?} must be 1 to 255 bytes long",
            shorten(name)
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("namespace name {name:?} is not a name"));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || c.is_control()) {
        return Err(format!(
            "namespace name {name:?} contains {c:?}: a namespace is one path component (no '/', no control characters)"
        ));
    }
    Ok(())
}

/// A label set within [`limits`]; keys are non-empty.
pub fn check_labels(field: &str, labels: &Labels) -> Result<(), Invalid> {
    if labels.len() > limits::LABELS {
        return Err(Invalid::new(
            field,
            format!(
                "{} labels: at most {} are accepted",
                labels.len(),
                limits::LABELS
            ),
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > limits::LABEL_KEY || k.chars().any(char::is_control) {
            return Err(Invalid::new(
                format!("{field}.{}", shorten(k)),
                format!(
                    "a label key is 1 to {} bytes without control characters",
                    limits::LABEL_KEY
                ),
            ));
        }
        if v.len() > limits::LABEL_VALUE {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                format!("a label value is at most {} bytes", limits::LABEL_VALUE),
            ));
        }
    }
    Ok(())
}

fn check_count(field: &str, n: usize, max: usize) -> Result<(), Invalid> {
    if n > max {
        return Err(Invalid::new(
            field,
            format!("{n} entries: at most {max} are accepted"),
        ));
    }
    Ok(())
}

fn check_url(field: &str, url: &str) -> Result<(), Invalid> {
    if url.len() > limits::URL || url.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!(
                "a URL is at most {} bytes without control characters",
                limits::URL
            ),
        ));
    }
    Ok(())
}

/// The first 64 characters of a name, for messages about names that are too long.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 64 {
        return s.to_string();
    }
    let mut out: String = s.chars().take(64).collect();
    out.push('…');
    out
}

/// OVSDB remotes Meshwire connects to: `unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT`.
pub fn check_ovsdb_remote(remote: &str) -> Result<(), String> {
    let ok = remote
        .strip_prefix("unix:")
        .map(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
        .or_else(|| {
            remote
                .strip_prefix("tcp:")
                .or_else(|| remote.strip_prefix("ssl:"))
                .map(|hp| {
                    hp.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                })
        })
        .unwrap_or(false);
    if ok && !remote.chars().any(char::is_control) && remote.len() <= limits::URL {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an OVSDB remote (unix:/ABSOLUTE/PATH, tcp:HOST:PORT or ssl:HOST:PORT)",
            shorten(remote)
        ))
    }
}

impl ConnectionRequest {
    /// Checks every field a caller controls: names that become namespaces, interfaces and
    /// store keys, and the sizes of labels, exclusions and preferences.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_service_name(&self.network_service).map_err(at("network_service"))?;
        check_name(&self.client.node).map_err(at("client.node"))?;
        if let Some(name) = &self.client.name {
            check_netns(name).map_err(at("client.name"))?;
        }
        if let Some(i) = &self.interface {
            check_ifname(i).map_err(at("interface"))?;
        }
        check_labels("labels", &self.labels)?;
        check_count(
            "excluded_prefixes",
            self.excluded_prefixes.len(),
            limits::EXCLUDED_PREFIXES,
        )?;
        check_count("mechanisms", self.mechanisms.len(), limits::MECHANISMS)?;
        if let Some(t) = &self.sriov_token {
            crate::sriov::check_token(t).map_err(at("sriov_token"))?;
        }
        Ok(())
    }
}

impl Object {
    /// Checks every field of the object against the rules above; the field is named as in a
    /// manifest (`metadata.name`, `spec.location.netns`).
    pub fn validate(&self) -> Result<(), Invalid> {
        let name = match self {
            Object::NetworkService(o) => &o.name,
            Object::NetworkServiceEndpoint(o) => &o.name,
            Object::Node(o) => &o.name,
            Object::Link(o) => &o.name,
            Object::Device(o) => &o.name,
        };
        check_object_name(self.key().kind, name).map_err(at("metadata.name"))?;
        match self {
            Object::NetworkService(s) => {
                if let Some(v) = &s.vl3 {
                    if s.payload != crate::service::Payload::Ip {
                        return Err(Invalid::new(
                            "spec.payload",
                            "a vL3 service carries IP (payload IP)",
                        ));
                    }
                    match v.prefix {
                        ipnet::IpNet::V4(p)
                            if (8..=29).contains(&p.prefix_len()) && p == p.trunc() => {}
                        _ => {
                            return Err(Invalid::new(
                                "spec.vl3.prefix",
                                format!(
                                    "{} is not an IPv4 network prefix of length 8 to 29, without host bits (the kernel data plane's vL3 is IPv4)",
                                    v.prefix
                                ),
                            ))
                        }
                    }
                    let field = if v.domain.is_some() {
                        "spec.vl3.domain"
                    } else {
                        "metadata.name"
                    };
                    crate::service::check_dns_name(v.zone(&s.name)).map_err(|r| {
                        Invalid::new(
                            field,
                            format!("{r} (the vL3's DNS zone: give spec.vl3.domain)"),
                        )
                    })?;
                    check_vl3_parts(v)?;
                }
                check_count("spec.matches", s.matches.len(), limits::MATCHES)?;
                for (i, m) in s.matches.iter().enumerate() {
                    check_labels(
                        &format!("spec.matches[{i}].source_selector"),
                        &m.source_selector,
                    )?;
                    check_labels(&format!("spec.matches[{i}].metadata.labels"), &m.labels)?;
                    check_count(
                        &format!("spec.matches[{i}].routes"),
                        m.routes.len(),
                        limits::MATCHES,
                    )?;
                    for (j, d) in m.routes.iter().enumerate() {
                        check_labels(
                            &format!("spec.matches[{i}].routes[{j}].destination_selector"),
                            &d.destination_selector,
                        )?;
                    }
                }
            }
            Object::NetworkServiceEndpoint(e) => {
                if e.network_service_names.is_empty() {
                    return Err(Invalid::new(
                        "spec.network_service_names",
                        "required: the services this endpoint offers",
                    ));
                }
                check_count(
                    "spec.network_service_names",
                    e.network_service_names.len(),
                    limits::SERVICES,
                )?;
                for (i, s) in e.network_service_names.iter().enumerate() {
                    check_service_name(s)
                        .map_err(|r| Invalid::new(format!("spec.network_service_names[{i}]"), r))?;
                }
                check_count(
                    "spec.network_service_labels",
                    e.network_service_labels.len(),
                    limits::SERVICES,
                )?;
                for (s, l) in &e.network_service_labels {
                    if !e.network_service_names.contains(s) {
                        return Err(Invalid::new(
                            format!("spec.network_service_labels.{}", shorten(s)),
                            format!("{} is not in network_service_names", shorten(s)),
                        ));
                    }
                    check_labels(&format!("spec.network_service_labels.{s}.labels"), l)?;
                }
                if let Some(u) = &e.url {
                    check_url("spec.url", u)?;
                }
                if let Some(v) = e.mechanisms.sriov_vf.as_ref().and_then(|c| c.vlan) {
                    if !(1..=4094).contains(&v) {
                        return Err(Invalid::new(
                            "spec.mechanisms.sriovVf.vlan",
                            format!("{v} is not a VLAN id (1 to 4094)"),
                        ));
                    }
                }
                match &e.location {
                    EndpointLocation::Node { node, netns } => {
                        check_name(node).map_err(at("spec.location.node"))?;
                        if let Some(ns) = netns {
                            check_netns(ns).map_err(at("spec.location.netns"))?;
                        }
                    }
                    EndpointLocation::Device { device } => {
                        check_name(device).map_err(at("spec.location.device"))?;
                    }
                }
                e.mechanisms
                    .validate()
                    .map_err(|(f, r)| Invalid::new(format!("spec.mechanisms.{f}"), r))?;
                if e.capacity == Some(0) {
                    return Err(Invalid::new(
                        "spec.capacity",
                        "must be at least 1 (leave it out for unlimited)",
                    ));
                }
                if let Some(p) = e.ipam_prefix {
                    if p.prefix_len() + 1 > p.max_prefix_len() {
                        return Err(Invalid::new(
                            "spec.ipamPrefix",
                            "is too small to hold even one address pair",
                        ));
                    }
                }
                check_count("spec.routes", e.routes.len(), limits::ROUTES)?;
                if let Some(i) = &e.interface {
                    check_ifname(i).map_err(at("spec.interface"))?;
                }
                if let Some(b) = &e.bridge {
                    check_ifname(b).map_err(at("spec.bridge"))?;
                }
            }
            Object::Node(n) => {
                if let Some(ns) = &n.netns {
                    check_netns(ns).map_err(at("spec.netns"))?;
                }
                if let Some(db) = &n.ovsdb {
                    check_ovsdb_remote(db).map_err(at("spec.ovsdb"))?;
                }
                check_labels("metadata.labels", &n.labels)?;
            }
            Object::Link(l) => {
                for (i, end) in [&l.a, &l.b].into_iter().enumerate() {
                    check_name(&end.vertex)
                        .map_err(|r| Invalid::new(format!("spec.endpoints[{i}]"), r))?;
                    check_ifname(&end.interface)
                        .map_err(|r| Invalid::new(format!("spec.endpoints[{i}]"), r))?;
                }
                if l.a.vertex == l.b.vertex {
                    return Err(Invalid::new(
                        "spec.endpoints",
                        format!(
                            "both ends are on {}: a link joins two different nodes",
                            l.a.vertex
                        ),
                    ));
                }
                if !(68..=65535).contains(&l.mtu) {
                    return Err(Invalid::new(
                        "spec.mtu",
                        format!("{} is outside 68..65535", l.mtu),
                    ));
                }
                if l.cost == 0 {
                    return Err(Invalid::new("spec.cost", "must be at least 1"));
                }
            }
            Object::Device(d) => {
                check_name(&d.kind).map_err(at("spec.kind"))?;
                d.mechanisms
                    .validate()
                    .map_err(|(f, r)| Invalid::new(format!("spec.mechanisms.{f}"), r))?;
                if let Some(u) = &d.ensm {
                    check_url("spec.ensm", u)?;
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        return Err(Invalid::new(
                            "spec.ensm",
                            format!("{:?} is not an http:// or https:// URL", shorten(u)),
                        ));
                    }
                }
                check_labels("metadata.labels", &d.labels)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ClientRef;

    fn req(name: &str) -> ConnectionRequest {
        ConnectionRequest {
            network_service: "s".into(),
            client: ClientRef {
                node: "n1".into(),
                name: Some(name.into()),
            },
            labels: Labels::new(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        }
    }

    #[test]
    fn nb_namespace_names_are_one_path_component() {
        for bad in [
            "../../proc/1/ns/net",
            "../netns/other",
            "a/b",
            "..",
            ".",
            "",
            "a\0b",
            "x\n",
        ] {
            let e = req(bad).validate().unwrap_err();
            assert_eq!(e.field, "client.name", "{bad:?}");
        }
        assert!(req(&"a".repeat(256)).validate().is_err());
        for good in [
            "clab-vpn-gateway-client",
            "cni-1a2b",
            "a.b",
            &"a".repeat(255),
        ] {
            req(good).validate().unwrap();
        }
    }

    #[test]
    fn nb_interface_names_follow_the_kernel() {
        for bad in ["", "a/b", "a b", "a:b", "..", "0123456789abcdef", "x\t"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        for good in ["nsm-1", "eth0", "0123456789abcde", "é"] {
            check_ifname(good).unwrap();
        }
    }

    #[test]
    fn nb_sizes_are_bounded() {
        let mut r = req("w");
        r.labels = (0..65)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(r.validate().unwrap_err().field, "labels");
        let mut r = req("w");
        r.excluded_prefixes = vec!["10.0.0.0/8".parse().unwrap(); 257];
        assert_eq!(r.validate().unwrap_err().field, "excluded_prefixes");
        let mut r = req("w");
        r.labels = [("k".to_string(), "v".repeat(1025))].into();
        assert_eq!(r.validate().unwrap_err().field, "labels.k");
    }

    #[test]
    fn nb_ovsdb_remotes() {
        for good in [
            "unix:/run/db.sock",
            "tcp:10.0.0.1:6640",
            "ssl:ovs.example:6640",
        ] {
            check_ovsdb_remote(good).unwrap();
        }
        for bad in [
            "unix:db.sock",
            "unix:/a/../b",
            "tcp:host",
            "punix:/x",
            "http://x",
        ] {
            assert!(check_ovsdb_remote(bad).is_err(), "{bad}");
        }
    }
}
