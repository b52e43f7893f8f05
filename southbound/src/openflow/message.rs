//! OpenFlow 1.3 messages and their bodies (OpenFlow 1.3.5, section 7).

use super::codec::{
    frame_len, pad8, padded8, put_len, DecodeError, EncodeError, Reader, HEADER_LEN, VERSION,
};
use super::oxm::OxmField;

// ofp_type.
const HELLO: u8 = 0;
const ERROR: u8 = 1;
const ECHO_REQUEST: u8 = 2;
const ECHO_REPLY: u8 = 3;
const FEATURES_REQUEST: u8 = 5;
const FEATURES_REPLY: u8 = 6;
const PACKET_IN: u8 = 10;
const PORT_STATUS: u8 = 12;
const PACKET_OUT: u8 = 13;
const FLOW_MOD: u8 = 14;
const MULTIPART_REQUEST: u8 = 18;
const MULTIPART_REPLY: u8 = 19;
const BARRIER_REQUEST: u8 = 20;
const BARRIER_REPLY: u8 = 21;
const ROLE_REQUEST: u8 = 24;
const ROLE_REPLY: u8 = 25;
const EXPERIMENTER: u8 = 4;

/// The ONF experimenter id, carrying bundles in OpenFlow 1.3 (ONF extension 230).
pub const ONF_EXPERIMENTER: u32 = 0x4F4E_4600;
const ONF_ET_BUNDLE_CONTROL: u32 = 2300;
const ONF_ET_BUNDLE_ADD_MESSAGE: u32 = 2301;
/// Bundle flags.
pub const BUNDLE_ATOMIC: u16 = 1;
pub const BUNDLE_ORDERED: u16 = 2;

// ofp_multipart_type.
const MP_FLOW: u16 = 1;
const MP_PORT_STATS: u16 = 4;
const MP_PORT_DESC: u16 = 13;
const PORT_STATS_LEN: usize = 112;

/// OFP_NO_BUFFER.
pub const NO_BUFFER: u32 = 0xffff_ffff;
/// OFPP_ANY / OFPG_ANY.
pub const ANY: u32 = 0xffff_ffff;
/// OFPP_CONTROLLER.
pub const PORT_CONTROLLER: u32 = 0xffff_fffd;
/// OFPP_IN_PORT.
pub const PORT_IN_PORT: u32 = 0xffff_fff8;

/// A message with its transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfpMessage {
    pub xid: u32,
    pub body: Message,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `versions`: the OFPHET_VERSIONBITMAP's first word, when present.
    Hello {
        versions: Option<u32>,
    },
    /// `data` holds (at least the start of) the request that failed.
    Error {
        kind: u16,
        code: u16,
        data: Vec<u8>,
    },
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    FeaturesRequest,
    FeaturesReply(Features),
    PacketIn(PacketIn),
    PortStatus {
        reason: u8,
        port: Port,
    },
    PacketOut(PacketOut),
    FlowMod(FlowMod),
    MultipartRequest(MultipartRequest),
    MultipartReply(MultipartReply),
    BarrierRequest,
    BarrierReply,
    RoleRequest(Role),
    RoleReply(Role),
    /// ONF bundle control (open, close, commit, discard and their replies).
    BundleControl(BundleControl),
    /// A message added to an open bundle; its xid is the bundle add's own.
    BundleAdd {
        bundle_id: u32,
        flags: u16,
        message: Box<Message>,
    },
    /// Any other type, body kept as is.
    Other {
        kind: u8,
        body: Vec<u8>,
    },
}

/// ONF bundle control types (ONF EXT-230).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleCtrl {
    OpenRequest,
    OpenReply,
    CloseRequest,
    CloseReply,
    CommitRequest,
    CommitReply,
    DiscardRequest,
    DiscardReply,
}

impl BundleCtrl {
    const ALL: [BundleCtrl; 8] = [
        BundleCtrl::OpenRequest,
        BundleCtrl::OpenReply,
        BundleCtrl::CloseRequest,
        BundleCtrl::CloseReply,
        BundleCtrl::CommitRequest,
        BundleCtrl::CommitReply,
        BundleCtrl::DiscardRequest,
        BundleCtrl::DiscardReply,
    ];
    fn code(self) -> u16 {
        BundleCtrl::ALL.iter().position(|k| *k == self).unwrap_or(0) as u16
    }
    fn from_code(c: u16) -> Result<Self, DecodeError> {
        BundleCtrl::ALL
            .get(c as usize)
            .copied()
            .ok_or(DecodeError::BadValue {
                what: "bundle control type",
                value: c as u64,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleControl {
    pub bundle_id: u32,
    pub kind: BundleCtrl,
    pub flags: u16,
}

/// One port's counters (ofp_port_stats).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortStats {
    pub port_no: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub duration_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub datapath_id: u64,
    pub n_buffers: u32,
    pub n_tables: u8,
    pub auxiliary_id: u8,
    pub capabilities: u32,
}

/// ofp_flow_mod_command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowModCommand {
    Add,
    Modify,
    ModifyStrict,
    Delete,
    DeleteStrict,
}

impl FlowModCommand {
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            0 => FlowModCommand::Add,
            1 => FlowModCommand::Modify,
            2 => FlowModCommand::ModifyStrict,
            3 => FlowModCommand::Delete,
            4 => FlowModCommand::DeleteStrict,
            v => {
                return Err(DecodeError::BadValue {
                    what: "flow_mod command",
                    value: v.into(),
                })
            }
        })
    }
}

