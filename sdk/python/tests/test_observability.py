"""Upstream's observability surface in our SDK: OpenTelemetry spans (names
``<trace_service_name>.<operation>`` and attributes as upstream's, the claim's trace-context
annotation), the latency histograms of ``get_metrics()``, and the computer-use extension's entry
points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox_sdk import (
    SandboxClient,
    SandboxEmbeddedConnectionConfig,
    SandboxLocalTunnelConnectionConfig,
    SandboxTracerConfig,
    get_metrics,
)

from .conftest import POOL


@pytest.fixture(scope="module")
def spans() -> Any:
    """An in-memory exporter on the global TracerProvider (installed before any client, so the
    SDK uses it instead of installing its OTLP one)."""
    trace = pytest.importorskip("opentelemetry.trace")
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = sdk_trace.TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    return exporter


def test_spans_as_upstream_names_them(up: Path, spans: Any) -> None:
    tracer = SandboxTracerConfig(enable_tracing=True, trace_service_name="sdk-test")
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up),
                       tracer_config=tracer) as client:
        sb = client.create_sandbox(warmpool=POOL, shutdown_after_seconds=600)
        assert sb.commands.run("/bin/echo traced").exit_code == 0
        sb.files.write("traced.txt", b"12345")
        assert sb.files.read("traced.txt") == b"12345"
        assert sb.files.exists("traced.txt")
        assert "traced.txt" in [e.name for e in sb.files.list(".")]
        claim = client.kube.get("sandboxclaims", "default", sb.claim_name)
        claim_name = sb.claim_name
        sb.terminate()
    by_name: dict[str, Any] = {}
    for s in spans.get_finished_spans():
        by_name.setdefault(s.name, s)
    for op in ("create_claim", "wait_for_claim_ready", "run", "write", "read", "exists",
               "list"):
        assert f"sdk-test.{op}" in by_name, sorted(by_name)
    create = by_name["sdk-test.create_claim"]
    assert create.instrumentation_scope.name == "sdk_test"
    assert create.attributes["sandbox.claim.name"] == claim_name
    assert create.attributes["sandbox.lifecycle.shutdown_policy"] == "Delete"
    assert create.attributes["sandbox.lifecycle.shutdown_time"].endswith("Z")
    run = by_name["sdk-test.run"]
    assert run.attributes["sandbox.command.executable"] == "echo"
    assert run.attributes["sandbox.exit_code"] == 0
    write = by_name["sdk-test.write"]
    assert write.attributes["sandbox.file.path"] == "traced.txt"
    assert write.attributes["sandbox.file.size"] == 5
    assert by_name["sdk-test.read"].attributes["sandbox.file.size"] == 5
    assert by_name["sdk-test.exists"].attributes["sandbox.file.exists"] is True
    assert by_name["sdk-test.list"].attributes["sandbox.file.count"] >= 1
    # The claim carries the trace context of its create_claim span, for the controller.
    ctx = json.loads(claim["metadata"]["annotations"]["opentelemetry.io/trace-context"])
    trace_id = ctx["traceparent"].split("-")[1]
    assert int(trace_id, 16) == create.context.trace_id


def test_no_spans_without_tracing(up: Path, spans: Any) -> None:
    spans.clear()
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as client:
        sb = client.create_sandbox(warmpool=POOL)
        sb.commands.run("true")
        claim = client.kube.get("sandboxclaims", "default", sb.claim_name)
    assert not spans.get_finished_spans()
    assert "opentelemetry.io/trace-context" not in claim["metadata"]["annotations"]


def test_metrics_of_the_local_tunnel(up: Path) -> None:
    """Starting upstream's local tunnel is observed as upstream observes it."""
    config = SandboxLocalTunnelConnectionConfig(kubeconfig=up / "kubeconfig")
    with SandboxClient(config) as client:
        sb = client.create_sandbox(warmpool=POOL)
        assert sb.commands.run("echo tunnelled").stdout == "tunnelled\n"
    text = get_metrics()
    assert "# TYPE sandbox_client_discovery_latency_ms histogram" in text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("sandbox_client_discovery_latency_ms_count")
                and 'mode="port_forward"' in ln and 'status="success"' in ln)
    assert float(line.rsplit(" ", 1)[1]) >= 1, line


def test_computer_use_entry_points(up: Path) -> None:
    from agent_sandbox_sdk.extensions.computer_use import (
        ComputerUseSandboxClient,
        SandboxWithComputerUseSupport,
    )

    with ComputerUseSandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as client:
        sb = client.create_sandbox(warmpool=POOL)
        assert isinstance(sb, SandboxWithComputerUseSupport)
        assert sb.commands.run("echo still-a-sandbox").stdout == "still-a-sandbox\n"
        # sandboxd has no agent: said plainly rather than as a bare 404.
        with pytest.raises(NotImplementedError, match="/agent"):
            sb.agent("open the browser")
        sb.terminate()
        with pytest.raises(ConnectionError):
            sb.agent("closed")


def test_optional_dependencies_stay_optional() -> None:
    """Importing the SDK loads neither grpcio, OpenTelemetry nor prometheus_client; without
    grpcio, the sandboxd modes say which extra to install."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["grpc"] = None
import agent_sandbox_sdk, agent_sandbox_sdk.models, agent_sandbox_sdk.exceptions
for name in ("grpc", "opentelemetry", "prometheus_client"):
    assert not sys.modules.get(name), name
from agent_sandbox_sdk._grpc import grpc_module
try:
    grpc_module()
except ImportError as e:
    assert "agent-sandbox-sdk[grpc]" in str(e), e
else:
    raise AssertionError("grpc imported")
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_grpc_messages_match_the_proto() -> None:
    """The SDK's own encoding of ExecuteRequest/ExecuteResponse, checked against protobuf's
    (upstream's generated classes, when installed)."""
    from agent_sandbox_sdk._grpc import decode_execute_response, encode_execute_request

    stubs = pytest.importorskip("k8s_agent_sandbox.commands._process_stubs")
    pb = stubs.process_pb2
    req = pb.ExecuteRequest.FromString(
        encode_execute_request(["/bin/sh", "-c", "echo é"], {"A": "1", "B": ""}, "/tmp"))
    assert list(req.config.command) == ["/bin/sh", "-c", "echo é"]
    assert dict(req.config.env_vars) == {"A": "1", "B": ""}
    assert req.config.cwd == "/tmp"
    assert not pb.ExecuteRequest.FromString(
        encode_execute_request(["true"], None, None)).config.HasField("cwd")
    for code in (0, 3, -1, 2**31 - 1, -(2**31)):
        wire = pb.ExecuteResponse(exit_code=code, stdout=b"o\x00", stderr=b"e").SerializeToString()
        assert decode_execute_response(wire) == (code, b"o\x00", b"e")
