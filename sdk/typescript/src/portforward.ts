// The port-forward tunnel of mode "port-forward": a local TCP listener on 127.0.0.1 whose
// every connection is carried by one WebSocket (channel protocol v4.channel.k8s.io) through
// the API server's pods/portforward to the Pod behind the router's Service.

import * as net from "node:net";
import WebSocket from "ws";
import { SandboxPortForwardError } from "./errors.js";
import type { KubeApi } from "./kube.js";

export class PortForward {
  private server: net.Server | null = null;
  private port = 0;
  private starting: Promise<number> | null = null;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly kube: KubeApi, private readonly namespace: string, private readonly service: string, private readonly readyTimeoutMs: number) {}

  describe(): string {
    return `port-forward to the router Service ${this.namespace}/${this.service}`;
  }

  /** The local port of a live tunnel, starting one when needed. */
  localPort(): Promise<number> {
    if (this.port) return Promise.resolve(this.port);
    if (!this.starting) {
      this.starting = this.start().finally(() => {
        this.starting = null;
      });
    }
    return this.starting;
  }

  private async target(): Promise<{ pod: string; port: number }> {
    let svc;
    try {
      svc = await this.kube.get("services", this.namespace, this.service, `reading the router Service ${this.namespace}/${this.service}`);
    } catch (e) {
      throw new SandboxPortForwardError(`${(e as Error).message}; is the sandbox router deployed? (routerNamespace and routerService name it)`, { cause: e });
    }
    const spec = (svc.spec ?? {}) as { selector?: Record<string, string>; ports?: { port?: number; targetPort?: number | string }[] };
    const p0 = spec.ports?.[0];
    const port = typeof p0?.targetPort === "number" ? p0.targetPort : (p0?.port ?? 8080);
    const sel = Object.entries(spec.selector ?? {}).map(([k, v]) => `${k}=${v}`).join(",");
    const pods = await this.kube.list("pods", this.namespace, `labelSelector=${encodeURIComponent(sel)}`, `listing the router's Pods in ${this.namespace}`);
    const pod = pods.items.find((p) => (p.status as { phase?: string } | undefined)?.phase === "Running");
    if (!pod) throw new SandboxPortForwardError(`the router Service ${this.namespace}/${this.service} selects no Running Pod; is the router running?`);
    return { pod: pod.metadata.name, port };
  }

  private async start(): Promise<number> {
    const { pod, port } = await this.target();
    const creds = this.kube.creds;
    const url = creds.server.replace(/^http/, "ws") + `/api/v1/namespaces/${encodeURIComponent(this.namespace)}/pods/${encodeURIComponent(pod)}/portforward?ports=${port}`;
    const headers: Record<string, string> = {};
    let token = creds.token;
    if (!token && creds.tokenFile) token = (await import("node:fs")).readFileSync(creds.tokenFile, "utf8").trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    // Check once that the API server accepts the forward, so that errors surface here.
    await new Promise<void>((resolve, reject) => {
      const ws = new WebSocket(url, ["v4.channel.k8s.io"], { headers, ...creds.tls, handshakeTimeout: this.readyTimeoutMs });
      ws.on("open", () => {
        ws.close();
        resolve();
      });
      ws.on("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (c: Buffer) => (body += c.toString()));
        res.on("end", () => reject(new SandboxPortForwardError(`${this.describe()} (Pod ${pod}): the API server answered ${res.statusCode}: ${body.trim()}; check that the kubeconfig's user may create pods/portforward`)));
      });
      ws.on("error", (e) => reject(new SandboxPortForwardError(`${this.describe()} (Pod ${pod}) failed: ${e.message}`, { cause: e })));
    });
    const server = net.createServer((sock) => this.carry(sock, url, headers));
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e) => reject(new SandboxPortForwardError(`${this.describe()}: cannot listen on 127.0.0.1: ${e.message}`, { cause: e })));
      server.listen(0, "127.0.0.1", () => resolve());
    });
    server.unref();
    this.server = server;
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  private carry(sock: net.Socket, url: string, headers: Record<string, string>): void {
    this.sockets.add(sock);
    sock.on("close", () => this.sockets.delete(sock));
    const ws = new WebSocket(url, ["v4.channel.k8s.io"], { headers, ...this.kube.creds.tls });
    const pending: Buffer[] = [];
    const seen = [false, false];
    sock.on("data", (d: Buffer) => {
      const frame = Buffer.concat([Buffer.from([0]), d]);
      if (ws.readyState === WebSocket.OPEN) ws.send(frame);
      else pending.push(frame);
    });
    sock.on("end", () => ws.close());
    sock.on("error", () => ws.terminate());
    ws.on("open", () => {
      for (const f of pending) ws.send(f);
      pending.length = 0;
    });
    ws.on("message", (data: Buffer) => {
      const channel = data[0];
      const body = data.subarray(1);
      if (channel === 0 || channel === 1) {
        if (!seen[channel]) {
          seen[channel] = true; // the port, as two bytes
          return;
        }
      }
      if (channel === 0) sock.write(body);
      else if (channel === 1 && body.length > 0) sock.destroy(new Error(body.toString()));
    });
    ws.on("close", () => sock.end());
    ws.on("error", () => sock.destroy());
  }

  /** After a failure: a tunnel whose listener died is started again on the next request. */
  reset(): void {
    if (this.server && !this.server.listening) {
      this.server = null;
      this.port = 0;
    }
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server?.close();
    this.server = null;
    this.port = 0;
  }
}
