//! A small synchronous rtnetlink client: the few requests the sim makes (create veth
//! pairs, dump links, ask for a namespace id) and link-event sockets for the mirror.
//!
//! Synchronous on purpose: the sim's threads are plain threads, and netns switching must
//! happen on a thread the sim controls (never inside an async runtime).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
    State,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns, unshare};

/// `RTNLGRP_LINK` from `linux/rtnetlink.h`.
const RTNLGRP_LINK: u32 = 1;
const RECV_BUF: usize = 1 << 16;

/// What the sim needs to know about one link of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkView {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub mtu: u32,
    pub address: Vec<u8>,
    pub operstate: State,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub iflink: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace, as an id of the dumping namespace.
    pub link_netnsid: Option<i32>,
    pub is_veth: bool,
}

impl LinkView {
    fn from_msg(msg: LinkMessage) -> Option<LinkView> {
        let mut v = LinkView {
            index: msg.header.index,
            name: String::new(),
            alias: None,
            mtu: 0,
            address: Vec::new(),
            operstate: State::Unknown,
            iflink: None,
            link_netnsid: None,
            is_veth: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => v.name = n,
                LinkAttribute::IfAlias(a) => v.alias = Some(a),
                LinkAttribute::Mtu(m) => v.mtu = m,
                LinkAttribute::Address(a) => v.address = a,
                LinkAttribute::OperState(s) => v.operstate = s,
                LinkAttribute::Link(l) => v.iflink = Some(l),
                LinkAttribute::LinkNetNsId(id) => v.link_netnsid = Some(id),
                LinkAttribute::LinkInfo(infos) => {
                    v.is_veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        (!v.name.is_empty()).then_some(v)
    }

    /// `operstate` as sysfs prints it (`net/<if>/operstate`).
    pub fn operstate_str(&self) -> &'static str {
        match self.operstate {
            State::Up => "up",
            State::Down => "down",
            State::LowerLayerDown => "lowerlayerdown",
            State::Testing => "testing",
            State::Dormant => "dormant",
            State::NotPresent => "notpresent",
            _ => "unknown",
        }
    }
}

/// One veth pair to create: `name` in the socket's namespace, `peer` in `peer_ns`.
pub(crate) struct VethSpec {
    pub name: String,
    pub peer: String,
    pub peer_ns: RawFd,
    pub mtu: u32,
    pub alias: String,
    /// Ask for this ifindex (the kernel refuses if taken).
    pub index: Option<u32>,
}

/// A route-netlink request socket bound to the namespace it was opened in.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Short ACKs: without this every ACK carries the whole request back.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Opens a socket in the namespace `ns` (switching only a short-lived helper thread).
    pub fn open_in(ns: &File) -> io::Result<Rtnl> {
        in_netns(ns, Rtnl::open)
    }

    fn send(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.sock.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Receives one datagram and splits it into messages.
    fn recv(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        self.buf.clear();
        let n = self.sock.recv(&mut self.buf, libc::MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(io::Error::other(
                "netlink reply larger than the receive buffer",
            ));
        }
        Ok(split_messages(&self.buf))
    }

    /// Sends one request and collects its replies until the ACK / DONE.
    fn exec(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let seq = self.send(payload, flags)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            for msg in self.recv()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => {
                        return Ok((out, interrupted));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link of the socket's namespace. For namespaces only the sim or one test
    /// changes (the private one, a test's pod): the host's, which every parallel test
    /// churns, is asked link by link instead ([`Rtnl::links_by_index`]).
    pub fn dump_links(&mut self) -> io::Result<Vec<LinkView>> {
        // A dump interrupted by concurrent changes is inconsistent (entries may be missing,
        // which the mirror would take for a vanished VF): ask again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let (msgs, interrupted) = self.exec(
                get_link_req(LinkMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
            )?;
            if !interrupted {
                return Ok(msgs
                    .into_iter()
                    .filter_map(|m| match m {
                        RouteNetlinkMessage::NewLink(l) => LinkView::from_msg(l),
                        _ => None,
                    })
                    .collect());
            }
        }
        Err(io::Error::other("link dump kept being interrupted"))
    }

    /// One link of namespace `nsid` (an id in this socket's namespace), by index.
    pub fn get_link_in(&mut self, nsid: i32, index: u32) -> io::Result<Option<LinkView>> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        req.attributes.push(LinkAttribute::IfNetnsId(nsid));
        self.get_link(req)
    }

    /// One link of the socket's namespace, by name.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkView>> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(req)
    }

