//! Input: generated messages and arbitrary bytes. Output: every message survives
//! encode → decode unchanged; no byte string makes the decoder panic; a byte-exact flow_mod.

use std::net::Ipv4Addr;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn arb_oxm() -> impl Strategy<Value = OxmField> {
    let ip = any::<u32>().prop_map(Ipv4Addr::from);
    prop_oneof![
        any::<u32>().prop_map(OxmField::InPort),
        (any::<[u8; 6]>(), option::of(any::<[u8; 6]>())).prop_map(|(v, m)| OxmField::EthDst(v, m)),
        (any::<[u8; 6]>(), option::of(any::<[u8; 6]>())).prop_map(|(v, m)| OxmField::EthSrc(v, m)),
        any::<u16>().prop_map(OxmField::EthType),
        (any::<u16>(), option::of(any::<u16>())).prop_map(|(v, m)| OxmField::VlanVid(v, m)),
        any::<u8>().prop_map(OxmField::IpProto),
        (ip.clone(), option::of(ip.clone())).prop_map(|(v, m)| OxmField::Ipv4Src(v, m)),
        (ip.clone(), option::of(ip.clone())).prop_map(|(v, m)| OxmField::Ipv4Dst(v, m)),
        (ip.clone(), option::of(ip.clone())).prop_map(|(v, m)| OxmField::ArpTpa(v, m)),
        any::<u32>().prop_map(OxmField::MplsLabel),
        (any::<u64>(), option::of(any::<u64>())).prop_map(|(v, m)| OxmField::TunnelId(v, m)),
        ip.prop_map(OxmField::TunIpv4Dst),
        (
            2u16..0x7fff,
            0u8..128,
            any::<bool>(),
            vec(any::<u8>(), 0..12)
        )
            .prop_map(|(class, field, hasmask, value)| OxmField::Other {
                class,
                field,
                hasmask,
                value
            }),
    ]
}

/// Bodies whose header-plus-body is a multiple of 8, as `Other` actions and instructions are.
fn aligned_body() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3).prop_flat_map(|k| vec(any::<u8>(), 4 + 8 * k))
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(port, max_len)| Action::Output { port, max_len }),
        Just(Action::CopyTtlOut),
        Just(Action::CopyTtlIn),
        any::<u8>().prop_map(Action::SetMplsTtl),
        Just(Action::DecMplsTtl),
        any::<u16>().prop_map(Action::PushVlan),
        Just(Action::PopVlan),
        any::<u16>().prop_map(Action::PushMpls),
        any::<u16>().prop_map(Action::PopMpls),
        any::<u32>().prop_map(Action::SetQueue),
        any::<u32>().prop_map(Action::Group),
        any::<u8>().prop_map(Action::SetNwTtl),
        Just(Action::DecNwTtl),
        arb_oxm().prop_map(Action::SetField),
        (26u16..0xfffe, aligned_body()).prop_map(|(kind, body)| Action::Other { kind, body }),
    ]
}

fn arb_instruction() -> impl Strategy<Value = Instruction> {
    prop_oneof![
        any::<u8>().prop_map(Instruction::GotoTable),
        (any::<u64>(), any::<u64>())
            .prop_map(|(metadata, mask)| Instruction::WriteMetadata { metadata, mask }),
        vec(arb_action(), 0..4).prop_map(Instruction::WriteActions),
        vec(arb_action(), 0..4).prop_map(Instruction::ApplyActions),
        Just(Instruction::ClearActions),
        any::<u32>().prop_map(Instruction::Meter),
        (7u16..0xfffe, aligned_body()).prop_map(|(kind, body)| Instruction::Other { kind, body }),
    ]
}

