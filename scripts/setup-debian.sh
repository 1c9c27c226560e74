#!/usr/bin/env bash
# Installs what railvf's demo and tests need on a Debian machine, idempotently. Sourced
# (`. scripts/setup-debian.sh`) by demo.sh, test.sh and bench-cni.sh; it also runs on its own.
# Needs root (network namespaces, veth links, apt).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "railvf: run this as root: the simulated node creates network namespaces and veth links" >&2
  exit 1
fi

# gcc: the linker Rust calls (`cc`); iproute2: ip netns/link; containernetworking-plugins:
# host-local/static IPAM and the host-device baseline (in /usr/lib/cni); podman + runc +
# busybox-static: the real CNI runtime test; libc6-dev: glibc's static libc.a, for the
# shipped CNI binary where Rust's musl target is missing (scripts/build-cni.sh); procps:
# `ps`, which tests use to find processes left behind (minimal images lack it).
packages=(gcc iproute2 containernetworking-plugins podman runc busybox-static libc6-dev procps)
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

# Rust: the workspace needs 1.95 or later (`rust-version`). A fresh Debian has none (and
# Debian's own is older), so without a recent enough one rustup installs 1.95 into
# CARGO_HOME: from static.rust-lang.org, checked against its published SHA-256. This file is
# sourced by the scripts that build, so the PATH (and RUSTUP_TOOLCHAIN) set here reach cargo.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rust_minor_wanted=95
rust_is_recent() {
  local v
  v=$(rustc --version 2>/dev/null | awk '{print $2}') || return 1
  [ "${v%%.*}" = 1 ] || return 1
  v=${v#1.}
  [ "${v%%.*}" -ge "$rust_minor_wanted" ] 2>/dev/null
}
# A rustup install that this shell's PATH does not have yet (no login since it was made).
if [ -x "$cargo_home/bin/cargo" ]; then
  case ":$PATH:" in *":$cargo_home/bin:"*) ;; *) export PATH="$cargo_home/bin:$PATH" ;; esac
fi
if ! rust_is_recent; then
  if command -v rustup >/dev/null 2>&1; then
    echo "railvf: $(rustc --version 2>/dev/null || echo 'no rustc') is older than 1.$rust_minor_wanted:" \
      "installing Rust 1.$rust_minor_wanted with rustup, for these scripts only" >&2
    timeout 900 rustup toolchain install "1.$rust_minor_wanted" --profile minimal \
      -c rustfmt -c clippy >&2
    export RUSTUP_TOOLCHAIN="1.$rust_minor_wanted"
  else
    echo "railvf: no Rust 1.$rust_minor_wanted or later: installing rustup and Rust" \
      "1.$rust_minor_wanted into $cargo_home" >&2
    if ! command -v curl >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
    fi
    rustup_url="https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init"
    rustup_dir=$(mktemp -d)
    curl --proto '=https' --tlsv1.2 -fsSL -o "$rustup_dir/rustup-init" "$rustup_url"
    want=$(curl --proto '=https' --tlsv1.2 -fsSL "$rustup_url.sha256" | awk '{print $1}')
    got=$(sha256sum "$rustup_dir/rustup-init" | awk '{print $1}')
    if [ -z "$want" ] || [ "$want" != "$got" ]; then
      echo "railvf: rustup-init from $rustup_url has SHA-256 $got, but the published one is" \
        "'${want}'. Nothing was installed; try again, or install Rust 1.$rust_minor_wanted" \
        "yourself (https://rustup.rs)." >&2
      rm -rf "$rustup_dir"
      exit 1
    fi
    chmod +x "$rustup_dir/rustup-init"
    # SKIP_PATH_CHECK: an older Debian rustc in /usr/bin is fine, ours goes first on PATH.
    RUSTUP_INIT_SKIP_PATH_CHECK=yes timeout 900 "$rustup_dir/rustup-init" -y --no-modify-path \
      --profile minimal --default-toolchain "1.$rust_minor_wanted" -c rustfmt -c clippy >&2
    rm -rf "$rustup_dir"
    export PATH="$cargo_home/bin:$PATH"
  fi
  if ! rust_is_recent; then
    echo "railvf: still no Rust 1.$rust_minor_wanted or later after installing it" \
      "($(command -v rustc || echo 'no rustc on PATH')): see the messages above" >&2
    exit 1
  fi
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
