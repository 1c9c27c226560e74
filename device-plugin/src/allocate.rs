//! `GetPreferredAllocation` (rail-aware) and `Allocate` (what a container gets).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use railvf_host::devinfo::dp_file;
use railvf_host::{HostRoot, PciAddr};

use crate::devinfo;

use crate::health;
use crate::pool::DeviceSet;

/// Why a request cannot be answered. Each maps to a gRPC status in `service`.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The request itself is wrong (kubelet bug, tampering, or a stale device list).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is fine but the host is not (missing device node, VF in use).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

/// An ID as messages and logs show it: its first 64 characters, quoted (a hostile ID is
/// cut short: it goes into the gRPC status, a header, and into log lines).
pub fn shown(id: &str) -> String {
    let mut s: String = id.chars().take(64).collect();
    if s.len() < id.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// How many IDs a log line lists before it says how many more there are.
const LOGGED_IDS: usize = 64;

/// A list of IDs for a log line, comma-separated: kubelet's IDs as they are, a hostile one
/// cut short as [`shown`] cuts it, at most [`LOGGED_IDS`] of them (a request can hold
/// millions, and the log must not grow by megabytes per call).
pub fn logged_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut n = 0usize;
    for id in ids {
        n += 1;
        if n > LOGGED_IDS {
            continue;
        }
        if n > 1 {
            out.push(',');
        }
        if id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            out.push_str(id);
        } else {
            out.push_str(&shown(id));
        }
    }
    if n > LOGGED_IDS {
        out.push_str(&format!(" and {} more", n - LOGGED_IDS));
    }
    out
}

fn parse_id(id: &str, devices: &DeviceSet, resource: &str) -> Result<PciAddr, AllocError> {
    let addr: PciAddr = id.parse().map_err(|e| {
        AllocError::InvalidArgument(format!(
            "device ID {} is not a {resource} device: {e}",
            shown(id)
        ))
    })?;
    if !devices.devices.contains_key(&addr) {
        return Err(AllocError::InvalidArgument(format!(
            "device ID {} is not a {resource} device on this node",
            shown(id)
        )));
    }
    Ok(addr)
}

/// Parses a list of IDs: each known, none repeated.
fn parse_ids(
    ids: &[String],
    devices: &DeviceSet,
    resource: &str,
    what: &str,
) -> Result<Vec<PciAddr>, AllocError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let a = parse_id(id, devices, resource)?;
        if !seen.insert(a) {
            return Err(AllocError::InvalidArgument(format!(
                "device ID {} appears twice in {what}",
                shown(id)
            )));
        }
        out.push(a);
    }
    Ok(out)
}

/// At most this many left-out IDs are named in a message or log line.
const SHOWN_IDS: usize = 8;

/// IDs left out of a request, for one message: how many, and the first few as shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeftOut {
    pub count: usize,
    pub first: Vec<String>,
}

impl LeftOut {
    fn push(&mut self, id: &str) {
        self.count += 1;
        if self.first.len() < SHOWN_IDS {
            self.first.push(shown(id));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.first.join(", "))?;
        if self.count > self.first.len() {
            write!(f, " and {} more", self.count - self.first.len())?;
        }
        Ok(())
    }
}

/// The answer of [`preferred`] for one container, with what it did not take as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preferred {
    /// The devices to allocate: the must-include IDs as given, then the picks.
    pub ids: Vec<String>,
    /// `available_deviceIDs` that are not devices of the resource on this node (malformed,
    /// or gone since kubelet last read the list): left out.
    pub unknown_available: LeftOut,
    /// `must_include_deviceIDs` that are not devices of the resource: kept in the answer
    /// as given (kubelet requires them; `Allocate` will refuse them).
    pub unknown_must: LeftOut,
    /// IDs listed more than once (in either list): taken once.
    pub repeated: usize,
}

