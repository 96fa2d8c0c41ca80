"""``%lxc`` snapshots and clones: snapshot (list, delete), restore, clone."""

from __future__ import annotations

import argparse
import time

from ..backends import NotSupported
from ..lxc import State
from .core import (
    Host,
    MagicFailed,
    MagicParser,
    UsageError,
    expect,
    is_attached,
    lxc_subcommand,
    require_state,
    say,
    target_name,
    timed,
)


def stopped_for(host: Host, name: str, allow_stop: bool, what: str) -> bool:
    """Make sure ``name`` is STOPPED for ``what``; True if it was running and should be started again."""
    backend = host.lifecycle
    state = require_state(host, name)
    if state is State.STOPPED:
        return False
    if not allow_stop:
        raise MagicFailed(f"{what} needs {name} STOPPED and it is {state.value} ({backend.name} refuses "
                          f"otherwise). Add --stop to stop it, {what}, and start it again.")
    if is_attached(host, name):
        if host.ephemeral:
            raise MagicFailed(f"{name} is ephemeral: stopping it would destroy it")
        host.close_session()
    if state in (State.FROZEN, State.FREEZING):
        backend.unfreeze(name)
    reached = backend.stop(name)
    if reached is not State.STOPPED:
        raise MagicFailed(f"could not stop {name}: it is {reached.value}")
    say(host, f"stopped {name} for the {what}")
    return True


def restart_after(host: Host, name: str) -> None:
    state, seconds = timed(lambda: host.lifecycle.start(name))
    note = " - the next cell attaches a fresh shell" if is_attached(host, name) else ""
    say(host, expect(name, state, State.RUNNING, seconds, "start") + note)


def _snapshot_args(s: MagicParser) -> None:
    s.add_argument("words", nargs="*", metavar="[list|delete SNAP] [NAME]")
    s.add_argument("-n", "--name")
    s.add_argument("--stop", action="store_true")
    s.add_argument("--comment")


@lxc_subcommand("snapshot", """
    %lxc snapshot [NAME] [--stop] [--comment TEXT]
                                       classic LXC snapshots only stopped containers: --stop
                                       stops it, snapshots, and starts it again (incus/lxd
                                       snapshot a running one; they keep no comment)
    %lxc snapshot list [NAME]
    %lxc snapshot delete SNAP [NAME]
""", arguments=_snapshot_args, topic="snapshots")
def lxc_snapshot(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    words = list(ns.words)
    action = words.pop(0) if words and words[0] in ("list", "delete") and not ns.name else None
    if action == "delete":
        if not words:
            raise UsageError("%lxc snapshot delete SNAP [NAME]: which snapshot?")
        snap = backend.validate_snapshot_name(words.pop(0))
    if len(words) > 1:
        raise UsageError(f"%lxc snapshot: unexpected {' '.join(words[1:])!r}")
    name = target_name(host, ns.name or (words[0] if words else None))
    if action == "list":
        require_state(host, name)
        snaps = backend.snapshots(name)
        if not snaps:
            say(host, f"{name} has no snapshots")
            return
        say(host, "\n".join(f"{s.name}  {s.time}" + (f"  {s.comment}" if s.comment else "") for s in snaps))
        return
    if action == "delete":
        require_state(host, name)
        backend.delete_snapshot(name, snap)
        say(host, f"deleted snapshot {snap} of {name}")
        return
    if ns.comment:
        backend.check_snapshot_comment()  # before anything is stopped
    was_running = stopped_for(host, name, ns.stop, "snapshot") if backend.snapshot_needs_stop else False
    if not backend.snapshot_needs_stop:
        require_state(host, name)
    t0 = time.monotonic()
    try:
        snap_name = backend.snapshot(name, comment=ns.comment)
    finally:
        if was_running:
            restart_after(host, name)
    say(host, f"snapshot {snap_name} of {name} taken ({time.monotonic() - t0:.2f} s)")


def _restore_args(r: MagicParser) -> None:
    r.add_argument("snap")
    r.add_argument("--as", dest="new")
    r.add_argument("-n", "--name")
    r.add_argument("--stop", action="store_true")


@lxc_subcommand("restore", """
    %lxc restore SNAP [-n NAME] [--as NEW] [--stop]
                                       in place (lxc needs it stopped: --stop), or as a new
                                       container
""", arguments=_restore_args, topic="snapshots")
def lxc_restore(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    snap = backend.validate_snapshot_name(ns.snap)
    t0 = time.monotonic()
    if ns.new:
        new = backend.validate_name(ns.new)
        require_state(host, name)
        if backend.exists(new):
            raise MagicFailed(f"container {new!r} already exists")
        backend.restore(name, snap, new)
        say(host, f"restored snapshot {snap} of {name} as new container {new} "
                  f"({time.monotonic() - t0:.2f} s; start it with `%lxc start {new}`)")
        return
    # Classic LXC restores only a stopped container; Incus/LXD restore a running one themselves.
    was_running = stopped_for(host, name, ns.stop, "restore") if backend.snapshot_needs_stop else False
    note = ""
    if not backend.snapshot_needs_stop:
        require_state(host, name)
        if is_attached(host, name):
            # The instance's files (and, running, its processes) are replaced under the shell.
            host.close_session()
            note = " - the next cell attaches a fresh shell"
    try:
        backend.restore(name, snap)
        say(host, f"restored {name} to snapshot {snap} ({time.monotonic() - t0:.2f} s){note}")
    finally:
        if was_running:
            restart_after(host, name)


def _clone_args(cl: MagicParser) -> None:
    cl.add_argument("src")
    cl.add_argument("new")
    cl.add_argument("--snapshot", action="store_true")
    cl.add_argument("--allow-running", action="store_true")


@lxc_subcommand("clone", """
    %lxc clone SRC NEW [--snapshot] [--allow-running]
                                       a full copy, or an overlay clone with --snapshot (lxc)
""", arguments=_clone_args, takes_container=True, topic="snapshots")
def lxc_clone(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    src = target_name(host, ns.src)
    new = backend.validate_name(ns.new)
    if ns.snapshot and not backend.overlay_clones:
        raise NotSupported("overlay clones (--snapshot)", backend.name,
                           "a copy on a copy-on-write storage pool (zfs, btrfs) shares its blocks already")
    state = require_state(host, src)
    if backend.exists(new):
        raise MagicFailed(f"container {new!r} already exists")
    if backend.copy_needs_stop and state is not State.STOPPED and not ns.allow_running:
        raise MagicFailed(f"{src} is {state.value}, and lxc-copy copies only stopped containers. Stop it "
                          "first, or add --allow-running (files being written may be copied half-way).")
    t0 = time.monotonic()
    backend.clone(src, new, overlay=ns.snapshot, allow_running=ns.allow_running)
    kind = "overlay clone" if ns.snapshot else "full copy"
    say(host, f"{kind} {new} of {src} created ({time.monotonic() - t0:.2f} s)")
