//! The network configuration (stdin), validated field by field.
//!
//! A superset of sriov-cni's and ib-sriov-cni's fields, so an existing
//! NetworkAttachmentDefinition works after changing only `"type"`. Unknown keys are ignored.
//! Fields are read one by one (not with a derived deserializer) so that every error names
//! the field, what it expected and what it found.

use std::time::Duration;

use railvf_host::{Expectations, Guid, LinkLayer, PciAddr};
use serde_json::{Map, Value};

use crate::error::{CniError, code};
use crate::log::Level;
use crate::net::VfSettings;
use crate::rail::Policy as RailPolicy;
use crate::version::Version;

/// The largest network configuration railvf reads (stdin): real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Default and upper bound of `readiness.timeoutMs`.
pub const DEFAULT_READINESS_TIMEOUT_MS: u64 = 30_000;
pub const MAX_READINESS_TIMEOUT_MS: u64 = 600_000;

/// `readiness`: what ADD waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadinessConf {
    pub timeout: Duration,
    pub expectations: Expectations,
}

impl Default for ReadinessConf {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(DEFAULT_READINESS_TIMEOUT_MS),
            expectations: Expectations::default(),
        }
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// The ib-kubernetes hand-off, as ib-sriov-cni reads it. ib-kubernetes picks a GUID for
/// each pod network, adds it to the partition key (pkey) in the subnet manager, then writes
/// into the pod's network annotation what Multus passes on: the GUID (as
/// `runtimeConfig.infinibandGUID` when the config declares that capability, else as
/// `args.cni.guid`) and `args.cni["mellanox.infiniband.app"] = "configured"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IbKubernetes {
    /// `ibKubernetesEnabled`.
    pub enabled: bool,
    /// `args.cni["mellanox.infiniband.app"]`, as given.
    pub status: Option<String>,
    /// Whether the GUID came from ib-kubernetes (`runtimeConfig.infinibandGUID` or
    /// `args.cni.guid`), not from the config's own `guid`.
    pub guid_given: bool,
}

/// The value ib-kubernetes writes into `args.cni["mellanox.infiniband.app"]` once the
/// pod's GUID is in its partition.
pub const IB_KUBERNETES_CONFIGURED: &str = "configured";

/// A validated network configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// The bytes read from stdin, handed to the IPAM plugin unchanged.
    pub raw: Vec<u8>,
    pub version: Version,
    pub name: Option<String>,
    /// The VF, from `runtimeConfig.deviceID`, `deviceID` or `pciBusID` (they must agree).
    pub device: Option<PciAddr>,
    /// `runtimeConfig.infinibandGUID`, else `args.cni.guid`, else `guid`.
    pub guid: Option<Guid>,
    /// `ibKubernetesEnabled`: ADD goes on only once ib-kubernetes has configured the pod
    /// (see [`NetConf::require_ib_kubernetes`]).
    pub ib_kubernetes: IbKubernetes,
    pub mtu: Option<u32>,
    /// VF settings applied through the PF (`mac`, `vlan*`, `spoofchk`, `trust`, rates, `link_state`).
    pub vf: VfSettings,
    pub rdma_isolation: bool,
    /// `ipam.type`, when IPAM is configured (a bare file name, looked up in `CNI_PATH`).
    pub ipam_type: Option<String>,
    /// `logFile` as given; where it may point is checked when it is opened
    /// ([`crate::log::open_log_file`]).
    pub log_file: Option<String>,
    pub log_level: Level,
    /// What is wrong with the logging settings, logged as warnings once logging is set up.
    pub log_notes: Vec<String>,
    pub readiness: ReadinessConf,
    /// `railPolicy`: `none`, `warn` (default) or `require` (see [`crate::rail`]).
    pub rail_policy: RailPolicy,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

