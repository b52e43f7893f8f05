//! OpenFlow 1.3 (wire version 0x04), sans-IO: [`OfpMessage::encode`] and [`OfpMessage::decode`] on
//! bytes, and [`frame_len`] to cut a byte stream into messages. No sockets, no clocks, no async:
//! a thin task that owns the switch connection uses these (it arrives with the OVS issue).
//!
//! Covered: hello (with the version bitmap), error (with the offending request's bytes), echo,
//! features, barrier, flow_mod with OXM matches and instructions/actions (output, set_field with
//! tunnel id and NXM tunnel destination, push/pop VLAN and MPLS, group, TTLs), packet_in/out,
//! port_status, role, and multipart flow stats and port description. Anything else is kept as
//! `Other` with its bytes, so decoding never loses a message it does not model, and a hostile or
//! malformed message yields a [`DecodeError`], never a panic (property-tested and fuzzed).

pub mod channel;
mod codec;
mod message;
mod oxm;

pub use codec::{frame_len, DecodeError, EncodeError, HEADER_LEN, VERSION};
pub use message::*;
pub use oxm::{OxmField, NXM_NX, OXM_OPENFLOW_BASIC};

/// The decoder's contract, for the fuzz target and the corpus replay: `data` either fails to
/// decode with an error, or decodes to a message that encodes and decodes back to itself.
/// Panics when the contract is broken.
pub fn check_decode(data: &[u8]) {
    let _ = frame_len(data);
    if let Ok((m, used)) = OfpMessage::decode(data) {
        assert!(used <= data.len());
        let bytes = m
            .encode()
            .expect("a decoded message fits its 16-bit lengths");
        let (again, n) = OfpMessage::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(n, bytes.len());
        assert_eq!(again, m, "decode(encode(decode(x))) differs from decode(x)");
    }
}

#[cfg(test)]
mod tests;
