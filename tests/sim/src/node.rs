//! The simulated node's model: every PCI function, its SR-IOV / RDMA / port state, the
//! real veth behind each VF, and how all of it renders to the sysfs-shaped tree.
//!
//! All mutation goes through [`Node`] (behind the sim's lock); every change ends in
//! `refresh`, which re-renders the touched objects and lets the fixture write the diff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{WatchDescriptor, WatchMask, Watches};
use netlink_packet_route::link::State;

use crate::error::{Result, SimError, io_err, nl_err};
use crate::fault::{Fault, PhysState, PortState};
use crate::fixture::{Entry, Fixture, Owner, Tree, rel_link};
use crate::pci::Bdf;
use crate::rtnl::{LinkView, Rtnl, VethSpec};
use crate::topology::{LinkLayer, Nic, NicRole, Topology, rdma_index};

/// First ifindex handed to netdevs that exist in the fixture only (PFs, VFs without links):
/// far above anything a test host allocates, so they never alias a real link. The kernel
/// hands out ifindexes cyclically up to `i32::MAX` and never reuses one before wrapping, so
/// a host that has run the test suite for a while is past 100,000 (one was at 101,190, and
/// a PF's fake 100,005 made a real VF with that ifindex look host-managed in the demo).
const FAKE_IFINDEX_BASE: u32 = 2_000_000_000;
/// MTU of the VF veths: IPoIB datagram mode on a 4K IB MTU.
const IPOIB_MTU: u32 = 4092;
const FW_VER: &str = "28.39.1002";
const DEFAULT_RATE: &str = "400 Gb/sec (4X NDR)";
/// uverbs char devices: the first 32 use fixed minors 192.. of major 231, later ones a
/// dynamically allocated region (as `ib_uverbs` does); 240 stands for that dynamic major.
const UVERBS_FIXED: u32 = 32;
const UVERBS_DYN_MAJOR: u32 = 240;
/// umad/issm char devices (`ib_umad`): the first 64 ports use major 231, umad at minor N
/// and issm at 64+N; later ones a dynamic region (241 stands for it: umad at 2(N-64),
/// issm at 2(N-64)+1).
const UMAD_FIXED: u32 = 64;
const UMAD_DYN_MAJOR: u32 = 241;

/// A netdev as the host's network namespace shows it (the `net/<name>/` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetdev {
    /// Interface name in the host namespace.
    pub name: String,
    /// Interface index in the host namespace (real for veth-backed VFs).
    pub ifindex: u32,
    /// MTU.
    pub mtu: u32,
    /// `address` as sysfs prints it (lower-case, colon-separated).
    pub address: String,
    /// `operstate` as sysfs prints it (`up`, `down`, …).
    pub operstate: String,
}

impl HostNetdev {
    fn from_link(l: &LinkView) -> HostNetdev {
        HostNetdev {
            name: l.name.clone(),
            ifindex: l.index,
            mtu: l.mtu,
            address: hex_colon(&l.address),
            operstate: l.operstate_str().to_owned(),
        }
    }
}

/// How the sim names VF netdevs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Naming {
    /// Replace the leading `ib` / `en` with this tag.
    Tag(String),
    /// Real systemd names (`ibp24s0f1`).
    Real,
}

pub(crate) struct Params {
    pub vfs_per_pf: Option<u16>,
    pub storage_vfs_per_pf: u16,
    pub naming: Naming,
    pub unassigned_guids: bool,
    pub lid_delay: Duration,
}

/// What the simulated subnet manager has done for a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sm {
    /// Port GUID is zero: the port cannot come up.
    NoGuid,
    /// GUID set, LID due at this instant.
    Pending(Instant),
    /// Configured with this LID. `at`: when the SM assigned it, taken just before the sim
    /// writes it (a reader sees it no earlier); `None` for a LID there from the start.
    Assigned { lid: u16, at: Option<Instant> },
}

/// RDMA device + port state shared by PFs and VFs.
pub(crate) struct Port {
    pub rdma: String,
    pub rdma_index: u32,
    pub node_guid: u64,
    pub port_guid: u64,
    pub sm: Sm,
    pub state_override: Option<(PortState, PhysState)>,
    pub policy_down: bool,
    pub faults: BTreeSet<Fault>,
    pub unbound: bool,
}

impl Port {
    /// When the SM assigned the LID the port shows (see [`Sm::Assigned`]).
    pub fn lid_assigned_at(&self) -> Option<Instant> {
        match self.sm {
            Sm::Assigned { at, .. } => at,
            _ => None,
        }
    }
}

pub(crate) struct Pf {
    pub nic: Nic,
    pub dir: PathBuf,
    pub port: Port,
    pub link_layer: LinkLayer,
    /// Faults injected on the PF: they apply to every VF too.
    pub vf_faults: BTreeSet<Fault>,
    pub offset: u16,
    pub stride: u16,
    pub totalvfs: u16,
    pub vfs: Vec<Bdf>,
    pub netdev: HostNetdev,
}

/// The real veth pair of a VF: the VF end (wherever it is) and our peer in the private netns.
pub(crate) struct Veth {
    pub peer_index: u32,
    /// Name and index of the VF end as last observed, in whatever namespace it was.
    pub last_name: String,
    pub last_index: u32,
    /// The VF end is up with carrier, wherever it is: its peer (always up) is then up too.
    /// A RoCE port follows it, as mlx5 reports a RoCE port ACTIVE only while its netdev
    /// runs with carrier (`mlx5_query_port_roce`).
    pub running: bool,
}

pub(crate) struct Vf {
    pub pf: Bdf,
    pub index: u16,
    pub dir: PathBuf,
    pub port: Port,
    /// Name the VF netdev gets when created (the udev name).
    pub netdev: String,
    pub link: Option<Veth>,
    /// The netdev as the host namespace sees it; `None` while it is elsewhere or gone.
    pub host: Option<HostNetdev>,
}

/// Network-namespace plumbing of a node with real links.
pub(crate) struct Net {
    pub host: Rtnl,
    pub private: Rtnl,
    pub private_ns: File,
    /// Id of the private namespace in the host namespace (what the host reports as
    /// `IFLA_LINK_NETNSID` for our VF ends).
    pub nsid: i32,
    /// Id of the host namespace in the private one (what a peer reports as
    /// `IFLA_LINK_NETNSID` while its VF end is in the host).
    pub host_nsid: i32,
    peer_seq: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum WatchTarget {
    PfDir(Bdf),
    Sriov(Bdf),
}

struct Bridge {
    numa: i32,
    root_port: bool,
}

pub(crate) struct Node {
    pub topo: Topology,
    pub params: Params,
    pub tag: String,
    pub fx: Fixture,
    dirs: BTreeMap<Bdf, PathBuf>,
    host_bridges: BTreeSet<PathBuf>,
    bridges: BTreeMap<Bdf, Bridge>,
    pub pfs: BTreeMap<Bdf, Pf>,
    pub vfs: BTreeMap<Bdf, Vf>,
    lid_next: u16,
    lid_by_guid: HashMap<u64, u16>,
    rdma_used: BTreeSet<u32>,
    fake_ifindex_next: u32,
    pub net: Option<Net>,
    watches: Option<Watches>,
    pub by_wd: HashMap<WatchDescriptor, WatchTarget>,
}

fn unknown(addr: Bdf, why: &'static str) -> SimError {
    SimError::UnknownDevice {
        addr: addr.to_string(),
        why,
    }
}

impl Node {
    /// Lays the node out (no disk or netlink work yet).
    pub fn new(topo: Topology, params: Params, tag: String, root: &Path) -> Result<Node> {
        let mut node = Node {
            fx: Fixture::new(root)?,
            topo,
            params,
            tag,
            dirs: BTreeMap::new(),
            host_bridges: BTreeSet::new(),
            bridges: BTreeMap::new(),
            pfs: BTreeMap::new(),
            vfs: BTreeMap::new(),
            lid_next: 2,
            lid_by_guid: HashMap::new(),
            rdma_used: BTreeSet::new(),
            fake_ifindex_next: FAKE_IFINDEX_BASE,
            net: None,
            watches: None,
            by_wd: HashMap::new(),
        };
        node.layout_pci()?;
        node.layout_pfs()?;
        let pfs: Vec<Bdf> = node.pfs.keys().copied().collect();
        // VF RDMA names follow (PF mlx5 number, VF index).
        let mut order: Vec<(u32, Bdf)> = pfs
            .iter()
            .map(|b| (node.pfs[b].port.rdma_index, *b))
            .collect();
        order.sort();
        for (_, pf) in order {
            let n = node.initial_numvfs(&node.pfs[&pf].nic);
            node.add_vf_models(pf, n)?;
        }
        Ok(node)
    }

