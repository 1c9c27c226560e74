//! `FakeLinks` behaves like the kernel where the CNI verbs can tell (no root needed).

use std::net::IpAddr;

use railvf_cni::net::fake::{
    FakeLinkSpec, FakeLinks, FakeOp, Inject, IpoibNetns, KILLED, RdmaMode,
};
use railvf_cni::net::rtnl::moved_under_old_name;
use railvf_cni::net::vf::{ETH_P_8021AD, ETH_P_8021Q};
use railvf_cni::net::{IpNet, KernelRoute, LinkOps, NetError, Netns, VfSettings};
use railvf_host::Guid;

fn pod() -> Netns {
    Netns::path("/var/run/netns/pod-a")
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').unwrap();
    IpNet {
        addr: a.parse().unwrap(),
        prefix: p.parse().unwrap(),
    }
}

fn errno(e: &NetError) -> Option<i32> {
    match e {
        NetError::Kernel { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn setup() -> (FakeLinks, u32) {
    let f = FakeLinks::new();
    f.add_netns(&pod());
    let vf = f.add_link(&Netns::Host, "enp24s0v3");
    (f, vf)
}

#[test]
fn namespaces_start_with_lo_and_names_are_unique_per_namespace() {
    let (f, vf) = setup();
    assert_eq!(f.links(&pod()).len(), 1);
    assert_eq!(f.links(&pod())[0].name, "lo");
    assert_eq!(f.link_by_index(&pod(), 1).unwrap().unwrap().name, "lo");
    assert!(vf > 1);
    // The same name may exist in two namespaces.
    f.add_link(&pod(), "enp24s0v3");
    assert_eq!(f.find("enp24s0v3").len(), 2);
    assert_eq!(f.find("enp24s0v3")[0].0, Netns::Host);
}

#[test]
fn move_and_rename_then_back() {
    let (f, vf) = setup();
    let before = f.link_by_index(&Netns::Host, vf).unwrap().unwrap();
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    assert_eq!(l.name, "net1");
    assert_eq!(l.mac, before.mac);
    assert_eq!(l.ifindex, vf, "the ifindex is kept when free in the target");
    assert!(f.link_by_name(&Netns::Host, "enp24s0v3").unwrap().is_none());
    let back = f
        .move_link(&pod(), l.ifindex, &Netns::Host, "enp24s0v3")
        .unwrap();
    assert_eq!(back.name, "enp24s0v3");
    assert_eq!(back.mac, before.mac);
}

#[test]
fn a_moved_link_gets_a_new_ifindex_when_its_own_is_taken() {
    let (f, vf) = setup();
    // Fill the pod namespace up to the VF's ifindex.
    for i in 0..vf {
        f.add_link(&pod(), &format!("x{i}"));
    }
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    assert_ne!(l.ifindex, vf);
    assert_eq!(
        f.link_by_index(&pod(), l.ifindex).unwrap().unwrap().name,
        "net1"
    );
}

#[test]
fn eexist_after_move_like_the_kernel() {
    let (f, vf) = setup();
    f.add_link(&pod(), "net1");
    let e = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap_err();
    assert!(moved_under_old_name(&e), "{e}");
    assert_eq!(errno(&e), Some(libc::EEXIST));
    // Moved, under the old name.
    assert!(f.link_by_name(&Netns::Host, "enp24s0v3").unwrap().is_none());
    assert!(f.link_by_name(&pod(), "enp24s0v3").unwrap().is_some());
}

#[test]
fn nothing_moves_when_both_names_are_taken_and_old_name_clash_renames_during_move() {
    let (f, vf) = setup();
    f.add_link(&pod(), "enp24s0v3");
    // Only the old name is taken: the kernel renames during the move.
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    assert_eq!(l.name, "net1");
    // Both taken: not moved.
    let g = FakeLinks::new();
    g.add_netns(&pod());
    let v = g.add_link(&Netns::Host, "enp24s0v4");
    g.add_link(&pod(), "enp24s0v4");
    g.add_link(&pod(), "net1");
    let e = g.move_link(&Netns::Host, v, &pod(), "net1").unwrap_err();
    assert_eq!(errno(&e), Some(libc::EEXIST));
    assert!(!moved_under_old_name(&e));
    assert!(g.link_by_index(&Netns::Host, v).unwrap().is_some());
}

#[test]
fn a_move_drops_addresses_routes_and_the_up_flag() {
    let (f, vf) = setup();
    f.set_up(&Netns::Host, vf, true).unwrap();
    f.add_address(&Netns::Host, vf, net("10.0.0.2/24")).unwrap();
    f.add_route(
        &Netns::Host,
        vf,
        net("10.9.0.0/16"),
        Some("10.0.0.1".parse().unwrap()),
    )
    .unwrap();
    // The dump CHECK reads: the route as added, in the main table.
    assert_eq!(
        f.list_routes(&Netns::Host).unwrap(),
        vec![KernelRoute {
            dst: net("10.9.0.0/16"),
            gw: Some("10.0.0.1".parse().unwrap()),
            oif: Some(vf),
            table: 254,
        }]
    );
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    assert!(!l.up);
    assert!(f.addresses(&pod(), l.ifindex).unwrap().is_empty());
    assert!(f.routes(&Netns::Host).is_empty());
    assert!(f.list_routes(&Netns::Host).unwrap().is_empty());
}

#[test]
fn configure_in_a_namespace() {
    let (f, vf) = setup();
    let p = pod();
    let l = f.move_link(&Netns::Host, vf, &p, "net1").unwrap();
    f.set_mtu(&p, l.ifindex, 4092).unwrap();
    let e = f.set_mtu(&p, l.ifindex, 100_000).unwrap_err();
    assert_eq!(errno(&e), Some(libc::EINVAL));
    assert!(e.to_string().contains("greater than device maximum"), "{e}");

    // Routes need the link up, like the kernel.
    f.add_address(&p, l.ifindex, net("10.1.0.5/24")).unwrap();
    f.add_address(&p, l.ifindex, net("10.1.0.5/24")).unwrap(); // idempotent
    let gw: IpAddr = "10.1.0.1".parse().unwrap();
    let e = f
        .add_route(&p, l.ifindex, net("0.0.0.0/0"), Some(gw))
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::ENETUNREACH));
    assert!(e.to_string().contains("bring the link up first"), "{e}");
    let e = f
        .add_route(&p, l.ifindex, net("10.7.0.0/16"), None)
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::ENETDOWN));

    f.set_up(&p, l.ifindex, true).unwrap();
    let now = f.link_by_index(&p, l.ifindex).unwrap().unwrap();
    assert!(now.up);
    assert_eq!(now.mtu, 4092);
    f.add_route(&p, l.ifindex, net("0.0.0.0/0"), Some(gw))
        .unwrap();
    f.add_route(&p, l.ifindex, net("10.7.3.4/16"), None)
        .unwrap();
    let e = f
        .add_route(&p, l.ifindex, net("0.0.0.0/0"), Some(gw))
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EEXIST));
    let e = f
        .add_route(
            &p,
            l.ifindex,
            net("172.16.0.0/12"),
            Some("192.168.9.1".parse().unwrap()),
        )
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::ENETUNREACH));
    // A gateway reachable through an on-link route.
    f.add_route(
        &p,
        l.ifindex,
        net("172.16.0.0/12"),
        Some("10.7.0.1".parse().unwrap()),
    )
    .unwrap();
    // IPv6: link-local gateways are always on-link.
    f.add_address(&p, l.ifindex, net("fd00:1::5/64")).unwrap();
    f.add_route(&p, l.ifindex, net("::/0"), Some("fe80::1".parse().unwrap()))
        .unwrap();
    let e = f
        .add_route(
            &p,
            l.ifindex,
            net("fd00:9::/64"),
            Some("fd00:2::1".parse().unwrap()),
        )
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EHOSTUNREACH));
    let e = f
        .add_route(
            &p,
            l.ifindex,
            net("fd00:9::/64"),
            Some("10.1.0.1".parse().unwrap()),
        )
        .unwrap_err();
    assert_eq!(errno(&e), Some(libc::EINVAL));

    let addrs = f.addresses(&p, l.ifindex).unwrap();
    assert_eq!(addrs, vec![net("10.1.0.5/24"), net("fd00:1::5/64")]);
    let routes = f.routes(&p);
    assert_eq!(routes.len(), 4);
    assert_eq!(routes[1].dst, net("10.7.0.0/16"), "host bits cleared");
}

