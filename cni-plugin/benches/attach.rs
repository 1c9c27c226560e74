//! ADD+DEL cost of railvf against the reference `host-device` plugin and the kernel floor,
//! on the same veth "VF" of the simulated node; and how fast ADD returns once the subnet
//! manager assigns the LID it waits for.
//!
//! Run (root; release build):
//!
//! ```text
//! sudo -E cargo bench -p railvf-cni --bench attach
//! RAILVF_BENCH_CYCLES=100 sudo -E cargo bench -p railvf-cni --bench attach
//! ```
//!
//! `RAILVF_BENCH_BIN=<path>` benchmarks another railvf binary, e.g. a statically linked one
//! (process start-up is a large part of a CNI plugin's cost; static glibc saves ~0.2 ms per
//! exec here):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p railvf-cni --bin railvf \
//!     --target x86_64-unknown-linux-gnu
//! RAILVF_BENCH_BIN=target/x86_64-unknown-linux-gnu/release/railvf sudo -E cargo bench -p railvf-cni --bench attach
//! ```
//!
//! CPU time is the user+system time of the plugin processes (`getrusage(RUSAGE_CHILDREN)`
//! deltas), or of the measuring thread for the in-process floor (`RUSAGE_THREAD`). Medians
//! over the cycles. Not a test: nothing here asserts a time.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

fn ip(args: &[&str]) {
    let s = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success(), "ip {args:?}");
}

/// `settle` runs between cycles, untimed: it waits for the simulator's sysfs mirror to show
/// the VF home again (a real kernel's sysfs is current at once; the mirror lags a few ms).
fn measure(
    cycles: usize,
    who: UsageWho,
    settle: &dyn Fn(),
    mut cycle: impl FnMut(),
) -> Vec<Sample> {
    for _ in 0..3 {
        cycle();
        settle();
    }
    (0..cycles)
        .map(|_| {
            settle();
            let c0 = cpu(who);
            let t0 = Instant::now();
            cycle();
            let wall = t0.elapsed();
            Sample {
                wall,
                cpu: cpu(who) - c0,
            }
        })
        .collect()
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
        .unwrap_or(30);
    let bin = std::env::var_os("RAILVF_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_railvf").into());
    let railvf = bin.as_path();
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
        "railvf attach benchmark: {cycles} ADD+DEL cycles per row (medians; p90 in brackets), VF {VF} = veth {name}, binary {}",
        railvf.display()
    );

    let mut rows: Vec<(&str, Vec<Sample>)> = Vec::new();
    let settle = || {
        sim.wait_netdev(VF, Some(&name), Duration::from_secs(5))
            .expect("VF back in the host");
    };

    let rt = Rtnl::new();
    let podns = Netns::path(pod.path());
    rows.push((
        "kernel floor: netlink move in+out (in-process)",
        measure(cycles, UsageWho::RUSAGE_THREAD, &settle, || {
            let l = rt.link_by_name(&Netns::Host, &name).unwrap().unwrap();
            let moved = rt
                .move_link(&Netns::Host, l.ifindex, &podns, "net1")
                .unwrap();
            rt.move_link(&podns, moved.ifindex, &Netns::Host, &name)
                .unwrap();
        }),
    ));
    rows.push((
        "kernel floor: 2x `ip link set … netns`",
        measure(cycles, UsageWho::RUSAGE_CHILDREN, &settle, || {
            ip(&["link", "set", &name, "netns", pod.name(), "name", "net1"]);
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
            ]);
        }),
    ));
    let hd_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-hd","type":"host-device","device":"{name}"}}"#
    );
    rows.push((
        "host-device 1.1.1 (Debian) ADD+DEL",
        measure(cycles, UsageWho::RUSAGE_CHILDREN, &settle, || {
            plugin(&host_device, "ADD", pod.path(), &hd_conf, &[]);
            plugin(&host_device, "DEL", pod.path(), &hd_conf, &[]);
        }),
    ));
    let split = std::cell::RefCell::new(Vec::<(Duration, Duration)>::new());
    let rv_conf =
        format!(r#"{{"cniVersion":"1.1.0","name":"bench-rv","type":"railvf","deviceID":"{VF}"}}"#);
    let rv_env = [
        ("RAILVF_HOST_ROOT", sim.root()),
        ("RAILVF_STATE_DIR", state.path()),
    ];
    rows.push((
        "railvf ADD+DEL (incl. readiness gate)",
        measure(cycles, UsageWho::RUSAGE_CHILDREN, &settle, || {
            let c0 = cpu(UsageWho::RUSAGE_CHILDREN);
            plugin(railvf, "ADD", pod.path(), &rv_conf, &rv_env);
            let c1 = cpu(UsageWho::RUSAGE_CHILDREN);
            plugin(railvf, "DEL", pod.path(), &rv_conf, &rv_env);
            split
                .borrow_mut()
                .push((c1 - c0, cpu(UsageWho::RUSAGE_CHILDREN) - c1));
        }),
    ));

    // Context: what merely starting each plugin twice costs (VERSION does no work).
    let version = |bin: &Path| {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        assert!(c.status().unwrap().success());
    };
    rows.push((
        "  start-up only: railvf VERSION x2",
        measure(cycles, UsageWho::RUSAGE_CHILDREN, &|| (), || {
            version(railvf);
            version(railvf);
        }),
    ));
    rows.push((
        "  start-up only: host-device VERSION x2",
        measure(cycles, UsageWho::RUSAGE_CHILDREN, &|| (), || {
            version(&host_device);
            version(&host_device);
        }),
    ));

    println!();
    println!("{:<48} {:>18} {:>18}", "", "wall ms/cycle", "CPU ms/cycle");
    for (label, s) in &rows {
        let wall: Vec<Duration> = s.iter().map(|x| x.wall).collect();
        let cpu: Vec<Duration> = s.iter().map(|x| x.cpu).collect();
        println!(
            "{:<48} {:>8} [{:>7}] {:>8} [{:>7}]",
            label,
            ms(median(wall.clone())),
            ms(p90(wall)),
            ms(median(cpu.clone())),
            ms(p90(cpu))
        );
    }
    let split = split.into_inner();
    println!(
        "  railvf CPU split: ADD {} ms, DEL {} ms (medians)",
        ms(median(split.iter().map(|s| s.0).collect())),
        ms(median(split.iter().map(|s| s.1).collect()))
    );
    let med = |i: usize, f: fn(&Sample) -> Duration| median(rows[i].1.iter().map(f).collect());
    let (floor_wall, hd_cpu, rv_wall, rv_cpu) = (
        med(1, |s| s.wall),
        med(2, |s| s.cpu),
        med(3, |s| s.wall),
        med(3, |s| s.cpu),
    );
    println!();
    println!(
        "railvf CPU / host-device CPU = {:.2} (target <= 0.33)\nrailvf wall - kernel floor (2x `ip link set … netns`, also two processes) = {} ms (target <= 2)\nrailvf wall - in-process netlink floor (no process start at all) = {} ms",
        rv_cpu.as_secs_f64() / hd_cpu.as_secs_f64(),
        ms(rv_wall.saturating_sub(floor_wall)),
        ms(rv_wall.saturating_sub(med(0, |s| s.wall)))
    );
    drop(sim);

    reaction(railvf, (cycles / 3).max(5));
}

