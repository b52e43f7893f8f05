//! eNSM adapters: physical appliances (firewalls, routers, radios) exposed as network service
//! endpoints. An adapter registers the device's endpoints, takes part in negotiation and
//! configures the device (NETCONF) for the negotiated tunnel. Not yet implemented; the
//! controller already models devices (`meshwire.io/v1` `Device`) and endpoints located on them.

pub use meshwire_models::Device;
