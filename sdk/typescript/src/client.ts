// SandboxClient: claims sandboxes from warm pools (SandboxClaim create, watch until Ready,
// delete), attaches to existing claims, and holds what its sandboxes share (the API server's
// client, the router token, the port-forward tunnel).

import { randomBytes } from "node:crypto";
import { SandboxClaimFailedError, SandboxConfigError, SandboxNotFoundError, SandboxNotReadyError, SandboxRequestError, SandboxTemplateNotFoundError, SandboxTimeoutError, SandboxWarmPoolNotFoundError } from "./errors.js";
import type { KubeObject } from "./kube.js";
import { resolve, type ClientOptions, type Mode, type Resolved } from "./options.js";
import { PortForward } from "./portforward.js";
import { podIPOf } from "./dataplane.js";
import { Sandbox } from "./sandbox.js";

const FATAL_REASONS = new Set(["InvalidMetadata", "EnvVarsInjectionRejected", "VolumeClaimTemplatesError", "ClaimExpired", "SandboxExpired", "InvalidConfiguration", "PodFailed", "PodSucceeded"]);
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export interface CreateSandboxOptions {
  /** Namespace of the claim (default: the client's). */
  namespace?: string;
  /** A name for the claim (a DNS-1123 subdomain; default sandbox-claim-<8 hex>). */
  claimName?: string;
  labels?: Record<string, string>;
  /** Injected into the sandbox (the template must allow it). */
  env?: Record<string, string>;
  /** Seconds until the claim's lifecycle.shutdownTime. */
  shutdownAfterSeconds?: number;
  /** Seconds to wait for Ready (default: the client's sandboxReadyTimeout). */
  timeout?: number;
}

export class SandboxClient {
  /** @internal */
  readonly resolved: Resolved;
  /** @internal */
  readonly tunnel: PortForward | null;
  private readonly sandboxes = new Map<string, Sandbox>();

  /** Resolves the options (see ClientOptions); the servers are contacted on first use. */
  constructor(options: ClientOptions = {}) {
    this.resolved = resolve(options);
    const o = this.resolved.opts;
    this.tunnel = this.resolved.mode === "port-forward" ? new PortForward(this.resolved.kube, o.routerNamespace, o.routerService, o.portForwardReadyTimeout * 1000) : null;
  }

  get mode(): Mode {
    return this.resolved.mode;
  }

  /** @internal */
  forget(ns: string, claim: string): void {
    this.sandboxes.delete(`${ns}/${claim}`);
  }

  private handle(claim: string | null, name: string, ns: string, podIP: string | null): Sandbox {
    return new Sandbox(this, claim, name, ns, podIP);
  }

  /** Claims a sandbox from the warm pool and waits until it is Ready. A claim under a generated name that fails or times out is deleted. */
  async createSandbox(warmPool: string, options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const ns = options.namespace ?? this.resolved.opts.namespace;
    if (!warmPool || !DNS_SUBDOMAIN.test(warmPool)) throw new SandboxConfigError(`warm pool name ${JSON.stringify(warmPool)} is not a valid name (a DNS-1123 subdomain)`);
    const generated = !options.claimName;
    const name = options.claimName ?? `sandbox-claim-${randomBytes(4).toString("hex")}`;
    if (!DNS_SUBDOMAIN.test(name)) throw new SandboxConfigError(`claim name ${JSON.stringify(name)} is not a valid name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.')`);
    const timeout = options.timeout ?? this.resolved.opts.sandboxReadyTimeout;
    const deadline = Date.now() + timeout * 1000;
    const spec: Record<string, unknown> = { warmPoolRef: { name: warmPool } };
    if (options.shutdownAfterSeconds) spec.lifecycle = { shutdownTime: new Date(Date.now() + options.shutdownAfterSeconds * 1000).toISOString().replace(/\.\d+Z$/, "Z"), shutdownPolicy: "Delete" };
    if (options.env) spec.env = Object.entries(options.env).map(([k, v]) => ({ name: k, value: v }));
    const claim = {
      apiVersion: "extensions.agents.x-k8s.io/v1beta1", kind: "SandboxClaim",
      metadata: { name, namespace: ns, labels: { ...(options.labels ?? {}), "agents.x-k8s.io/created-by": "typescript-client" }, annotations: { "agents.x-k8s.io/client-first-requested-at": new Date().toISOString() } },
      spec,
    };
    const kube = this.resolved.kube;
    let created: KubeObject;
    try {
      created = await kube.create("sandboxclaims", ns, claim, `creating claim ${ns}/${name}`);
    } catch (e) {
      if (e instanceof SandboxRequestError && e.statusCode === 409) throw new SandboxRequestError(`claim ${ns}/${name} already exists: pick another claimName, or attach to it with getSandbox()`, { statusCode: 409, code: e.code });
      if (e instanceof SandboxNotFoundError) throw new SandboxConfigError(`creating claim ${ns}/${name}: 404: namespace ${JSON.stringify(ns)} does not exist, or the API server does not serve SandboxClaims (install the CRDs with kubectl apply -f deploy/crds)`, { cause: e });
      throw e;
    }
    let ready: KubeObject;
    try {
      ready = await this.waitClaim(created, warmPool, deadline, timeout);
    } catch (e) {
      if (generated) {
        await kube.delete("sandboxclaims", ns, name, `deleting claim ${ns}/${name}`).catch(() => undefined);
        if (e instanceof SandboxTimeoutError) throw new SandboxTimeoutError(`${e.message}; the claim was deleted`);
      }
      throw e;
    }
    const st = (ready.status ?? {}) as { sandbox?: { name: string; podIPs?: unknown } };
    const sb = this.handle(name, st.sandbox!.name, ns, podIPOf(st.sandbox!.podIPs));
    this.sandboxes.set(`${ns}/${name}`, sb);
    return sb;
  }

