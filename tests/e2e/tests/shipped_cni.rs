//! The CNI binary as it ships (scripts/build-cni.sh; the Containerfile installs it onto the
//! nodes): statically linked, not position-independent, and it attaches and returns a VF
//! like the development build.

mod reliability_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use railvf_sim::{SimOptions, TestNetns, require_root};
use reliability_support::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    let bin = ws.join(rel.trim());
    assert!(
        bin.is_file(),
        "scripts/build-cni.sh printed {rel:?}: no such file"
    );
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
    let conf = netconf("1.1.0", "shipped", &bdf, r#""mtu":2044"#);

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

    cni.run("DEL", "shipped", Some(pod.path()), &conf)
        .expect_ok();
    assert_home(&sim, &vf);
    assert_eq!(cni.state_files(), Vec::<String>::new());
}
