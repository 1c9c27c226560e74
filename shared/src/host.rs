//! The host root: every host file railvf reads or writes lives below it, so a
//! simulated node and a real one are read by the same code.

use std::io;
use std::path::{Path, PathBuf};

use crate::attr::ParseError;
use crate::pci::PciAddr;

/// Environment variable naming the host root (default `/`).
pub const HOST_ROOT_ENV: &str = "RAILVF_HOST_ROOT";

/// A host file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path} is missing ({what}); {hint}")]
    Missing {
        path: PathBuf,
        what: &'static str,
        hint: &'static str,
    },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("{addr} is not a PCI function on this host: {path} does not exist")]
    NoSuchFunction { addr: PciAddr, path: PathBuf },
    #[error("host root {path} is not usable: {why}")]
    BadRoot { path: PathBuf, why: String },
}

/// Root directory below which the host's `/sys`, `/dev`, `/run` and `/proc` are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// A root at `path` (must be absolute: relative roots would depend on the caller's cwd).
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, HostError> {
        let root = path.into();
        if !root.is_absolute() {
            return Err(HostError::BadRoot {
                path: root,
                why: "it must be an absolute path".into(),
            });
        }
        Ok(Self { root })
    }

    /// `RAILVF_HOST_ROOT`, or `/` when unset or empty.
    pub fn from_env() -> Result<Self, HostError> {
        match std::env::var_os(HOST_ROOT_ENV) {
            Some(v) if !v.is_empty() => Self::new(PathBuf::from(v)),
            _ => Self::new("/"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/<rel>`; `rel` is always one of railvf's own constant paths.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// `<root>/sys/bus/pci/devices/<addr>`: only a validated [`PciAddr`] can name it.
    pub fn pci_device(&self, addr: &PciAddr) -> PathBuf {
        self.join("sys/bus/pci/devices").join(addr.to_string())
    }

    /// `<root>/sys/bus/pci/drivers/<driver>`; `driver` is a constant of railvf's.
    pub fn pci_driver(&self, driver: &str) -> PathBuf {
        self.join("sys/bus/pci/drivers").join(driver)
    }

    /// `<root>/dev/infiniband`.
    pub fn dev_infiniband(&self) -> PathBuf {
        self.join("dev/infiniband")
    }
}

/// Reads a sysfs attribute, trimmed of its trailing newline.
pub fn read_attr(path: &Path) -> Result<String, HostError> {
    std::fs::File::open(path)
        .and_then(read_small)
        .map(trim_attr)
        .map_err(|e| attr_error(path, e))
}

/// An attribute's text without the newline (or NUL) the kernel ends it with.
pub(crate) fn trim_attr(s: String) -> String {
    let len = s.trim_end_matches(['\n', '\0']).len();
    let mut s = s;
    s.truncate(len);
    s
}

/// A failed attribute read, naming `path`: `Missing` when absent, else `Unreadable`.
pub(crate) fn attr_error(path: &Path, e: io::Error) -> HostError {
    if e.kind() == io::ErrorKind::NotFound {
        HostError::Missing {
            path: path.to_path_buf(),
            what: "sysfs attribute",
            hint: "the kernel or the driver did not create it: check that the host root holds a complete /sys and that the device is bound to its driver",
        }
    } else {
        HostError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The whole of a small file: sysfs hands an attribute (at most a page) to the first
/// `read`, and a regular file reads short only at its end, so a read that leaves the buffer
/// part-empty is the whole file. That saves the `statx` and the second, empty `read` of
/// `read_to_string` — a third of the system calls of each attribute on the ADD path.
/// The page is read on the stack: a heap page per attribute is, with a malloc that hands
/// freed pages back to the kernel (musl's), an `mmap` and a `munmap` per attribute.
pub(crate) fn read_small(mut f: std::fs::File) -> io::Result<String> {
    use std::io::Read;
    let mut page = [0u8; 4096];
    let n = loop {
        match f.read(&mut page) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let mut buf = page[..n].to_vec();
    if n == page.len() {
        f.read_to_end(&mut buf)?;
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads an attribute that may legitimately be absent (`Ok(None)`).
pub fn read_optional_attr(path: &Path) -> Result<Option<String>, HostError> {
    match read_attr(path) {
        Ok(v) => Ok(Some(v)),
        Err(HostError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads and parses an attribute.
pub fn parse_attr<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, HostError> {
    let raw = read_attr(path)?;
    parse(&raw).map_err(|source| HostError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses an attribute that may be absent.
pub fn parse_optional_attr<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, HostError> {
    match read_optional_attr(path)? {
        None => Ok(None),
        Some(raw) => parse(&raw)
            .map(Some)
            .map_err(|source| HostError::Malformed {
                path: path.to_path_buf(),
                source,
            }),
    }
}

/// Entry names of a directory, sorted; an absent directory is empty.
pub fn list_dir(path: &Path) -> Result<Vec<String>, HostError> {
    crate::sysdir::list_at(rustix::fs::CWD, path, path)
}

/// The last component of a symlink's target (`driver -> …/drivers/mlx5_core` → `mlx5_core`);
/// `None` when there is no link.
pub fn link_basename(path: &Path) -> Result<Option<String>, HostError> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(basename(&target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The last component of a link target, as UTF-8.
pub(crate) fn basename(target: &Path) -> Option<String> {
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_roots_are_refused() {
        let e = HostRoot::new("sim/root").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn pci_paths_come_from_validated_addresses_only() {
        let root = HostRoot::new("/tmp/x").unwrap();
        let a: PciAddr = "0000:18:00.1".parse().unwrap();
        assert_eq!(
            root.pci_device(&a),
            PathBuf::from("/tmp/x/sys/bus/pci/devices/0000:18:00.1")
        );
    }

    #[test]
    fn missing_and_malformed_attributes_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lid");
        let e = read_attr(&p).unwrap_err();
        assert!(matches!(e, HostError::Missing { .. }), "{e}");
        std::fs::write(&p, "26\n").unwrap();
        let e = parse_attr(&p, crate::attr::parse_lid).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("lid") && msg.contains("0x1a") && msg.contains("\"26\""),
            "{msg}"
        );
        assert_eq!(read_optional_attr(&dir.path().join("nope")).unwrap(), None);
        assert!(list_dir(&dir.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn attributes_of_any_length_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("attr");
        for len in [0usize, 1, 4095, 4096, 4097, 10_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            std::fs::write(&p, format!("{text}\n")).unwrap();
            assert_eq!(read_attr(&p).unwrap(), text, "length {len}");
        }
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let e = read_attr(&p).unwrap_err();
        assert!(matches!(e, HostError::Unreadable { .. }), "{e}");
    }
}