#[test]
fn rename_rules() {
    let (f, vf) = setup();
    f.add_link(&Netns::Host, "taken0");
    assert_eq!(
        errno(&f.rename(&Netns::Host, vf, "taken0").unwrap_err()),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno(
            &f.rename(&Netns::Host, vf, "a-name-longer-than-15")
                .unwrap_err()
        ),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno(&f.rename(&Netns::Host, vf, "bad/name").unwrap_err()),
        Some(libc::EINVAL)
    );
    f.set_up(&Netns::Host, vf, true).unwrap();
    let e = f.rename(&Netns::Host, vf, "net9").unwrap_err();
    assert_eq!(errno(&e), Some(libc::EBUSY));
    assert!(e.to_string().contains("must be down"), "{e}");
    f.set_up(&Netns::Host, vf, false).unwrap();
    f.rename(&Netns::Host, vf, "net9").unwrap();
    assert!(f.link_by_name(&Netns::Host, "net9").unwrap().is_some());
}

#[test]
fn missing_links_and_namespaces() {
    let (f, _) = setup();
    assert!(f.link_by_index(&pod(), 77).unwrap().is_none());
    assert!(matches!(
        f.set_mtu(&pod(), 77, 1500).unwrap_err(),
        NetError::NoSuchLink { .. }
    ));
    let gone = Netns::path("/var/run/netns/gone");
    assert!(matches!(
        f.link_by_name(&gone, "lo").unwrap_err(),
        NetError::Netns { .. }
    ));
    assert!(matches!(
        f.move_link(&Netns::Host, 2, &gone, "net1").unwrap_err(),
        NetError::Netns { .. }
    ));
}

