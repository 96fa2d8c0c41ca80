"""``%%on TARGET...`` and ``%on status|close``: one cell in many containers (fanout.py runs it)."""

from __future__ import annotations

import argparse
import fnmatch
import html
import re
import shlex
import time
from collections.abc import Sequence

from .. import policy
from ..errors import ConfigError
from ..fanout import OnRequest
from .core import KINDS, Host, MagicFailed, MagicParser, UsageError, magic, policy_request, say, table

# The options of a %%on line, for its parser and for completion.
ON_FLAGS = ("--parallel", "--timeout", "--continue", "--as", "--interleave")
_ON_VALUED = ("--parallel", "--timeout", "--as")
_ON_CELL = re.compile(r"[ \t]*%%on(?:[ \t]+(?P<args>[^\n]*))?[ \t]*(?:\n|$)")


def split_on_cell(code: str) -> tuple[list[str], str] | None:
    """Pure: ``(argv, body)`` when the cell (after its line magics) starts with ``%%on``, else None.

    The body is everything after the ``%%on`` line, run unchanged in every target.
    """
    match = _ON_CELL.match(code.lstrip("\n"))
    if match is None:
        return None
    try:
        argv = shlex.split(match.group("args") or "")
    except ValueError as exc:
        raise UsageError(f"%%on: {exc}") from None
    return argv, code.lstrip("\n")[match.end():]


def _whole(text: str, what: str, low: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"{what} must be a whole number from {low}, not {text!r}")
    return value


def _on_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10**7:
        raise argparse.ArgumentTypeError(f"--timeout must be a number of seconds, not {text!r}")
    return value


def _on_cell_parser() -> MagicParser:
    p = MagicParser(prog="%%on")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.add_argument("--parallel", type=lambda text: _whole(text, "--parallel"), metavar="N")
    p.add_argument("--timeout", type=_on_seconds, metavar="S")
    p.add_argument("--continue", dest="keep_going", action="store_true")
    p.add_argument("--as", dest="user", metavar="USER")
    p.add_argument("--interleave", action="store_true")
    return p


def parse_on(args: Sequence[str]) -> OnRequest:
    """The ``%%on`` line's arguments (options may come before, between or after the targets)."""
    from ..users import parse_spec

    ns = _on_cell_parser().parse_intermixed_args(list(args))
    if ns.user is not None:
        try:
            parse_spec(ns.user)
        except ConfigError as exc:
            raise UsageError(f"%%on --as: {exc}") from None
    return OnRequest(tuple(ns.targets), ns.parallel, ns.timeout, ns.keep_going, ns.user, ns.interleave)


def check_on_policy(host: Host, args: Sequence[str]) -> None:
    """A ``%%on`` cell is the magic ``on`` to the magics policy (it reaches other containers, as the
    kernel's user): refused wherever ``%on`` is, before anything runs."""
    if host.magics != "all":
        reason = policy.refusal(host.magics, policy_request("on", list(args)), KINDS)
        if reason is not None:
            raise policy.refused(host.magics, "%on " + shlex.join(args), reason)


def _on_parser() -> MagicParser:
    """``%on status|close``; completion reads its subcommands (a container name fits after ``close``)."""
    p = MagicParser(prog="%on")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="status|close", parser_class=MagicParser)
    sub.add_parser("status", prog="%on status")
    sub.add_parser("close", prog="%on close").add_argument("name", nargs="*", metavar="TARGET")
    return p


