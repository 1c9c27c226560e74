#!/usr/bin/env bash
# Every test of the workspace, on the simulated DGX H200 node. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# One clean build, nothing to reuse: incremental state would only take disk (1.7 GB of it
# with full debug info).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Sourced: a Rust toolchain it installs goes on this shell's PATH.
. scripts/setup-debian.sh
# A clean run writes 2.5 GB into target/, and cargo-deny's first build 0.3 GB into the
# temporary directory; a full disk shows up as an LLVM "IO failure" deep in the build.
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "railvf: warning: $((free_kb / 1024)) MB free on the disk holding $PWD; a clean test" \
    "run needs about 3 GB (target/ and cargo-deny's build). If the build fails with" \
    "'No space left on device', free space (cargo clean in old checkouts) and run again." >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The dependency policy (deny.toml): licenses, bans, sources. cargo-deny comes from crates.io,
# built once; a pinned version keeps the check the same on every machine.
cargo deny --version 2>/dev/null | grep -qx "cargo-deny 0.20.2" || cargo install --locked cargo-deny@0.20.2
cargo deny --locked check licenses bans sources
cargo test --workspace --locked
