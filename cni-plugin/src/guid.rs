//! Setting a VF's InfiniBand GUID, then rebinding its driver so the firmware picks it up.
//!
//! Two ways, as on real hosts: MLNX_OFED/DOCA-OFED's `<pf>/sriov/<n>/{node,port}` files when
//! the PF has them (the simulator has them too), else the kernel's netlink VF API on the PF
//! (IFLA_VF_IB_NODE_GUID / IFLA_VF_IB_PORT_GUID). ADD gives node and port GUID the same
//! value, as ib-sriov-cni does; DEL restores each to its own previous value, as hosts set
//! them apart (`setup-vfs`: node `02:…`, port `06:…`) and the subnet manager keys LIDs and
//! partitions on the port GUID.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use railvf_host::attr::Gid;
use railvf_host::inventory::DRIVER_MLX5;
use railvf_host::{Guid, HostRoot, LinkLayer, PciAddr, host};

use crate::error::{CniError, code};
use crate::net::{LinkOps, NetError};
use crate::state::{GuidChange, GuidMethod};
use crate::vf::VfId;

/// How long a rebound VF may take to show its netdev again (mlx5 probes in ~1 s).
pub const REBIND_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GuidError {
    #[error("writing GUID {guid} to {path}: {source}")]
    Sysfs {
        guid: Guid,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "setting node GUID {node} and port GUID {port} on VF {vf} (index {index}) through its PF: {source}"
    )]
    Netlink {
        node: Guid,
        port: Guid,
        vf: PciAddr,
        index: u32,
        #[source]
        source: NetError,
    },
    #[error("rebinding VF {vf} to mlx5_core: writing {path}: {source}")]
    Rebind {
        vf: PciAddr,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "VF {vf} has no netdev in the host namespace {secs} s after its driver was rebound (new GUID {guid})"
    )]
    NoNetdevAfterRebind { vf: PciAddr, guid: Guid, secs: u64 },
}

impl From<GuidError> for CniError {
    fn from(e: GuidError) -> Self {
        let details = match &e {
            GuidError::Netlink { .. } => {
                "the PF driver must support VF GUIDs (mlx5_core on a ConnectX in InfiniBand mode); check dmesg, or use MLNX_OFED's sriov sysfs files"
            }
            GuidError::NoNetdevAfterRebind { .. } => {
                "check dmesg for mlx5_core probe errors of the VF; `echo <vf> > /sys/bus/pci/drivers/mlx5_core/bind` retries the probe"
            }
            _ => "check dmesg and that the VF and its PF are bound to mlx5_core",
        };
        CniError::new(code::GUID, e.to_string(), details)
    }
}

fn ofed_dir(root: &HostRoot, pf: &PciAddr, index: u32) -> PathBuf {
    root.pci_device(pf).join("sriov").join(index.to_string())
}

/// The GUID an OFED file (`node` or `port`) holds; `None` when unreadable or not a GUID.
fn ofed_guid(root: &HostRoot, vf: &VfId, file: &str) -> Option<Guid> {
    host::read_attr(&ofed_dir(root, &vf.pf, vf.index).join(file))
        .ok()?
        .parse()
        .ok()
}

/// Which way this host sets GUIDs.
pub fn method(root: &HostRoot, vf: &VfId) -> GuidMethod {
    if ofed_dir(root, &vf.pf, vf.index).join("node").exists() {
        GuidMethod::OfedSysfs
    } else {
        GuidMethod::Netlink
    }
}

/// The VF's current node GUID: the OFED file when present, else its RDMA device's.
pub fn current(root: &HostRoot, vf: &VfId, method: GuidMethod) -> Option<Guid> {
    match method {
        GuidMethod::OfedSysfs => ofed_guid(root, vf, "node"),
        GuidMethod::Netlink => effective(root, &vf.addr),
    }
}

/// The VF's current port GUID: the OFED file when present, else the one its port shows.
pub fn current_port(root: &HostRoot, vf: &VfId, method: GuidMethod) -> Option<Guid> {
    match method {
        GuidMethod::OfedSysfs => ofed_guid(root, vf, "port"),
        GuidMethod::Netlink => effective_port(root, &vf.addr),
    }
}

/// What setting `target` on the VF changes, with the node and port GUIDs to restore;
/// `None` when the VF already runs with it.
pub fn change(root: &HostRoot, vf: &VfId, target: Guid) -> Option<GuidChange> {
    let method = method(root, vf);
    (!in_effect(root, vf, method, target, target)).then(|| GuidChange {
        method,
        previous: current(root, vf, method),
        previous_port: current_port(root, vf, method),
        target,
    })
}

/// The node GUID the VF runs with: its RDMA device's, `None` while it has none (unbound,
/// or mid-probe after a rebind).
pub fn effective(root: &HostRoot, vf: &PciAddr) -> Option<Guid> {
    host::read_attr(&rdma_dir(root, vf)?.join("node_guid"))
        .ok()?
        .parse()
        .ok()
}

