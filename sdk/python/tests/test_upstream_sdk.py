"""Upstream's published Python SDK (PyPI ``k8s-agent-sandbox``, extras ``grpc,async``), unchanged,
and ours (``agent_sandbox_sdk``) with only the import changed, against ``agent-sandbox up`` in
every connection mode upstream has that works without a Gateway: through the router (direct, and
the local tunnel: ``kubectl port-forward`` to ``svc/sandbox-router-svc``), and to sandboxd itself
(pod tunnel: ``kubectl port-forward`` to the Pod's 8080 and 9090; in-cluster by pod IP) and to
the legacy runtime by pod IP. The pool is the README's example template
(``examples/manifests/template.yaml``, NetworkPolicy included) under other names, so the
quick-start pool is what is proven. The assertions are the same for both SDKs; where ours is
given something else, a comment says why."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from agent_sandbox_sdk import SandboxClient as OurClient
from agent_sandbox_sdk import SandboxEmbeddedConnectionConfig

from .conftest import REPO, ROUTER

UPSTREAM = "k8s_agent_sandbox"
OURS = "agent_sandbox_sdk"
TEMPLATE = "upstream-python"
POOL = "upstream-pool"
NS = "default"
# Modes that reach sandboxd's gRPC and REST APIs; the others reach the legacy runtime (8888).
SANDBOXD_MODES = {"sandboxd-pod-tunnel", "sandboxd-pod-ip"}
MODES = ["direct", "local-tunnel", "sandboxd-pod-tunnel", "sandboxd-pod-ip", "legacy-pod-ip"]


@pytest.fixture(scope="module", params=[UPSTREAM, OURS])
def sdk(request: pytest.FixtureRequest) -> ModuleType:
    """The SDK under test, as a script imports it: the package, with ``.exceptions`` and
    ``.models``."""
    name = str(request.param)
    module = pytest.importorskip(name) if name == UPSTREAM else importlib.import_module(name)
    importlib.import_module(f"{name}.exceptions")
    importlib.import_module(f"{name}.models")
    return module


def _is_upstream(sdk: ModuleType) -> bool:
    return sdk.__name__ == UPSTREAM


@pytest.fixture(scope="module")
def example_pool(up: Path) -> Iterator[str]:
    """The README's example template and a pool of it, as upstream's clients meet them."""
    docs = [d for d in yaml.safe_load_all((REPO / "examples/manifests/template.yaml").read_text())
            if d]
    template: dict[str, Any] = docs[0]
    template["metadata"]["name"] = TEMPLATE
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(up / "kubeconfig")
    # Upstream's kubernetes clients read KUBECONFIG when imported (before `up` existed here); a
    # user sets it before starting Python. (Ours reads it when a client is made.)
    kcs: list[Any] = []
    for mod in ("kubernetes.config.kube_config", "kubernetes_asyncio.config.kube_config"):
        try:
            kcs.append(importlib.import_module(mod))
        except ImportError:
            pass
    saved = [kc.KUBE_CONFIG_DEFAULT_LOCATION for kc in kcs]
    for kc in kcs:
        kc.KUBE_CONFIG_DEFAULT_LOCATION = str(up / "kubeconfig")
    with OurClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as admin:
        kube = admin.connection.kube
        kube.create("sandboxtemplates", NS, template)
        admin.create_warm_pool(POOL, TEMPLATE, replicas=2, wait=True, timeout=120)
        try:
            yield POOL
        finally:
            admin.delete_warm_pool(POOL)
            admin.delete_template(TEMPLATE)
            for kc, location in zip(kcs, saved):
                kc.KUBE_CONFIG_DEFAULT_LOCATION = location
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old


def _config(sdk: ModuleType, mode: str, up: Path) -> Any:
    m = sdk.models
    token = (up / "router-token").read_text().strip()
    return {
        "direct": lambda: m.SandboxDirectConnectionConfig(
            api_url=f"http://{ROUTER}", extra_headers={"Authorization": f"Bearer {token}"}),
        # Upstream's default (no configuration) is this tunnel. Ours is a local `agent-sandbox up`
        # when one is found, as here (the session sets AGENT_SANDBOX_DATA_DIR), else this
        # tunnel; so ours is given it by name (docs/sdk.md, "Porting from upstream's SDK").
        "local-tunnel": lambda: None if _is_upstream(sdk)
        else m.SandboxLocalTunnelConnectionConfig(),
        "sandboxd-pod-tunnel": m.SandboxdPodTunnelConnectionConfig,
        "sandboxd-pod-ip": lambda: m.SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip"),
        "legacy-pod-ip": m.SandboxInClusterConnectionConfig,
    }[mode]()


def _client(sdk: ModuleType, mode: str, up: Path) -> Any:
    config = _config(sdk, mode, up)
    return sdk.SandboxClient() if config is None else sdk.SandboxClient(connection_config=config)


@pytest.mark.parametrize("mode", MODES)
def test_every_connection_mode(sdk: ModuleType, mode: str, up: Path, example_pool: str) -> None:
    SandboxError = sdk.exceptions.SandboxError
    SandboxNotFoundError = sdk.exceptions.SandboxNotFoundError
    client = _client(sdk, mode, up)
    try:
        sb = client.create_sandbox(warmpool=example_pool, namespace=NS, sandbox_ready_timeout=90)
        # The legacy runtime splits a command as a shell would but runs no shell (upstream's
        # shlex.split); sandboxd runs it under /bin/sh -c. `sh -c` works in both.
        r = sb.commands.run("sh -c 'echo out; echo err >&2; exit 3'")
        assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
        r = sb.commands.run("sh -c 'sleep 5; echo late'", command_timeout=1)
        assert r.timed_out and r.exit_code == 124, r
        if mode in SANDBOXD_MODES:
            r = sb.commands.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="/tmp")
            assert r.stdout == "hi\n/tmp\n", r
        else:
            with pytest.raises(NotImplementedError):
                sb.commands.run("pwd", cwd="/tmp")
        blob = bytes(range(256)) * 4096  # 1 MiB with every byte value
        sb.files.write("blob.bin", blob)
        assert sb.files.read("blob.bin") == blob
        assert sb.files.exists("blob.bin")
        assert "blob.bin" in [e.name for e in sb.files.list(".")]
        # Refused by the SDK itself (sandboxd's REST files) or by the runtime (legacy: 403).
        with pytest.raises((SandboxError, ValueError)):
            sb.files.read("../../../../etc/shadow")
        # Reattach from another client by the claim's name.
        other = _client(sdk, mode, up)
        try:
            again = other.get_sandbox(sb.claim_name, namespace=NS)
            r = again.commands.run("sh -c 'wc -c < blob.bin'")
            assert r.stdout.strip() == str(len(blob)), r
        finally:
            other.close() if hasattr(other, "close") else None
        sb.terminate()
        with pytest.raises(SandboxNotFoundError):
            client.get_sandbox(sb.claim_name, namespace=NS, resolve_timeout=2)
    finally:
        client.delete_all()


def test_claim_options(sdk: ModuleType, up: Path, example_pool: str) -> None:
    """A named claim adopted again, a TTL, pod metadata and claim env, as upstream sets them."""
    client = sdk.SandboxClient()
    try:
        name = f"upstream-named-{int(time.time())}"
        sb = client.create_sandbox(
            warmpool=example_pool, namespace=NS, claim_name=name, shutdown_after_seconds=600,
            pod_labels={"sandbox.users.io/run": "7"}, pod_annotations={"example.com/note": "n"},
            env={"TASK_ID": "42"})
        assert sb.claim_name == name
        assert sb.commands.run("sh -c 'echo $TASK_ID'").stdout == "42\n"
        with OurClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as admin:
            kube = admin.connection.kube
            claim = kube.get("sandboxclaims", NS, name)
            assert claim["spec"]["lifecycle"]["shutdownTime"]
            pod = kube.get("pods", NS, sb.get_pod_name())
            assert pod["metadata"]["labels"]["sandbox.users.io/run"] == "7"
            assert pod["metadata"]["annotations"]["example.com/note"] == "n"
        same = sdk.SandboxClient().create_sandbox(
            warmpool=example_pool, namespace=NS, claim_name=name, adopt_existing=True)
        assert same.sandbox_id == sb.sandbox_id
        client.delete_sandbox(name, namespace=NS)
    finally:
        client.delete_all()


def test_async_client(sdk: ModuleType, up: Path, example_pool: str) -> None:
    AsyncSandboxClient = sdk.AsyncSandboxClient
    token = (up / "router-token").read_text().strip()

    async def run() -> None:
        config = sdk.models.SandboxDirectConnectionConfig(
            api_url=f"http://{ROUTER}", extra_headers={"Authorization": f"Bearer {token}"})
        async with AsyncSandboxClient(connection_config=config) as client:
            sb = await client.create_sandbox(warmpool=example_pool, namespace=NS)
            r = await sb.commands.run("echo async")
            assert (r.stdout, r.exit_code) == ("async\n", 0)
            await sb.files.write("a.txt", b"\x00\xff")
            assert await sb.files.read("a.txt") == b"\x00\xff"
            again = await client.get_sandbox(sb.claim_name, namespace=NS)
            assert (await again.commands.run("true")).exit_code == 0
            await sb.terminate()

    asyncio.run(run())


def test_errors_as_upstream_raises_them(sdk: ModuleType, up: Path, example_pool: str) -> None:
    e_ = sdk.exceptions
    client = sdk.SandboxClient()
    try:
        with pytest.raises(e_.SandboxWarmPoolNotFoundError):
            client.create_sandbox(warmpool="no-such-pool", namespace=NS, sandbox_ready_timeout=30)
        with pytest.raises(e_.SandboxClaimFailedError, match="InvalidMetadata"):
            client.create_sandbox(warmpool=example_pool, namespace=NS, sandbox_ready_timeout=30,
                                  pod_labels={"agents.x-k8s.io/pool": "mine"})
        with pytest.raises(e_.SandboxNotFoundError):
            client.get_sandbox("no-such-claim", namespace=NS, resolve_timeout=2)
        # A pool whose template is missing.
        with OurClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as admin:
            admin.connection.kube.create("sandboxwarmpools", NS, {
                "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                "metadata": {"name": "orphan-pool"},
                "spec": {"replicas": 0, "sandboxTemplateRef": {"name": "no-such-template"}}})
            try:
                with pytest.raises(e_.SandboxTemplateNotFoundError):
                    client.create_sandbox(warmpool="orphan-pool", namespace=NS,
                                          sandbox_ready_timeout=30)
            finally:
                admin.delete_warm_pool("orphan-pool")
    finally:
        client.delete_all()
    bad = sdk.SandboxClient(connection_config=sdk.models.SandboxDirectConnectionConfig(
        api_url=f"http://{ROUTER}", extra_headers={"Authorization": "Bearer wrong"}))
    try:
        sb = bad.create_sandbox(warmpool=example_pool, namespace=NS)
        with pytest.raises(e_.SandboxRequestError) as e:
            sb.commands.run("true")
        assert e.value.status_code == 401, e.value
    finally:
        bad.delete_all()


def test_local_tunnel_refuses_a_missing_router_namespace(sdk: ModuleType, up: Path,
                                                        example_pool: str) -> None:
    client = sdk.SandboxClient(connection_config=sdk.models.SandboxLocalTunnelConnectionConfig(
        router_namespace="no-router-here", port_forward_ready_timeout=5))
    try:
        sb = client.create_sandbox(warmpool=example_pool, namespace=NS)
        with pytest.raises(sdk.exceptions.SandboxError):
            sb.commands.run("true")
    finally:
        client.delete_all()


def _http_get(sock: Any, path: str) -> tuple[bytes, bytes]:
    """One HTTP/1.1 GET: the response head and its Content-Length body. (A forwarded port's
    end of stream is not awaited: over the channel protocol a connection's end shows only when
    the whole session ends, as with kubelet.)"""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: sandbox\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended after {len(body)} of {length} bytes"
        body += chunk
    return head, body


def test_port_forward_into_a_sandbox(up: Path, example_pool: str) -> None:
    """The node's port-forward (inside the Pod's network namespace) with the Python kubernetes
    client's `portforward()` (WebSocket channels) and with `kubectl port-forward` (SPDY over
    WebSocket), two ports at once, data both ways. It concerns the API server, not an SDK: it
    runs once, with our SDK making the sandbox."""
    import re
    import socket
    import subprocess

    pytest.importorskip("kubernetes")
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.stream import portforward

    sdk = OurClient(SandboxEmbeddedConnectionConfig(data_dir=up))
    try:
        sb = sdk.create_sandbox(warmpool=example_pool, namespace=NS)
        pod = sb.get_pod_name()
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(str(up / "kubeconfig")))
        pf = portforward(api.connect_get_namespaced_pod_portforward, pod, NS, ports="8080,8888")
        for port in (8080, 8888):
            pf.socket(port).settimeout(20)
        try:
            head, _ = _http_get(pf.socket(8080), "/v1/health")
            assert head.startswith(b"HTTP/1.1 200"), head
            head, body = _http_get(pf.socket(8888), "/")
            assert b"Sandbox Runtime is active." in body, (head, body)
        finally:
            pf.close()

        # A file written through the SDK comes back through kubectl's tunnel.
        blob = bytes(range(256)) * 2048
        sb.files.write("pf.bin", blob)
        proc = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(up / "kubeconfig"), "port-forward", "-n", NS,
             f"pod/{pod}", "0:8080", "0:8888"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ports: dict[int, int] = {}
            deadline = time.monotonic() + 20
            assert proc.stdout is not None
            while len(ports) < 2 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
                if m:
                    ports[int(m.group(2))] = int(m.group(1))
            assert set(ports) == {8080, 8888}, ports
            with socket.create_connection(("127.0.0.1", ports[8888]), timeout=10) as s:
                assert b"Sandbox Runtime is active." in _http_get(s, "/")[1]
            with socket.create_connection(("127.0.0.1", ports[8080]), timeout=10) as s:
                head, body = _http_get(s, "/v1/files/pf.bin")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body == blob, (len(body), head)
        finally:
            proc.kill()
            proc.wait(10)
        sb.terminate()
    finally:
        sdk.delete_all()
        sdk.close()


# A program that traces one sandbox's life with the SDK named by argv[1], exporting over OTLP
# wherever OTEL_EXPORTER_OTLP_ENDPOINT points. A process of its own: the TracerProvider that
# either SDK installs is global and set once per process.
_TRACED_PROGRAM = """
import importlib, sys
name, router, token, pool = sys.argv[1:5]
sdk = importlib.import_module(name)
m = importlib.import_module(name + ".models")
client = sdk.SandboxClient(
    connection_config=m.SandboxDirectConnectionConfig(
        api_url="http://" + router, extra_headers={"Authorization": "Bearer " + token}),
    tracer_config=m.SandboxTracerConfig(enable_tracing=True, trace_service_name="otlp-test"))
