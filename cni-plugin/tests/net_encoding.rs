//! Byte-level tests of the netlink encodings, no root needed: VF attributes against the
//! struct layouts of `include/uapi/linux/if_link.h` (and cross-checked with the independent
//! `netlink-packet-route` codec), `NETLINK_RDMA` messages against
//! `include/uapi/rdma/rdma_netlink.h`, rtnetlink family headers, error/extended-ack decoding.

use netlink_packet_core::{Emitable, NlaBuffer, ParseableParametrized};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{
    LinkAttribute, LinkVfInfo, VfInfo as NprVfInfo, VfInfoGuid, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfLinkState, VfVlan, VfVlanInfo, VlanProtocol,
};
use railvf_cni::net::netns::{
    self, Msg, NLA_F_NESTED, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
    NLMSG_ERROR, NlError, Reply, attrs, decode_error, nest_begin, nest_end, put_attr,
};
use railvf_cni::net::rdma::{self, NetnsMode, PortView, RdmaDev};
use railvf_cni::net::rtnl;
use railvf_cni::net::vf::{self, VfInfo};
use railvf_cni::net::{
    ARPHRD_ETHER, ARPHRD_INFINIBAND, ARPHRD_LOOPBACK, IpNet, KernelRoute, VfSettings,
};
use railvf_host::Guid;

