//! railvf-device-plugin: advertises SR-IOV RDMA VFs to kubelet with NUMA topology, health
//! from sysfs and GPU-rail-aware preferred allocation. The binary is a thin CLI over this.
#![forbid(unsafe_code)]

pub mod allocate;
pub mod config;
pub mod health;
pub mod kubelet;
pub mod pool;
pub mod serve;
pub mod service;