fn arb_port() -> impl Strategy<Value = Port> {
    (
        any::<u32>(),
        any::<[u8; 6]>(),
        "[a-z0-9-]{0,15}",
        any::<[u32; 8]>(),
    )
        .prop_map(|(port_no, hw_addr, name, v)| Port {
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

fn arb_command() -> impl Strategy<Value = FlowModCommand> {
    prop_oneof![
        Just(FlowModCommand::Add),
        Just(FlowModCommand::Modify),
        Just(FlowModCommand::ModifyStrict),
        Just(FlowModCommand::Delete),
        Just(FlowModCommand::DeleteStrict)
    ]
}

fn arb_flow_mod() -> impl Strategy<Value = FlowMod> {
    (
        (any::<u64>(), any::<u64>(), any::<u8>(), arb_command()),
        (any::<u16>(), any::<u16>(), any::<u16>()),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>()),
        vec(arb_oxm(), 0..5),
        vec(arb_instruction(), 0..4),
    )
        .prop_map(
            |(
                (cookie, cookie_mask, table_id, command),
                (idle_timeout, hard_timeout, priority),
                (buffer_id, out_port, out_group, flags),
                matches,
                instructions,
            )| FlowMod {
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
            },
        )
}

fn arb_flow_stats() -> impl Strategy<Value = FlowStats> {
    (
        any::<(u8, u32, u32, u16, u16, u16, u16)>(),
        any::<(u64, u64, u64)>(),
        vec(arb_oxm(), 0..3),
        vec(arb_instruction(), 0..3),
    )
        .prop_map(
            |(
                (
                    table_id,
                    duration_sec,
                    duration_nsec,
                    priority,
                    idle_timeout,
                    hard_timeout,
                    flags,
                ),
                (cookie, packet_count, byte_count),
                matches,
                instructions,
            )| FlowStats {
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
            },
        )
}

fn not_known_mp(k: &u16) -> bool {
    *k != 1 && *k != 4 && *k != 13
}

fn arb_message() -> impl Strategy<Value = Message> {
    let data = || vec(any::<u8>(), 0..24);
    prop_oneof![
        option::of(any::<u32>()).prop_map(|versions| Message::Hello { versions }),
        (any::<u16>(), any::<u16>(), data()).prop_map(|(kind, code, data)| Message::Error {
            kind,
            code,
            data
        }),
        data().prop_map(Message::EchoRequest),
        data().prop_map(Message::EchoReply),
        Just(Message::FeaturesRequest),
        any::<(u64, u32, u8, u8, u32)>().prop_map(
            |(datapath_id, n_buffers, n_tables, auxiliary_id, capabilities)| Message::FeaturesReply(
                Features {
                    datapath_id,
                    n_buffers,
                    n_tables,
                    auxiliary_id,
                    capabilities
                }
            )
        ),
        (
            any::<(u32, u16, u8, u8, u64)>(),
            vec(arb_oxm(), 0..4),
            data()
        )
            .prop_map(
                |((buffer_id, total_len, reason, table_id, cookie), matches, data)| {
                    Message::PacketIn(PacketIn {
                        buffer_id,
                        total_len,
                        reason,
                        table_id,
                        cookie,
                        matches,
                        data,
                    })
                }
            ),
        (any::<u8>(), arb_port()).prop_map(|(reason, port)| Message::PortStatus { reason, port }),
        (any::<u32>(), any::<u32>(), vec(arb_action(), 0..4), data()).prop_map(
            |(buffer_id, in_port, actions, data)| Message::PacketOut(PacketOut {
                buffer_id,
                in_port,
                actions,
                data
            })
        ),
        arb_flow_mod().prop_map(Message::FlowMod),
        (any::<(u16, u8, u32, u32, u64, u64)>(), vec(arb_oxm(), 0..3)).prop_map(
            |((flags, table_id, out_port, out_group, cookie, cookie_mask), matches)| {
                Message::MultipartRequest(MultipartRequest::Flow {
                    flags,
                    table_id,
                    out_port,
                    out_group,
                    cookie,
                    cookie_mask,
                    matches,
                })
            }
        ),
        any::<u16>()
            .prop_map(|flags| Message::MultipartRequest(MultipartRequest::PortDesc { flags })),
        (
            any::<u16>().prop_filter("unmodelled", not_known_mp),
            any::<u16>(),
            data()
        )
            .prop_map(|(kind, flags, body)| Message::MultipartRequest(
                MultipartRequest::Other { kind, flags, body }
            )),
        (any::<u16>(), vec(arb_flow_stats(), 0..3)).prop_map(|(flags, flows)| {
            Message::MultipartReply(MultipartReply::Flow { flags, flows })
        }),
        (any::<u16>(), vec(arb_port(), 0..3)).prop_map(|(flags, ports)| Message::MultipartReply(
            MultipartReply::PortDesc { flags, ports }
        )),
        (
            any::<u16>().prop_filter("unmodelled", not_known_mp),
            any::<u16>(),
            data()
        )
            .prop_map(|(kind, flags, body)| Message::MultipartReply(
                MultipartReply::Other { kind, flags, body }
            )),
        Just(Message::BarrierRequest),
        Just(Message::BarrierReply),
        any::<(u32, u64)>().prop_map(|(role, generation_id)| Message::RoleRequest(Role {
            role,
            generation_id
        })),
        any::<(u32, u64)>().prop_map(|(role, generation_id)| Message::RoleReply(Role {
            role,
            generation_id
        })),
        (26u8..=255, data()).prop_map(|(kind, body)| Message::Other { kind, body }),
        (any::<u32>(), 0usize..8, any::<u16>()).prop_map(|(bundle_id, k, flags)| {
            let kinds = [
                BundleCtrl::OpenRequest,
                BundleCtrl::OpenReply,
                BundleCtrl::CloseRequest,
                BundleCtrl::CloseReply,
                BundleCtrl::CommitRequest,
                BundleCtrl::CommitReply,
                BundleCtrl::DiscardRequest,
                BundleCtrl::DiscardReply,
            ];
            Message::BundleControl(BundleControl {
                bundle_id,
                kind: kinds[k],
                flags,
            })
        }),
        (any::<u32>(), any::<u16>(), arb_flow_mod()).prop_map(|(bundle_id, flags, f)| {
            Message::BundleAdd {
                bundle_id,
                flags,
                message: Box::new(Message::FlowMod(f)),
            }
        }),
        (any::<u16>(), any::<u32>()).prop_map(|(flags, port_no)| Message::MultipartRequest(
            MultipartRequest::PortStats { flags, port_no }
        )),
        (any::<u16>(), vec(any::<(u32, [u64; 8], u32)>(), 0..3)).prop_map(|(flags, st)| {
            let stats = st
                .into_iter()
                .map(|(port_no, c, duration_sec)| PortStats {
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
                })
                .collect();
            Message::MultipartReply(MultipartReply::PortStats { flags, stats })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn messages_round_trip(xid in any::<u32>(), body in arb_message()) {
        let m = OfpMessage::new(xid, body);
        let bytes = m.encode().unwrap();
        prop_assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        let (back, used) = OfpMessage::decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in vec(any::<u8>(), 0..300)) {
        let _ = OfpMessage::decode(&bytes);
        // And with a valid header in front, so the body parsers are reached.
        if bytes.len() >= 8 {
            bytes[0] = VERSION;
            bytes[1] %= 30;
            let len = bytes.len() as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = OfpMessage::decode(&bytes);
        }
    }

    #[test]
    fn streams_split_anywhere(bodies in vec(arb_message(), 1..4), cut in any::<prop::sample::Index>()) {
        let msgs: Vec<OfpMessage> = bodies.into_iter().enumerate().map(|(i, b)| OfpMessage::new(i as u32, b)).collect();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode().unwrap()).collect();
        let at = cut.index(stream.len() + 1);
        // Feed the stream in two chunks, as a socket might deliver it.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in [&stream[..at], &stream[at..]] {
            buf.extend_from_slice(chunk);
            while let Some(n) = frame_len(&buf).unwrap() {
                got.push(OfpMessage::decode(&buf[..n]).unwrap().0);
                buf.drain(..n);
            }
        }
        prop_assert_eq!(got, msgs);
    }
}

#[test]
fn flow_mod_bytes_match_the_spec_layout() {
    // add, table 0, priority 100, cookie 0x4d57 ("MW"): in_port=1 -> set tunnel id 5001, output 2.
    let fm = FlowMod::add(
        0x4d57,
        0,
        100,
        vec![OxmField::InPort(1)],
        vec![
            Action::SetField(OxmField::TunnelId(5001, None)),
            Action::Output {
                port: 2,
                max_len: 0,
            },
        ],
    );
    let bytes = OfpMessage::new(7, Message::FlowMod(fm)).encode().unwrap();
    let want: Vec<u8> = [
        &[0x04, 14, 0, 104, 0, 0, 0, 7][..], // header: v1.3, FLOW_MOD, length 104 (8 + 40 + 16 + 40), xid 7
        &[0, 0, 0, 0, 0, 0, 0x4d, 0x57, 0, 0, 0, 0, 0, 0, 0, 0], // cookie, cookie_mask
        &[0, 0, 0, 0, 0, 0, 0, 100],         // table 0, ADD, idle 0, hard 0, priority 100
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // buffer_id NO_BUFFER, out_port ANY
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], // out_group ANY, flags 0, pad
        &[0, 1, 0, 12, 0x80, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0], // match: OXM, len 12, in_port=1, pad to 16
        &[0, 4, 0, 40, 0, 0, 0, 0],                            // APPLY_ACTIONS, len 40
        &[0, 25, 0, 16, 0x80, 0, 76, 8, 0, 0, 0, 0, 0, 0, 0x13, 0x89], // SET_FIELD tunnel_id=5001
        &[0, 0, 0, 16, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],    // OUTPUT port 2
    ]
    .concat();
    assert_eq!(bytes, want);
}

#[test]
fn hostile_lengths_are_errors_not_panics() {
    // A flow_mod whose match claims more bytes than there are.
    let mut bytes = OfpMessage::new(1, Message::FlowMod(FlowMod::add(1, 0, 1, vec![], vec![])))
        .encode()
        .unwrap();
    bytes[50..52].copy_from_slice(&0xfff0u16.to_be_bytes());
    assert!(matches!(
        OfpMessage::decode(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
    // A header claiming a length below its own size.
    assert!(matches!(
        frame_len(&[4, 0, 0, 3, 0, 0, 0, 0]),
        Err(DecodeError::BadLength { .. })
    ));
    assert!(matches!(
        OfpMessage::decode(&[1, 0, 0, 8, 0, 0, 0, 0]),
        Err(DecodeError::BadVersion(1))
    ));
}

/// Input: a bundle add nested 2,700 deep in under 64 KiB, as any TCP peer can send before the
/// handshake. Output: refused at the first level, on a thread with a 64 KiB stack (the old
/// decoder recursed once per level first).
#[test]
fn dev_nested_bundle_add_is_refused_before_recursing() {
    let mut msg = OfpMessage::new(1, Message::BarrierRequest)
        .encode()
        .unwrap();
    let mut levels = 0;
    while msg.len() + 24 <= 65_535 {
        let mut outer = Vec::with_capacity(msg.len() + 24);
        let len = (msg.len() + 24) as u16;
        outer.extend_from_slice(&[VERSION, 4]);
        outer.extend_from_slice(&len.to_be_bytes());
        outer.extend_from_slice(&7u32.to_be_bytes());
        outer.extend_from_slice(&0x4F4E_4600u32.to_be_bytes());
        outer.extend_from_slice(&2301u32.to_be_bytes());
        outer.extend_from_slice(&1u32.to_be_bytes());
        outer.extend_from_slice(&[0, 0, 0, 0]);
        outer.extend_from_slice(&msg);
        msg = outer;
        levels += 1;
    }
    assert!(levels > 2_700, "{levels}");
    let r = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || OfpMessage::decode(&msg).map(|_| ()))
        .unwrap()
        .join()
        .expect("the decoder overflowed its stack");
    assert!(
        matches!(r, Err(DecodeError::BadValue { what, .. }) if what.contains("bundle add inside")),
        "{r:?}"
    );
}
