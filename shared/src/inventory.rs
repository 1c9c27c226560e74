//! What the host has: PCI network functions (PFs and their VFs), their netdevs, RDMA
//! and uverbs devices, port attributes, and the GPUs. Read-only, below a [`HostRoot`].
//!
//! Attributes that a half-configured host may lack are [`Attr`]s rather than errors, so
//! one broken VF never hides the other 63 and `inspect` can say exactly what is missing.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::attr::{self, Gid, Guid, LinkLayer, ParseError, PhysState, PortState, Rate};
use crate::host::{self, HostError, HostRoot};
use crate::pci::PciAddr;
use crate::sysdir::SysDir;

/// Mellanox/NVIDIA networking PCI vendor id.
pub const VENDOR_MELLANOX: u16 = 0x15b3;
/// NVIDIA GPU PCI vendor id.
pub const VENDOR_NVIDIA: u16 = 0x10de;
/// The kernel driver a usable ConnectX function is bound to.
pub const DRIVER_MLX5: &str = "mlx5_core";

/// An attribute as found: a value, absent, or present but not in the kernel's format; or
/// not read at all ([`Detail::Attach`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Attr<T> {
    Value(T),
    Missing(PathBuf),
    Invalid { path: PathBuf, error: ParseError },
    NotRead,
}

