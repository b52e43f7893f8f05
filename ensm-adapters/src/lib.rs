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
//! The adapters themselves (registration, negotiation, apply and removal) come next (issue 5).

pub mod netconf;
pub mod profile;
pub mod snmp;

pub use meshwire_models::Device;
