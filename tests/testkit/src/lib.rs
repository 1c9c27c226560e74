//! Test helpers shared by more than one test suite. Only tests depend on this crate.
#![forbid(unsafe_code)]

pub mod cni;
pub mod device_plugin;
pub mod ip;
