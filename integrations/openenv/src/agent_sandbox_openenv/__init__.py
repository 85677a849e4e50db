"""Run OpenEnv environment servers inside agent-sandbox sandboxes.

    from agent_sandbox_openenv import start_env

    env = start_env(EchoEnv, "server.app:app", source_dir="echo_env", warmpool="python-pool")
    with env.sync() as client:
        client.reset()
"""

from ._deps import DependencyError
from ._forward import Forwarder, ForwardError
from ._provider import EnvServerError, SandboxEnvProvider, start_env

__version__ = "0.1.0"

__all__ = ["DependencyError", "EnvServerError", "ForwardError", "Forwarder",
           "SandboxEnvProvider", "start_env", "__version__"]
