"""Line magics (``%lxc``, ``%attach``, ``%timeout``...): an explicit registry where each docstring is the help.

A cell's leading lines that start with ``%`` and a letter are magics; the rest of the cell is shell code
that runs after them (``%1`` stays shell job syntax). Each magic gets the kernel as a :class:`Host` and its
arguments as an argv (``shlex`` split, never passed to a shell). Parsers raise :class:`UsageError` with the
usage instead of exiting. The same docstrings are ``%help``, ``%MAGIC --help`` and the README's magics
section (``python -m lxc_kernel.magics --markdown`` prints it; a test checks the README has it).

One module per topic, each registering its magics (``core.magic``) and ``%lxc`` subcommands
(``core.lxc_subcommand``): lifecycle, snapshots (and clones), config (and limits, log), attach (the
shell's options), files, help, on (fan-out). Magics reach containers only through the kernel's backend.
``ORDER`` and ``TOPICS`` below set the order of ``%lsmagic``, ``%help`` and ``%lxc --help``.
"""

from __future__ import annotations

from . import attach, config, files, help, lifecycle, lxc_command, on, snapshots
from .attach import _apply_attach, _attach_parser
from .core import (
    KINDS,
    LXC_SUBCOMMANDS,
    REGISTRY,
    Host,
    Magic,
    MagicFailed,
    MagicParser,
    Subcommand,
    UnknownMagic,
    UsageError,
    magic,
    run_line,
    run_magics,
    split_cell,
    subcommand_table,
)
from .help import main, markdown
from .lxc_command import lxc_parser
from .on import ON_FLAGS, arg_choices, check_on_policy, parse_on, split_on_cell

# The order magics are listed in (%lsmagic, %help, the README), and %lxc's topics in its help.
ORDER = ("lxc", "attach", "timeout", "reset", "push", "pull", "colors", "stderr", "output", "lsmagic", "help", "on")
TOPICS = ("lifecycle", "snapshots", "config")


def _ordered() -> None:
    magics = sorted(REGISTRY.values(), key=lambda m: ORDER.index(m.name) if m.name in ORDER else len(ORDER))
    REGISTRY.clear()
    REGISTRY.update((m.name, m) for m in magics)
    subs = sorted(LXC_SUBCOMMANDS.values(), key=lambda s: TOPICS.index(s.topic) if s.topic in TOPICS else len(TOPICS))
    LXC_SUBCOMMANDS.clear()
    LXC_SUBCOMMANDS.update((s.name, s) for s in subs)
    lxc_command.lxc_magic.__doc__ = lxc_command.lxc_doc()


_ordered()

# What tests and tools name: the %lxc subcommands by name, as the old single module had them.
_LXC_COMMANDS = {name: entry.run for name, entry in LXC_SUBCOMMANDS.items()}

__all__ = [
    "KINDS", "LXC_SUBCOMMANDS", "ON_FLAGS", "REGISTRY", "Host", "Magic", "MagicFailed", "MagicParser", "Subcommand",
    "UnknownMagic", "UsageError", "_apply_attach", "_attach_parser", "arg_choices", "attach", "check_on_policy",
    "config", "files", "help", "lifecycle", "lxc_parser", "magic", "main", "markdown", "on", "parse_on", "run_line",
    "run_magics", "snapshots", "split_cell", "split_on_cell", "subcommand_table",
]
