//! `--use-cdi` with the real plugin binary, the fake kubelet and the simulated DGX H200:
//! `Allocate` answers CDI names, the spec file resolves them to the VFs' uverbs nodes as
//! they are when a container is created (also after the VFs are re-created in another
//! order, as after a reboot), and the files follow the configured resources.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_sim::{SimNode, SimOptions};
use support::*;

const SPEC: &str = "railvf_nvidia.com_dgx_h200_vfs.json";

/// A spec's node as the tests compare it: path, major, minor (the numbers are absent from
/// a node whose `dev` attribute the plugin could not read: the simulator writes a
/// re-created VF's files one by one, and a spec written meanwhile can lack them).
type NodeSeen = (String, Option<u64>, Option<u64>);

/// The spec's devices: name → its first node.
fn devices(spec: &serde_json::Value) -> BTreeMap<String, NodeSeen> {
    spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let n = &d["containerEdits"]["deviceNodes"][0];
            (
                d["name"].as_str().unwrap().to_string(),
                (
                    n["path"].as_str().unwrap().to_string(),
                    n["major"].as_u64(),
                    n["minor"].as_u64(),
                ),
            )
        })
        .collect()
}

/// What the spec must say of every VF of the sim: its uverbs node, with the numbers of
/// the node's sysfs `dev` attribute.
fn expected(sim: &SimNode) -> BTreeMap<String, NodeSeen> {
    sim.vfs()
        .iter()
        .map(|v| {
            let dev = std::fs::read_to_string(
                v.sysfs_dir
                    .join(format!("infiniband_verbs/uverbs{}/dev", v.uverbs)),
            )
            .unwrap();
            let (major, minor) = dev.trim().split_once(':').unwrap();
            (
                v.pci.to_string(),
                (
                    format!("/dev/infiniband/uverbs{}", v.uverbs),
                    Some(major.parse().unwrap()),
                    Some(minor.parse().unwrap()),
                ),
            )
        })
        .collect()
}

