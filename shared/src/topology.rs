//! NUMA and rail topology. A rail is the GPU that shares the deepest PCIe bridge with a
//! PF (nvidia-smi's `PXB`/`PIX` pair); VFs inherit their PF's rail. Hosts whose sysfs
//! cannot show it (VMs with one PCI domain per device) use an explicit [`RailMap`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::inventory::{Gpu, GpuSite, Inventory};
use crate::pci::PciAddr;

/// Where a rail assignment came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RailSource {
    /// Shared PCIe bridge in sysfs.
    Detected,
    /// The operator's rail map.
    Configured,
}

/// A PF's rail: the index of its GPU (GPUs numbered in PCI address order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rail {
    pub index: u32,
    /// The GPU's address, when the GPU is on this host.
    pub gpu: Option<PciAddr>,
    pub source: RailSource,
}

/// Operator override: PF address → rail index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RailMap(pub BTreeMap<PciAddr, u32>);

/// A rail map file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RailMapError {
    #[error("cannot read rail map {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rail map {path}: {source}; expected a JSON object of PF PCI address to rail number, e.g. {{\"0000:18:00.0\": 0}}"
    )]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl RailMap {
    /// Reads a rail map file (`{"0000:18:00.0": 0, …}`), as `--rail-map` takes it.
    pub fn load(path: &Path) -> Result<Self, RailMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| RailMapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| RailMapError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Rails of every PF of an inventory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Topology {
    rails: BTreeMap<PciAddr, Rail>,
}

impl Topology {
    /// Detects each PF's rail, then applies `overrides` (which win, and may name PFs
    /// whose rail sysfs cannot show).
    pub fn detect(inv: &Inventory, overrides: Option<&RailMap>) -> Self {
        let mut rails = BTreeMap::new();
        let sites: Vec<GpuSite> = inv.gpus.iter().map(Gpu::site).collect();
        for pf in &inv.pfs {
            if let Some(rail) = detect_rail(&pf.function.sysfs_path, &sites) {
                rails.insert(pf.function.addr, rail);
            }
        }
        if let Some(map) = overrides {
            for (pf, &index) in &map.0 {
                let gpu = inv.gpus.iter().find(|g| g.index == index).map(|g| g.addr);
                rails.insert(
                    *pf,
                    Rail {
                        index,
                        gpu,
                        source: RailSource::Configured,
                    },
                );
            }
        }
        Topology { rails }
    }

    /// The rail of a PF.
    pub fn pf_rail(&self, pf: &PciAddr) -> Option<Rail> {
        self.rails.get(pf).copied()
    }

    /// The rail of a VF: its PF's.
    pub fn vf_rail(&self, inv: &Inventory, vf: &PciAddr) -> Option<Rail> {
        inv.vf(vf).and_then(|v| self.pf_rail(&v.pf))
    }

    /// A compute PF is one with a rail; storage and DPU ports have none.
    pub fn is_compute_pf(&self, pf: &PciAddr) -> bool {
        self.rails.contains_key(pf)
    }
}

/// The rail sysfs shows for the PCI function at `path` (its real sysfs path,
/// [`crate::inventory::function_path`]): what [`Topology::detect`] finds for a PF, for a
/// caller that reads one PF rather than an inventory.
pub fn detect_rail(path: &Path, gpus: &[GpuSite]) -> Option<Rail> {
    rail_gpu(path, gpus).map(|gpu| Rail {
        index: gpu.index,
        gpu: Some(gpu.addr),
        source: RailSource::Detected,
    })
}

/// The bridge chain above a device: the components of its canonical path from its PCI host
/// bridge (`pciDDDD:BB`) on, without the device itself (`["pci0000:15", "0000:15:01.0", …]`).
/// Platform nodes above the host bridge (ACPI, VMBus) are left out: sharing them says
/// nothing about PCIe locality.
fn ancestors(path: &Path) -> Vec<String> {
    let comps: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let is_host_bridge = |c: &str| {
        c.strip_prefix("pci").is_some_and(|rest| {
            rest.len() == 7
                && rest.as_bytes()[4] == b':'
                && rest
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| i == 4 || b.is_ascii_hexdigit())
        })
    };
    // Search below the last `sys/devices`: the host root itself may be named anything.
    let devices = (1..comps.len())
        .rev()
        .find(|&i| comps[i] == "devices" && comps[i - 1] == "sys")
        .map_or(0, |i| i + 1);
    let Some(start) = (devices..comps.len()).find(|&i| is_host_bridge(&comps[i])) else {
        return Vec::new();
    };
    let mut chain = comps[start..].to_vec();
    chain.pop();
    chain
}

