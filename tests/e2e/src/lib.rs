//! Helpers for end-to-end tests: where the workspace's binaries are.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The directory cargo puts this profile's binaries in (`target/debug`), derived from the
/// running test executable (`target/debug/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe
        .parent()
        .expect("test executables live in target/<profile>/deps");
    deps.parent()
        .expect("target/<profile> exists above deps")
        .to_path_buf()
}

/// Path of a workspace binary (`railvf`, `railvf-device-plugin`, `railvf-sim`), brought up
/// to date once per test process with the same cargo: `cargo test -p railvf-e2e` alone
/// would otherwise run whatever stale binary an earlier build left.
pub fn bin_path(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let path = target_dir().join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let package = match name {
            "railvf" => "railvf-cni",
            "railvf-device-plugin" => "railvf-device-plugin",
            "railvf-sim" => "railvf-sim",
            other => panic!("{other} is not a railvf binary"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("running cargo to build a workspace binary");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
        built.push(name.to_string());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}
