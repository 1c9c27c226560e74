//! railvf driven by a real CNI runtime: Debian's podman (CNI network backend, runc) runs a
//! busybox-static container on a `railvf` network and sees `net1` inside; `run --rm` makes
//! podman call DEL, and the VF must be home afterwards. Needs root; skips LOUDLY otherwise.
//! Missing tools fail the test (packages: podman runc busybox-static
//! containernetworking-plugins).

mod common;

use common::*;
use railvf_sim::require_root;
use railvf_testkit::podman::Podman;
use railvf_testkit::require_tool;

const VF: &str = "0000:5e:00.1";

#[test]
fn podman_runs_a_container_with_the_vf_as_net1() {
    if !require_root() {
        return;
    }
    require_tool("/usr/bin/podman", "podman");
    require_tool("/usr/sbin/runc", "runc");
    require_tool("/bin/busybox", "busybox-static");
    require_tool("/usr/lib/cni/host-local", "containernetworking-plugins");

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let sim = sim(small());
    let state = t.join("state");
    let net = format!("railvf-pm{}", std::process::id());

    // podman passes no environment to plugins: a wrapper in its plugin dir sets ours.
    let plugins = t.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let wrapper = plugins.join("railvf");
    railvf_testkit::write_script(
        &wrapper,
        &format!(
            "export RAILVF_HOST_ROOT='{}' RAILVF_STATE_DIR='{}'\nexec '{}' \"$@\"",
            sim.root().display(),
            state.display(),
            railvf_bin().display()
        ),
    );

    let netdir = t.join("net.d");
    std::fs::create_dir_all(&netdir).unwrap();
    let hl = t.join("hl");
    std::fs::write(
        netdir.join(format!("{net}.conflist")),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{net}","plugins":[{{"type":"railvf","deviceID":"{VF}","mtu":2100,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.98.0.0/24"}}]]}}}}]}}"#,
            hl.display()
        ),
    )
    .unwrap();
    let podman = Podman::new(
        t,
        &format!(
            r#"[network]
network_backend = "cni"
cni_plugin_dirs = ["{}", "/usr/lib/cni"]
network_config_dir = "{}""#,
            plugins.display(),
            netdir.display()
        ),
    );
    let network = format!("{net}:interface_name=net1");
    // Every flag before `--rootfs DIR`: what follows DIR is the container's command.
    let out = podman
        .command()
        .args(["run", "--rm", "--network", &network, "--rootfs"])
        .arg(&podman.rootfs)
        .args([
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox ip -o -4 addr show dev net1; /bin/busybox cat /sys/class/net/net1/mtu",
        ])
        .output()
        .expect("run podman");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "podman run failed: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("net1") && stdout.contains("inet 10.98.0."),
        "inside the container: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "2100"),
        "MTU inside the container: {stdout}"
    );

    // `run --rm` made podman call DEL: the VF is home, the address released, no state left.
    let host_name = sim.vf(VF).unwrap().netdev;
    assert!(
        link(None, &host_name).is_some(),
        "VF {host_name} back in the host"
    );
    assert!(
        reservations(&hl, &net).is_empty(),
        "host-local released the address"
    );
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state dir not empty: {left:?}");
}
