//! Tests of the parent module.

use super::*;

/// Input: templates whose error quote would end inside a multi-byte character (4-byte
/// characters after `{{`, unclosed and malformed). Output: an error quoting the text up to a
/// character boundary, never a panic.
#[test]
fn file_error_quotes_cut_at_character_boundaries() {
    let unclosed = format!("<a>{{{{{}", "𝄞".repeat(10));
    let e = placeholders(&unclosed).unwrap_err();
    assert!(e.starts_with("unclosed {{ near"), "{e}");
    let malformed = format!("{{{{{}}}}}", "𝄞".repeat(10));
    let e = placeholders(&malformed).unwrap_err();
    assert!(e.contains("malformed"), "{e}");
    for cut in 0..malformed.len() {
        if malformed.is_char_boundary(cut) {
            let _ = placeholders(&malformed[..cut]);
        }
    }
}

const GOOD: &str = "apiVersion: meshwire.io/v1\nkind: DeviceProfile\nmetadata: {name: t}\nspec:\n  mechanisms:\n    vxlan:\n      range: {start: 10, end: 20}\n      config: '<t xmlns=\"urn:x\"><vni>{{vni}}</vni><d>meshwire:{{connection}}</d></t>'\n      remove: '<t xmlns=\"urn:x\" xmlns:nc=\"urn:ietf:params:xml:ns:netconf:base:1.0\" nc:operation=\"remove\"/>'\n";

#[test]
fn file_shipped_profiles_load() {
    for f in ["meshwire-appliance.yaml", "ietf-interfaces.yaml"] {
        let p = Profile::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("profiles")
                .join(f),
        )
        .unwrap();
        assert!(!p.mechanisms.is_empty(), "{f}");
    }
}

#[test]
fn file_bad_profiles_are_refused_with_the_reason() {
    let p = Profile::parse("t.yaml", GOOD).unwrap();
    assert_eq!(
        p.capabilities().vxlan.unwrap().vni_range,
        Range::new(10, 20)
    );
    let cases = [
        (
            GOOD.replace("{{vni}}", "{{vnid}}"),
            "unknown variable {{vnid}} (known for vxlan:",
        ),
        (GOOD.replace("</vni>", "</vn>"), "not well-formed XML"),
        (
            GOOD.replace("vxlan:", "kernel:"),
            "a device is reached over vxlan, gre, mpls or vlan",
        ),
        (GOOD.replace("{{vni}}", "{{vni"), "unclosed or malformed"),
        (
            GOOD.replace("start: 10", "start: 30"),
            "start 30 is above end 20",
        ),
                    (
            GOOD.replace("DeviceProfile", "Device"),
            "expected apiVersion meshwire.io/v1 and kind DeviceProfile",
        ),
        (
            GOOD.replace("spec:\n", "spec:\n  crossConnect: {config: '<x>{{vni}}</x>', remove: '<x/>'}\n"),
            "crossConnect.config: unknown variable {{vni}}",
        ),
        (
            GOOD.replace("spec:\n", "spec:\n  commit: {settle: forever}\n"),
            "commit.settle \"forever\"",
        ),
        (
            GOOD.replace("spec:\n", "spec:\n  inventory: {filter: '<t/>', entry: t, key: n, owner: d, remove: '<t>{{vni}}</t>'}\n"),
            "inventory.remove: unknown variable {{vni}} (only {{name}}",
        ),
    ];
    for (text, want) in cases {
        let e = Profile::parse("t.yaml", &text).unwrap_err().to_string();
        assert!(
            e.starts_with("profile t.yaml: ") && e.contains(want),
            "{e} / {want}"
        );
    }
}

#[test]
fn client_side_vars_mirror_the_endpoint_side() {
    let mut c: Connection = serde_json::from_str(
        r#"{"id":"0123abcd-1111","network_service":"s","network_service_endpoint_name":"gw","payload":"IP","client":{"node":"fw1"},"interface":"nsm-1","path":[],"hops":[{"from":"fw1","to":"w","mechanism":{"type":"vxlan","vni":5001,"src_ip":"192.168.74.2","dst_ip":"192.168.74.1","port":4789}}],"placement":{"client_device":"fw1"},"ip_context":{"src_ip_addrs":["172.16.10.1/31"],"dst_ip_addrs":["172.16.10.0/31"]},"mtu":1450,"state":"up","created_at_ms":0,"updated_at_ms":0,"generation":0}"#,
    )
    .unwrap();
    let m = c.hops[0].mechanism.clone();
    let e = connection_vars(&c, &m);
    let cl = client_vars(&c, &m);
    assert_eq!(
        (e["address"].as_str(), e["remote"].as_str()),
        ("172.16.10.0/31", "192.168.74.2")
    );
    assert_eq!(
        (cl["address"].as_str(), cl["peer_address"].as_str()),
        ("172.16.10.1/31", "172.16.10.0")
    );
    assert_eq!(
        (cl["remote"].as_str(), cl["local"].as_str()),
        ("192.168.74.1", "192.168.74.2")
    );
    assert_eq!(tunnel_name(&c.id), "mw0123abcd");
    c.id = "ff".into();
    assert_eq!(tunnel_name(&c.id), "mwff");
}

#[test]
fn values_are_escaped() {
    let mut v = BTreeMap::new();
    v.insert("name", "a<b&c".to_string());
    assert_eq!(
        render("<n>{{ name }}</n>", &v).unwrap(),
        "<n>a&lt;b&amp;c</n>"
    );
    assert!(render("{{x}}", &v)
        .unwrap_err()
        .contains("no value for {{x}}"));
}