/// The port GUID the VF runs with: the interface ID of its port 1's GID 0. `None` while
/// it has no RDMA device, and on an Ethernet (RoCE) port, whose GID 0 comes from the MAC.
pub fn effective_port(root: &HostRoot, vf: &PciAddr) -> Option<Guid> {
    let port = rdma_dir(root, vf)?.join("ports/1");
    if is_ethernet(&port) {
        return None;
    }
    port_guid(&port)
}

/// Whether the VF runs with port GUID `port`; an Ethernet port has none to compare.
fn port_in_effect(root: &HostRoot, vf: &PciAddr, port: Guid) -> bool {
    let Some(dir) = rdma_dir(root, vf).map(|d| d.join("ports/1")) else {
        return false;
    };
    is_ethernet(&dir) || port_guid(&dir) == Some(port)
}

fn port_guid(port: &Path) -> Option<Guid> {
    let gid: Gid = host::read_attr(&port.join("gids/0")).ok()?.parse().ok()?;
    Some(gid.interface_id())
}

fn rdma_dir(root: &HostRoot, vf: &PciAddr) -> Option<PathBuf> {
    let dev = crate::vf::rdma_device(root, vf)?;
    Some(root.pci_device(vf).join("infiniband").join(dev))
}

fn is_ethernet(port: &Path) -> bool {
    host::read_attr(&port.join("link_layer"))
        .ok()
        .and_then(|l| l.parse().ok())
        == Some(LinkLayer::Ethernet)
}

/// Whether the VF has node GUID `node` and port GUID `port`, set and in effect. The OFED
/// files read back what was written even before the rebind that makes it take effect, or
/// after one that failed or was killed: the files alone would skip a rebind that is still
/// owed. Both files count: a writer killed between `node` and `port` leaves the node GUID
/// right and the port GUID not. The port GUID in effect counts too (InfiniBand): with the
/// same node GUID before and after, only it tells a rebind still owed. (An Ethernet port
/// has no port GUID to show.)
pub fn in_effect(root: &HostRoot, vf: &VfId, method: GuidMethod, node: Guid, port: Guid) -> bool {
    let addr = &vf.addr;
    effective(root, addr) == Some(node)
        && port_in_effect(root, addr, port)
        && match method {
            GuidMethod::Netlink => true,
            GuidMethod::OfedSysfs => {
                ofed_guid(root, vf, "node") == Some(node)
                    && ofed_guid(root, vf, "port") == Some(port)
            }
        }
}

/// Writes to an existing sysfs attribute; never creates a file.
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Sets node and port GUID of VF `index` of `pf` to `guid`.
pub fn set(
    root: &HostRoot,
    links: &dyn LinkOps,
    method: GuidMethod,
    vf: &VfId,
    pf_ifindex: Option<u32>,
    guid: Guid,
) -> Result<(), GuidError> {
    set_pair(root, links, method, vf, pf_ifindex, guid, guid)
}

/// Sets the node GUID of VF `index` of `pf` to `node` and its port GUID to `port`.
pub fn set_pair(
    root: &HostRoot,
    links: &dyn LinkOps,
    method: GuidMethod,
    vf: &VfId,
    pf_ifindex: Option<u32>,
    node: Guid,
    port: Guid,
) -> Result<(), GuidError> {
    let (vf_addr, pf, index) = (&vf.addr, &vf.pf, vf.index);
    match method {
        GuidMethod::OfedSysfs => {
            let dir = ofed_dir(root, pf, index);
            for (f, guid) in [("node", node), ("port", port)] {
                let path = dir.join(f);
                write_attr(&path, &format!("{}\n", guid.to_colon_bytes()))
                    .map_err(|source| GuidError::Sysfs { guid, path, source })?;
            }
            Ok(())
        }
        GuidMethod::Netlink => {
            let Some(ifindex) = pf_ifindex else {
                return Err(GuidError::Netlink {
                    node,
                    port,
                    vf: *vf_addr,
                    index,
                    source: NetError::NoSuchLink {
                        what: format!("netdev of PF {pf}"),
                        ns: "the host netns".into(),
                    },
                });
            };
            links
                .set_vf_guids(ifindex, index, node, port)
                .map_err(|source| GuidError::Netlink {
                    node,
                    port,
                    vf: *vf_addr,
                    index,
                    source,
                })
        }
    }
}

/// Unbinds and rebinds the VF's driver so the new GUID takes effect.
pub fn rebind(root: &HostRoot, vf: &PciAddr) -> Result<(), GuidError> {
    let drv = root.pci_driver(DRIVER_MLX5);
    let unbind = drv.join("unbind");
    // ENODEV: the VF was not bound (a previous rebind was interrupted); bind it anyway.
    match write_attr(&unbind, &vf.to_string()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(19) => {}
        Err(source) => {
            return Err(GuidError::Rebind {
                vf: *vf,
                path: unbind,
                source,
            });
        }
    }
    let bind = drv.join("bind");
    write_attr(&bind, &vf.to_string()).map_err(|source| GuidError::Rebind {
        vf: *vf,
        path: bind,
        source,
    })
}
