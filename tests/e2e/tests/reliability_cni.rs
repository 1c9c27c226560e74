//! Concurrency: real `railvf` processes in parallel on the simulated DGX H200 (64 veth VFs),
//! checked from outside (`ip -n <ns> -j link` by the sim's per-VF alias, the sim's sysfs
//! mirror, the state dir, host-local's data dir).
//!
//! - 64 ADDs at once, one per VF and pod; then 64 DELs at once.
//! - The same VF asked for by 2–4 ADDs at once: exactly one wins, the others get code 101
//!   and change nothing (and their DEL does not take the VF from the winner).
//! - A seeded random mix of ADD / DEL / DEL after the netns died / repeated DEL / DEL
//!   without ADD / ADD of a VF another pod holds, 8 at a time, a few hundred operations.

mod reliability_support;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::Duration;

use railvf_sim::{SimNode, SimOptions, TestNetns, VfInfo, require_root};
use reliability_support::*;

#[test]
fn sixty_four_adds_at_once_put_every_vf_in_its_own_pod() {
    if !require_root() {
        return;
    }
    require_host_local();
    let tmp = tempfile::tempdir().unwrap();
    let sim = SimOptions::dgx_h200()
        .lid_delay(Duration::from_millis(20))
        .build()
        .expect("sim");
    let cni = cni_for(&sim, tmp.path());
    let hl = tmp.path().join("hl");
    let net = "rel-par64";
    let vfs = sim.vfs();
    assert_eq!(vfs.len(), 64);
    let guids_before: Vec<_> = vfs.iter().map(|v| guid_files(&sim, v)).collect();
    let pods: Vec<TestNetns> = (0..64).map(|_| TestNetns::new().unwrap()).collect();
    let confs: Vec<String> = vfs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            netconf(
                "1.1.0",
                net,
                &v.pci.to_string(),
                &format!(
                    r#""guid":"02:00:00:00:00:64:00:{i:02x}","mtu":2044,{}"#,
                    host_local(&hl, "10.64.0.0/16")
                ),
            )
        })
        .collect();
    let cid = |i: usize| format!("par64-{i}");

    // Every process is started before any is waited for.
    let children: Vec<_> = (0..64)
        .map(|i| {
            cni.spawn_cmd(
                cni.command("ADD", &cid(i), "net1", Some(pods[i].path())),
                confs[i].as_bytes(),
            )
        })
        .collect();
    let outs: Vec<Out> = children.into_iter().map(wait).collect();
    let mut ips = BTreeSet::new();
    for (i, o) in outs.into_iter().enumerate() {
        let o = o.expect_ok();
        let v = &vfs[i];
        let bdf = v.pci.to_string();
        let res = o.json();
        assert_eq!(res["interfaces"][0]["pciID"], bdf, "{}", o.stdout);
        assert_eq!(
            res["interfaces"][0]["sandbox"],
            pods[i].path().display().to_string()
        );
        let ip = res["ips"][0]["address"].as_str().unwrap().to_string();
        // From outside: this VF, and only it, is net1 in this pod, with that address.
        assert_eq!(
            vf_name_in(&sim, Some(pods[i].name()), &bdf).as_deref(),
            Some("net1"),
            "VF {bdf} is not net1 in {}",
            pods[i].name()
        );
        assert_eq!(pod_links(pods[i].name()), vec!["net1".to_string()]);
        assert_eq!(addrs4(Some(pods[i].name()), "net1"), vec![ip.clone()]);
        assert!(
            vf_name_in(&sim, None, &bdf).is_none(),
            "VF {bdf} still in the host"
        );
        ips.insert(ip);
    }
    sim.sync().unwrap();
    for v in &vfs {
        assert!(
            sim.vf(v.pci).unwrap().host_netdev.is_none(),
            "the sim's sysfs still shows {} in the host",
            v.pci
        );
    }
    assert_eq!(ips.len(), 64, "64 distinct addresses");
    let owners: BTreeSet<String> = reservations(&hl, net).into_iter().map(|r| r.1).collect();
    assert_eq!(owners, (0..64).map(cid).collect::<BTreeSet<_>>());
    assert_eq!(cni.state_files().len(), 64, "{:?}", cni.state_files());

    let children: Vec<_> = (0..64)
        .map(|i| {
            cni.spawn_cmd(
                cni.command("DEL", &cid(i), "net1", Some(pods[i].path())),
                confs[i].as_bytes(),
            )
        })
        .collect();
    for o in children.into_iter().map(wait) {
        o.expect_ok();
    }
    for (i, v) in vfs.iter().enumerate() {
        assert_home(&sim, v);
        assert!(pod_links(pods[i].name()).is_empty());
        assert_eq!(
            guid_files(&sim, v),
            guids_before[i],
            "GUID of {} restored",
            v.pci
        );
    }
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
    assert!(
        ipam_leftovers(&hl, net).is_empty(),
        "{:?}",
        ipam_leftovers(&hl, net)
    );
    summary("64 ADDs at once + 64 DELs at once: 128 operations, 0 VFs lost, 0 addresses leaked");
}

