//! Hostile input: a table of bad network configs and environments, each run against the
//! real `railvf` binary as an ADD that would otherwise succeed (the same call with the good
//! config attaches the VF — checked first and last). Every one must be answered with the
//! spec's error object (`cniVersion`, `code`, `msg`) on stdout and the expected code, a
//! non-zero exit, no panic; and leave the VF untouched: in the host under its name, the pod
//! empty, no state file, no IPAM allocation, no file created outside the test's temp dirs.

mod reliability_support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use railvf_sim::{TestNetns, require_root};
use reliability_support::*;
use serde_json::{Value, json};

/// Marker in every file name a hostile input asks for: no such file may appear anywhere.
const MARK: &str = "rvhostile";

struct Case {
    name: String,
    stdin: Vec<u8>,
    /// Environment changes: `None` removes the variable.
    env: Vec<(&'static str, Option<OsString>)>,
    code: u64,
    /// Text the error message must contain (the culprit named).
    needle: &'static str,
}

fn case(name: &str, stdin: impl Into<Vec<u8>>, code: u64, needle: &'static str) -> Case {
    Case {
        name: name.into(),
        stdin: stdin.into(),
        env: Vec::new(),
        code,
        needle,
    }
}

/// Places a hostile input might write to, and what is there now with the marker in its
/// name (must stay empty).
fn marked_files(extra: &[&Path]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [
        "/",
        "/etc",
        "/tmp",
        "/var/log",
        "/var/lib/cni",
        "/run",
        "/dev/shm",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    dirs.extend(extra.iter().map(|p| p.to_path_buf()));
    let mut found = Vec::new();
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(MARK) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[test]
fn bad_netconfs_and_environments_get_spec_errors_and_change_nothing() {
    if !require_root() {
        return;
    }
    require_host_local();
    let tmp = tempfile::tempdir().unwrap();
    let sim = fast_node(1).storage_vfs_per_pf(1).build().expect("sim");
    let mut cni = cni_for(&sim, tmp.path());
    // Another build to hold the corpus against (e.g. an older release).
    if let Some(b) = std::env::var_os("RAILVF_HOSTILE_BIN") {
        cni.bin = b.into();
    }
    let hl = tmp.path().join("hl");
    let v = sim.vf("0000:18:00.1").unwrap();
    let bdf = v.pci.to_string();
    let pf = v.pf.to_string();
    let gpu = sim
        .topology()
        .gpus
        .first()
        .map(|g| g.pci.to_string())
        .expect("a GPU");
    // A VF of an Ethernet storage port (no rail).
    let storage_vf = sim
        .pfs()
        .into_iter()
        .find(|p| {
            p.role == railvf_sim::NicRole::Storage
                && p.link_layer == railvf_sim::LinkLayer::Ethernet
                && !p.vfs.is_empty()
        })
        .map(|p| p.vfs[0].to_string())
        .expect("a storage VF");
    let base: Value = json!({
        "cniVersion": "1.0.0",
        "name": "hostile",
        "type": "railvf",
        "deviceID": bdf,
        "ipam": {"type": "host-local", "dataDir": hl, "ranges": [[{"subnet": "10.71.0.0/24"}]]}
    });
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| -> Vec<u8> {
        let mut v = base.clone();
        f(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    };
    let set = |k: &'static str, val: Value| {
        with(&move |m: &mut serde_json::Map<String, Value>| {
            m.insert(k.into(), val.clone());
        })
    };
    let ipam_type = |t: &str| {
        let t = t.to_string();
        with(&move |m: &mut serde_json::Map<String, Value>| {
            m["ipam"]["type"] = Value::String(t.clone());
        })
    };
    let good = serde_json::to_vec(&base).unwrap();
    let good_text = String::from_utf8(good.clone()).unwrap();

    // Files the environment cases point at.
    let plain_file = tmp.path().join(format!("{MARK}-plain"));
    std::fs::write(&plain_file, "").unwrap();
    let a_dir = tmp.path().join(format!("{MARK}-dir"));
    std::fs::create_dir(&a_dir).unwrap();
    let fifo = tmp.path().join(format!("{MARK}-fifo"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let nested = |depth: usize| -> Vec<u8> {
        let mut s = good_text.trim_end_matches('}').to_string();
        s.push_str(",\"x\":");
        s.push_str(&"[".repeat(depth));
        s.push_str(&"]".repeat(depth));
        s.push('}');
        s.into_bytes()
    };
    let big_string = |bytes: usize| set("note", Value::String("A".repeat(bytes)));

    let mut cases: Vec<Case> = vec![
        // --- not JSON, not an object, too big, ambiguous
        case("empty stdin", "", 6, "not valid JSON"),
        case(
            "truncated JSON",
            &good_text[..good_text.len() / 2],
            6,
            "not valid JSON",
        ),
        case(
            "trailing garbage",
            format!("{good_text} xyz"),
            6,
            "not valid JSON",
        ),
        case(
            "not UTF-8",
            vec![b'{', 0xff, 0xfe, b'}'],
            6,
            "not valid JSON",
        ),
        case(
            "byte order mark",
            [b"\xef\xbb\xbf".as_slice(), &good].concat(),
            6,
            "not valid JSON",
        ),
        case("a JSON array", "[]", 7, "expected a JSON object"),
        case("a JSON string", "\"railvf\"", 7, "expected a JSON object"),
        case("JSON null", "null", 7, "expected a JSON object"),
        case("a number", "42", 7, "expected a JSON object"),
        case("nested 100000 deep", nested(100_000), 6, "recursion limit"),
        case("nested 200 deep", nested(200), 6, "recursion limit"),
        case("1 MiB + 1 config", big_string(1 << 20), 7, "larger than"),
        case("10 MB string", big_string(10_000_000), 7, "larger than"),
        case(
            "duplicate deviceID",
            good_text.replacen("{", &format!("{{\"deviceID\":\"{pf}\","), 1),
            7,
            "duplicate key",
        ),
        case(
            "duplicate ipam.type",
            good_text.replacen(
                "\"type\":\"host-local\"",
                "\"type\":\"host-local\",\"type\":\"static\"",
                1,
            ),
            7,
            "duplicate key",
        ),
        // --- cniVersion, name
        case(
            "no cniVersion",
            with(&|m| {
                m.remove("cniVersion");
            }),
            7,
            "cniVersion",
        ),
        case(
            "cniVersion 9.9.9",
            set("cniVersion", json!("9.9.9")),
            1,
            "9.9.9",
        ),
        case(
            "cniVersion 0.2.0",
            set("cniVersion", json!("0.2.0")),
            1,
            "0.2.0",
        ),
        case(
            "cniVersion a number",
            set("cniVersion", json!(1.0)),
            7,
            "cniVersion",
        ),
        case(
            "no name",
            with(&|m| {
                m.remove("name");
            }),
            7,
            "name",
        ),
        case("name a number", set("name", json!(5)), 7, "name"),
        // --- mtu
        case("mtu 2^40", set("mtu", json!(1u64 << 40)), 7, "mtu"),
        case("mtu -1", set("mtu", json!(-1)), 7, "mtu"),
        case("mtu 67", set("mtu", json!(67)), 7, "mtu"),
        case("mtu a string", set("mtu", json!("9000")), 7, "mtu"),
        case("mtu a float", set("mtu", json!(1500.5)), 7, "mtu"),
        case("mtu u64::MAX", set("mtu", json!(u64::MAX)), 7, "mtu"),
        // --- deviceID
        case(
            "deviceID ..",
            set("deviceID", json!("../../../../etc/passwd")),
            7,
            "deviceID",
        ),
        case(
            "deviceID with /",
            set("deviceID", json!(format!("{bdf}/../../x"))),
            7,
            "deviceID",
        ),
        case(
            "deviceID with NUL",
            set("deviceID", json!(format!("{bdf}\u{0}"))),
            7,
            "deviceID",
        ),
        case(
            "deviceID 12 bytes non-ASCII (panicked before the fix)",
            set("deviceID", json!("882\u{7f8}\u{7f8}\u{5e2}jM:")),
            7,
            "deviceID",
        ),
        case(
            "deviceID a number",
            set("deviceID", json!(18)),
            7,
            "deviceID",
        ),
        case(
            "deviceID an array",
            set("deviceID", json!([bdf])),
            7,
            "deviceID",
        ),
        case(
            "deviceID of the PF",
            set("deviceID", json!(pf)),
            100,
            "not an SR-IOV virtual function",
        ),
        case(
            "deviceID of a GPU",
            set("deviceID", json!(gpu)),
            100,
            "not an SR-IOV virtual function",
        ),
        case(
            "deviceID of nothing",
            set("deviceID", json!("0000:ff:1f.7")),
            100,
            "not a PCI function",
        ),
        case(
            "deviceID of a storage (Ethernet) VF",
            set("deviceID", json!(storage_vf)),
            11,
            "link_layer",
        ),
        case(
            "deviceID and pciBusID disagree",
            set("pciBusID", json!(storage_vf)),
            7,
            "same VF",
        ),
        case(
            "runtimeConfig.deviceID disagrees",
            set("runtimeConfig", json!({"deviceID": pf})),
            7,
            "same VF",
        ),
        case(
            "runtimeConfig a string",
            set("runtimeConfig", json!("x")),
            7,
            "runtimeConfig",
        ),
        case(
            "no deviceID at all",
            with(&|m| {
                m.remove("deviceID");
            }),
            7,
            "no VF given",
        ),
        // --- VF settings, GUID
        case(
            "guid all zero",
            set("guid", json!("00:00:00:00:00:00:00:00")),
            7,
            "guid",
        ),
        case(
            "guid all ones",
            set("guid", json!("ff:ff:ff:ff:ff:ff:ff:ff")),
            7,
            "guid",
        ),
        case("guid garbage", set("guid", json!("zz")), 7, "guid"),
        case(
            "mac multicast",
            set("mac", json!("01:00:5e:00:00:01")),
            7,
            "mac",
        ),
        case("vlan 5000", set("vlan", json!(5000)), 7, "vlan"),
        case(
            "vlanQoS without vlan",
            set("vlanQoS", json!(3)),
            7,
            "vlanQoS",
        ),
        case(
            "max_tx_rate below min",
            set("min_tx_rate", json!(100)),
            0,
            "",
        ),
        case(
            "rdmaIsolation a string",
            set("rdmaIsolation", json!("yes")),
            7,
            "rdmaIsolation",
        ),
        // --- ipam.type
        case(
            "ipam.type an absolute path",
            ipam_type("/bin/sh"),
            7,
            "ipam.type",
        ),
        case("ipam.type ..", ipam_type(".."), 7, "ipam.type"),
        case(
            "ipam.type ../../bin/sh",
            ipam_type("../../bin/sh"),
            7,
            "ipam.type",
        ),
        case(
            "ipam.type with NUL",
            ipam_type("host-local\u{0}x"),
            7,
            "ipam.type",
        ),
        case(
            "ipam.type 300 chars",
            ipam_type(&"a".repeat(300)),
            7,
            "ipam.type",
        ),
        case(
            "ipam.type not installed",
            ipam_type(&format!("{MARK}-ipam")),
            104,
            "not found",
        ),
        case(
            "ipam an array",
            set("ipam", json!(["host-local"])),
            7,
            "ipam",
        ),
        case(
            "ipam.type a number",
            set("ipam", json!({"type": 5})),
            7,
            "ipam.type",
        ),
        // --- logging
        case(
            "logLevel a number",
            set("logLevel", json!(5)),
            7,
            "logLevel",
        ),
        case("logFile a number", set("logFile", json!(5)), 7, "logFile"),
        // --- readiness, prevResult
        case(
            "readiness.timeoutMs 10^12",
            set("readiness", json!({"timeoutMs": 1_000_000_000_000u64})),
            7,
            "timeoutMs",
        ),
        case(
            "readiness.timeoutMs -1",
            set("readiness", json!({"timeoutMs": -1})),
            7,
            "timeoutMs",
        ),
        case(
            "readiness.linkLayer unknown",
            set("readiness", json!({"linkLayer": "TokenRing"})),
            7,
            "linkLayer",
        ),
        case(
            "readiness a string",
            set("readiness", json!("fast")),
            7,
            "readiness",
        ),
        case(
            "prevResult a string",
            set("prevResult", json!("ok")),
            7,
            "prevResult",
        ),
    ];
    // rates: min above max
    cases.retain(|c| c.name != "max_tx_rate below min");
    cases.push(case(
        "min_tx_rate above max_tx_rate",
        with(&|m| {
            m.insert("min_tx_rate".into(), json!(100));
            m.insert("max_tx_rate".into(), json!(10));
        }),
        7,
        "min_tx_rate",
    ));

    // --- the environment (the config is the good one)
    let env_case =
        |name: &str, k: &'static str, v: Option<OsString>, code: u64, needle: &'static str| {
            let mut c = case(name, good.clone(), code, needle);
            c.env.push((k, v));
            c
        };
    let s = |x: &str| Some(OsString::from(x));
    cases.extend([
        env_case("CNI_COMMAND unset", "CNI_COMMAND", None, 4, "CNI_COMMAND"),
        env_case(
            "CNI_COMMAND lower case",
            "CNI_COMMAND",
            s("add"),
            4,
            "CNI_COMMAND",
        ),
        env_case(
            "CNI_COMMAND with newline",
            "CNI_COMMAND",
            s("ADD\n"),
            4,
            "CNI_COMMAND",
        ),
        env_case(
            "CNI_CONTAINERID unset",
            "CNI_CONTAINERID",
            None,
            4,
            "CNI_CONTAINERID",
        ),
        env_case(
            "CNI_CONTAINERID ../",
            "CNI_CONTAINERID",
            s("../../etc"),
            4,
            "CNI_CONTAINERID",
        ),
        env_case(
            "CNI_CONTAINERID with @",
            "CNI_CONTAINERID",
            s("a@b"),
            4,
            "CNI_CONTAINERID",
        ),
        env_case(
            "CNI_CONTAINERID 2000 chars",
            "CNI_CONTAINERID",
            Some("a".repeat(2000).into()),
            4,
            "CNI_CONTAINERID",
        ),
        env_case(
            "CNI_IFNAME 16 bytes",
            "CNI_IFNAME",
            s("sixteen-chars-xx"),
            4,
            "CNI_IFNAME",
        ),
        env_case("CNI_IFNAME with /", "CNI_IFNAME", s("a/b"), 4, "CNI_IFNAME"),
        env_case("CNI_IFNAME empty", "CNI_IFNAME", s(""), 4, "CNI_IFNAME"),
        env_case("CNI_IFNAME unset", "CNI_IFNAME", None, 4, "CNI_IFNAME"),
        env_case("CNI_IFNAME .", "CNI_IFNAME", s("."), 4, "CNI_IFNAME"),
        env_case("CNI_IFNAME ..", "CNI_IFNAME", s(".."), 4, "CNI_IFNAME"),
        env_case(
            "CNI_IFNAME with newline",
            "CNI_IFNAME",
            s("net\n1"),
            4,
            "CNI_IFNAME",
        ),
        env_case(
            "CNI_IFNAME not UTF-8",
            "CNI_IFNAME",
            Some(OsString::from_vec(vec![b'n', 0xff])),
            4,
            "CNI_IFNAME",
        ),
        env_case("CNI_NETNS unset", "CNI_NETNS", None, 4, "CNI_NETNS"),
        env_case(
            "CNI_NETNS relative",
            "CNI_NETNS",
            s("run/netns/x"),
            4,
            "CNI_NETNS",
        ),
        env_case(
            "CNI_NETNS with ..",
            "CNI_NETNS",
            s("/run/netns/../../etc/passwd"),
            4,
            "CNI_NETNS",
        ),
        env_case(
            "CNI_NETNS that does not exist",
            "CNI_NETNS",
            s(&format!("/run/netns/{MARK}-none")),
            4,
            "does not exist",
        ),
        env_case(
            "CNI_NETNS a regular file",
            "CNI_NETNS",
            Some(plain_file.clone().into()),
            4,
            "not a namespace",
        ),
        env_case(
            "CNI_NETNS a directory",
            "CNI_NETNS",
            Some(a_dir.clone().into()),
            4,
            "directory",
        ),
        env_case(
            "CNI_NETNS a FIFO",
            "CNI_NETNS",
            Some(fifo.clone().into()),
            4,
            "FIFO",
        ),
        env_case(
            "CNI_NETNS /dev/null",
            "CNI_NETNS",
            s("/dev/null"),
            4,
            "device node",
        ),
        env_case(
            "CNI_NETNS a mount namespace",
            "CNI_NETNS",
            s("/proc/self/ns/mnt"),
            4,
            "not a network namespace",
        ),
        env_case(
            "CNI_PATH relative",
            "CNI_PATH",
            s("usr/lib/cni"),
            104,
            "not found",
        ),
        env_case(
            "RAILVF_STATE_DIR relative",
            "RAILVF_STATE_DIR",
            s("state"),
            4,
            "RAILVF_STATE_DIR",
        ),
        env_case(
            "RAILVF_STATE_DIR with ..",
            "RAILVF_STATE_DIR",
            s("/var/lib/../../tmp"),
            4,
            "RAILVF_STATE_DIR",
        ),
        env_case(
            "RAILVF_HOST_ROOT relative",
            "RAILVF_HOST_ROOT",
            s("sim"),
            4,
            "RAILVF_HOST_ROOT",
        ),
    ]);

    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let before = marked_files(&[]);
    assert!(
        before.is_empty(),
        "leftovers from an earlier run: {before:?}"
    );
    let pod = TestNetns::new().unwrap();

    // The good call works (so each case below fails because of its one change).
    let sanity = |tag: &str| {
        let o = cni.run_cmd(
            cni.command("ADD", "hostile-good", "net1", Some(pod.path())),
            &good,
        );
        assert!(
            o.ok,
            "{tag}: the good config must attach: {}\n{}",
            o.stdout, o.stderr
        );
        assert_eq!(
            vf_name_in(&sim, Some(pod.name()), &bdf).as_deref(),
            Some("net1")
        );
        cni.run("DEL", "hostile-good", Some(pod.path()), &good_text)
            .expect_ok();
        assert_home(&sim, &v);
    };
    sanity("before");

    let mut failures = Vec::new();
    for c in &cases {
        let mut cmd = cni.command("ADD", "hostile", "net1", Some(pod.path()));
        cmd.current_dir(&cwd);
        for (k, val) in &c.env {
            match val {
                Some(x) => cmd.env(k, x),
                None => cmd.env_remove(k),
            };
        }
        let o = match wait_for(cni.spawn_cmd(cmd, &c.stdin), Duration::from_secs(20)) {
            Ok(o) => o,
            Err(hung) => {
                failures.push(format!("{}: {hung}", c.name));
                continue;
            }
        };
        let mut problems = Vec::new();
        if o.ok {
            problems.push("succeeded".to_string());
        }
        if o.stderr.contains("panicked") || o.signal.is_some() {
            problems.push(format!("panicked or died: {:?} {}", o.signal, o.stderr));
        }
        match serde_json::from_str::<Value>(&o.stdout) {
            Ok(err) => {
                if err["cniVersion"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("no cniVersion: {}", o.stdout));
                }
                let msg = err["msg"].as_str().unwrap_or("");
                if msg.is_empty() {
                    problems.push(format!("no msg: {}", o.stdout));
                }
                if err["code"].as_u64() != Some(c.code) {
                    problems.push(format!("code {} (expected {}): {msg}", err["code"], c.code));
                }
                let text = format!("{msg} {}", err["details"].as_str().unwrap_or(""));
                if !text.contains(c.needle) {
                    problems.push(format!("{:?} not in: {text}", c.needle));
                }
            }
            Err(e) => problems.push(format!(
                "stdout is not an error object ({e}): {:?}",
                o.stdout
            )),
        }
        if let Some(p) = home_problem(&sim, &v) {
            problems.push(p);
        }
        if !pod_links(pod.name()).is_empty() {
            problems.push(format!("pod has {:?}", pod_links(pod.name())));
        }
        if !cni.state_files().is_empty() {
            problems.push(format!("state files {:?}", cni.state_files()));
        }
        if !reservations(&hl, "hostile").is_empty() {
            problems.push(format!("IPAM allocated {:?}", reservations(&hl, "hostile")));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
            // Keep the cases independent: undo whatever this one did.
            let _ = cni.run("DEL", "hostile", Some(pod.path()), &good_text);
        }
    }
    sanity("after");

    let after = marked_files(&[&cwd]);
    assert!(after.is_empty(), "hostile input created files: {after:?}");
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "files in railvf's cwd"
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 40);
    summary(format!(
        "hostile CNI input: {} bad netconfs/environments against the real binary, all answered with the spec error and the expected code, 0 VFs touched, 0 files created",
        cases.len()
    ));
}

/// A hostile `logFile` is never opened: the call goes on, logging to stderr with a warning
/// that says why, and nothing is written where it points (through `..`, symlinks, into
/// another pod's log or the audit log, outside the log directory).
#[test]
fn hostile_log_files_are_never_written_and_the_call_goes_on() {
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sim = fast_node(1).build().expect("sim");
    let cni = cni_for(&sim, tmp.path());
    let v = sim.vf("0000:18:00.1").unwrap();
    let logs = tmp.path().join("logs");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, logs.join("sub")).unwrap();
    std::os::unix::fs::symlink(
        outside.join(format!("{MARK}-target.log")),
        logs.join(format!("{MARK}-link.log")),
    )
    .unwrap();
    // Files of others below the log directory, which must stay as they are.
    let theirs = [
        logs.join("pods/tenant-b_victim_1234/app/0.log"),
        logs.join("audit/audit.log"),
    ];
    for f in &theirs {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "their line\n").unwrap();
    }
    let mut paths: Vec<String> = vec![
        format!("/etc/{MARK}.log"),
        format!("{}/../{MARK}.log", logs.display()),
        format!("{MARK}.log"),
        format!("{}/{MARK}\u{0}.log", logs.display()),
        logs.join("sub")
            .join(format!("{MARK}.log"))
            .display()
            .to_string(),
        logs.join(format!("{MARK}-link.log")).display().to_string(),
    ];
    paths.extend(theirs.iter().map(|p| p.display().to_string()));
    let pod = TestNetns::new().unwrap();
    for p in &paths {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "hostile-log", "type": "railvf",
            "deviceID": v.pci.to_string(), "logFile": p, "logLevel": "debug",
        })
        .to_string();
        let mut cmd = cni.command("ADD", "hostile-log", "net1", Some(pod.path()));
        cmd.env("RAILVF_LOG_DIR", &logs);
        let o = cni.run_cmd(cmd, conf.as_bytes());
        assert!(o.ok, "{p:?}: ADD must go on: {}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("logFile") && o.stderr.contains("is not used"),
            "{p:?}: {}",
            o.stderr
        );
        let mut cmd = cni.command("DEL", "hostile-log", "net1", Some(pod.path()));
        cmd.env("RAILVF_LOG_DIR", &logs);
        let o = cni.run_cmd(cmd, conf.as_bytes());
        assert!(o.ok, "{p:?}: DEL: {}\n{}", o.stdout, o.stderr);
        assert_home(&sim, &v);
    }
    for f in &theirs {
        assert_eq!(std::fs::read_to_string(f).unwrap(), "their line\n", "{f:?}");
    }
    let after = marked_files(&[&outside, &logs]);
    assert_eq!(
        after,
        vec![logs.join(format!("{MARK}-link.log"))],
        "only the test's own symlink carries the mark"
    );
    assert!(cni.state_files().is_empty());
    summary(format!(
        "hostile logFile: {} paths, each ADD and DEL went on logging to stderr, 0 files written",
        paths.len()
    ));
}