impl NetConf {
    /// Parses and validates. JSON syntax errors are code 6, bad values code 7, an
    /// unsupported `cniVersion` code 1.
    pub fn parse(raw: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(raw).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network config on stdin is not valid JSON: {e}"),
                "check the NetworkAttachmentDefinition's config (or the .conflist) for syntax errors",
            )
        })?;
        let Value::Object(m) = value else {
            return Err(invalid("", "a JSON object", &value));
        };
        no_duplicate_keys(raw)?;
        let version = match m.get("cniVersion") {
            Some(Value::String(s)) => Version::parse(s)?,
            None | Some(Value::Null) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "the network config has no \"cniVersion\"",
                    "add \"cniVersion\": \"1.0.0\" (or 1.1.0) to the network config",
                ));
            }
            Some(other) => return Err(invalid("cniVersion", "a version string", other)),
        };
        let rc = object(&m, "runtimeConfig")?;
        let empty = Map::new();
        let rc = rc.unwrap_or(&empty);

        let device = device(&m, rc)?;
        // `args` carries data for any plugin, to be ignored when not understood (CNI
        // conventions): only the two keys of ib-kubernetes are read, and only from objects.
        let cni_args = m
            .get("args")
            .and_then(Value::as_object)
            .and_then(|a| a.get("cni"))
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let ib_guid = match string(rc, "runtimeConfig.infinibandGUID", "infinibandGUID")? {
            Some(g) => Some(parse_guid("runtimeConfig.infinibandGUID", g)?),
            None => match string(cni_args, "args.cni.guid", "guid")? {
                Some(g) => Some(parse_guid("args.cni.guid", g)?),
                None => None,
            },
        };
        let guid = match ib_guid {
            Some(g) => Some(g),
            None => match string(&m, "guid", "guid")? {
                Some(g) => Some(parse_guid("guid", g)?),
                None => None,
            },
        };
        let ib_kubernetes = IbKubernetes {
            enabled: boolean(&m, "ibKubernetesEnabled")?.unwrap_or(false),
            status: string(
                cni_args,
                "args.cni.mellanox.infiniband.app",
                "mellanox.infiniband.app",
            )?
            .map(str::to_string),
            guid_given: ib_guid.is_some(),
        };
        let mac = match string(rc, "runtimeConfig.mac", "mac")? {
            Some(s) => Some(parse_mac("runtimeConfig.mac", s)?),
            None => match string(&m, "mac", "mac")? {
                Some(s) => Some(parse_mac("mac", s)?),
                None => None,
            },
        };
        let mtu = integer(&m, "mtu", 68, 65535)?.map(|v| v as u32);
        let vlan = integer(&m, "vlan", 0, 4094)?;
        let qos = integer(&m, "vlanQoS", 0, 7)?;
        let proto = match string(&m, "vlanProto", "vlanProto")? {
            None => None,
            Some(p) => Some(match p.to_ascii_lowercase().as_str() {
                "802.1q" => 0x8100u16,
                "802.1ad" => 0x88a8u16,
                _ => {
                    return Err(invalid(
                        "vlanProto",
                        "\"802.1q\" or \"802.1ad\"",
                        &m["vlanProto"],
                    ));
                }
            }),
        };
        let vlan_setting = match (vlan, qos, proto) {
            (None, None, None) => None,
            (vlan, qos, proto) => {
                let vlan = vlan.unwrap_or(0) as u16;
                let qos = qos.unwrap_or(0) as u8;
                let proto = proto.unwrap_or(0x8100);
                if vlan == 0 && (qos != 0 || proto != 0x8100) {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        "vlanQoS or vlanProto is set but vlan is 0 or missing: expected a VLAN id 1-4094 with them",
                        "set \"vlan\", or remove vlanQoS/vlanProto",
                    ));
                }
                Some((vlan, qos, proto))
            }
        };
        let spoofchk = on_off(&m, "spoofchk")?;
        let trust = on_off(&m, "trust")?;
        let min_rate = integer(&m, "min_tx_rate", 0, u32::MAX as i64)?;
        let max_rate = integer(&m, "max_tx_rate", 0, u32::MAX as i64)?;
        let rate = match (min_rate, max_rate) {
            (None, None) => None,
            (min, max) => {
                let (min, max) = (min.unwrap_or(0) as u32, max.unwrap_or(0) as u32);
                if max != 0 && min > max {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "min_tx_rate {min} is above max_tx_rate {max}: expected min <= max (or max 0 for no limit)"
                        ),
                        "fix the rates in the network config (both in Mbps)",
                    ));
                }
                Some((min, max))
            }
        };
        let link_state = match string(&m, "link_state", "link_state")? {
            None => None,
            Some("auto") => Some(0),
            Some("enable") => Some(1),
            Some("disable") => Some(2),
            Some(_) => {
                return Err(invalid(
                    "link_state",
                    "\"auto\", \"enable\" or \"disable\"",
                    &m["link_state"],
                ));
            }
        };
        let rdma_isolation = boolean(&m, "rdmaIsolation")?.unwrap_or(false);
        let ipam_type = match object(&m, "ipam")? {
            None => None,
            Some(ipam) => match string(ipam, "ipam.type", "type")? {
                None | Some("") => None,
                Some(t) => Some(validate_plugin_name(t)?.to_string()),
            },
        };
        // Logging settings never stop a call: sriov-cni's logger takes any level (unknown
        // ones as info) and falls back to stderr, and NADs written for it must keep working.
        let mut log_notes = Vec::new();
        let log_level = match string(&m, "logLevel", "logLevel")? {
            None => Level::Info,
            Some(s) => Level::parse(s).unwrap_or_else(|| {
                log_notes.push(format!(
                    "\"logLevel\" {:?} is not a level railvf knows (\"panic\", \"error\", \"warning\", \"info\", \"verbose\" or \"debug\"); logging at info",
                    s.chars().take(64).collect::<String>()
                ));
                Level::Info
            }),
        };
        let log_file = match string(&m, "logFile", "logFile")? {
            None | Some("") => None,
            Some(p) => Some(p.to_string()),
        };
        let readiness = readiness(&m)?;
        let rail_policy = match string(&m, "railPolicy", "railPolicy")? {
            None => RailPolicy::default(),
            Some(p) => RailPolicy::parse(p).ok_or_else(|| {
                invalid(
                    "railPolicy",
                    "\"none\", \"warn\" or \"require\"",
                    &m["railPolicy"],
                )
            })?,
        };
        let prev_result = match m.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => return Err(invalid("prevResult", "a CNI result object", other)),
        };
        let valid_attachments = valid_attachments(&m)?;
        Ok(NetConf {
            raw: raw.to_vec(),
            version,
            name: string(&m, "name", "name")?.map(str::to_string),
            device,
            guid,
            ib_kubernetes,
            mtu,
            vf: VfSettings {
                mac,
                vlan: vlan_setting,
                spoofchk,
                trust,
                rate,
                link_state,
            },
            rdma_isolation,
            ipam_type,
            log_file,
            log_level,
            log_notes,
            readiness,
            rail_policy,
            prev_result,
            valid_attachments,
        })
    }

    /// The parse of configs that only undo what an ADD did (DEL's, and the config an ADD
    /// recorded for a later IPAM DEL). A config this version refuses must not keep a VF in a
    /// pod for good, nor a pod in Terminating: Multus replays the config it cached at ADD
    /// (editing the NetworkAttachmentDefinition does not change that), and a runtime sends
    /// DEL after every failed ADD, also of a config no ADD could accept (not JSON, an
    /// unsupported `cniVersion`). It then yields only what undoing needs, each part only if
    /// valid on its own — `cniVersion` (the latest when unusable: it only dresses an error),
    /// `name`, the VF and `ipam.type` — and the refusal beside it, for a warning. DEL then
    /// goes by the state ADD recorded, if any.
    pub fn parse_for_teardown(raw: &[u8]) -> (Self, Option<CniError>) {
        match Self::parse(raw) {
            Ok(c) => (c, None),
            Err(e) => (Self::undo_only(raw), Some(e)),
        }
    }

    fn undo_only(raw: &[u8]) -> Self {
        let m = match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let version = m
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(|v| Version::parse(v).ok())
            .unwrap_or(Version::LATEST);
        let empty = Map::new();
        let rc = m
            .get("runtimeConfig")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let ipam_type = m
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .and_then(|t| validate_plugin_name(t).ok())
            .map(str::to_string);
        NetConf {
            raw: raw.to_vec(),
            version,
            name: m.get("name").and_then(Value::as_str).map(str::to_string),
            device: device(&m, rc).ok().flatten(),
            guid: None,
            ib_kubernetes: IbKubernetes::default(),
            mtu: None,
            vf: VfSettings::default(),
            rdma_isolation: false,
            ipam_type,
            log_file: None,
            log_level: Level::Info,
            log_notes: Vec::new(),
            readiness: ReadinessConf::default(),
            rail_policy: RailPolicy::default(),
            prev_result: None,
            valid_attachments: None,
        }
    }

    /// The network name, required by the verbs that keep state.
    pub fn require_name(&self) -> Result<&str, CniError> {
        self.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the network config has no \"name\"",
                "every CNI network config needs a \"name\" (Multus uses the NetworkAttachmentDefinition's name)",
            )
        })
    }

    /// With `ibKubernetesEnabled`, ADD must not attach the VF before ib-kubernetes has put
    /// the pod's GUID into its partition: the pod would come up outside the pkey it asked
    /// for. Refused as ib-sriov-cni refuses it, before anything changes.
    pub fn require_ib_kubernetes(&self) -> Result<(), CniError> {
        let ibk = &self.ib_kubernetes;
        if !ibk.enabled {
            return Ok(());
        }
        if ibk.status.as_deref() != Some(IB_KUBERNETES_CONFIGURED) {
            let found = match &ibk.status {
                Some(s) => format!("{:?}", s.chars().take(80).collect::<String>()),
                None => "nothing".to_string(),
            };
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!(
                    "\"ibKubernetesEnabled\" is true but ib-kubernetes has not configured this pod's network yet: expected args.cni[\"mellanox.infiniband.app\"] = \"{IB_KUBERNETES_CONFIGURED}\", found {found}"
                ),
                "ib-kubernetes marks the pod once its GUID is in the partition key (pkey); check that ib-kubernetes runs and what it logs for this pod (kubelet retries the sandbox). If this network does not use ib-kubernetes, remove \"ibKubernetesEnabled\"",
            ));
        }
        if !ibk.guid_given {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "\"ibKubernetesEnabled\" is true and ib-kubernetes configured the pod, but its GUID did not reach railvf: expected runtimeConfig.infinibandGUID or args.cni.guid, found neither",
                "ib-kubernetes writes the GUID into the pod's network annotation beside its mark: check that annotation (infiniband-guid or cni-args.guid), and that the network config declares \"capabilities\": {\"infinibandGUID\": true} if ib-kubernetes passes it as infiniband-guid",
            ));
        }
        Ok(())
    }

    /// Whether any VF setting goes through the PF.
    pub fn has_vf_settings(&self) -> bool {
        self.vf != VfSettings::default()
    }
}

