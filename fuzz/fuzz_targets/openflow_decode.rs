//! `cargo +nightly fuzz run openflow_decode`: any bytes either fail to decode with an error, or
//! decode to a message that encodes and decodes back to itself. The corpus in
//! fuzz/corpus/openflow_decode is replayed on stable by southbound/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_southbound::openflow::check_decode;

fuzz_target!(|data: &[u8]| {
    check_decode(data);
});
