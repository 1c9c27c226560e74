//! `GetPreferredAllocation` (rail-aware) and `Allocate` (what a container gets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use railvf_host::devinfo::{self, DeviceInfo};
use railvf_host::{HostRoot, PciAddr};

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

fn parse_id(id: &str, devices: &DeviceSet, resource: &str) -> Result<PciAddr, AllocError> {
    // The ID goes into the gRPC status (a header): a hostile one is cut short.
    let shown = |id: &str| -> String {
        let mut s: String = id.chars().take(64).collect();
        if s.len() < id.len() {
            s.push('…');
        }
        s
    };
    let addr: PciAddr = id.parse().map_err(|e| {
        AllocError::InvalidArgument(format!(
            "device ID {:?} is not a {resource} device: {e}",
            shown(id)
        ))
    })?;
    if !devices.devices.contains_key(&addr) {
        return Err(AllocError::InvalidArgument(format!(
            "device ID {:?} is not a {resource} device on this node",
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
                "device ID {id:?} appears twice in {what}"
            )));
        }
        out.push(a);
    }
    Ok(out)
}

/// The preferred devices for one container: `must` first, then, one at a time, the
/// candidate that (1) adds a rail not yet used, (2) sits on a NUMA node already used,
/// (3) is on the PF with the fewest devices already chosen, then the fewest of its devices
/// in use elsewhere, (4) has the lowest PCI address — so the answer is deterministic.
/// The first free pick prefers the NUMA node offering the most distinct rails.
pub fn preferred(
    devices: &DeviceSet,
    resource: &str,
    available: &[String],
    must: &[String],
    size: i32,
) -> Result<Vec<String>, AllocError> {
    let available = parse_ids(available, devices, resource, "available_deviceIDs")?;
    let must = parse_ids(must, devices, resource, "must_include_deviceIDs")?;
    if size <= 0 {
        return Err(AllocError::InvalidArgument(format!(
            "allocation_size {size} must be at least 1"
        )));
    }
    let size = size as usize;
    if size > available.len() {
        return Err(AllocError::InvalidArgument(format!(
            "allocation_size {size} is more than the {} available devices",
            available.len()
        )));
    }
    if must.len() > size {
        return Err(AllocError::InvalidArgument(format!(
            "{} must-include devices do not fit in allocation_size {size}",
            must.len()
        )));
    }
    let avail_set: BTreeSet<PciAddr> = available.iter().copied().collect();
    if let Some(m) = must.iter().find(|m| !avail_set.contains(m)) {
        return Err(AllocError::InvalidArgument(format!(
            "must-include device {m} is not among available_deviceIDs"
        )));
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
        /// checkpoint): Allocate would refuse it, so it is picked last.
        in_pod: bool,
    }
    let cands: Vec<Cand> = avail_set
        .iter()
        .map(|a| {
            let d = &devices.devices[a];
            Cand {
                addr: *a,
                rail: d.rail,
                numa: d.numa,
                pf: pf_index[&d.pf],
                in_pod: d.in_pod,
            }
        })
        .collect();
    let mut pf_free = vec![0usize; pf_total.len()];
    for c in &cands {
        pf_free[c.pf] += 1;
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
    for m in &must {
        let i = cands
            .binary_search_by(|c| c.addr.cmp(m))
            .map_err(|_| AllocError::Internal(format!("{m} vanished")))?;
        p.take(i, &cands[i]);
    }
    // With nothing chosen yet, start on the NUMA node with the most distinct rails free
    // (ties: more devices, then the lower node), so a small request can stay on one node.
    let seed_numa = if p.numas.is_empty() {
        let mut per_numa: BTreeMap<u32, (BTreeSet<u32>, usize)> = BTreeMap::new();
        for c in &cands {
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
    while p.chosen.len() < size {
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
                    c.in_pod,
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
    Ok(p.chosen.iter().map(ToString::to_string).collect())
}

/// The env variable sriov-network-device-plugin sets: `PCIDEVICE_` + the full resource
/// name upper-cased with `.` and `/` replaced by `_`.
pub fn pci_env_name(full_resource: &str) -> String {
    format!(
        "PCIDEVICE_{}",
        full_resource.to_uppercase().replace(['.', '/'], "_")
    )
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
}

/// Reads what a VF exposes right now: its RDMA device and uverbs node.
fn rdma_of(root: &HostRoot, addr: &PciAddr) -> (Option<String>, Option<String>) {
    let dir = root.pci_device(addr);
    let fd = health::open_function_dir(&dir);
    (
        health::first_entry(fd.as_ref(), &dir, "infiniband"),
        health::first_entry(fd.as_ref(), &dir, "infiniband_verbs"),
    )
}

/// Writes `path` atomically (temp file + rename) so Multus never reads half a file;
/// a file that already holds these bytes (the VF was allocated before) is left alone.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("json.tmp");
    // Created at start, but /var/run is the admin's (and Multus cleans it): make sure.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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
    for a in &addrs {
        let (rdma, uverbs) = rdma_of(root, a);
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
        let dev = format!("/dev/infiniband/{uverbs}");
        if !root.join(&dev).exists() {
            return Err(AllocError::FailedPrecondition(format!(
                "device {a} of {resource}: {} does not exist on the host (uverbs device of {rdma}); is ib_uverbs loaded?",
                root.join(&dev).display()
            )));
        }
        dev_paths.push(dev);
        infos.push(DeviceInfo::pci(
            *a,
            Some(&rdma),
            Some(devices.devices[a].pf),
        ));
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
    for info in &infos {
        let path = devinfo::dp_file(devinfo_dir, resource, &info.pci.pci_address);
        let json = serde_json::to_vec(info).map_err(|e| AllocError::Internal(e.to_string()))?;
        write_atomic(&path, &json).map_err(|e| {
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
    // A leading `=` makes NCCL match whole names: without it `mlx5_1` (a storage PF the
    // pod can see without RDMA isolation) would match `mlx5_12`, the pod's VF.
    envs.insert(
        "NCCL_IB_HCA".to_string(),
        format!("={}", rdma_names.join(",")),
    );
    Ok(ContainerAlloc {
        envs,
        devices: dev_paths,
        devinfo_files: files,
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
        let got = preferred(&s, "r", &ids(&s), &[], 8).unwrap();
        assert_eq!(rails(&s, &got), (0..8).collect::<Vec<_>>());
        // Deterministic.
        assert_eq!(got, preferred(&s, "r", &ids(&s), &[], 8).unwrap());
    }

    #[test]
    fn a_vf_still_in_a_pod_is_picked_last() {
        let mut s = dgx(2);
        let first = preferred(&s, "r", &ids(&s), &[], 1).unwrap();
        let a: PciAddr = first[0].parse().unwrap();
        s.devices.get_mut(&a).unwrap().in_pod = true;
        let got = preferred(&s, "r", &ids(&s), &[], 1).unwrap();
        assert_ne!(got, first);
        // Still offered when nothing else is left.
        let got = preferred(&s, "r", &[first[0].clone()], &[], 1).unwrap();
        assert_eq!(got, first);
    }

    #[test]
    fn four_vfs_stay_on_one_numa_node() {
        let s = dgx(8);
        let got = preferred(&s, "r", &ids(&s), &[], 4).unwrap();
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
        let got = preferred(&s, "r", &ids(&s), &must, 4).unwrap();
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
        let got = preferred(&s, "r", &avail, &[], 9).unwrap();
        let from_busy = got.iter().filter(|i| i.starts_with("0000:18:")).count();
        assert_eq!(from_busy, 1, "{got:?}");
        let mut r = rails(&s, &got);
        r.dedup();
        assert_eq!(r, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn invalid_requests_are_refused() {
        let s = dgx(2);
        let all = ids(&s);
        assert!(preferred(&s, "r", &all, &[], 0).is_err());
        assert!(preferred(&s, "r", &all, &[], 17).is_err());
        assert!(preferred(&s, "r", &["0000:99:00.1".into()], &[], 1).is_err());
        assert!(preferred(&s, "r", &["../../etc".into()], &[], 1).is_err());
        assert!(preferred(&s, "r", &all[..2], &[all[3].clone()], 1).is_err());
        assert!(preferred(&s, "r", &all, &all[..2], 1).is_err());
        let dup = vec![all[0].clone(), all[0].clone()];
        assert!(preferred(&s, "r", &dup, &[], 1).is_err());
    }

    #[test]
    fn env_name_follows_sriov_dp() {
        assert_eq!(
            pci_env_name("nvidia.com/dgx_h200_vfs"),
            "PCIDEVICE_NVIDIA_COM_DGX_H200_VFS"
        );
    }
}
