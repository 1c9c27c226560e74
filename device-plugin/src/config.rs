//! The device plugin's config file: sriov-network-device-plugin's `config.json` format,
//! loaded unchanged (so existing ConfigMaps keep working), plus railvf's `railMap`.
//!
//! Validation happens while deserializing, so every error carries the line and column
//! serde_json saw and the field path serde_path_to_error tracked.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use railvf_host::{LinkLayer, PciAddr, RailMap};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Prefix of a resource whose config gives none (sriov-dp's `resourcePrefix` default is
/// `intel.com`; railvf runs on NVIDIA nodes).
pub const DEFAULT_PREFIX: &str = "nvidia.com";
/// Name of the resource advertised when there is no config file.
pub const DEFAULT_RESOURCE: &str = "dgx_h200_vfs";
/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/railvf/config.json";

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io error is part of the message (not a `source`) so it is printed once.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {}, line {line}, column {column}, field `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Path of the offending field, e.g. `resourceList[0].selectors.pfNames[1]`.
        field: String,
        message: String,
    },
}

/// A loaded, validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub resources: Vec<ResourceConfig>,
    /// railvf's addition: PF address → rail, overriding detection.
    pub rail_map: Option<RailMap>,
    /// What the file asks for that railvf skips or that may not do what was meant
    /// (sriov-dp selectors railvf does not implement, skipped resources, several
    /// resources setting `NCCL_IB_HCA`): logged as warnings at start and at each reload.
    pub warnings: Vec<String>,
    /// What the file leaves to a default worth knowing (logged at start and at each reload).
    pub notes: Vec<String>,
}

/// One advertised resource (`resourceList[]` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceConfig {
    pub prefix: String,
    pub name: String,
    pub exclude_topology: bool,
    /// A VF belongs to the resource when ANY selector matches it (sriov-dp's list form);
    /// within a selector, every non-empty field must match.
    pub selectors: Vec<Selector>,
    /// railvf's `ncclIbHca`: whether `Allocate` sets `NCCL_IB_HCA`. Given, or by default
    /// true when the config has one resource and false when it has several (kubelet keeps
    /// one value of a variable two resources of a container set).
    pub nccl_ib_hca: bool,
    /// railvf's `madDevices`: whether `Allocate` also passes each VF's `umadN` and `issmN`
    /// (sriov-dp always does; railvf only when asked, see docs/device-plugin.md).
    pub mad_devices: bool,
}

impl ResourceConfig {
    /// `prefix/name`, as kubelet and pods spell it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.prefix, self.name)
    }

    /// The link layer the resource's VFs must run: Ethernet when every selector asks
    /// for `ether` links (RoCE), InfiniBand otherwise.
    pub fn expected_link_layer(&self) -> LinkLayer {
        let all_ether = !self.selectors.is_empty()
            && self.selectors.iter().all(|s| {
                !s.link_types.is_empty() && s.link_types.iter().all(|l| *l == LinkType::Ether)
            });
        if all_ether {
            LinkLayer::Ethernet
        } else {
            LinkLayer::InfiniBand
        }
    }
}

/// sriov-dp's `netDevice` selectors (the subset railvf implements).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    pub vendors: Vec<u16>,
    pub devices: Vec<u16>,
    pub drivers: Vec<String>,
    pub pf_names: Vec<PfNamePattern>,
    pub root_devices: Vec<PciAddr>,
    pub pci_addresses: Vec<PciAddr>,
    pub link_types: Vec<LinkType>,
    pub is_rdma: bool,
    /// railvf's default resource only: VFs of PFs that have a rail.
    pub compute_only: bool,
}

/// A `linkTypes` entry, spelled as sriov-dp spells netlink encapsulation types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Infiniband,
    Ether,
}

impl LinkType {
    pub fn of(ll: LinkLayer) -> Self {
        match ll {
            LinkLayer::InfiniBand => LinkType::Infiniband,
            LinkLayer::Ethernet => LinkType::Ether,
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkType::Infiniband => "infiniband",
            LinkType::Ether => "ether",
        })
    }
}

impl TryFrom<String> for LinkType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "infiniband" => Ok(LinkType::Infiniband),
            "ether" => Ok(LinkType::Ether),
            "ib" => Err(format!("link type {s:?} is spelled \"infiniband\"")),
            "eth" | "ethernet" | "roce" => Err(format!("link type {s:?} is spelled \"ether\"")),
            _ => Err(format!(
                "unknown link type {s:?}: expected \"infiniband\" or \"ether\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for LinkType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LinkType::try_from(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A `pfNames` entry: a PF netdev name (with `*`/`?` globs) and optionally, after `#`,
