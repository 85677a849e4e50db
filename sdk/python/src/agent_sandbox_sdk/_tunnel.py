"""``kubectl port-forward`` tunnels: to the router Service (upstream's local tunnel) and to one
sandbox's Pod (upstream's sandboxd pod tunnel). Started on first use, started again when the
``kubectl`` process has died, and stopped when closed or at interpreter exit."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from typing import IO, Any, Optional

from . import metrics
from .exceptions import SandboxPortForwardError
from .metrics import timed

log = logging.getLogger("agent_sandbox_sdk")

KUBECTL_MISSING = ("kubectl is not installed or not on PATH: the local tunnel and the sandboxd pod "
                   "tunnel run `kubectl port-forward`. Install kubectl, or connect without it "
                   "(SandboxDirectConnectionConfig with the router's URL, or "
                   "SandboxdInClusterConnectionConfig)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], log_file: IO[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(2)
    log_file.close()


class PortForward:
    """One ``kubectl port-forward <target> <local>:<remote>...`` process. ``ports()`` returns
    the local port of each remote port, starting (or restarting) the process when needed."""

    def __init__(self, target: str, namespace: str, remote_ports: list[int], *,
                 ready_timeout: float, kubeconfig: Optional[str] = None,
                 description: str = "", preflight: Optional[list[str]] = None,
                 metric_mode: str = "") -> None:
        self.target = target
        self.namespace = namespace
        self.remote_ports = remote_ports
        self.ready_timeout = ready_timeout
        self.kubeconfig = kubeconfig
        self.description = description or f"{target} in namespace {namespace}"
        self._preflight = preflight
        self.metric_mode = metric_mode
        self._preflight_done = False
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None
        self._finalizer: Optional[weakref.finalize[Any, Any]] = None
        self._local: list[int] = []
        self._lock = threading.Lock()
        self.started = 0  # how many times kubectl was started

    def _kube_args(self) -> list[str]:
        return ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []

    def _run_preflight(self) -> None:
        """``kubectl get`` of the target first: a missing Service is named as such (not only as
        a tunnel that crashed). Other failures (RBAC, a slow API server) only log."""
        if not self._preflight or self._preflight_done:
            return
        try:
            r = subprocess.run(["kubectl", "get", *self._preflight, "-n", self.namespace,
                                *self._kube_args()], capture_output=True, timeout=10,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SandboxPortForwardError(KUBECTL_MISSING) from None
        except subprocess.TimeoutExpired:
            log.warning("kubectl get %s did not answer within 10 s; trying port-forward anyway",
                        " ".join(self._preflight))
            return
        err = r.stderr.decode(errors="replace").strip()
        if r.returncode != 0 and "not found" in err.lower():
            raise SandboxPortForwardError(
                f"{self.description} does not exist: {err}. If the router is in another "
                "namespace, pass SandboxLocalTunnelConnectionConfig(router_namespace=...)")
        if r.returncode != 0:
            log.warning("kubectl get %s failed (%s); trying port-forward anyway",
                        " ".join(self._preflight), err)
        self._preflight_done = True

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def current(self) -> list[int]:
        """The local ports while the tunnel runs, else an empty list (never starts it)."""
        return list(self._local) if self.alive() else []

    def ports(self) -> list[int]:
        with self._lock:
            if self.alive():
                return list(self._local)
            self._close_locked()
            if not self.metric_mode:
                self._run_preflight()
                return self._start()
            with timed(metrics.sandbox_client_discovery_latency_ms, mode=self.metric_mode):
                self._run_preflight()
                return self._start()

    def _start(self) -> list[int]:
        local = [_free_port() for _ in self.remote_ports]
        argv = ["kubectl", "port-forward", self.target,
                *[f"{lp}:{rp}" for lp, rp in zip(local, self.remote_ports)],
                "-n", self.namespace, *self._kube_args()]
        # stderr goes to a file: kubectl may write a line per failed connection, and a pipe
        # nobody reads would fill up and stall the tunnel.
        errlog = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errlog, start_new_session=True)
        except FileNotFoundError:
            errlog.close()
            raise SandboxPortForwardError(KUBECTL_MISSING) from None
        self._proc, self._log, self._local = proc, errlog, local
        self._finalizer = weakref.finalize(self, _stop, proc, errlog)
        self.started += 1
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = self._stderr()
                self._close_locked()
                hint = ""
                if "not found" in err.lower():
                    hint = (" If the router is in another namespace, pass "
                            "SandboxLocalTunnelConnectionConfig(router_namespace=...).")
                raise SandboxPortForwardError(
                    f"kubectl port-forward to {self.description} exited ({proc.returncode}): "
                    f"{err or 'no output'}.{hint}")
            if all(_port_open(p) for p in local):
                log.info("port-forward to %s ready on %s", self.description, local)
                return list(local)
            time.sleep(0.05)
        err = self._stderr()
        self._close_locked()
        raise SandboxPortForwardError(
            f"kubectl port-forward to {self.description} was not ready within "
            f"{self.ready_timeout:g} s{': ' + err if err else ''}; check that it exists and "
            "runs, or raise port_forward_ready_timeout")

    def _stderr(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            return self._log.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def check(self) -> None:
        """Raises :class:`SandboxPortForwardError` when a started tunnel has died."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            err = self._stderr()
            with self._lock:
                self._close_locked()
            raise SandboxPortForwardError(
                f"kubectl port-forward to {self.description} died ({proc.returncode}): "
                f"{err or 'no output'}; the next request starts it again")

    def _close_locked(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._proc = None
        self._log = None
        self._local = []

    def close(self) -> None:
        with self._lock:
            self._close_locked()


def kubeconfig_arg(value: Any) -> Optional[str]:
    return os.fspath(value) if value else None
