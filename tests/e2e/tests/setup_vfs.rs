//! `railvf-device-plugin setup-vfs` against the simulated DGX H200 node.
//!
//! The module is compiled into this test from its source (`#[path]`), so these tests call the
//! exact code the binary runs and read its report, and check every effect independently on
//! the simulated host: the sim's own view of `sriov_numvfs` and the GUID files (its subnet
//! manager reacts to them), the VFs' RDMA `node_guid` and readiness checks read by
//! `railvf-host`, and the writes to `drivers/mlx5_core/{unbind,bind}` recorded through FIFOs.
//! Most tests need no root (`SimOptions::no_links`: fixture only); the in-use test moves a real
//! veth into a namespace and skips loudly without root. `binary_has_setup_vfs` runs the real
//! binary once it is wired into `device-plugin/src/main.rs`.

#[allow(dead_code)]
#[path = "../../../device-plugin/src/setup_vfs.rs"]
mod setup_vfs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use railvf_host::readiness::{self, Check, Expectations, Status};
use railvf_host::{Guid, HostRoot, Inventory, PciAddr};
use railvf_sim::{NicRole, SimNode, SimOptions, require_root};
use setup_vfs::{Options, Report, vf_guids};

const COMPUTE_PFS: [&str; 8] = [
    "0000:18:00.0",
    "0000:40:00.0",
    "0000:4f:00.0",
    "0000:5e:00.0",
    "0000:9a:00.0",
    "0000:c0:00.0",
    "0000:ce:00.0",
    "0000:dc:00.0",
];

fn sim(vfs_per_pf: u16) -> SimNode {
    SimOptions::dgx_h200()
        .no_links()
        .unassigned_guids()
        .vfs_per_pf(vfs_per_pf)
        .lid_delay(Duration::ZERO)
        .build()
        .expect("build the simulated DGX H200")
}

fn options(root: &Path) -> Options {
    Options {
        root: HostRoot::new(root).unwrap(),
        vfs: 8,
        pfs: Vec::new(),
        rail_map: None,
        dry_run: false,
        write_host_config: false,
        timeout: Duration::from_secs(10),
    }
}

/// Runs setup-vfs in-process; returns the report and everything it printed.
fn run(opts: &Options) -> anyhow::Result<(Report, String)> {
    let mut log = Vec::new();
    let report = setup_vfs::run(opts, &mut log)?;
    let mut text = String::from_utf8(log).unwrap();
    text.push_str(&report.render());
    Ok((report, text))
}

fn pf_guid(root: &Path, pf: &str) -> Guid {
    let inv = Inventory::scan(&HostRoot::new(root).unwrap()).unwrap();
    let addr: PciAddr = pf.parse().unwrap();
    *inv.pf(&addr)
        .unwrap()
        .function
        .rdma
        .as_ref()
        .unwrap()
        .node_guid
        .value()
        .unwrap()
}

/// Every entry of a tree: file contents, link targets, directories (symlinks not followed).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else if meta.file_type().is_file() {
                out.insert(
                    rel,
                    std::fs::read_to_string(&p).unwrap_or_else(|_| "<binary>".into()),
                );
            } else {
                out.insert(rel, "special".into());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn diff(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), a.get(k), b.get(k)))
        .collect()
}

