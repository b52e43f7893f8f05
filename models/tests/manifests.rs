//! Input: manifests, upstream NSM's own (verbatim, see fixtures/upstream-nsm/SOURCES) and bad ones.
//! Output: parsed objects, or one error naming file, document, object, field and rule.

use meshwire_models::{Manifest, Object, Payload};

fn parse(text: &str) -> Result<Manifest, String> {
    Manifest::parse("test.yaml", text).map_err(|e| e.to_string())
}

#[test]
fn file_upstream_manifests_parse_verbatim() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-nsm");
    let mut docs = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let m =
            Manifest::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        docs += m.objects.len();
    }
    assert_eq!(docs, 10, "the upstream set holds ten documents");
}

#[test]
fn file_upstream_semantics_kept() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-nsm");
    let text =
        std::fs::read_to_string(format!("{dir}/features--scale-from-zero--netsvc.yaml")).unwrap();
    let m = parse(&text).unwrap();
    let Object::NetworkService(ns) = &m.objects[0] else {
        panic!()
    };
    assert_eq!(ns.payload, Payload::Ethernet);
    assert!(ns.matches[0].fallthrough);
    assert!(
        ns.matches[0].source_selector.is_empty(),
        "null selector is empty"
    );
    assert_eq!(
        ns.matches[0].routes[0].destination_selector["nodeName"],
        "{{.nodeName}}"
    );

    let text =
        std::fs::read_to_string(format!("{dir}/features--select-forwarder--service.yaml")).unwrap();
    let Object::NetworkService(ns) = &parse(&text).unwrap().objects[0] else {
        panic!()
    };
    assert_eq!(ns.matches[0].labels["my_forwarder_capability"], "true");

    let text = std::fs::read_to_string(format!(
        "{dir}/use-cases--Kernel2Kernel_Vfio2NoopVlanTag--netsvc.yaml"
    ))
    .unwrap();
    let m = parse(&text).unwrap();
    assert_eq!(m.objects.len(), 2);
    let Object::NetworkService(ns) = &m.objects[1] else {
        panic!()
    };
    assert_eq!(ns.name, "vfio2noop-vlantag");
    assert_eq!(
        ns.payload,
        Payload::Ip,
        "a document without spec gets the default payload"
    );
}

const NSE: &str = r#"
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata:
  name: e1
spec:
  network_service_names: [vpn]
  network_service_labels:
    vpn:
      labels: {app: vpn-gateway}
  location: {node: gateway}
  mechanisms:
    kernel: {}
    vxlan: {vniRange: {start: 1000, end: 4000}}
  capacity: 10
  ipamPrefix: 172.16.0.0/24
  routes: [10.60.0.0/16]
"#;

#[test]
fn file_endpoint_with_meshwire_fields() {
    let m = parse(NSE).unwrap();
    let Object::NetworkServiceEndpoint(e) = &m.objects[0] else {
        panic!()
    };
    assert_eq!(e.capacity, Some(10));
    assert_eq!(e.mechanisms.vxlan.as_ref().unwrap().vni_range.end, 4000);
    assert_eq!(e.mechanisms.vxlan.as_ref().unwrap().port, 4789);
    assert!(
        e.mechanisms.gre.is_none(),
        "listing mechanisms replaces the defaults"
    );
    assert_eq!(e.routes[0].to_string(), "10.60.0.0/16");
}

