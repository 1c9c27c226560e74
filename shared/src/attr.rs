//! Parsers for sysfs attribute values, in exactly the formats the kernel prints
//! (`drivers/infiniband/core/sysfs.c`, `drivers/pci/pci-sysfs.c`, `drivers/pci/iov.c`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that does not have the kernel's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, found {found:?}")]
pub struct ParseError {
    pub expected: &'static str,
    pub found: String,
}

fn bad(expected: &'static str, found: &str) -> ParseError {
    ParseError {
        expected,
        found: found.chars().take(80).collect(),
    }
}

/// `0x15b3`-style hex with a mandatory `0x` prefix (PCI `vendor`, `device`, `class`).
pub fn parse_prefixed_hex(s: &str) -> Result<u32, ParseError> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .ok_or_else(|| bad("a hex number with 0x prefix", s))?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("a hex number with 0x prefix", s));
    }
    u32::from_str_radix(digits, 16).map_err(|_| bad("a hex number with 0x prefix", s))
}

/// `sriov_vf_device` is printed with `%x`: hex without prefix.
pub fn parse_bare_hex(s: &str) -> Result<u32, ParseError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    if t.is_empty() || t.len() > 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("a hex number", s));
    }
    u32::from_str_radix(t, 16).map_err(|_| bad("a hex number", s))
}

/// A decimal unsigned value (`sriov_numvfs`, `ifindex`, `mtu`).
pub fn parse_u32(s: &str) -> Result<u32, ParseError> {
    s.trim().parse().map_err(|_| bad("a decimal number", s))
}

/// `numa_node`: a node number, or `-1` when the firmware gives none (→ `None`).
pub fn parse_numa_node(s: &str) -> Result<Option<u32>, ParseError> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| bad("a NUMA node number or -1", s))?;
    match v {
        -1 => Ok(None),
        0..=1023 => Ok(Some(v as u32)),
        _ => Err(bad("a NUMA node number or -1", s)),
    }
}

/// A character device's numbers as sysfs prints them in `dev` (`%u:%u`), e.g. `231:192`.
pub fn parse_dev_numbers(s: &str) -> Result<(u32, u32), ParseError> {
    const WHAT: &str = "major:minor like 231:192";
    let (major, minor) = s.trim().split_once(':').ok_or_else(|| bad(WHAT, s))?;
    let num = |t: &str| -> Result<u32, ParseError> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(WHAT, s));
        }
        t.parse().map_err(|_| bad(WHAT, s))
    };
    Ok((num(major)?, num(minor)?))
}

/// A LID as sysfs prints it (`0x%x`), e.g. `0x1a`.
pub fn parse_lid(s: &str) -> Result<u16, ParseError> {
    let v = parse_prefixed_hex(s).map_err(|_| bad("a LID like 0x1a", s))?;
    u16::try_from(v).map_err(|_| bad("a 16-bit LID like 0x1a", s))
}

/// A 64-bit GUID. Reads both the RDMA sysfs form (`a088:c203:00e3:142a`) and the
/// 8-byte form used by `ip link … node_guid` and MLNX_OFED's `sriov/<n>/node`
/// (`11:22:33:44:77:66:77:90`); prints the RDMA sysfs form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub u64);

impl Guid {
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
    pub fn is_all_ones(&self) -> bool {
        self.0 == u64::MAX
    }
    /// Usable on a fabric: neither all-zero nor all-ones.
    pub fn is_assigned(&self) -> bool {
        !self.is_zero() && !self.is_all_ones()
    }
    /// `11:22:33:44:55:66:77:88`, the form netlink tools and MLNX_OFED sysfs take.
    pub fn to_colon_bytes(&self) -> String {
        let b = self.0.to_be_bytes();
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl FromStr for Guid {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "a GUID like a088:c203:00e3:142a or 11:22:33:44:55:66:77:88";
        let t = s.trim();
        let parts: Vec<&str> = t.split(':').collect();
        let width = match parts.len() {
            4 => 4,
            8 => 2,
            _ => return Err(bad(WHAT, s)),
        };
        let mut v: u64 = 0;
        for p in parts {
            if p.len() != width || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(WHAT, s));
            }
            let x = u64::from_str_radix(p, 16).map_err(|_| bad(WHAT, s))?;
            v = (v << (width * 4)) | x;
        }
        Ok(Guid(v))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:04x}:{:04x}:{:04x}:{:04x}",
            (v >> 48) & 0xffff,
            (v >> 32) & 0xffff,
            (v >> 16) & 0xffff,
            v & 0xffff
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A 128-bit GID as sysfs prints it (`fe80:0000:0000:0000:a088:c203:00e3:142a`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Gid(pub u128);

impl Gid {
    /// The interface id: the low 64 bits, the port GUID for a link-local GID.
    pub fn interface_id(&self) -> Guid {
        Guid(self.0 as u64)
    }
}

impl FromStr for Gid {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "a GID of 8 groups of 4 hex digits";
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 8 {
            return Err(bad(WHAT, s));
        }
        let mut v: u128 = 0;
        for p in parts {
            if p.len() != 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(WHAT, s));
            }
            v = (v << 16) | u128::from(u16::from_str_radix(p, 16).map_err(|_| bad(WHAT, s))?);
        }
        Ok(Gid(v))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<String> = (0..8)
            .rev()
            .map(|i| format!("{:04x}", (self.0 >> (i * 16)) & 0xffff))
            .collect();
        f.write_str(&groups.join(":"))
    }
}

