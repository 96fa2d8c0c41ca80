"""Pure: remove ANSI/VT control sequences from terminal output and normalise line ends, incrementally."""

from __future__ import annotations

import codecs
import re

# ECMA-48 shapes. CSI covers cursor moves, erase, bracketed paste (ESC[?2004h) and SGR colour;
# OSC (titles, hyperlinks) ends with BEL or ST; DCS/SOS/PM/APC end with ST; the rest are
# two- or three-byte escapes such as ESC ( B or ESC =.
_CSI = r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
_STRING = r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[P^_X][^\x1b]*\x1b\\"
_ESC = r"\x1b[ -/]*[0-~]"
# C0 controls a notebook cannot use; \b \t \n \r are kept (frontends draw progress bars with \r).
_C0 = r"[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]"

_ALL = re.compile(f"{_CSI}|{_STRING}|{_ESC}|{_C0}")
_SGR = re.compile(r"(?:\x1b\[|\x9b)[0-9;:]*m")
# Something that could still become a sequence once more bytes arrive.
_PARTIAL = re.compile(r"(?:\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[P^_X][^\x1b]*\x1b?|[ -/]*)|\x9b[0-?]*[ -/]*)\Z")
_CRLF = re.compile(r"\r+\n")
_NEEDS_WORK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")

# An unterminated OSC longer than this is output, not a title: don't hold it back forever.
_MAX_PENDING = 4096


def _keep_sgr(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if _SGR.fullmatch(text) else ""


def strip(text: str, *, keep_colors: bool = False) -> str:
    """Strip complete control sequences from ``text`` and turn ``\\r\\n`` into ``\\n`` (one-shot)."""
    text = _CRLF.sub("\n", text)
    if keep_colors:
        return _ALL.sub(_keep_sgr, text)
    return _ALL.sub("", text)


class TerminalText:
    """Incremental bytes -> clean text: UTF-8 split across reads survives, invalid bytes become U+FFFD,
    control sequences split across reads are still removed, and ``\\r\\n`` split across reads is one
    ``\\n``. A lone ``\\r`` is kept.
    """

    __slots__ = ("_decoder", "_pending", "keep_colors")

    def __init__(self, *, keep_colors: bool = False) -> None:
        self.keep_colors = keep_colors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        if self._pending:
            text = self._pending + text
            self._pending = ""
        if not final and text:
            text = self._hold_partial(text)
        if "\r" not in text and not _NEEDS_WORK.search(text):
            return text  # the common case: plain text, nothing to rewrite
        return strip(text, keep_colors=self.keep_colors)

    def flush(self) -> str:
        return self.feed(b"", final=True)

    def _hold_partial(self, text: str) -> str:
        if text[-1] == "\r":
            # A run of \r may still be the start of \r\n (or \r\r\n): decide when more arrives.
            head = text.rstrip("\r")
            self._pending = text[len(head) :]
            return head
        if "\x1b" not in text[-_MAX_PENDING:] and "\x9b" not in text[-64:]:
            return text
        # An OSC whose terminator ESC is the last char: search from the earliest candidate.
        m = _PARTIAL.search(text, max(0, len(text) - _MAX_PENDING))
        if m is None:
            return text
        self._pending = text[m.start() :]
        return text[: m.start()]
