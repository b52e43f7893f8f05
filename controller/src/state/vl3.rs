//! vL3 networks: a member's address, routes and resolver, planned from the service's address
//! plan. The routers' mesh (peer legs and their routes) is [`crate::vl3`]'s.
//!
//! A member gets one host address of the vL3's prefix as a `/32`, unique across the vL3
//! (the prefix is one pool whichever router serves it), and keeps it when it heals onto
//! another router. Its router holds the gateway (the prefix's first host address) on the
//! member's leg: the member routes the gateway onto its interface and the whole prefix via
//! the gateway; the router routes the member's `/32` onto its leg.

use std::net::IpAddr;

use ipnet::IpNet;
use meshwire_models::service::check_dns_name;
use meshwire_models::{
    ConnectionRequest, DnsConfig, DnsContext, IpContext, Route, Vl3, Vl3Leg, Vl3Role,
};

use crate::pool::{AddressPools, AddressShape, PoolError};

/// Offset of the gateway in the prefix (never a member's).
const GATEWAY_OFFSET: u128 = 1;

/// Claims a member's address in `v`'s prefix.
pub(super) fn member_address(
    pools: &mut AddressPools,
    v: &Vl3,
    excluded: &[IpNet],
) -> Result<IpContext, PoolError> {
    let mut avoid = v.delegated();
    avoid.extend_from_slice(excluded);
    let got = pools.claim(
        v.member_prefix(),
        AddressShape::Host,
        &avoid,
        &[GATEWAY_OFFSET],
    )?;
    let a = got.first().map(|n| n.addr()).ok_or(PoolError::Exhausted {
        pool: format!("address {}", v.prefix),
        start: 0,
        end: 0,
    })?;
    let mut ip = member_context(v, host(a));
    ip.excluded_prefixes = excluded.to_vec();
    Ok(ip)
}

/// A peer leg's two addresses: a pair of this domain's part of the vL3's prefix, never the
/// gateway's. Its routes are the mesh's to fill.
pub(super) fn peer_addresses(pools: &mut AddressPools, v: &Vl3) -> Result<IpContext, PoolError> {
    let pair = pools.claim(
        v.member_prefix(),
        AddressShape::Pair,
        &v.delegated(),
        &[GATEWAY_OFFSET],
    )?;
    Ok(IpContext {
        src_ip_addrs: vec![pair[1]],
        dst_ip_addrs: vec![pair[0]],
        ..Default::default()
    })
}

/// A member's addresses and routes for address `addr`.
pub(super) fn member_context(v: &Vl3, addr: IpNet) -> IpContext {
    let gw = host(v.gateway());
    let addr = host(addr.addr());
    IpContext {
        src_ip_addrs: vec![addr],
        dst_ip_addrs: vec![gw],
        src_routes: vec![
            Route {
                prefix: gw,
                next_hop: None,
            },
            Route {
                prefix: v.prefix,
                next_hop: Some(gw.addr()),
            },
        ],
        dst_routes: vec![Route {
            prefix: addr,
            next_hop: None,
        }],
        excluded_prefixes: vec![],
    }
}

fn host(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

/// What the connection is in the vL3: a member, or (`peer`) a leg between two routers.
pub(super) fn leg(v: &Vl3, service: &str, req: &ConnectionRequest, peer: bool) -> Vl3Leg {
    Vl3Leg {
        role: if peer { Vl3Role::Peer } else { Vl3Role::Member },
        zone: v.zone(service).to_string(),
        gateway: v.gateway(),
        name: (!peer).then(|| member_name(req)).flatten(),
        client_members: vec![],
        endpoint_members: vec![],
        remote: None,
    }
}

/// A member's name in the zone: its `podName` label (as upstream's clients send it), else
/// the workload's name; none when that is no DNS label.
pub fn member_name(req: &ConnectionRequest) -> Option<String> {
    let n = req
        .labels
        .get("podName")
        .map(String::as_str)
        .unwrap_or_else(|| req.client.workload())
        .to_ascii_lowercase();
    (!n.contains('.') && check_dns_name(&n).is_ok()).then_some(n)
}

/// The member's resolver: its router, for the zone.
pub(super) fn dns_context(v: &Vl3, service: &str) -> DnsContext {
    DnsContext {
        configs: vec![DnsConfig {
            dns_server_ips: vec![v.gateway().to_string()],
            search_domains: vec![v.zone(service).to_string()],
        }],
    }
}

impl super::State {
    /// Claims a federated leg's tunnel number and addresses in vL3 `v` (this domain owning the
    /// leg): a VNI searched from `seed` onwards (so two domains' choices rarely meet), never
    /// one of `avoid`, and a pair of this domain's part of the prefix.
    pub(crate) fn claim_federated(
        &mut self,
        v: &Vl3,
        seed: u64,
        avoid: &[u32],
    ) -> Result<(u32, IpNet, IpNet), PoolError> {
        let range = meshwire_models::mechanism::VxlanCap::default().vni_range;
        let span = u64::from(range.end - range.start) + 1;
        let from = range.start + (seed % span) as u32;
        let mut skipped = Vec::new();
        let vni = loop {
            let got = self
                .numbers
                .vni
                .claim(meshwire_models::Range {
                    start: from,
                    end: range.end,
                })
                .or_else(|_| self.numbers.vni.claim(range));
            match got {
                Ok(n) if avoid.contains(&n) => skipped.push(n),
                other => break other,
            }
        };
        for n in skipped {
            self.numbers.vni.release(n);
        }
        let vni = vni?;
        match peer_addresses(&mut self.addresses, v) {
            Ok(ip) => Ok((vni, ip.src_ip_addrs[0], ip.dst_ip_addrs[0])),
            Err(e) => {
                self.numbers.vni.release(vni);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwire_models::ClientRef;

    fn v() -> Vl3 {
        Vl3 {
            prefix: "10.90.0.0/16".parse().unwrap(),
            domain: None,
            delegations: [(
                "site-b.example".to_string(),
                "10.90.0.2/31".parse().unwrap(),
            )]
            .into(),
            members: None,
        }
    }

    #[test]
    fn members_get_host_addresses_never_the_gateway() {
        let mut pools = AddressPools::default();
        let a = member_address(&mut pools, &v(), &[]).unwrap();
        let b = member_address(&mut pools, &v(), &[]).unwrap();
        // 10.90.0.2/31 is delegated to another domain: never one of ours.
        assert_eq!(a.src_ip_addrs[0].to_string(), "10.90.0.4/32");
        assert_eq!(b.src_ip_addrs[0].to_string(), "10.90.0.5/32");
        assert_eq!(a.dst_ip_addrs[0].to_string(), "10.90.0.1/32");
        assert_eq!(a.src_routes[1].prefix.to_string(), "10.90.0.0/16");
        assert_eq!(a.dst_routes[0].prefix.to_string(), "10.90.0.4/32");
    }

    #[test]
    fn names_from_pod_name_or_workload() {
        let mut req = ConnectionRequest {
            network_service: "db".into(),
            client: ClientRef {
                node: "h1".into(),
                name: Some("DB1".into()),
            },
            labels: Default::default(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        };
        assert_eq!(member_name(&req).as_deref(), Some("db1"));
        req.labels.insert("podName".into(), "db_2".into());
        assert_eq!(member_name(&req), None);
    }
}
