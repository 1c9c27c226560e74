//! CDI spec files, for `--use-cdi`: `Allocate` answers CDI device names, and the container
//! runtime resolves them from these files when it creates the container.
//!
//! Why: kubelet keeps each container's `Allocate` answer and replays it, also after a node
//! reboot. A path answered at `Allocate` (`/dev/infiniband/uverbsN`) may by then be another
//! VF's node, or no node; a CDI name (`<kind>=<PCI address>`) is looked up in the file this
//! module keeps current, so a container gets its VF's node as it is when the container is
//! created.
//!
//! One file per resource, `<dir>/railvf_<prefix>_<name>.json`, kind `<prefix>/<name>`
//! (the resource's full name), one CDI device per VF named by its PCI address. The file
//! stays when the plugin stops: containers of running pods that restart while it is down
//! (an upgrade) must still resolve their devices. A resource removed from the config
//! loses its file, and at start the files of resources no longer configured are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use railvf_host::attr::parse_dev_numbers;
use railvf_host::{HostRoot, PciAddr};
use serde::Serialize;
use tokio::sync::watch;

use crate::allocate::{CharDev, RDMA_CM, is_vf_node_name, mad_of, uverbs_of};
use crate::devinfo::write_atomic;
use crate::health;
use crate::pool::DeviceSet;

/// The runtimes' default directory for generated specs, below the host root.
pub const CDI_DIR: &str = "var/run/cdi";

/// The oldest CDI version with every field written here (`hostPath` came in 0.5.0): the
/// one containerd 1.7 and podman 4 read.
pub const SPEC_VERSION: &str = "0.5.0";

/// Names of the files this plugin writes: nothing else in the directory is touched.
const FILE_PREFIX: &str = "railvf_";

/// The RDMA CM device's sysfs directory, whose `dev` has its numbers (a misc device:
/// `rdma_ucm` registers it).
const RDMA_CM_SYSFS: &str = "sys/class/misc/rdma_cm";

/// How often the file is read again when the device list does not change: a driver
/// rebind that keeps the VF healthy renumbers its uverbs node without a list change.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// A resource whose full name is not a valid CDI kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "resource {resource:?} cannot be a CDI kind (--use-cdi): {why}. A CDI kind is \
     <vendor>/<class>: the vendor (the resource prefix) is letters, digits, '-', '_' and '.', \
     the class (the resource name) letters, digits, '-' and '_'; each starts with a letter \
     and ends with a letter or digit. Rename the resource, or run without --use-cdi"
)]
pub struct KindError {
    pub resource: String,
    pub why: String,
}

/// Checks one part of a kind; `extra` are the characters allowed besides letters and digits.
fn check_part(part: &str, what: &str, extra: &[u8]) -> Result<(), String> {
    let b = part.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return Err(format!("the {what} is empty"));
    };
    if b.len() < 2 {
        return Err(format!("the {what} {part:?} is shorter than 2 characters"));
    }
    if !first.is_ascii_alphabetic() {
        return Err(format!("the {what} {part:?} does not start with a letter"));
    }
    if !last.is_ascii_alphanumeric() {
        return Err(format!(
            "the {what} {part:?} does not end with a letter or digit"
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && extra.contains(&(*c as u8)))))
    {
        return Err(format!("the {what} {part:?} holds {c:?}"));
    }
    Ok(())
}

/// The CDI kind of a resource: its full name, checked against the rules of the CDI
/// library that containerd 1.7 and podman 4 use (later versions also allow '.' in the class).
pub fn kind_of(full_resource: &str) -> Result<String, KindError> {
    let err = |why: String| KindError {
        resource: full_resource.chars().take(80).collect(),
        why,
    };
    let (vendor, class) = full_resource
        .split_once('/')
        .ok_or_else(|| err("it has no '/'".into()))?;
    check_part(vendor, "vendor", b"-_.").map_err(err)?;
    check_part(class, "class", b"-_").map_err(err)?;
    Ok(full_resource.to_string())
}

