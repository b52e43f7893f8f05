//! OVSDB (RFC 7047): JSON-RPC over a unix or TCP stream.
//!
//! - [`framing`]: sans-IO. OVSDB sends JSON objects back to back with no delimiter; the framer
//!   cuts a byte stream into whole JSON texts (property-tested: any split of a stream gives the
//!   same messages; arbitrary bytes never panic).
//! - [`rpc`]: requests, responses and notifications as values; [`ops`]: transaction operations,
//!   conditions, mutations and the data notation (`["set", …]`, `["map", …]`, `["uuid", …]`),
//!   with [`ops::OWNER_KEY`] put in `external_ids` of every row Meshwire creates.
//! - [`client`]: a thin tokio task owning the socket: id-matched calls, echo answered, update
//!   notifications forwarded, transaction errors naming the operation that failed.
//!
//! Not yet here (OVS issue): monitor_cond_since with update2/3 into a local replica, locks,
//! reconnect with backoff, typed rows.

pub mod client;
pub mod framing;
pub mod ops;
pub mod rpc;

pub use client::{Client, OvsdbError};
