"""Completion and inspection answered by the live shell: the kernel's ``do_complete``/``do_inspect`` bodies.

The word at the cursor and the candidate lists are pure text work (complete.py); this module runs the
short hidden commands through :meth:`ShellSession.query`, defines complete.py's bash helpers in a shell
the first time it completes there, adds magic names and subcommands from the magics registry and
container names from ``lxc-ls``, and never raises: a frontend asking for completions must get an answer
(maybe empty) quickly, whatever state the shell is in. It only ever uses a session it is given: the
kernel's ``_live_session`` never creates, starts or unfreezes a container for a Tab press.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ansi import strip
from .complete import (
    ALIASES_BACK,
    ALIASES_OFF,
    BASH_HELPERS,
    Kind,
    Match,
    Word,
    argument_script,
    commands_script,
    complete_names,
    files_script,
    function_names,
    magic_arg_choices,
    parse_candidates,
    users_script,
    variables_script,
    word_at,
)
from .errors import LxcKernelError
from .protocol import Handshake, frame_query, sh_quote
from .session import INLINE_LIMIT

log = logging.getLogger(__name__)

# The issue's deadline for a completion, helpers and spec loading included: a completion function that
# hangs gets ^C and the shell is resynced (ShellSession.query).
QUERY_TIMEOUT = 0.5
INSPECT_TIMEOUT = 1.5  # `type`, help, a man page's NAME and SYNOPSIS
INSPECT_DETAIL_TIMEOUT = 3.0  # the whole man page, or --help
INSPECT_LIMIT = 200_000  # characters of inspection text a frontend gets at most
CONTAINER_CACHE_SECONDS = 5.0
TYPES_KEY = "_jupyter_types_experimental"  # ipykernel's key (ipkernel.py); JupyterLab shows the types as icons
_OVERSTRIKE = re.compile(r".\x08")


def shell_version(info: Handshake) -> str:
    """``language_info.version``: bash's version number (``5.2.15`` of ``5.2.15(1)-release``), else ``sh``
    (busybox ash and dash report no version in the handshake)."""
    if not info.bash_version:
        return "sh"
    m = re.match(r"[0-9][0-9.]*", info.bash_version)
    return m.group(0) if m else info.bash_version


@dataclass(frozen=True)
class MagicTable:
    """What completion knows of the magics: names, subcommands, and where a container name goes."""

    names: tuple[str, ...]
    subcommands: dict[str, tuple[str, ...]]
    takes_container: dict[str, Any]  # magic -> set of subcommands (or True: first argument)


def magic_table() -> MagicTable:
    """Read the magics registry (magics/) lazily: each magic's subcommands and which of them take a
    container name, as the topic modules registered them; an empty table if it is missing."""
    try:
        from . import magics

        table = magics.subcommand_table()
    except Exception:  # the registry is optional for completion: degrade, don't fail
        return MagicTable((), {}, {})
    names = tuple(sorted(magics.REGISTRY))
    subcommands = {name: tuple(subs) for name, subs in table.items()}
    takes: dict[str, Any] = {name: {sub for sub, container in subs.items() if container}
                             for name, subs in table.items()}
    return MagicTable(names, subcommands, takes)


def _on_arg_choices(words: tuple[str, ...]) -> tuple[list[str], bool] | None:
    """The magics registry's own choices for ``%on``/``%%on`` (None for every other magic)."""
    try:
        from .magics import arg_choices
    except Exception:  # completion degrades without the registry, as magic_table() does
        return None
    return arg_choices(words)


