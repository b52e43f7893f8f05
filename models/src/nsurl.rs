//! Network service URLs as NSM writes them in the pod annotation `networkservicemesh.io` and
//! the `NSM_NETWORK_SERVICES` variable: `${mechanism}://${service}[/${interface}][?labels]`,
//! several comma-separated, e.g. `kernel://vpn-gateway/nsm-1?app=foo,kernel://dns/nsm-2`.

use crate::labels::Labels;
use crate::manifest::check_ifname;
use crate::mechanism::MechanismKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsUrl {
    pub mechanism: MechanismKind,
    pub service: String,
    pub interface: Option<String>,
    pub labels: Labels,
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl NsUrl {
    /// Parses one URL, naming what is wrong.
    pub fn parse(text: &str) -> Result<NsUrl, String> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("{text:?}: expected mechanism://service[/interface][?labels]")
        })?;
        let mechanism: MechanismKind = scheme.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut segs = path.split('/');
        let service = segs.next().unwrap_or("").to_string();
        // `name@domain` names a service whose home is another domain, as upstream writes it.
        crate::validate::check_service_name(&service)
            .map_err(|e| format!("{text:?}: service {e}"))?;
        let interface = match segs.rfind(|s| !s.is_empty()) {
            Some(i) => {
                check_ifname(i).map_err(|e| format!("{text:?}: interface {e}"))?;
                Some(i.to_string())
            }
            None => None,
        };
        let mut labels = Labels::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (unescape(k), unescape(v));
            if k.is_empty() {
                return Err(format!("{text:?}: a label with no name"));
            }
            // Repeated keys join with "," as upstream's Labels() does.
            let v = match labels.get(&k) {
                Some(old) => format!("{old},{v}"),
                None => v,
            };
            labels.insert(k, v);
        }
        Ok(NsUrl {
            mechanism,
            service,
            interface,
            labels,
        })
    }

    /// Parses a comma-separated list (the annotation's value). Labels may not contain a comma
    /// here, as upstream splits the same way.
    pub fn parse_list(text: &str) -> Result<Vec<NsUrl>, String> {
        let urls: Vec<NsUrl> = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(NsUrl::parse)
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            return Err("no network service URL".into());
        }
        Ok(urls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_examples() {
        let u = NsUrl::parse("kernel://vpn-gateway/nsm-1?app=foo").unwrap();
        assert_eq!(u.mechanism, MechanismKind::Kernel);
        assert_eq!(
            (u.service.as_str(), u.interface.as_deref()),
            ("vpn-gateway", Some("nsm-1"))
        );
        assert_eq!(u.labels.get("app").map(String::as_str), Some("foo"));
        let l =
            NsUrl::parse_list("kernel://nsm-service-1/nsm-1,kernel://nsm-service-2/nsm-2").unwrap();
        assert_eq!(l.len(), 2);
        let m = NsUrl::parse("memif://my-vpp-service?A=1&B=2&B=3").unwrap();
        assert_eq!(
            (m.interface, m.labels.get("B").cloned()),
            (None, Some("2,3".into()))
        );
        assert_eq!(
            NsUrl::parse("kernel://a/nsm%2D1?x=a%20b")
                .unwrap()
                .labels
                .get("x")
                .cloned(),
            Some("a b".into())
        );
    }

    #[test]
    fn interdomain_names() {
        let u = NsUrl::parse("kernel://db-replication@site-b.example/nsm-1").unwrap();
        assert_eq!(u.service, "db-replication@site-b.example");
        assert_eq!(u.interface.as_deref(), Some("nsm-1"));
    }

    #[test]
    fn bad_urls_say_why() {
        for (u, want) in [
            ("vpn-gateway", "expected mechanism://"),
            ("carrier-pigeon://vpn", "unknown mechanism"),
            ("kernel:///nsm-1", "service"),
            ("kernel://svc/an-interface-name-too-long", "interface"),
            ("kernel://svc@Other_Domain/nsm-1", "domain"),
            ("kernel://svc?=x", "no name"),
        ] {
            let e = NsUrl::parse(u).unwrap_err();
            assert!(e.contains(want), "{u}: {e}");
        }
        assert!(NsUrl::parse_list(" , ").is_err());
        // Never a panic on odd escapes.
        for u in ["kernel://a?x=%", "kernel://a?x=%é1", "kernel://a?x=%zz"] {
            let _ = NsUrl::parse(u);
        }
    }
}
