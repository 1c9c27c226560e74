//! The node description the sim builds from: the project's topology JSON files
//! (`tests/topologies/*.json`) or a synthetic node for scale runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::SimError;
use crate::pci::Bdf;

const DGX_H200_JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../topologies/dgx-h200.json"
));
const DGX_H100_JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../topologies/dgx-h100.json"
));

/// A node: GPUs, Mellanox NICs (PFs) and the NUMA layout, as in `tests/topologies/*.json`.
///
/// Unknown JSON fields (provenance, sources, ...) are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    /// Human name of the system, e.g. `NVIDIA DGX H200`.
    pub system: String,
    /// CPU list of each NUMA node (`"0" -> "0-55,112-167"`), as in `nodeN/cpulist`.
    pub numa_cpulist: BTreeMap<String, String>,
    /// GPUs, in any order.
    pub gpus: Vec<Gpu>,
    /// Mellanox PCI functions with an RDMA device (the PFs).
    pub nics: Vec<Nic>,
}

/// One GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gpu {
    /// nvidia-smi index (PCI order).
    pub index: u32,
    /// PCI address.
    pub pci: Bdf,
    /// NUMA node (`-1` for none).
    pub numa: i32,
    /// Bridges from the CPU root port down to the GPU's parent, outermost first.
    pub pcie_switch: Vec<Bdf>,
    /// PCI vendor id (`0x10de`).
    #[serde(deserialize_with = "hex_u16", serialize_with = "ser_hex4")]
    pub vendor_id: u16,
    /// PCI device id (`0x2335` for H200).
    #[serde(deserialize_with = "hex_u16", serialize_with = "ser_hex4")]
    pub device_id: u16,
    /// PCI class (`0x030200`).
    #[serde(deserialize_with = "hex_u32", serialize_with = "ser_hex6")]
    pub class: u32,
    /// `local_cpulist` of the GPU; the NUMA node's list when absent.
    #[serde(default)]
    pub local_cpulist: Option<String>,
    /// Marketing model (`H200 SXM 141GB`), used for the NVIDIA proc file.
    #[serde(default)]
    pub model: Option<String>,
}

/// What a NIC port is for on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicRole {
    /// GPU-rail compute port (gets VFs by default).
    Compute,
    /// Storage / in-band port.
    Storage,
    /// DPU (BlueField) port.
    Dpu,
}

/// Port link layer, as `ports/1/link_layer` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinkLayer {
    /// `InfiniBand`
    InfiniBand,
    /// `Ethernet` (RoCE)
    Ethernet,
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            LinkLayer::InfiniBand => "InfiniBand",
            LinkLayer::Ethernet => "Ethernet",
        })
    }
}

/// One NIC PCI function with an RDMA device (a PF).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nic {
    /// RDMA device name (`mlx5_0`).
    pub name: String,
    /// Netdev name (`ibp24s0`).
    pub netdev: String,
    /// PCI address.
    pub pci: Bdf,
    /// NUMA node (`-1` for none).
    pub numa: i32,
    /// Bridges from the CPU root port down to the NIC's parent, outermost first.
    pub pcie_switch: Vec<Bdf>,
    /// Compute, storage or DPU.
    pub role: NicRole,
    /// Port link layer.
    pub link_layer: LinkLayer,
    /// PCI vendor id (`0x15b3`).
    #[serde(deserialize_with = "hex_u16", serialize_with = "ser_hex4")]
    pub vendor_id: u16,
    /// PF device id (`0x1021`).
    #[serde(deserialize_with = "hex_u16", serialize_with = "ser_hex4")]
    pub device_id: u16,
    /// VF device id (`0x101e`).
    #[serde(
        default = "default_vf_device",
        deserialize_with = "hex_u16",
        serialize_with = "ser_hex4"
    )]
    pub vf_device_id: u16,
    /// PCI class of the PF (`0x020700` IB, `0x020000` Ethernet).
    #[serde(deserialize_with = "hex_u32", serialize_with = "ser_hex6")]
    pub class: u32,
    /// GPU index of the rail; `None` for storage / DPU ports.
    #[serde(default)]
    pub rail: Option<u32>,
    /// `hca_type` (`MT4129`).
    #[serde(default)]
    pub hca_type: Option<String>,
    /// Port rate string (`400 Gb/sec (4X NDR)`).
    #[serde(default)]
    pub rate_expected: Option<String>,
    /// VFs a DGX is set up with (`8` on compute ports); informational.
    #[serde(default)]
    pub sriov_numvfs_reference: Option<u16>,
    /// `sriov_totalvfs` (firmware `NUM_OF_VFS`); 16 when absent.
    #[serde(default)]
    pub sriov_totalvfs: Option<u16>,
}

