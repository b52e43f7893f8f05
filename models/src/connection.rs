//! Connection requests and connections (NSM `Connection`), with the lifecycle state machine.
//!
//! ```text
//!  requested ──▶ programming ──▶ up ◀──▶ healing
//!      │              │           │         │
//!      └──────────────┴───────────┴─────────┴──▶ closed | failed
//! ```
//! `healing` goes back to `up` once the connection is rewired (in place or onto another
//! endpoint); `closed` and `failed` are final.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::mechanism::{Mechanism, MechanismKind};
use crate::service::Payload;

/// Who asks: a workload on a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ClientRef {
    /// The node the client runs on.
    pub node: String,
    /// The client workload's name (its netns in labs). Defaults to the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ClientRef {
    pub fn workload(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.node)
    }
}

/// A request for a network service.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRequest {
    pub network_service: String,
    pub client: ClientRef,
    /// The client's labels, matched against the service's `source_selector`s.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Mechanism preferences, best first. Empty means "whatever works": local first, then
    /// VXLAN, GRE, MPLS, VLAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mechanisms: Vec<MechanismKind>,
    /// Interface name in the client (default `nsm-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Prefixes already in use at the client; no address is allocated from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub excluded_prefixes: Vec<IpNet>,
    /// An SR-IOV device plugin token the kubelet allocated to the client (upstream's `tokenID`
    /// mechanism parameter): the client gets a free VF of the token's pool on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_token: Option<String>,
}

/// Where the two ends of a connection live on the data plane: network namespaces, when hosts and
/// workloads are emulated by them (labs), `None` for the driver's own namespace. Resolved by the
/// controller from the topology and the endpoint's location, so drivers need nothing else.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Placement {
    /// The client workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_netns: Option<String>,
    /// The namespace of the client's node, where its underlay (tunnel) addresses live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_node_netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_node_netns: Option<String>,
    /// Ethernet services: the bridge in the endpoint that clients join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The endpoint is this external device: its eNSM configures the endpoint half, and node
    /// data planes wire only the client half (the tunnel from the client's node to the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_device: Option<String>,
    /// The client is this external device (an appliance passing traffic on along a service
    /// chain): its eNSM configures the client half, node data planes only the endpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_device: Option<String>,
}

/// A vertex a connection passes through.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSegment {
    /// Node or device name.
    pub name: String,
    /// The link taken to reach the next segment (none on the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One programmed hop and the mechanism on it. Tunnels (VXLAN, GRE) are one hop from the client's
/// node to the endpoint's, riding the underlay path; MPLS and VLAN have one hop per link.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub mechanism: Mechanism,
}

/// A route given to one side of a connection.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub prefix: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub next_hop: Option<IpAddr>,
}

/// Addresses and routes of both sides (NSM `IPContext`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpContext {
    /// The client's addresses (with prefix length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub src_ip_addrs: Vec<IpNet>,
    /// The endpoint's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub dst_ip_addrs: Vec<IpNet>,
    /// Routes installed in the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_routes: Vec<Route>,
    /// Routes installed in the endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub excluded_prefixes: Vec<IpNet>,
}

/// Lifecycle of a connection.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    #[default]
    Requested,
    Programming,
    Up,
    Healing,
    Closed,
    Failed,
}

impl ConnectionState {
    pub fn is_final(self) -> bool {
        matches!(self, ConnectionState::Closed | ConnectionState::Failed)
    }

    /// The transitions the state machine allows.
    pub fn can_become(self, next: ConnectionState) -> bool {
        use ConnectionState::*;
        match (self, next) {
            (Requested, Programming) => true,
            (Programming, Up) => true,
            (Up, Healing) | (Healing, Up) => true,
            (Up, Programming) => true,
            (s, Closed | Failed) => !s.is_final(),
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Requested => "requested",
            ConnectionState::Programming => "programming",
            ConnectionState::Up => "up",
            ConnectionState::Healing => "healing",
            ConnectionState::Closed => "closed",
            ConnectionState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConnectionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "requested" => ConnectionState::Requested,
            "programming" => ConnectionState::Programming,
            "up" => ConnectionState::Up,
            "healing" => ConnectionState::Healing,
            "closed" => ConnectionState::Closed,
            "failed" => ConnectionState::Failed,
            other => return Err(format!("unknown connection state {other:?}")),
        })
    }
}

/// The endpoint-side interface name of connection `id` (unique per endpoint, at most 12 bytes).
pub fn endpoint_interface_for(id: &str) -> String {
    format!(
        "nse-{}",
        id.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect::<String>()
    )
}

/// A refused state transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection {id}: cannot go from {from} to {to}")]
pub struct StateError {
    pub id: String,
    pub from: ConnectionState,
    pub to: ConnectionState,
}

