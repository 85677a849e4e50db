"""Exceptions: upstream ``k8s_agent_sandbox``'s hierarchy and names, plus a few of our own.

Every exception derives from :class:`SandboxError` (a ``RuntimeError``), so one ``except``
catches all of them. Timeouts also derive from the builtin ``TimeoutError``, which upstream
raises, so ``except TimeoutError`` keeps working after a port.
"""

from __future__ import annotations

from typing import Any


class SandboxError(RuntimeError):
    """Base class of every error this package raises."""


class SandboxNotReadyError(SandboxError):
    """The sandbox exists but is not ready (suspended, its Pod gone, or not yet started)."""


class SandboxNoServiceError(SandboxError):
    """``SandboxdInClusterConnectionConfig(mode="in-cluster-service")``: the Sandbox reports no
    Service (``status.serviceFQDN``); enable ``spec.service`` on its template or use the pod IP."""


# Upstream's deprecated name of SandboxNoServiceError.
SandboxServiceUnavailableError = SandboxNoServiceError


class SandboxNotFoundError(SandboxError):
    """The claim or the Sandbox does not exist (any more)."""


class SnapshotNotFoundError(SandboxError):
    """A SandboxSnapshot that does not exist (also kept for upstream compatibility)."""


class SnapshotFailedError(SandboxError):
    """A SandboxSnapshot ended Failed; the message is its Ready condition's."""


class SandboxTemplateNotFoundError(SandboxError):
    """The SandboxTemplate a claim or pool points at does not exist."""


class SandboxWarmPoolNotFoundError(SandboxError):
    """The SandboxWarmPool named by a claim does not exist."""


class SandboxPortForwardError(SandboxError):
    """A ``kubectl port-forward`` tunnel (to the router Service, or to a sandbox's Pod) could not
    be started, or it died."""


class SandboxMetadataError(SandboxError):
    """A claim or Sandbox is malformed or was deleted while being waited for."""


class SandboxClaimFailedError(SandboxError):
    """The controller rejected the claim for good (invalid metadata, env or volume errors, expiry,
    an invalid configuration, or a Pod that ended)."""


class SandboxConfigError(SandboxError, ValueError):
    """Configuration that cannot work: a kubeconfig that is missing or malformed, a bad URL."""


class SandboxConnectionError(SandboxError, ConnectionError):
    """Nothing answers where the API server, the router or the sandbox should be."""


class SandboxTimeoutError(SandboxError, TimeoutError):
    """Something did not happen within the time asked for."""


class SandboxRequestError(SandboxError):
    """A request answered with an error status.

    ``status_code`` is the HTTP status (None when there was no response), ``code`` the error code
    of the body (sandboxd's ``INVALID_ARGUMENT``, ``NOT_FOUND``, ...; the Kubernetes ``reason``),
    and ``response`` the :class:`~agent_sandbox_sdk.HttpResponse` when there was one.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        response: Any = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response = response
        self.code = code


class ComputerUseError(SandboxRequestError):
    """Base of the errors of ``sandbox.computer`` and ``sandbox.browser``."""


class InvalidActionError(ComputerUseError, ValueError):
    """A desktop action the sandbox refused without doing anything: a point off the screen, an
    unknown key name, a region outside the screen, a bad scale."""


class DesktopNotAvailableError(ComputerUseError):
    """The sandbox has no desktop (``retryable`` false: use the ``desktop`` image), or its X
    server is not running (``retryable`` true: sandboxd restarts it; retry in a second)."""

    def __init__(self, message: str, status_code: int | None = None, response: Any = None,
                 code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, status_code=status_code, response=response, code=code)
        self.retryable = retryable


class BrowserNotAvailableError(ComputerUseError):
    """The sandbox's browser does not answer on its DevTools port (not a browser or desktop
    sandbox, or the browser is restarting)."""


class SandboxTooLargeError(SandboxError):
    """A file is larger than the ``max_bytes`` the reader allowed; what was read before the
    limit stays written."""


class CommandTimeoutError(SandboxTimeoutError):
    """A command ran past its timeout and was killed; ``result`` holds the output it produced."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


__all__ = [
    "BrowserNotAvailableError",
    "CommandTimeoutError",
    "ComputerUseError",
    "DesktopNotAvailableError",
    "InvalidActionError",
    "SandboxClaimFailedError",
    "SandboxConfigError",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxMetadataError",
    "SandboxNoServiceError",
    "SandboxNotFoundError",
    "SandboxNotReadyError",
    "SandboxPortForwardError",
    "SandboxRequestError",
    "SandboxServiceUnavailableError",
    "SandboxTemplateNotFoundError",
    "SandboxTimeoutError",
    "SandboxTooLargeError",
    "SandboxWarmPoolNotFoundError",
    "SnapshotFailedError",
    "SnapshotNotFoundError",
]
