"""A loopback listener that carries each connection to a port inside a sandbox.

OpenEnv's clients (and most HTTP or WebSocket clients) take a base URL and nothing else: they
cannot add the router's ``X-Sandbox-*`` headers and token. The forwarder listens on
``127.0.0.1``; for every connection it reads the request head, adds the headers the SDK says the
port needs (``Sandbox.port_endpoint``), and then copies bytes both ways. A WebSocket stays on
its connection after the handshake; a plain HTTP request is sent with ``Connection: close``, so
every request gets a connection, and its headers, of its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10
# Headers the forwarder decides itself: the client's values would name the loopback listener.
_REPLACED = {"host", "connection", "authorization"}

Endpoint = Callable[[], "tuple[str, dict[str, str]]"]


class ForwardError(RuntimeError):
    """The forwarder could not start (no loopback port, a URL it cannot use)."""


class Forwarder:
    """``http://127.0.0.1:<port>`` in front of ``endpoint()``'s URL and headers."""

    def __init__(self, endpoint: Endpoint, description: str) -> None:
        self._endpoint = endpoint
        self._description = description
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", 0))
        except OSError as e:
            self._listener.close()
            raise ForwardError(f"no loopback port for {description}: {e}") from e
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"forward {description}",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _close(c)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.add(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        _close(s)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name=f"forward {self._description}").start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            url, extra = self._endpoint()
            target = urllib.parse.urlsplit(url)
            upstream = _connect(target)
            self._track(upstream)
            upstream.sendall(_rewrite(head, target, extra) + rest)
            t = threading.Thread(target=_pipe, args=(client, upstream, True), daemon=True)
            t.start()
            _pipe(upstream, client, False)
            t.join(timeout=5)
        except Exception as e:  # noqa: BLE001 - the client sees a 502 with the reason
            log.debug("forwarding to %s failed: %s", self._description, e)
            try:
                body = f"cannot reach {self._description}: {e}\n".encode()
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                               b"Connection: close\r\nContent-Length: "
                               + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
        finally:
            self._untrack(client)
            if upstream is not None:
                self._untrack(upstream)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _read_head(s: socket.socket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
        if len(buf) > MAX_HEAD:
            raise ValueError("request head larger than 64 KiB")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _connect(target: urllib.parse.SplitResult) -> socket.socket:
    if target.scheme not in ("http", "https"):
        raise ForwardError(f"cannot forward to {target.geturl()}: only http and https")
    host = target.hostname or "127.0.0.1"
    port = target.port or (443 if target.scheme == "https" else 80)
    s = socket.create_connection((host, port), timeout=30)
    s.settimeout(None)
    if target.scheme == "https":
        ctx = ssl.create_default_context()
        s = ctx.wrap_socket(s, server_hostname=host)
    return s


def _rewrite(head: bytes, target: urllib.parse.SplitResult, extra: dict[str, str]) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    request_line, fields = lines[0], lines[1:]
    upgrade = False
    kept: list[str] = []
    lowered_extra = {k.lower() for k in extra}
    for f in fields:
        name, _, value = f.partition(":")
        n = name.strip().lower()
        if n == "upgrade":
            upgrade = True
        if n in _REPLACED or n in lowered_extra or n.startswith("x-sandbox-"):
            continue
        kept.append(f)
    # A base URL with a path (a router behind a prefix) puts the request below it.
    method, _, rest = request_line.partition(" ")
    path, _, version = rest.partition(" ")
    prefix = target.path.rstrip("/")
    if prefix and path.startswith("/"):
        path = prefix + path
    out = [f"{method} {path} {version}", f"Host: {target.netloc}"]
    out += kept
    out += [f"{k}: {v}" for k, v in extra.items()]
    out.append("Connection: Upgrade" if upgrade else "Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def _pipe(src: socket.socket, dst: socket.socket, half_close: bool) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    if half_close:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    else:
        _close(dst)
