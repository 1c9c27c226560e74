//! The real `railvf` binary against the real kernel: veth "VFs" of the simulated DGX node,
//! network namespaces created here, Debian's host-local and static IPAM plugins. Checked
//! from outside with `ip -j`, the simulator's view and host-local's reservation files.
//! Needs root; skips LOUDLY otherwise.

mod common;

use std::time::Duration;

use common::*;
use railvf_sim::{Fault, TestNetns, require_root};
use railvf_testkit::require_tool;

const VF: &str = "0000:18:00.1";
const VF2: &str = "0000:40:00.1";

#[test]
fn add_moves_the_vf_in_with_mtu_addresses_routes_and_del_brings_it_back() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let host_name = sim.vf(VF).unwrap().netdev;
    let hl = s.tmp.path().join("hl");
    let conf = netconf(
        "1.1.0",
        "rdma-a",
        VF,
        &format!(
            r#""mtu":2044,{}"#,
            host_local(&hl, "10.91.0.0/24", "10.91.0.1")
        ),
    );
    let out = cni.run("ADD", "c-add", Some(pod.path()), &conf).expect_ok();
    let r = out.json();

    // From outside: the VF is net1 in the pod, up, with the MTU, address and routes.
    let l = link(Some(pod.name()), "net1").expect("net1 in the pod netns");
    assert_eq!(l["mtu"], 2044);
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );
    assert_eq!(addrs4(Some(pod.name()), "net1"), vec!["10.91.0.2/24"]);
    let routes = routes4(pod.name());
    assert!(
        routes.contains(&"10.200.0.0/16 via 10.91.0.1 dev net1".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"10.201.0.0/16 via 10.91.0.1 dev net1".to_string()),
        "{routes:?}"
    );
    assert!(link(None, &host_name).is_none(), "the VF left the host");
    assert_eq!(reservations(&hl, "rdma-a"), vec!["10.91.0.2"]);
    // Its neighbours are told of the address (a reused one may still map to its previous
    // owner's MAC there): the kernel's announcements are on, and the gratuitous ARP left
    // no entry for the pod's own address behind.
    for key in ["ipv4/conf/net1/arp_notify", "ipv6/conf/net1/ndisc_notify"] {
        let path = format!("/proc/sys/net/{key}");
        assert_eq!(sysctl_in(pod.name(), &path), "1", "{key}");
    }
    assert_eq!(
        ip_json(Some(pod.name()), &["neigh", "show", "to", "10.91.0.2"]),
        serde_json::json!([])
    );
    // And the result agrees with the kernel.
    assert_eq!(r["interfaces"][0]["name"], "net1");
    assert_eq!(r["interfaces"][0]["mac"], l["address"]);
    assert_eq!(r["interfaces"][0]["mtu"], 2044);
    assert_eq!(r["interfaces"][0]["pciID"], VF);
    assert_eq!(
        r["interfaces"][0]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(r["ips"][0]["address"], "10.91.0.2/24");

    cni.run("DEL", "c-add", Some(pod.path()), &conf).expect_ok();
    let back = link(None, &host_name).expect("VF back in the host under its name");
    assert_eq!(back["address"], l["address"]);
    assert_ne!(back["mtu"], 2044, "host MTU restored");
    assert!(!link_names(pod.name()).contains(&"net1".to_string()));
    assert!(
        reservations(&hl, "rdma-a").is_empty(),
        "host-local released the address"
    );
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
    // The simulator's sysfs mirror sees it home too.
    assert!(eventually(Duration::from_secs(2), || {
        sim.sync().unwrap();
        sim.vf(VF).unwrap().host_netdev.map(|h| h.name) == Some(host_name.clone())
    }));
}

#[test]
fn static_ipam_takes_runtime_config_ips_and_old_versions_get_old_results() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    require_tool("/usr/lib/cni/static", "containernetworking-plugins");
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let conf = netconf(
        "0.4.0",
        "rdma-static",
        VF,
        r#""ipam":{"type":"static","routes":[{"dst":"10.250.0.0/16","gw":"10.92.0.1"}]},"runtimeConfig":{"ips":["10.92.0.7/24"]}"#,
    );
    let r = cni
        .run("ADD", "c-static", Some(pod.path()), &conf)
        .expect_ok()
        .json();
    assert_eq!(addrs4(Some(pod.name()), "net1"), vec!["10.92.0.7/24"]);
    assert!(routes4(pod.name()).contains(&"10.250.0.0/16 via 10.92.0.1 dev net1".to_string()));
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    assert!(r["interfaces"][0].get("pciID").is_none());
    cni.run("DEL", "c-static", Some(pod.path()), &conf)
        .expect_ok();
    assert!(link(None, &sim.vf(VF).unwrap().netdev).is_some());
}

