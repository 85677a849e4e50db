"""Snapshots of a sandbox (SandboxSnapshot, this project's own kind): taken and waited for,
listed, got by name, deleted; a failed one raises with the node's message; forks started from
one run independently, and a rollback returns a sandbox to it."""

from __future__ import annotations

import time

import pytest

from agent_sandbox_sdk import (
    SandboxClient,
    SandboxError,
    SnapshotFailedError,
    SnapshotInfo,
    SnapshotNotFoundError,
)

from .conftest import POOL


def test_snapshot_list_and_delete(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    sb.commands.run("echo kept > /tmp/kept")
    snap = sb.snapshot(name=f"{sb.sandbox_id}-one")
    assert isinstance(snap, SnapshotInfo)
    assert snap.name == f"{sb.sandbox_id}-one" and snap.sandbox == sb.sandbox_id
    assert snap.phase == "Ready" and snap.ready
    assert snap.kind in ("Filesystem", "Memory+Filesystem")
    assert snap.size is not None and snap.size > 0
    # The sandbox runs on.
    assert sb.commands.run("cat /tmp/kept").stdout == "kept\n"
    pending = sb.snapshot(wait=False)
    assert pending.name.startswith(f"{sb.sandbox_id}-") and pending.phase == "Pending"
    assert sb.wait_snapshot(pending.name, timeout=60).ready
    # Listed by name, as the API server lists.
    names = [s.name for s in sb.list_snapshots()]
    assert names == sorted([snap.name, pending.name])
    assert sb.delete_snapshot(snap.name)
    with pytest.raises(SnapshotNotFoundError):
        for _ in range(500):
            sb.get_snapshot(snap.name)
            time.sleep(0.01)
    assert not sb.delete_snapshot(snap.name)
    sb.delete_snapshot(pending.name)


def test_snapshot_of_a_suspended_sandbox_fails_with_the_reason(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    sb.suspend(timeout=60)
    with pytest.raises(SnapshotFailedError) as e:
        sb.snapshot(timeout=60)
    assert "suspended" in str(e.value) and "resume it" in str(e.value)


def test_forks_start_from_a_snapshot_and_a_rollback_returns_to_it(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    sb.commands.run("mkdir -p /opt/s && echo v1 > /opt/s/f")
    snap = sb.snapshot(name=f"{sb.sandbox_id}-base")
    sb.commands.run("echo v2 > /opt/s/f")
    forks = sb.fork(2, snapshot=snap.name)
    try:
        assert [f.sandbox_id for f in forks] == [f"{snap.name}-1", f"{snap.name}-2"]
        assert len({f.get_pod_ip() for f in forks}) == 2
        for f in forks:
            assert f.commands.run("cat /opt/s/f").stdout == "v1\n"
        forks[0].commands.run("echo mine > /opt/s/f")
        assert forks[1].commands.run("cat /opt/s/f").stdout == "v1\n"
        with pytest.raises(SandboxError, match="pass name="):
            sb.fork(1, snapshot=snap.name)
        with pytest.raises(SnapshotNotFoundError):
            sb.fork(1, snapshot="no-such-snapshot")
    finally:
        for f in forks:
            f.terminate()
    assert sb.commands.run("cat /opt/s/f").stdout == "v2\n"
    sb.restore(snap.name)
    assert sb.commands.run("cat /opt/s/f").stdout == "v1\n"
    sb.delete_snapshot(snap.name)
