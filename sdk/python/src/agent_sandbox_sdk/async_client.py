"""``AsyncSandboxClient`` and ``AsyncSandbox``: the same surface as the synchronous client, as
coroutines. The blocking work runs in worker threads (``asyncio.to_thread``); cancelling
``commands.run`` drops its connection, which kills the command in the sandbox. Output callbacks
are called from a worker thread."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

from .client import SandboxClient
from .exceptions import CommandTimeoutError
from .models import (
    CodeContext,
    CodeResult,
    ExecutionResult,
    FileEntry,
    FileInfo,
    ProcessInfo,
    SandboxConnectionConfig,
    SandboxTracerConfig,
    SnapshotInfo,
    TransferSummary,
)
from ._commands import _as_timed_out
from ._runtimes import command_text
from ._tracing import executable
from .sandbox import Command, OutputCallback, Process, PtySession, Sandbox, Window


class AsyncProcess:
    """A background command (``await sandbox.commands.start(...)``)."""

    def __init__(self, proc: Process) -> None:
        self.sync = proc

    @property
    def pid(self) -> Optional[int]:
        return self.sync.pid

    @property
    def process_id(self) -> Optional[int]:
        return self.sync.process_id

    @property
    def stdout(self) -> str:
        return self.sync.stdout

    @property
    def stderr(self) -> str:
        return self.sync.stderr

    def is_running(self) -> bool:
        return self.sync.is_running()

    async def wait(self, timeout: Optional[float] = None) -> ExecutionResult:
        return await asyncio.to_thread(self.sync.wait, timeout)

    async def kill(self, signal: Union[str, int] = "SIGKILL") -> None:
        await asyncio.to_thread(self.sync.kill, signal)


class AsyncCommands:
    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    async def run(self, command: Command, timeout: Optional[float] = 60,
                  command_timeout: Optional[float] = None, *,
                  env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                  stdin: Optional[Union[str, bytes]] = None,
                  on_stdout: Optional[OutputCallback] = None,
                  on_stderr: Optional[OutputCallback] = None,
                  max_output_bytes: Optional[int] = None) -> ExecutionResult:
        """As :meth:`Commands.run`. With sandboxd's ``/v2`` exec, cancelling the coroutine
        kills the command."""
        if self._sb._dp.runtime != "rest":
            # Upstream's runtimes: one request (or gRPC call) in a worker thread.
            return await asyncio.to_thread(
                self._sb.commands.run, command, timeout, command_timeout, env=env, cwd=cwd,
                stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr,
                max_output_bytes=max_output_bytes)
        limit = command_timeout if command_timeout is not None else timeout
        with self._sb._tracing.span("run") as span:
            if span.is_recording():
                span.set_attribute("sandbox.command.executable",
                                   executable(command_text(command)))
            proc = await asyncio.to_thread(
                self._sb.commands.start, command, env=env, cwd=cwd, stdin=stdin,
                on_stdout=on_stdout, on_stderr=on_stderr, timeout=limit,
                max_output_bytes=max_output_bytes)
            try:
                result = await asyncio.to_thread(proc.wait)
            except CommandTimeoutError as e:
                if command_timeout is not None and e.result is not None:
                    result = _as_timed_out(e.result, command_timeout)
                else:
                    raise CommandTimeoutError(
                        f"{command!r} did not finish within {limit} s and was killed; pass a "
                        "larger timeout=", e.result) from None
            except asyncio.CancelledError:
                await asyncio.to_thread(proc.close)
                raise
            if span.is_recording():
                span.set_attribute("sandbox.exit_code", result.exit_code)
            return result

    async def start(self, command: Command, **kwargs: Any) -> AsyncProcess:
        return AsyncProcess(await asyncio.to_thread(self._sb.commands.start, command, **kwargs))

    async def list(self) -> list[ProcessInfo]:
        return await asyncio.to_thread(self._sb.commands.list)

    async def kill(self, process_id: int, signal: Union[str, int] = "SIGKILL") -> None:
        await asyncio.to_thread(self._sb.commands.kill, process_id, signal)


class AsyncFiles:
    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    async def write(self, path: str, content: Any, timeout: float = 60,
                    **kwargs: Any) -> None:
        await asyncio.to_thread(self._sb.files.write, path, content, timeout, **kwargs)

    async def read(self, path: str, timeout: float = 60, **kwargs: Any) -> bytes:
        return await asyncio.to_thread(self._sb.files.read, path, timeout, **kwargs)

    async def list(self, path: str = ".", timeout: float = 60) -> list[FileEntry]:
        return await asyncio.to_thread(self._sb.files.list, path, timeout)

    async def read_to(self, path: str, destination: Any, timeout: float = 60,
                      allow_unsafe_paths: bool = False, max_bytes: Optional[int] = None) -> int:
        """Streams a file into ``destination``: anything with ``write(bytes)``, called from a
        worker thread (a coroutine ``write`` is awaited on this loop)."""
        loop = asyncio.get_running_loop()

        class _Writer:
            def write(self, data: bytes) -> Any:
                n = destination.write(data)
                if asyncio.iscoroutine(n):
                    return asyncio.run_coroutine_threadsafe(n, loop).result()
                return n

        return await asyncio.to_thread(self._sb.files.read_to, path, _Writer(), timeout,
                                       allow_unsafe_paths, max_bytes)

    async def exists(self, path: str, timeout: float = 60) -> bool:
        return await asyncio.to_thread(self._sb.files.exists, path, timeout)

    async def delete(self, path: str, recursive: bool = False, timeout: float = 60) -> None:
        await asyncio.to_thread(self._sb.files.delete, path, recursive, timeout)

    async def stat(self, path: str, timeout: float = 60) -> FileInfo:
        return await asyncio.to_thread(self._sb.files.stat, path, timeout)

    async def mkdir(self, path: str, parents: bool = True, mode: Optional[str] = None) -> None:
        await asyncio.to_thread(self._sb.files.mkdir, path, parents, mode)

    async def move(self, source: str, destination: str, overwrite: bool = False) -> None:
        await asyncio.to_thread(self._sb.files.move, source, destination, overwrite)

    async def upload_dir(self, local_dir: Union[str, os.PathLike[str]], remote_dir: str = ".",
                         timeout: float = 300) -> TransferSummary:
        return await asyncio.to_thread(self._sb.files.upload_dir, local_dir, remote_dir, timeout)

    async def download_dir(self, remote_dir: str, local_dir: Union[str, os.PathLike[str]],
                           timeout: float = 300) -> None:
        await asyncio.to_thread(self._sb.files.download_dir, remote_dir, local_dir, timeout)


class AsyncCode:
    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    async def run(self, code: str, language: str = "python", context: Optional[str] = None,
                  timeout: Optional[float] = 60, **kwargs: Any) -> CodeResult:
        return await asyncio.to_thread(self._sb.code.run, code, language, context, timeout,
                                       **kwargs)

    async def create_context(self, language: str = "python", id: Optional[str] = None,
                             **kwargs: Any) -> CodeContext:
        return await asyncio.to_thread(self._sb.code.create_context, language, id, **kwargs)

    async def list_contexts(self) -> list[CodeContext]:
        return await asyncio.to_thread(self._sb.code.list_contexts)

    async def delete_context(self, context: str) -> None:
        await asyncio.to_thread(self._sb.code.delete_context, context)

    async def interrupt(self, context: str) -> None:
        await asyncio.to_thread(self._sb.code.interrupt, context)

    async def restart(self, context: str) -> None:
        await asyncio.to_thread(self._sb.code.restart, context)


class AsyncPtySession:
    def __init__(self, s: PtySession) -> None:
        self.sync = s

    @property
    def exit_code(self) -> Optional[int]:
        return self.sync.exit_code

    async def write(self, data: Union[str, bytes]) -> None:
        await asyncio.to_thread(self.sync.write, data)

    async def resize(self, cols: int, rows: int) -> None:
        await asyncio.to_thread(self.sync.resize, cols, rows)

    async def send_signal(self, signal: Union[str, int] = "SIGINT") -> None:
        await asyncio.to_thread(self.sync.send_signal, signal)

    async def read(self, timeout: float = 1.0) -> bytes:
        return await asyncio.to_thread(self.sync.read, timeout)

    async def read_until(self, expected: Union[str, bytes], timeout: float = 30.0) -> bytes:
        return await asyncio.to_thread(self.sync.read_until, expected, timeout)

    async def wait(self, timeout: float = 30.0) -> Optional[int]:
        return await asyncio.to_thread(self.sync.wait, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncPtySession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncPty:
    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    async def create(self, command: Optional[str] = None, *, cols: int = 80, rows: int = 24,
                     cwd: Optional[str] = None,
                     on_data: Optional[Callable[[bytes], Any]] = None) -> AsyncPtySession:
        s = await asyncio.to_thread(self._sb.pty.create, command, cols=cols, rows=rows, cwd=cwd,
                                    on_data=on_data)
        return AsyncPtySession(s)

    open = create


class AsyncComputer:
    """The coroutine twin of ``sandbox.computer`` (the desktop API)."""

    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    async def screenshot(self, region: Optional[tuple[int, int, int, int]] = None,
                         scale: Optional[float] = None) -> bytes:
        return await asyncio.to_thread(self._sb.computer.screenshot, region, scale)

    async def get_screen_size(self) -> tuple[int, int]:
        return await asyncio.to_thread(self._sb.computer.get_screen_size)

    async def get_cursor_position(self) -> tuple[int, int]:
        return await asyncio.to_thread(self._sb.computer.get_cursor_position)

    async def list_windows(self) -> list[Window]:
        return await asyncio.to_thread(self._sb.computer.list_windows)

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self._sb.computer.wait_until_ready, timeout)

    async def move_mouse(self, x: int, y: int) -> None:
        await asyncio.to_thread(self._sb.computer.move_mouse, x, y)

    async def left_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.left_click, x, y)

    async def right_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.right_click, x, y)

    async def middle_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.middle_click, x, y)

    async def double_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.double_click, x, y)

    async def drag(self, start: tuple[int, int], end: tuple[int, int],
                   button: str = "left") -> None:
        await asyncio.to_thread(self._sb.computer.drag, start, end, button)

    async def scroll(self, direction: str = "down", amount: int = 1, x: Optional[int] = None,
                     y: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.scroll, direction, amount, x, y)

    async def press(self, keys: Union[str, Sequence[str]]) -> None:
        await asyncio.to_thread(self._sb.computer.press, keys)

    async def write(self, text: str, delay_ms: Optional[int] = None) -> None:
        await asyncio.to_thread(self._sb.computer.write, text, delay_ms)


class AsyncBrowser:
    """The coroutine twin of ``sandbox.browser``; the URL and headers need no I/O."""

    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb

    def cdp_url(self) -> str:
        return self._sb.browser.cdp_url()

    def cdp_headers(self) -> dict[str, str]:
        return self._sb.browser.cdp_headers()

    async def version(self, timeout: float = 30.0) -> dict[str, Any]:
        return await asyncio.to_thread(self._sb.browser.version, timeout)

    async def websocket_url(self) -> str:
        return await asyncio.to_thread(self._sb.browser.websocket_url)


class AsyncSandbox:
    """The coroutine twin of :class:`~agent_sandbox_sdk.Sandbox`; ``.sync`` is the underlying
    synchronous handle."""

    def __init__(self, sb: Sandbox) -> None:
        self.sync = sb
        self.commands = AsyncCommands(sb)
        self.files = AsyncFiles(sb)
        self.code = AsyncCode(sb)
        self.pty = AsyncPty(sb)
        self.computer = AsyncComputer(sb)
        self.browser = AsyncBrowser(sb)

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def claim_name(self) -> Optional[str]:
        return self.sync.claim_name

    @property
    def sandbox_id(self) -> str:
        return self.sync.sandbox_id

    @property
    def namespace(self) -> str:
        return self.sync.namespace

    @property
    def is_active(self) -> bool:
        return self.sync.is_active

    def get_pod_ip(self) -> Optional[str]:
        return self.sync.get_pod_ip()

    async def get_service_fqdn(self) -> Optional[str]:
        return await asyncio.to_thread(self.sync.get_service_fqdn)

    async def get_sandbox_name_hash(self) -> Optional[str]:
        return await asyncio.to_thread(self.sync.get_sandbox_name_hash)

    async def get_pod_name(self) -> str:
        return await asyncio.to_thread(self.sync.get_pod_name)

    async def run_code(self, code: str, language: str = "python", context: Optional[str] = None,
                       timeout: Optional[float] = 60, **kwargs: Any) -> CodeResult:
        return await self.code.run(code, language, context, timeout, **kwargs)

    async def status(self) -> tuple[str, str]:
        return await asyncio.to_thread(self.sync.status)

    async def is_suspended(self) -> bool:
        return await asyncio.to_thread(self.sync.is_suspended)

    async def suspend(self, wait: bool = True, timeout: float = 120) -> None:
        await asyncio.to_thread(self.sync.suspend, wait, timeout)

    async def resume(self, wait: bool = True, timeout: float = 180) -> None:
        await asyncio.to_thread(self.sync.resume, wait, timeout)

    async def is_paused(self) -> bool:
        return await asyncio.to_thread(self.sync.is_paused)

    async def pause(self, wait: bool = True, timeout: float = 60) -> None:
        await asyncio.to_thread(self.sync.pause, wait, timeout)

    async def unpause(self, wait: bool = True, timeout: float = 60) -> None:
        await asyncio.to_thread(self.sync.unpause, wait, timeout)

    async def snapshot(self, name: Optional[str] = None, wait: bool = True,
                       timeout: float = 600) -> SnapshotInfo:
        return await asyncio.to_thread(self.sync.snapshot, name, wait, timeout)

    async def get_snapshot(self, name: str) -> SnapshotInfo:
        return await asyncio.to_thread(self.sync.get_snapshot, name)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        return await asyncio.to_thread(self.sync.list_snapshots)

    async def delete_snapshot(self, name: str) -> bool:
        return await asyncio.to_thread(self.sync.delete_snapshot, name)

    async def fork(self, n: int = 1, snapshot: Optional[str] = None, name: Optional[str] = None,
                   timeout: float = 600) -> list[AsyncSandbox]:
        forks = await asyncio.to_thread(self.sync.fork, n, snapshot, name, timeout)
        return [AsyncSandbox(f) for f in forks]

    async def restore(self, snapshot: str, timeout: float = 600) -> None:
        await asyncio.to_thread(self.sync.restore, snapshot, timeout)

    async def close_connection(self) -> None:
        await asyncio.to_thread(self.sync.close_connection)

    async def terminate(self) -> None:
        await asyncio.to_thread(self.sync.terminate)

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.terminate()


class AsyncSandboxClient:
    """The coroutine twin of :class:`~agent_sandbox_sdk.SandboxClient`. ``async with`` deletes
    the sandboxes it created under generated names on exit (as upstream, ``cleanup`` defaults to
    True: also at program exit)."""

    def __init__(self, connection_config: Optional[SandboxConnectionConfig] = None,
                 tracer_config: Optional[SandboxTracerConfig] = None,
                 cleanup: bool = True, api_client: Any = None) -> None:
        self.sync: SandboxClient[Sandbox] = SandboxClient(connection_config, tracer_config,
                                                          cleanup, api_client)
        self._handles: dict[tuple[str, str], AsyncSandbox] = {}

    def _wrap(self, sb: Sandbox) -> AsyncSandbox:
        key = (sb.namespace, sb.claim_name or "")
        h = self._handles.get(key)
        if h is None or h.sync is not sb:
            h = AsyncSandbox(sb)
            self._handles[key] = h
        return h

    async def create_sandbox(self, warmpool: Optional[str] = None, namespace: str = "default",
                             sandbox_ready_timeout: float = 180,
                             labels: Optional[Mapping[str, str]] = None,
                             **kwargs: Any) -> AsyncSandbox:
        task = asyncio.ensure_future(asyncio.to_thread(
            self.sync.create_sandbox, warmpool, namespace, sandbox_ready_timeout, labels,
            **kwargs))
        try:
            sb = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The claim is being made in a thread: let it finish, then delete it.
            def cleanup(t: asyncio.Future[Sandbox]) -> None:
                if not t.cancelled() and t.exception() is None:
                    asyncio.ensure_future(asyncio.to_thread(t.result().terminate))
            task.add_done_callback(cleanup)
            raise
        return self._wrap(sb)

    async def get_sandbox(self, claim_name: str, namespace: str = "default",
                          resolve_timeout: float = 30,
                          warmpool_name: Optional[str] = None) -> AsyncSandbox:
        if warmpool_name is not None:
            actual = await asyncio.to_thread(self.sync.get_sandbox_claim_warmpool_name,
                                             claim_name, namespace)
            if actual != warmpool_name:
                raise ValueError(f"claim {namespace}/{claim_name} is of warm pool {actual!r}, "
                                 f"not {warmpool_name!r}")
        sb = await asyncio.to_thread(self.sync.get_sandbox, claim_name, namespace,
                                     resolve_timeout)
        return self._wrap(sb)

    async def list_active_sandboxes(self) -> list[tuple[str, str]]:
        return self.sync.list_active_sandboxes()

    async def list_all_sandboxes(self, namespace: str = "default",
                                 label_selector: Optional[str] = None) -> list[str]:
        return await asyncio.to_thread(self.sync.list_all_sandboxes, namespace, label_selector)

    async def delete_sandbox(self, claim_name: str, namespace: str = "default") -> None:
        await asyncio.to_thread(self.sync.delete_sandbox, claim_name, namespace)
        self._handles.pop((namespace, claim_name), None)

    async def delete_all(self) -> None:
        keys = self.sync.list_active_sandboxes()
        await asyncio.gather(*(self.delete_sandbox(n, ns) for ns, n in keys))

    async def get_sandbox_claim_warmpool_name(self, claim_name: str,
                                              namespace: str = "default") -> str:
        return await asyncio.to_thread(self.sync.get_sandbox_claim_warmpool_name, claim_name,
                                       namespace)

    async def create_template(self, name: str, image: Optional[str] = None,
                              namespace: str = "default", **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.create_template, name, image, namespace,
                                       **kwargs)

    async def delete_template(self, name: str, namespace: str = "default") -> bool:
        return await asyncio.to_thread(self.sync.delete_template, name, namespace)

    async def create_warm_pool(self, name: str, template: str, replicas: int = 1,
                               namespace: str = "default", **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.create_warm_pool, name, template, replicas,
                                       namespace, **kwargs)

    async def wait_for_warm_pool(self, name: str, namespace: str = "default",
                                 **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.wait_for_warm_pool, name, namespace, **kwargs)

    async def scale_warm_pool(self, name: str, replicas: int, namespace: str = "default") -> None:
        await asyncio.to_thread(self.sync.scale_warm_pool, name, replicas, namespace)

    async def delete_warm_pool(self, name: str, namespace: str = "default") -> bool:
        return await asyncio.to_thread(self.sync.delete_warm_pool, name, namespace)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncSandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # As the synchronous client: claims named by the caller are left to the caller.
        try:
            await asyncio.to_thread(self.sync._delete_automatic)
        finally:
            await self.close()


__all__ = ["AsyncSandbox", "AsyncSandboxClient", "AsyncProcess", "AsyncPtySession"]
