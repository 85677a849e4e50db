"""An OpenEnv environment defined here (a counter that echoes), served from a sandbox of the
example image and driven through OpenEnv's own client over the router."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from agent_sandbox_sdk import SandboxClient
from openenv.core import EnvClient
from openenv.core.client_types import StepResult
from openenv.core.env_server.types import Action, Observation, State

from agent_sandbox_openenv import EnvServerError, SandboxEnvProvider, start_env

MODELS = '''
from openenv.core.env_server.types import Action, Observation


class CountAction(Action):
    message: str
    add: int = 1


class CountObservation(Observation):
    echoed: str = ""
    total: int = 0
    hostname: str = ""
'''

ENVIRONMENT = '''
import socket
from uuid import uuid4

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import State

from models import CountAction, CountObservation


class CountEnvironment(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        self._state = State(episode_id=str(uuid4()), step_count=0)
        self._total = 0

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = State(episode_id=episode_id or str(uuid4()), step_count=0)
        self._total = 0
        return CountObservation(echoed="ready", total=0, hostname=socket.gethostname(),
                                done=False, reward=0.0)

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        self._total += action.add
        return CountObservation(echoed=action.message, total=self._total,
                                hostname=socket.gethostname(),
                                done=self._total >= 10, reward=float(action.add))

    @property
    def state(self):
        return self._state
'''

APP = '''
from openenv.core.env_server.http_server import create_app

from models import CountAction, CountObservation
from environment import CountEnvironment

app = create_app(CountEnvironment, CountAction, CountObservation, env_name="count",
                 max_concurrent_envs=4)
'''


class CountAction(Action):
    message: str
    add: int = 1


class CountObservation(Observation):
    echoed: str = ""
    total: int = 0
    hostname: str = ""


class CountEnv(EnvClient[CountAction, CountObservation, State]):
    def _step_payload(self, action: CountAction) -> dict[str, Any]:
        return {"message": action.message, "add": action.add}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[CountObservation]:
        obs = CountObservation(**payload.get("observation", {}), done=payload.get("done", False),
                               reward=payload.get("reward"))
        return StepResult(observation=obs, reward=payload.get("reward"),
                          done=payload.get("done", False))

    def _parse_state(self, payload: dict[str, Any]) -> State:
        return State(**payload)


@pytest.fixture(scope="module")
def env_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("count_env")
    (src / "models.py").write_text(textwrap.dedent(MODELS))
    (src / "environment.py").write_text(textwrap.dedent(ENVIRONMENT))
    (src / "app.py").write_text(textwrap.dedent(APP))
    return src


def test_start_env_sync_client(client: SandboxClient, pool: str, env_source: Path) -> None:
    t0 = time.monotonic()
    env = start_env(CountEnv, "app:app", source_dir=env_source, warmpool=pool, client=client)
    started = time.monotonic() - t0
    provider = env._provider
    assert isinstance(provider, SandboxEnvProvider)
    sb = provider.sandbox
    assert sb is not None
    with env.sync() as c:
        r = c.reset()
        assert r.observation.echoed == "ready"
        # The server runs in the sandbox, not here.
        assert r.observation.hostname == sb.commands.run("hostname").stdout.strip()
        r = c.step(CountAction(message="hello", add=4))
        assert (r.observation.echoed, r.observation.total, r.reward, r.done) == \
            ("hello", 4, 4.0, False)
        r = c.step(CountAction(message="again", add=6))
        assert (r.observation.total, r.done) == (10, True)
        assert c.state().step_count == 2
    print(f"claim + upload + server ready: {started:.1f} s")
    # Closing the client stopped the server and deleted the claimed sandbox.
    assert provider.sandbox is None
    assert sb.claim_name not in client.list_all_sandboxes()


def test_async_client_and_two_sessions(client: SandboxClient, pool: str,
                                       env_source: Path) -> None:
    sb = client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)
    provider = SandboxEnvProvider("app:app", source_dir=env_source, sandbox=sb, port=8123)
    base_url = provider.start()
    try:
        provider.wait_for_ready(60)

        async def episode(n: int) -> int:
            async with CountEnv(base_url=base_url) as c:
                await c.reset()
                total = 0
                for _ in range(n):
                    total = (await c.step(CountAction(message="x", add=1))).observation.total
                return total

        async def both() -> list[int]:
            return list(await asyncio.gather(episode(2), episode(3)))

        # Two WebSocket sessions at once, each with its own environment instance.
        assert asyncio.run(both()) == [2, 3]
        # Plain HTTP through the same listener: the schema endpoint.
        import json
        import urllib.request
        with urllib.request.urlopen(f"{base_url}/schema", timeout=10) as r:
            schema = json.load(r)
        assert "action" in schema
    finally:
        provider.stop()
    # The sandbox was given, so it stays (and the server is gone).
    assert sb.is_active
    assert "uvicorn" not in sb.commands.run("ps").stdout


def test_server_failures_name_the_sandbox(client: SandboxClient, pool: str,
                                          tmp_path: Path) -> None:
    # Imports on this host (where the packages are traced), fails in the sandbox.
    (tmp_path / "broken.py").write_text(textwrap.dedent('''
        import os
        from fastapi import FastAPI
        if os.path.exists("/opt/openenv"):
            raise RuntimeError("no env here")
        app = FastAPI()
    '''))
    sb = client.create_sandbox(warmpool=pool, sandbox_ready_timeout=60)
    for ship, expected in ((True, "no env here"), (False, "No module named uvicorn")):
        provider = SandboxEnvProvider("broken:app", source_dir=tmp_path, sandbox=sb,
                                      ship_packages=ship)
        provider.start()
        try:
            with pytest.raises(EnvServerError) as e:
                provider.wait_for_ready(30)
            msg = str(e.value)
            assert sb.sandbox_id in msg and expected in msg, msg
            assert e.value.sandbox_id == sb.sandbox_id
        finally:
            provider.stop()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        SandboxEnvProvider("app", warmpool="p")
    with pytest.raises(ValueError, match="warmpool"):
        SandboxEnvProvider("app:app")