#[test]
fn add_waits_for_the_subnet_manager_to_assign_a_lid_after_the_guid() {
    let Some(s) = Setup::new(small().lid_delay(Duration::from_millis(300))) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    // Node and port apart, as setup-vfs sets them.
    let old = (0x0200_0000_0018_0105, 0x0600_0000_0018_0105);
    sim.set_guid(VF, old.0, old.1).unwrap();
    sim.sync().unwrap();
    let conf = netconf(
        "1.0.0",
        "rdma-guid",
        VF,
        r#""runtimeConfig":{"infinibandGUID":"02:00:00:00:00:18:01:77"}"#,
    );
    cni.run("ADD", "c-guid", Some(pod.path()), &conf)
        .expect_ok();
    // Ready means: the new GUID is applied and the SM gave it a LID.
    sim.sync().unwrap();
    let v = sim.vf(VF).unwrap();
    assert_eq!(v.node_guid, 0x0200_0000_0018_0177);
    assert_eq!(v.port_guid, 0x0200_0000_0018_0177);
    assert_ne!(v.lid, 0);
    assert!(pod.has_link("net1").unwrap());
    cni.run("DEL", "c-guid", Some(pod.path()), &conf)
        .expect_ok();
    sim.sync().unwrap();
    let v = sim.vf(VF).unwrap();
    assert_eq!((v.node_guid, v.port_guid), old, "DEL restores each GUID");
}

/// A RoCE VF's port is ACTIVE only once its netdev runs (mlx5 reports it so): the gate
/// waits for the port the up in ADD brings, and DEL leaves it DOWN again in the host.
#[test]
fn a_roce_vf_is_ready_once_its_port_follows_the_link_up() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let v = sim.vf(VF).unwrap();
    sim.set_link_layer(v.pf, railvf_sim::LinkLayer::Ethernet)
        .unwrap();
    let state = v
        .sysfs_dir
        .join(format!("infiniband/{}/ports/1/state", v.rdma_device));
    let port_state = || std::fs::read_to_string(&state).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || port_state() == "1: DOWN\n"));
    let conf = netconf(
        "1.1.0",
        "roce",
        VF,
        r#""readiness":{"linkLayer":"Ethernet","requireLid":false,"timeoutMs":5000}"#,
    );
    let r = cni
        .run("ADD", "c-roce", Some(pod.path()), &conf)
        .expect_ok();
    assert_eq!(r.json()["interfaces"][0]["name"], "net1");
    // ADD returned only once the port was ACTIVE.
    assert_eq!(port_state(), "4: ACTIVE\n");
    let l = link(Some(pod.name()), "net1").expect("net1 in the pod netns");
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );
    cni.run("DEL", "c-roce", Some(pod.path()), &conf)
        .expect_ok();
    assert!(link(None, &v.netdev).is_some(), "VF back in the host");
    assert!(eventually(Duration::from_secs(5), || port_state() == "1: DOWN\n"));
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
}

/// Checks the spec error, that the VF is home under its name, the address released and
/// the state dir empty.
fn assert_rolled_back(
    cni: &Cni,
    out: &Out,
    needle: &str,
    host_name: &str,
    hl: &std::path::Path,
    pod: &TestNetns,
) {
    let (code, msg) = out.err();
    assert_eq!(code, 11, "{msg}");
    assert!(msg.contains(needle), "{msg}");
    // A check waiting cannot fix (link_layer) fails before anything changed: nothing to
    // roll back.
    assert!(
        msg.contains("rolled back") || msg.contains("will not change by waiting"),
        "{msg}"
    );
    assert!(
        link(None, host_name).is_some(),
        "VF back in the host as {host_name}"
    );
    assert!(!link_names(pod.name()).contains(&"net1".to_string()));
    assert!(
        reservations(hl, "rdma-fail").is_empty(),
        "IPAM address released"
    );
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
}

