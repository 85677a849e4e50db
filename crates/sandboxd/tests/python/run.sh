#!/usr/bin/env bash
# Runs the Python grpcio interop test against sandboxd.
# Needs: python3 with the venv module, and PyPI access for grpcio, grpcio-tools and h2 (installed
# into a virtualenv under ${SANDBOXD_PY_VENV:-$TMPDIR/sandboxd-grpc-venv} when missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
python="${PYTHON:-/usr/bin/python3}"
[ -x "$python" ] || python=python3
venv="${SANDBOXD_PY_VENV:-${TMPDIR:-/tmp}/sandboxd-grpc-venv}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import grpc, grpc_tools, h2' 2>/dev/null; then
  "$venv/bin/pip" install --quiet grpcio grpcio-tools h2
fi
# SANDBOXD_BIN names an already built binary; otherwise this builds one.
if [ -z "${SANDBOXD_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet -p agent-sandbox-sandboxd --bin sandboxd)
  SANDBOXD_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/sandboxd"
fi
SANDBOXD_BIN="$SANDBOXD_BIN" exec "$venv/bin/python" "$here/test_grpc.py"
