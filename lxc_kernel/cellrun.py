"""Pure: one cell's state machine. Bytes and clock ticks in; actions, text and a result out. No I/O.

The session (session.py) selects on the shell's terminal and the stderr channel and forwards what it
reads here; it carries out the actions this returns (write to the shell, call a hook, check the
container, replace the stderr reader, give up on the shell). All timing lives in the named deadlines of
:class:`CellRun`, so a test drives it with a fake clock and a fake channel.

Phases::

    SENT ──start marker──▶ RUNNING ──stdout end marker──▶ DRAINING ──stderr end marker or 1 s──▶ DONE
      │                      │                               │
      └── interrupt, timeout ┴──▶ INTERRUPTING ─ end marker ─┴──▶ DONE   (2 s without one: RESTART)

Interrupt, the cell timeout, the health check and a stop request are honoured in every phase: in
DRAINING an interrupt ends the cell at once, since its commands are already done; whatever stderr
does, a cell ends at most ``stderr_grace`` after its stdout end marker.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .ansi import TerminalText
from .output import OutputBuffer
from .protocol import FLAG_ERR_BROKEN, CellParser
from .timers import Deadline, earliest

Sink = Callable[[str, str], None]


class Phase(enum.Enum):
    SENT = "sent"  # the line is written; its start marker has not come back
    RUNNING = "running"  # the cell's commands run
    DRAINING = "draining"  # stdout is done; the rest of stderr is still arriving
    INTERRUPTING = "interrupting"  # ^C sent; resync lines until one answers
    DONE = "done"


class Act(enum.Enum):
    """What the session must do for the cell."""

    WRITE = "write"  # write ``data`` to the shell's terminal
    INTERRUPTING = "interrupting"  # the hook, just before ^C is typed
    STARTED = "started"  # the hook: the cell's commands run from now on
    IDLE = "idle"  # the hook: output went quiet (a command may wait for input)
    HEALTH = "health"  # ask the transport whether the container is still there
    RESPAWN_STDERR = "respawn_stderr"  # the stderr reader died or stalled: start a new one
    RESTART = "restart"  # the shell did not come back after ^C: close it
    SHELL_GONE = "shell_gone"  # the shell died but an `&` job holds the terminal (no EOF will come)


@dataclass(frozen=True)
class Action:
    act: Act
    data: bytes = b""


@dataclass(frozen=True)
class Timing:
    """Every duration the cell machine uses, in one place."""

    timeout: float | None = None  # the cell's time limit
    health_interval: float = 1.0  # how often a silent cell checks the container
    stderr_grace: float = 1.0  # after stdout's end marker, how long stderr may still take
    interrupt_grace: float = 2.0  # after ^C, how long the shell gets to come back
    resync_every: float = 0.5  # how often ^C plus the resync line is typed while interrupting
    shell_gone_grace: float = 0.2  # the shell died: how long to wait for the terminal's EOF
    idle_after: float | None = None  # quiet this long before the IDLE hook (None: no hook)
    idle_every: float = 0.15  # ...and then again this often while the quiet lasts
    flush_interval: float = 0.05  # output coalescing (output.py)
    max_respawns: int = 3  # stderr readers started per cell before stderr is given up


@dataclass(frozen=True)
class RunResult:
    status: int
    interrupted: bool = False
    timed_out: bool = False
    # The shell did not come back after an interrupt and was replaced: its state is gone.
    restarted: bool = False
    # Flags of the end marker: the session directory is gone, fd 29 is not the stderr FIFO any more.
    repairs: str = ""
    # stderr could not be read to its end (the reader died or stalled): some of it may be missing.
    stderr_lost: bool = False
    stopped: bool = False  # ended by a stop request (kernel shutdown)


class CellRun:
    """One cell, from the written line to its result."""

    def __init__(
        self,
        line: bytes,
        token: str,
        sink: Sink,
        now: float,
        *,
        err_token: str | None = None,
        sync_line: Callable[[], bytes],
        timing: Timing = Timing(),
        keep_colors: bool = False,
        health: bool = True,
    ) -> None:
        self.timing = timing
        self.phase = Phase.SENT
        self.out = CellParser(token)
        self.err = CellParser(err_token) if err_token is not None else None
        self._sync_line = sync_line
        self._out_text = TerminalText(keep_colors=keep_colors)
        self._err_text = TerminalText(keep_colors=keep_colors)
        self._buffer = OutputBuffer(sink, interval=timing.flush_interval)
        self.line = line
        self.retypes = 0  # the line was typed again: another reader of the terminal took it (session.py)
        self.idle_line_seen = 0  # health ticks that saw the shell waiting for a line while SENT
        self._actions: list[Action] = [Action(Act.WRITE, line)]
        self._health_enabled = health
        self.last_data = now
        self.interrupted = False
        self.timed_out = False
        self.stopped = False
        self.stderr_lost = False
        self.stderr_alive = err_token is not None
        self.respawns = 0
        self.result: RunResult | None = None
        self.exited = False  # the terminal reached EOF: the shell is gone
        self.shell_gone_fired = False  # ...or it died while an `&` job holds the terminal
        # The named deadlines: nothing else in the cell keeps time.
        self.cell = Deadline("cell")
        self.health = Deadline("health")
        self.stderr_grace = Deadline("stderr_grace")
        self.give_up = Deadline("give_up")
        self.resync = Deadline("resync")
        self.idle = Deadline("idle")
        self.shell_gone = Deadline("shell_gone")
        self.flush = Deadline("flush")
        if timing.timeout:
            self.cell.arm(now, timing.timeout)
        if health:
            self.health.arm(now, timing.health_interval)

    @property
    def deadlines(self) -> tuple[Deadline, ...]:
        return (self.cell, self.health, self.stderr_grace, self.give_up, self.resync, self.idle,
                self.shell_gone, self.flush)

    # -- input ------------------------------------------------------------------------------------
    def feed_stdout(self, data: bytes, now: float) -> None:
        if self.phase is Phase.DONE:
            return
        self.last_data = now
        was_started = self.out.started
        text = self._out_text.feed(self.out.feed(data))
        self._add("stdout", text, now)
        if self.out.started and not was_started and self.phase is Phase.SENT:
            self.phase = Phase.RUNNING
            self._actions.append(Action(Act.STARTED))
            if self.timing.idle_after is not None:
                self.idle.arm(now, self.timing.idle_after)
        if self.out.done:
            self._stdout_done(now)
        elif self.idle.armed and self.phase is Phase.RUNNING:
            self.idle.arm(now, self.timing.idle_after or 0.0)

    def feed_stderr(self, data: bytes, now: float) -> None:
        if self.err is None or self.phase is Phase.DONE:
            return
        self.last_data = now
        self._add("stderr", self._err_text.feed(self.err.feed(data)), now)
        if self.idle.armed and self.phase is Phase.RUNNING:
            self.idle.arm(now, self.timing.idle_after or 0.0)
        if self.err.done and self.phase is Phase.DRAINING:
            self._finish(now)

    def stdout_closed(self, now: float) -> None:
        """End of file on the terminal: the shell is gone (the session raises ShellExited)."""
        if self.phase is Phase.DONE:
            return
        self._add("stdout", self._out_text.feed(self.out.flush()), now)
        self.exited = True
        self._finish(now)

    def stderr_closed(self, now: float) -> None:
        """The stderr reader ended. Replace it (the FIFO keeps what it has not read yet)."""
        self.stderr_alive = False
        if self.err is None or self.err.done or self.phase is Phase.DONE:
            return
        if self.respawns < self.timing.max_respawns:
            self.respawns += 1
            self._actions.append(Action(Act.RESPAWN_STDERR))
        else:
            self.stderr_lost = True
            if self.phase is Phase.DRAINING:
                self._finish(now)

    def stderr_respawned(self) -> None:
        """A new reader runs. A reader that is killed can still take what is in the FIFO with it, the
        start marker included; this cell's stderr is then whatever the new one reads, marked lost."""
        self.stderr_alive = True
        if self.err is not None and not self.err.started and self.phase in (Phase.RUNNING, Phase.DRAINING):
            self.err.started = True
            self.stderr_lost = True

    def shell_died(self, now: float) -> None:
        """The shell process ended (seen through a pidfd) but the terminal may stay open."""
        if not self.shell_gone.armed and self.phase is not Phase.DONE:
            self.shell_gone.arm(now, self.timing.shell_gone_grace)

    def interrupt(self, now: float) -> None:
        """The stop button (or the cell timeout): ^C, then resync; honoured in every phase."""
        if self.phase is Phase.DRAINING:
            self.interrupted = True
            self._finish(now)
        elif self.phase in (Phase.SENT, Phase.RUNNING):
            self.interrupted = True
            self.phase = Phase.INTERRUPTING
            self.idle.disarm()
            self.give_up.arm(now, self.timing.interrupt_grace)
            self.resync.arm(now, 0.0)

    def stop(self, now: float) -> None:
        """The kernel is shutting down: end the cell now, whatever phase it is in."""
        if self.phase is not Phase.DONE:
            self.stopped = True
            self.interrupted = True
            self._finish(now)

    # -- time -------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Fire what is due at ``now``; return the actions for the session, in order."""
        if self.phase is not Phase.DONE:
            if self.cell.expired(now):
                self.cell.disarm()
                self.timed_out = True
                self.interrupt(now)
            if self.stderr_grace.expired(now):
                # The stderr end marker did not come: the reader died or stalled. What it had is
                # shown; the reader is replaced so the next cell starts with a working channel.
                self.stderr_grace.disarm()
                self.stderr_lost = True
                self._actions.append(Action(Act.RESPAWN_STDERR))
                self._finish(now)
            if self.resync.expired(now) and self.phase is Phase.INTERRUPTING:
                # ^C flushes type-ahead input, so the trailing marker of an interrupted line never runs:
                # send ^C, then a line that only prints the markers; repeat until one answers.
                self._actions.append(Action(Act.INTERRUPTING))
                self._actions.append(Action(Act.WRITE, b"\x03" + self._sync_line()))
                self.resync.arm(now, self.timing.resync_every)
            if self.give_up.expired(now) and self.phase is Phase.INTERRUPTING:
                self._actions.append(Action(Act.RESTART))
                self._finish(now, restarted=True)
            if self.shell_gone.expired(now) and self.phase is not Phase.DONE:
                self._actions.append(Action(Act.SHELL_GONE))
                self.exited = self.shell_gone_fired = True
                self._finish(now)
            if self.health.expired(now) and self.phase is not Phase.DONE:
                quiet = now - self.last_data >= self.timing.health_interval
                if quiet or self.phase is Phase.SENT:
                    self._actions.append(Action(Act.HEALTH))
                self.health.arm(now, self.timing.health_interval)
            if self.idle.expired(now) and self.phase is Phase.RUNNING:
                self._buffer.flush()  # a prompt must be on screen before anyone asks for input
                self._actions.append(Action(Act.IDLE))
                self.idle.arm(now, self.timing.idle_every)
        self._buffer.flush_due(now)
        self.flush.arm_at(self._buffer.deadline)
        actions, self._actions = self._actions, []
        return actions

    def next_wakeup(self) -> float | None:
        return earliest(self.deadlines)

    # -- internals --------------------------------------------------------------------------------
    def _add(self, stream: str, text: str, now: float) -> None:
        if text:
            self._buffer.add(stream, text, now)
            self.flush.arm_at(self._buffer.deadline)

    def _stdout_done(self, now: float) -> None:
        self.idle.disarm()
        if self.phase is Phase.INTERRUPTING or self.err is None or self.err.done:
            self._finish(now)
            return
        if FLAG_ERR_BROKEN in self.out.flags:
            # fd 29 was not ours when the cell ended, so no stderr end marker is coming.
            self._finish(now)
            return
        self.phase = Phase.DRAINING
        if not self.stderr_alive and self.respawns >= self.timing.max_respawns:
            self.stderr_lost = True
            self._finish(now)
            return
        self.stderr_grace.arm(now, self.timing.stderr_grace)

    def _finish(self, now: float, restarted: bool = False) -> None:
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        for deadline in self.deadlines:
            deadline.disarm()
        self._buffer.add("stdout", self._out_text.flush(), now)
        if self.err is not None:
            self._buffer.add("stderr", self._err_text.feed(self.err.flush() if not self.err.done else b""), now)
            self._buffer.add("stderr", self._err_text.flush(), now)
        self._buffer.flush()
        status = self.out.status if self.out.status is not None else 130
        self.result = RunResult(
            status,
            interrupted=self.interrupted,
            timed_out=self.timed_out,
            restarted=restarted,
            repairs=self.out.flags,
            stderr_lost=self.stderr_lost and not self.interrupted,
            stopped=self.stopped,
        )
