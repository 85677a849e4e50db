"""A handle on one claimed sandbox: commands, files, run_code, PTY sessions, status, suspend and
resume, terminate."""

from __future__ import annotations

import posixpath
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from ._code import Code
from ._computer import Browser, Computer, Window
from ._commands import BACKGROUND_TIMEOUT, Command, Commands, OutputCallback, Process
from ._connection import Connection
from ._dataplane import DataPlane, pick_pod_ip
from ._files import Files
from ._kube import KubeApiError
from ._pty import Pty, PtySession
from . import metrics
from ._tracing import Tracing
from .metrics import timed
from .exceptions import (
    SandboxError,
    SandboxNotFoundError,
    SandboxNotReadyError,
    SandboxTimeoutError,
    SnapshotFailedError,
    SnapshotNotFoundError,
)
from .models import CodeResult, SnapshotInfo

if TYPE_CHECKING:
    from .client import SandboxClient

__all__ = ["BACKGROUND_TIMEOUT", "Browser", "Code", "Command", "Commands", "Computer", "Files",
           "OutputCallback", "Process", "Pty", "PtySession", "Sandbox", "SandboxPathError",
           "Window"]


class SandboxPathError(SandboxError, ValueError):
    """An absolute path outside the directory sandboxd serves files from."""


def _signal_name(sig: Union[str, int]) -> Union[str, int]:
    if isinstance(sig, str) and not sig.upper().startswith("SIG") and not sig.isdigit():
        return "SIG" + sig.upper()
    return sig


