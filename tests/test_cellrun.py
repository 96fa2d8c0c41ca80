"""The cell state machine, pure: a fake clock and bytes fed by hand, no shell and no I/O."""

from __future__ import annotations

from lxc_kernel.cellrun import Act, CellRun, Phase, Timing
from lxc_kernel.protocol import MARK

TOKEN = "0123456789abcdef"
ERR = "fedcba9876543210"


def start(token: str = TOKEN) -> bytes:
    return MARK + token.encode() + b":S>>"


def end(status: int = 0, token: str = TOKEN, flags: str = "") -> bytes:
    return MARK + token.encode() + f":E{status}{':' + flags if flags else ''}>>".encode()


class Cell:
    """A CellRun with a fake clock and a recording sink."""

    def __init__(self, *, err: bool = True, **timing: object) -> None:
        self.now = 100.0
        self.out: list[tuple[str, str]] = []
        self.run = CellRun(
            b"LINE\n", TOKEN, lambda s, t: self.out.append((s, t)), self.now, err_token=ERR if err else None,
            sync_line=lambda: b"SYNC\n", timing=Timing(**timing),  # type: ignore[arg-type]
        )
        self.actions = self.tick()

    def tick(self, dt: float = 0.0) -> list[Act]:
        self.now += dt
        return [a.act for a in self.run.tick(self.now)]

    def text(self, stream: str) -> str:
        return "".join(t for s, t in self.out if s == stream)


def test_first_action_writes_the_line_and_markers_drive_the_phases() -> None:
    c = Cell()
    assert c.actions == [Act.WRITE] and c.run.phase is Phase.SENT
    c.run.feed_stdout(b"prompt junk" + start() + b"hello\n", c.now)
    assert c.run.phase is Phase.RUNNING and Act.STARTED in c.tick()
    c.run.feed_stderr(start(ERR) + b"oops\n", c.now)
    c.run.feed_stdout(end(3), c.now)
    assert c.run.phase is Phase.DRAINING  # stdout is done, stderr's end marker has not come
    c.run.feed_stderr(end(3, ERR), c.now)
    assert c.run.phase is Phase.DONE and c.run.result is not None and c.run.result.status == 3
    assert c.text("stdout") == "hello\n" and c.text("stderr") == "oops\n"


def test_cell_ends_within_the_stderr_grace_whatever_stderr_does() -> None:
    """A background job writing stderr every 0.1 s must not hold the reply (it used to, forever)."""
    c = Cell()
    c.run.feed_stdout(start() + end(0), c.now)
    c.run.feed_stderr(start(ERR), c.now)
    for _ in range(9):
        c.run.feed_stderr(b"noise\n", c.now)
        c.tick(0.1)
        assert c.run.result is None
    acts = c.tick(0.11)
    assert c.run.result is not None and c.run.result.stderr_lost and Act.RESPAWN_STDERR in acts
    assert c.now - 100.0 <= 1.01 + 1e-9


def test_interrupt_sends_ctrl_c_and_resyncs_until_answered_then_restarts() -> None:
    c = Cell()
    c.run.feed_stdout(start(), c.now)
    c.tick()
    c.run.interrupt(c.now)
    acts = c.run.tick(c.now)
    assert [a.act for a in acts] == [Act.INTERRUPTING, Act.WRITE] and acts[1].data == b"\x03SYNC\n"
    assert c.tick(0.4) == []
    assert c.tick(0.1) == [Act.INTERRUPTING, Act.WRITE]  # resync every 0.5 s
    assert Act.RESTART in c.tick(1.5)  # 2 s after ^C without an answer: the shell is replaced
    assert c.run.result is not None and c.run.result.restarted and c.run.result.interrupted


def test_interrupt_answered_by_the_sync_line() -> None:
    c = Cell()
    c.run.feed_stdout(start(), c.now)
    c.run.interrupt(c.now)
    c.tick()
    c.run.feed_stdout(start() + end(130), c.now + 0.01)
    assert c.run.result is not None and c.run.result.interrupted and c.run.result.status == 130


def test_interrupt_while_draining_ends_the_cell_at_once() -> None:
    c = Cell()
    c.run.feed_stdout(start() + end(0), c.now)
    assert c.run.phase is Phase.DRAINING
    c.run.interrupt(c.now)
    assert c.run.result is not None and c.run.result.status == 0


def test_timeout_interrupts_in_any_phase_before_the_end() -> None:
    c = Cell(timeout=3.0)
    assert Act.WRITE not in c.tick(2.9)
    assert Act.WRITE in c.tick(0.1)  # SENT phase still honours it: ^C + resync
    assert c.run.timed_out and c.run.phase is Phase.INTERRUPTING


def test_health_is_checked_only_while_quiet() -> None:
    c = Cell()
    c.run.feed_stdout(start(), c.now)
    for _ in range(5):
        c.run.feed_stdout(b"busy\n", c.now + 0.5)
        assert Act.HEALTH not in c.tick(0.5)
    assert Act.HEALTH in c.tick(1.0)


def test_idle_hook_after_quiet_and_reset_by_output() -> None:
    c = Cell(idle_after=0.08, idle_every=0.15)
    c.run.feed_stdout(start() + b"Name? ", c.now)
    assert Act.IDLE not in c.tick(0.05)
    c.run.feed_stdout(b"more", c.now)
    assert Act.IDLE not in c.tick(0.05)
    assert Act.IDLE in c.tick(0.04)
    assert c.text("stdout") == "Name? more"  # flushed before the hook asks anyone anything
    assert Act.IDLE in c.tick(0.15)


def test_dead_stderr_reader_is_respawned_then_given_up() -> None:
    c = Cell(max_respawns=2)
    c.run.feed_stdout(start(), c.now)
    for _ in range(2):
        c.run.stderr_closed(c.now)
        assert Act.RESPAWN_STDERR in c.tick()
        c.run.stderr_respawned()
    c.run.stderr_closed(c.now)
    assert Act.RESPAWN_STDERR not in c.tick() and c.run.stderr_lost
    c.run.feed_stdout(end(0), c.now)
    assert c.run.result is not None and c.run.result.stderr_lost


def test_broken_fd29_flag_ends_without_waiting_for_stderr() -> None:
    c = Cell()
    c.run.feed_stdout(start() + end(0, flags="e"), c.now)
    assert c.run.result is not None and c.run.result.repairs == "e"


def test_shell_gone_with_terminal_still_open() -> None:
    c = Cell()
    c.run.feed_stdout(start(), c.now)
    c.tick()
    c.run.shell_died(c.now)
    assert c.tick(0.1) == []
    assert Act.SHELL_GONE in c.tick(0.11) and c.run.exited


def test_stop_and_eof() -> None:
    c = Cell()
    c.run.stop(c.now)
    assert c.run.result is not None and c.run.result.stopped
    d = Cell()
    d.run.feed_stdout(start() + b"partial", d.now)
    d.run.stdout_closed(d.now)
    assert d.run.exited and d.text("stdout") == "partial"


def test_next_wakeup_is_the_earliest_armed_deadline() -> None:
    c = Cell(timeout=10.0, health_interval=1.0)
    assert c.run.next_wakeup() == 101.0
    c.run.feed_stdout(start() + b"x", c.now)
    assert c.run.next_wakeup() == c.now + 0.05  # the output flush comes first
    c.run.stop(c.now)
    assert c.run.next_wakeup() is None


def test_merged_stderr_needs_no_drain() -> None:
    c = Cell(err=False)
    c.run.feed_stdout(start() + b"a\n" + end(1), c.now)
    assert c.run.result is not None and c.run.result.status == 1 and c.text("stdout") == "a\n"
