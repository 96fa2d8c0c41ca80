"""Per-kernel throwaway overlay copies (``--ephemeral BASE``): naming, creation, locks, and cleanup of orphans.

Each kernel gets ``BASE-eph-<kernel pid>-<random>``, an ``lxc-copy -e`` overlay copy that LXC destroys
when it stops. The kernel stops it at shutdown and restart. A killed kernel cannot: its watchdog
(watchdog.py) removes the copy within seconds, and every kernel that starts in ephemeral mode also
removes copies of BASE whose kernel is gone.

Whether a copy's kernel lives is told by a lock, not by a command line (any process can call itself
``lxc_kernel``): before making a copy the kernel creates ``<copy>.lock`` in its private runtime
directory and holds an ``flock`` on it for as long as it runs. The kernel's death releases the lock,
so whoever gets it may remove the copy. The lock file also records how to reach the copy (lxcpath,
sudo) for the watchdog.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from . import hostdirs
from .backends import Backend, from_record
from .errors import ConfigError, LxcKernelError
from .lxc import State, validate_name

SEPARATOR = "-eph-"
LOCK_SUFFIX = ".lock"
_LOCK_RECORD_LIMIT = 4096
# A base may be REMOTE:NAME on incus/lxd.
_ANY_COPY_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:-]*)" + re.escape(SEPARATOR) + r"(\d+)-([0-9a-f]{6})")


@dataclass(frozen=True)
class CopyName:
    base: str
    pid: int
    suffix: str

    def __str__(self) -> str:
        return f"{self.base}{SEPARATOR}{self.pid}-{self.suffix}"


def new_name(base: str, pid: int | None = None, backend: Backend | None = None) -> str:
    """A recognisable, unique name for this kernel's copy of ``base`` (on ``backend``, classic by default)."""
    check = backend.validate_name if backend is not None else validate_name
    check(base, "ephemeral base")
    name = str(CopyName(base, os.getpid() if pid is None else pid, secrets.token_hex(3)))
    # Classic names go to 64 characters; Incus/LXD names are hostnames, at most 63.
    longest = 64 if backend is None or backend.name == "lxc" else 63
    if len(name.rpartition(":")[2]) > longest:
        raise ConfigError(f"ephemeral base name {base!r} is too long for a copy name (at most {longest} characters)")
    return check(name)


def parse_name(base: str, name: str) -> CopyName | None:
    """Pure: the parts of a copy name of ``base``, or None if ``name`` is not one."""
    m = re.fullmatch(re.escape(base) + re.escape(SEPARATOR) + r"(\d+)-([0-9a-f]{6})", name)
    return CopyName(base, int(m.group(1)), m.group(2)) if m else None


def parse_any(name: str) -> CopyName | None:
    """Pure: the parts of a copy name of any base."""
    m = _ANY_COPY_RE.fullmatch(name)
    return CopyName(m.group(1), int(m.group(2)), m.group(3)) if m else None


# -- locks ------------------------------------------------------------------------------------------


def lock_dir() -> str:
    """Where this user's kernels keep their copy locks: the same for every kernel of the user, private."""
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/lxc-kernel"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/") and os.path.isdir(runtime):
        return os.path.join(runtime, "lxc-kernel")
    return os.path.join(tempfile.gettempdir(), f"lxc-kernel-{os.geteuid()}")


def open_lock_dir() -> int:
    """A checked descriptor of :func:`lock_dir` (made 0700 if missing; refused if someone else's)."""
    try:
        return hostdirs.ensure_private(lock_dir(), "the ephemeral copies' lock directory")
    except ConfigError as exc:
        raise ConfigError(f"cannot keep this kernel's ephemeral copy safe: {exc}") from None


