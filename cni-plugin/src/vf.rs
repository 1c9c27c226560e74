//! The VF a call is about: resolved from its PCI address through the host model, reading
//! only that VF and its PF (no inventory scan: ADD must stay cheap), and its netdev found
//! by PCI address in sysfs.

use std::time::{Duration, Instant};

use railvf_host::host::{self, HostError};
use railvf_host::inventory::{self, Detail, VENDOR_MELLANOX};
use railvf_host::{HostRoot, PciAddr, Vf, attr};

use crate::error::{CniError, code};
use crate::net::{Link, LinkOps, NetError, Netns};

#[derive(Debug, thiserror::Error)]
pub enum VfError {
    #[error("{addr} is not a PCI function on this host ({path} does not exist)")]
    NoSuchDevice { addr: PciAddr, path: String },
    #[error("{addr} is not an SR-IOV virtual function: {why}")]
    NotAVf { addr: PciAddr, why: String },
    #[error(
        "{addr} is a VF of {pf} with PCI vendor {vendor:04x}: expected an NVIDIA/Mellanox ConnectX VF (vendor 15b3)"
    )]
    NotConnectX {
        addr: PciAddr,
        pf: PciAddr,
        vendor: u16,
    },
    #[error("reading {addr} from sysfs: {source}")]
    Host {
        addr: PciAddr,
        #[source]
        source: HostError,
    },
    #[error("PF {pf} of VF {vf} has no netdev in the host network namespace ({dir}/net is empty)")]
    NoPfNetdev {
        pf: PciAddr,
        vf: PciAddr,
        dir: String,
    },
    #[error("looking up the netdev of {addr}: {source}")]
    Net {
        addr: PciAddr,
        #[source]
        source: NetError,
    },
}

impl From<VfError> for CniError {
    fn from(e: VfError) -> Self {
        let (c, details) = match &e {
            VfError::NoSuchDevice { .. } | VfError::NotAVf { .. } | VfError::NotConnectX { .. } => {
                (
                    code::BAD_DEVICE,
                    "deviceID must be the PCI address of a ConnectX VF allocated by the device plugin; check the NetworkAttachmentDefinition's resourceName and the device plugin's selectors (railvf-device-plugin inspect lists the VFs)",
                )
            }
            VfError::NoPfNetdev { .. } => (
                code::BAD_DEVICE,
                "VF settings and netlink GUIDs go through the PF's netdev: check the PF is bound to mlx5_core and visible in the host netns (ip link)",
            ),
            VfError::Host { .. } => (
                code::IO,
                "check that sysfs is readable at RAILVF_HOST_ROOT (default /)",
            ),
            VfError::Net { .. } => (code::KERNEL, "check dmesg and `ip link` on the host"),
        };
        CniError::new(c, e.to_string(), details)
    }
}

/// A VF by its PCI address, its PF and its index under the PF (what the PF's VF API takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfId {
    pub addr: PciAddr,
    pub pf: PciAddr,
    pub index: u32,
}

impl From<&Vf> for VfId {
    fn from(v: &Vf) -> Self {
        Self {
            addr: v.function.addr,
            pf: v.pf,
            index: v.index,
        }
    }
}

/// Reads the VF and checks it is a ConnectX VF listed by its PF.
pub fn resolve(root: &HostRoot, addr: PciAddr) -> Result<Vf, VfError> {
    // The ports' state is left to the readiness gate, which reads it after the move.
    let vf = inventory::read_vf_with(root, addr, Detail::Attach).map_err(|e| match e {
        HostError::NoSuchFunction { addr, path } => VfError::NoSuchDevice {
            addr,
            path: path.display().to_string(),
        },
        HostError::Malformed { source, .. }
            if source.expected.contains("VF") || source.expected.contains("virtfn") =>
        {
            VfError::NotAVf {
                addr,
                why: source.found,
            }
        }
        other => VfError::Host {
            addr,
            source: other,
        },
    })?;
    if vf.function.vendor != VENDOR_MELLANOX {
        return Err(VfError::NotConnectX {
            addr,
            pf: vf.pf,
            vendor: vf.function.vendor,
        });
    }
    let pf_vendor = host::parse_attr(
        &root.pci_device(&vf.pf).join("vendor"),
        attr::parse_prefixed_hex,
    )
    .map_err(|source| VfError::Host { addr, source })?;
    if pf_vendor as u16 != VENDOR_MELLANOX {
        return Err(VfError::NotConnectX {
            addr,
            pf: vf.pf,
            vendor: pf_vendor as u16,
        });
    }
    Ok(vf)
}

