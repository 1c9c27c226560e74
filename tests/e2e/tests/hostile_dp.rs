//! Hostile gRPC input to the device plugin: every bad request is refused with an error
//! status, and the plugin keeps serving (a good request right after succeeds, the process
//! is alive and has not panicked).
//!
//! Not repeated here (device-plugin/tests/kubelet.rs, `allocate_returns_devices_env_and_devinfo`):
//! Allocate with an unknown ID, a non-PCI ID, no IDs, no container requests, 65 IDs, a
//! repeated ID.

mod reliability_support;

use std::time::Duration;

use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::device_plugin_client::DevicePluginClient;
use railvf_proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    PreStartContainerRequest, PreferredAllocationRequest,
};
use railvf_sim::SimOptions;
use reliability_support::dp::{self, Dirs, Plugin, alloc_req, registration};
use reliability_support::summary;
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::Channel;

fn pref(available: &[String], must: &[String], size: i32) -> PreferredAllocationRequest {
    PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    }
}

/// After each bad request: the plugin still answers, and a good Allocate works.
async fn still_serving(client: &mut DevicePluginClient<Channel>, plugin: &mut Plugin, good: &str) {
    client
        .get_device_plugin_options(Empty {})
        .await
        .expect("still serving");
    client
        .allocate(alloc_req(&[good]))
        .await
        .expect("a good Allocate right after");
    plugin.assert_running();
}

