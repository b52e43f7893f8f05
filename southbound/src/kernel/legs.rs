//! The workload legs of Open vSwitch nodes ([`Wiring::Legs`](super::wiring::Wiring::Legs)):
//! each a veth pair, the workload's interface and its peer that joins the node's `br-int`, and
//! the node's underlay addresses on that bridge's internal port. Node-local netlink work, done
//! by the node's agent (or in the controller's process when it wires every node); the switch
//! itself (ports, flows) is the controller's, over OVSDB and OpenFlow.

use std::time::Duration;

use futures::TryStreamExt;
use meshwire_controller::driver::DriverError;
use meshwire_models::{Connection, Topology};
use rtnetlink::LinkUnspec;

use super::{errno, netns, ns_name, KernelDriver, EEXIST};
use crate::ovs::plan::{Leg, BRIDGE};

/// How long a leg waits for vswitchd to create the bridge's internal port.
const BRIDGE_WAIT: Duration = Duration::from_secs(5);

impl KernelDriver {
    /// Wires `legs` of `c` (idempotent); the bridge-side names it had to create, so the
    /// switch reopens those ports.
    pub(super) async fn apply_legs(
        &self,
        c: &Connection,
        legs: &[Leg],
    ) -> Result<Vec<String>, DriverError> {
        let mut nodes: Vec<&str> = legs.iter().map(|l| l.node.as_str()).collect();
        nodes.dedup();
        for n in nodes {
            self.underlay(n, BRIDGE_WAIT)
                .await
                .map_err(|e| self.err(c, format!("node {n}"), e))?;
        }
        let mut created = Vec::new();
        for leg in legs {
            let (w, b) = (&leg.workload, &leg.bridge_port);
            if !self.existing(c, w).await? || !self.existing(c, b).await? {
                self.delete(c, w).await?;
                self.delete(c, b).await?;
                self.create_veth(c, w, b).await?;
                created.push(b.ifname.clone());
            }
            self.configure(c, w).await?;
            self.configure(c, b).await?;
            // The userspace datapath does not fill in checksums the kernel left to offload.
            netns::disable_tx_checksum(&w.netns, &w.ifname)
                .await
                .map_err(|e| {
                    self.err(
                        c,
                        format!("{}/{}", ns_name(&w.netns), w.ifname),
                        format!("turning off tx checksum offload: {e}"),
                    )
                })?;
        }
        Ok(created)
    }

    /// The underlay of every Open vSwitch node this driver holds, put back where it belongs
    /// (after ovs-vswitchd restarts, its internal port is a new one without addresses). A node
    /// whose bridge does not exist yet is left for the next full set.
    pub(super) async fn underlays(&self, t: &Topology) {
        for n in t.nodes.values() {
            if self.node.as_deref().is_some_and(|me| me != n.name) {
                continue;
            }
            if crate::ovs::underlay_of(t, &n.name).is_none() {
                continue;
            }
            if let Err(e) = self.underlay(&n.name, Duration::ZERO).await {
                tracing::debug!(node = %n.name, error = %e, "underlay not on the bridge yet");
            }
        }
    }

    /// Puts node `node`'s underlay addresses on its bridge, waiting up to `wait` for vswitchd
    /// to create the bridge's internal port.
    async fn underlay(&self, node: &str, wait: Duration) -> Result<(), String> {
        let u = {
            let t = self.topology.lock().unwrap_or_else(|p| p.into_inner());
            crate::ovs::underlay_of(&t, node)
        };
        let Some(u) = u else {
            return Err(format!(
                "{node} is not an Open vSwitch node of the topology"
            ));
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self
                .underlay_on_bridge(&u.netns, &u.uplinks, &u.addrs, BRIDGE)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "could not put the underlay addresses {:?} on {BRIDGE}: {e}",
                        u.addrs
                    ))
                }
                // The internal port appears once vswitchd has created it.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Puts the underlay addresses `addrs` on `bridge` (an Open vSwitch node's internal port, the
    /// userspace tunnelling layout) and takes them off the `uplinks`; brings all of them up.
    /// Idempotent, and stateless: after ovs-vswitchd restarts (its internal port is a new tap
    /// without addresses) the same call restores them.
    async fn underlay_on_bridge(
        &self,
        ns: &Option<String>,
        uplinks: &[String],
        addrs: &[ipnet::IpNet],
        bridge: &str,
    ) -> Result<(), String> {
        let h = self
            .namespaces
            .handle(ns)
            .await
            .map_err(|e| e.to_string())?;
        let target = Self::find(&h, bridge)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{}/{bridge} does not exist", ns_name(ns)))?;
        h.link()
            .set(LinkUnspec::new_with_index(target.index).up().build())
            .execute()
            .await
            .map_err(|e| format!("{bridge} up: {e}"))?;
        for a in addrs {
            match h
                .address()
                .add(target.index, a.addr(), a.prefix_len())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(format!("address {a} on {bridge}: {e}")),
            }
        }
        for u in uplinks {
            let f = Self::find(&h, u)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{}/{u} does not exist", ns_name(ns)))?;
            h.link()
                .set(LinkUnspec::new_with_index(f.index).up().build())
                .execute()
                .await
                .map_err(|e| format!("{u} up: {e}"))?;
            let mut st = h.address().get().set_link_index_filter(f.index).execute();
            let mut stale = Vec::new();
            while let Ok(Some(m)) = st.try_next().await {
                let on_bridge = m.attributes.iter().any(|x| {
                    matches!(x, rtnetlink::packet_route::address::AddressAttribute::Address(ip)
                        if addrs.iter().any(|a| a.addr() == *ip))
                });
                if on_bridge {
                    stale.push(m);
                }
            }
            for m in stale {
                let _ = h.address().del(m).execute().await;
            }
        }
        Ok(())
    }
}
