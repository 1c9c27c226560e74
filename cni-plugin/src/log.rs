//! Logging to stderr or `logFile`, never stdout (stdout carries the CNI result).
//!
//! A few lines per call, so a tiny logger instead of a subscriber framework: the plugin is
//! exec'd for every pod and must start fast.
//!
//! Format: JSON lines (one object per line: `time`, `level`, `msg`, `pid`, and the
//! attachment's `command`, `containerID`, `ifname`, `vf` when known) to `logFile` and to a
//! stderr that is not a terminal (what runtimes capture); human text on a terminal.
//! [`step`] marks the end of a step of ADD/DEL and [`finish`] writes one summary line with
//! each step's duration in ms.
//!
//! `logFile` rule: a file directly in railvf's log directory (`/var/log/railvf`, or
//! `RAILVF_LOG_DIR`; created on first use), named `*.log`, opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` so no symlink is followed; it must be a
//! regular file with one link; created with mode 0600 when absent, appended to otherwise.
//! Any other `logFile` (one written for sriov-cni, a hostile one) is not opened: the call
//! logs to stderr with a warning saying why, and goes on.

use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    /// sriov-cni's names, in any case as its logger takes them; `panic` logs errors only,
    /// `verbose` is debug.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "panic" | "error" => Level::Error,
            "warning" | "warn" => Level::Warning,
            "info" => Level::Info,
            "debug" | "verbose" => Level::Debug,
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
    /// Prefix naming the call (`ADD cid=… if=net1`), for the text format.
    context: String,
    /// JSON lines (`logFile`, or stderr not a terminal) rather than text.
    json: bool,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// The attachment a run is about: fields of every JSON line.
#[derive(Clone, Debug, Default)]
struct Fields {
    command: Option<String>,
    container_id: Option<String>,
    ifname: Option<String>,
    vf: Option<String>,
}

static FIELDS: Mutex<Fields> = Mutex::new(Fields {
    command: None,
    container_id: None,
    ifname: None,
    vf: None,
});

/// Step timings of this run: when the clock started, the last mark, each step's duration.
struct Clock {
    start: Option<Instant>,
    last: Option<Instant>,
    steps: Vec<(&'static str, Duration)>,
}

static CLOCK: Mutex<Clock> = Mutex::new(Clock {
    start: None,
    last: None,
    steps: Vec::new(),
});

/// Installs the logger. Later calls are ignored (one plugin run, one logger).
pub fn init(level: Level, file: Option<File>, context: String) {
    let json = file.is_some() || !std::io::stderr().is_terminal();
    let _ = SINK.set(Mutex::new(Sink {
        level,
        file,
        context,
        json,
    }));
    start_clock();
}

/// Names the attachment in every following JSON line.
pub fn set_attachment(
    command: &str,
    container_id: Option<&str>,
    ifname: Option<&str>,
    vf: Option<String>,
) {
    if let Ok(mut f) = FIELDS.lock() {
        *f = Fields {
            command: Some(command.to_string()),
            container_id: container_id.map(str::to_string),
            ifname: ifname.map(str::to_string),
            vf,
        };
    }
}

/// Starts (or restarts) the step clock.
pub fn start_clock() {
    if let Ok(mut c) = CLOCK.lock() {
        let now = Instant::now();
        c.start = Some(now);
        c.last = Some(now);
        c.steps.clear();
    }
}

/// Marks the end of step `name`: the time since the previous mark (or the clock's start)
/// is booked to it. A step marked twice adds up.
pub fn step(name: &'static str) {
    let Ok(mut c) = CLOCK.lock() else { return };
    let now = Instant::now();
    let since = c.last.or(c.start).unwrap_or(now);
    c.start.get_or_insert(now);
    c.last = Some(now);
    let d = now.saturating_duration_since(since);
    match c.steps.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += d,
        None => c.steps.push((name, d)),
    }
}

