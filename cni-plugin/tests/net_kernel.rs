//! `Rtnl` against the real kernel: namespaces, veth pairs, moves, renames, MTU, addresses,
//! routes, the EEXIST-after-move behaviour, and the errors of VF/RDMA operations on a
//! kernel without SR-IOV or RDMA. Needs root (skips loudly otherwise).
//!
//! Every test makes its own namespaces (the simulator's `rvt-<pid>-<n>`) and veth pairs
//! with unique names, and removes them on drop, panics included.

use std::net::IpAddr;

use railvf_cni::net::netns::{self, Msg, NlSocket, nest_begin, nest_end, put_attr};
use railvf_cni::net::rtnl::{self, Rtnl, moved_under_old_name};
use railvf_cni::net::vf;
use railvf_cni::net::{
    IpNet, KernelRoute, LinkOps, NetError, Netns, PodLink, RouteAttrs, VfSettings,
};
use railvf_host::Guid;
use railvf_sim::{TestNetns, TestVeth, require_root};
use railvf_testkit::ip::{ip_json, sysctl_in};

/// `ip <args…>`'s stdout; a failing `ip` fails the test.
fn ip(args: &[&str]) -> String {
    railvf_sim::ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A veth pair made inside `ns` (it goes with the netns).
fn veth_in(ns: &TestNetns, name: &str, peer: &str) {
    ip(&[
        "-n",
        ns.name(),
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
    ]);
}

/// A fresh named netns for one test, deleted on drop.
fn test_ns() -> TestNetns {
    TestNetns::new().unwrap_or_else(|e| panic!("{e}"))
}

/// The namespace as railvf's netlink layer addresses it.
fn netns_of(ns: &TestNetns) -> Netns {
    Netns::path(ns.path())
}

/// A fresh veth pair in the host netns, deleted on drop.
fn test_veth() -> TestVeth {
    TestVeth::new().unwrap_or_else(|e| panic!("{e}"))
}

/// The host ifindex of the pair's `a` end.
fn a_index(veth: &TestVeth, rt: &Rtnl) -> u32 {
    rt.link_by_name(&Netns::Host, &veth.a)
        .expect("lookup")
        .expect("veth end in host")
        .ifindex
}

/// `ip -n <ns> -j <family> route show`, parsed.
fn routes(ns: &str, family: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&ip(&["-n", ns, "-j", family, "route", "show"])).expect("ip -j route")
}

fn find<'a>(routes: &'a [serde_json::Value], dst: &str) -> &'a serde_json::Value {
    routes
        .iter()
        .find(|r| r["dst"] == dst)
        .unwrap_or_else(|| panic!("no route to {dst} in {routes:?}"))
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').expect("addr/prefix");
    IpNet {
        addr: a.parse().expect("ip"),
        prefix: p.parse().expect("prefix"),
    }
}

#[test]
fn move_rename_into_netns_and_back() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let host = Netns::Host;
    let before = rt.link_by_name(&host, &veth.a).unwrap().unwrap();

    let moved = rt
        .move_link(&host, before.ifindex, &netns_of(&ns), "net1")
        .unwrap();
    assert_eq!(moved.name, "net1");
    assert_eq!(moved.mac, before.mac, "same device");
    assert!(
        rt.link_by_name(&host, &veth.a).unwrap().is_none(),
        "gone from host"
    );
    // Lookup by index in the target works, and `ip` agrees.
    let by_index = rt
        .link_by_index(&netns_of(&ns), moved.ifindex)
        .unwrap()
        .unwrap();
    assert_eq!(by_index, moved);
    let shown = ip(&["-n", ns.name(), "-j", "link", "show", "net1"]);
    assert!(shown.contains(&before.mac), "{shown}");

    // And back under the original name.
    let back = rt
        .move_link(&netns_of(&ns), moved.ifindex, &host, &veth.a)
        .unwrap();
    assert_eq!(back.name, veth.a);
    assert_eq!(back.mac, before.mac);
    assert!(rt.link_by_name(&netns_of(&ns), "net1").unwrap().is_none());
    assert_eq!(
        rt.link_by_name(&host, &veth.a).unwrap().unwrap().mac,
        before.mac
    );
}

