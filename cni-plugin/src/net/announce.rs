//! Telling a pod link's neighbours about its addresses: the pieces [`super::rtnl::Rtnl`]
//! sends for [`super::LinkOps::enable_address_notify`] and [`super::LinkOps::announce_ipv4`].
//!
//! An address IPAM hands out may have belonged to another pod a minute ago, and the
//! gateway, the other pods and the switches may still map it to that pod's MAC: traffic to
//! the new pod, RoCE connection set-up included (RDMA CM resolves peers through ARP and
//! neighbour discovery), goes to the old MAC until their entries expire. sriov-cni turns
//! on `arp_notify` and `ndisc_notify` and announces each address; railvf has the kernel do
//! both:
//!
//! * IPv4: an `RTM_NEWNEIGH` with `NTF_USE` for the link's own address makes the kernel
//!   resolve it, which starts with a broadcast ARP request for that address from that
//!   address: a gratuitous ARP, sent before the request is answered. Every neighbour that
//!   has an entry for the address takes the sender's MAC from it (the kernel's
//!   `arp_process()` overrides on a gratuitous ARP). The entry is deleted at once, so
//!   nothing stays behind in the pod and no further probes follow.
//! * IPv6: with `ndisc_notify` on, the kernel sends an unsolicited neighbour advertisement
//!   (override flag set) for each address when its duplicate address detection ends, which
//!   on a real VF waits for the carrier. There is no netlink attribute for it (the kernel's
//!   `inet6_set_link_af()` takes only the token and the address generation mode): it is
//!   written under `/proc/sys/net/ipv6/conf/<link>/` from inside the pod's netns.
//!
//! Layouts: `struct ndmsg` and `NDA_*` from `include/uapi/linux/neighbour.h`.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::netns::in_netns;

/// `RTM_NEWNEIGH` (`include/uapi/linux/rtnetlink.h`).
pub const RTM_NEWNEIGH: u16 = 28;
/// `RTM_DELNEIGH`.
pub const RTM_DELNEIGH: u16 = 29;
/// `NDA_DST`.
pub const NDA_DST: u16 = 1;
/// `NTF_USE`: "use" the entry as a packet would, which starts its resolution.
pub const NTF_USE: u8 = 0x01;
/// `NUD_NONE`.
pub const NUD_NONE: u16 = 0x00;

/// `struct ndmsg`: family, two pad fields, ifindex, state, flags, type.
pub fn ndmsg(family: u8, ifindex: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family;
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b[10] = flags;
    b
}

/// One per-link sysctl that [`enable_notify`] turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifySysctl {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `arp_notify` or `ndisc_notify`.
    pub key: &'static str,
    /// Absent when the netns has that family switched off (no IPv6): skipped then.
    pub optional: bool,
}

/// What sriov-cni turns on: a gratuitous ARP whenever the link comes up or changes its
/// address, and an unsolicited neighbour advertisement when an IPv6 address is ready or
/// the address changes.
pub const NOTIFY_SYSCTLS: [NotifySysctl; 2] = [
    NotifySysctl {
        family: "ipv4",
        key: "arp_notify",
        optional: false,
    },
    NotifySysctl {
        family: "ipv6",
        key: "ndisc_notify",
        optional: true,
    },
];

/// `/proc/sys/net/<family>/conf/<ifname>/<key>`, for a valid interface name
/// ([`super::valid_ifname`]), which is one path component, and without control characters
/// (`CNI_IFNAME` has none: the CNI refuses them); `None` otherwise.
pub fn sysctl_path(s: &NotifySysctl, ifname: &str) -> Option<PathBuf> {
    let one_component = super::valid_ifname(ifname) && !ifname.chars().any(char::is_control);
    one_component.then(|| {
        ["/proc/sys/net", s.family, "conf", ifname, s.key]
            .iter()
            .collect()
    })
}

/// Writes `1` to each of [`NOTIFY_SYSCTLS`] for `ifname`, from inside the netns of `ns`
/// (`/proc/sys/net` shows the netns of the thread that opens it). An optional one that
/// is absent is skipped. `Err` names the sysctl that failed.
pub fn enable_notify(ns: &File, ifname: &str) -> Result<(), (NotifySysctl, io::Error)> {
    let paths: Vec<(NotifySysctl, PathBuf)> = NOTIFY_SYSCTLS
        .iter()
        .map(|s| {
            sysctl_path(s, ifname).map(|p| (*s, p)).ok_or_else(|| {
                (
                    *s,
                    io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    // A setns failure is the netns's, not a sysctl's: it is reported against the first.
    in_netns(ns, || Ok(write_all(&paths))).map_err(|e| (NOTIFY_SYSCTLS[0], e))?
}

fn write_all(paths: &[(NotifySysctl, PathBuf)]) -> Result<(), (NotifySysctl, io::Error)> {
    for (s, path) in paths {
        match std::fs::write(path, b"1") {
            Ok(()) => {}
            Err(e) if s.optional && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((*s, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndmsg_layout() {
        let b = ndmsg(2, 0x0102_0304, 0x0080, NTF_USE);
        assert_eq!(b[0], 2);
        assert_eq!(&b[1..4], &[0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 0x0102_0304);
        assert_eq!(u16::from_ne_bytes(b[8..10].try_into().unwrap()), 0x0080);
        assert_eq!((b[10], b[11]), (NTF_USE, 0));
    }

    #[test]
    fn an_absent_optional_sysctl_is_skipped_and_a_required_one_named() {
        let tmp = tempfile::tempdir().unwrap();
        let [v4, v6] = NOTIFY_SYSCTLS;
        let there = tmp.path().join("arp_notify");
        std::fs::write(&there, "0").unwrap();
        let gone = tmp.path().join("no-ipv6/ndisc_notify");
        // No IPv6 in the netns: IPv4's is set, IPv6's skipped.
        write_all(&[(v4, there.clone()), (v6, gone.clone())]).unwrap();
        assert_eq!(std::fs::read_to_string(&there).unwrap(), "1");
        // No such link: IPv4's is required, and the error says which one failed.
        let (which, e) = write_all(&[(v4, gone)]).unwrap_err();
        assert_eq!((which, e.kind()), (v4, io::ErrorKind::NotFound));
    }

    #[test]
    fn sysctl_paths_take_one_interface_name_only() {
        let s = NOTIFY_SYSCTLS[1];
        assert_eq!(
            sysctl_path(&s, "net1").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/net1/ndisc_notify")
        );
        for bad in ["", ".", "..", "a/b", "../../x", "sixteen-chars-xx", "a\0b"] {
            assert_eq!(sysctl_path(&s, bad), None, "{bad:?}");
        }
    }
}
