//! The rail guardrail end to end: the real `railvf` binary, the simulated DGX H200 (GPUs
//! with their `/proc/driver/nvidia` UUIDs, rails from the PCIe tree, veth VFs), and a fake
//! kubelet PodResources server on the host root's socket standing in for the pod's GPU
//! allocation. Checked from outside: `ip -j`, the state directory, the rail event files,
//! the fake's call counters, and the JSON log lines on stderr.
//! Needs root; skips LOUDLY otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use railvf_proto::fake_podresources::{FakePodResources, GetMode};
use railvf_sim::{SimNode, TestNetns, require_root};
use serde_json::Value;

/// A VF of rail 5's NIC (PF 0000:c0:00.0, whose GPU is 0000:c3:00.0).
const VF_RAIL5: &str = "0000:c0:00.1";
/// A VF of rail 0's NIC (PF 0000:18:00.0, GPU 0000:1b:00.0).
const VF_RAIL0: &str = "0000:18:00.1";
const GPU0: &str = "0000:1b:00.0";
const GPU1: &str = "0000:43:00.0";
const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=train-0;K8S_POD_INFRA_CONTAINER_ID=0a1b";

fn socket(sim: &SimNode) -> PathBuf {
    sim.root()
        .join("var/lib/kubelet/pod-resources/kubelet.sock")
}

fn events_dir(sim: &SimNode) -> PathBuf {
    sim.root().join("run/railvf/rail-events")
}

/// The rail events written so far (dot files are temporaries and must not be left).
fn events(sim: &SimNode) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(events_dir(sim)) else {
        return out;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        assert!(!n.starts_with('.'), "temporary event file left: {n}");
        let stem = n.strip_suffix(".json").expect("events end in .json");
        let parts: Vec<&str> = stem.split('-').collect();
        assert_eq!(parts.len(), 3, "<unix-nanos>-<pid>-<rand>.json: {n}");
        assert!(
            parts[0].parse::<u128>().is_ok() && parts[1].parse::<u32>().is_ok(),
            "{n}"
        );
        let text = std::fs::read_to_string(events_dir(sim).join(&n)).unwrap();
        out.push(serde_json::from_str(&text).unwrap());
    }
    out
}

/// The event has exactly the contract's keys with these values (their order is pinned
/// byte for byte by the unit tests of `events.rs`).
fn assert_event(
    ev: &Value,
    cid: &str,
    vf: &str,
    vf_rail: Value,
    gpu_rails: Value,
    policy: &str,
    outcome: &str,
) {
    let mut got: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = [
        "version",
        "time",
        "containerID",
        "ifname",
        "pod",
        "vf",
        "vfRail",
        "gpuRails",
        "policy",
        "outcome",
        "reason",
    ];
    want.sort();
    got.sort();
    assert_eq!(got, want, "{ev}");
    assert_eq!(ev["version"], 1);
    let t = ev["time"].as_str().unwrap();
    assert!(
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{t}"
    );
    assert_eq!(ev["containerID"], cid);
    assert_eq!(ev["ifname"], "net1");
    assert_eq!(ev["pod"], "default/train-0");
    assert_eq!(ev["vf"], vf);
    assert_eq!(ev["vfRail"], vf_rail, "{ev}");
    assert_eq!(ev["gpuRails"], gpu_rails, "{ev}");
    assert_eq!(ev["policy"], policy);
    assert_eq!(ev["outcome"], outcome, "{ev}");
    assert!(ev["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ev}");
}

/// Every stderr line is one JSON object with the attachment's fields.
fn log_lines(out: &Out, cid: &str, vf: &str) -> Vec<Value> {
    out.stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
            for k in ["time", "level", "msg"] {
                assert!(v[k].is_string(), "{k} missing: {l}");
            }
            assert_eq!(v["containerID"], cid, "{l}");
            assert_eq!(v["ifname"], "net1", "{l}");
            assert_eq!(v["vf"], vf, "{l}");
            v
        })
        .collect()
}

fn at_level<'a>(lines: &'a [Value], level: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["level"] == level).collect()
}

