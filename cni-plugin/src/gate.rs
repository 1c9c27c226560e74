//! The readiness gate: ADD returns only when the VF is RDMA-ready.
//!
//! sysfs attributes (port state, LID) emit no inotify events, so the gate polls — every
//! [`POLL`], which bounds the reaction to a LID appearing well under 10 ms. Failures that
//! cannot become true by waiting (driver, link layer, …) end the wait at once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use railvf_host::attr::{ParseError, PhysState, PortState};
use railvf_host::inventory::{self, Attr, RdmaDevice, RdmaPort};
use railvf_host::readiness::{Outcome, Status};
use railvf_host::{
    Check, Expectations, Guid, HostRoot, LinkLayer, PciAddr, PciFunction, Readiness, host,
};

use crate::error::{CniError, code};
use crate::net::rdma::PortView;

/// Poll interval: a few µs of sysfs reads per poll, so 2 ms is cheap and reacts fast.
pub const POLL: Duration = Duration::from_millis(2);

/// The checks ADD gates on. `ownership` is checked before the move (afterwards the netdev
/// is no longer in the host namespace and the check would only say "skipped").
pub const GATE_CHECKS: [Check; 7] = [
    Check::Driver,
    Check::Rdma,
    Check::Guid,
    Check::LinkLayer,
    Check::PortState,
    Check::Lid,
    Check::Sm,
];

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("VF {vf} is not RDMA-ready{}: {}", when(.waited, .permanent), .readiness.failure_summary())]
    NotReady {
        vf: PciAddr,
        readiness: Readiness,
        waited: Duration,
        /// A failing check cannot become true without an operator.
        permanent: bool,
    },
    #[error("VF {vf} vanished while waiting for readiness: {why}")]
    Vanished { vf: PciAddr, why: String },
}

fn when(waited: &Duration, permanent: &bool) -> String {
    if *permanent {
        " (this will not change by waiting)".to_string()
    } else {
        format!(" after waiting {} ms", waited.as_millis())
    }
}

impl From<GateError> for CniError {
    fn from(e: GateError) -> Self {
        let details = match &e {
            GateError::NotReady { readiness, .. } => {
                let mut fixes: Vec<String> = Vec::new();
                for o in readiness.failures() {
                    let f = format!("{}: {}", o.check, o.check.fix());
                    if !fixes.contains(&f) {
                        fixes.push(f);
                    }
                }
                fixes.join("; ")
            }
            GateError::Vanished { .. } => {
                "the VF disappeared (driver unbound or sriov_numvfs changed); check dmesg"
                    .to_string()
            }
        };
        CniError::new(code::TRY_AGAIN, e.to_string(), details)
    }
}

/// Evaluates `checks` once on the VF.
pub fn evaluate(
    root: &HostRoot,
    vf: &PciAddr,
    exp: &Expectations,
    checks: &[Check],
) -> Result<Readiness, GateError> {
    let f = inventory::read_function(root, *vf).map_err(vanished(*vf))?;
    Ok(railvf_host::readiness::evaluate(root, &f, exp, checks))
}

/// The checks CHECK makes on a VF whose RDMA device ADD isolated in the pod: the host sees
/// its driver, RDMA netlink in the pod shows the device and its port. `guid` is not among
/// them: RDMA netlink has no attribute for the port GID; ADD checked it before the move.
pub const ISOLATED_CHECKS: [Check; 6] = [
    Check::Driver,
    Check::Rdma,
    Check::LinkLayer,
    Check::PortState,
    Check::Lid,
    Check::Sm,
];

/// Evaluates `checks` on the VF `vf`, its RDMA device `ibdev` as RDMA netlink showed it in
/// the netns it was isolated in (`view`). The verdicts and their wording are the host
/// model's, as for a device read from sysfs.
pub fn evaluate_isolated(
    root: &HostRoot,
    vf: &PciAddr,
    exp: &Expectations,
    checks: &[Check],
    ibdev: &str,
    view: &PortView,
) -> Result<Readiness, GateError> {
    let mut f = inventory::read_function(root, *vf).map_err(vanished(*vf))?;
    f.rdma = Some(isolated_device(ibdev, view));
    Ok(railvf_host::readiness::evaluate(root, &f, exp, checks))
}

