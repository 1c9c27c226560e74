//! ADD: attach the VF to the pod and return only when it is RDMA-ready.
//!
//! Order: resolve the VF (host model) → per-VF lock → settle older attachments of this VF →
//! pre-flight (driver, host ownership) → record state → GUID + rebind → VF settings → move +
//! rename → MTU → up → IPAM → addresses and routes → readiness gate → RDMA device → result.
//! With `rdmaIsolation` on an InfiniBand VF, the readiness gate and the RDMA device come
//! before the move, and the netdev attached is the one IPoIB re-creates (in the host, or in
//! the pod on Linux 6.17 and later) when the RDMA device moves (see `attach`).
//! Any failure after the state is recorded rolls everything back (see [`crate::teardown`]).

use std::net::IpAddr;
use std::path::Path;

use railvf_host::inventory::{Attr, Netdev};
use railvf_host::{Check, LinkLayer, PciAddr, Vf};

use crate::Ctx;
use crate::error::{CniError, code};
use crate::gate::{self, GateError};
use crate::guid;
use crate::ipam::{Call, Plugin};
use crate::net::{Link, NetError, Netns, PodLink, parse_mac};
use crate::netconf::NetConf;
use crate::result::{CniResult, Interface};
use crate::state::{self, Attachment, HostLink, SCHEMA, StateDir, VfChange, VfSettingsRecord};
use crate::teardown::{self, Options};
use crate::vf::{self, VfId};

/// How long ADD waits for a VF's netdev that is not (yet) in the host namespace.
const HOST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long ADD waits for IPoIB's new netdev after moving an InfiniBand VF's RDMA device.
const IPOIB_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) fn net_err(what: impl std::fmt::Display, e: NetError) -> CniError {
    let hint = match &e {
        e if e.errno() == Some(libc::EEXIST) => {
            "an interface with that name already exists in the pod netns: use another CNI_IFNAME (Multus: the interface name in the network selection annotation)"
        }
        NetError::Unsupported { .. } => {
            "this host's kernel or driver lacks the feature; see docs/cni.md for which settings need what"
        }
        NetError::Netns { .. } => {
            "the pod's network namespace is gone or unreadable: the runtime tore the sandbox down"
        }
        _ => "check dmesg and `ip link` on the host",
    };
    CniError::new(code::KERNEL, format!("{what}: {e}"), hint)
}

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<String, CniError> {
    let cid = ctx.env.require_container_id()?;
    let ifname = ctx.env.require_ifname()?;
    let netns = ctx.env.require_netns()?;
    let network = conf.require_name()?;
    let addr = conf.device.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "no VF given: expected \"deviceID\", \"pciBusID\" or \"runtimeConfig.deviceID\" with the VF's PCI address",
            "Multus adds deviceID from the device plugin's allocation when the NetworkAttachmentDefinition has the k8s.v1.cni.cncf.io/resourceName annotation and the pod requests that resource",
        )
    })?;
    conf.require_ib_kubernetes()?;
    if let Err(why) = ctx.links.check_netns(netns) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {}: {why}", netns.display()),
            "expected a network namespace file (/var/run/netns/<name>, /proc/<pid>/ns/net); the runtime passed another file or one already gone",
        ));
    }
    // A plugin before railvf in the chain: its result is passed through (read before
    // anything changes, so an unreadable one changes nothing).
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::parse)
        .transpose()
        .map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("prevResult is unusable: {e}"),
                "the plugin before railvf in the chain printed a result railvf cannot read and pass on; check that plugin's output",
            )
        })?;
    let vf = vf::resolve(ctx.root(), addr)?;
    crate::log::step("resolve");
    // Rail guardrail (railPolicy): `require` refuses here, before anything is locked or
    // changed; otherwise its finding goes into the result and a rail event.
    let rail = crate::rail::guard(ctx, conf, &vf, cid, ifname)?;
    let _lock = ctx.state.lock_vf(ctx.root(), &addr)?;
    crate::log::step("lock");
    let ours = locked(ctx, conf, addr, cid, ifname, network, netns)?;
    let result = match prev {
        Some(prev) => ours.chained_after(prev),
        None => ours,
    };
    let out = result.to_json(conf.version).to_string();
    Ok(crate::rail::report(ctx, rail, cid, ifname, out))
}

