//! Rail-alignment events from the CNI: one small JSON file per `ADD` outcome in
//! `<host root>/run/railvf/rail-events/` (mode 0700), read, counted in `railvf_rail_alignment_total`,
//! logged, and deleted.
//!
//! The contract (the CNI writes against it; see `docs/device-plugin.md`): file name
//! `<unix-nanos>-<pid>-<rand>.json`, written under a name starting with `.` and renamed,
//! so a reader never sees a partial file; content
//! `{"version":1,"time":…,"containerID":…,"ifname":…,"pod":"ns/name","vf":…,"vfRail":5,
//! "gpuRails":[0,1],"policy":"warn","outcome":"aligned"|"misaligned"|"unknown"|"refused",
//! "reason":…}`. The CNI never waits for the plugin; files wait for it.
//!
//! Bounded: names not ending in `.json` are left alone; a file over 64 KiB, not a regular
//! file, not JSON of that shape, or of another version is deleted with a warning and
//! counted in `railvf_rail_events_ignored_total`; a temporary `.` file older than
//! [`STALE_TEMP`] (a CNI that died between write and rename) is deleted.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::metrics::{Metrics, RAIL_OUTCOMES, RAIL_POLICIES};

/// Where the CNI writes events, below the host root.
pub const EVENTS_DIR: &str = "run/railvf/rail-events";
/// Largest event file read.
pub const MAX_EVENT_BYTES: u64 = 64 * 1024;
/// The only event format version understood.
pub const EVENT_VERSION: u32 = 1;
/// A temporary file (name starting with `.`) older than this is left over by a CNI that
/// died before its rename, and is deleted.
pub const STALE_TEMP: Duration = Duration::from_secs(300);
/// Scan interval when no inotify event arrives (a watch that cannot be set up, or missed).
const RESCAN: Duration = Duration::from_secs(2);

/// One event file's content. Unknown keys are ignored (a later CNI may add some).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RailEvent {
    pub version: u32,
    #[serde(default)]
    pub time: String,
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub vf: String,
    #[serde(default)]
    pub vf_rail: Option<u32>,
    #[serde(default)]
    pub gpu_rails: Vec<u32>,
    pub policy: String,
    pub outcome: String,
    #[serde(default)]
    pub reason: String,
}

/// What happened to one file.
#[derive(Debug, PartialEq)]
pub enum Handled {
    Counted(Box<RailEvent>),
    /// Deleted without counting; the reason label.
    Ignored(&'static str),
    /// Left alone (not an event file, or a temporary file still being written).
    Skipped,
}

/// Parses and checks an event file's bytes.
pub fn parse(bytes: &[u8]) -> Result<RailEvent, (&'static str, String)> {
    let ev: RailEvent = serde_json::from_slice(bytes)
        .map_err(|e| ("malformed", format!("not a rail event: {e}")))?;
    if ev.version != EVENT_VERSION {
        return Err((
            "unsupported_version",
            format!(
                "version {} is not supported (this plugin reads version {EVENT_VERSION})",
                ev.version
            ),
        ));
    }
    if !RAIL_OUTCOMES.contains(&ev.outcome.as_str()) {
        return Err((
            "malformed",
            format!(
                "outcome {:?} is not one of {}",
                ev.outcome,
                RAIL_OUTCOMES.join(", ")
            ),
        ));
    }
    if !RAIL_POLICIES.contains(&ev.policy.as_str()) {
        return Err((
            "malformed",
            format!(
                "policy {:?} is not one of {}",
                ev.policy,
                RAIL_POLICIES.join(", ")
            ),
        ));
    }
    Ok(ev)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), "cannot delete the rail-event file: {e}");
    }
}