#[test]
fn deleting_a_namespace_returns_physical_links_to_the_host() {
    let (f, vf) = setup();
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    let veth = f.add_link_with(
        &pod(),
        FakeLinkSpec {
            physical: false,
            ..FakeLinkSpec::new("veth0")
        },
    );
    assert_ne!(veth, l.ifindex);
    // Something else took the VF's old name in the host meanwhile.
    f.add_link(&Netns::Host, "enp24s0v3");
    f.add_rdma_device(&pod(), "mlx5_7");
    f.remove_netns(&pod());
    let back = f.find("net1");
    assert_eq!(
        back.len(),
        1,
        "the VF is back in the host under its pod name"
    );
    assert_eq!(back[0].0, Netns::Host);
    assert!(f.find("veth0").is_empty(), "virtual links are destroyed");
    assert_eq!(f.rdma_device_netns("mlx5_7"), Some(Netns::Host));
    // A name clash on the way back gives dev<ifindex>, as the kernel does.
    let g = FakeLinks::new();
    g.add_netns(&pod());
    let v = g.add_link(&Netns::Host, "enp1");
    let l = g.move_link(&Netns::Host, v, &pod(), "net1").unwrap();
    g.add_link(&Netns::Host, "net1");
    g.remove_netns(&pod());
    assert_eq!(g.find(&format!("dev{}", l.ifindex)).len(), 1);
}

