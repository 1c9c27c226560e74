//! DEL: converge from any state. Succeeds when nothing is left to do (repeated DEL, DEL
//! without ADD, DEL after a failed or killed ADD, netns already gone); fails only when
//! something real is left undone, and then keeps the state file so the next DEL retries.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::Ctx;
use crate::error::{CniError, code};
use crate::ipam::{Call, Plugin};
use crate::netconf::NetConf;
use crate::state::{Attachment, HostLink, SCHEMA, StateError};
use crate::teardown::{self, Options};
use crate::vf;

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    let cid = ctx.env.require_container_id()?;
    let ifname = ctx.env.require_ifname()?;
    let mut errors: Vec<String> = Vec::new();
    // IPAM is released even without state or netns (the runtime calls DEL after any ADD
    // failure, and IPAM plugins treat an unknown attachment as released); with state, under
    // the VF's lock, so an ADD of this attachment still running (its runtime timed out and
    // sent DEL) cannot allocate after the release.
    let mut released = false;
    let mut release = |errors: &mut Vec<String>| {
        if !std::mem::replace(&mut released, true) {
            release_ipam(ctx, conf, cid, ifname, errors);
        }
    };

    let mut kept = false;
    // The config's deviceID names the VF, and with it the state file: lock that VF and
    // read its file once. Otherwise (no deviceID, one that names another VF, a file that
    // does not parse) the listing finds the file, and it is read again under its VF's lock
    // in case another DEL finished meanwhile. (A lock that cannot be taken here only sends
    // DEL the long way: with nothing to return, DEL must still succeed.)
    let mut done = false;
    if let Some(d) = conf.device
        && let Ok(_lock) = ctx.state.lock_vf(ctx.root(), &d)
    {
        match ctx.state.load_of(&d, cid, ifname) {
            Ok(Some(st)) => {
                crate::log::step("lock");
                // IPAM first, while the pod's interface still exists: a DHCP release is
                // sent through it.
                release(&mut errors);
                kept = return_home(ctx, conf, &st, &mut errors)?;
                done = true;
            }
            // An ADD killed inside its first save leaves only the temporary file: not
            // worth failing a DEL that has nothing else to do.
            Ok(None) => {
                if let Err(e) = ctx.state.remove_interrupted_save(&d, cid, ifname) {
                    crate::log_warn!("{e}");
                }
            }
            Err(StateError::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !done {
        let st = match ctx.state.load(cid, ifname) {
            Ok(st) => st,
            Err(StateError::Corrupt { path, why }) => {
                // Unreadable (cut short, overwritten): converge by PCI address from what is
                // left of it and from where the VF is now.
                let netns = ctx.env.netns.as_deref();
                if let Err(e) = unreadable(ctx, conf, cid, ifname, netns, &path, &why) {
                    errors.push(e);
                    kept = true;
                }
                None
            }
            Err(e) => return Err(e.into()),
        };
        match st {
            Some(st) => {
                let _lock = ctx.state.lock_vf(ctx.root(), &st.vf)?;
                crate::log::step("lock");
                if let Some(st) = ctx.state.load_of(&st.vf, cid, ifname)? {
                    release(&mut errors);
                    kept = return_home(ctx, conf, &st, &mut errors)?;
                }
            }
            None => crate::log_debug!("no state for {cid}/{ifname}: nothing to return"),
        }
    }
    release(&mut errors);

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::TEARDOWN_INCOMPLETE,
            format!(
                "DEL of {cid}/{ifname} left work undone: {}",
                errors.join("; ")
            ),
            if kept {
                format!(
                    "the state file in {} is kept and the next DEL retries; fix the cause above (docs/cni.md, \"DEL\")",
                    ctx.state.path().display()
                )
            } else {
                "the VF is on the host; the next DEL retries the rest (the IPAM release); fix the cause above (docs/cni.md, \"DEL\")".to_string()
            },
        ))
    }
}

/// IPAM DEL with DEL's own config; a failure is collected, DEL goes on.
fn release_ipam(ctx: &Ctx<'_>, conf: &NetConf, cid: &str, ifname: &str, errors: &mut Vec<String>) {
    let Some(t) = &conf.ipam_type else {
        return;
    };
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
    crate::log::step("ipam");
}

/// Returns the VF of `st` to the host (its lock held by the caller) and removes the state
/// once nothing is left; `Ok(true)` when the state is kept for the next DEL.
fn return_home(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    st: &Attachment,
    errors: &mut Vec<String>,
) -> Result<bool, CniError> {
    let report = teardown::converge(
        ctx,
        st,
        Options {
            netns: ctx.env.netns.as_deref(),
            // IPAM ADD ran with the config ADD recorded: when DEL's own has no usable
            // `ipam` (edited since, or refused), the release goes by the recorded one.
            ipam: conf.ipam_type.is_none(),
        },
    );
    crate::log::step("teardown");
    if report.ok() {
        ctx.state.remove_attachment(st)?;
        crate::log_info!("VF {} returned to the host as {}", st.vf, st.host.name);
        Ok(false)
    } else {
        errors.extend(report.errors);
        Ok(true)
    }
}

