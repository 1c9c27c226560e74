//! Debian's podman as the tests run it: everything in the test's temp dir (storage, run
//! state, libpod's files), runc, cgroupfs, a busybox-static root filesystem, no registry.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Podman {
    dir: PathBuf,
    /// For `CONTAINERS_CONF`.
    pub conf: PathBuf,
    /// `--rootfs` for `podman run`: busybox-static as `/bin/busybox`.
    pub rootfs: PathBuf,
}

impl Podman {
    /// Sets podman up in `dir`; `network` is the `[network]` table of `containers.conf`
    /// (empty for none).
    pub fn new(dir: &Path, network: &str) -> Podman {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
# This VM's root lacks CAP_SYS_RESOURCE: keep the container's limits below ours.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

{network}

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "none"
# libpod's runtime files inside the test's temp dir, not /run/libpod.
tmp_dir = "{}"
"#,
                dir.join("libpod").display()
            ),
        )
        .unwrap();
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        Podman {
            dir: dir.to_path_buf(),
            conf,
            rootfs,
        }
    }

    /// The global arguments that keep podman's state in the test's dir.
    pub fn global_args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.dir.join("storage").into(),
            "--runroot".into(),
            self.dir.join("run").into(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `podman` with its config and [`Podman::global_args`]; the caller adds the subcommand.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .args(self.global_args());
        c
    }
}
