//! Network services (NSM `NetworkService`): a name, a payload and the `matches` that route
//! clients to endpoints by labels, which is how policy-driven service chaining is expressed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// What a service carries: IP packets or Ethernet frames (NSM `payload.IP` / `payload.ETHERNET`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Payload {
    #[default]
    #[serde(rename = "IP", alias = "ip", alias = "Ip")]
    Ip,
    #[serde(rename = "ETHERNET", alias = "ethernet", alias = "Ethernet")]
    Ethernet,
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Payload::Ip => "IP",
            Payload::Ethernet => "ETHERNET",
        })
    }
}

/// A network service. A document with no spec (as upstream ships some) gets payload IP and no
/// matches, so every endpoint offering the service is a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkService {
    pub name: String,
    #[serde(default)]
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    /// A virtual L3 network: the endpoints are virtual routers meshed with each other, and every
    /// client gets one address of `prefix` and reaches every other client by address and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vl3: Option<Vl3>,
}

/// A vL3 network service's address plan and DNS zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vl3 {
    /// Every member's address comes from here (one `/32`, unique across the whole vL3); its
    /// first host address is the gateway and resolver every router answers on.
    pub prefix: ipnet::IpNet,
    /// The DNS zone members are named in (`<workload>.<zone>`); default: the service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Parts of the prefix handed to other domains' members (`domain: prefix`), for a vL3
    /// shared across domains: this domain's members never take from them, and the domain
    /// named takes its members from its part only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegations: BTreeMap<String, ipnet::IpNet>,
    /// Set on a vL3 imported from its home domain (`service@domain`): the part of the prefix
    /// that home delegated to this domain, where this domain's members' addresses come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<ipnet::IpNet>,
}

impl Vl3 {
    /// The members' gateway and resolver: the prefix's first host address.
    pub fn gateway(&self) -> std::net::IpAddr {
        match self.prefix {
            ipnet::IpNet::V4(p) => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(p.network()) + 1))
            }
            ipnet::IpNet::V6(p) => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(p.network()) + 1))
            }
        }
    }

    /// Where this domain's members' addresses (and its routers' leg addresses) come from.
    pub fn member_prefix(&self) -> ipnet::IpNet {
        self.members.unwrap_or(self.prefix)
    }

    /// What this domain's members never take: the parts delegated to other domains.
    pub fn delegated(&self) -> Vec<ipnet::IpNet> {
        self.delegations.values().copied().collect()
    }

    /// The DNS zone (no trailing dot).
    pub fn zone<'a>(&'a self, service: &'a str) -> &'a str {
        self.domain
            .as_deref()
            .map(|d| d.trim_end_matches('.'))
            .unwrap_or(service)
    }
}

/// One rule of `matches`: clients whose labels contain `source_selector` go to the endpoints
/// selected by `routes`. With `fallthrough`, an empty candidate set moves on to the next rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub source_selector: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Destination>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallthrough: bool,
    /// Labels on the match itself (upstream `matches[].metadata.labels`), kept for display.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A destination of a match: endpoints whose labels for this service contain the selector.
/// Values may be Go templates over the client's labels (`"{{.nodeName}}"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub destination_selector: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Splits `service@domain` (upstream's name of a service in another domain) into its parts;
/// a plain name has no domain.
pub fn split_domain(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((s, d)) => (s, Some(d)),
        None => (name, None),
    }
}

/// Whether `name` is a DNS name we can serve: dot-separated labels of lowercase letters,
/// digits and `-` (not first or last), each 1 to 63 bytes, 253 bytes in all.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{name:?} is not a DNS name (1 to 253 bytes)"));
    }
    for label in n.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a DNS name: each label 1 to 63 lowercase letters, digits or '-' (not first or last)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(check_dns_name("db-replication").is_ok());
        assert!(check_dns_name("db1.db-replication.").is_ok());
        for bad in ["", "A", "a..b", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gateway_and_zone() {
        let v = Vl3 {
            delegations: Default::default(),
            members: None,
            prefix: "10.90.0.0/16".parse().unwrap(),
            domain: None,
        };
        assert_eq!(v.gateway().to_string(), "10.90.0.1");
        assert_eq!(v.zone("db"), "db");
    }
}
