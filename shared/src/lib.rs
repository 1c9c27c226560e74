//! railvf host model: what a GPU node's SR-IOV RDMA hardware looks like, read from sysfs
//! below a host root (`RAILVF_HOST_ROOT`), so a simulated node and a real one are the same
//! to the code. Pure: it reads files and returns values; it never changes the host.
#![forbid(unsafe_code)]

pub mod attr;
pub mod devinfo;
pub mod host;
pub mod inventory;
pub mod ownership;
pub mod pci;
pub mod readiness;
pub mod sysdir;
pub mod topology;

pub use attr::{Guid, LinkLayer};
pub use host::{HostError, HostRoot};
pub use inventory::{Inventory, PciFunction, Pf, Vf};
pub use pci::PciAddr;
pub use readiness::{Check, Expectations, Outcome, Readiness, Status};
pub use topology::{Rail, RailMap, Topology};
