#!/usr/bin/env bash
# Every test of the workspace, on the simulated DGX H200 node. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
