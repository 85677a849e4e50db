"""Upstream's ``SandboxClient(api_client=...)``: a configured Kubernetes ``ApiClient`` (of the
``kubernetes`` or ``kubernetes_asyncio`` package) names the cluster. Its configuration is written
as a private kubeconfig (mode 0600, removed when the client closes or the program exits), which
both the SDK and the ``kubectl`` of the tunnels then use."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
from typing import Any


def _bearer(value: str) -> str | None:
    scheme, sep, cred = value.partition(" ")
    if sep and scheme.lower() == "bearer" and cred:
        return cred.strip()
    return None


def _token(api_client: Any) -> str | None:
    """The bearer token of the configuration (``api_key`` with its prefix), else of the
    default ``Authorization`` header."""
    cfg = api_client.configuration
    keys = getattr(cfg, "api_key", None) or {}
    prefixes = getattr(cfg, "api_key_prefix", None) or {}
    for key in ("BearerToken", "authorization"):
        value = keys.get(key)
        if isinstance(value, str) and value:
            prefix = prefixes.get(key)
            token = _bearer(f"{prefix} {value}" if prefix else value)
            if token:
                return token
    headers = {str(k).lower(): v for k, v in (getattr(api_client, "default_headers", None)
                                              or {}).items()}
    return _bearer(str(headers.get("authorization") or ""))


def kubeconfig_for(api_client: Any) -> str:
    """The path of a kubeconfig that reaches what ``api_client`` reaches (its server, CA, client
    certificate, bearer token and impersonation)."""
    cfg = api_client.configuration
    if not getattr(cfg, "host", None):
        raise ValueError("api_client has no configuration.host: configure it (for example "
                         "kubernetes.config.new_client_from_config()) before passing it")
    cluster: dict[str, Any] = {"server": cfg.host}
    if not getattr(cfg, "verify_ssl", True):
        cluster["insecure-skip-tls-verify"] = True
    elif getattr(cfg, "ssl_ca_cert", None):
        cluster["certificate-authority"] = os.path.abspath(cfg.ssl_ca_cert)
    if getattr(cfg, "tls_server_name", None):
        cluster["tls-server-name"] = cfg.tls_server_name
    user: dict[str, Any] = {}
    if getattr(cfg, "cert_file", None):
        user["client-certificate"] = os.path.abspath(cfg.cert_file)
    if getattr(cfg, "key_file", None):
        user["client-key"] = os.path.abspath(cfg.key_file)
    token = _token(api_client)
    if token:
        user["token"] = token
    headers = {str(k).lower(): v for k, v in (getattr(api_client, "default_headers", None)
                                              or {}).items()}
    if headers.get("impersonate-user"):
        user["as"] = headers["impersonate-user"]
    if headers.get("impersonate-group"):
        user["as-groups"] = [headers["impersonate-group"]]
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
           "clusters": [{"name": "sandbox", "cluster": cluster}],
           "users": [{"name": "sandbox", "user": user}],
           "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox"}}]}
    fd, path = tempfile.mkstemp(prefix="agent-sandbox-sdk-kubeconfig-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    atexit.register(remove, path)
    return path


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
