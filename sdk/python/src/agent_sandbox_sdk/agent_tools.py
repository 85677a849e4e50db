"""The operations behind the agent-framework tools (LangChain, CrewAI, …), framework-neutral:
each acts in one sandbox and returns the text a model reads.

An error the model can act on (a file that does not exist, a path outside the sandbox's root, a
command or cell past its timeout, an exception in its code) raises :class:`ToolInputError`,
whose message says what happened and what to do; each framework's adapter turns it into its
own kind of tool error. Errors only the program can fix (the sandbox gone, suspended or
unreachable, the handle closed) raise the SDK's own exceptions.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .exceptions import (
    CommandTimeoutError,
    SandboxError,
    SandboxRequestError,
    SandboxTooLargeError,
)

if TYPE_CHECKING:
    from .sandbox import Sandbox

#: Output past this many characters is cut in the middle (the model sees both ends).
DEFAULT_MAX_OUTPUT = 20_000

#: The tools' names and the descriptions a model reads.
DESCRIPTIONS = {
    "execute": (
        "Run a shell command in an isolated Linux sandbox (busybox, python3, bash) and return "
        "its exit code, stdout and stderr. Files persist between calls; the working directory "
        "is /workspace. No network access."),
    "run_code": (
        "Run Python code in a persistent interpreter inside an isolated sandbox, like a "
        "notebook cell: variables and imports persist between calls and the value of the last "
        "expression is returned with anything printed. No network access."),
    "read_file": "Read a text file from the sandbox. Relative paths start in /workspace.",
    "write_file": ("Create or replace a text file in the sandbox (parent directories are "
                   "made). Relative paths start in /workspace."),
    "list_files": ("List a directory in the sandbox: one entry a line, directories ending in "
                   "'/', with sizes. Relative paths start in /workspace."),
}


class ToolInputError(SandboxError):
    """An error the model can act on; the message says what happened and what to do."""


def clip(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters, saying how much was left out."""
    if limit <= 0 or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def where(sandbox: Sandbox) -> str:
    """``sandbox <namespace>/<name>``, for messages."""
    return f"sandbox {sandbox.namespace}/{sandbox.sandbox_id}"


def _path_error(sandbox: Sandbox, path: str, doing: str, e: Exception) -> ToolInputError:
    if isinstance(e, SandboxRequestError) and e.status_code == 404:
        return ToolInputError(f"{path} does not exist in {where(sandbox)}")
    if isinstance(e, SandboxRequestError):
        return ToolInputError(f"{doing} {path} in {where(sandbox)}: {e}")
    return ToolInputError(str(e))


def execute(sandbox: Sandbox, command: str, cwd: str | None = None, *, timeout: float,
            max_output: int = DEFAULT_MAX_OUTPUT) -> str:
    """Runs ``command`` with ``/bin/sh -c``: its exit code, stdout and stderr."""
    try:
        r = sandbox.commands.run(command, timeout=timeout, cwd=cwd)
    except CommandTimeoutError as e:
        partial = e.result.stdout + e.result.stderr if e.result is not None else ""
        raise ToolInputError(clip(
            f"the command ran past {timeout:g} s and was killed in {where(sandbox)}; run long "
            f"work in the background (`cmd > log 2>&1 &`) or split it. Output so far:\n"
            f"{partial}", max_output)) from e
    except SandboxRequestError as e:
        raise ToolInputError(f"the command could not start in {where(sandbox)}: {e}") from e
    out = f"exit code: {r.exit_code}\n"
    if r.stdout:
        out += f"stdout:\n{r.stdout}" + ("" if r.stdout.endswith("\n") else "\n")
    if r.stderr:
        out += f"stderr:\n{r.stderr}"
    return clip(out, max_output)


def run_code(sandbox: Sandbox, code: str, *, language: str = "python", timeout: float,
             max_output: int = DEFAULT_MAX_OUTPUT) -> str:
    """Runs a cell in the sandbox's persistent interpreter: what it printed and its value."""
    try:
        r = sandbox.run_code(code, language=language, timeout=timeout)
    except CommandTimeoutError as e:
        raise ToolInputError(
            f"the cell ran past {timeout:g} s and was interrupted in {where(sandbox)} (its "
            "variables are kept); make it faster or split it") from e
    parts = []
    if r.stdout:
        parts.append(f"stdout:\n{r.stdout}")
    if r.stderr:
        parts.append(f"stderr:\n{r.stderr}")
    if r.error is not None:
        raise ToolInputError(clip("\n".join(
            [f"{r.error.name}: {r.error.value}"] + parts + [r.error.traceback or ""]).strip(),
            max_output))
    if r.result is not None:
        parts.append(f"result: {r.result}")
    return clip("\n".join(parts) or "(no output)", max_output)


def read_file(sandbox: Sandbox, path: str, *, max_bytes: int = 1 << 20,
              max_output: int = DEFAULT_MAX_OUTPUT) -> str:
    """A text file's content (undecodable bytes replaced)."""
    buf = io.BytesIO()
    try:
        sandbox.files.read_to(path, buf, max_bytes=max_bytes)
    except SandboxTooLargeError as e:
        raise ToolInputError(f"{path} is larger than {max_bytes} bytes; read part of it with a "
                             "command (head, tail, sed -n)") from e
    except (SandboxRequestError, ValueError) as e:
        raise _path_error(sandbox, path, "reading", e) from e
    return clip(buf.getvalue().decode("utf-8", errors="replace"), max_output)


def write_file(sandbox: Sandbox, path: str, content: str) -> str:
    """Creates or replaces a text file (parents made)."""
    try:
        sandbox.files.write(path, content)
    except (SandboxRequestError, ValueError) as e:
        raise _path_error(sandbox, path, "writing", e) from e
    return f"wrote {len(content.encode())} bytes to {path}"


def list_files(sandbox: Sandbox, path: str = ".", *,
               max_output: int = DEFAULT_MAX_OUTPUT) -> str:
    """A directory's entries, one a line, directories ending in ``/``, files with sizes."""
    try:
        entries = sandbox.files.list(path)
    except (SandboxRequestError, ValueError) as e:
        raise _path_error(sandbox, path, "listing", e) from e
    lines = [f"{e.name}/" if e.type == "directory" else f"{e.name}  {e.size} bytes"
             for e in sorted(entries, key=lambda e: e.name)]
    return clip("\n".join(lines) or "(empty)", max_output)
