// Options of a client and their resolution: where the API server is (an `agent-sandbox up`
// endpoints.json, a kubeconfig, or the service account) and how sandboxes are reached (the
// router with its token, pod IPs, or a port-forward through the API server).

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { SandboxConfigError, SandboxConnectionError } from "./errors.js";
import { inClusterCredentials, KubeApi, loadKubeconfig } from "./kube.js";

/** How requests reach a sandbox's runtime (sandboxd). */
export type Mode = "router" | "pod-ip" | "port-forward";

export interface ClientOptions {
  /** Data directory of a local `agent-sandbox up` (its endpoints.json). */
  dataDir?: string;
  /** A kubeconfig file (default: $KUBECONFIG, else ~/.kube/config). */
  kubeconfig?: string;
  /** The kubeconfig's context (default: the current one). */
  context?: string;
  /** How sandboxes are reached (default: "router" when a router URL is known, else "port-forward", or "pod-ip" inside a Pod). */
  mode?: Mode;
  /** The sandbox router, e.g. http://127.0.0.1:8080 (upstream's api_url). */
  routerUrl?: string;
  routerToken?: string;
  routerTokenFile?: string;
  /** Headers for the router (X-Sandbox-* are the SDK's and refused). */
  extraHeaders?: Record<string, string>;
  /** The router's Service for "port-forward" (default agent-sandbox-system / sandbox-router-svc). */
  routerNamespace?: string;
  routerService?: string;
  /** Namespace of claims (default "default"). */
  namespace?: string;
  /** sandboxd's REST port in the sandbox (default 8080). */
  serverPort?: number;
  /** Seconds CreateSandbox waits for a claim (default 180). */
  sandboxReadyTimeout?: number;
  /** Seconds each file and control request may take (default 60). */
  requestTimeout?: number;
  /** Seconds to start the port-forward tunnel (default 30). */
  portForwardReadyTimeout?: number;
}

export interface Resolved {
  kube: KubeApi;
  mode: Mode;
  routerUrl: string;
  token: TokenSource;
  hint: string;
  description: string;
  opts: Required<Pick<ClientOptions, "namespace" | "serverPort" | "sandboxReadyTimeout" | "requestTimeout" | "portForwardReadyTimeout" | "routerNamespace" | "routerService">> & ClientOptions;
}

const DEFAULT_DATA_DIR = "/var/lib/agent-sandbox";
const UP_HINT = "Is `agent-sandbox up` running? Start it (as root) with `agent-sandbox up`, or point dataDir at the data directory of a running one.";

/** The router token, from a file re-read at most every 30 s. */
export class TokenSource {
  private cached: { at: number; value: string } | null = null;
  constructor(readonly token?: string, readonly file?: string) {}

  get(): string | undefined {
    if (this.token) return this.token.trim();
    if (!this.file) return undefined;
    const now = Date.now();
    if (!this.cached || now - this.cached.at > 30000) {
      try {
        this.cached = { at: now, value: fs.readFileSync(this.file, "utf8").trim() };
      } catch (e) {
        throw new SandboxConfigError(`cannot read the router token file ${this.file}: ${(e as Error).message}`, { cause: e });
      }
    }
    return this.cached.value;
  }
}

function haveKubeconfig(): boolean {
  if (process.env.KUBECONFIG) return process.env.KUBECONFIG.split(path.delimiter).some((p) => p && fs.existsSync(p));
  return fs.existsSync(path.join(os.homedir(), ".kube", "config"));
}