/// Reads the best-effort `cniVersion` of an input that failed to parse, for the error object.
pub fn sniff_version(raw: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?).ok()
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn invalid(field: &str, expected: &str, found: &Value) -> CniError {
    let field = if field.is_empty() {
        "the network config".to_string()
    } else {
        format!("\"{field}\"")
    };
    CniError::new(
        code::INVALID_CONFIG,
        format!(
            "{field} is invalid: expected {expected}, found {}",
            describe(found)
        ),
        "fix the field in the NetworkAttachmentDefinition (docs/cni.md lists every field)",
    )
}

fn string<'a>(
    m: &'a Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<&'a str>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(invalid(field, "a string", other)),
    }
}

fn object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(invalid(key, "an object", other)),
    }
}

fn boolean(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(key, "true or false", other)),
    }
}

fn integer(m: &Map<String, Value>, key: &str, min: i64, max: i64) -> Result<Option<i64>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(key, &format!("an integer {min}-{max}"), v)),
        },
    }
}

fn on_off(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match string(m, key, key)? {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(_) => Err(invalid(key, "\"on\" or \"off\"", &m[key])),
    }
}

fn device(m: &Map<String, Value>, rc: &Map<String, Value>) -> Result<Option<PciAddr>, CniError> {
    let mut found: Vec<(&str, PciAddr)> = Vec::new();
    for (field, map, key) in [
        ("runtimeConfig.deviceID", rc, "deviceID"),
        ("deviceID", m, "deviceID"),
        ("pciBusID", m, "pciBusID"),
    ] {
        if let Some(s) = string(map, field, key)?
            && !s.is_empty()
        {
            let addr = s.parse::<PciAddr>().map_err(|e| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("\"{field}\": {e}"),
                    "the device plugin (sriov-network-device-plugin or railvf-device-plugin) must allocate a VF; Multus passes its PCI address as deviceID",
                )
            })?;
            found.push((field, addr));
        }
    }
    if let Some((f0, a0)) = found.first()
        && let Some((f1, a1)) = found.iter().find(|(_, a)| a != a0)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("\"{f0}\" is {a0} but \"{f1}\" is {a1}: expected both to name the same VF"),
            "remove the stale one from the network config; Multus fills deviceID from the device plugin's allocation",
        ));
    }
    Ok(found.first().map(|(_, a)| *a))
}

