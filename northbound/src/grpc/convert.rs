//! Conversions between NSM's protobuf messages and Meshwire's model, and the one mapping from
//! controller errors to gRPC statuses.

// tonic's handlers return `Result<_, tonic::Status>` (176 bytes); the helpers return the same.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use meshwire_controller::ControllerError;
use meshwire_models::{
    ClientRef, Connection, ConnectionRequest, ConnectionState, Labels, Mechanism, MechanismKind,
    NetworkService as MwService, NetworkServiceEndpoint as MwEndpoint,
};
use tonic::Status;

use super::pb::connection as c;
use super::pb::connectioncontext as cc;
use super::pb::networkservice as ns;
use super::pb::registry as reg;

/// The one mapping from controller errors to gRPC statuses (the REST side's is
/// [`crate::Problem`]'s `From`). Store and record details stay in the log.
pub(super) fn status(e: ControllerError) -> Status {
    use ControllerError as E;
    match &e {
        E::Store(_) | E::Corrupt { .. } => {
            tracing::error!(error = %e, code = e.code(), "gRPC call failed");
            let p = crate::Problem::from(e);
            if p.status == 503 {
                Status::unavailable(p.detail)
            } else {
                Status::internal(p.detail)
            }
        }
        E::UnknownService { .. }
        | E::UnknownConnection { .. }
        | E::NotFound { .. }
        | E::UnknownNode { .. } => Status::not_found(e.to_string()),
        E::NoEndpoint { .. }
        | E::NoMatchingEndpoint { .. }
        | E::NoPath { .. }
        | E::NoCapableEndpoint { .. }
        | E::ChainCycle { .. }
        | E::Chain { .. }
        | E::InUse { .. }
        | E::PreconditionFailed { .. } => Status::failed_precondition(e.to_string()),
        E::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        E::NoCapacity { .. } | E::PoolExhausted { .. } => Status::resource_exhausted(e.to_string()),
        E::Invalid { .. } => Status::invalid_argument(e.to_string()),
        E::Sriov {
            exhausted: true, ..
        } => Status::resource_exhausted(e.to_string()),
        // A token the controller does not know as allocated yet (the node's report on its way
        // after the kubelet's Allocate), or still held by a deleted pod's connection being
        // closed: worth retrying, as upstream clients and nsc-init do with UNAVAILABLE.
        E::Sriov { .. } => Status::unavailable(e.to_string()),
        E::Forbidden(_) => Status::permission_denied(e.to_string()),
        E::Driver { .. } | E::Cancelled => Status::unavailable(e.to_string()),
    }
}

