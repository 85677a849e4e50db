"""The live `agent-sandbox up` the tests run against: the one `sdk/run-all.sh` started (its
variables `AGENT_SANDBOX_TEST_DATA_DIR` and `AGENT_SANDBOX_TEST_POOL`). Without them the tests
are skipped: `integrations/run-tests.sh` is the way to run them."""

from __future__ import annotations

import os

# No telemetry from CrewAI during the tests (the tests make no network calls).
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_sandbox_sdk import SandboxClient, SandboxEmbeddedConnectionConfig


@pytest.fixture(scope="session")
def data_dir() -> Path:
    given = os.environ.get("AGENT_SANDBOX_TEST_DATA_DIR")
    if not given:
        pytest.skip("no live agent-sandbox up: run integrations/run-tests.sh (or sdk/run-all.sh)")
    os.environ["AGENT_SANDBOX_DATA_DIR"] = given
    return Path(given)


@pytest.fixture(scope="session")
def pool() -> str:
    return os.environ.get("AGENT_SANDBOX_TEST_POOL", "python-pool")


@pytest.fixture()
def client(data_dir: Path) -> Iterator[SandboxClient]:
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=data_dir)) as c:
        yield c
