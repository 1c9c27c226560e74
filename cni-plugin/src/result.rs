//! CNI results: parsed from an IPAM plugin (any version 0.3.0+) and printed in the version
//! the network config asked for. 0.3.x/0.4.0 carry `ips[].version`; 1.0.0 drops it; 1.1.0
//! adds `interfaces[].mtu`/`pciID` and route attributes.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::net::{IpNet, RouteAttrs};
use crate::version::Version;

/// Why a result could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{what}: expected {expected}, found {found}")]
pub struct ResultError {
    pub what: String,
    pub expected: &'static str,
    pub found: String,
}

fn bad(what: impl Into<String>, expected: &'static str, found: &Value) -> ResultError {
    ResultError {
        what: what.into(),
        expected,
        found: found.to_string().chars().take(120).collect(),
    }
}

/// The interface members railvf reads itself.
const INTERFACE_MEMBERS: [&str; 5] = ["name", "mac", "mtu", "sandbox", "pciID"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
    pub pci_id: Option<String>,
    /// Every other member (`socketPath`, say) of a previous plugin's interface: printed
    /// back in a 1.1.0 result, as a plugin in a chain must pass its `prevResult` through.
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The 1.1.0 attributes (`table`, `priority`, `scope`, `mtu`, `advmss`), as applied.
    pub attrs: RouteAttrs,
    /// Every member but `dst` and `gw`, as the IPAM plugin gave them: printed back in a
    /// 1.1.0 result.
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// `dns` as the IPAM plugin gave it (kept: host-device drops it).
    pub dns: Value,
}

/// The route attributes of CNI 1.1.0 in `routes[i]`: non-negative integers (`scope` one
/// byte, as the kernel's `rtm_scope`); `null` or absent is the kernel's default.
fn route_attrs(o: &Map<String, Value>, i: usize) -> Result<RouteAttrs, ResultError> {
    // The largest value of each attribute, and how an error says it.
    const U8: (u64, &str) = (255, "an integer from 0 to 255");
    const U32: (u64, &str) = (u32::MAX as u64, "an integer from 0 to 4294967295");
    let get = |k: &str, (max, expected): (u64, &'static str)| match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .map(|n| Some(n as u32))
            .ok_or_else(|| bad(format!("routes[{i}].{k}"), expected, v)),
    };
    Ok(RouteAttrs {
        table: get("table", U32)?,
        metric: get("priority", U32)?,
        scope: get("scope", U8)?.map(|s| s as u8),
        mtu: get("mtu", U32)?,
        advmss: get("advmss", U32)?,
    })
}

/// `10.0.0.5/24` → [`IpNet`].
pub fn parse_ipnet(s: &str) -> Option<IpNet> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(IpNet { addr, prefix })
}

pub fn fmt_ipnet(n: &IpNet) -> String {
    format!("{}/{}", n.addr, n.prefix)
}

impl CniResult {
    /// This plugin's result placed after `prev`, the result of the plugins before it in a
    /// chain, which the spec says a plugin passes through: their interfaces, addresses and
    /// routes first, then ours, our addresses pointing at our interfaces' new indices. Our
    /// DNS when IPAM gave one, theirs otherwise.
    pub fn chained_after(self, mut prev: CniResult) -> CniResult {
        let base = prev.interfaces.len();
        prev.interfaces.extend(self.interfaces);
        prev.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        prev.routes.extend(self.routes);
        if self.dns.as_object().is_some_and(|o| !o.is_empty()) {
            prev.dns = self.dns;
        }
        prev
    }

