#!/usr/bin/env bash
# Builds the `railvf` CNI binary as it ships, and prints its path.
#
# Statically linked and not position-independent, because:
# - the binary is copied onto the node (/opt/cni/bin) and runs there, outside any image: it
#   must not need any libc of the node's;
# - it is started for every ADD/DEL/CHECK, and a static non-PIE binary starts with no dynamic
#   loader and no relocations: about half the CPU of a dynamically linked PIE start here
#   (docs/cni.md, "Performance").
# Linked against musl when Rust's musl target is installed (`rustup target add
# <arch>-unknown-linux-musl`; scripts/setup-debian.sh tries): glibc's start-up probes the
# CPU with a few dozen `cpuid` instructions, each a trap to the hypervisor on a VM, and a
# musl start costs about a third of a static glibc one. Without that target: static glibc,
# which works the same and starts slower; this script says so on stderr.
# RAILVF_CNI_LIBC=musl makes a missing musl target an error (the Containerfile sets it);
# RAILVF_CNI_LIBC=glibc builds the static glibc binary (the benchmark compares the two).
# Profile `release-cni` (Cargo.toml) adds whole-program LTO for the same reason.
# `--target` keeps these flags away from build scripts and proc-macros, which stay dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
rustc="${RUSTC:-rustc}"
host=$("$rustc" -vV | sed -n "s/^host: //p")
musl="${host%%-*}-unknown-linux-musl"
have_musl() {
  compgen -G "$("$rustc" --print target-libdir --target "$musl")/libstd-*.rlib" >/dev/null
}
libc="${RAILVF_CNI_LIBC:-}"
case "$libc" in
  "")
    if have_musl; then
      libc=musl
    else
      libc=glibc
      echo "railvf: Rust's $musl target is not installed: building against static glibc," \
        "which starts slower (docs/cni.md, Performance). To ship the musl build:" \
        "rustup target add $musl" >&2
    fi
    ;;
  musl)
    have_musl || {
      echo "railvf: RAILVF_CNI_LIBC=musl, but Rust's $musl target is not installed:" \
        "rustup target add $musl" >&2
      exit 1
    }
    ;;
  glibc) ;;
  *)
    echo "railvf: RAILVF_CNI_LIBC is '$libc': expected musl, glibc, or unset (musl when" \
      "its Rust target is installed, else glibc)" >&2
    exit 1
    ;;
esac
if [ "$libc" = musl ]; then
  target="$musl"
else
  target="$host"
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
fi
RUSTFLAGS="${RUSTFLAGS:-} -C relocation-model=static" \
  "${CARGO:-cargo}" build --profile release-cni --locked -p railvf-cni --bin railvf --target "$target" >&2
# Where cargo wrote it: CARGO_TARGET_DIR when set, else target/ here.
echo "${CARGO_TARGET_DIR:-target}/$target/release-cni/railvf"
