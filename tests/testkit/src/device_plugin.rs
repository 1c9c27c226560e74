//! The real `railvf-device-plugin` binary against the fake kubelet of `railvf-proto`: the
//! process (its directories, its log, how it is stopped) and its gRPC streams. Used by the
//! device plugin's own tests and by the end-to-end tests; each passes the binary it built.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use railvf_proto::fake_kubelet::{FakeKubelet, Registered};
use railvf_proto::v1beta1::device_plugin_client::DevicePluginClient;
use railvf_proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, Device, Empty, ListAndWatchResponse,
};
use tonic::Streaming;
use tonic::transport::Channel;

/// Hang guard for anything the tests wait on: generous, never a measurement.
pub const GUARD: Duration = Duration::from_secs(30);

pub const RESOURCE: &str = "nvidia.com/dgx_h200_vfs";
/// The plugin's socket for the default resource, in the kubelet directory.
pub const SOCKET: &str = "railvf-dgx_h200_vfs.sock";

/// Where the plugin and the fake kubelet meet, inside the test's own temp dir.
pub struct Dirs {
    pub kubelet: PathBuf,
    pub devinfo: PathBuf,
    pub work: PathBuf,
}

impl Dirs {
    pub fn new(tmp: &Path) -> Dirs {
        let d = Dirs {
            kubelet: tmp.join("device-plugins"),
            devinfo: tmp.join("devinfo"),
            work: tmp.to_path_buf(),
        };
        std::fs::create_dir_all(&d.kubelet).unwrap();
        d
    }

    /// The device-info files: file name → contents. The writer's temporary files
    /// (`.<name>.<random>.tmp`, renamed into place) are not device-info files: counted, a
    /// slow rename made "64 files" true with one VF's file still missing.
    pub fn devinfo_files(&self) -> std::collections::BTreeMap<String, String> {
        std::fs::read_dir(&self.devinfo)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running plugin process; SIGKILLed on drop if still running.
pub struct Plugin {
    child: Option<Child>,
    pub log: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Plugin {
    /// Starts `bin serve` on the host `root`, with sockets and device-info files in `dirs`,
    /// the config file `config` (none: an empty one, so that a real /etc/railvf/config.json
    /// of the machine running the tests is never read) and `extra` arguments. The
    /// environment is cleared but for PATH.
    pub fn start(
        bin: &Path,
        root: &Path,
        dirs: &Dirs,
        config: Option<&Path>,
        extra: &[&str],
    ) -> Plugin {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = dirs.work.join(format!("plugin-{n}.log"));
        let config = match config {
            Some(c) => c.to_path_buf(),
            None => {
                let empty = dirs.work.join("no-config.json");
                std::fs::write(&empty, "{}").unwrap();
                empty
            }
        };
        let child = Command::new(bin)
            .arg("serve")
            .arg("--host-root")
            .arg(root)
            .arg("--kubelet-dir")
            .arg(&dirs.kubelet)
            .arg("--devinfo-dir")
            .arg(&dirs.devinfo)
            .arg("--config")
            .arg(&config)
            .args(["--health-interval-ms", "50", "--log-level", "debug"])
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Plugin {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (hang guard) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("plugin running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("plugin did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (the OOM killer, a node agent, `kubectl delete --force`).
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("plugin running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Fails the test with the log if the plugin has exited or panicked.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("plugin exited ({st}); log:\n{}", self.log());
        }
        self.assert_no_panic();
    }

    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "plugin panicked:\n{log}");
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The next registration, failing with the plugin's log on timeout.
pub async fn registration(k: &mut FakeKubelet, p: &Plugin) -> Registered {
    match k.next_registration(GUARD).await {
        Some(r) => r,
        None => panic!("no registration within {GUARD:?}; plugin log:\n{}", p.log()),
    }
}

pub async fn list_and_watch(
    client: &mut DevicePluginClient<Channel>,
) -> Streaming<ListAndWatchResponse> {
    client.list_and_watch(Empty {}).await.unwrap().into_inner()
}

/// Reads lists from the stream until `pred` holds for one; returns it.
pub async fn wait_list(
    stream: &mut Streaming<ListAndWatchResponse>,
    what: &str,
    pred: impl Fn(&[Device]) -> bool,
) -> Vec<Device> {
    let fut = async {
        loop {
            let r = stream
                .message()
                .await
                .unwrap_or_else(|e| panic!("stream failed while waiting for {what}: {e}"))
                .unwrap_or_else(|| panic!("stream ended while waiting for {what}"));
            if pred(&r.devices) {
                return r.devices;
            }
        }
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("no device list with {what} within {GUARD:?}"))
}

pub fn health_of<'a>(list: &'a [Device], id: &str) -> Option<&'a str> {
    list.iter().find(|d| d.id == id).map(|d| d.health.as_str())
}

pub fn numa_of(d: &Device) -> Option<i64> {
    d.topology
        .as_ref()
        .and_then(|t| t.nodes.first())
        .map(|n| n.id)
}

/// An Allocate request for one container with these device IDs.
pub fn alloc_req(ids: &[&str]) -> AllocateRequest {
    AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: ids.iter().map(|s| s.to_string()).collect(),
        }],
    }
}

/// (id, health, NUMA nodes) of every device, sorted: what kubelet sees.
pub fn view(list: &[Device]) -> Vec<(String, String, Vec<i64>)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.health.clone(),
                d.topology
                    .as_ref()
                    .map(|t| t.nodes.iter().map(|n| n.id).collect())
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}
