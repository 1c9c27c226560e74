//! Converging an attachment back to "VF on the host, as before": shared by DEL, GC, the
//! rollback of a failed ADD, and ADD taking over a stale attachment.
//!
//! Works from the recorded facts, not from how far ADD got, and keeps going after an error
//! (like netavark's teardown), collecting every problem. The VF is found wherever it is:
//! in the pod netns under the pod name (or, after a half-done move, its host name), or back
//! in the host — where the kernel puts it under the pod name or a `devN` name when the netns
//! is destroyed, or where IPoIB re-creates an InfiniBand VF's netdev under a kernel name
//! (`ibN`) when its RDMA device comes home — found there by PCI address through sysfs.

use std::path::Path;
use std::time::Duration;

use crate::Ctx;
use crate::guid;
use crate::ipam::{Call, Plugin};
use crate::net::{Link, LinkOps, NetError, Netns, VfSettings, parse_mac};
use crate::netconf::NetConf;
use crate::state::Attachment;
use crate::vf::{self, VfId};

/// How long to wait for the VF netdev to show up in the host namespace (the kernel returns
/// it asynchronously when a netns is destroyed; a rebind re-probes it).
pub const REAPPEAR_WAIT: Duration = Duration::from_secs(10);

/// What a teardown did and could not do.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn fail(&mut self, e: impl Into<String>) {
        let e = e.into();
        crate::log_warn!("teardown: {e}");
        self.errors.push(e);
    }

    fn did(&mut self, d: impl Into<String>) {
        let d = d.into();
        crate::log_debug!("teardown: {d}");
        self.done.push(d);
    }

    /// One line for an error's `details`.
    pub fn summary(&self) -> String {
        if self.errors.is_empty() {
            format!("rolled back: {}", self.done.join(", "))
        } else {
            format!(
                "rollback incomplete, DEL will retry: {}",
                self.errors.join("; ")
            )
        }
    }
}

/// Options of one teardown.
pub struct Options<'a> {
    /// The netns the caller knows (`CNI_NETNS`); the recorded one is used when absent.
    pub netns: Option<&'a Path>,
    /// Run IPAM DEL with the recorded config (rollback, GC, a DEL whose own config has no
    /// usable `ipam`); otherwise DEL runs its own.
    pub ipam: bool,
}

