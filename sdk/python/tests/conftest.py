"""Session fixture: a live ``agent-sandbox up`` on non-default loopback addresses with a fresh
data directory, the example image (built from this machine's Debian packages) imported, and a
template plus a warm pool made through the SDK. Teardown deletes everything the tests created,
waits for the Pods to go, then stops ``up`` and removes its directories."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sandbox_sdk import SandboxClient, SandboxEmbeddedConnectionConfig
from agent_sandbox_sdk._kube import KubeApi

REPO = Path(__file__).resolve().parents[3]
IMAGE = "localhost/agent-sandbox/python:latest"
TEMPLATE = "python"
POOL = "python-pool"
POOL_REPLICAS = 2
API = "127.0.0.1:16443"
ROUTER = "127.0.0.1:18080"
METRICS = "127.0.0.1:19091"


def _binary() -> Path:
    env = os.environ.get("AGENT_SANDBOX_BIN")
    if env:
        return Path(env)
    b = REPO / "target" / "debug" / "agent-sandbox"
    newest = 0.0
    for d in (REPO / "crates",):
        for p in d.rglob("*"):
            if p.suffix in (".rs", ".toml", ".proto", ".py", ".sh", ".js") and "target" not in p.parts:
                newest = max(newest, p.stat().st_mtime)
    if not b.exists() or b.stat().st_mtime < newest:
        print(f"building {b} (missing or older than the sources)", file=sys.stderr)
        subprocess.run(["cargo", "build", "-p", "agent-sandbox"], cwd=REPO, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(REPO / "target")},
                       timeout=3000)
    return b


# A bridge and subnet of the tests' own, so that they never meet another instance's network.
BRIDGE = os.environ.get("AGENT_SANDBOX_TEST_BRIDGE", "asbxsdk")
def _free_subnet() -> str:
    """The first of 10.89-10.99/16 that no host route covers (a leftover bridge may hold one).
    The tests' own bridge, left by an interrupted run, goes first."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=False).stdout
    for second in range(89, 100):
        if f"10.{second}." not in routes:
            return f"10.{second}.0.0/16"
    return "10.89.0.0/16"


POD_SUBNET = os.environ.get("AGENT_SANDBOX_TEST_POD_SUBNET") or _free_subnet()


def _wait_pods_gone(kube: KubeApi, timeout: float) -> list[str]:
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


@pytest.fixture(scope="session")
def up() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the tests start `agent-sandbox up`, which needs root")
    binary = _binary()
    work = Path(tempfile.mkdtemp(prefix="asdk-test-"))
    data, run = work / "data", work / "run"
    data.mkdir()
    run.mkdir()
    log_path = work / "up.log"
    # The example image: busybox, python3 and sandboxd (this build) as the entrypoint.
    # With node when the machine has it, so that JavaScript cells run too.
    subprocess.run([sys.executable, str(REPO / "examples" / "image" / "build.py"),
                    "--sandboxd", str(binary), "--out", str(work / "image")]
                   + (["--with-node"] if shutil.which("node") else []),
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    subprocess.run([str(binary), "image", "import", str(work / "image"), "--as", IMAGE,
                    "--data-dir", str(data)], check=True, timeout=300, stdout=subprocess.DEVNULL)
    shutil.rmtree(work / "image", ignore_errors=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(binary), "up", "--data-dir", str(data), "--run-dir", str(run),
         "--api-listen", API, "--router-listen", ROUTER, "--metrics-listen", METRICS,
         "--pod-subnet", POD_SUBNET, "--bridge", BRIDGE],
        stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    ready = False
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        log.write(line)
        log.flush()
        if line.startswith("ready;"):
            ready = True
            break
    if not ready:
        proc.kill()
        proc.wait(10)
        log.close()
        tail = log_path.read_text()[-3000:]
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"agent-sandbox up did not report ready:\n{tail}")

    # Keep draining stdout so that `up` never blocks on a full pipe.
    import threading

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
    threading.Thread(target=drain, daemon=True).start()

    old_env = os.environ.get("AGENT_SANDBOX_DATA_DIR")
    os.environ["AGENT_SANDBOX_DATA_DIR"] = str(data)
    admin = SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=data))
    try:
        admin.create_template(TEMPLATE, IMAGE)
        admin.create_warm_pool(POOL, TEMPLATE, replicas=POOL_REPLICAS, wait=True, timeout=120)
        yield data
    finally:
        kube = admin.connection.kube
        try:
            for kind in ("sandboxclaims", "sandboxwarmpools", "sandboxes"):
                for o in kube.list(kind, None).get("items", []):
                    kube.delete(kind, o["metadata"]["namespace"], o["metadata"]["name"])
            for o in kube.list("sandboxtemplates", None).get("items", []):
                kube.delete("sandboxtemplates", o["metadata"]["namespace"], o["metadata"]["name"])
            left = _wait_pods_gone(kube, 90)
            if left:
                print(f"warning: Pods still present at teardown: {left}", file=sys.stderr)
        finally:
            admin.close()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
            # The bridge outlives `up` (as CNI bridges do); the tests' own is removed.
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
            if old_env is None:
                os.environ.pop("AGENT_SANDBOX_DATA_DIR", None)
            else:
                os.environ["AGENT_SANDBOX_DATA_DIR"] = old_env
            if os.environ.get("AGENT_SANDBOX_TEST_KEEP"):
                print(f"kept {work}", file=sys.stderr)
            else:
                # Anything still mounted below (a sandbox that did not stop) keeps its files.
                mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
                          if ln.split()[1].startswith(str(work))]
                if mounts:
                    print(f"warning: still mounted, left in place: {mounts}", file=sys.stderr)
                else:
                    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def client(up: Path) -> Iterator[SandboxClient]:
    """A client that deletes every sandbox it created when the test ends."""
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c:
        yield c


@pytest.fixture(scope="module")
def sandbox(up: Path) -> Iterator[object]:
    """One warm-pool sandbox shared by the tests of a module."""
    with SandboxClient(SandboxEmbeddedConnectionConfig(data_dir=up)) as c:
        sb = c.create_sandbox(warmpool=POOL, sandbox_ready_timeout=60)
        yield sb
