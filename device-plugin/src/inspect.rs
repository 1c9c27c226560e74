//! `railvf-device-plugin inspect`: the node's VFs and every RDMA readiness check, one line
//! per VF — what an operator runs instead of `ibstat`, `ibv_devinfo` and sysfs loops.
//!
//! VFs are judged by the device plugin's health rules (`health::vf_readiness`), on every
//! check: a VF in a pod is in use, not broken, and a RoCE VF takes its port state from its
//! PF, so the exit status means the same as the plugin's `Unhealthy`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use railvf_device_plugin::health;
use railvf_host::inventory::PciFunction;
use railvf_host::readiness::{Check, Expectations, Readiness};
use railvf_host::topology::{Rail, RailMap};
use railvf_host::{HostRoot, Inventory, LinkLayer, PciAddr, Topology, Vf};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Directory holding the host's /sys, /dev and /run.
    #[arg(long, env = "RAILVF_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// JSON rail map (PF PCI address → rail) for hosts where sysfs cannot show rails.
    #[arg(long)]
    pub rail_map: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The link layer the VFs' ports should run: InfiniBand, or Ethernet for RoCE (no
    /// LID or subnet manager then). Spelled as the CNI's readiness.linkLayer.
    #[arg(long, value_name = "InfiniBand|Ethernet", default_value = "InfiniBand", value_parser = parse_link_layer)]
    pub link_layer: LinkLayer,
}

/// `--link-layer`, spelled exactly as the CNI's `readiness.linkLayer`, so one value serves
/// both.
fn parse_link_layer(s: &str) -> Result<LinkLayer, String> {
    match s {
        "InfiniBand" => Ok(LinkLayer::InfiniBand),
        "Ethernet" => Ok(LinkLayer::Ethernet),
        _ => Err(format!(
            "expected \"InfiniBand\" (the default) or \"Ethernet\" (RoCE), spelled as the CNI's readiness.linkLayer; found {s:?}"
        )),
    }
}

/// One VF as `inspect` reports it.
#[derive(Serialize)]
pub struct VfReport {
    pub vf: PciAddr,
    pub pf: PciAddr,
    pub vf_index: u32,
    pub netdev: Option<String>,
    pub rdma_device: Option<String>,
    pub uverbs: Option<String>,
    pub numa_node: Option<u32>,
    pub rail: Option<u32>,
    pub gpu: Option<PciAddr>,
    pub compute: bool,
    pub node_guid: Option<String>,
    pub lid: Option<String>,
    pub sm_lid: Option<String>,
    pub state: Option<String>,
    pub phys_state: Option<String>,
    pub link_layer: Option<String>,
    pub rate: Option<String>,
    /// Every check that could be made passed (for a VF in use: its driver and its PF's port).
    pub ready: bool,
    /// In a pod's network namespace: its netdev and RDMA device are out of the host's sight.
    pub in_use: bool,
    /// `ready`, `in_use` (in use and ready) or `not_ready`.
    pub status: &'static str,
    pub checks: Readiness,
}

#[derive(Serialize)]
pub struct PfReport {
    pub pf: PciAddr,
    pub netdev: Option<String>,
    pub rdma_device: Option<String>,
    pub numa_node: Option<u32>,
    pub rail: Option<Rail>,
    pub role: &'static str,
    pub link_layer: Option<String>,
    pub sriov_numvfs: Option<u32>,
    pub sriov_totalvfs: Option<u32>,
}

#[derive(Serialize)]
pub struct GpuReport {
    pub gpu: PciAddr,
    pub index: u32,
    pub numa_node: Option<u32>,
}

#[derive(Serialize)]
pub struct Report {
    pub host_root: PathBuf,
    /// The link layer VFs were expected to run (`--link-layer`).
    pub link_layer_expected: LinkLayer,
    pub gpus: Vec<GpuReport>,
    pub pfs: Vec<PfReport>,
    pub vfs: Vec<VfReport>,
    pub compute_vfs: usize,
    pub compute_vfs_not_ready: usize,
    /// VFs of compute PFs in a pod's network namespace (those not ready among them are
    /// counted in `compute_vfs_not_ready` too).
    pub compute_vfs_in_use: usize,
    /// Network functions whose sysfs entries could not be read, with the reason.
    pub unreadable: Vec<UnreadableReport>,
}

