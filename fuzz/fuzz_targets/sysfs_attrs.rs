//! The sysfs attribute parsers: what a host (or a broken driver) prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use railvf_host::attr;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = attr::parse_prefixed_hex(s);
    let _ = attr::parse_bare_hex(s);
    let _ = attr::parse_u32(s);
    let _ = attr::parse_numa_node(s);
    let _ = attr::parse_lid(s);
    let _ = s.parse::<attr::Guid>().map(|g| {
        // What we print must read back as the same value.
        assert_eq!(g.to_string().parse::<attr::Guid>().ok(), Some(g));
    });
    let _ = s.parse::<attr::Gid>();
    let _ = s.parse::<attr::PortState>();
    let _ = s.parse::<attr::PhysState>();
    let _ = s.parse::<attr::LinkLayer>();
    let _ = s.parse::<attr::Rate>();
    if let Ok(a) = s.parse::<railvf_host::PciAddr>() {
        assert_eq!(a.to_string().parse::<railvf_host::PciAddr>().ok(), Some(a));
        assert!(!a.to_string().contains('/') && !a.to_string().contains(".."));
    }
});
