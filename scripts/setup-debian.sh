#!/usr/bin/env bash
# Installs what railvf's demo and tests need on a Debian machine, idempotently.
# Needs root (network namespaces, veth links, apt).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "railvf: run this as root: the simulated node creates network namespaces and veth links" >&2
  exit 1
fi

# gcc: the linker Rust calls (`cc`); iproute2: ip netns/link; containernetworking-plugins:
# host-local/static IPAM and the host-device baseline (in /usr/lib/cni); podman + runc +
# busybox-static: the real CNI runtime test; libc6-dev: glibc's static libc.a, for the
# shipped CNI binary where Rust's musl target is missing (scripts/build-cni.sh).
packages=(gcc iproute2 containernetworking-plugins podman runc busybox-static libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "railvf: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "railvf: cargo not found: install a Rust toolchain >= 1.95 (rustup) and re-run" >&2
  exit 1
fi

# The shipped CNI binary is linked against musl (scripts/build-cni.sh): Rust's musl target,
# from rustup (a no-op, offline, once installed). Without it that script builds against
# static glibc instead, and says so; nothing else needs the target.
if command -v rustup >/dev/null 2>&1; then
  # The test command checks formatting and lints: a minimal rustup profile lacks both.
  timeout 300 rustup component add rustfmt clippy >&2 ||
    echo "railvf: could not add rustfmt and clippy (rustup component add rustfmt clippy)" >&2
  musl="$(uname -m)-unknown-linux-musl"
  timeout 300 rustup target add "$musl" >&2 ||
    echo "railvf: could not install Rust's $musl target (rustup target add $musl):" \
      "the shipped CNI binary will be built against static glibc" >&2
fi
