"""A cgroup subtree per normal user, so its own containers get limits and freeze: the root step and the launcher.

Without systemd there is no ``systemd-run --user`` to hand a user a cgroup, and without one a user's own
containers start (busybox, hostfs) but ``lxc-freeze`` and ``lxc-cgroup`` fail and configs with
``lxc.cgroup.*`` lines do not start (measured, LXC 5.0.2, hybrid cgroups). The fix, needed again after every
boot:

1. in every hierarchy (each v1 controller, ``name=systemd``, the cgroup2 ``unified``), ``mkdir``
   ``lxc-kernel/USER``; for cpuset, copy ``cpuset.cpus``/``cpuset.mems`` from the parent (an empty cpuset
   takes no tasks);
2. ``chown`` the subtree and its ``cgroup.procs``, ``tasks``, ``cgroup.clone_children`` (cgroup2:
   ``cgroup.procs``, ``cgroup.threads``, ``cgroup.subtree_control``) to the user;
3. the process that runs ``lxc-start``/``lxc-attach`` must itself be inside: otherwise the attached shell
   lands outside the container's cgroup, and limits and freeze do not reach it. In cgroup2 a move needs write
   access to the common ancestor, so only root can move a process in from outside: ``--run`` does that, then
   drops to the user and runs a command (Jupyter, or one kernel). In the v1 hierarchies the kernel moves itself
   in at start when it finds its subtree (:func:`enter`).

``python -m lxc_kernel.delegate USER`` does 1-2, ``... USER --run -- CMD...`` also 3, ``--remove`` undoes 1.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError

BASE = "lxc-kernel"
V1_FILES = ("cgroup.procs", "tasks", "cgroup.clone_children")
_NOT_CONTROLLERS = ("rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode", "nsdelegate")
V2_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where, and its key in /proc/PID/cgroup (``memory``, ``name=systemd``,
    ``""`` for cgroup2)."""

    mount: str
    key: str

    @property
    def v2(self) -> bool:
        return self.key == ""


def hierarchies(mountinfo: str | None = None) -> list[Hierarchy]:
    """The cgroup hierarchies mounted at their root, from /proc/self/mountinfo (proc(5))."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    out: list[Hierarchy] = []
    seen: set[str] = set()
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            key = ",".join(o for o in options if o.startswith("name=") or ("=" not in o and o not in _NOT_CONTROLLERS))
        else:
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(Hierarchy(fields[4], key))
    return out


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy key: path}."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, key, path = line.rstrip("\n").split(":", 2)
            out[key] = path
    return out


def subtree(h: Hierarchy, user: str) -> str:
    return os.path.join(h.mount, BASE, user)


def _user(name: str) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"no such user {name!r}") from None
    if entry.pw_uid == 0:
        raise ConfigError("root needs no delegation")
    return entry


def _copy_cpuset(parent: str, child: str) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        dest = os.path.join(child, name)
        with open(dest) as fh:
            if fh.read().strip():
                continue
        with open(os.path.join(parent, name)) as fh:
            value = fh.read().strip()
        with open(dest, "w") as fh:
            fh.write(value)


def delegate(name: str) -> list[str]:
    """Steps 1-2 for user ``name`` in every hierarchy (idempotent, as root); the subtrees."""
    if os.geteuid() != 0:
        raise ConfigError("delegating cgroups needs root")
    entry = _user(name)
    done = []
    for h in hierarchies():
        base = os.path.join(h.mount, BASE)
        path = subtree(h, name)
        for parent, child in ((h.mount, base), (base, path)):
            os.makedirs(child, mode=0o755, exist_ok=True)
            if "cpuset" in h.key.split(","):
                _copy_cpuset(parent, child)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for file in V2_FILES if h.v2 else V1_FILES:
            target = os.path.join(path, file)
            if os.path.exists(target):
                os.chown(target, entry.pw_uid, entry.pw_gid)
        done.append(path)
    return done


def remove(name: str) -> list[str]:
    """Remove the user's subtrees that are empty (their containers stopped, their kernels gone)."""
    left = []
    for h in hierarchies():
        path = subtree(h, name)
        if not os.path.isdir(path):
            continue
        # A subtree holds the cgroups LXC made for containers: remove the deepest first.
        for root, dirs, _ in sorted(os.walk(path), key=lambda e: -e[0].count("/")):
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    pass
        try:
            os.rmdir(path)
        except OSError:
            left.append(path)
    return left


