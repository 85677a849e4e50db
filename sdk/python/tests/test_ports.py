"""Sandbox.port_endpoint: a server the sandbox runs, reached with the URL and headers it gives."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from agent_sandbox_sdk import Sandbox, SandboxClient, SandboxNotReadyError

from .conftest import POOL


def test_a_server_inside_is_reached_through_the_router(sandbox: Sandbox) -> None:
    sandbox.files.write("served/hello.txt", "hello through the router\n")
    proc = sandbox.commands.start("python3 -m http.server 8765 --bind 0.0.0.0",
                                  cwd="served")
    try:
        url, headers = sandbox.port_endpoint(8765)
        assert headers["X-Sandbox-Port"] == "8765"
        assert headers["X-Sandbox-ID"] == sandbox.sandbox_id
        deadline = time.monotonic() + 30
        while True:
            req = urllib.request.Request(f"{url}/hello.txt", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.read() == b"hello through the router\n"
                    break
            except (urllib.error.HTTPError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # Without the headers the router does not know where to go.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/hello.txt", timeout=10)
    finally:
        proc.kill()


def test_port_is_checked(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="not a TCP port"):
        sandbox.port_endpoint(0)


def test_a_closed_handle_refuses(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL, sandbox_ready_timeout=60)
    sb.close_connection()
    with pytest.raises(SandboxNotReadyError):
        sb.port_endpoint(8000)
