//! Meshwire's southbound drivers: they implement [`meshwire_controller::Driver`] for a kind of
//! forwarder and keep every wire format away from the controller.
//!
//! - [`kernel`]: the Linux kernel data plane over rtnetlink: veth pairs between namespaces of one
//!   node, VXLAN between nodes, bridges for Ethernet services.
//! - [`ovs`]: Open vSwitch nodes, programmed over [`ovsdb`] (our RFC 7047 client: bridges, ports,
//!   tunnels) and [`openflow`] (our OpenFlow 1.3 codec and channel: flows, bundles).
//! - [`agent`]: node agents: the controller's driver of kernel nodes over the agent protocol
//!   (gRPC), and the agent that runs a node's kernel data plane on that node.
//! - [`sriov`]: SR-IOV PFs and VFs on a node, and the kubelet device plugin publishing them.

pub mod agent;
pub mod kernel;
pub mod openflow;
pub mod ovs;
pub mod ovsdb;
pub mod sriov;

pub use kernel::KernelDriver;
pub use ovs::{OvsConfig, OvsDriver};