#[test]
fn file_errors_name_file_document_object_field_and_rule() {
    let cases = [
        (
            format!("---\n{}---\n{}", "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: vpn}\n", NSE.replace("start: 1000", "start: 5000")),
            "test.yaml: document 2 (NetworkServiceEndpoint/e1): spec.mechanisms.vxlan.vniRange: start 5000 is above end 4000",
        ),
        (NSE.replace("10.60.0.0/16", "10.60.0.0/33"), "spec.routes[0]: \"10.60.0.0/33\" is not a prefix"),
        (NSE.replace("capacity: 10", "capacity: 0"), "spec.capacity: must be at least 1"),
        (NSE.replace("vniRange", "vniRnage"), "spec.mechanisms.vxlan.vniRnage: unknown field `vniRnage`, expected `vniRange` or `port`"),
        (NSE.replace("location: {node: gateway}", ""), "spec.location: required"),
        (NSE.replace("name: e1", "name: \"bad name\""), "metadata.name: \"bad name\" contains ' '"),
        (NSE.replace("networkservicemesh.io/v1", "v1"), "kind: v1/NetworkServiceEndpoint is not a kind Meshwire knows"),
        (NSE.replace("    vpn:\n", "    other:\n"), "spec.network_service_labels.other: other is not in network_service_names"),
        ("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: s}\nspec:\n  matches:\n  - routes:\n    - destination_selector: {app: \"{{.app\"}\n".to_string(), "spec.matches[0].routes[0].destination_selector.app"),
        ("apiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: l}\nspec: {endpoints: [\"a:eth1\", \"a:eth2\"]}\n".to_string(), "both ends are on a"),
        ("apiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: l}\nspec: {endpoints: [\"a:eth1\", \"b\"]}\n".to_string(), "spec.endpoints[1]: \"b\" is not of the form node:interface"),
        ("a: [".to_string(), "test.yaml: document 1: (document):"),
    ];
    for (text, want) in cases {
        let got = parse(&text).expect_err(want);
        assert!(got.contains(want), "want {want:?} in {got:?}");
        assert!(
            !got.contains('\n') || want.contains("document 1: (document)"),
            "one line: {got}"
        );
    }
}

#[test]
fn file_unknown_upstream_fields_are_warnings() {
    let m = parse(&NSE.replace(
        "  capacity: 10",
        "  capacity: 10\n  initial_registration_time: \"2024-01-01T00:00:00Z\"",
    ))
    .unwrap();
    assert_eq!(m.warnings.len(), 1);
    assert!(
        m.warnings[0].contains("spec.initial_registration_time is not used"),
        "{:?}",
        m.warnings
    );
}

#[test]
fn file_json_and_lists_are_accepted() {
    let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"meshwire.io/v1","kind":"Node","metadata":{"name":"n1"},"spec":{"forwarder":"ovs","underlayAddress":"192.0.2.1"}}]}"#;
    let m = parse(json).unwrap();
    let Object::Node(n) = &m.objects[0] else {
        panic!()
    };
    assert_eq!(n.underlay_address.unwrap().to_string(), "192.0.2.1");
}

/// Input: a NetworkServiceEndpoint as `kubectl get nse -o yaml` prints upstream registry-k8s'
/// resources (Go's `encoding/json` of a protobuf Timestamp), and hostile timestamps.
/// Output: the same expiry as the RFC 3339 form; overflowing or negative times are refused
/// with the field named, never wrapped.
#[test]
fn file_expiration_time_in_both_forms() {
    let nse = |t: &str| {
        format!("apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata:\n  name: e\n  namespace: nsm-system\n  resourceVersion: \"812\"\nspec:\n  name: e\n  network_service_names: [s]\n  network_service_labels: {{s: {{labels: {{nodeName: n1}}}}}}\n  expiration_time: {t}\n")
    };
    let at = |m: &Manifest| match &m.objects[0] {
        Object::NetworkServiceEndpoint(e) => e.expires_at_ms,
        _ => panic!(),
    };
    let go = parse(&nse("{seconds: 1893553445, nanos: 678000000}")).unwrap();
    let rfc = parse(&nse("\"2030-01-02T03:04:05.678Z\"")).unwrap();
    assert_eq!(at(&go), Some(1_893_553_445_678));
    assert_eq!(at(&go), at(&rfc));
    assert_eq!(at(&parse(&nse("{}")).unwrap()), None, "a zero time is none");
    for bad in [
        "{seconds: 9223372036854775807}",
        "{seconds: -5}",
        "{seconds: 1, nanos: 2000000000}",
        "{seconds: 1, minutes: 2}",
    ] {
        let e = parse(&nse(bad)).unwrap_err();
        assert!(e.contains("spec.expiration_time"), "{bad}: {e}");
    }
}
