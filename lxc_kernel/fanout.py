"""Many containers from one notebook: one persistent shell per target, and ``%%on`` cells run in all of them.

A :class:`Fleet` holds the kernel's fan-out sessions, one :class:`~lxc_kernel.session.ShellSession` per
target container, opened lazily by the first ``%%on`` cell that names it and kept until ``%on close``,
shutdown or restart; the shell's variables and working directory carry over between ``%%on`` cells
aimed at the same target. An idle session is only descriptors and sleeping processes: nothing polls it.

One ``%%on`` cell is a :class:`FanOut`. ``ShellSession.run`` is a blocking select loop, so each running
target gets a worker thread (a pool sized by ``--parallel``). Workers never publish: ipykernel's IOPub
socket is not safe to use from other threads, so everything a worker sees goes into one queue, and the
kernel's own thread drains it while it waits and turns it into messages (:class:`BlockView`,
:class:`InterleaveView`). An interrupt reaches every running session through ``request_interrupt``
(async-signal-safe), and targets that have not started yet are skipped.

Work that a plain cell does per session is done once for all targets where it would otherwise grow with
their square (every look at /proc reads every session's processes): the kernel's thread asks once a
second whether the targets' containers still run, the checks for a command waiting on the terminal share
one budget, and shutdown ends every process from one look at /proc.

Nothing here imports ipykernel: the kernel passes the functions that publish.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import html
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil

from .ansi import strip
from .attach import AttachOptions
from .backends import Backend
from .cellio import CellIO
from .errors import ConfigError, ContainerNotReady, LxcKernelError, ShellExited
from .lxc import State, validate_name
from .protocol import sh_quote
from .session import RunHooks, ShellSession
from .transport import kill_tree
from .users import resolve_user

log = logging.getLogger(__name__)

DEFAULT_MAX_SESSIONS = 64
# Each session holds about five descriptors in the kernel (the terminal, the stderr pipe, a wake-up
# pipe pair, a pidfd), and the session's select() cannot watch a descriptor numbered 1024 or more.
MAX_SESSIONS_LIMIT = 150
TICK = 0.05  # how often the kernel's thread looks at the workers when the queue is quiet
LIVE_EVERY = 0.5  # at most this often a running block is redrawn (update_display_data)
LIVE_TAIL = 4000  # characters of a running block's output shown while it runs; all of it at the end
PARTIAL_LIMIT = 4096  # --interleave: a partial line this long is shown without waiting for its newline
_GLOB_CHARS = frozenset("*?[")


class FanOutError(LxcKernelError):
    """A ``%%on`` cell could not start (no target matched, the session cap): nothing ran."""


class SessionCapReached(FanOutError):
    """More fan-out sessions would be open than ``max_fanout_sessions`` allows."""


@dataclass(frozen=True)
class OnRequest:
    """A parsed ``%%on`` line: the targets as written and the options."""

    targets: tuple[str, ...]
    parallel: int | None = None  # None: every target at once
    timeout: float | None = None  # per target; None: the kernel's cell timeout
    keep_going: bool = False  # --continue: failed targets do not fail the cell
    user: str | None = None  # --as USER
    interleave: bool = False


# -- targets ----------------------------------------------------------------------------------------


def is_glob(pattern: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in pattern)


def resolve_targets(patterns: Sequence[str], names: Callable[[], Iterable[str]],
                    validate: Callable[[str], str] | None = None) -> list[str]:
    """The container names ``patterns`` stand for, in the order written, each once.

    A plain name is taken as it is (it need not exist: that target then fails with the reason); a glob
    (``web*``, ``db[12]``) is matched against ``names()``, which is only called when a glob is present,
    and its matches come in that list's (sorted) order. A glob that matches nothing is an error, since a
    runbook that silently ran nowhere would look like success.
    """
    listed: list[str] | None = None
    out: dict[str, None] = {}
    for pattern in patterns:
        if validate is None and ":" in pattern:
            raise ConfigError(f"{pattern!r}: remote targets (remote:name) need a backend that has remotes "
                              "(Incus/LXD); the classic lxc-* backend has none")
        if not is_glob(pattern):
            out[(validate or validate_name)(pattern)] = None
            continue
        if listed is None:
            listed = sorted(names())
        matched = [name for name in listed if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise FanOutError(f"no container matches {pattern!r} (`%lxc list` shows them)")
        out.update(dict.fromkeys(matched))
    return list(out)


# -- the sessions -----------------------------------------------------------------------------------


Opener = Callable[[str, str], ShellSession]
"""``open(name, user)``: a started session in container ``name`` as ``user`` ("" for the default)."""


@dataclass
class Member:
    """One open fan-out session and what ``%on status`` says of it."""

    name: str
    session: ShellSession
    signature: Hashable  # what it was opened with; a cell that wants other options re-opens it
    user: str
    opened: float = field(default_factory=time.monotonic)
    cells: int = 0
    last: str = ""  # the status of its last cell
    running: bool = False


class Fleet:
    """The kernel's fan-out sessions, by container name: at most one shell per target."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        self._lock = threading.Lock()
        self._closing = False

    def __len__(self) -> int:
        return len(self._members)

    def members(self) -> list[Member]:
        return list(self._members.values())

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def check_cap(self, names: Sequence[str], cap: int) -> None:
        """Raise SessionCapReached, naming what is open, when running on ``names`` needs more than ``cap``."""
        open_names = [m.name for m in self.members() if m.session.alive]
        needed = len(set(open_names) | set(names))
        if needed <= cap:
            return
        new = len(set(names) - set(open_names))
        shown = ", ".join(sorted(open_names)[:8]) + (", ..." if len(open_names) > 8 else "")
        raise SessionCapReached(
            f"this cell needs {new} new session{'s' if new != 1 else ''} and {len(open_names)} "
            f"{'is' if len(open_names) == 1 else 'are'} open{f' ({shown})' if open_names else ''}: that is "
            f"{needed}, over the cap of {cap} (max_fanout_sessions). Nothing ran. Close some with "
            "`%on close TARGET...` (or `%on close` for all), or raise the cap "
            "(--LXCKernel.max_fanout_sessions=N)."
        )

    def acquire(self, name: str, signature: Hashable, user: str, opener: Opener) -> tuple[Member, str]:
        """The target's live session, opened now if needed; and a note when an old one was replaced."""
        note = ""
        member = self._members.get(name)
        if member is not None and member.session.alive and member.signature == signature:
            return member, note
        if member is not None:
            note = ("its shell had ended, so a fresh one was opened" if not member.session.alive else
                    "the attach options or --as changed, so a fresh shell was opened; the old one's state is gone")
            self.discard(name)
        if self._closing:
            raise LxcKernelError("the kernel is shutting down")
        session = opener(name, user)
        with self._lock:
            closing = self._closing
            if not closing:
                member = Member(name, session, signature, user)
                self._members[name] = member
        if closing:  # shutdown began while the shell was opening: it must not outlive the kernel
            session.close()
            raise LxcKernelError("the kernel is shutting down")
        return member, note

    def discard(self, name: str) -> None:
        """Close and forget ``name``'s session (if any)."""
        with self._lock:
            member = self._members.pop(name, None)
        if member is not None:
            member.session.close()

    def sweep(self, present: Iterable[str] | None = None) -> list[str]:
        """Close the sessions whose shell ended (their container stopped or went away), and those whose
        container is not in ``present`` (when the caller has the container list); one note for each."""
        notes = []
        listed = set(present) if present is not None else None
        for member in self.members():
            if member.running:
                continue
            if listed is not None and member.name not in listed:
                notes.append(f"{member.name}: the container is gone, so its %%on session was closed")
            elif not member.session.alive:
                notes.append(f"{member.name}: its %%on shell had ended (the container stopped or the shell "
                             "exited), so the session was closed; the next %%on there opens a fresh one")
            else:
                continue
            self.discard(member.name)
        return notes

    def close(self, names: Iterable[str] | None = None) -> list[str]:
        """Close the named sessions (all when None), at once; return the names closed."""
        with self._lock:
            chosen = list(self._members) if names is None else [n for n in names if n in self._members]
            members = [self._members.pop(n) for n in chosen]
        _close_all(m.session for m in members)
        return chosen

    def close_all(self, wait: float = 0.3) -> None:
        """Shutdown and restart: end every process of every session, by PID, and refuse new sessions.
        Running cells end at once.

        jupyter_client kills a kernel that has not exited 2.5 s after its shutdown request, and closing
        50 sessions through ``ShellSession.close`` took 2.3 s and more on 2 cores (each close reads all
        of /proc, which grows with the sessions, and waits for its shell to leave). So the processes are
        ended here, all at once, from one look at /proc taken before the stop wakes the workers: first
        those inside the containers (the shells, what they run, the stderr readers' ``cat``), so each
        lxc-attach reaps its child and exits by itself (a shell killed together with its lxc-attach is an
        orphan that waits for the host's PID 1 to reap it: 1.5 s here), then any lxc-attach still there.
        The sessions' own ``close`` then runs in a daemon thread for at most ``wait`` seconds: it only
        releases descriptors and reaps, which the kernel's exit does anyway. Idle shells lose their polite
        exit; their session directories in the containers are swept by the next session there.
        """
        with self._lock:
            self._closing = True
            members = list(self._members.values())
            self._members.clear()
        roots = [pid for m in members for pid in m.session.pids]
        outer = _handles(roots)
        inner = _descendants(roots)
        for member in members:
            member.session.request_stop()
        kill_tree(inner)
        _wait_exited(roots, 0.5)
        kill_tree([proc for proc in outer if _running(proc.pid)])
        # One thread, one session after another: 50 closing threads at once starved the shutdown itself
        # of the interpreter lock (each close reads all of /proc).
        closer = threading.Thread(target=lambda: [m.session.close() for m in members], name="lxck-close",
                                  daemon=True)
        closer.start()
        closer.join(wait)

    @property
    def closing(self) -> bool:
        return self._closing