#[test]
fn one_request_moves_renames_sets_mtu_and_brings_up() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let host = Netns::Host;
    let before = rt.link_by_name(&host, &veth.a).unwrap().unwrap();
    assert!(!before.up, "a new veth starts down");

    let moved = rt
        .move_found_link_up(&host, &before, &netns_of(&ns), "net1", mtu(1400))
        .unwrap();
    assert_eq!(
        (moved.name.as_str(), moved.mtu, moved.up, moved.mac.as_str()),
        ("net1", 1400, true, before.mac.as_str()),
        "the answer is the link as the kernel shows it afterwards"
    );
    // Checked from outside: `ip` sees it in the netns, renamed, MTU set, admin up.
    let shown: serde_json::Value =
        serde_json::from_str(&ip(&["-n", ns.name(), "-j", "link", "show", "net1"])).unwrap();
    assert_eq!(shown[0]["mtu"], 1400, "{shown}");
    let flags = shown[0]["flags"].to_string();
    assert!(flags.contains("\"UP\""), "{shown}");
    assert!(rt.link_by_name(&host, &veth.a).unwrap().is_none());

    // Without an MTU the link keeps its own.
    let back = rt
        .move_found_link(&netns_of(&ns), &moved, &host, &veth.a)
        .unwrap();
    let again = rt
        .move_found_link_up(&host, &back, &netns_of(&ns), "net1", PodLink::default())
        .unwrap();
    assert_eq!((again.mtu, again.up), (1400, true));
    let back = rt
        .move_found_link(&netns_of(&ns), &again, &host, &veth.a)
        .unwrap();

    // A refused MTU fails the request part-way: the kernel has moved the link
    // (the move comes first) but not renamed it (the name comes after the MTU), and it
    // is down. The teardown looks for it under both names.
    let err = rt
        .move_found_link_up(&host, &back, &netns_of(&ns), "net1", mtu(70_000))
        .unwrap_err();
    println!("move with MTU 70000: {err}");
    assert!(err.to_string().contains("MTU 70000"), "{err}");
    let there = rt
        .link_by_name(&netns_of(&ns), &veth.a)
        .unwrap()
        .expect("moved under its old name");
    assert!(!there.up);
    assert!(rt.link_by_name(&netns_of(&ns), "net1").unwrap().is_none());
}

fn mtu(mtu: u32) -> PodLink {
    PodLink {
        mtu: Some(mtu),
        mac: None,
    }
}

#[test]
fn the_move_request_sets_the_mac_before_up_and_set_mac_changes_it_back() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let host = Netns::Host;
    let before = rt.link_by_name(&host, &veth.a).unwrap().unwrap();
    let set = PodLink {
        mtu: Some(1400),
        mac: Some([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01]),
    };
    let moved = rt
        .move_found_link_up(&host, &before, &netns_of(&ns), "net1", set)
        .unwrap();
    assert_eq!(
        (moved.name.as_str(), moved.mac.as_str(), moved.up),
        ("net1", "02:aa:bb:cc:dd:01", true)
    );
    // Checked from outside.
    let shown: serde_json::Value =
        serde_json::from_str(&ip(&["-n", ns.name(), "-j", "link", "show", "net1"])).unwrap();
    assert_eq!(shown[0]["address"], "02:aa:bb:cc:dd:01", "{shown}");

    // What DEL's teardown does on the host: the MAC it had before.
    let back = rt
        .move_found_link(&netns_of(&ns), &moved, &host, &veth.a)
        .unwrap();
    let old = railvf_cni::net::parse_mac(&before.mac).unwrap();
    rt.set_mac(&host, back.ifindex, old).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&ip(&["-j", "link", "show", &veth.a])).unwrap();
    assert_eq!(shown[0]["address"], before.mac.as_str(), "{shown}");
    // A multicast address is the kernel's to refuse, named in the error.
    let err = rt
        .set_mac(&host, back.ifindex, [0x01, 0, 0, 0, 0, 1])
        .unwrap_err();
    assert!(
        err.to_string().contains("set MAC 01:00:00:00:00:01"),
        "{err}"
    );

    // Moved under its old name with the new MAC, then refused the rename (EEXIST): still
    // recognised as the link that moved, by the MAC the request gave it.
    veth_in(&ns, "net1", "other1");
    let again = rt.link_by_name(&host, &veth.a).unwrap().unwrap();
    let err = rt
        .move_found_link_up(&host, &again, &netns_of(&ns), "net1", set)
        .unwrap_err();
    assert!(moved_under_old_name(&err), "{err}");
    let there = rt.link_by_name(&netns_of(&ns), &veth.a).unwrap().unwrap();
    assert_eq!(there.mac, "02:aa:bb:cc:dd:01");
}

/// The MAC `ns`'s neighbour table maps `dst` on `dev` to, if it has an entry.
fn neighbour_mac(ns: &TestNetns, dst: &str, dev: &str) -> Option<String> {
    let shown = ip_json(Some(ns.name()), &["neigh", "show", "to", dst, "dev", dev]);
    shown[0]["lladdr"].as_str().map(str::to_string)
}

