//! Errors of the simulator library.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong building or driving a simulated node.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A topology file is not valid JSON for the schema.
    #[error("topology {origin}: {source}")]
    TopologyJson {
        /// File or name the JSON came from.
        origin: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A topology parses but is inconsistent (duplicate addresses, bad chains, ...).
    #[error("topology {origin}: {message}")]
    Topology {
        /// File or name the topology came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A string is not a PCI address `dddd:bb:dd.f`.
    #[error("invalid PCI address {0:?}: expected dddd:bb:dd.f in hex")]
    BadAddress(String),
    /// A PCI address that the simulated node does not have (or not of the needed kind).
    #[error("{addr}: {why}")]
    UnknownDevice {
        /// The address asked for.
        addr: String,
        /// e.g. "no such VF in the simulated node".
        why: &'static str,
    },
    /// A build option or argument is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A fault name that [`crate::Fault`]'s parser does not know.
    #[error("unknown fault {0:?} (known: {known})", known = crate::Fault::NAMES.join(", "))]
    UnknownFault(String),
    /// Filesystem error on the fixture tree.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink {what}: {source}")]
    Netlink {
        /// What the sim was doing.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// An external command (`ip netns …`) failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        message: String,
    },
    /// A `wait_for` condition did not become true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the sim waited.
        timeout: Duration,
    },
    /// The operation needs root (netlink link creation, namespaces).
    #[error("{0} needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")]
    NeedsRoot(&'static str),
}

/// Result alias of the sim library.
pub type Result<T, E = SimError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> SimError {
    let path = path.into();
    move |source| SimError::Io { path, source }
}

pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SimError {
    let what = what.into();
    move |source| SimError::Netlink { what, source }
}
