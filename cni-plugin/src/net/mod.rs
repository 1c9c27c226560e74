//! Side effects on the kernel's networking: links in network namespaces (rtnetlink),
//! VF settings on the PF, GUIDs, and RDMA devices (NETLINK_RDMA).
//!
//! The CNI verbs talk to [`LinkOps`] only, so their logic is unit-tested against
//! [`fake::FakeLinks`] without root; [`rtnl::Rtnl`] is the real kernel.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use railvf_host::Guid;

pub mod announce;
pub mod fake;
pub mod netns;
pub mod rdma;
pub mod rtnl;
pub mod vf;

/// A network namespace: the one railvf runs in (the host's), or a bind-mounted netns file
/// such as `CNI_NETNS` (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Netns {
    Host,
    Path(PathBuf),
}

impl Netns {
    pub fn path(p: impl AsRef<Path>) -> Self {
        Netns::Path(p.as_ref().to_path_buf())
    }
}

/// `ARPHRD_ETHER` (`include/uapi/linux/if_arp.h`): the hardware type of an Ethernet
/// netdev (a RoCE VF's, a veth).
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_INFINIBAND`: the hardware type IPoIB gives its netdevs (`ipoib_setup_common()`).
pub const ARPHRD_INFINIBAND: u16 = 32;
/// `ARPHRD_LOOPBACK`.
pub const ARPHRD_LOOPBACK: u16 = 772;

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    /// Hardware address as `aa:bb:…` (20 bytes for IPoIB, 6 for Ethernet).
    pub mac: String,
    pub up: bool,
    /// The hardware type (`ifi_type`, an `ARPHRD_*` value): [`ARPHRD_INFINIBAND`] for an
    /// IPoIB netdev, [`ARPHRD_ETHER`] for an Ethernet one.
    pub hw_type: u16,
}

impl Link {
    /// Whether this is an IPoIB netdev (an InfiniBand VF's).
    pub fn is_ipoib(&self) -> bool {
        self.hw_type == ARPHRD_INFINIBAND
    }
}

/// One route of a network namespace as a dump of its routing tables shows it; a route
/// with several nexthops is one `KernelRoute` per nexthop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination, host bits clear; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The outgoing link, when the route names one.
    pub oif: Option<u32>,
    /// The routing table (`RT_TABLE_MAIN`, 254, unless a `table` was given).
    pub table: u32,
}

/// What ADD sets on the VF's netdev as it moves it into the pod, before bringing it up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLink {
    /// The config's `mtu`.
    pub mtu: Option<u32>,
    /// The netdev's own (effective) MAC: the VF's admin MAC, set through the PF, is not
    /// what every driver's netdev takes on at once, so sriov-cni sets both, and so does
    /// railvf. Ethernet netdevs only.
    pub mac: Option<[u8; 6]>,
}

/// `aa:bb:…`, as links show their hardware address.
pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether the kernel takes `name` for an interface (its `dev_valid_name()`): 1 to
/// [`rtnl::IFNAMSIZ_MAX`] bytes, not `.` or `..`, no `/`, `:` or whitespace. Such a name is
/// also one path component.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= rtnl::IFNAMSIZ_MAX
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// An Ethernet MAC written `aa:bb:cc:dd:ee:ff` (or with `-`) as bytes; `None` for
/// anything else (an IPoIB address is 20 bytes).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        // Two hex digits: `from_str_radix` alone would take "+f".
        let p = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// VF settings applied through the PF (Ethernet/RoCE VFs; IB VFs take GUIDs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfSettings {
    pub mac: Option<[u8; 6]>,
    /// VLAN id, QoS and protocol (0x8100 802.1Q / 0x88a8 802.1ad).
    pub vlan: Option<(u16, u8, u16)>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    /// min/max tx rate in Mbps.
    pub rate: Option<(u32, u32)>,
    /// `auto` 0, `enable` 1, `disable` 2 (IFLA_VF_LINK_STATE_*).
    pub link_state: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}: {why}")]
    Netns { path: PathBuf, why: String },
    #[error("link {what} not found in {ns}")]
    NoSuchLink { what: String, ns: String },
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: the kernel has no {what} support here ({detail})")]
    Unsupported {
        op: String,
        what: &'static str,
        detail: String,
    },
}

impl NetError {
    /// The errno of a kernel error, to tell `EEXIST` and the like apart.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A route's optional attributes (CNI 1.1 result: `table`, `priority`, `scope`, `mtu`,
/// `advmss`); `None` leaves the kernel's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteAttrs {
    pub table: Option<u32>,
    /// `priority` in the CNI result; the route's metric.
    pub metric: Option<u32>,
    pub scope: Option<u8>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
}

impl RouteAttrs {
    /// The table the route is in: `table`, or the main one when none (or 0) is given, as
    /// the kernel takes it.
    pub fn table_or_main(&self) -> u32 {
        self.table
            .filter(|t| *t != 0)
            .unwrap_or(rtnl::RT_TABLE_MAIN.into())
    }
}

/// What the CNI verbs need from the kernel's networking.
pub trait LinkOps {
    /// The link called `name` in `ns`, if any.
    fn link_by_name(&self, ns: &Netns, name: &str) -> Result<Option<Link>, NetError>;
    /// The link with `ifindex` in `ns`, if any.
    fn link_by_index(&self, ns: &Netns, ifindex: u32) -> Result<Option<Link>, NetError>;
    /// The links in `ns` whose parent device is `device` (its sysfs name: a VF's PCI
    /// address), as the kernel reports it (`IFLA_PARENT_DEV_NAME`, Linux 5.14 and later;
    /// an older kernel reports none). What sysfs's `<device>/net/` shows, for a namespace
    /// whose sysfs railvf does not see (a pod's).
    fn links_of_device(&self, ns: &Netns, device: &str) -> Result<Vec<Link>, NetError>;
    /// Moves the link `ifindex` from `from` into `to`, named `new_name` there, in one
    /// request where the kernel allows. The kernel may move it under its old name and then
    /// fail with EEXIST: callers look in both namespaces after an error.
    fn move_link(
        &self,
        from: &Netns,
        ifindex: u32,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError>;
    /// [`LinkOps::move_link`] for a link the caller has just looked up (`link`, as found in
    /// `from`): the kernel implementation then skips looking it up again.
    fn move_found_link(
        &self,
        from: &Netns,
        link: &Link,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError> {
        self.move_link(from, link.ifindex, to, new_name)
    }
    /// [`LinkOps::move_found_link`], then, in `to`, the MAC and MTU (when given) and the
    /// link up: what ADD does with a VF. The kernel implementation sends one request (a
    /// SETLINK applies the netns move, the address, the MTU, the name and the flags, in that
    /// order). After an error the link may be in either namespace, under either name, and
    /// down: callers look in both, as after [`LinkOps::move_link`].
    fn move_found_link_up(
        &self,
        from: &Netns,
        link: &Link,
        to: &Netns,
        new_name: &str,
        set: PodLink,
    ) -> Result<Link, NetError> {
        let mut moved = self.move_found_link(from, link, to, new_name)?;
        if let Some(mac) = set.mac {
            self.set_mac(to, moved.ifindex, mac)?;
            moved.mac = format_mac(&mac);
        }
        if let Some(m) = set.mtu {
            self.set_mtu(to, moved.ifindex, m)?;
            moved.mtu = m;
        }
        self.set_up(to, moved.ifindex, true)?;
        moved.up = true;
        Ok(moved)
    }
    fn rename(&self, ns: &Netns, ifindex: u32, name: &str) -> Result<(), NetError>;
    fn set_mtu(&self, ns: &Netns, ifindex: u32, mtu: u32) -> Result<(), NetError>;
    /// Sets the link's own hardware address (an Ethernet MAC).
    fn set_mac(&self, ns: &Netns, ifindex: u32, mac: [u8; 6]) -> Result<(), NetError>;
    fn set_up(&self, ns: &Netns, ifindex: u32, up: bool) -> Result<(), NetError>;
    fn add_address(&self, ns: &Netns, ifindex: u32, addr: IpNet) -> Result<(), NetError>;
    /// Has the kernel tell the neighbours of link `ifname` in `ns` about its addresses, as
    /// sriov-cni does: `arp_notify` (a gratuitous ARP whenever the link comes up or changes
    /// its address) and `ndisc_notify` (an unsolicited neighbour advertisement when an IPv6
    /// address has passed duplicate address detection). A netns without IPv6 gets the first
    /// only. See [`announce`].
    fn enable_address_notify(&self, ns: &Netns, ifname: &str) -> Result<(), NetError>;
    /// Announces IPv4 address `addr` of link `ifindex` in `ns` once, with a gratuitous ARP:
    /// neighbours that map `addr` to another MAC (its previous owner's) take the link's.
    /// Leaves no neighbour entry behind. See [`announce`].
    fn announce_ipv4(&self, ns: &Netns, ifindex: u32, addr: Ipv4Addr) -> Result<(), NetError>;
    fn addresses(&self, ns: &Netns, ifindex: u32) -> Result<Vec<IpNet>, NetError>;
    /// The unicast routes of `ns`, both families, every table (`ip route show table all`).
    fn list_routes(&self, ns: &Netns) -> Result<Vec<KernelRoute>, NetError>;
    /// Adds a route via `gw` (or on-link when `None`) out of `ifindex`, in the main table
    /// with the kernel's default metric.
    fn add_route(
        &self,
        ns: &Netns,
        ifindex: u32,
        dst: IpNet,
        gw: Option<IpAddr>,
    ) -> Result<(), NetError> {
        self.add_route_with(ns, ifindex, dst, gw, &RouteAttrs::default())
    }
    /// [`LinkOps::add_route`] with the attributes a CNI 1.1 result may give a route. As the
    /// reference plugins do, a route to a destination the table already routes through
    /// another nexthop is added beside it; only an identical route fails (`EEXIST`).
    fn add_route_with(
        &self,
        ns: &Netns,
        ifindex: u32,
        dst: IpNet,
        gw: Option<IpAddr>,
        attrs: &RouteAttrs,
    ) -> Result<(), NetError>;
    /// Current settings of VF `vf` of the PF netdev `pf_ifindex` (host namespace).
    fn vf_settings(&self, pf_ifindex: u32, vf: u32) -> Result<VfSettings, NetError>;
    /// Applies the `Some` fields of `settings` to VF `vf` through the PF.
    fn set_vf(&self, pf_ifindex: u32, vf: u32, settings: &VfSettings) -> Result<(), NetError>;
    /// Sets the VF's node and port GUIDs through the PF (IFLA_VF_IB_NODE_GUID / _PORT_GUID).
    fn set_vf_guids(
        &self,
        pf_ifindex: u32,
        vf: u32,
        node: Guid,
        port: Guid,
    ) -> Result<(), NetError>;
    /// Moves the RDMA device `ibdev`, seen in `from`, into `to` (RDMA_NLDEV_CMD_SET with
    /// the target netns fd); needs the RDMA subsystem in exclusive netns mode.
    fn move_rdma_device(&self, ibdev: &str, from: &Netns, to: &Netns) -> Result<(), NetError>;
    /// Port 1 of the RDMA device `ibdev` as RDMA netlink shows it in `ns`; `None` when no
    /// such device is visible there. How a device isolated in a pod is read: the host's
    /// sysfs no longer lists it.
    fn rdma_port1(&self, ns: &Netns, ibdev: &str) -> Result<Option<rdma::PortView>, NetError>;
    /// Whether `path` (`CNI_NETNS`) is a network namespace, or why not. The default only
    /// checks that it exists; the kernel's implementation checks what it is.
    fn check_netns(&self, path: &Path) -> Result<(), String> {
        if path.exists() {
            Ok(())
        } else {
            Err("it does not exist".into())
        }
    }
}
