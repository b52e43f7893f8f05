//! A vL3 router's DNS server: authoritative for its zone, from the names the desired set
//! gives (its members' and, through its peer legs, every other member's). Built on
//! `hickory-server`; the answers are ours:
//! - a name of the zone with addresses: its `A` records (TTL [`TTL`]: a healed member's name
//!   follows it quickly); any other type: no data (`NOERROR`, empty), so a resolver asking
//!   `AAAA` first moves on at once;
//! - a name of the zone without: `NXDOMAIN`;
//! - a name outside the zone: `REFUSED`, so a resolver moves on to its next nameserver (the
//!   pod's cluster DNS keeps answering everything else).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// Seconds a resolver may keep an answer.
pub const TTL: u32 = 5;

/// The zones one server answers for: by zone (lowercase, no trailing dot), names relative to
/// the zone (`db1`), each with its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    pub zones: BTreeMap<String, BTreeMap<String, BTreeSet<Ipv4Addr>>>,
}

/// What a query gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<Ipv4Addr>),
    NoData,
    NxDomain,
    Refused,
}

impl Zone {
    /// The answer to `name` (absolute or not, any case) and type `a` (`true`: an `A` query).
    pub fn answer(&self, name: &str, a: bool) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        // The longest zone the name is in.
        let found = self
            .zones
            .iter()
            .filter_map(|(zone, names)| {
                let rel = if name == *zone {
                    Some("")
                } else {
                    name.strip_suffix(zone.as_str())
                        .and_then(|r| r.strip_suffix('.'))
                };
                rel.map(|r| (zone.len(), r, names))
            })
            .max_by_key(|(len, _, _)| *len);
        let Some((_, rel, names)) = found else {
            return Answer::Refused;
        };
        if rel.is_empty() {
            return Answer::NoData;
        }
        match names.get(rel) {
            Some(addrs) if a && !addrs.is_empty() => {
                Answer::Addresses(addrs.iter().copied().collect())
            }
            Some(_) => Answer::NoData,
            None => Answer::NxDomain,
        }
    }
}

/// The request handler: the zone as the last sync left it.
#[derive(Clone, Default)]
pub struct Handler(pub Arc<RwLock<Zone>>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return sent(response_handle.send_response(resp).await, &request.metadata);
            }
        };
        let qname: &LowerName = info.query.name();
        let qtype = info.query.query_type();
        let answer = {
            let zone = self.0.read().unwrap_or_else(|p| p.into_inner());
            zone.answer(&qname.to_string(), qtype == RecordType::A)
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let result = match answer {
            Answer::Addresses(addrs) => {
                let name = Name::from(qname.clone());
                let records: Vec<Record> = addrs
                    .into_iter()
                    .map(|a| Record::from_rdata(name.clone(), TTL, RData::A(A(a))))
                    .collect();
                let resp = builder.build(meta, records.iter(), [], [], []);
                response_handle.send_response(resp).await
            }
            Answer::NoData => {
                let resp = builder.build_no_records(meta);
                response_handle.send_response(resp).await
            }
            Answer::NxDomain => {
                meta.response_code = ResponseCode::NXDomain;
                let resp = builder.build_no_records(meta);
                response_handle.send_response(resp).await
            }
            Answer::Refused => {
                let resp = builder.error_msg(&request.metadata, ResponseCode::Refused);
                response_handle.send_response(resp).await
            }
        };
        sent(result, &request.metadata)
    }
}

fn sent<E: std::fmt::Display>(r: Result<ResponseInfo, E>, request: &Metadata) -> ResponseInfo {
    match r {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS answer failed");
            let mut meta = Metadata::response_from_request(request);
            meta.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: meta,
                counts: Default::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone {
            zones: BTreeMap::from([
                (
                    "db-replication".to_string(),
                    BTreeMap::from([(
                        "db1".to_string(),
                        BTreeSet::from([Ipv4Addr::new(10, 90, 0, 2)]),
                    )]),
                ),
                ("other".to_string(), BTreeMap::new()),
            ]),
        }
    }

    #[test]
    fn answers() {
        let z = zone();
        assert_eq!(
            z.answer("DB1.db-replication.", true),
            Answer::Addresses(vec![Ipv4Addr::new(10, 90, 0, 2)])
        );
        assert_eq!(z.answer("db1.db-replication", false), Answer::NoData);
        assert_eq!(z.answer("db9.db-replication.", true), Answer::NxDomain);
        assert_eq!(z.answer("db-replication.", true), Answer::NoData);
        assert_eq!(z.answer("example.com.", true), Answer::Refused);
        assert_eq!(z.answer("xdb-replication.", true), Answer::Refused);
        assert_eq!(z.answer("db1.other", true), Answer::NxDomain);
    }
}