/// the VF indices to take (`ibp24s0#0-3,6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PfNamePattern {
    pub raw: String,
    pub name: String,
    /// Inclusive VF index ranges; empty = every VF.
    pub vf_ranges: Vec<(u32, u32)>,
}

impl PfNamePattern {
    pub fn matches_pf(&self, netdev: &str) -> bool {
        glob_match(self.name.as_bytes(), netdev.as_bytes())
    }

    pub fn matches(&self, netdev: &str, vf_index: u32) -> bool {
        self.matches_pf(netdev)
            && (self.vf_ranges.is_empty()
                || self
                    .vf_ranges
                    .iter()
                    .any(|&(a, b)| a <= vf_index && vf_index <= b))
    }
}

impl TryFrom<String> for PfNamePattern {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let (name, ranges) = match raw.split_once('#') {
            Some((n, r)) => (n, Some(r)),
            None => (raw.as_str(), None),
        };
        if name.is_empty() {
            return Err(format!("{raw:?} has no PF name before '#'"));
        }
        if name.len() > 15 && !name.contains(['*', '?']) {
            return Err(format!(
                "{raw:?}: {name:?} is longer than a Linux interface name (15 characters)"
            ));
        }
        let mut vf_ranges = Vec::new();
        if let Some(r) = ranges {
            let bad = |why: &str| {
                format!(
                    "{raw:?}: {why}; the form is \"<pf>#<vf>,<first>-<last>\", e.g. \"ibp24s0#0-3,6\""
                )
            };
            if r.is_empty() {
                return Err(bad("nothing after '#'"));
            }
            for part in r.split(',') {
                let part = part.trim();
                let (a, b) = match part.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (part, part),
                };
                let a: u32 = a
                    .parse()
                    .map_err(|_| bad(&format!("{part:?} is not a VF index or range")))?;
                let b: u32 = b
                    .parse()
                    .map_err(|_| bad(&format!("{part:?} is not a VF index or range")))?;
                if a > b {
                    return Err(bad(&format!("range {part:?} ends before it starts")));
                }
                vf_ranges.push((a, b));
            }
        }
        Ok(PfNamePattern {
            name: name.to_string(),
            vf_ranges,
            raw,
        })
    }
}

impl<'de> Deserialize<'de> for PfNamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PfNamePattern::try_from(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Shell-style match with `*` (any run) and `?` (one character); iterative, no recursion.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// A PCI vendor or device id as sriov-dp writes it: 4 hex digits, `0x` optional.
struct HexId(u16);

impl<'de> Deserialize<'de> for HexId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(de::Error::custom(format!(
                "{s:?} is not a PCI id: expected up to 4 hex digits such as \"15b3\" or \"101e\""
            )));
        }
        Ok(HexId(
            u16::from_str_radix(t, 16).map_err(de::Error::custom)?,
        ))
    }
}

fn hex_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    Ok(Vec::<HexId>::deserialize(d)?
        .into_iter()
        .map(|h| h.0)
        .collect())
}

/// A resource name: the part after `/` of an extended resource, a Kubernetes qualified
/// name (sriov-dp's `[A-Za-z0-9_]+` is a subset).
struct ResourceName(String);

impl<'de> Deserialize<'de> for ResourceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok_inner = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        let b = s.as_bytes();
        if s.is_empty()
            || s.len() > 63
            || !b[0].is_ascii_alphanumeric()
            || !b[b.len() - 1].is_ascii_alphanumeric()
            || !b.iter().all(|&c| ok_inner(c))
        {
            return Err(de::Error::custom(format!(
                "{s:?} is not a valid resource name: use 1-63 letters, digits, '_', '-' or '.', starting and ending with a letter or digit (e.g. \"dgx_h200_vfs\")"
            )));
        }
        Ok(ResourceName(s))
    }
}

/// A resource prefix: a DNS subdomain such as `nvidia.com`.
struct ResourcePrefix(String);

