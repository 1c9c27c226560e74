//! The real plugin binary against the fake kubelet (a tonic Registration server and
//! DevicePlugin client on unix sockets in a temp dir) on the simulated DGX H200.
//! The sim is built without real links (no root needed) except where a test moves a VF
//! netdev into a namespace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, DeviceSpec,
    Empty, PreferredAllocationRequest,
};
use railvf_sim::{Fault, SimNode, SimOptions};
use support::*;
use tonic::Code;

fn sim() -> SimNode {
    SimOptions::dgx_h200().no_links().build().expect("sim")
}

struct Env {
    sim: SimNode,
    _tmp: tempfile::TempDir,
    dirs: Dirs,
    kubelet: FakeKubelet,
    plugin: Plugin,
}

async fn start() -> Env {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let plugin = start_plugin(sim.root(), &dirs, None, &[]);
    Env {
        sim,
        _tmp: tmp,
        dirs,
        kubelet,
        plugin,
    }
}

fn pref_req(available: &[String], must: &[String], size: i32) -> PreferredAllocationRequest {
    PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    }
}

#[tokio::test]
async fn registers_and_lists_64_vfs_with_numa() {
    let mut e = start().await;
    let reg = registration(&mut e.kubelet, &e.plugin).await;
    assert_eq!(reg.request.resource_name, RESOURCE);
    assert_eq!(reg.request.version, "v1beta1");
    assert_eq!(reg.request.endpoint, "railvf-dgx_h200_vfs.sock");
    assert!(
        reg.request
            .options
            .as_ref()
            .is_some_and(|o| o.get_preferred_allocation_available && !o.pre_start_required)
    );
    // kubelet called GetDevicePluginOptions inside Register: the plugin was serving.
    assert!(reg.options.get_preferred_allocation_available);

    let mut client = reg.client;
    let mut stream = list_and_watch(&mut client).await;
    let list = wait_list(&mut stream, "64 devices", |l| l.len() == 64).await;
    let by_id: BTreeMap<&str, _> = list.iter().map(|d| (d.id.as_str(), d)).collect();
    for vf in e.sim.vfs() {
        let d = by_id
            .get(vf.pci.to_string().as_str())
            .unwrap_or_else(|| panic!("{} not advertised", vf.pci));
        assert_eq!(d.health, "Healthy", "{}", vf.pci);
        assert_eq!(numa_of(d), Some(i64::from(vf.numa)), "{}", vf.pci);
    }
    // DGX facts: rails 0-3 (mlx5_0,3,4,5) on NUMA 0, rails 4-7 on NUMA 1.
    assert_eq!(list.iter().filter(|d| numa_of(d) == Some(0)).count(), 32);
    assert_eq!(list.iter().filter(|d| numa_of(d) == Some(1)).count(), 32);
    assert_eq!(numa_of(by_id["0000:18:00.1"]), Some(0));
    assert_eq!(numa_of(by_id["0000:dc:00.1"]), Some(1));
    e.plugin.assert_running();
}

