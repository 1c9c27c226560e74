//! The device plugin under crashes and a hostile environment, driven by the fake kubelet:
//! SIGKILL and restart while VFs are in pods (attached by the real CNI); the device-info
//! directory read-only or not a directory; kubelet's socket vanishing mid-stream, its
//! directory deleted and re-created; sysfs attributes broken at start.
//!
//! Covered elsewhere and not repeated here (device-plugin/tests/kubelet.rs): kubelet not up
//! yet at start (`kubelet_not_up_yet_is_retried`), kubelet restarting with its socket
//! directory wiped (`kubelet_restart_is_followed_by_re_registration`), a VF moved into a
//! pod before the plugin starts (`a_vf_moved_into_a_pod_namespace_survives_a_plugin_restart`).

mod reliability_support;

use std::time::Duration;

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::Empty;
use railvf_sim::{SimOptions, TestNetns, require_root};
use reliability_support::dp::{self, Dirs, alloc_req, registration, view, wait_list};
use reliability_support::*;
use tonic::Code;

#[tokio::test]
async fn sigkill_and_restart_while_vfs_are_in_pods_keeps_ids_health_and_allocations() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200()
        .lid_delay(Duration::from_millis(0))
        .build()
        .expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = dp::start(sim.root(), &dirs);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let mut s = dp::list_and_watch(&mut client).await;
    let before = wait_list(&mut s, "64 healthy", |l| {
        l.len() == 64 && l.iter().all(|d| d.health == "Healthy")
    })
    .await;
    let before = view(&before);

    // kubelet allocates one VF per rail to a pod; Multus runs the CNI with each.
    let vfs: Vec<_> = sim.vfs().into_iter().step_by(8).collect();
    assert_eq!(vfs.len(), 8);
    let ids: Vec<String> = vfs.iter().map(|v| v.pci.to_string()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    client.allocate(alloc_req(&id_refs)).await.unwrap();
    // Every advertised VF has its file (written at start); the 8 allocated ones are
    // followed across the restarts.
    let deadline = std::time::Instant::now() + dp::GUARD;
    let mut devinfo_before = dirs.devinfo_files();
    while devinfo_before.len() < 64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        devinfo_before = dirs.devinfo_files();
    }
    assert_eq!(devinfo_before.len(), 64, "{:?}", devinfo_before.keys());
    devinfo_before.retain(|f, _| ids.iter().any(|id| f.contains(id.as_str())));
    assert_eq!(devinfo_before.len(), 8, "{devinfo_before:?}");
    let cni = cni_for(&sim, tmp.path());
    let pods: Vec<TestNetns> = (0..8).map(|_| TestNetns::new().unwrap()).collect();
    let conf = |id: &str| netconf("1.0.0", "rel-dp", id, "");
    for (i, id) in ids.iter().enumerate() {
        cni.run("ADD", &format!("dp-{i}"), Some(pods[i].path()), &conf(id))
            .expect_ok();
    }
    // In use is not unhealthy: the list does not change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.get_device_plugin_options(Empty {}).await.unwrap();

    let mut kills = 0;
    for round in 0..2 {
        // Killed with a stream open and the socket file left behind.
        plugin.kill9();
        kills += 1;
        assert!(
            dirs.kubelet.join(dp::SOCKET).exists(),
            "a SIGKILL leaves the socket"
        );
        plugin = dp::start(sim.root(), &dirs);
        let reg = registration(&mut kubelet, &plugin).await;
        client = reg.client;
        let mut s = dp::list_and_watch(&mut client).await;
        let after = wait_list(&mut s, "64 devices", |l| l.len() == 64).await;
        assert_eq!(
            view(&after),
            before,
            "round {round}: same IDs, health and NUMA after a SIGKILL and restart"
        );
        // The allocations are untouched: VFs in their pods, device-info files as written.
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                vf_name_in(&sim, Some(pods[i].name()), id).as_deref(),
                Some("net1"),
                "round {round}: VF {id} left its pod"
            );
        }
        let now = dirs.devinfo_files();
        for (f, body) in &devinfo_before {
            assert_eq!(now.get(f), Some(body), "round {round}: {f} kept as written");
        }
        assert_eq!(now.len(), 64, "round {round}: {:?}", now.keys());
        assert_eq!(cni.state_files().len(), 8);
        // Allocations go on (kubelet keeps its own record of which VFs are in use).
        let free = sim.vfs()[1].pci.to_string();
        client.allocate(alloc_req(&[&free])).await.unwrap();
        plugin.assert_running();
    }

    for (i, id) in ids.iter().enumerate() {
        cni.run("DEL", &format!("dp-{i}"), Some(pods[i].path()), &conf(id))
            .expect_ok();
    }
    for v in &vfs {
        assert_home(&sim, v);
    }
    let mut s = dp::list_and_watch(&mut client).await;
    wait_list(&mut s, "64 healthy after the DELs", |l| {
        l.len() == 64 && l.iter().all(|d| d.health == "Healthy")
    })
    .await;
    plugin.assert_running();
    summary(format!(
        "device plugin SIGKILLed {kills} times with 8 VFs in pods: same 64 IDs, health and NUMA after each restart, allocations untouched, 0 VFs lost"
    ));
}

