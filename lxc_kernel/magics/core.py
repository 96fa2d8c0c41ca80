"""The magics' machinery: parsing, the explicit registry of magics and ``%lxc`` subcommands, the policy gate."""

from __future__ import annotations

import argparse
import html
import inspect
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from .. import policy
from ..attach import AttachOptions
from ..backends import Backend
from ..backends.classic import KINDS  # the policy reads them as known templates
from ..errors import ConfigError, LxcKernelError
from ..lxc import State
from ..options import OPTIONS, on_off

# -- errors and parsing ---------------------------------------------------------------------------


class UsageError(ConfigError):
    """Bad arguments to a magic; the message ends with the usage. Nothing ran."""


class UnknownMagic(ConfigError):
    pass


class MagicFailed(LxcKernelError):
    """A magic could not do what was asked; the message says why and what to do instead."""


class MagicParser(argparse.ArgumentParser):
    """argparse that raises UsageError: in Python 3.11 it still exits on unknown arguments even with
    ``exit_on_error=False``, which would end the kernel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().strip()}\n(see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or f"{self.prog}: exit {status}")


# Leading `%name` lines; `%1` (job control) and `%%` are not magics.
_MAGIC_LINE = re.compile(r"\s*%([A-Za-z][A-Za-z0-9_-]*)(?:\s|$)")


def split_cell(code: str) -> tuple[list[str], str]:
    """Pure: the leading magic lines (without ``%``) and the shell code after them.

    Blank lines between magics are skipped; the first other line starts the shell code, which is
    returned unchanged from that line on.
    """
    lines = code.splitlines(keepends=True)
    magics: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if not _MAGIC_LINE.match(line):
            break
        magics.append(line.strip()[1:])
        i += 1
    if not magics:
        return [], code
    return magics, "".join(lines[i:])



# -- the host: what a magic may use of the kernel ---------------------------------------------------


class Host(Protocol):
    """The kernel as magics see it: its option traits, its backend, its session, and where output goes.

    The option traits are those of options.OPTIONS; ``%attach`` reads and sets them by name. Listed here
    are the ones other magics use directly. Magics reach containers only through ``lifecycle`` (a
    :class:`~lxc_kernel.backends.Backend`), never through a tool.
    """

    container: str
    user: str
    cwd: str
    colors: bool
    stderr: str
    cell_timeout: float
    output_limit: str
    ephemeral: str
    magics: str
    transfer_root: str

    @property
    def lifecycle(self) -> Backend: ...

    @property
    def shell_session(self) -> Any: ...

    def attach_options(self) -> AttachOptions: ...

    def ensure_session(self) -> Any: ...

    def close_session(self) -> None: ...

    def emit_text(self, text: str, stream: str = "stdout") -> None: ...

    def emit_display(self, data: dict[str, str]) -> None: ...


# -- the registry -------------------------------------------------------------------------------------

MagicFunc = Callable[[Host, list[str]], None]
# What a magic line asks for, as the magics policy sees it (the %lxc subcommand, config keys...).
RequestFunc = Callable[[list[str]], policy.Request]


@dataclass(frozen=True)
class Magic:
    """One magic: its function (whose docstring is its help), how the policy reads a line of it, and its
    subcommands for completion (name -> whether a container name follows it)."""

    name: str
    func: MagicFunc
    request: RequestFunc | None = None
    subcommands: Callable[[], Mapping[str, bool]] | None = None

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


REGISTRY: dict[str, Magic] = {}


def magic(name: str, *, request: RequestFunc | None = None,
          subcommands: Callable[[], Mapping[str, bool]] | None = None) -> Callable[[MagicFunc], MagicFunc]:
    def register(func: MagicFunc) -> MagicFunc:
        REGISTRY[name] = Magic(name, func, request, subcommands)
        return func

    return register


def known() -> str:
    return ", ".join(f"%{name}" for name in REGISTRY)


@dataclass(frozen=True)
class Subcommand:
    """One ``%lxc`` subcommand, registered by its topic module.

    ``arguments`` adds its arguments to its own parser; ``usage`` is its lines in ``%lxc --help``;
    ``takes_container`` says whether its first argument is a container name (for completion).
    """

    name: str
    arguments: Callable[[MagicParser], None]
    run: Callable[[Host, argparse.Namespace], None]
    usage: str
    takes_container: bool = False
    topic: str = ""


LXC_SUBCOMMANDS: dict[str, Subcommand] = {}


SubcommandFunc = Callable[[Host, argparse.Namespace], None]


def lxc_subcommand(name: str, usage: str, *, arguments: Callable[[MagicParser], None] | None = None,
                   takes_container: bool = False, topic: str = "") -> Callable[[SubcommandFunc], SubcommandFunc]:
    """Register ``%lxc NAME``: its topic module's function, arguments and help lines."""

    def register(func: SubcommandFunc) -> SubcommandFunc:
        LXC_SUBCOMMANDS[name] = Subcommand(name, arguments or (lambda p: None), func,
                                           inspect.cleandoc(usage), takes_container, topic)
        return func

    return register


def subcommand_table() -> dict[str, dict[str, bool]]:
    """Every magic's subcommands (name -> whether a container name follows), from the registry: what
    completion offers."""
    return {name: dict(entry.subcommands()) for name, entry in REGISTRY.items() if entry.subcommands is not None}


@dataclass(frozen=True)
class _Line:
    entry: Magic
    args: list[str]
    help_only: bool


