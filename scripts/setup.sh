#!/usr/bin/env bash
# Installs what agent-sandbox needs on a fresh Debian/Ubuntu machine (run as root), builds it,
# starts `agent-sandbox up` in the background and runs the example: the control plane answers
# kubectl, serves the four kinds, converts v1alpha1, and a warm pool creates its Sandboxes and
# Pods on the embedded node.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (the node agent needs namespaces, mounts and cgroups)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The OCI runtimes and CNI plugins the node agent drives; busybox and Debian's python3 for the
# example image (node for JavaScript in run_code); kubectl's absence is tolerated (the CLI covers
# the example).
apt-get install -y -qq --no-install-recommends gcc libc6-dev pkg-config ca-certificates curl \
  runc crun runsc containernetworking-plugins iproute2 nftables busybox-static python3 \
  python3-venv nodejs >/dev/null

if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

cargo build --release -p agent-sandbox
bin=$PWD/target/release/agent-sandbox
data=${AGENT_SANDBOX_DATA_DIR:-/var/lib/agent-sandbox}
export KUBECONFIG=$data/kubeconfig

echo "== building the example image from Debian packages and loading it into the node"
python3 examples/image/build.py --sandboxd "$bin" --out "$data/images/python" --with-node
"$bin" image import "$data/images/python" --as localhost/agent-sandbox/python:latest --data-dir "$data"

echo "== validating the example manifests offline"
"$bin" validate -f examples/manifests/sandbox.yaml -f examples/manifests/template.yaml \
  -f examples/manifests/warmpool.yaml -f examples/manifests/claim.yaml

echo "== starting agent-sandbox up (log: $data/up.log)"
mkdir -p "$data"
# An instance on this data directory is restarted on the new build; its sandboxes are re-adopted.
instance="agent-sandbox up --data-dir $data"
if pgrep -f "$instance" >/dev/null; then
  pkill -INT -f "$instance" || true
  for _ in $(seq 1 100); do pgrep -f "$instance" >/dev/null || break; sleep 0.1; done
fi
nohup "$bin" up --data-dir "$data" >"$data/up.log" 2>&1 &
for _ in $(seq 1 300); do
  grep -q '^ready;' "$data/up.log" 2>/dev/null && break
  if ! pgrep -f "$instance" >/dev/null; then
    echo "error: agent-sandbox up exited; see $data/up.log" >&2
    tail -n 20 "$data/up.log" >&2
    exit 1
  fi
  sleep 0.2
done
grep -E '^(API server|runtime|default runtime|node|router):' "$data/up.log" || true

echo "== the example template and warm pool"
export AGENT_SANDBOX_DATA_DIR=$data
"$bin" apply -f examples/manifests/template.yaml -f examples/manifests/warmpool.yaml
for _ in $(seq 1 600); do
  "$bin" get pools python-pool | grep -q ' 3/3 ' && break
  sleep 0.2
done
"$bin" get

echo "== quick start (CLI)"
examples/quickstart.sh "$bin"

echo "== quick start (Python SDK, installed in $data/sdk-venv)"
[ -x "$data/sdk-venv/bin/python" ] || python3 -m venv "$data/sdk-venv"
"$data/sdk-venv/bin/pip" install -q --disable-pip-version-check ./sdk/python
"$data/sdk-venv/bin/python" sdk/python/examples/quickstart.py python-pool default

echo
echo "agent-sandbox is running: $bin get | claim | exec | cp | ls | logs | suspend | resume | delete"
echo "kubectl works too: KUBECONFIG=$KUBECONFIG kubectl get sandboxes"
echo "Stop it with: pkill -INT -f '$instance' (sandboxes keep running and are re-adopted)"