class _Paths:
    """Makes absolute paths mean what they say. sandboxd confines files (and a command's
    ``cwd``) to its root directory (``--root-dir``) and would silently re-root any other absolute
    path below it; this finds the root once and refuses such paths for files, and ``cd``s for
    commands. The root is not the work directory (``--work-dir``), where relative paths and
    commands start: the example image serves ``/`` and starts in ``/workspace``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._root: Optional[str] = None
        self._lock = threading.Lock()

    def root(self) -> str:
        with self._lock:
            if self._root is None:
                # sandboxd resolves a cwd of "/" beneath its root: the root itself.
                r = self._sandbox._dp.request(
                    "POST", "/v2/exec", what="finding the sandbox's root directory",
                    json_body={"command": ["pwd"], "cwd": "/", "timeout": 30},
                    headers={"Accept": "application/json"}, timeout=30, idempotent=True)
                self._root = (r.json().get("stdout") or "/").strip() or "/"
            return self._root

    def inside(self, path: str) -> bool:
        """Whether sandboxd takes ``path`` as it is (relative, or under its root)."""
        if not path.startswith("/"):
            return True
        root = self.root()
        norm = posixpath.normpath(path)
        return root == "/" or norm == root or norm.startswith(root.rstrip("/") + "/")

    def file(self, path: str) -> str:
        if not isinstance(path, str) or not path:
            raise SandboxPathError(f"a file path must be a non-empty string, not {path!r}")
        if "\x00" in path:
            raise SandboxPathError(f"a file path must not contain NUL: {path!r}")
        if not self.inside(path):
            root = self.root()
            raise SandboxPathError(
                f"{path} is outside the directory this sandbox serves files from ({root}): "
                f"sandboxd would have used {root.rstrip('/')}{posixpath.normpath(path)} instead. "
                f"Use a path under {root} or a relative one, "
                "or run sandboxd with --root-dir / to reach every path")
        return path


# ---------------------------------------------------------------------------------------------
# The handle
# ---------------------------------------------------------------------------------------------


class Sandbox:
    """One claimed sandbox. Made by :meth:`SandboxClient.create_sandbox` or
    :meth:`SandboxClient.get_sandbox`; usable as a context manager (terminates on exit)."""

    def __init__(self, claim_name: str, sandbox_id: str, namespace: str = "default",
                 connection: Optional[Connection] = None, *, pod_ips: Optional[list[str]] = None,
                 client: Optional[SandboxClient[Any]] = None) -> None:
        if connection is None:
            raise ValueError("Sandbox handles are made by SandboxClient")
        self.claim_name: Optional[str] = claim_name
        self.sandbox_id = sandbox_id
        self.namespace = namespace
        self.connection = connection
        self._client = client
        self._tracing = client._tracing if client is not None else Tracing(None)
        self.tracer_config = self._tracing.config
        self._active = True
        self._dp = DataPlane(connection, sandbox_id, namespace, pick_pod_ip(pod_ips),
                             self._read_pod_ip, pod_name=self.get_pod_name,
                             service_fqdn=self.get_service_fqdn)
        self._paths = _Paths(self)
        self._commands = Commands(self)
        self._files = Files(self)
        self._code = Code(self)
        self._pty = Pty(self)
        self._computer = Computer(self)
        self._browser = Browser(self)
        self._pod_name: Optional[str] = None
        # A fork has no claim: terminate() deletes its Sandbox instead.
        self._owns_sandbox = False
        # Whether its Pod has an idle policy (read once, when a direct request first needs it).
        self._idle_policy: Optional[bool] = None
        self._dp.wake = self._wake_if_idle

    def __repr__(self) -> str:
        return (f"Sandbox(claim_name={self.claim_name!r}, sandbox_id={self.sandbox_id!r}, "
                f"namespace={self.namespace!r})")

    # -- engines ---------------------------------------------------------------------------

    @property
    def commands(self) -> Commands:
        self._require_active()
        return self._commands

    @property
    def files(self) -> Files:
        self._require_active()
        return self._files

    @property
    def code(self) -> Code:
        self._require_active()
        return self._code

    @property
    def pty(self) -> Pty:
        self._require_active()
        return self._pty

    @property
    def computer(self) -> Computer:
        """The desktop (``desktop`` image): screenshots, mouse, keyboard, windows."""
        self._require_active()
        return self._computer

    @property
    def browser(self) -> Browser:
        """The browser's DevTools endpoint (``browser`` and ``desktop`` images)."""
        self._require_active()
        return self._browser

    def port_endpoint(self, port: int) -> tuple[str, dict[str, str]]:
        """How to reach a server listening on ``port`` inside the sandbox: a base URL and the
        headers every request (and WebSocket handshake) to it needs. Through the router, the
        router's URL with its token and the ``X-Sandbox-*`` headers (``X-Sandbox-Port: port``);
        in the direct modes, the pod's address and no headers. The headers carry the pod IP
        of the moment: ask again after a suspend and resume."""
        self._require_active()
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} is not a TCP port (1-65535)")
        url = self._dp.base_url(int(port))
        _, headers = self._dp._target("/", None, None, int(port))
        headers.pop("User-Agent", None)
        return url, headers

    def run_code(self, code: str, language: str = "python", context: Optional[str] = None,
                 timeout: Optional[float] = 60, **kwargs: Any) -> CodeResult:
        """Shorthand for ``sandbox.code.run``."""
        return self.code.run(code, language, context, timeout, **kwargs)

    @property
    def is_active(self) -> bool:
        return self._active

    def _require_active(self) -> None:
        if not self._active:
            raise SandboxNotReadyError(
                f"this handle on sandbox {self.namespace}/{self.sandbox_id} is closed "
                "(terminated or close_connection()); get a new one with client.get_sandbox()")

    # -- Kubernetes side -------------------------------------------------------------------

    def _get_sandbox(self) -> dict[str, Any]:
        try:
            return dict(self.connection.kube.get("sandboxes", self.namespace, self.sandbox_id))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SandboxNotFoundError(
                    f"Sandbox {self.namespace}/{self.sandbox_id} does not exist (any more)"
                ) from None
            raise

    def _read_pod_ip(self) -> Optional[str]:
        try:
            sb = self._get_sandbox()
        except SandboxNotFoundError:
            return None
        return pick_pod_ip((sb.get("status") or {}).get("podIPs"))

    def status(self) -> tuple[str, str]:
        """``("SandboxReady" | "SandboxNotReady" | "SandboxNotFound", message)``."""
        try:
            sb = self._get_sandbox()
        except SandboxNotFoundError as e:
            return "SandboxNotFound", str(e)
        for c in (sb.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                ok = c.get("status") == "True"
                return ("SandboxReady" if ok else "SandboxNotReady"), str(c.get("message") or "")
        return "SandboxNotReady", "the Sandbox has no Ready condition yet"

    def get_pod_name(self) -> str:
        if self._pod_name is None:
            sb = self._get_sandbox()
            ann = (sb.get("metadata") or {}).get("annotations") or {}
            self._pod_name = ann.get("agents.x-k8s.io/pod-name") or self.sandbox_id
        return self._pod_name

    def get_service_fqdn(self) -> Optional[str]:
        """The Sandbox's Service (``status.serviceFQDN``), when its template enables one."""
        fqdn = (self._get_sandbox().get("status") or {}).get("serviceFQDN")
        return fqdn if isinstance(fqdn, str) and fqdn else None

    def get_sandbox_name_hash(self) -> Optional[str]:
        """The ``agents.x-k8s.io/sandbox-name-hash`` of the Sandbox's selector, if any."""
        selector = (self._get_sandbox().get("status") or {}).get("selector") or ""
        for req in str(selector).split(","):
            key, sep, value = req.partition("=")
            if sep and key.strip() == "agents.x-k8s.io/sandbox-name-hash":
                return value.strip() or None
        return None

    def get_pod_ip(self) -> Optional[str]:
        """The pod IP the SDK sends to (from the claim's status; refreshed after resume)."""
        return self._dp.pod_ip

    def is_suspended(self) -> bool:
        sb = self._get_sandbox()
        return (sb.get("spec") or {}).get("operatingMode") == "Suspended"

    def suspend(self, wait: bool = True, timeout: float = 120) -> None:
        """Suspends the sandbox: its Pod is deleted, its volumes are kept
        (``spec.operatingMode: Suspended``). With ``wait``, returns once the Pod is gone."""
        with timed(metrics.sandbox_client_suspend_latency_ms):
            self._suspend(wait, timeout)

    def _suspend(self, wait: bool, timeout: float) -> None:
        self.connection.kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                                         {"spec": {"operatingMode": "Suspended"}})
        self._dp.pod_ip = None
        if wait:
            self._wait_condition("Suspended", timeout, "suspend")

    def resume(self, wait: bool = True, timeout: float = 180) -> None:
        """Resumes a suspended sandbox (``spec.operatingMode: Running``). With ``wait``,
        returns once it is Ready and sandboxd answers."""
        with timed(metrics.sandbox_client_resume_latency_ms):
            self._resume(wait, timeout)

    def _resume(self, wait: bool, timeout: float) -> None:
        self.connection.kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                                         {"spec": {"operatingMode": "Running"}})
        if not wait:
            return
        self._ready_after_restart(timeout, "resume")

    def _ready_after_restart(self, timeout: float, what: str) -> None:
        """Waits until a new Pod of the sandbox is Ready and its sandboxd answers."""
        deadline = time.monotonic() + timeout
        sb = self._wait_condition("Ready", timeout, what, need_ip=True)
        self._dp.close()  # a tunnel or channel to the old Pod
        self._dp.pod_ip = pick_pod_ip((sb.get("status") or {}).get("podIPs"))
        self._pod_name = None
        while True:
            try:
                # The python-runtime's health is its root; sandboxd's REST port has /v1/health.
                health = "/" if self._dp.runtime == "legacy" else "/v1/health"
                r = self._dp.request("GET", health, what="checking sandboxd", timeout=5,
                                     ok=(200, 502, 503))
                if r.status == 200:
                    return
            except (SandboxError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"sandbox {self.namespace}/{self.sandbox_id} is Ready but sandboxd did not "
                    f"answer within {timeout:g} s ({what}); see its logs (kubectl logs "
                    f"{self.get_pod_name()} -n {self.namespace})")
            time.sleep(0.1)

    # -- pause (this project's extension; see the concepts page) --------------------------

    PAUSED_ANNOTATION = "agent-sandbox-rs.github.io/paused"

    def is_paused(self) -> bool:
        """Whether the Sandbox's ``Paused`` condition is True (its processes are frozen)."""
        st = self._get_sandbox().get("status") or {}
        return any(c.get("type") == "Paused" and c.get("status") == "True"
                   for c in st.get("conditions") or [])

    def pause(self, wait: bool = True, timeout: float = 60) -> None:
        """Pauses the sandbox: every process is frozen (memory kept, CPU released) through the
        annotation ``agent-sandbox-rs.github.io/paused: "true"``. With ``wait``, returns once
        the ``Paused`` condition is True. Commands sent meanwhile are refused until
        :meth:`unpause`. (``resume`` is the opposite of ``suspend``.)"""
        self._set_paused(True, wait, timeout)

    def unpause(self, wait: bool = True, timeout: float = 60) -> None:
        """Thaws a paused sandbox: its processes go on where they were. With ``wait``, returns
        once the ``Paused`` condition is False."""
        self._set_paused(False, wait, timeout)

    # -- snapshots (SandboxSnapshot, agent-sandbox-rs.github.io/v1alpha1) ------------------

    def snapshot(self, name: Optional[str] = None, wait: bool = True,
                 timeout: float = 600) -> SnapshotInfo:
        """Snapshots the sandbox: its memory under runsc, its writable filesystem layer and its
        volumes' data, kept on the node. ``name`` defaults to ``<sandbox>-`` and a generated
        suffix. With ``wait``, returns once it is Ready (raises :class:`SnapshotFailedError`
        with the node's message when it fails); without, returns it as created (Pending)."""
        meta: dict[str, Any] = {"name": name} if name else {"generateName": f"{self.sandbox_id}-"}
        obj = self.connection.kube.create("sandboxsnapshots", self.namespace, {
            "apiVersion": "agent-sandbox-rs.github.io/v1alpha1", "kind": "SandboxSnapshot",
            "metadata": meta, "spec": {"sandboxRef": {"name": self.sandbox_id}}})
        snap = SnapshotInfo.from_object(obj)
        if not wait:
            return snap
        return self.wait_snapshot(snap.name, timeout)

    def wait_snapshot(self, name: str, timeout: float = 600) -> SnapshotInfo:
        """Waits until snapshot ``name`` is Ready; raises :class:`SnapshotFailedError` if it
        fails, :class:`SandboxTimeoutError` if it is neither within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        snap = self.get_snapshot(name)
        while True:
            if snap.phase == "Ready":
                return snap
            if snap.phase == "Failed":
                raise SnapshotFailedError(
                    f"snapshot {self.namespace}/{name} of sandbox {self.sandbox_id} failed: "
                    f"{snap.message}")
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"snapshot {self.namespace}/{name} is not Ready after {timeout:g} s "
                    f"(phase {snap.phase}: {snap.message or 'not picked up by a node yet'})")
            time.sleep(0.01)
            snap = self.get_snapshot(name)

    def get_snapshot(self, name: str) -> SnapshotInfo:
        """Snapshot ``name`` (of any sandbox in the namespace)."""
        try:
            return SnapshotInfo.from_object(
                self.connection.kube.get("sandboxsnapshots", self.namespace, name))
        except KubeApiError as e:
            if e.status_code == 404:
                raise SnapshotNotFoundError(
                    f"SandboxSnapshot {self.namespace}/{name} does not exist") from None
            raise

    def list_snapshots(self) -> list[SnapshotInfo]:
        """The snapshots of this sandbox, oldest first."""
        items = self.connection.kube.list("sandboxsnapshots", self.namespace).get("items") or []
        items.sort(key=lambda o: (o.get("metadata") or {}).get("creationTimestamp") or "")
        return [s for s in map(SnapshotInfo.from_object, items) if s.sandbox == self.sandbox_id]

    def delete_snapshot(self, name: str) -> bool:
        """Deletes snapshot ``name`` (the node deletes its files); False if it was gone."""
        return self.connection.kube.delete("sandboxsnapshots", self.namespace, name)

    # -- idle sandboxes (woken on direct connections, as the router wakes them) -------------

    IDLE_PAUSED = "agent-sandbox-rs.github.io/idle-paused"
    IDLE_SUSPENDED = "agent-sandbox-rs.github.io/idle-suspended"

    def _wake_if_idle(self) -> None:
        """Wakes the sandbox when the router paused or suspended it for being idle (its
        markers on the Sandbox), and waits until it serves; a person's pause is left alone."""
        if self._idle_policy is None:
            try:
                pod = self.connection.kube.get("pods", self.namespace, self.get_pod_name())
                pod_ann = (pod.get("metadata") or {}).get("annotations") or {}
                self._idle_policy = any(
                    k.startswith("agent-sandbox-rs.github.io/idle-") for k in pod_ann)
            except KubeApiError:
                pass  # no Pod (suspended): the Sandbox's markers say this time
        if self._idle_policy is False:
            return
        ann = (self._get_sandbox().get("metadata") or {}).get("annotations") or {}
        kube = self.connection.kube
        if self.IDLE_SUSPENDED in ann:
            kube.merge_patch("sandboxes", self.namespace, self.sandbox_id, {
                "metadata": {"annotations": {self.IDLE_SUSPENDED: None}},
                "spec": {"operatingMode": "Running"}})
            self._ready_after_restart(180, "waking an idle sandbox")
        elif self.IDLE_PAUSED in ann:
            kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                             {"metadata": {"annotations": {self.IDLE_PAUSED: None}}})
            self._set_paused(False, True, 60)

    # -- fork and rollback (from snapshots) -------------------------------------------------

    RESTORE_FROM = "agent-sandbox-rs.github.io/restore-from"
    RESTORE_VOLUMES = "agent-sandbox-rs.github.io/restore-volumes"
    FORKED_FROM = "agent-sandbox-rs.github.io/forked-from"

    def fork(self, n: int = 1, snapshot: Optional[str] = None, name: Optional[str] = None,
             timeout: float = 600) -> list[Sandbox]:
        """``n`` new sandboxes started from a snapshot of this one (taken now, or the Ready
        snapshot ``snapshot``): each with this sandbox's spec, its own name
        (``<name or snapshot>-1`` …), Pod, address and volumes, and the snapshot's writable
        layers and volume data; processes start afresh. Returns their handles once all are Ready
        and sandboxd answers; ``terminate()`` on a fork deletes it. As ``agent-sandbox fork``."""
        if n < 1:
            raise ValueError(f"fork needs n >= 1, not {n}")
        deadline = time.monotonic() + timeout
        snap = self.wait_snapshot(snapshot, timeout) if snapshot else self.snapshot(
            timeout=timeout)
        source = self._get_sandbox()
        prefix = name or snap.name
        kube = self.connection.kube
        forks: list[Sandbox] = []
        system = ("agents.x-k8s.io/", ".agents.x-k8s.io/")
        for i in range(1, n + 1):
            fork_name = f"{prefix}-{i}"
            spec = dict(source.get("spec") or {})
            spec.pop("operatingMode", None)
            template = dict(spec.get("podTemplate") or {})
            meta = dict(template.get("metadata") or {})
            ann = dict(meta.get("annotations") or {})
            ann[self.RESTORE_FROM] = snap.name
            ann.pop(self.RESTORE_VOLUMES, None)
            meta["annotations"] = ann
            template["metadata"] = meta
            spec["podTemplate"] = template
            labels = {k: v for k, v in ((source.get("metadata") or {}).get("labels") or {}).items()
                      if not (k.startswith(system[0]) or system[1] in k)}
            try:
                kube.create("sandboxes", self.namespace, {
                    "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
                    "metadata": {"name": fork_name, "labels": labels, "annotations": {
                        self.FORKED_FROM: f"{self.sandbox_id}/{snap.name}"}},
                    "spec": spec})
            except KubeApiError as e:
                for f in forks:
                    f.terminate()
                if e.status_code == 409:
                    raise SandboxError(
                        f"fork {self.namespace}/{fork_name} of snapshot {snap.name} exists "
                        "already; pass name= to name the forks otherwise") from None
                raise
            sb = type(self)("", fork_name, self.namespace, self.connection, client=self._client)
            sb.claim_name = None
            sb._owns_sandbox = True
            forks.append(sb)
        for f in forks:
            f._ready_after_restart(max(1.0, deadline - time.monotonic()), "fork")
        return forks

    def restore(self, snapshot: str, timeout: float = 600) -> None:
        """Rolls this sandbox back to ``snapshot`` (Ready, in its namespace): a new Pod whose
        writable layers and volume data are the snapshot's (processes start afresh); returns once
        it is Ready and sandboxd answers. As ``agent-sandbox restore``."""
        deadline = time.monotonic() + timeout
        self.wait_snapshot(snapshot, timeout)
        kube = self.connection.kube

        def annotate(value: Optional[str]) -> dict[str, Any]:
            return {"metadata": {"annotations": {
                self.RESTORE_FROM: value, self.RESTORE_VOLUMES: value and "Replace"}}}

        patch = annotate(snapshot)
        patch["spec"] = {"operatingMode": "Suspended"}
        kube.merge_patch("sandboxes", self.namespace, self.sandbox_id, patch)
        self._dp.pod_ip = None
        self._wait_condition("Suspended", max(1.0, deadline - time.monotonic()), "rollback")
        kube.merge_patch("sandboxes", self.namespace, self.sandbox_id,
                         {"spec": {"operatingMode": "Running"}})
        self._ready_after_restart(max(1.0, deadline - time.monotonic()), "rollback")
        # Once: a later resume starts as upstream's does, not from the snapshot again.
        kube.merge_patch("sandboxes", self.namespace, self.sandbox_id, annotate(None))

    def _set_paused(self, paused: bool, wait: bool, timeout: float) -> None:
        value = "true" if paused else None
        self.connection.kube.merge_patch(
            "sandboxes", self.namespace, self.sandbox_id,
            {"metadata": {"annotations": {self.PAUSED_ANNOTATION: value}}})
        if not wait:
            return
        what = "pause" if paused else "unpause"
        deadline = time.monotonic() + timeout
        kube = self.connection.kube
        last = ""
        sb = self._get_sandbox()
        rv = (sb.get("metadata") or {}).get("resourceVersion")

        def done(obj: dict[str, Any]) -> bool:
            nonlocal last
            cond = next((c for c in (obj.get("status") or {}).get("conditions") or []
                         if c.get("type") == "Paused"), None)
            if cond is None:
                return not paused
            last = f"{cond.get('reason')}: {cond.get('message')}"
            if paused and cond.get("reason") == "NoPodToPause":
                raise SandboxNotReadyError(
                    f"cannot pause sandbox {self.namespace}/{self.sandbox_id}: "
                    f"{cond.get('message')}")
            if paused:
                return bool(cond.get("status") == "True" and cond.get("reason") == "SandboxPaused")
            return bool(cond.get("status") == "False")

        if done(sb):
            return
        for typ, obj in kube.watch("sandboxes", self.namespace, deadline=deadline,
                                   resource_version=rv,
                                   field_selector=f"metadata.name={self.sandbox_id}"):
            if typ == "RELIST":
                obj = self._get_sandbox()
            elif typ == "DELETED":
                raise SandboxNotFoundError(
                    f"Sandbox {self.namespace}/{self.sandbox_id} was deleted during {what}")
            if done(obj):
                return
        raise SandboxTimeoutError(
            f"{what} of sandbox {self.namespace}/{self.sandbox_id} did not complete within "
            f"{timeout:g} s (last Paused condition: {last or 'none'}); check "
            f"`kubectl describe sandbox {self.sandbox_id} -n {self.namespace}`")

    def _wait_condition(self, ctype: str, timeout: float, what: str,
                        need_ip: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        kube = self.connection.kube
        last = ""
        sb = self._get_sandbox()
        rv = (sb.get("metadata") or {}).get("resourceVersion")

        def done(obj: dict[str, Any]) -> bool:
            nonlocal last
            st = obj.get("status") or {}
            for c in st.get("conditions") or []:
                if c.get("type") == ctype:
                    last = f"{c.get('reason')}: {c.get('message')}"
                    if c.get("status") == "True" and (not need_ip or st.get("podIPs")):
                        return True
            return False

        if done(sb):
            return sb
        for typ, obj in kube.watch("sandboxes", self.namespace, deadline=deadline,
                                   resource_version=rv,
                                   field_selector=f"metadata.name={self.sandbox_id}"):
            if typ == "RELIST":
                obj = self._get_sandbox()
            elif typ == "DELETED":
                raise SandboxNotFoundError(
                    f"Sandbox {self.namespace}/{self.sandbox_id} was deleted during {what}")
            if done(obj):
                return obj
        raise SandboxTimeoutError(
            f"{what} of sandbox {self.namespace}/{self.sandbox_id} did not complete within "
            f"{timeout:g} s (last {ctype} condition: {last or 'none'}); check "
            f"`kubectl describe sandbox {self.sandbox_id} -n {self.namespace}`")

    # -- lifecycle -------------------------------------------------------------------------

    def close_connection(self) -> None:
        """Stops using this handle (and its tunnel or gRPC channel, if any); the sandbox keeps
        running."""
        self._active = False
        self._pod_name = None  # a resume may bring a Pod of another name
        self._dp.close()

    def terminate(self) -> None:
        """Deletes the claim (and with it the sandbox; a fork's Sandbox itself). Idempotent."""
        self.close_connection()
        if self._owns_sandbox:
            self._owns_sandbox = False
            self.connection.kube.delete("sandboxes", self.namespace, self.sandbox_id)
            return
        if self.claim_name is None:
            return
        name = self.claim_name
        self.connection.kube.delete("sandboxclaims", self.namespace, name)
        self.claim_name = None
        if self._client is not None:
            self._client._forget(self.namespace, name)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