    /// One link, as `req` names it; `None` when there is none (`ENODEV`).
    fn get_link(&mut self, req: LinkMessage) -> io::Result<Option<LinkView>> {
        match self.exec(get_link_req(req), NLM_F_REQUEST | NLM_F_ACK) {
            Ok((msgs, _)) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => LinkView::from_msg(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Links of the socket's namespace by index, pipelined; `None` for an index with no
    /// link. Unlike a dump, a request per link cannot be interrupted by other links
    /// coming and going (parallel tests churn the host namespace).
    pub fn links_by_index(&mut self, indexes: &[u32]) -> io::Result<Vec<Option<LinkView>>> {
        // Replies the socket cannot queue are dropped, and a dropped reply would be waited
        // for forever: keep what is in flight (~1.3 KB per link) well under its buffer.
        const IN_FLIGHT: usize = 64;
        let mut out = vec![None; indexes.len()];
        let mut first_err = None;
        for (c, chunk) in indexes.chunks(IN_FLIGHT).enumerate() {
            let found = &mut out[c * IN_FLIGHT..];
            let results = self.pipelined(
                chunk.len(),
                |rt, j| {
                    let mut req = LinkMessage::default();
                    req.header.index = chunk[j];
                    rt.send(get_link_req(req), NLM_F_REQUEST | NLM_F_ACK)
                },
                |j, m| {
                    if let RouteNetlinkMessage::NewLink(l) = m {
                        found[j] = LinkView::from_msg(l);
                    }
                },
            );
            if let Some(e) = results
                .into_iter()
                .filter_map(Result::err)
                .find(|e| e.raw_os_error() != Some(libc::ENODEV))
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(out), Err)
    }

    /// Creates veth pairs, pipelined; one result per spec.
    pub fn create_veths(&mut self, specs: &[VethSpec]) -> Vec<io::Result<()>> {
        let mut results = self.pipelined(
            specs.len(),
            |rt, i| {
                rt.send(
                    RouteNetlinkMessage::NewLink(veth_msg(&specs[i])),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
            },
            |_, _| {},
        );
        // The kernel ignores IFLA_IFALIAS on create: set it in a second request, by name,
        // and only on pairs that were created. Sent beside a create that fails (the name or
        // index is taken), it would label whichever link has that name.
        let created: Vec<usize> = (0..specs.len()).filter(|&i| results[i].is_ok()).collect();
        let labelled = self.pipelined(
            created.len(),
            |rt, j| {
                let spec = &specs[created[j]];
                let mut alias = LinkMessage::default();
                alias.attributes = vec![
                    LinkAttribute::IfName(spec.name.clone()),
                    LinkAttribute::IfAlias(spec.alias.clone()),
                ];
                rt.send(
                    RouteNetlinkMessage::SetLink(alias),
                    NLM_F_REQUEST | NLM_F_ACK,
                )
            },
            |_, _| {},
        );
        for (j, r) in labelled.into_iter().enumerate() {
            if r.is_err() {
                results[created[j]] = r;
            }
        }
        results
    }

    /// Sends `n` requests (`send(self, i)` sends the i-th and returns its sequence number),
    /// then collects their ACKs; one result per request. Data replies (a GET's answer) go
    /// to `on_reply(i, message)` as they come, before the i-th ACK.
    fn pipelined(
        &mut self,
        n: usize,
        mut send: impl FnMut(&mut Rtnl, usize) -> io::Result<u32>,
        mut on_reply: impl FnMut(usize, RouteNetlinkMessage),
    ) -> Vec<io::Result<()>> {
        let mut pending: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(n);
        for i in 0..n {
            match send(self, i) {
                Ok(seq) => {
                    pending.insert(seq, i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        while !pending.is_empty() {
            let msgs = match self.recv() {
                Ok(m) => m,
                Err(e) => {
                    let kind = e.kind();
                    for (_, i) in pending.drain() {
                        results[i] = Err(io::Error::new(kind, e.to_string()));
                    }
                    break;
                }
            };
            for msg in msgs {
                let seq = msg.header.sequence_number;
                let Some(&i) = pending.get(&seq) else {
                    continue;
                };
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => on_reply(i, m),
                    NetlinkPayload::Error(e) => {
                        pending.remove(&seq);
                        if e.code.is_some() {
                            results[i] = Err(e.to_io());
                        }
                    }
                    _ => {}
                }
            }
        }
        results
    }

    /// Sets links up by index, pipelined.
    pub fn set_up(&mut self, indexes: &[u32]) -> io::Result<()> {
        self.pipeline(indexes, |index| {
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            RouteNetlinkMessage::SetLink(m)
        })
    }

    /// Deletes links by index, pipelined; a link already gone is not an error.
    pub fn delete_links(&mut self, indexes: &[u32]) -> io::Result<()> {
        self.pipeline(indexes, |index| {
            let mut m = LinkMessage::default();
            m.header.index = index;
            RouteNetlinkMessage::DelLink(m)
        })
    }

    /// Sends one request per link index and collects the ACKs; ENODEV (link gone) is fine.
    fn pipeline(
        &mut self,
        indexes: &[u32],
        req: impl Fn(u32) -> RouteNetlinkMessage,
    ) -> io::Result<()> {
        self.pipelined(
            indexes.len(),
            |rt, i| rt.send(req(indexes[i]), NLM_F_REQUEST | NLM_F_ACK),
            |_, _| {},
        )
        .into_iter()
        .filter_map(Result::err)
        .find(|e| e.raw_os_error() != Some(libc::ENODEV))
        .map_or(Ok(()), Err)
    }

    /// The id this socket's namespace uses for the namespace behind `ns`, assigning one if
    /// there is none yet (ids are how dumps name a veth peer's namespace).
    pub fn nsid_of(&mut self, ns: &File) -> io::Result<i32> {
        let fd = ns.as_raw_fd() as u32;
        let query = |rt: &mut Rtnl| -> io::Result<i32> {
            let mut m = NsidMessage::default();
            m.attributes.push(NsidAttribute::Fd(fd));
            let (msgs, _) = rt.exec(RouteNetlinkMessage::GetNsId(m), NLM_F_REQUEST | NLM_F_ACK)?;
            Ok(msgs
                .into_iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewNsId(n) => {
                        n.attributes.into_iter().find_map(|a| match a {
                            NsidAttribute::Id(id) => Some(id),
                            _ => None,
                        })
                    }
                    _ => None,
                })
                .unwrap_or(-1))
        };
        let id = query(self)?;
        if id >= 0 {
            return Ok(id);
        }
        let mut m = NsidMessage::default();
        m.attributes.push(NsidAttribute::Fd(fd));
        m.attributes.push(NsidAttribute::Id(-1));
        match self.exec(RouteNetlinkMessage::NewNsId(m), NLM_F_REQUEST | NLM_F_ACK) {
            Ok(_) => {}
            // Someone else assigned one in between: fine, read it.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        match query(self)? {
            id if id >= 0 => Ok(id),
            _ => Err(io::Error::other("the kernel assigned no namespace id")),
        }
    }
}

/// A link request without statistics (smaller answers; the sim reads none of them).
fn get_link_req(mut req: LinkMessage) -> RouteNetlinkMessage {
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    RouteNetlinkMessage::GetLink(req)
}

fn veth_msg(spec: &VethSpec) -> LinkMessage {
    // The peer cannot be created up: veth refuses to open a half-linked pair (ENOTCONN).
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(spec.peer.clone()),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::NetNsFd(spec.peer_ns),
    ];
    let mut m = LinkMessage::default();
    if let Some(index) = spec.index {
        m.header.index = index;
    }
    m.attributes = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    m
}

fn split_messages(mut bytes: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let Ok(buf) = NetlinkBuffer::new_checked(bytes) else {
            break;
        };
        let len = buf.length() as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        // A message this crate version cannot parse is skipped, not fatal.
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            out.push(msg);
        }
        let advance = (len + 3) & !3;
        bytes = bytes.get(advance..).unwrap_or(&[]);
    }
    out
}

/// A non-blocking socket that receives the link events (`RTNLGRP_LINK`) of the calling
/// thread's namespace, or of `ns`.
pub(crate) fn link_event_socket(ns: Option<&File>) -> io::Result<Socket> {
    let open = || -> io::Result<Socket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.add_membership(RTNLGRP_LINK)?;
        sock.set_non_blocking(true)?;
        // Building a node emits hundreds of events at once; overflow is handled (ENOBUFS
        // means "resync"), a bigger buffer just makes it rare.
        let _ = sock.set_rx_buf_sz(4 << 20);
        Ok(sock)
    };
    match ns {
        Some(ns) => in_netns(ns, open),
        None => open(),
    }
}

/// Reads every pending datagram of an event socket; true if any link event passes
/// `relevant` (an overflow counts: events were lost, so the caller must resync).
pub(crate) fn drain_events(sock: &Socket, relevant: impl Fn(&LinkView) -> bool) -> bool {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    let mut any = false;
    loop {
        buf.clear();
        match sock.recv(&mut buf, libc::MSG_TRUNC) {
            Ok(n) if n > buf.len() => any = true,
            Ok(_) => {
                any |= split_messages(&buf).into_iter().any(|m| match m.payload {
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
                    ) => LinkView::from_msg(l).is_none_or(|v| relevant(&v)),
                    _ => false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
            Err(_) => return any,
        }
    }
}

/// Runs `f` on a helper thread switched into the network namespace `ns`, so the caller's
/// thread never changes namespace. Sockets created by `f` stay bound to `ns`.
pub(crate) fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("netns helper thread panicked"))?
    })
}

/// Creates a new, unnamed network namespace and returns a handle on it plus a request
/// socket inside it. The namespace lives exactly as long as these (and any socket opened
/// in it) are open: no bind mount, so even a killed process leaves nothing behind.
pub(crate) fn private_netns() -> io::Result<(File, Rtnl)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let ns = File::open("/proc/thread-self/ns/net")?;
            let rt = Rtnl::open()?;
            Ok((ns, rt))
        })
        .join()
        .map_err(|_| io::Error::other("netns helper thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_request_encodes_and_parses_back() {
        let spec = VethSpec {
            name: "q7p24s0f1".into(),
            peer: "v0".into(),
            peer_ns: 7,
            mtu: 4092,
            alias: "x".into(),
            index: Some(42),
        };
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg(&spec))),
        );
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let parsed = split_messages(&bytes);
        assert_eq!(parsed.len(), 1);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = &parsed[0].payload
        else {
            panic!("not a NewLink");
        };
        let view = LinkView::from_msg(l.clone()).unwrap();
        assert_eq!(
            (view.index, view.name.as_str(), view.mtu),
            (42, "q7p24s0f1", 4092)
        );
        assert!(view.is_veth);
    }
}
