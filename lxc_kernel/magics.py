"""Line magics (``%lxc``, ``%attach``, ``%timeout``...): an explicit registry where each docstring is the help.

A cell's leading lines that start with ``%`` and a letter are magics; the rest of the cell is shell code
that runs after them (``%1`` stays shell job syntax). Each magic gets the kernel as a :class:`Host` and its
arguments as an argv (``shlex`` split, never passed to a shell). Parsers raise :class:`UsageError` with the
usage instead of exiting. The same docstrings are ``%help``, ``%MAGIC --help`` and the README's magics
section (``python -m lxc_kernel.magics --markdown`` prints it; a test checks the README has it).
"""

from __future__ import annotations

import argparse
import html
import inspect
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from . import policy, transfer
from .attach import AttachOptions
from .errors import ConfigError, LxcCommandError, LxcKernelError
from .lxc import (
    Container,
    State,
    Tools,
    cgroup_v2,
    list_containers,
    validate_config_key,
    validate_config_value,
    validate_name,
    validate_path,
)
from .options import ATTACH, OPTIONS, Kind, Option, on_off

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
    """The kernel as magics see it: its option traits, its session, and where output goes.

    The option traits are those of options.OPTIONS; ``%attach`` reads and sets them by name. Listed here
    are the ones other magics use directly.
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
    def tools(self) -> Tools: ...

    @property
    def shell_session(self) -> Any: ...

    def target(self) -> Container: ...

    def attach_options(self) -> AttachOptions: ...

    def ensure_session(self) -> Any: ...

    def close_session(self) -> None: ...

    def emit_text(self, text: str, stream: str = "stdout") -> None: ...

    def emit_display(self, data: dict[str, str]) -> None: ...


# -- the registry -------------------------------------------------------------------------------------

MagicFunc = Callable[[Host, list[str]], None]


@dataclass(frozen=True)
class Magic:
    name: str
    func: MagicFunc

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


REGISTRY: dict[str, Magic] = {}


def magic(name: str) -> Callable[[MagicFunc], MagicFunc]:
    def register(func: MagicFunc) -> MagicFunc:
        REGISTRY[name] = Magic(name, func)
        return func

    return register


def known() -> str:
    return ", ".join(f"%{name}" for name in REGISTRY)


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
        reason = policy.refusal(host.magics, _policy_request(name, args), KINDS)
        if reason is not None:
            raise policy.refused(host.magics, line.strip(), reason)
    entry = REGISTRY.get(name)
    if entry is None:
        raise UnknownMagic(f"unknown magic %{name}. Known magics: {known()}. `%help MAGIC` explains one.")
    return _Line(entry, args, _help_only(args))


def _help_only(args: Sequence[str]) -> bool:
    before_dashdash = args[: args.index("--")] if "--" in args else args
    return "--help" in before_dashdash or "-h" in before_dashdash


def _policy_request(name: str, args: list[str]) -> policy.Request:
    """What a line asks for, as the policy sees it: the %lxc subcommand, a create's template and the config
    keys a line would write. A line that does not parse gets what can be read of it; its usage error
    comes when it runs, if the policy lets it run at all."""
    if _help_only(args):
        return policy.Request(name, help_only=True)
    if name != "lxc":
        return policy.Request(name)
    head, template_args = _split_template_args(args)
    sub = head[0] if head and not head[0].startswith("-") else None
    try:
        ns = _lxc_parser().parse_args(head)
    except UsageError:
        return policy.Request(name, sub)
    if ns.cmd == "create":
        try:
            entries = tuple(_create_config_entries(ns))
        except ConfigError:
            entries = ()
        return policy.Request(name, sub, template=ns.template, template_args=bool(template_args), config=entries)
    if ns.cmd == "config" and ns.action == "set":
        return policy.Request(name, sub, config=((ns.key, ns.value or ""),))
    return policy.Request(name, sub)


def _run(host: Host, line: _Line) -> None:
    if line.help_only:
        host.emit_text(_help_text(host, line.entry) + "\n")
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


# -- helpers --------------------------------------------------------------------------------------------


def _say(host: Host, text: str) -> None:
    host.emit_text(text.rstrip("\n") + "\n")


def _container(host: Host, name: str | None) -> Container:
    """The named container, or the kernel's own; the name is validated before any lxc-* runs."""
    return Container(validate_name(name) if name else host.container, host.tools)


def _is_attached(host: Host, ct: Container) -> bool:
    return ct.name == host.container


def _timed(action: Callable[[], State]) -> tuple[State, float]:
    t0 = time.monotonic()
    state = action()
    return state, time.monotonic() - t0


def _expect(ct: Container, reached: State, wanted: State, seconds: float, what: str) -> str:
    if reached is not wanted:
        raise MagicFailed(f"{what} {ct.name}: it is {reached.value}, not {wanted.value}, after {seconds:.1f} s")
    return f"container {ct.name}: {reached.value} ({seconds:.2f} s)"


def _require_state(ct: Container, *allowed: State) -> State:
    state = ct.state()
    if state is State.MISSING:
        raise MagicFailed(f"container {ct.name!r} does not exist (see `%lxc list`)")
    if allowed and state not in allowed:
        raise MagicFailed(f"container {ct.name!r} is {state.value}; this needs it "
                          f"{' or '.join(s.value for s in allowed)}")
    return state