/// ADD's work once the VF's lock is held.
fn locked(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    addr: PciAddr,
    cid: &str,
    ifname: &str,
    network: &str,
    netns: &Path,
) -> Result<CniResult, CniError> {
    let root = ctx.root();
    settle(ctx, addr, cid, ifname)?;
    // Read again under the lock: until it was ours, a DEL, GC or takeover of this VF may
    // have rebound its driver (a GUID restore), and the RDMA device name read before may
    // since belong to another VF.
    let mut vf = vf::resolve(root, addr)?;
    // The device's own checks first: a VF bound to vfio-pci or to no driver has no netdev
    // either, and the wait below would blame a namespace for it.
    preflight(
        ctx,
        conf,
        &vf,
        &[Check::Driver, Check::Rdma, Check::LinkLayer],
    )?;
    // A RoCE VF gets its node GUID from its admin MAC when its driver binds: nothing ADD
    // does gives it one, so a missing one is refused before anything changes.
    if is_ethernet(&vf.function) && conf.guid.is_none() {
        railvf_host::inventory::refresh(root, &mut vf.function)
            .map_err(|source| crate::vf::VfError::Host { addr, source })?;
        preflight(ctx, conf, &vf, &[Check::Guid])?;
    }
    // A short wait covers a VF still on its way back from a netns being destroyed.
    let link = vf::wait_in_host(root, ctx.links, &addr, HOST_WAIT)?.ok_or_else(|| {
        CniError::new(
            code::VF_NOT_IN_HOST,
            format!(
                "VF {addr} has no netdev in the host network namespace ({}/net is empty), and railvf has no attachment of it",
                root.pci_device(&addr).display()
            ),
            format!(
                "another CNI plugin or a person moved it into a namespace (`ip -all netns exec ip link` finds it; railvf's state is in {}), or, on an InfiniBand VF, ib_ipoib is not loaded (modprobe ib_ipoib): without it the VF has no netdev",
                ctx.state.path().display()
            ),
        )
    })?;
    // A netdev that arrived during the wait is the one a host network manager may be
    // claiming right now: judge ownership on it, not on the empty read before.
    if vf.function.netdev().is_none() {
        vf.function.netdevs.push(Netdev {
            name: link.name.clone(),
            ifindex: Attr::Value(link.ifindex),
        });
    }
    preflight(ctx, conf, &vf, &[Check::Ownership])?;
    // A CNI_IFNAME taken in the pod would fail the move, after a GUID rebind and VF settings
    // had changed the VF: known now, nothing is touched. (An interface created meanwhile
    // still ends at the move's EEXIST, and is rolled back.)
    let taken = ctx
        .links
        .link_by_name(&Netns::path(netns), ifname)
        .map_err(|e| net_err(format!("looking for {ifname} in {}", netns.display()), e))?;
    if let Some(l) = taken {
        return Err(CniError::new(
            code::KERNEL,
            format!(
                "an interface named {ifname} already exists in {} (ifindex {})",
                netns.display(),
                l.ifindex
            ),
            "use another CNI_IFNAME (Multus: the interface name in the network selection annotation), or find what created it in the pod",
        ));
    }
    // A missing IPAM plugin is known before anything changes.
    if let Some(t) = &conf.ipam_type {
        Plugin::find(t, &ctx.env.cni_path)?;
    }
    crate::log::step("preflight");

    let id = VfId::from(&vf);
    let need_pf = conf.has_vf_settings()
        || (conf.guid.is_some() && guid::method(root, &id) == crate::state::GuidMethod::Netlink);
    let pf_ifindex = if need_pf {
        Some(vf::pf_ifindex(root, ctx.links, &vf.pf, &addr)?)
    } else {
        None
    };
    let guid_change = conf.guid.and_then(|target| guid::change(root, &id, target));
    if let Some(g) = &guid_change {
        refuse_guid_in_use(
            root,
            g.target,
            vf.function.rdma.as_ref().map(|r| r.name.as_str()),
        )?;
    }
    let vf_change = match pf_ifindex.filter(|_| conf.has_vf_settings()) {
        None => None,
        Some(pf) => {
            let now = ctx
                .links
                .vf_settings(pf, vf.index)
                .map_err(|e| net_err(format!("reading VF {} settings through its PF", addr), e))?;
            Some(VfChange {
                pf_ifindex: pf,
                previous: VfSettingsRecord::from(&only_changed(&conf.vf, &now)),
            })
        }
    };
    let mut st = Attachment {
        schema: SCHEMA,
        network: network.to_string(),
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        netns: Some(netns.to_path_buf()),
        vf: addr,
        pf: vf.pf,
        vf_index: vf.index,
        host: host_link(&link),
        guid: guid_change,
        vf_settings: vf_change,
        moving: Some(host_link(&link)),
        pod_ifindex: None,
        rdma_device: if conf.rdma_isolation {
            // As resolved (the pre-flight has just checked it is there).
            Some(
                vf.function
                    .rdma
                    .as_ref()
                    .map(|d| d.name.clone())
                    .ok_or_else(|| {
                        CniError::new(
                            code::BAD_DEVICE,
                            format!("rdmaIsolation is set but VF {addr} has no RDMA device"),
                            "load mlx5_ib (modprobe mlx5_ib), or remove rdmaIsolation",
                        )
                    })?,
            )
        } else {
            None
        },
        ipam: conf.ipam_type.is_some(),
        ipam_called: false,
        netconf: String::from_utf8_lossy(&conf.raw).into_owned(),
        cni_args: ctx.env.args.clone(),
        created_unix: state::now_unix(),
    };
    // Recorded before the first change, with everything teardown needs: from here on DEL
    // can always converge. ADD rewrites it only when the netdev to move changes (a GUID
    // rebind, IPoIB re-creating it when the RDMA device moves).
    ctx.state.save(&st)?;
    crate::faultpoint::hit("state-written");
    crate::log::step("state");
    crate::log_info!(
        "attaching VF {addr} ({}, PF {} VF {}) as {ifname} in {}",
        link.name,
        vf.pf,
        vf.index,
        netns.display()
    );
    match attach(ctx, conf, &mut st, link, pf_ifindex, vf.function) {
        Ok(out) => Ok(out),
        Err(e) => {
            crate::log_warn!("ADD failed, rolling back: {e}");
            let report = teardown::converge(
                ctx,
                &st,
                Options {
                    netns: Some(netns),
                    ipam: st.ipam_called,
                },
            );
            crate::log::step("rollback");
            if report.ok()
                && let Err(se) = ctx.state.remove_attachment(&st)
            {
                return Err(e.with_detail(format!("{}; {se}", report.summary())));
            }
            Err(e.with_detail(report.summary()))
        }
    }
}