impl<'de> Deserialize<'de> for ResourcePrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        };
        if s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(de::Error::custom(format!(
                "{s:?} is not a valid resource prefix: use a lower-case DNS name such as \"nvidia.com\""
            )));
        }
        if s == "kubernetes.io" || s.ends_with(".kubernetes.io") {
            return Err(de::Error::custom(format!(
                "{s:?} is reserved for Kubernetes itself; extended resources need another prefix"
            )));
        }
        Ok(ResourcePrefix(s))
    }
}

/// sriov-dp's JSON is read by Go, whose field matching ignores case: the Go field names
/// (`IsRdma`, `PfNames`, …) that generated ConfigMaps contain are accepted as aliases.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSelector {
    #[serde(default, alias = "Vendors", deserialize_with = "hex_ids")]
    vendors: Vec<u16>,
    #[serde(default, alias = "Devices", deserialize_with = "hex_ids")]
    devices: Vec<u16>,
    #[serde(default, alias = "Drivers")]
    drivers: Vec<String>,
    #[serde(default, alias = "PfNames")]
    pf_names: Vec<PfNamePattern>,
    #[serde(default, alias = "RootDevices")]
    root_devices: Vec<PciAddr>,
    #[serde(default, alias = "PciAddresses")]
    pci_addresses: Vec<PciAddr>,
    #[serde(default, alias = "LinkTypes")]
    link_types: Vec<LinkType>,
    #[serde(default, alias = "IsRdma")]
    is_rdma: bool,
    // sriov-dp selectors railvf does not implement. Kept only to warn: ignoring them
    // silently would widen the selection.
    #[serde(default, alias = "NeedVhostNet")]
    need_vhost_net: Option<serde::de::IgnoredAny>,
    #[serde(default, alias = "DdpProfiles")]
    ddp_profiles: Option<serde::de::IgnoredAny>,
    #[serde(default, alias = "VdpaType")]
    vdpa_type: Option<serde::de::IgnoredAny>,
    #[serde(default, alias = "PKeys")]
    p_keys: Option<serde::de::IgnoredAny>,
    #[serde(default, alias = "AcpiIndexes")]
    acpi_indexes: Option<serde::de::IgnoredAny>,
    #[serde(default, alias = "AuxTypes")]
    aux_types: Option<serde::de::IgnoredAny>,
}

