"""``sandbox.pty``: terminals over sandboxd's ``/v2/pty`` WebSocket."""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Union

from ._commands import _signal_name
from ._ws import OP_TEXT, WebSocket, WebSocketClosed
from .exceptions import SandboxTimeoutError

if TYPE_CHECKING:
    from .sandbox import Sandbox


# ---------------------------------------------------------------------------------------------
# PTY
# ---------------------------------------------------------------------------------------------


class PtySession:
    """An interactive terminal. Output is collected by a thread (and passed to ``on_data``);
    read it with :meth:`read` or :meth:`read_until`."""

    def __init__(self, ws: WebSocket, on_data: Optional[Callable[[bytes], Any]]) -> None:
        self._ws = ws
        self._on_data = on_data
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.exit_code: Optional[int] = None
        self.signal: Optional[str] = None
        self._closed = False
        self._thread = threading.Thread(target=self._pump, daemon=True, name="agent-sandbox-pty")
        self._thread.start()

    def _pump(self) -> None:
        try:
            while True:
                msg = self._ws.recv(None)
                if msg is None:
                    continue
                op, payload = msg
                if op == OP_TEXT:
                    try:
                        ev = json.loads(payload)
                    except ValueError:
                        continue
                    if ev.get("type") == "exit":
                        with self._cond:
                            self.exit_code = ev.get("exit_code")
                            self.signal = ev.get("signal")
                    continue
                if self._on_data:
                    self._on_data(payload)
                with self._cond:
                    self._buf += payload
                    self._cond.notify_all()
        except (WebSocketClosed, OSError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: Union[str, bytes]) -> None:
        """Types ``data`` into the terminal."""
        self._ws.send_binary(data.encode() if isinstance(data, str) else bytes(data))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send_text(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def send_signal(self, signal: Union[str, int] = "SIGINT") -> None:
        self._ws.send_text(json.dumps({"type": "signal", "signal": _signal_name(signal)}))

    def read(self, timeout: float = 1.0) -> bytes:
        """What the terminal printed since the last read; waits up to ``timeout`` for
        something when nothing is buffered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._buf and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out = bytes(self._buf)
            self._buf.clear()
            return out

    def read_until(self, expected: Union[str, bytes], timeout: float = 30.0) -> bytes:
        """Everything up to and including ``expected``; raises :class:`SandboxTimeoutError`
        (with what was read in the message) if it does not appear within ``timeout``."""
        pat = expected.encode() if isinstance(expected, str) else expected
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                i = self._buf.find(pat)
                if i >= 0:
                    out = bytes(self._buf[:i + len(pat)])
                    del self._buf[:i + len(pat)]
                    return out
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    seen = bytes(self._buf[-300:])
                    why = "the terminal closed" if self._closed else f"{timeout:g} s passed"
                    raise SandboxTimeoutError(
                        f"{pat!r} did not appear in the terminal output ({why}); last output: "
                        f"{seen!r}")
                self._cond.wait(left)

    def wait(self, timeout: float = 30.0) -> Optional[int]:
        """Waits for the terminal's program to end; returns its exit code."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxTimeoutError(f"the terminal is still open after {timeout:g} s")
                self._cond.wait(left)
        return self.exit_code

    def close(self) -> None:
        """Closes the terminal (its program is killed)."""
        self._ws.close()
        self._thread.join(5)

    def __enter__(self) -> PtySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pty:
    """``sandbox.pty``: terminals over WebSocket."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def create(self, command: Optional[str] = None, *, cols: int = 80, rows: int = 24,
               cwd: Optional[str] = None, on_data: Optional[Callable[[bytes], Any]] = None,
               timeout: float = 30.0) -> PtySession:
        """Opens a terminal running ``command`` (a shell string; default an interactive shell)."""
        params: dict[str, Any] = {"cols": cols, "rows": rows}
        if cwd and not self._sb._paths.inside(cwd):
            inner = command or "exec sh -i"
            command = f"cd -- {shlex.quote(cwd)} && {inner}"
        elif cwd:
            params["cwd"] = cwd
        if command:
            params["command"] = command
        ws = self._sb._dp.websocket("/v2/pty", params, what="opening a terminal", timeout=timeout)
        return PtySession(ws, on_data)

    open = create
