//! Logging to stderr or `logFile`, never stdout (stdout carries the CNI result).
//!
//! A few lines per call, so a tiny logger instead of a subscriber framework: the plugin is
//! exec'd for every pod and must start fast.
//!
//! `logFile` rule: an absolute path without `.`/`..`, below the log directory (`/var/log`,
//! or `RAILVF_LOG_DIR`), opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` so no
//! symlink can lead outside it; created with mode 0600 when absent, appended to otherwise.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

use crate::error::{CniError, code};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    /// sriov-cni's names; `panic` logs errors only.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "panic" | "error" => Level::Error,
            "warning" | "warn" => Level::Warning,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn label(&self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Sink {
    level: Level,
    file: Option<File>,
    /// Prefix naming the call (`ADD cid=… if=net1`).
    context: String,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Installs the logger. Later calls are ignored (one plugin run, one logger).
pub fn init(level: Level, file: Option<File>, context: String) {
    let _ = SINK.set(Mutex::new(Sink {
        level,
        file,
        context,
    }));
}

/// Whether `level` would be written (to skip building expensive messages).
pub fn enabled(level: Level) -> bool {
    SINK.get()
        .and_then(|s| s.lock().ok().map(|s| level <= s.level))
        .unwrap_or(level <= Level::Warning)
}

/// Writes one line. Before [`init`] (config parse errors) warnings and errors go to stderr.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = |ctx: &str| {
        format!(
            "{} railvf[{}] {} {}{}\n",
            timestamp(),
            std::process::id(),
            level.label(),
            ctx,
            args
        )
    };
    match SINK.get() {
        Some(sink) => {
            let Ok(mut s) = sink.lock() else { return };
            if level > s.level {
                return;
            }
            let text = line(&s.context);
            match s.file.as_mut() {
                Some(f) => {
                    let _ = f.write_all(text.as_bytes());
                }
                None => {
                    eprint!("{text}");
                }
            }
        }
        None if level <= Level::Warning => {
            eprint!("{}", line(""));
        }
        None => {}
    }
}

#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }

/// Opens `logFile` for appending, refusing anything outside `log_dir` (see the module docs).
pub fn open_log_file(path: &Path, log_dir: &Path) -> Result<File, CniError> {
    let refuse = |why: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("\"logFile\" {} cannot be used: {why}", path.display()),
            format!(
                "logFile must be a file below {} (symlinks are not followed); remove logFile to log to stderr",
                log_dir.display()
            ),
        )
    };
    let rel = path
        .strip_prefix(log_dir)
        .map_err(|_| refuse(format!("it is not below {}", log_dir.display())))?;
    if rel.as_os_str().is_empty() {
        return Err(refuse("it names the log directory itself".into()));
    }
    let dir: OwnedFd = open(
        log_dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refuse(format!("cannot open {}: {e}", log_dir.display())))?;
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
        )
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(&dir, rel, how).map_err(|e| refuse(format!("open failed: {e}")))?;
    Ok(File::from(fd))
}

/// RFC 3339 UTC with milliseconds, computed without a time crate.
fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (H. Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_stays_below_the_log_dir() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let mut f = open_log_file(&logs.join("railvf.log"), &logs).unwrap();
        f.write_all(b"x\n").unwrap();
        assert!(logs.join("railvf.log").exists());

        // A symlink inside the log dir pointing outside is refused, not followed.
        std::os::unix::fs::symlink(dir.path(), logs.join("escape")).unwrap();
        let e = open_log_file(&logs.join("escape/evil.log"), &logs).unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        assert!(!dir.path().join("evil.log").exists());
        std::os::unix::fs::symlink(dir.path().join("target"), logs.join("link.log")).unwrap();
        assert!(open_log_file(&logs.join("link.log"), &logs).is_err());
        assert!(!dir.path().join("target").exists());

        let e = open_log_file(Path::new("/etc/railvf.log"), &logs).unwrap_err();
        assert!(e.msg.contains("not below"), "{e}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