class CopyLock:
    """The live kernel's hold on its copy: an flock on ``<copy>.lock``, released by its death."""

    def __init__(self, name: str, dir_fd: int, fd: int) -> None:
        self.name, self._dir_fd, self._fd = name, dir_fd, fd

    @classmethod
    def acquire(cls, name: str, backend: Backend) -> CopyLock:
        dir_fd = open_lock_dir()
        try:
            # O_CLOEXEC: a helper the kernel runs must not inherit the lock and keep it after the kernel dies.
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name + LOCK_SUFFIX, flags, 0o600, dir_fd=dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = {"copy": name, **backend.record(), "kernel": os.getpid()}
        os.write(fd, json.dumps(record).encode())
        return cls(name, dir_fd, fd)

    def release(self) -> None:
        """The copy is gone: remove the lock file, then let go of it."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.name + LOCK_SUFFIX, dir_fd=self._dir_fd)
        os.close(self._fd)
        os.close(self._dir_fd)
        self._fd = -1


_HELD: dict[str, CopyLock] = {}  # this kernel's copies and their locks


def _try_lock(dir_fd: int, name: str, wait: float = 0.0) -> int | None:
    """A locked descriptor of ``name``'s lock file if no live kernel holds it (waiting up to ``wait``
    seconds), else None. FileNotFoundError when there is no lock file."""
    fd = os.open(name + LOCK_SUFFIX, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def read_record(fd: int) -> Backend:
    """How to reach the copy whose lock ``fd`` is (written by :meth:`CopyLock.acquire`): its backend."""
    try:
        record = json.loads(os.pread(fd, _LOCK_RECORD_LIMIT, 0) or b"{}")
        return from_record(record if isinstance(record, dict) else {})
    except (ValueError, AttributeError):
        return from_record({})


@contextlib.contextmanager
def orphan_lock(dir_fd: int, name: str, wait: float = 0.0) -> Iterator[int | None]:
    """Yields a held lock descriptor if ``name`` is an orphan (its lock is free), None if its kernel lives,
    -1 if it has no lock file. Whoever holds the lock removes the copy, then the lock file."""
    try:
        fd = _try_lock(dir_fd, name, wait)
    except FileNotFoundError:
        yield -1
        return
    try:
        yield fd
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(name + LOCK_SUFFIX, dir_fd=dir_fd)
            os.close(fd)


def orphans(base: str, names: list[str]) -> list[str]:
    """Copies of ``base`` among ``names`` whose owning kernel is gone (their lock is free). A copy without
    a lock file (one made by another user's kernel, or before locks) is an orphan only when no process
    has its PID at all: never remove what may be a live kernel's."""
    dir_fd = open_lock_dir()
    found = []
    try:
        for name in names:
            parsed = parse_name(base, name)
            if parsed is None or name in _HELD:
                continue
            try:
                fd = _try_lock(dir_fd, name)
            except FileNotFoundError:
                if not psutil.pid_exists(parsed.pid):
                    found.append(name)
                continue
            if fd is not None:
                os.close(fd)
                found.append(name)
    finally:
        os.close(dir_fd)
    return found


def remove(backend: Backend, name: str) -> None:
    """Remove an ephemeral copy (thawed, killed, destroyed: the backend's destroy flow). A copy of this
    kernel's lets go of its lock once it is gone."""
    backend.destroy(name, snapshots=True)
    lock = _HELD.pop(name, None)
    if lock is not None:
        lock.release()


def cleanup_orphans(base: str, backend: Backend) -> list[str]:
    """Remove the copies of ``base`` left behind by dead kernels (and their stale lock files); return the
    copies' names. Each is removed while holding its lock, so two kernels never race on one copy."""
    removed = []
    names = backend.names()
    dir_fd = open_lock_dir()
    try:
        for name in orphans(base, names):
            with orphan_lock(dir_fd, name) as fd:
                if fd is None:
                    continue  # a kernel took it meanwhile (it cannot: but never remove a held copy)
                try:
                    backend.destroy(name, snapshots=True)
                    removed.append(name)
                except LxcKernelError:
                    continue  # the next start retries
        for entry in os.listdir(dir_fd):
            name = entry[: -len(LOCK_SUFFIX)]
            if entry.endswith(LOCK_SUFFIX) and parse_name(base, name) and name not in names and name not in _HELD:
                with orphan_lock(dir_fd, name):
                    pass  # a lock whose copy never came to be: removed if nobody holds it
    finally:
        os.close(dir_fd)
    return removed


def cleanup_kernel(pid: int, wait: float = 3.0) -> list[str]:
    """The watchdog's job after kernel ``pid`` died: remove every copy that kernel held a lock for."""
    removed = []
    try:
        dir_fd = open_lock_dir()
    except ConfigError:
        return removed
    try:
        for entry in sorted(os.listdir(dir_fd)):
            name = entry[: -len(LOCK_SUFFIX)]
            parsed = parse_any(name) if entry.endswith(LOCK_SUFFIX) else None
            if parsed is None or parsed.pid != pid:
                continue
            with orphan_lock(dir_fd, name, wait) as fd:
                if fd is None or fd < 0:
                    continue
                try:
                    read_record(fd).destroy(name, snapshots=True)
                    removed.append(name)
                except LxcKernelError:
                    continue
    finally:
        os.close(dir_fd)
    return removed


def create(base: str, backend: Backend, timeout: float = 30.0) -> str:
    """Start this kernel's ephemeral copy of ``base``; its name. The base may be running (``lxc-copy -a``;
    Incus copies a running instance as it is)."""
    state = backend.state(base)
    if state is State.MISSING:
        raise ConfigError(f"ephemeral base {base!r} does not exist: create it first (`%lxc create {base}`)")
    name = new_name(base, backend=backend)
    lock = CopyLock.acquire(name, backend)  # before the copy exists: there is never an unlocked live copy
    try:
        backend.ephemeral_copy(base, name, allow_running=state is not State.STOPPED, timeout=timeout)
    except BaseException:
        lock.release()
        raise
    _HELD[name] = lock
    return name
