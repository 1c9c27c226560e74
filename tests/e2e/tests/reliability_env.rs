//! Faults of the environment around `railvf`: IPAM plugins that are missing, fail, hang
//! (bounded by `RAILVF_IPAM_TIMEOUT_MS`), answer garbage or vanish between ADD and DEL;
//! sysfs attributes missing, of the wrong kind or unreadable. Each gives a clear error (spec
//! error object, expected code, the culprit named), never a panic, and never a VF left
//! outside the host namespace. (The netns deleted before DEL: `reliability_cni.rs`' random
//! mix and `cni-plugin/tests/kernel.rs`.)

mod reliability_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use railvf_sim::{SimNode, TestNetns, VfInfo, require_root};
use reliability_support::*;

fn script(dir: &Path, name: &str, body: &str) {
    railvf_testkit::write_script(&dir.join(name), body);
}

/// After a failed ADD: the spec error with `code` and `needle`, no panic, the VF home under
/// its name, the pod empty, no state file.
fn assert_failed_cleanly(
    sim: &SimNode,
    cni: &Cni,
    v: &VfInfo,
    pod: &TestNetns,
    o: &Out,
    (code, needle, what): (u64, &str, &str),
) {
    o.assert_no_panic();
    let (c, msg) = o.err();
    assert_eq!(c, code, "{what}: {msg}");
    assert!(msg.contains(needle), "{what}: {needle:?} not in {msg}");
    assert_home(sim, v);
    assert!(pod_links(pod.name()).is_empty(), "{what}");
    if msg.contains("rollback incomplete, DEL will retry") {
        // The VF is home but IPAM could not be released (its DEL failed too): the state
        // stays for DEL to retry the release.
        assert_eq!(cni.state_files().len(), 1, "{what}");
    } else {
        assert!(
            cni.state_files().is_empty(),
            "{what}: {:?}",
            cni.state_files()
        );
    }
}

