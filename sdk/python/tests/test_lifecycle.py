"""Re-attach, listing, deletion, context managers, suspend and resume, lifecycle fields, and a
direct client waking an idle sandbox."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from agent_sandbox_sdk import (
    SandboxClient,
    SandboxdInClusterConnectionConfig,
    SandboxNotFoundError,
    SandboxNotReadyError,
)

from .conftest import POOL


def test_get_sandbox_reattaches(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL, labels={"team": "sdk"})
    sb.files.write("note.txt", "kept")
    other = SandboxClient()
    try:
        again = other.get_sandbox(sb.claim_name or "")
        assert again.sandbox_id == sb.sandbox_id
        assert again.files.read("note.txt") == b"kept"
    finally:
        other.close()
    assert client.get_sandbox(sb.claim_name or "") is sb
    assert ("default", sb.claim_name) in client.list_active_sandboxes()
    assert sb.claim_name in client.list_all_sandboxes(label_selector="team=sdk")


def test_delete_and_terminate(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    name = sb.claim_name or ""
    client.delete_sandbox(name)
    assert not sb.is_active
    assert name not in client.list_all_sandboxes()
    with pytest.raises(SandboxNotFoundError):
        client.get_sandbox(name)
    with pytest.raises(SandboxNotReadyError):
        sb.commands.run("true")
    sb.terminate()  # idempotent
    client.delete_sandbox(name)  # logged, not raised


def test_context_managers(up: object) -> None:
    with SandboxClient() as c:
        with c.create_sandbox(warmpool=POOL) as sb:
            name = sb.claim_name
            assert sb.commands.run("true").ok
        assert name not in c.list_all_sandboxes()
        kept = c.create_sandbox(warmpool=POOL).claim_name
    with SandboxClient() as c2:
        assert kept not in c2.list_all_sandboxes()


def test_status_and_pod(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    assert sb.status() == ("SandboxReady", "Pod is Ready")
    assert sb.get_pod_name() == sb.sandbox_id
    ip = sb.get_pod_ip()
    assert ip and sb.commands.run("hostname -i || ip -4 addr").stdout
    sb.terminate()
    deadline = time.monotonic() + 20
    while sb.status()[0] == "SandboxReady" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sb.status()[0] in ("SandboxNotFound", "SandboxNotReady")


def test_lifecycle_fields(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL, shutdown_after_seconds=600,
                               pod_labels={"sandbox.users.io/run": "r1"},
                               pod_annotations={"example.com/note": "n"})
    spec = client.kube.get("sandboxclaims", "default", sb.claim_name)["spec"]
    when = dt.datetime.fromisoformat(spec["lifecycle"]["shutdownTime"].replace("Z", "+00:00"))
    assert 590 < (when - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 601
    assert spec["lifecycle"]["shutdownPolicy"] == "Delete"
    assert spec["additionalPodMetadata"]["labels"] == {"sandbox.users.io/run": "r1"}


def test_suspend_and_resume(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    sb.files.write("before.txt", "x")
    sb.suspend(timeout=60)
    assert sb.is_suspended()
    assert sb.status() == ("SandboxNotReady", "Sandbox is suspended")
    with pytest.raises(SandboxNotReadyError) as e:
        sb.commands.run("true", timeout=5)
    assert "suspended" in str(e.value)
    sb.resume(timeout=90)
    assert not sb.is_suspended() and sb.status()[0] == "SandboxReady"
    assert sb.commands.run("echo back").stdout == "back\n"


def test_pause_and_unpause(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    bg = sb.commands.start("i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done")
    time.sleep(0.3)
    sb.pause(timeout=30)
    assert sb.is_paused()
    with pytest.raises(SandboxNotReadyError) as e:
        sb.commands.run("true", timeout=5)
    assert "paused" in str(e.value) and "Unpause" in str(e.value)
    sb.pause(timeout=30)  # twice: no change
    sb.unpause(timeout=30)
    assert not sb.is_paused() and sb.status()[0] == "SandboxReady"
    first = int(sb.commands.run("cat /tmp/n").stdout)
    time.sleep(0.3)
    assert int(sb.commands.run("cat /tmp/n").stdout) > first  # the same loop goes on
    sb.unpause(timeout=30)  # a running sandbox: no change
    bg.kill()


def test_stale_pod_ip_is_refreshed(client: SandboxClient) -> None:
    """Another handle suspends and resumes the sandbox: its Pod comes back with a new IP. The
    first handle's next calls still reach it at once: the router sends a stale address to the
    sandbox's current Pod (and were the router's cache behind, the SDK would re-read the claim
    after the router could not connect, a command too, since it was never delivered)."""
    sb = client.create_sandbox(warmpool=POOL)
    old_ip = sb.get_pod_ip()
    with SandboxClient() as other:
        twin = other.get_sandbox(sb.claim_name or "")
        twin.suspend(timeout=60)
        twin.resume(timeout=90)
        new_ip = twin.get_pod_ip()
        other._forget("default", sb.claim_name or "")  # do not delete it on exit
    assert new_ip != old_ip
    t = time.monotonic()
    assert sb.commands.run("echo moved").stdout == "moved\n"
    assert sb.commands.run("hostname").stdout.strip() == sb.sandbox_id
    assert time.monotonic() - t < 10


def test_missing_namespace(client: SandboxClient) -> None:
    from agent_sandbox_sdk import SandboxConfigError

    with pytest.raises(SandboxConfigError) as e:
        client.create_sandbox(warmpool=POOL, namespace="no-such-ns", sandbox_ready_timeout=10)
    assert "no-such-ns" in str(e.value)


def test_a_direct_client_wakes_a_sandbox_paused_for_being_idle(up: Path) -> None:
    """The router pauses an idle sandbox; a client connected to the Pod directly (not through
    the router) wakes it before its next request, as the router would."""
    config = SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip",
                                               kubeconfig=up / "kubeconfig")
    with SandboxClient(config) as c:
        sb = c.create_sandbox(warmpool=POOL, pod_annotations={
            "agent-sandbox-rs.github.io/idle-timeout": "2s"})
        assert sb.commands.run("echo hi").stdout == "hi\n"
        deadline = time.monotonic() + 30
        while not sb.is_paused():
            assert time.monotonic() < deadline, "the router did not pause the idle sandbox"
            time.sleep(0.2)
        assert sb.commands.run("echo back").stdout == "back\n"
        assert not sb.is_paused()
