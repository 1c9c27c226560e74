//! How a built binary is linked, read from its ELF headers: the tests and the benchmark
//! check that the CNI binary as it ships is static and not position-independent.

use std::io;
use std::path::Path;

/// What the ELF headers of a 64-bit little-endian executable say about its linking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linkage {
    /// Has a `PT_INTERP` program header: started through a dynamic loader.
    pub dynamic: bool,
    /// `e_type` is `ET_DYN`: position-independent, relocated at every start.
    pub pie: bool,
}

impl Linkage {
    /// "static" or "dynamic", for reports.
    pub fn name(&self) -> &'static str {
        if self.dynamic { "dynamic" } else { "static" }
    }
}

/// Reads the ELF header and program headers of `bin`.
pub fn linkage(bin: &Path) -> io::Result<Linkage> {
    let b = std::fs::read(bin)?;
    let bad = |why: &str| io::Error::other(format!("{}: {why}", bin.display()));
    if b.get(..4) != Some(b"\x7fELF") {
        return Err(bad("not an ELF file"));
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let phoff = b
        .get(0x20..0x28)
        .map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")) as usize);
    let (Some(e_type), Some(phoff), Some(phentsize), Some(phnum)) =
        (u16_at(0x10), phoff, u16_at(0x36), u16_at(0x38))
    else {
        return Err(bad("truncated ELF header"));
    };
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    let mut dynamic = false;
    for i in 0..phnum as usize {
        match u32_at(phoff + i * phentsize as usize) {
            Some(t) => dynamic |= t == PT_INTERP,
            None => return Err(bad("truncated program headers")),
        }
    }
    Ok(Linkage {
        dynamic,
        pie: e_type == ET_DYN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_and_a_non_elf_file() {
        // cargo's test binaries are dynamically linked PIEs on a default toolchain.
        let me = linkage(&std::env::current_exe().unwrap()).unwrap();
        assert!(me.dynamic && me.pie, "{me:?}");
        assert_eq!(me.name(), "dynamic");
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b"#!/bin/sh\n").unwrap();
        assert!(
            linkage(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("not an ELF")
        );
    }
}
