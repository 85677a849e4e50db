#!/usr/bin/env python3
"""A computer-use agent loop on a desktop sandbox: observe by screenshot, act by clicks and keys,
record every step. The policy here is scripted; `decide` is where a model would choose.

    python3 sdk/python/examples/computer_use_agent.py [POOL] [OUT_DIR]   # desktop-pool ./agent-run

The sandbox serves a small page (a green "Submit" button and a text field); the agent opens it
in the desktop's Chromium, finds the button by its colour in a downscaled screenshot, types a
note, clicks the button and checks that the page turned grey. OUT_DIR receives each step's
screenshot and `steps.jsonl` (what was seen, what was done, how long it took).
"""

from __future__ import annotations

import json
import pathlib
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from agent_sandbox_sdk import DesktopNotAvailableError, Sandbox, SandboxClient

PAGE = """<!doctype html><html><head><title>agent task</title><style>
body { margin: 0; background: #fff; font: 24px sans-serif; }
#note { position: absolute; left: 80px; top: 80px; width: 400px; font-size: 24px; }
#submit { position: absolute; left: 80px; top: 160px; width: 240px; height: 90px;
          background: rgb(0, 160, 0); color: #fff; border: 0; font-size: 28px; }
body.done { background: rgb(128, 128, 128); }
</style></head><body>
<input id="note" placeholder="note"><button id="submit"
 onclick="document.body.className='done'; document.title='done: ' + note.value">Submit</button>
</body></html>"""
OBSERVE_SCALE = 0.25  # the policy sees a quarter-size screenshot (fast to send and to decode)


@dataclass
class Action:
    """One thing to do: `kind` is click, type, press, wait or done."""

    kind: str
    x: int = 0
    y: int = 0
    text: str = ""
    keys: list[str] = field(default_factory=list)
    why: str = ""


@dataclass
class Observation:
    step: int
    width: int
    height: int
    rgb: bytes  # the downscaled screenshot, 3 bytes per pixel
    title: str


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """8-bit RGB PNG (what sandboxd sends) -> (width, height, RGB bytes)."""
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, out = zlib.decompress(idat), width * 3, bytearray()
    prev = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        filt, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        prev = line
    return width, height, bytes(out)


def find_colour(obs: Observation, rgb: tuple[int, int, int]) -> Optional[tuple[int, int]]:
    """Centre (in screen pixels) of the pixels of this colour, if any."""
    xs, ys = [], []
    for i in range(0, len(obs.rgb), 3):
        if tuple(obs.rgb[i:i + 3]) == rgb:
            xs.append((i // 3) % obs.width)
            ys.append((i // 3) // obs.width)
    if len(xs) < 20:
        return None
    scale = 1 / OBSERVE_SCALE
    return int(sum(xs) / len(xs) * scale), int(sum(ys) / len(ys) * scale)


def decide(obs: Observation, history: list[dict[str, Any]]) -> Action:
    """The policy: replace with a model that reads `obs` (and `history`) and names an action."""
    done = [h["action"]["why"] for h in history]
    button = find_colour(obs, (0, 160, 0))
    if "focus the address bar" not in done:
        return Action("press", keys=["ctrl+l"], why="focus the address bar")
    if "type the address" not in done:
        return Action("type", text="http://127.0.0.1:8000/", why="type the address")
    if "open the page" not in done:
        return Action("press", keys=["Return"], why="open the page")
    if button is None and "submitted" not in done:
        return Action("wait", why="waiting for the page")
    if button is not None and "focus the note" not in done:
        # The text field sits 110 px above the button's centre and 80 px right of it.
        return Action("click", x=button[0] + 80, y=button[1] - 110, why="focus the note")
    if "write the note" not in done:
        return Action("type", text="hello from the agent", why="write the note")
    if button is not None and "submitted" not in done:
        return Action("click", x=button[0], y=button[1], why="submitted")
    if find_colour(obs, (128, 128, 128)) is not None:
        return Action("done", why="the page confirms the submission")
    return Action("wait", why="waiting for the page to change")


def observe(sandbox: Sandbox, step: int, out: pathlib.Path) -> Observation:
    full = sandbox.computer.screenshot()
    (out / f"step-{step:02d}.png").write_bytes(full)
    width, height, rgb = decode_png(sandbox.computer.screenshot(scale=OBSERVE_SCALE))
    windows = sandbox.computer.list_windows()
    title = next((w.title for w in windows if w.focused), windows[0].title if windows else "")
    return Observation(step, width, height, rgb, title)


def act(sandbox: Sandbox, action: Action) -> None:
    if action.kind == "click":
        sandbox.computer.left_click(action.x, action.y)
    elif action.kind == "type":
        sandbox.computer.write(action.text)
    elif action.kind == "press":
        sandbox.computer.press(action.keys)
    elif action.kind == "wait":
        time.sleep(0.5)


def run(sandbox: Sandbox, out: pathlib.Path, max_steps: int = 20) -> bool:
    sandbox.commands.run("mkdir -p /srv && cat > /srv/index.html", stdin=PAGE)
    sandbox.commands.run("cd /srv && python3 -m http.server 8000 >/dev/null 2>&1 &")
    sandbox.computer.wait_until_ready()
    history: list[dict[str, Any]] = []
    with open(out / "steps.jsonl", "w") as log:
        for step in range(max_steps):
            started = time.perf_counter()
            try:
                obs = observe(sandbox, step, out)
            except DesktopNotAvailableError as e:
                if not e.retryable:
                    raise
                sandbox.computer.wait_until_ready()
                continue
            action = decide(obs, history)
            act(sandbox, action)
            record = {"step": step, "title": obs.title, "action": asdict(action),
                      "ms": round((time.perf_counter() - started) * 1000, 1)}
            history.append(record)
            log.write(json.dumps(record) + "\n")
            print(f"  step {step:2d}  {action.kind:<6} {action.why:<36} {record['ms']:7.1f} ms"
                  f"  [{obs.title}]")
            if action.kind == "done":
                return True
    return False


def main() -> int:
    pool = sys.argv[1] if len(sys.argv) > 1 else "desktop-pool"
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "agent-run")
    out.mkdir(parents=True, exist_ok=True)
    client: SandboxClient[Sandbox] = SandboxClient()
    with client:
        sandbox = client.create_sandbox(warmpool=pool, sandbox_ready_timeout=120)
        try:
            ok = run(sandbox, out)
        finally:
            sandbox.terminate()
    print(("task done" if ok else "task not done") + f"; steps and screenshots in {out}/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
