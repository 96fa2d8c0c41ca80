"""One persistent shell under a PTY: spawn, handshake, run cells with streamed output, interrupt, close.

The session speaks to the shell only through a :class:`~lxc_kernel.transport.Transport`: a PTY
channel for the shell, pipe-mode helpers for uploads, the stderr reader and input detection. It knows
nothing of LXC. Each cell is a :class:`~lxc_kernel.cellrun.CellRun`; this module only selects, reads
and forwards bytes, and carries out the actions the cell machine returns.

The stderr channel: at startup the shell makes a FIFO in its session directory (0700) and holds it
read-write on fd 29, so writers never block on open and the FIFO keeps its buffer while a reader is
being replaced. A pipe-mode helper (``cat``) copies it out. When that reader dies (the container's
processes can kill it) the host sees end-of-file and starts another; one that stalls is noticed when a
cell's stderr end marker does not come within a second of its stdout end marker (and from the host's
/proc when it can see it), and replaced too. After three losses in a cell stderr is merged into stdout.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import stdin as input_detection
from .bounded import OutputTooLarge
from .cellrun import Act, Action, CellRun, Phase, RunResult, Timing
from .errors import LxcKernelError, ShellExited, ShellTimeout
from .output import Sink
from .protocol import (
    MAX_TYPED_LINE,
    SWEEP_STALE_DIRS,
    CellParser,
    Handshake,
    ShellScript,
    frame_cell,
    frame_query,
    frame_remake_dir,
    frame_sync,
    inline_length,
    new_secret,
    new_token,
    script_file,
    valid_session_dir,
)
from .transport import PtyChannel, Transport, kill_tree, process_tree, wait_gone

__all__ = ["RunHooks", "RunResult", "ShellSession", "UploadFailed"]

# busybox ash edits lines in a 1024-byte buffer and runs the overflow as the next command
# (measured, LXC 5.0.2); longer cells travel as a file written through a pipe helper.
INLINE_LIMIT = 960
INTERRUPT_GRACE = 2.0  # after ^C, how long the shell gets to come back before it is replaced
MAX_RETYPES = 3  # a cell's line typed again when another reader of the terminal took it
QUERY_LIMIT = 1 << 20  # what a hidden helper command may print (completion in a huge directory...)
TRANSCRIPT_LIMIT = 4096  # what the shell said before its handshake, kept for error messages
# The stderr reader: the FIFO by its path, or through the shell's fd when the directory was removed.
_STDERR_READER = '[ -p "$1" ] && exec cat "$1"; exec cat "/proc/$2/fd/29"'
_UPLOAD = 'umask 077; cat > "$1"'


class LineTaken(LxcKernelError):
    """Another reader of the shell's terminal kept taking the kernel's typed line."""


class FramingLost(LxcKernelError):
    """The shell went back to reading its next command line without printing the cell's end marker."""


class UploadFailed(LxcKernelError):
    """A long cell could not be written into the container; the shell and its state are untouched."""


