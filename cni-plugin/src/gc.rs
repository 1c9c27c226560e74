//! GC (CNI 1.1): every attachment of this network that the runtime no longer lists in
//! `cni.dev/valid-attachments` is torn down (VF home, IPAM released, state removed); then
//! GC is forwarded to the IPAM plugin when it speaks 1.1.0.

use std::collections::HashSet;

use crate::Ctx;
use crate::error::{CniError, code};
use crate::ipam::{Call, Plugin};
use crate::netconf::NetConf;
use crate::teardown::{self, Options};

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    let network = conf.require_name()?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" in the network config",
            "the runtime lists the attachments still in use; without the list railvf cannot tell stale ones apart",
        )
    })?;
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut errors = Vec::new();
    let mut reaped = 0usize;
    for (path, entry) in ctx.state.list()? {
        let st = match entry {
            Ok(st) => st,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if st.network != network || valid.contains(&st.key()) {
            continue;
        }
        let _lock = ctx.state.lock_vf(ctx.root(), &st.vf)?;
        // Re-read under the lock: a DEL may have just removed it.
        let Some(st) = ctx.state.load(&st.container_id, &st.ifname)? else {
            continue;
        };
        crate::log_info!(
            "GC: tearing down stale attachment {}/{} (VF {})",
            st.container_id,
            st.ifname,
            st.vf
        );
        let report = teardown::converge(
            ctx,
            &st,
            Options {
                netns: None,
                ipam: true,
            },
        );
        if report.ok() {
            ctx.state.remove(&st.container_id, &st.ifname)?;
            reaped += 1;
        } else {
            errors.push(format!("{}: {}", path.display(), report.errors.join("; ")));
        }
    }
    crate::log_info!("GC: {reaped} stale attachment(s) of network {network} removed");

    if let Some(t) = &conf.ipam_type {
        let call = Call {
            command: "GC",
            container_id: None,
            netns: None,
            ifname: None,
            args: ctx.env.args.as_deref(),
            cni_path: &ctx.env.cni_path,
        };
        match Plugin::find(t, &ctx.env.cni_path) {
            Ok(p) => match p.speaks_1_1(&call) {
                Ok(true) => {
                    if let Err(e) = p.run(&call, &conf.raw) {
                        errors.push(e.to_string());
                    }
                }
                Ok(false) => crate::log_info!(
                    "IPAM plugin {t} predates CNI 1.1 (no GC); stale attachments were released one by one"
                ),
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::TEARDOWN_INCOMPLETE,
            format!("GC left work undone: {}", errors.join("; ")),
            "the state files of unfinished attachments are kept; the next GC or DEL retries",
        ))
    }
}
