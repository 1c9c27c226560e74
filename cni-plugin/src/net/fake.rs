//! [`FakeLinks`]: an in-memory kernel for root-free tests of the CNI verbs.
//!
//! It behaves like the kernel where the CNI flows can tell the difference:
//!
//! * every namespace starts with `lo` (ifindex 1); ifindexes are per namespace and a moved
//!   link keeps its ifindex unless the target already uses it;
//! * names are unique per namespace, 1–15 bytes, no `/`, `:` or whitespace;
//! * `move_link` with a new name follows the kernel: if the *old* name is taken in the
//!   target and the new one too, nothing moves (`EEXIST`); if only the old one is taken, the
//!   link moves straight under the new name; if the old name is free but the new one is
//!   taken, **the link moves under its old name and the call fails with `EEXIST`**
//!   ([`super::rtnl::moved_under_old_name`] is true for that error);
//! * a moved link arrives down, without addresses, and its routes are gone;
//! * renaming an up link fails with `EBUSY`, as on the kernels of RHEL 8/9 DGX nodes (Linux
//!   6.x allows it; code that renames before bringing a link up works on both); MTU outside
//!   the link's range fails with `EINVAL`;
//! * routes follow the kernel's answers (probed on 6.18): on-link routes and IPv6 link-local
//!   gateways need the link up (`ENETDOWN`); other gateways must be inside one of the link's
//!   subnets or on-link routes (IPv4 `ENETUNREACH`, IPv6 `EHOSTUNREACH`), which a down link
//!   does not have yet; a duplicate destination is `EEXIST`; adding an address the link
//!   already has is not an error (as [`super::rtnl::Rtnl`]);
//! * a namespace's route dump ([`LinkOps::list_routes`]) holds the routes added to it, and
//!   unlike the kernel's not the routes the kernel adds itself (an address's prefix route,
//!   the local table): look routes up with `contains` or `find`, not list equality;
//! * unlike the kernel, no IPv6 link-local (`fe80::/64`) address appears when a link goes
//!   up: compare address lists with `contains`, not equality, in code that also runs on
//!   the real kernel;
//! * VF settings and GUIDs live per (PF, VF); a link that is not an SR-IOV PF answers as a
//!   veth does ([`NetError::Unsupported`]);
//! * RDMA devices belong to a namespace; the subsystem can be absent, shared or exclusive
//!   ([`RdmaMode`]);
//! * a link may have a device ([`FakeLinks::set_device`], the kernel's parent device, e.g.
//!   the VF's PCI address), which it keeps when it moves: [`LinkOps::links_of_device`]
//!   answers from it;
//! * an InfiniBand VF's netdev is IPoIB's, a client of its RDMA device
//!   ([`FakeLinks::set_ipoib`]), of hardware type `ARPHRD_INFINIBAND` (every other link
//!   but `lo` is `ARPHRD_ETHER`): moving the RDMA device to another namespace re-creates it,
//!   as the kernel's `rdma_dev_change_netns()` does (`disable_device()` removes every
//!   ib_client, IPoIB unregistering the netdev wherever it is; `enable_device_and_get()`
//!   adds them back, IPoIB registering a new netdev): the netdev vanishes and a new one
//!   appears with a new ifindex, the kernel's `ib<n>` name, its default MTU, down, without
//!   addresses, with a new hardware address (the new queue pair's number is part of it)
//!   and the same device. It appears in the host namespace, or, as since Linux 6.17
//!   ([`IpoibNetns::RdmaDevice`]), in the RDMA device's. An Ethernet (RoCE) netdev is no
//!   ib_client's and is left alone;
//! * deleting a namespace returns its RDMA devices to the host first (re-creating their
//!   IPoIB netdevs there, as above: the kernel's RDMA pernet exit runs before the one that
//!   returns netdevs), then its physical links (renamed `dev<ifindex>` when their name is
//!   taken there), and destroys virtual ones.
//!
//! Knobs: [`FakeLinks::fail`] / [`FakeLinks::fail_once`] / [`FakeLinks::fail_nth`] inject an
//! error into one operation (before or after it takes effect); [`FakeLinks::calls`] records
//! every call.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard};

use railvf_host::Guid;

use super::rdma::PortView;
use super::rtnl::{IFNAMSIZ_MAX, moved_error, network, ns_desc};
use super::vf::{ETH_P_8021AD, ETH_P_8021Q, describe_settings};
use super::{
    ARPHRD_ETHER, ARPHRD_INFINIBAND, ARPHRD_LOOPBACK, IpNet, KernelRoute, Link, LinkOps, NetError,
    Netns, RouteAttrs, VfSettings, valid_ifname,
};

/// The operations of [`LinkOps`], to aim injected failures and to read the call log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FakeOp {
    LinkByName,
    LinkByIndex,
    LinksOfDevice,
    MoveLink,
    Rename,
    SetMtu,
    SetMac,
    SetUp,
    AddAddress,
    EnableAddressNotify,
    AnnounceIpv4,
    Addresses,
    ListRoutes,
    AddRoute,
    VfSettings,
    SetVf,
    SetVfGuids,
    MoveRdmaDevice,
    RdmaPort1,
}

/// An injected failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inject {
    /// Fail with this errno before anything changes.
    Errno(i32),
    /// Do the operation, then fail with this errno (a kernel that applied part of a request
    /// and still answered an error; the caller must look at the real state).
    ErrnoAfterEffect(i32),
    /// Fail with [`NetError::Unsupported`].
    Unsupported,
    /// The process is killed before the operation: the call panics (in a unit test, what a
    /// SIGKILL leaves: no rollback runs; catch it with `std::panic::catch_unwind`).
    Kill,
    /// The process is killed just after the operation took effect.
    KillAfterEffect,
}

/// The panic message of [`Inject::Kill`] and [`Inject::KillAfterEffect`].
pub const KILLED: &str = "killed by an injected fault";

/// The RDMA subsystem as the fake kernel has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RdmaMode {
    /// No RDMA subsystem (`socket(AF_NETLINK, …, NETLINK_RDMA)` fails), as on this CI.
    Absent,
    /// Shared netns mode (the kernel's default): devices cannot move.
    Shared,
    /// Exclusive netns mode: devices move with `move_rdma_device`.
    #[default]
    Exclusive,
}

