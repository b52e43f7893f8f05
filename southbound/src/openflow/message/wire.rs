//! Wire: whole OpenFlow 1.3 messages encoded to and decoded from bytes.

use crate::openflow::codec::{
    frame_len, padded8, put_len, DecodeError, EncodeError, Reader, HEADER_LEN, VERSION,
};

use super::body::*;
use super::*;

impl OfpMessage {
    pub fn new(xid: u32, body: Message) -> Self {
        OfpMessage { xid, body }
    }

    /// The message as bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        encode_into(self.xid, &self.body, &mut out)?;
        Ok(out)
    }

    /// Decodes the first message of `buf`; returns it and the bytes it used. Never recurses
    /// more than once (a bundle add's inner message, which may not be a bundle add).
    pub fn decode(buf: &[u8]) -> Result<(OfpMessage, usize), DecodeError> {
        let len = frame_len(buf)?.ok_or(DecodeError::Truncated {
            what: "ofp message",
            need: HEADER_LEN.max(
                buf.get(2..4)
                    .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
                    .unwrap_or(HEADER_LEN),
            ),
            have: buf.len(),
        })?;
        let mut h = Reader::new(&buf[..HEADER_LEN]);
        let version = h.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = h.u8("type")?;
        h.skip(2, "length")?;
        let xid = h.u32("xid")?;
        let mut r = Reader::new(&buf[HEADER_LEN..len]);
        let body = match kind {
            HELLO => {
                let mut versions = None;
                while r.left() >= 4 {
                    let etype = r.u16("hello element type")?;
                    let elen = r.u16("hello element length")? as usize;
                    if elen < 4 {
                        return Err(DecodeError::BadLength {
                            what: "hello element",
                            len: elen,
                            why: "shorter than its header",
                        });
                    }
                    let mut e = r.sub(elen - 4, "hello element")?;
                    r.skip(
                        padded8(elen).saturating_sub(elen).min(r.left()),
                        "hello element padding",
                    )?;
                    if etype == 1 && e.left() >= 4 {
                        versions = Some(e.u32("version bitmap")?);
                    }
                }
                Message::Hello { versions }
            }
            ERROR => Message::Error {
                kind: r.u16("error type")?,
                code: r.u16("error code")?,
                data: r.rest().to_vec(),
            },
            ECHO_REQUEST => Message::EchoRequest(r.rest().to_vec()),
            ECHO_REPLY => Message::EchoReply(r.rest().to_vec()),
            FEATURES_REQUEST => Message::FeaturesRequest,
            FEATURES_REPLY => {
                let datapath_id = r.u64("datapath_id")?;
                let n_buffers = r.u32("n_buffers")?;
                let n_tables = r.u8("n_tables")?;
                let auxiliary_id = r.u8("auxiliary_id")?;
                r.skip(2, "pad")?;
                let capabilities = r.u32("capabilities")?;
                r.skip(4, "reserved")?;
                Message::FeaturesReply(Features {
                    datapath_id,
                    n_buffers,
                    n_tables,
                    auxiliary_id,
                    capabilities,
                })
            }
            PACKET_IN => {
                let buffer_id = r.u32("buffer_id")?;
                let total_len = r.u16("total_len")?;
                let reason = r.u8("reason")?;
                let table_id = r.u8("table_id")?;
                let cookie = r.u64("cookie")?;
                let matches = decode_match(&mut r)?;
                r.skip(2, "pad")?;
                Message::PacketIn(PacketIn {
                    buffer_id,
                    total_len,
                    reason,
                    table_id,
                    cookie,
                    matches,
                    data: r.rest().to_vec(),
                })
            }
            PORT_STATUS => {
                let reason = r.u8("reason")?;
                r.skip(7, "pad")?;
                Message::PortStatus {
                    reason,
                    port: decode_port(&mut r)?,
                }
            }
            PACKET_OUT => {
                let buffer_id = r.u32("buffer_id")?;
                let in_port = r.u32("in_port")?;
                let alen = r.u16("actions_len")? as usize;
                r.skip(6, "pad")?;
                let actions = decode_actions(r.sub(alen, "packet_out actions")?)?;
                Message::PacketOut(PacketOut {
                    buffer_id,
                    in_port,
                    actions,
                    data: r.rest().to_vec(),
                })
            }
            FLOW_MOD => {
                let cookie = r.u64("cookie")?;
                let cookie_mask = r.u64("cookie_mask")?;
                let table_id = r.u8("table_id")?;
                let command = FlowModCommand::from_code(r.u8("command")?)?;
                let idle_timeout = r.u16("idle_timeout")?;
                let hard_timeout = r.u16("hard_timeout")?;
                let priority = r.u16("priority")?;
                let buffer_id = r.u32("buffer_id")?;
                let out_port = r.u32("out_port")?;
                let out_group = r.u32("out_group")?;
                let flags = r.u16("flags")?;
                r.skip(2, "pad")?;
                let matches = decode_match(&mut r)?;
                let instructions = decode_instructions(Reader::new(r.rest()))?;
                Message::FlowMod(FlowMod {
                    cookie,
                    cookie_mask,
                    table_id,
                    command,
                    idle_timeout,
                    hard_timeout,
                    priority,
                    buffer_id,
                    out_port,
                    out_group,
                    flags,
                    matches,
                    instructions,
                })
            }
            MULTIPART_REQUEST => {
                let mkind = r.u16("multipart type")?;
                let flags = r.u16("multipart flags")?;
                r.skip(4, "pad")?;
                Message::MultipartRequest(match mkind {
                    MP_FLOW => {
                        let table_id = r.u8("table_id")?;
                        r.skip(3, "pad")?;
                        let out_port = r.u32("out_port")?;
                        let out_group = r.u32("out_group")?;
                        r.skip(4, "pad")?;
                        let cookie = r.u64("cookie")?;
                        let cookie_mask = r.u64("cookie_mask")?;
                        let matches = decode_match(&mut r)?;
                        MultipartRequest::Flow {
                            flags,
                            table_id,
                            out_port,
                            out_group,
                            cookie,
                            cookie_mask,
                            matches,
                        }
                    }
                    MP_PORT_DESC if r.left() == 0 => MultipartRequest::PortDesc { flags },
                    MP_PORT_STATS if r.left() == 8 => {
                        let port_no = r.u32("port_no")?;
                        r.skip(4, "pad")?;
                        MultipartRequest::PortStats { flags, port_no }
                    }
                    _ => MultipartRequest::Other {
                        kind: mkind,
                        flags,
                        body: r.rest().to_vec(),
                    },
                })
            }
            MULTIPART_REPLY => {
                let mkind = r.u16("multipart type")?;
                let flags = r.u16("multipart flags")?;
                r.skip(4, "pad")?;
                Message::MultipartReply(match mkind {
                    MP_FLOW => {
                        let mut flows = Vec::new();
                        while r.left() > 0 {
                            let slen = r.u16("flow_stats length")? as usize;
                            if slen < 4 {
                                return Err(DecodeError::BadLength {
                                    what: "ofp_flow_stats",
                                    len: slen,
                                    why: "shorter than its header",
                                });
                            }
                            let mut s = r.sub(slen - 2, "flow_stats")?;
                            let table_id = s.u8("table_id")?;
                            s.skip(1, "pad")?;
                            let duration_sec = s.u32("duration_sec")?;
                            let duration_nsec = s.u32("duration_nsec")?;
                            let priority = s.u16("priority")?;
                            let idle_timeout = s.u16("idle_timeout")?;
                            let hard_timeout = s.u16("hard_timeout")?;
                            let flags = s.u16("flags")?;
                            s.skip(4, "pad")?;
                            let cookie = s.u64("cookie")?;
                            let packet_count = s.u64("packet_count")?;
                            let byte_count = s.u64("byte_count")?;
                            let matches = decode_match(&mut s)?;
                            let instructions = decode_instructions(Reader::new(s.rest()))?;
                            flows.push(FlowStats {
                                table_id,
                                duration_sec,
                                duration_nsec,
                                priority,
                                idle_timeout,
                                hard_timeout,
                                flags,
                                cookie,
                                packet_count,
                                byte_count,
                                matches,
                                instructions,
                            });
                        }
                        MultipartReply::Flow { flags, flows }
                    }
                    MP_PORT_DESC if r.left().is_multiple_of(64) => {
                        let mut ports = Vec::new();
                        while r.left() > 0 {
                            ports.push(decode_port(&mut r)?);
                        }
                        MultipartReply::PortDesc { flags, ports }
                    }
                    MP_PORT_STATS if r.left().is_multiple_of(PORT_STATS_LEN) => {
                        let mut stats = Vec::new();
                        while r.left() > 0 {
                            let port_no = r.u32("port_no")?;
                            r.skip(4, "pad")?;
                            let mut c = [0u64; 12];
                            for v in c.iter_mut() {
                                *v = r.u64("port counter")?;
                            }
                            let duration_sec = r.u32("duration_sec")?;
                            r.skip(4, "duration_nsec")?;
                            stats.push(PortStats {
                                port_no,
                                rx_packets: c[0],
                                tx_packets: c[1],
                                rx_bytes: c[2],
                                tx_bytes: c[3],
                                rx_dropped: c[4],
                                tx_dropped: c[5],
                                rx_errors: c[6],
                                tx_errors: c[7],
                                duration_sec,
                            });
                        }
                        MultipartReply::PortStats { flags, stats }
                    }
                    _ => MultipartReply::Other {
                        kind: mkind,
                        flags,
                        body: r.rest().to_vec(),
                    },
                })
            }
            BARRIER_REQUEST => Message::BarrierRequest,
            BARRIER_REPLY => Message::BarrierReply,
            ROLE_REQUEST | ROLE_REPLY => {
                let role = r.u32("role")?;
                r.skip(4, "pad")?;
                let role = Role {
                    role,
                    generation_id: r.u64("generation_id")?,
                };
                if kind == ROLE_REQUEST {
                    Message::RoleRequest(role)
                } else {
                    Message::RoleReply(role)
                }
            }
            EXPERIMENTER if r.left() >= 16 && buf[8..12] == ONF_EXPERIMENTER.to_be_bytes() => {
                r.skip(4, "experimenter")?;
                let exp_type = r.u32("exp_type")?;
                match exp_type {
                    ONF_ET_BUNDLE_CONTROL => {
                        let bundle_id = r.u32("bundle_id")?;
                        let kind = BundleCtrl::from_code(r.u16("bundle type")?)?;
                        let flags = r.u16("bundle flags")?;
                        Message::BundleControl(BundleControl {
                            bundle_id,
                            kind,
                            flags,
                        })
                    }
                    ONF_ET_BUNDLE_ADD_MESSAGE => {
                        let bundle_id = r.u32("bundle_id")?;
                        r.skip(2, "pad")?;
                        let flags = r.u16("bundle flags")?;
                        let rest = r.rest();
                        // A bundle add may not carry another: refuse it by its header, before
                        // decoding it, so a peer cannot make us recurse once per nesting level
                        // (a 64 KiB message nests some 2,700 deep).
                        if is_bundle_add(rest) {
                            return Err(DecodeError::BadValue {
                                what: "bundle add inside a bundle add",
                                value: 0,
                            });
                        }
                        let (inner, used) = OfpMessage::decode(rest)?;
                        if used > rest.len() {
                            return Err(DecodeError::BadLength {
                                what: "bundled message",
                                len: used,
                                why: "longer than the bundle add",
                            });
                        }
                        Message::BundleAdd {
                            bundle_id,
                            flags,
                            message: Box::new(inner.body),
                        }
                    }
                    _ => Message::Other {
                        kind,
                        body: buf[HEADER_LEN..len].to_vec(),
                    },
                }
            }
            other => Message::Other {
                kind: other,
                body: r.rest().to_vec(),
            },
        };
        Ok((OfpMessage { xid, body }, len))
    }
}