#[tokio::test]
async fn preferred_allocation_is_rail_aware() {
    let mut e = start().await;
    let mut client = registration(&mut e.kubelet, &e.plugin).await.client;
    let vfs = e.sim.vfs();
    let rail: BTreeMap<String, u32> = vfs
        .iter()
        .map(|v| (v.pci.to_string(), v.rail.unwrap()))
        .collect();
    let numa: BTreeMap<String, i32> = vfs.iter().map(|v| (v.pci.to_string(), v.numa)).collect();
    let all: Vec<String> = vfs.iter().map(|v| v.pci.to_string()).collect();

    // 8 VFs: one per rail.
    let r = client
        .get_preferred_allocation(pref_req(&all, &[], 8))
        .await
        .unwrap()
        .into_inner();
    let got = &r.container_responses[0].device_i_ds;
    assert_eq!(got.len(), 8);
    let rails: BTreeSet<u32> = got.iter().map(|i| rail[i]).collect();
    assert_eq!(rails, (0..8).collect(), "{got:?}");
    assert!(got.iter().all(|i| all.contains(i)));
    // Deterministic for the same input.
    let again = client
        .get_preferred_allocation(pref_req(&all, &[], 8))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&again.container_responses[0].device_i_ds, got);

    // 4 VFs when only NUMA 0's VFs are available: inside NUMA 0, on 4 rails.
    let numa0: Vec<String> = all.iter().filter(|i| numa[*i] == 0).cloned().collect();
    let r = client
        .get_preferred_allocation(pref_req(&numa0, &[], 4))
        .await
        .unwrap()
        .into_inner();
    let got = &r.container_responses[0].device_i_ds;
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().all(|i| numa[i] == 0 && numa0.contains(i)),
        "{got:?}"
    );
    assert_eq!(
        got.iter().map(|i| rail[i]).collect::<BTreeSet<_>>().len(),
        4
    );

    // With everything available, 4 VFs still stay on one NUMA node.
    let r = client
        .get_preferred_allocation(pref_req(&all, &[], 4))
        .await
        .unwrap()
        .into_inner();
    let got = &r.container_responses[0].device_i_ds;
    assert_eq!(
        got.iter().map(|i| numa[i]).collect::<BTreeSet<_>>().len(),
        1
    );

    // must_include is honoured and pulls the rest onto its NUMA node.
    let must = vec!["0000:dc:00.4".to_string()];
    let r = client
        .get_preferred_allocation(pref_req(&all, &must, 3))
        .await
        .unwrap()
        .into_inner();
    let got = &r.container_responses[0].device_i_ds;
    assert!(got.contains(&must[0]));
    assert!(got.iter().all(|i| numa[i] == 1), "{got:?}");

    // kubelet's list older than the plugin's (a VF gone, an ID from another resource), a
    // repeated ID, a must-include ID kubelet did not also list as available: answered
    // (kubelet fails the pod's admission on any error here), the unknown available IDs
    // left out and said so in the log.
    let mut stale = vec!["0000:29:00.1".to_string(), "0000:00:00.0".to_string()];
    stale.extend(all[..3].iter().cloned());
    stale.push(all[0].clone());
    let r = client
        .get_preferred_allocation(pref_req(&stale, &[], 3))
        .await
        .unwrap()
        .into_inner();
    let got: BTreeSet<&String> = r.container_responses[0].device_i_ds.iter().collect();
    assert_eq!(got, all[..3].iter().collect(), "{r:?}");
    let must = vec![all[5].clone(), "0000:29:00.1".to_string()];
    let r = client
        .get_preferred_allocation(pref_req(&all[..3], &must, 3))
        .await
        .unwrap()
        .into_inner();
    let got = &r.container_responses[0].device_i_ds;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[..2], must[..], "must-include IDs kept as given");
    assert!(all[..3].contains(&got[2]), "{got:?}");
    let log = wait_log(&mut e.plugin, "left out of the choice").await;
    assert!(log.contains("0000:29:00.1"), "{log}");

    // What cannot be answered is refused with InvalidArgument; the plugin keeps serving.
    for (avail, must, size) in [
        (all.clone(), vec![], 0),
        (all[..3].to_vec(), vec![], 4),
        (all.clone(), all[..3].to_vec(), 2),
        (vec!["0000:00:00.0".to_string()], vec![], 1),
    ] {
        let err = client
            .get_preferred_allocation(pref_req(&avail, &must, size))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    client
        .get_device_plugin_options(Empty {})
        .await
        .expect("still serving");
}