class Assistant:
    """Completion and inspection for one kernel; ``session`` returns the live session or None."""

    def __init__(self, session: Callable[[], Any], containers: Callable[[], list[str]]) -> None:
        self._session = session
        self._containers = containers
        self._container_cache: tuple[float, list[str]] = (0.0, [])
        self._magics: MagicTable | None = None
        # Shells whose bash helpers are defined (a new shell, after a restart, has none).
        self._ready: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- completion -----------------------------------------------------------------------------
    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        word = word_at(code, cursor_pos)
        try:
            matches = self._matches(word, code)
        except Exception as exc:  # a broken completion must not break the frontend
            log.warning("completion failed: %s", exc)
            matches = []
        return {
            "status": "ok",
            "matches": [m.text for m in matches],
            "cursor_start": word.start,
            "cursor_end": word.end,
            # One entry per match, in the same order (JupyterLab pairs them by index).
            "metadata": {
                TYPES_KEY: [{"start": word.start, "end": word.end, "text": m.text, "type": m.type} for m in matches]
            },
        }

    def _matches(self, word: Word, code: str) -> list[Match]:
        if word.kind is Kind.MAGIC:
            return complete_names(word, self.magics.names)
        if word.kind is Kind.MAGIC_ARG:
            # %on/%%on take container names and options, not subcommands alone: the magic says what fits.
            choices, containers = _on_arg_choices(word.magic) or magic_arg_choices(
                word, self.magics.subcommands, self.magics.takes_container)
            if containers:
                choices = [*choices, *self.container_names()]
            return complete_names(word, choices)
        session = self._session()
        if session is None or session.info is None:
            return []
        if session.info.bash_version:
            return self._bash(session, word)
        return self._ash(session, word, code)

    def _ask(self, session: Any, script: str) -> str:
        _, out = session.query(script, timeout=QUERY_TIMEOUT)
        return strip(out)

    def _bash(self, session: Any, word: Word) -> list[Match]:
        self._define_helpers(session)
        if word.kind is Kind.VARIABLE:
            script = variables_script(word, bash=True)
        elif word.kind is Kind.USER:
            script = users_script(word, bash=True)
        elif word.kind in (Kind.FILE, Kind.COMMAND):
            if word.kind is Kind.FILE:
                script = files_script(word.prefix, bash=True)
            else:
                script = commands_script(word, bash=True)
            # `!` when a cell removed the helpers (`unset -f`): define them again and ask once more.
            script = f"\\builtin declare -F __lxck_cm __lxck_fl >/dev/null || \\builtin echo !; {script}"
            out = self._ask(session, script)
            if "!" in out.split("\n"):
                self._ready.discard(session)
                self._define_helpers(session)
                out = self._ask(session, script)
            return parse_candidates(word, out, bash=True)
        else:
            nonce = secrets.token_hex(8)
            try:
                out = self._ask(session, argument_script(word, nonce))
            except ValueError:  # a command line too long for one query: plain file names
                return parse_candidates(word, self._ask(session, files_script(word.prefix, bash=True)), bash=True)
            if f"{nonce}r" not in out.split("\n"):
                # The helpers are gone (`unset -f` in a cell): define them again and ask once more.
                self._ready.discard(session)
                self._define_helpers(session)
                out = self._ask(session, argument_script(word, nonce))
            return parse_candidates(word, out, bash=True, nonce=nonce)
        return parse_candidates(word, self._ask(session, script), bash=True)

    def _define_helpers(self, session: Any) -> None:
        """Define complete.py's bash helpers in this shell, once (a few queries of about 1.5 ms)."""
        if session in self._ready:
            return
        self._ask(session, ALIASES_OFF)
        done = False
        try:
            for batch in _helper_batches():  # the last one puts alias expansion back
                self._ask(session, batch)
            done = True
        finally:
            if not done:
                self._ask(session, ALIASES_BACK)  # a no-op if the last batch got to it
        self._ready.add(session)

    def _ash(self, session: Any, word: Word, code: str) -> list[Match]:
        """busybox ash: no compgen and no programmable completion; lists from the shell itself."""
        if word.kind is Kind.VARIABLE:
            return parse_candidates(word, self._ask(session, variables_script(word, bash=False)), bash=False)
        if word.kind is Kind.USER:
            return parse_candidates(word, self._ask(session, users_script(word, bash=False)), bash=False)
        if word.kind is Kind.COMMAND or (word.kind is Kind.ARGUMENT and word.after_keyword):
            # Commands, and file names when none matches (as bash does for a first word).
            command_word = Word(word.text, word.start, word.end, Kind.COMMAND, quote=word.quote)
            out = self._ask(session, commands_script(command_word, bash=False))
            return parse_candidates(command_word, out, bash=False, functions=function_names(code))
        # Any later word completes file names.
        return parse_candidates(word, self._ask(session, files_script(word.prefix, bash=False)), bash=False)

    @property
    def magics(self) -> MagicTable:
        if self._magics is None:
            self._magics = magic_table()
        return self._magics

    def container_names(self) -> list[str]:
        stamp, names = self._container_cache
        if time.monotonic() - stamp > CONTAINER_CACHE_SECONDS:
            try:
                names = self._containers()
            except LxcKernelError:
                names = []
            self._container_cache = (time.monotonic(), names)
        return names

    # -- inspection -----------------------------------------------------------------------------
    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        name = inspect_word(code, cursor_pos)
        reply: dict[str, Any] = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        if not name:
            return reply
        if name.startswith("%"):
            text = self._magic_help(name[1:])
        else:
            session = self._session()
            if session is None or session.info is None:
                return reply
            text = ""
            try:
                _, out = session.query(inspect_script(name), timeout=INSPECT_TIMEOUT)
                text = strip(out).strip("\n")
                if is_program(name, text):
                    timeout = INSPECT_DETAIL_TIMEOUT if detail_level else INSPECT_TIMEOUT
                    _, manual = session.query(manual_script(name, detail_level), timeout=timeout)
                    # Pages are formatted for a terminal: drop overstrikes (bold is c\bc, underline _\bc).
                    manual = _OVERSTRIKE.sub("", strip(manual)).strip("\n")
                    if manual:
                        text = f"{text}\n\n{manual}"
            except (LxcKernelError, ValueError) as exc:
                log.warning("inspection failed: %s", exc)
                if not text:
                    return reply
            text = text[:INSPECT_LIMIT]
        if not text:
            return reply
        reply["found"] = not text.startswith(f"{name}: not found")
        reply["data"] = {"text/plain": text}
        return reply

    def _magic_help(self, name: str) -> str:
        try:
            from . import magics

            entry = magics.REGISTRY.get(name)
        except Exception:
            entry = None
        return entry.doc if entry is not None else f"%{name}: not found (not a magic of this kernel)"


