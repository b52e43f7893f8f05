//! The controller's errors. Each names the object and, where there is one, the peer.

use crate::driver::DriverError;
use crate::pool::PoolError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("unknown network service {service:?}: apply a NetworkService of that name first")]
    UnknownService { service: String },
    #[error("unknown connection {id:?}")]
    UnknownConnection { id: String },
    #[error("{key} not found")]
    NotFound { key: String },
    #[error(
        "client node {node:?} is not in the topology: apply a meshwire.io/v1 Node named {node:?}"
    )]
    UnknownNode { node: String },
    #[error("no endpoint offers network service {service:?}{detail}")]
    NoEndpoint { service: String, detail: String },
    #[error("no endpoint of network service {service:?} matches client labels {labels}")]
    NoMatchingEndpoint { service: String, labels: String },
    #[error(
        "no capacity: all {count} endpoint(s) of network service {service:?} that match are full"
    )]
    NoCapacity { service: String, count: usize },
    #[error("no path for network service {service:?}: {detail}")]
    NoPath { service: String, detail: String },
    #[error("{service:?}: {source}")]
    PoolExhausted {
        service: String,
        #[source]
        source: PoolError,
    },
    #[error("no capable endpoint for network service {service:?}: {detail}")]
    NoCapableEndpoint { service: String, detail: String },
    #[error("{object} is still used by {count} connection(s) (first: {first}); close them first")]
    InUse {
        object: String,
        count: usize,
        first: String,
    },
    #[error("{key} already exists; PUT it to replace it")]
    AlreadyExists { key: String },
    #[error("{key} has changed: it is at version {actual}, the request expected {expected}; read it again")]
    PreconditionFailed {
        key: String,
        expected: String,
        actual: String,
    },
    /// A request or object breaks a rule of the one validator (`meshwire_models::validate`).
    #[error("invalid {what}: {field}: {rule}")]
    Invalid {
        /// `connection request`, or the object's `Kind/name`.
        what: String,
        field: String,
        rule: String,
    },
    /// The caller may not make this change (its role, or the object it is bound to).
    #[error("{0}")]
    Forbidden(String),
    /// A request with an SR-IOV token that cannot be served: the token is not the node's, not
    /// allocated or in use (`exhausted == false`), or its pool has no free usable VF.
    #[error("SR-IOV on node {node}: {detail}")]
    Sriov {
        node: String,
        detail: String,
        exhausted: bool,
    },
    /// A service chain would pass a connection through the same endpoint twice.
    #[error("service chain {chain} loops back to endpoint {endpoint:?}: refused (an endpoint may appear once in a chain; check the onward services and labels of its elements)")]
    ChainCycle { chain: String, endpoint: String },
    /// A chain element that cannot pass connections on (not on a device, a chain too long).
    #[error("service chain at endpoint {endpoint:?}: {detail}")]
    Chain { endpoint: String, detail: String },
    #[error("data plane refused connection {connection}: {source}")]
    Driver {
        connection: String,
        #[source]
        source: Box<DriverError>,
    },
    #[error("the request was cancelled inside the controller; it was undone, retry it")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

impl ControllerError {
    /// A short stable code for APIs and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            ControllerError::UnknownService { .. } => "unknown-service",
            ControllerError::UnknownConnection { .. } => "unknown-connection",
            ControllerError::NotFound { .. } => "not-found",
            ControllerError::UnknownNode { .. } => "unknown-node",
            ControllerError::NoEndpoint { .. } => "no-endpoint",
            ControllerError::NoMatchingEndpoint { .. } => "no-matching-endpoint",
            ControllerError::NoCapacity { .. } => "no-capacity",
            ControllerError::NoPath { .. } => "no-path",
            ControllerError::PoolExhausted { .. } => "pool-exhausted",
            ControllerError::NoCapableEndpoint { .. } => "no-capable-endpoint",
            ControllerError::InUse { .. } => "in-use",
            ControllerError::AlreadyExists { .. } => "already-exists",
            ControllerError::PreconditionFailed { .. } => "precondition-failed",
            ControllerError::Invalid { .. } => "invalid",
            ControllerError::Forbidden(_) => "forbidden",
            ControllerError::Sriov {
                exhausted: true, ..
            } => "sriov-exhausted",
            ControllerError::Sriov { .. } => "sriov-token",
            ControllerError::ChainCycle { .. } => "chain-cycle",
            ControllerError::Chain { .. } => "chain",
            ControllerError::Driver { .. } => "driver",
            ControllerError::Cancelled => "cancelled",
            ControllerError::Store(_) => "store",
            ControllerError::Corrupt { .. } => "corrupt-record",
        }
    }
}
