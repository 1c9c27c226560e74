//! `railvf-device-plugin inspect` on the simulated DGX H200 node: inventory, rails, NUMA
//! and every readiness check, against the public facts (tests/topologies/dgx-h200.json).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use railvf_sim::{Fault, SimOptions, require_root};
use serde_json::Value;

fn inspect(root: &std::path::Path) -> (Value, i32) {
    inspect_with(root, &[])
}

/// `inspect --json` with more arguments.
fn inspect_with(root: &std::path::Path, args: &[&str]) -> (Value, i32) {
    let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
        .args(["inspect", "--json", "--host-root"])
        .arg(root)
        .args(args)
        .output()
        .expect("run inspect");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.code().unwrap_or(-1))
}

fn failed_checks(vf: &Value) -> Vec<(String, String)> {
    vf["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["observed"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Rail i = GPU i, mlx5_0,3,4,5,6,9,10,11 → rails 0…7 (NVIDIA DGX H100/H200 user guide,
/// tables 5 and 6); NUMA 0 for rails 0–3, 1 for 4–7.
const RAILS: [(&str, &str, u32, u32); 8] = [
    ("0000:18:00.0", "mlx5_0", 0, 0),
    ("0000:40:00.0", "mlx5_3", 1, 0),
    ("0000:4f:00.0", "mlx5_4", 2, 0),
    ("0000:5e:00.0", "mlx5_5", 3, 0),
    ("0000:9a:00.0", "mlx5_6", 4, 1),
    ("0000:c0:00.0", "mlx5_9", 5, 1),
    ("0000:ce:00.0", "mlx5_10", 6, 1),
    ("0000:dc:00.0", "mlx5_11", 7, 1),
];
const GPUS: [&str; 8] = [
    "0000:1b:00.0",
    "0000:43:00.0",
    "0000:52:00.0",
    "0000:61:00.0",
    "0000:9d:00.0",
    "0000:c3:00.0",
    "0000:d1:00.0",
    "0000:df:00.0",
];

#[test]
fn healthy_dgx_h200_matches_the_public_facts() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200()
        .build()
        .expect("build the simulated node");
    let (r, code) = inspect(sim.root());
    assert_eq!(code, 0, "a healthy node must exit 0: {r:#}");

    let gpus: Vec<&str> = r["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gpu"].as_str().unwrap())
        .collect();
    assert_eq!(gpus, GPUS);

    let pfs: BTreeMap<&str, &Value> = r["pfs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pf"].as_str().unwrap(), p))
        .collect();
    for (pf, rdma, rail, numa) in RAILS {
        let p = pfs[pf];
        assert_eq!(p["rdma_device"], rdma, "{pf}");
        assert_eq!(p["rail"]["index"], rail, "{pf}");
        assert_eq!(p["rail"]["gpu"], GPUS[rail as usize], "{pf}");
        assert_eq!(p["numa_node"], numa, "{pf}");
        assert_eq!(p["role"], "compute");
    }
    // Storage / in-band ports: no rail.
    for storage in [
        "0000:29:00.0",
        "0000:29:00.1",
        "0000:aa:00.0",
        "0000:aa:00.1",
    ] {
        assert!(
            pfs[storage]["rail"].is_null(),
            "{storage} must have no rail"
        );
    }

    let vfs = r["vfs"].as_array().unwrap();
    assert_eq!(vfs.len(), 64);
    assert_eq!(r["compute_vfs"], 64);
    let mut per_pf: BTreeMap<String, usize> = BTreeMap::new();
    for vf in vfs {
        let pf = vf["pf"].as_str().unwrap();
        let &(_, _, rail, numa) = RAILS
            .iter()
            .find(|(p, ..)| *p == pf)
            .expect("VF of a compute PF");
        assert_eq!(vf["rail"], rail, "{vf:#}");
        assert_eq!(vf["gpu"], GPUS[rail as usize]);
        assert_eq!(vf["numa_node"], numa);
        assert_eq!(vf["ready"], true, "{vf:#}");
        assert!(failed_checks(vf).is_empty());
        assert!(
            vf["netdev"].is_string() && vf["rdma_device"].is_string() && vf["uverbs"].is_string()
        );
        assert_eq!(vf["link_layer"], "InfiniBand");
        assert_eq!(vf["state"], "4: ACTIVE");
        *per_pf.entry(pf.to_string()).or_default() += 1;
    }
    assert!(per_pf.values().all(|&n| n == 8), "{per_pf:?}");
}

