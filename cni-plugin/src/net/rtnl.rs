//! [`Rtnl`]: the real kernel behind [`LinkOps`], over synchronous rtnetlink and
//! `NETLINK_RDMA` sockets.
//!
//! * One netlink socket per network namespace (and per protocol), created on first use and
//!   kept for the life of the `Rtnl`. A socket for a netns file is created with the calling
//!   thread inside that netns for the `socket()` call only ([`super::netns::in_netns`]).
//! * No async runtime: each operation is one request and its answer. Measured on this
//!   kernel, a whole ADD+DEL cycle (move in + rename, MTU, up, address, default route; down,
//!   move back) costs ~1.1 ms of CPU, almost all of it the kernel moving the netdev; each
//!   other request 10–40 µs.
//! * Messages are built by hand ([`super::netns::Msg`]) rather than with
//!   `netlink-packet-route`: the layouts are few (`struct ifinfomsg` / `ifaddrmsg` / `rtmsg`
//!   from `include/uapi/linux/{rtnetlink,if_addr,if_link}.h`), answers are decoded without
//!   failing on attributes a newer kernel adds, and that crate's VF decoder folds the
//!   kernel's "driver does not say" (`(__u32)-1`) for spoofchk/trust into `false`. The
//!   encodings are cross-checked against that crate in `tests/net_encoding.rs`.
//!
//! Semantics beyond the trait's documentation:
//!
//! * `move_link` sends one `RTM_SETLINK` with `IFLA_NET_NS_FD` + `IFLA_IFNAME`. When the new
//!   name is taken in the target the kernel moves the link under its old name and answers
//!   `EEXIST`: that error says so ([`moved_under_old_name`] is true for it). When both names
//!   are taken nothing moves (also `EEXIST`, without that marker).
//! * `add_address` of an address the link already has, with the same prefix, succeeds
//!   (`EEXIST` is swallowed); the same address under another prefix is an error;
//!   IPv4 addresses get their broadcast address, as `ip addr add … brd +`.
//! * `addresses` lists both families, including the IPv6 link-local address the kernel adds
//!   when a link goes up.
//! * `add_route` puts routes in the main table (or the one given) with protocol `boot` (as
//!   `ip route add`), clears host bits of the destination, uses scope link for IPv4 routes
//!   without gateway (unless a scope is given), and treats a `0.0.0.0/0` / `::/0`
//!   destination as the default route. Without `NLM_F_EXCL`, as the reference plugins:
//!   another nexthop to a routed destination is added; an identical route is `EEXIST`.
//! * `list_routes` dumps both families and every table in one request and keeps the unicast
//!   routes, one entry per nexthop of a multipath route.
//! * `enable_address_notify` is no netlink request: it writes sysctls under `/proc/sys/net`
//!   with the thread inside the netns (no attribute sets `ndisc_notify`). `announce_ipv4`
//!   adds a neighbour entry with `NTF_USE` and deletes it ([`super::announce`]).
//! * ENODEV becomes [`NetError::NoSuchLink`]; EOPNOTSUPP from VF operations
//!   [`NetError::Unsupported`]; a missing RDMA subsystem or its shared netns mode too.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use railvf_host::Guid;

