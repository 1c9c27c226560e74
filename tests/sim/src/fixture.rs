//! The on-disk tree: every simulated object renders to a set of entries (files, dirs,
//! symlinks) and this module makes the disk match, writing only what changed.
//!
//! Rendering whole objects and diffing is what keeps faults exact: a fault changes the
//! rendered entries of one object and nothing else, and clearing it restores them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, io_err};
use crate::pci::Bdf;

/// One rendered entry; paths are relative to the host root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory owned by the object (removed with everything below it).
    Dir,
    /// A file the sim keeps in sync with the model.
    File(String),
    /// A file created once with this content and then left to whoever writes it
    /// (GUID files, bind/unbind): the sim never overwrites user writes.
    Seed(String),
    /// A symlink with this (relative) target.
    Link(PathBuf),
}

pub(crate) type Tree = BTreeMap<PathBuf, Entry>;

/// Who rendered an entry set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Static,
    Func(Bdf),
}

pub(crate) struct Fixture {
    root: PathBuf,
    tmp: PathBuf,
    seq: u64,
    applied: HashMap<Owner, Tree>,
    /// Directories known to exist, to skip `create_dir_all` per file.
    dirs: HashSet<PathBuf>,
    /// Initial build: nobody reads yet, so files are written in place (no rename).
    pub bulk: bool,
}

impl Fixture {
    pub fn new(root: &Path) -> Result<Fixture> {
        let tmp = root.join(".railvf-sim/tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(Fixture {
            root: root.to_owned(),
            tmp,
            seq: 0,
            applied: HashMap::new(),
            dirs: HashSet::new(),
            bulk: false,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the disk match `new` for `owner`.
    pub fn apply(&mut self, owner: Owner, new: Tree) -> Result<()> {
        let old = self.applied.remove(&owner).unwrap_or_default();
        let mut removed_dirs: Vec<&Path> = Vec::new();
        // Deepest first, so children go before their directory.
        for (path, entry) in old.iter().rev() {
            // Same kind: overwritten in place below; another kind: removed first.
            let keep = matches!(
                (entry, new.get(path)),
                (Entry::Dir, Some(Entry::Dir))
                    | (
                        Entry::File(_) | Entry::Seed(_),
                        Some(Entry::File(_) | Entry::Seed(_))
                    )
                    | (Entry::Link(_), Some(Entry::Link(_)))
            );
            if keep {
                continue;
            }
            let abs = self.root.join(path);
            let res = match entry {
                Entry::Dir => {
                    removed_dirs.push(path);
                    self.dirs.retain(|d| !d.starts_with(&abs));
                    fs::remove_dir_all(&abs)
                }
                _ => fs::remove_file(&abs),
            };
            if path.starts_with("run") {
                self.prune_empty_parents(&abs);
            }
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(abs)(e)),
            }
        }
        let mut result = Ok(());
        for (path, entry) in &new {
            let unchanged =
                old.get(path) == Some(entry) && !removed_dirs.iter().any(|d| path.starts_with(d));
            if unchanged {
                continue;
            }
            if let Err(e) = self.write(path, entry) {
                result = Err(e);
                break;
            }
        }
        self.applied.insert(owner, new);
        result
    }

    /// Removes everything `owner` rendered.
    pub fn remove(&mut self, owner: Owner) -> Result<()> {
        self.apply(owner, Tree::new())?;
        self.applied.remove(&owner);
        Ok(())
    }

