//! Test helpers: named network namespaces for "pods", plain veth pairs, and the root check.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Result, SimError, io_err, nl_err};
use crate::rtnl::Rtnl;

/// True when running as root. When not, prints a loud
/// `SKIPPED (needs root): <test name>` line (the test name is libtest's thread name), so a
/// test can `if !railvf_sim::require_root() { return; }` and never skip silently.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed test>");
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
    // and a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {name}");
    false
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add rvt-<pid>-<n>`) standing in for a pod's,
/// deleted on drop. Anything the sim put in it (a VF veth end) returns to the sim's host
/// namespace when it is deleted, like a real VF does.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    /// Creates `rvt-<pid>-<n>`; needs root.
    pub fn new() -> Result<TestNetns> {
        let name = format!(
            "rvt-{}-{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        Ok(TestNetns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        })
    }

    /// The name (`ip -n <name> …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what a container runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace (for `setns`).
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(io_err(&self.path))
    }

    /// Names of the links currently in the namespace.
    pub fn link_names(&self) -> Result<Vec<String>> {
        let ns = self.open()?;
        let mut rt =
            Rtnl::open_in(&ns).map_err(nl_err(format!("socket in netns {}", self.name)))?;
        let links = rt
            .dump_links()
            .map_err(nl_err(format!("dump links of netns {}", self.name)))?;
        Ok(links.into_iter().map(|l| l.name).collect())
    }

    /// Whether a link of this name is in the namespace.
    pub fn has_link(&self, name: &str) -> Result<bool> {
        Ok(self.link_names()?.iter().any(|n| n == name))
    }

    /// Runs `ip -n <name> <args…>` (moving links, renaming, …) and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("railvf-sim: could not delete test netns {}: {e}", self.name);
        }
    }
}

static VETH_SEQ: AtomicU32 = AtomicU32::new(0);

/// A plain veth pair in the host netns (`rva<tag>` / `rvb<tag>`, unique per process and
/// pair), for tests of netlink itself rather than of a simulated node. Both ends are
/// deleted on drop wherever they ended up (a deleted namespace takes its end with it).
#[derive(Debug)]
pub struct TestVeth {
    /// The end tests move around.
    pub a: String,
    /// Its peer, which stays in the host netns.
    pub b: String,
}

impl TestVeth {
    /// Creates the pair; needs root.
    pub fn new() -> Result<TestVeth> {
        // The whole pid and a separator: names from two test processes never meet (pid
        // 0x1a2 with pair 3 and pid 0x1a with pair 0x23 would both be `1a23` without it).
        let tag = format!(
            "{:x}-{:x}",
            std::process::id(),
            VETH_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (a, b) = (format!("rva{tag}"), format!("rvb{tag}"));
        assert!(a.len() <= 15, "{a} is longer than an interface name may be");
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        Ok(TestVeth { a, b })
    }
}

impl Drop for TestVeth {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; either may be in the host or already gone.
        let _ = ip(&["link", "del", &self.b]);
        let _ = ip(&["link", "del", &self.a]);
    }
}

/// Runs `ip <args…>` and returns stdout; an error carries stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| SimError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SimError::Command {
            command,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
