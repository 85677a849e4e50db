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
# example image; kubectl's absence is tolerated (the CLI covers the example).
apt-get install -y -qq --no-install-recommends gcc libc6-dev pkg-config ca-certificates curl \
  runc crun runsc containernetworking-plugins iproute2 nftables busybox-static python3 >/dev/null

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
python3 examples/image/build.py --sandboxd "$bin" --out "$data/images/python"
"$bin" image import "$data/images/python" --as localhost/agent-sandbox/python:latest --data-dir "$data"

echo "== validating the example manifests offline"
"$bin" validate -f examples/manifests/sandbox.yaml -f examples/manifests/template.yaml \
  -f examples/manifests/warmpool.yaml -f examples/manifests/claim.yaml

echo "== starting agent-sandbox up (log: $data/up.log)"
mkdir -p "$data"
if ! pgrep -f "agent-sandbox up" >/dev/null; then
  nohup "$bin" up --data-dir "$data" >"$data/up.log" 2>&1 &
fi
for _ in $(seq 1 300); do
  grep -q '^ready;' "$data/up.log" 2>/dev/null && break
  if ! pgrep -f "agent-sandbox up" >/dev/null; then
    echo "error: agent-sandbox up exited; see $data/up.log" >&2
    tail -n 20 "$data/up.log" >&2
    exit 1
  fi
  sleep 0.2
done
grep -E '^(API server|runtime|default runtime|node|router):' "$data/up.log" || true

echo "== kubectl against the embedded API server"
kubectl get nodes
kubectl api-resources --api-group=agents.x-k8s.io
kubectl api-resources --api-group=extensions.agents.x-k8s.io
kubectl apply -f examples/manifests/template.yaml -f examples/manifests/warmpool.yaml
sleep 2
kubectl get sandboxwarmpools,sandboxes,pods
echo
echo "agent-sandbox is running (KUBECONFIG=$KUBECONFIG). The example pool's image is"
echo "localhost:5000/agent-sandbox/python:latest; push an image there to see its Pods run."
echo "Stop it with: pkill -f 'agent-sandbox up'"