#[test]
fn the_same_vf_asked_for_at_once_goes_to_exactly_one_pod() {
    if !require_root() {
        return;
    }
    require_host_local();
    let tmp = tempfile::tempdir().unwrap();
    let sim = fast_node(1).build().expect("sim");
    let cni = cni_for(&sim, tmp.path());
    let hl = tmp.path().join("hl");
    let net = "rel-race";
    let mut ops = 0;
    let mut refused = 0;
    for (round, v) in sim.vfs().iter().enumerate() {
        let contenders = 2 + round % 3;
        let bdf = v.pci.to_string();
        let conf = netconf("1.0.0", net, &bdf, &host_local(&hl, "10.65.0.0/24"));
        let pods: Vec<TestNetns> = (0..contenders).map(|_| TestNetns::new().unwrap()).collect();
        let cid = |k: usize| format!("race{round}-{k}");
        let children: Vec<_> = (0..contenders)
            .map(|k| {
                cni.spawn_cmd(
                    cni.command("ADD", &cid(k), "net1", Some(pods[k].path())),
                    conf.as_bytes(),
                )
            })
            .collect();
        let outs: Vec<Out> = children.into_iter().map(wait).collect();
        ops += contenders;
        let winners: Vec<usize> = (0..contenders).filter(|k| outs[*k].ok).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outs:#?}");
        let w = winners[0];
        for (k, o) in outs.iter().enumerate() {
            o.assert_no_panic();
            if k == w {
                continue;
            }
            refused += 1;
            let (code, msg) = o.err();
            assert_eq!(code, 101, "{msg}");
            assert!(msg.contains(&cid(w)), "the refusal names the holder: {msg}");
            // The loser changed nothing: its pod is empty, no state, no address.
            assert!(pod_links(pods[k].name()).is_empty());
        }
        assert_eq!(
            vf_name_in(&sim, Some(pods[w].name()), &bdf).as_deref(),
            Some("net1")
        );
        assert_eq!(
            cni.state_files(),
            vec![format!("{bdf}_{}@net1.json", cid(w))]
        );
        let held: Vec<String> = reservations(&hl, net).into_iter().map(|r| r.1).collect();
        assert_eq!(held, vec![cid(w)]);

        // The runtime DELs the failed attachments: that must not take the VF from the winner.
        for k in (0..contenders).filter(|k| *k != w) {
            cni.run("DEL", &cid(k), Some(pods[k].path()), &conf)
                .expect_ok();
            ops += 1;
        }
        assert_eq!(
            vf_name_in(&sim, Some(pods[w].name()), &bdf).as_deref(),
            Some("net1"),
            "a loser's DEL took the VF"
        );
        assert_eq!(reservations(&hl, net).len(), 1);
        cni.run("DEL", &cid(w), Some(pods[w].path()), &conf)
            .expect_ok();
        ops += 1;
        assert_home(&sim, v);
        assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
    }
    assert!(ipam_leftovers(&hl, net).is_empty());
    summary(format!(
        "same VF raced by 2-4 ADDs at once, 8 rounds: {ops} operations, exactly one winner each, {refused} refused with code 101, 0 VFs lost"
    ));
}

/// One step of the random mix, as the generator chose it.
enum Op {
    Add {
        cid: String,
        ns: TestNetns,
    },
    Del {
        cid: String,
        ns: TestNetns,
        how: DelHow,
    },
    /// DEL of an attachment that never existed, on a VF in the host.
    DelNever {
        cid: String,
    },
    /// ADD of a VF another pod holds.
    Intruder {
        cid: String,
        holder: String,
        holder_ns: TestNetns,
    },
}

#[derive(Clone, Copy, Debug)]
enum DelHow {
    Normal,
    /// The netns is deleted first; DEL gets an empty CNI_NETNS.
    NetnsGoneEmpty,
    /// The netns is deleted first; DEL gets the dangling path.
    NetnsGoneDangling,
    /// DEL twice.
    Twice,
}

enum Slot {
    Free,
    Attached { cid: String, ns: TestNetns },
}

struct Done {
    slot: usize,
    state: Slot,
    invocations: usize,
    kind: &'static str,
    problems: Vec<String>,
}

