"""Kubernetes API access: kubeconfig and in-cluster credentials, and the few REST verbs the SDK
needs (get, list, create, merge-patch, delete, watch) on the agent-sandbox kinds and Pods."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ._http import HttpClient, HttpResponse, TransportError
from .exceptions import (
    SandboxConfigError,
    SandboxConnectionError,
    SandboxRequestError,
    SandboxTimeoutError,
)

SANDBOX_GROUP = "agents.x-k8s.io"
EXT_GROUP = "extensions.agents.x-k8s.io"
VERSION = "v1beta1"
# This project's own kinds (SandboxSnapshot).
OWN_GROUP = "agent-sandbox-rs.github.io"
OWN_VERSION = "v1alpha1"

RESOURCES = {
    "sandboxes": f"/apis/{SANDBOX_GROUP}/{VERSION}",
    "sandboxclaims": f"/apis/{EXT_GROUP}/{VERSION}",
    "sandboxtemplates": f"/apis/{EXT_GROUP}/{VERSION}",
    "sandboxwarmpools": f"/apis/{EXT_GROUP}/{VERSION}",
    "sandboxsnapshots": f"/apis/{OWN_GROUP}/{OWN_VERSION}",
    "pods": "/api/v1",
    "gateways": "/apis/gateway.networking.k8s.io/v1",
}

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(SandboxRequestError):
    """A Kubernetes API call answered with an error Status."""

    def __init__(self, message: str, status_code: int, reason: str, response: HttpResponse) -> None:
        super().__init__(message, status_code=status_code, response=response, code=reason)
        self.reason = reason


def _b64(data: str) -> bytes:
    return base64.b64decode(data.encode() if isinstance(data, str) else data)


class _ExecPlugin:
    """A client-go exec credential plugin, run when its credential is missing or expired."""

    def __init__(self, spec: dict[str, Any], base_dir: Path, server: str) -> None:
        self.spec = spec
        self.base_dir = base_dir
        self.server = server
        self._cached: dict[str, Any] | None = None
        self._expires: float | None = None
        self._lock = threading.Lock()

    def credential(self, force: bool = False) -> dict[str, Any]:
        with self._lock:
            now = time.time()
            if (not force and self._cached is not None
                    and (self._expires is None or now < self._expires - 10)):
                return self._cached
            cmd = str(self.spec.get("command") or "")
            if not cmd:
                raise SandboxConfigError("the kubeconfig's exec credential plugin has no command")
            if "/" in cmd and not os.path.isabs(cmd):
                cmd = str(self.base_dir / cmd)
            argv = [cmd, *[str(a) for a in self.spec.get("args") or []]]
            env = dict(os.environ)
            for e in self.spec.get("env") or []:
                env[str(e["name"])] = str(e["value"])
            api_version = self.spec.get("apiVersion") or "client.authentication.k8s.io/v1"
            info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential",
                                    "spec": {"interactive": False}}
            if self.spec.get("provideClusterInfo"):
                info["spec"]["cluster"] = {"server": self.server}
            env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
            try:
                out = subprocess.run(argv, env=env, capture_output=True, timeout=60,
                                     stdin=subprocess.DEVNULL, check=False)
            except FileNotFoundError:
                hint = self.spec.get("installHint") or ""
                raise SandboxConfigError(
                    f"the kubeconfig's exec credential plugin {cmd!r} is not installed or not on "
                    f"PATH. {hint}".strip()) from None
            except subprocess.TimeoutExpired:
                raise SandboxConfigError(
                    f"the exec credential plugin {cmd!r} did not finish within 60 s") from None
            if out.returncode != 0:
                raise SandboxConfigError(
                    f"the exec credential plugin {cmd!r} exited with {out.returncode}: "
                    f"{out.stderr.decode(errors='replace').strip()[:500]}")
            try:
                cred = json.loads(out.stdout)
                status = cred["status"]
            except (ValueError, KeyError, TypeError):
                raise SandboxConfigError(
                    f"the exec credential plugin {cmd!r} printed no ExecCredential JSON with a "
                    "status") from None
            self._cached = status
            exp = status.get("expirationTimestamp")
            self._expires = None
            if exp:
                try:
                    self._expires = _dt.datetime.fromisoformat(
                        exp.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    self._expires = now + 60
            return dict(status)


class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    def __init__(self, server: str, namespace: str, source: str, *,
                 ca_pem: str | None = None, insecure: bool = False,
                 token: str | None = None, token_file: str | None = None,
                 cert_pem: bytes | None = None, key_pem: bytes | None = None,
                 username: str | None = None, password: str | None = None,
                 exec_plugin: _ExecPlugin | None = None,
                 tls_server_name: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.source = source
        self.ca_pem = ca_pem
        self.insecure = insecure
        self.token = token
        self.token_file = token_file
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.username = username
        self.password = password
        self.exec_plugin = exec_plugin
        self.tls_server_name = tls_server_name
        self._token_read: tuple[float, str] | None = None

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None,
                        context: str | None = None) -> KubeConfig:
        """Loads a kubeconfig: ``path``, else ``$KUBECONFIG`` (colon-separated files are merged,
        first wins), else ``~/.kube/config``."""
        if path is not None:
            files = [Path(path)]
        elif os.environ.get("KUBECONFIG"):
            files = [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
        else:
            files = [Path.home() / ".kube" / "config"]
        merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}}
        current = None
        found = []
        for f in files:
            try:
                text = f.read_text()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise SandboxConfigError(f"cannot read the kubeconfig {f}: {e.strerror}") from None
            try:
                doc = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise SandboxConfigError(f"the kubeconfig {f} is not valid YAML: {e}") from None
            if not isinstance(doc, dict):
                raise SandboxConfigError(f"the kubeconfig {f} is not a mapping")
            found.append(f)
            for kind, field in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
                for item in doc.get(kind) or []:
                    if isinstance(item, dict) and item.get("name") not in merged[kind]:
                        merged[kind][item.get("name")] = (item.get(field) or {}, f.parent)
            current = current or doc.get("current-context")
        if not found:
            names = ", ".join(str(f) for f in files)
            raise SandboxConfigError(
                f"no kubeconfig found at {names}; pass a kubeconfig path, set KUBECONFIG, or start "
                "`agent-sandbox up` (which writes one in its data directory)")
        src = ", ".join(str(f) for f in found)
        ctx_name = context or current
        if not ctx_name:
            raise SandboxConfigError(f"the kubeconfig {src} has no current-context; pass context=")
        if ctx_name not in merged["contexts"]:
            raise SandboxConfigError(
                f"the kubeconfig {src} has no context {ctx_name!r} "
                f"(it has: {', '.join(map(str, merged['contexts'])) or 'none'})")
        ctx, _ = merged["contexts"][ctx_name]
        cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
        if cluster_name not in merged["clusters"]:
            raise SandboxConfigError(
                f"the kubeconfig {src}: context {ctx_name!r} names cluster {cluster_name!r}, "
                "which is not defined")
        cluster, cdir = merged["clusters"][cluster_name]
        user, udir = merged["users"].get(user_name, ({}, cdir))
        server = cluster.get("server")
        if not server:
            raise SandboxConfigError(f"the kubeconfig {src}: cluster {cluster_name!r} has no server")

        def read(value: Any, base: Path, what: str) -> bytes:
            p = Path(str(value)).expanduser()
            if not p.is_absolute():
                p = base / p
            try:
                return p.read_bytes()
            except OSError as e:
                raise SandboxConfigError(
                    f"the kubeconfig {src}: cannot read {what} {p}: {e.strerror}") from None

        ca_pem = None
        if cluster.get("certificate-authority-data"):
            ca_pem = _b64(cluster["certificate-authority-data"]).decode()
        elif cluster.get("certificate-authority"):
            ca_pem = read(cluster["certificate-authority"], cdir, "certificate-authority").decode()
        cert = key = None
        if user.get("client-certificate-data"):
            cert = _b64(user["client-certificate-data"])
        elif user.get("client-certificate"):
            cert = read(user["client-certificate"], udir, "client-certificate")
        if user.get("client-key-data"):
            key = _b64(user["client-key-data"])
        elif user.get("client-key"):
            key = read(user["client-key"], udir, "client-key")
        token_file = None
        if user.get("tokenFile"):
            tf = Path(str(user["tokenFile"])).expanduser()
            token_file = str(tf if tf.is_absolute() else udir / tf)
        if user.get("auth-provider"):
            ap = user["auth-provider"]
            tok = (ap.get("config") or {}).get("id-token") or (ap.get("config") or {}).get(
                "access-token")
            if not tok:
                raise SandboxConfigError(
                    f"the kubeconfig {src}: auth-provider {ap.get('name')!r} is not supported; "
                    "use an exec credential plugin or a token")
            user = {**user, "token": tok}
        plugin = _ExecPlugin(user["exec"], udir, server) if user.get("exec") else None
        return cls(server, ctx.get("namespace") or "default", f"kubeconfig {src}",
                   ca_pem=ca_pem, insecure=bool(cluster.get("insecure-skip-tls-verify")),
                   token=user.get("token"), token_file=token_file, cert_pem=cert, key_pem=key,
                   username=user.get("username"), password=user.get("password"),
                   exec_plugin=plugin, tls_server_name=cluster.get("tls-server-name"))

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = SA_DIR / "token"
        if not host or not token.exists():
            raise SandboxConfigError(
                "not running in a Kubernetes Pod (KUBERNETES_SERVICE_HOST is unset or no "
                f"service-account token at {token}); pass a kubeconfig instead")
        if ":" in host:
            host = f"[{host}]"
        ns_file = SA_DIR / "namespace"
        ns = ns_file.read_text().strip() if ns_file.exists() else "default"
        ca = SA_DIR / "ca.crt"
        return cls(f"https://{host}:{port}", ns, "in-cluster service account",
                   ca_pem=ca.read_text() if ca.exists() else None, token_file=str(token))

    # -- use -------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_pem and not self.insecure:
            # As client-go: a given CA is the only one trusted (and the system store, slow to
            # load, is not needed).
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_verify_locations(cadata=self.ca_pem)
            except (ssl.SSLError, ValueError) as e:
                raise SandboxConfigError(
                    f"the {self.source}: the certificate authority is not valid PEM: {e}"
                ) from None
        else:
            ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = self.cert_pem, self.key_pem
        if self.exec_plugin is not None and cert is None:
            st = self.exec_plugin.credential()
            if st.get("clientCertificateData") and st.get("clientKeyData"):
                cert = st["clientCertificateData"].encode()
                key = st["clientKeyData"].encode()
        if cert and key:
            # ssl loads client certificates from files only: a private temporary file, removed
            # as soon as it is loaded.
            fd, name = tempfile.mkstemp(prefix="agent-sandbox-sdk-", suffix=".pem")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(cert.rstrip(b"\n") + b"\n" + key)
                ctx.load_cert_chain(name)
            except ssl.SSLError as e:
                raise SandboxConfigError(
                    f"the {self.source}: the client certificate or key is invalid: {e}") from None
            finally:
                os.unlink(name)
        return ctx

    def auth_header(self, force_refresh: bool = False) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.token_file:
            now = time.monotonic()
            if force_refresh or self._token_read is None or now - self._token_read[0] > 60:
                try:
                    tok = Path(self.token_file).read_text().strip()
                except OSError as e:
                    raise SandboxConfigError(
                        f"the {self.source}: cannot read the token file {self.token_file}: "
                        f"{e.strerror}") from None
                self._token_read = (now, tok)
            return f"Bearer {self._token_read[1]}"
        if self.exec_plugin is not None:
            st = self.exec_plugin.credential(force=force_refresh)
            if st.get("token"):
                return f"Bearer {st['token']}"
        if self.username is not None and self.password is not None:
            raw = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None


class KubeApi:
    """The Kubernetes REST verbs on dict objects, with errors that say what to do."""

    def __init__(self, config: KubeConfig, hint: str = "") -> None:
        self.config = config
        self.hint = hint  # appended to "cannot reach" errors (e.g. "is `agent-sandbox up` running?")
        self.http = HttpClient(config.ssl_context(), server_name=config.tls_server_name)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def path(resource: str, namespace: str | None, name: str | None = None) -> str:
        base = RESOURCES[resource]
        p = f"{base}/namespaces/{namespace}/{resource}" if namespace else f"{base}/{resource}"
        if name:
            p += "/" + urllib.parse.quote(name, safe="")
        return p

    def _headers(self, content_type: str | None = None, refresh: bool = False) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "agent-sandbox-sdk-python"}
        auth = self.config.auth_header(force_refresh=refresh)
        if auth:
            h["Authorization"] = auth
        if content_type:
            h["Content-Type"] = content_type
        return h

    def _unreachable(self, e: TransportError) -> SandboxConnectionError:
        msg = f"cannot reach the Kubernetes API server at {self.config.server} " \
              f"(from the {self.config.source}): {e}."
        if e.kind == "tls":
            msg += " Check the kubeconfig's certificate-authority for this server."
        elif self.hint:
            msg += " " + self.hint
        else:
            msg += " Check that the cluster is up and that the kubeconfig points at it."
        return SandboxConnectionError(msg)

    def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float = 30.0, deadline: float | None = None) -> Any:
        url = self.config.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        for refresh in (False, True):
            headers = self._headers(content_type if data is not None else None, refresh)
            try:
                resp = self.http.request(method, url, headers=headers, body=data,
                                         timeout=timeout, deadline=deadline)
            except TransportError as e:
                if e.kind == "timeout":
                    raise SandboxTimeoutError(
                        f"the Kubernetes API server at {self.config.server} did not answer "
                        f"{method} {path} in time ({e})") from None
                raise self._unreachable(e) from None
            if resp.status == 401 and not refresh and (
                    self.config.exec_plugin is not None or self.config.token_file):
                continue
            break
        if resp.status >= 400:
            raise self._api_error(method, path, resp)
        if not resp.body:
            return None
        return resp.json()

    def _api_error(self, method: str, path: str, resp: HttpResponse) -> KubeApiError:
        reason, message = "", resp.text.strip()
        try:
            st = resp.json()
            reason = str(st.get("reason") or "")
            message = str(st.get("message") or message)
        except ValueError:
            pass
        if resp.status == 401:
            message += (f" (the credentials of the {self.config.source} were rejected; "
                        "refresh or replace them)")
        elif resp.status == 403:
            message += " (the account lacks permission for this; see its RBAC)"
        return KubeApiError(f"{method} {path}: {resp.status} {message}", resp.status,
                            reason or str(resp.status), resp)

    # -- verbs -----------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str, **kw: Any) -> Any:
        return self.request("GET", self.path(resource, namespace, name), **kw)

    def list(self, resource: str, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None, **kw: Any) -> Any:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return self.request("GET", self.path(resource, namespace), params=params, **kw)

    def create(self, resource: str, namespace: str | None, body: Any, **kw: Any) -> Any:
        return self.request("POST", self.path(resource, namespace), body=body, **kw)

    def merge_patch(self, resource: str, namespace: str | None, name: str, patch: Any,
                    subresource: str | None = None, **kw: Any) -> Any:
        p = self.path(resource, namespace, name)
        if subresource:
            p += "/" + subresource
        return self.request("PATCH", p, body=patch,
                            content_type="application/merge-patch+json", **kw)

    def replace(self, resource: str, namespace: str | None, name: str, body: Any,
                **kw: Any) -> Any:
        return self.request("PUT", self.path(resource, namespace, name), body=body, **kw)

    def delete(self, resource: str, namespace: str | None, name: str,
               propagation: str | None = "Background", **kw: Any) -> bool:
        """Deletes; False if it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": propagation} if propagation else None
        try:
            self.request("DELETE", self.path(resource, namespace, name), body=body, **kw)
        except KubeApiError as e:
            if e.status_code == 404:
                return False
            raise
        return True

    def watch(self, resource: str, namespace: str | None, *, deadline: float,
              resource_version: str | None = None, field_selector: str | None = None,
              label_selector: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yields ``(type, object)`` until ``deadline``; reconnects when the server ends the
        stream, resuming from the last resourceVersion seen (from a fresh list on 410 Gone,
        which is signalled by yielding ``("RELIST", {})``)."""
        rv = resource_version
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            params = {"watch": "true", "allowWatchBookmarks": "true",
                      "timeoutSeconds": str(max(1, int(remaining) + 1))}
            if rv:
                params["resourceVersion"] = rv
            if field_selector:
                params["fieldSelector"] = field_selector
            if label_selector:
                params["labelSelector"] = label_selector
            url = self.config.server + self.path(resource, namespace) + "?" + \
                urllib.parse.urlencode(params)
            try:
                stream = self.http.stream("GET", url, headers=self._headers(),
                                          timeout=max(0.1, min(remaining, 30.0)))
            except TransportError as e:
                if e.kind == "timeout":
                    return
                raise self._unreachable(e) from None
            try:
                if stream.status >= 400:
                    body = stream.read()
                    resp = HttpResponse(stream.status, stream.reason, stream.headers, body)
                    if stream.status == 410:
                        rv = None
                        yield "RELIST", {}
                        continue
                    raise self._api_error("GET", self.path(resource, namespace) + " (watch)", resp)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    stream.set_timeout(max(0.05, remaining))
                    try:
                        line = stream.readline()
                    except TransportError:
                        if deadline - time.monotonic() <= 0:
                            return
                        time.sleep(0.1)
                        break  # the stream broke: reconnect from the last resourceVersion
                    if not line:
                        break
                    line = line.strip()
                    if not line:
                        continue
                    ev = json.loads(line)
                    typ, obj = ev.get("type"), ev.get("object") or {}
                    if typ == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                            yield "RELIST", {}
                            break
                        raise SandboxRequestError(
                            f"watch of {resource} failed: {obj.get('message')}",
                            status_code=obj.get("code"), code=obj.get("reason"))
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    if typ == "BOOKMARK":
                        continue
                    yield typ, obj
            finally:
                stream.close()