#[test]
fn vf_settings_per_pf_and_vf() {
    let f = FakeLinks::new();
    let pf = f.add_pf("ibp24s0", 4);
    let s = VfSettings {
        mac: Some([2, 0, 0, 0, 0, 9]),
        vlan: Some((100, 3, ETH_P_8021AD)),
        spoofchk: Some(false),
        trust: None,
        rate: Some((0, 10_000)),
        link_state: Some(1),
    };
    f.set_vf(pf, 2, &s).unwrap();
    let got = f.vf_settings(pf, 2).unwrap();
    assert_eq!(got.mac, s.mac);
    assert_eq!(got.vlan, s.vlan);
    assert_eq!(got.spoofchk, Some(false));
    assert_eq!(got.trust, Some(false), "unchanged default");
    assert_eq!(
        f.vf_settings(pf, 1).unwrap().vlan,
        Some((0, 0, ETH_P_8021Q))
    );
    // Out of range, bad values, non-PF.
    assert!(matches!(
        f.set_vf(pf, 4, &s).unwrap_err(),
        NetError::NoSuchLink { .. }
    ));
    let bad_vlan = VfSettings {
        vlan: Some((5000, 0, ETH_P_8021Q)),
        ..Default::default()
    };
    assert_eq!(
        errno(&f.set_vf(pf, 0, &bad_vlan).unwrap_err()),
        Some(libc::EINVAL)
    );
    let bad_proto = VfSettings {
        vlan: Some((5, 0, 0x9100)),
        ..Default::default()
    };
    assert_eq!(
        errno(&f.set_vf(pf, 0, &bad_proto).unwrap_err()),
        Some(libc::EPROTONOSUPPORT)
    );
    let veth = f.add_link(&Netns::Host, "veth0");
    assert!(matches!(
        f.set_vf(veth, 0, &s).unwrap_err(),
        NetError::Unsupported { .. }
    ));
    assert!(matches!(
        f.vf_settings(veth, 0).unwrap_err(),
        NetError::Unsupported { .. }
    ));
    // GUIDs.
    f.set_vf_guids(pf, 3, Guid(0x11), Guid(0x22)).unwrap();
    let v = f.vf(pf, 3).unwrap();
    assert_eq!((v.node_guid, v.port_guid), (Guid(0x11), Guid(0x22)));
    assert!(matches!(
        f.set_vf_guids(veth, 0, Guid(1), Guid(2)).unwrap_err(),
        NetError::Unsupported { .. }
    ));
}

#[test]
fn rdma_modes() {
    let f = FakeLinks::new();
    f.add_netns(&pod());
    f.add_rdma_device(&Netns::Host, "mlx5_4");
    f.move_rdma_device("mlx5_4", &Netns::Host, &pod()).unwrap();
    assert_eq!(f.rdma_device_netns("mlx5_4"), Some(pod()));
    // Not in `from` any more.
    assert!(matches!(
        f.move_rdma_device("mlx5_4", &Netns::Host, &pod())
            .unwrap_err(),
        NetError::NoSuchLink { .. }
    ));
    f.move_rdma_device("mlx5_4", &pod(), &Netns::Host).unwrap();
    f.set_rdma_mode(RdmaMode::Shared);
    let e = f
        .move_rdma_device("mlx5_4", &Netns::Host, &pod())
        .unwrap_err();
    assert!(
        e.to_string().contains("rdma system set netns exclusive"),
        "{e}"
    );
    f.set_rdma_mode(RdmaMode::Absent);
    let e = f
        .move_rdma_device("mlx5_4", &Netns::Host, &pod())
        .unwrap_err();
    assert!(e.to_string().contains("NETLINK_RDMA"), "{e}");
}

