"""``commands.run`` and the basic file calls as upstream's SDK makes them, for upstream's
connection configurations: the python-runtime API (``legacy``: ``/execute``, ``/upload``,
``/download``, ``/list``, ``/exists``) and sandboxd (gRPC ``Execute`` for commands, ``/v1/files``
for files). Paths are checked as upstream checks them."""

from __future__ import annotations

import io
import posixpath
import secrets
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import IO, Any, Optional, Union

from ._dataplane import DataPlane
from ._grpc import encode_execute_request, grpc_module
from .exceptions import (
    CommandTimeoutError,
    SandboxConnectionError,
    SandboxRequestError,
)
from .models import ExecutionResult, FileEntry

# How much longer than command_timeout the answer is waited for (the runtime answers after
# killing the command), as upstream.
COMMAND_TIMEOUT_MARGIN = 10.0

Content = Union[bytes, bytearray, memoryview, str, IO[bytes]]


def safe_path(path: str) -> str:
    """A relative path without ``..``, as upstream sends (and refuses) file paths: control
    characters are refused, leading ``/`` dropped."""
    if not isinstance(path, str):
        raise TypeError(f"a file path must be a string, not {type(path).__name__}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"the path {path!r} contains control characters")
    if not path.strip():
        raise ValueError("the path is empty")
    norm = posixpath.normpath(path).lstrip("/")
    if not norm or norm == ".":
        raise ValueError(f"the path {path!r} names no file")
    if ".." in norm.split("/"):
        raise ValueError(f"the path {path!r} leads outside the sandbox's directory (..)")
    return norm


def content_bytes(content: Content) -> bytes:
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, io.TextIOBase) or not callable(getattr(content, "read", None)):
        raise TypeError("file content must be bytes, str, or a file opened in binary mode")
    data = content.read()
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("file content must be bytes, str, or a file opened in binary mode")
    return bytes(data)


def command_text(command: Union[str, Sequence[str]]) -> str:
    if isinstance(command, str):
        return command
    return shlex.join([str(c) for c in command])


def timed_out_result(seconds: float, stdout: str = "", stderr: str = "") -> ExecutionResult:
    """Upstream's report of a command killed at ``command_timeout``."""
    note = f"Command timed out after {seconds:g} seconds"
    return ExecutionResult(stdout=stdout, stderr=(stderr + note) if stderr else note,
                           exit_code=124, timed_out=True)


# -- commands ----------------------------------------------------------------------------------


def legacy_run(dp: DataPlane, command: str, timeout: float,
               command_timeout: Optional[float]) -> ExecutionResult:
    """``POST /execute``: the python-runtime splits the command as a shell would (without
    running one)."""
    payload: dict[str, Any] = {"command": command}
    wait = float(timeout)
    if command_timeout is not None:
        payload["timeout_seconds"] = command_timeout
        wait = max(wait, command_timeout + COMMAND_TIMEOUT_MARGIN)
    r = dp.request("POST", "/execute", what=f"running {command[:80]!r}", json_body=payload,
                   timeout=wait, idempotent=False)
    try:
        d = r.json()
        return ExecutionResult(stdout=str(d.get("stdout") or ""), stderr=str(d.get("stderr") or ""),
                               exit_code=int(d.get("exit_code", -1)),
                               timed_out=bool(d.get("timed_out", False)))
    except (ValueError, AttributeError, TypeError):
        raise SandboxRequestError(f"running {command[:80]!r}: the runtime answered something "
                                  f"that is not a result: {r.text[:300]!r}",
                                  status_code=r.status, response=r) from None


