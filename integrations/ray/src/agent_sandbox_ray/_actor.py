"""Ray actors and tasks whose code runs in sandboxes claimed from a warm pool."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import ray
from agent_sandbox_sdk import Sandbox, SandboxClient
from agent_sandbox_sdk.models import CodeResult, ExecutionResult

T = TypeVar("T")
R = TypeVar("R")

#: Claims made here expire after this long unless released first: an actor killed without
#: ``shutdown()`` (``ray.kill``, a dead node) cannot delete its sandbox, so the claim's own
#: lifetime does it.
DEFAULT_CLAIM_LIFETIME = 3600


class SandboxActor:
    """One sandbox for the life of one actor: claimed from ``warmpool`` when the actor starts,
    released by :meth:`shutdown`. Each method call is a step (a command, a cell, a file), so an
    RL rollout or an agent episode keeps its state (files, processes, the Python context of
    :meth:`run_code`) from step to step.

    A plain class: make it an actor with :func:`sandbox_actor` (or ``ray.remote(...)``).
    ``connection_config`` is any of the SDK's connection configurations (they are picklable);
    None means ``SandboxClient()``'s own discovery (a local ``agent-sandbox up``, the
    environment, the kubeconfig) in the actor's process. ``setup`` is a shell command run once
    after the claim (e.g. to unpack a task); a non-zero exit fails the actor's start.
    """

    def __init__(self, warmpool: str, namespace: str = "default", *,
                 connection_config: Any = None, labels: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, setup: str | None = None,
                 claim_lifetime: int | None = DEFAULT_CLAIM_LIFETIME,
                 sandbox_ready_timeout: float = 180, command_timeout: float = 600) -> None:
        self._client: SandboxClient[Sandbox] = SandboxClient(connection_config)
        self.command_timeout = command_timeout
        self._sandbox: Sandbox | None = self._client.create_sandbox(
            warmpool=warmpool, namespace=namespace, sandbox_ready_timeout=sandbox_ready_timeout,
            labels={"app.kubernetes.io/managed-by": "ray", **(labels or {})},
            shutdown_after_seconds=claim_lifetime, env=dict(env) if env else None)
        if setup:
            r = self.sandbox.commands.run(setup, timeout=command_timeout)
            if r.exit_code != 0:
                where = self._where()
                self.shutdown()
                raise RuntimeError(
                    f"setup command {setup!r} exited {r.exit_code} in {where}; the sandbox was "
                    f"released. Fix the command or the image. stderr:\n{r.stderr[-2000:]}")

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            raise RuntimeError("this SandboxActor was shut down (its sandbox released); "
                               "create a new actor")
        return self._sandbox

    def _where(self) -> str:
        sb = self._sandbox
        return f"sandbox {sb.namespace}/{sb.sandbox_id} (claim {sb.claim_name})" if sb \
            else "(released)"

    def info(self) -> dict[str, str]:
        """The claim, the sandbox and where the actor itself runs."""
        sb = self.sandbox
        return {"claim": sb.claim_name or "", "sandbox": sb.sandbox_id, "namespace": sb.namespace,
                "pod_ip": sb.get_pod_ip() or "", "actor_host": socket.gethostname(),
                "actor_pid": str(os.getpid())}

    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            stdin: str | None = None) -> ExecutionResult:
        """A command in the sandbox (a string runs under ``/bin/sh -c``)."""
        return self.sandbox.commands.run(command if isinstance(command, str) else list(command),
                                         timeout=timeout or self.command_timeout, env=env,
                                         cwd=cwd, stdin=stdin)

    def run_code(self, code: str, *, language: str = "python",
                 timeout: float | None = None) -> CodeResult:
        """A cell in the sandbox's persistent interpreter (state kept between calls)."""
        return self.sandbox.run_code(code, language=language,
                                     timeout=timeout or self.command_timeout)

    def write_file(self, path: str, content: str | bytes) -> None:
        self.sandbox.files.write(path, content)

    def read_file(self, path: str) -> bytes:
        return self.sandbox.files.read(path)

    def shutdown(self) -> None:
        """Releases the sandbox (deletes the claim) and closes the client. Idempotent."""
        if self._sandbox is not None:
            try:
                self._sandbox.terminate()
            finally:
                self._sandbox = None
                self._client.close()


def sandbox_actor(**ray_options: Any) -> Any:
    """``ray.remote(**ray_options)(SandboxActor)``; ``num_cpus`` defaults to 0, since the
    work runs in the sandbox and the actor only waits on it.

        Actor = sandbox_actor()
        a = Actor.remote("python-pool")
        ray.get(a.run.remote("echo hi")).stdout
        ray.get(a.shutdown.remote())
    """
    ray_options.setdefault("num_cpus", 0)
    return ray.remote(**ray_options)(SandboxActor)


def _in_a_sandbox(fn: Callable[[Sandbox, T], R], item: T, warmpool: str, namespace: str,
                  connection_config: Any, claim_lifetime: int | None,
                  sandbox_ready_timeout: float) -> R:
    client: SandboxClient[Sandbox]
    with SandboxClient(connection_config) as client:  # deletes the sandbox on the way out
        sb: Sandbox = client.create_sandbox(
            warmpool=warmpool, namespace=namespace, sandbox_ready_timeout=sandbox_ready_timeout,
            labels={"app.kubernetes.io/managed-by": "ray"}, shutdown_after_seconds=claim_lifetime)
        return fn(sb, item)


def map_in_sandboxes(fn: Callable[[Sandbox, T], R], items: Sequence[T], warmpool: str,
                     namespace: str = "default", *, connection_config: Any = None,
                     num_cpus: float = 0.25, max_retries: int = 0,
                     claim_lifetime: int | None = DEFAULT_CLAIM_LIFETIME,
                     sandbox_ready_timeout: float = 180,
                     timeout: float | None = None) -> list[R]:
    """Runs ``fn(sandbox, item)`` for every item as a Ray task, each in a sandbox of its own
    claimed from ``warmpool`` and deleted when ``fn`` returns or raises; returns the results in
    the order of ``items``. A task asks Ray for ``num_cpus`` (the work runs in the sandbox),
    so Ray's CPUs do not cap the fan-out; the warm pool's size decides how many start warm.
    ``fn`` must be picklable by Ray (functions and lambdas are)."""
    task: Any = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_in_a_sandbox)
    refs = [task.remote(fn, item, warmpool, namespace, connection_config, claim_lifetime,
                        sandbox_ready_timeout) for item in items]
    results: list[R] = ray.get(refs, timeout=timeout)
    return results