fn attach(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    st: &mut Attachment,
    mut link: Link,
    pf_ifindex: Option<u32>,
    function: railvf_host::PciFunction,
) -> Result<CniResult, CniError> {
    let root = ctx.root();
    let links = ctx.links;
    let id = VfId {
        addr: st.vf,
        pf: st.pf,
        index: st.vf_index,
    };
    let netns_path = st.netns.clone().unwrap_or_default();
    let ns = Netns::path(&netns_path);

    if let Some(g) = &st.guid {
        guid::set(root, links, g.method, &id, pf_ifindex, g.target)?;
        guid::rebind(root, &st.vf)?;
        link = vf::wait_in_host(root, links, &st.vf, guid::REBIND_WAIT)?.ok_or(
            guid::GuidError::NoNetdevAfterRebind {
                vf: st.vf,
                guid: g.target,
                secs: guid::REBIND_WAIT.as_secs(),
            },
        )?;
        crate::log_info!(
            "GUID {} set on VF {} ({:?}), driver rebound",
            g.target,
            st.vf,
            g.method
        );
        // A real rebind re-creates the netdev (new ifindex, maybe a new name) and the RDMA
        // device: record what will be moved.
        let rdma = st.rdma_device.as_ref().and(vf::rdma_device(root, &st.vf));
        if st.moving.as_ref() != Some(&host_link(&link)) || rdma != st.rdma_device {
            st.moving = Some(host_link(&link));
            st.rdma_device = rdma.or(st.rdma_device.take());
            ctx.state.save(st)?;
        }
        crate::faultpoint::hit("guid-set");
        crate::log::step("guid");
    }
    if let Some(vc) = &st.vf_settings {
        links
            .set_vf(vc.pf_ifindex, st.vf_index, &conf.vf)
            .map_err(|e| net_err(format!("applying VF {} settings through its PF", st.vf), e))?;
        crate::faultpoint::hit("vf-settings");
        crate::log::step("vf-settings");
    }

    // The RDMA device of an InfiniBand VF moves first. The kernel's `rdma_dev_change_netns()`
    // (drivers/infiniband/core/device.c) runs `disable_device()`, which removes every
    // ib_client, IPoIB among them: IPoIB unregisters the VF's netdev wherever it is, and
    // `enable_device_and_get()` has it register a new one (new ifindex, kernel name `ibN`,
    // default MTU, down): in the initial netns, or, since Linux 6.17 (commit f1208b05574f,
    // also in 6.16.y), in the RDMA device's. Moved after the netdev, the RDMA device would
    // take the pod's interface away; so it goes first, and that new netdev is the one
    // attached. An Ethernet (RoCE) VF's mlx5e netdev is no ib_client's and stays as it is;
    // it keeps the order below, as its RDMA port is ACTIVE only while the netdev is up:
    // the gate must come after the netdev is up in the pod. Either way the gate runs
    // before the RDMA device moves, as the host's sysfs stops showing the device once it has.
    let rdma_first = st.rdma_device.is_some() && !is_ethernet(&function);
    let mut in_pod = false;
    if rdma_first {
        gate(ctx, conf, st, function.clone())?;
        move_rdma(ctx, st, &ns)?;
        crate::faultpoint::hit("rdma-moved");
        (link, in_pod) = recreated_netdev(ctx, st, &ns, &netns_path)?;
        // What the teardown recognises the VF by in the pod: its MAC and ifindex are new.
        if st.moving.as_ref() != Some(&host_link(&link)) {
            st.moving = Some(host_link(&link));
            ctx.state.save(st)?;
        }
        crate::faultpoint::hit("netdev-found");
    }

    let mtu_text = conf
        .mtu
        .map(|m| format!(" with MTU {m}"))
        .unwrap_or_default();
    let moved = if in_pod {
        name_and_up_in_pod(links, &ns, &link, &st.ifname, conf.mtu).map_err(|e| {
            net_err(
                format!(
                    "renaming {} in {} to {}{mtu_text} and up",
                    link.name,
                    netns_path.display(),
                    st.ifname
                ),
                e,
            )
        })?
    } else {
        // Move, rename, MAC, MTU and up in one request: the VF is up from the moment it is
        // in the pod (as sriov-cni leaves it), and the kernel's answer is checked once.
        // The config's MAC goes on the netdev too, as sriov-cni puts it there: an Ethernet
        // netdev (6-byte address) only; an IPoIB one's address is its QP and GID.
        let set = PodLink {
            mtu: conf.mtu,
            mac: conf.vf.mac.filter(|_| parse_mac(&link.mac).is_some()),
        };
        links
            .move_found_link_up(&Netns::Host, &link, &ns, &st.ifname, set)
            .map_err(|e| {
                net_err(
                    format!(
                        "moving {} into {} as {}{mtu_text} and up",
                        link.name,
                        netns_path.display(),
                        st.ifname
                    ),
                    e,
                )
            })?
    };
    st.pod_ifindex = Some(moved.ifindex);
    crate::faultpoint::hit("moved");
    crate::log::step("move");
    let idx = moved.ifindex;

    let mut result = CniResult::default();
    if let Some(t) = &conf.ipam_type {
        let plugin = Plugin::find(t, &ctx.env.cni_path)?;
        // Before the addresses: IPv6 announces an address when its duplicate address
        // detection ends, if ndisc_notify was on by then.
        notify_neighbours(links, &ns, &st.ifname);
        st.ipam_called = true;
        let call = Call {
            command: "ADD",
            container_id: Some(&st.container_id),
            netns: Some(&netns_path),
            ifname: Some(&st.ifname),
            args: ctx.env.args.as_deref(),
            cni_path: &ctx.env.cni_path,
        };
        result = plugin.add(&call, &conf.raw)?;
        crate::faultpoint::hit("ipam");
        apply_ipam(links, &ns, idx, &st.ifname, &result)?;
        crate::faultpoint::hit("addresses");
        crate::log::step("ipam");
    }

    if !rdma_first {
        gate(ctx, conf, st, function)?;
        // After the gate: the host's sysfs stops showing the RDMA device once it moves.
        move_rdma(ctx, st, &ns)?;
    }
    // After the gate, which on a real VF means the carrier is up: a gratuitous ARP sent
    // before that is dropped by the link's queue.
    announce_ipv4(links, &ns, idx, &st.ifname, &result);
    // The link as the move's answer showed it: nothing after the move changes its address
    // (GUID and VF MAC are set before it) or its MTU.
    result.interfaces = vec![Interface {
        name: st.ifname.clone(),
        mac: moved.mac.clone(),
        mtu: Some(moved.mtu),
        sandbox: Some(netns_path.display().to_string()),
        pci_id: Some(st.vf.to_string()),
        extra: serde_json::Map::new(),
    }];
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
    crate::log_info!(
        "VF {} attached as {} ({} addresses) and RDMA-ready",
        st.vf,
        st.ifname,
        result.ips.len()
    );
    Ok(result)
}

