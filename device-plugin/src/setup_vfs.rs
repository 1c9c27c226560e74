//! `railvf-device-plugin setup-vfs`: host preparation, run once per boot before kubelet
//! (`deploy/host/railvf-setup-vfs.service`).
//!
//! For every compute PF (a PF with a GPU rail; or each `--pf`):
//!
//! 1. `sriov_numvfs` = N, writing 0 first when another non-zero count is set (the kernel
//!    refuses to change a non-zero count), refusing N > `sriov_totalvfs`; then waits, bounded,
//!    for the kernel's `virtfnN` links.
//! 2. Gives every VF the node and port GUID of [`vf_guids`] — derived from the PF's node GUID
//!    and the VF index, so they are the same on every boot — through MLNX_OFED's
//!    `<pf>/sriov/<n>/{node,port}` files when they exist, otherwise with
//!    `ip link set dev <pf netdev> vf <n> node_guid … port_guid … state auto`; sets MLNX_OFED's
//!    `<pf>/sriov/<n>/policy` to `Follow` (the VF port follows the PF's); then rebinds the VF to
//!    mlx5_core (`unbind`, `bind`), only when its GUIDs changed.
//! 3. With `--write-host-config`, writes the host network-manager exclusions (systemd-networkd,
//!    NetworkManager, udev) so that no host manager claims a VF.
//!
//! Every change is checked before it is made: a second run changes nothing and says so.
//! `--dry-run` prints every action and changes nothing. Nothing is ever taken from outside the
//! host root and the validated command line: paths are built from [`PciAddr`]s and railvf's own
//! constants, `ip` is run from a fixed path with arguments read from sysfs, never through a shell.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use railvf_host::host::{self, HostRoot};
use railvf_host::inventory::{self, DRIVER_MLX5, PciFunction, VENDOR_MELLANOX};
use railvf_host::topology::RailMap;
use railvf_host::{Guid, Inventory, PciAddr, Topology};

/// systemd-networkd exclusion, relative to the host root.
pub const NETWORKD_FILE: &str = "etc/systemd/network/00-railvf-vfs.network";
/// NetworkManager exclusion, relative to the host root.
pub const NM_FILE: &str = "etc/NetworkManager/conf.d/90-railvf-vfs.conf";
/// udev rule (the same text as `deploy/host/90-railvf-vfs.rules`), relative to the host root.
pub const UDEV_FILE: &str = "etc/udev/rules.d/90-railvf-vfs.rules";

/// The udev rule: every VF netdev of a mlx5_core function, whatever its name, is left to
/// Kubernetes. Byte-identical to `deploy/host/90-railvf-vfs.rules` (a test compares them).
pub const UDEV_RULE: &str = r#"# railvf: SR-IOV VFs of mlx5 NICs belong to Kubernetes (Multus and the railvf CNI plugin),
# not to a host network manager. Installed by `railvf-device-plugin setup-vfs
# --write-host-config` as /etc/udev/rules.d/90-railvf-vfs.rules (or copy this file there).
#
# Matches the netdev of every VF of a mlx5_core function through its physfn link, so it holds
# whatever the VF netdev is called, renames included, and needs no list of VFs.
#   NM_UNMANAGED=1          NetworkManager leaves the device unmanaged.
#   ID_NET_MANAGED_BY=...   systemd-networkd manages a link whose ID_NET_MANAGED_BY is set only
#                           when it is "io.systemd.Network"; newer NetworkManager releases also
#                           leave it alone when it names another manager.
# Apply without a reboot: udevadm control --reload && udevadm trigger --subsystem-match=net --action=change
ACTION!="remove", SUBSYSTEM=="net", DRIVERS=="mlx5_core", TEST=="device/physfn", ENV{NM_UNMANAGED}="1", ENV{ID_NET_MANAGED_BY}="io.railvf"
"#;

/// Where iproute2's `ip` is looked for: fixed paths only, never one from input or `PATH`.
const IP_PATHS: [&str; 2] = ["/usr/sbin/ip", "/sbin/ip"];
/// How often waits poll sysfs (sysfs attributes raise no inotify events).
const POLL: Duration = Duration::from_millis(20);
/// How long `sriov_numvfs` may read another count than the one written before it is written
/// again (the kernel applies the write before returning; this only ever matters elsewhere).
const REWRITE_AFTER: Duration = Duration::from_millis(200);
/// Byte 0 of a derived node GUID: locally administered (EUI-64 U/L bit set), unicast.
pub const GUID_NODE: u8 = 0x02;
/// Byte 0 of a derived port GUID: locally administered, unicast, not the node's.
pub const GUID_PORT: u8 = 0x06;
/// The MLNX_OFED VF policy that makes the VF port follow the PF port's state.
const POLICY_FOLLOW: &str = "Follow";