#[test]
fn each_injected_fault_fails_exactly_its_check_with_the_observed_value() {
    if !require_root() {
        return;
    }
    // One fault per VF, spread over the PFs; (VF, fault, the check that must fail, a piece
    // of the observed value the message must carry).
    let cases: [(&str, Fault, Option<&str>, &str); 10] = [
        ("0000:18:00.1", Fault::LidZero, Some("lid"), "0x0"),
        ("0000:18:00.2", Fault::SmLidZero, Some("sm"), "sm_lid 0x0"),
        (
            "0000:40:00.1",
            Fault::PortDown,
            Some("port_state"),
            "1: DOWN",
        ),
        (
            "0000:40:00.2",
            Fault::ZeroGuid,
            Some("guid"),
            "0000:0000:0000:0000",
        ),
        (
            "0000:4f:00.1",
            Fault::EthFallback,
            Some("link_layer"),
            "Ethernet",
        ),
        (
            "0000:4f:00.2",
            Fault::Unbound,
            Some("driver"),
            "no driver bound",
        ),
        (
            "0000:5e:00.1",
            Fault::NoRdma,
            Some("rdma"),
            "no RDMA device",
        ),
        ("0000:5e:00.2", Fault::NumaUnknown, None, ""),
        (
            "0000:9a:00.1",
            Fault::HostManaged,
            Some("ownership"),
            "systemd-networkd",
        ),
        (
            "0000:9a:00.2",
            Fault::NmManaged,
            Some("ownership"),
            "NetworkManager",
        ),
    ];
    let mut opts = SimOptions::dgx_h200();
    for (vf, fault, ..) in cases {
        opts = opts.fault(vf, fault);
    }
    let sim = opts.build().expect("build the simulated node");
    let (r, code) = inspect(sim.root());
    assert_eq!(code, 1, "VFs of compute PFs are not ready: exit status 1");
    let vfs: BTreeMap<&str, &Value> = r["vfs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vf"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vfs.len(), 64);
    for (addr, fault, check, observed) in cases {
        let vf = vfs[addr];
        let mut failed = failed_checks(vf);
        if fault == Fault::EthFallback {
            // A port that fell back to Ethernet is a RoCE port: DOWN while the VF's netdev
            // is down in the host, as mlx5 reports it. Its own check comes first.
            assert_eq!(
                failed.get(1).map(|f| f.0.as_str()),
                Some("port_state"),
                "{failed:?}"
            );
            failed.truncate(1);
        }
        match check {
            Some(check) => {
                assert_eq!(
                    failed.len(),
                    1,
                    "{fault:?} on {addr} must fail only {check}: {failed:?}"
                );
                assert_eq!(failed[0].0, check, "{fault:?} on {addr}");
                assert!(
                    failed[0].1.contains(observed),
                    "{fault:?}: observed value {:?} must contain {observed:?}",
                    failed[0].1
                );
            }
            None => {
                assert!(failed.is_empty(), "{fault:?} fails no check: {failed:?}");
                assert!(
                    vf["numa_node"].is_null(),
                    "numa_node -1 is reported as unknown"
                );
            }
        }
    }
    let faulted: Vec<&str> = cases.iter().map(|c| c.0).collect();
    for (addr, vf) in &vfs {
        if !faulted.contains(addr) {
            assert_eq!(vf["ready"], true, "{addr} has no fault: {vf:#}");
        }
    }
    assert_eq!(r["compute_vfs_not_ready"], 9);
}

#[test]
fn text_output_spells_out_failures() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200()
        .fault("0000:c0:00.3", Fault::LidZero)
        .build()
        .expect("build the simulated node");
    let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
        .args(["inspect", "--host-root"])
        .arg(sim.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("0000:c0:00.3"))
        .expect("a line for the VF");
    assert!(
        line.contains("NOT READY: lid: found 0x0, expected a LID assigned by the Subnet Manager"),
        "{line}"
    );
    assert!(line.contains("mlx5_"), "{line}");
    let ready = text
        .lines()
        .filter(|l| l.starts_with("0000:") && l.ends_with(" ready"));
    assert_eq!(ready.count(), 63);
}

