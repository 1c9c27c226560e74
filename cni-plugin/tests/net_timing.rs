//! Timing sanity print (not an assertion): CPU and wall time of a CNI-like cycle on the
//! real kernel with a fresh `Rtnl` each time, as a fresh `railvf` process would have: move a
//! veth end into a pod netns renamed `net1`, set MTU, up, an address and a default route
//! (ADD), then move it back under its name (DEL). Needs root; alone in its test binary so
//! the process CPU clock measures only this.

use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use railvf_cni::net::rtnl::Rtnl;
use railvf_cni::net::{IpNet, LinkOps, Netns};
use railvf_sim::{TestNetns, TestVeth};

fn cpu(clock: ClockId) -> Duration {
    Duration::from(clock_gettime(clock).expect("clock_gettime"))
}

#[test]
fn move_cycle_cpu_time() {
    if !railvf_sim::require_root() {
        return;
    }
    let ns = TestNetns::new().unwrap_or_else(|e| panic!("{e}"));
    let veth = TestVeth::new().unwrap_or_else(|e| panic!("{e}"));
    let a = &veth.a;
    let pod = Netns::path(ns.path());
    let host = Netns::Host;

    const N: u32 = 10;
    let (mut proc_total, mut thread_total, mut wall_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut samples = Vec::new();
    for _ in 0..N {
        let (p0, t0, w0) = (
            cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID),
            cpu(ClockId::CLOCK_THREAD_CPUTIME_ID),
            Instant::now(),
        );
        let rt = Rtnl::new();
        // ADD
        let vf = rt.link_by_name(&host, a).unwrap().unwrap();
        let l = rt.move_link(&host, vf.ifindex, &pod, "net1").unwrap();
        rt.set_mtu(&pod, l.ifindex, 9000).unwrap();
        rt.set_up(&pod, l.ifindex, true).unwrap();
        rt.add_address(
            &pod,
            l.ifindex,
            IpNet {
                addr: "10.66.0.5".parse().unwrap(),
                prefix: 24,
            },
        )
        .unwrap();
        rt.add_route(
            &pod,
            l.ifindex,
            IpNet {
                addr: "0.0.0.0".parse().unwrap(),
                prefix: 0,
            },
            Some("10.66.0.1".parse().unwrap()),
        )
        .unwrap();
        // DEL
        let l = rt.link_by_name(&pod, "net1").unwrap().unwrap();
        rt.set_up(&pod, l.ifindex, false).unwrap();
        rt.move_link(&pod, l.ifindex, &host, a).unwrap();
        drop(rt);
        let (p, t, w) = (
            cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID) - p0,
            cpu(ClockId::CLOCK_THREAD_CPUTIME_ID) - t0,
            w0.elapsed(),
        );
        samples.push((p, w));
        proc_total += p;
        thread_total += t;
        wall_total += w;
    }
    for (i, (p, w)) in samples.iter().enumerate() {
        println!(
            "cycle {i}: cpu {:>7.3} ms  wall {:>7.3} ms",
            p.as_secs_f64() * 1e3,
            w.as_secs_f64() * 1e3
        );
    }
    println!(
        "TIMING ADD+DEL netlink cycle (move in + rename, mtu, up, addr, route; down, move out), mean of {N}: \
         process CPU {:.3} ms (calling thread {:.3} ms), wall {:.3} ms",
        proc_total.as_secs_f64() * 1e3 / f64::from(N),
        thread_total.as_secs_f64() * 1e3 / f64::from(N),
        wall_total.as_secs_f64() * 1e3 / f64::from(N),
    );
}
