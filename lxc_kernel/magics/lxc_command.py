"""``%lxc COMMAND``: one magic whose subcommands the topic modules register (lifecycle, snapshots, config)."""

from __future__ import annotations

import inspect

from .. import policy
from ..errors import ConfigError
from .core import LXC_SUBCOMMANDS, Host, MagicParser, UsageError, magic

LXC_INTRO = """\
%lxc COMMAND ...: the container's lifecycle, snapshots, clones, limits and config.

NAME defaults to this kernel's container. Every command waits for the state it asks for (with a
deadline) and reports it; a failing tool shows its own message. The backend (`lxc`, `incus`,
`lxd`: see *Backends*) carries each command out; one it lacks fails with "... not supported by
BACKEND" and changes nothing.
"""


def lxc_parser() -> MagicParser:
    """The ``%lxc`` parser, one subparser per registered subcommand, in registration order."""
    p = MagicParser(prog="%lxc")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=MagicParser)
    for name, entry in LXC_SUBCOMMANDS.items():
        entry.arguments(sub.add_parser(name, prog=f"%lxc {name}"))
    return p


def split_template_args(args: list[str]) -> tuple[list[str], list[str]]:
    """`-- TEMPLATE ARGS` is split off before argparse, which would take them for its own options."""
    if "--" in args:
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, []


def lxc_request(args: list[str]) -> policy.Request:
    """What a ``%lxc`` line asks for: the subcommand, a create's template and the config keys it writes. A
    line that does not parse gets what can be read of it; its usage error comes when it runs, if the policy
    lets it run at all."""
    from .lifecycle import create_config_entries

    head, template_args = split_template_args(args)
    sub = head[0] if head and not head[0].startswith("-") else None
    try:
        ns = lxc_parser().parse_args(head)
    except UsageError:
        return policy.Request("lxc", sub)
    if ns.cmd == "create":
        try:
            entries = tuple(create_config_entries(ns))
        except ConfigError:
            entries = ()
        return policy.Request("lxc", sub, template=ns.template or "busybox", template_args=bool(template_args),
                              config=entries)
    if ns.cmd == "config" and ns.action == "set":
        return policy.Request("lxc", sub, config=((ns.key, ns.value or ""),))
    return policy.Request("lxc", sub)


def lxc_doc() -> str:
    """The help of ``%lxc``: the introduction, then each subcommand's lines as its module registered them."""
    lines = [LXC_INTRO]
    for entry in LXC_SUBCOMMANDS.values():
        lines += ["  " + line if line.strip() else line for line in entry.usage.splitlines()]
    return "\n".join(lines)


@magic("lxc", request=lxc_request,
       subcommands=lambda: {name: entry.takes_container for name, entry in LXC_SUBCOMMANDS.items()})
def lxc_magic(host: Host, args: list[str]) -> None:
    # The docstring (the help) is made by lxc_doc() once every topic module has registered.
    args, template_args = split_template_args(args)
    try:
        ns = lxc_parser().parse_args(args)
    except UsageError as exc:
        # argparse reports extra arguments against the top parser; show the command's own lines of the help.
        lines = [line.strip() for line in inspect.cleandoc(lxc_magic.__doc__ or "").splitlines()
                 if args and f"%lxc {args[0]}" in line]
        raise UsageError(f"{exc}\n" + "\n".join(lines)) from None if lines else exc
    if template_args and ns.cmd != "create":
        raise UsageError("`--` (template arguments) only goes with %lxc create")
    ns.template_args = template_args
    LXC_SUBCOMMANDS[ns.cmd].run(host, ns)
