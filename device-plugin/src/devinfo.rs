//! NPWG device-info files (`<devinfo-dir>/<resource>-<pci>-device.json`), read by Multus
//! at CNI ADD.
//!
//! kubelet calls `Allocate` once per container and replays its checkpointed answer after
//! that, so files written only there are missing after a node reboot (`/var/run` is a
//! tmpfs) or a plugin restart. As sriov-network-device-plugin does, a resource writes the
//! file of every VF it advertises when it starts serving and whenever its device set
//! changes, and removes the files of VFs it no longer advertises; `Allocate` writes the
//! files of the VFs it hands out again; the plugin removes every file it wrote when it stops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use railvf_host::devinfo::{self, DeviceInfo};
use railvf_host::{HostRoot, PciAddr};
use tokio::sync::watch;

use crate::allocate::rdma_device_of;
use crate::pool::DeviceSet;

/// Device-info files written by this process, removed when it stops.
#[derive(Debug, Default)]
pub struct DevinfoFiles {
    files: Mutex<BTreeSet<PathBuf>>,
}

impl DevinfoFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, files: impl IntoIterator<Item = PathBuf>) {
        self.lock().extend(files);
    }

    /// Removes every file recorded; returns how many were removed.
    pub fn remove_all(&self) -> usize {
        let files = std::mem::take(&mut *self.lock());
        let mut n = 0;
        for path in files {
            if remove(&path) {
                n += 1;
            }
        }
        n
    }

    /// Removes one file and forgets it; true when it existed.
    fn remove(&self, path: &Path) -> bool {
        self.lock().remove(path);
        remove(path)
    }
}

fn remove(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!("cannot remove device-info file {}: {e}", path.display());
            false
        }
    }
}

/// The suffix of the temporary files [`write_atomic`] renames into place.
const TMP_SUFFIX: &str = ".tmp";

/// A temporary file older than this was left by a writer that was killed between writing
/// and renaming it (a live writer renames within milliseconds): [`DevinfoSync`] removes it.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `path` atomically (temp file + rename) so Multus never reads half a file;
/// a file that already holds these bytes (the VF was allocated before) is left alone.
///
/// The temporary file is `.<file name>.<random><TMP_SUFFIX>`, created with `O_EXCL`: two
/// writers of one file (the start-up write and an `Allocate`, or an old and a new plugin
/// instance during a rollout, both of which may be PID 1 of their container) never share
/// one. Mode 0644, as a plain write makes it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    // Created at start, but /var/run is the admin's (and Multus cleans it): make sure.
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TMP_SUFFIX)
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // On failure the temporary file is removed as it drops.
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// Removes the temporary files of `resource` in `dir` that a killed writer left, those
/// older than [`STALE_TMP`]; returns how many.
fn sweep_stale_temps(dir: &Path, resource: &str) -> usize {
    let prefix = format!(".{}-", resource.replace('/', "-"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let stale = e.metadata().is_ok_and(|m| {
            m.is_file()
                && m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP)
        });
        if stale && remove(&e.path()) {
            n += 1;
        }
    }
    n
}

/// The NPWG device-info of a VF, with its RDMA device when it has one.
pub fn vf_info(addr: PciAddr, rdma: Option<&str>, pf: PciAddr) -> Vec<u8> {
    // Serializing these plain fields cannot fail.
    serde_json::to_vec(&DeviceInfo::pci(addr, rdma, Some(pf))).unwrap_or_default()
}

/// How often the files are checked when the device list does not change.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// What the sync knows of a VF's file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    /// Written with the VF's RDMA device.
    WithRdma,
    /// Written without one (the VF had none in sight): written again once it has.
    WithoutRdma,
    /// Found in place while the VF is in a pod: written at `Allocate` (with the RDMA device
    /// name, out of sight now), so left as it is.
    Kept,
}

/// What one [`DevinfoSync::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
    /// Temporary files a killed writer left, removed.
    pub stale_temps: usize,
    /// Files that could not be written, with why.
    pub failed: Vec<(PathBuf, std::io::Error)>,
}

/// Keeps one resource's device-info files in step with its advertised VFs.
pub struct DevinfoSync {
    pub resource: String,
    pub dir: PathBuf,
    pub root: HostRoot,
    pub files: Arc<DevinfoFiles>,
    known: BTreeMap<PciAddr, Known>,
    /// The failures last warned about (how many, the first file): the same ones are not
    /// warned about again at every pass.
    warned: Option<(usize, PathBuf)>,
    /// Whether the first pass has removed the temporary files a killed writer left.
    swept: bool,
}