/// The fully qualified CDI name of a VF: `<kind>=<PCI address>`.
pub fn device_name(kind: &str, addr: &PciAddr) -> String {
    format!("{kind}={addr}")
}

/// The spec file of a kind in `dir`.
pub fn spec_file(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{}.json", kind.replace('/', "_")))
}

/// One device node of a spec. The numbers are written when sysfs gives them, so the
/// runtime creates exactly the node the plugin read (it stats `hostPath` only without them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub path: String,
    pub host_path: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    pub permissions: &'static str,
}

impl Node {
    /// The character device at `path`, with the numbers of the sysfs `dev` attribute
    /// `<dir>/<dev_attr>` (read relative to `fd` when there is one) when it reads as the
    /// kernel prints it.
    fn read(path: String, fd: Option<&OwnedFd>, dir: &Path, dev_attr: &str) -> Node {
        Node::new(
            path,
            health::read_attr(fd, dir, dev_attr, parse_dev_numbers),
        )
    }

    /// The character device at `path` (the same on the host), with its numbers if known.
    fn new(path: String, numbers: Option<(u32, u32)>) -> Node {
        Node {
            host_path: path.clone(),
            path,
            kind: numbers.map(|_| "c"),
            major: numbers.map(|n| n.0),
            minor: numbers.map(|n| n.1),
            permissions: "rw",
        }
    }

    /// A VF's node as a spec file of this plugin has it; `None` for anything else.
    fn from_file(n: &serde_json::Value) -> Option<Node> {
        let path = n["path"].as_str()?;
        if !path
            .strip_prefix("/dev/infiniband/")
            .is_some_and(is_vf_node_name)
        {
            return None;
        }
        let num = |k: &str| n[k].as_u64().and_then(|x| u32::try_from(x).ok());
        Some(Node::new(path.to_string(), num("major").zip(num("minor"))))
    }
}

