"""A small HTTP/1.1 client on ``http.client``: keep-alive pooling, deadlines, streaming bodies.

Only idempotent requests are ever retried, and only on connection errors; a pooled connection
that the peer has closed is detected before it is used, so no request is sent into a dead socket.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Union
from urllib.parse import urlsplit

Body = Union[bytes, IO[bytes], None]

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

# A pooled connection idle for longer than this is dropped: servers close idle keep-alive
# connections after 60 s (sandboxd) or more, and a request must never race that close.
_MAX_IDLE = 20.0


class TransportError(Exception):
    """No HTTP response: the connection could not be made, broke, or timed out."""

    def __init__(self, message: str, kind: str, sent: bool) -> None:
        super().__init__(message)
        self.kind = kind  # refused | dns | timeout | tls | closed | other
        self.sent = sent  # whether the request may have reached the server


class HttpResponse:
    """A complete response: status, lower-cased headers and the body."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"HttpResponse(status={self.status}, body={self.body[:200]!r})"


class _Conn:
    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.idle_since = time.monotonic()


class StreamingResponse:
    """A response whose body is read as it arrives. Close it (or use ``with``) when done."""

    def __init__(self, client: HttpClient, key: tuple[str, str, int], conn: _Conn,
                 resp: http.client.HTTPResponse) -> None:
        self._client = client
        self._key = key
        self._conn = conn
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self._closed = False

    def set_timeout(self, timeout: float | None) -> None:
        sock = self._conn.conn.sock
        if sock is not None:
            sock.settimeout(timeout)

    def readline(self) -> bytes:
        try:
            return self._resp.readline()
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise _map_error(e, sent=True, timeout=None) from e

    def read(self, n: int = -1) -> bytes:
        try:
            if n < 0:
                return self._resp.read()
            return self._resp.read1(n) if n else b""
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise _map_error(e, sent=True, timeout=None) from e

    def readinto(self, b: Any) -> int:
        return self._resp.readinto(b)

    def lines(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def body(self) -> bytes:
        return self.read()

    def abort(self) -> None:
        """Break the connection from any thread; a blocked reader wakes up with an error."""
        sock = self._conn.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._resp.isclosed() and not self._resp.will_close:
            self._client._checkin(self._key, self._conn)
        else:
            self._conn.conn.close()

    def __enter__(self) -> StreamingResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with an optional TLS server name that differs from the host (kubeconfig
    ``tls-server-name``)."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext,
                 server_name: str | None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._ctx = context

    def connect(self) -> None:
        if not self._server_name:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        assert self.sock is not None
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._server_name)


def _map_error(e: BaseException, sent: bool, timeout: float | None) -> TransportError:
    if isinstance(e, TransportError):
        return e
    if isinstance(e, ConnectionRefusedError):
        return TransportError("connection refused", "refused", False)
    if isinstance(e, socket.gaierror):
        return TransportError(f"cannot resolve the host name ({e.strerror})", "dns", False)
    if isinstance(e, ssl.SSLCertVerificationError):
        return TransportError(f"TLS certificate verification failed: {e.verify_message}", "tls", False)
    if isinstance(e, ssl.SSLError):
        return TransportError(f"TLS error: {e}", "tls", sent)
    if isinstance(e, (socket.timeout, TimeoutError)):
        what = f" after {timeout:g} s" if timeout else ""
        return TransportError(f"timed out{what}", "timeout", sent)
    if isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                      http.client.IncompleteRead)):
        return TransportError("the connection was closed by the other end", "closed", sent)
    if isinstance(e, OSError) and e.errno is not None:
        return TransportError(f"{e.strerror or e}", "other", sent)
    return TransportError(f"{type(e).__name__}: {e}", "other", sent)


