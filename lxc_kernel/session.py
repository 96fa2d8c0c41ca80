"""One persistent shell under a PTY: spawn, handshake, run cells with streamed output, interrupt, close.

The session knows nothing of LXC. It gets a ``launcher`` that turns an argv meant for inside the
target into a host argv (``lxc-attach ... -- ARGV`` here; ``ssh -tt HOST lxc-attach ...`` or
``lxc exec`` would carry the same byte stream), and uses it for the shell, the separate stderr
channel and uploads of long cells.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ptyprocess import PtyProcess

from .ansi import TerminalText
from .errors import LxcNotInstalled, ShellExited, ShellTimeout
from .output import OutputBuffer, Sink
from .protocol import (
    SWEEP_STALE_DIRS,
    CellParser,
    Handshake,
    ShellScript,
    frame_cell,
    frame_sync,
    inline_length,
    new_token,
)
from .spawn import TOOL_ENV, Launcher, reset_child_signals

# busybox ash edits lines in a 1024-byte buffer and runs the overflow as the next command
# (LXC-FACTS); longer cells travel as a file written through a separate pipe attach.
INLINE_LIMIT = 960
READ_SIZE = 1 << 16
INTERRUPT_GRACE = 2.0  # after ^C, how long the shell gets to come back before it is replaced
# Opens the FIFO read-write (so it never sees EOF between cells), says "R" once it holds it (a
# FIFO's buffer is dropped when nobody has it open), then copies it out until the shell is gone:
# killing a pipe-mode lxc-attach leaves its command running inside, unlike PTY mode.
_STDERR_READER = 'exec 3<>"$1" || exit 1; printf R; cat <&3 & while kill -0 "$2" 2>/dev/null; do sleep 1; done; kill $!'


class RunHooks:
    """Optional callbacks from the read loop of one cell; every default does nothing.

    Interactive input (see stdin.py) needs to act at moments only the loop knows: when the cell's
    commands start, when their output has gone quiet (a command may be waiting to read the terminal),
    and just before ^C is typed. The hooks run in the loop's thread; ``idle`` may block (waiting for
    the user's reply) and may call :meth:`ShellSession.send_input` or ``request_interrupt``.
    """

    idle_after = 0.08  # quiet this long before ``idle`` is first called...
    idle_every = 0.15  # ...and then again this often while the quiet lasts

    def started(self) -> None:
        """The start marker arrived: the cell's commands run from now on."""

    def idle(self) -> None:
        """Output has been quiet for ``idle_after`` seconds (pending output was flushed first)."""

    def interrupting(self) -> None:
        """^C is about to be typed into the terminal."""


@dataclass(frozen=True)
class RunResult:
    status: int
    interrupted: bool = False
    timed_out: bool = False
    # The shell did not come back after an interrupt and was replaced: its state is gone.
    restarted: bool = False