/// `ports/N/state`: `%d: %s`, e.g. `4: ACTIVE`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct PortState {
    pub code: u8,
    pub name: String,
}

impl PortState {
    pub const ACTIVE: u8 = 4;
    pub fn is_active(&self) -> bool {
        self.code == Self::ACTIVE
    }

    /// A state given as its number (`enum ib_port_state`, as RDMA netlink reports it),
    /// named as sysfs names it.
    pub fn from_code(code: u8) -> Self {
        let name = match code {
            0 => "NOP",
            1 => "DOWN",
            2 => "INIT",
            3 => "ARMED",
            4 => "ACTIVE",
            5 => "ACTIVE_DEFER",
            _ => "UNKNOWN",
        };
        PortState {
            code,
            name: name.to_string(),
        }
    }
}

/// `ports/N/phys_state`: `%u: %s`, e.g. `5: LinkUp`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct PhysState {
    pub code: u8,
    pub name: String,
}

impl PhysState {
    pub const LINK_UP: u8 = 5;
    pub fn is_link_up(&self) -> bool {
        self.code == Self::LINK_UP
    }

    /// A physical state given as its number (`enum ib_port_phys_state`), named as sysfs
    /// (`ib_port_phys_state_str`) names it.
    pub fn from_code(code: u8) -> Self {
        let name = match code {
            1 => "Sleep",
            2 => "Polling",
            3 => "Disabled",
            4 => "PortConfigurationTraining",
            5 => "LinkUp",
            6 => "LinkErrorRecovery",
            7 => "Phy Test",
            _ => "<unknown>",
        };
        PhysState {
            code,
            name: name.to_string(),
        }
    }
}

fn parse_code_name(s: &str, what: &'static str) -> Result<(u8, String), ParseError> {
    let t = s.trim();
    let (code, name) = t.split_once(": ").ok_or_else(|| bad(what, s))?;
    let code: u8 = code.parse().map_err(|_| bad(what, s))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad(what, s));
    }
    Ok((code, name.to_string()))
}

impl FromStr for PortState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (code, name) = parse_code_name(s, "a port state like '4: ACTIVE'")?;
        Ok(Self { code, name })
    }
}

impl FromStr for PhysState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (code, name) = parse_code_name(s, "a physical state like '5: LinkUp'")?;
        Ok(Self { code, name })
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.name)
    }
}

impl fmt::Display for PhysState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.name)
    }
}

/// `ports/N/link_layer`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub enum LinkLayer {
    InfiniBand,
    Ethernet,
}

impl FromStr for LinkLayer {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s.trim() {
            "InfiniBand" => Ok(Self::InfiniBand),
            "Ethernet" => Ok(Self::Ethernet),
            _ => Err(bad("InfiniBand or Ethernet", s)),
        }
    }
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InfiniBand => "InfiniBand",
            Self::Ethernet => "Ethernet",
        })
    }
}

/// `ports/N/rate`: `%d%s Gb/sec (%dX%s)`, e.g. `400 Gb/sec (4X NDR)`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Rate {
    /// Gb/s, with the fractional part the kernel prints for old SDR/QDR rates (`2.5`).
    pub gbps: String,
    pub width: u8,
    /// `NDR`, `HDR`, … ; empty when the kernel prints none.
    pub speed: String,
}