impl<T> Attr<T> {
    /// The attribute `<dir>/<rel>`, opened relative to the open directory, parsed.
    fn read_in(dir: &SysDir, rel: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Self {
        match dir.read_attr(rel) {
            Ok(raw) => match parse(&raw) {
                Ok(v) => Attr::Value(v),
                Err(error) => Attr::Invalid {
                    path: dir.join(rel),
                    error,
                },
            },
            Err(HostError::Missing { .. }) => Attr::Missing(dir.join(rel)),
            Err(e) => Attr::Invalid {
                error: ParseError {
                    expected: "a readable attribute",
                    found: e.to_string(),
                },
                path: dir.join(rel),
            },
        }
    }

    pub fn value(&self) -> Option<&T> {
        match self {
            Attr::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: fmt::Display> Attr<T> {
    /// The value as the kernel prints it, or what is wrong with it.
    pub fn describe(&self) -> String {
        match self {
            Attr::Value(v) => v.to_string(),
            Attr::Missing(p) => format!("missing ({})", p.display()),
            Attr::Invalid { path, error } => format!("unreadable ({}: {error})", path.display()),
            Attr::NotRead => "not read".to_string(),
        }
    }
}

impl<T: Serialize> Serialize for Attr<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attr::Value(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

/// A network interface of a PCI function, as the host's network namespace sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Netdev {
    pub name: String,
    pub ifindex: Attr<u32>,
}

/// Port `N` of an RDMA device (`infiniband/<dev>/ports/N`).
#[derive(Clone, Debug, Serialize)]
pub struct RdmaPort {
    pub port: u32,
    #[serde(serialize_with = "display")]
    pub state: Attr<PortState>,
    #[serde(serialize_with = "display")]
    pub phys_state: Attr<PhysState>,
    #[serde(serialize_with = "hex_lid")]
    pub lid: Attr<u16>,
    #[serde(serialize_with = "hex_lid")]
    pub sm_lid: Attr<u16>,
    pub link_layer: Attr<LinkLayer>,
    #[serde(serialize_with = "display")]
    pub rate: Attr<Rate>,
    #[serde(serialize_with = "display")]
    pub gid0: Attr<Gid>,
}

fn display<T: fmt::Display, S: Serializer>(a: &Attr<T>, s: S) -> Result<S::Ok, S::Error> {
    match a.value() {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn hex_lid<S: Serializer>(a: &Attr<u16>, s: S) -> Result<S::Ok, S::Error> {
    match a.value() {
        Some(v) => s.collect_str(&format_args!("{v:#x}")),
        None => s.serialize_none(),
    }
}

/// The RDMA device of a PCI function (`<bdf>/infiniband/<name>`: mlx5_ib is bound).
#[derive(Clone, Debug, Serialize)]
pub struct RdmaDevice {
    pub name: String,
    pub node_guid: Attr<Guid>,
    pub ports: Vec<RdmaPort>,
}

impl RdmaDevice {
    /// Port 1: the only port of a ConnectX VF.
    pub fn port1(&self) -> Option<&RdmaPort> {
        self.ports
            .iter()
            .find(|p| p.port == 1)
            .or(self.ports.first())
    }
}

/// The verbs character device of a function (`<bdf>/infiniband_verbs/uverbsN`).
#[derive(Clone, Debug, Serialize)]
pub struct Uverbs {
    /// `uverbsN`: the device node is `/dev/infiniband/uverbsN`.
    pub name: String,
    /// The RDMA device it belongs to (`ibdev`).
    pub ibdev: Attr<String>,
    /// `major:minor` (`dev`).
    pub dev: Attr<String>,
}

/// One PCI function with what hangs off it.
#[derive(Clone, Debug, Serialize)]
pub struct PciFunction {
    pub addr: PciAddr,
    #[serde(serialize_with = "hex4")]
    pub vendor: u16,
    #[serde(serialize_with = "hex4")]
    pub device: u16,
    #[serde(serialize_with = "hex6")]
    pub class: u32,
    /// Bound driver (`driver` link), `None` when unbound.
    pub driver: Option<String>,
    /// NUMA node; `None` when the kernel says `-1` or the attribute is unusable.
    pub numa_node: Option<u32>,
    /// Netdevs in the host network namespace (empty once moved into a pod).
    pub netdevs: Vec<Netdev>,
    /// RDMA device, when mlx5_ib is bound and the device is visible in this namespace.
    pub rdma: Option<RdmaDevice>,
    pub uverbs: Option<Uverbs>,
    /// The PF, for a VF (`physfn`).
    pub physfn: Option<PciAddr>,
    /// Canonical sysfs path (`…/sys/devices/pci0000:15/…/<bdf>`), for topology.
    #[serde(skip)]
    pub sysfs_path: PathBuf,
}

fn hex4<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:04x}"))
}
fn hex6<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#08x}"))
}

impl PciFunction {
    pub fn is_vf(&self) -> bool {
        self.physfn.is_some()
    }
    pub fn netdev(&self) -> Option<&Netdev> {
        self.netdevs.first()
    }
    pub fn port1(&self) -> Option<&RdmaPort> {
        self.rdma.as_ref().and_then(RdmaDevice::port1)
    }
    /// The link layer of port 1, when known.
    pub fn link_layer(&self) -> Option<LinkLayer> {
        self.port1().and_then(|p| p.link_layer.value().copied())
    }
}

/// An SR-IOV physical function and its VFs.
#[derive(Clone, Debug, Serialize)]
pub struct Pf {
    pub function: PciFunction,
    pub sriov_totalvfs: Option<u32>,
    pub sriov_numvfs: Option<u32>,
    /// VF index → address, from the `virtfnN` links.
    pub vfs: Vec<(u32, PciAddr)>,
}

/// A virtual function.
#[derive(Clone, Debug, Serialize)]
pub struct Vf {
    pub function: PciFunction,
    pub pf: PciAddr,
    /// N of the PF's `virtfnN` link: the VF number the PF's netlink VF API takes.
    pub index: u32,
}

/// A GPU (NVIDIA display/3D controller).
#[derive(Clone, Debug, Serialize)]
pub struct Gpu {
    pub addr: PciAddr,
    /// Index as nvidia-smi numbers GPUs: PCI address order.
    pub index: u32,
    #[serde(serialize_with = "hex4")]
    pub device: u16,
    pub numa_node: Option<u32>,
    #[serde(skip)]
    pub sysfs_path: PathBuf,
}

impl Gpu {
    /// Where the GPU sits and its number: what rail detection reads of it.
    pub fn site(&self) -> GpuSite {
        GpuSite {
            addr: self.addr,
            index: self.index,
            sysfs_path: self.sysfs_path.clone(),
        }
    }
}

/// Everything railvf knows about the node's PCI network functions and GPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inventory {
    pub pfs: Vec<Pf>,
    pub vfs: Vec<Vf>,
    pub gpus: Vec<Gpu>,
    /// Functions whose identity could not be read (network functions, PFs, display
    /// functions), with the reason: listed rather than failing the scan, so one broken
    /// function never hides the others.
    pub unreadable: Vec<(PciAddr, String)>,
}

impl Inventory {
    /// Scans `<root>/sys/bus/pci/devices`: every network function (class 0x02) and every
    /// NVIDIA GPU (class 0x0302 / 0x0300). An empty or absent tree is an error that says so.
    pub fn scan(root: &HostRoot) -> Result<Self, HostError> {
        let devices = root.join("sys/bus/pci/devices");
        if !devices.is_dir() {
            return Err(HostError::Missing {
                path: devices,
                what: "the PCI device list",
                hint: "sysfs is not mounted at the host root; set RAILVF_HOST_ROOT or --host-root to the directory that holds the host's /sys",
            });
        }
        let mut inv = Inventory::default();
        let mut gpu_addrs = Vec::new();
        for (addr, dir, class) in pci_functions(root)? {
            match class >> 16 {
                0x02 => {
                    let function = match read_function(root, addr) {
                        Ok(f) => f,
                        Err(e) => {
                            inv.unreadable.push((addr, e.to_string()));
                            continue;
                        }
                    };
                    match function.physfn {
                        // The index comes from the PF's virtfnN links, filled in below.
                        Some(pf) => inv.vfs.push(Vf {
                            function,
                            pf,
                            index: u32::MAX,
                        }),
                        None => match read_pf(root, function) {
                            Ok(pf) => inv.pfs.push(pf),
                            Err(e) => inv.unreadable.push((addr, e.to_string())),
                        },
                    }
                }
                // One display function that cannot be classified (a malformed vendor) must
                // not hide every NIC: it is reported, not counted.
                0x03 => match is_nvidia_gpu(&dir, class) {
                    Ok(true) => gpu_addrs.push(addr),
                    Ok(false) => {}
                    Err(e) => inv.unreadable.push((addr, e.to_string())),
                },
                _ => {}
            }
        }
        for vf in &mut inv.vfs {
            if let Some(pf) = inv.pfs.iter().find(|p| p.function.addr == vf.pf)
                && let Some((n, _)) = pf.vfs.iter().find(|(_, a)| *a == vf.function.addr)
            {
                vf.index = *n;
            }
        }
        inv.gpus = gpus_in_pci_order(root, numbered_gpus(root, || Ok(gpu_addrs))?)?;
        Ok(inv)
    }

    pub fn pf(&self, addr: &PciAddr) -> Option<&Pf> {
        self.pfs.iter().find(|p| p.function.addr == *addr)
    }

    pub fn vf(&self, addr: &PciAddr) -> Option<&Vf> {
        self.vfs.iter().find(|v| v.function.addr == *addr)
    }

    pub fn vfs_of<'a>(&'a self, pf: &'a PciAddr) -> impl Iterator<Item = &'a Vf> + 'a {
        self.vfs.iter().filter(move |v| v.pf == *pf)
    }
}

/// How much of a PCI function to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything.
    Full,
    /// Everything but the RDMA ports' state (`state`, `phys_state`, `lid`, `sm_lid`,
    /// `rate`, `gids/0`) and the node GUID, which are [`Attr::NotRead`]; the link layer is
    /// read. What attaching a VF needs before the readiness gate reads that state itself:
    /// on real hardware most of those attributes are a query to the HCA's firmware each.
    Attach,
}

