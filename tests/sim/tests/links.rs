//! Real links: veths, the sysfs mirror, refunds, clean-up, parallel instances. Root only.

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use common::read;
use railvf_sim::{Fault, SimNode, SimOptions, TestNetns, ip, require_root};

const VF: &str = "0000:18:00.1";
const T: Duration = Duration::from_secs(5);

fn host_has(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}

fn net_entries(sim: &SimNode, vf: &str) -> Vec<String> {
    let dir = sim.vf(vf).unwrap().sysfs_dir.join("net");
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn sixty_four_veths_with_the_fixture_names() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let sim = SimOptions::dgx_h200().build().unwrap();
    let took = t0.elapsed();
    println!(
        "64-VF node with links built in {took:?} (sim says {:?})",
        sim.build_time()
    );
    let vfs = sim.vfs();
    assert_eq!(vfs.len(), 64);
    for vf in &vfs {
        assert!(vf.netdev.starts_with(sim.tag()), "{}", vf.netdev);
        let h = vf.host_netdev.as_ref().expect("VF netdev in the host");
        assert_eq!(h.name, vf.netdev);
        let nd = vf.sysfs_dir.join("net").join(&vf.netdev);
        // The fixture's ifindex is the real one.
        let shown = ip(&["-o", "link", "show", "dev", &vf.netdev]).unwrap();
        assert!(
            shown.starts_with(&format!(
                "{}: {}@",
                read(nd.join("ifindex")).trim(),
                vf.netdev
            )),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("alias railvf-sim:{}:{}", sim.tag(), vf.pci)),
            "{shown}"
        );
        assert_eq!(read(nd.join("mtu")), "4092\n");
        assert_eq!(read(nd.join("operstate")), "down\n");
    }
    let vf = sim.vf(VF).unwrap();
    assert_eq!(vf.netdev, format!("{}p24s0f1", sim.tag()));
    assert_eq!(
        sim.vf("0000:18:01.0").unwrap().netdev,
        format!("{}p24s1", sim.tag())
    );
    // The link comes up with carrier (its peer is up), and the mirror shows it.
    ip(&["link", "set", "dev", &vf.netdev, "up"]).unwrap();
    sim.wait_for("operstate up", T, |s| {
        s.vf(VF)
            .unwrap()
            .host_netdev
            .is_some_and(|h| h.operstate == "up")
    })
    .unwrap();
    assert_eq!(
        read(vf.sysfs_dir.join(format!("net/{}/operstate", vf.netdev))),
        "up\n"
    );
    ip(&["link", "set", "dev", &vf.netdev, "mtu", "2044"]).unwrap();
    sim.wait_for("mtu", T, |s| {
        s.vf(VF).unwrap().host_netdev.is_some_and(|h| h.mtu == 2044)
    })
    .unwrap();
    assert_eq!(
        read(vf.sysfs_dir.join(format!("net/{}/mtu", vf.netdev))),
        "2044\n"
    );
}