/// How long after the simulated SM writes the LID does ADD return? A watcher thread polls
/// the VF's `lid` file every 100 µs to timestamp the LID's appearance.
fn reaction(railvf: &Path, rounds: usize) {
    let sim = SimOptions::dgx_h200()
        .vfs_per_pf(1)
        .lid_delay(Duration::from_millis(150))
        .build()
        .expect("simulated node");
    let state = state_dir();
    let pod = TestNetns::new().unwrap();
    let lid_file = {
        let v = sim.vf(VF).unwrap();
        v.sysfs_dir
            .join("infiniband")
            .join(&v.rdma_device)
            .join("ports/1/lid")
    };
    let env = [
        ("RAILVF_HOST_ROOT", sim.root()),
        ("RAILVF_STATE_DIR", state.path()),
    ];
    let mut lags = Vec::new();
    let mut waits = Vec::new();
    for r in 0..rounds {
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"bench-lid","type":"railvf","deviceID":"{VF}","guid":"02:00:00:00:00:00:{:02x}:01"}}"#,
            r % 250 + 1
        );
        let seen: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (seen, stop, f) = (seen.clone(), stop.clone(), lid_file.clone());
            std::thread::spawn(move || {
                let read = || std::fs::read_to_string(&f).unwrap_or_default();
                // Wait for the new GUID to clear the LID, then for the SM's new one.
                while !stop.load(Ordering::Relaxed) && read().trim() != "0x0" {
                    std::thread::sleep(Duration::from_micros(100));
                }
                while !stop.load(Ordering::Relaxed) {
                    if read().trim() != "0x0" {
                        *seen.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        let t0 = Instant::now();
        plugin(railvf, "ADD", pod.path(), &conf, &env);
        let done = Instant::now();
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        if let Some(at) = *seen.lock().unwrap() {
            lags.push(done.saturating_duration_since(at));
            waits.push(done - t0);
        }
        plugin(railvf, "DEL", pod.path(), &conf, &env);
        // Let the SM settle the restored GUID before the next round.
        std::thread::sleep(Duration::from_millis(200));
    }
    if lags.is_empty() {
        println!("readiness reaction: the LID change was not observed");
        return;
    }
    println!();
    println!(
        "readiness gate: ADD waited {} ms (median) for a LID the SM assigned 150 ms after the GUID write; \
         ADD returned {} ms (median) / {} ms (max) after the LID appeared in sysfs ({} rounds; target <= 10 ms)",
        ms(median(waits)),
        ms(median(lags.clone())),
        ms(*lags.iter().max().unwrap()),
        lags.len()
    );
}
