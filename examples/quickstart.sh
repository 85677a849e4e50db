#!/usr/bin/env bash
# The quick start with the CLI: claim a sandbox from the example warm pool, run a command and
# some Python in it, write and read a file, delete it; prints how long each step took.
# Needs a running `agent-sandbox up` with examples/manifests/{template,warmpool}.yaml applied
# (scripts/setup.sh does all of that). Usage: examples/quickstart.sh [agent-sandbox binary]
set -euo pipefail
bin=${1:-agent-sandbox}

step() {
  local what=$1
  shift
  local start end
  start=$(date +%s%N)
  "$@"
  end=$(date +%s%N)
  printf '  [%s: %d ms]\n' "$what" $(((end - start) / 1000000)) >&2
}

claim_name() { claim=$("$bin" claim --pool python-pool); }
step "claim a warm sandbox" claim_name
echo "claimed $claim"
step "run a command" "$bin" exec "$claim" -- uname -sr
step "run Python" "$bin" exec "$claim" -- python3 -c 'import platform; print("Python", platform.python_version(), "says", 6 * 7)'
printf 'hello from the host\n' >/tmp/agent-sandbox-quickstart.txt
step "write a file" "$bin" cp /tmp/agent-sandbox-quickstart.txt "$claim:notes/hello.txt"
step "read it back" "$bin" cp "$claim:notes/hello.txt" -
step "list the directory" "$bin" ls "$claim" notes
step "delete the sandbox" "$bin" delete "$claim"
rm -f /tmp/agent-sandbox-quickstart.txt
