#!/usr/bin/env python3
"""Build the `browser` or `desktop` sandbox image from this machine's Debian packages, offline.

Both extend the example image of build.py (busybox, Python, sandboxd) with one more layer:

* `browser`: Debian's Chromium, headless, its DevTools endpoint on 127.0.0.1:9223, started
  and restarted by sandboxd (`--service`), and published on port 9222 by sandboxd's DevTools
  front (`--cdp-port`), which makes it usable through the router.
* `desktop`: an X server (Xvfb, 24-bit, its framebuffer in a file that sandboxd reads for
  screenshots), a small window manager (matchbox), Chromium on the display, a terminal (xterm)
  and xdotool for input (XTEST); sandboxd serves the desktop API under /v2/desktop.

    apt-get install -y chromium                                      # browser
    apt-get install -y chromium xvfb xdotool matchbox-window-manager xterm   # desktop
    python3 examples/image/build_gui.py browser --sandboxd target/release/agent-sandbox --out /tmp/browser
    agent-sandbox image import /tmp/browser --name localhost/agent-sandbox/browser:latest

Files come from the packages' own file lists (`dpkg -L`), without documentation, and every ELF
file brings the shared libraries `ldd` reports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402  (the shared image builder, next to this file)

DISPLAY = ":99"
SCREEN = "1280x800"
FRAMEBUFFER_DIR = "/tmp/.sandbox-desktop"
CDP_PORT = 9222
CDP_UPSTREAM_PORT = 9223
# Paths of the packages that a sandbox never reads.
SKIP_PREFIXES = (
    "/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale",
    "/usr/share/lintian", "/usr/share/bug", "/usr/share/icons", "/usr/share/applications",
    "/usr/share/menu", "/usr/share/pixmaps", "/usr/share/gnome-control-center",
    "/usr/lib/chromium/libVkLayer_khronos_validation.so",
)
BROWSER_PACKAGES = ["chromium", "chromium-common", "fontconfig-config", "fonts-dejavu-core"]
DESKTOP_PACKAGES = BROWSER_PACKAGES + [
    "xvfb", "xkb-data", "x11-xkb-utils", "xserver-common", "libx11-data",
    "xdotool", "matchbox-window-manager", "xterm",
]
CHROMIUM_FLAGS = (
    "--no-sandbox --no-first-run --no-default-browser-check --disable-dev-shm-usage "
    "--disable-gpu --user-data-dir=/tmp/chromium --password-store=basic "
    f"--remote-debugging-address=127.0.0.1 --remote-debugging-port={CDP_UPSTREAM_PORT}"
)
# Waits for the X server's socket before a client of the display starts.
WAIT_FOR_X = (
    f"while [ ! -S /tmp/.X11-unix/X{DISPLAY[1:]} ]; do sleep 0.05; done; "
    f"export DISPLAY={DISPLAY}; "
)


def package_files(package: str) -> list[str]:
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        build.fail(f"the Debian package {package} is not installed; run: apt-get install -y {package}")
    keep = []
    for path in out.stdout.splitlines():
        locale = path.startswith("/usr/lib/chromium/locales/") and not path.endswith("/en-US.pak")
        if path.startswith(SKIP_PREFIXES) or locale or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            continue
        keep.append(path)
    return keep


def add_packages(builder: build.ImageBuilder, layer: build.Layer, packages: list[str]) -> None:
    for package in packages:
        files = package_files(package)
        for path in files:
            builder.add_host_path(layer, path)
        elves = [p for p in files if os.path.isfile(p) and not os.path.islink(p) and is_elf(p)]
        builder.add_with_libraries(layer, elves)


def is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def browser_layer(builder: build.ImageBuilder) -> None:
    layer = builder.layer("browser: Chromium, fonts and their shared libraries")
    add_packages(builder, layer, BROWSER_PACKAGES)


def desktop_layer(builder: build.ImageBuilder) -> None:
    layer = builder.layer("desktop: Xvfb, matchbox, Chromium, xterm, xdotool, fonts; libraries")
    add_packages(builder, layer, DESKTOP_PACKAGES)
    builder.add_dir(layer, FRAMEBUFFER_DIR.strip("/"), 0o755)
    builder.add_dir(layer, "tmp/.X11-unix", 0o1777)


def services(kind: str) -> list[str]:
    chromium = f"/usr/lib/chromium/chromium {CHROMIUM_FLAGS}"
    if kind == "browser":
        return [f"browser=exec {chromium} --headless about:blank"]
    return [
        f"xvfb=rm -f /tmp/.X{DISPLAY[1:]}-lock; exec Xvfb {DISPLAY} -screen 0 {SCREEN}x24 "
        f"-fbdir {FRAMEBUFFER_DIR} -nolisten tcp -ac",
        f"wm={WAIT_FOR_X}exec matchbox-window-manager -use_titlebar no -use_cursor yes",
        f"browser={WAIT_FOR_X}exec {chromium} --start-maximized --window-position=0,0 "
        f"--window-size={SCREEN.replace('x', ',')} about:blank",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["browser", "desktop"])
    parser.add_argument("--sandboxd", required=True, help="the agent-sandbox or sandboxd binary")
    parser.add_argument("--out", required=True, help="OCI image layout directory to write")
    parser.add_argument("--tag", default=build.TAG_DEFAULT, help="tag recorded in index.json")
    args = parser.parse_args()
    if not os.path.isfile(args.sandboxd):
        build.fail(f"--sandboxd {args.sandboxd}: no such file; build it with `cargo build -p agent-sandbox`")
    if os.path.exists(args.out) and os.listdir(args.out):
        shutil.rmtree(args.out)
    sandboxd_args = [f"--service={s}" for s in services(args.kind)]
    env = []
    if args.kind == "browser":
        sandboxd_args += [f"--cdp-port={CDP_PORT}", f"--cdp-upstream=127.0.0.1:{CDP_UPSTREAM_PORT}"]
        extra = browser_layer
    else:
        sandboxd_args += [
            f"--desktop-display={DISPLAY}",
            f"--desktop-framebuffer={FRAMEBUFFER_DIR}/Xvfb_screen0",
            f"--cdp-port={CDP_PORT}", f"--cdp-upstream=127.0.0.1:{CDP_UPSTREAM_PORT}",
        ]
        env = [f"DISPLAY={DISPLAY}"]
        extra = desktop_layer
    digest = build.build(
        args.sandboxd, args.out, args.tag, False, extra, sandboxd_args, env, [CDP_PORT]
    )
    size = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs
    )
    print(f"wrote {args.out} ({args.kind}, tag {args.tag}, manifest {digest}, {size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