def _descendants(roots: Sequence[int]) -> list[psutil.Process]:
    """Every process below ``roots`` (not the roots), from one pass over /proc: psutil's
    ``children(recursive=True)`` reads all of /proc once per root, which for 50 sessions took 0.5 s."""
    if not roots:
        return []
    children: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc)
    out: list[psutil.Process] = []
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def _handles(pids: Iterable[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out


def _wait_exited(pids: Sequence[int], timeout: float) -> None:
    """Wait until every one of ``pids`` (children of the kernel) has exited, without reaping them: their
    owners (ptyprocess, subprocess) reap them when the sessions close."""
    deadline = time.monotonic() + timeout
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if _running(pid)]
        if waiting:
            time.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _close_all(sessions: Iterable[ShellSession]) -> None:
    """``%on close``: close sessions side by side, each with ``ShellSession.close`` (a polite exit, then
    its processes by PID); one after another, 50 would take about 50 times the 20-300 ms of one."""
    sessions = list(sessions)
    if len(sessions) <= 1:
        for session in sessions:
            session.close()
        return
    with ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="lxck-close") as pool:
        for future in [pool.submit(session.close) for session in sessions]:
            try:
                future.result()
            except Exception as exc:  # one failed close must not leave the others open
                log.warning("closing a %%on session failed: %s", exc)