/// Where IPoIB registers the netdev it re-creates when an RDMA device changes namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpoibNetns {
    /// The initial namespace (the host): kernels before commit f1208b05574f ("RDMA/ipoib:
    /// Use parent rdma device net namespace", Linux 6.17, also in 6.16.y).
    #[default]
    Initial,
    /// The RDMA device's namespace (that commit and after).
    RdmaDevice,
}

/// What to create with [`FakeLinks::add_link_with`].
#[derive(Clone, Debug)]
pub struct FakeLinkSpec {
    pub name: String,
    /// `None`: a locally administered MAC derived from a counter.
    pub mac: Option<String>,
    pub mtu: u32,
    pub min_mtu: u32,
    pub max_mtu: u32,
    pub up: bool,
    /// A physical device (a VF netdev) survives the deletion of its namespace: it returns
    /// to the host. A virtual one (veth) is destroyed.
    pub physical: bool,
    /// `Some(n)`: an SR-IOV PF with `n` VFs.
    pub num_vfs: Option<u32>,
}

impl FakeLinkSpec {
    pub fn new(name: &str) -> Self {
        FakeLinkSpec {
            name: name.to_string(),
            mac: None,
            mtu: 1500,
            min_mtu: 68,
            max_mtu: 9978,
            up: false,
            physical: true,
            num_vfs: None,
        }
    }
}

/// A route as the fake kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub attrs: RouteAttrs,
}

/// One VF's state on its PF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVf {
    pub settings: VfSettings,
    pub node_guid: Guid,
    pub port_guid: Guid,
}

