// Sandbox: the handle on one claimed sandbox: commands (streamed, background, the process
// table), files, run_code, terminals, status, suspend and resume, terminate.

import WebSocket from "ws";
import { CommandTimeoutError, SandboxConfigError, SandboxError, SandboxNotFoundError, SandboxNotReadyError, SandboxRequestError, SandboxStreamError, SandboxTimeoutError, SandboxTooLargeError } from "./errors.js";
import { lines, TransportError } from "./http.js";
import type { KubeObject } from "./kube.js";
import { checkPath, DataPlane, podIPOf, readJSON, USER_AGENT, type Plane } from "./dataplane.js";
import type { CodeResult, ExecutionResult, FileEntry, FileOptions, ProcessInfo, RunCodeOptions, RunOptions } from "./types.js";

export const StatusReady = "SandboxReady";
export const StatusNotReady = "SandboxNotReady";
export const StatusNotFound = "SandboxNotFound";

function describe(cmd: string | string[]): string {
  const t = Array.isArray(cmd) ? cmd.join(" ") : cmd;
  return t.length > 80 ? t.slice(0, 77) + "..." : t;
}

/** How long the exchange of a command may last: its timeout and a margin, or a day. */
function exchangeTimeout(t?: number): number {
  return t && t > 0 ? t + 30 : 86400;
}

function condition(obj: KubeObject, type: string): { status?: string; reason?: string; message?: string } | undefined {
  const conds = ((obj.status ?? {}) as { conditions?: { type: string; status?: string; reason?: string; message?: string }[] }).conditions ?? [];
  return conds.find((c) => c.type === type);
}

/** A command started by commands.start. */
export class Process {
  pid: number | null = null;
  processId: number | null = null;
  private out = "";
  private err = "";
  private result: ExecutionResult | null = null;
  private failure: SandboxError | null = null;
  private readonly finished: Promise<void>;
  readonly started: Promise<void>;
  private markStarted!: () => void;
  private running = true;

  constructor(private readonly commands: Commands, private readonly what: string, private readonly opts: RunOptions, stream: AsyncGenerator<string>, close: () => void) {
    this.started = new Promise((r) => (this.markStarted = r));
    this.finished = this.pump(stream, close);
  }

  private async pump(stream: AsyncGenerator<string>, close: () => void): Promise<void> {
    try {
      for await (const line of stream) {
        if (!line.trim()) continue;
        const ev = JSON.parse(line) as { type: string; data?: string; pid?: number; process_id?: number; exit_code?: number; signal?: unknown; timed_out?: boolean; truncated?: boolean; duration_ms?: number };
        if (ev.type === "start") {
          this.pid = ev.pid ?? null;
          this.processId = ev.process_id ?? null;
          this.markStarted();
        } else if (ev.type === "stdout") {
          this.out += ev.data ?? "";
          this.opts.onStdout?.(ev.data ?? "");
        } else if (ev.type === "stderr") {
          this.err += ev.data ?? "";
          this.opts.onStderr?.(ev.data ?? "");
        } else if (ev.type === "exit") {
          this.result = {
            stdout: this.out, stderr: this.err, exitCode: ev.exit_code ?? -1, signal: ev.signal == null ? null : String(ev.signal),
            timedOut: !!ev.timed_out, truncated: !!ev.truncated, durationMs: ev.duration_ms ?? 0, pid: this.pid,
          };
        }
      }
      if (!this.result) this.failure = new SandboxStreamError(`${this.what}: the output stream ended without an exit event; the sandbox may have been deleted or restarted (see status())`);
    } catch (e) {
      if (!this.result) {
        if (e instanceof TransportError && e.kind === "timeout") this.failure = new SandboxTimeoutError(`${this.what}: no exit within ${exchangeTimeout(this.opts.timeout)} s; pass a larger timeout`, { cause: e });
        else if (e instanceof TransportError && e.kind === "aborted") this.failure = new SandboxTimeoutError(`${this.what}: aborted by the caller; the command was killed`, { cause: e });
        else if (e instanceof SyntaxError) this.failure = new SandboxStreamError(`${this.what}: an event of the output stream is not JSON: ${e.message}`, { cause: e });
        else if (e instanceof SandboxError) this.failure = e;
        else this.failure = new SandboxStreamError(`${this.what}: lost the connection to the output stream: ${(e as Error).message}; the process was killed with it`, { cause: e });
      }
    } finally {
      this.running = false;
      this.markStarted();
      close();
    }
  }