impl FromStr for Rate {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "a rate like '400 Gb/sec (4X NDR)'";
        let t = s.trim();
        let (gbps, rest) = t.split_once(" Gb/sec (").ok_or_else(|| bad(WHAT, s))?;
        let inner = rest.strip_suffix(')').ok_or_else(|| bad(WHAT, s))?;
        let (width, speed) = inner.split_once('X').ok_or_else(|| bad(WHAT, s))?;
        if gbps.is_empty() || !gbps.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad(WHAT, s));
        }
        let width: u8 = width.parse().map_err(|_| bad(WHAT, s))?;
        Ok(Rate {
            gbps: gbps.to_string(),
            width,
            speed: speed.trim().to_string(),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.speed.is_empty() {
            write!(f, "{} Gb/sec ({}X)", self.gbps, self.width)
        } else {
            write!(f, "{} Gb/sec ({}X {})", self.gbps, self.width, self.speed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers (RDMA netlink) get the names sysfs prints, so a verdict reads the same
    /// whichever way the port was read.
    #[test]
    fn states_from_numbers_read_as_sysfs_prints_them() {
        for (code, text) in [(1, "1: DOWN"), (4, "4: ACTIVE"), (5, "5: ACTIVE_DEFER")] {
            let st = PortState::from_code(code);
            assert_eq!(st.to_string(), text);
            assert_eq!(st, text.parse().unwrap());
        }
        assert_eq!(PortState::from_code(9).to_string(), "9: UNKNOWN");
        for (code, text) in [(2, "2: Polling"), (5, "5: LinkUp"), (7, "7: Phy Test")] {
            let st = PhysState::from_code(code);
            assert_eq!(st.to_string(), text);
            assert_eq!(st, text.parse().unwrap());
        }
        assert!(PortState::from_code(4).is_active() && PhysState::from_code(5).is_link_up());
    }

    #[test]
    fn kernel_formats() {
        let st: PortState = "4: ACTIVE\n".parse().unwrap();
        assert!(st.is_active());
        assert_eq!(st.to_string(), "4: ACTIVE");
        let down: PortState = "1: DOWN".parse().unwrap();
        assert!(!down.is_active());
        let ps: PhysState = "5: LinkUp".parse().unwrap();
        assert!(ps.is_link_up());
        assert!(!"3: Disabled".parse::<PhysState>().unwrap().is_link_up());
        assert_eq!(parse_dev_numbers("231:192\n").unwrap(), (231, 192));
        assert_eq!(parse_dev_numbers("10:58").unwrap(), (10, 58));
        for bad in [
            "",
            "231",
            "231:",
            ":192",
            "231:-1",
            "+231:192",
            "231:192:1",
            "0x1:2",
        ] {
            assert!(parse_dev_numbers(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_lid("0x1a\n").unwrap(), 0x1a);
        assert_eq!(parse_lid("0x0").unwrap(), 0);
        assert_eq!(parse_lid("0xffff").unwrap(), 0xffff);
        assert_eq!(
            "InfiniBand".parse::<LinkLayer>().unwrap(),
            LinkLayer::InfiniBand
        );
        assert_eq!(
            "Ethernet\n".parse::<LinkLayer>().unwrap(),
            LinkLayer::Ethernet
        );
        let g: Guid = "a088:c203:00e3:142a".parse().unwrap();
        assert_eq!(g.0, 0xa088c20300e3142a);
        assert_eq!(g.to_string(), "a088:c203:00e3:142a");
        assert_eq!(g.to_colon_bytes(), "a0:88:c2:03:00:e3:14:2a");
        let r: Rate = "400 Gb/sec (4X NDR)".parse().unwrap();
        assert_eq!(
            (r.gbps.as_str(), r.width, r.speed.as_str()),
            ("400", 4, "NDR")
        );
        assert_eq!(r.to_string(), "400 Gb/sec (4X NDR)");
        let sdr: Rate = "2.5 Gb/sec (1X SDR)".parse().unwrap();
        assert_eq!(sdr.gbps, "2.5");
        assert_eq!(parse_prefixed_hex("0x15b3\n").unwrap(), 0x15b3);
        assert_eq!(parse_prefixed_hex("0x020700").unwrap(), 0x020700);
        assert_eq!(parse_bare_hex("101e").unwrap(), 0x101e);
        assert_eq!(parse_numa_node("-1").unwrap(), None);
        assert_eq!(parse_numa_node("1\n").unwrap(), Some(1));
        let gid: Gid = "fe80:0000:0000:0000:a088:c203:00e3:142a".parse().unwrap();
        assert_eq!(gid.interface_id(), g);
        assert_eq!(gid.to_string(), "fe80:0000:0000:0000:a088:c203:00e3:142a");
    }

    #[test]
    fn guid_forms_and_special_values() {
        let a: Guid = "11:22:33:44:77:66:77:90".parse().unwrap();
        assert_eq!(a.0, 0x1122334477667790);
        assert!(a.is_assigned());
        assert!(!"0000:0000:0000:0000".parse::<Guid>().unwrap().is_assigned());
        assert!(!"ffff:ffff:ffff:ffff".parse::<Guid>().unwrap().is_assigned());
        for bad in [
            "",
            "a088:c203:00e3",
            "a088:c203:00e3:142g",
            "1:2:3:4:5:6:7:8",
            "a088c20300e3142a",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_values_name_what_was_expected() {
        let e = "ACTIVE".parse::<PortState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected a port state like '4: ACTIVE', found \"ACTIVE\""
        );
        assert!(parse_lid("26").is_err());
        assert!(parse_lid("0x10000").is_err());
        assert!(parse_prefixed_hex("15b3").is_err());
        assert!(parse_numa_node("x").is_err());
        assert!("Ether".parse::<LinkLayer>().is_err());
        assert!("400 Gb/sec".parse::<Rate>().is_err());
    }
}