/// Turns on the kernel's own announcements of the pod link's addresses (`arp_notify`,
/// `ndisc_notify`), as sriov-cni does. Best effort, as there: a neighbour with a stale
/// entry is a slower start for that neighbour, not a VF that is not ready.
fn notify_neighbours(links: &dyn crate::net::LinkOps, ns: &Netns, ifname: &str) {
    if let Err(e) = links.enable_address_notify(ns, ifname) {
        crate::log_warn!(
            "{e}; the kernel will not announce {ifname}'s addresses to its neighbours, which may map a reused address to its previous owner's MAC until their entries expire"
        );
    }
}

/// Sends one gratuitous ARP for each IPv4 address IPAM gave: the gateway and the other
/// pods then map a reused address to this VF at once, rather than to its previous owner
/// until their entries expire (a RoCE connection to it would fail until then). IPv6
/// addresses are announced by the kernel (`ndisc_notify`). Best effort, as in sriov-cni.
fn announce_ipv4(
    links: &dyn crate::net::LinkOps,
    ns: &Netns,
    idx: u32,
    ifname: &str,
    result: &CniResult,
) {
    for ip in &result.ips {
        let IpAddr::V4(a) = ip.address.addr else {
            continue;
        };
        match links.announce_ipv4(ns, idx, a) {
            Ok(()) => crate::log_debug!("announced {a} on {ifname} (gratuitous ARP)"),
            Err(e) => crate::log_warn!(
                "{e}; neighbours that map {a} to another MAC keep it until their entries expire"
            ),
        }
    }
}