  get stdout(): string {
    return this.out;
  }

  get stderr(): string {
    return this.err;
  }

  isRunning(): boolean {
    return this.running;
  }

  /** Waits for the end; a process past its own timeout throws CommandTimeoutError with the result. */
  async wait(): Promise<ExecutionResult> {
    await this.finished;
    if (this.failure) throw this.failure;
    const r = this.result!;
    if (r.timedOut) throw new CommandTimeoutError(`${this.what}: ran past its timeout of ${this.opts.timeout} s and was killed; the output so far is in result`, r);
    return r;
  }

  /** Sends a signal (SIGKILL by default) to the process group. */
  async kill(signal = "SIGKILL"): Promise<void> {
    await this.started;
    if (!this.running || this.processId === null) return;
    await this.commands.kill(this.processId, signal);
  }
}

/** Commands of a sandbox over sandboxd's /v2/exec. */
export class Commands {
  constructor(private readonly sb: Sandbox) {}

  /** Runs a command (a string under /bin/sh -c, an array directly) and waits for it. A non-zero exit is not an error. */
  async run(command: string | string[], opts: RunOptions = {}): Promise<ExecutionResult> {
    return (await this.startProcess(command, opts)).wait();
  }

  /** Runs a command in the background; output is collected (and passed to the callbacks) as it comes. */
  async start(command: string | string[], opts: RunOptions = {}): Promise<Process> {
    const p = await this.startProcess(command, opts);
    await p.started;
    return p;
  }

  private async startProcess(command: string | string[], opts: RunOptions): Promise<Process> {
    if ((Array.isArray(command) && command.length === 0) || (!Array.isArray(command) && !command.trim())) throw new SandboxConfigError("the command is empty");
    if (opts.timeout !== undefined && !(opts.timeout > 0)) throw new SandboxConfigError(`timeout must be positive, not ${opts.timeout}`);
    const body: Record<string, unknown> = { command };
    if (opts.env) body.env = opts.env;
    if (opts.cwd) body.cwd = opts.cwd;
    if (opts.stdin !== undefined) body.stdin = opts.stdin;
    if (opts.timeout) body.timeout = opts.timeout;
    if (opts.maxOutputBytes) body.max_output_bytes = opts.maxOutputBytes;
    const what = `running ${JSON.stringify(describe(command))} in sandbox ${this.sb.namespace}/${this.sb.name}`;
    const res = await this.sb.dp.send({
      method: "POST", path: "/v2/exec", body: JSON.stringify(body), what, signal: opts.signal,
      headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" }, timeout: exchangeTimeout(opts.timeout),
    });
    return new Process(this, what, opts, lines(res.stream), () => res.close());
  }

  /** The processes sandboxd runs. */
  async list(): Promise<ProcessInfo[]> {
    const what = `listing processes of sandbox ${this.sb.namespace}/${this.sb.name}`;
    const res = await this.sb.dp.send({ method: "GET", path: "/v2/processes", what });
    return (await readJSON<{ processes: ProcessInfo[] }>(res, what)).processes;
  }

  /** Sends a signal (SIGKILL by default) to sandboxd's process id. */
  async kill(processId: number, signal = "SIGKILL"): Promise<void> {
    const sig = signal.toUpperCase().startsWith("SIG") ? signal.toUpperCase() : `SIG${signal.toUpperCase()}`;
    const res = await this.sb.dp.send({
      method: "POST", path: `/v2/processes/${processId}/signal`, body: JSON.stringify({ signal: sig }),
      headers: { "Content-Type": "application/json" }, what: `sending ${sig} to process ${processId} of sandbox ${this.sb.namespace}/${this.sb.name}`,
    });
    res.close();
  }
}