use super::announce::{self, NDA_DST, NTF_USE, NUD_NONE, RTM_DELNEIGH, RTM_NEWNEIGH, ndmsg};
use super::netns::{
    Msg, NETLINK_RDMA, NETLINK_ROUTE, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NlError, NlSocket,
    OpenError, Reply, attrs, get_str, get_u32, open_netns, put_attr,
};
use super::rdma::{self, NetnsMode};
use super::vf::{self, PfVfs, RTEXT_FILTER_SKIP_STATS, RTEXT_FILTER_VF, VfInfo};
use super::{
    IpNet, KernelRoute, Link, LinkOps, NetError, Netns, PodLink, RouteAttrs, VfSettings, format_mac,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_NET_NS_FD: u16 = 28;
/// The sysfs name of the netdev's parent device (Linux 5.14+), e.g. a PCI address.
pub const IFLA_PARENT_DEV_NAME: u16 = 56;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PRIORITY: u16 = 6;
pub const RTA_METRICS: u16 = 8;
pub const RTA_MULTIPATH: u16 = 9;
pub const RTA_TABLE: u16 = 15;
pub const RTAX_MTU: u16 = 2;
pub const RTAX_ADVMSS: u16 = 8;

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const IFF_UP: u32 = 1;

pub const RT_TABLE_MAIN: u8 = 254;
pub const RTPROT_BOOT: u8 = 3;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTN_UNICAST: u8 = 1;

/// Longest interface name (`IFNAMSIZ - 1`).
pub const IFNAMSIZ_MAX: usize = 15;

/// `struct ifinfomsg` (16 bytes).
pub fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    // b[1] pad, b[2..4] ifi_type
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct ifaddrmsg` (8 bytes).
pub fn ifaddrmsg(family: u8, prefixlen: u8, flags: u8, scope: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = family;
    b[1] = prefixlen;
    b[2] = flags;
    b[3] = scope;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// `struct rtmsg` (12 bytes).
#[allow(clippy::too_many_arguments)]
pub fn rtmsg(
    family: u8,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    kind: u8,
    flags: u32,
) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&[family, dst_len, src_len, tos, table, protocol, scope, kind]);
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// Decodes an `RTM_NEWLINK` payload (`struct ifinfomsg` + attributes) into a [`Link`].
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let hw_type = u16::from_ne_bytes([payload[2], payload[3]]);
    let ifindex = get_u32(&payload[4..8])?;
    let flags = get_u32(&payload[8..12])?;
    let mut link = Link {
        ifindex,
        name: String::new(),
        mtu: 0,
        mac: String::new(),
        up: flags & IFF_UP != 0,
        hw_type,
    };
    for (ty, v) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => link.name = get_str(v),
            IFLA_MTU => link.mtu = get_u32(v).unwrap_or(0),
            IFLA_ADDRESS => link.mac = format_mac(v),
            _ => {}
        }
    }
    Some(link)
}

/// Decodes an `RTM_NEWROUTE` payload (`struct rtmsg` + attributes): one [`KernelRoute`]
/// per nexthop (an IPv6 route with several gateways of the same metric comes as one
/// message with `RTA_MULTIPATH`). Nothing for a route that is not an IPv4 or IPv6 unicast
/// one (local, broadcast, multicast, blackhole…): CNI results only give unicast routes.
pub fn parse_routes(payload: &[u8]) -> Vec<KernelRoute> {
    if payload.len() < 12 {
        return vec![];
    }
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let (family, dst_len, table, kind) = (payload[0], payload[1], payload[4], payload[7]);
    if kind != RTN_UNICAST || !matches!(family, AF_INET | AF_INET6) {
        return vec![];
    }
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(table);
    let mut hops: Vec<(Option<u32>, Option<IpAddr>)> = Vec::new();
    for (ty, v) in attrs(&payload[12..]) {
        match ty {
            RTA_DST => dst = ip_from(family, v),
            RTA_GATEWAY => gw = ip_from(family, v),
            RTA_OIF => oif = get_u32(v),
            RTA_TABLE => table = get_u32(v).unwrap_or(table),
            RTA_MULTIPATH => hops = parse_nexthops(family, v),
            _ => {}
        }
    }
    let dst = match dst {
        Some(a) => IpNet {
            addr: a,
            prefix: dst_len,
        },
        // No RTA_DST: the default route of the family.
        None if family == AF_INET => IpNet {
            addr: Ipv4Addr::UNSPECIFIED.into(),
            prefix: 0,
        },
        None => IpNet {
            addr: std::net::Ipv6Addr::UNSPECIFIED.into(),
            prefix: 0,
        },
    };
    if hops.is_empty() {
        hops.push((oif, gw));
    }
    hops.into_iter()
        .map(|(oif, gw)| KernelRoute {
            dst,
            gw,
            oif,
            table,
        })
        .collect()
}

/// The nexthops of `RTA_MULTIPATH`: a `struct rtnexthop` (length, flags, hops, ifindex)
/// each, followed by its own attributes (`RTA_GATEWAY`).
fn parse_nexthops(family: u8, mut buf: &[u8]) -> Vec<(Option<u32>, Option<IpAddr>)> {
    let mut out = Vec::new();
    while buf.len() >= 8 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        if len < 8 || len > buf.len() {
            break;
        }
        let ifindex = get_u32(&buf[4..8]).filter(|i| *i != 0);
        let gw = attrs(&buf[8..len])
            .find(|(ty, _)| *ty == RTA_GATEWAY)
            .and_then(|(_, v)| ip_from(family, v));
        out.push((ifindex, gw));
        // RTNH_ALIGN: 4 bytes.
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

/// The `IFLA_PARENT_DEV_NAME` of an `RTM_NEWLINK` payload: the name of the netdev's
/// parent device (what `<device>/net/` lists it under in sysfs), if it has one and the
/// kernel reports it.
pub fn parse_parent_device(payload: &[u8]) -> Option<String> {
    attrs(payload.get(16..)?)
        .find(|(ty, _)| *ty == IFLA_PARENT_DEV_NAME)
        .map(|(_, v)| get_str(v))
}

/// Decodes an `RTM_NEWADDR` payload into `(ifindex, address)`.
pub fn parse_addr(payload: &[u8]) -> Option<(u32, IpNet)> {
    if payload.len() < 8 {
        return None;
    }
    let family = payload[0];
    let prefix = payload[1];
    let index = get_u32(&payload[4..8])?;
    let mut local = None;
    let mut address = None;
    for (ty, v) in attrs(&payload[8..]) {
        match ty {
            IFA_LOCAL => local = ip_from(family, v),
            IFA_ADDRESS => address = ip_from(family, v),
            _ => {}
        }
    }
    // IPv4: IFA_LOCAL is the interface's address (IFA_ADDRESS is the peer on p2p links).
    let addr = local.or(address)?;
    Some((index, IpNet { addr, prefix }))
}

fn ip_from(family: u8, v: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(v.get(..4)?).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(v.get(..16)?).ok()?)),
        _ => None,
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family_of(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `addr` with the bits past `prefix` cleared.
pub fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v) & mask))
        }
        IpAddr::V6(v) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v) & mask))
        }
    }
}

/// The IPv4 broadcast address of `addr/prefix`, for prefixes shorter than /31.
pub fn broadcast_v4(addr: std::net::Ipv4Addr, prefix: u8) -> Option<std::net::Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    let host = u32::MAX >> prefix;
    Some((u32::from(addr) | host).into())
}

/// How a namespace is named in messages.
pub fn ns_desc(ns: &Netns) -> String {
    match ns {
        Netns::Host => "the host netns".into(),
        Netns::Path(p) => format!("netns {}", p.display()),
    }
}

/// Marker in the message of the error [`LinkOps::move_link`] returns when the kernel moved
/// the link but could not give it the new name (see [`moved_under_old_name`]).
pub const MOVED_UNDER_OLD_NAME: &str = "the kernel moved it under its old name";

/// The error of a `move_link` whose link *did* move into the target netns, under its old
/// name `old`, because `new_name` exists there (errno `EEXIST`).
pub fn moved_error(
    old: &str,
    ifindex: u32,
    from: &Netns,
    to: &Netns,
    new_name: &str,
    now: u32,
) -> NetError {
    NetError::Kernel {
        op: format!(
            "move link {old} (ifindex {ifindex}) from {} into {} as {new_name}: {MOVED_UNDER_OLD_NAME} \
             ({old}, now ifindex {now} there) because a link named {new_name} already exists in {}",
            ns_desc(from),
            ns_desc(to),
            ns_desc(to)
        ),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    }
}

/// Whether `e` says the link was moved into the target netns under its old name (the
/// kernel's EEXIST-after-move: the new name was taken there).
pub fn moved_under_old_name(e: &NetError) -> bool {
    matches!(e, NetError::Kernel { op, source }
        if source.raw_os_error() == Some(libc::EEXIST) && op.contains(MOVED_UNDER_OLD_NAME))
}

/// A kernel error with the operation, the kernel's extended-ack text and the errno.
fn kernel(op: String, e: NlError) -> NetError {
    let op = match e.ext_ack() {
        Some(m) => format!("{op} (kernel: {m})"),
        None => op,
    };
    NetError::Kernel {
        op,
        source: e.to_io(),
    }
}

fn errno_err(op: String, errno: i32) -> NetError {
    NetError::Kernel {
        op,
        source: io::Error::from_raw_os_error(errno),
    }
}

#[derive(Default)]
struct Inner {
    route: HashMap<Netns, NlSocket>,
    rdma: HashMap<Netns, NlSocket>,
    files: HashMap<PathBuf, File>,
    /// The netns railvf runs in (`/proc/thread-self/ns/net`), for moves into [`Netns::Host`].
    host: Option<File>,
}

/// The real kernel: rtnetlink and `NETLINK_RDMA` sockets, one per network namespace.
///
/// Cheap to create (no syscall until first use). `Sync`: operations are serialized.
/// [`Netns::Host`] is the netns of the thread that first needs it; railvf never switches
/// its own threads, so that is the netns the process started in.
#[derive(Default)]
pub struct Rtnl {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Route,
    Rdma,
}

impl Inner {
    fn file(&mut self, ns: &Netns) -> Result<&File, NetError> {
        match ns {
            Netns::Host => {
                if self.host.is_none() {
                    let f =
                        File::open("/proc/thread-self/ns/net").map_err(|e| NetError::Netns {
                            path: "/proc/thread-self/ns/net".into(),
                            why: format!("cannot open railvf's own network namespace: {e}"),
                        })?;
                    self.host = Some(f);
                }
                Ok(self.host.as_ref().expect("just set"))
            }
            Netns::Path(p) => {
                if !self.files.contains_key(p) {
                    let f = open_netns(p).map_err(|e| NetError::Netns {
                        path: p.clone(),
                        why: format!(
                            "cannot open it: {e}{}",
                            if e.kind() == io::ErrorKind::NotFound {
                                " (is the pod sandbox gone?)"
                            } else {
                                ""
                            }
                        ),
                    })?;
                    self.files.insert(p.clone(), f);
                }
                Ok(&self.files[p])
            }
        }
    }

    fn socket(&mut self, ns: &Netns, proto: Proto) -> Result<&mut NlSocket, SockErr> {
        let have = match proto {
            Proto::Route => self.route.contains_key(ns),
            Proto::Rdma => self.rdma.contains_key(ns),
        };
        if !have {
            let protocol = match proto {
                Proto::Route => NETLINK_ROUTE,
                Proto::Rdma => NETLINK_RDMA,
            };
            let opened = match ns {
                Netns::Host => NlSocket::open(protocol, None),
                Netns::Path(_) => {
                    let f = self.file(ns).map_err(SockErr::Netns)?;
                    NlSocket::open(protocol, Some(f))
                }
            };
            let sock = opened.map_err(SockErr::Open)?;
            match proto {
                Proto::Route => self.route.insert(ns.clone(), sock),
                Proto::Rdma => self.rdma.insert(ns.clone(), sock),
            };
        }
        Ok(match proto {
            Proto::Route => self.route.get_mut(ns).expect("inserted"),
            Proto::Rdma => self.rdma.get_mut(ns).expect("inserted"),
        })
    }
}

/// Why no socket could be had for a netns (worded by [`SockErr::into_net`] once the lock is
/// released, because wording may look links up).
enum SockErr {
    Netns(NetError),
    Open(OpenError),
}

impl SockErr {
    fn into_net(self, ns: &Netns, proto: Proto, op: &str) -> NetError {
        let e = match self {
            SockErr::Netns(e) => return e,
            SockErr::Open(e) => e,
        };
        match (e, ns) {
            (OpenError::Setns(e), Netns::Path(p)) => NetError::Netns {
                path: p.clone(),
                why: if e.raw_os_error() == Some(libc::EINVAL) {
                    format!("cannot enter it: {e} (not a network namespace file?)")
                } else {
                    format!("cannot enter it: {e}")
                },
            },
            (OpenError::Setns(e), Netns::Host) => NetError::Kernel {
                op: format!("{op}: enter the host netns"),
                source: e,
            },
            (OpenError::Socket(e), _)
                if matches!(proto, Proto::Rdma)
                    && e.raw_os_error() == Some(libc::EPROTONOSUPPORT) =>
            {
                NetError::Unsupported {
                    op: op.to_string(),
                    what: "RDMA netlink (NETLINK_RDMA)",
                    detail: format!(
                        "socket(AF_NETLINK, NETLINK_RDMA) in {} failed: {e}; this kernel has no RDMA \
                         subsystem (ib_core not loaded or not built)",
                        ns_desc(ns)
                    ),
                }
            }
            (OpenError::Socket(e), _) => NetError::Kernel {
                op: format!(
                    "{op}: open a {} socket in {}",
                    match proto {
                        Proto::Route => "rtnetlink",
                        Proto::Rdma => "NETLINK_RDMA",
                    },
                    ns_desc(ns)
                ),
                source: e,
            },
        }
    }
}

impl Rtnl {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves sockets in a usable state: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `msg` on the rtnetlink socket of `ns`. The outer error is the socket (netns)
    /// failure, already worded; the inner one the kernel's answer.
    fn route(
        &self,
        ns: &Netns,
        msg: &Msg,
        op: &dyn Fn() -> String,
    ) -> Result<Result<Vec<Reply>, NlError>, NetError> {
        let res = {
            let mut inner = self.lock();
            inner.socket(ns, Proto::Route).map(|sock| sock.request(msg))
        };
        res.map_err(|e| e.into_net(ns, Proto::Route, &op()))
    }

    /// Moves `old` from `from` into `to` as `new_name` and, in the same SETLINK, sets the
    /// MTU and brings it up when asked (the kernel applies the move first, the flags last).
    /// Answers the link as it is in `to` afterwards.
    fn move_configured(
        &self,
        from: &Netns,
        old: &Link,
        to: &Netns,
        new_name: &str,
        set: PodLink,
        up: bool,
    ) -> Result<Link, NetError> {
        let ifindex = old.ifindex;
        let new_mac = set.mac.map(|m| format_mac(&m));
        // The link is ours when it shows the MAC it had, or the one this request gives it.
        let our_mac = |l: &Link| l.mac == old.mac || new_mac.as_ref() == Some(&l.mac);
        let what = || {
            let mut also = Vec::new();
            if let Some(m) = &new_mac {
                also.push(format!("MAC {m}"));
            }
            if let Some(m) = set.mtu {
                also.push(format!("MTU {m}"));
            }
            if up {
                also.push("up".to_string());
            }
            let also = if also.is_empty() {
                String::new()
            } else {
                format!(" ({})", also.join(", "))
            };
            format!(
                "move link {} (ifindex {ifindex}) from {} into {} as {new_name}{also}",
                old.name,
                ns_desc(from),
                ns_desc(to)
            )
        };
        let fd = self.ns_fd(to)?;
        let mut m = Msg::new(RTM_SETLINK, 0);
        let (flags, change) = if up { (IFF_UP, IFF_UP) } else { (0, 0) };
        m.header(&ifinfomsg(AF_UNSPEC, ifindex, flags, change))
            .attr_u32(IFLA_NET_NS_FD, fd as u32)
            .attr_str(IFLA_IFNAME, new_name);
        if let Some(mac) = &set.mac {
            m.attr(IFLA_ADDRESS, mac);
        }
        if let Some(mtu) = set.mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        match self.route(from, &m, &what)? {
            Ok(_) => {
                // The kernel keeps the ifindex when it is free in the target; check it first
                // (immune to a rename racing us), then fall back to the name.
                if let Some(l) = self.link_by_index(to, ifindex)?
                    && (l.name == new_name || our_mac(&l))
                {
                    return Ok(l);
                }
                self.link_by_name(to, new_name)?
                    .ok_or_else(|| NetError::NoSuchLink {
                        what: format!(
                            "{new_name} (moved there from {} as ifindex {ifindex})",
                            ns_desc(from)
                        ),
                        ns: ns_desc(to),
                    })
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                // Did it move? (FACTS: the kernel moves the link under its old name, then fails
                // the rename with EEXIST.)
                if self
                    .link_by_index(from, ifindex)?
                    .is_some_and(|l| l.name == old.name)
                {
                    return Err(kernel(
                        format!(
                            "{} — not moved: the names {} and {new_name} are both taken in {}",
                            what(),
                            old.name,
                            ns_desc(to)
                        ),
                        e,
                    ));
                }
                match self.link_by_name(to, &old.name)? {
                    Some(l) if our_mac(&l) => Err(moved_error(
                        &old.name, ifindex, from, to, new_name, l.ifindex,
                    )),
                    _ => Err(kernel(
                        format!(
                            "{} — and the link is no longer in {} under its old name",
                            what(),
                            ns_desc(from)
                        ),
                        e,
                    )),
                }
            }
            Err(e) => Err(kernel(what(), e)),
        }
    }

    /// The raw fd of the netns file of `ns` (kept open for the life of `self`).
    fn ns_fd(&self, ns: &Netns) -> Result<RawFd, NetError> {
        let mut inner = self.lock();
        Ok(inner.file(ns)?.as_raw_fd())
    }

    /// "net1 (ifindex 7)" when the link can be found, else "ifindex 7": for messages.
    fn describe(&self, ns: &Netns, ifindex: u32) -> String {
        match self.get_link(ns, ifindex, None) {
            Ok(Some(l)) => format!("{} (ifindex {ifindex})", l.name),
            _ => format!("ifindex {ifindex}"),
        }
    }

    fn no_such(&self, ns: &Netns, ifindex: u32) -> NetError {
        NetError::NoSuchLink {
            what: format!("ifindex {ifindex}"),
            ns: ns_desc(ns),
        }
    }

    fn get_link(
        &self,
        ns: &Netns,
        ifindex: u32,
        name: Option<&str>,
    ) -> Result<Option<Link>, NetError> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.header(&ifinfomsg(AF_UNSPEC, ifindex, 0, 0));
        if let Some(n) = name {
            m.attr_str(IFLA_IFNAME, n);
        }
        m.attr_u32(vf::IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let what = || match name {
            Some(n) => format!("look up link {n} in {}", ns_desc(ns)),
            None => format!("look up link ifindex {ifindex} in {}", ns_desc(ns)),
        };
        match self.route(ns, &m, &what)? {
            Ok(replies) => Ok(replies
                .iter()
                .filter(|r| r.ty == RTM_NEWLINK)
                .find_map(|r| parse_link(&r.payload))),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel(what(), e)),
        }
    }

    /// One `RTM_GETLINK` dump of `ns` (a link dump cannot be filtered by index): the
    /// `RTM_NEWLINK` payloads, with what `ext_mask` asks for.
    fn dump_links(
        &self,
        ns: &Netns,
        ext_mask: u32,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>, NetError> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_DUMP);
        m.header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_u32(vf::IFLA_EXT_MASK, ext_mask);
        let replies = self.route(ns, &m, what)?.map_err(|e| kernel(what(), e))?;
        Ok(replies
            .into_iter()
            .filter(|r| r.ty == RTM_NEWLINK)
            .map(|r| r.payload)
            .collect())
    }

    /// Every link in `ns`.
    pub fn links(&self, ns: &Netns) -> Result<Vec<Link>, NetError> {
        let what = || format!("list links in {}", ns_desc(ns));
        Ok(self
            .dump_links(ns, RTEXT_FILTER_SKIP_STATS, &what)?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect())
    }

    /// `RTM_SETLINK` on `ifindex` in `ns` with header flags and attributes; maps ENODEV to
    /// [`NetError::NoSuchLink`] and adds `hint(errno)` to other errors.
    fn set_link(
        &self,
        ns: &Netns,
        ifindex: u32,
        flags: (u32, u32),
        attrs: &dyn Fn(&mut Msg),
        what: &dyn Fn() -> String,
        hint: &dyn Fn(i32) -> Option<String>,
    ) -> Result<(), NetError> {
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.header(&ifinfomsg(AF_UNSPEC, ifindex, flags.0, flags.1));
        attrs(&mut m);
        match self.route(ns, &m, what)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(self.no_such(ns, ifindex)),
            Err(e) => {
                let mut op = what();
                if let Some(h) = e.errno().and_then(hint) {
                    op = format!("{op} ({h})");
                }
                Err(kernel(op, e))
            }
        }
    }

    /// The PF's VFs as the kernel reports them (`RTM_GETLINK` with `RTEXT_FILTER_VF`).
    pub fn pf_vfs(&self, pf_ifindex: u32) -> Result<PfVfs, NetError> {
        let host = Netns::Host;
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.header(&ifinfomsg(AF_UNSPEC, pf_ifindex, 0, 0));
        m.attr_u32(vf::IFLA_EXT_MASK, RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS);
        let what = || format!("read the VFs of PF ifindex {pf_ifindex} in the host netns");
        match self.route(&host, &m, &what)? {
            Ok(replies) => Ok(replies
                .iter()
                .find(|r| r.ty == RTM_NEWLINK && r.payload.len() >= 16)
                .map(|r| vf::decode_pf_vfs(&r.payload[16..]))
                .unwrap_or_default()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(NetError::NoSuchLink {
                what: format!("PF ifindex {pf_ifindex}"),
                ns: ns_desc(&host),
            }),
            // Kernels without "Allocate vfinfo size for VF GUIDs when supported" size the
            // answer for one link without the VF GUID attributes an IPoIB PF adds, and fail
            // it once a PF has enough VFs (16 on InfiniBand in the field). A dump's buffer
            // is larger: read the PF from the dump instead.
            Err(e) if e.errno() == Some(libc::EMSGSIZE) => {
                self.pf_vfs_from_dump(pf_ifindex)?.ok_or_else(|| {
                    kernel(
                        format!(
                            "{} (the kernel could not fit the PF's VF list in its answer, EMSGSIZE, and the PF is not in a dump of every link: update the kernel to one with \"Allocate vfinfo size for VF GUIDs when supported\")",
                            what()
                        ),
                        e,
                    )
                })
            }
            Err(e) => Err(kernel(what(), e)),
        }
    }

    /// [`Rtnl::pf_vfs`] read from a dump of every host link (a link dump cannot be
    /// filtered by index); `None` when the PF is not in it.
    pub fn pf_vfs_from_dump(&self, pf_ifindex: u32) -> Result<Option<PfVfs>, NetError> {
        let what =
            || format!("read the VFs of PF ifindex {pf_ifindex} from a dump of the host links");
        Ok(self
            .dump_links(
                &Netns::Host,
                RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS,
                &what,
            )?
            .iter()
            .find(|p| parse_link(p).is_some_and(|l| l.ifindex == pf_ifindex))
            .map(|p| vf::decode_pf_vfs(&p[16..])))
    }

    /// Everything the PF reports about VF `vf`, GUIDs included.
    pub fn vf_info(&self, pf_ifindex: u32, vf: u32) -> Result<VfInfo, NetError> {
        let pf = self.pf_vfs(pf_ifindex)?;
        let Some(n) = pf.num_vf else {
            let name = self.describe(&Netns::Host, pf_ifindex);
            return Err(NetError::Unsupported {
                op: format!("read VF {vf} of PF {name}"),
                what: "SR-IOV",
                detail: format!(
                    "{name} reports no VFs (no IFLA_NUM_VF in its RTM_NEWLINK with \
                     RTEXT_FILTER_VF): it is not an SR-IOV PF netdev"
                ),
            });
        };
        match pf.vfs.into_iter().find(|i| i.vf == vf) {
            Some(info) => Ok(info),
            None => Err(NetError::NoSuchLink {
                what: format!(
                    "VF {vf} of PF {} (it has {n} VFs)",
                    self.describe(&Netns::Host, pf_ifindex)
                ),
                ns: ns_desc(&Netns::Host),
            }),
        }
    }

    /// `RTM_SETLINK` on the PF carrying an `IFLA_VFINFO_LIST`.
    fn set_vfinfo(
        &self,
        pf_ifindex: u32,
        list: &[u8],
        what: &dyn Fn() -> String,
        feature: &'static str,
        hint: &str,
    ) -> Result<(), NetError> {
        let host = Netns::Host;
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.header(&ifinfomsg(AF_UNSPEC, pf_ifindex, 0, 0));
        m.raw_attrs(list);
        match self.route(&host, &m, what)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(NetError::NoSuchLink {
                what: format!("PF ifindex {pf_ifindex}"),
                ns: ns_desc(&host),
            }),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Err(NetError::Unsupported {
                op: what(),
                what: feature,
                detail: format!(
                    "the PF's driver answered EOPNOTSUPP{}: {hint}",
                    e.ext_ack()
                        .map(|m| format!(" (kernel: {m})"))
                        .unwrap_or_default()
                ),
            }),
            Err(e) => Err(kernel(what(), e)),
        }
    }

    /// Runs `f` on the `NETLINK_RDMA` socket of `ns`; `what` names the operation in errors.
    fn rdma<T>(
        &self,
        ns: &Netns,
        what: &dyn Fn() -> String,
        f: impl FnOnce(&mut NlSocket) -> Result<T, NlError>,
    ) -> Result<T, NetError> {
        let mut inner = self.lock();
        let sock = inner
            .socket(ns, Proto::Rdma)
            .map_err(|e| e.into_net(ns, Proto::Rdma, &what()))?;
        f(sock).map_err(|e| kernel(what(), e))
    }

    /// The RDMA subsystem's netns mode, asked in `ns`.
    pub fn rdma_netns_mode(&self, ns: &Netns) -> Result<Option<NetnsMode>, NetError> {
        let what = || format!("read the RDMA netns mode in {}", ns_desc(ns));
        self.rdma(ns, &what, rdma::netns_mode)
    }

    /// The RDMA devices visible in `ns`.
    pub fn rdma_devices(&self, ns: &Netns) -> Result<Vec<rdma::RdmaDev>, NetError> {
        let what = || format!("list RDMA devices in {}", ns_desc(ns));
        self.rdma(ns, &what, rdma::devices)
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= IFNAMSIZ_MAX
}

impl LinkOps for Rtnl {
    /// A file on nsfs ([`super::netns::open_nsfs`]) that `setns(CLONE_NEWNET)` accepts: the
    /// proof is the pod's route socket itself, opened from inside it and kept for the
    /// requests that follow.
    fn check_netns(&self, path: &std::path::Path) -> Result<(), String> {
        let f = super::netns::open_nsfs(path)?;
        let sock = match NlSocket::open(NETLINK_ROUTE, Some(&f)) {
            Ok(s) => s,
            Err(OpenError::Setns(e)) => return Err(super::netns::setns_refusal(&e)),
            Err(OpenError::Socket(e)) => {
                return Err(format!("no netlink socket can be opened in it: {e}"));
            }
        };
        let ns = Netns::path(path);
        let mut inner = self.lock();
        inner.files.insert(path.to_path_buf(), f);
        inner.route.insert(ns, sock);
        Ok(())
    }

    fn link_by_name(&self, ns: &Netns, name: &str) -> Result<Option<Link>, NetError> {
        if !valid_ifname(name) {
            return Ok(None); // no link can have that name
        }
        self.get_link(ns, 0, Some(name))
    }

    fn link_by_index(&self, ns: &Netns, ifindex: u32) -> Result<Option<Link>, NetError> {
        if ifindex == 0 || ifindex > i32::MAX as u32 {
            return Ok(None);
        }
        self.get_link(ns, ifindex, None)
    }

    /// One `RTM_GETLINK` dump of `ns`, kept where `IFLA_PARENT_DEV_NAME` is `device`.
    fn links_of_device(&self, ns: &Netns, device: &str) -> Result<Vec<Link>, NetError> {
        let what = || format!("list the links of device {device} in {}", ns_desc(ns));
        Ok(self
            .dump_links(ns, RTEXT_FILTER_SKIP_STATS, &what)?
            .iter()
            .filter(|p| parse_parent_device(p).as_deref() == Some(device))
            .filter_map(|p| parse_link(p))
            .collect())
    }

    fn move_link(
        &self,
        from: &Netns,
        ifindex: u32,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError> {
        let old = self
            .link_by_index(from, ifindex)?
            .ok_or_else(|| self.no_such(from, ifindex))?;
        self.move_found_link(from, &old, to, new_name)
    }

    fn move_found_link(
        &self,
        from: &Netns,
        old: &Link,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError> {
        self.move_configured(from, old, to, new_name, PodLink::default(), false)
    }

    fn move_found_link_up(
        &self,
        from: &Netns,
        link: &Link,
        to: &Netns,
        new_name: &str,
        set: PodLink,
    ) -> Result<Link, NetError> {
        self.move_configured(from, link, to, new_name, set, true)
    }

    fn rename(&self, ns: &Netns, ifindex: u32, name: &str) -> Result<(), NetError> {
        let what = || {
            format!(
                "rename link {} in {} to {name}",
                self.describe(ns, ifindex),
                ns_desc(ns)
            )
        };
        let hint = |errno: i32| match errno {
            libc::EBUSY => Some("a link must be down to be renamed".to_string()),
            libc::EEXIST => Some(format!("a link named {name} already exists there")),
            libc::EINVAL if !valid_ifname(name) => {
                Some(format!("interface names are 1 to {IFNAMSIZ_MAX} bytes"))
            }
            _ => None,
        };
        self.set_link(
            ns,
            ifindex,
            (0, 0),
            &|m| {
                m.attr_str(IFLA_IFNAME, name);
            },
            &what,
            &hint,
        )
    }

    fn set_mtu(&self, ns: &Netns, ifindex: u32, mtu: u32) -> Result<(), NetError> {
        let what = || {
            format!(
                "set MTU {mtu} on link {} in {}",
                self.describe(ns, ifindex),
                ns_desc(ns)
            )
        };
        self.set_link(
            ns,
            ifindex,
            (0, 0),
            &|m| {
                m.attr_u32(IFLA_MTU, mtu);
            },
            &what,
            &|_| None,
        )
    }

    fn set_mac(&self, ns: &Netns, ifindex: u32, mac: [u8; 6]) -> Result<(), NetError> {
        let what = || {
            format!(
                "set MAC {} on link {} in {}",
                format_mac(&mac),
                self.describe(ns, ifindex),
                ns_desc(ns)
            )
        };
        self.set_link(
            ns,
            ifindex,
            (0, 0),
            &|m| {
                m.attr(IFLA_ADDRESS, &mac);
            },
            &what,
            &|errno| {
                (errno == libc::EBUSY)
                    .then(|| "this driver changes the MAC only while the link is down".to_string())
            },
        )
    }

    fn set_up(&self, ns: &Netns, ifindex: u32, up: bool) -> Result<(), NetError> {
        let what = || {
            format!(
                "set link {} {} in {}",
                self.describe(ns, ifindex),
                if up { "up" } else { "down" },
                ns_desc(ns)
            )
        };
        self.set_link(
            ns,
            ifindex,
            (if up { IFF_UP } else { 0 }, IFF_UP),
            &|_| {},
            &what,
            &|_| None,
        )
    }

    fn add_address(&self, ns: &Netns, ifindex: u32, addr: IpNet) -> Result<(), NetError> {
        let what = || {
            format!(
                "add address {}/{} to link {} in {}",
                addr.addr,
                addr.prefix,
                self.describe(ns, ifindex),
                ns_desc(ns)
            )
        };
        let max = if addr.addr.is_ipv4() { 32 } else { 128 };
        if addr.prefix > max {
            return Err(errno_err(
                format!("{} (prefix longer than {max})", what()),
                libc::EINVAL,
            ));
        }
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        m.header(&ifaddrmsg(
            family_of(&addr.addr),
            addr.prefix,
            0,
            RT_SCOPE_UNIVERSE,
            ifindex,
        ));
        let bytes = ip_bytes(&addr.addr);
        if let IpAddr::V4(v4) = addr.addr {
            m.attr(IFA_LOCAL, &bytes);
            m.attr(IFA_ADDRESS, &bytes);
            if let Some(b) = broadcast_v4(v4, addr.prefix) {
                m.attr(IFA_BROADCAST, &b.octets());
            }
        } else {
            m.attr(IFA_ADDRESS, &bytes);
        }
        match self.route(ns, &m, &what)? {
            Ok(_) => Ok(()),
            // IPv4 answers EEXIST only for this very address and prefix; IPv6 for this
            // address under any prefix. Only the very same one is "nothing to do".
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                let have = self.addresses(ns, ifindex)?;
                if have.contains(&addr) {
                    return Ok(());
                }
                match have.iter().find(|h| h.addr == addr.addr) {
                    Some(other) => Err(errno_err(
                        format!(
                            "{} (the link already has {}/{}; a second IPAM result or range gives it /{}: make the IPAM config agree)",
                            what(),
                            other.addr,
                            other.prefix,
                            addr.prefix
                        ),
                        libc::EEXIST,
                    )),
                    None => Err(kernel(what(), e)),
                }
            }
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(self.no_such(ns, ifindex)),
            Err(e) => Err(kernel(what(), e)),
        }
    }

    fn enable_address_notify(&self, ns: &Netns, ifname: &str) -> Result<(), NetError> {
        let what = |s: &announce::NotifySysctl| {
            format!(
                "set net.{}.conf.{ifname}.{}=1 in {}",
                s.family,
                s.key,
                ns_desc(ns)
            )
        };
        // A netns without IPv6 has no ndisc_notify: nothing to announce there, skipped.
        let mut inner = self.lock();
        announce::enable_notify(inner.file(ns)?, ifname).map_err(|(s, e)| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                format!(" (no link {ifname} there)")
            } else {
                String::new()
            };
            NetError::Kernel {
                op: format!("{}{hint}", what(&s)),
                source: e,
            }
        })
    }

    fn announce_ipv4(&self, ns: &Netns, ifindex: u32, addr: Ipv4Addr) -> Result<(), NetError> {
        let what = || {
            format!(
                "announce {addr} on link {} in {} (gratuitous ARP)",
                self.describe(ns, ifindex),
                ns_desc(ns)
            )
        };
        // A new entry for the link's own address, "used": the kernel sends its first
        // probe, an ARP request for `addr` from `addr`, before this returns. EXCL: an
        // entry someone else made is neither probed again nor deleted below.
        let mut m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL);
        m.header(&ndmsg(AF_INET, ifindex, NUD_NONE, NTF_USE));
        m.attr(NDA_DST, &addr.octets());
        match self.route(ns, &m, &what)? {
            Ok(_) => {}
            Err(e) if e.errno() == Some(libc::ENODEV) => return Err(self.no_such(ns, ifindex)),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                return Err(kernel(
                    format!(
                        "{} (the pod netns has a neighbour entry for the address itself: left as it is)",
                        what()
                    ),
                    e,
                ));
            }
            Err(e) => return Err(kernel(what(), e)),
        }
        // The probe is out; without the entry no more follow and nothing stays behind.
        let mut d = Msg::new(RTM_DELNEIGH, 0);
        d.header(&ndmsg(AF_INET, ifindex, NUD_NONE, 0));
        d.attr(NDA_DST, &addr.octets());
        let del = || format!("{}: delete the neighbour entry it made", what());
        match self.route(ns, &d, &del)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(kernel(del(), e)),
        }
    }

    fn addresses(&self, ns: &Netns, ifindex: u32) -> Result<Vec<IpNet>, NetError> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        // With NETLINK_GET_STRICT_CHK the kernel filters the dump by ifa_index.
        m.header(&ifaddrmsg(AF_UNSPEC, 0, 0, 0, ifindex));
        let what = || {
            format!(
                "list addresses of link ifindex {ifindex} in {}",
                ns_desc(ns)
            )
        };
        match self.route(ns, &m, &what)? {
            Ok(replies) => Ok(replies
                .iter()
                .filter_map(|r| parse_addr(&r.payload))
                .filter(|(i, _)| *i == ifindex)
                .map(|(_, a)| a)
                .collect()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(self.no_such(ns, ifindex)),
            Err(e) => Err(kernel(what(), e)),
        }
    }

    /// One `RTM_GETROUTE` dump of both families and every table (`rtm_table` 0).
    fn list_routes(&self, ns: &Netns) -> Result<Vec<KernelRoute>, NetError> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        m.header(&rtmsg(AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0));
        let what = || format!("list the routes in {}", ns_desc(ns));
        let replies = self.route(ns, &m, &what)?.map_err(|e| kernel(what(), e))?;
        Ok(replies
            .iter()
            .filter(|r| r.ty == RTM_NEWROUTE)
            .flat_map(|r| parse_routes(&r.payload))
            .collect())
    }

    fn add_route_with(
        &self,
        ns: &Netns,
        ifindex: u32,
        dst: IpNet,
        gw: Option<IpAddr>,
        attrs: &RouteAttrs,
    ) -> Result<(), NetError> {
        let what = || {
            format!(
                "add route to {}/{}{} dev {}{} in {}",
                dst.addr,
                dst.prefix,
                gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                self.describe(ns, ifindex),
                describe_attrs(attrs),
                ns_desc(ns)
            )
        };
        let family = family_of(&dst.addr);
        let max = if dst.addr.is_ipv4() { 32 } else { 128 };
        if dst.prefix > max {
            return Err(errno_err(
                format!("{} (prefix longer than {max})", what()),
                libc::EINVAL,
            ));
        }
        if let Some(g) = gw
            && family_of(&g) != family
        {
            return Err(errno_err(
                format!(
                    "{} (gateway and destination are of different IP families)",
                    what()
                ),
                libc::EINVAL,
            ));
        }
        // The kernel refuses an IPv4 destination with host bits set; CNI results may carry one.
        let net = network(dst.addr, dst.prefix);
        // IPv4 routes without a gateway are on-link (scope link); IPv6 routes have no scope.
        let scope = attrs.scope.unwrap_or(if gw.is_none() && family == AF_INET {
            RT_SCOPE_LINK
        } else {
            RT_SCOPE_UNIVERSE
        });
        // Tables above 255 only fit RTA_TABLE (as `ip route … table N` sends them).
        let table = attrs.table_or_main();
        let header_table = u8::try_from(table).unwrap_or(0);
        // No NLM_F_EXCL, as the reference plugins: another nexthop to a destination already
        // routed is added beside it; only an identical route is refused (EEXIST).
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE);
        m.header(&rtmsg(
            family,
            dst.prefix,
            0,
            0,
            header_table,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
            0,
        ));
        if dst.prefix > 0 {
            m.attr(RTA_DST, &ip_bytes(&net));
        }
        if let Some(g) = gw {
            m.attr(RTA_GATEWAY, &ip_bytes(&g));
        }
        m.attr_u32(RTA_OIF, ifindex);
        m.attr_u32(RTA_TABLE, table);
        if let Some(p) = attrs.metric {
            m.attr_u32(RTA_PRIORITY, p);
        }
        let mut metrics = Vec::new();
        for (ty, v) in [(RTAX_MTU, attrs.mtu), (RTAX_ADVMSS, attrs.advmss)] {
            if let Some(v) = v {
                put_attr(&mut metrics, ty, &v.to_ne_bytes());
            }
        }
        if !metrics.is_empty() {
            m.attr(RTA_METRICS, &metrics);
        }
        match self.route(ns, &m, &what)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(self.no_such(ns, ifindex)),
            Err(e) => {
                let down = || matches!(self.link_by_index(ns, ifindex), Ok(Some(l)) if !l.up);
                let hint = match e.errno() {
                    Some(libc::ENETDOWN) => " (bring the link up first)",
                    // With the link down its subnets have no routes yet, so the kernel
                    // cannot reach the gateway (IPv4: ENETUNREACH, IPv6: EHOSTUNREACH).
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH) if down() => {
                        " (the link is down: bring the link up first)"
                    }
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => {
                        " (the gateway is not on a subnet of this link)"
                    }
                    Some(libc::EEXIST) => " (the same route already exists)",
                    _ => "",
                };
                Err(kernel(format!("{}{hint}", what()), e))
            }
        }
    }

    fn vf_settings(&self, pf_ifindex: u32, vf: u32) -> Result<VfSettings, NetError> {
        Ok(self.vf_info(pf_ifindex, vf)?.settings)
    }

    fn set_vf(&self, pf_ifindex: u32, vf: u32, settings: &VfSettings) -> Result<(), NetError> {
        let Some(list) = vf::encode_vf_settings(vf, settings) else {
            return Ok(());
        };
        let what = || {
            format!(
                "set {} on VF {vf} through PF {}",
                vf::describe_settings(settings),
                self.describe(&Netns::Host, pf_ifindex)
            )
        };
        self.set_vfinfo(
            pf_ifindex,
            &list,
            &what,
            "SR-IOV VF configuration",
            "the netdev has no SR-IOV VFs, or its driver does not support one of these settings \
             (an InfiniBand PF takes GUIDs, not MAC/VLAN)",
        )
    }

    fn set_vf_guids(
        &self,
        pf_ifindex: u32,
        vf: u32,
        node: Guid,
        port: Guid,
    ) -> Result<(), NetError> {
        let list = vf::encode_vf_guids(vf, node, port);
        let what = || {
            format!(
                "set node GUID {} and port GUID {} on VF {vf} through PF {}",
                node.to_colon_bytes(),
                port.to_colon_bytes(),
                self.describe(&Netns::Host, pf_ifindex)
            )
        };
        self.set_vfinfo(
            pf_ifindex,
            &list,
            &what,
            "InfiniBand VF GUIDs over netlink",
            "the netdev has no SR-IOV VFs or its driver cannot set VF GUIDs (IFLA_VF_IB_NODE_GUID); \
             MLNX_OFED hosts take them in <pf>/sriov/<vf>/{node,port} instead",
        )
    }

    fn move_rdma_device(&self, ibdev: &str, from: &Netns, to: &Netns) -> Result<(), NetError> {
        let what = || {
            format!(
                "move RDMA device {ibdev} from {} into {}",
                ns_desc(from),
                ns_desc(to)
            )
        };
        let fd = self.ns_fd(to)?;
        let mut inner = self.lock();
        let sock = inner
            .socket(from, Proto::Rdma)
            .map_err(|e| e.into_net(from, Proto::Rdma, &what()))?;
        let devs =
            rdma::devices(sock).map_err(|e| kernel(format!("{}: list RDMA devices", what()), e))?;
        let Some(index) = devs.iter().find(|d| d.name == ibdev).map(|d| d.index) else {
            return Err(NetError::NoSuchLink {
                what: format!(
                    "RDMA device {ibdev} (visible: {})",
                    if devs.is_empty() {
                        "none".to_string()
                    } else {
                        devs.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                ns: ns_desc(from),
            });
        };
        match rdma::set_netns(sock, index, fd) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mode = rdma::netns_mode(sock).ok().flatten();
                match (e.errno(), mode) {
                    (Some(libc::EOPNOTSUPP), Some(NetnsMode::Shared)) => Err(NetError::Unsupported {
                        op: what(),
                        what: "moving RDMA devices between network namespaces",
                        detail: "the RDMA subsystem is in shared netns mode; set `rdma system set netns \
                                 exclusive` (or the ib_core module parameter netns_mode=0) before any \
                                 pod starts"
                            .into(),
                    }),
                    (Some(libc::EOPNOTSUPP), _) => Err(NetError::Unsupported {
                        op: what(),
                        what: "moving this RDMA device between network namespaces",
                        detail: format!(
                            "the kernel answered EOPNOTSUPP with the RDMA subsystem in {} netns mode: \
                             the device's driver cannot disassociate user contexts{}",
                            match mode {
                                Some(NetnsMode::Exclusive) => "exclusive",
                                _ => "an unknown",
                            },
                            e.ext_ack().map(|m| format!(" (kernel: {m})")).unwrap_or_default()
                        ),
                    }),
                    _ => Err(kernel(what(), e)),
                }
            }
        }
    }

    fn rdma_port1(&self, ns: &Netns, ibdev: &str) -> Result<Option<rdma::PortView>, NetError> {
        let what = || format!("read port 1 of RDMA device {ibdev} in {}", ns_desc(ns));
        self.rdma(ns, &what, |sock| rdma::port1(sock, ibdev))
    }
}

/// ` table 101 metric 50 scope 253 mtu 1400 advmss 1360`, the attributes given.
fn describe_attrs(a: &RouteAttrs) -> String {
    let mut s = String::new();
    for (k, v) in [
        ("table", a.table),
        ("metric", a.metric),
        ("scope", a.scope.map(u32::from)),
        ("mtu", a.mtu),
        ("advmss", a.advmss),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(" {k} {v}"));
        }
    }
    s
}