/// A connection between a client and an endpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Connection {
    pub id: String,
    pub network_service: String,
    pub network_service_endpoint_name: String,
    pub payload: Payload,
    pub client: ClientRef,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Interface name in the client.
    pub interface: String,
    /// The client's mechanism preferences, kept for healing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<MechanismKind>,
    pub path: Vec<PathSegment>,
    pub hops: Vec<Hop>,
    #[serde(default)]
    pub placement: Placement,
    pub ip_context: IpContext,
    /// The prefix the addresses were taken from (to give them back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub address_pool: Option<IpNet>,
    /// Usable MTU inside the connection (path MTU less encapsulation).
    pub mtu: u32,
    pub state: ConnectionState,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Bumped on every rewiring (heal or repair).
    #[serde(default)]
    pub generation: u64,
    /// Why the connection last failed or healed, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Service chains: the legs this one is joined to.
    #[serde(default, skip_serializing_if = "ChainLink::is_empty")]
    pub chain: ChainLink,
    /// The request that made it, when it carried an `Idempotency-Key`: the key with a digest of
    /// the caller's credential. Stored with the connection, so a retry with the same key gets
    /// this connection again from whichever controller leads then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// A leg of a vL3 network (see [`Vl3Leg`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vl3: Option<Vl3Leg>,
    /// The resolvers the client is given (NSM `ConnectionContext.dns_context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_context: Option<DnsContext>,
}

/// NSM `DNSContext`: the resolvers for a connection's client.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DnsContext {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<DnsConfig>,
}

/// NSM `DNSConfig`: resolvers and the domains they answer for (all when empty).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_server_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

/// What a connection is in a vL3 network. A *member* joins a client to one virtual router
/// (the endpoint); a *peer* joins two routers (client side: the router that asked). Every
/// router holds the gateway address on its members' legs, forwards, and answers DNS for
/// the zone: its own members' names and, through its peers, every other member's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vl3Leg {
    pub role: Vl3Role,
    /// The DNS zone (no trailing dot).
    pub zone: String,
    /// The members' gateway and resolver.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub gateway: IpAddr,
    /// A member's name in the zone (none when its name is no DNS label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A peer: the members behind its client-side router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_members: Vec<Vl3Member>,
    /// A peer: the members behind its endpoint-side router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_members: Vec<Vl3Member>,
    /// A peer leg to a router of another domain (its name): only the client side is ours to
    /// wire; that domain's controller wires the far side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

impl Vl3Leg {
    /// Whether this is a leg between two routers (of one domain or of two).
    pub fn is_peer(&self) -> bool {
        self.role == Vl3Role::Peer
    }
}

impl Connection {
    /// The other domain when this is a vL3 peer leg across domains.
    pub fn remote_domain(&self) -> Option<&str> {
        self.vl3.as_ref().and_then(|v| v.remote.as_deref())
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vl3Role {
    Member,
    Peer,
}

/// A member as routers know it: its address and (if it has one) its name in the zone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vl3Member {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub addr: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The link between the legs of a service chain, persisted with each leg. A leg whose
/// `previous` is gone is an orphan, and is closed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChainLink {
    /// The connection this leg continues (its client is that connection's endpoint device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The connection that continues this one, which the endpoint device cross-connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onward: Option<String>,
}

impl ChainLink {
    pub fn is_empty(&self) -> bool {
        self.previous.is_none() && self.onward.is_none()
    }
}

impl Connection {
    /// The SR-IOV token this connection's VF was claimed with, if it has one.
    pub fn sriov_token(&self) -> Option<&str> {
        self.hops.iter().find_map(|h| match &h.mechanism {
            Mechanism::SriovVf { token, .. } if !token.is_empty() => Some(token.as_str()),
            _ => None,
        })
    }

    /// The interface name on the endpoint's side: `nse-` and the first 8 characters of the id.
    pub fn endpoint_interface(&self) -> String {
        endpoint_interface_for(&self.id)
    }

    /// The client-side mechanism (the first hop's).
    pub fn mechanism(&self) -> Option<&Mechanism> {
        self.hops.first().map(|h| &h.mechanism)
    }

    /// Moves to `next` if the state machine allows it.
    pub fn transition(&mut self, next: ConnectionState, now_ms: u64) -> Result<(), StateError> {
        if !self.state.can_become(next) {
            return Err(StateError {
                id: self.id.clone(),
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        self.updated_at_ms = now_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionState::*;

    #[test]
    fn final_states_are_final() {
        for s in [Requested, Programming, Up, Healing, Closed, Failed] {
            assert!(!Closed.can_become(s));
            assert!(!Failed.can_become(s));
        }
    }

    #[test]
    fn healing_returns_to_up_and_cannot_skip_programming() {
        assert!(Up.can_become(Healing));
        assert!(Healing.can_become(Up));
        assert!(!Requested.can_become(Up));
        assert!(Programming.can_become(Failed));
    }
}