impl Detail {
    /// The attribute `<dir>/<rel>` that only [`Detail::Full`] reads: the RDMA port state and
    /// the node GUID, which [`Detail::Attach`] leaves to the readiness gate.
    fn full_only<T>(
        self,
        dir: &SysDir,
        rel: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Attr<T> {
        match self {
            Detail::Full => Attr::read_in(dir, rel, parse),
            Detail::Attach => Attr::NotRead,
        }
    }
}

/// Reads one PCI function. Fails only when the function does not exist or its identity
/// (vendor, device, class) cannot be read; everything else is an [`Attr`] or an `Option`.
pub fn read_function(root: &HostRoot, addr: PciAddr) -> Result<PciFunction, HostError> {
    read_function_with(root, addr, Detail::Full)
}

/// [`read_function`], reading as much as `detail` says.
pub fn read_function_with(
    root: &HostRoot,
    addr: PciAddr,
    detail: Detail,
) -> Result<PciFunction, HostError> {
    let dir = open_function(root, &addr)?;
    let vendor = dir.parse_attr("vendor", attr::parse_prefixed_hex)? as u16;
    let device = dir.parse_attr("device", attr::parse_prefixed_hex)? as u16;
    let class = dir.parse_attr("class", attr::parse_prefixed_hex)?;
    let driver = dir.link_basename("driver")?;
    let physfn = match dir.link_basename("physfn")? {
        Some(name) => Some(name.parse::<PciAddr>().map_err(|e| HostError::Malformed {
            path: dir.join("physfn"),
            source: ParseError {
                expected: "a link to the PF's PCI address",
                found: e.value,
            },
        })?),
        None => None,
    };
    let netdevs = dir
        .list("net")?
        .into_iter()
        .map(|name| Netdev {
            ifindex: Attr::read_in(&dir, &format!("net/{name}/ifindex"), attr::parse_u32),
            name,
        })
        .collect();
    let rdma = read_rdma_of(&dir, detail)?;
    let uverbs = dir
        .list("infiniband_verbs")?
        .into_iter()
        .next()
        .map(|name| Uverbs {
            ibdev: Attr::read_in(&dir, &format!("infiniband_verbs/{name}/ibdev"), |s| {
                Ok(s.to_string())
            }),
            dev: Attr::read_in(&dir, &format!("infiniband_verbs/{name}/dev"), |s| {
                Ok(s.to_string())
            }),
            name,
        });
    Ok(PciFunction {
        addr,
        vendor,
        device,
        class,
        driver,
        numa_node: read_numa(&dir),
        netdevs,
        rdma,
        uverbs,
        physfn,
        sysfs_path: canonical(dir.path())?,
    })
}

/// Re-reads what changes while a PCI function stays the same function — its driver binding
/// and its RDMA device (port state, LID, GUIDs) — into `f`. A readiness poll needs only
/// these; identity, netdevs and topology are left as read. `NoSuchFunction` when the
/// function is gone (a VF disappears when `sriov_numvfs` is lowered).
pub fn refresh(root: &HostRoot, f: &mut PciFunction) -> Result<(), HostError> {
    let dir = open_function(root, &f.addr)?;
    f.driver = dir.link_basename("driver")?;
    f.rdma = read_rdma_of(&dir, Detail::Full)?;
    Ok(())
}

/// `<root>/sys/bus/pci/devices/<addr>` held open, or `NoSuchFunction` when there is none.
fn open_function(root: &HostRoot, addr: &PciAddr) -> Result<SysDir, HostError> {
    let path = root.pci_device(addr);
    SysDir::open(&path)?.ok_or(HostError::NoSuchFunction { addr: *addr, path })
}

/// Reads a VF and finds its index under its PF. Fails, saying why, when `addr` is not a VF.
pub fn read_vf(root: &HostRoot, addr: PciAddr) -> Result<Vf, HostError> {
    read_vf_with(root, addr, Detail::Full)
}

/// [`read_vf`], reading the function as much as `detail` says.
pub fn read_vf_with(root: &HostRoot, addr: PciAddr, detail: Detail) -> Result<Vf, HostError> {
    let function = read_function_with(root, addr, detail)?;
    let Some(pf) = function.physfn else {
        return Err(HostError::Malformed {
            path: root.pci_device(&addr).join("physfn"),
            source: ParseError {
                expected: "a VF (a physfn link to its PF)",
                found: format!("{addr} has no physfn link: it is not a virtual function"),
            },
        });
    };
    let index = vf_index(root, &pf, &addr)?.ok_or_else(|| HostError::Malformed {
        path: root.pci_device(&pf),
        source: ParseError {
            expected: "a virtfnN link of the PF pointing at the VF",
            found: format!("no virtfnN link of {pf} points at {addr}"),
        },
    })?;
    Ok(Vf {
        function,
        pf,
        index,
    })
}

/// Reads a PF with its SR-IOV attributes and VF links.
pub fn read_pf(root: &HostRoot, function: PciFunction) -> Result<Pf, HostError> {
    let dir = root.pci_device(&function.addr);
    let mut vfs = Vec::new();
    for name in host::list_dir(&dir)? {
        let Some(n) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(target) = host::link_basename(&dir.join(&name))?
            && let Ok(addr) = target.parse::<PciAddr>()
        {
            vfs.push((n, addr));
        }
    }
    vfs.sort();
    Ok(Pf {
        sriov_totalvfs: host::parse_optional_attr(&dir.join("sriov_totalvfs"), attr::parse_u32)
            .ok()
            .flatten(),
        sriov_numvfs: host::parse_optional_attr(&dir.join("sriov_numvfs"), attr::parse_u32)
            .ok()
            .flatten(),
        vfs,
        function,
    })
}

fn vf_index(root: &HostRoot, pf: &PciAddr, vf: &PciAddr) -> Result<Option<u32>, HostError> {
    let Some(dir) = SysDir::open(&root.pci_device(pf))? else {
        return Ok(None);
    };
    let want = vf.to_string();
    for name in dir.list(".")? {
        if let Some(n) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
            && dir.link_basename(&name)?.as_deref() == Some(want.as_str())
        {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Whether the PCI function at `dir`, of PCI `class`, is an NVIDIA GPU (display or 3D
/// controller of vendor 0x10de).
pub fn is_nvidia_gpu(dir: &Path, class: u32) -> Result<bool, HostError> {
    if !matches!(class >> 8, 0x0302 | 0x0300) {
        return Ok(false);
    }
    let vendor = host::parse_attr(&dir.join("vendor"), attr::parse_prefixed_hex)?;
    Ok(vendor as u16 == VENDOR_NVIDIA)
}

/// Where a GPU sits and its number: what rail detection needs, without reading the GPU's
/// identity or NUMA node (the CNI's hot path reads no more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSite {
    pub addr: PciAddr,
    /// Index as nvidia-smi numbers GPUs: PCI address order.
    pub index: u32,
    pub sysfs_path: PathBuf,
}

/// The GPUs at `addrs`, numbered as nvidia-smi does: in PCI address order. Every program
/// that maps GPUs to rails numbers them here, so they all number them alike.
pub fn gpu_sites_in_pci_order(
    root: &HostRoot,
    mut addrs: Vec<PciAddr>,
) -> Result<Vec<GpuSite>, HostError> {
    addrs.sort();
    addrs.dedup();
    // One open bus directory, and each GPU's bus link read relative to it: only the path
    // matters here (it places the GPU under its PCIe switch), and the listing that named
    // the GPU has shown it exists.
    let bus = SysDir::open(&root.join("sys/bus/pci/devices"))?;
    addrs
        .into_iter()
        .enumerate()
        .map(|(index, addr)| {
            let target = match &bus {
                Some(b) => b.read_link(&addr.to_string())?,
                None => None,
            };
            Ok(GpuSite {
                addr,
                index: index as u32,
                sysfs_path: link_path(&root.pci_device(&addr), target)?,
            })
        })
        .collect()
}

/// The GPUs at `addrs` with their device ID and NUMA node, numbered as
/// [`gpu_sites_in_pci_order`] numbers them.
pub fn gpus_in_pci_order(root: &HostRoot, addrs: Vec<PciAddr>) -> Result<Vec<Gpu>, HostError> {
    gpu_sites_in_pci_order(root, addrs)?
        .into_iter()
        .map(|site| {
            let dir = open_function(root, &site.addr)?;
            Ok(Gpu {
                addr: site.addr,
                index: site.index,
                device: dir.parse_attr("device", attr::parse_prefixed_hex)? as u16,
                numa_node: read_numa(&dir),
                sysfs_path: site.sysfs_path,
            })
        })
        .collect()
}

/// Every PCI function of `<root>/sys/bus/pci/devices` with its directory and class. Entries
/// that are not PCI addresses are not functions, and a function whose class cannot be read
/// is not one this crate can classify: both are left out.
fn pci_functions(root: &HostRoot) -> Result<Vec<(PciAddr, PathBuf, u32)>, HostError> {
    let devices = root.join("sys/bus/pci/devices");
    let mut out = Vec::new();
    for name in host::list_dir(&devices)? {
        let Ok(addr) = name.parse::<PciAddr>() else {
            continue;
        };
        let dir = devices.join(&name);
        if let Ok(class) = host::parse_attr(&dir.join("class"), attr::parse_prefixed_hex) {
            out.push((addr, dir, class));
        }
    }
    Ok(out)
}

/// The GPUs `nvidia-smi` numbers: the functions bound to the NVIDIA driver
/// (`drivers/nvidia/<bdf>`). With none bound (the driver not loaded yet, a tree without it),
/// every NVIDIA GPU that `class_scan` finds. Every program numbers GPUs from this one set,
/// so that a GPU bound to another driver (vfio-pci, to pass it to a VM) shifts the numbers
/// of the others alike in the CNI, the device plugin and `inspect`.
pub fn numbered_gpus(
    root: &HostRoot,
    class_scan: impl FnOnce() -> Result<Vec<PciAddr>, HostError>,
) -> Result<Vec<PciAddr>, HostError> {
    let bound: Vec<PciAddr> = host::list_dir(&root.pci_driver("nvidia"))?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    if bound.is_empty() {
        class_scan()
    } else {
        Ok(bound)
    }
}

/// The node's GPU sites without an inventory scan (the CNI's hot path), numbered from
/// [`numbered_gpus`]: the full scan of every PCI function's class only when no GPU is bound
/// to the NVIDIA driver.
pub fn scan_gpu_sites(root: &HostRoot) -> Result<Vec<GpuSite>, HostError> {
    let addrs = numbered_gpus(root, || {
        let mut addrs = Vec::new();
        for (addr, dir, class) in pci_functions(root)? {
            // As in `Inventory::scan`: a function that cannot be classified is left out.
            if is_nvidia_gpu(&dir, class).unwrap_or(false) {
                addrs.push(addr);
            }
        }
        Ok(addrs)
    })?;
    gpu_sites_in_pci_order(root, addrs)
}

fn read_numa(dir: &SysDir) -> Option<u32> {
    dir.parse_attr("numa_node", attr::parse_numa_node)
        .ok()
        .flatten()
}

/// The RDMA device of the function at `dir` (`<dir>/infiniband/<dev>`), if mlx5_ib is bound.
fn read_rdma_of(dir: &SysDir, detail: Detail) -> Result<Option<RdmaDevice>, HostError> {
    let Some(name) = dir.list("infiniband")?.into_iter().next() else {
        return Ok(None);
    };
    let Some(dev) = dir.sub(&format!("infiniband/{name}"))? else {
        return Ok(None); // gone since the listing (driver unbound meanwhile)
    };
    // The GUIDs before the port state: the SM hands out LIDs by port GUID, so a LID read
    // before the GUID beside it could belong to the GUID before a change that landed
    // between the two reads. Read in this order, a LID is never older than its GUID.
    let node_guid = detail.full_only(&dev, "node_guid", str::parse);
    let mut ports = Vec::new();
    for p in dev.list("ports")? {
        let Ok(port) = p.parse::<u32>() else { continue };
        let Some(pd) = dev.sub(&format!("ports/{p}"))? else {
            continue;
        };
        let gid0 = detail.full_only(&pd, "gids/0", str::parse);
        ports.push(RdmaPort {
            port,
            state: detail.full_only(&pd, "state", str::parse),
            phys_state: detail.full_only(&pd, "phys_state", str::parse),
            lid: detail.full_only(&pd, "lid", attr::parse_lid),
            sm_lid: detail.full_only(&pd, "sm_lid", attr::parse_lid),
            link_layer: Attr::read_in(&pd, "link_layer", str::parse),
            rate: detail.full_only(&pd, "rate", str::parse),
            gid0,
        });
    }
    ports.sort_by_key(|p| p.port);
    Ok(Some(RdmaDevice {
        node_guid,
        ports,
        name,
    }))
}

/// The GUIDs one RDMA device shows: its node GUID and its port 1 GUID (the interface ID of
/// GID 0). `None` where the attribute is absent or unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGuids {
    pub device: String,
    pub node: Option<Guid>,
    pub port: Option<Guid>,
}

/// The GUIDs of every RDMA device the host's network namespace shows
/// (`sys/class/infiniband`). A device moved into a pod's namespace (RDMA isolation) is not
/// listed.
pub fn rdma_device_guids(root: &HostRoot) -> Result<Vec<DeviceGuids>, HostError> {
    let class = root.join("sys/class/infiniband");
    let mut out = Vec::new();
    for device in host::list_dir(&class)? {
        let dir = class.join(&device);
        let node = host::parse_optional_attr(&dir.join("node_guid"), str::parse::<Guid>)
            .ok()
            .flatten();
        let port = host::parse_optional_attr(&dir.join("ports/1/gids/0"), str::parse::<Gid>)
            .ok()
            .flatten()
            .map(|g| g.interface_id());
        out.push(DeviceGuids { device, node, port });
    }
    Ok(out)
}

/// The real sysfs path of a PCI function (below `sys/devices`, where its PCIe bridges
/// show), without reading anything else of it: its bus link, read once and joined
/// lexically (what the rail of a PF needs); a hand-made tree's plain directory or odd
/// link is canonicalized.
pub fn function_path(root: &HostRoot, addr: &PciAddr) -> Result<PathBuf, HostError> {
    let bus = root.pci_device(addr);
    let target = match std::fs::read_link(&bus) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostError::NoSuchFunction {
                addr: *addr,
                path: bus,
            });
        }
        Err(_) => None,
    };
    link_path(&bus, target)
}

