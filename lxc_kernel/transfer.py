"""File transfer through the attach channel (``%push``/``%pull``): byte-exact, streamed, any storage backend.

Like the session, this takes a ``launcher`` (an argv inside the target -> a host argv) and knows nothing
of LXC. The file travels over the pipes of one non-PTY attach (``cat > "$1"`` / ``cat -- "$1"``): a PTY
would translate line endings and drop control bytes, and pipes ran 30x faster (measured, LXC 5.0.2). Files are
streamed from and to disk, never held in memory, and the container path is an argument (``$1``), never
shell text.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

DEFAULT_MAX = 1 * GiB  # bytes a %push sends or a %pull writes unless --max says otherwise
DEFAULT_MAX_PULL = DEFAULT_MAX
_REPLY_LIMIT = 4 * KiB  # push's stdout is one number
_PULL_PREFIX = ".lxck-pull-"


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


def format_cgroup_bytes(value: int | None) -> str:
    """A byte count from a cgroup or instance limit: "?" when unknown, "unlimited" for none (cgroup v1 shows
    "no limit" as a number near 2**63, and some tools print -1)."""
    if value is None:
        return "?"
    if value < 0 or value >= 2**62:
        return "unlimited"
    return format_size(value)


def _check_container_path(path: str) -> str:
    if not path or "\0" in path:
        raise TransferError(f"invalid container path {path!r}")
    return path


# -- the host side: every file stays beneath the transfer root ---------------------------------------
# A cell names the host path, and the kernel may be root: `%push /etc/shadow x` read it and `%pull x
# /etc/cron.d/evil` wrote it (issue 8). Checking a path and then opening it races with anyone who can
# swap a component for a symlink in between, so the path is resolved by the kernel itself, relative to
# an open fd of the root: openat2(2) with RESOLVE_BENEATH refuses `..`, absolute symlinks and symlinks
# that climb out, atomically. Where openat2 is missing (Linux < 5.6, or a seccomp filter that says
# ENOSYS), the path is walked one component at a time with O_NOFOLLOW, and no symlink is followed.

_SYS_OPENAT2 = 437  # one number on every architecture: openat2 came with the unified syscall table (5.6)
_RESOLVE_NO_MAGICLINKS = 0x02  # linux/openat2.h: no /proc/PID/fd/N style jumps
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2 = True


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    for _ in range(16):
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(path)),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):  # EAGAIN: a rename elsewhere raced the lookup; try again
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _walk(dir_fd: int, path: str, flags: int) -> int:
    """openat2's guarantee without openat2: one component at a time, never through a symlink."""
    parts = [part for part in path.split("/") if part not in ("", ".")] or ["."]
    held: list[int] = []
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "..":
                if not held:
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
                os.close(held.pop())  # back to the parent we came from, never the directory's own `..`
                if last:
                    return os.dup(held[-1]) if held else os.open(".", flags | os.O_CLOEXEC, dir_fd=dir_fd)
                continue
            at = held[-1] if held else dir_fd
            if last:
                return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            try:
                held.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at))
            except NotADirectoryError:
                if stat.S_ISLNK(os.stat(part, dir_fd=at, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
                raise
        raise AssertionError("unreachable")
    finally:
        for fd in held:
            os.close(fd)


def _beneath(dir_fd: int, path: str, flags: int) -> int:
    global _have_openat2
    if _have_openat2:
        try:
            return _openat2(dir_fd, path, flags)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _have_openat2 = False
    return _walk(dir_fd, path, flags)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


@dataclass(frozen=True)
class Source:
    """A host file opened for a push: its fd (owned by the ``HostRoot.source`` context), size and name."""

    fd: int
    size: int
    path: str


@dataclass(frozen=True)
class Target:
    """Where a pull lands: an open directory beneath the root, the name to create in it, and the path
    as the user reads it."""

    dir_fd: int
    name: str
    path: str


class HostRoot:
    """The host directory `%push` reads from and `%pull` writes into; nothing outside it is opened.

    ``root`` is absolute, or empty for the kernel's working directory (Jupyter starts a kernel in the
    notebook's folder). A HOST_PATH is relative to it, or absolute and inside it (as configured or as
    resolved); `~` is expanded first, and then has to be inside too.
    """

    def __init__(self, root: str) -> None:
        if root and not root.startswith("/"):
            raise TransferError(f"the transfer root {root!r} is not an absolute path (transfer_root)")
        self.root = os.path.normpath(root or os.getcwd())

    @contextmanager
    def _opened(self) -> Iterator[tuple[int, str]]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransferError(f"the transfer root {self.root} cannot be opened: {exc.strerror}") from exc
        try:
            yield fd, _fd_path(fd) or os.path.realpath(self.root)
        finally:
            os.close(fd)

    def _relative(self, path: str, resolved: str) -> str:
        """``path`` relative to the root, or TransferError when it is absolute and elsewhere.

        Only the root's own prefix is taken off: what follows (``..``, symlinks) is left for the kernel
        to resolve beneath the root, where it can't climb out."""
        if not path or "\0" in path:
            raise TransferError(f"invalid host path {path!r}")
        path = os.path.expanduser(path)
        if not path.startswith("/"):
            return path
        parts = _components(path)
        for root in (self.root, resolved):
            prefix = _components(root)
            if parts[: len(prefix)] == prefix:
                return "/".join(parts[len(prefix):]) or "."
        raise self._outside(path)

    def _outside(self, path: str, how: str = "") -> TransferError:
        return TransferError(f"{path}{how} is outside the transfer root {self.root}: %push and %pull only reach "
                             "files beneath it (the kernelspec's --transfer-root, by default the kernel's "
                             "working directory)")

    def _open(self, root_fd: int, resolved: str, shown: str, rel: str, flags: int) -> int:
        try:
            fd = _beneath(root_fd, rel, flags)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise self._outside(shown, " leads out of the root (through `..` or a symlink), so it") from None
            if exc.errno == errno.ELOOP:
                raise TransferError(f"{shown}: a symbolic link that is not followed here (a loop, a /proc link, "
                                    "or any link where the kernel walks the path itself)") from None
            raise TransferError(f"{shown}: {exc.strerror}") from None
        # Belt and braces: where the kernel says the open file is now (a directory moved since?).
        where = _fd_path(fd)
        if where is not None and where != resolved and not where.startswith(resolved.rstrip("/") + "/"):
            os.close(fd)
            raise self._outside(shown, f" (opened as {where})")
        return fd

    @contextmanager
    def source(self, path: str, max_bytes: int = DEFAULT_MAX) -> Iterator[Source]:
        """The regular file ``path`` opened for reading, at most ``max_bytes`` long."""
        with self._opened() as (root_fd, resolved):
            rel = self._relative(path, resolved)
            # O_NONBLOCK: a FIFO must not block the open; it is refused below like any non-regular file.
            fd = self._open(root_fd, resolved, path, rel, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise TransferError(f"{path}: not a regular file (only regular files travel)")
                if info.st_size > max_bytes:
                    raise TransferError(f"{path} is {format_size(info.st_size)}, larger than "
                                        f"{format_limit(max_bytes)}, the most a push sends; nothing was sent "
                                        "(a larger cap: `%push --max SIZE`)")
                os.set_blocking(fd, True)
                yield Source(fd, info.st_size, path)
            finally:
                os.close(fd)

    @contextmanager
    def target(self, path: str, default_name: str) -> Iterator[Target]:
        """The directory a pull to ``path`` writes into, and the file name there.

        A directory (or a symlink beneath the root to one) takes ``default_name``. An existing file is
        replaced, and so is a symlink that stays beneath the root: the pull renames its file over the
        name, it never writes through a link.
        """
        with self._opened() as (root_fd, resolved):
            rel = self._relative(path, resolved)
            parts = rel.split("/")
            directory, name = "/".join(parts[:-1]) or ".", parts[-1]
            if name in ("", ".", ".."):
                directory, name = rel, ""
            dir_fd = self._open(root_fd, resolved, path, directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if name:
                    kind = self._kind(dir_fd, name)
                    if kind == "dir" or (kind == "link" and self._link_to_dir(root_fd, path, rel)):
                        inner = self._open(root_fd, resolved, path, rel, os.O_RDONLY | os.O_DIRECTORY)
                        os.close(dir_fd)
                        dir_fd, name = inner, ""
                if not name and (default_name in ("", ".", "..") or "/" in default_name):
                    raise TransferError(f"{path} is a directory, and {default_name!r} is not a file name to "
                                        "give the file there: name the host file")
                shown = path if name else os.path.join(path, default_name)
                yield Target(dir_fd, name or default_name, shown)
            finally:
                os.close(dir_fd)

    @staticmethod
    def _kind(dir_fd: int, name: str) -> str:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            raise TransferError(f"{name}: {exc.strerror}") from None
        return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "other"

    def _link_to_dir(self, root_fd: int, shown: str, rel: str) -> bool:
        """Whether the symlink ``rel`` leads to a directory; TransferError when it leads out of the root."""
        try:
            fd = _beneath(root_fd, rel, os.O_PATH)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False  # dangling, but beneath the root: the pull replaces the link
            if exc.errno == errno.EXDEV:
                raise self._outside(shown, " is a symbolic link out of the root, so it") from None
            raise TransferError(f"{shown}: {exc.strerror}") from None
        try:
            return stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def push(
    launcher: Launcher, source: Source, container_path: str, timeout: float = 600.0,
) -> Transferred:
    """Copy the opened host file ``source`` to ``container_path`` (created or truncated)."""
    _check_container_path(container_path)
    t0 = time.monotonic()
    try:
        # The child reads the fd directly: no copy through Python.
        proc = run_bounded(
            launcher(["/bin/sh", "-c", _PUSH, "lxck-push", container_path]),
            stdin=source.fd, timeout=timeout, stdout_limit=_REPLY_LIMIT,
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
    if not written or not written[-1].isdigit() or int(written[-1]) != source.size:
        # Also what a host file that grew during the push looks like: the cap was checked at the open.
        raise TransferError(f"push to {container_path}: sent {source.size} bytes but the container has "
                            f"{written[-1] if written else 'no'} bytes")
    return Transferred(source.path, container_path, source.size, seconds)


def pull(
    launcher: Launcher, container_path: str, target: Target, timeout: float = 600.0,
    max_bytes: int = DEFAULT_MAX,
) -> Transferred:
    """Copy the regular file ``container_path`` to ``target``, at most ``max_bytes`` of it; a failed pull
    (too large, not a regular file, timeout) leaves no partial file.

    The file is written under a fresh name in the target's directory (O_EXCL, O_NOFOLLOW: no link can be
    planted there) and renamed over the name at the end; rename(2) replaces a link, it never follows one.
    """
    _check_container_path(container_path)
    if max_bytes <= 0:
        raise TransferError(f"pull of {container_path}: the size cap must be positive, not {max_bytes}")
    tmp = f"{_PULL_PREFIX}{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=target.dir_fd)
    except OSError as exc:
        raise TransferError(f"cannot write into the directory of {target.path}: {exc.strerror}") from exc
    t0 = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            proc = copy_bounded(
                launcher(["/bin/sh", "-c", _PULL, "lxck-pull", container_path]), out,
                max_bytes=max_bytes, timeout=timeout, what=container_path,
            )
            size = os.fstat(out.fileno()).st_size
        if proc.returncode != 0:
            said = proc.stderr.decode(errors="replace").strip()
            raise TransferError(f"pull of {container_path} failed (exit {proc.returncode}): {said or 'no message'}")
        try:
            os.rename(tmp, target.name, src_dir_fd=target.dir_fd, dst_dir_fd=target.dir_fd)
        except OSError as exc:
            raise TransferError(f"cannot write {target.path}: {exc.strerror}") from exc
    except HelperTimeout as exc:
        _unlink(tmp, target.dir_fd)
        raise TransferError(f"pull of {container_path} took longer than {timeout:g} s") from exc
    except OutputTooLarge as exc:
        _unlink(tmp, target.dir_fd)
        raise TransferError(f"pull of {container_path}: the file is larger than {format_limit(max_bytes)}, "
                            "the most this pull writes; stopped, and nothing was kept "
                            "(a larger cap: `%pull --max SIZE`)") from exc
    except BaseException:
        _unlink(tmp, target.dir_fd)
        raise
    return Transferred(container_path, target.path, size, time.monotonic() - t0)


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
