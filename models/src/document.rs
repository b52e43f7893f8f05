//! Objects back as documents: the inverse of [`Manifest::parse`](crate::Manifest::parse).
//!
//! One shape for every interface: a manifest file, a REST resource and a Kubernetes custom
//! resource all carry `apiVersion`, `kind`, `metadata` and `spec` exactly as a manifest does, so
//! `parse(render(o)) == o` (property-tested) and whatever the API returns can be applied again.
//!
//! [`Object::etag`] is a stable fingerprint of an object's content, for `ETag` / `If-Match`.

use serde_json::{json, Map, Value};

use crate::labels::Labels;
use crate::manifest::{Object, MESHWIRE_API, NSM_API};
use crate::topology::LinkEnd;

fn labels(l: &Labels) -> Value {
    serde_json::to_value(l).unwrap_or_else(|_| Value::Object(Map::new()))
}

fn metadata(name: &str, l: &Labels) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name.to_string()));
    if !l.is_empty() {
        m.insert("labels".into(), labels(l));
    }
    Value::Object(m)
}

fn end(e: &LinkEnd) -> String {
    format!("{}:{}", e.vertex, e.interface)
}

/// Inserts `v` under `k` unless it is `None`.
fn put<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v.and_then(|v| serde_json::to_value(v).ok()) {
        m.insert(k.to_string(), v);
    }
}

