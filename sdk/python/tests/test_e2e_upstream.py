"""The scenarios of upstream's Python SDK e2e suite (test/e2e/clients/python): router mode with
a cold pool and a warm pool, the client-first-requested-at annotation, volume claim templates.
Each runs `echo 'Hello from SDK'` and a file round trip. (Gateway modes need a Gateway API
implementation, which the embedded API server does not have.)"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from agent_sandbox_sdk import Sandbox, SandboxClient

from .conftest import IMAGE, POOL


def _hello(sb: Sandbox) -> None:
    r = sb.commands.run("echo 'Hello from SDK'")
    assert (r.stdout, r.stderr, r.exit_code) == ("Hello from SDK\n", "", 0)
    sb.files.write("test.txt", b"Hello, world!")
    assert sb.files.read("test.txt") == b"Hello, world!"


@pytest.fixture(scope="module")
def cold_template(up: object) -> Iterator[str]:
    """A template allowing claim volume claim templates, with a 0-replica pool."""
    with SandboxClient() as admin:
        spec = {
            "volumeClaimTemplatesPolicy": "Allowed",
            "podTemplate": {"spec": {"containers": [{
                "name": "sandbox", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "readinessProbe": {"httpGet": {"path": "/v1/health", "port": 8080},
                                   "periodSeconds": 1}}]}},
        }
        admin.create_template("sdk-e2e", spec=spec)
        admin.create_warm_pool("sdk-e2e-coldpool", "sdk-e2e", replicas=0)
        yield "sdk-e2e"
        admin.delete_warm_pool("sdk-e2e-coldpool")
        admin.delete_template("sdk-e2e")


def test_python_sdk_router_mode(client: SandboxClient, cold_template: str) -> None:
    sb = client.create_sandbox(warmpool="sdk-e2e-coldpool", sandbox_ready_timeout=90)
    # A cold start: the Sandbox is named after the claim.
    assert sb.sandbox_id == sb.claim_name
    _hello(sb)


def test_python_sdk_annotation(client: SandboxClient) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    sb = client.create_sandbox(warmpool=POOL)
    claim = client.kube.get("sandboxclaims", "default", sb.claim_name)
    value = claim["metadata"]["annotations"]["agents.x-k8s.io/client-first-requested-at"]
    assert value.endswith("Z")
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert when.tzinfo is not None and before - dt.timedelta(seconds=1) <= when
    assert claim["metadata"]["labels"]["agents.x-k8s.io/created-by"] == "python-client"


def test_python_sdk_router_mode_warmpool(client: SandboxClient) -> None:
    sb = client.create_sandbox(warmpool=POOL)
    # Adopted from the pool: the Sandbox keeps its pool name.
    assert sb.sandbox_id.startswith(POOL + "-")
    assert client.get_sandbox_claim_warmpool_name(sb.claim_name or "") == POOL
    _hello(sb)


def test_python_sdk_volume_claim_templates(client: SandboxClient, cold_template: str) -> None:
    vct = {"metadata": {"name": "custom-workspace"},
           "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    sb = client.create_sandbox(warmpool="sdk-e2e-coldpool", volume_claim_templates=[vct],
                               sandbox_ready_timeout=90)
    spec = client.kube.get("sandboxes", "default", sb.sandbox_id)["spec"]
    names = [v["metadata"]["name"] for v in spec.get("volumeClaimTemplates", [])]
    assert "custom-workspace" in names
    v = next(v for v in spec["volumeClaimTemplates"]
             if v["metadata"]["name"] == "custom-workspace")
    assert v["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert v["spec"]["resources"]["requests"]["storage"] == "1Gi"
    client.kube.request("GET", f"/api/v1/namespaces/default/persistentvolumeclaims/"
                               f"custom-workspace-{sb.sandbox_id}")
    assert sb.commands.run("df -h").exit_code == 0
    _hello(sb)


def test_cold_start_from_template(client: SandboxClient, cold_template: str) -> None:
    """Upstream's older `create_sandbox(template=...)`: a cold start through the template's
    0-replica shadow pool."""
    sb = client.create_sandbox(template=cold_template, sandbox_ready_timeout=90)
    assert client.get_sandbox_claim_warmpool_name(sb.claim_name or "") == \
        f"shadow-pool-{cold_template}"
    _hello(sb)
    client.delete_sandbox(sb.claim_name or "")
    client.delete_warm_pool(f"shadow-pool-{cold_template}")
