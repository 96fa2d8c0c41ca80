"""The exception hierarchy: every failure the kernel reports to a user is one of these."""

from __future__ import annotations

import signal
from collections.abc import Sequence


class LxcKernelError(Exception):
    """Base class; the message is written for the notebook user."""


class ConfigError(LxcKernelError):
    """A container name, option or kernelspec value was refused before reaching ``lxc-*``."""


class LxcNotInstalled(LxcKernelError):
    def __init__(self, tool: str) -> None:
        if tool.rsplit("/", 1)[-1] == "sudo":
            # `%attach sudo on` on a host without sudo: not an LXC problem.
            super().__init__("sudo is not installed, so lxc-* cannot run through `sudo -n`: "
                             "install it (`apt-get install sudo`) or turn it off (`%attach sudo off`).")
            return
        super().__init__(
            f"LXC is not installed: {tool!r} was not found on PATH. "
            "Install it with `apt-get install lxc` (Debian/Ubuntu)."
        )


class LxcCommandError(LxcKernelError):
    """An ``lxc-*`` tool failed; carries its argv, return code and its own message."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{argv[0]} exited {returncode}: {stderr.strip() or 'no message'}")


class ContainerNotReady(LxcKernelError):
    """The container is missing, stopped or frozen, so no shell can run in it."""

    def __init__(self, name: str, state: str, advice: str) -> None:
        self.name = name
        self.state = state
        super().__init__(f"container {name!r} is {state}: {advice}")


class ShellExited(LxcKernelError):
    """The shell ended (``exit N``, the container stopped, lxc-attach died)."""

    def __init__(self, status: int | None, detail: str = "") -> None:
        self.status = status
        shown = "an unknown status" if status is None else str(status)
        msg = f"the shell exited with {shown}"
        if status is not None and 128 < status < 128 + 65:
            # 128+N is how a shell (and lxc-attach) report death by signal N; name it, and the usual cause of
            # a SIGKILL nobody typed: the out-of-memory killer of the container's memory limit.
            try:
                sig = signal.Signals(status - 128).name
            except ValueError:
                sig = f"signal {status - 128}"
            msg += f" (128+{status - 128}: what a shell killed by {sig} reports"
            msg += "; the out-of-memory killer, `kill -9`, or a killed lxc-attach)" if sig == "SIGKILL" else ")"
        msg += "; its state (variables, cwd, jobs) is gone"
        super().__init__(f"{msg}. {detail}".strip() if detail else f"{msg}.")


class ShellTimeout(LxcKernelError):
    """The shell did not answer within a deadline (startup, resync after an interrupt)."""