/// Reads, counts, logs and deletes one directory entry.
pub fn handle_file(path: &Path, metrics: &Metrics) -> Handled {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Handled::Skipped;
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Handled::Skipped,
    };
    if name.starts_with('.') {
        // Being written; deleted only when clearly abandoned.
        let old = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if old && meta.is_file() {
            tracing::warn!(file = %path.display(), "deleting a stale temporary rail-event file (the CNI stopped before renaming it)");
            remove(path);
        }
        return Handled::Skipped;
    }
    if !name.ends_with(".json") {
        return Handled::Skipped;
    }
    let ignore = |reason: &'static str, why: String| {
        tracing::warn!(file = %path.display(), reason, "ignoring a rail-event file: {why}");
        metrics.rail_event_ignored(reason);
        remove(path);
        Handled::Ignored(reason)
    };
    if !meta.is_file() {
        if meta.is_dir() {
            // Never delete directories; warn once per scan cycle is handled by the caller.
            return Handled::Skipped;
        }
        return ignore("not_a_file", "not a regular file".into());
    }
    if meta.len() > MAX_EVENT_BYTES {
        return ignore(
            "too_large",
            format!("{} bytes, more than {MAX_EVENT_BYTES}", meta.len()),
        );
    }
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .and_then(|f| {
            let mut buf = Vec::with_capacity(meta.len() as usize);
            f.take(MAX_EVENT_BYTES + 1).read_to_end(&mut buf)?;
            Ok(buf)
        });
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Handled::Skipped,
        Err(e) => return ignore("unreadable", e.to_string()),
    };
    if bytes.len() as u64 > MAX_EVENT_BYTES {
        return ignore("too_large", format!("more than {MAX_EVENT_BYTES} bytes"));
    }
    let ev = match parse(&bytes) {
        Ok(ev) => ev,
        Err((reason, why)) => return ignore(reason, why),
    };
    metrics.rail_event(&ev.outcome, &ev.policy);
    let rails = |r: &[u32]| {
        r.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let vf_rail = ev
        .vf_rail
        .map_or_else(|| "unknown".into(), |r| r.to_string());
    match ev.outcome.as_str() {
        "misaligned" | "refused" => tracing::warn!(
            pod = %ev.pod,
            container_id = %ev.container_id,
            ifname = %ev.ifname,
            vf = %ev.vf,
            vf_rail = %vf_rail,
            gpu_rails = %rails(&ev.gpu_rails),
            policy = %ev.policy,
            outcome = %ev.outcome,
            reason = %ev.reason,
            time = %ev.time,
            "rail {}: pod {} got VF {} on rail {} while its GPUs are on rails [{}]{}",
            if ev.outcome == "refused" { "misalignment refused" } else { "misalignment" },
            ev.pod,
            ev.vf,
            vf_rail,
            rails(&ev.gpu_rails),
            if ev.reason.is_empty() { String::new() } else { format!(": {}", ev.reason) },
        ),
        _ => tracing::debug!(
            pod = %ev.pod,
            vf = %ev.vf,
            vf_rail = %vf_rail,
            gpu_rails = %rails(&ev.gpu_rails),
            policy = %ev.policy,
            outcome = %ev.outcome,
            reason = %ev.reason,
            "rail event"
        ),
    }
    remove(path);
    Handled::Counted(Box::new(ev))
}

/// Handles every event file in `dir`, oldest name first (names start with the time).
/// Returns how many were counted.
pub fn scan(dir: &Path, metrics: &Metrics, warned_dirs: &mut HashSet<PathBuf>) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    let mut counted = 0;
    let mut dirs_seen = HashSet::new();
    for p in &names {
        if p.extension().is_some_and(|e| e == "json") && p.is_dir() {
            if !warned_dirs.contains(p) {
                tracing::warn!(path = %p.display(), "a directory in the rail-events directory is not an event; leaving it");
            }
            dirs_seen.insert(p.clone());
            continue;
        }
        if let Handled::Counted(_) = handle_file(p, metrics) {
            counted += 1;
        }
    }
    *warned_dirs = dirs_seen;
    counted
}

/// [`scan`] on a blocking thread: the gRPC servers share this runtime's only thread, and a
/// backlog of thousands of files (stat, read, parse, unlink each) must not hold up
/// `Allocate` or the first registration.
async fn scan_off_thread(dir: &Path, metrics: &Arc<Metrics>, warned_dirs: &mut HashSet<PathBuf>) {
    let (d, m, mut w) = (
        dir.to_path_buf(),
        metrics.clone(),
        std::mem::take(warned_dirs),
    );
    match tokio::task::spawn_blocking(move || {
        scan(&d, &m, &mut w);
        w
    })
    .await
    {
        Ok(w) => *warned_dirs = w,
        Err(e) => tracing::warn!(dir = %dir.display(), "rail-events scan failed: {e}"),
    }
}