/// Polls `neighbour_mac` until it is `want` or `secs` pass; returns what it saw last.
fn wait_neighbour(ns: &TestNetns, dst: &str, dev: &str, want: &str, secs: u64) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let now = neighbour_mac(ns, dst, dev);
        if now.as_deref() == Some(want) || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_neighbour_that_maps_the_address_to_an_old_mac_takes_the_pod_links() {
    if !require_root() {
        return;
    }
    // The pod, and across the wire a neighbour (the gateway, another pod) that still maps
    // the pod's addresses to their previous owner's MAC.
    let pod = test_ns();
    let wire = test_ns();
    veth_in(&pod, "vf0", "wire0");
    ip(&[
        "-n",
        pod.name(),
        "link",
        "set",
        "wire0",
        "netns",
        wire.name(),
    ]);
    ip(&[
        "-n",
        wire.name(),
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "wire0",
    ]);
    ip(&[
        "-n",
        wire.name(),
        "addr",
        "add",
        "fd77::1/64",
        "dev",
        "wire0",
        "nodad",
    ]);
    ip(&["-n", wire.name(), "link", "set", "wire0", "up"]);
    const OLD: &str = "02:00:00:00:00:99";
    for a in ["10.77.0.2", "fd77::2"] {
        ip(&[
            "-n",
            wire.name(),
            "neigh",
            "add",
            a,
            "lladdr",
            OLD,
            "dev",
            "wire0",
            "nud",
            "stale",
        ]);
    }

    let rt = Rtnl::new();
    let ns = netns_of(&pod);
    let vf = rt.link_by_name(&ns, "vf0").unwrap().unwrap();
    rt.set_up(&ns, vf.ifindex, true).unwrap();
    rt.enable_address_notify(&ns, "vf0").unwrap();
    assert_eq!(
        sysctl_in(pod.name(), "/proc/sys/net/ipv4/conf/vf0/arp_notify"),
        "1"
    );
    assert_eq!(
        sysctl_in(pod.name(), "/proc/sys/net/ipv6/conf/vf0/ndisc_notify"),
        "1"
    );
    rt.add_address(&ns, vf.ifindex, net("10.77.0.2/24"))
        .unwrap();
    rt.add_address(&ns, vf.ifindex, net("fd77::2/64")).unwrap();

    // Adding an IPv4 address tells nobody: the neighbour still has the old MAC.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        neighbour_mac(&wire, "10.77.0.2", "wire0").as_deref(),
        Some(OLD)
    );
    rt.announce_ipv4(&ns, vf.ifindex, "10.77.0.2".parse().unwrap())
        .unwrap();
    assert_eq!(
        wait_neighbour(&wire, "10.77.0.2", "wire0", &vf.mac, 2).as_deref(),
        Some(vf.mac.as_str()),
        "the gratuitous ARP did not reach the neighbour"
    );
    // Nothing stays behind in the pod, and the next announcement works the same.
    assert_eq!(
        ip(&["-n", pod.name(), "neigh", "show", "to", "10.77.0.2"]).trim(),
        ""
    );
    rt.announce_ipv4(&ns, vf.ifindex, "10.77.0.2".parse().unwrap())
        .unwrap();
    // IPv6: the kernel's unsolicited advertisement once duplicate address detection ends
    // (about a second).
    assert_eq!(
        wait_neighbour(&wire, "fd77::2", "wire0", &vf.mac, 10).as_deref(),
        Some(vf.mac.as_str()),
        "no unsolicited neighbour advertisement after DAD"
    );

    // Errors name what failed.
    let err = rt.enable_address_notify(&ns, "nosuch0").unwrap_err();
    assert!(
        err.to_string().contains("arp_notify=1") && err.to_string().contains("no link nosuch0"),
        "{err}"
    );
    let err = rt.enable_address_notify(&ns, "../vf0").unwrap_err();
    assert!(err.to_string().contains("not an interface name"), "{err}");
    let err = rt
        .announce_ipv4(&ns, 999_999, "10.77.0.2".parse().unwrap())
        .unwrap_err();
    assert!(matches!(err, NetError::NoSuchLink { .. }), "{err}");
}

