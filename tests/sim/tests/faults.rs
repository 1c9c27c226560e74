//! Faults change exactly their attributes; the simulated SM reacts to GUID writes.
//! No root needed (`no_links`).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{diff, read, snapshot};
use railvf_sim::{Fault, LinkLayer, PhysState, PortState, SimOptions};

const VF: &str = "0000:18:00.1";
const VFDIR: &str = "sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.1";

fn expected(fault: Fault, ifindex: u32) -> Vec<String> {
    let port = format!("{VFDIR}/infiniband/mlx5_12/ports/1");
    let p = |s: &str| format!("~{port}/{s}");
    let mut v = match fault {
        Fault::LidZero => vec![p("lid")],
        Fault::SmLidZero => vec![p("sm_lid")],
        Fault::PortDown => vec![p("phys_state"), p("state")],
        Fault::ZeroGuid => vec![
            p("gids/0"),
            format!("~{VFDIR}/infiniband/mlx5_12/node_guid"),
        ],
        Fault::EthFallback => vec![
            format!("~{VFDIR}/class"),
            format!("~{VFDIR}/net/ftp24s0f1/type"),
            p("lid"),
            p("link_layer"),
            p("sm_lid"),
        ],
        Fault::NumaUnknown => vec![
            format!("~{VFDIR}/local_cpulist"),
            format!("~{VFDIR}/numa_node"),
        ],
        Fault::HostManaged => vec![
            "+run".into(),
            "+run/systemd".into(),
            "+run/systemd/netif".into(),
            "+run/systemd/netif/links".into(),
            format!("+run/systemd/netif/links/{ifindex}"),
        ],
        Fault::NmManaged => vec![
            "+run".into(),
            "+run/NetworkManager".into(),
            "+run/NetworkManager/devices".into(),
            format!("+run/NetworkManager/devices/{ifindex}"),
        ],
        Fault::NoRdma | Fault::Unbound => {
            let mut v = vec![
                "-dev/infiniband/issm12".to_owned(),
                "-dev/infiniband/umad12".to_owned(),
                "-dev/infiniband/uverbs12".to_owned(),
                "-sys/class/infiniband/mlx5_12".to_owned(),
                "-sys/class/infiniband_mad/issm12".to_owned(),
                "-sys/class/infiniband_mad/umad12".to_owned(),
                "-sys/class/infiniband_verbs/uverbs12".to_owned(),
            ];
            // Whole subtrees go; list their roots, the rest is checked by prefix.
            v.push(format!("-{VFDIR}/infiniband"));
            v.push(format!("-{VFDIR}/infiniband_mad"));
            v.push(format!("-{VFDIR}/infiniband_verbs"));
            if fault == Fault::Unbound {
                v.push(format!("-{VFDIR}/driver"));
                v.push(format!("-{VFDIR}/net"));
                v.push("-sys/class/net/ftp24s0f1".into());
                v.push(format!("-sys/bus/pci/drivers/mlx5_core/{VF}"));
            }
            v
        }
    };
    v.sort();
    v
}

/// Collapses removed subtrees to their top path.
fn collapse(d: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in d {
        let covered = out.iter().any(|o| {
            o.starts_with('-') && p.starts_with('-') && p[1..].starts_with(&format!("{}/", &o[1..]))
        });
        if !covered {
            out.push(p);
        }
    }
    out
}

