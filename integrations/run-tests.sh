#!/usr/bin/env bash
# The framework integrations (OpenEnv, LangChain/deepagents, CrewAI, Ray) against a live
# `agent-sandbox up`: the one sdk/run-all.sh started (AGENT_SANDBOX_TEST_DATA_DIR and
# AGENT_SANDBOX_TEST_POOL in the environment; `SDK_SUITES=integrations sdk/run-all.sh` runs only
# this suite). Makes two venvs beside this script, because crewai pins versions (mcp, tomli)
# that openenv-core cannot use: .venv (the SDK, openenv-core, langchain-core, deepagents, ray)
# and .venv-crewai (the SDK, crewai). Installs each integration editable with its test extra,
# lints (ruff, mypy --strict) and runs each integration's pytest on its own. Extra arguments go
# to every pytest.
#
# Environment: INTEGRATIONS (default "openenv langchain crewai ray"), INTEGRATIONS_VENV (default
# .venv beside this script; the crewai one is "$INTEGRATIONS_VENV-crewai"), PYTHON,
# INTEGRATIONS_INSTALL_ONLY=1 (make the venvs and stop: sdk/run-all.sh does it while `up` starts),
# INTEGRATIONS_SKIP_INSTALL=1 (use the venvs as they are: run-all.sh's second call).
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
sdk=$here/../sdk/python
python=${PYTHON:-python3}
venv=${INTEGRATIONS_VENV:-$here/.venv}
selected=${INTEGRATIONS:-openenv langchain crewai ray}
start=$(date +%s)

venv_for() { if [ "$1" = crewai ]; then echo "$venv-crewai"; else echo "$venv"; fi; }

install() {
  local v=$1; shift
  local t0
  t0=$(date +%s)
  if [ ! -x "$v/bin/python" ]; then
    "$python" -m venv "$v"
  fi
  local args=(-e "$sdk[typecheck]" "ruff>=0.6")
  for i in "$@"; do args+=(-e "$here/$i[test]"); done
  "$v/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}"
  "$v/bin/python" -m pip check >/dev/null || { "$v/bin/python" -m pip check; exit 1; }
  echo "== $(basename "$v"): installed $* in $(( $(date +%s) - t0 )) s"
}

main=()
crew=()
for i in $selected; do
  if [ "$i" = crewai ]; then crew+=("$i"); else main+=("$i"); fi
done
if [ "${INTEGRATIONS_SKIP_INSTALL:-}" != 1 ]; then
  if [ ${#main[@]} -gt 0 ]; then install "$venv" "${main[@]}"; fi
  if [ ${#crew[@]} -gt 0 ]; then install "$venv-crewai" "${crew[@]}"; fi
fi
if [ "${INTEGRATIONS_INSTALL_ONLY:-}" = 1 ]; then
  exit 0
fi
if [ -z "${AGENT_SANDBOX_TEST_DATA_DIR:-}" ]; then
  echo "error: no live agent-sandbox up; run: SDK_SUITES=integrations sdk/run-all.sh (as root)" >&2
  exit 1
fi

failed=()
for i in $selected; do
  v=$(venv_for "$i")
  echo "== $i: ruff, mypy --strict"
  if ! (cd "$i" && "$v/bin/python" -m ruff check --quiet src tests \
        && "$v/bin/python" -m mypy --strict src); then
    failed+=("$i(lint)")
  fi
  echo "== $i: pytest"
  if ! (cd "$i" && "$v/bin/python" -m pytest -q -p no:cacheprovider "$@" tests); then
    failed+=("$i")
  fi
done
echo "integrations took $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