/** Files of a sandbox over sandboxd's /v1/files (relative paths start at its work directory). */
export class Files {
  constructor(private readonly sb: Sandbox) {}

  private what(verb: string, p: string): string {
    return `${verb} ${p} in sandbox ${this.sb.namespace}/${this.sb.name}`;
  }

  /** Writes a file atomically (parents are created); mode like "0644". */
  async write(path: string, content: string | Uint8Array, opts: FileOptions & { mode?: string } = {}): Promise<void> {
    const p = checkPath(path);
    if (opts.mode !== undefined && !/^0[0-7]{3}$/.test(opts.mode)) throw new SandboxConfigError(`file mode ${JSON.stringify(opts.mode)} is not an octal mode like 0644`);
    const res = await this.sb.dp.send({
      method: "PUT", path: p, query: opts.mode ? { mode: opts.mode } : undefined, body: typeof content === "string" ? content : Buffer.from(content),
      headers: { "Content-Type": "application/octet-stream" }, timeout: opts.timeout, signal: opts.signal, what: this.what("writing", path),
    });
    res.close();
  }

  /** The content of a file. */
  async read(path: string, opts: FileOptions = {}): Promise<Buffer> {
    const what = this.what("reading", path);
    const res = await this.sb.dp.send({ method: "GET", path: checkPath(path), timeout: opts.timeout, signal: opts.signal, what });
    if (String(res.headers["content-type"] ?? "").startsWith("application/json")) {
      res.close();
      throw new SandboxRequestError(`${what}: ${path} is a directory; use list()`, { statusCode: 400, code: "IS_A_DIRECTORY" });
    }
    const expected = Number(res.headers["content-length"] ?? -1);
    const limit = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    const tooLarge = (): SandboxTooLargeError => new SandboxTooLargeError(`${what}: ${path} is larger than the limit of ${limit} bytes (maxBytes); pass a larger limit or read it in parts`);
    if (expected > limit) {
      res.close();
      throw tooLarge();
    }
    let data: Buffer;
    try {
      data = await res.read(limit + 1);
    } catch (e) {
      throw new SandboxStreamError(`${what}: the transfer was cut off: ${(e as Error).message}; read it again`, { cause: e });
    }
    if (data.length > limit) throw tooLarge();
    if (expected >= 0 && data.length !== expected) throw new SandboxStreamError(`${what}: got ${data.length} of ${expected} bytes; read it again`);
    return data;
  }

  /** The entries of a directory, sorted by name. */
  async list(path = ".", opts: FileOptions = {}): Promise<FileEntry[]> {
    const what = this.what("listing", path);
    const res = await this.sb.dp.send({ method: "GET", path: checkPath(path), timeout: opts.timeout, signal: opts.signal, what });
    if (!String(res.headers["content-type"] ?? "").startsWith("application/json")) {
      res.close();
      throw new SandboxRequestError(`${what}: ${path} is a file, not a directory; use read()`, { statusCode: 400, code: "NOT_A_DIRECTORY" });
    }
    const j = await readJSON<{ entries: { name: string; size: number; type: "file" | "directory"; modified_at?: string; mode: string }[] }>(res, what);
    return j.entries.map((e) => ({ name: e.name, size: e.size, type: e.type, mode: e.mode, modified: e.modified_at ? new Date(e.modified_at) : null }));
  }

  /** Whether a path exists (a file or a directory). */
  async exists(path: string, opts: FileOptions = {}): Promise<boolean> {
    const res = await this.sb.dp.send({ method: "HEAD", path: checkPath(path), ok: [200, 404], timeout: opts.timeout, signal: opts.signal, what: this.what("checking", path) });
    res.close();
    return res.status === 200;
  }

  /** Removes a path; a non-empty directory needs recursive. */
  async delete(path: string, opts: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    const res = await this.sb.dp.send({
      method: "DELETE", path: checkPath(path), query: opts.recursive ? { recursive: "true" } : undefined,
      timeout: opts.timeout, signal: opts.signal, what: this.what("deleting", path),
    });
    res.close();
  }
}

