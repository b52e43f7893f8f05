//! eNSM adapters: physical appliances (firewalls, routers, radios) exposed as network service
//! endpoints. An adapter registers the device's endpoints, takes part in negotiation and
//! configures the device for the negotiated tunnel.
//!
//! - [`netconf`]: our NETCONF client (framing and XML sans-IO, a session over SSH), tested
//!   against a real netconfd behind sshd.
//!
//! - [`snmp`]: device health over SNMP v2c and v3 authPriv (sysUpTime, ifOperStatus), tested
//!   against a real snmpd.
//!
//! - [`profile`]: device profiles (data files): a negotiated mechanism → the device's YANG
//!   config and its undo, checked at load time. Shipped: `profiles/meshwire-appliance.yaml` (for
//!   `yang/meshwire-appliance@2026-11-23.yang`) and `profiles/ietf-interfaces.yaml`.
//!
//! - [`device`]: the device file an eNSM starts from (where the device is, credentials by
//!   reference, profile, endpoints), checked at load time.
//!
//! - [`ensm`]: the eNSM itself: registers the device's endpoints, checks and applies negotiated
//!   connections on the device in one NETCONF transaction each, removes exactly its config, and
//!   withdraws endpoints when the device or one of its data links goes down.
//!
//! - [`remote`]: the same eNSM in its own process, reached by the controller at the URL its
//!   endpoints register with.

pub mod device;
mod doc;
pub mod ensm;
pub mod netconf;
pub mod profile;
pub mod remote;
pub mod snmp;

pub use meshwire_models::Device;
