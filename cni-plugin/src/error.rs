//! The CNI error object and railvf's error codes.
//!
//! Every module has its own `thiserror` enum; each converts into a [`CniError`] that carries
//! the spec code. `msg` says what was expected and what was found; `details` says what to do.

use std::fmt;

use serde_json::json;

use crate::version::Version;

/// Error codes: the CNI spec's (1–99) and railvf's own (100+), documented in docs/cni.md.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variable (CNI_COMMAND, CNI_CONTAINERID, …).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (state directory, sysfs).
    pub const IO: u32 = 5;
    /// Failed to decode content (the network configuration is not JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the VF is not RDMA-ready (yet).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot work on this node.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot work and existing attachments may be damaged.
    pub const NOT_AVAILABLE_DAMAGED: u32 = 51;
    /// The device is not a usable VF (not a VF, not a ConnectX VF, unknown PCI address).
    pub const BAD_DEVICE: u32 = 100;
    /// The VF is attached to another live attachment.
    pub const VF_BUSY: u32 = 101;
    /// The VF's netdev is not in the host network namespace.
    pub const VF_NOT_IN_HOST: u32 = 102;
    /// A kernel networking operation failed (netlink, RDMA netlink).
    pub const KERNEL: u32 = 103;
    /// The IPAM plugin could not be run or gave an unusable answer.
    pub const IPAM: u32 = 104;
    /// Setting the VF GUID or rebinding its driver failed.
    pub const GUID: u32 = 105;
    /// DEL/GC/rollback could not undo everything; the state file is kept for a retry.
    pub const TEARDOWN_INCOMPLETE: u32 = 106;
    /// CHECK found the attachment different from what ADD returned.
    pub const CHECK_MISMATCH: u32 = 107;
}

/// A CNI error, printed on stdout as the spec's error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Appends a sentence to `details` (e.g. what rollback did or could not do).
    pub fn with_detail(mut self, more: impl AsRef<str>) -> Self {
        let more = more.as_ref();
        if !more.is_empty() {
            if !self.details.is_empty() {
                self.details.push_str(" | ");
            }
            self.details.push_str(more);
        }
        self
    }

    /// The spec's error object, in `version` (the config's, or the newest when unknown).
    pub fn to_json(&self, version: Version) -> String {
        json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[code {}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_spec_fields() {
        let e = CniError::new(code::TRY_AGAIN, "lid: found 0x0", "check opensm");
        let v: serde_json::Value = serde_json::from_str(&e.to_json(Version::V1_1_0)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "lid: found 0x0");
        assert_eq!(v["details"], "check opensm");
        let e = e.with_detail("rolled back");
        assert_eq!(e.details, "check opensm | rolled back");
    }
}
