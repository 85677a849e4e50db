"""The CrewAI tools against a live sandbox, through CrewAI's own interfaces: ``BaseTool.run``
(argument validation against the schema), the structured tool CrewAI's agents call, CrewAI's
tool-usage path for a parsed agent action, and an ``Agent`` holding the tools. No model is
called."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from agent_sandbox_sdk import Sandbox, SandboxClient
from agent_sandbox_sdk.exceptions import SandboxNotReadyError
from crewai.tools import BaseTool

from agent_sandbox_crewai import SandboxExecuteTool, sandbox_tools


@pytest.fixture()
def sandbox(client: SandboxClient, pool: str) -> Iterator[Sandbox]:
    yield client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)


def by_name(tools: list[BaseTool]) -> dict[str, BaseTool]:
    return {t.name: t for t in tools}


def test_files_commands_and_code(sandbox: Sandbox) -> None:
    t = by_name(sandbox_tools(sandbox, timeout=30))
    assert sorted(t) == ["execute", "list_files", "read_file", "run_code", "write_file"]
    assert "wrote" in t["write_file"].run(path="proj/hello.py", content="print(6 * 7)\n")
    assert t["read_file"].run(path="/workspace/proj/hello.py") == "print(6 * 7)\n"
    assert "hello.py" in t["list_files"].run(path="proj")
    out = t["execute"].run(command="python3 hello.py; exit 3", cwd="proj")
    assert out.startswith("exit code: 3\n") and "42" in out, out
    assert "result: 9" in t["run_code"].run(code="x = 4\nx + 5")
    assert "result: 10" in t["run_code"].run(code="x + 6")


def test_async_run(sandbox: Sandbox) -> None:
    import asyncio

    tools = by_name(sandbox_tools(sandbox))

    async def both() -> list[str]:
        return list(await asyncio.gather(tools["execute"].arun(command="echo one"),
                                         tools["run_code"].arun(code="2 ** 10")))

    one, code = asyncio.run(both())
    assert "one" in one and "result: 1024" in code


def test_arguments_are_validated_by_crewai(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        SandboxExecuteTool(sandbox=sandbox).run(cmd="echo wrong name")


def test_structured_tool_as_agents_call_it(sandbox: Sandbox) -> None:
    structured = SandboxExecuteTool(sandbox=sandbox).to_structured_tool()
    assert structured.name == "execute"
    assert "echo-from-crewai" in str(structured.invoke({"command": "echo echo-from-crewai"}))


def test_tool_usage_path_of_an_agent_action(sandbox: Sandbox) -> None:
    from crewai.agents.parser import AgentAction
    from crewai.utilities.tool_utils import execute_tool_and_check_finality

    tools = [t.to_structured_tool() for t in sandbox_tools(sandbox)]
    args = json.dumps({"command": "echo $((6 * 7))"})
    action = AgentAction(thought="run it", tool="execute", tool_input=args,
                         text=f"Thought: run it\nAction: execute\nAction Input: {args}")
    result = execute_tool_and_check_finality(agent_action=action, tools=tools)
    assert "42" in str(result.result), result
    assert result.result_as_answer is False


def test_an_agent_takes_the_tools(sandbox: Sandbox) -> None:
    from crewai import Agent

    agent = Agent(role="engineer", goal="run code", backstory="works in a sandbox",
                  tools=sandbox_tools(sandbox), llm="gpt-4o-mini")
    assert sorted(t.name for t in agent.tools or []) == [
        "execute", "list_files", "read_file", "run_code", "write_file"]


def test_errors_an_agent_can_fix_are_answers(sandbox: Sandbox) -> None:
    t = by_name(sandbox_tools(sandbox, timeout=2))
    missing = t["read_file"].run(path="nope.txt")
    assert missing.startswith("Error:") and sandbox.sandbox_id in missing, missing
    err = t["run_code"].run(code="1/0")
    assert err.startswith("Error: ZeroDivisionError"), err
    slow = t["execute"].run(command="echo started; sleep 30")
    assert slow.startswith("Error:") and "started" in slow and sandbox.sandbox_id in slow


def test_a_gone_sandbox_is_the_programs_problem(client: SandboxClient, pool: str) -> None:
    sb = client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)
    tool = SandboxExecuteTool(sandbox=sb)
    sb.terminate()
    with pytest.raises(SandboxNotReadyError, match=sb.sandbox_id):
        tool.run(command="true")