fn read(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Waits until the file at `path` satisfies `ok` (`None`: no file or not JSON).
async fn wait_file(
    p: &Plugin,
    path: &Path,
    what: &str,
    ok: impl Fn(Option<&serde_json::Value>) -> bool,
) {
    let deadline = Instant::now() + GUARD;
    loop {
        let v = read(path);
        if ok(v.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} is {v:?}; plugin log:\n{}",
            path.display(),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces the config file the way an editor or kubelet does: a new file renamed over it.
fn write_config(path: &Path, resource: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(
        &tmp,
        format!(
            r#"{{"resourceList":[{{"resourceName":"{resource}","selectors":{{"isRdma":true}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn with_cdi_allocate_answers_names_that_resolve_to_the_vfs_nodes_of_the_moment() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let cdi = tmp.path().join("cdi");
    let cdi_arg = cdi.to_str().unwrap();
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(
        sim.root(),
        &dirs,
        None,
        &["--use-cdi", "--cdi-dir", cdi_arg],
    );
    let mut client = registration(&mut kubelet, &plugin).await.client;

    // Written before the resource registered: every VF, with the numbers of its node.
    let spec_path = cdi.join(SPEC);
    let spec = read(&spec_path).expect("the spec is there once the resource registered");
    assert_eq!(spec["cdiVersion"], "0.5.0");
    assert_eq!(spec["kind"], RESOURCE);
    assert_eq!(devices(&spec), expected(&sim));
    assert_eq!(
        spec["containerEdits"]["deviceNodes"],
        serde_json::json!([{"path": "/dev/infiniband/rdma_cm", "hostPath": "/dev/infiniband/rdma_cm",
                            "type": "c", "major": 10, "minor": 58, "permissions": "rw"}])
    );

    let (a, b) = (
        sim.vf("0000:18:00.1").unwrap(),
        sim.vf("0000:9a:00.2").unwrap(),
    );
    let ids = [a.pci.to_string(), b.pci.to_string()];
    let r = client
        .allocate(alloc_req(&[&ids[1], &ids[0]]))
        .await
        .unwrap()
        .into_inner();
    let c = &r.container_responses[0];
    assert!(c.devices.is_empty(), "no device paths: {:?}", c.devices);
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{RESOURCE}={}", ids[0]),
            format!("{RESOURCE}={}", ids[1])
        ]
    );
    // The variables are those of the answer without CDI.
    assert_eq!(
        c.envs.get("PCIDEVICE_NVIDIA_COM_DGX_H200_VFS"),
        Some(&ids.join(","))
    );
    assert_eq!(
        c.envs.get("NCCL_IB_HCA"),
        Some(&format!("={},{}", a.rdma_device, b.rdma_device))
    );

    // The VFs of two PFs re-created in the other order (as a reboot can probe them): the
    // kernel hands out the lowest free numbers, so each PF's VFs get the other's nodes.
    // The names kubelet replays stay; the spec they resolve through follows.
    for (pf, n) in [("0000:18:00.0", 0), ("0000:9a:00.0", 0)] {
        sim.set_num_vfs(pf, n).unwrap();
    }
    for (pf, n) in [("0000:9a:00.0", 8), ("0000:18:00.0", 8)] {
        sim.set_num_vfs(pf, n).unwrap();
    }
    let a2 = sim.vf(&ids[0]).unwrap();
    assert_ne!(a2.uverbs, a.uverbs, "the sim renumbered the VF");
    let want = expected(&sim);
    wait_file(&plugin, &spec_path, "the spec after the renumbering", |v| {
        v.is_some_and(|v| devices(v) == want)
    })
    .await;

    // Stopped, the plugin leaves the spec: containers of running pods restart meanwhile.
    assert!(plugin.terminate().success(), "{}", plugin.log());
    assert_eq!(read(&spec_path).map(|v| devices(&v)), Some(want.clone()));

    // Started with another resource: the old spec goes at start, the new one is written.
    let config = tmp.path().join("config.json");
    write_config(&config, "rails");
    plugin = start_plugin(
        sim.root(),
        &dirs,
        Some(&config),
        &["--use-cdi", "--cdi-dir", cdi_arg],
    );
    let _ = registration(&mut kubelet, &plugin).await;
    let rails = cdi.join("railvf_nvidia.com_rails.json");
    assert_eq!(read(&rails).map(|v| devices(&v)), Some(want));
    assert!(
        !spec_path.exists(),
        "the spec of the resource no longer configured"
    );

    // A reload to a name that cannot be a CDI kind is rejected; the resource and its
    // spec stay. A reload to a valid one swaps the specs.
    write_config(&config, "rails.v2");
    wait_log(&mut plugin, "cannot be a CDI kind").await;
    assert!(rails.exists());
    write_config(&config, "dgx_h200_vfs");
    let _ = registration(&mut kubelet, &plugin).await;
    wait_file(
        &plugin,
        &spec_path,
        "the spec of the reloaded resource",
        |v| v.is_some(),
    )
    .await;
    wait_file(&plugin, &rails, "the removed resource's spec", |v| {
        v.is_none()
    })
    .await;
    assert!(!rails.exists());
    assert!(plugin.terminate().success(), "{}", plugin.log());

    // At start, such a name stops the plugin before anything is served.
    write_config(&config, "rails.v2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_railvf-device-plugin"))
        .args(["serve", "--use-cdi", "--cdi-dir", cdi_arg, "--config"])
        .arg(&config)
        .arg("--host-root")
        .arg(sim.root())
        .arg("--kubelet-dir")
        .arg(&dirs.kubelet)
        .arg("--devinfo-dir")
        .arg(&dirs.devinfo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"resource "nvidia.com/rails.v2" cannot be a CDI kind"#)
            && stderr.contains("holds '.'")
            && stderr.contains("run without --use-cdi"),
        "{stderr}"
    );
}

/// `/run/cdi` for the podman test: the runtime reads specs only from `/etc/cdi` and
/// `/var/run/cdi`, so the test's spec directory is bind-mounted there in a mount namespace
/// of podman's own. The empty mount point is created when missing and removed after.
struct RunCdi {
    created: bool,
}

impl RunCdi {
    fn new() -> RunCdi {
        let created = !Path::new("/run/cdi").exists();
        if created {
            std::fs::create_dir("/run/cdi").unwrap();
        }
        RunCdi { created }
    }
}

impl Drop for RunCdi {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir("/run/cdi");
        }
    }
}

