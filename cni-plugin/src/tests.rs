//! Verb logic against [`FakeLinks`] and a temporary sysfs tree: no root, milliseconds each.
//! The same flows run against the kernel and the simulator in `tests/` (root).

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::net::fake::{FakeOp, Inject, IpoibNetns, RdmaMode};
use crate::net::rdma::PortView;
use crate::net::{IpNet, LinkOps, Netns};
use crate::netconf::NetConf;
use crate::state::StateDir;
use crate::testutil::{Bench, PF_NETDEV, conf, ibdev, vf_addr, vf_netdev};

/// An IPAM stand-in that logs its calls and hands out 10.1.0.5/24.
fn with_ipam(b: &Bench) -> String {
    let log = b.dir.path().join("ipam.log");
    b.ipam_script(
        "fake-ipam",
        &format!(
            r#"cat >/dev/null; echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> {}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.1.0.5/24","gateway":"10.1.0.1"}}],"routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"10.2.0.0/16","gw":"10.1.0.254"}}],"dns":{{"nameservers":["10.1.0.53"]}}}}'
exit 0"#,
            log.display()
        ),
    );
    r#""ipam":{"type":"fake-ipam"}"#.to_string()
}

fn ipam_log(b: &Bench) -> Vec<String> {
    fs::read_to_string(b.dir.path().join("ipam.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn is_home(b: &Bench, i: u32) -> bool {
    b.whereis(&vf_netdev(i)) == vec![Netns::Host]
}

/// An upgrade can make railvf refuse a config an earlier version accepted, and Multus
/// replays the config it cached at ADD: DEL still brings the VF home and releases IPAM,
/// by the stdin config's `ipam` when that is usable, else by the one ADD recorded.
#[test]
fn del_with_a_config_this_version_refuses_still_brings_the_vf_home() {
    let b = Bench::new(3);
    let ipam = with_ipam(&b);
    let pod_b = b.netns("pod-b");
    b.run("ADD", "c0", Some(&b.pod), &conf(0, &ipam)).unwrap();
    b.run("ADD", "c1", Some(&pod_b), &conf(1, &ipam)).unwrap();
    let refused = conf(0, &format!(r#""mtu":10,{ipam}"#));
    let e = NetConf::parse(refused.as_bytes()).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    b.run("DEL", "c0", Some(&b.pod), &refused).unwrap();
    assert!(is_home(&b, 0));
    assert_eq!(ipam_log(&b)[2..], ["DEL c0 net1"]);

    // Its ipam.type unusable too: the recorded config releases the address.
    let bad_ipam = conf(1, r#""mtu":10,"ipam":{"type":"../fake-ipam"}"#);
    b.run("DEL", "c1", Some(&pod_b), &bad_ipam).unwrap();
    assert!(is_home(&b, 1));
    assert_eq!(ipam_log(&b)[3..], ["DEL c1 net1"]);
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());

    // Nothing left: DEL of a refused config succeeds, and IPAM DEL is repeated (a no-op
    // for IPAM plugins).
    b.run("DEL", "c0", Some(&b.pod), &refused).unwrap();
    assert_eq!(ipam_log(&b)[4..], ["DEL c0 net1"]);
    // Configs no ADD accepts (the runtime still sends DEL after the failed ADD): with
    // nothing to undo, DEL succeeds, or the pod would stay in Terminating.
    let unusable = [
        "not json",
        r#"{"cniVersion":"0.2.0","name":"n","type":"railvf"}"#,
        r#"{"name":"n","type":"railvf","mtu":10}"#,
        "[1]",
    ];
    for text in unusable {
        b.run("DEL", "c0", Some(&b.pod), text).unwrap();
    }
    // And with something to undo, DEL goes by what ADD recorded, IPAM included.
    for text in unusable {
        b.run("ADD", "c2", Some(&b.pod), &conf(0, &ipam)).unwrap();
        b.run("DEL", "c2", Some(&b.pod), text).unwrap();
        assert!(is_home(&b, 0), "{text}");
        assert!(b.state_files().is_empty(), "{text}: {:?}", b.state_files());
        assert_eq!(ipam_log(&b).last().unwrap(), "DEL c2 net1", "{text}");
    }
}

/// The config ADD recorded, refused by this version (a duplicate key an earlier version
/// let through): GC's release of the stale attachment goes by its `ipam.type`.
#[test]
fn a_recorded_config_this_version_refuses_still_releases_ipam() {
    let b = Bench::new(2);
    let ipam = with_ipam(&b);
    b.run("ADD", "stale", Some(&b.pod), &conf(0, &ipam))
        .unwrap();
    let file = b.state_dir().join(&b.state_files()[0]);
    let mut st: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let recorded = format!(
        r#"{{"mtu":9000,"mtu":9000,{}"#,
        &st["netconf"].as_str().unwrap()[1..]
    );
    assert!(NetConf::parse(recorded.as_bytes()).is_err());
    st["netconf"] = Value::String(recorded);
    fs::write(&file, st.to_string()).unwrap();

    b.run(
        "GC",
        "-",
        None,
        &conf(1, r#""cni.dev/valid-attachments":[]"#),
    )
    .unwrap();
    assert!(is_home(&b, 0));
    assert_eq!(ipam_log(&b), vec!["ADD stale net1", "DEL stale net1"]);
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn add_attaches_and_del_returns_everything() {
    let b = Bench::new(2);
    let ipam = with_ipam(&b);
    let out = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            &conf(0, &format!(r#""mtu":4000,{ipam}"#)),
        )
        .unwrap()
        .unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["name"], "net1");
    assert_eq!(r["interfaces"][0]["mtu"], 4000);
    assert_eq!(r["interfaces"][0]["pciID"], "0000:18:00.1");
    assert_eq!(r["interfaces"][0]["sandbox"], b.pod.display().to_string());
    assert_eq!(r["ips"][0]["address"], "10.1.0.5/24");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert!(r["ips"][0].get("version").is_none());
    assert_eq!(r["dns"]["nameservers"][0], "10.1.0.53");

    let pod = Netns::path(&b.pod);
    let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert!(l.up);
    assert_eq!(l.mtu, 4000);
    assert_eq!(r["interfaces"][0]["mac"], l.mac);
    assert_eq!(
        b.links.addresses(&pod, l.ifindex).unwrap(),
        vec![IpNet {
            addr: "10.1.0.5".parse().unwrap(),
            prefix: 24
        }]
    );
    let routes = b.links.routes(&pod);
    assert!(
        routes
            .iter()
            .any(|r| r.dst.prefix == 0 && r.gw == Some("10.1.0.1".parse().unwrap())),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.dst.prefix == 16 && r.gw == Some("10.1.0.254".parse().unwrap()))
    );
    assert!(b.whereis(&vf_netdev(0)).is_empty());
    let st = StateDir::new(b.state_dir())
        .load("c1", "net1")
        .unwrap()
        .unwrap();
    assert_eq!(st.host.name, vf_netdev(0));

    b.run(
        "DEL",
        "c1",
        Some(&b.pod),
        &conf(0, &format!(r#""mtu":4000,{ipam}"#)),
    )
    .unwrap();
    assert!(is_home(&b, 0));
    let back = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(0))
        .unwrap()
        .unwrap();
    assert_eq!(back.mtu, 1500, "MTU restored");
    assert!(b.links.link_by_name(&pod, "net1").unwrap().is_none());
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    assert_eq!(ipam_log(&b), vec!["ADD c1 net1", "DEL c1 net1"]);
}

/// CHECK right after a chained ADD passes: the previous plugin's address without an
/// interface index is not taken for ours.
#[test]
fn check_after_a_chained_add_leaves_a_previous_plugins_addresses_alone() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let prev = r#""prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.128.0.5/23"}]}"#;
    let c = conf(0, &format!("{ipam},{prev}"));
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let mut v: Value = serde_json::from_str(&c).unwrap();
    v["prevResult"] = serde_json::from_str(&out).unwrap();
    b.run("CHECK", "c1", Some(&b.pod), &v.to_string()).unwrap();
    // Our own address is still checked.
    v["prevResult"]["ips"][1]["address"] = "10.1.0.99/24".into();
    let e = b
        .run("CHECK", "c1", Some(&b.pod), &v.to_string())
        .unwrap_err();
    assert!(e.msg.contains("lacks address 10.1.0.99/24"), "{e}");
}

#[test]
fn a_previous_plugins_result_is_passed_through_before_ours() {
    let b = Bench::new(2);
    let ipam = with_ipam(&b);
    let prev = r#""prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:80:00:05","sandbox":"/x","socketPath":"/run/vhu0.sock"}],"ips":[{"address":"10.128.0.5/23","gateway":"10.128.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.128.0.1"}],"dns":{"nameservers":["172.30.0.10"]}}"#;
    let out = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            &conf(0, &format!("{ipam},{prev}")),
        )
        .unwrap()
        .unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["socketPath"], "/run/vhu0.sock");
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert_eq!(r["interfaces"][1]["pciID"], "0000:18:00.1");
    assert_eq!(r["ips"][0]["address"], "10.128.0.5/23");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["ips"][1]["address"], "10.1.0.5/24");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(r["routes"][0]["gw"], "10.128.0.1");
    assert_eq!(r["routes"].as_array().unwrap().len(), 3, "{r}");
    // IPAM gave DNS: ours. Without it, the previous plugin's is kept.
    assert_eq!(r["dns"]["nameservers"][0], "10.1.0.53");
    let out = b
        .run("ADD", "c2", Some(&b.netns("pod-2")), &conf(1, prev))
        .unwrap()
        .unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["dns"]["nameservers"][0], "172.30.0.10");
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");

    // One it cannot read is refused before anything changes.
    b.run("DEL", "c1", Some(&b.pod), &conf(0, &ipam)).unwrap();
    let e = b
        .run(
            "ADD",
            "c3",
            Some(&b.pod),
            &conf(0, r#""prevResult":{"interfaces":[{"mac":"x"}]}"#),
        )
        .unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert!(
        e.msg.contains("prevResult") && e.msg.contains("interfaces[0].name"),
        "{e}"
    );
    assert!(is_home(&b, 0));
    assert_eq!(
        b.state_files(),
        vec!["0000:18:00.2_c2@net1.json".to_string()]
    );
}

#[test]
fn old_config_versions_get_old_result_shapes() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &ipam).replace("1.1.0", "0.3.1");
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");
    assert!(r["interfaces"][0].get("pciID").is_none());
    assert!(r["interfaces"][0].get("mtu").is_none());
}

#[test]
fn del_is_idempotent_and_works_without_add_or_netns() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &ipam);
    // DEL without ADD, twice, with and without a netns.
    b.run("DEL", "never", Some(&b.pod), &c).unwrap();
    b.run("DEL", "never", None, &c).unwrap();
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    b.run("DEL", "c1", None, &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
}

#[test]
fn del_finds_the_state_whatever_vf_its_config_names() {
    let b = Bench::new(2);
    for del_conf in [
        r#"{"cniVersion":"1.1.0","name":"rdma-net","type":"railvf"}"#.to_string(),
        conf(1, ""),
    ] {
        b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap();
        b.run("DEL", "c1", Some(&b.pod), &del_conf).unwrap();
        assert!(is_home(&b, 0), "DEL with {del_conf}");
        assert!(is_home(&b, 1));
        assert!(b.state_files().is_empty(), "DEL with {del_conf}");
    }
}

#[test]
fn del_after_the_netns_is_gone_renames_the_returned_vf() {
    let b = Bench::new(1);
    let c = conf(0, "");
    let pod = b.netns("pod-gone");
    b.run("ADD", "c1", Some(&pod), &c).unwrap();
    // The kernel returns the VF to the host under its pod name; sysfs shows it there.
    b.delete_netns(&pod);
    assert_eq!(b.whereis("net1"), vec![Netns::Host]);
    b.run("DEL", "c1", None, &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.whereis("net1").is_empty());
    assert!(b.state_files().is_empty());
}

