#!/usr/bin/env bash
# The CNI attach benchmark (cni-plugin/benches/attach.rs) on the railvf binary as it ships.
# Run as root on Debian; RAILVF_BENCH_CYCLES sets the cycles per row (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
# Sourced: a Rust toolchain it installs goes on this shell's PATH.
. scripts/setup-debian.sh
bin=$(scripts/build-cni.sh)
# The static glibc build as well (what scripts/build-cni.sh falls back to without Rust's
# musl target), measured beside the shipped one.
glibc=$(RAILVF_CNI_LIBC=glibc scripts/build-cni.sh)
# build-cni.sh prints a path relative to here, or an absolute one with an absolute
# CARGO_TARGET_DIR.
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
RAILVF_BENCH_BIN="$(absolute "$bin")" RAILVF_BENCH_GLIBC_BIN="$(absolute "$glibc")" \
  exec cargo bench --locked -p railvf-cni --bench attach
