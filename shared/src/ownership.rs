//! Host network managers that may own a VF netdev. A VF must be visible on the host but
//! managed by nobody there: when systemd-networkd or NetworkManager configures it, the
//! CNI's move and IPAM race the host (the DGX B200 write-up's "Host owns VF, Pod loses net1").

use std::fmt;

use serde::Serialize;

use crate::host::{self, HostError, HostRoot};

/// Who manages a netdev on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "manager", rename_all = "kebab-case")]
pub enum Owner {
    SystemdNetworkd {
        admin_state: String,
        network_file: Option<String>,
    },
    NetworkManager {
        state_file: String,
    },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::SystemdNetworkd {
                admin_state,
                network_file,
            } => {
                write!(f, "systemd-networkd (ADMIN_STATE={admin_state}")?;
                if let Some(n) = network_file {
                    write!(f, ", NETWORK_FILE={n}")?;
                }
                f.write_str(")")
            }
            Owner::NetworkManager { state_file } => {
                write!(f, "NetworkManager (managed=true in {state_file})")
            }
        }
    }
}

/// networkd admin states in which it has claimed, or is about to claim, the link.
const NETWORKD_CLAIMING: &[&str] = &[
    "pending",
    "initialized",
    "configuring",
    "configured",
    "failed",
];

/// Looks for a host manager of the netdev with `ifindex`: systemd-networkd's
/// `/run/systemd/netif/links/<ifindex>` and NetworkManager's `/run/NetworkManager/devices/<ifindex>`.
pub fn host_owner(root: &HostRoot, ifindex: u32) -> Result<Option<Owner>, HostError> {
    let networkd = root
        .join("run/systemd/netif/links")
        .join(ifindex.to_string());
    if let Some(text) = host::read_optional_attr(&networkd)? {
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        if let Some(state) = value("ADMIN_STATE")
            && NETWORKD_CLAIMING.contains(&state.as_str())
        {
            return Ok(Some(Owner::SystemdNetworkd {
                admin_state: state,
                network_file: value("NETWORK_FILE"),
            }));
        }
    }
    let nm = root
        .join("run/NetworkManager/devices")
        .join(ifindex.to_string());
    if let Some(text) = host::read_optional_attr(&nm)? {
        let mut in_device = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_device = line == "[device]";
            } else if in_device && line.replace(' ', "") == "managed=true" {
                return Ok(Some(Owner::NetworkManager {
                    state_file: nm.display().to_string(),
                }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networkd_and_network_manager_claims() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path()).unwrap();
        assert_eq!(host_owner(&root, 7).unwrap(), None);

        let links = dir.path().join("run/systemd/netif/links");
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(
            links.join("7"),
            "# This is private data. Do not parse.\nADMIN_STATE=unmanaged\nOPER_STATE=off\n",
        )
        .unwrap();
        assert_eq!(host_owner(&root, 7).unwrap(), None);
        std::fs::write(links.join("7"), "ADMIN_STATE=configured\nOPER_STATE=routable\nNETWORK_FILE=/etc/systemd/network/50-vf.network\n").unwrap();
        let o = host_owner(&root, 7).unwrap().unwrap();
        assert_eq!(
            o.to_string(),
            "systemd-networkd (ADMIN_STATE=configured, NETWORK_FILE=/etc/systemd/network/50-vf.network)"
        );

        let nm = dir.path().join("run/NetworkManager/devices");
        std::fs::create_dir_all(&nm).unwrap();
        std::fs::write(nm.join("9"), "[device]\nmanaged=false\n").unwrap();
        assert_eq!(host_owner(&root, 9).unwrap(), None);
        std::fs::write(
            nm.join("9"),
            "[device]\nmanaged=true\nconnection-uuid=1234\n",
        )
        .unwrap();
        assert!(matches!(
            host_owner(&root, 9).unwrap(),
            Some(Owner::NetworkManager { .. })
        ));
    }
}
