//! GC (CNI 1.1): every attachment of this network that the runtime no longer lists in
//! `cni.dev/valid-attachments` is torn down (VF home, IPAM released, state removed); then
//! GC is forwarded to the IPAM plugin when it speaks 1.1.0.

use std::collections::HashSet;
use std::path::Path;

use crate::Ctx;
use crate::del;
use crate::error::{CniError, code};
use crate::ipam::{Call, Plugin};
use crate::netconf::NetConf;
use crate::state::{StateDir, StateError};
use crate::teardown::{self, Options};
use crate::version::Version;
use crate::vf;

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    // Below 1.1.0 GC is not defined: refused before anything is torn down.
    conf.version.require_at_least(Version::V1_1_0, "GC")?;
    let network = conf.require_name()?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" (or the older \"cni.dev/attachments\") in the network config",
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
            Err(StateError::Corrupt { why, .. }) => {
                if let Err(e) = unreadable(ctx, conf, network, &valid, &path, &why) {
                    errors.push(e);
                }
                continue;
            }
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if st.network != network || valid.contains(&st.key()) {
            continue;
        }
        // A VF another railvf is working on is left to the next GC: an ADD still running
        // may be of an attachment the runtime's list, made before that ADD began, cannot
        // name yet; a DEL removes the attachment itself.
        let Some(_lock) = ctx.state.try_lock_vf(ctx.root(), &st.vf)? else {
            crate::log_info!(
                "GC: VF {} is busy (an ADD or DEL in progress): {}/{} is left to the next GC",
                st.vf,
                st.container_id,
                st.ifname
            );
            continue;
        };
        // Re-read under the lock: a DEL may have just removed it. By its VF: the same
        // attachment may have a file on another VF (two ADDs of it raced), not ours to touch.
        let Some(st) = ctx.state.load_of(&st.vf, &st.container_id, &st.ifname)? else {
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
            ctx.state.remove_attachment(&st)?;
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

/// A state file that no longer parses (cut short by a crash or a power loss). Its name
/// still gives the VF and the attachment; a network salvaged from what is left tells whose
/// it is. A listed attachment's file, or another network's, is left to its own DEL. Else it
/// converges as DEL does; a file whose network is lost is only handled when that cannot
/// touch a live attachment of another network: when its VF is on the host or gone.
fn unreadable(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    network: &str,
    valid: &HashSet<(&str, &str)>,
    path: &Path,
    why: &str,
) -> Result<(), String> {
    let Some((vf, cid, ifname)) = StateDir::key_of(path) else {
        return Ok(());
    };
    if valid.contains(&(cid, ifname)) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    match del::salvage::<String>(&text, "network") {
        Some(n) if n != network => return Ok(()),
        Some(_) => {}
        None => {
            let home = !vf::exists(ctx.root(), &vf)
                || matches!(vf::find_in_host(ctx.root(), ctx.links, &vf), Ok(Some(_)));
            if !home {
                crate::log_warn!(
                    "GC: state {} is unreadable ({why}) and names no network; VF {vf} is not on the host: left for the DEL of {cid}/{ifname}",
                    path.display()
                );
                return Ok(());
            }
        }
    }
    crate::log_info!(
        "GC: tearing down stale attachment {cid}/{ifname} (VF {vf}, unreadable state)"
    );
    // No CNI_NETNS in GC: DEL's convergence takes the netns the file still names.
    del::unreadable(ctx, conf, cid, ifname, None, path, why)
}