class LxcTargets:
    """Opens fan-out sessions through the kernel's backend, from the kernel's own attach options.

    ``base(name)`` gives the kernel's attach options (environment, cwd, shell, namespaces...) aimed at
    container ``name``, with no user resolved; ``user`` is resolved in that container's own
    /etc/passwd when a session opens, so one ``--as student`` may be different uids in different
    containers. A session's ``signature`` is what it was built from: when the kernel's options or the
    ``--as`` user change, the target's shell is replaced.
    """

    def __init__(
        self,
        base: Callable[[str], AttachOptions],
        backend: Backend,
        *,
        separate_stderr: bool,
        startup_timeout: float,
    ) -> None:
        self.base = base
        self.backend = backend
        self.separate_stderr = separate_stderr
        self.startup_timeout = startup_timeout

    def signature(self, name: str, user: str) -> Hashable:
        return (self.base(self.backend.short_name(name)), user, self.separate_stderr)

    def state(self, name: str) -> State:
        return self.backend.state(name)

    def not_running(self, names: Iterable[str]) -> list[ContainerNotReady]:
        """The errors of those of ``names`` whose container is not RUNNING (stopped, frozen, gone), from one
        look at all of them where the backend has one (two lxc-ls calls, one `incus list`)."""
        return self.backend.not_running(list(names))

    def open(self, name: str, user: str) -> ShellSession:
        self.backend.require_running(name)
        options = self.base(self.backend.short_name(name))
        if user:
            options = resolve_user(self.backend.transport(options, name), user, options)
        setup = ["cd"] if options.cwd is None else [f"cd -- {sh_quote(options.cwd)}"]
        # No health_check: the fan-out asks for all targets at once (FanOut._check_health).
        session = ShellSession(self.backend.transport(options, name), setup=setup,
                               separate_stderr=self.separate_stderr)
        try:
            session.start(timeout=self.startup_timeout)
        except BaseException:
            session.close()
            raise
        return session


