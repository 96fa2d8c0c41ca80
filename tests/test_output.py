"""Pure tests of output coalescing."""

from __future__ import annotations

from lxc_kernel.output import OutputBuffer


def test_coalesces_until_interval_or_limit() -> None:
    sent: list[tuple[str, str]] = []
    buf = OutputBuffer(lambda s, t: sent.append((s, t)), interval=0.05, limit=10)
    buf.add("stdout", "abc", now=0.0)
    buf.add("stdout", "def", now=0.01)
    assert sent == [] and buf.deadline == 0.05
    buf.flush_due(0.02)
    assert sent == []
    buf.flush_due(0.06)
    assert sent == [("stdout", "abcdef")] and buf.deadline is None
    buf.add("stdout", "0123456789", now=1.0)
    assert sent[-1] == ("stdout", "0123456789")


def test_stream_change_keeps_order() -> None:
    sent: list[tuple[str, str]] = []
    buf = OutputBuffer(lambda s, t: sent.append((s, t)))
    buf.add("stdout", "1", 0)
    buf.add("stderr", "2", 0)
    buf.add("stdout", "3", 0)
    buf.flush()
    assert sent == [("stdout", "1"), ("stderr", "2"), ("stdout", "3")]


def test_million_lines_few_messages() -> None:
    sent: list[tuple[str, str]] = []
    buf = OutputBuffer(lambda s, t: sent.append((s, t)), limit=1 << 16)
    for i in range(100_000):
        buf.add("stdout", f"{i}\n", now=i * 1e-6)
    buf.flush()
    assert len(sent) < 20
    assert "".join(t for _, t in sent) == "".join(f"{i}\n" for i in range(100_000))
