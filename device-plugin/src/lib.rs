//! railvf-device-plugin: advertises SR-IOV RDMA VFs to kubelet with NUMA topology, health
//! from sysfs and GPU-rail-aware preferred allocation. The binary is a thin CLI over this.
#![forbid(unsafe_code)]

pub mod allocate;
pub mod cdi;
pub mod config;
pub mod devinfo;
pub mod events;
pub mod health;
pub mod http;
pub mod kubelet;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod serve;
pub mod service;
pub mod status;
