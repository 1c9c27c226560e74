//! The README's main job, `railvf-sim demo`, with and without each `--fault`: it shows the
//! attachment or the refusal naming the failed check, and leaves nothing behind.

use std::path::PathBuf;
use std::process::Command;

use railvf_sim::require_root;

struct Run {
    stdout: String,
    pid: u32,
    success: bool,
}

/// The demo uses the real VF names (ibp24s0f1 …): two demos at once would collide.
static ONE_DEMO_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The demo runs the binaries next to it: bring all three up to date.
fn demo_command() -> Command {
    railvf_e2e::bin_path("railvf");
    railvf_e2e::bin_path("railvf-device-plugin");
    Command::new(railvf_e2e::bin_path("railvf-sim"))
}

fn demo(args: &[&str]) -> Run {
    let child = demo_command()
        .arg("demo")
        .args(["--timeout-ms", "1000"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        stdout,
        pid,
        success: out.status.success(),
    }
}

/// `ip <args…>`'s stdout; a failing `ip` fails the test (an empty listing would pass it).
fn ip(args: &[&str]) -> String {
    railvf_sim::ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Nothing the demo made survives it: its node root, its pod netns, its VF links, its
/// device plugin process.
fn assert_nothing_left(run: &Run) {
    assert!(run.success);
    assert!(run.stdout.contains("nothing left behind"), "{}", run.stdout);
    let root = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("== simulated DGX H200 node at "))
        .map(PathBuf::from)
        .expect("the demo names its node root");
    assert!(!root.exists(), "{} survived the demo", root.display());
    let netns = ip(&["netns", "list"]);
    let mine = format!("rvt-{}-", run.pid);
    assert!(
        !netns.contains(&mine),
        "a pod netns of the demo survived: {netns}"
    );
    // The demo names VFs as on a real DGX (ibp24s0f1 …); no other test does.
    let links = ip(&["-o", "link", "show"]);
    for vf in ["ibp24s0f1", "ibp94s0f1", "ibp220s1"] {
        assert!(
            !links.contains(&format!(": {vf}")),
            "{vf} survived: {links}"
        );
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines()
            .any(|l| l.contains("railvf-device-plugin") && l.contains(&*root.to_string_lossy())),
        "the demo's device plugin is still running"
    );
}

#[test]
fn demo_attaches_eight_rail_aligned_vfs_and_shows_each_refusal() {
    if !require_root() {
        return;
    }
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ok = demo(&[]);
    assert!(
        ok.stdout
            .contains("8 of 8 VFs attached RDMA-ready, 0 refused"),
        "{}",
        ok.stdout
    );
    // Without --cni-bin, the railvf beside the demo.
    let beside = railvf_e2e::bin_path("railvf");
    assert!(
        ok.stdout
            .contains(&format!("railvf CNI binary: {}", beside.display())),
        "{}",
        ok.stdout
    );
    for rail in 0..8 {
        assert!(
            ok.stdout.contains(&format!(" rail {rail}: 10.56.{rail}.")),
            "rail {rail} missing: {}",
            ok.stdout
        );
    }
    assert!(
        ok.stdout.contains(
            "NCCL_IB_HCA==mlx5_12,mlx5_20,mlx5_28,mlx5_36,mlx5_44,mlx5_52,mlx5_60,mlx5_68"
        )
    );
    assert!(
        ok.stdout
            .contains("64 VFs, 64 on compute PFs, 0 of them not ready")
    );
    assert_nothing_left(&ok);

    for (fault, check, observed) in [
        ("lid-zero", "lid:", "found 0x0"),
        ("port-down", "port_state:", "1: DOWN"),
        ("eth-fallback", "link_layer:", "found Ethernet"),
        ("host-managed", "ownership:", "systemd-networkd"),
    ] {
        let run = demo(&["--fault", fault]);
        let refused = run
            .stdout
            .lines()
            .find(|l| l.contains("REFUSED"))
            .unwrap_or_else(|| panic!("--fault {fault}: no refusal shown: {}", run.stdout));
        assert!(
            refused.contains("rail 3") && refused.contains("CNI code 11"),
            "{refused}"
        );
        assert!(
            refused.contains(check) && refused.contains(observed),
            "--fault {fault}: {refused}"
        );
        assert!(
            run.stdout
                .contains("7 of 8 VFs attached RDMA-ready, 1 refused"),
            "{}",
            run.stdout
        );
        assert_nothing_left(&run);
    }
}

/// `--cni-bin` names the CNI binary the demo runs (scripts/demo.sh passes the shipped
/// build): the demo checks that one, and refuses a missing one by name.
#[test]
fn a_missing_cni_bin_is_refused_by_name() {
    if !require_root() {
        return;
    }
    let missing = PathBuf::from("/nonexistent/railvf-demo-test/railvf");
    let out = demo_command()
        .arg("demo")
        .arg("--cni-bin")
        .arg(&missing)
        .output()
        .expect("start the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is missing", missing.display())),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_mid_attach_still_tears_everything_down() {
    use std::io::{BufRead, BufReader};
    if !require_root() {
        return;
    }
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The lid-zero fault makes one ADD wait: a window to interrupt the demo mid-attach.
    let mut child = demo_command()
        .args(["demo", "--fault", "lid-zero", "--timeout-ms", "20000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the demo");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        // net3 is attached; net4 (rail 3) is now waiting for a LID that never comes.
        if line.contains("net3 ") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for line in lines {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(stdout.contains("interrupted: tearing down"), "{stdout}");
    assert!(
        !stdout.contains("net5 "),
        "the demo went on after Ctrl-C: {stdout}"
    );
    assert_nothing_left(&Run {
        stdout,
        pid,
        success: status.success(),
    });
}