impl DevinfoSync {
    pub fn new(resource: String, dir: PathBuf, root: HostRoot, files: Arc<DevinfoFiles>) -> Self {
        DevinfoSync {
            resource,
            dir,
            root,
            files,
            known: BTreeMap::new(),
            warned: None,
            swept: false,
        }
    }

    /// Writes the file of every VF of `set` not written yet (or written without an RDMA
    /// device that it now has) and removes the files of VFs no longer in `set`. A VF in a
    /// pod keeps the file it has; one without a file gets one without `rdma-device`.
    pub fn sync(&mut self, set: &DeviceSet) -> SyncReport {
        let mut report = SyncReport::default();
        if !self.swept {
            self.swept = true;
            report.stale_temps = sweep_stale_temps(&self.dir, &self.resource);
        }
        for (addr, d) in &set.devices {
            let known = self.known.get(addr);
            let path = devinfo::dp_file(&self.dir, &self.resource, addr);
            // Written already, and still there: another instance stopping during a
            // rollout, or an admin cleaning /var/run, may have removed it since.
            if (known == Some(&Known::WithRdma) || (d.in_pod && known.is_some()))
                && std::fs::symlink_metadata(&path).is_ok()
            {
                continue;
            }
            let (bytes, next) = if d.in_pod {
                if std::fs::symlink_metadata(&path).is_ok() {
                    self.known.insert(*addr, Known::Kept);
                    self.files.record([path]);
                    continue;
                }
                (vf_info(*addr, None, d.pf), Known::WithoutRdma)
            } else {
                match rdma_device_of(&self.root, addr) {
                    Some(rdma) => (vf_info(*addr, Some(&rdma), d.pf), Known::WithRdma),
                    // Nothing new to say about a VF whose file is there already.
                    None if known.is_some() => continue,
                    None => (vf_info(*addr, None, d.pf), Known::WithoutRdma),
                }
            };
            match write_atomic(&path, &bytes) {
                Ok(()) => {
                    self.known.insert(*addr, next);
                    self.files.record([path]);
                    report.written += 1;
                }
                // Not remembered: tried again at the next change.
                Err(e) => report.failed.push((path, e)),
            }
        }
        let gone: Vec<PciAddr> = self
            .known
            .keys()
            .filter(|a| !set.devices.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            self.known.remove(&a);
            if self
                .files
                .remove(&devinfo::dp_file(&self.dir, &self.resource, &a))
            {
                report.removed += 1;
            }
        }
        report
    }

    /// Removes the files of every VF the sync knows (the resource is no longer served).
    pub fn remove_all(&mut self) -> usize {
        let empty = DeviceSet::default();
        self.sync(&empty).removed
    }

    /// Logs what a pass did; returns whether it warned. Failures are warned about when
    /// they change, not at every pass (with a read-only directory every pass fails alike).
    fn log(&mut self, r: &SyncReport) -> bool {
        if r.stale_temps > 0 {
            tracing::info!(
                resource = %self.resource,
                removed = r.stale_temps,
                dir = %self.dir.display(),
                "removed temporary device-info files left by a writer that was stopped between writing and renaming them"
            );
        }
        if r.written > 0 || r.removed > 0 {
            tracing::info!(
                resource = %self.resource,
                written = r.written,
                removed = r.removed,
                dir = %self.dir.display(),
                "device-info files of the advertised VFs brought up to date"
            );
        }
        let Some((path, e)) = r.failed.first() else {
            if self.warned.take().is_some() {
                tracing::info!(
                    resource = %self.resource,
                    dir = %self.dir.display(),
                    "device-info files can be written again"
                );
            }
            return false;
        };
        let now = (r.failed.len(), path.clone());
        if self.warned.as_ref() == Some(&now) {
            return false;
        }
        self.warned = Some(now);
        let others = match r.failed.len() {
            1 => String::new(),
            n => format!(" (and {} more files in {})", n - 1, self.dir.display()),
        };
        tracing::warn!(
            resource = %self.resource,
            failed = r.failed.len(),
            "cannot write device-info file {}: {e}{others}; Multus finds no device-info for these VFs (a pod sandbox re-created after a reboot gets none) until they can be written (tried again at every change of the device list and every {} s) or Allocate writes them, which refuses if it cannot: check that {} is writable and that nothing else holds the file's name",
            path.display(),
            RESYNC.as_secs(),
            self.dir.display()
        );
        true
    }

