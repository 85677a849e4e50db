"""Ray actors and tasks whose code runs in agent-sandbox sandboxes from a warm pool.

    Actor = sandbox_actor()
    actors = [Actor.remote("python-pool") for _ in range(4)]
    results = ray.get([a.run.remote("python3 rollout.py") for a in actors])

    squares = map_in_sandboxes(lambda sb, i: sb.commands.run(f"echo $(({i}*{i}))").stdout,
                               range(8), "python-pool")
"""

from ._actor import DEFAULT_CLAIM_LIFETIME, SandboxActor, map_in_sandboxes, sandbox_actor

__version__ = "0.1.0"

__all__ = ["DEFAULT_CLAIM_LIFETIME", "SandboxActor", "map_in_sandboxes", "sandbox_actor",
           "__version__"]
