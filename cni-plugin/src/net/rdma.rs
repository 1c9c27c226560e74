//! `NETLINK_RDMA` (netlink protocol 20): find an RDMA device by name, move it into another
//! network namespace (`rdma dev set <dev> netns <ns>`) and read its port 1 there
//! (`rdma link show <dev>/1`), which is all a process outside that netns can see of a
//! device in exclusive netns mode: the host's sysfs no longer lists it.
//!
//! Numbers from the kernel's `include/uapi/rdma/rdma_netlink.h` (checked against the
//! header as of Linux 6.x; values are ABI and never renumbered):
//!
//! * clients: `RDMA_NL_IWCM = 2, RDMA_NL_RSVD, RDMA_NL_LS, RDMA_NL_NLDEV` → `RDMA_NL_NLDEV = 5`;
//! * `#define RDMA_NL_GET_TYPE(client, op) ((client << 10) + op)`;
//! * `enum rdma_nldev_command`: `UNSPEC, GET (1), SET (2), NEWLINK, DELLINK, PORT_GET (5),
//!   SYS_GET (6), SYS_SET (7), …`;
//! * `enum rdma_nldev_attr`: `UNSPEC/PAD (0), DEV_INDEX (1, u32), DEV_NAME (2, string),
//!   PORT_INDEX (3, u32), CAP_FLAGS (4), FW_VERSION (5), NODE_GUID (6, u64), SYS_IMAGE_GUID,
//!   SUBNET_PREFIX, LID (9, u32), SM_LID (10, u32), LMC, PORT_STATE (12, u8),
//!   PORT_PHYS_STATE (13, u8), …, LINK_TYPE (65), SYS_ATTR_NETNS_MODE (66, u8),
//!   DEV_PROTOCOL (67, string), NET_NS_FD (68, u32)`.
//!
//! The kernel's `fill_port_info` puts `LID` and `SM_LID` only on InfiniBand ports, and
//! `fill_dev_info` names the protocol of port 1 in `DEV_PROTOCOL` (`ib`, `roce`, `iw`, …,
//! Linux 5.6 and later). Port states are `enum ib_port_state`, as in sysfs's `state`.
//!
//! RDMA netlink messages have no family header: attributes follow `struct nlmsghdr`
//! directly. `RDMA_NLDEV_CMD_SET` identifies the device by `RDMA_NLDEV_ATTR_DEV_INDEX` only
//! (the name is not accepted as a key), so the index is looked up in a `RDMA_NLDEV_CMD_GET`
//! dump first. The kernel refuses the move with `EOPNOTSUPP` while the RDMA subsystem is in
//! *shared* netns mode (`ib_devices_shared_netns`, the default); `RDMA_NLDEV_CMD_SYS_GET`
//! reports the mode as `RDMA_NLDEV_SYS_ATTR_NETNS_MODE` (1 = shared, 0 = exclusive).

use std::os::fd::RawFd;

use super::netns::{
    Msg, NLM_F_ACK, NLM_F_DUMP, NlError, NlSocket, Reply, attrs, get_str, get_u32, get_u64,
};

pub const RDMA_NL_NLDEV: u16 = 5;

pub const RDMA_NLDEV_CMD_GET: u16 = 1;
pub const RDMA_NLDEV_CMD_SET: u16 = 2;
pub const RDMA_NLDEV_CMD_PORT_GET: u16 = 5;
pub const RDMA_NLDEV_CMD_SYS_GET: u16 = 6;

pub const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1;
pub const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2;
pub const RDMA_NLDEV_ATTR_PORT_INDEX: u16 = 3;
pub const RDMA_NLDEV_ATTR_NODE_GUID: u16 = 6;
pub const RDMA_NLDEV_ATTR_LID: u16 = 9;
pub const RDMA_NLDEV_ATTR_SM_LID: u16 = 10;
pub const RDMA_NLDEV_ATTR_PORT_STATE: u16 = 12;
pub const RDMA_NLDEV_ATTR_PORT_PHYS_STATE: u16 = 13;
pub const RDMA_NLDEV_ATTR_DEV_PROTOCOL: u16 = 67;
pub const RDMA_NLDEV_SYS_ATTR_NETNS_MODE: u16 = 66;
pub const RDMA_NLDEV_NET_NS_FD: u16 = 68;