    /// Syncs at once and then at every change of the resource's devices, until `stop`.
    /// When the resource's channel closes (a config reload removed the resource), its
    /// files are removed. File I/O runs on the blocking pool, off the gRPC thread, and
    /// alongside the registration with kubelet rather than before it: 2048 files take
    /// about 65 ms, which would more than double the time to register.
    pub async fn run(
        mut self,
        mut devices: watch::Receiver<Arc<DeviceSet>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let resource = self.resource.clone();
        loop {
            let set = devices.borrow_and_update().clone();
            let done = tokio::task::spawn_blocking(move || {
                let r = self.sync(&set);
                self.log(&r);
                self
            })
            .await;
            self = match done {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(
                        resource = %resource,
                        "the device-info writer of {resource} stopped: {e}; its files no longer follow the device list (Allocate still writes the files of the VFs it hands out): restart the plugin"
                    );
                    return;
                }
            };
            tokio::select! {
                biased;
                r = devices.changed() => if r.is_err() { break },
                _ = stop.wait_for(|s| *s) => return,
                // Also now and then: a file removed behind the plugin's back comes back.
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            let n = self.remove_all();
            tracing::info!(resource = %self.resource, removed = n, "resource no longer served: its device-info files are removed");
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::test_sets::{entry, set};

    /// A host root where `addr` has RDMA device `mlx5_<n>`.
    fn with_rdma(root: &Path, addr: &str, n: u32) {
        let d = root.join("sys/bus/pci/devices").join(addr);
        std::fs::create_dir_all(d.join(format!("infiniband/mlx5_{n}"))).unwrap();
        std::fs::create_dir_all(d.join(format!("infiniband_verbs/uverbs{n}"))).unwrap();
    }

    /// A sync of resource `nvidia.com/x` into `<tmp>/devinfo` (returned too), on a host
    /// root at `tmp` where VF 18:00.1 has RDMA device `mlx5_12`.
    fn sync_of_x(tmp: &Path) -> (DevinfoSync, PathBuf) {
        let root = HostRoot::new(tmp).unwrap();
        let dir = tmp.join("devinfo");
        with_rdma(tmp, "0000:18:00.1", 12);
        let s = DevinfoSync::new("nvidia.com/x".into(), dir.clone(), root, Arc::default());
        (s, dir)
    }

    fn read(p: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn every_vf_gets_its_file_an_in_pod_one_keeps_its_own_and_gone_ones_lose_theirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = HostRoot::new(tmp.path().join("host")).unwrap();
        let dir = tmp.path().join("devinfo");
        with_rdma(&root.join(""), "0000:18:00.1", 12);
        // 18:00.2 has no RDMA device in sight (mlx5_ib not loaded yet).
        std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:18:00.2")).unwrap();
        let files = Arc::new(DevinfoFiles::default());
        let mut s = DevinfoSync::new(
            "nvidia.com/x".into(),
            dir.clone(),
            root.clone(),
            files.clone(),
        );
        let file = |a: &str| dir.join(format!("nvidia.com-x-{a}-device.json"));
        // In a pod: 18:00.3 has the file Allocate wrote (with its RDMA device), 18:00.4 none.
        std::fs::create_dir_all(&dir).unwrap();
        let allocated = vf_info(
            "0000:18:00.3".parse().unwrap(),
            Some("mlx5_14"),
            "0000:18:00.0".parse().unwrap(),
        );
        std::fs::write(file("0000:18:00.3"), &allocated).unwrap();

        let all = set(&[
            entry("0000:18:00.1", false),
            entry("0000:18:00.2", false),
            entry("0000:18:00.3", true),
            entry("0000:18:00.4", true),
        ]);
        let r = s.sync(&all);
        assert_eq!((r.written, r.removed, r.failed.len()), (3, 0, 0), "{r:?}");
        assert_eq!(read(&file("0000:18:00.1"))["pci"]["rdma-device"], "mlx5_12");
        assert_eq!(
            read(&file("0000:18:00.1"))["pci"]["pf-pci-address"],
            "0000:18:00.0"
        );
        assert!(
            read(&file("0000:18:00.2"))["pci"]
                .get("rdma-device")
                .is_none()
        );
        assert_eq!(std::fs::read(file("0000:18:00.3")).unwrap(), allocated);
        assert!(
            read(&file("0000:18:00.4"))["pci"]
                .get("rdma-device")
                .is_none()
        );
        // Nothing new: nothing written, not even read again.
        let r = s.sync(&all);
        assert_eq!((r.written, r.removed), (0, 0));
        // 18:00.2 gets its RDMA device: its file is written again, with it.
        with_rdma(&root.join(""), "0000:18:00.2", 13);
        assert_eq!(s.sync(&all).written, 1);
        assert_eq!(read(&file("0000:18:00.2"))["pci"]["rdma-device"], "mlx5_13");
        // 18:00.1 and 18:00.3 are no longer advertised: their files go.
        let r = s.sync(&set(&[
            entry("0000:18:00.2", false),
            entry("0000:18:00.4", true),
        ]));
        assert_eq!((r.written, r.removed), (0, 2));
        assert!(!file("0000:18:00.1").exists() && !file("0000:18:00.3").exists());
        // The plugin stopping removes the rest.
        assert_eq!(files.remove_all(), 2);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_file_that_cannot_be_written_is_reported_and_tried_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, dir) = sync_of_x(tmp.path());
        // A directory where the file goes: rename cannot replace it.
        let blocked = dir.join("nvidia.com-x-0000:18:00.1-device.json");
        std::fs::create_dir_all(&blocked).unwrap();
        let one = set(&[entry("0000:18:00.1", false)]);
        let r = s.sync(&one);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, blocked);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // Warned about once, not at every pass that fails alike.
        assert!(s.log(&r));
        let again = s.sync(&one);
        assert_eq!(again.failed.len(), 1);
        assert!(!s.log(&again));
        std::fs::remove_dir(&blocked).unwrap();
        let r = s.sync(&one);
        assert_eq!(r.written, 1);
        assert!(!s.log(&r) && s.warned.is_none());
    }

