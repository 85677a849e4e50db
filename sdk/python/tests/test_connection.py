"""Connection modes and kubeconfig features against the live API server and router."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import yaml

from agent_sandbox_sdk import (
    SandboxClient,
    SandboxClusterConnectionConfig,
    SandboxDirectConnectionConfig,
    SandboxInClusterConnectionConfig,
)

from .conftest import POOL


def _kc(up: Path) -> dict:
    return yaml.safe_load((up / "kubeconfig").read_text())


def _endpoints(up: Path) -> dict:
    return json.loads((up / "endpoints.json").read_text())


def test_auto_discovery_uses_the_data_dir(up: Path) -> None:
    with SandboxClient() as c:  # AGENT_SANDBOX_DATA_DIR is set by the session fixture
        assert c.connection.router_url == _endpoints(up)["router"]
        assert POOL in c.list_warm_pools()


def test_cluster_config_with_token_file(up: Path) -> None:
    ep = _endpoints(up)
    with SandboxClient(SandboxClusterConnectionConfig(
            kubeconfig=ep["kubeconfig"], router_url=ep["router"],
            router_token_file=ep["routerTokenFile"])) as c:
        sb = c.create_sandbox(warmpool=POOL)
        assert sb.commands.run("echo via-cluster-config").stdout == "via-cluster-config\n"


def test_direct_config_upstream_name(up: Path, monkeypatch: object) -> None:
    ep = _endpoints(up)
    os.environ["KUBECONFIG"] = ep["kubeconfig"]
    try:
        token = Path(ep["routerTokenFile"]).read_text()
        with SandboxClient(SandboxDirectConnectionConfig(api_url=ep["router"],
                                                         router_token=token)) as c:
            sb = c.create_sandbox(POOL)
            assert sb.commands.run("echo direct").stdout == "direct\n"
    finally:
        del os.environ["KUBECONFIG"]


def test_exec_plugin_ca_file_and_insecure(up: Path, tmp_path: Path) -> None:
    kc = _kc(up)
    token = kc["users"][0]["user"].pop("token")
    ca = base64.b64decode(kc["clusters"][0]["cluster"].pop("certificate-authority-data"))
    (tmp_path / "ca.crt").write_bytes(ca)
    kc["clusters"][0]["cluster"]["certificate-authority"] = "ca.crt"  # relative to the file
    plugin = tmp_path / "cred.py"
    plugin.write_text(f"""#!{sys.executable}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential"
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": os.environ["TOKEN"]}}}}))
""")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    kc["users"][0]["user"]["exec"] = {"apiVersion": "client.authentication.k8s.io/v1",
                                      "command": str(plugin), "env": [{"name": "TOKEN",
                                                                       "value": token}]}
    (tmp_path / "kc").write_text(yaml.safe_dump(kc))
    ep = _endpoints(up)
    with SandboxClient(SandboxClusterConnectionConfig(kubeconfig=tmp_path / "kc",
                                                      router_url=ep["router"],
                                                      router_token_file=ep["routerTokenFile"])) as c:
        assert POOL in c.list_warm_pools()
    # insecure-skip-tls-verify without any CA
    del kc["clusters"][0]["cluster"]["certificate-authority"]
    kc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    (tmp_path / "kc2").write_text(yaml.safe_dump(kc))
    with SandboxClient(SandboxClusterConnectionConfig(kubeconfig=tmp_path / "kc2",
                                                      router_url=ep["router"])) as c:
        assert POOL in c.list_warm_pools()


def test_pod_ip_mode_without_router(up: Path, tmp_path: Path, monkeypatch: object) -> None:
    """Upstream's in-cluster mode goes straight to pod IPs; here with a kubeconfig."""
    ep = _endpoints(up)
    with SandboxClient(SandboxClusterConnectionConfig(kubeconfig=ep["kubeconfig"])) as c:
        sb = c.create_sandbox(warmpool=POOL)
        assert c.connection.direct
        assert sb.commands.run("echo straight").stdout == "straight\n"
    # Upstream's configurations keep upstream's default port: the python-runtime API (8888),
    # which sandboxd serves too; ours default to sandboxd's REST port.
    assert SandboxInClusterConnectionConfig().server_port == 8888
    assert SandboxClusterConnectionConfig().server_port == 8080


def test_client_certificate_kubeconfig(tmp_path: Path) -> None:
    """Client certificates (as -data and as files) load into the TLS context."""
    import shutil
    import subprocess

    import pytest

    from agent_sandbox_sdk._kube import KubeConfig

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=sdk-test", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    cert = (tmp_path / "cert.pem").read_bytes()
    key = (tmp_path / "key.pem").read_bytes()
    for user in ({"client-certificate-data": base64.b64encode(cert).decode(),
                  "client-key-data": base64.b64encode(key).decode()},
                 {"client-certificate": "cert.pem", "client-key": "key.pem"}):
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
               "clusters": [{"name": "k", "cluster": {
                   "server": "https://127.0.0.1:1",
                   "certificate-authority-data": base64.b64encode(cert).decode()}}],
               "users": [{"name": "u", "user": user}],
               "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                                     "namespace": "team"}}]}
        (tmp_path / "kc").write_text(yaml.safe_dump(doc))
        kc = KubeConfig.from_kubeconfig(tmp_path / "kc")
        assert kc.namespace == "team" and kc.cert_pem == cert
        kc.ssl_context()  # loads the CA and the client certificate
    assert not [p for p in os.listdir(tempfile_dir()) if p.startswith("agent-sandbox-sdk-")]


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_router_down(up: Path, tmp_path: Path) -> None:
    import socket

    import pytest

    from agent_sandbox_sdk import SandboxConnectionError, SandboxEmbeddedConnectionConfig

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ep = _endpoints(up)
    ep["router"] = f"http://127.0.0.1:{port}"
    (tmp_path / "endpoints.json").write_text(json.dumps(ep))
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=tmp_path)) as c:
        sb = c.create_sandbox(warmpool=POOL)
        with pytest.raises(SandboxConnectionError) as e:
            sb.commands.run("true")
        assert f"sandbox router at http://127.0.0.1:{port}" in str(e.value)
        assert "connection refused" in str(e.value)


def test_api_client_names_the_cluster(up: Path, tmp_path: Path) -> None:
    """Upstream's `api_client=`: a configured kubernetes ApiClient instead of the kubeconfig,
    for the API server and for the kubectl of the local tunnel."""
    import pytest

    from agent_sandbox_sdk import SandboxLocalTunnelConnectionConfig

    kubernetes_config = pytest.importorskip("kubernetes.config")
    ep = _endpoints(up)
    api_client = kubernetes_config.new_client_from_config(config_file=ep["kubeconfig"])
    env = os.environ.pop("KUBECONFIG", None)
    try:
        token = Path(ep["routerTokenFile"]).read_text().strip()
        direct = SandboxDirectConnectionConfig(
            api_url=ep["router"], extra_headers={"Authorization": f"Bearer {token}"})
        with SandboxClient(direct, api_client=api_client) as c:
            assert c.create_sandbox(POOL).commands.run("echo api-client").stdout == \
                "api-client\n"
        with SandboxClient(SandboxLocalTunnelConnectionConfig(), api_client=api_client) as c:
            assert c.create_sandbox(POOL).commands.run("echo tunnel").stdout == "tunnel\n"
            written = c.connection.router_tunnel.kubeconfig if c.connection.router_tunnel else ""
            assert written and os.stat(written).st_mode & 0o077 == 0
        assert not os.path.exists(written)  # removed when the client closed
    finally:
        if env is not None:
            os.environ["KUBECONFIG"] = env