#[test]
fn missing_or_half_populated_trees_are_clear_errors() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
        .args(["inspect", "--host-root"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sys/bus/pci/devices") && err.contains("host root"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A VF directory without its attributes: reported, never a panic.
    let half = tempfile::tempdir().unwrap();
    let dev = half.path().join("sys/devices/pci0000:15/0000:18:00.1");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("class"), "0x020700\n").unwrap();
    std::fs::create_dir_all(half.path().join("sys/bus/pci/devices")).unwrap();
    std::os::unix::fs::symlink(dev, half.path().join("sys/bus/pci/devices/0000:18:00.1")).unwrap();
    let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
        .args(["inspect", "--host-root"])
        .arg(half.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreadable function is not ready: {text}{err}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("0000:18:00.1"))
        .expect("a line for it");
    assert!(
        line.contains("UNREADABLE") && line.contains("0000:18:00.1/vendor is missing"),
        "{line}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `inspect` as a table, with its exit status.
fn inspect_text(root: &Path) -> (String, i32) {
    let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
        .args(["inspect", "--host-root"])
        .arg(root)
        .output()
        .expect("run inspect");
    (
        String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

fn text_line<'a>(text: &'a str, vf: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(vf))
        .unwrap_or_else(|| panic!("no line for {vf}: {text}"))
}

fn vf_by_addr<'a>(r: &'a Value, addr: &str) -> &'a Value {
    r["vfs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vf"] == addr)
        .unwrap_or_else(|| panic!("inspect lists no VF {addr}: {r:#}"))
}

fn check<'a>(vf: &'a Value, name: &str) -> &'a Value {
    vf["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {vf:#}"))
}

/// A VF in a pod with RDMA namespace isolation: its netdev and RDMA device are in the pod's
/// namespace, so the host's sysfs shows neither. The device plugin counts it in use, not
/// broken, and so must inspect: a busy node is not a failing one. What can still be judged
/// (its driver, its PF's port) still counts.
#[test]
fn a_vf_in_a_pod_is_in_use_not_a_failure() {
    // The move is modelled on the tree (as the kernel shows it from the host), no links needed.
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let vf = sim.vf("0000:5e:00.2").unwrap();
    for sub in ["net", "infiniband", "infiniband_verbs"] {
        std::fs::remove_dir_all(vf.sysfs_dir.join(sub)).unwrap();
    }
    let (r, code) = inspect(sim.root());
    assert_eq!(code, 0, "a VF in use is no failure: {r:#}");
    let v = vf_by_addr(&r, "0000:5e:00.2");
    assert_eq!(v["in_use"], true, "{v:#}");
    assert_eq!(v["status"], "in_use", "{v:#}");
    assert_eq!(v["ready"], true, "{v:#}");
    assert!(failed_checks(v).is_empty(), "{v:#}");
    assert_eq!(check(v, "driver")["status"], "pass");
    for name in ["link_layer", "port_state"] {
        let c = check(v, name);
        assert_eq!(c["status"], "pass", "{c:#}");
        assert!(
            c["observed"]
                .as_str()
                .unwrap()
                .starts_with("PF 0000:5e:00.0 "),
            "{name} is the PF's: {c:#}"
        );
    }
    let rdma = check(v, "rdma");
    assert_eq!(rdma["status"], "skip", "{rdma:#}");
    assert!(
        rdma["observed"]
            .as_str()
            .unwrap()
            .contains("in a pod's network namespace"),
        "{rdma:#}"
    );
    assert_eq!(r["compute_vfs_not_ready"], 0);
    assert_eq!(r["compute_vfs_in_use"], 1);
    for other in r["vfs"].as_array().unwrap() {
        if other["vf"] != "0000:5e:00.2" {
            assert_eq!(other["status"], "ready", "{other:#}");
            assert_eq!(other["in_use"], false, "{other:#}");
        }
    }

    let (text, code) = inspect_text(sim.root());
    assert_eq!(code, 0, "{text}");
    let line = text_line(&text, "0000:5e:00.2");
    assert!(
        line.ends_with(" in use (in a pod's network namespace)"),
        "{line}"
    );
    assert!(
        text.contains("64 VFs, 64 on compute PFs, 0 of them not ready, 1 in use"),
        "{text}"
    );

    // Its PF's port going down is its port going down: not ready, though still in use.
    sim.set_port_state(
        vf.pf,
        railvf_sim::PortState::Down,
        railvf_sim::PhysState::Disabled,
    )
    .unwrap();
    let (r, code) = inspect(sim.root());
    assert_eq!(code, 1, "{r:#}");
    let v = vf_by_addr(&r, "0000:5e:00.2");
    assert_eq!(
        (&v["status"], &v["in_use"]),
        (&"not_ready".into(), &true.into()),
        "{v:#}"
    );
    let failed = failed_checks(v);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "port_state");
    assert!(
        failed[0].1.contains("PF 0000:5e:00.0") && failed[0].1.contains("1: DOWN"),
        "{failed:?}"
    );
    assert_eq!(r["compute_vfs_in_use"], 1);
    let (text, _) = inspect_text(sim.root());
    let line = text_line(&text, "0000:5e:00.2");
    assert!(
        line.contains("NOT READY (in use): port_state: found PF 0000:5e:00.0 state 1: DOWN"),
        "{line}"
    );
}