impl RawSelector {
    fn ignored(&self) -> Vec<&'static str> {
        [
            ("needVhostNet", self.need_vhost_net.is_some()),
            ("ddpProfiles", self.ddp_profiles.is_some()),
            ("vdpaType", self.vdpa_type.is_some()),
            ("pKeys", self.p_keys.is_some()),
            ("acpiIndexes", self.acpi_indexes.is_some()),
            ("auxTypes", self.aux_types.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }

    fn into_selector(self, resource_is_rdma: bool) -> Selector {
        Selector {
            vendors: self.vendors,
            devices: self.devices,
            drivers: self.drivers,
            pf_names: self.pf_names,
            root_devices: self.root_devices,
            pci_addresses: self.pci_addresses,
            link_types: self.link_types,
            is_rdma: self.is_rdma || resource_is_rdma,
            compute_only: false,
        }
    }
}

/// `selectors`: one object (sriov-dp before v3.6) or a list of objects (later versions).
struct Selectors(Vec<RawSelector>);

impl<'de> Deserialize<'de> for Selectors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Selectors;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a selector object or a list of selector objects")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Selectors, A::Error> {
                Ok(Selectors(vec![RawSelector::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Selectors, A::Error> {
                Ok(Selectors(Vec::<RawSelector>::deserialize(
                    de::value::SeqAccessDeserializer::new(seq),
                )?))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResource {
    #[serde(alias = "ResourceName")]
    resource_name: ResourceName,
    #[serde(default, alias = "ResourcePrefix")]
    resource_prefix: Option<ResourcePrefix>,
    #[serde(default, alias = "DeviceType")]
    device_type: Option<String>,
    #[serde(default, alias = "ExcludeTopology")]
    exclude_topology: bool,
    /// sriov-dp v3.0 put `isRdma` beside the selectors; it still applies to all of them.
    #[serde(default, alias = "IsRdma")]
    is_rdma: bool,
    /// railvf's addition: set `NCCL_IB_HCA` in `Allocate` (default: only when the config
    /// has one resource).
    #[serde(default, alias = "NcclIbHca")]
    nccl_ib_hca: Option<bool>,
    /// railvf's addition: pass the VFs' management datagram devices (`umadN`, `issmN`).
    #[serde(default, alias = "MadDevices")]
    mad_devices: bool,
    #[serde(default, alias = "Selectors")]
    selectors: Option<Selectors>,
}

impl RawResource {
    /// `resourcePrefix`, or the default one.
    fn prefix(&self) -> &str {
        self.resource_prefix
            .as_ref()
            .map_or(DEFAULT_PREFIX, |p| p.0.as_str())
    }
}

/// `resourceList`, with the checks that span entries (duplicate names) done while
/// reading, so they too carry a line number.
struct ResourceList(Vec<(RawResource, Option<String>)>);

impl<'de> Deserialize<'de> for ResourceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResourceList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of resource objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ResourceList, A::Error> {
                let mut out: Vec<(RawResource, Option<String>)> = Vec::new();
                let mut names: Vec<String> = Vec::new();
                while let Some(r) = seq.next_element::<RawResource>()? {
                    let full = format!("{}/{}", r.prefix(), r.resource_name.0);
                    if let Some(first) = names.iter().position(|n| *n == full) {
                        return Err(de::Error::custom(format!(
                            "resourceList[{}] repeats resource {full:?} of resourceList[{first}]: resource names must be unique",
                            names.len()
                        )));
                    }
                    let mut skip = None;
                    if let Some(t) = &r.device_type
                        && !t.eq_ignore_ascii_case("netDevice")
                    {
                        skip = Some(format!(
                            "resource {full:?} has deviceType {t:?}: railvf advertises netDevice VFs only, so it is skipped"
                        ));
                    }
                    names.push(full);
                    out.push((r, skip));
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "resourceList is empty: list at least one resource, or remove the file to get the default resource",
                    ));
                }
                let served: Vec<(&str, &str)> = out
                    .iter()
                    .filter(|(_, skip)| skip.is_none())
                    .map(|(r, _)| (r.prefix(), r.resource_name.0.as_str()))
                    .collect();
                if let Some(why) = socket_clash(&served).or_else(|| env_clash(&served)) {
                    return Err(de::Error::custom(why));
                }
                if out.iter().all(|(_, skip)| skip.is_some()) {
                    return Err(de::Error::custom(format!(
                        "every resource in resourceList has a deviceType other than netDevice ({}): railvf would advertise nothing; give railvf's resources deviceType \"netDevice\" (or none), or remove the file to get the default resource",
                        names.join(", ")
                    )));
                }
                Ok(ResourceList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default, alias = "ResourceList")]
    resource_list: Option<ResourceList>,
    #[serde(default, alias = "RailMap")]
    rail_map: Option<RailMap>,
}

impl Config {
    /// The config used without a config file: one resource `nvidia.com/dgx_h200_vfs` of
    /// every RDMA VF of a compute PF.
    pub fn default_config() -> Self {
        Config {
            resources: vec![default_resource()],
            rail_map: None,
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Reads `path`. A missing file is an error here; `serve::load_config`
    /// decides when absence is fine.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// `Ok(None)` when `path` does not exist.
    pub fn load_if_present(path: &Path) -> Result<Option<Self>, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Self::load(path).map(Some),
        }
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // serde would also read a struct from a JSON list; the format is an object.
        if let Some(pos) = text.find(|c: char| !c.is_whitespace())
            && !text[pos..].starts_with('{')
        {
            let line = text[..pos].matches('\n').count() + 1;
            let column = pos - text[..pos].rfind('\n').map_or(0, |i| i + 1) + 1;
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                field: ".".into(),
                message: "the config must be a JSON object such as {\"resourceList\": [...]}"
                    .into(),
            });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: RawConfig = match serde_path_to_error::deserialize(&mut de) {
            Ok(raw) => raw,
            Err(e) => {
                // A syntax error stops inside a value not read yet: the tracker shows it as `?`.
                let mut field = e.path().to_string();
                while let Some(f) = field.strip_suffix(".?").or_else(|| field.strip_suffix('?')) {
                    field = f.to_string();
                }
                if field.is_empty() {
                    field = ".".into();
                }
                let inner = e.into_inner();
                let mut message = strip_position(&inner);
                if inner.is_syntax() || inner.is_eof() {
                    message = format!("JSON syntax error: {message}");
                }
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: inner.line(),
                    column: inner.column(),
                    field,
                    message,
                });
            }
        };
        // Trailing garbage after the object is also an error (serde_json checks it in end()).
        if let Err(inner) = de.end() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: inner.line(),
                column: inner.column(),
                field: ".".into(),
                message: format!("JSON syntax error: {}", strip_position(&inner)),
            });
        }
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        let resources = match raw.resource_list {
            None => vec![default_resource()],
            Some(list) => {
                let mut out = Vec::new();
                // `ncclIbHca` not given: true with one resource, false with several.
                let several = list.0.iter().filter(|(_, skip)| skip.is_none()).count() > 1;
                let mut defaulted = Vec::new();
                for (i, (r, skip)) in list.0.into_iter().enumerate() {
                    if let Some(why) = skip {
                        warnings.push(why);
                        continue;
                    }
                    let prefix = r.prefix().to_string();
                    let raw_selectors = r.selectors.map(|s| s.0).unwrap_or_default();
                    let mut selectors = Vec::new();
                    for (j, s) in raw_selectors.into_iter().enumerate() {
                        for n in s.ignored() {
                            warnings.push(format!(
                                "resourceList[{i}].selectors[{j}].{n} is a sriov-network-device-plugin selector railvf does not implement: it is ignored, so it does not narrow the selection"
                            ));
                        }
                        selectors.push(s.into_selector(r.is_rdma));
                    }
                    if selectors.is_empty() {
                        // No selectors: every VF, as sriov-dp takes every device.
                        selectors.push(Selector {
                            is_rdma: r.is_rdma,
                            ..Selector::default()
                        });
                    }
                    let rc = ResourceConfig {
                        prefix,
                        name: r.resource_name.0,
                        exclude_topology: r.exclude_topology,
                        selectors,
                        nccl_ib_hca: r.nccl_ib_hca.unwrap_or(!several),
                        mad_devices: r.mad_devices,
                    };
                    if r.nccl_ib_hca.is_none() && several {
                        defaulted.push(rc.full_name());
                    }
                    out.push(rc);
                }
                nccl_ib_hca_findings(&out, &defaulted, &mut warnings, &mut notes);
                out
            }
        };
        env_name_clashes(&resources, &mut warnings);
        Ok(Config {
            resources,
            rail_map: raw.rail_map,
            warnings,
            notes,
        })
    }

    /// Socket file name of each resource: `railvf-<name>.sock`, or
    /// `railvf-<prefix>_<name>.sock` when two resources share a name under different prefixes.
    pub fn socket_names(&self) -> Vec<String> {
        let names: Vec<(&str, &str)> = self
            .resources
            .iter()
            .map(|r| (r.prefix.as_str(), r.name.as_str()))
            .collect();
        socket_names_of(&names)
    }
}