/// Refuses a GUID another RDMA device on this node already shows. Two ports with one GUID
/// share one identity on the fabric: the subnet manager keys LIDs and partition membership
/// by port GUID, so the pod would take over, or cut off, the other's traffic. A NAD author
/// can name any GUID, and every VF's GUID can be read in a pod.
fn refuse_guid_in_use(
    root: &railvf_host::HostRoot,
    target: railvf_host::Guid,
    own: Option<&str>,
) -> Result<(), CniError> {
    let devices = railvf_host::inventory::rdma_device_guids(root).map_err(|e| {
        CniError::new(
            code::IO,
            format!("cannot read this node's RDMA GUIDs before setting GUID {target}: {e}"),
            "check that sysfs is mounted and readable (RAILVF_HOST_ROOT)",
        )
    })?;
    let clash = devices.iter().find_map(|d| {
        if Some(d.device.as_str()) == own {
            return None;
        }
        let what = if d.node == Some(target) {
            "node GUID"
        } else if d.port == Some(target) {
            "port GUID"
        } else {
            return None;
        };
        Some((&d.device, what))
    });
    match clash {
        None => Ok(()),
        Some((device, what)) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "GUID {target} is already the {what} of RDMA device {device} on this node: two ports with one GUID would share one identity on the fabric"
            ),
            "give each attachment a GUID of its own: runtimeConfig.infinibandGUID (ib-kubernetes hands out unique ones); a top-level \"guid\" in a NAD goes to every pod that uses it",
        )),
    }
}

