"""The shared wire vectors (``sdk/vectors/vectors.json``): each one sent as raw HTTP through
the router and checked against its expected status and body, then made through this SDK and
checked against its expected result or error kind. The Go and TypeScript SDKs run the same
file."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent_sandbox_sdk import (
    CommandTimeoutError,
    SandboxClient,
    SandboxClusterConnectionConfig,
    SandboxConnectionError,
    SandboxEmbeddedConnectionConfig,
    SandboxError,
    SandboxNotFoundError,
    SandboxNotReadyError,
    SandboxRequestError,
    SandboxTimeoutError,
    SandboxTooLargeError,
)
from agent_sandbox_sdk.sandbox import Sandbox

from .conftest import POOL, REPO

VECTORS = json.loads((REPO / "sdk" / "vectors" / "vectors.json").read_text())["vectors"]
UNKNOWN = "vectors-no-such-sandbox"
NO_SERVER = "http://127.0.0.1:9"

KINDS: dict[str, type[BaseException]] = {
    "ConnectionError": SandboxConnectionError,
    "RequestError": SandboxRequestError,
    "NotReadyError": SandboxNotReadyError,
    "NotFoundError": SandboxNotFoundError,
    "TimeoutError": SandboxTimeoutError,
    "CommandTimeoutError": CommandTimeoutError,
    "TooLargeError": SandboxTooLargeError,
}


def subset(expected: Any, actual: Any, where: str = "") -> None:
    """``expected`` is contained in ``actual``: dict keys recursively, each list item in some
    item of the list, other values equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for k, v in expected.items():
            assert k in actual, f"{where}.{k}: missing in {actual!r}"
            subset(v, actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        for i, item in enumerate(expected):
            errors = []
            for a in actual:
                try:
                    subset(item, a, f"{where}[{i}]")
                    break
                except AssertionError as e:
                    errors.append(str(e))
            else:
                raise AssertionError(f"{where}[{i}]: {item!r} not in {actual!r}")
    else:
        assert expected == actual, f"{where}: expected {expected!r}, got {actual!r}"


@pytest.fixture(scope="module")
def env(up: Path, sandbox: Sandbox) -> Iterator[dict[str, Any]]:
    ep = json.loads((up / "endpoints.json").read_text())
    yield {
        "router": ep["router"].rstrip("/"),
        "token": Path(ep["routerTokenFile"]).read_text().strip(),
        "kubeconfig": ep["kubeconfig"],
        "sandbox": sandbox,
        "up": up,
    }


def wire_headers(env: dict[str, Any], target: str) -> dict[str, str]:
    sb = env["sandbox"]
    h = {"Authorization": f"Bearer {env['token']}", "X-Sandbox-ID": sb.sandbox_id,
         "X-Sandbox-Namespace": sb.namespace, "X-Sandbox-Port": "8080"}
    if target == "wrong-token":
        h["Authorization"] = "Bearer wrong-token"
    elif target == "no-sandbox-id":
        for k in ("X-Sandbox-ID", "X-Sandbox-Namespace", "X-Sandbox-Port"):
            del h[k]
    elif target == "unknown-sandbox":
        h["X-Sandbox-ID"] = UNKNOWN
    return h


@pytest.mark.parametrize("vector", [v for v in VECTORS if "wire" in v], ids=lambda v: v["name"])
def test_wire(env: dict[str, Any], vector: dict[str, Any]) -> None:
    w = vector["wire"]
    headers = {**wire_headers(env, vector["target"]), **w.get("headers", {})}
    data = None
    if "json" in w:
        data = json.dumps(w["json"]).encode()
        headers["Content-Type"] = "application/json"
    elif "text" in w and w["method"] in ("PUT", "POST"):
        data = w["text"].encode()
    req = urllib.request.Request(env["router"] + w["path"], data=data, method=w["method"],
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    assert status == w["status"], f"{vector['name']}: {status} {body[:300]!r}"
    if "body" in w:
        subset(w["body"], json.loads(body), vector["name"])
    if "text" in w and w["method"] == "GET":
        assert body.decode() == w["text"]


def handle(env: dict[str, Any], target: str, stack: list[Any]) -> Sandbox:
    sb: Sandbox = env["sandbox"]
    if target == "sandbox":
        return sb
    if target in ("wrong-token", "unknown-sandbox", "no-server"):
        cfg = SandboxClusterConnectionConfig(
            kubeconfig=env["kubeconfig"],
            router_url=NO_SERVER if target == "no-server" else env["router"],
            router_token="wrong-token" if target == "wrong-token" else env["token"])
        c = SandboxClient(cfg)
        stack.append(c)
        name = UNKNOWN if target == "unknown-sandbox" else sb.sandbox_id
        return Sandbox(None, name, sb.namespace, c.connection)  # type: ignore[arg-type]
    if target == "terminated":
        c = SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=env["up"]))
        stack.append(c)
        s = c.create_sandbox(warmpool=POOL, sandbox_ready_timeout=60)
        s.terminate()
        return s
    raise AssertionError(f"unknown target {target}")


def call(sb: Sandbox, op: str, a: dict[str, Any]) -> Any:
    if op == "run":
        cmd = a.get("argv") or a["command"]
        r = sb.commands.run(cmd, timeout=a.get("timeout"), env=a.get("env"),
                            stdin=a.get("stdin"))
        return {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}
    if op == "write":
        sb.files.write(a["path"], a["content"])
        return None
    if op == "read":
        if a.get("max_bytes") is not None:
            buf = io.BytesIO()
            sb.files.read_to(a["path"], buf, max_bytes=a["max_bytes"])
            return buf.getvalue().decode()
        return sb.files.read(a["path"]).decode()
    if op == "list":
        return [{"name": e.name, "size": e.size, "type": e.type} for e in sb.files.list(a["path"])]
    if op == "exists":
        return sb.files.exists(a["path"])
    if op == "delete":
        sb.files.delete(a["path"], recursive=a.get("recursive", False))
        return None
    if op == "run_code":
        r = sb.run_code(a["code"])
        out: dict[str, Any] = {"status": r.status, "stdout": r.stdout, "text": r.result}
        if r.error is not None:
            out["error_name"] = r.error.name
        return out
    raise AssertionError(f"unknown call {op}")


@pytest.mark.parametrize("vector", [v for v in VECTORS if "sdk" in v], ids=lambda v: v["name"])
def test_sdk(env: dict[str, Any], vector: dict[str, Any]) -> None:
    s = vector["sdk"]
    stack: list[Any] = []
    try:
        sb = handle(env, vector["target"], stack)
        if "error" in s:
            want = s["error"]
            with pytest.raises(SandboxError) as e:
                call(sb, s["call"], s.get("args", {}))
            assert isinstance(e.value, KINDS[want["kind"]]), \
                f"{vector['name']}: {type(e.value).__name__}: {e.value}"
            if "status" in want:
                assert getattr(e.value, "status_code", None) == want["status"], str(e.value)
            if "code" in want:
                assert getattr(e.value, "code", None) == want["code"], str(e.value)
            if "message_contains" in want:
                assert want["message_contains"] in str(e.value), str(e.value)
            if "result_stdout" in want:
                assert e.value.result.stdout == want["result_stdout"]  # type: ignore[attr-defined]
        else:
            got = call(sb, s["call"], s.get("args", {}))
            subset(s["result"], got, vector["name"])
    finally:
        for c in stack:
            c.close()
