#!/usr/bin/env bash
# Builds the `railvf` CNI binary as it ships, and prints its path.
#
# Statically linked and not position-independent, because:
# - the binary is copied onto the node (/opt/cni/bin) and runs there, outside any image: it
#   must not need the node's glibc to be as new as the builder's;
# - it is started for every ADD/DEL/CHECK, and a static non-PIE binary starts with no dynamic
#   loader and no relocations: about half the CPU of a dynamically linked PIE start here
#   (docs/cni.md, "Performance").
# Profile `release-cni` (Cargo.toml) adds whole-program LTO for the same reason.
# `--target` keeps these flags away from build scripts and proc-macros, which stay dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$("${RUSTC:-rustc}" -vV | sed -n "s/^host: //p")
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  "${CARGO:-cargo}" build --profile release-cni --locked -p railvf-cni --bin railvf --target "$host" >&2
echo "target/$host/release-cni/railvf"
