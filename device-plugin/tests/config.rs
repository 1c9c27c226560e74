//! Config files: the DGX H200 write-up's `sriovDevicePlugin.config` (verbatim, in
//! `tests/configs/seed-dgx-h200.json`), a two-resource config, and malformed ones that must
//! each fail with their own message naming the file, line and field.

mod support;

use std::path::{Path, PathBuf};

use railvf_device_plugin::config::{Config, ConfigError, LinkType};
use railvf_device_plugin::pool::{Monitor, Node};
use railvf_host::HostRoot;
use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_sim::SimOptions;
use support::*;

fn file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(name)
}

#[test]
fn the_seed_config_loads_unchanged() {
    let c = Config::load(&file("seed-dgx-h200.json")).unwrap();
    assert_eq!(c.resources.len(), 1);
    let r = &c.resources[0];
    assert_eq!(r.full_name(), "nvidia.com/dgx_h200_vfs");
    let s = &r.selectors[0];
    assert_eq!(s.vendors, vec![0x15b3]);
    assert_eq!(s.devices, vec![0x101c]);
    assert_eq!(s.pf_names[0].raw, "mlx-*");
    assert!(s.is_rdma);
    assert!(c.warnings.is_empty());
}

#[test]
fn a_config_with_two_resources_loads() {
    let c = Config::load(&file("two-resources.json")).unwrap();
    let names: Vec<String> = c.resources.iter().map(|r| r.full_name()).collect();
    assert_eq!(names, ["nvidia.com/rails_numa0", "example.com/rails_numa1"]);
    assert_eq!(
        c.resources[0].selectors[0].link_types,
        vec![LinkType::Infiniband]
    );
    assert!(c.resources[1].exclude_topology);
    assert_eq!(c.resources[1].selectors.len(), 2);
    assert!(c.resources[1].selectors.iter().all(|s| s.is_rdma));
}

/// (file, line, field, words the message must contain)
const MALFORMED: &[(&str, usize, &str, &[&str])] = &[
    (
        "bad-syntax.json",
        4,
        "resourceList[0]",
        &["expected `,` or `}`"],
    ),
    (
        "bad-type.json",
        6,
        "resourceList[0].selectors.isRdma",
        &["invalid type", "\"yes\"", "boolean"],
    ),
    (
        "missing-name.json",
        7,
        "resourceList[1]",
        &["missing field `resourceName`"],
    ),
    (
        "bad-pf-range.json",
        5,
        "resourceList[0].selectors.pfNames[1]",
        &["ibp64s0#7-3", "ends before it starts"],
    ),
    (
        "bad-root-device.json",
        6,
        "resourceList[0].selectors[1].rootDevices[0]",
        &["18:00.0", "dddd:bb:dd.f"],
    ),
    (
        "bad-link-type.json",
        4,
        "resourceList[0].selectors.linkTypes[0]",
        &["\"ib\"", "\"infiniband\""],
    ),
    (
        "duplicate-resource.json",
        5,
        "resourceList",
        &["nvidia.com/dgx_h200_vfs", "unique"],
    ),
    (
        "bad-device-id.json",
        4,
        "resourceList[0].selectors.devices[0]",
        &["ConnectX-7", "hex"],
    ),
    (
        "bad-rail-map.json",
        4,
        "railMap",
        &["0000:40:00", "PCI address"],
    ),
];

#[test]
fn each_malformed_config_says_where_and_what() {
    let mut messages = Vec::new();
    for (name, line, field, words) in MALFORMED {
        let path = file(name);
        let err = Config::load(&path).expect_err(name);
        let msg = err.to_string();
        match &err {
            ConfigError::Invalid {
                path: p,
                line: l,
                field: f,
                ..
            } => {
                assert_eq!(p, &path, "{msg}");
                assert_eq!(l, line, "{name}: {msg}");
                assert!(f.starts_with(field), "{name}: field {f:?}: {msg}");
            }
            other => panic!("{name}: {other}"),
        }
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("line {line}")), "{msg}");
        for w in *words {
            assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
        }
        messages.push(msg);
    }
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), MALFORMED.len(), "every error is its own");
}