/// Other interfaces hold both the VF's host name and its pod name in the host: the kernel
/// can move it home under neither. DEL brings it home under a name of its own and says
/// why; once its name is free, the next DEL gives it back.
#[test]
fn del_brings_the_vf_home_aside_when_its_host_and_pod_names_are_taken_there() {
    let b = Bench::new(1);
    let c = conf(0, "");
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let pod_ifindex = b
        .links
        .link_by_name(&Netns::path(&b.pod), "net1")
        .unwrap()
        .unwrap()
        .ifindex;
    let host_name = vf_netdev(0);
    let squatter = b.links.add_link(&Netns::Host, &host_name);
    b.links.add_link(&Netns::Host, "net1");

    let e = b.run("DEL", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 106, "{e}");
    let aside = format!("rv{pod_ifindex}");
    for name in [host_name.as_str(), "net1", "already has", &aside] {
        assert!(e.msg.contains(name), "{name}: {e}");
    }
    assert!(e.msg.contains("not moved"), "the kernel's answer: {e}");
    assert!(!e.msg.contains("no netdev in the host"), "{e}");
    assert!(e.details.contains("kept"), "{e:?}");
    let home = b.links.link_by_name(&Netns::Host, &aside).unwrap().unwrap();
    assert_eq!(home.mac, b.vf_mac[0]);
    assert_eq!(b.state_files().len(), 1);

    // The name is free again: the next DEL renames the VF.
    b.links.rename(&Netns::Host, squatter, "other0").unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert_eq!(
        b.links
            .link_by_name(&Netns::Host, &host_name)
            .unwrap()
            .unwrap()
            .mac,
        b.vf_mac[0]
    );
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// The same, with the name to step aside under taken too: DEL fails at once, naming the
/// names and where the VF is, and leaves it in the pod.
#[test]
fn del_that_cannot_bring_the_vf_home_says_why_and_where_it_is() {
    let b = Bench::new(1);
    let c = conf(0, "");
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let pod_ifindex = b
        .links
        .link_by_name(&Netns::path(&b.pod), "net1")
        .unwrap()
        .unwrap()
        .ifindex;
    let host_name = vf_netdev(0);
    let squatter = b.links.add_link(&Netns::Host, &host_name);
    b.links.add_link(&Netns::Host, "net1");
    b.links.add_link(&Netns::Host, &format!("rv{pod_ifindex}"));

    let e = b.run("DEL", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 106, "{e}");
    for name in [host_name.as_str(), "net1", "already has", "still net1"] {
        assert!(e.msg.contains(name), "{name}: {e}");
    }
    // Seen in the pod: no wait for it in the host.
    assert!(!e.msg.contains("no netdev in the host"), "{e}");
    assert_eq!(b.whereis("net1"), vec![Netns::Host, Netns::path(&b.pod)]);
    assert_eq!(b.state_files().len(), 1);

    b.links.rename(&Netns::Host, squatter, "other0").unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn del_with_a_netns_path_that_is_no_netns_any_more() {
    let b = Bench::new(1);
    let c = conf(0, "");
    let pod = b.netns("pod-stale");
    b.run("ADD", "c1", Some(&pod), &c).unwrap();
    // The namespace dies but a plain file stays at its path (an unmounted bind mount).
    b.links.remove_netns(&Netns::path(&pod));
    b.sync_sysfs();
    assert!(pod.exists());
    b.run("DEL", "c1", Some(&pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
}

#[test]
fn del_after_a_killed_add_converges() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &ipam);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    // An ADD killed right after the move leaves exactly this: the state written before the
    // first change, the VF in the pod under its pod name.
    let sd = StateDir::new(b.state_dir());
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());

    // Killed before the move: the state exists, the VF is still on the host.
    b.run("ADD", "c2", Some(&b.pod), &c).unwrap();
    let st = sd.load("c2", "net1").unwrap().unwrap();
    let pod = Netns::path(&b.pod);
    let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    b.links
        .move_link(&pod, l.ifindex, &Netns::Host, &vf_netdev(0))
        .unwrap();
    b.sync_sysfs();
    sd.save(&st).unwrap();
    b.run("DEL", "c2", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
}

#[test]
fn readiness_timeout_rolls_everything_back_with_code_11() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    b.set_port(0, "lid", "0x0");
    let c = conf(0, &format!(r#"{ipam},"readiness":{{"timeoutMs":100}}"#));
    let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(
        e.msg
            .contains("lid: found 0x0, expected a LID assigned by the Subnet Manager"),
        "{e}"
    );
    assert!(e.details.contains("opensm"), "{e}");
    assert!(e.details.contains("rolled back"), "{e}");
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    assert_eq!(ipam_log(&b), vec!["ADD c1 net1", "DEL c1 net1"]);
}

/// The index of the first call of `op` in `calls`.
fn first_call(calls: &[crate::net::fake::FakeCall], op: FakeOp) -> Option<usize> {
    calls.iter().position(|c| c.op == op)
}

#[test]
fn neighbours_hear_of_the_addresses_once_the_vf_is_ready() {
    let b = Bench::new(1);
    let log = b.dir.path().join("ipam.log");
    b.ipam_script(
        "dual-ipam",
        &format!(
            r#"cat >/dev/null; echo "$CNI_COMMAND" >> {}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.1.0.5/24"}},{{"address":"fd00::5/64"}}]}}'
exit 0"#,
            log.display()
        ),
    );
    let c = conf(0, r#""ipam":{"type":"dual-ipam"}"#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let pod = Netns::path(&b.pod);
    let net1 = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert!(b.links.address_notify(&pod, net1.ifindex));
    let calls = b.links.calls();
    let at = |op| first_call(&calls, op).unwrap_or_else(|| panic!("no {op:?} in {calls:#?}"));
    // Notify on before the first address (IPv6 announces when its DAD ends), after the move.
    assert!(at(FakeOp::MoveLink) < at(FakeOp::EnableAddressNotify));
    assert!(at(FakeOp::EnableAddressNotify) < at(FakeOp::AddAddress));
    // One gratuitous ARP, for the IPv4 address only, after every address.
    let announced: Vec<&str> = calls
        .iter()
        .filter(|c| c.op == FakeOp::AnnounceIpv4)
        .map(|c| c.args.as_str())
        .collect();
    assert_eq!(
        announced,
        vec![format!("{pod:?} {} 10.1.0.5", net1.ifindex)],
        "{calls:#?}"
    );
    let last_address = calls
        .iter()
        .rposition(|c| c.op == FakeOp::AddAddress)
        .unwrap();
    assert!(last_address < at(FakeOp::AnnounceIpv4));
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    let host = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(0))
        .unwrap()
        .unwrap();
    assert!(!b.links.address_notify(&Netns::Host, host.ifindex));

    // Announcing is best effort, as in sriov-cni: failures leave the attachment standing.
    b.links
        .fail(FakeOp::EnableAddressNotify, Inject::Errno(libc::EACCES));
    b.links
        .fail(FakeOp::AnnounceIpv4, Inject::Errno(libc::EEXIST));
    b.run("ADD", "c2", Some(&b.pod), &c).unwrap().unwrap();
    assert!(b.links.link_by_name(&pod, "net1").unwrap().is_some());
    b.links.clear_failures();
    b.run("DEL", "c2", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
}

#[test]
fn no_announcement_without_ipam_or_before_the_gate_passes() {
    let b = Bench::new(1);
    b.run("ADD", "c1", Some(&b.pod), &conf(0, ""))
        .unwrap()
        .unwrap();
    assert_eq!(b.links.count(FakeOp::EnableAddressNotify), 0);
    assert_eq!(b.links.count(FakeOp::AnnounceIpv4), 0);
    b.run("DEL", "c1", Some(&b.pod), &conf(0, "")).unwrap();

    // A VF that never gets ready announces nothing: its address is released again.
    let ipam = with_ipam(&b);
    b.set_port(0, "lid", "0x0");
    let c = conf(0, &format!(r#"{ipam},"readiness":{{"timeoutMs":100}}"#));
    let e = b.run("ADD", "c2", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert_eq!(b.links.count(FakeOp::EnableAddressNotify), 1);
    assert_eq!(b.links.count(FakeOp::AnnounceIpv4), 0);
    assert!(is_home(&b, 0));
}

#[test]
fn readiness_waits_for_the_lid() {
    let b = Bench::new(1);
    b.set_port(0, "lid", "0x0");
    let lid = b.port_file(0, "lid");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        fs::write(lid, "0x42\n").unwrap();
    });
    let c = conf(0, r#""readiness":{"timeoutMs":20000}"#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    t.join().unwrap();
    assert!(b.whereis("net1") == vec![Netns::path(&b.pod)]);
}

#[test]
fn failures_that_cannot_heal_fail_at_once() {
    for (file, value, check) in [
        (
            "link_layer",
            "Ethernet",
            "link_layer: found Ethernet, expected InfiniBand",
        ),
        ("state", "1: DOWN", "port_state"),
    ] {
        let b = Bench::new(1);
        b.set_port(0, file, value);
        let timeout = if file == "state" { 150 } else { 600_000 };
        let c = conf(0, &format!(r#""readiness":{{"timeoutMs":{timeout}}}"#));
        let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
        assert_eq!(e.code, 11, "{e}");
        assert!(e.msg.contains(check), "{e}");
        if file == "link_layer" {
            assert!(e.msg.contains("will not change by waiting"), "{e}");
        }
        assert!(is_home(&b, 0));
        assert!(b.state_files().is_empty());
    }
}

#[test]
fn roce_vfs_gate_on_ethernet_without_lid() {
    let b = Bench::new(1);
    b.set_port(0, "link_layer", "Ethernet");
    b.set_port(0, "lid", "0x0");
    b.set_port(0, "sm_lid", "0x0");
    let c = conf(0, r#""readiness":{"linkLayer":"Ethernet","timeoutMs":100}"#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
}

/// ADD of VF 0 refused for systemd-networkd managing it, before anything changed.
fn assert_refused_as_networkd_managed(b: &Bench, e: &crate::error::CniError) {
    assert_eq!(e.code, 11);
    assert!(
        e.msg.contains("ownership") && e.msg.contains("systemd-networkd"),
        "{e}"
    );
    assert!(is_home(b, 0));
    assert!(b.state_files().iter().all(|f| f.ends_with(".lock")));
    assert_eq!(b.links.count(FakeOp::MoveLink), 0);
}

#[test]
fn host_managed_vf_is_refused_before_any_change() {
    let b = Bench::new(1);
    b.networkd_manages(0);
    let e = b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap_err();
    assert_refused_as_networkd_managed(&b, &e);
}

#[test]
fn a_netdev_that_arrives_during_the_host_wait_is_checked_for_ownership() {
    let b = Bench::new(1);
    b.networkd_manages(0);
    // The VF on its way back from a netns being destroyed: sysfs lists no netdev yet, and
    // lists it while ADD waits for it (the wait lasts up to a second).
    let net = b.vf_dir(0).join("net");
    let away = b.dir.path().join("net-away");
    fs::rename(&net, &away).unwrap();
    fs::create_dir_all(&net).unwrap();
    let back = {
        let (net, away) = (net.clone(), away.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::remove_dir_all(&net).unwrap();
            fs::rename(&away, &net).unwrap();
        })
    };
    let r = b.run("ADD", "c1", Some(&b.pod), &conf(0, ""));
    back.join().unwrap();
    let e = r.expect_err("ADD attached a VF systemd-networkd manages");
    assert_refused_as_networkd_managed(&b, &e);
}

#[test]
fn a_roce_vf_without_a_node_guid_is_told_how_mlx5_gives_it_one() {
    let b = Bench::new(1);
    b.roce(0);
    fs::write(b.node_guid_file(0), "0000:0000:0000:0000\n").unwrap();
    let c = conf(0, r#""readiness":{"linkLayer":"Ethernet","timeoutMs":100}"#);
    let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 11);
    // Only the node GUID counts on Ethernet, and the way to one is the admin MAC.
    assert!(
        e.msg.contains("guid: found node_guid 0000:0000:0000:0000")
            && e.msg.contains("expected a node GUID that is neither"),
        "{e}"
    );
    assert!(
        e.details.contains("admin MAC") && e.details.contains("unbind"),
        "{}",
        e.details
    );
    // Refused in pre-flight: no wait, nothing moved, no state written.
    assert!(e.msg.contains("will not change by waiting"), "{e}");
    assert!(
        !b.links.calls().iter().any(|c| c.op == FakeOp::MoveLink),
        "{:?}",
        b.links.calls()
    );
    assert!(b.state_files().is_empty());
    assert!(is_home(&b, 0));
}

/// ADD "c1" of VF 0 with the pod GUID 02:…:aa:01, set through the OFED files under the
/// fake driver: the GUID file as it was before, and the config.
fn add_with_pod_guid(b: &Bench) -> (String, String) {
    b.fake_driver();
    let before = fs::read_to_string(b.sriov_file(0, "node")).unwrap();
    let c = conf(
        0,
        r#""runtimeConfig":{"infinibandGUID":"02:00:00:00:00:00:aa:01"}"#,
    );
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    (before, c)
}

#[test]
fn guid_through_ofed_files_with_rebind_and_restore() {
    let b = Bench::new(1);
    let (before, c) = add_with_pod_guid(&b);
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "node")).unwrap(),
        "02:00:00:00:00:00:aa:01\n"
    );
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        "02:00:00:00:00:00:aa:01\n"
    );
    let drv = b.root().join("sys/bus/pci/drivers/mlx5_core");
    assert_eq!(
        fs::read_to_string(drv.join("unbind")).unwrap(),
        "0000:18:00.1"
    );
    assert_eq!(
        fs::read_to_string(drv.join("bind")).unwrap(),
        "0000:18:00.1"
    );
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(fs::read_to_string(b.sriov_file(0, "node")).unwrap(), before);
    assert!(is_home(&b, 0));
    wait_for_guid(&b, 0, before.trim());
    wait_for_port_guid(&b, 0, before.trim());

    // Same GUID again, in effect: no write, no rebind.
    fs::write(drv.join("bind"), "").unwrap();
    let same = conf(0, &format!(r#""guid":"{}""#, before.trim()));
    b.run("ADD", "c2", Some(&b.pod), &same).unwrap();
    assert_eq!(fs::read_to_string(drv.join("bind")).unwrap(), "");
}

#[test]
fn ib_kubernetes_networks_wait_for_ib_kubernetes_then_take_its_guid_from_cni_args() {
    let b = Bench::new(1);
    b.fake_driver();
    let before = fs::read_to_string(b.sriov_file(0, "node")).unwrap();
    // Before ib-kubernetes has put the pod's GUID into its partition: try again later,
    // and nothing is touched.
    let early = conf(
        0,
        r#""ibKubernetesEnabled":true,"args":{"cni":{"guid":"02:00:00:00:00:00:cc:03"}}"#,
    );
    let e = b.run("ADD", "c1", Some(&b.pod), &early).unwrap_err();
    assert_eq!(e.code, crate::error::code::TRY_AGAIN, "{e}");
    assert!(e.msg.contains("mellanox.infiniband.app"), "{e}");
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    assert_eq!(b.links.count(FakeOp::MoveLink), 0);
    assert_eq!(fs::read_to_string(b.sriov_file(0, "node")).unwrap(), before);

    // Configured: the GUID ib-kubernetes passed in args.cni is the one set.
    let ready = conf(
        0,
        r#""ibKubernetesEnabled":true,"args":{"cni":{"guid":"02:00:00:00:00:00:cc:03","mellanox.infiniband.app":"configured","pkey":"0x8001"}}"#,
    );
    b.run("ADD", "c1", Some(&b.pod), &ready).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "node")).unwrap(),
        "02:00:00:00:00:00:cc:03\n"
    );
    b.run("DEL", "c1", Some(&b.pod), &ready).unwrap();
    assert_eq!(fs::read_to_string(b.sriov_file(0, "node")).unwrap(), before);
    assert!(is_home(&b, 0));
}

#[test]
fn guid_through_netlink_when_there_are_no_ofed_files() {
    let b = Bench::new(1);
    fs::remove_dir_all(b.sriov_file(0, "node").parent().unwrap()).unwrap();
    let c = conf(0, r#""guid":"02:00:00:00:00:00:bb:02""#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let vf = b.links.vf(b.pf_ifindex, 0).unwrap();
    assert_eq!(vf.node_guid.0, 0x02000000_0000bb02);
    assert_eq!(vf.port_guid.0, 0x02000000_0000bb02);
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    // Restored to what the RDMA device showed before.
    assert_eq!(
        b.links.vf(b.pf_ifindex, 0).unwrap().node_guid.0,
        0x0c42a1ff00180101
    );
}

#[test]
fn vf_settings_are_applied_through_the_pf_and_restored() {
    let b = Bench::new(2);
    let before = b.links.vf(b.pf_ifindex, 1).unwrap().settings;
    let c = conf(
        1,
        r#""mac":"02:aa:bb:cc:dd:01","vlan":100,"vlanQoS":2,"spoofchk":"off","trust":"on","min_tx_rate":5,"max_tx_rate":500,"link_state":"enable","readiness":{"linkLayer":"InfiniBand"}"#,
    );
    let host_mac = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(1))
        .unwrap()
        .unwrap()
        .mac;
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let now = b.links.vf(b.pf_ifindex, 1).unwrap().settings;
    assert_eq!(now.mac, Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 1]));
    // The netdev itself has the MAC too (as sriov-cni sets it), and the result says so.
    let pod = Netns::path(&b.pod);
    let net1 = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert_eq!(net1.mac, "02:aa:bb:cc:dd:01");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["interfaces"][0]["mac"], "02:aa:bb:cc:dd:01");
    assert_eq!(now.vlan, Some((100, 2, 0x8100)));
    assert_eq!(now.spoofchk, Some(false));
    assert_eq!(now.trust, Some(true));
    assert_eq!(now.rate, Some((5, 500)));
    assert_eq!(now.link_state, Some(1));
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.links.vf(b.pf_ifindex, 1).unwrap().settings, before);
    assert!(is_home(&b, 1));
    let home = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(1))
        .unwrap()
        .unwrap();
    assert_eq!(home.mac, host_mac, "the netdev's own MAC restored");
    let _ = PF_NETDEV;
}

