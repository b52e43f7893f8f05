//! NETCONF (RFC 6241) over SSH (RFC 6242): how an eNSM configures a device.
//!
//! - [`framing`]: sans-IO. 1.0 end-of-message and 1.1 chunked framing, property-tested and
//!   fuzzed.
//! - [`xml`]: sans-IO. `<hello>`, the operations as `<rpc>` bodies, `<rpc-reply>` parsing with
//!   typed `<rpc-error>`s.
//! - [`client`]: a session on russh: host key checked (pinned fingerprint or known_hosts),
//!   password or key auth, hello and capability exchange, replies matched by message-id.

pub mod client;
pub mod framing;
pub mod xml;

pub use client::{Auth, HostKey, NetconfError, Session, Target};
pub use xml::{Datastore, DefaultOperation, Operation, RpcError};