/// A RoCE node: the compute ports run Ethernet. With `--link-layer Ethernet` no LID or SM is
/// required, and a free VF, whose own RoCE port is DOWN while its netdev is down in the host
/// (as mlx5 reports it), takes its port state from its PF as the device plugin does.
#[test]
fn a_roce_node_is_ready_with_link_layer_ethernet() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().expect("sim with links");
    for (pf, ..) in RAILS {
        sim.set_link_layer(pf, railvf_sim::LinkLayer::Ethernet)
            .unwrap();
    }
    let (r, code) = inspect_with(sim.root(), &["--link-layer", "Ethernet"]);
    assert_eq!(code, 0, "a healthy RoCE node must exit 0: {r:#}");
    assert_eq!(r["link_layer_expected"], "Ethernet");
    assert_eq!(r["compute_vfs_not_ready"], 0);
    let vfs = r["vfs"].as_array().unwrap();
    assert_eq!(vfs.len(), 64);
    for v in vfs {
        assert_eq!(v["status"], "ready", "{v:#}");
        assert_eq!(v["link_layer"], "Ethernet", "{v:#}");
        // The VF's own port, shown as it is; the verdict is its PF's.
        assert_eq!(v["state"], "1: DOWN", "{v:#}");
        let ps = check(v, "port_state");
        assert_eq!(ps["status"], "pass", "{ps:#}");
        let pf = v["pf"].as_str().unwrap();
        assert!(
            ps["observed"]
                .as_str()
                .unwrap()
                .starts_with(&format!("PF {pf} state 4: ACTIVE")),
            "{ps:#}"
        );
        for name in ["lid", "sm"] {
            assert_eq!(check(v, name)["status"], "skip", "{v:#}");
        }
    }

    // One port back on InfiniBand: its VFs run the wrong link layer for this node.
    sim.set_link_layer(RAILS[2].0, railvf_sim::LinkLayer::InfiniBand)
        .unwrap();
    let (r, code) = inspect_with(sim.root(), &["--link-layer", "Ethernet"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["compute_vfs_not_ready"], 8);
    for v in r["vfs"].as_array().unwrap() {
        if v["pf"] == RAILS[2].0 {
            let failed = failed_checks(v);
            assert_eq!(failed[0].0, "link_layer", "{failed:?}");
            assert!(failed[0].1.contains("InfiniBand"), "{failed:?}");
        } else {
            assert_eq!(v["status"], "ready", "{v:#}");
        }
    }
}