/// `RDMA_NL_GET_TYPE(client, op)`.
pub const fn rdma_nl_get_type(client: u16, op: u16) -> u16 {
    (client << 10) + op
}

/// `RDMA_NL_GET_CLIENT(type)`.
pub const fn rdma_nl_get_client(ty: u16) -> u16 {
    (ty & (((1 << 6) - 1) << 10)) >> 10
}

/// `RDMA_NL_GET_OP(type)`.
pub const fn rdma_nl_get_op(ty: u16) -> u16 {
    ty & ((1 << 10) - 1)
}

/// `RDMA_NLDEV_CMD_GET` as a dump: every RDMA device visible in the socket's netns.
pub fn get_devices_msg() -> Msg {
    Msg::new(
        rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_GET),
        NLM_F_DUMP,
    )
}

/// `RDMA_NLDEV_CMD_SET` moving device `index` into the netns open as `netns_fd`.
pub fn set_netns_msg(index: u32, netns_fd: RawFd) -> Msg {
    let mut m = Msg::new(
        rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_SET),
        NLM_F_ACK,
    );
    m.attr_u32(RDMA_NLDEV_ATTR_DEV_INDEX, index)
        .attr_u32(RDMA_NLDEV_NET_NS_FD, netns_fd as u32);
    m
}

/// `RDMA_NLDEV_CMD_PORT_GET` of port `port` of device `index` (not a dump: the kernel
/// answers one message, in the socket's netns only).
pub fn port_get_msg(index: u32, port: u32) -> Msg {
    let mut m = Msg::new(
        rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_PORT_GET),
        NLM_F_ACK,
    );
    m.attr_u32(RDMA_NLDEV_ATTR_DEV_INDEX, index)
        .attr_u32(RDMA_NLDEV_ATTR_PORT_INDEX, port);
    m
}

/// `RDMA_NLDEV_CMD_SYS_GET`: system-wide RDMA settings (netns mode …).
pub fn sys_get_msg() -> Msg {
    Msg::new(
        rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_SYS_GET),
        NLM_F_ACK,
    )
}

/// An RDMA device as a `RDMA_NLDEV_CMD_GET` answer describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaDev {
    pub index: u32,
    pub name: String,
    pub node_guid: Option<u64>,
    /// `ib`, `roce`, … (`None` before Linux 5.6).
    pub protocol: Option<String>,
}

/// Port 1 of an RDMA device as RDMA netlink shows it in the device's netns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortView {
    pub node_guid: Option<u64>,
    pub protocol: Option<String>,
    /// `enum ib_port_state` (4: ACTIVE).
    pub state: Option<u8>,
    /// `enum ib_port_phys_state` (5: LinkUp).
    pub phys_state: Option<u8>,
    /// InfiniBand ports only.
    pub lid: Option<u32>,
    pub sm_lid: Option<u32>,
}

/// The devices in the answer to [`get_devices_msg`].
pub fn decode_devices(replies: &[Reply]) -> Vec<RdmaDev> {
    let get = rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_GET);
    replies
        .iter()
        .filter(|r| r.ty == get)
        .filter_map(|r| {
            let mut index = None;
            let mut name = None;
            let mut node_guid = None;
            let mut protocol = None;
            for (ty, v) in attrs(&r.payload) {
                match ty {
                    RDMA_NLDEV_ATTR_DEV_INDEX => index = get_u32(v),
                    RDMA_NLDEV_ATTR_DEV_NAME => name = Some(get_str(v)),
                    RDMA_NLDEV_ATTR_NODE_GUID => node_guid = get_u64(v),
                    RDMA_NLDEV_ATTR_DEV_PROTOCOL => protocol = Some(get_str(v)),
                    _ => {}
                }
            }
            Some(RdmaDev {
                index: index?,
                name: name?,
                node_guid,
                protocol,
            })
        })
        .collect()
}

