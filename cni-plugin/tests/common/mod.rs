//! Helpers for the root tests: run the real `railvf` binary against a simulated node, and
//! look at the result from OUTSIDE (`ip -j`, the simulator, the IPAM plugin's files), never
//! through railvf's own output alone.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use railvf_sim::{SimNode, SimOptions, TestNetns, require_root};
pub use railvf_testkit::cni::Out;
pub use railvf_testkit::ip::*;

/// Debian's reference plugins (host-local, static, host-device).
pub const CNI_DIR: &str = "/usr/lib/cni";

pub fn railvf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_railvf"))
}

/// Fails loudly when a tool the test needs is missing: a skipped check must not pass.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package `{package}` (see README: test prerequisites)"
    );
}

/// A simulated node with one VF per compute PF (8 veth VFs) and a fast subnet manager.
pub fn sim(opts: SimOptions) -> SimNode {
    opts.build().expect("building the simulated node")
}

pub fn small() -> SimOptions {
    SimOptions::dgx_h200()
        .vfs_per_pf(1)
        .lid_delay(Duration::from_millis(0))
}

/// What most root tests start from: one pod netns, the simulated node and a private temp
/// dir (state, IPAM files). Fields drop in this order: the pod first, as the tests' own
/// locals did.
pub struct Setup {
    pub pod: TestNetns,
    pub sim: SimNode,
    pub tmp: tempfile::TempDir,
}

impl Setup {
    /// `None`, after the loud skip notice, when not root.
    pub fn new(opts: SimOptions) -> Option<Self> {
        if !require_root() {
            return None;
        }
        Some(Setup {
            tmp: tempfile::tempdir().unwrap(),
            sim: sim(opts),
            pod: TestNetns::new().unwrap(),
        })
    }

    pub fn cni(&self) -> Cni<'_> {
        Cni::new(&self.sim, self.tmp.path())
    }
}

/// The environment of one test: sim root, private state dir, CNI_PATH.
pub struct Cni<'a> {
    pub sim: &'a SimNode,
    pub state: PathBuf,
    pub cni_path: String,
}

impl<'a> Cni<'a> {
    pub fn new(sim: &'a SimNode, tmp: &Path) -> Self {
        Cni {
            sim,
            state: tmp.join("state"),
            cni_path: CNI_DIR.to_string(),
        }
    }

    pub fn command(&self, verb: &str, cid: &str, ifname: &str, netns: Option<&Path>) -> Command {
        let mut c = Command::new(railvf_bin());
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", ifname)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.as_os_str().to_owned()).unwrap_or_default(),
            )
            .env("CNI_PATH", &self.cni_path)
            .env("RAILVF_HOST_ROOT", self.sim.root())
            .env("RAILVF_STATE_DIR", &self.state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn spawn(&self, verb: &str, cid: &str, netns: Option<&Path>, conf: &str) -> Child {
        spawn_with_stdin(self.command(verb, cid, "net1", netns), conf)
    }

    pub fn run(&self, verb: &str, cid: &str, netns: Option<&Path>, conf: &str) -> Out {
        self.run_if(verb, cid, "net1", netns, conf)
    }

    pub fn run_if(
        &self,
        verb: &str,
        cid: &str,
        ifname: &str,
        netns: Option<&Path>,
        conf: &str,
    ) -> Out {
        run_command(self.command(verb, cid, ifname, netns), conf)
    }

    /// Files left in the state dir (lock files included).
    pub fn state_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.state)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Starts `c` (from [`Cni::command`]) with `conf` on its stdin.
pub fn spawn_with_stdin(mut c: Command, conf: &str) -> Child {
    let mut child = c.spawn().expect("spawn railvf");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    child
}

/// Runs `c` (from [`Cni::command`]) with `conf` on its stdin, to the end.
pub fn run_command(c: Command, conf: &str) -> Out {
    Out::from(spawn_with_stdin(c, conf).wait_with_output().unwrap())
}

/// Polls `cond` every 5 ms up to `timeout` (never asserts on time: returns whether it held).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A host-local IPAM section with its data in `dir`.
pub fn host_local(dir: &Path, subnet: &str, gateway: &str) -> String {
    format!(
        r#""ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}","gateway":"{gateway}"}}]],"routes":[{{"dst":"10.200.0.0/16"}},{{"dst":"10.201.0.0/16","gw":"{gateway}"}}]}}"#,
        dir.display()
    )
}

/// IPs host-local has reserved for network `net` in `dir`.
pub fn reservations(dir: &Path, net: &str) -> Vec<String> {
    std::fs::read_dir(dir.join(net))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn netconf(version: &str, name: &str, vf: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"cniVersion":"{version}","name":"{name}","type":"railvf","deviceID":"{vf}"{sep}{extra}}}"#
    )
}
