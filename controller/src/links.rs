//! Operational link state: the underlay links the data plane at one of their ends reported
//! down (a device's eNSM confirming a data interface down by SNMP), for watchers and the UI;
//! and how each node's agent stands (attached, away, lost), from the agents' events.
//!
//! It is what was observed, beside the operator's `up` in the manifest: paths and healing keep
//! following the manifest and the endpoints' own health, which a link down at a device already
//! withdraws.

use std::collections::BTreeMap;

use crate::controller::{Controller, Event};
use crate::driver::{DriverEvent, Happened, Scope};

/// How a node's agent stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// `attached`, `away` (within its lease: the node keeps forwarding) or `lost`.
    pub state: &'static str,
    /// The event's words.
    pub detail: String,
}

impl Controller {
    /// Node agents by node, as their last event left them.
    pub fn agents(&self) -> BTreeMap<String, AgentState> {
        self.inner
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a node agent's attach, detach or lease end.
    pub(crate) fn agent_event(&self, e: &DriverEvent) {
        let (node, state) = match &e.happened {
            Happened::NodeAttached { node } => (node, "attached"),
            Happened::NodeDetached { node } => (node, "away"),
            Happened::NodeLost { node } => (node, "lost"),
            _ => return,
        };
        self.inner
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                node.clone(),
                AgentState {
                    state,
                    detail: e.detail.clone(),
                },
            );
    }

    /// Links reported down now, with why.
    pub fn links_down(&self) -> BTreeMap<String, String> {
        self.inner
            .links_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a data-plane event to the links' state, telling watchers what changed.
    pub(crate) fn link_event(&self, e: &DriverEvent) {
        let (interface, up) = match &e.happened {
            Happened::LinkDown { interface } => (interface, false),
            Happened::LinkUp { interface } => (interface, true),
            _ => return,
        };
        let vertex = match &e.scope {
            Scope::Device(v) | Scope::Node(v) => v,
            _ => return,
        };
        let names: Vec<String> = self
            .topology()
            .links
            .values()
            .filter(|l| {
                [&l.a, &l.b]
                    .iter()
                    .any(|end| &end.vertex == vertex && &end.interface == interface)
            })
            .map(|l| l.name.clone())
            .collect();
        for name in names {
            let changed = {
                let mut down = self
                    .inner
                    .links_down
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if up {
                    down.remove(&name).is_some()
                } else {
                    down.insert(name.clone(), e.detail.clone()).is_none()
                }
            };
            if changed {
                tracing::info!(link = %name, up, reason = %e.detail, "link state changed");
                self.emit(Event::Link {
                    name,
                    up,
                    reason: e.detail.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::memory::MemoryStore;
    use crate::{Config, NullDriver, SystemClock};

    const WORLD: &str = "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Device\nmetadata: {name: fw1}\nspec: {kind: firewall}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: n1-fw1}\nspec: {endpoints: [\"n1:eth1\", \"fw1:eth1\"]}\n";

    /// Input: a device reports its eth1 down, again, then up; and an interface no link uses.
    /// Output: the link on fw1:eth1 is down once (one event), then up (one event); the other
    /// interface changes nothing.
    #[tokio::test]
    async fn a_device_interface_down_takes_its_link_down_and_back() {
        let ctl = Controller::start(
            Arc::new(MemoryStore::default()),
            Arc::new(NullDriver),
            Arc::new(SystemClock),
            Config::default(),
        )
        .await
        .unwrap();
        ctl.apply(meshwire_models::Manifest::parse("t", WORLD).unwrap())
            .await
            .unwrap();
        let mut rx = ctl.subscribe();
        let ev = |h: Happened| DriverEvent {
            scope: Scope::Device("fw1".into()),
            happened: h,
            detail: "device fw1 interface eth1 is down".into(),
        };
        let down = Happened::LinkDown {
            interface: "eth1".into(),
        };
        ctl.link_event(&ev(down.clone()));
        ctl.link_event(&ev(down));
        ctl.link_event(&ev(Happened::LinkDown {
            interface: "eth9".into(),
        }));
        assert_eq!(ctl.links_down().keys().collect::<Vec<_>>(), vec!["n1-fw1"]);
        ctl.link_event(&ev(Happened::LinkUp {
            interface: "eth1".into(),
        }));
        assert!(ctl.links_down().is_empty());
        let mut links = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let Event::Link { name, up, .. } = e {
                links.push((name, up));
            }
        }
        assert_eq!(
            links,
            vec![("n1-fw1".to_string(), false), ("n1-fw1".to_string(), true)]
        );
    }
}
