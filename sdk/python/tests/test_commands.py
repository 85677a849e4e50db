"""Commands: shell semantics, argv, env, cwd, stdin, exit codes, timeouts, streaming and
background processes."""

from __future__ import annotations

import time

import pytest

from agent_sandbox_sdk import CommandTimeoutError, Sandbox


def test_shell_semantics(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo a b | wc -w > count.txt && cat count.txt; exit 3")
    assert r.stdout.strip() == "2" and r.exit_code == 3 and not r.ok


def test_argv_runs_without_shell(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(["echo", "$HOME", "a;b"])
    assert r.stdout == "$HOME a;b\n"


def test_env_cwd_stdin(sandbox: Sandbox) -> None:
    sandbox.files.mkdir("sub/dir")
    r = sandbox.commands.run("pwd; echo $GREETING; cat", env={"GREETING": "hi there"},
                             cwd="sub/dir", stdin="from stdin\n")
    assert r.stdout == "/workspace/sub/dir\nhi there\nfrom stdin\n"


def test_absolute_cwd_means_what_it_says(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sandbox.commands.run(["pwd"], cwd="/usr/bin").stdout == "/usr/bin\n"
    assert sandbox.commands.run("pwd", cwd="/workspace").stdout == "/workspace\n"


def test_stderr_and_signal_exit(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo oops >&2; kill -TERM $$")
    assert r.stderr == "oops\n" and r.exit_code == 143


def test_timeout_raises_with_partial_output(sandbox: Sandbox) -> None:
    t = time.monotonic()
    with pytest.raises(CommandTimeoutError) as e:
        sandbox.commands.run("echo started; sleep 30", timeout=1)
    assert time.monotonic() - t < 10
    assert "did not finish within 1 s" in str(e.value)
    assert e.value.result.stdout == "started\n" and e.value.result.timed_out
    assert isinstance(e.value, TimeoutError)


def test_streaming_callbacks_in_order(sandbox: Sandbox) -> None:
    events: list[tuple[str, str, float]] = []
    t0 = time.monotonic()
    r = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done",
        on_stdout=lambda s: events.append(("out", s, time.monotonic() - t0)),
        on_stderr=lambda s: events.append(("err", s, time.monotonic() - t0)))
    assert r.stdout == "out1\nout2\nout3\n" and r.stderr == "err1\nerr2\nerr3\n"
    outs = [e for e in events if e[0] == "out"]
    assert [e[1] for e in outs] == ["out1\n", "out2\n", "out3\n"]
    # Streamed: the first line arrived well before the command ended.
    assert outs[0][2] < outs[-1][2] - 0.4


def test_background_process_and_kill(sandbox: Sandbox) -> None:
    seen: list[str] = []
    proc = sandbox.commands.start("i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done",
                                  on_stdout=seen.append)
    assert proc.pid and proc.process_id is not None
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.is_running() and seen[0] == "tick0\n"
    assert any(p.id == proc.process_id and p.running for p in sandbox.commands.list())
    proc.kill()
    r = proc.wait(10)
    assert r.exit_code == 137 and r.stdout.startswith("tick0\ntick1\n")
    assert not any(p.id == proc.process_id and p.running for p in sandbox.commands.list())


def test_background_wait_timeout_leaves_it_running(sandbox: Sandbox) -> None:
    proc = sandbox.commands.start(["sleep", "30"])
    with pytest.raises(TimeoutError):
        proc.wait(0.3)
    assert proc.is_running()
    proc.close()
    assert not proc.is_running()


def test_background_process_exits_by_itself(sandbox: Sandbox) -> None:
    proc = sandbox.commands.start("sleep 0.2; echo done")
    assert proc.wait(10).stdout == "done\n"


def test_large_output(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' x")
    assert len(r.stdout) == 3_000_000 and not r.truncated
    r = sandbox.commands.run("head -c 5000 /dev/zero | tr '\\0' y", max_output_bytes=1000)
    assert len(r.stdout) == 1000 and r.truncated