/// Milliseconds with two decimals (a JSON number).
fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Writes the run's summary line (info): total time, outcome, each step's duration in ms.
/// Time after the last mark is booked to `rest`.
pub fn finish(command: &str, error_code: Option<u32>) {
    let (total, steps) = {
        let Ok(mut c) = CLOCK.lock() else { return };
        let now = Instant::now();
        let Some(start) = c.start else { return };
        if let Some(last) = c.last {
            let rest = now.saturating_duration_since(last);
            if !rest.is_zero() {
                c.steps.push(("rest", rest));
            }
        }
        (now.saturating_duration_since(start), c.steps.clone())
    };
    let outcome = match error_code {
        None => "done".to_string(),
        Some(code) => format!("failed (code {code})"),
    };
    let list = steps
        .iter()
        .map(|(n, d)| format!("{n} {}", ms(*d)))
        .collect::<Vec<_>>()
        .join(", ");
    let steps_json = steps
        .iter()
        .map(|(n, d)| format!("{}:{}", json_str(n), ms(*d)))
        .collect::<Vec<_>>()
        .join(",");
    let mut extra = vec![("ms", ms(total)), ("steps", format!("{{{steps_json}}}"))];
    if let Some(code) = error_code {
        extra.push(("code", code.to_string()));
    }
    emit(
        Level::Info,
        format_args!("{command} {outcome} in {} ms: {list}", ms(total)),
        &extra,
    );
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// One JSON line: `extra` values are raw JSON.
fn json_line(level: Level, msg: &str, extra: &[(&str, String)]) -> String {
    let mut o = format!(
        "{{\"time\":\"{}\",\"level\":\"{}\",\"msg\":{},\"pid\":{}",
        timestamp(),
        level.label(),
        json_str(msg),
        std::process::id()
    );
    if let Ok(f) = FIELDS.lock() {
        for (k, v) in [
            ("command", &f.command),
            ("containerID", &f.container_id),
            ("ifname", &f.ifname),
            ("vf", &f.vf),
        ] {
            if let Some(v) = v {
                o.push_str(&format!(",{}:{}", json_str(k), json_str(v)));
            }
        }
    }
    for (k, v) in extra {
        o.push_str(&format!(",{}:{v}", json_str(k)));
    }
    o.push_str("}\n");
    o
}

/// Whether `level` would be written (to skip building expensive messages).
pub fn enabled(level: Level) -> bool {
    SINK.get()
        .and_then(|s| s.lock().ok().map(|s| level <= s.level))
        .unwrap_or(level <= Level::Warning)
}

/// Writes one line. Before [`init`] (config parse errors) warnings and errors go to stderr.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    emit(level, args, &[]);
}

fn emit(level: Level, args: fmt::Arguments<'_>, extra: &[(&str, String)]) {
    let line = |ctx: &str, json: bool| {
        if json {
            json_line(level, &args.to_string(), extra)
        } else {
            format!(
                "{} railvf[{}] {} {}{}\n",
                timestamp(),
                std::process::id(),
                level.label(),
                ctx,
                args
            )
        }
    };
    match SINK.get() {
        Some(sink) => {
            let Ok(mut s) = sink.lock() else { return };
            if level > s.level {
                return;
            }
            let text = line(&s.context, s.json);
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
            eprint!("{}", line("", !std::io::stderr().is_terminal()));
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

/// Opens `logFile` for appending, or says why it will not (see the module docs). The
/// caller logs to stderr then: a logging setting never stops a call.
pub fn open_log_file(raw: &str, log_dir: &Path) -> Result<File, String> {
    let path = Path::new(raw);
    // Only a file directly in railvf's log directory: other programs' files and other
    // pods' logs (`/var/log/pods/…`, the audit log) sit in directories of their own.
    let name = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name))
            if parent == log_dir
                && !raw.contains('\0')
                && path
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))) =>
        {
            name
        }
        _ => {
            return Err(format!(
                "it is not a file directly in {}",
                log_dir.display()
            ));
        }
    };
    if Path::new(name).extension().is_none_or(|e| e != "log") {
        return Err("its name does not end in .log".into());
    }
    // Created on first use (one level: its parent is the node's).
    match std::fs::DirBuilder::new().mode(0o750).create(log_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", log_dir.display())),
    }
    let dir: OwnedFd = open(
        log_dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", log_dir.display()))?;
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW
                // A FIFO would block the open (and every write) until a reader comes.
                | OFlag::O_NONBLOCK,
        )
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(&dir, name, how).map_err(|e| format!("open failed: {e}"))?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "it is not a regular file (found {:?})",
            meta.file_type()
        ));
    }
    // A second name elsewhere (a hard link) would take the lines out of the directory.
    if meta.nlink() != 1 {
        return Err(format!(
            "it has {} hard links; a log file has one",
            meta.nlink()
        ));
    }
    Ok(file)
}

fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