fn parse_guid(field: &str, s: &str) -> Result<Guid, CniError> {
    let g: Guid = s.parse().map_err(|_| {
        invalid(
            field,
            "a GUID like 11:22:33:44:55:66:77:88",
            &Value::String(s.to_string()),
        )
    })?;
    if !g.is_assigned() {
        return Err(invalid(
            field,
            "a GUID that is neither all-zero nor all-ones (the fabric rejects those)",
            &Value::String(s.to_string()),
        ));
    }
    Ok(g)
}

fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], CniError> {
    let bad = || {
        invalid(
            field,
            "a unicast Ethernet MAC like 02:00:00:aa:bb:cc",
            &Value::String(s.to_string()),
        )
    };
    let mac = crate::net::parse_mac(s).ok_or_else(bad)?;
    // Multicast addresses cannot be a station address.
    if mac[0] & 1 == 1 {
        return Err(bad());
    }
    Ok(mac)
}

/// `ipam.type` names a program in `CNI_PATH`: a bare file name only.
pub fn validate_plugin_name(t: &str) -> Result<&str, CniError> {
    let ok = !t.is_empty()
        && t.len() <= 255
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(t)
    } else {
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "\"ipam.type\" {:?} is not a plugin name: expected a bare file name (letters, digits, '-', '_', '.') found in a CNI_PATH directory",
                t.chars().take(80).collect::<String>()
            ),
            "use the name of an installed IPAM plugin, e.g. \"host-local\", \"static\" or \"whereabouts\"",
        ))
    }
}

