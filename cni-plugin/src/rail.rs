//! Rail guardrail: is the VF on the rail of one of the pod's GPUs?
//!
//! `nvidia.com/gpu` can be right while the RDMA VF lands on the wrong NIC: the job runs,
//! NCCL crosses the CPU interconnect, and performance drifts. ADD asks kubelet's
//! PodResources API which GPUs the pod got (`K8S_POD_NAMESPACE` / `K8S_POD_NAME` from
//! `CNI_ARGS`), maps their IDs to PCI addresses (UUIDs through
//! `<host root>/proc/driver/nvidia/gpus/<pci>/information`, numeric IDs as indexes in PCI
//! order), and compares their rails with the VF's (its PF's rail, [`topology::detect_rail`]: the GPU
//! sharing the deepest PCIe bridge; GPU index = rail index).
//!
//! `railPolicy`: `none` — nothing is read, no runtime is built; `warn` (default) — logged,
//! reported in the result and in a rail event, the VF is attached anyway; `require` —
//! anything but "aligned" refuses the ADD (code [`REFUSED`]) before any change.

use std::fs;
use std::time::SystemTime;

use railvf_host::host;
use railvf_host::inventory::{self, GpuSite};
use railvf_host::{HostRoot, PciAddr, Rail, Vf, topology};
use serde_json::{Value, json};

use crate::Ctx;
use crate::error::CniError;
use crate::events::{self, RailEvent};
use crate::netconf::NetConf;
use crate::podresources::{Kubelet, PodDevices, PodRef, PodResources, PodResourcesError};

/// Error code of an ADD the guardrail refused (`railPolicy: require`).
pub const REFUSED: u32 = 108;
/// Resources whose devices are the pod's GPUs: the NVIDIA device plugin's whole GPUs and
/// its time-sliced / MPS-shared GPUs renamed by `renameByDefault`.
pub const GPU_RESOURCES: &[&str] = &["nvidia.com/gpu", "nvidia.com/gpu.shared"];
/// The NVIDIA driver's per-GPU directories, named by PCI address.
pub const NVIDIA_GPUS_DIR: &str = "proc/driver/nvidia/gpus";

/// `railPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    None,
    #[default]
    Warn,
    Require,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Policy::None,
            "warn" => Policy::Warn,
            "require" => Policy::Require,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Warn => "warn",
            Policy::Require => "require",
        }
    }
}

/// What the guardrail concluded about one ADD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The VF's rail is one of the pod's GPU rails.
    Aligned,
    /// It is not.
    Misaligned,
    /// Could not tell (no socket, no pod in `CNI_ARGS`, no GPUs, VF without a rail, …).
    Unknown,
    /// `require` refused the ADD (misaligned or unknown).
    Refused,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Aligned => "aligned",
            Outcome::Misaligned => "misaligned",
            Outcome::Unknown => "unknown",
            Outcome::Refused => "refused",
        }
    }
}

/// The guardrail's finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub policy: Policy,
    pub outcome: Outcome,
    pub vf: PciAddr,
    pub vf_rail: Option<Rail>,
    pub pod: Option<PodRef>,
    /// The pod's GPUs found on this node, PCI order.
    pub gpus: Vec<PciAddr>,
    /// Their rails, sorted, without duplicates.
    pub gpu_rails: Vec<u32>,
    /// One sentence saying what was found (or why nothing could be).
    pub reason: String,
    /// Whether an `unknown` deserves a warning (kubelet errors, unmappable GPU IDs) rather
    /// than an info line (not on Kubernetes, no GPUs in the pod).
    pub notable: bool,
    /// Whether a refusal was about the rails (misaligned) rather than an unknown.
    pub was_misaligned: bool,
}

impl Finding {
    /// The `"railvf": {"rail": …}` member of the ADD result.
    pub fn result_json(&self) -> Value {
        json!({
            "vf": self.vf_rail.map(|r| r.index),
            "gpus": self.gpu_rails,
            "aligned": match self.outcome {
                Outcome::Aligned => Some(true),
                Outcome::Misaligned => Some(false),
                Outcome::Unknown | Outcome::Refused => None,
            },
            "policy": self.policy.as_str(),
            "outcome": self.outcome.as_str(),
            "reason": self.reason,
        })
    }