#[tokio::test]
async fn allocate_returns_devices_env_and_devinfo() {
    let mut e = start().await;
    let mut client = registration(&mut e.kubelet, &e.plugin).await.client;
    let a = e.sim.vf("0000:18:00.1").unwrap();
    let b = e.sim.vf("0000:9a:00.2").unwrap();
    let ids = [a.pci.to_string(), b.pci.to_string()];
    let r = client
        .allocate(alloc_req(&[&ids[0], &ids[1]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.container_responses.len(), 1);
    let c = &r.container_responses[0];
    assert_eq!(
        c.envs.get("PCIDEVICE_NVIDIA_COM_DGX_H200_VFS"),
        Some(&format!("{},{}", ids[0], ids[1]))
    );
    assert_eq!(
        c.envs.get("NCCL_IB_HCA"),
        Some(&format!("={},{}", a.rdma_device, b.rdma_device))
    );
    // The resource's own variable, without the `=`, for an entrypoint to compose from.
    assert_eq!(
        c.envs.get("PCIDEVICE_NVIDIA_COM_DGX_H200_VFS_RDMA"),
        Some(&format!("{},{}", a.rdma_device, b.rdma_device))
    );
    assert_eq!(c.envs.len(), 3, "{:?}", c.envs);
    let spec = |p: String| DeviceSpec {
        container_path: p.clone(),
        host_path: p,
        permissions: "rw".into(),
    };
    assert_eq!(
        c.devices,
        vec![
            spec(format!("/dev/infiniband/uverbs{}", a.uverbs)),
            spec(format!("/dev/infiniband/uverbs{}", b.uverbs)),
            spec("/dev/infiniband/rdma_cm".into()),
        ]
    );
    assert!(c.mounts.is_empty());
    // NPWG device-info 1.1.0, one file per VF.
    for v in [&a, &b] {
        let path = e
            .dirs
            .devinfo
            .join(format!("nvidia.com-dgx_h200_vfs-{}-device.json", v.pci));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "pci", "version": "1.1.0", "pci": {
                "pci-address": v.pci.to_string(),
                "rdma-device": v.rdma_device,
                "pf-pci-address": v.pf.to_string(),
            }})
        );
    }

    // Refusals: unknown ID (named), empty, oversized; the plugin keeps serving.
    let err = client
        .allocate(alloc_req(&["0000:29:00.1"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("0000:29:00.1"), "{err}");
    let err = client
        .allocate(alloc_req(&["not-a-pci-address"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not-a-pci-address"), "{err}");
    let err = client.allocate(alloc_req(&[])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .allocate(AllocateRequest {
            container_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let too_many: Vec<String> = (0..65).map(|i| format!("0000:18:00.{}", i % 8)).collect();
    let err = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: too_many,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .allocate(alloc_req(&[&ids[0], &ids[0]]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    client
        .get_device_plugin_options(Empty {})
        .await
        .expect("still serving");

    // An unhealthy VF is refused, naming it.
    e.sim.inject_fault(b.pci, Fault::PortDown).unwrap();
    let mut stream = list_and_watch(&mut client).await;
    wait_list(&mut stream, "the VF Unhealthy", |l| {
        health_of(l, &ids[1]) == Some("Unhealthy")
    })
    .await;
    let err = client.allocate(alloc_req(&[&ids[1]])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&ids[1]) && err.message().contains("port_state"),
        "{err}"
    );

    // SIGTERM: socket and device-info files removed, clean exit.
    let st = e.plugin.terminate();
    assert!(st.success(), "{st}; log:\n{}", e.plugin.log());
    let left: Vec<_> = std::fs::read_dir(&e.dirs.devinfo)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "device-info files left: {left:?}");
    assert!(!e.dirs.kubelet.join("railvf-dgx_h200_vfs.sock").exists());
}

/// kubelet lists a container's IDs in a random order (a Go map): the answer is the same
/// whatever the order, with everything in PCI address order.
#[tokio::test]
async fn allocate_answers_in_pci_order_whatever_the_order_of_the_ids() {
    let mut e = start().await;
    let mut client = registration(&mut e.kubelet, &e.plugin).await.client;
    let vfs: Vec<_> = [
        "0000:18:00.1",
        "0000:4f:00.3",
        "0000:9a:00.2",
        "0000:dc:00.2",
    ]
    .iter()
    .map(|a| e.sim.vf(a).unwrap())
    .collect();
    let sorted: Vec<String> = vfs.iter().map(|v| v.pci.to_string()).collect();
    let mut answers = Vec::new();
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
        let ids: Vec<&str> = order.iter().map(|&i| sorted[i].as_str()).collect();
        let r = client.allocate(alloc_req(&ids)).await.unwrap().into_inner();
        answers.push(r.container_responses[0].clone());
    }
    let c = &answers[0];
    assert_eq!(
        c.envs.get("PCIDEVICE_NVIDIA_COM_DGX_H200_VFS"),
        Some(&sorted.join(","))
    );
    let rdma: Vec<&str> = vfs.iter().map(|v| v.rdma_device.as_str()).collect();
    assert_eq!(
        c.envs.get("NCCL_IB_HCA"),
        Some(&format!("={}", rdma.join(",")))
    );
    let paths: Vec<String> = c.devices.iter().map(|d| d.host_path.clone()).collect();
    let mut want: Vec<String> = vfs
        .iter()
        .map(|v| format!("/dev/infiniband/uverbs{}", v.uverbs))
        .collect();
    want.push("/dev/infiniband/rdma_cm".into());
    assert_eq!(paths, want);
    assert_eq!(answers[1], answers[0], "reversed order");
    assert_eq!(answers[2], answers[0], "shuffled order");
}

/// The device-info files: file name → JSON.
fn devinfo_files(dirs: &Dirs) -> BTreeMap<String, serde_json::Value> {
    dirs.devinfo_files()
        .into_iter()
        .map(|(name, body)| {
            let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            (name, json)
        })
        .collect()
}

/// Waits until the device-info files satisfy `pred`; returns them.
async fn wait_devinfo(
    e: &mut Env,
    what: &str,
    pred: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
) -> BTreeMap<String, serde_json::Value> {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let files = devinfo_files(&e.dirs);
        if pred(&files) {
            return files;
        }
        e.plugin.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no device-info files with {what} within {GUARD:?}: {:?}\nlog:\n{}",
            files.keys(),
            e.plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn devinfo_name(pci: &str) -> String {
    format!("nvidia.com-dgx_h200_vfs-{pci}-device.json")
}

/// kubelet calls Allocate once per container and replays its checkpoint after that: after
/// a node reboot (/var/run is a tmpfs) or a plugin restart, a re-created pod sandbox finds
/// its device-info only if the plugin writes every advertised VF's file when it starts,
/// as sriov-network-device-plugin does. The files follow the device list, and go when the
/// plugin stops.
#[tokio::test]
async fn device_info_files_are_written_at_start_and_follow_the_device_list() {
    let mut e = start().await;
    let _ = registration(&mut e.kubelet, &e.plugin).await;
    let vfs = e.sim.vfs();
    let files = wait_devinfo(&mut e, "64 files", |f| f.len() == 64).await;
    for v in &vfs {
        assert_eq!(
            files.get(&devinfo_name(&v.pci.to_string())),
            Some(
                &serde_json::json!({"type": "pci", "version": "1.1.0", "pci": {
                    "pci-address": v.pci.to_string(),
                    "rdma-device": v.rdma_device,
                    "pf-pci-address": v.pf.to_string(),
                }})
            ),
            "{}",
            v.pci
        );
    }
    // VFs removed under a PF: their files go; back: written again.
    e.sim.set_num_vfs("0000:dc:00.0", 4).unwrap();
    let files = wait_devinfo(&mut e, "60 files", |f| f.len() == 60).await;
    assert!(files.contains_key(&devinfo_name("0000:dc:00.4")));
    assert!(!files.contains_key(&devinfo_name("0000:dc:00.5")));
    e.sim.set_num_vfs("0000:dc:00.0", 8).unwrap();
    wait_devinfo(&mut e, "64 files again", |f| f.len() == 64).await;
    let log = e.plugin.log();
    assert!(
        log.contains("device-info files of the advertised VFs brought up to date"),
        "{log}"
    );

    // Stopped, the plugin removes them; started again (a reboot emptied /var/run as well),
    // it writes them again without any Allocate.
    assert!(e.plugin.terminate().success());
    assert!(devinfo_files(&e.dirs).is_empty());
    e.plugin = start_plugin(e.sim.root(), &e.dirs, None, &[]);
    let _ = registration(&mut e.kubelet, &e.plugin).await;
    wait_devinfo(&mut e, "64 files after a restart", |f| {
        f.len() == 64 && f.values().all(|j| j["pci"]["rdma-device"].is_string())
    })
    .await;

    // Killed with a VF allocated and in a pod with RDMA isolation (its RDMA device out of
    // the host's sight): the file Allocate wrote stays as it is. Another VF in a pod whose
    // file is gone gets one without `rdma-device` (its RDMA device name is out of sight).
    let (kept, lost) = (&vfs[9], &vfs[17]);
    let kept_id = kept.pci.to_string();
    let mut client = client_of(&mut e).await;
    client.allocate(alloc_req(&[&kept_id])).await.unwrap();
    let allocated = std::fs::read(e.dirs.devinfo.join(devinfo_name(&kept_id))).unwrap();
    e.plugin.kill9();
    for v in [kept, lost] {
        for sub in ["net", "infiniband", "infiniband_verbs"] {
            std::fs::remove_dir_all(v.sysfs_dir.join(sub)).unwrap();
        }
    }
    std::fs::remove_file(e.dirs.devinfo.join(devinfo_name(&lost.pci.to_string()))).unwrap();
    e.plugin = start_plugin(e.sim.root(), &e.dirs, None, &[]);
    let _ = registration(&mut e.kubelet, &e.plugin).await;
    let lost_name = devinfo_name(&lost.pci.to_string());
    let files = wait_devinfo(&mut e, "the in-pod VF's file", |f| {
        f.contains_key(&lost_name)
    })
    .await;
    assert_eq!(
        files[&lost_name],
        serde_json::json!({"type": "pci", "version": "1.1.0", "pci": {
            "pci-address": lost.pci.to_string(),
            "pf-pci-address": lost.pf.to_string(),
        }})
    );
    assert_eq!(
        std::fs::read(e.dirs.devinfo.join(devinfo_name(&kept_id))).unwrap(),
        allocated,
        "the file Allocate wrote is left as it is"
    );
    assert_eq!(files.len(), 64);
}

/// A client of the plugin's socket (as kubelet dials it).
async fn client_of(
    e: &mut Env,
) -> railvf_proto::v1beta1::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    let sock = e.dirs.kubelet.join(SOCKET);
    railvf_proto::v1beta1::device_plugin_client::DevicePluginClient::new(
        railvf_proto::connect_unix(&sock).await.unwrap(),
    )
}

/// A device-info file that cannot be written at start (here a directory in its place)
/// does not stop the plugin: it says which file and why, and serves; Allocate of that VF
/// is refused naming the file, as before.
#[tokio::test]
async fn a_device_info_file_that_cannot_be_written_at_start_is_warned_about() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let blocked = dirs.devinfo.join(devinfo_name("0000:40:00.2"));
    std::fs::create_dir_all(&blocked).unwrap();
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(sim.root(), &dirs, None, &[]);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let log = wait_log(&mut plugin, "cannot write device-info file").await;
    let line = log
        .lines()
        .find(|l| l.contains("cannot write device-info file"))
        .unwrap();
    assert!(
        line.contains(&*blocked.to_string_lossy())
            && line.contains("\"level\":\"WARN\"")
            && line.contains("directory"),
        "{line}"
    );
    // The others were written; the plugin serves.
    assert_eq!(dirs.devinfo_files().len(), 64);
    client
        .allocate(alloc_req(&["0000:40:00.3"]))
        .await
        .expect("another VF");
    let err = client
        .allocate(alloc_req(&["0000:40:00.2"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.message().contains(&*blocked.to_string_lossy()), "{err}");
    plugin.assert_running();
}

#[tokio::test]
async fn health_changes_reach_the_open_stream() {
    let mut e = start().await;
    let mut client = registration(&mut e.kubelet, &e.plugin).await.client;
    let mut stream = list_and_watch(&mut client).await;
    wait_list(&mut stream, "64 healthy", |l| {
        l.len() == 64 && l.iter().all(|d| d.health == "Healthy")
    })
    .await;
    let vf = "0000:40:00.3";

    // Port DOWN.
    e.sim.inject_fault(vf, Fault::PortDown).unwrap();
    let l = wait_list(&mut stream, "port down", |l| {
        health_of(l, vf) == Some("Unhealthy")
    })
    .await;
    assert_eq!(l.len(), 64, "an unhealthy VF stays in the list");
    assert_eq!(l.iter().filter(|d| d.health == "Unhealthy").count(), 1);
    e.sim.clear_fault(vf, Fault::PortDown).unwrap();
    wait_list(&mut stream, "port up", |l| {
        health_of(l, vf) == Some("Healthy")
    })
    .await;

    // Driver unbound.
    e.sim.unbind_driver(vf).unwrap();
    let l = wait_list(&mut stream, "unbound", |l| {
        health_of(l, vf) == Some("Unhealthy")
    })
    .await;
    assert_eq!(l.len(), 64);
    e.sim.bind_driver(vf).unwrap();
    wait_list(&mut stream, "rebound", |l| {
        health_of(l, vf) == Some("Healthy")
    })
    .await;

    // The PF falls back to Ethernet: all 8 of its VFs.
    e.sim
        .set_link_layer("0000:40:00.0", railvf_sim::LinkLayer::Ethernet)
        .unwrap();
    wait_list(&mut stream, "link layer flip", |l| {
        l.iter().filter(|d| d.health == "Unhealthy").count() == 8
    })
    .await;
    e.sim
        .set_link_layer("0000:40:00.0", railvf_sim::LinkLayer::InfiniBand)
        .unwrap();
    wait_list(&mut stream, "InfiniBand again", |l| {
        l.iter().all(|d| d.health == "Healthy")
    })
    .await;

    // VFs removed and added under a PF.
    e.sim.set_num_vfs("0000:dc:00.0", 4).unwrap();
    wait_list(&mut stream, "60 devices", |l| l.len() == 60).await;
    e.sim.set_num_vfs("0000:dc:00.0", 8).unwrap();
    wait_list(&mut stream, "64 devices again", |l| {
        l.len() == 64 && l.iter().all(|d| d.health == "Healthy")
    })
    .await;
    let log = e.plugin.log();
    assert!(
        log.contains("port_state"),
        "the log names the failed check:\n{log}"
    );
}

#[tokio::test]
async fn kubelet_restart_is_followed_by_re_registration() {
    let mut e = start().await;
    let first = registration(&mut e.kubelet, &e.plugin).await;
    let mut old_stream = list_and_watch(&mut first.client.clone()).await;
    wait_list(&mut old_stream, "64 devices", |l| l.len() == 64).await;

    // kubelet restarts: socket directory wiped, kubelet.sock re-created.
    e.kubelet.restart().await.unwrap();
    let restarted = std::time::Instant::now();
    let second = registration(&mut e.kubelet, &e.plugin).await;
    // Informational only (the contract is 1 s; tests do not assert wall-clock times).
    eprintln!(
        "re-registered {:?} after the kubelet restart",
        second.at - restarted
    );
    assert_eq!(second.request.resource_name, RESOURCE);
    assert!(second.at >= first.at);
    let mut client = second.client;
    let mut stream = list_and_watch(&mut client).await;
    wait_list(&mut stream, "64 devices after restart", |l| l.len() == 64).await;
    assert!(e.dirs.kubelet.join("railvf-dgx_h200_vfs.sock").exists());

    // And once more, with kubelet down for a while in between.
    e.kubelet.stop().await;
    for f in std::fs::read_dir(&e.dirs.kubelet).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.kubelet.serve().unwrap();
    let third = registration(&mut e.kubelet, &e.plugin).await;
    assert_eq!(third.request.resource_name, RESOURCE);
    e.plugin.assert_running();
}

#[tokio::test]
async fn kubelet_not_up_yet_is_retried() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::not_started(&dirs.kubelet);
    let mut plugin = start_plugin(sim.root(), &dirs, None, &[]);
    // Wait until the plugin has tried and said why it cannot register.
    let deadline = std::time::Instant::now() + GUARD;
    while !plugin.log().contains("kubelet is not running yet") {
        plugin.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "log:\n{}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kubelet.try_next_registration().is_none());
    kubelet.serve().unwrap();
    let reg = registration(&mut kubelet, &plugin).await;
    assert_eq!(reg.request.resource_name, RESOURCE);
}

/// A VF moved into a pod with RDMA isolation: its netdev and RDMA device leave the host's
/// sysfs view. After a plugin restart it is still advertised and Healthy; it follows its
/// PF's port.
#[tokio::test]
async fn a_vf_in_a_pod_with_rdma_isolation_stays_advertised() {
    let mut e = start().await;
    let _ = registration(&mut e.kubelet, &e.plugin).await;
    let vf = e.sim.vf("0000:5e:00.2").unwrap();
    for sub in ["net", "infiniband", "infiniband_verbs"] {
        std::fs::remove_dir_all(vf.sysfs_dir.join(sub)).unwrap();
    }
    e.plugin.terminate();
    let plugin = start_plugin(e.sim.root(), &e.dirs, None, &[]);
    let mut client = registration(&mut e.kubelet, &plugin).await.client;
    let mut stream = list_and_watch(&mut client).await;
    let id = vf.pci.to_string();
    let l = wait_list(&mut stream, "64 devices", |l| l.len() == 64).await;
    assert_eq!(health_of(&l, &id), Some("Healthy"));
    // It is in use: Allocate says so instead of handing it out without its RDMA device.
    let err = client.allocate(alloc_req(&[&id])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("in use"), "{err}");
    // Its PF's port going down makes it Unhealthy (only the PF's files change: the VF's
    // are out of sight).
    e.sim
        .set_port_state(
            vf.pf,
            railvf_sim::PortState::Down,
            railvf_sim::PhysState::Disabled,
        )
        .unwrap();
    wait_list(&mut stream, "PF down", |l| {
        health_of(l, &id) == Some("Unhealthy")
    })
    .await;
}

/// The same with a real move of the VF netdev into a pod namespace (needs root).
#[tokio::test]
async fn a_vf_moved_into_a_pod_namespace_survives_a_plugin_restart() {
    if !railvf_sim::require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().expect("sim with links");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let vf = sim.vf("0000:c0:00.1").unwrap();
    let pod = railvf_sim::TestNetns::new().unwrap();
    railvf_sim::ip(&["link", "set", &vf.netdev, "netns", pod.name()]).unwrap();
    sim.wait_netdev(vf.pci, None, GUARD).unwrap();
    let plugin = start_plugin(sim.root(), &dirs, None, &[]);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let mut stream = list_and_watch(&mut client).await;
    let l = wait_list(&mut stream, "64 devices", |l| l.len() == 64).await;
    assert_eq!(health_of(&l, &vf.pci.to_string()), Some("Healthy"));
}

/// A RoCE resource on real links (needs root). A free VF's netdev is down in the host, so
/// its own RoCE port reads DOWN (mlx5 reports a RoCE port ACTIVE only while its netdev
/// runs): it is judged by its PF's port.
#[tokio::test]
async fn free_roce_vfs_are_judged_by_their_pfs_port() {
    if !railvf_sim::require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200().build().expect("sim with links");
    let pf = sim.pf("0000:40:00.0").unwrap();
    sim.set_link_layer(pf.pci, railvf_sim::LinkLayer::Ethernet)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let config = tmp.path().join("roce.json");
    std::fs::write(
        &config,
        serde_json::json!({"resourceList": [{
            "resourceName": "roce_vfs",
            "selectors": {"rootDevices": [pf.pci.to_string()], "linkTypes": ["ether"], "isRdma": true}
        }]})
        .to_string(),
    )
    .unwrap();
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let plugin = start_plugin(sim.root(), &dirs, Some(&config), &[]);
    let reg = registration(&mut kubelet, &plugin).await;
    assert_eq!(reg.request.resource_name, "nvidia.com/roce_vfs");
    let mut client = reg.client;
    let mut stream = list_and_watch(&mut client).await;
    let l = wait_list(&mut stream, "8 devices", |l| l.len() == 8).await;
    let vf = sim.vf(&l[0].id).unwrap();
    let state = vf
        .sysfs_dir
        .join(format!("infiniband/{}/ports/1/state", vf.rdma_device));
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "1: DOWN\n");
    assert!(
        l.iter().all(|d| d.health == "Healthy"),
        "{l:?}\nlog:\n{}",
        plugin.log()
    );

    // The PF's port going down takes them all; back up, they are Healthy again.
    let down = (railvf_sim::PortState::Down, railvf_sim::PhysState::Disabled);
    sim.set_port_state(pf.pci, down.0, down.1).unwrap();
    wait_list(&mut stream, "PF down", |l| {
        l.iter().all(|d| d.health == "Unhealthy")
    })
    .await;
    let up = (railvf_sim::PortState::Active, railvf_sim::PhysState::LinkUp);
    sim.set_port_state(pf.pci, up.0, up.1).unwrap();
    wait_list(&mut stream, "PF up", |l| {
        l.iter().all(|d| d.health == "Healthy")
    })
    .await;
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "1: DOWN\n");
}

/// A second instance on the node (a DaemonSet surge, `serve` started by hand) leaves the
/// first's socket alone and waits; it takes over once the first has gone.
#[tokio::test]
async fn a_second_instance_waits_instead_of_taking_the_socket() {
    let mut e = start().await;
    registration(&mut e.kubelet, &e.plugin).await;
    let mut second = start_plugin(e.sim.root(), &e.dirs, None, &[]);
    wait_log(&mut second, "not taking it over").await;
    // Neither re-registers in a loop: at most the second's own attempt to come through.
    let mut n = 0;
    while e
        .kubelet
        .next_registration(Duration::from_millis(1500))
        .await
        .is_some()
    {
        n += 1;
        assert!(n <= 1, "registrations keep coming:\n{}", e.plugin.log());
    }
    assert!(
        !e.plugin.log().contains("our socket was removed"),
        "{}",
        e.plugin.log()
    );
    // The first goes (it removes its socket): the second serves and registers.
    e.plugin.terminate();
    let r = registration(&mut e.kubelet, &second).await;
    assert_eq!(r.request.resource_name, RESOURCE);
    second.terminate();
}

/// A kubelet directory that cannot be watched is warned about once, not at every retry.
#[tokio::test]
async fn an_unwatchable_kubelet_directory_is_warned_about_once() {
    let mut e = start().await;
    registration(&mut e.kubelet, &e.plugin).await;
    wait_log(&mut e.plugin, "watching the kubelet socket directory").await;
    e.kubelet.stop().await;
    // The plugin puts its socket back as soon as it sees it removed, which can land
    // between remove_dir_all's unlinks and its rmdir (ENOTEMPTY): try again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(err) = std::fs::remove_dir_all(&e.dirs.kubelet) {
        assert!(
            err.kind() == std::io::ErrorKind::DirectoryNotEmpty
                && std::time::Instant::now() < deadline,
            "removing {}: {err}",
            e.dirs.kubelet.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_log(&mut e.plugin, "cannot watch").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = e.plugin.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("cannot watch"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    // Back: watched again, and said so.
    std::fs::create_dir_all(&e.dirs.kubelet).unwrap();
    wait_log(&mut e.plugin, "watching the kubelet socket directory again").await;
    e.plugin.assert_running();
}

/// A kubelet that accepts connections on `kubelet.sock` and never answers (hung, or stuck
/// on something else): each accepted connection is held open and announced on the channel.
fn hung_kubelet(dir: &std::path::Path) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let listener = tokio::net::UnixListener::bind(dir.join("kubelet.sock")).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            let _ = tx.send(());
        }
    });
    rx
}

/// Waits until the plugin has connected to the hung kubelet `n` times: its `Register`
/// calls are then in flight.
async fn registers_in_flight(
    calls: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    n: usize,
    p: &Plugin,
) {
    for _ in 0..n {
        tokio::time::timeout(GUARD, calls.recv())
            .await
            .unwrap_or_else(|_| panic!("no Register call within {GUARD:?}; log:\n{}", p.log()))
            .expect("the hung kubelet is gone");
    }
}

/// SIGTERM while `Register` hangs: the plugin does not wait for the call, and removes its
/// socket on the way out as after any SIGTERM.
#[tokio::test]
async fn sigterm_during_a_register_kubelet_never_answers_removes_the_socket() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut calls = hung_kubelet(&dirs.kubelet);
    let mut plugin = start_plugin(sim.root(), &dirs, None, &[]);
    registers_in_flight(&mut calls, 1, &plugin).await;
    assert!(dirs.kubelet.join(SOCKET).exists());
    // Exits before terminate()'s hang guard, which is longer than the Register timeout.
    let status = plugin.terminate();
    let log = plugin.log();
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(
        !dirs.kubelet.join(SOCKET).exists(),
        "the socket is left behind; log:\n{log}"
    );
    assert!(!log.contains("did not stop within"), "{log}");
}

/// A reload that removes a resource whose `Register` hangs: the resource stops at once and
/// its socket is gone by the time the reload is reported; the other resource stays.
#[tokio::test]
async fn a_reload_during_a_register_kubelet_never_answers_removes_the_socket() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let config = tmp.path().join("config.json");
    let write = |names: &[&str]| {
        let list: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"resourceName": n, "selectors": {"rootDevices": ["0000:18:00.0"]}}))
            .collect();
        let new = tmp.path().join("config.json.new");
        std::fs::write(
            &new,
            serde_json::json!({ "resourceList": list }).to_string(),
        )
        .unwrap();
        std::fs::rename(&new, &config).unwrap();
    };
    write(&["a", "b"]);
    let mut calls = hung_kubelet(&dirs.kubelet);
    let mut plugin = start_plugin(sim.root(), &dirs, Some(&config), &[]);
    registers_in_flight(&mut calls, 2, &plugin).await;
    assert!(dirs.kubelet.join("railvf-a.sock").exists());
    write(&["b"]);
    let log = wait_log(&mut plugin, "config reloaded").await;
    assert!(
        !dirs.kubelet.join("railvf-a.sock").exists(),
        "the removed resource's socket is left behind; log:\n{log}"
    );
    assert!(dirs.kubelet.join("railvf-b.sock").exists(), "{log}");
    assert!(!log.contains("did not stop within"), "{log}");
    plugin.assert_running();
}