fn readiness(m: &Map<String, Value>) -> Result<ReadinessConf, CniError> {
    let mut r = ReadinessConf::default();
    let Some(o) = object(m, "readiness")? else {
        return Ok(r);
    };
    if let Some(v) = o.get("timeoutMs").filter(|v| !v.is_null()) {
        match v.as_u64() {
            Some(ms) if ms <= MAX_READINESS_TIMEOUT_MS => r.timeout = Duration::from_millis(ms),
            _ => {
                return Err(invalid(
                    "readiness.timeoutMs",
                    &format!("an integer 0-{MAX_READINESS_TIMEOUT_MS} (milliseconds)"),
                    v,
                ));
            }
        }
    }
    if let Some(s) = string(o, "readiness.linkLayer", "linkLayer")? {
        r.expectations.link_layer = match s {
            "InfiniBand" => LinkLayer::InfiniBand,
            "Ethernet" => LinkLayer::Ethernet,
            _ => {
                return Err(invalid(
                    "readiness.linkLayer",
                    "\"InfiniBand\" or \"Ethernet\"",
                    &o["linkLayer"],
                ));
            }
        };
    }
    if let Some(v) = o.get("requireLid").filter(|v| !v.is_null()) {
        r.expectations.require_lid = v
            .as_bool()
            .ok_or_else(|| invalid("readiness.requireLid", "true or false", v))?;
    }
    Ok(r)
}

