//! The CNI binary as it ships (scripts/build-cni.sh; the Containerfile installs it onto the
//! nodes): statically linked against musl where Rust's musl target is installed, not
//! position-independent, and it attaches and returns a VF like the development build,
//! delegating to an IPAM plugin and checking the attachment.

mod reliability_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use railvf_sim::{SimOptions, TestNetns, require_root};
use reliability_support::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Rust's musl target for this machine, when its standard library is installed: then
/// scripts/build-cni.sh must build against it.
fn installed_musl_target() -> Option<String> {
    let musl = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", &musl])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let has_std = std::fs::read_dir(dir.trim()).ok()?.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.starts_with("libstd-") && n.ends_with(".rlib")
    });
    has_std.then_some(musl)
}

/// Runs scripts/build-cni.sh and returns the binary it printed.
fn build_shipped() -> PathBuf {
    let ws = workspace();
    let out = Command::new(ws.join("scripts/build-cni.sh"))
        .current_dir(&ws)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-cni.sh");
    assert!(out.status.success(), "scripts/build-cni.sh failed");
    let rel = String::from_utf8(out.stdout).expect("a path");
    let rel = rel.trim();
    let bin = ws.join(rel);
    assert!(
        bin.is_file(),
        "scripts/build-cni.sh printed {rel:?}: no such file"
    );
    match installed_musl_target() {
        Some(musl) => assert!(
            rel.contains(&format!("{musl}/release-cni/")),
            "Rust's {musl} target is installed, yet scripts/build-cni.sh built {rel:?}"
        ),
        None => eprintln!(
            "shipped_cni: Rust's musl target is not installed here: checking the static glibc build"
        ),
    }
    bin
}

#[test]
fn the_shipped_cni_binary_is_static_and_attaches_a_vf() {
    let bin = build_shipped();
    let shipped = railvf_sim::elf::linkage(&bin).unwrap();
    assert!(
        !shipped.dynamic,
        "{} asks for a dynamic loader (PT_INTERP): it would need the node's glibc",
        bin.display()
    );
    assert!(
        !shipped.pie,
        "{} is position-independent (ET_DYN): start-up pays for relocations",
        bin.display()
    );
    // The development build, as a control for the check itself: dynamically linked.
    let dev = railvf_sim::elf::linkage(&railvf_e2e::bin_path("railvf")).unwrap();
    assert!(dev.dynamic, "{dev:?}");

    let version = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(version.status.success());
    let v: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");

    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sim = SimOptions::dgx_h200().vfs_per_pf(1).build().expect("sim");
    let mut cni = cni_for(&sim, tmp.path());
    cni.bin = bin;
    let vf = sim.vfs().into_iter().next().unwrap();
    let bdf = vf.pci.to_string();
    let pod = TestNetns::new().unwrap();
    require_host_local();
    let hl = tmp.path().join("host-local");
    let conf = netconf(
        "1.1.0",
        "shipped",
        &bdf,
        &format!(r#""mtu":2044,{}"#, host_local(&hl, "10.66.0.0/24")),
    );

    let add = cni
        .run("ADD", "shipped", Some(pod.path()), &conf)
        .expect_ok();
    assert_eq!(add.json()["interfaces"][0]["pciID"], bdf, "{}", add.stdout);
    assert_eq!(
        vf_name_in(&sim, Some(pod.name()), &bdf).as_deref(),
        Some("net1")
    );
    let mtu = links(Some(pod.name()))
        .into_iter()
        .find(|l| l["ifname"] == "net1")
        .map(|l| l["mtu"].clone());
    assert_eq!(mtu, Some(serde_json::json!(2044)));
    // The address host-local (a child process of the shipped binary) gave, on the link.
    let ip = add.json()["ips"][0]["address"].clone();
    assert_eq!(
        addrs4(Some(pod.name()), "net1"),
        vec![ip.as_str().unwrap_or_default().to_string()],
        "{}",
        add.stdout
    );
    assert_eq!(reservations(&hl, "shipped").len(), 1);

    let mut check: serde_json::Value = serde_json::from_str(&conf).unwrap();
    check["prevResult"] = add.json();
    cni.run("CHECK", "shipped", Some(pod.path()), &check.to_string())
        .expect_ok();

    cni.run("DEL", "shipped", Some(pod.path()), &conf)
        .expect_ok();
    assert_home(&sim, &vf);
    assert_eq!(cni.state_files(), Vec::<String>::new());
    assert_eq!(reservations(&hl, "shipped"), Vec::new());
}
