//! PCI function addresses (`dddd:bb:dd.f`) as the sim uses them.
//!
//! The sim has its own small address type instead of depending on `railvf-host`, so that
//! the host model's own tests can use the sim without a dependency cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SimError;

/// A PCI function address; displays in the kernel's canonical form `0000:18:00.1`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// Builds an address; `None` unless `device < 32` and `function < 8`.
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 0x1f || function > 7 {
            return None;
        }
        Some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// PCI domain (segment).
    pub fn domain(&self) -> u16 {
        self.domain
    }
    /// Bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }
    /// Device (slot) number, 0..32.
    pub fn device(&self) -> u8 {
        self.device
    }
    /// Function number, 0..8.
    pub fn function(&self) -> u8 {
        self.function
    }

    /// The 16-bit routing ID (`bus << 8 | device << 3 | function`).
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }

    /// The address `n` routing IDs after this one in the same domain, as SR-IOV numbers
    /// VFs (`VF i = PF + offset + i * stride`); `None` past the end of the bus space.
    pub fn offset_by(&self, n: u32) -> Option<Self> {
        let rid = u32::from(self.rid()).checked_add(n)?;
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

    /// Parses `dddd:bb:dd.f` (hex, any case); the error names the input.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        s.parse()
    }
}

fn hex(s: &str, digits: usize) -> Option<u32> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = || SimError::BadAddress(s.chars().take(64).collect());
        let mut parts = s.splitn(3, ':');
        let (Some(d), Some(b), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let (Some(d), Some(b), Some(dev), Some(func)) =
            (hex(d, 4), hex(b, 2), hex(dev, 2), hex(func, 1))
        else {
            return Err(bad());
        };
        Bdf::new(d as u16, b as u8, dev as u8, func as u8).ok_or_else(bad)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bdf({self})")
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bdf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses anything that displays as a PCI address (a [`Bdf`], a `&str`, or another crate's
/// address type) — the sim's methods take `impl Display` so every crate can pass its own type.
pub(crate) fn to_bdf(addr: &dyn fmt::Display) -> Result<Bdf, SimError> {
    addr.to_string().trim().parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_roundtrip() {
        let b: Bdf = "0000:18:00.1".parse().unwrap();
        assert_eq!(
            (b.domain(), b.bus(), b.device(), b.function()),
            (0, 0x18, 0, 1)
        );
        assert_eq!(b.to_string(), "0000:18:00.1");
        assert_eq!(
            "0000:AA:1F.7".parse::<Bdf>().unwrap().to_string(),
            "0000:aa:1f.7"
        );
        for bad in [
            "",
            "0000:18:00",
            "0000:18:20.0",
            "0000:18:00.8",
            "000:18:00.0",
            "0000:18:00.1x",
            "../../etc",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sriov_offsets_spill_into_next_device_and_bus() {
        let pf: Bdf = "0000:18:00.0".parse().unwrap();
        assert_eq!(pf.offset_by(1).unwrap().to_string(), "0000:18:00.1");
        assert_eq!(pf.offset_by(8).unwrap().to_string(), "0000:18:01.0");
        assert_eq!(pf.offset_by(256).unwrap().to_string(), "0000:19:00.0");
        assert!(
            "0000:ff:1f.7"
                .parse::<Bdf>()
                .unwrap()
                .offset_by(1)
                .is_none()
        );
    }
}
