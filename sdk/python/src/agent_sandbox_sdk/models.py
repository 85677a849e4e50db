"""Result types and connection configurations (dataclasses; upstream uses pydantic models with
the same names and fields)."""

from __future__ import annotations

import datetime as _dt
import os
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
DEFAULT_DATA_DIR = "/var/lib/agent-sandbox"


@dataclass
class SandboxEmbeddedConnectionConfig:
    """A local ``agent-sandbox up``: everything is read from ``<data_dir>/endpoints.json``.
    ``data_dir`` defaults to ``$AGENT_SANDBOX_DATA_DIR``, else ``/var/lib/agent-sandbox``."""

    data_dir: Optional[Union[str, os.PathLike[str]]] = None
    server_port: int = DEFAULT_SERVER_PORT


@dataclass
class SandboxClusterConnectionConfig:
    """A cluster: a kubeconfig (``None``: ``$KUBECONFIG`` or ``~/.kube/config``; or
    ``in_cluster=True``) for the API, and the router's URL and bearer token for the sandboxes."""

    router_url: str = ""
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    context: Optional[str] = None
    in_cluster: bool = False
    router_token: Optional[str] = None
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None
    server_port: int = DEFAULT_SERVER_PORT


@dataclass
class SandboxDirectConnectionConfig:
    """Upstream's: the router at ``api_url``; the API from the kubeconfig (or in-cluster)."""

    api_url: str
    server_port: int = DEFAULT_SERVER_PORT
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = None
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None


@dataclass
class SandboxInClusterConnectionConfig:
    """Upstream's: from inside the cluster, straight to each sandbox's pod IP (no router); the
    API through the Pod's service account."""

    server_port: int = DEFAULT_SERVER_PORT


@dataclass
class SandboxGatewayConnectionConfig:
    """Upstream's: the router behind a Gateway API ``Gateway``, whose first status address is
    used."""

    gateway_name: str
    gateway_namespace: str = "default"
    gateway_ready_timeout: int = 180
    server_port: int = DEFAULT_SERVER_PORT
    gateway_scheme: str = "http"
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = None
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None


@dataclass
class SandboxLocalTunnelConnectionConfig:
    """Upstream's default: ``kubectl port-forward`` to the router Service."""

    port_forward_ready_timeout: int = 30
    server_port: int = DEFAULT_SERVER_PORT
    router_namespace: str = "agent-sandbox-system"
    router_service: str = "sandbox-router-svc"
    kubeconfig: Optional[Union[str, os.PathLike[str]]] = None
    router_token: Optional[str] = None
    router_token_file: Optional[Union[str, os.PathLike[str]]] = None


SandboxConnectionConfig = Union[
    SandboxEmbeddedConnectionConfig,
    SandboxClusterConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxInClusterConnectionConfig,
    SandboxGatewayConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
]


@dataclass
class SandboxTracerConfig:
    """Accepted for upstream compatibility; this package does not trace."""

    enable_tracing: bool = False
    trace_service_name: str = "sandbox-client"