class LockedSpill:
    """The kernel's spill directory (budget.SpillDir) shared by targets that spill at the same time: its
    bookkeeping (new files, room, the running total) is not made for several threads, so each call
    takes one lock. Everything else reads through."""

    def __init__(self, spill: Any) -> None:
        self._spill = spill
        self._lock = threading.Lock()

    def new_file(self) -> _LockedSpillFile:
        with self._lock:
            return _LockedSpillFile(self._spill.new_file(), self._lock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spill, name)


class _LockedSpillFile:
    def __init__(self, file: Any, lock: threading.Lock) -> None:
        self._file = file
        self._lock = lock
        self.path = file.path

    def write(self, data: bytes) -> bool:
        with self._lock:
            return bool(self._file.write(data))

    def close(self) -> None:
        self._file.close()


# -- one %%on cell -----------------------------------------------------------------------------------


class Status(enum.Enum):
    WAITING = "waiting"  # not started yet (--parallel)
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"  # non-zero exit status
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # interrupted before it started
    GONE = "gone"  # the container stopped, froze or went away during the cell
    EXITED = "exited"  # the shell itself ended (`exit N`, `set -e`); the next cell opens a fresh one
    ERROR = "error"  # no shell could be opened (not running, no such user, attach failed)
    INPUT = "input"  # a command waited for terminal input, which %%on cannot give

    @property
    def done(self) -> bool:
        return self not in (Status.WAITING, Status.RUNNING)


@dataclass
class TargetResult:
    name: str
    status: Status = Status.WAITING
    exit_code: int | None = None
    seconds: float | None = None
    bytes: int = 0
    reason: str = ""  # for a failed target: what the cell's error says about it

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Target:
    """One target's part of a cell, filled by its worker; its output travels through the queue."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.result = TargetResult(name)
        self.chunks: list[tuple[str, str]] = []  # (stream, text) as shown: the block's content
        self.size = 0  # characters in chunks
        self.opened = False  # its shell was there when the cell began (opened now or before)
        self.gone: ContainerNotReady | None = None  # its container stopped running during the cell


Emit = Callable[[str, str], None]  # (stream name, text)
EmitMessage = Callable[[str, dict[str, Any]], None]  # (msg_type, content): display_data and friends


MakeIO = Callable[[ShellSession, Emit, EmitMessage], CellIO]
"""``make_io(session, emit_stream, emit_display)``: a target's output pipeline, built by the kernel as
for a plain cell (the output budget, display frames) but with no one to answer input: a command that
waits for terminal input stops that target and says why."""

# Quiet targets are checked for a command waiting on the terminal (stdin.find_waiter) as in a plain
# cell, but each check reads all of /proc (about 12 ms with 50 sessions open), so the checks of all
# targets share a budget: 50 quiet targets each checked every 0.5 s kept a core busy.
IDLE_AFTER = 0.25
IDLE_EVERY = 0.5
INPUT_CHECKS_PER_SECOND = 5.0
# Whether the targets' containers still run is asked once a second for all of them (two lxc-ls), not by
# each session (an lxc-info and a /proc scan per target per second, which with 50 targets was a core).
HEALTH_EVERY = 1.0
# Shells opened at the same time. Each opening holds a few more descriptors for a moment (lxc-info's
# pipes, the new terminal, ptyprocess's exec-error pipe), and select() cannot watch one numbered 1024
# or more: 150 sessions hold about 820 of them, so openings come 16 at a time (2 cores open no faster).
OPEN_AT_ONCE = 16


class Gate:
    """A token bucket shared by the workers: at most ``rate`` passes a second (a burst of ``rate``)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class TargetHooks(RunHooks):
    """A target's read-loop hooks: its CellIO's check for a command waiting on the terminal, passed
    through the fan-out's shared :class:`Gate`, and nothing before ^C.

    CellIO's ``interrupting`` serves interactive input: it looks for the shell's own ``read`` waiting on
    the terminal (another scan of /proc, for each target at once: at shutdown, which jupyter_client
    begins with an interrupt, 50 of them starved the shutdown past its 2.5 s) and turns echo off, then
    on again after the cell. A fan-out shell has no input (stdin is /dev/null) and keeps the echo off
    that the session set at its start, so ^C and the resync line are not echoed anyway."""

    def __init__(self, io: CellIO, gate: Gate) -> None:
        self.io = io
        self.gate = gate
        self.idle_after = IDLE_AFTER
        self.idle_every = IDLE_EVERY

    def idle(self) -> None:
        if self.gate.take():
            self.io.idle()


