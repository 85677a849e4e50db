"""From a connection configuration to a live connection: the Kubernetes API (control plane), the
runtime API the sandboxes are spoken to with, and the way there (data plane).

Runtimes: ``rest`` is sandboxd's REST API (``/v1`` files, ``/v2`` exec and extensions), which
our own configurations use; ``legacy`` is upstream's python-runtime API (``/execute``,
``/upload``, ...), which upstream's router and in-cluster configurations use (sandboxd serves it
on 8888, with ``/v2`` beside it); ``sandboxd`` is sandboxd's gRPC ProcessService for commands and
its ``/v1`` files, which upstream's sandboxd configurations use.

Routes: ``router`` (the sandbox router, with the ``X-Sandbox-*`` headers; maybe through a
``kubectl port-forward`` to its Service), ``pod`` (the pod IP), ``pod-tunnel`` (a
``kubectl port-forward`` to the Pod) and ``service`` (the Sandbox's Service)."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import metrics
from ._apiclient import kubeconfig_for, remove
from ._http import HttpClient
from ._kube import KubeApi, KubeConfig
from ._tunnel import PortForward, kubeconfig_arg
from .metrics import timed
from .exceptions import (
    SandboxConfigError,
    SandboxConnectionError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from .models import (
    DEFAULT_DATA_DIR,
    SandboxClusterConnectionConfig,
    SandboxConnectionConfig,
    SandboxdInClusterConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxdPodTunnelConnectionConfig,
    SandboxEmbeddedConnectionConfig,
    SandboxGatewayConnectionConfig,
    SandboxInClusterConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
)

UP_HINT = "Is `agent-sandbox up` running? Start it (as root) with `agent-sandbox up{flags}`."

# The Service port of the router, as upstream's local tunnel forwards it.
ROUTER_SERVICE_PORT = 8080


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
    """The control plane (``kube``) and how to reach sandboxes: ``runtime`` (``rest``,
    ``legacy`` or ``sandboxd``) over ``route`` (``router``, ``pod``, ``pod-tunnel`` or
    ``service``). ``server_port`` is the sandbox's HTTP port (sandboxd's REST port for ``rest``
    and ``sandboxd``, the python-runtime's for ``legacy``)."""

    def __init__(self, kube: KubeApi, *, router_url: str | None, token: _TokenSource,
                 server_port: int, description: str, hint: str = "",
                 closer: Callable[[], None] | None = None, runtime: str = "rest",
                 route: str | None = None, extra_headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, grpc_port: int | None = None,
                 router_tunnel: PortForward | None = None, kubeconfig: str | None = None,
                 port_forward_ready_timeout: float = 30.0,
                 dns_fallback: bool = False, mode: str = "") -> None:
        self.kube = kube
        self._router_url = router_url.rstrip("/") if router_url else None
        self.router_tunnel = router_tunnel
        self.route = route or ("router" if router_url or router_tunnel else "pod")
        self.runtime = runtime
        self.token = token
        self.server_port = server_port
        self.grpc_port = grpc_port
        self.extra_headers = dict(extra_headers or {})
        self.description = description
        self.hint = hint
        self.kubeconfig = kubeconfig  # for kubectl
        self.port_forward_ready_timeout = port_forward_ready_timeout
        self.dns_fallback = dns_fallback  # upstream's in-cluster: <sandbox>.<ns>.svc without an IP
        self.mode = mode  # the name of the connection mode, for metrics and errors
        self.http = HttpClient(ssl_context=ssl_context)
        self._closer = closer

    @property
    def router_url(self) -> str | None:
        """The router's URL (a local tunnel's once it runs)."""
        if self.router_tunnel is not None:
            ports = self.router_tunnel.current()
            return f"http://127.0.0.1:{ports[0]}" if ports else None
        return self._router_url

    def router_base(self) -> str:
        """The router's URL, starting the local tunnel when needed."""
        if self.router_tunnel is not None:
            return f"http://127.0.0.1:{self.router_tunnel.ports()[0]}"
        assert self._router_url is not None
        return self._router_url

    def check_tunnel(self) -> None:
        if self.router_tunnel is not None:
            self.router_tunnel.check()

    @property
    def via_router(self) -> bool:
        return self.route == "router"

    @property
    def direct(self) -> bool:
        return not self.via_router

    def add_closer(self, fn: Callable[[], None]) -> None:
        previous = self._closer

        def both() -> None:
            if previous is not None:
                previous()
            fn()
        self._closer = both

    def close(self) -> None:
        self.http.close()
        self.kube.close()
        if self.router_tunnel is not None:
            self.router_tunnel.close()
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
                      server_port=cfg.server_port, mode="embedded",
                      description=f"agent-sandbox up ({ddir})", hint=hint)