/// Whether the VF's port is Ethernet (RoCE), whose netdev an RDMA device move leaves alone.
/// An unknown link layer counts as InfiniBand (the pre-flight has checked it is the one
/// the config expects).
fn is_ethernet(function: &railvf_host::PciFunction) -> bool {
    function.link_layer() == Some(LinkLayer::Ethernet)
}

/// The readiness gate: ADD returns only when the VF is RDMA-ready.
fn gate(
    ctx: &Ctx<'_>,
    conf: &NetConf,
    st: &Attachment,
    function: railvf_host::PciFunction,
) -> Result<(), CniError> {
    crate::faultpoint::hit("readiness");
    let ready = gate::wait(
        ctx.root(),
        function,
        &conf.readiness.expectations,
        conf.readiness.timeout,
        st.guid.as_ref().map(|g| g.target),
    )
    .map_err(|e: GateError| {
        crate::log_warn!("{e}");
        CniError::from(e)
    })?;
    crate::log_debug!("readiness: {:?}", ready.outcomes);
    crate::log::step("readiness");
    Ok(())
}

/// Moves the attachment's RDMA device (`rdmaIsolation`), if any, into the pod netns `ns`.
fn move_rdma(ctx: &Ctx<'_>, st: &Attachment, ns: &Netns) -> Result<(), CniError> {
    let Some(dev) = &st.rdma_device else {
        return Ok(());
    };
    ctx.links
        .move_rdma_device(dev, &Netns::Host, ns)
        .map_err(|e| net_err(format!("moving RDMA device {dev} into the pod netns"), e))?;
    crate::log::step("rdma");
    Ok(())
}

