"""Result types and connection configurations (dataclasses; upstream uses pydantic models with
the same names and fields)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class ExecutionResult:
    """The outcome of a command. ``exit_code`` follows the shell convention (128 + signal when
    killed by a signal)."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = -1
    signal: Optional[Union[int, str]] = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: float = 0.0
    pid: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class SnapshotInfo:
    """A SandboxSnapshot (``agent-sandbox-rs.github.io/v1alpha1``): ``phase`` is Pending,
    InProgress, Ready or Failed; ``kind`` is ``Memory+Filesystem`` (runsc) or ``Filesystem``
    (runc, crun) once Ready; ``message`` is the Ready condition's."""

    name: str
    sandbox: str
    phase: str = "Pending"
    kind: Optional[str] = None
    size_bytes: Optional[int] = None
    handler: Optional[str] = None
    node: Optional[str] = None
    message: str = ""

    @property
    def size(self) -> Optional[int]:
        """``size_bytes``."""
        return self.size_bytes

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> SnapshotInfo:
        st = obj.get("status") or {}
        cond: dict[str, Any] = next(
            (c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        size = st.get("sizeBytes")
        return cls(name=(obj.get("metadata") or {}).get("name", ""),
                   sandbox=((obj.get("spec") or {}).get("sandboxRef") or {}).get("name", ""),
                   phase=st.get("phase") or "Pending", kind=st.get("kind"),
                   size_bytes=int(size) if size is not None else None,
                   handler=st.get("handler") or None, node=st.get("node") or None,
                   message=cond.get("message") or "")


def _parse_time(value: Any) -> _dt.datetime:
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)
    if not value:
        return _dt.datetime.fromtimestamp(0, tz=_dt.timezone.utc)
    return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass
class FileEntry:
    """One directory entry, as upstream's ``FileEntry``."""

    name: str
    size: int
    type: Literal["file", "directory"]
    modified: _dt.datetime
    mode: Optional[str] = None

    @classmethod
    def from_legacy(cls, d: dict[str, Any]) -> FileEntry:
        """An entry of upstream's python-runtime ``/list`` (``mod_time``: POSIX seconds)."""
        return cls(name=d["name"], size=int(d.get("size") or 0), type=d.get("type", "file"),
                   modified=_parse_time(d.get("mod_time") or 0))

    @classmethod
    def from_sandboxd(cls, d: dict[str, Any]) -> FileEntry:
        return cls(name=d["name"], size=int(d.get("size") or 0), type=d.get("type", "file"),
                   modified=_parse_time(d.get("modified_at")), mode=d.get("mode"))


@dataclass
class FileInfo:
    """``files.stat``: a file, directory or symbolic link (links are not followed)."""

    path: str
    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: Optional[str]
    modified: _dt.datetime
    link_target: Optional[str] = None
    target_type: Optional[str] = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileInfo:
        return cls(path=d["path"], name=d.get("name", ""), type=d.get("type", "other"),
                   size=int(d.get("size") or 0), mode=d.get("mode"),
                   modified=_parse_time(d.get("modified_at")),
                   link_target=d.get("link_target"), target_type=d.get("target_type"))


@dataclass
class TransferSummary:
    """What ``files.upload_dir`` wrote."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class CodeError:
    """An exception raised by a ``run_code`` cell."""

    name: str
    value: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class CodeOutput:
    """A rich result of a cell: ``text`` (the repr) and ``data`` (MIME type to content)."""

    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CodeResult:
    """The outcome of ``run_code``. ``result`` is the text of the cell's last expression (or
    None); ``status`` is ``ok``, ``error``, ``timeout``, ``interrupted`` or ``died``."""

    stdout: str = ""
    stderr: str = ""
    results: list[CodeOutput] = field(default_factory=list)
    error: Optional[CodeError] = None
    status: str = "ok"
    execution_count: int = 0
    context: str = ""
    truncated: bool = False
    duration_ms: float = 0.0

    @property
    def result(self) -> Optional[str]:
        return self.results[-1].text if self.results else None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CodeContext:
    """A persistent interpreter of ``run_code``."""

    id: str
    language: str
    cwd: Optional[str] = None
    created_at: Optional[str] = None
    execution_count: int = 0
    pid: Optional[int] = None


@dataclass
class ProcessInfo:
    """A process sandboxd runs (``commands.list``)."""

    id: int
    pid: Optional[int]
    command: Any
    origin: str
    pty: bool
    running: bool
    started_at: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Connection configurations
# ---------------------------------------------------------------------------------------------

DEFAULT_SERVER_PORT = 8080  # sandboxd's REST port: /v1 files and the /v2 extensions
LEGACY_SERVER_PORT = 8888  # upstream's python-runtime API (sandboxd serves it too, with /v2)
DEFAULT_GRPC_PORT = 9090  # sandboxd's gRPC ProcessService
DEFAULT_DATA_DIR = "/var/lib/agent-sandbox"

_RESERVED_HEADER_PREFIX = "x-sandbox-"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DEPRECATED_SANDBOXD_MODES = {"service-dns": "in-cluster-service", "pod-ip": "in-cluster-pod-ip"}


def _check_port(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what} must be a port number between 1 and 65535, not {value!r}")


@dataclass
class SandboxEmbeddedConnectionConfig:
    """A local ``agent-sandbox up``: everything is read from ``<data_dir>/endpoints.json``.
    ``data_dir`` defaults to ``$AGENT_SANDBOX_DATA_DIR``, else ``/var/lib/agent-sandbox``.
    Commands, files and the extensions go to sandboxd's REST API (``/v1`` and ``/v2``)."""

    data_dir: Optional[Union[str, os.PathLike[str]]] = None
    server_port: int = DEFAULT_SERVER_PORT