impl Default for FakeVf {
    fn default() -> Self {
        FakeVf {
            settings: VfSettings {
                mac: Some([0; 6]),
                vlan: Some((0, 0, ETH_P_8021Q)),
                spoofchk: Some(true),
                trust: Some(false),
                rate: Some((0, 0)),
                link_state: Some(0),
            },
            node_guid: Guid(0),
            port_guid: Guid(0),
        }
    }
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeCall {
    pub op: FakeOp,
    /// A readable rendering of the arguments.
    pub args: String,
    /// `Ok` or the error's text.
    pub result: Result<(), String>,
}

#[derive(Clone, Debug)]
struct FLink {
    ifindex: u32,
    name: String,
    mac: String,
    mtu: u32,
    min_mtu: u32,
    max_mtu: u32,
    up: bool,
    physical: bool,
    addrs: Vec<IpNet>,
    /// `arp_notify` / `ndisc_notify` on ([`LinkOps::enable_address_notify`]); a link's
    /// per-namespace settings start over when it moves, as the kernel's do.
    notify: bool,
    num_vfs: Option<u32>,
    /// The RDMA device whose IPoIB netdev this is ([`FakeLinks::set_ipoib`]).
    ipoib_of: Option<String>,
    /// The parent device's name ([`FakeLinks::set_device`]).
    device: Option<String>,
}

impl FLink {
    fn view(&self) -> Link {
        // IPoIB's netdevs are the InfiniBand ones; `lo` (ifindex 1 in every namespace) is the
        // only other kind the fake has.
        let hw_type = if self.ipoib_of.is_some() {
            ARPHRD_INFINIBAND
        } else if self.ifindex == 1 && self.name == "lo" && !self.physical {
            ARPHRD_LOOPBACK
        } else {
            ARPHRD_ETHER
        };
        Link {
            ifindex: self.ifindex,
            name: self.name.clone(),
            mtu: self.mtu,
            mac: self.mac.clone(),
            up: self.up,
            hw_type,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct FNs {
    links: BTreeMap<u32, FLink>,
    routes: Vec<FakeRoute>,
}

impl FNs {
    fn with_lo() -> Self {
        let mut ns = FNs::default();
        ns.links.insert(
            1,
            FLink {
                ifindex: 1,
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                mtu: 65536,
                min_mtu: 0,
                max_mtu: u32::MAX,
                up: true,
                physical: false,
                addrs: vec![],
                notify: false,
                num_vfs: None,
                ipoib_of: None,
                device: None,
            },
        );
        ns
    }

    fn by_name(&self, name: &str) -> Option<&FLink> {
        self.links.values().find(|l| l.name == name)
    }

    fn next_index(&self) -> u32 {
        self.links.keys().next_back().copied().unwrap_or(0) + 1
    }
}

#[derive(Clone, Debug)]
struct Failure {
    op: FakeOp,
    /// Calls of `op` still to let through before failing; `None` = fail every call.
    skip: Option<usize>,
    how: Inject,
}

/// What IPoIB gives the netdev it registers for an RDMA device.
#[derive(Clone, Debug)]
struct IpoibDefaults {
    mtu: u32,
    min_mtu: u32,
    max_mtu: u32,
    device: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    ns: HashMap<Netns, FNs>,
    vfs: BTreeMap<(u32, u32), FakeVf>,
    rdma: BTreeMap<String, Netns>,
    /// What RDMA netlink shows of port 1 of a device ([`FakeLinks::set_rdma_port1`]).
    rdma_ports: BTreeMap<String, PortView>,
    /// RDMA devices with an InfiniBand port, whose netdev IPoIB re-creates when they move.
    ipoib: BTreeMap<String, IpoibDefaults>,
    ipoib_netns: IpoibNetns,
    ipoib_fails: bool,
    /// The highest ifindex a re-created netdev got: the kernel never hands one out twice in
    /// a namespace, so neither does the fake.
    last_new_ifindex: u32,
    rdma_mode: RdmaMode,
    failures: Vec<Failure>,
    calls: Vec<FakeCall>,
    mac_counter: u32,
}

impl State {
    /// The link `ifindex` of `ns`, for a test's set-up call `who`; panics when there is
    /// none (a test bug).
    fn link_mut(&mut self, ns: &Netns, ifindex: u32, who: &str) -> &mut FLink {
        self.ns
            .get_mut(ns)
            .and_then(|n| n.links.get_mut(&ifindex))
            .unwrap_or_else(|| panic!("FakeLinks::{who}: no link {ifindex} in {ns:?}"))
    }
}

/// The in-memory kernel. `Sync`; every method takes `&self`.
#[derive(Debug)]
pub struct FakeLinks {
    st: Mutex<State>,
}

impl Default for FakeLinks {
    fn default() -> Self {
        Self::new()
    }
}

fn no_ns(ns: &Netns) -> NetError {
    match ns {
        Netns::Host => NetError::Netns {
            path: "/proc/thread-self/ns/net".into(),
            why: "the fake host netns is missing".into(),
        },
        Netns::Path(p) => NetError::Netns {
            path: p.clone(),
            why: format!(
                "cannot open it: {} (is the pod sandbox gone?)",
                io::Error::from_raw_os_error(libc::ENOENT)
            ),
        },
    }
}

fn kerr(op: String, errno: i32) -> NetError {
    NetError::Kernel {
        op,
        source: io::Error::from_raw_os_error(errno),
    }
}

fn no_link(ns: &Netns, ifindex: u32) -> NetError {
    NetError::NoSuchLink {
        what: format!("ifindex {ifindex}"),
        ns: ns_desc(ns),
    }
}

/// What the kernel answers `op` on RDMA netlink when it has no RDMA subsystem.
fn no_rdma(op: String) -> NetError {
    NetError::Unsupported {
        op,
        what: "RDMA netlink (NETLINK_RDMA)",
        detail: "socket(AF_NETLINK, NETLINK_RDMA) failed: Protocol not supported; this kernel \
                 has no RDMA subsystem (ib_core not loaded or not built)"
            .into(),
    }
}

fn family_eq(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn contains(net: &IpNet, a: &IpAddr) -> bool {
    family_eq(&net.addr, a) && network(net.addr, net.prefix) == network(*a, net.prefix)
}

impl FakeLinks {
    /// A kernel with only the host namespace (holding `lo`).
    pub fn new() -> Self {
        let mut st = State::default();
        st.ns.insert(Netns::Host, FNs::with_lo());
        FakeLinks { st: Mutex::new(st) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a network namespace (as `ip netns add` would); no-op if it exists.
    pub fn add_netns(&self, ns: &Netns) {
        self.lock()
            .ns
            .entry(ns.clone())
            .or_insert_with(FNs::with_lo);
    }

    /// Deletes a namespace the way the kernel tears one down: RDMA devices return to the
    /// host (their IPoIB netdevs are re-created there, see [`FakeLinks::set_ipoib`]), then
    /// physical links go back to the host (renamed `dev<ifindex>` if their name is taken
    /// there), and virtual ones vanish.
    pub fn remove_netns(&self, ns: &Netns) {
        if *ns == Netns::Host {
            return;
        }
        let mut st = self.lock();
        let Some(gone) = st.ns.remove(ns) else { return };
        let mut returning = Vec::new();
        for (name, rd) in st.rdma.iter_mut() {
            if rd == ns {
                *rd = Netns::Host;
                returning.push(name.clone());
            }
        }
        for dev in &returning {
            recreate_ipoib(&mut st, dev);
        }
        let host = st.ns.get_mut(&Netns::Host).expect("host netns");
        for (_, mut l) in gone.links {
            // An IPoIB netdev of a returning RDMA device was unregistered with it.
            if !l.physical || l.ipoib_of.as_ref().is_some_and(|d| returning.contains(d)) {
                continue;
            }
            if host.by_name(&l.name).is_some() {
                l.name = format!("dev{}", l.ifindex);
            }
            if host.links.contains_key(&l.ifindex) {
                l.ifindex = host.next_index();
            }
            l.up = false;
            l.addrs.clear();
            l.notify = false;
            host.links.insert(l.ifindex, l);
        }
    }

    /// Creates a physical Ethernet-like link (MTU 1500, down) in `ns`; returns its ifindex.
    /// Panics if `ns` does not exist or the name is taken (a test bug).
    pub fn add_link(&self, ns: &Netns, name: &str) -> u32 {
        self.add_link_with(ns, FakeLinkSpec::new(name))
    }

    /// Creates an SR-IOV PF with `num_vfs` VFs in the host namespace; returns its ifindex.
    pub fn add_pf(&self, name: &str, num_vfs: u32) -> u32 {
        let mut spec = FakeLinkSpec::new(name);
        spec.num_vfs = Some(num_vfs);
        spec.up = true;
        self.add_link_with(&Netns::Host, spec)
    }

    /// Creates a link from `spec`; returns its ifindex. Panics if `ns` does not exist or
    /// the name is taken or invalid (a test bug).
    pub fn add_link_with(&self, ns: &Netns, spec: FakeLinkSpec) -> u32 {
        let mut st = self.lock();
        st.mac_counter += 1;
        let mac = spec.mac.clone().unwrap_or_else(|| {
            let c = st.mac_counter.to_be_bytes();
            format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", c[0], c[1], c[2], c[3])
        });
        let n = st
            .ns
            .get_mut(ns)
            .unwrap_or_else(|| panic!("FakeLinks::add_link: no namespace {ns:?}"));
        assert!(
            valid_ifname(&spec.name),
            "FakeLinks::add_link: invalid name {:?}",
            spec.name
        );
        assert!(
            n.by_name(&spec.name).is_none(),
            "FakeLinks::add_link: {} exists in {ns:?}",
            spec.name
        );
        let ifindex = n.next_index();
        n.links.insert(
            ifindex,
            FLink {
                ifindex,
                name: spec.name,
                mac,
                mtu: spec.mtu,
                min_mtu: spec.min_mtu,
                max_mtu: spec.max_mtu,
                up: spec.up,
                physical: spec.physical,
                addrs: vec![],
                notify: false,
                num_vfs: spec.num_vfs,
                ipoib_of: None,
                device: None,
            },
        );
        if let Some(num) = spec.num_vfs {
            for vf in 0..num {
                st.vfs.insert((ifindex, vf), FakeVf::default());
            }
        }
        ifindex
    }

    /// Registers an RDMA device in `ns`, its port 1 an active InfiniBand port with a LID
    /// and a Subnet Manager (change it with [`FakeLinks::set_rdma_port1`]).
    pub fn add_rdma_device(&self, ns: &Netns, name: &str) {
        let mut st = self.lock();
        st.rdma.insert(name.to_string(), ns.clone());
        st.rdma_ports.insert(
            name.to_string(),
            PortView {
                node_guid: Some(0x0002_c903_00a0_0001),
                protocol: Some("ib".into()),
                state: Some(4),
                phys_state: Some(5),
                lid: Some(0x21),
                sm_lid: Some(0x1),
            },
        );
    }

    /// Sets what RDMA netlink shows of port 1 of device `name`.
    pub fn set_rdma_port1(&self, name: &str, view: PortView) {
        self.lock().rdma_ports.insert(name.to_string(), view);
    }

    /// Gives the link `ifindex` of `ns` its parent device (a PCI address), as the kernel
    /// reports it in `IFLA_PARENT_DEV_NAME` and sysfs in `<device>/net/`. Call before
    /// [`FakeLinks::set_ipoib`]. Panics if there is no such link (a test bug).
    pub fn set_device(&self, ns: &Netns, ifindex: u32, device: &str) {
        let mut st = self.lock();
        let l = st.link_mut(ns, ifindex, "set_device");
        l.device = Some(device.to_string());
    }

    /// Where IPoIB registers the netdevs it re-creates (default [`IpoibNetns::Initial`]).
    pub fn set_ipoib_netns(&self, at: IpoibNetns) {
        self.lock().ipoib_netns = at;
    }

    /// `true`: IPoIB fails to register the netdevs it re-creates (the kernel logs "couldn't
    /// register ipoib port"): a moving RDMA device's netdev vanishes and none appears.
    pub fn set_ipoib_fails(&self, fails: bool) {
        self.lock().ipoib_fails = fails;
    }

    /// The links of the host namespace whose device is `device`: what sysfs shows in
    /// `<device>/net/`.
    pub fn host_links_of_device(&self, device: &str) -> Vec<Link> {
        self.lock().ns[&Netns::Host]
            .links
            .values()
            .filter(|l| l.device.as_deref() == Some(device))
            .map(FLink::view)
            .collect()
    }

    /// Makes the link `ifindex` of `ns` the IPoIB netdev of the RDMA device `ibdev` (a VF
    /// whose port's link layer is InfiniBand): moving `ibdev` to another namespace then
    /// re-creates it in the host, with the MTU and MTU range it has now. Panics if there is
    /// no such link (a test bug).
    pub fn set_ipoib(&self, ibdev: &str, ns: &Netns, ifindex: u32) {
        let mut st = self.lock();
        let l = st.link_mut(ns, ifindex, "set_ipoib");
        l.ipoib_of = Some(ibdev.to_string());
        let defaults = IpoibDefaults {
            mtu: l.mtu,
            min_mtu: l.min_mtu,
            max_mtu: l.max_mtu,
            device: l.device.clone(),
        };
        st.ipoib.insert(ibdev.to_string(), defaults);
    }

    /// Makes `ibdev`'s port an Ethernet (RoCE) one: its netdev is left alone when it moves.
    pub fn forget_ipoib(&self, ibdev: &str) {
        let mut st = self.lock();
        st.ipoib.remove(ibdev);
        for n in st.ns.values_mut() {
            for l in n.links.values_mut() {
                if l.ipoib_of.as_deref() == Some(ibdev) {
                    l.ipoib_of = None;
                }
            }
        }
    }

    /// Where the IPoIB netdev of `ibdev` is, and what it is now.
    pub fn ipoib_netdev(&self, ibdev: &str) -> Option<(Netns, Link)> {
        self.lock().ns.iter().find_map(|(ns, n)| {
            n.links
                .values()
                .find(|l| l.ipoib_of.as_deref() == Some(ibdev))
                .map(|l| (ns.clone(), l.view()))
        })
    }

    /// Sets the RDMA subsystem's mode (default [`RdmaMode::Exclusive`]).
    pub fn set_rdma_mode(&self, mode: RdmaMode) {
        self.lock().rdma_mode = mode;
    }

    /// The namespace RDMA device `name` is in.
    pub fn rdma_device_netns(&self, name: &str) -> Option<Netns> {
        self.lock().rdma.get(name).cloned()
    }

    /// Fails every call of `op` with `how` until [`FakeLinks::clear_failures`].
    pub fn fail(&self, op: FakeOp, how: Inject) {
        self.lock().failures.push(Failure {
            op,
            skip: None,
            how,
        });
    }

    /// Fails the next call of `op` only.
    pub fn fail_once(&self, op: FakeOp, how: Inject) {
        self.fail_nth(op, 1, how);
    }

    /// Fails the `n`-th next call of `op` (1 = the next one) only.
    pub fn fail_nth(&self, op: FakeOp, n: usize, how: Inject) {
        assert!(n >= 1, "fail_nth counts from 1");
        self.lock().failures.push(Failure {
            op,
            skip: Some(n - 1),
            how,
        });
    }

    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// How many times `op` was called.
    pub fn count(&self, op: FakeOp) -> usize {
        self.lock().calls.iter().filter(|c| c.op == op).count()
    }

    /// The links of `ns` (empty if it does not exist).
    pub fn links(&self, ns: &Netns) -> Vec<Link> {
        self.lock()
            .ns
            .get(ns)
            .map(|n| n.links.values().map(FLink::view).collect())
            .unwrap_or_default()
    }

    /// Whether link `ifindex` of `ns` has `arp_notify` and `ndisc_notify` on.
    pub fn address_notify(&self, ns: &Netns, ifindex: u32) -> bool {
        self.lock()
            .ns
            .get(ns)
            .and_then(|n| n.links.get(&ifindex))
            .is_some_and(|l| l.notify)
    }

    /// Every namespace holding a link called `name`, with that link (host first, then by
    /// path).
    pub fn find(&self, name: &str) -> Vec<(Netns, Link)> {
        let mut found: Vec<(Netns, Link)> = self
            .lock()
            .ns
            .iter()
            .filter_map(|(ns, n)| n.by_name(name).map(|l| (ns.clone(), l.view())))
            .collect();
        found.sort_by_key(|(ns, _)| match ns {
            Netns::Host => None,
            Netns::Path(p) => Some(p.clone()),
        });
        found
    }

    /// The routes of `ns`.
    pub fn routes(&self, ns: &Netns) -> Vec<FakeRoute> {
        self.lock()
            .ns
            .get(ns)
            .map(|n| n.routes.clone())
            .unwrap_or_default()
    }

    /// VF `vf` of PF `pf_ifindex`, GUIDs included.
    pub fn vf(&self, pf_ifindex: u32, vf: u32) -> Option<FakeVf> {
        self.lock().vfs.get(&(pf_ifindex, vf)).cloned()
    }

    /// Runs `body` as operation `op`: consults injected failures, logs the call.
    fn run<T>(
        &self,
        op: FakeOp,
        args: String,
        what: &str,
        body: impl FnOnce(&mut State) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let mut st = self.lock();
        let mut inject = None;
        let mut remove = None;
        for (i, f) in st.failures.iter_mut().enumerate() {
            if f.op != op {
                continue;
            }
            match &mut f.skip {
                None => {
                    inject = Some(f.how.clone());
                    break;
                }
                Some(0) => {
                    inject = Some(f.how.clone());
                    remove = Some(i);
                    break;
                }
                Some(n) => *n -= 1,
            }
        }
        if let Some(i) = remove {
            st.failures.remove(i);
        }
        let injected = |how: &Inject| -> NetError {
            match how {
                Inject::Errno(e) | Inject::ErrnoAfterEffect(e) => {
                    kerr(format!("{what} (injected)"), *e)
                }
                Inject::Unsupported => NetError::Unsupported {
                    op: what.to_string(),
                    what: "the injected feature",
                    detail: "injected by FakeLinks".into(),
                },
                Inject::Kill | Inject::KillAfterEffect => unreachable!("a kill panics"),
            }
        };
        let res = match &inject {
            Some(how @ (Inject::Errno(_) | Inject::Unsupported)) => Err(injected(how)),
            Some(how @ Inject::ErrnoAfterEffect(_)) => match body(&mut st) {
                Ok(_) => Err(injected(how)),
                Err(e) => Err(e),
            },
            Some(Inject::Kill) => Err(kerr(format!("{what} ({KILLED})"), libc::EINTR)),
            Some(Inject::KillAfterEffect) | None => body(&mut st),
        };
        st.calls.push(FakeCall {
            op,
            args,
            result: res.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        });
        if matches!(inject, Some(Inject::Kill | Inject::KillAfterEffect)) {
            drop(st);
            panic!("{KILLED}: {what}");
        }
        res
    }
}

fn ns_mut<'a>(st: &'a mut State, ns: &Netns) -> Result<&'a mut FNs, NetError> {
    st.ns.get_mut(ns).ok_or_else(|| no_ns(ns))
}

fn link_mut<'a>(st: &'a mut State, ns: &Netns, ifindex: u32) -> Result<&'a mut FLink, NetError> {
    ns_mut(st, ns)?
        .links
        .get_mut(&ifindex)
        .ok_or_else(|| no_link(ns, ifindex))
}

impl LinkOps for FakeLinks {
    fn link_by_name(&self, ns: &Netns, name: &str) -> Result<Option<Link>, NetError> {
        self.run(
            FakeOp::LinkByName,
            format!("{ns:?} {name}"),
            &format!("look up link {name} in {}", ns_desc(ns)),
            |st| Ok(ns_mut(st, ns)?.by_name(name).map(FLink::view)),
        )
    }

    fn link_by_index(&self, ns: &Netns, ifindex: u32) -> Result<Option<Link>, NetError> {
        self.run(
            FakeOp::LinkByIndex,
            format!("{ns:?} {ifindex}"),
            &format!("look up link ifindex {ifindex} in {}", ns_desc(ns)),
            |st| Ok(ns_mut(st, ns)?.links.get(&ifindex).map(FLink::view)),
        )
    }

    fn links_of_device(&self, ns: &Netns, device: &str) -> Result<Vec<Link>, NetError> {
        self.run(
            FakeOp::LinksOfDevice,
            format!("{ns:?} {device}"),
            &format!("list the links of device {device} in {}", ns_desc(ns)),
            |st| {
                Ok(ns_mut(st, ns)?
                    .links
                    .values()
                    .filter(|l| l.device.as_deref() == Some(device))
                    .map(FLink::view)
                    .collect())
            },
        )
    }

    fn move_link(
        &self,
        from: &Netns,
        ifindex: u32,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError> {
        let what = format!(
            "move link ifindex {ifindex} from {} into {} as {new_name}",
            ns_desc(from),
            ns_desc(to)
        );
        self.run(
            FakeOp::MoveLink,
            format!("{from:?} {ifindex} -> {to:?} {new_name}"),
            &what.clone(),
            |st| {
                ns_mut(st, to)?;
                let old = ns_mut(st, from)?
                    .links
                    .get(&ifindex)
                    .cloned()
                    .ok_or_else(|| no_link(from, ifindex))?;
                if !valid_ifname(new_name) {
                    return Err(kerr(
                        format!("{what} (kernel: Attribute failed policy validation)"),
                        libc::EINVAL,
                    ));
                }
                if from == to {
                    // The kernel skips the move and only renames.
                    let n = ns_mut(st, to)?;
                    if old.name != new_name {
                        if n.by_name(new_name).is_some() {
                            return Err(kerr(what, libc::EEXIST));
                        }
                        if old.up {
                            return Err(kerr(what, libc::EBUSY));
                        }
                        n.links.get_mut(&ifindex).expect("present").name = new_name.to_string();
                    }
                    return Ok(n.links[&ifindex].view());
                }
                let target = ns_mut(st, to)?;
                let old_taken = target.by_name(&old.name).is_some();
                let new_taken = target.by_name(new_name).is_some();
                if old_taken && (new_taken || old.name == new_name) {
                    return Err(kerr(
                        format!("{what} — not moved: both names are taken there"),
                        libc::EEXIST,
                    ));
                }
                // Move: the link arrives down, without addresses; its routes stay behind (gone).
                let mut l = ns_mut(st, from)?.links.remove(&ifindex).expect("present");
                ns_mut(st, from)?.routes.retain(|r| r.oif != ifindex);
                let target = ns_mut(st, to)?;
                if target.links.contains_key(&l.ifindex) {
                    l.ifindex = target.next_index();
                }
                l.up = false;
                l.addrs.clear();
                l.notify = false;
                if old_taken {
                    l.name = new_name.to_string(); // renamed during the move
                }
                let now = l.ifindex;
                target.links.insert(now, l);
                if new_taken {
                    return Err(moved_error(&old.name, ifindex, from, to, new_name, now));
                }
                let l = target.links.get_mut(&now).expect("inserted");
                l.name = new_name.to_string();
                Ok(l.view())
            },
        )
    }

    fn rename(&self, ns: &Netns, ifindex: u32, name: &str) -> Result<(), NetError> {
        let what = format!("rename link ifindex {ifindex} in {} to {name}", ns_desc(ns));
        self.run(
            FakeOp::Rename,
            format!("{ns:?} {ifindex} {name}"),
            &what,
            |st| {
                if !valid_ifname(name) {
                    return Err(kerr(
                        format!("{what} (interface names are 1 to {IFNAMSIZ_MAX} bytes)"),
                        libc::EINVAL,
                    ));
                }
                let n = ns_mut(st, ns)?;
                let l = n.links.get(&ifindex).ok_or_else(|| no_link(ns, ifindex))?;
                if l.name == name {
                    return Ok(());
                }
                if n.by_name(name).is_some() {
                    return Err(kerr(
                        format!("{what} (a link named {name} already exists there)"),
                        libc::EEXIST,
                    ));
                }
                let l = n.links.get_mut(&ifindex).expect("present");
                if l.up {
                    return Err(kerr(
                        format!("{what} (a link must be down to be renamed)"),
                        libc::EBUSY,
                    ));
                }
                l.name = name.to_string();
                Ok(())
            },
        )
    }

    fn set_mtu(&self, ns: &Netns, ifindex: u32, mtu: u32) -> Result<(), NetError> {
        let what = format!("set MTU {mtu} on link ifindex {ifindex} in {}", ns_desc(ns));
        self.run(
            FakeOp::SetMtu,
            format!("{ns:?} {ifindex} {mtu}"),
            &what,
            |st| {
                let l = link_mut(st, ns, ifindex)?;
                if mtu < l.min_mtu || mtu > l.max_mtu {
                    let why = if mtu > l.max_mtu {
                        "mtu greater than device maximum"
                    } else {
                        "mtu less than device minimum"
                    };
                    return Err(kerr(format!("{what} (kernel: {why})"), libc::EINVAL));
                }
                l.mtu = mtu;
                Ok(())
            },
        )
    }

    fn set_mac(&self, ns: &Netns, ifindex: u32, mac: [u8; 6]) -> Result<(), NetError> {
        let text = super::format_mac(&mac);
        let what = format!(
            "set MAC {text} on link ifindex {ifindex} in {}",
            ns_desc(ns)
        );
        self.run(
            FakeOp::SetMac,
            format!("{ns:?} {ifindex} {text}"),
            &what,
            |st| {
                let l = link_mut(st, ns, ifindex)?;
                // The kernel's eth_mac_addr(): the address must fit the device's length
                // (IPoIB's is 20 bytes) and be a valid unicast one.
                if l.mac.len() != text.len() {
                    return Err(kerr(format!("{what} (kernel: wrong length)"), libc::EINVAL));
                }
                if mac[0] & 1 == 1 || mac == [0; 6] {
                    return Err(kerr(what.clone(), libc::EADDRNOTAVAIL));
                }
                l.mac = text.clone();
                Ok(())
            },
        )
    }

    fn set_up(&self, ns: &Netns, ifindex: u32, up: bool) -> Result<(), NetError> {
        let what = format!(
            "set link ifindex {ifindex} {} in {}",
            if up { "up" } else { "down" },
            ns_desc(ns)
        );
        self.run(
            FakeOp::SetUp,
            format!("{ns:?} {ifindex} {up}"),
            &what,
            |st| {
                link_mut(st, ns, ifindex)?.up = up;
                if !up {
                    // IPv4 routes through a down link go away (IPv6 ones too, in practice).
                    ns_mut(st, ns)?.routes.retain(|r| r.oif != ifindex);
                }
                Ok(())
            },
        )
    }

    fn add_address(&self, ns: &Netns, ifindex: u32, addr: IpNet) -> Result<(), NetError> {
        let what = format!(
            "add address {}/{} to link ifindex {ifindex} in {}",
            addr.addr,
            addr.prefix,
            ns_desc(ns)
        );
        self.run(
            FakeOp::AddAddress,
            format!("{ns:?} {ifindex} {}/{}", addr.addr, addr.prefix),
            &what,
            |st| {
                let max = if addr.addr.is_ipv4() { 32 } else { 128 };
                if addr.prefix > max {
                    return Err(kerr(
                        format!("{what} (prefix longer than {max})"),
                        libc::EINVAL,
                    ));
                }
                let l = link_mut(st, ns, ifindex)?;
                // As the real one: the very same address and prefix is nothing to do, the
                // address under another prefix is EEXIST.
                match l.addrs.iter().find(|a| a.addr == addr.addr) {
                    Some(a) if a.prefix == addr.prefix => {}
                    Some(a) => {
                        return Err(kerr(
                            format!("{what} (the link already has {}/{})", a.addr, a.prefix),
                            libc::EEXIST,
                        ));
                    }
                    None => l.addrs.push(addr),
                }
                Ok(())
            },
        )
    }

    fn enable_address_notify(&self, ns: &Netns, ifname: &str) -> Result<(), NetError> {
        self.run(
            FakeOp::EnableAddressNotify,
            format!("{ns:?} {ifname}"),
            &format!(
                "turn on arp_notify and ndisc_notify of {ifname} in {}",
                ns_desc(ns)
            ),
            |st| {
                let n = ns_mut(st, ns)?;
                let idx =
                    n.by_name(ifname)
                        .map(|l| l.ifindex)
                        .ok_or_else(|| NetError::NoSuchLink {
                            what: ifname.to_string(),
                            ns: ns_desc(ns),
                        })?;
                n.links.get_mut(&idx).expect("found").notify = true;
                Ok(())
            },
        )
    }

    fn announce_ipv4(&self, ns: &Netns, ifindex: u32, addr: Ipv4Addr) -> Result<(), NetError> {
        self.run(
            FakeOp::AnnounceIpv4,
            format!("{ns:?} {ifindex} {addr}"),
            &format!(
                "announce {addr} on link ifindex {ifindex} in {}",
                ns_desc(ns)
            ),
            |st| link_mut(st, ns, ifindex).map(|_| ()),
        )
    }

    fn addresses(&self, ns: &Netns, ifindex: u32) -> Result<Vec<IpNet>, NetError> {
        self.run(
            FakeOp::Addresses,
            format!("{ns:?} {ifindex}"),
            &format!(
                "list addresses of link ifindex {ifindex} in {}",
                ns_desc(ns)
            ),
            |st| Ok(link_mut(st, ns, ifindex)?.addrs.clone()),
        )
    }

    fn list_routes(&self, ns: &Netns) -> Result<Vec<KernelRoute>, NetError> {
        self.run(
            FakeOp::ListRoutes,
            format!("{ns:?}"),
            &format!("list the routes in {}", ns_desc(ns)),
            |st| {
                Ok(ns_mut(st, ns)?
                    .routes
                    .iter()
                    .map(|r| KernelRoute {
                        dst: r.dst,
                        gw: r.gw,
                        oif: Some(r.oif),
                        table: r.attrs.table_or_main(),
                    })
                    .collect())
            },
        )
    }

    fn add_route_with(
        &self,
        ns: &Netns,
        ifindex: u32,
        dst: IpNet,
        gw: Option<IpAddr>,
        attrs: &RouteAttrs,
    ) -> Result<(), NetError> {
        let what = format!(
            "add route to {}/{}{} dev ifindex {ifindex} in {}",
            dst.addr,
            dst.prefix,
            gw.map(|g| format!(" via {g}")).unwrap_or_default(),
            ns_desc(ns)
        );
        self.run(
            FakeOp::AddRoute,
            format!(
                "{ns:?} {ifindex} {}/{} {gw:?} {attrs:?}",
                dst.addr, dst.prefix
            ),
            &what,
            |st| {
                let max = if dst.addr.is_ipv4() { 32 } else { 128 };
                if dst.prefix > max {
                    return Err(kerr(
                        format!("{what} (prefix longer than {max})"),
                        libc::EINVAL,
                    ));
                }
                if let Some(g) = gw
                    && !family_eq(&g, &dst.addr)
                {
                    return Err(kerr(
                        format!("{what} (gateway and destination are of different IP families)"),
                        libc::EINVAL,
                    ));
                }
                let dst = IpNet {
                    addr: network(dst.addr, dst.prefix),
                    prefix: dst.prefix,
                };
                let n = ns_mut(st, ns)?;
                let l = n.links.get(&ifindex).ok_or_else(|| no_link(ns, ifindex))?;
                // The kernel's answers, probed on Linux 6.18: on-link routes and IPv6 link-local
                // gateways need the link up (ENETDOWN); other gateways need a route to them,
                // which a down link's subnets do not have yet (IPv4 ENETUNREACH, IPv6
                // EHOSTUNREACH).
                let unreach = if dst.addr.is_ipv4() {
                    libc::ENETUNREACH
                } else {
                    libc::EHOSTUNREACH
                };
                let link_local =
                    matches!(gw, Some(IpAddr::V6(v)) if v.segments()[0] & 0xffc0 == 0xfe80);
                if !l.up {
                    return Err(match gw {
                        Some(_) if !link_local => kerr(
                            format!("{what} (the link is down: bring the link up first)"),
                            unreach,
                        ),
                        _ => kerr(format!("{what} (bring the link up first)"), libc::ENETDOWN),
                    });
                }
                if let Some(g) = gw {
                    let on_link = l.addrs.iter().any(|a| contains(a, &g))
                        || n.routes
                            .iter()
                            .any(|r| r.oif == ifindex && r.gw.is_none() && contains(&r.dst, &g));
                    if !on_link && !link_local {
                        return Err(kerr(
                            format!("{what} (the gateway is not on a subnet of this link)"),
                            unreach,
                        ));
                    }
                }
                let route = FakeRoute {
                    dst,
                    gw,
                    oif: ifindex,
                    attrs: *attrs,
                };
                // Without NLM_F_EXCL only an identical route is refused.
                if n.routes.contains(&route) {
                    return Err(kerr(
                        format!("{what} (the same route already exists)"),
                        libc::EEXIST,
                    ));
                }
                n.routes.push(route);
                Ok(())
            },
        )
    }

    fn vf_settings(&self, pf_ifindex: u32, vf: u32) -> Result<VfSettings, NetError> {
        let what = format!("read VF {vf} of PF ifindex {pf_ifindex}");
        self.run(
            FakeOp::VfSettings,
            format!("{pf_ifindex} {vf}"),
            &what.clone(),
            |st| {
                check_vf(st, pf_ifindex, vf, &what)?;
                Ok(st.vfs[&(pf_ifindex, vf)].settings.clone())
            },
        )
    }

    fn set_vf(&self, pf_ifindex: u32, vf: u32, settings: &VfSettings) -> Result<(), NetError> {
        let what = format!(
            "set {} on VF {vf} through PF ifindex {pf_ifindex}",
            describe_settings(settings)
        );
        self.run(
            FakeOp::SetVf,
            format!("{pf_ifindex} {vf} {settings:?}"),
            &what.clone(),
            |st| {
                if *settings == VfSettings::default() {
                    return Ok(());
                }
                check_vf(st, pf_ifindex, vf, &what)?;
                if let Some((id, qos, proto)) = settings.vlan {
                    if id > 4095 || qos > 7 {
                        return Err(kerr(what, libc::EINVAL));
                    }
                    if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
                        return Err(kerr(what, libc::EPROTONOSUPPORT));
                    }
                }
                if let Some((min, max)) = settings.rate
                    && max != 0
                    && min > max
                {
                    return Err(kerr(
                        format!("{what} (min_tx_rate above max_tx_rate)"),
                        libc::EINVAL,
                    ));
                }
                if settings.link_state.is_some_and(|s| s > 2) {
                    return Err(kerr(what, libc::EINVAL));
                }
                let cur = &mut st.vfs.get_mut(&(pf_ifindex, vf)).expect("checked").settings;
                let s = settings.clone();
                cur.mac = s.mac.or(cur.mac);
                cur.vlan = s.vlan.or(cur.vlan);
                cur.spoofchk = s.spoofchk.or(cur.spoofchk);
                cur.trust = s.trust.or(cur.trust);
                cur.rate = s.rate.or(cur.rate);
                cur.link_state = s.link_state.or(cur.link_state);
                Ok(())
            },
        )
    }

    fn set_vf_guids(
        &self,
        pf_ifindex: u32,
        vf: u32,
        node: Guid,
        port: Guid,
    ) -> Result<(), NetError> {
        let what = format!(
            "set node GUID {} and port GUID {} on VF {vf} through PF ifindex {pf_ifindex}",
            node.to_colon_bytes(),
            port.to_colon_bytes()
        );
        self.run(
            FakeOp::SetVfGuids,
            format!("{pf_ifindex} {vf} {node:?} {port:?}"),
            &what.clone(),
            |st| {
                check_vf(st, pf_ifindex, vf, &what)?;
                let v = st.vfs.get_mut(&(pf_ifindex, vf)).expect("checked");
                v.node_guid = node;
                v.port_guid = port;
                Ok(())
            },
        )
    }

    fn move_rdma_device(&self, ibdev: &str, from: &Netns, to: &Netns) -> Result<(), NetError> {
        let what = format!(
            "move RDMA device {ibdev} from {} into {}",
            ns_desc(from),
            ns_desc(to)
        );
        self.run(FakeOp::MoveRdmaDevice, format!("{ibdev} {from:?} -> {to:?}"), &what.clone(), |st| {
            match st.rdma_mode {
                RdmaMode::Absent => return Err(no_rdma(what)),
                RdmaMode::Shared => {
                    return Err(NetError::Unsupported {
                        op: what,
                        what: "moving RDMA devices between network namespaces",
                        detail: "the RDMA subsystem is in shared netns mode; set `rdma system set netns \
                                 exclusive` (or the ib_core module parameter netns_mode=0) before any pod \
                                 starts"
                            .into(),
                    });
                }
                RdmaMode::Exclusive => {}
            }
            ns_mut(st, from)?;
            ns_mut(st, to)?;
            match st.rdma.get_mut(ibdev) {
                Some(at) if at == from => *at = to.clone(),
                _ => {
                    return Err(NetError::NoSuchLink {
                        what: format!("RDMA device {ibdev}"),
                        ns: ns_desc(from),
                    });
                }
            }
            if from != to {
                recreate_ipoib(st, ibdev);
            }
            Ok(())
        })
    }

    fn rdma_port1(&self, ns: &Netns, ibdev: &str) -> Result<Option<PortView>, NetError> {
        let what = format!("read port 1 of RDMA device {ibdev} in {}", ns_desc(ns));
        self.run(
            FakeOp::RdmaPort1,
            format!("{ibdev} {ns:?}"),
            &what.clone(),
            |st| {
                if st.rdma_mode == RdmaMode::Absent {
                    return Err(no_rdma(what));
                }
                ns_mut(st, ns)?;
                // Shared mode: every device is visible in every netns.
                let visible = st.rdma_mode == RdmaMode::Shared || st.rdma.get(ibdev) == Some(ns);
                Ok(visible.then(|| st.rdma_ports.get(ibdev).cloned().unwrap_or_default()))
            },
        )
    }
}

/// IPoIB re-registering the netdev of `ibdev` after its RDMA device moved: the old netdev
/// is unregistered wherever it is (its routes go with it), a new one appears in the host
/// or in the RDMA device's namespace ([`IpoibNetns`]). Nothing happens for a device
/// without an InfiniBand port.
fn recreate_ipoib(st: &mut State, ibdev: &str) {
    let Some(d) = st.ipoib.get(ibdev).cloned() else {
        return;
    };
    let at = match st.ipoib_netns {
        IpoibNetns::Initial => Netns::Host,
        IpoibNetns::RdmaDevice => st.rdma.get(ibdev).cloned().unwrap_or(Netns::Host),
    };
    let mut highest = st.last_new_ifindex;
    for n in st.ns.values_mut() {
        highest = highest.max(n.links.keys().next_back().copied().unwrap_or(0));
        let old: Vec<u32> = n
            .links
            .values()
            .filter(|l| l.ipoib_of.as_deref() == Some(ibdev))
            .map(|l| l.ifindex)
            .collect();
        for i in old {
            n.links.remove(&i);
            n.routes.retain(|r| r.oif != i);
        }
    }
    if st.ipoib_fails {
        return;
    }
    let ifindex = highest + 1;
    st.last_new_ifindex = ifindex;
    st.mac_counter += 1;
    let c = st.mac_counter.to_be_bytes();
    let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", c[0], c[1], c[2], c[3]);
    let Some(target) = st.ns.get_mut(&at) else {
        return;
    };
    // The kernel's "ib%d": the lowest number free in the namespace.
    let name = (0..)
        .map(|n| format!("ib{n}"))
        .find(|n| target.by_name(n).is_none())
        .expect("a free name");
    target.links.insert(
        ifindex,
        FLink {
            ifindex,
            name,
            mac,
            mtu: d.mtu,
            min_mtu: d.min_mtu,
            max_mtu: d.max_mtu,
            up: false,
            physical: true,
            addrs: vec![],
            notify: false,
            num_vfs: None,
            ipoib_of: Some(ibdev.to_string()),
            device: d.device,
        },
    );
}

fn check_vf(st: &mut State, pf_ifindex: u32, vf: u32, what: &str) -> Result<(), NetError> {
    let host = Netns::Host;
    let pf = ns_mut(st, &host)?
        .links
        .get(&pf_ifindex)
        .ok_or_else(|| NetError::NoSuchLink {
            what: format!("PF ifindex {pf_ifindex}"),
            ns: ns_desc(&host),
        })?;
    let Some(n) = pf.num_vfs else {
        return Err(NetError::Unsupported {
            op: what.to_string(),
            what: "SR-IOV VF configuration",
            detail: format!(
                "{} has no SR-IOV VFs (the kernel answers EOPNOTSUPP, as for a veth)",
                pf.name
            ),
        });
    };
    if vf >= n {
        return Err(NetError::NoSuchLink {
            what: format!("VF {vf} of PF {} (it has {n} VFs)", pf.name),
            ns: ns_desc(&host),
        });
    }
    Ok(())
}