/// Replaces a sim file with a FIFO and records every write to it, one line per write.
struct Recorder {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

const STOP: &str = "--stop--";
const MARK: &str = "--mark--";

impl Recorder {
    fn new(path: PathBuf) -> Recorder {
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Opened read-write, the FIFO always has a reader: writers never block, and nothing
        // is lost between two writers' open and close. It never reports EOF: read until STOP.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let thread = std::thread::spawn(move || {
            let mut pending = String::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = f.read(&mut buf).unwrap();
                pending.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let line = line.trim_end().to_string();
                    if line == STOP {
                        return;
                    }
                    l.lock().unwrap().push(line);
                }
            }
        });
        Recorder {
            path,
            lines,
            thread: Some(thread),
        }
    }

    fn send(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
    }

    /// Every line written so far (and forgets them): waits for a marker written after them.
    fn take(&self) -> Vec<String> {
        self.send(MARK);
        for _ in 0..5000 {
            let mut lines = self.lines.lock().unwrap();
            if let Some(i) = lines.iter().position(|l| l == MARK) {
                let mut got: Vec<String> = lines.drain(..=i).collect();
                got.pop();
                return got;
            }
            drop(lines);
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the recorder of {} saw no marker", self.path.display());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.send(STOP);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn recorders(sim: &SimNode) -> (Recorder, Recorder) {
    let drv = sim.root().join("sys/bus/pci/drivers/mlx5_core");
    (
        Recorder::new(drv.join("unbind")),
        Recorder::new(drv.join("bind")),
    )
}

#[test]
fn creates_vfs_on_the_compute_pfs_only_with_the_documented_guids() {
    let sim = sim(0);
    let (unbind, bind) = recorders(&sim);
    let (report, log) = run(&options(sim.root())).unwrap();
    assert_eq!(report.failures, 0, "{log}");
    sim.sync().unwrap();

    for pf in sim.pfs() {
        let want = if pf.role == NicRole::Compute { 8 } else { 0 };
        assert_eq!(pf.vfs.len(), want, "{} ({:?}): {log}", pf.pci, pf.role);
        let numvfs = std::fs::read_to_string(pf.sysfs_dir.join("sriov_numvfs")).unwrap();
        assert_eq!(numvfs.trim(), want.to_string(), "{}", pf.pci);
    }
    let compute: BTreeSet<String> = sim
        .pfs()
        .iter()
        .filter(|p| p.role == NicRole::Compute)
        .map(|p| p.pci.to_string())
        .collect();
    assert_eq!(compute, COMPUTE_PFS.iter().map(|s| s.to_string()).collect());

    // The GUIDs the sim applied (its subnet manager reads the same files) are the documented
    // derivation, non-zero and unique across all 64 VFs.
    let mut seen = BTreeSet::new();
    let vfs = sim.vfs();
    assert_eq!(vfs.len(), 64);
    for v in &vfs {
        let (node, port) =
            vf_guids(pf_guid(sim.root(), &v.pf.to_string()), u32::from(v.index)).unwrap();
        assert_eq!(Guid(v.node_guid), node, "VF {} node GUID", v.pci);
        assert_eq!(Guid(v.port_guid), port, "VF {} port GUID", v.pci);
        for g in [node, port] {
            assert!(g.is_assigned(), "{g}");
            assert!(seen.insert(g), "duplicate GUID {g}");
        }
        assert!(v.lid != 0, "VF {} got no LID from the simulated SM", v.pci);
    }
    assert_eq!(seen.len(), 128);

    // As the CNI and inspect see it: guid, lid and sm pass on every VF.
    let root = HostRoot::new(sim.root()).unwrap();
    let inv = Inventory::scan(&root).unwrap();
    assert_eq!(inv.vfs.len(), 64);
    for vf in &inv.vfs {
        let r = readiness::evaluate(
            &root,
            &vf.function,
            &Expectations::default(),
            &[Check::Guid, Check::Lid, Check::Sm],
        );
        assert!(
            r.outcomes.iter().all(|o| o.status == Status::Pass),
            "{}: {}",
            vf.function.addr,
            r.failure_summary()
        );
    }

    // Every VF was rebound once (unbind, then bind), since every GUID was new.
    let all: Vec<String> = vfs.iter().map(|v| v.pci.to_string()).collect();
    let (u, b) = (unbind.take(), bind.take());
    assert_eq!(sorted(&u), sorted(&all), "unbinds");
    assert_eq!(sorted(&b), sorted(&all), "binds");
    assert!(
        report
            .rows
            .iter()
            .all(|r| r.done == ["created", "guid", "rebound"]),
        "{log}"
    );

    // A second run changes nothing and says so.
    let (again, log2) = run(&options(sim.root())).unwrap();
    assert_eq!((again.changes, again.failures), (0, 0), "{log2}");
    assert!(
        log2.contains("nothing to do: 64 VFs on 8 PFs already set up; no change made"),
        "{log2}"
    );
    assert!(
        again
            .rows
            .iter()
            .all(|r| r.done.is_empty() && r.note.is_none()),
        "{log2}"
    );
    assert!(
        unbind.take().is_empty() && bind.take().is_empty(),
        "the second run rebound VFs"
    );
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[test]
fn rebinds_only_the_vfs_whose_guid_changed() {
    let sim = sim(8);
    let root = sim.root().to_path_buf();
    // Two VFs already carry their derived GUIDs; one carries another, non-zero GUID.
    let keep = [("0000:18:00.0", 0u32), ("0000:9a:00.0", 3)];
    let mut kept = Vec::new();
    for (pf, index) in keep {
        let info = sim.pf(pf).unwrap();
        let vf = info.vfs[index as usize];
        let (n, p) = vf_guids(pf_guid(&root, pf), index).unwrap();
        sim.set_guid(vf, n.0, p.0).unwrap();
        kept.push(vf.to_string());
    }
    let other = sim.pf("0000:18:00.0").unwrap().vfs[1];
    sim.set_guid(other, 0x1122_3344_5566_7788, 0x1122_3344_5566_7789)
        .unwrap();
    sim.sync().unwrap();

    let (unbind, bind) = recorders(&sim);
    let (report, log) = run(&options(&root)).unwrap();
    assert_eq!(report.failures, 0, "{log}");
    let expected: Vec<String> = sim
        .vfs()
        .iter()
        .map(|v| v.pci.to_string())
        .filter(|a| !kept.contains(a))
        .collect();
    let (u, b) = (unbind.take(), bind.take());
    assert_eq!(sorted(&u), sorted(&expected), "unbinds:\n{log}");
    assert_eq!(sorted(&b), sorted(&expected), "binds:\n{log}");
    assert_eq!(u.len(), 62);
    assert!(
        u.contains(&other.to_string()),
        "a wrong non-zero GUID must be replaced"
    );
    for a in &kept {
        let row = report
            .rows
            .iter()
            .find(|r| r.vf.map(|v| v.to_string()).as_deref() == Some(a))
            .unwrap();
        assert!(row.done.is_empty(), "{a}: {:?}", row.done);
    }
    sim.sync().unwrap();
    let v = sim.vf(other).unwrap();
    let (n, p) = vf_guids(pf_guid(&root, "0000:18:00.0"), 1).unwrap();
    assert_eq!((Guid(v.node_guid), Guid(v.port_guid)), (n, p));

    let (again, log2) = run(&options(&root)).unwrap();
    assert_eq!(again.changes, 0, "{log2}");
    assert!(unbind.take().is_empty() && bind.take().is_empty(), "{log2}");
}

#[test]
fn dry_run_changes_nothing() {
    for vfs_per_pf in [0u16, 8] {
        let sim = sim(vfs_per_pf);
        sim.sync().unwrap();
        let before = snapshot(sim.root());
        let mut opts = options(sim.root());
        opts.dry_run = true;
        opts.write_host_config = true;
        let (report, log) = run(&opts).unwrap();
        sim.sync().unwrap();
        let after = snapshot(sim.root());
        let d = diff(&before, &after);
        assert!(
            d.is_empty(),
            "--dry-run changed the tree:\n{}\n{log}",
            d.join("\n")
        );
        assert!(!sim.root().join("etc").exists(), "--dry-run created etc/");
        // It said what it would do, everything of it.
        assert!(report.changes > 0 && report.dry_run, "{log}");
        assert!(
            log.contains("changes would be made on 8 PFs; nothing changed"),
            "{log}"
        );
        assert!(
            log.contains("would write") && log.contains("00-railvf-vfs.network"),
            "{log}"
        );
        for pf in COMPUTE_PFS {
            if vfs_per_pf == 0 {
                assert!(
                    log.contains(&format!(
                        "would write 8 > {}/sys/bus/pci/devices/{pf}/sriov_numvfs",
                        sim.root().display()
                    )),
                    "{pf}: {log}"
                );
            }
        }
        if vfs_per_pf == 8 {
            // Existing VFs with zero GUIDs: the GUID writes and the rebinds are listed.
            let vf = sim.pf("0000:18:00.0").unwrap().vfs[0];
            assert!(log.contains(&format!("would write {vf} > ")), "{log}");
            assert!(log.contains("would write 02:a0:88:c2:"), "{log}");
        }
        assert_eq!(report.rows.len(), 64, "{log}");
    }
}

#[test]
fn write_host_config_lists_every_vf() {
    let sim = sim(0);
    let mut opts = options(sim.root());
    opts.write_host_config = true;
    let (_, log) = run(&opts).unwrap();
    let root = sim.root();
    let networkd = std::fs::read_to_string(root.join(setup_vfs::NETWORKD_FILE)).unwrap();
    let nm = std::fs::read_to_string(root.join(setup_vfs::NM_FILE)).unwrap();
    let udev = std::fs::read_to_string(root.join(setup_vfs::UDEV_FILE)).unwrap();
    let paths: Vec<&str> = networkd
        .lines()
        .find_map(|l| l.strip_prefix("Path="))
        .expect("a Path= line")
        .split_whitespace()
        .collect();
    let vfs = sim.vfs();
    assert_eq!(vfs.len(), 64);
    let want: BTreeSet<String> = vfs.iter().map(|v| format!("pci-{}", v.pci)).collect();
    assert_eq!(
        paths.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        want,
        "{networkd}"
    );
    assert!(networkd.contains("[Link]\nUnmanaged=yes\n"), "{networkd}");
    let specs: BTreeSet<&str> = nm
        .lines()
        .find_map(|l| l.strip_prefix("unmanaged-devices+="))
        .expect("an unmanaged-devices+= line")
        .split(';')
        .collect();
    for v in &vfs {
        let name = v
            .host_netdev
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_else(|| v.netdev.clone());
        assert!(
            specs.contains(format!("interface-name:{name}").as_str()),
            "{name} missing: {nm}"
        );
    }
    assert_eq!(specs.len(), 64, "{nm}");
    assert_eq!(udev, setup_vfs::UDEV_RULE);
    assert!(log.contains("written"), "{log}");

    // Unchanged files are not rewritten.
    let (again, log2) = run(&opts).unwrap();
    assert_eq!(again.changes, 0, "{log2}");
    assert!(
        again.files.iter().all(|f| f.status == "unchanged"),
        "{log2}"
    );
}

#[test]
fn deploy_udev_rule_is_what_setup_vfs_writes() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/host/90-railvf-vfs.rules");
    assert_eq!(std::fs::read_to_string(file).unwrap(), setup_vfs::UDEV_RULE);
}

#[test]
fn more_vfs_than_totalvfs_is_refused_before_any_change() {
    let sim = sim(0);
    sim.sync().unwrap();
    let before = snapshot(sim.root());
    let mut opts = options(sim.root());
    opts.vfs = 17;
    let e = run(&opts).expect_err("17 VFs on a PF with sriov_totalvfs 16 must be refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("PF 0000:18:00.0 (ibp24s0) supports at most 16 VFs (sriov_totalvfs) and --vfs asks for 17")
            && msg.contains("NUM_OF_VFS"),
        "{msg}"
    );
    sim.sync().unwrap();
    assert!(diff(&before, &snapshot(sim.root())).is_empty());
}

#[test]
fn another_count_goes_through_zero() {
    let sim = sim(4);
    let (report, log) = run(&options(sim.root())).unwrap();
    assert_eq!(report.failures, 0, "{log}");
    for pf in COMPUTE_PFS {
        let path = format!(
            "{}/sys/bus/pci/devices/{pf}/sriov_numvfs",
            sim.root().display()
        );
        let zero = log
            .find(&format!("write 0 > {path}"))
            .unwrap_or_else(|| panic!("{pf}: no 0 first: {log}"));
        let eight = log
            .find(&format!("write 8 > {path}"))
            .unwrap_or_else(|| panic!("{pf}: {log}"));
        assert!(zero < eight, "{log}");
        assert_eq!(sim.pf(pf).unwrap().vfs.len(), 8);
    }
}

#[test]
fn pf_option_limits_the_pfs_and_checks_them() {
    let sim = sim(0);
    let mut opts = options(sim.root());
    opts.pfs = vec!["0000:9a:00.0".parse().unwrap()];
    let (report, log) = run(&opts).unwrap();
    assert_eq!((report.pfs, report.rows.len()), (1, 8), "{log}");
    sim.sync().unwrap();
    for pf in sim.pfs() {
        let want = if pf.pci.to_string() == "0000:9a:00.0" {
            8
        } else {
            0
        };
        assert_eq!(pf.vfs.len(), want, "{}", pf.pci);
    }
    let vf = sim.pf("0000:9a:00.0").unwrap().vfs[0];
    opts.pfs = vec![vf.to_string().parse().unwrap()];
    let e = format!("{:#}", run(&opts).unwrap_err());
    assert!(e.contains("is a VF, not a PF"), "{e}");
    opts.pfs = vec!["0000:77:00.0".parse().unwrap()];
    let e = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        e.contains("0000:77:00.0 is not a network PF on this host"),
        "{e}"
    );
}

