#!/usr/bin/env bash
# Tests of the Python SDK against a live `agent-sandbox up` (started by the pytest session
# fixture; needs root). Makes a venv, installs the package with its test, typecheck, grpc and
# upstream extras (upstream's published SDK runs against `up` too), builds the sdist and the
# wheel and checks them with twine, type-checks with mypy --strict, and runs pytest. Extra
# arguments go to pytest.
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
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,typecheck,upstream,grpc,package]'

echo "== building the sdist and the wheel, checking them as PyPI would"
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
"$venv/bin/python" -m build --outdir "$dist" . >"$dist.log" 2>&1 || { cat "$dist.log"; exit 1; }
rm -f "$dist.log"
"$venv/bin/python" -m twine check --strict "$dist"/*
"$venv/bin/python" - "$dist" <<'PY'
import pathlib, sys, tarfile, zipfile
sys.path.insert(0, "src")
from agent_sandbox_sdk import __version__
dist = pathlib.Path(sys.argv[1])
wheel = next(dist.glob("agent_sandbox_sdk-*.whl"))
sdist = next(dist.glob("agent_sandbox_sdk-*.tar.gz"))
assert wheel.name.startswith(f"agent_sandbox_sdk-{__version__}-"), (wheel.name, __version__)
names = zipfile.ZipFile(wheel).namelist()
assert "agent_sandbox_sdk/py.typed" in names, names
assert "agent_sandbox_sdk/__init__.py" in names, names
members = tarfile.open(sdist).getnames()
assert any(m.endswith("/pyproject.toml") for m in members), members
assert any(m.endswith("/agent_sandbox_sdk/py.typed") for m in members), members
print(f"distributions ok: {wheel.name} ({len(names)} files), {sdist.name} ({len(members)} members)")
PY

if [ "${SDK_SKIP_MYPY:-}" != 1 ]; then
  echo "== mypy --strict"
  "$venv/bin/python" -m mypy --strict src/agent_sandbox_sdk
fi

echo "== pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" tests
echo "sdk/python tests took $(( $(date +%s) - start )) s"
