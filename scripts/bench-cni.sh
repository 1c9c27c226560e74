#!/usr/bin/env bash
# The CNI attach benchmark (cni-plugin/benches/attach.rs) on the railvf binary as it ships.
# Run as root on Debian; RAILVF_BENCH_CYCLES sets the cycles per row (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
bin=$(scripts/build-cni.sh)
# The static glibc build as well (what scripts/build-cni.sh falls back to without Rust's
# musl target), measured beside the shipped one.
glibc=$(RAILVF_CNI_LIBC=glibc scripts/build-cni.sh)
RAILVF_BENCH_BIN="$PWD/$bin" RAILVF_BENCH_GLIBC_BIN="$PWD/$glibc" \
  exec cargo bench --locked -p railvf-cni --bench attach
