"""How the kernel starts helper processes: the environment they get and the signal reset before exec."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

Launcher = Callable[[Sequence[str]], list[str]]
"""Turns an argv meant for inside the target into a host argv (``lxc-attach ... -- ARGV`` here)."""

# The environment every helper process runs with: the kernel's PATH (to find the tools) and
# nothing else of the kernel's (connection file, tokens, secrets), so nothing leaks through them.
TOOL_ENV = {
    "PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}


def reset_child_signals() -> None:
    """Run in the child before exec: the kernel app ignores SIGINT and children inherit that
    (measured, LXC 5.0.2); `cat` and friends also need SIGPIPE back to its default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