/// Where the bus link `link` leads: its `target` (as read; `None` when it is no link)
/// joined lexically, without a stat of the result; anything else canonicalized.
fn link_path(link: &Path, target: Option<PathBuf>) -> Result<PathBuf, HostError> {
    match target.and_then(|t| link.parent().and_then(|p| lexical_join(p, &t))) {
        Some(path) => Ok(path),
        None => canonical(link),
    }
}

/// Where a PCI function's directory really is: `dir` is its bus link
/// (`sys/bus/pci/devices/<bdf>`), and sysfs makes that a relative link into `sys/devices`
/// whose directories are no links themselves, so one `readlink` and a lexical join give
/// the path. (`canonicalize` would `readlink` every component of the whole path — a dozen
/// system calls per device on the ADD hot path.) Anything else (an absolute or odd link,
/// a plain directory in a hand-made tree) is canonicalized.
fn canonical(dir: &Path) -> Result<PathBuf, HostError> {
    let unreadable = |source| HostError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    if let Ok(target) = std::fs::read_link(dir)
        && let Some(path) = dir.parent().and_then(|p| lexical_join(p, &target))
    {
        return match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(path),
            Ok(_) => std::fs::canonicalize(dir).map_err(unreadable),
            Err(e) => Err(unreadable(e)),
        };
    }
    std::fs::canonicalize(dir).map_err(unreadable)
}