fn u32le(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// `struct nlattr` header bytes.
fn nla(len: u16, ty: u16) -> Vec<u8> {
    let mut v = len.to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v
}

fn all_settings() -> VfSettings {
    VfSettings {
        mac: Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
        vlan: Some((100, 5, vf::ETH_P_8021AD)),
        spoofchk: Some(false),
        trust: Some(true),
        rate: Some((10, 25_000)),
        link_state: Some(vf::IFLA_VF_LINK_STATE_DISABLE),
    }
}

// ---------------------------------------------------------------- kernel struct layouts

#[test]
fn ifla_vf_mac_is_u32_vf_then_32_byte_mac() {
    let b = vf::vf_mac(7, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
    assert_eq!(b.len(), 36, "sizeof(struct ifla_vf_mac)");
    assert_eq!(b[0..4], u32le(7));
    assert_eq!(b[4..10], [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
    assert!(b[10..].iter().all(|&x| x == 0));
    // A 20-byte IPoIB address fits too.
    let long: Vec<u8> = (1..=20).collect();
    let b = vf::vf_mac(1, &long);
    assert_eq!(b[4..24], long[..]);
}

#[test]
fn ifla_vf_vlan_info_has_big_endian_proto_and_2_bytes_of_padding() {
    let b = vf::vf_vlan_info(3, 4094, 7, vf::ETH_P_8021AD);
    assert_eq!(
        b.len(),
        16,
        "sizeof(struct ifla_vf_vlan_info) = 14 + 2 padding"
    );
    assert_eq!(b[0..4], u32le(3));
    assert_eq!(b[4..8], u32le(4094));
    assert_eq!(b[8..12], u32le(7));
    assert_eq!(b[12..14], [0x88, 0xa8], "__be16 vlan_proto");
    assert_eq!(b[14..16], [0, 0]);
    assert_eq!(
        vf::vf_vlan_info(0, 1, 0, vf::ETH_P_8021Q)[12..14],
        [0x81, 0x00]
    );
}

#[test]
fn ifla_vf_guid_has_4_bytes_of_padding_before_the_u64() {
    let b = vf::vf_guid(9, 0x1122_3344_5566_7788);
    assert_eq!(b.len(), 16, "sizeof(struct ifla_vf_guid) on 64-bit");
    assert_eq!(b[0..4], u32le(9));
    assert_eq!(b[4..8], [0, 0, 0, 0]);
    assert_eq!(b[8..16], 0x1122_3344_5566_7788u64.to_ne_bytes());
}

#[test]
fn ifla_vf_rate_and_u32_pairs() {
    let r = vf::vf_rate(2, 100, 40_000);
    assert_eq!(r.len(), 12, "sizeof(struct ifla_vf_rate)");
    assert_eq!(r[0..4], u32le(2));
    assert_eq!(r[4..8], u32le(100));
    assert_eq!(r[8..12], u32le(40_000));
    // ifla_vf_spoofchk / ifla_vf_trust / ifla_vf_link_state / ifla_vf_tx_rate
    let p = vf::vf_u32_pair(5, 1);
    assert_eq!(p.len(), 8);
    assert_eq!(p[0..4], u32le(5));
    assert_eq!(p[4..8], u32le(1));
}

#[test]
fn attribute_numbers_match_if_link_h() {
    assert_eq!(vf::IFLA_NUM_VF, libc::IFLA_NUM_VF);
    assert_eq!(vf::IFLA_VFINFO_LIST, libc::IFLA_VFINFO_LIST);
    assert_eq!(vf::IFLA_EXT_MASK, libc::IFLA_EXT_MASK);
    assert_eq!(rtnl::IFLA_NET_NS_FD, libc::IFLA_NET_NS_FD);
    assert_eq!(rtnl::IFLA_IFNAME, libc::IFLA_IFNAME);
    assert_eq!(rtnl::IFLA_MTU, libc::IFLA_MTU);
    assert_eq!(rtnl::IFLA_ADDRESS, libc::IFLA_ADDRESS);
    // The IFLA_VF_* numbers (if_link.h enum, IFLA_VF_UNSPEC = 0).
    let vfs = [
        (vf::IFLA_VF_MAC, 1),
        (vf::IFLA_VF_VLAN, 2),
        (vf::IFLA_VF_TX_RATE, 3),
        (vf::IFLA_VF_SPOOFCHK, 4),
        (vf::IFLA_VF_LINK_STATE, 5),
        (vf::IFLA_VF_RATE, 6),
        (vf::IFLA_VF_RSS_QUERY_EN, 7),
        (vf::IFLA_VF_STATS, 8),
        (vf::IFLA_VF_TRUST, 9),
        (vf::IFLA_VF_IB_NODE_GUID, 10),
        (vf::IFLA_VF_IB_PORT_GUID, 11),
        (vf::IFLA_VF_VLAN_LIST, 12),
        (vf::IFLA_VF_BROADCAST, 13),
    ];
    for (ours, header) in vfs {
        assert_eq!(ours, header);
    }
    assert_eq!(u32::from(rtnl::RTM_NEWLINK), u32::from(libc::RTM_NEWLINK));
    assert_eq!(u32::from(rtnl::RTM_GETLINK), u32::from(libc::RTM_GETLINK));
    assert_eq!(u32::from(rtnl::RTM_SETLINK), u32::from(libc::RTM_SETLINK));
    assert_eq!(u32::from(rtnl::RTM_NEWADDR), u32::from(libc::RTM_NEWADDR));
    assert_eq!(u32::from(rtnl::RTM_GETADDR), u32::from(libc::RTM_GETADDR));
    assert_eq!(u32::from(rtnl::RTM_NEWROUTE), u32::from(libc::RTM_NEWROUTE));
    assert_eq!(rtnl::IFA_ADDRESS, libc::IFA_ADDRESS);
    assert_eq!(rtnl::IFA_LOCAL, libc::IFA_LOCAL);
    assert_eq!(rtnl::IFA_BROADCAST, libc::IFA_BROADCAST);
    assert_eq!(rtnl::RTA_DST, libc::RTA_DST);
    assert_eq!(rtnl::RTA_OIF, libc::RTA_OIF);
    assert_eq!(rtnl::RTA_GATEWAY, libc::RTA_GATEWAY);
    assert_eq!(rtnl::RT_TABLE_MAIN, libc::RT_TABLE_MAIN);
    assert_eq!(rtnl::RTPROT_BOOT, libc::RTPROT_BOOT);
    assert_eq!(rtnl::RT_SCOPE_LINK, libc::RT_SCOPE_LINK);
    assert_eq!(rtnl::RTN_UNICAST, libc::RTN_UNICAST);
    assert_eq!(i32::from(rtnl::AF_INET), libc::AF_INET);
    assert_eq!(i32::from(rtnl::AF_INET6), libc::AF_INET6);
    assert_eq!(netns::NETLINK_RDMA, libc::NETLINK_RDMA as isize);
    assert_eq!(netns::NLM_F_DUMP, libc::NLM_F_DUMP as u16);
    assert_eq!(netns::NLM_F_CREATE, libc::NLM_F_CREATE as u16);
    assert_eq!(netns::NLM_F_EXCL, libc::NLM_F_EXCL as u16);
    assert_eq!(netns::NLMSG_ERROR, libc::NLMSG_ERROR as u16);
    assert_eq!(netns::NLMSG_DONE, libc::NLMSG_DONE as u16);
}

// ---------------------------------------------------------------- IFLA_VFINFO_LIST

#[test]
fn vf_settings_encode_to_the_exact_nest() {
    let list = vf::encode_vf_settings(4, &all_settings()).expect("something to set");
    let mut want = Vec::new();
    // IFLA_VFINFO_LIST { IFLA_VF_INFO { MAC, VLAN_LIST { VLAN_INFO }, RATE, SPOOFCHK,
    //                                   LINK_STATE, TRUST } }
    let inner_len = (4 + 36) + (4 + 4 + 16) + (4 + 12) + 3 * (4 + 8);
    want.extend(nla(4 + 4 + inner_len as u16, 22 | NLA_F_NESTED));
    want.extend(nla(4 + inner_len as u16, 1 | NLA_F_NESTED));
    want.extend(nla(40, 1));
    want.extend(u32le(4));
    want.extend([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    want.extend([0u8; 26]);
    want.extend(nla(24, 12 | NLA_F_NESTED));
    want.extend(nla(20, 1));
    want.extend(u32le(4));
    want.extend(u32le(100));
    want.extend(u32le(5));
    want.extend([0x88, 0xa8, 0, 0]);
    want.extend(nla(16, 6));
    want.extend(u32le(4));
    want.extend(u32le(10));
    want.extend(u32le(25_000));
    want.extend(nla(12, 4));
    want.extend(u32le(4));
    want.extend(u32le(0)); // spoofchk off
    want.extend(nla(12, 5));
    want.extend(u32le(4));
    want.extend(u32le(2)); // IFLA_VF_LINK_STATE_DISABLE
    want.extend(nla(12, 9));
    want.extend(u32le(4));
    want.extend(u32le(1)); // trust on
    assert_eq!(list, want);
    assert_eq!(list.len() % 4, 0);
}

#[test]
fn only_the_given_settings_are_sent() {
    assert_eq!(vf::encode_vf_settings(0, &VfSettings::default()), None);
    let list = vf::encode_vf_settings(
        1,
        &VfSettings {
            trust: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = nla(4 + 4 + 12, 22 | NLA_F_NESTED);
    want.extend(nla(4 + 12, 1 | NLA_F_NESTED));
    want.extend(nla(12, 9));
    want.extend(u32le(1));
    want.extend(u32le(0));
    assert_eq!(list, want);
}

#[test]
fn guids_go_in_two_vf_info_entries_because_the_kernel_returns_after_the_node_guid() {
    let list = vf::encode_vf_guids(2, Guid(0x1122_3344_5566_7788), Guid(0x99aa_bbcc_ddee_ff00));
    let mut want = nla(4 + 2 * (4 + 20), 22 | NLA_F_NESTED);
    want.extend(nla(4 + 20, 1 | NLA_F_NESTED));
    want.extend(nla(20, 10)); // IFLA_VF_IB_NODE_GUID
    want.extend(u32le(2));
    want.extend([0; 4]);
    want.extend(0x1122_3344_5566_7788u64.to_ne_bytes());
    want.extend(nla(4 + 20, 1 | NLA_F_NESTED));
    want.extend(nla(20, 11)); // IFLA_VF_IB_PORT_GUID
    want.extend(u32le(2));
    want.extend([0; 4]);
    want.extend(0x99aa_bbcc_ddee_ff00u64.to_ne_bytes());
    assert_eq!(list, want);
}

/// Parses one top-level link attribute with the independent codec.
fn npr_parse(bytes: &[u8]) -> LinkAttribute {
    let buf = NlaBuffer::new_checked(bytes).expect("well-formed nla");
    LinkAttribute::parse_with_param(&buf, AddressFamily::Unspec).expect("parse")
}

#[test]
fn netlink_packet_route_reads_our_vf_settings_as_we_meant_them() {
    let list = vf::encode_vf_settings(4, &all_settings()).unwrap();
    let LinkAttribute::VfInfoList(infos) = npr_parse(&list) else {
        panic!("not a VF info list");
    };
    assert_eq!(infos.len(), 1);
    let mut seen = 0;
    for a in &infos[0].0 {
        match a {
            NprVfInfo::Mac(m) => {
                assert_eq!(m.vf_id, 4);
                assert_eq!(m.mac[..6], [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
            }
            NprVfInfo::VlanList(v) => {
                let VfVlan::Info(i) = &v[0] else {
                    panic!("{v:?}")
                };
                assert_eq!((i.vf_id, i.vlan_id, i.qos), (4, 100, 5));
                assert_eq!(i.protocol, VlanProtocol::Ieee8021Ad);
            }
            NprVfInfo::Rate(r) => {
                assert_eq!((r.vf_id, r.min_tx_rate, r.max_tx_rate), (4, 10, 25_000))
            }
            NprVfInfo::SpoofCheck(s) => assert_eq!((s.vf_id, s.enabled), (4, false)),
            NprVfInfo::LinkState(l) => {
                assert_eq!((l.vf_id, l.state), (4, VfLinkState::Disable))
            }
            NprVfInfo::Trust(t) => assert_eq!((t.vf_id, t.enabled), (4, true)),
            other => panic!("unexpected {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 6);

    let guids = vf::encode_vf_guids(2, Guid(0x1122_3344_5566_7788), Guid(0xabcd));
    let LinkAttribute::VfInfoList(infos) = npr_parse(&guids) else {
        panic!("not a VF info list");
    };
    assert_eq!(
        infos,
        vec![
            LinkVfInfo(vec![NprVfInfo::IbNodeGuid(VfInfoGuid::new(
                2,
                0x1122_3344_5566_7788
            ))]),
            LinkVfInfo(vec![NprVfInfo::IbPortGuid(VfInfoGuid::new(2, 0xabcd))]),
        ]
    );
}

/// A PF's `IFLA_VFINFO_LIST` as the kernel's `rtnl_fill_vfinfo` lays it out, built by the
/// independent codec, for two VFs.
fn kernel_like_vfinfo_list() -> Vec<u8> {
    let vf3 = LinkVfInfo(vec![
        NprVfInfo::Mac(VfInfoMac::new(3, &[0x02, 0, 0, 0, 0, 3])),
        NprVfInfo::Rate(VfInfoRate::new(3, 0, 0)),
        NprVfInfo::SpoofCheck(VfInfoSpoofCheck::new(3, true)),
        NprVfInfo::LinkState(VfInfoLinkState::new(3, VfLinkState::Auto)),
        NprVfInfo::Trust(VfInfoTrust::new(3, false)),
        NprVfInfo::IbNodeGuid(VfInfoGuid::new(3, 0x0002_c903_00aa_bb03)),
        NprVfInfo::IbPortGuid(VfInfoGuid::new(3, 0x0002_c903_00aa_cc03)),
        NprVfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
            3,
            42,
            1,
            VlanProtocol::Ieee8021Q,
        ))]),
    ]);
    let vf5 = LinkVfInfo(vec![
        NprVfInfo::Mac(VfInfoMac::new(5, &[0x02, 0, 0, 0, 0, 5])),
        NprVfInfo::Trust(VfInfoTrust::new(5, true)),
    ]);
    let attr = LinkAttribute::VfInfoList(vec![vf3, vf5]);
    let mut out = vec![0u8; attr.buffer_len()];
    attr.emit(&mut out);
    out
}

#[test]
fn decodes_vf_info_from_a_pf_dump() {
    // RTM_NEWLINK attributes of a PF: name, IFLA_NUM_VF, IFLA_VFINFO_LIST.
    let mut link_attrs = Vec::new();
    put_attr(&mut link_attrs, rtnl::IFLA_IFNAME, b"ibp24s0\0");
    put_attr(&mut link_attrs, vf::IFLA_NUM_VF, &8u32.to_ne_bytes());
    link_attrs.extend(kernel_like_vfinfo_list());
    let pf = vf::decode_pf_vfs(&link_attrs);
    assert_eq!(pf.num_vf, Some(8));
    assert_eq!(pf.vfs.len(), 2);
    let v3 = &pf.vfs[0];
    assert_eq!(v3.vf, 3);
    assert_eq!(
        v3.settings,
        VfSettings {
            mac: Some([0x02, 0, 0, 0, 0, 3]),
            vlan: Some((42, 1, vf::ETH_P_8021Q)),
            spoofchk: Some(true),
            trust: Some(false),
            rate: Some((0, 0)),
            link_state: Some(vf::IFLA_VF_LINK_STATE_AUTO),
        }
    );
    assert_eq!(v3.node_guid, Some(Guid(0x0002_c903_00aa_bb03)));
    assert_eq!(v3.port_guid, Some(Guid(0x0002_c903_00aa_cc03)));
    assert_eq!(pf.vfs[1].vf, 5);
    assert_eq!(pf.vfs[1].settings.trust, Some(true));
    assert_eq!(pf.vfs[1].settings.vlan, None);
    // A veth: no IFLA_NUM_VF, no list.
    let mut veth = Vec::new();
    put_attr(&mut veth, rtnl::IFLA_IFNAME, b"veth0\0");
    assert_eq!(vf::decode_pf_vfs(&veth), vf::PfVfs::default());
}

#[test]
fn undisclosed_settings_and_legacy_attributes_decode_sensibly() {
    // Hand-built like the kernel does for a driver that fills neither spoofchk nor trust
    // ((__u32)-1), and with only the legacy IFLA_VF_VLAN / IFLA_VF_TX_RATE.
    let mut info = Vec::new();
    put_attr(
        &mut info,
        vf::IFLA_VF_MAC,
        &vf::vf_mac(1, &[2, 0, 0, 0, 0, 1]),
    );
    put_attr(
        &mut info,
        vf::IFLA_VF_VLAN,
        &[u32le(1), u32le(7), u32le(2)].concat(),
    );
    put_attr(&mut info, vf::IFLA_VF_TX_RATE, &vf::vf_u32_pair(1, 500));
    put_attr(
        &mut info,
        vf::IFLA_VF_SPOOFCHK,
        &vf::vf_u32_pair(1, u32::MAX),
    );
    put_attr(&mut info, vf::IFLA_VF_TRUST, &vf::vf_u32_pair(1, u32::MAX));
    let mut stats = Vec::new();
    let at = nest_begin(&mut stats, vf::IFLA_VF_STATS);
    put_attr(&mut stats, 0, &0u64.to_ne_bytes());
    nest_end(&mut stats, at);
    info.extend(stats);
    let got: VfInfo = vf::decode_vf_info(&info).unwrap();
    assert_eq!(got.vf, 1);
    assert_eq!(got.settings.spoofchk, None);
    assert_eq!(got.settings.trust, None);
    assert_eq!(got.settings.vlan, Some((7, 2, vf::ETH_P_8021Q)));
    assert_eq!(got.settings.rate, Some((0, 500)));
    assert_eq!(got.mac32.len(), 32);
}

#[test]
fn settings_round_trip_through_our_encoder_and_decoder() {
    let s = all_settings();
    let list = vf::encode_vf_settings(6, &s).unwrap();
    let (_, value) = attrs(&list).next().unwrap();
    let decoded = vf::decode_vfinfo_list(value);
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].vf, 6);
    assert_eq!(decoded[0].settings, s);
}

// ---------------------------------------------------------------- NETLINK_RDMA

#[test]
fn rdma_message_types_follow_rdma_nl_get_type() {
    assert_eq!(rdma::RDMA_NL_NLDEV, 5);
    assert_eq!(rdma::rdma_nl_get_type(5, 1), (5 << 10) + 1);
    assert_eq!(rdma::rdma_nl_get_type(5, 1), 0x1401);
    assert_eq!(rdma::rdma_nl_get_type(5, 2), 0x1402);
    assert_eq!(rdma::rdma_nl_get_type(5, 6), 0x1406);
    assert_eq!(rdma::rdma_nl_get_client(0x1402), 5);
    assert_eq!(rdma::rdma_nl_get_op(0x1402), 2);
    assert_eq!(rdma::RDMA_NLDEV_ATTR_DEV_INDEX, 1);
    assert_eq!(rdma::RDMA_NLDEV_ATTR_DEV_NAME, 2);
    assert_eq!(rdma::RDMA_NLDEV_SYS_ATTR_NETNS_MODE, 66);
    assert_eq!(rdma::RDMA_NLDEV_NET_NS_FD, 68);
}

#[test]
fn rdma_set_netns_message_bytes() {
    let bytes = rdma::set_netns_msg(3, 7).finish(42);
    let want: Vec<u8> = [
        &32u32.to_ne_bytes()[..],     // nlmsg_len
        &0x1402u16.to_ne_bytes()[..], // RDMA_NL_GET_TYPE(NLDEV, CMD_SET)
        &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes()[..],
        &42u32.to_ne_bytes()[..], // seq
        &0u32.to_ne_bytes()[..],  // pid
        &nla(8, 1)[..],           // RDMA_NLDEV_ATTR_DEV_INDEX
        &3u32.to_ne_bytes()[..],
        &nla(8, 68)[..], // RDMA_NLDEV_NET_NS_FD
        &7u32.to_ne_bytes()[..],
    ]
    .concat();
    assert_eq!(bytes, want);

    let dump = rdma::get_devices_msg().finish(1);
    assert_eq!(dump.len(), 16, "no family header, no attributes");
    assert_eq!(dump[4..6], 0x1401u16.to_ne_bytes());
    assert_eq!(dump[6..8], (NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    let sys = rdma::sys_get_msg().finish(1);
    assert_eq!(sys[4..6], 0x1406u16.to_ne_bytes());
}

/// One `RDMA_NLDEV_CMD_GET` dump answer, as the kernel's `fill_dev_info` starts it.
fn rdma_dev_reply(index: u32, name: &str) -> Reply {
    let mut p = Vec::new();
    put_attr(
        &mut p,
        rdma::RDMA_NLDEV_ATTR_DEV_INDEX,
        &index.to_ne_bytes(),
    );
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_DEV_NAME, &n);
    put_attr(&mut p, 3, &1u32.to_ne_bytes()); // PORT_INDEX
    put_attr(&mut p, 5, b"28.39.1002\0"); // FW_VERSION
    put_attr(&mut p, 6, &0x0002_c903_00aa_bb03u64.to_ne_bytes()); // NODE_GUID
    put_attr(&mut p, 14, &[1]); // DEV_NODE_TYPE (u8)
    put_attr(&mut p, 67, b"ib\0"); // DEV_PROTOCOL
    Reply {
        ty: rdma::rdma_nl_get_type(5, 1),
        flags: netns::NLM_F_MULTI,
        payload: p,
    }
}

#[test]
fn rdma_device_index_is_found_by_name_in_a_get_dump() {
    let replies = vec![
        rdma_dev_reply(1, "mlx5_0"),
        rdma_dev_reply(5, "mlx5_4"),
        rdma_dev_reply(12, "mlx5_11"),
    ];
    assert_eq!(rdma::find_device(&replies, "mlx5_4"), Some(5));
    assert_eq!(rdma::find_device(&replies, "mlx5_11"), Some(12));
    assert_eq!(rdma::find_device(&replies, "mlx5_1"), None);
    assert_eq!(
        rdma::decode_devices(&replies)[0],
        RdmaDev {
            index: 1,
            name: "mlx5_0".into(),
            node_guid: Some(0x0002_c903_00aa_bb03),
            protocol: Some("ib".into()),
        }
    );
    // Messages of another type are ignored.
    let mut other = rdma_dev_reply(9, "mlx5_9");
    other.ty = rdma::rdma_nl_get_type(5, 5);
    assert_eq!(rdma::find_device(&[other], "mlx5_9"), None);
}

/// One `RDMA_NLDEV_CMD_PORT_GET` answer as the kernel's `fill_port_info` builds it: the
/// device handle, the port index, then (InfiniBand only) the 64-bit capability flags and
/// subnet prefix, padded with `RDMA_NLDEV_ATTR_PAD`, LID, SM LID and LMC; then the states.
fn rdma_port_reply(index: u32, port: u32, ib: Option<(u32, u32)>, state: u8, phys: u8) -> Reply {
    let mut p = Vec::new();
    put_attr(
        &mut p,
        rdma::RDMA_NLDEV_ATTR_DEV_INDEX,
        &index.to_ne_bytes(),
    );
    put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_DEV_NAME, b"mlx5_12\0");
    put_attr(
        &mut p,
        rdma::RDMA_NLDEV_ATTR_PORT_INDEX,
        &port.to_ne_bytes(),
    );
    if let Some((lid, sm_lid)) = ib {
        put_attr(&mut p, 0, &[]); // PAD before a u64
        put_attr(&mut p, 4, &0x2651_e84au64.to_ne_bytes()); // CAP_FLAGS
        put_attr(&mut p, 0, &[]);
        put_attr(&mut p, 8, &0xfe80_0000_0000_0000u64.to_ne_bytes()); // SUBNET_PREFIX
        put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_LID, &lid.to_ne_bytes());
        put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_SM_LID, &sm_lid.to_ne_bytes());
        put_attr(&mut p, 11, &[0]); // LMC
    }
    put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_PORT_STATE, &[state]);
    put_attr(&mut p, rdma::RDMA_NLDEV_ATTR_PORT_PHYS_STATE, &[phys]);
    put_attr(&mut p, 50, &7u32.to_ne_bytes()); // NDEV_INDEX
    put_attr(&mut p, 51, b"net1\0"); // NDEV_NAME
    Reply {
        ty: rdma::rdma_nl_get_type(5, 5),
        flags: 0,
        payload: p,
    }
}

#[test]
fn rdma_port_get_asks_for_one_port_of_one_device() {
    let m = rdma::port_get_msg(12, 1).finish(3);
    assert_eq!(m[4..6], 0x1405u16.to_ne_bytes(), "RDMA_NL_GET_TYPE(5, 5)");
    assert_eq!(
        m[6..8],
        (NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes(),
        "not a dump"
    );
    let a: Vec<(u16, Vec<u8>)> = attrs(&m[16..]).map(|(t, v)| (t, v.to_vec())).collect();
    assert_eq!(
        a,
        vec![
            (1, 12u32.to_ne_bytes().to_vec()),
            (3, 1u32.to_ne_bytes().to_vec())
        ]
    );
}

#[test]
fn rdma_port_get_answers_decode_for_infiniband_and_roce() {
    let replies = [rdma_dev_reply(12, "mlx5_12")];
    let dev = rdma::decode_devices(&replies).remove(0);
    let ib =
        rdma::decode_port(&[rdma_port_reply(12, 1, Some((0x1a2, 0x1)), 4, 5)], &dev, 1).unwrap();
    assert_eq!(
        ib,
        PortView {
            node_guid: Some(0x0002_c903_00aa_bb03),
            protocol: Some("ib".into()),
            state: Some(4),
            phys_state: Some(5),
            lid: Some(0x1a2),
            sm_lid: Some(0x1),
        }
    );
    // RoCE: no LID attributes at all.
    let roce = rdma::decode_port(&[rdma_port_reply(12, 1, None, 1, 3)], &dev, 1).unwrap();
    assert_eq!((roce.lid, roce.sm_lid), (None, None));
    assert_eq!((roce.state, roce.phys_state), (Some(1), Some(3)));
    // An answer about another device or port is not this port.
    assert_eq!(
        rdma::decode_port(&[rdma_port_reply(13, 1, None, 4, 5)], &dev, 1),
        None
    );
    assert_eq!(
        rdma::decode_port(&[rdma_port_reply(12, 2, None, 4, 5)], &dev, 1),
        None
    );
}

#[test]
fn rdma_netns_mode_decodes_shared_and_exclusive() {
    let reply = |mode: u8| {
        let mut p = Vec::new();
        put_attr(&mut p, rdma::RDMA_NLDEV_SYS_ATTR_NETNS_MODE, &[mode]);
        put_attr(&mut p, 101, &[1]); // RDMA_NLDEV_SYS_ATTR_COPY_ON_FORK
        assert_eq!(p[..8], [5, 0, 66, 0, mode, 0, 0, 0], "u8 attribute, padded");
        Reply {
            ty: rdma::rdma_nl_get_type(5, 6),
            flags: 0,
            payload: p,
        }
    };
    assert_eq!(
        rdma::decode_netns_mode(&[reply(1)]),
        Some(NetnsMode::Shared)
    );
    assert_eq!(
        rdma::decode_netns_mode(&[reply(0)]),
        Some(NetnsMode::Exclusive)
    );
    assert_eq!(rdma::decode_netns_mode(&[]), None);
}

// ---------------------------------------------------------------- rtnetlink and transport

#[test]
fn family_headers_have_the_kernel_layouts() {
    let i = rtnl::ifinfomsg(0, 7, 1, 1);
    assert_eq!(i.len(), 16, "sizeof(struct ifinfomsg)");
    assert_eq!(i[4..8], 7u32.to_ne_bytes());
    assert_eq!(i[8..12], 1u32.to_ne_bytes());
    assert_eq!(i[12..16], 1u32.to_ne_bytes());
    let a = rtnl::ifaddrmsg(10, 64, 0, 0, 9);
    assert_eq!(a.len(), 8, "sizeof(struct ifaddrmsg)");
    assert_eq!(a[..4], [10, 64, 0, 0]);
    assert_eq!(a[4..8], 9u32.to_ne_bytes());
    let r = rtnl::rtmsg(2, 24, 0, 0, 254, 3, 253, 1, 0);
    assert_eq!(r.len(), 12, "sizeof(struct rtmsg)");
    assert_eq!(r[..8], [2, 24, 0, 0, 254, 3, 253, 1]);
}

#[test]
fn move_request_carries_netns_fd_and_name_in_one_setlink() {
    let mut m = Msg::new(rtnl::RTM_SETLINK, 0);
    m.header(&rtnl::ifinfomsg(0, 7, 0, 0))
        .attr_u32(rtnl::IFLA_NET_NS_FD, 5)
        .attr_str(rtnl::IFLA_IFNAME, "net1");
    let b = m.finish(1);
    assert_eq!(b.len(), 16 + 16 + 8 + 12);
    assert_eq!(b[0..4], (b.len() as u32).to_ne_bytes());
    assert_eq!(b[4..6], 19u16.to_ne_bytes());
    let found: Vec<(u16, Vec<u8>)> = attrs(&b[32..]).map(|(t, v)| (t, v.to_vec())).collect();
    assert_eq!(
        found,
        vec![(28, 5u32.to_ne_bytes().to_vec()), (3, b"net1\0".to_vec())]
    );
}

#[test]
fn parses_links_and_addresses() {
    let mut p = rtnl::ifinfomsg(0, 12, 1 | 0x40, 0).to_vec();
    put_attr(&mut p, rtnl::IFLA_IFNAME, b"net1\0");
    put_attr(&mut p, rtnl::IFLA_MTU, &4092u32.to_ne_bytes());
    let ipoib: Vec<u8> = (0..20).collect();
    put_attr(&mut p, rtnl::IFLA_ADDRESS, &ipoib);
    let l = rtnl::parse_link(&p).unwrap();
    assert_eq!(rtnl::parse_parent_device(&p), None);
    let mut with_parent = p.clone();
    put_attr(
        &mut with_parent,
        rtnl::IFLA_PARENT_DEV_NAME,
        b"0000:18:00.1\0",
    );
    put_attr(&mut with_parent, 57, b"pci\0"); // IFLA_PARENT_DEV_BUS_NAME
    assert_eq!(
        rtnl::parse_parent_device(&with_parent).as_deref(),
        Some("0000:18:00.1")
    );
    assert_eq!(rtnl::parse_link(&with_parent), Some(l.clone()));
    assert_eq!(rtnl::parse_parent_device(&p[..10]), None);
    assert_eq!(l.ifindex, 12);
    assert_eq!(l.name, "net1");
    assert_eq!(l.mtu, 4092);
    assert!(l.up);
    assert_eq!(l.mac.split(':').count(), 20);
    assert!(l.mac.starts_with("00:01:02"));

    let mut a = rtnl::ifaddrmsg(2, 24, 0, 0, 12).to_vec();
    put_attr(&mut a, rtnl::IFA_ADDRESS, &[10, 0, 0, 9]); // peer on a p2p link
    put_attr(&mut a, rtnl::IFA_LOCAL, &[10, 0, 0, 5]);
    assert_eq!(
        rtnl::parse_addr(&a),
        Some((
            12,
            IpNet {
                addr: "10.0.0.5".parse().unwrap(),
                prefix: 24
            }
        ))
    );
    let mut a6 = rtnl::ifaddrmsg(10, 64, 0, 0, 3).to_vec();
    put_attr(
        &mut a6,
        rtnl::IFA_ADDRESS,
        &"fd00::5".parse::<std::net::Ipv6Addr>().unwrap().octets(),
    );
    assert_eq!(
        rtnl::parse_addr(&a6).unwrap().1.addr,
        "fd00::5".parse::<std::net::IpAddr>().unwrap()
    );
}

/// The hardware type CHECK tells an IPoIB netdev by (`ifi_type`), from a header encoded by
/// `netlink-packet-route`.
#[test]
fn the_link_header_says_whether_a_netdev_is_ipoib() {
    use netlink_packet_route::link::{LinkLayerType, LinkMessage};
    assert_eq!(
        (
            u16::from(LinkLayerType::Infiniband),
            u16::from(LinkLayerType::Ether),
            u16::from(LinkLayerType::Loopback)
        ),
        (ARPHRD_INFINIBAND, ARPHRD_ETHER, ARPHRD_LOOPBACK)
    );
    for (ty, ipoib) in [
        (LinkLayerType::Infiniband, true),
        (LinkLayerType::Ether, false),
    ] {
        let mut m = LinkMessage::default();
        m.header.index = 12;
        m.header.link_layer_type = ty;
        m.attributes = vec![
            LinkAttribute::IfName("net1".into()),
            LinkAttribute::Mtu(2044),
        ];
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        let l = rtnl::parse_link(&b).unwrap();
        assert_eq!((l.ifindex, l.name.as_str(), l.mtu), (12, "net1", 2044));
        assert_eq!((l.hw_type, l.is_ipoib()), (u16::from(ty), ipoib));
    }
}

/// Route dump answers as `netlink-packet-route` encodes them: an IPv6 route with two
/// gateways (one message, `RTA_MULTIPATH`) is two routes; a table above 255 is read from
/// `RTA_TABLE`; a default route has no `RTA_DST`; a local route is no unicast route.
#[test]
fn route_dump_answers_decode_to_one_route_per_nexthop() {
    use netlink_packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteType,
    };
    let emit = |m: &RouteMessage| {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    };
    let addr = |s: &str| RouteAddress::from(s.parse::<std::net::IpAddr>().unwrap());
    let hop = |ifindex: u32, gw: &str| {
        let mut h = RouteNextHop::default();
        h.interface_index = ifindex;
        h.attributes = vec![RouteAttribute::Gateway(addr(gw))];
        h
    };
    let route = |dst: &str, gw: &str, oif: u32, table: u32| KernelRoute {
        dst: net(dst),
        gw: Some(gw.parse().unwrap()),
        oif: Some(oif),
        table,
    };

    let mut m6 = RouteMessage::default();
    m6.header.address_family = AddressFamily::Inet6;
    m6.header.destination_prefix_length = 64;
    m6.header.table = 254;
    m6.header.kind = RouteType::Unicast;
    m6.attributes = vec![
        RouteAttribute::Table(254),
        RouteAttribute::Destination(addr("fd00:90::")),
        RouteAttribute::MultiPath(vec![hop(7, "fd00:79::1"), hop(8, "fd00:79::2")]),
    ];
    assert_eq!(
        rtnl::parse_routes(&emit(&m6)),
        vec![
            route("fd00:90::/64", "fd00:79::1", 7, 254),
            route("fd00:90::/64", "fd00:79::2", 8, 254),
        ]
    );

    let mut m4 = RouteMessage::default();
    m4.header.address_family = AddressFamily::Inet;
    m4.header.table = 252; // RT_TABLE_COMPAT: the real table is in RTA_TABLE
    m4.header.kind = RouteType::Unicast;
    m4.attributes = vec![
        RouteAttribute::Table(1000),
        RouteAttribute::Gateway(addr("10.79.0.1")),
        RouteAttribute::Oif(7),
    ];
    assert_eq!(
        rtnl::parse_routes(&emit(&m4)),
        vec![route("0.0.0.0/0", "10.79.0.1", 7, 1000)]
    );
    let mut local = m4.clone();
    local.header.kind = RouteType::Local;
    assert_eq!(rtnl::parse_routes(&emit(&local)), vec![]);
    // Cut short: nothing, no panic.
    assert_eq!(rtnl::parse_routes(&emit(&m6)[..6]), vec![]);
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').unwrap();
    IpNet {
        addr: a.parse().unwrap(),
        prefix: p.parse().unwrap(),
    }
}

#[test]
fn prefixes_and_broadcasts() {
    let n = |s: &str, p| rtnl::network(s.parse().unwrap(), p).to_string();
    assert_eq!(n("10.1.2.3", 24), "10.1.2.0");
    assert_eq!(n("10.1.2.3", 0), "0.0.0.0");
    assert_eq!(n("10.1.2.3", 32), "10.1.2.3");
    assert_eq!(n("fd00:1:2:3::9", 48), "fd00:1:2::");
    assert_eq!(n("fd00::9", 0), "::");
    let b = |s: &str, p| rtnl::broadcast_v4(s.parse().unwrap(), p).map(|a| a.to_string());
    assert_eq!(b("10.1.2.3", 24).as_deref(), Some("10.1.2.255"));
    assert_eq!(b("10.1.2.3", 31), None);
    assert_eq!(b("10.1.2.3", 0).as_deref(), Some("255.255.255.255"));
}

#[test]
fn nlmsg_error_with_extended_ack_decodes_to_errno_and_text() {
    // struct nlmsgerr { int error; struct nlmsghdr msg; } + TLVs, capped echo.
    let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
    p.extend([0u8; 16]); // the echoed request header
    put_attr(&mut p, netns::NLMSGERR_ATTR_MSG, b"Unable to use 'net1'\0");
    put_attr(&mut p, 2, &20u32.to_ne_bytes()); // NLMSGERR_ATTR_OFFS
    match decode_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p) {
        Err(NlError::Kernel { errno, msg }) => {
            assert_eq!(errno, libc::EEXIST);
            assert_eq!(msg.as_deref(), Some("Unable to use 'net1'"));
        }
        other => panic!("{other:?}"),
    }
    // Uncapped: the whole request is echoed before the TLVs.
    let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
    let req = Msg::new(rtnl::RTM_SETLINK, 0)
        .attr_u32(rtnl::IFLA_MTU, 1)
        .finish(3);
    p.extend(&req);
    put_attr(
        &mut p,
        netns::NLMSGERR_ATTR_MSG,
        b"mtu less than device minimum\0",
    );
    let e = decode_error(NLM_F_ACK_TLVS, &p).unwrap_err();
    assert_eq!(e.ext_ack(), Some("mtu less than device minimum"));
    assert_eq!(
        e.to_string(),
        "Invalid argument (os error 22) (kernel: mtu less than device minimum)"
    );
    // An ACK.
    assert!(decode_error(0, &[0, 0, 0, 0]).is_ok());
    assert_eq!(NLMSG_ERROR, 2);
}

#[test]
fn a_dump_can_end_with_an_error_in_nlmsg_done() {
    assert!(netns::decode_done(0, &0i32.to_ne_bytes()).is_ok());
    assert!(netns::decode_done(0, &[]).is_ok());
    let mut p = (-libc::ENODEV).to_ne_bytes().to_vec();
    put_attr(&mut p, netns::NLMSGERR_ATTR_MSG, b"Device not found\0");
    let e = netns::decode_done(netns::NLM_F_MULTI | NLM_F_ACK_TLVS, &p).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODEV));
    assert_eq!(e.ext_ack(), Some("Device not found"));
}

#[test]
fn datagrams_split_into_messages() {
    let a = Msg::new(16, 2).attr_u32(4, 1500).finish(9);
    let b = Msg::new(3, 2).finish(9);
    let dgram = [a.clone(), b].concat();
    let msgs = netns::split_messages(&dgram).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[0].ty, msgs[0].seq), (16, 9));
    assert_eq!(msgs[0].payload.len(), a.len() - 16);
    assert_eq!(msgs[1].ty, 3);
    // A length that overruns the datagram is an error, not a panic.
    let mut bad = a.clone();
    bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(netns::split_messages(&bad).is_err());
    // Malformed attributes stop the iteration instead of panicking.
    assert_eq!(attrs(&[200, 0, 1, 0, 9]).count(), 0);
    assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
}

#[test]
fn the_neighbour_header_matches_netlink_packet_route() {
    use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourHeader, NeighbourState};
    use netlink_packet_route::route::RouteType;
    use railvf_cni::net::announce::{self, NTF_USE, NUD_NONE};
    let theirs = NeighbourHeader {
        family: AddressFamily::Inet,
        ifindex: 0x0102_0304,
        state: NeighbourState::None,
        flags: NeighbourFlags::Use,
        kind: RouteType::Unspec,
    };
    let mut buf = vec![0u8; theirs.buffer_len()];
    theirs.emit(&mut buf);
    assert_eq!(
        buf,
        announce::ndmsg(rtnl::AF_INET, 0x0102_0304, NUD_NONE, NTF_USE)
    );
    assert_eq!(
        (
            announce::RTM_NEWNEIGH,
            announce::RTM_DELNEIGH,
            announce::NDA_DST
        ),
        (28, 29, 1)
    );
}
