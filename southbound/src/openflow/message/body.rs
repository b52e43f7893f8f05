//! Bodies: OXM matches, actions, instructions and port descriptions, as they sit inside
//! messages.

use crate::openflow::codec::{pad8, padded8, put_len, DecodeError, EncodeError, Reader};
use crate::openflow::oxm::OxmField;

use super::*;

pub(super) fn encode_match(out: &mut Vec<u8>, fields: &[OxmField]) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 1, 0, 0]);
    for f in fields {
        f.encode(out);
    }
    let len = out.len() - start;
    put_len(out, start + 2, len, "ofp_match")?;
    pad8(out);
    Ok(())
}

/// Whether `buf` starts with the header of an ONF bundle add message (experimenter message,
/// ONF's experimenter id, exp_type bundle add).
pub(super) fn is_bundle_add(buf: &[u8]) -> bool {
    buf.len() >= 16
        && buf[1] == EXPERIMENTER
        && buf[8..12] == ONF_EXPERIMENTER.to_be_bytes()
        && buf[12..16] == ONF_ET_BUNDLE_ADD_MESSAGE.to_be_bytes()
}

pub(super) fn decode_match(r: &mut Reader) -> Result<Vec<OxmField>, DecodeError> {
    let kind = r.u16("ofp_match type")?;
    let len = r.u16("ofp_match length")? as usize;
    if kind != 1 {
        return Err(DecodeError::BadValue {
            what: "ofp_match type (only OXM is OpenFlow 1.3)",
            value: kind.into(),
        });
    }
    if len < 4 {
        return Err(DecodeError::BadLength {
            what: "ofp_match",
            len,
            why: "shorter than its header",
        });
    }
    let mut fields_r = r.sub(len - 4, "ofp_match fields")?;
    r.skip(padded8(len) - len, "ofp_match padding")?;
    let mut fields = Vec::new();
    while fields_r.left() > 0 {
        fields.push(OxmField::decode(&mut fields_r)?);
    }
    Ok(fields)
}

pub(super) fn encode_actions(out: &mut Vec<u8>, actions: &[Action]) -> Result<(), EncodeError> {
    for a in actions {
        let start = out.len();
        let (kind, body): (u16, Vec<u8>) = match a {
            Action::Output { port, max_len } => {
                let mut b = port.to_be_bytes().to_vec();
                b.extend_from_slice(&max_len.to_be_bytes());
                b.extend_from_slice(&[0; 6]);
                (0, b)
            }
            Action::CopyTtlOut => (11, vec![0; 4]),
            Action::CopyTtlIn => (12, vec![0; 4]),
            Action::SetMplsTtl(t) => (15, vec![*t, 0, 0, 0]),
            Action::DecMplsTtl => (16, vec![0; 4]),
            Action::PushVlan(e) => (17, [&e.to_be_bytes()[..], &[0, 0]].concat()),
            Action::PopVlan => (18, vec![0; 4]),
            Action::PushMpls(e) => (19, [&e.to_be_bytes()[..], &[0, 0]].concat()),
            Action::PopMpls(e) => (20, [&e.to_be_bytes()[..], &[0, 0]].concat()),
            Action::SetQueue(q) => (21, q.to_be_bytes().to_vec()),
            Action::Group(g) => (22, g.to_be_bytes().to_vec()),
            Action::SetNwTtl(t) => (23, vec![*t, 0, 0, 0]),
            Action::DecNwTtl => (24, vec![0; 4]),
            Action::SetField(f) => {
                let mut b = Vec::new();
                f.encode(&mut b);
                (25, b)
            }
            Action::Other { kind, body } => (*kind, body.clone()),
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&body);
        finish_tlv(out, start, "ofp_action")?;
    }
    Ok(())
}

/// Reads the header of an 8-byte-aligned TLV (actions and instructions share it) and returns
/// its type, its length and a reader over its body.
pub(super) fn next_tlv<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
) -> Result<(u16, usize, Reader<'a>), DecodeError> {
    let kind = r.u16(what)?;
    let len = r.u16(what)? as usize;
    if len < 8 || !len.is_multiple_of(8) {
        return Err(DecodeError::BadLength {
            what,
            len,
            why: "not a multiple of 8 of at least 8",
        });
    }
    Ok((kind, len, r.sub(len - 4, what)?))
}

/// Pads the TLV that started at `start` to 8 bytes and writes its length.
pub(super) fn finish_tlv(
    out: &mut Vec<u8>,
    start: usize,
    what: &'static str,
) -> Result<(), EncodeError> {
    pad8(out);
    let len = out.len() - start;
    put_len(out, start + 2, len, what)
}

