"""A small RFC 6455 WebSocket client on a connected socket (for PTY sessions)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(Exception):
    """The connection is closed; ``code`` is the close code the server sent, if any."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"WebSocket closed (code {code}) {reason}".strip())
        self.code = code
        self.reason = reason


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection closed during the WebSocket handshake")
        buf += chunk
        if len(buf) > 1 << 20:
            raise ConnectionError("WebSocket handshake response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def connect_websocket(sock: socket.socket, url: str, headers: dict[str, str],
                      timeout: float) -> tuple[int, bytes, WebSocket | None]:
    """Performs the opening handshake. Returns ``(101, b"", ws)`` or, when the server refused
    the upgrade, ``(status, body, None)`` and closes the socket."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    host = parts.netloc
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.settimeout(timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = _read_head(sock)
    except OSError:
        sock.close()
        raise
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        sock.close()
        return 0, head, None
    hdrs = {}
    for line in hdr_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if status != 101:
        body = rest
        try:
            n = int(hdrs.get("content-length", "0"))
            while len(body) < n:
                chunk = sock.recv(n - len(body))
                if not chunk:
                    break
                body += chunk
        except (OSError, ValueError):
            pass
        sock.close()
        return status, body, None
    expect = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if hdrs.get("sec-websocket-accept") != expect:
        sock.close()
        return 502, b'{"message":"bad Sec-WebSocket-Accept in the WebSocket handshake"}', None
    return 101, b"", WebSocket(sock, rest)


class WebSocket:
    """Blocking reads from one thread; sends are safe from any thread."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = bytearray(buffered)
        self._send_lock = threading.Lock()
        self.closed = False
        self.close_code: int | None = None

    # -- sending ---------------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack("!H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack("!Q", n)
        mask = os.urandom(4)
        header += mask
        if n:
            # XOR with the mask, 8 bytes at a time through int arithmetic.
            m = (mask * ((n + 3) // 4))[:n]
            masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
        else:
            masked = b""
        with self._send_lock:
            if self.closed and opcode != OP_CLOSE:
                raise WebSocketClosed(self.close_code)
            self.sock.sendall(bytes(header) + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self._send_frame(OP_BINARY, data)

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            try:
                self._send_frame(OP_CLOSE, struct.pack("!H", code))
            except OSError:
                pass
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- receiving -------------------------------------------------------------------------

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                self.closed = True
                raise WebSocketClosed(self.close_code, "connection closed")
            self._buf += chunk

    def _take(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next data message as ``(opcode, payload)``; None when ``timeout`` passes first.
        Answers pings; raises :class:`WebSocketClosed` on a close frame or EOF."""
        self.sock.settimeout(timeout)
        message = bytearray()
        msg_op = None
        try:
            while True:
                if not self._buf:
                    self._fill(1)
                # Once a frame has started, finish it without the caller's short timeout.
                self.sock.settimeout(None if timeout is None else max(timeout, 30.0))
                b0, b1 = self._take(2)
                fin, opcode = b0 & 0x80, b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._take(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._take(8))
                mask = self._take(4) if b1 & 0x80 else None
                payload = self._take(n)
                if mask:
                    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                if opcode == OP_PING:
                    self._send_frame(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.close_code = code
                    try:
                        self._send_frame(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                    self.closed = True
                    raise WebSocketClosed(code, payload[2:].decode(errors="replace"))
                if opcode != OP_CONT:
                    msg_op = opcode
                message += payload
                if fin:
                    return (msg_op or OP_BINARY), bytes(message)
        except (socket.timeout, TimeoutError):
            if message or msg_op is not None:
                raise
            return None
        except OSError as e:
            self.closed = True
            raise WebSocketClosed(self.close_code, str(e)) from e
