//! The open-file limit on a node with more VFs than it allows. A test binary of its own:
//! it lowers this process's limit, which would starve any test running beside it.

use std::fs::File;

use nix::sys::resource::{Resource, setrlimit};
use railvf_device_plugin::config::Config;
use railvf_device_plugin::health::{FD_HEADROOM, kept_descriptors, reserve_fd_headroom};
use railvf_device_plugin::pool::{Monitor, Node};
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
    assert_eq!(reserve_fd_headroom(), limit);

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

    // The last VF scanned has no descriptor; its port going down is still seen.
    let last = sim.vfs().last().unwrap().pci.to_string();
    sim.inject_fault(last.as_str(), Fault::PortDown).unwrap();
    m.poll();
    let after = (**handles[0].devices.borrow()).clone();
    let down = &after.devices[&last.parse().unwrap()];
    assert!(!down.health.is_healthy(), "{down:?}");
    assert_eq!(
        after
            .devices
            .values()
            .filter(|d| !d.health.is_healthy())
            .count(),
        1
    );
}