/// The host model's view of an RDMA device read through RDMA netlink. What netlink never
/// reports is `NotRead`; what it did not report this time is `Missing`, named after the
/// attribute.
fn isolated_device(name: &str, v: &PortView) -> RdmaDevice {
    fn path(dev: &str, attr: &str) -> PathBuf {
        PathBuf::from(format!("RDMA netlink {dev}/1 {attr}"))
    }
    fn read<T, V>(dev: &str, attr: &str, v: Option<V>, f: impl FnOnce(V) -> Attr<T>) -> Attr<T> {
        v.map(f).unwrap_or_else(|| Attr::Missing(path(dev, attr)))
    }
    fn invalid<T>(dev: &str, attr: &str, expected: &'static str, found: String) -> Attr<T> {
        Attr::Invalid {
            path: path(dev, attr),
            error: ParseError { expected, found },
        }
    }
    let lid = |attr: &str, l: Option<u32>| {
        read(name, attr, l, |l| {
            u16::try_from(l)
                .map(Attr::Value)
                .unwrap_or_else(|_| invalid(name, attr, "a 16-bit LID", l.to_string()))
        })
    };
    let link_layer = match v.protocol.as_deref() {
        // sysfs calls an Omni-Path port's link layer InfiniBand too.
        Some("ib" | "opa") => Attr::Value(LinkLayer::InfiniBand),
        Some("roce") => Attr::Value(LinkLayer::Ethernet),
        Some(other) => invalid(name, "protocol", "ib or roce", other.to_string()),
        // Before Linux 5.6 there is no protocol attribute; the kernel puts the LID
        // attributes on InfiniBand ports only.
        None if v.lid.is_some() => Attr::Value(LinkLayer::InfiniBand),
        None => Attr::Value(LinkLayer::Ethernet),
    };
    RdmaDevice {
        name: name.to_string(),
        node_guid: read(name, "node_guid", v.node_guid, |g| Attr::Value(Guid(g))),
        ports: vec![RdmaPort {
            port: 1,
            state: read(name, "state", v.state, |c| {
                Attr::Value(PortState::from_code(c))
            }),
            phys_state: read(name, "phys_state", v.phys_state, |c| {
                Attr::Value(PhysState::from_code(c))
            }),
            lid: lid("lid", v.lid),
            sm_lid: lid("sm_lid", v.sm_lid),
            link_layer,
            rate: Attr::NotRead,
            gid0: Attr::NotRead,
        }],
    }
}

/// The VF `vf` could not be read: it is gone (or no longer a VF).
fn vanished(vf: PciAddr) -> impl FnOnce(railvf_host::HostError) -> GateError {
    move |e| GateError::Vanished {
        vf,
        why: e.to_string(),
    }
}

/// Evaluates `checks` once on the VF `f` as ADD resolved it, re-reading first only what the
/// checks watch change (driver, RDMA device: [`inventory::refresh`]).
fn evaluate_fresh(
    root: &HostRoot,
    f: &mut PciFunction,
    exp: &Expectations,
    checks: &[Check],
) -> Result<Readiness, GateError> {
    inventory::refresh(root, f).map_err(vanished(f.addr))?;
    Ok(railvf_host::readiness::evaluate(root, f, exp, checks))
}

/// Waits until every gate check passes, a failure is permanent, or `timeout` passes.
/// `guid_set`: the GUID railvf just set (and rebound the driver for). Until the RDMA
/// device shows it, `driver`, `rdma` and `guid` may still be settling and are waited for,
/// and a LID still belongs to the old GUID, so the VF is not ready yet.
pub fn wait(
    root: &HostRoot,
    f: PciFunction,
    exp: &Expectations,
    timeout: Duration,
    guid_set: Option<Guid>,
) -> Result<Readiness, GateError> {
    wait_paced(
        root,
        f,
        exp,
        timeout,
        guid_set,
        &mut || {},
        &mut std::thread::sleep,
    )
}

