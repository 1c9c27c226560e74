//! Resources → devices: the node's PFs and VFs read lean from sysfs, matched against each
//! resource's selectors, kept current by a poller thread and published per resource.
//!
//! Startup reads only what selection and health need: PFs fully (there are about a
//! dozen), VFs through their PF's `virtfnN` links (so VFs are never probed one by one to
//! find them), their vendor/device from the PF's `sriov_vf_device`, and per VF the few
//! attributes a [`Probe`] reads, relative to one open descriptor of its directory.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use railvf_host::attr;
use railvf_host::host::{self, HostError};
use railvf_host::inventory::{self, Inventory, Pf};
use railvf_host::readiness::Expectations;
use railvf_host::{HostRoot, PciAddr, RailMap, Topology};
use tokio::sync::watch;

use crate::config::{Config, LinkType, ResourceConfig, Selector};
use crate::health::{self, FailedChecks, Health, Observation, Probe};

/// Why the node cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    // The cause is the `source`, printed after this by `{:#}`.
    #[error("cannot read the node's PCI devices")]
    Host(#[from] HostError),
}

/// A PF as the plugin tracks it.
#[derive(Debug)]
pub struct PfInfo {
    pub addr: PciAddr,
    probe: Probe,
    pub netdev: Option<String>,
    pub vendor: u16,
    pub device: u16,
    /// `sriov_vf_device`: the device id every VF of this PF has.
    pub vf_device: Option<u16>,
    pub numa: Option<u32>,
    pub rail: Option<u32>,
    pub numvfs: Option<u32>,
    pub obs: Observation,
    /// The last re-read of its VFs failed: warned about once, not at every poll.
    rescan_failed: bool,
}

impl PfInfo {
    pub fn link_type(&self) -> Option<LinkType> {
        self.obs
            .port
            .as_ref()
            .and_then(|p| p.link_layer.value().copied())
            .map(LinkType::of)
    }

