// Requests to one sandbox: where they go (the router with its token and the X-Sandbox-*
// headers, the pod IP, or the port-forward tunnel), with a bounded time, and failures and
// error answers turned into errors that say what to do.

import type { IncomingMessage } from "node:http";
import { SandboxConnectionError, SandboxError, SandboxNotReadyError, SandboxPathError, SandboxRequestError, SandboxTimeoutError } from "./errors.js";
import { request, TransportError, type HttpResponse } from "./http.js";
import type { Resolved } from "./options.js";
import type { PortForward } from "./portforward.js";

export const USER_AGENT = "agent-sandbox-sdk-typescript";

export interface SendOptions {
  method: string;
  path: string;
  query?: Record<string, string>;
  body?: Buffer | string;
  headers?: Record<string, string>;
  /** Seconds (0 or undefined: the client's requestTimeout). */
  timeout?: number;
  what: string;
  ok?: number[];
  signal?: AbortSignal;
}

/** What a Sandbox handle needs of its client. */
export interface Plane {
  resolved: Resolved;
  tunnel: PortForward | null;
}

export interface Target {
  name: string;
  namespace: string;
  podIP: string | null;
  refreshPodIP(): Promise<string | null>;
  requireActive(): void;
}

export function podIPOf(ips: unknown): string | null {
  let best: string | null = null;
  for (const v of Array.isArray(ips) ? ips : []) {
    let ip = typeof v === "string" ? v : (v as { ip?: string } | null)?.ip;
    if (!ip) continue;
    ip = ip.trim();
    if (ip.toLowerCase().startsWith("::ffff:") && ip.includes(".")) ip = ip.slice(7);
    if (!ip.includes(":")) return ip;
    best ??= ip;
  }
  return best;
}

export class DataPlane {
  constructor(private readonly plane: Plane, private readonly t: Target) {}

  private get r(): Resolved {
    return this.plane.resolved;
  }

  async base(): Promise<{ url: string; viaRouter: boolean }> {
    const r = this.r;
    if (r.mode === "router") return { url: r.routerUrl, viaRouter: true };
    if (r.mode === "port-forward") return { url: `http://127.0.0.1:${await this.plane.tunnel!.localPort()}`, viaRouter: true };
    let ip = this.t.podIP;
    if (!ip) ip = await this.t.refreshPodIP();
    if (!ip) throw new SandboxNotReadyError(`sandbox ${this.t.namespace}/${this.t.name} has no pod IP (suspended or not running); resume it or check status()`);
    return { url: `http://${ip.includes(":") ? `[${ip}]` : ip}:${r.opts.serverPort}`, viaRouter: false };
  }

  where(): string {
    const r = this.r;
    if (r.mode === "router") return `the sandbox router at ${r.routerUrl}`;
    if (r.mode === "port-forward") return `the sandbox router through a ${this.plane.tunnel!.describe()}`;
    return `sandbox ${this.t.namespace}/${this.t.name} at ${this.t.podIP}:${r.opts.serverPort}`;
  }

  routerHeaders(h: Record<string, string>, timeoutSec: number): void {
    const r = this.r;
    const tok = r.token.get();
    if (tok && r.mode === "router") h.Authorization = `Bearer ${tok}`;
    Object.assign(h, r.opts.extraHeaders ?? {});
    h["X-Sandbox-ID"] = this.t.name;
    h["X-Sandbox-Namespace"] = this.t.namespace;
    h["X-Sandbox-Port"] = String(r.opts.serverPort);
    if (this.t.podIP) h["X-Sandbox-Pod-IP"] = this.t.podIP;
    if (timeoutSec > 0 && Number.isFinite(timeoutSec) && timeoutSec < 365 * 86400) h["X-Sandbox-Timeout"] = String(Math.ceil(timeoutSec));
  }