#[test]
fn eexist_after_move_is_reported_and_link_is_in_target_under_old_name() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    // The target already has a "net1" (another veth pair, made inside it).
    veth_in(&ns, "net1", "other1");
    let rt = Rtnl::new();
    let host = Netns::Host;
    let idx = a_index(&veth, &rt);
    let mac = rt.link_by_index(&host, idx).unwrap().unwrap().mac;

    let err = rt
        .move_link(&host, idx, &netns_of(&ns), "net1")
        .unwrap_err();
    println!("move into a netns whose net1 is taken: {err}");
    assert!(moved_under_old_name(&err), "{err}");
    match &err {
        NetError::Kernel { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EEXIST)),
        e => panic!("unexpected {e:?}"),
    }
    // FACTS: the kernel moved it under its old name.
    assert!(rt.link_by_name(&host, &veth.a).unwrap().is_none());
    let there = rt
        .link_by_name(&netns_of(&ns), &veth.a)
        .unwrap()
        .expect("moved under old name");
    assert_eq!(there.mac, mac);

    // Both names taken: nothing moves. Put a link named like veth.a back into the host
    // first... simpler: move it back, then make the target hold both names.
    let back = rt
        .move_link(&netns_of(&ns), there.ifindex, &host, &veth.a)
        .unwrap();
    veth_in(&ns, &veth.a, "other2");
    let err = rt
        .move_link(&host, back.ifindex, &netns_of(&ns), "net1")
        .unwrap_err();
    println!("move into a netns where both names are taken: {err}");
    assert!(!moved_under_old_name(&err), "{err}");
    assert!(err.to_string().contains("not moved"), "{err}");
    assert_eq!(
        rt.link_by_name(&host, &veth.a).unwrap().unwrap().mac,
        mac,
        "still in host"
    );

    // A third name, free there: the kernel moves it under that one (how teardown brings a
    // VF home when its host and pod names are both taken).
    let aside = rt
        .move_link(&host, back.ifindex, &netns_of(&ns), "rvaside0")
        .unwrap();
    assert_eq!(
        (aside.name.as_str(), aside.mac.as_str()),
        ("rvaside0", mac.as_str())
    );
    assert!(rt.link_by_name(&host, &veth.a).unwrap().is_none());
}

