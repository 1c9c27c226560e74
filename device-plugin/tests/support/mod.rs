//! Test support: the real `railvf-device-plugin` binary run against the fake kubelet of
//! `railvf-proto` (feature `fake-kubelet`) on a simulated node. The process and stream
//! helpers are `railvf-testkit`'s, shared with the end-to-end tests; the metrics helpers
//! are this package's own.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

pub use railvf_testkit::device_plugin::*;

/// Starts this package's `railvf-device-plugin` binary (see [`Plugin::start`]).
pub fn start_plugin(root: &Path, dirs: &Dirs, config: Option<&Path>, extra: &[&str]) -> Plugin {
    Plugin::start(
        Path::new(env!("CARGO_BIN_EXE_railvf-device-plugin")),
        root,
        dirs,
        config,
        extra,
    )
}

/// The address the plugin's metrics server listens on (it was started with
/// `--metrics-addr 127.0.0.1:0`), read from its JSON log line.
pub async fn metrics_addr(p: &mut Plugin) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        for line in p.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "serving /metrics and /healthz"
                && let Some(a) = v["addr"].as_str()
            {
                return a.parse().unwrap();
            }
        }
        p.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics address in the log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` over HTTP/1.1: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_string())
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} hung"))
}

/// The value of the sample `series` (`name{labels}` exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// Scrapes `/metrics` until `pred` holds; returns that scrape.
pub async fn wait_metrics(
    addr: std::net::SocketAddr,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let (code, text) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        if pred(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape with {what} within {GUARD:?}; last one:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the plugin's log contains `needle`; returns the log.
pub async fn wait_log(p: &mut Plugin, needle: &str) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let log = p.log();
        if log.contains(needle) {
            return log;
        }
        p.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log within {GUARD:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
