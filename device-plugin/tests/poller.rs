//! The health poller driven poll by poll (`Monitor::poll`, as its thread calls it) on the
//! simulated DGX H200, for what only shows over several polls while the plugin runs.

use std::path::Path;

use std::sync::{Arc, Mutex};

use railvf_device_plugin::config::Config;
use railvf_device_plugin::pool::{DeviceSet, FULL_READ_EVERY, Monitor, Node, ResourceHandle};
use railvf_host::{HostRoot, PciAddr};
use railvf_sim::{Fault, SimNode, SimOptions};

fn start() -> (SimNode, Monitor, ResourceHandle) {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let root = HostRoot::new(sim.root()).unwrap();
    let (m, mut handles) =
        Monitor::new(Node::scan(&root, None).unwrap(), &Config::default_config());
    (sim, m, handles.remove(0))
}

fn devices(h: &ResourceHandle) -> DeviceSet {
    (**h.devices.borrow()).clone()
}

/// The kernel moves a VF's RDMA device into a pod's namespace (RDMA in exclusive netns
/// mode) without deleting its sysfs directory: it leaves the host's listing of
/// `<fn>/infiniband` while reads through a descriptor the plugin already holds go on
/// working. Modelled by renaming the directories out of the VF's (netdev and uverbs
/// device with them). The running plugin must see the VF in a pod within one round of
/// full reads, and back in the host after the CNI's DEL.
#[test]
fn a_vf_whose_rdma_device_moves_into_a_pod_while_running_is_seen_in_the_pod() {
    let (sim, mut m, h) = start();
    let vf = sim.vf("0000:5e:00.2").unwrap();
    let addr: PciAddr = vf.pci.to_string().parse().unwrap();
    assert!(!devices(&h).devices[&addr].in_pod);
    let pod = tempfile::tempdir_in(sim.root()).unwrap();
    move_entries(&vf.sysfs_dir, pod.path());
    assert!(
        pod.path()
            .join("infiniband")
            .join(&vf.rdma_device)
            .join("ports/1/state")
            .exists()
    );
    for _ in 0..FULL_READ_EVERY {
        m.poll();
    }
    let d = devices(&h).devices[&addr].clone();
    assert!(
        d.in_pod && d.health.is_healthy(),
        "after {FULL_READ_EVERY} polls: {d:?}"
    );
    assert!(h.allocations.is_allocated(&d));

    move_entries(pod.path(), &vf.sysfs_dir);
    m.poll();
    let d = devices(&h).devices[&addr].clone();
    assert!(!d.in_pod && d.health.is_healthy(), "{d:?}");
}

/// Renames the entries of `from`'s `infiniband/`, `net/` and `infiniband_verbs/` into the
/// same subdirectories of `to`.
fn move_entries(from: &Path, to: &Path) {
    for sub in ["infiniband", "net", "infiniband_verbs"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), to.join(sub).join(e.file_name())).unwrap();
        }
    }
}

/// A PF whose VFs cannot be re-read after `sriov_numvfs` changed (here a `virtfn` link
/// turned into a directory, which `readlink` refuses) keeps its VFs advertised, and the
/// next poll tries again: the fault gone, it picks up the new VF set.
#[test]
fn a_failed_rescan_after_sriov_numvfs_changed_keeps_the_vfs_and_is_retried() {
    let (sim, mut m, h) = start();
    let pf = "0000:dc:00.0";
    let of_pf = |set: &DeviceSet| {
        set.devices
            .values()
            .filter(|d| d.pf.to_string() == pf)
            .count()
    };
    assert_eq!(of_pf(&devices(&h)), 8);
    assert_eq!(devices(&h).devices.len(), 64);

    sim.set_num_vfs(pf, 4).unwrap();
    let link = sim.sysfs_dir(pf).unwrap().join("virtfn0");
    let target = std::fs::read_link(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::create_dir(&link).unwrap();
    m.poll();
    m.poll();
    let set = devices(&h);
    assert_eq!(of_pf(&set), 8, "the PF's VFs stay while it cannot be read");
    assert_eq!(set.devices.len(), 64);
    let first: PciAddr = sim.pf(pf).unwrap().vfs[0].to_string().parse().unwrap();
    assert!(
        set.devices[&first].health.is_healthy(),
        "a VF still there stays Healthy"
    );

    std::fs::remove_dir(&link).unwrap();
    std::os::unix::fs::symlink(target, &link).unwrap();
    m.poll();
    let set = devices(&h);
    assert_eq!(of_pf(&set), 4, "the next poll picks up the new VF set");
    assert_eq!(set.devices.len(), 60);
    assert!(set.devices.values().all(|d| d.health.is_healthy()));
}

/// Log lines written on this thread while the guard lives (the poller logs on the thread
/// that polls).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = Buf(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// A VF a resource listed later took because the first one did not select it yet (here
/// mlx5_ib had not given it an RDMA device when the plugin started, and the first resource
/// wants `isRdma`): once the first resource selects it too, it stays with its owner (kubelet
/// may have given it to a pod under that name), with one warning naming both resources and
/// what would move it. A restart gives it to the first resource.
#[test]
fn a_vf_an_earlier_resource_starts_to_select_stays_with_its_owner_and_is_warned_about() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let root = HostRoot::new(sim.root()).unwrap();
    let pf = sim.pf("0000:18:00.0").unwrap();
    let vf: PciAddr = pf.vfs[0].to_string().parse().unwrap();
    sim.inject_fault(vf, Fault::NoRdma).unwrap();
    let config = Config::parse(
        r#"{"resourceList":[
            {"resourceName":"rdma","isRdma":true,"selectors":{"rootDevices":["0000:18:00.0"]}},
            {"resourceName":"any","selectors":{"rootDevices":["0000:18:00.0"]}}]}"#,
        Path::new("config.json"),
    )
    .unwrap();
    let (logs, _guard) = capture_logs();
    let (mut m, h) = Monitor::new(Node::scan(&root, None).unwrap(), &config);
    assert!(devices(&h[1]).devices.contains_key(&vf));
    assert_eq!(devices(&h[0]).devices.len(), 7);

    sim.clear_fault(vf, Fault::NoRdma).unwrap();
    // Twice round the full reads: the change is seen, and warned about only once.
    for _ in 0..2 * FULL_READ_EVERY {
        m.poll();
    }
    assert!(
        devices(&h[1]).devices.contains_key(&vf),
        "stays with its owner"
    );
    assert!(!devices(&h[0]).devices.contains_key(&vf));
    let log = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is now also selected by"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let w = warnings[0];
    assert!(
        w.contains("WARN")
            && w.contains(&vf.to_string())
            && w.contains("VF of nvidia.com/any is now also selected by nvidia.com/rdma")
            && w.contains("goes to nvidia.com/rdma when the plugin restarts"),
        "{w}"
    );

    let (_m, h) = Monitor::new(Node::scan(&root, None).unwrap(), &config);
    assert!(
        devices(&h[0]).devices.contains_key(&vf),
        "a restart moves it"
    );
    assert!(devices(&h[1]).devices.is_empty());
}