#[test]
fn configure_inside_netns_and_read_back() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let host = Netns::Host;
    let pod = netns_of(&ns);
    let l = rt
        .move_link(&host, a_index(&veth, &rt), &pod, "net1")
        .unwrap();
    assert!(!l.up);

    rt.set_mtu(&pod, l.ifindex, 9000).unwrap();
    rt.set_up(&pod, l.ifindex, true).unwrap();
    let now = rt.link_by_index(&pod, l.ifindex).unwrap().unwrap();
    assert_eq!(now.mtu, 9000);
    assert!(now.up);

    rt.add_address(&pod, l.ifindex, net("10.77.0.5/24"))
        .unwrap();
    rt.add_address(&pod, l.ifindex, net("10.77.0.5/24"))
        .unwrap(); // idempotent
    rt.add_address(&pod, l.ifindex, net("fd00:77::5/64"))
        .unwrap();
    rt.add_address(&pod, l.ifindex, net("fd00:77::5/64"))
        .unwrap(); // idempotent
    // IPv6 answers EEXIST for the same address under another prefix length too: that is
    // not "already there", the /48's on-link route would be missing.
    let e = rt
        .add_address(&pod, l.ifindex, net("fd00:77::5/48"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fd00:77::5/64") && e.contains("/48"), "{e}");
    let addrs = rt.addresses(&pod, l.ifindex).unwrap();
    assert!(addrs.contains(&net("10.77.0.5/24")), "{addrs:?}");
    assert!(addrs.contains(&net("fd00:77::5/64")), "{addrs:?}");
    // Not the host's view, and not another link's.
    let lo = rt.link_by_name(&pod, "lo").unwrap().unwrap();
    assert!(
        !rt.addresses(&pod, lo.ifindex)
            .unwrap()
            .contains(&net("10.77.0.5/24"))
    );

    // Routes: default via a gateway, an on-link one, IPv6 both ways; host bits get cleared.
    let gw4: IpAddr = "10.77.0.1".parse().unwrap();
    rt.add_route(&pod, l.ifindex, net("0.0.0.0/0"), Some(gw4))
        .unwrap();
    rt.add_route(&pod, l.ifindex, net("192.168.77.9/24"), None)
        .unwrap();
    rt.add_route(
        &pod,
        l.ifindex,
        net("fd00:88::/64"),
        Some("fd00:77::1".parse().unwrap()),
    )
    .unwrap();
    rt.add_route(&pod, l.ifindex, net("fd00:99::/64"), None)
        .unwrap();
    rt.add_route(
        &pod,
        l.ifindex,
        net("::/0"),
        Some("fe80::1".parse().unwrap()),
    )
    .unwrap();

    let r4 = routes(ns.name(), "-4");
    println!("{r4:?}");
    let default4 = find(&r4, "default");
    assert_eq!(default4["gateway"], "10.77.0.1");
    assert_eq!(default4["dev"], "net1");
    let onlink = find(&r4, "192.168.77.0/24");
    assert_eq!(onlink["scope"], "link");
    assert!(onlink.get("gateway").is_none());
    let r6 = routes(ns.name(), "-6");
    println!("{r6:?}");
    assert_eq!(find(&r6, "fd00:88::/64")["gateway"], "fd00:77::1");
    assert!(find(&r6, "fd00:99::/64").get("gateway").is_none());
    assert_eq!(find(&r6, "default")["gateway"], "fe80::1");
    let a: serde_json::Value =
        serde_json::from_str(&ip(&["-n", ns.name(), "-j", "addr", "show", "net1"])).unwrap();
    let v4 = a[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["local"] == "10.77.0.5")
        .expect("10.77.0.5 on net1")
        .clone();
    assert_eq!(v4["prefixlen"], 24);
    assert_eq!(v4["broadcast"], "10.77.0.255");

    // A duplicate route is an error that names the route.
    let e = rt
        .add_route(&pod, l.ifindex, net("0.0.0.0/0"), Some(gw4))
        .unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    // Another nexthop to a routed destination is added beside it, as the reference
    // plugins do (another rail of the pod routing the same prefix).
    rt.add_route(
        &pod,
        l.ifindex,
        net("0.0.0.0/0"),
        Some("10.77.0.2".parse().unwrap()),
    )
    .unwrap();
    let defaults: Vec<_> = routes(ns.name(), "-4")
        .into_iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| r["gateway"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(defaults.len(), 2, "{defaults:?}");

    // CNI 1.1 route attributes: table (one above 255 too), metric, scope, mtu, advmss.
    let attrs = RouteAttrs {
        table: Some(101),
        metric: Some(50),
        scope: None,
        mtu: Some(1400),
        advmss: Some(1360),
    };
    rt.add_route_with(&pod, l.ifindex, net("10.80.0.0/16"), Some(gw4), &attrs)
        .unwrap();
    let big = RouteAttrs {
        table: Some(1000),
        scope: Some(253),
        ..RouteAttrs::default()
    };
    rt.add_route_with(&pod, l.ifindex, net("10.81.0.0/16"), None, &big)
        .unwrap();
    let t101: Vec<serde_json::Value> = serde_json::from_str(&ip(&[
        "-n",
        ns.name(),
        "-j",
        "-d",
        "route",
        "show",
        "table",
        "101",
    ]))
    .unwrap();
    println!("{t101:?}");
    let r = find(&t101, "10.80.0.0/16");
    assert_eq!(r["gateway"], "10.77.0.1");
    assert_eq!(r["metric"], 50);
    let metrics = r["metrics"].as_array().expect("metrics");
    assert!(metrics.iter().any(|m| m["mtu"] == 1400), "{metrics:?}");
    assert!(metrics.iter().any(|m| m["advmss"] == 1360), "{metrics:?}");
    let t1000: Vec<serde_json::Value> = serde_json::from_str(&ip(&[
        "-n",
        ns.name(),
        "-j",
        "route",
        "show",
        "table",
        "1000",
    ]))
    .unwrap();
    assert_eq!(find(&t1000, "10.81.0.0/16")["scope"], "link");
    // Neither is in the main table.
    let main = routes(ns.name(), "-4");
    assert!(
        !main
            .iter()
            .any(|r| r["dst"] == "10.80.0.0/16" || r["dst"] == "10.81.0.0/16")
    );
    // A gateway off every subnet of the link.
    let e = rt
        .add_route(
            &pod,
            l.ifindex,
            net("172.31.0.0/16"),
            Some("10.99.0.1".parse().unwrap()),
        )
        .unwrap_err();
    println!("{e}");
    match e {
        NetError::Kernel { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENETUNREACH))
        }
        e => panic!("{e:?}"),
    }
    // MTU over the device's maximum: the kernel's own words come through.
    let e = rt.set_mtu(&pod, l.ifindex, 1_000_000).unwrap_err();
    println!("{e}");
    assert!(
        e.to_string().contains("set MTU 1000000 on link net1"),
        "{e}"
    );

    // Older kernels (RHEL 8/9) refuse to rename an up link (EBUSY, with our hint); newer
    // ones allow it. Down, it always works.
    match rt.rename(&pod, l.ifindex, "net2") {
        Ok(()) => println!("this kernel renames up links"),
        Err(e) => {
            println!("{e}");
            assert!(e.to_string().contains("must be down"), "{e}");
        }
    }
    rt.set_up(&pod, l.ifindex, false).unwrap();
    rt.rename(&pod, l.ifindex, "net3").unwrap();
    assert_eq!(
        rt.link_by_index(&pod, l.ifindex).unwrap().unwrap().name,
        "net3"
    );
    // A taken name.
    let e = rt.rename(&pod, l.ifindex, "lo").unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn routes_on_a_down_link_and_missing_links() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let pod = netns_of(&ns);
    let l = rt
        .move_link(&Netns::Host, a_index(&veth, &rt), &pod, "net1")
        .unwrap();
    rt.add_address(&pod, l.ifindex, net("10.78.0.5/24"))
        .unwrap();
    rt.add_address(&pod, l.ifindex, net("fd00:78::5/64"))
        .unwrap();
    // The kernel's answers differ by family and by gateway; every one must say "bring the
    // link up", not "wrong gateway".
    for (dst, gw) in [
        ("0.0.0.0/0", Some("10.78.0.1")),
        ("192.168.78.0/24", None),
        ("fd00:78::/64", None),
        ("fd00:79::/64", Some("fd00:78::1")),
        ("::/0", Some("fe80::1")),
    ] {
        let e = rt
            .add_route(&pod, l.ifindex, net(dst), gw.map(|g| g.parse().unwrap()))
            .unwrap_err();
        println!("route on a down link: {e}");
        assert!(e.to_string().contains("bring the link up first"), "{e}");
    }

    // Missing things.
    assert!(rt.link_by_name(&pod, "nosuch0").unwrap().is_none());
    assert!(
        rt.link_by_name(&pod, "a-name-longer-than-15")
            .unwrap()
            .is_none()
    );
    assert!(rt.link_by_index(&pod, 999_999).unwrap().is_none());
    let e = rt.set_mtu(&pod, 999_999, 1500).unwrap_err();
    assert!(matches!(e, NetError::NoSuchLink { .. }), "{e:?}");
    println!("{e}");
    let e = rt.addresses(&pod, 999_999).unwrap_err();
    assert!(matches!(e, NetError::NoSuchLink { .. }), "{e:?}");
    let e = rt.move_link(&Netns::Host, 999_999, &pod, "x").unwrap_err();
    assert!(matches!(e, NetError::NoSuchLink { .. }), "{e:?}");
}

