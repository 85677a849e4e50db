"""The README's quick start: examples/quickstart.py against the session's pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import POOL


def test_quickstart_runs(up: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    out = subprocess.run([sys.executable, str(script), POOL, "default"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "AGENT_SANDBOX_DATA_DIR": str(up)})
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    for line in ("claim from python-pool", "run a command", "Hello from a file", "total"):
        assert line in out.stdout, out.stdout
