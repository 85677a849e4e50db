"""A deepagents sandbox backend: ``create_deep_agent(model, backend=AgentSandboxBackend(sb))``.

deepagents' ``BaseSandbox`` builds its file tools (ls, read, write, edit, grep, glob) on three
primitives, implemented here with the SDK: ``execute`` (``commands.run`` under ``/bin/sh -c``),
``upload_files`` and ``download_files`` (sandboxd's file API, atomic writes, parents made).
Its helpers run small ``python3`` scripts in the sandbox, so the image needs Python 3 (the
example image has it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from agent_sandbox_sdk import (
    CommandTimeoutError,
    Sandbox,
    SandboxClient,
    SandboxPathError,
    SandboxRequestError,
)
from deepagents.backends.protocol import (
    ExecuteResponse,
    FileDownloadResponse,
    FileOperationError,
    FileUploadResponse,
    GrepMatch,
    GrepResult,
)
from deepagents.backends.sandbox import BaseSandbox

# grep in Python inside the sandbox: deepagents' default needs GNU grep (-Z, --include) or
# ripgrep, and slim images have busybox. Literal search, as deepagents' contract says.
_GREP = r"""
import fnmatch, json, os, sys
pattern, root, glob = sys.argv[1], sys.argv[2], sys.argv[3]
limit, skip = int(sys.argv[4]), set(json.loads(sys.argv[5]))
out = []
def wanted(full):
    if not glob:
        return True
    if "/" in glob:
        return fnmatch.fnmatch(os.path.relpath(full, root), glob.replace("**/", "*"))
    return fnmatch.fnmatch(os.path.basename(full), glob)
def scan(full):
    try:
        with open(full, "rb") as f:
            data = f.read(16 << 20)
    except OSError:
        return
    if b"\0" in data[:8192]:
        return
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if pattern in line:
            out.append([full, n, line])
            if limit and len(out) > limit:
                raise StopIteration
if not os.path.exists(root):
    print(json.dumps({"error": "No such file or directory"})); sys.exit(0)
try:
    if os.path.isfile(root):
        scan(root)
    else:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x not in skip)
            for name in sorted(files):
                full = os.path.join(d, name)
                if wanted(full):
                    scan(full)
except StopIteration:
    pass
print(json.dumps({"matches": out}))
"""

#: Output kept per command; the rest is cut and ``truncated`` set.
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20


class AgentSandboxBackend(BaseSandbox):
    """deepagents' sandbox backend on one agent-sandbox sandbox.

    ``timeout`` is the default per command (deepagents may pass its own). A command past its
    timeout is killed and answered with exit code 124 and the output so far, as ``timeout(1)``
    does, so that the agent can react. File errors are deepagents' standard codes
    (``file_not_found``, ``permission_denied``, ``is_directory``, ``invalid_path``); others
    carry the sandbox's message. Infrastructure errors (the sandbox gone or unreachable)
    propagate as the SDK's exceptions.
    """

    def __init__(self, sandbox: Sandbox, *, timeout: float = 300.0,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 env: Mapping[str, str] | None = None, owns_sandbox: bool = False) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self.env = dict(env or {})
        self._owns_sandbox = owns_sandbox

    @classmethod
    def from_warmpool(cls, client: SandboxClient[Sandbox], warmpool: str,
                      namespace: str = "default", *, labels: dict[str, str] | None = None,
                      timeout: float = 300.0,
                      sandbox_ready_timeout: float = 180) -> AgentSandboxBackend:
        """Claims a sandbox from ``warmpool``; :meth:`close` deletes it."""
        sb = client.create_sandbox(warmpool=warmpool, namespace=namespace, labels=labels,
                                   sandbox_ready_timeout=sandbox_ready_timeout)
        return cls(sb, timeout=timeout, owns_sandbox=True)

    @property
    def id(self) -> str:
        return f"{self.sandbox.namespace}/{self.sandbox.sandbox_id}"

    def close(self) -> None:
        """Deletes the sandbox if this backend claimed it (else leaves it running)."""
        if self._owns_sandbox:
            self.sandbox.terminate()

    def __enter__(self) -> AgentSandboxBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        limit = float(timeout) if timeout else self.timeout
        try:
            r = self.sandbox.commands.run(command, timeout=limit, env=self.env or None,
                                          max_output_bytes=self.max_output_bytes)
        except CommandTimeoutError as e:
            res = e.result
            partial = (res.stdout + res.stderr) if res is not None else ""
            return ExecuteResponse(
                output=partial + f"\n[killed after {limit:g} s in sandbox {self.id}; run long "
                "work in the background or raise the timeout]",
                exit_code=124, truncated=bool(getattr(res, "truncated", False)))
        output = r.stdout + r.stderr
        return ExecuteResponse(output=output, exit_code=r.exit_code, truncated=r.truncated)

    def grep(self, pattern: str, path: str | None = None, glob: str | None = None, *,
             max_count: int | None = None) -> GrepResult:
        """Literal search (``grep -F``) with deepagents' semantics, run by python3 in the
        sandbox (busybox's grep lacks the options deepagents' default uses)."""
        root = path or "."
        r = self.sandbox.commands.run(
            ["python3", "-c", _GREP, pattern, root, glob or "", str(max_count or 0),
             json.dumps(list(self.grep_exclude_dirs))], timeout=self.timeout,
            max_output_bytes=self.max_output_bytes)
        try:
            answer = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return GrepResult(error=f"Path '{root}': grep failed in sandbox {self.id} "
                              f"(exit {r.exit_code}): {(r.stdout + r.stderr).strip()[-500:]}")
        if "error" in answer:
            return GrepResult(error=f"Path '{root}': {answer['error']}")
        matches: list[GrepMatch] = [{"path": p, "line": n, "text": t}
                                    for p, n, t in answer["matches"]]
        if max_count is not None and len(matches) > max_count:
            return GrepResult(matches=matches[:max_count], truncated=True)
        return GrepResult(matches=matches)

    async def agrep(self, pattern: str, path: str | None = None, glob: str | None = None, *,
                    max_count: int | None = None) -> GrepResult:
        return await asyncio.to_thread(self.grep, pattern, path, glob, max_count=max_count)

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        out = []
        for path, content in files:
            try:
                self.sandbox.files.write(path, content)
                out.append(FileUploadResponse(path=path))
            except (SandboxPathError, ValueError):
                out.append(FileUploadResponse(path=path, error="invalid_path"))
            except SandboxRequestError as e:
                out.append(FileUploadResponse(path=path, error=_request_error(e)))
        return out

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        out = []
        for path in paths:
            try:
                out.append(FileDownloadResponse(path=path, content=self.sandbox.files.read(path)))
            except (SandboxPathError, ValueError):
                out.append(FileDownloadResponse(path=path, error="invalid_path"))
            except SandboxRequestError as e:
                out.append(FileDownloadResponse(path=path, error=_request_error(e)))
        return out


def _request_error(e: SandboxRequestError) -> FileOperationError | str:
    status, message = e.status_code, str(e).lower()
    if status == 404:
        return "file_not_found"
    if status == 403:
        return "permission_denied"
    if status == 400 and "directory" in message:
        return "is_directory"
    return str(e)