/// A real runtime resolves the names: podman (runc, busybox-static rootfs) runs a
/// container with the CDI name `Allocate` answered and sees the VF's uverbs node and
/// `rdma_cm`, with the numbers sysfs gives; after the VFs are re-created in another order,
/// the same name gives the new node.
#[tokio::test]
async fn podman_resolves_the_allocated_names_to_the_vfs_nodes() {
    if !railvf_sim::require_root() {
        return;
    }
    railvf_testkit::require_tool("/usr/bin/podman", "podman");
    railvf_testkit::require_tool("/usr/sbin/runc", "runc");
    railvf_testkit::require_tool("/bin/busybox", "busybox-static");
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dirs = Dirs::new(t);
    let cdi = t.join("cdi");
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let plugin = start_plugin(
        sim.root(),
        &dirs,
        None,
        &["--use-cdi", "--cdi-dir", cdi.to_str().unwrap()],
    );
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let vf = sim.vf("0000:18:00.1").unwrap();
    let r = client
        .allocate(alloc_req(&[&vf.pci.to_string()]))
        .await
        .unwrap()
        .into_inner();
    let name = r.container_responses[0].cdi_devices[0].name.clone();

    let podman = railvf_testkit::podman::Podman::new(t, "");
    let _mount_point = RunCdi::new();
    // `ls -l` of the container's /dev/infiniband: name → "major, minor".
    let nodes_in_container = || {
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /run/cdi && shift && exec podman "$@""#)
            .arg("sh")
            .arg(&cdi)
            .args(podman.global_args())
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--device",
                &name,
                "--rootfs",
            ])
            .arg(&podman.rootfs)
            .args(["/bin/busybox", "ls", "-l", "/dev/infiniband"])
            .env("CONTAINERS_CONF", &podman.conf)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "podman run --device {name}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // crw-rw-rw-    1 0   0   231, 204 Nov 24 21:22 uverbs12
        stdout
            .lines()
            .filter(|l| l.starts_with('c'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[f.len() - 1].to_string(), format!("{} {}", f[4], f[5]))
            })
            .collect::<BTreeMap<String, String>>()
    };
    let want = |n: u32| {
        BTreeMap::from([
            ("rdma_cm".to_string(), "10, 58".to_string()),
            (
                format!("uverbs{n}"),
                if n < 32 {
                    format!("231, {}", 192 + n)
                } else {
                    format!("240, {}", n - 32)
                },
            ),
        ])
    };
    assert_eq!(nodes_in_container(), want(vf.uverbs));

    // The VFs re-created in another order (a reboot): the name kubelet replays now gives
    // the VF's new node.
    for (pf, n) in [
        ("0000:18:00.0", 0),
        ("0000:9a:00.0", 0),
        ("0000:9a:00.0", 8),
        ("0000:18:00.0", 8),
    ] {
        sim.set_num_vfs(pf, n).unwrap();
    }
    let renumbered = sim.vf(vf.pci).unwrap().uverbs;
    assert_ne!(renumbered, vf.uverbs);
    let pci = vf.pci.to_string();
    let node = expected(&sim).remove(&pci);
    assert_eq!(
        node.as_ref().map(|n| n.0.clone()),
        Some(format!("/dev/infiniband/uverbs{renumbered}"))
    );
    wait_file(
        &plugin,
        &cdi.join(SPEC),
        "the renumbered VF in the spec",
        // Absent while its PF has no VFs; its numbers too while it is being re-created.
        |v| v.is_some_and(|v| devices(v).get(&pci) == node.as_ref()),
    )
    .await;
    assert_eq!(nodes_in_container(), want(renumbered));
}