/// Each VF's nodes in the spec file at `path`, as an earlier run left it (empty without
/// one): what a VF still in a pod, its RDMA device out of sight, keeps at this run's first
/// pass, so that its containers can restart after the plugin did.
fn nodes_in_file(path: &Path) -> BTreeMap<PciAddr, Vec<Node>> {
    let Some(spec) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for d in spec["devices"].as_array().into_iter().flatten() {
        let Some(addr) = d["name"].as_str().and_then(|n| n.parse::<PciAddr>().ok()) else {
            continue;
        };
        let nodes: Vec<Node> = d["containerEdits"]["deviceNodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Node::from_file)
            .collect();
        if !nodes.is_empty() {
            out.insert(addr, nodes);
        }
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Edits<'a> {
    device_nodes: Vec<&'a Node>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Device<'a> {
    name: String,
    container_edits: Edits<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    cdi_version: &'static str,
    kind: &'a str,
    /// Applied once to a container that gets any device of the spec: `rdma_cm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    container_edits: Option<Edits<'a>>,
    devices: Vec<Device<'a>>,
}

/// One resource's spec file, kept in step with its VFs' uverbs nodes.
#[derive(Debug)]
pub struct CdiSpec {
    pub kind: String,
    pub path: PathBuf,
    root: HostRoot,
    /// Each VF's nodes as last read: uverbs, then issm and umad with `madDevices`. A VF in
    /// a pod whose RDMA device is out of sight (`rdmaIsolation`) keeps the nodes it had:
    /// its containers may restart.
    nodes: BTreeMap<PciAddr, Vec<Node>>,
    /// The `rdma_cm` node as last read.
    rdma_cm: Option<Node>,
    /// The file says what `nodes` and `rdma_cm` say (there is none when `nodes` is empty).
    /// Cleared by any change to them and by a failed write: the file is serialized and
    /// written only then, or when it was removed behind the plugin's back.
    in_file: bool,
    /// How many times the whole spec was serialized: a pass that changes nothing must not
    /// (it is ~1 ms at 2048 VFs, and `Allocate` is one); the tests read it.
    serialized: u64,
    /// The failure last warned about: the same one is not warned about at every pass.
    warned: Option<String>,
}

/// The spec of a resource shared by its `Allocate` and its refresh task.
pub type SharedSpec = Arc<Mutex<CdiSpec>>;

pub fn lock(spec: &SharedSpec) -> MutexGuard<'_, CdiSpec> {
    spec.lock().unwrap_or_else(|p| p.into_inner())
}

impl CdiSpec {
    pub fn new(full_resource: &str, dir: &Path, root: HostRoot) -> Result<Self, KindError> {
        let kind = kind_of(full_resource)?;
        let path = spec_file(dir, &kind);
        Ok(CdiSpec {
            nodes: nodes_in_file(&path),
            path,
            kind,
            root,
            rdma_cm: None,
            in_file: false,
            serialized: 0,
            warned: None,
        })
    }

    fn read_nodes(fd: Option<&OwnedFd>, dir: &Path, chars: &[CharDev]) -> Vec<Node> {
        chars
            .iter()
            .map(|c| Node::read(c.path(), fd, dir, &c.dev_attr()))
            .collect()
    }

    fn read_rdma_cm(&self) -> Option<Node> {
        self.root.join(RDMA_CM).exists().then(|| {
            Node::read(
                RDMA_CM.to_string(),
                None,
                &self.root.join(RDMA_CM_SYSFS),
                "dev",
            )
        })
    }

    /// Reads every VF of `set` again and rewrites the file if what it says changed;
    /// returns whether it wrote (or removed) the file.
    pub fn refresh(&mut self, set: &DeviceSet) -> std::io::Result<bool> {
        let mut nodes = BTreeMap::new();
        for (addr, d) in &set.devices {
            // One path walk per VF (sysfs links), the reads relative to it.
            let dir = self.root.pci_device(addr);
            let fd = health::open_function_dir(&dir);
            match uverbs_of(fd.as_ref(), &dir) {
                Some(uverbs) => {
                    let mut chars = vec![CharDev::uverbs(uverbs)];
                    if set.mad_devices {
                        // Without ib_umad there are none: Allocate refuses such a VF.
                        chars.extend(mad_of(fd.as_ref(), &dir));
                    }
                    nodes.insert(*addr, Self::read_nodes(fd.as_ref(), &dir, &chars));
                }
                None if d.in_pod => {
                    if let Some(old) = self.nodes.get(addr) {
                        nodes.insert(*addr, old.clone());
                    }
                }
                // No RDMA device (mlx5_ib not loaded): Allocate refuses it anyway.
                None => {}
            }
        }
        if nodes != self.nodes {
            self.nodes = nodes;
            self.in_file = false;
        }
        self.write()
    }

    /// For `Allocate`: the VFs handed out, each with the nodes it has now, are in the file
    /// before the answer names them.
    pub fn pin(&mut self, vfs: &[(PciAddr, Vec<CharDev>)]) -> std::io::Result<bool> {
        for (addr, chars) in vfs {
            let dir = self.root.pci_device(addr);
            let fd = health::open_function_dir(&dir);
            let nodes = Self::read_nodes(fd.as_ref(), &dir, chars);
            if self.nodes.get(addr) != Some(&nodes) {
                self.nodes.insert(*addr, nodes);
                self.in_file = false;
            }
        }
        self.write()
    }

    /// The file's bytes; `None` when there is no VF to describe (the CDI library refuses
    /// a spec without devices).
    fn bytes(&self) -> Option<Vec<u8>> {
        if self.nodes.is_empty() {
            return None;
        }
        let spec = Spec {
            cdi_version: SPEC_VERSION,
            kind: &self.kind,
            container_edits: self.rdma_cm.as_ref().map(|n| Edits {
                device_nodes: vec![n],
            }),
            devices: self
                .nodes
                .iter()
                .map(|(addr, nodes)| Device {
                    name: addr.to_string(),
                    container_edits: Edits {
                        device_nodes: nodes.iter().collect(),
                    },
                })
                .collect(),
        };
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_vec_pretty(&spec).ok()
    }

    /// Brings the file in line with `nodes` and `rdma_cm` (read again here); returns
    /// whether it wrote or removed the file.
    fn write(&mut self) -> std::io::Result<bool> {
        let rdma_cm = self.read_rdma_cm();
        if rdma_cm != self.rdma_cm {
            self.rdma_cm = rdma_cm;
            self.in_file = false;
        }
        // Written already and still there: an admin cleaning /var/run may have removed it.
        if self.in_file && (self.nodes.is_empty() || self.path.exists()) {
            return Ok(false);
        }
        let done = match self.bytes() {
            Some(b) => {
                self.serialized += 1;
                write_atomic(&self.path, &b).map(|()| true)
            }
            None => remove(&self.path),
        };
        // After a failure what the file holds is unknown: the next pass writes it.
        self.in_file = done.is_ok();
        done
    }

    /// Removes the file (the resource is no longer served).
    pub fn remove(&mut self) -> std::io::Result<()> {
        self.nodes.clear();
        self.in_file = false;
        remove(&self.path)?;
        self.in_file = true;
        Ok(())
    }

    /// Logs a pass: what it wrote, and a failure once until it changes or ends.
    fn log(&mut self, r: std::io::Result<bool>) {
        match r {
            Ok(wrote) => {
                if wrote {
                    tracing::info!(
                        kind = %self.kind,
                        devices = self.nodes.len(),
                        file = %self.path.display(),
                        "CDI spec brought up to date"
                    );
                }
                if self.warned.take().is_some() {
                    tracing::info!(file = %self.path.display(), "the CDI spec can be written again");
                }
            }
            Err(e) => {
                let now = e.to_string();
                if self.warned.as_deref() != Some(&now) {
                    tracing::warn!(
                        file = %self.path.display(),
                        "cannot write the CDI spec: {e}; containers created meanwhile resolve the VFs' devices from the file as it was (or fail with unresolvable CDI devices when there is none): check that {} is writable; tried again at every change of the device list, every {} s and at Allocate",
                        self.path.parent().unwrap_or(Path::new("")).display(),
                        RESYNC.as_secs()
                    );
                    self.warned = Some(now);
                }
            }
        }
    }

    /// One refresh with its logging, as the task and the first pass at start do it.
    pub fn refresh_logged(&mut self, set: &DeviceSet) {
        let r = self.refresh(set);
        self.log(r);
    }
}

/// Removes `path`; returns whether there was a file to remove.
fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes this plugin's spec files in `dir` whose kind is not in `keep` (resources removed
/// from the config while the plugin was down); returns the files removed. Files of other
/// programs are not touched.
pub fn remove_others(dir: &Path, keep: &BTreeSet<String>) -> Vec<PathBuf> {
    let keep: BTreeSet<PathBuf> = keep.iter().map(|k| spec_file(dir, k)).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        if name.starts_with(FILE_PREFIX)
            && name.ends_with(".json")
            && !keep.contains(&path)
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            match remove(&path) {
                Ok(_) => out.push(path),
                Err(err) => tracing::warn!(
                    "cannot remove the CDI spec {} of a resource no longer configured: {err}",
                    path.display()
                ),
            }
        }
    }
    out
}

