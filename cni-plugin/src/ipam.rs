//! IPAM delegation: runs the `ipam.type` plugin found in `CNI_PATH` with the same CNI
//! environment and the network config on stdin, bounded by a timeout, and reads its result.
//!
//! The config is passed through unchanged (static IPAM reads `runtimeConfig.ips`/`args`), with
//! one exception: when the IPAM plugin refuses the config's `cniVersion` (code 1; Debian's
//! plugins stop at 1.0.0), railvf asks it for its versions and retries with the newest one
//! both speak, rewriting only `cniVersion`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::error::{CniError, code};
use crate::result::{CniResult, ResultError};
use crate::version::{SUPPORTED, Version};

/// How long one IPAM call may take (DHCP can be slow; kubelet gives a sandbox ~4 minutes).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The node admin's override of [`TIMEOUT`], in ms (1–600000; tests use a short one).
pub const TIMEOUT_ENV: &str = "RAILVF_IPAM_TIMEOUT_MS";

/// [`TIMEOUT`], or `RAILVF_IPAM_TIMEOUT_MS` when it is set to 1–600000.
pub fn timeout() -> Duration {
    let Some(v) = std::env::var_os(TIMEOUT_ENV) else {
        return TIMEOUT;
    };
    match v.to_str().and_then(|s| s.parse::<u64>().ok()) {
        Some(ms @ 1..=600_000) => Duration::from_millis(ms),
        _ => {
            crate::log_warn!(
                "{TIMEOUT_ENV}={v:?} ignored: expected 1-600000 (ms); using {} s",
                TIMEOUT.as_secs()
            );
            TIMEOUT
        }
    }
}
/// Largest IPAM answer read.
const MAX_OUTPUT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM plugin {name:?} not found: looked for an executable file in CNI_PATH ({dirs})")]
    NotFound { name: String, dirs: String },
    #[error("IPAM plugin {plugin} could not be started: {source}")]
    Spawn {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM plugin {plugin} did not answer {command} within {ms} ms and was killed")]
    Timeout {
        plugin: PathBuf,
        command: String,
        ms: u128,
    },
    /// The plugin's own CNI error, passed through with its code.
    #[error("IPAM plugin {plugin} failed {command}: {msg}")]
    Plugin {
        plugin: PathBuf,
        command: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error(
        "IPAM plugin {plugin} failed {command} ({status}) without a CNI error object: {output}"
    )]
    Failed {
        plugin: PathBuf,
        command: String,
        status: String,
        output: String,
    },
    #[error("IPAM plugin {plugin} answered {command} with an unusable result: {source}")]
    BadResult {
        plugin: PathBuf,
        command: String,
        #[source]
        source: ResultError,
    },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        match &e {
            IpamError::Plugin {
                code, msg, details, ..
            } => CniError::new(
                *code,
                format!("{e}"),
                if details.is_empty() {
                    format!("the IPAM plugin's error is passed through unchanged ({msg})")
                } else {
                    details.clone()
                },
            ),
            IpamError::NotFound { .. } => CniError::new(
                code::IPAM,
                e.to_string(),
                "install the IPAM plugin into a CNI_PATH directory (e.g. /opt/cni/bin), or fix \"ipam.type\"",
            ),
            _ => CniError::new(
                code::IPAM,
                e.to_string(),
                "check the IPAM plugin's configuration and logs; railvf rolled back what it had done",
            ),
        }
    }
}

/// The CNI environment of one IPAM call.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: Option<&'a str>,
    pub netns: Option<&'a Path>,
    pub ifname: Option<&'a str>,
    pub args: Option<&'a str>,
    pub cni_path: &'a [PathBuf],
}

/// An IPAM plugin found in `CNI_PATH`.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub path: PathBuf,
    pub timeout: Duration,
}

impl Plugin {
    /// Looks `name` (already validated as a bare file name) up in the `CNI_PATH` directories.
    pub fn find(name: &str, cni_path: &[PathBuf]) -> Result<Self, IpamError> {
        use std::os::unix::fs::PermissionsExt;
        debug_assert!(!name.contains('/'));
        for dir in cni_path {
            let p = dir.join(name);
            if let Ok(md) = std::fs::metadata(&p)
                && md.is_file()
                && md.permissions().mode() & 0o111 != 0
            {
                return Ok(Plugin {
                    path: p,
                    timeout: timeout(),
                });
            }
        }
        Err(IpamError::NotFound {
            name: name.to_string(),
            dirs: if cni_path.is_empty() {
                "CNI_PATH is empty or unset".to_string()
            } else {
                cni_path
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            },
        })
    }

