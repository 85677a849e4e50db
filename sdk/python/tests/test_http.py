"""The HTTP layer's retry rule, on a local server that drops the first connection: idempotent
requests are retried on connection errors, others never."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from agent_sandbox_sdk._http import HttpClient, TransportError


@pytest.fixture()
def flaky_server() -> Iterator[tuple[str, list[bytes]]]:
    """Reads each request; closes the first connection without answering, answers the rest."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                seen.append(data.split(b"\r\n", 1)[0])
                if len(seen) == 1:
                    continue  # dropped without an answer
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", seen
    stop.set()
    t.join(2)
    srv.close()


def test_get_is_retried(flaky_server: tuple[str, list[bytes]]) -> None:
    url, seen = flaky_server
    r = HttpClient().request("GET", url + "/v1/files/a", timeout=5)
    assert r.status == 200 and r.body == b"ok"
    assert seen == [b"GET /v1/files/a HTTP/1.1"] * 2


def test_post_is_never_retried(flaky_server: tuple[str, list[bytes]]) -> None:
    url, seen = flaky_server
    with pytest.raises(TransportError) as e:
        HttpClient().request("POST", url + "/v2/exec", body=b"{}", timeout=5)
    assert e.value.kind == "closed" and e.value.sent
    assert seen == [b"POST /v2/exec HTTP/1.1"]


def test_refused_is_reported() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError) as e:
        HttpClient().request("GET", f"http://127.0.0.1:{port}/", timeout=2, retries=0)
    assert e.value.kind == "refused" and not e.value.sent
