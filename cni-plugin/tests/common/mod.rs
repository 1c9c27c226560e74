//! Helpers for the root tests: run the real `railvf` binary against a simulated node, and
//! look at the result from OUTSIDE (`ip -j`, the simulator, the IPAM plugin's files), never
//! through railvf's own output alone.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use railvf_sim::{SimNode, SimOptions, TestNetns, require_root};
// Each test binary uses some of these, none all of them.
#[allow(unused_imports)]
pub use railvf_testkit::cni::{CNI_DIR, Cni, Out};
#[allow(unused_imports)]
pub use railvf_testkit::ip::*;

pub fn railvf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_railvf"))
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

    pub fn cni(&self) -> Cni {
        cni_for(&self.sim, self.tmp.path())
    }
}

/// This package's `railvf` on `sim`, with its state in `<tmp>/state`.
pub fn cni_for(sim: &SimNode, tmp: &Path) -> Cni {
    Cni::new(&railvf_bin(), sim.root(), tmp)
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
