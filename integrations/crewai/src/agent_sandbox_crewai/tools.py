"""CrewAI tools (``crewai.tools.BaseTool``) that act in one sandbox, over the SDK's
framework-neutral operations (``agent_sandbox_sdk.agent_tools``).

CrewAI hands a tool's return value to the agent as text, and reports a raised exception to the
agent as a failed tool call. So errors the agent can act on (a missing file, a path outside the
sandbox's root, a command or cell past its timeout, an exception in its code) are returned as
text that starts with ``Error:`` and names the sandbox; errors only the program can fix (the
sandbox gone, suspended or unreachable, the handle closed) are raised as the SDK's exceptions,
whose messages name the sandbox and say what to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent_sandbox_sdk import Sandbox, agent_tools
from agent_sandbox_sdk.agent_tools import DEFAULT_MAX_OUTPUT, DESCRIPTIONS, ToolInputError
from crewai.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field


def _answer(op: Callable[[], str]) -> str:
    try:
        return op()
    except ToolInputError as e:
        return f"Error: {e}"


class _SandboxTool(BaseTool):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    sandbox: Sandbox = Field(exclude=True)
    timeout: float = 120.0
    max_output: int = DEFAULT_MAX_OUTPUT

    async def _arun(self, *args: Any, **kwargs: Any) -> Any:
        """CrewAI's async path: the SDK is synchronous, so the call runs in a worker thread."""
        return await asyncio.to_thread(self._run, *args, **kwargs)


class ExecuteInput(BaseModel):
    command: str = Field(description="A shell command line, run by /bin/sh -c")
    cwd: str | None = Field(default=None, description="Working directory (default /workspace)")


class SandboxExecuteTool(_SandboxTool):
    name: str = "execute"
    description: str = DESCRIPTIONS["execute"]
    args_schema: type[BaseModel] = ExecuteInput

    def _run(self, command: str, cwd: str | None = None, **_: Any) -> str:
        return _answer(lambda: agent_tools.execute(
            self.sandbox, command, cwd, timeout=self.timeout, max_output=self.max_output))


class RunCodeInput(BaseModel):
    code: str = Field(description="Python source; the last expression's value is returned")


class SandboxRunCodeTool(_SandboxTool):
    name: str = "run_code"
    description: str = DESCRIPTIONS["run_code"]
    args_schema: type[BaseModel] = RunCodeInput
    language: str = "python"

    def _run(self, code: str, **_: Any) -> str:
        return _answer(lambda: agent_tools.run_code(
            self.sandbox, code, language=self.language, timeout=self.timeout,
            max_output=self.max_output))


class ReadFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")


class SandboxReadFileTool(_SandboxTool):
    name: str = "read_file"
    description: str = DESCRIPTIONS["read_file"]
    args_schema: type[BaseModel] = ReadFileInput
    max_bytes: int = 1 << 20

    def _run(self, path: str, **_: Any) -> str:
        return _answer(lambda: agent_tools.read_file(
            self.sandbox, path, max_bytes=self.max_bytes, max_output=self.max_output))


class WriteFileInput(BaseModel):
    path: str = Field(description="File path; relative paths start in /workspace")
    content: str = Field(description="The whole new content of the file")


class SandboxWriteFileTool(_SandboxTool):
    name: str = "write_file"
    description: str = DESCRIPTIONS["write_file"]
    args_schema: type[BaseModel] = WriteFileInput

    def _run(self, path: str, content: str, **_: Any) -> str:
        return _answer(lambda: agent_tools.write_file(self.sandbox, path, content))


class ListFilesInput(BaseModel):
    path: str = Field(default=".", description="Directory; relative paths start in /workspace")


class SandboxListFilesTool(_SandboxTool):
    name: str = "list_files"
    description: str = DESCRIPTIONS["list_files"]
    args_schema: type[BaseModel] = ListFilesInput

    def _run(self, path: str = ".", **_: Any) -> str:
        return _answer(lambda: agent_tools.list_files(
            self.sandbox, path, max_output=self.max_output))


def sandbox_tools(sandbox: Sandbox, *, timeout: float = 120.0,
                  max_output: int = DEFAULT_MAX_OUTPUT) -> list[BaseTool]:
    """``execute``, ``run_code``, ``read_file``, ``write_file`` and ``list_files`` for one
    sandbox, for ``Agent(tools=...)``."""
    common: dict[str, Any] = {"sandbox": sandbox, "timeout": timeout, "max_output": max_output}
    return [SandboxExecuteTool(**common), SandboxRunCodeTool(**common),
            SandboxReadFileTool(**common), SandboxWriteFileTool(**common),
            SandboxListFilesTool(**common)]
