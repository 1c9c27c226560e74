//! Fault knobs and IB port states.

use std::fmt;
use std::str::FromStr;

use crate::error::SimError;

/// A fault of one PCI function, as a real host would show it in sysfs.
///
/// Each fault changes only the attributes listed on its variant; clearing it restores them.
/// A fault given for a **PF** applies to the PF and to every VF of it (what a physical-port,
/// firmware or host-configuration problem does on real hardware); a fault given for a VF
/// applies to that VF only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The subnet manager never assigns a LID: `ports/1/lid` stays `0x0`.
    LidZero,
    /// No subnet manager: `ports/1/sm_lid` is `0x0`.
    SmLidZero,
    /// Port down: `ports/1/state` `1: DOWN`, `ports/1/phys_state` `3: Disabled`.
    PortDown,
    /// All-zero GUIDs: `node_guid` `0000:0000:0000:0000`, `gids/0` with a zero port GUID.
    ZeroGuid,
    /// The port runs Ethernet (RoCE): `link_layer` `Ethernet`, PCI `class` `0x020000`,
    /// `lid` and `sm_lid` `0x0`, netdev `type` `1`. (Netdev names are kept.)
    EthFallback,
    /// No driver bound: no `driver` link, no `net/`, `infiniband/`, `infiniband_verbs/`,
    /// `infiniband_mad/`, no `/dev/infiniband/` nodes; a VF's real netdev (veth) is destroyed.
    Unbound,
    /// `mlx5_core` bound but no RDMA device (mlx5_ib not loaded): no `infiniband/`,
    /// `infiniband_verbs/`, `infiniband_mad/`, `/dev/infiniband/` nodes. The netdev stays.
    NoRdma,
    /// Firmware gives no NUMA node: `numa_node` `-1`, `local_cpulist` every CPU.
    NumaUnknown,
    /// systemd-networkd manages the netdev: `run/systemd/netif/links/<ifindex>` with
    /// `ADMIN_STATE=configured`, `OPER_STATE=routable`,
    /// `NETWORK_FILE=/etc/systemd/network/50-vf.network` (while the netdev is in the host).
    HostManaged,
    /// NetworkManager manages the netdev: `run/NetworkManager/devices/<ifindex>` with
    /// `[device]` / `managed=true` (while the netdev is in the host).
    NmManaged,
}

impl Fault {
    /// Every fault, in declaration order.
    pub const ALL: [Fault; 10] = [
        Fault::LidZero,
        Fault::SmLidZero,
        Fault::PortDown,
        Fault::ZeroGuid,
        Fault::EthFallback,
        Fault::Unbound,
        Fault::NoRdma,
        Fault::NumaUnknown,
        Fault::HostManaged,
        Fault::NmManaged,
    ];

    /// Command-line names, same order as [`Fault::ALL`].
    pub const NAMES: [&'static str; 10] = [
        "lid-zero",
        "sm-lid-zero",
        "port-down",
        "zero-guid",
        "eth-fallback",
        "unbound",
        "no-rdma",
        "numa-unknown",
        "host-managed",
        "nm-managed",
    ];

    /// The command-line name (`lid-zero`, …).
    pub fn name(self) -> &'static str {
        let i = Fault::ALL.iter().position(|f| *f == self).unwrap_or(0);
        Fault::NAMES[i]
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Fault {
    type Err = SimError;

    /// Accepts the kebab-case names (`lid-zero`), the variant names (`LidZero`) and
    /// `networkd` / `network-manager` as aliases.
    fn from_str(s: &str) -> Result<Self, SimError> {
        let norm: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let alias = match norm.as_str() {
            "networkd" | "systemdnetworkd" => Some(Fault::HostManaged),
            "networkmanager" | "nm" => Some(Fault::NmManaged),
            _ => None,
        };
        alias
            .or_else(|| {
                Fault::ALL
                    .into_iter()
                    .find(|f| f.name().replace('-', "") == norm)
            })
            .ok_or_else(|| SimError::UnknownFault(s.to_owned()))
    }
}

/// IB logical port state (`ports/1/state`), printed `"%d: %s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortState {
    /// `0: NOP`
    Nop,
    /// `1: DOWN`
    Down,
    /// `2: INIT` (physical link up, not configured by the SM)
    Init,
    /// `3: ARMED`
    Armed,
    /// `4: ACTIVE`
    Active,
    /// `5: ACTIVE_DEFER`
    ActiveDefer,
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            PortState::Nop => "0: NOP",
            PortState::Down => "1: DOWN",
            PortState::Init => "2: INIT",
            PortState::Armed => "3: ARMED",
            PortState::Active => "4: ACTIVE",
            PortState::ActiveDefer => "5: ACTIVE_DEFER",
        })
    }
}

/// IB physical port state (`ports/1/phys_state`), printed `"%u: %s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhysState {
    /// `1: Sleep`
    Sleep,
    /// `2: Polling` (no cable / no peer)
    Polling,
    /// `3: Disabled`
    Disabled,
    /// `4: PortConfigurationTraining`
    Training,
    /// `5: LinkUp`
    LinkUp,
    /// `6: LinkErrorRecovery`
    LinkErrorRecovery,
    /// `7: Phy Test`
    PhyTest,
}

impl fmt::Display for PhysState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            PhysState::Sleep => "1: Sleep",
            PhysState::Polling => "2: Polling",
            PhysState::Disabled => "3: Disabled",
            PhysState::Training => "4: PortConfigurationTraining",
            PhysState::LinkUp => "5: LinkUp",
            PhysState::LinkErrorRecovery => "6: LinkErrorRecovery",
            PhysState::PhyTest => "7: Phy Test",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_roundtrip() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>().unwrap(), f);
            assert_eq!(format!("{f:?}").parse::<Fault>().unwrap(), f);
        }
        assert_eq!("networkd".parse::<Fault>().unwrap(), Fault::HostManaged);
        assert!("bogus".parse::<Fault>().is_err());
    }

    #[test]
    fn states_print_like_the_kernel() {
        assert_eq!(PortState::Active.to_string(), "4: ACTIVE");
        assert_eq!(PortState::Down.to_string(), "1: DOWN");
        assert_eq!(PhysState::LinkUp.to_string(), "5: LinkUp");
        assert_eq!(PhysState::Disabled.to_string(), "3: Disabled");
    }
}
