"""How the shell is attached and run: ``%attach`` (from the option table), ``%stderr``, ``%colors``, ``%reset``,
``%timeout`` and ``%output``."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from ..errors import ConfigError, LxcKernelError
from ..lxc import State
from ..options import ATTACH, Kind, Option
from .core import Host, MagicFailed, MagicParser, UsageError, magic, option_rows, parse_on_off, say

# What a new shell is built from: every %attach option, and the two other magics change (%stderr
# re-attaches; colors is read when the session is built). A failed re-attach puts these back.
_ATTACH_TRAITS = (*(option.name for option in ATTACH.values()), "stderr", "colors")


def _attach_usages(option: Option) -> list[str]:
    assert option.attach is not None
    return [f"%attach {option.word} {option.attach.metavar}", *(f"%attach {u}" for u, _ in option.attach.more)]


def _attach_help() -> str:
    """The subcommand lines of ``%attach --help``: usage, then the help column (continued on new lines)."""
    lines = [f"  {'%attach show':<32}  the options in force"]
    for option in ATTACH.values():
        assert option.attach is not None
        rows = [(_attach_usages(option)[0], option.attach.help)]
        rows += [(f"%attach {usage}", text) for usage, text in option.attach.more]
        for usage, text in rows:
            first, *rest = text.splitlines()
            lines.append(f"  {usage:<32}  {first}")
            lines += [" " * 36 + line for line in rest]
    return "\n".join(lines)


def _attach_parser() -> MagicParser:
    p = MagicParser(prog="%attach")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="OPTION", parser_class=MagicParser)
    sub.add_parser("show", prog="%attach show")
    for word, option in ATTACH.items():
        assert option.attach is not None
        s = sub.add_parser(word, prog=f"%attach {word}")
        metavar = option.attach.metavar.removesuffix(" ...")
        if option.kind in (Kind.DICT, Kind.LIST):
            # Changed item by item: add some, remove some with -u.
            s.add_argument("words", nargs="*", metavar=metavar)
            s.add_argument("-u", "--unset", action="append", default=[], metavar=metavar.split("=")[0])
        else:
            s.add_argument("words", nargs=1, metavar=metavar)
    return p


@magic("attach", subcommands=lambda: {"show": False, **dict.fromkeys(ATTACH, False)})
def attach_magic(host: Host, args: list[str]) -> None:
    """%attach OPTION ...: how the shell is attached (lxc-attach options). Any change re-attaches.

    The shell is closed and a new one attached with the new options; the output says so. Variables,
    functions and the working directory of the old shell are gone. A change that fails to attach is
    rolled back. Each option has a kernelspec counterpart (`python -m lxc_kernel.install --help`).
    """
    ns = _attach_parser().parse_args(args)
    if ns.cmd == "show":
        rows = option_rows(host)
        width = max(len(k) for k, _ in rows)
        say(host, "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
        return
    previous = {name: getattr(host, name) for name in _ATTACH_TRAITS}
    changed = _apply_attach(host, ns)
    _reattach(host, previous, changed)


attach_magic.__doc__ = inspect.cleandoc(attach_magic.__doc__ or "") + "\n\n" + _attach_help()


def _apply_attach(host: Host, ns: argparse.Namespace) -> str:
    """Set one option trait from ``%attach`` through its validator; return what changed, for the message.

    A refused value is a usage error and nothing is set, so the shell and the other options stay.
    """
    option = ATTACH[ns.cmd]
    try:
        value, said = option.from_words(ns.words, getattr(ns, "unset", []), getattr(host, option.name))
    except ConfigError as exc:
        raise UsageError(f"%attach {ns.cmd}: {exc}\nusage: {' | '.join(_attach_usages(option))}") from None
    setattr(host, option.name, value)
    return f"{ns.cmd} {said}"


def _reattach(host: Host, previous: dict[str, Any], changed: str) -> None:
    """Close the shell and attach a new one with the new options; on failure, restore the old ones."""
    try:
        host.close_session()
        name = host.container
        if host.lifecycle.state(name) is not State.RUNNING:
            options = host.attach_options() if not host.user else None
            for warning in options.warnings if options else ():
                host.emit_text(f"warning: {warning}\n", "stderr")
            say(host, f"{changed}: set. {name} is not running, so the shell attaches with it once it is.")
            return
        session = host.ensure_session()
    except (LxcKernelError, OSError) as exc:
        for name, value in previous.items():
            setattr(host, name, value)
        host.close_session()
        raise MagicFailed(f"{changed}: could not attach ({exc}); the options were left as they were") from exc
    pid = session.info.pid if session.info is not None else "?"
    say(host, f"{changed}: re-attached - a new shell (PID {pid} inside {host.container}); "
               "the old shell's variables and working directory are gone")


@magic("timeout")
def timeout_magic(host: Host, args: list[str]) -> None:
    """%timeout [SECONDS|off]: a time limit for each cell; without an argument, show it.

    When a cell runs longer, it is interrupted (as by the stop button) and fails with an error that
    names the limit. The shell and its state survive. Kernelspec: --timeout SECONDS.
    """
    p = MagicParser(prog="%timeout")
    p.add_argument("seconds", nargs="?", metavar="SECONDS|off")
    ns = p.parse_args(args)
    if ns.seconds is None:
        say(host, f"timeout: {host.cell_timeout:g} s" if host.cell_timeout else "timeout: off")
        return
    if ns.seconds.lower() in ("off", "none", "0"):
        host.cell_timeout = 0.0
        say(host, "timeout: off")
        return
    try:
        seconds = float(ns.seconds)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**7:
        raise UsageError(f"%timeout: {ns.seconds!r} is not a number of seconds or 'off'\n{p.format_usage().strip()}")
    host.cell_timeout = seconds
    say(host, f"timeout: {seconds:g} s per cell")


@magic("reset")
def reset_magic(host: Host, args: list[str]) -> None:
    """%reset: a fresh shell in the same container (variables, functions and cwd start over)."""
    MagicParser(prog="%reset").parse_args(args)
    host.close_session()
    if host.lifecycle.state(host.container) is State.RUNNING:
        session = host.ensure_session()
        pid = session.info.pid if session.info is not None else "?"
        say(host, f"reset: a fresh shell (PID {pid}) in {host.container}")
    else:
        say(host, "reset: the shell is closed; the next cell attaches a fresh one")


@magic("colors")
def colors_magic(host: Host, args: list[str]) -> None:
    """%colors on|off: keep colour (SGR) codes in the output for the frontend to render, or strip them.

    Applies from the next cell, without re-attaching. Kernelspec: --colors.
    """
    p = MagicParser(prog="%colors")
    p.add_argument("value", metavar="on|off")
    host.colors = parse_on_off(p.parse_args(args).value, "%colors")
    session = host.shell_session
    if session is not None:
        session.keep_colors = host.colors  # read per cell by the session: no re-attach needed
    say(host, f"colors: {'on' if host.colors else 'off'}")


@magic("stderr")
def stderr_magic(host: Host, args: list[str]) -> None:
    """%stderr separate|merged: stderr as its own stream, or merged into stdout in order. Re-attaches.

    separate (default) keeps error output distinguishable, but its order relative to stdout is only
    kept per stream; merged keeps the exact order, all as stdout. Kernelspec: --stderr.
    """
    p = MagicParser(prog="%stderr")
    p.add_argument("mode", choices=["separate", "merged"])
    mode = p.parse_args(args).mode
    if mode == host.stderr:
        say(host, f"stderr: already {mode}")
        return
    previous = {name: getattr(host, name) for name in _ATTACH_TRAITS}
    host.stderr = mode
    _reattach(host, previous, f"stderr {mode}")


@magic("output")
def output_magic(host: Host, args: list[str]) -> None:
    """%output [SIZE|off]: the output budget per cell (e.g. 200k, 2M); without an argument, show it.

    Past the budget the notebook keeps the first SIZE characters and the last quarter of SIZE, with a
    notice saying how much was left out and the file on the kernel's host where the whole output was
    saved. Applies from the next cell. Kernelspec: --output-limit SIZE (default 1M).
    """
    from ..budget import human, parse_size

    p = MagicParser(prog="%output")
    p.add_argument("size", nargs="?", metavar="SIZE|off")
    ns = p.parse_args(args)
    if ns.size is not None:
        try:
            limit = parse_size(ns.size)
        except ValueError as exc:
            raise UsageError(f"%output: {exc}\n{p.format_usage().strip()}") from None
        host.output_limit = ns.size.strip() if limit else "off"  # type: ignore[attr-defined]
    limit = parse_size(getattr(host, "output_limit", "1M"))
    say(host, f"output budget: {human(limit)} per cell" if limit else "output budget: off")


