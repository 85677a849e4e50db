"""Which installed packages an OpenEnv server needs, and a copy of them to upload.

Sandboxes have no network, and the example image has Python's standard library but no pip. So
the packages the server imports are taken from the host's environment, which has them already
(the client side of OpenEnv needs ``openenv-core`` too): a child interpreter imports the server
app and uvicorn (with the parts uvicorn loads only when a request or a WebSocket arrives), and
every top-level package or module it loaded from a site-packages directory is copied, whole,
into a staging directory that goes to the sandbox in one tar stream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# What uvicorn imports lazily: the HTTP and WebSocket protocols, the event loop, the lifespan.
SERVER_MODULES = (
    "uvicorn",
    "uvicorn.main",
    "uvicorn.loops.asyncio",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.websockets_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "uvicorn.lifespan.on",
)

# OpenEnv's optional web interface (ENABLE_WEB_INTERFACE): gradio with numpy, pandas, pillow.
DEFAULT_EXCLUDE = ("gradio",)

_TRACE = r"""
import importlib, json, os, sys, sysconfig, site
app_module, extra, blocked = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))


class Block:  # an excluded package is "not installed", as it will be in the sandbox
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
roots = {os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages(),
         sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]] if p}
failed = {}
for name in [app_module] + extra:
    try:
        importlib.import_module(name)
    except Exception as e:  # a lazily imported part that this uvicorn lacks is fine
        failed[name] = f"{type(e).__name__}: {e}"
if app_module in failed:
    print(json.dumps({"error": failed[app_module]}))
    sys.exit(0)
tops = set()
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if not f:
        continue
    f = os.path.realpath(f)
    for r in roots:
        if f.startswith(r + os.sep):
            tops.add(os.path.join(r, os.path.relpath(f, r).split(os.sep)[0]))
# Their distributions' metadata too: packages read it at import (importlib.metadata.version).
import importlib.metadata as md
names = {os.path.basename(t).split(".")[0] for t in tops}
for top, dists in md.packages_distributions().items():
    if top in names:
        for d in dists:
            try:
                p = getattr(md.distribution(d), "_path", None)
            except md.PackageNotFoundError:
                continue
            if p is not None and os.path.realpath(os.path.dirname(str(p))) in roots:
                tops.add(os.path.join(os.path.realpath(os.path.dirname(str(p))),
                                      os.path.basename(str(p))))
print(json.dumps({"paths": sorted(tops)}))
"""


class DependencyError(RuntimeError):
    """The server's packages could not be found or copied on this host."""


def imported_paths(app: str, source_dir: Path | None, extra_modules: list[str],
                   exclude: list[str] | None = None) -> list[Path]:
    """The top-level entries of site-packages that importing ``app`` (``module:attribute``)
    and uvicorn loads, in this host's interpreter, with their distributions' metadata.
    ``exclude`` names top-level packages treated as absent (default: gradio, the optional web
    interface, which would bring numpy, pandas and pillow)."""
    if exclude is None:
        exclude = list(DEFAULT_EXCLUDE)
    module = app.partition(":")[0]
    env = dict(os.environ)
    if source_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-c", _TRACE, module, json.dumps([*SERVER_MODULES, *extra_modules]),
         json.dumps(exclude)],
        capture_output=True, text=True, env=env, timeout=300,
        cwd=str(source_dir) if source_dir is not None else None)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise DependencyError(
            f"importing {module!r} on this host to find the packages it needs failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = json.loads(lines[-1])
    if "error" in out:
        raise DependencyError(
            f"importing {module!r} on this host failed: {out['error']}; install the server's "
            "requirements (openenv-core, ...) in this interpreter's environment, or pass "
            "source_dir= so that the module is found")
    paths = [Path(p) for p in out["paths"]]
    if source_dir is not None:
        src = source_dir.resolve()
        paths = [p for p in paths if src not in (p, *p.parents)]
    return paths


def stage(paths: list[Path]) -> Path:
    """A temporary directory holding copies of ``paths`` (without bytecode caches); the caller
    removes it."""
    out = Path(tempfile.mkdtemp(prefix="openenv-site-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    try:
        for p in paths:
            if p.is_dir():
                shutil.copytree(p, out / p.name, ignore=ignore, symlinks=False)
            elif p.is_file():
                shutil.copy2(p, out / p.name)
    except OSError as e:
        shutil.rmtree(out, ignore_errors=True)
        raise DependencyError(f"copying the server's packages failed: {e}") from e
    return out


def _extensions(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            if p.suffix == ".so":
                out.append(p)
            continue
        for root, _dirs, files in os.walk(p):
            out += [Path(root) / f for f in files if f.endswith(".so") or ".so." in f]
    return out


def native_libraries(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """What the compiled modules in ``paths`` load from outside them, as ``ldd`` reports it:
    directories of site-packages that wheels bundle libraries in (``<name>.libs``, found by
    their ``$ORIGIN`` run path, to be shipped beside the packages), and the system's libraries
    (``libgcc_s``, ``librt``, ...), some of which a slim image lacks."""
    site_dirs: set[Path] = set()
    system: set[Path] = set()
    roots = {p.parent for p in paths}
    ldd = shutil.which("ldd")
    if ldd is None:
        return [], []
    for so in _extensions(paths):
        r = subprocess.run([ldd, str(so)], capture_output=True, text=True, timeout=60)
        for line in r.stdout.splitlines():
            parts = line.split("=>")
            if len(parts) != 2:
                continue
            target = parts[1].strip().split(" (")[0].strip()
            if not target.startswith("/"):
                continue
            lib = Path(target)
            for root in roots:
                if root in lib.parents:
                    top = root / lib.relative_to(root).parts[0]
                    if top not in paths:
                        site_dirs.add(top)
                    break
            else:
                if lib.name.startswith(("libc.so", "libm.so", "ld-linux")):
                    continue  # the interpreter itself loads these
                system.add(lib)
    return sorted(site_dirs), sorted(system)


def has_extensions(paths: list[Path]) -> bool:
    """Whether any of ``paths`` holds a compiled extension module (tied to a Python version)."""
    for p in paths:
        if p.is_file():
            if p.suffix in (".so", ".pyd"):
                return True
            continue
        for _root, _dirs, files in os.walk(p):
            if any(f.endswith((".so", ".pyd")) for f in files):
                return True
    return False