fn default_vf_device() -> u16 {
    0x101e
}

fn hex_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let s = String::deserialize(d)?;
    u16::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| serde::de::Error::custom(format!("not a 16-bit hex id: {s:?}")))
}

fn hex_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| serde::de::Error::custom(format!("not a hex class: {s:?}")))
}

fn ser_hex4<S: serde::Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("0x{v:04x}"))
}

fn ser_hex6<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("0x{v:06x}"))
}

impl Topology {
    /// The project's DGX H200 description (`tests/topologies/dgx-h200.json`, compiled in).
    pub fn dgx_h200() -> Topology {
        Self::from_json_str("dgx-h200.json", DGX_H200_JSON)
            .expect("tests/topologies/dgx-h200.json is valid")
    }

    /// The project's DGX H100 description (`tests/topologies/dgx-h100.json`, compiled in).
    pub fn dgx_h100() -> Topology {
        Self::from_json_str("dgx-h100.json", DGX_H100_JSON)
            .expect("tests/topologies/dgx-h100.json is valid")
    }

    /// `dgx-h200`, `dgx-h100`, or the path of a topology JSON file.
    pub fn by_name(spec: &str) -> Result<Topology, SimError> {
        match spec {
            "dgx-h200" => Ok(Self::dgx_h200()),
            "dgx-h100" => Ok(Self::dgx_h100()),
            path => Self::from_path(Path::new(path)),
        }
    }

