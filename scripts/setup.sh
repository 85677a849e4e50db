#!/usr/bin/env bash
# Installs what agent-sandbox needs on a fresh Debian/Ubuntu machine (run as root), builds it,
# and runs the example: validating and converting the example manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (the node agent needs namespaces, mounts and cgroups)" >&2
  exit 1
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends gcc pkg-config ca-certificates \
  runc crun runsc containernetworking-plugins iproute2 busybox-static >/dev/null

cargo build --release -p agent-sandbox
bin=target/release/agent-sandbox

echo "== agent-sandbox version"
"$bin" version
echo "== validating the example manifests"
"$bin" validate -f examples/manifests/sandbox.yaml -f examples/manifests/template.yaml \
  -f examples/manifests/warmpool.yaml -f examples/manifests/claim.yaml
echo "== converting a v1alpha1 claim to v1beta1"
"$bin" convert -f examples/manifests/v1alpha1/claim-warm-start.yaml --to v1beta1
echo "== the CRDs are in deploy/crds (kubectl apply -f deploy/crds)"
