//! CHECK: the attachment is still what ADD returned (interface, MAC, MTU, addresses and
//! routes from `prevResult`), the VF is still RDMA-ready, and IPAM agrees.

use crate::Ctx;
use crate::error::{CniError, code};
use crate::gate::{self, GATE_CHECKS, ISOLATED_CHECKS};
use crate::ipam::{Call, Plugin};
use crate::net::rtnl::{RT_TABLE_MAIN, network};
use crate::net::{IpNet, KernelRoute, Link, Netns};
use crate::netconf::NetConf;
use crate::result::{CniResult, Interface, Route, fmt_ipnet};
use crate::version::Version;

fn mismatch(msg: String) -> CniError {
    CniError::new(
        code::CHECK_MISMATCH,
        msg,
        "something changed the pod's interface after ADD; recreate the pod (the runtime does on CHECK failure)",
    )
}

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    conf.version.require_at_least(Version::V0_4_0, "CHECK")?;
    let cid = ctx.env.require_container_id()?;
    let ifname = ctx.env.require_ifname()?;
    let netns = ctx.env.require_netns()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs \"prevResult\" in the network config",
            "the runtime passes the result of ADD as prevResult",
        )
    })?;
    let prev = CniResult::parse(prev).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult is unusable: {e}"),
            "the runtime passes the result of ADD as prevResult",
        )
    })?;
    let st = ctx.state.load(cid, ifname)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "railvf has no attachment {cid}/{ifname} (no state in {})",
                ctx.state.path().display()
            ),
            "ADD did not run or did not succeed for this container and interface",
        )
    })?;

    let ns = Netns::path(netns);
    let link = ctx
        .links
        .link_by_name(&ns, ifname)
        .map_err(|e| crate::add::net_err(format!("looking up {ifname} in {}", netns.display()), e))?
        .ok_or_else(|| {
            mismatch(format!(
                "{ifname} is not in {}: expected the VF {} there",
                netns.display(),
                st.vf
            ))
        })?;
    let sandbox = netns.display().to_string();
    let mine = our_interface(&prev.interfaces, ifname, &sandbox)?;
    let i = &prev.interfaces[mine];
    if !i.mac.is_empty() && !i.mac.eq_ignore_ascii_case(&link.mac) {
        return Err(mismatch(format!(
            "{ifname} has MAC {}, expected {} (prevResult)",
            link.mac, i.mac
        )));
    }
    if let Some(mtu) = i.mtu {
        check_mtu(&link, mtu, "prevResult")?;
    }
    if let Some(mtu) = conf.mtu {
        check_mtu(&link, mtu, "config")?;
    }
    let have = ctx
        .links
        .addresses(&ns, link.ifindex)
        .map_err(|e| crate::add::net_err(format!("listing addresses of {ifname}"), e))?;
    // Only the addresses placed on our interface: a previous plugin's (its own interface
    // named, or none, as plugins before 0.3 indices left them) are not ours to check, and
    // railvf always names its interface on its own.
    for ip in &prev.ips {
        if ip.interface == Some(mine) && !have.contains(&ip.address) {
            return Err(mismatch(format!(
                "{ifname} lacks address {} from prevResult (has {})",
                fmt_ipnet(&ip.address),
                have.iter().map(fmt_ipnet).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if !prev.routes.is_empty() {
        let routes = ctx.links.list_routes(&ns).map_err(|e| {
            crate::add::net_err(format!("listing the routes in {}", netns.display()), e)
        })?;
        check_routes(&prev.routes, &routes, &link, &sandbox)?;
    }

    // An RDMA device isolated in the pod netns is invisible in the host's sysfs: its port
    // is read through RDMA netlink in the pod instead.
    let exp = &conf.readiness.expectations;
    let r = match &st.rdma_device {
        Some(ibdev) => {
            let view = ctx
                .links
                .rdma_port1(&ns, ibdev)
                .map_err(|e| crate::add::net_err(format!("reading RDMA device {ibdev}"), e))?
                .ok_or_else(|| {
                    mismatch(format!(
                        "RDMA device {ibdev} of VF {} is not in {}: ADD moved it there (rdmaIsolation)",
                        st.vf,
                        netns.display()
                    ))
                })?;
            gate::evaluate_isolated(ctx.root(), &st.vf, exp, &ISOLATED_CHECKS, ibdev, &view)?
        }
        None => gate::evaluate(ctx.root(), &st.vf, exp, &GATE_CHECKS)?,
    };
    if !r.is_ready() {
        return Err(gate::GateError::NotReady {
            vf: st.vf,
            readiness: r,
            waited: std::time::Duration::ZERO,
            permanent: false,
        }
        .into());
    }

    if let Some(t) = &conf.ipam_type {
        let call = Call {
            command: "CHECK",
            container_id: Some(cid),
            netns: Some(netns),
            ifname: Some(ifname),
            args: ctx.env.args.as_deref(),
            cni_path: &ctx.env.cni_path,
        };
        Plugin::find(t, &ctx.env.cni_path)?.run(&call, &conf.raw)?;
    }
    Ok(())
}

/// The index of our entry in `prevResult.interfaces`: the one named `ifname` in `sandbox`
/// (`CNI_NETNS`), as ADD lists it. Without it the MAC and MTU cannot be compared and no
/// address can be told ours: a mismatch, as in the reference host-device plugin. An entry
/// without a sandbox is a host interface (the spec), not ours.
fn our_interface(list: &[Interface], ifname: &str, sandbox: &str) -> Result<usize, CniError> {
    let found = list
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox));
    found.ok_or_else(|| {
        let listed = if list.is_empty() {
            "no interfaces".to_string()
        } else {
            list.iter()
                .map(|i| match &i.sandbox {
                    Some(s) => format!("{} in sandbox {s}", i.name),
                    None => format!("{} (no sandbox)", i.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        CniError::new(
            code::CHECK_MISMATCH,
            format!(
                "prevResult has no interface {ifname} in sandbox {sandbox} (CNI_IFNAME in \
                 CNI_NETNS); it lists {listed}"
            ),
            "ADD's result lists the pod interface under CNI_IFNAME with CNI_NETNS as its \
             sandbox: check that the runtime passes this attachment's own cached result and \
             netns, and that no plugin later in the chain drops or renames the entry; if the \
             attachment is really gone, recreate the pod (the runtime does on CHECK failure)",
        )
    })
}

/// The live MTU against `expected` (from `source`, prevResult or the config). Ethernet:
/// equal. IPoIB: the kernel lowers the MTU to the broadcast group's when the port joins
/// the fabric (`ipoib_mcast_join_complete()`: the smaller of the group's and the admin
/// MTU), possibly after ADD returned, and never raises it past what was set: anything
/// from 1 to `expected` is what ADD set.
fn check_mtu(link: &Link, expected: u32, source: &str) -> Result<(), CniError> {
    let name = &link.name;
    if !link.is_ipoib() {
        if link.mtu != expected {
            return Err(mismatch(format!(
                "{name} has MTU {}, expected {expected} ({source})",
                link.mtu
            )));
        }
        return Ok(());
    }
    if link.mtu == 0 || link.mtu > expected {
        return Err(mismatch(format!(
            "{name} (IPoIB) has MTU {}, expected 1 to {expected} ({source}): IPoIB may lower \
             the MTU to its broadcast group's, never raise it",
            link.mtu
        )));
    }
    Ok(())
}

/// Each route of `prevResult` is in the pod's tables: same destination, same gateway when
/// it gives one, in its table (main by default). Through any link: a result's routes name
/// none (as host-device's CHECK has it).
fn check_routes(
    want: &[Route],
    have: &[KernelRoute],
    link: &Link,
    sandbox: &str,
) -> Result<(), CniError> {
    for r in want {
        let dst = IpNet {
            addr: network(r.dst.addr, r.dst.prefix),
            prefix: r.dst.prefix,
        };
        let table = r.attrs.table_or_main();
        let found = have
            .iter()
            .any(|k| k.dst == dst && k.table == table && r.gw.is_none_or(|g| k.gw == Some(g)));
        if found {
            continue;
        }
        let same_dst: Vec<String> = have
            .iter()
            .filter(|k| k.dst == dst)
            .map(|k| describe_route(k, link))
            .collect();
        let found = if same_dst.is_empty() {
            format!("no route to {} in any table", fmt_ipnet(&dst))
        } else {
            format!("only {}", same_dst.join("; "))
        };
        return Err(CniError::new(
            code::CHECK_MISMATCH,
            format!(
                "route {}{}{} from prevResult is not in {sandbox}: found {found}",
                fmt_ipnet(&r.dst),
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                if table == u32::from(RT_TABLE_MAIN) {
                    String::new()
                } else {
                    format!(" table {table}")
                },
            ),
            "something removed or replaced the pod's route after ADD (a process in the pod, or \
             a plugin later in the chain that did not update the result); recreate the pod \
             (the runtime does on CHECK failure)",
        ));
    }
    Ok(())
}

/// `10.2.0.0/16 via 10.1.0.254 dev net1 table 254`, for messages.
fn describe_route(k: &KernelRoute, link: &Link) -> String {
    let dev = match k.oif {
        Some(i) if i == link.ifindex => format!(" dev {}", link.name),
        Some(i) => format!(" dev ifindex {i}"),
        None => String::new(),
    };
    format!(
        "{}{}{dev} table {}",
        fmt_ipnet(&k.dst),
        k.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
        k.table
    )
}
