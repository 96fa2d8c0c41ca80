"""Per-kernel throwaway overlay copies (``--ephemeral BASE``): naming, creation, and cleanup of orphans.

Each kernel gets ``BASE-eph-<kernel pid>-<random>``, an ``lxc-copy -e`` overlay copy that LXC destroys
when it stops. The kernel stops it at shutdown and restart. A SIGKILLed kernel cannot, so every kernel
that starts in ephemeral mode first removes copies of BASE whose kernel PID is no longer an lxc-kernel.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass

from .bounded import KiB, read_capped
from .errors import ConfigError, LxcCommandError, LxcKernelError
from .lxc import Container, State, Tools, list_names, validate_name

SEPARATOR = "-eph-"
_CMDLINE_LIMIT = 16 * KiB


@dataclass(frozen=True)
class CopyName:
    base: str
    pid: int
    suffix: str

    def __str__(self) -> str:
        return f"{self.base}{SEPARATOR}{self.pid}-{self.suffix}"


def new_name(base: str, pid: int | None = None) -> str:
    """A recognisable, unique name for this kernel's copy of ``base``."""
    validate_name(base, "ephemeral base")
    name = str(CopyName(base, os.getpid() if pid is None else pid, secrets.token_hex(3)))
    if len(name) > 64:
        raise ConfigError(f"ephemeral base name {base!r} is too long for a copy name (at most 64 characters)")
    return validate_name(name)


def parse_name(base: str, name: str) -> CopyName | None:
    """Pure: the parts of a copy name of ``base``, or None if ``name`` is not one."""
    m = re.fullmatch(re.escape(base) + re.escape(SEPARATOR) + r"(\d+)-([0-9a-f]{6})", name)
    return CopyName(base, int(m.group(1)), m.group(2)) if m else None


def kernel_alive(pid: int) -> bool:
    """True if ``pid`` is a running lxc-kernel: a PID that was reused by another program counts as dead."""
    # A prefix is enough: "-m lxc_kernel" comes right after the interpreter, and the PID came from a
    # container name, so whatever runs under it now may have a command line of megabytes.
    cmdline = read_capped(f"/proc/{pid}/cmdline", _CMDLINE_LIMIT)
    return cmdline is not None and b"lxc_kernel" in cmdline


def orphans(base: str, names: list[str]) -> list[str]:
    """Copies of ``base`` among ``names`` whose owning kernel is gone."""
    found = []
    for name in names:
        parsed = parse_name(base, name)
        if parsed is not None and parsed.pid != os.getpid() and not kernel_alive(parsed.pid):
            found.append(name)
    return found


def remove(container: Container) -> None:
    """Stop an ephemeral copy (LXC then destroys it); destroy it ourselves if it was not ephemeral after all."""
    state = container.state()
    if state is State.MISSING:
        return
    if state in (State.FROZEN, State.FREEZING):
        container.unfreeze()  # a frozen task cannot die
    if state is not State.STOPPED:
        try:
            container.stop(kill=True)
        except LxcCommandError:
            if container.state() not in (State.STOPPED, State.MISSING):
                raise
    # LXC removes an ephemeral copy just after it stops; give it a moment before destroying it ourselves.
    if container.wait(State.MISSING, 2.0) is not State.MISSING:
        container.destroy(snapshots=True)


def cleanup_orphans(base: str, tools: Tools) -> list[str]:
    """Remove the copies of ``base`` left behind by dead kernels; return their names."""
    removed = []
    for name in orphans(base, list_names(tools)):
        try:
            remove(Container(name, tools))
            removed.append(name)
        except LxcKernelError:
            continue  # another kernel may be removing it at the same moment; the next start retries
    return removed


def create(base: str, tools: Tools, timeout: float = 30.0) -> Container:
    """Start this kernel's ephemeral copy of ``base``. The base may be running (``lxc-copy -a``)."""
    source = Container(base, tools)
    state = source.state()
    if state is State.MISSING:
        raise ConfigError(f"ephemeral base {base!r} does not exist: create it first (`%lxc create {base}`)")
    return source.ephemeral_copy(new_name(base), allow_running=state is not State.STOPPED, timeout=timeout)