/// What CHECK compares a result's routes with: one dump of the pod's tables, both families,
/// every table, unicast routes only, each nexthop of a multipath route on its own. Also the
/// hardware type CHECK tells IPoIB by: a veth is `ARPHRD_ETHER`.
#[test]
fn the_route_dump_lists_both_families_every_table_and_each_nexthop() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let veth = test_veth();
    let rt = Rtnl::new();
    let pod = netns_of(&ns);
    let l = rt
        .move_link(&Netns::Host, a_index(&veth, &rt), &pod, "net1")
        .unwrap();
    assert_eq!(l.hw_type, railvf_cni::net::ARPHRD_ETHER);
    assert!(!l.is_ipoib());
    let lo = rt.link_by_name(&pod, "lo").unwrap().unwrap();
    assert_eq!(lo.hw_type, railvf_cni::net::ARPHRD_LOOPBACK);
    rt.set_up(&pod, l.ifindex, true).unwrap();
    rt.add_address(&pod, l.ifindex, net("10.79.0.5/24"))
        .unwrap();
    ip(&[
        "-n",
        ns.name(),
        "addr",
        "add",
        "fd00:79::5/64",
        "dev",
        "net1",
        "nodad",
    ]);
    let gw4: IpAddr = "10.79.0.1".parse().unwrap();
    rt.add_route(&pod, l.ifindex, net("0.0.0.0/0"), Some(gw4))
        .unwrap();
    let t101 = RouteAttrs {
        table: Some(101),
        ..RouteAttrs::default()
    };
    rt.add_route_with(
        &pod,
        l.ifindex,
        net("10.80.0.0/16"),
        Some("10.79.0.254".parse().unwrap()),
        &t101,
    )
    .unwrap();
    rt.add_route(
        &pod,
        l.ifindex,
        net("::/0"),
        Some("fe80::1".parse().unwrap()),
    )
    .unwrap();
    // Two gateways of one IPv6 destination: the kernel dumps them as one RTA_MULTIPATH.
    for (verb, gw) in [("add", "fd00:79::1"), ("append", "fd00:79::2")] {
        ip(&[
            "-n",
            ns.name(),
            "-6",
            "route",
            verb,
            "fd00:90::/64",
            "via",
            gw,
            "dev",
            "net1",
        ]);
    }
    let shown = ip(&["-n", ns.name(), "-6", "route", "show", "fd00:90::/64"]);
    assert!(shown.contains("nexthop"), "one multipath route: {shown}");

    let routes = rt.list_routes(&pod).unwrap();
    println!("{routes:#?}");
    let has = |dst: &str, gw: Option<&str>, table: u32| {
        let want = KernelRoute {
            dst: net(dst),
            gw: gw.map(|g| g.parse().unwrap()),
            oif: Some(l.ifindex),
            table,
        };
        assert!(routes.contains(&want), "{want:?} in {routes:#?}");
    };
    has("0.0.0.0/0", Some("10.79.0.1"), 254);
    has("10.80.0.0/16", Some("10.79.0.254"), 101);
    has("::/0", Some("fe80::1"), 254);
    has("fd00:90::/64", Some("fd00:79::1"), 254);
    has("fd00:90::/64", Some("fd00:79::2"), 254);
    // The kernel's own prefix route of the address.
    has("10.79.0.0/24", None, 254);
    // The local table's local and broadcast routes are no unicast routes.
    assert!(
        !routes
            .iter()
            .any(|r| r.dst == net("10.79.0.5/32") || r.dst == net("10.79.0.255/32")),
        "{routes:#?}"
    );
    // Another netns's tables are not this one's.
    let other = test_ns();
    assert!(
        !rt.list_routes(&netns_of(&other))
            .unwrap()
            .iter()
            .any(|r| r.dst == net("10.80.0.0/16")),
    );
}