/// The GPU sharing the deepest bridge with the device at `path`, provided they share
/// at least one PCI bridge below the host bridge (a shared host bridge alone is nvidia-smi
/// `NODE`, not a rail) and no other GPU shares one as deep.
fn rail_gpu<'a>(path: &Path, gpus: &'a [GpuSite]) -> Option<&'a GpuSite> {
    let mine = ancestors(path);
    let mut best: Option<(&GpuSite, usize)> = None;
    let mut tie = false;
    for gpu in gpus {
        let theirs = ancestors(&gpu.sysfs_path);
        let shared = mine
            .iter()
            .zip(theirs.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if shared < 2 {
            continue;
        }
        match best {
            Some((_, depth)) if depth > shared => {}
            Some((_, depth)) if depth == shared => tie = true,
            _ => {
                best = Some((gpu, shared));
                tie = false;
            }
        }
    }
    if tie { None } else { best.map(|(g, _)| g) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn gpu(index: u32, addr: &str, path: &str) -> Gpu {
        Gpu {
            addr: addr.parse().unwrap(),
            index,
            device: 0x2335,
            numa_node: Some(0),
            sysfs_path: PathBuf::from(path),
        }
    }

    fn site(index: u32, addr: &str, path: &str) -> GpuSite {
        gpu(index, addr, path).site()
    }

    #[test]
    fn deepest_shared_bridge_wins_and_host_bridge_alone_is_not_a_rail() {
        let gpus = [
            site(
                0,
                "0000:1b:00.0",
                "/r/sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:01.0/0000:19:00.0/0000:1a:00.0/0000:1b:00.0",
            ),
            site(
                1,
                "0000:43:00.0",
                "/r/sys/devices/pci0000:15/0000:15:02.0/0000:42:00.0/0000:43:00.0",
            ),
        ];
        let nic = PathBuf::from(
            "/r/sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0",
        );
        assert_eq!(rail_gpu(&nic, &gpus).unwrap().index, 0);
        let storage = PathBuf::from("/r/sys/devices/pci0000:15/0000:15:03.0/0000:29:00.0");
        assert!(rail_gpu(&storage, &gpus).is_none());
    }

    #[test]
    fn equally_close_gpus_are_ambiguous() {
        let gpus = [
            site(
                0,
                "0000:1b:00.0",
                "/r/sys/devices/pci0000:15/0000:15:01.0/0000:1b:00.0",
            ),
            site(
                1,
                "0000:1c:00.0",
                "/r/sys/devices/pci0000:15/0000:15:01.0/0000:1c:00.0",
            ),
        ];
        let nic = PathBuf::from("/r/sys/devices/pci0000:15/0000:15:01.0/0000:18:00.0");
        assert!(rail_gpu(&nic, &gpus).is_none());
    }

    #[test]
    fn a_rail_map_overrides_detection_and_names_undetectable_pfs() {
        use crate::inventory::{Inventory, PciFunction, Pf};
        let pf = |addr: &str, path: &str| Pf {
            function: PciFunction {
                addr: addr.parse().unwrap(),
                vendor: 0x15b3,
                device: 0x1021,
                class: 0x020700,
                driver: Some("mlx5_core".into()),
                numa_node: Some(0),
                netdevs: vec![],
                rdma: None,
                uverbs: None,
                physfn: None,
                sysfs_path: PathBuf::from(path),
            },
            sriov_totalvfs: Some(16),
            sriov_numvfs: Some(8),
            vfs: vec![],
        };
        let inv = Inventory {
            pfs: vec![
                pf(
                    "0000:18:00.0",
                    "/r/sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0",
                ),
                // A VM: one host bridge per device, nothing to pair by ancestry.
                pf(
                    "0101:00:00.0",
                    "/r/sys/devices/LNXSYSTM:00/VMBUS:00/pci0101:00/0101:00:00.0",
                ),
            ],
            gpus: vec![
                gpu(
                    0,
                    "0000:1b:00.0",
                    "/r/sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:01.0/0000:19:00.0/0000:1a:00.0/0000:1b:00.0",
                ),
                gpu(
                    1,
                    "0001:00:00.0",
                    "/r/sys/devices/LNXSYSTM:00/VMBUS:00/pci0001:00/0001:00:00.0",
                ),
            ],
            ..Inventory::default()
        };
        let detected = Topology::detect(&inv, None);
        let a = "0000:18:00.0".parse().unwrap();
        let vm = "0101:00:00.0".parse().unwrap();
        assert_eq!(detected.pf_rail(&a).unwrap().source, RailSource::Detected);
        assert!(detected.pf_rail(&vm).is_none());

        let map: RailMap =
            serde_json::from_str(r#"{"0000:18:00.0": 1, "0101:00:00.0": 0}"#).unwrap();
        let t = Topology::detect(&inv, Some(&map));
        let ra = t.pf_rail(&a).unwrap();
        assert_eq!((ra.index, ra.source), (1, RailSource::Configured));
        assert_eq!(ra.gpu, Some("0001:00:00.0".parse().unwrap()));
        assert_eq!(t.pf_rail(&vm).unwrap().index, 0);
        assert!(t.is_compute_pf(&vm));
        assert!(serde_json::from_str::<RailMap>(r#"{"../x": 1}"#).is_err());
    }
}
