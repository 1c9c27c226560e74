//! RDMA readiness: the checks that tell a visible VF from a usable one. Each check
//! reports what it observed, so an error can say what was found, not only that it failed.

use std::fmt;

use serde::Serialize;

use crate::attr::LinkLayer;
use crate::host::HostRoot;
use crate::inventory::{DRIVER_MLX5, PciFunction};
use crate::ownership;

/// The readiness checks, by the names used in errors, logs, `inspect` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Driver,
    Rdma,
    Guid,
    LinkLayer,
    PortState,
    Lid,
    Sm,
    Ownership,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::Driver,
        Check::Rdma,
        Check::Guid,
        Check::LinkLayer,
        Check::PortState,
        Check::Lid,
        Check::Sm,
        Check::Ownership,
    ];

    /// What the device plugin's health is made of (a LID appears only after the CNI sets a GUID).
    pub const HEALTH: [Check; 4] = [
        Check::Driver,
        Check::Rdma,
        Check::LinkLayer,
        Check::PortState,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Check::Driver => "driver",
            Check::Rdma => "rdma",
            Check::Guid => "guid",
            Check::LinkLayer => "link_layer",
            Check::PortState => "port_state",
            Check::Lid => "lid",
            Check::Sm => "sm",
            Check::Ownership => "ownership",
        }
    }

    /// Checks that can still become true while we wait (the SM brings the port up and
    /// hands out LIDs); the others need an operator.
    pub fn can_become_true(&self) -> bool {
        matches!(self, Check::PortState | Check::Lid | Check::Sm)
    }

    /// What an operator does about a failure.
    pub fn fix(&self) -> &'static str {
        match self {
            Check::Driver => {
                "bind the VF to mlx5_core (echo <vf-pci> > /sys/bus/pci/drivers/mlx5_core/bind) and check dmesg for probe errors"
            }
            Check::Rdma => {
                "load mlx5_ib (modprobe mlx5_ib) and check dmesg: without it the VF has no RDMA device"
            }
            // mlx5 has no way to set a RoCE VF's GUID (the Ethernet PF has no
            // ndo_set_vf_guid): it derives the node GUID from the admin MAC at VF probe.
            Check::Guid => {
                "InfiniBand: assign a GUID to the VF: runtimeConfig.infinibandGUID or \"guid\" in the network config, or `railvf-device-plugin setup-vfs`; RoCE (Ethernet): mlx5 gives a VF its node GUID from its admin MAC when the VF driver binds: set an admin MAC on the PF (ip link set <pf> vf <n> mac <mac>), then unbind and bind the VF (echo <vf-pci> > /sys/bus/pci/drivers/mlx5_core/unbind, then .../bind)"
            }
            Check::LinkLayer => {
                "the port runs the wrong link layer: for InfiniBand set LINK_TYPE_P1=1 with mlxconfig and power-cycle; for RoCE set readiness.linkLayer to \"Ethernet\""
            }
            Check::PortState => {
                "the port is not up: check the PF with ibstat, the cable and the switch port; a VF follows its PF (policy Follow)"
            }
            Check::Lid => {
                "the Subnet Manager assigned no LID: check that opensm/UFM runs with virtualization enabled (virt_enabled 2) and that the VF GUID is set"
            }
            Check::Sm => {
                "no Subnet Manager is seen on this port: start opensm or UFM on the fabric"
            }
            Check::Ownership => {
                "a host network manager owns the VF: mark VFs unmanaged (systemd-networkd Unmanaged=yes, NetworkManager unmanaged-devices); see deploy/host"
            }
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable here (LID on Ethernet, ownership of a netdev that is in a pod).
    Skip,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub check: Check,
    pub status: Status,
    pub observed: String,
    pub expected: String,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.status == Status::Fail
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Fail => write!(
                f,
                "{}: found {}, expected {}",
                self.check, self.observed, self.expected
            ),
            Status::Pass => write!(f, "{}: ok ({})", self.check, self.observed),
            Status::Skip => write!(f, "{}: skipped ({})", self.check, self.observed),
        }
    }
}

/// What the VF should look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectations {
    pub link_layer: LinkLayer,
    /// IB only: require an SM-assigned LID.
    pub require_lid: bool,
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            link_layer: LinkLayer::InfiniBand,
            require_lid: true,
        }
    }
}