/// [`Config::socket_names`] of `(prefix, name)` pairs.
fn socket_names_of(resources: &[(&str, &str)]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let dup: BTreeSet<&str> = resources
        .iter()
        .filter(|(_, n)| !seen.insert(*n))
        .map(|(_, n)| *n)
        .collect();
    resources
        .iter()
        .map(|(prefix, name)| {
            if dup.contains(name) {
                format!("railvf-{prefix}_{name}.sock")
            } else {
                format!("railvf-{name}.sock")
            }
        })
        .collect()
}

/// Two served resources whose sockets would have the same file name (`a/x` and `b/x` get
/// `railvf-a_x.sock` and `railvf-b_x.sock`, and a third named `a_x` `railvf-a_x.sock`):
/// the second could never serve.
fn socket_clash(served: &[(&str, &str)]) -> Option<String> {
    let sockets = socket_names_of(served);
    for (j, s) in sockets.iter().enumerate() {
        if let Some(i) = sockets[..j].iter().position(|t| t == s) {
            let full = |k: usize| format!("{}/{}", served[k].0, served[k].1);
            return Some(format!(
                "resources {:?} and {:?} would both serve on the socket {s}: rename one of them",
                full(i),
                full(j)
            ));
        }
    }
    None
}

/// Two served resources that differ only in characters variable names cannot hold
/// (`dgx-vfs` and `dgx_vfs`, `a.b` and `a_b`): they would set the same `PCIDEVICE_<R>` and
/// `PCIDEVICE_<R>_RDMA`, so a container asking for both would get one resource's devices
/// under the other's name, with nothing to tell them apart.
fn env_clash(served: &[(&str, &str)]) -> Option<String> {
    let vars: Vec<(String, String)> = served
        .iter()
        .map(|(p, n)| {
            let full = format!("{p}/{n}");
            (crate::allocate::pci_env_name(&full), full)
        })
        .collect();
    for (j, (var, full)) in vars.iter().enumerate() {
        if let Some((_, first)) = vars[..j].iter().find(|(v, _)| v == var) {
            return Some(format!(
                "resources {first:?} and {full:?} would both set the variable {var} (in variable names every character but letters, digits and '_' becomes '_'): a container asking for both would get only one of the values; rename one of them"
            ));
        }
    }
    None
}