#[derive(Serialize)]
pub struct UnreadableReport {
    pub function: PciAddr,
    pub error: String,
}

pub fn exec(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let root = HostRoot::new(&args.host_root)?;
    let rail_map = args.rail_map.as_deref().map(RailMap::load).transpose()?;
    let exp = Expectations {
        link_layer: args.link_layer,
        ..Expectations::default()
    };
    let report = build(&root, rail_map.as_ref(), &exp)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(
        if report.compute_vfs_not_ready > 0 || !report.unreadable.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// Reads the node and evaluates every readiness check on every VF.
pub fn build(
    root: &HostRoot,
    rail_map: Option<&RailMap>,
    exp: &Expectations,
) -> anyhow::Result<Report> {
    let inv = Inventory::scan(root)?;
    let topo = Topology::detect(&inv, rail_map);
    let pfs = inv
        .pfs
        .iter()
        .map(|pf| {
            let f = &pf.function;
            PfReport {
                pf: f.addr,
                netdev: f.netdev().map(|n| n.name.clone()),
                rdma_device: f.rdma.as_ref().map(|r| r.name.clone()),
                numa_node: f.numa_node,
                rail: topo.pf_rail(&f.addr),
                role: if topo.is_compute_pf(&f.addr) {
                    "compute"
                } else {
                    "no rail (storage/other)"
                },
                link_layer: f.link_layer().map(|l| l.to_string()),
                sriov_numvfs: pf.sriov_numvfs,
                sriov_totalvfs: pf.sriov_totalvfs,
            }
        })
        .collect();
    let mut vfs: Vec<VfReport> = inv
        .vfs
        .iter()
        .map(|vf| {
            let pf = inv.pf(&vf.pf).map(|p| &p.function);
            vf_report(root, &topo, vf, pf, exp)
        })
        .collect();
    vfs.sort_by_key(|v| v.vf);
    let compute_vfs = vfs.iter().filter(|v| v.compute).count();
    let compute_vfs_not_ready = vfs.iter().filter(|v| v.compute && !v.ready).count();
    let compute_vfs_in_use = vfs.iter().filter(|v| v.compute && v.in_use).count();
    Ok(Report {
        host_root: root.path().to_path_buf(),
        link_layer_expected: exp.link_layer,
        gpus: inv
            .gpus
            .iter()
            .map(|g| GpuReport {
                gpu: g.addr,
                index: g.index,
                numa_node: g.numa_node,
            })
            .collect(),
        pfs,
        vfs,
        compute_vfs,
        compute_vfs_not_ready,
        compute_vfs_in_use,
        unreadable: inv
            .unreadable
            .iter()
            .map(|(function, error)| UnreadableReport {
                function: *function,
                error: error.clone(),
            })
            .collect(),
    })
}

fn vf_report(
    root: &HostRoot,
    topo: &Topology,
    vf: &Vf,
    pf: Option<&PciFunction>,
    exp: &Expectations,
) -> VfReport {
    let f = &vf.function;
    let rail = topo.pf_rail(&vf.pf);
    let port = f.port1();
    let judged = health::vf_readiness(root, f, pf, exp, &Check::ALL);
    let ready = judged.readiness.is_ready();
    VfReport {
        vf: f.addr,
        pf: vf.pf,
        vf_index: vf.index,
        netdev: f.netdev().map(|n| n.name.clone()),
        rdma_device: f.rdma.as_ref().map(|r| r.name.clone()),
        uverbs: f.uverbs.as_ref().map(|u| u.name.clone()),
        numa_node: f.numa_node,
        rail: rail.map(|r| r.index),
        gpu: rail.and_then(|r| r.gpu),
        compute: rail.is_some(),
        node_guid: f
            .rdma
            .as_ref()
            .and_then(|r| r.node_guid.value().map(|g| g.to_string())),
        lid: port.and_then(|p| p.lid.value().map(|l| format!("{l:#x}"))),
        sm_lid: port.and_then(|p| p.sm_lid.value().map(|l| format!("{l:#x}"))),
        state: port.and_then(|p| p.state.value().map(|s| s.to_string())),
        phys_state: port.and_then(|p| p.phys_state.value().map(|s| s.to_string())),
        link_layer: port.and_then(|p| p.link_layer.value().map(|l| l.to_string())),
        rate: port.and_then(|p| p.rate.value().map(|r| r.to_string())),
        ready,
        in_use: judged.in_pod,
        status: match (ready, judged.in_pod) {
            (false, _) => "not_ready",
            (true, true) => "in_use",
            (true, false) => "ready",
        },
        checks: judged.readiness,
    }
}

const IN_USE: &str = "in use (in a pod's network namespace)";

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// The table: GPUs and PFs first (the rail map at a glance), then one line per VF.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "host root {}", r.host_root.display());
    let _ = writeln!(out, "expected link layer {}", r.link_layer_expected);
    let _ = writeln!(out, "GPUs ({}):", r.gpus.len());
    for g in &r.gpus {
        let _ = writeln!(out, "  GPU{} {} numa {}", g.index, g.gpu, opt(&g.numa_node));
    }
    let _ = writeln!(out, "PFs ({}):", r.pfs.len());
    for p in &r.pfs {
        let rail = p
            .rail
            .map(|rl| format!("rail {} (GPU {})", rl.index, opt(&rl.gpu)))
            .unwrap_or_else(|| "no rail".to_string());
        let _ = writeln!(
            out,
            "  {} {:<10} {:<8} numa {} {:<24} {:<10} vfs {}/{}",
            p.pf,
            opt(&p.netdev),
            opt(&p.rdma_device),
            opt(&p.numa_node),
            rail,
            opt(&p.link_layer),
            opt(&p.sriov_numvfs),
            opt(&p.sriov_totalvfs),
        );
    }
    let _ = writeln!(
        out,
        "{:<13} {:<13} {:<11} {:<8} {:<9} {:<4} {:<4} {:<13} {:<20} {:<7} {:<6} {:<10} {:<11} STATUS",
        "VF",
        "PF",
        "NETDEV",
        "RDMA",
        "UVERBS",
        "NUMA",
        "RAIL",
        "GPU",
        "NODE_GUID",
        "LID",
        "SM",
        "STATE",
        "LINK"
    );
    for v in &r.vfs {
        let status = match (v.ready, v.in_use) {
            (true, false) => "ready".to_string(),
            (true, true) => IN_USE.to_string(),
            (false, false) => format!("NOT READY: {}", v.checks.failure_summary()),
            (false, true) => format!("NOT READY (in use): {}", v.checks.failure_summary()),
        };
        let _ = writeln!(
            out,
            "{:<13} {:<13} {:<11} {:<8} {:<9} {:<4} {:<4} {:<13} {:<20} {:<7} {:<6} {:<10} {:<11} {}",
            v.vf.to_string(),
            v.pf.to_string(),
            opt(&v.netdev),
            opt(&v.rdma_device),
            opt(&v.uverbs),
            opt(&v.numa_node),
            opt(&v.rail),
            opt(&v.gpu),
            opt(&v.node_guid),
            opt(&v.lid),
            opt(&v.sm_lid),
            opt(&v.state),
            opt(&v.link_layer),
            status
        );
    }
    for u in &r.unreadable {
        let _ = writeln!(out, "{} UNREADABLE: {}", u.function, u.error);
    }
    let _ = writeln!(
        out,
        "{} VFs, {} on compute PFs, {} of them not ready, {} in use",
        r.vfs.len(),
        r.compute_vfs,
        r.compute_vfs_not_ready,
        r.compute_vfs_in_use
    );
    out
}
