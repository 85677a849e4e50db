"""OpenEnv's ``RuntimeProvider`` backed by a sandbox, and ``start_env`` on top of it."""

from __future__ import annotations

import atexit
import collections
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

from agent_sandbox_sdk import SandboxClient
from agent_sandbox_sdk.exceptions import SandboxError
from agent_sandbox_sdk.sandbox import Sandbox
from openenv.core.containers.runtime.providers import RuntimeProvider
from openenv.core.env_client import EnvClient

from ._deps import has_extensions, imported_paths, native_libraries, stage
from ._forward import Forwarder

DEFAULT_PORT = 8000
# The listener is on loopback: never through a proxy of the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
REMOTE_DIR = "/opt/openenv"

C = TypeVar("C", bound="EnvClient[Any, Any, Any]")


class EnvServerError(RuntimeError):
    """The environment server could not be started in its sandbox, or did not become ready.
    The message names the sandbox, ends with the server's last output, and says what to do."""

    def __init__(self, message: str, sandbox_id: str | None = None) -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id


class SandboxEnvProvider(RuntimeProvider):  # type: ignore[misc]
    """Runs an OpenEnv environment server (a FastAPI app, usually ``create_app(...)``) inside a
    sandbox and hands out a base URL for OpenEnv's clients.

    ``app`` is uvicorn's ``module:attribute``. ``source_dir`` (optional) is a local directory
    holding that module and the environment's code; it is uploaded to
    ``/opt/openenv/app`` and is the server's working directory. The packages the app imports
    (openenv-core, fastapi, pydantic, uvicorn, ...) are copied from this host's environment to
    ``/opt/openenv/site`` (the sandbox has no network; see the README), unless ``ship_packages``
    is False because the image has them.

    The sandbox is ``sandbox`` when given (and then left running by :meth:`stop`), else one
    claimed from ``warmpool`` through ``client`` (a new ``SandboxClient()`` when None) and
    deleted by :meth:`stop`.

    The base URL is a loopback listener of this process that adds the router's headers to each
    connection (HTTP and WebSocket), so any OpenEnv client class works unchanged.
    """

    def __init__(self, app: str, *, source_dir: str | Path | None = None,
                 warmpool: str | None = None, namespace: str = "default",
                 sandbox: Sandbox | None = None,
                 client: SandboxClient[Sandbox] | None = None,
                 port: int = DEFAULT_PORT, env_vars: dict[str, str] | None = None,
                 ship_packages: bool = True, extra_modules: tuple[str, ...] = (),
                 exclude_packages: tuple[str, ...] | None = None,
                 python: str = "python3", sandbox_ready_timeout: float = 180) -> None:
        if ":" not in app:
            raise ValueError(f"app {app!r} must be uvicorn's 'module:attribute', e.g. "
                             "'server.app:app'")
        if sandbox is None and warmpool is None:
            raise ValueError("pass sandbox= (an existing sandbox) or warmpool= (to claim one)")
        self.app = app
        self.source_dir = Path(source_dir).resolve() if source_dir is not None else None
        if self.source_dir is not None and not self.source_dir.is_dir():
            raise ValueError(f"source_dir {self.source_dir} is not a directory")
        self.warmpool = warmpool
        self.namespace = namespace
        self.port = port
        self.env_vars = dict(env_vars or {})
        self.ship_packages = ship_packages
        self.extra_modules = list(extra_modules)
        self.exclude_packages = list(exclude_packages) if exclude_packages is not None else None
        self.python = python
        self.sandbox_ready_timeout = sandbox_ready_timeout
        self.sandbox: Sandbox | None = sandbox
        self._owns_sandbox = sandbox is None
        self._client = client
        self._owns_client = False
        self._process: Any = None
        self._forwarder: Forwarder | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._log_lock = threading.Lock()
        self.base_url: str | None = None
        self._libs = False

    # -- RuntimeProvider -------------------------------------------------------------------

    def start(self, port: int | None = None, env_vars: dict[str, str] | None = None,
              **kwargs: Any) -> str:
        """Claims (or uses) the sandbox, uploads the code and packages, starts uvicorn in the
        background and returns the base URL. Call :meth:`wait_for_ready` before connecting."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if self.base_url is not None:
            return self.base_url
        if port is not None:
            self.port = port
        if env_vars:
            self.env_vars.update(env_vars)
        try:
            sb = self._claim()
            self._prepare(sb)
            self._launch(sb)
            name = f"port {self.port} of sandbox {sb.namespace}/{sb.sandbox_id}"
            self._forwarder = Forwarder(lambda: sb.port_endpoint(self.port), name)
        except BaseException:
            self.stop()
            raise
        self.base_url = self._forwarder.url
        return self.base_url

    def wait_for_ready(self, timeout_s: float = 60.0) -> None:
        """Polls ``/health`` through the forwarder until it answers 200."""
        if self.base_url is None or self.sandbox is None:
            raise EnvServerError("the environment server is not started: call start() first")
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self._process is not None and not self._process.is_running():
                raise self._error("the environment server exited before it was ready")
            try:
                with _DIRECT.open(f"{self.base_url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.2)
        raise self._error(f"the environment server did not answer /health within {timeout_s:g} s "
                          f"(last: {last}); pass a larger timeout_s if it starts slowly")

    def stop(self) -> None:
        """Stops the forwarder and the server; deletes the sandbox if this provider claimed
        it. Idempotent."""
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        if self._process is not None:
            try:
                if self._process.is_running():
                    self._process.kill()
            except SandboxError:
                pass
            self._process = None
        if self.sandbox is not None and self._owns_sandbox:
            try:
                self.sandbox.terminate()
            except SandboxError:
                pass
            self.sandbox = None
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
        self.base_url = None

    # -- steps -----------------------------------------------------------------------------

    def _claim(self) -> Sandbox:
        if self.sandbox is not None:
            return self.sandbox
        if self._client is None:
            self._client = SandboxClient()
            self._owns_client = True
        assert self.warmpool is not None
        self.sandbox = self._client.create_sandbox(
            warmpool=self.warmpool, namespace=self.namespace,
            sandbox_ready_timeout=self.sandbox_ready_timeout,
            labels={"app.kubernetes.io/component": "openenv"})
        return self.sandbox

    def _prepare(self, sb: Sandbox) -> None:
        where = f"sandbox {sb.namespace}/{sb.sandbox_id}"
        r = sb.commands.run([self.python, "-c",
                             "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=60)
        if not r.ok:
            raise EnvServerError(
                f"{where} has no working {self.python} ({r.stderr.strip() or r.exit_code}); "
                "use an image with Python 3.10+ (the example image has Debian's python3)",
                sb.sandbox_id)
        remote_version = r.stdout.strip()
        if self.source_dir is not None:
            staged_src = Path(_copy_tree(self.source_dir))
            try:
                sb.files.upload_dir(staged_src, f"{REMOTE_DIR}/app")
            finally:
                shutil.rmtree(staged_src.parent, ignore_errors=True)
        else:
            sb.files.mkdir(f"{REMOTE_DIR}/app")
        if not self.ship_packages:
            return
        site, system, extensions = _staged_packages(
            self.app, self.source_dir, tuple(self.extra_modules),
            tuple(self.exclude_packages) if self.exclude_packages is not None else None)
        local_version = "{}.{}".format(*sys.version_info[:2])
        if remote_version != local_version and extensions:
            raise EnvServerError(
                f"{where} runs Python {remote_version} but this host's packages are for "
                f"Python {local_version} and include compiled modules (pydantic-core, ...); "
                f"run the host side under Python {remote_version}, or use an image with the "
                "server's packages installed and pass ship_packages=False", sb.sandbox_id)
        sb.files.upload_dir(site, f"{REMOTE_DIR}/site", timeout=600)
        # System libraries the compiled modules need and the image lacks (a slim image may
        # have libc but not libgcc_s or librt): this host's copies, on LD_LIBRARY_PATH.
        if system:
            probe = sb.commands.run(
                [self.python, "-c", "import os, sys; print('\\n'.join("
                 "p for p in sys.argv[1:] if not os.path.exists(p)))", *map(str, system)],
                timeout=60)
            missing = [Path(p) for p in probe.stdout.split()]
            for lib in missing:
                sb.files.write(f"{REMOTE_DIR}/lib/{lib.name}", lib.read_bytes(), mode="0755")
            self._libs = bool(missing)

    def _launch(self, sb: Sandbox) -> None:
        pythonpath = f"{REMOTE_DIR}/app:{REMOTE_DIR}/site" if self.ship_packages \
            else f"{REMOTE_DIR}/app"
        if self._libs:
            env_libs = {"LD_LIBRARY_PATH": f"{REMOTE_DIR}/lib"}
        else:
            env_libs = {}
        env = {**env_libs, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1", **self.env_vars}
        self._process = sb.commands.start(
            [self.python, "-m", "uvicorn", self.app, "--host", "0.0.0.0",
             "--port", str(self.port), "--log-level", "warning"],
            env=env, cwd=f"{REMOTE_DIR}/app", on_stdout=self._record, on_stderr=self._record)

    def _record(self, text: str) -> None:
        with self._log_lock:
            self._log.extend(text.splitlines())

    def output(self) -> str:
        """The server's last lines of output (stdout and stderr)."""
        with self._log_lock:
            return "\n".join(self._log)

    def _error(self, what: str) -> EnvServerError:
        sb = self.sandbox
        name = f"{sb.namespace}/{sb.sandbox_id}" if sb is not None else "(none)"
        tail = self.output()[-3000:] or "(no output)"
        if self._owns_sandbox:
            look = ("this provider deletes the sandbox it claimed when it stops; to look inside "
                    "after a failure, claim one yourself and pass sandbox=")
        else:
            look = (f"`agent-sandbox exec {sb.claim_name if sb else '<claim>'} -- sh` to look "
                    "inside")
        return EnvServerError(
            f"{what}: uvicorn {self.app} on port {self.port} of sandbox {name}. Check that the "
            f"app imports with the uploaded code and packages (the output below); {look}.\n"
            f"--- server output ---\n{tail}", sb.sandbox_id if sb else None)


