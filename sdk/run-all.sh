#!/usr/bin/env bash
# Every SDK's suite against one live `agent-sandbox up` (needs root): starts it through
# sdk/testenv.py (fresh data directory, the example image, a template and a warm pool), builds
# the Go and TypeScript SDKs and installs the framework integrations' venvs while it starts,
# then runs the Go, TypeScript and Python suites (each runs the shared wire vectors of
# sdk/vectors too) and the integrations' suite (integrations/run-tests.sh: OpenEnv,
# LangChain/deepagents, CrewAI, Ray) and tears everything down.
#
# Environment: AGENT_SANDBOX_BIN (default <repo>/target/debug/agent-sandbox), SDK_VENV (the
# Python venv; default sdk/python/.venv), SDK_SUITES (default "go typescript python
# integrations"),
# and those of sdk/testenv.py (addresses, bridge, subnet).
set -euo pipefail
cd "$(dirname "$0")"
sdk=$PWD
start=$(date +%s)
export PATH="$PATH:/usr/local/go/bin"
venv=${SDK_VENV:-$sdk/python/.venv}
export SDK_VENV=$venv
suites=${SDK_SUITES:-go typescript python integrations}

need() {
  if ! command -v "$1" >/dev/null; then
    echo "error: $1 is not installed (scripts/test.sh installs it, as root)" >&2
    exit 1
  fi
}
if [[ " $suites " == *" go "* ]]; then
  need go
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  if [ "${minor:-0}" -lt 21 ]; then
    echo "error: $(go env GOVERSION) cannot fetch the toolchain sdk/go needs; install Go 1.26 (https://go.dev/dl/) in /usr/local/go" >&2
    exit 1
  fi
fi
if [[ " $suites " == *" typescript "* ]]; then need node; need npm; fi

echo "== Python venv (the test environment uses the Python SDK)"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$sdk/python[test,typecheck,upstream,grpc,package]"

work=$(mktemp -d)
"$venv/bin/python" "$sdk/testenv.py" serve --env-file "$work/env" >"$work/testenv.log" 2>&1 &
serve=$!
teardown() {
  if kill -0 "$serve" 2>/dev/null; then
    kill -TERM "$serve"
    wait "$serve" || true
  fi
  cat "$work/testenv.log" >&2 || true
  rm -rf "$work"
}
trap teardown EXIT

# Build while `up` starts (the tests then find warm caches).
if [[ " $suites " == *" go "* ]]; then
  echo "== Go: download and build"
  (cd go && go mod download && go vet ./... && go test -c -o "$work/sandbox.test" ./sandbox)
fi
if [[ " $suites " == *" typescript "* ]]; then
  echo "== TypeScript: npm ci"
  (cd typescript && npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ " $suites " == *" integrations "* ]]; then
  echo "== integrations: venvs (openenv-core, langchain-core, deepagents, ray; crewai)"
  INTEGRATIONS_INSTALL_ONLY=1 ../integrations/run-tests.sh
fi

echo "== waiting for agent-sandbox up"
for _ in $(seq 1 600); do
  [ -f "$work/env" ] && break
  if ! kill -0 "$serve" 2>/dev/null; then
    echo "error: the test environment did not start" >&2
    exit 1
  fi
  sleep 0.5
done
if [ ! -f "$work/env" ]; then
  echo "error: agent-sandbox up was not ready within 300 s" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$work/env"

failed=()
for suite in $suites; do
  echo "== $suite SDK against the shared agent-sandbox up"
  case $suite in
    go) go/run-tests.sh || failed+=(go) ;;
    typescript) typescript/run-tests.sh || failed+=(typescript) ;;
    python) python/run-tests.sh || failed+=(python) ;;
    integrations) INTEGRATIONS_SKIP_INSTALL=1 ../integrations/run-tests.sh || failed+=(integrations) ;;
    *) echo "unknown suite $suite" >&2; failed+=("$suite") ;;
  esac
done
echo "SDK suites took $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