#[test]
fn a_bad_link_layer_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    for bad in ["ib", "infiniband", "RoCE"] {
        let out = Command::new(railvf_e2e::bin_path("railvf-device-plugin"))
            .args(["inspect", "--link-layer", bad, "--host-root"])
            .arg(empty.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--link-layer")
                && err.contains("\"InfiniBand\"")
                && err.contains("\"Ethernet\"")
                && err.contains(&format!("found \"{bad}\"")),
            "{bad}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Every compute PF's rail as the three programs see it: `inspect` (the inventory scan), the
/// device plugin's node scan, and the CNI (its GPU sites and the PF's path).
fn rails_by_program(root: &Path) -> Vec<(String, Value, Option<u32>, Option<u32>)> {
    let host = railvf_host::HostRoot::new(root).expect("host root");
    let (json, _) = inspect(root);
    let node = railvf_device_plugin::pool::Node::scan(&host, None).expect("node scan");
    let cni_gpus = railvf_cni::rail::scan_gpus(&host).expect("CNI GPU scan");
    RAILS
        .iter()
        .map(|(pf, ..)| {
            let seen = json["pfs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["pf"] == *pf)
                .unwrap_or_else(|| panic!("inspect lists no PF {pf}"));
            let addr: railvf_host::PciAddr = pf.parse().unwrap();
            let plugin = node.pfs.iter().find(|p| p.addr == addr).unwrap().rail;
            let path = railvf_host::inventory::function_path(&host, &addr).unwrap();
            let cni = railvf_host::topology::detect_rail(&path, &cni_gpus).map(|r| r.index);
            (pf.to_string(), seen["rail"]["index"].clone(), plugin, cni)
        })
        .collect()
}

#[test]
fn every_program_numbers_gpus_alike_when_one_is_bound_to_another_driver() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let root = sim.root().to_path_buf();
    let agree = |rails: &[(String, Value, Option<u32>, Option<u32>)]| {
        for (pf, inspect, plugin, cni) in rails {
            assert_eq!(
                inspect.as_u64().map(|i| i as u32),
                *plugin,
                "PF {pf}: inspect and the device plugin disagree"
            );
            assert_eq!(
                plugin, cni,
                "PF {pf}: the device plugin and the CNI disagree"
            );
        }
    };
    let all = rails_by_program(&root);
    agree(&all);
    let want: Vec<Option<u32>> = (0..8).map(Some).collect();
    assert_eq!(all.iter().map(|r| r.2).collect::<Vec<_>>(), want);

    // GPU 3 handed to vfio-pci (to pass it to a VM): nvidia-smi no longer numbers it, and
    // the GPUs after it move up one.
    let drivers = root.join("sys/bus/pci/drivers");
    let gpu3 = GPUS[3];
    std::fs::create_dir_all(drivers.join("vfio-pci")).unwrap();
    std::fs::rename(
        drivers.join("nvidia").join(gpu3),
        drivers.join("vfio-pci").join(gpu3),
    )
    .unwrap();
    let dev = root.join("sys/bus/pci/devices").join(gpu3);
    let target = std::fs::read_link(dev.join("driver")).unwrap();
    std::fs::remove_file(dev.join("driver")).unwrap();
    std::os::unix::fs::symlink(target.with_file_name("vfio-pci"), dev.join("driver")).unwrap();
    let (json, _) = inspect(&root);
    let gpus: Vec<(String, u64)> = json["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["gpu"].as_str().unwrap().to_string(),
                g["index"].as_u64().unwrap(),
            )
        })
        .collect();
    let want_gpus: Vec<(String, u64)> = GPUS
        .iter()
        .filter(|g| **g != gpu3)
        .enumerate()
        .map(|(i, g)| (g.to_string(), i as u64))
        .collect();
    assert_eq!(
        gpus, want_gpus,
        "inspect numbers the GPUs nvidia-smi numbers"
    );
    let rails = rails_by_program(&root);
    agree(&rails);
    // Rails 0-2 keep their numbers, 4-7 become 3-6.
    for (i, (pf, _, plugin, _)) in rails.iter().enumerate() {
        match i {
            0..=2 => assert_eq!(*plugin, Some(i as u32), "PF {pf}"),
            4..=7 => assert_eq!(*plugin, Some(i as u32 - 1), "PF {pf}"),
            // GPU 3's NIC shares only its socket's host bridge with the other GPUs.
            _ => assert_eq!(*plugin, None, "PF {pf}"),
        }
    }
}
