"""The per-cell output budget: past it, keep the head and the tail and save everything to a host file.

A runaway cell (``yes``, a huge ``cat``) would otherwise freeze the browser and grow the notebook
without bound. Up to ``limit`` characters pass through unchanged. After that the cell's output goes
only to a spill file on the kernel's host, and the last ``limit // 4`` characters are kept in memory;
when the cell ends the kernel shows a notice (how much was left out, where it was saved) followed by
that tail. Memory stays bounded by the tail, and the spill file by ``max_spill``.

Spill files live in the kernel's own directory (:class:`SpillDir`): made on first use, mode 0700,
inside ``output_dir`` only when that is a real directory of the kernel's user that nobody else can
write (checked on a descriptor, and every file made relative to it), capped in total per kernel,
and removed at shutdown (or by the watchdog when the kernel is killed).

Display frames count against the same budget (:meth:`OutputBudget.take`): a frame that does not fit
in what is left is not shown, and the cell's notice says how many were left out.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import deque
from collections.abc import Callable

from . import hostdirs
from .errors import ConfigError
from .output import Sink

DEFAULT_LIMIT = 1_000_000  # characters of output per cell shown in the notebook
DEFAULT_MAX_SPILL = 1 << 30  # bytes saved per cell on the host; beyond, the file is truncated
DEFAULT_SPILL_LIMIT = "1G"  # bytes kept per kernel in all its spill files; the oldest go first

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)[bB]?\s*")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_size(text: str) -> int:
    """``"2M"`` -> 2000000, ``"500k"``, ``"1000"``; ``"0"``/``"off"``/``"none"`` -> 0 (no limit)."""
    if text.strip().lower() in ("off", "none", "unlimited", "0"):
        return 0
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 200k, 2M or off)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def human(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} characters" if n != 1 else "1 character"


class SpillDir:
    """One kernel's private directory of spill files: made on first use, capped, removed by :meth:`close`.

    ``parent`` is ``output_dir`` (it must be a real directory of the kernel's user that nobody else can
    write), or None for the system's temporary directory (root's or ours, sticky if others may write).
    The directory is ``lxc-kernel-<pid>-<random>``, mode 0700. Its files add up to at most ``limit``
    bytes: the oldest files are deleted to make room for a new cell's output, and a single cell past the
    limit is cut. ``on_create`` hears the directory's path (the watchdog removes it if the kernel dies).
    """

    def __init__(
        self,
        parent: str | None = None,
        limit: int = 1_000_000_000,
        on_create: Callable[[str], None] | None = None,
    ) -> None:
        self.parent = parent
        self.limit = limit
        self.on_create = on_create
        self.path: str | None = None
        self.total = 0
        self._parent_fd: int | None = None
        self._fd: int | None = None
        self._name = ""
        self._files: deque[list[object]] = deque()  # [name, size], oldest first
        self._count = 0

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        if self.parent:
            parent = self.parent
            parent_fd = hostdirs.open_private(parent, "output_dir")
        else:
            parent = tempfile.gettempdir()
            parent_fd = hostdirs.open_dir(parent, "temporary directory")
        try:
            if not self.parent:
                hostdirs.check_shared_tmp(parent_fd, parent, "temporary directory")
            self._name, self._fd = hostdirs.make_private(parent_fd, f"lxc-kernel-{os.getpid()}-")
        except BaseException:
            os.close(parent_fd)
            raise
        self._parent_fd = parent_fd
        self.path = os.path.join(parent, self._name)
        if self.on_create is not None:
            self.on_create(self.path)
        return self._fd

    def new_file(self) -> SpillFile:
        """A new spill file (mode 0600) in the directory; ConfigError or OSError says why not."""
        fd = self._open()
        self._count += 1
        name = f"cell-{self._count}.txt"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        file_fd = os.open(name, flags, 0o600, dir_fd=fd)
        entry: list[object] = [name, 0]
        self._files.append(entry)
        assert self.path is not None
        return SpillFile(self, file_fd, entry, os.path.join(self.path, name))

    def room(self, entry: list[object], size: int) -> int:
        """How many of ``size`` more bytes ``entry`` may write, after deleting older files to make room."""
        while self.total + size > self.limit and self._files and self._files[0] is not entry:
            name, old = self._files.popleft()
            self.total -= int(old)  # type: ignore[call-overload]
            try:
                os.unlink(str(name), dir_fd=self._fd)
            except OSError:
                pass
        return max(0, min(size, self.limit - self.total))

    def close(self) -> None:
        """Remove the directory and every spill file in it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._parent_fd is not None:
            hostdirs.remove_tree(self._parent_fd, self._name)
            os.close(self._parent_fd)
            self._parent_fd = None
        self._files.clear()
        self.total = 0


