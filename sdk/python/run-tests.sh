#!/usr/bin/env bash
# Tests of the Python SDK against a live `agent-sandbox up` (started by the pytest session
# fixture; needs root). Makes a venv, installs the package with its test, typecheck, grpc and
# upstream extras (upstream's published SDK runs against `up` too), builds the wheel
# once, type-checks with mypy --strict, and runs pytest. Extra arguments go to pytest.
#
# Environment: AGENT_SANDBOX_BIN (default <repo>/target/debug/agent-sandbox, built when missing
# or older than the sources), SDK_VENV (default .venv beside this script), SDK_SKIP_MYPY=1.
set -euo pipefail
cd "$(dirname "$0")"
venv=${SDK_VENV:-$PWD/.venv}
python=${PYTHON:-python3}
start=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,typecheck,upstream,grpc]'

echo "== building the wheel"
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
"$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dist" . >/dev/null
wheel=$(ls "$dist"/agent_sandbox_sdk-*.whl)
"$venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "agent_sandbox_sdk/py.typed" in names, names
assert "agent_sandbox_sdk/__init__.py" in names, names
print(f"wheel ok: {sys.argv[1].rsplit('/', 1)[-1]} ({len(names)} files)")
PY

if [ "${SDK_SKIP_MYPY:-}" != 1 ]; then
  echo "== mypy --strict"
  "$venv/bin/python" -m mypy --strict src/agent_sandbox_sdk
fi

echo "== pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" tests
echo "sdk/python tests took $(( $(date +%s) - start )) s"