def _size(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    return -1


def _human_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    if value < 0 or value >= 2**62:
        return "unlimited"
    return transfer.format_size(value)


def _table(rows: list[dict[str, str]], columns: Sequence[str], mark: str | None = None) -> tuple[str, str]:
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


# -- %lxc ----------------------------------------------------------------------------------------------

SECURITY_KEYS = {"apparmor": "lxc.apparmor.profile", "seccomp": "lxc.seccomp.profile", "selinux": "lxc.selinux.context"}
KINDS = ("busybox", "hostfs", "debian")


def _lxc_parser() -> MagicParser:
    p = MagicParser(prog="%lxc")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=MagicParser)
    sub.add_parser("list", prog="%lxc list")
    for name in ("info", "status", "start", "freeze", "unfreeze"):
        sub.add_parser(name, prog=f"%lxc {name}").add_argument("name", nargs="?")
    for name in ("stop", "restart"):
        s = sub.add_parser(name, prog=f"%lxc {name}")
        s.add_argument("name", nargs="?")
        s.add_argument("--kill", action="store_true")
        s.add_argument("--timeout", type=float, default=30.0)
    c = sub.add_parser("create", prog="%lxc create")
    c.add_argument("name")
    c.add_argument("-t", "--template", default="busybox")
    c.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    for short, key in SECURITY_KEYS.items():
        c.add_argument(f"--{short}", metavar="PROFILE", help=key)
    c.add_argument("--start", action="store_true")
    c.add_argument("--privileged", action="store_true")
    d = sub.add_parser("destroy", prog="%lxc destroy")
    d.add_argument("name")
    d.add_argument("--force", action="store_true")
    d.add_argument("--snapshots", action="store_true")
    d.add_argument("--clones", action="store_true")
    s = sub.add_parser("snapshot", prog="%lxc snapshot")
    s.add_argument("words", nargs="*", metavar="[list|delete SNAP] [NAME]")
    s.add_argument("-n", "--name")
    s.add_argument("--stop", action="store_true")
    s.add_argument("--comment")
    r = sub.add_parser("restore", prog="%lxc restore")
    r.add_argument("snap")
    r.add_argument("--as", dest="new")
    r.add_argument("-n", "--name")
    r.add_argument("--stop", action="store_true")
    cl = sub.add_parser("clone", prog="%lxc clone")
    cl.add_argument("src")
    cl.add_argument("new")
    cl.add_argument("--snapshot", action="store_true")
    cl.add_argument("--allow-running", action="store_true")
    sub.add_parser("use", prog="%lxc use").add_argument("name")
    li = sub.add_parser("limit", prog="%lxc limit")
    li.add_argument("what", choices=["memory", "cpu", "cpuset", "show"])
    li.add_argument("value", nargs="?")
    li.add_argument("-n", "--name")
    li.add_argument("--persist", action="store_true")
    cf = sub.add_parser("config", prog="%lxc config")
    cf.add_argument("action", choices=["get", "set"])
    cf.add_argument("key")
    cf.add_argument("value", nargs="?")
    cf.add_argument("-n", "--name")
    lg = sub.add_parser("log", prog="%lxc log")
    lg.add_argument("name", nargs="?")
    lg.add_argument("--lines", type=int, default=40)
    lg.add_argument("--level", type=str.upper,
                    choices=["TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "ERROR", "CRIT", "ALERT", "FATAL"])
    return p


@magic("lxc")
def lxc_magic(host: Host, args: list[str]) -> None:
    """%lxc COMMAND ...: the container's lifecycle, snapshots, clones, limits and config.

    NAME defaults to this kernel's container. Every command waits for the state it asks for (with a
    deadline) and reports it; a failing lxc-* tool shows its own message.

      %lxc list                          every container: state, PID, memory, IPs (a table)
      %lxc info [NAME]                   state, PID, CPU and memory use, IPs, limits in force,
                                         whether it is privileged (its id map), and this
                                         kernel's session (shell PID, attach options)
      %lxc status [NAME]                 one line: the state (and init PID when running)
      %lxc create NAME [-t TEMPLATE] [--config KEY=VALUE ...] [--apparmor PROFILE]
                  [--seccomp FILE] [--selinux CONTEXT] [--start] [--privileged] [-- TEMPLATE ARGS]
                                         TEMPLATE: busybox (default), hostfs, debian, or any
                                         lxc-create template. No network but loopback unless a
                                         --config lxc.net.0.* says otherwise (no lxcbr0 needed).
                                         Unprivileged (root inside is an unprivileged host uid,
                                         from root's /etc/subuid range) unless --privileged.
                                         --apparmor/--seccomp/--selinux are shorthand for
                                         --config lxc.apparmor.profile=... and friends.
      %lxc start [NAME]
      %lxc stop [NAME] [--kill] [--timeout S]   clean stop, SIGKILL after S s (default 30)
      %lxc restart [NAME] [--kill]
      %lxc freeze [NAME] / %lxc unfreeze [NAME]
      %lxc destroy NAME [--force] [--snapshots] [--clones]
                                         --force is needed for this kernel's own container;
                                         --snapshots / --clones destroy those with it
      %lxc snapshot [NAME] [--stop] [--comment TEXT]
                                         LXC snapshots only stopped containers: --stop stops it,
                                         snapshots, and starts it again
      %lxc snapshot list [NAME]
      %lxc snapshot delete SNAP [NAME]
      %lxc restore SNAP [-n NAME] [--as NEW] [--stop]
                                         in place (needs it stopped: --stop), or as a new container
      %lxc clone SRC NEW [--snapshot] [--allow-running]
                                         a full copy, or an overlay clone with --snapshot
      %lxc use NAME                      move this notebook's shell to another container
      %lxc limit memory 512M|off  /  cpu 0.5|off  /  cpuset 0-1  /  show   [-n NAME] [--persist]
                                         live through cgroups; --persist also writes the config
      %lxc config get KEY [-n NAME]  /  %lxc config set KEY VALUE [-n NAME]
                                         set writes the config file: it applies at the next start
      %lxc log [NAME] [--lines N] [--level LEVEL]
                                         tail of the container's LXC log; --level sets
                                         lxc.log.level (and a log file) for the next start
    """
    args, template_args = _split_template_args(args)
    try:
        ns = _lxc_parser().parse_args(args)
    except UsageError as exc:
        # argparse reports extra arguments against the top parser; show the command's own lines of the help.
        lines = [line.strip() for line in inspect.cleandoc(lxc_magic.__doc__ or "").splitlines()
                 if args and f"%lxc {args[0]}" in line]
        raise UsageError(f"{exc}\n" + "\n".join(lines)) from None if lines else exc
    if ns.cmd == "create":
        _lxc_create(host, ns, template_args)
    elif template_args:
        raise UsageError("`--` (template arguments) only goes with %lxc create")
    else:
        _LXC_COMMANDS[ns.cmd](host, ns)


def _split_template_args(args: list[str]) -> tuple[list[str], list[str]]:
    """`-- TEMPLATE ARGS` is split off before argparse, which would take them for its own options."""
    if "--" in args:
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, []


def _lxc_list(host: Host, ns: argparse.Namespace) -> None:
    columns = ("NAME", "STATE", "PID", "RAM", "SWAP", "IPV4", "IPV6", "AUTOSTART", "GROUPS")
    rows = list_containers(host.tools, columns)
    text, table = _table(rows, columns, mark=host.container)
    if not rows:
        text, table = "no containers\n", "<p>no containers</p>"
    host.emit_display({"text/plain": text, "text/html": table})


def _limits(ct: Container) -> list[tuple[str, str]]:
    """The cgroup limits in force, readable (only for a running container)."""
    out = []
    try:
        if cgroup_v2():
            memory = ct.cgroup("memory.max")
            quota, _, period = ct.cgroup("cpu.max").partition(" ")
        else:
            memory = ct.cgroup("memory.limit_in_bytes")
            quota, period = ct.cgroup("cpu.cfs_quota_us"), ct.cgroup("cpu.cfs_period_us")
        out.append(("memory limit", _human_bytes(_size(memory)) if memory != "max" else "unlimited"))
        q, p = _size(quota), _size(period)
        out.append(("cpu quota", f"{q / p:.2f} CPU ({quota}/{period} us)" if q > 0 and p > 0 else "unlimited"))
        out.append(("cpuset", ct.cgroup("cpuset.cpus") or "?"))
    except LxcCommandError as exc:
        out.append(("limits", f"unavailable: {exc}"))
    return out


def _lxc_status(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    state = ct.state()
    pid = ct.init_pid() if state is State.RUNNING else None
    _say(host, f"container {ct.name}: {state.value}" + (f" (init PID {pid})" if pid else ""))


def _lxc_info(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    _require_state(ct)
    info = ct.info()
    rows: list[tuple[str, str]] = [("container", ct.name), ("state", info.state.value)]
    if info.pid is not None:
        rows.append(("init PID", str(info.pid)))
    if info.cpu_ns is not None:
        rows.append(("CPU use", f"{info.cpu_ns / 1e9:.2f} s"))
    if info.memory_bytes is not None:
        rows.append(("memory use", _human_bytes(info.memory_bytes)))
    rows.append(("IPs", ", ".join(info.ips) or "none"))
    rows.append(("privileged", _privilege(ct)))
    if info.state is State.RUNNING:
        rows += _limits(ct)
    if _is_attached(host, ct):
        if host.ephemeral:
            rows.append(("ephemeral", f"throwaway copy of {host.ephemeral}, destroyed when the kernel stops"))
        session = host.shell_session
        if session is not None and session.alive and session.info is not None:
            rows.append(("shell", f"{session.info.shell}, PID {session.info.pid} inside, "
                                  f"PID {session.shell_host_pid} on the host (lxc-attach PID {session.pid})"))
        else:
            rows.append(("shell", "not attached (the next cell attaches)"))
        rows += _option_rows(host)
    width = max(len(k) for k, _ in rows)
    _say(host, "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


def _privilege(ct: Container) -> str:
    from .idmap import parse_idmap

    try:
        idmap = parse_idmap(ct.idmap_values())
    except LxcCommandError as exc:
        return f"unknown ({exc})"
    return f"no: {idmap.describe()}" if idmap else "yes: no id map, root inside is root on the host"


def _create_config_entries(ns: argparse.Namespace) -> list[tuple[str, str]]:
    entries = []
    for item in ns.config:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--config wants KEY=VALUE, got {item!r}")
        entries.append((validate_config_key(key.strip()), validate_config_value(value.strip())))
    for short, key in SECURITY_KEYS.items():
        value = getattr(ns, short)
        if value is not None:
            entries.append((key, validate_config_value(value)))
    return entries


def _lxc_create(host: Host, ns: argparse.Namespace, template_args: Sequence[str] = ()) -> None:
    ct = _container(host, ns.name)
    entries = _create_config_entries(ns)
    if ns.template.startswith("/"):
        validate_path(ns.template, "template")
    else:
        validate_name(ns.template, "template name")
    if ct.exists():
        raise MagicFailed(f"container {ct.name!r} already exists (`%lxc info {ct.name}`)")
    host.tools.require_own("%lxc create")  # templates and their config run as root
    t0 = time.monotonic()
    # The provisioning module knows how to make each kind work here (PTYs, cgroups, no network);
    # imported lazily so that a missing optional module can't break the magics that don't need it.
    from . import provision

    config = "".join(f"{k} = {v}\n" for k, v in entries)
    if ns.template in KINDS and not template_args:
        provision.check_extra_config(config)
        idmap = provision.provision(ct.name, ns.template, start=False, tools=host.tools,
                                    privileged=ns.privileged).idmap
        for key, value in entries:
            ct.config_set(key, value)
    else:
        idmap = provision.create_from_template(ct, ns.template, config=config, template_args=template_args,
                                               privileged=ns.privileged)
    shown = "".join(f"\n  {k} = {v}" for k, v in entries)
    _say(host, f"created {ct.name} from template {ns.template} in {time.monotonic() - t0:.2f} s, "
               + (f"unprivileged ({idmap.describe()})" if idmap else "privileged")
               + (f"; config:{shown}" if shown else ""))
    if idmap is None:
        host.emit_text("warning: " + provision.PRIVILEGED_WARNING.format(name=ct.name) + "\n", "stderr")
    if ns.start:
        state, seconds = _timed(lambda: ct.start())
        _say(host, _expect(ct, state, State.RUNNING, seconds, "start"))


def _lxc_start(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    state = _require_state(ct)
    if state is State.RUNNING:
        _say(host, f"container {ct.name}: already RUNNING")
        return
    if state in (State.FROZEN, State.FREEZING):
        raise MagicFailed(f"container {ct.name!r} is {state.value}: use `%lxc unfreeze {ct.name}`")
    state, seconds = _timed(lambda: ct.start())
    _say(host, _expect(ct, state, State.RUNNING, seconds, "start"))


def _lxc_stop(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    state = _require_state(ct)
    if state is State.STOPPED:
        _say(host, f"container {ct.name}: already STOPPED")
        return
    if _is_attached(host, ct):
        host.close_session()
    if state in (State.FROZEN, State.FREEZING):
        ct.unfreeze()  # a frozen task cannot act on SIGTERM or die of SIGKILL until thawed
    state, seconds = _timed(lambda: ct.stop(kill=ns.kill, timeout=ns.timeout))
    msg = _expect(ct, state, State.STOPPED, seconds, "stop")
    if state is State.MISSING:
        msg = f"container {ct.name}: stopped and gone (it was ephemeral)"
    _say(host, msg + (" - this kernel's shell ended with it" if _is_attached(host, ct) else ""))


def _lxc_restart(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    _require_state(ct)
    if _is_attached(host, ct):
        if host.ephemeral:
            raise MagicFailed("this kernel's container is ephemeral: stopping it destroys it. "
                              "Restart the kernel instead.")
        host.close_session()
    state, seconds = _timed(lambda: ct.restart(kill=ns.kill, timeout=ns.timeout))
    note = " - the next cell attaches a fresh shell" if _is_attached(host, ct) else ""
    _say(host, _expect(ct, state, State.RUNNING, seconds, "restart") + note)


def _lxc_freeze(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    _require_state(ct, State.RUNNING, State.FROZEN)
    state, seconds = _timed(lambda: ct.freeze())
    note = "; cells fail until `%lxc unfreeze` (the shell is kept)" if _is_attached(host, ct) else ""
    _say(host, _expect(ct, state, State.FROZEN, seconds, "freeze") + note)


def _lxc_unfreeze(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    _require_state(ct, State.FROZEN, State.FREEZING, State.RUNNING)
    state, seconds = _timed(lambda: ct.unfreeze())
    _say(host, _expect(ct, state, State.RUNNING, seconds, "unfreeze"))


def _destroy(ct: Container, snapshots: bool) -> None:
    state = ct.state()
    if state in (State.FROZEN, State.FREEZING):
        ct.unfreeze()
    if state is not State.STOPPED:
        ct.stop(kill=True)
    if ct.state() is not State.MISSING:  # an ephemeral container is already gone once stopped
        ct.destroy(snapshots=snapshots)


def _lxc_destroy(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    _require_state(ct)
    if _is_attached(host, ct) and not ns.force:
        raise MagicFailed(f"{ct.name} is this kernel's container: add --force to destroy it "
                          "(the shell and everything in the container go with it)")
    snaps = ct.snapshots()
    if snaps and not ns.snapshots:
        raise MagicFailed(f"{ct.name} has {len(snaps)} snapshot(s) ({', '.join(s.name for s in snaps)}), and "
                          "lxc-destroy refuses it then: add --snapshots to destroy them with it")
    clones = ct.clones()
    if clones and not ns.clones:
        raise MagicFailed(f"{ct.name} has overlay clones that use its files ({', '.join(clones)}), and lxc-destroy "
                          "refuses it then: add --clones to destroy them first")
    for clone in clones:
        _destroy(Container(validate_name(clone), host.tools), snapshots=True)
        _say(host, f"destroyed clone {clone}")
    if _is_attached(host, ct):
        host.close_session()
    t0 = time.monotonic()
    _destroy(ct, snapshots=ns.snapshots)
    _say(host, f"destroyed {ct.name} ({time.monotonic() - t0:.2f} s)")


def _stopped_for(host: Host, ct: Container, allow_stop: bool, what: str) -> bool:
    """Make sure ``ct`` is STOPPED for ``what``; True if it was running and should be started again."""
    state = _require_state(ct)
    if state is State.STOPPED:
        return False
    if not allow_stop:
        raise MagicFailed(f"{what} needs {ct.name} STOPPED and it is {state.value} (LXC refuses otherwise). "
                          f"Add --stop to stop it, {what}, and start it again.")
    if _is_attached(host, ct):
        if host.ephemeral:
            raise MagicFailed(f"{ct.name} is ephemeral: stopping it would destroy it")
        host.close_session()
    if state in (State.FROZEN, State.FREEZING):
        ct.unfreeze()
    reached = ct.stop()
    if reached is not State.STOPPED:
        raise MagicFailed(f"could not stop {ct.name}: it is {reached.value}")
    _say(host, f"stopped {ct.name} for the {what}")
    return True


def _restart_after(host: Host, ct: Container) -> None:
    state, seconds = _timed(lambda: ct.start())
    note = " - the next cell attaches a fresh shell" if _is_attached(host, ct) else ""
    _say(host, _expect(ct, state, State.RUNNING, seconds, "start") + note)


def _lxc_snapshot(host: Host, ns: argparse.Namespace) -> None:
    words = list(ns.words)
    action = words.pop(0) if words and words[0] in ("list", "delete") and not ns.name else None
    if action == "delete":
        if not words:
            raise UsageError("%lxc snapshot delete SNAP [NAME]: which snapshot?")
        snap = words.pop(0)
    if len(words) > 1:
        raise UsageError(f"%lxc snapshot: unexpected {' '.join(words[1:])!r}")
    ct = _container(host, ns.name or (words[0] if words else None))
    if action == "list":
        _require_state(ct)
        snaps = ct.snapshots()
        if not snaps:
            _say(host, f"{ct.name} has no snapshots")
            return
        _say(host, "\n".join(f"{s.name}  {s.time}" + (f"  {s.comment}" if s.comment else "") for s in snaps))
        return
    if action == "delete":
        _require_state(ct)
        ct.delete_snapshot(snap)
        _say(host, f"deleted snapshot {snap} of {ct.name}")
        return
    was_running = _stopped_for(host, ct, ns.stop, "snapshot")
    t0 = time.monotonic()
    try:
        name = ct.snapshot(comment=ns.comment)
    finally:
        if was_running:
            _restart_after(host, ct)
    _say(host, f"snapshot {name} of {ct.name} taken ({time.monotonic() - t0:.2f} s)")


def _lxc_restore(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    validate_name(ns.snap, "snapshot name")
    t0 = time.monotonic()
    if ns.new:
        validate_name(ns.new)
        _require_state(ct)
        if Container(ns.new, host.tools).exists():
            raise MagicFailed(f"container {ns.new!r} already exists")
        ct.restore(ns.snap, ns.new)
        _say(host, f"restored snapshot {ns.snap} of {ct.name} as new container {ns.new} "
                   f"({time.monotonic() - t0:.2f} s; start it with `%lxc start {ns.new}`)")
        return
    was_running = _stopped_for(host, ct, ns.stop, "restore")
    try:
        ct.restore(ns.snap)
        _say(host, f"restored {ct.name} to snapshot {ns.snap} ({time.monotonic() - t0:.2f} s)")
    finally:
        if was_running:
            _restart_after(host, ct)


def _lxc_clone(host: Host, ns: argparse.Namespace) -> None:
    src = _container(host, ns.src)
    validate_name(ns.new)
    state = _require_state(src)
    if Container(ns.new, host.tools).exists():
        raise MagicFailed(f"container {ns.new!r} already exists")
    if state is not State.STOPPED and not ns.allow_running:
        raise MagicFailed(f"{src.name} is {state.value}, and lxc-copy copies only stopped containers. Stop it "
                          "first, or add --allow-running (files being written may be copied half-way).")
    t0 = time.monotonic()
    src.copy(ns.new, overlay=ns.snapshot, allow_running=ns.allow_running)
    kind = "overlay clone" if ns.snapshot else "full copy"
    _say(host, f"{kind} {ns.new} of {src.name} created ({time.monotonic() - t0:.2f} s)")


def _lxc_use(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    state = ct.state()
    if state is State.MISSING:
        raise MagicFailed(f"container {ct.name!r} does not exist (see `%lxc list`, or `%lxc create {ct.name}`)")
    previous = host.container
    host.close_session()
    host.container = ct.name
    note = "the next cell attaches there" if state is State.RUNNING else \
        f"it is {state.value}: `%lxc start {ct.name}` before the next cell"
    _say(host, f"this notebook's shell moved from {previous} to {ct.name}; {note}")


_MEMORY_RE = re.compile(r"[0-9]+[KMGkmg]?")
_CPUSET_RE = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def _limit_setting(ct: Container, what: str, value: str, live: bool) -> tuple[str, str]:
    """The cgroup key and value for ``%lxc limit WHAT VALUE`` on this host's cgroup version.

    A CPU share becomes a quota per scheduling period: the container's period when it runs, else the
    kernel's default of 100 ms.
    """
    v2 = cgroup_v2()
    off = value.lower() in ("off", "max", "none", "-1")
    if what == "memory":
        if not off and not _MEMORY_RE.fullmatch(value):
            raise UsageError(f"%lxc limit memory: {value!r} is not a size like 512M, 2G or 'off'")
        return ("memory.max", "max" if off else value.upper()) if v2 else \
               ("memory.limit_in_bytes", "-1" if off else value.upper())
    if what == "cpu":
        if not off:
            try:
                cpus = float(value)
            except ValueError:
                cpus = -1.0
            if not 0 < cpus <= 1024:
                raise UsageError(f"%lxc limit cpu: {value!r} is not a number of CPUs like 0.5 or 2, or 'off'")
        if v2:
            period = int(ct.cgroup("cpu.max").split()[-1]) if live else 100000
            return "cpu.max", f"max {period}" if off else f"{round(cpus * period)} {period}"
        period = int(ct.cgroup("cpu.cfs_period_us")) if live else 100000
        return "cpu.cfs_quota_us", "-1" if off else str(round(cpus * period))
    if not _CPUSET_RE.fullmatch(value):
        raise UsageError(f"%lxc limit cpuset: {value!r} is not a CPU list like 0 or 0-1 or 0,2")
    return "cpuset.cpus", value


def _lxc_limit(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    if ns.what == "show":
        _require_state(ct, State.RUNNING)
        _say(host, "\n".join(f"{k}: {v}" for k, v in _limits(ct)))
        return
    if ns.value is None:
        raise UsageError(f"%lxc limit {ns.what}: which value?")
    _limit_setting(ct, ns.what, ns.value, live=False)  # refuse a bad value before any lxc-* runs
    state = _require_state(ct)
    key, value = _limit_setting(ct, ns.what, ns.value, live=state is State.RUNNING)
    done = []
    if state is State.RUNNING:
        ct.cgroup(key, value)
        done.append(f"{key} = {ct.cgroup(key)} (live)")
    elif not ns.persist:
        raise MagicFailed(f"{ct.name} is {state.value}: a live limit needs it RUNNING; add --persist to "
                          "write it to the config for the next start")
    if ns.persist:
        config_key = ("lxc.cgroup2." if cgroup_v2() else "lxc.cgroup.") + key
        ct.config_set(config_key, value)
        done.append(f"{config_key} = {value} (config, from the next start)")
    _say(host, f"{ct.name}: " + "; ".join(done))


def _lxc_config(host: Host, ns: argparse.Namespace) -> None:
    ct = _container(host, ns.name)
    validate_config_key(ns.key)
    state = _require_state(ct)
    if ns.action == "get":
        if ns.value is not None:
            raise UsageError("%lxc config get KEY: no value expected")
        _say(host, f"{ns.key} = {ct.config_get(ns.key)}")
        return
    if ns.value is None:
        raise UsageError("%lxc config set KEY VALUE: which value?")
    ct.config_set(ns.key, validate_config_value(ns.value))
    note = "; it applies at the next start (`%lxc restart`)" if state is not State.STOPPED else ""
    _say(host, f"{ct.name}: {ns.key} = {ns.value} written to {ct.config_path()}{note}")


def _lxc_log(host: Host, ns: argparse.Namespace) -> None:
    if ns.lines < 1:
        raise UsageError("%lxc log --lines N: N must be at least 1")
    ct = _container(host, ns.name)
    _require_state(ct)
    path = ct.log_file()
    if ns.level:
        ct.config_set("lxc.log.level", ns.level)
        ct.config_set("lxc.log.file", path)
        _say(host, f"{ct.name}: lxc.log.level = {ns.level}, lxc.log.file = {path} (from the next start)")
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            tail = fh.read().decode("utf-8", "replace").splitlines()[-ns.lines:]
    except FileNotFoundError:
        _say(host, f"no log yet at {path}" + ("" if ns.level else
                                             f"; `%lxc log {ct.name} --level INFO` turns one on"))
        return
    except PermissionError:
        raise MagicFailed(f"{path} is not readable by this kernel's user: the containers' logs need host "
                          "root (the kernel runs as a normal user)") from None
    _say(host, f"==> {path} (last {len(tail)} lines) <==\n" + "\n".join(tail))


_LXC_COMMANDS: dict[str, Callable[[Host, argparse.Namespace], None]] = {
    "list": _lxc_list,
    "info": _lxc_info,
    "status": _lxc_status,
    "create": _lxc_create,
    "start": _lxc_start,
    "stop": _lxc_stop,
    "restart": _lxc_restart,
    "freeze": _lxc_freeze,
    "unfreeze": _lxc_unfreeze,
    "destroy": _lxc_destroy,
    "snapshot": _lxc_snapshot,
    "restore": _lxc_restore,
    "clone": _lxc_clone,
    "use": _lxc_use,
    "limit": _lxc_limit,
    "config": _lxc_config,
    "log": _lxc_log,
}


# -- %attach -------------------------------------------------------------------------------------------
# Every %attach subcommand, its parsing and its `show` row come from the option table (options.py).

# What a new shell is built from: every %attach option, and the two other magics change (%stderr
# re-attaches; colors is read when the session is built). A failed re-attach puts these back.
_ATTACH_TRAITS = (*(option.name for option in ATTACH.values()), "stderr", "colors")


def _option_rows(host: Host) -> list[tuple[str, str]]:
    return [(option.word, option.render(getattr(host, option.name))) for option in OPTIONS if option.shown]


def _on_off(value: str, what: str) -> bool:
    try:
        return on_off(value)
    except ConfigError as exc:
        raise UsageError(f"{what}: {exc}") from None


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


@magic("attach")
def attach_magic(host: Host, args: list[str]) -> None:
    """%attach OPTION ...: how the shell is attached (lxc-attach options). Any change re-attaches.

    The shell is closed and a new one attached with the new options; the output says so. Variables,
    functions and the working directory of the old shell are gone. A change that fails to attach is
    rolled back. Each option has a kernelspec counterpart (`python -m lxc_kernel.install --help`).
    """
    ns = _attach_parser().parse_args(args)
    if ns.cmd == "show":
        rows = _option_rows(host)
        width = max(len(k) for k, _ in rows)
        _say(host, "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
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
        ct = host.target()
        if ct.state() is not State.RUNNING:
            options = host.attach_options() if not host.user else None
            for warning in options.warnings if options else ():
                host.emit_text(f"warning: {warning}\n", "stderr")
            _say(host, f"{changed}: set. {ct.name} is not running, so the shell attaches with it once it is.")
            return
        session = host.ensure_session()
    except (LxcKernelError, OSError) as exc:
        for name, value in previous.items():
            setattr(host, name, value)
        host.close_session()
        raise MagicFailed(f"{changed}: could not attach ({exc}); the options were left as they were") from exc
    pid = session.info.pid if session.info is not None else "?"
    _say(host, f"{changed}: re-attached - a new shell (PID {pid} inside {host.container}); "
               "the old shell's variables and working directory are gone")


# -- everything else --------------------------------------------------------------------------------------


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
        _say(host, f"timeout: {host.cell_timeout:g} s" if host.cell_timeout else "timeout: off")
        return
    if ns.seconds.lower() in ("off", "none", "0"):
        host.cell_timeout = 0.0
        _say(host, "timeout: off")
        return
    try:
        seconds = float(ns.seconds)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**7:
        raise UsageError(f"%timeout: {ns.seconds!r} is not a number of seconds or 'off'\n{p.format_usage().strip()}")
    host.cell_timeout = seconds
    _say(host, f"timeout: {seconds:g} s per cell")


@magic("reset")
def reset_magic(host: Host, args: list[str]) -> None:
    """%reset: a fresh shell in the same container (variables, functions and cwd start over)."""
    MagicParser(prog="%reset").parse_args(args)
    host.close_session()
    if host.target().state() is State.RUNNING:
        session = host.ensure_session()
        pid = session.info.pid if session.info is not None else "?"
        _say(host, f"reset: a fresh shell (PID {pid}) in {host.container}")
    else:
        _say(host, "reset: the shell is closed; the next cell attaches a fresh one")


def _launcher(host: Host) -> transfer.Launcher:
    """Transfers attach like the shell does (same user, namespaces, lxcpath), over pipes instead of a PTY."""
    options = host.attach_options()
    _require_state(host.target(), State.RUNNING)
    return options.argv


def _container_path(host: Host, path: str) -> str:
    """A relative container path is relative to the shell's working directory (or the start one)."""
    if path.startswith("/"):
        return path
    session = host.shell_session
    base = ""
    if session is not None and session.alive:
        out: list[str] = []
        result = session.run("pwd", lambda stream, text: out.append(text) if stream == "stdout" else None,
                             timeout=10)
        if result.status == 0:
            base = "".join(out).strip()
    if not base.startswith("/"):
        base = host.cwd or host.attach_options().home
    return os.path.join(base, path)


def _max_size(p: MagicParser, text: str | None) -> int:
    """``--max SIZE`` of %push and %pull: a positive size, 1 GiB when not given."""
    from .budget import parse_size

    if text is None:
        return transfer.DEFAULT_MAX
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{p.prog} --max: {exc}\n{p.format_usage().strip()}") from None
    if size <= 0:
        # A transfer always has a cap, however large: a pull's file is the container's to choose.
        raise UsageError(f"{p.prog} --max: give a size such as 500k or 20G, not {text!r}")
    return size


@magic("push")
def push_magic(host: Host, args: list[str]) -> None:
    """%push [--max SIZE] HOST_PATH CONTAINER_PATH: copy a file from the kernel's host into the container.

    Byte-exact for any file (binary, any size), through the attach channel, so it works for every
    storage backend including overlay clones; the file is written as the attached user. HOST_PATH must
    be a regular file beneath the transfer root (by default the kernel's working directory, which is
    the notebook's folder; relative paths start there): an absolute path elsewhere, `..` or a symlink
    that leads out of it is refused. At most SIZE bytes are sent (default 1 GiB, as for %pull).
    A relative CONTAINER_PATH is relative to the shell's working directory. CONTAINER_PATH must be a
    regular file or not exist yet. Reports the size and rate; the size is checked on arrival.
    """
    p = MagicParser(prog="%push")
    p.add_argument("--max", metavar="SIZE")
    p.add_argument("host_path")
    p.add_argument("container_path")
    ns = p.parse_args(args)
    max_bytes = _max_size(p, ns.max)
    # The host side is opened (and refused) first, before the container is asked anything.
    with transfer.HostRoot(host.transfer_root).source(ns.host_path, max_bytes) as source:
        dest = _container_path(host, ns.container_path)
        done = transfer.push(_launcher(host), source, dest)
    _say(host, done.describe("pushed"))


@magic("pull")
def pull_magic(host: Host, args: list[str]) -> None:
    """%pull [--max SIZE] CONTAINER_PATH HOST_PATH: copy a file from the container to the kernel's host.

    Byte-exact, through the attach channel (any storage backend), read as the attached user. Only a
    regular file is pulled: a device, FIFO or directory is refused ("not a regular file"). At most
    SIZE bytes are written (default 1 GiB; 500k, 20M, 5G as in %output): a larger file is refused, not
    cut. A failed pull leaves no partial file. HOST_PATH stays beneath the transfer root as for %push;
    a directory there takes the file under its container name, and an existing file or symlink is
    replaced, never written through. CONTAINER_PATH is resolved as for %push. Reports the size and rate.
    """
    p = MagicParser(prog="%pull")
    p.add_argument("--max", metavar="SIZE")
    p.add_argument("container_path")
    p.add_argument("host_path")
    ns = p.parse_args(args)
    max_bytes = _max_size(p, ns.max)
    name = os.path.basename(ns.container_path.rstrip("/"))
    with transfer.HostRoot(host.transfer_root).target(ns.host_path, name) as target:
        src = _container_path(host, ns.container_path)
        done = transfer.pull(_launcher(host), src, target, max_bytes=max_bytes)
    _say(host, done.describe("pulled"))


@magic("colors")
def colors_magic(host: Host, args: list[str]) -> None:
    """%colors on|off: keep colour (SGR) codes in the output for the frontend to render, or strip them.

    Applies from the next cell, without re-attaching. Kernelspec: --colors.
    """
    p = MagicParser(prog="%colors")
    p.add_argument("value", metavar="on|off")
    host.colors = _on_off(p.parse_args(args).value, "%colors")
    session = host.shell_session
    if session is not None:
        session.keep_colors = host.colors  # read per cell by the session: no re-attach needed
    _say(host, f"colors: {'on' if host.colors else 'off'}")


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
        _say(host, f"stderr: already {mode}")
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
    from .budget import human, parse_size

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
    _say(host, f"output budget: {human(limit)} per cell" if limit else "output budget: off")


def _allowed_note(host: Host, entry: Magic) -> str:
    """How much of ``entry`` the kernel's magics policy allows, for %lsmagic and %help; empty if all of it."""
    if host.magics == "all":
        return ""
    if policy.allows(host.magics, entry.name):
        return ""
    if entry.name == "lxc" and host.magics == "safe":
        return f"only %lxc {', '.join(policy.SAFE_LXC)} here (magics policy safe)"
    return f"refused here (magics policy {host.magics})"


def _help_text(host: Host, entry: Magic) -> str:
    note = _allowed_note(host, entry)
    return entry.doc + (f"\n\nIn this kernel: {note}. {policy.describe(host.magics)}" if note else "")


@magic("lsmagic")
def lsmagic_magic(host: Host, args: list[str]) -> None:
    """%lsmagic: list the magics, each with its one-line summary, and which ones this kernel allows."""
    MagicParser(prog="%lsmagic").parse_args(args)
    lines = []
    for entry in REGISTRY.values():
        note = _allowed_note(host, entry)
        lines.append(entry.summary + (f"  [{note}]" if note else ""))
    _say(host, "\n".join(lines)
         + "\n\nA cell's leading %lines are magics; the rest of the cell runs in the shell after them."
         "\n`%help MAGIC` or `%MAGIC --help` explains one.\n" + policy.describe(host.magics))


@magic("help")
def help_magic(host: Host, args: list[str]) -> None:
    """%help [MAGIC]: the help of one magic, or of all of them, and which ones this kernel allows."""
    p = MagicParser(prog="%help")
    p.add_argument("name", nargs="?", metavar="MAGIC")
    ns = p.parse_args(args)
    if ns.name is None:
        _say(host, "\n\n".join(_help_text(host, m) for m in REGISTRY.values())
             + ("" if host.magics == "all" else "\n\n" + policy.describe(host.magics)))
        return
    entry = REGISTRY.get(ns.name.lstrip("%"))
    if entry is None:
        raise UnknownMagic(f"unknown magic %{ns.name.lstrip('%')}. Known magics: {known()}.")
    _say(host, _help_text(host, entry))


# -- %on and %%on: many containers from one notebook (fanout.py) -----------------------------------------
# Imported here, beside the only code that uses them.
import fnmatch  # noqa: E402

from .fanout import OnRequest  # noqa: E402

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
    from .users import parse_spec

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
        reason = policy.refusal(host.magics, _policy_request("on", list(args)), KINDS)
        if reason is not None:
            raise policy.refused(host.magics, "%on " + shlex.join(args), reason)


def _on_parser() -> MagicParser:
    """``%on status|close``; completion reads its subcommands (a container name fits after ``close``)."""
    p = MagicParser(prog="%on")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="status|close", parser_class=MagicParser)
    sub.add_parser("status", prog="%on status")
    sub.add_parser("close", prog="%on close").add_argument("name", nargs="*", metavar="TARGET")
    return p


@magic("on")
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
            _say(host, f"no %%on session is open (at most {cap})")
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
        text, page = _table(rows, ("NAME", "USER", "STATE", "SHELL PID", "HOST PIDS", "CELLS", "LAST", "OPEN FOR"))
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
    _say(host, f"closed {len(closed)} %%on session{'s' if len(closed) != 1 else ''}: {', '.join(closed)}"
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


if __name__ == "__main__":
    raise SystemExit(main())