/// The preferred devices for one container: `must` first, then, one at a time, the
/// candidate that (1) adds a rail not yet used, (2) sits on a NUMA node already used,
/// (3) is on the PF with the fewest devices already chosen, then the fewest of its devices
/// in use elsewhere, (4) has the lowest PCI address — so the answer is deterministic.
/// The first free pick prefers the NUMA node offering the most distinct rails.
///
/// The call is advisory, and kubelet fails the pod's admission on any error: IDs this
/// plugin does not have (kubelet's list is older than the plugin's) are left out of
/// `available` or passed through from `must`, repeated IDs are taken once. Only what
/// cannot be answered at all is refused: a size below 1, more must-include devices than
/// the size, or a size larger than the devices there are to choose from.
pub fn preferred(
    devices: &DeviceSet,
    resource: &str,
    available: &[String],
    must: &[String],
    size: i32,
) -> Result<Preferred, AllocError> {
    if size <= 0 {
        return Err(AllocError::InvalidArgument(format!(
            "allocation_size {size} must be at least 1"
        )));
    }
    let size = size as usize;
    let mut out = Preferred::default();
    let known = |id: &str| {
        id.parse::<PciAddr>()
            .ok()
            .filter(|a| devices.devices.contains_key(a))
    };
    // Must-include IDs, once each, in the order given; the known ones also as addresses.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut must_ids: Vec<&str> = Vec::with_capacity(must.len());
    let mut must_known: BTreeSet<PciAddr> = BTreeSet::new();
    for id in must {
        if !seen.insert(id.as_str()) {
            out.repeated += 1;
            continue;
        }
        match known(id) {
            // Another spelling of an address already listed.
            Some(a) if !must_known.insert(a) => out.repeated += 1,
            Some(_) => must_ids.push(id),
            None => {
                out.unknown_must.push(id);
                must_ids.push(id);
            }
        }
    }
    if must_ids.len() > size {
        return Err(AllocError::InvalidArgument(format!(
            "{} must-include devices do not fit in allocation_size {size}",
            must_ids.len()
        )));
    }
    // Repeats found by address (thousands of IDs: no set of strings besides).
    let mut avail_set: BTreeSet<PciAddr> = BTreeSet::new();
    for id in available {
        match known(id) {
            Some(a) if !avail_set.insert(a) => out.repeated += 1,
            Some(_) => {}
            None => out.unknown_available.push(id),
        }
    }
    let choosable = avail_set.difference(&must_known).count();
    if size > must_ids.len() + choosable {
        let mut m = format!(
            "allocation_size {size} is more than the {} devices there are to choose from ({} available, {} must-include)",
            must_ids.len() + choosable,
            avail_set.len(),
            must_ids.len()
        );
        if !out.unknown_available.is_empty() {
            m.push_str(&format!(
                "; {} available_deviceIDs are not {resource} devices on this node and were left out: {} (kubelet's device list is older than the plugin's; it gets the new one on ListAndWatch)",
                out.unknown_available.count, out.unknown_available
            ));
        }
        return Err(AllocError::InvalidArgument(m));
    }
    // Flatten what the ranking needs into vectors once: the pick loop below then runs on
    // plain indices (thousands of candidates, no map lookups per comparison).
    let mut pf_index: BTreeMap<PciAddr, usize> = BTreeMap::new();
    let mut pf_total: Vec<usize> = Vec::new();
    for d in devices.devices.values() {
        let n = pf_index.len();
        let i = *pf_index.entry(d.pf).or_insert(n);
        if i == pf_total.len() {
            pf_total.push(0);
        }
        pf_total[i] += 1;
    }
    struct Cand {
        addr: PciAddr,
        rail: Option<u32>,
        numa: Option<u32>,
        pf: usize,
        /// Still in a pod's netns (kubelet thinks it free: a DEL that failed, a lost
        /// checkpoint), or Unhealthy before kubelet has heard so from ListAndWatch:
        /// Allocate would refuse it, so it is picked last.
        refused: bool,
    }
    // Known must-include devices are candidates too (taken first below), even when kubelet
    // did not also list them as available.
    let cands: Vec<Cand> = avail_set
        .union(&must_known)
        .map(|a| {
            let d = &devices.devices[a];
            Cand {
                addr: *a,
                rail: d.rail,
                numa: d.numa,
                pf: pf_index[&d.pf],
                refused: d.in_pod || !d.health.is_healthy(),
            }
        })
        .collect();
    let mut pf_free = vec![0usize; pf_total.len()];
    for a in &avail_set {
        pf_free[pf_index[&devices.devices[a].pf]] += 1;
    }
    struct Picks {
        taken: Vec<bool>,
        pf_chosen: Vec<usize>,
        rails: BTreeSet<u32>,
        numas: BTreeSet<u32>,
        chosen: Vec<PciAddr>,
    }
    impl Picks {
        fn take(&mut self, i: usize, c: &Cand) {
            self.taken[i] = true;
            self.rails.extend(c.rail);
            self.numas.extend(c.numa);
            self.pf_chosen[c.pf] += 1;
            self.chosen.push(c.addr);
        }
    }
    let mut p = Picks {
        taken: vec![false; cands.len()],
        pf_chosen: vec![0; pf_total.len()],
        rails: BTreeSet::new(),
        numas: BTreeSet::new(),
        chosen: Vec::with_capacity(size),
    };
    for m in &must_known {
        let i = cands
            .binary_search_by(|c| c.addr.cmp(m))
            .map_err(|_| AllocError::Internal(format!("{m} vanished")))?;
        p.take(i, &cands[i]);
    }
    // The must-include IDs stand for themselves in the answer, as given.
    let picks_from = p.chosen.len();
    let wanted = size - (must_ids.len() - must_known.len());
    // With nothing chosen yet, start on the NUMA node with the most distinct rails free
    // (ties: more devices, then the lower node), so a small request can stay on one node.
    // Candidates Allocate would refuse are picked last, so they do not count here.
    let seed_numa = if p.numas.is_empty() {
        let mut per_numa: BTreeMap<u32, (BTreeSet<u32>, usize)> = BTreeMap::new();
        for c in cands.iter().filter(|c| !c.refused) {
            if let Some(n) = c.numa {
                let e = per_numa.entry(n).or_default();
                if let Some(r) = c.rail {
                    e.0.insert(r);
                }
                e.1 += 1;
            }
        }
        per_numa
            .iter()
            .max_by(|x, y| {
                (x.1.0.len(), x.1.1)
                    .cmp(&(y.1.0.len(), y.1.1))
                    .then(y.0.cmp(x.0))
            })
            .map(|(n, _)| *n)
    } else {
        None
    };
    while p.chosen.len() < wanted {
        let best = cands
            .iter()
            .enumerate()
            .filter(|(i, _)| !p.taken[*i])
            .min_by_key(|(_, c)| {
                let rail_rank = match c.rail {
                    Some(r) if !p.rails.contains(&r) => 0u8,
                    None => 1,
                    Some(_) => 2,
                };
                let numa_rank = match c.numa {
                    Some(n) if p.numas.contains(&n) || seed_numa == Some(n) => 0u8,
                    None if p.numas.is_empty() && seed_numa.is_none() => 0,
                    _ => 1,
                };
                (
                    c.refused,
                    rail_rank,
                    numa_rank,
                    p.pf_chosen[c.pf],
                    pf_total[c.pf] - pf_free[c.pf],
                    c.addr,
                )
            })
            .map(|(i, _)| i)
            .ok_or_else(|| AllocError::Internal("ran out of candidates".into()))?;
        p.take(best, &cands[best]);
    }
    out.ids = must_ids.iter().map(|s| s.to_string()).collect();
    out.ids
        .extend(p.chosen[picks_from..].iter().map(ToString::to_string));
    Ok(out)
}

