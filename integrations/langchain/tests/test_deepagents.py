"""deepagents' sandbox backend protocol on a live sandbox: the primitives, the file tools
deepagents builds on them, and a whole deep agent whose (scripted, offline) model calls them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agent_sandbox_sdk import SandboxClient
from deepagents import create_deep_agent
from deepagents.backends.protocol import SandboxBackendProtocol
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent_sandbox_langchain import AgentSandboxBackend


@pytest.fixture()
def backend(client: SandboxClient, pool: str) -> Iterator[AgentSandboxBackend]:
    with AgentSandboxBackend.from_warmpool(client, pool, timeout=30) as b:
        yield b


def test_protocol_primitives(backend: AgentSandboxBackend) -> None:
    assert isinstance(backend, SandboxBackendProtocol)
    assert backend.id == f"{backend.sandbox.namespace}/{backend.sandbox.sandbox_id}"
    r = backend.execute("echo out; echo err >&2; exit 4")
    assert (r.exit_code, r.output) == (4, "out\nerr\n")
    up = backend.upload_files([("/workspace/a/b.txt", b"hello\n"), ("/proc/x/y", b"no")])
    assert up[0].error is None and up[1].error is not None
    down = backend.download_files(["/workspace/a/b.txt", "/workspace/missing.txt"])
    assert down[0].content == b"hello\n"
    assert down[1].error == "file_not_found" and down[1].content is None


def test_timeout_is_an_answer(backend: AgentSandboxBackend) -> None:
    r = backend.execute("echo begun; sleep 20", timeout=1)
    assert r.exit_code == 124 and "begun" in r.output and backend.id in r.output


def test_file_tools_built_on_the_primitives(backend: AgentSandboxBackend) -> None:
    assert backend.write("/workspace/src/app.py", "x = 1\ny = 2\n").error is None
    read = backend.read("/workspace/src/app.py")
    assert "x = 1" in str(read)
    assert backend.edit("/workspace/src/app.py", "y = 2", "y = 3").error is None
    assert backend.download_files(["/workspace/src/app.py"])[0].content == b"x = 1\ny = 3\n"
    listing = str(backend.ls("/workspace/src"))
    assert "app.py" in listing
    found = backend.grep("y = 3", "/workspace")
    assert found.error is None and found.matches == [
        {"path": "/workspace/src/app.py", "line": 2, "text": "y = 3"}], found
    assert backend.grep("y = 3", "/workspace", glob="*.txt").matches == []
    assert backend.grep("nothing-like-this", "/workspace/src/app.py").matches == []
    assert backend.grep("x", "/workspace/none").error is not None
    assert "app.py" in str(backend.glob("**/*.py", "/workspace"))


class ScriptedModel(GenericFakeChatModel):
    """A chat model that answers from a script (no model service): tool calls, then text."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def test_a_deep_agent_uses_the_sandbox(backend: AgentSandboxBackend) -> None:
    script = iter([
        AIMessage(content="", tool_calls=[{
            "name": "write_file", "id": "c1",
            "args": {"file_path": "/workspace/job.py", "content": "print(6 * 7)\n"}}]),
        AIMessage(content="", tool_calls=[{
            "name": "execute", "id": "c2", "args": {"command": "python3 /workspace/job.py"}}]),
        AIMessage(content="The answer is 42."),
    ])
    agent = create_deep_agent(model=ScriptedModel(messages=script), backend=backend)
    out = agent.invoke({"messages": [HumanMessage("Write job.py and run it.")]})
    tool_answers = {m.tool_call_id: str(m.content) for m in out["messages"]
                    if isinstance(m, ToolMessage)}
    assert "42" in tool_answers["c2"], tool_answers
    assert out["messages"][-1].content == "The answer is 42."
    assert backend.sandbox.files.read("job.py") == b"print(6 * 7)\n"
