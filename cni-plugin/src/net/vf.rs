//! SR-IOV VF attributes of a PF netdev (`IFLA_VFINFO_LIST`), per
//! `include/uapi/linux/if_link.h`:
//!
//! ```text
//! IFLA_VFINFO_LIST (22, nested)
//!   IFLA_VF_INFO (1, nested)          one per VF
//!     IFLA_VF_MAC          1  struct ifla_vf_mac       { __u32 vf; __u8 mac[32]; }          36 bytes
//!     IFLA_VF_VLAN         2  struct ifla_vf_vlan      { __u32 vf; __u32 vlan; __u32 qos; } 12
//!     IFLA_VF_TX_RATE      3  struct ifla_vf_tx_rate   { __u32 vf; __u32 rate; }            8
//!     IFLA_VF_SPOOFCHK     4  struct ifla_vf_spoofchk  { __u32 vf; __u32 setting; }         8
//!     IFLA_VF_LINK_STATE   5  struct ifla_vf_link_state{ __u32 vf; __u32 link_state; }      8
//!     IFLA_VF_RATE         6  struct ifla_vf_rate      { __u32 vf; __u32 min_tx_rate;
//!                                                        __u32 max_tx_rate; }               12
//!     IFLA_VF_TRUST        9  struct ifla_vf_trust     { __u32 vf; __u32 setting; }         8
//!     IFLA_VF_IB_NODE_GUID 10 struct ifla_vf_guid      { __u32 vf; __u64 guid; }            16
//!     IFLA_VF_IB_PORT_GUID 11 struct ifla_vf_guid                                            16
//!     IFLA_VF_VLAN_LIST    12 (nested)
//!       IFLA_VF_VLAN_INFO  1  struct ifla_vf_vlan_info { __u32 vf; __u32 vlan; __u32 qos;
//!                                                        __be16 vlan_proto; }              16
//! ```
//!
//! All `__u32`/`__u64` are host byte order; `vlan_proto` is big-endian; the structs carry
//! the C compiler's padding (`ifla_vf_guid` has 4 bytes after `vf` on 64-bit ABIs,
//! `ifla_vf_vlan_info` 2 bytes at the end).
//!
//! Kernel behaviour this module relies on (`net/core/rtnetlink.c`, `do_setvfinfo`): inside
//! one `IFLA_VF_INFO`, `IFLA_VF_IB_NODE_GUID` is handled and then the function *returns*,
//! so a port GUID in the same `IFLA_VF_INFO` would be ignored. [`encode_vf_guids`] therefore
//! puts each GUID in its own `IFLA_VF_INFO` of the same list (the list is walked entry by
//! entry), which sets both in one request. Reading VF state needs `IFLA_EXT_MASK` with
//! `RTEXT_FILTER_VF` on the `RTM_GETLINK`. A netdev without SR-IOV (veth here) answers
//! `EOPNOTSUPP` to any VF setting and reports no `IFLA_NUM_VF`.

use railvf_host::Guid;

use super::VfSettings;
use super::netns::{attrs, find_attr, get_u32, get_u64, nest_begin, nest_end, put_attr};

pub const IFLA_NUM_VF: u16 = 21;
pub const IFLA_VFINFO_LIST: u16 = 22;
pub const IFLA_EXT_MASK: u16 = 29;

pub const IFLA_VF_INFO: u16 = 1;

pub const IFLA_VF_MAC: u16 = 1;
pub const IFLA_VF_VLAN: u16 = 2;
pub const IFLA_VF_TX_RATE: u16 = 3;
pub const IFLA_VF_SPOOFCHK: u16 = 4;
pub const IFLA_VF_LINK_STATE: u16 = 5;
pub const IFLA_VF_RATE: u16 = 6;
pub const IFLA_VF_RSS_QUERY_EN: u16 = 7;
pub const IFLA_VF_STATS: u16 = 8;
pub const IFLA_VF_TRUST: u16 = 9;
pub const IFLA_VF_IB_NODE_GUID: u16 = 10;
pub const IFLA_VF_IB_PORT_GUID: u16 = 11;
pub const IFLA_VF_VLAN_LIST: u16 = 12;
pub const IFLA_VF_BROADCAST: u16 = 13;

