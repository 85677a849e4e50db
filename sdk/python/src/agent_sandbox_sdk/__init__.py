"""agent-sandbox SDK: claim sandboxes from warm pools and run commands, code, terminals and file
transfers in them. Same shape as upstream's ``k8s_agent_sandbox``: porting is a changed import.

    from agent_sandbox_sdk import SandboxClient

    with SandboxClient() as client:
        sandbox = client.create_sandbox(warmpool="python-pool")
        print(sandbox.commands.run("echo hello").stdout)
"""

from typing import TYPE_CHECKING, Any

from .client import SandboxClient
from .metrics_utils import get_metrics, print_metrics
from .exceptions import (
    CommandTimeoutError,
    SandboxClaimFailedError,
    SandboxConfigError,
    SandboxConnectionError,
    SandboxError,
    SandboxMetadataError,
    SandboxNoServiceError,
    SandboxNotFoundError,
    SandboxNotReadyError,
    SandboxPortForwardError,
    SandboxRequestError,
    SandboxServiceUnavailableError,
    SandboxTemplateNotFoundError,
    SandboxTimeoutError,
    SandboxTooLargeError,
    SandboxWarmPoolNotFoundError,
    SnapshotFailedError,
    SnapshotNotFoundError,
)
from .models import (
    CodeContext,
    CodeError,
    CodeOutput,
    CodeResult,
    ExecutionResult,
    FileEntry,
    FileInfo,
    ProcessInfo,
    SnapshotInfo,
    SandboxClusterConnectionConfig,
    SandboxConnectionConfig,
    SandboxdInClusterConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxdPodTunnelConnectionConfig,
    SandboxEmbeddedConnectionConfig,
    SandboxGatewayConnectionConfig,
    SandboxInClusterConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
    SandboxTracerConfig,
    TransferSummary,
)
from .sandbox import (
    Code,
    Commands,
    Files,
    Process,
    Pty,
    PtySession,
    Sandbox,
    SandboxPathError,
)

if TYPE_CHECKING:
    from .async_client import AsyncProcess, AsyncPtySession, AsyncSandbox, AsyncSandboxClient

__version__ = "0.1.0"

_ASYNC = {"AsyncProcess", "AsyncPtySession", "AsyncSandbox", "AsyncSandboxClient"}


def __getattr__(name: str) -> Any:
    # The async layer imports asyncio (tens of milliseconds): only when asked for.
    if name in _ASYNC:
        from . import async_client

        return getattr(async_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AsyncProcess",
    "AsyncPtySession",
    "AsyncSandbox",
    "AsyncSandboxClient",
    "Code",
    "CodeContext",
    "CodeError",
    "CodeOutput",
    "CodeResult",
    "CommandTimeoutError",
    "Commands",
    "ExecutionResult",
    "FileEntry",
    "FileInfo",
    "Files",
    "Process",
    "ProcessInfo",
    "Pty",
    "PtySession",
    "Sandbox",
    "SandboxClaimFailedError",
    "SandboxClient",
    "SandboxClusterConnectionConfig",
    "SandboxConfigError",
    "SandboxConnectionConfig",
    "SandboxConnectionError",
    "SandboxdInClusterConnectionConfig",
    "SandboxDirectConnectionConfig",
    "SandboxdPodTunnelConnectionConfig",
    "SandboxEmbeddedConnectionConfig",
    "SandboxError",
    "SandboxGatewayConnectionConfig",
    "SandboxInClusterConnectionConfig",
    "SandboxLocalTunnelConnectionConfig",
    "SandboxMetadataError",
    "SandboxNoServiceError",
    "SandboxNotFoundError",
    "SandboxNotReadyError",
    "SandboxPathError",
    "SandboxPortForwardError",
    "SandboxRequestError",
    "SandboxServiceUnavailableError",
    "SandboxTemplateNotFoundError",
    "SandboxTimeoutError",
    "SandboxTooLargeError",
    "SandboxTracerConfig",
    "SandboxWarmPoolNotFoundError",
    "SnapshotFailedError",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "TransferSummary",
    "get_metrics",
    "print_metrics",
]