class SpillFile:
    """One cell's spill file; :meth:`write` returns False once the file was cut."""

    def __init__(self, owner: SpillDir, fd: int, entry: list[object], path: str) -> None:
        self.owner, self.fd, self.entry, self.path = owner, fd, entry, path

    def write(self, data: bytes) -> bool:
        allowed = self.owner.room(self.entry, len(data))
        if allowed:
            try:
                os.write(self.fd, data[:allowed])
            except OSError:
                return False
            self.entry[1] = int(self.entry[1]) + allowed  # type: ignore[call-overload]
            self.owner.total += allowed
        return allowed == len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OutputBudget:
    """Wraps a :data:`Sink`; ``limit`` 0 means no budget. Call :meth:`finish` when the cell ends."""

    def __init__(
        self,
        sink: Sink,
        limit: int = DEFAULT_LIMIT,
        *,
        spill: SpillDir | None = None,
        max_spill: int = DEFAULT_MAX_SPILL,
    ) -> None:
        self.sink = sink
        self.limit = limit
        self.spill = spill
        self.max_spill = max_spill
        self.shown = 0
        self.omitted = 0  # characters not shown live (the tail shown at the end is counted here too)
        self.omitted_lines = 0
        self.spill_path: str | None = None
        self.spill_error: str | None = None
        self.displays_dropped = 0  # display outputs that did not fit in the budget
        self.display_bytes_dropped = 0
        self._spilling = False
        self._file: SpillFile | None = None
        self._spilled = 0
        self._spill_truncated = False
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_size = 0
        self._head: list[tuple[str, str]] = []  # what was shown, kept until it is known to be needed

    @property
    def over(self) -> bool:
        return self._spilling or self.omitted > 0

    def room(self) -> int | None:
        """What a display output may still take (None: no budget)."""
        if self.limit <= 0:
            return None
        return 0 if self.over else self.limit - self.shown

    def take(self, size: int) -> bool:
        """Count a display output of ``size`` against the budget: True if it fits (show it), else it is
        recorded as left out."""
        room = self.room()
        if room is None or size <= room:
            self.shown += size
            return True
        self.drop(size)
        return False

    def drop(self, size: int) -> None:
        """A display output that was not shown because of the budget (the notice counts it)."""
        self.displays_dropped += 1
        self.display_bytes_dropped += size

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        if self.limit <= 0:
            self.sink(stream, text)
            return
        if not self.over:
            room = self.limit - self.shown
            if len(text) <= room:
                self.shown += len(text)
                self._head.append((stream, text))  # at most `limit`: seeds the spill file if needed
                self.sink(stream, text)
                return
            # Cut at the last newline that fits, so the head ends on a whole line when it can.
            cut = text.rfind("\n", 0, room) + 1 or room
            head, text = text[:cut], text[cut:]
            if head:
                self.shown += len(head)
                self._head.append((stream, head))
                self.sink(stream, head)
            self._start_spill()
        self.omitted += len(text)
        self.omitted_lines += text.count("\n")
        self._spill(stream, text)
        self._tail.append((stream, text))
        self._tail_size += len(text)
        keep = max(1, self.limit // 4)
        while self._tail_size - len(self._tail[0][1]) >= keep:
            self._tail_size -= len(self._tail.popleft()[1])

    def finish(self) -> None:
        """Show the notice and the kept tail; close the spill file."""
        if self.displays_dropped:
            outputs = "output" if self.displays_dropped == 1 else "outputs"
            self.sink("stderr", f"\n[lxc-kernel: {self.displays_dropped} display {outputs} "
                                f"({human(self.display_bytes_dropped)}) not shown: over the {human(self.limit)} "
                                "output budget. `%output` changes the budget.]\n")
        if not self.over:
            return
        keep = max(1, self.limit // 4)
        tail = list(self._tail)
        text_tail = "".join(t for _, t in tail)
        if len(text_tail) > keep:  # start the tail on a line boundary within the kept part
            drop = len(text_tail) - keep
            nl = text_tail.find("\n", drop)
            drop = nl + 1 if 0 <= nl < drop + keep // 2 else drop
            tail = _drop_chars(tail, drop)
        hidden = self.omitted - sum(len(t) for _, t in tail)
        hidden_lines = self.omitted_lines - sum(t.count("\n") for _, t in tail)
        if self.spill_path:
            where = f" The full output is saved on the kernel's host in {self.spill_path}"
            if self._spill_truncated:
                capped = self.spill is not None and self.spill.total >= self.spill.limit
                where += (f" (cut: this kernel keeps at most {human(self.spill.limit)} of saved output)"
                          if capped and self.spill is not None else f" (cut at {human(self.max_spill)})")
            where += " until the kernel shuts down"
        elif self.spill_error:
            where = f" It was not saved: {self.spill_error}"
        else:
            where = ""
        self._close_spill()
        notice = (
            f"\n[lxc-kernel: output over the {human(self.limit)} budget; {human(hidden)}"
            f" ({hidden_lines} lines) left out here.{where}. `%output` changes the budget.]\n"
        )
        self.sink("stderr", notice)
        for stream, text in tail:
            self.sink(stream, text)

    # -- spill file ---------------------------------------------------------------------------------
    def _start_spill(self) -> None:
        self._spilling = True
        if self.spill is None:
            return  # no file: still bounded, the notice just can't say where
        try:
            self._file = self.spill.new_file()
        except (OSError, ConfigError) as exc:
            self.spill_error = str(exc) if isinstance(exc, ConfigError) else f"{exc.strerror or exc}"
            return
        self.spill_path = self._file.path
        for stream, text in self._head:
            self._spill(stream, text)
        self._head = []

    def _spill(self, stream: str, text: str) -> None:
        if self._file is None or self._spill_truncated:
            return
        data = text.encode("utf-8", "replace")
        room = self.max_spill - self._spilled
        if len(data) > room:
            data, self._spill_truncated = data[:room], True
        if not self._file.write(data):
            self._spill_truncated = True
        self._spilled += len(data)

    def _close_spill(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _drop_chars(items: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    out = []
    for stream, text in items:
        if n >= len(text):
            n -= len(text)
            continue
        out.append((stream, text[n:]))
        n = 0
    return out
