"""``sandbox.computer`` (the desktop API under ``/v2/desktop``: screenshots, mouse, keyboard,
cursor, screen and windows) and ``sandbox.browser`` (the browser's DevTools endpoint, for
Playwright's ``connect_over_cdp`` and plain CDP clients)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ._http import HttpResponse
from .exceptions import (
    BrowserNotAvailableError,
    DesktopNotAvailableError,
    InvalidActionError,
    SandboxRequestError,
)

if TYPE_CHECKING:
    from .sandbox import Sandbox

#: sandboxd's DevTools front in the browser and desktop images.
CDP_PORT = 9222


@dataclass(frozen=True)
class Window:
    """A visible window of the desktop."""

    id: int
    title: str
    x: int
    y: int
    width: int
    height: int
    focused: bool


def _message(resp: HttpResponse) -> tuple[Optional[str], str]:
    try:
        body: Any = json.loads(resp.body)
        if isinstance(body, dict):
            return body.get("code"), str(body.get("message") or body)
    except ValueError:
        pass
    return None, resp.body.decode("utf-8", errors="replace")[:300]


class Computer:
    """``sandbox.computer``: see and drive the sandbox's desktop (the ``desktop`` image).

    Errors: :class:`InvalidActionError` (a point off the screen, an unknown key, a bad region;
    nothing was done), :class:`DesktopNotAvailableError` (no desktop in this sandbox, or its X
    server is restarting: ``retryable`` says which; :meth:`wait_until_ready` waits)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _call(self, method: str, path: str, what: str, body: Any = None,
              params: Optional[dict[str, Any]] = None, timeout: float = 30.0) -> HttpResponse:
        self._sb._require_active()
        resp = self._sb._dp.request(method, path, what=what, json_body=body, params=params,
                                    timeout=timeout, idempotent=method == "GET",
                                    ok=(200, 400, 404, 503))
        if resp.status == 200:
            return resp
        code, message = _message(resp)
        text = f"{what}: {resp.status} {message}"
        if resp.status == 400:
            raise InvalidActionError(text, status_code=400, response=resp, code=code)
        raise DesktopNotAvailableError(text, status_code=resp.status, response=resp, code=code,
                                       retryable=resp.status == 503)

    def _json(self, method: str, path: str, what: str, body: Any = None) -> Any:
        return self._call(method, path, what, body).json()

    # -- observe ---------------------------------------------------------------------------

    def screenshot(self, region: Optional[tuple[int, int, int, int]] = None,
                   scale: Optional[float] = None) -> bytes:
        """A PNG of the screen, or of ``region`` = (x, y, width, height); ``scale`` in (0, 1]
        shrinks it (0.5: half the width and height)."""
        params: dict[str, Any] = {}
        if region is not None:
            params.update(zip(("x", "y", "width", "height"), (int(v) for v in region)))
        if scale is not None:
            params["scale"] = float(scale)
        return self._call("GET", "/v2/desktop/screenshot", "taking a screenshot",
                          params=params or None).body

    def get_screen_size(self) -> tuple[int, int]:
        """(width, height) of the screen in pixels."""
        d = self._json("GET", "/v2/desktop/screen", "reading the screen size")
        return int(d["width"]), int(d["height"])

    def get_cursor_position(self) -> tuple[int, int]:
        """(x, y) of the mouse pointer."""
        d = self._json("GET", "/v2/desktop/cursor", "reading the cursor position")
        return int(d["x"]), int(d["y"])

    def list_windows(self) -> list[Window]:
        """The visible windows with a title."""
        d = self._json("GET", "/v2/desktop/windows", "listing the windows")
        return [Window(id=int(w["id"]), title=str(w["title"]), x=int(w.get("x") or 0),
                       y=int(w.get("y") or 0), width=int(w.get("width") or 0),
                       height=int(w.get("height") or 0), focused=bool(w.get("focused")))
                for w in d.get("windows", [])]

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Waits until the X server answers (after a start or a restart)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get_screen_size()
                return
            except DesktopNotAvailableError as e:
                if not e.retryable or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    # -- act -------------------------------------------------------------------------------

    def move_mouse(self, x: int, y: int) -> None:
        """Moves the pointer to (x, y)."""
        self._call("POST", "/v2/desktop/mouse/move", "moving the mouse", {"x": x, "y": y})

    def _click(self, x: Optional[int], y: Optional[int], button: str, count: int) -> None:
        body: dict[str, Any] = {"button": button, "count": count}
        if x is not None or y is not None:
            body.update(x=x, y=y)
        self._call("POST", "/v2/desktop/mouse/click", f"{button}-clicking", body)

    def left_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        """Left click at (x, y), or where the pointer is."""
        self._click(x, y, "left", 1)

    def right_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        """Right click at (x, y), or where the pointer is."""
        self._click(x, y, "right", 1)

    def middle_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        """Middle click at (x, y), or where the pointer is."""
        self._click(x, y, "middle", 1)

    def double_click(self, x: Optional[int] = None, y: Optional[int] = None) -> None:
        """Left double click at (x, y), or where the pointer is."""
        self._click(x, y, "left", 2)

    def drag(self, start: tuple[int, int], end: tuple[int, int], button: str = "left") -> None:
        """Presses at ``start``, moves to ``end`` and releases."""
        self._call("POST", "/v2/desktop/mouse/drag", "dragging",
                   {"from": list(start), "to": list(end), "button": button})

    def scroll(self, direction: str = "down", amount: int = 1, x: Optional[int] = None,
               y: Optional[int] = None) -> None:
        """Turns the wheel ``amount`` steps ``up``, ``down``, ``left`` or ``right``."""
        body: dict[str, Any] = {"direction": direction, "amount": amount}
        if x is not None or y is not None:
            body.update(x=x, y=y)
        self._call("POST", "/v2/desktop/mouse/scroll", "scrolling", body)

    def press(self, keys: Union[str, Sequence[str]]) -> None:
        """Presses keys in order, xdotool-style names: ``"Return"``, ``"ctrl+l"``,
        ``["ctrl+a", "BackSpace"]``."""
        names = [keys] if isinstance(keys, str) else list(keys)
        self._call("POST", "/v2/desktop/keyboard/press", "pressing keys", {"keys": names})

    def write(self, text: str, delay_ms: Optional[int] = None) -> None:
        """Types ``text`` as keystrokes (``delay_ms`` between them, default 5)."""
        body: dict[str, Any] = {"text": text}
        if delay_ms is not None:
            body["delay_ms"] = delay_ms
        self._call("POST", "/v2/desktop/keyboard/type", "typing text", body,
                   timeout=30.0 + len(text) * (delay_ms or 5) / 1000)


