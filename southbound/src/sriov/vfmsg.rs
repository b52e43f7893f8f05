//! The PF-side settings of one VF (`ip link set <pf> vf N mac M vlan V`): an `RTM_SETLINK` on
//! the PF carrying `IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC, IFLA_VF_VLAN } }`. Sans-IO:
//! [`encode`] builds the message and [`decode`] reads the same attributes back (from our own
//! bytes, or from the PF's `RTM_NEWLINK` when its VFs are dumped); the wiring sends it.
//!
//! `IFLA_VF_MAC` is `{u32 vf; u8 mac[32]}`, `IFLA_VF_VLAN` is `{u32 vf; u32 vlan; u32 qos}`
//! (`linux/if_link.h`); VLAN 0 clears the VF's VLAN.

use rtnetlink::packet_core::{Emitable, Parseable};
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoVlan,
};

/// What we set on the PF for one VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfSettings {
    /// The PF's interface index.
    pub pf_index: u32,
    /// The VF's number on its PF (`virtfnN`).
    pub vf: u32,
    pub mac: Option<[u8; 6]>,
    /// 1 to 4094 tags the VF's traffic; 0 clears a tag.
    pub vlan: Option<u16>,
}

/// The `RTM_SETLINK` message for `s`.
pub fn encode(s: &VfSettings) -> LinkMessage {
    let mut info = Vec::new();
    if let Some(mac) = s.mac {
        info.push(VfInfo::Mac(VfInfoMac::new(s.vf, &mac)));
    }
    if let Some(vlan) = s.vlan {
        info.push(VfInfo::Vlan(VfInfoVlan::new(s.vf, u32::from(vlan), 0)));
    }
    let mut msg = LinkMessage::default();
    msg.header.index = s.pf_index;
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(info)]));
    msg
}

/// The message's bytes (header and attributes, without the netlink header).
pub fn to_bytes(msg: &LinkMessage) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    buf
}

/// The VF settings a link message carries, one per VF it names.
pub fn decode(bytes: &[u8]) -> Result<Vec<VfSettings>, String> {
    let msg = LinkMessage::parse(bytes).map_err(|e| format!("link message: {e}"))?;
    let mut out: Vec<VfSettings> = Vec::new();
    for a in &msg.attributes {
        let LinkAttribute::VfInfoList(list) = a else {
            continue;
        };
        for LinkVfInfo(info) in list {
            let mut s = VfSettings {
                pf_index: msg.header.index,
                vf: 0,
                mac: None,
                vlan: None,
            };
            for i in info {
                match i {
                    VfInfo::Mac(m) => {
                        s.vf = m.vf_id;
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&m.mac[..6]);
                        s.mac = Some(mac);
                    }
                    VfInfo::Vlan(v) => {
                        s.vf = v.vf_id;
                        s.vlan = Some(u16::try_from(v.vlan_id).map_err(|_| {
                            format!("VF {}: VLAN {} out of range", v.vf_id, v.vlan_id)
                        })?);
                    }
                    _ => {}
                }
            }
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_bytes_are_what_the_kernel_reads() {
        let s = VfSettings {
            pf_index: 7,
            vf: 3,
            mac: Some([0x02, 0, 0, 0, 0, 0x42]),
            vlan: Some(100),
        };
        let b = to_bytes(&encode(&s));
        // ifinfomsg: family, pad, type, index (7), flags, change.
        assert_eq!(&b[4..8], &7u32.to_ne_bytes());
        let attrs = &b[16..];
        // IFLA_VFINFO_LIST (22) ⊃ IFLA_VF_INFO (1) ⊃ IFLA_VF_MAC (1), IFLA_VF_VLAN (2).
        let len = |o: usize| u16::from_ne_bytes([attrs[o], attrs[o + 1]]) as usize;
        let kind = |o: usize| u16::from_ne_bytes([attrs[o + 2], attrs[o + 3]]);
        assert_eq!(kind(0), 22);
        assert_eq!(kind(4), 1);
        assert_eq!((kind(8), len(8)), (1, 4 + 4 + 32));
        assert_eq!(&attrs[12..16], &3u32.to_ne_bytes());
        assert_eq!(&attrs[16..22], &[0x02, 0, 0, 0, 0, 0x42]);
        let vlan = 8 + 40;
        assert_eq!((kind(vlan), len(vlan)), (2, 4 + 12));
        assert_eq!(
            &attrs[vlan + 4..vlan + 16],
            &[3u32.to_ne_bytes(), 100u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat()[..]
        );
        assert_eq!(len(0), attrs.len());
        assert_eq!(decode(&b).unwrap(), vec![s]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0u8; 3]).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(pf in 1u32.., vf in 0u32..65535, mac in any::<[u8; 6]>(), vlan in 0u16..4095) {
            let s = VfSettings { pf_index: pf, vf, mac: Some(mac), vlan: Some(vlan) };
            prop_assert_eq!(decode(&to_bytes(&encode(&s))).unwrap(), vec![s]);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
