//! ADD+DEL cost of railvf against the reference `host-device` plugin and the kernel floor,
//! on the same veth "VF" of the simulated node; and how fast ADD returns once the subnet
//! manager assigns the LID it waits for.
//!
//! Run as root, on the binary as it ships (scripts/build-cni.sh: static, musl, non-PIE), copied
//! into place as the DaemonSet installs it:
//!
//! ```text
//! scripts/bench-cni.sh
//! RAILVF_BENCH_CYCLES=100 scripts/bench-cni.sh
//! ```
//!
//! `cargo bench -p railvf-cni --bench attach` alone measures cargo's default (dynamically
//! linked) build; `RAILVF_BENCH_BIN=<path>` measures any other railvf binary, and cargo's
//! build is then measured beside it for context, as is `RAILVF_BENCH_GLIBC_BIN=<path>`
//! (scripts/bench-cni.sh: the static glibc build, build-cni.sh's fallback) when given.
//!
//! CPU time is the user+system time of the plugin processes (`getrusage(RUSAGE_CHILDREN)`
//! deltas), or of the measuring thread for the in-process floors (`RUSAGE_THREAD`). Rows are
//! interleaved cycle by cycle in a shuffled order; medians over the cycles. Not a test:
//! nothing here asserts a time.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use railvf_cni::net::rtnl::Rtnl;
use railvf_cni::net::{LinkOps, Netns};
use railvf_sim::{SimOptions, TestNetns};

const VF: &str = "0000:18:00.1";
const CNI_DIR: &str = "/usr/lib/cni";

fn cpu(who: UsageWho) -> Duration {
    let u = getrusage(who).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Runs a CNI plugin verb; panics with its output on failure.
fn plugin(bin: &Path, verb: &str, netns: &Path, conf: &str, env: &[(&str, &Path)]) {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_IFNAME", "net1")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{} {verb} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `ip <args…>` as the floor rows time it: stdout to /dev/null, as a shell would leave it,
/// not captured (the simulator's `ip` helper reads it into memory).
fn ip(args: &[&str]) {
    let s = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success(), "ip {args:?}");
}

thread_local! {
    /// Time a row's run spent in [`apart`], left out of its wall time.
    static UNTIMED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The pause between the two halves of an "apart" row, untimed: a pod lives longer than the
/// gap between a back-to-back ADD and DEL, so the kernel's deferred work after the first
/// half (RCU callbacks and address configuration after a link came up) is done by the
/// time the second half runs, as it is on a node.
fn apart() {
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    UNTIMED.with(|u| u.set(u.get() + t.elapsed()));
}

/// One contender: a labelled ADD+DEL-like cycle, the clock its CPU is read from, and whether
/// the VF must be home before it runs.
struct Row<'a> {
    label: String,
    who: UsageWho,
    settle: bool,
    /// Untimed, before each run (after `settle`).
    prep: Option<Box<dyn FnMut() + 'a>>,
    run: Box<dyn FnMut() + 'a>,
    samples: Vec<Sample>,
}

impl<'a> Row<'a> {
    fn new(label: impl Into<String>, who: UsageWho, settle: bool, run: impl FnMut() + 'a) -> Self {
        Row {
            label: label.into(),
            who,
            settle,
            prep: None,
            run: Box::new(run),
            samples: Vec::new(),
        }
    }

    fn prep(mut self, prep: impl FnMut() + 'a) -> Self {
        self.prep = Some(Box::new(prep));
        self
    }

    fn wall(&self) -> Duration {
        median(self.samples.iter().map(|s| s.wall).collect())
    }

    fn cpu(&self) -> Duration {
        median(self.samples.iter().map(|s| s.cpu).collect())
    }
}

/// Runs every row `cycles` times, interleaved: each cycle runs every row once, in an order
/// shuffled per cycle, so the machine's drift over the run (other tenants, page cache) falls
/// on all rows alike and no row always runs right after the same other one. Before each
/// timed run, untimed: `settle` (for rows that need it) and a quiet pause, so the kernel's
/// deferred work from the previous row (RCU callbacks, workqueues after a link went down or
/// changed namespace) is not billed to the next one.
fn measure(rows: &mut [Row<'_>], cycles: usize, settle: &dyn Fn()) {
    const QUIET: Duration = Duration::from_millis(30);
    let n = rows.len();
    for row in rows.iter_mut() {
        for _ in 0..3 {
            if row.settle {
                settle();
            }
            if let Some(p) = row.prep.as_mut() {
                p();
            }
            (row.run)();
        }
    }
    // xorshift64: a fixed seed keeps runs comparable.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut order: Vec<usize> = (0..n).collect();
    for _ in 0..cycles {
        for i in (1..n).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let row = &mut rows[i];
            if row.settle {
                settle();
            }
            if let Some(p) = row.prep.as_mut() {
                p();
            }
            std::thread::sleep(QUIET);
            UNTIMED.with(|u| u.set(Duration::ZERO));
            let c0 = cpu(row.who);
            let t0 = Instant::now();
            (row.run)();
            let wall = t0.elapsed() - UNTIMED.with(Cell::get);
            row.samples.push(Sample {
                wall,
                cpu: cpu(row.who) - c0,
            });
        }
    }
}

/// The state dir where production has it (`/var/lib/cni/…`), not in `/tmp`: on a busy
/// `/tmp` every new inode costs ext4 hundreds of µs, which would measure the test machine.
fn state_dir() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/lib/cni").unwrap();
    tempfile::Builder::new()
        .prefix("railvf-bench-")
        .tempdir_in("/var/lib/cni")
        .unwrap()
}

