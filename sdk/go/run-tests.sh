#!/usr/bin/env bash
# Checks and tests of the Go SDK: gofmt, go vet, staticcheck (fetched through the module proxy;
# skipped with a warning when it cannot be fetched), then `go test` against the live
# `agent-sandbox up` that sdk/run-all.sh started (AGENT_SANDBOX_TEST_DATA_DIR and
# AGENT_SANDBOX_TEST_POOL name it). Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"
start=$(date +%s)
staticcheck_version=v0.8.2

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "not gofmt-formatted: $unformatted" >&2
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck $staticcheck_version"
if go run "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version" -version >/dev/null 2>&1; then
  go run "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version" ./...
else
  echo "warning: staticcheck could not be fetched; go vet only" >&2
fi
echo "== go build (example)"
go build -o /dev/null ./examples/quickstart
echo "== go test"
go test -count=1 "$@" ./...
echo "sdk/go tests took $(( $(date +%s) - start )) s"