/// `railvf-device-plugin setup-vfs`: create the VFs of the compute PFs, give them stable
/// GUIDs and keep host network managers off them.
#[derive(clap::Args, Debug, Clone)]
pub struct SetupVfsArgs {
    /// Directory holding the host's /sys and /etc.
    #[arg(long, env = "RAILVF_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// VFs per PF (written to sriov_numvfs).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub vfs: u32,
    /// Only these PFs (PCI addresses, e.g. 0000:18:00.0); default: every compute PF, i.e.
    /// every PF that shares a PCIe switch with a GPU (a rail).
    #[arg(long = "pf", value_name = "PCI", num_args = 1..)]
    pub pfs: Vec<PciAddr>,
    /// JSON rail map (PF PCI address → rail) for hosts where sysfs cannot show rails.
    #[arg(long, value_name = "FILE")]
    pub rail_map: Option<PathBuf>,
    /// Print every action, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the host network-manager exclusions (systemd-networkd, NetworkManager, udev)
    /// under the host root.
    #[arg(long)]
    pub write_host_config: bool,
    /// Upper bound, in seconds, of each wait for the kernel (VF creation, driver bind).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Runs the subcommand: prints the actions, then the summary table. Exit code 1 when a PF or
/// VF could not be set up (the others are still done), 0 otherwise.
pub fn exec(args: SetupVfsArgs) -> anyhow::Result<ExitCode> {
    let opts = Options::from_args(&args)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let report = run(&opts, &mut out)?;
    out.write_all(report.render().as_bytes())?;
    out.flush()?;
    Ok(if report.failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The validated command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub root: HostRoot,
    pub vfs: u32,
    pub pfs: Vec<PciAddr>,
    pub rail_map: Option<RailMap>,
    pub dry_run: bool,
    pub write_host_config: bool,
    pub timeout: Duration,
}

impl Options {
    pub fn from_args(args: &SetupVfsArgs) -> anyhow::Result<Self> {
        let rail_map = args.rail_map.as_deref().map(RailMap::load).transpose()?;
        Ok(Self {
            root: HostRoot::new(&args.host_root)?,
            vfs: args.vfs,
            pfs: args.pfs.clone(),
            rail_map,
            dry_run: args.dry_run,
            write_host_config: args.write_host_config,
            timeout: Duration::from_secs(args.timeout),
        })
    }
}

/// The node and port GUID of VF `index` of the PF whose node GUID is `pf`:
///
/// ```text
/// byte   0            1 2 3            4 5 6                 7
///        0x02 node    the PF GUID's    the PF GUID's last    VF index
///        0x06 port    OUI (bytes 0-2)  3 bytes (its serial)
/// ```
///
/// ConnectX node GUIDs have the form OUI, `03:00`, 24-bit serial: bytes 3 and 4 say nothing
/// about the adapter, what is left names it. Byte 0 marks a locally administered
/// EUI-64, which no vendor-assigned GUID is, so a derived GUID never equals a hardware one; it
/// also makes every derived GUID non-zero and not all-ones. Two VFs get the same GUID only if
/// their PFs' GUIDs share OUI and serial (refused by `setup-vfs` on one node; in that form,
/// the same GUID) — or the VF index is above 255 (`None`).
pub fn vf_guids(pf: Guid, index: u32) -> Option<(Guid, Guid)> {
    let index = u8::try_from(index).ok()?;
    let id = pf_identity(pf);
    let make = |first: u8| Guid((u64::from(first) << 56) | (id << 8) | u64::from(index));
    Some((make(GUID_NODE), make(GUID_PORT)))
}

/// The 48 bits of a PF node GUID that [`vf_guids`] keeps: OUI and serial, without bytes 3
/// and 4.
fn pf_identity(pf: Guid) -> u64 {
    (pf.0 >> 40) << 24 | (pf.0 & 0xff_ffff)
}

/// How a VF's GUIDs are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// MLNX_OFED's `<pf>/sriov/<n>/{node,port}`.
    Sysfs,
    /// `ip link set dev <pf netdev> vf <n> node_guid … port_guid …` (netlink, inbox driver).
    IpLink,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Sysfs => "sysfs",
            Via::IpLink => "ip-link",
        }
    }
}

/// One VF of the summary.
#[derive(Clone, Debug)]
pub struct VfRow {
    pub pf: PciAddr,
    pub pf_netdev: Option<String>,
    pub rail: Option<u32>,
    pub index: u32,
    /// `None` in a dry run when the VF does not exist yet and its address cannot be computed.
    pub vf: Option<PciAddr>,
    pub netdev: Option<String>,
    pub node_guid: Option<Guid>,
    pub port_guid: Option<Guid>,
    pub via: Option<Via>,
    /// What was done (or would be, in a dry run): `created`, `guid`, `policy`, `rebound`, …
    pub done: Vec<String>,
    /// Why the VF was left alone or failed.
    pub note: Option<String>,
    pub failed: bool,
}

/// A host configuration file and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOutcome {
    pub path: PathBuf,
    /// `written`, `unchanged`, `removed`, `absent`, or `would …` in a dry run.
    pub status: String,
}

/// Everything `setup-vfs` did (or would do).
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub dry_run: bool,
    pub pfs: usize,
    pub rows: Vec<VfRow>,
    /// PF-level failures (VF creation), with the PF.
    pub pf_failures: Vec<(PciAddr, String)>,
    /// Changes made (or that would be made): sriov_numvfs writes, GUID sets, policy writes,
    /// rebinds, configuration files written or removed.
    pub changes: usize,
    pub failures: usize,
    pub files: Vec<FileOutcome>,
}