class FanOut:
    """Run one cell body in many targets; the kernel's thread calls :meth:`run` and gets the results."""

    def __init__(
        self,
        fleet: Fleet,
        targets: LxcTargets,
        names: Sequence[str],
        body: str,
        request: OnRequest,
        *,
        user: str,
        view: View,
        make_io: MakeIO,
        colors: bool = False,
        timeout: float | None = None,
        describe: Callable[[int], str] = lambda status: f"exit status {status}",
    ) -> None:
        self.fleet = fleet
        self.opener = targets
        self.targets = [Target(i, name) for i, name in enumerate(names)]
        self.body = body
        self.request = request
        self.user = user
        self.view = view
        self.make_io = make_io
        self.colors = colors
        self.timeout = timeout
        self.describe = describe
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.interrupted = False
        self._running: dict[int, ShellSession] = {}
        self._input_checks = Gate(INPUT_CHECKS_PER_SECOND)
        self._opening = threading.Semaphore(OPEN_AT_ONCE)

    # -- the kernel's thread ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop every target: from a SIGINT handler, so no locks; targets not started yet are skipped."""
        self.interrupted = True
        for session in list(self._running.values()):
            session.request_interrupt()

    def run(self) -> list[TargetResult]:
        n = len(self.targets)
        self.view.start(self.targets)
        workers = max(1, min(self.request.parallel or n, n))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lxck-on") as pool:
            for target in self.targets:
                pool.submit(self._work, target)
            done = 0
            next_check = time.monotonic() + HEALTH_EVERY
            while done < n:
                try:
                    event: tuple[Any, ...] | None = self.events.get(timeout=TICK)
                except queue.Empty:
                    event = None
                while event is not None:
                    done += self._handle(event)
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        event = None
                if self.interrupted:
                    # A request that landed just before a worker's run() began was reset by it: repeat
                    # it until every running cell has ended (a cell already stopping ignores it).
                    for session in list(self._running.values()):
                        session.request_interrupt()
                now = time.monotonic()
                if now >= next_check:
                    self._check_health()
                    next_check = time.monotonic() + HEALTH_EVERY
                self.view.tick(now)
        results = [t.result for t in self.targets]
        self.view.finish(results)
        return results

    def _check_health(self) -> None:
        """Stop the targets whose container stopped running (frozen: a frozen shell never answers, and
        stopped or destroyed ones usually end their terminal first). Their workers report why."""
        running = {self.targets[index].name: (self.targets[index], session)
                   for index, session in list(self._running.items())}
        if not running:
            return
        try:
            errors = self.opener.not_running(running)
        except LxcKernelError as exc:
            log.warning("fan-out health check failed: %s", exc)
            return
        for error in errors:
            target, session = running[error.name]
            target.gone = error
            session.request_stop()

    def _handle(self, event: tuple[Any, ...]) -> int:
        kind, target = event[0], event[1]
        if kind == "out":
            self.view.output(target, event[2], event[3])
        elif kind == "message":
            self.view.message(event[2], event[3])
        elif kind == "state":
            self.view.state(target)
        elif kind == "done":
            self.view.done(target)
            return 1
        return 0

    # -- the workers ----------------------------------------------------------------------------------
    def _post(self, *event: Any) -> None:
        self.events.put(event)

    def _note(self, target: Target, text: str) -> None:
        self._post("out", target, "stderr", f"[lxc-kernel: {text}]\n")

    def _work(self, target: Target) -> None:
        result = target.result
        t0 = time.monotonic()
        try:
            if self.interrupted:
                result.status, result.reason = Status.SKIPPED, "interrupted before it started"
                return
            result.status = Status.RUNNING
            self._post("state", target)
            self._run_target(target)
        except ShellExited as exc:
            self.fleet.discard(target.name)
            # At shutdown the shells are ended on purpose: don't wait for the container's state.
            state = State.RUNNING if self.fleet.closing else self._settled_state(target.name, exc.status)
            if state is not State.RUNNING:
                result.status = Status.GONE
                result.reason = f"the container is {state.value.lower()}; its shell ended with it"
            else:
                result.status, result.reason = Status.EXITED, str(exc)
            result.exit_code = exc.status
            self._note(target, f"{target.name}: {result.reason}")
        except ContainerNotReady as exc:
            # Before the shell opened (it is not running), or while the cell ran (health check).
            member = self.fleet.get(target.name)
            if member is not None and not member.session.alive:
                self.fleet.discard(target.name)
            result.status = Status.GONE if target.opened else Status.ERROR
            result.reason = str(exc)
            self._note(target, str(exc))
        except LxcKernelError as exc:
            result.status, result.reason = Status.ERROR, str(exc)
            self._note(target, str(exc))
        except Exception as exc:  # a bug in one target must not take the cell (or the others) down
            log.exception("fan-out target %s", target.name)
            result.status, result.reason = Status.ERROR, f"internal error: {exc}"
            self._note(target, result.reason)
        finally:
            result.seconds = time.monotonic() - t0  # opening the shell included: a cold target shows it
            self._post("done", target)

    def _run_target(self, target: Target) -> None:
        result = target.result
        signature = self.opener.signature(target.name, self.user)
        member, note = self.fleet.acquire(target.name, signature, self.user, self._open)
        target.opened = True
        if note:
            self._note(target, f"{target.name}: {note}")
        session = member.session
        session.keep_colors = self.colors
        io = self.make_io(
            session,
            lambda stream, text: self._post("out", target, stream, text),
            lambda msg_type, content: self._post("message", target, msg_type, content),
        )
        hooks = TargetHooks(io, self._input_checks)

        def sink(stream: str, text: str) -> None:
            result.bytes += len(text.encode("utf-8", "replace"))
            io.sink(stream, text)

        member.running = True
        self._running[target.index] = session
        try:
            if self.interrupted:
                result.status, result.reason = Status.SKIPPED, "interrupted before it started"
                return
            run = session.run(io.source(self.body), sink, timeout=self.timeout, stdin=False, hooks=hooks)
        finally:
            self._running.pop(target.index, None)
            member.running = False
            if result.status is not Status.SKIPPED:
                member.cells += 1
                io.finish()
        if target.gone is not None:
            self.fleet.discard(target.name)  # stopped mid-cell: its loop no longer runs cells
            raise target.gone
        for notice in session.notices:
            self._note(target, notice)
        session.notices = []
        result.exit_code = run.status
        if io.waiting is not None:
            result.status, result.reason = Status.INPUT, io.waiting_message()
            self._note(target, result.reason)
        elif run.timed_out:
            result.status = Status.TIMEOUT
            result.reason = f"ran longer than {self.timeout:g} s"
        elif run.interrupted:
            result.status, result.reason = Status.INTERRUPTED, "interrupted"
        elif run.status != 0:
            result.status, result.reason = Status.FAILED, self.describe(run.status)
        else:
            result.status = Status.OK
        if run.restarted:
            self.fleet.discard(target.name)
            self._note(target, f"{target.name}: the shell did not come back after the interrupt, so it was "
                               "closed; the next %%on there opens a fresh one")
        member.last = result.status.value

    def _open(self, name: str, user: str) -> ShellSession:
        with self._opening:
            return self.opener.open(name, user)

    def _settled_state(self, name: str, status: int | None, settle: float = 2.0) -> State:
        """The container's state once it has settled: the terminal's EOF can come while ``lxc-stop`` is
        still tearing the container down and lxc-info says RUNNING (as in the kernel's plain cells)."""
        deadline = time.monotonic() + (settle if status in (None, 129, 137, 255) else 0.0)
        while True:
            try:
                state = self.opener.state(name)
            except LxcKernelError:
                return State.RUNNING
            if state not in (State.RUNNING, State.STOPPING, State.ABORTING) or time.monotonic() >= deadline:
                return State.STOPPED if state in (State.STOPPING, State.ABORTING) else state
            time.sleep(0.05)


