//! Operating the plugin: `/metrics` and `/healthz` of the real binary against the fake
//! kubelet on the simulated DGX H200, and the CNI's rail-alignment event files.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::{ContainerPreferredAllocationRequest, PreferredAllocationRequest};
use railvf_sim::{Fault, SimNode, SimOptions};
use support::*;

const METRICS: &[&str] = &["--metrics-addr", "127.0.0.1:0"];

fn sim() -> SimNode {
    SimOptions::dgx_h200().no_links().build().expect("sim")
}

/// The simulated node, the fake kubelet, and the plugin serving its metrics at `addr`.
struct Metered {
    sim: SimNode,
    _tmp: tempfile::TempDir,
    dirs: Dirs,
    kubelet: FakeKubelet,
    plugin: Plugin,
    addr: std::net::SocketAddr,
}

async fn start_metered() -> Metered {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(sim.root(), &dirs, None, METRICS);
    let addr = metrics_addr(&mut plugin).await;
    Metered {
        sim,
        _tmp: tmp,
        dirs,
        kubelet,
        plugin,
        addr,
    }
}

fn vfs(state: &str) -> String {
    format!(r#"railvf_vfs{{resource="{RESOURCE}",state="{state}"}}"#)
}

fn check_failed(vf: &str, check: &str) -> String {
    format!(r#"railvf_vf_check_failed{{resource="{RESOURCE}",vf="{vf}",check="{check}"}}"#)
}

/// Port DOWN, Allocate and GetPreferredAllocation move the figures; `/healthz` follows the
/// registration: 200 while registered, 503 with the reason once kubelet is gone and the
/// re-registration keeps failing, 200 again when kubelet is back.
#[tokio::test]
async fn metrics_and_healthz_follow_health_allocations_and_registration() {
    let Metered {
        sim,
        _tmp,
        dirs,
        mut kubelet,
        mut plugin,
        addr,
    } = start_metered().await;
    let mut client = registration(&mut kubelet, &plugin).await.client;

    let text = wait_metrics(addr, "64 healthy VFs, registered", |t| {
        sample(t, &vfs("healthy")) == Some(64.0)
            && sample(t, &format!(r#"railvf_registered{{resource="{RESOURCE}"}}"#)) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&text, &vfs("unhealthy")), Some(0.0));
    assert_eq!(sample(&text, &vfs("allocated")), Some(0.0));
    assert_eq!(
        sample(
            &text,
            &format!(r#"railvf_registrations_total{{resource="{RESOURCE}"}}"#)
        ),
        Some(1.0)
    );
    // One 0/1 series per VF and health check.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("railvf_vf_check_failed{"))
            .count(),
        64 * 4
    );
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");

    // A PF port goes DOWN: its 8 VFs turn unhealthy on port_state, nothing else.
    let pf = "0000:40:00.0";
    let down: BTreeSet<String> = sim
        .vfs()
        .iter()
        .filter(|v| v.pf.to_string() == pf)
        .map(|v| v.pci.to_string())
        .collect();
    assert_eq!(down.len(), 8);
    sim.inject_fault(pf, Fault::PortDown).unwrap();
    let text = wait_metrics(addr, "8 unhealthy VFs", |t| {
        sample(t, &vfs("unhealthy")) == Some(8.0)
    })
    .await;
    assert_eq!(sample(&text, &vfs("healthy")), Some(56.0));
    for v in sim.vfs() {
        let id = v.pci.to_string();
        let want = if down.contains(&id) { 1.0 } else { 0.0 };
        assert_eq!(
            sample(&text, &check_failed(&id, "port_state")),
            Some(want),
            "{id}"
        );
        for other in ["driver", "rdma", "link_layer"] {
            assert_eq!(sample(&text, &check_failed(&id, other)), Some(0.0), "{id}");
        }
    }

    // Allocate: counted and timed; the VFs count as allocated.
    client
        .allocate(alloc_req(&["0000:18:00.1", "0000:9a:00.2"]))
        .await
        .unwrap();
    let unhealthy = down.iter().next().unwrap().clone();
    client
        .allocate(alloc_req(&[&unhealthy]))
        .await
        .expect_err("an unhealthy VF is refused");
    let text = http_get(addr, "/metrics").await.1;
    let series =
        |name: &str, result: &str| format!(r#"{name}{{resource="{RESOURCE}",result="{result}"}}"#);
    assert_eq!(
        sample(&text, &series("railvf_allocate_requests_total", "ok")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &series("railvf_allocate_requests_total", "invalid_argument")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"railvf_allocate_duration_seconds_count{{resource="{RESOURCE}"}}"#)
        ),
        Some(2.0)
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("railvf_allocate_duration_seconds_bucket{")
                && l.contains(r#"le="+Inf""#)
                && l.ends_with(" 2")
        ),
        "{text}"
    );
    assert!(
        sample(
            &text,
            &format!(r#"railvf_allocate_duration_seconds_sum{{resource="{RESOURCE}"}}"#)
        )
        .is_some_and(|s| s > 0.0)
    );
    assert_eq!(sample(&text, &vfs("allocated")), Some(2.0));

    // kubelet offers 0000:18:00.1 as available again: it is free.
    client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["0000:18:00.1".into(), "0000:18:00.2".into()],
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        })
        .await
        .unwrap();
    let text = http_get(addr, "/metrics").await.1;
    assert_eq!(sample(&text, &vfs("allocated")), Some(1.0));
    assert_eq!(
        sample(
            &text,
            &series("railvf_preferred_allocation_requests_total", "ok")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"railvf_preferred_allocation_duration_seconds_count{{resource="{RESOURCE}"}}"#
            )
        ),
        Some(1.0)
    );

    // kubelet goes away the way it restarts (socket directory wiped) but does not come
    // back: the plugin re-serves, registration fails, and once the retry backoff has
    // ramped up /healthz says 503 with the reason.
    kubelet.stop().await;
    for f in std::fs::read_dir(&dirs.kubelet).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let deadline = std::time::Instant::now() + GUARD;
    let body = loop {
        let (code, body) = http_get(addr, "/healthz").await;
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never turned 503: {body}\n{}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body}");
    assert!(
        body.contains(RESOURCE)
            && body.contains("registration")
            && body.contains("kubelet is not running yet"),
        "{body}"
    );
    let text = http_get(addr, "/metrics").await.1;
    assert_eq!(
        sample(
            &text,
            &format!(r#"railvf_registered{{resource="{RESOURCE}"}}"#)
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            &format!(r#"railvf_registration_failures_total{{resource="{RESOURCE}"}}"#)
        )
        .is_some_and(|n| n >= 1.0)
    );

    // kubelet is back: registered again, 200.
    kubelet.serve().unwrap();
    let _ = registration(&mut kubelet, &plugin).await;
    wait_metrics(addr, "a second registration", |t| {
        sample(
            t,
            &format!(r#"railvf_registrations_total{{resource="{RESOURCE}"}}"#),
        ) == Some(2.0)
    })
    .await;
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    plugin.assert_running();
}

fn event(outcome: &str, policy: &str) -> String {
    serde_json::json!({
        "version": 1,
        "time": "2025-06-01T12:00:00Z",
        "containerID": "c0ffee",
        "ifname": "net1",
        "pod": "team-a/trainer-0",
        "vf": "0000:c0:00.1",
        "vfRail": 5,
        "gpuRails": [0, 1],
        "policy": policy,
        "outcome": outcome,
        "reason": "the pod's GPUs are on rails 0,1",
    })
    .to_string()
}

/// Written the way the CNI writes: a `.` temporary name, then a rename.
fn drop_event(dir: &std::path::Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Event files in the default directory below the host root are counted by outcome and
/// policy, logged (misaligned/refused at warn, with the pod and rails) and deleted;
/// garbage is deleted with a warning; other files are left alone.
#[tokio::test]
async fn rail_events_are_counted_logged_and_deleted() {
    let Metered {
        sim,
        _tmp,
        dirs: _dirs,
        mut kubelet,
        mut plugin,
        addr,
    } = start_metered().await;
    let _ = registration(&mut kubelet, &plugin).await;
    let dir = sim.root().join("run/railvf/rail-events");
    wait_log(&mut plugin, "reading rail-alignment events").await;
    assert!(dir.is_dir(), "the plugin creates the directory");

    drop_event(
        &dir,
        "1748779200000000000-4242-a1b2.json",
        &event("misaligned", "warn"),
    );
    drop_event(
        &dir,
        "1748779200000000001-4243-c3d4.json",
        &event("aligned", "warn"),
    );
    drop_event(
        &dir,
        "1748779200000000002-4244-e5f6.json",
        &event("refused", "require"),
    );
    let text = wait_metrics(addr, "three rail events", |t| {
        sample(
            t,
            r#"railvf_rail_alignment_total{outcome="refused",policy="require"}"#,
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            r#"railvf_rail_alignment_total{outcome="misaligned",policy="warn"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"railvf_rail_alignment_total{outcome="aligned",policy="warn"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"railvf_rail_alignment_total{outcome="unknown",policy="none"}"#
        ),
        Some(0.0),
        "every outcome and policy is exported from the start"
    );
    let log = wait_log(&mut plugin, "misalignment refused").await;
    let warned: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["level"] == "WARN" && v["pod"] == "team-a/trainer-0")
        .collect();
    assert_eq!(
        warned.len(),
        2,
        "misaligned and refused are warned about:\n{log}"
    );
    for w in &warned {
        assert_eq!(w["vf_rail"], "5");
        assert_eq!(w["gpu_rails"], "0,1");
        assert_eq!(w["vf"], "0000:c0:00.1");
    }

    // Garbage, a file of another version, an oversized one: deleted with a warning.
    drop_event(
        &dir,
        "1748779200000000003-4245-0000.json",
        "{\"version\": 1, \"outc",
    );
    drop_event(
        &dir,
        "1748779200000000004-4246-0000.json",
        &event("aligned", "warn").replace("\"version\":1", "\"version\":7"),
    );
    drop_event(
        &dir,
        "1748779200000000005-4247-0000.json",
        &" ".repeat(65 * 1024),
    );
    std::fs::write(dir.join("README.txt"), "not an event").unwrap();
    let text = wait_metrics(addr, "three ignored files", |t| {
        sample(t, r#"railvf_rail_events_ignored_total{reason="too_large"}"#) == Some(1.0)
            && sample(t, r#"railvf_rail_events_ignored_total{reason="malformed"}"#) == Some(1.0)
            && sample(
                t,
                r#"railvf_rail_events_ignored_total{reason="unsupported_version"}"#,
            ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            r#"railvf_rail_alignment_total{outcome="aligned",policy="warn"}"#
        ),
        Some(1.0),
        "ignored files are not counted as outcomes"
    );
    let log = wait_log(&mut plugin, "1748779200000000003-4245-0000.json").await;
    assert!(log.contains("ignoring a rail-event file"), "{log}");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["README.txt"], "every event file is deleted");
    plugin.assert_running();
}

/// `--log-format json` (and `auto` off a terminal, as in every test here) writes one JSON
/// object per line with the operation's fields; `text` writes plain lines.
#[tokio::test]
async fn log_lines_carry_per_operation_fields() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = start_plugin(sim.root(), &dirs, None, &[]);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    client
        .allocate(alloc_req(&["0000:18:00.1", "0000:40:00.1"]))
        .await
        .unwrap();
    // The plugin logs its registration once Register returns, which can be after kubelet
    // (here the test) has already called Allocate: wait for both lines.
    wait_log(&mut plugin, "\"message\":\"Allocate\"").await;
    let log = wait_log(&mut plugin, "\"message\":\"registered with kubelet\"").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let alloc = lines.iter().find(|v| v["message"] == "Allocate").unwrap();
    assert_eq!(alloc["resource"], RESOURCE);
    assert_eq!(alloc["devices"], "0000:18:00.1,0000:40:00.1");
    assert!(alloc["duration_ms"].as_f64().is_some(), "{alloc}");
    let reg = lines
        .iter()
        .find(|v| v["message"] == "registered with kubelet")
        .unwrap();
    assert_eq!(reg["resource"], RESOURCE);
    assert!(reg["duration_ms"].as_f64().is_some(), "{reg}");
    assert!(
        reg["timestamp"].is_string() && reg["level"] == "INFO",
        "{reg}"
    );
    drop(client);
    plugin.terminate();

    let mut plugin = start_plugin(sim.root(), &dirs, None, &["--log-format", "text"]);
    let _ = registration(&mut kubelet, &plugin).await;
    let log = wait_log(&mut plugin, "registered with kubelet").await;
    assert!(
        log.lines().all(|l| !l.starts_with('{')),
        "text lines:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colors off a terminal:\n{log}");
}

/// A metrics address that cannot be bound stops the start with exit status 2.
#[test]
fn a_taken_metrics_port_fails_the_start() {
    let sim = sim();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_railvf-device-plugin"))
        .args(["--host-root", sim.root().to_str().unwrap()])
        .arg("--kubelet-dir")
        .arg(&dirs.kubelet)
        .arg("--devinfo-dir")
        .arg(&dirs.devinfo)
        .arg("--config")
        .arg({
            let c = tmp.path().join("config.json");
            std::fs::write(&c, "{}").unwrap();
            c
        })
        .args(["--metrics-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics-addr {addr}: cannot listen")),
        "{err}"
    );
}

/// One request on a kept-alive connection: true once its whole answer has been read.
async fn keep_alive_request(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: Option<usize> = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            });
            if len.is_some_and(|n| body.len() >= n) {
                return true;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One peer holding every HTTP connection slot, with kept-alive connections it sends a
/// request on now and then and with more that never send anything, does not keep
/// kubelet's probe out: `/healthz` is still answered.
#[tokio::test]
async fn healthz_is_answered_while_one_peer_holds_every_connection() {
    let Metered {
        sim: _sim,
        _tmp,
        dirs: _dirs,
        mut kubelet,
        mut plugin,
        addr,
    } = start_metered().await;
    registration(&mut kubelet, &plugin).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut busy = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Answered: this connection holds a slot.
        assert!(keep_alive_request(&mut s).await, "{}", plugin.log());
        let mut stop = stop_rx.clone();
        busy.push(tokio::spawn(async move {
            // Often enough that no header timeout ever closes it.
            while tokio::time::timeout(Duration::from_millis(200), stop.wait_for(|s| *s))
                .await
                .is_err()
                && keep_alive_request(&mut s).await
            {}
        }));
    }
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }

    // http_get fails the test if no answer comes within its hang guard.
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let _ = stop_tx.send(true);
    for b in busy {
        b.await.unwrap();
    }
    drop(idle);
    plugin.assert_running();
}