@dataclass
class SandboxClusterConnectionConfig:
    """A cluster: a kubeconfig (``None``: ``$KUBECONFIG`` or ``~/.kube/config``; or
    ``in_cluster=True``) for the API, and the router's URL and bearer token for the sandboxes
    (without ``router_url``, straight to the pod IPs). Speaks sandboxd's REST API."""

    router_url: str = ""
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    context: Optional[str] = None
    in_cluster: bool = False
    router_token: Optional[str] = None
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None
    server_port: int = DEFAULT_SERVER_PORT


@dataclass
class SandboxDirectConnectionConfig:
    """Upstream's: the router at ``api_url``, to upstream's python-runtime API on
    ``server_port``; the API server from the kubeconfig (or in-cluster). ``extra_headers`` go
    with every request (``X-Sandbox-*`` are the SDK's own); ``client_cert`` (certificate and key
    paths) and ``ca_cert`` (a CA bundle path) need an ``https://`` URL. Ours: ``kubeconfig``
    for the API server, ``router_token``/``router_token_file`` for the router's bearer token."""

    api_url: str
    server_port: int = LEGACY_SERVER_PORT
    extra_headers: dict[str, str] = field(default_factory=dict, repr=False)
    client_cert: Optional[tuple[str, str]] = None
    ca_cert: Optional[str] = None
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = field(default=None, repr=False)
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        _check_port(self.server_port, "server_port")
        for name in self.extra_headers:
            if name.lower().startswith(_RESERVED_HEADER_PREFIX):
                raise ValueError(f"extra_headers: {name!r} is reserved (the SDK sets "
                                 f"{_RESERVED_HEADER_PREFIX}* headers itself); remove it")
        if self.client_cert is not None:
            self.client_cert = (str(self.client_cert[0]), str(self.client_cert[1]))
        if (self.client_cert or self.ca_cert) and not self.api_url.lower().startswith("https://"):
            raise ValueError("client_cert and ca_cert need an https:// api_url (they are TLS "
                             f"options), not {self.api_url!r}")