/// "static" or "dynamic", from the ELF headers.
fn linkage(bin: &Path) -> &'static str {
    railvf_sim::elf::linkage(bin).map_or("unreadable", |l| l.name())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, and must not spend a minute benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("attach benchmark: skipped (not run by `cargo bench`)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED (needs root): the attach benchmark moves real links between namespaces");
        return;
    }
    let cycles: usize = std::env::var("RAILVF_BENCH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The binary as it ships (scripts/build-cni.sh, what scripts/bench-cni.sh passes here);
    // cargo's own dynamically linked build is measured beside it for context.
    let dev_build = Path::new(env!("CARGO_BIN_EXE_railvf"));
    let bin = std::env::var_os("RAILVF_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dev_build.into());
    // Installed as the DaemonSet's init container installs it on a node: copied into place.
    // The page cache then holds the file as the copy wrote it (large folios), not in the
    // small pieces the linker wrote: ~10 fewer page faults per start (`perf stat -e
    // page-faults`). The binary where the linker left it is measured beside it.
    let bin_dir = state_dir();
    let installed = bin_dir.path().join("railvf");
    std::fs::copy(&bin, &installed).expect("install the railvf binary");
    let as_linked = bin.as_path();
    let railvf = installed.as_path();
    let glibc_build = std::env::var_os("RAILVF_BENCH_GLIBC_BIN").map(|p| {
        let installed = bin_dir.path().join("railvf-glibc");
        std::fs::copy(&p, &installed).expect("install the static glibc railvf binary");
        installed
    });
    let host_device = Path::new(CNI_DIR).join("host-device");
    assert!(
        host_device.exists(),
        "{} missing: install containernetworking-plugins",
        host_device.display()
    );
    let state = state_dir();
    let sim = SimOptions::dgx_h200()
        .vfs_per_pf(1)
        .lid_delay(Duration::from_millis(0))
        .build()
        .expect("simulated node");
    let vf = sim.vf(VF).unwrap();
    let name = vf.netdev.clone();
    let pod = TestNetns::new().unwrap();
    let me = std::process::id().to_string();
    println!(
        "railvf attach benchmark: {cycles} ADD+DEL cycles per row, rows interleaved (medians; p90 in brackets), VF {VF} = veth {name}\nrailvf binary: {} ({}), installed (copied) as {}",
        as_linked.display(),
        linkage(railvf),
        railvf.display()
    );

    // Between cycles, untimed: the VF home again, and the rail events read away as the
    // device plugin does on a node (without a reader they pile up, and each ADD's count of
    // the pending ones would grow with the benchmark's length).
    let events = sim.root().join(railvf_cni::events::DIR);
    let settle = || {
        sim.wait_netdev(VF, Some(&name), Duration::from_secs(5))
            .expect("VF back in the host");
        if let Ok(rd) = std::fs::read_dir(&events) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    };

    let rt = Rtnl::new();
    let podns = Netns::path(pod.path());
    // The kernel's part alone: move in (renamed), optionally up, move back.
    let floor = |up: bool| {
        let l = rt.link_by_name(&Netns::Host, &name).unwrap().unwrap();
        let moved = rt
            .move_found_link(&Netns::Host, &l, &podns, "net1")
            .unwrap();
        if up {
            rt.set_up(&podns, moved.ifindex, true).unwrap();
        }
        rt.move_found_link(&podns, &moved, &Netns::Host, &name)
            .unwrap();
    };
    let hd_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-hd","type":"host-device","device":"{name}"}}"#
    );
    let split = std::cell::RefCell::new(Vec::<(Duration, Duration)>::new());
    // Wall of each half (ADD / move in, DEL / move out) of three rows, to see where a
    // difference in wall lies.
    let halves: [std::cell::RefCell<Vec<(Duration, Duration)>>; 4] = Default::default();
    let timed = |i: usize, a: &mut dyn FnMut(), b: &mut dyn FnMut()| {
        let t0 = Instant::now();
        a();
        let t1 = Instant::now();
        b();
        halves[i].borrow_mut().push((t1 - t0, t1.elapsed()));
    };
    let rv_conf =
        format!(r#"{{"cniVersion":"1.1.0","name":"bench-rv","type":"railvf","deviceID":"{VF}"}}"#);
    let rv_env = [
        ("RAILVF_HOST_ROOT", sim.root()),
        ("RAILVF_STATE_DIR", state.path()),
    ];
    let version = |bin: &Path| {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        assert!(c.status().unwrap().success());
    };
    // One ADD+DEL of a plugin; `pause`: with the untimed pause between them (see `apart`).
    let add_del = |bin: &Path, conf: &str, env: &[(&str, &Path)], pause: bool| {
        plugin(bin, "ADD", pod.path(), conf, env);
        if pause {
            apart();
        }
        plugin(bin, "DEL", pod.path(), conf, env);
    };
    // The kernel floor as two commands: into the pod as net1, and back under its name.
    let ip_in = || ip(&["link", "set", &name, "netns", pod.name(), "name", "net1"]);
    // The same floor for an attach that leaves the link up in the pod, as ADD must: `ip`
    // sends the move, the name and IFF_UP in one RTM_NEWLINK, as railvf does.
    let ip_in_up = || {
        ip(&[
            "link",
            "set",
            &name,
            "netns",
            pod.name(),
            "name",
            "net1",
            "up",
        ])
    };
    let ip_out = || {
        ip(&[
            "-n",
            pod.name(),
            "link",
            "set",
            "net1",
            "netns",
            &me,
            "name",
            &name,
        ])
    };
    let mut rows = vec![
        Row::new(
            "kernel floor: netlink move in+out (in-process)",
            UsageWho::RUSAGE_THREAD,
            true,
            || floor(false),
        ),
        Row::new(
            "kernel floor: 2x `ip link set … netns`",
            UsageWho::RUSAGE_CHILDREN,
            true,
            || timed(0, &mut { ip_in }, &mut { ip_out }),
        ),
        Row::new(
            "host-device (Debian) ADD+DEL",
            UsageWho::RUSAGE_CHILDREN,
            true,
            || add_del(&host_device, &hd_conf, &[], false),
        ),
        Row::new(
            format!(
                "railvf ADD+DEL ({}, installed, incl. readiness gate)",
                linkage(railvf)
            ),
            UsageWho::RUSAGE_CHILDREN,
            true,
            || {
                let c0 = cpu(UsageWho::RUSAGE_CHILDREN);
                let mut c1 = c0;
                timed(
                    1,
                    &mut || {
                        plugin(railvf, "ADD", pod.path(), &rv_conf, &rv_env);
                        c1 = cpu(UsageWho::RUSAGE_CHILDREN);
                    },
                    &mut || plugin(railvf, "DEL", pod.path(), &rv_conf, &rv_env),
                );
                split
                    .borrow_mut()
                    .push((c1 - c0, cpu(UsageWho::RUSAGE_CHILDREN) - c1));
            },
        ),
    ];
    // A CNI plugin must also bring the interface up, and a link that was up goes through
    // `dev_close` when it leaves the pod: kernel work (and RCU waits) the two floors above
    // do not include. These rows measure it, in-process and with host-device on a VF that
    // was up on the host (host-device then brings it up in the pod; it restores the
    // original state and leaves a down VF down, as in the row above).
    rows.push(Row::new(
        "kernel floor incl. link up: move in, up, move out (in-process)",
        UsageWho::RUSAGE_THREAD,
        true,
        || floor(true),
    ));
    rows.push(
        Row::new(
            "host-device ADD+DEL, VF up on the host",
            UsageWho::RUSAGE_CHILDREN,
            true,
            || {
                timed(
                    2,
                    &mut || plugin(&host_device, "ADD", pod.path(), &hd_conf, &[]),
                    &mut || plugin(&host_device, "DEL", pod.path(), &hd_conf, &[]),
                );
            },
        )
        .prep(|| ip(&["link", "set", &name, "up"])),
    );
    rows.push(Row::new(
        "  railvf ADD+DEL, the same binary where the linker wrote it",
        UsageWho::RUSAGE_CHILDREN,
        true,
        || add_del(as_linked, &rv_conf, &rv_env, false),
    ));
    // The same cycles with an untimed pause between the halves (see `apart`).
    rows.push(Row::new(
        "2x `ip link set … netns`, 30 ms apart",
        UsageWho::RUSAGE_CHILDREN,
        true,
        || {
            ip_in();
            apart();
            ip_out();
        },
    ));
    rows.push(Row::new(
        "railvf ADD+DEL (installed), 30 ms apart",
        UsageWho::RUSAGE_CHILDREN,
        true,
        || add_del(railvf, &rv_conf, &rv_env, true),
    ));
    rows.push(
        Row::new(
            "host-device ADD+DEL, VF up on the host, 30 ms apart",
            UsageWho::RUSAGE_CHILDREN,
            true,
            || add_del(&host_device, &hd_conf, &[], true),
        )
        .prep(|| ip(&["link", "set", &name, "up"])),
    );
    // A link that was up costs the kernel more to move out (`dev_close` and what bringing
    // it up set up): the floor of every plugin that brings the VF up, railvf included.
    let up_floor = rows.len();
    rows.push(Row::new(
        "kernel floor incl. link up: 2x `ip link set … netns` (in: `… up`)",
        UsageWho::RUSAGE_CHILDREN,
        true,
        || timed(3, &mut { ip_in_up }, &mut { ip_out }),
    ));
    rows.push(Row::new(
        "the same, 30 ms apart",
        UsageWho::RUSAGE_CHILDREN,
        true,
        || {
            ip_in_up();
            apart();
            ip_out();
        },
    ));
    if let Some(glibc_build) = &glibc_build {
        rows.push(Row::new(
            "  railvf ADD+DEL, static glibc build (installed)",
            UsageWho::RUSAGE_CHILDREN,
            true,
            || add_del(glibc_build, &rv_conf, &rv_env, false),
        ));
    }
    if as_linked != dev_build {
        rows.push(Row::new(
            format!("  railvf ADD+DEL, cargo's {} build", linkage(dev_build)),
            UsageWho::RUSAGE_CHILDREN,
            true,
            || add_del(dev_build, &rv_conf, &rv_env, false),
        ));
    }
    // Context: what merely starting each plugin twice costs (VERSION does no work).
    rows.push(Row::new(
        "  start-up only: railvf VERSION x2",
        UsageWho::RUSAGE_CHILDREN,
        false,
        || {
            version(railvf);
            version(railvf);
        },
    ));
    if let Some(glibc_build) = &glibc_build {
        rows.push(Row::new(
            "  start-up only: railvf static glibc build VERSION x2",
            UsageWho::RUSAGE_CHILDREN,
            false,
            || {
                version(glibc_build);
                version(glibc_build);
            },
        ));
    }
    rows.push(Row::new(
        "  start-up only: host-device VERSION x2",
        UsageWho::RUSAGE_CHILDREN,
        false,
        || {
            version(&host_device);
            version(&host_device);
        },
    ));
    measure(&mut rows, cycles, &settle);

    println!();
    println!("{:<52} {:>18} {:>18}", "", "wall ms/cycle", "CPU ms/cycle");
    for r in &rows {
        let wall: Vec<Duration> = r.samples.iter().map(|x| x.wall).collect();
        let cpu: Vec<Duration> = r.samples.iter().map(|x| x.cpu).collect();
        println!(
            "{:<52} {:>8} [{:>7}] {:>8} [{:>7}]",
            r.label,
            ms(r.wall()),
            ms(p90(wall)),
            ms(r.cpu()),
            ms(p90(cpu))
        );
    }
    // The same difference taken cycle by cycle (both rows ran in the same cycle, a few
    // hundred ms apart) and then its median: the machine's drift over the run, which moves
    // both rows' walls alike, cancels out.
    let paired_wall = |a: &Row<'_>, b: &Row<'_>| {
        let mut d: Vec<f64> = a
            .samples
            .iter()
            .zip(&b.samples)
            .map(|(x, y)| (x.wall.as_secs_f64() - y.wall.as_secs_f64()) * 1000.0)
            .collect();
        d.sort_by(f64::total_cmp);
        format!("{:+.2}", d[d.len() / 2])
    };
    let (paired_floor, paired_hd_up) = (
        paired_wall(&rows[3], &rows[1]),
        paired_wall(&rows[3], &rows[5]),
    );
    let (floor_wall, hd_cpu, rv_wall, rv_cpu, inproc_wall, up_wall, hd_up) = (
        rows[1].wall(),
        rows[2].cpu(),
        rows[3].wall(),
        rows[3].cpu(),
        rows[0].wall(),
        rows[4].wall(),
        (rows[5].wall(), rows[5].cpu()),
    );
    let (apart_floor, apart_rv, apart_hd) = (&rows[7], &rows[8], &rows[9]);
    let apart_line = format!(
        "30 ms apart: railvf wall - ip floor = {} ms between the medians, {} ms per cycle; railvf - host-device (VF up) = {} ms per cycle; CPU railvf / host-device (VF up) = {:.2}",
        signed_ms(apart_rv.wall(), apart_floor.wall()),
        paired_wall(apart_rv, apart_floor),
        paired_wall(apart_rv, apart_hd),
        apart_rv.cpu().as_secs_f64() / apart_hd.cpu().as_secs_f64()
    );
    let (floor_up, apart_floor_up) = (&rows[up_floor], &rows[up_floor + 1]);
    let up_floor_line = format!(
        "railvf wall - kernel floor incl. link up (2x `ip link set … netns`, in with `up`) = {} ms between the medians, {} ms per cycle (target <= 2); 30 ms apart: {} ms, {} ms per cycle\nwhat bringing the link up costs the kernel, by `ip` alone: floor incl. link up - floor = {} ms between the medians, {} ms per cycle",
        signed_ms(rv_wall, floor_up.wall()),
        paired_wall(&rows[3], floor_up),
        signed_ms(apart_rv.wall(), apart_floor_up.wall()),
        paired_wall(apart_rv, apart_floor_up),
        signed_ms(floor_up.wall(), floor_wall),
        paired_wall(floor_up, &rows[1]),
    );
    drop(rows);
    let split = split.into_inner();
    // The warm-up cycles are in `split` too; skip them.
    let split = &split[3.min(split.len())..];
    println!(
        "  railvf CPU split: ADD {} ms, DEL {} ms (medians)",
        ms(median(split.iter().map(|s| s.0).collect())),
        ms(median(split.iter().map(|s| s.1).collect()))
    );
    for (h, what) in halves.iter().zip([
        "2x `ip link set … netns`: in",
        "railvf: ADD",
        "host-device, VF up on the host: ADD",
        "2x `ip link set … netns`, in with `up`: in",
    ]) {
        let h = h.borrow();
        let h = &h[3.min(h.len())..];
        let (second, _) = what.split_once(':').unwrap_or((what, ""));
        let out = if second.starts_with("2x") {
            "out"
        } else {
            "DEL"
        };
        println!(
            "  wall split, {what} {} ms, {out} {} ms (medians)",
            ms(median(h.iter().map(|s| s.0).collect())),
            ms(median(h.iter().map(|s| s.1).collect()))
        );
    }
    println!();
    println!(
        "railvf CPU / host-device CPU = {:.2} (target <= 0.33)\nrailvf wall - kernel floor (2x `ip link set … netns`, also two processes) = {} ms between the medians, {paired_floor} ms as the median of the per-cycle differences (target <= 2)\nrailvf wall - in-process netlink floor (no process start at all) = {} ms",
        rv_cpu.as_secs_f64() / hd_cpu.as_secs_f64(),
        signed_ms(rv_wall, floor_wall),
        signed_ms(rv_wall, inproc_wall)
    );
    println!(
        "railvf wall - kernel floor incl. link up (in-process) = {} ms; host-device with the VF up on the host: wall {} ms (railvf - it, per cycle: {paired_hd_up} ms), CPU {} ms (railvf CPU / that = {:.2})",
        signed_ms(rv_wall, up_wall),
        ms(hd_up.0),
        ms(hd_up.1),
        rv_cpu.as_secs_f64() / hd_up.1.as_secs_f64()
    );
    println!("{apart_line}");
    println!("{up_floor_line}");
    drop(sim);

    reaction(railvf, (cycles / 6).max(5));
}

/// `a - b` in ms, with its sign (railvf may well beat a floor that starts two `ip` processes).
fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

/// How long after the simulated SM writes the LID does ADD return? The simulator records
/// when it assigned each LID, just before writing it, so no reader saw it earlier: an ADD
/// that returned before that moment passed the gate on another LID, and stops the run.
fn reaction(railvf: &Path, rounds: usize) {
    let sim = SimOptions::dgx_h200()
        .vfs_per_pf(1)
        .lid_delay(Duration::from_millis(150))
        .build()
        .expect("simulated node");
    let state = state_dir();
    let pod = TestNetns::new().unwrap();
    let env = [
        ("RAILVF_HOST_ROOT", sim.root()),
        ("RAILVF_STATE_DIR", state.path()),
    ];
    let mut lags = Vec::new();
    let mut waits = Vec::new();
    for r in 0..rounds {
        // 02:00:00:00:00:00:<round>:01, a new GUID each round.
        let guid = 0x0200_0000_0000_0001_u64 | ((r as u64 % 250 + 1) << 8);
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"bench-lid","type":"railvf","deviceID":"{VF}","guid":"{}"}}"#,
            railvf_sim::guid_colon(guid)
        );
        let t0 = Instant::now();
        plugin(railvf, "ADD", pod.path(), &conf, &env);
        let done = Instant::now();
        let v = sim.vf(VF).unwrap();
        assert_eq!(v.port_guid, guid, "round {r}: the VF shows another GUID");
        let at = v.lid_assigned_at.unwrap_or_else(|| {
            panic!("round {r}: ADD returned, but the SM has not assigned the new GUID a LID")
        });
        assert!(
            at <= done,
            "round {r}: ADD returned {} ms before the SM assigned the LID",
            ms(at - done)
        );
        lags.push(done - at);
        waits.push(done - t0);
        plugin(railvf, "DEL", pod.path(), &conf, &env);
        // Let the SM settle the restored GUID before the next round.
        std::thread::sleep(Duration::from_millis(200));
    }
    println!();
    println!(
        "readiness gate: ADD waited {} ms (median) for a LID the SM assigned 150 ms after the GUID write; \
         ADD returned {} ms (median) / {} ms (max) after the SM assigned the LID, just before writing it ({} rounds; target <= 10 ms)",
        ms(median(waits)),
        ms(median(lags.clone())),
        ms(*lags.iter().max().unwrap()),
        lags.len()
    );
}