impl Report {
    /// The summary table and the closing line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<13} {:<10} {:<4} {:<3} {:<13} {:<12} {:<20} {:<20} {:<7} RESULT",
            "PF", "PF_NETDEV", "RAIL", "VF", "VF_PCI", "VF_NETDEV", "NODE_GUID", "PORT_GUID", "VIA"
        );
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        for r in &self.rows {
            let mut result = if r.done.is_empty() {
                if r.note.is_some() {
                    String::new()
                } else {
                    "unchanged".to_string()
                }
            } else if self.dry_run {
                format!("would: {}", r.done.join(", "))
            } else {
                r.done.join(", ")
            };
            if let Some(n) = &r.note {
                if !result.is_empty() {
                    result.push_str("; ");
                }
                if r.failed {
                    result.push_str("FAILED: ");
                }
                result.push_str(n);
            }
            let _ = writeln!(
                out,
                "{:<13} {:<10} {:<4} {:<3} {:<13} {:<12} {:<20} {:<20} {:<7} {}",
                r.pf.to_string(),
                opt(r.pf_netdev.clone()),
                opt(r.rail.map(|x| x.to_string())),
                r.index,
                opt(r.vf.map(|a| a.to_string())),
                opt(r.netdev.clone()),
                opt(r.node_guid.map(|g| g.to_string())),
                opt(r.port_guid.map(|g| g.to_string())),
                opt(r.via.map(|v| v.name().to_string())),
                result
            );
        }
        for (pf, why) in &self.pf_failures {
            let _ = writeln!(out, "{pf} FAILED: {why}");
        }
        for f in &self.files {
            let _ = writeln!(out, "{}: {}", f.path.display(), f.status);
        }
        let vfs = self.rows.len();
        if self.dry_run {
            if self.changes == 0 {
                let _ = writeln!(
                    out,
                    "dry run: nothing to do: {vfs} VFs on {} PFs already set up; nothing changed",
                    self.pfs
                );
            } else {
                let _ = writeln!(
                    out,
                    "dry run: {} changes would be made on {} PFs; nothing changed",
                    self.changes, self.pfs
                );
            }
        } else if self.changes == 0 && self.failures == 0 {
            let _ = writeln!(
                out,
                "nothing to do: {vfs} VFs on {} PFs already set up; no change made",
                self.pfs
            );
        } else {
            let _ = writeln!(
                out,
                "{} changes made on {} PFs, {vfs} VFs, {} failures",
                self.changes, self.pfs, self.failures
            );
        }
        out
    }
}

/// What is known about one target PF before anything changes.
#[derive(Clone, Debug)]
struct PfPlan {
    addr: PciAddr,
    netdev: Option<String>,
    rail: Option<u32>,
    /// The PF's node GUID (the derivation's input); `None` only when `--vfs 0`.
    guid: Option<Guid>,
    current: u32,
}

/// Sets the host up (or, with `dry_run`, says what it would do). `log` gets one line per
/// action; the returned [`Report`] holds the summary. Fails before any change when a target
/// PF cannot be set up as asked (missing, not SR-IOV capable, N > `sriov_totalvfs`, no node
/// GUID, VFs in use that a new count would destroy).
pub fn run(opts: &Options, log: &mut dyn Write) -> anyhow::Result<Report> {
    let inv = Inventory::scan(&opts.root)?;
    let topo = Topology::detect(&inv, opts.rail_map.as_ref());
    let plans = plan(opts, &inv, &topo)?;
    let mut report = Report {
        dry_run: opts.dry_run,
        pfs: plans.len(),
        ..Report::default()
    };
    for p in &plans {
        if let Err(e) = apply_pf(opts, &inv, p, &mut report, log) {
            writeln!(log, "{}: FAILED: {e:#}", p.addr)?;
            report.pf_failures.push((p.addr, format!("{e:#}")));
            report.failures += 1;
        }
    }
    if opts.write_host_config {
        write_host_config(opts, &inv, &mut report, log)?;
    }
    Ok(report)
}

