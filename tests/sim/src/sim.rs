//! [`SimNode`]: build a node, drive it at runtime, tear it down.

use std::fmt::{self, Display, Write as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify};
use netlink_sys::Socket;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::{Result, SimError, io_err, nl_err};
use crate::fault::{Fault, PhysState, PortState};
use crate::node::{HostNetdev, Naming, Net, Node, Params, WatchTarget};
use crate::pci::{Bdf, to_bdf};
use crate::rtnl::{self, Rtnl};
use crate::topology::{LinkLayer, NicRole, Topology};

/// How VF netdevs (the real veths) are named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetdevNaming {
    /// A tag generated from the process id and a counter (unique per instance, also across
    /// concurrently running test binaries).
    #[default]
    Auto,
    /// This tag (1–4 lowercase letters/digits) replaces the leading `ib`:
    /// tag `q7` names VF `0000:18:00.1` `q7p24s0f1`.
    Tag(String),
    /// The real systemd names (`ibp24s0f1`); one such node per host namespace.
    Real,
}

/// Options of [`SimNode::build`]; start from [`SimOptions::dgx_h200`] or [`SimOptions::new`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The node to build.
    pub topology: Topology,
    /// Build in this directory (created if missing; must be empty) instead of a fresh
    /// temporary directory.
    pub root: Option<PathBuf>,
    /// Leave the tree on disk after drop (links and namespaces are still removed).
    pub keep_root: bool,
    /// VFs per compute PF; `None` = the topology's `sriov_numvfs_reference` (8 on DGX).
    pub vfs_per_pf: Option<u16>,
    /// VFs per storage / DPU PF (default 0).
    pub storage_vfs_per_pf: u16,
    /// VF netdev naming.
    pub naming: NetdevNaming,
    /// Create a real veth per VF (default). `false` builds the fixture only (scale runs):
    /// VF netdevs then exist in the tree only, with made-up ifindexes.
    pub links: bool,
    /// VFs start with all-zero GUIDs, LID `0x0`, port `1: DOWN` (as right after
    /// `echo 8 > sriov_numvfs`) until a GUID is written.
    pub unassigned_guids: bool,
    /// How long the simulated SM takes to assign a LID after a VF's GUID is set.
    pub lid_delay: Duration,
    /// Faults present from the start: (PCI address, fault). A PF's fault covers its VFs.
    pub faults: Vec<(String, Fault)>,
}

impl SimOptions {
    /// Defaults for a topology: 8 VFs per compute PF (the topology's reference), healthy
    /// VFs, auto tag, real links, `lid_delay` 300 ms, temporary root.
    pub fn new(topology: Topology) -> SimOptions {
        SimOptions {
            topology,
            root: None,
            keep_root: false,
            vfs_per_pf: None,
            storage_vfs_per_pf: 0,
            naming: NetdevNaming::Auto,
            links: true,
            unassigned_guids: false,
            lid_delay: Duration::from_millis(300),
            faults: Vec::new(),
        }
    }

    /// [`SimOptions::new`] with the project's DGX H200 topology.
    pub fn dgx_h200() -> SimOptions {
        SimOptions::new(Topology::dgx_h200())
    }

    /// [`SimOptions::new`] with the project's DGX H100 topology.
    pub fn dgx_h100() -> SimOptions {
        SimOptions::new(Topology::dgx_h100())
    }

