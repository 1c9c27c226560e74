//! Shared by the `reliability_*` and `hostile_*` tests: run the real `railvf` binary against
//! the simulated node and look at the outcome from OUTSIDE — `ip -j`, the simulator's mirror
//! (by PCI address), the state directory, host-local's data directory — never through
//! railvf's own answer alone.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use railvf_sim::{SimNode, SimOptions, VfInfo};
use serde_json::Value;

// Each test binary uses some of these, none all of them.
#[allow(unused_imports)]
pub use railvf_testkit::cni::{CNI_DIR, Cni, GUARD, Out, wait, wait_for};
#[allow(unused_imports)]
pub use railvf_testkit::ip::*;

/// Debian's host-local IPAM plugin.
pub const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// Fails loudly when a tool the test needs is missing: a skipped check must not pass.
pub fn require_host_local() {
    assert!(
        Path::new(HOST_LOCAL).exists(),
        "{HOST_LOCAL} is missing: install the Debian package containernetworking-plugins"
    );
}

/// A summary line on the process's stderr (not captured by libtest), for docs/reliability.md.
pub fn summary(line: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr(), "reliability: {}", line.as_ref());
}

/// The simulated DGX H200 with `vfs_per_pf` VFs per compute PF and a subnet manager that
/// assigns a LID at once: what the reliability tests run on (they test convergence, not
/// the wait).
pub fn fast_node(vfs_per_pf: u16) -> SimOptions {
    SimOptions::dgx_h200()
        .vfs_per_pf(vfs_per_pf)
        .lid_delay(Duration::from_millis(0))
}

/// The seed of a randomized test: `RAILVF_RELIABILITY_SEED`, else the clock. Printed first
/// (with `what` the test is), so that a failure can be replayed.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("RAILVF_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    summary(format!(
        "{what}: seed {seed} (replay: RAILVF_RELIABILITY_SEED={seed})"
    ));
    seed
}

/// The `railvf` binary built with `--features test-faultpoints` into its own target dir
/// (`target/faultpoints`), once per test process, so the normal binary never has them.
pub fn faultpoint_bin() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    // target/debug → target
    let target = railvf_e2e::target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("faultpoints");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "railvf-cni",
            "--features",
            "test-faultpoints",
            "--bin",
            "railvf",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("running cargo to build railvf with fault points");
    assert!(
        status.success(),
        "building railvf with test-faultpoints failed"
    );
    let p = target.join("debug").join("railvf");
    assert!(p.exists(), "{} was not built", p.display());
    *built = Some(p.clone());
    p
}

/// The workspace's `railvf` on `sim`, with its state in `<tmp>/state`.
pub fn cni_for(sim: &SimNode, tmp: &Path) -> Cni {
    Cni::new(&railvf_e2e::bin_path("railvf"), sim.root(), tmp)
}

/// The sim tags each VF veth with the alias `railvf-sim:<tag>:<bdf>` (the tag is unique per
/// sim, so tests in parallel never see each other's VFs); it follows the link through moves
/// and renames, so it says which VF a link is.
pub fn vf_of_link(sim: &SimNode, l: &Value) -> Option<String> {
    l["ifalias"]
        .as_str()
        .and_then(|a| a.strip_prefix("railvf-sim:"))
        .and_then(|a| a.split_once(':'))
        .filter(|(tag, _)| *tag == sim.tag())
        .map(|(_, bdf)| bdf.to_string())
}

/// Where the sim's VF `vf` is seen in `ns` (None: the host), by its alias: its name there.
pub fn vf_name_in(sim: &SimNode, ns: Option<&str>, vf: &str) -> Option<String> {
    links(ns)
        .iter()
        .find(|l| vf_of_link(sim, l).as_deref() == Some(vf))
        .and_then(|l| l["ifname"].as_str().map(str::to_string))
}

/// Is the VF home: in the host namespace under its original name, by the sim's mirror AND
/// by `ip` (alias)? Returns what is wrong, if anything.
pub fn home_problem(sim: &SimNode, vf: &VfInfo) -> Option<String> {
    let bdf = vf.pci.to_string();
    let by_ip = vf_name_in(sim, None, &bdf);
    if by_ip.as_deref() != Some(vf.netdev.as_str()) {
        return Some(format!(
            "VF {bdf}: ip shows it in the host as {by_ip:?}, expected {}",
            vf.netdev
        ));
    }
    let _ = sim.sync();
    let mirror = sim
        .vf(vf.pci)
        .ok()
        .and_then(|v| v.host_netdev)
        .map(|h| h.name);
    if mirror.as_deref() != Some(vf.netdev.as_str()) {
        return Some(format!(
            "VF {bdf}: the sim's sysfs shows {mirror:?} in the host, expected {}",
            vf.netdev
        ));
    }
    None
}

/// Waits (hang guard) until the VF is home; panics with what is wrong otherwise.
pub fn assert_home(sim: &SimNode, vf: &VfInfo) {
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        last = home_problem(sim, vf);
        last.is_none()
    });
    assert!(ok, "{}", last.unwrap_or_default());
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
pub fn host_local(dir: &Path, subnet: &str) -> String {
    format!(
        r#""ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"}}]]}}"#,
        dir.display()
    )
}

/// IPs host-local holds for network `net` in `dir`, with the container ID each is for.
pub fn reservations(dir: &Path, net: &str) -> Vec<(String, String)> {
    std::fs::read_dir(dir.join(net))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.parse::<std::net::IpAddr>().ok()?;
                    let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                    Some((n, owner.lines().next().unwrap_or("").trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Files of host-local's data dir for `net` that are neither its lock nor its
/// `last_reserved_ip.*` bookkeeping: leaked addresses (or anything else).
pub fn ipam_leftovers(dir: &Path, net: &str) -> Vec<String> {
    std::fs::read_dir(dir.join(net))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip."))
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

/// The sim's OFED GUID files of a VF (`<pf>/sriov/<n>/{node,port}`), as written.
pub fn guid_files(sim: &SimNode, vf: &VfInfo) -> (String, String) {
    let dir = sim
        .pf(vf.pf)
        .unwrap()
        .sysfs_dir
        .join("sriov")
        .join(vf.index.to_string());
    let r = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (r("node"), r("port"))
}

/// The real `railvf-device-plugin` against the fake kubelet of `railvf-proto`
/// (`railvf-testkit`, shared with the device plugin's own tests).
pub mod dp {
    use std::path::Path;

    pub use railvf_testkit::device_plugin::*;

    /// Starts the workspace's `railvf-device-plugin` binary with no config file.
    pub fn start(root: &Path, dirs: &Dirs) -> Plugin {
        Plugin::start(
            &railvf_e2e::bin_path("railvf-device-plugin"),
            root,
            dirs,
            None,
            &[],
        )
    }
}