#[test]
fn the_binary_exits_with_the_config_error() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_railvf-device-plugin"))
        .arg("--host-root")
        .arg(sim.root())
        .arg("--config")
        .arg(file("bad-type.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-type.json")
            && err.contains("line 6")
            && err.contains("resourceList[0].selectors.isRdma"),
        "{err}"
    );
}

/// The seed's `devices: ["101c"]` (a ConnectX-6 VF id) and `pfNames: ["mlx-*"]` match
/// nothing on a DGX H200: the warning names both and what the node has instead.
#[test]
fn the_seed_config_on_a_dgx_h200_explains_why_it_selects_nothing() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let c = Config::load(&file("seed-dgx-h200.json")).unwrap();
    let root = HostRoot::new(sim.root()).unwrap();
    let (m, rx) = Monitor::new(Node::scan(&root, None).unwrap(), &c);
    assert!(rx[0].devices.borrow().devices.is_empty());
    let empty = m.empty_resources();
    assert_eq!(empty.len(), 1);
    let (name, why) = &empty[0];
    assert_eq!(name, "nvidia.com/dgx_h200_vfs");
    for w in [
        "devices [101c (ConnectX-6 VF)]",
        "64 15b3:101e",
        "ibp24s0 (0000:18:00.0)",
        "pfNames [mlx-*]",
    ] {
        assert!(why.contains(w), "{why:?} lacks {w:?}");
    }
}

#[tokio::test]
async fn the_seed_config_registers_and_warns() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let plugin = start_plugin(sim.root(), &dirs, Some(&file("seed-dgx-h200.json")), &[]);
    let reg = registration(&mut kubelet, &plugin).await;
    assert_eq!(reg.request.resource_name, RESOURCE);
    let mut client = reg.client;
    let mut stream = list_and_watch(&mut client).await;
    wait_list(&mut stream, "an empty list", |l| l.is_empty()).await;
    let log = plugin.log();
    assert!(
        log.contains("selects no VF") && log.contains("101c") && log.contains("15b3:101e"),
        "{log}"
    );
}

#[tokio::test]
async fn two_resources_register_side_by_side() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let plugin = start_plugin(sim.root(), &dirs, Some(&file("two-resources.json")), &[]);
    let mut regs = [
        registration(&mut kubelet, &plugin).await,
        registration(&mut kubelet, &plugin).await,
    ];
    regs.sort_by(|a, b| a.request.resource_name.cmp(&b.request.resource_name));
    assert_eq!(regs[0].request.resource_name, "example.com/rails_numa1");
    assert_eq!(regs[0].request.endpoint, "railvf-rails_numa1.sock");
    assert_eq!(regs[1].request.resource_name, "nvidia.com/rails_numa0");

    // NUMA 1: all VFs of 9a and c0, VFs 0-3 of ibp206s0 and ibp220s0; no topology.
    let mut s1 = list_and_watch(&mut regs[0].client).await;
    let l1 = wait_list(&mut s1, "24 devices", |l| l.len() == 24).await;
    assert!(
        l1.iter()
            .all(|d| d.topology.is_none() && d.health == "Healthy")
    );
    assert!(l1.iter().any(|d| d.id == "0000:dc:00.4"));
    assert!(!l1.iter().any(|d| d.id == "0000:dc:00.5"));
    // NUMA 0: every VF of the four NUMA 0 compute PFs, with topology.
    let mut s0 = list_and_watch(&mut regs[1].client).await;
    let l0 = wait_list(&mut s0, "32 devices", |l| l.len() == 32).await;
    assert!(l0.iter().all(|d| numa_of(d) == Some(0)));
}