/** A persistent interpreter of runCode. */
export interface CodeContext {
  id: string;
  language: string;
  cwd: string | null;
  created_at: string;
  execution_count: number;
  pid: number | null;
}

/** The interpreter contexts of a sandbox (sandboxd's /v2/code/contexts). */
export class Code {
  constructor(private readonly sb: Sandbox) {}

  /** Starts an interpreter of the language. */
  async createContext(language: "python" | "javascript" | "bash" = "python", opts: { id?: string; cwd?: string; env?: Record<string, string> } = {}): Promise<CodeContext> {
    const what = `creating a ${language} code context in sandbox ${this.sb.namespace}/${this.sb.name}`;
    const res = await this.sb.dp.send({ method: "POST", path: "/v2/code/contexts", body: JSON.stringify({ language, ...opts }), headers: { "Content-Type": "application/json" }, what });
    return readJSON<CodeContext>(res, what);
  }

  async listContexts(): Promise<CodeContext[]> {
    const what = `listing code contexts of sandbox ${this.sb.namespace}/${this.sb.name}`;
    const res = await this.sb.dp.send({ method: "GET", path: "/v2/code/contexts", what });
    return (await readJSON<{ contexts: CodeContext[] }>(res, what)).contexts;
  }

  private async call(method: string, id: string, verb: string, suffix = ""): Promise<void> {
    const res = await this.sb.dp.send({ method, path: `/v2/code/contexts/${encodeURIComponent(id)}${suffix}`, what: `${verb} code context ${id} of sandbox ${this.sb.namespace}/${this.sb.name}` });
    res.close();
  }

  deleteContext(id: string): Promise<void> {
    return this.call("DELETE", id, "deleting");
  }

  /** Interrupts the running cell (the state stays). */
  interrupt(id: string): Promise<void> {
    return this.call("POST", id, "interrupting", "/interrupt");
  }

  /** A fresh interpreter (the state is lost). */
  restart(id: string): Promise<void> {
    return this.call("POST", id, "restarting", "/restart");
  }
}

export interface PtyOptions {
  /** A shell command line (default: an interactive bash or sh). */
  command?: string;
  cols?: number;
  rows?: number;
  cwd?: string;
  onData?: (data: Buffer) => void;
}

/** A PTY session over sandboxd's /v2/pty WebSocket. */
export class Terminal {
  private buf = Buffer.alloc(0);
  private exitCode: number | null = null;
  private failure: SandboxError | null = null;
  private waiters: (() => void)[] = [];
  private readonly closed: Promise<void>;