@magic("on", subcommands=lambda: {"status": False, "close": True})
def on_magic(host: Host, args: list[str]) -> None:
    """%%on TARGET... [options]: run the rest of the cell in many containers at once; %on status|close.

    A cell that starts with a %%on line runs its body in every TARGET side by side. A TARGET is a
    container name or a glob over the container list (web*, db[12]); a glob that matches nothing
    fails the cell. Each target keeps its own persistent shell, opened on first use, so cd and
    variables carry over between %%on cells aimed at it; plain cells keep using this kernel's
    container. Each target's output is one block, in target order, filled in while it runs (stderr
    in the stderr colours), then a table: target, status, exit code, duration, bytes. The cell fails
    when any target fails, and the error names each one. The stop button stops every target.

      --parallel N     at most N targets at a time (default: all at once)
      --timeout S      time limit per target (default: the kernel's %timeout)
      --continue       the cell succeeds even when some targets fail
      --as USER        run as USER (NAME|UID[:GID], looked up in each container's /etc/passwd).
                       A target has one shell: it is re-opened, with a note, when the user changes
      --interleave     no blocks: lines as they arrive, each prefixed `name | `

      %on status              the open %%on sessions: user, state, host PIDs, cells run
      %on close [TARGET...]   end them: all, or those named (globs match the open ones)

    stdin is /dev/null; a command that waits for terminal input stops that target. The output
    budget (%output) applies per target. At most max_fanout_sessions (default 64) shells are open;
    past that a cell fails before running anything. Shutdown and restart end them all.
    """
    fleet = getattr(host, "fleet", None)
    if args and args[0] not in ("status", "close"):
        raise UsageError(f"%on takes status or close, not {args[0]!r}. To run code in containers, start the "
                         "cell with a line `%%on TARGET...` (two %).")
    ns = _on_parser().parse_args(args)
    cap = int(getattr(host, "max_fanout_sessions", 64))
    members = fleet.members() if fleet is not None else []
    if ns.cmd == "status":
        if not members:
            say(host, f"no %%on session is open (at most {cap})")
            return
        now = time.monotonic()
        rows = [
            {
                "NAME": m.name,
                "USER": m.user or "root",
                "STATE": "running" if m.running else ("idle" if m.session.alive else "ended"),
                "SHELL PID": str(m.session.info.pid) if m.session.info is not None else "?",
                "HOST PIDS": " ".join(str(p) for p in m.session.pids),
                "CELLS": str(m.cells),
                "LAST": m.last or "-",
                "OPEN FOR": f"{now - m.opened:.0f} s",
            }
            for m in sorted(members, key=lambda m: m.name)
        ]
        text, page = table(rows, ("NAME", "USER", "STATE", "SHELL PID", "HOST PIDS", "CELLS", "LAST", "OPEN FOR"))
        head = f"{len(members)} %%on session{'s' if len(members) != 1 else ''} open (at most {cap})"
        host.emit_display({"text/plain": f"{head}\n{text}", "text/html": f"<div>{html.escape(head)}</div>{page}"})
        return
    if not ns.name:
        chosen = [m.name for m in members]
    else:
        chosen = []
        for pattern in ns.name:
            matched = [m.name for m in members if fnmatch.fnmatchcase(m.name, pattern)]
            if not matched:
                raise MagicFailed(f"%on close: no open %%on session matches {pattern!r} (`%on status` lists them)")
            chosen += [name for name in matched if name not in chosen]
    closed = fleet.close(chosen) if fleet is not None and chosen else []
    say(host, f"closed {len(closed)} %%on session{'s' if len(closed) != 1 else ''}: {', '.join(closed)}"
         if closed else "no %%on session is open")


def arg_choices(words: Sequence[str]) -> tuple[list[str], bool] | None:
    """Completion of ``%MAGIC w1 w2 <word>`` for magics whose arguments are not subcommands alone:
    ``(fixed choices, whether container names fit here)``, or None for the generic rule.

    ``words`` is the magic's name and the words before the one being completed (``%on`` and
    ``%%on`` both give ``on``): after ``%%on`` come container names and the options, after
    ``%on`` also ``status`` and ``close``.
    """
    if not words or words[0] != "on":
        return None
    before = list(words[1:])
    if before and before[-1] in _ON_VALUED:
        return [], False  # the option's value: a number or a user
    if not before:
        return ["status", "close", *ON_FLAGS], True
    if before[0] == "status":
        return [], False
    if before[0] == "close":
        return [], True
    return [flag for flag in ON_FLAGS if flag not in before], True


