//! Endpoint selection: NSM `matches` semantics, then least-loaded, then round-robin.
//!
//! For a request with client labels `L` on service `S`: the first match whose `source_selector`
//! is contained in `L` decides; its routes select the endpoints whose labels for `S` contain the
//! `destination_selector` (values may be Go templates over `L`, like `{{.nodeName}}`). An empty
//! candidate set ends the search unless the match has `fallthrough`. A service without matches,
//! or with none that applies, offers every endpoint of the service.

use meshwire_models::{Labels, NetworkService, NetworkServiceEndpoint};

/// Expands `{{.key}}` / `{{ .key }}` in `value` from `client`; `None` if a key is missing.
pub fn expand_template(value: &str, client: &Labels) -> Option<String> {
    if !value.contains("{{") {
        return Some(value.to_string());
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let key = after[..end].trim().strip_prefix('.')?;
        out.push_str(client.get(key)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether every `key=value` of `selector` (templates expanded from `client`) is in `labels`.
pub fn selector_matches(labels: Option<&Labels>, selector: &Labels, client: &Labels) -> bool {
    selector.iter().all(|(k, v)| {
        let Some(want) = expand_template(v, client) else {
            return false;
        };
        labels
            .and_then(|l| l.get(k))
            .is_some_and(|have| *have == want)
    })
}

/// The endpoints `matches` allow for a client, in registry order. Endpoints may appear once.
pub fn matching<'a>(
    service: &NetworkService,
    client: &Labels,
    endpoints: &[&'a NetworkServiceEndpoint],
) -> Vec<&'a NetworkServiceEndpoint> {
    for m in &service.matches {
        if !selector_matches(Some(client), &m.source_selector, client) {
            continue;
        }
        let mut found: Vec<&NetworkServiceEndpoint> = Vec::new();
        for route in &m.routes {
            for nse in endpoints {
                if selector_matches(
                    nse.labels_for(&service.name),
                    &route.destination_selector,
                    client,
                ) && !found.iter().any(|f| f.name == nse.name)
                {
                    found.push(nse);
                }
            }
        }
        if m.routes.is_empty() {
            // A match without routes (upstream's select-forwarder) constrains nothing.
            found = endpoints.to_vec();
        }
        if found.is_empty() && m.fallthrough {
            continue;
        }
        return found;
    }
    endpoints.to_vec()
}

/// Orders candidates: fewest live connections first; among equals, rotate by `turn` so load
/// spreads round-robin.
pub fn order_by_load<T>(candidates: Vec<(T, u32)>, turn: usize) -> Vec<T> {
    let mut c: Vec<(usize, T, u32)> = candidates
        .into_iter()
        .enumerate()
        .map(|(i, (t, l))| (i, t, l))
        .collect();
    let n = c.len().max(1);
    c.sort_by_key(|(i, _, load)| (*load, (i + n - turn % n) % n));
    c.into_iter().map(|(_, t, _)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwire_models::{Capabilities, Destination, EndpointLocation, Match, Payload};
    use proptest::prelude::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn nse(name: &str, labels: Labels) -> NetworkServiceEndpoint {
        NetworkServiceEndpoint {
            name: name.into(),
            network_service_names: vec!["svc".into()],
            network_service_labels: [("svc".to_string(), labels)].into(),
            url: None,
            expires_at_ms: None,
            location: EndpointLocation::Node {
                node: "n".into(),
                netns: None,
            },
            mechanisms: Capabilities::default(),
            capacity: None,
            ipam_prefix: None,
            routes: vec![],
            interface: None,
            bridge: None,
            next: None,
        }
    }

    fn route(sel: Labels) -> Destination {
        Destination {
            destination_selector: sel,
            weight: None,
        }
    }

    #[test]
    fn templates_expand_from_client_labels() {
        let c = l(&[("nodeName", "node-2"), ("podName", "p")]);
        assert_eq!(
            expand_template("{{.nodeName}}", &c).as_deref(),
            Some("node-2")
        );
        assert_eq!(
            expand_template("x-{{ .podName }}-y", &c).as_deref(),
            Some("x-p-y")
        );
        assert_eq!(expand_template("{{.missing}}", &c), None);
    }

    #[test]
    fn service_chain_by_source_labels() {
        // nse-composition from upstream: firewall first, then passthroughs, default to firewall.
        let svc = NetworkService {
            name: "svc".into(),
            vl3: None,
            payload: Payload::Ethernet,
            matches: vec![
                Match {
                    source_selector: l(&[("app", "firewall")]),
                    routes: vec![route(l(&[("app", "gateway")]))],
                    ..Default::default()
                },
                Match {
                    routes: vec![route(l(&[("app", "firewall")]))],
                    ..Default::default()
                },
            ],
        };
        let fw = nse("fw", l(&[("app", "firewall")]));
        let gw = nse("gw", l(&[("app", "gateway")]));
        let all = [&fw, &gw];
        assert_eq!(matching(&svc, &l(&[("app", "sarah")]), &all)[0].name, "fw");
        assert_eq!(
            matching(&svc, &l(&[("app", "firewall")]), &all)[0].name,
            "gw"
        );
    }

    #[test]
    fn fallthrough_moves_on_only_when_empty() {
        let svc = NetworkService {
            name: "svc".into(),
            vl3: None,
            payload: Payload::Ip,
            matches: vec![
                Match {
                    fallthrough: true,
                    routes: vec![route(l(&[("nodeName", "{{.nodeName}}")]))],
                    ..Default::default()
                },
                Match {
                    routes: vec![route(l(&[("app", "supplier")]))],
                    ..Default::default()
                },
            ],
        };
        let local = nse("local", l(&[("nodeName", "n1")]));
        let supplier = nse("supplier", l(&[("app", "supplier")]));
        let all = [&local, &supplier];
        assert_eq!(
            matching(&svc, &l(&[("nodeName", "n1")]), &all)[0].name,
            "local"
        );
        assert_eq!(
            matching(&svc, &l(&[("nodeName", "n9")]), &all)[0].name,
            "supplier"
        );
        // Without fallthrough an empty set is final.
        let mut strict = svc.clone();
        strict.matches[0].fallthrough = false;
        assert!(matching(&strict, &l(&[("nodeName", "n9")]), &all).is_empty());
    }

    #[test]
    fn no_matches_means_every_endpoint() {
        let svc = NetworkService {
            name: "svc".into(),
            vl3: None,
            payload: Payload::Ip,
            matches: vec![],
        };
        let a = nse("a", Labels::new());
        assert_eq!(matching(&svc, &Labels::new(), &[&a]).len(), 1);
    }

    proptest! {
        /// Least-loaded always comes first, and equal loads take turns.
        #[test]
        fn least_loaded_first(loads in proptest::collection::vec(0u32..5, 1..20), turn in 0usize..50) {
            let items: Vec<(usize, u32)> = loads.iter().copied().enumerate().collect();
            let order = order_by_load(items, turn);
            let min = *loads.iter().min().unwrap();
            prop_assert_eq!(loads[order[0]], min);
            for w in order.windows(2) {
                prop_assert!(loads[w[0]] <= loads[w[1]]);
            }
        }
    }

    #[test]
    fn equal_loads_rotate() {
        let firsts: Vec<usize> = (0..3)
            .map(|t| order_by_load(vec![(0, 1), (1, 1), (2, 1)], t)[0])
            .collect();
        assert_eq!(firsts, vec![0, 1, 2]);
    }
}