/// What to say about `ncclIbHca`: the resources it defaulted to false for (several
/// resources, none given), said once; several resources with it true are warned about.
fn nccl_ib_hca_findings(
    resources: &[ResourceConfig],
    defaulted: &[String],
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if !defaulted.is_empty() {
        notes.push(format!(
            "the config has {} resources, so NCCL_IB_HCA is not set by {} (ncclIbHca defaults to false with several resources: kubelet keeps only one value of a variable that two resources of one container set, and NCCL would use one resource's devices only); containers get PCIDEVICE_<R>_RDMA of each resource to compose NCCL_IB_HCA from; set \"ncclIbHca\": true on a resource to have it set NCCL_IB_HCA",
            resources.len(),
            defaulted.join(", ")
        ));
    }
    let setting: Vec<String> = resources
        .iter()
        .filter(|r| r.nccl_ib_hca)
        .map(ResourceConfig::full_name)
        .collect();
    if setting.len() > 1 {
        warnings.push(format!(
            "ncclIbHca is true for {}: a container asking for more than one of them gets the NCCL_IB_HCA of only one (kubelet keeps one value of a variable several resources set, chosen at random), and NCCL uses that resource's devices only; set ncclIbHca on one resource only, or compose NCCL_IB_HCA in the container from PCIDEVICE_<R>_RDMA",
            setting.join(", ")
        ));
    }
}

/// Two resources one of whose variables has the name of the other's (`x` and `x_rdma`:
/// `PCIDEVICE_<R>_RDMA` of the first is `PCIDEVICE_<R>` of the second): a container
/// asking for both gets only one of the values. (Resources whose variables are all the
/// same are refused, by [`env_clash`].)
fn env_name_clashes(resources: &[ResourceConfig], warnings: &mut Vec<String>) {
    let mut by_name: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in resources {
        let full = r.full_name();
        let pci = crate::allocate::pci_env_name(&full);
        let rdma = crate::allocate::rdma_env_name(&full);
        for v in [pci, rdma] {
            by_name.entry(v).or_default().push(full.clone());
        }
    }
    for (var, names) in by_name {
        if names.len() > 1 {
            warnings.push(format!(
                "resources {} each set the variable {var}: a container asking for more than one of them gets only one of the values; rename one of the resources",
                names.join(", ")
            ));
        }
    }
}

fn default_resource() -> ResourceConfig {
    ResourceConfig {
        prefix: DEFAULT_PREFIX.into(),
        name: DEFAULT_RESOURCE.into(),
        exclude_topology: false,
        nccl_ib_hca: true,
        mad_devices: false,
        selectors: vec![Selector {
            is_rdma: true,
            compute_only: true,
            ..Selector::default()
        }],
    }
}