/// The config's MAC on the netdev, and a new ifindex in the pod (its host one was taken
/// there): neither is recorded, and DEL, in another process, still finds the VF, by its
/// parent device.
#[test]
fn a_vf_with_the_configs_mac_and_a_new_ifindex_in_the_pod_is_found_by_its_device() {
    let b = Bench::new(2);
    let pod = Netns::path(&b.pod);
    let host = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(1))
        .unwrap()
        .unwrap();
    for n in 0.. {
        if matches!(b.links.link_by_index(&pod, host.ifindex), Ok(Some(_))) {
            break;
        }
        assert!(n < 64, "the pod's ifindexes never reached {}", host.ifindex);
        b.links.add_link(&pod, &format!("eth{n}"));
    }
    let c = conf(
        1,
        r#""mac":"02:aa:bb:cc:dd:01","readiness":{"linkLayer":"InfiniBand"}"#,
    );
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let net1 = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert_ne!(net1.ifindex, host.ifindex);
    assert_ne!(net1.mac, host.mac);
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 1));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// The longest container ID railvf takes fits its state file names (written through a
/// temporary name); one longer is refused up front, for DEL too, with what to do.
#[test]
fn the_longest_container_id_attaches_and_a_longer_one_is_refused_up_front() {
    let b = Bench::new(1);
    let c = conf(0, "");
    let longest = "a".repeat(crate::env::MAX_CONTAINER_ID);
    b.run("ADD", &longest, Some(&b.pod), &c).unwrap();
    assert_eq!(b.state_files().len(), 1);
    b.run("DEL", &longest, Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    let longer = "a".repeat(crate::env::MAX_CONTAINER_ID + 45);
    for verb in ["ADD", "DEL"] {
        let e = crate::env::Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some(verb.into()),
            "CNI_CONTAINERID" => Some(longer.clone().into()),
            "CNI_IFNAME" => Some("net1".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(e.code, 4, "{verb}: {e}");
        assert!(e.msg.contains("at most 200"), "{verb}: {e}");
    }
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
}

/// A GUID another RDMA device on the node shows (its node or its port GUID) is refused
/// before anything changes: two ports with one GUID share one identity on the fabric.
#[test]
fn a_guid_another_device_on_the_node_has_is_refused_before_anything_changes() {
    let b = Bench::new(2);
    b.fake_driver();
    let before = fs::read_to_string(b.sriov_file(0, "node")).unwrap();
    // VF 1's node GUID, as sysfs shows it.
    let c = conf(
        0,
        r#""runtimeConfig":{"infinibandGUID":"0c:42:a1:ff:00:18:01:02"}"#,
    );
    let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert!(e.msg.contains("node GUID of RDMA device mlx5_13"), "{e}");
    assert_eq!(fs::read_to_string(b.sriov_file(0, "node")).unwrap(), before);
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
    // Its port GUID alone (the port GID's interface ID) counts too.
    fs::write(
        b.port_file(1, "gids/0"),
        "fe80:0000:0000:0000:0600:0000:0000:0005\n",
    )
    .unwrap();
    let c = conf(
        0,
        r#""runtimeConfig":{"infinibandGUID":"06:00:00:00:00:00:00:05"}"#,
    );
    let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
    assert!(e.msg.contains("port GUID of RDMA device mlx5_13"), "{e}");
    // The VF's own GUID is no clash: already in effect, nothing to set.
    let c = conf(
        0,
        r#""runtimeConfig":{"infinibandGUID":"0c:42:a1:ff:00:18:01:01"}"#,
    );
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
}

/// A CNI_IFNAME taken in the pod is bad input: refused before anything changes, not even
/// a GUID rebind (seconds on real mlx5, and the device plugin sees the VF go away).
#[test]
fn an_existing_name_in_the_pod_fails_before_anything_changes() {
    let b = Bench::new(1);
    b.fake_driver();
    let guid_before = fs::read_to_string(b.sriov_file(0, "node")).unwrap();
    let pod = Netns::path(&b.pod);
    b.links.add_link(&pod, "net1");
    let c = conf(
        0,
        r#""runtimeConfig":{"infinibandGUID":"02:00:00:00:00:00:aa:01"}"#,
    );
    let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 103, "{e}");
    assert!(e.msg.contains("net1 already exists"), "{e}");
    assert!(e.details.contains("another CNI_IFNAME"), "{e}");
    let unbind = b.root().join("sys/bus/pci/drivers/mlx5_core/unbind");
    assert_eq!(fs::read_to_string(unbind).unwrap_or_default(), "");
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "node")).unwrap(),
        guid_before
    );
    assert!(
        !b.links.calls().iter().any(|c| c.op == FakeOp::MoveLink),
        "{:?}",
        b.links.calls()
    );
    assert!(is_home(&b, 0), "{:?}", b.whereis(&vf_netdev(0)));
    assert_eq!(b.whereis("net1"), vec![pod]);
    assert!(b.state_files().is_empty());
}

#[test]
fn kernel_errors_mid_add_roll_back_ipam_and_the_move() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    b.links
        .fail_once(FakeOp::AddAddress, Inject::Errno(libc::EINVAL));
    let e = b
        .run("ADD", "c1", Some(&b.pod), &conf(0, &ipam))
        .unwrap_err();
    assert_eq!(e.code, 103);
    assert!(e.msg.contains("10.1.0.5/24"), "{e}");
    assert!(is_home(&b, 0));
    assert_eq!(ipam_log(&b), vec!["ADD c1 net1", "DEL c1 net1"]);
    assert!(b.state_files().is_empty());
}

#[test]
fn ipam_errors_pass_through_and_roll_back() {
    let b = Bench::new(1);
    b.ipam_script(
        "full",
        r#"cat >/dev/null; [ "$CNI_COMMAND" = ADD ] || exit 0; echo '{"cniVersion":"1.0.0","code":18,"msg":"no IP addresses available in range set"}'; exit 1"#,
    );
    let e = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            &conf(0, r#""ipam":{"type":"full"}"#),
        )
        .unwrap_err();
    assert_eq!(e.code, 18);
    assert!(e.msg.contains("no IP addresses available"), "{e}");
    assert!(is_home(&b, 0));
    let e = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            &conf(0, r#""ipam":{"type":"missing"}"#),
        )
        .unwrap_err();
    assert_eq!(e.code, 104);
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn a_vf_of_a_live_pod_is_refused_naming_it_and_a_dead_one_is_taken_over() {
    let b = Bench::new(1);
    let c = conf(0, "");
    let pod_a = b.netns("pod-a");
    b.run("ADD", "aaa", Some(&pod_a), &c).unwrap();
    let e = b.run("ADD", "bbb", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 101, "{e}");
    assert!(e.msg.contains("aaa") && e.msg.contains("pod-a"), "{e}");
    // Pod A dies without DEL: the kernel returns the VF; B may now take it.
    b.delete_netns(&pod_a);
    b.run("ADD", "bbb", Some(&b.pod), &c).unwrap();
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    let files = b.state_files();
    assert_eq!(files, vec!["0000:18:00.1_bbb@net1.json".to_string()]);
    // A's late DEL does not touch B's VF.
    b.run("DEL", "aaa", None, &c).unwrap();
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
}

#[test]
fn wrong_devices_are_refused() {
    let b = Bench::new(1);
    let pf = conf(0, "").replace("0000:18:00.1", "0000:18:00.0");
    let e = b.run("ADD", "c1", Some(&b.pod), &pf).unwrap_err();
    assert_eq!(e.code, 100);
    assert!(e.msg.contains("not an SR-IOV virtual function"), "{e}");
    let none = conf(0, "").replace("0000:18:00.1", "0000:99:00.1");
    let e = b.run("ADD", "c1", Some(&b.pod), &none).unwrap_err();
    assert_eq!(e.code, 100);
    assert!(e.msg.contains("not a PCI function"), "{e}");
    let e = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            r#"{"cniVersion":"1.0.0","name":"x"}"#,
        )
        .unwrap_err();
    assert_eq!(e.code, 7);
    // Moved away by someone else, no state of ours.
    let other = b.netns("elsewhere");
    let l = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(0))
        .unwrap()
        .unwrap();
    b.links
        .move_link(&Netns::Host, l.ifindex, &Netns::path(&other), "x")
        .unwrap();
    b.sync_sysfs();
    let e = b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap_err();
    assert_eq!(e.code, 102, "{e}");
    assert!(e.details.contains("ib_ipoib"), "{e:?}");
}

