#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian/Ubuntu machine as root: installs the system
# packages the tests need, then format, lints, generated files, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  # Compilers, the OCI runtimes and CNI plugins the node agent drives, busybox for test images,
  # a local registry, and the interpreters that run_code and the SDK's tests use.
  apt-get install -y -qq --no-install-recommends gcc pkg-config ca-certificates \
    runc crun runsc containernetworking-plugins nftables iproute2 busybox-static \
    docker-registry python3 python3-venv nodejs >/dev/null
  # The browser and desktop images and their test (build_gui.py copies these packages' files),
  # and PyYAML for the Python SDK run from its sources by that test.
  apt-get install -y -qq --no-install-recommends chromium xvfb xdotool \
    matchbox-window-manager xterm python3-yaml >/dev/null
  # The SDK suites: npm for the TypeScript SDK (a NodeSource nodejs brings its own), Go for the
  # Go SDK (1.21 or newer fetches the toolchain its go.mod names through the module proxy).
  if ! command -v npm >/dev/null; then
    apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
    apt-get install -y -qq --no-install-recommends golang-go >/dev/null
  fi
fi
export PATH="$PATH:/usr/local/go/bin"
# playwright-core for the browser test's CDP client, without a browser of its own.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund --prefix crates/cli/tests/cdp
if ! command -v kubectl >/dev/null; then
  echo "warning: kubectl is not on PATH; the kubectl conformance tests will fail" >&2
fi

# A clean build gains nothing from incremental state, which would double the disk it uses.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== generated CRDs are up to date"
cargo run --quiet -p agent-sandbox -- crd --check deploy/crds

echo "== documentation builds"
if ! command -v mdbook >/dev/null; then
  cargo install --quiet --locked mdbook --version 0.5.4 --no-default-features --features search
fi
mdbook build docs

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

echo "== Python grpcio client against sandboxd"
SANDBOXD_BIN=$PWD/target/debug/sandboxd crates/sandboxd/tests/python/run.sh

echo "== Go, TypeScript and Python SDKs and the wire vectors against one live agent-sandbox up"
AGENT_SANDBOX_BIN=$PWD/target/debug/agent-sandbox sdk/run-all.sh