    /// The rail event of this finding (see [`crate::events`]).
    pub fn event(&self, container_id: &str, ifname: &str, at: SystemTime) -> RailEvent {
        RailEvent {
            version: events::VERSION,
            time: crate::log::rfc3339(at),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            pod: self.pod.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            vf: self.vf.to_string(),
            vf_rail: self.vf_rail.map(|r| r.index),
            gpu_rails: self.gpu_rails.clone(),
            policy: self.policy.as_str().to_string(),
            outcome: self.outcome.as_str().to_string(),
            reason: self.reason.clone(),
        }
    }

    /// The error of a refused ADD: nothing has changed yet.
    pub fn refusal(&self) -> CniError {
        let pod = self
            .pod
            .as_ref()
            .map(|p| format!("pod {p}"))
            .unwrap_or_else(|| "the pod".into());
        if self.was_misaligned {
            CniError::new(
                REFUSED,
                format!("railPolicy require: {}", self.reason),
                format!(
                    "nothing was changed (VF {} is still on the host); the VF must come from the NIC of one of the pod's GPUs: let kubelet's Topology Manager and the device plugin's preferred allocation align them, or set railPolicy to warn to attach across rails (docs/cni.md, \"Rail guardrail\")",
                    self.vf
                ),
            )
        } else {
            CniError::new(
                REFUSED,
                format!(
                    "railPolicy require: cannot tell whether VF {} is on a rail of {pod}'s GPUs: {}",
                    self.vf, self.reason
                ),
                format!(
                    "nothing was changed (VF {} is still on the host); require needs kubelet's PodResources socket, K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS and nvidia.com/gpu devices in the pod; set railPolicy to warn to attach without that (docs/cni.md, \"Rail guardrail\")",
                    self.vf
                ),
            )
        }
    }
}

