"""One cell's output and input, between the session's read loop and the kernel's messages.

The session hands over cleaned text per stream; this pipeline turns it into what the frontend sees:

1. ``jdisplay`` frames with this cell's token become ``display_data``/``update_display_data`` (display.py);
2. with stdin allowed, a partial last line is held back briefly: if a command then waits for terminal
   input (stdin.py), that line is the prompt of an ``input_request`` instead of output, and the echo of
   the typed reply is removed from the output (the frontend shows the reply itself);
3. the output budget keeps head and tail and spills the rest to a host file (budget.py).

Echo stays on in the terminal between cells (set from inside the shell, :func:`restore_echo`), so
``ECHO`` off at a prompt really means a secret is being read. As :class:`RunHooks` this also acts in
the read loop: echo off before ^C (so ^C and the resync line are not echoed), and on idle, the check
for a command waiting for input. Nothing here imports ipykernel: the
kernel passes callables for messages and for asking the user.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from .budget import OutputBudget, SpillDir, human
from .display import (
    ENV_VAR,
    HELPER_NAME,
    MAX_FRAME,
    DisplayFrame,
    DisplayParser,
    OversizeFrame,
    bundle,
    new_display_token,
)
from .session import RunHooks, ShellSession
from .stdin import Waiter

Ask = Callable[[str, bool], str]  # ask(prompt, password) -> reply; raises EOFError or KeyboardInterrupt
EmitStream = Callable[[str, str], None]
EmitDisplay = Callable[[str, dict[str, Any]], None]  # (msg_type, content)

# The longest partial line held back as a possible prompt. Holding a whole newline-less flood instead
# cost 27 s and 297 MB for 80 MB of output (the hold-back was re-joined on every read: quadratic).
PROMPT_LIMIT = 4096

# After a reply is typed, the same reader is not asked again until its read count moves (host /proc),
# or, where that can't be seen, for this long.
REPLY_TRANSIT = 1.0
# Idle polls that wait for a prompt's text before asking with an empty prompt (150 ms apart).
EMPTY_PROMPT_POLLS = 2

# What an echoed resync line looks like, should echo have been on when ^C arrived (bash restores its
# saved terminal state after a job dies of SIGINT, and that state may have echo on).
_SYNC_ECHO_RE = re.compile(r"(?:\^C)*__lxck_pre [0-9a-f]+ [0-9a-f]+[^\n]*(?:\n|$)|\^C(?=\n|$)")


def restore_echo(session: ShellSession) -> None:
    """bash: turn echo on *from inside* the shell, so it holds from the next cell's first instant.

    Echo on while a cell runs means a command that turns it off (``read -s``, getpass) is seen to do
    so. bash's readline saves the terminal's mode at its prompt and restores it after reading a
    line, so echo set from the host while bash sits at its prompt is undone before the cell runs;
    set while a line runs, it is what the next prompt saves. Setting it from the host when the cell
    starts instead raced with a ``read -s`` that runs at once.

    busybox ash is left alone: with echo on at its prompt it edits lines and asks the terminal for
    the cursor position, which cost 21 ms per line. Its echo stays off, and a secret is told by the
    ECHOK flag instead, which ash's ``read -s`` clears with ECHO (:attr:`stdin.Waiter.password_echo_off`).
    """
    if not (session.info and session.info.bash_version):
        return
    try:
        # A query's stdin is /dev/null; its stdout is the terminal.
        session.query("stty echo <&1 2>/dev/null", timeout=2.0)
    except Exception:  # the cell's own hooks still turn echo on when it starts
        pass


def drain_read_buffer(session: ShellSession) -> None:
    """Empty bash's `read` builtin buffer after that builtin was interrupted.

    bash reads a terminal line into one static buffer and, interrupted mid-line, keeps the rest
    there; the next `read` returns it whatever its input (seen: the resync line came out of a later
    `read x </dev/null`). A query's stdin is /dev/null, so this loop takes what is buffered and stops.
    """
    try:
        session.query("while read -r __lxck_junk; do :; done; unset __lxck_junk", timeout=2.0)
    except Exception:
        pass


class CellIO(RunHooks):
    def __init__(
        self,
        session: ShellSession,
        *,
        emit_stream: EmitStream,
        emit_display: EmitDisplay,
        ask: Ask | None,
        budget: int,
        spill: SpillDir | None = None,
        display_ids: set[str] | None = None,
        display: str = "all",
    ) -> None:
        self.session = session
        self.emit_display = emit_display
        self.ask = ask
        self.allow_stdin = ask is not None
        self.token = new_display_token()
        self.display = DisplayParser(self.token)
        self.policy = display  # all, safe or off (display.POLICIES)
        self.displays_off = 0  # frames not shown because the policy is off
        self.budget = OutputBudget(emit_stream, budget, spill=spill)
        self.display_ids = display_ids if display_ids is not None else set()
        self.waiting: tuple[Waiter, str] | None = None  # a command waited but stdin is not allowed
        self.inputs = 0
        self._pending: dict[str, str] = {}  # stream -> partial last line held back (stdin allowed only)
        self._last_stream = "stdout"
        self._echo = ""  # the typed reply whose echo is still expected on stdout
        self._interrupting = False
        self._shell_read_interrupted = False
        self._answered: tuple[int, int | None, float] | None = None  # (pid, read count, when) of the last reply
        self._empty_polls = 0

    @property
    def _bash(self) -> bool:
        return bool(self.session.info and self.session.info.bash_version)

    def source(self, code: str) -> str:
        """The cell's text with this cell's display token in front (the group hides it from ``set -x``)."""
        return f"{{ {ENV_VAR}={self.token}; export {ENV_VAR}; }} 2>/dev/null; {code}"

    # -- output ---------------------------------------------------------------------------------------
    def sink(self, stream: str, text: str) -> None:
        if stream != "stdout":
            self._text(stream, text)
            return
        self.display.cap = self._frame_cap()
        for item in self.display.feed(text):
            if isinstance(item, DisplayFrame):
                self._flush_pending()
                self._show(item)
            elif isinstance(item, OversizeFrame):
                self._flush_pending()
                self._oversize(item)
            else:
                self._text("stdout", item)

    def _frame_cap(self) -> int:
        """How much of a frame that starts now is kept: nothing when display is off, else what the budget
        has left (frames count against it), at most MAX_FRAME."""
        if self.policy == "off":
            return 0
        room = self.budget.room()
        return MAX_FRAME if room is None else min(MAX_FRAME, room)

    def _oversize(self, frame: OversizeFrame) -> None:
        if self.policy == "off":
            self.displays_off += 1
        elif frame.cap >= MAX_FRAME:
            self.budget.add("stderr", f"{HELPER_NAME}: {frame.mime} output of {human(frame.size)} is over the "
                                      f"{human(MAX_FRAME)} limit for one display output; nothing shown\n")
        else:
            self.budget.drop(frame.size)

    def _text(self, stream: str, text: str) -> None:
        if stream == "stdout" and self._echo:
            text = self._strip_echo(text)
        if self._interrupting:
            text = _SYNC_ECHO_RE.sub("", text)
        if not text:
            return
        self._last_stream = stream
        if not self.allow_stdin:
            self.budget.add(stream, text)
            return
        for other in [s for s in self._pending if s != stream]:
            self.budget.add(other, self._pending.pop(other))
        text = self._pending.pop(stream, "") + text
        cut = text.rfind("\n") + 1
        if len(text) - cut > PROMPT_LIMIT:
            cut = len(text)  # a partial line this long is output, not a prompt: don't hold it
        if cut < len(text):
            self._pending[stream] = text[cut:]
        if cut:
            self.budget.add(stream, text[:cut])

    def _strip_echo(self, text: str) -> str:
        n = 0
        while n < len(text) and n < len(self._echo) and text[n] == self._echo[n]:
            n += 1
        if n == len(text):
            self._echo = self._echo[n:]
            return ""
        self._echo = ""  # the echo is done (or was never there)
        return text[n:]

    def _flush_pending(self) -> None:
        for stream in list(self._pending):
            self.budget.add(stream, self._pending.pop(stream))

    def _show(self, frame: DisplayFrame) -> None:
        if self.policy == "off":
            self.displays_off += 1
            return
        data, message = bundle(frame, self.policy)
        if message:
            self.budget.add("stderr", message + "\n")
        if not data:
            return
        # What the frontend receives counts (images go as base64: a third more than the file).
        size = sum(len(v) if isinstance(v, str) else len(frame.payload) for v in data.values())
        if not self.budget.take(size):
            return
        content: dict[str, Any] = {"data": data, "metadata": {}, "transient": {}}
        msg_type = "display_data"
        if frame.display_id:
            content["transient"] = {"display_id": frame.display_id}
            if frame.update or frame.display_id in self.display_ids:
                msg_type = "update_display_data"
            if frame.update and frame.display_id not in self.display_ids:
                self.budget.add("stderr", f"{HELPER_NAME}: no output with id {frame.display_id!r} to update\n")
                return
            self.display_ids.add(frame.display_id)
        self.emit_display(msg_type, content)

    def finish(self) -> None:
        """The cell ended: release held text, report broken frames, apply the budget's ending."""
        for item in self.display.flush():
            if isinstance(item, str):
                self._text("stdout", item)
        for error in self.display.errors:
            self.budget.add("stderr", error + "\n")
        self._flush_pending()
        if self.displays_off:
            outputs = "output" if self.displays_off == 1 else "outputs"
            self.budget.add("stderr", f"[lxc-kernel: {self.displays_off} display {outputs} not shown: "
                                      "rich display is off in this kernel (display=off)]\n")
        self.budget.finish()
        if self._shell_read_interrupted and self.session.alive:
            drain_read_buffer(self.session)
        if self._interrupting and self.session.alive:
            restore_echo(self.session)

    # -- hooks from the read loop -------------------------------------------------------------------
    # No `started` hook: turning echo on from the host when the cell starts raced with a `read -s`
    # that turned it off at once (the password then showed as a plain prompt). restore_echo does it
    # from inside the shell, between cells.

    def interrupting(self) -> None:
        # Echo off before ^C, or the terminal would echo "^C" and the resync line into the output.
        first = not self._interrupting
        self._interrupting = True
        # Look before changing the mode: a termios change wakes the terminal's readers, and a reader
        # caught awake is not seen as waiting.
        waiter = self.session.find_waiter() if first else None
        self.session.set_echo(False)
        if waiter is not None and self.session.is_shell(waiter):
            self._shell_read_interrupted = True
            # The shell's own `read` builtin is waiting. bash notices ^C only once read(2) returns,
            # and keeps what it read in the builtin's buffer: the resync line typed behind ^C came
            # out of the *next* `read`, even one reading /dev/null. Feed it an empty line instead.
            self.session.send_input(b"\x03")
            time.sleep(0.02)
            self.session.send_input(b"\n")
            time.sleep(0.03)

    def idle(self) -> None:
        waiter = self.session.find_waiter()
        if waiter is None:
            self._empty_polls = 0
            self._flush_pending()
            return
        if self._answered is not None and self._answered[0] == waiter.pid:
            # The reply typed last time may still be on its way through the attach client: the reader is
            # the same process, still in the same read. Don't ask twice (seen under 30 kernels).
            _, reads, at = self._answered
            if waiter.reads is not None and reads is not None:
                if waiter.reads == reads:
                    return
            elif time.monotonic() - at < REPLY_TRANSIT:
                return
        prompt = self._pending.get(self._last_stream, "")
        if not prompt and self._empty_polls < EMPTY_PROMPT_POLLS and self.ask is not None:
            # bash's `read -p` writes its prompt to stderr, which travels on its own channel and can lag
            # the terminal under load: give it a moment rather than ask with an empty prompt.
            self._empty_polls += 1
            return
        self._empty_polls = 0
        self._pending.pop(self._last_stream, None)
        self._flush_pending()
        if self.ask is None:
            self.waiting = (waiter, prompt)
            self.session.request_interrupt()
            return
        password = self._secret(waiter, prompt)
        try:
            reply = self.ask(prompt, password)
        except EOFError:
            self.session.send_input(b"\x04")  # the frontend sent ^D: end of input
            return
        except KeyboardInterrupt:
            self.session.request_interrupt()
            return
        self.inputs += 1
        self._echo = reply + "\n" if waiter.echo else ""
        self._answered = (waiter.pid, waiter.reads, time.monotonic())
        self.session.send_input(reply.encode("utf-8", "replace") + b"\n")

    def _secret(self, waiter: Waiter, prompt: str) -> bool:
        """Whether the command reads a secret: from the terminal's modes when they could be read; else (an
        unprivileged container seen from a non-root kernel: the terminal is a host pty that neither the
        inside probe nor the kernel may open) from what the prompt says, so a password is not typed into
        a plain input box that shows and keeps it."""
        if waiter.lflag is None:
            return looks_secret(prompt)
        return waiter.password if self._bash else waiter.password_echo_off

    def waiting_message(self) -> str:
        assert self.waiting is not None
        waiter, prompt = self.waiting
        shown = f" after printing {prompt.strip()!r}" if prompt.strip() else ""
        kind = "a password" if self._secret(waiter, prompt) else "input"
        return (
            f"`{_short(waiter.command)}` was waiting for {kind} on the terminal{shown}, but this frontend "
            "does not send input (allow_stdin is false, as in nbconvert and papermill), so the cell was "
            "stopped. Give the command its input another way (a pipe, a here-document, a file, "
            "options such as -y), or run the cell in a frontend that allows input."
        )


_SECRET_WORDS = re.compile(r"pass(word|phrase|code)?|secret|token|\bpin\b|credential", re.IGNORECASE)


def looks_secret(prompt: str) -> bool:
    """Pure: a prompt that asks for a password, passphrase, secret, token, PIN or credential."""
    return bool(_SECRET_WORDS.search(prompt))


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"
