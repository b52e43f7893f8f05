//! OpenFlow 1.3 messages and their bodies (OpenFlow 1.3.5, section 7).
//!
//! Rooms: `body` (matches, actions, instructions and ports inside messages) and `wire` (whole
//! messages to and from bytes).

mod body;
mod wire;

pub use wire::encode_into;

use super::codec::DecodeError;
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