    /// Sets [`SimOptions::vfs_per_pf`].
    pub fn vfs_per_pf(mut self, n: u16) -> Self {
        self.vfs_per_pf = Some(n);
        self
    }
    /// Sets [`SimOptions::storage_vfs_per_pf`].
    pub fn storage_vfs_per_pf(mut self, n: u16) -> Self {
        self.storage_vfs_per_pf = n;
        self
    }
    /// Names VF netdevs with this tag (see [`NetdevNaming::Tag`]).
    pub fn tag(mut self, tag: &str) -> Self {
        self.naming = NetdevNaming::Tag(tag.to_owned());
        self
    }
    /// Uses the real VF netdev names (see [`NetdevNaming::Real`]).
    pub fn real_names(mut self) -> Self {
        self.naming = NetdevNaming::Real;
        self
    }
    /// Builds the fixture only, no veths (see [`SimOptions::links`]).
    pub fn no_links(mut self) -> Self {
        self.links = false;
        self
    }
    /// Sets [`SimOptions::unassigned_guids`].
    pub fn unassigned_guids(mut self) -> Self {
        self.unassigned_guids = true;
        self
    }
    /// Sets [`SimOptions::lid_delay`].
    pub fn lid_delay(mut self, d: Duration) -> Self {
        self.lid_delay = d;
        self
    }
    /// Adds a build-time fault (`addr` is anything that displays as a PCI address).
    pub fn fault(mut self, addr: impl Display, fault: Fault) -> Self {
        self.faults.push((addr.to_string(), fault));
        self
    }
    /// Builds in `dir` (see [`SimOptions::root`]).
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = Some(dir.into());
        self
    }
    /// Sets [`SimOptions::keep_root`].
    pub fn keep_root(mut self) -> Self {
        self.keep_root = true;
        self
    }
    /// [`SimNode::build`] with these options.
    pub fn build(self) -> Result<SimNode> {
        SimNode::build(self)
    }
}

/// A VF as the sim knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfInfo {
    /// VF PCI address.
    pub pci: Bdf,
    /// Its PF.
    pub pf: Bdf,
    /// VF index on the PF (`virtfn<index>`, `sriov/<index>`).
    pub index: u16,
    /// RDMA device (`mlx5_12`).
    pub rdma_device: String,
    /// uverbs number (`/dev/infiniband/uverbs<N>`); also its umad and issm number.
    pub uverbs: u32,
    /// The netdev name the VF is created with (its host name).
    pub netdev: String,
    /// The netdev as the host namespace sees it now (per the mirror); `None` while it is in
    /// another namespace or does not exist (unbound).
    pub host_netdev: Option<HostNetdev>,
    /// NUMA node from the topology (faults aside).
    pub numa: i32,
    /// Rail (GPU index) of the PF.
    pub rail: Option<u32>,
    /// Node GUID currently applied (from `sriov/<n>/node`).
    pub node_guid: u64,
    /// Port GUID currently applied (from `sriov/<n>/port`).
    pub port_guid: u64,
    /// LID the port shows (`0` if none).
    pub lid: u16,
    /// When the SM assigned that LID, taken just before the sim wrote it (so no reader saw
    /// it earlier); `None` when the LID was there from the start, or there is none.
    pub lid_assigned_at: Option<Instant>,
    /// Faults in effect (own + the PF's).
    pub faults: Vec<Fault>,
    /// Whether `mlx5_core` is bound.
    pub bound: bool,
    /// Absolute path of the VF's sysfs directory (under `sys/devices/…`).
    pub sysfs_dir: PathBuf,
}

/// A PF as the sim knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfInfo {
    /// PF PCI address.
    pub pci: Bdf,
    /// RDMA device (`mlx5_0`).
    pub rdma_device: String,
    /// Netdev name (fixture only; PFs have no real link).
    pub netdev: String,
    /// Compute / storage / DPU.
    pub role: NicRole,
    /// GPU index of the rail.
    pub rail: Option<u32>,
    /// NUMA node from the topology.
    pub numa: i32,
    /// Current base link layer.
    pub link_layer: LinkLayer,
    /// VFs in index order.
    pub vfs: Vec<Bdf>,
    /// LID the port shows.
    pub lid: u16,
    /// Absolute path of the PF's sysfs directory.
    pub sysfs_dir: PathBuf,
}

struct Shared {
    node: Mutex<Node>,
    wake: EventFd,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic elsewhere must not take clean-up down with it.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn kick(&self) {
        let _ = self.wake.write(1);
    }
}