/// Validates every target PF; nothing is changed.
fn plan(opts: &Options, inv: &Inventory, topo: &Topology) -> anyhow::Result<Vec<PfPlan>> {
    let targets: Vec<PciAddr> = if opts.pfs.is_empty() {
        inv.pfs
            .iter()
            .map(|p| p.function.addr)
            .filter(|a| topo.is_compute_pf(a))
            .collect()
    } else {
        let set: BTreeSet<PciAddr> = opts.pfs.iter().copied().collect();
        set.into_iter().collect()
    };
    if targets.is_empty() {
        bail!(
            "no compute PF under {}: no PF shares a PCIe switch with a GPU. Name the PFs with --pf or give a --rail-map",
            opts.root.join("sys/bus/pci/devices").display()
        );
    }
    if opts.vfs > 256 {
        bail!(
            "--vfs {}: at most 256 VFs per PF (the VF index is one byte of the derived GUIDs)",
            opts.vfs
        );
    }
    let mut plans = Vec::new();
    for addr in targets {
        let Some(pf) = inv.pf(&addr) else {
            if inv.vf(&addr).is_some() {
                bail!("{addr} is a VF, not a PF: --pf takes PF addresses");
            }
            bail!(
                "{addr} is not a network PF on this host ({} is missing or not a network function)",
                opts.root.pci_device(&addr).display()
            );
        };
        let f = &pf.function;
        let name = describe_pf(f);
        if f.vendor != VENDOR_MELLANOX {
            bail!(
                "{name} is not an NVIDIA/Mellanox function (vendor {:04x})",
                f.vendor
            );
        }
        if f.driver.as_deref() != Some(DRIVER_MLX5) {
            bail!(
                "{name} is not bound to mlx5_core (driver: {}); load mlx5_core and check dmesg",
                f.driver.as_deref().unwrap_or("none")
            );
        }
        let Some(total) = pf.sriov_totalvfs else {
            bail!(
                "{name} has no sriov_totalvfs: SR-IOV is off in its firmware. Run `mlxconfig -d {addr} set SRIOV_EN=1 NUM_OF_VFS={}` and power-cycle the node",
                opts.vfs.max(1)
            );
        };
        if opts.vfs > total {
            bail!(
                "{name} supports at most {total} VFs (sriov_totalvfs) and --vfs asks for {}: lower --vfs, or raise NUM_OF_VFS with `mlxconfig -d {addr} set NUM_OF_VFS={}` and power-cycle the node",
                opts.vfs,
                opts.vfs
            );
        }
        let Some(current) = pf.sriov_numvfs else {
            bail!(
                "{name}: {} is missing or unreadable",
                opts.root.pci_device(&addr).join("sriov_numvfs").display()
            );
        };
        let guid = match f.rdma.as_ref().and_then(|r| r.node_guid.value().copied()) {
            Some(g) if g.is_assigned() => Some(g),
            _ if opts.vfs == 0 => None,
            found => bail!(
                "{name}: cannot derive VF GUIDs: the PF has no usable node GUID ({}); load mlx5_ib (modprobe mlx5_ib) and check dmesg",
                match (&f.rdma, found) {
                    (None, _) => "no RDMA device".to_string(),
                    (Some(r), _) => format!("{} node_guid {}", r.name, r.node_guid.describe()),
                }
            ),
        };
        if current != opts.vfs {
            let pf_netdev = !f.netdevs.is_empty();
            let busy: Vec<String> = inv
                .vfs_of(&addr)
                .filter(|v| in_use(pf_netdev, &v.function))
                .map(|v| v.function.addr.to_string())
                .collect();
            if !busy.is_empty() {
                bail!(
                    "{name}: changing sriov_numvfs from {current} to {} would destroy VFs in use by pods ({}); drain the node (kubectl drain) first",
                    opts.vfs,
                    busy.join(", ")
                );
            }
        }
        plans.push(PfPlan {
            addr,
            netdev: f.netdev().map(|n| n.name.clone()),
            rail: topo.pf_rail(&addr).map(|r| r.index),
            guid,
            current,
        });
    }
    let mut seen: BTreeMap<u64, PciAddr> = BTreeMap::new();
    for p in &plans {
        if let Some(g) = p.guid
            && let Some(other) = seen.insert(pf_identity(g), p.addr)
        {
            bail!(
                "{other} and {} have node GUIDs with the same OUI and last 3 bytes ({g} and another): their derived VF GUIDs would collide; set these VFs' GUIDs by hand",
                p.addr
            );
        }
    }
    Ok(plans)
}

fn describe_pf(f: &PciFunction) -> String {
    match f.netdev() {
        Some(n) => format!("PF {} ({})", f.addr, n.name),
        None => format!("PF {}", f.addr),
    }
}

/// A VF that is bound to mlx5_core but whose netdev is not in the host namespace while its
/// PF's is: the netdev lives in a pod's namespace. Never touched.
fn in_use(pf_has_netdev: bool, f: &PciFunction) -> bool {
    pf_has_netdev && f.driver.as_deref() == Some(DRIVER_MLX5) && f.netdevs.is_empty()
}

/// Prints an action and, unless in a dry run, writes `value` + newline (as `echo` does) to an
/// existing sysfs attribute. Never creates a file.
fn write_attr(opts: &Options, log: &mut dyn Write, path: &Path, value: &str) -> anyhow::Result<()> {
    if opts.dry_run {
        writeln!(log, "  would write {value} > {}", path.display())?;
        return Ok(());
    }
    writeln!(log, "  write {value} > {}", path.display())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    f.write_all(format!("{value}\n").as_bytes())
        .with_context(|| format!("writing {value:?} to {}", path.display()))?;
    Ok(())
}

/// `virtfnN` links of a PF, by N.
fn virtfns(pf_dir: &Path) -> anyhow::Result<BTreeMap<u32, Option<PciAddr>>> {
    let mut out = BTreeMap::new();
    for name in host::list_dir(pf_dir)? {
        if let Some(n) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
        {
            let addr = host::link_basename(&pf_dir.join(&name))?.and_then(|t| t.parse().ok());
            out.insert(n, addr);
        }
    }
    Ok(out)
}

