//! Meshwire's domain: plain data with serde and validation, and no I/O, clocks or async.
//!
//! The names follow Network Service Mesh (`networkservicemesh/api`): a [`NetworkService`] is offered
//! by [`NetworkServiceEndpoint`]s and requested by clients; a [`Connection`] carries the
//! `network_service`, the `network_service_endpoint_name`, the negotiated [`Mechanism`]s and the
//! [`IpContext`]. Meshwire's own kinds ([`Node`], [`Link`], [`Device`]) describe the topology the
//! controller computes paths over.
//!
//! [`manifest`] reads YAML or JSON documents exactly as upstream NSM writes its custom resources
//! (`networkservicemesh.io/v1`, snake_case spec fields) plus Meshwire's `meshwire.io/v1` kinds, and
//! every error names the file, the document, the object, the field and the rule broken.

pub mod connection;
pub mod document;
pub mod endpoint;
pub mod federation;
pub mod labels;
pub mod manifest;
pub mod mechanism;
pub mod netns_ref;
pub mod nsurl;
pub mod secret;
pub mod service;
pub mod sriov;
pub mod topology;
pub mod validate;

pub use connection::{
    ChainLink, ClientRef, Connection, ConnectionRequest, ConnectionState, DnsConfig, DnsContext,
    Hop, IpContext, PathSegment, Placement, Route, StateError, Vl3Leg, Vl3Member, Vl3Role,
};
pub use endpoint::{ChainNext, EndpointLocation, NetworkServiceEndpoint};
pub use labels::Labels;
pub use manifest::{Manifest, ManifestError, Object, ObjectKey, ObjectKind};
pub use mechanism::{Capabilities, Mechanism, MechanismKind, Range};
pub use service::{Destination, Match, NetworkService, Payload, Vl3};
pub use topology::{Device, ForwarderKind, Link, LinkEnd, Node, Topology};
pub use validate::Invalid;
