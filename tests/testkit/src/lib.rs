//! Test helpers shared by more than one test suite. Only tests depend on this crate.
#![forbid(unsafe_code)]

pub mod cni;
pub mod device_plugin;
pub mod ip;
pub mod podman;

/// Fails loudly when a tool the test needs is missing: a skipped check must not pass.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: install the Debian package `{package}` (see README: test prerequisites)"
    );
}
