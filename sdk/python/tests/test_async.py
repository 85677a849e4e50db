"""AsyncSandboxClient: the same calls as coroutines (fork and rollback included); cancellation
kills the command."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_sandbox_sdk import AsyncSandboxClient, SandboxEmbeddedConnectionConfig

from .conftest import POOL


def test_async_flow(up: Path) -> None:
    async def main() -> None:
        async with AsyncSandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c:
            a, b = await asyncio.gather(c.create_sandbox(POOL), c.create_sandbox(POOL))
            assert a.sandbox_id != b.sandbox_id
            ra, rb = await asyncio.gather(a.commands.run("echo a"), b.commands.run("echo b"))
            assert (ra.stdout, rb.stdout) == ("a\n", "b\n")
            await a.files.write("f.txt", "async")
            assert await a.files.read("f.txt") == b"async"
            assert (await a.run_code("1 + 1")).result == "2"
            assert (await a.status())[0] == "SandboxReady"
            task = asyncio.create_task(a.commands.run("sleep 30; echo never"))
            await asyncio.sleep(0.5)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            procs = await a.commands.list()
            assert not [p for p in procs if p.running and "sleep 30" in str(p.command)]
            names = await c.list_all_sandboxes()
            assert a.claim_name in names and b.claim_name in names
            # Fork from a snapshot, then roll back to it.
            await b.commands.run("mkdir -p /opt && echo v1 > /opt/v")
            snap = await b.snapshot(name=f"{b.sandbox_id}-async")
            await b.commands.run("echo v2 > /opt/v")
            (fork,) = await b.fork(1, snapshot=snap.name)
            assert (await fork.commands.run("cat /opt/v")).stdout == "v1\n"
            await fork.terminate()
            await b.restore(snap.name)
            assert (await b.commands.run("cat /opt/v")).stdout == "v1\n"
            await b.delete_snapshot(snap.name)
        # __aexit__ deleted both.
        async with AsyncSandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c2:
            names = await c2.list_all_sandboxes()
            assert a.claim_name not in names and b.claim_name not in names

    asyncio.run(main())
