//! Manifests: YAML or JSON documents, several per file (`---`), read exactly as upstream NSM
//! writes its custom resources (`networkservicemesh.io/v1`, snake_case spec fields such as
//! `network_service_names` and `matches[].source_selector`) plus Meshwire's own kinds under
//! `meshwire.io/v1` (`Node`, `Link`, `Device`). Meshwire's additions to upstream kinds
//! (`location`, `mechanisms`, `capacity`, `ipamPrefix`, `routes`) are optional camelCase fields.
//!
//! Every error names the file, the document (1-based), the object, the field and the rule:
//! `bad.yaml: document 2 (NetworkServiceEndpoint/e1): spec.mechanisms.vxlan.vniRange: start 5000 is above end 4000`.
//! Fields of upstream kinds that Meshwire does not use are kept as warnings, never silently.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

use crate::endpoint::{EndpointLocation, NetworkServiceEndpoint};
use crate::labels::Labels;
use crate::mechanism::Capabilities;
use crate::service::{Destination, Match, NetworkService, Payload};
use crate::topology::{default_cost, default_mtu, Device, ForwarderKind, Link, LinkEnd, Node};

pub const NSM_API: &str = "networkservicemesh.io/v1";
pub const MESHWIRE_API: &str = "meshwire.io/v1";

