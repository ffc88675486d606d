#!/usr/bin/env bash
# Installs what Herald's build and tests need, skipping whatever is already there.
# Safe to re-run; used by `make run` and `make test` (and so by CI).
#
#   - the Rust toolchain pinned in rust-toolchain.toml (with wasm32 target, rustfmt, clippy)
#   - cargo-leptos, and wasm-bindgen-cli at exactly the version in Cargo.lock
#   - wasm-opt from npm's binaryen (Debian's binaryen breaks hydration), into .tools/
#   - Debian's redis-server (the Redis-mode tests start their own instances)
#   - with `--e2e` or `--cluster`: Debian's haproxy (scripts/cluster.sh puts it in front)
#   - with `--e2e`: Playwright (npm) and a Chromium: the system one if present, else Debian's
#     package where apt-get is usable, else Playwright's own download.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.11
BINARYEN_VERSION=132.0.0
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo || ! need rustup; then
  echo "Herald needs rustup (https://rustup.rs) to install its pinned toolchain." >&2
  exit 1
fi

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
  || ! rustup target list --installed --toolchain "$toolchain" | grep -q wasm32-unknown-unknown \
  || ! rustup component list --installed --toolchain "$toolchain" | grep -q clippy; then
  say "installing Rust $toolchain with wasm32, rustfmt and clippy"
  rustup toolchain install  # reads rust-toolchain.toml
fi

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  say "installing cargo-leptos $CARGO_LEPTOS_VERSION (compiles for ~15 minutes, once)"
  cargo install cargo-leptos --locked --version "$CARGO_LEPTOS_VERSION"
fi

wbg_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q "$wbg_version"; then
  say "installing wasm-bindgen-cli $wbg_version (matches Cargo.lock)"
  # --locked fails on registries that lack a crate version pinned in its lockfile.
  cargo install wasm-bindgen-cli --version "$wbg_version" --force
fi

if ! [ -x .tools/node_modules/.bin/wasm-opt ] || ! .tools/node_modules/.bin/wasm-opt --version | grep -q "${BINARYEN_VERSION%%.*}"; then
  say "installing wasm-opt (npm binaryen $BINARYEN_VERSION) into .tools/"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools "binaryen@$BINARYEN_VERSION"
fi

# Redis-mode tests start their own redis-server on a free loopback port.
if ! need redis-server; then
  if need apt-get && [ "$(id -u)" = 0 ]; then
    say "installing Debian's redis-server (the tests start their own; the service is not enabled)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # The package starts a system Redis on 6379; the project never uses it.
    (systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1) || true
  else
    say "no redis-server and no apt-get as root: the Redis-mode tests will fail"
  fi
fi

# The local cluster (scripts/cluster.sh, and the end-to-end test behind it) puts HAProxy in front.
if [ "${1:-}" = "--e2e" ] || [ "${1:-}" = "--cluster" ]; then
  if ! need haproxy; then
    if need apt-get && [ "$(id -u)" = 0 ]; then
      say "installing Debian's haproxy (the cluster script starts its own; the service is not enabled)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
      (systemctl disable --now haproxy >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1) || true
    else
      say "no haproxy and no apt-get as root: the cluster end-to-end test will fail"
    fi
  fi
fi

if [ "${1:-}" = "--e2e" ]; then
  if ! [ -d end2end/node_modules/@playwright/test ]; then
    say "installing Playwright (npm ci in end2end/)"
    (cd end2end && npm ci --silent --no-audit --no-fund)
  fi
  if ! need chromium && ! [ -x /usr/bin/chromium ]; then
    if need apt-get && [ "$(id -u)" = 0 ]; then
      say "installing Debian's chromium"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      say "no system Chromium: installing Playwright's own"
      (cd end2end && npx playwright install chromium)
    fi
  fi
fi
say "ready"