fn conf(vf: &str, policy: Option<&str>) -> String {
    let extra = policy
        .map(|p| format!(r#""railPolicy":"{p}""#))
        .unwrap_or_default();
    netconf("1.1.0", "rdma-rail", vf, &extra)
}

fn run(cni: &Cni, verb: &str, cid: &str, pod: &Path, conf: &str, env: &[(&str, &str)]) -> Out {
    let mut c = cni.command(verb, cid, "net1", Some(pod));
    c.env("CNI_ARGS", ARGS);
    for (k, v) in env {
        c.env(k, v);
    }
    cni.run_cmd(c, conf.as_bytes())
}

/// The fake kubelet with pod default/train-0 holding `gpus` (and its VF).
fn kubelet(at: &Path, gpus: &[&str], vf: &str) -> FakePodResources {
    let fake = FakePodResources::start(at).unwrap();
    fake.add_pod(
        "default",
        "train-0",
        &[("nvidia.com/gpu", gpus), ("nvidia.com/dgx_h200_vfs", &[vf])],
    );
    fake
}

fn uuids(sim: &SimNode, gpus: &[&str]) -> Vec<String> {
    gpus.iter().map(|g| sim.gpu_uuid(g).unwrap()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn in_pod(pod: &TestNetns) -> bool {
    link(Some(pod.name()), "net1").is_some()
}

#[test]
fn warn_attaches_across_rails_and_reports_the_mismatch() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let gpus = uuids(sim, &[GPU0, GPU1]);
    let fake = kubelet(&socket(sim), &refs(&gpus), VF_RAIL5);

    // warn is the default: no railPolicy in the config.
    let c = conf(VF_RAIL5, None);
    let out = run(&cni, "ADD", "c-warn", pod.path(), &c, &[]).expect_ok();
    assert!(in_pod(pod), "warn attaches the VF anyway");
    let r = out.json();
    assert_eq!(r["railvf"]["rail"]["vf"], 5);
    assert_eq!(r["railvf"]["rail"]["gpus"], serde_json::json!([0, 1]));
    assert_eq!(r["railvf"]["rail"]["aligned"], false);
    assert_eq!(r["railvf"]["rail"]["policy"], "warn");
    assert_eq!(
        r["interfaces"][0]["pciID"], VF_RAIL5,
        "the rest of the result as before"
    );
    assert_eq!(fake.get_calls(), 1);

    let ev = events(sim);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_event(
        &ev[0],
        "c-warn",
        VF_RAIL5,
        5.into(),
        serde_json::json!([0, 1]),
        "warn",
        "misaligned",
    );
    assert_eq!(
        ev[0]["reason"],
        "VF 0000:c0:00.1 is on rail 5 (GPU 0000:c3:00.0) but pod default/train-0 has GPUs on rails 0, 1"
    );

    let lines = log_lines(&out, "c-warn", VF_RAIL5);
    let warnings = at_level(&lines, "warning");
    assert!(
        warnings.iter().any(|l| l["msg"]
            .as_str()
            .unwrap()
            .contains("has GPUs on rails 0, 1")),
        "{}",
        out.stderr
    );
    // The summary line: total and each step, the rail check among them.
    let summary = lines
        .iter()
        .find(|l| l["steps"].is_object())
        .unwrap_or_else(|| panic!("no summary line: {}", out.stderr));
    assert_eq!(summary["command"], "ADD");
    assert!(summary["ms"].as_f64().unwrap() > 0.0);
    for step in ["resolve", "rail", "lock", "state", "move", "readiness"] {
        assert!(summary["steps"][step].is_number(), "{step}: {summary}");
    }

    let del = run(&cni, "DEL", "c-warn", pod.path(), &c, &[]).expect_ok();
    assert!(!in_pod(pod));
    let del_lines = log_lines(&del, "c-warn", VF_RAIL5);
    let s = del_lines.iter().find(|l| l["steps"].is_object()).unwrap();
    assert_eq!(s["command"], "DEL");
    assert!(s["steps"]["teardown"].is_number(), "{s}");
    assert_eq!(events(sim).len(), 1, "DEL writes no rail event");
}

#[test]
fn require_refuses_across_rails_and_changes_nothing() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let host_name = sim.vf(VF_RAIL5).unwrap().netdev;
    let gpus = uuids(sim, &[GPU0, GPU1]);
    let _fake = kubelet(&socket(sim), &refs(&gpus), VF_RAIL5);

    let out = run(
        &cni,
        "ADD",
        "c-req",
        pod.path(),
        &conf(VF_RAIL5, Some("require")),
        &[],
    );
    let (code, text) = out.err();
    assert_eq!(code, 108, "{text}");
    assert!(
        text.contains(
            "VF 0000:c0:00.1 is on rail 5 (GPU 0000:c3:00.0) but pod default/train-0 has GPUs on rails 0, 1"
        ),
        "{text}"
    );
    // Nothing changed: the VF is on the host under its name, the pod has no net1, no state.
    assert!(
        link(None, &host_name).is_some(),
        "VF still in the host netns"
    );
    assert!(!in_pod(pod));
    assert!(cni.state_files().is_empty(), "{:?}", cni.state_files());
    sim.sync().unwrap();
    assert_eq!(
        sim.vf(VF_RAIL5).unwrap().host_netdev.map(|h| h.name),
        Some(host_name)
    );
    let ev = events(sim);
    assert_eq!(ev.len(), 1);
    assert_event(
        &ev[0],
        "c-req",
        VF_RAIL5,
        5.into(),
        serde_json::json!([0, 1]),
        "require",
        "refused",
    );
    // The runtime's DEL after the failed ADD is fine.
    run(
        &cni,
        "DEL",
        "c-req",
        pod.path(),
        &conf(VF_RAIL5, Some("require")),
        &[],
    )
    .expect_ok();
}

#[test]
fn matching_rails_pass_silently() {
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sim = sim(small());
    let cni = cni_for(&sim, tmp.path());
    let gpus = uuids(&sim, &[GPU0, GPU1]);
    let _fake = kubelet(&socket(&sim), &refs(&gpus), VF_RAIL0);
    for (i, policy) in ["warn", "require"].into_iter().enumerate() {
        let pod = TestNetns::new().unwrap();
        let cid = format!("c-ok-{policy}");
        let c = conf(VF_RAIL0, Some(policy));
        let out = run(&cni, "ADD", &cid, pod.path(), &c, &[]).expect_ok();
        assert!(in_pod(&pod));
        let r = out.json();
        assert_eq!(r["railvf"]["rail"]["aligned"], true, "{r}");
        assert_eq!(r["railvf"]["rail"]["vf"], 0);
        let lines = log_lines(&out, &cid, VF_RAIL0);
        assert!(
            at_level(&lines, "warning").is_empty() && at_level(&lines, "error").is_empty(),
            "{}",
            out.stderr
        );
        let ev = events(&sim);
        assert_eq!(ev.len(), i + 1);
        let mine = ev
            .iter()
            .find(|e| e["containerID"] == cid.as_str())
            .unwrap();
        assert_event(
            mine,
            &cid,
            VF_RAIL0,
            0.into(),
            serde_json::json!([0, 1]),
            policy,
            "aligned",
        );
        run(&cni, "DEL", &cid, pod.path(), &c, &[]).expect_ok();
    }
}

#[test]
fn without_the_socket_warn_carries_on_and_require_refuses() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    assert!(!socket(sim).exists());

    let c = conf(VF_RAIL5, Some("warn"));
    let out = run(&cni, "ADD", "c-nosock", pod.path(), &c, &[]).expect_ok();
    assert!(in_pod(pod));
    let r = out.json();
    assert_eq!(r["railvf"]["rail"]["outcome"], "unknown");
    assert_eq!(r["railvf"]["rail"]["aligned"], Value::Null);
    let ev = events(sim);
    assert_eq!(ev.len(), 1);
    assert_event(
        &ev[0],
        "c-nosock",
        VF_RAIL5,
        5.into(),
        serde_json::json!([]),
        "warn",
        "unknown",
    );
    assert!(
        ev[0]["reason"]
            .as_str()
            .unwrap()
            .contains("kubelet.sock does not exist"),
        "{}",
        ev[0]
    );
    run(&cni, "DEL", "c-nosock", pod.path(), &c, &[]).expect_ok();

    let host_name = sim.vf(VF_RAIL5).unwrap().netdev;
    let out = run(
        &cni,
        "ADD",
        "c-nosock2",
        pod.path(),
        &conf(VF_RAIL5, Some("require")),
        &[],
    );
    let (code, text) = out.err();
    assert_eq!(code, 108);
    assert!(
        text.contains("cannot tell whether VF 0000:c0:00.1") && text.contains("kubelet.sock"),
        "{text}"
    );
    assert!(link(None, &host_name).is_some());
    assert!(cni.state_files().is_empty());
    assert_eq!(events(sim).last().unwrap()["outcome"], "refused");
}

#[test]
fn index_ids_and_kubelets_without_get_work_too() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    // deviceIDStrategy: index, on a kubelet older than 1.27 (no Get): List is used.
    let fake = kubelet(&socket(sim), &["0", "1"], VF_RAIL5);
    fake.set_get_mode(GetMode::Unimplemented);
    let out = run(
        &cni,
        "ADD",
        "c-idx",
        pod.path(),
        &conf(VF_RAIL5, Some("require")),
        &[],
    );
    let (code, text) = out.err();
    assert_eq!(code, 108);
    assert!(text.contains("has GPUs on rails 0, 1"), "{text}");
    assert_eq!((fake.get_calls(), fake.list_calls()), (1, 1));

    // Feature gate off (Get "disabled"), GPU 5 by index: aligned with the rail-5 VF.
    fake.set_get_mode(GetMode::Disabled);
    fake.set_pods(vec![railvf_proto::fake_podresources::pod(
        "default",
        "train-0",
        &[
            ("nvidia.com/gpu", &["5"]),
            ("nvidia.com/dgx_h200_vfs", &[VF_RAIL5]),
        ],
    )]);
    let c = conf(VF_RAIL5, Some("require"));
    let out = run(&cni, "ADD", "c-idx", pod.path(), &c, &[]).expect_ok();
    assert_eq!(out.json()["railvf"]["rail"]["gpus"], serde_json::json!([5]));
    assert!(in_pod(pod));
    assert_eq!(fake.list_calls(), 2);
    run(&cni, "DEL", "c-idx", pod.path(), &c, &[]).expect_ok();
}

