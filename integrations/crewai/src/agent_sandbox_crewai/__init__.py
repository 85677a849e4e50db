"""CrewAI tools for agent-sandbox sandboxes.

    from agent_sandbox_crewai import sandbox_tools

    agent = Agent(role=..., goal=..., backstory=..., tools=sandbox_tools(sandbox))
"""

from .tools import (
    SandboxExecuteTool,
    SandboxListFilesTool,
    SandboxReadFileTool,
    SandboxRunCodeTool,
    SandboxWriteFileTool,
    sandbox_tools,
)

__version__ = "0.1.0"

__all__ = ["SandboxExecuteTool", "SandboxListFilesTool", "SandboxReadFileTool",
           "SandboxRunCodeTool", "SandboxWriteFileTool", "sandbox_tools", "__version__"]
