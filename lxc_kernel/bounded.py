"""Read bytes the container controls with a size cap and a deadline: helper processes' pipes, /proc files, log tails."""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from .errors import LxcKernelError
from .spawn import TOOL_ENV, reset_child_signals

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_STDERR_LIMIT = 64 * KiB
_CHUNK = 64 * KiB  # one read or write; a pipe holds 64 KiB on Linux (pipe(7))
_BIG_CHUNK = 1 * MiB  # stdout's pipe is grown to this where the system allows it


def format_limit(n: int) -> str:
    """``4194304`` -> ``4 MiB``, ``2000000`` -> ``2 MB``, ``1500`` -> ``1500 bytes``: a cap as it was
    probably given (binary constants in code, decimal sizes from ``parse_size``), exact, for messages."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes" if n != 1 else "1 byte"


class OutputTooLarge(LxcKernelError):
    """What a helper printed (or a file held) went over its size cap; the helper was killed."""

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(f"{what} is larger than {format_limit(limit)}; refusing to read more")


class HelperTimeout(LxcKernelError):
    """A helper process did not finish within its deadline; it was killed."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"reading {what} took longer than {timeout:g} s; it was stopped")


@dataclass(frozen=True)
class PipeResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes  # empty when stdout went to a file (copy_bounded)
    stderr: bytes  # at most the stderr limit, plus a note when more was dropped
    seconds: float
    stdout_size: int = 0  # bytes read from stdout, kept in memory or written to the file


