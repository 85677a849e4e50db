"""``SandboxClient``: claims sandboxes from warm pools (or templates), re-attaches to them,
lists and deletes them, and manages templates and warm pools."""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Optional, TypeVar

from ._connection import Connection, connect
from ._kube import KubeApiError
from .exceptions import (
    SandboxClaimFailedError,
    SandboxRequestError,
    SandboxConfigError,
    SandboxError,
    SandboxMetadataError,
    SandboxNotFoundError,
    SandboxTemplateNotFoundError,
    SandboxTimeoutError,
    SandboxWarmPoolNotFoundError,
)
from .models import SandboxConnectionConfig, SandboxTracerConfig
from ._tracing import Tracing
from .sandbox import Sandbox

log = logging.getLogger("agent_sandbox_sdk")

T = TypeVar("T", bound=Sandbox)

CREATED_BY = "agents.x-k8s.io/created-by"
FIRST_REQUESTED = "agents.x-k8s.io/client-first-requested-at"
MANAGED_BY = "app.kubernetes.io/managed-by"
SHADOW_POOL_PREFIX = "shadow-pool-"

# Ready=False reasons after which a claim never becomes ready.
FATAL_REASONS = {"InvalidMetadata", "EnvVarsInjectionRejected", "VolumeClaimTemplatesError",
                 "ClaimExpired", "SandboxExpired", "InvalidConfiguration", "PodFailed",
                 "PodSucceeded"}

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _validate_labels(labels: Optional[Mapping[str, str]], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (labels or {}).items():
        k, v = str(k), str(v)
        prefix, _, name = k.rpartition("/")
        if (not name or len(name) > 63 or not _LABEL_NAME.match(name)
                or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))):
            raise ValueError(f"{what}: invalid key {k!r} (a qualified name: [prefix/]name, "
                             "name up to 63 alphanumerics, '-', '_' or '.')")
        if len(v) > 63 or not _LABEL_NAME.match(v):
            raise ValueError(f"{what}: invalid value {v!r} for {k!r} (up to 63 alphanumerics, "
                             "'-', '_' or '.', starting and ending alphanumeric)")
        out[k] = v
    return out


def _check_claim_name(name: str) -> None:
    """An explicit claim name: a DNS-1123 subdomain, as upstream checks it."""
    if not isinstance(name, str) or not name or len(name) > 253 \
            or not _DNS_SUBDOMAIN.match(name):
        raise ValueError(f"claim name {name!r} is not a valid name (a DNS-1123 subdomain: "
                         "lowercase alphanumerics, '-' and '.', starting and ending "
                         "alphanumeric, up to 253)")


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 63 or not _DNS_LABEL.match(name):
        raise ValueError(f"{what} {name!r} is not a valid name (lowercase alphanumerics and '-', "
                         "up to 63, starting and ending alphanumeric)")