/// A VF bound to vfio-pci (a DPDK pool) has no netdev either: ADD names its driver, at
/// once, instead of waiting for the netdev and blaming a namespace.
#[test]
fn a_vf_on_another_driver_is_refused_for_its_driver_not_its_missing_netdev() {
    let b = Bench::new(1);
    let d = b.vf_dir(0);
    fs::create_dir_all(b.root().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    fs::remove_file(d.join("driver")).unwrap();
    std::os::unix::fs::symlink("../../drivers/vfio-pci", d.join("driver")).unwrap();
    fs::remove_dir_all(d.join("net")).unwrap();
    fs::create_dir_all(d.join("net")).unwrap();
    let e = b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(e.msg.contains("driver: found driver vfio-pci"), "{e}");
    assert_eq!(b.links.count(FakeOp::MoveLink), 0);
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// IPAM that gives an address twice: under the same prefix it is added once and ADD
/// succeeds; under two prefixes ADD fails, rolled back, with a hint about IPAM (not the
/// one about interface names that other EEXISTs get).
#[test]
fn an_address_ipam_gives_twice_is_added_once_or_refused_naming_ipam() {
    let b = Bench::new(1);
    for (name, second) in [("same-ipam", "10.1.0.5/24"), ("other-ipam", "10.1.0.5/16")] {
        b.ipam_script(
            name,
            &format!(
                r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.1.0.5/24"}},{{"address":"{second}"}}]}}'
exit 0"#
            ),
        );
    }
    let same = conf(0, r#""ipam":{"type":"same-ipam"}"#);
    for verb in ["ADD", "DEL"] {
        b.run(verb, "c1", Some(&b.pod), &same).unwrap();
        if verb == "ADD" {
            let pod = Netns::path(&b.pod);
            let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
            assert_eq!(b.links.addresses(&pod, l.ifindex).unwrap().len(), 1);
        }
    }

    let e = b
        .run(
            "ADD",
            "c2",
            Some(&b.pod),
            &conf(0, r#""ipam":{"type":"other-ipam"}"#),
        )
        .unwrap_err();
    assert_eq!(e.code, 103, "{e}");
    assert!(e.details.contains("IPAM"), "{e:?}");
    assert!(!e.details.contains("CNI_IFNAME"), "{e:?}");
    assert!(is_home(&b, 0));
}

#[test]
fn check_compares_with_prev_result_and_readiness() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &format!(r#""mtu":4000,{ipam}"#));
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let with_prev = |prev: &str| {
        let mut v: Value = serde_json::from_str(&c).unwrap();
        v["prevResult"] = serde_json::from_str(prev).unwrap();
        v.to_string()
    };
    b.run("CHECK", "c1", Some(&b.pod), &with_prev(&out))
        .unwrap();
    assert!(ipam_log(&b).contains(&"CHECK c1 net1".to_string()));

    // Above what ADD set: IPoIB (the bench's VFs) never raises it by itself.
    let pod = Netns::path(&b.pod);
    let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    b.links.set_mtu(&pod, l.ifindex, 5000).unwrap();
    let e = b
        .run("CHECK", "c1", Some(&b.pod), &with_prev(&out))
        .unwrap_err();
    assert_eq!(e.code, 107);
    assert!(e.msg.contains("MTU 5000"), "{e}");
    b.links.set_mtu(&pod, l.ifindex, 4000).unwrap();

    b.set_port(0, "lid", "0x0");
    let e = b
        .run("CHECK", "c1", Some(&b.pod), &with_prev(&out))
        .unwrap_err();
    assert_eq!(e.code, 11);
    assert!(e.msg.contains("lid"), "{e}");

    let e = b
        .run("CHECK", "nobody", Some(&b.pod), &with_prev(&out))
        .unwrap_err();
    assert_eq!(e.code, 3);
}

/// With `rdmaIsolation` the host's sysfs no longer lists the VF's RDMA device: CHECK reads
/// its port through RDMA netlink in the pod, and judges it as ADD's gate does.
#[test]
fn check_of_an_isolated_rdma_device_reads_its_port_in_the_pod() {
    let b = Bench::new(1);
    let c = conf(0, r#""rdmaIsolation":true"#);
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let mut v: Value = serde_json::from_str(&c).unwrap();
    v["prevResult"] = serde_json::from_str(&out).unwrap();
    let check = || b.run("CHECK", "c1", Some(&b.pod), &v.to_string());
    check().unwrap();
    assert!(
        b.links
            .calls()
            .iter()
            .any(|call| call.op == FakeOp::RdmaPort1
                && call.args.contains(&format!("{:?}", Netns::path(&b.pod)))),
        "read in the pod: {:?}",
        b.links.calls()
    );

    let good = b
        .links
        .rdma_port1(&Netns::path(&b.pod), &ibdev(0))
        .unwrap()
        .unwrap();
    let fails_with = |view: PortView, code: u32, words: &[&str]| {
        b.links.set_rdma_port1(&ibdev(0), view);
        let e = check().unwrap_err();
        assert_eq!(e.code, code, "{e}");
        for w in words {
            assert!(e.msg.contains(w), "{w:?} in {e}");
        }
    };
    fails_with(
        PortView {
            state: Some(1),
            phys_state: Some(3),
            ..good.clone()
        },
        11,
        &["port_state", "1: DOWN", "3: Disabled"],
    );
    fails_with(
        PortView {
            lid: Some(0),
            ..good.clone()
        },
        11,
        &["lid", "0x0"],
    );
    fails_with(
        PortView {
            sm_lid: Some(0),
            ..good.clone()
        },
        11,
        &["sm"],
    );
    fails_with(
        PortView {
            protocol: Some("roce".into()),
            lid: None,
            sm_lid: None,
            ..good.clone()
        },
        11,
        &["link_layer", "Ethernet"],
    );
    b.links.set_rdma_port1(&ibdev(0), good);
    check().unwrap();

    // The device is in the host again (mlx5_ib reloaded: the kernel registers a re-probed
    // device in the initial netns): the attachment is not what ADD made.
    b.links.add_rdma_device(&Netns::Host, &ibdev(0));
    let e = check().unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(
        e.msg.contains(&format!("RDMA device {} ", ibdev(0))) && e.msg.contains("is not in"),
        "{e}"
    );
}

/// The result of ADD with `prevResult` member `key` replaced, as CHECK's config.
fn with_prev_member(c: &str, out: &str, key: &str, value: Value) -> String {
    let mut prev: Value = serde_json::from_str(out).unwrap();
    prev[key] = value;
    let mut v: Value = serde_json::from_str(c).unwrap();
    v["prevResult"] = prev;
    v.to_string()
}

/// Without our entry in `prevResult` (named CNI_IFNAME, in CNI_NETNS) there is no MAC or
/// MTU to compare and no telling which addresses are ours: CHECK fails, naming what it
/// looked for and what the list holds, as the reference host-device plugin does.
#[test]
fn check_fails_when_prev_result_has_no_interface_named_cni_ifname_in_cni_netns() {
    let b = Bench::new(1);
    let c = conf(0, "");
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let ours: Value = serde_json::from_str::<Value>(&out).unwrap()["interfaces"][0].clone();
    let check = |interfaces: Value| {
        b.run(
            "CHECK",
            "c1",
            Some(&b.pod),
            &with_prev_member(&c, &out, "interfaces", interfaces),
        )
    };
    let looked_for = format!("no interface net1 in sandbox {}", b.pod.display());

    // Our name in another pod's sandbox, with a MAC that is not ours either.
    let mut elsewhere = ours.clone();
    elsewhere["sandbox"] = "/var/run/netns/some-other-pod".into();
    elsewhere["mac"] = "02:de:ad:be:ef:01".into();
    let e = check(serde_json::json!([elsewhere])).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(e.msg.contains(&looked_for), "{e}");
    assert!(
        e.msg
            .contains("it lists net1 in sandbox /var/run/netns/some-other-pod"),
        "{e}"
    );
    assert!(e.details.contains("recreate the pod"), "{e}");

    // Another name in our sandbox.
    let mut renamed = ours.clone();
    renamed["name"] = "eth0".into();
    let e = check(serde_json::json!([renamed])).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(e.msg.contains(&looked_for), "{e}");
    assert!(
        e.msg
            .contains(&format!("it lists eth0 in sandbox {}", b.pod.display())),
        "{e}"
    );

    // Our name without a sandbox: a host interface, as the spec has it.
    let mut on_host = ours.clone();
    on_host.as_object_mut().unwrap().remove("sandbox");
    let e = check(serde_json::json!([on_host])).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(e.msg.contains("it lists net1 (no sandbox)"), "{e}");

    // No interfaces at all.
    let e = check(serde_json::json!([])).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(e.msg.contains("it lists no interfaces"), "{e}");

    // The entry ADD made, after another plugin's.
    let mut theirs = ours.clone();
    theirs["name"] = "eth0".into();
    check(serde_json::json!([theirs, ours])).unwrap();
}

/// Routes carry no interface: CHECK looks up each route of `prevResult` in the pod's
/// tables (destination, gateway when given, table), through any link, as host-device does.
#[test]
fn check_fails_naming_a_route_of_prev_result_that_is_not_in_the_pod() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &ipam);
    let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
    let check = |routes: Value| {
        b.run(
            "CHECK",
            "c1",
            Some(&b.pod),
            &with_prev_member(&c, &out, "routes", routes),
        )
    };
    // ADD's own routes: the default one without a gateway in the result, one with.
    let added = serde_json::from_str::<Value>(&out).unwrap()["routes"].clone();
    assert_eq!(added.as_array().map(Vec::len), Some(2), "{added}");
    check(added).unwrap();
    // Host bits in the destination are no difference (ADD cleared them).
    check(serde_json::json!([{"dst":"10.2.3.4/16","gw":"10.1.0.254"}])).unwrap();

    // A route ADD never made.
    let e =
        check(serde_json::json!([{"dst":"0.0.0.0/0"},{"dst":"192.168.77.0/24","gw":"10.1.0.77"}]))
            .unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(
        e.msg
            .contains("route 192.168.77.0/24 via 10.1.0.77 from prevResult is not in")
            && e.msg
                .contains("found no route to 192.168.77.0/24 in any table"),
        "{e}"
    );
    assert!(e.details.contains("recreate the pod"), "{e}");

    // The destination through another gateway, or in another table: what is there is named.
    let e = check(serde_json::json!([{"dst":"10.2.0.0/16","gw":"10.1.0.99"}])).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(
        e.msg.contains("route 10.2.0.0/16 via 10.1.0.99")
            && e.msg
                .contains("found only 10.2.0.0/16 via 10.1.0.254 dev net1 table 254"),
        "{e}"
    );
    let e = check(serde_json::json!([{"dst":"10.2.0.0/16","table":101}])).unwrap_err();
    assert!(e.msg.contains("route 10.2.0.0/16 table 101"), "{e}");

    // A route of another link of the pod (a previous plugin's): found.
    let pod = Netns::path(&b.pod);
    let eth0 = b.links.add_link(&pod, "eth0");
    b.links.set_up(&pod, eth0, true).unwrap();
    b.links
        .add_route(
            &pod,
            eth0,
            crate::result::parse_ipnet("172.16.0.0/12").unwrap(),
            None,
        )
        .unwrap();
    check(serde_json::json!([{"dst":"172.16.0.0/12"},{"dst":"0.0.0.0/0"}])).unwrap();
}

/// IPoIB lowers its netdev's MTU to the broadcast group's when the port joins the fabric,
/// possibly after ADD returned (config 4092, group 2048: 2044). CHECK takes an IPoIB MTU at
/// or below the expected one, from prevResult and from the config, and refuses one above;
/// an Ethernet (RoCE) interface's must be exact.
#[test]
fn check_takes_an_ipoib_mtu_the_fabric_lowered_refuses_a_raised_one_and_keeps_ethernet_exact() {
    let b = Bench::new(2);
    b.roce(1);
    let pod_b = b.netns("pod-b");
    let check = |cid: &str, pod: &std::path::Path, c: &str, out: &str| {
        let mut v: Value = serde_json::from_str(c).unwrap();
        v["prevResult"] = serde_json::from_str(out).unwrap();
        b.run("CHECK", cid, Some(pod), &v.to_string())
    };

    let c_ib = conf(0, r#""mtu":4092"#);
    let out_ib = b.run("ADD", "ib", Some(&b.pod), &c_ib).unwrap().unwrap();
    let pod = Netns::path(&b.pod);
    let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert!(l.is_ipoib(), "{l:?}");
    check("ib", &b.pod, &c_ib, &out_ib).unwrap();
    b.links.set_mtu(&pod, l.ifindex, 2044).unwrap();
    check("ib", &b.pod, &c_ib, &out_ib).unwrap();
    b.links.set_mtu(&pod, l.ifindex, 4093).unwrap();
    let e = check("ib", &b.pod, &c_ib, &out_ib).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(
        e.msg
            .contains("net1 (IPoIB) has MTU 4093, expected 1 to 4092"),
        "{e}"
    );

    let c_roce = conf(1, r#""mtu":4092,"readiness":{"linkLayer":"Ethernet"}"#);
    let out_roce = b
        .run("ADD", "roce", Some(&pod_b), &c_roce)
        .unwrap()
        .unwrap();
    let pb = Netns::path(&pod_b);
    let l = b.links.link_by_name(&pb, "net1").unwrap().unwrap();
    assert!(!l.is_ipoib(), "{l:?}");
    check("roce", &pod_b, &c_roce, &out_roce).unwrap();
    b.links.set_mtu(&pb, l.ifindex, 2044).unwrap();
    let e = check("roce", &pod_b, &c_roce, &out_roce).unwrap_err();
    assert_eq!(e.code, 107, "{e}");
    assert!(e.msg.contains("net1 has MTU 2044, expected 4092"), "{e}");
}

#[test]
fn gc_reaps_only_attachments_not_listed() {
    let b = Bench::new(2);
    let ipam = with_ipam(&b);
    let pod_b = b.netns("pod-b");
    b.run("ADD", "keep", Some(&b.pod), &conf(0, &ipam)).unwrap();
    b.run_with(
        &crate::testutil::Mirror(&b),
        "ADD",
        "stale",
        "net1",
        Some(&pod_b),
        &conf(1, &ipam),
    )
    .unwrap();
    let mut gc: Value = serde_json::from_str(&conf(0, &ipam)).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID":"keep","ifname":"net1"}]);
    b.run("GC", "x", None, &gc.to_string()).unwrap();
    assert!(is_home(&b, 1));
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    let files = b.state_files();
    assert_eq!(files, vec!["0000:18:00.1_keep@net1.json".to_string()]);
    assert!(ipam_log(&b).contains(&"DEL stale net1".to_string()));
    // Another network's GC leaves ours alone.
    let mut other = gc.clone();
    other["name"] = "other-net".into();
    other["cni.dev/valid-attachments"] = serde_json::json!([]);
    b.run("GC", "x", None, &other.to_string()).unwrap();
    assert_eq!(
        b.state_files(),
        vec!["0000:18:00.1_keep@net1.json".to_string()]
    );
}

/// A GC whose list the runtime made before an ADD began cannot name that ADD's attachment:
/// while another railvf holds the VF's lock (the ADD still running), GC leaves the
/// attachment to the next GC instead of tearing it down once the ADD returns.
/// Waits until some thread is blocked on a `flock` of `dir` (the kernel lists a waiter in
/// /proc/locks with "->"); panics after 10 s.
fn wait_for_flock_waiter(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{}", fs::metadata(dir).unwrap().ino());
    for _ in 0..10_000 {
        let locks = fs::read_to_string("/proc/locks").unwrap();
        if locks
            .lines()
            .any(|l| l.contains("->") && l.split_whitespace().any(|f| f.ends_with(&ino)))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("nobody waited for the lock of {}", dir.display());
}

/// Holds VF `i`'s lock in another thread until a verb waits for it, then runs `then` and
/// lets the lock go. Returns once the lock is held; the handle gives `then`'s result.
fn hold_the_lock_until_waited_for<T: Send + 'static>(
    b: &Bench,
    i: u32,
    then: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let (state_dir, root, d) = (b.state_dir(), b.root(), b.vf_dir(i));
    let (held, is_held) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let root = railvf_host::HostRoot::new(root).unwrap();
        let lock = StateDir::new(state_dir)
            .lock_vf(&root, &vf_addr(i))
            .unwrap();
        held.send(()).unwrap();
        wait_for_flock_waiter(&d);
        let out = then();
        drop(lock);
        out
    });
    is_held.recv().unwrap();
    holder
}

/// ADD reads the VF again once its lock is ADD's own: the DEL or GC that held it may have
/// rebound the VF's driver (a GUID restore) meanwhile, so what ADD read before is stale.
#[test]
fn add_reads_the_vf_again_once_it_holds_the_lock() {
    let b = Bench::new(1);
    let d = b.vf_dir(0);
    let away = b.state_dir().with_file_name("infiniband-away");
    // Unbound, as in the middle of a rebind: no driver, no RDMA device.
    fs::remove_file(d.join("driver")).unwrap();
    fs::rename(d.join("infiniband"), &away).unwrap();
    let holder = hold_the_lock_until_waited_for(&b, 0, move || {
        // The rebind ends while ADD waits: bound again, its RDMA device back.
        std::os::unix::fs::symlink("../../drivers/mlx5_core", d.join("driver")).unwrap();
        fs::rename(&away, d.join("infiniband")).unwrap();
    });
    let out = b.run("ADD", "c1", Some(&b.pod), &conf(0, ""));
    holder.join().unwrap();
    out.unwrap();
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
}

/// An ADD killed inside its first state save (before the rename) leaves only the
/// temporary file; DEL of that attachment removes it.
#[test]
fn del_removes_the_temporary_file_of_a_save_killed_before_its_rename() {
    let b = Bench::new(1);
    fs::create_dir_all(b.state_dir()).unwrap();
    let tmp = b
        .state_dir()
        .join(format!(".{}_c1@net1.json.tmp", vf_addr(0)));
    fs::write(&tmp, "{\"schema\":").unwrap();
    // Another attachment's temporary file is not DEL's to remove.
    let other = b
        .state_dir()
        .join(format!(".{}_c2@net1.json.tmp", vf_addr(0)));
    fs::write(&other, "{").unwrap();
    b.run("DEL", "c1", Some(&b.pod), &conf(0, "")).unwrap();
    assert!(!tmp.exists());
    assert!(other.exists());
}

/// A repeated ADD that finds its attachment's file written by a newer railvf refuses with
/// code 5 and leaves the file and the VF alone, as DEL does; only a corrupt file is
/// replaced.
#[test]
fn a_repeated_add_leaves_a_newer_railvf_s_state_alone() {
    let b = Bench::new(1);
    b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap();
    let file = b.state_dir().join(&b.state_files()[0]);
    let text = fs::read_to_string(&file)
        .unwrap()
        .replacen("\"schema\": 1", "\"schema\": 99", 1);
    fs::write(&file, &text).unwrap();
    let e = b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap_err();
    assert_eq!(e.code, 5, "{e}");
    assert!(e.msg.contains("newer railvf"), "{e}");
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
}

/// DEL releases the address only once it holds the VF's lock: an ADD of the same
/// attachment still running (its runtime timed out and sent DEL) would otherwise allocate
/// after the release, and the address would leak.
#[test]
fn del_releases_ipam_under_the_vf_lock() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let log = b.dir.path().join("ipam.log");
    let holder =
        hold_the_lock_until_waited_for(&b, 0, move || fs::read_to_string(&log).unwrap_or_default());
    b.run("DEL", "c1", Some(&b.pod), &conf(0, &ipam)).unwrap();
    let seen_while_waiting = holder.join().unwrap();
    assert_eq!(
        seen_while_waiting, "",
        "IPAM DEL ran before DEL held the lock"
    );
    assert_eq!(ipam_log(&b), vec!["DEL c1 net1"]);
}

#[test]
fn gc_leaves_an_attachment_whose_vf_is_busy_to_the_next_gc() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    b.run("ADD", "new", Some(&b.pod), &conf(0, &ipam)).unwrap();
    // The lock is held by another thread until GC returns (at most 5 s: a GC that waited
    // for it would then tear the attachment down, and the test fail, not hang).
    let (state_dir, root) = (b.state_dir(), b.root());
    let (held, is_held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let root = railvf_host::HostRoot::new(root).unwrap();
        let sd = StateDir::new(state_dir);
        let lock = sd.lock_vf(&root, &vf_addr(0)).unwrap();
        held.send(sd.try_lock_vf(&root, &vf_addr(0)).unwrap().is_none())
            .unwrap();
        let _ = released.recv_timeout(Duration::from_secs(5));
        drop(lock);
    });
    assert!(is_held.recv().unwrap(), "try_lock_vf took a held lock");
    b.run("GC", "x", None, &gc_conf(serde_json::json!([])))
        .unwrap();
    let _ = release.send(());
    holder.join().unwrap();
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    assert_eq!(b.state_files().len(), 1);
    assert_eq!(ipam_log(&b), vec!["ADD new net1"]);

    b.run("GC", "x", None, &gc_conf(serde_json::json!([])))
        .unwrap();
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    assert_eq!(ipam_log(&b), vec!["ADD new net1", "DEL new net1"]);
}

