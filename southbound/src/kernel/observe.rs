//! What the kernel shows of the desired connections this driver wires: a namespace gone (the
//! client's, or the endpoint's), or an interface of ours missing.

use std::collections::HashMap;

use meshwire_controller::driver::{Health, Observation};
use meshwire_models::Connection;

use super::wiring::Wiring;
use super::{netns, ns_name, KernelDriver};

impl KernelDriver {
    pub(super) async fn observe(&self, desired: &[Connection]) -> Observation {
        let mut links: HashMap<Option<String>, Option<HashMap<String, Option<String>>>> =
            HashMap::new();
        let mut obs = Observation::default();
        for c in desired {
            let Ok(Some(w)) = self.plan(c) else { continue };
            let mut underlays = Vec::new();
            if let Wiring::Vxlan {
                client, endpoint, ..
            } = &w
            {
                if let Some(c) = client {
                    underlays.push((c.underlay_netns.clone(), true));
                }
                if let Some(e) = endpoint {
                    underlays.push((e.underlay_netns.clone(), false));
                }
            }
            let sides = w.sides();
            let ends = w.ends();
            let mut health = None;
            for (ns, is_client) in sides
                .iter()
                .map(|(e, is_client)| (e.netns.clone(), *is_client))
                .chain(underlays)
            {
                if !netns::exists(&ns) {
                    self.namespaces.forget(&ns);
                    let reason = format!("namespace {} is gone", ns_name(&ns));
                    health = Some(if is_client {
                        Health::ClientGone { reason }
                    } else {
                        Health::EndpointLost { reason }
                    });
                    break;
                }
            }
            if health.is_none() {
                for end in ends {
                    let ours = end.alias(&c.id);
                    if !links.contains_key(&end.netns) {
                        let l = self.links(&end.netns).await;
                        links.insert(end.netns.clone(), l);
                    }
                    let present = links
                        .get(&end.netns)
                        .and_then(|l| l.as_ref())
                        .and_then(|l| l.get(&end.ifname))
                        .is_some_and(|a| a.as_deref() == Some(ours.as_str()));
                    if !present {
                        health = Some(Health::Missing {
                            reason: format!("{}/{} is missing", ns_name(&end.netns), end.ifname),
                        });
                        break;
                    }
                }
            }
            if let Some(h) = health {
                obs.connections.insert(c.id.clone(), h);
            }
        }
        obs
    }
}