/// The InfiniBand VF's netdev that IPoIB re-created when its RDMA device moved into `ns`
/// (the pod's, at `netns`), and whether it is there: in the host it is found by PCI address
/// through sysfs, in the pod by its parent device through netlink. The kernel registers it
/// before it answers the move (all of `rdma_dev_change_netns()` runs under the device's
/// locks); a short wait covers anything slower.
fn recreated_netdev(
    ctx: &Ctx<'_>,
    st: &Attachment,
    ns: &Netns,
    netns: &Path,
) -> Result<(Link, bool), CniError> {
    let root = ctx.root();
    let dev = st.rdma_device.as_deref().unwrap_or("?");
    let deadline = std::time::Instant::now() + IPOIB_WAIT;
    let (link, in_pod) = loop {
        if let Some(l) = vf::find_in_host(root, ctx.links, &st.vf)? {
            break (l, false);
        }
        let found = vf::find_in_netns(ctx.links, ns, &st.vf).map_err(|e| {
            net_err(
                format!("looking for VF {}'s netdev in the pod netns", st.vf),
                e,
            )
        })?;
        if let Some(l) = found {
            break (l, true);
        }
        if std::time::Instant::now() >= deadline {
            return Err(CniError::new(
                code::VF_NOT_IN_HOST,
                format!(
                    "after moving RDMA device {dev} of VF {} into {}, expected IPoIB to re-create the VF's netdev in the host network namespace or in that one; found none after {} ms ({}/net is empty, and no interface there has the VF as its parent device, as far as this kernel reports parent devices)",
                    st.vf,
                    netns.display(),
                    IPOIB_WAIT.as_millis(),
                    root.pci_device(&st.vf).display()
                ),
                "check dmesg for ib_ipoib errors and that ib_ipoib is loaded (lsmod); `ip -all netns exec ip -d link` shows where the netdev went (its parentdev is the VF). ADD rolled back what it could (see details); DEL finishes the rest",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    crate::log_info!(
        "RDMA device {dev} moved into {}; IPoIB re-created the VF's netdev as {} (ifindex {}) in {}",
        netns.display(),
        link.name,
        link.ifindex,
        if in_pod {
            "that netns"
        } else {
            "the host netns"
        }
    );
    Ok((link, in_pod))
}

/// For a netdev already in the pod netns (IPoIB re-created it there): rename, MTU, up.
fn name_and_up_in_pod(
    links: &dyn crate::net::LinkOps,
    ns: &Netns,
    link: &Link,
    ifname: &str,
    mtu: Option<u32>,
) -> Result<Link, NetError> {
    let mut l = link.clone();
    // A new netdev is down, and a down one can be renamed on every kernel.
    links.rename(ns, l.ifindex, ifname)?;
    l.name = ifname.to_string();
    if let Some(m) = mtu {
        links.set_mtu(ns, l.ifindex, m)?;
        l.mtu = m;
    }
    links.set_up(ns, l.ifindex, true)?;
    l.up = true;
    Ok(l)
}

/// Adds IPAM's addresses and routes inside the pod netns. A route without a gateway takes
/// the gateway of its address family (as the reference plugins' `ConfigureIface` does).
pub(crate) fn apply_ipam(
    links: &dyn crate::net::LinkOps,
    ns: &Netns,
    idx: u32,
    ifname: &str,
    res: &CniResult,
) -> Result<(), CniError> {
    for ip in &res.ips {
        links.add_address(ns, idx, ip.address).map_err(|e| {
            let what = format!(
                "adding {} to {ifname}",
                crate::result::fmt_ipnet(&ip.address)
            );
            // The same address and prefix twice is no error (the link layer skips it);
            // EEXIST here is the address under another prefix, which is IPAM's doing, not
            // the interface name's.
            if e.errno() == Some(libc::EEXIST) {
                CniError::new(
                    code::KERNEL,
                    format!("{what}: {e}"),
                    "the IPAM result gives this address twice with different prefixes: make the IPAM config agree",
                )
            } else {
                net_err(what, e)
            }
        })?;
    }
    let gw4 = res
        .ips
        .iter()
        .filter_map(|i| i.gateway)
        .find(IpAddr::is_ipv4);
    let gw6 = res
        .ips
        .iter()
        .filter_map(|i| i.gateway)
        .find(IpAddr::is_ipv6);
    for r in &res.routes {
        let gw = r.gw.or(if r.dst.addr.is_ipv4() { gw4 } else { gw6 });
        match links.add_route_with(ns, idx, r.dst, gw, &r.attrs) {
            Ok(()) => {}
            // The same route is there already (IPAM listed it twice): what was asked holds.
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(net_err(
                    format!(
                        "adding route {} via {} on {ifname}",
                        crate::result::fmt_ipnet(&r.dst),
                        gw.map(|g| g.to_string()).unwrap_or_else(|| "link".into())
                    ),
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn host_link(l: &Link) -> HostLink {
    HostLink {
        name: l.name.clone(),
        ifindex: l.ifindex,
        mtu: l.mtu,
        mac: l.mac.clone(),
        up: l.up,
    }
}

/// The current values of exactly the fields `want` sets (what DEL must restore).
fn only_changed(
    want: &crate::net::VfSettings,
    now: &crate::net::VfSettings,
) -> crate::net::VfSettings {
    crate::net::VfSettings {
        mac: want.mac.and(now.mac),
        vlan: want.vlan.and(now.vlan),
        spoofchk: want.spoofchk.and(now.spoofchk),
        trust: want.trust.and(now.trust),
        rate: want.rate.and(now.rate),
        link_state: want.link_state.and(now.link_state),
    }
}

/// Checks that waiting cannot fix, made before anything changes.
fn preflight(ctx: &Ctx<'_>, conf: &NetConf, vf: &Vf, checks: &[Check]) -> Result<(), CniError> {
    let r = railvf_host::readiness::evaluate(
        ctx.root(),
        &vf.function,
        &conf.readiness.expectations,
        checks,
    );
    if r.is_ready() {
        return Ok(());
    }
    Err(GateError::NotReady {
        vf: vf.function.addr,
        readiness: r,
        waited: std::time::Duration::ZERO,
        permanent: true,
    }
    .into())
}

/// Deals with older state naming this VF or this attachment: a live attachment of another
/// pod is refused; anything stale (an ADD killed midway, a pod whose netns is gone, a
/// repeated ADD) is torn down first.
fn settle(ctx: &Ctx<'_>, addr: PciAddr, cid: &str, ifname: &str) -> Result<(), CniError> {
    // Only the files of this VF or of this attachment are read (the name says which).
    let entries = ctx
        .state
        .list_where(|v, tail| *v == addr || StateDir::is_attachment(tail, cid, ifname))?;
    for (path, entry) in entries {
        let other = match entry {
            Ok(a) => a,
            Err(e) => {
                let mine = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.get(13..))
                    .is_some_and(|t| StateDir::is_attachment(t, cid, ifname));
                if mine {
                    // A corrupt file of this very attachment is ours to replace; one a
                    // newer railvf wrote (or one that cannot be read) is not.
                    if !matches!(e, crate::state::StateError::Corrupt { .. }) {
                        return Err(e.into());
                    }
                    crate::log_warn!("replacing unreadable state: {e}");
                    ctx.state.remove_path(&path)?;
                }
                continue;
            }
        };
        let same_attachment = other.key() == (cid, ifname);
        if other.vf != addr && !same_attachment {
            continue;
        }
        if other.vf != addr {
            // This attachment was on another VF (a retried ADD with a new deviceID).
            return Err(CniError::new(
                code::VF_BUSY,
                format!(
                    "container {cid} already has {ifname} attached on VF {} (state {}), and this ADD asks for VF {addr}",
                    other.vf,
                    path.display()
                ),
                "the runtime must DEL the old attachment first; DEL with the same CNI_CONTAINERID/CNI_IFNAME releases it",
            ));
        }
        let live = !same_attachment
            && other.netns.as_deref().is_some_and(Path::exists)
            && vf::find_in_host(ctx.root(), ctx.links, &addr)?.is_none();
        if live {
            return Err(CniError::new(
                code::VF_BUSY,
                format!(
                    "VF {addr} is attached to container {} as {} (netns {}, network {}) since {}",
                    other.container_id,
                    other.ifname,
                    other
                        .netns
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    other.network,
                    other.created_unix
                ),
                "two pods were given the same VF: check the device plugin (it must not allocate a VF twice) and delete the stale pod; DEL of that attachment frees the VF",
            ));
        }
        crate::log_info!(
            "taking over VF {addr}: tearing down stale attachment {}/{}",
            other.container_id,
            other.ifname
        );
        let report = teardown::converge(
            ctx,
            &other,
            Options {
                netns: None,
                ipam: true,
            },
        );
        if !report.ok() {
            return Err(CniError::new(
                code::TEARDOWN_INCOMPLETE,
                format!(
                    "VF {addr} has a stale attachment ({}/{}) that could not be undone: {}",
                    other.container_id,
                    other.ifname,
                    report.errors.join("; ")
                ),
                format!("fix the problem and retry; the state is {}", path.display()),
            ));
        }
        ctx.state.remove_attachment(&other)?;
    }
    Ok(())
}
