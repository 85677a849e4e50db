"""run_code: persistent contexts, results, errors, timeouts, streaming."""

from __future__ import annotations

import time

import pytest

from agent_sandbox_sdk import CommandTimeoutError, Sandbox


def test_state_persists_and_last_expression_is_the_result(sandbox: Sandbox) -> None:
    sandbox.run_code("import math\nx = 20")
    r = sandbox.run_code("print('side', flush=True)\nmath.floor(x + 2.5)")
    assert r.ok and r.stdout == "side\n" and r.result == "22" and r.error is None


def test_exception_is_returned(sandbox: Sandbox) -> None:
    r = sandbox.run_code("def f():\n    return 1 / 0\nf()")
    assert r.status == "error" and r.error is not None
    assert r.error.name == "ZeroDivisionError" and "division by zero" in r.error.value
    assert "line 2, in f" in r.error.traceback


def test_named_contexts_are_separate(sandbox: Sandbox) -> None:
    ctx = sandbox.code.create_context("python")
    sandbox.run_code("y = 'ctx'", context=ctx.id)
    assert sandbox.run_code("y", context=ctx.id).result == "'ctx'"
    r = sandbox.run_code("'y' in dir()")
    assert r.result == "False"
    assert ctx.id in [c.id for c in sandbox.code.list_contexts()]
    sandbox.code.delete_context(ctx.id)
    assert ctx.id not in [c.id for c in sandbox.code.list_contexts()]


def test_timeout_interrupts_and_keeps_state(sandbox: Sandbox) -> None:
    sandbox.run_code("kept = 7")
    t = time.monotonic()
    with pytest.raises(CommandTimeoutError) as e:
        sandbox.run_code("import time\nwhile True: time.sleep(0.05)", timeout=1)
    assert time.monotonic() - t < 10
    assert e.value.result.status == "timeout"
    assert sandbox.run_code("kept").result == "7"


def test_streaming(sandbox: Sandbox) -> None:
    chunks: list[str] = []
    r = sandbox.run_code("import time\nfor i in range(3):\n    print(i, flush=True)\n"
                         "    time.sleep(0.2)\n'end'", on_stdout=chunks.append)
    assert "".join(chunks) == "0\n1\n2\n" and r.result == "'end'"


@pytest.mark.parametrize("language,code,expect", [
    ("javascript", "let a = 5;\na * 2", "10"),
    ("bash", "X=4; echo $((X * 2))", None),
])
def test_other_languages(sandbox: Sandbox, language: str, code: str, expect: str | None) -> None:
    r = sandbox.run_code(code, language=language)
    if r.error is not None and r.error.name == "KernelError":
        pytest.skip(f"the image has no {language} interpreter: {r.error.value}")
    assert r.ok
    if expect is not None:
        assert r.result == expect
    else:
        assert r.stdout == "8\n"