# -- what the frontend sees ---------------------------------------------------------------------------


class View:
    """Turns a cell's events into messages; runs in the kernel's thread only."""

    def __init__(self, emit_stream: Emit, emit_message: EmitMessage) -> None:
        self.emit_stream = emit_stream
        self.emit_message = emit_message

    def start(self, targets: Sequence[Target]) -> None: ...

    def output(self, target: Target, stream: str, text: str) -> None: ...

    def state(self, target: Target) -> None: ...

    def done(self, target: Target) -> None: ...

    def tick(self, now: float) -> None: ...

    def message(self, msg_type: str, content: dict[str, Any]) -> None:
        self.emit_message(msg_type, content)  # a jdisplay frame a target printed by hand

    def finish(self, results: Sequence[TargetResult]) -> None:
        if results:
            self.emit_message("display_data", {"data": summary_bundle(results), "metadata": {}, "transient": {}})


class BlockView(View):
    """One block per target, in target order, each its own display: created at the start, redrawn while
    it runs (at most every ``LIVE_EVERY`` s, with the tail of its output), and complete when it ends."""

    def __init__(self, emit_stream: Emit, emit_message: EmitMessage, display_prefix: str) -> None:
        super().__init__(emit_stream, emit_message)
        self.prefix = display_prefix
        self._dirty: dict[int, Target] = {}
        self._drawn: dict[int, float] = {}

    def _draw(self, target: Target, msg_type: str, now: float) -> None:
        final = target.result.status.done
        content = {
            "data": block_bundle(target, live=not final),
            "metadata": {"lxc_kernel": {"target": target.name, "status": target.result.status.value,
                                        "exit_code": target.result.exit_code}},
            "transient": {"display_id": f"{self.prefix}-{target.index}"},
        }
        self.emit_message(msg_type, content)
        self._drawn[target.index] = now
        self._dirty.pop(target.index, None)

    def start(self, targets: Sequence[Target]) -> None:
        now = time.monotonic()
        for target in targets:
            self._draw(target, "display_data", now)

    def output(self, target: Target, stream: str, text: str) -> None:
        if target.chunks and target.chunks[-1][0] == stream:
            target.chunks[-1] = (stream, target.chunks[-1][1] + text)
        else:
            target.chunks.append((stream, text))
        target.size += len(text)
        self._dirty[target.index] = target

    def state(self, target: Target) -> None:
        self._dirty[target.index] = target

    def done(self, target: Target) -> None:
        self._draw(target, "update_display_data", time.monotonic())

    def tick(self, now: float) -> None:
        for index, target in list(self._dirty.items()):
            if now - self._drawn.get(index, 0.0) >= LIVE_EVERY:
                self._draw(target, "update_display_data", now)