/// Watches `dir` (creating it if needed) and handles event files as they arrive, until
/// `stop`.
pub async fn run(dir: PathBuf, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut warned_dirs = HashSet::new();
    let mut announced = false;
    loop {
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            && !announced
        {
            tracing::warn!(dir = %dir.display(), "cannot create the rail-events directory: {e}; retrying every {RESCAN:?}");
            announced = true;
        }
        let stream = Inotify::init().and_then(|ino| {
            ino.watches().add(
                &dir,
                WatchMask::MOVED_TO
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )?;
            ino.into_event_stream([0u8; 4096])
        });
        match stream {
            Ok(mut events) => {
                tracing::info!(dir = %dir.display(), "reading rail-alignment events from the CNI");
                announced = false;
                // Files written before the watch existed.
                scan_off_thread(&dir, &metrics, &mut warned_dirs).await;
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(ev)) => {
                                if ev.mask.intersects(inotify::EventMask::DELETE_SELF | inotify::EventMask::MOVE_SELF | inotify::EventMask::IGNORED) {
                                    break;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(dir = %dir.display(), "inotify: {e}");
                                break;
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep(RESCAN) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    scan_off_thread(&dir, &metrics, &mut warned_dirs).await;
                }
            }
            Err(e) => {
                if !announced {
                    tracing::warn!(dir = %dir.display(), "cannot watch the rail-events directory ({e}); checking every {RESCAN:?}");
                    announced = true;
                }
                scan_off_thread(&dir, &metrics, &mut warned_dirs).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESCAN) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"version":1,"time":"2025-01-01T00:00:00Z","containerID":"abc","ifname":"net1","pod":"ns/p","vf":"0000:c0:00.1","vfRail":5,"gpuRails":[0,1],"policy":"warn","outcome":"misaligned","reason":"GPU rails 0,1","extra":true}"#;

    #[test]
    fn parses_the_contract_and_refuses_the_rest() {
        let ev = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(ev.vf_rail, Some(5));
        assert_eq!(ev.gpu_rails, [0, 1]);
        assert_eq!(ev.container_id, "abc");
        // Only version, policy and outcome are required.
        let min = parse(br#"{"version":1,"policy":"none","outcome":"unknown"}"#).unwrap();
        assert_eq!(min.vf_rail, None);
        assert_eq!(
            parse(br#"{"version":2,"policy":"none","outcome":"unknown"}"#)
                .unwrap_err()
                .0,
            "unsupported_version"
        );
        assert_eq!(
            parse(br#"{"version":1,"policy":"none","outcome":"maybe"}"#)
                .unwrap_err()
                .0,
            "malformed"
        );
        assert_eq!(
            parse(br#"{"version":1,"policy":"always","outcome":"aligned"}"#)
                .unwrap_err()
                .0,
            "malformed"
        );
        assert_eq!(parse(b"{").unwrap_err().0, "malformed");
        // What the railvf CNI writes (its own tests pin these bytes).
        let cni = parse(br#"{"version":1,"time":"2026-05-01T12:00:00.123Z","containerID":"5f2c0a","ifname":"net1","pod":"","vf":"0000:c0:00.1","vfRail":null,"gpuRails":[],"policy":"warn","outcome":"unknown","reason":"VF 0000:c0:00.1 is on rail 5"}"#).unwrap();
        assert_eq!((cni.vf_rail, cni.gpu_rails.len()), (None, 0));
        assert_eq!(parse(b"[1]").unwrap_err().0, "malformed");
    }

    #[test]
    fn scan_counts_deletes_and_bounds() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let m = Metrics::new();
        std::fs::write(d.join("1-2-a.json"), GOOD).unwrap();
        std::fs::write(d.join("2-2-b.json"), "garbage").unwrap();
        std::fs::write(d.join("3-2-c.json"), vec![b' '; 70 * 1024]).unwrap();
        std::fs::write(d.join(".4-2-d.json.tmp"), GOOD).unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("1-2-a.json"), d.join("5-2-e.json")).unwrap();
        std::fs::create_dir(d.join("6-dir.json")).unwrap();
        let mut warned = HashSet::new();
        assert_eq!(scan(d, &m, &mut warned), 1);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".4-2-d.json.tmp", "6-dir.json", "notes.txt"]);
        let text = m.encode();
        for l in [
            r#"railvf_rail_alignment_total{outcome="misaligned",policy="warn"} 1"#,
            r#"railvf_rail_events_ignored_total{reason="malformed"} 1"#,
            r#"railvf_rail_events_ignored_total{reason="too_large"} 1"#,
            r#"railvf_rail_events_ignored_total{reason="not_a_file"} 1"#,
        ] {
            assert!(text.lines().any(|x| x == l), "{l} in\n{text}");
        }
    }
}
