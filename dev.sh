#!/usr/bin/env bash
# Portcullis developer entry point: the README's two quick-start commands.
#
#   ./dev.sh run [ARGS...]   build and run the proxy; with no ARGS: `portcullis run` with the
#                            embedded default config (listens on 127.0.0.1:3128)
#   ./dev.sh test            install what the build and tests need (Debian packages, if missing),
#                            build, and run the whole test suite
#
# Both work on a fresh Debian machine with a Rust toolchain (rustup); the system packages are
# installed with apt-get when missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"

# Build: pkg-config, libkrb5-dev and libclang-dev for Negotiate (libgssapi's bindgen).
# Tests: curl and openssl as real clients; apache2-utils (htpasswd) for Basic auth; an MIT KDC
# (krb5-kdc, krb5-admin-server, krb5-user) for Negotiate; nftables, iptables, iproute2 and socat
# for the netfilter lab in network namespaces; chromium and libnss3-tools (certutil) for the
# real-browser interception test; prometheus to scrape the admin endpoint for real; haproxy in
# front of two instances for the PROXY protocol scale-out test; slapd and ldap-utils for the
# directory group tests (libsasl2-modules-gssapi-mit: Cyrus SASL's GSSAPI plugin, for slapd
# to accept the proxy's Kerberos bind), gss-ntlmssp and python3-gssapi (an NTLM
# initiator) for NTLM proxy authentication; faketime to put `portcullis doctor` ten minutes
# off the KDC's clock; c-icap (echo service), libc-icap-mod-virus-scan and clamav for the ICAP
# content adaptation tests (ClamAV with a lab-made EICAR signature; no signature download);
# squid as an authenticating parent proxy (squid-openssl, which conflicts with plain squid, as
# the lab recipes use).
BUILD_PACKAGES=(pkg-config ca-certificates libkrb5-dev libclang-dev)
TEST_PACKAGES=(curl openssl apache2-utils krb5-kdc krb5-admin-server krb5-user
  nftables iptables iproute2 socat chromium libnss3-tools prometheus haproxy python3
  slapd ldap-utils libsasl2-modules-gssapi-mit gss-ntlmssp python3-gssapi faketime
  squid-openssl c-icap libc-icap-mod-virus-scan clamav)

ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "dev.sh: missing packages ${missing[*]} and no apt-get; install them by hand" >&2
    return 1
  fi
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "dev.sh: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_cargo() {
  if ! command -v cargo >/dev/null; then
    echo "dev.sh: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
    exit 1
  fi
}

ensure_pac_evaluator() {
  command -v npm >/dev/null || ensure_packages nodejs npm
  if [ ! -d "$(npm root -g)/pac-resolver" ]; then
    echo "dev.sh: installing the PAC evaluator (npm pac-resolver)" >&2
    npm install -g --no-fund --no-audit pac-resolver@7 @tootallnate/quickjs-emscripten@0.23 >&2
  fi
}

case "${1:-}" in
  run)
    shift
    ensure_cargo
    ensure_packages "${BUILD_PACKAGES[@]}"
    if [ $# -eq 0 ]; then
      set -- run
      # The default data directory (/var/lib/portcullis, where the CA is created) needs root;
      # a normal user gets one in their home instead.
      if ! { mkdir -p /var/lib/portcullis && [ -w /var/lib/portcullis ]; } 2>/dev/null; then
        set -- run --data-dir "${XDG_DATA_HOME:-$HOME/.local/share}/portcullis"
        echo "dev.sh: /var/lib/portcullis is not writable; using --data-dir $3" >&2
      fi
    fi
    exec cargo run --quiet -p portcullis -- "$@"
    ;;
  test)
    shift
    ensure_cargo
    ensure_packages "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    # The PAC test runs the generated /proxy.pac in a real PAC evaluator (npm pac-resolver).
    ensure_pac_evaluator
    # The e2e tests drive the real binary: build it first so no test runs a stale one.
    cargo build --workspace --bins
    # Root-only tests (network namespaces) must run, not skip, wherever we are root (CI is).
    if [ "$(id -u)" -eq 0 ]; then export PORTCULLIS_REQUIRE_NETNS=1; fi
    # The packages above were installed: a missing KDC is a failure, not a skip.
    export PORTCULLIS_REQUIRE_KDC=1 PORTCULLIS_REQUIRE_CHROMIUM=1 PORTCULLIS_REQUIRE_PROMETHEUS=1 \
      PORTCULLIS_REQUIRE_PAC=1 PORTCULLIS_REQUIRE_HAPROXY=1 PORTCULLIS_REQUIRE_SLAPD=1 \
      PORTCULLIS_REQUIRE_NTLM=1 PORTCULLIS_REQUIRE_SQUID=1 PORTCULLIS_REQUIRE_ICAP=1
    if cargo nextest --version >/dev/null 2>&1; then
      cargo nextest run --workspace --no-fail-fast "$@"
    else
      echo "dev.sh: cargo-nextest not found; using cargo test (cargo install cargo-nextest for a faster run)" >&2
      cargo test --workspace --no-fail-fast "$@"
    fi
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
