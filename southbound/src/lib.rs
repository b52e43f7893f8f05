//! Meshwire's southbound drivers: they implement [`meshwire_controller::Driver`] for a kind of
//! forwarder and keep every wire format (netlink, OVSDB, OpenFlow, NETCONF) away from the
//! controller.
//!
//! Not yet here: the Linux kernel driver (netlink, veth and VXLAN in network namespaces) and the
//! Open vSwitch driver (our own OVSDB client and OpenFlow 1.3 channel) arrive with their issues.
//! Until then the daemon runs with the controller's `NullDriver` (`--dataplane none`).

pub use meshwire_controller::driver::{Driver, DriverError, Health, Observation};
