#!/usr/bin/env bash
# The main job: a simulated DGX H200 node, inspected. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --release --locked -p railvf-sim -p railvf-device-plugin -p railvf-cni
exec target/release/railvf-sim demo "$@"