    /// Reads a result of any version from 0.3.0 on (what IPAM plugins print).
    pub fn parse(v: &Value) -> Result<Self, ResultError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("result", "a JSON object", v))?;
        let mut r = CniResult {
            dns: obj.get("dns").cloned().unwrap_or(Value::Null),
            ..Default::default()
        };
        if let Some(list) = obj.get("interfaces").filter(|x| !x.is_null()) {
            for (i, it) in list
                .as_array()
                .ok_or_else(|| bad("interfaces", "an array", list))?
                .iter()
                .enumerate()
            {
                let s = |k: &str| it.get(k).and_then(Value::as_str).map(str::to_string);
                r.interfaces.push(Interface {
                    name: s("name")
                        .ok_or_else(|| bad(format!("interfaces[{i}].name"), "a string", it))?,
                    mac: s("mac").unwrap_or_default(),
                    mtu: it.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                    sandbox: s("sandbox").filter(|x| !x.is_empty()),
                    pci_id: s("pciID"),
                    extra: it
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| !INTERFACE_MEMBERS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                });
            }
        }
        if let Some(list) = obj.get("ips").filter(|x| !x.is_null()) {
            for (i, ip) in list
                .as_array()
                .ok_or_else(|| bad("ips", "an array", list))?
                .iter()
                .enumerate()
            {
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(parse_ipnet)
                    .ok_or_else(|| {
                        bad(
                            format!("ips[{i}].address"),
                            "an address like 10.0.0.5/24",
                            ip,
                        )
                    })?;
                let gateway = match ip.get("gateway") {
                    None | Some(Value::Null) => None,
                    Some(g) => Some(
                        g.as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| bad(format!("ips[{i}].gateway"), "an IP address", g))?,
                    ),
                };
                let interface = ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|x| x as usize);
                r.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        if let Some(list) = obj.get("routes").filter(|x| !x.is_null()) {
            for (i, rt) in list
                .as_array()
                .ok_or_else(|| bad("routes", "an array", list))?
                .iter()
                .enumerate()
            {
                let dst = rt
                    .get("dst")
                    .and_then(Value::as_str)
                    .and_then(parse_ipnet)
                    .ok_or_else(|| {
                        bad(format!("routes[{i}].dst"), "a prefix like 0.0.0.0/0", rt)
                    })?;
                let gw = match rt.get("gw") {
                    None | Some(Value::Null) => None,
                    Some(g) => Some(
                        g.as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| bad(format!("routes[{i}].gw"), "an IP address", g))?,
                    ),
                };
                let extra: Map<String, Value> = rt
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| !matches!(k.as_str(), "dst" | "gw"))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let attrs = route_attrs(&extra, i)?;
                r.routes.push(Route {
                    dst,
                    gw,
                    attrs,
                    extra,
                });
            }
        }
        Ok(r)
    }

    /// The result in `version`'s shape.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if version.is_1_1()
                    && let Some(m) = i.mtu
                {
                    o.insert("mtu".into(), json!(m));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                if version.is_1_1() {
                    if let Some(p) = &i.pci_id {
                        o.insert("pciID".into(), json!(p));
                    }
                    for (k, v) in &i.extra {
                        o.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.has_ip_version_field() {
                    o.insert(
                        "version".into(),
                        json!(if ip.address.addr.is_ipv4() { "4" } else { "6" }),
                    );
                }
                o.insert("address".into(), json!(fmt_ipnet(&ip.address)));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(fmt_ipnet(&r.dst)));
                if let Some(g) = r.gw {
                    o.insert("gw".into(), json!(g.to_string()));
                }
                if version.is_1_1() {
                    for (k, v) in &r.extra {
                        o.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), Value::Array(routes));
        out.insert(
            "dns".into(),
            if self.dns.is_object() {
                self.dns.clone()
            } else {
                json!({})
            },
        );
        Value::Object(out)
    }
}

