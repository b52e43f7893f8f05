//! Service chains: the controller composes a chain element's onward leg.
//!
//! An endpoint with [`ChainNext`](meshwire_models::ChainNext) (an appliance passing traffic on)
//! gets, for each connection it accepts, an onward connection whose client is the endpoint's
//! device. The controller plans and records the onward leg *before* wiring the first one, links
//! the two in the store (`chain.previous` on the onward leg, `chain.onward` on the first), and
//! hands both to the device's driver as desired state: the driver joins them with its
//! cross-connect and never calls back into the controller.
//!
//! - **Cycles**: each onward leg avoids every endpoint already in its chain; a chain that could
//!   only go back to one of them is refused ([`ControllerError::ChainCycle`]), and so is one
//!   longer than [`MAX_CHAIN`].
//! - **Failure and crashes**: whoever undoes or closes a leg closes its onward leg after it. A
//!   leg whose `previous` is no longer held (a crash between the two legs, a failed close) is an
//!   orphan, and the reconcile loop closes it.

use meshwire_models::{ClientRef, Connection, ConnectionRequest, EndpointLocation};

use crate::controller::Controller;
use crate::error::ControllerError;

/// The most legs one chain may have.
pub const MAX_CHAIN: usize = 8;

impl Controller {
    /// The endpoints of the chain that ends with `leg`, root first (`leg`'s own endpoint last).
    pub(crate) fn chain_endpoints(&self, leg: &Connection) -> Vec<String> {
        let s = self.state();
        let mut names = vec![leg.network_service_endpoint_name.clone()];
        let mut at = leg.chain.previous.clone();
        while let Some(id) = at {
            if names.len() > MAX_CHAIN {
                break;
            }
            match s.connection(&id) {
                Some(c) => {
                    names.push(c.network_service_endpoint_name.clone());
                    at = c.chain.previous.clone();
                }
                None => break,
            }
        }
        names.reverse();
        names
    }

    /// The onward request of `leg` when its endpoint is a chain element: the next service,
    /// asked for by the endpoint's device.
    pub(crate) fn onward_request(
        &self,
        leg: &Connection,
    ) -> Result<Option<ConnectionRequest>, ControllerError> {
        let s = self.state();
        let Some(ep) = s.endpoint(&leg.network_service_endpoint_name) else {
            return Ok(None);
        };
        let Some(next) = &ep.nse.next else {
            return Ok(None);
        };
        let device = match &ep.nse.location {
            EndpointLocation::Device { device } => device.clone(),
            EndpointLocation::Node { .. } => {
                return Err(ControllerError::Chain {
                    endpoint: ep.nse.name.clone(),
                    detail: "it declares an onward service but is not on a device; only an appliance's eNSM can join two legs".into(),
                })
            }
        };
        Ok(Some(ConnectionRequest {
            network_service: next.service.clone(),
            client: ClientRef {
                node: device,
                name: None,
            },
            labels: next.labels.clone(),
            mechanisms: vec![],
            interface: None,
            excluded_prefixes: vec![],
            sriov_token: None,
        }))
    }

    /// Requests the onward leg of `leg` (recorded, wired, up) if its endpoint is a chain
    /// element. `leg` must be held by the controller already, so the onward leg is never an
    /// orphan while it is set up.
    pub(crate) async fn compose_onward(
        &self,
        leg: &Connection,
    ) -> Result<Option<Connection>, ControllerError> {
        let Some(req) = self.onward_request(leg)? else {
            return Ok(None);
        };
        let chain = self.chain_endpoints(leg);
        if chain.len() >= MAX_CHAIN {
            return Err(ControllerError::Chain {
                endpoint: leg.network_service_endpoint_name.clone(),
                detail: format!(
                    "the chain {} already has {MAX_CHAIN} legs, the most one may have",
                    chain.join(" → ")
                ),
            });
        }
        // Boxed: a leg's onward leg may be a chain element with an onward leg of its own.
        let onward =
            Box::pin(self.request_leg(req, Some((leg.id.clone(), chain)), None, None)).await?;
        tracing::info!(connection = %leg.id, onward = %onward.id, endpoint = %onward.network_service_endpoint_name, "onward leg up");
        Ok(Some(onward))
    }

    /// Closes `onward`, the onward leg of a leg that is gone. A failure is logged: the reconcile
    /// loop closes orphan legs.
    pub(crate) async fn close_onward(&self, of: &str, onward: Option<&str>) {
        let Some(b) = onward else { return };
        // Boxed: closing a leg closes its onward leg, which may have one too.
        match Box::pin(self.close_leg(b)).await {
            Ok(_) | Err(ControllerError::UnknownConnection { .. }) => {
                tracing::info!(connection = %of, onward = %b, "onward leg closed")
            }
            Err(e) => {
                tracing::warn!(connection = %of, onward = %b, error = %e, "closing the onward leg failed; reconcile closes it as an orphan")
            }
        }
    }

    /// Whether `c` is an onward leg whose previous leg is no longer held.
    pub(crate) fn is_orphan_leg(&self, c: &Connection) -> bool {
        c.chain
            .previous
            .as_deref()
            .is_some_and(|p| self.state().connection(p).is_none())
    }
}
