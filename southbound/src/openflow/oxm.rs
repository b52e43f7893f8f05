//! OXM match fields (OpenFlow 1.3.5, 7.2.3), as used in matches and in set_field actions.
//!
//! ```text
//!  0                   1                   2                   3
//!  +-------------------------------+-------------+-+---------------+
//!  |           oxm_class           |  oxm_field  |M|  oxm_length   |
//!  +-------------------------------+-------------+-+---------------+
//!  |                 value (and mask when M is set)                 |
//! ```

use std::net::Ipv4Addr;

use super::codec::{DecodeError, Reader};

/// OXM class of the standard fields.
pub const OXM_OPENFLOW_BASIC: u16 = 0x8000;
/// Nicira extension class (NXM_NX), where Open vSwitch keeps tunnel metadata.
pub const NXM_NX: u16 = 0x0001;

// OFPXMT_OFB_* (OpenFlow 1.3.5, 7.2.3.7).
const IN_PORT: u8 = 0;
const ETH_DST: u8 = 3;
const ETH_SRC: u8 = 4;
const ETH_TYPE: u8 = 5;
const VLAN_VID: u8 = 6;
const IP_PROTO: u8 = 10;
const IPV4_SRC: u8 = 11;
const IPV4_DST: u8 = 12;
const ARP_TPA: u8 = 23;
const MPLS_LABEL: u8 = 34;
const TUNNEL_ID: u8 = 38;
// NXM_NX_TUN_IPV4_DST.
const NX_TUN_IPV4_DST: u8 = 32;

/// One match field. Fields Meshwire does not model are kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OxmField {
    InPort(u32),
    EthDst([u8; 6], Option<[u8; 6]>),
    EthSrc([u8; 6], Option<[u8; 6]>),
    EthType(u16),
    /// The VID with OFPVID_PRESENT (0x1000) set when a tag is required.
    VlanVid(u16, Option<u16>),
    IpProto(u8),
    Ipv4Src(Ipv4Addr, Option<Ipv4Addr>),
    Ipv4Dst(Ipv4Addr, Option<Ipv4Addr>),
    /// ARP target protocol address.
    ArpTpa(Ipv4Addr, Option<Ipv4Addr>),
    MplsLabel(u32),
    TunnelId(u64, Option<u64>),
    /// Open vSwitch's tunnel destination (NXM_NX_TUN_IPV4_DST), for flow-based tunnels.
    TunIpv4Dst(Ipv4Addr),
    Other {
        class: u16,
        field: u8,
        hasmask: bool,
        value: Vec<u8>,
    },
}

fn header(class: u16, field: u8, hasmask: bool, len: usize) -> [u8; 4] {
    let c = class.to_be_bytes();
    [c[0], c[1], (field << 1) | hasmask as u8, len as u8]
}