class RunHooks:
    """Optional callbacks from the read loop of one cell; every default does nothing.

    Interactive input (see cellio.py) needs to act at moments only the loop knows: when the cell's
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


class ShellSession:
    """A shell in a PTY, reached through a transport, that runs one framed cell at a time."""

    def __init__(
        self,
        transport: Transport,
        *,
        setup: Sequence[str] = (),
        separate_stderr: bool = True,
        keep_colors: bool = False,
        stdin_null: bool = True,
        dimensions: tuple[int, int] = (24, 120),
        health_check: Callable[[], None] | None = None,
        health_interval: float = 1.0,
        flush_interval: float = 0.05,
        on_new_dir: Callable[[ShellSession], None] | None = None,
    ) -> None:
        self.transport = transport
        self.setup = list(setup)
        self.separate_stderr = separate_stderr
        self.keep_colors = keep_colors
        self.stdin_null = stdin_null
        self.dimensions = dimensions
        self.health_check = health_check
        self.health_interval = health_interval
        self.flush_interval = flush_interval
        # Called after the session directory was made anew (a tmp cleaner removed it): reinstall helpers.
        self.on_new_dir = on_new_dir
        self.info: Handshake | None = None
        self.shell_host_pid: int | None = None
        self._termios: tuple[int, list[Any]] | None = None  # the shell's terminal after the handshake
        self._prompt_ticks = 0  # health ticks that saw a running cell's shell back at its prompt
        self.notices: list[str] = []  # things the user should hear about once (stderr merged...)
        self._chan: PtyChannel | None = None
        self._reader: object | None = None  # subprocess.Popen of the stderr reader
        self._err_enabled = False
        self._err_given_up = False  # the reader was killed again and again: stderr stays merged
        self._pidfd: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._interrupt = False
        self._stop = False
        # Held while a cell or query drives the terminal; re-entrant so a failing health check inside
        # the loop can close the session from the same thread.
        self._busy = threading.RLock()
        self._transcript = b""
        # The session's part of every stdout marker, typed once in the bootstrap (protocol._FUNCTIONS).
        self._secret = new_secret()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._chan is not None and self._chan.alive

    def exit_status(self, wait: float = 0.5) -> int | None:
        """How the shell ended (None while it runs or when unknown)."""
        return self._chan.exit_status(wait) if self._chan is not None and not self._chan.alive else None

    @property
    def pid(self) -> int | None:
        """PID of the host process that carries the PTY (lxc-attach, or the local shell)."""
        return self._chan.pid if self._chan is not None else None

    @property
    def pids(self) -> list[int]:
        """Every host process this session started and still owns."""
        reader = getattr(self._reader, "pid", None)
        return [p for p in (self.pid, reader) if p]

    def start(self, timeout: float = 10.0) -> Handshake:
        """Spawn the shell and handshake; raise ShellExited/ShellTimeout with what the shell said."""
        self._chan = self.transport.open_shell(self.dimensions)
        deadline = time.monotonic() + timeout
        try:
            probe = new_token()
            self._exchange(ShellScript.probe(probe), probe, deadline, retry=0.03, secret=False)
            # lxc-attach re-applies the terminal modes it saved at startup, undoing the first clear.
            self._chan.clear_onlcr()
            boot = new_token()
            info = Handshake.parse(self._exchange(ShellScript.bootstrap(boot, self._secret), boot, deadline))
            self.info = info
            self._watch_shell()
            for line in (SWEEP_STALE_DIRS, *self.setup):
                token = new_token()
                out = self._exchange(frame_query(line, token), token, deadline)
                if self._last_status:
                    raise ShellExited(None, f"session setup `{line}` failed: {out.decode(errors='replace').strip()}")
            if self.shell_host_pid:
                self._termios = input_detection.terminal_attrs(self.shell_host_pid)
            if self.separate_stderr and info.session_dir:
                self._err_enabled = True
                self._spawn_reader()
            elif self.separate_stderr:
                self.notices.append("/tmp in the container is not writable, so stderr is merged into stdout")
        except BaseException:
            self.close()
            raise
        return info

    def _watch_shell(self) -> None:
        """Watch the shell itself with a pidfd, where the host can see it: a shell that exits while an
        ``&`` job still holds the terminal gives no EOF, but its pidfd turns readable at once."""
        assert self._chan is not None
        self.shell_host_pid = self.transport.shell_host_pid(self._chan, self.info.pid if self.info else None)
        if self.shell_host_pid:
            try:
                self._pidfd = os.pidfd_open(self.shell_host_pid)
            except OSError:
                self._pidfd = None

    def _spawn_reader(self) -> None:
        assert self.info is not None
        self._end_reader()
        self._reader = self.transport.spawn(
            ["/bin/sh", "-c", _STDERR_READER, "lxck-stderr", f"{self.info.session_dir}/err", str(self.info.pid)]
        )

    def _reader_fd(self) -> int | None:
        stdout = getattr(self._reader, "stdout", None)
        return stdout.fileno() if stdout is not None and not stdout.closed else None

    def _end_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        self.transport.end_spawned(reader)  # type: ignore[arg-type]
        tree = process_tree(reader.pid)  # type: ignore[attr-defined]
        kill_tree(tree)
        wait_gone(tree, 0.3)  # zombies count as gone: the read loop must not wait for init's reaping
        try:
            reader.wait(0.5)  # type: ignore[attr-defined]
        except Exception:
            pass
        if reader.stdout is not None:  # type: ignore[attr-defined]
            reader.stdout.close()  # type: ignore[attr-defined]

    def _reader_stalled(self) -> bool:
        """The reader's process inside the container is stopped (SIGSTOP): only the host can tell."""
        if self._reader is None or not self.transport.capabilities.host_pids:
            return False
        for proc in process_tree(self._reader.pid)[1:]:  # type: ignore[attr-defined]
            try:
                if proc.status() in ("stopped", "tracing-stop"):
                    return True
            except Exception:
                continue
        return False

    def request_stop(self) -> None:
        """From another thread (kernel shutdown): end the running cell at once."""
        self._stop = True
        self._wake()

    def close(self) -> None:
        """End every process of this session, by PID, and release its descriptors."""
        self.request_stop()
        got = self._busy.acquire(timeout=3.0)  # let a running cell see the stop and leave the loop
        try:
            chan, self._chan = self._chan, None
            # The shell, its jobs and the stderr reader are host descendants of the processes we
            # spawned. Taken now as psutil handles: a kill later checks each is still the same process.
            tree = process_tree(chan.pid) if chan is not None else []
            if chan is not None:
                if chan.alive and self.info is not None and self.info.session_dir:
                    # Polite first: remove the session directory and leave. Bounded, then SIGKILL.
                    # A host that cannot see the container's processes (a non-root kernel) cannot kill the
                    # shell's jobs by PID below: the shell kills them itself.
                    # (Through a file: busybox ash lists no jobs in a $(...) subshell.)
                    listed = f"'{self.info.session_dir}/jobs'"
                    jobs = "" if self.transport.capabilities.host_pids else (
                        f"\\command jobs -p >{listed} 2>/dev/null; "
                        f"\\command kill -KILL $(\\command cat {listed}) 2>/dev/null; ")
                    try:
                        chan.write(f"\x15{jobs}\\command rm -rf '{self.info.session_dir}'; \\exit 0\n".encode(),
                                   timeout=0.2)
                    except OSError:
                        pass
                    chan.wait(0.3)
                self.transport.end_shell(chan, self.info.pid if self.info is not None else None)
                if chan.alive:
                    chan.hangup()  # Incus and LXD clients only clean up on SIGHUP; lxc-attach takes it too
                    chan.wait(0.1)
                kill_tree(tree)
                chan.close()
            self._end_reader()
            wait_gone(tree, 2.0)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1
        finally:
            if got:
                self._busy.release()

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- interrupts -----------------------------------------------------------------------------
    def request_interrupt(self) -> None:
        """Async-signal-safe: mark the running cell for interruption and wake its read loop."""
        self._interrupt = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"i")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
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
        closed. UploadFailed when a long cell could not be written into the container: the shell is
        untouched. ``health_check`` is consulted while the shell is silent, so a frozen or stopped
        container ends the cell with its error instead of a hang. ``stdin=True`` gives this cell's
        commands the terminal as stdin (interactive input, with ``hooks``); None keeps the session's
        ``stdin_null`` choice.
        """
        chan, info = self._chan, self.info
        if chan is None or info is None:
            raise ShellExited(None, "the shell is not running")
        self._drain_wake()
        self._interrupt = False
        self._prompt_ticks = 0
        token = new_token()
        err_token = new_token() if self._err_enabled else None
        stdin_null = self.stdin_null if stdin is None else not stdin
        mode = "null" if stdin_null else ("tty" if info.tty else "inherit")
        if inline_length(source) > INLINE_LIMIT:
            path = self._upload_cell(source)
            line = frame_cell(None, token, err_token=err_token, script_path=path, stdin=mode)
        else:
            line = frame_cell(source, token, err_token=err_token, stdin=mode, ansi=info.ansi, source_fd=info.source)
        timing = Timing(
            timeout=timeout,
            health_interval=self.health_interval,
            flush_interval=self.flush_interval,
            interrupt_grace=INTERRUPT_GRACE,
            idle_after=hooks.idle_after if hooks is not None else None,
            idle_every=hooks.idle_every if hooks is not None else 0.15,
        )
        cell = CellRun(
            line, token + self._secret, sink, time.monotonic(), err_token=err_token,
            sync_line=lambda: frame_sync(token, err_token), timing=timing, keep_colors=self.keep_colors,
            health=self.health_check is not None or not self.transport.capabilities.eof_on_death,
        )
        with self._busy:
            if self._chan is None:
                raise ShellExited(None, "the shell was closed")
            self._drive(cell, hooks)
        result = cell.result
        assert result is not None
        if cell.exited:
            # No EOF comes while an `&` job holds the terminal, and lxc-attach then lives on: don't wait.
            status = chan.exit_status(0.0 if cell.shell_gone_fired else 1.0)
            detail = "Background jobs that still held the terminal were ended." if status is None else ""
            self.close()
            raise ShellExited(status, detail)
        if result.stderr_lost and cell.respawns >= cell.timing.max_respawns and self._err_enabled:
            self._give_up_stderr()
        if result.restarted:
            self.close()
        elif result.repairs and self.alive:
            self._repair(result.repairs)
        self._restore_terminal()
        return result

    def _restore_terminal(self) -> None:
        """A cell's `stty` (`erase x`, `-icanon`, `-isig`, `eof ^B`...) would garble or stall the kernel's next
        typed line (seen: `stty erase x` ate the x of every framing word), so the terminal the shell reads is
        put back as it was after the handshake. Only where the host sees the shell (/proc)."""
        saved = self._termios
        if saved is None or not self.shell_host_pid or not self.alive:
            return
        if input_detection.restore_terminal(self.shell_host_pid, saved):
            self.notices.append(
                "the cell changed the terminal settings (stty); they were put back, because the kernel types "
                "every cell through that terminal"
            )

    def _drive(self, cell: CellRun, hooks: RunHooks | None) -> None:
        """The select loop: forward bytes and ticks to ``cell``, carry out its actions."""
        chan = self._chan
        assert chan is not None
        watch_pidfd = self._pidfd is not None
        while True:
            now = time.monotonic()
            if self._interrupt:
                self._interrupt = False
                cell.interrupt(now)
            if self._stop:
                cell.stop(now)
            for action in cell.tick(now):
                self._do(action, cell, hooks, chan)
            if cell.result is not None:
                return
            wakeup = cell.next_wakeup()
            fds = [chan.fileno(), self._wake_r]
            err_fd = self._reader_fd() if cell.stderr_alive else None
            if err_fd is not None:
                fds.append(err_fd)
            if watch_pidfd and self._pidfd is not None:
                fds.append(self._pidfd)
            wait = None if wakeup is None else max(0.0, wakeup - time.monotonic())
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except InterruptedError:
                continue
            now = time.monotonic()
            if self._wake_r in ready:
                self._drain_wake()
            # Data before timers: a starved kernel that wakes late must see the output that is already
            # there (an end marker, say) before deciding anything on a deadline.
            if chan.fileno() in ready:
                data = chan.read()
                if data is None:
                    self._drain_stderr(cell, now)
                    cell.stdout_closed(now)
                elif data:
                    cell.feed_stdout(data, now)
            if err_fd is not None and err_fd in ready:
                data = self._read_reader(err_fd)
                if data is None:
                    cell.stderr_closed(now)
                elif data:
                    cell.feed_stderr(data, now)
            if watch_pidfd and self._pidfd is not None and self._pidfd in ready:
                watch_pidfd = False
                cell.shell_died(now)

    def _do(self, action: Action, cell: CellRun, hooks: RunHooks | None, chan: PtyChannel) -> None:
        act = action.act
        if act is Act.WRITE:
            try:
                chan.write(action.data)
            except OSError:
                cell.stdout_closed(time.monotonic())
        elif act is Act.STARTED and hooks is not None:
            hooks.started()
        elif act is Act.IDLE and hooks is not None:
            hooks.idle()
        elif act is Act.INTERRUPTING and hooks is not None:
            hooks.interrupting()
        elif act is Act.HEALTH:
            if cell.phase is Phase.SENT and self._shell_awaits_line():
                # Seen at two health ticks in a row (2 s): a start marker merely slow in transit under
                # load must not make a cell run twice.
                cell.idle_line_seen += 1
                if cell.idle_line_seen >= 2:
                    cell.idle_line_seen = 0
                    self._retype(cell, chan)
            elif cell.phase is Phase.SENT:
                cell.idle_line_seen = 0
            elif cell.phase is Phase.RUNNING:
                self._check_running_shell(cell)
            if self._reader_stalled():
                self._respawn_reader(cell)
            try:
                # The transport's own liveness first (a dead cluster member gives no end of file).
                self.transport.check_alive()
                if self.health_check is not None:
                    self.health_check()
            except BaseException:
                cell.stop(time.monotonic())  # flush what was read
                self.close()
                raise
        elif act is Act.RESPAWN_STDERR:
            self._respawn_reader(cell)

    def _shell_awaits_line(self) -> bool:
        """The shell sits in a read of its own terminal (its next command line) while a cell's line was
        typed a second ago: someone else read that line. Only the host's /proc can tell."""
        pid = self.shell_host_pid
        if not pid:
            return False
        fds = input_detection.waiting_fds(pid)
        return bool(fds) and all(input_detection.own_line_read(pid, fd) for fd in fds)

    def _check_running_shell(self, cell: CellRun) -> None:
        """A silent running cell whose shell is stopped, or back at its prompt, would wait forever.

        A stopped shell (``kill -STOP $$``: interactive shells ignore only SIGTSTP) is sent SIGCONT and the
        user told. A shell that reads its own next line at two health ticks in a row (2 s, so an end marker
        still in transit under load is not mistaken) has lost the cell's framing: the cell redirected the
        shell's own stdout (``exec >/dev/null`` in ash), a signal cut the framing line short (``kill -INT
        $$`` in ash), or the like. Its end marker will never come, so the cell fails and the shell, whose
        stdout can no longer be trusted, is closed. Only the host's /proc can tell either."""
        pid = self.shell_host_pid
        if not pid:
            return
        if input_detection.process_state(pid) == "T":
            os.kill(pid, signal.SIGCONT)
            self.notices.append("the shell was stopped (SIGSTOP) while the cell ran; the kernel continued it")
            return
        if not self._shell_awaits_line():
            self._prompt_ticks = 0
            return
        self._prompt_ticks += 1
        if self._prompt_ticks >= 2:
            self._prompt_ticks = 0
            cell.stop(time.monotonic())
            raise FramingLost(
                "the shell went back to its prompt but the cell's end marker never came: the cell redirected "
                "the shell's own stdout (`exec >/dev/null`, `exec 1>&-`) or a signal cut the kernel's framing "
                "short (`kill -INT $$`). The shell was closed; the next cell starts a fresh one."
            )

    def _retype(self, cell: CellRun, chan: PtyChannel) -> None:
        """Type the cell's line again; a thief has its two token halves, but without the session's
        secret it cannot fake the markers. After MAX_RETYPES the cell fails instead of waiting forever."""
        if cell.retypes >= MAX_RETYPES:
            cell.stop(time.monotonic())
            raise LineTaken(
                f"another process in the container reads the shell's terminal and took the cell's line "
                f"{cell.retypes + 1} times, so the cell did not run. Find it with `ps` (a process reading "
                "/dev/pts/N) and stop it; the shell was closed, the next cell starts a fresh one."
            )
        cell.retypes += 1
        try:
            chan.write(cell.line)
        except OSError:
            cell.stdout_closed(time.monotonic())

    def _respawn_reader(self, cell: CellRun | None) -> None:
        if not self._err_enabled or self.info is None:
            return
        try:
            self._spawn_reader()
        except LxcKernelError:
            self._give_up_stderr()
            return
        if cell is not None:
            cell.stderr_respawned()

    def _give_up_stderr(self) -> None:
        self._err_enabled = False
        self._err_given_up = True
        self._end_reader()
        self.notices.append(
            "the stderr reader inside the container was killed again and again, so stderr is merged into "
            "stdout from now on (`%reset` starts a fresh shell with both)"
        )

    def _read_reader(self, fd: int) -> bytes | None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b""
        except OSError:
            return None
        return data or None

    def _drain_stderr(self, cell: CellRun, now: float) -> None:
        """The terminal ended: take what the stderr reader still has, briefly."""
        fd = self._reader_fd() if cell.stderr_alive else None
        deadline = now + 0.1
        while fd is not None and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.02)
            data = self._read_reader(fd) if ready else None
            if not data:
                return
            cell.feed_stderr(data, now)

    def _repair(self, flags: str) -> None:
        """The session directory or fd 29 was lost during the cell: make both anew, between cells."""
        assert self.info is not None
        token = new_token()
        try:
            out = self._exchange(frame_remake_dir(token), token, time.monotonic() + 5.0)
        except (ShellTimeout, OutputTooLarge):
            out = b""
        new_dir = out.decode("utf-8", "replace").strip()
        if not valid_session_dir(new_dir):
            self._err_enabled = False
            self._end_reader()
            self.notices.append("the session directory was removed and could not be made again, so stderr is "
                                "merged into stdout and long cells cannot run")
            self.info = dataclasses.replace(self.info, session_dir="")
            return
        self.info = dataclasses.replace(self.info, session_dir=new_dir)
        if self.separate_stderr and not self._err_given_up:
            # Also after a directory that could not be made before (/tmp was full or read-only).
            self._err_enabled = True
            self._spawn_reader()
        if self.on_new_dir is not None:
            self.on_new_dir(self)

    # -- uploads --------------------------------------------------------------------------------
    def _upload_cell(self, source: str) -> str:
        """Write a long cell into the session directory; UploadFailed leaves the shell as it was."""
        assert self.info is not None
        if not self.info.session_dir:
            self._repair("d")  # /tmp may be usable again since the directory was lost
        if not self.info.session_dir:
            raise UploadFailed("this cell is too long to type into the shell and the container's /tmp could "
                               "not hold a session directory, so it was not run. The shell is unchanged.")
        path = f"{self.info.session_dir}/cell"
        try:
            self.upload(path, script_file(source))
        except UploadFailed:
            # A tmp cleaner may have removed the directory: make it again and try once more.
            self._repair("d")
            if not self.info.session_dir:
                raise
            path = f"{self.info.session_dir}/cell"
            self.upload(path, script_file(source))
        return path

    def upload(self, path: str, data: bytes, timeout: float = 60.0) -> None:
        """Write ``data`` to ``path`` inside the target through a pipe: byte-exact, any size."""
        try:
            result = self.transport.run(["/bin/sh", "-c", _UPLOAD, "lxck-upload", path], input=data,
                                        timeout=timeout, limit=4096, what="the upload helper's output")
        except LxcKernelError as exc:
            raise UploadFailed(f"writing the cell into the container failed ({exc}), so it was not run. "
                               "The shell and its state are unchanged.") from exc
        if result.returncode != 0:
            said = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
            raise UploadFailed(f"writing the cell to {path} inside the container failed: {said}. The cell was "
                               "not run; the shell and its state are unchanged. (Is /tmp full or read-only?)")

    # -- between cells --------------------------------------------------------------------------
    def send_input(self, data: bytes) -> None:
        """Type ``data`` into the terminal: the reply to a command that waits for input."""
        if self._chan is None:
            raise ShellExited(None, "the shell is not running")
        try:
            self._chan.write(data)
        except OSError as exc:
            raise ShellExited(None, f"writing to the shell failed: {exc}") from exc

    def find_waiter(self) -> input_detection.Waiter | None:
        """The command of this shell that waits for terminal input, if one does: from the host's /proc
        where the transport lets the host see the shell, else from inside through a pipe helper."""
        if self.info is None:
            return None
        if self.shell_host_pid:
            return input_detection.find_waiter(self.shell_host_pid)
        return input_detection.find_waiter_inside(self.transport, self.info.pid)

    def is_shell(self, waiter: input_detection.Waiter) -> bool:
        """The waiter is the shell itself (its ``read`` builtin), by host or container PID."""
        return waiter.pid == (self.shell_host_pid or (self.info.pid if self.info else None))

    def set_echo(self, on: bool) -> bool:
        """Turn the terminal's echo on or off from the host (False where the host cannot reach it)."""
        return bool(self.shell_host_pid) and input_detection.set_echo(self.shell_host_pid, on)  # type: ignore[arg-type]

    def query(self, source: str, timeout: float = 1.0) -> tuple[int, str]:
        """Run a hidden helper command between cells (completion, inspection): ``(status, stdout)``.

        It runs in the shell itself, so it sees the cell's variables, functions, aliases and working
        directory; stdin is /dev/null and stderr is discarded. ``$?`` is not disturbed: every framed line
        ends in ``__lxck_post``, so a cell already starts with ``$?`` 0 and a query leaves it 0. If the
        command outlives ``timeout`` it gets ^C and the shell is resynced, as after an interrupt. Its
        output is capped at 1 MiB (the rest is dropped).
        """
        if self._chan is None or self.info is None:
            raise ShellExited(None, "the shell is not running")
        token = new_token()
        line = frame_query(source, token, ansi=self.info.ansi)
        if len(line) > INLINE_LIMIT:
            raise ValueError("query too long for one line")
        with self._busy:
            deadline = time.monotonic() + timeout
            try:
                out = self._exchange(line, token, deadline)
            except ShellTimeout:
                self._resync()
                raise ShellTimeout(f"the helper command did not answer within {timeout:g} s") from None
        return self._last_status or 0, out.decode("utf-8", "replace")

    def _resync(self) -> None:
        """^C flushes type-ahead input, so keep typing the sync line until it answers (measured, LXC 5.0.2).

        If it does not answer (a frozen container, a helper that ignores SIGINT) the session is kept:
        a completion must not destroy the user's shell. The next cell's start marker drops whatever
        the shell prints before it, and a shell that stays stuck is replaced by that cell's interrupt.
        """
        assert self._chan is not None
        sync = new_token()
        try:
            self._chan.write(b"\x03")
            self._exchange(frame_sync(sync), sync, time.monotonic() + INTERRUPT_GRACE, retry=0.3)
        except ShellTimeout:
            pass
        except OSError:
            self.close()
            raise ShellExited(None, "the shell went away while a helper command ran") from None

    # -- I/O helpers ----------------------------------------------------------------------------
    _last_status: int | None = None

    def _exchange(self, line: bytes, token: str, deadline: float, retry: float | None = None,
                  limit: int = QUERY_LIMIT, secret: bool = True) -> bytes:
        """Write ``line`` and collect output until its end marker (retrying the write if asked). Output
        past ``limit`` is dropped; the shell is still read to the marker, so it stays in step."""
        chan = self._chan
        assert chan is not None
        if len(line) > MAX_TYPED_LINE:
            # A shell in canonical mode would wait forever for the end of this line: refuse it.
            raise LxcKernelError(f"a line of {len(line)} bytes cannot be typed into the shell (the terminal "
                                 f"takes at most {MAX_TYPED_LINE} with its newline): {line[:80]!r}...")
        parser = CellParser(token + self._secret if secret else token)
        out: list[bytes] = []
        size = 0
        next_write: float | None = time.monotonic()
        while not parser.done:
            now = time.monotonic()
            if now >= deadline:
                said = self._transcript.decode("utf-8", "replace").strip()
                raise ShellTimeout(f"the shell did not answer in time. It said: {said[-500:] or 'nothing'}")
            if next_write is not None and now >= next_write:
                try:
                    chan.write(line)
                except OSError as exc:
                    raise ShellExited(chan.exit_status(1.0), f"writing to the shell failed: {exc}") from exc
                next_write = now + retry if retry else None
                retry = retry * 1.5 if retry else None
            wait = min(deadline, next_write or deadline) - now
            ready, _, _ = select.select([chan.fileno()], [], [], max(0.0, wait))
            if not ready:
                continue
            data = chan.read()
            if data is None:
                status = chan.exit_status(1.0)
                said = self._transcript.decode("utf-8", "replace").strip()
                raise ShellExited(status, f"Before it ended, it said: {said[-800:] or 'nothing'}")
            if self.info is None:
                self._transcript = (self._transcript + data)[-TRANSCRIPT_LIMIT:]
            got = parser.feed(data)
            if size < limit:
                out.append(got[: limit - size])
            size += len(got)
        self._last_status = parser.status
        return b"".join(out)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children of lxc-attach include the shell)."""
    return [p.pid for p in process_tree(pid)[1:]]