fn run_op(sim: &SimNode, cni: &Cni, v: &VfInfo, conf: &str, slot: usize, op: Op) -> Done {
    let bdf = v.pci.to_string();
    let mut problems = Vec::new();
    let check = |problems: &mut Vec<String>, cond: bool, what: String| {
        if !cond {
            problems.push(what);
        }
    };
    let home = |problems: &mut Vec<String>| {
        let mut last = None;
        if !eventually(Duration::from_secs(5), || {
            last = home_problem(sim, v);
            last.is_none()
        }) {
            problems.push(last.unwrap_or_default());
        }
    };
    match op {
        Op::Add { cid, ns } => {
            let o = cni.run("ADD", &cid, Some(ns.path()), conf);
            let ok = o.ok && !o.stderr.contains("panicked");
            check(
                &mut problems,
                ok,
                format!("ADD {cid} of {bdf} failed: {} {}", o.stdout, o.stderr),
            );
            let there = vf_name_in(sim, Some(ns.name()), &bdf);
            check(
                &mut problems,
                !ok || there.as_deref() == Some("net1"),
                format!("after ADD {cid}, VF {bdf} is {there:?} in {}", ns.name()),
            );
            let state = if ok {
                Slot::Attached { cid, ns }
            } else {
                home(&mut problems);
                Slot::Free
            };
            Done {
                slot,
                state,
                invocations: 1,
                kind: "ADD",
                problems,
            }
        }
        Op::Del { cid, ns, how } => {
            let mut invocations = 1;
            let o = match how {
                DelHow::Normal => cni.run("DEL", &cid, Some(ns.path()), conf),
                DelHow::Twice => {
                    invocations = 2;
                    let first = cni.run("DEL", &cid, Some(ns.path()), conf);
                    check(
                        &mut problems,
                        first.ok,
                        format!("first DEL {cid} failed: {} {}", first.stdout, first.stderr),
                    );
                    cni.run("DEL", &cid, Some(ns.path()), conf)
                }
                DelHow::NetnsGoneEmpty | DelHow::NetnsGoneDangling => {
                    let path = ns.path().to_path_buf();
                    let _ = sim.sync();
                    drop(ns);
                    let netns = matches!(how, DelHow::NetnsGoneDangling).then_some(path.as_path());
                    cni.run("DEL", &cid, netns, conf)
                }
            };
            check(
                &mut problems,
                o.ok && !o.stderr.contains("panicked"),
                format!(
                    "DEL {cid} ({how:?}) of {bdf} failed: {} {}",
                    o.stdout, o.stderr
                ),
            );
            home(&mut problems);
            Done {
                slot,
                state: Slot::Free,
                invocations,
                kind: "DEL",
                problems,
            }
        }
        Op::DelNever { cid } => {
            let o = cni.run("DEL", &cid, None, conf);
            check(
                &mut problems,
                o.ok,
                format!("DEL {cid} without ADD failed: {}", o.stdout),
            );
            home(&mut problems);
            Done {
                slot,
                state: Slot::Free,
                invocations: 1,
                kind: "DEL-never-added",
                problems,
            }
        }
        Op::Intruder {
            cid,
            holder,
            holder_ns,
        } => {
            let ns = TestNetns::new().unwrap();
            let o = cni.run("ADD", &cid, Some(ns.path()), conf);
            let code = serde_json::from_str::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v["code"].as_u64());
            match (o.ok, code) {
                (false, Some(101)) => {}
                _ => problems.push(format!(
                    "intruder ADD {cid} of {bdf} (held by {holder}) was not refused with 101: {}",
                    o.stdout
                )),
            }
            check(
                &mut problems,
                pod_links(ns.name()).is_empty(),
                format!("intruder {cid} got links {:?}", pod_links(ns.name())),
            );
            let d = cni.run("DEL", &cid, Some(ns.path()), conf);
            check(
                &mut problems,
                d.ok,
                format!("intruder DEL {cid} failed: {}", d.stdout),
            );
            let there = vf_name_in(sim, Some(holder_ns.name()), &bdf);
            check(
                &mut problems,
                there.as_deref() == Some("net1"),
                format!("holder {holder} lost VF {bdf} to an intruder: {there:?}"),
            );
            Done {
                slot,
                state: Slot::Attached {
                    cid: holder,
                    ns: holder_ns,
                },
                invocations: 2,
                kind: "intruder ADD+DEL",
                problems,
            }
        }
    }
}