export function resolve(o: ClientOptions): Resolved {
  for (const k of Object.keys(o.extraHeaders ?? {})) {
    if (k.toLowerCase().startsWith("x-sandbox-")) throw new SandboxConfigError(`extraHeaders: ${k} is set by the SDK itself; remove it`);
  }
  const opts = {
    namespace: "default", serverPort: 8080, sandboxReadyTimeout: 180, requestTimeout: 60, portForwardReadyTimeout: 30,
    routerNamespace: "agent-sandbox-system", routerService: "sandbox-router-svc", ...o,
  };
  let kube: KubeApi;
  let routerUrl = "";
  let token = new TokenSource(o.routerToken, o.routerTokenFile);
  let hint = "";
  let description: string;
  const dir = o.dataDir ?? process.env.AGENT_SANDBOX_DATA_DIR ?? DEFAULT_DATA_DIR;
  const epFile = path.join(dir, "endpoints.json");
  if (o.kubeconfig) {
    kube = new KubeApi(loadKubeconfig(o.kubeconfig, o.context));
    description = `the kubeconfig ${o.kubeconfig}`;
  } else if (o.dataDir || fs.existsSync(epFile)) {
    let ep: { apiServer?: string; kubeconfig?: string; router?: string; routerTokenFile?: string };
    try {
      ep = JSON.parse(fs.readFileSync(epFile, "utf8"));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        throw new SandboxConnectionError(`no local agent-sandbox found: ${epFile} does not exist. Start one with \`agent-sandbox up\` (as root), set dataDir (or AGENT_SANDBOX_DATA_DIR) to the data directory of a running one, or pass kubeconfig and routerUrl`);
      }
      throw new SandboxConfigError(`cannot read ${epFile}: ${(e as Error).message}`, { cause: e });
    }
    hint = `${UP_HINT} (${epFile} may be left from an earlier run.)`;
    const creds = loadKubeconfig(ep.kubeconfig ?? path.join(dir, "kubeconfig"), o.context);
    if (ep.apiServer) creds.server = ep.apiServer.replace(/\/+$/, "");
    kube = new KubeApi(creds, hint);
    routerUrl = ep.router ?? "";
    if (!o.routerToken && !o.routerTokenFile) token = new TokenSource(undefined, ep.routerTokenFile ?? path.join(dir, "router-token"));
    description = `agent-sandbox up (${dir})`;
  } else if (process.env.KUBERNETES_SERVICE_HOST && !process.env.KUBECONFIG) {
    kube = new KubeApi(inClusterCredentials());
    description = "the in-cluster service account";
  } else if (haveKubeconfig()) {
    kube = new KubeApi(loadKubeconfig(undefined, o.context));
    description = "the default kubeconfig";
  } else {
    throw new SandboxConnectionError(`no agent-sandbox to connect to: ${epFile} does not exist (no local \`agent-sandbox up\`; set dataDir or AGENT_SANDBOX_DATA_DIR if it uses another data directory), this is not a Kubernetes Pod, and there is no kubeconfig. Start \`agent-sandbox up\`, or pass kubeconfig and routerUrl`);
  }
  if (o.routerUrl) routerUrl = o.routerUrl;
  if (!routerUrl && process.env.AGENT_SANDBOX_ROUTER_URL) {
    routerUrl = process.env.AGENT_SANDBOX_ROUTER_URL;
    if (!o.routerToken && !o.routerTokenFile) token = new TokenSource(process.env.AGENT_SANDBOX_ROUTER_TOKEN, process.env.AGENT_SANDBOX_ROUTER_TOKEN_FILE);
  }
  routerUrl = routerUrl.replace(/\/+$/, "");
  const mode: Mode = o.mode ?? (routerUrl ? "router" : process.env.KUBERNETES_SERVICE_HOST ? "pod-ip" : "port-forward");
  if (!["router", "pod-ip", "port-forward"].includes(mode)) throw new SandboxConfigError(`unknown mode ${JSON.stringify(mode)} (router, pod-ip or port-forward)`);
  if (mode === "router" && !routerUrl) {
    throw new SandboxConfigError("mode \"router\" needs the router's URL: pass routerUrl (or set AGENT_SANDBOX_ROUTER_URL), or dataDir of a local `agent-sandbox up`");
  }
  return { kube, mode, routerUrl, token, hint, description, opts };
}