/// The index of the device called `name` in the answer to [`get_devices_msg`].
pub fn find_device(replies: &[Reply], name: &str) -> Option<u32> {
    decode_devices(replies)
        .into_iter()
        .find(|d| d.name == name)
        .map(|d| d.index)
}

/// Port `port` of device `dev` in the answer to [`port_get_msg`], `None` when the answer
/// is about another device or port.
pub fn decode_port(replies: &[Reply], dev: &RdmaDev, port: u32) -> Option<PortView> {
    let ty = rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_PORT_GET);
    replies.iter().filter(|r| r.ty == ty).find_map(|r| {
        let mut view = PortView {
            node_guid: dev.node_guid,
            protocol: dev.protocol.clone(),
            ..PortView::default()
        };
        let (mut index, mut port_index) = (None, None);
        for (t, v) in attrs(&r.payload) {
            match t {
                RDMA_NLDEV_ATTR_DEV_INDEX => index = get_u32(v),
                RDMA_NLDEV_ATTR_PORT_INDEX => port_index = get_u32(v),
                RDMA_NLDEV_ATTR_LID => view.lid = get_u32(v),
                RDMA_NLDEV_ATTR_SM_LID => view.sm_lid = get_u32(v),
                RDMA_NLDEV_ATTR_PORT_STATE => view.state = v.first().copied(),
                RDMA_NLDEV_ATTR_PORT_PHYS_STATE => view.phys_state = v.first().copied(),
                _ => {}
            }
        }
        (index == Some(dev.index) && port_index == Some(port)).then_some(view)
    })
}

/// The RDMA subsystem's network namespace mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsMode {
    /// Every RDMA device is visible in every netns; devices cannot be moved (the default).
    Shared,
    /// Each RDMA device belongs to one netns and can be moved.
    Exclusive,
}

/// The netns mode in the answer to [`sys_get_msg`].
pub fn decode_netns_mode(replies: &[Reply]) -> Option<NetnsMode> {
    let ty = rdma_nl_get_type(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_SYS_GET);
    replies.iter().filter(|r| r.ty == ty).find_map(|r| {
        attrs(&r.payload)
            .find(|(t, _)| *t == RDMA_NLDEV_SYS_ATTR_NETNS_MODE)
            .and_then(|(_, v)| v.first().copied())
            .map(|m| {
                if m != 0 {
                    NetnsMode::Shared
                } else {
                    NetnsMode::Exclusive
                }
            })
    })
}

/// Lists the RDMA devices visible through `sock` (its netns, in exclusive mode).
pub fn devices(sock: &mut NlSocket) -> Result<Vec<RdmaDev>, NlError> {
    Ok(decode_devices(&sock.request(&get_devices_msg())?))
}

/// Asks the kernel for the RDMA netns mode.
pub fn netns_mode(sock: &mut NlSocket) -> Result<Option<NetnsMode>, NlError> {
    Ok(decode_netns_mode(&sock.request(&sys_get_msg())?))
}

/// Port 1 of the device called `name`, as seen through `sock` (its netns, in exclusive
/// mode); `None` when no such device is visible there.
pub fn port1(sock: &mut NlSocket, name: &str) -> Result<Option<PortView>, NlError> {
    let Some(dev) = devices(sock)?.into_iter().find(|d| d.name == name) else {
        return Ok(None);
    };
    Ok(decode_port(
        &sock.request(&port_get_msg(dev.index, 1))?,
        &dev,
        1,
    ))
}

/// Moves device `index` into the netns open as `netns_fd`.
pub fn set_netns(sock: &mut NlSocket, index: u32, netns_fd: RawFd) -> Result<(), NlError> {
    sock.request(&set_netns_msg(index, netns_fd)).map(|_| ())
}
