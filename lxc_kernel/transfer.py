"""File transfer through the attach channel (``%push``/``%pull``): byte-exact, streamed, any storage backend.

Like the session, this takes a ``launcher`` (an argv inside the target -> a host argv) and knows nothing
of LXC. The file travels over the pipes of one non-PTY attach (``cat > "$1"`` / ``cat -- "$1"``): a PTY
would translate line endings and drop control bytes, and pipes ran 30x faster (LXC-FACTS). Files are
streamed from and to disk, never held in memory, and the container path is an argument (``$1``), never
shell text.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

from .bounded import GiB, HelperTimeout, KiB, OutputTooLarge, copy_bounded, format_limit, run_bounded
from .errors import LxcKernelError
from .spawn import Launcher

# Only a regular file has an end: a path the container links to /dev/zero or a FIFO would stream or block
# for the whole timeout (a pull of /dev/zero wrote to the host disk for 600 s, issue 7). A missing path
# falls through to cat, whose own message ("No such file or directory") is the clearest.
_REGULAR = 'if [ -e "$1" ] && [ ! -f "$1" ]; then printf "%s: not a regular file\\n" "$1" >&2; exit 1; fi; '
# Writes stdin to $1, then prints the size it wrote, so the kernel can check that every byte arrived.
_PUSH = _REGULAR + 'cat > "$1" && wc -c < "$1"'
_PULL = _REGULAR + 'exec cat -- "$1"'

DEFAULT_MAX_PULL = 1 * GiB  # bytes a %pull writes to the host unless --max says otherwise
_REPLY_LIMIT = 4 * KiB  # push's stdout is one number


class TransferError(LxcKernelError):
    """A push or pull failed; the message carries what the container side said."""


@dataclass(frozen=True)
class Transferred:
    source: str
    dest: str
    size: int
    seconds: float

    def describe(self, verb: str) -> str:
        rate = self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return f"{verb} {self.source} -> {self.dest}: {format_size(self.size)} ({self.size} bytes) " \
               f"in {self.seconds:.2f} s ({rate:.1f} MB/s)"


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _check_container_path(path: str) -> str:
    if not path or "\0" in path:
        raise TransferError(f"invalid container path {path!r}")
    return path


def push(launcher: Launcher, host_path: str, container_path: str, timeout: float = 600.0) -> Transferred:
    """Copy the host file ``host_path`` to ``container_path`` (created or truncated)."""
    _check_container_path(container_path)
    try:
        size = os.stat(host_path).st_size
        src = open(host_path, "rb")  # the child reads it directly: no copy through Python
    except OSError as exc:
        raise TransferError(f"cannot read {host_path}: {exc.strerror}") from exc
    t0 = time.monotonic()
    with src:
        try:
            proc = run_bounded(
                launcher(["/bin/sh", "-c", _PUSH, "lxck-push", container_path]),
                stdin=src, timeout=timeout, stdout_limit=_REPLY_LIMIT,
                what=f"the container's reply to the push to {container_path}",
            )
        except HelperTimeout as exc:
            raise TransferError(f"push to {container_path} took longer than {timeout:g} s") from exc
        except OutputTooLarge as exc:
            raise TransferError(f"push to {container_path}: {exc}") from exc
    seconds = time.monotonic() - t0
    said = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise TransferError(f"push to {container_path} failed (exit {proc.returncode}): {said or 'no message'}")
    written = proc.stdout.decode(errors="replace").split()
    if not written or not written[-1].isdigit() or int(written[-1]) != size:
        raise TransferError(f"push to {container_path}: sent {size} bytes but the container has "
                            f"{written[-1] if written else 'no'} bytes")
    return Transferred(host_path, container_path, size, seconds)


def pull(
    launcher: Launcher, container_path: str, host_path: str, timeout: float = 600.0,
    max_bytes: int = DEFAULT_MAX_PULL,
) -> Transferred:
    """Copy the regular file ``container_path`` to the host file ``host_path``, at most ``max_bytes``
    of it; a failed pull (too large, not a regular file, timeout) leaves no partial file."""
    _check_container_path(container_path)
    if max_bytes <= 0:
        raise TransferError(f"pull of {container_path}: the size cap must be positive, not {max_bytes}")
    directory = os.path.dirname(os.path.abspath(host_path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lxck-pull-", dir=directory)
    except OSError as exc:
        raise TransferError(f"cannot write into {directory}: {exc.strerror}") from exc
    t0 = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            proc = copy_bounded(
                launcher(["/bin/sh", "-c", _PULL, "lxck-pull", container_path]), out,
                max_bytes=max_bytes, timeout=timeout, what=container_path,
            )
        if proc.returncode != 0:
            said = proc.stderr.decode(errors="replace").strip()
            raise TransferError(f"pull of {container_path} failed (exit {proc.returncode}): {said or 'no message'}")
        size = os.stat(tmp).st_size
        os.replace(tmp, host_path)
    except HelperTimeout as exc:
        os.unlink(tmp)
        raise TransferError(f"pull of {container_path} took longer than {timeout:g} s") from exc
    except OutputTooLarge as exc:
        os.unlink(tmp)
        raise TransferError(f"pull of {container_path}: the file is larger than {format_limit(max_bytes)}, "
                            "the most this pull writes; stopped, and nothing was kept "
                            "(a larger cap: `%pull --max SIZE`)") from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Transferred(container_path, host_path, size, time.monotonic() - t0)
