//! Live config: a ConfigMap-style directory swapped the way kubelet swaps it changes the
//! advertised resources without a restart; a broken config is rejected and the old
//! resources stay.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use railvf_proto::fake_kubelet::{FakeKubelet, Registered};
use railvf_proto::v1beta1::ListAndWatchResponse;
use railvf_sim::{Fault, SimOptions};
use support::*;
use tonic::Streaming;

/// A ConfigMap volume as kubelet lays it out: `..<timestamp>/config.json`, a `..data`
/// symlink to it, and `config.json -> ..data/config.json`.
struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, text: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = ConfigMapDir {
            dir,
            generation: 0,
            current: None,
        };
        c.swap(text);
        std::os::unix::fs::symlink("..data/config.json", c.dir.join("config.json")).unwrap();
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// kubelet's atomic writer: write a new timestamped directory, point `..data_tmp` at
    /// it, rename `..data_tmp` over `..data`, remove the old directory.
    fn swap(&mut self, text: &str) {
        self.generation += 1;
        let name = format!(
            "..2025_06_01_12_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        );
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("config.json"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(data) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

fn resource(name: &str, root_devices: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "resourceName": name,
        "selectors": { "rootDevices": root_devices, "isRdma": true },
    })
}

fn config(resources: &[serde_json::Value]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "resourceList": resources })).unwrap()
}

async fn registrations(k: &mut FakeKubelet, p: &Plugin, n: usize) -> BTreeMap<String, Registered> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = registration(k, p).await;
        out.insert(r.request.resource_name.clone(), r);
    }
    out
}

/// Waits for the stream to end (a removed resource's server stops).
async fn stream_ends(s: &mut Streaming<ListAndWatchResponse>, what: &str) {
    let fut = async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("the stream of {what} did not end"));
}

fn pf_vfs(sim: &railvf_sim::SimNode, pf: &str) -> Vec<String> {
    sim.vfs()
        .iter()
        .filter(|v| v.pf.to_string() == pf)
        .map(|v| v.pci.to_string())
        .collect()
}

