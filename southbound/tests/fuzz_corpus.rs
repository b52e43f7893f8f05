//! Input: every file of fuzz/corpus/openflow_decode (seeds written by this test with
//! MESHWIRE_REGENERATE=1, plus what `cargo fuzz` found) and fuzz/corpus/ovsdb_decode. Output:
//! each decoder's contract holds for each input (`openflow::check_decode`,
//! `ovsdb::check_decode`), on stable, in every CI run.

use std::path::PathBuf;

use meshwire_southbound::openflow::*;

fn corpus() -> PathBuf {
    corpus_of("openflow_decode")
}

fn corpus_of(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds() -> Vec<(&'static str, OfpMessage)> {
    let fm = FlowMod::add(
        0x4d57,
        0,
        100,
        vec![OxmField::InPort(1), OxmField::EthType(0x8847)],
        vec![
            Action::PopMpls(0x0800),
            Action::SetField(OxmField::TunIpv4Dst("192.0.2.2".parse().unwrap())),
            Action::Output {
                port: 2,
                max_len: 0,
            },
        ],
    );
    vec![
        (
            "hello",
            OfpMessage::new(
                1,
                Message::Hello {
                    versions: Some(1 << VERSION),
                },
            ),
        ),
        (
            "features-reply",
            OfpMessage::new(
                2,
                Message::FeaturesReply(Features {
                    datapath_id: 1,
                    n_buffers: 0,
                    n_tables: 254,
                    auxiliary_id: 0,
                    capabilities: 0x4f,
                }),
            ),
        ),
        ("flow-mod", OfpMessage::new(3, Message::FlowMod(fm))),
        (
            "error",
            OfpMessage::new(
                4,
                Message::Error {
                    kind: 2,
                    code: 9,
                    data: vec![4, 14, 0, 8, 0, 0, 0, 4],
                },
            ),
        ),
        (
            "multipart-flow-request",
            OfpMessage::new(
                5,
                Message::MultipartRequest(MultipartRequest::flows_by_cookie(0x4d57)),
            ),
        ),
        (
            "packet-out",
            OfpMessage::new(
                6,
                Message::PacketOut(PacketOut {
                    buffer_id: NO_BUFFER,
                    in_port: PORT_CONTROLLER,
                    actions: vec![Action::Output {
                        port: 1,
                        max_len: 0,
                    }],
                    data: vec![0xff; 14],
                }),
            ),
        ),
        (
            "role",
            OfpMessage::new(
                7,
                Message::RoleRequest(Role {
                    role: 2,
                    generation_id: 1,
                }),
            ),
        ),
    ]
}

/// Runs `check` on every input of `target`'s corpus; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for entry in
        std::fs::read_dir(corpus_of(target)).expect("the corpus directory is in the repository")
    {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(
            result.is_ok(),
            "corpus input {} breaks the decoder's contract",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn dev_fuzz_corpus_replays() {
    if std::env::var("MESHWIRE_REGENERATE").is_ok() {
        std::fs::create_dir_all(corpus()).unwrap();
        for (name, m) in seeds() {
            std::fs::write(corpus().join(format!("seed-{name}")), m.encode().unwrap()).unwrap();
        }
    }
    let n = replay("openflow_decode", check_decode);
    assert!(n >= seeds().len(), "corpus has {n} inputs");
}

#[test]
fn dev_ovsdb_fuzz_corpus_replays() {
    let n = replay("ovsdb_decode", meshwire_southbound::ovsdb::check_decode);
    assert!(n >= 6, "corpus has {n} inputs");
}
