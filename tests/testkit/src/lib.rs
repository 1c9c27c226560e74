//! Test helpers shared by more than one test suite. Only tests depend on this crate.
#![forbid(unsafe_code)]

pub mod cni;
pub mod device_plugin;
pub mod ip;
pub mod podman;

/// Fails loudly when a tool the test needs is missing: a skipped check must not pass.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: install the Debian package `{package}` (see README: test prerequisites)"
    );
}

/// Writes an executable `#!/bin/sh` script that may be run at once. A file this process
/// writes cannot be run (`ETXTBSY`) while any child it forked in the meantime still holds a
/// copy of the write descriptor (from fork to exec), and parallel tests fork all the time;
/// so the script is put in place by `install`, a process of its own, from a staging copy.
pub fn write_script(path: &std::path::Path, body: &str) {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".staging");
    let staging = std::path::PathBuf::from(staging);
    std::fs::write(&staging, format!("#!/bin/sh\n{body}\n")).unwrap();
    let st = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&staging)
        .arg(path)
        .status()
        .expect("running install (coreutils)");
    assert!(st.success(), "install {} failed: {st}", path.display());
    std::fs::remove_file(&staging).unwrap();
}
