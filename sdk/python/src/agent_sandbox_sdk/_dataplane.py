"""Requests to one sandbox: where they go (the router with its headers, the pod IP, a tunnel to
the Pod, the Sandbox's Service), HTTP with errors that say what to do, and sandboxd's gRPC."""

from __future__ import annotations

import json
import time
import math
import urllib.parse
from typing import Any, Callable, Optional

from ._connection import Connection
from ._grpc import GrpcChannels
from ._http import Body, HttpResponse, StreamingResponse, TransportError
from ._tunnel import PortForward
from ._ws import WebSocket, connect_websocket
from .exceptions import (
    SandboxConnectionError,
    SandboxNoServiceError,
    SandboxNotReadyError,
    SandboxRequestError,
    SandboxTimeoutError,
)


def pick_pod_ip(ips: Any) -> str | None:
    """The first IPv4 address (an IPv4-mapped IPv6 one counts), else the first address."""
    best = None
    for ip in ips or []:
        if isinstance(ip, dict):
            ip = ip.get("ip")
        if not ip:
            continue
        ip = str(ip).strip()
        if ip.lower().startswith("::ffff:") and "." in ip:
            ip = ip[len("::ffff:"):]
        if ":" not in ip:
            return ip
        best = best or ip
    return best


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


class DataPlane:
    """Requests to one sandbox's runtime."""

    def __init__(self, conn: Connection, sandbox_id: str, namespace: str,
                 pod_ip: str | None, refresh_pod_ip: Callable[[], str | None],
                 pod_name: Optional[Callable[[], str]] = None,
                 service_fqdn: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.conn = conn
        self.sandbox_id = sandbox_id
        self.namespace = namespace
        self.pod_ip = pod_ip
        self._refresh = refresh_pod_ip
        self._pod_name = pod_name
        self._service_fqdn = service_fqdn
        self._fqdn: Optional[str] = None
        self._tunnel: Optional[PortForward] = None
        self.grpc = GrpcChannels()
        #: Called before a direct request after a pause in traffic (see :meth:`_before_direct`).
        self.wake: Optional[Callable[[], None]] = None
        self._last_request: Optional[float] = None

    @property
    def runtime(self) -> str:
        return self.conn.runtime

    def refresh_pod_ip(self) -> str | None:
        self.pod_ip = self._refresh()
        return self.pod_ip

    def close(self) -> None:
        self.grpc.close()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    # -- where -----------------------------------------------------------------------------

    def _tunnel_ports(self) -> list[int]:
        if self._tunnel is None:
            pod = self._pod_name() if self._pod_name else self.sandbox_id
            ports = [self.conn.server_port]
            if self.conn.grpc_port:
                ports.append(self.conn.grpc_port)
            self._tunnel = PortForward(
                f"pod/{pod}", self.namespace, ports,
                ready_timeout=self.conn.port_forward_ready_timeout,
                kubeconfig=self.conn.kubeconfig,
                description=f"Pod {self.namespace}/{pod} (sandbox {self.sandbox_id})",
                metric_mode="sandboxd_pod_tunnel")
        return self._tunnel.ports()

    def _direct_host(self) -> str:
        route = self.conn.route
        if route == "service":
            if self._fqdn is None:
                self._fqdn = self._service_fqdn() if self._service_fqdn else None
                if not self._fqdn:
                    raise SandboxNoServiceError(
                        f"Sandbox {self.namespace}/{self.sandbox_id} has no Service "
                        "(status.serviceFQDN): enable `service: true` on its template, or use "
                        "SandboxdInClusterConnectionConfig(mode=\"in-cluster-pod-ip\")")
            return self._fqdn
        if not self.pod_ip:
            self.refresh_pod_ip()
        if self.pod_ip:
            return _host(self.pod_ip)
        if self.conn.dns_fallback:
            return f"{self.sandbox_id}.{self.namespace}.svc.cluster.local"
        raise SandboxNotReadyError(
            f"sandbox {self.namespace}/{self.sandbox_id} has no pod IP (suspended or not "
            "running); resume it or check sandbox.status()")

    def base_url(self, port: int | None = None) -> str:
        """The sandbox's HTTP base URL (for the router: the router's); ``port`` names another
        port of the sandbox than the runtime's."""
        if self.conn.via_router:
            return self.conn.router_base()
        if self.conn.route == "pod-tunnel":
            if port is not None and port != self.conn.server_port:
                raise SandboxConnectionError(
                    f"port {port} of sandbox {self.sandbox_id} is not reachable through this "
                    "connection's tunnel (it forwards sandboxd's ports only); connect through "
                    "the router or in-cluster instead")
            return f"http://127.0.0.1:{self._tunnel_ports()[0]}"
        return f"http://{self._direct_host()}:{port or self.conn.server_port}"

    def grpc_target(self) -> str:
        """``host:port`` of sandboxd's gRPC ProcessService."""
        if self.conn.grpc_port is None:
            raise SandboxConnectionError(
                "this connection does not reach sandboxd's gRPC port; use "
                "SandboxdPodTunnelConnectionConfig or SandboxdInClusterConnectionConfig")
        self._before_direct()
        if self.conn.route == "pod-tunnel":
            return f"127.0.0.1:{self._tunnel_ports()[1]}"
        return f"{self._direct_host()}:{self.conn.grpc_port}"

    def invalidate(self) -> None:
        """After a transport failure: look the pod IP and Service up again; a tunnel that died
        is started again on the next request."""
        self._fqdn = None
        if self.conn.route == "pod":
            try:
                self.refresh_pod_ip()
            except Exception:  # noqa: BLE001 - the original failure is reported
                pass
        if self._tunnel is not None and not self._tunnel.alive():
            self._tunnel.close()
            self._tunnel = None  # made again for the Pod of the moment

    def _target(self, path: str, params: dict[str, Any] | None,
                timeout: float | None, port: int | None = None) -> tuple[str, dict[str, str]]:
        q = ""
        if params:
            q = "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"User-Agent": "agent-sandbox-sdk-python"}
        base = self.base_url(port)
        if not self.conn.via_router:
            return f"{base}{path}{q}", headers
        self.conn.check_tunnel()
        tok = self.conn.token.get()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        headers.update(self.conn.extra_headers)
        headers["X-Sandbox-ID"] = self.sandbox_id
        headers["X-Sandbox-Namespace"] = self.namespace
        headers["X-Sandbox-Port"] = str(port or self.conn.server_port)
        if self.pod_ip:
            headers["X-Sandbox-Pod-IP"] = self.pod_ip
        if timeout and timeout > 0 and math.isfinite(timeout):
            headers["X-Sandbox-Timeout"] = str(int(math.ceil(timeout)))
        return f"{base}{path}{q}", headers

    def _where(self) -> str:
        if self.conn.via_router:
            return f"the sandbox router at {self.conn.router_url or self.conn.description}"
        if self.conn.route == "pod-tunnel":
            return f"sandbox {self.sandbox_id} through {self.conn.description}"
        if self.conn.route == "service":
            return f"sandbox {self.sandbox_id} at its Service {self._fqdn}"
        return f"sandbox {self.sandbox_id} at {self.pod_ip}:{self.conn.server_port}"

    # -- errors ----------------------------------------------------------------------------

    def transport_error(self, e: TransportError, what: str, timeout: float | None) -> Exception:
        self.conn.check_tunnel()  # a dead tunnel is the cause: say so
        if e.kind == "timeout":
            return SandboxTimeoutError(
                f"{what}: sandbox {self.namespace}/{self.sandbox_id} did not answer within "
                f"{timeout:g} s; pass a larger timeout if the operation is slow")
        where = self._where()
        self.invalidate()
        msg = f"{what}: cannot reach {where}: {e}."
        if self.conn.hint:
            msg += " " + self.conn.hint
        return SandboxConnectionError(msg)

    def check(self, resp: HttpResponse, what: str, ok: tuple[int, ...] = (200,),
              path: str = "") -> HttpResponse:
        if resp.status in ok:
            return resp
        raise self.http_error(resp.status, resp.body, what, resp, path)

    def http_error(self, status: int, body: bytes, what: str, resp: Any = None,
                   path: str = "") -> Exception:
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
        if status == 401 and code is None and not message and self.conn.via_router:
            code = "ROUTER"  # the router's answer to a HEAD, which has no body
            message = "Missing or invalid router token."
        if status == 401 and code == "ROUTER":
            message += (" The router rejected the request's credentials: check the router token "
                        "(routerTokenFile of endpoints.json, router_token=, or the "
                        "Authorization of extra_headers).")
        elif status in (502, 503) and code == "ROUTER":
            message += (f" The sandbox {self.namespace}/{self.sandbox_id} is not answering: it "
                        "may be suspended, restarting or gone; see sandbox.status().")
            return SandboxNotReadyError(f"{what}: {status} {message}")
        elif status == 409 and code == "ROUTER":  # paused: the message says to unpause
            return SandboxNotReadyError(f"{what}: {status} {message}")
        elif status == 504:
            message += " The sandbox did not answer in time; pass a larger timeout."
        elif status == 404 and self.conn.runtime != "rest" and path.startswith("/v2/"):
            message += (" This call uses the /v2 API of this project's sandboxd, which this "
                        "sandbox's runtime does not serve.")
        return SandboxRequestError(f"{what}: {status} {message}", status_code=status,
                                   response=resp, code=code)

    # -- HTTP ------------------------------------------------------------------------------

    def _before_direct(self) -> None:
        """Direct connections do what the router does for its clients: a sandbox the router
        paused or suspended for being idle is woken before a request goes to it. Looked at only
        after a second or more without a request (idle periods are whole seconds), so a burst
        of requests costs nothing."""
        if self.conn.via_router or self.wake is None:
            return
        now = time.monotonic()
        last, self._last_request = self._last_request, now
        if last is None or now - last >= 1.0:
            self.wake()

    def request(self, method: str, path: str, *, what: str, params: dict[str, Any] | None = None,
                json_body: Any = None, body: Body = None, headers: dict[str, str] | None = None,
                timeout: float = 60.0, idempotent: bool | None = None,
                ok: tuple[int, ...] = (200,), port: int | None = None) -> HttpResponse:
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        hdr_extra = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdr_extra.setdefault("Content-Type", "application/json")
        self._before_direct()
        for attempt in (0, 1):
            url, hdrs = self._target(path, params, timeout, port)
            hdrs.update(hdr_extra)
            try:
                resp = self.conn.http.request(method, url, headers=hdrs, body=body,
                                              timeout=timeout + 5,
                                              retries=2 if idempotent else 0)
            except TransportError as e:
                raise self.transport_error(e, what, timeout) from None
            if attempt == 0 and self._stale_pod_ip(resp.status, resp.body, idempotent):
                continue
            return self.check(resp, what, ok, path)
        raise AssertionError("unreachable")

    def _stale_pod_ip(self, status: int, body: bytes, idempotent: bool) -> bool:
        """A pod IP that changed (resume, restart) shows as 502 from the router. Retry once
        with a fresh one: an idempotent request always, any other only when the router says
        it could not connect (so the request never reached a sandbox)."""
        if status != 502 or not self.conn.via_router:
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
        self._before_direct()
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
            raise self.http_error(s.status, data, what, None, path)
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
            raise self.http_error(status, body, what, None, path)
        return ws