pub(super) fn decode_actions(mut r: Reader) -> Result<Vec<Action>, DecodeError> {
    let mut out = Vec::new();
    while r.left() > 0 {
        let (kind, len, mut b) = next_tlv(&mut r, "ofp_action")?;
        let ethertype = |b: &mut Reader| b.u16("action ethertype");
        out.push(match kind {
            0 if len == 16 => {
                let port = b.u32("output port")?;
                Action::Output {
                    port,
                    max_len: b.u16("output max_len")?,
                }
            }
            11 if len == 8 => Action::CopyTtlOut,
            12 if len == 8 => Action::CopyTtlIn,
            15 if len == 8 => Action::SetMplsTtl(b.u8("mpls ttl")?),
            16 if len == 8 => Action::DecMplsTtl,
            17 if len == 8 => Action::PushVlan(ethertype(&mut b)?),
            18 if len == 8 => Action::PopVlan,
            19 if len == 8 => Action::PushMpls(ethertype(&mut b)?),
            20 if len == 8 => Action::PopMpls(ethertype(&mut b)?),
            21 if len == 8 => Action::SetQueue(b.u32("queue id")?),
            22 if len == 8 => Action::Group(b.u32("group id")?),
            23 if len == 8 => Action::SetNwTtl(b.u8("nw ttl")?),
            24 if len == 8 => Action::DecNwTtl,
            25 => {
                let f = OxmField::decode(&mut b)?;
                // What is left is padding; encode writes zeros, so only zeros round-trip.
                if b.rest().iter().any(|x| *x != 0) {
                    return Err(DecodeError::BadLength {
                        what: "set_field",
                        len,
                        why: "bytes after the field are not padding",
                    });
                }
                Action::SetField(f)
            }
            _ => {
                let body = b.rest().to_vec();
                Action::Other { kind, body }
            }
        });
    }
    Ok(out)
}

pub(super) fn encode_instructions(
    out: &mut Vec<u8>,
    ins: &[Instruction],
) -> Result<(), EncodeError> {
    for i in ins {
        let start = out.len();
        let kind: u16 = match i {
            Instruction::GotoTable(_) => 1,
            Instruction::WriteMetadata { .. } => 2,
            Instruction::WriteActions(_) => 3,
            Instruction::ApplyActions(_) => 4,
            Instruction::ClearActions => 5,
            Instruction::Meter(_) => 6,
            Instruction::Other { kind, .. } => *kind,
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        match i {
            Instruction::GotoTable(t) => out.extend_from_slice(&[*t, 0, 0, 0]),
            Instruction::WriteMetadata { metadata, mask } => {
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&metadata.to_be_bytes());
                out.extend_from_slice(&mask.to_be_bytes());
            }
            Instruction::WriteActions(a) | Instruction::ApplyActions(a) => {
                out.extend_from_slice(&[0; 4]);
                encode_actions(out, a)?;
            }
            Instruction::ClearActions => out.extend_from_slice(&[0; 4]),
            Instruction::Meter(m) => out.extend_from_slice(&m.to_be_bytes()),
            Instruction::Other { body, .. } => out.extend_from_slice(body),
        }
        finish_tlv(out, start, "ofp_instruction")?;
    }
    Ok(())
}

pub(super) fn decode_instructions(mut r: Reader) -> Result<Vec<Instruction>, DecodeError> {
    let mut out = Vec::new();
    while r.left() > 0 {
        let (kind, len, mut b) = next_tlv(&mut r, "ofp_instruction")?;
        out.push(match kind {
            1 if len == 8 => Instruction::GotoTable(b.u8("goto table")?),
            2 if len == 24 => {
                b.skip(4, "pad")?;
                Instruction::WriteMetadata {
                    metadata: b.u64("metadata")?,
                    mask: b.u64("metadata mask")?,
                }
            }
            3 | 4 => {
                b.skip(4, "pad")?;
                let actions = decode_actions(Reader::new(b.rest()))?;
                if kind == 3 {
                    Instruction::WriteActions(actions)
                } else {
                    Instruction::ApplyActions(actions)
                }
            }
            5 if len == 8 => Instruction::ClearActions,
            6 if len == 8 => Instruction::Meter(b.u32("meter id")?),
            _ => Instruction::Other {
                kind,
                body: b.rest().to_vec(),
            },
        });
    }
    Ok(out)
}

pub(super) fn encode_port(out: &mut Vec<u8>, p: &Port) {
    out.extend_from_slice(&p.port_no.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&p.hw_addr);
    out.extend_from_slice(&[0; 2]);
    let mut name = [0u8; 16];
    let mut l = p.name.len().min(15);
    while !p.name.is_char_boundary(l) {
        l -= 1;
    }
    name[..l].copy_from_slice(&p.name.as_bytes()[..l]);
    out.extend_from_slice(&name);
    for v in [
        p.config,
        p.state,
        p.curr,
        p.advertised,
        p.supported,
        p.peer,
        p.curr_speed,
        p.max_speed,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn decode_port(r: &mut Reader) -> Result<Port, DecodeError> {
    let port_no = r.u32("port_no")?;
    r.skip(4, "pad")?;
    let mut hw_addr = [0u8; 6];
    hw_addr.copy_from_slice(r.bytes(6, "hw_addr")?);
    r.skip(2, "pad")?;
    let raw = r.bytes(16, "port name")?;
    // At most 15 bytes before the NUL; bytes that are not UTF-8 show as '?', so decoding and
    // encoding again gives the same name.
    let end = raw.iter().position(|b| *b == 0).unwrap_or(16).min(15);
    let name = match std::str::from_utf8(&raw[..end]) {
        Ok(s) => s.to_string(),
        Err(_) => raw[..end]
            .iter()
            .map(|b| if b.is_ascii() { *b as char } else { '?' })
            .collect(),
    };
    let mut v = [0u32; 8];
    for x in &mut v {
        *x = r.u32("port field")?;
    }
    Ok(Port {
        port_no,
        hw_addr,
        name,
        config: v[0],
        state: v[1],
        curr: v[2],
        advertised: v[3],
        supported: v[4],
        peer: v[5],
        curr_speed: v[6],
        max_speed: v[7],
    })
}

// ---- messages ------------------------------------------------------------------------------