    /// Loads and validates a topology JSON file.
    pub fn from_path(path: &Path) -> Result<Topology, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&path.display().to_string(), &text)
    }

    /// Parses and validates topology JSON; `origin` names the input in errors.
    pub fn from_json_str(origin: &str, json: &str) -> Result<Topology, SimError> {
        let topo: Topology =
            serde_json::from_str(json).map_err(|source| SimError::TopologyJson {
                origin: origin.to_owned(),
                source,
            })?;
        topo.validate().map_err(|message| SimError::Topology {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(topo)
    }

    /// A node of `pfs` single-port IB PFs (`mlx5_0..`), each on its own rail with its own GPU
    /// behind a PCIe switch (GPU bus = NIC bus + 3, as on DGX), sized for `vfs_per_pf` VFs.
    ///
    /// Each rail takes 7 buses; 32 rails fit one PCI domain, further rails go to domains
    /// 1, 2, …. PF `r` sits at `dddd:bb:00.0` alone on its bus so its VFs (offset 1, stride 1)
    /// stay valid up to 255 per PF. The first half of the rails is NUMA 0, the rest NUMA 1.
    pub fn synthetic(pfs: usize, vfs_per_pf: u16) -> Result<Topology, SimError> {
        if pfs == 0 || vfs_per_pf > 255 {
            return Err(SimError::InvalidOption(format!(
                "synthetic topology needs 1+ PFs and at most 255 VFs per PF (got {pfs} x {vfs_per_pf})"
            )));
        }
        let addr = |d: usize, b: usize, dev: u8| {
            Bdf::new(d as u16, b as u8, dev, 0).expect("synthetic address in range")
        };
        let mut gpus = Vec::with_capacity(pfs);
        let mut nics = Vec::with_capacity(pfs);
        for r in 0..pfs {
            let (dom, base) = (r / 32, 1 + (r % 32) * 7);
            let numa = if pfs > 1 && r >= pfs.div_ceil(2) {
                1
            } else {
                0
            };
            let shared = [addr(dom, base, 1), addr(dom, base + 1, 0)];
            let nic = addr(dom, base + 3, 0);
            let prefix = if dom == 0 {
                String::new()
            } else {
                format!("P{dom}")
            };
            nics.push(Nic {
                name: format!("mlx5_{r}"),
                netdev: format!("ib{prefix}p{}s0", base + 3),
                pci: nic,
                numa,
                pcie_switch: vec![shared[0], shared[1], addr(dom, base + 2, 0)],
                role: NicRole::Compute,
                link_layer: LinkLayer::InfiniBand,
                vendor_id: 0x15b3,
                device_id: 0x1021,
                vf_device_id: 0x101e,
                class: 0x020700,
                rail: Some(r as u32),
                hca_type: Some("MT4129".into()),
                rate_expected: Some("400 Gb/sec (4X NDR)".into()),
                sriov_numvfs_reference: Some(vfs_per_pf),
                sriov_totalvfs: Some(vfs_per_pf.max(16)),
            });
            gpus.push(Gpu {
                index: r as u32,
                pci: addr(dom, base + 6, 0),
                numa,
                pcie_switch: vec![
                    shared[0],
                    shared[1],
                    addr(dom, base + 2, 1),
                    addr(dom, base + 4, 0),
                    addr(dom, base + 5, 0),
                ],
                vendor_id: 0x10de,
                device_id: 0x2335,
                class: 0x030200,
                local_cpulist: None,
                model: Some("H200 SXM 141GB".into()),
            });
        }
        let topo = Topology {
            system: format!("synthetic {pfs}x{vfs_per_pf}"),
            numa_cpulist: BTreeMap::from([
                ("0".to_owned(), "0-55,112-167".to_owned()),
                ("1".to_owned(), "56-111,168-223".to_owned()),
            ]),
            gpus,
            nics,
        };
        topo.validate().map_err(|message| SimError::Topology {
            origin: "synthetic".into(),
            message,
        })?;
        Ok(topo)
    }

    /// The CPU list of a NUMA node; every CPU of the node for `-1` (what the kernel prints
    /// for a device without NUMA affinity).
    pub fn cpulist(&self, numa: i32) -> String {
        if numa < 0 {
            return self.all_cpus();
        }
        self.numa_cpulist
            .get(&numa.to_string())
            .cloned()
            .unwrap_or_else(|| self.all_cpus())
    }

    /// The union of every NUMA node's CPU list, in kernel list format.
    pub fn all_cpus(&self) -> String {
        let mut cpus = BTreeSet::new();
        for list in self.numa_cpulist.values() {
            for part in list.split(',').filter(|p| !p.is_empty()) {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
        }
        format_cpulist(&cpus)
    }

    /// The NIC (PF) with this address.
    pub fn nic(&self, pci: Bdf) -> Option<&Nic> {
        self.nics.iter().find(|n| n.pci == pci)
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        let mut names = BTreeSet::new();
        for g in &self.gpus {
            if !seen.insert(g.pci) {
                return Err(format!("duplicate PCI address {}", g.pci));
            }
            if g.pcie_switch.is_empty() {
                return Err(format!("GPU {} has an empty pcie_switch chain", g.pci));
            }
        }
        for n in &self.nics {
            if !seen.insert(n.pci) {
                return Err(format!("duplicate PCI address {}", n.pci));
            }
            if n.pcie_switch.is_empty() {
                return Err(format!("NIC {} has an empty pcie_switch chain", n.pci));
            }
            if rdma_index(&n.name).is_none() {
                return Err(format!(
                    "NIC {}: RDMA name {:?} is not mlx5_N",
                    n.pci, n.name
                ));
            }
            if !names.insert(n.name.clone()) {
                return Err(format!("duplicate RDMA name {}", n.name));
            }
            if n.netdev.is_empty() || n.netdev.len() > 15 || n.netdev.contains('/') {
                return Err(format!("NIC {}: bad netdev name {:?}", n.pci, n.netdev));
            }
            if let Some(rail) = n.rail
                && !self.gpus.iter().any(|g| g.index == rail)
            {
                return Err(format!("NIC {}: rail {rail} has no GPU", n.pci));
            }
        }
        // A bridge may not also be an endpoint, and a shared bridge needs one parent.
        let mut parent: BTreeMap<Bdf, Option<Bdf>> = BTreeMap::new();
        let chains = self
            .gpus
            .iter()
            .map(|g| (g.pci, &g.pcie_switch))
            .chain(self.nics.iter().map(|n| (n.pci, &n.pcie_switch)));
        for (end, chain) in chains {
            let mut up = None;
            for b in chain {
                if seen.contains(b) {
                    return Err(format!("{b} is both a bridge and an endpoint"));
                }
                if let Some(prev) = parent.insert(*b, up)
                    && prev != up
                {
                    return Err(format!("bridge {b} has two parents in the chains"));
                }
                up = Some(*b);
            }
            if chain.contains(&end) {
                return Err(format!("{end} is in its own bridge chain"));
            }
        }
        Ok(())
    }
}

/// `N` of an `mlx5_N` name.
pub(crate) fn rdma_index(name: &str) -> Option<u32> {
    name.strip_prefix("mlx5_")?.parse().ok()
}

/// Kernel cpulist format (`0-55,112-167`).
pub(crate) fn format_cpulist(cpus: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_dgx_h200() {
        let t = Topology::dgx_h200();
        assert_eq!(t.gpus.len(), 8);
        assert_eq!(t.nics.len(), 12);
        let mlx5_0 = t.nics.iter().find(|n| n.name == "mlx5_0").unwrap();
        assert_eq!(mlx5_0.pci.to_string(), "0000:18:00.0");
        assert_eq!(mlx5_0.netdev, "ibp24s0");
        assert_eq!((mlx5_0.device_id, mlx5_0.vf_device_id), (0x1021, 0x101e));
        assert_eq!(mlx5_0.class, 0x020700);
        assert_eq!(mlx5_0.rail, Some(0));
        let compute = t.nics.iter().filter(|n| n.role == NicRole::Compute).count();
        assert_eq!(compute, 8);
        let mlx5_2 = t.nics.iter().find(|n| n.name == "mlx5_2").unwrap();
        assert_eq!(mlx5_2.link_layer, LinkLayer::Ethernet);
        assert_eq!(t.cpulist(1), "56-111,168-223");
        assert_eq!(t.all_cpus(), "0-223");
    }

    #[test]
    fn loads_dgx_h100_with_its_gpu_id() {
        let t = Topology::dgx_h100();
        assert!(t.gpus.iter().all(|g| g.device_id == 0x2330));
    }

    #[test]
    fn synthetic_layout_is_valid_and_spills_domains() {
        let t = Topology::synthetic(40, 64).unwrap();
        assert_eq!(t.nics.len(), 40);
        assert_eq!(t.nics[0].pci.to_string(), "0000:04:00.0");
        assert_eq!(t.gpus[0].pci.to_string(), "0000:07:00.0");
        assert_eq!(t.nics[32].pci.to_string(), "0001:04:00.0");
        assert_eq!(t.nics[32].netdev, "ibP1p4s0");
        let last = t.nics[31].pci.offset_by(64).unwrap();
        assert_eq!(last.bus(), t.nics[31].pci.bus(), "VFs stay on the PF's bus");
        assert!(Topology::synthetic(1, 256).is_err());
    }

    #[test]
    fn rejects_bad_json() {
        assert!(Topology::from_json_str("x", "{}").is_err());
        let mut t = Topology::dgx_h200();
        t.nics[1].pci = t.nics[0].pci;
        assert!(t.validate().is_err());
    }
}
