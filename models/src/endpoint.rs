//! Network service endpoints (NSM `NetworkServiceEndpoint`), with Meshwire's additions:
//! where the endpoint lives, what mechanisms it accepts, its capacity and its address plan.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::mechanism::Capabilities;

/// Where an endpoint lives: on a node of the topology (a workload namespace there) or on an
/// external device exposed by an eNSM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointLocation {
    /// A workload on `node`; `netns` names its network namespace when it is not the node's own.
    Node {
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
    },
    /// An external appliance (a firewall, a router, a radio).
    Device { device: String },
}

impl EndpointLocation {
    /// The topology vertex the endpoint hangs off.
    pub fn vertex(&self) -> &str {
        match self {
            EndpointLocation::Node { node, .. } => node,
            EndpointLocation::Device { device } => device,
        }
    }
}

/// A network service endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkServiceEndpoint {
    pub name: String,
    /// The services offered (upstream `network_service_names`).
    pub network_service_names: Vec<String>,
    /// Labels per offered service (upstream `network_service_labels.<svc>.labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_service_labels: BTreeMap<String, Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Unix milliseconds after which the registration lapses unless refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub location: EndpointLocation,
    pub mechanisms: Capabilities,
    /// Maximum live connections; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Addresses for connections are taken from here (point-to-point /31 pairs for IP services,
    /// host addresses for Ethernet ones). `None` uses the controller's default prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_prefix: Option<IpNet>,
    /// Prefixes reachable through this endpoint; clients get a route to each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// Interface name inside the endpoint (default `nse-<n>` chosen by the data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Ethernet services: the bridge in the endpoint that clients join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// A service-chain element: each connection it accepts is passed on (see [`ChainNext`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ChainNext>,
}

/// The onward hop of a service-chain element (an appliance): for each connection the element
/// accepts, the controller requests `service` with `labels` for the element's device as the
/// client, and the element joins the two legs (its profile's cross-connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainNext {
    pub service: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl NetworkServiceEndpoint {
    pub fn offers(&self, service: &str) -> bool {
        self.network_service_names.iter().any(|s| s == service)
    }

    /// This endpoint's labels for `service` (empty when it has none).
    pub fn labels_for(&self, service: &str) -> Option<&Labels> {
        self.network_service_labels.get(service)
    }
}