/// The env variable sriov-network-device-plugin sets: `PCIDEVICE_` + the full resource
/// name upper-cased, with every character but letters, digits and `_` replaced by `_`.
/// sriov-dp replaces only `.` and `/`, the same for the names it accepts (`[A-Za-z0-9_]`);
/// a `-`, which railvf accepts, would give a name a shell cannot read (bash takes
/// `${A-B}` for "A, or B if unset"; dash drops such variables).
pub fn pci_env_name(full_resource: &str) -> String {
    let r: String = full_resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PCIDEVICE_{r}")
}

/// The per-resource variable holding the VFs' RDMA device names: [`pci_env_name`] + `_RDMA`.
pub fn rdma_env_name(full_resource: &str) -> String {
    format!("{}_RDMA", pci_env_name(full_resource))
}

/// Path of the RDMA connection manager device, the same for every VF.
pub const RDMA_CM: &str = "/dev/infiniband/rdma_cm";

/// One container's allocation, before it becomes protobuf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerAlloc {
    pub envs: BTreeMap<String, String>,
    /// `/dev/infiniband/...` paths, as both host and container path, `rw`.
    pub devices: Vec<String>,
    /// Device-info files written.
    pub devinfo_files: Vec<PathBuf>,
    /// Each VF with its character devices (uverbs first), in PCI order: what a CDI answer
    /// names.
    pub vfs: Vec<(PciAddr, Vec<CharDev>)>,
}

