//! VF health: the readiness checks of [`Check::HEALTH`] (`driver`, `rdma`, `link_layer`,
//! `port_state`), judged by `railvf_host::readiness` on just the attributes they need.
//!
//! sysfs attributes raise no inotify events, so health is polled. A poll reads, per VF,
//! the `driver` link and port 1's `state` of the RDMA device it found last time (the
//! directory is listed again when that device is gone, and on full reads); `phys_state`
//! and `link_layer` are read again when `state` or the PF changed, and in a slow round
//! robin. Two small reads per VF, no per-VF thread.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use railvf_host::attr::{ParseError, PhysState, PortState};
use railvf_host::host;
use railvf_host::inventory::{Attr, DRIVER_MLX5, Netdev, PciFunction, RdmaDevice, RdmaPort};
use railvf_host::readiness::{self, Check, Expectations, Readiness};
use railvf_host::{HostRoot, LinkLayer, PciAddr};

/// Port 1's health attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct PortObs {
    pub state: Attr<PortState>,
    pub phys_state: Attr<PhysState>,
    pub link_layer: Attr<LinkLayer>,
}

/// What one poll saw of a PCI function.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub driver: Option<String>,
    /// RDMA device visible in the host's view (`<fn>/infiniband/<name>`).
    pub rdma: Option<String>,
    pub port: Option<PortObs>,
    /// Whether a netdev is visible; only looked at when there is no RDMA device.
    pub netdev: bool,
}

impl Observation {
    /// A VF that is bound to mlx5_core but whose netdev and RDMA device are both gone
    /// from the host's view has been moved into a pod's network namespace: it is in use.
    /// Only while its PF (`pf`) shows an RDMA device: without mlx5_ib (not loaded, or its
    /// probe failed) an InfiniBand VF has neither either, as its netdev is IPoIB's, and is
    /// then broken, not in use.
    pub fn in_pod(&self, pf: Option<&Observation>) -> bool {
        in_pod_rule(
            self.driver.as_deref(),
            self.rdma.is_some(),
            self.netdev,
            pf.is_some_and(|p| p.rdma.is_some()),
        )
    }
}

/// [`Observation::in_pod`] on a function read in full (what `inspect` reads).
pub fn function_in_pod(vf: &PciFunction, pf: Option<&PciFunction>) -> bool {
    in_pod_rule(
        vf.driver.as_deref(),
        vf.rdma.is_some(),
        !vf.netdevs.is_empty(),
        pf.is_some_and(|p| p.rdma.is_some()),
    )
}

/// The one statement of the in-pod rule, so the poller and `inspect` cannot drift apart.
fn in_pod_rule(driver: Option<&str>, rdma: bool, netdev: bool, pf_rdma: bool) -> bool {
    driver == Some(DRIVER_MLX5) && !rdma && !netdev && pf_rdma
}

/// Health as kubelet sees it, with the reason when unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// The readiness checks that failed in a verdict (metrics report them one by one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FailedChecks(u8);

impl FailedChecks {
    fn bit(c: Check) -> u8 {
        let i = Check::ALL.iter().position(|x| *x == c).unwrap_or(0);
        1 << i
    }

    pub fn insert(&mut self, c: Check) {
        self.0 |= Self::bit(c);
    }

    pub fn contains(&self, c: Check) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Check> for FailedChecks {
    fn from_iter<I: IntoIterator<Item = Check>>(iter: I) -> Self {
        let mut f = FailedChecks::default();
        for c in iter {
            f.insert(c);
        }
        f
    }
}

/// Reads a small attribute with open/read/close only (no size probe, no second read when
/// the kernel's trailing newline is already there), relative to `dir` when given so the
/// kernel resolves one path component instead of twenty: at thousands of VFs per poll,
/// syscalls and path walks are the whole cost.
fn read_small<'b>(
    dir: Option<&OwnedFd>,
    path: &Path,
    name: &str,
    buf: &'b mut [u8; 256],
) -> std::io::Result<&'b str> {
    use std::io::Read;
    let mut f = match dir {
        Some(fd) => std::fs::File::from(
            openat(fd, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(std::io::Error::from)?,
        ),
        None => std::fs::File::open(path.join(name))?,
    };
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        n += r;
        if r == 0 || buf[n - 1] == b'\n' {
            break;
        }
    }
    std::str::from_utf8(&buf[..n])
        .map(|s| s.trim_end_matches(['\n', '\0']))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Opens a directory to read attributes relative to it. `None` (paths are used instead)