#[test]
fn none_asks_kubelet_nothing_and_writes_no_event() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let fake = kubelet(&socket(sim), &["0"], VF_RAIL5);
    let c = conf(VF_RAIL5, Some("none"));
    let out = run(&cni, "ADD", "c-none", pod.path(), &c, &[]).expect_ok();
    assert!(in_pod(pod));
    assert!(out.json().get("railvf").is_none(), "{}", out.stdout);
    assert_eq!(fake.calls(), 0);
    assert!(events(sim).is_empty());
    let lines = log_lines(&out, "c-none", VF_RAIL5);
    let s = lines.iter().find(|l| l["steps"].is_object()).unwrap();
    assert!(
        s["steps"].get("rail").is_none(),
        "no rail step with none: {s}"
    );
    run(&cni, "DEL", "c-none", pod.path(), &c, &[]).expect_ok();
}

#[test]
fn a_hanging_kubelet_costs_add_at_most_the_timeout() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (sim, pod, cni) = (&s.sim, &s.pod, s.cni());
    let fake = kubelet(&socket(sim), &["5"], VF_RAIL5);
    fake.set_delay(Duration::from_secs(30));
    let c = conf(VF_RAIL5, Some("warn"));
    // The kubelet answers only after 30 s. ADD gives up on it after its 2 s bound, and the
    // event says so; had ADD waited for the answer, the pod would be aligned instead.
    let out = run(&cni, "ADD", "c-hang", pod.path(), &c, &[]).expect_ok();
    assert!(in_pod(pod));
    let ev = events(sim);
    assert_eq!(ev[0]["outcome"], "unknown");
    assert!(
        ev[0]["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2000 ms"),
        "{}",
        ev[0]
    );
    let lines = log_lines(&out, "c-hang", VF_RAIL5);
    assert!(
        !at_level(&lines, "warning").is_empty(),
        "a kubelet that hangs is worth a warning"
    );
    run(&cni, "DEL", "c-hang", pod.path(), &c, &[]).expect_ok();
}

#[test]
fn the_node_admin_can_name_another_socket() {
    let Some(s) = Setup::new(small()) else {
        return;
    };
    let (pod, cni) = (&s.pod, s.cni());
    // A kubelet with another --root-dir: the socket is outside the default path.
    let other = s.tmp.path().join("k0s/kubelet/pod-resources/kubelet.sock");
    let fake = kubelet(&other, &["0"], VF_RAIL0);
    let c = conf(VF_RAIL0, Some("require"));
    let env = [("RAILVF_PODRESOURCES_SOCKET", other.to_str().unwrap())];
    let out = run(&cni, "ADD", "c-env", pod.path(), &c, &env).expect_ok();
    assert_eq!(out.json()["railvf"]["rail"]["aligned"], true);
    assert_eq!(fake.get_calls(), 1);
    run(&cni, "DEL", "c-env", pod.path(), &c, &env).expect_ok();
}
