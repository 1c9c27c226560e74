//! Test support: the real `railvf-device-plugin` binary run against the fake kubelet of
//! `railvf-proto` (feature `fake-kubelet`) on a simulated node.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use railvf_proto::fake_kubelet::{FakeKubelet, Registered};
use railvf_proto::v1beta1::device_plugin_client::DevicePluginClient;
use railvf_proto::v1beta1::{Device, Empty, ListAndWatchResponse};
use tonic::Streaming;
use tonic::transport::Channel;

/// Hang guard for anything the tests wait on: generous, never a measurement.
pub const GUARD: Duration = Duration::from_secs(20);

pub const RESOURCE: &str = "nvidia.com/dgx_h200_vfs";

/// A running plugin process; SIGKILLed on drop if still running.
pub struct Plugin {
    child: Option<Child>,
    pub log: PathBuf,
}

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
}

impl Plugin {
    /// Starts the binary on `root` with sockets and device-info files in `dirs`.
    pub fn start(root: &Path, dirs: &Dirs, config: Option<&Path>, extra: &[&str]) -> Plugin {
        let log = dirs.work.join(format!(
            "plugin-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_railvf-device-plugin"));
        cmd.arg("serve")
            .arg("--host-root")
            .arg(root)
            .arg("--kubelet-dir")
            .arg(&dirs.kubelet)
            .arg("--devinfo-dir")
            .arg(&dirs.devinfo)
            .arg("--health-interval-ms")
            .arg("50")
            .arg("--log-level")
            .arg("debug")
            .args(extra)
            .env_remove("RAILVF_CONFIG")
            .env_remove("RAILVF_HOST_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match config {
            Some(c) => {
                cmd.arg("--config").arg(c);
            }
            // Never pick up a real /etc/railvf/config.json of the machine running tests.
            None => {
                let empty = dirs.work.join("no-config.json");
                std::fs::write(&empty, r#"{}"#).unwrap();
                cmd.arg("--config").arg(empty);
            }
        }
        Plugin {
            child: Some(cmd.spawn().expect("spawn railvf-device-plugin")),
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
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("plugin did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails the test with the plugin's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("plugin exited ({st}); log:\n{}", self.log());
        }
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

/// The address the plugin's metrics server listens on (it was started with
/// `--metrics-addr 127.0.0.1:0`), read from its JSON log line.
pub async fn metrics_addr(p: &mut Plugin) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        for line in p.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "serving /metrics and /healthz"
                && let Some(a) = v["addr"].as_str()
            {
                return a.parse().unwrap();
            }
        }
        p.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics address in the log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` over HTTP/1.1: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_string())
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} hung"))
}

/// The value of the sample `series` (`name{labels}` exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// Scrapes `/metrics` until `pred` holds; returns that scrape.
pub async fn wait_metrics(
    addr: std::net::SocketAddr,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let (code, text) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        if pred(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape with {what} within {GUARD:?}; last one:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the plugin's log contains `needle`; returns the log.
pub async fn wait_log(p: &mut Plugin, needle: &str) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let log = p.log();
        if log.contains(needle) {
            return log;
        }
        p.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log within {GUARD:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
