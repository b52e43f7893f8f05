//! Meshwire's southbound drivers: they implement [`meshwire_controller::Driver`] for a kind of
//! forwarder and keep every wire format away from the controller.
//!
//! - [`kernel`]: the Linux kernel data plane over rtnetlink: veth pairs between namespaces of one
//!   node, VXLAN between nodes, bridges for Ethernet services.
//!
//! The Open vSwitch driver (our own OVSDB client and OpenFlow 1.3 channel) arrives with its issue.

pub mod kernel;
pub mod openflow;
pub mod ovsdb;

pub use kernel::KernelDriver;