pub(super) fn mp_header(out: &mut Vec<u8>, kind: u16, flags: u16) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Appends `body` with `xid` to `out` (no copy of the body: batches encode straight into one
/// buffer).
pub fn encode_into(xid: u32, body: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&xid.to_be_bytes());
    let kind = match body {
        Message::Hello { versions } => {
            if let Some(v) = versions {
                out.extend_from_slice(&[0, 1, 0, 8]);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HELLO
        }
        Message::Error { kind, code, data } => {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(data);
            ERROR
        }
        Message::EchoRequest(d) | Message::EchoReply(d) => {
            out.extend_from_slice(d);
            if matches!(body, Message::EchoRequest(_)) {
                ECHO_REQUEST
            } else {
                ECHO_REPLY
            }
        }
        Message::FeaturesRequest => FEATURES_REQUEST,
        Message::FeaturesReply(f) => {
            out.extend_from_slice(&f.datapath_id.to_be_bytes());
            out.extend_from_slice(&f.n_buffers.to_be_bytes());
            out.extend_from_slice(&[f.n_tables, f.auxiliary_id, 0, 0]);
            out.extend_from_slice(&f.capabilities.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            FEATURES_REPLY
        }
        Message::PacketIn(p) => {
            out.extend_from_slice(&p.buffer_id.to_be_bytes());
            out.extend_from_slice(&p.total_len.to_be_bytes());
            out.extend_from_slice(&[p.reason, p.table_id]);
            out.extend_from_slice(&p.cookie.to_be_bytes());
            encode_match(out, &p.matches)?;
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.data);
            PACKET_IN
        }
        Message::PortStatus { reason, port } => {
            out.extend_from_slice(&[*reason, 0, 0, 0, 0, 0, 0, 0]);
            encode_port(out, port);
            PORT_STATUS
        }
        Message::PacketOut(p) => {
            out.extend_from_slice(&p.buffer_id.to_be_bytes());
            out.extend_from_slice(&p.in_port.to_be_bytes());
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            let start = out.len();
            encode_actions(out, &p.actions)?;
            let alen = out.len() - start;
            put_len(out, at, alen, "packet_out actions")?;
            out.extend_from_slice(&p.data);
            PACKET_OUT
        }
        Message::FlowMod(f) => {
            out.extend_from_slice(&f.cookie.to_be_bytes());
            out.extend_from_slice(&f.cookie_mask.to_be_bytes());
            out.extend_from_slice(&[f.table_id, f.command.code()]);
            for v in [f.idle_timeout, f.hard_timeout, f.priority] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            for v in [f.buffer_id, f.out_port, f.out_group] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out.extend_from_slice(&f.flags.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            encode_match(out, &f.matches)?;
            encode_instructions(out, &f.instructions)?;
            FLOW_MOD
        }
        Message::MultipartRequest(m) => {
            match m {
                MultipartRequest::Flow {
                    flags,
                    table_id,
                    out_port,
                    out_group,
                    cookie,
                    cookie_mask,
                    matches,
                } => {
                    mp_header(out, MP_FLOW, *flags);
                    out.extend_from_slice(&[*table_id, 0, 0, 0]);
                    out.extend_from_slice(&out_port.to_be_bytes());
                    out.extend_from_slice(&out_group.to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                    out.extend_from_slice(&cookie.to_be_bytes());
                    out.extend_from_slice(&cookie_mask.to_be_bytes());
                    encode_match(out, matches)?;
                }
                MultipartRequest::PortDesc { flags } => mp_header(out, MP_PORT_DESC, *flags),
                MultipartRequest::PortStats { flags, port_no } => {
                    mp_header(out, MP_PORT_STATS, *flags);
                    out.extend_from_slice(&port_no.to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                }
                MultipartRequest::Other { kind, flags, body } => {
                    mp_header(out, *kind, *flags);
                    out.extend_from_slice(body);
                }
            }
            MULTIPART_REQUEST
        }
        Message::MultipartReply(m) => {
            match m {
                MultipartReply::Flow { flags, flows } => {
                    mp_header(out, MP_FLOW, *flags);
                    for s in flows {
                        let start = out.len();
                        out.extend_from_slice(&[0, 0, s.table_id, 0]);
                        out.extend_from_slice(&s.duration_sec.to_be_bytes());
                        out.extend_from_slice(&s.duration_nsec.to_be_bytes());
                        for v in [s.priority, s.idle_timeout, s.hard_timeout, s.flags] {
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                        out.extend_from_slice(&[0; 4]);
                        for v in [s.cookie, s.packet_count, s.byte_count] {
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                        encode_match(out, &s.matches)?;
                        encode_instructions(out, &s.instructions)?;
                        let len = out.len() - start;
                        put_len(out, start, len, "ofp_flow_stats")?;
                    }
                }
                MultipartReply::PortDesc { flags, ports } => {
                    mp_header(out, MP_PORT_DESC, *flags);
                    for p in ports {
                        encode_port(out, p);
                    }
                }
                MultipartReply::PortStats { flags, stats } => {
                    mp_header(out, MP_PORT_STATS, *flags);
                    for p in stats {
                        out.extend_from_slice(&p.port_no.to_be_bytes());
                        out.extend_from_slice(&[0; 4]);
                        for v in [
                            p.rx_packets,
                            p.tx_packets,
                            p.rx_bytes,
                            p.tx_bytes,
                            p.rx_dropped,
                            p.tx_dropped,
                            p.rx_errors,
                            p.tx_errors,
                            0,
                            0,
                            0,
                            0,
                        ] {
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                        out.extend_from_slice(&p.duration_sec.to_be_bytes());
                        out.extend_from_slice(&[0; 4]);
                    }
                }
                MultipartReply::Other { kind, flags, body } => {
                    mp_header(out, *kind, *flags);
                    out.extend_from_slice(body);
                }
            }
            MULTIPART_REPLY
        }
        Message::BarrierRequest => BARRIER_REQUEST,
        Message::BarrierReply => BARRIER_REPLY,
        Message::RoleRequest(r) | Message::RoleReply(r) => {
            out.extend_from_slice(&r.role.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&r.generation_id.to_be_bytes());
            if matches!(body, Message::RoleRequest(_)) {
                ROLE_REQUEST
            } else {
                ROLE_REPLY
            }
        }
        Message::BundleControl(b) => {
            out.extend_from_slice(&ONF_EXPERIMENTER.to_be_bytes());
            out.extend_from_slice(&ONF_ET_BUNDLE_CONTROL.to_be_bytes());
            out.extend_from_slice(&b.bundle_id.to_be_bytes());
            out.extend_from_slice(&b.kind.code().to_be_bytes());
            out.extend_from_slice(&b.flags.to_be_bytes());
            EXPERIMENTER
        }
        Message::BundleAdd {
            bundle_id,
            flags,
            message,
        } => {
            if matches!(**message, Message::BundleAdd { .. }) {
                return Err(EncodeError {
                    what: "bundle add (nested bundle add)",
                    len: 0,
                });
            }
            out.extend_from_slice(&ONF_EXPERIMENTER.to_be_bytes());
            out.extend_from_slice(&ONF_ET_BUNDLE_ADD_MESSAGE.to_be_bytes());
            out.extend_from_slice(&bundle_id.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&flags.to_be_bytes());
            encode_into(xid, message, out)?;
            EXPERIMENTER
        }
        Message::Other { kind, body } => {
            out.extend_from_slice(body);
            *kind
        }
    };
    out[start + 1] = kind;
    let len = out.len() - start;
    put_len(out, start + 2, len, "ofp message")?;
    Ok(())
}