/// The netdev names sysfs shows for a PCI function in the host namespace.
pub fn sysfs_netdevs(root: &HostRoot, addr: &PciAddr) -> Result<Vec<String>, VfError> {
    host::list_dir(&root.pci_device(addr).join("net")).map_err(|source| VfError::Host {
        addr: *addr,
        source,
    })
}

/// The VF's netdev in the host namespace: named by sysfs, confirmed by netlink (a stale
/// sysfs view — e.g. a simulator's mirror catching up — counts as absent).
pub fn find_in_host(
    root: &HostRoot,
    links: &dyn LinkOps,
    addr: &PciAddr,
) -> Result<Option<Link>, VfError> {
    for name in sysfs_netdevs(root, addr)? {
        match links.link_by_name(&Netns::Host, &name) {
            Ok(Some(l)) => return Ok(Some(l)),
            Ok(None) | Err(NetError::NoSuchLink { .. }) => {}
            Err(source) => {
                return Err(VfError::Net {
                    addr: *addr,
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// The VF's netdev in `ns`, a namespace whose sysfs railvf does not see (a pod's): the
/// link whose parent device is the VF, as the kernel reports it (Linux 5.14 and later;
/// `None` on an older kernel).
pub fn find_in_netns(
    links: &dyn LinkOps,
    ns: &Netns,
    addr: &PciAddr,
) -> Result<Option<Link>, NetError> {
    Ok(links
        .links_of_device(ns, &addr.to_string())?
        .into_iter()
        .next())
}

/// Waits up to `timeout` for the VF's netdev to be in the host namespace (after a driver
/// rebind, or while the kernel returns it from a destroyed netns).
pub fn wait_in_host(
    root: &HostRoot,
    links: &dyn LinkOps,
    addr: &PciAddr,
    timeout: Duration,
) -> Result<Option<Link>, VfError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = find_in_host(root, links, addr)? {
            return Ok(Some(l));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the PCI function still exists (a VF disappears when sriov_numvfs is lowered).
pub fn exists(root: &HostRoot, addr: &PciAddr) -> bool {
    std::fs::symlink_metadata(root.pci_device(addr)).is_ok()
}

/// The PF's netdev ifindex, for VF settings and netlink GUIDs through the PF.
pub fn pf_ifindex(
    root: &HostRoot,
    links: &dyn LinkOps,
    pf: &PciAddr,
    vf: &PciAddr,
) -> Result<u32, VfError> {
    let dir = root.pci_device(pf);
    for name in
        host::list_dir(&dir.join("net")).map_err(|source| VfError::Host { addr: *pf, source })?
    {
        if let Some(l) = links
            .link_by_name(&Netns::Host, &name)
            .map_err(|source| VfError::Net { addr: *pf, source })?
        {
            return Ok(l.ifindex);
        }
    }
    Err(VfError::NoPfNetdev {
        pf: *pf,
        vf: *vf,
        dir: dir.display().to_string(),
    })
}

/// The VF's RDMA device name (`<vf>/infiniband/<dev>`), if mlx5_ib is bound.
pub fn rdma_device(root: &HostRoot, addr: &PciAddr) -> Option<String> {
    host::list_dir(&root.pci_device(addr).join("infiniband"))
        .ok()?
        .into_iter()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Bench, vf_addr};
    use railvf_host::LinkLayer;
    use railvf_host::inventory::Attr;

    #[test]
    fn resolve_reads_the_link_layer_and_leaves_the_port_state_to_the_gate() {
        let b = Bench::new(1);
        let root = HostRoot::new(b.root()).unwrap();
        let vf = resolve(&root, vf_addr(0)).unwrap();
        let rdma = vf.function.rdma.as_ref().expect("RDMA device");
        let port = rdma.port1().expect("port 1");
        assert_eq!(port.link_layer.value(), Some(&LinkLayer::InfiniBand));
        assert_eq!(port.lid, Attr::NotRead);
        assert_eq!(port.state, Attr::NotRead);
        assert_eq!(rdma.node_guid, Attr::NotRead);
    }
}
