#!/usr/bin/env python3
"""Quick start: claim a sandbox from a warm pool, run a command and some Python, write and read
a file, and print how long each step took.

    python3 sdk/python/examples/quickstart.py [POOL] [NAMESPACE]     # default: python-pool default

It finds a local `agent-sandbox up` by itself (its data directory: $AGENT_SANDBOX_DATA_DIR or
/var/lib/agent-sandbox). For a cluster, set AGENT_SANDBOX_ROUTER_URL (and
AGENT_SANDBOX_ROUTER_TOKEN) with KUBECONFIG.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent_sandbox_sdk import SandboxClient, SandboxError


@contextmanager
def step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  {name:<28} {(time.perf_counter() - start) * 1000:8.1f} ms")


def main() -> int:
    pool = sys.argv[1] if len(sys.argv) > 1 else "python-pool"
    namespace = sys.argv[2] if len(sys.argv) > 2 else "default"
    total = time.perf_counter()
    try:
        with step("connect"):
            client = SandboxClient()
        with client:
            with step(f"claim from {pool}"):
                sandbox = client.create_sandbox(warmpool=pool, namespace=namespace,
                                                sandbox_ready_timeout=120)
            with step("run a command"):
                r = sandbox.commands.run("echo \"Hello from $(hostname)\"; uname -sr")
            print("    " + r.stdout.strip().replace("\n", "\n    "))
            with step("run Python (run_code)"):
                c = sandbox.run_code("import platform\nprint(platform.python_version())")
            print(f"    Python {c.stdout.strip()}")
            with step("write a file"):
                sandbox.files.write("hello.py", 'print("Hello from a file")\n')
            with step("read it back"):
                data = sandbox.files.read("hello.py")
            assert data == b'print("Hello from a file")\n'
            with step("run it"):
                r = sandbox.commands.run("python3 hello.py")
            print("    " + r.stdout.strip())
            with step("delete the sandbox"):
                sandbox.terminate()
    except SandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"  {'total':<28} {(time.perf_counter() - total) * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