#[test]
fn mirror_follows_a_move_into_a_pod_a_rename_and_back() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let vf = sim.vf(VF).unwrap();
    let name = vf.netdev.clone();
    let ifindex = vf.host_netdev.unwrap().ifindex;
    let class_net = sim.root().join("sys/class/net");
    let pod = TestNetns::new().unwrap();
    assert!(pod.path().exists());

    // Unique per sim: a fixed name would clash with concurrently running test binaries.
    let renamed = format!("{}n1", sim.tag());
    ip(&["link", "set", "dev", &name, "netns", pod.name()]).unwrap();
    // The worker reacts on its own, within milliseconds; no sync() needed.
    let t0 = Instant::now();
    while !net_entries(&sim, VF).is_empty() {
        assert!(t0.elapsed() < T, "mirror did not notice the move");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("mirror noticed the move after {:?}", t0.elapsed());
    // The glue directory stays (the netdev exists, in another namespace), empty.
    assert!(vf.sysfs_dir.join("net").is_dir());
    assert!(fs::symlink_metadata(class_net.join(&name)).is_err());
    assert!(sim.vf(VF).unwrap().host_netdev.is_none());
    assert!(pod.has_link(&name).unwrap());

    pod.ip(&["link", "set", "dev", &name, "name", &renamed])
        .unwrap();
    // Back to the sim's host namespace: this process's.
    pod.ip(&[
        "link",
        "set",
        "dev",
        &renamed,
        "netns",
        &std::process::id().to_string(),
    ])
    .unwrap();
    sim.wait_netdev(VF, Some(&renamed), T).unwrap();
    assert_eq!(net_entries(&sim, VF), vec![renamed.clone()]);
    assert_eq!(
        read(vf.sysfs_dir.join("net").join(&renamed).join("ifindex")),
        format!("{ifindex}\n")
    );
    assert!(class_net.join(&renamed).join("ifindex").exists());

    ip(&["link", "set", "dev", &renamed, "name", &name]).unwrap();
    sim.wait_netdev(VF, Some(&name), T).unwrap();
    assert_eq!(net_entries(&sim, VF), vec![name.clone()]);
    assert!(fs::symlink_metadata(class_net.join(&renamed)).is_err());
    assert!(class_net.join(&name).exists());
}

#[test]
fn a_roce_port_is_active_only_while_its_netdev_runs() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let vf = sim.vf(VF).unwrap();
    let pf = sim.pf(vf.pf).unwrap();
    sim.set_link_layer(vf.pf, railvf_sim::LinkLayer::Ethernet)
        .unwrap();
    let port =
        |dir: &std::path::Path, rdma: &str| dir.join(format!("infiniband/{rdma}/ports/1/state"));
    let vf_state = port(&vf.sysfs_dir, &vf.rdma_device);
    let wait_state = |what: &str, want: &str| {
        sim.wait_for(what, T, |_| read(&vf_state) == want).unwrap();
    };
    // A free VF's netdev is down in the host: its RoCE port is DOWN, its PF's ACTIVE.
    wait_state("RoCE port down with its netdev", "1: DOWN\n");
    assert_eq!(read(vf_state.with_file_name("phys_state")), "3: Disabled\n");
    assert_eq!(read(port(&pf.sysfs_dir, &pf.rdma_device)), "4: ACTIVE\n");

    ip(&["link", "set", "dev", &vf.netdev, "up"]).unwrap();
    wait_state("RoCE port active with its netdev up", "4: ACTIVE\n");
    // A move closes the netdev; up again in the pod, the port is ACTIVE again.
    let pod = TestNetns::new().unwrap();
    ip(&["link", "set", "dev", &vf.netdev, "netns", pod.name()]).unwrap();
    wait_state("RoCE port down after the move", "1: DOWN\n");
    pod.ip(&["link", "set", "dev", &vf.netdev, "up"]).unwrap();
    wait_state("RoCE port active in the pod", "4: ACTIVE\n");

    // An InfiniBand port does not follow its netdev.
    pod.ip(&["link", "set", "dev", &vf.netdev, "down"]).unwrap();
    wait_state("RoCE port down in the pod", "1: DOWN\n");
    sim.set_link_layer(vf.pf, railvf_sim::LinkLayer::InfiniBand)
        .unwrap();
    wait_state("InfiniBand port active with its netdev down", "4: ACTIVE\n");
}

