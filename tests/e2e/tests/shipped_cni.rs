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

/// `(e_type, has PT_INTERP)` of a 64-bit little-endian ELF file.
fn elf_kind(bin: &Path) -> (u16, bool) {
    let b = std::fs::read(bin).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{}: not an ELF file", bin.display());
    assert_eq!(b[4], 2, "{}: not a 64-bit ELF", bin.display());
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36) as usize, u16_at(0x38) as usize);
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == PT_INTERP
    });
    (u16_at(0x10), interp)
}

#[test]
fn the_shipped_cni_binary_is_static_and_attaches_a_vf() {
    let bin = build_shipped();
    let (e_type, interp) = elf_kind(&bin);
    assert!(
        !interp,
        "{} asks for a dynamic loader (PT_INTERP): it would need the node's glibc",
        bin.display()
    );
    const ET_EXEC: u16 = 2;
    assert_eq!(
        e_type,
        ET_EXEC,
        "{} is position-independent (ET_DYN): start-up pays for relocations",
        bin.display()
    );
    // The development build, as a control for the check itself: dynamically linked.
    assert!(elf_kind(&railvf_e2e::bin_path("railvf")).1);

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
    let mut cni = Cni::new(&sim, tmp.path());
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
