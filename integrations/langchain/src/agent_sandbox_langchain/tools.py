"""LangChain tools (``langchain_core.tools.BaseTool``) that act in one sandbox.

Errors a model can act on (a file that does not exist, a path outside the sandbox's root, a
command or cell past its timeout, an exception in the code) are raised as ``ToolException`` and,
with ``handle_tool_error=True`` (the default here), returned to the model as the tool's
answer. Errors only the program can fix (the sandbox is gone, suspended or unreachable, the
handle is closed) are raised as the SDK's exceptions, whose messages name the sandbox and say
what to do.
"""

from __future__ import annotations

from typing import Any

from agent_sandbox_sdk import (
    CommandTimeoutError,
    Sandbox,
    SandboxPathError,
    SandboxRequestError,
    SandboxTooLargeError,
)
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

#: Output past this many characters is cut in the middle (the model sees both ends).
DEFAULT_MAX_OUTPUT = 20_000


def clip(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters, saying how much was left out."""
    if limit <= 0 or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def _where(sandbox: Sandbox) -> str:
    return f"sandbox {sandbox.namespace}/{sandbox.sandbox_id}"


class _SandboxTool(BaseTool):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    sandbox: Sandbox = Field(exclude=True)
    timeout: float = 120.0
    max_output: int = DEFAULT_MAX_OUTPUT
    handle_tool_error: bool = True


class ExecuteInput(BaseModel):
    command: str = Field(description="A shell command line, run by /bin/sh -c")
    cwd: str | None = Field(default=None, description="Working directory (default /workspace)")


class SandboxExecuteTool(_SandboxTool):
    """Runs a shell command in the sandbox; answers its exit code and output."""

    name: str = "execute"
    description: str = (
        "Run a shell command in an isolated Linux sandbox (busybox, python3, bash) and return "
        "its exit code, stdout and stderr. Files persist between calls; the working directory "
        "is /workspace. No network access.")
    args_schema: type[BaseModel] = ExecuteInput

    def _run(self, command: str, cwd: str | None = None, **_: Any) -> str:
        try:
            r = self.sandbox.commands.run(command, timeout=self.timeout, cwd=cwd)
        except CommandTimeoutError as e:
            partial = e.result.stdout + e.result.stderr if e.result is not None else ""
            raise ToolException(
                f"the command ran past {self.timeout:g} s and was killed in "
                f"{_where(self.sandbox)}; run long work in the background "
                f"(`cmd > log 2>&1 &`) or split it. Output so far:\n"
                f"{clip(partial, self.max_output)}") from e
        except SandboxRequestError as e:
            raise ToolException(f"the command could not start in {_where(self.sandbox)}: "
                                f"{e}") from e
        out = f"exit code: {r.exit_code}\n"
        if r.stdout:
            out += f"stdout:\n{r.stdout}"
            if not r.stdout.endswith("\n"):
                out += "\n"
        if r.stderr:
            out += f"stderr:\n{r.stderr}"
        return clip(out, self.max_output)


class RunCodeInput(BaseModel):
    code: str = Field(description="Python source; the last expression's value is returned")


class SandboxRunCodeTool(_SandboxTool):
    """Runs Python in a persistent interpreter in the sandbox (state kept between calls)."""

    name: str = "run_code"
    description: str = (
        "Run Python code in a persistent interpreter inside an isolated sandbox, like a "
        "notebook cell: variables and imports persist between calls and the value of the last "
        "expression is returned with anything printed. No network access.")
    args_schema: type[BaseModel] = RunCodeInput
    language: str = "python"

    def _run(self, code: str, **_: Any) -> str:
        try:
            r = self.sandbox.run_code(code, language=self.language, timeout=self.timeout)
        except CommandTimeoutError as e:
            raise ToolException(
                f"the cell ran past {self.timeout:g} s and was interrupted in "
                f"{_where(self.sandbox)} (its variables are kept); make it faster or split "
                "it") from e
        parts = []
        if r.stdout:
            parts.append(f"stdout:\n{r.stdout}")
        if r.stderr:
            parts.append(f"stderr:\n{r.stderr}")
        if r.error is not None:
            tb = r.error.traceback or ""
            raise ToolException(clip("\n".join(
                parts + [f"{r.error.name}: {r.error.value}", tb]).strip(), self.max_output))
        if r.result is not None:
            parts.append(f"result: {r.result}")
        return clip("\n".join(parts) or "(no output)", self.max_output)


class ReadFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")


class SandboxReadFileTool(_SandboxTool):
    """Reads a text file from the sandbox."""

    name: str = "read_file"
    description: str = ("Read a text file from the sandbox. Relative paths start in "
                        "/workspace.")
    args_schema: type[BaseModel] = ReadFileInput
    max_bytes: int = 1 << 20

    def _run(self, path: str, **_: Any) -> str:
        import io

        buf = io.BytesIO()
        try:
            self.sandbox.files.read_to(path, buf, max_bytes=self.max_bytes)
        except SandboxTooLargeError as e:
            raise ToolException(f"{path} is larger than {self.max_bytes} bytes; read part of "
                                "it with a command (head, tail, sed -n)") from e
        except (SandboxPathError, ValueError) as e:
            raise ToolException(str(e)) from e
        except SandboxRequestError as e:
            if e.status_code == 404:
                raise ToolException(f"{path} does not exist in {_where(self.sandbox)}") from e
            raise ToolException(f"reading {path}: {e}") from e
        return clip(buf.getvalue().decode("utf-8", errors="replace"), self.max_output)


class WriteFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")
    content: str = Field(description="The whole new content of the file")


class SandboxWriteFileTool(_SandboxTool):
    """Writes (creates or replaces) a text file in the sandbox."""

    name: str = "write_file"
    description: str = ("Create or replace a text file in the sandbox (parent directories "
                        "are made). Relative paths start in /workspace.")
    args_schema: type[BaseModel] = WriteFileInput

    def _run(self, path: str, content: str, **_: Any) -> str:
        try:
            self.sandbox.files.write(path, content)
        except (SandboxPathError, ValueError) as e:
            raise ToolException(str(e)) from e
        except SandboxRequestError as e:
            raise ToolException(f"writing {path} in {_where(self.sandbox)}: {e}") from e
        return f"wrote {len(content.encode())} bytes to {path}"


class ListFilesInput(BaseModel):
    path: str = Field(default=".", description="Directory; relative paths start in /workspace")


class SandboxListFilesTool(_SandboxTool):
    """Lists a directory of the sandbox."""

    name: str = "list_files"
    description: str = ("List a directory in the sandbox: one entry a line, directories "
                        "ending in '/', with sizes. Relative paths start in /workspace.")
    args_schema: type[BaseModel] = ListFilesInput

    def _run(self, path: str = ".", **_: Any) -> str:
        try:
            entries = self.sandbox.files.list(path)
        except (SandboxPathError, ValueError) as e:
            raise ToolException(str(e)) from e
        except SandboxRequestError as e:
            if e.status_code == 404:
                raise ToolException(f"{path} does not exist in {_where(self.sandbox)}") from e
            raise ToolException(f"listing {path}: {e}") from e
        lines = [f"{e.name}/" if e.type == "directory" else f"{e.name}  {e.size} bytes"
                 for e in sorted(entries, key=lambda e: e.name)]
        return clip("\n".join(lines) or "(empty)", self.max_output)


def sandbox_tools(sandbox: Sandbox, *, timeout: float = 120.0,
                  max_output: int = DEFAULT_MAX_OUTPUT) -> list[BaseTool]:
    """``execute``, ``run_code``, ``read_file``, ``write_file`` and ``list_files`` for one
    sandbox, for ``create_agent``, ``bind_tools`` or a ``ToolNode``."""
    common: dict[str, Any] = {"sandbox": sandbox, "timeout": timeout, "max_output": max_output}
    return [SandboxExecuteTool(**common), SandboxRunCodeTool(**common),
            SandboxReadFileTool(**common), SandboxWriteFileTool(**common),
            SandboxListFilesTool(**common)]