#[test]
fn lid_zero_port_down_and_ethernet_fail_with_code_11_and_roll_back() {
    let Some(s) = Setup::new(
        small()
            .fault(VF, Fault::LidZero)
            .fault(VF2, Fault::PortDown)
            .fault("0000:4f:00.1", Fault::EthFallback),
    ) else {
        return;
    };
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let hl = s.tmp.path().join("hl");
    for (vf, needle) in [
        (
            VF,
            "lid: found 0x0, expected a LID assigned by the Subnet Manager",
        ),
        (VF2, "port_state: found state 1: DOWN"),
        (
            "0000:4f:00.1",
            "link_layer: found Ethernet, expected InfiniBand",
        ),
    ] {
        let conf = netconf(
            "1.0.0",
            "rdma-fail",
            vf,
            &format!(
                r#""readiness":{{"timeoutMs":500}},{}"#,
                host_local(&hl, "10.93.0.0/24", "10.93.0.1")
            ),
        );
        let out = cni.run("ADD", "c-fail", Some(pod.path()), &conf);
        assert_rolled_back(&cni, &out, needle, &sim.vf(vf).unwrap().netdev, &hl, pod);
        // The runtime's DEL after a failed ADD is a no-op that succeeds.
        cni.run("DEL", "c-fail", Some(pod.path()), &conf)
            .expect_ok();
    }
}

/// ib-kubernetes handles only networks of type "ib-sriov": railvf installed under that name
/// takes such a NAD unchanged, waits for ib-kubernetes's mark and applies its GUID.
#[test]
fn railvf_installed_as_ib_sriov_takes_an_unchanged_ib_kubernetes_network() {
    let Some(s) = Setup::new(small().lid_delay(Duration::from_millis(50))) else {
        return;
    };
    let (sim, pod) = (&s.sim, &s.pod);
    let bin = s.tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut cni = s.cni();
    std::fs::copy(&cni.bin, bin.join("ib-sriov")).unwrap();
    cni.bin = bin.join("ib-sriov");
    let old = sim.vf(VF).unwrap().node_guid;
    let conf = format!(
        r#"{{"cniVersion":"0.3.1","name":"ib-pkey","type":"ib-sriov","deviceID":"{VF}","pkey":"0x0005","ibKubernetesEnabled":true,"args":{{"cni":{{"mellanox.infiniband.app":"configured","guid":"02:00:00:00:00:18:01:99"}}}}}}"#
    );
    cni.run("ADD", "c-ibk", Some(pod.path()), &conf).expect_ok();
    sim.sync().unwrap();
    assert_eq!(sim.vf(VF).unwrap().node_guid, 0x0200_0000_0018_0199);
    assert!(pod.has_link("net1").unwrap());
    cni.run("DEL", "c-ibk", Some(pod.path()), &conf).expect_ok();
    sim.sync().unwrap();
    assert_eq!(sim.vf(VF).unwrap().node_guid, old);
}

/// DEL releases IPAM while the pod's interface is still there (a DHCP release is sent
/// through it), as the teardown's own order says.
#[test]
fn del_releases_ipam_while_the_interface_is_still_in_the_pod() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (pod, cni) = (&s.pod, s.cni());
    let bin = s.tmp.path().join("ipam-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = s.tmp.path().join("ipam.log");
    let script = bin.join("probe-ipam");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.95.0.2/24"}}]}}' ;;
DEL) if nsenter --net="$CNI_NETNS" ip link show dev "$CNI_IFNAME" >/dev/null 2>&1; then
       echo "DEL present" >> {log}; else echo "DEL absent" >> {log}; fi ;;
esac
"#,
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cni = cni.with_env("CNI_PATH", bin.to_str().unwrap());
    let conf = netconf("1.0.0", "rdma-dhcp", VF, r#""ipam":{"type":"probe-ipam"}"#);
    cni.run("ADD", "c-dhcp", Some(pod.path()), &conf)
        .expect_ok();
    cni.run("DEL", "c-dhcp", Some(pod.path()), &conf)
        .expect_ok();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "DEL present\n");
    assert!(cni.state_files().is_empty());
}

