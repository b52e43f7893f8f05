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
//!   Also `monitor_cond_since`, and `lock`/`steal`/`unlock`.
//! - [`replica`]: sans-IO. A local copy of monitored tables fed by `update`, `update2` and
//!   `update3` (differences applied per column kind from the schema), property-tested.
//! - [`rows`]: typed rows of Open_vSwitch, Bridge, Port, Interface and Controller.
//! - [`session`]: a long-lived session that reconnects with jittered exponential backoff,
//!   resumes its monitor from the last transaction id, and probes the server with echoes.

pub mod client;
pub mod framing;
pub mod ops;
pub mod replica;
pub mod rows;
pub mod rpc;
pub mod session;

pub use client::{Client, OvsdbError};

/// The decoder's contract, for the fuzz target and the corpus replay: any bytes, in any chunks,
/// yield messages or framing errors, never a panic; every JSON-RPC message read re-encodes to one
/// that reads back the same.
pub fn check_decode(data: &[u8]) {
    let mut f = framing::Framer::new();
    // Hostile update notifications must leave a replica with an error at worst.
    let mut replica = replica::Replica::new();
    for chunk in data.chunks(7) {
        f.push(chunk);
        while let Some(v) = f.next_value() {
            if let Ok(v) = v {
                if let Some(m) = rpc::RpcMessage::from_value(v) {
                    if let rpc::RpcMessage::Notification { method, params } = &m {
                        let _ = replica.apply_notification(method, params);
                        let _ = replica.bridges();
                        let _ = replica.interfaces();
                    }
                    let again: serde_json::Value =
                        serde_json::from_slice(&m.encode()).expect("encoded messages are JSON");
                    assert_eq!(rpc::RpcMessage::from_value(again).as_ref(), Some(&m));
                }
            }
        }
    }
}
