//! Network services (NSM `NetworkService`): a name, a payload and the `matches` that route
//! clients to endpoints by labels, which is how policy-driven service chaining is expressed.

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkService {
    pub name: String,
    #[serde(default)]
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
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
