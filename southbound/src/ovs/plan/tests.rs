//! Tests of the parent module.

use super::*;
use meshwire_models::Hop;

struct Links;
impl Uplinks for Links {
    fn uplink(&self, node: &str, link: &str) -> Option<String> {
        Some(format!("{node}-{link}"))
    }
}

fn conn(hops: Vec<Hop>) -> Connection {
    let mut c = crate::kernel::wiring::tests::conn(hops[0].mechanism.clone(), Payload::Ip);
    c.client.node = hops[0].from.clone();
    c.hops = hops;
    c.placement.endpoint_node_netns = Some("n3".into());
    c.placement.bridge = None;
    c
}

#[test]
fn mpls_pushes_on_the_way_out_pops_on_the_way_in_and_transit_switches() {
    let m = Mechanism::Mpls {
        label_out: 1001,
        label_in: 1002,
    };
    let hop = |a: &str, b: &str, l: &str| Hop {
        from: a.into(),
        to: b.into(),
        link: Some(l.into()),
        mechanism: m.clone(),
    };
    let p = plan(
        &conn(vec![hop("n1", "n2", "l12"), hop("n2", "n3", "l23")]),
        &Links,
    )
    .unwrap();
    assert_eq!(p.nodes(), vec!["n1", "n2", "n3"]);
    let on = |n: &str| p.flows.iter().filter(|f| f.node == n).count();
    assert_eq!((on("n1"), on("n2"), on("n3")), (2, 2, 2));
    let out = p
        .flows
        .iter()
        .find(|f| f.node == "n1" && f.in_port == PortRef::Name("mwc0123abcd".into()))
        .unwrap();
    assert_eq!(
        out.actions,
        vec![
            Act::Raw(Action::PushMpls(0x8847)),
            Act::Raw(Action::SetField(OxmField::MplsLabel(1001))),
            Act::Output(PortRef::Name("n1-l12".into())),
        ]
    );
    let transit = p
        .flows
        .iter()
        .find(|f| f.node == "n2" && f.in_port == PortRef::Name("n2-l12".into()))
        .unwrap();
    assert_eq!(
        transit.actions,
        vec![Act::Output(PortRef::Name("n2-l23".into()))]
    );
    // No ARP over MPLS: the client knows the endpoint's MAC.
    assert_eq!(
        p.legs[0].workload.neighbors,
        vec![("172.16.0.0".parse().unwrap(), mac("0123abcd-ffff", 1))]
    );
    assert!(p
        .flows
        .iter()
        .all(|f| f.cookie & COOKIE_TAG_MASK == COOKIE_TAG && f.cookie != INFRA_COOKIE));
}

#[test]
fn tunnels_set_key_and_remote_and_mirror_each_other() {
    let m = Mechanism::Gre {
        key: 77,
        src_ip: "10.0.0.1".parse().unwrap(),
        dst_ip: "10.0.0.3".parse().unwrap(),
    };
    let p = plan(
        &conn(vec![Hop {
            from: "n1".into(),
            to: "n3".into(),
            link: None,
            mechanism: m,
        }]),
        &Links,
    )
    .unwrap();
    assert_eq!(p.tunnels.len(), 2);
    let to_remote = |n: &str| {
        p.flows
            .iter()
            .filter(|f| f.node == n)
            .flat_map(|f| f.actions.iter())
            .find_map(|a| match a {
                Act::Raw(Action::SetField(OxmField::TunIpv4Dst(d))) => Some(d.to_string()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        (to_remote("n1"), to_remote("n3")),
        ("10.0.0.3".into(), "10.0.0.1".into())
    );
}

#[test]
fn a_domain_floods_locally_and_to_remote_nodes_with_split_horizon() {
    let f = domain_flows(
        "blue",
        "n1",
        &["a".into(), "b".into()],
        &["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
    );
    assert_eq!(f.len(), 3);
    let from_a = &f[0];
    assert_eq!(from_a.in_port, PortRef::Name("a".into()));
    let outs: Vec<&Act> = from_a
        .actions
        .iter()
        .filter(|a| matches!(a, Act::Output(_)))
        .collect();
    assert_eq!(outs.len(), 1 + 2, "to b and to both remote nodes");
    let from_tunnel = &f[2];
    assert_eq!(from_tunnel.in_port, PortRef::Name("mw-vxlan".into()));
    assert!(
        from_tunnel
            .actions
            .iter()
            .all(|a| matches!(a, Act::Output(PortRef::Name(n)) if n == "a" || n == "b")),
        "frames from a tunnel never go back into one"
    );
    assert!(domain_flows("blue", "n1", &["a".into()], &[]).len() == 1);
    assert!(domain_vni("blue") >= 0xE0_0000);
    // Find two names whose VNIs collide, and check the later one is refused.
    let mut seen = std::collections::HashMap::new();
    let mut pair = None;
    for i in 0..5_000_000u32 {
        let n = format!("d{i}");
        if let Some(prev) = seen.insert(domain_vni(&n), n.clone()) {
            pair = Some((prev, n));
            break;
        }
    }
    let (a, b) = pair.unwrap();
    let refused = colliding_domains([a.as_str(), b.as_str(), "blue"]);
    assert_eq!(refused.len(), 1);
    let (first, later) = if a < b { (a, b) } else { (b, a) };
    assert_eq!(refused[0], (later, first));
}

#[test]
fn several_uplinks_route_by_subnet() {
    let f = infra_flows(
        "n2",
        &[
            ("eth1".into(), vec!["10.0.12.2/24".parse().unwrap()]),
            ("eth2".into(), vec!["10.0.23.2/24".parse().unwrap()]),
        ],
    );
    // in from each uplink, ip + arp per subnet, and the flood fallback.
    assert_eq!(f.len(), 2 + 4 + 1);
    assert!(f.iter().any(|x| x.priority == 10
        && x.matches.contains(&OxmField::Ipv4Dst(
            "10.0.23.0".parse().unwrap(),
            Some("255.255.255.0".parse().unwrap())
        ))
        && x.actions == vec![Act::Output(PortRef::Name("eth2".into()))]));
}

#[test]
fn names_and_ids_are_stable_and_fit_linux() {
    assert_eq!(port_name("9f8e7d6c-5b4a", true), "mwe9f8e7d6c");
    assert!(port_name("9f8e7d6c-5b4a", false).len() <= 15);
    assert_eq!(cookie("x"), cookie("x"));
    assert_ne!(cookie("x"), cookie("y"));
    assert_eq!(datapath_id("n1") >> 48, 0x4d57);
    assert_ne!(mac("x", 0), mac("x", 1));
    assert_eq!(mac("x", 0)[0] & 0x03, 0x02, "unicast, locally administered");
}
