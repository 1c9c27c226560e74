//! What the kernel says, read with `ip -j`: the tests check railvf from outside, never
//! through its own answer alone.

use std::process::Command;

use serde_json::Value;

/// `ip [-n ns] -j <args>` parsed (an empty array when `ip` fails).
pub fn ip_json(ns: Option<&str>, args: &[&str]) -> Value {
    let mut c = Command::new("ip");
    if let Some(n) = ns {
        c.args(["-n", n]);
    }
    c.arg("-j").args(args);
    let o = c.output().expect("run ip");
    if !o.status.success() {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Array(vec![]))
}

/// A file under `/proc/sys` as a process inside `ns` reads it (`ip netns exec … cat`),
/// trimmed; panics when it cannot be read.
pub fn sysctl_in(ns: &str, path: &str) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "cat", path])
        .output()
        .expect("run ip netns exec");
    assert!(
        o.status.success(),
        "reading {path} in {ns}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The link `name` in `ns` (None: the host), as `ip -j link show` prints it.
pub fn link(ns: Option<&str>, name: &str) -> Option<Value> {
    ip_json(ns, &["link", "show", "dev", name])
        .as_array()
        .and_then(|a| a.first().cloned())
}

/// The links of `ns` (None: the host), as `ip -j link show` prints them.
pub fn links(ns: Option<&str>) -> Vec<Value> {
    ip_json(ns, &["link", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Names of the links of `ns`.
pub fn link_names(ns: &str) -> Vec<String> {
    links(Some(ns))
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Names of the links of `ns` other than `lo`.
pub fn pod_links(ns: &str) -> Vec<String> {
    link_names(ns).into_iter().filter(|n| n != "lo").collect()
}

/// IPv4 addresses (`a.b.c.d/nn`) of `name` in `ns` (None: the host).
pub fn addrs4(ns: Option<&str>, name: &str) -> Vec<String> {
    ip_json(ns, &["-4", "addr", "show", "dev", name])
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// IPv4 routes of `ns` as `dst via gw dev`.
pub fn routes4(ns: &str) -> Vec<String> {
    ip_json(Some(ns), &["-4", "route", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect()
}
