"""Completion and inspection answered by the live shell: the kernel's ``do_complete``/``do_inspect`` bodies.

The word at the cursor and the candidate list are pure text work (complete.py); this module runs the
short hidden command through :meth:`ShellSession.query`, adds magic names and subcommands from the
magics registry and container names from ``lxc-ls``, and never raises: a frontend asking for
completions must get an answer (maybe empty) quickly, whatever state the shell is in.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ansi import strip
from .complete import (
    Kind,
    Word,
    candidates_script,
    complete_names,
    magic_arg_choices,
    parse_candidates,
    word_at,
)
from .errors import LxcKernelError
from .protocol import sh_quote

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 0.5  # seconds; the issue asks for an answer within 200 ms on an idle kernel
CONTAINER_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class MagicTable:
    """What completion knows of the magics: names, subcommands, and where a container name goes."""

    names: tuple[str, ...]
    subcommands: dict[str, tuple[str, ...]]
    takes_container: dict[str, Any]  # magic -> set of subcommands (or True: first argument)


def magic_table() -> MagicTable:
    """Read the magics registry (magics.py) lazily; an empty table if it is missing or changed shape."""
    try:
        from . import magics
    except Exception:  # the registry is optional for completion: degrade, don't fail
        return MagicTable((), {}, {})
    registry = getattr(magics, "REGISTRY", {}) or {}
    names = tuple(sorted(registry))
    subcommands: dict[str, tuple[str, ...]] = {}
    takes: dict[str, Any] = {}
    for name in names:
        build = getattr(magics, f"_{name}_parser", None)
        if build is None:
            continue
        try:
            parser = build()
        except Exception:
            continue
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                subcommands[name] = tuple(action.choices)
                # A subcommand whose first positional is a container name (`name`, `src`).
                wanted = set()
                for sub, subparser in action.choices.items():
                    positionals = [a for a in subparser._actions if not a.option_strings and a.dest != "help"]
                    if positionals and positionals[0].dest in ("name", "src"):
                        wanted.add(sub)
                takes[name] = wanted
    return MagicTable(names, subcommands, takes)


class Assistant:
    """Completion and inspection for one kernel; ``session`` returns the live session or None."""

    def __init__(self, session: Callable[[], Any], containers: Callable[[], list[str]]) -> None:
        self._session = session
        self._containers = containers
        self._container_cache: tuple[float, list[str]] = (0.0, [])
        self._magics: MagicTable | None = None

    # -- completion -----------------------------------------------------------------------------
    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        word = word_at(code, cursor_pos)
        try:
            matches = self._matches(word)
        except Exception as exc:  # a broken completion must not break the frontend
            log.warning("completion failed: %s", exc)
            matches = []
        return {
            "status": "ok",
            "matches": matches,
            "cursor_start": word.start,
            "cursor_end": word.end,
            "metadata": {},
        }

    def _matches(self, word: Word) -> list[str]:
        if word.kind is Kind.MAGIC:
            return complete_names(word, self.magics.names)
        if word.kind is Kind.MAGIC_ARG:
            choices, containers = magic_arg_choices(word, self.magics.subcommands, self.magics.takes_container)
            if containers:
                choices = [*choices, *self.container_names()]
            return complete_names(word, choices)
        session = self._session()
        if session is None or session.info is None:
            return []
        bash = bool(session.info.bash_version)
        script = candidates_script(word, bash=bash)
        if script is None:
            return []
        _, out = session.query(script, timeout=QUERY_TIMEOUT)
        return parse_candidates(word, strip(out), bash=bash)

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
            try:
                _, out = session.query(inspect_script(name, detail_level), timeout=3.0 if detail_level else 1.5)
            except LxcKernelError as exc:
                log.warning("inspection failed: %s", exc)
                return reply
            text = strip(out).strip("\n")
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


def inspect_script(name: str, detail_level: int) -> str:
    """Shell text describing ``name``: its value, or `type`, a builtin's help, whatis, --help, man page.

    Runs in a subshell so nothing leaks. ``--help`` is only tried on a program found on PATH and
    without a whatis line, under ``timeout`` when the container has it, with stdin from /dev/null.
    """
    if name.startswith("$"):
        var = name.strip("${}")
        if not var.replace("_", "a").isalnum():
            return f"printf '%s: not found\\n' {sh_quote(name)}"
        return (
            f"if [ -n \"${{{var}+x}}\" ]; then printf '%s=%s\\n' {var} \"${{{var}}}\";"
            f" else printf '%s: not found (unset variable)\\n' {sh_quote(name)}; fi"
        )
    man = (
        "m=$(MANPAGER=cat MANWIDTH=100 man -- \"$w\" 2>/dev/null | col -b 2>/dev/null | head -n 400);"
        if detail_level
        else ""
    )
    return (
        f"(w={sh_quote(name)}; t=$(type \"$w\" 2>/dev/null);"
        " if [ -z \"$t\" ]; then printf '%s: not found\\n' \"$w\"; else printf '%s\\n' \"$t\";"
        # `help` in bash explains one builtin; busybox ash's `help` would only list them all.
        " case $t in *builtin*|*keyword*) [ -n \"$BASH_VERSION\" ] && help \"$w\" 2>/dev/null | head -n 30;;"
        " *alias*|*function*) ;;"  # bash's `type` already printed the definition
        " *) d=$(whatis -- \"$w\" 2>/dev/null | head -n 3); m=; "
        + man
        + " if [ -n \"$d\" ]; then printf '%s\\n' \"$d\"; fi;"
        " if [ -n \"$m\" ]; then printf '\\n%s\\n' \"$m\"; elif [ -z \"$d\" ]; then"
        " p=$(command -v \"$w\"); case $p in /*) to=; command -v timeout >/dev/null 2>&1 && to='timeout 2';"
        " $to \"$p\" --help </dev/null 2>&1 | head -n 25;; esac; fi;; esac; fi)"
    )