/// Refreshes the spec at every change of the resource's devices and every [`RESYNC`],
/// until `stop` or until the resource's channel closes. The first pass is the caller's
/// (before the resource registers). File I/O runs on the blocking pool.
pub async fn run(
    spec: SharedSpec,
    mut devices: watch::Receiver<Arc<DeviceSet>>,
    mut stop: watch::Receiver<bool>,
) {
    devices.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            r = devices.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(RESYNC) => {}
        }
        let set = devices.borrow_and_update().clone();
        let s = spec.clone();
        let _ = tokio::task::spawn_blocking(move || lock(&s).refresh_logged(&set)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::test_sets::{entry, set};

    #[test]
    fn kinds_follow_the_cdi_rules() {
        assert_eq!(
            kind_of("nvidia.com/dgx_h200_vfs").unwrap(),
            "nvidia.com/dgx_h200_vfs"
        );
        kind_of("openshift.io/mlnx-rdma2").unwrap();
        for (name, why) in [
            ("nvidia.com/dgx.h200", "holds '.'"),
            ("nvidia.com/0vfs", "does not start with a letter"),
            ("nvidia.com/vfs_", "does not end with a letter or digit"),
            ("1nvidia.com/vfs", "does not start with a letter"),
            ("nvidia.com/v", "shorter than 2"),
            ("nvidia.com/vf=s", "holds '='"),
            ("nvidia.com/vfé", "does not end with a letter or digit"),
            ("vfs", "no '/'"),
            ("/vfs", "the vendor is empty"),
        ] {
            let e = kind_of(name).unwrap_err();
            assert!(e.why.contains(why), "{name}: {e}");
            assert!(e.to_string().contains("run without --use-cdi"), "{e}");
        }
    }

    /// Gives VF `addr` under `root` RDMA device `mlx5_<n>` and node `uverbs<n>` (231:192+n).
    fn with_uverbs(root: &Path, addr: &str, n: u32) {
        let d = root.join("sys/bus/pci/devices").join(addr);
        let _ = std::fs::remove_dir_all(d.join("infiniband"));
        let _ = std::fs::remove_dir_all(d.join("infiniband_verbs"));
        std::fs::create_dir_all(d.join(format!("infiniband/mlx5_{n}"))).unwrap();
        let uv = d.join(format!("infiniband_verbs/uverbs{n}"));
        std::fs::create_dir_all(&uv).unwrap();
        std::fs::write(uv.join("dev"), format!("231:{}\n", 192 + n)).unwrap();
    }

    fn without_uverbs(root: &Path, addr: &str) {
        let d = root.join("sys/bus/pci/devices").join(addr);
        std::fs::remove_dir_all(d.join("infiniband")).unwrap();
        std::fs::remove_dir_all(d.join("infiniband_verbs")).unwrap();
    }

    fn read(p: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// The spec's devices: name → the (path, major, minor) of its one node.
    fn devices(v: &serde_json::Value) -> BTreeMap<String, (String, u64, u64)> {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let nodes = d["containerEdits"]["deviceNodes"].as_array().unwrap();
                assert_eq!(nodes.len(), 1, "{d}");
                let n = &nodes[0];
                assert_eq!(n["hostPath"], n["path"]);
                assert_eq!(n["type"], "c");
                assert_eq!(n["permissions"], "rw");
                (
                    d["name"].as_str().unwrap().to_string(),
                    (
                        n["path"].as_str().unwrap().to_string(),
                        n["major"].as_u64().unwrap(),
                        n["minor"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    }

    fn node(n: u64) -> (String, u64, u64) {
        (format!("/dev/infiniband/uverbs{n}"), 231, 192 + n)
    }

    #[test]
    fn the_spec_follows_the_vfs_uverbs_nodes_and_keeps_those_of_vfs_in_pods() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let root = HostRoot::new(&host).unwrap();
        let dir = tmp.path().join("cdi");
        with_uverbs(&host, "0000:18:00.1", 12);
        with_uverbs(&host, "0000:18:00.2", 13);
        // 18:00.3 has no RDMA device (mlx5_ib not loaded): not in the spec.
        std::fs::create_dir_all(host.join("sys/bus/pci/devices/0000:18:00.3")).unwrap();
        std::fs::create_dir_all(host.join("dev/infiniband")).unwrap();
        std::fs::write(host.join("dev/infiniband/rdma_cm"), "").unwrap();
        std::fs::create_dir_all(host.join("sys/class/misc/rdma_cm")).unwrap();
        std::fs::write(host.join("sys/class/misc/rdma_cm/dev"), "10:58\n").unwrap();
        let mut s = CdiSpec::new("nvidia.com/vfs", &dir, root).unwrap();
        assert_eq!(s.path, dir.join("railvf_nvidia.com_vfs.json"));
        let mut vfs = vec![
            entry("0000:18:00.1", false),
            entry("0000:18:00.2", false),
            entry("0000:18:00.3", false),
        ];
        assert!(s.refresh(&set(&vfs)).unwrap());
        let v = read(&s.path);
        assert_eq!(v["cdiVersion"], SPEC_VERSION);
        assert_eq!(v["kind"], "nvidia.com/vfs");
        assert_eq!(
            v["containerEdits"]["deviceNodes"],
            serde_json::json!([{"path": RDMA_CM, "hostPath": RDMA_CM, "type": "c", "major": 10, "minor": 58, "permissions": "rw"}])
        );
        assert_eq!(
            devices(&v),
            BTreeMap::from([
                ("0000:18:00.1".to_string(), node(12)),
                ("0000:18:00.2".to_string(), node(13)),
            ])
        );
        // Nothing changed: nothing written, nor serialized.
        let before = s.serialized;
        assert!(!s.refresh(&set(&vfs)).unwrap());
        assert_eq!(s.serialized, before);

        // A rebind renumbers 18:00.2; 18:00.1's RDMA device moves into a pod.
        with_uverbs(&host, "0000:18:00.2", 14);
        without_uverbs(&host, "0000:18:00.1");
        vfs[0].in_pod = true;
        assert!(s.refresh(&set(&vfs)).unwrap());
        assert_eq!(
            devices(&read(&s.path)),
            BTreeMap::from([
                ("0000:18:00.1".to_string(), node(12)),
                ("0000:18:00.2".to_string(), node(14)),
            ])
        );

        // Back from the pod without an RDMA device (mlx5_ib unloaded): dropped. 18:00.2 leaves
        // the resource.
        vfs[0].in_pod = false;
        vfs.remove(1);
        assert!(s.refresh(&set(&vfs)).unwrap());
        assert!(!s.path.exists(), "a spec without devices is no file");

        // Allocate pins what it hands out even before a refresh saw it.
        with_uverbs(&host, "0000:18:00.3", 3);
        assert!(
            s.pin(&[(
                "0000:18:00.3".parse().unwrap(),
                vec![CharDev::uverbs("uverbs3".into())]
            )])
            .unwrap()
        );
        assert_eq!(
            devices(&read(&s.path)),
            BTreeMap::from([("0000:18:00.3".to_string(), node(3))])
        );
        // Pinned again as it is: not written again; renumbered, or rdma_cm gone: written.
        let pinned = || {
            vec![(
                "0000:18:00.3".parse().unwrap(),
                vec![CharDev::uverbs("uverbs3".into())],
            )]
        };
        let before = s.serialized;
        assert!(!s.pin(&pinned()).unwrap());
        assert_eq!(s.serialized, before, "an unchanged pin serializes nothing");
        std::fs::write(
            host.join("sys/bus/pci/devices/0000:18:00.3/infiniband_verbs/uverbs3/dev"),
            "231:220\n",
        )
        .unwrap();
        assert!(s.pin(&pinned()).unwrap());
        assert_eq!(devices(&read(&s.path))["0000:18:00.3"].2, 220);
        std::fs::remove_file(host.join("dev/infiniband/rdma_cm")).unwrap();
        assert!(s.pin(&pinned()).unwrap());
        assert!(read(&s.path).get("containerEdits").is_none());
        let before = s.serialized;
        assert!(!s.pin(&pinned()).unwrap());
        assert_eq!(s.serialized, before);
        // A file removed behind the plugin's back is written again.
        std::fs::remove_file(&s.path).unwrap();
        assert!(s.refresh(&set(&vfs)).unwrap());
        assert!(s.path.exists());
        s.remove().unwrap();
        assert!(!s.path.exists());
    }

    /// Gives VF `addr` `umad<n>` (231:n) and `issm<n>` (231:64+n), as ib_umad lists them.
    fn with_mad(root: &Path, addr: &str, n: u32) {
        let d = root
            .join("sys/bus/pci/devices")
            .join(addr)
            .join("infiniband_mad");
        for (name, minor) in [(format!("umad{n}"), n), (format!("issm{n}"), 64 + n)] {
            std::fs::create_dir_all(d.join(&name)).unwrap();
            std::fs::write(d.join(&name).join("dev"), format!("231:{minor}\n")).unwrap();
        }
    }

    #[test]
    fn with_mad_devices_each_vf_also_has_its_umad_and_issm_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let root = HostRoot::new(&host).unwrap();
        with_uverbs(&host, "0000:18:00.1", 12);
        with_mad(&host, "0000:18:00.1", 12);
        // A name of another shape is not a node to pass.
        std::fs::create_dir_all(
            host.join("sys/bus/pci/devices/0000:18:00.1/infiniband_mad/umad12.old"),
        )
        .unwrap();
        // 18:00.2 without ib_umad: its uverbs node only (Allocate refuses it).
        with_uverbs(&host, "0000:18:00.2", 13);
        let mut s = CdiSpec::new("nvidia.com/vfs", &tmp.path().join("cdi"), root).unwrap();
        let mut vfs = set(&[entry("0000:18:00.1", false), entry("0000:18:00.2", false)]);
        let nodes_of = |v: &serde_json::Value, i: usize| -> Vec<(String, u64, u64)> {
            v["devices"][i]["containerEdits"]["deviceNodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    (
                        n["path"].as_str().unwrap().to_string(),
                        n["major"].as_u64().unwrap(),
                        n["minor"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        // Off: uverbs only.
        s.refresh(&vfs).unwrap();
        assert_eq!(nodes_of(&read(&s.path), 0), vec![node(12)]);
        // On (a reload): the change of the set rewrites the file.
        vfs.mad_devices = true;
        assert!(s.refresh(&vfs).unwrap());
        let v = read(&s.path);
        assert_eq!(
            nodes_of(&v, 0),
            vec![
                node(12),
                ("/dev/infiniband/issm12".into(), 231, 76),
                ("/dev/infiniband/umad12".into(), 231, 12),
            ]
        );
        assert_eq!(nodes_of(&v, 1), vec![node(13)]);
        // Allocate pins what it hands out, the same nodes read the same way: nothing to write.
        let dir = host.join("sys/bus/pci/devices/0000:18:00.1");
        let mut chars = vec![CharDev::uverbs("uverbs12".into())];
        chars.extend(mad_of(None, &dir));
        assert_eq!(chars.len(), 3, "{chars:?}");
        let before = s.serialized;
        assert!(!s.pin(&[("0000:18:00.1".parse().unwrap(), chars)]).unwrap());
        assert_eq!(s.serialized, before);
    }

    #[test]
    fn after_a_failed_write_the_next_pin_writes_the_file_again() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        with_uverbs(&host, "0000:18:00.1", 12);
        let mut s = CdiSpec::new(
            "nvidia.com/vfs",
            &tmp.path().join("cdi"),
            HostRoot::new(&host).unwrap(),
        )
        .unwrap();
        let vfs = set(&[entry("0000:18:00.1", false)]);
        assert!(s.refresh(&vfs).unwrap());
        let old = std::fs::read(&s.path).unwrap();
        let pinned = [(
            "0000:18:00.1".parse().unwrap(),
            vec![CharDev::uverbs("uverbs12".into())],
        )];
        // Renumbered, and the file cannot be replaced (its name taken by a directory).
        std::fs::write(
            host.join("sys/bus/pci/devices/0000:18:00.1/infiniband_verbs/uverbs12/dev"),
            "231:220\n",
        )
        .unwrap();
        std::fs::remove_file(&s.path).unwrap();
        std::fs::create_dir_all(s.path.join("x")).unwrap();
        assert!(s.pin(&pinned).is_err());
        // The old file back (or still there): the same pin must write the new numbers.
        std::fs::remove_dir_all(&s.path).unwrap();
        std::fs::write(&s.path, &old).unwrap();
        assert!(s.pin(&pinned).unwrap());
        assert_eq!(devices(&read(&s.path))["0000:18:00.1"].2, 220);
    }

    /// After a restart of the plugin, a VF whose RDMA device is in a pod (out of the host's
    /// sight) keeps the nodes the earlier run's file gave it; a VF without an RDMA device
    /// that is not in a pod is dropped; a node this plugin would not write is not taken.
    #[test]
    fn a_vf_in_a_pod_keeps_its_nodes_across_a_restart_of_the_plugin() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let dir = tmp.path().join("cdi");
        with_uverbs(&host, "0000:18:00.1", 12);
        with_uverbs(&host, "0000:18:00.2", 13);
        let new = || CdiSpec::new("nvidia.com/vfs", &dir, HostRoot::new(&host).unwrap()).unwrap();
        let mut s = new();
        assert!(
            s.refresh(&set(&[
                entry("0000:18:00.1", false),
                entry("0000:18:00.2", false)
            ]))
            .unwrap()
        );
        without_uverbs(&host, "0000:18:00.1");
        without_uverbs(&host, "0000:18:00.2");
        let vfs = set(&[entry("0000:18:00.1", true), entry("0000:18:00.2", false)]);
        let mut s = new();
        assert!(s.refresh(&vfs).unwrap());
        assert_eq!(
            devices(&read(&s.path)),
            BTreeMap::from([("0000:18:00.1".to_string(), node(12))])
        );

        let mut v = read(&s.path);
        v["devices"][0]["containerEdits"]["deviceNodes"][0]["path"] = "/etc/shadow".into();
        std::fs::write(&s.path, v.to_string()).unwrap();
        let mut s = new();
        assert!(s.refresh(&vfs).unwrap());
        assert!(!s.path.exists(), "no node of the file was taken");
    }

    #[test]
    fn a_node_without_readable_numbers_is_left_to_the_runtime_to_stat() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("dev"), "garbage\n").unwrap();
        for attr in ["dev", "missing"] {
            let n = Node::read("/dev/infiniband/uverbs1".into(), None, tmp.path(), attr);
            let v = serde_json::to_value(&n).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"path": "/dev/infiniband/uverbs1", "hostPath": "/dev/infiniband/uverbs1", "permissions": "rw"})
            );
        }
    }

    #[test]
    fn only_this_plugins_files_of_unconfigured_kinds_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in [
            "railvf_nvidia.com_x.json",
            "railvf_nvidia.com_old.json",
            "nvidia-gpu.json",
            "railvf_notes.txt",
        ] {
            std::fs::write(d.join(f), "{}").unwrap();
        }
        let removed = remove_others(d, &BTreeSet::from(["nvidia.com/x".to_string()]));
        assert_eq!(removed, vec![d.join("railvf_nvidia.com_old.json")]);
        for f in [
            "railvf_nvidia.com_x.json",
            "nvidia-gpu.json",
            "railvf_notes.txt",
        ] {
            assert!(d.join(f).exists(), "{f}");
        }
    }
}
