//! Per-attachment state files and per-VF locks.
//!
//! `<state dir>/<vf>_<containerID>@<ifname>.json`, one per attachment, written atomically (temp
//! file + rename) before ADD changes anything. It records everything needed to undo any
//! step ADD may take (the VF's host identity, previous GUID and VF settings, whether IPAM
//! is involved), so DEL, GC and rollback converge from any point — including an ADD killed
//! with SIGKILL — without ADD writing it again on the way (on the ext4 of a busy node every
//! rewrite costs milliseconds). It is rewritten only when a GUID rebind changed the VF's
//! netdev or RDMA device. The name is unambiguous: container IDs cannot contain `@`, and an
//! attachment is matched on the whole name after the VF, never on a suffix.
//!
//! The per-VF lock is a `flock` (`File::lock`) on the VF's own sysfs directory: one lock
//! per VF, so different VFs proceed in parallel, and no lock file is ever created.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use railvf_host::{Guid, HostRoot, PciAddr};
use serde::{Deserialize, Serialize};

use crate::error::{CniError, code};
use crate::net::{VfSettings, format_mac, parse_mac};

/// Version of the state file format. Files from a newer railvf are refused, not guessed at.
pub const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking VF {vf} (a flock on {path}): {source}")]
    Lock {
        vf: PciAddr,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is unreadable JSON ({why}); it was probably cut short by a crash")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "state file {path} has schema {found}, this railvf understands up to {SCHEMA}: it was written by a newer railvf"
    )]
    Schema { path: PathBuf, found: u32 },
}

impl From<StateError> for CniError {
    fn from(e: StateError) -> Self {
        let details = match &e {
            StateError::Schema { .. } => {
                "run the same or a newer railvf binary on this node (all nodes should run one version)"
            }
            StateError::Corrupt { .. } => {
                "inspect the file; if the VF is back on the host under its name, remove the file"
            }
            StateError::Lock { .. } => {
                "the VF's sysfs directory must be readable by railvf (check RAILVF_HOST_ROOT and that the VF still exists); the runtime retries"
            }
            _ => {
                "check that RAILVF_STATE_DIR (default /var/lib/cni/railvf) is on a writable local filesystem"
            }
        };
        CniError::new(code::IO, e.to_string(), details)
    }
}

/// The VF netdev as it was in the host namespace before ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostLink {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    pub mac: String,
    pub up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GuidMethod {
    /// MLNX_OFED's `<pf>/sriov/<n>/{node,port}` files.
    OfedSysfs,
    /// IFLA_VF_IB_NODE_GUID / IFLA_VF_IB_PORT_GUID on the PF.
    Netlink,
}

/// A GUID ADD set (or is about to set), with what to restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuidChange {
    pub method: GuidMethod,
    /// The node GUID before ADD (`None`: unknown, restored as all-zero).
    pub previous: Option<Guid>,
    /// The port GUID before ADD (`None`: unknown, or a file of an earlier railvf, which
    /// recorded only the node GUID: restored as `previous`, as that railvf did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_port: Option<Guid>,
    pub target: Guid,
}

impl GuidChange {
    /// The node and port GUID to restore.
    pub fn restore(&self) -> (Guid, Guid) {
        let node = self.previous.unwrap_or(Guid(0));
        (node, self.previous_port.unwrap_or(node))
    }
}

/// Serializable twin of [`VfSettings`] (the net layer's type stays serde-free).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfSettingsRecord {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vlan: Option<(u16, u8, u16)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spoofchk: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trust: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rate: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link_state: Option<u32>,
}

impl From<&VfSettings> for VfSettingsRecord {
    fn from(s: &VfSettings) -> Self {
        Self {
            mac: s.mac.map(|m| format_mac(&m)),
            vlan: s.vlan,
            spoofchk: s.spoofchk,
            trust: s.trust,
            rate: s.rate,
            link_state: s.link_state,
        }
    }
}

