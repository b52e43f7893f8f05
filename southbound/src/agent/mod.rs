//! Node agents: the data plane of each host runs in `meshwire node` on that host, and the
//! controller reaches it over the agent protocol (`proto/agent.proto`, gRPC).
//!
//! - [`hub`]: the controller's side. [`AgentHub`] is the [`Driver`] of kernel nodes: it splits
//!   each desired state by node and sends every attached agent its node's part, and serves the
//!   `NodeAgent` service the agents attach to (credential per node, lease).
//! - [`node`]: the agent's side. It attaches, applies what it receives to a node-local driver
//!   ([`crate::KernelDriver::for_node`]), answers every change with a report and streams the
//!   driver's events back. While the controller is away it keeps the data plane exactly as it
//!   is; on reconnect the controller's full set resyncs it by diff.
//!
//! [`Driver`]: meshwire_controller::Driver

pub mod hub;
pub mod node;

pub use hub::{AgentHub, Credentials, HubConfig};
pub use node::{NodeAgentOptions, NodeError};

/// The generated protocol (`meshwire.agent.v1`).
pub mod pb {
    tonic::include_proto!("meshwire.agent.v1");
}

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// How long a node's endpoints are kept after its agent's stream ends, by default.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest message either side takes: a full set of 10,000 connections is about 15 MB of
/// JSON, far over gRPC's customary 4 MB.
pub const MAX_MESSAGE: usize = 128 << 20;

/// How many messages wait on one agent's stream, each way.
pub const STREAM_BUFFER: usize = 256;

/// How long an agent may take to answer a change (a full set: [`meshwire_controller::driver::PEER_OBSERVE_TIMEOUT`]).
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
