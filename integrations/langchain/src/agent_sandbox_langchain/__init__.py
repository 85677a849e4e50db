"""LangChain tools and a deepagents backend for agent-sandbox sandboxes.

    from agent_sandbox_langchain import sandbox_tools, AgentSandboxBackend

    tools = sandbox_tools(sandbox)                 # execute, run_code, read/write/list files
    agent = create_deep_agent(model, backend=AgentSandboxBackend(sandbox))

``AgentSandboxBackend`` needs the ``deepagents`` extra; it is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tools import (
    SandboxExecuteTool,
    SandboxListFilesTool,
    SandboxReadFileTool,
    SandboxRunCodeTool,
    SandboxWriteFileTool,
    sandbox_tools,
)

if TYPE_CHECKING:
    from .deepagents_backend import AgentSandboxBackend

__version__ = "0.1.0"

__all__ = ["AgentSandboxBackend", "SandboxExecuteTool", "SandboxListFilesTool",
           "SandboxReadFileTool", "SandboxRunCodeTool", "SandboxWriteFileTool",
           "sandbox_tools", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "AgentSandboxBackend":
        try:
            from .deepagents_backend import AgentSandboxBackend
        except ImportError as e:
            raise ImportError(
                "AgentSandboxBackend needs deepagents: pip install 'agent-sandbox-langchain"
                "[deepagents]'") from e
        return AgentSandboxBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