/// Mounts a read-only tmpfs on `dir` for the guard's lifetime.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> ReadOnly {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "railvf-test-ro"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a read-only tmpfs on {}", dir.display());
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_read_only_or_missing_devinfo_dir_gives_a_clear_allocate_error() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = dp::start(sim.root(), &dirs);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let id = sim.vfs()[0].pci.to_string();
    let mut faults = 0;

    // Read-only filesystem.
    {
        let _ro = ReadOnly::mount(&dirs.devinfo);
        let err = client.allocate(alloc_req(&[&id])).await.unwrap_err();
        faults += 1;
        assert!(
            matches!(
                err.code(),
                Code::Internal | Code::FailedPrecondition | Code::Unavailable
            ),
            "{err}"
        );
        assert!(
            err.message().contains(&*dirs.devinfo.to_string_lossy()),
            "the error names the device-info path: {err}"
        );
        client
            .get_device_plugin_options(Empty {})
            .await
            .expect("still serving");
        plugin.assert_running();
    }
    client
        .allocate(alloc_req(&[&id]))
        .await
        .expect("works again once writable");

    // The directory replaced by a regular file.
    std::fs::remove_dir_all(&dirs.devinfo).unwrap();
    std::fs::write(&dirs.devinfo, "not a directory").unwrap();
    let err = client.allocate(alloc_req(&[&id])).await.unwrap_err();
    faults += 1;
    assert!(err.message().contains("device-info"), "{err}");
    plugin.assert_running();
    std::fs::remove_file(&dirs.devinfo).unwrap();
    // The directory missing altogether: created again.
    client
        .allocate(alloc_req(&[&id]))
        .await
        .expect("a missing directory is created");
    assert!(dirs.devinfo.is_dir());
    plugin.assert_running();
    summary(format!(
        "device plugin: device-info dir read-only / not a directory / missing: {faults} Allocate refusals with the path named, still serving, 0 panics"
    ));
}

#[tokio::test]
async fn kubelet_socket_vanishing_mid_stream_and_its_directory_recreated() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = dp::start(sim.root(), &dirs);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let mut s = dp::list_and_watch(&mut client).await;
    wait_list(&mut s, "64 devices", |l| l.len() == 64).await;
    let mut faults = 0;

    // kubelet.sock unlinked under an open stream, three times in a row, re-created each time.
    for _ in 0..3 {
        std::fs::remove_file(dirs.kubelet.join("kubelet.sock")).unwrap();
        kubelet.restart().await.unwrap();
        faults += 1;
        let reg = registration(&mut kubelet, &plugin).await;
        client = reg.client;
        let mut s = dp::list_and_watch(&mut client).await;
        wait_list(&mut s, "64 devices", |l| l.len() == 64).await;
    }

    // The whole directory deleted and re-created (a kubelet reinstall): the plugin must
    // notice (its watch was on the old directory) and serve and register again.
    kubelet.stop().await;
    std::fs::remove_dir_all(&dirs.kubelet).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::create_dir_all(&dirs.kubelet).unwrap();
    kubelet.serve().unwrap();
    faults += 1;
    let reg = registration(&mut kubelet, &plugin).await;
    client = reg.client;
    let mut s = dp::list_and_watch(&mut client).await;
    wait_list(&mut s, "64 devices after the directory came back", |l| {
        l.len() == 64
    })
    .await;
    assert!(dirs.kubelet.join(dp::SOCKET).exists());
    plugin.assert_running();
    summary(format!(
        "device plugin: kubelet socket vanished/re-created {faults} times (once with its directory): re-registered each time, 0 panics"
    ));
}

#[tokio::test]
async fn sysfs_attributes_broken_at_start_do_not_crash_the_plugin() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let vfs = sim.vfs();
    let port = |i: usize| {
        vfs[i]
            .sysfs_dir
            .join("infiniband")
            .join(&vfs[i].rdma_device)
            .join("ports/1")
    };
    // VF 0: port state a directory; VF 1: link_layer garbage; VF 2: numa_node garbage;
    // VF 3: vendor missing; VF 4: physfn gone; VF 5: lid missing (not a health check).
    std::fs::remove_file(port(0).join("state")).unwrap();
    std::fs::create_dir(port(0).join("state")).unwrap();
    std::fs::write(port(1).join("link_layer"), "Token Ring\n").unwrap();
    std::fs::write(vfs[2].sysfs_dir.join("numa_node"), "\u{0}\u{1}zz\n").unwrap();
    std::fs::remove_file(vfs[3].sysfs_dir.join("vendor")).unwrap();
    std::fs::remove_file(vfs[4].sysfs_dir.join("physfn")).unwrap();
    std::fs::remove_file(port(5).join("lid")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = dp::start(sim.root(), &dirs);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let mut s = dp::list_and_watch(&mut client).await;
    let id = |i: usize| vfs[i].pci.to_string();
    let list = wait_list(&mut s, "the broken VFs unhealthy", |l| {
        [0, 1]
            .iter()
            .all(|i| l.iter().any(|d| d.id == id(*i) && d.health == "Unhealthy"))
    })
    .await;
    let health = |i: usize| {
        list.iter()
            .find(|d| d.id == id(i))
            .map(|d| d.health.clone())
    };
    // A VF with no LID is healthy (the LID comes with the GUID the CNI sets).
    assert_eq!(health(5).as_deref(), Some("Healthy"));
    plugin.assert_running();
    // Fixed: healthy again, without a restart.
    std::fs::remove_dir(port(0).join("state")).unwrap();
    std::fs::write(port(0).join("state"), "4: ACTIVE\n").unwrap();
    std::fs::write(port(1).join("link_layer"), "InfiniBand\n").unwrap();
    wait_list(&mut s, "fixed VFs healthy", |l| {
        [0, 1]
            .iter()
            .all(|i| l.iter().any(|d| d.id == id(*i) && d.health == "Healthy"))
    })
    .await;
    plugin.assert_running();
    summary(
        "device plugin: 6 kinds of broken sysfs attributes at start: broken VFs Unhealthy (or left out), healthy again once fixed, 0 panics",
    );
}