    pub fn label(&self) -> String {
        match &self.netdev {
            Some(n) => format!("{n} ({})", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// A VF as the plugin tracks it.
#[derive(Debug)]
pub struct VfSlot {
    pub addr: PciAddr,
    /// Index into [`Node::pfs`].
    pub pf: usize,
    /// N of the PF's `virtfnN`.
    pub index: u32,
    pub vendor: u16,
    pub device: u16,
    pub numa: Option<u32>,
    probe: Probe,
    pub obs: Observation,
    pub health: Health,
    /// The checks behind an Unhealthy verdict.
    pub failed: FailedChecks,
    /// Index of the resource the VF belongs to (first resource whose selectors match).
    pub owner: Option<usize>,
    /// A resource listed before the owner that also selects the VF now (warned about
    /// once; see [`Monitor::check_earlier_match`]).
    pub earlier_match: Option<usize>,
}

/// A device as a resource's gRPC service sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceEntry {
    pub addr: PciAddr,
    pub pf: PciAddr,
    pub vf_index: u32,
    pub numa: Option<u32>,
    pub rail: Option<u32>,
    pub health: Health,
    /// The readiness checks that failed (empty when Healthy).
    pub failed: FailedChecks,
    /// Moved into a pod's network namespace (netdev and RDMA device out of the host view).
    pub in_pod: bool,
}

/// A resource's devices, by VF address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSet {
    pub devices: BTreeMap<PciAddr, DeviceEntry>,
    /// The resource's `excludeTopology`: kubelet gets no NUMA node (it is part of the set
    /// so that a config reload that flips it re-sends the list).
    pub exclude_topology: bool,
    /// The resource's `ncclIbHca`: `Allocate` sets `NCCL_IB_HCA` (part of the set so that
    /// a config reload that flips it applies to the next `Allocate`).
    pub nccl_ib_hca: bool,
    /// The resource's `madDevices`: `Allocate` (and the CDI spec) also pass each VF's
    /// `umadN` and `issmN`.
    pub mad_devices: bool,
}

/// VFs of a resource that `Allocate` handed out and that the plugin has not seen free
/// since (the `allocated` figure of the metrics).
///
/// kubelet never tells a device plugin that a device was released, so "free" is inferred:
/// a VF leaves this set when kubelet lists it in `available_deviceIDs` of a
/// `GetPreferredAllocation` (kubelet only offers free devices), or when it was seen in a
/// pod (netdev and RDMA device out of the host's view) and then came back to the host.
#[derive(Debug, Default)]
pub struct Allocations {
    /// VF → seen in a pod since it was handed out.
    handed_out: Mutex<BTreeMap<PciAddr, bool>>,
}

impl Allocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PciAddr, bool>> {
        self.handed_out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Allocate` gave these VFs to a container.
    pub fn handed_out(&self, vfs: impl IntoIterator<Item = PciAddr>) {
        let mut h = self.lock();
        for a in vfs {
            h.insert(a, false);
        }
    }

    /// kubelet says these VFs are free.
    pub fn seen_free<'a>(&self, vfs: impl IntoIterator<Item = &'a PciAddr>) {
        let mut h = self.lock();
        for a in vfs {
            h.remove(a);
        }
    }

    /// The poller saw a VF enter (`true`) or leave (`false`) a pod's namespace.
    pub fn in_pod_changed(&self, vf: PciAddr, in_pod: bool) {
        let mut h = self.lock();
        match (h.get_mut(&vf), in_pod) {
            (Some(seen), true) => *seen = true,
            (Some(true), false) => {
                h.remove(&vf);
            }
            _ => {}
        }
    }

    /// VFs of `set` that are allocated: handed out and not seen free, or in a pod now.
    pub fn count(&self, set: &DeviceSet) -> usize {
        let h = self.lock();
        set.devices
            .values()
            .filter(|d| d.in_pod || h.contains_key(&d.addr))
            .count()
    }

    /// Whether `vf` counts as allocated (see [`Allocations::count`]).
    pub fn is_allocated(&self, vf: &DeviceEntry) -> bool {
        vf.in_pod || self.lock().contains_key(&vf.addr)
    }

    fn forget_except(&self, keep: &BTreeSet<PciAddr>) {
        self.lock().retain(|a, _| keep.contains(a));
    }
}

/// What the daemon gets for each resource of the config: its device list and allocation
/// bookkeeping, kept across config reloads as long as the resource's full name stays.
#[derive(Clone, Debug)]
pub struct ResourceHandle {
    pub config: ResourceConfig,
    pub devices: watch::Receiver<Arc<DeviceSet>>,
    pub allocations: Arc<Allocations>,
}

/// The node: PFs, their VFs, GPUs' rails.
#[derive(Debug)]
pub struct Node {
    root: HostRoot,
    pub pfs: Vec<PfInfo>,
    pub vfs: Vec<VfSlot>,
    pub gpus: usize,
    /// PFs and GPUs as scanned: rails are detected again from it when `railMap` changes.
    inventory: Inventory,
}

fn pf_info(root: &HostRoot, pf: &Pf, topo: &Topology) -> PfInfo {
    let dir = root.pci_device(&pf.function.addr);
    let vf_device = host::parse_optional_attr(&dir.join("sriov_vf_device"), attr::parse_bare_hex)
        .ok()
        .flatten()
        .map(|d| d as u16);
    let mut probe = Probe::new(dir);
    let obs = probe.observe(true, None);
    PfInfo {
        addr: pf.function.addr,
        netdev: pf.function.netdev().map(|n| n.name.clone()),
        vendor: pf.function.vendor,
        device: pf.function.device,
        vf_device,
        numa: pf.function.numa_node,
        rail: topo.pf_rail(&pf.function.addr).map(|r| r.index),
        numvfs: pf.sriov_numvfs,
        obs,
        probe,
        rescan_failed: false,
    }
}

impl Node {
    /// Reads the node below `root`.
    pub fn scan(root: &HostRoot, rail_map: Option<&RailMap>) -> Result<Self, ScanError> {
        let devices = root.join("sys/bus/pci/devices");
        if !devices.is_dir() {
            return Err(HostError::Missing {
                path: devices,
                what: "the PCI device list",
                hint: "sysfs is not mounted at the host root; set RAILVF_HOST_ROOT or --host-root to the directory that holds the host's /sys",
            }
            .into());
        }
        let mut known_vfs: HashSet<PciAddr> = HashSet::new();
        let mut pfs: Vec<Pf> = Vec::new();
        let mut gpu_addrs = Vec::new();
        let mut names = host::list_dir(&devices)?;
        names.sort();
        for name in names {
            let Ok(addr) = name.parse::<PciAddr>() else {
                continue;
            };
            // VFs are found through their PF's virtfn links (a PF sorts before its VFs),
            // so they cost nothing here.
            if known_vfs.contains(&addr) {
                continue;
            }
            let dir = devices.join(&name);
            let Ok(class) = host::parse_attr(&dir.join("class"), attr::parse_prefixed_hex) else {
                continue;
            };
            match class >> 16 {
                0x02 => {
                    if host::link_basename(&dir.join("physfn"))?.is_some() {
                        continue;
                    }
                    // One unreadable PF must not hide the others' VFs.
                    let pf = match inventory::read_function(root, addr)
                        .and_then(|f| inventory::read_pf(root, f))
                    {
                        Ok(pf) => pf,
                        Err(e) => {
                            tracing::warn!(pf = %addr, "skipping an unreadable network function: {e}");
                            continue;
                        }
                    };
                    known_vfs.extend(pf.vfs.iter().map(|(_, a)| *a));
                    pfs.push(pf);
                }
                0x03 if inventory::is_nvidia_gpu(&dir, class)? => gpu_addrs.push(addr),
                _ => {}
            }
        }
        let gpus =
            inventory::gpus_in_pci_order(root, inventory::numbered_gpus(root, || Ok(gpu_addrs))?)?;
        let gpu_count = gpus.len();
        let inv = Inventory {
            pfs,
            gpus,
            ..Inventory::default()
        };
        let topo = Topology::detect(&inv, rail_map);
        let mut node = Node {
            root: root.clone(),
            pfs: inv.pfs.iter().map(|pf| pf_info(root, pf, &topo)).collect(),
            vfs: Vec::new(),
            gpus: gpu_count,
            inventory: Inventory::default(),
        };
        for (i, pf) in inv.pfs.iter().enumerate() {
            for &(index, addr) in &pf.vfs {
                let slot = node.new_vf(i, index, addr);
                node.vfs.push(slot);
            }
        }
        node.inventory = inv;
        Ok(node)
    }

    /// Detects the PFs' rails again with `rail_map` overriding; true when any changed.
    fn redetect_rails(&mut self, rail_map: Option<&RailMap>) -> bool {
        let topo = Topology::detect(&self.inventory, rail_map);
        let mut changed = false;
        for pf in &mut self.pfs {
            let rail = topo.pf_rail(&pf.addr).map(|r| r.index);
            if rail != pf.rail {
                tracing::info!(pf = %pf.label(), from = ?pf.rail, to = ?rail, "PF rail changed by the railMap");
                pf.rail = rail;
                changed = true;
            }
        }
        changed
    }

    fn new_vf(&self, pf: usize, index: u32, addr: PciAddr) -> VfSlot {
        let p = &self.pfs[pf];
        let dir = self.root.pci_device(&addr);
        // The kernel gives a VF its PF's vendor and the PF's sriov_vf_device as device id;
        // read the VF's own attributes only when the PF does not say.
        let vendor = p.vendor;
        let device = p.vf_device.unwrap_or_else(|| {
            host::parse_attr(&dir.join("device"), attr::parse_prefixed_hex)
                .map(|d| d as u16)
                .unwrap_or(0)
        });
        // One descriptor of the VF directory for the reads below; the probe keeps only
        // its port's.
        let fd = health::open_function_dir(&dir);
        let numa = health::read_numa(fd.as_ref(), &dir);
        let mut probe = Probe::new(dir);
        let obs = probe.observe_with(true, None, fd.as_ref());
        VfSlot {
            addr,
            pf,
            index,
            vendor,
            device,
            numa,
            probe,
            obs,
            health: not_judged(),
            failed: FailedChecks::default(),
            owner: None,
            earlier_match: None,
        }
    }

    pub fn pf_of(&self, vf: &VfSlot) -> &PfInfo {
        &self.pfs[vf.pf]
    }
}

/// Whether `sel` takes `vf` (of `pf`). Every non-empty field must match.
pub fn selector_matches(sel: &Selector, vf: &VfSlot, pf: &PfInfo) -> bool {
    (sel.vendors.is_empty() || sel.vendors.contains(&vf.vendor))
        && (sel.devices.is_empty() || sel.devices.contains(&vf.device))
        && (sel.drivers.is_empty()
            || vf
                .obs
                .driver
                .as_ref()
                .is_some_and(|d| sel.drivers.iter().any(|s| s == d)))
        && (sel.pf_names.is_empty()
            || pf
                .netdev
                .as_deref()
                .is_some_and(|n| sel.pf_names.iter().any(|p| p.matches(n, vf.index))))
        && (sel.root_devices.is_empty() || sel.root_devices.contains(&pf.addr))
        && (sel.pci_addresses.is_empty() || sel.pci_addresses.contains(&vf.addr))
        && (sel.link_types.is_empty()
            || pf.link_type().is_some_and(|l| sel.link_types.contains(&l)))
        && (!sel.is_rdma || vf.obs.rdma.is_some() || vf.obs.in_pod(Some(&pf.obs)))
        && (!sel.compute_only || pf.rail.is_some())
}

pub fn resource_matches(r: &ResourceConfig, vf: &VfSlot, pf: &PfInfo) -> bool {
    r.selectors.iter().any(|s| selector_matches(s, vf, pf))
}

fn known_id(device: u16) -> Option<&'static str> {
    Some(match device {
        0x1017 => "ConnectX-5 PF",
        0x1018 => "ConnectX-5 VF",
        0x101b => "ConnectX-6 PF",
        0x101c => "ConnectX-6 VF",
        0x101d => "ConnectX-6 Dx PF",
        0x101e => "ConnectX VF of ConnectX-6 Dx/7 and later",
        0x1021 => "ConnectX-7 PF",
        0x1023 => "ConnectX-8 PF",
        0xa2dc => "BlueField-3 PF",
        _ => return None,
    })
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Why `r` selects no VF on this node: each selector field that matches nothing on its
/// own, with what the node has instead.
pub fn explain_no_match(node: &Node, r: &ResourceConfig) -> String {
    if node.vfs.is_empty() {
        let pfs = list(
            node.pfs
                .iter()
                .filter(|p| p.vendor == inventory::VENDOR_MELLANOX)
                .map(|p| p.label()),
        );
        return format!(
            "this node has no VFs at all (Mellanox PFs: {pfs}); create them first (sriov_numvfs, or `railvf-device-plugin setup-vfs`)"
        );
    }
    let mut clauses = Vec::new();
    let count = |f: &dyn Fn(&VfSlot, &PfInfo) -> bool| {
        node.vfs.iter().filter(|v| f(v, node.pf_of(v))).count()
    };
    for (i, s) in r.selectors.iter().enumerate() {
        let at = if r.selectors.len() > 1 {
            format!("selectors[{i}].")
        } else {
            "selectors.".into()
        };
        let ids: BTreeSet<(u16, u16)> = node.vfs.iter().map(|v| (v.vendor, v.device)).collect();
        let describe_ids = || {
            list(ids.iter().map(|&(ven, dev)| {
                let pfs: BTreeMap<PciAddr, String> = node
                    .vfs
                    .iter()
                    .filter(|v| v.vendor == ven && v.device == dev)
                    .map(|v| (node.pf_of(v).addr, node.pf_of(v).label()))
                    .collect();
                let n = node
                    .vfs
                    .iter()
                    .filter(|v| v.vendor == ven && v.device == dev)
                    .count();
                let what = known_id(dev).map(|w| format!(" [{w}]")).unwrap_or_default();
                format!(
                    "{n} {ven:04x}:{dev:04x}{what} VFs on {}",
                    list(pfs.into_values())
                )
            }))
        };
        if !s.vendors.is_empty() && count(&|v, _| s.vendors.contains(&v.vendor)) == 0 {
            clauses.push(format!(
                "{at}vendors [{}] matches no VF; this node has {}",
                list(s.vendors.iter().map(|v| format!("{v:04x}"))),
                describe_ids()
            ));
        }
        if !s.devices.is_empty() && count(&|v, _| s.devices.contains(&v.device)) == 0 {
            let named = list(s.devices.iter().map(|d| match known_id(*d) {
                Some(w) => format!("{d:04x} ({w})"),
                None => format!("{d:04x}"),
            }));
            let hint = match ids.iter().map(|&(_, d)| d).collect::<BTreeSet<_>>() {
                d if d.len() == 1 => format!(
                    " (\"devices\": [\"{:04x}\"] selects them)",
                    d.first().copied().unwrap_or_default()
                ),
                _ => String::new(),
            };
            clauses.push(format!(
                "{at}devices [{named}] matches no VF; this node has {}{hint}",
                describe_ids()
            ));
        }
        if !s.drivers.is_empty()
            && count(&|v, _| v.obs.driver.as_ref().is_some_and(|d| s.drivers.contains(d))) == 0
        {
            let have: BTreeSet<String> = node
                .vfs
                .iter()
                .map(|v| v.obs.driver.clone().unwrap_or_else(|| "(unbound)".into()))
                .collect();
            clauses.push(format!(
                "{at}drivers [{}] matches no VF (mlx5 VFs are bound to mlx5_core; mlx5_ib is not a PCI driver); VF drivers here: {}",
                list(&s.drivers),
                list(have)
            ));
        }
        if !s.pf_names.is_empty()
            && count(&|v, p| {
                p.netdev
                    .as_deref()
                    .is_some_and(|n| s.pf_names.iter().any(|pat| pat.matches(n, v.index)))
            }) == 0
        {
            let have: BTreeMap<PciAddr, String> = node
                .vfs
                .iter()
                .map(|v| (node.pf_of(v).addr, node.pf_of(v).label()))
                .collect();
            clauses.push(format!(
                "{at}pfNames [{}] matches no PF netdev with VFs; PFs with VFs here: {}",
                list(s.pf_names.iter().map(|p| p.raw.clone())),
                list(have.into_values())
            ));
        }
        if !s.root_devices.is_empty() && count(&|_, p| s.root_devices.contains(&p.addr)) == 0 {
            let have: BTreeSet<PciAddr> = node.vfs.iter().map(|v| node.pf_of(v).addr).collect();
            clauses.push(format!(
                "{at}rootDevices [{}] names no PF with VFs; PFs with VFs here: {}",
                list(&s.root_devices),
                list(have)
            ));
        }
        if !s.pci_addresses.is_empty() && count(&|v, _| s.pci_addresses.contains(&v.addr)) == 0 {
            clauses.push(format!(
                "{at}pciAddresses [{}] names no VF of this node",
                list(&s.pci_addresses)
            ));
        }
        if !s.link_types.is_empty()
            && count(&|_, p| p.link_type().is_some_and(|l| s.link_types.contains(&l))) == 0
        {
            let have: BTreeSet<String> = node
                .vfs
                .iter()
                .map(|v| {
                    node.pf_of(v)
                        .link_type()
                        .map_or("unknown".into(), |l| l.to_string())
                })
                .collect();
            clauses.push(format!(
                "{at}linkTypes [{}] matches no PF; PF link types here: {}",
                list(&s.link_types),
                list(have)
            ));
        }
        if s.is_rdma && count(&|v, p| v.obs.rdma.is_some() || v.obs.in_pod(Some(&p.obs))) == 0 {
            clauses.push(format!(
                "{at}isRdma: no VF has an RDMA device (is mlx5_ib loaded?)"
            ));
        }
        if s.compute_only && count(&|_, p| p.rail.is_some()) == 0 {
            clauses.push(format!(
                "no PF with VFs has a GPU rail ({} GPUs seen); give a railMap in the config",
                node.gpus
            ));
        }
    }
    if clauses.is_empty() {
        "each selector field matches some VF, but no VF matches all of them together (or they all went to an earlier resource)".into()
    } else {
        clauses.join("; ")
    }
}

/// One resource's selection state inside the [`Monitor`].
struct ResourceRuntime {
    cfg: ResourceConfig,
    exp: Expectations,
    tx: watch::Sender<Arc<DeviceSet>>,
    allocations: Arc<Allocations>,
    dirty: bool,
}

impl ResourceRuntime {
    fn new(cfg: &ResourceConfig) -> Self {
        let (tx, _) = watch::channel(Arc::new(DeviceSet::default()));
        ResourceRuntime {
            exp: expectations(cfg),
            cfg: cfg.clone(),
            tx,
            allocations: Arc::default(),
            dirty: true,
        }
    }

    fn handle(&self) -> ResourceHandle {
        ResourceHandle {
            config: self.cfg.clone(),
            devices: self.tx.subscribe(),
            allocations: self.allocations.clone(),
        }
    }
}

fn expectations(cfg: &ResourceConfig) -> Expectations {
    Expectations {
        link_layer: cfg.expected_link_layer(),
        require_lid: false,
    }
}

/// Owns the node, polls it and publishes each resource's [`DeviceSet`].
pub struct Monitor {
    node: Node,
    resources: Vec<ResourceRuntime>,
    rail_map: Option<RailMap>,
    tick: u64,
}

/// The answer to [`MonitorCommand::Reconfigure`]: every resource's handle, in config
/// order, and the resources that select nothing with the reason.
pub type Reconfigured = (Vec<ResourceHandle>, Vec<(String, String)>);

/// What the poller thread is asked to do besides polling.
pub enum MonitorCommand {
    /// Apply a new config.
    Reconfigure(Config, tokio::sync::oneshot::Sender<Reconfigured>),
}

/// The health of a VF before its first verdict.
fn not_judged() -> Health {
    Health::Unhealthy("not judged yet".into())
}

/// VFs polled between two short pauses of the poller.
const CHUNK: usize = 256;

/// Every VF's port is read in full at least every this many polls (2 s at 250 ms).
pub const FULL_READ_EVERY: u64 = 8;

impl Monitor {
    /// Selects devices for every resource of `config`, judges their health, and returns
    /// the monitor with one handle per resource (in config order).
    pub fn new(node: Node, config: &Config) -> (Self, Vec<ResourceHandle>) {
        let resources: Vec<ResourceRuntime> =
            config.resources.iter().map(ResourceRuntime::new).collect();
        let handles = resources.iter().map(ResourceRuntime::handle).collect();
        let mut m = Monitor {
            node,
            resources,
            rail_map: config.rail_map.clone(),
            tick: 0,
        };
        m.assign_owners(true);
        m.publish();
        (m, handles)
    }

    /// Applies a new config. A resource whose full name stays keeps its channel (open
    /// `ListAndWatch` streams go on and get the new list if it differs); its VFs stay with
    /// it when its selectors and the rails are unchanged, else they are selected again. A
    /// removed resource's channel closes (its streams end) and its VFs are free for the
    /// others. Returns every resource's handle in the new config's order.
    pub fn reconfigure(&mut self, config: &Config) -> Vec<ResourceHandle> {
        let rails_changed = if config.rail_map != self.rail_map {
            self.rail_map = config.rail_map.clone();
            self.node.redetect_rails(self.rail_map.as_ref())
        } else {
            false
        };
        let mut old: BTreeMap<String, (usize, ResourceRuntime)> =
            std::mem::take(&mut self.resources)
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r.cfg.full_name(), (i, r)))
                .collect();
        // Old index → new index, for VFs that stay with their resource.
        let mut keep: BTreeMap<usize, usize> = BTreeMap::new();
        for (n, cfg) in config.resources.iter().enumerate() {
            let rt = match old.remove(&cfg.full_name()) {
                Some((i, mut rt)) => {
                    // `ncclIbHca` and `madDevices` change what Allocate answers, not which
                    // VFs the resource has; `ncclIbHca`'s default also flips when another
                    // resource is added or removed, which must not take this one's VFs away.
                    let mut same = rt.cfg.clone();
                    same.nccl_ib_hca = cfg.nccl_ib_hca;
                    same.mad_devices = cfg.mad_devices;
                    if same == *cfg && !rails_changed {
                        keep.insert(i, n);
                    }
                    if rt.cfg.nccl_ib_hca != cfg.nccl_ib_hca {
                        let name = cfg.full_name();
                        if cfg.nccl_ib_hca {
                            tracing::warn!(
                                resource = %name,
                                "{name} sets NCCL_IB_HCA for containers allocated from now on (ncclIbHca is true)"
                            );
                        } else {
                            tracing::warn!(
                                resource = %name,
                                "{name} no longer sets NCCL_IB_HCA for containers allocated from now on, only PCIDEVICE_<R>_RDMA (ncclIbHca is false; when the config does not give it, it is true only while the config has one resource); set \"ncclIbHca\": true on it to keep NCCL_IB_HCA"
                            );
                        }
                    }
                    if rt.cfg.mad_devices != cfg.mad_devices {
                        let name = cfg.full_name();
                        tracing::warn!(
                            resource = %name,
                            "{name} {} the VFs' umad and issm devices for containers allocated from now on (madDevices is {})",
                            if cfg.mad_devices { "passes" } else { "no longer passes" },
                            cfg.mad_devices
                        );
                    }
                    rt.cfg = cfg.clone();
                    rt.exp = expectations(cfg);
                    rt.dirty = true;
                    rt
                }
                None => ResourceRuntime::new(cfg),
            };
            self.resources.push(rt);
        }
        // `old` now holds the removed resources: dropping them closes their channels.
        drop(old);
        for vf in &mut self.node.vfs {
            vf.owner = vf.owner.and_then(|o| keep.get(&o).copied());
            // Indices changed: what was warned about is judged again below.
            vf.earlier_match = None;
        }
        self.assign_owners(true);
        // A kept VF that a new resource listed before its owner selects stays where it is.
        for i in 0..self.node.vfs.len() {
            self.check_earlier_match(i);
        }
        self.publish();
        for r in &self.resources {
            let set = r.tx.borrow();
            let keep: BTreeSet<PciAddr> = set.devices.keys().copied().collect();
            r.allocations.forget_except(&keep);
        }
        self.resources.iter().map(ResourceRuntime::handle).collect()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Warnings for resources that select nothing (logged at start).
    pub fn empty_resources(&self) -> Vec<(String, String)> {
        self.resources
            .iter()
            .filter(|r| r.tx.borrow().devices.is_empty())
            .map(|r| (r.cfg.full_name(), explain_no_match(&self.node, &r.cfg)))
            .collect()
    }

    /// Gives every unowned VF to the first resource that selects it. Owned VFs stay:
    /// a VF that stops matching (driver unbound, RDMA gone) turns Unhealthy, not absent.
    fn assign_owners(&mut self, startup: bool) {
        for i in 0..self.node.vfs.len() {
            if self.node.vfs[i].owner.is_none() {
                self.assign_owner(i, startup);
            }
        }
    }

    fn assign_owner(&mut self, i: usize, startup: bool) {
        let vf = &self.node.vfs[i];
        let pf = self.node.pf_of(vf);
        let mut owner = None;
        for (r, res) in self.resources.iter().enumerate() {
            if resource_matches(&res.cfg, vf, pf) {
                match owner {
                    None => owner = Some(r),
                    Some(first) if startup => tracing::warn!(
                        vf = %vf.addr,
                        "VF is selected by both {} and {}; it belongs to the first",
                        self.resources[first].cfg.full_name(),
                        res.cfg.full_name()
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(r) = owner {
            if !startup {
                tracing::info!(vf = %vf.addr, resource = %self.resources[r].cfg.full_name(), "VF joins the resource");
            }
            self.node.vfs[i].health = not_judged();
            self.node.vfs[i].failed = FailedChecks::default();
            self.node.vfs[i].owner = Some(r);
            self.resources[r].dirty = true;
            self.judge(i);
        }
    }

    /// Warns, once, when a resource listed before VF `i`'s owner selects it too. The VF
    /// stays with its owner while the plugin runs: kubelet may have given it to a pod
    /// under the owner, which the plugin cannot always tell (it learns of a freed VF only
    /// by inference, not at all for allocations made before it started, and sees a VF in
    /// a pod only with RDMA namespace isolation), so moving it could hand it out twice.
    /// The next start assigns it to the earlier resource.
    fn check_earlier_match(&mut self, i: usize) {
        let vf = &self.node.vfs[i];
        let Some(owner) = vf.owner else { return };
        let pf = self.node.pf_of(vf);
        let earlier = self.resources[..owner]
            .iter()
            .position(|r| resource_matches(&r.cfg, vf, pf));
        if earlier == vf.earlier_match {
            return;
        }
        if let Some(e) = earlier {
            let (owner, earlier) = (
                self.resources[owner].cfg.full_name(),
                self.resources[e].cfg.full_name(),
            );
            tracing::warn!(
                vf = %vf.addr,
                resource = %owner,
                earlier = %earlier,
                "VF of {owner} is now also selected by {earlier}, listed before it in the config: it stays with {owner} while the plugin runs (kubelet may have given it to a pod as {owner}), and goes to {earlier} when the plugin restarts or {owner}'s selectors change; make the selectors of the two resources exclusive"
            );
        }
        self.node.vfs[i].earlier_match = earlier;
    }

    fn judge(&mut self, i: usize) {
        let vf = &self.node.vfs[i];
        let Some(r) = vf.owner else { return };
        let pf = &self.node.pfs[vf.pf];
        let (health, failed) = health::judge_checks(
            &self.node.root,
            vf.addr,
            &vf.obs,
            Some((pf.addr, &pf.obs)),
            &self.resources[r].exp,
        );
        if failed != vf.failed {
            self.node.vfs[i].failed = failed;
            self.resources[r].dirty = true;
        }
        let vf = &self.node.vfs[i];
        if health != vf.health {
            let name = self.resources[r].cfg.full_name();
            match &health {
                Health::Unhealthy(why) => {
                    tracing::warn!(vf = %vf.addr, resource = %name, "VF is Unhealthy: {why}")
                }
                Health::Healthy if vf.health != not_judged() => {
                    tracing::info!(vf = %vf.addr, resource = %name, "VF is Healthy again")
                }
                Health::Healthy => {}
            }
            self.node.vfs[i].health = health;
            self.resources[r].dirty = true;
        }
    }

    /// Re-reads a PF's VF links after its VF count changed to `numvfs`, and stores that
    /// count. When the PF cannot be read, its VFs stay as they are and the count is not
    /// stored, so that the next poll tries again.
    fn rescan_pf(&mut self, p: usize, numvfs: Option<u32>) {
        let addr = self.node.pfs[p].addr;
        let vfs = match inventory::read_function(&self.node.root, addr)
            .and_then(|f| inventory::read_pf(&self.node.root, f))
        {
            Ok(pf) => pf.vfs,
            Err(e) => {
                // A transient failure (EMFILE, a sysfs read error) must not remove every VF
                // of the PF, those in pods included.
                let kept = self.node.vfs.iter().filter(|v| v.pf == p).count();
                let pf = &mut self.node.pfs[p];
                if pf.rescan_failed {
                    tracing::debug!(pf = %pf.label(), "the PF's VFs still cannot be re-read: {e}");
                } else {
                    tracing::warn!(
                        pf = %pf.label(),
                        numvfs = ?numvfs,
                        "sriov_numvfs changed but the PF's VFs cannot be re-read: {e}; its {kept} VFs are kept as they were and the PF is read again at every poll (not warned about again; \"PF's VFs changed\" is logged once it succeeds). If this lasts, check that the PF's directory and virtfn links in sysfs are readable"
                    );
                }
                pf.rescan_failed = true;
                return;
            }
        };
        self.node.pfs[p].numvfs = numvfs;
        self.node.pfs[p].rescan_failed = false;
        let want: BTreeMap<PciAddr, u32> = vfs.iter().map(|&(n, a)| (a, n)).collect();
        let before = self.node.vfs.len();
        let mut removed = Vec::new();
        self.node.vfs.retain(|v| {
            let keep = v.pf != p || want.get(&v.addr) == Some(&v.index);
            if !keep {
                removed.push((v.addr, v.owner));
            }
            keep
        });
        for (a, owner) in &removed {
            if let Some(r) = owner {
                self.resources[*r].dirty = true;
                tracing::info!(vf = %a, resource = %self.resources[*r].cfg.full_name(), "VF removed");
            }
        }
        let have: BTreeSet<PciAddr> = self
            .node
            .vfs
            .iter()
            .filter(|v| v.pf == p)
            .map(|v| v.addr)
            .collect();
        for (a, n) in want {
            if !have.contains(&a) {
                let slot = self.node.new_vf(p, n, a);
                self.node.vfs.push(slot);
            }
        }
        self.node.vfs.sort_by_key(|v| v.addr);
        tracing::info!(
            pf = %addr,
            numvfs = ?self.node.pfs[p].numvfs,
            "PF's VFs changed ({before} → {} VFs on the node)",
            self.node.vfs.len()
        );
    }

    /// One poll of the node: PFs, VF counts, every VF's health; publishes what changed.
    pub fn poll(&mut self) {
        self.tick = self.tick.wrapping_add(1);
        let mut rescan = Vec::new();
        let mut pf_changed = vec![false; self.node.pfs.len()];
        for (p, pf) in self.node.pfs.iter_mut().enumerate() {
            let obs = pf.probe.observe(true, Some(&pf.obs));
            pf_changed[p] = obs != pf.obs;
            pf.obs = obs;
            if let Some(n) = host::list_dir(&pf.probe.dir().join("net"))
                .ok()
                .and_then(|v| v.into_iter().next())
            {
                pf.netdev = Some(n);
            }
            let numvfs =
                host::parse_optional_attr(&pf.probe.dir().join("sriov_numvfs"), attr::parse_u32)
                    .ok()
                    .flatten();
            if numvfs != pf.numvfs {
                rescan.push((p, numvfs));
            }
        }
        for (p, numvfs) in rescan {
            self.rescan_pf(p, numvfs);
            pf_changed[p] = true;
        }
        for i in 0..self.node.vfs.len() {
            // On a big node, give the CPU back now and then: a poll of thousands of VFs
            // must not hold a core long enough to delay an Allocate on a small machine.
            if i > 0 && i.is_multiple_of(CHUNK) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let vf = &mut self.node.vfs[i];
            // Full reads when something hints at a change, else a slow round robin.
            let full = pf_changed[vf.pf]
                || !vf.health.is_healthy()
                || (i as u64 + self.tick).is_multiple_of(FULL_READ_EVERY);
            let obs = vf.probe.observe(full, Some(&vf.obs));
            if obs == vf.obs && !pf_changed[vf.pf] && vf.owner.is_some() {
                // Health is a function of these observations only: nothing to judge.
                continue;
            }
            let pf_obs = Some(&self.node.pfs[vf.pf].obs);
            if obs.in_pod(pf_obs) != vf.obs.in_pod(pf_obs)
                && let Some(r) = vf.owner
            {
                self.resources[r].dirty = true;
                self.resources[r]
                    .allocations
                    .in_pod_changed(vf.addr, obs.in_pod(pf_obs));
            }
            vf.obs = obs;
            if self.node.vfs[i].owner.is_none() {
                self.assign_owner(i, false);
            } else {
                self.check_earlier_match(i);
            }
            self.judge(i);
        }
        self.publish();
    }

    fn publish(&mut self) {
        for (r, res) in self.resources.iter_mut().enumerate() {
            if !res.dirty {
                continue;
            }
            res.dirty = false;
            let devices = self
                .node
                .vfs
                .iter()
                .filter(|v| v.owner == Some(r))
                .map(|v| {
                    let pf = &self.node.pfs[v.pf];
                    (
                        v.addr,
                        DeviceEntry {
                            addr: v.addr,
                            pf: pf.addr,
                            vf_index: v.index,
                            numa: v.numa,
                            rail: pf.rail,
                            health: v.health.clone(),
                            failed: v.failed,
                            in_pod: v.obs.in_pod(Some(&pf.obs)),
                        },
                    )
                })
                .collect();
            let set = DeviceSet {
                devices,
                exclude_topology: res.cfg.exclude_topology,
                nccl_ib_hca: res.cfg.nccl_ib_hca,
                mad_devices: res.cfg.mad_devices,
            };
            res.tx.send_if_modified(|cur| {
                if **cur == set {
                    false
                } else {
                    *cur = Arc::new(set);
                    true
                }
            });
        }
    }

    /// Polls every `interval` and carries out commands until the command channel's
    /// sender is dropped. Runs on its own thread: the reads are blocking and must not
    /// stall gRPC calls.
    pub fn run(mut self, interval: Duration, commands: std_mpsc::Receiver<MonitorCommand>) {
        let mut next = std::time::Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(std::time::Instant::now());
            match commands.recv_timeout(wait) {
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.poll();
                    next = std::time::Instant::now() + interval;
                }
                Ok(MonitorCommand::Reconfigure(config, reply)) => {
                    let handles = self.reconfigure(&config);
                    let _ = reply.send((handles, self.empty_resources()));
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Device sets for the unit tests of the modules that read them.
#[cfg(test)]
pub(crate) mod test_sets {
    use super::{DeviceEntry, DeviceSet};
    use crate::health::Health;

    /// A healthy VF of PF 18:00.0, with no NUMA node or rail.
    pub fn entry(addr: &str, in_pod: bool) -> DeviceEntry {
        DeviceEntry {
            addr: addr.parse().unwrap(),
            pf: "0000:18:00.0".parse().unwrap(),
            vf_index: 0,
            numa: None,
            rail: None,
            health: Health::Healthy,
            failed: Default::default(),
            in_pod,
        }
    }

    pub fn set(entries: &[DeviceEntry]) -> DeviceSet {
        DeviceSet {
            devices: entries.iter().map(|e| (e.addr, e.clone())).collect(),
            ..Default::default()
        }
    }
}