#[tokio::test]
async fn bad_grpc_requests_are_refused_and_the_plugin_keeps_serving() {
    let sim = SimOptions::dgx_h200().no_links().build().expect("sim");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(tmp.path());
    let mut kubelet = FakeKubelet::start(&dirs.kubelet).await.unwrap();
    let mut plugin = dp::start(sim.root(), &dirs);
    let mut client = registration(&mut kubelet, &plugin).await.client;
    let all: Vec<String> = sim.vfs().iter().map(|v| v.pci.to_string()).collect();
    let good = all[0].clone();
    let non_ascii = "882\u{7f8}\u{7f8}\u{5e2}jM:".to_string(); // 12 bytes; panicked before the fix
    let huge_id = "0".repeat(1 << 20);
    let mut refused = 0;

    // GetPreferredAllocation: every one of these must be InvalidArgument (nothing left to
    // choose from once the IDs the plugin does not have are left out, or a size that
    // cannot be met).
    let bad_pref: Vec<(&str, PreferredAllocationRequest)> = vec![
        ("allocation_size 0", pref(&all, &[], 0)),
        ("allocation_size -1", pref(&all, &[], -1)),
        ("allocation_size i32::MIN", pref(&all, &[], i32::MIN)),
        ("allocation_size i32::MAX", pref(&all, &[], i32::MAX)),
        ("allocation_size above available", pref(&all[..4], &[], 5)),
        (
            "more must_include than allocation_size",
            pref(&all, &all[..3], 2),
        ),
        (
            "unknown ID in available",
            pref(&["0000:29:00.1".to_string()], &[], 1),
        ),
        (
            "non-ASCII 12-byte ID in available",
            pref(std::slice::from_ref(&non_ascii), &[], 1),
        ),
        ("1 MiB ID", pref(std::slice::from_ref(&huge_id), &[], 1)),
        (
            "path as ID",
            pref(&["../../../etc/passwd".to_string()], &[], 1),
        ),
        ("ID with NUL", pref(&[format!("{good}\u{0}")], &[], 1)),
        (
            "no container requests",
            PreferredAllocationRequest {
                container_requests: vec![],
            },
        ),
        ("empty available", pref(&[], &[], 1)),
        (
            "100000 available IDs, all unknown",
            pref(
                &(0..100_000)
                    .map(|i| format!("0001:{:02x}:{:02x}.{}", i % 256, (i / 256) % 32, i % 8))
                    .collect::<Vec<_>>(),
                &[],
                1,
            ),
        ),
    ];
    for (what, req) in bad_pref {
        let err = client.get_preferred_allocation(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().len() < 4096, "{what}: an unbounded message");
        refused += 1;
        still_serving(&mut client, &mut plugin, &good).await;
    }

    // GetPreferredAllocation is advisory and kubelet fails the pod's admission on any
    // error: IDs the plugin does not have, hostile or not, are left out of the available
    // ones (or kept from must-include, as given), repeats count once, and the rest is
    // answered.
    let mut hostile_and_good: Vec<String> = vec![
        non_ascii.clone(),
        huge_id.clone(),
        "../../../etc/passwd".to_string(),
        format!("{good}\u{0}"),
        "0000:29:00.1".to_string(),
    ];
    hostile_and_good.extend(all[..4].iter().cloned());
    hostile_and_good.extend(all[..4].iter().cloned());
    let mut many_unknown: Vec<String> = (0..100_000)
        .map(|i| format!("0001:{:02x}:{:02x}.{}", i % 256, (i / 256) % 32, i % 8))
        .collect();
    many_unknown.extend(all[..4].iter().cloned());
    let answered: Vec<(&str, PreferredAllocationRequest, &[String])> = vec![
        (
            "must_include not in available",
            pref(&all[..4], &[all[10].clone()], 2),
            &all[10..11],
        ),
        (
            "non-ASCII must_include",
            pref(&all, std::slice::from_ref(&non_ascii), 1),
            std::slice::from_ref(&non_ascii),
        ),
        (
            "hostile, unknown and repeated IDs among 4 good ones",
            pref(&hostile_and_good, &[], 3),
            &[],
        ),
        (
            "100000 unknown IDs and 4 good ones",
            pref(&many_unknown, &[], 4),
            &[],
        ),
    ];
    let mut answered_n = 0;
    for (what, req, must) in answered {
        let avail = &req.container_requests[0].available_device_i_ds.clone();
        let size = req.container_requests[0].allocation_size as usize;
        let r = client
            .get_preferred_allocation(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .into_inner();
        let got = &r.container_responses[0].device_i_ds;
        assert_eq!(got.len(), size, "{what}: {got:?}");
        assert_eq!(
            &got[..must.len()],
            must,
            "{what}: must-include kept as given"
        );
        for id in &got[must.len()..] {
            assert!(
                all.contains(id) && avail.contains(id),
                "{what}: {id:?} is not a good available ID"
            );
        }
        assert_eq!(
            got.iter().collect::<std::collections::BTreeSet<_>>().len(),
            size,
            "{what}: repeated in the answer: {got:?}"
        );
        answered_n += 1;
        still_serving(&mut client, &mut plugin, &good).await;
    }
    // The log names the left-out IDs cut short, never a 1 MiB line.
    let log = plugin.log();
    assert!(log.contains("left out of the choice"), "{log}");
    assert!(
        log.lines().all(|l| l.len() < 64 << 10),
        "a log line carries a hostile ID whole"
    );

    // Allocate: refused with InvalidArgument.
    let bad_alloc: Vec<(&str, AllocateRequest)> = vec![
        ("non-ASCII 12-byte ID", alloc_req(&[&non_ascii])),
        ("1 MiB ID", alloc_req(&[&huge_id])),
        ("path as ID", alloc_req(&["../../../etc/passwd"])),
        ("ID with NUL", alloc_req(&[&format!("{good}\u{0}")])),
        ("PF as ID", alloc_req(&["0000:18:00.0"])),
        (
            "1000 containers with one good ID and one empty",
            AllocateRequest {
                container_requests: (0..1000)
                    .map(|i| ContainerAllocateRequest {
                        devices_ids: if i == 0 { vec![good.clone()] } else { vec![] },
                    })
                    .collect(),
            },
        ),
    ];
    for (what, req) in bad_alloc {
        let err = client.allocate(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().len() < 4096, "{what}: an unbounded message");
        refused += 1;
        still_serving(&mut client, &mut plugin, &good).await;
    }
    // No device-info file named after a hostile ID.
    for e in std::fs::read_dir(&dirs.devinfo).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            all.iter().any(|id| n.contains(id.as_str())),
            "unexpected device-info file {n}"
        );
    }

    // Over gRPC's 4 MiB message limit: refused by the transport, plugin unharmed.
    let err = client
        .allocate(alloc_req(&[&"x".repeat(5 << 20)]))
        .await
        .expect_err("5 MiB request");
    assert!(
        matches!(
            err.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument | Code::Internal
        ),
        "{err}"
    );
    refused += 1;
    let mut client = DevicePluginClient::new(
        railvf_proto::connect_unix(dirs.kubelet.join(dp::SOCKET))
            .await
            .unwrap(),
    );
    still_serving(&mut client, &mut plugin, &good).await;

    // PreStartContainer with anything: answered (not requested in the options).
    client
        .pre_start_container(PreStartContainerRequest {
            devices_ids: vec![non_ascii.clone(), huge_id.clone()],
        })
        .await
        .expect("PreStartContainer");

    // Not gRPC at all on the socket: garbage, an HTTP/1 request, an HTTP/2 preface then
    // garbage, a connection opened and left idle, 200 connections dropped at once.
    let sock = dirs.kubelet.join(dp::SOCKET);
    let junk: Vec<Vec<u8>> = vec![
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0xff; 64],
        ]
        .concat(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\xff\xff\xff\x00\x00\x00\x00\x01"
            .to_vec(),
    ];
    let idle = tokio::net::UnixStream::connect(&sock).await.unwrap();
    for j in &junk {
        let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let _ = c.write_all(j).await;
        let _ = c.shutdown().await;
        refused += 1;
    }
    let mut many = Vec::new();
    for _ in 0..200 {
        many.push(tokio::net::UnixStream::connect(&sock).await.unwrap());
    }
    drop(many);
    tokio::time::sleep(Duration::from_millis(100)).await;
    still_serving(&mut client, &mut plugin, &good).await;
    drop(idle);

    // A good preferred allocation still comes back right.
    let r = client
        .get_preferred_allocation(pref(&all, &[], 8))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.container_responses[0].device_i_ds.len(), 8);
    plugin.assert_running();
    summary(format!(
        "hostile gRPC input: {refused} bad requests/connections refused (error status or closed), {answered_n} GetPreferredAllocation requests with IDs the plugin does not have answered without them, plugin still serving after each, 0 panics"
    ));
}