enum RootDir {
    Temp(tempfile::TempDir),
    Given { path: PathBuf, created: bool },
}

/// A simulated DGX node: a sysfs-shaped tree under [`SimNode::root`], a real veth per VF
/// (peer ends in a private network namespace), a mirror thread keeping `net/` truthful, and
/// a simulated subnet manager. Everything is removed on drop, also while panicking.
///
/// Point the code under test at it with `RAILVF_HOST_ROOT=<root>`.
pub struct SimNode {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    root: Option<RootDir>,
    root_path: PathBuf,
    keep_root: bool,
    tag: String,
    topology: Topology,
    build_time: Duration,
}

static SIM_SEQ: AtomicU32 = AtomicU32::new(0);

fn auto_tag() -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let n = SIM_SEQ.fetch_add(1, Ordering::Relaxed);
    // Two base-36 digits from the pid, two from the counter: distinct across concurrent
    // test processes unless their pids collide mod 1296 (then the name check catches it).
    let mut v = (std::process::id() % 1296) * 1296 + (n % 1296);
    let mut out = [b'0'; 4];
    for c in out.iter_mut().rev() {
        *c = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_tag(tag: &str) -> Result<()> {
    let ok = (1..=4).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SimError::InvalidOption(format!(
            "tag {tag:?}: use 1-4 lowercase letters or digits"
        )))
    }
}