/// ofp_flow_mod without its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMod {
    pub cookie: u64,
    pub cookie_mask: u64,
    pub table_id: u8,
    pub command: FlowModCommand,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub priority: u16,
    pub buffer_id: u32,
    pub out_port: u32,
    pub out_group: u32,
    pub flags: u16,
    pub matches: Vec<OxmField>,
    pub instructions: Vec<Instruction>,
}

impl FlowMod {
    /// An `add` of a flow with our `cookie`, matching `matches` and applying `actions`.
    pub fn add(
        cookie: u64,
        table_id: u8,
        priority: u16,
        matches: Vec<OxmField>,
        actions: Vec<Action>,
    ) -> FlowMod {
        FlowMod {
            cookie,
            cookie_mask: 0,
            table_id,
            command: FlowModCommand::Add,
            idle_timeout: 0,
            hard_timeout: 0,
            priority,
            buffer_id: NO_BUFFER,
            out_port: ANY,
            out_group: ANY,
            flags: 0,
            matches,
            instructions: vec![Instruction::ApplyActions(actions)],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    GotoTable(u8),
    WriteMetadata { metadata: u64, mask: u64 },
    WriteActions(Vec<Action>),
    ApplyActions(Vec<Action>),
    ClearActions,
    Meter(u32),
    Other { kind: u16, body: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Output { port: u32, max_len: u16 },
    CopyTtlOut,
    CopyTtlIn,
    SetMplsTtl(u8),
    DecMplsTtl,
    PushVlan(u16),
    PopVlan,
    PushMpls(u16),
    PopMpls(u16),
    SetQueue(u32),
    Group(u32),
    SetNwTtl(u8),
    DecNwTtl,
    SetField(OxmField),
    Other { kind: u16, body: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketIn {
    pub buffer_id: u32,
    pub total_len: u16,
    pub reason: u8,
    pub table_id: u8,
    pub cookie: u64,
    pub matches: Vec<OxmField>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketOut {
    pub buffer_id: u32,
    pub in_port: u32,
    pub actions: Vec<Action>,
    pub data: Vec<u8>,
}

/// ofp_port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    /// Up to 15 bytes (the wire field is 16, NUL-terminated).
    pub name: String,
    pub config: u32,
    pub state: u32,
    pub curr: u32,
    pub advertised: u32,
    pub supported: u32,
    pub peer: u32,
    pub curr_speed: u32,
    pub max_speed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub role: u32,
    pub generation_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartRequest {
    Flow {
        flags: u16,
        table_id: u8,
        out_port: u32,
        out_group: u32,
        cookie: u64,
        cookie_mask: u64,
        matches: Vec<OxmField>,
    },
    PortDesc {
        flags: u16,
    },
    /// Counters of one port, or of all (`ANY`).
    PortStats {
        flags: u16,
        port_no: u32,
    },
    Other {
        kind: u16,
        flags: u16,
        body: Vec<u8>,
    },
}

impl MultipartRequest {
    /// Flow stats of every table for the flows carrying `cookie` (how reconcile reads back what
    /// is ours).
    pub fn flows_by_cookie(cookie: u64) -> MultipartRequest {
        MultipartRequest::Flow {
            flags: 0,
            table_id: 0xff,
            out_port: ANY,
            out_group: ANY,
            cookie,
            cookie_mask: u64::MAX,
            matches: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartReply {
    /// `flags` bit 0 (OFPMPF_REPLY_MORE): more replies follow.
    Flow {
        flags: u16,
        flows: Vec<FlowStats>,
    },
    PortDesc {
        flags: u16,
        ports: Vec<Port>,
    },
    PortStats {
        flags: u16,
        stats: Vec<PortStats>,
    },
    Other {
        kind: u16,
        flags: u16,
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    pub table_id: u8,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub priority: u16,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub flags: u16,
    pub cookie: u64,
    pub packet_count: u64,
    pub byte_count: u64,
    pub matches: Vec<OxmField>,
    pub instructions: Vec<Instruction>,
}

// ---- matches, instructions, actions ------------------------------------------------------

/// ofp_match of type OFPMT_OXM, padded to 8 bytes.
fn encode_match(out: &mut Vec<u8>, fields: &[OxmField]) -> Result<(), EncodeError> {
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
fn is_bundle_add(buf: &[u8]) -> bool {
    buf.len() >= 16
        && buf[1] == EXPERIMENTER
        && buf[8..12] == ONF_EXPERIMENTER.to_be_bytes()
        && buf[12..16] == ONF_ET_BUNDLE_ADD_MESSAGE.to_be_bytes()
}

fn decode_match(r: &mut Reader) -> Result<Vec<OxmField>, DecodeError> {
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

fn encode_actions(out: &mut Vec<u8>, actions: &[Action]) -> Result<(), EncodeError> {
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
fn next_tlv<'a>(
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
fn finish_tlv(out: &mut Vec<u8>, start: usize, what: &'static str) -> Result<(), EncodeError> {
    pad8(out);
    let len = out.len() - start;
    put_len(out, start + 2, len, what)
}

fn decode_actions(mut r: Reader) -> Result<Vec<Action>, DecodeError> {
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

fn encode_instructions(out: &mut Vec<u8>, ins: &[Instruction]) -> Result<(), EncodeError> {
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

fn decode_instructions(mut r: Reader) -> Result<Vec<Instruction>, DecodeError> {
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

fn encode_port(out: &mut Vec<u8>, p: &Port) {
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

fn decode_port(r: &mut Reader) -> Result<Port, DecodeError> {
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

fn mp_header(out: &mut Vec<u8>, kind: u16, flags: u16) {
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