#[tokio::test]
async fn a_swapped_configmap_changes_resources_without_a_restart() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut cm = ConfigMapDir::new(
        tmp.path().join("configmap"),
        &config(&[
            resource("keep", &["0000:18:00.0"]),
            resource("change", &["0000:40:00.0"]),
            resource("drop", &["0000:5e:00.0"]),
        ]),
    );
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(
        sim.root(),
        &dirs,
        Some(&cm.path()),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&mut plugin).await;
    let mut regs = registrations(&mut kubelet, &plugin, 3).await;
    let mut streams = BTreeMap::new();
    for (name, r) in regs.iter_mut() {
        let mut s = list_and_watch(&mut r.client).await;
        wait_list(&mut s, "8 devices", |l| l.len() == 8).await;
        streams.insert(name.clone(), s);
    }
    let mut keep = streams.remove("nvidia.com/keep").unwrap();
    let mut change = streams.remove("nvidia.com/change").unwrap();
    let mut drop_ = streams.remove("nvidia.com/drop").unwrap();

    // kubelet-style swap: keep unchanged, change selects a second PF, drop goes, new comes.
    cm.swap(&config(&[
        resource("keep", &["0000:18:00.0"]),
        resource("change", &["0000:40:00.0", "0000:4f:00.0"]),
        resource("new", &["0000:9a:00.0"]),
    ]));
    let new = registration(&mut kubelet, &plugin).await;
    assert_eq!(new.request.resource_name, "nvidia.com/new");
    assert_eq!(new.request.endpoint, "railvf-new.sock");
    let mut new_client = new.client;
    let mut new_stream = list_and_watch(&mut new_client).await;
    let l = wait_list(&mut new_stream, "the new resource's 8 VFs", |l| {
        l.len() == 8
    })
    .await;
    assert!(
        l.iter()
            .all(|d| pf_vfs(&sim, "0000:9a:00.0").contains(&d.id))
    );
    // The changed resource's open stream gets the new list.
    let l = wait_list(&mut change, "16 devices on the same stream", |l| {
        l.len() == 16
    })
    .await;
    assert!(l.iter().all(|d| d.health == "Healthy"));
    // The removed resource's stream ends and its socket is gone.
    stream_ends(&mut drop_, "the removed resource").await;
    assert!(!dirs.kubelet.join("railvf-drop.sock").exists());
    wait_metrics(addr, "one ok reload", |t| {
        sample(t, r#"railvf_config_reload_total{result="ok"}"#) == Some(1.0)
    })
    .await;
    wait_log(&mut plugin, "config reloaded").await;
    // Device-info files follow: the removed resource's go, the new and changed ones' come.
    let mut want: Vec<String> = Vec::new();
    for (name, pfs) in [
        ("keep", &["0000:18:00.0"][..]),
        ("change", &["0000:40:00.0", "0000:4f:00.0"][..]),
        ("new", &["0000:9a:00.0"][..]),
    ] {
        for pf in pfs {
            for vf in pf_vfs(&sim, pf) {
                want.push(format!("nvidia.com-{name}-{vf}-device.json"));
            }
        }
    }
    want.sort();
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let mut have: Vec<String> = std::fs::read_dir(&dirs.devinfo)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        if have == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device-info files after the reload: {have:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = http_get(addr, "/metrics").await.1;
    assert!(
        !text.contains("nvidia.com/drop"),
        "no series of a removed resource:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"railvf_vfs{resource="nvidia.com/change",state="healthy"}"#
        ),
        Some(16.0)
    );
    // The unchanged resource was not re-registered, and its stream is still open: a
    // health change arrives on it.
    assert!(kubelet.try_next_registration().is_none());
    let vf = pf_vfs(&sim, "0000:18:00.0")[2].clone();
    sim.inject_fault(vf.as_str(), Fault::PortDown).unwrap();
    wait_list(&mut keep, "the fault on the old stream", |l| {
        l.len() == 8 && health_of(l, &vf) == Some("Unhealthy")
    })
    .await;

    // A broken config: rejected with file, line and field; everything stays as it was.
    cm.swap(
        "{\n  \"resourceList\": [\n    {\n      \"resourceName\": \"keep\",\n      \"selectors\": { \"isRdma\": \"yes\" }\n    }\n  ]\n}\n",
    );
    let log = wait_log(&mut plugin, "config rejected").await;
    let line = log
        .lines()
        .find(|l| l.contains("config rejected"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "ERROR", "{line}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&cm.path().display().to_string())
            && msg.contains("line 5")
            && msg.contains("resourceList[0].selectors.isRdma")
            && msg.contains("keeping the previous configuration"),
        "{msg}"
    );
    wait_metrics(addr, "one rejected reload", |t| {
        sample(t, r#"railvf_config_reload_total{result="rejected"}"#) == Some(1.0)
    })
    .await;
    for sock in ["railvf-keep.sock", "railvf-change.sock", "railvf-new.sock"] {
        assert!(dirs.kubelet.join(sock).exists(), "{sock}");
    }
    sim.clear_fault(vf.as_str(), Fault::PortDown).unwrap();
    wait_list(&mut keep, "the old stream still alive", |l| {
        health_of(l, &vf) == Some("Healthy")
    })
    .await;

    // VFs created or removed under a PF still show up after the reloads.
    sim.set_num_vfs("0000:9a:00.0", 4).unwrap();
    wait_list(&mut new_stream, "4 VFs left", |l| l.len() == 4).await;
    sim.set_num_vfs("0000:9a:00.0", 8).unwrap();
    wait_list(&mut new_stream, "8 VFs again", |l| {
        l.len() == 8 && l.iter().all(|d| d.health == "Healthy")
    })
    .await;

    plugin.assert_running();
}

/// A plugin started on a plain config file (not a ConfigMap) with one resource, `a`, of
/// the first PF's VFs.
/// (Fields drop in order: the plugin stops before its files go.)
struct FileConfig {
    plugin: Plugin,
    kubelet: FakeKubelet,
    path: PathBuf,
    _tmp: tempfile::TempDir,
    _sim: railvf_sim::SimNode,
}

impl FileConfig {
    async fn start() -> Self {
        let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path());
        let path: PathBuf = tmp.path().join("etc/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, config(&[resource("a", &["0000:18:00.0"])])).unwrap();
        let kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
        let plugin = start_plugin(sim.root(), &dirs, Some(Path::new(&path)), &[]);
        FileConfig {
            plugin,
            kubelet,
            path,
            _tmp: tmp,
            _sim: sim,
        }
    }
}

/// A plain config file (not a ConfigMap) edited in place is reloaded; excludeTopology
/// flipping re-sends the list without NUMA nodes on the open stream.
#[tokio::test]
async fn a_plain_config_file_is_reloaded_in_place() {
    let mut t = FileConfig::start().await;
    let (path, plugin, kubelet) = (&t.path, &mut t.plugin, &mut t.kubelet);
    let mut client = registration(kubelet, plugin).await.client;
    let mut s = list_and_watch(&mut client).await;
    wait_list(&mut s, "8 devices with NUMA", |l| {
        l.len() == 8 && l.iter().all(|d| numa_of(d) == Some(0))
    })
    .await;
    let mut r = resource("a", &["0000:18:00.0"]);
    r["excludeTopology"] = true.into();
    std::fs::write(path, config(&[r])).unwrap();
    wait_list(&mut s, "8 devices without NUMA", |l| {
        l.len() == 8 && l.iter().all(|d| d.topology.is_none())
    })
    .await;
    wait_log(plugin, "config reloaded").await;
    assert!(
        kubelet.try_next_registration().is_none(),
        "no re-registration"
    );
}

/// Adding a resource flips the default `ncclIbHca` of the one already there (true with one
/// resource, false with several), and the reload also turns its `madDevices` on; neither
/// counts as a change of that resource, which keeps its VFs although the new one, listed
/// first, selects them too (warned about, VF by VF).
#[tokio::test]
async fn adding_a_resource_does_not_take_the_vfs_of_one_whose_nccl_default_flips() {
    let mut t = FileConfig::start().await;
    let (path, plugin, kubelet) = (&t.path, &mut t.plugin, &mut t.kubelet);
    let mut client = registration(kubelet, plugin).await.client;
    let mut s = list_and_watch(&mut client).await;
    wait_list(&mut s, "a's 8 devices", |l| l.len() == 8).await;

    std::fs::write(
        path,
        config(&[resource("b", &["0000:18:00.0"]), {
            let mut a = resource("a", &["0000:18:00.0"]);
            a["madDevices"] = true.into();
            a
        }]),
    )
    .unwrap();
    let mut b = registration(kubelet, plugin).await;
    assert_eq!(b.request.resource_name, "nvidia.com/b");
    wait_log(plugin, "config reloaded").await;
    // b's first list is the current one: every VF stayed with a.
    let mut bs = list_and_watch(&mut b.client).await;
    let first = bs.message().await.unwrap().unwrap();
    assert!(first.devices.is_empty(), "b took {:?}", first.devices);
    let log = plugin.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("VF of nvidia.com/a is now also selected by nvidia.com/b"))
        .count();
    assert_eq!(warned, 8, "{log}");
}