/// Where temporary roots go: `$RAILVF_SIM_TMPDIR`, else `/dev/shm` (tmpfs: a node is
/// thousands of small files, ~8x faster to write than on ext4), else the system temp dir.
fn temp_base() -> PathBuf {
    if let Some(d) = std::env::var_os("RAILVF_SIM_TMPDIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    let writable = std::fs::metadata(shm).is_ok_and(|m| m.is_dir())
        && nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn prepare_root(opts: &SimOptions) -> Result<(RootDir, PathBuf)> {
    match &opts.root {
        None => {
            let base = temp_base();
            let t = tempfile::Builder::new()
                .prefix("railvf-sim-")
                .tempdir_in(&base)
                .map_err(io_err(base))?;
            let p = t.path().to_owned();
            Ok((RootDir::Temp(t), p))
        }
        Some(dir) => {
            let created = !dir.exists();
            if created {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            } else if std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .next()
                .is_some()
            {
                return Err(SimError::InvalidOption(format!(
                    "root {} is not empty",
                    dir.display()
                )));
            }
            let abs = std::fs::canonicalize(dir).map_err(io_err(dir))?;
            Ok((
                RootDir::Given {
                    path: abs.clone(),
                    created,
                },
                abs,
            ))
        }
    }
}

fn remove_root(root: RootDir, keep: bool) {
    match root {
        RootDir::Temp(mut t) => {
            t.disable_cleanup(keep);
        }
        RootDir::Given { path, created } if !keep => {
            if created {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                for d in ["sys", "dev", "proc", "run", ".railvf-sim"] {
                    let _ = std::fs::remove_dir_all(path.join(d));
                }
            }
        }
        RootDir::Given { .. } => {}
    }
}

impl SimNode {
    /// Builds the node: fixture tree, veths, mirror and SM threads. Real links need root
    /// (see [`crate::require_root`]); `links: false` does not.
    pub fn build(opts: SimOptions) -> Result<SimNode> {
        let started = Instant::now();
        if let NetdevNaming::Tag(t) = &opts.naming {
            check_tag(t)?;
        }
        if opts.links && !nix::unistd::geteuid().is_root() {
            return Err(SimError::NeedsRoot("creating VF veths"));
        }
        let faults: Vec<(Bdf, Fault)> = opts
            .faults
            .iter()
            .map(|(a, f)| Ok((a.trim().parse::<Bdf>()?, *f)))
            .collect::<Result<_>>()?;
        let (root, root_path) = prepare_root(&opts)?;
        let built = Self::build_node(&opts, &faults, &root_path);
        let (node, host_ev, priv_ev) = match built {
            Ok(b) => b,
            Err(e) => {
                remove_root(root, false);
                return Err(e);
            }
        };
        let inotify = match Inotify::init() {
            Ok(i) => i,
            Err(e) => {
                remove_root(root, false);
                return Err(io_err("inotify")(e));
            }
        };
        let tag = node.tag.clone();
        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| io_err("eventfd")(e.into()))?;
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            wake,
            stop: AtomicBool::new(false),
        });
        let mut sim = SimNode {
            shared: shared.clone(),
            worker: None,
            root: Some(root),
            root_path,
            keep_root: opts.keep_root,
            tag,
            topology: opts.topology.clone(),
            build_time: Duration::ZERO,
        };
        // From here on, Drop cleans up whatever fails.
        sim.lock().set_watches(inotify.watches())?;
        sim.worker = Some(
            std::thread::Builder::new()
                .name(format!("railvf-sim-{}", sim.tag))
                .spawn(move || worker(shared, inotify, host_ev, priv_ev))
                .map_err(io_err("spawn sim worker"))?,
        );
        sim.build_time = started.elapsed();
        Ok(sim)
    }

    fn build_node(
        opts: &SimOptions,
        faults: &[(Bdf, Fault)],
        root: &Path,
    ) -> Result<(Node, Option<Socket>, Option<Socket>)> {
        let mut last_err = None;
        for _attempt in 0..8 {
            let (tag, naming) = match &opts.naming {
                NetdevNaming::Auto => {
                    let t = auto_tag();
                    (t.clone(), Naming::Tag(t))
                }
                NetdevNaming::Tag(t) => (t.clone(), Naming::Tag(t.clone())),
                NetdevNaming::Real => ("ib".to_owned(), Naming::Real),
            };
            let params = Params {
                vfs_per_pf: opts.vfs_per_pf,
                storage_vfs_per_pf: opts.storage_vfs_per_pf,
                naming,
                unassigned_guids: opts.unassigned_guids,
                lid_delay: opts.lid_delay,
            };
            let mut node = Node::new(opts.topology.clone(), params, tag, root)?;
            for (b, f) in faults {
                node.preset_fault(*b, *f)?;
            }
            if !opts.links {
                let vfs: Vec<Bdf> = node.vfs.keys().copied().collect();
                for b in vfs {
                    if node.vf_bound(b) {
                        node.give_fake_netdev(b);
                    }
                }
                node.refresh_all()?;
                return Ok((node, None, None));
            }
            let (private_ns, mut private) =
                rtnl::private_netns().map_err(nl_err("create private netns"))?;
            let mut host = Rtnl::open().map_err(nl_err("open rtnetlink socket"))?;
            let nsid = host.nsid_of(&private_ns).map_err(nl_err("namespace id"))?;
            // The socket above is in this thread's namespace: the host one.
            let host_ns = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(nl_err("open the host network namespace"))?;
            let host_nsid = private
                .nsid_of(&host_ns)
                .map_err(nl_err("namespace id of the host"))?;
            // Subscribe before creating links so no event of ours is missed.
            let host_ev = rtnl::link_event_socket(None).map_err(nl_err("link event socket"))?;
            let priv_ev =
                rtnl::link_event_socket(Some(&private_ns)).map_err(nl_err("link event socket"))?;
            let mut clash = None;
            for v in node.vfs.values() {
                if host
                    .link_by_name(&v.netdev)
                    .map_err(nl_err("look up host links"))?
                    .is_some()
                {
                    clash = Some(v.netdev.clone());
                    break;
                }
            }
            node.attach_net(Net::new(host, private, private_ns, nsid, host_nsid));
            let vfs: Vec<Bdf> = node.vfs.keys().copied().collect();
            let res = match clash {
                Some(name) => Err(SimError::InvalidOption(format!(
                    "netdev {name} already exists in this network namespace (another sim with the same tag?)"
                ))),
                None => node.create_links(&vfs),
            };
            match res {
                Ok(()) => {
                    node.refresh_all()?;
                    return Ok((node, Some(host_ev), Some(priv_ev)));
                }
                Err(e) => {
                    node.shutdown_links(Duration::from_secs(2));
                    if opts.naming != NetdevNaming::Auto {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| SimError::InvalidOption("no free tag".into())))
    }

    fn lock(&self) -> MutexGuard<'_, Node> {
        self.shared.lock()
    }

    // ----------------------------------------------------------- accessors

    /// The host root (`RAILVF_HOST_ROOT`): contains `sys/`, `dev/`, `proc/`, `run/`.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// `("RAILVF_HOST_ROOT", root)`, for `Command::envs`.
    pub fn env(&self) -> [(&'static str, PathBuf); 1] {
        [("RAILVF_HOST_ROOT", self.root_path.clone())]
    }

    /// The tag VF netdev names start with (`ib` with real names).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The topology the node was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// How long [`SimNode::build`] took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Absolute sysfs directory of any PCI function (bridge, GPU, PF, VF).
    pub fn sysfs_dir(&self, addr: impl Display) -> Result<PathBuf> {
        let b = to_bdf(&addr)?;
        let node = self.lock();
        node.dir_of(b)
            .map(|d| self.root_path.join(d))
            .ok_or_else(|| SimError::UnknownDevice {
                addr: b.to_string(),
                why: "no such PCI function in the simulated node",
            })
    }

    /// Every VF, in PCI address order.
    pub fn vfs(&self) -> Vec<VfInfo> {
        let node = self.lock();
        node.vfs
            .keys()
            .filter_map(|b| self.vf_info(&node, *b))
            .collect()
    }

    /// One VF.
    pub fn vf(&self, addr: impl Display) -> Result<VfInfo> {
        let b = to_bdf(&addr)?;
        let node = self.lock();
        self.vf_info(&node, b)
            .ok_or_else(|| SimError::UnknownDevice {
                addr: b.to_string(),
                why: "not a VF of the simulated node",
            })
    }

    /// Every PF, in PCI address order.
    pub fn pfs(&self) -> Vec<PfInfo> {
        let node = self.lock();
        node.pfs
            .keys()
            .filter_map(|b| self.pf_info(&node, *b))
            .collect()
    }

    /// One PF.
    pub fn pf(&self, addr: impl Display) -> Result<PfInfo> {
        let b = to_bdf(&addr)?;
        let node = self.lock();
        self.pf_info(&node, b)
            .ok_or_else(|| SimError::UnknownDevice {
                addr: b.to_string(),
                why: "not a PF of the simulated node",
            })
    }

    /// The PF whose RDMA device is `mlx5_N` / whose netdev is this name.
    pub fn pf_by_name(&self, name: &str) -> Result<PfInfo> {
        self.pfs()
            .into_iter()
            .find(|p| p.rdma_device == name || p.netdev == name)
            .ok_or_else(|| SimError::UnknownDevice {
                addr: name.to_owned(),
                why: "no PF with this RDMA device or netdev name",
            })
    }

    /// The UUID the NVIDIA proc file shows for a GPU.
    pub fn gpu_uuid(&self, addr: impl Display) -> Result<String> {
        let b = to_bdf(&addr)?;
        if !self.topology.gpus.iter().any(|g| g.pci == b) {
            return Err(SimError::UnknownDevice {
                addr: b.to_string(),
                why: "not a GPU of the simulated node",
            });
        }
        Ok(crate::node::gpu_uuid(&self.topology.system, b))
    }

    /// Where the VF's netdev is as seen from the host namespace (mirror state; call
    /// [`SimNode::sync`] first to be current).
    pub fn host_netdev(&self, vf: impl Display) -> Result<Option<HostNetdev>> {
        Ok(self.vf(vf)?.host_netdev)
    }

    fn vf_info(&self, node: &Node, b: Bdf) -> Option<VfInfo> {
        let vf = node.vfs.get(&b)?;
        let pf = node.pfs.get(&vf.pf)?;
        Some(VfInfo {
            pci: b,
            pf: vf.pf,
            index: vf.index,
            rdma_device: vf.port.rdma.clone(),
            uverbs: vf.port.rdma_index,
            netdev: vf.netdev.clone(),
            host_netdev: vf.host.clone(),
            numa: pf.nic.numa,
            rail: pf.nic.rail,
            node_guid: vf.port.node_guid,
            port_guid: vf.port.port_guid,
            lid: node.shown_lid(b),
            lid_assigned_at: vf.port.lid_assigned_at(),
            faults: node.effective_faults(b).into_iter().collect(),
            bound: node.vf_bound(b),
            sysfs_dir: self.root_path.join(&vf.dir),
        })
    }

    fn pf_info(&self, node: &Node, b: Bdf) -> Option<PfInfo> {
        let pf = node.pfs.get(&b)?;
        Some(PfInfo {
            pci: b,
            rdma_device: pf.port.rdma.clone(),
            netdev: pf.netdev.name.clone(),
            role: pf.nic.role,
            rail: pf.nic.rail,
            numa: pf.nic.numa,
            link_layer: pf.link_layer,
            vfs: pf.vfs.clone(),
            lid: node.shown_lid(b),
            sysfs_dir: self.root_path.join(&pf.dir),
        })
    }

    // -------------------------------------------------------- runtime knobs

    fn mutate<T>(&self, f: impl FnOnce(&mut Node) -> Result<T>) -> Result<T> {
        let r = f(&mut self.lock());
        self.shared.kick();
        r
    }

    /// Injects a fault now (see [`Fault`]; a PF's fault covers its VFs).
    pub fn inject_fault(&self, addr: impl Display, fault: Fault) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_fault(b, fault, true))
    }

    /// Clears a fault injected on this address (at build time or at runtime).
    pub fn clear_fault(&self, addr: impl Display, fault: Fault) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_fault(b, fault, false))
    }

    /// Faults in effect on a PF or VF.
    pub fn faults(&self, addr: impl Display) -> Result<Vec<Fault>> {
        let b = to_bdf(&addr)?;
        let node = self.lock();
        if !node.is_pf(b) && !node.vfs.contains_key(&b) {
            return Err(SimError::UnknownDevice {
                addr: b.to_string(),
                why: "not a PF or VF of the simulated node",
            });
        }
        Ok(node.effective_faults(b).into_iter().collect())
    }

    /// Forces `ports/1/state` and `phys_state` of one PF or VF (over SM state and faults).
    pub fn set_port_state(
        &self,
        addr: impl Display,
        state: PortState,
        phys: PhysState,
    ) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_port_override(b, Some((state, phys))))
    }

    /// Undoes [`SimNode::set_port_state`]: the port follows the SM and faults again.
    pub fn clear_port_state(&self, addr: impl Display) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_port_override(b, None))
    }

    /// Switches a PF's port (and its VFs) to a link layer, like `mlxconfig LINK_TYPE_P1`
    /// plus a firmware reset.
    pub fn set_link_layer(&self, pf: impl Display, ll: LinkLayer) -> Result<()> {
        let b = to_bdf(&pf)?;
        self.mutate(|n| n.set_link_layer(b, ll))
    }

    /// Unbinds `mlx5_core` from one function: its `driver` link, netdev (the VF's veth is
    /// destroyed, wherever it is) and RDMA device disappear.
    pub fn unbind_driver(&self, addr: impl Display) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_unbound(b, true))
    }

    /// Binds `mlx5_core` again: a VF gets a new veth in the host namespace under its
    /// original name (with a new ifindex, as a real rebind).
    pub fn bind_driver(&self, addr: impl Display) -> Result<()> {
        let b = to_bdf(&addr)?;
        self.mutate(|n| n.set_unbound(b, false))
    }

    /// Sets `sriov_numvfs` of a PF (VFs, fixture and links appear or disappear). The
    /// kernel's "go through 0" rule is not enforced. Writing the `sriov_numvfs` file of the
    /// tree does the same.
    pub fn set_num_vfs(&self, pf: impl Display, n: u16) -> Result<()> {
        let b = to_bdf(&pf)?;
        self.mutate(|node| node.set_num_vfs(b, n))
    }

    /// Adds `n` VFs to a PF.
    pub fn add_vfs(&self, pf: impl Display, n: u16) -> Result<()> {
        let have = self.pf(&pf)?.vfs.len() as u16;
        self.set_num_vfs(pf, have.saturating_add(n))
    }

    /// Removes the last `n` VFs of a PF.
    pub fn remove_vfs(&self, pf: impl Display, n: u16) -> Result<()> {
        let have = self.pf(&pf)?.vfs.len() as u16;
        self.set_num_vfs(pf, have.saturating_sub(n))
    }

    /// Writes a VF's `sriov/<n>/node` and `port` files (as an operator or the CNI would)
    /// and lets the SM react: LID after `lid_delay`, or cleared for a zero port GUID.
    pub fn set_guid(&self, vf: impl Display, node_guid: u64, port_guid: u64) -> Result<()> {
        let b = to_bdf(&vf)?;
        self.mutate(|n| n.write_guids(b, node_guid, port_guid))
    }

    // ------------------------------------------------------------- waiting

    /// Brings the tree up to date now: mirror (where each VF netdev is), GUID files,
    /// `sriov_numvfs`, due LIDs. After it returns the tree matches the kernel.
    pub fn sync(&self) -> Result<()> {
        let mut node = self.lock();
        node.reconcile_links(true)?;
        node.scan_all()?;
        node.sm_tick(Instant::now())?;
        Ok(())
    }

    /// Syncs and polls `cond` (every 2 ms) until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&SimNode) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.sync()?;
            if cond(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: what.to_owned(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the VF's host netdev has this name (`None`: until it is not in the host
    /// namespace).
    pub fn wait_netdev(
        &self,
        vf: impl Display,
        name: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let b = to_bdf(&vf)?;
        self.vf(b)?;
        self.wait_for(
            &format!("VF {b} host netdev to be {name:?}"),
            timeout,
            |s| {
                s.vf(b)
                    .ok()
                    .and_then(|v| v.host_netdev)
                    .map(|h| h.name)
                    .as_deref()
                    == name
            },
        )
    }

    /// Waits until a VF port shows a LID and returns it.
    pub fn wait_lid(&self, vf: impl Display, timeout: Duration) -> Result<u16> {
        let b = to_bdf(&vf)?;
        self.vf(b)?;
        self.wait_for(&format!("VF {b} LID"), timeout, |s| {
            s.vf(b).is_ok_and(|v| v.lid != 0)
        })?;
        Ok(self.vf(b)?.lid)
    }

    /// A human summary: root, tag, and one line per PF.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let pfs = self.pfs();
        let vfs = self.vfs();
        let _ = writeln!(s, "railvf-sim: {} (tag {})", self.topology.system, self.tag);
        let _ = writeln!(s, "root: {}", self.root_path.display());
        let _ = writeln!(
            s,
            "{} GPUs, {} PFs, {} VFs, built in {:?}",
            self.topology.gpus.len(),
            pfs.len(),
            vfs.len(),
            self.build_time
        );
        for p in &pfs {
            let first = p.vfs.first().and_then(|b| vfs.iter().find(|v| v.pci == *b));
            let _ = writeln!(
                s,
                "  {} {:8} {:14} {:8} rail {:4} numa {:2} {:10} vfs {:3}{}",
                p.pci,
                p.rdma_device,
                p.netdev,
                format!("{:?}", p.role).to_lowercase(),
                p.rail.map_or("-".into(), |r| r.to_string()),
                p.numa,
                p.link_layer,
                p.vfs.len(),
                first.map_or(String::new(), |v| format!(
                    "  ({} {} .. )",
                    v.netdev, v.rdma_device
                )),
            );
        }
        s
    }
}

