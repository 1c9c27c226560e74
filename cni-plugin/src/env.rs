//! The CNI environment (`CNI_*`) and railvf's own variables, validated before use.
//!
//! These come from the runtime, but a namespace user can influence some of them (interface
//! names, container IDs): nothing here is trusted to name a path until it is checked.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use railvf_host::HostRoot;

use crate::error::{CniError, code};

/// Environment variable naming railvf's state directory.
pub const STATE_DIR_ENV: &str = "RAILVF_STATE_DIR";
/// Default state directory (beside the reference plugins' `/var/lib/cni/networks`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/railvf";
/// Environment variable naming the directory `logFile` may point into (default
/// `/var/log/railvf`: railvf's own, so no NAD can aim at another program's log).
pub const LOG_DIR_ENV: &str = "RAILVF_LOG_DIR";
pub const DEFAULT_LOG_DIR: &str = "/var/log/railvf";

/// The verbs of the CNI spec 1.1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND is {:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                        other.chars().take(32).collect::<String>()
                    ),
                    "railvf is a CNI plugin: it is run by a container runtime (Multus, containerd, CRI-O, podman), not by hand",
                ));
            }
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// Everything railvf reads from its environment.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    /// `CNI_NETNS`; `None` when unset or empty (allowed for DEL: the netns may be gone).
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// `CNI_PATH` directories, in order.
    pub cni_path: Vec<PathBuf>,
    pub host_root: HostRoot,
    pub state_dir: PathBuf,
    /// Where `logFile` may point.
    pub log_dir: PathBuf,
}

impl Env {
    /// Reads and validates the environment through `get` (the process env in `main`, a map
    /// in tests). Only the variables the verb needs are required.
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Self, CniError> {
        let text = |name: &str| -> Result<Option<String>, CniError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|_| {
                    CniError::new(
                        code::INVALID_ENV,
                        format!("{name} is not valid UTF-8"),
                        "the container runtime passed a malformed environment",
                    )
                }),
            }
        };
        let command = match text("CNI_COMMAND")? {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "CNI_COMMAND is not set: expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                    "railvf is a CNI plugin: it is run by a container runtime (Multus, containerd, CRI-O, podman), not by hand",
                ));
            }
        };
        // Only the verbs about one attachment read these; the others may get anything
        // (libcni validates a conflist by calling VERSION with CNI_NETNS=dummy).
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = text("CNI_CONTAINERID")?.filter(|_| per_attachment);
        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        let ifname = text("CNI_IFNAME")?.filter(|_| per_attachment);
        if let Some(n) = &ifname {
            validate_ifname(n)?;
            // Only ADD names an interface; DEL and CHECK still find one named so before.
            if command == Command::Add && n.contains('%') {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_IFNAME {n:?} contains '%'"),
                    "the kernel takes a name with '%' as a template (net%d becomes net0, net1, …), so the pod would get another name than the one asked for; use a name such as net1",
                ));
            }
        }
        let netns = match text("CNI_NETNS")?.filter(|_| per_attachment) {
            Some(p) => Some(validate_netns(&p)?),
            None => None,
        };
        let cni_path = text("CNI_PATH")?
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    // Relative CNI_PATH entries would depend on the runtime's cwd: ignore them.
                    .filter(|d| d.is_absolute())
                    .collect()
            })
            .unwrap_or_default();
        let host_root = match get(railvf_host::host::HOST_ROOT_ENV) {
            Some(v) if !v.is_empty() => HostRoot::new(PathBuf::from(v)),
            _ => HostRoot::new("/"),
        }
        .map_err(|e| {
            CniError::new(
                code::INVALID_ENV,
                e.to_string(),
                "set RAILVF_HOST_ROOT to an absolute directory, or leave it unset for /",
            )
        })?;
        let state_dir = abs_dir(&get, STATE_DIR_ENV, DEFAULT_STATE_DIR)?;
        let log_dir = abs_dir(&get, LOG_DIR_ENV, DEFAULT_LOG_DIR)?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args: text("CNI_ARGS")?,
            cni_path,
            host_root,
            state_dir,
            log_dir,
        })
    }

    /// `CNI_CONTAINERID`, required by ADD, DEL and CHECK.
    pub fn require_container_id(&self) -> Result<&str, CniError> {
        self.container_id
            .as_deref()
            .ok_or_else(|| missing("CNI_CONTAINERID", self.command))
    }

    pub fn require_ifname(&self) -> Result<&str, CniError> {
        self.ifname
            .as_deref()
            .ok_or_else(|| missing("CNI_IFNAME", self.command))
    }

    pub fn require_netns(&self) -> Result<&Path, CniError> {
        self.netns
            .as_deref()
            .ok_or_else(|| missing("CNI_NETNS", self.command))
    }
}

