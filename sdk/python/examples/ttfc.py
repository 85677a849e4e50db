"""Time to first command: claims a sandbox from a warm pool and times claim create -> the first
stdout bytes of `echo` through the SDK, for a number of iterations on an instance at rest (each
sandbox deleted and the pool given time to refill between iterations). The first iteration warms
the connections and is not counted.

    python3 sdk/python/examples/ttfc.py [pool] [iterations] [rest seconds]
"""

import sys
import time

from agent_sandbox_sdk import SandboxClient


def main() -> None:
    pool = sys.argv[1] if len(sys.argv) > 1 else "python-pool"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rest = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    ms: list[float] = []
    with SandboxClient() as client:
        for i in range(n + 1):
            start = time.perf_counter()
            first = [0.0]

            def on_stdout(_: str) -> None:
                if not first[0]:
                    first[0] = time.perf_counter() - start

            sb = client.create_sandbox(warmpool=pool)
            sb.commands.run("echo hi", on_stdout=on_stdout)
            sb.terminate()
            if i > 0:
                ms.append(first[0] * 1000)
            time.sleep(rest)
    ms.sort()

    def q(p: float) -> float:
        return ms[round(p * (len(ms) - 1))]

    print(f"python: n={len(ms)} p50={q(0.5):.1f} p90={q(0.9):.1f} min={ms[0]:.1f} "
          f"max={ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
