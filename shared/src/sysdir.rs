//! A sysfs directory held open and read relative to itself.
//!
//! Opening `<root>/sys/bus/pci/devices/<bdf>/infiniband/mlx5_12/ports/1/lid` by path makes
//! the kernel walk every component and the bus link again, for every attribute. Held open
//! (`O_PATH`), the function's directory is walked once and each attribute costs a walk of
//! its own few components: about half the time of an attribute read on real sysfs. Error
//! messages still name the full path.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Dir, Mode, OFlags, openat, readlinkat};
use rustix::io::Errno;

use crate::attr::ParseError;
use crate::host::{self, HostError};

/// How a directory is held: for `*at` calls only, never read itself.
const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// An open directory and the path it was opened by (for messages).
#[derive(Debug)]
pub struct SysDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SysDir {
    /// The directory at `path`, links followed; `None` when there is nothing there.
    pub fn open(path: &Path) -> Result<Option<SysDir>, HostError> {
        Self::open_at(CWD, path, path.to_path_buf())
    }

    /// The directory `rel` below `dirfd`, known in messages as `path`.
    fn open_at(
        dirfd: BorrowedFd<'_>,
        rel: &Path,
        path: PathBuf,
    ) -> Result<Option<SysDir>, HostError> {
        match openat(dirfd, rel, DIR_PATH, Mode::empty()) {
            Ok(fd) => Ok(Some(SysDir { fd, path })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(HostError::Unreadable {
                path,
                source: e.into(),
            }),
        }
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<path>/<rel>`, for messages.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The subdirectory `rel`; `None` when absent.
    pub fn sub(&self, rel: &str) -> Result<Option<SysDir>, HostError> {
        Self::open_at(self.fd.as_fd(), Path::new(rel), self.join(rel))
    }

    /// [`host::read_attr`] of `<path>/<rel>`.
    pub fn read_attr(&self, rel: &str) -> Result<String, HostError> {
        openat(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .and_then(|fd| host::read_small(fd.into()))
        .map(host::trim_attr)
        .map_err(|e| host::attr_error(&self.join(rel), e))
    }

    /// [`host::parse_attr`] of `<path>/<rel>`.
    pub fn parse_attr<T>(
        &self,
        rel: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, HostError> {
        let raw = self.read_attr(rel)?;
        parse(&raw).map_err(|source| HostError::Malformed {
            path: self.join(rel),
            source,
        })
    }

    /// [`host::link_basename`] of `<path>/<rel>`.
    pub fn link_basename(&self, rel: &str) -> Result<Option<String>, HostError> {
        Ok(self.read_link(rel)?.as_deref().and_then(host::basename))
    }

    /// The target of the link `<path>/<rel>`; `None` when there is no link there.
    pub fn read_link(&self, rel: &str) -> Result<Option<PathBuf>, HostError> {
        match readlinkat(&self.fd, rel, Vec::new()) {
            Ok(target) => Ok(Some(PathBuf::from(OsStr::from_bytes(target.as_bytes())))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(HostError::Unreadable {
                path: self.join(rel),
                source: e.into(),
            }),
        }
    }

    /// [`host::list_dir`] of `<path>/<rel>` (`"."`: this directory).
    pub fn list(&self, rel: &str) -> Result<Vec<String>, HostError> {
        list_at(self.fd.as_fd(), Path::new(rel), &self.join(rel))
    }
}

/// Entry names of the directory `rel` below `dirfd` (known in messages as `path`), sorted;
/// an absent directory is empty. getdents64 straight into the names: no fstat/fcntl of
/// `fdopendir`, no buffer of its size.
pub(crate) fn list_at(
    dirfd: BorrowedFd<'_>,
    rel: &Path,
    path: &Path,
) -> Result<Vec<String>, HostError> {
    let unreadable = |source: io::Error| HostError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match openat(dirfd, rel, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(e.into())),
    };
    let mut names = Vec::new();
    for entry in Dir::new(fd).map_err(|e| unreadable(e.into()))? {
        let entry = entry.map_err(|e| unreadable(e.into()))?;
        if let Ok(name) = entry.file_name().to_str()
            && name != "."
            && name != ".."
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Every read agrees with its by-path twin in `host`, errors naming the same path.
    #[test]
    fn reads_relative_to_the_open_directory_like_by_path() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("devices/0000:18:00.1");
        fs::create_dir_all(real.join("infiniband/mlx5_12/ports/1")).unwrap();
        fs::write(real.join("vendor"), "0x15b3\n").unwrap();
        fs::write(real.join("infiniband/mlx5_12/ports/1/lid"), "0x1a\n").unwrap();
        fs::create_dir_all(t.path().join("drivers/mlx5_core")).unwrap();
        std::os::unix::fs::symlink("../../drivers/mlx5_core", real.join("driver")).unwrap();
        fs::create_dir_all(t.path().join("bus")).unwrap();
        let bus = t.path().join("bus/0000:18:00.1");
        std::os::unix::fs::symlink("../devices/0000:18:00.1", &bus).unwrap();

        let d = SysDir::open(&bus)
            .unwrap()
            .expect("opened through the link");
        assert_eq!(d.path(), bus);
        assert_eq!(
            d.read_attr("vendor").unwrap(),
            host::read_attr(&bus.join("vendor")).unwrap()
        );
        assert_eq!(
            d.parse_attr("infiniband/mlx5_12/ports/1/lid", crate::attr::parse_lid)
                .unwrap(),
            0x1a
        );
        assert_eq!(
            d.link_basename("driver").unwrap().as_deref(),
            Some("mlx5_core")
        );
        assert_eq!(d.link_basename("physfn").unwrap(), None);
        let bus_dir = SysDir::open(&t.path().join("bus")).unwrap().unwrap();
        assert_eq!(
            bus_dir.read_link("0000:18:00.1").unwrap(),
            Some(PathBuf::from("../devices/0000:18:00.1"))
        );
        assert_eq!(bus_dir.read_link("0000:18:00.2").unwrap(), None);
        assert_eq!(
            d.list(".").unwrap(),
            host::list_dir(&bus).unwrap(),
            "the directory itself"
        );
        assert_eq!(d.list("infiniband").unwrap(), vec!["mlx5_12"]);
        assert!(d.list("net").unwrap().is_empty(), "absent: empty");
        let port = d.sub("infiniband/mlx5_12/ports/1").unwrap().unwrap();
        assert_eq!(port.read_attr("lid").unwrap(), "0x1a");
        assert!(d.sub("infiniband_verbs").unwrap().is_none());

        let e = d.read_attr("device").unwrap_err();
        assert!(matches!(e, HostError::Missing { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&bus.join("device").display().to_string()),
            "{e}"
        );
        fs::write(real.join("lid"), "26\n").unwrap();
        let e = d.parse_attr("lid", crate::attr::parse_lid).unwrap_err();
        assert!(
            e.to_string()
                .contains(&bus.join("lid").display().to_string()),
            "{e}"
        );
        assert!(
            SysDir::open(&t.path().join("bus/0000:18:00.2"))
                .unwrap()
                .is_none()
        );
    }
}