fn labels(m: &HashMap<String, String>) -> Labels {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn map(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Upstream's mechanism parameter carrying an SR-IOV device plugin token.
const TOKEN_ID: &str = "tokenID";

/// Upstream's mechanism type names.
fn mech_type(k: MechanismKind) -> &'static str {
    match k {
        MechanismKind::Kernel => "KERNEL",
        MechanismKind::Memif => "MEMIF",
        MechanismKind::Vxlan => "VXLAN",
        MechanismKind::Gre => "GRE",
        MechanismKind::Mpls => "MPLS",
        MechanismKind::Vlan => "VLAN",
        MechanismKind::SriovVf => "VFIO",
    }
}

fn mechanism(m: &Mechanism) -> c::Mechanism {
    let mut p = HashMap::new();
    let local = matches!(
        m,
        Mechanism::Kernel { .. } | Mechanism::Memif { .. } | Mechanism::SriovVf { .. }
    );
    match m {
        Mechanism::Kernel {
            interface,
            peer_interface,
        } => {
            p.insert("name".into(), interface.clone());
            p.insert("peer_name".into(), peer_interface.clone());
        }
        Mechanism::Memif { socket } => {
            p.insert("socketfile".into(), socket.clone());
        }
        Mechanism::Vxlan {
            vni,
            src_ip,
            dst_ip,
            port,
        } => {
            p.insert("vni".into(), vni.to_string());
            p.insert("src_ip".into(), src_ip.to_string());
            p.insert("dst_ip".into(), dst_ip.to_string());
            p.insert("dst_port".into(), port.to_string());
        }
        Mechanism::Gre {
            key,
            src_ip,
            dst_ip,
        } => {
            p.insert("key".into(), key.to_string());
            p.insert("src_ip".into(), src_ip.to_string());
            p.insert("dst_ip".into(), dst_ip.to_string());
        }
        Mechanism::Mpls {
            label_out,
            label_in,
        } => {
            p.insert("label_out".into(), label_out.to_string());
            p.insert("label_in".into(), label_in.to_string());
        }
        Mechanism::Vlan { id } => {
            p.insert("vlan_id".into(), id.to_string());
        }
        Mechanism::SriovVf {
            pci_address,
            token,
            vlan,
            ..
        } => {
            p.insert("pciAddress".into(), pci_address.clone());
            if !token.is_empty() {
                p.insert(TOKEN_ID.into(), token.clone());
            }
            if let Some(v) = vlan {
                p.insert("vlan_id".into(), v.to_string());
            }
        }
    }
    // A lent VF is a kernel interface in the client's namespace, as upstream's SR-IOV
    // forwarder hands it (KERNEL with pciAddress and tokenID).
    let kind = match m {
        Mechanism::SriovVf { .. } => "KERNEL",
        other => mech_type(other.kind()),
    };
    c::Mechanism {
        cls: if local { "LOCAL" } else { "REMOTE" }.into(),
        r#type: kind.into(),
        parameters: p,
    }
}

/// A Meshwire connection as an NSM `Connection`.
pub fn to_pb(x: &Connection) -> c::Connection {
    let route = |r: &meshwire_models::Route| cc::Route {
        prefix: r.prefix.to_string(),
        next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
    };
    let ip = &x.ip_context;
    let mut segments: Vec<c::PathSegment> = vec![c::PathSegment {
        name: x.client.workload().to_string(),
        id: x.id.clone(),
        ..Default::default()
    }];
    segments.extend(x.path.iter().map(|p| c::PathSegment {
        name: p.name.clone(),
        id: x.id.clone(),
        ..Default::default()
    }));
    segments.push(c::PathSegment {
        name: x.network_service_endpoint_name.clone(),
        id: x.id.clone(),
        ..Default::default()
    });
    c::Connection {
        id: x.id.clone(),
        network_service: x.network_service.clone(),
        // The client's interface rides along with any mechanism (a tunnel's end in the
        // client's namespace is named too).
        mechanism: x.mechanism().map(|m| {
            let mut pb = mechanism(m);
            pb.parameters
                .entry("name".into())
                .or_insert_with(|| x.interface.clone());
            pb
        }),
        context: Some(cc::ConnectionContext {
            ip_context: Some(cc::IpContext {
                src_ip_addrs: ip.src_ip_addrs.iter().map(|a| a.to_string()).collect(),
                dst_ip_addrs: ip.dst_ip_addrs.iter().map(|a| a.to_string()).collect(),
                src_routes: ip.src_routes.iter().map(route).collect(),
                dst_routes: ip.dst_routes.iter().map(route).collect(),
                excluded_prefixes: ip.excluded_prefixes.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            dns_context: x.dns_context.as_ref().map(|d| cc::DnsContext {
                configs: d
                    .configs
                    .iter()
                    .map(|c| cc::DnsConfig {
                        dns_server_ips: c.dns_server_ips.clone(),
                        search_domains: c.search_domains.clone(),
                    })
                    .collect(),
            }),
            mtu: x.mtu,
            ..Default::default()
        }),
        labels: map(&x.labels),
        path: Some(c::Path {
            index: 0,
            path_segments: segments,
        }),
        network_service_endpoint_name: x.network_service_endpoint_name.clone(),
        payload: x.payload.to_string(),
        state: match x.state {
            ConnectionState::Up | ConnectionState::Programming | ConnectionState::Requested => {
                c::State::Up as i32
            }
            _ => c::State::Down as i32,
        },
    }
}

/// An NSM request as a Meshwire request. Only local preferences with KERNEL among them (what
/// upstream clients send) admit the tunnels too, after them: the client still gets a kernel
/// interface, and a tunnel carries it to an endpoint on another node.
pub fn from_pb(r: &ns::NetworkServiceRequest) -> Result<ConnectionRequest, Status> {
    let conn = r
        .connection
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("connection: required"))?;
    if conn.network_service.is_empty() {
        return Err(Status::invalid_argument(
            "connection.network_service: required",
        ));
    }
    let node = conn.labels.get("nodeName").cloned().ok_or_else(|| {
        Status::invalid_argument(
            "connection.labels.nodeName: required (the node the client runs on)",
        )
    })?;
    let workload = conn
        .path
        .as_ref()
        .and_then(|p| p.path_segments.first())
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty() && *n != node);
    let mut mechanisms = Vec::new();
    let mut interface = None;
    let mut sriov_token = None;
    for m in &r.mechanism_preferences {
        let kind: MechanismKind = m
            .r#type
            .parse()
            .map_err(|e: String| Status::invalid_argument(format!("mechanism_preferences: {e}")))?;
        if kind == MechanismKind::Kernel {
            interface = m.parameters.get("name").cloned().filter(|n| !n.is_empty());
        }
        // Upstream's SR-IOV clients put the device plugin's token on the mechanism (`tokenID`,
        // on KERNEL and VFIO alike): the client gets a VF of the token's pool.
        if let Some(t) = m.parameters.get(TOKEN_ID).filter(|t| !t.is_empty()) {
            sriov_token = Some(t.clone());
        }
        if !mechanisms.contains(&kind) {
            mechanisms.push(kind);
        }
    }
    // An NSM client's KERNEL asks for a kernel interface in its namespace; across nodes,
    // upstream's forwarders pick the tunnel between them. Here the mesh does: a tunnel's end in
    // the client's namespace is a kernel interface too.
    // VFIO (a VF bound to vfio-pci for a userspace data plane in the pod) is not built: said
    // plainly rather than answered with a kernel interface the client did not ask for.
    if r.mechanism_preferences
        .iter()
        .any(|m| m.r#type.eq_ignore_ascii_case("VFIO"))
        && !mechanisms.contains(&MechanismKind::Kernel)
    {
        return Err(Status::unimplemented(
            "VFIO (a VF bound to vfio-pci in the pod) is not supported; ask for KERNEL with the token in tokenID to get the VF as a kernel interface",
        ));
    }
    if mechanisms.contains(&MechanismKind::Kernel) && mechanisms.iter().all(|m| m.is_local()) {
        mechanisms.extend([
            MechanismKind::Vxlan,
            MechanismKind::Gre,
            MechanismKind::Mpls,
        ]);
    }
    let excluded_prefixes = conn
        .context
        .as_ref()
        .and_then(|c| c.ip_context.as_ref())
        .map(|ip| {
            ip.excluded_prefixes
                .iter()
                .map(|p| {
                    p.parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "context.ip_context.excluded_prefixes: {p:?} is not a prefix"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(ConnectionRequest {
        network_service: conn.network_service.clone(),
        client: ClientRef {
            node,
            name: workload,
        },
        labels: labels(&conn.labels),
        mechanisms,
        interface,
        excluded_prefixes,
        sriov_token,
    })
}

// ---- registry ------------------------------------------------------------------------------

pub(super) fn service_to_pb(s: &MwService) -> reg::NetworkService {
    reg::NetworkService {
        name: s.name.clone(),
        payload: s.payload.to_string(),
        matches: s
            .matches
            .iter()
            .map(|m| reg::Match {
                source_selector: map(&m.source_selector),
                routes: m
                    .routes
                    .iter()
                    .map(|d| reg::Destination {
                        destination_selector: map(&d.destination_selector),
                        weight: d.weight.unwrap_or(0),
                    })
                    .collect(),
                fallthrough: m.fallthrough,
                metadata: (!m.labels.is_empty()).then(|| reg::Metadata {
                    labels: map(&m.labels),
                }),
            })
            .collect(),
        path_ids: vec![],
    }
}

pub(super) fn service_from_pb(s: &reg::NetworkService) -> Result<MwService, Status> {
    if s.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    let payload = match s.payload.to_ascii_uppercase().as_str() {
        "" | "IP" => meshwire_models::Payload::Ip,
        "ETHERNET" => meshwire_models::Payload::Ethernet,
        other => {
            return Err(Status::invalid_argument(format!(
                "payload: {other:?} is not IP or ETHERNET"
            )))
        }
    };
    Ok(MwService {
        name: s.name.clone(),
        payload,
        // Upstream's registry has no vL3 plan: the registration handler keeps the one a
        // manifest gave.
        vl3: None,
        matches: s
            .matches
            .iter()
            .map(|m| meshwire_models::Match {
                source_selector: labels(&m.source_selector),
                routes: m
                    .routes
                    .iter()
                    .map(|d| meshwire_models::Destination {
                        destination_selector: labels(&d.destination_selector),
                        weight: (d.weight > 0).then_some(d.weight),
                    })
                    .collect(),
                fallthrough: m.fallthrough,
                labels: m
                    .metadata
                    .as_ref()
                    .map(|md| labels(&md.labels))
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(super) fn endpoint_to_pb(e: &MwEndpoint) -> reg::NetworkServiceEndpoint {
    let mut labels: HashMap<String, reg::NetworkServiceLabels> = e
        .network_service_labels
        .iter()
        .map(|(s, l)| (s.clone(), reg::NetworkServiceLabels { labels: map(l) }))
        .collect();
    // Where it lives, in the labels upstream clients can read.
    for s in &e.network_service_names {
        let l = labels.entry(s.clone()).or_default();
        l.labels
            .entry("nodeName".into())
            .or_insert_with(|| e.location.vertex().to_string());
    }
    reg::NetworkServiceEndpoint {
        name: e.name.clone(),
        network_service_names: e.network_service_names.clone(),
        network_service_labels: labels,
        url: e.url.clone().unwrap_or_default(),
        expiration_time: e.expires_at_ms.map(timestamp_ms),
        initial_registration_time: None,
        path_ids: vec![],
    }
}

pub(super) fn endpoint_from_pb(e: &reg::NetworkServiceEndpoint) -> Result<MwEndpoint, Status> {
    if e.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    if e.network_service_names.is_empty() {
        return Err(Status::invalid_argument(
            "network_service_names: at least one",
        ));
    }
    let from_labels = |key: &str| {
        e.network_service_labels
            .values()
            .find_map(|l| l.labels.get(key).cloned())
    };
    let node = from_labels("nodeName").ok_or_else(|| {
        Status::invalid_argument(
            "network_service_labels.<service>.labels.nodeName: required (the node the endpoint runs on)",
        )
    })?;
    let expires_at_ms = e
        .expiration_time
        .as_ref()
        .filter(|t| t.seconds != 0 || t.nanos != 0)
        .map(|t| meshwire_models::manifest::timestamp_ms(t.seconds, t.nanos.into()))
        .transpose()
        .map_err(|rule| Status::invalid_argument(format!("expiration_time: {rule}")))?;
    let caps: meshwire_models::Capabilities =
        serde_json::from_value(serde_json::json!({"kernel": {}, "vxlan": {}}))
            .map_err(|err| Status::internal(err.to_string()))?;
    Ok(MwEndpoint {
        name: e.name.clone(),
        network_service_names: e.network_service_names.clone(),
        network_service_labels: e
            .network_service_labels
            .iter()
            .map(|(s, l)| (s.clone(), labels(&l.labels)))
            .collect(),
        url: (!e.url.is_empty()).then(|| e.url.clone()),
        expires_at_ms,
        location: meshwire_models::EndpointLocation::Node {
            node,
            netns: from_labels("netns"),
        },
        mechanisms: caps,
        capacity: None,
        ipam_prefix: None,
        routes: vec![],
        interface: None,
        bridge: None,
        next: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, params: &[(&str, &str)]) -> ns::NetworkServiceRequest {
        ns::NetworkServiceRequest {
            connection: Some(c::Connection {
                network_service: "net".into(),
                labels: [("nodeName".to_string(), "n1".to_string())].into(),
                ..Default::default()
            }),
            mechanism_preferences: vec![c::Mechanism {
                cls: "LOCAL".into(),
                r#type: kind.into(),
                parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }],
        }
    }

    #[test]
    fn upstreams_token_id_claims_a_vf_and_vfio_is_refused_plainly() {
        let r = from_pb(&request(
            "KERNEL",
            &[("name", "nsm-1"), ("tokenID", "sriov-1")],
        ))
        .unwrap();
        assert_eq!(r.sriov_token.as_deref(), Some("sriov-1"));
        assert_eq!(r.interface.as_deref(), Some("nsm-1"));
        let e = from_pb(&request("VFIO", &[("tokenID", "sriov-1")])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        // A lent VF goes back to the client as a kernel interface with its PCI address.
        let m = mechanism(&Mechanism::SriovVf {
            pci_address: "0000:3b:01.0".into(),
            pf: "0000:3b:00.0".into(),
            vf: 0,
            netdev: "pf0v0".into(),
            pool: "d/10G".into(),
            token: "sriov-1".into(),
            vlan: Some(100),
        });
        assert_eq!((m.r#type.as_str(), m.cls.as_str()), ("KERNEL", "LOCAL"));
        assert_eq!(m.parameters["pciAddress"], "0000:3b:01.0");
        assert_eq!(m.parameters["tokenID"], "sriov-1");
    }
}