/// With two resources, a container asking for both would get one resource's
/// `NCCL_IB_HCA` (kubelet keeps one value of a duplicated variable): by default neither
/// sets it, each sets its own `PCIDEVICE_<R>_RDMA`, and the log says so once. A reload
/// that gives one resource `ncclIbHca: true` applies to its next Allocate.
#[tokio::test]
async fn two_resources_set_their_own_rdma_variable_and_not_nccl_ib_hca() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let config = tmp.path().join("config.json");
    let text = std::fs::read_to_string(file("two-resources.json")).unwrap();
    std::fs::write(&config, &text).unwrap();
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(sim.root(), &dirs, Some(&config), &[]);
    let mut regs = [
        registration(&mut kubelet, &plugin).await,
        registration(&mut kubelet, &plugin).await,
    ];
    regs.sort_by(|a, b| a.request.resource_name.cmp(&b.request.resource_name));
    let (numa1, numa0) = (
        sim.vf("0000:9a:00.1").unwrap(),
        sim.vf("0000:18:00.1").unwrap(),
    );
    let mut allocate = async |i: usize, id: &str| {
        let mut s = list_and_watch(&mut regs[i].client).await;
        wait_list(&mut s, "the VF listed", |l| l.iter().any(|d| d.id == id)).await;
        regs[i]
            .client
            .allocate(alloc_req(&[id]))
            .await
            .unwrap()
            .into_inner()
            .container_responses[0]
            .envs
            .clone()
    };
    let e1 = allocate(0, &numa1.pci.to_string()).await;
    let e0 = allocate(1, &numa0.pci.to_string()).await;
    assert_eq!(
        e1.get("PCIDEVICE_EXAMPLE_COM_RAILS_NUMA1_RDMA"),
        Some(&numa1.rdma_device)
    );
    assert_eq!(
        e0.get("PCIDEVICE_NVIDIA_COM_RAILS_NUMA0_RDMA"),
        Some(&numa0.rdma_device)
    );
    assert!(!e0.contains_key("NCCL_IB_HCA") && !e1.contains_key("NCCL_IB_HCA"));
    assert_eq!(e0.len(), 2, "{e0:?}");
    let log = plugin.log();
    let notes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NCCL_IB_HCA is not set by"))
        .collect();
    assert_eq!(notes.len(), 1, "{log}");
    assert!(
        notes[0].contains("nvidia.com/rails_numa0, example.com/rails_numa1")
            && notes[0].contains("\"level\":\"INFO\""),
        "{}",
        notes[0]
    );

    // ncclIbHca on one of them, by a reload.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["resourceList"][0]["ncclIbHca"] = true.into();
    let new = tmp.path().join("config.json.new");
    std::fs::write(&new, v.to_string()).unwrap();
    std::fs::rename(&new, &config).unwrap();
    wait_log(&mut plugin, "config reloaded").await;
    let e0 = allocate(1, &numa0.pci.to_string()).await;
    assert_eq!(
        e0.get("NCCL_IB_HCA"),
        Some(&format!("={}", numa0.rdma_device))
    );
    assert!(e0.contains_key("PCIDEVICE_NVIDIA_COM_RAILS_NUMA0_RDMA"));
    let e1 = allocate(0, &numa1.pci.to_string()).await;
    assert!(!e1.contains_key("NCCL_IB_HCA"), "{e1:?}");
}