pub const IFLA_VF_VLAN_INFO: u16 = 1;

/// `RTEXT_FILTER_VF`: include VF information in `RTM_GETLINK` answers.
pub const RTEXT_FILTER_VF: u32 = 1 << 0;
/// `RTEXT_FILTER_SKIP_STATS`: leave statistics (link and VF) out.
pub const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

/// `IFLA_VF_LINK_STATE_AUTO` / `_ENABLE` / `_DISABLE`.
pub const IFLA_VF_LINK_STATE_AUTO: u32 = 0;
pub const IFLA_VF_LINK_STATE_ENABLE: u32 = 1;
pub const IFLA_VF_LINK_STATE_DISABLE: u32 = 2;

/// 802.1Q and 802.1ad VLAN protocols.
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// `MAX_ADDR_LEN`: size of the `mac` array in `struct ifla_vf_mac`.
pub const MAX_ADDR_LEN: usize = 32;

/// `struct ifla_vf_mac` (36 bytes).
pub fn vf_mac(vf: u32, mac: &[u8]) -> [u8; 4 + MAX_ADDR_LEN] {
    let mut b = [0u8; 4 + MAX_ADDR_LEN];
    b[0..4].copy_from_slice(&vf.to_ne_bytes());
    let n = mac.len().min(MAX_ADDR_LEN);
    b[4..4 + n].copy_from_slice(&mac[..n]);
    b
}

/// `struct ifla_vf_vlan_info` (16 bytes: 14 of fields, 2 of trailing padding).
pub fn vf_vlan_info(vf: u32, vlan: u32, qos: u32, proto: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&vf.to_ne_bytes());
    b[4..8].copy_from_slice(&vlan.to_ne_bytes());
    b[8..12].copy_from_slice(&qos.to_ne_bytes());
    b[12..14].copy_from_slice(&proto.to_be_bytes());
    b
}

/// `struct ifla_vf_spoofchk` / `ifla_vf_trust` / `ifla_vf_link_state` / `ifla_vf_tx_rate`:
/// `{ __u32 vf; __u32 value; }` (8 bytes).
pub fn vf_u32_pair(vf: u32, value: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&vf.to_ne_bytes());
    b[4..8].copy_from_slice(&value.to_ne_bytes());
    b
}

/// `struct ifla_vf_rate` (12 bytes).
pub fn vf_rate(vf: u32, min_tx_rate: u32, max_tx_rate: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&vf.to_ne_bytes());
    b[4..8].copy_from_slice(&min_tx_rate.to_ne_bytes());
    b[8..12].copy_from_slice(&max_tx_rate.to_ne_bytes());
    b
}

/// Size of `struct ifla_vf_guid`: `__u64` is 8-aligned on every 64-bit Linux ABI (and on
/// 32-bit ARM), 4-aligned on i386.
pub const IFLA_VF_GUID_LEN: usize = if cfg!(target_arch = "x86") { 12 } else { 16 };

/// `struct ifla_vf_guid` (`{ __u32 vf; __u64 guid; }`, 16 bytes with padding after `vf`).
pub fn vf_guid(vf: u32, guid: u64) -> Vec<u8> {
    let mut b = vec![0u8; IFLA_VF_GUID_LEN];
    b[0..4].copy_from_slice(&vf.to_ne_bytes());
    let at = IFLA_VF_GUID_LEN - 8;
    b[at..].copy_from_slice(&guid.to_ne_bytes());
    b
}

