"""Templates and warm pools made from Python."""

from __future__ import annotations

from agent_sandbox_sdk import SandboxClient

from .conftest import IMAGE


def test_template_and_pool_crud(client: SandboxClient) -> None:
    client.create_template("crud-tpl", IMAGE, env={"MODE": "crud"}, env_injection="Allowed")
    assert "crud-tpl" in client.list_templates()
    client.create_warm_pool("crud-pool", "crud-tpl", replicas=1, wait=True, timeout=60)
    assert client.get_warm_pool("crud-pool")["status"]["readyReplicas"] == 1
    sb = client.create_sandbox(warmpool="crud-pool", env={"EXTRA": "e"})
    # env forces a cold start from the template, with the variable injected.
    assert sb.commands.run("echo $MODE $EXTRA").stdout == "crud e\n"
    client.scale_warm_pool("crud-pool", 0)
    assert client.get_warm_pool("crud-pool")["spec"]["replicas"] == 0
    sb.terminate()
    assert client.delete_warm_pool("crud-pool")
    assert client.delete_template("crud-tpl")
    assert not client.delete_template("crud-tpl")


def test_template_with_the_nodes_sandboxd(client: SandboxClient) -> None:
    # The command replaces the image's entrypoint (sandboxd): only the node's sandboxd serves.
    client.create_template("inj-tpl", IMAGE, command=["/bin/sh", "-c", "exec sleep 3600"],
                           sandboxd=True)
    client.create_warm_pool("inj-pool", "inj-tpl", replicas=1, wait=True, timeout=60)
    sb = client.create_sandbox(warmpool="inj-pool")
    init = sb.commands.run("tr '\\0' ' ' < /proc/1/cmdline").stdout
    assert "/.agent-sandbox/sandboxd" in init and "sleep 3600" in init, init
    sb.terminate()
    assert client.delete_warm_pool("inj-pool")
    assert client.delete_template("inj-tpl")
