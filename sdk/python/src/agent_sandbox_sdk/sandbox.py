"""A handle on one claimed sandbox: commands, files, run_code, PTY sessions, status, suspend and
resume, terminate."""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ._connection import Connection, DataPlane, pick_pod_ip
from ._http import TransportError
from ._kube import KubeApiError
from ._ws import OP_TEXT, WebSocket, WebSocketClosed
from .exceptions import (
    CommandTimeoutError,
    SandboxError,
    SandboxNotFoundError,
    SandboxNotReadyError,
    SandboxRequestError,
    SandboxTimeoutError,
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
    TransferSummary,
)

if TYPE_CHECKING:
    from .client import SandboxClient

Command = Union[str, Sequence[str]]
OutputCallback = Callable[[str], Any]

# A background process is held open by its stream; this is its lifetime unless given.
BACKGROUND_TIMEOUT = 24 * 3600.0


class SandboxPathError(SandboxError, ValueError):
    """An absolute path outside the directory sandboxd serves files from."""


def _signal_name(sig: Union[str, int]) -> Union[str, int]:
    if isinstance(sig, str) and not sig.upper().startswith("SIG") and not sig.isdigit():
        return "SIG" + sig.upper()
    return sig


class _Paths:
    """Makes absolute paths mean what they say. sandboxd confines files (and a command's
    ``cwd``) to its root directory and would silently re-root any other absolute path below it;
    this finds the root once and refuses such paths for files, and ``cd``s for commands."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._root: Optional[str] = None
        self._lock = threading.Lock()

    def root(self) -> str:
        with self._lock:
            if self._root is None:
                r = self._sandbox._dp.request(
                    "POST", "/v2/exec", what="finding the sandbox's root directory",
                    json_body={"command": ["pwd"], "timeout": 30},
                    headers={"Accept": "application/json"}, timeout=30, idempotent=True)
                self._root = (r.json().get("stdout") or "/").strip() or "/"
            return self._root

    def inside(self, path: str) -> bool:
        """Whether sandboxd takes ``path`` as it is (relative, or under its root)."""
        if not path.startswith("/"):
            return True
        root = self.root()
        norm = posixpath.normpath(path)
        return root == "/" or norm == root or norm.startswith(root.rstrip("/") + "/")

    def file(self, path: str) -> str:
        if not isinstance(path, str) or not path:
            raise SandboxPathError(f"a file path must be a non-empty string, not {path!r}")
        if "\x00" in path:
            raise SandboxPathError(f"a file path must not contain NUL: {path!r}")
        if not self.inside(path):
            root = self.root()
            raise SandboxPathError(
                f"{path} is outside the directory this sandbox serves files from ({root}): "
                f"sandboxd would have used {root.rstrip('/')}{posixpath.normpath(path)} instead. "
                f"Use a path under {root} or a relative one (relative paths start at {root}), "
                "or run sandboxd with --root-dir / to reach every path")
        return path


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

    def run(self, command: Command, timeout: Optional[float] = 60, *,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            stdin: Optional[Union[str, bytes]] = None,
            on_stdout: Optional[OutputCallback] = None,
            on_stderr: Optional[OutputCallback] = None,
            max_output_bytes: Optional[int] = None) -> ExecutionResult:
        """Runs ``command`` and waits for it. Output is streamed to ``on_stdout``/``on_stderr``
        as it arrives when they are given. Raises :class:`CommandTimeoutError` (with the output
        so far in ``.result``) when it runs past ``timeout`` seconds and is killed. Never
        retried: a command runs at most once."""
        sb = self._sb
        body = _exec_body(command, env, cwd, stdin, timeout, max_output_bytes, sb._paths)
        what = f"running {_describe(command)!r}"
        wait = (timeout or 300.0) + 15.0
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
        if result.timed_out:
            raise CommandTimeoutError(
                f"{_describe(command)!r} did not finish within {timeout:g} s and was killed; pass "
                "a larger timeout=, or run it in the background with commands.start()", result)
        return result

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


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _v1(path: str) -> str:
    return "/v1/files/" + urllib.parse.quote(path, safe="")


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extracts regular files, directories and symbolic links that stay inside ``dest``;
    anything else (absolute names, ``..``, links leading out, devices, hard links) is skipped."""
    dest = dest.resolve()
    extra: dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}

    def inside(p: Path) -> bool:
        return p == dest or dest in p.parents

    for m in tar:
        if not (m.isfile() or m.isdir() or m.issym()):
            continue
        name = m.name
        if name.startswith("/") or ".." in name.split("/"):
            continue
        target = dest / name
        if not inside(target.parent.resolve()):
            continue
        if m.issym() and (m.linkname.startswith("/")
                          or not inside((target.parent / m.linkname).resolve())):
            continue
        m.mode &= 0o777
        tar.extract(m, dest, **extra)


