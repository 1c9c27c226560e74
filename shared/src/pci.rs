//! PCI addresses. Every address that reaches a path goes through [`PciAddr`], so a
//! string from a CNI config or a gRPC request can never name anything but a PCI function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI function address in the kernel's canonical form `dddd:bb:dd.f` (lower-case hex).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid PCI address {value:?}: expected the form dddd:bb:dd.f in hex (e.g. 0000:18:00.1), {why}"
)]
pub struct PciAddrError {
    /// The rejected input, as given (control characters escaped by `{:?}`).
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl PciAddr {
    /// Builds an address from its parts; `device` must be < 32 and `function` < 8.
    pub fn new(domain: u16, bus: u8, device: u8, function: u8) -> Result<Self, PciAddrError> {
        let addr = Self {
            domain,
            bus,
            device,
            function,
        };
        if device > 0x1f {
            return Err(PciAddrError {
                value: addr.to_string(),
                why: "device number above 0x1f",
            });
        }
        if function > 7 {
            return Err(PciAddrError {
                value: addr.to_string(),
                why: "function number above 7",
            });
        }
        Ok(addr)
    }

    pub fn domain(&self) -> u16 {
        self.domain
    }
    pub fn bus(&self) -> u8 {
        self.bus
    }
    pub fn device(&self) -> u8 {
        self.device
    }
    pub fn function(&self) -> u8 {
        self.function
    }

    /// The address `n` routing IDs after this one, as SR-IOV numbers VFs
    /// (`first VF = PF + offset + index * stride`); `None` past the end of the bus space.
    pub fn offset_by(&self, n: u32) -> Option<Self> {
        let rid = ((self.bus as u32) << 8) | ((self.device as u32) << 3) | self.function as u32;
        let rid = rid.checked_add(n)?;
        if rid > 0xffff {
            return None;
        }
        Some(Self {
            domain: self.domain,
            bus: (rid >> 8) as u8,
            device: ((rid >> 3) & 0x1f) as u8,
            function: (rid & 7) as u8,
        })
    }
}

fn hex_field(s: &str, digits: usize) -> Option<u32> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for PciAddr {
    type Err = PciAddrError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |why| PciAddrError {
            value: value.chars().take(64).collect(),
            why,
        };
        if value.len() != 12 {
            return Err(err("wrong length"));
        }
        // Byte offsets below: anything but ASCII would split a character (and panic).
        if !value.is_ascii() {
            return Err(err("not ASCII"));
        }
        let (domain, rest) = value.split_at(4);
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| err("missing ':' after the domain"))?;
        let (bus, rest) = rest.split_at(2);
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| err("missing ':' after the bus"))?;
        let (device, rest) = rest.split_at(2);
        let function = rest
            .strip_prefix('.')
            .ok_or_else(|| err("missing '.' before the function"))?;
        let domain = hex_field(domain, 4).ok_or_else(|| err("domain is not 4 hex digits"))?;
        let bus = hex_field(bus, 2).ok_or_else(|| err("bus is not 2 hex digits"))?;
        let device = hex_field(device, 2).ok_or_else(|| err("device is not 2 hex digits"))?;
        let function = hex_field(function, 1).ok_or_else(|| err("function is not 1 hex digit"))?;
        PciAddr::new(domain as u16, bus as u8, device as u8, function as u8).map_err(|e| err(e.why))
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciAddr({self})")
    }
}

impl Serialize for PciAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_form() {
        let a: PciAddr = "0000:18:00.1".parse().unwrap();
        assert_eq!(
            (a.domain(), a.bus(), a.device(), a.function()),
            (0, 0x18, 0, 1)
        );
        assert_eq!(a.to_string(), "0000:18:00.1");
        let b: PciAddr = "0001:DC:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0001:dc:1f.7");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "18:00.1",
            "0000:18:00.1 ",
            "../18:00.1xx",
            "0000:18:00/1",
            "0000/18:00.1",
            "0000:18:..:1",
            "0000:18:00.8",
            "0000:18:20.0",
            "0000:1g:00.0",
            "0000:18:00.1\0",
            "+000:18:00.1",
            "0000:18:0 .1",
            "0000:18:00.1/../../x",
            // Found by the sysfs_attrs fuzz target: 12 bytes, multi-byte characters across
            // the split points (used to panic: "byte index 4 is not a char boundary").
            "882\u{7f8}\u{7f8}\u{5e2}jM:",
            "000\u{e9}18:00.1",
            "0000:1\u{e9}00.1",
        ] {
            let e = bad.parse::<PciAddr>().unwrap_err();
            assert!(e.to_string().contains("dddd:bb:dd.f"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sriov_offsets_cross_device_numbers() {
        let pf: PciAddr = "0000:18:00.0".parse().unwrap();
        assert_eq!(pf.offset_by(1).unwrap().to_string(), "0000:18:00.1");
        assert_eq!(pf.offset_by(8).unwrap().to_string(), "0000:18:01.0");
        let last: PciAddr = "0000:ff:1f.7".parse().unwrap();
        assert!(last.offset_by(1).is_none());
    }

    #[test]
    fn serde_round_trip_validates() {
        let a: PciAddr = serde_json::from_str("\"0000:9a:00.3\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"0000:9a:00.3\"");
        assert!(serde_json::from_str::<PciAddr>("\"../../etc\"").is_err());
    }
}
