//! STATUS (CNI 1.1): can railvf work on this node? Code 50 when it cannot: host sysfs
//! unreadable, state directory unwritable, IPAM plugin missing; the IPAM plugin's own
//! STATUS is forwarded when it speaks 1.1.0.

use crate::Ctx;
use crate::error::{CniError, code};
use crate::ipam::{Call, IpamError, Plugin};
use crate::netconf::NetConf;
use crate::version::Version;

fn unavailable(msg: String, details: &str) -> CniError {
    CniError::new(code::NOT_AVAILABLE, msg, details)
}

pub fn exec(ctx: &Ctx<'_>, conf: &NetConf) -> Result<(), CniError> {
    conf.version.require_at_least(Version::V1_1_0, "STATUS")?;
    let devices = ctx.root().join("sys/bus/pci/devices");
    if let Err(e) = std::fs::read_dir(&devices) {
        return Err(unavailable(
            format!(
                "railvf cannot read the host's PCI devices at {}: {e}",
                devices.display()
            ),
            "sysfs must be visible at RAILVF_HOST_ROOT (default /); in a container, mount the host's /sys",
        ));
    }
    if let Err(e) = ctx.state.probe() {
        return Err(unavailable(
            format!("railvf cannot write its state directory: {e}"),
            "RAILVF_STATE_DIR (default /var/lib/cni/railvf) must be writable by the runtime",
        ));
    }
    if let Some(t) = &conf.ipam_type {
        let p = Plugin::find(t, &ctx.env.cni_path).map_err(|e| {
            unavailable(
                e.to_string(),
                "install the IPAM plugin into a CNI_PATH directory",
            )
        })?;
        let call = Call {
            command: "STATUS",
            container_id: None,
            netns: None,
            ifname: None,
            args: None,
            cni_path: &ctx.env.cni_path,
        };
        if p.speaks_1_1(&call)
            .map_err(|e| unavailable(e.to_string(), "the IPAM plugin does not answer VERSION"))?
        {
            match p.run(&call, &conf.raw) {
                Ok(()) => {}
                Err(e @ IpamError::Plugin { .. }) => return Err(e.into()),
                Err(e) => {
                    return Err(unavailable(
                        e.to_string(),
                        "the IPAM plugin's STATUS failed",
                    ));
                }
            }
        }
    }
    Ok(())
}
