// HTTP over node:http and node:https: one request with a bounded time and an abort signal,
// its answer either buffered or streamed line by line, and transport failures told apart
// (timeout, abort, no answer).

import * as http from "node:http";
import * as https from "node:https";
import type { IncomingMessage } from "node:http";

export interface HttpOptions {
  method: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Milliseconds for the whole exchange (headers and body). */
  timeoutMs: number;
  signal?: AbortSignal;
  agent?: http.Agent;
  /** TLS material for https. */
  tls?: https.AgentOptions;
}

/** Failure without an answer: kind says which. */
export class TransportError extends Error {
  constructor(readonly kind: "timeout" | "aborted" | "connect" | "reset", message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body as it arrives; ends with the exchange's timer cleared. */
  stream: IncomingMessage;
  /** Reads the body; past `limit` bytes it stops (what was read, a little over the limit, is returned). */
  read(limit?: number): Promise<Buffer>;
  /** Ends the exchange (the body is discarded). */
  close(): void;
}

const agents = { http: new http.Agent({ keepAlive: true, maxSockets: 64 }), https: new https.Agent({ keepAlive: true }) };

function classify(err: unknown, timedOut: boolean, aborted: boolean): TransportError {
  const e = err as NodeJS.ErrnoException;
  if (timedOut) return new TransportError("timeout", "timed out", { cause: err });
  if (aborted) return new TransportError("aborted", "aborted by the caller", { cause: err });
  if (e && (e.code === "ECONNRESET" || e.code === "EPIPE")) return new TransportError("reset", e.message, { cause: err });
  return new TransportError("connect", e?.message ?? String(err), { cause: err });
}

/** Sends a request; resolves when the response headers arrive. */
export function request(url: string, opts: HttpOptions): Promise<HttpResponse> {
  const u = new URL(url);
  const isHttps = u.protocol === "https:";
  const mod = isHttps ? https : http;
  let agent = opts.agent;
  if (!agent) agent = isHttps ? (opts.tls ? new https.Agent({ keepAlive: false, ...opts.tls }) : agents.https) : agents.http;
  return new Promise((resolve, reject) => {
    let timedOut = false;
    let aborted = false;
    let settled = false;
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.body !== undefined) headers["Content-Length"] = String(Buffer.byteLength(opts.body));
    const req = mod.request(u, { method: opts.method, headers, agent });
    const timer = setTimeout(() => {
      timedOut = true;
      req.destroy(new Error("timed out"));
    }, opts.timeoutMs);
    const onAbort = (): void => {
      aborted = true;
      req.destroy(new Error("aborted"));
    };
    if (opts.signal) {
      if (opts.signal.aborted) onAbort();
      else opts.signal.addEventListener("abort", onAbort, { once: true });
    }
    const cleanup = (): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    req.on("error", (err) => {
      if (!settled) {
        settled = true;
        cleanup();
        reject(classify(err, timedOut, aborted));
      }
    });
    req.on("response", (res) => {
      settled = true;
      res.on("close", cleanup);
      // Errors of the body are reported to its reader, classified.
      const origEmit = res.emit.bind(res);
      res.emit = ((event: string, ...args: unknown[]): boolean => {
        if (event === "error") return origEmit("error", classify(args[0], timedOut, aborted));
        return origEmit(event, ...args);
      }) as typeof res.emit;
      req.on("error", (err) => res.destroy(classify(err, timedOut, aborted)));
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        stream: res,
        read: async (limit = 64 << 20) => {
          const chunks: Buffer[] = [];
          let n = 0;
          for await (const c of res) {
            const b = c as Buffer;
            chunks.push(b);
            n += b.length;
            if (n > limit) break; // the rest is not wanted: the exchange ends here
          }
          return Buffer.concat(chunks);
        },
        close: () => {
          res.destroy();
          cleanup();
        },
      });
    });
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

/** Yields the lines of a streamed body (without the newline). */
export async function* lines(res: IncomingMessage): AsyncGenerator<string> {
  let buf = "";
  res.setEncoding("utf8");
  for await (const chunk of res) {
    buf += chunk as string;
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
  if (buf.length > 0) yield buf;
}