#[test]
fn vfs_in_use_by_a_pod_are_left_alone() {
    if !require_root() {
        return;
    }
    let sim = SimOptions::dgx_h200()
        .unassigned_guids()
        .lid_delay(Duration::ZERO)
        .build()
        .expect("build the simulated DGX H200 with real VF links");
    let vf = sim.vf("0000:18:00.1").unwrap();
    let pod = railvf_sim::TestNetns::new().unwrap();
    railvf_sim::ip(&["link", "set", &vf.netdev, "netns", pod.name()]).unwrap();
    sim.wait_netdev(vf.pci, None, Duration::from_secs(5))
        .unwrap();

    let (unbind, bind) = recorders(&sim);
    let (report, log) = run(&options(sim.root())).unwrap();
    assert_eq!(report.failures, 0, "{log}");
    let row = report
        .rows
        .iter()
        .find(|r| r.vf.map(|a| a.to_string()).as_deref() == Some("0000:18:00.1"))
        .unwrap();
    assert!(
        row.done.is_empty()
            && row
                .note
                .as_deref()
                .is_some_and(|n| n.contains("in use by a pod")),
        "{row:?}"
    );
    let (u, b) = (unbind.take(), bind.take());
    assert!(!u.contains(&"0000:18:00.1".to_string()) && !b.contains(&"0000:18:00.1".to_string()));
    assert_eq!((u.len(), b.len()), (63, 63), "{log}");
    sim.sync().unwrap();
    assert_eq!(
        sim.vf("0000:18:00.1").unwrap().node_guid,
        0,
        "the in-use VF's GUID was changed"
    );

    // A new count on that PF would destroy the VF: refused, nothing changed.
    let mut opts = options(sim.root());
    opts.vfs = 4;
    let e = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        e.contains("would destroy VFs in use by pods (0000:18:00.1)"),
        "{e}"
    );
    assert_eq!(sim.pf("0000:18:00.0").unwrap().vfs.len(), 8);
}

/// The shipped binary has the subcommand: `railvf-device-plugin setup-vfs`.
#[test]
fn binary_has_setup_vfs() {
    let bin = railvf_e2e::bin_path("railvf-device-plugin");
    let help = std::process::Command::new(&bin)
        .args(["setup-vfs", "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "`railvf-device-plugin setup-vfs --help` failed: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    let sim = sim(0);
    let out = std::process::Command::new(&bin)
        .args(["setup-vfs", "--dry-run", "--host-root"])
        .arg(sim.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dry run:") && stdout.contains("nothing changed"),
        "{stdout}"
    );
    let out = std::process::Command::new(&bin)
        .args(["setup-vfs", "--vfs", "17", "--host-root"])
        .arg(sim.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("supports at most 16 VFs"));
}
