//! Startup and Allocate benchmark of the real `railvf-device-plugin` binary against the
//! fake kubelet, on simulated nodes without real links (no root needed):
//!
//!     cargo bench -p railvf-device-plugin --bench startup
//!
//! Reports, per node size: start-to-registered time (process spawn → kubelet accepted
//! `Register`), peak RSS (`VmHWM` of the plugin process), `Allocate` and
//! `GetPreferredAllocation` round-trip latency (median, p99) over the unix socket, and the
//! CPU the health poller costs while idle; each node size with `--use-cdi` off and on.
//! Targets: ≤ 100 ms and ≤ 15 MB at 2048 VFs, Allocate p99 ≤ 1 ms. Not a test: it prints
//! figures and never fails on them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    PreferredAllocationRequest,
};
use railvf_sim::{SimOptions, Topology};

const RUNS: usize = 7;
const CALLS: usize = 2000;

/// `dir` should be on tmpfs, as the real `/var/run` is.
fn spawn(root: &Path, dir: &Path, cdi: bool) -> Child {
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, "{}").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_railvf-device-plugin"));
    if cdi {
        cmd.arg("--use-cdi").arg("--cdi-dir").arg(dir.join("cdi"));
    }
    cmd.arg("--host-root")
        .arg(root)
        .arg("--kubelet-dir")
        .arg(dir.join("device-plugins"))
        .arg("--devinfo-dir")
        .arg(dir.join("devinfo"))
        .arg("--config")
        .arg(&cfg)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the plugin")
}

/// tmpfs for sockets and device-info files, like kubelet's and Multus' real directories.
fn tmpfs() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn bench(label: &str, opts: SimOptions) {
    let sim = opts.build().expect("sim");
    for cdi in [false, true] {
        bench_on(label, &sim, cdi).await;
    }
}

async fn bench_on(label: &str, sim: &railvf_sim::SimNode, cdi: bool) {
    let vfs = sim.vfs().len();
    println!(
        "\n== {label}: {vfs} VFs, --use-cdi {} (sim built in {:?})",
        if cdi { "on" } else { "off" },
        sim.build_time()
    );
    let mut starts = Vec::new();
    let mut peak_kb = 0;
    for run in 0..RUNS {
        let tmp = tempfile::Builder::new()
            .prefix("railvf-bench-")
            .tempdir_in(tmpfs())
            .unwrap();
        let mut kubelet = FakeKubelet::start(tmp.path().join("device-plugins"))
            .await
            .unwrap();
        let t0 = Instant::now();
        let child = spawn(sim.root(), tmp.path(), cdi);
        let pid = child.id();
        let Some(reg) = kubelet.next_registration(Duration::from_secs(30)).await else {
            stop(child);
            panic!("no registration");
        };
        starts.push(reg.at - t0);
        if cdi {
            // The spec is written before registration: the figure includes it.
            let specs = std::fs::read_dir(tmp.path().join("cdi")).map_or(0, |d| d.count());
            assert_eq!(specs, 1, "one CDI spec at registration");
        }
        let mut client = reg.client;
        let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
        let list = stream.message().await.unwrap().unwrap().devices;
        assert_eq!(list.len(), vfs);
        if run == 0 {
            let ids: Vec<String> = list.iter().map(|d| d.id.clone()).collect();
            let pref = PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: ids.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: 8,
                }],
            };
            let mut lat = Vec::with_capacity(CALLS);
            let mut eight = Vec::new();
            for _ in 0..CALLS {
                let t = Instant::now();
                let r = client.get_preferred_allocation(pref.clone()).await.unwrap();
                lat.push(t.elapsed());
                eight = r.into_inner().container_responses[0].device_i_ds.clone();
            }
            lat.sort();
            println!(
                "GetPreferredAllocation (8 of {vfs}): median {}, p99 {}",
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99))
            );
            for (what, devs) in [("1 VF", vec![ids[0].clone()]), ("8 VFs", eight)] {
                let req = AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest { devices_ids: devs }],
                };
                let mut lat = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    let t = Instant::now();
                    client.allocate(req.clone()).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat.sort();
                println!(
                    "Allocate ({what}): median {}, p99 {}, max {}",
                    ms(pct(&lat, 0.5)),
                    ms(pct(&lat, 0.99)),
                    ms(lat[lat.len() - 1])
                );
            }
            // Health poller cost at the default 250 ms interval, nothing else happening.
            let (c0, t) = (cpu_ticks(pid), Instant::now());
            tokio::time::sleep(Duration::from_secs(4)).await;
            let ticks = cpu_ticks(pid) - c0;
            let hz = 100.0; // USER_HZ on Linux
            println!(
                "idle CPU (health poll every 250 ms): {:.1}% of one core ({:.1} ms per poll)",
                ticks as f64 / hz / t.elapsed().as_secs_f64() * 100.0,
                ticks as f64 / hz * 1e3 / (t.elapsed().as_secs_f64() / 0.25)
            );
        }
        peak_kb = peak_kb.max(status_kb(pid, "VmHWM:"));
        drop(stream);
        stop(child);
    }
    starts.sort();
    println!(
        "start-to-registered over {RUNS} runs: median {}, min {}, max {}",
        ms(pct(&starts, 0.5)),
        ms(starts[0]),
        ms(starts[starts.len() - 1])
    );
    println!(
        "peak RSS (VmHWM, worst run): {:.1} MB",
        peak_kb as f64 / 1024.0
    );
}

fn main() {
    // `cargo test --benches` runs benches in test mode: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        bench("DGX H200", SimOptions::dgx_h200().no_links()).await;
        bench(
            "synthetic 16 PFs x 128 VFs",
            SimOptions::new(Topology::synthetic(16, 128).unwrap()).no_links(),
        )
        .await;
    });
}
