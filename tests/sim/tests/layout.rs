//! Fixture layout against the kernel's formats and symlinks (no root needed: `no_links`).

mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::{link, read};
use railvf_sim::{Bdf, Fault, LinkLayer, NicRole, SimNode, SimOptions, Topology};

fn fixture() -> SimNode {
    SimOptions::dgx_h200().no_links().tag("lt").build().unwrap()
}

#[test]
fn pci_chain_shares_the_rail_switch_with_the_gpu() {
    let sim = fixture();
    let sys = sim.root().join("sys");
    let nic = fs::canonicalize(sys.join("bus/pci/devices/0000:18:00.0")).unwrap();
    let gpu = fs::canonicalize(sys.join("bus/pci/devices/0000:1b:00.0")).unwrap();
    let rel = |p: &Path| p.strip_prefix(&sys).unwrap().display().to_string();
    assert_eq!(
        rel(&nic),
        "devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"
    );
    assert_eq!(
        rel(&gpu),
        "devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:01.0/0000:19:00.0/0000:1a:00.0/0000:1b:00.0"
    );
    // Deepest shared bridge: the switch upstream port, below the host bridge (PXB).
    let shared: Vec<_> = nic
        .components()
        .zip(gpu.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(shared.last().unwrap().as_os_str(), "0000:16:00.0");
    // Another rail of the same socket shares only the socket, not the host bridge.
    let other = fs::canonicalize(sys.join("bus/pci/devices/0000:43:00.0")).unwrap();
    assert!(other.starts_with(sys.join("devices/pci0000:3d")));
    // Relative link, exactly as the kernel writes it.
    assert_eq!(
        link(sys.join("bus/pci/devices/0000:18:00.0")),
        "../../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"
    );
    // Bridges are PCI functions too.
    let bridge = sys.join("bus/pci/devices/0000:16:00.0");
    assert_eq!(read(bridge.join("class")), "0x060400\n");
    assert_eq!(read(bridge.join("vendor")), "0x1000\n");
    assert_eq!(
        link(bridge.join("driver")),
        "../../../../bus/pci/drivers/pcieport"
    );
    assert_eq!(
        read(sys.join("bus/pci/devices/0000:15:01.0/vendor")),
        "0x8086\n"
    );
}

#[test]
fn pf_attributes_match_the_kernel() {
    let sim = fixture();
    let pf = sim.root().join("sys/bus/pci/devices/0000:18:00.0");
    for (attr, want) in [
        ("vendor", "0x15b3\n"),
        ("device", "0x1021\n"),
        ("class", "0x020700\n"),
        ("numa_node", "0\n"),
        ("local_cpulist", "0-55,112-167\n"),
        ("sriov_totalvfs", "16\n"),
        ("sriov_numvfs", "8\n"),
        ("sriov_offset", "1\n"),
        ("sriov_stride", "1\n"),
        ("sriov_vf_device", "101e\n"),
    ] {
        assert_eq!(read(pf.join(attr)), want, "{attr}");
    }
    assert_eq!(
        link(pf.join("driver")),
        "../../../../../../bus/pci/drivers/mlx5_core"
    );
    assert_eq!(link(pf.join("subsystem")), "../../../../../../bus/pci");
    assert_eq!(link(pf.join("virtfn0")), "../0000:18:00.1");
    assert_eq!(link(pf.join("virtfn7")), "../0000:18:01.0");
    assert!(!pf.join("virtfn8").exists());
    assert!(!pf.join("physfn").exists());
    for n in 0..8 {
        let s = pf.join(format!("sriov/{n}"));
        assert_eq!(read(s.join("policy")), "Follow\n");
        let guid = read(s.join("node"));
        assert_eq!(guid.trim().split(':').count(), 8, "{guid}");
        assert_ne!(guid.trim(), "00:00:00:00:00:00:00:00");
    }
    let ib = pf.join("infiniband/mlx5_0");
    assert_eq!(link(ib.join("device")), "../../../0000:18:00.0");
    assert_eq!(read(ib.join("node_type")), "1: CA\n");
    assert_eq!(read(ib.join("fw_ver")), "28.39.1002\n");
    assert_eq!(read(ib.join("hca_type")), "MT4129\n");
    let guid = read(ib.join("node_guid"));
    assert_eq!(guid.len(), 20, "%04x:%04x:%04x:%04x: {guid}");
    assert_eq!(read(ib.join("sys_image_guid")), guid);
    let port = ib.join("ports/1");
    assert_eq!(read(port.join("state")), "4: ACTIVE\n");
    assert_eq!(read(port.join("phys_state")), "5: LinkUp\n");
    assert_eq!(read(port.join("sm_lid")), "0x1\n");
    assert_eq!(read(port.join("lid_mask_count")), "0\n");
    assert_eq!(read(port.join("link_layer")), "InfiniBand\n");
    assert_eq!(read(port.join("rate")), "400 Gb/sec (4X NDR)\n");
    assert!(read(port.join("lid")).starts_with("0x"));
    assert_eq!(
        read(port.join("gids/0")),
        format!("fe80:0000:0000:0000:{guid}")
    );
    assert_eq!(read(pf.join("net/ibp24s0/type")), "32\n");
    assert_eq!(link(pf.join("net/ibp24s0/device")), "../../../0000:18:00.0");
    assert_eq!(read(pf.join("infiniband_verbs/uverbs0/ibdev")), "mlx5_0\n");
    assert_eq!(read(pf.join("infiniband_verbs/uverbs0/dev")), "231:192\n");
    let sys = sim.root().join("sys");
    assert_eq!(
        link(sys.join("class/net/ibp24s0")),
        "../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0/net/ibp24s0"
    );
    assert!(sys.join("class/infiniband/mlx5_0/ports/1/state").exists());
    assert!(sys.join("class/infiniband_verbs/uverbs0/ibdev").exists());
    assert!(sim.root().join("dev/infiniband/uverbs0").is_file());
    assert!(sim.root().join("dev/infiniband/rdma_cm").is_file());
    assert!(sys.join("bus/pci/drivers/mlx5_core/bind").is_file());
    assert!(sys.join("bus/pci/drivers/mlx5_core/unbind").is_file());
    assert_eq!(
        read(sys.join("devices/system/node/node1/cpulist")),
        "56-111,168-223\n"
    );
}

#[test]
fn vf_attributes_names_and_numbering() {
    let sim = fixture();
    let vfs = sim.vfs();
    assert_eq!(vfs.len(), 64);
    let vf = sim.vf("0000:18:00.1").unwrap();
    assert_eq!(
        (vf.rdma_device.as_str(), vf.uverbs, vf.index),
        ("mlx5_12", 12, 0)
    );
    assert_eq!(vf.netdev, "ltp24s0f1");
    assert_eq!(sim.vf("0000:18:01.0").unwrap().netdev, "ltp24s1");
    assert_eq!(sim.vf("0000:18:01.0").unwrap().rdma_device, "mlx5_19");
    // mlx5_3 (the next PF with VFs) continues the numbering.
    assert_eq!(sim.vf("0000:40:00.1").unwrap().rdma_device, "mlx5_20");
    assert_eq!(sim.vf("0000:dc:01.0").unwrap().rdma_device, "mlx5_75");
    let names: std::collections::BTreeSet<_> = vfs.iter().map(|v| v.rdma_device.clone()).collect();
    assert_eq!(names.len(), 64);

    let d = sim.root().join("sys/bus/pci/devices/0000:18:00.1");
    assert_eq!(
        fs::canonicalize(&d).unwrap(),
        fs::canonicalize(&vf.sysfs_dir).unwrap()
    );
    assert_eq!(read(d.join("device")), "0x101e\n");
    assert_eq!(read(d.join("class")), "0x020700\n");
    assert_eq!(link(d.join("physfn")), "../0000:18:00.0");
    assert_eq!(
        link(d.join("driver")),
        "../../../../../../bus/pci/drivers/mlx5_core"
    );
    assert!(!d.join("sriov_numvfs").exists());
    let ib = d.join("infiniband/mlx5_12");
    assert_eq!(read(ib.join("hca_type")), "MT4126\n");
    assert_eq!(read(ib.join("ports/1/state")), "4: ACTIVE\n");
    assert_ne!(read(ib.join("ports/1/lid")), "0x0\n");
    assert_ne!(read(ib.join("node_guid")), "0000:0000:0000:0000\n");
    // VFs share the PF's system image GUID.
    assert_eq!(
        read(ib.join("sys_image_guid")),
        read(
            sim.root()
                .join("sys/class/infiniband/mlx5_0/sys_image_guid")
        )
    );
    assert_eq!(read(d.join("infiniband_verbs/uverbs12/ibdev")), "mlx5_12\n");
    assert_eq!(read(d.join("infiniband_verbs/uverbs12/dev")), "231:204\n");
    // Beyond 32 uverbs devices ib_uverbs uses a dynamic char region.
    let far = sim.vf("0000:dc:01.0").unwrap().sysfs_dir;
    assert_eq!(read(far.join("infiniband_verbs/uverbs75/dev")), "240:43\n");
    assert!(sim.root().join("dev/infiniband/uverbs75").is_file());
    // ib_umad: a umad and an issm node per port, fixed minors for the first 64 ports.
    assert_eq!(read(d.join("infiniband_mad/umad12/ibdev")), "mlx5_12\n");
    assert_eq!(read(d.join("infiniband_mad/umad12/port")), "1\n");
    assert_eq!(read(d.join("infiniband_mad/umad12/dev")), "231:12\n");
    assert_eq!(read(d.join("infiniband_mad/issm12/dev")), "231:76\n");
    assert!(sim.root().join("dev/infiniband/issm12").is_file());
    assert!(
        sim.root()
            .join("sys/class/infiniband_mad/umad12/ibdev")
            .exists()
    );
    assert_eq!(read(far.join("infiniband_mad/umad75/dev")), "241:22\n");
    assert_eq!(read(far.join("infiniband_mad/issm75/dev")), "241:23\n");
    // Every LID is unique.
    let lids: std::collections::BTreeSet<_> = vfs.iter().map(|v| v.lid).collect();
    assert_eq!(lids.len(), 64);
    assert!(!lids.contains(&0));
    // VF netdev (fixture only without links) is under net/ and class/net.
    assert_eq!(read(d.join("net/ltp24s0f1/type")), "32\n");
    assert!(sim.root().join("sys/class/net/ltp24s0f1/ifindex").exists());
}

#[test]
fn gpus_and_nvidia_proc_files() {
    let sim = fixture();
    let g = sim.root().join("sys/bus/pci/devices/0000:1b:00.0");
    assert_eq!(read(g.join("vendor")), "0x10de\n");
    assert_eq!(read(g.join("device")), "0x2335\n");
    assert_eq!(read(g.join("class")), "0x030200\n");
    assert_eq!(
        link(g.join("driver")),
        "../../../../../../../../bus/pci/drivers/nvidia"
    );
    let info = read(
        sim.root()
            .join("proc/driver/nvidia/gpus/0000:1b:00.0/information"),
    );
    assert!(info.starts_with("Model: \t\t NVIDIA H200\n"), "{info}");
    assert!(info.contains("Bus Location: \t 0000:1b:00.0\n"), "{info}");
    assert!(info.contains("Device Minor: \t 0\n"), "{info}");
    let uuid = sim.gpu_uuid("0000:1b:00.0").unwrap();
    assert!(info.contains(&format!("GPU UUID: \t {uuid}\n")), "{info}");
    let h100 = SimOptions::dgx_h100().no_links().build().unwrap();
    let info = read(
        h100.root()
            .join("proc/driver/nvidia/gpus/0000:df:00.0/information"),
    );
    assert!(
        info.starts_with("Model: \t\t NVIDIA H100 80GB HBM3\n"),
        "{info}"
    );
    assert!(info.contains("Device Minor: \t 7\n"), "{info}");
}

#[test]
fn storage_pfs_exist_without_vfs() {
    let sim = fixture();
    let st = sim.pf("0000:29:00.0").unwrap();
    assert_eq!((st.role, st.vfs.len()), (NicRole::Storage, 0));
    let eth = sim.pf("0000:29:00.1").unwrap();
    assert_eq!(eth.link_layer, LinkLayer::Ethernet);
    let d = &eth.sysfs_dir;
    assert_eq!(read(d.join("class")), "0x020000\n");
    assert_eq!(
        read(d.join("infiniband/mlx5_2/ports/1/link_layer")),
        "Ethernet\n"
    );
    assert_eq!(read(d.join("infiniband/mlx5_2/ports/1/lid")), "0x0\n");
    assert_eq!(read(d.join("net/enp41s0f1np1/type")), "1\n");
    assert_eq!(read(d.join("sriov_numvfs")), "0\n");
    // A dual-port card's PF 0 places its VFs after both PFs.
    assert_eq!(read(st.sysfs_dir.join("sriov_offset")), "2\n");
    assert_eq!(read(d.join("sriov_offset")), "17\n");
    let with_storage = SimOptions::dgx_h200()
        .no_links()
        .storage_vfs_per_pf(2)
        .build()
        .unwrap();
    let st = with_storage.pf("0000:29:00.0").unwrap();
    assert_eq!(st.vfs[0].to_string(), "0000:29:00.2");
    assert_eq!(
        with_storage.pf("0000:29:00.1").unwrap().vfs[0].to_string(),
        "0000:29:02.2"
    );
}

#[test]
fn real_names_follow_systemd() {
    let sim = SimOptions::dgx_h200()
        .no_links()
        .real_names()
        .build()
        .unwrap();
    assert_eq!(sim.vf("0000:18:00.1").unwrap().netdev, "ibp24s0f1");
    assert_eq!(sim.vf("0000:18:01.0").unwrap().netdev, "ibp24s1");
    assert_eq!(sim.vf("0000:dc:00.7").unwrap().netdev, "ibp220s0f7");
    let sixteen = SimOptions::dgx_h200()
        .no_links()
        .real_names()
        .vfs_per_pf(16)
        .build()
        .unwrap();
    // With 16 VFs device 01 is multi-function: the f0 suffix appears.
    assert_eq!(sixteen.vf("0000:18:01.0").unwrap().netdev, "ibp24s1f0");
    assert!(
        SimOptions::dgx_h200()
            .no_links()
            .vfs_per_pf(17)
            .build()
            .is_err()
    );
}

#[test]
fn synthetic_scale_node_without_links() {
    let t0 = Instant::now();
    let sim = SimOptions::new(Topology::synthetic(32, 64).unwrap())
        .no_links()
        .build()
        .unwrap();
    let built = t0.elapsed();
    assert_eq!(sim.vfs().len(), 2048);
    assert_eq!(sim.pfs().len(), 32);
    let last = sim.vfs().last().unwrap().clone();
    assert_eq!(last.rdma_device, "mlx5_2079");
    assert!(
        last.sysfs_dir
            .join("infiniband/mlx5_2079/ports/1/state")
            .exists()
    );
    // Each PF's GPU is found through the shared switch.
    let nic = fs::canonicalize(sim.root().join("sys/bus/pci/devices/0000:04:00.0")).unwrap();
    let gpu = fs::canonicalize(sim.root().join("sys/bus/pci/devices/0000:07:00.0")).unwrap();
    assert_eq!(
        nic.parent().unwrap().parent().unwrap(),
        gpu.parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
    );
    println!("2048-VF fixture built in {built:?}");
}

#[test]
fn clean_up_on_drop_and_keep_root() {
    let sim = fixture();
    let root = sim.root().to_owned();
    assert!(root.join("sys").exists());
    drop(sim);
    assert!(!root.exists());

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("node");
    let sim = SimOptions::dgx_h200()
        .no_links()
        .root(&target)
        .keep_root()
        .build()
        .unwrap();
    drop(sim);
    assert!(target.join("sys/bus/pci/devices/0000:18:00.0").exists());
    // A non-empty root is refused rather than overwritten.
    assert!(
        SimOptions::dgx_h200()
            .no_links()
            .root(&target)
            .build()
            .is_err()
    );
}

#[test]
fn bad_options_are_rejected() {
    assert!(
        SimOptions::dgx_h200()
            .no_links()
            .tag("TOOLONG")
            .build()
            .is_err()
    );
    assert!(
        SimOptions::dgx_h200()
            .no_links()
            .fault("0000:18:00", Fault::LidZero)
            .build()
            .is_err()
    );
    assert!(
        SimOptions::dgx_h200()
            .no_links()
            .fault("0000:77:00.0", Fault::LidZero)
            .build()
            .is_err()
    );
    assert!(Bdf::parse("0000:18:00.1").is_ok());
}
