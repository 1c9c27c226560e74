//! Rail events: one JSON file per ADD the rail guardrail judged, for the device plugin
//! (which counts them in its metrics and removes the files it has read).
//!
//! Contract (fixed; the device plugin's reader depends on it):
//!
//! - directory `<host root>/run/railvf/rail-events/` (created when missing, mode 0700);
//! - file name `<unix-nanos>-<pid>-<rand>.json` (`rand`: 8 hex digits), written under a
//!   temporary name starting with `.` in the same directory, then renamed: a reader that
//!   skips dot files never sees a partial event;
//! - content, one object:
//!   `{"version":1,"time":"<RFC3339>","containerID":"…","ifname":"net1","pod":"ns/name",
//!   "vf":"0000:c0:00.1","vfRail":5,"gpuRails":[0,1],"policy":"warn",
//!   "outcome":"aligned"|"misaligned"|"unknown"|"refused","reason":"…"}` —
//!   `vfRail` is `null` when the VF's PF has no rail, `gpuRails` is `[]` when the pod's GPU
//!   rails are unknown, `pod` is `""` when `CNI_ARGS` did not name it.
//!
//! Writing an event never blocks or fails the ADD: errors are logged at debug level. When
//! [`MAX_PENDING`] files are already waiting (no reader), no more are written.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use railvf_host::HostRoot;
use serde::Serialize;

/// Below the host root.
pub const DIR: &str = "run/railvf/rail-events";
/// Format version of the file content.
pub const VERSION: u32 = 1;
/// Files waiting for the reader beyond which railvf stops adding (`/run` is memory).
pub const MAX_PENDING: usize = 10_000;

/// One event, serialized in the contract's key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RailEvent {
    pub version: u32,
    pub time: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub pod: String,
    pub vf: String,
    #[serde(rename = "vfRail")]
    pub vf_rail: Option<u32>,
    #[serde(rename = "gpuRails")]
    pub gpu_rails: Vec<u32>,
    pub policy: String,
    pub outcome: String,
    pub reason: String,
}

impl RailEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The events directory of `root`.
pub fn dir(root: &HostRoot) -> PathBuf {
    root.join(DIR)
}

/// `<unix-nanos>-<pid>-<rand>.json`.
pub fn file_name(at: SystemTime) -> String {
    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let rand = RandomState::new().build_hasher().finish() as u32;
    format!("{nanos}-{}-{rand:08x}.json", std::process::id())
}

/// Writes `ev` (whose `time` was taken at `at`) into `dir`; returns the file's path.
pub fn write_in(dir: &Path, ev: &RailEvent, at: SystemTime) -> io::Result<PathBuf> {
    // The directory exists after the first event: create it only when reading it fails.
    let pending = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            fs::read_dir(dir)?
        }
        Err(e) => return Err(e),
    }
    .take(MAX_PENDING)
    .count();
    if pending >= MAX_PENDING {
        return Err(io::Error::other(format!(
            "{pending} events are waiting in {} (is the device plugin running?): not adding more",
            dir.display()
        )));
    }
    let name = file_name(at);
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(&name);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{}\n", ev.to_json()).as_bytes()))
        .and_then(|()| fs::rename(&tmp, &dst));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(dst)
}

/// Writes `ev` below `root`, logging (debug) instead of failing.
pub fn write(root: &HostRoot, ev: &RailEvent, at: SystemTime) -> Option<PathBuf> {
    let dir = dir(root);
    match write_in(&dir, ev, at) {
        Ok(p) => {
            crate::log_debug!("rail event {} written", p.display());
            Some(p)
        }
        Err(e) => {
            crate::log_debug!("rail event not written in {}: {e}", dir.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event() -> RailEvent {
        RailEvent {
            version: VERSION,
            time: "2026-05-01T12:00:00.123Z".into(),
            container_id: "5f2c0a".into(),
            ifname: "net1".into(),
            pod: "default/train-0".into(),
            vf: "0000:c0:00.1".into(),
            vf_rail: Some(5),
            gpu_rails: vec![0, 1],
            policy: "warn".into(),
            outcome: "misaligned".into(),
            reason: "VF 0000:c0:00.1 is on rail 5".into(),
        }
    }

    #[test]
    fn the_content_is_the_contract_byte_for_byte() {
        assert_eq!(
            event().to_json(),
            r#"{"version":1,"time":"2026-05-01T12:00:00.123Z","containerID":"5f2c0a","ifname":"net1","pod":"default/train-0","vf":"0000:c0:00.1","vfRail":5,"gpuRails":[0,1],"policy":"warn","outcome":"misaligned","reason":"VF 0000:c0:00.1 is on rail 5"}"#
        );
        let unknown = RailEvent {
            vf_rail: None,
            gpu_rails: vec![],
            pod: String::new(),
            outcome: "unknown".into(),
            ..event()
        };
        assert_eq!(
            unknown.to_json(),
            r#"{"version":1,"time":"2026-05-01T12:00:00.123Z","containerID":"5f2c0a","ifname":"net1","pod":"","vf":"0000:c0:00.1","vfRail":null,"gpuRails":[],"policy":"warn","outcome":"unknown","reason":"VF 0000:c0:00.1 is on rail 5"}"#
        );
    }

    #[test]
    fn file_names_follow_the_contract() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_777_000_000_123_456_789);
        let n = file_name(at);
        let parts: Vec<&str> = n.strip_suffix(".json").unwrap().split('-').collect();
        assert_eq!(parts.len(), 3, "{n}");
        assert_eq!(parts[0], "1777000000123456789");
        assert_eq!(parts[1], std::process::id().to_string());
        assert_eq!(parts[2].len(), 8);
        assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()), "{n}");
        assert_ne!(
            file_name(at),
            file_name(at),
            "two events of one instant differ"
        );
    }

    #[test]
    fn written_atomically_into_a_created_dir_and_nothing_else_left() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path()).unwrap();
        let p = write(&root, &event(), SystemTime::now()).unwrap();
        assert_eq!(p.parent().unwrap(), d.path().join(DIR));
        let names: Vec<String> = fs::read_dir(d.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert!(!names[0].starts_with('.'));
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["outcome"], "misaligned");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn errors_are_swallowed() {
        let d = tempfile::tempdir().unwrap();
        // `run` is a file: the directory cannot be created.
        fs::write(d.path().join("run"), "").unwrap();
        let root = HostRoot::new(d.path()).unwrap();
        assert!(write(&root, &event(), SystemTime::now()).is_none());
    }
}
