"""Client extensions, under upstream's module paths."""

from .computer_use import ComputerUseSandboxClient, SandboxWithComputerUseSupport

__all__ = ["ComputerUseSandboxClient", "SandboxWithComputerUseSupport"]
