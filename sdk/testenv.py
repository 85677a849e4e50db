#!/usr/bin/env python3
"""The live `agent-sandbox up` every SDK's tests run against: started on non-default loopback
addresses with a fresh data directory and a bridge and subnet of its own, the example image
(built from the machine's Debian packages) imported, and a template plus a warm pool made
through the Python SDK. Teardown deletes everything, waits for the Pods to go, stops `up` and
removes its directories.

Used two ways:

* by the Python SDK's pytest session fixture (`Env.start()` / `Env.stop()`), when no `up` is
  given by the environment;
* by `sdk/run-all.sh`, through `python3 sdk/testenv.py serve --env-file FILE`: starts one `up`,
  writes FILE (shell `KEY=value` lines, see `Env.variables`), and tears everything down on
  SIGTERM or SIGINT. The SDK suites then read those variables and leave `up` alone.

Needs root, and the Python SDK importable (`sdk/python/src` is put on the path; PyYAML is its
one dependency).

Environment: AGENT_SANDBOX_BIN (the binary; default <repo>/target/debug/agent-sandbox, built
when missing or older than the sources), AGENT_SANDBOX_TEST_API / _ROUTER / _METRICS (listen
addresses; default 127.0.0.1:16443, :18080, :19091), AGENT_SANDBOX_TEST_BRIDGE (default
asbxsdk), AGENT_SANDBOX_TEST_POD_SUBNET (default: the first free 10.89-10.99/16),
AGENT_SANDBOX_TEST_KEEP=1 (keep the directory for inspection).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sdk" / "python" / "src"))

from agent_sandbox_sdk import SandboxClient, SandboxEmbeddedConnectionConfig  # noqa: E402

IMAGE = "localhost/agent-sandbox/python:latest"
TEMPLATE = "python"
POOL = "python-pool"
POOL_REPLICAS = 2
API = os.environ.get("AGENT_SANDBOX_TEST_API", "127.0.0.1:16443")
ROUTER = os.environ.get("AGENT_SANDBOX_TEST_ROUTER", "127.0.0.1:18080")
METRICS = os.environ.get("AGENT_SANDBOX_TEST_METRICS", "127.0.0.1:19091")
# A bridge and subnet of the tests' own, so that they never meet another instance's network.
BRIDGE = os.environ.get("AGENT_SANDBOX_TEST_BRIDGE", "asbxsdk")


class SetupError(RuntimeError):
    """`up` could not be started or prepared; the message has the end of its log."""


def binary() -> Path:
    env = os.environ.get("AGENT_SANDBOX_BIN")
    if env:
        return Path(env)
    b = REPO / "target" / "debug" / "agent-sandbox"
    newest = 0.0
    for p in (REPO / "crates").rglob("*"):
        if p.suffix in (".rs", ".toml", ".proto", ".py", ".sh", ".js") and "target" not in p.parts:
            newest = max(newest, p.stat().st_mtime)
    if not b.exists() or b.stat().st_mtime < newest:
        print(f"building {b} (missing or older than the sources)", file=sys.stderr)
        subprocess.run(["cargo", "build", "-p", "agent-sandbox"], cwd=REPO, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(REPO / "target")},
                       timeout=3000)
    return b


def free_subnet() -> str:
    """The first of 10.89-10.99/16 that no host route covers (a leftover bridge may hold one).
    The tests' own bridge, left by an interrupted run, goes first."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=False).stdout
    for second in range(89, 100):
        if f"10.{second}." not in routes:
            return f"10.{second}.0.0/16"
    return "10.89.0.0/16"