/// [`wait`], with what happens after each full evaluation (`evaluated`) and between polls
/// (`pause`) given by the caller: tests change the host there, and count.
fn wait_paced(
    root: &HostRoot,
    mut f: PciFunction,
    exp: &Expectations,
    timeout: Duration,
    guid_set: Option<Guid>,
    evaluated: &mut dyn FnMut(),
    pause: &mut dyn FnMut(Duration),
) -> Result<Readiness, GateError> {
    let addr = f.addr;
    let start = Instant::now();
    let deadline = start + timeout;
    let mut polls = 0u32;
    let guid_just_set = guid_set.is_some();
    // The attributes behind the previous evaluation's failures. Between full evaluations
    // only these are polled: on real hardware each port attribute read is a query to the
    // HCA, and a full evaluation reads a dozen files.
    let mut watch: Vec<PathBuf> = Vec::new();
    loop {
        // Read before the evaluation, so that a change landing while it runs (the SM
        // writing the LID just after it was read) differs from this and is not missed.
        let before = snapshot(&watch);
        let mut r = evaluate_fresh(root, &mut f, exp, &GATE_CHECKS)?;
        if let Some(want) = guid_set {
            expect_guid(&f, want, &mut r);
        }
        polls += 1;
        evaluated();
        if r.is_ready() {
            crate::log_debug!(
                "VF {addr} RDMA-ready after {} µs ({polls} polls)",
                start.elapsed().as_micros()
            );
            return Ok(r);
        }
        let transient = |c: Check| {
            c.can_become_true()
                || (guid_just_set && matches!(c, Check::Driver | Check::Rdma | Check::Guid))
        };
        let permanent = r.failures().any(|o| !transient(o.check));
        let now = Instant::now();
        if permanent || now >= deadline {
            return Err(GateError::NotReady {
                vf: addr,
                readiness: r,
                waited: now - start,
                permanent,
            });
        }
        let failing = watched_files(root, &f, &r);
        if failing != watch {
            // Other checks fail now: their files were not read before this evaluation, so
            // evaluate once more after one poll interval, with them read first.
            watch = failing;
            pause(POLL.min(deadline - now));
            continue;
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            pause(POLL.min(deadline - now));
            // Empty: the failing checks are not port attributes; re-evaluate at every poll.
            if watch.is_empty() || snapshot(&watch) != before {
                break;
            }
        }
    }
}

/// The current contents of `files` (`None` for one that cannot be read).
fn snapshot(files: &[PathBuf]) -> Vec<Option<String>> {
    files.iter().map(|p| host::read_attr(p).ok()).collect()
}

/// The sysfs attributes behind the failing checks, when those are only port attributes
/// (empty: re-evaluate everything at every poll). `f` is the VF as the evaluation just read
/// it, RDMA device included.
fn watched_files(root: &HostRoot, f: &PciFunction, r: &Readiness) -> Vec<PathBuf> {
    let Some(dev) = &f.rdma else {
        return Vec::new();
    };
    let ib = root.pci_device(&f.addr).join("infiniband").join(&dev.name);
    let port = ib.join("ports/1");
    let mut files = Vec::new();
    for o in r.failures() {
        match o.check {
            Check::PortState => {
                files.push(port.join("state"));
                files.push(port.join("phys_state"));
            }
            Check::Lid => files.push(port.join("lid")),
            Check::Sm => files.push(port.join("sm_lid")),
            Check::Guid => {
                files.push(ib.join("node_guid"));
                files.push(port.join("gids/0"));
            }
            // driver / rdma settling after a rebind: watch everything.
            _ => return Vec::new(),
        }
    }
    files
}