#[test]
fn each_fault_changes_exactly_its_attributes() {
    let sim = SimOptions::dgx_h200().no_links().tag("ft").build().unwrap();
    let ifindex = sim.vf(VF).unwrap().host_netdev.unwrap().ifindex;
    let base = snapshot(sim.root());
    for fault in Fault::ALL {
        sim.inject_fault(VF, fault).unwrap();
        let got = collapse(diff(&base, &snapshot(sim.root())));
        assert_eq!(got, expected(fault, ifindex), "{fault}");
        assert_eq!(sim.faults(VF).unwrap(), vec![fault]);
        sim.clear_fault(VF, fault).unwrap();
        assert_eq!(
            diff(&base, &snapshot(sim.root())),
            Vec::<String>::new(),
            "clearing {fault}"
        );
    }
    // Values, not just paths.
    let port = sim.root().join(VFDIR).join("infiniband/mlx5_12/ports/1");
    sim.inject_fault(VF, Fault::PortDown).unwrap();
    assert_eq!(read(port.join("state")), "1: DOWN\n");
    assert_eq!(read(port.join("phys_state")), "3: Disabled\n");
    sim.clear_fault(VF, Fault::PortDown).unwrap();
    sim.inject_fault(VF, Fault::EthFallback).unwrap();
    assert_eq!(read(port.join("link_layer")), "Ethernet\n");
    assert_eq!(read(sim.root().join(VFDIR).join("class")), "0x020000\n");
    assert_eq!(read(port.join("lid")), "0x0\n");
    sim.clear_fault(VF, Fault::EthFallback).unwrap();
    sim.inject_fault(VF, Fault::NumaUnknown).unwrap();
    assert_eq!(read(sim.root().join(VFDIR).join("numa_node")), "-1\n");
    assert_eq!(
        read(sim.root().join(VFDIR).join("local_cpulist")),
        "0-223\n"
    );
    sim.clear_fault(VF, Fault::NumaUnknown).unwrap();
    sim.inject_fault(VF, Fault::HostManaged).unwrap();
    let nd = read(
        sim.root()
            .join(format!("run/systemd/netif/links/{ifindex}")),
    );
    assert!(nd.contains("\nADMIN_STATE=configured\n"), "{nd}");
    assert!(nd.contains("\nOPER_STATE=routable\n"), "{nd}");
    assert!(
        nd.contains("\nNETWORK_FILE=/etc/systemd/network/50-vf.network\n"),
        "{nd}"
    );
    sim.inject_fault(VF, Fault::NmManaged).unwrap();
    assert_eq!(
        read(
            sim.root()
                .join(format!("run/NetworkManager/devices/{ifindex}"))
        ),
        "[device]\nmanaged=true\n"
    );
}

#[test]
fn a_pf_fault_covers_its_vfs_only() {
    let sim = SimOptions::dgx_h200()
        .no_links()
        .fault("0000:40:00.0", Fault::PortDown)
        .build()
        .unwrap();
    let state = |vf: &str| {
        read(sim.vf(vf).unwrap().sysfs_dir.join(format!(
            "infiniband/{}/ports/1/state",
            sim.vf(vf).unwrap().rdma_device
        )))
    };
    assert_eq!(
        read(sim.root().join("sys/class/infiniband/mlx5_3/ports/1/state")),
        "1: DOWN\n"
    );
    assert_eq!(state("0000:40:00.1"), "1: DOWN\n");
    assert_eq!(state("0000:40:01.0"), "1: DOWN\n");
    assert_eq!(state(VF), "4: ACTIVE\n");
    assert_eq!(sim.faults("0000:40:00.3").unwrap(), vec![Fault::PortDown]);
    sim.clear_fault("0000:40:00.0", Fault::PortDown).unwrap();
    assert_eq!(state("0000:40:00.1"), "4: ACTIVE\n");

    // A PF that falls back to Ethernet takes its VFs along.
    sim.set_link_layer("0000:40:00.0", LinkLayer::Ethernet)
        .unwrap();
    let vf = sim.vf("0000:40:00.1").unwrap();
    assert_eq!(read(vf.sysfs_dir.join("class")), "0x020000\n");
    assert_eq!(
        read(vf.sysfs_dir.join("infiniband/mlx5_20/ports/1/link_layer")),
        "Ethernet\n"
    );
    sim.set_link_layer("0000:40:00.0", LinkLayer::InfiniBand)
        .unwrap();
    assert_eq!(read(vf.sysfs_dir.join("class")), "0x020700\n");
}

#[test]
fn runtime_port_state_and_driver_binding() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let vf = sim.vf(VF).unwrap();
    let port = vf.sysfs_dir.join("infiniband/mlx5_12/ports/1");
    sim.set_port_state(VF, PortState::Init, PhysState::Polling)
        .unwrap();
    assert_eq!(read(port.join("state")), "2: INIT\n");
    assert_eq!(read(port.join("phys_state")), "2: Polling\n");
    sim.clear_port_state(VF).unwrap();
    assert_eq!(read(port.join("state")), "4: ACTIVE\n");

    sim.unbind_driver(VF).unwrap();
    assert!(fs::symlink_metadata(vf.sysfs_dir.join("driver")).is_err());
    assert!(!vf.sysfs_dir.join("infiniband").exists());
    assert!(!vf.sysfs_dir.join("net").exists());
    assert!(!sim.vf(VF).unwrap().bound);
    sim.bind_driver(VF).unwrap();
    assert!(port.join("state").exists());
    assert!(sim.vf(VF).unwrap().bound);
}

