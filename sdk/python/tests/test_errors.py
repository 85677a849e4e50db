"""Errors say what happened and what to do, within the time asked for."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from agent_sandbox_sdk import (
    SandboxClient,
    SandboxClusterConnectionConfig,
    SandboxConfigError,
    SandboxConnectionError,
    SandboxEmbeddedConnectionConfig,
    SandboxTemplateNotFoundError,
    SandboxTimeoutError,
    SandboxWarmPoolNotFoundError,
)

from .conftest import API, POOL, ROUTER, TEMPLATE


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_no_local_instance(tmp_path: Path) -> None:
    with pytest.raises(SandboxConnectionError) as e:
        SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=tmp_path))
    assert "endpoints.json does not exist" in str(e.value)
    assert "agent-sandbox up" in str(e.value)


def test_server_not_running(up: Path, tmp_path: Path) -> None:
    port = _free_port()
    ep = json.loads((up / "endpoints.json").read_text())
    ep["apiServer"] = f"https://127.0.0.1:{port}"
    (tmp_path / "endpoints.json").write_text(json.dumps(ep))
    c = SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=tmp_path))
    t = time.monotonic()
    with pytest.raises(SandboxConnectionError) as e:
        c.create_sandbox(warmpool=POOL, sandbox_ready_timeout=5)
    assert time.monotonic() - t < 5
    assert "connection refused" in str(e.value) and "agent-sandbox up" in str(e.value)


def test_kubeconfig_pointing_nowhere(up: Path, tmp_path: Path) -> None:
    kc = (up / "kubeconfig").read_text().replace(API, f"127.0.0.1:{_free_port()}")
    (tmp_path / "kc").write_text(kc)
    c = SandboxClient(SandboxClusterConnectionConfig(kubeconfig=tmp_path / "kc",
                                                     router_url=f"http://{ROUTER}"))
    with pytest.raises(SandboxConnectionError) as e:
        c.list_all_sandboxes()
    assert "cannot reach the Kubernetes API server" in str(e.value)
    assert str(tmp_path / "kc") in str(e.value)


def test_missing_or_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(SandboxConfigError) as e:
        SandboxClient(SandboxClusterConnectionConfig(kubeconfig=tmp_path / "none"))
    assert "no kubeconfig found" in str(e.value)
    (tmp_path / "bad").write_text("clusters: [\n")
    with pytest.raises(SandboxConfigError) as e:
        SandboxClient(SandboxClusterConnectionConfig(kubeconfig=tmp_path / "bad"))
    assert "not valid YAML" in str(e.value)


def test_missing_warm_pool(client: SandboxClient) -> None:
    t = time.monotonic()
    with pytest.raises(SandboxWarmPoolNotFoundError) as e:
        client.create_sandbox(warmpool="no-such-pool", sandbox_ready_timeout=20)
    assert time.monotonic() - t < 10
    assert "no-such-pool" in str(e.value) and POOL in str(e.value)
    assert client.list_all_sandboxes() == [] or all(
        not n.startswith("sandbox-claim") for n in client.list_all_sandboxes()
        if n in [k[1] for k in client.list_active_sandboxes()])


def test_template_name_given_as_pool(client: SandboxClient) -> None:
    with pytest.raises(SandboxWarmPoolNotFoundError) as e:
        client.create_sandbox(TEMPLATE, sandbox_ready_timeout=20)
    assert f"template={TEMPLATE!r}" in str(e.value)


def test_missing_template(client: SandboxClient) -> None:
    t = time.monotonic()
    with pytest.raises(SandboxTemplateNotFoundError):
        client.create_sandbox(template="no-such-template", sandbox_ready_timeout=20)
    assert time.monotonic() - t < 5


def test_pool_of_missing_template(client: SandboxClient) -> None:
    client.create_warm_pool("orphan-pool", "missing-template", replicas=0)
    try:
        t = time.monotonic()
        with pytest.raises(SandboxTemplateNotFoundError) as e:
            client.create_sandbox(warmpool="orphan-pool", sandbox_ready_timeout=20)
        assert time.monotonic() - t < 15
        assert "missing-template" in str(e.value)
    finally:
        client.delete_warm_pool("orphan-pool")


def test_claim_that_never_gets_ready(client: SandboxClient) -> None:
    client.create_template("broken", "localhost/agent-sandbox/does-not-exist:1")
    client.create_warm_pool("broken-pool", "broken", replicas=0)
    try:
        t = time.monotonic()
        with pytest.raises(SandboxTimeoutError) as e:
            client.create_sandbox(warmpool="broken-pool", sandbox_ready_timeout=4)
        took = time.monotonic() - t
        assert 3.5 < took < 12, took
        msg = str(e.value)
        assert "did not become ready within 4 s" in msg and "claim was deleted" in msg
        assert isinstance(e.value, TimeoutError)
        assert not [n for n in client.list_all_sandboxes()
                    if client.get_sandbox_claim_warmpool_name(n) == "broken-pool"]
    finally:
        client.delete_warm_pool("broken-pool")
        client.delete_template("broken")


def test_router_token_rejected(up: Path) -> None:
    ep = json.loads((up / "endpoints.json").read_text())
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as good:
        sb = good.create_sandbox(warmpool=POOL)
        c = SandboxClient(SandboxClusterConnectionConfig(
            kubeconfig=ep["kubeconfig"], router_url=ep["router"], router_token="wrong"))
        bad = c.get_sandbox(sb.claim_name or "")
        from agent_sandbox_sdk import SandboxRequestError
        with pytest.raises(SandboxRequestError) as e:
            bad.commands.run("true")
        assert e.value.status_code == 401 and "token" in str(e.value)
        c.close()