/// Rail check in ADD, before anything changes. `Ok(None)` with `railPolicy: none` (nothing
/// read); `Err` when `require` refuses (the refusal's event is written).
pub fn guard(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    vf: &Vf,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Finding>, CniError> {
    if conf.rail_policy == Policy::None {
        return Ok(None);
    }
    let source: Box<dyn PodResources> = match Kubelet::from_env(ctx.root()) {
        Ok(k) => Box::new(k),
        Err(e) => Box::new(Unusable(e)),
    };
    let found = check(
        ctx.root(),
        conf.rail_policy,
        vf,
        ctx.env.args.as_deref(),
        source.as_ref(),
    );
    crate::log::step("rail");
    let Some(mut f) = found else { return Ok(None) };
    if f.policy == Policy::Require && f.outcome != Outcome::Aligned {
        f.outcome = Outcome::Refused;
        let at = SystemTime::now();
        events::write(ctx.root(), &f.event(container_id, ifname, at), at);
        return Err(f.refusal());
    }
    match f.outcome {
        Outcome::Misaligned => crate::log_warn!("rail mismatch: {}", f.reason),
        Outcome::Unknown if f.notable => crate::log_warn!("rail check skipped: {}", f.reason),
        Outcome::Unknown => crate::log_info!("rail check skipped: {}", f.reason),
        _ => crate::log_info!("rail check: {}", f.reason),
    }
    Ok(Some(f))
}

/// After a successful ADD: writes the rail event and adds `"railvf": {"rail": …}` to the
/// result text. `None` (policy `none`) leaves the result as it is.
pub fn report(
    ctx: &Ctx<'_>,
    finding: Option<Finding>,
    container_id: &str,
    ifname: &str,
    result: String,
) -> String {
    let Some(f) = finding else { return result };
    let at = SystemTime::now();
    events::write(ctx.root(), &f.event(container_id, ifname, at), at);
    crate::result::with_member(result, "railvf", json!({ "rail": f.result_json() }))
}

/// A PodResources source that cannot be used (a bad `RAILVF_PODRESOURCES_SOCKET`).
struct Unusable(PodResourcesError);

impl PodResources for Unusable {
    fn pod_devices(&self, _pod: &PodRef) -> Result<PodDevices, PodResourcesError> {
        Err(self.0.clone())
    }
}

/// The finding for `vf` under `policy`; `None` for `none` (then nothing is read and
/// `source` is not asked).
pub fn check(
    root: &HostRoot,
    policy: Policy,
    vf: &Vf,
    cni_args: Option<&str>,
    source: &dyn PodResources,
) -> Option<Finding> {
    if policy == Policy::None {
        return None;
    }
    let addr = vf.function.addr;
    let mut f = Finding {
        policy,
        outcome: Outcome::Unknown,
        vf: addr,
        vf_rail: None,
        pod: None,
        gpus: Vec::new(),
        gpu_rails: Vec::new(),
        reason: String::new(),
        notable: true,
        was_misaligned: false,
    };
    let unknown = |mut f: Finding, notable: bool, reason: String| {
        f.notable = notable;
        f.reason = reason;
        Some(f)
    };
    let gpus = match scan_gpus(root) {
        Ok(g) => g,
        Err(e) => return unknown(f, true, format!("cannot list the node's GPUs: {e}")),
    };
    f.vf_rail = match vf_rail(root, vf, &gpus) {
        Ok(r) => r,
        Err(e) => return unknown(f, true, format!("cannot read VF {addr}'s PF: {e}")),
    };
    let pod = match pod_from_cni_args(cni_args) {
        Ok(p) => p,
        Err(why) => return unknown(f, false, why),
    };
    f.pod = Some(pod.clone());
    let Some(rail) = f.vf_rail else {
        return unknown(
            f,
            true,
            format!(
                "VF {addr}'s PF {} has no rail (no GPU shares its PCIe switch: a storage or DPU port?)",
                vf.pf
            ),
        );
    };
    let devices = match source.pod_devices(&pod) {
        Ok(d) => d,
        Err(e @ PodResourcesError::NoSocket(_)) => return unknown(f, false, e.to_string()),
        Err(e) => return unknown(f, true, e.to_string()),
    };
    let ids: Vec<&str> = devices
        .devices
        .iter()
        .filter(|d| GPU_RESOURCES.contains(&d.resource.as_str()))
        .map(|d| d.id.as_str())
        .collect();
    if ids.is_empty() {
        return unknown(
            f,
            false,
            format!("pod {pod} has no {} devices", GPU_RESOURCES.join(" or ")),
        );
    }
    let (found, unmapped) = resolve_ids(root, &gpus, &ids);
    let not_found = if unmapped.is_empty() {
        String::new()
    } else {
        format!(
            "; GPU IDs not found on this node: {}",
            unmapped
                .iter()
                .map(|s| s.chars().take(64).collect::<String>())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if found.is_empty() {
        return unknown(
            f,
            true,
            format!("none of pod {pod}'s GPU IDs is a GPU of this node{not_found}"),
        );
    }
    f.gpus = found.iter().map(|g| g.addr).collect();
    let mut rails: Vec<u32> = found.iter().map(|g| g.index).collect();
    rails.sort_unstable();
    rails.dedup();
    f.gpu_rails = rails;
    let on = rail
        .gpu
        .map(|g| format!("rail {} (GPU {g})", rail.index))
        .unwrap_or_else(|| format!("rail {}", rail.index));
    let list = f
        .gpu_rails
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let plural = if f.gpu_rails.len() == 1 { "" } else { "s" };
    if f.gpu_rails.contains(&rail.index) {
        f.outcome = Outcome::Aligned;
        f.notable = false;
        f.reason = format!(
            "VF {addr} is on {on}, a rail of pod {pod}'s GPUs (rail{plural} {list}){not_found}"
        );
    } else {
        f.outcome = Outcome::Misaligned;
        f.was_misaligned = true;
        f.reason = format!(
            "VF {addr} is on {on} but pod {pod} has GPUs on rail{plural} {list}{not_found}"
        );
    }
    Some(f)
}

/// The VF's rail (its PF's), from the PF's sysfs path and the GPUs only: no inventory
/// scan, nothing else of the PF read.
fn vf_rail(root: &HostRoot, vf: &Vf, gpus: &[GpuSite]) -> Result<Option<Rail>, String> {
    let pf = inventory::function_path(root, &vf.pf).map_err(|e| e.to_string())?;
    Ok(topology::detect_rail(&pf, gpus))
}

/// NVIDIA GPUs in PCI address order, numbered as nvidia-smi does: the index is the rail.
pub fn scan_gpus(root: &HostRoot) -> Result<Vec<GpuSite>, String> {
    inventory::scan_gpu_sites(root).map_err(|e| e.to_string())
}

/// A GPU as a device plugin names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuRef {
    /// `GPU-…` (lower-cased); also the parent of a legacy `MIG-GPU-<uuid>/<gi>/<ci>` ID.
    Uuid(String),
    /// An index in PCI order (the NVIDIA device plugin's `deviceIDStrategy: index`).
    Index(u32),
}

/// Reads a device ID of the NVIDIA device plugin: `GPU-<uuid>`, an index, either with the
/// `::<n>` replica suffix of shared GPUs, or a legacy MIG ID naming its parent. `None`
/// for anything else (such as a MIG device's own `MIG-<uuid>`, which names no PCI GPU).
pub fn parse_gpu_id(id: &str) -> Option<GpuRef> {
    let id = id.trim();
    let base = id.split_once("::").map_or(id, |(b, _)| b);
    let base = match base.get(..8) {
        Some(p) if p.eq_ignore_ascii_case("MIG-GPU-") => {
            base[4..].split('/').next().unwrap_or_default()
        }
        _ => base,
    };
    if base.len() > 4
        && base
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("GPU-"))
    {
        let ok = base[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-');
        return ok.then(|| GpuRef::Uuid(base.to_ascii_lowercase()));
    }
    if !base.is_empty() && base.len() <= 4 && base.bytes().all(|b| b.is_ascii_digit()) {
        return base.parse().ok().map(GpuRef::Index);
    }
    None
}

/// `(uuid lower-cased, PCI address)` of every GPU the NVIDIA driver lists in
/// `<root>/proc/driver/nvidia/gpus/<pci>/information`. Directory names that are not PCI
/// addresses are skipped, so nothing but a validated address ever names a path.
pub fn gpu_uuids(root: &HostRoot) -> Vec<(String, PciAddr)> {
    let dir = root.join(NVIDIA_GPUS_DIR);
    let mut out = Vec::new();
    for name in host::list_dir(&dir).unwrap_or_default() {
        let Ok(addr) = name.parse::<PciAddr>() else {
            crate::log_debug!("{}: {name:?} is not a PCI address, skipped", dir.display());
            continue;
        };
        let info = dir.join(addr.to_string()).join("information");
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        if let Some(uuid) = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("GPU UUID:"))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
        {
            out.push((uuid, addr));
        }
    }
    out
}

/// The node's GPUs named by `ids` (deduplicated, PCI order), and the IDs that name none.
pub fn resolve_ids(root: &HostRoot, gpus: &[GpuSite], ids: &[&str]) -> (Vec<GpuSite>, Vec<String>) {
    let refs: Vec<(&str, Option<GpuRef>)> = ids.iter().map(|i| (*i, parse_gpu_id(i))).collect();
    let uuids = if refs.iter().any(|(_, r)| matches!(r, Some(GpuRef::Uuid(_)))) {
        gpu_uuids(root)
    } else {
        Vec::new()
    };
    let mut found: Vec<GpuSite> = Vec::new();
    let mut unmapped = Vec::new();
    for (id, r) in refs {
        let gpu = match r {
            Some(GpuRef::Uuid(u)) => uuids
                .iter()
                .find(|(x, _)| *x == u)
                .and_then(|(_, a)| gpus.iter().find(|g| g.addr == *a)),
            Some(GpuRef::Index(i)) => gpus.get(i as usize),
            None => None,
        };
        match gpu {
            Some(g) if !found.iter().any(|f| f.addr == g.addr) => found.push(g.clone()),
            Some(_) => {}
            None => unmapped.push(id.to_string()),
        }
    }
    found.sort_by_key(|g| g.addr);
    (found, unmapped)
}

/// The pod named by `CNI_ARGS` (`K=V;K=V`, the last of repeated keys wins, as libcni
/// reads them): `K8S_POD_NAMESPACE` (a DNS-1123 label) and `K8S_POD_NAME` (a DNS-1123
/// subdomain). `Err` says what is missing or wrong.
pub fn pod_from_cni_args(args: Option<&str>) -> Result<PodRef, String> {
    let mut ns = None;
    let mut name = None;
    for pair in args.unwrap_or_default().split(';') {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) => ns = Some(v),
            Some(("K8S_POD_NAME", v)) => name = Some(v),
            _ => {}
        }
    }
    let (ns, name) = match (ns.filter(|s| !s.is_empty()), name.filter(|s| !s.is_empty())) {
        (Some(ns), Some(name)) => (ns, name),
        _ => {
            return Err(
                "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME (not called for a Kubernetes pod)"
                    .into(),
            );
        }
    };
    let shown = |s: &str| s.chars().take(64).collect::<String>();
    if !is_dns1123_label(ns) {
        return Err(format!(
            "K8S_POD_NAMESPACE {:?} is not a namespace name (a DNS-1123 label: 1-63 of a-z, 0-9, '-')",
            shown(ns)
        ));
    }
    if !is_dns1123_subdomain(name) {
        return Err(format!(
            "K8S_POD_NAME {:?} is not a pod name (a DNS-1123 subdomain: 1-253 of a-z, 0-9, '-', '.')",
            shown(name)
        ));
    }
    Ok(PodRef {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 bytes.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podresources::{Device, Via};
    use railvf_sim::{SimNode, SimOptions};
    use std::cell::Cell;

    /// A PodResources stand-in: the devices of one pod, and a call counter.
    struct Pod {
        devices: Vec<(&'static str, String)>,
        calls: Cell<usize>,
    }

    impl Pod {
        fn new(devices: Vec<(&'static str, String)>) -> Self {
            Pod {
                devices,
                calls: Cell::new(0),
            }
        }
    }

    impl PodResources for Pod {
        fn pod_devices(&self, _pod: &PodRef) -> Result<PodDevices, PodResourcesError> {
            self.calls.set(self.calls.get() + 1);
            Ok(PodDevices {
                via: Via::Get,
                devices: self
                    .devices
                    .iter()
                    .map(|(r, id)| Device {
                        container: "main".into(),
                        resource: r.to_string(),
                        id: id.clone(),
                    })
                    .collect(),
            })
        }
    }

    const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=train-0;K8S_POD_INFRA_CONTAINER_ID=abc";
    /// Rail 5's compute PF on the DGX H200 is 0000:c0:00.0; rail 0's is 0000:18:00.0.
    const VF_RAIL5: &str = "0000:c0:00.1";
    const VF_RAIL0: &str = "0000:18:00.1";
    const GPU0: &str = "0000:1b:00.0";
    const GPU1: &str = "0000:43:00.0";
    const GPU5: &str = "0000:c3:00.0";

    fn node() -> SimNode {
        SimOptions::dgx_h200()
            .vfs_per_pf(1)
            .no_links()
            .build()
            .unwrap()
    }

    fn root(sim: &SimNode) -> HostRoot {
        HostRoot::new(sim.root()).unwrap()
    }

    fn vf(sim: &SimNode, a: &str) -> Vf {
        inventory::read_vf(&root(sim), a.parse().unwrap()).unwrap()
    }

    fn uuid(sim: &SimNode, gpu: &str) -> String {
        sim.gpu_uuid(gpu).unwrap()
    }

    #[test]
    fn gpu_ids_of_the_nvidia_device_plugin_parse() {
        let u = "GPU-8f6e4a5b-1c2d-3e4f-5a6b-7c8d9e0f1a2b";
        let lower = GpuRef::Uuid(u.to_ascii_lowercase());
        assert_eq!(parse_gpu_id(u), Some(lower.clone()));
        assert_eq!(
            parse_gpu_id(&u.to_ascii_uppercase().replace("GPU", "gpu")),
            Some(lower.clone())
        );
        // Time-slicing replicas, legacy MIG IDs name their parent GPU.
        assert_eq!(parse_gpu_id(&format!("{u}::3")), Some(lower.clone()));
        assert_eq!(parse_gpu_id(&format!("MIG-{u}/1/0")), Some(lower));
        assert_eq!(parse_gpu_id("3"), Some(GpuRef::Index(3)));
        assert_eq!(parse_gpu_id("0::1"), Some(GpuRef::Index(0)));
        for bad in [
            "",
            "MIG-8f6e4a5b-1c2d-3e4f-5a6b-7c8d9e0f1a2b",
            "GPU-",
            "GPU-../../x",
            "-1",
            "12345",
            "0000:1b:00.0",
        ] {
            assert_eq!(parse_gpu_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gpus_come_from_the_nvidia_driver_directory_or_a_full_scan_alike() {
        let sim = node();
        let r = root(&sim);
        let fast = scan_gpus(&r).unwrap();
        // Without the driver directory (another driver, or none loaded) the full scan of
        // every PCI function's class finds the same GPUs in the same order.
        let drv = r.pci_driver("nvidia");
        for e in std::fs::read_dir(&drv).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().parse::<PciAddr>().is_ok() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let slow = scan_gpus(&r).unwrap();
        let key = |g: &[GpuSite]| g.iter().map(|g| (g.addr, g.index)).collect::<Vec<_>>();
        assert_eq!(key(&fast), key(&slow));
        assert_eq!(slow.len(), 8);
    }

    #[test]
    fn uuids_and_indexes_map_to_pci_addresses() {
        let sim = node();
        let r = root(&sim);
        let gpus = scan_gpus(&r).unwrap();
        let addrs: Vec<String> = gpus.iter().map(|g| g.addr.to_string()).collect();
        assert_eq!(addrs.len(), 8);
        assert_eq!(addrs[0], GPU0);
        assert_eq!(addrs[5], GPU5);
        assert!(gpus.iter().enumerate().all(|(i, g)| g.index == i as u32));

        let uuids = gpu_uuids(&r);
        assert_eq!(uuids.len(), 8);
        let u1 = uuid(&sim, GPU1);
        assert!(uuids.contains(&(u1.to_ascii_lowercase(), GPU1.parse().unwrap())));

        let u5 = uuid(&sim, GPU5);
        let ids = [
            u5.as_str(),
            "1",
            "GPU-00000000-0000-0000-0000-000000000000",
            "9",
            "1::2",
        ];
        let (found, unmapped) = resolve_ids(&r, &gpus, &ids);
        let f: Vec<String> = found.iter().map(|g| g.addr.to_string()).collect();
        assert_eq!(f, [GPU1, GPU5], "PCI order, deduplicated");
        assert_eq!(found[1].index, 5);
        assert_eq!(unmapped, ["GPU-00000000-0000-0000-0000-000000000000", "9"]);
    }

    #[test]
    fn a_proc_entry_that_is_not_a_pci_address_is_never_read() {
        let sim = node();
        let r = root(&sim);
        let evil = sim.root().join(NVIDIA_GPUS_DIR).join("..");
        assert!(evil.exists());
        let bogus = sim.root().join(NVIDIA_GPUS_DIR).join("not-a-bdf");
        fs::create_dir_all(&bogus).unwrap();
        fs::write(bogus.join("information"), "GPU UUID: GPU-0bad\n").unwrap();
        assert!(gpu_uuids(&r).iter().all(|(u, _)| u != "gpu-0bad"));
    }

    #[test]
    fn cni_args_name_the_pod_and_are_validated() {
        let p = pod_from_cni_args(Some(ARGS)).unwrap();
        assert_eq!(p.to_string(), "default/train-0");
        let p = pod_from_cni_args(Some(
            "K8S_POD_NAME=a.b-c;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=web-0.x",
        ))
        .unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("kube-system", "web-0.x")
        );

        let missing = [
            None,
            Some(""),
            Some("IgnoreUnknown=1"),
            Some("K8S_POD_NAME=x"),
            Some("K8S_POD_NAMESPACE=x;K8S_POD_NAME="),
        ];
        for a in missing {
            let e = pod_from_cni_args(a).unwrap_err();
            assert!(e.contains("no K8S_POD_NAMESPACE"), "{a:?}: {e}");
        }
        let long_ns = "a".repeat(64);
        let long_name = format!("{}.{}", "a".repeat(63), "b".repeat(190));
        let bad = [
            ("Default", "x"),
            ("-ns", "x"),
            ("ns-", "x"),
            ("a.b", "x"),
            (long_ns.as_str(), "x"),
            ("ns", "../../etc"),
            ("ns", "Pod"),
            ("ns", "a..b"),
            ("ns", ".a"),
            ("ns", "a/b"),
            ("ns", "a b"),
            ("ns", long_name.as_str()),
        ];
        for (ns, name) in bad {
            let e = pod_from_cni_args(Some(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")))
                .unwrap_err();
            assert!(e.contains("is not a"), "{ns}/{name}: {e}");
        }
        assert_eq!(long_name.len(), 254);
        assert!(is_dns1123_subdomain(long_name[..253].trim_end_matches('.')));
        assert!(is_dns1123_label(&"a".repeat(63)));
    }

    #[test]
    fn none_reads_nothing_and_asks_no_one() {
        let sim = node();
        let pod = Pod::new(vec![("nvidia.com/gpu", "0".into())]);
        let v = vf(&sim, VF_RAIL5);
        assert!(check(&root(&sim), Policy::None, &v, Some(ARGS), &pod).is_none());
        assert_eq!(pod.calls.get(), 0);
        // And even an unreadable host root is not touched.
        let nowhere = HostRoot::new("/nonexistent-railvf-root").unwrap();
        assert!(check(&nowhere, Policy::None, &v, Some(ARGS), &pod).is_none());
        assert_eq!(pod.calls.get(), 0);
    }

    #[test]
    fn a_vf_on_another_rail_than_the_pod_s_gpus_is_misaligned() {
        let sim = node();
        let pod = Pod::new(vec![
            ("nvidia.com/gpu", uuid(&sim, GPU0)),
            ("nvidia.com/gpu", uuid(&sim, GPU1)),
            ("nvidia.com/dgx_h200_vfs", VF_RAIL5.into()),
        ]);
        let f = check(
            &root(&sim),
            Policy::Warn,
            &vf(&sim, VF_RAIL5),
            Some(ARGS),
            &pod,
        )
        .unwrap();
        assert_eq!(pod.calls.get(), 1);
        assert_eq!(f.outcome, Outcome::Misaligned);
        assert_eq!(f.vf_rail.unwrap().index, 5);
        assert_eq!(f.gpu_rails, [0, 1]);
        assert_eq!(
            f.reason,
            "VF 0000:c0:00.1 is on rail 5 (GPU 0000:c3:00.0) but pod default/train-0 has GPUs on rails 0, 1"
        );
        assert_eq!(
            f.result_json(),
            json!({"vf": 5, "gpus": [0, 1], "aligned": false, "policy": "warn", "outcome": "misaligned", "reason": f.reason})
        );
        let e = f.refusal();
        assert_eq!(e.code, REFUSED);
        assert!(e.msg.contains(&f.reason), "{e}");
        assert!(e.details.contains("nothing was changed"), "{e}");
    }

    #[test]
    fn a_vf_on_one_of_the_pod_s_rails_is_aligned_also_with_index_ids() {
        let sim = node();
        let pod = Pod::new(vec![
            ("nvidia.com/gpu", "1".into()),
            ("nvidia.com/gpu.shared", "0::2".into()),
        ]);
        let f = check(
            &root(&sim),
            Policy::Require,
            &vf(&sim, VF_RAIL0),
            Some(ARGS),
            &pod,
        )
        .unwrap();
        assert_eq!(f.outcome, Outcome::Aligned, "{}", f.reason);
        assert_eq!(f.gpu_rails, [0, 1]);
        assert_eq!(f.result_json()["aligned"], true);
    }

    #[test]
    fn what_cannot_be_known_is_unknown_with_the_reason() {
        let sim = node();
        let r = root(&sim);
        let v5 = vf(&sim, VF_RAIL5);
        let gpu_pod = Pod::new(vec![("nvidia.com/gpu", "5".into())]);

        let f = check(&r, Policy::Warn, &v5, None, &gpu_pod).unwrap();
        assert_eq!(f.outcome, Outcome::Unknown);
        assert!(f.reason.contains("K8S_POD_NAME"), "{}", f.reason);
        assert_eq!(
            f.vf_rail.unwrap().index,
            5,
            "the VF's rail is still reported"
        );
        assert_eq!(gpu_pod.calls.get(), 0, "no pod: kubelet is not asked");

        let cpu_pod = Pod::new(vec![("nvidia.com/dgx_h200_vfs", VF_RAIL5.into())]);
        let f = check(&r, Policy::Warn, &v5, Some(ARGS), &cpu_pod).unwrap();
        assert_eq!(f.outcome, Outcome::Unknown);
        assert!(f.reason.contains("has no nvidia.com/gpu"), "{}", f.reason);
        assert!(!f.notable);

        let mig = Pod::new(vec![(
            "nvidia.com/gpu",
            "MIG-8f6e4a5b-1c2d-3e4f-5a6b-7c8d9e0f1a2b".into(),
        )]);
        let f = check(&r, Policy::Warn, &v5, Some(ARGS), &mig).unwrap();
        assert_eq!(f.outcome, Outcome::Unknown);
        assert!(
            f.reason.contains("not found on this node: MIG-"),
            "{}",
            f.reason
        );
        assert!(f.notable);

        let f = check(
            &r,
            Policy::Require,
            &v5,
            Some(ARGS),
            &Unusable(PodResourcesError::NoSocket("/x.sock".into())),
        )
        .unwrap();
        assert_eq!(f.outcome, Outcome::Unknown);
        let e = f.refusal();
        assert!(
            e.msg.contains("cannot tell whether VF 0000:c0:00.1") && e.msg.contains("/x.sock"),
            "{e}"
        );

        // A storage port's VF has no rail (the sim creates none by default: make one up by
        // looking at the storage PF itself through a VF-shaped value).
        let mut storage = v5.clone();
        storage.pf = "0000:29:00.0".parse().unwrap();
        let f = check(&r, Policy::Warn, &storage, Some(ARGS), &gpu_pod).unwrap();
        assert_eq!(f.outcome, Outcome::Unknown);
        assert!(f.reason.contains("has no rail"), "{}", f.reason);
        assert!(f.vf_rail.is_none());
        assert_eq!(f.result_json()["vf"], Value::Null);
    }

    #[test]
    fn require_refuses_in_add_before_any_change() {
        use crate::testutil::{Bench, conf};
        let b = Bench::new(1);
        // The bench's CNI_ARGS name no pod: under require, that alone refuses.
        let e = b
            .run(
                "ADD",
                "c1",
                Some(&b.pod),
                &conf(0, r#""railPolicy":"require""#),
            )
            .unwrap_err();
        assert_eq!(e.code, REFUSED, "{e}");
        assert!(e.msg.contains("K8S_POD_NAME"), "{e}");
        // Lookups at most: no netlink call that changes anything.
        use crate::net::fake::FakeOp;
        let changes: Vec<_> = b
            .links
            .calls()
            .into_iter()
            .filter(|c| !matches!(c.op, FakeOp::LinkByName | FakeOp::LinkByIndex))
            .collect();
        assert!(changes.is_empty(), "{changes:?}");
        assert!(b.state_files().is_empty(), "{:?}", b.state_files());
        let dir = events::dir(&HostRoot::new(b.root()).unwrap());
        let ev: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(ev.len(), 1);
        let v: Value =
            serde_json::from_str(&fs::read_to_string(ev[0].as_ref().unwrap().path()).unwrap())
                .unwrap();
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["pod"], "");
    }

    #[test]
    fn warn_is_the_default_in_add_and_none_leaves_no_trace() {
        use crate::testutil::{Bench, conf};
        let b = Bench::new(2);
        let out = b
            .run("ADD", "c1", Some(&b.pod), &conf(0, ""))
            .unwrap()
            .unwrap();
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["railvf"]["rail"]["policy"], "warn");
        assert_eq!(r["railvf"]["rail"]["outcome"], "unknown");
        let dir = events::dir(&HostRoot::new(b.root()).unwrap());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        let pod2 = b.netns("pod2");
        let out = b
            .run("ADD", "c2", Some(&pod2), &conf(1, r#""railPolicy":"none""#))
            .unwrap()
            .unwrap();
        let r: Value = serde_json::from_str(&out).unwrap();
        assert!(r.get("railvf").is_none(), "{r}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no event with none");
    }

    #[test]
    fn events_carry_the_finding() {
        let sim = node();
        let pod = Pod::new(vec![
            ("nvidia.com/gpu", "0".into()),
            ("nvidia.com/gpu", "1".into()),
        ]);
        let f = check(
            &root(&sim),
            Policy::Warn,
            &vf(&sim, VF_RAIL5),
            Some(ARGS),
            &pod,
        )
        .unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_777_000_000_123);
        let ev = f.event("cid1", "net1", at);
        assert_eq!(
            ev.to_json(),
            format!(
                r#"{{"version":1,"time":"2026-04-24T03:06:40.123Z","containerID":"cid1","ifname":"net1","pod":"default/train-0","vf":"0000:c0:00.1","vfRail":5,"gpuRails":[0,1],"policy":"warn","outcome":"misaligned","reason":"{}"}}"#,
                f.reason
            )
        );
    }
}