#[test]
fn del_converges_repeated_without_add_and_without_netns() {
    if !require_root() {
        return;
    }
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");
    let tmp = tempfile::tempdir().unwrap();
    let sim = sim(small());
    let cni = cni_for(&sim, tmp.path());
    let hl = tmp.path().join("hl");
    let host_name = sim.vf(VF).unwrap().netdev;
    let conf = netconf(
        "1.1.0",
        "rdma-del",
        VF,
        &host_local(&hl, "10.94.0.0/24", "10.94.0.1"),
    );

    // DEL without ADD, with and without a netns.
    let pod = TestNetns::new().unwrap();
    cni.run("DEL", "never-added", Some(pod.path()), &conf)
        .expect_ok();
    cni.run("DEL", "never-added", None, &conf).expect_ok();

    // Repeated DEL.
    cni.run("ADD", "c-rep", Some(pod.path()), &conf).expect_ok();
    for _ in 0..3 {
        cni.run("DEL", "c-rep", Some(pod.path()), &conf).expect_ok();
    }
    assert!(link(None, &host_name).is_some());

    // The netns is deleted between ADD and DEL: the VF comes back to the host under its pod
    // name; DEL (without CNI_NETNS, as runtimes do then) renames it and frees the address.
    let pod2 = TestNetns::new().unwrap();
    cni.run("ADD", "c-gone", Some(pod2.path()), &conf)
        .expect_ok();
    assert_eq!(reservations(&hl, "rdma-del").len(), 1);
    // The simulator learns a VF's in-pod name by polling; without this it may not know
    // `net1` yet when the namespace dies, and returns the VF under its host name.
    sim.sync().unwrap();
    drop(pod2);
    assert!(
        eventually(Duration::from_secs(5), || link(None, "net1").is_some()),
        "the kernel (simulator) returns the VF to the host under its pod name"
    );
    cni.run("DEL", "c-gone", None, &conf).expect_ok();
    assert!(
        link(None, &host_name).is_some(),
        "renamed back to {host_name}"
    );
    assert!(link(None, "net1").is_none());
    assert!(reservations(&hl, "rdma-del").is_empty());
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());

    // Same, but the runtime still passes the (now dangling) CNI_NETNS path.
    let pod3 = TestNetns::new().unwrap();
    let path3 = pod3.path().to_path_buf();
    cni.run("ADD", "c-gone2", Some(&path3), &conf).expect_ok();
    sim.sync().unwrap();
    drop(pod3);
    assert!(
        eventually(Duration::from_secs(5), || link(None, "net1").is_some()),
        "the VF returns to the host under its pod name"
    );
    cni.run("DEL", "c-gone2", Some(&path3), &conf).expect_ok();
    assert!(link(None, &host_name).is_some());
    assert!(cni.state_files().is_empty());
}

#[test]
fn sigkill_in_the_middle_of_add_then_del_converges() {
    if !require_root() {
        return;
    }
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");
    let tmp = tempfile::tempdir().unwrap();
    // LID never comes: ADD sits in the readiness gate with the VF moved and IPAM done.
    let sim = sim(small().fault(VF, Fault::LidZero));
    let cni = cni_for(&sim, tmp.path());
    let pod = TestNetns::new().unwrap();
    let hl = tmp.path().join("hl");
    let host_name = sim.vf(VF).unwrap().netdev;
    let conf = netconf(
        "1.0.0",
        "rdma-kill",
        VF,
        &format!(
            r#""readiness":{{"timeoutMs":60000}},{}"#,
            host_local(&hl, "10.95.0.0/24", "10.95.0.1")
        ),
    );
    let mut child = cni.spawn("ADD", "c-kill", Some(pod.path()), &conf);
    assert!(
        eventually(Duration::from_secs(20), || addrs4(Some(pod.name()), "net1")
            .len()
            == 1),
        "ADD did not reach the readiness gate"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !cni.state_files().is_empty(),
        "the state written before the changes survives"
    );
    cni.run("DEL", "c-kill", Some(pod.path()), &conf)
        .expect_ok();
    assert!(link(None, &host_name).is_some());
    assert!(!link_names(pod.name()).contains(&"net1".to_string()));
    assert!(reservations(&hl, "rdma-kill").is_empty());
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
}

