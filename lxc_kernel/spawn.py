"""How the kernel starts helper processes: the environment they get and the signal reset before exec."""

from __future__ import annotations

import os
import pwd
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


def _own_home() -> str | None:
    """The home of the kernel's user, from the passwd database (not the environment Jupyter passed)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return os.environ.get("HOME")


if os.geteuid() != 0 and (_home := _own_home()):
    # A normal user's lxc-* tools find their containers, config and idmap under HOME (~/.local/share/lxc,
    # ~/.config/lxc): without it they looked in //.local/share/lxc (measured, LXC 5.0.2).
    TOOL_ENV["HOME"] = _home


def reset_child_signals() -> None:
    """Run in the child before exec: the kernel app ignores SIGINT and children inherit that
    (measured, LXC 5.0.2); `cat` and friends also need SIGPIPE back to its default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