    /// Runs one verb; `Ok(stdout)` on exit status 0.
    pub fn exec(&self, call: &Call<'_>, stdin: &[u8]) -> Result<Vec<u8>, IpamError> {
        let mut cmd = Command::new(&self.path);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The plugin's diagnostics go where ours go: the runtime's log.
            .stderr(Stdio::inherit())
            .env("CNI_COMMAND", call.command);
        let set = |cmd: &mut Command, k: &str, v: Option<&std::ffi::OsStr>| match v {
            Some(v) => {
                cmd.env(k, v);
            }
            None => {
                cmd.env_remove(k);
            }
        };
        set(
            &mut cmd,
            "CNI_CONTAINERID",
            call.container_id.map(AsRef::as_ref),
        );
        set(&mut cmd, "CNI_NETNS", call.netns.map(AsRef::as_ref));
        set(&mut cmd, "CNI_IFNAME", call.ifname.map(AsRef::as_ref));
        set(&mut cmd, "CNI_ARGS", call.args.map(AsRef::as_ref));
        let joined = std::env::join_paths(call.cni_path).unwrap_or_default();
        cmd.env("CNI_PATH", joined);

        #[cfg(test)]
        let gate = crate::testutil::SPAWN_GATE
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn().map_err(|source| IpamError::Spawn {
            plugin: self.path.clone(),
            source,
        })?;
        #[cfg(test)]
        drop(gate);
        // Writer and reader threads, so a plugin that neither reads nor exits cannot block
        // us past the timeout.
        let mut sin = child.stdin.take();
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            if let Some(s) = sin.as_mut() {
                let _ = s.write_all(&input);
            }
        });
        let mut sout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = sout.as_mut() {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        let deadline = std::time::Instant::now() + self.timeout;
        let timed_out = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
            IpamError::Timeout {
                plugin: self.path.clone(),
                command: call.command.to_string(),
                ms: self.timeout.as_millis(),
            }
        };
        let Ok(out) = rx.recv_timeout(self.timeout) else {
            return Err(timed_out(&mut child));
        };
        // Its stdout is closed, but it may still run (and not read its stdin): the
        // timeout bounds the wait for its exit too.
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(None) => return Err(timed_out(&mut child)),
                Err(source) => {
                    return Err(IpamError::Spawn {
                        plugin: self.path.clone(),
                        source,
                    });
                }
            }
        };
        // Not joined: a child the plugin left behind could hold its stdin open unread.
        drop(writer);
        if status.success() {
            return Ok(out);
        }
        let parsed: Option<Value> = serde_json::from_slice(&out).ok();
        match parsed
            .as_ref()
            .and_then(|v| Some((v.get("code")?.as_u64()?, v)))
        {
            Some((c, v)) => Err(IpamError::Plugin {
                plugin: self.path.clone(),
                command: call.command.to_string(),
                code: c as u32,
                msg: v
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                details: v
                    .get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }),
            None => Err(IpamError::Failed {
                plugin: self.path.clone(),
                command: call.command.to_string(),
                status: status.to_string(),
                output: String::from_utf8_lossy(&out).chars().take(300).collect(),
            }),
        }
    }

    /// ADD: the addresses, routes and DNS the plugin allocated.
    pub fn add(&self, call: &Call<'_>, conf: &[u8]) -> Result<CniResult, IpamError> {
        let out = self.exec_negotiated(call, conf)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| IpamError::BadResult {
            plugin: self.path.clone(),
            command: call.command.to_string(),
            source: ResultError {
                what: "result".into(),
                expected: "a JSON CNI result",
                found: e.to_string(),
            },
        })?;
        CniResult::parse(&v).map_err(|source| IpamError::BadResult {
            plugin: self.path.clone(),
            command: call.command.to_string(),
            source,
        })
    }

    /// DEL, CHECK, or any verb whose success carries no result.
    pub fn run(&self, call: &Call<'_>, conf: &[u8]) -> Result<(), IpamError> {
        self.exec_negotiated(call, conf).map(drop)
    }

    /// The versions the plugin speaks (its VERSION answer).
    pub fn versions(&self, call: &Call<'_>) -> Result<Vec<String>, IpamError> {
        let call = Call {
            command: "VERSION",
            ..call.clone()
        };
        let out = self.exec(&call, br#"{"cniVersion":"1.1.0"}"#)?;
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        Ok(v.get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Whether the plugin speaks 1.1.0 (STATUS and GC exist only there).
    pub fn speaks_1_1(&self, call: &Call<'_>) -> Result<bool, IpamError> {
        Ok(self.versions(call)?.iter().any(|v| v == "1.1.0"))
    }

    fn exec_negotiated(&self, call: &Call<'_>, conf: &[u8]) -> Result<Vec<u8>, IpamError> {
        match self.exec(call, conf) {
            Err(IpamError::Plugin { code: 1, .. }) => {
                let theirs = self.versions(call)?;
                let mine = crate::netconf::sniff_version(conf).unwrap_or(Version::LATEST);
                let Some(v) = SUPPORTED
                    .iter()
                    .rev()
                    .find(|v| **v <= mine && theirs.iter().any(|t| t == v.as_str()))
                else {
                    return self.exec(call, conf);
                };
                crate::log_info!(
                    "IPAM plugin {} does not speak cniVersion {mine}; retrying {} in {v}",
                    self.path.display(),
                    call.command
                );
                self.exec(call, &with_version(conf, *v))
            }
            other => other,
        }
    }
}

/// The same config with only `cniVersion` replaced.
fn with_version(conf: &[u8], v: Version) -> Vec<u8> {
    match serde_json::from_slice::<Value>(conf) {
        Ok(Value::Object(mut m)) => {
            m.insert("cniVersion".into(), Value::String(v.as_str().into()));
            serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|_| conf.to_vec())
        }
        _ => conf.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        crate::testutil::write_script(&p, body);
        p
    }

    fn call<'a>(command: &'a str, path: &'a [PathBuf]) -> Call<'a> {
        Call {
            command,
            container_id: Some("c1"),
            netns: None,
            ifname: Some("net1"),
            args: None,
            cni_path: path,
        }
    }

    #[test]
    fn finds_only_executables_in_cni_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("noexec"), "x").unwrap();
        let dirs = vec![d.path().to_path_buf()];
        assert!(matches!(
            Plugin::find("noexec", &dirs),
            Err(IpamError::NotFound { .. })
        ));
        script(d.path(), "ok", "true");
        assert!(Plugin::find("ok", &dirs).is_ok());
        let e = CniError::from(Plugin::find("nope", &[]).unwrap_err());
        assert_eq!(e.code, code::IPAM);
        assert!(e.msg.contains("CNI_PATH is empty"), "{e}");
    }

    #[test]
    fn passes_env_and_stdin_and_reads_the_result() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "fake",
            r#"in=$(cat); case "$in" in *'"name":"n"'*) ;; *) exit 9;; esac
