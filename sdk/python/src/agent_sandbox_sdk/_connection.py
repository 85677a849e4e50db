"""From a connection configuration to a live connection: the Kubernetes API (control plane) and
the way to each sandbox's sandboxd (data plane: through the router with the ``X-Sandbox-*``
headers, or straight to the pod IP)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Optional

from ._http import Body, HttpClient, HttpResponse, StreamingResponse, TransportError
from ._kube import KubeApi, KubeConfig
from ._ws import WebSocket, connect_websocket
from .exceptions import (
    SandboxConfigError,
    SandboxConnectionError,
    SandboxNotReadyError,
    SandboxPortForwardError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from .models import (
    DEFAULT_DATA_DIR,
    SandboxClusterConnectionConfig,
    SandboxConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxEmbeddedConnectionConfig,
    SandboxGatewayConnectionConfig,
    SandboxInClusterConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
)

UP_HINT = "Is `agent-sandbox up` running? Start it (as root) with `agent-sandbox up{flags}`."


def data_dir(explicit: Any = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get("AGENT_SANDBOX_DATA_DIR") or DEFAULT_DATA_DIR)


class _TokenSource:
    def __init__(self, token: str | None = None, token_file: Any = None) -> None:
        self.token = token
        self.file = str(token_file) if token_file else None
        self._read: tuple[float, str] | None = None

    def get(self) -> str | None:
        if self.token:
            return self.token.strip()
        if not self.file:
            return None
        now = time.monotonic()
        if self._read is None or now - self._read[0] > 30:
            try:
                self._read = (now, Path(self.file).read_text().strip())
            except OSError as e:
                raise SandboxConfigError(
                    f"cannot read the router token file {self.file}: {e.strerror}") from None
        return self._read[1]


class Connection:
    """The control plane (``kube``) and how to reach sandboxes (``router_url`` or pod IPs)."""

    def __init__(self, kube: KubeApi, *, router_url: str | None, token: _TokenSource,
                 server_port: int, description: str, hint: str = "",
                 closer: Callable[[], None] | None = None) -> None:
        self.kube = kube
        self.router_url = router_url.rstrip("/") if router_url else None
        self.token = token
        self.server_port = server_port
        self.description = description
        self.hint = hint
        self.http = HttpClient()
        self._closer = closer

    @property
    def direct(self) -> bool:
        return self.router_url is None

    def close(self) -> None:
        self.http.close()
        self.kube.close()
        if self._closer is not None:
            self._closer()
            self._closer = None


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


def _endpoints(ddir: Path) -> dict[str, Any]:
    path = ddir / "endpoints.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SandboxConnectionError(
            f"no local agent-sandbox found: {path} does not exist. Start one with "
            f"`agent-sandbox up` (as root), set AGENT_SANDBOX_DATA_DIR to the data directory of "
            "a running one, or connect to a cluster with SandboxClusterConnectionConfig("
            "kubeconfig=..., router_url=...)") from None
    except (OSError, ValueError) as e:
        raise SandboxConfigError(f"cannot read {path}: {e}") from None


def _embedded(cfg: SandboxEmbeddedConnectionConfig) -> Connection:
    ddir = data_dir(cfg.data_dir)
    ep = _endpoints(ddir)
    flags = "" if cfg.data_dir is None and not os.environ.get("AGENT_SANDBOX_DATA_DIR") \
        else f" --data-dir {ddir}"
    hint = UP_HINT.format(flags=flags) + f" ({ddir / 'endpoints.json'} is left from an earlier run.)"
    kc = KubeConfig.from_kubeconfig(ep.get("kubeconfig") or ddir / "kubeconfig")
    if ep.get("apiServer"):
        kc.server = str(ep["apiServer"]).rstrip("/")
    kube = KubeApi(kc, hint=hint)
    token = _TokenSource(token_file=ep.get("routerTokenFile") or ddir / "router-token")
    return Connection(kube, router_url=ep.get("router") or "http://127.0.0.1:8080", token=token,
                      server_port=cfg.server_port,
                      description=f"agent-sandbox up ({ddir})", hint=hint)


def _kube_for(kubeconfig: Any, context: str | None = None, in_cluster: bool = False) -> KubeApi:
    if in_cluster:
        return KubeApi(KubeConfig.in_cluster())
    return KubeApi(KubeConfig.from_kubeconfig(kubeconfig, context))


def _default_kube(kubeconfig: Any) -> KubeApi:
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") \
            and not os.environ.get("KUBECONFIG"):
        return KubeApi(KubeConfig.in_cluster())
    return KubeApi(KubeConfig.from_kubeconfig(kubeconfig))


def _local_tunnel(cfg: SandboxLocalTunnelConnectionConfig) -> Connection:
    kube = _default_kube(cfg.kubeconfig)
    argv = ["kubectl", "port-forward", f"svc/{cfg.router_service}", ":8080",
            "-n", cfg.router_namespace]
    if cfg.kubeconfig:
        argv += ["--kubeconfig", str(cfg.kubeconfig)]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
    except FileNotFoundError:
        raise SandboxPortForwardError(
            "kubectl is not installed or not on PATH; install it or use "
            "SandboxDirectConnectionConfig with the router's URL") from None
    found: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + cfg.port_forward_ready_timeout
    while not found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not found:
        proc.kill()
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise SandboxPortForwardError(
            f"kubectl port-forward to svc/{cfg.router_service} in {cfg.router_namespace} did not "
            f"start within {cfg.port_forward_ready_timeout} s: {str(err).strip()[:300]}")

    def close() -> None:
        proc.kill()
        proc.wait(5)

    token = _TokenSource(cfg.router_token, cfg.router_token_file)
    return Connection(kube, router_url=f"http://127.0.0.1:{found[0]}", token=token,
                      server_port=cfg.server_port, description="kubectl port-forward",
                      closer=close)


def _gateway(cfg: SandboxGatewayConnectionConfig) -> Connection:
    kube = _default_kube(cfg.kubeconfig)
    deadline = time.monotonic() + cfg.gateway_ready_timeout
    addr = None
    while time.monotonic() < deadline:
        try:
            gw = kube.get("gateways", cfg.gateway_namespace, cfg.gateway_name)
        except SandboxRequestError as e:
            if e.status_code != 404:
                raise
            gw = {}
        for a in ((gw.get("status") or {}).get("addresses") or []):
            if a.get("value"):
                addr = str(a["value"])
                break
        if addr:
            break
        time.sleep(1.0)
    if not addr:
        raise SandboxTimeoutError(
            f"Gateway {cfg.gateway_namespace}/{cfg.gateway_name} has no address after "
            f"{cfg.gateway_ready_timeout} s; check `kubectl get gateway -n {cfg.gateway_namespace}`")
    host = f"[{addr}]" if ":" in addr else addr
    token = _TokenSource(cfg.router_token, cfg.router_token_file)
    return Connection(kube, router_url=f"{cfg.gateway_scheme}://{host}", token=token,
                      server_port=cfg.server_port, description=f"Gateway {cfg.gateway_name}")


def connect(cfg: Optional[SandboxConnectionConfig]) -> Connection:
    """Resolves ``cfg``; ``None`` auto-discovers: a local ``agent-sandbox up`` (its
    ``endpoints.json``), else in-cluster credentials, else ``$AGENT_SANDBOX_ROUTER_URL`` with the
    default kubeconfig."""
    if cfg is None:
        ddir = data_dir()
        if (ddir / "endpoints.json").exists():
            return _embedded(SandboxEmbeddedConnectionConfig())
        if os.environ.get("AGENT_SANDBOX_ROUTER_URL"):
            return connect(SandboxClusterConnectionConfig(
                router_url=os.environ["AGENT_SANDBOX_ROUTER_URL"],
                router_token=os.environ.get("AGENT_SANDBOX_ROUTER_TOKEN"),
                router_token_file=os.environ.get("AGENT_SANDBOX_ROUTER_TOKEN_FILE")))
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return connect(SandboxInClusterConnectionConfig())
        raise SandboxConnectionError(
            f"no agent-sandbox to connect to: {ddir / 'endpoints.json'} does not exist (no local "
            "`agent-sandbox up`; set AGENT_SANDBOX_DATA_DIR if it uses another data directory), "
            "this is not a Kubernetes Pod, and AGENT_SANDBOX_ROUTER_URL is unset. Start "
            "`agent-sandbox up`, or pass SandboxClusterConnectionConfig(kubeconfig=..., "
            "router_url=...)")
    if isinstance(cfg, SandboxEmbeddedConnectionConfig):
        return _embedded(cfg)
    if isinstance(cfg, SandboxClusterConnectionConfig):
        kube = _kube_for(cfg.kubeconfig, cfg.context, cfg.in_cluster)
        token = _TokenSource(cfg.router_token, cfg.router_token_file)
        return Connection(kube, router_url=cfg.router_url or None, token=token,
                          server_port=cfg.server_port,
                          description=f"cluster ({kube.config.source})")
    if isinstance(cfg, SandboxDirectConnectionConfig):
        if not cfg.api_url:
            raise SandboxConfigError("SandboxDirectConnectionConfig needs api_url (the router URL)")
        kube = _default_kube(cfg.kubeconfig)
        token = _TokenSource(cfg.router_token, cfg.router_token_file)
        return Connection(kube, router_url=cfg.api_url, token=token, server_port=cfg.server_port,
                          description=f"router {cfg.api_url}")
    if isinstance(cfg, SandboxInClusterConnectionConfig):
        kube = KubeApi(KubeConfig.in_cluster())
        return Connection(kube, router_url=None, token=_TokenSource(),
                          server_port=cfg.server_port, description="in-cluster (pod IPs)")
    if isinstance(cfg, SandboxGatewayConnectionConfig):
        return _gateway(cfg)
    if isinstance(cfg, SandboxLocalTunnelConnectionConfig):
        return _local_tunnel(cfg)
    raise SandboxConfigError(f"unknown connection config {cfg!r}")


# ---------------------------------------------------------------------------------------------
# Data plane
# ---------------------------------------------------------------------------------------------


def pick_pod_ip(ips: Any) -> str | None:
    best = None
    for ip in ips or []:
        ip = str(ip)
        if ip.startswith("::ffff:"):
            ip = ip[len("::ffff:"):]
        if ":" not in ip:
            return ip
        best = best or ip
    return best


class DataPlane:
    """Requests to one sandbox's sandboxd."""

    def __init__(self, conn: Connection, sandbox_id: str, namespace: str,
                 pod_ip: str | None, refresh_pod_ip: Callable[[], str | None]) -> None:
        self.conn = conn
        self.sandbox_id = sandbox_id
        self.namespace = namespace
        self.pod_ip = pod_ip
        self._refresh = refresh_pod_ip

    def refresh_pod_ip(self) -> str | None:
        self.pod_ip = self._refresh()
        return self.pod_ip

    def _target(self, path: str, params: dict[str, Any] | None,
                timeout: float | None) -> tuple[str, dict[str, str]]:
        q = ""
        if params:
            q = "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"User-Agent": "agent-sandbox-sdk-python"}
        if self.conn.router_url is None:
            if not self.pod_ip:
                self.refresh_pod_ip()
            if not self.pod_ip:
                raise SandboxNotReadyError(
                    f"sandbox {self.namespace}/{self.sandbox_id} has no pod IP (suspended or not "
                    "running); resume it or check sandbox.status()")
            host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
            return f"http://{host}:{self.conn.server_port}{path}{q}", headers
        headers["X-Sandbox-ID"] = self.sandbox_id
        headers["X-Sandbox-Namespace"] = self.namespace
        headers["X-Sandbox-Port"] = str(self.conn.server_port)
        if self.pod_ip:
            headers["X-Sandbox-Pod-IP"] = self.pod_ip
        if timeout and timeout > 0 and math.isfinite(timeout):
            headers["X-Sandbox-Timeout"] = str(int(math.ceil(timeout)))
        tok = self.conn.token.get()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        return f"{self.conn.router_url}{path}{q}", headers

    def _where(self) -> str:
        if self.conn.router_url:
            return f"the sandbox router at {self.conn.router_url}"
        return f"sandbox {self.sandbox_id} at {self.pod_ip}:{self.conn.server_port}"

    def transport_error(self, e: TransportError, what: str, timeout: float | None) -> Exception:
        if e.kind == "timeout":
            return SandboxTimeoutError(
                f"{what}: sandbox {self.namespace}/{self.sandbox_id} did not answer within "
                f"{timeout:g} s; pass a larger timeout if the operation is slow")
        msg = f"{what}: cannot reach {self._where()}: {e}."
        if self.conn.hint:
            msg += " " + self.conn.hint
        return SandboxConnectionError(msg)

    def check(self, resp: HttpResponse, what: str, ok: tuple[int, ...] = (200,)) -> HttpResponse:
        if resp.status in ok:
            return resp
        raise self.http_error(resp.status, resp.body, what, resp)

    def http_error(self, status: int, body: bytes, what: str, resp: Any = None) -> Exception:
        code, message = None, body.decode("utf-8", errors="replace").strip()
        try:
            j = json.loads(body)
            if isinstance(j, dict):
                if "detail" in j:  # the router's own errors
                    message = str(j["detail"])
                    code = "ROUTER"
                else:
                    code = j.get("code")
                    message = str(j.get("message") or message)
        except ValueError:
            pass
        if status == 401 and code == "ROUTER":
            message += (" The router rejected the bearer token: check the router token "
                        "(routerTokenFile of endpoints.json, or router_token=).")
        elif status in (502, 503) and code == "ROUTER":
            message += (f" The sandbox {self.namespace}/{self.sandbox_id} is not answering: it "
                        "may be suspended, restarting or gone; see sandbox.status().")
            return SandboxNotReadyError(f"{what}: {status} {message}")
        elif status == 504:
            message += " The sandbox did not answer in time; pass a larger timeout."
        return SandboxRequestError(f"{what}: {status} {message}", status_code=status,
                                   response=resp, code=code)

    def request(self, method: str, path: str, *, what: str, params: dict[str, Any] | None = None,
                json_body: Any = None, body: Body = None, headers: dict[str, str] | None = None,
                timeout: float = 60.0, idempotent: bool | None = None,
                ok: tuple[int, ...] = (200,)) -> HttpResponse:
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        hdr_extra = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdr_extra.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            url, hdrs = self._target(path, params, timeout)
            hdrs.update(hdr_extra)
            try:
                resp = self.conn.http.request(method, url, headers=hdrs, body=body,
                                              timeout=timeout + 5,
                                              retries=2 if idempotent else 0)
            except TransportError as e:
                raise self.transport_error(e, what, timeout) from None
            if attempt == 0 and self._stale_pod_ip(resp.status, resp.body, idempotent):
                continue
            return self.check(resp, what, ok)
        raise AssertionError("unreachable")

    def _stale_pod_ip(self, status: int, body: bytes, idempotent: bool) -> bool:
        """A pod IP that changed (resume, restart) shows as 502 from the router. Retry once
        with a fresh one: an idempotent request always, any other only when the router says
        it could not connect (so the request never reached a sandbox)."""
        if status != 502 or self.conn.router_url is None:
            return False
        if not idempotent and b"Could not connect" not in body:
            return False
        old = self.pod_ip
        return self.refresh_pod_ip() not in (old, None)

    def stream(self, method: str, path: str, *, what: str, params: dict[str, Any] | None = None,
               json_body: Any = None, headers: dict[str, str] | None = None,
               timeout: float = 60.0) -> StreamingResponse:
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
        for attempt in (0, 1):
            url, hdrs = self._target(path, params, timeout)
            hdrs.update(headers or {})
            if body is not None:
                hdrs["Content-Type"] = "application/json"
            try:
                s = self.conn.http.stream(method, url, headers=hdrs, body=body, timeout=timeout)
            except TransportError as e:
                raise self.transport_error(e, what, timeout) from None
            if s.status < 400:
                return s
            try:
                data = s.read()
            except TransportError:
                data = b""
            s.close()
            if attempt == 0 and self._stale_pod_ip(s.status, data, method in ("GET", "HEAD")):
                continue
            raise self.http_error(s.status, data, what)
        raise AssertionError("unreachable")

    def websocket(self, path: str, params: dict[str, Any] | None, *, what: str,
                  timeout: float) -> WebSocket:
        url, hdrs = self._target(path, params, None)
        try:
            sock = self.conn.http.raw_socket(url, timeout)
        except TransportError as e:
            raise self.transport_error(e, what, timeout) from None
        status, body, ws = connect_websocket(sock, url, hdrs, timeout)
        if ws is None:
            raise self.http_error(status, body, what)
        return ws