/// Writes `n` to the PF's `sriov_numvfs` and waits until the PF has exactly the links
/// `virtfn0` … `virtfn{n-1}` and each VF's device directory (with its `physfn` link) is there.
/// The attribute must then read `n`: when it reads another count while the VFs are still
/// missing, the value did not hold and is written again (twice at most).
fn set_num_vfs(
    opts: &Options,
    log: &mut dyn Write,
    pf_dir: &Path,
    n: u32,
) -> anyhow::Result<BTreeMap<u32, PciAddr>> {
    let path = pf_dir.join("sriov_numvfs");
    write_attr(opts, log, &path, &n.to_string())?;
    let start = Instant::now();
    let mut last_write = start;
    let mut rewrites = 0;
    loop {
        let links = virtfns(pf_dir)?;
        let complete = links.len() == n as usize
            && (0..n).all(|i| match links.get(&i) {
                Some(Some(vf)) => {
                    std::fs::symlink_metadata(opts.root.pci_device(vf).join("physfn")).is_ok()
                }
                _ => false,
            });
        if complete {
            return Ok(links
                .into_iter()
                .filter_map(|(i, a)| a.map(|a| (i, a)))
                .collect());
        }
        let now = host::parse_optional_attr(&path, railvf_host::attr::parse_u32)
            .ok()
            .flatten();
        if now != Some(n) && rewrites < 2 && last_write.elapsed() >= REWRITE_AFTER {
            writeln!(
                log,
                "  sriov_numvfs reads {}, not {n}: writing it again",
                now.map_or_else(|| "nothing".to_string(), |v| v.to_string())
            )?;
            write_attr(opts, log, &path, &n.to_string())?;
            last_write = Instant::now();
            rewrites += 1;
        }
        if start.elapsed() >= opts.timeout {
            bail!(
                "the kernel shows {} virtfn links under {} after {:?}, expected {n}: check dmesg for mlx5_core errors",
                links.len(),
                pf_dir.display(),
                opts.timeout
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `<vf>/driver` names mlx5_core.
fn wait_bound(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if host::link_basename(&dir.join("driver"))?.as_deref() == Some(DRIVER_MLX5) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!(
                "{} is not bound to mlx5_core {:?} after the bind: check dmesg",
                dir.display(),
                timeout
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The VF addresses SR-IOV will give the PF's first `n` VFs (`PF + offset + i * stride`), for
/// a dry run; `None` where the PF does not say.
fn planned_vfs(pf_dir: &Path, pf: &PciAddr, n: u32) -> BTreeMap<u32, Option<PciAddr>> {
    let read = |name: &str| {
        host::parse_optional_attr(&pf_dir.join(name), railvf_host::attr::parse_u32)
            .ok()
            .flatten()
    };
    let (offset, stride) = (read("sriov_offset"), read("sriov_stride"));
    (0..n)
        .map(|i| {
            let addr = match (offset, stride) {
                (Some(o), Some(s)) => pf.offset_by(o + i * s),
                _ => None,
            };
            (i, addr)
        })
        .collect()
}

fn apply_pf(
    opts: &Options,
    inv: &Inventory,
    p: &PfPlan,
    report: &mut Report,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    let pf_dir = opts.root.pci_device(&p.addr);
    let numvfs = pf_dir.join("sriov_numvfs");
    writeln!(
        log,
        "{} ({}, rail {}): sriov_numvfs {}, want {}",
        p.addr,
        p.netdev.as_deref().unwrap_or("no netdev"),
        p.rail.map_or_else(|| "-".to_string(), |r| r.to_string()),
        p.current,
        opts.vfs
    )?;
    let created = p.current != opts.vfs;
    let mut vfs: BTreeMap<u32, Option<PciAddr>> = BTreeMap::new();
    if created {
        if p.current != 0 && opts.vfs != 0 {
            writeln!(
                log,
                "  the kernel refuses to change a non-zero VF count: removing the {} VFs first",
                p.current
            )?;
            report.changes += 1;
            if opts.dry_run {
                write_attr(opts, log, &numvfs, "0")?;
            } else {
                set_num_vfs(opts, log, &pf_dir, 0)?;
            }
        }
        report.changes += 1;
        if opts.dry_run {
            write_attr(opts, log, &numvfs, &opts.vfs.to_string())?;
            vfs = planned_vfs(&pf_dir, &p.addr, opts.vfs);
        } else {
            vfs = set_num_vfs(opts, log, &pf_dir, opts.vfs)?
                .into_iter()
                .map(|(i, a)| (i, Some(a)))
                .collect();
        }
    } else {
        vfs.extend(virtfns(&pf_dir)?);
    }
    let Some(pf_guid) = p.guid else {
        return Ok(());
    };
    let pf_has_netdev = p.netdev.is_some();
    for (&index, &addr) in vfs.iter().filter(|(i, _)| **i < opts.vfs) {
        let (node, port) =
            vf_guids(pf_guid, index).ok_or_else(|| anyhow!("VF index {index} above 255"))?;
        let mut row = VfRow {
            pf: p.addr,
            pf_netdev: p.netdev.clone(),
            rail: p.rail,
            index,
            vf: addr,
            netdev: None,
            node_guid: Some(node),
            port_guid: Some(port),
            via: None,
            done: Vec::new(),
            note: None,
            failed: false,
        };
        if created {
            row.done.push("created".into());
        }
        if created && opts.dry_run {
            // Nothing to read yet: the VF would be new, so its GUIDs would be set and it rebound.
            row.done.extend(["guid".into(), "rebound".into()]);
            report.changes += 2;
            writeln!(
                log,
                "  VF {index}: would set node GUID {} and port GUID {}, then rebind",
                node.to_colon_bytes(),
                port.to_colon_bytes()
            )?;
        } else if let Some(vf) = addr {
            let fresh = created;
            if let Err(e) = apply_vf(
                opts,
                inv,
                &pf_dir,
                p,
                index,
                vf,
                fresh,
                pf_has_netdev,
                &mut row,
                report,
                log,
            ) {
                writeln!(log, "  VF {index} ({vf}): FAILED: {e:#}")?;
                row.note = Some(format!("{e:#}"));
                row.failed = true;
                report.failures += 1;
            }
        } else {
            row.note = Some(format!("virtfn{index} does not point at a PCI address"));
            row.failed = true;
            report.failures += 1;
        }
        report.rows.push(row);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply_vf(
    opts: &Options,
    inv: &Inventory,
    pf_dir: &Path,
    p: &PfPlan,
    index: u32,
    vf: PciAddr,
    fresh: bool,
    pf_has_netdev: bool,
    row: &mut VfRow,
    report: &mut Report,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    let (Some(node), Some(port)) = (row.node_guid, row.port_guid) else {
        return Ok(());
    };
    // Freshly created VFs are read now; others were read by the scan.
    let f = match (fresh, inv.vf(&vf)) {
        (false, Some(v)) => v.function.clone(),
        _ => inventory::read_function(&opts.root, vf)?,
    };
    row.netdev = f.netdev().map(|n| n.name.clone());
    if let Some(d) = f.driver.as_deref()
        && d != DRIVER_MLX5
    {
        row.note = Some(format!("bound to {d}, not mlx5_core: left alone"));
        writeln!(log, "  VF {index} ({vf}): bound to {d}: left alone")?;
        return Ok(());
    }
    if !fresh && in_use(pf_has_netdev, &f) {
        row.note = Some("in use by a pod (netdev not in the host namespace): left alone".into());
        writeln!(log, "  VF {index} ({vf}): in use by a pod: left alone")?;
        return Ok(());
    }
    let sriov = pf_dir.join("sriov").join(index.to_string());
    let via = if sriov.join("node").exists() {
        Via::Sysfs
    } else {
        Via::IpLink
    };
    row.via = Some(via);
    let current = match via {
        Via::Sysfs => (
            read_guid(&sriov.join("node")),
            read_guid(&sriov.join("port")),
        ),
        Via::IpLink => {
            let rdma = f.rdma.as_ref();
            (
                rdma.and_then(|r| r.node_guid.value().copied()),
                f.port1()
                    .and_then(|p| p.gid0.value())
                    .map(|g| g.interface_id()),
            )
        }
    };
    let changed = current != (Some(node), Some(port));
    if changed {
        writeln!(
            log,
            "  VF {index} ({vf}): GUIDs node {} port {} -> node {} port {}",
            current
                .0
                .map_or_else(|| "unknown".into(), |g| g.to_string()),
            current
                .1
                .map_or_else(|| "unknown".into(), |g| g.to_string()),
            node,
            port
        )?;
        match via {
            Via::Sysfs => {
                write_attr(opts, log, &sriov.join("node"), &node.to_colon_bytes())?;
                write_attr(opts, log, &sriov.join("port"), &port.to_colon_bytes())?;
            }
            Via::IpLink => {
                let pf_netdev = p.netdev.as_deref().ok_or_else(|| {
                    anyhow!(
                        "no MLNX_OFED {} and the PF has no netdev for `ip link … vf {index}`",
                        sriov.join("node").display()
                    )
                })?;
                ip_link_set_guids(opts, log, pf_netdev, index, node, port)?;
            }
        }
        row.done.push("guid".into());
        report.changes += 1;
    }
    let policy = sriov.join("policy");
    if via == Via::Sysfs
        && let Ok(Some(cur)) = host::read_optional_attr(&policy)
        && cur.trim() != POLICY_FOLLOW
    {
        writeln!(
            log,
            "  VF {index} ({vf}): policy {} -> {POLICY_FOLLOW}",
            cur.trim()
        )?;
        write_attr(opts, log, &policy, POLICY_FOLLOW)?;
        row.done.push("policy".into());
        report.changes += 1;
    }
    if changed {
        let dir = opts.root.pci_device(&vf);
        if f.driver.as_deref() == Some(DRIVER_MLX5) {
            let drv = opts.root.pci_driver(DRIVER_MLX5);
            write_attr(opts, log, &drv.join("unbind"), &vf.to_string())?;
            write_attr(opts, log, &drv.join("bind"), &vf.to_string())?;
            if !opts.dry_run {
                wait_bound(&dir, opts.timeout)?;
            }
            row.done.push("rebound".into());
            report.changes += 1;
        } else {
            row.note = Some("not bound to a driver: the GUIDs apply when it is bound".into());
        }
    }
    Ok(())
}

fn read_guid(path: &Path) -> Option<Guid> {
    host::read_optional_attr(path)
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse().ok())
}

/// `ip link set dev <pf> vf <n> node_guid <g> port_guid <g> state auto`, as arguments.
pub fn ip_link_args(pf_netdev: &str, index: u32, node: Guid, port: Guid) -> Vec<String> {
    vec![
        "link".into(),
        "set".into(),
        "dev".into(),
        pf_netdev.into(),
        "vf".into(),
        index.to_string(),
        "node_guid".into(),
        node.to_colon_bytes(),
        "port_guid".into(),
        port.to_colon_bytes(),
        "state".into(),
        "auto".into(),
    ]
}

fn ip_link_set_guids(
    opts: &Options,
    log: &mut dyn Write,
    pf_netdev: &str,
    index: u32,
    node: Guid,
    port: Guid,
) -> anyhow::Result<()> {
    let valid_name = !pf_netdev.is_empty()
        && pf_netdev.len() < 16
        && pf_netdev
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !valid_name {
        bail!("PF netdev name {pf_netdev:?} is not a valid interface name");
    }
    let args = ip_link_args(pf_netdev, index, node, port);
    if opts.dry_run {
        writeln!(log, "  would run: ip {}", args.join(" "))?;
        return Ok(());
    }
    if opts.root.path() != Path::new("/") {
        bail!(
            "no MLNX_OFED sriov/{index}/node file under host root {}; the `ip link` path acts on this machine's network namespace, so it runs only with --host-root /",
            opts.root.path().display()
        );
    }
    let ip = IP_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "iproute2 not found at {}: install iproute2",
                IP_PATHS.join(" or ")
            )
        })?;
    writeln!(log, "  run: {} {}", ip.display(), args.join(" "))?;
    let out = Command::new(ip)
        .args(&args)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("running {}", ip.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            ip.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The systemd-networkd file for these VFs: `[Match] Path=` their udev `ID_PATH`s,
/// `[Link] Unmanaged=yes`. `None` for no VF: an empty `[Match]` would match every link.
pub fn networkd_config(vfs: &[PciAddr]) -> Option<String> {
    if vfs.is_empty() {
        return None;
    }
    let paths: Vec<String> = vfs.iter().map(|a| format!("pci-{a}")).collect();
    Some(format!(
        "# Written by `railvf-device-plugin setup-vfs --write-host-config`; rewritten on every run.\n\
         # These SR-IOV VFs belong to Kubernetes (Multus and the railvf CNI plugin): systemd-networkd\n\
         # must not configure them. Matched by PCI path (udev ID_PATH), which survives netdev renames.\n\
         [Match]\n\
         Path={}\n\
         \n\
         [Link]\n\
         Unmanaged=yes\n",
        paths.join(" ")
    ))
}

/// The NetworkManager drop-in for these VF netdevs. `None` for no netdev.
pub fn nm_config(netdevs: &[String]) -> Option<String> {
    if netdevs.is_empty() {
        return None;
    }
    let specs: Vec<String> = netdevs
        .iter()
        .map(|n| format!("interface-name:{n}"))
        .collect();
    Some(format!(
        "# Written by `railvf-device-plugin setup-vfs --write-host-config`; rewritten on every run.\n\
         # NetworkManager must not manage these SR-IOV VF netdevs: they belong to Kubernetes.\n\
         # Names can change; /etc/udev/rules.d/90-railvf-vfs.rules (NM_UNMANAGED=1) covers every VF\n\
         # whatever its name. \"+=\" appends to unmanaged-devices set elsewhere.\n\
         [keyfile]\n\
         unmanaged-devices+={}\n",
        specs.join(";")
    ))
}

fn write_host_config(
    opts: &Options,
    inv: &Inventory,
    report: &mut Report,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    // Every mlx5 VF on the host (as the udev rule does), after this run's changes.
    let now = if opts.dry_run {
        inv.clone()
    } else {
        Inventory::scan(&opts.root)?
    };
    let mut addrs: BTreeSet<PciAddr> = now
        .vfs
        .iter()
        .filter(|v| v.function.vendor == VENDOR_MELLANOX)
        .map(|v| v.function.addr)
        .collect();
    if opts.dry_run {
        addrs.extend(report.rows.iter().filter_map(|r| r.vf));
    }
    let mut netdevs: Vec<String> = now
        .vfs
        .iter()
        .filter(|v| v.function.vendor == VENDOR_MELLANOX)
        .flat_map(|v| v.function.netdevs.iter().map(|n| n.name.clone()))
        .collect();
    netdevs.sort();
    netdevs.dedup();
    let addrs: Vec<PciAddr> = addrs.into_iter().collect();
    writeln!(
        log,
        "host configuration: {} VFs, {} VF netdevs",
        addrs.len(),
        netdevs.len()
    )?;
    let files = [
        (NETWORKD_FILE, networkd_config(&addrs)),
        (NM_FILE, nm_config(&netdevs)),
        (UDEV_FILE, Some(UDEV_RULE.to_string())),
    ];
    let mut changed = false;
    for (rel, content) in files {
        let path = opts.root.join(rel);
        let status = put_file(opts, log, &path, content.as_deref())?;
        if status.starts_with("written")
            || status.starts_with("removed")
            || status.starts_with("would")
        {
            if !status.starts_with("would") {
                changed = true;
            }
            report.changes += 1;
        }
        report.files.push(FileOutcome { path, status });
    }
    if changed {
        writeln!(
            log,
            "  running managers pick these up with: networkctl reload; nmcli general reload conf; udevadm control --reload && udevadm trigger --subsystem-match=net --action=change"
        )?;
    }
    Ok(())
}

/// Writes `content` to `path` atomically (temporary file, then rename) unless it is already
/// there; `None` removes railvf's file. Returns what happened.
fn put_file(
    opts: &Options,
    log: &mut dyn Write,
    path: &Path,
    content: Option<&str>,
) -> anyhow::Result<String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match (content, existing) {
        (Some(c), Some(e)) if c == e => Ok("unchanged".into()),
        (None, None) => Ok("absent (nothing to exclude)".into()),
        (None, Some(_)) => {
            if opts.dry_run {
                writeln!(log, "  would remove {} (no VF to exclude)", path.display())?;
                return Ok("would remove".into());
            }
            writeln!(log, "  remove {} (no VF to exclude)", path.display())?;
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok("removed".into())
        }
        (Some(c), _) => {
            if opts.dry_run {
                writeln!(log, "  would write {}:", path.display())?;
                for line in c.lines() {
                    writeln!(log, "    | {line}")?;
                }
                return Ok("would write".into());
            }
            writeln!(log, "  write {}", path.display())?;
            let dir = path
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("railvf");
            let tmp = dir.join(format!(".{name}.railvf-tmp"));
            std::fs::write(&tmp, c).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            Ok("written".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SetupVfsArgs,
    }

    #[test]
    fn guid_scheme_is_the_documented_one() {
        let pf = Guid(0xa088_c203_00e3_142a);
        let (node, port) = vf_guids(pf, 5).unwrap();
        assert_eq!(node.to_colon_bytes(), "02:a0:88:c2:e3:14:2a:05");
        assert_eq!(port.to_colon_bytes(), "06:a0:88:c2:e3:14:2a:05");
        assert_eq!(node.to_string(), "02a0:88c2:e314:2a05");
        assert!(vf_guids(pf, 256).is_none());
    }

    #[test]
    fn guids_are_unique_non_zero_and_never_vendor_assigned() {
        // Eight PFs whose GUIDs differ only in the low bits (consecutive, as a vendor assigns
        // them), and adapters of other OUIs with the same serials: different adapters, on
        // other nodes of the fabric.
        let mut pfs: Vec<Guid> = (0..8u64)
            .map(|i| Guid(0xa088_c203_00e3_1420 + i * 0x10))
            .collect();
        pfs.push(Guid(0x946d_ae03_00e3_1420));
        pfs.push(Guid(0x0c42_a103_00e3_1420));
        pfs.push(Guid(0x0c42_a103_0001_0000));
        let mut all = BTreeSet::new();
        for pf in &pfs {
            for i in 0..=255 {
                let (n, p) = vf_guids(*pf, i).unwrap();
                for g in [n, p] {
                    assert!(g.is_assigned(), "{g}");
                    assert_eq!(
                        (g.0 >> 56) & 0x03,
                        0x02,
                        "{g}: locally administered, unicast"
                    );
                    assert!(all.insert(g), "duplicate {g}");
                }
            }
        }
        assert_eq!(all.len(), pfs.len() * 256 * 2);
    }

    #[test]
    fn ip_link_arguments() {
        let (n, p) = vf_guids(Guid(0xa088_c203_00e3_142a), 0).unwrap();
        assert_eq!(
            ip_link_args("ibp24s0", 0, n, p).join(" "),
            "link set dev ibp24s0 vf 0 node_guid 02:a0:88:c2:e3:14:2a:00 port_guid 06:a0:88:c2:e3:14:2a:00 state auto"
        );
    }

    #[test]
    fn never_an_empty_match() {
        assert!(networkd_config(&[]).is_none());
        assert!(nm_config(&[]).is_none());
        let a: PciAddr = "0000:18:00.1".parse().unwrap();
        let b: PciAddr = "0000:18:01.0".parse().unwrap();
        let n = networkd_config(&[a, b]).unwrap();
        assert!(
            n.contains("[Match]\nPath=pci-0000:18:00.1 pci-0000:18:01.0\n"),
            "{n}"
        );
        assert!(n.contains("[Link]\nUnmanaged=yes\n"), "{n}");
        let m = nm_config(&["ibp24s0v0".into(), "ibp24s0v1".into()]).unwrap();
        assert!(
            m.contains(
                "[keyfile]\nunmanaged-devices+=interface-name:ibp24s0v0;interface-name:ibp24s0v1\n"
            ),
            "{m}"
        );
    }

    #[test]
    fn command_line() {
        let c = Cli::try_parse_from([
            "x",
            "--host-root",
            "/tmp/r",
            "--vfs",
            "4",
            "--pf",
            "0000:18:00.0",
            "0000:40:00.0",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(c.args.vfs, 4);
        assert_eq!(c.args.pfs.len(), 2);
        assert!(c.args.dry_run && !c.args.write_host_config);
        let c = Cli::try_parse_from(["x", "--host-root", "/r"]).unwrap();
        assert_eq!((c.args.vfs, c.args.pfs.len(), c.args.timeout), (8, 0, 60));
        let e = Cli::try_parse_from(["x", "--pf", "18:00.0"]).err().unwrap();
        assert!(e.to_string().contains("dddd:bb:dd.f"), "{e}");
    }
}