/// `madDevices` passes each VF's `umadN` and `issmN` besides its uverbs node (as sriov-dp
/// always does); a VF without a umad node, or whose node is missing in /dev, is refused
/// with what to do; a reload that turns it off applies to the next Allocate.
#[tokio::test]
async fn mad_devices_passes_umad_and_issm_and_a_reload_turns_it_off() {
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let config = tmp.path().join("config.json");
    let write_config = |mad: bool| {
        let new = tmp.path().join("config.json.new");
        std::fs::write(
            &new,
            format!(r#"{{"resourceList":[{{"resourceName":"vfs","madDevices":{mad}}}]}}"#),
        )
        .unwrap();
        std::fs::rename(&new, &config).unwrap();
    };
    write_config(true);
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(sim.root(), &dirs, Some(&config), &[]);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let (a, b) = (
        sim.vf("0000:18:00.1").unwrap(),
        sim.vf("0000:9a:00.2").unwrap(),
    );
    let mut s = list_and_watch(&mut client).await;
    wait_list(&mut s, "64 devices", |l| l.len() == 64).await;
    drop(s);
    let paths = |r: &railvf_proto::v1beta1::AllocateResponse| -> Vec<String> {
        let c = &r.container_responses[0];
        assert!(
            c.devices
                .iter()
                .all(|d| d.container_path == d.host_path && d.permissions == "rw")
        );
        c.devices.iter().map(|d| d.host_path.clone()).collect()
    };
    let nodes = |n: u32| {
        [
            format!("/dev/infiniband/uverbs{n}"),
            format!("/dev/infiniband/issm{n}"),
            format!("/dev/infiniband/umad{n}"),
        ]
    };
    let (ia, ib) = (a.pci.to_string(), b.pci.to_string());
    let r = client
        .allocate(alloc_req(&[&ib, &ia]))
        .await
        .unwrap()
        .into_inner();
    let mut want: Vec<String> = nodes(a.uverbs).into_iter().chain(nodes(b.uverbs)).collect();
    want.push("/dev/infiniband/rdma_cm".into());
    assert_eq!(paths(&r), want);

    // A VF's umad node missing in /dev: refused, naming the node and the module.
    let node = sim.root().join(format!("dev/infiniband/umad{}", a.uverbs));
    std::fs::rename(&node, node.with_extension("away")).unwrap();
    let err = client.allocate(alloc_req(&[&ia])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains(&format!("{} does not exist on the host", node.display()))
            && err.message().contains("is ib_umad loaded?"),
        "{}",
        err.message()
    );
    std::fs::rename(node.with_extension("away"), &node).unwrap();
    // A VF listing an issm node but no umad node: refused, naming the VF and what to do.
    std::fs::remove_dir_all(b.sysfs_dir.join(format!("infiniband_mad/umad{}", b.uverbs))).unwrap();
    let err = client.allocate(alloc_req(&[&ib])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains(&format!("device {ib} of nvidia.com/vfs has no umad device"))
            && err
                .message()
                .contains("load ib_umad, or set madDevices to false"),
        "{}",
        err.message()
    );
    client
        .allocate(alloc_req(&[&ia]))
        .await
        .expect("the other VF is fine");

    // Off by a reload: the uverbs node only, the same 64 VFs.
    write_config(false);
    wait_log(
        &mut plugin,
        "no longer passes the VFs' umad and issm devices",
    )
    .await;
    wait_log(&mut plugin, "config reloaded").await;
    let r = client
        .allocate(alloc_req(&[&ib]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        paths(&r),
        [
            format!("/dev/infiniband/uverbs{}", b.uverbs),
            "/dev/infiniband/rdma_cm".into()
        ]
    );
}

/// The ConfigMap shipped in `deploy/` selects all 64 compute VFs of the DGX H200.
#[test]
fn the_deployed_configmap_selects_every_compute_vf() {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/device-plugin/configmap.yaml"),
    )
    .unwrap();
    // The `config.json: |` block scalar, de-indented (no YAML parser needed for it).
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config.json: |"));
    let head = lines.next().expect("config.json block");
    let indent = head.len() - head.trim_start().len();
    let text: String = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(|l| format!("{}\n", l.get(indent + 2..).unwrap_or("")))
        .collect();
    let c = Config::parse(&text, Path::new("configmap.yaml")).unwrap();
    let sim = SimOptions::dgx_h200().no_links().build().unwrap();
    let root = HostRoot::new(sim.root()).unwrap();
    let (_m, rx) = Monitor::new(Node::scan(&root, None).unwrap(), &c);
    let set = rx[0].devices.borrow();
    assert_eq!(set.devices.len(), 64);
    assert!(set.devices.values().all(|d| d.health.is_healthy()));
}