#[test]
fn gc_and_status_below_1_1_0_are_refused_and_change_nothing() {
    let b = Bench::new(1);
    b.run("ADD", "live", Some(&b.pod), &conf(0, "")).unwrap();
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        let mut gc: Value = serde_json::from_str(&gc_conf(serde_json::json!([]))).unwrap();
        gc["cniVersion"] = v.into();
        let e = b.run("GC", "x", None, &gc.to_string()).unwrap_err();
        assert_eq!(e.code, 1, "{v}: {e}");
        assert!(e.msg.contains("GC") && e.msg.contains(v), "{e}");
        let mut st: Value = serde_json::from_str(&conf(0, "")).unwrap();
        st["cniVersion"] = v.into();
        let e = b.run("STATUS", "x", None, &st.to_string()).unwrap_err();
        assert_eq!(e.code, 1, "{v}: {e}");
    }
    // The live attachment is untouched.
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    assert_eq!(
        b.state_files(),
        vec!["0000:18:00.1_live@net1.json".to_string()]
    );
}

#[test]
fn gc_takes_the_attachment_list_under_its_first_1_1_0_name_too() {
    let b = Bench::new(2);
    let pod_b = b.netns("pod-b");
    b.run("ADD", "keep", Some(&b.pod), &conf(0, "")).unwrap();
    b.run("ADD", "stale", Some(&pod_b), &conf(1, "")).unwrap();
    let mut gc: Value = serde_json::from_str(&conf(0, "")).unwrap();
    gc["cni.dev/attachments"] = serde_json::json!([{"containerID":"keep","ifname":"net1"}]);
    b.run("GC", "x", None, &gc.to_string()).unwrap();
    assert!(is_home(&b, 1));
    assert_eq!(
        b.state_files(),
        vec!["0000:18:00.1_keep@net1.json".to_string()]
    );
}

/// libcni sends the runtime's nil list as `null` (both keys) when no pod uses the network,
/// as CRI-O does: every attachment of the network is stale then. A config without the list
/// still cannot tell stale from live and is refused.
#[test]
fn gc_with_a_null_valid_attachments_list_tears_down_every_attachment_and_forwards_gc_to_ipam() {
    let b = Bench::new(2);
    let log = b.dir.path().join("ipam.log");
    b.ipam_script(
        "gc-ipam",
        &format!(
            r#"cat >/dev/null; echo "$CNI_COMMAND $CNI_CONTAINERID" >> {}
case "$CNI_COMMAND" in
ADD) echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.1.0.5/24"}}]}}' ;;
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
esac
exit 0"#,
            log.display()
        ),
    );
    let ipam = r#""ipam":{"type":"gc-ipam"}"#;
    let pod_b = b.netns("pod-b");
    b.run("ADD", "a", Some(&b.pod), &conf(0, ipam)).unwrap();
    b.run("ADD", "b", Some(&pod_b), &conf(1, ipam)).unwrap();
    let mut gc: Value = serde_json::from_str(&conf(0, ipam)).unwrap();
    gc["cni.dev/valid-attachments"] = Value::Null;
    gc["cni.dev/attachments"] = Value::Null;
    b.run("GC", "x", None, &gc.to_string()).unwrap();
    assert!(is_home(&b, 0) && is_home(&b, 1));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    let calls = ipam_log(&b);
    for want in ["DEL a", "DEL b", "GC "] {
        assert!(calls.iter().any(|c| c == want), "{want:?} in {calls:?}");
    }

    b.run("ADD", "c", Some(&b.pod), &conf(0, ipam)).unwrap();
    let o = gc.as_object_mut().unwrap();
    o.remove("cni.dev/valid-attachments");
    o.remove("cni.dev/attachments");
    let e = b.run("GC", "x", None, &gc.to_string()).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert_eq!(b.state_files().len(), 1, "{:?}", b.state_files());
}

#[test]
fn status_says_when_the_plugin_cannot_work() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    b.run("STATUS", "x", None, &conf(0, &ipam)).unwrap();
    let e = b
        .run("STATUS", "x", None, &conf(0, r#""ipam":{"type":"absent"}"#))
        .unwrap_err();
    assert_eq!(e.code, 50);
    fs::remove_dir_all(b.root().join("sys")).unwrap();
    let e = b.run("STATUS", "x", None, &conf(0, "")).unwrap_err();
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("PCI devices"), "{e}");
}

#[test]
fn rdma_isolation_moves_the_rdma_device_and_back() {
    let b = Bench::new(1);
    let c = conf(0, r#""rdmaIsolation":true"#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(
        b.links.rdma_device_netns("mlx5_12"),
        Some(Netns::path(&b.pod))
    );
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.links.rdma_device_netns("mlx5_12"), Some(Netns::Host));

    // No RDMA subsystem: ADD fails saying so and rolls back.
    b.links.set_rdma_mode(RdmaMode::Absent);
    let e = b.run("ADD", "c2", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 103, "{e}");
    assert!(e.msg.contains("mlx5_12"), "{e}");
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty());
}

/// Both places a kernel's IPoIB puts the netdev it re-creates when the RDMA device moves.
const IPOIB_NETNS: [IpoibNetns; 2] = [IpoibNetns::Initial, IpoibNetns::RdmaDevice];

/// An InfiniBand bench whose VF 0 has a host MTU other than IPoIB's default, so that a
/// re-created netdev (default MTU) is told apart from one whose MTU DEL restored.
fn ib_bench(at: IpoibNetns) -> Bench {
    let b = Bench::new(1);
    b.links.set_ipoib_netns(at);
    b.links
        .set_mtu(&Netns::Host, b.vf_ifindex[0], 2044)
        .unwrap();
    b
}

/// VF 0 is home: its netdev on the host under its name with its MTU, its RDMA device in
/// the host netns, no other netdev of it anywhere, no state.
fn ib_home(b: &Bench, what: &str) {
    assert_eq!(
        b.links.ipoib_netdev(&ibdev(0)).map(|(ns, l)| (ns, l.name)),
        Some((Netns::Host, vf_netdev(0))),
        "{what}"
    );
    let l = b
        .links
        .link_by_name(&Netns::Host, &vf_netdev(0))
        .unwrap()
        .unwrap();
    assert_eq!(l.mtu, 2044, "{what}: MTU restored");
    assert_eq!(
        b.links.rdma_device_netns(&ibdev(0)),
        Some(Netns::Host),
        "{what}"
    );
    assert!(b.whereis("net1").is_empty(), "{what}");
    assert!(b.state_files().is_empty(), "{what}: {:?}", b.state_files());
}