class Files:
    """``sandbox.files``: the sandbox's files. Relative paths start at sandboxd's root directory
    (``/workspace`` in the example image); absolute paths are taken as they are."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def write(self, path: str, content: Union[bytes, str], timeout: float = 60, *,
              mode: Optional[str] = None, allow_unsafe_paths: bool = False) -> None:
        """Writes a file atomically, creating parent directories. ``mode`` like ``"0755"``."""
        del allow_unsafe_paths  # upstream's; nothing here rewrites paths
        p = self._sb._paths.file(path)
        data = content.encode() if isinstance(content, str) else bytes(content)
        self._sb._dp.request("PUT", _v1(p), what=f"writing {path}", body=data,
                             params={"mode": mode} if mode else None,
                             headers={"Content-Type": "application/octet-stream"},
                             timeout=timeout, ok=(200, 201, 204))

    def read(self, path: str, timeout: float = 60, *, allow_unsafe_paths: bool = False) -> bytes:
        """The bytes of a file."""
        del allow_unsafe_paths
        p = self._sb._paths.file(path)
        r = self._sb._dp.request("GET", _v1(p), what=f"reading {path}", timeout=timeout)
        if r.headers.get("content-type", "").startswith("application/json") and \
                r.body.startswith(b'{"path"'):
            raise SandboxRequestError(f"reading {path}: it is a directory; use files.list()",
                                      status_code=400, code="IS_A_DIRECTORY")
        return r.body

    def list(self, path: str = ".", timeout: float = 60) -> list[FileEntry]:
        """The entries of a directory, sorted by name."""
        p = self._sb._paths.file(path)
        r = self._sb._dp.request("GET", _v1(p), what=f"listing {path}", timeout=timeout)
        if not r.headers.get("content-type", "").startswith("application/json"):
            raise SandboxRequestError(f"listing {path}: it is a file, not a directory",
                                      status_code=400, code="NOT_A_DIRECTORY")
        return [FileEntry.from_sandboxd(e) for e in r.json().get("entries", [])]

    def exists(self, path: str, timeout: float = 60) -> bool:
        p = self._sb._paths.file(path)
        r = self._sb._dp.request("HEAD", _v1(p), what=f"checking {path}", timeout=timeout,
                                 ok=(200, 404))
        return r.status == 200

    def delete(self, path: str, recursive: bool = False, timeout: float = 60) -> None:
        """Deletes a file, a link (never its target) or, with ``recursive``, a directory tree."""
        p = self._sb._paths.file(path)
        self._sb._dp.request("DELETE", _v1(p), what=f"deleting {path}", timeout=timeout,
                             params={"recursive": "true"} if recursive else None,
                             ok=(200, 204))

    def stat(self, path: str, timeout: float = 60) -> FileInfo:
        p = self._sb._paths.file(path)
        r = self._sb._dp.request("GET", "/v2/files/stat", what=f"stat {path}",
                                 params={"path": p}, timeout=timeout)
        return FileInfo.from_json(r.json())

    def mkdir(self, path: str, parents: bool = True, mode: Optional[str] = None,
              timeout: float = 60) -> None:
        p = self._sb._paths.file(path)
        body: dict[str, Any] = {"path": p, "parents": parents}
        if mode:
            body["mode"] = mode
        self._sb._dp.request("POST", "/v2/files/mkdir", what=f"mkdir {path}", json_body=body,
                             timeout=timeout, idempotent=True, ok=(200, 201))

    def move(self, source: str, destination: str, overwrite: bool = False,
             timeout: float = 60) -> None:
        s, d = self._sb._paths.file(source), self._sb._paths.file(destination)
        self._sb._dp.request("POST", "/v2/files/move", what=f"moving {source} to {destination}",
                             json_body={"from": s, "to": d, "overwrite": overwrite},
                             timeout=timeout, idempotent=False, ok=(200, 204))

    def upload_dir(self, local_dir: Union[str, os.PathLike[str]], remote_dir: str = ".",
                   timeout: float = 300) -> TransferSummary:
        """Copies a local directory tree into ``remote_dir`` (created as needed) as one tar
        stream. Symbolic links are kept as links."""
        src = Path(local_dir)
        if not src.is_dir():
            raise NotADirectoryError(f"{src} is not a directory")
        p = self._sb._paths.file(remote_dir)
        with tempfile.SpooledTemporaryFile(max_size=32 << 20) as buf:
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for root, dirs, files in os.walk(src):
                    dirs.sort()
                    rel_root = Path(root).relative_to(src)
                    for name in [*dirs, *sorted(files)]:
                        full = Path(root) / name
                        tar.add(full, arcname=str(rel_root / name), recursive=False)
            size = buf.tell()
            buf.seek(0)
            r = self._sb._dp.request("PUT", "/v2/files/tar", what=f"uploading {src} to {remote_dir}",
                                     params={"path": p}, body=buf,
                                     headers={"Content-Type": "application/x-tar",
                                              "Content-Length": str(size)},
                                     timeout=timeout, ok=(200, 201))
        d = r.json()
        return TransferSummary(files=d.get("files", 0), directories=d.get("directories", 0),
                               symlinks=d.get("symlinks", 0), bytes=d.get("bytes", 0),
                               skipped=list(d.get("skipped") or []))

    def download_dir(self, remote_dir: str, local_dir: Union[str, os.PathLike[str]],
                     timeout: float = 300) -> None:
        """Copies ``remote_dir`` (a directory, or a single file) into ``local_dir`` (created).
        Members that would land outside ``local_dir`` are skipped."""
        p = self._sb._paths.file(remote_dir)
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        stream = self._sb._dp.stream("GET", "/v2/files/tar", what=f"downloading {remote_dir}",
                                     params={"path": p}, timeout=timeout)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                _safe_extract(tar, dest)
        except TransportError as e:
            raise self._sb._dp.transport_error(e, f"downloading {remote_dir}", timeout) from None
        finally:
            stream.close()


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


# ---------------------------------------------------------------------------------------------
# PTY
# ---------------------------------------------------------------------------------------------


class PtySession:
    """An interactive terminal. Output is collected by a thread (and passed to ``on_data``);
    read it with :meth:`read` or :meth:`read_until`."""

    def __init__(self, ws: WebSocket, on_data: Optional[Callable[[bytes], Any]]) -> None:
        self._ws = ws
        self._on_data = on_data
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.exit_code: Optional[int] = None
        self.signal: Optional[str] = None
        self._closed = False
        self._thread = threading.Thread(target=self._pump, daemon=True, name="agent-sandbox-pty")
        self._thread.start()

    def _pump(self) -> None:
        try:
            while True:
                msg = self._ws.recv(None)
                if msg is None:
                    continue
                op, payload = msg
                if op == OP_TEXT:
                    try:
                        ev = json.loads(payload)
                    except ValueError:
                        continue
                    if ev.get("type") == "exit":
                        with self._cond:
                            self.exit_code = ev.get("exit_code")
                            self.signal = ev.get("signal")
                    continue
                if self._on_data:
                    self._on_data(payload)
                with self._cond:
                    self._buf += payload
                    self._cond.notify_all()
        except (WebSocketClosed, OSError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: Union[str, bytes]) -> None:
        """Types ``data`` into the terminal."""
        self._ws.send_binary(data.encode() if isinstance(data, str) else bytes(data))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send_text(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def send_signal(self, signal: Union[str, int] = "SIGINT") -> None:
        self._ws.send_text(json.dumps({"type": "signal", "signal": _signal_name(signal)}))

    def read(self, timeout: float = 1.0) -> bytes:
        """What the terminal printed since the last read; waits up to ``timeout`` for
        something when nothing is buffered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._buf and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out = bytes(self._buf)
            self._buf.clear()
            return out

    def read_until(self, expected: Union[str, bytes], timeout: float = 30.0) -> bytes:
        """Everything up to and including ``expected``; raises :class:`SandboxTimeoutError`
        (with what was read in the message) if it does not appear within ``timeout``."""
        pat = expected.encode() if isinstance(expected, str) else expected
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                i = self._buf.find(pat)
                if i >= 0:
                    out = bytes(self._buf[:i + len(pat)])
                    del self._buf[:i + len(pat)]
                    return out
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    seen = bytes(self._buf[-300:])
                    why = "the terminal closed" if self._closed else f"{timeout:g} s passed"
                    raise SandboxTimeoutError(
                        f"{pat!r} did not appear in the terminal output ({why}); last output: "
                        f"{seen!r}")
                self._cond.wait(left)

    def wait(self, timeout: float = 30.0) -> Optional[int]:
        """Waits for the terminal's program to end; returns its exit code."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxTimeoutError(f"the terminal is still open after {timeout:g} s")
                self._cond.wait(left)
        return self.exit_code

    def close(self) -> None:
        """Closes the terminal (its program is killed)."""
        self._ws.close()
        self._thread.join(5)

    def __enter__(self) -> PtySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pty:
    """``sandbox.pty``: terminals over WebSocket."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def create(self, command: Optional[str] = None, *, cols: int = 80, rows: int = 24,
               cwd: Optional[str] = None, on_data: Optional[Callable[[bytes], Any]] = None,
               timeout: float = 30.0) -> PtySession:
        """Opens a terminal running ``command`` (a shell string; default an interactive shell)."""
        params: dict[str, Any] = {"cols": cols, "rows": rows}
        if cwd and not self._sb._paths.inside(cwd):
            inner = command or "exec sh -i"
            command = f"cd -- {shlex.quote(cwd)} && {inner}"
        elif cwd:
            params["cwd"] = cwd
        if command:
            params["command"] = command
        ws = self._sb._dp.websocket("/v2/pty", params, what="opening a terminal", timeout=timeout)
        return PtySession(ws, on_data)

    open = create