#[test]
fn a_vf_returns_to_the_host_when_its_pod_netns_dies() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let name = sim.vf(VF).unwrap().netdev;
    let pod = TestNetns::new().unwrap();
    ip(&["link", "set", "dev", &name, "netns", pod.name()]).unwrap();
    pod.ip(&["link", "set", "dev", &name, "name", "net1"])
        .unwrap();
    sim.wait_netdev(VF, None, T).unwrap();
    // The sim learns the pod-side name (it polls it; sync() makes it deterministic).
    sim.sync().unwrap();
    drop(pod);
    // Like a real VF (and unlike a veth), it comes back under its pod name, or as
    // `dev<ifindex>` if the host has a `net1` already (another test binary's VF may).
    sim.wait_for("VF back in the host", T, |s| {
        s.vf(VF).unwrap().host_netdev.is_some()
    })
    .unwrap();
    let back = sim.vf(VF).unwrap().host_netdev.unwrap().name;
    assert!(back == "net1" || back.starts_with("dev"), "{back}");
    assert!(host_has(&back));
    assert_eq!(net_entries(&sim, VF), vec![back.clone()]);
    ip(&["link", "set", "dev", &back, "name", &name]).unwrap();
    sim.wait_netdev(VF, Some(&name), T).unwrap();
}

#[test]
fn two_pods_with_the_same_vf_name_die_at_once() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let (a, b) = ("0000:18:00.1", "0000:18:00.2");
    let (pa, pb) = (TestNetns::new().unwrap(), TestNetns::new().unwrap());
    for (vf, pod) in [(a, &pa), (b, &pb)] {
        let name = sim.vf(vf).unwrap().netdev;
        ip(&["link", "set", "dev", &name, "netns", pod.name()]).unwrap();
        pod.ip(&["link", "set", "dev", &name, "name", "net1"])
            .unwrap();
    }
    sim.sync().unwrap();
    drop(pa);
    drop(pb);
    sim.wait_for("both VFs back", T, |s| {
        s.vf(a).unwrap().host_netdev.is_some() && s.vf(b).unwrap().host_netdev.is_some()
    })
    .unwrap();
    let mut names = vec![
        sim.vf(a).unwrap().host_netdev.unwrap().name,
        sim.vf(b).unwrap().host_netdev.unwrap().name,
    ];
    names.sort();
    assert_ne!(names[0], names[1]);
    // At most one can be `net1` (none if another test binary holds `net1` in the host).
    assert!(names[0].starts_with("dev"), "{names:?}");
    assert!(
        names[1] == "net1" || names[1].starts_with("dev"),
        "{names:?}"
    );
    // Each re-created link carries its own VF's alias (what tests identify VFs by): a try
    // under a taken name must not label the link that has it.
    for vf in [a, b] {
        let name = sim.vf(vf).unwrap().host_netdev.unwrap().name;
        let shown: serde_json::Value =
            serde_json::from_str(&ip(&["-j", "link", "show", "dev", &name]).unwrap()).unwrap();
        assert_eq!(
            shown[0]["ifalias"],
            format!("railvf-sim:{}:{vf}", sim.tag()),
            "{name}"
        );
    }
}

#[test]
fn networkd_state_follows_the_netdev() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200()
        .fault(VF, Fault::HostManaged)
        .build()
        .unwrap();
    let vf = sim.vf(VF).unwrap();
    let ifindex = vf.host_netdev.unwrap().ifindex;
    let state = sim
        .root()
        .join(format!("run/systemd/netif/links/{ifindex}"));
    assert!(read(&state).contains("ADMIN_STATE=configured"));
    let pod = TestNetns::new().unwrap();
    ip(&["link", "set", "dev", &vf.netdev, "netns", pod.name()]).unwrap();
    sim.wait_netdev(VF, None, T).unwrap();
    assert!(
        !state.exists(),
        "networkd forgets a link that left its namespace"
    );
}

