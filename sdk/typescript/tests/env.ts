// Test setup: the live `agent-sandbox up` the tests run against, named by the variables
// sdk/run-all.sh (through sdk/testenv.py) exports; clients that clean up after the test.

import * as fs from "node:fs";
import * as path from "node:path";
import { SandboxClient, type ClientOptions } from "../src/index.js";

export const dataDir = process.env.AGENT_SANDBOX_TEST_DATA_DIR ?? "";
export const pool = process.env.AGENT_SANDBOX_TEST_POOL ?? "";
if (!dataDir || !pool) {
  throw new Error("the tests need a live agent-sandbox up: run sdk/run-all.sh, or set AGENT_SANDBOX_TEST_DATA_DIR and AGENT_SANDBOX_TEST_POOL (sdk/testenv.py serve writes them)");
}

export function endpoints(): { router: string; token: string; kubeconfig: string } {
  const ep = JSON.parse(fs.readFileSync(path.join(dataDir, "endpoints.json"), "utf8"));
  return { router: String(ep.router).replace(/\/+$/, ""), token: fs.readFileSync(ep.routerTokenFile, "utf8").trim(), kubeconfig: ep.kubeconfig };
}

const clients: SandboxClient[] = [];

export function client(o: ClientOptions = {}): SandboxClient {
  const c = new SandboxClient({ dataDir, ...o });
  clients.push(c);
  return c;
}

export async function cleanup(): Promise<void> {
  for (const c of clients.splice(0)) {
    await c.deleteAll().catch(() => undefined);
    c.close();
  }
}

/** The repository's sdk/ directory (the tests run from build/test). */
export function sdkDir(): string {
  let d = path.dirname(new URL(import.meta.url).pathname);
  while (!fs.existsSync(path.join(d, "vectors", "vectors.json"))) {
    const up = path.dirname(d);
    if (up === d) throw new Error("sdk/vectors/vectors.json not found above the tests");
    d = up;
  }
  return d;
}