    fn layout_pci(&mut self) -> Result<()> {
        let chains: Vec<(Bdf, Vec<Bdf>, i32)> = self
            .topo
            .gpus
            .iter()
            .map(|g| (g.pci, g.pcie_switch.clone(), g.numa))
            .chain(
                self.topo
                    .nics
                    .iter()
                    .map(|n| (n.pci, n.pcie_switch.clone(), n.numa)),
            )
            .collect();
        for (end, chain, numa) in chains {
            let first = chain[0];
            let mut dir = PathBuf::from(format!(
                "sys/devices/pci{:04x}:{:02x}",
                first.domain(),
                first.bus()
            ));
            self.host_bridges.insert(dir.clone());
            for (i, b) in chain.iter().enumerate() {
                dir.push(b.to_string());
                self.dirs.entry(*b).or_insert_with(|| dir.clone());
                self.bridges.entry(*b).or_insert(Bridge {
                    numa,
                    root_port: i == 0,
                });
            }
            self.dirs.insert(end, dir.join(end.to_string()));
        }
        Ok(())
    }

    fn layout_pfs(&mut self) -> Result<()> {
        let nics = self.topo.nics.clone();
        for nic in &nics {
            // Functions sharing the PF's device number: VFs of a multi-PF card start after
            // every PF's function and the VF ranges of the PFs before it.
            let siblings: Vec<&Nic> = nics
                .iter()
                .filter(|o| {
                    o.pci.domain() == nic.pci.domain()
                        && o.pci.bus() == nic.pci.bus()
                        && o.pci.device() == nic.pci.device()
                })
                .collect();
            let before: u16 = siblings
                .iter()
                .filter(|o| o.pci.function() < nic.pci.function())
                .map(|o| o.sriov_totalvfs.unwrap_or(16))
                .sum();
            let offset = siblings.len() as u16 - u16::from(nic.pci.function()) + before;
            let rdma_index = rdma_index(&nic.name).unwrap_or(0);
            self.rdma_used.insert(rdma_index);
            let guid = pf_guid(nic.pci);
            let lid = self.lid_for(guid);
            let netdev = self.fake_netdev(&nic.netdev, nic.link_layer, guid, "up");
            let requested = self.initial_numvfs(nic);
            let totalvfs = nic.sriov_totalvfs.unwrap_or(16);
            if requested > totalvfs {
                return Err(SimError::InvalidOption(format!(
                    "{}: {requested} VFs requested but sriov_totalvfs is {totalvfs}",
                    nic.pci
                )));
            }
            self.pfs.insert(
                nic.pci,
                Pf {
                    dir: self.dirs[&nic.pci].clone(),
                    port: Port {
                        rdma: nic.name.clone(),
                        rdma_index,
                        node_guid: guid,
                        port_guid: guid,
                        sm: Sm::Assigned { lid, at: None },
                        state_override: None,
                        policy_down: false,
                        faults: BTreeSet::new(),
                        unbound: false,
                    },
                    link_layer: nic.link_layer,
                    vf_faults: BTreeSet::new(),
                    offset,
                    stride: 1,
                    totalvfs,
                    vfs: Vec::new(),
                    netdev,
                    nic: nic.clone(),
                },
            );
        }
        Ok(())
    }

    fn initial_numvfs(&self, nic: &Nic) -> u16 {
        match nic.role {
            NicRole::Compute => self
                .params
                .vfs_per_pf
                .unwrap_or(nic.sriov_numvfs_reference.unwrap_or(8)),
            NicRole::Storage | NicRole::Dpu => self.params.storage_vfs_per_pf,
        }
    }

    fn fake_netdev(&mut self, name: &str, ll: LinkLayer, guid: u64, operstate: &str) -> HostNetdev {
        let ifindex = self.fake_ifindex_next;
        self.fake_ifindex_next += 1;
        let (address, mtu) = match ll {
            LinkLayer::InfiniBand => (ipoib_address(guid), IPOIB_MTU),
            LinkLayer::Ethernet => (mac_from_guid(guid), 1500),
        };
        HostNetdev {
            name: name.to_owned(),
            ifindex,
            mtu,
            address,
            operstate: operstate.to_owned(),
        }
    }

    fn lid_for(&mut self, guid: u64) -> u16 {
        // A real SM keeps a GUID-to-LID map: the same port gets the same LID back.
        if let Some(lid) = self.lid_by_guid.get(&guid) {
            return *lid;
        }
        let lid = self.lid_next;
        // Unicast LIDs are 0x0001..=0xbfff; 0x1 is the SM itself.
        self.lid_next = if self.lid_next >= 0xbfff {
            2
        } else {
            self.lid_next + 1
        };
        self.lid_by_guid.insert(guid, lid);
        lid
    }

    fn alloc_rdma_index(&mut self) -> u32 {
        let mut i = 0;
        while self.rdma_used.contains(&i) {
            i += 1;
        }
        self.rdma_used.insert(i);
        i
    }

    /// Adds model entries for VFs `pf.vfs.len()..n` (no disk, no links).
    fn add_vf_models(&mut self, pf_bdf: Bdf, n: u16) -> Result<Vec<Bdf>> {
        let pf = self
            .pfs
            .get(&pf_bdf)
            .ok_or_else(|| unknown(pf_bdf, "not a PF"))?;
        if n > pf.totalvfs {
            return Err(SimError::InvalidOption(format!(
                "{pf_bdf}: {n} VFs requested but sriov_totalvfs is {}",
                pf.totalvfs
            )));
        }
        let (offset, stride, have) = (pf.offset, pf.stride, pf.vfs.len() as u16);
        let ll = pf.link_layer;
        let parent = pf.dir.parent().map(Path::to_owned).unwrap_or_default();
        let mut all: Vec<Bdf> = pf.vfs.clone();
        let mut new = Vec::new();
        for i in have..n {
            let bdf = pf_bdf
                .offset_by(u32::from(offset) + u32::from(i) * u32::from(stride))
                .ok_or_else(|| {
                    SimError::InvalidOption(format!("{pf_bdf}: VF {i} falls off the PCI bus space"))
                })?;
            if self.dirs.contains_key(&bdf) {
                return Err(SimError::InvalidOption(format!(
                    "{pf_bdf}: VF {i} would be at {bdf}, which is taken"
                )));
            }
            all.push(bdf);
            new.push((i, bdf));
        }
        for (i, bdf) in &new {
            let netdev = self.vf_netdev_name(*bdf, &all, ll)?;
            let rdma_index = self.alloc_rdma_index();
            let (guid, sm) = if self.params.unassigned_guids {
                (0, Sm::NoGuid)
            } else {
                let g = vf_guid(*bdf);
                (
                    g,
                    Sm::Assigned {
                        lid: self.lid_for(g),
                        at: None,
                    },
                )
            };
            let dir = parent.join(bdf.to_string());
            self.dirs.insert(*bdf, dir.clone());
            self.vfs.insert(
                *bdf,
                Vf {
                    pf: pf_bdf,
                    index: *i,
                    dir,
                    port: Port {
                        rdma: format!("mlx5_{rdma_index}"),
                        rdma_index,
                        node_guid: guid,
                        port_guid: guid,
                        sm,
                        state_override: None,
                        policy_down: false,
                        faults: BTreeSet::new(),
                        unbound: false,
                    },
                    netdev,
                    link: None,
                    host: None,
                },
            );
        }
        let pf = self
            .pfs
            .get_mut(&pf_bdf)
            .ok_or_else(|| unknown(pf_bdf, "not a PF"))?;
        pf.vfs.extend(new.iter().map(|(_, b)| *b));
        Ok(new.into_iter().map(|(_, b)| b).collect())
    }

    /// systemd's path name of a VF (`ibp24s0f1`, `ibp24s1`), with the tag for the prefix.
    fn vf_netdev_name(&self, bdf: Bdf, siblings: &[Bdf], ll: LinkLayer) -> Result<String> {
        let prefix = match &self.params.naming {
            Naming::Tag(t) => t.as_str(),
            Naming::Real if ll == LinkLayer::Ethernet => "en",
            Naming::Real => "ib",
        };
        let mut name = prefix.to_owned();
        if bdf.domain() != 0 {
            name.push_str(&format!("P{}", bdf.domain()));
        }
        name.push_str(&format!("p{}s{}", bdf.bus(), bdf.device()));
        let multifunction = siblings
            .iter()
            .any(|o| *o != bdf && o.bus() == bdf.bus() && o.device() == bdf.device());
        if bdf.function() > 0 || multifunction {
            name.push_str(&format!("f{}", bdf.function()));
        }
        if name.len() > 15 {
            return Err(SimError::InvalidOption(format!(
                "VF netdev name {name:?} for {bdf} is longer than 15 bytes (use a shorter tag)"
            )));
        }
        Ok(name)
    }