class _Tail:
    """The head and the tail of a stream within ``limit`` bytes, counting what fell in between."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            excess = len(self.tail) - self.half
            if excess > 0:
                del self.tail[:excess]
                self.dropped += excess

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.head + self.tail)
        # The end usually says why a tool failed, so both ends are kept.
        return bytes(self.head) + f"\n[... {self.dropped} bytes of stderr left out ...]\n".encode() + bytes(self.tail)


def _kill(proc: subprocess.Popen[bytes], group: bool) -> None:
    """SIGKILL the child we started (and its process group when it leads one), then reap it.

    The child is not reaped before this, so its PID (and a group ID equal to it) cannot have been reused."""
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _describe(argv: Sequence[str]) -> str:
    return f"the output of {os.path.basename(argv[0])}" if argv else "the output"


def _run(
    argv: Sequence[str],
    *,
    input: bytes | None,
    stdin: IO[bytes] | int | None,
    timeout: float,
    stdout_limit: int,
    stderr_limit: int,
    env: Mapping[str, str] | None,
    cwd: str,
    preexec_fn: Callable[[], None] | None,
    start_new_session: bool,
    what: str | None,
    out: IO[bytes] | None,
) -> PipeResult:
    if input is not None and stdin is not None:
        raise ValueError("give input or stdin, not both")
    if stdout_limit < 0 or stderr_limit < 0:
        raise ValueError("limits must not be negative")
    what = what or _describe(argv)
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else (subprocess.DEVNULL if stdin is None else stdin),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(TOOL_ENV if env is None else env),
        cwd=cwd,
        preexec_fn=preexec_fn,
        start_new_session=start_new_session,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout = bytearray()
    stdout_size = 0
    err = _Tail(stderr_limit)
    sel = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit in a kernel with many fds open
    finished = False
    try:
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe.fileno(), selectors.EVENT_READ)
        pending = memoryview(input) if input is not None else None
        in_fd = -1
        if proc.stdin is not None:
            if pending:
                in_fd = proc.stdin.fileno()
                os.set_blocking(in_fd, False)
                sel.register(in_fd, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        try:
            # A bigger pipe means fewer wake-ups per megabyte (pipe(7): up to pipe-max-size, 1 MiB).
            fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, _BIG_CHUNK)
        except (OSError, AttributeError):
            pass
        file_fd = -1
        can_splice = hasattr(os, "splice")
        if out is not None:
            out.flush()  # from here on the file is written through its fd, after anything buffered
            file_fd = out.fileno()
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HelperTimeout(what, timeout)
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd == in_fd:
                    assert pending is not None and proc.stdin is not None
                    try:
                        sent = os.write(fd, pending[:_CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        sent = len(pending)  # the child stopped reading: its status and stderr will say why
                    pending = pending[sent:]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                if fd == err_fd:
                    try:
                        data = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if data:
                        err.feed(data)
                    else:
                        sel.unregister(fd)
                    continue
                room = stdout_limit - stdout_size
                if file_fd >= 0 and can_splice and room > 0:
                    # Pipe to file inside the kernel: a pull ran at a third of the speed of plain `cat`
                    # when every byte went through a Python buffer.
                    try:
                        n = os.splice(fd, file_fd, min(_BIG_CHUNK, room))
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                            raise
                        can_splice = False  # e.g. an O_APPEND file: read and write instead
                        continue
                    if n == 0:
                        sel.unregister(fd)
                    stdout_size += n
                    continue
                # Read one byte past the cap, never more: that byte proves the stream is over the limit.
                try:
                    data = os.read(fd, min(_BIG_CHUNK, room + 1))
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                if len(data) > room:
                    if file_fd >= 0:
                        _write_all(file_fd, data[:room])
                    raise OutputTooLarge(what, stdout_limit)
                stdout_size += len(data)
                if file_fd >= 0:
                    _write_all(file_fd, data)
                else:
                    stdout += data
        # Both pipes are closed: the child is exiting (or it handed them on and lingers: the deadline holds).
        try:
            returncode = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise HelperTimeout(what, timeout) from None
        finished = True
    finally:
        sel.close()
        if not finished:
            # Any way out but a clean exit (over the cap, timeout, KeyboardInterrupt from an interrupt)
            # takes the child down with it: nothing keeps streaming into a pipe nobody reads.
            _kill(proc, start_new_session)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return PipeResult(tuple(argv), returncode, bytes(stdout), err.value(), time.monotonic() - t0, stdout_size)


def run_bounded(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    stdin: IO[bytes] | int | None = None,
    timeout: float,
    stdout_limit: int,
    stderr_limit: int = DEFAULT_STDERR_LIMIT,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    preexec_fn: Callable[[], None] | None = reset_child_signals,
    start_new_session: bool = False,
    what: str | None = None,
) -> PipeResult:
    """Run ``argv`` and return what it printed, holding at most ``stdout_limit`` + ``stderr_limit`` bytes.

    ``input`` is written as the child reads it (both pipes are drained meanwhile, so big input and big
    output cannot deadlock); ``stdin`` is an open file or fd handed to the child as is. Over
    ``stdout_limit`` the child is killed and :class:`OutputTooLarge` names ``what`` ("the container's
    /etc/passwd"); stderr beyond its limit is cut in the middle with a note. Past ``timeout`` seconds
    the child is killed and :class:`HelperTimeout` raised. A non-zero exit status is returned, not raised.
    """
    return _run(argv, input=input, stdin=stdin, timeout=timeout, stdout_limit=stdout_limit,
                stderr_limit=stderr_limit, env=env, cwd=cwd, preexec_fn=preexec_fn,
                start_new_session=start_new_session, what=what, out=None)


def copy_bounded(
    argv: Sequence[str],
    out: IO[bytes],
    *,
    max_bytes: int,
    stdin: IO[bytes] | int | None = None,
    timeout: float,
    stderr_limit: int = DEFAULT_STDERR_LIMIT,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    preexec_fn: Callable[[], None] | None = reset_child_signals,
    start_new_session: bool = False,
    what: str | None = None,
) -> PipeResult:
    """Like :func:`run_bounded`, but stdout is streamed into the open file ``out`` (never held in memory),
    and at most ``max_bytes`` of it are written; ``stdout_size`` of the result says how many."""
    return _run(argv, input=None, stdin=stdin, timeout=timeout, stdout_limit=max_bytes,
                stderr_limit=stderr_limit, env=env, cwd=cwd, preexec_fn=preexec_fn,
                start_new_session=start_new_session, what=what, out=out)


def read_capped(path: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of ``path`` (all of it if shorter); None if it cannot be opened or read.

    For /proc files of container processes: a command line can be megabytes (ARG_MAX is a quarter of
    the stack limit), and the caller only needs a prefix. O_NONBLOCK keeps a FIFO from blocking the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return None
    try:
        return _read_up_to(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd``, to its end (/proc may return less than asked before it)."""
    chunks = []
    left = limit
    while left > 0:
        data = os.read(fd, min(left, _CHUNK))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def read_tail(path: str, limit: int, start: int = 0) -> bytes | None:
    """The last ``limit`` bytes of ``path`` from offset ``start`` on; None if it cannot be read.

    Log files grow without bound (a TRACE-level LXC log, a container that fails in a loop): only the end
    says what went wrong, so only the end is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return None
    try:
        end = os.fstat(fd).st_size
        os.lseek(fd, max(start, end - limit), os.SEEK_SET)
        return _read_up_to(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