/// Adds a top-level member to a printed result (railvf's own `"railvf"` key). Unknown keys
/// are allowed in a result: libcni and Multus ignore them when they decode it, a runtime
/// that keeps the raw result keeps it. Text that is not a JSON object is returned as is.
pub fn with_member(text: String, key: &str, value: Value) -> String {
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(mut o)) => {
            o.insert(key.to_string(), value);
            Value::Object(o).to_string()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_added_and_nothing_else_changes() {
        let r = CniResult::default().to_json(Version::V1_1_0);
        let out = with_member(r.to_string(), "railvf", json!({"rail": {"vf": 5}}));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["railvf"]["rail"]["vf"], 5);
        let mut back = v.as_object().unwrap().clone();
        back.remove("railvf");
        assert_eq!(Value::Object(back), r);
        assert_eq!(with_member("x".into(), "k", json!(1)), "x");
    }

    #[test]
    fn reads_a_0_3_1_ipam_result_and_prints_every_version() {
        let ipam: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.9.0.5/24","gateway":"10.9.0.1"},
                {"version":"6","address":"fd00::5/64"}],
               "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.10.0.0/16","gw":"10.9.0.254","priority":5}],
               "dns":{"nameservers":["10.9.0.53"],"search":["svc"]}}"#,
        )
        .unwrap();
        let mut r = CniResult::parse(&ipam).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[0].gateway, Some("10.9.0.1".parse().unwrap()));
        r.interfaces.push(Interface {
            name: "net1".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: Some(4092),
            sandbox: Some("/var/run/netns/p".into()),
            pci_id: Some("0000:18:00.1".into()),
            extra: Map::new(),
        });
        for ip in &mut r.ips {
            ip.interface = Some(0);
        }

        let old = r.to_json(Version::V0_3_1);
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["ips"][0]["interface"], 0);
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old["interfaces"][0].get("pciID").is_none());
        assert!(old["routes"][1].get("priority").is_none());

        let v100 = r.to_json(Version::V1_0_0);
        assert!(v100["ips"][0].get("version").is_none());
        assert_eq!(v100["dns"]["nameservers"][0], "10.9.0.53");

        let v110 = r.to_json(Version::V1_1_0);
        assert_eq!(v110["interfaces"][0]["mtu"], 4092);
        assert_eq!(v110["interfaces"][0]["pciID"], "0000:18:00.1");
        assert_eq!(v110["interfaces"][0]["sandbox"], "/var/run/netns/p");
        assert_eq!(v110["routes"][1]["priority"], 5);
        assert_eq!(v110["routes"][1]["gw"], "10.9.0.254");

        // And back: our own output parses to the same thing.
        let again = CniResult::parse(&v110).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn malformed_results_say_which_field() {
        let v: Value = serde_json::from_str(r#"{"ips":[{"address":"10.0.0.1"}]}"#).unwrap();
        let e = CniResult::parse(&v).unwrap_err();
        assert!(e.to_string().contains("ips[0].address"), "{e}");
        assert!(parse_ipnet("10.0.0.1/33").is_none());
        assert_eq!(fmt_ipnet(&parse_ipnet("fd00::1/64").unwrap()), "fd00::1/64");
    }

    #[test]
    fn route_attributes_are_read_and_bad_ones_named() {
        let v: Value = serde_json::from_str(
            r#"{"routes":[{"dst":"10.8.0.0/16","table":101,"priority":50,"scope":253,"mtu":1400,"advmss":1360,"note":"kept"},{"dst":"0.0.0.0/0","table":null}]}"#,
        )
        .unwrap();
        let r = CniResult::parse(&v).unwrap();
        assert_eq!(
            r.routes[0].attrs,
            RouteAttrs {
                table: Some(101),
                metric: Some(50),
                scope: Some(253),
                mtu: Some(1400),
                advmss: Some(1360),
            }
        );
        assert_eq!(r.routes[1].attrs, RouteAttrs::default());
        // Printed back as given in 1.1.0, not at all before it.
        let out = r.to_json(Version::V1_1_0);
        assert_eq!(out["routes"][0]["table"], 101);
        assert_eq!(out["routes"][0]["note"], "kept");
        assert!(
            r.to_json(Version::V1_0_0)["routes"][0]
                .get("table")
                .is_none()
        );
        for (bad, field) in [
            (r#"{"dst":"10.8.0.0/16","table":-1}"#, "routes[0].table"),
            (
                r#"{"dst":"10.8.0.0/16","table":4294967296}"#,
                "routes[0].table",
            ),
            (
                r#"{"dst":"10.8.0.0/16","priority":"high"}"#,
                "routes[0].priority",
            ),
            (r#"{"dst":"10.8.0.0/16","scope":300}"#, "routes[0].scope"),
            (r#"{"dst":"10.8.0.0/16","mtu":1.5}"#, "routes[0].mtu"),
        ] {
            let v: Value = serde_json::from_str(&format!(r#"{{"routes":[{bad}]}}"#)).unwrap();
            let e = CniResult::parse(&v).unwrap_err().to_string();
            assert!(
                e.starts_with(field) && e.contains("expected an integer"),
                "{e}"
            );
        }
    }
}
