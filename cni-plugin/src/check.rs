//! CHECK: the attachment is still what ADD returned (interface, MAC, MTU, addresses from
//! `prevResult`), the VF is still RDMA-ready, and IPAM agrees.

use crate::Ctx;
use crate::error::{CniError, code};
use crate::gate::{self, GATE_CHECKS, ISOLATED_CHECKS};
use crate::ipam::{Call, Plugin};
use crate::net::Netns;
use crate::netconf::NetConf;
use crate::result::{CniResult, fmt_ipnet};
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
    let mine = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref().is_none_or(|s| s == sandbox));
    if let Some(i) = mine.map(|i| &prev.interfaces[i]) {
        if !i.mac.is_empty() && !i.mac.eq_ignore_ascii_case(&link.mac) {
            return Err(mismatch(format!(
                "{ifname} has MAC {}, expected {} (prevResult)",
                link.mac, i.mac
            )));
        }
        if let Some(mtu) = i.mtu
            && mtu != link.mtu
        {
            return Err(mismatch(format!(
                "{ifname} has MTU {}, expected {mtu} (prevResult)",
                link.mtu
            )));
        }
    }
    if let Some(mtu) = conf.mtu
        && mtu != link.mtu
    {
        return Err(mismatch(format!(
            "{ifname} has MTU {}, expected {mtu} (config)",
            link.mtu
        )));
    }
    let have = ctx
        .links
        .addresses(&ns, link.ifindex)
        .map_err(|e| crate::add::net_err(format!("listing addresses of {ifname}"), e))?;
    for ip in &prev.ips {
        let ours = match (ip.interface, mine) {
            (Some(i), Some(m)) => i == m,
            _ => true,
        };
        if ours && !have.contains(&ip.address) {
            return Err(mismatch(format!(
                "{ifname} lacks address {} from prevResult (has {})",
                fmt_ipnet(&ip.address),
                have.iter().map(fmt_ipnet).collect::<Vec<_>>().join(", ")
            )));
        }
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