class InterleaveView(View):
    """Lines as they arrive from any target, each prefixed ``name | ``, on the stream they came on."""

    def __init__(self, emit_stream: Emit, emit_message: EmitMessage) -> None:
        super().__init__(emit_stream, emit_message)
        self._partial: dict[tuple[int, str], str] = {}

    def output(self, target: Target, stream: str, text: str) -> None:
        key = (target.index, stream)
        text = self._partial.pop(key, "") + text
        cut = text.rfind("\n") + 1
        if len(text) - cut >= PARTIAL_LIMIT:
            cut = len(text)
        if cut < len(text):
            self._partial[key] = text[cut:]
        if cut:
            self.emit_stream(stream, prefix_lines(target.name, text[:cut]))

    def done(self, target: Target) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((target.index, stream), "")
            if rest:
                self.emit_stream(stream, prefix_lines(target.name, rest + "\n"))


def prefix_lines(name: str, text: str) -> str:
    """Pure: ``name | `` before every line of ``text`` (which ends in a newline or is a cut partial line)."""
    lines = text.splitlines(keepends=True)
    return "".join(f"{name} | {line}" for line in lines)


# -- rendering (pure) ---------------------------------------------------------------------------------

_STDERR_STYLE = "background: var(--jp-rendermime-error-background, #fdd)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def block_header(result: TargetResult) -> str:
    """``web1: ok (exit 0, 12 ms)``, ``web2: running``."""
    status = result.status
    if not status.done:
        return f"{result.name}: {status.value}"
    parts = []
    if result.exit_code is not None and status is not Status.SKIPPED:
        parts.append(f"exit {result.exit_code}")
    if result.seconds is not None and status is not Status.SKIPPED:
        parts.append(_duration(result.seconds))
    return f"{result.name}: {status.value}" + (f" ({', '.join(parts)})" if parts else "")


