//! `cargo +nightly fuzz run netconf_decode`: any bytes, in any chunks, under 1.0 or 1.1 framing,
//! give messages or an error (never a panic), and every message re-frames to itself; replies and
//! hellos parse or fail cleanly; a get-config reply's ownership marks are read or refused
//! cleanly. The corpus in fuzz/corpus/netconf_decode is replayed on stable
//! by ensm-adapters/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_ensm_adapters::netconf::{framing, xml};
use meshwire_ensm_adapters::profile::{owned_entries, Inventory};

fuzz_target!(|data: &[u8]| {
    framing::check_decode(data);
    let _ = xml::parse_reply(data);
    let _ = xml::parse_hello(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let inv = Inventory {
            filter: String::new(),
            entry: "tunnel".into(),
            key: "name".into(),
            owner: "description".into(),
            remove: String::new(),
        };
        let _ = owned_entries(&inv, text);
    }
});
