// The shared wire vectors (sdk/vectors/vectors.json): each sent as raw HTTP through the router
// and checked against its expected status and body, then made through this SDK and checked
// against its expected result or error kind. The Go and Python SDKs run the same file.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { SandboxError, type Sandbox } from "../src/index.js";
import { cleanup, client, endpoints, pool, sdkDir } from "./env.js";

const UNKNOWN = "vectors-no-such-sandbox";
const NO_SERVER = "http://127.0.0.1:9";

interface Vector {
  name: string;
  target: string;
  wire?: { method: string; path: string; headers?: Record<string, string>; json?: unknown; text?: string; status: number; body?: unknown };
  sdk?: { call: string; args: Record<string, any>; result?: unknown; error?: { kind: string; status?: number; code?: string; message_contains?: string; result_stdout?: string } };
}

const vectors: Vector[] = JSON.parse(fs.readFileSync(path.join(sdkDir(), "vectors", "vectors.json"), "utf8")).vectors;

/** expected is contained in actual (object keys recursively, each list item in some item). */
function subset(expected: unknown, actual: unknown, where: string): void {
  if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
    assert.ok(actual !== null && typeof actual === "object" && !Array.isArray(actual), `${where}: expected an object, got ${JSON.stringify(actual)}`);
    for (const [k, v] of Object.entries(expected)) {
      assert.ok(k in (actual as object), `${where}.${k}: missing in ${JSON.stringify(actual)}`);
      subset(v, (actual as Record<string, unknown>)[k], `${where}.${k}`);
    }
  } else if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual), `${where}: expected a list, got ${JSON.stringify(actual)}`);
    expected.forEach((item, i) => {
      const found = actual.some((a) => {
        try {
          subset(item, a, where);
          return true;
        } catch {
          return false;
        }
      });
      assert.ok(found, `${where}[${i}]: ${JSON.stringify(item)} not in ${JSON.stringify(actual)}`);
    });
  } else {
    assert.deepEqual(actual, expected, where);
  }
}

let shared: Sandbox;

before(async () => {
  shared = await client().createSandbox(pool, { timeout: 60 });
});
after(cleanup);

describe("wire", () => {
  for (const v of vectors.filter((x) => x.wire)) {
    it(v.name, async () => {
      const w = v.wire!;
      const ep = endpoints();
      const headers: Record<string, string> = {
        Authorization: `Bearer ${ep.token}`, "X-Sandbox-ID": shared.name, "X-Sandbox-Namespace": shared.namespace, "X-Sandbox-Port": "8080",
      };
      if (v.target === "wrong-token") headers.Authorization = "Bearer wrong-token";
      if (v.target === "no-sandbox-id") for (const k of ["X-Sandbox-ID", "X-Sandbox-Namespace", "X-Sandbox-Port"]) delete headers[k];
      if (v.target === "unknown-sandbox") headers["X-Sandbox-ID"] = UNKNOWN;
      Object.assign(headers, w.headers ?? {});
      let body: string | undefined;
      if (w.json !== undefined) {
        body = JSON.stringify(w.json);
        headers["Content-Type"] = "application/json";
      } else if (w.text !== undefined && (w.method === "PUT" || w.method === "POST")) {
        body = w.text;
      }
      const res = await fetch(ep.router + w.path, { method: w.method, headers, body, signal: AbortSignal.timeout(60000) });
      const text = await res.text();
      assert.equal(res.status, w.status, `${v.name}: ${res.status} ${text.slice(0, 300)}`);
      if (w.body !== undefined) subset(w.body, JSON.parse(text), v.name);
      if (w.text !== undefined && w.method === "GET") assert.equal(text, w.text);
    });
  }
});

async function handle(target: string): Promise<Sandbox> {
  const ep = endpoints();
  switch (target) {
    case "sandbox":
      return shared;
    case "wrong-token":
      return client({ mode: "router", routerToken: "wrong-token" }).sandboxByName(shared.name, shared.namespace);
    case "no-server":
      return client({ mode: "router", routerUrl: NO_SERVER, routerToken: ep.token }).sandboxByName(shared.name, shared.namespace);
    case "unknown-sandbox":
      return client({ mode: "router" }).sandboxByName(UNKNOWN, shared.namespace);
    case "terminated": {
      const sb = await client().createSandbox(pool, { timeout: 60 });
      await sb.terminate();
      return sb;
    }
  }
  throw new Error(`unknown target ${target}`);
}

async function call(sb: Sandbox, op: string, a: Record<string, any>): Promise<unknown> {
  switch (op) {
    case "run": {
      const r = await sb.run(a.argv ?? a.command, { timeout: a.timeout, env: a.env, stdin: a.stdin });
      return { exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    }
    case "write":
      await sb.files.write(a.path, a.content);
      return null;
    case "read":
      return (await sb.files.read(a.path, { maxBytes: a.max_bytes })).toString("utf8");
    case "list":
      return (await sb.files.list(a.path)).map((e) => ({ name: e.name, size: e.size, type: e.type }));
    case "exists":
      return sb.files.exists(a.path);
    case "delete":
      await sb.files.delete(a.path, { recursive: !!a.recursive });
      return null;
    case "run_code": {
      const r = await sb.runCode(a.code);
      const out: Record<string, unknown> = { status: r.status, stdout: r.stdout, text: r.result };
      if (r.error) out.error_name = r.error.name;
      return out;
    }
  }
  throw new Error(`unknown call ${op}`);
}

describe("sdk", () => {
  for (const v of vectors.filter((x) => x.sdk)) {
    it(v.name, async () => {
      const s = v.sdk!;
      const sb = await handle(v.target);
      if (!s.error) {
        subset(s.result, await call(sb, s.call, s.args ?? {}), v.name);
        return;
      }
      const want = s.error;
      await assert.rejects(call(sb, s.call, s.args ?? {}), (e: unknown) => {
        assert.ok(e instanceof SandboxError, `want a ${want.kind}, got ${String(e)}`);
        assert.equal(e.kind, want.kind, e.message);
        if (want.status !== undefined) assert.equal(e.statusCode, want.status, e.message);
        if (want.code !== undefined) assert.equal(e.code, want.code, e.message);
        if (want.message_contains !== undefined) assert.ok(e.message.includes(want.message_contains), e.message);
        if (want.result_stdout !== undefined) assert.equal((e as unknown as { result?: { stdout: string } }).result?.stdout, want.result_stdout);
        return true;
      });
    });
  }
});
