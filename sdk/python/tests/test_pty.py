"""PTY sessions over WebSocket through the router."""

from __future__ import annotations

from agent_sandbox_sdk import Sandbox


def test_interactive_shell(sandbox: Sandbox) -> None:
    with sandbox.pty.create(cols=100, rows=30) as term:
        term.write("stty size; echo marker-$((6*7))\n")
        out = term.read_until("marker-42", timeout=10)
        assert b"30 100" in out
        term.resize(120, 40)
        term.write("stty size\n")
        assert b"40 120" in term.read_until("40 120", timeout=10)
        term.write("exit 5\n")
        assert term.wait(10) == 5


def test_command_and_signal(sandbox: Sandbox) -> None:
    received: list[bytes] = []
    with sandbox.pty.create("echo ready; sleep 30; echo never", on_data=received.append) as term:
        term.read_until("ready", timeout=10)
        term.send_signal("SIGINT")
        term.wait(10)
        assert b"never" not in b"".join(received)


def test_cwd(sandbox: Sandbox) -> None:
    with sandbox.pty.create("pwd", cwd="/tmp") as term:
        assert b"/tmp" in term.read_until("/tmp", timeout=10)
        assert term.wait(10) == 0