#[test]
fn sm_assigns_lid_after_delay_and_clears_it_on_zero_guid() {
    let delay = Duration::from_millis(150);
    let sim = SimOptions::dgx_h200()
        .no_links()
        .unassigned_guids()
        .lid_delay(delay)
        .build()
        .unwrap();
    let vf = sim.vf(VF).unwrap();
    let ib = vf.sysfs_dir.join("infiniband/mlx5_12");
    let port = ib.join("ports/1");
    let sriov = sim.root().join("sys/bus/pci/devices/0000:18:00.0/sriov/0");
    assert_eq!(read(sriov.join("node")), "00:00:00:00:00:00:00:00\n");
    assert_eq!(read(ib.join("node_guid")), "0000:0000:0000:0000\n");
    assert_eq!(read(port.join("lid")), "0x0\n");
    assert_eq!(read(port.join("sm_lid")), "0x0\n");
    assert_eq!(read(port.join("state")), "1: DOWN\n");

    // Write the MLNX_OFED files the way the CNI does, then only watch sysfs (no sync()).
    let t0 = Instant::now();
    fs::write(sriov.join("node"), "11:22:33:44:77:66:77:90").unwrap();
    fs::write(sriov.join("port"), "11:22:33:44:77:66:77:90").unwrap();
    let mut guid_seen = None;
    // The SM's assignment rewrites several port files, one after another (`lid` before
    // `state`): wait until the port shows all of it, not just the first file written.
    while read(port.join("lid")) == "0x0\n" || read(port.join("state")) != "4: ACTIVE\n" {
        if guid_seen.is_none() && read(ib.join("node_guid")) == "1122:3344:7766:7790\n" {
            guid_seen = Some(t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no LID assigned");
        std::thread::sleep(Duration::from_millis(1));
    }
    let lid_at = t0.elapsed();
    assert!(lid_at >= delay, "LID after {lid_at:?}, before lid_delay");
    // The GUID shows in sysfs while the port still waits for its LID, as on a real port.
    assert!(guid_seen.is_some(), "GUID shown before the LID");
    assert_eq!(read(port.join("state")), "4: ACTIVE\n");
    assert_eq!(read(port.join("phys_state")), "5: LinkUp\n");
    assert_eq!(read(port.join("sm_lid")), "0x1\n");
    assert_eq!(
        read(port.join("gids/0")),
        "fe80:0000:0000:0000:1122:3344:7766:7790\n"
    );
    let lid = read(port.join("lid"));

    // Zeroing the GUID takes the port down and the LID away.
    sim.set_guid(VF, 0, 0).unwrap();
    assert_eq!(read(port.join("lid")), "0x0\n");
    assert_eq!(read(port.join("state")), "1: DOWN\n");
    // The same GUID gets the same LID back (the SM's GUID-to-LID map).
    sim.set_guid(VF, 0x1122_3344_7766_7790, 0x1122_3344_7766_7790)
        .unwrap();
    assert_eq!(read(port.join("state")), "2: INIT\n");
    assert_eq!(
        sim.wait_lid(VF, Duration::from_secs(5)).unwrap(),
        sim.vf(VF).unwrap().lid
    );
    assert_eq!(read(port.join("lid")), lid);

    // "LID never assigned" holds even when a GUID arrives.
    sim.inject_fault("0000:18:00.2", Fault::LidZero).unwrap();
    sim.set_guid("0000:18:00.2", 7, 7).unwrap();
    std::thread::sleep(delay * 2);
    sim.sync().unwrap();
    let vf2 = sim.vf("0000:18:00.2").unwrap();
    assert_eq!(
        read(vf2.sysfs_dir.join("infiniband/mlx5_13/ports/1/lid")),
        "0x0\n"
    );
    assert_eq!(
        read(vf2.sysfs_dir.join("infiniband/mlx5_13/ports/1/state")),
        "4: ACTIVE\n"
    );
}

/// A reader must never see the new GUID beside the LID of the old one: the port takes the
/// LID away first (inotify reports the renames that put the files in place, in order), and
/// the SM's new LID comes with the time it was assigned.
#[test]
fn a_new_port_guid_takes_the_old_lid_away_before_it_shows() {
    use inotify::{Inotify, WatchMask};
    let delay = Duration::from_millis(50);
    let sim = SimOptions::dgx_h200()
        .no_links()
        .lid_delay(delay)
        .build()
        .unwrap();
    let vf = sim.vf(VF).unwrap();
    assert_ne!(vf.lid, 0, "the VF starts with a LID");
    assert_eq!(
        vf.lid_assigned_at, None,
        "a LID there from the start has no time"
    );
    let ib = vf.sysfs_dir.join("infiniband/mlx5_12");
    let mut ino = Inotify::init().unwrap();
    for d in [ib.clone(), ib.join("ports/1"), ib.join("ports/1/gids")] {
        ino.watches().add(&d, WatchMask::MOVED_TO).unwrap();
    }
    let t0 = Instant::now();
    sim.set_guid(VF, 0x0200_0000_0000_0a01, 0x0200_0000_0000_0a01)
        .unwrap();
    let mut buf = [0u8; 4096];
    let written: Vec<String> = ino
        .read_events(&mut buf)
        .unwrap()
        .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let at = |name: &str| {
        written
            .iter()
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("{name} was not written; writes: {written:?}"))
    };
    // "0" is gids/0.
    assert!(
        at("lid") < at("node_guid") && at("lid") < at("0"),
        "{written:?}"
    );
    assert_eq!(sim.vf(VF).unwrap().lid_assigned_at, None, "LID pending");
    let lid = sim.wait_lid(VF, Duration::from_secs(5)).unwrap();
    let seen = Instant::now();
    let v = sim.vf(VF).unwrap();
    assert_eq!((v.lid, v.port_guid), (lid, 0x0200_0000_0000_0a01));
    let assigned = v.lid_assigned_at.expect("the SM's LID has a time");
    assert!(assigned >= t0 + delay && assigned <= seen, "{assigned:?}");
}

#[test]
fn writing_sriov_numvfs_creates_and_removes_vfs() {
    let sim = SimOptions::dgx_h200()
        .no_links()
        .unassigned_guids()
        .build()
        .unwrap();
    let pf = sim.pf("0000:18:00.0").unwrap().sysfs_dir;
    fs::write(pf.join("sriov_numvfs"), "12\n").unwrap();
    sim.wait_for("12 VFs", Duration::from_secs(5), |s| {
        s.pf("0000:18:00.0").unwrap().vfs.len() == 12
    })
    .unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "12\n");
    assert_eq!(common::link(pf.join("virtfn11")), "../0000:18:01.4");
    let new = sim.vf("0000:18:01.4").unwrap();
    // 18:01.x is multi-function now, but names given at creation stay.
    assert_eq!(new.netdev.len(), sim.tag().len() + "p24s1f4".len());
    assert_eq!(new.rdma_device, "mlx5_79");
    assert_eq!(read(pf.join("sriov/11/node")), "00:00:00:00:00:00:00:00\n");
    sim.remove_vfs("0000:18:00.0", 10).unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "2\n");
    assert!(!pf.join("virtfn2").exists());
    assert!(!pf.join("sriov/2").exists());
    assert!(!sim.root().join("sys/bus/pci/devices/0000:18:00.3").exists());
    // Over sriov_totalvfs: the write is refused and the value stays.
    fs::write(pf.join("sriov_numvfs"), "99\n").unwrap();
    sim.sync().unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "2\n");
    assert!(sim.set_num_vfs("0000:18:00.0", 17).is_err());
    // Freed RDMA indexes are reused lowest-first, like the kernel's IDA.
    sim.add_vfs("0000:18:00.0", 1).unwrap();
    assert_eq!(sim.vf("0000:18:00.3").unwrap().rdma_device, "mlx5_14");
}
