"""Upstream's computer-use extension: ``sandbox.agent(query)`` posts the query to the sandbox's
``/agent`` endpoint, which upstream's computer-use example image serves (on the python-runtime
port). This project's sandboxd has no agent: against it, ``agent()`` raises
``NotImplementedError`` saying so."""

from __future__ import annotations

from typing import Any

from ..client import SandboxClient
from ..exceptions import SandboxRequestError
from ..models import ExecutionResult
from ..sandbox import Sandbox

AGENT_MISSING = (
    "the sandbox's runtime has no /agent endpoint: computer use needs an image that serves it "
    "(upstream's computer-use example, reached through upstream's connection configurations on "
    "its port, 8888 by default). This project's sandboxd does not implement an agent; run one "
    "yourself in the sandbox (commands.start) and talk to it, or use such an image")


class SandboxWithComputerUseSupport(Sandbox):
    """A sandbox with upstream's ``agent(query)``."""

    def agent(self, query: str, timeout: int = 60) -> ExecutionResult:
        """Sends ``query`` to the sandbox's agent (``POST /agent {"query": ...}``) and returns
        its answer as an :class:`ExecutionResult`."""
        if not self.is_active:
            raise ConnectionError("this sandbox handle is closed (terminated or "
                                  "close_connection()); cannot send agent queries")
        with self._tracing.span("agent_query"):
            r = self._dp.request("POST", "/agent", what="sending an agent query",
                                 json_body={"query": query}, timeout=float(timeout),
                                 idempotent=False, ok=(200, 404, 405))
            if r.status in (404, 405):
                raise NotImplementedError(AGENT_MISSING)
            try:
                d: Any = r.json() or {}
            except ValueError:
                raise SandboxRequestError(
                    f"sending an agent query: the answer is not JSON: {r.text[:300]!r}",
                    status_code=r.status, response=r) from None
            return ExecutionResult(stdout=str(d.get("stdout") or ""),
                                   stderr=str(d.get("stderr") or ""),
                                   exit_code=int(d.get("exit_code", -1)),
                                   timed_out=bool(d.get("timed_out", False)))


class ComputerUseSandboxClient(SandboxClient[SandboxWithComputerUseSupport]):
    """A client whose sandboxes are :class:`SandboxWithComputerUseSupport`."""

    sandbox_class = SandboxWithComputerUseSupport