def block_bundle(target: Target, *, live: bool = False) -> dict[str, str]:
    """A target's block as text/plain (a header line, then its output as printed, stdout and stderr in
    the order they came) and text/html (stderr in the frontend's stderr colours). While it runs only the
    last ``LIVE_TAIL`` characters are shown, so a redraw stays small."""
    chunks = target.chunks
    cut = 0
    if live and target.size > LIVE_TAIL:
        chunks, cut = _tail(chunks, LIVE_TAIL), target.size - LIVE_TAIL
    header = "── " + block_header(target.result)
    text = "".join(t for _, t in chunks)
    lead = f"[... {cut} characters above, shown when it ends]\n" if cut else ""
    plain = f"{header}\n{lead}{text}"
    status = target.result.status.value
    body = "".join(
        f'<span class="lxck-stderr" style="{_STDERR_STYLE}">{html.escape(strip(t))}</span>' if stream == "stderr"
        else html.escape(strip(t))
        for stream, t in chunks
    )
    page = (
        f'<div class="lxck-on" data-target="{html.escape(target.name)}" data-status="{status}">'
        f'<div style="font-weight: bold; border-bottom: 1px solid var(--jp-border-color2, #ccc)">'
        f"{html.escape(header)}</div>"
        + (f"<div><i>{html.escape(lead.strip())}</i></div>" if lead else "")
        + (f'<pre style="margin: 0">{body}</pre>' if body else "")
        + "</div>"
    )
    return {"text/plain": plain, "text/html": page}


def _tail(chunks: Sequence[tuple[str, str]], keep: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for stream, text in reversed(chunks):
        if keep <= 0:
            break
        piece = text[-keep:]
        out.append((stream, piece))
        keep -= len(piece)
    return out[::-1]


SUMMARY_COLUMNS = ("target", "status", "exit code", "duration", "bytes")


def summary_rows(results: Sequence[TargetResult]) -> list[tuple[str, ...]]:
    return [
        (r.name, r.status.value, "" if r.exit_code is None else str(r.exit_code), _duration(r.seconds),
         str(r.bytes))
        for r in results
    ]


def summary_line(results: Sequence[TargetResult]) -> str:
    """``10 targets: 9 ok, 1 failed (web3)``."""
    counts: dict[str, list[str]] = {}
    for r in results:
        counts.setdefault(r.status.value, []).append(r.name)
    parts = []
    for status, names in counts.items():
        shown = "" if status == Status.OK.value else f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        parts.append(f"{len(names)} {status}{shown}")
    return f"{len(results)} target{'s' if len(results) != 1 else ''}: " + ", ".join(parts)


def summary_bundle(results: Sequence[TargetResult]) -> dict[str, str]:
    """The table after the blocks: target, status, exit code, duration, bytes (HTML, and text)."""
    rows = summary_rows(results)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(SUMMARY_COLUMNS)]
    right = (False, False, True, True, True)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    text = "\n".join([summary_line(results), line(SUMMARY_COLUMNS), *(line(r) for r in rows)]) + "\n"
    ths = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    trs = "".join(
        f'<tr data-status="{html.escape(r[1])}">' + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    page = (f"<div><b>{html.escape(summary_line(results))}</b></div>"
            f'<table class="lxck-on-summary"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>')
    return {"text/plain": text, "text/html": page}


def failure_message(results: Sequence[TargetResult]) -> str:
    """The cell's error: how many failed, and each one with its reason."""
    failed = [r for r in results if not r.ok]
    listed = "; ".join(f"{r.name}: {r.reason or r.status.value}" for r in failed[:20])
    more = f"; and {len(failed) - 20} more" if len(failed) > 20 else ""
    return (f"{len(failed)} of {len(results)} target{'s' if len(results) != 1 else ''} failed - {listed}{more}. "
            "(`%%on --continue` lets a cell succeed when some targets fail.)")