def move(pid: int, name: str, only_v1: bool = False) -> list[str]:
    """Write ``pid`` into the user's subtree in each hierarchy; the hierarchies where that failed (and why)."""
    failed = []
    for h in hierarchies():
        if only_v1 and h.v2:
            continue
        try:
            with open(os.path.join(subtree(h, name), "cgroup.procs"), "w") as fh:
                fh.write(str(pid))
        except OSError as exc:
            failed.append(f"{h.key or 'unified'} ({exc.strerror})")
    return failed


def outside(name: str, pid: int | str = "self") -> list[str]:
    """The hierarchies where ``pid`` is not inside the user's subtree."""
    mine = own_cgroups(pid)
    prefix = f"/{BASE}/{name}"
    return [h.key or "unified" for h in hierarchies()
            if not (mine.get(h.key, "") + "/").startswith(prefix + "/")]


def enter() -> list[str]:
    """At a non-root kernel's start: move into the user's subtree where it can (v1 hierarchies); return the
    hierarchies it stays outside of ([] when all is well, or when no subtree was delegated at all)."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
        h = hierarchies()
    except (KeyError, OSError):
        return []
    if not h or not any(os.path.isdir(subtree(x, name)) for x in h):
        return []
    if outside(name):
        move(os.getpid(), name, only_v1=True)
    return outside(name)


def run_as(name: str, argv: Sequence[str]) -> None:
    """As root: delegate, move this process into the subtree, drop to the user, and exec ``argv`` with a
    fresh environment (the user's HOME, USER, LOGNAME, SHELL; PATH, and the caller's PYTHONPATH, TERM,
    LANG, JUPYTER_* kept)."""
    entry = _user(name)
    delegate(name)
    failed = move(os.getpid(), name)
    if failed:
        raise ConfigError(f"could not move into {name}'s cgroups: {', '.join(failed)}")
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "PYTHONPATH", "TERM", "LANG", "LC_ALL") or k.startswith("JUPYTER_")}
    env = {**keep, "HOME": entry.pw_dir, "USER": name, "LOGNAME": name, "SHELL": entry.pw_shell or "/bin/sh"}
    os.initgroups(name, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    os.chdir(entry.pw_dir if os.path.isdir(entry.pw_dir) else "/")
    os.execvpe(argv[0], list(argv), env)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m lxc_kernel.delegate", description=__doc__.splitlines()[0])
    p.add_argument("user")
    p.add_argument("--run", action="store_true", help="then run COMMAND as USER inside the subtree")
    p.add_argument("--remove", action="store_true", help="remove the user's empty subtrees")
    p.epilog = "with --run: -- COMMAND [ARG...] after the options"
    args = list(sys.argv[1:] if argv is None else argv)
    # argparse gives a trailing positional its empty list as soon as it sees USER: split COMMAND off first.
    command = args[args.index("--") + 1 :] if "--" in args else []
    ns = p.parse_args(args[: args.index("--")] if "--" in args else args)
    ns.command = command
    try:
        if ns.remove:
            left = remove(ns.user)
            print("removed" if not left else "still in use: " + ", ".join(left))
            return 0 if not left else 1
        if ns.run:
            if not ns.command:
                raise ConfigError("--run needs a command after --")
            run_as(ns.user, ns.command)
        for path in delegate(ns.user):
            print(f"delegated {path}")
        return 0
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