/// A character device of a VF below `/dev/infiniband/`: the sysfs directory of the VF
/// that lists it (its class) and its name there, which is also the node's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharDev {
    pub class: &'static str,
    pub name: String,
}

/// The VF's sysfs directory listing its uverbs node.
pub const VERBS_CLASS: &str = "infiniband_verbs";
/// The VF's sysfs directory listing its management datagram nodes (`umadN`, `issmN`).
pub const MAD_CLASS: &str = "infiniband_mad";

impl CharDev {
    pub fn uverbs(name: String) -> Self {
        CharDev {
            class: VERBS_CLASS,
            name,
        }
    }

    /// The node's path on the host and in the container.
    pub fn path(&self) -> String {
        format!("/dev/infiniband/{}", self.name)
    }

    /// Its sysfs `dev` attribute (`major:minor`), relative to the VF's directory.
    pub fn dev_attr(&self) -> String {
        format!("{}/{}/dev", self.class, self.name)
    }
}

/// Whether `name` is `<prefix>` and a number: the only names taken from sysfs listings,
/// since each becomes a path below `/dev/infiniband`.
fn is_node_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is one of the VF nodes a container is given (`uverbsN`, `umadN`, `issmN`).
pub(crate) fn is_vf_node_name(name: &str) -> bool {
    ["uverbs", "umad", "issm"]
        .iter()
        .any(|p| is_node_name(name, p))
}

/// A VF's uverbs node (`uverbsN`) as `ib_uverbs` lists it in the VF's directory `dir`
/// (opened as `fd`, if it could be); `None` without one.
pub(crate) fn uverbs_of(fd: Option<&OwnedFd>, dir: &Path) -> Option<String> {
    health::first_entry(fd, dir, VERBS_CLASS).filter(|n| is_node_name(n, "uverbs"))
}

/// A VF's management datagram devices (`umadN` for its port, `issmN` beside it), as
/// `ib_umad` lists them in the VF's directory `dir` (opened as `fd`, if it could be);
/// empty when `ib_umad` is not loaded.
pub(crate) fn mad_of(fd: Option<&OwnedFd>, dir: &Path) -> Vec<CharDev> {
    health::entries(fd, dir, MAD_CLASS)
        .into_iter()
        .filter(|n| is_node_name(n, "umad") || is_node_name(n, "issm"))
        .map(|name| CharDev {
            class: MAD_CLASS,
            name,
        })
        .collect()
}

/// A VF's RDMA device alone, for a reader that needs no uverbs node: one listing.
pub(crate) fn rdma_device_of(root: &HostRoot, addr: &PciAddr) -> Option<String> {
    health::first_entry(None, &root.pci_device(addr), "infiniband")
}