    #[test]
    fn temporary_files_a_killed_writer_left_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, dir) = sync_of_x(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - STALE_TMP * 2;
        let touch = |name: &str, at: Option<std::time::SystemTime>| {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if let Some(t) = at {
                f.set_modified(t).unwrap();
            }
        };
        let stale = ".nvidia.com-x-0000:18:00.1-device.json.a1B2c3.tmp";
        // A writer at work right now (another instance during a rollout).
        let live = ".nvidia.com-x-0000:18:00.2-device.json.d4E5f6.tmp";
        // Another resource's, and a file that is not a temporary one.
        let other = ".nvidia.com-y-0000:18:00.1-device.json.g7H8i9.tmp";
        let admins = ".nvidia.com-x-notes";
        touch(stale, Some(old));
        touch(live, None);
        touch(other, Some(old));
        touch(admins, Some(old));
        let one = set(&[entry("0000:18:00.1", false)]);
        let r = s.sync(&one);
        assert_eq!((r.written, r.stale_temps), (1, 1), "{r:?}");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                live.to_string(),
                admins.to_string(),
                other.to_string(),
                "nvidia.com-x-0000:18:00.1-device.json".to_string()
            ]
        );
        // Only the first pass sweeps.
        touch(stale, Some(old));
        assert_eq!(s.sync(&one).stale_temps, 0);
    }

    #[test]
    fn written_files_are_0644_and_a_failed_rename_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("d/nvidia.com-x-0000:18:00.1-device.json");
        write_atomic(&file, b"{}").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read(&file).unwrap(), b"{}");
        // A directory in the file's place: the rename fails, the temporary file goes.
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(write_atomic(&file, b"{}").is_err());
        assert_eq!(std::fs::read_dir(tmp.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn a_file_removed_behind_the_plugins_back_is_written_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, dir) = sync_of_x(tmp.path());
        let one = set(&[entry("0000:18:00.1", false)]);
        assert_eq!(s.sync(&one).written, 1);
        // Another instance stopping during a rollout removes the files it wrote, which
        // are the same names.
        let file = dir.join("nvidia.com-x-0000:18:00.1-device.json");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(s.sync(&one).written, 1);
        assert_eq!(read(&file)["pci"]["rdma-device"], "mlx5_12");
    }
}
