"""``%lxc`` lifecycle: list, info, status, create, start, stop, restart, freeze, unfreeze, destroy, use."""

from __future__ import annotations

import argparse
import time

from ..backends import NotSupported
from ..errors import LxcKernelError
from ..lxc import State
from ..transfer import format_cgroup_bytes
from .core import (
    Host,
    MagicFailed,
    MagicParser,
    UsageError,
    expect,
    is_attached,
    lxc_subcommand,
    option_rows,
    require_state,
    say,
    table,
    target_name,
    timed,
)

SECURITY_KEYS = {"apparmor": "lxc.apparmor.profile", "seccomp": "lxc.seccomp.profile", "selinux": "lxc.selinux.context"}


def _name_arg(p: MagicParser) -> None:
    p.add_argument("name", nargs="?")


def _stop_args(p: MagicParser) -> None:
    p.add_argument("name", nargs="?")
    p.add_argument("--kill", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)


@lxc_subcommand("list", """
    %lxc list                          every container: state, PID, memory, IPs (a table)
""", topic="lifecycle")
def lxc_list(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    rows = backend.list()
    text, page = table(rows, backend.list_columns, mark=host.container)
    if not rows:
        text, page = "no containers\n", "<p>no containers</p>"
    host.emit_display({"text/plain": text, "text/html": page})


@lxc_subcommand("info", """
    %lxc info [NAME]                   state, PID, CPU and memory use, IPs, limits in force,
                                       whether it is privileged (its id map), and this
                                       kernel's session (shell PID, attach options)
""", arguments=_name_arg, takes_container=True, topic="lifecycle")
def lxc_info(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    require_state(host, name)
    info = backend.info(name)
    rows: list[tuple[str, str]] = [("container", name), ("state", info.state.value)]
    if info.pid is not None:
        rows.append(("init PID", str(info.pid)))
    if info.cpu_ns is not None:
        rows.append(("CPU use", f"{info.cpu_ns / 1e9:.2f} s"))
    if info.memory_bytes is not None:
        rows.append(("memory use", format_cgroup_bytes(info.memory_bytes)))
    rows.append(("IPs", ", ".join(info.ips) or "none"))
    try:
        rows.append(("privileged", backend.privilege(name)))
    except LxcKernelError as exc:
        rows.append(("privileged", f"unknown ({exc})"))
    if info.state is State.RUNNING:
        try:
            rows += backend.limits(name)
        except LxcKernelError as exc:
            rows.append(("limits", f"unavailable: {exc}"))
    if is_attached(host, name):
        if host.ephemeral:
            rows.append(("ephemeral", f"throwaway copy of {host.ephemeral}, destroyed when the kernel stops"))
        session = host.shell_session
        if session is not None and session.alive and session.info is not None:
            via = getattr(session.transport, "name", "client")
            host_pid = session.shell_host_pid
            rows.append(("shell", f"{session.info.shell}, PID {session.info.pid} inside, "
                                  + (f"PID {host_pid} on the host" if host_pid else "not seen on the host")
                                  + f" ({via} PID {session.pid})"))
        else:
            rows.append(("shell", "not attached (the next cell attaches)"))
        rows += option_rows(host)
    width = max(len(k) for k, _ in rows)
    say(host, "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


@lxc_subcommand("status", """
    %lxc status [NAME]                 one line: the state (and init PID when running)
""", arguments=_name_arg, takes_container=True, topic="lifecycle")
def lxc_status(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    state = backend.state(name)
    pid = backend.init_pid(name) if state is State.RUNNING else None
    say(host, f"container {name}: {state.value}" + (f" (init PID {pid})" if pid else ""))


def create_config_entries(ns: argparse.Namespace, host: Host | None = None) -> list[tuple[str, str]]:
    """``--config KEY=VALUE`` and the security shorthands, checked (by the backend's key rules when a
    host is given; else by classic LXC's, for the policy, which reads lxc.* keys)."""
    from ..lxc import validate_config_key, validate_config_value

    check_key = host.lifecycle.validate_config_key if host is not None else validate_config_key
    entries = []
    for item in ns.config:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--config wants KEY=VALUE, got {item!r}")
        entries.append((check_key(key.strip()), validate_config_value(value.strip())))
    for short, key in SECURITY_KEYS.items():
        value = getattr(ns, short)
        if value is not None:
            entries.append((key, validate_config_value(value)))
    return entries


def _create_args(c: MagicParser) -> None:
    c.add_argument("name")
    c.add_argument("-t", "--template", default=None)
    c.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    for short, key in SECURITY_KEYS.items():
        c.add_argument(f"--{short}", metavar="PROFILE", help=key)
    c.add_argument("--start", action="store_true")
    c.add_argument("--privileged", action="store_true")


@lxc_subcommand("create", """
    %lxc create NAME [-t TEMPLATE|IMAGE] [--config KEY=VALUE ...] [--apparmor PROFILE]
                [--seccomp FILE] [--selinux CONTEXT] [--start] [--privileged] [-- TEMPLATE ARGS]
                                       Unprivileged (root inside is an unprivileged host uid)
                                       unless --privileged.
                                       lxc: TEMPLATE is busybox (default), hostfs, debian, or any
                                       lxc-create template (root's /etc/subuid range maps root).
                                       No network but loopback unless a --config lxc.net.0.*
                                       says otherwise (no lxcbr0 needed).
                                       --apparmor/--seccomp/--selinux are shorthand for
                                       --config lxc.apparmor.profile=... and friends.
                                       incus/lxd: -t IMAGE is a local image alias (required);
                                       --config takes instance keys (limits.memory=...)
""", arguments=_create_args, takes_container=True, topic="lifecycle")
def lxc_create(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    template_args = list(getattr(ns, "template_args", []) or [])
    if backend.create_kinds:
        source = ns.template or "busybox"
    else:
        if ns.template is None:
            raise UsageError(f"%lxc create on {backend.name}: which image? `%lxc create {name} -t ALIAS` "
                             f"(`{getattr(backend, 'client', backend.name)} image list` shows them)")
        source = ns.template
        shorthands = [f"--{short}" for short in SECURITY_KEYS if getattr(ns, short) is not None]
        if shorthands:
            raise NotSupported(f"%lxc create {' '.join(shorthands)}", backend.name,
                               "Incus/LXD confine instances themselves (security.* keys)")
    entries = create_config_entries(ns, host)
    if backend.exists(name):
        raise MagicFailed(f"container {name!r} already exists (`%lxc info {name}`)")
    t0 = time.monotonic()
    made = backend.create(name, source, config=entries, template_args=template_args, privileged=ns.privileged)
    shown = "".join(f"\n  {k} = {v}" for k, v in entries)
    what = "template" if backend.create_kinds else "image"
    say(host, f"created {name} from {what} {source} in {time.monotonic() - t0:.2f} s, {made.how}"
              + (f"; config:{shown}" if shown else ""))
    if made.privileged:
        from ..provision import PRIVILEGED_WARNING

        host.emit_text("warning: " + PRIVILEGED_WARNING.format(name=name) + "\n", "stderr")
    if ns.start:
        state, seconds = timed(lambda: backend.start(name))
        say(host, expect(name, state, State.RUNNING, seconds, "start"))


@lxc_subcommand("start", """
    %lxc start [NAME]
""", arguments=_name_arg, takes_container=True, topic="lifecycle")
def lxc_start(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    state = require_state(host, name)
    if state is State.RUNNING:
        say(host, f"container {name}: already RUNNING")
        return
    if state in (State.FROZEN, State.FREEZING):
        raise MagicFailed(f"container {name!r} is {state.value}: use `%lxc unfreeze {name}`")
    state, seconds = timed(lambda: backend.start(name))
    say(host, expect(name, state, State.RUNNING, seconds, "start"))


@lxc_subcommand("stop", """
    %lxc stop [NAME] [--kill] [--timeout S]   clean stop, SIGKILL after S s (default 30)
""", arguments=_stop_args, takes_container=True, topic="lifecycle")
def lxc_stop(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    state = require_state(host, name)
    if state is State.STOPPED:
        say(host, f"container {name}: already STOPPED")
        return
    if is_attached(host, name):
        host.close_session()
    if state in (State.FROZEN, State.FREEZING):
        backend.unfreeze(name)  # a frozen task cannot act on SIGTERM or die of SIGKILL until thawed
    state, seconds = timed(lambda: backend.stop(name, kill=ns.kill, timeout=ns.timeout))
    if state is State.MISSING:
        msg = f"container {name}: stopped and gone (it was ephemeral)"
    else:
        msg = expect(name, state, State.STOPPED, seconds, "stop")
    say(host, msg + (" - this kernel's shell ended with it" if is_attached(host, name) else ""))


@lxc_subcommand("restart", """
    %lxc restart [NAME] [--kill]
""", arguments=_stop_args, takes_container=True, topic="lifecycle")
def lxc_restart(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    require_state(host, name)
    if is_attached(host, name):
        if host.ephemeral:
            raise MagicFailed("this kernel's container is ephemeral: stopping it destroys it. "
                              "Restart the kernel instead.")
        host.close_session()
    state, seconds = timed(lambda: backend.restart(name, kill=ns.kill, timeout=ns.timeout))
    note = " - the next cell attaches a fresh shell" if is_attached(host, name) else ""
    say(host, expect(name, state, State.RUNNING, seconds, "restart") + note)


@lxc_subcommand("freeze", """
    %lxc freeze [NAME] / %lxc unfreeze [NAME]
""", arguments=_name_arg, takes_container=True, topic="lifecycle")
def lxc_freeze(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    require_state(host, name, State.RUNNING, State.FROZEN)
    state, seconds = timed(lambda: backend.freeze(name))
    note = "; cells fail until `%lxc unfreeze` (the shell is kept)" if is_attached(host, name) else ""
    say(host, expect(name, state, State.FROZEN, seconds, "freeze") + note)


@lxc_subcommand("unfreeze", "", arguments=_name_arg, takes_container=True, topic="lifecycle")
def lxc_unfreeze(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    require_state(host, name, State.FROZEN, State.FREEZING, State.RUNNING)
    state, seconds = timed(lambda: backend.unfreeze(name))
    say(host, expect(name, state, State.RUNNING, seconds, "unfreeze"))


def _destroy_args(d: MagicParser) -> None:
    d.add_argument("name")
    d.add_argument("--force", action="store_true")
    d.add_argument("--snapshots", action="store_true")
    d.add_argument("--clones", action="store_true")


@lxc_subcommand("destroy", """
    %lxc destroy NAME [--force] [--snapshots] [--clones]
                                       --force is needed for this kernel's own container;
                                       --snapshots / --clones destroy those with it
""", arguments=_destroy_args, takes_container=True, topic="lifecycle")
def lxc_destroy(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    require_state(host, name)
    if is_attached(host, name) and not ns.force:
        raise MagicFailed(f"{name} is this kernel's container: add --force to destroy it "
                          "(the shell and everything in the container go with it)")
    snaps = backend.snapshots(name)
    if snaps and not ns.snapshots:
        raise MagicFailed(f"{name} has {len(snaps)} snapshot(s) ({', '.join(s.name for s in snaps)}), and "
                          f"destroying it would take them too: add --snapshots to destroy them with it")
    clones = backend.clones(name)
    if clones and not ns.clones:
        raise MagicFailed(f"{name} has overlay clones that use its files ({', '.join(clones)}), and lxc-destroy "
                          "refuses it then: add --clones to destroy them first")
    for clone in clones:
        backend.destroy(backend.validate_name(clone), snapshots=True)
        say(host, f"destroyed clone {clone}")
    if is_attached(host, name):
        host.close_session()
    t0 = time.monotonic()
    backend.destroy(name, snapshots=ns.snapshots)
    say(host, f"destroyed {name} ({time.monotonic() - t0:.2f} s)")


@lxc_subcommand("use", """
    %lxc use [REMOTE:]NAME             move this notebook's shell to another container
                                       (REMOTE: on incus/lxd)
""", arguments=lambda p: p.add_argument("name"), takes_container=True, topic="lifecycle")
def lxc_use(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    state = backend.state(name)
    if state is State.MISSING:
        raise MagicFailed(f"container {name!r} does not exist (see `%lxc list`, or `%lxc create {name}`)")
    previous = host.container
    host.close_session()
    host.container = name
    note = "the next cell attaches there" if state is State.RUNNING else \
        f"it is {state.value}: `%lxc start {name}` before the next cell"
    say(host, f"this notebook's shell moved from {previous} to {name}; {note}")