/// when it cannot be opened, e.g. when out of file descriptors.
fn open_dir(path: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

fn attr<T>(
    dir: Option<&OwnedFd>,
    path: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Attr<T> {
    let mut buf = [0u8; 256];
    match read_small(dir, path, name, &mut buf) {
        Ok(raw) => match parse(raw) {
            Ok(v) => Attr::Value(v),
            Err(error) => Attr::Invalid {
                path: path.join(name),
                error,
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Attr::Missing(path.join(name)),
        Err(e) => Attr::Invalid {
            error: ParseError {
                expected: "a readable attribute",
                found: e.to_string(),
            },
            path: path.join(name),
        },
    }
}

/// Port 1 of the function's RDMA device, with a directory descriptor kept open.
///
/// The descriptor is only a cache. When the driver is unbound the directory is deleted and
/// reads through it fail with ENOENT. When the device moves into a pod's network namespace
/// (`rdma system set netns exclusive`) the kernel does not delete its directory, it tags it
/// with the pod's namespace: it is no longer listed in the host's `<fn>/infiniband`, but
/// reads through this descriptor go on working. Only a listing tells, so full reads list
/// `<fn>/infiniband` too (see [`Probe::observe_with`]).
#[derive(Debug)]
struct Port {
    rdma: String,
    dir: PathBuf,
    fd: Option<KeptFd>,
}

impl Port {
    fn open(fn_path: &Path, fn_dir: Option<&OwnedFd>, rdma: String) -> Self {
        let rel = format!("infiniband/{rdma}/ports/1");
        let dir = fn_path.join(&rel);
        let fd = KeptFd::open(|| match fn_dir {
            Some(d) => openat(
                d,
                rel.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok(),
            None => open_dir(&dir),
        });
        Port { fd, dir, rdma }
    }

    fn read<T>(&self, name: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Attr<T> {
        attr(self.fd.as_ref().map(KeptFd::fd), &self.dir, name, parse)
    }

    fn read_rest(&self, state: Attr<PortState>) -> PortObs {
        PortObs {
            phys_state: self.read("phys_state", str::parse),
            link_layer: self.read("link_layer", str::parse),
            state,
        }
    }
}

/// Reads one PCI function's health attributes, remembering where they are.
#[derive(Debug)]
pub struct Probe {
    dir: PathBuf,
    driver: PathBuf,
    port: Option<Port>,
}

impl Probe {
    /// A probe of the function at `dir` (`<root>/sys/bus/pci/devices/<bdf>`).
    pub fn new(dir: PathBuf) -> Self {
        Probe {
            driver: dir.join("driver"),
            dir,
            port: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Observes the function. With `full == false`, a known RDMA device and a port
    /// `state` equal to `prev`'s, that one read is all: the RDMA device exists only while
    /// mlx5_core is bound, and the caller asks for a full read whenever the PF changed
    /// (and in a slow round robin). Any change in `state` reads everything. A full read
    /// also lists `<fn>/infiniband`, which is how a device moved into a pod is noticed
    /// (see [`Port`]).
    pub fn observe(&mut self, full: bool, prev: Option<&Observation>) -> Observation {
        self.observe_with(full, prev, None)
    }

    /// [`Probe::observe`], resolving names relative to `fn_dir` (an open descriptor of the
    /// function's directory) when given: the startup scan opens each VF directory once.
    pub fn observe_with(
        &mut self,
        full: bool,
        prev: Option<&Observation>,
        fn_dir: Option<&OwnedFd>,
    ) -> Observation {
        // `<fn>/infiniband` as a full read below listed it, for the first look's reuse.
        let mut listed = None;
        if let Some(port) = &self.port {
            // A device moved into a pod stays readable through the descriptor: only the
            // listing shows it left. A listing that fails (out of descriptors) proves
            // nothing, so the port is kept then.
            let moved = full
                && match list_first(fn_dir, &self.dir, "infiniband") {
                    Ok(now) => {
                        let moved = now.as_deref() != Some(port.rdma.as_str());
                        listed = Some(now);
                        moved
                    }
                    Err(()) => false,
                };
            let state = port.read("state", str::parse);
            if !moved && !matches!(state, Attr::Missing(_)) {
                if !full
                    && let Some(p) = prev
                    && p.rdma.as_deref() == Some(port.rdma.as_str())
                    && p.port.as_ref().is_some_and(|po| po.state == state)
                {
                    return p.clone();
                }
                return Observation {
                    driver: self.driver(fn_dir),
                    rdma: Some(port.rdma.clone()),
                    port: Some(port.read_rest(state)),
                    netdev: false,
                };
            }
        }
        // First look, or the RDMA device of last time is gone: list the directory (unless
        // the full read above just did).
        let driver = self.driver(fn_dir);
        // The old port's descriptor goes first, so that its slot under the cap is free for
        // the new one.
        self.port = None;
        self.port = listed
            .unwrap_or_else(|| first_entry(fn_dir, &self.dir, "infiniband"))
            .map(|name| Port::open(&self.dir, fn_dir, name));
        match &self.port {
            Some(port) => {
                let state = port.read("state", str::parse);
                let present = !matches!(state, Attr::Missing(_)) || port.fd.is_some();
                Observation {
                    driver,
                    rdma: Some(port.rdma.clone()),
                    port: present.then(|| port.read_rest(state)),
                    netdev: false,
                }
            }
            None => Observation {
                netdev: first_entry(fn_dir, &self.dir, "net").is_some(),
                driver,
                rdma: None,
                port: None,
            },
        }
    }

    fn driver(&self, fn_dir: Option<&OwnedFd>) -> Option<String> {
        match fn_dir {
            Some(fd) => nix::fcntl::readlinkat(fd, "driver").ok().and_then(|t| {
                Path::new(&t)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
            }),
            None => host::link_basename(&self.driver).ok().flatten(),
        }
    }
}

/// The first entry (in name order) of `<dir>/<sub>`, `None` when absent, empty or
/// unreadable.
pub fn first_entry(fd: Option<&OwnedFd>, dir: &Path, sub: &str) -> Option<String> {
    list_first(fd, dir, sub).ok().flatten()
}

/// Every entry of `<dir>/<sub>`, in name order; empty when absent or unreadable.
pub fn entries(fd: Option<&OwnedFd>, dir: &Path, sub: &str) -> Vec<String> {
    let mut v = list(fd, dir, sub).unwrap_or_default();
    v.sort_unstable();
    v
}

/// [`first_entry`], with `Err` when `<dir>/<sub>` exists but cannot be listed.
fn list_first(fd: Option<&OwnedFd>, dir: &Path, sub: &str) -> Result<Option<String>, ()> {
    list(fd, dir, sub).map(|v| v.into_iter().min())
}

/// The entries of `<dir>/<sub>` (relative to `fd` when there is one), in no order; empty
/// when absent, `Err` when it exists but cannot be listed.
fn list(fd: Option<&OwnedFd>, dir: &Path, sub: &str) -> Result<Vec<String>, ()> {
    match fd {
        Some(fd) => {
            let mut d = match nix::dir::Dir::openat(
                fd,
                sub,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(d) => d,
                Err(nix::errno::Errno::ENOENT) => return Ok(Vec::new()),
                Err(_) => return Err(()),
            };
            Ok(d.iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
                .filter(|n| n != "." && n != "..")
                .collect())
        }
        None => host::list_dir(&dir.join(sub)).map_err(|_| ()),
    }
}

/// An attribute below `dir` (relative to `fd` when there is one), parsed; `None` when it
/// is missing, unreadable or does not parse.
pub fn read_attr<T>(
    fd: Option<&OwnedFd>,
    dir: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Option<T> {
    match attr(fd, dir, name, parse) {
        Attr::Value(v) => Some(v),
        _ => None,
    }
}

/// Opens the function directory `dir` (see [`Probe::observe_with`]).
pub fn open_function_dir(dir: &Path) -> Option<OwnedFd> {
    open_dir(dir)
}

/// Reads the function's `numa_node` (`None` for -1 or when unreadable).
pub fn read_numa(fn_dir: Option<&OwnedFd>, dir: &Path) -> Option<u32> {
    attr(fn_dir, dir, "numa_node", railvf_host::attr::parse_numa_node)
        .value()
        .copied()
        .flatten()
}

/// Observes the function at `dir` once (a full read).
pub fn observe(dir: &Path) -> Observation {
    Probe::new(dir.to_path_buf()).observe(true, None)
}

/// Descriptors the rest of the process may need beside the ones probes keep: the async
/// runtime, gRPC listeners and kubelet's connections, the metrics endpoint, inotify,
/// directory listings, device-info and config files.
pub const FD_HEADROOM: u64 = 256;

/// How many descriptors probes keep open now, and how many they may keep.
static KEPT: AtomicUsize = AtomicUsize::new(0);
static KEPT_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Raises the soft open-file limit to the hard one and caps the descriptors probes keep
/// at that limit less [`FD_HEADROOM`], so that a node with more VFs than the limit allows
/// polls the rest by path instead of starving the gRPC server of sockets. Returns the
/// limit now in force; `None` (and no cap) when it cannot be read.
pub fn reserve_fd_headroom() -> Option<u64> {
    let limit = raise_fd_limit()?;
    let cap = usize::try_from(limit.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX);
    KEPT_CAP.store(cap, Ordering::Relaxed);
    Some(limit)
}

/// The number of descriptors probes keep open now.
pub fn kept_descriptors() -> usize {
    KEPT.load(Ordering::Relaxed)
}

/// A directory descriptor a probe keeps between polls, counted against the cap that
/// [`reserve_fd_headroom`] sets. Descriptors are a process-wide resource, hence the
/// process-wide count.
#[derive(Debug)]
struct KeptFd(OwnedFd);

impl KeptFd {
    /// Takes a slot under the cap and opens; `None` (reads go by path) when the cap is
    /// reached or the open fails.
    fn open(open: impl FnOnce() -> Option<OwnedFd>) -> Option<KeptFd> {
        let cap = KEPT_CAP.load(Ordering::Relaxed);
        KEPT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < cap).then_some(n + 1)
        })
        .ok()?;
        match open() {
            Some(fd) => Some(KeptFd(fd)),
            None => {
                KEPT.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn fd(&self) -> &OwnedFd {
        &self.0
    }
}

impl Drop for KeptFd {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one: the poller keeps one directory
/// descriptor per VF. Returns the limit now in force, `None` when it cannot be read.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        Some(hard)
    } else {
        Some(soft)
    }
}

/// A [`PciFunction`] holding only what the health checks read, so the verdict and its
/// wording are exactly `railvf_host::readiness`'s.
fn function_for(addr: PciAddr, obs: &Observation) -> PciFunction {
    fn missing<T>(what: &str) -> Attr<T> {
        Attr::Missing(PathBuf::from(what))
    }
    PciFunction {
        addr,
        vendor: 0,
        device: 0,
        class: 0,
        driver: obs.driver.clone(),
        numa_node: None,
        netdevs: if obs.netdev {
            vec![Netdev {
                name: String::new(),
                ifindex: missing("ifindex"),
            }]
        } else {
            Vec::new()
        },
        rdma: obs.rdma.as_ref().map(|name| RdmaDevice {
            name: name.clone(),
            node_guid: missing("node_guid"),
            ports: obs
                .port
                .iter()
                .map(|p| RdmaPort {
                    port: 1,
                    state: p.state.clone(),
                    phys_state: p.phys_state.clone(),
                    lid: missing("lid"),
                    sm_lid: missing("sm_lid"),
                    link_layer: p.link_layer.clone(),
                    rate: missing("rate"),
                    gid0: missing("gids/0"),
                })
                .collect(),
        }),
        uverbs: None,
        physfn: None,
        sysfs_path: PathBuf::new(),
    }
}

/// Judges a VF by [`vf_readiness`] on [`Check::HEALTH`].
pub fn judge(
    root: &HostRoot,
    addr: PciAddr,
    obs: &Observation,
    pf: Option<(PciAddr, &Observation)>,
    exp: &Expectations,
) -> Health {
    judge_checks(root, addr, obs, pf, exp).0
}

/// [`judge`], with the set of checks that failed (a VF in a pod can fail `driver`, and
/// its PF's `link_layer` / `port_state`).
pub fn judge_checks(
    root: &HostRoot,
    addr: PciAddr,
    obs: &Observation,
    pf: Option<(PciAddr, &Observation)>,
    exp: &Expectations,
) -> (Health, FailedChecks) {
    let pf = pf.map(|(a, o)| function_for(a, o));
    let readiness = vf_readiness(
        root,
        &function_for(addr, obs),
        pf.as_ref(),
        exp,
        &Check::HEALTH,
    )
    .readiness;
    let failed = readiness.failures().map(|o| o.check).collect();
    if readiness.is_ready() {
        (Health::Healthy, failed)
    } else {
        (Health::Unhealthy(readiness.failure_summary()), failed)
    }
}

/// A VF's readiness as the device plugin judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfReadiness {
    /// One outcome per check asked for, in that order.
    pub readiness: Readiness,
    /// In a pod's network namespace ([`function_in_pod`]): in use, not broken.
    pub in_pod: bool,
}

/// Evaluates `checks` on the VF `vf` of the PF `pf` by the device plugin's rules; the
/// poller (on [`Check::HEALTH`]) and `inspect` (on [`Check::ALL`]) both judge this way.
///
/// A VF in a pod keeps its own `driver` (and `ownership`, skipped without a netdev in the
/// host) and borrows its PF's port for `link_layer` and `port_state` (a VF's port follows
/// its PF's); the checks that need its own RDMA device are skipped, as that device is out
/// of sight: it is in use, not broken.
///
/// A RoCE VF in the host borrows its PF's `port_state` too. mlx5 reports a RoCE port
/// ACTIVE only while its netdev runs with carrier (`mlx5_query_port_roce`), and a free VF's
/// netdev is down in the host until the CNI brings it up in a pod: its own port reads
/// `1: DOWN` / `3: Disabled` while the link it will use is fine.
pub fn vf_readiness(
    root: &HostRoot,
    vf: &PciFunction,
    pf: Option<&PciFunction>,
    exp: &Expectations,
    checks: &[Check],
) -> VfReadiness {
    let in_pod = function_in_pod(vf, pf);
    // The PF, when it shows an RDMA device whose port can stand in for the VF's (always
    // so for a VF in a pod).
    let pf_port = pf.filter(|p| p.rdma.is_some());
    let from_pf: &[Check] = match pf_port {
        Some(_) if in_pod => &[Check::LinkLayer, Check::PortState],
        Some(_) if exp.link_layer == LinkLayer::Ethernet => &[Check::PortState],
        _ => &[],
    };
    // Checks that read the VF's own RDMA device, which a VF in a pod has out of sight.
    let out_of_sight =
        |c: &Check| in_pod && matches!(c, Check::Rdma | Check::Guid | Check::Lid | Check::Sm);
    let own: Vec<Check> = checks
        .iter()
        .copied()
        .filter(|c| !from_pf.contains(c) && !out_of_sight(c))
        .collect();
    let mut r = readiness::evaluate(root, vf, exp, &own);
    for c in checks.iter().filter(|c| out_of_sight(c)) {
        r.outcomes.push(readiness::skipped(
            *c,
            "the VF is in a pod's network namespace: its RDMA device is not visible from the host",
            exp,
        ));
    }
    if let Some(pf) = pf_port {
        let borrowed: Vec<Check> = checks
            .iter()
            .copied()
            .filter(|c| from_pf.contains(c))
            .collect();
        borrow_pf(root, &mut r, pf, exp, &borrowed);
    }
    r.outcomes
        .sort_by_key(|o| checks.iter().position(|c| *c == o.check));
    VfReadiness {
        readiness: r,
        in_pod,
    }
}

/// Adds the PF's outcomes of `checks` to a VF's readiness, each saying it is the PF's.
fn borrow_pf(
    root: &HostRoot,
    r: &mut Readiness,
    pf: &PciFunction,
    exp: &Expectations,
    checks: &[Check],
) {
    if checks.is_empty() {
        return;
    }
    let pf_r = readiness::evaluate(root, pf, exp, checks);
    for mut o in pf_r.outcomes {
        o.observed = format!("PF {} {}", pf.addr, o.observed);
        r.outcomes.push(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    fn vf_dir(root: &Path) -> PathBuf {
        function_dir(root, "0000:18:00.1", "mlx5_12", "ibp24s0v0")
    }

    /// A function bound to mlx5_core with RDMA device `ib` (port ACTIVE, InfiniBand) and
    /// netdev `net`.
    fn function_dir(root: &Path, addr: &str, ib: &str, net: &str) -> PathBuf {
        let d = root.join("sys/bus/pci/devices").join(addr);
        std::fs::create_dir_all(root.join("sys/bus/pci/drivers/mlx5_core")).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(root.join("sys/bus/pci/drivers/mlx5_core"), d.join("driver"))
            .unwrap();
        let port = d.join("infiniband").join(ib).join("ports/1");
        write(&port.join("state"), "4: ACTIVE\n");
        write(&port.join("phys_state"), "5: LinkUp\n");
        write(&port.join("link_layer"), "InfiniBand\n");
        std::fs::create_dir_all(d.join("net").join(net)).unwrap();
        d
    }

    #[test]
    fn healthy_then_each_check_fails_with_its_name() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let d = vf_dir(t.path());
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let exp = Expectations::default();
        let mut probe = Probe::new(d.clone());
        let o = probe.observe(true, None);
        assert_eq!(o.rdma.as_deref(), Some("mlx5_12"));
        assert_eq!(judge(&root, addr, &o, None, &exp), Health::Healthy);
        // A quick read sees a state change, and the full read that follows the rest.
        let port = d.join("infiniband/mlx5_12/ports/1");
        write(&port.join("state"), "1: DOWN\n");
        write(&port.join("phys_state"), "3: Disabled\n");
        let quick = probe.observe(false, Some(&o));
        assert_ne!(quick, o);
        let again = probe.observe(true, Some(&quick));
        assert!(
            again
                .port
                .as_ref()
                .unwrap()
                .phys_state
                .value()
                .unwrap()
                .code
                == 3
        );
        write(&port.join("phys_state"), "5: LinkUp\n");
        write(&port.join("state"), "4: ACTIVE\n");

        write(&port.join("state"), "1: DOWN\n");
        let (_, failed) = judge_checks(&root, addr, &observe(&d), None, &exp);
        assert!(failed.contains(Check::PortState) && !failed.contains(Check::Driver));
        let Health::Unhealthy(why) = judge(&root, addr, &observe(&d), None, &exp) else {
            panic!("port down must be unhealthy")
        };
        assert!(
            why.contains("port_state") && why.contains("1: DOWN"),
            "{why}"
        );
        write(&port.join("state"), "4: ACTIVE\n");
        write(&port.join("link_layer"), "Ethernet\n");
        let Health::Unhealthy(why) = judge(&root, addr, &observe(&d), None, &exp) else {
            panic!("link layer flip must be unhealthy")
        };
        assert!(why.contains("link_layer"), "{why}");
        write(&port.join("link_layer"), "InfiniBand\n");
        std::fs::remove_file(d.join("driver")).unwrap();
        let Health::Unhealthy(why) = judge(&root, addr, &observe(&d), None, &exp) else {
            panic!("unbound must be unhealthy")
        };
        assert!(why.contains("driver"), "{why}");
    }

    #[test]
    fn a_free_roce_vf_whose_netdev_is_down_is_judged_by_its_pfs_port() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let exp = Expectations {
            link_layer: LinkLayer::Ethernet,
            ..Expectations::default()
        };
        let d = function_dir(t.path(), "0000:18:00.1", "mlx5_12", "ens24f0v0");
        let pf_d = function_dir(t.path(), "0000:18:00.0", "mlx5_0", "ens24f0np0");
        // What mlx5 shows for a RoCE VF whose netdev is down in the host.
        let port = d.join("infiniband/mlx5_12/ports/1");
        write(&port.join("link_layer"), "Ethernet\n");
        write(&port.join("state"), "1: DOWN\n");
        write(&port.join("phys_state"), "3: Disabled\n");
        let pf_port = pf_d.join("infiniband/mlx5_0/ports/1");
        write(&pf_port.join("link_layer"), "Ethernet\n");
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let pf_addr: PciAddr = "0000:18:00.0".parse().unwrap();
        let o = observe(&d);
        let pf_obs = observe(&pf_d);
        assert!(!o.in_pod(Some(&pf_obs)), "{o:?}");
        assert_eq!(
            judge(&root, addr, &o, Some((pf_addr, &pf_obs)), &exp),
            Health::Healthy
        );
        // The PF's port going down is the VF's port going down.
        write(&pf_port.join("state"), "1: DOWN\n");
        let pf_obs = observe(&pf_d);
        let Health::Unhealthy(why) = judge(&root, addr, &o, Some((pf_addr, &pf_obs)), &exp) else {
            panic!("a RoCE VF whose PF port is down must be unhealthy")
        };
        assert!(
            why.contains("port_state") && why.contains("PF 0000:18:00.0"),
            "{why}"
        );
        // Its own checks still count: the VF's port running InfiniBand is a link-layer fault.
        write(&pf_port.join("state"), "4: ACTIVE\n");
        let pf_obs = observe(&pf_d);
        write(&port.join("link_layer"), "InfiniBand\n");
        let Health::Unhealthy(why) =
            judge(&root, addr, &observe(&d), Some((pf_addr, &pf_obs)), &exp)
        else {
            panic!("a VF on the wrong link layer must be unhealthy")
        };
        assert!(why.contains("link_layer"), "{why}");
        // An InfiniBand VF keeps its own port: IB ports do not follow the netdev.
        let ib_d = function_dir(t.path(), "0000:19:00.1", "mlx5_13", "ibp25s0v0");
        let ib_port = ib_d.join("infiniband/mlx5_13/ports/1");
        write(&ib_port.join("state"), "1: DOWN\n");
        let ib_pf = observe(&function_dir(t.path(), "0000:19:00.0", "mlx5_1", "ibp25s0"));
        let ib_pf_addr: PciAddr = "0000:19:00.0".parse().unwrap();
        assert!(
            !judge(
                &root,
                "0000:19:00.1".parse().unwrap(),
                &observe(&ib_d),
                Some((ib_pf_addr, &ib_pf)),
                &Expectations::default()
            )
            .is_healthy()
        );
    }

    /// Moves the VF's RDMA device and netdev into a "pod" the way the kernel does: their
    /// directories leave `<fn>/infiniband` and `<fn>/net` but are not deleted, so
    /// descriptors opened on them still read (here: renamed to `pod`, outside `<fn>`).
    fn move_to_pod(d: &Path, pod: &Path) {
        std::fs::create_dir_all(pod).unwrap();
        for sub in ["infiniband", "net"] {
            for e in std::fs::read_dir(d.join(sub)).unwrap() {
                let e = e.unwrap();
                std::fs::rename(e.path(), pod.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn a_vf_in_a_pod_is_in_use_not_unhealthy() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let d = vf_dir(t.path());
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let mut probe = Probe::new(d.clone());
        let before = probe.observe(true, None);
        move_to_pod(&d, &t.path().join("pod"));
        let o = probe.observe(true, Some(&before));
        let pf_addr: PciAddr = "0000:18:00.0".parse().unwrap();
        let pf_obs = Probe::new(function_dir(t.path(), "0000:18:00.0", "mlx5_0", "ibp24s0"))
            .observe(true, None);
        let pf = Some((pf_addr, &pf_obs));
        assert!(o.in_pod(Some(&pf_obs)), "{o:?}");
        assert_eq!(
            judge(&root, addr, &o, pf, &Expectations::default()),
            Health::Healthy
        );
        // Without an RDMA device but with its netdev, the VF lacks mlx5_ib: unhealthy.
        std::fs::create_dir_all(d.join("net/ibp24s0v0")).unwrap();
        let o = probe.observe(false, Some(&o));
        assert!(!o.in_pod(Some(&pf_obs)));
        assert!(!judge(&root, addr, &o, pf, &Expectations::default()).is_healthy());
    }

    /// The kernel keeps a moved RDMA device's directory (re-tagged with the pod's
    /// namespace): reads through the probe's open descriptor still succeed, only the
    /// listing of `<fn>/infiniband` shows the move. A full read must see it, with or
    /// without a descriptor of the function's directory; a cheap read stays one read.
    #[test]
    fn an_rdma_device_moved_into_a_pod_is_noticed_by_the_next_full_read() {
        let t = tempfile::tempdir().unwrap();
        let d = vf_dir(t.path());
        let pf_obs = Probe::new(function_dir(t.path(), "0000:18:00.0", "mlx5_0", "ibp24s0"))
            .observe(true, None);
        let fn_dir = open_function_dir(&d).unwrap();
        let mut by_path = Probe::new(d.clone());
        let mut by_fd = Probe::new(d.clone());
        let before = by_path.observe(true, None);
        assert_eq!(by_fd.observe_with(true, None, Some(&fn_dir)), before);
        assert_eq!(before.rdma.as_deref(), Some("mlx5_12"));

        let pod = t.path().join("pod");
        move_to_pod(&d, &pod);
        assert!(
            pod.join("mlx5_12/ports/1/state").exists(),
            "the model keeps the directory"
        );
        // Cheap read: one read through the descriptor, which still works.
        assert_eq!(by_path.observe(false, Some(&before)), before);
        for o in [
            by_path.observe(true, Some(&before)),
            by_fd.observe_with(true, Some(&before), Some(&fn_dir)),
        ] {
            assert_eq!(o.rdma, None, "{o:?}");
            assert!(o.in_pod(Some(&pf_obs)), "{o:?}");
        }

        // Back in the host (CNI DEL): seen again at the next read, cheap or full.
        for e in std::fs::read_dir(&pod).unwrap() {
            let e = e.unwrap();
            let sub = if e.file_name() == "mlx5_12" {
                "infiniband"
            } else {
                "net"
            };
            std::fs::rename(e.path(), d.join(sub).join(e.file_name())).unwrap();
        }
        assert_eq!(by_path.observe(false, None), before);
        assert_eq!(by_fd.observe_with(true, None, Some(&fn_dir)), before);
    }

    #[test]
    fn an_ib_vf_without_mlx5_ib_is_unhealthy_not_in_a_pod() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let d = vf_dir(t.path());
        let addr: PciAddr = "0000:18:00.1".parse().unwrap();
        let pf_addr: PciAddr = "0000:18:00.0".parse().unwrap();
        let pf_dir = function_dir(t.path(), "0000:18:00.0", "mlx5_0", "ibp24s0");
        // mlx5_ib not loaded: no RDMA device anywhere, and no IPoIB netdev either.
        for f in [&d, &pf_dir] {
            std::fs::remove_dir_all(f.join("infiniband")).unwrap();
            std::fs::remove_dir_all(f.join("net")).unwrap();
        }
        let pf_obs = Probe::new(pf_dir).observe(true, None);
        let o = Probe::new(d).observe(true, None);
        assert!(!o.in_pod(Some(&pf_obs)), "{o:?}");
        let (h, failed) = judge_checks(
            &root,
            addr,
            &o,
            Some((pf_addr, &pf_obs)),
            &Expectations::default(),
        );
        let Health::Unhealthy(why) = h else {
            panic!("no RDMA device anywhere, yet healthy");
        };
        assert!(why.contains("rdma"), "{why}");
        assert!(failed.contains(Check::Rdma), "{failed:?}");
    }
}
