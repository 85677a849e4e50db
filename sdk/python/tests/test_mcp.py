"""`agent-sandbox mcp` driven by the official MCP client (the ``mcp`` package) over stdio and
over streamable HTTP: upstream's tools with upstream's argument names, this project's run_code
and suspend/resume, and the errors a model gets for bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from .conftest import POOL, testenv

UPSTREAM_TOOLS = {
    "create_sandbox",
    "delete_sandbox",
    "execute_command",
    "upload_file",
    "download_file",
    "list_files",
    "file_exists",
}


def structured(result: Any) -> dict[str, Any]:
    content = getattr(result, "structured_content", None)
    if content is None:
        content = getattr(result, "structuredContent", None)
    if content is None:
        content = json.loads(result.content[0].text)
    assert isinstance(content, dict)
    return content


def is_error(result: Any) -> bool:
    value = getattr(result, "is_error", None)
    if value is None:
        value = getattr(result, "isError", None)
    return bool(value)


async def call(s: ClientSession, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await s.call_tool(tool, args)
    assert not is_error(result), (tool, structured(result))
    return structured(result)


async def fails(s: ClientSession, tool: str, args: dict[str, Any]) -> str:
    result = await s.call_tool(tool, args)
    assert is_error(result), (tool, structured(result))
    error = structured(result)["error"]
    assert isinstance(error, str)
    return error


async def exercise(s: ClientSession) -> None:
    await s.initialize()
    names = {t.name for t in (await s.list_tools()).tools}
    assert UPSTREAM_TOOLS <= names, names
    assert {"run_code", "suspend_sandbox", "resume_sandbox", "list_sandboxes", "pause_sandbox",
            "unpause_sandbox", "snapshot_sandbox", "fork_sandbox", "restore_sandbox"} <= names

    created = await call(s, "create_sandbox", {"warmpool": POOL, "labels": {"by": "mcp"}})
    claim = created["sandbox_claim_name"]
    assert claim.startswith(f"{POOL}-"), created
    target = {"sandbox_claim_name": claim}
    try:
        out = await call(s, "execute_command", {**target, "command": "echo hi; echo err >&2; exit 3"})
        assert (out["exit_code"], out["stdout"], out["stderr"]) == (3, "hi\n", "err\n"), out
        slow = await call(s, "execute_command", {**target, "command": "sleep 5", "timeout": 1})
        assert slow["timed_out"] is True, slow

        wrote = await call(s, "upload_file", {**target, "path": "dir/a.txt", "content": "hello"})
        assert wrote["bytes_written"] == 5
        raw = bytes(range(256))
        await call(s, "upload_file", {**target, "path": "dir/b.bin", "binary": True,
                                      "content": base64.b64encode(raw).decode()})
        text = await call(s, "download_file", {**target, "path": "dir/a.txt"})
        assert (text["content"], text["size"]) == ("hello", 5)
        binary = await call(s, "download_file", {**target, "path": "dir/b.bin", "binary": True})
        assert base64.b64decode(binary["content"]) == raw
        not_text = await fails(s, "download_file", {**target, "path": "dir/b.bin"})
        assert "binary=true" in not_text, not_text

        listing = await call(s, "list_files", {**target, "path": "dir"})
        entries = {e["name"]: e for e in listing["entries"]}
        assert set(entries) == {"a.txt", "b.bin"}, listing
        assert entries["a.txt"]["type"] == "file" and entries["a.txt"]["size"] == 5
        assert isinstance(entries["a.txt"]["mod_time"], float)
        capped = await call(s, "list_files", {**target, "path": "dir", "max_entries": 1})
        assert (len(capped["entries"]), capped["total_entries"], capped["truncated"]) == (1, 2, True)

        assert (await call(s, "file_exists", {**target, "path": "dir/a.txt"}))["exists"] is True
        assert (await call(s, "file_exists", {**target, "path": "nope"}))["exists"] is False

        await call(s, "run_code", {**target, "code": "x = 41"})
        cell = await call(s, "run_code", {**target, "code": "x + 1"})
        assert cell["results"][0]["text"] == "42", cell
        boom = await call(s, "run_code", {**target, "code": "1/0"})
        assert boom["error"]["name"] == "ZeroDivisionError", boom

        listed = await call(s, "list_sandboxes", {})
        assert claim in {c["sandbox_claim_name"] for c in listed["sandboxes"]}

        # Bad input: the error names what is wrong and what to do.
        no_pool = await fails(s, "create_sandbox", {"warmpool": "no-such-pool"})
        assert "no warm pool" in no_pool and "no-such-pool" in no_pool, no_pool
        no_claim = await fails(s, "execute_command",
                               {"sandbox_claim_name": "no-such-claim", "command": "true"})
        assert "no-such-claim" in no_claim, no_claim
        missing = await fails(s, "download_file", {**target, "path": "missing.txt"})
        assert "missing.txt" in missing, missing
        bad_b64 = await fails(s, "upload_file", {**target, "path": "x", "binary": True,
                                                 "content": "not base64!"})
        assert "base64" in bad_b64, bad_b64
        bad_args = await s.call_tool("execute_command", {"command": "true"})
        assert is_error(bad_args)

        # Pause and unpause; snapshot, fork and roll back.
        await call(s, "execute_command", {**target, "command": "mkdir -p /opt && echo v1 > /opt/v"})
        assert (await call(s, "pause_sandbox", target))["paused"] is True
        frozen = await fails(s, "execute_command", {**target, "command": "true"})
        assert "paused" in frozen.lower(), frozen
        await call(s, "unpause_sandbox", target)
        snap = await call(s, "snapshot_sandbox", target)
        await call(s, "execute_command", {**target, "command": "echo v2 > /opt/v"})
        forked = await call(s, "fork_sandbox", {**target, "snapshot": snap["snapshot"]})
        fork = {"sandbox_claim_name": forked["forks"][0]["sandbox_claim_name"]}
        try:
            seen = await call(s, "execute_command", {**fork, "command": "cat /opt/v"})
            assert seen["stdout"] == "v1\n", seen
        finally:
            await call(s, "delete_sandbox", fork)
        await call(s, "restore_sandbox", {**target, "snapshot": snap["snapshot"]})
        back = await call(s, "execute_command", {**target, "command": "cat /opt/v"})
        assert back["stdout"] == "v1\n", back
        no_snap = await fails(s, "restore_sandbox", {**target, "snapshot": "no-such-snapshot"})
        assert "no-such-snapshot" in no_snap, no_snap

        # Suspend keeps the volumes; resume brings the sandbox back Ready.
        await call(s, "suspend_sandbox", target)
        stopped = await fails(s, "execute_command", {**target, "command": "true"})
        assert "suspended" in stopped, stopped
        await call(s, "resume_sandbox", target)
        again = await call(s, "execute_command", {**target, "command": "echo back"})
        assert again["stdout"] == "back\n", again
    finally:
        await call(s, "delete_sandbox", target)
    gone = await fails(s, "delete_sandbox", target)
    assert "no claim or sandbox" in gone, gone


def test_mcp_over_stdio(up: Path) -> None:
    params = StdioServerParameters(
        command=str(testenv.binary()),
        args=["mcp", "--data-dir", str(up), "--log-level", "warn"],
    )

    async def main() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session)

    asyncio.run(asyncio.wait_for(main(), 300))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_mcp_over_streamable_http(up: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    server = subprocess.Popen(
        [str(testenv.binary()), "mcp", "--data-dir", str(up), "--log-level", "warn",
         "--http-listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)

        async def main() -> None:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    created = await call(session, "create_sandbox", {"warmpool": POOL})
                    target = {"sandbox_claim_name": created["sandbox_claim_name"]}
                    out = await call(session, "execute_command", {**target, "command": "echo http"})
                    assert out["stdout"] == "http\n"
                    await call(session, "delete_sandbox", target)

        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        server.terminate()
        server.wait(10)


def test_mcp_refuses_a_remote_http_address_without_the_switch(up: Path) -> None:
    out = subprocess.run(
        [str(testenv.binary()), "mcp", "--data-dir", str(up), "--http-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0
    assert "not a loopback address" in out.stderr, out.stderr