/// The kinds of object a manifest may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    NetworkService,
    NetworkServiceEndpoint,
    Node,
    Link,
    Device,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::NetworkService => "NetworkService",
            ObjectKind::NetworkServiceEndpoint => "NetworkServiceEndpoint",
            ObjectKind::Node => "Node",
            ObjectKind::Link => "Link",
            ObjectKind::Device => "Device",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Kind/name`, how objects are addressed in errors and in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "object")]
pub enum Object {
    NetworkService(NetworkService),
    NetworkServiceEndpoint(NetworkServiceEndpoint),
    Node(Node),
    Link(Link),
    Device(Device),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, name) = match self {
            Object::NetworkService(o) => (ObjectKind::NetworkService, &o.name),
            Object::NetworkServiceEndpoint(o) => (ObjectKind::NetworkServiceEndpoint, &o.name),
            Object::Node(o) => (ObjectKind::Node, &o.name),
            Object::Link(o) => (ObjectKind::Link, &o.name),
            Object::Device(o) => (ObjectKind::Device, &o.name),
        };
        ObjectKey {
            kind,
            name: name.clone(),
        }
    }
}

/// The objects of one or more files, in order, with warnings about fields that were ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub objects: Vec<Object>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A manifest that cannot be accepted, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{file}: document {document}{}: {field}: {rule}", object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: String,
    /// 1-based document number within the file.
    pub document: usize,
    /// `Kind/name` when known.
    pub object: Option<String>,
    /// Dotted path of the field at fault (`spec.matches[0].routes`).
    pub field: String,
    pub rule: String,
}

impl Manifest {
    /// Parses `text` (YAML or JSON, several documents) read from `file`.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let mut manifest = Manifest::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let err = |object: Option<String>, field: &str, rule: String| ManifestError {
                file: file.to_string(),
                document,
                object,
                field: field.to_string(),
                rule,
            };
            let value =
                Value::deserialize(doc).map_err(|e| err(None, "(document)", yaml_rule(&e)))?;
            if value.is_null() {
                continue; // an empty document, e.g. a leading `---`
            }
            let raw: RawDoc = serde_path_to_error::deserialize(value)
                .map_err(|e| err(None, &e.path().to_string(), yaml_rule(e.inner())))?;
            if raw.kind.as_deref() == Some("List") {
                for (j, item) in raw.items.into_iter().enumerate() {
                    let raw: RawDoc = serde_path_to_error::deserialize(item).map_err(|e| {
                        err(
                            None,
                            &format!("items[{j}].{}", e.path()),
                            yaml_rule(e.inner()),
                        )
                    })?;
                    let ctx = Ctx {
                        file,
                        document,
                        prefix: format!("items[{j}]."),
                    };
                    manifest
                        .objects
                        .push(ctx.object(raw, &mut manifest.warnings)?);
                }
                continue;
            }
            let ctx = Ctx {
                file,
                document,
                prefix: String::new(),
            };
            manifest
                .objects
                .push(ctx.object(raw, &mut manifest.warnings)?);
        }
        Ok(manifest)
    }
}

fn yaml_rule(e: &serde_yaml::Error) -> String {
    e.to_string()
}

struct Ctx<'a> {
    file: &'a str,
    document: usize,
    prefix: String,
}

impl Ctx<'_> {
    fn err(&self, object: Option<&str>, field: &str, rule: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_string(),
            document: self.document,
            object: object.map(str::to_string),
            field: format!("{}{field}", self.prefix),
            rule: rule.into(),
        }
    }

    /// The object of one document, checked by the one validator every way in shares.
    fn object(&self, raw: RawDoc, warnings: &mut Vec<String>) -> Result<Object, ManifestError> {
        let obj = self.read(raw, warnings)?;
        obj.validate()
            .map_err(|e| self.err(Some(&obj.key().to_string()), &e.field, e.rule))?;
        Ok(obj)
    }

    fn read(&self, raw: RawDoc, warnings: &mut Vec<String>) -> Result<Object, ManifestError> {
        let api = raw.api_version.as_deref().unwrap_or("");
        let kind = raw.kind.as_deref().unwrap_or("");
        let kind = match (api, kind) {
            (NSM_API, "NetworkService") => ObjectKind::NetworkService,
            (NSM_API, "NetworkServiceEndpoint") => ObjectKind::NetworkServiceEndpoint,
            (MESHWIRE_API, "Node") => ObjectKind::Node,
            (MESHWIRE_API, "Link") => ObjectKind::Link,
            (MESHWIRE_API, "Device") => ObjectKind::Device,
            ("", _) => return Err(self.err(None, "apiVersion", format!("required ({NSM_API} or {MESHWIRE_API})"))),
            (_, "") => return Err(self.err(None, "kind", "required")),
            (api, kind) => {
                return Err(self.err(
                    None,
                    "kind",
                    format!(
                        "{api}/{kind} is not a kind Meshwire knows: expected {NSM_API} NetworkService or NetworkServiceEndpoint, or {MESHWIRE_API} Node, Link or Device"
                    ),
                ))
            }
        };
        let meta = raw.metadata.unwrap_or_default();
        let name = match meta.name {
            Some(n) => n,
            None => return Err(self.err(None, "metadata.name", "required")),
        };
        let object = format!("{kind}/{name}");
        let obj = Some(object.as_str());
        crate::validate::check_object_name(kind, &name)
            .map_err(|rule| self.err(obj, "metadata.name", rule))?;
        let spec = raw.spec.unwrap_or(Value::Null);
        let spec = if spec.is_null() {
            Value::Mapping(Default::default())
        } else {
            spec
        };

        macro_rules! spec_as {
            ($t:ty) => {{
                let s: $t = serde_path_to_error::deserialize(spec).map_err(|e| {
                    let path = e.path().to_string();
                    let field = if path == "." {
                        "spec".to_string()
                    } else {
                        format!("spec.{path}")
                    };
                    self.err(obj, &field, yaml_rule(e.inner()))
                })?;
                s
            }};
        }
        let warn_extra = |extra: &BTreeMap<String, Value>, warnings: &mut Vec<String>| {
            for k in extra.keys() {
                warnings.push(format!(
                    "{}: document {} ({object}): {}spec.{k} is not used by Meshwire; ignored",
                    self.file, self.document, self.prefix
                ));
            }
        };

        Ok(match kind {
            ObjectKind::NetworkService => {
                let s = spec_as!(RawServiceSpec);
                warn_extra(&s.extra, warnings);
                let mut matches = Vec::new();
                for (i, m) in s.matches.unwrap_or_default().into_iter().enumerate() {
                    let source_selector = labels(m.source_selector);
                    let mut routes = Vec::new();
                    for (j, r) in m.routes.unwrap_or_default().into_iter().enumerate() {
                        let destination_selector = labels(r.destination_selector);
                        for (k, v) in &destination_selector {
                            check_template(v).map_err(|rule| {
                                self.err(
                                    obj,
                                    &format!(
                                        "spec.matches[{i}].routes[{j}].destination_selector.{k}"
                                    ),
                                    rule,
                                )
                            })?;
                        }
                        routes.push(Destination {
                            destination_selector,
                            weight: r.weight,
                        });
                    }
                    for (k, v) in &source_selector {
                        check_template(v).map_err(|rule| {
                            self.err(obj, &format!("spec.matches[{i}].source_selector.{k}"), rule)
                        })?;
                    }
                    matches.push(Match {
                        source_selector,
                        routes,
                        fallthrough: m.fallthrough.unwrap_or(false),
                        labels: labels(m.metadata.and_then(|md| md.labels)),
                    });
                }
                Object::NetworkService(NetworkService {
                    name,
                    payload: s.payload.unwrap_or_default(),
                    matches,
                    vl3: s.vl3,
                })
            }
            ObjectKind::NetworkServiceEndpoint => {
                let s = spec_as!(RawEndpointSpec);
                warn_extra(&s.extra, warnings);
                let network_service_names = s.network_service_names.unwrap_or_default();
                if network_service_names.is_empty() {
                    return Err(self.err(
                        obj,
                        "spec.network_service_names",
                        "required: the services this endpoint offers",
                    ));
                }
                for (i, svc) in network_service_names.iter().enumerate() {
                    crate::validate::check_service_name(svc).map_err(|rule| {
                        self.err(obj, &format!("spec.network_service_names[{i}]"), rule)
                    })?;
                }
                let mut network_service_labels = BTreeMap::new();
                for (svc, l) in s.network_service_labels.unwrap_or_default() {
                    if !network_service_names.contains(&svc) {
                        return Err(self.err(
                            obj,
                            &format!("spec.network_service_labels.{svc}"),
                            format!("{svc} is not in network_service_names"),
                        ));
                    }
                    network_service_labels.insert(svc, labels(l.and_then(|l| l.labels)));
                }
                let expires_at_ms = match s.expiration_time {
                    None => None,
                    Some(t) => expiration_ms(&t)
                        .map_err(|rule| self.err(obj, "spec.expiration_time", rule))?,
                };
                let location = match s.location {
                    Some(RawLocation { node: Some(node), device: None, netns }) => EndpointLocation::Node { node, netns },
                    Some(RawLocation { node: None, device: Some(device), netns: None }) => EndpointLocation::Device { device },
                    Some(_) => {
                        return Err(self.err(obj, "spec.location", "give exactly one of node (with optional netns) or device"))
                    }
                    None => match network_service_labels.values().find_map(|l| l.get("nodeName")) {
                        Some(node) => EndpointLocation::Node { node: node.clone(), netns: None },
                        None => {
                            return Err(self.err(
                                obj,
                                "spec.location",
                                "required: the node (location.node) or device (location.device) the endpoint runs on, or a nodeName label",
                            ))
                        }
                    },
                };
                let mechanisms = s.mechanisms.unwrap_or_default();
                mechanisms.validate().map_err(|(field, rule)| {
                    self.err(obj, &format!("spec.mechanisms.{field}"), rule)
                })?;
                if mechanisms.kinds().is_empty() {
                    return Err(self.err(
                        obj,
                        "spec.mechanisms",
                        "offers no mechanism: give at least one",
                    ));
                }
                if s.capacity == Some(0) {
                    return Err(self.err(
                        obj,
                        "spec.capacity",
                        "must be at least 1 (leave it out for unlimited)",
                    ));
                }
                let ipam_prefix = match s.ipam_prefix {
                    None => None,
                    Some(p) => {
                        let net: IpNet = p.parse().map_err(|_| {
                            self.err(
                                obj,
                                "spec.ipamPrefix",
                                format!("{p:?} is not a prefix like 172.16.0.0/24"),
                            )
                        })?;
                        if net.prefix_len() + 1 > net.max_prefix_len() {
                            return Err(self.err(
                                obj,
                                "spec.ipamPrefix",
                                "is too small to hold even one address pair",
                            ));
                        }
                        Some(net.trunc())
                    }
                };
                let mut routes = Vec::new();
                for (i, r) in s.routes.unwrap_or_default().into_iter().enumerate() {
                    routes.push(
                        r.parse::<IpNet>()
                            .map_err(|_| {
                                self.err(
                                    obj,
                                    &format!("spec.routes[{i}]"),
                                    format!("{r:?} is not a prefix like 10.60.0.0/16"),
                                )
                            })?
                            .trunc(),
                    );
                }
                if let Some(ifname) = &s.interface {
                    check_ifname(ifname).map_err(|rule| self.err(obj, "spec.interface", rule))?;
                }
                Object::NetworkServiceEndpoint(NetworkServiceEndpoint {
                    name,
                    network_service_names,
                    network_service_labels,
                    url: s.url,
                    expires_at_ms,
                    location,
                    mechanisms,
                    capacity: s.capacity,
                    ipam_prefix,
                    routes,
                    interface: s.interface,
                    bridge: s.bridge,
                    next: None,
                })
            }
            ObjectKind::Node => {
                let s = spec_as!(RawNodeSpec);
                let underlay_address = match s.underlay_address {
                    None => None,
                    Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                        self.err(
                            obj,
                            "spec.underlayAddress",
                            format!("{a:?} is not an IP address"),
                        )
                    })?),
                };
                let forwarder = s.forwarder.unwrap_or_default();
                if let Some(db) = &s.ovsdb {
                    crate::validate::check_ovsdb_remote(db)
                        .map_err(|rule| self.err(obj, "spec.ovsdb", rule))?;
                }
                Object::Node(Node {
                    name,
                    forwarder,
                    ovsdb: s.ovsdb,
                    underlay_address,
                    netns: s.netns,
                    labels: labels(meta.labels),
                })
            }
            ObjectKind::Device => {
                let s = spec_as!(RawDeviceSpec);
                let parse_ip =
                    |field: &str, a: Option<String>| -> Result<Option<IpAddr>, ManifestError> {
                        a.map(|a| {
                            a.parse::<IpAddr>().map_err(|_| {
                                self.err(obj, field, format!("{a:?} is not an IP address"))
                            })
                        })
                        .transpose()
                    };
                let mechanisms = s.mechanisms.unwrap_or_default();
                mechanisms.validate().map_err(|(field, rule)| {
                    self.err(obj, &format!("spec.mechanisms.{field}"), rule)
                })?;
                Object::Device(Device {
                    name,
                    kind: s.kind.ok_or_else(|| {
                        self.err(
                            obj,
                            "spec.kind",
                            "required: the device profile, e.g. meshwire-appliance",
                        )
                    })?,
                    address: parse_ip("spec.address", s.address)?,
                    underlay_address: parse_ip("spec.underlayAddress", s.underlay_address)?,
                    mechanisms,
                    labels: labels(meta.labels),
                    ensm: s.ensm,
                })
            }
            ObjectKind::Link => {
                let s = spec_as!(RawLinkSpec);
                let ends = s.endpoints.unwrap_or_default();
                if ends.len() != 2 {
                    return Err(self.err(
                        obj,
                        "spec.endpoints",
                        format!(
                            "needs exactly two ends like [\"a:eth1\", \"b:eth1\"], got {}",
                            ends.len()
                        ),
                    ));
                }
                let mut parsed = Vec::new();
                for (i, e) in ends.iter().enumerate() {
                    parsed
                        .push(LinkEnd::parse(e).map_err(|rule| {
                            self.err(obj, &format!("spec.endpoints[{i}]"), rule)
                        })?);
                }
                let addrs = s.addresses.unwrap_or_default();
                if !addrs.is_empty() && addrs.len() != 2 {
                    return Err(self.err(
                        obj,
                        "spec.addresses",
                        "give one address per end, in the order of endpoints",
                    ));
                }
                for (i, a) in addrs.iter().enumerate() {
                    parsed[i].address = Some(a.parse::<IpNet>().map_err(|_| {
                        self.err(
                            obj,
                            &format!("spec.addresses[{i}]"),
                            format!("{a:?} is not an address with prefix like 10.0.0.1/24"),
                        )
                    })?);
                }
                let b = parsed.pop().expect("two ends");
                let a = parsed.pop().expect("two ends");
                if a.vertex == b.vertex {
                    return Err(self.err(
                        obj,
                        "spec.endpoints",
                        format!(
                            "both ends are on {}: a link joins two different nodes",
                            a.vertex
                        ),
                    ));
                }
                let mtu = s.mtu.unwrap_or_else(default_mtu);
                if !(68..=65535).contains(&mtu) {
                    return Err(self.err(obj, "spec.mtu", format!("{mtu} is outside 68..65535")));
                }
                let cost = s.cost.unwrap_or_else(default_cost);
                if cost == 0 {
                    return Err(self.err(obj, "spec.cost", "must be at least 1"));
                }
                Object::Link(Link {
                    name,
                    a,
                    b,
                    mtu,
                    cost,
                    up: s.up.unwrap_or(true),
                })
            }
        })
    }
}

pub use crate::validate::{check_ifname, check_name};

/// Go-template label values (`{{.nodeName}}`, `{{ .podName }}`) must be well formed.
fn check_template(v: &str) -> Result<(), String> {
    let mut rest = v;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{v:?}: '{{{{' without '}}}}'"))?;
        let inner = after[..end].trim();
        let key = inner.strip_prefix('.').unwrap_or("");
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || c == '.')
        {
            return Err(format!(
                "{v:?}: template {{{{{inner}}}}} must name a client label like {{{{.app}}}}"
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// `expiration_time` in either form: an RFC 3339 string, or `{seconds: N, nanos: M}` (upstream's
/// registry-k8s resources, written by Go's `encoding/json`). `None` for a null or zero time.
fn expiration_ms(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(t) => parse_time_ms(t).map(Some),
        Value::Mapping(m) => {
            let field = |k: &str| -> Result<i64, String> {
                match m.get(Value::String(k.into())) {
                    None | Some(Value::Null) => Ok(0),
                    Some(Value::Number(n)) => n
                        .as_i64()
                        .ok_or_else(|| format!("{k}: {n} is not a whole number")),
                    Some(Value::String(s)) => s
                        .parse::<i64>()
                        .map_err(|_| format!("{k}: {s:?} is not a whole number")),
                    Some(_) => Err(format!("{k}: not a number")),
                }
            };
            for k in m.keys() {
                if !matches!(k.as_str(), Some("seconds" | "nanos")) {
                    return Err(format!("{k:?}: a timestamp has only seconds and nanos"));
                }
            }
            let (secs, nanos) = (field("seconds")?, field("nanos")?);
            if secs == 0 && nanos == 0 {
                return Ok(None);
            }
            timestamp_ms(secs, nanos).map(Some)
        }
        _ => Err("an RFC 3339 time or {seconds, nanos}".to_string()),
    }
}

/// A protobuf `Timestamp` as Unix milliseconds, refused when it is before 1970 or past what
/// milliseconds in a `u64` can hold.
pub fn timestamp_ms(seconds: i64, nanos: i64) -> Result<u64, String> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(format!("nanos {nanos} is outside 0..999999999"));
    }
    let secs = u64::try_from(seconds).map_err(|_| format!("seconds {seconds} is before 1970"))?;
    secs.checked_mul(1000)
        .and_then(|ms| ms.checked_add(nanos as u64 / 1_000_000))
        .ok_or_else(|| format!("seconds {seconds} is too far in the future"))
}

fn parse_time_ms(t: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339_weak(t)
        .map_err(|e| format!("{t:?} is not an RFC 3339 time ({e})"))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("{t:?} is before 1970"))
}

// ---- raw upstream shapes ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMeta>,
    spec: Option<Value>,
    #[serde(default)]
    items: Vec<Value>,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    name: Option<String>,
    #[allow(dead_code)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "lenient_labels")]
    labels: Option<Labels>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
pub struct RawServiceSpec {
    payload: Option<Payload>,
    matches: Option<Vec<RawMatch>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    vl3: Option<crate::service::Vl3>,
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    extra: BTreeMap<String, Value>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default, deserialize_with = "lenient_labels")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    source_selector: Option<Labels>,
    routes: Option<Vec<RawDestination>>,
    fallthrough: Option<bool>,
    metadata: Option<RawMatchMeta>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
pub struct RawMatchMeta {
    #[serde(default, deserialize_with = "lenient_labels")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    labels: Option<Labels>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    #[serde(default, deserialize_with = "lenient_labels")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    destination_selector: Option<Labels>,
    weight: Option<u32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
pub struct RawEndpointSpec {
    network_service_names: Option<Vec<String>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, RawServiceLabels>>))]
    network_service_labels: Option<BTreeMap<String, Option<RawServiceLabels>>>,
    url: Option<String>,
    /// RFC 3339, or `{seconds, nanos}` as upstream's registry-k8s stores it (Go's
    /// `encoding/json` of a protobuf Timestamp).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    expiration_time: Option<Value>,
    // Meshwire additions.
    location: Option<RawLocation>,
    mechanisms: Option<Capabilities>,
    capacity: Option<u32>,
    #[serde(rename = "ipamPrefix")]
    ipam_prefix: Option<String>,
    routes: Option<Vec<String>>,
    interface: Option<String>,
    bridge: Option<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    extra: BTreeMap<String, Value>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
pub struct RawServiceLabels {
    #[serde(default, deserialize_with = "lenient_labels")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    labels: Option<Labels>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    node: Option<String>,
    netns: Option<String>,
    device: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawNodeSpec {
    forwarder: Option<ForwarderKind>,
    underlay_address: Option<String>,
    netns: Option<String>,
    ovsdb: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDeviceSpec {
    kind: Option<String>,
    address: Option<String>,
    underlay_address: Option<String>,
    mechanisms: Option<Capabilities>,
    /// The URL of the device's eNSM, when it runs in its own process.
    ensm: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLinkSpec {
    endpoints: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    mtu: Option<u32>,
    cost: Option<u32>,
    up: Option<bool>,
}

fn labels(l: Option<Labels>) -> Labels {
    l.unwrap_or_default()
}

/// Label maps as people write them: `true`, `1` and a missing value are all accepted as strings.
fn lenient_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Labels>, D::Error> {
    let raw: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    let Some(raw) = raw else { return Ok(None) };
    let mut out = Labels::new();
    for (k, v) in raw {
        let s = match v {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "label {k} must be a string, not {}",
                    match other {
                        Value::Sequence(_) => "a list",
                        Value::Mapping(_) => "a map",
                        _ => "this value",
                    }
                )))
            }
        };
        out.insert(k, s);
    }
    Ok(Some(out))
}
