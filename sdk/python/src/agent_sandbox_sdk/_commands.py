"""``sandbox.commands``: commands in the foreground (``run``) and in the background (``start``),
and sandboxd's process table. ``run`` speaks the runtime of the connection: sandboxd's ``/v2``
exec (our configurations), upstream's python-runtime ``/execute`` or sandboxd's gRPC
``Execute`` (upstream's configurations); everything else is ``/v2``."""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from ._http import TransportError
from .exceptions import (
    CommandTimeoutError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
)
from .models import ExecutionResult, ProcessInfo

if TYPE_CHECKING:
    from .sandbox import Sandbox, _Paths

Command = Union[str, Sequence[str]]
OutputCallback = Callable[[str], Any]

# A background process is held open by its stream; this is its lifetime unless given.
BACKGROUND_TIMEOUT = 24 * 3600.0


def _signal_name(sig: Union[str, int]) -> Union[str, int]:
    if isinstance(sig, str) and not sig.upper().startswith("SIG") and not sig.isdigit():
        return "SIG" + sig.upper()
    return sig


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _exec_body(command: Command, env: Optional[Mapping[str, str]], cwd: Optional[str],
               stdin: Optional[Union[str, bytes]], timeout: Optional[float],
               max_output_bytes: Optional[int], paths: _Paths) -> dict[str, Any]:
    if isinstance(command, str):
        cmd: Any = command
    else:
        cmd = [str(c) for c in command]
        if not cmd:
            raise ValueError("the command is empty")
    if not cmd:
        raise ValueError("the command is empty")
    body: dict[str, Any] = {"command": cmd}
    if cwd:
        if paths.inside(cwd):
            body["cwd"] = cwd
        else:
            # sandboxd confines cwd to its root; a shell `cd` goes where the caller said.
            if isinstance(cmd, str):
                body["command"] = f"cd -- {shlex.quote(cwd)} && {{\n{cmd}\n}}"
            else:
                body["command"] = ["/bin/sh", "-c", 'cd -- "$0" && exec "$@"', cwd, *cmd]
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if stdin is not None:
        body["stdin"] = stdin.decode() if isinstance(stdin, bytes) else stdin
    if timeout is not None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        body["timeout"] = float(timeout)
    if max_output_bytes is not None:
        body["max_output_bytes"] = int(max_output_bytes)
    return body


def _result_from(d: Mapping[str, Any], stdout: str, stderr: str,
                 pid: Optional[int]) -> ExecutionResult:
    return ExecutionResult(
        stdout=stdout, stderr=stderr, exit_code=int(d.get("exit_code", -1)),
        signal=d.get("signal"), timed_out=bool(d.get("timed_out")),
        truncated=bool(d.get("truncated")), duration_ms=float(d.get("duration_ms") or 0.0),
        pid=pid if pid is not None else d.get("pid"))


def _as_timed_out(result: ExecutionResult, seconds: float) -> ExecutionResult:
    """A command killed at ``command_timeout``, reported as upstream reports it (exit code 124,
    a note on stderr), with the output it produced."""
    note = f"Command timed out after {seconds:g} seconds"
    result.stderr = f"{result.stderr}{note}" if result.stderr else note
    result.exit_code = 124
    return result


def _describe(command: Command) -> str:
    text = command if isinstance(command, str) else shlex.join([str(c) for c in command])
    return text if len(text) <= 80 else text[:77] + "..."


