#!/usr/bin/env bash
# The main job: a simulated DGX H200 node, inspected. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# Sourced: a Rust toolchain it installs goes on this shell's PATH.
. scripts/setup-debian.sh
cargo build --release --locked -p railvf-sim -p railvf-device-plugin
# The CNI binary as it ships: static, musl (or static glibc without Rust's musl target).
cni=$(scripts/build-cni.sh)
exec "${CARGO_TARGET_DIR:-target}/release/railvf-sim" demo --cni-bin "$cni" "$@"
