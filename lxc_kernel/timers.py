"""Pure: named deadlines, the one way the core keeps time (labgrid's ``Timeout``, as values not sleeps)."""

from __future__ import annotations

from collections.abc import Iterable


class Deadline:
    """A point in time that may be armed or not; ``now`` is always passed in, so tests use a fake clock."""

    __slots__ = ("at", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.at: float | None = None

    def __repr__(self) -> str:
        return f"Deadline({self.name!r}, at={self.at})"

    def arm(self, now: float, seconds: float) -> None:
        self.at = now + seconds

    def arm_at(self, at: float | None) -> None:
        self.at = at

    def disarm(self) -> None:
        self.at = None

    @property
    def armed(self) -> bool:
        return self.at is not None

    def expired(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def remaining(self, now: float) -> float | None:
        return None if self.at is None else max(0.0, self.at - now)


def earliest(deadlines: Iterable[Deadline]) -> float | None:
    """The first armed deadline of ``deadlines``, or None when none is armed."""
    times = [d.at for d in deadlines if d.at is not None]
    return min(times) if times else None