impl From<&VfSettingsRecord> for VfSettings {
    fn from(r: &VfSettingsRecord) -> Self {
        let mac = r.mac.as_deref().and_then(parse_mac);
        VfSettings {
            mac,
            vlan: r.vlan,
            spoofchk: r.spoofchk,
            trust: r.trust,
            rate: r.rate,
            link_state: r.link_state,
        }
    }
}

/// VF settings ADD changed through the PF, with their previous values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfChange {
    /// The PF netdev ADD went through; for the record only: DEL finds the PF's netdev again,
    /// as it may have been re-created since.
    pub pf_ifindex: u32,
    /// Only the fields ADD sets, holding the values read before.
    pub previous: VfSettingsRecord,
}

/// Everything railvf knows about one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub schema: u32,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub vf: PciAddr,
    pub pf: PciAddr,
    pub vf_index: u32,
    pub host: HostLink,
    #[serde(default)]
    pub guid: Option<GuidChange>,
    #[serde(default)]
    pub vf_settings: Option<VfChange>,
    /// Identity of the netdev when it is moved (after a GUID rebind, which may change it; for
    /// an InfiniBand VF with `rdmaIsolation`, the netdev IPoIB re-created when the RDMA
    /// device moved, with its new ifindex and hardware address, in the host or the pod).
    #[serde(default)]
    pub moving: Option<HostLink>,
    /// Its ifindex in the pod netns once the move returned (in memory only: the state is
    /// not rewritten for it; teardown recognises the VF by MAC and names).
    #[serde(skip)]
    pub pod_ifindex: Option<u32>,
    /// RDMA device ADD moves into the pod netns (`rdmaIsolation`).
    #[serde(default)]
    pub rdma_device: Option<String>,
    /// IPAM is configured: teardown releases it (IPAM DEL of nothing is a no-op).
    #[serde(default)]
    pub ipam: bool,
    /// In memory only: this process has run IPAM ADD (a rollback that failed before it
    /// need not, and, with the plugin missing, could not, run IPAM DEL).
    #[serde(skip)]
    pub ipam_called: bool,
    /// The network config ADD got, for IPAM DEL from GC or a later rollback.
    pub netconf: String,
    #[serde(default)]
    pub cni_args: Option<String>,
    pub created_unix: u64,
}

impl Attachment {
    pub fn key(&self) -> (&str, &str) {
        (&self.container_id, &self.ifname)
    }
}