/// Adds a failing `guid` outcome while the VF's RDMA device, as just re-read into `f`, does
/// not show `want` yet: as its node GUID, and (InfiniBand) as the port GUID in GID 0. The
/// SM hands out LIDs by port GUID, so a LID seen before the port GUID changed belongs to
/// the old one.
fn expect_guid(f: &PciFunction, want: Guid, r: &mut Readiness) {
    let rdma = f.rdma.as_ref();
    let node = rdma.and_then(|d| d.node_guid.value().copied());
    let port1 = rdma.and_then(|d| d.port1());
    let ib = port1.is_some_and(|p| p.link_layer.value() == Some(&LinkLayer::InfiniBand));
    let port = port1.and_then(|p| p.gid0.value()).map(|g| g.interface_id());
    let shown = |g: Option<Guid>| g.map_or_else(|| "none".to_string(), |g| g.to_string());
    if node != Some(want) || (ib && port != Some(want)) {
        r.outcomes.push(Outcome {
            check: Check::Guid,
            status: Status::Fail,
            observed: if ib {
                format!(
                    "node_guid {}, port GUID (GID 0) {}",
                    shown(node),
                    shown(port)
                )
            } else {
                format!("node_guid {}", shown(node))
            },
            expected: if ib {
                format!("node_guid and port GUID {want}, the GUID railvf set")
            } else {
                format!("node_guid {want}, the GUID railvf set")
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Bench, vf_addr};

    /// RDMA netlink's port view in the host model's terms: the protocol names the link
    /// layer, and before Linux 5.6 (no protocol attribute) the LID attributes, which the
    /// kernel puts on InfiniBand ports only, do; a LID wider than 16 bits is unreadable.
    #[test]
    fn a_port_read_through_rdma_netlink_is_judged_as_sysfs_would_be() {
        let ib = PortView {
            node_guid: Some(1),
            protocol: None,
            state: Some(4),
            phys_state: Some(5),
            lid: Some(0x21),
            sm_lid: Some(1),
        };
        let ll = |v: &PortView| isolated_device("mlx5_3", v).ports[0].link_layer.clone();
        assert_eq!(ll(&ib), Attr::Value(LinkLayer::InfiniBand));
        let roce = PortView {
            lid: None,
            sm_lid: None,
            ..ib.clone()
        };
        assert_eq!(ll(&roce), Attr::Value(LinkLayer::Ethernet));
        let opa = PortView {
            protocol: Some("opa".into()),
            ..ib.clone()
        };
        assert_eq!(
            ll(&opa),
            Attr::Value(LinkLayer::InfiniBand),
            "as sysfs says"
        );
        let iw = PortView {
            protocol: Some("iw".into()),
            ..ib.clone()
        };
        assert!(ll(&iw).describe().contains("iw"), "{:?}", ll(&iw));

        let b = Bench::new(1);
        let root = HostRoot::new(b.root()).unwrap();
        let exp = Expectations::default();
        let r =
            evaluate_isolated(&root, &vf_addr(0), &exp, &ISOLATED_CHECKS, "mlx5_3", &ib).unwrap();
        assert!(r.is_ready(), "{}", r.failure_summary());
        let wide = PortView {
            lid: Some(0x1_0000),
            ..ib
        };
        let r =
            evaluate_isolated(&root, &vf_addr(0), &exp, &ISOLATED_CHECKS, "mlx5_3", &wide).unwrap();
        let summary = r.failure_summary();
        assert!(
            !r.is_ready() && summary.contains("lid") && summary.contains("65536"),
            "{summary}"
        );
    }

    /// A VF whose node GUID already shows the new GUID while its port GUID (GID 0) and LID
    /// are still the old ones is not ready: that LID belongs to the old port GUID.
    #[test]
    fn a_new_node_guid_with_the_old_port_guid_is_not_ready() {
        let b = Bench::new(1);
        let root = HostRoot::new(b.root()).unwrap();
        let want: Guid = "02:00:00:00:00:00:00:07".parse().unwrap();
        std::fs::write(b.node_guid_file(0), format!("{want}\n")).unwrap();
        let f = inventory::read_function(&root, vf_addr(0)).unwrap();
        let exp = Expectations::default();
        let e = wait(
            &root,
            f.clone(),
            &exp,
            Duration::from_millis(30),
            Some(want),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("port GUID (GID 0) 0c42:a1ff:0018:0101")
                && msg.contains(&want.to_string()),
            "{msg}"
        );
        b.set_port(0, "gids/0", &format!("fe80:0000:0000:0000:{want}"));
        let r = wait(&root, f, &exp, Duration::from_millis(30), Some(want)).unwrap();
        assert!(r.is_ready());
    }

    /// The SM may write the LID at any moment, also just after an evaluation read it and
    /// before the gate starts polling. The gate sees it at the next poll, not at the
    /// deadline. The pause counts polls instead of sleeping: no clock in the test.
    #[test]
    fn a_lid_written_right_after_an_evaluation_is_seen_at_the_next_poll() {
        // 1: before the gate knows which files to poll; 2: after it has read them.
        for written_after in 1..=2 {
            let b = Bench::new(1);
            let root = HostRoot::new(b.root()).unwrap();
            b.set_port(0, "lid", "0x0");
            let f = inventory::read_function(&root, vf_addr(0)).unwrap();
            let (mut evaluations, mut pauses) = (0, 0);
            let r = wait_paced(
                &root,
                f,
                &Expectations::default(),
                Duration::from_secs(600),
                None,
                &mut || {
                    evaluations += 1;
                    if evaluations == written_after {
                        b.set_port(0, "lid", "0x7");
                    }
                },
                &mut |_| {
                    pauses += 1;
                    assert!(
                        pauses <= 10,
                        "LID written after evaluation {written_after}: still polling after \
                         {pauses} polls; the gate missed it and would wait for the deadline"
                    );
                },
            )
            .unwrap();
            assert!(r.is_ready(), "{r:?}");
            assert_eq!(
                evaluations,
                written_after + 1,
                "LID written after evaluation {written_after}"
            );
        }
    }
}