#[test]
fn ipam_missing_failing_hanging_or_garbage_fails_add_cleanly() {
    if !require_root() {
        return;
    }
    require_host_local();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("cni-bin");
    std::fs::create_dir(&bin).unwrap();
    script(
        &bin,
        "rv-full",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] || exit 0
echo '{"cniVersion":"1.0.0","code":18,"msg":"no addresses left in range","details":"range 10.70.0.0/30 full"}'; exit 1"#,
    );
    script(&bin, "rv-hang", "exec sleep 600");
    script(
        &bin,
        "rv-hang-add",
        "[ \"$CNI_COMMAND\" = ADD ] && exec sleep 600; cat >/dev/null",
    );
    // Closes its stdout at once, then neither reads its stdin nor exits.
    script(&bin, "rv-halfhang", "exec >&-; exec sleep 600");
    script(
        &bin,
        "rv-garbage",
        "cat >/dev/null; echo 'garbage {{{'; exit 0",
    );
    script(&bin, "rv-oops", "cat >/dev/null; echo oops; exit 3");
    script(&bin, "rv-segv", "cat >/dev/null; kill -SEGV $$");
    script(
        &bin,
        "rv-flood",
        "cat >/dev/null; [ \"$CNI_COMMAND\" = ADD ] || exit 0; head -c 5000000 /dev/zero | tr '\\0' x; exit 0",
    );
    script(
        &bin,
        "rv-badip",
        r#"cat >/dev/null; [ "$CNI_COMMAND" = ADD ] || exit 0
echo '{"cniVersion":"1.0.0","ips":[{"address":"10.70.0.300/24"}]}'"#,
    );
    std::fs::write(bin.join("rv-noexec"), "#!/bin/sh\nexit 0\n").unwrap();

    let sim = fast_node(1).build().expect("sim");
    let cni = cni_for(&sim, tmp.path()).with_env("RAILVF_IPAM_TIMEOUT_MS", "300");
    let mut cni = cni;
    cni.cni_path = format!("{}:{CNI_DIR}", bin.display());
    let v = sim.vfs()[0].clone();
    let bdf = v.pci.to_string();
    let cases: &[(&str, u64, &str)] = &[
        ("rv-missing", 104, "not found"),
        ("rv-noexec", 104, "not found"),
        ("rv-full", 18, "no addresses left in range"),
        ("rv-hang", 104, "did not answer ADD within 300 ms"),
        ("rv-hang-add", 104, "did not answer ADD within 300 ms"),
        ("rv-halfhang", 104, "did not answer ADD within 300 ms"),
        ("rv-garbage", 104, "unusable result"),
        ("rv-oops", 104, "without a CNI error object: oops"),
        ("rv-segv", 104, "signal"),
        ("rv-flood", 104, "unusable result"),
        ("rv-badip", 104, "unusable result"),
    ];
    let mut runs = 0;
    for (n, (plugin, code, needle)) in cases.iter().enumerate() {
        let conf = netconf(
            "1.0.0",
            "rel-ipam",
            &bdf,
            &format!(r#""mtu":2044,"ipam":{{"type":"{plugin}"}}"#),
        );
        let pod = TestNetns::new().unwrap();
        let cid = format!("ipam-{n}");
        let o = cni.run("ADD", &cid, Some(pod.path()), &conf);
        runs += 1;
        assert_failed_cleanly(&sim, &cni, &v, &pod, &o, (*code, needle, plugin));
        // The runtime's DEL: bounded too; fails only when IPAM DEL itself fails, clearly.
        let d = cni.run("DEL", &cid, Some(pod.path()), &conf);
        runs += 1;
        d.assert_no_panic();
        if !d.ok {
            let (_, msg) = d.err();
            assert!(
                msg.contains(plugin),
                "{plugin}: DEL error names the plugin: {msg}"
            );
        }
        assert_home(&sim, &v);
        assert!(cni.state_files().is_empty());
    }
    // No plugin run is left behind (the hanging ones were killed at the timeout).
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(&*bin.to_string_lossy())),
        "an IPAM plugin is still running:\n{ps}"
    );

    // The plugin vanishes between ADD and DEL: the VF still comes home; DEL reports the
    // address it could not release, and releases it once the plugin is back.
    let hl = tmp.path().join("hl");
    std::fs::copy(HOST_LOCAL, bin.join("rv-hl")).unwrap();
    let conf = netconf(
        "1.0.0",
        "rel-ipam",
        &bdf,
        &format!(
            r#""ipam":{{"type":"rv-hl","dataDir":"{}","ranges":[[{{"subnet":"10.70.0.0/24"}}]]}}"#,
            hl.display()
        ),
    );
    let pod = TestNetns::new().unwrap();
    cni.run("ADD", "vanish", Some(pod.path()), &conf)
        .expect_ok();
    std::fs::rename(bin.join("rv-hl"), tmp.path().join("rv-hl.away")).unwrap();
    let d = cni.run("DEL", "vanish", Some(pod.path()), &conf);
    d.assert_no_panic();
    let (code, msg) = d.err();
    assert_eq!(code, 106, "{msg}");
    assert!(msg.contains("rv-hl") && msg.contains("not found"), "{msg}");
    assert_home(&sim, &v);
    assert_eq!(reservations(&hl, "rel-ipam").len(), 1, "not released yet");
    std::fs::rename(tmp.path().join("rv-hl.away"), bin.join("rv-hl")).unwrap();
    cni.run("DEL", "vanish", Some(pod.path()), &conf)
        .expect_ok();
    assert!(ipam_leftovers(&hl, "rel-ipam").is_empty());
    assert!(cni.state_files().is_empty());
    runs += 3;
    summary(format!(
        "IPAM faults ({} kinds: missing, not executable, range full, hanging (every verb / ADD only), half-hanging, garbage, error without object, SIGSEGV, 5 MB flood, bad address; vanishing between ADD and DEL): {runs} railvf runs, every ADD rolled back with a clear error, 0 VFs lost, 0 addresses leaked",
        cases.len()
    ));
}

/// Runs railvf as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so mode-000 files
/// are really unreadable (root reads them otherwise).
fn without_dac(cni: &Cni) -> Cni {
    let mut c = cni.clone();
    let wrapper = cni.state.parent().unwrap().join("railvf-nodac");
    railvf_testkit::write_script(
        &wrapper,
        &format!(
            "exec setpriv --bounding-set -dac_override,-dac_read_search --inh-caps -dac_override,-dac_read_search {} \"$@\"",
            cni.bin.display()
        ),
    );
    c.bin = wrapper;
    c
}