#[test]
fn different_vfs_attach_in_parallel_and_a_shared_vf_is_refused() {
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sim = sim(small().lid_delay(Duration::from_millis(200)));
    let cni = cni_for(&sim, tmp.path());
    let pods: Vec<TestNetns> = (0..2).map(|_| TestNetns::new().unwrap()).collect();
    // Both wait ~200 ms for their LIDs at the same time: per-VF locks, not a global one.
    let confs = [
        netconf("1.0.0", "p", VF, r#""guid":"02:00:00:00:00:00:00:a1""#),
        netconf("1.0.0", "p", VF2, r#""guid":"02:00:00:00:00:00:00:a2""#),
    ];
    let children: Vec<_> = (0..2)
        .map(|i| cni.spawn("ADD", &format!("par{i}"), Some(pods[i].path()), &confs[i]))
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    for p in &pods {
        assert!(p.has_link("net1").unwrap());
    }
    // A second pod asking for VF 1: refused, naming the attachment that holds it.
    let other = TestNetns::new().unwrap();
    let out = cni.run("ADD", "intruder", Some(other.path()), &confs[0]);
    let (code, msg) = out.err();
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("par0") && msg.contains(pods[0].name()),
        "{msg}"
    );
    assert!(pods[0].has_link("net1").unwrap(), "the holder keeps its VF");
    for i in 0..2 {
        cni.run("DEL", &format!("par{i}"), Some(pods[i].path()), &confs[i])
            .expect_ok();
    }
    cni.run("DEL", "intruder", Some(other.path()), &confs[0])
        .expect_ok();
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
}

#[test]
fn check_status_gc_and_version_through_the_binary() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let hl = s.tmp.path().join("hl");
    let conf = netconf(
        "1.1.0",
        "rdma-life",
        VF,
        &host_local(&hl, "10.96.0.0/24", "10.96.0.1"),
    );
    let res = cni
        .run("ADD", "c-life", Some(pod.path()), &conf)
        .expect_ok()
        .json();

    let mut check: serde_json::Value = serde_json::from_str(&conf).unwrap();
    check["prevResult"] = res;
    cni.run("CHECK", "c-life", Some(pod.path()), &check.to_string())
        .expect_ok();
    pod.ip(&["link", "set", "net1", "mtu", "1400"]).unwrap();
    let (code, msg) = cni
        .run("CHECK", "c-life", Some(pod.path()), &check.to_string())
        .err();
    assert_eq!(code, 107, "{msg}");

    cni.run("STATUS", "", None, &conf).expect_ok();
    let bad = Cni {
        cni_path: "/nonexistent".into(),
        ..s.cni()
    };
    assert_eq!(bad.run("STATUS", "", None, &conf).err().0, 50);

    // GC with an empty valid list reaps the attachment: VF home, address released.
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    cni.run("GC", "", None, &gc.to_string()).expect_ok();
    assert!(link(None, &sim.vf(VF).unwrap().netdev).is_some());
    assert!(reservations(&hl, "rdma-life").is_empty());
    assert!(cni.state_files().is_empty());

    let v = cni
        .run("VERSION", "", None, r#"{"cniVersion":"1.1.0"}"#)
        .expect_ok()
        .json();
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // Garbage in: the spec error object on stdout, non-zero exit.
    let (code, _) = cni.run("ADD", "c-x", Some(pod.path()), "{not json").err();
    assert_eq!(code, 6);
}

#[test]
fn a_log_file_that_cannot_be_used_is_warned_about_and_the_call_goes_on() {
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sim = sim(small());
    // Created by railvf on first use.
    let logs = tmp.path().join("logs");
    let cni = cni_for(&sim, tmp.path()).with_env("RAILVF_LOG_DIR", logs.to_str().unwrap());
    let host_name = sim.vf(VF).unwrap().netdev;
    let log = logs.join("railvf.log");
    let conf = netconf(
        "1.1.0",
        "rdma-log",
        VF,
        &format!(r#""logFile":"{}","logLevel":"debug""#, log.display()),
    );
    let pod = TestNetns::new().unwrap();
    cni.run("ADD", "c-log", Some(pod.path()), &conf).expect_ok();
    assert!(std::fs::metadata(&log).unwrap().len() > 0);

    // The log directory replaced by a file while the pod runs: DEL still converges.
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, "").unwrap();
    let o = cni.run("DEL", "c-log", Some(pod.path()), &conf).expect_ok();
    assert!(
        o.stderr.contains("logFile") && o.stderr.contains("logging to stderr only"),
        "{}",
        o.stderr
    );
    assert!(
        link(None, &host_name).is_some(),
        "{host_name} back on the host"
    );
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());

    // A NAD written for sriov-cni (a logFile elsewhere, its logger's "verbose"): ADD goes
    // on, logging to stderr, and says why; nothing is written where logFile points.
    let elsewhere = tmp.path().join("sriov-cni.log");
    let sriov = netconf(
        "1.1.0",
        "rdma-log",
        VF,
        &format!(
            r#""logFile":"{}","logLevel":"verbose""#,
            elsewhere.display()
        ),
    );
    let o = cni
        .run("ADD", "c-log2", Some(pod.path()), &sriov)
        .expect_ok();
    assert!(
        o.stderr
            .contains("is not used: it is not a file directly in"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("\"level\":\"debug\""), "{}", o.stderr);
    assert!(!elsewhere.exists());
    assert!(link(Some(pod.name()), "net1").is_some());
    cni.run("DEL", "c-log2", Some(pod.path()), &sriov)
        .expect_ok();
    assert!(link(None, &host_name).is_some());
    assert!(cni.state_files().is_empty());
}