def _now_rfc3339(offset: float = 0.0) -> str:
    t = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(obj: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return dict(c)
    return None


class SandboxClient(Generic[T]):
    """Claims and manages sandboxes.

    ``connection_config`` ``None`` finds a local ``agent-sandbox up`` (its ``endpoints.json``),
    else ``$AGENT_SANDBOX_ROUTER_URL``, else the service account inside a Pod, else upstream's
    default (a ``kubectl port-forward`` to the router Service, with the kubeconfig); see the
    models for the explicit choices. ``tracer_config`` turns on OpenTelemetry spans.
    ``cleanup=True`` deletes, when the program exits, the sandboxes this client created under
    generated names (as the ``with`` block's exit does). ``api_client`` (upstream's) is a
    configured Kubernetes ``ApiClient`` naming the cluster instead of the kubeconfig.
    """

    sandbox_class: type[Sandbox] = Sandbox

    def __init__(self, connection_config: Optional[SandboxConnectionConfig] = None,
                 tracer_config: Optional[SandboxTracerConfig] = None,
                 cleanup: bool = False, api_client: Any = None) -> None:
        self.tracer_config = tracer_config or SandboxTracerConfig()
        self._tracing = Tracing(self.tracer_config)
        self.connection: Connection = connect(connection_config, api_client)
        self._sandboxes: dict[tuple[str, str], Sandbox] = {}
        # Claims named by the caller are the caller's: automatic cleanup (the context manager's
        # exit, cleanup=True at program exit) leaves them, as upstream; delete_all() does not.
        self._explicit: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._closed = False
        if cleanup:
            atexit.register(self._atexit)

    # -- housekeeping ----------------------------------------------------------------------

    @property
    def kube(self) -> Any:
        return self.connection.kube

    def _atexit(self) -> None:
        if not self._closed:
            try:
                self._delete_automatic()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass

    def _delete_automatic(self) -> None:
        """Deletes the sandboxes this client created under generated names; closes the handles
        of the ones named by the caller."""
        with self._lock:
            items = list(self._sandboxes.items())
        for key, sb in items:
            if key in self._explicit:
                sb.close_connection()
                self._forget(*key)
            else:
                self.delete_sandbox(key[1], key[0])

    def _forget(self, namespace: str, claim_name: str) -> None:
        with self._lock:
            self._sandboxes.pop((namespace, claim_name), None)

    def close(self) -> None:
        """Closes connections (tunnels included); sandboxes keep running."""
        self._closed = True
        with self._lock:
            handles = list(self._sandboxes.values())
        for sb in handles:
            sb._dp.close()
        self.connection.close()

    def __enter__(self) -> SandboxClient[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._delete_automatic()
        finally:
            self.close()

    # -- sandboxes -------------------------------------------------------------------------

    def create_sandbox(self, warmpool: Optional[str] = None, namespace: str = "default",
                       sandbox_ready_timeout: float = 180,
                       labels: Optional[Mapping[str, str]] = None, *,
                       claim_name: Optional[str] = None,
                       adopt_existing: bool = False,
                       shutdown_after_seconds: Optional[int] = None,
                       volume_claim_templates: Optional[Sequence[Mapping[str, Any]]] = None,
                       pod_labels: Optional[Mapping[str, str]] = None,
                       pod_annotations: Optional[Mapping[str, str]] = None,
                       env: Optional[Mapping[str, str]] = None,
                       template: Optional[str] = None,
                       shutdown_policy: str = "Delete",
                       ttl_seconds_after_finished: Optional[int] = None) -> T:
        """Claims a sandbox from the warm pool ``warmpool`` (or, with only ``template``, cold
        from that template through its 0-replica pool ``shadow-pool-<template>``, made if
        missing) and waits until it is Ready.

        ``claim_name`` names the claim (else ``sandbox-claim-<random>``); such a claim is the
        caller's: automatic cleanup leaves it. With ``adopt_existing`` a claim of that name that
        already exists (of the same pool, not being deleted) is attached to instead of failing;
        the other options are then not applied. When a claim under a generated name fails or
        times out, it is deleted, and the error says why."""
        if not warmpool and not template:
            raise ValueError("create_sandbox needs warmpool= (a SandboxWarmPool) or template= "
                             "(a SandboxTemplate)")
        if adopt_existing and claim_name is None:
            raise ValueError("adopt_existing=True needs claim_name= (the claim to adopt)")
        if claim_name is not None:
            _check_claim_name(claim_name)
        _check_name(namespace, "namespace")
        user_labels = _validate_labels(labels, "labels")
        pod_meta: dict[str, Any] = {}
        if pod_labels:
            pod_meta["labels"] = _validate_labels(pod_labels, "pod_labels")
        if pod_annotations:
            pod_meta["annotations"] = {str(k): str(v) for k, v in pod_annotations.items()}
        if shutdown_after_seconds is not None and (
                isinstance(shutdown_after_seconds, bool)
                or not isinstance(shutdown_after_seconds, int) or shutdown_after_seconds <= 0):
            raise ValueError("shutdown_after_seconds must be a positive integer")
        kube = self.connection.kube
        deadline = time.monotonic() + sandbox_ready_timeout
        if not warmpool:
            assert template is not None
            warmpool = self._shadow_pool(template, namespace)
        _check_name(warmpool, "warm pool")
        generated = claim_name is None
        name = claim_name or f"sandbox-claim-{uuid.uuid4().hex[:8]}"
        if not generated:
            with self._lock:
                self._explicit.add((namespace, name))
        spec: dict[str, Any] = {"warmPoolRef": {"name": warmpool}}
        lifecycle: dict[str, Any] = {}
        if shutdown_after_seconds is not None:
            lifecycle["shutdownTime"] = _now_rfc3339(shutdown_after_seconds)
        if ttl_seconds_after_finished is not None:
            lifecycle["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
        if lifecycle:
            lifecycle["shutdownPolicy"] = shutdown_policy
            spec["lifecycle"] = lifecycle
        if volume_claim_templates:
            spec["volumeClaimTemplates"] = [dict(v) for v in volume_claim_templates]
        if pod_meta:
            spec["additionalPodMetadata"] = pod_meta
        if env:
            for k in env:
                if not isinstance(k, str) or not _ENV_NAME.match(k) or k in (".", "..") \
                        or k.startswith(".."):
                    raise ValueError(f"env: invalid variable name {k!r} (letters, digits, '_', "
                                     "'-' and '.', not starting with a digit, not '.' or '..')")
            spec["env"] = [{"name": str(k), "value": str(v)} for k, v in env.items()]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        annotations = {FIRST_REQUESTED: now.replace("+00:00", "Z")}
        claim = {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxClaim",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**user_labels, CREATED_BY: "python-client"},
                         "annotations": annotations},
            "spec": spec,
        }
        adopted: Optional[dict[str, Any]] = None
        try:
            with self._tracing.span("create_claim", {
                    "sandbox.claim.name": name,
                    "sandbox.lifecycle.shutdown_time": lifecycle.get("shutdownTime"),
                    "sandbox.lifecycle.shutdown_policy": lifecycle.get("shutdownPolicy")}):
                annotations.update(self._tracing.claim_annotations())
                created = kube.create("sandboxclaims", namespace, claim,
                                      deadline=deadline, timeout=max(1.0, sandbox_ready_timeout))
        except KubeApiError as e:
            if e.status_code == 409 and adopt_existing:
                adopted = self._adoptable(name, namespace, warmpool)
                created = adopted
            else:
                raise self._create_error(e, namespace, name) from None
        uid = (created.get("metadata") or {}).get("uid") if not generated else None
        rv = (created.get("metadata") or {}).get("resourceVersion")
        try:
            with self._tracing.span("wait_for_claim_ready"):
                obj = self._wait_claim(name, namespace, rv, deadline, sandbox_ready_timeout,
                                       warmpool, expected_uid=uid, initial=adopted)
        except BaseException:
            if generated:
                try:
                    with self._tracing.span("delete_claim"):
                        kube.delete("sandboxclaims", namespace, name, timeout=10)
                except Exception as e:  # noqa: BLE001 - the original error matters more
                    log.warning("could not delete claim %s/%s after a failure: %s", namespace,
                                name, e)
            raise
        st = obj.get("status") or {}
        with self._lock:
            existing = self._sandboxes.get((namespace, name))
        if existing is not None and existing.is_active \
                and existing.sandbox_id == st["sandbox"]["name"]:
            return existing  # type: ignore[return-value]
        sb = self.sandbox_class(name, st["sandbox"]["name"], namespace, self.connection,
                                pod_ips=st["sandbox"].get("podIPs"), client=self)
        with self._lock:
            previous = self._sandboxes.get((namespace, name))
            self._sandboxes[(namespace, name)] = sb
        if previous is not None:
            previous.close_connection()
        return sb  # type: ignore[return-value]

    def _create_error(self, e: KubeApiError, namespace: str, name: str) -> Exception:
        kube = self.connection.kube
        body = e.response.text if e.response is not None else ""
        if e.status_code == 404 and 'namespaces "' in body:
            return SandboxConfigError(
                f"namespace {namespace!r} does not exist; create it or pick another")
        if e.status_code == 404:
            return SandboxConfigError(
                f"the API server at {kube.config.server} answered 404 to creating a "
                f"SandboxClaim in namespace {namespace!r}: the namespace does not exist, or "
                "the API server does not serve SandboxClaims (extensions.agents.x-k8s.io/"
                "v1beta1; install the CRDs with kubectl apply -f deploy/crds). Server: "
                f"{body.strip()[:300]}")
        if e.status_code == 409:
            return SandboxRequestError(
                f"claim {namespace}/{name} already exists: pick another claim_name, pass "
                "adopt_existing=True to attach to it, or get_sandbox() it", status_code=409,
                response=e.response, code=e.code)
        return e

    def _adoptable(self, name: str, namespace: str, warmpool: str) -> dict[str, Any]:
        """The existing claim ``name``, if it can be adopted: of ``warmpool``, not being
        deleted."""
        try:
            claim = dict(self.connection.kube.get("sandboxclaims", namespace, name))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxNotFoundError(
                    f"claim {namespace}/{name} existed when it was created and was gone when "
                    "read; try again") from None
            raise
        meta = claim.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            raise ValueError(f"claim {namespace}/{name} is being deleted; wait for it to go, or "
                             "pick another claim_name")
        pool = ((claim.get("spec") or {}).get("warmPoolRef") or {}).get("name")
        if pool != warmpool:
            raise ValueError(f"claim {namespace}/{name} is of warm pool {pool!r}, not "
                             f"{warmpool!r}; adopt it with warmpool={pool!r}, or pick another "
                             "claim_name")
        if not meta.get("uid") or not meta.get("resourceVersion"):
            raise ValueError(f"claim {namespace}/{name} has no metadata.uid or resourceVersion")
        return claim

    def _shadow_pool(self, template: str, namespace: str) -> str:
        kube = self.connection.kube
        try:
            kube.get("sandboxtemplates", namespace, template)
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxTemplateNotFoundError(
                    f"SandboxTemplate {namespace}/{template} does not exist; create it (kubectl "
                    "apply, or client.create_template()) or name another") from None
            raise
        pool = (SHADOW_POOL_PREFIX + template)[:63].rstrip("-")
        try:
            kube.create("sandboxwarmpools", namespace, {
                "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                "metadata": {"name": pool, "namespace": namespace,
                             "labels": {MANAGED_BY: "agent-sandbox-sdk"}},
                "spec": {"replicas": 0, "sandboxTemplateRef": {"name": template}}})
        except KubeApiError as e:
            if e.status_code != 409:
                raise
        return pool

    def _wait_claim(self, name: str, namespace: str, rv: Optional[str], deadline: float,
                    timeout: float, warmpool: str, expected_uid: Optional[str] = None,
                    initial: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        kube = self.connection.kube
        last: dict[str, Any] = {}

        def check(obj: dict[str, Any]) -> bool:
            nonlocal last
            last = obj
            meta = obj.get("metadata") or {}
            if expected_uid is not None and meta.get("uid") != expected_uid:
                raise SandboxNotFoundError(
                    f"claim {namespace}/{name} was replaced by another of the same name while "
                    "waiting for it")
            if expected_uid is not None and meta.get("deletionTimestamp"):
                raise SandboxNotFoundError(f"claim {namespace}/{name} is being deleted")
            st = obj.get("status") or {}
            for c in st.get("conditions") or []:
                reason = c.get("reason")
                if reason == "WarmPoolNotFound":
                    raise SandboxWarmPoolNotFoundError(self._pool_missing(warmpool, namespace))
                if reason == "TemplateNotFound":
                    raise SandboxTemplateNotFoundError(
                        f"claim {namespace}/{name}: {c.get('message')}; the warm pool "
                        f"{warmpool!r} names a SandboxTemplate that does not exist. Create it, "
                        "or fix the pool's sandboxTemplateRef")
                if c.get("type") == "Ready" and c.get("status") == "False" \
                        and reason in FATAL_REASONS:
                    raise SandboxClaimFailedError(
                        f"claim {namespace}/{name} failed: {reason}: {c.get('message')}")
            r = _ready(obj)
            sandbox = st.get("sandbox") or {}
            return bool(r and r.get("status") == "True" and sandbox.get("name"))

        if initial is not None and check(initial):  # an adopted claim may be ready already
            return initial
        for typ, obj in kube.watch("sandboxclaims", namespace, deadline=deadline,
                                   resource_version=rv,
                                   field_selector=f"metadata.name={name}"):
            if typ == "RELIST":
                try:
                    obj = kube.get("sandboxclaims", namespace, name, deadline=deadline)
                except KubeApiError as e:
                    if e.status_code == 404:
                        raise SandboxMetadataError(
                            f"claim {namespace}/{name} was deleted while waiting for it") from None
                    raise
            elif typ == "DELETED":
                raise SandboxMetadataError(
                    f"claim {namespace}/{name} was deleted while waiting for it to become ready")
            if check(obj):
                return obj
        # One last look: the watch may have ended just as the claim became ready.
        try:
            obj = kube.get("sandboxclaims", namespace, name, timeout=5)
            if check(obj):
                return dict(obj)
        except SandboxError:
            pass
        raise SandboxTimeoutError(self._diagnose(name, namespace, warmpool, timeout, last))

    def _pool_missing(self, warmpool: str, namespace: str) -> str:
        msg = f"SandboxWarmPool {namespace}/{warmpool} does not exist"
        try:
            self.connection.kube.get("sandboxtemplates", namespace, warmpool, timeout=5)
            msg += (f"; {warmpool!r} is a SandboxTemplate: pass template={warmpool!r} for a cold "
                    "start, or create a warm pool for it")
        except SandboxError:
            try:
                pools = self.connection.kube.list("sandboxwarmpools", namespace, timeout=5)
                names = [p["metadata"]["name"] for p in pools.get("items", [])]
                msg += f" (pools in {namespace}: {', '.join(names) or 'none'})"
            except SandboxError:
                pass
            msg += "; create it (kubectl apply, or client.create_warm_pool()) or name another"
        return msg

    def _diagnose(self, name: str, namespace: str, warmpool: str, timeout: float,
                  last: Mapping[str, Any]) -> str:
        parts = [f"claim {namespace}/{name} did not become ready within {timeout:g} s"]
        r = _ready(last) if last else None
        if r:
            parts.append(f"its Ready condition: {r.get('reason')}: {r.get('message')}")
        elif not last.get("status"):
            parts.append("it has no status: is the claim controller running (agent-sandbox "
                         "up, or agent-sandbox controller in a cluster)?")
        kube = self.connection.kube
        try:
            pool = kube.get("sandboxwarmpools", namespace, warmpool, timeout=5)
            ps = pool.get("status") or {}
            parts.append(f"warm pool {warmpool}: {ps.get('readyReplicas', 0)} of "
                         f"{(pool.get('spec') or {}).get('replicas', 1)} ready")
        except SandboxError:
            pass
        sb_name = ((last.get("status") or {}).get("sandbox") or {}).get("name")
        if sb_name:
            parts.append(f"see `kubectl describe sandbox {sb_name} -n {namespace}` and "
                         f"`kubectl logs {sb_name} -n {namespace}`")
        parts.append("the claim was deleted; pass a larger sandbox_ready_timeout if the image "
                     "is slow to start")
        return "; ".join(parts)

    def get_sandbox(self, claim_name: str, namespace: str = "default",
                    resolve_timeout: float = 30) -> T:
        """A handle on an existing claim's sandbox (re-attach), waiting up to
        ``resolve_timeout`` for the claim to name its sandbox."""
        if not claim_name:
            # A terminated handle's claim_name is None; upstream reports that as not found too.
            raise SandboxNotFoundError(
                f"no claim name given ({claim_name!r}): a terminated sandbox's claim_name is "
                "None; pass the name of an existing claim (client.list_all_sandboxes())")
        with self._lock:
            cached = self._sandboxes.get((namespace, claim_name))
        kube = self.connection.kube
        deadline = time.monotonic() + resolve_timeout
        while True:
            try:
                claim = kube.get("sandboxclaims", namespace, claim_name, deadline=deadline)
            except KubeApiError as e:
                if e.status_code == 404:
                    if cached is not None:
                        cached.close_connection()
                        self._forget(namespace, claim_name)
                    raise SandboxNotFoundError(
                        f"claim {namespace}/{claim_name} does not exist; list claims with "
                        "client.list_all_sandboxes()") from None
                raise
            sandbox = (claim.get("status") or {}).get("sandbox") or {}
            if sandbox.get("name"):
                break
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"claim {namespace}/{claim_name} names no sandbox after {resolve_timeout:g} s"
                    f"; its Ready condition: {_ready(claim)}")
            time.sleep(0.2)
        try:
            kube.get("sandboxes", namespace, sandbox["name"], deadline=deadline)
        except KubeApiError as e:
            if e.status_code == 404:
                if cached is not None:
                    cached.close_connection()
                    self._forget(namespace, claim_name)
                raise SandboxNotFoundError(
                    f"claim {namespace}/{claim_name} names Sandbox {sandbox['name']}, which no "
                    "longer exists") from None
            raise
        if cached is not None and cached.is_active and cached.sandbox_id == sandbox["name"]:
            return cached  # type: ignore[return-value]
        sb = self.sandbox_class(claim_name, sandbox["name"], namespace, self.connection,
                                pod_ips=sandbox.get("podIPs"), client=self)
        with self._lock:
            self._sandboxes[(namespace, claim_name)] = sb
        return sb  # type: ignore[return-value]

    def list_active_sandboxes(self) -> list[tuple[str, str]]:
        """``(namespace, claim_name)`` of the handles this client holds."""
        with self._lock:
            for k in [k for k, s in self._sandboxes.items() if not s.is_active]:
                del self._sandboxes[k]
            return list(self._sandboxes)

    def list_all_sandboxes(self, namespace: str = "default",
                           label_selector: Optional[str] = None) -> list[str]:
        """The names of every SandboxClaim in ``namespace``."""
        items = self.connection.kube.list("sandboxclaims", namespace,
                                          label_selector=label_selector).get("items", [])
        return [i["metadata"]["name"] for i in items]

    def delete_sandbox(self, claim_name: str, namespace: str = "default") -> None:
        """Deletes a claim (and its sandbox). Errors are logged, not raised (as upstream)."""
        with self._lock:
            sb = self._sandboxes.get((namespace, claim_name))
        try:
            if sb is not None:
                sb.terminate()
            else:
                with self._tracing.span("delete_claim"):
                    self.connection.kube.delete("sandboxclaims", namespace, claim_name)
        except SandboxError as e:
            log.error("deleting claim %s/%s failed: %s", namespace, claim_name, e)
        self._forget(namespace, claim_name)

    def delete_all(self) -> None:
        """Deletes every sandbox this client holds (those under names given by the caller
        too)."""
        with self._lock:
            keys = list(self._sandboxes)
        for ns, name in keys:
            self.delete_sandbox(name, ns)

    def get_sandbox_claim_warmpool_name(self, claim_name: str, namespace: str = "default") -> str:
        try:
            claim = self.connection.kube.get("sandboxclaims", namespace, claim_name)
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxNotFoundError(f"claim {namespace}/{claim_name} does not exist") \
                    from None
            raise
        pool = ((claim.get("spec") or {}).get("warmPoolRef") or {}).get("name")
        if not isinstance(pool, str) or not pool:
            raise SandboxMetadataError(f"claim {namespace}/{claim_name} has no "
                                       "spec.warmPoolRef.name")
        return pool

    # -- templates and warm pools ----------------------------------------------------------

    def create_template(self, name: str, image: Optional[str] = None, namespace: str = "default",
                        *, command: Optional[Sequence[str]] = None,
                        args: Optional[Sequence[str]] = None,
                        env: Optional[Mapping[str, str]] = None,
                        resources: Optional[Mapping[str, Any]] = None,
                        runtime_class_name: Optional[str] = None,
                        labels: Optional[Mapping[str, str]] = None,
                        env_injection: str = "Disallowed",
                        sandboxd: bool = False,
                        spec: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Creates a SandboxTemplate. Either ``spec`` (the whole SandboxTemplate spec) or an
        ``image`` whose entrypoint is sandboxd (as the example image): one container named
        ``sandbox``, ready when ``GET /v1/health`` answers on port 8080. With
        ``sandboxd=True`` the image need not contain sandboxd: the embedded node runs the
        container (its ``command``, or the image's entrypoint) under its own sandboxd (the
        ``agent-sandbox/sandboxd`` annotation; a cluster's kubelet ignores it)."""
        _check_name(name, "template")
        if spec is None:
            if not image:
                raise ValueError("create_template needs image= or spec=")
            container: dict[str, Any] = {
                "name": "sandbox", "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080}, {"containerPort": 8888}],
                "readinessProbe": {"httpGet": {"path": "/v1/health", "port": 8080},
                                   "periodSeconds": 1}}
            if command:
                container["command"] = list(command)
            if args:
                container["args"] = list(args)
            if env:
                container["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
            if resources:
                container["resources"] = dict(resources)
            pod_spec: dict[str, Any] = {"containers": [container]}
            if runtime_class_name:
                pod_spec["runtimeClassName"] = runtime_class_name
            pod_template: dict[str, Any] = {"spec": pod_spec}
            if sandboxd:
                pod_template["metadata"] = {"annotations": {"agent-sandbox/sandboxd": "true"}}
            spec = {"podTemplate": pod_template, "envVarsInjectionPolicy": env_injection}
        body = {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": _validate_labels(labels, "labels")},
                "spec": dict(spec)}
        return dict(self.connection.kube.create("sandboxtemplates", namespace, body))

    def get_template(self, name: str, namespace: str = "default") -> dict[str, Any]:
        try:
            return dict(self.connection.kube.get("sandboxtemplates", namespace, name))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxTemplateNotFoundError(
                    f"SandboxTemplate {namespace}/{name} does not exist") from None
            raise

    def list_templates(self, namespace: str = "default") -> list[str]:
        items = self.connection.kube.list("sandboxtemplates", namespace).get("items", [])
        return [i["metadata"]["name"] for i in items]

    def delete_template(self, name: str, namespace: str = "default") -> bool:
        """Deletes a template; False if it did not exist."""
        return bool(self.connection.kube.delete("sandboxtemplates", namespace, name))

    def create_warm_pool(self, name: str, template: str, replicas: int = 1,
                         namespace: str = "default", *, update_strategy: Optional[str] = None,
                         labels: Optional[Mapping[str, str]] = None,
                         wait: bool = False, timeout: float = 180) -> dict[str, Any]:
        """Creates a SandboxWarmPool of ``replicas`` sandboxes of ``template``; with ``wait``,
        returns once they are all ready."""
        _check_name(name, "warm pool")
        spec: dict[str, Any] = {"replicas": int(replicas), "sandboxTemplateRef": {"name": template}}
        if update_strategy:
            spec["updateStrategy"] = {"type": update_strategy}
        body = {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": _validate_labels(labels, "labels")},
                "spec": spec}
        pool = dict(self.connection.kube.create("sandboxwarmpools", namespace, body))
        if wait:
            return self.wait_for_warm_pool(name, namespace, timeout=timeout)
        return pool

    def get_warm_pool(self, name: str, namespace: str = "default") -> dict[str, Any]:
        try:
            return dict(self.connection.kube.get("sandboxwarmpools", namespace, name))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxWarmPoolNotFoundError(
                    f"SandboxWarmPool {namespace}/{name} does not exist") from None
            raise

    def list_warm_pools(self, namespace: str = "default") -> list[str]:
        items = self.connection.kube.list("sandboxwarmpools", namespace).get("items", [])
        return [i["metadata"]["name"] for i in items]

    def scale_warm_pool(self, name: str, replicas: int, namespace: str = "default") -> None:
        self.get_warm_pool(name, namespace)
        self.connection.kube.merge_patch("sandboxwarmpools", namespace, name,
                                         {"spec": {"replicas": int(replicas)}})

    def delete_warm_pool(self, name: str, namespace: str = "default") -> bool:
        """Deletes a pool (and its unclaimed sandboxes); False if it did not exist."""
        return bool(self.connection.kube.delete("sandboxwarmpools", namespace, name))

    def wait_for_warm_pool(self, name: str, namespace: str = "default", *,
                           timeout: float = 180,
                           ready_replicas: Optional[int] = None) -> dict[str, Any]:
        """Waits until the pool has ``ready_replicas`` (default: ``spec.replicas``) ready."""
        deadline = time.monotonic() + timeout
        pool: dict[str, Any] = {}
        while True:
            pool = self.get_warm_pool(name, namespace)
            want = ready_replicas if ready_replicas is not None else \
                (pool.get("spec") or {}).get("replicas", 1)
            have = (pool.get("status") or {}).get("readyReplicas", 0) or 0
            if have >= want:
                return pool
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"warm pool {namespace}/{name} has {have} of {want} sandboxes ready after "
                    f"{timeout:g} s; see `kubectl get sandboxes,pods -n {namespace}` and the "
                    "template's image")
            time.sleep(0.25)
