//! # railvf-sim: a simulated DGX node
//!
//! Builds, under a fresh host root (`RAILVF_HOST_ROOT`), the sysfs / `/dev` / `/proc` /
//! `/run` view of a DGX H200 (or H100, or a synthetic scale node) with SR-IOV InfiniBand
//! VFs, byte for byte in the kernel's formats and with the kernel's relative symlinks, and
//! backs every VF netdev with a **real veth** so netlink operations (move to a pod netns,
//! rename, MTU, addresses) are real.
//!
//! ```no_run
//! use std::time::Duration;
//! use railvf_sim::{Fault, SimOptions, TestNetns};
//!
//! if !railvf_sim::require_root() { return; }
//! let sim = SimOptions::dgx_h200().lid_delay(Duration::from_millis(50)).build().unwrap();
//! let vf = sim.vf("0000:18:00.1").unwrap();          // VF 0 of mlx5_0, RDMA dev mlx5_12
//! let pod = TestNetns::new().unwrap();
//! railvf_sim::ip(&["link", "set", &vf.netdev, "netns", pod.name()]).unwrap();
//! sim.wait_netdev(vf.pci, None, Duration::from_secs(1)).unwrap(); // gone from net/
//! sim.inject_fault(vf.pci, Fault::PortDown).unwrap();
//! ```
//!
//! Parts:
//! - [`Topology`]: the project's `tests/topologies/*.json`, or [`Topology::synthetic`].
//! - [`SimNode`] / [`SimOptions`]: build, runtime knobs ([`Fault`], port state, link
//!   layer, driver bind, `sriov_numvfs`, GUIDs), [`SimNode::sync`] / [`SimNode::wait_for`].
//!   A background thread mirrors each VF veth's real location into `net/` (sysfs is per
//!   network namespace) and plays the subnet manager (GUID files → LID).
//! - [`TestNetns`], [`require_root`], [`ip`]: test helpers.
//!
//! Clean-up is guaranteed by `Drop` (also on panic): threads stop, the sim's private
//! network namespace closes (every VF veth pair dies with it, wherever the VF end went),
//! the tree is removed. The private namespace has no bind mount, so even a killed process
//! leaves no links behind.

#![warn(missing_docs)]

pub mod elf;
mod error;
mod fault;
mod fixture;
mod netns;
mod node;
mod pci;
mod rtnl;
mod sim;
mod topology;

pub use error::{Result, SimError};
pub use fault::{Fault, PhysState, PortState};
pub use netns::{TestNetns, TestVeth, ip, require_root};
pub use node::{HostNetdev, guid_colon, parse_guid};
pub use pci::Bdf;
pub use sim::{NetdevNaming, PfInfo, SimNode, SimOptions, VfInfo};
pub use topology::{Gpu, LinkLayer, Nic, NicRole, Topology};

#[cfg(test)]
mod tests {
    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::SimNode>();
        send_sync::<crate::TestNetns>();
        send_sync::<crate::SimError>();
    }
}
