// Integration tests against the live `agent-sandbox up`: claims, commands (streamed and in the
// background), files, runCode, terminals, suspend and resume, the three connection modes, and
// the error paths (no server, wrong pool, timeouts, a deleted sandbox, an interrupted stream).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  CommandTimeoutError, SandboxClient, SandboxConfigError, SandboxConnectionError, SandboxError, SandboxNotFoundError, SandboxNotReadyError,
  SandboxPathError, SandboxRequestError, SandboxStreamError, SandboxTimeoutError, SandboxWarmPoolNotFoundError, StatusNotFound, StatusReady, type Sandbox,
} from "../src/index.js";
import { cleanup, client, dataDir, endpoints, pool } from "./env.js";

let shared: Sandbox;

before(async () => {
  shared = await client().createSandbox(pool, { timeout: 60 });
});
after(cleanup);

function isKind<T extends SandboxError>(cls: new (...a: any[]) => T, check?: (e: T) => void): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `want a ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    check?.(e as T);
    return true;
  };
}

describe("commands", () => {
  it("streams output as it comes", async () => {
    const chunks: string[] = [];
    let firstAt = 0;
    const start = Date.now();
    const r = await shared.run("echo one; sleep 1.5; echo two; echo err >&2", {
      onStdout: (s) => {
        firstAt ||= Date.now();
        chunks.push(s);
      },
    });
    assert.equal(r.stdout, "one\ntwo\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.exitCode, 0);
    assert.ok(chunks.length >= 2, `chunks ${JSON.stringify(chunks)}`);
    assert.ok(firstAt - start < 1400, `first output after ${firstAt - start} ms`);
  });

  it("runs in the background and is killed", async () => {
    const p = await shared.commands.start("echo ready; exec sleep 60");
    assert.ok(p.pid);
    const procs = await shared.commands.list();
    assert.ok(procs.some((x) => x.pid === p.pid && x.running), JSON.stringify(procs));
    await p.kill();
    const r = await p.wait();
    assert.equal(r.exitCode, 137);
    assert.equal(r.stdout, "ready\n");
  });

  it("kills a command past its timeout and keeps its output", async () => {
    const start = Date.now();
    await assert.rejects(shared.run("echo partial; sleep 30", { timeout: 1 }), isKind(CommandTimeoutError, (e) => {
      assert.ok(e instanceof SandboxTimeoutError);
      assert.equal(e.result?.stdout, "partial\n");
      assert.equal(e.result?.timedOut, true);
    }));
    assert.ok(Date.now() - start < 10000);
  });

  it("ends a command when the caller aborts", async () => {
    await assert.rejects(shared.run("sleep 30", { signal: AbortSignal.timeout(700) }), isKind(SandboxTimeoutError));
  });

  it("refuses an empty command", async () => {
    await assert.rejects(shared.run([]), isKind(SandboxConfigError));
  });
});

describe("files", () => {
  it("round-trips 8 MiB and lists, checks, deletes", async () => {
    const data = randomBytes(8 << 20);
    await shared.files.write("ts-tests/big.bin", data, { mode: "0600" });
    const got = await shared.files.read("ts-tests/big.bin");
    assert.ok(got.equals(data), `read ${got.length} bytes, wrote ${data.length}`);
    const entries = await shared.files.list("ts-tests");
    assert.equal(entries.length, 1);
    assert.deepEqual([entries[0].name, entries[0].size, entries[0].mode], ["big.bin", data.length, "0600"]);
    assert.ok(entries[0].modified instanceof Date);
    await assert.rejects(shared.files.list("ts-tests/big.bin"), isKind(SandboxRequestError));
    await assert.rejects(shared.files.delete("ts-tests"), isKind(SandboxRequestError, (e) => assert.equal(e.code, "CONFLICT")));
    await shared.files.delete("ts-tests", { recursive: true });
    assert.equal(await shared.files.exists("ts-tests"), false);
    await assert.rejects(shared.files.write("", "x"), isKind(SandboxPathError));
  });
});

describe("code", () => {
  it("keeps state between cells, interrupts at the timeout", async () => {
    await shared.runCode("import statistics\nvalues = [1, 2, 6]");
    const r = await shared.runCode("statistics.mean(values)");
    assert.equal(r.result, "3");
    assert.equal(r.status, "ok");
    await assert.rejects(shared.runCode("import time\ntime.sleep(30)", { timeout: 1 }), isKind(CommandTimeoutError));
    assert.equal((await shared.runCode("len(values)")).result, "3");
    const e = await shared.runCode("1/0");
    assert.equal(e.error?.name, "ZeroDivisionError");
    const cc = await shared.code.createContext("python", { id: "ts-ctx" });
    assert.deepEqual([cc.id, cc.language], ["ts-ctx", "python"]);
    await shared.runCode("z = 5", { context: "ts-ctx" });
    assert.equal((await shared.runCode("z * 2", { context: "ts-ctx" })).result, "10");
    assert.equal((await shared.runCode("'z' in globals()")).result, "False");
    await shared.code.restart("ts-ctx");
    assert.equal((await shared.runCode("'z' in globals()", { context: "ts-ctx" })).result, "False");
    assert.ok((await shared.code.listContexts()).some((c) => c.id === "ts-ctx"));
    await shared.code.deleteContext("ts-ctx");
    await assert.rejects(shared.runCode("1", { context: "ts-ctx" }), isKind(SandboxRequestError));
    const b = await shared.runCode("echo $((6*7))", { language: "bash" });
    assert.equal(b.stdout.trim(), "42");
    await assert.rejects(shared.runCode("1", { context: "no-such-context" }), isKind(SandboxRequestError, (x) => assert.equal(x.statusCode, 404)));
  });
});

describe("terminal", () => {
  it("runs a shell, resizes, exits with its code", async () => {
    const t = await shared.pty({ command: "/bin/sh", cols: 100, rows: 30 });
    try {
      t.write("echo pty-$((40+2))\n");
      await t.readUntil("pty-42", 10);
      t.resize(120, 40);
      t.write("stty size\n");
      await t.readUntil("40 120", 10);
      t.write("exit 5\n");
      assert.equal(await t.wait(10), 5);
    } finally {
      t.close();
    }
  });
});

describe("modes", () => {
  for (const mode of ["router", "pod-ip", "port-forward"] as const) {
    it(mode, async () => {
      const c = client({ mode });
      assert.equal(c.mode, mode);
      const sb = await c.getSandbox(shared.claimName!);
      const r = await sb.run(`echo via-${mode}`);
      assert.equal(r.stdout, `via-${mode}\n`);
      await sb.files.write(`mode-${mode}`, "x");
      assert.equal(await sb.files.exists(`mode-${mode}`), true);
    });
  }
});

describe("lifecycle", () => {
  it("suspends and resumes", async () => {
    const sb = await client().createSandbox(pool, { labels: { suite: "typescript" } });
    await sb.files.write("kept.txt", "kept");
    await sb.suspend();
    assert.equal(await sb.isSuspended(), true);
    await assert.rejects(sb.run("true", { timeout: 5 }), isKind(SandboxNotReadyError));
    await sb.resume();
    assert.equal((await sb.status())[0], StatusReady);
    assert.equal((await sb.run("echo resumed")).stdout, "resumed\n");
  });

  it("ends the stream of a command whose sandbox is deleted, then refuses calls", async () => {
    const c = client();
    const sb = await c.createSandbox(pool);
    const p = await sb.commands.start("echo begun; sleep 60");
    await c.resolved.kube.delete("sandboxclaims", sb.namespace, sb.claimName!, "deleting the claim");
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([p.wait().then((r) => r, (e) => e), new Promise((r) => (timer = setTimeout(() => r("hang"), 60000)))]);
    clearTimeout(timer);
    assert.notEqual(outcome, "hang");
    if (outcome instanceof Error) assert.ok(outcome instanceof SandboxStreamError, String(outcome));
    else assert.notEqual((outcome as { exitCode: number }).exitCode, 0);
    let st = (await sb.status())[0];
    for (let i = 0; i < 100 && st !== StatusNotFound; i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = (await sb.status())[0];
    }
    assert.equal(st, StatusNotFound);
    // The first refusal may be slow (the router tries the stale pod IP); the SDK then forgets it.
    for (let i = 0; ; i++) {
      try {
        await sb.run("true", { timeout: 40 });
      } catch (e) {
        assert.ok(e instanceof SandboxNotReadyError && e.message.includes("does not exist"), String(e));
        break;
      }
      assert.ok(i < 150, "the deleted sandbox kept answering");
      await new Promise((r) => setTimeout(r, 200));
    }
    const start = Date.now();
    await assert.rejects(sb.run("true"), isKind(SandboxNotReadyError));
    assert.ok(Date.now() - start < 5000);
    assert.equal(sb.podIP, null);
  });

  it("reports a stream cut by the network", async () => {
    const ep = endpoints();
    const target = new URL(ep.router);
    const conns: net.Socket[] = [];
    const proxy = net.createServer((sock) => {
      const up = net.connect(Number(target.port), target.hostname);
      conns.push(sock, up);
      sock.pipe(up).on("error", () => undefined);
      up.pipe(sock).on("error", () => undefined);
      sock.on("error", () => up.destroy());
      up.on("error", () => sock.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const port = (proxy.address() as net.AddressInfo).port;
      const sb = client({ routerUrl: `http://127.0.0.1:${port}` }).sandboxByName(shared.name, shared.namespace);
      let got!: () => void;
      const first = new Promise<void>((r) => (got = r));
      const p = await sb.commands.start("echo begun; sleep 30", { onStdout: () => got() });
      await first;
      for (const c of conns) c.destroy();
      await assert.rejects(p.wait(), isKind(SandboxStreamError, (e) => assert.ok(e.message.includes("sleep 30"), e.message)));
      assert.equal(p.stdout, "begun\n");
    } finally {
      for (const c of conns) c.destroy();
      proxy.close();
    }
  });
});