/// DEL (or GC) of an attachment whose state file cannot be parsed. The VF is the one the
/// file is named after (else `deviceID`); its interface is `ifname` in `netns` (else in the
/// netns the file still names), or it is already back in the host. What the file still holds (the host name, MTU, GUID to
/// restore) is salvaged; what it does not is said in the log. The file is removed once the
/// VF is in the host namespace, or belongs to another attachment now; otherwise it is kept
/// and the error names what was found.
pub(crate) fn unreadable(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    cid: &str,
    ifname: &str,
    netns: Option<&Path>,
    path: &Path,
    why: &str,
) -> Result<(), String> {
    let root = ctx.root();
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.get(..12))
        .and_then(|a| a.parse::<railvf_host::PciAddr>().ok());
    let Some(addr) = named.or(conf.device) else {
        return Err(format!(
            "state {} is unreadable ({why}) and names no VF; no deviceID in the config either",
            path.display()
        ));
    };
    if let (Some(n), Some(d)) = (named, conf.device)
        && n != d
    {
        crate::log_warn!("deviceID {d} differs from the VF {n} the state file names: using {n}");
    }
    let _lock = ctx.state.lock_vf(root, &addr).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let host: Option<HostLink> = salvage(&text, "host");
    crate::log_warn!(
        "state {} is unreadable ({why}; {} bytes): converging VF {addr} by PCI address; salvaged: {}",
        path.display(),
        bytes.len(),
        host.as_ref()
            .map(|h| format!("host name {}", h.name))
            .unwrap_or_else(|| "nothing".into())
    );
    let gone = |what: &str| {
        crate::log_warn!("{what}: removing unreadable state {}", path.display());
        ctx.state
            .remove_path(path)
            .and_then(|()| ctx.state.remove_interrupted_save(&addr, cid, ifname))
            .map_err(|e| e.to_string())
    };
    if !vf::exists(root, &addr) {
        return gone(&format!("VF {addr} no longer exists on this host"));
    }
    // An ADD after a crash took the VF over (it passes over an unreadable file of another
    // attachment): this attachment no longer has a VF to return.
    let owner = ctx
        .state
        .list_where(|v, _| *v == addr)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find_map(|(p, a)| a.ok().filter(|_| p != path));
    if let Some(o) = owner {
        return gone(&format!(
            "VF {addr} belongs to attachment {}/{} now",
            o.container_id, o.ifname
        ));
    }
    let found = vf::find_in_host(root, ctx.links, &addr).map_err(|e| e.to_string())?;
    // With `rdmaIsolation` the netdev can be on the host while the RDMA device is still in
    // the pod (an InfiniBand VF's ADD killed between the two moves: udev may even have
    // given the re-created netdev its old name): only an RDMA device the host's sysfs
    // shows is home.
    let rdma_device: Option<String> = salvage(&text, "rdmaDevice");
    let rdma_home = rdma_device
        .as_ref()
        .is_none_or(|d| vf::rdma_device(root, &addr).as_ref() == Some(d));
    // What the file still says ADD changed (the GUID, the VF settings, the MTU) is restored
    // by the teardown below, even when the VF is already home.
    let guid: Option<crate::state::GuidChange> = salvage(&text, "guid");
    let vf_settings: Option<crate::state::VfChange> = salvage(&text, "vfSettings");
    if let Some(l) = &found
        && host
            .as_ref()
            .is_none_or(|h| h.name == l.name && (h.mtu == 0 || h.mtu == l.mtu))
        && rdma_home
        && guid.is_none()
        && vf_settings.is_none()
    {
        return gone(&format!("VF {addr} is on the host as {}", l.name));
    }
    let v = vf::resolve(root, addr).map_err(|e| e.to_string())?;
    // The pod's interface CNI_IFNAME in CNI_NETNS is this attachment's (the runtime's
    // contract); with no netns left, the kernel has returned the VF to the host.
    // DEL may come without CNI_NETNS (the spec allows it): the file's own record of the
    // pod's netns still reaches what is left there (an RDMA device with rdmaIsolation).
    let salvaged_netns: Option<PathBuf> = salvage(&text, "netns");
    let ns = netns.or(salvaged_netns.as_deref()).filter(|p| p.exists());
    let in_pod = ns.and_then(|p| {
        ctx.links
            .link_by_name(&crate::net::Netns::path(p), ifname)
            .ok()
            .flatten()
    });
    match (&in_pod, &found) {
        (Some(l), _) => crate::log_warn!(
            "found VF {addr} as {} (ifindex {}) in {}",
            l.name,
            l.ifindex,
            ns.unwrap_or(Path::new("?")).display()
        ),
        (None, Some(l)) => crate::log_warn!("found VF {addr} on the host as {}", l.name),
        (None, None) => crate::log_warn!(
            "VF {addr} is neither {ifname} in {} nor on the host (yet): waiting for it",
            ns.unwrap_or(Path::new("(no netns)")).display()
        ),
    }
    let current = in_pod.as_ref().or(found.as_ref());
    let host = host.unwrap_or_else(|| {
        let mut name = current
            .map(|l| l.name.clone())
            .unwrap_or_else(|| ifname.to_string());
        // Taken in the host (another VF came home under the same pod name): the kernel's
        // own fallback when a netns dies.
        if let Some(l) = current
            && in_pod.is_some()
            && let Ok(Some(_)) = ctx.links.link_by_name(&crate::net::Netns::Host, &name)
        {
            name = format!("dev{}", l.ifindex);
        }
        crate::log_warn!(
            "the VF's host name is lost with the state: it stays {name} (rename it, or rebind the VF's driver for the udev name); its MTU and GUID are left as they are"
        );
        HostLink {
            name,
            ifindex: 0,
            mtu: 0,
            mac: current.map(|l| l.mac.clone()).unwrap_or_default(),
            up: false,
        }
    });
    let st = Attachment {
        schema: SCHEMA,
        network: conf.name.clone().unwrap_or_default(),
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        netns: ns.map(Path::to_path_buf),
        vf: addr,
        pf: v.pf,
        vf_index: v.index,
        host,
        guid,
        vf_settings,
        moving: salvage(&text, "moving"),
        pod_ifindex: in_pod.as_ref().map(|l| l.ifindex),
        rdma_device,
        ipam: false,
        ipam_called: false,
        netconf: String::new(),
        cni_args: None,
        created_unix: 0,
    };
    let report = teardown::converge(
        ctx,
        &st,
        Options {
            netns: ns,
            ipam: false,
        },
    );
    if report.ok() {
        crate::log_warn!(
            "VF {addr} converged without its state: {}",
            report.done.join(", ")
        );
        gone(&format!(
            "VF {addr} is back on the host as {}",
            st.host.name
        ))
    } else {
        Err(format!(
            "state {} is unreadable ({why}) and VF {addr} could not be returned: {}",
            path.display(),
            report.errors.join("; ")
        ))
    }
}

