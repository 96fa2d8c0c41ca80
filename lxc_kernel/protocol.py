"""Pure protocol core: frame a cell for the shell and parse the shell's byte stream into events. No I/O.

How a cell travels: the kernel types ONE line into the interactive shell::

    __lxck_pre A B ERR 2>/dev/null; command eval "$__lxck_x$(printf 'SRC')" </dev/null 2<>ERR;
    { __lxck_post $? A B ERR;} 2>/dev/null

* ``A`` and ``B`` are the two halves of a fresh random token. The whole token only ever appears in what
  ``printf`` *outputs*, never in the typed line, its echo, ``set -x`` traces or ``history``: nothing a cell
  prints can contain it unless it guessed 64 random bits (labgrid's split-marker trick).
* ``SRC`` is the cell as a printf format made of printable ASCII only (everything else as ``\\ooo``), so the
  line discipline, readline and history expansion see no control characters, tabs or quotes.
  Cells too long for one line (busybox ash keeps 1024 bytes) are uploaded to a file instead and
  evaluated with ``command eval "$(cat FILE)"``.
* ``command eval`` turns a syntax error (an unclosed quote, an ``if`` without ``fi``) into status 2
  instead of a PS2 prompt that waits forever; ``command`` stops ash from aborting the rest of the line.
* The line starts with a simple command, not ``{``: after ``eval`` hit an unclosed quote, bash fails to
  see a reserved word as the first token of the next line ("syntax error near unexpected token }").
* The start marker lets the parser drop whatever the shell printed between cells (prompts, PROMPT_COMMAND,
  job notices); the end marker carries the exit status, so a cell costs a single round trip.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

MARK = b"<<lxck:"

# Printable ASCII that can sit inside a single-quoted printf format unchanged. Excluded: ' (ends the
# quote), \\ and % (printf format syntax) and ! (bash history expansion when a user turns it back on).
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("'"), ord("\\"), ord("%"), ord("!")}
_ENCODE = [chr(b) if b in _SAFE else f"\\{b:03o}" for b in range(256)]

# Where the shell keeps its per-session files; checked before being typed into a command line.
_SESSION_DIR_RE = re.compile(r"/tmp/\.lxck\.[0-9]+\.[A-Za-z0-9]{4,32}")

# Hold at most this much of an unterminated marker before deciding it is just output.
_MAX_STATUS_DIGITS = 4


def sh_quote(text: str) -> str:
    """Single-quote ``text`` for the shell that reads it: the one quoting rule for shell text we build."""
    return "'" + text.replace("'", "'\\''") + "'"


def new_token() -> str:
    """A fresh, unguessable token for one cell."""
    return secrets.token_hex(8)


def split_token(token: str) -> tuple[str, str]:
    half = len(token) // 2
    return token[:half], token[half:]


def printf_format(source: str) -> str:
    """Encode ``source`` as a printf format that reproduces its UTF-8 bytes exactly."""
    return "".join([_ENCODE[b] for b in source.encode("utf-8", "surrogateescape")])


def valid_session_dir(path: str) -> bool:
    return bool(_SESSION_DIR_RE.fullmatch(path))


@dataclass(frozen=True)
class ShellScript:
    """The shell functions and settings a session installs once, after the shell first answers."""

    @staticmethod
    def probe(token: str) -> bytes:
        """First line typed: quiet the terminal and answer with an empty framed reply.

        Typed again until it answers, because lxc-attach drops the first bytes written before it has
        set up its own terminal (LXC-FACTS). Safe to run twice.
        """
        a, b = split_token(token)
        return (
            f"stty -echo -onlcr 2>/dev/null; printf '<<lxck:%s%s:S>><<lxck:%s%s:E0>>' {a} {b} {a} {b}\n"
        ).encode()

    @staticmethod
    def bootstrap(token: str) -> bytes:
        """Install the framing functions and report ``bash version / shell pid / session dir``."""
        a, b = split_token(token)
        return (
            # No prompts and no history: the kernel is the only typist. bind is bash-only (bash 5.2
            # wraps prompts in bracketed-paste codes); ash ignores it with an error we discard.
            "PS1=''; PS2=''; PS4='+ '; unset PROMPT_COMMAND HISTFILE; set +o history 2>/dev/null;"
            " bind 'set enable-bracketed-paste off' 2>/dev/null;"
            # `set -x` must trace the cell, not the framing: pre turns xtrace off and leaves
            # "set -x<newline>" in __lxck_x, which the frame puts in front of the cell's text.
            " __lxck_sx=$(printf 'set -x\\nx'); __lxck_sx=${__lxck_sx%x};"
            " __lxck_pre() { case $- in *x*) set +x; __lxck_x=$__lxck_sx;; *) __lxck_x=;; esac;"
            " printf '<<lxck:%s%s:S>>' \"$1\" \"$2\";"
            " [ -z \"$3\" ] || printf '<<lxck:%s%s:S>>' \"$1\" \"$2\" 1<>\"$3\"; };"
            " __lxck_post() { printf '<<lxck:%s%s:E%s>>' \"$2\" \"$3\" \"$1\";"
            " [ -z \"$4\" ] || printf '<<lxck:%s%s:E%s>>' \"$2\" \"$3\" \"$1\" 1<>\"$4\"; };"
            f" __lxck_pre {a} {b}; __lxck_d=$(mktemp -d /tmp/.lxck.$$.XXXXXX) && mkfifo -m 600 \"$__lxck_d/err\""
            " && printf '%s\\n' \"${BASH_VERSION:-}\" \"$$\" \"$__lxck_d\";"
            f" __lxck_post $? {a} {b}; unset __lxck_d\n"
        ).encode()


# Session directories are named /tmp/.lxck.<shell pid>.<random>. A shell that ended without the
# kernel's polite `rm -rf` (exit N, a stopped container, a killed kernel) leaves its directory behind,
# so each new session removes those whose shell is gone. Other users' directories stay (sticky /tmp).
SWEEP_STALE_DIRS = (
    'for d in /tmp/.lxck.*.*; do p=${d#/tmp/.lxck.}; p=${p%%.*};'
    ' [ -d "$d" ] && ! kill -0 "$p" 2>/dev/null && rm -rf "$d"; done; unset d p; true'
)


def frame_cell(
    source: str | None,
    token: str,
    *,
    script_path: str | None = None,
    stderr_path: str | None = None,
    stdin_null: bool = True,
) -> bytes:
    """The one line that runs a cell.

    ``source`` is inlined as a printf format; or, with ``script_path``, the cell is read from that file.
    ``stderr_path`` is the FIFO of the separate stderr channel; None merges stderr into the terminal.
    ``stdin_null`` gives commands end-of-file on stdin instead of the terminal, so ``read`` or ``cat``
    can neither hang nor swallow the kernel's next line.
    """
    a, b = split_token(token)
    if script_path is not None:
        if not script_path.startswith("/tmp/.lxck.") or "'" in script_path:
            raise ValueError(f"unsafe script path {script_path!r}")
        body = f"\"$__lxck_x$(cat '{script_path}')\""
    else:
        body = f"\"$__lxck_x$(printf '{printf_format(source or '')}')\""
    redirs = " </dev/null" if stdin_null else ""
    post_err = ""
    if stderr_path is not None:
        if not stderr_path.startswith("/tmp/.lxck.") or "'" in stderr_path:
            raise ValueError(f"unsafe stderr path {stderr_path!r}")
        redirs += f" 2<>'{stderr_path}'"
        post_err = f" '{stderr_path}'"
    return (
        f"__lxck_pre {a} {b}{post_err} 2>/dev/null; command eval {body}{redirs};"
        f" {{ __lxck_post $? {a} {b}{post_err};}} 2>/dev/null\n"
    ).encode()


def frame_sync(token: str, stderr_path: str | None = None) -> bytes:
    """A line that only prints a start and end marker: used to resync after an interrupt."""
    a, b = split_token(token)
    post_err = f" '{stderr_path}'" if stderr_path else ""
    return f"__lxck_pre {a} {b}{post_err} 2>/dev/null; {{ __lxck_post $? {a} {b}{post_err};}} 2>/dev/null\n".encode()


def inline_length(source: str) -> int:
    """Bytes the inline frame would take; above the shell's line limit, upload the cell instead."""
    return len(printf_format(source)) + 160