    // ---------------------------------------------------------------- links

    pub fn attach_net(&mut self, net: Net) {
        self.net = Some(net);
    }

    /// Creates veth pairs for these VFs (the bound ones without a link).
    pub fn create_links(&mut self, vfs: &[Bdf]) -> Result<()> {
        let wanted: Vec<(Bdf, String, Option<u32>)> = vfs
            .iter()
            .filter(|b| self.vf_bound(**b) && self.vfs.get(b).is_some_and(|v| v.link.is_none()))
            .map(|b| (*b, self.vfs[b].netdev.clone(), None))
            .collect();
        self.create_links_named(&wanted)
    }

    fn create_links_named(&mut self, wanted: &[(Bdf, String, Option<u32>)]) -> Result<()> {
        let tag = self.tag.clone();
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let fd = net.private_ns.as_raw_fd();
        let specs: Vec<VethSpec> = wanted
            .iter()
            .map(|(bdf, name, index)| {
                net.peer_seq += 1;
                VethSpec {
                    name: name.clone(),
                    peer: format!("v{}", net.peer_seq),
                    peer_ns: fd,
                    mtu: IPOIB_MTU,
                    alias: format!("railvf-sim:{tag}:{bdf}"),
                    index: *index,
                }
            })
            .collect();
        let results = net.host.create_veths(&specs);
        let mut first_err = None;
        let mut created = Vec::new();
        for ((bdf, name, _), res) in wanted.iter().zip(results) {
            match res {
                Ok(()) => created.push((*bdf, name.clone())),
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        nl_err(format!("create veth {name} for VF {bdf}"))(e)
                    });
                }
            }
        }
        let mut peers = Vec::new();
        for (bdf, name) in created {
            // By name, not from a dump: other tests' links churn the host namespace, and a
            // dump they interrupt is inconsistent.
            let found = net
                .host
                .link_by_name(&name)
                .map_err(nl_err(format!("look up veth {name}")))?;
            let Some(l) = found
                .as_ref()
                .filter(|l| l.is_veth && l.link_netnsid == Some(net.nsid))
            else {
                first_err.get_or_insert_with(|| SimError::Netlink {
                    what: format!("veth {name} for VF {bdf}"),
                    source: std::io::Error::other("created but not found in the host namespace"),
                });
                continue;
            };
            let Some(peer_index) = l.iflink else { continue };
            peers.push(peer_index);
            if let Some(vf) = self.vfs.get_mut(&bdf) {
                vf.link = Some(Veth {
                    peer_index,
                    last_name: l.name.clone(),
                    last_index: l.index,
                    running: false,
                });
                vf.host = Some(HostNetdev::from_link(l));
            }
        }
        // Peer ends up: a VF end that someone sets up then has carrier (operstate `up`),
        // like a VF whose port is active.
        if let Err(e) = net.private.set_up(&peers) {
            first_err.get_or_insert_with(|| nl_err("set VF veth peers up")(e));
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Destroys the veth pairs of these VFs (wherever the VF ends are).
    fn delete_links(&mut self, vfs: &[Bdf]) -> Result<()> {
        let mut peers = Vec::new();
        for b in vfs {
            if let Some(vf) = self.vfs.get_mut(b) {
                if let Some(link) = vf.link.take() {
                    peers.push(link.peer_index);
                }
                if self.net.is_some() {
                    vf.host = None;
                }
            }
        }
        match self.net.as_mut() {
            Some(net) if !peers.is_empty() => net
                .private
                .delete_links(&peers)
                .map_err(nl_err("delete VF veth pairs")),
            _ => Ok(()),
        }
    }

    /// Makes each VF's veth existence match its bound state.
    fn ensure_links(&mut self, vfs: &[Bdf]) -> Result<()> {
        if self.net.is_none() {
            return Ok(());
        }
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for b in vfs {
            let Some(vf) = self.vfs.get(b) else { continue };
            match (self.vf_bound(*b), vf.link.is_some()) {
                (true, false) => add.push(*b),
                (false, true) => del.push(*b),
                _ => {}
            }
        }
        self.delete_links(&del)?;
        self.create_links(&add)
    }

    /// Mirror: brings every VF's host view in line with where its veth really is.
    /// With `track_away`, also records the names VFs carry in other namespaces (what a VF
    /// returns under when its namespace is destroyed).
    ///
    /// Where each VF end is comes from our peers in the private namespace (each names its
    /// VF end's namespace and ifindex), and what it looks like in the host from one request
    /// per link there. No dump of the host namespace: other tests churn links in it, and
    /// under load their changes kept interrupting such a dump for seconds.
    pub fn reconcile_links(&mut self, track_away: bool) -> Result<()> {
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        let peers = net
            .private
            .dump_links()
            .map_err(nl_err("dump private links"))?;
        let peers: HashMap<u32, &LinkView> = peers.iter().map(|p| (p.index, p)).collect();
        // VFs whose end a peer places in the host: (VF, peer index, the end's index there).
        let mut asked: Vec<(Bdf, u32, u32)> = Vec::new();
        for (bdf, vf) in &self.vfs {
            let Some(link) = vf.link.as_ref() else {
                continue;
            };
            if let Some(p) = peers.get(&link.peer_index)
                && p.link_netnsid == Some(net.host_nsid)
                && let Some(index) = p.iflink
            {
                asked.push((*bdf, link.peer_index, index));
            }
        }
        let indexes: Vec<u32> = asked.iter().map(|(_, _, i)| *i).collect();
        let found = net
            .host
            .links_by_index(&indexes)
            .map_err(nl_err("look up VF links in the host"))?;
        let mut in_host: HashMap<Bdf, LinkView> = HashMap::new();
        for ((bdf, peer_index, _), l) in asked.into_iter().zip(found) {
            // The end may have moved on since the peer was read: only ours counts.
            if let Some(l) = l
                && net.is_our_end(&l, peer_index)
            {
                in_host.insert(bdf, l);
            }
        }
        let mut changed = Vec::new();
        let mut dead = Vec::new();
        for (bdf, vf) in self.vfs.iter_mut() {
            let now = in_host.get(bdf).map(HostNetdev::from_link);
            let mut ran_changed = false;
            if let Some(link) = vf.link.as_mut() {
                let running = peers
                    .get(&link.peer_index)
                    .is_some_and(|p| p.operstate == State::Up);
                ran_changed = link.running != running;
                link.running = running;
                match (&now, peers.get(&link.peer_index)) {
                    (Some(h), _) => {
                        link.last_name = h.name.clone();
                        link.last_index = h.ifindex;
                    }
                    // The pair died with the namespace holding the VF end.
                    (None, None) => dead.push(*bdf),
                    (None, Some(p)) if track_away => {
                        if let (Some(nsid), Some(idx)) = (p.link_netnsid, p.iflink)
                            && let Ok(Some(l)) = net.private.get_link_in(nsid, idx)
                        {
                            link.last_name = l.name;
                            link.last_index = l.index;
                        }
                    }
                    (None, Some(_)) => {}
                }
            }
            if now != vf.host {
                vf.host = now;
                changed.push(*bdf);
            } else if ran_changed {
                changed.push(*bdf);
            }
        }
        if !dead.is_empty() {
            self.refund(&dead)?;
            changed.extend(dead);
        }
        for b in changed {
            self.refresh(b)?;
        }
        Ok(())
    }

    /// A VF netdev cannot die: when the namespace holding it is destroyed the kernel moves
    /// it back to the host under the name it had (or `dev<ifindex>` if that name is taken),
    /// keeping its ifindex when free. A veth pair dies instead, so re-create it that way.
    ///
    /// A VF whose re-creation fails keeps its dead link record, so the next reconcile
    /// (at most 50 ms later, the VF counts as away) tries again.
    fn refund(&mut self, dead: &[Bdf]) -> Result<()> {
        let mut first_err: Option<SimError> = None;
        for b in dead {
            let Some((last_name, last_index)) = self
                .vfs
                .get(b)
                .and_then(|v| v.link.as_ref())
                .map(|l| (l.last_name.clone(), l.last_index))
            else {
                continue;
            };
            if let Some(vf) = self.vfs.get_mut(b) {
                vf.host = None;
            }
            // Whether the name or the index is taken, the kernel (EEXIST, EBUSY) says; other
            // sims and test binaries share the namespace, so asking first would race anyway.
            let fallback = format!("dev{last_index}");
            let attempts = [
                (last_name.clone(), Some(last_index)),
                (last_name, None),
                (fallback.clone(), Some(last_index)),
                (fallback, None),
            ];
            let mut err = None;
            for (name, idx) in attempts {
                match self.create_links_named(&[(*b, name, idx)]) {
                    Ok(()) => {
                        err = None;
                        break;
                    }
                    Err(e) => err = Some(e),
                }
            }
            if let Some(e) = err {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Closes the private namespace (every VF veth pair dies with it) and waits until the
    /// VF ends are gone from the host namespace.
    pub fn shutdown_links(&mut self, wait: Duration) {
        let Some(net) = self.net.take() else { return };
        let Net {
            mut host,
            private,
            private_ns,
            ..
        } = net;
        let ours: Vec<(u32, String)> = self
            .vfs
            .values()
            .filter_map(|v| v.host.as_ref().map(|h| (h.ifindex, h.name.clone())))
            .collect();
        for v in self.vfs.values_mut() {
            v.link = None;
        }
        // No per-link deletes: each costs an RCU grace period (~16 ms), while the namespace
        // teardown destroys every pair in one batch.
        drop(private);
        drop(private_ns);
        let deadline = Instant::now() + wait;
        let indexes: Vec<u32> = ours.iter().map(|(i, _)| *i).collect();
        while Instant::now() < deadline {
            let Ok(links) = host.links_by_index(&indexes) else {
                break;
            };
            let left = links
                .iter()
                .zip(&ours)
                .any(|(l, (_, name))| l.as_ref().is_some_and(|l| l.name == *name));
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // ------------------------------------------------------- watches / SM

    pub fn set_watches(&mut self, w: Watches) -> Result<()> {
        self.watches = Some(w);
        let pfs: Vec<Bdf> = self.pfs.keys().copied().collect();
        for pf in pfs {
            self.watch(WatchTarget::PfDir(pf))?;
            let vfs = self.pfs[&pf].vfs.clone();
            for vf in vfs {
                self.watch(WatchTarget::Sriov(vf))?;
            }
        }
        Ok(())
    }

    fn sriov_dir(&self, vf: Bdf) -> Option<PathBuf> {
        let v = self.vfs.get(&vf)?;
        Some(self.pfs.get(&v.pf)?.dir.join(format!("sriov/{}", v.index)))
    }

    fn watch(&mut self, target: WatchTarget) -> Result<()> {
        let (rel, mask) = match target {
            WatchTarget::PfDir(pf) => (self.pfs[&pf].dir.clone(), WatchMask::CLOSE_WRITE),
            WatchTarget::Sriov(vf) => match self.sriov_dir(vf) {
                Some(d) => (d, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO),
                None => return Ok(()),
            },
        };
        let Some(w) = self.watches.as_mut() else {
            return Ok(());
        };
        let abs = self.fx.root().join(&rel);
        let wd = w.add(&abs, mask).map_err(io_err(abs))?;
        self.by_wd.insert(wd, target);
        Ok(())
    }

    /// A file changed in a watched directory.
    pub fn on_file_event(&mut self, target: WatchTarget, name: &str) -> Result<()> {
        match target {
            WatchTarget::PfDir(pf) if name == "sriov_numvfs" => self.scan_numvfs(pf),
            WatchTarget::PfDir(_) => Ok(()),
            WatchTarget::Sriov(vf) => self.scan_guid_files(vf),
        }
    }

    /// Re-reads every input file (GUID files, `sriov_numvfs`).
    pub fn scan_all(&mut self) -> Result<()> {
        let pfs: Vec<Bdf> = self.pfs.keys().copied().collect();
        for pf in pfs {
            self.scan_numvfs(pf)?;
            let vfs = self.pfs[&pf].vfs.clone();
            for vf in vfs {
                self.scan_guid_files(vf)?;
            }
        }
        Ok(())
    }

    fn scan_numvfs(&mut self, pf: Bdf) -> Result<()> {
        let Some(p) = self.pfs.get(&pf) else {
            return Ok(());
        };
        let path = p.dir.join("sriov_numvfs");
        let have = p.vfs.len() as u16;
        let Some(text) = self.fx.read(&path) else {
            return Ok(());
        };
        match text.trim().parse::<u16>() {
            Ok(n) if n == have => Ok(()),
            Ok(n) if n <= p.totalvfs => self.set_num_vfs(pf, n),
            // The kernel rejects the write and the attribute keeps its value.
            _ => self.fx.write_plain(&path, &format!("{have}\n")),
        }
    }

    fn scan_guid_files(&mut self, vf: Bdf) -> Result<()> {
        let Some(dir) = self.sriov_dir(vf) else {
            return Ok(());
        };
        let node = self.fx.read(&dir.join("node")).and_then(|s| parse_guid(&s));
        let port = self.fx.read(&dir.join("port")).and_then(|s| parse_guid(&s));
        let policy_down = self
            .fx
            .read(&dir.join("policy"))
            .is_some_and(|s| s.trim() == "Down");
        let delay = self.params.lid_delay;
        let mut assign = false;
        let Some(v) = self.vfs.get_mut(&vf) else {
            return Ok(());
        };
        // A new port GUID voids the LID the SM gave the old one, and the port shows that
        // before it shows the new GUID: the LID goes to 0 while the old GUIDs are still up.
        // Written the other way round, a reader could see the new GUID beside the old
        // GUID's LID, which no real port shows (its GUID changes with a driver rebind).
        if port.is_some_and(|p| p != v.port.port_guid) && matches!(v.port.sm, Sm::Assigned { .. }) {
            v.port.sm = Sm::Pending(Instant::now() + delay);
            self.refresh(vf)?;
        }
        let Some(v) = self.vfs.get_mut(&vf) else {
            return Ok(());
        };
        let mut changed = false;
        // An unparsable file is a write in progress (or garbage the driver would reject).
        if let Some(n) = node {
            changed |= v.port.node_guid != n;
            v.port.node_guid = n;
        }
        if let Some(p) = port
            && v.port.port_guid != p
        {
            changed = true;
            v.port.port_guid = p;
            v.port.sm = if p == 0 {
                Sm::NoGuid
            } else if delay.is_zero() {
                assign = true;
                Sm::NoGuid
            } else {
                Sm::Pending(Instant::now() + delay)
            };
        }
        if v.port.policy_down != policy_down {
            changed = true;
            v.port.policy_down = policy_down;
        }
        if assign {
            self.assign_lid(vf);
        }
        if changed {
            self.refresh(vf)?;
        }
        Ok(())
    }

    /// The SM gives the VF's port GUID its LID, timed now: the caller writes it next.
    fn assign_lid(&mut self, vf: Bdf) {
        let Some(guid) = self.vfs.get(&vf).map(|v| v.port.port_guid) else {
            return;
        };
        let lid = self.lid_for(guid);
        if let Some(v) = self.vfs.get_mut(&vf) {
            v.port.sm = Sm::Assigned {
                lid,
                at: Some(Instant::now()),
            };
        }
    }

    /// Assigns the LIDs that are due; returns when the next one is.
    pub fn sm_tick(&mut self, now: Instant) -> Result<Option<Instant>> {
        let due: Vec<Bdf> = self
            .vfs
            .iter()
            .filter(|(_, v)| matches!(v.port.sm, Sm::Pending(d) if d <= now))
            .map(|(b, _)| *b)
            .collect();
        for b in due {
            self.assign_lid(b);
            self.refresh(b)?;
        }
        Ok(self
            .vfs
            .values()
            .filter_map(|v| match v.port.sm {
                Sm::Pending(d) => Some(d),
                _ => None,
            })
            .min())
    }

    /// Whether any VF is out of the host namespace (the mirror then polls for its name).
    pub fn any_away(&self) -> bool {
        self.vfs
            .values()
            .any(|v| v.link.is_some() && v.host.is_none())
    }

    /// Writes a VF's MLNX_OFED GUID files as a user would, then lets the SM react.
    pub fn write_guids(&mut self, vf: Bdf, node: u64, port: u64) -> Result<()> {
        let dir = self
            .sriov_dir(vf)
            .ok_or_else(|| unknown(vf, "not a VF of the simulated node"))?;
        self.fx
            .write_plain(&dir.join("node"), &format!("{}\n", guid_colon(node)))?;
        self.fx
            .write_plain(&dir.join("port"), &format!("{}\n", guid_colon(port)))?;
        self.scan_guid_files(vf)
    }

    // ------------------------------------------------------ runtime changes

    pub fn is_pf(&self, b: Bdf) -> bool {
        self.pfs.contains_key(&b)
    }

    fn port_mut(&mut self, b: Bdf) -> Result<&mut Port> {
        if let Some(p) = self.pfs.get_mut(&b) {
            return Ok(&mut p.port);
        }
        self.vfs
            .get_mut(&b)
            .map(|v| &mut v.port)
            .ok_or_else(|| unknown(b, "not a PF or VF of the simulated node"))
    }

    /// Records a build-time fault (model only; the first render shows it).
    pub fn preset_fault(&mut self, b: Bdf, fault: Fault) -> Result<()> {
        self.port_mut(b)?.faults.insert(fault);
        if let Some(pf) = self.pfs.get_mut(&b) {
            pf.vf_faults.insert(fault);
        }
        Ok(())
    }

    /// Directory (relative to the root) of any PCI function.
    pub fn dir_of(&self, b: Bdf) -> Option<&Path> {
        self.dirs.get(&b).map(PathBuf::as_path)
    }

    /// Injects (`on`) or clears a fault; a PF's fault covers its VFs.
    pub fn set_fault(&mut self, b: Bdf, fault: Fault, on: bool) -> Result<()> {
        let port = self.port_mut(b)?;
        if on {
            port.faults.insert(fault);
        } else {
            port.faults.remove(&fault);
        }
        if let Some(pf) = self.pfs.get_mut(&b) {
            if on {
                pf.vf_faults.insert(fault);
            } else {
                pf.vf_faults.remove(&fault);
            }
            return self.refresh_family(b);
        }
        self.ensure_links(&[b])?;
        self.refresh(b)
    }

    /// `unbind_driver` / `bind_driver` of one function.
    pub fn set_unbound(&mut self, b: Bdf, unbound: bool) -> Result<()> {
        self.port_mut(b)?.unbound = unbound;
        self.ensure_links(&[b])?;
        self.reconcile_links(false)?;
        self.refresh(b)
    }

    pub fn set_port_override(&mut self, b: Bdf, st: Option<(PortState, PhysState)>) -> Result<()> {
        self.port_mut(b)?.state_override = st;
        self.refresh(b)
    }

    pub fn set_link_layer(&mut self, pf: Bdf, ll: LinkLayer) -> Result<()> {
        let p = self
            .pfs
            .get_mut(&pf)
            .ok_or_else(|| unknown(pf, "not a PF of the simulated node"))?;
        p.link_layer = ll;
        self.refresh_family(pf)
    }

    /// Changes `sriov_numvfs` (VFs and their links appear / disappear).
    pub fn set_num_vfs(&mut self, pf: Bdf, n: u16) -> Result<()> {
        let p = self
            .pfs
            .get(&pf)
            .ok_or_else(|| unknown(pf, "not a PF of the simulated node"))?;
        let have = p.vfs.len() as u16;
        if n < have {
            let gone: Vec<Bdf> = p.vfs[n as usize..].to_vec();
            self.delete_links(&gone)?;
            for b in gone.iter().rev() {
                if let Some(vf) = self.vfs.remove(b) {
                    self.rdma_used.remove(&vf.port.rdma_index);
                }
                self.dirs.remove(b);
                self.by_wd
                    .retain(|_, t| !matches!(t, WatchTarget::Sriov(v) if v == b));
                self.fx.remove(Owner::Func(*b))?;
            }
            if let Some(p) = self.pfs.get_mut(&pf) {
                p.vfs.truncate(n as usize);
            }
            self.refresh(pf)?;
        } else if n > have {
            let new = self.add_vf_models(pf, n)?;
            // `create_links` skips VFs that are unbound (a PF-wide `Unbound` fault).
            let links = if self.net.is_some() {
                self.create_links(&new)
            } else {
                for b in &new {
                    if self.vf_bound(*b) {
                        self.give_fake_netdev(*b);
                    }
                }
                Ok(())
            };
            // Render even if a link failed: the VFs exist either way, like on a host where
            // a netdev failed to register.
            self.refresh(pf)?;
            for b in &new {
                self.refresh(*b)?;
                self.watch(WatchTarget::Sriov(*b))?;
            }
            links?;
        }
        Ok(())
    }

    /// VFs of a node without links get a fixture-only netdev.
    pub fn give_fake_netdev(&mut self, b: Bdf) {
        let Some(vf) = self.vfs.get(&b) else { return };
        let ll = self.pfs[&vf.pf].link_layer;
        let (name, guid) = (vf.netdev.clone(), vf.port.port_guid);
        let nd = self.fake_netdev(&name, ll, guid, "down");
        if let Some(vf) = self.vfs.get_mut(&b) {
            vf.host = Some(nd);
        }
    }

    // ------------------------------------------------------------ render

    fn vf_faults(&self, vf: &Vf) -> BTreeSet<Fault> {
        let mut f = vf.port.faults.clone();
        if let Some(pf) = self.pfs.get(&vf.pf) {
            f.extend(pf.vf_faults.iter().copied());
        }
        f
    }

    pub fn vf_bound(&self, b: Bdf) -> bool {
        self.vfs
            .get(&b)
            .is_some_and(|v| !v.port.unbound && !self.vf_faults(v).contains(&Fault::Unbound))
    }

    /// The fault set in effect for a PF or VF.
    pub fn effective_faults(&self, b: Bdf) -> BTreeSet<Fault> {
        if let Some(pf) = self.pfs.get(&b) {
            return pf.port.faults.clone();
        }
        self.vfs
            .get(&b)
            .map(|v| self.vf_faults(v))
            .unwrap_or_default()
    }

    /// The LID the port currently shows.
    pub fn shown_lid(&self, b: Bdf) -> u16 {
        let (port, ll) = match (self.pfs.get(&b), self.vfs.get(&b)) {
            (Some(p), _) => (&p.port, p.link_layer),
            (_, Some(v)) => (&v.port, self.pfs[&v.pf].link_layer),
            _ => return 0,
        };
        port_view(port, &self.effective_faults(b), ll, true).lid
    }

    /// Renders the whole node (the initial build: files are written in place).
    pub fn refresh_all(&mut self) -> Result<()> {
        self.fx.bulk = true;
        let res = self
            .fx
            .apply(Owner::Static, self.render_static())
            .and_then(|()| {
                let all: Vec<Bdf> = self.dirs.keys().copied().collect();
                all.into_iter().try_for_each(|b| self.refresh(b))
            });
        self.fx.bulk = false;
        res
    }

    fn refresh_family(&mut self, pf: Bdf) -> Result<()> {
        let vfs = self.pfs[&pf].vfs.clone();
        self.ensure_links(&vfs)?;
        self.refresh(pf)?;
        for v in vfs {
            self.refresh(v)?;
        }
        Ok(())
    }

    /// Re-renders one PCI function and writes the difference.
    pub fn refresh(&mut self, b: Bdf) -> Result<()> {
        let tree = if self.bridges.contains_key(&b) {
            self.render_bridge(b)
        } else if let Some(g) = self.topo.gpus.iter().find(|g| g.pci == b) {
            self.render_gpu(g)
        } else if self.pfs.contains_key(&b) {
            self.render_pf(b)
        } else if self.vfs.contains_key(&b) {
            self.render_vf(b)
        } else {
            return Ok(());
        };
        self.fx.apply(Owner::Func(b), tree)
    }

    fn render_static(&self) -> Tree {
        let mut t = Tree::new();
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers/mlx5_core",
            "sys/bus/pci/drivers/nvidia",
            "sys/bus/pci/drivers/pcieport",
            "sys/class/net",
            "sys/class/infiniband",
            "sys/class/infiniband_verbs",
            "sys/class/infiniband_mad",
            "sys/devices/system/node",
            "dev/infiniband",
            "proc/driver/nvidia/gpus",
        ] {
            t.insert(d.into(), Entry::Dir);
        }
        t.insert(
            "sys/bus/pci/drivers/mlx5_core/bind".into(),
            Entry::Seed(String::new()),
        );
        t.insert(
            "sys/bus/pci/drivers/mlx5_core/unbind".into(),
            Entry::Seed(String::new()),
        );
        t.insert("dev/infiniband/rdma_cm".into(), Entry::File(String::new()));
        // rdma_ucm's misc device: minor 58 where it is the first dynamic one after the fixed.
        t.insert("sys/class/misc/rdma_cm".into(), Entry::Dir);
        t.insert(
            "sys/class/misc/rdma_cm/dev".into(),
            Entry::File("10:58\n".into()),
        );
        for hb in &self.host_bridges {
            t.insert(hb.clone(), Entry::Dir);
        }
        let nodes: Vec<u32> = self
            .topo
            .numa_cpulist
            .keys()
            .filter_map(|k| k.parse().ok())
            .collect();
        for (k, list) in &self.topo.numa_cpulist {
            t.insert(
                format!("sys/devices/system/node/node{k}/cpulist").into(),
                Entry::File(format!("{list}\n")),
            );
        }
        let online = crate::topology::format_cpulist(&nodes.into_iter().collect());
        t.insert(
            "sys/devices/system/node/online".into(),
            Entry::File(format!("{online}\n")),
        );
        t.insert(
            "sys/devices/system/node/possible".into(),
            Entry::File(format!("{online}\n")),
        );
        t
    }

    /// Entries every PCI function has.
    fn pci_common(
        &self,
        t: &mut Tree,
        b: Bdf,
        ids: (u16, u16, u32),
        numa: i32,
        driver: Option<&str>,
    ) {
        let dir = &self.dirs[&b];
        t.insert(dir.clone(), Entry::Dir);
        t.insert(
            dir.join("vendor"),
            Entry::File(format!("0x{:04x}\n", ids.0)),
        );
        t.insert(
            dir.join("device"),
            Entry::File(format!("0x{:04x}\n", ids.1)),
        );
        t.insert(dir.join("class"), Entry::File(format!("0x{:06x}\n", ids.2)));
        t.insert(dir.join("numa_node"), Entry::File(format!("{numa}\n")));
        t.insert(
            dir.join("local_cpulist"),
            Entry::File(format!("{}\n", self.topo.cpulist(numa))),
        );
        link(t, dir.join("subsystem"), Path::new("sys/bus/pci"));
        link(t, PathBuf::from(format!("sys/bus/pci/devices/{b}")), dir);
        if let Some(drv) = driver {
            let drv_dir = PathBuf::from(format!("sys/bus/pci/drivers/{drv}"));
            link(t, dir.join("driver"), &drv_dir);
            link(t, drv_dir.join(b.to_string()), dir);
        }
    }

    fn render_bridge(&self, b: Bdf) -> Tree {
        let mut t = Tree::new();
        let br = &self.bridges[&b];
        // Root ports: Intel Sapphire Rapids; switch ports: Broadcom PEX890xx (both synthetic,
        // like the chains themselves).
        let ids = if br.root_port {
            (0x8086, 0x352a, 0x060400)
        } else {
            (0x1000, 0xc030, 0x060400)
        };
        self.pci_common(&mut t, b, ids, br.numa, Some("pcieport"));
        t
    }

    fn render_gpu(&self, g: &crate::topology::Gpu) -> Tree {
        let mut t = Tree::new();
        self.pci_common(
            &mut t,
            g.pci,
            (g.vendor_id, g.device_id, g.class),
            g.numa,
            Some("nvidia"),
        );
        if let Some(list) = &g.local_cpulist {
            t.insert(
                self.dirs[&g.pci].join("local_cpulist"),
                Entry::File(format!("{list}\n")),
            );
        }
        let model = match g.device_id {
            0x2335 => "NVIDIA H200".to_owned(),
            0x2330 => "NVIDIA H100 80GB HBM3".to_owned(),
            0x2901 => "NVIDIA B200".to_owned(),
            _ => format!("NVIDIA {}", g.model.as_deref().unwrap_or("GPU")),
        };
        // Minor numbers follow PCI order, like the NVIDIA driver's.
        let minor = self.topo.gpus.iter().filter(|o| o.pci < g.pci).count();
        let info = format!(
            "Model: \t\t {model}\nIRQ:   \t\t {irq}\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.af.00.01\n\
             Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n\
             Bus Location: \t {bdf}\nDevice Minor: \t {minor}\nGPU Firmware: \t 550.90.07\n\
             GPU Excluded:\t No\n",
            irq = 400 + minor,
            uuid = gpu_uuid(&self.topo.system, g.pci),
            bdf = g.pci,
        );
        t.insert(
            PathBuf::from(format!("proc/driver/nvidia/gpus/{}/information", g.pci)),
            Entry::File(info),
        );
        t
    }

    fn render_pf(&self, b: Bdf) -> Tree {
        let pf = &self.pfs[&b];
        let faults = &pf.port.faults;
        let mut t = Tree::new();
        let view = FnRender {
            bdf: b,
            dir: &pf.dir,
            device: pf.nic.device_id,
            vendor: pf.nic.vendor_id,
            numa: pf.nic.numa,
            faults,
            port: &pf.port,
            link_layer: pf.link_layer,
            bound: !pf.port.unbound && !faults.contains(&Fault::Unbound),
            netdev_exists: true,
            netdev_running: true,
            host: Some(&pf.netdev),
            hca: pf
                .nic
                .hca_type
                .clone()
                .unwrap_or_else(|| format!("MT{}", pf.nic.device_id)),
            rate: pf
                .nic
                .rate_expected
                .clone()
                .unwrap_or_else(|| DEFAULT_RATE.to_owned()),
            sys_guid: pf.port.node_guid,
        };
        self.render_nic_fn(&mut t, &view);
        let d = &pf.dir;
        t.insert(
            d.join("sriov_totalvfs"),
            Entry::File(format!("{}\n", pf.totalvfs)),
        );
        t.insert(
            d.join("sriov_numvfs"),
            Entry::File(format!("{}\n", pf.vfs.len())),
        );
        t.insert(
            d.join("sriov_offset"),
            Entry::File(format!("{}\n", pf.offset)),
        );
        t.insert(
            d.join("sriov_stride"),
            Entry::File(format!("{}\n", pf.stride)),
        );
        t.insert(
            d.join("sriov_vf_device"),
            Entry::File(format!("{:x}\n", pf.nic.vf_device_id)),
        );
        t.insert(d.join("sriov_drivers_autoprobe"), Entry::File("1\n".into()));
        for (i, vf_bdf) in pf.vfs.iter().enumerate() {
            t.insert(
                d.join(format!("virtfn{i}")),
                Entry::Link(PathBuf::from(format!("../{vf_bdf}"))),
            );
            let vf = &self.vfs[vf_bdf];
            let s = d.join(format!("sriov/{i}"));
            t.insert(s.clone(), Entry::Dir);
            t.insert(
                s.join("node"),
                Entry::Seed(format!("{}\n", guid_colon(vf.port.node_guid))),
            );
            t.insert(
                s.join("port"),
                Entry::Seed(format!("{}\n", guid_colon(vf.port.port_guid))),
            );
            t.insert(s.join("policy"), Entry::Seed("Follow\n".into()));
        }
        if !pf.vfs.is_empty() {
            t.insert(d.join("sriov"), Entry::Dir);
        }
        t
    }

    fn render_vf(&self, b: Bdf) -> Tree {
        let vf = &self.vfs[&b];
        let pf = &self.pfs[&vf.pf];
        let faults = self.vf_faults(vf);
        let bound = !vf.port.unbound && !faults.contains(&Fault::Unbound);
        let mut t = Tree::new();
        let view = FnRender {
            bdf: b,
            dir: &vf.dir,
            device: pf.nic.vf_device_id,
            vendor: pf.nic.vendor_id,
            numa: pf.nic.numa,
            faults: &faults,
            port: &vf.port,
            link_layer: pf.link_layer,
            bound,
            netdev_exists: self.net.is_none() || vf.link.is_some(),
            // Without real links (a fixture only) the fake netdevs count as up.
            netdev_running: self.net.is_none() || vf.link.as_ref().is_some_and(|l| l.running),
            host: vf.host.as_ref(),
            hca: format!("MT{}", pf.nic.vf_device_id),
            rate: pf
                .nic
                .rate_expected
                .clone()
                .unwrap_or_else(|| DEFAULT_RATE.to_owned()),
            sys_guid: pf.port.node_guid,
        };
        self.render_nic_fn(&mut t, &view);
        t.insert(
            vf.dir.join("physfn"),
            Entry::Link(PathBuf::from(format!("../{}", vf.pf))),
        );
        t
    }

    fn render_nic_fn(&self, t: &mut Tree, f: &FnRender<'_>) {
        let eth = f.faults.contains(&Fault::EthFallback) || f.link_layer == LinkLayer::Ethernet;
        let ll = if eth {
            LinkLayer::Ethernet
        } else {
            LinkLayer::InfiniBand
        };
        let class = if eth { 0x020000 } else { 0x020700 };
        let numa = if f.faults.contains(&Fault::NumaUnknown) {
            -1
        } else {
            f.numa
        };
        let driver = f.bound.then_some("mlx5_core");
        self.pci_common(t, f.bdf, (f.vendor, f.device, class), numa, driver);
        if !f.bound {
            return;
        }
        let dir = f.dir;
        // The `net/` directory exists while the netdev exists anywhere; its entry only while
        // the netdev is in the host namespace (sysfs is per network namespace).
        if f.netdev_exists {
            t.insert(dir.join("net"), Entry::Dir);
        }
        if let (true, Some(h)) = (f.netdev_exists, f.host) {
            let nd = dir.join(format!("net/{}", h.name));
            t.insert(nd.clone(), Entry::Dir);
            t.insert(nd.join("ifindex"), Entry::File(format!("{}\n", h.ifindex)));
            t.insert(nd.join("address"), Entry::File(format!("{}\n", h.address)));
            t.insert(
                nd.join("operstate"),
                Entry::File(format!("{}\n", h.operstate)),
            );
            t.insert(nd.join("mtu"), Entry::File(format!("{}\n", h.mtu)));
            t.insert(
                nd.join("type"),
                Entry::File(if eth { "1\n" } else { "32\n" }.into()),
            );
            t.insert(nd.join("dev_port"), Entry::File("0\n".into()));
            link(t, nd.join("device"), dir);
            link(t, nd.join("subsystem"), Path::new("sys/class/net"));
            link(t, PathBuf::from(format!("sys/class/net/{}", h.name)), &nd);
            if f.faults.contains(&Fault::HostManaged) {
                t.insert(
                    PathBuf::from(format!("run/systemd/netif/links/{}", h.ifindex)),
                    Entry::File(networkd_state()),
                );
            }
            if f.faults.contains(&Fault::NmManaged) {
                t.insert(
                    PathBuf::from(format!("run/NetworkManager/devices/{}", h.ifindex)),
                    Entry::File("[device]\nmanaged=true\n".into()),
                );
            }
        }
        if f.faults.contains(&Fault::NoRdma) {
            return;
        }
        let p = port_view(f.port, f.faults, ll, f.netdev_running);
        let ib = dir.join(format!("infiniband/{}", f.port.rdma));
        t.insert(dir.join("infiniband"), Entry::Dir);
        t.insert(ib.clone(), Entry::Dir);
        t.insert(
            ib.join("node_guid"),
            Entry::File(format!("{}\n", guid_sysfs(p.node_guid))),
        );
        t.insert(
            ib.join("sys_image_guid"),
            Entry::File(format!("{}\n", guid_sysfs(f.sys_guid))),
        );
        t.insert(ib.join("node_type"), Entry::File("1: CA\n".into()));
        t.insert(ib.join("fw_ver"), Entry::File(format!("{FW_VER}\n")));
        t.insert(ib.join("hca_type"), Entry::File(format!("{}\n", f.hca)));
        link(t, ib.join("device"), dir);
        let port = ib.join("ports/1");
        t.insert(ib.join("ports"), Entry::Dir);
        t.insert(port.clone(), Entry::Dir);
        t.insert(port.join("state"), Entry::File(format!("{}\n", p.state)));
        t.insert(
            port.join("phys_state"),
            Entry::File(format!("{}\n", p.phys)),
        );
        t.insert(port.join("lid"), Entry::File(format!("0x{:x}\n", p.lid)));
        t.insert(
            port.join("sm_lid"),
            Entry::File(format!("0x{:x}\n", p.sm_lid)),
        );
        t.insert(port.join("lid_mask_count"), Entry::File("0\n".into()));
        t.insert(port.join("sm_sl"), Entry::File("0\n".into()));
        t.insert(port.join("link_layer"), Entry::File(format!("{ll}\n")));
        t.insert(port.join("rate"), Entry::File(format!("{}\n", f.rate)));
        t.insert(port.join("gids"), Entry::Dir);
        t.insert(
            port.join("gids/0"),
            Entry::File(format!("{}\n", gid0(p.port_guid))),
        );
        t.insert(port.join("pkeys"), Entry::Dir);
        t.insert(port.join("pkeys/0"), Entry::File("0xffff\n".into()));
        link(
            t,
            PathBuf::from(format!("sys/class/infiniband/{}", f.port.rdma)),
            &ib,
        );
        let n = f.port.rdma_index;
        let uverbs = if n < UVERBS_FIXED {
            format!("231:{}", 192 + n)
        } else {
            format!("{UVERBS_DYN_MAJOR}:{}", n - UVERBS_FIXED)
        };
        char_dev(
            t,
            dir,
            "infiniband_verbs",
            &format!("uverbs{n}"),
            &f.port.rdma,
            &uverbs,
            None,
        );
        // One port per function: one umad and one issm node (ib_umad loaded).
        let (umad, issm) = if n < UMAD_FIXED {
            (format!("231:{n}"), format!("231:{}", UMAD_FIXED + n))
        } else {
            let m = 2 * (n - UMAD_FIXED);
            (
                format!("{UMAD_DYN_MAJOR}:{m}"),
                format!("{UMAD_DYN_MAJOR}:{}", m + 1),
            )
        };
        for (name, dev) in [(format!("umad{n}"), umad), (format!("issm{n}"), issm)] {
            char_dev(t, dir, "infiniband_mad", &name, &f.port.rdma, &dev, Some(1));
        }
    }
}

/// A character device of function `dir`: `<dir>/<class>/<name>/` with `ibdev`, `dev`
/// (`major:minor`), `port` when given and a `device` link, its `sys/class` link, and
/// `/dev/infiniband/<name>` as a plain file.
fn char_dev(
    t: &mut Tree,
    dir: &Path,
    class: &str,
    name: &str,
    ibdev: &str,
    dev: &str,
    port: Option<u8>,
) {
    let d = dir.join(class).join(name);
    t.insert(dir.join(class), Entry::Dir);
    t.insert(d.clone(), Entry::Dir);
    t.insert(d.join("ibdev"), Entry::File(format!("{ibdev}\n")));
    t.insert(d.join("dev"), Entry::File(format!("{dev}\n")));
    if let Some(p) = port {
        t.insert(d.join("port"), Entry::File(format!("{p}\n")));
    }
    link(t, d.join("device"), dir);
    link(t, PathBuf::from(format!("sys/class/{class}/{name}")), &d);
    t.insert(
        PathBuf::from(format!("dev/infiniband/{name}")),
        Entry::File(String::new()),
    );
}

struct FnRender<'a> {
    bdf: Bdf,
    dir: &'a Path,
    vendor: u16,
    device: u16,
    numa: i32,
    faults: &'a BTreeSet<Fault>,
    port: &'a Port,
    link_layer: LinkLayer,
    bound: bool,
    netdev_exists: bool,
    /// The netdev is up with carrier (a RoCE port's state follows it).
    netdev_running: bool,
    host: Option<&'a HostNetdev>,
    hca: String,
    rate: String,
    sys_guid: u64,
}

pub(crate) struct PortView {
    pub state: PortState,
    pub phys: PhysState,
    pub lid: u16,
    pub sm_lid: u16,
    pub node_guid: u64,
    pub port_guid: u64,
}

/// What a port shows, from SM state, overrides and faults. An Ethernet (RoCE) port is
/// ACTIVE only while its netdev runs with carrier, as on mlx5 (`mlx5_query_port_roce`).
pub(crate) fn port_view(
    port: &Port,
    faults: &BTreeSet<Fault>,
    base: LinkLayer,
    netdev_running: bool,
) -> PortView {
    let eth = faults.contains(&Fault::EthFallback) || base == LinkLayer::Ethernet;
    let zero = faults.contains(&Fault::ZeroGuid);
    let (mut state, mut phys) = match port.sm {
        _ if eth && netdev_running => (PortState::Active, PhysState::LinkUp),
        _ if eth => (PortState::Down, PhysState::Disabled),
        Sm::NoGuid => (PortState::Down, PhysState::LinkUp),
        Sm::Pending(_) => (PortState::Init, PhysState::LinkUp),
        Sm::Assigned { .. } => (PortState::Active, PhysState::LinkUp),
    };
    if port.policy_down {
        state = PortState::Down;
    }
    if faults.contains(&Fault::PortDown) {
        (state, phys) = (PortState::Down, PhysState::Disabled);
    }
    if let Some(o) = port.state_override {
        (state, phys) = o;
    }
    let (mut lid, mut sm_lid) = match port.sm {
        Sm::Assigned { lid, .. } => (lid, 1),
        _ => (0, 0),
    };
    if eth {
        (lid, sm_lid) = (0, 0);
    }
    if faults.contains(&Fault::LidZero) {
        lid = 0;
    }
    if faults.contains(&Fault::SmLidZero) {
        sm_lid = 0;
    }
    PortView {
        state,
        phys,
        lid,
        sm_lid,
        node_guid: if zero { 0 } else { port.node_guid },
        port_guid: if zero { 0 } else { port.port_guid },
    }
}

fn link(t: &mut Tree, at: PathBuf, target: &Path) {
    let rel = rel_link(&at, target);
    t.insert(at, Entry::Link(rel));
}

/// systemd-networkd's state file for a configured link, as it writes it.
fn networkd_state() -> String {
    "# This is private data. Do not parse.\n\
     ADMIN_STATE=configured\n\
     OPER_STATE=routable\n\
     CARRIER_STATE=carrier\n\
     ADDRESS_STATE=routable\n\
     IPV4_ADDRESS_STATE=routable\n\
     IPV6_ADDRESS_STATE=off\n\
     ONLINE_STATE=online\n\
     ACTIVATION_POLICY=up\n\
     REQUIRED_FOR_ONLINE=yes\n\
     REQUIRED_OPER_STATE_FOR_ONLINE=degraded\n\
     REQUIRED_FAMILY_FOR_ONLINE=any\n\
     NETWORK_FILE=/etc/systemd/network/50-vf.network\n\
     NETWORK_FILE_DROPINS=\"\"\n\
     DNS=\n\
     NTP=\n\
     SIP=\n\
     DOMAINS=\n\
     ROUTE_DOMAINS=\n\
     LLMNR=yes\n\
     MDNS=no\n"
        .to_owned()
}

/// Deterministic PF GUID (ConnectX-7 style OUI `a088c2`), unique per PCI address.
pub(crate) fn pf_guid(b: Bdf) -> u64 {
    0xa088_c203_0000_0000 | (u64::from(b.domain()) << 24) | (u64::from(b.rid()) << 8)
}

/// Deterministic "admin-assigned" VF GUID, unique per PCI address and never a PF's.
pub(crate) fn vf_guid(b: Bdf) -> u64 {
    0x0c42_a1ff_0000_0000 | (u64::from(b.domain()) << 24) | (u64::from(b.rid()) << 8) | 0x01
}

/// `node_guid` format: `%04x:%04x:%04x:%04x`.
pub(crate) fn guid_sysfs(g: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (g >> 48) & 0xffff,
        (g >> 32) & 0xffff,
        (g >> 16) & 0xffff,
        g & 0xffff
    )
}

/// `gids/0`: link-local prefix + port GUID.
pub(crate) fn gid0(port_guid: u64) -> String {
    format!("fe80:0000:0000:0000:{}", guid_sysfs(port_guid))
}

/// MLNX_OFED `sriov/<n>/{node,port}` format: 8 colon-separated bytes.
pub fn guid_colon(g: u64) -> String {
    hex_colon(&g.to_be_bytes())
}

/// Parses `11:22:33:44:77:66:77:90` (what the MLNX_OFED GUID files accept).
pub fn parse_guid(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 8 {
        return None;
    }
    let mut g = 0u64;
    for p in parts {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        g = (g << 8) | u64::from(u8::from_str_radix(p, 16).ok()?);
    }
    Some(g)
}

fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// 20-byte IPoIB hardware address: QPN flags + GID.
fn ipoib_address(port_guid: u64) -> String {
    let mut b = vec![0x00, 0x00, 0x10, 0x87, 0xfe, 0x80, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&port_guid.to_be_bytes());
    hex_colon(&b)
}

/// MAC from an EUI-64 GUID (drop the middle two bytes).
fn mac_from_guid(g: u64) -> String {
    let b = g.to_be_bytes();
    hex_colon(&[b[0], b[1], b[2], b[5], b[6], b[7]])
}

/// Deterministic `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` for a GPU of a system.
pub(crate) fn gpu_uuid(system: &str, b: Bdf) -> String {
    let h1 = fnv1a(format!("{system}/{b}/hi").as_bytes());
    let h2 = fnv1a(format!("{system}/{b}/lo").as_bytes());
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h1 >> 32,
        (h1 >> 16) & 0xffff,
        h1 & 0xffff,
        h2 >> 48,
        h2 & 0xffff_ffff_ffff
    )
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Net {
    pub fn new(host: Rtnl, private: Rtnl, private_ns: File, nsid: i32, host_nsid: i32) -> Net {
        Net {
            host,
            private,
            private_ns,
            nsid,
            host_nsid,
            peer_seq: 0,
        }
    }

    /// Whether `l`, a host link, is the VF end of our peer `peer_index`.
    fn is_our_end(&self, l: &LinkView, peer_index: u32) -> bool {
        l.is_veth && l.link_netnsid == Some(self.nsid) && l.iflink == Some(peer_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_formats() {
        let g = 0xa088_c203_00e3_142a;
        assert_eq!(guid_sysfs(g), "a088:c203:00e3:142a");
        assert_eq!(gid0(g), "fe80:0000:0000:0000:a088:c203:00e3:142a");
        assert_eq!(guid_colon(0x1122_3344_7766_7790), "11:22:33:44:77:66:77:90");
        assert_eq!(
            parse_guid("11:22:33:44:77:66:77:90\n"),
            Some(0x1122_3344_7766_7790)
        );
        assert_eq!(parse_guid("00:00:00:00:00:00:00:00"), Some(0));
        assert_eq!(parse_guid(""), None);
        assert_eq!(parse_guid("11:22:33"), None);
        assert_eq!(parse_guid("11:22:33:44:77:66:77:9g"), None);
    }

    #[test]
    fn gpu_uuid_is_stable_and_shaped() {
        let b: Bdf = "0000:1b:00.0".parse().unwrap();
        let u = gpu_uuid("NVIDIA DGX H200", b);
        assert_eq!(u, gpu_uuid("NVIDIA DGX H200", b));
        assert_eq!(u.len(), 40);
        assert!(u.starts_with("GPU-"));
        assert_ne!(
            u,
            gpu_uuid("NVIDIA DGX H200", "0000:43:00.0".parse().unwrap())
        );
    }

    #[test]
    fn port_view_faults_touch_only_their_attribute() {
        let port = Port {
            rdma: "mlx5_12".into(),
            rdma_index: 12,
            node_guid: 5,
            port_guid: 5,
            sm: Sm::Assigned { lid: 7, at: None },
            state_override: None,
            policy_down: false,
            faults: BTreeSet::new(),
            unbound: false,
        };
        let base = port_view(&port, &BTreeSet::new(), LinkLayer::InfiniBand, true);
        assert_eq!(
            (base.state, base.phys, base.lid, base.sm_lid),
            (PortState::Active, PhysState::LinkUp, 7, 1)
        );
        let lid0 = port_view(
            &port,
            &BTreeSet::from([Fault::LidZero]),
            LinkLayer::InfiniBand,
            true,
        );
        assert_eq!(
            (lid0.state, lid0.lid, lid0.sm_lid),
            (PortState::Active, 0, 1)
        );
        let sm0 = port_view(
            &port,
            &BTreeSet::from([Fault::SmLidZero]),
            LinkLayer::InfiniBand,
            true,
        );
        assert_eq!((sm0.lid, sm0.sm_lid), (7, 0));
        let down = port_view(
            &port,
            &BTreeSet::from([Fault::PortDown]),
            LinkLayer::InfiniBand,
            true,
        );
        assert_eq!(
            (down.state, down.phys, down.lid),
            (PortState::Down, PhysState::Disabled, 7)
        );
        let eth = port_view(
            &port,
            &BTreeSet::from([Fault::EthFallback]),
            LinkLayer::InfiniBand,
            true,
        );
        assert_eq!((eth.lid, eth.sm_lid, eth.state), (0, 0, PortState::Active));
        // A RoCE port whose netdev is down (or without carrier) is DOWN; an InfiniBand
        // port does not care.
        let eth_down = port_view(&port, &BTreeSet::new(), LinkLayer::Ethernet, false);
        assert_eq!(
            (eth_down.state, eth_down.phys),
            (PortState::Down, PhysState::Disabled)
        );
        let ib_down = port_view(&port, &BTreeSet::new(), LinkLayer::InfiniBand, false);
        assert_eq!(ib_down.state, PortState::Active);
    }
}