# The packages of an app, traced and copied once per process: an RL run starts many servers of
# the same environment. Removed at exit.
_STAGED: dict[tuple[Any, ...], tuple[Path, list[Path], bool]] = {}
_STAGED_LOCK = threading.Lock()


def _staged_packages(app: str, source_dir: Path | None, extra: tuple[str, ...],
                     exclude: tuple[str, ...] | None) -> tuple[Path, list[Path], bool]:
    key = (app, source_dir, extra, exclude)
    with _STAGED_LOCK:
        if key not in _STAGED:
            paths = imported_paths(app, source_dir, list(extra),
                                   list(exclude) if exclude is not None else None)
            bundled, system = native_libraries(paths)
            site = stage(paths + bundled)
            atexit.register(shutil.rmtree, site, True)
            _STAGED[key] = (site, system, has_extensions(paths))
        return _STAGED[key]


def _copy_tree(src: Path) -> str:
    out = Path(tempfile.mkdtemp(prefix="openenv-app-")) / "app"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".venv",
                                                             ".git"))
    return str(out)


def start_env(client_cls: type[C], app: str, *, timeout_s: float = 120.0,
              **provider_args: Any) -> C:
    """Starts the environment server in a sandbox (:class:`SandboxEnvProvider` with
    ``provider_args``) and returns ``client_cls`` (an OpenEnv ``EnvClient`` subclass) for it,
    not yet connected: use ``async with`` or ``.sync()``. Closing the client stops the server
    and deletes the sandbox the provider claimed."""
    provider = SandboxEnvProvider(app, **provider_args)
    base_url = provider.start()
    try:
        provider.wait_for_ready(timeout_s)
    except BaseException:
        provider.stop()
        raise
    client: C = client_cls(base_url=base_url, provider=provider)
    return client