def sandboxd_run(dp: DataPlane, command: str, timeout: float, command_timeout: Optional[float],
                 env: Optional[Mapping[str, str]], cwd: Optional[str]) -> ExecutionResult:
    """gRPC ``Execute`` of ``/bin/sh -c command``; the call's deadline is ``command_timeout``
    (reported as a timed-out result) or else ``timeout`` (raised)."""
    for key in env or {}:
        if not key or "=" in key:
            raise ValueError(f"invalid env name {key!r}: it must be non-empty and have no '='")
    grpc = grpc_module()
    deadline = float(command_timeout if command_timeout is not None else timeout)
    request = encode_execute_request(["/bin/sh", "-c", command], env, cwd)
    target = dp.grpc_target()
    try:
        code, out, err = dp.grpc.execute(target, request, deadline)
    except grpc.RpcError as e:
        status = e.code()
        if status == grpc.StatusCode.DEADLINE_EXCEEDED:
            if command_timeout is not None:
                return timed_out_result(deadline)
            result = ExecutionResult(exit_code=124, timed_out=True)
            raise CommandTimeoutError(
                f"{command[:80]!r} did not finish within {deadline:g} s and was killed; pass a "
                "larger timeout, or command_timeout= to get the result instead", result) from None
        if status == grpc.StatusCode.UNAVAILABLE:
            dp.grpc.close()
            dp.invalidate()
            raise SandboxConnectionError(
                f"running {command[:80]!r}: sandboxd's gRPC service at {target} is unavailable: "
                f"{e.details()}") from None
        raise SandboxRequestError(
            f"running {command[:80]!r}: sandboxd's process service failed ({status.name}): "
            f"{e.details()}", code=status.name) from None
    return ExecutionResult(stdout=out.decode("utf-8", errors="replace"),
                           stderr=err.decode("utf-8", errors="replace"), exit_code=code)


# -- files: the python-runtime -----------------------------------------------------------------


def _q(path: str) -> str:
    return urllib.parse.quote(path, safe="")


def legacy_write(dp: DataPlane, path: str, data: bytes, timeout: float) -> None:
    boundary = secrets.token_hex(16)
    name = path.replace("\\", "\\\\").replace('"', '\\"')
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    dp.request("POST", "/upload", what=f"writing {path}", body=body, timeout=timeout,
               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
               idempotent=True)


def legacy_read(dp: DataPlane, path: str, timeout: float) -> bytes:
    return dp.request("GET", f"/download/{_q(path)}", what=f"reading {path}",
                      timeout=timeout).body


def legacy_list(dp: DataPlane, path: str, timeout: float) -> list[FileEntry]:
    r = dp.request("GET", f"/list/{_q(path)}", what=f"listing {path}", timeout=timeout)
    entries = r.json() or []
    if not isinstance(entries, list):
        raise SandboxRequestError(f"listing {path}: not a listing: {r.text[:300]!r}",
                                  status_code=r.status, response=r)
    return [FileEntry.from_legacy(e) for e in entries]


def legacy_exists(dp: DataPlane, path: str, timeout: float) -> bool:
    r = dp.request("GET", f"/exists/{_q(path)}", what=f"checking {path}", timeout=timeout)
    return bool((r.json() or {}).get("exists", False))


# -- files: sandboxd's /v1, as upstream's SDK addresses it -------------------------------------


def v1_path(path: str) -> str:
    """``/v1/files/<path>`` with the path as one escaped segment, and ``.``/``..`` escaped too
    so that nothing on the way resolves them."""
    parts = []
    for seg in path.split("/"):
        parts.append({".": "%2E", "..": "%2E%2E"}.get(seg) or urllib.parse.quote(seg, safe=""))
    return "/v1/files/" + "%2F".join(parts)


def sandboxd_list(dp: DataPlane, path: str, timeout: float) -> list[FileEntry]:
    r = dp.request("GET", v1_path(path), what=f"listing {path}", timeout=timeout)
    try:
        listing = r.json()
    except ValueError:
        listing = None
    if not isinstance(listing, dict) or "entries" not in listing:
        raise SandboxRequestError(f"listing {path}: it is a file, not a directory",
                                  status_code=400, code="NOT_A_DIRECTORY", response=r)
    return [FileEntry.from_sandboxd(e) for e in listing.get("entries") or []
            if e.get("type") in ("file", "directory")]