def _helper_batches() -> list[str]:
    """The helper definitions packed into as few queries as one line can carry (first fit, largest first),
    with ALIASES_BACK in the last one."""
    def fits(text: str) -> bool:
        return len(frame_query(text, "0" * 16)) <= INLINE_LIMIT

    batches: list[str] = []
    for helper in sorted(BASH_HELPERS, key=len, reverse=True):
        for i, batch in enumerate(batches):
            if fits(f"{batch}; {helper}"):
                batches[i] = f"{batch}; {helper}"
                break
        else:
            batches.append(helper)
    if fits(f"{batches[-1]}; {ALIASES_BACK}"):
        batches[-1] = f"{batches[-1]}; {ALIASES_BACK}"
    else:
        batches.append(ALIASES_BACK)
    return batches


def inspect_word(code: str, cursor_pos: int) -> str:
    """The whole word under (or just before) the cursor, for inspection: ``ls``, ``$HOME``, ``%lxc``."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    delims = set(" \t\n;|&<>()`\"'=")
    start = cursor_pos
    while start > 0 and code[start - 1] not in delims:
        start -= 1
    end = cursor_pos
    while end < len(code) and code[end] not in delims:
        end += 1
    word = code[start:end]
    if word.endswith("?"):  # `ls?` in consoles
        word = word.rstrip("?")
    return word


# A man page's NAME and SYNOPSIS sections (headings start in column 0), read by the shell itself: awk is
# a Debian alternative, a dangling link in the hostfs kind's own /etc. The loop stops after SYNOPSIS, so
# man stops formatting a long page there.
_NAME_SYNOPSIS = (
    "while IFS= read -r l; do case $l in [A-Z]*) [ -n \"$s\" ] && break; p=; case $l in NAME|SYNOPSIS) p=1;;"
    " esac; [ \"$l\" = SYNOPSIS ] && s=1;; esac; [ -n \"$p\" ] && echo \"$l\"; done"
)


def inspect_script(name: str) -> str:
    """Shell text describing ``name``: a variable's value; or its `type`, and a builtin's `help`.

    Runs in a subshell so nothing leaks. For a program, :func:`manual_script` adds the manual.
    """
    if name.startswith("$"):
        var = name.strip("${}")
        if not var.replace("_", "a").isalnum():
            return f"printf '%s: not found\\n' {sh_quote(name)} || \\:"
        return (
            f"if [ -n \"${{{var}+x}}\" ]; then printf '%s=%s\\n' {var} \"${{{var}}}\";"
            f" else printf '%s: not found (unset variable)\\n' {sh_quote(name)}; fi || \\:"
        )
    return (
        # `set +eu` and `|| :`: errexit or nounset from a cell must neither cut this short nor end the shell.
        f"(set +eu; w={sh_quote(name)}; t=$(type \"$w\" 2>/dev/null);"
        " if [ -z \"$t\" ]; then echo \"$w: not found\"; exit 0; fi; echo \"$t\" | head -n 40;"
        # `help` in bash explains one builtin; busybox ash's `help` would only list them all.
        " case $t in *\" is a shell builtin\"*|*\" is a special shell builtin\"*|*\" is a shell keyword\"*)"
        " [ -n \"$BASH_VERSION\" ] && help \"$w\" 2>/dev/null | head -n 80;; esac) || \\:"
    )


def is_program(name: str, type_text: str) -> bool:
    """`type` said ``name`` is a program: a file on PATH (``ls is /usr/bin/ls``, ``ls is hashed
    (/usr/bin/ls)``), or a busybox applet that ash runs without PATH (``ls is ls``)."""
    name_re = re.escape(name)
    return re.match(rf"{name_re} is ((hashed \()?/|{name_re}$)", type_text) is not None


def manual_script(name: str, detail_level: int) -> str:
    """Shell text for a program's manual: the man page's NAME and SYNOPSIS (the whole page at detail
    level 1), else the first lines of ``--help``.

    ``man`` is asked first; where it cannot run (the hostfs kind has no /etc/manpath.config, so man-db
    refuses every lookup) the page file is formatted with ``man -l``. ``--help`` is only tried on a
    program (a file on PATH, or a busybox applet) that has no page, under ``timeout`` when the container
    has it, with stdin from /dev/null.
    """
    pick = "head -n 600" if detail_level else _NAME_SYNOPSIS
    lines = 200 if detail_level else 15
    return (
        f"(set +efu; w={sh_quote(name)}; m() {{ MANWIDTH=80 MANPAGER=cat man \"$@\" 2>/dev/null | {pick}; }};"
        " p=$(m -- \"$w\"); [ -n \"$p\" ] || for f in /usr/local/share/man/man[18]*/\"$w\".[18]*"
        " /usr/share/man/man[18]*/\"$w\".[18]*; do [ -f \"$f\" ] && p=$(m -l \"$f\") && [ -n \"$p\" ] && break; done;"
        " if [ -n \"$p\" ]; then echo \"$p\"; exit 0; fi; p=$(command -v \"$w\");"
        " case $p in /*|\"$w\") to=; command -v timeout >/dev/null 2>&1 && to=\"timeout 2\";"
        f" $to \"$p\" --help </dev/null 2>&1 | head -n {lines};; esac) || \\:"
    )