  constructor(private readonly ws: WebSocket, private readonly what: string, onData?: (d: Buffer) => void) {
    this.closed = new Promise((resolve) => {
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        if (isBinary) {
          onData?.(data);
          this.buf = Buffer.concat([this.buf, data]);
        } else {
          try {
            const m = JSON.parse(data.toString());
            if (m.type === "exit") this.exitCode = m.exit_code ?? -1;
          } catch {
            /* not a control message */
          }
        }
        this.wake();
      });
      ws.on("close", () => {
        if (this.exitCode === null && !this.failure) this.failure = new SandboxStreamError(`${this.what}: the terminal's connection ended before its exit message`);
        this.wake();
        resolve();
      });
      ws.on("error", (e) => {
        this.failure ??= new SandboxStreamError(`${this.what}: ${e.message}`, { cause: e });
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private next(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  write(data: string | Uint8Array): void {
    this.ws.send(typeof data === "string" ? Buffer.from(data) : data, { binary: true });
  }

  resize(cols: number, rows: number): void {
    this.ws.send(JSON.stringify({ type: "resize", cols, rows }));
  }

  sendSignal(signal: string): void {
    this.ws.send(JSON.stringify({ type: "signal", signal }));
  }

  /** Everything printed since the last readUntil. */
  get output(): string {
    return this.buf.toString();
  }

  /** Waits until the output contains marker; returns it up to and including the marker. */
  async readUntil(marker: string, timeoutSec = 10): Promise<string> {
    const deadline = Date.now() + timeoutSec * 1000;
    for (;;) {
      const i = this.buf.indexOf(marker);
      if (i >= 0) {
        const end = i + Buffer.byteLength(marker);
        const out = this.buf.subarray(0, end).toString();
        this.buf = this.buf.subarray(end);
        return out;
      }
      if (this.exitCode !== null || this.failure) throw new SandboxStreamError(`${this.what}: the terminal ended before printing ${JSON.stringify(marker)}; it printed ${JSON.stringify(this.buf.toString())}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new SandboxTimeoutError(`${this.what}: ${JSON.stringify(marker)} did not appear within ${timeoutSec} s; the output so far: ${JSON.stringify(this.buf.toString())}`);
      await this.next(left);
    }
  }

  /** Waits for the process to exit; its exit code. */
  async wait(timeoutSec = 30): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([this.closed.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutSec * 1000)))]);
    clearTimeout(timer);
    if (timedOut) throw new SandboxTimeoutError(`${this.what}: the terminal's process did not exit within ${timeoutSec} s`);
    if (this.exitCode === null) throw this.failure ?? new SandboxStreamError(`${this.what}: the terminal closed without an exit message`);
    return this.exitCode;
  }

  close(): void {
    this.ws.close();
  }
}

/** A handle on one sandbox. */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  readonly code: Code;
  /** @internal */
  readonly dp: DataPlane;
  podIP: string | null;
  private active = true;
  private podNameCache: string | null = null;

  /** @internal Made by SandboxClient. */
  constructor(private readonly plane: Plane & { forget(ns: string, claim: string): void }, readonly claimName: string | null, readonly name: string, readonly namespace: string, podIP: string | null) {
    this.podIP = podIP;
    this.commands = new Commands(this);
    this.files = new Files(this);
    this.code = new Code(this);
    this.dp = new DataPlane(plane, this);
  }

  get isActive(): boolean {
    return this.active;
  }

  /** @internal */
  requireActive(): void {
    if (!this.active) throw new SandboxNotReadyError(`this handle on sandbox ${this.namespace}/${this.name} is closed (terminated or closed); get a new one with client.getSandbox() or createSandbox()`);
  }

  private async getSandbox(): Promise<KubeObject> {
    try {
      return await this.plane.resolved.kube.get("sandboxes", this.namespace, this.name, `reading Sandbox ${this.namespace}/${this.name}`);
    } catch (e) {
      if (e instanceof SandboxNotFoundError) throw new SandboxNotFoundError(`Sandbox ${this.namespace}/${this.name} does not exist (any more)`, { cause: e });
      throw e;
    }
  }

  /** @internal */
  async refreshPodIP(): Promise<string | null> {
    let sb: KubeObject;
    try {
      sb = await this.getSandbox();
    } catch (e) {
      if (e instanceof SandboxNotFoundError) {
        this.podIP = null; // never send a stale address again: the router would try it
        throw new SandboxNotReadyError(`sandbox ${this.namespace}/${this.name} does not exist (any more); claim a new one`, { cause: e });
      }
      throw e;
    }
    this.podIP = podIPOf((sb.status as { podIPs?: unknown } | undefined)?.podIPs);
    return this.podIP;
  }

  /** [SandboxReady | SandboxNotReady | SandboxNotFound, the Ready condition's message]. */
  async status(): Promise<[string, string]> {
    let sb: KubeObject;
    try {
      sb = await this.getSandbox();
    } catch (e) {
      if (e instanceof SandboxNotFoundError) return [StatusNotFound, e.message];
      throw e;
    }
    const c = condition(sb, "Ready");
    if (!c) return [StatusNotReady, "the Sandbox has no Ready condition yet"];
    return [c.status === "True" ? StatusReady : StatusNotReady, c.message ?? ""];
  }

  /** The Pod's name (its pod-name annotation, else the Sandbox's name). */
  async podName(): Promise<string> {
    if (!this.podNameCache) {
      const sb = await this.getSandbox();
      this.podNameCache = sb.metadata.annotations?.["agents.x-k8s.io/pod-name"] ?? this.name;
    }
    return this.podNameCache;
  }

  /** Runs a command; see Commands.run. */
  run(command: string | string[], opts: RunOptions = {}): Promise<ExecutionResult> {
    return this.commands.run(command, opts);
  }

  /** Runs a code cell; state persists in its context. An exception in the cell is result.error, not a throw. Past timeout: CommandTimeoutError (the context keeps its state). */
  async runCode(code: string, opts: RunCodeOptions = {}): Promise<CodeResult> {
    const lang = opts.language ?? "python";
    const body: Record<string, unknown> = { code, language: lang };
    if (opts.context) body.context = opts.context;
    if (opts.timeout) body.timeout = opts.timeout;
    if (opts.maxOutputBytes) body.max_output_bytes = opts.maxOutputBytes;
    const what = `running a ${lang} cell in sandbox ${this.namespace}/${this.name}`;
    const res = await this.dp.send({
      method: "POST", path: "/v2/code/run", body: JSON.stringify(body), what, signal: opts.signal,
      headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" }, timeout: exchangeTimeout(opts.timeout),
    });
    const r: CodeResult = { stdout: "", stderr: "", results: [], result: null, error: null, status: "", context: "", executionCount: 0, truncated: false, durationMs: 0 };
    let ended = false;
    try {
      for await (const line of lines(res.stream)) {
        if (!line.trim()) continue;
        const ev = JSON.parse(line);
        if (ev.type === "stdout") {
          r.stdout += ev.data;
          opts.onStdout?.(ev.data);
        } else if (ev.type === "stderr") {
          r.stderr += ev.data;
          opts.onStderr?.(ev.data);
        } else if (ev.type === "result") {
          r.results.push({ text: ev.text, data: ev.data });
          r.result = ev.text;
        } else if (ev.type === "error") {
          r.error = { name: ev.name, value: ev.value, traceback: ev.traceback };
        } else if (ev.type === "end") {
          Object.assign(r, { status: ev.status, context: ev.context, executionCount: ev.execution_count, truncated: !!ev.truncated, durationMs: ev.duration_ms ?? 0 });
          ended = true;
        }
      }
    } catch (e) {
      if (e instanceof TransportError && e.kind !== "reset") throw this.dp.transportError(e, what, exchangeTimeout(opts.timeout));
      throw new SandboxStreamError(`${what}: lost the connection to the output stream: ${(e as Error).message}`, { cause: e });
    } finally {
      res.close();
    }
    if (!ended) throw new SandboxStreamError(`${what}: the output stream ended without an end event; the sandbox may have been deleted or restarted (see status())`);
    if (r.status === "timeout") throw new CommandTimeoutError(`${what}: ran past its timeout of ${opts.timeout} s and was interrupted (the context keeps its state)`);
    return r;
  }

  /** Opens a terminal; close() it when done. */
  async pty(o: PtyOptions = {}): Promise<Terminal> {
    this.requireActive();
    const q = new URLSearchParams();
    if (o.command) q.set("command", o.command);
    if (o.cols) q.set("cols", String(o.cols));
    if (o.rows) q.set("rows", String(o.rows));
    if (o.cwd) q.set("cwd", o.cwd);
    const what = `opening a terminal in sandbox ${this.namespace}/${this.name}`;
    const { url, viaRouter } = await this.dp.base();
    const headers: Record<string, string> = { "User-Agent": USER_AGENT };
    if (viaRouter) this.dp.routerHeaders(headers, 0);
    const wsUrl = url.replace(/^http/, "ws") + "/v2/pty" + (q.size ? `?${q}` : "");
    const timeout = this.plane.resolved.opts.requestTimeout;
    const ws = new WebSocket(wsUrl, { headers, handshakeTimeout: timeout * 1000 });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("unexpected-response", (_req, res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => reject(this.dp.httpError(res.statusCode ?? 0, Buffer.concat(chunks), what)));
      });
      ws.once("error", (e) => reject(this.dp.transportError(e, what, timeout)));
    });
    return new Terminal(ws, what, o.onData);
  }

  /** Whether spec.operatingMode is Suspended. */
  async isSuspended(): Promise<boolean> {
    const sb = await this.getSandbox();
    return (sb.spec as { operatingMode?: string } | undefined)?.operatingMode === "Suspended";
  }

  private async waitCondition(type: string, timeoutSec: number, what: string, needIP: boolean): Promise<KubeObject> {
    const deadline = Date.now() + timeoutSec * 1000;
    const kube = this.plane.resolved.kube;
    const done = (o: KubeObject): boolean => condition(o, type)?.status === "True" && (!needIP || !!podIPOf((o.status as { podIPs?: unknown } | undefined)?.podIPs));
    let last = await this.getSandbox();
    while (Date.now() < deadline) {
      if (done(last)) return last;
      for await (const ev of kube.watch("sandboxes", this.namespace, this.name, last.metadata.resourceVersion, deadline, `watching Sandbox ${this.namespace}/${this.name}`)) {
        if (ev.type === "DELETED") throw new SandboxNotFoundError(`Sandbox ${this.namespace}/${this.name} was deleted during ${what}`);
        if (ev.type === "ERROR") break;
        if (ev.type === "BOOKMARK") continue;
        last = ev.object;
        if (done(last)) return last;
      }
      if (Date.now() >= deadline) break;
      last = await this.getSandbox();
    }
    const c = condition(last, type);
    throw new SandboxTimeoutError(`${what} of Sandbox ${this.namespace}/${this.name} did not complete within ${timeoutSec} s (last ${type} condition: ${c?.reason ?? "none"} ${c?.message ?? ""}); check \`kubectl describe sandbox ${this.name} -n ${this.namespace}\``);
  }

  /** Suspends: the Pod goes, volumes stay. Resolves once the Sandbox reports Suspended. */
  async suspend(timeoutSec = 120): Promise<void> {
    await this.plane.resolved.kube.mergePatch("sandboxes", this.namespace, this.name, { spec: { operatingMode: "Suspended" } }, `suspending Sandbox ${this.namespace}/${this.name}`);
    this.podIP = null;
    await this.waitCondition("Suspended", timeoutSec, "suspend", false);
  }

  /** Resumes; resolves once the Sandbox is Ready with a pod IP and sandboxd answers. */
  async resume(timeoutSec = 180): Promise<void> {
    const deadline = Date.now() + timeoutSec * 1000;
    await this.plane.resolved.kube.mergePatch("sandboxes", this.namespace, this.name, { spec: { operatingMode: "Running" } }, `resuming Sandbox ${this.namespace}/${this.name}`);
    const sb = await this.waitCondition("Ready", timeoutSec, "resume", true);
    this.podIP = podIPOf((sb.status as { podIPs?: unknown } | undefined)?.podIPs);
    this.podNameCache = null;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      try {
        const res = await this.dp.send({ method: "GET", path: "/v1/health", what: "checking sandboxd", timeout: 5 });
        res.close();
        return;
      } catch (e) {
        lastErr = e;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new SandboxTimeoutError(`sandbox ${this.namespace}/${this.name} is Ready but sandboxd did not answer within ${timeoutSec} s of resuming (last: ${(lastErr as Error)?.message}); see its logs`);
  }

  /** Stops using this handle; the sandbox keeps running. */
  close(): void {
    this.active = false;
  }

  /** Deletes the claim (and with it the sandbox) and closes the handle. Idempotent. */
  async terminate(): Promise<void> {
    this.active = false;
    if (!this.claimName) return;
    await this.plane.resolved.kube.delete("sandboxclaims", this.namespace, this.claimName, `deleting claim ${this.namespace}/${this.claimName}`);
    this.plane.forget(this.namespace, this.claimName);
  }
}