describe("errors", () => {
  it("no server", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "asdk-ts-"));
    try {
      assert.throws(() => new SandboxClient({ dataDir: dir }), isKind(SandboxConnectionError, (e) => assert.ok(e.message.includes("agent-sandbox up"))));
      const ep = JSON.parse(fs.readFileSync(path.join(dataDir, "endpoints.json"), "utf8"));
      ep.apiServer = "https://127.0.0.1:9";
      fs.writeFileSync(path.join(dir, "endpoints.json"), JSON.stringify(ep));
      const c = client({ dataDir: dir });
      const start = Date.now();
      await assert.rejects(c.createSandbox(pool, { timeout: 5 }), isKind(SandboxConnectionError, (e) => assert.ok(e.message.includes("agent-sandbox up"), e.message)));
      assert.ok(Date.now() - start < 6000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("wrong token and no router", async () => {
    const sb = client({ routerToken: "wrong" }).sandboxByName(shared.name);
    await assert.rejects(sb.run("true"), isKind(SandboxRequestError, (e) => {
      assert.equal(e.statusCode, 401);
      assert.ok(e.message.includes("router token"), e.message);
    }));
    const sb2 = client({ routerUrl: "http://127.0.0.1:9" }).sandboxByName(shared.name);
    await assert.rejects(sb2.files.read("x"), isKind(SandboxConnectionError, (e) => assert.ok(e.message.includes("agent-sandbox up"), e.message)));
  });

  it("claims that cannot work", async () => {
    const c = client();
    await assert.rejects(c.createSandbox("no-such-pool", { timeout: 20 }), isKind(SandboxWarmPoolNotFoundError, (e) => assert.ok(e.message.includes(pool), e.message)));
    await assert.rejects(c.createSandbox("Bad_Name"), isKind(SandboxConfigError));
    await assert.rejects(c.getSandbox("no-such-claim"), isKind(SandboxNotFoundError));
    assert.deepEqual(c.listActiveSandboxes(), []);
    await assert.rejects(c.createSandbox(pool, { timeout: 0.001 }), isKind(SandboxTimeoutError));
  });
});