impl OxmField {
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn put(out: &mut Vec<u8>, field: u8, value: &[u8], mask: Option<&[u8]>) {
            let len = value.len() + mask.map_or(0, |m| m.len());
            out.extend_from_slice(&header(OXM_OPENFLOW_BASIC, field, mask.is_some(), len));
            out.extend_from_slice(value);
            if let Some(m) = mask {
                out.extend_from_slice(m);
            }
        }
        match self {
            OxmField::InPort(p) => put(out, IN_PORT, &p.to_be_bytes(), None),
            OxmField::EthDst(v, m) => put(out, ETH_DST, v, m.as_ref().map(|m| &m[..])),
            OxmField::EthSrc(v, m) => put(out, ETH_SRC, v, m.as_ref().map(|m| &m[..])),
            OxmField::EthType(t) => put(out, ETH_TYPE, &t.to_be_bytes(), None),
            OxmField::VlanVid(v, m) => put(
                out,
                VLAN_VID,
                &v.to_be_bytes(),
                m.map(|m| m.to_be_bytes()).as_ref().map(|m| &m[..]),
            ),
            OxmField::IpProto(p) => put(out, IP_PROTO, &[*p], None),
            OxmField::Ipv4Src(a, m) => put(
                out,
                IPV4_SRC,
                &a.octets(),
                m.map(|m| m.octets()).as_ref().map(|m| &m[..]),
            ),
            OxmField::Ipv4Dst(a, m) => put(
                out,
                IPV4_DST,
                &a.octets(),
                m.map(|m| m.octets()).as_ref().map(|m| &m[..]),
            ),
            OxmField::ArpTpa(a, m) => put(
                out,
                ARP_TPA,
                &a.octets(),
                m.map(|m| m.octets()).as_ref().map(|m| &m[..]),
            ),
            OxmField::MplsLabel(l) => put(out, MPLS_LABEL, &l.to_be_bytes(), None),
            OxmField::TunnelId(t, m) => put(
                out,
                TUNNEL_ID,
                &t.to_be_bytes(),
                m.map(|m| m.to_be_bytes()).as_ref().map(|m| &m[..]),
            ),
            OxmField::TunIpv4Dst(a) => {
                out.extend_from_slice(&header(NXM_NX, NX_TUN_IPV4_DST, false, 4));
                out.extend_from_slice(&a.octets());
            }
            OxmField::Other {
                class,
                field,
                hasmask,
                value,
            } => {
                out.extend_from_slice(&header(*class, *field, *hasmask, value.len()));
                out.extend_from_slice(value);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<OxmField, DecodeError> {
        let class = r.u16("oxm class")?;
        let fm = r.u8("oxm field")?;
        let (field, hasmask) = (fm >> 1, fm & 1 == 1);
        let len = r.u8("oxm length")? as usize;
        let value = r.bytes(len, "oxm value")?;
        let half = |v: &[u8]| -> (Vec<u8>, Option<Vec<u8>>) {
            if hasmask {
                (v[..v.len() / 2].to_vec(), Some(v[v.len() / 2..].to_vec()))
            } else {
                (v.to_vec(), None)
            }
        };
        let width = if hasmask { len / 2 } else { len };
        let typed = match (
            class,
            field,
            width,
            hasmask,
            len.is_multiple_of(2) || !hasmask,
        ) {
            (_, _, _, _, false) => None,
            (OXM_OPENFLOW_BASIC, IN_PORT, 4, false, _) => {
                Some(OxmField::InPort(u32::from_be_bytes(arr(value))))
            }
            (OXM_OPENFLOW_BASIC, ETH_DST, 6, _, _) => {
                let (v, m) = half(value);
                Some(OxmField::EthDst(arr(&v), m.map(|m| arr(&m))))
            }
            (OXM_OPENFLOW_BASIC, ETH_SRC, 6, _, _) => {
                let (v, m) = half(value);
                Some(OxmField::EthSrc(arr(&v), m.map(|m| arr(&m))))
            }
            (OXM_OPENFLOW_BASIC, ETH_TYPE, 2, false, _) => {
                Some(OxmField::EthType(u16::from_be_bytes(arr(value))))
            }
            (OXM_OPENFLOW_BASIC, VLAN_VID, 2, _, _) => {
                let (v, m) = half(value);
                Some(OxmField::VlanVid(
                    u16::from_be_bytes(arr(&v)),
                    m.map(|m| u16::from_be_bytes(arr(&m))),
                ))
            }
            (OXM_OPENFLOW_BASIC, IP_PROTO, 1, false, _) => Some(OxmField::IpProto(value[0])),
            (OXM_OPENFLOW_BASIC, ARP_TPA, 4, _, _) => {
                let (v, m) = half(value);
                Some(OxmField::ArpTpa(
                    Ipv4Addr::from(arr::<4>(&v)),
                    m.map(|m| Ipv4Addr::from(arr::<4>(&m))),
                ))
            }
            (OXM_OPENFLOW_BASIC, IPV4_SRC | IPV4_DST, 4, _, _) => {
                let (v, m) = half(value);
                let (a, m) = (
                    Ipv4Addr::from(arr::<4>(&v)),
                    m.map(|m| Ipv4Addr::from(arr::<4>(&m))),
                );
                Some(if field == IPV4_SRC {
                    OxmField::Ipv4Src(a, m)
                } else {
                    OxmField::Ipv4Dst(a, m)
                })
            }
            (OXM_OPENFLOW_BASIC, MPLS_LABEL, 4, false, _) => {
                Some(OxmField::MplsLabel(u32::from_be_bytes(arr(value))))
            }
            (OXM_OPENFLOW_BASIC, TUNNEL_ID, 8, _, _) => {
                let (v, m) = half(value);
                Some(OxmField::TunnelId(
                    u64::from_be_bytes(arr(&v)),
                    m.map(|m| u64::from_be_bytes(arr(&m))),
                ))
            }
            (NXM_NX, NX_TUN_IPV4_DST, 4, false, _) => {
                Some(OxmField::TunIpv4Dst(Ipv4Addr::from(arr::<4>(value))))
            }
            _ => None,
        };
        Ok(typed.unwrap_or_else(|| OxmField::Other {
            class,
            field,
            hasmask,
            value: value.to_vec(),
        }))
    }
}

/// The first N bytes of `v` (callers check the length first).
fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&v[..N]);
    a
}