def _wait_pods_gone(kube: Any, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        # The router's mirror Pods stand for `up` itself and stay while it runs.
        pods = kube.list("pods", None, label_selector="app!=sandbox-router")
        names = [p["metadata"]["name"] for p in pods.get("items", [])]
        if not names:
            return []
        time.sleep(0.25)
    return names


class Env:
    """One running `up` with the example image, template and pool."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="asdk-test-"))
        self.data = self.work / "data"
        self.run = self.work / "run"
        self.log_path = self.work / "up.log"
        self.proc: Optional[subprocess.Popen[str]] = None
        self.admin: Optional[SandboxClient[Any]] = None
        self._log: Any = None

    @property
    def variables(self) -> dict[str, str]:
        """What the SDK suites need to find this `up`."""
        return {
            "AGENT_SANDBOX_DATA_DIR": str(self.data),
            "AGENT_SANDBOX_TEST_DATA_DIR": str(self.data),
            "AGENT_SANDBOX_TEST_POOL": POOL,
            "AGENT_SANDBOX_TEST_TEMPLATE": TEMPLATE,
            "AGENT_SANDBOX_TEST_IMAGE": IMAGE,
            "AGENT_SANDBOX_TEST_ROUTER_URL": f"http://{ROUTER}",
            "AGENT_SANDBOX_TEST_KUBECONFIG": str(self.data / "kubeconfig"),
        }

    def start(self) -> Env:
        b = binary()
        self.data.mkdir()
        self.run.mkdir()
        # The example image: busybox, python3 and sandboxd (this build) as the entrypoint.
        # With node when the machine has it, so that JavaScript cells run too.
        subprocess.run([sys.executable, str(REPO / "examples" / "image" / "build.py"),
                        "--sandboxd", str(b), "--out", str(self.work / "image")]
                       + (["--with-node"] if shutil.which("node") else []),
                       check=True, timeout=300, stdout=subprocess.DEVNULL)
        subprocess.run([str(b), "image", "import", str(self.work / "image"), "--as", IMAGE,
                        "--data-dir", str(self.data)], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.work / "image", ignore_errors=True)
        subnet = os.environ.get("AGENT_SANDBOX_TEST_POD_SUBNET") or free_subnet()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(b), "up", "--data-dir", str(self.data), "--run-dir", str(self.run),
             "--api-listen", API, "--router-listen", ROUTER, "--metrics-listen", METRICS,
             "--pod-subnet", subnet, "--bridge", BRIDGE],
            stdout=subprocess.PIPE, stderr=self._log, text=True, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self._log.write(line)
            self._log.flush()
            if line.startswith("ready;"):
                ready = True
                break
        if not ready:
            self.proc.kill()
            self.proc.wait(10)
            self._log.close()
            tail = self.log_path.read_text()[-3000:]
            shutil.rmtree(self.work, ignore_errors=True)
            raise SetupError(f"agent-sandbox up did not report ready:\n{tail}")

        # Keep draining stdout so that `up` never blocks on a full pipe.
        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._log.write(line)
        threading.Thread(target=drain, daemon=True).start()

        self.admin = SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=self.data))
        try:
            self.admin.create_template(TEMPLATE, IMAGE)
            self.admin.create_warm_pool(POOL, TEMPLATE, replicas=POOL_REPLICAS, wait=True,
                                        timeout=120)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if self.admin is not None:
                kube = self.admin.connection.kube
                for kind in ("sandboxclaims", "sandboxwarmpools", "sandboxes"):
                    for o in kube.list(kind, None).get("items", []):
                        kube.delete(kind, o["metadata"]["namespace"], o["metadata"]["name"])
                for o in kube.list("sandboxtemplates", None).get("items", []):
                    kube.delete("sandboxtemplates", o["metadata"]["namespace"],
                                o["metadata"]["name"])
                left = _wait_pods_gone(kube, 90)
                if left:
                    print(f"warning: Pods still present at teardown: {left}", file=sys.stderr)
        finally:
            if self.admin is not None:
                self.admin.close()
                self.admin = None
            if self.proc is not None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
                self.proc = None
            if self._log is not None:
                self._log.close()
                self._log = None
            # The bridge outlives `up` (as CNI bridges do); the tests' own is removed.
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
            if os.environ.get("AGENT_SANDBOX_TEST_KEEP"):
                print(f"kept {self.work}", file=sys.stderr)
            else:
                # Anything still mounted below (a sandbox that did not stop) keeps its files.
                mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
                          if ln.split()[1].startswith(str(self.work))]
                if mounts:
                    print(f"warning: still mounted, left in place: {mounts}", file=sys.stderr)
                else:
                    shutil.rmtree(self.work, ignore_errors=True)


def serve(env_file: Path) -> int:
    """Starts one `up`, writes the variables to ``env_file``, and tears down on SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    env = Env()
    try:
        env.start()
    except (SetupError, subprocess.CalledProcessError) as e:
        print(f"testenv: {e}", file=sys.stderr)
        return 1
    try:
        tmp = env_file.with_suffix(".tmp")
        tmp.write_text("".join(f"export {k}={shlex.quote(v)}\n"
                               for k, v in env.variables.items()))
        tmp.rename(env_file)
        print(f"testenv: agent-sandbox up ready, data directory {env.data}, log {env.log_path}",
              file=sys.stderr)
        while not stop.wait(1.0):
            if env.proc is not None and env.proc.poll() is not None:
                print(f"testenv: agent-sandbox up exited with {env.proc.returncode}; see "
                      f"{env.log_path}", file=sys.stderr)
                return 1
    finally:
        env.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start one up, write the env file, stop on SIGTERM")
    s.add_argument("--env-file", type=Path, required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("testenv: needs root (agent-sandbox up runs sandboxes)", file=sys.stderr)
        return 1
    return serve(args.env_file)


if __name__ == "__main__":
    sys.exit(main())
