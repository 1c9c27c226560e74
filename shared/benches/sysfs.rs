//! What reading a PCI function costs on this machine's own sysfs: `read_function` (its
//! directory held open, attributes opened relative to it) against the same attributes
//! opened by full path, interleaved in one run. No root needed; nothing is written.
//!
//! ```text
//! cargo bench -p railvf-host --bench sysfs
//! ```

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use railvf_host::inventory::read_function;
use railvf_host::{HostRoot, PciAddr, host};

/// The reads of `read_function` for a function without RDMA, each by its full path.
fn by_path(dir: &Path) {
    for a in ["vendor", "device", "class", "numa_node"] {
        let _ = black_box(host::read_attr(&dir.join(a)));
    }
    for l in ["driver", "physfn"] {
        let _ = black_box(host::link_basename(&dir.join(l)));
    }
    for d in ["net", "infiniband", "infiniband_verbs"] {
        let _ = black_box(host::list_dir(&dir.join(d)));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sysfs benchmark: skipped (not run by `cargo bench`)");
        return;
    }
    let root = HostRoot::new("/").expect("root");
    let addrs: Vec<PciAddr> = host::list_dir(&root.join("sys/bus/pci/devices"))
        .expect("list /sys/bus/pci/devices")
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    if addrs.is_empty() {
        println!("sysfs benchmark: skipped (no PCI functions in /sys)");
        return;
    }
    let rounds = 200;
    let (mut rel, mut full) = (Vec::new(), Vec::new());
    for r in 0..rounds + 20 {
        let t = Instant::now();
        for a in &addrs {
            let _ = black_box(read_function(&root, *a));
        }
        let t_rel = t.elapsed();
        let t = Instant::now();
        for a in &addrs {
            by_path(&root.pci_device(a));
        }
        let t_full = t.elapsed();
        if r >= 20 {
            rel.push(t_rel / addrs.len() as u32);
            full.push(t_full / addrs.len() as u32);
        }
    }
    println!(
        "{} PCI functions of this machine, {rounds} rounds (medians per function):\n  read_function (directory held open, relative opens): {:.1} µs\n  the same reads by full path:                         {:.1} µs",
        addrs.len(),
        median(rel).as_secs_f64() * 1e6,
        median(full).as_secs_f64() * 1e6
    );
}