  /** Sends; resolves with the response when its status is in `ok` (default 2xx). */
  async send(o: SendOptions): Promise<HttpResponse> {
    this.t.requireActive();
    const timeout = o.timeout && o.timeout > 0 ? o.timeout : this.r.opts.requestTimeout;
    const idempotent = ["GET", "HEAD", "PUT", "DELETE"].includes(o.method);
    for (let attempt = 0; ; attempt++) {
      let res: HttpResponse;
      try {
        res = await this.once(o, timeout);
      } catch (e) {
        if (attempt === 0 && idempotent && e instanceof SandboxConnectionError && this.r.mode === "pod-ip") {
          const old = this.t.podIP;
          const ip = await this.t.refreshPodIP().catch(() => null);
          if (ip && ip !== old) continue;
        }
        throw e;
      }
      const okStatus = o.ok ? o.ok.includes(res.status) : res.status >= 200 && res.status < 300;
      if (okStatus) return res;
      const body = await res.read(64 << 10).catch(() => Buffer.alloc(0));
      // A pod IP that changed (a resume, a restart) shows as 502 from the router: retry once
      // with a fresh one when the request cannot have reached a sandbox.
      if (attempt === 0 && res.status === 502 && this.r.mode !== "pod-ip" && (idempotent || body.includes("Could not connect"))) {
        const old = this.t.podIP;
        let ip: string | null = null;
        try {
          ip = await this.t.refreshPodIP();
        } catch (e) {
          if (e instanceof SandboxNotReadyError) throw new SandboxNotReadyError(`${o.what}: ${e.message}`, { statusCode: 502 });
        }
        if (ip && ip !== old) continue;
      }
      throw this.httpError(res.status, body, o.what);
    }
  }

  private async once(o: SendOptions, timeoutSec: number): Promise<HttpResponse> {
    const { url, viaRouter } = await this.base();
    const q = o.query && Object.keys(o.query).length ? `?${new URLSearchParams(o.query)}` : "";
    const headers: Record<string, string> = { "User-Agent": USER_AGENT, ...(o.headers ?? {}) };
    if (viaRouter) this.routerHeaders(headers, timeoutSec);
    try {
      return await request(url + o.path + q, { method: o.method, headers, body: o.body, timeoutMs: timeoutSec * 1000, signal: o.signal });
    } catch (e) {
      throw this.transportError(e, o.what, timeoutSec);
    }
  }

  transportError(e: unknown, what: string, timeoutSec: number): SandboxError {
    if (e instanceof SandboxError) return e;
    if (e instanceof TransportError && e.kind === "timeout") {
      return new SandboxTimeoutError(`${what}: sandbox ${this.t.namespace}/${this.t.name} did not answer within ${timeoutSec} s; pass a larger timeout if the operation is slow`, { cause: e });
    }
    if (e instanceof TransportError && e.kind === "aborted") return new SandboxTimeoutError(`${what}: aborted by the caller`, { cause: e });
    if (this.r.mode === "port-forward") this.plane.tunnel!.reset();
    let msg = `${what}: cannot reach ${this.where()}: ${(e as Error).message}.`;
    if (this.r.hint) msg += ` ${this.r.hint}`;
    return new SandboxConnectionError(msg, { cause: e });
  }

  httpError(status: number, body: Buffer, what: string): SandboxError {
    let code: string | undefined;
    let message = body.toString("utf8").trim();
    try {
      const j = JSON.parse(message);
      if (j && typeof j === "object") {
        if ("detail" in j) {
          code = "ROUTER";
          message = String(j.detail);
        } else {
          code = typeof j.code === "string" ? j.code : undefined;
          message = typeof j.message === "string" && j.message ? j.message : message;
        }
      }
    } catch {
      /* not JSON */
    }
    if (status === 401 && !code && !message && this.r.mode !== "pod-ip") {
      code = "ROUTER"; // a HEAD answer has no body
      message = "Missing or invalid router token.";
    }
    if (status === 401 && code === "ROUTER") {
      message += " The router rejected the request's credentials: check the router token (routerToken or routerTokenFile, the routerTokenFile of endpoints.json, or the Authorization of extraHeaders).";
    } else if ((status === 502 || status === 503) && code === "ROUTER") {
      message += ` The sandbox ${this.t.namespace}/${this.t.name} is not answering: it may be suspended, restarting or gone; see status().`;
      return new SandboxNotReadyError(`${what}: ${status} ${message}`, { statusCode: status, code });
    } else if (status === 504) {
      message += " The sandbox did not answer in time; pass a larger timeout.";
    }
    return new SandboxRequestError(`${what}: ${status} ${message}`, { statusCode: status, code });
  }
}

export async function readJSON<T>(res: HttpResponse, what: string): Promise<T> {
  const b = await res.read();
  try {
    return JSON.parse(b.toString("utf8")) as T;
  } catch (e) {
    throw new SandboxRequestError(`${what}: the answer is not the JSON expected: ${(e as Error).message}`, { cause: e });
  }
}

export function checkPath(p: string): string {
  if (typeof p !== "string" || p === "" || p.includes("\0")) {
    throw new SandboxPathError(`a file path must be a non-empty string without NUL, not ${JSON.stringify(p)}`);
  }
  return `/v1/files/${encodeURIComponent(p)}`;
}

export type { IncomingMessage };