/// serde_json's message without its trailing " at line L column C" (reported separately).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/railvf/config.json"))
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"mlx-*", b"mlx-pf0"));
        assert!(glob_match(b"ibp*s0", b"ibp24s0"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"ib?24s0", b"ibp24s0"));
        assert!(!glob_match(b"mlx-*", b"ibp24s0"));
        assert!(!glob_match(b"ibp24s0", b"ibp24s01"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
    }

    #[test]
    fn pf_name_ranges() {
        let p = PfNamePattern::try_from("ibp24s0#0,2-3".to_string()).unwrap();
        assert!(p.matches("ibp24s0", 0));
        assert!(!p.matches("ibp24s0", 1));
        assert!(p.matches("ibp24s0", 3));
        assert!(!p.matches("ibp24s0", 4));
        assert!(!p.matches("ibp64s0", 0));
        let all = PfNamePattern::try_from("ibp*".to_string()).unwrap();
        assert!(all.matches("ibp220s0", 7));
        for bad in ["#0-3", "ibp24s0#", "ibp24s0#3-1", "ibp24s0#a", "ibp24s0#1-"] {
            assert!(PfNamePattern::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_as_object_or_list_and_go_casing() {
        let c = parse(
            r#"{"resourceList":[
                {"resourceName":"a","selectors":{"vendors":["15b3"],"IsRdma":true}},
                {"resourceName":"b","resourcePrefix":"example.com","isRdma":true,
                 "selectors":[{"devices":["0x101e"]},{"pfNames":["ibp24s0#0-1"],"linkTypes":["ether"]}]}
            ],"someFutureKey":1}"#,
        )
        .unwrap();
        assert_eq!(c.resources.len(), 2);
        assert_eq!(c.resources[0].full_name(), "nvidia.com/a");
        assert!(c.resources[0].selectors[0].is_rdma);
        assert_eq!(c.resources[1].full_name(), "example.com/b");
        assert_eq!(c.resources[1].selectors.len(), 2);
        assert!(c.resources[1].selectors.iter().all(|s| s.is_rdma));
        assert_eq!(c.resources[1].selectors[0].devices, vec![0x101e]);
    }

    #[test]
    fn no_resource_list_is_the_default_resource_with_a_rail_map() {
        let c = parse(r#"{"railMap":{"0000:18:00.0":0,"0000:40:00.0":1}}"#).unwrap();
        assert_eq!(c.resources, Config::default_config().resources);
        assert_eq!(c.rail_map.unwrap().0.len(), 2);
    }

    #[test]
    fn unimplemented_selectors_are_reported() {
        let c =
            parse(r#"{"resourceList":[{"resourceName":"a","selectors":{"needVhostNet":true}}]}"#)
                .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("needVhostNet"), "{:?}", c.warnings);
    }

    #[test]
    fn other_device_types_are_skipped() {
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a"},{"resourceName":"b","deviceType":"accelerator"}]}"#,
        )
        .unwrap();
        assert_eq!(c.resources.len(), 1);
        assert!(c.warnings[0].contains("accelerator"));
        // All of them: nothing to advertise is an error, as an empty resourceList is.
        let e = parse(r#"{"resourceList":[{"resourceName":"b","deviceType":"accelerator"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `resourceList`"), "{e}");
        assert!(
            e.contains("would advertise nothing") && e.contains("nvidia.com/b"),
            "{e}"
        );
    }

    #[test]
    fn nccl_ib_hca_defaults_to_one_resource_only() {
        // One resource (or the default one): set.
        assert!(Config::default_config().resources[0].nccl_ib_hca);
        let c = parse(r#"{"resourceList":[{"resourceName":"a"}]}"#).unwrap();
        assert!(c.resources[0].nccl_ib_hca);
        assert!(c.notes.is_empty() && c.warnings.is_empty());
        let c = parse(r#"{"resourceList":[{"resourceName":"a","ncclIbHca":false}]}"#).unwrap();
        assert!(!c.resources[0].nccl_ib_hca);
        // Several: not set unless given, said once naming the defaulted ones.
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a"},{"resourceName":"b","NcclIbHca":true},{"resourceName":"c"}]}"#,
        )
        .unwrap();
        let set: Vec<bool> = c.resources.iter().map(|r| r.nccl_ib_hca).collect();
        assert_eq!(set, [false, true, false]);
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(
            c.notes[0].contains("not set by nvidia.com/a, nvidia.com/c (")
                && c.notes[0].contains("PCIDEVICE_<R>_RDMA"),
            "{:?}",
            c.notes
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // A skipped resource does not count.
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a"},{"resourceName":"b","deviceType":"accelerator"}]}"#,
        )
        .unwrap();
        assert!(c.resources[0].nccl_ib_hca && c.notes.is_empty());
    }

    #[test]
    fn mad_devices_is_off_unless_given_as_a_bool() {
        assert!(!Config::default_config().resources[0].mad_devices);
        let c = parse(r#"{"resourceList":[{"resourceName":"a"}]}"#).unwrap();
        assert!(!c.resources[0].mad_devices);
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a","madDevices":true},{"resourceName":"b","MadDevices":true}]}"#,
        )
        .unwrap();
        assert!(c.resources.iter().all(|r| r.mad_devices));
        let e = parse(r#"{"resourceList":[{"resourceName":"a","madDevices":"yes"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("madDevices"), "{e}");
    }

    #[test]
    fn several_resources_setting_nccl_ib_hca_are_warned_about() {
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a","ncclIbHca":true},{"resourceName":"b","ncclIbHca":true}]}"#,
        )
        .unwrap();
        assert!(c.resources.iter().all(|r| r.nccl_ib_hca));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("ncclIbHca is true for nvidia.com/a, nvidia.com/b")
                && c.warnings[0].contains("only one"),
            "{:?}",
            c.warnings
        );
        let e = parse(r#"{"resourceList":[{"resourceName":"a","ncclIbHca":"yes"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("resourceList[0].ncclIbHca") && e.contains("boolean"),
            "{e}"
        );
    }

    #[test]
    fn resources_whose_variables_share_a_name_are_warned_about() {
        let c = parse(
            r#"{"resourceList":[{"resourceName":"x","ncclIbHca":false},{"resourceName":"x_rdma","ncclIbHca":false},{"resourceName":"a-b","ncclIbHca":false},{"resourceName":"a_b_rdma","ncclIbHca":false}]}"#,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let all = c.warnings.join("\n");
        for w in [
            "nvidia.com/x, nvidia.com/x_rdma each set the variable PCIDEVICE_NVIDIA_COM_X_RDMA",
            "nvidia.com/a-b, nvidia.com/a_b_rdma each set the variable PCIDEVICE_NVIDIA_COM_A_B_RDMA",
        ] {
            assert!(all.contains(w), "{all}");
        }
    }

    /// Resources that differ only in characters a variable name cannot hold would set the
    /// same variables: refused, naming both and the variable.
    #[test]
    fn resources_whose_variables_are_the_same_are_refused() {
        for (a, b, var) in [
            (
                r#""resourceName":"dgx-vfs""#,
                r#""resourceName":"dgx_vfs""#,
                "PCIDEVICE_NVIDIA_COM_DGX_VFS",
            ),
            (
                r#""resourceName":"a.b""#,
                r#""resourceName":"a_b""#,
                "PCIDEVICE_NVIDIA_COM_A_B",
            ),
            (
                r#""resourceName":"x","resourcePrefix":"my-corp.com""#,
                r#""resourceName":"x","resourcePrefix":"my.corp.com""#,
                "PCIDEVICE_MY_CORP_COM_X",
            ),
        ] {
            let e = parse(&format!(r#"{{"resourceList":[{{{a}}},{{{b}}}]}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("would both set the variable {var} "))
                    && e.contains("rename one of them"),
                "{e}"
            );
        }
        // A resource skipped for its deviceType sets nothing.
        parse(
            r#"{"resourceList":[{"resourceName":"dgx-vfs"},{"resourceName":"dgx_vfs","deviceType":"accelerator"}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn socket_names_disambiguate_shared_names() {
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a"},{"resourceName":"b"},{"resourceName":"b","resourcePrefix":"example.com"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.socket_names(),
            vec![
                "railvf-a.sock",
                "railvf-nvidia.com_b.sock",
                "railvf-example.com_b.sock"
            ]
        );
    }

    #[test]
    fn resources_whose_sockets_would_clash_are_refused() {
        let e = parse(
            r#"{"resourceList":[{"resourceName":"x","resourcePrefix":"a"},{"resourceName":"x","resourcePrefix":"b"},{"resourceName":"a_x","resourcePrefix":"nvidia.com"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "\"a/x\" and \"nvidia.com/a_x\" would both serve on the socket railvf-a_x.sock"
            ),
            "{e}"
        );
    }

    #[test]
    fn link_layer_expectation_follows_link_types() {
        let c = parse(
            r#"{"resourceList":[{"resourceName":"a","selectors":{"linkTypes":["ether"]}},{"resourceName":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(c.resources[0].expected_link_layer(), LinkLayer::Ethernet);
        assert_eq!(c.resources[1].expected_link_layer(), LinkLayer::InfiniBand);
    }
}