impl fmt::Debug for SimNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNode")
            .field("root", &self.root_path)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.kick();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.lock().shutdown_links(Duration::from_secs(5));
        if let Some(root) = self.root.take() {
            remove_root(root, self.keep_root);
        }
    }
}

/// Mirror + SM thread: reacts to link events (host and private namespace), to writes in
/// the GUID / `sriov_numvfs` files (inotify), and to LID timers.
fn worker(
    shared: Arc<Shared>,
    mut inotify: Inotify,
    host_ev: Option<Socket>,
    priv_ev: Option<Socket>,
) {
    const TRACK_EVERY: Duration = Duration::from_millis(50);
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_track = Instant::now();
    let mut next_lid: Option<Instant> = None;
    let mut first = true;
    let mut last_err: Option<String> = None;
    let mut retry_links = false;
    let nsid = shared.lock().net.as_ref().map_or(-1, |n| n.nsid);
    loop {
        let now = Instant::now();
        let away = shared.lock().any_away();
        let mut timeout = Duration::from_millis(200);
        if let Some(d) = next_lid {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        if away {
            timeout = timeout.min(next_track.saturating_duration_since(now));
        }
        if retry_links {
            timeout = timeout.min(Duration::from_millis(20));
        }
        let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
        {
            let mut fds = vec![
                PollFd::new(shared.wake.as_fd(), PollFlags::POLLIN),
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            ];
            for s in host_ev.iter().chain(priv_ev.iter()) {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if !first {
                let _ = poll(&mut fds, PollTimeout::from(ms));
            }
        }
        first = false;
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let _ = shared.wake.read();
        // Host events matter only for veths whose peer is in our private namespace (other
        // sims' links churn in the same namespace); every private-namespace event is ours.
        let mut links_dirty = false;
        if let Some(s) = &host_ev {
            links_dirty |= rtnl::drain_events(s, |l| l.is_veth && l.link_netnsid == Some(nsid));
        }
        if let Some(s) = &priv_ev {
            links_dirty |= rtnl::drain_events(s, |_| true);
        }
        let mut files: Vec<(inotify::WatchDescriptor, String)> = Vec::new();
        let mut overflow = false;
        // Non-blocking: reads until the queue is empty (WouldBlock).
        while let Ok(events) = inotify.read_events(&mut buf) {
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                }
                if let Some(name) = ev.name {
                    files.push((ev.wd.clone(), name.to_string_lossy().into_owned()));
                }
            }
        }
        let now = Instant::now();
        let track = away && now >= next_track;
        if track {
            next_track = now + TRACK_EVERY;
        }
        let mut node = shared.lock();
        let mut result = Ok(());
        if links_dirty || track || retry_links {
            let r = node.reconcile_links(track);
            // A failed reconcile (e.g. dumps kept being interrupted) is retried shortly.
            retry_links = r.is_err();
            result = result.and(r);
        }
        for (wd, name) in files {
            let target: Option<WatchTarget> = node.by_wd.get(&wd).copied();
            if let Some(t) = target {
                result = result.and(node.on_file_event(t, &name));
            }
        }
        if overflow {
            result = result.and(node.scan_all());
        }
        match node.sm_tick(Instant::now()) {
            Ok(n) => next_lid = n,
            Err(e) => result = result.and(Err(e)),
        }
        drop(node);
        // Report each distinct failure once; a persistent one must not flood test output.
        match result {
            Err(e) if last_err.as_deref() != Some(&e.to_string()) => {
                eprintln!("railvf-sim: {e}");
                last_err = Some(e.to_string());
            }
            Err(_) => {}
            Ok(()) => last_err = None,
        }
    }
}
