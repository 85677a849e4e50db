#!/usr/bin/env bash
# Checks and tests of the TypeScript SDK: installs the locked dependencies (npm ci), builds with
# `tsc --strict`, checks the published layout with `npm pack --dry-run` (ESM entry point and
# type declarations in, sources and tests out), then runs the tests with Node's test runner
# against the live `agent-sandbox up` that sdk/run-all.sh started (AGENT_SANDBOX_TEST_DATA_DIR
# and AGENT_SANDBOX_TEST_POOL name it). Extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== tsc --strict"
rm -rf dist build
npx tsc -p tsconfig.json
echo "== npm pack --dry-run"
npm pack --dry-run --json 2>/dev/null | node -e '
  const [p] = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const files = p.files.map((f) => f.path).sort();
  const need = ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/client.js", "dist/errors.d.ts"];
  const missing = need.filter((f) => !files.includes(f));
  const stray = files.filter((f) => /^(src|test|build|node_modules)\//.test(f) || f.endsWith(".tgz"));
  if (missing.length || stray.length) {
    console.error("bad package layout: missing", missing, "stray", stray);
    process.exit(1);
  }
  console.log(`package ok: ${p.id}, ${files.length} files, ${p.unpackedSize} bytes unpacked`);
'
node --input-type=module -e 'import("./dist/index.js").then((m) => { if (typeof m.SandboxClient !== "function") { console.error("dist/index.js does not export SandboxClient"); process.exit(1); } })'
echo "== node --test"
npx tsc -p tsconfig.test.json
node --test --test-concurrency=1 --test-reporter=spec "$@" build/tests/*.test.js
echo "sdk/typescript tests took $(( $(date +%s) - start )) s"
