//! Input: every file of fuzz/corpus/netconf_decode (hand-written seeds, plus what `cargo fuzz`
//! found). Output: the NETCONF decoders' contract holds for each (`framing::check_decode`, and
//! reply/hello parsing fails cleanly), on stable, in every CI run.

use meshwire_ensm_adapters::netconf::{framing, xml};
use meshwire_ensm_adapters::profile::{owned_entries, Inventory};

#[test]
fn corpus_netconf_decode_holds_its_contract() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/netconf_decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        framing::check_decode(&data);
        let _ = xml::parse_reply(&data);
        let _ = xml::parse_hello(&data);
        if let Ok(text) = std::str::from_utf8(&data) {
            let inv = Inventory {
                filter: String::new(),
                entry: "tunnel".into(),
                key: "name".into(),
                owner: "description".into(),
                remove: String::new(),
            };
            let _ = owned_entries(&inv, text);
        }
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} inputs");
}