/// Where the relative link `target`, found in directory `dir`, leads when its `..` are
/// taken lexically (sysfs's bus links; `None` for an absolute or odd target).
fn lexical_join(dir: &Path, target: &Path) -> Option<PathBuf> {
    if !target.is_relative() {
        return None;
    }
    let mut path = dir.to_path_buf();
    for c in target.components() {
        match c {
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::Normal(n) => path.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A PF 0000:18:00.0 with one VF 0000:18:00.1 whose RDMA port 1 has every attribute,
    /// under a fresh root.
    fn one_vf() -> (tempfile::TempDir, HostRoot) {
        let tmp = tempfile::tempdir().unwrap();
        let devs = tmp.path().join("sys/bus/pci/devices");
        let (pf, vf) = (devs.join("0000:18:00.0"), devs.join("0000:18:00.1"));
        let port = vf.join("infiniband/mlx5_12/ports/1");
        std::fs::create_dir_all(port.join("gids")).unwrap();
        std::fs::create_dir_all(&pf).unwrap();
        for (dir, file, v) in [
            (&pf, "vendor", "0x15b3"),
            (&vf, "vendor", "0x15b3"),
            (&vf, "device", "0x101e"),
            (&vf, "class", "0x020700"),
            (&port, "state", "4: ACTIVE"),
            (&port, "phys_state", "5: LinkUp"),
            (&port, "lid", "0xe"),
            (&port, "sm_lid", "0x1"),
            (&port, "link_layer", "InfiniBand"),
            (&port, "rate", "400 Gb/sec (4X NDR)"),
            (&port, "gids/0", "fe80:0000:0000:0000:0c42:a1ff:0018:0101"),
        ] {
            std::fs::write(dir.join(file), format!("{v}\n")).unwrap();
        }
        std::fs::write(
            vf.join("infiniband/mlx5_12/node_guid"),
            "0c42:a1ff:0018:0101\n",
        )
        .unwrap();
        symlink("../0000:18:00.0", vf.join("physfn")).unwrap();
        symlink("../0000:18:00.1", pf.join("virtfn0")).unwrap();
        let root = HostRoot::new(tmp.path()).unwrap();
        (tmp, root)
    }

    #[test]
    fn a_display_function_that_cannot_be_classified_hides_no_nic() {
        let (tmp, root) = one_vf();
        let devs = tmp.path().join("sys/bus/pci/devices");
        std::fs::write(devs.join("0000:18:00.0/class"), "0x020700\n").unwrap();
        std::fs::write(devs.join("0000:18:00.0/device"), "0x1021\n").unwrap();
        let vga = devs.join("0000:03:00.0");
        std::fs::create_dir_all(&vga).unwrap();
        std::fs::write(vga.join("class"), "0x030000\n").unwrap();
        std::fs::write(vga.join("vendor"), "garbage\n").unwrap();
        let inv = Inventory::scan(&root).unwrap();
        assert_eq!(inv.pfs.len(), 1);
        assert_eq!(inv.vfs.len(), 1);
        assert!(inv.gpus.is_empty());
        let (addr, why) = &inv.unreadable[0];
        assert_eq!(addr.to_string(), "0000:03:00.0");
        assert!(why.contains("vendor"), "{why}");
        assert!(scan_gpu_sites(&root).unwrap().is_empty());
    }

    #[test]
    fn an_attach_read_leaves_the_port_state_to_the_gate() {
        let (_tmp, root) = one_vf();
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let full = read_vf_with(&root, addr, Detail::Full).unwrap();
        let attach = read_vf_with(&root, addr, Detail::Attach).unwrap();
        assert_eq!((attach.pf, attach.index), (full.pf, full.index));
        let (f, a) = (full.function, attach.function);
        assert_eq!((a.vendor, a.device, a.class), (f.vendor, f.device, f.class));
        let (fr, ar) = (f.rdma.clone().unwrap(), a.rdma.clone().unwrap());
        assert_eq!(ar.name, "mlx5_12");
        let (fp, ap) = (fr.port1().unwrap(), ar.port1().unwrap());
        // The link layer is read (pre-flight refuses an Ethernet fallback before anything
        // changes); the rest is not.
        assert_eq!(ap.link_layer, fp.link_layer);
        assert_eq!(ap.link_layer.value(), Some(&LinkLayer::InfiniBand));
        assert_eq!(fp.lid.value(), Some(&0xe));
        assert_eq!(fp.state.describe(), "4: ACTIVE");
        assert!(fr.node_guid.value().is_some());
        for (name, v) in [
            ("state", ap.state.describe()),
            ("phys_state", ap.phys_state.describe()),
            ("lid", ap.lid.describe()),
            ("sm_lid", ap.sm_lid.describe()),
            ("rate", ap.rate.describe()),
            ("gids/0", ap.gid0.describe()),
            ("node_guid", ar.node_guid.describe()),
        ] {
            assert_eq!(v, "not read", "{name}");
        }
        // A refresh (what the gate does first) reads everything.
        let mut again = a;
        refresh(&root, &mut again).unwrap();
        let rp = again.rdma.as_ref().unwrap().port1().unwrap();
        assert_eq!(rp.lid.value(), Some(&0xe));
        assert_eq!(rp.sm_lid.value(), Some(&0x1));
        assert!(again.rdma.unwrap().node_guid.value().is_some());
    }

    /// The order of the opens, as inotify reports them: a refresh reads the node GUID and
    /// the port GUID (GID 0) before the LID and the port state.
    #[test]
    fn a_refresh_reads_the_guids_before_the_lid() {
        use inotify::{Inotify, WatchMask};
        let (_tmp, root) = one_vf();
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let mut f = read_vf_with(&root, addr, Detail::Attach).unwrap().function;
        let dev = root.pci_device(&addr).join("infiniband/mlx5_12");
        let mut ino = Inotify::init().unwrap();
        for d in [dev.clone(), dev.join("ports/1"), dev.join("ports/1/gids")] {
            ino.watches().add(&d, WatchMask::OPEN).unwrap();
        }
        refresh(&root, &mut f).unwrap();
        let mut buf = [0u8; 4096];
        let opened: Vec<String> = ino
            .read_events(&mut buf)
            .unwrap()
            .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let at = |name: &str| {
            opened
                .iter()
                .position(|o| o == name)
                .unwrap_or_else(|| panic!("{name} was not opened; opens: {opened:?}"))
        };
        // "0" is gids/0, opened in the gids directory.
        for guid in ["node_guid", "0"] {
            for state in ["lid", "state", "phys_state"] {
                assert!(at(guid) < at(state), "{guid} after {state}: {opened:?}");
            }
        }
    }

    /// A bus link as sysfs makes it, under a root that is itself reached through a link.
    #[test]
    fn a_relative_bus_link_resolves_like_canonicalize_below_sys() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let dev = real.join("sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(real.join("sys/bus/pci/devices")).unwrap();
        symlink(
            "../../../devices/pci0000:15/0000:15:01.0/0000:16:00.0",
            real.join("sys/bus/pci/devices/0000:16:00.0"),
        )
        .unwrap();
        let via = tmp.path().join("via");
        symlink(&real, &via).unwrap();
        let link = via.join("sys/bus/pci/devices/0000:16:00.0");
        let fast = canonical(&link).unwrap();
        assert_eq!(
            fast,
            via.join("sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0")
        );
        let below_sys = |p: &Path| {
            p.to_str()
                .unwrap()
                .split_once("/sys/")
                .unwrap()
                .1
                .to_owned()
        };
        assert_eq!(
            below_sys(&fast),
            below_sys(&std::fs::canonicalize(&link).unwrap())
        );
        // function_path and the GPU sites read the same link without checking the target.
        let root = HostRoot::new(&via).unwrap();
        let addr: PciAddr = "0000:16:00.0".parse().unwrap();
        assert_eq!(function_path(&root, &addr).unwrap(), fast);
        let sites = gpu_sites_in_pci_order(&root, vec![addr]).unwrap();
        assert_eq!(sites[0].sysfs_path, fast);
        let gone: PciAddr = "0000:16:00.1".parse().unwrap();
        assert!(matches!(
            function_path(&root, &gone),
            Err(HostError::NoSuchFunction { .. })
        ));
    }

    #[test]
    fn plain_directories_absolute_and_dangling_links_are_handled() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("sys/bus/pci/devices/0000:16:00.0");
        std::fs::create_dir_all(&plain).unwrap();
        let canon = std::fs::canonicalize(&plain).unwrap();
        assert_eq!(canonical(&plain).unwrap(), canon);
        let abs = tmp.path().join("sys/bus/pci/devices/0000:17:00.0");
        symlink(&canon, &abs).unwrap();
        assert_eq!(canonical(&abs).unwrap(), canon);
        let dangling = tmp.path().join("sys/bus/pci/devices/0000:18:00.0");
        symlink("../../../devices/pci0000:15/gone", &dangling).unwrap();
        let e = canonical(&dangling).unwrap_err().to_string();
        assert!(e.contains("0000:18:00.0"), "{e}");
    }
}