class HttpClient:
    """Thread-safe; one pool of idle keep-alive connections per (scheme, host, port)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None,
                 server_name: str | None = None, max_idle_per_host: int = 8) -> None:
        self._ssl = ssl_context
        self._server_name = server_name
        self._max_idle = max_idle_per_host
        self._pool: dict[tuple[str, str, int], list[_Conn]] = {}
        self._lock = threading.Lock()

    def set_ssl_context(self, ctx: ssl.SSLContext) -> None:
        with self._lock:
            self._ssl = ctx
            pools, self._pool = self._pool, {}
        for conns in pools.values():
            for c in conns:
                c.conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._pool = self._pool, {}
        for conns in pools.values():
            for c in conns:
                c.conn.close()

    # -- pool ------------------------------------------------------------------------------

    def _checkout(self, key: tuple[str, str, int]) -> _Conn | None:
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._pool.get(key)
                if not conns:
                    return None
                c = conns.pop()
            sock = c.conn.sock
            if sock is None or now - c.idle_since > _MAX_IDLE:
                c.conn.close()
                continue
            try:
                readable, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                readable = [sock]
            if readable:  # EOF or unexpected bytes: the peer closed it
                c.conn.close()
                continue
            return c

    def _checkin(self, key: tuple[str, str, int], c: _Conn) -> None:
        c.idle_since = time.monotonic()
        with self._lock:
            conns = self._pool.setdefault(key, [])
            if len(conns) < self._max_idle:
                conns.append(c)
                return
        c.conn.close()

    def _new(self, key: tuple[str, str, int], timeout: float) -> _Conn:
        scheme, host, port = key
        if scheme == "https":
            ctx = self._ssl or ssl.create_default_context()
            return _Conn(_HTTPSConnection(host, port, timeout, ctx, self._server_name))
        return _Conn(http.client.HTTPConnection(host, port, timeout=timeout))

    # -- requests --------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: Body,
              timeout: float, reuse: bool) -> tuple[tuple[str, str, int], _Conn,
                                                    http.client.HTTPResponse]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise TransportError(f"unsupported URL scheme in {url!r}", "other", False)
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        c = self._checkout(key) if reuse else None
        if c is None:
            c = self._new(key, timeout)
        c.conn.timeout = timeout
        if c.conn.sock is not None:
            c.conn.sock.settimeout(timeout)
        hdrs = dict(headers)
        if isinstance(body, (bytes, bytearray)):
            hdrs.setdefault("Content-Length", str(len(body)))
        elif body is None and method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        if body is not None and not isinstance(body, (bytes, bytearray)) \
                and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Transfer-Encoding"] = "chunked"
        sent = False
        try:
            c.conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in hdrs.items():
                c.conn.putheader(k, v)
            chunked = hdrs.get("Transfer-Encoding") == "chunked"
            if isinstance(body, (bytes, bytearray)):
                c.conn.endheaders(bytes(body) if body else None)
                sent = True
            elif body is None:
                c.conn.endheaders()
                sent = True
            else:
                c.conn.endheaders()
                sent = True
                while True:
                    block = body.read(256 * 1024)
                    if not block:
                        break
                    if chunked:
                        c.conn.send(b"%x\r\n" % len(block) + block + b"\r\n")
                    else:
                        c.conn.send(block)
                if chunked:
                    c.conn.send(b"0\r\n\r\n")
            resp = c.conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            c.conn.close()
            raise _map_error(e, sent=sent, timeout=timeout) from e
        return key, c, resp

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: Body = None, timeout: float = 30.0, retries: int | None = None,
                deadline: float | None = None) -> HttpResponse:
        """Sends and reads the whole answer. ``retries`` defaults to 2 for idempotent methods and
        0 otherwise; retries happen only on connection errors, before ``deadline``
        (a ``time.monotonic()`` value)."""
        if retries is None:
            retries = 2 if method in IDEMPOTENT else 0
        attempt = 0
        while True:
            t = timeout
            if deadline is not None:
                t = max(0.05, min(timeout, deadline - time.monotonic()))
            try:
                key, c, resp = self._send(method, url, headers or {}, body, t, reuse=True)
                try:
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    c.conn.close()
                    raise _map_error(e, sent=True, timeout=t) from e
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    c.conn.close()
                else:
                    self._checkin(key, c)
                return HttpResponse(resp.status, resp.reason, hdrs, data)
            except TransportError as e:
                attempt += 1
                replayable = body is None or isinstance(body, (bytes, bytearray)) or (
                    hasattr(body, "seek") and hasattr(body, "seekable") and body.seekable())
                if attempt > retries or e.kind in ("tls", "dns") or not replayable:
                    raise
                if deadline is not None and time.monotonic() + 0.2 * attempt >= deadline:
                    raise
                if e.kind == "timeout":
                    raise
                time.sleep(0.1 * attempt)
                if body is not None and not isinstance(body, (bytes, bytearray)):
                    body.seek(0)

    def stream(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
               body: Body = None, timeout: float = 30.0) -> StreamingResponse:
        """Sends once (never retried) and returns as soon as the response head is in."""
        key, c, resp = self._send(method, url, headers or {}, body, timeout, reuse=True)
        return StreamingResponse(self, key, c, resp)

    def raw_socket(self, url: str, timeout: float) -> socket.socket:
        """A fresh connected socket (TLS for https) for protocols that take over the
        connection (WebSocket)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme in ("https", "wss") else 80)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme in ("https", "wss"):
                ctx = self._ssl or ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=self._server_name or host)
        except OSError as e:
            raise _map_error(e, sent=False, timeout=timeout) from e
        return sock