/// Unix milliseconds as RFC 3339 (what `expiration_time` takes).
fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// FNV-1a, 64 bits: a stable (not cryptographic) fingerprint of bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Object {
    /// The object as a manifest document (`apiVersion`, `kind`, `metadata`, `spec`).
    pub fn to_document(&self) -> Value {
        let (api, kind, meta, spec) = match self {
            Object::NetworkService(s) => {
                let mut spec = Map::new();
                spec.insert("payload".into(), Value::String(s.payload.to_string()));
                if !s.matches.is_empty() {
                    let matches: Vec<Value> = s
                        .matches
                        .iter()
                        .map(|m| {
                            let mut o = Map::new();
                            if !m.source_selector.is_empty() {
                                o.insert("source_selector".into(), labels(&m.source_selector));
                            }
                            let routes: Vec<Value> = m
                                .routes
                                .iter()
                                .map(|r| {
                                    let mut d = Map::new();
                                    d.insert(
                                        "destination_selector".into(),
                                        labels(&r.destination_selector),
                                    );
                                    put(&mut d, "weight", r.weight);
                                    Value::Object(d)
                                })
                                .collect();
                            if !routes.is_empty() {
                                o.insert("routes".into(), Value::Array(routes));
                            }
                            if m.fallthrough {
                                o.insert("fallthrough".into(), Value::Bool(true));
                            }
                            if !m.labels.is_empty() {
                                o.insert("metadata".into(), json!({ "labels": labels(&m.labels) }));
                            }
                            Value::Object(o)
                        })
                        .collect();
                    spec.insert("matches".into(), Value::Array(matches));
                }
                (
                    NSM_API,
                    "NetworkService",
                    metadata(&s.name, &Labels::new()),
                    spec,
                )
            }
            Object::NetworkServiceEndpoint(e) => {
                let mut spec = Map::new();
                spec.insert(
                    "network_service_names".into(),
                    json!(e.network_service_names),
                );
                if !e.network_service_labels.is_empty() {
                    let l: Map<String, Value> = e
                        .network_service_labels
                        .iter()
                        .map(|(svc, l)| (svc.clone(), json!({ "labels": labels(l) })))
                        .collect();
                    spec.insert("network_service_labels".into(), Value::Object(l));
                }
                put(&mut spec, "url", e.url.as_ref());
                put(
                    &mut spec,
                    "expiration_time",
                    e.expires_at_ms.map(rfc3339_ms),
                );
                let location = match &e.location {
                    crate::EndpointLocation::Node { node, netns } => {
                        let mut l = Map::new();
                        l.insert("node".into(), Value::String(node.clone()));
                        put(&mut l, "netns", netns.as_ref());
                        Value::Object(l)
                    }
                    crate::EndpointLocation::Device { device } => json!({ "device": device }),
                };
                spec.insert("location".into(), location);
                put(&mut spec, "mechanisms", Some(&e.mechanisms));
                put(&mut spec, "capacity", e.capacity);
                put(
                    &mut spec,
                    "ipamPrefix",
                    e.ipam_prefix.map(|p| p.to_string()),
                );
                if !e.routes.is_empty() {
                    let r: Vec<String> = e.routes.iter().map(|p| p.to_string()).collect();
                    spec.insert("routes".into(), json!(r));
                }
                put(&mut spec, "interface", e.interface.as_ref());
                put(&mut spec, "bridge", e.bridge.as_ref());
                (
                    NSM_API,
                    "NetworkServiceEndpoint",
                    metadata(&e.name, &Labels::new()),
                    spec,
                )
            }
            Object::Node(n) => {
                let mut spec = Map::new();
                spec.insert("forwarder".into(), Value::String(n.forwarder.to_string()));
                put(&mut spec, "underlayAddress", n.underlay_address);
                put(&mut spec, "netns", n.netns.as_ref());
                put(&mut spec, "ovsdb", n.ovsdb.as_ref());
                (MESHWIRE_API, "Node", metadata(&n.name, &n.labels), spec)
            }
            Object::Device(d) => {
                let mut spec = Map::new();
                spec.insert("kind".into(), Value::String(d.kind.clone()));
                put(&mut spec, "address", d.address);
                put(&mut spec, "underlayAddress", d.underlay_address);
                put(&mut spec, "mechanisms", Some(&d.mechanisms));
                put(&mut spec, "ensm", d.ensm.as_ref());
                (MESHWIRE_API, "Device", metadata(&d.name, &d.labels), spec)
            }
            Object::Link(l) => {
                let mut spec = Map::new();
                spec.insert("endpoints".into(), json!([end(&l.a), end(&l.b)]));
                if let (Some(a), Some(b)) = (l.a.address, l.b.address) {
                    spec.insert("addresses".into(), json!([a.to_string(), b.to_string()]));
                }
                spec.insert("mtu".into(), json!(l.mtu));
                spec.insert("cost".into(), json!(l.cost));
                spec.insert("up".into(), json!(l.up));
                (
                    MESHWIRE_API,
                    "Link",
                    metadata(&l.name, &Labels::new()),
                    spec,
                )
            }
        };
        json!({ "apiVersion": api, "kind": kind, "metadata": meta, "spec": Value::Object(spec) })
    }

    /// A fingerprint of the object's content (FNV-1a 64 over its canonical JSON), for `ETag`.
    /// Equal objects have equal tags in every process and release that keeps the JSON form.
    pub fn etag(&self) -> String {
        format!(
            "{:016x}",
            fnv1a64(&serde_json::to_vec(self).unwrap_or_default())
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::Manifest;

    fn roundtrip(text: &str) {
        let m = Manifest::parse("t.yaml", text).unwrap();
        for o in m.objects {
            let doc = o.to_document();
            let back = Manifest::parse("doc.json", &doc.to_string())
                .unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(back.objects, vec![o.clone()], "{doc}");
            assert!(back.warnings.is_empty(), "{:?}", back.warnings);
            assert_eq!(back.objects[0].etag(), o.etag());
        }
    }

    #[test]
    fn documents_parse_back_to_the_same_objects() {
        roundtrip(
            r#"
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: vpn}
spec:
  payload: ETHERNET
  matches:
    - source_selector: {app: firewall}
      routes: [{destination_selector: {app: vpn-gw, node: "{{.nodeName}}"}, weight: 3}]
      fallthrough: true
      metadata: {labels: {tier: a}}
    - routes: [{destination_selector: {}}]
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: e1}
spec:
  network_service_names: [vpn, other]
  network_service_labels: {vpn: {labels: {app: vpn-gw}}}
  url: tcp://10.0.0.1:5001
  expiration_time: "2030-01-02T03:04:05.678Z"
  location: {node: n1, netns: ws}
  mechanisms: {kernel: {}, vxlan: {vniRange: {start: 10, end: 20}, port: 4790}, mpls: {}}
  capacity: 4
  ipamPrefix: 172.16.9.0/24
  routes: [10.60.0.0/16, "fd00::/64"]
  interface: nsm-1
  bridge: br0
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: fw}
spec: {network_service_names: [vpn], location: {device: fw1}}
---
apiVersion: meshwire.io/v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
spec: {forwarder: ovs, underlayAddress: 10.0.0.1, netns: n1ns, ovsdb: "unix:/run/db.sock"}
---
apiVersion: meshwire.io/v1
kind: Device
metadata: {name: fw1, labels: {role: firewall}}
spec: {kind: meshwire-appliance, address: 192.0.2.1, underlayAddress: 10.0.0.9, mechanisms: {vxlan: {}}}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: l1}
spec: {endpoints: ["n1:eth1", "fw1:eth2"], addresses: [10.1.0.1/30, 10.1.0.2/30], mtu: 9000, cost: 7, up: false}
---
apiVersion: meshwire.io/v1
kind: Link
metadata: {name: l2}
spec: {endpoints: ["n1:eth2", "n2:eth2"]}
"#,
        );
    }

    #[test]
    fn etag_follows_content() {
        let m = Manifest::parse(
            "t.yaml",
            "apiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: a, labels: {x: y}}\n",
        )
        .unwrap();
        let (a, b) = (&m.objects[0], &m.objects[1]);
        assert_ne!(a.etag(), b.etag());
        assert_eq!(a.etag(), a.clone().etag());
        assert_eq!(a.etag().len(), 16);
    }
}