/// Answers one container request. `max` is the most devices a container may ask for.
pub fn allocate_container(
    root: &HostRoot,
    devices: &DeviceSet,
    resource: &str,
    ids: &[String],
    devinfo_dir: &Path,
) -> Result<ContainerAlloc, AllocError> {
    if ids.is_empty() {
        return Err(AllocError::InvalidArgument(
            "a container request lists no device IDs".into(),
        ));
    }
    if ids.len() > devices.devices.len() {
        return Err(AllocError::InvalidArgument(format!(
            "a container request lists {} device IDs but {resource} has only {} devices",
            ids.len(),
            devices.devices.len()
        )));
    }
    let mut addrs = parse_ids(ids, devices, resource, "devices_ids")?;
    // kubelet's order of IDs is random (a Go map): sorted, the same allocation always
    // gives the same variables and device specs.
    addrs.sort_unstable();
    for a in &addrs {
        let d = &devices.devices[a];
        if let crate::health::Health::Unhealthy(why) = &d.health {
            return Err(AllocError::InvalidArgument(format!(
                "device ID \"{a}\" of {resource} is Unhealthy: {why}"
            )));
        }
    }
    let mut rdma_names = Vec::with_capacity(addrs.len());
    let mut dev_paths = Vec::with_capacity(addrs.len() + 1);
    let mut infos = Vec::with_capacity(addrs.len());
    let mut vfs = Vec::with_capacity(addrs.len());
    for a in &addrs {
        let dir = root.pci_device(a);
        let fd = health::open_function_dir(&dir);
        let rdma = health::first_entry(fd.as_ref(), &dir, "infiniband");
        let uverbs = uverbs_of(fd.as_ref(), &dir);
        let (Some(rdma), Some(uverbs)) = (rdma, uverbs) else {
            let why = if devices.devices[a].in_pod {
                "its netdev and RDMA device are in a pod's network namespace: it is in use"
            } else {
                "it has no RDMA device (infiniband/ and infiniband_verbs/ are empty): is mlx5_ib loaded?"
            };
            return Err(AllocError::FailedPrecondition(format!(
                "device {a} of {resource} cannot be allocated: {why}"
            )));
        };
        let node_missing = |c: &CharDev, module: &str| {
            AllocError::FailedPrecondition(format!(
                "device {a} of {resource}: {} does not exist on the host ({} of {rdma}); is {module} loaded?",
                root.join(&c.path()).display(),
                c.name
            ))
        };
        let mut chars = vec![CharDev::uverbs(uverbs)];
        if !root.join(&chars[0].path()).exists() {
            return Err(node_missing(&chars[0], "ib_uverbs"));
        }
        if devices.mad_devices {
            let mad = mad_of(fd.as_ref(), &dir);
            if !mad.iter().any(|c| c.name.starts_with("umad")) {
                return Err(AllocError::FailedPrecondition(format!(
                    "device {a} of {resource} has no umad device ({} lists none) and the resource's madDevices is true: load ib_umad, or set madDevices to false",
                    dir.join(MAD_CLASS).display()
                )));
            }
            if let Some(c) = mad.iter().find(|c| !root.join(&c.path()).exists()) {
                return Err(node_missing(c, "ib_umad"));
            }
            chars.extend(mad);
        }
        dev_paths.extend(chars.iter().map(CharDev::path));
        vfs.push((*a, chars));
        infos.push((*a, devinfo::vf_info(*a, Some(&rdma), devices.devices[a].pf)));
        rdma_names.push(rdma);
    }
    if root.join(RDMA_CM).exists() {
        dev_paths.push(RDMA_CM.to_string());
    } else {
        tracing::warn!(
            "{} does not exist (rdma_ucm not loaded?): containers get no RDMA CM device",
            root.join(RDMA_CM).display()
        );
    }
    let mut files = Vec::with_capacity(infos.len());
    for (a, json) in &infos {
        let path = dp_file(devinfo_dir, resource, a);
        devinfo::write_atomic(&path, json).map_err(|e| {
            AllocError::Internal(format!(
                "cannot write device-info file {}: {e}",
                path.display()
            ))
        })?;
        files.push(path);
    }
    let mut envs = BTreeMap::new();
    envs.insert(
        pci_env_name(resource),
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    let rdma_names = rdma_names.join(",");
    // With several resources kubelet keeps one value of NCCL_IB_HCA (the `ncclIbHca`
    // default): each resource's own variable lets the container compose it.
    if devices.nccl_ib_hca {
        // A leading `=` makes NCCL match whole names: without it `mlx5_1` (a storage PF
        // the pod can see without RDMA isolation) would match `mlx5_12`, the pod's VF.
        envs.insert("NCCL_IB_HCA".to_string(), format!("={rdma_names}"));
    }
    envs.insert(rdma_env_name(resource), rdma_names);
    Ok(ContainerAlloc {
        envs,
        devices: dev_paths,
        devinfo_files: files,
        vfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::pool::DeviceEntry;

    /// A DGX-shaped device set: 8 PFs (rail r, NUMA r/4) × `per` VFs.
    fn dgx(per: u8) -> DeviceSet {
        let buses = [0x18u8, 0x40, 0x4f, 0x5e, 0x9a, 0xc0, 0xce, 0xdc];
        let mut devices = BTreeMap::new();
        for (rail, bus) in buses.iter().enumerate() {
            let pf = PciAddr::new(0, *bus, 0, 0).unwrap();
            for i in 0..per {
                let addr = pf.offset_by(1 + i as u32).unwrap();
                devices.insert(
                    addr,
                    DeviceEntry {
                        addr,
                        pf,
                        vf_index: i as u32,
                        numa: Some(rail as u32 / 4),
                        rail: Some(rail as u32),
                        health: Health::Healthy,
                        failed: Default::default(),
                        in_pod: false,
                    },
                );
            }
        }
        DeviceSet {
            devices,
            ..Default::default()
        }
    }

    fn ids(s: &DeviceSet) -> Vec<String> {
        s.devices.keys().map(ToString::to_string).collect()
    }

    fn rails(s: &DeviceSet, got: &[String]) -> Vec<u32> {
        let mut r: Vec<u32> = got
            .iter()
            .map(|i| s.devices[&i.parse::<PciAddr>().unwrap()].rail.unwrap())
            .collect();
        r.sort();
        r
    }

    #[test]
    fn eight_vfs_cover_eight_rails() {
        let s = dgx(8);
        let got = preferred(&s, "r", &ids(&s), &[], 8).unwrap().ids;
        assert_eq!(rails(&s, &got), (0..8).collect::<Vec<_>>());
        // Deterministic.
        assert_eq!(got, preferred(&s, "r", &ids(&s), &[], 8).unwrap().ids);
    }

    #[test]
    fn a_vf_still_in_a_pod_is_picked_last() {
        let mut s = dgx(2);
        let first = preferred(&s, "r", &ids(&s), &[], 1).unwrap().ids;
        let a: PciAddr = first[0].parse().unwrap();
        s.devices.get_mut(&a).unwrap().in_pod = true;
        let got = preferred(&s, "r", &ids(&s), &[], 1).unwrap().ids;
        assert_ne!(got, first);
        // Still offered when nothing else is left.
        let got = preferred(&s, "r", &[first[0].clone()], &[], 1).unwrap().ids;
        assert_eq!(got, first);
    }

    #[test]
    fn an_unhealthy_vf_kubelet_still_offers_is_picked_last() {
        let mut s = dgx(2);
        let first = preferred(&s, "r", &ids(&s), &[], 1).unwrap().ids;
        let a: PciAddr = first[0].parse().unwrap();
        // The poller saw its port go down; kubelet has not applied ListAndWatch yet.
        s.devices.get_mut(&a).unwrap().health = Health::Unhealthy("port_state".into());
        let got = preferred(&s, "r", &ids(&s), &[], 1).unwrap().ids;
        assert_ne!(got, first);
        let got = preferred(&s, "r", &[first[0].clone()], &[], 1).unwrap().ids;
        assert_eq!(got, first, "still offered when nothing else is left");
    }

    #[test]
    fn vfs_allocate_would_refuse_do_not_choose_the_numa_node() {
        let mut s = dgx(2);
        // kubelet offers NUMA 0's rails 0-2 (rail 3 is taken), enough for three VFs on one
        // node, and all of NUMA 1's rails 4-7, but only one VF there (rail 4) is neither
        // in a pod nor unhealthy.
        for (a, d) in s.devices.iter_mut() {
            if d.rail == Some(5) {
                d.health = Health::Unhealthy("port_state".into());
            } else if d.numa == Some(1) && a.to_string() != "0000:9a:00.1" {
                d.in_pod = true;
            }
        }
        let mut avail = ids(&s);
        avail.retain(|i| !i.starts_with("0000:5e:"));
        let got = preferred(&s, "r", &avail, &[], 3).unwrap().ids;
        let numas: BTreeSet<u32> = got
            .iter()
            .map(|i| s.devices[&i.parse::<PciAddr>().unwrap()].numa.unwrap())
            .collect();
        assert_eq!(numas, BTreeSet::from([0]), "{got:?}");
        assert_eq!(rails(&s, &got), vec![0, 1, 2]);
    }

    #[test]
    fn four_vfs_stay_on_one_numa_node() {
        let s = dgx(8);
        let got = preferred(&s, "r", &ids(&s), &[], 4).unwrap().ids;
        let numas: BTreeSet<u32> = got
            .iter()
            .map(|i| s.devices[&i.parse::<PciAddr>().unwrap()].numa.unwrap())
            .collect();
        assert_eq!(numas.len(), 1, "{got:?}");
        assert_eq!(rails(&s, &got).len(), 4);
    }

    #[test]
    fn must_include_is_honoured_and_steers_numa() {
        let s = dgx(8);
        let must = vec!["0000:dc:00.3".to_string()]; // rail 7, NUMA 1
        let got = preferred(&s, "r", &ids(&s), &must, 4).unwrap().ids;
        assert!(got.contains(&must[0]));
        assert_eq!(rails(&s, &got), vec![4, 5, 6, 7]);
    }

    #[test]
    fn least_used_pf_is_preferred_once_rails_are_covered() {
        let s = dgx(8);
        // PF 0000:18:00.0 has 6 of its 8 VFs in use elsewhere.
        let mut avail = ids(&s);
        avail.retain(|i| {
            ![
                "0000:18:00.1",
                "0000:18:00.2",
                "0000:18:00.3",
                "0000:18:00.4",
                "0000:18:00.5",
                "0000:18:00.6",
            ]
            .contains(&i.as_str())
        });
        let got = preferred(&s, "r", &avail, &[], 9).unwrap().ids;
        let from_busy = got.iter().filter(|i| i.starts_with("0000:18:")).count();
        assert_eq!(from_busy, 1, "{got:?}");
        let mut r = rails(&s, &got);
        r.dedup();
        assert_eq!(r, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn requests_that_cannot_be_answered_are_refused() {
        let s = dgx(2);
        let all = ids(&s);
        for (avail, must, size) in [
            (&all[..], &[][..], 0),
            (&all[..], &[][..], -1),
            (&all[..], &[][..], 17),
            (&all[..2], &[][..], 3),
            (&all[..], &all[..2], 1),
            (&["0000:99:00.1".to_string()][..], &[][..], 1),
            (&["../../etc".to_string()][..], &[][..], 1),
            (&[][..], &[][..], 1),
        ] {
            let e = preferred(&s, "r", avail, must, size).unwrap_err();
            assert!(
                matches!(e, AllocError::InvalidArgument(_)),
                "{avail:?} {must:?} {size}: {e}"
            );
        }
        // A size the unknown IDs would have made up: the message says they were left out.
        let mut avail = all[..2].to_vec();
        avail.push("0000:99:00.1".into());
        let e = preferred(&s, "r", &avail, &[], 3).unwrap_err().to_string();
        assert!(
            e.contains("more than the 2 devices") && e.contains("\"0000:99:00.1\""),
            "{e}"
        );
    }

    /// kubelet's list can be older than the plugin's (VFs removed, config reloaded), and
    /// kubelet fails admission on any error here: what the plugin does not have is left
    /// out of `available`, kept from `must`; repeats count once.
    #[test]
    fn stale_malformed_and_repeated_ids_are_left_out_not_refused() {
        let s = dgx(2);
        let all = ids(&s);
        let huge = "x".repeat(1 << 16);
        let mut avail = vec![
            "0000:99:00.1".to_string(),
            all[0].clone(),
            "../../etc".into(),
            all[0].clone(),
            huge.clone(),
        ];
        avail.extend(all[1..4].iter().cloned());
        let got = preferred(&s, "r", &avail, &[], 4).unwrap();
        assert_eq!(got.ids.len(), 4);
        assert!(got.ids.iter().all(|i| all[..4].contains(i)), "{got:?}");
        assert_eq!(got.unknown_available.count, 3);
        assert_eq!(got.repeated, 1);
        // Hostile IDs are cut short for the logs.
        assert!(got.unknown_available.to_string().len() < 300, "{got:?}");
        assert!(got.unknown_available.to_string().contains("0000:99:00.1"));

        // A must-include ID the plugin does not have (or that kubelet did not also list
        // as available) is kept in the answer as given.
        let must = vec!["0000:99:00.1".to_string(), all[9].clone()];
        let got = preferred(&s, "r", &all[..4], &must, 3).unwrap();
        assert_eq!(got.ids.len(), 3, "{got:?}");
        assert_eq!(got.ids[..2], must[..]);
        assert!(all[..4].contains(&got.ids[2]), "{got:?}");
        assert_eq!(got.unknown_must.count, 1);
        // Repeated must-include IDs count once toward the size.
        let must = vec![all[0].clone(), all[0].clone()];
        let got = preferred(&s, "r", &all, &must, 1).unwrap();
        assert_eq!(got.ids, vec![all[0].clone()]);
        assert_eq!(got.repeated, 1);
    }

    #[test]
    fn logged_ids_are_cut_short_and_counted() {
        assert_eq!(
            logged_ids(["0000:18:00.1", "0000:40:00.1"]),
            "0000:18:00.1,0000:40:00.1"
        );
        let long = "x".repeat(1 << 20);
        let line = logged_ids([long.as_str(), "a,b", "0000:18:00.1"]);
        assert!(line.len() < 200, "{}", line.len());
        assert!(
            line.contains("…") && line.contains("\"a,b\"") && line.ends_with(",0000:18:00.1"),
            "{line}"
        );
        let many: Vec<String> = (0..100_000).map(|i| format!("id{i}")).collect();
        let line = logged_ids(many.iter().map(String::as_str));
        assert!(
            line.ends_with("id63 and 99936 more"),
            "{}",
            &line[line.len() - 40..]
        );
    }

    #[test]
    fn env_name_follows_sriov_dp() {
        assert_eq!(
            pci_env_name("nvidia.com/dgx_h200_vfs"),
            "PCIDEVICE_NVIDIA_COM_DGX_H200_VFS"
        );
        assert_eq!(
            rdma_env_name("example.com/rails_numa1"),
            "PCIDEVICE_EXAMPLE_COM_RAILS_NUMA1_RDMA"
        );
    }

    /// Every character the resource name rules allow besides letters, digits and `_` (a
    /// `-` in the prefix or the name, a `.` in the name) becomes `_`: the variables are
    /// names a shell can read.
    #[test]
    fn env_names_are_shell_names_whatever_the_resource_name() {
        assert_eq!(
            pci_env_name("nvidia.com/dgx-vfs"),
            "PCIDEVICE_NVIDIA_COM_DGX_VFS"
        );
        assert_eq!(
            rdma_env_name("my-corp.example.com/rails-numa1.v2"),
            "PCIDEVICE_MY_CORP_EXAMPLE_COM_RAILS_NUMA1_V2_RDMA"
        );
        for r in [
            "nvidia.com/dgx-vfs",
            "a-b.c-d/x-y.z_w",
            "example.com/Rails-0",
        ] {
            for v in [pci_env_name(r), rdma_env_name(r)] {
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                    "{r} gives {v}"
                );
            }
        }
    }
}