/// The `IFLA_VFINFO_LIST` attribute (header included) that applies the `Some` fields of `s`
/// to VF `vf`, or `None` when there is nothing to apply.
pub fn encode_vf_settings(vf: u32, s: &VfSettings) -> Option<Vec<u8>> {
    let mut inner = Vec::new();
    if let Some(mac) = s.mac {
        put_attr(&mut inner, IFLA_VF_MAC, &vf_mac(vf, &mac));
    }
    if let Some((vlan, qos, proto)) = s.vlan {
        let at = nest_begin(&mut inner, IFLA_VF_VLAN_LIST);
        put_attr(
            &mut inner,
            IFLA_VF_VLAN_INFO,
            &vf_vlan_info(vf, vlan.into(), qos.into(), proto),
        );
        nest_end(&mut inner, at);
    }
    if let Some((min, max)) = s.rate {
        put_attr(&mut inner, IFLA_VF_RATE, &vf_rate(vf, min, max));
    }
    if let Some(on) = s.spoofchk {
        put_attr(&mut inner, IFLA_VF_SPOOFCHK, &vf_u32_pair(vf, on.into()));
    }
    if let Some(state) = s.link_state {
        put_attr(&mut inner, IFLA_VF_LINK_STATE, &vf_u32_pair(vf, state));
    }
    if let Some(on) = s.trust {
        put_attr(&mut inner, IFLA_VF_TRUST, &vf_u32_pair(vf, on.into()));
    }
    if inner.is_empty() {
        return None;
    }
    Some(vfinfo_list(&[inner]))
}

/// The `IFLA_VFINFO_LIST` attribute that sets VF `vf`'s node and port GUIDs: two
/// `IFLA_VF_INFO` entries, because the kernel stops reading an entry after its node GUID.
pub fn encode_vf_guids(vf: u32, node: Guid, port: Guid) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr(&mut a, IFLA_VF_IB_NODE_GUID, &vf_guid(vf, node.0));
    let mut b = Vec::new();
    put_attr(&mut b, IFLA_VF_IB_PORT_GUID, &vf_guid(vf, port.0));
    vfinfo_list(&[a, b])
}

/// Wraps each element of `entries` (encoded `IFLA_VF_*` attributes) in an `IFLA_VF_INFO`
/// nest, all inside one `IFLA_VFINFO_LIST` nest.
fn vfinfo_list(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let list = nest_begin(&mut out, IFLA_VFINFO_LIST);
    for e in entries {
        let info = nest_begin(&mut out, IFLA_VF_INFO);
        out.extend_from_slice(e);
        nest_end(&mut out, info);
    }
    nest_end(&mut out, list);
    out
}

/// One VF as its PF reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfInfo {
    pub vf: u32,
    /// The whole `mac[32]` of `struct ifla_vf_mac` (an Ethernet MAC is the first 6 bytes).
    pub mac32: Vec<u8>,
    /// Everything the kernel reported; `spoofchk`/`trust` are `None` when the driver does not
    /// report them (the kernel sends `(__u32)-1`).
    pub settings: VfSettings,
    pub node_guid: Option<Guid>,
    pub port_guid: Option<Guid>,
}

/// What a PF's `RTM_NEWLINK` (asked with `RTEXT_FILTER_VF`) says about its VFs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PfVfs {
    /// `IFLA_NUM_VF`: absent when the netdev has no SR-IOV parent device (veth …).
    pub num_vf: Option<u32>,
    /// `IFLA_VFINFO_LIST`, decoded.
    pub vfs: Vec<VfInfo>,
}

/// Decodes `IFLA_NUM_VF` and `IFLA_VFINFO_LIST` from the attributes of an `RTM_NEWLINK`
/// (the part after `struct ifinfomsg`).
pub fn decode_pf_vfs(link_attrs: &[u8]) -> PfVfs {
    PfVfs {
        num_vf: find_attr(link_attrs, IFLA_NUM_VF).and_then(get_u32),
        vfs: find_attr(link_attrs, IFLA_VFINFO_LIST)
            .map(decode_vfinfo_list)
            .unwrap_or_default(),
    }
}

/// Decodes the value of an `IFLA_VFINFO_LIST` attribute.
pub fn decode_vfinfo_list(value: &[u8]) -> Vec<VfInfo> {
    attrs(value)
        .filter(|(ty, _)| *ty == IFLA_VF_INFO)
        .filter_map(|(_, v)| decode_vf_info(v))
        .collect()
}

