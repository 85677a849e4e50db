"""Ray, started here (two CPUs, no dashboard), with actors and tasks whose work runs in
sandboxes claimed from the test environment's warm pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from agent_sandbox_sdk import Sandbox, SandboxClient, SandboxEmbeddedConnectionConfig

from agent_sandbox_ray import map_in_sandboxes, sandbox_actor


@pytest.fixture(scope="module")
def ray_local(data_dir: Path) -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def config(data_dir: Path) -> SandboxEmbeddedConnectionConfig:
    return SandboxEmbeddedConnectionConfig(data_dir=data_dir)


def claims(client: SandboxClient) -> set[str]:
    return set(client.list_all_sandboxes())


def test_actors_each_in_their_own_sandbox(ray_local: None, pool: str, client: SandboxClient,
                                          config: SandboxEmbeddedConnectionConfig) -> None:
    before = claims(client)
    Actor = sandbox_actor()
    actors = [Actor.remote(pool, connection_config=config, setup="echo ready > /tmp/setup")
              for _ in range(3)]
    infos = ray.get([a.info.remote() for a in actors], timeout=180)
    assert len({i["sandbox"] for i in infos}) == 3
    assert len({i["actor_pid"] for i in infos}) == 3      # three actor processes too
    assert {i["claim"] for i in infos} <= claims(client) - before
    # A rollout: steps keep their state in each actor's sandbox, separately.
    for step in range(3):
        ray.get([a.run_code.remote(f"acc = {k} if {step} == 0 else acc + {k}")
                 for k, a in enumerate(actors)])
    totals = ray.get([a.run_code.remote("acc") for a in actors])
    assert [t.result for t in totals] == ["0", "3", "6"]
    hosts = ray.get([a.run.remote("hostname; cat /tmp/setup") for a in actors])
    assert all(h.exit_code == 0 and h.stdout.endswith("ready\n") for h in hosts)
    assert len({h.stdout for h in hosts}) == 3
    ray.get([a.write_file.remote("out.txt", f"actor {k}") for k, a in enumerate(actors)])
    assert ray.get(actors[2].read_file.remote("/workspace/out.txt")) == b"actor 2"
    ray.get([a.shutdown.remote() for a in actors])
    assert not ({i["claim"] for i in infos} & claims(client))


def test_map_fans_out_over_separate_sandboxes(ray_local: None, pool: str,
                                              client: SandboxClient,
                                              config: SandboxEmbeddedConnectionConfig) -> None:
    before = claims(client)

    def square(sb: Sandbox, i: int) -> tuple[str, str]:
        return sb.sandbox_id, sb.commands.run(f"echo $(({i} * {i}))").stdout.strip()

    out = map_in_sandboxes(square, list(range(5)), pool, connection_config=config,
                           timeout=300)
    assert [v for _, v in out] == ["0", "1", "4", "9", "16"]
    assert len({sid for sid, _ in out}) == 5             # five sandboxes, one per task
    assert claims(client) == before                       # all released


def test_a_failing_task_releases_its_sandbox(ray_local: None, pool: str, client: SandboxClient,
                                             config: SandboxEmbeddedConnectionConfig) -> None:
    before = claims(client)

    def boom(sb: Sandbox, _: Any) -> None:
        raise ValueError(f"failed in {sb.sandbox_id}")

    with pytest.raises(ValueError, match="failed in"):
        map_in_sandboxes(boom, [1], pool, connection_config=config, timeout=120)
    assert claims(client) == before


def test_errors_name_the_pool_and_the_sandbox(ray_local: None, pool: str,
                                              config: SandboxEmbeddedConnectionConfig) -> None:
    Actor = sandbox_actor()
    missing = Actor.remote("no-such-pool", connection_config=config)
    with pytest.raises(ray.exceptions.RayActorError) as e:
        ray.get(missing.info.remote(), timeout=120)
    assert "no-such-pool" in str(e.value) and pool in str(e.value), str(e.value)

    failing = Actor.remote(pool, connection_config=config, setup="echo nope >&2; exit 7")
    with pytest.raises(ray.exceptions.RayActorError) as e:
        ray.get(failing.info.remote(), timeout=120)
    msg = str(e.value)
    assert "exited 7" in msg and "nope" in msg and "sandbox default/" in msg, msg