class CellParser:
    """Incrementally split one cell's raw byte stream into output and its exit status.

    Markers are ``<<lxck:TOKEN:S>>`` (start) and ``<<lxck:TOKEN:E<status>>>`` (end). Bytes before the
    start marker are discarded (prompts, late job notices, a previous cell's leftovers); a repeated
    start marker (from a resync line) is dropped. Only a tail that could still grow into a marker is
    held back, so the work per chunk stays proportional to the chunk: a whole-buffer search made
    15 MB of output 10x slower (LXC-FACTS).
    """

    __slots__ = ("_buf", "_prefix", "started", "status")

    def __init__(self, token: str, *, expect_start: bool = True) -> None:
        self._prefix = MARK + token.encode() + b":"
        self._buf = b""
        self.started = not expect_start
        self.status: int | None = None

    @property
    def done(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the output bytes that are now certain. Sets ``status`` when done."""
        if self.status is not None:
            return b""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        while True:
            idx = buf.find(self._prefix)
            if idx < 0:
                keep = self._partial_tail(buf)
                if keep:
                    self._buf = buf[len(buf) - keep :]
                    buf = buf[: len(buf) - keep]
                if self.started:
                    out.append(buf)
                break
            if self.started:
                out.append(buf[:idx])
            rest = buf[idx + len(self._prefix) :]
            if rest.startswith(b"S>>"):
                self.started = True
                buf = rest[3:]
                continue
            if rest.startswith(b"E"):
                stop = rest.find(b">>")
                digits = rest[1:stop] if stop >= 0 else rest[1:].removesuffix(b">")
                if stop < 0 and len(digits) <= _MAX_STATUS_DIGITS and (not digits or digits.isdigit()):
                    self._buf = buf[idx:]  # the status is still arriving
                    break
                # Only this kernel knows the token, so a malformed tail is a failure, not output.
                self.status = int(digits) if stop >= 0 and digits.isdigit() else 255
                if not self.started:
                    out.clear()
                self.started = True
                break
            if b"S>>".startswith(rest):
                self._buf = buf[idx:]
                break
            self.status = 255
            break
        return b"".join(out)

    def _partial_tail(self, buf: bytes) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a marker."""
        prefix = self._prefix
        i = buf.find(b"<", max(0, len(buf) - len(prefix) - 2))
        while i >= 0:
            tail = buf[i:]
            if prefix.startswith(tail) or tail.startswith(prefix):
                return len(buf) - i
            i = buf.find(b"<", i + 1)
        return 0

    def flush(self) -> bytes:
        """Whatever is held back, for when the stream ended without a marker."""
        out = self._buf if self.started else b""
        self._buf = b""
        return out


@dataclass(frozen=True)
class Handshake:
    """What the shell reported at startup."""

    bash_version: str
    pid: int
    session_dir: str

    @property
    def shell(self) -> str:
        return f"bash {self.bash_version}" if self.bash_version else "sh"

    @classmethod
    def parse(cls, output: bytes) -> Handshake:
        lines = output.decode("utf-8", "replace").replace("\r", "").split("\n")
        fields = [line for line in lines if line.strip()]
        if len(fields) == 2:  # ash: empty BASH_VERSION line was dropped above
            fields = ["", *fields]
        if len(fields) != 3 or not fields[1].isdigit() or not valid_session_dir(fields[2]):
            raise ValueError(f"unexpected handshake reply {output[:200]!r}")
        return cls(fields[0], int(fields[1]), fields[2])