#[test]
fn bad_namespaces_are_named() {
    if !require_root() {
        return;
    }
    let rt = Rtnl::new();
    let gone = Netns::path("/var/run/netns/rvn-does-not-exist");
    let e = rt.link_by_name(&gone, "lo").unwrap_err();
    println!("{e}");
    assert!(matches!(e, NetError::Netns { .. }), "{e:?}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let e = rt
        .link_by_name(&Netns::path(file.path()), "lo")
        .unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("not a network namespace"), "{e}");
}

#[test]
fn vf_operations_on_a_veth_are_unsupported() {
    if !require_root() {
        return;
    }
    let veth = test_veth();
    let rt = Rtnl::new();
    let pf = a_index(&veth, &rt);
    let s = VfSettings {
        mac: Some([0x02, 0, 0, 0, 0, 1]),
        vlan: Some((100, 3, 0x8100)),
        spoofchk: Some(false),
        trust: Some(true),
        rate: Some((0, 1000)),
        link_state: Some(1),
    };
    let e = rt.set_vf(pf, 0, &s).unwrap_err();
    println!("{e}");
    assert!(matches!(e, NetError::Unsupported { .. }), "{e:?}");
    let e = rt
        .set_vf_guids(
            pf,
            0,
            Guid(0x1122_3344_5566_7788),
            Guid(0x1122_3344_5566_7789),
        )
        .unwrap_err();
    println!("{e}");
    assert!(matches!(e, NetError::Unsupported { .. }), "{e:?}");
    let e = rt.vf_settings(pf, 0).unwrap_err();
    println!("{e}");
    assert!(matches!(e, NetError::Unsupported { .. }), "{e:?}");
    // Nothing to set: no request, no error.
    rt.set_vf(pf, 0, &VfSettings::default()).unwrap();
    // The fallback for kernels that cannot fit one PF's VF list (EMSGSIZE) finds the link
    // by its index in a dump of every link, and only that link.
    assert_eq!(
        rt.pf_vfs_from_dump(pf).unwrap(),
        Some(rt.pf_vfs(pf).unwrap())
    );
    assert_eq!(rt.pf_vfs_from_dump(u32::MAX - 7).unwrap(), None);

    // EOPNOTSUPP (not EINVAL) above means the kernel's ifla_vf_policy accepted every one of
    // our VF attributes (it checks each struct's size before calling the driver). The same
    // request with a truncated struct ifla_vf_guid is refused by that policy:
    let mut sock = NlSocket::open(netns::NETLINK_ROUTE, None).unwrap();
    let send = |sock: &mut NlSocket, list: &[u8]| {
        let mut m = Msg::new(rtnl::RTM_SETLINK, 0);
        m.header(&rtnl::ifinfomsg(0, pf, 0, 0)).raw_attrs(list);
        sock.request(&m).unwrap_err().errno()
    };
    let good = vf::encode_vf_guids(0, Guid(1), Guid(2));
    assert_eq!(send(&mut sock, &good), Some(libc::EOPNOTSUPP));
    let mut short = Vec::new();
    let l = nest_begin(&mut short, vf::IFLA_VFINFO_LIST);
    let i = nest_begin(&mut short, vf::IFLA_VF_INFO);
    put_attr(
        &mut short,
        vf::IFLA_VF_IB_NODE_GUID,
        &vf::vf_guid(0, 1)[..12],
    );
    nest_end(&mut short, i);
    nest_end(&mut short, l);
    // (ERANGE from nla_validate on recent kernels, EINVAL on older ones.)
    let e = send(&mut sock, &short);
    assert!(matches!(e, Some(libc::EINVAL | libc::ERANGE)), "{e:?}");
    let settings = vf::encode_vf_settings(0, &s).unwrap();
    assert_eq!(send(&mut sock, &settings), Some(libc::EOPNOTSUPP));
    // A PF that does not exist.
    let e = rt.set_vf(999_999, 0, &s).unwrap_err();
    assert!(matches!(e, NetError::NoSuchLink { .. }), "{e:?}");
}