#[test]
fn injected_failures_and_the_call_log() {
    let (f, vf) = setup();
    f.fail_once(FakeOp::SetMtu, Inject::Errno(libc::EIO));
    let e = f.set_mtu(&Netns::Host, vf, 9000).unwrap_err();
    assert_eq!(errno(&e), Some(libc::EIO));
    assert_eq!(
        f.link_by_index(&Netns::Host, vf).unwrap().unwrap().mtu,
        1500
    );
    f.set_mtu(&Netns::Host, vf, 9000).unwrap(); // once only

    // The 2nd next set_up fails after taking effect.
    f.fail_nth(FakeOp::SetUp, 2, Inject::ErrnoAfterEffect(libc::EAGAIN));
    f.set_up(&Netns::Host, vf, true).unwrap();
    f.set_up(&Netns::Host, vf, false).unwrap_err();
    assert!(
        !f.link_by_index(&Netns::Host, vf).unwrap().unwrap().up,
        "took effect"
    );

    // A move that fails after moving: the caller must look in both namespaces.
    f.fail_once(FakeOp::MoveLink, Inject::ErrnoAfterEffect(libc::ENOMEM));
    f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap_err();
    assert!(f.link_by_name(&pod(), "net1").unwrap().is_some());

    f.fail(FakeOp::AddRoute, Inject::Unsupported);
    for _ in 0..3 {
        assert!(matches!(
            f.add_route(&pod(), vf, net("0.0.0.0/0"), None).unwrap_err(),
            NetError::Unsupported { .. }
        ));
    }
    f.clear_failures();
    assert!(matches!(
        f.add_route(&pod(), vf, net("0.0.0.0/0"), None).unwrap_err(),
        NetError::Kernel { .. } // ENETDOWN: the link is down after the move
    ));

    assert_eq!(f.count(FakeOp::AddRoute), 4);
    assert_eq!(f.count(FakeOp::SetMtu), 2);
    let calls = f.calls();
    let first = &calls[0];
    assert_eq!(first.op, FakeOp::SetMtu);
    assert!(first.result.as_ref().unwrap_err().contains("injected"));
    assert!(
        calls
            .iter()
            .any(|c| c.op == FakeOp::MoveLink && c.args.contains("net1"))
    );
}

/// An InfiniBand VF's netdev (IPoIB's, MTU 2044 by default) and its RDMA device.
fn ipoib_setup() -> (FakeLinks, u32) {
    let (f, vf) = setup();
    f.set_mtu(&Netns::Host, vf, 2044).unwrap();
    f.set_device(&Netns::Host, vf, "0000:18:00.4");
    f.add_rdma_device(&Netns::Host, "mlx5_15");
    f.set_ipoib("mlx5_15", &Netns::Host, vf);
    (f, vf)
}

#[test]
fn moving_an_infiniband_rdma_device_recreates_its_netdev() {
    for at in [IpoibNetns::Initial, IpoibNetns::RdmaDevice] {
        let (f, vf) = ipoib_setup();
        f.set_ipoib_netns(at);
        // The netdev went into the pod first and was configured there.
        let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
        assert!(l.is_ipoib(), "{l:?}");
        f.set_mtu(&pod(), l.ifindex, 4000).unwrap();
        f.set_up(&pod(), l.ifindex, true).unwrap();
        f.add_address(&pod(), l.ifindex, net("10.1.0.5/24"))
            .unwrap();
        f.add_route(&pod(), l.ifindex, net("10.2.0.0/16"), None)
            .unwrap();
        f.move_rdma_device("mlx5_15", &Netns::Host, &pod()).unwrap();
        // net1 is gone with its routes; a new netdev of the same device appears, down, with
        // IPoIB's default MTU, a new ifindex, hardware address and the kernel's name.
        assert!(f.find("net1").is_empty(), "{at:?}");
        assert!(f.routes(&pod()).is_empty(), "{at:?}");
        let where_ = match at {
            IpoibNetns::Initial => Netns::Host,
            IpoibNetns::RdmaDevice => pod(),
        };
        let (ns, n) = f.ipoib_netdev("mlx5_15").unwrap();
        assert_eq!(ns, where_, "{at:?}");
        assert_eq!(n.name, "ib0", "{at:?}");
        assert!(n.is_ipoib(), "{at:?}");
        assert!(!n.up, "{at:?}");
        assert_eq!(n.mtu, 2044, "{at:?}");
        assert_ne!(n.ifindex, l.ifindex, "{at:?}");
        assert_ne!(n.mac, l.mac, "{at:?}");
        assert_eq!(
            f.links_of_device(&where_, "0000:18:00.4").unwrap(),
            vec![n.clone()],
            "{at:?}"
        );
        // Back home: re-created again, in the host, under the lowest free ib<n> (the old
        // netdev goes first), with an ifindex never used before.
        f.add_link(&Netns::Host, "ib1");
        if at == IpoibNetns::RdmaDevice {
            f.add_link(&Netns::Host, "ib0");
        }
        f.move_rdma_device("mlx5_15", &pod(), &Netns::Host).unwrap();
        let (ns, m) = f.ipoib_netdev("mlx5_15").unwrap();
        assert_eq!(ns, Netns::Host, "{at:?}");
        let want = match at {
            IpoibNetns::Initial => "ib0",
            IpoibNetns::RdmaDevice => "ib2",
        };
        assert_eq!(m.name, want, "{at:?}");
        assert!(m.ifindex > n.ifindex, "{at:?}");
        assert_eq!(f.host_links_of_device("0000:18:00.4"), vec![m], "{at:?}");
    }
}

