#!/usr/bin/env bash
# Every test of the workspace, on the simulated DGX H200 node. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# One clean build, nothing to reuse: incremental state would only take disk (1.7 GB of it).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
scripts/setup-debian.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The dependency policy (deny.toml): licenses, bans, sources. cargo-deny comes from crates.io,
# built once; a pinned version keeps the check the same on every machine.
cargo deny --version 2>/dev/null | grep -qx "cargo-deny 0.20.2" || cargo install --locked cargo-deny@0.20.2
cargo deny --locked check licenses bans sources
cargo test --workspace --locked