class Process:
    """A command running in the background (``commands.start``). Its output is collected (and
    passed to the callbacks) by a thread; it is killed when ``kill()`` is called, when its
    timeout passes, or when the connection that holds it is closed."""

    def __init__(self, commands: Commands, command: Command, stream: Any,
                 on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> None:
        self._commands = commands
        self.command = command
        self._stream = stream
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._done = threading.Event()
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self.pid: Optional[int] = None
        self.process_id: Optional[int] = None
        self.result: Optional[ExecutionResult] = None
        self._thread = threading.Thread(target=self._pump, daemon=True,
                                        name=f"agent-sandbox-process-{_describe(command)[:20]}")
        self._thread.start()

    def _pump(self) -> None:
        try:
            for line in self._stream.lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                t = ev.get("type")
                if t == "start":
                    self.pid, self.process_id = ev.get("pid"), ev.get("process_id")
                    self._started.set()
                elif t == "stdout":
                    self._stdout.append(ev.get("data", ""))
                    if self._on_stdout:
                        self._on_stdout(ev.get("data", ""))
                elif t == "stderr":
                    self._stderr.append(ev.get("data", ""))
                    if self._on_stderr:
                        self._on_stderr(ev.get("data", ""))
                elif t == "exit":
                    self.result = _result_from(ev, "".join(self._stdout), "".join(self._stderr),
                                               self.pid)
            if self.result is None:
                self._error = SandboxError(
                    f"the output stream of {_describe(self.command)!r} ended without an exit "
                    "event; the sandbox may have restarted")
        except (TransportError, OSError, ValueError) as e:
            if self.result is None:
                self._error = SandboxError(
                    f"lost the connection to {_describe(self.command)!r}: {e}; the process was "
                    "killed with it")
        except BaseException as e:  # a callback raised: kill the process, keep the error
            self._error = e
            if self.process_id is not None:
                try:
                    self._commands.kill(self.process_id, "SIGKILL")
                except SandboxError:
                    pass
        finally:
            self._started.set()
            self._done.set()
            self._stream.close()

    @property
    def stdout(self) -> str:
        """The output so far."""
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def is_running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> ExecutionResult:
        """Waits for the end; raises :class:`SandboxTimeoutError` if ``timeout`` passes first
        (the process keeps running) and :class:`CommandTimeoutError` if the process ran past
        its own timeout."""
        if not self._done.wait(timeout):
            raise SandboxTimeoutError(
                f"{_describe(self.command)!r} is still running after {timeout:g} s; call "
                "kill() to stop it")
        if self._error is not None:
            raise self._error
        assert self.result is not None
        if self.result.timed_out:
            raise CommandTimeoutError(
                f"{_describe(self.command)!r} ran past its timeout and was killed", self.result)
        return self.result

    def kill(self, signal: Union[str, int] = "SIGKILL", timeout: float = 10.0) -> None:
        """Sends ``signal`` to the process group (SIGKILL by default)."""
        self._started.wait(timeout)
        if self._done.is_set():
            return
        if self.process_id is None:
            self._stream.abort()
            return
        try:
            self._commands.kill(self.process_id, signal)
        except SandboxRequestError as e:
            if e.status_code != 404:
                raise

    def close(self) -> None:
        """Kills the process (if still running) and drops its connection."""
        if not self._done.is_set() and self.process_id is not None:
            try:
                self._commands.kill(self.process_id, "SIGKILL")
            except SandboxError:
                pass
            self._done.wait(5)
        self._stream.abort()
        self._done.wait(5)


class Commands:
    """``sandbox.commands``: run commands (through ``/bin/sh -c`` when given a string, directly
    when given a list)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def run(self, command: Command, timeout: Optional[float] = 60,
            command_timeout: Optional[float] = None, *,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            stdin: Optional[Union[str, bytes]] = None,
            on_stdout: Optional[OutputCallback] = None,
            on_stderr: Optional[OutputCallback] = None,
            max_output_bytes: Optional[int] = None) -> ExecutionResult:
        """Runs ``command`` and waits for it. Never retried: a command runs at most once.

        ``command_timeout`` (upstream's) limits the command: past it the command is killed and
        the result has ``timed_out=True`` and ``exit_code`` 124. Without it, ``timeout`` is the
        limit (sandboxd's REST and gRPC APIs) or the time the answer is waited for
        (python-runtime), and running past it raises :class:`CommandTimeoutError`.

        With our configurations (sandboxd's ``/v2`` exec) a string runs through ``/bin/sh -c``
        and a list directly, output is streamed to ``on_stdout``/``on_stderr`` as it arrives,
        and ``stdin`` and ``max_output_bytes`` apply. With upstream's configurations ``run``
        behaves as upstream's: the python-runtime API splits a string as a shell would without
        running one and has no ``env`` or ``cwd`` (NotImplementedError); the sandboxd modes run
        the string under ``/bin/sh -c`` over gRPC, with ``env`` and ``cwd``."""
        from ._runtimes import command_text
        from ._tracing import executable

        with self._sb._tracing.span("run") as span:
            if span.is_recording():
                span.set_attribute("sandbox.command.executable",
                                   executable(command_text(command)))
            result = self._run(command, timeout, command_timeout, env, cwd, stdin, on_stdout,
                               on_stderr, max_output_bytes)
            if span.is_recording():
                span.set_attribute("sandbox.exit_code", result.exit_code)
            return result

    def _run(self, command: Command, timeout: Optional[float], command_timeout: Optional[float],
             env: Optional[Mapping[str, str]], cwd: Optional[str],
             stdin: Optional[Union[str, bytes]], on_stdout: Optional[OutputCallback],
             on_stderr: Optional[OutputCallback],
             max_output_bytes: Optional[int]) -> ExecutionResult:
        sb = self._sb
        runtime = sb._dp.runtime
        if runtime != "rest":
            return self._run_upstream(runtime, command, timeout, command_timeout, env, cwd,
                                      stdin, on_stdout, on_stderr, max_output_bytes)
        limit = command_timeout if command_timeout is not None else timeout
        body = _exec_body(command, env, cwd, stdin, limit, max_output_bytes, sb._paths)
        what = f"running {_describe(command)!r}"
        wait = (limit or 300.0) + 15.0
        if command_timeout is not None and timeout:
            wait = max(wait, timeout)
        # Always NDJSON: its headers come at once, so the router's time limit to the response
        # headers (180 s by default) never cuts a long command, as it would a JSON answer.
        stream = sb._dp.stream("POST", "/v2/exec", what=what, json_body=body,
                               headers={"Accept": "application/x-ndjson"}, timeout=wait)
        proc = Process(self, command, stream, on_stdout, on_stderr)
        try:
            proc._done.wait()
        except BaseException:  # KeyboardInterrupt: the command must not outlive the call
            proc.close()
            raise
        if proc._error is not None:
            raise proc._error
        assert proc.result is not None
        result = proc.result
        if result.timed_out and command_timeout is not None:
            return _as_timed_out(result, command_timeout)
        if result.timed_out:
            raise CommandTimeoutError(
                f"{_describe(command)!r} did not finish within {limit:g} s and was killed; pass "
                "a larger timeout=, or run it in the background with commands.start()", result)
        return result

    def _run_upstream(self, runtime: str, command: Command, timeout: Optional[float],
                      command_timeout: Optional[float], env: Optional[Mapping[str, str]],
                      cwd: Optional[str], stdin: Optional[Union[str, bytes]],
                      on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback],
                      max_output_bytes: Optional[int]) -> ExecutionResult:
        from . import _runtimes

        extras = [n for n, v in (("stdin", stdin), ("on_stdout", on_stdout),
                                 ("on_stderr", on_stderr),
                                 ("max_output_bytes", max_output_bytes)) if v is not None]
        if extras:
            raise NotImplementedError(
                f"commands.run({', '.join(extras)}=...) needs sandboxd's /v2 exec API, and this "
                f"connection ({self._sb.connection.description}) speaks upstream's "
                f"{'python-runtime API' if runtime == 'legacy' else 'sandboxd gRPC API'}: use "
                "commands.start(...).wait(), or connect with SandboxEmbeddedConnectionConfig or "
                "SandboxClusterConnectionConfig")
        if command_timeout is not None and command_timeout <= 0:
            raise ValueError(f"command_timeout must be positive, not {command_timeout}")
        text = _runtimes.command_text(command)
        if not text:
            raise ValueError("the command is empty")
        wait = float(timeout if timeout else 60)
        if runtime == "legacy":
            if env or cwd:
                raise NotImplementedError(
                    "env and cwd are not supported by upstream's python-runtime API, which this "
                    f"connection ({self._sb.connection.description}) speaks: use "
                    "SandboxdPodTunnelConnectionConfig or SandboxdInClusterConnectionConfig "
                    "(sandboxd's gRPC API), or our SandboxEmbeddedConnectionConfig or "
                    "SandboxClusterConnectionConfig (sandboxd's REST API)")
            return _runtimes.legacy_run(self._sb._dp, text, wait, command_timeout)
        return _runtimes.sandboxd_run(self._sb._dp, text, wait, command_timeout, env, cwd)

    def start(self, command: Command, *, env: Optional[Mapping[str, str]] = None,
              cwd: Optional[str] = None, stdin: Optional[Union[str, bytes]] = None,
              on_stdout: Optional[OutputCallback] = None,
              on_stderr: Optional[OutputCallback] = None,
              timeout: Optional[float] = None,
              max_output_bytes: Optional[int] = None) -> Process:
        """Starts ``command`` in the background and returns once it runs. ``timeout`` (default
        24 h) bounds its life."""
        sb = self._sb
        body = _exec_body(command, env, cwd, stdin, timeout or BACKGROUND_TIMEOUT,
                          max_output_bytes, sb._paths)
        stream = sb._dp.stream("POST", "/v2/exec", what=f"starting {_describe(command)!r}",
                               json_body=body, headers={"Accept": "application/x-ndjson"},
                               timeout=60.0)
        stream.set_timeout(None)
        proc = Process(self, command, stream, on_stdout, on_stderr)
        proc._started.wait(60)
        if proc._error is not None and proc.result is None:
            raise proc._error
        return proc

    def list(self) -> list[ProcessInfo]:
        """The processes sandboxd runs (exec, PTY, gRPC, run_code kernels)."""
        r = self._sb._dp.request("GET", "/v2/processes", what="listing processes", timeout=30)
        return [ProcessInfo(id=p["id"], pid=p.get("pid"), command=p.get("command"),
                            origin=p.get("origin", ""), pty=bool(p.get("pty")),
                            running=bool(p.get("running")), started_at=p.get("started_at"))
                for p in r.json().get("processes", [])]

    def kill(self, process_id: int, signal: Union[str, int] = "SIGKILL") -> None:
        """Signals a process by its sandboxd id (``Process.process_id``)."""
        self._sb._dp.request("POST", f"/v2/processes/{int(process_id)}/signal",
                             what=f"signalling process {process_id}",
                             json_body={"signal": _signal_name(signal)}, timeout=30,
                             idempotent=True, ok=(200, 204))