def _kube_for(kubeconfig: Any, context: str | None = None, in_cluster: bool = False) -> KubeApi:
    if in_cluster:
        return KubeApi(KubeConfig.in_cluster())
    return KubeApi(KubeConfig.from_kubeconfig(kubeconfig, context))


def _default_kube(kubeconfig: Any) -> KubeApi:
    """As upstream: the service account inside a Pod, else the kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") \
            and not os.environ.get("KUBECONFIG"):
        return KubeApi(KubeConfig.in_cluster())
    return KubeApi(KubeConfig.from_kubeconfig(kubeconfig))


def _have_kubeconfig() -> bool:
    env = os.environ.get("KUBECONFIG")
    if env:
        return any(p and Path(p).is_file() for p in env.split(os.pathsep))
    return (Path.home() / ".kube" / "config").is_file()


def _local_tunnel(cfg: SandboxLocalTunnelConnectionConfig) -> Connection:
    kube = _default_kube(cfg.kubeconfig)
    svc = f"svc/{cfg.router_service}"
    tunnel = PortForward(svc, cfg.router_namespace, [ROUTER_SERVICE_PORT],
                         ready_timeout=cfg.port_forward_ready_timeout,
                         kubeconfig=kubeconfig_arg(cfg.kubeconfig),
                         description=f"router Service {svc} in namespace {cfg.router_namespace}",
                         preflight=[svc], metric_mode="port_forward")
    token = _TokenSource(cfg.router_token, cfg.router_token_file)
    return Connection(kube, router_url=None, router_tunnel=tunnel, token=token,
                      server_port=cfg.server_port, runtime="legacy", mode="port_forward",
                      kubeconfig=kubeconfig_arg(cfg.kubeconfig),
                      description=f"kubectl port-forward {svc} -n {cfg.router_namespace}")


def _gateway(cfg: SandboxGatewayConnectionConfig) -> Connection:
    with timed(metrics.sandbox_client_discovery_latency_ms, mode="gateway"):
        return _gateway_address(cfg)


def _gateway_address(cfg: SandboxGatewayConnectionConfig) -> Connection:
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
                      server_port=cfg.server_port, runtime="legacy", mode="gateway",
                      description=f"Gateway {cfg.gateway_name}")


def _direct(cfg: SandboxDirectConnectionConfig) -> Connection:
    if not cfg.api_url:
        raise SandboxConfigError("SandboxDirectConnectionConfig needs api_url (the router URL)")
    kube = _default_kube(cfg.kubeconfig)
    ctx = None
    if cfg.api_url.lower().startswith("https://"):
        try:
            ctx = ssl.create_default_context(cafile=cfg.ca_cert) if cfg.ca_cert \
                else ssl.create_default_context()
            if cfg.client_cert:
                ctx.load_cert_chain(cfg.client_cert[0], cfg.client_cert[1])
        except (OSError, ssl.SSLError) as e:
            raise SandboxConfigError(
                f"cannot load the TLS files of SandboxDirectConnectionConfig (ca_cert="
                f"{cfg.ca_cert!r}, client_cert={cfg.client_cert!r}): {e}") from None
    token = _TokenSource(cfg.router_token, cfg.router_token_file)
    return Connection(kube, router_url=cfg.api_url, token=token, server_port=cfg.server_port,
                      runtime="legacy", extra_headers=cfg.extra_headers, ssl_context=ctx,
                      mode="direct", description=f"router {cfg.api_url}")


def _auto() -> Connection:
    """No configuration: a local ``agent-sandbox up``, else ``$AGENT_SANDBOX_ROUTER_URL``, else
    the service account inside a Pod, else upstream's default (the local tunnel) with the
    kubeconfig."""
    ddir = data_dir()
    if (ddir / "endpoints.json").exists():
        return _embedded(SandboxEmbeddedConnectionConfig())
    if os.environ.get("AGENT_SANDBOX_ROUTER_URL"):
        return connect(SandboxClusterConnectionConfig(
            router_url=os.environ["AGENT_SANDBOX_ROUTER_URL"],
            router_token=os.environ.get("AGENT_SANDBOX_ROUTER_TOKEN"),
            router_token_file=os.environ.get("AGENT_SANDBOX_ROUTER_TOKEN_FILE")))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return connect(SandboxClusterConnectionConfig(in_cluster=True))
    if _have_kubeconfig():
        return _local_tunnel(SandboxLocalTunnelConnectionConfig())
    raise SandboxConnectionError(
        f"no agent-sandbox to connect to: {ddir / 'endpoints.json'} does not exist (no local "
        "`agent-sandbox up`; set AGENT_SANDBOX_DATA_DIR if it uses another data directory), "
        "AGENT_SANDBOX_ROUTER_URL is unset, this is not a Kubernetes Pod, and there is no "
        "kubeconfig for upstream's default (a kubectl port-forward to the router). Start "
        "`agent-sandbox up`, or pass SandboxClusterConnectionConfig(kubeconfig=..., "
        "router_url=...)")


def connect(cfg: Optional[SandboxConnectionConfig], api_client: Any = None) -> Connection:
    """Resolves ``cfg``; ``None`` auto-discovers (see :func:`_auto`). ``api_client`` (upstream's:
    a configured Kubernetes ``ApiClient``) names the cluster instead of the kubeconfig; without
    ``cfg`` it means upstream's default, the local tunnel, to that cluster."""
    if api_client is not None:
        path = kubeconfig_for(api_client)
        try:
            if cfg is None:
                cfg = SandboxLocalTunnelConnectionConfig()
            if isinstance(cfg, SandboxClusterConnectionConfig):
                cfg = dataclasses.replace(cfg, kubeconfig=path, context=None, in_cluster=False)
            elif not isinstance(cfg, SandboxEmbeddedConnectionConfig):
                cfg = dataclasses.replace(cfg, kubeconfig=path)
            conn = connect(cfg)
        except BaseException:
            remove(path)
            raise
        conn.add_closer(lambda: remove(path))
        return conn
    if cfg is None:
        return _auto()
    if isinstance(cfg, SandboxEmbeddedConnectionConfig):
        return _embedded(cfg)
    if isinstance(cfg, SandboxClusterConnectionConfig):
        kube = _kube_for(cfg.kubeconfig, cfg.context, cfg.in_cluster)
        token = _TokenSource(cfg.router_token, cfg.router_token_file)
        return Connection(kube, router_url=cfg.router_url or None, token=token,
                          server_port=cfg.server_port, mode="cluster",
                          description=f"cluster ({kube.config.source})")
    if isinstance(cfg, SandboxDirectConnectionConfig):
        return _direct(cfg)
    if isinstance(cfg, SandboxInClusterConnectionConfig):
        kube = _default_kube(cfg.kubeconfig)
        return Connection(kube, router_url=None, token=_TokenSource(), route="pod",
                          server_port=cfg.server_port, runtime="legacy", dns_fallback=True,
                          mode="in_cluster", description="in-cluster (pod IPs)")
    if isinstance(cfg, SandboxGatewayConnectionConfig):
        return _gateway(cfg)
    if isinstance(cfg, SandboxLocalTunnelConnectionConfig):
        return _local_tunnel(cfg)
    if isinstance(cfg, SandboxdPodTunnelConnectionConfig):
        kube = _default_kube(cfg.kubeconfig)
        return Connection(kube, router_url=None, token=_TokenSource(), route="pod-tunnel",
                          server_port=cfg.rest_port, grpc_port=cfg.grpc_port,
                          runtime="sandboxd", kubeconfig=kubeconfig_arg(cfg.kubeconfig),
                          port_forward_ready_timeout=cfg.port_forward_ready_timeout,
                          mode="sandboxd_pod_tunnel",
                          description="kubectl port-forward to each sandbox's Pod (sandboxd)")
    if isinstance(cfg, SandboxdInClusterConnectionConfig):
        kube = _default_kube(cfg.kubeconfig)
        route = "service" if cfg.mode == "in-cluster-service" else "pod"
        return Connection(kube, router_url=None, token=_TokenSource(), route=route,
                          server_port=cfg.rest_port, grpc_port=cfg.grpc_port,
                          runtime="sandboxd", mode=f"sandboxd_{cfg.mode.replace('-', '_')}",
                          description=f"sandboxd {cfg.mode}")
    raise SandboxConfigError(f"unknown connection config {cfg!r}")
