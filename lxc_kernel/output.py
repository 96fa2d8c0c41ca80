"""Pure: coalesce a cell's stream text into few, ordered stream messages."""

from __future__ import annotations

from collections.abc import Callable

Sink = Callable[[str, str], None]
"""``sink(stream_name, text)``: where coalesced output goes (a Jupyter ``stream`` message)."""


class OutputBuffer:
    """Collect text per stream and hand it to ``sink`` at most every ``interval`` seconds or
    ``limit`` characters. One message per line lost data and took minutes for 15 MB (measured, LXC 5.0.2);
    this keeps a partial line visible within ``interval`` and a flood at a few messages a second.
    A change of stream flushes first, so stdout and stderr keep their relative order.
    """

    __slots__ = ("_parts", "_since", "_size", "_stream", "interval", "limit", "sink")

    def __init__(self, sink: Sink, *, interval: float = 0.05, limit: int = 1 << 16) -> None:
        self.sink = sink
        self.interval = interval
        self.limit = limit
        self._stream = ""
        self._parts: list[str] = []
        self._size = 0
        self._since: float | None = None

    def add(self, stream: str, text: str, now: float) -> None:
        if not text:
            return
        if stream != self._stream and self._parts:
            self.flush()
        self._stream = stream
        self._parts.append(text)
        self._size += len(text)
        if self._since is None:
            self._since = now
        if self._size >= self.limit:
            self.flush()

    @property
    def deadline(self) -> float | None:
        """When the pending text must go out, or None if nothing is pending."""
        return None if self._since is None else self._since + self.interval

    def flush_due(self, now: float) -> None:
        if self._since is not None and now >= self._since + self.interval:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._since = None
            self.sink(self._stream, text)
