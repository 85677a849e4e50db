"""The LangChain tools against a live sandbox, called through LangChain's own tool interface
(``invoke`` with arguments and with a model's tool call)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_sandbox_sdk import Sandbox, SandboxClient
from agent_sandbox_sdk.exceptions import SandboxNotReadyError
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

from agent_sandbox_langchain import SandboxExecuteTool, sandbox_tools


@pytest.fixture()
def sandbox(client: SandboxClient, pool: str) -> Iterator[Sandbox]:
    yield client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)


def by_name(tools: list[BaseTool]) -> dict[str, BaseTool]:
    return {t.name: t for t in tools}


def test_tool_set_and_schemas(sandbox: Sandbox) -> None:
    tools = by_name(sandbox_tools(sandbox))
    assert sorted(tools) == ["execute", "list_files", "read_file", "run_code", "write_file"]
    for t in tools.values():
        assert isinstance(t, BaseTool)
        assert t.description
    assert set(tools["write_file"].args) == {"path", "content"}
    assert tools["execute"].tool_call_schema.model_json_schema()["required"] == ["command"]


def test_files_commands_and_code(sandbox: Sandbox) -> None:
    t = by_name(sandbox_tools(sandbox, timeout=30))
    assert "wrote" in t["write_file"].invoke({"path": "proj/hello.py",
                                              "content": "print(6 * 7)\n"})
    assert t["read_file"].invoke({"path": "/workspace/proj/hello.py"}) == "print(6 * 7)\n"
    assert "hello.py" in t["list_files"].invoke({"path": "proj"})
    out = t["execute"].invoke({"command": "python3 hello.py; echo oops >&2; exit 3",
                               "cwd": "proj"})
    assert out.startswith("exit code: 3\n") and "42" in out and "oops" in out, out
    assert "result: 9" in t["run_code"].invoke({"code": "x = 4\nx + 5"})
    assert "result: 10" in t["run_code"].invoke({"code": "x + 6"})  # state persists


def test_tool_call_from_a_model(sandbox: Sandbox) -> None:
    execute = SandboxExecuteTool(sandbox=sandbox)
    msg = execute.invoke({"type": "tool_call", "id": "call-1", "name": "execute",
                          "args": {"command": "echo from-the-sandbox"}})
    assert isinstance(msg, ToolMessage)
    assert msg.tool_call_id == "call-1" and "from-the-sandbox" in msg.content


def test_async_invoke(sandbox: Sandbox) -> None:
    import asyncio

    tools = by_name(sandbox_tools(sandbox))

    async def both() -> list[str]:
        return list(await asyncio.gather(tools["execute"].ainvoke({"command": "echo one"}),
                                         tools["run_code"].ainvoke({"code": "2 ** 10"})))

    one, code = asyncio.run(both())
    assert "one" in one and "result: 1024" in code


def test_errors_a_model_can_fix_are_answers(sandbox: Sandbox) -> None:
    t = by_name(sandbox_tools(sandbox, timeout=2))
    missing = t["read_file"].invoke({"path": "nope.txt"})
    assert "does not exist" in missing and sandbox.sandbox_id in missing, missing
    err = t["run_code"].invoke({"code": "1/0"})
    assert "ZeroDivisionError" in err, err
    slow = t["execute"].invoke({"command": "echo started; sleep 30"})
    assert "ran past 2 s" in slow and "started" in slow and sandbox.sandbox_id in slow, slow
    outside = t["read_file"].invoke({"path": "/proc/../../etc/passwd"})
    assert isinstance(outside, str)


def test_long_output_is_clipped(sandbox: Sandbox) -> None:
    out = SandboxExecuteTool(sandbox=sandbox, max_output=1000).invoke(
        {"command": "seq 1 100000"})
    assert len(out) < 1200 and "characters cut" in out and out.rstrip().endswith("100000")


def test_a_gone_sandbox_is_the_programs_problem(client: SandboxClient, pool: str) -> None:
    sb = client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)
    tool = SandboxExecuteTool(sandbox=sb)
    sb.terminate()
    with pytest.raises(SandboxNotReadyError, match=sb.sandbox_id):
        tool.invoke({"command": "true"})
