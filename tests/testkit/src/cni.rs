//! Runs of the `railvf` binary with a clean CNI environment, and their outcome, as the CNI
//! tests and the end-to-end tests drive and read them.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Debian's reference plugins (host-local, static, host-device).
pub const CNI_DIR: &str = "/usr/lib/cni";

/// Hang guard for one plugin run: generous, never a measurement.
pub const GUARD: Duration = Duration::from_secs(60);

/// The environment of one test's railvf runs: which binary, the host root, a private state
/// dir, CNI_PATH, and extra variables.
#[derive(Clone)]
pub struct Cni {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub cni_path: String,
    /// Extra environment for every call.
    pub env: Vec<(String, String)>,
}

impl Cni {
    /// `bin` on the host `root`, with its state in `<tmp>/state`.
    pub fn new(bin: &Path, root: &Path, tmp: &Path) -> Self {
        Cni {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            state: tmp.join("state"),
            cni_path: CNI_DIR.to_string(),
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The command with a clean, complete CNI environment.
    pub fn command(&self, verb: &str, cid: &str, ifname: &str, netns: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bin);
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
            .env("RAILVF_HOST_ROOT", &self.root)
            .env("RAILVF_STATE_DIR", &self.state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `cmd` with `stdin` written from a thread: railvf may stop reading (oversized
    /// input) or die first.
    pub fn spawn_cmd(&self, mut cmd: Command, stdin: &[u8]) -> Child {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let mut sin = child.stdin.take().unwrap();
        let input = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = sin.write_all(&input);
        });
        child
    }

    /// Starts `verb` for `net1` with `conf` on its stdin.
    pub fn spawn(&self, verb: &str, cid: &str, netns: Option<&Path>, conf: &str) -> Child {
        self.spawn_cmd(self.command(verb, cid, "net1", netns), conf.as_bytes())
    }

    /// Runs `cmd` (from [`Cni::command`]) with `stdin`, to the end (hang guard: [`GUARD`]).
    pub fn run_cmd(&self, cmd: Command, stdin: &[u8]) -> Out {
        wait(self.spawn_cmd(cmd, stdin))
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
        self.run_cmd(self.command(verb, cid, ifname, netns), conf.as_bytes())
    }

    /// Files in the state dir (lock and temporary files included).
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

/// Waits up to `guard` for a railvf process; `Err` (after killing it) when it hangs. Its
/// stdout and stderr are read while it runs, so a chatty run never blocks on a full pipe.
pub fn wait_for(child: Child, guard: Duration) -> Result<Out, String> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = |r: std::io::Result<Output>| r.expect("collecting railvf's output");
    match rx.recv_timeout(guard) {
        Ok(o) => Ok(Out::from(output(o))),
        Err(_) => {
            // Not reaped yet (the reader thread reaps it), so the pid is still this child's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let o = output(rx.recv().expect("the reader thread answers"));
            Err(format!(
                "hung for {guard:?} (killed); stdout {} stderr {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    }
}

/// Waits for a railvf process; fails the test when it hangs past [`GUARD`].
pub fn wait(child: Child) -> Out {
    wait_for(child, GUARD).unwrap_or_else(|e| panic!("railvf did not finish: {e}"))
}

/// One railvf invocation's outcome.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    /// The signal that ended it, if one did (SIGKILL at a fault point: 9).
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            ok: o.status.success(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The spec error object of a failed call: checks its shape, returns its code and
    /// `msg | details`.
    pub fn err(&self) -> (u64, String) {
        assert!(!self.ok, "expected a failure, got success: {}", self.stdout);
        let v = self.json();
        assert!(
            v["cniVersion"].as_str().is_some_and(|s| !s.is_empty()),
            "error object without cniVersion: {}",
            self.stdout
        );
        assert!(
            v["msg"].as_str().is_some_and(|s| !s.is_empty()),
            "error object without msg: {}",
            self.stdout
        );
        (
            v["code"]
                .as_u64()
                .expect("error object without a numeric code"),
            format!(
                "{} | {}",
                v["msg"].as_str().unwrap_or(""),
                v["details"].as_str().unwrap_or("")
            ),
        )
    }

    pub fn expect_ok(self) -> Self {
        assert!(
            self.ok,
            "railvf failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.assert_no_panic();
        self
    }

    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "railvf panicked:\n{}",
            self.stderr
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn more_output_than_a_pipe_holds_does_not_block_the_wait() {
        let o = wait_for(
            sh("head -c 300000 /dev/zero >&2; echo done"),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(o.ok);
        assert_eq!(o.stderr.len(), 300_000);
        assert_eq!(o.stdout, "done");
    }

    #[test]
    fn a_hang_is_killed_and_reported_with_its_output() {
        let e = wait_for(
            sh("echo started; exec sleep 30"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("hung for 200ms (killed)"), "{e}");
        assert!(e.contains("started"), "{e}");
    }
}
