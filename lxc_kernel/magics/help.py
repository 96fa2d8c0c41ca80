"""The magics' own help: ``%lsmagic``, ``%help``, and the README's magics section made from the same docstrings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import policy
from .core import REGISTRY, Host, MagicParser, UnknownMagic, allowed_note, help_text, known, magic, say


@magic("lsmagic")
def lsmagic_magic(host: Host, args: list[str]) -> None:
    """%lsmagic: list the magics, each with its one-line summary, and which ones this kernel allows."""
    MagicParser(prog="%lsmagic").parse_args(args)
    lines = []
    for entry in REGISTRY.values():
        note = allowed_note(host, entry)
        lines.append(entry.summary + (f"  [{note}]" if note else ""))
    say(host, "\n".join(lines)
         + "\n\nA cell's leading %lines are magics; the rest of the cell runs in the shell after them."
         "\n`%help MAGIC` or `%MAGIC --help` explains one.\n" + policy.describe(host.magics))


@magic("help")
def help_magic(host: Host, args: list[str]) -> None:
    """%help [MAGIC]: the help of one magic, or of all of them, and which ones this kernel allows."""
    p = MagicParser(prog="%help")
    p.add_argument("name", nargs="?", metavar="MAGIC")
    ns = p.parse_args(args)
    if ns.name is None:
        say(host, "\n\n".join(help_text(host, m) for m in REGISTRY.values())
             + ("" if host.magics == "all" else "\n\n" + policy.describe(host.magics)))
        return
    entry = REGISTRY.get(ns.name.lstrip("%"))
    if entry is None:
        raise UnknownMagic(f"unknown magic %{ns.name.lstrip('%')}. Known magics: {known()}.")
    say(host, help_text(host, entry))


# -- documentation ---------------------------------------------------------------------------------------

MARKDOWN_INTRO = (
    "A cell's leading lines that start with `%` are magics; the rest of the cell is shell code that runs\n"
    "after them. `%help MAGIC`, `%MAGIC --help` and `%lsmagic` show the same text as this section, which\n"
    "`python -m lxc_kernel.magics --markdown` generates from the magics' docstrings.\n"
)


def markdown() -> str:
    """The README's magics section, from the same docstrings as ``%help``."""
    parts = [MARKDOWN_INTRO]
    for entry in REGISTRY.values():
        parts.append(f"### `%{entry.name}`\n\n```text\n{entry.doc}\n```\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxc_kernel.magics", description="Print the magics' help.")
    p.add_argument("--markdown", action="store_true", help="as the README's markdown section")
    ns = p.parse_args(argv)
    if ns.markdown:
        sys.stdout.write(markdown())
    else:
        sys.stdout.write("\n\n".join(m.doc for m in REGISTRY.values()) + "\n")
    return 0