fn missing(name: &str, cmd: Command) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("{name} is not set; {} needs it", cmd.as_str()),
        "the container runtime must pass it (CNI spec, section \"Parameters\")",
    )
}

fn abs_dir(
    get: &impl Fn(&str) -> Option<OsString>,
    name: &str,
    default: &str,
) -> Result<PathBuf, CniError> {
    let p = match get(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    };
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "{name} is {:?}: expected an absolute path without '..'",
                p.display()
            ),
            format!("set {name} to an absolute directory, or leave it unset for {default}"),
        ));
    }
    Ok(p)
}

/// The spec's rule: alphanumeric first, then alphanumerics, `_`, `.`, `-`. It also keeps
/// the ID safe inside a state file name.
/// The longest container ID railvf takes: its state file names must fit in 255 bytes.
pub const MAX_CONTAINER_ID: usize = 200;

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {:?} is invalid: expected an alphanumeric character followed by alphanumerics, '_', '.' or '-'",
                id.chars().take(80).collect::<String>()
            ),
            "the container runtime passed a container ID the CNI spec does not allow",
        ));
    }
    // State files are named `<vf>_<id>@<ifname>.json` (written as `.<name>.tmp` first): a
    // longer ID would not fit a file name (255 bytes), and the error would come only later.
    if id.len() > MAX_CONTAINER_ID {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID is {} characters long ({:?}…): railvf takes at most {MAX_CONTAINER_ID}",
                id.len(),
                id.chars().take(40).collect::<String>()
            ),
            "container runtimes use 64-character IDs; a longer one comes from a runtime or test harness railvf does not support",
        ));
    }
    Ok(())
}

/// An interface name the kernel accepts and that is safe in a file name: 1–15 bytes, no
/// `/`, `:`, whitespace or control characters, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes (IFNAMSIZ - 1)")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("it contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_IFNAME {:?} is not a valid interface name: {why}",
                name.chars().take(40).collect::<String>()
            ),
            "use a name such as net1 (Multus derives it from the pod's network annotation)",
        )),
    }
}

/// `CNI_NETNS` is a path by definition; it must be absolute and free of `..`, and it is
/// only ever opened as a network namespace.
fn validate_netns(p: &str) -> Result<PathBuf, CniError> {
    let path = PathBuf::from(p);
    if !path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
        || p.contains('\0')
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {:?} is not an absolute path to a network namespace",
                p.chars().take(200).collect::<String>()
            ),
            "expected something like /var/run/netns/<name> or /proc/<pid>/ns/net",
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_a_full_add_environment() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-123_x.y"),
            ("CNI_NETNS", "/var/run/netns/pod1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin::relative:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.require_container_id().unwrap(), "abc-123_x.y");
        assert_eq!(
            e.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(e.host_root.path(), Path::new("/"));
    }

    #[test]
    fn refuses_bad_values_with_code_4() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("CNI_COMMAND", "FOO")],
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "../etc")],
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "-abc")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "a/b")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "..")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "net 1")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "net1:0")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "sixteen-chars-xx")],
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "net%d")],
            &[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "relative/ns")],
            &[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/proc/../etc/passwd")],
            &[("CNI_COMMAND", "ADD"), ("RAILVF_HOST_ROOT", "sim")],
            &[("CNI_COMMAND", "ADD"), ("RAILVF_STATE_DIR", "/var/../tmp")],
        ];
        for c in cases {
            let e = env(c).unwrap_err();
            assert_eq!(e.code, 4, "{c:?}: {e}");
        }
        // VERSION, STATUS and GC ignore per-attachment variables (libcni sends "dummy").
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "a/b"),
        ])
        .unwrap();
        assert!(e.netns.is_none() && e.ifname.is_none());
        let e = env(&[("CNI_COMMAND", "DEL")]).unwrap();
        assert_eq!(e.require_ifname().unwrap_err().code, 4);
        // A name with '%' from before it was refused can still be deleted.
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "net%d")]).unwrap();
        assert_eq!(e.ifname.as_deref(), Some("net%d"));
        assert!(e.netns.is_none());
        // Empty CNI_NETNS on DEL means "gone", not an error.
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]).unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn fifteen_byte_names_are_fine() {
        validate_ifname("fifteen-chars-x").unwrap();
        validate_ifname("net1").unwrap();
    }
}
