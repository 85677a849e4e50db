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
    BrowserNotAvailableError,
    CommandTimeoutError,
    ComputerUseError,
    DesktopNotAvailableError,
    InvalidActionError,
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
    Browser,
    Code,
    Computer,
    Commands,
    Files,
    Process,
    Pty,
    PtySession,
    Sandbox,
    SandboxPathError,
    Window,
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
    "Browser",
    "BrowserNotAvailableError",
    "Code",
    "CodeContext",
    "CodeError",
    "CodeOutput",
    "CodeResult",
    "CommandTimeoutError",
    "Commands",
    "Computer",
    "ComputerUseError",
    "DesktopNotAvailableError",
    "ExecutionResult",
    "FileEntry",
    "FileInfo",
    "Files",
    "InvalidActionError",
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
    "SandboxDirectConnectionConfig",
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
    "SandboxdInClusterConnectionConfig",
    "SandboxdPodTunnelConnectionConfig",
    "SnapshotFailedError",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "TransferSummary",
    "Window",
    "get_metrics",
    "print_metrics",
]