#[test]
fn random_add_del_interleavings_lose_nothing() {
    if !require_root() {
        return;
    }
    require_host_local();
    const OPS: usize = 300;
    const PARALLEL: usize = 8;
    let seed = seed("random ADD/DEL mix");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    // 16 VFs: several ADD/DEL cycles per VF.
    let sim = fast_node(2).build().expect("sim");
    let cni = cni_for(&sim, tmp.path());
    let hl = tmp.path().join("hl");
    let net = "rel-mix";
    let vfs = sim.vfs();
    let confs: Vec<String> = vfs
        .iter()
        .map(|v| {
            netconf(
                "1.1.0",
                net,
                &v.pci.to_string(),
                &format!(r#""mtu":2044,{}"#, host_local(&hl, "10.66.0.0/24")),
            )
        })
        .collect();

    let mut slots: Vec<Option<Slot>> = vfs.iter().map(|_| Some(Slot::Free)).collect();
    let mut issued = 0usize;
    let mut invocations = 0usize;
    let mut kinds: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut problems: Vec<String> = Vec::new();
    let mut next_id = 0usize;
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    std::thread::scope(|s| {
        let mut inflight = 0usize;
        loop {
            while inflight < PARALLEL && issued < OPS && problems.is_empty() {
                let idle: Vec<usize> = (0..slots.len()).filter(|i| slots[*i].is_some()).collect();
                if idle.is_empty() {
                    break;
                }
                let i = idle[rng.usize(..idle.len())];
                next_id += 1;
                let cid = format!("mix-{next_id}");
                let op = match slots[i].take().unwrap() {
                    Slot::Free if rng.u8(..100) < 85 => Op::Add {
                        cid,
                        ns: TestNetns::new().unwrap(),
                    },
                    Slot::Free => Op::DelNever { cid },
                    Slot::Attached { cid: holder, ns } => match rng.u8(..100) {
                        0..55 => Op::Del {
                            cid: holder,
                            ns,
                            how: DelHow::Normal,
                        },
                        55..65 => Op::Del {
                            cid: holder,
                            ns,
                            how: DelHow::NetnsGoneEmpty,
                        },
                        65..75 => Op::Del {
                            cid: holder,
                            ns,
                            how: DelHow::NetnsGoneDangling,
                        },
                        75..85 => Op::Del {
                            cid: holder,
                            ns,
                            how: DelHow::Twice,
                        },
                        _ => Op::Intruder {
                            cid,
                            holder,
                            holder_ns: ns,
                        },
                    },
                };
                let (sim, cni, v, conf, tx) = (&sim, &cni, &vfs[i], &confs[i], done_tx.clone());
                s.spawn(move || {
                    let _ = tx.send(run_op(sim, cni, v, conf, i, op));
                });
                inflight += 1;
                issued += 1;
            }
            if inflight == 0 {
                break;
            }
            let d = done_rx
                .recv_timeout(GUARD * 2)
                .expect("an operation hung (hang guard)");
            inflight -= 1;
            invocations += d.invocations;
            *kinds.entry(d.kind).or_default() += 1;
            problems.extend(d.problems);
            slots[d.slot] = Some(d.state);
        }
    });
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");

    // Whatever is still attached is deleted; then nothing may be left anywhere.
    for (i, slot) in slots.iter_mut().enumerate() {
        if let Some(Slot::Attached { cid, ns }) = slot.take() {
            cni.run("DEL", &cid, Some(ns.path()), &confs[i]).expect_ok();
            invocations += 1;
        }
    }
    let mut lost = 0;
    for v in &vfs {
        if let Some(p) = home_problem(&sim, v) {
            lost += 1;
            eprintln!("{p}");
        }
    }
    assert_eq!(lost, 0, "seed {seed}: VFs not home");
    assert!(
        cni.state_files().is_empty(),
        "seed {seed}: {:?}",
        cni.state_files()
    );
    assert!(
        ipam_leftovers(&hl, net).is_empty(),
        "seed {seed}: leaked {:?}",
        ipam_leftovers(&hl, net)
    );
    assert_host_has_no_stray_vf_names(&sim);
    summary(format!(
        "random ADD/DEL mix, seed {seed}: {issued} operations ({invocations} railvf runs, {PARALLEL} at a time, {kinds:?}), 0 VFs lost, 0 addresses leaked, state dir empty"
    ));
}

/// No link of this sim is left in the host under a pod name (`net1`) or a kernel
/// fallback name (`devN`).
fn assert_host_has_no_stray_vf_names(sim: &SimNode) {
    let tag = format!("railvf-sim:{}:", sim.tag());
    for l in links(None) {
        if l["ifalias"].as_str().is_some_and(|a| a.starts_with(&tag)) {
            let name = l["ifname"].as_str().unwrap_or("");
            assert!(
                !name.starts_with("net") && !name.starts_with("dev"),
                "a VF of this sim is in the host as {name}"
            );
        }
    }
}
