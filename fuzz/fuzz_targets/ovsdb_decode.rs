//! `cargo +nightly fuzz run ovsdb_decode`: the OVSDB framer and JSON-RPC reader on any bytes.
//! The corpus in fuzz/corpus/ovsdb_decode is replayed on stable by southbound/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshwire_southbound::ovsdb::check_decode(data);
});