class Browser:
    """``sandbox.browser``: the DevTools (CDP) endpoint of the sandbox's Chromium (the
    ``browser`` and ``desktop`` images), served by sandboxd's DevTools front on port 9222.

    With Playwright::

        pw.chromium.connect_over_cdp(sandbox.browser.cdp_url(),
                                     headers=sandbox.browser.cdp_headers())
    """

    def __init__(self, sandbox: Sandbox, port: int = CDP_PORT) -> None:
        self._sb = sandbox
        self.port = port

    def cdp_url(self) -> str:
        """The HTTP endpoint for ``connect_over_cdp`` (through the router: the router's URL,
        to be used with :meth:`cdp_headers`)."""
        self._sb._require_active()
        return self._sb._dp.base_url(self.port)

    def cdp_headers(self) -> dict[str, str]:
        """Headers every CDP request and WebSocket needs (the router's, when it is used)."""
        self._sb._require_active()
        _, headers = self._sb._dp._target("/", None, None, self.port)
        headers.pop("User-Agent", None)
        headers.pop("X-Sandbox-Timeout", None)
        return headers

    def version(self, timeout: float = 30.0) -> dict[str, Any]:
        """``/json/version`` of the browser; its ``webSocketDebuggerUrl`` is reachable with
        :meth:`cdp_headers`. Waits while the browser starts."""
        self._sb._require_active()
        resp = self._sb._dp.request("GET", "/json/version", what="reading the browser's version",
                                    timeout=timeout, port=self.port, ok=(200, 502, 503))
        if resp.status != 200:
            code, message = _message(resp)
            raise BrowserNotAvailableError(
                f"reading the browser's version: {resp.status} {message}; is this a browser or "
                "desktop sandbox? (GET /v2/services lists its services)",
                status_code=resp.status, response=resp, code=code)
        d: Any = resp.json()
        if not isinstance(d, dict):
            raise SandboxRequestError("reading the browser's version: the answer is not an object",
                                      status_code=resp.status, response=resp)
        return d

    def websocket_url(self) -> str:
        """The browser-level CDP WebSocket URL (open it with :meth:`cdp_headers`)."""
        return str(self.version()["webSocketDebuggerUrl"])