echo "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.0.2/24\"}],\"dns\":{\"domain\":\"$CNI_COMMAND-$CNI_CONTAINERID-$CNI_IFNAME\"}}""#,
        );
        let dirs = vec![d.path().to_path_buf()];
        let p = Plugin::find("fake", &dirs).unwrap();
        let r = p
            .add(&call("ADD", &dirs), br#"{"cniVersion":"1.0.0","name":"n"}"#)
            .unwrap();
        assert_eq!(r.ips[0].address.prefix, 24);
        assert_eq!(r.dns["domain"], "ADD-c1-net1");
    }

    #[test]
    fn plugin_errors_pass_through_with_their_code() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "failing",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":18,"msg":"no addresses left","details":"range full"}'; exit 1"#,
        );
        script(d.path(), "garbage", "cat >/dev/null; echo oops; exit 3");
        let dirs = vec![d.path().to_path_buf()];
        let e = Plugin::find("failing", &dirs)
            .unwrap()
            .run(&call("ADD", &dirs), b"{}")
            .unwrap_err();
        let c = CniError::from(e);
        assert_eq!(c.code, 18);
        assert!(c.msg.contains("no addresses left"), "{c}");
        assert_eq!(c.details, "range full");
        let e = Plugin::find("garbage", &dirs)
            .unwrap()
            .run(&call("ADD", &dirs), b"{}")
            .unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        assert_eq!(CniError::from(e).code, code::IPAM);
    }

    #[test]
    fn a_hanging_plugin_is_killed_at_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "hang", "exec sleep 30");
        let dirs = vec![d.path().to_path_buf()];
        let mut p = Plugin::find("hang", &dirs).unwrap();
        p.timeout = Duration::from_millis(200);
        let e = p.run(&call("ADD", &dirs), b"{}").unwrap_err();
        assert!(matches!(e, IpamError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_plugin_that_closes_stdout_and_hangs_is_killed_at_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        // Neither reads its (large) stdin nor exits, but closes stdout at once.
        script(d.path(), "half", "exec >&-; exec sleep 30");
        let dirs = vec![d.path().to_path_buf()];
        let mut p = Plugin::find("half", &dirs).unwrap();
        p.timeout = Duration::from_millis(200);
        let e = p
            .run(&call("ADD", &dirs), &vec![b' '; 512 * 1024])
            .unwrap_err();
        assert!(matches!(e, IpamError::Timeout { .. }), "{e}");
    }

    #[test]
    fn retries_in_an_older_version_when_the_plugin_refuses_ours() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "old",
            r#"in=$(cat)
if [ "$CNI_COMMAND" = VERSION ]; then echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}'; exit 0; fi
case "$in" in *'"cniVersion":"1.1.0"'*) echo '{"code":1,"msg":"incompatible CNI versions"}'; exit 1;; esac
echo '{"cniVersion":"1.0.0","ips":[{"address":"10.2.0.2/16"}]}'"#,
        );
        let dirs = vec![d.path().to_path_buf()];
        let p = Plugin::find("old", &dirs).unwrap();
        let r = p
            .add(
                &call("ADD", &dirs),
                br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"old"}}"#,
            )
            .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert!(!p.speaks_1_1(&call("STATUS", &dirs)).unwrap());
    }
}
