"""Session fixture: a live ``agent-sandbox up`` with the example image imported and a template
plus a warm pool (see ``sdk/testenv.py``, which owns starting and tearing it down). When
``AGENT_SANDBOX_TEST_DATA_DIR`` names the data directory of one already running (as
``sdk/run-all.sh`` starts it for every SDK's suite), the tests use that one and leave it
running; otherwise the fixture starts its own and tears it down at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sandbox_sdk import SandboxClient, SandboxEmbeddedConnectionConfig

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "sdk"))

import testenv  # noqa: E402

IMAGE = testenv.IMAGE
TEMPLATE = testenv.TEMPLATE
POOL = testenv.POOL
POOL_REPLICAS = testenv.POOL_REPLICAS
API = testenv.API
ROUTER = testenv.ROUTER
METRICS = testenv.METRICS


@pytest.fixture(scope="session")
def up() -> Iterator[Path]:
    given = os.environ.get("AGENT_SANDBOX_TEST_DATA_DIR")
    if given:
        old_env = os.environ.get("AGENT_SANDBOX_DATA_DIR")
        os.environ["AGENT_SANDBOX_DATA_DIR"] = given
        try:
            yield Path(given)
        finally:
            if old_env is None:
                os.environ.pop("AGENT_SANDBOX_DATA_DIR", None)
            else:
                os.environ["AGENT_SANDBOX_DATA_DIR"] = old_env
        return
    if os.geteuid() != 0:
        pytest.skip("the tests start `agent-sandbox up`, which needs root")
    env = testenv.Env()
    try:
        env.start()
    except testenv.SetupError as e:
        pytest.fail(str(e))
    old_env = os.environ.get("AGENT_SANDBOX_DATA_DIR")
    os.environ["AGENT_SANDBOX_DATA_DIR"] = str(env.data)
    try:
        yield env.data
    finally:
        try:
            env.stop()
        finally:
            if old_env is None:
                os.environ.pop("AGENT_SANDBOX_DATA_DIR", None)
            else:
                os.environ["AGENT_SANDBOX_DATA_DIR"] = old_env


@pytest.fixture()
def client(up: Path) -> Iterator[SandboxClient]:
    """A client that deletes every sandbox it created when the test ends."""
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c:
        yield c


@pytest.fixture(scope="module")
def sandbox(up: Path) -> Iterator[object]:
    """One warm-pool sandbox shared by the tests of a module."""
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c:
        sb = c.create_sandbox(warmpool=POOL, sandbox_ready_timeout=60)
        yield sb