/// Decodes one `IFLA_VF_INFO` nest; `None` when it carries no VF number at all.
pub fn decode_vf_info(value: &[u8]) -> Option<VfInfo> {
    let mut info = VfInfo::default();
    let mut vf = None;
    let mut legacy_vlan = None;
    let mut legacy_rate = None;
    for (ty, v) in attrs(value) {
        let Some(this_vf) = get_u32(v) else { continue };
        match ty {
            IFLA_VF_MAC if v.len() >= 4 + 6 => {
                let end = v.len().min(4 + MAX_ADDR_LEN);
                info.mac32 = v[4..end].to_vec();
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&v[4..10]);
                info.settings.mac = Some(mac);
            }
            IFLA_VF_VLAN if v.len() >= 12 => {
                let vlan = get_u32(&v[4..]).unwrap_or(0);
                let qos = get_u32(&v[8..]).unwrap_or(0);
                legacy_vlan = Some((vlan as u16, qos as u8, ETH_P_8021Q));
            }
            IFLA_VF_VLAN_LIST => {
                // The first IFLA_VF_VLAN_INFO is the VF's VLAN (the kernel has one).
                if let Some(vi) = find_attr(v, IFLA_VF_VLAN_INFO).filter(|vi| vi.len() >= 14) {
                    let vlan = get_u32(&vi[4..]).unwrap_or(0);
                    let qos = get_u32(&vi[8..]).unwrap_or(0);
                    let proto = u16::from_be_bytes([vi[12], vi[13]]);
                    info.settings.vlan = Some((vlan as u16, qos as u8, proto));
                }
                // The nest starts with an attribute header, not the VF number.
                continue;
            }
            IFLA_VF_TX_RATE if v.len() >= 8 => {
                legacy_rate = get_u32(&v[4..]).map(|r| (0, r));
            }
            IFLA_VF_RATE if v.len() >= 12 => {
                info.settings.rate =
                    Some((get_u32(&v[4..]).unwrap_or(0), get_u32(&v[8..]).unwrap_or(0)));
            }
            IFLA_VF_SPOOFCHK if v.len() >= 8 => info.settings.spoofchk = setting(&v[4..]),
            IFLA_VF_TRUST if v.len() >= 8 => info.settings.trust = setting(&v[4..]),
            IFLA_VF_LINK_STATE if v.len() >= 8 => info.settings.link_state = get_u32(&v[4..]),
            IFLA_VF_IB_NODE_GUID if v.len() >= IFLA_VF_GUID_LEN => {
                info.node_guid = get_u64(&v[IFLA_VF_GUID_LEN - 8..]).map(Guid);
            }
            IFLA_VF_IB_PORT_GUID if v.len() >= IFLA_VF_GUID_LEN => {
                info.port_guid = get_u64(&v[IFLA_VF_GUID_LEN - 8..]).map(Guid);
            }
            _ => continue,
        }
        vf.get_or_insert(this_vf);
    }
    if info.settings.vlan.is_none() {
        info.settings.vlan = legacy_vlan;
    }
    if info.settings.rate.is_none() {
        info.settings.rate = legacy_rate;
    }
    info.vf = vf?;
    Some(info)
}

/// A `__u32` on/off setting: `(__u32)-1` means "the driver does not say".
fn setting(v: &[u8]) -> Option<bool> {
    match get_u32(v)? {
        u32::MAX => None,
        0 => Some(false),
        _ => Some(true),
    }
}

/// A short human description of the `Some` fields of `s`, for error messages.
pub fn describe_settings(s: &VfSettings) -> String {
    let mut parts = Vec::new();
    if let Some(m) = s.mac {
        parts.push(format!("mac {}", super::format_mac(&m)));
    }
    if let Some((v, q, p)) = s.vlan {
        parts.push(format!("vlan {v} qos {q} proto {p:#06x}"));
    }
    if let Some(on) = s.spoofchk {
        parts.push(format!("spoofchk {}", on_off(on)));
    }
    if let Some(on) = s.trust {
        parts.push(format!("trust {}", on_off(on)));
    }
    if let Some((min, max)) = s.rate {
        parts.push(format!("min_tx_rate {min} max_tx_rate {max} Mbps"));
    }
    if let Some(l) = s.link_state {
        let name = match l {
            IFLA_VF_LINK_STATE_AUTO => "auto",
            IFLA_VF_LINK_STATE_ENABLE => "enable",
            IFLA_VF_LINK_STATE_DISABLE => "disable",
            _ => "unknown",
        };
        parts.push(format!("link_state {name}"));
    }
    parts.join(", ")
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