class ShellSession:
    """A shell in a PTY that runs one framed cell at a time."""

    def __init__(
        self,
        launcher: Launcher,
        shell_argv: Sequence[str],
        *,
        setup: Sequence[str] = (),
        separate_stderr: bool = True,
        keep_colors: bool = False,
        stdin_null: bool = True,
        dimensions: tuple[int, int] = (24, 120),
        health_check: Callable[[], None] | None = None,
        health_interval: float = 1.0,
        flush_interval: float = 0.05,
    ) -> None:
        self.launcher = launcher
        self.shell_argv = list(shell_argv)
        self.setup = list(setup)
        self.separate_stderr = separate_stderr
        self.keep_colors = keep_colors
        self.stdin_null = stdin_null
        self.dimensions = dimensions
        self.health_check = health_check
        self.health_interval = health_interval
        self.flush_interval = flush_interval
        self.info: Handshake | None = None
        self.shell_host_pid: int | None = None
        self._proc: PtyProcess | None = None
        self._err: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._interrupt = False
        self._transcript = b""  # last raw bytes, for error messages when the shell fails early

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.isalive()

    @property
    def pid(self) -> int | None:
        """PID of the host process that carries the PTY (lxc-attach)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def pids(self) -> list[int]:
        """Every host process this session started and still owns."""
        pids = [p for p in (self.pid, self._err.pid if self._err else None) if p]
        return pids

    def start(self, timeout: float = 10.0) -> Handshake:
        """Spawn the shell and handshake; raise ShellExited/ShellTimeout with what the shell said."""
        argv = self.launcher(self.shell_argv)
        rows, cols = self.dimensions
        try:
            self._proc = PtyProcess.spawn(
                argv, cwd="/", env=dict(TOOL_ENV), dimensions=(rows, cols), preexec_fn=reset_child_signals
            )
        except FileNotFoundError as exc:
            raise LxcNotInstalled(argv[0]) from exc
        # ptyprocess.close() sleeps 0.1 s by default; close() below does its own bounded waits.
        self._proc.delayafterclose = 0
        self._proc.delayafterterminate = 0
        self._clear_onlcr()
        deadline = time.monotonic() + timeout
        try:
            probe = new_token()
            self._exchange(ShellScript.probe(probe), probe, deadline, retry=0.03)
            # lxc-attach re-applies the terminal modes it saved at startup, undoing the first clear.
            self._clear_onlcr()
            boot = new_token()
            info = Handshake.parse(self._exchange(ShellScript.bootstrap(boot), boot, deadline))
            self.info = info
            self._find_shell_pid()
            if self.separate_stderr:
                self._start_stderr_reader(info.session_dir)
            for line in (SWEEP_STALE_DIRS, *self.setup):
                token = new_token()
                out = self._exchange(frame_cell(line, token), token, deadline)
                if self._last_status:
                    raise ShellExited(None, f"session setup `{line}` failed: {out.decode(errors='replace').strip()}")
        except BaseException:
            self.close()
            raise
        return info

    def _clear_onlcr(self) -> None:
        # Two onlcr layers turn \n into \r\r\n (LXC-FACTS): clear the host-side one here and the
        # container-side one with `stty -onlcr` in the probe.
        assert self._proc is not None
        try:
            attrs = termios.tcgetattr(self._proc.fd)
            attrs[1] &= ~termios.ONLCR
            termios.tcsetattr(self._proc.fd, termios.TCSANOW, attrs)
        except termios.error:
            pass

    def _find_shell_pid(self) -> None:
        """lxc-attach forks the shell as its direct child: watch it with a pidfd, so that a shell
        that exits while an ``&`` job still holds the terminal (no EOF then) is noticed at once."""
        assert self._proc is not None
        try:
            with open(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children") as fh:
                children = [int(p) for p in fh.read().split()]
        except OSError:
            return
        if len(children) == 1:
            self.shell_host_pid = children[0]
            try:
                self._pidfd = os.pidfd_open(children[0])
            except OSError:
                self._pidfd = None

    def _start_stderr_reader(self, session_dir: str) -> None:
        assert self.info is not None
        argv = self.launcher(
            ["/bin/sh", "-c", _STDERR_READER, "lxck-stderr", f"{session_dir}/err", str(self.info.pid)]
        )
        self._err = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(TOOL_ENV),
            cwd="/",
            preexec_fn=reset_child_signals,
            start_new_session=True,
        )
        assert self._err.stdout is not None
        fd = self._err.stdout.fileno()
        os.set_blocking(fd, False)
        ready, _, _ = select.select([fd], [], [], 5.0)
        if not ready or self._read(fd) != b"R":
            raise ShellExited(None, "the stderr channel did not start")

    def close(self) -> None:
        """End every process of this session, by PID, and release its descriptors."""
        proc, self._proc = self._proc, None
        err, self._err = self._err, None
        # The shell, its jobs and the stderr reader are host descendants of our lxc-attach
        # processes. A polite `exit` doesn't HUP background jobs and a killed pipe-mode attach
        # leaves its command running, so end the whole tree, by PID. Daemons that detached
        # (reparented to the container's init) are not ours and stay.
        tree = [pid for root in (proc.pid if proc else None, err.pid if err else None) if root
                for pid in descendants(root)]
        if proc is not None:
            if proc.isalive() and self.info is not None:
                # Polite first: remove the session directory and leave. Bounded, then SIGKILL.
                try:
                    os.write(proc.fd, f"\x15rm -rf '{self.info.session_dir}'; exit 0\n".encode())
                except OSError:
                    pass
                _wait_exit(proc, 0.3)
            if proc.isalive():
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_exit(proc, 2.0)
            try:
                proc.close(force=True)
            except Exception:
                pass
        if err is not None:
            err.kill()
            try:
                err.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
            if err.stdout:
                err.stdout.close()
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- interrupts -----------------------------------------------------------------------------
    def request_interrupt(self) -> None:
        """Async-signal-safe: mark the running cell for interruption and wake its read loop."""
        self._interrupt = True
        try:
            os.write(self._wake_w, b"i")
        except OSError:
            pass

    # -- running --------------------------------------------------------------------------------
    def run(
        self,
        source: str,
        sink: Sink,
        *,
        timeout: float | None = None,
        stdin: bool | None = None,
        hooks: RunHooks | None = None,
    ) -> RunResult:
        """Run one cell. Output goes to ``sink(stream, text)`` while it runs.

        Raises ShellExited when the shell ends (``exit N``, container stopped); the session is then
        closed. ``health_check`` is consulted while the shell is silent, so a frozen or stopped
        container ends the cell with its error instead of a hang. ``stdin=True`` gives this cell's
        commands the terminal as stdin (interactive input, with ``hooks``); None keeps the session's
        ``stdin_null`` choice.
        """
        if self._proc is None or self.info is None:
            raise ShellExited(None, "the shell is not running")
        self._drain_wake()
        self._interrupt = False
        token = new_token()
        err_path = f"{self.info.session_dir}/err" if self._err is not None else None
        stdin_null = self.stdin_null if stdin is None else not stdin
        if inline_length(source) > INLINE_LIMIT:
            script = f"{self.info.session_dir}/cell"
            self.upload(script, source.encode("utf-8", "surrogateescape"))
            line = frame_cell(None, token, script_path=script, stderr_path=err_path, stdin_null=stdin_null)
        else:
            line = frame_cell(source, token, stderr_path=err_path, stdin_null=stdin_null)
        return self._loop(line, token, sink, timeout=timeout, err_path=err_path, hooks=hooks)

    def _loop(
        self,
        line: bytes,
        token: str,
        sink: Sink,
        *,
        timeout: float | None,
        err_path: str | None,
        hooks: RunHooks | None = None,
    ) -> RunResult:
        proc = self._proc
        assert proc is not None
        out_parser = CellParser(token)
        err_parser = CellParser(token) if self._err is not None else None
        out_text = TerminalText(keep_colors=self.keep_colors)
        err_text = TerminalText(keep_colors=self.keep_colors)
        buffer = OutputBuffer(sink, interval=self.flush_interval)
        err_fd = self._err.stdout.fileno() if self._err is not None and self._err.stdout else None
        fds = [proc.fd, self._wake_r] + ([err_fd] if err_fd is not None else [])
        if self._pidfd is not None:
            fds.append(self._pidfd)

        start = time.monotonic()
        cell_deadline = start + timeout if timeout else None
        last_data = start
        next_health = start + self.health_interval
        interrupted = timed_out = False
        give_up: float | None = None
        next_sync: float | None = None
        shell_gone_at: float | None = None
        stdout_done_at: float | None = None
        hooks_started = False
        next_idle = start
        self._write(line)

        def finish(restarted: bool = False) -> RunResult:
            buffer.add("stdout", out_text.flush(), time.monotonic())
            buffer.add("stderr", err_text.flush(), time.monotonic())
            buffer.flush()
            status = out_parser.status if out_parser.status is not None else 130
            return RunResult(status, interrupted, timed_out, restarted)

        while True:
            now = time.monotonic()
            if out_parser.done and (err_parser is None or err_parser.done):
                return finish()
            if out_parser.done and stdout_done_at is not None and now - stdout_done_at > 1.0 and now - last_data > 0.5:
                return finish()  # the stderr reader fell silent: don't hold the reply for it
            if cell_deadline is not None and now >= cell_deadline and not interrupted:
                timed_out = True
                self._interrupt = True
            if self._interrupt and not interrupted and not out_parser.done:
                interrupted = True
                give_up = now + INTERRUPT_GRACE
                next_sync = now
            if next_sync is not None and now >= next_sync and not out_parser.done:
                # ^C flushes type-ahead input, so the trailing marker of an interrupted line never runs:
                # send ^C, then a line that only prints the markers; repeat until one answers.
                if hooks is not None:
                    hooks.interrupting()
                self._write(b"\x03")
                self._write(frame_sync(token, err_path))
                next_sync = now + 0.5
            if give_up is not None and now >= give_up and not out_parser.done:
                self.close()
                return finish(restarted=True)
            if shell_gone_at is not None and now - shell_gone_at > 0.2:
                # The shell is dead but an `&` job still holds the terminal: no EOF will come.
                buffer.flush()
                self.close()
                raise ShellExited(None, "Background jobs that still held the terminal were ended.")
            if now >= next_health and not out_parser.done and self.health_check is not None:
                if now - last_data >= self.health_interval or not out_parser.started:
                    try:
                        self.health_check()
                    except Exception:
                        buffer.flush()
                        self.close()
                        raise
                next_health = now + self.health_interval

            if (
                hooks is not None and hooks_started and not out_parser.done and not interrupted
                and now - last_data >= hooks.idle_after and now >= next_idle
            ):
                buffer.flush()
                hooks.idle()
                next_idle = time.monotonic() + hooks.idle_every
                continue

            waits = [next_health]
            if hooks is not None and hooks_started and not out_parser.done and not interrupted:
                waits.append(max(next_idle, last_data + hooks.idle_after))
            for t in (buffer.deadline, cell_deadline, give_up, next_sync):
                if t is not None:
                    waits.append(t)
            if stdout_done_at is not None:
                waits.append(stdout_done_at + 1.0)
            if shell_gone_at is not None:
                waits.append(shell_gone_at + 0.2)
            wait = max(0.0, min(waits) - now)
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except InterruptedError:
                continue
            now = time.monotonic()
            if self._wake_r in ready:
                self._drain_wake()
            if proc.fd in ready:
                data = self._read(proc.fd)
                if data is None:
                    buffer.add("stdout", out_text.feed(out_parser.flush()), now)
                    self._drain_stderr(err_parser, err_text, buffer, now)
                    buffer.add("stdout", out_text.flush(), now)
                    buffer.add("stderr", err_text.flush(), now)
                    buffer.flush()
                    status = self._exit_status()
                    self.close()
                    raise ShellExited(status)
                last_data = now
                text = out_text.feed(out_parser.feed(data))
                if text:
                    buffer.add("stdout", text, now)
                if out_parser.done and stdout_done_at is None:
                    stdout_done_at = now
                if hooks is not None and not hooks_started and out_parser.started:
                    hooks_started = True
                    hooks.started()
            if err_fd is not None and err_fd in ready and err_parser is not None:
                data = self._read(err_fd)
                if data:
                    last_data = now
                    buffer.add("stderr", err_text.feed(err_parser.feed(data)), now)
            if self._pidfd is not None and self._pidfd in ready and shell_gone_at is None:
                shell_gone_at = now
                fds.remove(self._pidfd)
            buffer.flush_due(now)

    def send_input(self, data: bytes) -> None:
        """Type ``data`` into the terminal: the reply to a command that waits for input."""
        if self._proc is None:
            raise ShellExited(None, "the shell is not running")
        self._write(data)

    def query(self, source: str, timeout: float = 1.0) -> tuple[int, str]:
        """Run a hidden helper command between cells (completion, inspection): ``(status, stdout)``.

        It runs in the shell itself, so it sees the cell's variables, functions, aliases and working
        directory; stdin is /dev/null and stderr is discarded. ``$?`` is not disturbed: every framed line
        ends in ``__lxck_post``, so a cell already starts with ``$?`` 0 and a query leaves it 0. If the
        command outlives ``timeout`` it gets ^C and the shell is resynced, as after an interrupt.
        """
        if self._proc is None or self.info is None:
            raise ShellExited(None, "the shell is not running")
        token = new_token()
        line = frame_cell(f"{{ {source}\n}} 2>/dev/null", token)
        if len(line) > INLINE_LIMIT:
            raise ValueError("query too long for one line")
        deadline = time.monotonic() + timeout
        try:
            out = self._exchange(line, token, deadline)
        except ShellTimeout:
            # ^C flushes type-ahead input, so keep typing the sync line until it answers (LXC-FACTS).
            sync = new_token()
            self._write(b"\x03")
            try:
                self._exchange(frame_sync(sync), sync, time.monotonic() + INTERRUPT_GRACE, retry=0.3)
            except ShellTimeout:
                self.close()
                raise
            raise ShellTimeout(f"the helper command did not answer within {timeout:g} s") from None
        return self._last_status or 0, out.decode("utf-8", "replace")

    def _drain_stderr(
        self, parser: CellParser | None, text: TerminalText, buffer: OutputBuffer, now: float
    ) -> None:
        if parser is None or self._err is None or self._err.stdout is None:
            return
        while True:
            ready, _, _ = select.select([self._err.stdout.fileno()], [], [], 0.05)
            data = self._read(self._err.stdout.fileno()) if ready else None
            if not data:
                return
            buffer.add("stderr", text.feed(parser.feed(data)), now)

    # -- I/O helpers ----------------------------------------------------------------------------
    _last_status: int | None = None

    def _exchange(self, line: bytes, token: str, deadline: float, retry: float | None = None) -> bytes:
        """Write ``line`` and collect output until its end marker (retrying the write if asked)."""
        assert self._proc is not None
        parser = CellParser(token)
        out = []
        next_write = time.monotonic()
        while not parser.done:
            now = time.monotonic()
            if now >= deadline:
                said = self._transcript.decode("utf-8", "replace").strip()
                raise ShellTimeout(f"the shell did not answer in time. It said: {said[-500:] or 'nothing'}")
            if next_write is not None and now >= next_write:
                self._write(line)
                next_write = now + retry if retry else None  # type: ignore[assignment]
                retry = retry * 1.5 if retry else None
            wait = min(deadline, next_write or deadline) - now
            ready, _, _ = select.select([self._proc.fd], [], [], max(0.0, wait))
            if ready:
                data = self._read(self._proc.fd)
                if data is None:
                    status = self._exit_status()
                    said = self._transcript.decode("utf-8", "replace").strip()
                    raise ShellExited(status, f"Before it ended, it said: {said[-800:] or 'nothing'}")
                out.append(parser.feed(data))
        self._last_status = parser.status
        return b"".join(out)

    def _read(self, fd: int) -> bytes | None:
        """One read; None at end of file (Linux reports a closed PTY as EIO)."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                return None
            raise
        if not data:
            return None
        if self.info is None:
            self._transcript = (self._transcript + data)[-4096:]
        return data

    def _write(self, data: bytes) -> None:
        assert self._proc is not None
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._proc.fd, view)
            except BlockingIOError:
                select.select([], [self._proc.fd], [], 1.0)
                continue
            except OSError as exc:
                raise ShellExited(self._exit_status(), f"writing to the shell failed: {exc}") from exc
            view = view[n:]

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _exit_status(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        _wait_exit(proc, 1.0)
        if proc.isalive():
            return None
        if proc.signalstatus is not None:
            return 128 + proc.signalstatus
        return proc.exitstatus

    def upload(self, path: str, data: bytes, timeout: float = 60.0) -> None:
        """Write ``data`` to ``path`` inside the target through a pipe: byte-exact, any size."""
        argv = self.launcher(["/bin/sh", "-c", 'cat > "$1"', "lxck-upload", path])
        proc = subprocess.run(
            argv, input=data, capture_output=True, env=dict(TOOL_ENV), cwd="/",
            preexec_fn=reset_child_signals, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise ShellExited(None, f"uploading the cell failed: {proc.stderr.decode(errors='replace').strip()}")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc (children of lxc-attach include the shell)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_exit(proc: PtyProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.isalive() and time.monotonic() < deadline:
        time.sleep(0.005)