@dataclass
class SandboxInClusterConnectionConfig:
    """Upstream's: from inside the cluster, straight to each sandbox's pod IP (else
    ``<sandbox>.<namespace>.svc.cluster.local``), to upstream's python-runtime API on
    ``server_port``; no router. The API server through the service account, else the
    kubeconfig."""

    server_port: int = LEGACY_SERVER_PORT
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        _check_port(self.server_port, "server_port")


@dataclass
class SandboxGatewayConnectionConfig:
    """Upstream's: the router behind a Gateway API ``Gateway`` (its first status address), to
    upstream's python-runtime API on ``server_port``."""

    gateway_name: str
    gateway_namespace: str = "default"
    gateway_ready_timeout: int = 180
    server_port: int = LEGACY_SERVER_PORT
    gateway_scheme: str = "http"
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = field(default=None, repr=False)
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        _check_port(self.server_port, "server_port")


@dataclass
class SandboxLocalTunnelConnectionConfig:
    """Upstream's default: ``kubectl port-forward svc/sandbox-router-svc`` in
    ``router_namespace``, started on the first request (and again if it dies), to upstream's
    python-runtime API on ``server_port``."""

    port_forward_ready_timeout: int = 30
    server_port: int = LEGACY_SERVER_PORT
    router_namespace: str = "agent-sandbox-system"
    router_service: str = "sandbox-router-svc"
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = field(default=None, repr=False)
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        _check_port(self.server_port, "server_port")
        if not _NAMESPACE.match(self.router_namespace or ""):
            raise ValueError(f"router_namespace {self.router_namespace!r} is not a valid "
                             "namespace name (lowercase alphanumerics and '-')")


@dataclass
class SandboxdPodTunnelConnectionConfig:
    """Upstream's: ``kubectl port-forward`` to each sandbox's Pod, reaching sandboxd's REST
    files API (``rest_port``) and its gRPC ProcessService (``grpc_port``; needs the ``grpc``
    extra). Commands take ``env`` and ``cwd``."""

    rest_port: int = DEFAULT_SERVER_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    port_forward_ready_timeout: int = 30
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        _check_port(self.rest_port, "rest_port")
        _check_port(self.grpc_port, "grpc_port")


@dataclass
class SandboxdInClusterConnectionConfig:
    """Upstream's: straight to sandboxd's REST (``rest_port``) and gRPC (``grpc_port``; needs
    the ``grpc`` extra) listeners, at the pod IP (``mode="in-cluster-pod-ip"``) or at the
    Sandbox's Service (``"in-cluster-service"``: ``status.serviceFQDN``, else
    :class:`SandboxNoServiceError`). Neither falls back to the other."""

    mode: Literal["in-cluster-service", "in-cluster-pod-ip"]
    rest_port: int = DEFAULT_SERVER_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        if self.mode in _DEPRECATED_SANDBOXD_MODES:
            new = _DEPRECATED_SANDBOXD_MODES[self.mode]
            warnings.warn(f"SandboxdInClusterConnectionConfig mode {self.mode!r} is deprecated; "
                          f"use {new!r}", DeprecationWarning, stacklevel=3)
            self.mode = new  # type: ignore[assignment]
        if self.mode not in ("in-cluster-service", "in-cluster-pod-ip"):
            raise ValueError(f"mode must be 'in-cluster-service' or 'in-cluster-pod-ip', not "
                             f"{self.mode!r}")
        _check_port(self.rest_port, "rest_port")
        _check_port(self.grpc_port, "grpc_port")
        if self.rest_port == self.grpc_port:
            raise ValueError(f"rest_port and grpc_port must differ (both are {self.rest_port})")


SandboxConnectionConfig = Union[
    SandboxEmbeddedConnectionConfig,
    SandboxClusterConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxInClusterConnectionConfig,
    SandboxGatewayConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
    SandboxdPodTunnelConnectionConfig,
    SandboxdInClusterConnectionConfig,
]


@dataclass
class SandboxTracerConfig:
    """OpenTelemetry tracing (needs the ``tracing`` extra): spans named
    ``<trace_service_name>.<operation>``, exported over OTLP."""

    enable_tracing: bool = False
    trace_service_name: str = "sandbox-client"
