"""Pure tests of control-sequence removal and line-end normalisation."""

from __future__ import annotations

import pytest

from lxc_kernel.ansi import TerminalText, strip

CASES = [
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[?2004hpaste\x1b[?2004l", "paste"),
    ("\x1b]0;window title\x07text", "text"),
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1b[2J\x1b[H\x1b[10;5Hmoved\x1b[K", "moved"),
    ("\x1b(Bcharset\x1b=\x1b>", "charset"),
    ("\x1bP1$r0m\x1b\\dcs", "dcs"),
    ("bell\x07", "bell"),
    ("a\r\nb\r\r\nc", "a\nb\nc"),
    ("10%\r20%\r", "10%\r20%\r"),
    ("tab\tback\bspace", "tab\tback\bspace"),
    ("\x9b31m8bit", "8bit"),
]


@pytest.mark.parametrize(("raw", "clean"), CASES)
def test_strip(raw: str, clean: str) -> None:
    assert strip(raw) == clean


def test_keep_colors_keeps_only_sgr() -> None:
    assert strip("\x1b[1;31mx\x1b[0m\x1b[2K\x1b]0;t\x07", keep_colors=True) == "\x1b[1;31mx\x1b[0m"


@pytest.mark.parametrize(("raw", "clean"), [*CASES, ("ü€😀", "ü€😀"), ("\xff", "\ufffd")])
def test_incremental_split_at_every_offset(raw: str, clean: str) -> None:
    data = raw.encode("utf-8", "surrogateescape") if raw != "\xff" else b"\xff"
    for cut in range(len(data) + 1):
        t = TerminalText()
        assert t.feed(data[:cut]) + t.feed(data[cut:]) + t.flush() == clean, cut


def test_byte_by_byte() -> None:
    raw = "x\x1b]0;title\x1b\\y\x1b[38;5;208mz\r\n€\r".encode()
    t = TerminalText()
    assert "".join(t.feed(bytes([b])) for b in raw) + t.flush() == "xyz\n€\r"


def test_invalid_utf8_becomes_replacement() -> None:
    t = TerminalText()
    assert t.feed(b"a\xc3") + t.feed(b"(b") + t.flush() == "a\ufffd(b"


def test_unterminated_osc_is_not_held_forever() -> None:
    t = TerminalText()
    out = t.feed(b"\x1b]0;" + b"x" * 10000)
    assert len(out) > 5000