  private async check(obj: KubeObject, pool: string): Promise<boolean> {
    const ns = obj.metadata.namespace ?? "";
    const name = obj.metadata.name;
    const st = (obj.status ?? {}) as { conditions?: { type: string; status?: string; reason?: string; message?: string }[]; sandbox?: { name?: string } };
    for (const c of st.conditions ?? []) {
      if (c.reason === "WarmPoolNotFound") throw new SandboxWarmPoolNotFoundError(`claim ${ns}/${name}: ${c.message}; ${await this.poolsHint(ns, pool)}`);
      if (c.reason === "TemplateNotFound") throw new SandboxTemplateNotFoundError(`claim ${ns}/${name}: ${c.message}; the warm pool ${JSON.stringify(pool)} names a SandboxTemplate that does not exist: create it, or fix the pool's sandboxTemplateRef`);
      if (c.type === "Ready" && c.status === "False" && c.reason && FATAL_REASONS.has(c.reason)) throw new SandboxClaimFailedError(`claim ${ns}/${name} failed: ${c.reason}: ${c.message}`);
    }
    const ready = (st.conditions ?? []).find((c) => c.type === "Ready");
    return ready?.status === "True" && !!st.sandbox?.name;
  }

  private async poolsHint(ns: string, pool: string): Promise<string> {
    try {
      const pools = (await this.resolved.kube.list("sandboxwarmpools", ns)).items.map((p) => p.metadata.name);
      return `warm pool ${JSON.stringify(pool)} does not exist in namespace ${ns}; create it or pick one of [${pools.join(", ")}]`;
    } catch {
      return `warm pool ${JSON.stringify(pool)} does not exist in namespace ${ns}`;
    }
  }

  private async waitClaim(created: KubeObject, pool: string, deadline: number, timeout: number): Promise<KubeObject> {
    const kube = this.resolved.kube;
    const ns = created.metadata.namespace ?? "";
    const name = created.metadata.name;
    let last = created;
    while (Date.now() < deadline) {
      if (await this.check(last, pool)) return last;
      for await (const ev of kube.watch("sandboxclaims", ns, name, last.metadata.resourceVersion, deadline, `watching claim ${ns}/${name}`)) {
        if (ev.type === "DELETED") throw new SandboxNotFoundError(`claim ${ns}/${name} was deleted while waiting for it to become ready`);
        if (ev.type === "ERROR") break;
        if (ev.type === "BOOKMARK") continue;
        last = ev.object;
        if (await this.check(last, pool)) return last;
      }
      if (Date.now() >= deadline) break;
      try {
        last = await kube.get("sandboxclaims", ns, name);
      } catch (e) {
        if (e instanceof SandboxNotFoundError) throw new SandboxNotFoundError(`claim ${ns}/${name} was deleted while waiting for it to become ready`);
        throw e;
      }
    }
    const c = ((last.status ?? {}) as { conditions?: { type: string; status?: string; reason?: string; message?: string }[] }).conditions?.find((x) => x.type === "Ready");
    throw new SandboxTimeoutError(`claim ${ns}/${name} did not become ready within ${timeout} s (Ready=${c?.status ?? "none"} ${c?.reason ?? ""}: ${c?.message ?? ""}); check the warm pool (kubectl get sandboxwarmpool ${pool} -n ${ns}) and pass a larger timeout if sandboxes start slowly`);
  }

  /** A handle on an existing claim's sandbox. */
  async getSandbox(claimName: string, namespace?: string): Promise<Sandbox> {
    const ns = namespace ?? this.resolved.opts.namespace;
    let claim: KubeObject;
    try {
      claim = await this.resolved.kube.get("sandboxclaims", ns, claimName);
    } catch (e) {
      if (e instanceof SandboxNotFoundError) throw new SandboxNotFoundError(`claim ${ns}/${claimName} does not exist; list claims with \`kubectl get sandboxclaims -n ${ns}\``);
      throw e;
    }
    const st = (claim.status ?? {}) as { sandbox?: { name?: string; podIPs?: unknown } };
    if (!st.sandbox?.name) throw new SandboxNotReadyError(`claim ${ns}/${claimName} names no sandbox yet; wait for it to become ready`);
    const sb = this.handle(claimName, st.sandbox.name, ns, podIPOf(st.sandbox.podIPs));
    await sb.podName(); // the Sandbox exists
    return sb;
  }

  /** A handle on a Sandbox by its own name, without a claim (terminate() deletes nothing). */
  sandboxByName(name: string, namespace?: string): Sandbox {
    return this.handle(null, name, namespace ?? this.resolved.opts.namespace, null);
  }

  /** Deletes a claim and its sandbox; one that is gone already is not an error. */
  async deleteSandbox(claimName: string, namespace?: string): Promise<void> {
    const ns = namespace ?? this.resolved.opts.namespace;
    this.sandboxes.get(`${ns}/${claimName}`)?.close();
    this.forget(ns, claimName);
    await this.resolved.kube.delete("sandboxclaims", ns, claimName, `deleting claim ${ns}/${claimName}`);
  }

  /** "namespace/claim" of the sandboxes this client created and has not deleted. */
  listActiveSandboxes(): string[] {
    return [...this.sandboxes.keys()];
  }

  /** Deletes every sandbox this client created. */
  async deleteAll(): Promise<void> {
    const all = [...this.sandboxes.values()];
    const results = await Promise.allSettled(all.map((s) => s.terminate()));
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  }

  /** Closes the tunnel and the API server's connections; sandboxes keep running. */
  close(): void {
    this.tunnel?.close();
    this.resolved.kube.close();
  }
}
