//! Federation of vL3 networks across domains: what two controllers exchange.
//!
//! A vL3's *home* domain holds the service (`db-replication`) and delegates part of its prefix
//! to each federated domain; a federated domain's routers offer it as `db-replication@home`.
//! Each round the federated domain's controller sends its side ([`Vl3Exchange`]: its live
//! routers with their underlay addresses, its members, and the legs it proposes between its
//! routers and the home's) to the home's controller, with the secret the two domains share,
//! and gets the home's side back (its routers and members, the service's address plan, and
//! the proposed legs it could not take). Each controller wires only its own end of each leg.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::service::Vl3;
use crate::validate::{check_name, Invalid};

/// Most routers one side may list.
pub const MAX_ROUTERS: usize = 256;
/// Most members one side may list.
pub const MAX_MEMBERS: usize = 65_536;

/// One domain's side of a shared vL3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Vl3Exchange {
    /// The sender's domain.
    pub domain: String,
    /// The service's name in its home domain.
    pub service: String,
    /// The sender's live routers.
    #[serde(default)]
    pub routers: Vec<FedRouter>,
    /// The sender's members, each with the router serving it.
    #[serde(default)]
    pub members: Vec<FedMember>,
    /// From the federated domain: every leg it wants between its routers and the home's; from
    /// the home: the legs it holds its end of (the federated domain routes over those only).
    #[serde(default)]
    pub legs: Vec<FedLeg>,
    /// From the home: proposed legs it could not take (with why).
    #[serde(default)]
    pub refused: Vec<FedLeg>,
    /// From the home: the service's plan, `members` set to the caller's delegated part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vl3: Option<Vl3>,
    /// From the home: a digest of its side (routers, members, plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u64>,
    /// From the federated domain: the digest of the home's side it holds. A home with nothing
    /// new holds the exchange until its side changes (or for its hold), so changes cross at
    /// once without polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
}

/// A router and the underlay address its tunnels end on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FedRouter {
    pub name: String,
    pub address: IpAddr,
}

/// A member, the router it is behind, and its name in the zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FedMember {
    pub router: String,
    pub addr: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A tunnel between a federated domain's router (`owner`, whose controller chose its
/// parameters) and a home router (`other`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FedLeg {
    pub owner: String,
    pub other: String,
    pub vni: u32,
    pub port: u16,
    /// The owner's address on the leg and the other's (a `/31` of the owner's part).
    pub owner_addr: IpNet,
    pub other_addr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Vl3Exchange {
    /// Checks names, counts and that every address lies in `part` (the sender's part of the
    /// prefix) when given.
    pub fn validate(&self, part: Option<IpNet>) -> Result<(), Invalid> {
        crate::service::check_dns_name(&self.domain).map_err(|r| Invalid::new("domain", r))?;
        check_name(&self.service).map_err(|r| Invalid::new("service", r))?;
        if self.routers.len() > MAX_ROUTERS {
            return Err(Invalid::new("routers", format!("at most {MAX_ROUTERS}")));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(Invalid::new("members", format!("at most {MAX_MEMBERS}")));
        }
        let legs = MAX_ROUTERS * MAX_ROUTERS;
        if self.legs.len() > legs || self.refused.len() > legs {
            return Err(Invalid::new("legs", format!("at most {legs}")));
        }
        for r in &self.routers {
            check_name(&r.name).map_err(|e| Invalid::new("routers[].name", e))?;
            let ok = match r.address {
                IpAddr::V4(a) => {
                    !(a.is_loopback()
                        || a.is_multicast()
                        || a.is_unspecified()
                        || a.is_broadcast()
                        || a.is_link_local())
                }
                IpAddr::V6(_) => false,
            };
            if !ok {
                return Err(Invalid::new(
                    "routers[].address",
                    format!(
                        "{} is no IPv4 unicast address a tunnel can end on",
                        r.address
                    ),
                ));
            }
        }
        let inside = |a: IpAddr, field: &str| -> Result<(), Invalid> {
            match part {
                Some(p) if !p.contains(&a) => Err(Invalid::new(
                    field,
                    format!(
                        "{a} is outside {p}, the part of the prefix for {}",
                        self.domain
                    ),
                )),
                _ => Ok(()),
            }
        };
        for m in &self.members {
            check_name(&m.router).map_err(|e| Invalid::new("members[].router", e))?;
            if let Some(n) = &m.name {
                crate::service::check_dns_name(n).map_err(|e| Invalid::new("members[].name", e))?;
            }
            inside(m.addr, "members[].addr")?;
        }
        for l in &self.legs {
            check_name(&l.owner).map_err(|e| Invalid::new("legs[].owner", e))?;
            check_name(&l.other).map_err(|e| Invalid::new("legs[].other", e))?;
            inside(l.owner_addr.addr(), "legs[].owner_addr")?;
            inside(l.other_addr.addr(), "legs[].other_addr")?;
            // The two halves of one /31, and nothing wider.
            let pair = l.owner_addr.prefix_len() == 31
                && l.other_addr.prefix_len() == 31
                && l.owner_addr.trunc() == l.other_addr.trunc()
                && l.owner_addr.addr() != l.other_addr.addr();
            if !pair {
                return Err(Invalid::new(
                    "legs[].owner_addr",
                    format!(
                        "{} and {} are not the two halves of one /31",
                        l.owner_addr, l.other_addr
                    ),
                ));
            }
            if l.vni == 0 || l.vni > 0x00ff_ffff {
                return Err(Invalid::new("legs[].vni", format!("{} is no VNI", l.vni)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_outside_the_part_are_refused() {
        let mut x = Vl3Exchange {
            domain: "site-a.example".into(),
            service: "db".into(),
            members: vec![FedMember {
                router: "r1".into(),
                addr: "10.90.128.2".parse().unwrap(),
                name: Some("db1".into()),
            }],
            ..Default::default()
        };
        let part: IpNet = "10.90.128.0/17".parse().unwrap();
        assert!(x.validate(Some(part)).is_ok());
        x.members[0].addr = "10.90.0.5".parse().unwrap();
        assert!(x.validate(Some(part)).is_err());
        x.domain = "Bad_Domain".into();
        assert!(x.validate(None).is_err());
    }

    #[test]
    fn legs_are_one_slash_31_and_routers_unicast() {
        let part: IpNet = "10.90.128.0/17".parse().unwrap();
        let leg = |a: &str, b: &str| FedLeg {
            owner: "ra1".into(),
            other: "rb1".into(),
            vni: 7,
            port: 4789,
            owner_addr: a.parse().unwrap(),
            other_addr: b.parse().unwrap(),
            why: None,
        };
        let mut x = Vl3Exchange {
            domain: "site-a.example".into(),
            service: "db".into(),
            legs: vec![leg("10.90.128.3/31", "10.90.128.2/31")],
            routers: vec![FedRouter {
                name: "ra1".into(),
                address: "192.0.2.1".parse().unwrap(),
            }],
            ..Default::default()
        };
        assert!(x.validate(Some(part)).is_ok());
        // A wide prefix would route the whole vL3 (or more) onto the leg.
        x.legs = vec![leg("10.90.128.3/1", "10.90.128.2/31")];
        assert!(x.validate(Some(part)).is_err());
        x.legs = vec![leg("10.90.128.3/31", "10.90.128.4/31")];
        assert!(x.validate(Some(part)).is_err());
        x.legs.clear();
        for bad in [
            "127.0.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "2001:db8::1",
        ] {
            x.routers[0].address = bad.parse().unwrap();
            assert!(x.validate(Some(part)).is_err(), "{bad}");
        }
    }
}