    fn write(&mut self, path: &Path, entry: &Entry) -> Result<()> {
        let abs = self.root.join(path);
        if let Entry::Dir = entry {
            return self.ensure_dir(&abs);
        }
        if let Some(parent) = abs.parent() {
            self.ensure_dir(parent)?;
        }
        match entry {
            Entry::File(content) if self.bulk => fs::write(&abs, content).map_err(io_err(abs)),
            Entry::Seed(content) => {
                if fs::symlink_metadata(&abs).is_ok() {
                    return Ok(());
                }
                fs::write(&abs, content).map_err(io_err(abs))
            }
            Entry::File(content) => {
                // Write-then-rename: a reader never sees a half-written attribute, and the
                // temporary file never shows up in a sysfs directory listing.
                let tmp = self.tmp_path();
                let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
                f.write_all(content.as_bytes()).map_err(io_err(&tmp))?;
                drop(f);
                fs::rename(&tmp, &abs).map_err(io_err(abs))
            }
            Entry::Link(target) => {
                let tmp = self.tmp_path();
                symlink(target, &tmp).map_err(io_err(&tmp))?;
                if fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&abs).map_err(io_err(&abs))?;
                }
                fs::rename(&tmp, &abs).map_err(io_err(abs))
            }
            Entry::Dir => Ok(()),
        }
    }

    /// `run/` holds state files of host daemons (networkd, NetworkManager) whose
    /// directories exist only while there is something in them in the sim; remove the
    /// directories a removed file leaves empty.
    fn prune_empty_parents(&mut self, abs: &Path) {
        let stop = self.root.join("run");
        let mut dir = abs.parent();
        while let Some(d) = dir {
            if !d.starts_with(&stop) || fs::remove_dir(d).is_err() {
                break;
            }
            self.dirs.remove(d);
            dir = d.parent();
        }
    }

    fn ensure_dir(&mut self, abs: &Path) -> Result<()> {
        if self.dirs.contains(abs) {
            return Ok(());
        }
        fs::create_dir_all(abs).map_err(io_err(abs))?;
        self.dirs.insert(abs.to_owned());
        Ok(())
    }

    fn tmp_path(&mut self) -> PathBuf {
        self.seq += 1;
        self.tmp.join(self.seq.to_string())
    }

    /// Writes a file directly (no rename), like a user's `echo > file`; used for inputs the
    /// sim owns the format of (`sriov_numvfs` after a rejected write, GUID files).
    pub fn write_plain(&self, path: &Path, content: &str) -> Result<()> {
        let abs = self.root.join(path);
        fs::write(&abs, content).map_err(io_err(abs))
    }

    /// Reads a file under the root (`None` when missing or unreadable).
    pub fn read(&self, path: &Path) -> Option<String> {
        fs::read_to_string(self.root.join(path)).ok()
    }
}

/// Target of a symlink at `link` pointing at `target` (both relative to the root), as the
/// kernel writes sysfs links (`kernfs_get_target_path`): relative, up to the closest common
/// ancestor of the link's directory and the target's *parent*, so a link to an ancestor
/// still names it (`infiniband/mlx5_0/device -> ../../../0000:18:00.0`, not `../..`).
pub(crate) fn rel_link(link: &Path, target: &Path) -> PathBuf {
    let from: Vec<Component> = link
        .parent()
        .map_or(Vec::new(), |p| p.components().collect());
    let to: Vec<Component> = target.components().collect();
    let to_parent = &to[..to.len().saturating_sub(1)];
    let common = from
        .iter()
        .zip(to_parent)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_match_sysfs() {
        let dev =
            Path::new("sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0");
        assert_eq!(
            rel_link(
                &dev.join("driver"),
                Path::new("sys/bus/pci/drivers/mlx5_core")
            ),
            Path::new("../../../../../../bus/pci/drivers/mlx5_core")
        );
        assert_eq!(
            rel_link(Path::new("sys/bus/pci/devices/0000:18:00.0"), dev),
            Path::new(
                "../../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"
            )
        );
        assert_eq!(
            rel_link(&dev.join("infiniband/mlx5_0/device"), dev),
            Path::new("../../../0000:18:00.0")
        );
        assert_eq!(
            rel_link(&dev.join("virtfn0"), &dev.with_file_name("0000:18:00.1")),
            Path::new("../0000:18:00.1")
        );
        assert_eq!(
            rel_link(&dev.join("net/ibp24s0/device"), dev),
            Path::new("../../../0000:18:00.0")
        );
        assert_eq!(
            rel_link(
                &dev.join("net/ibp24s0/subsystem"),
                Path::new("sys/class/net")
            ),
            Path::new("../../../../../../../../class/net")
        );
        assert_eq!(
            rel_link(Path::new("sys/class/net/ibp24s0"), &dev.join("net/ibp24s0")),
            Path::new(
                "../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0/net/ibp24s0"
            )
        );
    }

    #[test]
    fn apply_diffs_and_keeps_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut fx = Fixture::new(dir.path()).unwrap();
        let owner = Owner::Static;
        let mut t = Tree::new();
        t.insert("a".into(), Entry::Dir);
        t.insert("a/f".into(), Entry::File("1\n".into()));
        t.insert("a/s".into(), Entry::Seed("seed\n".into()));
        t.insert("a/l".into(), Entry::Link("f".into()));
        fx.apply(owner, t.clone()).unwrap();
        fs::write(dir.path().join("a/s"), "user\n").unwrap();
        t.insert("a/f".into(), Entry::File("2\n".into()));
        t.remove(Path::new("a/l"));
        fx.apply(owner, t).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a/f")).unwrap(), "2\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("a/s")).unwrap(),
            "user\n"
        );
        assert!(fs::symlink_metadata(dir.path().join("a/l")).is_err());
        fx.remove(owner).unwrap();
        assert!(!dir.path().join("a").exists());
    }
}