#[test]
fn sysfs_attributes_missing_of_the_wrong_kind_or_unreadable_give_clear_errors() {
    if !require_root() {
        return;
    }
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
    );
    let tmp = tempfile::tempdir().unwrap();
    let sim = fast_node(1).build().expect("sim");
    let cni = cni_for(&sim, tmp.path());
    let nodac = without_dac(&cni);
    let vfs = sim.vfs();
    let port = |v: &VfInfo| {
        v.sysfs_dir
            .join("infiniband")
            .join(&v.rdma_device)
            .join("ports/1")
    };

    /// How an attribute is broken.
    enum Break {
        Remove,
        Directory,
        Unreadable,
        Garbage(&'static str),
    }
    // (attribute path relative to the VF, how, expected code, text the error must contain)
    let cases: Vec<(String, Break, u64, &str)> = vec![
        ("ports/1/lid".into(), Break::Remove, 11, "lid"),
        ("ports/1/state".into(), Break::Directory, 11, "port_state"),
        ("ports/1/lid".into(), Break::Unreadable, 11, "lid"),
        (
            "ports/1/link_layer".into(),
            Break::Garbage("Token Ring\n"),
            11,
            "link_layer",
        ),
        (
            "ports/1/state".into(),
            Break::Garbage("\u{0}\u{1}\u{2}"),
            11,
            "port_state",
        ),
        ("vendor".into(), Break::Remove, 5, "vendor"),
        ("vendor".into(), Break::Unreadable, 5, "vendor"),
        (
            "physfn".into(),
            Break::Remove,
            100,
            "not an SR-IOV virtual function",
        ),
        ("device".into(), Break::Garbage("0xzz\n"), 5, "device"),
    ];
    let mut runs = 0;
    for (n, (attr, how, code, needle)) in cases.iter().enumerate() {
        let v = &vfs[n % vfs.len()];
        let path = match attr.strip_prefix("ports/1/") {
            Some(a) => port(v).join(a),
            None => v.sysfs_dir.join(attr),
        };
        let what = format!(
            "{attr} {}",
            match how {
                Break::Remove => "removed",
                Break::Directory => "a directory",
                Break::Unreadable => "mode 000 (no DAC override)",
                Break::Garbage(_) => "garbage",
            }
        );
        // Keep the original to put back.
        let meta =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let link = meta
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(&path).unwrap());
        let content = if link.is_none() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        let mode = meta.permissions().mode();
        let runner = match how {
            Break::Remove => {
                std::fs::remove_file(&path).unwrap();
                &cni
            }
            Break::Directory => {
                std::fs::remove_file(&path).unwrap();
                std::fs::create_dir(&path).unwrap();
                &cni
            }
            Break::Unreadable => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
                &nodac
            }
            Break::Garbage(g) => {
                std::fs::write(&path, g).unwrap();
                &cni
            }
        };
        let pod = TestNetns::new().unwrap();
        let conf = netconf(
            "1.0.0",
            "rel-sysfs",
            &v.pci.to_string(),
            r#""readiness":{"timeoutMs":200}"#,
        );
        let cid = format!("sysfs-{n}");
        let o = runner.run("ADD", &cid, Some(pod.path()), &conf);
        runs += 1;
        assert_failed_cleanly(&sim, &cni, v, &pod, &o, (*code, needle, &what));
        let d = runner.run("DEL", &cid, Some(pod.path()), &conf);
        runs += 1;
        assert!(d.ok, "{what}: DEL {}", d.stdout);
        d.assert_no_panic();

        // Put it back: the VF attaches again.
        match how {
            Break::Directory => std::fs::remove_dir(&path).unwrap(),
            Break::Remove if link.is_some() => {}
            _ => {}
        }
        match &link {
            Some(target) => {
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(target, &path).unwrap();
            }
            None => {
                std::fs::write(&path, &content).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        runner.run("ADD", &cid, Some(pod.path()), &conf).expect_ok();
        runner.run("DEL", &cid, Some(pod.path()), &conf).expect_ok();
        runs += 2;
        assert_home(&sim, v);
    }
    summary(format!(
        "sysfs faults ({} kinds: attributes removed, turned into directories, unreadable without DAC override, garbage): {runs} railvf runs, clear errors, 0 VFs lost",
        cases.len()
    ));
}