def _prepare(host: Host, line: str) -> _Line:
    """Parse one magic line and ask the magics policy about it; raises before anything runs."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%{line.strip()}: {exc}") from None
    name, args = argv[0], argv[1:]
    if host.magics != "all":
        # Before the registry: under `none` even an unknown magic is refused for that reason.
        reason = policy.refusal(host.magics, policy_request(name, args), KINDS)
        if reason is not None:
            raise policy.refused(host.magics, line.strip(), reason)
    entry = REGISTRY.get(name)
    if entry is None:
        raise UnknownMagic(f"unknown magic %{name}. Known magics: {known()}. `%help MAGIC` explains one.")
    return _Line(entry, args, help_only(args))




def help_only(args: Sequence[str]) -> bool:
    before_dashdash = args[: args.index("--")] if "--" in args else args
    return "--help" in before_dashdash or "-h" in before_dashdash


def policy_request(name: str, args: list[str]) -> policy.Request:
    """What a line asks for, as the policy sees it; the magic's own ``request`` reads its arguments (the
    %lxc subcommand, a create's template, the config keys a line would write)."""
    if help_only(args):
        return policy.Request(name, help_only=True)
    entry = REGISTRY.get(name)
    if entry is None or entry.request is None:
        return policy.Request(name)
    return entry.request(args)


def _run(host: Host, line: _Line) -> None:
    if line.help_only:
        host.emit_text(help_text(host, line.entry) + "\n")
        return
    line.entry.func(host, line.args)


def run_line(host: Host, line: str) -> None:
    """Run one magic line (without its ``%``), if the kernel's magics policy allows it."""
    _run(host, _prepare(host, line))


def run_magics(host: Host, lines: Sequence[str]) -> None:
    """Run magic lines in order; the first failure raises and the rest (and the shell code) don't run.

    Every line is parsed and checked against the magics policy first: a refused line anywhere in the
    cell means that no line of it runs, so a refusal changes nothing.
    """
    for line in [_prepare(host, line) for line in lines]:
        _run(host, line)


# -- help ------------------------------------------------------------------------------------------------


def allowed_note(host: Host, entry: Magic) -> str:
    """How much of ``entry`` the kernel's magics policy allows, for %lsmagic and %help; empty if all of it."""
    if host.magics == "all":
        return ""
    if policy.allows(host.magics, entry.name):
        return ""
    if entry.name == "lxc" and host.magics == "safe":
        return f"only %lxc {', '.join(policy.SAFE_LXC)} here (magics policy safe)"
    return f"refused here (magics policy {host.magics})"


def help_text(host: Host, entry: Magic) -> str:
    note = allowed_note(host, entry)
    return entry.doc + (f"\n\nIn this kernel: {note}. {policy.describe(host.magics)}" if note else "")


# -- helpers for the magics --------------------------------------------------------------------------------


def say(host: Host, text: str) -> None:
    host.emit_text(text.rstrip("\n") + "\n")


def target_name(host: Host, name: str | None) -> str:
    """The named container, or the kernel's own; the name is validated by the backend before any tool runs."""
    return host.lifecycle.validate_name(name) if name else host.container


def is_attached(host: Host, name: str) -> bool:
    return name == host.container


def timed(action: Callable[[], State]) -> tuple[State, float]:
    t0 = time.monotonic()
    state = action()
    return state, time.monotonic() - t0


def expect(name: str, reached: State, wanted: State, seconds: float, what: str) -> str:
    if reached is not wanted:
        raise MagicFailed(f"{what} {name}: it is {reached.value}, not {wanted.value}, after {seconds:.1f} s")
    return f"container {name}: {reached.value} ({seconds:.2f} s)"


def require_state(host: Host, name: str, *allowed: State) -> State:
    state = host.lifecycle.state(name)
    if state is State.MISSING:
        raise MagicFailed(f"container {name!r} does not exist (see `%lxc list`)")
    if allowed and state not in allowed:
        raise MagicFailed(f"container {name!r} is {state.value}; this needs it "
                          f"{' or '.join(s.value for s in allowed)}")
    return state


def option_rows(host: Host) -> list[tuple[str, str]]:
    return [(option.word, option.render(getattr(host, option.name))) for option in OPTIONS if option.shown]


def parse_on_off(value: str, what: str) -> bool:
    try:
        return on_off(value)
    except ConfigError as exc:
        raise UsageError(f"{what}: {exc}") from None


def table(rows: list[dict[str, str]], columns: Sequence[str], mark: str | None = None) -> tuple[str, str]:
    """A plain-text and an HTML rendering of ``rows``; the row whose NAME is ``mark`` gets a ``*``."""
    cells = [[("* " if r.get("NAME") == mark else "  ") + r.get("NAME", "")] + [r.get(c, "") for c in columns[1:]]
             for r in rows]
    widths = [max([len(c) + (2 if i == 0 else 0)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    head = "  ".join(("  " + c if i == 0 else c).ljust(widths[i]) for i, c in enumerate(columns))
    text = "\n".join([head.rstrip()] + ["  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip()
                                        for row in cells])
    ths = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    trs = "".join(
        "<tr>" + "".join(
            f"<td>{'<b>' if r.get('NAME') == mark and c == 'NAME' else ''}{html.escape(r.get(c, ''))}"
            f"{'</b> (this kernel)' if r.get('NAME') == mark and c == 'NAME' else ''}</td>" for c in columns
        ) + "</tr>"
        for r in rows
    )
    return text + "\n", f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"

