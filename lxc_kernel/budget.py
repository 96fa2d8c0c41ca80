"""The per-cell output budget: past it, keep the head and the tail and save everything to a host file.

A runaway cell (``yes``, a huge ``cat``) would otherwise freeze the browser and grow the notebook
without bound. Up to ``limit`` characters pass through unchanged. After that the cell's output goes
only to a spill file on the kernel's host, and the last ``limit // 4`` characters are kept in memory;
when the cell ends the kernel shows a notice (how much was left out, where it was saved) followed by
that tail. Memory stays bounded by the tail, and the spill file by ``max_spill``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import deque

from .output import Sink

DEFAULT_LIMIT = 1_000_000  # characters of output per cell shown in the notebook
DEFAULT_MAX_SPILL = 1 << 30  # bytes saved per cell on the host; beyond, the file is truncated

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


class OutputBudget:
    """Wraps a :data:`Sink`; ``limit`` 0 means no budget. Call :meth:`finish` when the cell ends."""

    def __init__(
        self,
        sink: Sink,
        limit: int = DEFAULT_LIMIT,
        *,
        spill_dir: str | None = None,
        max_spill: int = DEFAULT_MAX_SPILL,
    ) -> None:
        self.sink = sink
        self.limit = limit
        self.spill_dir = spill_dir
        self.max_spill = max_spill
        self.shown = 0
        self.omitted = 0  # characters not shown live (the tail shown at the end is counted here too)
        self.omitted_lines = 0
        self.spill_path: str | None = None
        self._spill_fd: int | None = None
        self._spilled = 0
        self._spill_truncated = False
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_size = 0
        self._head: list[tuple[str, str]] = []  # what was shown, kept until it is known to be needed

    @property
    def over(self) -> bool:
        return self._spill_fd is not None or self.omitted > 0

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
        where = f" The full output is saved on the kernel's host in {self.spill_path}" if self.spill_path else ""
        if self._spill_truncated:
            where += f" (cut at {human(self.max_spill)})"
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
        try:
            directory = self.spill_dir or os.path.join(tempfile.gettempdir(), "lxc-kernel-output")
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, self.spill_path = tempfile.mkstemp(prefix="cell-", suffix=".txt", dir=directory)
        except OSError:
            self._spill_fd = -1  # no file: still bounded, the notice just can't say where
            return
        self._spill_fd = fd
        for stream, text in self._head:
            self._spill(stream, text)
        self._head = []

    def _spill(self, stream: str, text: str) -> None:
        if self._spill_fd is None or self._spill_fd < 0 or self._spill_truncated:
            return
        data = text.encode("utf-8", "replace")
        room = self.max_spill - self._spilled
        if len(data) > room:
            data, self._spill_truncated = data[:room], True
        try:
            os.write(self._spill_fd, data)
        except OSError:
            self._spill_truncated = True
        self._spilled += len(data)

    def _close_spill(self) -> None:
        if self._spill_fd is not None and self._spill_fd >= 0:
            os.close(self._spill_fd)
        self._spill_fd = -1


def _drop_chars(items: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    out = []
    for stream, text in items:
        if n >= len(text):
            n -= len(text)
            continue
        out.append((stream, text[n:]))
        n = 0
    return out
