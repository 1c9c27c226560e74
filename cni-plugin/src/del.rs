//! DEL: converge from any state. Succeeds when nothing is left to do (repeated DEL, DEL
//! without ADD, DEL after a failed or killed ADD, netns already gone); fails only when
//! something real is left undone, and then keeps the state file so the next DEL retries.

use crate::Ctx;
use crate::error::{CniError, code};
use crate::ipam::{Call, Plugin};
use crate::netconf::NetConf;
use crate::state::StateError;
use crate::teardown::{self, Options};
use crate::vf;

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    let cid = ctx.env.require_container_id()?;
    let ifname = ctx.env.require_ifname()?;
    let mut errors: Vec<String> = Vec::new();

    // IPAM is released even without state or netns: the runtime calls DEL after any ADD
    // failure, and IPAM plugins treat an unknown attachment as released.
    if let Some(t) = &conf.ipam_type {
        let call = Call {
            command: "DEL",
            container_id: Some(cid),
            netns: ctx.env.netns.as_deref(),
            ifname: Some(ifname),
            args: ctx.env.args.as_deref(),
            cni_path: &ctx.env.cni_path,
        };
        if let Err(e) = Plugin::find(t, &ctx.env.cni_path).and_then(|p| p.run(&call, &conf.raw)) {
            crate::log_warn!("{e}");
            errors.push(e.to_string());
        }
    }

    let st = match ctx.state.load(cid, ifname) {
        Ok(st) => st,
        Err(StateError::Corrupt { path, why }) => {
            // Unreadable: safe to drop only when the VF is visibly home.
            let home = conf.device.is_some_and(|d| {
                vf::find_in_host(ctx.root(), ctx.links, &d)
                    .ok()
                    .flatten()
                    .is_some()
            });
            if home {
                crate::log_warn!(
                    "removing unreadable state {} ({why}): VF is on the host",
                    path.display()
                );
                ctx.state.remove(cid, ifname)?;
                None
            } else {
                return Err(StateError::Corrupt { path, why }.into());
            }
        }
        Err(e) => return Err(e.into()),
    };

    if let Some(st) = st {
        let _lock = ctx.state.lock_vf(ctx.root(), &st.vf)?;
        // Another DEL may have finished while we waited for the lock.
        if let Some(st) = ctx.state.load(cid, ifname)? {
            let report = teardown::converge(
                ctx,
                &st,
                Options {
                    netns: ctx.env.netns.as_deref(),
                    ipam: false,
                },
            );
            if report.ok() {
                ctx.state.remove(cid, ifname)?;
                crate::log_info!("VF {} returned to the host as {}", st.vf, st.host.name);
            } else {
                errors.extend(report.errors);
            }
        }
    } else {
        crate::log_debug!("no state for {cid}/{ifname}: nothing to return");
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::TEARDOWN_INCOMPLETE,
            format!(
                "DEL of {cid}/{ifname} left work undone: {}",
                errors.join("; ")
            ),
            format!(
                "the state file in {} is kept and the next DEL retries; fix the cause above (docs/cni.md, \"DEL\")",
                ctx.state.path().display()
            ),
        ))
    }
}