#[test]
fn rdma_isolation_on_an_infiniband_vf_attaches_the_netdev_ipoib_recreates() {
    for at in IPOIB_NETNS {
        let b = ib_bench(at);
        let ipam = with_ipam(&b);
        let c = conf(0, &format!(r#""mtu":4000,"rdmaIsolation":true,{ipam}"#));
        let out = b.run("ADD", "c1", Some(&b.pod), &c).unwrap().unwrap();
        let r: Value = serde_json::from_str(&out).unwrap();
        let pod = Netns::path(&b.pod);
        let l = b
            .links
            .link_by_name(&pod, "net1")
            .unwrap()
            .unwrap_or_else(|| panic!("{at:?}: net1 is not in the pod"));
        assert!(l.up, "{at:?}");
        assert_eq!(l.mtu, 4000, "{at:?}");
        assert_eq!(r["interfaces"][0]["mac"], l.mac, "{at:?}");
        assert_eq!(r["interfaces"][0]["mtu"], 4000, "{at:?}");
        assert!(
            b.links
                .addresses(&pod, l.ifindex)
                .unwrap()
                .contains(&IpNet {
                    addr: "10.1.0.5".parse().unwrap(),
                    prefix: 24
                }),
            "{at:?}"
        );
        assert!(
            b.links
                .routes(&pod)
                .iter()
                .any(|r| r.dst.prefix == 0 && r.oif == l.ifindex),
            "{at:?}"
        );
        // net1 is the VF's netdev, the one IPoIB re-created, and there is no other.
        assert_eq!(
            b.links.ipoib_netdev(&ibdev(0)),
            Some((pod.clone(), l.clone())),
            "{at:?}"
        );
        assert_ne!(l.ifindex, b.vf_ifindex[0], "{at:?}: re-created");
        assert!(
            b.links
                .host_links_of_device(&vf_addr(0).to_string())
                .is_empty(),
            "{at:?}"
        );
        assert_eq!(b.links.rdma_device_netns(&ibdev(0)), Some(pod), "{at:?}");
        // CHECK agrees with the result.
        let mut v: Value = serde_json::from_str(&c).unwrap();
        v["prevResult"] = r;
        b.run("CHECK", "c1", Some(&b.pod), &v.to_string()).unwrap();

        b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
        ib_home(&b, &format!("{at:?}"));
        assert_eq!(
            ipam_log(&b),
            vec!["ADD c1 net1", "CHECK c1 net1", "DEL c1 net1"]
        );
    }
}

#[test]
fn del_of_an_isolated_infiniband_vf_after_its_netns_died_renames_the_recreated_netdev() {
    for at in IPOIB_NETNS {
        let b = ib_bench(at);
        let c = conf(0, r#""rdmaIsolation":true"#);
        let pod = b.netns("pod-gone");
        b.run("ADD", "c1", Some(&pod), &c).unwrap();
        // The kernel returns the RDMA device, and IPoIB re-creates the netdev in the host
        // under a kernel name.
        b.delete_netns(&pod);
        assert_eq!(b.whereis("ib0"), vec![Netns::Host], "{at:?}");
        b.run("DEL", "c1", None, &c).unwrap();
        ib_home(&b, &format!("{at:?}"));
        assert!(b.whereis("ib0").is_empty(), "{at:?}");
    }
}

#[test]
fn rollback_of_an_isolated_infiniband_vf_brings_the_netdev_and_rdma_device_home() {
    for at in IPOIB_NETNS {
        // A failure after both moves (the address): the RDMA device goes home first, and
        // the netdev IPoIB re-creates in the host gets its name back.
        let b = ib_bench(at);
        let ipam = with_ipam(&b);
        let c = conf(0, &format!(r#""rdmaIsolation":true,{ipam}"#));
        b.links
            .fail_once(FakeOp::AddAddress, Inject::Errno(libc::EINVAL));
        let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
        assert_eq!(e.code, 103, "{at:?}: {e}");
        assert!(e.details.contains("rolled back"), "{at:?}: {e}");
        ib_home(&b, &format!("{at:?} address"));
        assert_eq!(ipam_log(&b), vec!["ADD c1 net1", "DEL c1 net1"], "{at:?}");

        // A readiness timeout: the gate runs before either move (the host's sysfs stops
        // showing the RDMA device once it moves), so nothing moved and IPAM never ran.
        let b = ib_bench(at);
        let ipam = with_ipam(&b);
        b.set_port(0, "lid", "0x0");
        let c = conf(
            0,
            &format!(r#""rdmaIsolation":true,{ipam},"readiness":{{"timeoutMs":100}}"#),
        );
        let e = b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err();
        assert_eq!(e.code, 11, "{at:?}: {e}");
        assert!(e.details.contains("rolled back"), "{at:?}: {e}");
        ib_home(&b, &format!("{at:?} readiness"));
        assert_eq!(b.links.count(FakeOp::MoveLink), 0, "{at:?}");
        assert!(ipam_log(&b).is_empty(), "{at:?}");
    }
}

#[test]
fn an_infiniband_netdev_ipoib_does_not_recreate_fails_add_clearly_and_rolls_back() {
    let b = ib_bench(IpoibNetns::Initial);
    let c = conf(0, r#""rdmaIsolation":true"#);
    b.links.set_ipoib_fails(true);
    let e = std::thread::scope(|s| {
        // ib_ipoib registers netdevs again once ADD's move has failed to (as after a
        // transient error), so the rollback finds one.
        s.spawn(|| {
            while b.links.count(FakeOp::MoveRdmaDevice) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            b.links.set_ipoib_fails(false);
        });
        b.run("ADD", "c1", Some(&b.pod), &c).unwrap_err()
    });
    assert_eq!(e.code, 102, "{e}");
    assert!(
        e.msg.contains("mlx5_12")
            && e.msg.contains("0000:18:00.1")
            && e.msg.contains("found none after 2000 ms"),
        "{e}"
    );
    assert!(e.details.contains("ib_ipoib"), "{e}");
    assert!(e.details.contains("rolled back"), "{e}");
    ib_home(&b, "rollback");
}

/// Runs `verb` with `op`'s `nth` next call killing the process (`Inject::Kill*`).
fn killed(b: &Bench, verb: &str, op: FakeOp, nth: usize, how: Inject, c: &str) {
    b.links.fail_nth(op, nth, how);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.run(verb, "c1", Some(&b.pod), c)
    }));
    assert!(r.is_err(), "{verb} was not killed at {op:?}: {r:?}");
    b.links.clear_failures();
    // sysfs follows the kernel whatever becomes of the process.
    b.sync_sysfs();
}

#[test]
fn del_converges_after_add_of_an_isolated_infiniband_vf_is_killed_anywhere() {
    // (what, operation, which call, before or after it takes effect)
    let points = [
        (
            "after the RDMA move",
            FakeOp::MoveRdmaDevice,
            1,
            Inject::KillAfterEffect,
        ),
        ("before the netdev move", FakeOp::MoveLink, 1, Inject::Kill),
        (
            "before the rename in the pod",
            FakeOp::Rename,
            1,
            Inject::Kill,
        ),
        (
            "after the netdev is up",
            FakeOp::SetUp,
            1,
            Inject::KillAfterEffect,
        ),
        (
            "after the address",
            FakeOp::AddAddress,
            1,
            Inject::KillAfterEffect,
        ),
    ];
    for at in IPOIB_NETNS {
        for (what, op, nth, how) in points.iter().cloned() {
            // Each kind of kernel renames in the pod or moves, not both.
            let skip = match at {
                IpoibNetns::Initial => op == FakeOp::Rename,
                IpoibNetns::RdmaDevice => op == FakeOp::MoveLink,
            };
            if skip {
                continue;
            }
            for then in ["DEL", "netns dies, DEL", "udev names it, DEL"] {
                let what = format!("{at:?}, killed {what}, {then}");
                let b = ib_bench(at);
                let ipam = with_ipam(&b);
                let c = conf(0, &format!(r#""rdmaIsolation":true,{ipam}"#));
                killed(&b, "ADD", op, nth, how.clone(), &c);
                assert_eq!(b.state_files().len(), 1, "{what}");
                let netns = match then {
                    "netns dies, DEL" => {
                        b.delete_netns(&b.pod);
                        None
                    }
                    "udev names it, DEL" => {
                        // udev gives a netdev IPoIB re-created in the host its
                        // persistent name, the one the state records.
                        if let Some(l) = b
                            .links
                            .host_links_of_device(&vf_addr(0).to_string())
                            .first()
                            && l.name != vf_netdev(0)
                        {
                            b.links
                                .rename(&Netns::Host, l.ifindex, &vf_netdev(0))
                                .unwrap();
                            b.sync_sysfs();
                        }
                        Some(b.pod.as_path())
                    }
                    _ => Some(b.pod.as_path()),
                };
                b.run("DEL", "c1", netns, &c)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                ib_home(&b, &what);
                assert!(b.whereis("ib0").is_empty(), "{what}");
                // And the VF attaches again.
                if netns.is_some() {
                    b.run("ADD", "c2", Some(&b.pod), &c)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    b.run("DEL", "c2", Some(&b.pod), &c).unwrap();
                    ib_home(&b, &what);
                }
            }
        }
    }
}

#[test]
fn a_del_of_an_isolated_infiniband_vf_killed_anywhere_is_finished_by_the_next() {
    let points = [
        (FakeOp::MoveRdmaDevice, Inject::KillAfterEffect),
        (FakeOp::Rename, Inject::Kill),
        (FakeOp::Rename, Inject::KillAfterEffect),
        (FakeOp::SetMtu, Inject::Kill),
    ];
    for at in IPOIB_NETNS {
        for (op, how) in points.iter().cloned() {
            let what = format!("{at:?}, DEL killed at {op:?} ({how:?})");
            let b = ib_bench(at);
            let c = conf(0, r#""rdmaIsolation":true"#);
            b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
            // The DEL's own calls from here on (the rename in the pod is ADD's).
            killed(&b, "DEL", op, 1, how, &c);
            b.run("DEL", "c1", Some(&b.pod), &c)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            ib_home(&b, &what);
        }
    }
}

/// An InfiniBand ADD with `rdmaIsolation` killed just after its RDMA device moved, whose
/// state file was then cut after `rdmaDevice` (before `ipam`).
fn killed_between_the_moves_with_a_cut_state(b: &Bench, c: &str) {
    killed(
        b,
        "ADD",
        FakeOp::MoveRdmaDevice,
        1,
        Inject::KillAfterEffect,
        c,
    );
    let file = b.state_dir().join(&b.state_files()[0]);
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, &text[..text.find("\n  \"ipam\"").unwrap()]).unwrap();
}

#[test]
fn an_unreadable_state_does_not_leave_the_rdma_device_in_the_pod() {
    // ADD killed between the moves; udev gave the re-created netdev its old name; the
    // state file is cut after `rdmaDevice`. The netdev looks home, the RDMA device is not.
    let b = ib_bench(IpoibNetns::Initial);
    let c = conf(0, r#""rdmaIsolation":true"#);
    killed_between_the_moves_with_a_cut_state(&b, &c);
    let l = b.links.host_links_of_device(&vf_addr(0).to_string())[0].clone();
    b.links
        .rename(&Netns::Host, l.ifindex, &vf_netdev(0))
        .unwrap();
    b.sync_sysfs();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.links.rdma_device_netns(&ibdev(0)), Some(Netns::Host));
    assert_eq!(
        b.links.ipoib_netdev(&ibdev(0)).map(|(ns, l)| (ns, l.name)),
        Some((Netns::Host, vf_netdev(0)))
    );
    assert!(b.state_files().is_empty());
}

#[test]
fn rdma_isolation_on_a_roce_vf_moves_the_netdev_first_and_keeps_it() {
    let b = Bench::new(1);
    b.roce(0);
    b.set_port(0, "lid", "0x0");
    b.set_port(0, "sm_lid", "0x0");
    let c = conf(
        0,
        r#""rdmaIsolation":true,"readiness":{"linkLayer":"Ethernet","timeoutMs":100}"#,
    );
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let pod = Netns::path(&b.pod);
    let l = b.links.link_by_name(&pod, "net1").unwrap().unwrap();
    assert_eq!(l.ifindex, b.vf_ifindex[0], "the same netdev");
    assert_eq!(b.links.rdma_device_netns(&ibdev(0)), Some(pod));
    let order: Vec<FakeOp> = b
        .links
        .calls()
        .into_iter()
        .map(|c| c.op)
        .filter(|op| matches!(op, FakeOp::MoveLink | FakeOp::MoveRdmaDevice))
        .collect();
    assert_eq!(order, vec![FakeOp::MoveLink, FakeOp::MoveRdmaDevice]);
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert!(is_home(&b, 0));
    assert_eq!(b.links.rdma_device_netns(&ibdev(0)), Some(Netns::Host));
    assert!(b.state_files().is_empty());
}

#[test]
fn a_stale_attachment_of_the_same_container_is_replaced() {
    let b = Bench::new(1);
    let ipam = with_ipam(&b);
    let c = conf(0, &ipam);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    // The runtime repeats ADD (it lost our answer): converge, then attach again.
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    assert_eq!(
        ipam_log(&b),
        vec!["ADD c1 net1", "DEL c1 net1", "ADD c1 net1"]
    );
    let _ = vf_addr(0);
}

/// Waits (up to 5 s) until VF `i` runs with `guid` (the fake driver applies it after a bind).
fn wait_for_guid(b: &Bench, i: u32, guid: &str) {
    wait_for_guid_in(&format!("VF {i} runs with"), guid, || {
        fs::read_to_string(b.node_guid_file(i))
            .ok()
            .and_then(|s| s.trim().parse::<railvf_host::Guid>().ok())
    });
}

/// Waits (up to 5 s) until `read` gives `guid`; `what` says whose GUID it is.
fn wait_for_guid_in(what: &str, guid: &str, read: impl Fn() -> Option<railvf_host::Guid>) {
    let want: railvf_host::Guid = guid.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = read();
        if now == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} {now:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A DEL killed between writing the OFED `node` and `port` files, on a driver that showed
/// the node GUID already: the next DEL must not take the node GUID for "restored".
#[test]
fn a_guid_restore_killed_between_node_and_port_is_finished_by_the_next_del() {
    let b = Bench::new(1);
    let (before, c) = add_with_pod_guid(&b);
    wait_for_guid(&b, 0, "02:00:00:00:00:00:aa:01");
    let bind = b.root().join("sys/bus/pci/drivers/mlx5_core/bind");
    fs::write(&bind, "").unwrap();
    // What the killed DEL left: `node` back, the VF running with it, `port` still the pod's.
    fs::write(b.sriov_file(0, "node"), &before).unwrap();
    fs::write(b.node_guid_file(0), &before).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        "02:00:00:00:00:00:aa:01\n"
    );

    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(fs::read_to_string(b.sriov_file(0, "port")).unwrap(), before);
    assert_eq!(
        fs::read_to_string(&bind).unwrap(),
        "0000:18:00.1",
        "rebound"
    );
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn a_guid_restore_whose_rebind_failed_is_rebound_by_the_next_del() {
    let b = Bench::new(1);
    let (before, c) = add_with_pod_guid(&b);
    wait_for_guid(&b, 0, "02:00:00:00:00:00:aa:01");

    // The driver refuses the bind: the file is restored, the VF still runs with the pod's.
    let bind = b.root().join("sys/bus/pci/drivers/mlx5_core/bind");
    fs::remove_file(&bind).unwrap();
    fs::create_dir(&bind).unwrap();
    let e = b.run("DEL", "c1", Some(&b.pod), &c).unwrap_err();
    assert_eq!(e.code, 106, "{e}");
    assert!(e.msg.contains("rebinding"), "{e}");
    assert!(e.details.contains("kept"), "{e:?}");
    assert_eq!(fs::read_to_string(b.sriov_file(0, "node")).unwrap(), before);
    assert_eq!(b.state_files().len(), 1);

    // The next DEL owes the rebind, though the file already reads back the old GUID.
    fs::remove_dir(&bind).unwrap();
    fs::write(&bind, "").unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(fs::read_to_string(&bind).unwrap(), "0000:18:00.1");
    wait_for_guid(&b, 0, before.trim());
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn add_rebinds_when_the_guid_is_written_but_not_in_effect() {
    let b = Bench::new(1);
    b.fake_driver();
    // Written by someone (an ADD killed before its rebind), never bound since.
    fs::write(b.sriov_file(0, "node"), "02:00:00:00:00:00:aa:02\n").unwrap();
    let c = conf(0, r#""guid":"02:00:00:00:00:00:aa:02""#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    let bind = b.root().join("sys/bus/pci/drivers/mlx5_core/bind");
    assert_eq!(fs::read_to_string(&bind).unwrap(), "0000:18:00.1");
    wait_for_guid(&b, 0, "02:00:00:00:00:00:aa:02");
}

/// VF 0's GUIDs as `setup-vfs` sets them, node and port apart (docs/host-setup.md), in the
/// OFED files (when there) and as the VF runs with them.
const HOST_NODE: &str = "02:00:00:00:00:00:00:05";
const HOST_PORT: &str = "06:00:00:00:00:00:00:05";

fn host_guids_apart(b: &Bench) {
    let (node, port): (railvf_host::Guid, railvf_host::Guid) =
        (HOST_NODE.parse().unwrap(), HOST_PORT.parse().unwrap());
    if b.sriov_file(0, "node").exists() {
        fs::write(b.sriov_file(0, "node"), format!("{HOST_NODE}\n")).unwrap();
        fs::write(b.sriov_file(0, "port"), format!("{HOST_PORT}\n")).unwrap();
    }
    fs::write(b.node_guid_file(0), format!("{node}\n")).unwrap();
    b.set_port(0, "gids/0", &format!("fe80:0000:0000:0000:{port}"));
}

/// Waits (up to 5 s) until VF `i`'s port shows the port GUID `guid` in GID 0.
fn wait_for_port_guid(b: &Bench, i: u32, guid: &str) {
    wait_for_guid_in(&format!("VF {i}'s port shows"), guid, || {
        fs::read_to_string(b.port_file(i, "gids/0"))
            .ok()
            .and_then(|s| s.trim().parse::<railvf_host::attr::Gid>().ok())
            .map(|g| g.interface_id())
    });
}

/// The subnet manager keys LIDs and partitions on the port GUID: DEL gives the VF back its
/// own port GUID, not its node GUID.
#[test]
fn del_restores_node_and_port_guid_each_to_its_own_through_ofed_files() {
    let b = Bench::new(1);
    host_guids_apart(&b);
    let (_, c) = add_with_pod_guid(&b);
    for f in ["node", "port"] {
        assert_eq!(
            fs::read_to_string(b.sriov_file(0, f)).unwrap(),
            "02:00:00:00:00:00:aa:01\n",
            "{f}"
        );
    }
    wait_for_port_guid(&b, 0, "02:00:00:00:00:00:aa:01");
    let st = b.state_files();
    let text = fs::read_to_string(b.state_dir().join(&st[0])).unwrap();
    assert!(
        text.contains("\"previousPort\": \"0600:0000:0000:0005\""),
        "{text}"
    );

    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "node")).unwrap(),
        format!("{HOST_NODE}\n")
    );
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        format!("{HOST_PORT}\n")
    );
    wait_for_guid(&b, 0, HOST_NODE);
    wait_for_port_guid(&b, 0, HOST_PORT);
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn del_restores_node_and_port_guid_each_to_its_own_through_netlink() {
    let b = Bench::new(1);
    fs::remove_dir_all(b.sriov_file(0, "node").parent().unwrap()).unwrap();
    host_guids_apart(&b);
    let c = conf(0, r#""guid":"02:00:00:00:00:00:bb:02""#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    let vf = b.links.vf(b.pf_ifindex, 0).unwrap();
    assert_eq!(vf.node_guid, HOST_NODE.parse().unwrap());
    assert_eq!(vf.port_guid, HOST_PORT.parse().unwrap());
    wait_for_port_guid(&b, 0, HOST_PORT);
}

/// A state file cut short after its `guid` record: DEL still restores both GUIDs from it.
#[test]
fn an_unreadable_state_still_restores_node_and_port_guid_each_to_its_own() {
    let b = Bench::new(1);
    host_guids_apart(&b);
    let (_, c) = add_with_pod_guid(&b);
    wait_for_port_guid(&b, 0, "02:00:00:00:00:00:aa:01");
    let file = b.state_dir().join(&b.state_files()[0]);
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, &text[..text.find("\n  \"moving\"").unwrap()]).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        format!("{HOST_PORT}\n")
    );
    wait_for_port_guid(&b, 0, HOST_PORT);
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// A state file of an earlier railvf records only the node GUID: its DEL still converges,
/// restoring that to both, as the railvf that wrote it would have.
#[test]
fn a_state_file_without_the_previous_port_guid_restores_the_node_guid_to_both() {
    let b = Bench::new(1);
    host_guids_apart(&b);
    let (_, c) = add_with_pod_guid(&b);
    let file = b.state_dir().join(&b.state_files()[0]);
    let mut st: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        st["guid"]
            .as_object_mut()
            .unwrap()
            .remove("previousPort")
            .is_some()
    );
    fs::write(&file, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    for f in ["node", "port"] {
        assert_eq!(
            fs::read_to_string(b.sriov_file(0, f)).unwrap(),
            format!("{HOST_NODE}\n"),
            "{f}"
        );
    }
    assert!(is_home(&b, 0));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// A VF whose node GUID already is the pod's but whose port GUID is not: ADD still sets
/// the port GUID and rebinds.
#[test]
fn add_sets_the_guid_when_only_the_node_guid_already_has_it() {
    let b = Bench::new(1);
    host_guids_apart(&b);
    b.fake_driver();
    let c = conf(0, &format!(r#""guid":"{HOST_NODE}""#));
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        format!("{HOST_NODE}\n")
    );
    wait_for_port_guid(&b, 0, HOST_NODE);
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(
        fs::read_to_string(b.sriov_file(0, "port")).unwrap(),
        format!("{HOST_PORT}\n")
    );
}

#[test]
fn a_failed_add_and_gc_touch_only_their_own_attachment_when_ids_share_a_suffix() {
    let b = Bench::new(2);
    // "x_c1" on VF 0; "c1" on VF 1 fails its readiness and rolls back.
    b.run("ADD", "x_c1", Some(&b.pod), &conf(0, "")).unwrap();
    let pod2 = b.netns("pod2");
    b.set_port(1, "lid", "0x0");
    let e = b
        .run(
            "ADD",
            "c1",
            Some(&pod2),
            &conf(1, r#""readiness":{"timeoutMs":100}"#),
        )
        .unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert_eq!(b.state_files(), vec!["0000:18:00.1_x_c1@net1.json"]);

    // "c1" again, healthy this time; then GC with only "x_c1" valid.
    b.set_port(1, "lid", "0x21");
    b.run("ADD", "c1", Some(&pod2), &conf(1, "")).unwrap();
    let mut gc: Value = serde_json::from_str(&conf(0, "")).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "x_c1", "ifname": "net1"}]);
    b.run("GC", "-", None, &gc.to_string()).unwrap();
    assert_eq!(b.state_files(), vec!["0000:18:00.1_x_c1@net1.json"]);
    assert!(is_home(&b, 1));
    assert_eq!(
        b.links
            .link_by_index(&Netns::path(&b.pod), b.vf_ifindex[0])
            .unwrap()
            .map(|l| l.name),
        Some("net1".to_string())
    );
    b.run("DEL", "x_c1", Some(&b.pod), &conf(0, "")).unwrap();
    assert!(is_home(&b, 0) && b.state_files().is_empty());
}

/// Two ADDs of one attachment (c1/net1) with different VFs (a runtime retrying with
/// another deviceID) run at once, each under its own VF's lock, and both pass their check
/// for another file of it before either has saved: `won` is VF 1's file (c1/net1 in
/// `pod2`), held back in the returned path until the test puts it in place.
fn raced_attachment(b: &Bench, pod2: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    b.run("ADD", "c1", Some(pod2), &conf(1, "")).unwrap();
    let won = b.state_dir().join("0000:18:00.2_c1@net1.json");
    let held = b.dir.path().join("held.json");
    fs::rename(&won, &held).unwrap();
    (won, held)
}

#[test]
fn a_failed_add_leaves_the_state_of_the_same_attachment_on_another_vf_alone() {
    let b = Bench::new(2);
    let pod2 = b.netns("pod2");
    let (won, held) = raced_attachment(&b, &pod2);
    // The ADD on VF 0 fails in its IPAM plugin, after VF 1's ADD has saved.
    b.ipam_script(
        "late-ipam",
        &format!(
            r#"cat >/dev/null; [ "$CNI_COMMAND" = ADD ] && mv {} {} && exit 1; exit 0"#,
            held.display(),
            won.display()
        ),
    );
    b.run(
        "ADD",
        "c1",
        Some(&b.pod),
        &conf(0, r#""ipam":{"type":"late-ipam"}"#),
    )
    .unwrap_err();
    assert!(is_home(&b, 0));
    assert_eq!(b.state_files(), vec!["0000:18:00.2_c1@net1.json"]);
    b.run("DEL", "c1", Some(&pod2), &conf(1, "")).unwrap();
    assert!(is_home(&b, 1) && b.state_files().is_empty());
}

/// GC tears down a stale c1/net1 on VF 0 while an ADD of c1/net1 on VF 1 saves its state:
/// GC removes the file it tore down, not the new one.
#[test]
fn gc_leaves_a_file_of_the_same_attachment_another_add_wrote_meanwhile_alone() {
    let b = Bench::new(2);
    let pod2 = b.netns("pod2");
    let (won, held) = raced_attachment(&b, &pod2);
    b.ipam_script(
        "late-ipam",
        &format!(
            r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.1.0","ips":[]}}'
[ "$CNI_COMMAND" = DEL ] && mv {} {}
exit 0"#,
            held.display(),
            won.display()
        ),
    );
    b.run(
        "ADD",
        "c1",
        Some(&b.pod),
        &conf(0, r#""ipam":{"type":"late-ipam"}"#),
    )
    .unwrap();
    b.run("GC", "-", None, &gc_conf(serde_json::json!([])))
        .unwrap();
    assert!(is_home(&b, 0));
    assert_eq!(b.state_files(), vec!["0000:18:00.2_c1@net1.json"]);
    assert_eq!(b.whereis("net1"), vec![Netns::path(&pod2)]);
    b.run("DEL", "c1", Some(&pod2), &conf(1, "")).unwrap();
    assert!(is_home(&b, 1) && b.state_files().is_empty());
}

/// Both ADDs of x/net1 saved; then VF 0's pod died, and an ADD takes VF 0 over: it removes
/// the stale file on VF 0, not x/net1's on VF 1, whose VF is still in its pod.
#[test]
fn a_takeover_removes_the_stale_file_on_its_vf_only() {
    let b = Bench::new(2);
    let (pod2, pod3) = (b.netns("pod2"), b.netns("pod3"));
    b.run("ADD", "x", Some(&pod2), &conf(1, "")).unwrap();
    let on1 = b.state_dir().join("0000:18:00.2_x@net1.json");
    let held = b.dir.path().join("held.json");
    fs::rename(&on1, &held).unwrap();
    b.run("ADD", "x", Some(&pod3), &conf(0, "")).unwrap();
    fs::rename(&held, &on1).unwrap();
    b.delete_netns(&pod3);

    b.run("ADD", "new", Some(&b.pod), &conf(0, "")).unwrap();
    let mut left = b.state_files();
    left.sort();
    assert_eq!(
        left,
        vec!["0000:18:00.1_new@net1.json", "0000:18:00.2_x@net1.json"]
    );
    b.run("DEL", "x", Some(&pod2), &conf(1, "")).unwrap();
    assert!(is_home(&b, 1));
}

/// GC of c1/net1 with an unreadable file on VF 0 (home) and a readable one on VF 1 (in a
/// pod): each file is undone under its own VF's lock, and both VFs end up home.
#[test]
fn gc_of_an_attachment_with_files_on_two_vfs_brings_both_home() {
    let b = Bench::new(2);
    let pod2 = b.netns("pod2");
    b.run("ADD", "c1", Some(&pod2), &conf(1, "")).unwrap();
    fs::write(b.state_dir().join("0000:18:00.1_c1@net1.json"), b"").unwrap();
    b.run("GC", "-", None, &gc_conf(serde_json::json!([])))
        .unwrap();
    assert!(is_home(&b, 0) && is_home(&b, 1));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

/// The same with both files readable and VF 0's teardown failing (its IPAM release): GC
/// still tears down VF 1's attachment, reading it by its VF, not VF 0's file again.
#[test]
fn gc_reads_each_file_of_an_attachment_by_its_vf() {
    let b = Bench::new(2);
    let pod2 = b.netns("pod2");
    let (won, held) = raced_attachment(&b, &pod2);
    b.ipam_script(
        "no-release",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.1.0","ips":[]}' && exit 0
exit 1"#,
    );
    b.run(
        "ADD",
        "c1",
        Some(&b.pod),
        &conf(0, r#""ipam":{"type":"no-release"}"#),
    )
    .unwrap();
    fs::rename(&held, &won).unwrap();
    b.run("GC", "-", None, &gc_conf(serde_json::json!([])))
        .unwrap_err();
    assert!(is_home(&b, 1));
    assert_eq!(b.state_files(), vec!["0000:18:00.1_c1@net1.json"]);
}

fn gc_conf(valid: Value) -> String {
    let mut gc: Value = serde_json::from_str(&conf(0, "")).unwrap();
    gc["cni.dev/valid-attachments"] = valid;
    gc.to_string()
}

#[test]
fn gc_converges_unreadable_state_of_its_stale_attachments_and_leaves_the_rest() {
    let b = Bench::new(4);
    let dir = b.state_dir();
    // VF 0 attached to "cut" in the pod, its file cut short after the fields naming it.
    b.run("ADD", "cut", Some(&b.pod), &conf(0, "")).unwrap();
    let file = dir.join("0000:18:00.1_cut@net1.json");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, &text[..text.find("\n  \"guid\"").unwrap()]).unwrap();
    // Empty (power loss) on VF 1, which is home: whatever its network, nothing is live.
    fs::write(dir.join("0000:18:00.2_empty@net1.json"), b"").unwrap();
    // Empty on VF 2, which is in a pod: whose it is cannot be told, so it is left.
    let pod2 = b.netns("pod2");
    b.run("ADD", "live", Some(&pod2), &conf(2, "")).unwrap();
    fs::rename(
        dir.join("0000:18:00.3_live@net1.json"),
        dir.join("0000:18:00.3_lost@net1.json"),
    )
    .unwrap();
    fs::write(dir.join("0000:18:00.3_lost@net1.json"), b"").unwrap();
    // Another network's, cut short: left to its own DEL.
    fs::write(
        dir.join("0000:18:00.4_other@net1.json"),
        "{\n  \"schema\": 1,\n  \"network\": \"other-net\",\n  \"contai",
    )
    .unwrap();
    // A listed attachment's: left to its DEL.
    fs::write(dir.join("0000:18:00.4_listed@net1.json"), b"{").unwrap();

    let gc = gc_conf(serde_json::json!([{"containerID": "listed", "ifname": "net1"}]));
    for _ in 0..2 {
        b.run("GC", "-", None, &gc).unwrap();
        let mut left = b.state_files();
        left.sort();
        assert_eq!(
            left,
            vec![
                "0000:18:00.3_lost@net1.json",
                "0000:18:00.4_listed@net1.json",
                "0000:18:00.4_other@net1.json",
            ]
        );
        assert!(is_home(&b, 0) && is_home(&b, 1));
        assert_eq!(b.whereis("net1"), vec![Netns::path(&pod2)]);
    }
}

#[test]
fn del_with_unreadable_state_of_a_vf_another_pod_took_over_removes_only_its_file() {
    let b = Bench::new(1);
    b.run("ADD", "new", Some(&b.pod), &conf(0, "")).unwrap();
    // The old pod's file, cut to nothing by a power loss; the VF went to "new" since.
    fs::write(b.state_dir().join("0000:18:00.1_old@net1.json"), b"").unwrap();
    let gone = b.netns("gone");
    b.run("DEL", "old", Some(&gone), &conf(0, "")).unwrap();
    assert_eq!(b.state_files(), vec!["0000:18:00.1_new@net1.json"]);
    assert_eq!(b.whereis("net1"), vec![Netns::path(&b.pod)]);
    b.run("DEL", "new", Some(&b.pod), &conf(0, "")).unwrap();
    assert!(is_home(&b, 0) && b.state_files().is_empty());
}

#[test]
fn a_del_that_keeps_an_unreadable_state_says_so() {
    let b = Bench::new(1);
    b.run("ADD", "c1", Some(&b.pod), &conf(0, "")).unwrap();
    let file = b.state_dir().join("0000:18:00.1_c1@net1.json");
    fs::write(&file, b"").unwrap();
    // The VF cannot be resolved any more (its PF link is gone from sysfs).
    fs::remove_file(b.vf_dir(0).join("physfn")).unwrap();
    let e = b.run("DEL", "c1", Some(&b.pod), &conf(0, "")).unwrap_err();
    assert_eq!(e.code, 106, "{e}");
    assert!(e.details.contains("is kept"), "{e:?}");
    assert!(file.exists());
}

/// ADD killed just after it applied the VF settings (the VF still on the host under its
/// own name), its state file then cut after `vfSettings`: DEL restores the settings the
/// file still holds, rather than taking a VF on the host for done.
#[test]
fn an_unreadable_state_of_a_vf_on_the_host_still_restores_its_vf_settings() {
    let b = Bench::new(1);
    let before = b.links.vf(b.pf_ifindex, 0).unwrap().settings;
    let c = conf(0, r#""vlan":100"#);
    killed(&b, "ADD", FakeOp::SetVf, 1, Inject::KillAfterEffect, &c);
    assert_ne!(b.links.vf(b.pf_ifindex, 0).unwrap().settings, before);
    let file = b.state_dir().join(&b.state_files()[0]);
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, &text[..text.find("\n  \"moving\"").unwrap()]).unwrap();
    assert!(is_home(&b, 0));
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.links.vf(b.pf_ifindex, 0).unwrap().settings, before);
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}

#[test]
fn vf_settings_are_restored_through_the_pf_netdev_of_now_not_of_add() {
    let b = Bench::new(2);
    let c = conf(1, r#""mac":"02:aa:bb:cc:dd:01","vlan":100"#);
    b.run("ADD", "c1", Some(&b.pod), &c).unwrap();
    // The PF's netdev is re-created (a devlink reload): a new ifindex; the old one is gone
    // from sysfs (kept here under another name, to see that DEL leaves it alone).
    let applied = b.links.vf(b.pf_ifindex, 1).unwrap().settings;
    b.links.set_up(&Netns::Host, b.pf_ifindex, false).unwrap();
    b.links
        .rename(&Netns::Host, b.pf_ifindex, "stale-pf")
        .unwrap();
    let pf2 = b.links.add_pf(PF_NETDEV, 2);
    let pf_dir = b.vf_dir(0).join("physfn").join("net").join(PF_NETDEV);
    fs::write(pf_dir.join("ifindex"), format!("{pf2}\n")).unwrap();
    b.run("DEL", "c1", Some(&b.pod), &c).unwrap();
    assert_eq!(b.links.vf(b.pf_ifindex, 1).unwrap().settings, applied);
    let set: Vec<_> = b
        .links
        .calls()
        .into_iter()
        .filter(|c| c.op == FakeOp::SetVf)
        .map(|c| c.args)
        .collect();
    assert!(
        set.last().unwrap().starts_with(&format!("{pf2} 1 ")),
        "{set:?}"
    );
    assert!(is_home(&b, 1));
}

#[test]
fn ipam_routes_get_their_table_metric_and_metrics_and_a_second_nexthop_is_kept() {
    let b = Bench::new(1);
    b.ipam_script(
        "table-ipam",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}],"routes":[{"dst":"10.9.0.0/16","table":101,"priority":50,"mtu":1400,"advmss":1360},{"dst":"10.8.0.0/16"},{"dst":"10.8.0.0/16","gw":"10.1.0.2"}]}'
exit 0"#,
    );
    let out = b
        .run(
            "ADD",
            "c1",
            Some(&b.pod),
            &conf(0, r#""ipam":{"type":"table-ipam"}"#),
        )
        .unwrap()
        .unwrap();
    let got: Vec<_> = b
        .links
        .routes(&Netns::path(&b.pod))
        .into_iter()
        .map(|r| {
            (
                crate::result::fmt_ipnet(&r.dst),
                r.gw.map(|g| g.to_string()),
                r.attrs,
            )
        })
        .collect();
    let gw = |s: &str| Some(s.to_string());
    assert_eq!(
        got,
        vec![
            (
                "10.9.0.0/16".to_string(),
                gw("10.1.0.1"),
                crate::net::RouteAttrs {
                    table: Some(101),
                    metric: Some(50),
                    mtu: Some(1400),
                    advmss: Some(1360),
                    ..Default::default()
                }
            ),
            (
                "10.8.0.0/16".to_string(),
                gw("10.1.0.1"),
                Default::default()
            ),
            (
                "10.8.0.0/16".to_string(),
                gw("10.1.0.2"),
                Default::default()
            ),
        ]
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["routes"][0]["table"], 101);
    assert_eq!(r["routes"].as_array().unwrap().len(), 3);
}

#[test]
fn two_infiniband_vfs_coming_home_with_each_others_kernel_names_both_converge() {
    let b = Bench::new(2);
    // Hosts booted with net.ifnames=0 keep the kernel's names.
    b.links
        .rename(&Netns::Host, b.vf_ifindex[0], "ib0")
        .unwrap();
    b.links
        .rename(&Netns::Host, b.vf_ifindex[1], "ib1")
        .unwrap();
    b.sync_sysfs();
    let pod_b = b.netns("pod-b");
    let c0 = conf(0, r#""rdmaIsolation":true"#);
    let c1 = conf(1, r#""rdmaIsolation":true"#);
    let m = crate::testutil::Mirror(&b);
    b.run_with(&m, "ADD", "a", "net1", Some(&b.pod), &c0)
        .unwrap();
    b.run_with(&m, "ADD", "b", "net1", Some(&pod_b), &c1)
        .unwrap();
    // Two DELs at once (different VFs, different locks): B's RDMA device comes home a
    // moment before A's, so IPoIB names B's new netdev ib0 and A's ib1.
    b.links
        .move_rdma_device(&ibdev(1), &Netns::path(&pod_b), &Netns::Host)
        .unwrap();
    b.links
        .move_rdma_device(&ibdev(0), &Netns::path(&b.pod), &Netns::Host)
        .unwrap();
    b.sync_sysfs();
    let mut done = (false, false);
    for _ in 0..3 {
        done.0 |= b
            .run_with(&m, "DEL", "a", "net1", Some(&b.pod), &c0)
            .is_ok();
        done.1 |= b
            .run_with(&m, "DEL", "b", "net1", Some(&pod_b), &c1)
            .is_ok();
    }
    assert_eq!(done, (true, true));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
    b.sync_sysfs();
    let home = |i: u32| -> Vec<String> {
        fs::read_dir(b.vf_dir(i).join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        (home(0), home(1)),
        (vec!["ib0".to_string()], vec!["ib1".to_string()])
    );
}

#[test]
fn del_of_an_unreadable_state_without_cni_netns_brings_the_rdma_device_home() {
    let b = ib_bench(IpoibNetns::Initial);
    let c = conf(0, r#""rdmaIsolation":true"#);
    killed_between_the_moves_with_a_cut_state(&b, &c);
    // The spec lets DEL come without CNI_NETNS.
    b.run("DEL", "c1", None, &c).unwrap();
    assert_eq!(b.links.rdma_device_netns(&ibdev(0)), Some(Netns::Host));
    assert!(b.state_files().is_empty(), "{:?}", b.state_files());
}
