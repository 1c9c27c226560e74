//! CNI spec versions railvf speaks, and the VERSION verb.

use std::fmt;

use serde_json::json;

use crate::error::{CniError, code};

/// A supported CNI spec version. Ordered, so "1.x or later" is a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version railvf accepts in a network configuration, oldest first.
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(&self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a version string; anything else is the spec's "incompatible version" (code 1).
    pub fn parse(s: &str) -> Result<Self, CniError> {
        SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "incompatible CNI version: the network config asks for cniVersion {:?}, railvf supports {}",
                        s.chars().take(32).collect::<String>(),
                        supported_list()
                    ),
                    "set \"cniVersion\" in the network config to one of the supported versions (1.0.0 or 1.1.0 for current runtimes)",
                )
            })
    }

    /// 1.0.0 dropped `ips[].version`.
    pub fn has_ip_version_field(&self) -> bool {
        *self < Version::V1_0_0
    }

    /// 1.1.0 added `interfaces[].mtu`, `pciID`, `socketPath` and route attributes.
    pub fn is_1_1(&self) -> bool {
        *self >= Version::V1_1_0
    }

    /// The spec's answer to a verb this config's version does not define (code 1, as the
    /// reference plugins' skeleton gives it): CHECK exists from 0.4.0 on, STATUS and GC from
    /// 1.1.0 on.
    pub fn require_at_least(&self, since: Version, verb: &str) -> Result<(), CniError> {
        if *self >= since {
            return Ok(());
        }
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{verb} is not defined for cniVersion {self}"),
            format!(
                "{verb} exists from cniVersion {since} on: set \"cniVersion\" to {since} or later in the network config"
            ),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(Version::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VERSION answer: always in the newest version, as the reference plugins do.
pub fn exec() -> String {
    json!({
        "cniVersion": Version::LATEST.as_str(),
        "supportedVersions": SUPPORTED.iter().map(Version::as_str).collect::<Vec<_>>(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_refuses_others_with_code_1() {
        assert_eq!(Version::parse("0.3.1").unwrap(), Version::V0_3_1);
        assert_eq!(Version::parse("1.1.0").unwrap(), Version::V1_1_0);
        for bad in ["0.2.0", "0.1.0", "1.2.0", "", "1.0"] {
            let e = Version::parse(bad).unwrap_err();
            assert_eq!(e.code, 1, "{bad}");
            assert!(e.msg.contains("1.1.0"), "{e}");
        }
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
        let e = Version::V0_3_1
            .require_at_least(Version::V0_4_0, "CHECK")
            .unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("CHECK") && e.msg.contains("0.3.1"), "{e}");
        assert!(
            Version::V0_4_0
                .require_at_least(Version::V0_4_0, "CHECK")
                .is_ok()
        );
        assert!(
            Version::V1_0_0
                .require_at_least(Version::V1_1_0, "GC")
                .is_err()
        );
    }

    #[test]
    fn version_answer_lists_everything() {
        let v: serde_json::Value = serde_json::from_str(&exec()).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