/// RFC 3339 UTC with milliseconds, computed without a time crate.
pub fn rfc3339(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
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

    fn open(p: &Path, logs: &Path) -> Result<File, String> {
        open_log_file(p.to_str().unwrap(), logs)
    }

    #[test]
    fn log_file_stays_directly_in_the_log_dir() {
        let dir = tempfile::tempdir().unwrap();
        // Created on first use.
        let logs = dir.path().join("logs");
        let mut f = open(&logs.join("railvf.log"), &logs).unwrap();
        f.write_all(b"x\n").unwrap();
        assert!(logs.join("railvf.log").exists());

        // A symlink inside the log dir pointing outside is refused, not followed.
        std::os::unix::fs::symlink(dir.path(), logs.join("escape")).unwrap();
        let e = open(&logs.join("escape/evil.log"), &logs).unwrap_err();
        assert!(e.contains("not a file directly in"), "{e}");
        assert!(!dir.path().join("evil.log").exists());
        std::os::unix::fs::symlink(dir.path().join("target"), logs.join("link.log")).unwrap();
        assert!(open(&logs.join("link.log"), &logs).is_err());
        assert!(!dir.path().join("target").exists());

        // Another pod's log, the audit log: files in directories of their own, untouched.
        for sub in ["pods/ns_victim_1234/app/0.log", "audit/audit.log"] {
            let p = logs.join(sub);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "their line\n").unwrap();
            let e = open(&p, &logs).unwrap_err();
            assert!(e.contains("not a file directly in"), "{sub}: {e}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), "their line\n");
        }
        for bad in [
            "/etc/railvf.log",
            "relative.log",
            "",
            &format!("{}/../railvf.log", logs.display()),
            &format!("{}/a\0.log", logs.display()),
        ] {
            let e = open_log_file(bad, &logs).unwrap_err();
            assert!(e.contains("not a file directly in"), "{bad:?}: {e}");
        }
        assert!(!dir.path().join("railvf.log").exists());
    }

    /// Other programs' files in the log directory are not appended to, and a FIFO does
    /// not block the open.
    #[test]
    fn log_file_is_a_regular_log_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        std::fs::write(logs.join("wtmp"), b"\0\0binary records").unwrap();
        let e = open(&logs.join("wtmp"), logs).unwrap_err();
        assert!(e.contains(".log"), "{e}");
        assert_eq!(
            std::fs::read(logs.join("wtmp")).unwrap(),
            b"\0\0binary records"
        );

        nix::unistd::mkfifo(&logs.join("pipe.log"), Mode::from_bits_truncate(0o600)).unwrap();
        // Refused by the open itself (no reader: ENXIO), without blocking.
        assert!(open(&logs.join("pipe.log"), logs).is_err());

        std::fs::create_dir(logs.join("dir.log")).unwrap();
        assert!(open(&logs.join("dir.log"), logs).is_err());

        std::fs::write(logs.join("a.log"), b"").unwrap();
        std::fs::hard_link(logs.join("a.log"), logs.join("b.log")).unwrap();
        let e = open(&logs.join("b.log"), logs).unwrap_err();
        assert!(e.contains("hard links"), "{e}");
    }

    #[test]
    fn levels_are_read_as_sriov_cnis_logger_reads_them() {
        for (s, l) in [
            ("panic", Level::Error),
            ("ERROR", Level::Error),
            ("Warning", Level::Warning),
            ("warn", Level::Warning),
            ("INFO", Level::Info),
            ("verbose", Level::Debug),
            ("Debug", Level::Debug),
        ] {
            assert_eq!(Level::parse(s), Some(l), "{s}");
        }
        assert_eq!(Level::parse("loud"), None);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
        let at = UNIX_EPOCH + Duration::from_millis(951_782_400_007); // leap day 2000
        assert_eq!(rfc3339(at), "2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn json_lines_carry_the_attachment_and_extra_fields() {
        set_attachment("ADD", Some("c1"), Some("net1"), Some("0000:18:00.1".into()));
        let l = json_line(
            Level::Warning,
            "a \"quoted\" msg\nover lines",
            &[("ms", "1.50".into()), ("steps", r#"{"move":1.00}"#.into())],
        );
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["msg"], "a \"quoted\" msg\nover lines");
        assert_eq!(v["command"], "ADD");
        assert_eq!(v["containerID"], "c1");
        assert_eq!(v["ifname"], "net1");
        assert_eq!(v["vf"], "0000:18:00.1");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["ms"], 1.5);
        assert_eq!(v["steps"]["move"], 1.0);
        assert!(l.starts_with(r#"{"time":""#), "time first: {l}");
    }

    #[test]
    fn steps_add_up_in_order() {
        start_clock();
        step("first");
        step("second");
        step("first");
        // Other tests of this process may mark their own steps meanwhile.
        let c = CLOCK.lock().unwrap();
        let mine: Vec<_> = c
            .steps
            .iter()
            .filter(|(n, _)| matches!(*n, "first" | "second"))
            .collect();
        let names: Vec<_> = mine.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["first", "second"]);
    }
}