#[test]
fn unbind_destroys_and_bind_recreates_the_netdev() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let vf = sim.vf(VF).unwrap();
    let old = vf.host_netdev.clone().unwrap();
    sim.unbind_driver(VF).unwrap();
    assert!(!host_has(&vf.netdev));
    assert!(!vf.sysfs_dir.join("net").exists());
    assert!(fs::symlink_metadata(vf.sysfs_dir.join("driver")).is_err());
    sim.bind_driver(VF).unwrap();
    let new = sim.vf(VF).unwrap().host_netdev.unwrap();
    assert_eq!(new.name, old.name);
    assert_ne!(new.ifindex, old.ifindex, "a rebind gives a new netdev");
    assert_eq!(
        read(vf.sysfs_dir.join(format!("net/{}/ifindex", new.name))),
        format!("{}\n", new.ifindex)
    );

    // Unbinding also kills a netdev that sits in a pod.
    let pod = TestNetns::new().unwrap();
    ip(&["link", "set", "dev", &vf.netdev, "netns", pod.name()]).unwrap();
    sim.inject_fault(VF, Fault::Unbound).unwrap();
    assert!(!pod.has_link(&vf.netdev).unwrap());
    sim.clear_fault(VF, Fault::Unbound).unwrap();
    assert!(host_has(&vf.netdev));
}

#[test]
fn adding_and_removing_vfs_adds_and_removes_links() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().unwrap();
    let pf = "0000:9a:00.0";
    sim.add_vfs(pf, 2).unwrap();
    let new = sim.vf("0000:9a:01.2").unwrap();
    assert!(host_has(&new.netdev));
    assert_eq!(new.host_netdev.as_ref().unwrap().name, new.netdev);
    assert!(
        new.sysfs_dir
            .join("net")
            .join(&new.netdev)
            .join("ifindex")
            .exists()
    );
    let gone = sim.vf("0000:9a:00.7").unwrap();
    sim.remove_vfs(pf, 4).unwrap();
    assert!(!host_has(&new.netdev));
    assert!(!host_has(&gone.netdev));
    assert!(sim.vf("0000:9a:00.7").is_err());
    assert!(!gone.sysfs_dir.exists());
    assert_eq!(sim.pf(pf).unwrap().vfs.len(), 6);
}

#[test]
fn clean_up_on_drop_and_on_panic_even_for_vfs_in_pods() {
    if !require_root() {
        return;
    }
    let pod = TestNetns::new().unwrap();
    let sim = SimOptions::dgx_h200().build().unwrap();
    let (root, names) = (
        sim.root().to_owned(),
        sim.vfs().into_iter().map(|v| v.netdev).collect::<Vec<_>>(),
    );
    ip(&["link", "set", "dev", &names[0], "netns", pod.name()]).unwrap();
    drop(sim);
    assert!(!root.exists());
    for n in &names {
        assert!(!host_has(n), "{n} survived the sim");
    }
    assert!(
        pod.link_names().unwrap().iter().all(|n| n == "lo"),
        "VF end left in the pod"
    );

    let mut seen = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let sim = SimOptions::dgx_h200().build().unwrap();
        seen = Some((sim.root().to_owned(), sim.vf(VF).unwrap().netdev));
        panic!("test failure while the sim runs");
    }));
    assert!(r.is_err());
    let (root, name) = seen.unwrap();
    assert!(!root.exists());
    assert!(!host_has(&name));
}

#[test]
fn parallel_instances_do_not_collide() {
    if !require_root() {
        return;
    }
    let sims: Vec<SimNode> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| SimOptions::dgx_h200().vfs_per_pf(2).build().unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut tags: Vec<&str> = sims.iter().map(|s| s.tag()).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 3);
    let pod = TestNetns::new().unwrap();
    // Moving one sim's VF leaves the others' mirrors alone.
    let moved = sims[0].vf(VF).unwrap().netdev;
    ip(&["link", "set", "dev", &moved, "netns", pod.name()]).unwrap();
    sims[0].wait_netdev(VF, None, T).unwrap();
    for other in &sims[1..] {
        other.sync().unwrap();
        assert!(other.vf(VF).unwrap().host_netdev.is_some());
    }
    // An explicit tag that is in use is refused, not shared.
    let dup = SimOptions::dgx_h200()
        .vfs_per_pf(2)
        .tag(sims[1].tag())
        .build();
    assert!(dup.is_err());
    assert!(sims[1].vf(VF).unwrap().host_netdev.is_some());
    assert!(host_has(&sims[1].vf(VF).unwrap().netdev));
}
