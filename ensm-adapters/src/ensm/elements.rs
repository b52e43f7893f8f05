//! Elements: what a connection becomes on the device: the range check (the device has the
//! last word on negotiated numbers), driver errors, and the cross-connect of a chain element.

use std::collections::BTreeMap;

use meshwire_controller::driver::DriverError;
use meshwire_models::{Connection, Mechanism};

use crate::profile::{self};

use meshwire_controller::driver::Failure;

use crate::netconf::client::NetconfError;

use super::*;

impl Ensm {
    /// A failure that is the request's (a number outside the device's range, a profile that
    /// cannot express it): the device was not asked.
    pub(super) fn err(&self, c: &Connection, reason: impl std::fmt::Display) -> DriverError {
        DriverError::new(
            self.inner.name.clone(),
            format!("connection {}", c.id),
            reason,
        )
        .with(Failure::Invalid)
    }

    /// A failure talking to the device, typed by what the device did: refused (with its own
    /// error), or did not answer.
    pub(super) fn device_err(&self, c: &Connection, e: NetconfError) -> DriverError {
        let by = format!("device {}", self.inner.device.name);
        let failure = match &e {
            NetconfError::Rpc { errors, .. } => Failure::Refused {
                by,
                peer_error: errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            NetconfError::HostKey { why, .. } => Failure::Refused {
                by,
                peer_error: format!("host key: {why}"),
            },
            NetconfError::Auth { user, .. } => Failure::Refused {
                by,
                peer_error: format!("authentication as {user} failed"),
            },
            NetconfError::Connect { .. }
            | NetconfError::Protocol { .. }
            | NetconfError::Timeout { .. }
            | NetconfError::Closed { .. } => Failure::Unreachable { peer: by },
        };
        DriverError::new(self.inner.name.clone(), format!("connection {}", c.id), e).with(failure)
    }

    /// Whether the negotiated parameters are ones this device accepts (the eNSM's part of the
    /// negotiation: the controller offered from the registered ranges; the device has the last
    /// word).
    pub(super) fn accepts(&self, c: &Connection) -> Result<(), String> {
        let me = Some(self.inner.device.name.as_str());
        let as_client = c.placement.client_device.as_deref() == me;
        if c.placement.endpoint_device.as_deref() != me && !as_client {
            return Err(format!(
                "connection's endpoint is {:?}, not device {}",
                c.placement.endpoint_device, self.inner.device.name
            ));
        }
        if !as_client
            && !self
                .inner
                .device
                .endpoints
                .iter()
                .any(|e| e.name == c.network_service_endpoint_name)
        {
            return Err(format!(
                "endpoint {} is not one of device {}'s",
                c.network_service_endpoint_name, self.inner.device.name
            ));
        }
        let m = c
            .hops
            .last()
            .map(|h| &h.mechanism)
            .ok_or("connection has no mechanism")?;
        let t = self
            .inner
            .profile
            .mechanisms
            .get(&m.kind())
            .ok_or_else(|| {
                format!(
                    "device {} does not terminate {}",
                    self.inner.device.name,
                    m.kind()
                )
            })?;
        let (what, value) = match m {
            Mechanism::Vxlan { vni, .. } => ("VNI", *vni),
            Mechanism::Gre { key, .. } => ("GRE key", *key),
            Mechanism::Mpls { label_out, .. } => ("MPLS label", *label_out),
            Mechanism::Vlan { id } => ("VLAN", *id),
            _ => return Ok(()),
        };
        if let Some(r) = t.range {
            if value < r.start || value > r.end {
                return Err(format!(
                    "{what} {value} is outside the device's range {}..{}",
                    r.start, r.end
                ));
            }
        }
        Ok(())
    }

    /// Whether the device is the connection's client (the onward leg of a chain).
    pub(super) fn is_client(&self, c: &Connection) -> bool {
        c.placement.client_device.as_deref() == Some(self.inner.device.name.as_str())
    }

    /// The cross-connect joining `c` to its onward leg, when the controller gave it one
    /// (`c` reaches a chain element): (config, undo).
    pub(super) fn cross_connect(
        &self,
        c: &Connection,
    ) -> Result<Option<(String, String)>, DriverError> {
        // The cross-connect lives on the endpoint's device; the device that is the client of
        // the onward leg configures only that leg's client half.
        let Some(onward) = c.chain.onward.as_deref().filter(|_| !self.is_client(c)) else {
            return Ok(None);
        };
        let xc = self.inner.profile.cross_connect.as_ref().ok_or_else(|| {
            self.err(
                c,
                format!(
                    "endpoint {} passes connections on (onward leg {onward}), but profile {} has no crossConnect",
                    c.network_service_endpoint_name, self.inner.profile.name
                ),
            )
        })?;
        let vars = cross_connect_vars(&c.id, onward);
        let config = profile::render(&xc.config, &vars).map_err(|e| self.err(c, e))?;
        let undo = profile::render(&xc.remove, &vars).map_err(|e| self.err(c, e))?;
        Ok(Some((config, undo)))
    }
}

pub(super) fn cross_connect_vars(id: &str, onward: &str) -> BTreeMap<&'static str, String> {
    let a = profile::tunnel_name(id);
    BTreeMap::from([
        ("name", format!("xc{}", &a[2..])),
        ("connection", id.to_string()),
        ("next", onward.to_string()),
        ("a", a),
        ("b", profile::tunnel_name(onward)),
    ])
}
