//! The open-file limit on a node with more VFs than it allows. A test binary of its own:
//! it lowers this process's limit, which would starve any test running beside it.

use std::fs::File;

use nix::sys::resource::{Resource, setrlimit};
use railvf_device_plugin::config::Config;
use railvf_device_plugin::health::{FD_HEADROOM, kept_descriptors, reserve_fd_headroom};
use railvf_device_plugin::pool::{FULL_READ_EVERY, Monitor, Node};
use railvf_host::HostRoot;
use railvf_sim::{Fault, SimOptions, Topology};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// With a limit below one descriptor per VF, the probes keep descriptors only up to the
/// limit less the headroom: the rest of the plugin (gRPC sockets, listings, device-info
/// files) can still open files, and the VFs beyond the cap are polled by path, changes
/// included.
#[test]
fn more_vfs_than_the_open_file_limit_allows_leaves_the_headroom_and_polls_every_vf() {
    let sim = SimOptions::new(Topology::synthetic(8, 64).unwrap())
        .no_links()
        .build()
        .expect("sim");
    let vfs = sim.vfs().len();
    let limit = open_descriptors() as u64 + 400;
    assert!(limit < vfs as u64 + FD_HEADROOM, "the test needs more VFs");
    setrlimit(Resource::RLIMIT_NOFILE, limit, limit).unwrap();
    assert_eq!(reserve_fd_headroom(), Some(limit));

    let root = HostRoot::new(sim.root()).unwrap();
    let (mut m, handles) =
        Monitor::new(Node::scan(&root, None).unwrap(), &Config::default_config());
    m.poll();
    // Half the headroom, opened after the scan and a poll, is there.
    let files: Result<Vec<File>, _> = (0..FD_HEADROOM / 2)
        .map(|_| File::open("/dev/null"))
        .collect();
    let files = files.unwrap_or_else(|e| panic!("the plugin left no headroom under {limit}: {e}"));
    drop(files);
    let cap = (limit - FD_HEADROOM) as usize;
    assert_eq!(
        kept_descriptors(),
        cap,
        "probes keep descriptors up to the cap"
    );

    let all = (**handles[0].devices.borrow()).clone();
    assert_eq!(all.devices.len(), vfs);
    assert!(all.devices.values().all(|d| d.health.is_healthy()));

    // The first VFs' RDMA devices are re-created under new names (a driver rebind): each
    // new port gets the slot its old one held, so the probes still keep the full cap.
    let rebind = |m: &mut Monitor, from: &str, to: &str| {
        for vf in sim.vfs().iter().take(16) {
            let ib = vf.sysfs_dir.join("infiniband");
            let name = |suffix: &str| ib.join(format!("{}{suffix}", vf.rdma_device));
            std::fs::rename(name(from), name(to)).unwrap();
        }
        for _ in 0..FULL_READ_EVERY {
            m.poll();
        }
        assert_eq!(
            kept_descriptors(),
            cap,
            "re-created devices keep their slots"
        );
    };
    rebind(&mut m, "", "x");
    rebind(&mut m, "x", "");

    // Every port goes down: the VFs with a kept descriptor and those polled by path alike
    // are seen.
    for vf in sim.vfs() {
        sim.inject_fault(vf.pci.to_string().as_str(), Fault::PortDown)
            .unwrap();
    }
    m.poll();
    let after = (**handles[0].devices.borrow()).clone();
    let still = after
        .devices
        .iter()
        .filter(|(_, d)| d.health.is_healthy())
        .map(|(addr, _)| addr.to_string())
        .collect::<Vec<_>>();
    assert!(still.is_empty(), "still Healthy: {still:?}");
    assert_eq!(kept_descriptors(), cap);
}
