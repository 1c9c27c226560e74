//! The device plugin's config parser (sriov-network-device-plugin format, from a ConfigMap).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = railvf_device_plugin::config::Config::parse(text, std::path::Path::new("fuzz.json"));
});