/// The top-level field `key` of a pretty-printed state file that may be cut short: found
/// by its position (two-space indent), parsed alone. `None` when it is absent, cut, `null`
/// or malformed.
pub(crate) fn salvage<T: DeserializeOwned>(text: &str, key: &str) -> Option<T> {
    let pattern = format!("\n  \"{key}\": ");
    let start = text.find(&pattern)? + pattern.len();
    let rest = &text[start..];
    // The value ends at the first `,` or newline outside strings and brackets.
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    let mut end = None;
    for (i, c) in rest.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' | '\n' if depth == 0 => {
                end = Some(i);
                break;
            }
            _ => {}
        }
        if depth < 0 {
            end = Some(i);
            break;
        }
    }
    serde_json::from_str(&rest[..end?]).ok()
}

#[cfg(test)]
mod tests {
    use super::salvage;
    use crate::state::{GuidChange, HostLink};

    #[test]
    fn salvages_fields_of_a_state_file_cut_short() {
        let mut a = crate::state::sample("c1", "net1", "0000:18:00.1");
        a.guid = Some(GuidChange {
            method: crate::state::GuidMethod::OfedSysfs,
            previous: None,
            previous_port: None,
            target: railvf_host::Guid(0x1122),
        });
        a.netconf = r#"{"guid": {"x": 1}, "host": 3}"#.into();
        let full = String::from_utf8(serde_json::to_vec_pretty(&a).unwrap()).unwrap();
        assert_eq!(salvage::<HostLink>(&full, "host"), Some(a.host.clone()));
        assert_eq!(salvage::<GuidChange>(&full, "guid"), a.guid);
        assert_eq!(salvage::<u32>(&full, "vfIndex"), Some(0));
        // Cut in the middle of the host object: nothing from it; what came before is there.
        let cut = &full[..full.find("\"mtu\"").unwrap()];
        assert_eq!(salvage::<HostLink>(cut, "host"), None);
        assert_eq!(salvage::<String>(cut, "ifname").as_deref(), Some("net1"));
        for bad in ["", "{", "\0\0\0", "{\n  \"host\": {\"name\": 5},\n"] {
            assert_eq!(salvage::<HostLink>(bad, "host"), None, "{bad:?}");
        }
    }
}
