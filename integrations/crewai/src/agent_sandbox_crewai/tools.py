"""CrewAI tools (``crewai.tools.BaseTool``) that act in one sandbox.

CrewAI hands a tool's return value to the agent as text, and reports a raised exception to the
agent as a failed tool call. So errors the agent can act on (a missing file, a path outside the
sandbox's root, a command or cell past its timeout, an exception in its code, a non-zero exit)
are returned as text that starts with ``Error:`` and names the sandbox; errors only the program
can fix (the sandbox gone, suspended or unreachable, the handle closed) are raised as the
SDK's exceptions, whose messages name the sandbox and say what to do.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from agent_sandbox_sdk import (
    CommandTimeoutError,
    Sandbox,
    SandboxPathError,
    SandboxRequestError,
    SandboxTooLargeError,
)
from crewai.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field

#: Output past this many characters is cut in the middle (the agent sees both ends).
DEFAULT_MAX_OUTPUT = 20_000


def clip(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters, saying how much was left out."""
    if limit <= 0 or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


class _SandboxTool(BaseTool):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    sandbox: Sandbox = Field(exclude=True)
    timeout: float = 120.0
    max_output: int = DEFAULT_MAX_OUTPUT

    @property
    def where(self) -> str:
        return f"sandbox {self.sandbox.namespace}/{self.sandbox.sandbox_id}"

    async def _arun(self, *args: Any, **kwargs: Any) -> Any:
        """CrewAI's async path: the SDK is synchronous, so the call runs in a worker thread."""
        return await asyncio.to_thread(self._run, *args, **kwargs)


class ExecuteInput(BaseModel):
    command: str = Field(description="A shell command line, run by /bin/sh -c")
    cwd: str | None = Field(default=None, description="Working directory (default /workspace)")


class SandboxExecuteTool(_SandboxTool):
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
            return clip(f"Error: the command ran past {self.timeout:g} s and was killed in "
                        f"{self.where}; run long work in the background (`cmd > log 2>&1 &`) "
                        f"or split it. Output so far:\n{partial}", self.max_output)
        except SandboxRequestError as e:
            return f"Error: the command could not start in {self.where}: {e}"
        out = f"exit code: {r.exit_code}\n"
        if r.stdout:
            out += f"stdout:\n{r.stdout}" + ("" if r.stdout.endswith("\n") else "\n")
        if r.stderr:
            out += f"stderr:\n{r.stderr}"
        return clip(out, self.max_output)


class RunCodeInput(BaseModel):
    code: str = Field(description="Python source; the last expression's value is returned")


class SandboxRunCodeTool(_SandboxTool):
    name: str = "run_code"
    description: str = (
        "Run Python code in a persistent interpreter inside an isolated sandbox, like a "
        "notebook cell: variables and imports persist between calls and the value of the last "
        "expression is returned with anything printed. No network access.")
    args_schema: type[BaseModel] = RunCodeInput

    def _run(self, code: str, **_: Any) -> str:
        try:
            r = self.sandbox.run_code(code, timeout=self.timeout)
        except CommandTimeoutError:
            return (f"Error: the cell ran past {self.timeout:g} s and was interrupted in "
                    f"{self.where} (its variables are kept); make it faster or split it")
        parts = []
        if r.stdout:
            parts.append(f"stdout:\n{r.stdout}")
        if r.stderr:
            parts.append(f"stderr:\n{r.stderr}")
        if r.error is not None:
            parts.insert(0, f"Error: {r.error.name}: {r.error.value}")
            if r.error.traceback:
                parts.append(r.error.traceback)
        elif r.result is not None:
            parts.append(f"result: {r.result}")
        return clip("\n".join(parts) or "(no output)", self.max_output)


class ReadFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")


class SandboxReadFileTool(_SandboxTool):
    name: str = "read_file"
    description: str = "Read a text file from the sandbox. Relative paths start in /workspace."
    args_schema: type[BaseModel] = ReadFileInput
    max_bytes: int = 1 << 20

    def _run(self, path: str, **_: Any) -> str:
        buf = io.BytesIO()
        try:
            self.sandbox.files.read_to(path, buf, max_bytes=self.max_bytes)
        except SandboxTooLargeError:
            return (f"Error: {path} is larger than {self.max_bytes} bytes; read part of it "
                    "with a command (head, tail, sed -n)")
        except (SandboxPathError, ValueError) as e:
            return f"Error: {e}"
        except SandboxRequestError as e:
            if e.status_code == 404:
                return f"Error: {path} does not exist in {self.where}"
            return f"Error: reading {path} in {self.where}: {e}"
        return clip(buf.getvalue().decode("utf-8", errors="replace"), self.max_output)


class WriteFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")
    content: str = Field(description="The whole new content of the file")


class SandboxWriteFileTool(_SandboxTool):
    name: str = "write_file"
    description: str = ("Create or replace a text file in the sandbox (parent directories are "
                        "made). Relative paths start in /workspace.")
    args_schema: type[BaseModel] = WriteFileInput

    def _run(self, path: str, content: str, **_: Any) -> str:
        try:
            self.sandbox.files.write(path, content)
        except (SandboxPathError, ValueError) as e:
            return f"Error: {e}"
        except SandboxRequestError as e:
            return f"Error: writing {path} in {self.where}: {e}"
        return f"wrote {len(content.encode())} bytes to {path}"


class ListFilesInput(BaseModel):
    path: str = Field(default=".", description="Directory; relative paths start in /workspace")


class SandboxListFilesTool(_SandboxTool):
    name: str = "list_files"
    description: str = ("List a directory in the sandbox: one entry a line, directories ending "
                        "in '/', with sizes. Relative paths start in /workspace.")
    args_schema: type[BaseModel] = ListFilesInput

    def _run(self, path: str = ".", **_: Any) -> str:
        try:
            entries = self.sandbox.files.list(path)
        except (SandboxPathError, ValueError) as e:
            return f"Error: {e}"
        except SandboxRequestError as e:
            if e.status_code == 404:
                return f"Error: {path} does not exist in {self.where}"
            return f"Error: listing {path} in {self.where}: {e}"
        lines = [f"{e.name}/" if e.type == "directory" else f"{e.name}  {e.size} bytes"
                 for e in sorted(entries, key=lambda e: e.name)]
        return clip("\n".join(lines) or "(empty)", self.max_output)


def sandbox_tools(sandbox: Sandbox, *, timeout: float = 120.0,
                  max_output: int = DEFAULT_MAX_OUTPUT) -> list[BaseTool]:
    """``execute``, ``run_code``, ``read_file``, ``write_file`` and ``list_files`` for one
    sandbox, for ``Agent(tools=...)``."""
    common: dict[str, Any] = {"sandbox": sandbox, "timeout": timeout, "max_output": max_output}
    return [SandboxExecuteTool(**common), SandboxRunCodeTool(**common),
            SandboxReadFileTool(**common), SandboxWriteFileTool(**common),
            SandboxListFilesTool(**common)]
