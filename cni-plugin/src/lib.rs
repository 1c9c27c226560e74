//! railvf, the CNI plugin: attaches an SR-IOV InfiniBand/RoCE VF to a pod and returns only
//! when it is RDMA-ready. `main.rs` is the command line; the verbs live here so they can be
//! tested against [`net::fake::FakeLinks`] without root.
#![forbid(unsafe_code)]

pub mod add;
pub mod check;
pub mod del;
pub mod env;
pub mod error;
pub mod events;
pub mod faultpoint;
pub mod gate;
pub mod gc;
pub mod guid;
pub mod ipam;
pub mod log;
pub mod net;
pub mod netconf;
pub mod podresources;
pub mod rail;
pub mod result;
pub mod state;
pub mod status;
pub mod teardown;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
pub mod version;
pub mod vf;

use railvf_host::HostRoot;

use crate::env::Env;
use crate::net::LinkOps;
use crate::state::StateDir;

/// What every verb works with: the validated environment, the host root, the state
/// directory and the kernel's networking.
pub struct Ctx<'a> {
    pub env: &'a Env,
    pub state: StateDir,
    pub links: &'a dyn LinkOps,
}

impl<'a> Ctx<'a> {
    pub fn new(env: &'a Env, links: &'a dyn LinkOps) -> Self {
        Self {
            state: StateDir::new(env.state_dir.clone()),
            env,
            links,
        }
    }

    pub fn root(&self) -> &HostRoot {
        &self.env.host_root
    }
}