/// The attachments GC must keep. The key is `cni.dev/valid-attachments` in the released
/// 1.1.0 spec; its first text called it `cni.dev/attachments`, and libcni since 1.2.1 sends
/// both. Either is accepted; with both, an attachment listed in either is kept (keeping one
/// too many is harmless, tearing down a live one is not). An explicit `null` is an empty
/// list: libcni sends the runtime's nil Go slice as `null` when no pod uses the network
/// (CRI-O does), exactly when every attachment is stale.
fn valid_attachments(m: &Map<String, Value>) -> Result<Option<Vec<AttachmentKey>>, CniError> {
    let mut out: Option<Vec<AttachmentKey>> = None;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let Some(v) = m.get(key) else {
            continue;
        };
        if v.is_null() {
            out.get_or_insert_with(Vec::new);
            continue;
        }
        let Some(list) = v.as_array() else {
            return Err(invalid(key, "an array of {containerID, ifname}", v));
        };
        let out = out.get_or_insert_with(|| Vec::with_capacity(list.len()));
        // A set, not `out.contains`: the list comes from the config, and a long one made
        // every verb quadratic.
        let mut seen: std::collections::HashSet<AttachmentKey> = out.iter().cloned().collect();
        for item in list {
            let (Some(cid), Some(ifname)) = (
                item.get("containerID").and_then(Value::as_str),
                item.get("ifname").and_then(Value::as_str),
            ) else {
                return Err(invalid(
                    key,
                    "entries {\"containerID\": …, \"ifname\": …}",
                    item,
                ));
            };
            let a = AttachmentKey {
                container_id: cid.to_string(),
                ifname: ifname.to_string(),
            };
            if seen.insert(a.clone()) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Refuses an object with the same key twice, at any depth: parsers disagree on which one
/// counts (serde_json and Go keep the last, others the first), so whoever reviewed the
/// NetworkAttachmentDefinition could have read another `deviceID` or `ipam` than railvf.
fn no_duplicate_keys(raw: &[u8]) -> Result<(), CniError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Walk;
    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Walk)
        }
    }
    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while a.next_element_seed(Walk)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                a.next_value_seed(Walk)?;
                if !seen.insert(k.clone()) {
                    return Err(A::Error::custom(format!(
                        "duplicate key {:?}",
                        k.chars().take(80).collect::<String>()
                    )));
                }
            }
            Ok(())
        }
    }
    let mut d = serde_json::Deserializer::from_slice(raw);
    Walk.deserialize(&mut d).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("the network config is ambiguous: {e}"),
            "give each key once; parsers disagree on which of two values counts",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"cniVersion":"1.0.0","deviceID":"0000:18:00.1","deviceID":"0000:18:00.2"}"#,
            r#"{"cniVersion":"1.0.0","ipam":{"type":"static","type":"host-local"}}"#,
            r#"{"cniVersion":"1.0.0","x":[{"a":1,"a":1}]}"#,
            r#"{"cniVersion":"1.0.0","d\u0065viceID":"0000:18:00.1","deviceID":"0000:18:00.1"}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}: {e}");
            assert!(e.msg.contains("duplicate key"), "{e}");
        }
        parse(r#"{"cniVersion":"1.0.0","a":{"type":1},"b":{"type":2},"type":"railvf"}"#).unwrap();
    }

    #[test]
    fn sriov_cni_config_is_accepted_unchanged_but_for_type() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"sriov-net","type":"railvf","deviceID":"0000:18:00.1",
                "pciBusID":"0000:18:00.1","vlan":100,"vlanQoS":3,"vlanProto":"802.1AD","spoofchk":"off",
                "trust":"on","min_tx_rate":10,"max_tx_rate":200,"link_state":"enable","mac":"02:11:22:33:44:55",
                "mtu":9000,"ipam":{"type":"host-local","subnet":"10.0.0.0/24"},"logLevel":"debug",
                "someUnknownKey":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.device.unwrap().to_string(), "0000:18:00.1");
        assert_eq!(c.vf.vlan, Some((100, 3, 0x88a8)));
        assert_eq!(c.vf.spoofchk, Some(false));
        assert_eq!(c.vf.trust, Some(true));
        assert_eq!(c.vf.rate, Some((10, 200)));
        assert_eq!(c.vf.link_state, Some(1));
        assert_eq!(c.vf.mac, Some([2, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(c.mtu, Some(9000));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.log_level, Level::Debug);
        assert_eq!(c.readiness, ReadinessConf::default());
        assert_eq!(c.rail_policy, RailPolicy::Warn, "warn by default");
        assert!(c.has_vf_settings());
    }

    #[test]
    fn logging_settings_sriov_cni_takes_never_refuse_a_config() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","logLevel":"VERBOSE","logFile":"/var/log/sriov-cni.log"}"#,
        )
        .unwrap();
        assert_eq!(c.log_level, Level::Debug);
        assert_eq!(c.log_file.as_deref(), Some("/var/log/sriov-cni.log"));
        assert!(c.log_notes.is_empty());
        let c = parse(r#"{"cniVersion":"1.0.0","logLevel":"loud","logFile":"rel.log"}"#).unwrap();
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.log_notes.len(), 1);
        assert!(c.log_notes[0].contains("\"loud\""), "{:?}", c.log_notes);
    }

    #[test]
    fn runtime_config_wins_and_ib_fields_parse() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"ib","type":"railvf","guid":"11:22:33:44:55:66:77:88",
                "runtimeConfig":{"deviceID":"0000:18:00.2","infinibandGUID":"02:00:00:00:00:00:00:01","mac":"02:00:00:00:00:09","ips":["10.0.0.5/24"]},
                "rdmaIsolation":true,"readiness":{"timeoutMs":500,"linkLayer":"Ethernet","requireLid":false}}"#,
        )
        .unwrap();
        assert_eq!(c.device.unwrap().to_string(), "0000:18:00.2");
        assert_eq!(c.guid.unwrap().0, 0x0200000000000001);
        assert_eq!(c.vf.mac, Some([2, 0, 0, 0, 0, 9]));
        assert!(c.rdma_isolation);
        assert_eq!(c.readiness.timeout, Duration::from_millis(500));
        assert_eq!(c.readiness.expectations.link_layer, LinkLayer::Ethernet);
        assert!(!c.readiness.expectations.require_lid);
        assert!(c.ipam_type.is_none());
        for (p, want) in [
            ("none", RailPolicy::None),
            ("warn", RailPolicy::Warn),
            ("require", RailPolicy::Require),
        ] {
            let c = parse(&format!(r#"{{"cniVersion":"1.1.0","railPolicy":"{p}"}}"#)).unwrap();
            assert_eq!(c.rail_policy, want);
        }
    }

    #[test]
    fn ib_kubernetes_guid_and_status_are_read_from_cni_args() {
        // ib-sriov-cni's order: runtimeConfig, then args.cni.guid; the config's own `guid`
        // last.
        let c = parse(
            r#"{"cniVersion":"1.0.0","guid":"11:22:33:44:55:66:77:88","ibKubernetesEnabled":true,
                "args":{"cni":{"guid":"02:00:00:00:00:00:00:07","mellanox.infiniband.app":"configured","pkey":"0x8001","ips":["10.0.0.5/24"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.guid.unwrap().0, 0x0200000000000007);
        assert!(c.ib_kubernetes.enabled && c.ib_kubernetes.guid_given);
        assert_eq!(c.ib_kubernetes.status.as_deref(), Some("configured"));
        c.require_ib_kubernetes().unwrap();
        let c = parse(
            r#"{"cniVersion":"1.0.0","runtimeConfig":{"infinibandGUID":"02:00:00:00:00:00:00:01"},
                "args":{"cni":{"guid":"02:00:00:00:00:00:00:07"}}}"#,
        )
        .unwrap();
        assert_eq!(c.guid.unwrap().0, 0x0200000000000001);
        c.require_ib_kubernetes().unwrap();
        // Not enabled: nothing is required, and the config's own guid counts.
        let c = parse(r#"{"cniVersion":"1.0.0","guid":"11:22:33:44:55:66:77:88"}"#).unwrap();
        assert!(!c.ib_kubernetes.guid_given);
        c.require_ib_kubernetes().unwrap();
        // `args` that are not objects belong to someone else: ignored.
        let c = parse(r#"{"cniVersion":"1.0.0","args":"x"}"#).unwrap();
        assert_eq!(c.ib_kubernetes, IbKubernetes::default());
        let c = parse(r#"{"cniVersion":"1.0.0","args":{"cni":[1]}}"#).unwrap();
        assert_eq!(c.ib_kubernetes, IbKubernetes::default());
    }

    #[test]
    fn ib_kubernetes_enabled_refuses_until_the_pod_is_configured_with_a_guid() {
        let refused = |input: &str| {
            parse(input)
                .unwrap()
                .require_ib_kubernetes()
                .expect_err(input)
        };
        // Not marked yet: try again later (kubelet retries the sandbox).
        let e = refused(
            r#"{"cniVersion":"1.0.0","ibKubernetesEnabled":true,"runtimeConfig":{"infinibandGUID":"02:00:00:00:00:00:00:01"}}"#,
        );
        assert_eq!(e.code, code::TRY_AGAIN, "{e}");
        assert!(e.msg.contains("found nothing"), "{e}");
        let e = refused(
            r#"{"cniVersion":"1.0.0","ibKubernetesEnabled":true,"args":{"cni":{"guid":"02:00:00:00:00:00:00:01","mellanox.infiniband.app":"pending"}}}"#,
        );
        assert_eq!(e.code, code::TRY_AGAIN, "{e}");
        assert!(e.msg.contains(r#"found "pending""#), "{e}");
        // Marked, but the GUID did not come through (the NAD lacks the capability); the
        // config's own guid does not stand in for ib-kubernetes's.
        let e = refused(
            r#"{"cniVersion":"1.0.0","ibKubernetesEnabled":true,"guid":"11:22:33:44:55:66:77:88","args":{"cni":{"mellanox.infiniband.app":"configured"}}}"#,
        );
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
        assert!(e.details.contains("\"infinibandGUID\": true"), "{e}");
        // Bad values of the keys railvf reads.
        for (input, needle) in [
            (
                r#"{"cniVersion":"1.0.0","args":{"cni":{"guid":"zz"}}}"#,
                "args.cni.guid",
            ),
            (
                r#"{"cniVersion":"1.0.0","args":{"cni":{"guid":7}}}"#,
                "args.cni.guid",
            ),
            (
                r#"{"cniVersion":"1.0.0","args":{"cni":{"mellanox.infiniband.app":true}}}"#,
                "mellanox.infiniband.app",
            ),
            (
                r#"{"cniVersion":"1.0.0","ibKubernetesEnabled":"yes"}"#,
                "ibKubernetesEnabled",
            ),
        ] {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{input}: {e}");
            assert!(e.msg.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn every_bad_field_is_named_with_what_was_expected() {
        let cases = [
            (r#"{"cniVersion":"1.0.0","vlan":5000}"#, 7, "\"vlan\""),
            (r#"{"cniVersion":"1.0.0","vlan":"10"}"#, 7, "\"vlan\""),
            (r#"{"cniVersion":"1.0.0","vlanQoS":3}"#, 7, "vlanQoS"),
            (
                r#"{"cniVersion":"1.0.0","spoofchk":"yes"}"#,
                7,
                "\"spoofchk\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","link_state":"up"}"#,
                7,
                "\"link_state\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","min_tx_rate":10,"max_tx_rate":5}"#,
                7,
                "min_tx_rate",
            ),
            (
                r#"{"cniVersion":"1.0.0","deviceID":"../../etc"}"#,
                7,
                "deviceID",
            ),
            (
                r#"{"cniVersion":"1.0.0","deviceID":"0000:18:00.1","pciBusID":"0000:18:00.2"}"#,
                7,
                "same VF",
            ),
            (
                r#"{"cniVersion":"1.0.0","guid":"00:00:00:00:00:00:00:00"}"#,
                7,
                "\"guid\"",
            ),
            (r#"{"cniVersion":"1.0.0","guid":"zz"}"#, 7, "\"guid\""),
            (
                r#"{"cniVersion":"1.0.0","mac":"01:00:00:00:00:01"}"#,
                7,
                "\"mac\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","ipam":{"type":"../bin/sh"}}"#,
                7,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","ipam":{"type":"/bin/sh"}}"#,
                7,
                "ipam.type",
            ),
            (r#"{"cniVersion":"1.0.0","logLevel":5}"#, 7, "logLevel"),
            (
                r#"{"cniVersion":"1.0.0","logFile":["/x.log"]}"#,
                7,
                "logFile",
            ),
            (
                r#"{"cniVersion":"1.0.0","railPolicy":"strict"}"#,
                7,
                "\"railPolicy\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","railPolicy":true}"#,
                7,
                "railPolicy",
            ),
            (
                r#"{"cniVersion":"1.0.0","readiness":{"timeoutMs":-1}}"#,
                7,
                "readiness.timeoutMs",
            ),
            (
                r#"{"cniVersion":"1.0.0","readiness":{"linkLayer":"ib"}}"#,
                7,
                "readiness.linkLayer",
            ),
            (r#"{"cniVersion":"1.0.0","mtu":10}"#, 7, "\"mtu\""),
            (r#"{"cniVersion":"0.2.0"}"#, 1, "0.2.0"),
            (r#"{"name":"x"}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"1.0.0""#, 6, "JSON"),
            (r#"[1]"#, 7, "object"),
        ];
        for (input, want_code, needle) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, want_code, "{input}: {e}");
            assert!(e.msg.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn gc_attachments_and_version_sniffing() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"net1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![AttachmentKey {
                container_id: "a".into(),
                ifname: "net1".into()
            }]
        );
        // The key of the spec's first 1.1.0 text, alone and beside the final one.
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"b","ifname":"net2"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "b");
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"net1"}],"cni.dev/attachments":[{"containerID":"a","ifname":"net1"},{"containerID":"b","ifname":"net1"}]}"#,
        )
        .unwrap();
        let got: Vec<_> = c
            .valid_attachments
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(got, ["a", "b"]);
        let e = parse(r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":{}}"#).unwrap_err();
        assert!(e.msg.contains("cni.dev/attachments"), "{e}");
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0","vlan":"x"}"#),
            Some(Version::V0_4_0)
        );
        assert_eq!(sniff_version(b"nope"), None);
    }
}
