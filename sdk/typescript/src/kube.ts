// The Kubernetes API, spoken with plain HTTPS and the kubeconfig's credentials (server, CA,
// bearer token or token file, client certificate, insecure-skip-tls-verify): get, create,
// merge-patch, delete, list and watch of the sandbox resources, and the translation of API
// errors into this package's errors.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { AgentOptions } from "node:https";
import * as https from "node:https";
import { parse as parseYaml } from "yaml";
import { SandboxConfigError, SandboxConnectionError, SandboxError, SandboxNotFoundError, SandboxRequestError, SandboxTimeoutError } from "./errors.js";
import { lines, request, TransportError } from "./http.js";

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace?: string; resourceVersion?: string; uid?: string; labels?: Record<string, string>; annotations?: Record<string, string>; deletionTimestamp?: string };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
  [k: string]: unknown;
}

export interface KubeCredentials {
  server: string;
  token?: string;
  tokenFile?: string;
  tls: AgentOptions;
  source: string;
}

const RESOURCES: Record<string, string> = {
  sandboxes: "/apis/agents.x-k8s.io/v1beta1",
  sandboxclaims: "/apis/extensions.agents.x-k8s.io/v1beta1",
  sandboxtemplates: "/apis/extensions.agents.x-k8s.io/v1beta1",
  sandboxwarmpools: "/apis/extensions.agents.x-k8s.io/v1beta1",
  pods: "/api/v1",
  services: "/api/v1",
};

function readMaybe(file: string | undefined, base: string): Buffer | undefined {
  if (!file) return undefined;
  return fs.readFileSync(path.isAbsolute(file) ? file : path.join(base, file));
}

function b64(s: string | undefined): Buffer | undefined {
  return s ? Buffer.from(s, "base64") : undefined;
}

/** Loads a kubeconfig file (default: the first of $KUBECONFIG, else ~/.kube/config). */
export function loadKubeconfig(file?: string, context?: string): KubeCredentials {
  const candidates = file ? [file] : (process.env.KUBECONFIG ? process.env.KUBECONFIG.split(path.delimiter).filter(Boolean) : [path.join(os.homedir(), ".kube", "config")]);
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) {
    throw new SandboxConfigError(`no kubeconfig: ${candidates.join(", ")} does not exist; pass kubeconfig=, the dataDir of a running \`agent-sandbox up\`, or set KUBECONFIG`);
  }
  let doc: any;
  try {
    doc = parseYaml(fs.readFileSync(found, "utf8"));
  } catch (e) {
    throw new SandboxConfigError(`cannot read the kubeconfig ${found}: ${(e as Error).message}`, { cause: e });
  }
  const base = path.dirname(found);
  const ctxName: string | undefined = context ?? doc?.["current-context"];
  const ctx = (doc?.contexts ?? []).find((c: any) => c?.name === ctxName)?.context ?? (doc?.contexts?.[0]?.context);
  const cluster = (doc?.clusters ?? []).find((c: any) => c?.name === ctx?.cluster)?.cluster ?? doc?.clusters?.[0]?.cluster;
  const user = (doc?.users ?? []).find((u: any) => u?.name === ctx?.user)?.user ?? {};
  if (!cluster?.server) {
    throw new SandboxConfigError(`the kubeconfig ${found} names no cluster server for context ${ctxName ?? "(none)"}`);
  }
  if (user.exec || user["auth-provider"]) {
    throw new SandboxConfigError(`the kubeconfig ${found}: credential plugins (exec, auth-provider) are not supported by this SDK; use a token or a client certificate`);
  }
  try {
    const tls: AgentOptions = {
      ca: b64(cluster["certificate-authority-data"]) ?? readMaybe(cluster["certificate-authority"], base),
      cert: b64(user["client-certificate-data"]) ?? readMaybe(user["client-certificate"], base),
      key: b64(user["client-key-data"]) ?? readMaybe(user["client-key"], base),
      rejectUnauthorized: !cluster["insecure-skip-tls-verify"],
      servername: cluster["tls-server-name"],
    };
    return { server: String(cluster.server).replace(/\/+$/, ""), token: user.token, tokenFile: user.tokenFile ? path.resolve(base, user.tokenFile) : undefined, tls, source: found };
  } catch (e) {
    throw new SandboxConfigError(`the kubeconfig ${found} names a file that cannot be read: ${(e as Error).message}`, { cause: e });
  }
}

/** In a Pod: the service account. */
export function inClusterCredentials(): KubeCredentials {
  const dir = "/var/run/secrets/kubernetes.io/serviceaccount";
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? "443";
  if (!host) throw new SandboxConfigError("not inside a Kubernetes Pod (KUBERNETES_SERVICE_HOST is unset)");
  const h = host.includes(":") ? `[${host}]` : host;
  return { server: `https://${h}:${port}`, tokenFile: path.join(dir, "token"), tls: { ca: fs.readFileSync(path.join(dir, "ca.crt")) }, source: "the in-cluster service account" };
}