/// The outcomes of a set of checks on one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Readiness {
    pub outcomes: Vec<Outcome>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        !self.outcomes.iter().any(Outcome::failed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.failed())
    }

    pub fn outcome(&self, check: Check) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.check == check)
    }

    /// Only failures that cannot fix themselves: waiting for them is pointless.
    pub fn has_permanent_failure(&self) -> bool {
        self.failures().any(|o| !o.check.can_become_true())
    }

    /// `lid: found 0x0, expected …; sm: found …` — one clause per failed check.
    pub fn failure_summary(&self) -> String {
        self.failures()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Evaluates `checks` (in that order) on `f`, reading below `root`.
///
/// A failure is reported once, where it starts: when the set includes the check a
/// later one depends on (`driver` → `rdma` → port checks; `link_layer` → `lid`, `sm`),
/// the dependent checks are skipped with a pointer to it instead of failing too.
pub fn evaluate(
    root: &HostRoot,
    f: &PciFunction,
    exp: &Expectations,
    checks: &[Check],
) -> Readiness {
    let has = |c: Check| checks.contains(&c);
    let driver_ok = f.driver.as_deref() == Some(DRIVER_MLX5);
    let observed_ll = f.link_layer();
    let outcomes = checks
        .iter()
        .map(|&check| {
            let needs_rdma = matches!(
                check,
                Check::Guid | Check::LinkLayer | Check::PortState | Check::Lid | Check::Sm
            );
            if check == Check::Rdma && f.rdma.is_none() && has(Check::Driver) && !driver_ok {
                skip(
                    check,
                    "the VF has no mlx5_core driver: see driver",
                    expected(check, exp),
                )
            } else if needs_rdma
                && f.rdma.is_none()
                && (has(Check::Rdma) || (has(Check::Driver) && !driver_ok))
            {
                skip(check, "no RDMA device: see rdma", expected(check, exp))
            } else if matches!(check, Check::Lid | Check::Sm)
                && has(Check::LinkLayer)
                && observed_ll.is_some_and(|ll| ll != exp.link_layer)
            {
                skip(
                    check,
                    "the port runs another link layer: see link_layer",
                    expected(check, exp),
                )
            } else {
                evaluate_one(root, f, exp, check)
            }
        })
        .collect();
    Readiness { outcomes }
}

fn outcome(check: Check, pass: bool, observed: String, expected: &str) -> Outcome {
    Outcome {
        check,
        status: if pass { Status::Pass } else { Status::Fail },
        observed,
        expected: expected.to_string(),
    }
}

/// A check that cannot be made on this function, with why (the VF's RDMA device is out of
/// the host's sight in a pod's network namespace), in the wording of [`evaluate`]'s skips.
pub fn skipped(check: Check, why: &str, exp: &Expectations) -> Outcome {
    skip(check, why, expected(check, exp))
}

fn skip(check: Check, why: &str, expected: &str) -> Outcome {
    Outcome {
        check,
        status: Status::Skip,
        observed: why.to_string(),
        expected: expected.to_string(),
    }
}

fn evaluate_one(root: &HostRoot, f: &PciFunction, exp: &Expectations, check: Check) -> Outcome {
    let ib = exp.link_layer == LinkLayer::InfiniBand;
    let no_rdma = || {
        outcome(
            check,
            false,
            format!("no RDMA device under {}/infiniband", f.addr),
            expected(check, exp),
        )
    };
    match check {
        Check::Driver => {
            let observed = match &f.driver {
                Some(d) => format!("driver {d}"),
                None => "no driver bound".to_string(),
            };
            outcome(
                check,
                f.driver.as_deref() == Some(DRIVER_MLX5),
                observed,
                expected(check, exp),
            )
        }
        Check::Rdma => match &f.rdma {
            Some(r) => outcome(
                check,
                true,
                format!("RDMA device {}", r.name),
                expected(check, exp),
            ),
            None => no_rdma(),
        },
        Check::Guid => {
            let Some(rdma) = &f.rdma else {
                return no_rdma();
            };
            let node = rdma.node_guid.value().copied();
            let port = rdma
                .port1()
                .and_then(|p| p.gid0.value())
                .map(|g| g.interface_id());
            let node_ok = node.is_some_and(|g| g.is_assigned());
            // RoCE GIDs are derived from the MAC, not a GUID: only the node GUID counts there.
            let port_ok = !ib || port.is_some_and(|g| g.is_assigned());
            let port_desc = match rdma.port1() {
                Some(p) => p.gid0.describe(),
                None => "no port".into(),
            };
            outcome(
                check,
                node_ok && port_ok,
                format!(
                    "node_guid {}, port GID 0 {}",
                    rdma.node_guid.describe(),
                    port_desc
                ),
                expected(check, exp),
            )
        }
        Check::LinkLayer => {
            let Some(port) = f.port1() else {
                return no_rdma();
            };
            outcome(
                check,
                port.link_layer.value() == Some(&exp.link_layer),
                port.link_layer.describe(),
                expected(check, exp),
            )
        }
        Check::PortState => {
            let Some(port) = f.port1() else {
                return no_rdma();
            };
            let pass = port.state.value().is_some_and(|s| s.is_active())
                && port.phys_state.value().is_some_and(|s| s.is_link_up());
            outcome(
                check,
                pass,
                format!(
                    "state {}, phys_state {}",
                    port.state.describe(),
                    port.phys_state.describe()
                ),
                expected(check, exp),
            )
        }
        Check::Lid => {
            if !ib || !exp.require_lid {
                return skip(
                    check,
                    "not required for this link layer/config",
                    expected(check, exp),
                );
            }
            let Some(port) = f.port1() else {
                return no_rdma();
            };
            let pass = port.lid.value().is_some_and(|&l| l != 0 && l != 0xffff);
            let observed = match port.lid.value() {
                Some(l) => format!("{l:#x}"),
                None => port.lid.describe(),
            };
            outcome(check, pass, observed, expected(check, exp))
        }
        Check::Sm => {
            if !ib {
                return skip(check, "no subnet manager on Ethernet", expected(check, exp));
            }
            let Some(port) = f.port1() else {
                return no_rdma();
            };
            let pass = port.sm_lid.value().is_some_and(|&l| l != 0);
            let observed = match port.sm_lid.value() {
                Some(l) => format!("sm_lid {l:#x}"),
                None => format!("sm_lid {}", port.sm_lid.describe()),
            };
            outcome(check, pass, observed, expected(check, exp))
        }
        Check::Ownership => {
            let Some(netdev) = f.netdev() else {
                return skip(
                    check,
                    "no netdev in the host namespace",
                    expected(check, exp),
                );
            };
            let Some(&ifindex) = netdev.ifindex.value() else {
                return outcome(
                    check,
                    false,
                    format!(
                        "netdev {} ifindex {}",
                        netdev.name,
                        netdev.ifindex.describe()
                    ),
                    expected(check, exp),
                );
            };
            match ownership::host_owner(root, ifindex) {
                Ok(None) => outcome(
                    check,
                    true,
                    format!("{} unmanaged by the host", netdev.name),
                    expected(check, exp),
                ),
                Ok(Some(owner)) => outcome(
                    check,
                    false,
                    format!("{} (ifindex {ifindex}) managed by {owner}", netdev.name),
                    expected(check, exp),
                ),
                Err(e) => outcome(check, false, e.to_string(), expected(check, exp)),
            }
        }
    }
}

fn expected(check: Check, exp: &Expectations) -> &'static str {
    match check {
        Check::Driver => "driver mlx5_core",
        Check::Rdma => "an RDMA device (mlx5_ib bound)",
        Check::Guid => match exp.link_layer {
            LinkLayer::InfiniBand => "node and port GUIDs that are neither all-zero nor all-ones",
            LinkLayer::Ethernet => "a node GUID that is neither all-zero nor all-ones",
        },
        Check::LinkLayer => match exp.link_layer {
            LinkLayer::InfiniBand => "InfiniBand",
            LinkLayer::Ethernet => "Ethernet",
        },
        Check::PortState => "state 4: ACTIVE, phys_state 5: LinkUp",
        Check::Lid => "a LID assigned by the Subnet Manager (not 0x0 or 0xffff)",
        Check::Sm => "a Subnet Manager LID (sm_lid not 0x0)",
        Check::Ownership => {
            "no host network manager (systemd-networkd, NetworkManager) managing the netdev"
        }
    }
}
