//! Resource pools: VNIs, GRE keys, MPLS labels, VLAN ids and connection addresses.
//!
//! Allocation rotates (next fit from a cursor) so a value just released is not handed out again
//! at once, which keeps a late packet of a closed connection out of a new one. Claims are derived
//! from the live connections at restore time, so a restart gives back exactly the same claims.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use meshwire_models::mechanism::Range;

use crate::ranges::{next_free, RangeSet};

/// A pool ran dry or a value was already taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{pool} pool exhausted: every value in {start}..{end} is in use")]
    Exhausted {
        pool: String,
        start: u128,
        end: u128,
    },
    #[error("{pool} pool: {value} is already in use")]
    Taken { pool: String, value: String },
}

/// A pool of numbers (VNI, GRE key, MPLS label, VLAN id).
#[derive(Debug, Clone)]
pub struct NumberPool {
    name: &'static str,
    used: RangeSet,
    cursor: u32,
}

impl NumberPool {
    pub fn new(name: &'static str) -> Self {
        NumberPool {
            name,
            used: RangeSet::new(),
            cursor: 0,
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.len() as usize
    }

    pub fn is_used(&self, v: u32) -> bool {
        self.used.contains(v.into())
    }

    /// Claims the next free value of `range` at or after the cursor, wrapping around once.
    /// O(log n): a run of claimed values is passed in one step.
    pub fn claim(&mut self, range: Range) -> Result<u32, PoolError> {
        let (lo, hi) = (u128::from(range.start), u128::from(range.end));
        let from = u128::from(self.cursor.clamp(range.start, range.end));
        let found = next_free(&[&self.used], lo, hi, 1, 1, from)
            .or_else(|| next_free(&[&self.used], lo, from.saturating_sub(1).max(lo), 1, 1, lo))
            .filter(|v| *v <= hi);
        match found {
            Some(v) => {
                self.used.insert(v);
                let v = v as u32;
                self.cursor = v.wrapping_add(1);
                Ok(v)
            }
            None => Err(PoolError::Exhausted {
                pool: self.name.to_string(),
                start: range.start.into(),
                end: range.end.into(),
            }),
        }
    }

    /// Claims `count` distinct values of `range`, all or none.
    pub fn claim_many(&mut self, range: Range, count: usize) -> Result<Vec<u32>, PoolError> {
        let mut got = Vec::with_capacity(count);
        for _ in 0..count {
            match self.claim(range) {
                Ok(v) => got.push(v),
                Err(e) => {
                    for v in got {
                        self.release(v);
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Claims a given value (restore).
    pub fn claim_exact(&mut self, v: u32) -> Result<(), PoolError> {
        if !self.used.insert(v.into()) {
            return Err(PoolError::Taken {
                pool: self.name.to_string(),
                value: v.to_string(),
            });
        }
        Ok(())
    }

    pub fn release(&mut self, v: u32) {
        self.used.remove(v.into());
    }
}

/// What an address claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressShape {
    /// A point-to-point pair (/31 or /127): endpoint gets the even address, client the odd one.
    Pair,
    /// One host address in the prefix (Ethernet services: every client in the endpoint's subnet).
    Host,
}

/// Addresses from prefixes, one sub-pool per prefix: claimed offsets as merged runs, and a
/// rotating cursor.
#[derive(Debug, Clone, Default)]
pub struct AddressPools {
    pools: HashMap<IpNet, (RangeSet, u128)>,
}

impl AddressPools {
    /// Claims a pair (returns `[endpoint, client]`) or a host address (returns `[client]`) from
    /// `prefix`, skipping anything inside `excluded` and any `reserved` offsets. The cost is
    /// O((exclusions + reserved) × log claims): claimed runs and excluded prefixes are each
    /// passed in one step, never address by address.
    pub fn claim(
        &mut self,
        prefix: IpNet,
        shape: AddressShape,
        excluded: &[IpNet],
        reserved: &[u128],
    ) -> Result<Vec<IpNet>, PoolError> {
        let bits = prefix.max_prefix_len() - prefix.prefix_len();
        let size: u128 = if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        };
        let (step, first, last) = match shape {
            AddressShape::Pair => (2u128, 0u128, size.saturating_sub(2)),
            // Host: skip the network address and, in IPv4, the broadcast address.
            AddressShape::Host => (
                1,
                1,
                if prefix.addr().is_ipv4() {
                    size.saturating_sub(2)
                } else {
                    size - 1
                },
            ),
        };
        let exhausted = || PoolError::Exhausted {
            pool: format!("address {prefix}"),
            start: first,
            end: last,
        };
        if size < 2 || first > last {
            return Err(exhausted());
        }
        let base = addr_to_u128(prefix.network());
        let top = base.saturating_add(size - 1);
        // Excluded prefixes and reserved offsets, as offsets within `prefix`.
        let mut blocked: Vec<(u128, u128)> = excluded
            .iter()
            .filter(|x| x.addr().is_ipv4() == prefix.addr().is_ipv4())
            .filter_map(|x| {
                let (lo, hi) = (addr_to_u128(x.network()), addr_to_u128(x.broadcast()));
                (hi >= base && lo <= top).then(|| (lo.max(base) - base, hi.min(top) - base))
            })
            .collect();
        blocked.extend(reserved.iter().map(|r| (*r, *r)));
        let blocked = RangeSet::from_intervals(blocked);
        let width = if shape == AddressShape::Pair { 2 } else { 1 };
        let (used, cursor) = self.pools.entry(prefix).or_default();
        let from = if *cursor >= first && *cursor <= last {
            *cursor
        } else {
            first
        };
        let offset = next_free(&[used, &blocked], first, last, step, width, from)
            .or_else(|| next_free(&[used, &blocked], first, last, step, width, first))
            .ok_or_else(exhausted)?;
        for o in offset..offset + width {
            used.insert(o);
        }
        *cursor = offset.saturating_add(step);
        let addrs: Vec<IpAddr> = (offset..offset + width)
            .map(|o| u128_to_addr(base + o, prefix))
            .collect();
        let len = match shape {
            AddressShape::Pair => prefix.max_prefix_len() - 1,
            AddressShape::Host => prefix.prefix_len(),
        };
        addrs
            .into_iter()
            .map(|a| IpNet::new(a, len).map_err(|_| exhausted()))
            .collect()
    }

    /// The address at `offset` of `prefix` with the prefix's length (the endpoint side of an
    /// Ethernet service).
    pub fn host_at(prefix: IpNet, offset: u128) -> IpNet {
        let a = u128_to_addr(addr_to_u128(prefix.network()) + offset, prefix);
        IpNet::new(a, prefix.prefix_len()).unwrap_or(prefix)
    }

    /// Marks the claim holding `addr` as used (restore) or releases it. A pair occupies two
    /// offsets, so pairs and host addresses can share one prefix without colliding.
    pub fn mark(&mut self, prefix: IpNet, shape: AddressShape, addr: IpAddr, used: bool) {
        let off = addr_to_u128(addr).wrapping_sub(addr_to_u128(prefix.network()));
        let offs = match shape {
            AddressShape::Pair => vec![off & !1, off | 1],
            AddressShape::Host => vec![off],
        };
        let entry = self.pools.entry(prefix).or_default();
        for o in offs {
            if used {
                entry.0.insert(o);
            } else {
                entry.0.remove(o);
            }
        }
    }

    /// Addresses in use over all prefixes (a pair counts two).
    pub fn in_use(&self) -> usize {
        self.pools.values().map(|(u, _)| u.len() as usize).sum()
    }
}

fn addr_to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_addr(v: u128, family: IpNet) -> IpAddr {
    match family {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rotates_and_wraps() {
        let mut p = NumberPool::new("vni");
        let r = Range::new(10, 12);
        assert_eq!(p.claim(r).unwrap(), 10);
        assert_eq!(p.claim(r).unwrap(), 11);
        p.release(10);
        assert_eq!(
            p.claim(r).unwrap(),
            12,
            "a released value is not reused at once"
        );
        assert_eq!(p.claim(r).unwrap(), 10, "wraps around");
        assert!(matches!(p.claim(r), Err(PoolError::Exhausted { .. })));
    }

    #[test]
    fn pairs_skip_excluded_and_are_slash_31() {
        let mut a = AddressPools::default();
        let prefix: IpNet = "172.16.0.0/29".parse().unwrap();
        let excluded: Vec<IpNet> = vec!["172.16.0.0/31".parse().unwrap()];
        let got = a.claim(prefix, AddressShape::Pair, &excluded, &[]).unwrap();
        assert_eq!(got[0].to_string(), "172.16.0.2/31");
        assert_eq!(got[1].to_string(), "172.16.0.3/31");
        a.claim(prefix, AddressShape::Pair, &excluded, &[]).unwrap();
        a.claim(prefix, AddressShape::Pair, &excluded, &[]).unwrap();
        assert!(a.claim(prefix, AddressShape::Pair, &excluded, &[]).is_err());
        a.mark(
            prefix,
            AddressShape::Pair,
            "172.16.0.5".parse().unwrap(),
            false,
        );
        let got = a.claim(prefix, AddressShape::Pair, &excluded, &[]).unwrap();
        assert_eq!(got[0].to_string(), "172.16.0.4/31");
    }

    #[test]
    fn hosts_skip_network_broadcast_and_reserved() {
        let mut a = AddressPools::default();
        let prefix: IpNet = "10.1.0.0/30".parse().unwrap();
        let got = a.claim(prefix, AddressShape::Host, &[], &[1]).unwrap();
        assert_eq!(got[0].to_string(), "10.1.0.2/30");
        assert!(a.claim(prefix, AddressShape::Host, &[], &[1]).is_err());
    }

    /// Input: a /8 with a quarter of it claimed in one run and 256 excluded prefixes in front of
    /// the cursor. Output: the next claim is found at once (runs and prefixes are jumped over),
    /// where a scan address by address would visit millions of slots.
    #[test]
    fn timer_claims_jump_runs_and_exclusions() {
        let mut a = AddressPools::default();
        let prefix: IpNet = "10.0.0.0/8".parse().unwrap();
        for o in 0..(1u32 << 12) {
            a.mark(
                prefix,
                AddressShape::Pair,
                std::net::Ipv4Addr::from(0x0a00_0000 + 2 * o).into(),
                true,
            );
        }
        let excluded: Vec<IpNet> = (0..256u32)
            .map(|i| {
                IpNet::new(
                    std::net::Ipv4Addr::from(0x0a00_0000 + (1 << 13) + i * 1024).into(),
                    22,
                )
                .unwrap()
            })
            .collect();
        let got = a.claim(prefix, AddressShape::Pair, &excluded, &[]).unwrap();
        assert_eq!(got[0].addr(), "10.4.32.0".parse::<IpAddr>().unwrap());
        let mut p = NumberPool::new("vni");
        for v in 0..1_000_000 {
            p.claim_exact(v).unwrap();
        }
        assert_eq!(p.claim(Range::new(0, 16_777_215)).unwrap(), 1_000_000);
    }

    proptest! {
        /// Claims never collide, stay in range, and release makes room again.
        #[test]
        fn numbers_never_collide(start in 0u32..100, len in 1u32..50, ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let r = Range::new(start, start + len - 1);
            let mut p = NumberPool::new("t");
            let mut live: Vec<u32> = Vec::new();
            for claim in ops {
                if claim || live.is_empty() {
                    match p.claim(r) {
                        Ok(v) => {
                            prop_assert!(r.contains(v));
                            prop_assert!(!live.contains(&v));
                            live.push(v);
                        }
                        Err(_) => prop_assert_eq!(live.len() as u32, len),
                    }
                } else {
                    let v = live.remove(0);
                    p.release(v);
                }
                prop_assert_eq!(p.in_use(), live.len());
            }
        }

        #[test]
        fn pairs_never_overlap(n in 1usize..40) {
            let mut a = AddressPools::default();
            let prefix: IpNet = "172.16.0.0/26".parse().unwrap();
            let mut seen = std::collections::HashSet::new();
            for _ in 0..n {
                match a.claim(prefix, AddressShape::Pair, &[], &[]) {
                    Ok(v) => {
                        prop_assert!(prefix.contains(&v[0].addr()) && prefix.contains(&v[1].addr()));
                        prop_assert!(seen.insert(v[0].addr()) && seen.insert(v[1].addr()));
                    }
                    Err(_) => prop_assert_eq!(seen.len(), 64),
                }
            }
        }
    }
}
