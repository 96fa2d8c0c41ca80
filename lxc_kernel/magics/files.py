"""Files between the kernel's host and the container: ``%push`` and ``%pull``, through the backend."""

from __future__ import annotations

import os

from .. import transfer
from ..attach import AttachOptions
from ..lxc import State
from .core import Host, MagicParser, UsageError, magic, require_state, say


def _options(host: Host) -> AttachOptions:
    """Transfers attach like the shell does (same user, namespaces, lxcpath), over the backend's pipe
    channel instead of a PTY."""
    options = host.attach_options()
    require_state(host, host.container, State.RUNNING)
    return options


def _container_path(host: Host, path: str) -> str:
    """A relative container path is relative to the shell's working directory (or the start one)."""
    if path.startswith("/"):
        return path
    session = host.shell_session
    base = ""
    if session is not None and session.alive:
        out: list[str] = []
        result = session.run("pwd", lambda stream, text: out.append(text) if stream == "stdout" else None,
                             timeout=10)
        if result.status == 0:
            base = "".join(out).strip()
    if not base.startswith("/"):
        base = host.cwd or host.attach_options().home
    return os.path.join(base, path)


def _max_size(p: MagicParser, text: str | None) -> int:
    """``--max SIZE`` of %push and %pull: a positive size, 1 GiB when not given."""
    from ..budget import parse_size

    if text is None:
        return transfer.DEFAULT_MAX
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{p.prog} --max: {exc}\n{p.format_usage().strip()}") from None
    if size <= 0:
        # A transfer always has a cap, however large: a pull's file is the container's to choose.
        raise UsageError(f"{p.prog} --max: give a size such as 500k or 20G, not {text!r}")
    return size


@magic("push")
def push_magic(host: Host, args: list[str]) -> None:
    """%push [--max SIZE] HOST_PATH CONTAINER_PATH: copy a file from the kernel's host into the container.

    Byte-exact for any file (binary, any size), through the attach channel, so it works for every
    storage backend including overlay clones; the file is written as the attached user. HOST_PATH must
    be a regular file beneath the transfer root (by default the kernel's working directory, which is
    the notebook's folder; relative paths start there): an absolute path elsewhere, `..` or a symlink
    that leads out of it is refused. At most SIZE bytes are sent (default 1 GiB, as for %pull).
    A relative CONTAINER_PATH is relative to the shell's working directory. CONTAINER_PATH must be a
    regular file or not exist yet. Reports the size and rate; the size is checked on arrival.
    """
    p = MagicParser(prog="%push")
    p.add_argument("--max", metavar="SIZE")
    p.add_argument("host_path")
    p.add_argument("container_path")
    ns = p.parse_args(args)
    max_bytes = _max_size(p, ns.max)
    # The host side is opened (and refused) first, before the container is asked anything.
    with transfer.HostRoot(host.transfer_root).source(ns.host_path, max_bytes) as source:
        dest = _container_path(host, ns.container_path)
        done = host.lifecycle.push(_options(host), source, dest, host.container)
    say(host, done.describe("pushed"))


@magic("pull")
def pull_magic(host: Host, args: list[str]) -> None:
    """%pull [--max SIZE] CONTAINER_PATH HOST_PATH: copy a file from the container to the kernel's host.

    Byte-exact, through the attach channel (any storage backend), read as the attached user. Only a
    regular file is pulled: a device, FIFO or directory is refused ("not a regular file"). At most
    SIZE bytes are written (default 1 GiB; 500k, 20M, 5G as in %output): a larger file is refused, not
    cut. A failed pull leaves no partial file. HOST_PATH stays beneath the transfer root as for %push;
    a directory there takes the file under its container name, and an existing file or symlink is
    replaced, never written through. CONTAINER_PATH is resolved as for %push. Reports the size and rate.
    """
    p = MagicParser(prog="%pull")
    p.add_argument("--max", metavar="SIZE")
    p.add_argument("container_path")
    p.add_argument("host_path")
    ns = p.parse_args(args)
    max_bytes = _max_size(p, ns.max)
    name = os.path.basename(ns.container_path.rstrip("/"))
    with transfer.HostRoot(host.transfer_root).target(ns.host_path, name) as target:
        src = _container_path(host, ns.container_path)
        done = host.lifecycle.pull(_options(host), src, target, max_bytes=max_bytes, name=host.container)
    say(host, done.describe("pulled"))


