//! Labs: topologies in containerlab's file format (`name`, `topology.nodes`, `topology.kinds`,
//! `topology.defaults`, `topology.links` with `endpoints: ["a:eth1", "b:eth1"]` and optional
//! `ipv4`), run on one machine without containerlab or Docker.
//!
//! - [`spec`] reads and checks a lab file before anything is created; errors name the file, the
//!   line and the reason.
//! - [`runner`] creates each `kind: linux` node as a network namespace `clab-<lab>-<node>`
//!   (containerlab's naming), each `kind: bridge` as a Linux bridge, each link as a veth pair,
//!   runs the nodes' `exec` commands, and removes all of it again, also after a crash (it finds
//!   leftovers by name). A lab that fails half way is rolled back, naming the failed step.
//! - [`appliance`] runs an emulated NETCONF appliance: the real netconfd behind a real sshd;
//!   [`agent`] makes it forward as its configuration says (tunnels, cross-connects, firewall).
//! - [`etcd`] runs a private etcd-server (tests, benchmarks, single-machine trials); [`ports`]
//!   gives them free loopback ports outside the ephemeral range.
//! - [`spec::Lab::manifests`] gives the `meshwire.io/v1` topology the lab's controller registers.
//!
//! Meshwire's reading of the format: a node labelled `meshwire.io/host: <node>` is a *workload*
//! (a pod) on that host, not a host itself; hosts become topology `Node`s with the kernel
//! forwarder, and links between hosts become topology `Link`s. The label `meshwire.io/manifests`
//! (on a node or in `topology.defaults.labels`) lists manifest files to apply, relative to the
//! lab file.

pub mod agent;
pub mod appliance;
pub mod browser;
pub mod etcd;
pub mod lose;
pub mod ports;
pub mod runner;
pub mod spec;

pub use spec::{Lab, LabError};