sb = client.create_sandbox(warmpool=pool, namespace="default", sandbox_ready_timeout=90)
assert sb.commands.run("echo exported").stdout == "exported\\n"
sb.files.write("exported.txt", b"123")
sb.terminate()
"""


def test_spans_exported_over_otlp(sdk: ModuleType, up: Path, example_pool: str) -> None:
    """``SandboxTracerConfig(enable_tracing=True)`` with nothing else configured: the SDK
    installs its own TracerProvider and its spans reach an OTLP/gRPC collector (a real gRPC
    server here, decoding OTLP's protobuf), named and attributed alike by both SDKs."""
    import subprocess
    import sys
    from concurrent import futures

    grpc = pytest.importorskip("grpc")
    svc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    svc_grpc = pytest.importorskip(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")

    received: list[Any] = []

    class Collector(svc_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
            received.append(request)
            return svc.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    svc_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                   OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_BSP_SCHEDULE_DELAY="100")
        token = (up / "router-token").read_text().strip()
        done = subprocess.run(
            [sys.executable, "-c", _TRACED_PROGRAM, sdk.__name__, ROUTER, token, example_pool],
            env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop(grace=None)

    spans: dict[str, Any] = {}
    services: set[str] = set()
    for request in received:
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes
                         if a.key == "service.name"}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans.setdefault(span.name, (ss.scope.name, span))
    assert services == {"otlp-test"}, services
    # Upstream's client-level spans ignore trace_service_name (its decorator looks for an
    # attribute its SandboxClient does not have, so they are always "sandbox-client.*"); ours
    # name every span with the configured service (docs/sdk.md, "Porting from upstream's SDK").
    client_prefix = "sandbox-client" if _is_upstream(sdk) else "otlp-test"
    for span_name in (f"{client_prefix}.create_claim", f"{client_prefix}.wait_for_claim_ready",
                      "otlp-test.run", "otlp-test.write"):
        assert span_name in spans, sorted(spans)
    scope, run = spans["otlp-test.run"]
    assert scope == "otlp_test"
    attributes = {a.key: a.value for a in run.attributes}
    assert attributes["sandbox.command.executable"].string_value == "echo"
    assert attributes["sandbox.exit_code"].int_value == 0
    assert len(run.trace_id) == 16 and any(run.trace_id)