/// A state file found by [`StateDir::list`]: its path and its content or why it is unusable.
pub type Entry = (PathBuf, Result<Attachment, StateError>);

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// A held per-VF lock; released on drop (also when the process dies).
#[derive(Debug)]
pub struct VfLock {
    _file: File,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn ensure(&self) -> Result<(), StateError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StateError::Dir {
                dir: self.dir.clone(),
                source,
            })
    }

    /// Checks the directory can be created and written (STATUS).
    pub fn probe(&self) -> Result<(), StateError> {
        self.ensure()?;
        let p = self.dir.join(".probe");
        fs::write(&p, b"").map_err(|source| StateError::Io {
            path: p.clone(),
            source,
        })?;
        let _ = fs::remove_file(&p);
        Ok(())
    }

    /// `<vf>_<containerID>@<ifname>.json`: the VF first, so ADD finds the attachments of
    /// one VF from the directory listing alone (reading no other file); both other parts
    /// were validated (env.rs): no '/', and '@' cannot occur in a container ID.
    fn name(vf: &PciAddr, container_id: &str, ifname: &str) -> String {
        format!("{vf}_{container_id}@{ifname}.json")
    }

    /// `<containerID>@<ifname>.json`: a file name after its VF. Compared whole, never as a
    /// suffix: container IDs may contain `_`, so `…_x_c1@net1.json` (attachment `x_c1`)
    /// ends with `_c1@net1.json` (attachment `c1`).
    fn tail(container_id: &str, ifname: &str) -> String {
        format!("{container_id}@{ifname}.json")
    }

    /// Names in the directory (temp files included).
    fn names(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Dir {
                    dir: self.dir.clone(),
                    source,
                });
            }
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The state file of one attachment, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<PathBuf>, StateError> {
        let tail = Self::tail(container_id, ifname);
        Ok(self
            .names()?
            .into_iter()
            .find(|n| split(n).is_some_and(|(_, t)| t == tail))
            .map(|n| self.dir.join(n)))
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>, StateError> {
        match self.find(container_id, ifname)? {
            Some(p) => read(&p),
            None => Ok(None),
        }
    }

    /// The state of one attachment of `vf`, read by its file name (no listing): for a
    /// caller that knows the VF, such as a DEL holding the VF's lock.
    pub fn load_of(
        &self,
        vf: &PciAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Attachment>, StateError> {
        read(&self.dir.join(Self::name(vf, container_id, ifname)))
    }

    /// Writes atomically: a reader sees the old or the new file, never a partial one.
    /// Not fsync'd: after a power loss every VF is back on the host anyway, and a file cut
    /// short is reported as corrupt and cleaned by DEL/GC.
    pub fn save(&self, a: &Attachment) -> Result<(), StateError> {
        self.ensure()?;
        let name = Self::name(&a.vf, &a.container_id, &a.ifname);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| StateError::Io {
            path: tmp.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(a).map_err(|e| io(io::Error::other(e)))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&body).map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })
    }

    /// Removes the state file of `a` (and the temporary file of an interrupted save of it)
    /// by name, for a caller holding `a.vf`'s lock that has just read `a` from its file.
    /// Only that file: the same attachment may have one on another VF (two ADDs of it raced,
    /// each under its own VF's lock), which is that VF's to undo.
    pub fn remove_attachment(&self, a: &Attachment) -> Result<(), StateError> {
        self.remove_interrupted_save(&a.vf, &a.container_id, &a.ifname)?;
        self.remove_path(&self.dir.join(Self::name(&a.vf, &a.container_id, &a.ifname)))
    }

    /// Removes the temporary file a save of this attachment killed before its rename left
    /// (the caller holds the VF's lock, so no save of it is under way).
    pub fn remove_interrupted_save(
        &self,
        vf: &PciAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), StateError> {
        let name = Self::name(vf, container_id, ifname);
        self.remove_path(&self.dir.join(format!(".{name}.tmp")))
    }

    /// Every state file, parsed; a corrupt one is returned as an error with its path.
    pub fn list(&self) -> Result<Vec<Entry>, StateError> {
        self.list_where(|_, _| true)
    }

    /// The state files whose name passes `keep(vf, "<containerID>@<ifname>.json")`; only
    /// those are read.
    pub fn list_where(
        &self,
        keep: impl Fn(&PciAddr, &str) -> bool,
    ) -> Result<Vec<Entry>, StateError> {
        let mut out = Vec::new();
        for n in self.names()? {
            let Some((vf, tail)) = split(&n) else {
                continue;
            };
            if !keep(&vf, tail) {
                continue;
            }
            let p = self.dir.join(&n);
            match read(&p) {
                Ok(Some(a)) => out.push((p, Ok(a))),
                Ok(None) => {}
                Err(e) => out.push((p, Err(e))),
            }
        }
        Ok(out)
    }

    /// The VF, container ID and interface name a state file is named after: what is left of
    /// a file that no longer parses.
    pub fn key_of(path: &Path) -> Option<(PciAddr, &str, &str)> {
        let (vf, tail) = split(path.file_name()?.to_str()?)?;
        // Container IDs cannot contain '@'; interface names may.
        let (cid, ifname) = tail.strip_suffix(".json")?.split_once('@')?;
        Some((vf, cid, ifname))
    }

    /// Whether a `list_where` name tail is this attachment's.
    pub fn is_attachment(tail: &str, container_id: &str, ifname: &str) -> bool {
        tail == Self::tail(container_id, ifname)
    }

    /// Removes a state file by path (GC of a corrupt file).
    pub fn remove_path(&self, p: &Path) -> Result<(), StateError> {
        match fs::remove_file(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                path: p.to_path_buf(),
                source,
            }),
        }
    }

    /// Takes the VF's lock, waiting for the holder (another railvf working on the same
    /// VF). A VF that no longer exists is serialized on the state directory instead.
    pub fn lock_vf(&self, root: &HostRoot, vf: &PciAddr) -> Result<VfLock, StateError> {
        let (file, path) = self.lock_target(root, vf)?;
        file.lock().map_err(|source| StateError::Lock {
            vf: *vf,
            path,
            source,
        })?;
        Ok(VfLock { _file: file })
    }

    /// Takes the VF's lock if nobody holds it; `None` while another railvf works on it.
    pub fn try_lock_vf(&self, root: &HostRoot, vf: &PciAddr) -> Result<Option<VfLock>, StateError> {
        let (file, path) = self.lock_target(root, vf)?;
        #[cfg(test)]
        let _gate = crate::testutil::SPAWN_GATE
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match file.try_lock() {
            Ok(()) => Ok(Some(VfLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(StateError::Lock {
                vf: *vf,
                path,
                source,
            }),
        }
    }

    /// What a VF's lock is taken on: its sysfs directory, else the state directory.
    fn lock_target(&self, root: &HostRoot, vf: &PciAddr) -> Result<(File, PathBuf), StateError> {
        let dir = root.pci_device(vf);
        let (file, path) = match File::open(&dir) {
            Ok(f) => (f, dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure()?;
                let f = File::open(&self.dir).map_err(|source| StateError::Dir {
                    dir: self.dir.clone(),
                    source,
                })?;
                (f, self.dir.clone())
            }
            Err(source) => {
                return Err(StateError::Lock {
                    vf: *vf,
                    path: dir,
                    source,
                });
            }
        };
        Ok((file, path))
    }
}

/// A state file's name split into its VF and its `<containerID>@<ifname>.json` tail;
/// `None` for any other name (temporary files included).
fn split(name: &str) -> Option<(PciAddr, &str)> {
    if name.len() < 14 || name.as_bytes()[12] != b'_' || !name.ends_with(".json") {
        return None;
    }
    Some((name.get(..12)?.parse().ok()?, &name[13..]))
}

fn read(path: &Path) -> Result<Option<Attachment>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let newer = |found| StateError::Schema {
        path: path.to_path_buf(),
        found,
    };
    // One parse when the file is ours; only a file that does not parse is read again for
    // its schema, to tell a newer railvf's file from a damaged one.
    match serde_json::from_slice::<Attachment>(&bytes) {
        Ok(a) if a.schema > SCHEMA => Err(newer(a.schema)),
        Ok(a) => Ok(Some(a)),
        Err(e) => {
            #[derive(Deserialize)]
            struct Head {
                schema: u32,
            }
            match serde_json::from_slice::<Head>(&bytes) {
                Ok(h) if h.schema > SCHEMA => Err(newer(h.schema)),
                _ => Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                }),
            }
        }
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) fn sample(container_id: &str, ifname: &str, vf: &str) -> Attachment {
    Attachment {
        schema: SCHEMA,
        network: "net".into(),
        container_id: container_id.into(),
        ifname: ifname.into(),
        netns: Some("/var/run/netns/x".into()),
        vf: vf.parse().unwrap(),
        pf: "0000:18:00.0".parse().unwrap(),
        vf_index: 0,
        host: HostLink {
            name: "ibp24s0v0".into(),
            ifindex: 7,
            mtu: 4092,
            mac: "00:11".into(),
            up: false,
        },
        guid: None,
        vf_settings: None,
        moving: None,
        pod_ifindex: None,
        rdma_device: None,
        ipam: false,
        ipam_called: false,
        netconf: "{}".into(),
        cni_args: None,
        created_unix: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn save_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path().join("state"));
        assert!(s.load("c1", "net1").unwrap().is_none());
        let mut a = sample("c1", "net1", "0000:18:00.1");
        a.guid = Some(GuidChange {
            method: GuidMethod::OfedSysfs,
            previous: Some(Guid(0)),
            previous_port: Some(Guid(0x0600)),
            target: Guid(0x1122),
        });
        a.vf_settings = Some(VfChange {
            pf_ifindex: 3,
            previous: VfSettingsRecord::from(&VfSettings {
                mac: Some([2, 0, 0, 0, 0, 1]),
                vlan: Some((0, 0, 0x8100)),
                ..Default::default()
            }),
        });
        s.save(&a).unwrap();
        let mode =
            std::os::unix::fs::MetadataExt::mode(&fs::metadata(d.path().join("state")).unwrap())
                & 0o777;
        assert_eq!(mode, 0o700);
        let back = s.load("c1", "net1").unwrap().unwrap();
        assert_eq!(back, a);
        // By name, without listing: only under the VF it belongs to.
        assert_eq!(s.load_of(&a.vf, "c1", "net1").unwrap().as_ref(), Some(&a));
        let other: PciAddr = "0000:18:00.2".parse().unwrap();
        assert!(s.load_of(&other, "c1", "net1").unwrap().is_none());
        assert!(s.load_of(&a.vf, "c1", "net2").unwrap().is_none());
        let vs = VfSettings::from(&back.vf_settings.unwrap().previous);
        assert_eq!(vs.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(s.list().unwrap().len(), 1);
        let vf = a.vf;
        assert_eq!(s.list_where(|v, _| *v == vf).unwrap().len(), 1);
        assert!(s.list_where(|v, _| *v != vf).unwrap().is_empty());
        assert!(
            s.list_where(|_, t| StateDir::is_attachment(t, "c1", "net1"))
                .unwrap()
                .len()
                == 1
        );
        // A temp file left by an interrupted save goes too.
        fs::write(d.path().join("state/.0000:18:00.1_c1@net1.json.tmp"), b"{").unwrap();
        s.remove_attachment(&a).unwrap();
        assert_eq!(fs::read_dir(d.path().join("state")).unwrap().count(), 0);
        s.remove_attachment(&a).unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    /// Two ADDs of one attachment with different VFs, each under its own VF's lock, can
    /// both have written a file: undoing one leaves the other's alone.
    #[test]
    fn removing_an_attachment_leaves_its_file_on_another_vf_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let on0 = sample("c1", "net1", "0000:18:00.1");
        let on1 = sample("c1", "net1", "0000:18:00.2");
        s.save(&on0).unwrap();
        s.save(&on1).unwrap();
        fs::write(d.path().join(".0000:18:00.2_c1@net1.json.tmp"), b"{").unwrap();
        s.remove_attachment(&on0).unwrap();
        assert!(s.load_of(&on0.vf, "c1", "net1").unwrap().is_none());
        assert_eq!(s.load_of(&on1.vf, "c1", "net1").unwrap(), Some(on1));
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn an_attachment_is_its_whole_name_not_a_suffix_of_another() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        // Container IDs may contain '_': "x_c1"'s file ends with "_c1@net1.json".
        s.save(&sample("x_c1", "net1", "0000:18:00.1")).unwrap();
        fs::write(d.path().join(".0000:18:00.1_x_c1@net1.json.tmp"), b"{").unwrap();
        assert!(s.find("c1", "net1").unwrap().is_none());
        assert!(s.load("c1", "net1").unwrap().is_none());
        s.remove_attachment(&sample("c1", "net1", "0000:18:00.1"))
            .unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        assert!(
            s.list_where(|_, t| StateDir::is_attachment(t, "c1", "net1"))
                .unwrap()
                .is_empty()
        );
        let c1 = sample("c1", "net1", "0000:18:00.2");
        s.save(&c1).unwrap();
        assert_eq!(s.load("c1", "net1").unwrap().unwrap().container_id, "c1");
        assert_eq!(
            s.load("x_c1", "net1").unwrap().unwrap().container_id,
            "x_c1"
        );
        s.remove_attachment(&c1).unwrap();
        assert_eq!(
            s.load("x_c1", "net1").unwrap().unwrap().container_id,
            "x_c1"
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_lock_that_cannot_be_taken_names_the_vf_and_its_sysfs_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path()).unwrap();
        let vf: PciAddr = "0000:18:00.1".parse().unwrap();
        let dir = root.pci_device(&vf);
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        // A symlink to itself: opening it fails (ELOOP), even for root.
        std::os::unix::fs::symlink(&dir, &dir).unwrap();
        let e = StateDir::new(d.path().join("state"))
            .lock_vf(&root, &vf)
            .err()
            .unwrap();
        assert!(matches!(e, StateError::Lock { .. }), "{e:?}");
        let e = CniError::from(e);
        assert!(
            e.msg.starts_with("locking VF 0000:18:00.1 (a flock on "),
            "{e}"
        );
        assert!(e.details.contains("sysfs directory"), "{e:?}");
    }

    #[test]
    fn a_file_name_gives_its_attachment() {
        let vf: PciAddr = "0000:18:00.1".parse().unwrap();
        fn key(n: &str) -> Option<(PciAddr, &str, &str)> {
            StateDir::key_of(Path::new(n))
        }
        assert_eq!(
            key("/s/0000:18:00.1_x_c1@net@1.json"),
            Some((vf, "x_c1", "net@1"))
        );
        for bad in [
            "/s/0000:18:00.1_c1.json",
            "/s/.0000:18:00.1_c1@net1.json.tmp",
            "/s/0000:18:00.1-c1@net1.json",
            "/s/0000:18:00.1_c1@net1.txt",
        ] {
            assert_eq!(key(bad), None, "{bad}");
        }
    }

    #[test]
    fn corrupt_and_future_files_are_reported_not_guessed() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        fs::write(
            d.path().join("0000:18:00.1_c1@net1.json"),
            b"{\"schema\":1,",
        )
        .unwrap();
        assert!(matches!(
            s.load("c1", "net1"),
            Err(StateError::Corrupt { .. })
        ));
        fs::write(
            d.path().join("0000:18:00.2_c2@net1.json"),
            b"{\"schema\":99}",
        )
        .unwrap();
        let e = s.load("c2", "net1").unwrap_err();
        assert!(e.to_string().contains("schema 99"), "{e}");
        assert_eq!(CniError::from(e).code, code::IO);
        assert_eq!(s.list().unwrap().len(), 2);
        // A newer file that happens to parse as this version's is still refused.
        let mut a = sample("c3", "net1", "0000:18:00.3");
        a.schema = 99;
        s.save(&a).unwrap();
        let e = s.load("c3", "net1").unwrap_err();
        assert!(matches!(e, StateError::Schema { found: 99, .. }), "{e}");
    }

    #[test]
    fn vf_lock_serializes_one_vf_and_not_others() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path()).unwrap();
        let vf: PciAddr = "0000:18:00.1".parse().unwrap();
        let other: PciAddr = "0000:18:00.2".parse().unwrap();
        for a in [vf, other] {
            fs::create_dir_all(root.pci_device(&a)).unwrap();
        }
        let s = Arc::new(StateDir::new(d.path().join("state")));
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, inside, max, root) = (s.clone(), inside.clone(), max.clone(), root.clone());
                std::thread::spawn(move || {
                    let _l = s.lock_vf(&root, &vf).unwrap();
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
        let _a = s.lock_vf(&root, &vf).unwrap();
        let _b = s.lock_vf(&root, &other).unwrap();
        // A vanished VF still gets a lock (on the state dir), and no file is created.
        let gone: PciAddr = "0000:18:00.3".parse().unwrap();
        let _c = s.lock_vf(&root, &gone).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(s.path()).unwrap().count(), 0);
    }
}
