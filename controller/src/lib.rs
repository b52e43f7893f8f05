//! Meshwire's controller: the brain, independent of any wire format.
//!
//! - [`state`]: the registry (services, endpoints with expiry), the topology, the live
//!   connections, the pools and per-endpoint load. Pure and synchronous.
//! - [`select`]: NSM `matches` semantics, then least-loaded, then round-robin.
//! - [`path`]: shortest paths by cost honouring link state, MTU and per-hop mechanism support;
//!   k-shortest alternatives for healing.
//! - [`negotiate`]: the mechanism and its parameters (VNI, GRE key, MPLS labels, VLAN id).
//! - [`pool`]: rotating number and address pools.
//! - [`driver`]: the southbound boundary: versioned desired sets in, reports and events out.
//! - [`desired`]: what the controller hands its driver (deltas and full sets, versioned).
//! - [`store`]: persistence (redb, etcd, memory) with revisions and watch.
//! - [`backoff`]: the one jittered exponential backoff (peers, requeued connections).
//! - `lifecycle`: the steps request, repair and heal share, each undone on a later failure.
//! - [`client`]: the REST client of the controller's API (for the CLI and remote eNSMs).
//! - [`chain`]: service chains: onward legs composed, linked, cycle-checked and closed.
//! - [`requeue`]: per-connection backoff after a failed repair or heal.
//! - [`replica`]: a standby's read-only copy of the leader's state, kept from the store's watch.
//! - [`controller`]: the async shell: write-ahead persistence, per-client serialization, the
//!   reconcile loop that repairs, heals and expires.

pub mod backoff;
pub mod chain;
pub mod client;
pub mod clock;
pub mod connections;
pub mod controller;
pub mod desired;
pub mod driver;
pub mod error;
pub mod federation;
pub(crate) mod lifecycle;
pub mod links;
pub mod negotiate;
pub mod path;
pub mod pool;
pub mod ranges;
pub mod reconcile;
pub mod replica;
pub mod requeue;
pub mod resources;
pub mod select;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vl3;

pub use clock::{Clock, ManualClock, SystemClock};
pub use controller::{
    Applied, ConnectionFilter, Controller, EndpointView, Event, Precondition, ReconcileReport,
};
pub use driver::{
    Dataplanes, Desired, Driver, DriverError, DriverEvent, Health, NullDriver, Observation, Report,
    Scope, Update,
};
pub use error::ControllerError;
pub use state::{Avoid, Change, Config, State};
pub use store::{Store, StoreError};
#[cfg(any(test, feature = "testing"))]
pub use testing::RecordingDriver;
