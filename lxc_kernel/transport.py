"""The transport seam: how the session reaches a shell, whatever carries it (lxc-attach, a local shell...).

A transport opens the PTY shell (a :class:`PtyChannel`), runs pipe-mode helpers with bytes in, bounded
bytes out and a deadline, starts long-lived pipe helpers (the stderr reader), and says what it can do
(:class:`Capabilities`). Nothing above this seam knows which transport it runs on: the session, the
cell state machine, input detection, display and the output budget only use this interface.

Shipped here: :class:`LocalTransport`, a shell on the kernel's own host with no container and no root
(bash or ``busybox sh``), for tests a contributor can run anywhere. The ``lxc-attach`` transport lives
in attach.py beside the options it is built from.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import psutil
from ptyprocess import PtyProcess

from .bounded import PipeResult, run_bounded
from .errors import LxcNotInstalled
from .spawn import TOOL_ENV, reset_child_signals

READ_SIZE = 1 << 16


@dataclass(frozen=True)
class Capabilities:
    """What a transport can do, so callers choose a path instead of guessing."""

    # The container's processes show in the host's /proc (input detection and cleanup from the host).
    host_pids: bool = True
    # The PTY shell is a child (or the child of a child) of the process the transport spawned.
    shell_is_descendant: bool = True
    # The channel reaches end of file when the target dies. Where it may not (a dead cluster member),
    # the session consults ``Transport.check_alive`` at every health tick of a silent cell.
    eof_on_death: bool = True


class PtyChannel:
    """The shell's terminal: a channel to select on, read, write, close, and ask for an exit status."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], dimensions: tuple[int, int]) -> None:
        try:
            self._proc = PtyProcess.spawn(
                list(argv), cwd="/", env=env, dimensions=dimensions, preexec_fn=reset_child_signals
            )
        except FileNotFoundError as exc:
            raise LxcNotInstalled(argv[0]) from exc
        # ptyprocess.close() sleeps 0.1 s by default; close() below does its own bounded waits.
        self._proc.delayafterclose = 0
        self._proc.delayafterterminate = 0
        self.pid: int = self._proc.pid
        self._closed = False
        self.clear_onlcr()

    def fileno(self) -> int:
        return self._proc.fd

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc.isalive()

    def clear_onlcr(self) -> None:
        """Two onlcr layers turn \\n into \\r\\r\\n (measured, LXC 5.0.2): clear the host side here; the inner
        side is cleared with ``stty -onlcr`` by the session's first line."""
        try:
            attrs = termios.tcgetattr(self._proc.fd)
            attrs[1] &= ~termios.ONLCR
            termios.tcsetattr(self._proc.fd, termios.TCSANOW, attrs)
        except termios.error:
            pass

    def read(self) -> bytes | None:
        """One non-blocking read: b"" when nothing is there, None at end of file (EIO on Linux)."""
        try:
            data = os.read(self._proc.fd, READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                return None
            raise
        return data or None

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Write everything; OSError when the terminal is gone or stays full past ``timeout``."""
        import select

        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                n = os.write(self._proc.fd, view)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OSError(errno.EAGAIN, "the shell's terminal stays full") from None
                select.select([], [self._proc.fd], [], 0.1)
                continue
            view = view[n:]

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the process to end; True if it has."""
        deadline = time.monotonic() + timeout
        while self._proc.isalive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def exit_status(self, wait: float = 1.0) -> int | None:
        """The process's exit status (128+N for signal N), or None while it still runs."""
        if not self.wait(wait):
            return None
        if self._proc.signalstatus is not None:
            return 128 + self._proc.signalstatus
        return self._proc.exitstatus

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def hangup(self) -> None:
        try:
            os.kill(self.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.close(force=True)
        except Exception:  # ptyprocess raises if the child ignores SIGKILL for a while; the fd is closed
            pass


class Transport:
    """Base of every transport. Subclasses give the argvs; the I/O is shared here."""

    name = "transport"
    capabilities = Capabilities()

    # -- what subclasses say ----------------------------------------------------------------------
    def shell_argv(self) -> list[str]:
        """The host argv that runs the interactive shell under a PTY."""
        raise NotImplementedError

    def pipe_argv(self, argv: Sequence[str]) -> list[str]:
        """The host argv that runs ``argv`` inside the target over pipes (no PTY)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the shell runs in, for messages: ``container 'web1'``."""
        return self.name

    def spawn_env(self) -> dict[str, str]:
        """The environment of the host processes this transport starts."""
        return dict(TOOL_ENV)

    def shell_host_pid(self, channel: PtyChannel, shell_pid: int | None = None) -> int | None:
        """The shell's PID in the host's /proc, when the host can see it. ``shell_pid`` is its ``$$``, the
        PID inside the target, from the handshake."""
        return None

    def end_spawned(self, proc: subprocess.Popen[bytes]) -> None:
        """Called before a helper from :meth:`spawn` is killed by PID. Where killing the host's process
        leaves the helper running in the target for a moment (ssh), the transport ends it there first."""

    def end_shell(self, channel: PtyChannel, shell_pid: int | None) -> None:
        """Called as a session closes, before its host processes are signalled, with the shell's PID in
        the target (``$$``). Where killing the host's client leaves the shell's processes behind (ssh),
        the transport ends them here; elsewhere the host's process tree covers them."""
    def check_alive(self) -> None:
        """Raise a LxcKernelError when the shell's target is gone without the channel saying so (no end of
        file). Called while a cell is silent, at each health tick. Most transports get an end of file."""

    # -- shared I/O -------------------------------------------------------------------------------
    def open_shell(self, dimensions: tuple[int, int] = (24, 120)) -> PtyChannel:
        return PtyChannel(self.shell_argv(), self.spawn_env(), dimensions)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | int | None = None,
        timeout: float = 30.0,
        limit: int = 1 << 20,
        what: str = "a helper command",
    ) -> PipeResult:
        """Run ``argv`` inside the target over pipes: bytes in, at most ``limit`` bytes of stdout back
        (OutputTooLarge past it), within ``timeout`` seconds."""
        return run_bounded(
            self.pipe_argv(argv), input=input, stdin=stdin, timeout=timeout, stdout_limit=limit,
            env=self.spawn_env(), what=what,
        )

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a long-lived pipe helper (the stderr reader): its stdout is a non-blocking pipe."""
        return self._start_helper(self.pipe_argv(argv), stdin=subprocess.DEVNULL)

    def _start_helper(self, full: Sequence[str], stdin: int) -> subprocess.Popen[bytes]:
        """Popen a helper's full host argv in its own session, stdout non-blocking, stderr dropped."""
        try:
            proc = subprocess.Popen(
                full, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=self.spawn_env(), cwd="/", preexec_fn=reset_child_signals, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise LxcNotInstalled(full[0]) from exc
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return proc


class LocalTransport(Transport):
    """A shell on the kernel's own host: no container, no root. For tests and for trying the kernel.

    The shell gets a curated environment (nothing of the kernel's own), like a container shell.
    """

    name = "local"

    def __init__(self, shell: Sequence[str] | None = None, *, home: str | None = None,
                 host_pids: bool = True) -> None:
        bash = shutil.which("bash")
        self.shell = list(shell) if shell else ([bash, "--noprofile", "--norc", "--noediting"] if bash else ["/bin/sh"])
        self.home = home or os.environ.get("HOME") or "/"
        # host_pids=False makes input detection run "inside", as it must over ssh: for tests.
        self.capabilities = Capabilities(host_pids=host_pids)

    def describe(self) -> str:
        return "the local host"

    def spawn_env(self) -> dict[str, str]:
        return {**TOOL_ENV, "HOME": self.home, "TERM": "xterm-256color", "LANG": "C.UTF-8"}

    def shell_argv(self) -> list[str]:
        return list(self.shell)

    def pipe_argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def shell_host_pid(self, channel: PtyChannel, shell_pid: int | None = None) -> int | None:
        return channel.pid


def child_pid(pid: int) -> int | None:
    """The single child of ``pid`` (lxc-attach forks the shell as its direct child), else None."""
    try:
        children = children_of(pid)
    except OSError:
        return None
    return children[0] if len(children) == 1 else None


def children_of(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children: proportional to this process, not to every
    process on the host (psutil's children() walks all of /proc, which grew with every open session)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return out


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants as psutil handles, taken now: a later kill checks the handle still
    names the same process (psutil compares start times), so a reused PID is never signalled."""
    out: list[psutil.Process] = []
    todo = [pid]
    while todo:
        current = todo.pop(0)
        try:
            out.append(psutil.Process(current))
        except psutil.Error:
            continue
        todo.extend(children_of(current))
    return out


def kill_tree(processes: Sequence[psutil.Process], sig: int = signal.SIGKILL) -> None:
    for proc in processes:
        try:
            proc.send_signal(signal_for(proc, sig))
        except (psutil.Error, PermissionError):
            pass


def signal_for(proc: psutil.Process, sig: int) -> int:
    """SIGTERM instead of SIGKILL for a set-uid process of ours (sudo, when the kernel is not root): sudo
    passes TERM on to the root lxc-attach it runs, which this user cannot signal, while a SIGKILLed sudo
    leaves that lxc-attach and what runs under it behind (measured: the stderr reader stayed)."""
    euid = os.geteuid()
    if sig != signal.SIGKILL or euid == 0:
        return sig
    try:
        uids = proc.uids()
    except psutil.Error:
        return sig
    return signal.SIGTERM if uids.real == euid and uids.effective != euid else sig


def wait_gone(processes: Sequence[psutil.Process], timeout: float) -> None:
    """Wait until each process is gone or a zombie. A killed grandchild is reaped by the host's init,
    which here reaps about once a second: waiting for that would hold a cell or a shutdown for nothing."""
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending and time.monotonic() < deadline:
        still = []
        for proc in pending:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except psutil.Error:
                continue
        pending = still
        if pending:
            time.sleep(0.01)
