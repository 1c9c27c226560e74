//! The command line's contract with the runtime, without a node: what is read from stdin
//! and when, and which `cniVersion` an error object carries. No root needed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn railvf() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_railvf"));
    c.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn an_environment_error_carries_the_configs_cni_version() {
    let mut child = railvf()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "-starts-with-a-dash")
        .env("CNI_IFNAME", "net1")
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_PATH", "/usr/lib/cni")
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            br#"{"cniVersion":"0.3.1","name":"n","type":"railvf","deviceID":"0000:18:00.1"}"#,
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 4, "{e}");
    assert_eq!(e["cniVersion"], "0.3.1", "{e}");
    assert!(
        e["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{e}"
    );
}

#[test]
fn version_answers_without_waiting_for_stdin_to_close() {
    let mut child = railvf().env("CNI_COMMAND", "VERSION").spawn().unwrap();
    // stdin stays open: the answer must not depend on its end.
    let _stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("VERSION still waits for stdin after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["supportedVersions"][4], "1.1.0", "{v}");
}
