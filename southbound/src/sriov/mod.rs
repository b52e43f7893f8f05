//! SR-IOV on a node: the inventory of PFs and VFs from sysfs ([`inventory`]), the PF-side VF
//! settings over netlink ([`vfmsg`]), the kubelet device plugin that publishes each pool
//! ([`deviceplugin`]), and a stand-in PF for machines without SR-IOV hardware ([`standin`]).

pub mod deviceplugin;
pub mod inventory;
pub mod node;
pub mod standin;
pub mod tokens;
pub mod vfmsg;

pub use inventory::{Pf, Pool, SriovError, Sysfs, Vf};
