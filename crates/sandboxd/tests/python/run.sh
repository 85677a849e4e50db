#!/usr/bin/env bash
# Runs the Python grpcio interop test against a freshly built sandboxd.
# Needs: python3 with the venv module, and PyPI access for grpcio and grpcio-tools (installed
# into a virtualenv under ${SANDBOXD_PY_VENV:-$TMPDIR/sandboxd-grpc-venv} on the first run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
python="${PYTHON:-/usr/bin/python3}"
[ -x "$python" ] || python=python3
venv="${SANDBOXD_PY_VENV:-${TMPDIR:-/tmp}/sandboxd-grpc-venv}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet grpcio grpcio-tools
fi
(cd "$repo" && cargo build --quiet -p agent-sandbox-sandboxd --bin sandboxd)
target="${CARGO_TARGET_DIR:-$repo/target}"
SANDBOXD_BIN="$target/debug/sandboxd" exec "$venv/bin/python" "$here/test_grpc.py"