export type WatchEvent = { type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR"; object: KubeObject };

export class KubeApi {
  private readonly agent: https.Agent | undefined;

  constructor(readonly creds: KubeCredentials, readonly hint = "") {
    this.agent = creds.server.startsWith("https:") ? new https.Agent({ keepAlive: true, ...creds.tls }) : undefined;
  }

  close(): void {
    this.agent?.destroy();
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { Accept: "application/json", "User-Agent": "agent-sandbox-sdk-typescript", ...extra };
    let token = this.creds.token;
    if (!token && this.creds.tokenFile) token = fs.readFileSync(this.creds.tokenFile, "utf8").trim();
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  path(resource: string, namespace: string | null, name?: string, sub?: string): string {
    const base = RESOURCES[resource];
    if (!base) throw new SandboxConfigError(`unknown resource ${resource}`);
    let p = base + (namespace ? `/namespaces/${encodeURIComponent(namespace)}` : "") + `/${resource}`;
    if (name) p += `/${encodeURIComponent(name)}`;
    if (sub) p += `/${sub}`;
    return p;
  }

  /** Turns a failure into an error about `what`. */
  private transportError(e: unknown, what: string): SandboxError {
    if (e instanceof TransportError && e.kind === "timeout") return new SandboxTimeoutError(`${what}: the API server at ${this.creds.server} did not answer in time`, { cause: e });
    if (e instanceof TransportError && e.kind === "aborted") return new SandboxTimeoutError(`${what}: aborted by the caller`, { cause: e });
    const msg = `${what}: cannot reach the API server at ${this.creds.server}: ${(e as Error).message}.` + (this.hint ? ` ${this.hint}` : "");
    return new SandboxConnectionError(msg, { cause: e });
  }

  private statusError(status: number, body: Buffer, what: string): SandboxError {
    let message = body.toString("utf8").trim();
    let reason: string | undefined;
    try {
      const j = JSON.parse(message);
      message = j.message ?? message;
      reason = j.reason;
    } catch {
      /* not a Status */
    }
    if (status === 404) return new SandboxNotFoundError(`${what}: 404 ${message}`, { statusCode: 404, code: reason });
    let text = `${what}: ${status} ${message}`;
    if (status === 401) text += "; the API server rejected the credentials: check the kubeconfig's token";
    if (status === 403) text += "; the kubeconfig's user may not do this: check its RBAC permissions";
    return new SandboxRequestError(text, { statusCode: status, code: reason });
  }

  async call<T = KubeObject>(method: string, p: string, what: string, body?: unknown, opts: { timeoutMs?: number; signal?: AbortSignal; contentType?: string } = {}): Promise<T> {
    const headers = this.headers(body === undefined ? {} : { "Content-Type": opts.contentType ?? "application/json" });
    let res;
    try {
      res = await request(this.creds.server + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), timeoutMs: opts.timeoutMs ?? 30000, signal: opts.signal, agent: this.agent });
    } catch (e) {
      throw this.transportError(e, what);
    }
    const data = await res.read();
    if (res.status >= 400) throw this.statusError(res.status, data, what);
    return JSON.parse(data.toString("utf8")) as T;
  }

  get(resource: string, ns: string | null, name: string, what?: string, signal?: AbortSignal): Promise<KubeObject> {
    return this.call("GET", this.path(resource, ns, name), what ?? `reading ${resource} ${ns}/${name}`, undefined, { signal });
  }

  list(resource: string, ns: string | null, query = "", what?: string): Promise<{ items: KubeObject[]; metadata: { resourceVersion?: string } }> {
    return this.call("GET", this.path(resource, ns) + (query ? `?${query}` : ""), what ?? `listing ${resource}`);
  }

  create(resource: string, ns: string, obj: unknown, what: string, signal?: AbortSignal): Promise<KubeObject> {
    return this.call("POST", this.path(resource, ns), what, obj, { signal });
  }

  mergePatch(resource: string, ns: string, name: string, patch: unknown, what: string): Promise<KubeObject> {
    return this.call("PATCH", this.path(resource, ns, name), what, patch, { contentType: "application/merge-patch+json" });
  }

  async delete(resource: string, ns: string, name: string, what: string): Promise<void> {
    try {
      await this.call("DELETE", this.path(resource, ns, name), what, { kind: "DeleteOptions", apiVersion: "v1", propagationPolicy: "Background" });
    } catch (e) {
      if (!(e instanceof SandboxNotFoundError)) throw e;
    }
  }

  /** Watches one object by name from resourceVersion; ends at the deadline or when the server ends the watch. */
  async *watch(resource: string, ns: string, name: string, resourceVersion: string | undefined, deadline: number, what: string, signal?: AbortSignal): AsyncGenerator<WatchEvent> {
    const left = deadline - Date.now();
    if (left <= 0) return;
    const q = new URLSearchParams({ watch: "true", fieldSelector: `metadata.name=${name}`, allowWatchBookmarks: "true", timeoutSeconds: String(Math.max(1, Math.ceil(left / 1000))) });
    if (resourceVersion) q.set("resourceVersion", resourceVersion);
    let res;
    try {
      res = await request(this.creds.server + this.path(resource, ns) + `?${q}`, { method: "GET", headers: this.headers(), timeoutMs: left, signal, agent: this.agent });
    } catch (e) {
      if (e instanceof TransportError && e.kind === "timeout") return;
      throw this.transportError(e, what);
    }
    if (res.status >= 400) throw this.statusError(res.status, await res.read(), what);
    try {
      for await (const line of lines(res.stream)) {
        if (!line.trim()) continue;
        yield JSON.parse(line) as WatchEvent;
      }
    } catch (e) {
      if (e instanceof TransportError && e.kind === "timeout") return;
      if (e instanceof TransportError && e.kind === "aborted") throw this.transportError(e, what);
      return; // the watch broke: the caller reads the object again
    } finally {
      res.close();
    }
  }
}