# ---------------------------------------------------------------------------------------------
# The handle
# ---------------------------------------------------------------------------------------------


class Sandbox:
    """One claimed sandbox. Made by :meth:`SandboxClient.create_sandbox` or
    :meth:`SandboxClient.get_sandbox`; usable as a context manager (terminates on exit)."""

    def __init__(self, claim_name: str, sandbox_id: str, namespace: str = "default",
                 connection: Optional[Connection] = None, *, pod_ips: Optional[list[str]] = None,
                 client: Optional[SandboxClient[Any]] = None) -> None:
        if connection is None:
            raise ValueError("Sandbox handles are made by SandboxClient")
        self.claim_name: Optional[str] = claim_name
        self.sandbox_id = sandbox_id
        self.namespace = namespace
        self.connection = connection
        self._client = client
        self._active = True
        self._dp = DataPlane(connection, sandbox_id, namespace, pick_pod_ip(pod_ips),
                             self._read_pod_ip)
        self._paths = _Paths(self)
        self._commands = Commands(self)
        self._files = Files(self)
        self._code = Code(self)
        self._pty = Pty(self)
        self._pod_name: Optional[str] = None

    def __repr__(self) -> str:
        return (f"Sandbox(claim_name={self.claim_name!r}, sandbox_id={self.sandbox_id!r}, "
                f"namespace={self.namespace!r})")

    # -- engines ---------------------------------------------------------------------------

    @property
    def commands(self) -> Commands:
        self._require_active()
        return self._commands

    @property
    def files(self) -> Files:
        self._require_active()
        return self._files

    @property
    def code(self) -> Code:
        self._require_active()
        return self._code

    @property
    def pty(self) -> Pty:
        self._require_active()
        return self._pty

    def run_code(self, code: str, language: str = "python", context: Optional[str] = None,
                 timeout: Optional[float] = 60, **kwargs: Any) -> CodeResult:
        """Shorthand for ``sandbox.code.run``."""
        return self.code.run(code, language, context, timeout, **kwargs)

    @property
    def is_active(self) -> bool:
        return self._active

    def _require_active(self) -> None:
        if not self._active:
            raise SandboxNotReadyError(
                f"this handle on sandbox {self.namespace}/{self.sandbox_id} is closed "
                "(terminated or close_connection()); get a new one with client.get_sandbox()")

    # -- Kubernetes side -------------------------------------------------------------------

    def _get_sandbox(self) -> dict[str, Any]:
        try:
            return dict(self.connection.kube.get("sandboxes", self.namespace, self.sandbox_id))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxNotFoundError(
                    f"Sandbox {self.namespace}/{self.sandbox_id} does not exist (any more)"
                ) from None
            raise

    def _read_pod_ip(self) -> Optional[str]:
        try:
            sb = self._get_sandbox()
        except SandboxNotFoundError:
            return None
        return pick_pod_ip((sb.get("status") or {}).get("podIPs"))

    def status(self) -> tuple[str, str]:
        """``("SandboxReady" | "SandboxNotReady" | "SandboxNotFound", message)``."""
        try:
            sb = self._get_sandbox()
        except SandboxNotFoundError as e:
            return "SandboxNotFound", str(e)
        for c in (sb.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                ok = c.get("status") == "True"
                return ("SandboxReady" if ok else "SandboxNotReady"), str(c.get("message") or "")
        return "SandboxNotReady", "the Sandbox has no Ready condition yet"

    def get_pod_name(self) -> str:
        if self._pod_name is None:
            sb = self._get_sandbox()
            ann = (sb.get("metadata") or {}).get("annotations") or {}
            self._pod_name = ann.get("agents.x-k8s.io/pod-name") or self.sandbox_id
        return self._pod_name

    def get_pod_ip(self) -> Optional[str]:
        """The pod IP the SDK sends to (from the claim's status; refreshed after resume)."""
        return self._dp.pod_ip

    def is_suspended(self) -> bool:
        sb = self._get_sandbox()
        return (sb.get("spec") or {}).get("operatingMode") == "Suspended"

    def suspend(self, wait: bool = True, timeout: float = 120) -> None:
        """Suspends the sandbox: its Pod is deleted, its volumes are kept
        (``spec.operatingMode: Suspended``). With ``wait``, returns once the Pod is gone."""
        self.connection.kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                                         {"spec": {"operatingMode": "Suspended"}})
        self._dp.pod_ip = None
        if wait:
            self._wait_condition("Suspended", timeout, "suspend")

    def resume(self, wait: bool = True, timeout: float = 180) -> None:
        """Resumes a suspended sandbox (``spec.operatingMode: Running``). With ``wait``,
        returns once it is Ready and sandboxd answers."""
        self.connection.kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                                         {"spec": {"operatingMode": "Running"}})
        if not wait:
            return
        deadline = time.monotonic() + timeout
        sb = self._wait_condition("Ready", timeout, "resume", need_ip=True)
        self._dp.pod_ip = pick_pod_ip((sb.get("status") or {}).get("podIPs"))
        self._pod_name = None
        while True:
            try:
                r = self._dp.request("GET", "/v1/health", what="checking sandboxd", timeout=5,
                                     ok=(200, 502, 503))
                if r.status == 200:
                    return
            except (SandboxError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"sandbox {self.namespace}/{self.sandbox_id} is Ready but sandboxd did not "
                    f"answer within {timeout:g} s of resuming; see its logs (kubectl logs "
                    f"{self.get_pod_name()} -n {self.namespace})")
            time.sleep(0.1)

    def _wait_condition(self, ctype: str, timeout: float, what: str,
                        need_ip: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        kube = self.connection.kube
        last = ""
        sb = self._get_sandbox()
        rv = (sb.get("metadata") or {}).get("resourceVersion")

        def done(obj: dict[str, Any]) -> bool:
            nonlocal last
            st = obj.get("status") or {}
            for c in st.get("conditions") or []:
                if c.get("type") == ctype:
                    last = f"{c.get('reason')}: {c.get('message')}"
                    if c.get("status") == "True" and (not need_ip or st.get("podIPs")):
                        return True
            return False

        if done(sb):
            return sb
        for typ, obj in kube.watch("sandboxes", self.namespace, deadline=deadline,
                                   resource_version=rv,
                                   field_selector=f"metadata.name={self.sandbox_id}"):
            if typ == "RELIST":
                obj = self._get_sandbox()
            elif typ == "DELETED":
                raise SandboxNotFoundError(
                    f"Sandbox {self.namespace}/{self.sandbox_id} was deleted during {what}")
            if done(obj):
                return obj
        raise SandboxTimeoutError(
            f"{what} of sandbox {self.namespace}/{self.sandbox_id} did not complete within "
            f"{timeout:g} s (last {ctype} condition: {last or 'none'}); check "
            f"`kubectl describe sandbox {self.sandbox_id} -n {self.namespace}`")

    # -- lifecycle -------------------------------------------------------------------------

    def close_connection(self) -> None:
        """Stops using this handle; the sandbox keeps running."""
        self._active = False

    def terminate(self) -> None:
        """Deletes the claim (and with it the sandbox). Idempotent."""
        self._active = False
        if self.claim_name is None:
            return
        name = self.claim_name
        self.connection.kube.delete("sandboxclaims", self.namespace, name)
        self.claim_name = None
        if self._client is not None:
            self._client._forget(self.namespace, name)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