#[test]
fn ethernet_netdevs_stay_when_their_rdma_device_moves() {
    let (f, vf) = ipoib_setup();
    f.forget_ipoib("mlx5_15");
    let l = f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
    assert!(!l.is_ipoib(), "{l:?}");
    f.move_rdma_device("mlx5_15", &Netns::Host, &pod()).unwrap();
    assert_eq!(f.link_by_name(&pod(), "net1").unwrap(), Some(l));
    assert_eq!(f.ipoib_netdev("mlx5_15"), None);
}

#[test]
fn a_dying_namespace_returns_an_infiniband_rdma_device_with_a_new_netdev() {
    for at in [IpoibNetns::Initial, IpoibNetns::RdmaDevice] {
        let (f, vf) = ipoib_setup();
        f.set_ipoib_netns(at);
        f.move_link(&Netns::Host, vf, &pod(), "net1").unwrap();
        f.move_rdma_device("mlx5_15", &Netns::Host, &pod()).unwrap();
        f.remove_netns(&pod());
        assert_eq!(f.rdma_device_netns("mlx5_15"), Some(Netns::Host));
        let (ns, l) = f.ipoib_netdev("mlx5_15").unwrap();
        assert_eq!((ns, l.name.as_str()), (Netns::Host, "ib0"), "{at:?}");
        assert!(f.find("net1").is_empty(), "{at:?}");
    }
}

#[test]
fn ipoib_that_fails_to_register_leaves_no_netdev() {
    let (f, vf) = ipoib_setup();
    f.set_ipoib_fails(true);
    f.move_rdma_device("mlx5_15", &Netns::Host, &pod()).unwrap();
    assert_eq!(f.ipoib_netdev("mlx5_15"), None);
    assert!(f.link_by_index(&Netns::Host, vf).unwrap().is_none());
}

#[test]
fn injected_kills_panic_before_or_after_the_effect() {
    let (f, vf) = setup();
    f.fail_once(FakeOp::MoveLink, Inject::Kill);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.move_link(&Netns::Host, vf, &pod(), "net1")
    }));
    let msg = r.unwrap_err();
    assert!(msg.downcast_ref::<String>().unwrap().contains(KILLED));
    assert!(
        f.link_by_name(&pod(), "net1").unwrap().is_none(),
        "not moved"
    );
    f.fail_once(FakeOp::MoveLink, Inject::KillAfterEffect);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.move_link(&Netns::Host, vf, &pod(), "net1")
    }));
    assert!(r.is_err());
    assert!(f.link_by_name(&pod(), "net1").unwrap().is_some(), "moved");
    // The fake still works after the panic.
    f.move_link(&pod(), vf, &Netns::Host, "enp24s0v3").unwrap();
}
