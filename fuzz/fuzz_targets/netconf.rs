//! The CNI network configuration parser: namespace users write it (NetworkAttachmentDefinitions).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Any input gives a config or an error; never a panic.
    let _ = railvf_cni::netconf::NetConf::parse(data);
});