fn mac_eq(a: &str, b: &str) -> bool {
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// Is `l` (seen in the pod netns) the attachment's VF?
fn is_ours(l: &Link, st: &Attachment) -> bool {
    if st.pod_ifindex == Some(l.ifindex) {
        return true;
    }
    let moving = st.moving.as_ref();
    if mac_eq(&l.mac, &st.host.mac) || moving.is_some_and(|m| mac_eq(&l.mac, &m.mac)) {
        return true;
    }
    // Same ifindex as on the host (the kernel keeps it when free) and one of our names.
    let idx_match = l.ifindex == st.host.ifindex || moving.is_some_and(|m| m.ifindex == l.ifindex);
    let name_match =
        l.name == st.ifname || l.name == st.host.name || moving.is_some_and(|m| m.name == l.name);
    idx_match && name_match
}

/// Finds the VF in the pod netns.
fn locate_in_netns(
    links: &dyn LinkOps,
    ns: &Netns,
    st: &Attachment,
) -> Result<Option<Link>, NetError> {
    let mut names = vec![st.ifname.as_str(), st.host.name.as_str()];
    if let Some(m) = &st.moving {
        names.push(&m.name);
    }
    for name in names {
        match links.link_by_name(ns, name) {
            Ok(Some(l)) if is_ours(&l, st) => return Ok(Some(l)),
            Ok(_) | Err(NetError::NoSuchLink { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut idx = vec![st.host.ifindex];
    idx.extend(st.pod_ifindex);
    idx.extend(st.moving.as_ref().map(|m| m.ifindex));
    for i in idx {
        match links.link_by_index(ns, i) {
            Ok(Some(l)) if is_ours(&l, st) => return Ok(Some(l)),
            Ok(_) | Err(NetError::NoSuchLink { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Neither MAC nor ifindex recorded: the config's `mac` is on the netdev, and its host
    // ifindex was taken in the pod, so the kernel gave it another. Its parent device, the
    // VF, still says whose it is.
    vf::find_in_netns(links, ns, &st.vf)
}

/// The netns to look in: the caller's, else the recorded one; `None` when it is gone.
fn usable_netns(opts: &Options<'_>, st: &Attachment) -> Option<Netns> {
    let p = opts.netns.or(st.netns.as_deref())?;
    p.exists().then(|| Netns::path(p))
}

/// Brings the attachment's VF back to the host as it was. Never stops at the first error.
pub fn converge(ctx: &Ctx<'_>, st: &Attachment, opts: Options<'_>) -> Report {
    let mut r = Report::default();
    let links = ctx.links;
    let root = ctx.root();
    let id = VfId {
        addr: st.vf,
        pf: st.pf,
        index: st.vf_index,
    };
    let ns = usable_netns(&opts, st);

    // 1. IPAM first, while the pod's interface still exists (DHCP release needs it).
    if opts.ipam && st.ipam {
        ipam_del(ctx, st, ns.as_ref(), &mut r);
    }

    // 2. RDMA device back (when the netns is gone the kernel returns it by itself). For an
    // InfiniBand VF this unregisters its netdev wherever it is (in the pod, or on the host
    // after an ADD killed between its RDMA and netdev moves) and IPoIB registers a new one
    // in the host (`rdma_dev_change_netns()`): step 3 then finds nothing in the pod, and
    // step 5 finds the new one by PCI address and gives it its name back. That holds
    // whatever state ADD or an earlier DEL left: the RDMA device already home answers
    // "no such device" here, and the netdev is then wherever the kernel left it.
    if let (Some(dev), Some(ns)) = (&st.rdma_device, &ns) {
        match links.move_rdma_device(dev, ns, &Netns::Host) {
            Ok(()) => r.did(format!("RDMA device {dev} back to the host")),
            // Not there, or no exclusive-mode RDMA here: it cannot have moved.
            Err(NetError::NoSuchLink { .. } | NetError::Unsupported { .. }) => {}
            // Not a usable netns any more: the kernel returns the device when it dies.
            Err(NetError::Netns { .. }) => {}
            Err(e) => r.fail(format!("moving RDMA device {dev} back to the host: {e}")),
        }
    }

    // 3. The netdev back into the host namespace.
    let vf_exists = vf::exists(root, &st.vf);
    // The VF's netdev in the host, once known (from the move's answer, else from sysfs).
    let mut home: Option<Link> = None;
    // The move back failed with the VF seen where it is (still in the pod, or in the host
    // under a name of its own), and the report says so: step 5 neither waits for it in
    // the host nor renames it, unless a rebind re-creates it meanwhile.
    let mut reported = false;
    if let Some(ns) = &ns {
        match locate_in_netns(links, ns, st) {
            Ok(Some(l)) => {
                // No explicit down: leaving a namespace closes the device anyway.
                match links.move_found_link(ns, &l, &Netns::Host, &st.host.name) {
                    Ok(h) => {
                        r.did(format!("{} back to the host as {}", l.name, st.host.name));
                        home = Some(h);
                    }
                    Err(e) => match still_in(links, ns, &l) {
                        Some(l) => {
                            home_aside(links, ns, &l, st, &e, &mut r);
                            reported = true;
                        }
                        // Moved under its pod name: the host fixups below rename it.
                        None => crate::log_info!(
                            "moving {} back as {}: {e}; looking for it in the host",
                            l.name,
                            st.host.name
                        ),
                    },
                }
            }
            Ok(None) => {}
            // The path exists but is no (longer a) network namespace: as if it were gone;
            // the host fixups below find the VF wherever the kernel put it.
            Err(e @ NetError::Netns { .. }) => {
                crate::log_info!("{e}; looking for the VF in the host")
            }
            Err(e) => r.fail(format!(
                "looking for the VF in {}: {e}",
                opts.netns
                    .or(st.netns.as_deref())
                    .unwrap_or(Path::new("?"))
                    .display()
            )),
        }
    }

    // 4. GUID back to what it was (needs the netdev on the host: the rebind re-creates it).
    if let Some(g) = &st.guid
        && vf_exists
    {
        // Node and port each to its own: hosts set them apart, and the SM keys on the port.
        let (node, port) = g.restore();
        // With OFED files, done when the files hold them and the VF runs with them (a DEL
        // whose rebind failed or was killed left only the files restored). The RDMA
        // device's GUIDs (netlink path) may lag a rebind, so there restore unconditionally.
        let restored = g.method == crate::state::GuidMethod::OfedSysfs
            && guid::in_effect(root, &id, g.method, node, port);
        if !restored {
            let pf_ifindex = match g.method {
                crate::state::GuidMethod::Netlink => {
                    vf::pf_ifindex(root, links, &st.pf, &st.vf).ok()
                }
                crate::state::GuidMethod::OfedSysfs => None,
            };
            match guid::set_pair(root, links, g.method, &id, pf_ifindex, node, port)
                .and_then(|()| guid::rebind(root, &st.vf))
            {
                Ok(()) => {
                    r.did(format!("GUIDs restored to node {node}, port {port}"));
                    // The rebind re-creates the netdev (in the host): find it again.
                    home = None;
                    reported = false;
                }
                Err(e) => r.fail(e.to_string()),
            }
        }
    }

    // 5. On the host: original name, MTU, admin state.
    if reported {
        // Said in step 3; the next DEL picks it up from where it is.
    } else if vf_exists {
        // Not in the pod netns and not seen yet: the kernel may still be returning it from
        // a destroyed netns, or re-probing it after a rebind.
        let wait = REAPPEAR_WAIT;
        let found = match home {
            Some(l) => Ok(Some(l)),
            None => vf::wait_in_host(root, links, &st.vf, wait),
        };
        match found {
            Ok(Some(l)) => restore_host(links, &l, st, &mut r),
            Ok(None) => r.fail(format!(
                "VF {} has no netdev in the host namespace after {} ms (expected {} back from {}); it may still be in the pod netns or another one",
                st.vf,
                wait.as_millis(),
                st.host.name,
                st.netns.as_deref().unwrap_or(Path::new("the pod")).display()
            )),
            Err(e) => r.fail(e.to_string()),
        }
    } else {
        r.did(format!(
            "VF {} no longer exists on this host: nothing to return",
            st.vf
        ));
    }

    // 6. VF settings through the PF, found again: its netdev may have been re-created
    // since ADD (devlink reload, eswitch mode change), and the recorded ifindex would then
    // name nothing, or another netdev.
    if let Some(vc) = &st.vf_settings
        && vf_exists
    {
        let prev = VfSettings::from(&vc.previous);
        match vf::pf_ifindex(root, links, &st.pf, &st.vf) {
            Ok(pf) => match links.set_vf(pf, st.vf_index, &prev) {
                Ok(()) => r.did("VF settings restored"),
                Err(e) => r.fail(format!(
                    "restoring VF {} settings through PF {} (ifindex {pf}): {e}",
                    st.vf, st.pf
                )),
            },
            Err(e) => r.fail(format!("restoring VF {} settings: {e}", st.vf)),
        }
    }
    r
}

/// `l`, seen in `ns` before a move out of it failed, if it is still there.
fn still_in(links: &dyn LinkOps, ns: &Netns, l: &Link) -> Option<Link> {
    links
        .link_by_index(ns, l.ifindex)
        .ok()
        .flatten()
        .filter(|now| mac_eq(&now.mac, &l.mac))
}

/// The VF's netdev `l` could not come home from `ns` as its host name (`e`) and is still
/// there. When its host name and its pod name are both taken in the host, the kernel can
/// move it under neither: it comes home under a name of its own (`rv<ifindex>`, as
/// `restore_host` steps aside), safe from the pod's teardown, and the next DEL renames it
/// once its name is free. The failure, with `e` and the names, goes into `r` either way.
fn home_aside(
    links: &dyn LinkOps,
    ns: &Netns,
    l: &Link,
    st: &Attachment,
    e: &NetError,
    r: &mut Report,
) {
    let want = &st.host.name;
    let holder = |name: &str| match links.link_by_name(&Netns::Host, name) {
        Ok(Some(h)) => Some(format!("{name} (ifindex {})", h.ifindex)),
        _ => None,
    };
    let taken: Vec<String> = [want.as_str(), l.name.as_str()]
        .into_iter()
        .filter_map(holder)
        .collect();
    let fail = format!("moving {} back to the host as {want}: {e}", l.name);
    if e.errno() != Some(libc::EEXIST) || taken.is_empty() {
        return r.fail(format!(
            "{fail}; it is still {} (ifindex {}) in the pod netns: fix the cause, and the next DEL moves it",
            l.name, l.ifindex
        ));
    }
    let taken = taken.join(" and ");
    let aside = format!("rv{}", l.ifindex);
    match links.move_found_link(ns, l, &Netns::Host, &aside) {
        Ok(h) => r.fail(format!(
            "{fail}: the host already has interfaces called {taken}; it came home as {} (ifindex {}) meanwhile: rename or remove the interface called {want} in the host, and the next DEL renames it to {want}",
            h.name, h.ifindex
        )),
        Err(e2) => r.fail(format!(
            "{fail}: the host already has interfaces called {taken}, and moving it as {aside} failed too ({e2}); it is still {} (ifindex {}) in the pod netns: rename or remove the interface called {want} in the host, and the next DEL moves it",
            l.name, l.ifindex
        )),
    }
}

fn restore_host(links: &dyn LinkOps, l: &Link, st: &Attachment, r: &mut Report) {
    let ns = Netns::Host;
    let host = &st.host;
    if l.name != host.name {
        // The kernel refuses to rename an interface that is up.
        let _ = links.set_up(&ns, l.ifindex, false);
        match links.rename(&ns, l.ifindex, &host.name) {
            Ok(()) => r.did(format!("{} renamed back to {}", l.name, host.name)),
            Err(e) => {
                // Two InfiniBand VFs coming home at once can each get the kernel name the
                // other needs back (IPoIB registers a re-created netdev under the lowest
                // free `ib%d`), and each DEL would wait for the other for good. Ours steps
                // aside under a name of its own, freeing the one the other one needs; the
                // next DEL renames it from there.
                let aside = format!("rv{}", l.ifindex);
                if e.errno() == Some(libc::EEXIST)
                    && l.name != aside
                    && links.rename(&ns, l.ifindex, &aside).is_ok()
                {
                    r.fail(format!(
                        "renaming {} back to {}: {e}: another interface is called {} now (another VF coming home at the same time?); {} is called {aside} meanwhile, which frees its name for that one; the next DEL renames it",
                        l.name, host.name, host.name, l.name
                    ));
                } else {
                    r.fail(format!(
                        "renaming {} back to {}: {e} (is another interface called {} now?)",
                        l.name, host.name, host.name
                    ));
                }
                return;
            }
        }
    }
    // ADD gave the netdev the config's MAC when it set the VF's (sriov-cni restores it too).
    let mac_set = st
        .vf_settings
        .as_ref()
        .is_some_and(|v| v.previous.mac.is_some());
    if mac_set
        && !mac_eq(&l.mac, &host.mac)
        && let Some(mac) = parse_mac(&host.mac)
    {
        match links.set_mac(&ns, l.ifindex, mac) {
            Ok(()) => r.did(format!("MAC {} restored", host.mac)),
            Err(e) => r.fail(format!("restoring MAC {} on {}: {e}", host.mac, host.name)),
        }
    }
    if host.mtu != 0 && l.mtu != host.mtu {
        match links.set_mtu(&ns, l.ifindex, host.mtu) {
            Ok(()) => r.did(format!("MTU {} restored", host.mtu)),
            Err(e) => r.fail(format!("restoring MTU {} on {}: {e}", host.mtu, host.name)),
        }
    }
    if host.up {
        if let Err(e) = links.set_up(&ns, l.ifindex, true) {
            r.fail(format!("setting {} up again: {e}", host.name));
        }
    } else if l.up && l.name == host.name {
        let _ = links.set_up(&ns, l.ifindex, false);
    }
}

fn ipam_del(ctx: &Ctx<'_>, st: &Attachment, ns: Option<&Netns>, r: &mut Report) {
    // Recorded by the ADD, maybe by an earlier version that checked less: a refusal of
    // this version's keeps only what the release needs (`ipam.type`).
    let (conf, refused) = NetConf::parse_for_teardown(st.netconf.as_bytes());
    if let Some(e) = refused {
        if conf.ipam_type.is_none() {
            return r.fail(format!(
                "the network config ADD recorded for IPAM DEL has no usable ipam.type: {}",
                e.msg
            ));
        }
        crate::log_warn!(
            "the network config ADD recorded for {}/{} is refused by this version ({}): releasing IPAM with its ipam.type",
            st.container_id,
            st.ifname,
            e.msg
        );
    }
    let Some(t) = &conf.ipam_type else { return };
    let netns_path = match ns {
        Some(Netns::Path(p)) => Some(p.as_path()),
        _ => None,
    };
    let call = Call {
        command: "DEL",
        container_id: Some(&st.container_id),
        netns: netns_path,
        ifname: Some(&st.ifname),
        args: st.cni_args.as_deref(),
        cni_path: &ctx.env.cni_path,
    };
    match Plugin::find(t, &ctx.env.cni_path).and_then(|p| p.run(&call, st.netconf.as_bytes())) {
        Ok(()) => r.did(format!("IPAM {t} released")),
        Err(e) => r.fail(e.to_string()),
    }
}
