"""``sandbox.code``: persistent interpreters over sandboxd's ``/v2/code`` API."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Optional

from ._commands import OutputCallback
from ._http import TransportError
from .exceptions import CommandTimeoutError, SandboxError
from .models import CodeContext, CodeError, CodeOutput, CodeResult

if TYPE_CHECKING:
    from .sandbox import Sandbox


# ---------------------------------------------------------------------------------------------
# run_code
# ---------------------------------------------------------------------------------------------


class Code:
    """``sandbox.code``: persistent interpreters (``python``, ``javascript``, ``bash``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def run(self, code: str, language: str = "python", context: Optional[str] = None,
            timeout: Optional[float] = 60, *, on_stdout: Optional[OutputCallback] = None,
            on_stderr: Optional[OutputCallback] = None,
            on_result: Optional[Callable[[CodeOutput], Any]] = None,
            max_output_bytes: Optional[int] = None) -> CodeResult:
        """Runs a cell in ``context`` (default: the language's default context, created on first
        use). Variables, imports and functions persist between calls. An exception in the cell
        is returned in ``error`` (status ``error``); a cell past ``timeout`` is interrupted and
        :class:`CommandTimeoutError` raised (the context keeps its state)."""
        if language not in ("python", "javascript", "bash"):
            raise ValueError(f"language must be python, javascript or bash, not {language!r}")
        body: dict[str, Any] = {"code": code, "language": language}
        if context:
            body["context"] = context
        if timeout is not None:
            body["timeout"] = float(timeout)
        if max_output_bytes is not None:
            body["max_output_bytes"] = int(max_output_bytes)
        wait = (timeout or 300.0) + 15.0
        what = f"running {language} code"
        dp = self._sb._dp
        # NDJSON always, for the same reason as commands.run.
        result = CodeResult()
        out: list[str] = []
        errs: list[str] = []
        stream = dp.stream("POST", "/v2/code/run", what=what, json_body=body,
                           headers={"Accept": "application/x-ndjson"}, timeout=wait)
        try:
            for line in stream.lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                t = ev.get("type")
                if t == "stdout":
                    out.append(ev.get("data", ""))
                    if on_stdout:
                        on_stdout(ev.get("data", ""))
                elif t == "stderr":
                    errs.append(ev.get("data", ""))
                    if on_stderr:
                        on_stderr(ev.get("data", ""))
                elif t == "result":
                    o = CodeOutput(text=ev.get("text", ""), data=ev.get("data") or {})
                    result.results.append(o)
                    if on_result:
                        on_result(o)
                elif t == "error":
                    result.error = CodeError(ev.get("name", ""), ev.get("value", ""),
                                             ev.get("traceback", ""))
                elif t == "end":
                    result.status = ev.get("status", "ok")
                    result.context = ev.get("context", "")
                    result.execution_count = ev.get("execution_count") or 0
                    result.truncated = bool(ev.get("truncated"))
                    result.duration_ms = float(ev.get("duration_ms") or 0.0)
        except TransportError as e:
            raise dp.transport_error(e, what, wait) from None
        except BaseException:
            # A callback raised: stop the cell before dropping its stream.
            try:
                self.interrupt(context or f"default-{language}")
            except SandboxError:
                pass
            raise
        finally:
            stream.close()
        result.stdout, result.stderr = "".join(out), "".join(errs)
        if result.status == "timeout":
            raise CommandTimeoutError(
                f"the {language} cell did not finish within {timeout:g} s and was interrupted "
                "(its context keeps its state); pass a larger timeout=", result)
        return result

    def create_context(self, language: str = "python", id: Optional[str] = None,
                       cwd: Optional[str] = None,
                       env: Optional[Mapping[str, str]] = None) -> CodeContext:
        body: dict[str, Any] = {"language": language}
        if id:
            body["id"] = id
        if cwd:
            body["cwd"] = cwd
        if env:
            body["env"] = dict(env)
        r = self._sb._dp.request("POST", "/v2/code/contexts", what="creating a code context",
                                 json_body=body, timeout=60, idempotent=False, ok=(200, 201))
        return self._ctx(r.json())

    @staticmethod
    def _ctx(d: Mapping[str, Any]) -> CodeContext:
        return CodeContext(id=d["id"], language=d.get("language", ""), cwd=d.get("cwd"),
                           created_at=d.get("created_at"),
                           execution_count=d.get("execution_count", 0), pid=d.get("pid"))

    def list_contexts(self) -> list[CodeContext]:
        r = self._sb._dp.request("GET", "/v2/code/contexts", what="listing code contexts",
                                 timeout=30)
        d = r.json()
        items = d.get("contexts", d) if isinstance(d, dict) else d
        return [self._ctx(c) for c in items]

    def delete_context(self, context: str) -> None:
        self._sb._dp.request("DELETE", f"/v2/code/contexts/{urllib.parse.quote(context, safe='')}",
                             what=f"deleting code context {context}", timeout=30,
                             ok=(200, 204))

    def interrupt(self, context: str) -> None:
        self._sb._dp.request(
            "POST", f"/v2/code/contexts/{urllib.parse.quote(context, safe='')}/interrupt",
            what=f"interrupting code context {context}", timeout=30, idempotent=True,
            ok=(200, 204))

    def restart(self, context: str) -> None:
        self._sb._dp.request(
            "POST", f"/v2/code/contexts/{urllib.parse.quote(context, safe='')}/restart",
            what=f"restarting code context {context}", timeout=60, idempotent=True,
            ok=(200, 204))