#[test]
fn links_of_device_finds_a_netdev_by_its_parent_device() {
    if !require_root() {
        return;
    }
    let rt = Rtnl::new();
    // A netdev with a parent device (a NIC), as sysfs shows it: `<netdev>/device`.
    let with_parent = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let dev = std::fs::read_link(e.path().join("device")).ok()?;
            let dev = dev.file_name()?.to_string_lossy().into_owned();
            Some((e.file_name().to_string_lossy().into_owned(), dev))
        });
    match with_parent {
        Some((name, dev)) => {
            let found = rt.links_of_device(&Netns::Host, &dev).unwrap();
            assert!(
                found.iter().any(|l| l.name == name),
                "{name} (device {dev}) not in {found:?}"
            );
        }
        None => eprintln!(
            "no netdev with a parent device in this netns: only the empty answers are checked"
        ),
    }
    // No link of a device that is not there, in the host or in a netns.
    let ns = test_ns();
    let veth = test_veth();
    let idx = a_index(&veth, &rt);
    rt.move_link(&Netns::Host, idx, &netns_of(&ns), "net1")
        .unwrap();
    for n in [Netns::Host, netns_of(&ns)] {
        assert!(rt.links_of_device(&n, "0000:ff:1f.7").unwrap().is_empty());
    }
}

#[test]
fn rdma_move_says_what_is_missing() {
    if !require_root() {
        return;
    }
    let ns = test_ns();
    let rt = Rtnl::new();
    let e = rt
        .move_rdma_device("mlx5_4", &Netns::Host, &netns_of(&ns))
        .unwrap_err();
    println!("{e}");
    match &e {
        // This CI kernel: no RDMA subsystem at all.
        NetError::Unsupported { what, detail, .. } if what.contains("NETLINK_RDMA") => {
            assert!(detail.contains("no RDMA subsystem"), "{e}");
        }
        // A kernel with RDMA: no such device here, or shared netns mode.
        NetError::NoSuchLink { .. } | NetError::Unsupported { .. } => {}
        e => panic!("{e:?}"),
    }
}

#[test]
fn sockets_are_per_netns_and_threads_stay_home() {
    if !require_root() {
        return;
    }
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let ns1 = test_ns();
    let ns2 = test_ns();
    let rt = Rtnl::new();
    veth_in(&ns1, "only1", "peer1");
    veth_in(&ns2, "only2", "peer2");
    for _ in 0..3 {
        assert!(rt.link_by_name(&netns_of(&ns1), "only1").unwrap().is_some());
        assert!(rt.link_by_name(&netns_of(&ns1), "only2").unwrap().is_none());
        assert!(rt.link_by_name(&netns_of(&ns2), "only2").unwrap().is_some());
        assert!(rt.link_by_name(&Netns::Host, "only1").unwrap().is_none());
    }
    let names: Vec<String> = rt
        .links(&netns_of(&ns1))
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}"); // lo, only1, peer1
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    // in_netns: inside the closure the thread is in the netns, after it (also after an
    // error from the closure) it is home again.
    let f = ns1.open().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
    let want = std::path::PathBuf::from(format!("net:[{ino}]"));
    let inside = netns::in_netns(&f, || std::fs::read_link("/proc/thread-self/ns/net")).unwrap();
    assert_eq!(inside, want);
    assert_ne!(inside, before);
    let failed: std::io::Result<()> = netns::in_netns(&f, || Err(std::io::Error::other("no")));
    assert!(failed.is_err());
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    // A file that is not a network namespace: setns refuses, the thread stays home.
    let mnt = std::fs::File::open("/proc/self/ns/mnt").unwrap();
    let e = netns::in_netns(&mnt, || Ok(())).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
}
