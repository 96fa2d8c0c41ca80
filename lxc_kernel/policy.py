"""The magics policy (``all``, ``safe``, ``none``): pure rules for which magic lines a kernel runs.

A notebook's cells are typed by whoever runs them. Magics run in the kernel, on the host, with the
kernel's privileges: in a root kernel ``%lxc config set ... lxc.hook.pre-start`` or ``%attach user root``
are host root for the author of a cell. The policy, part of the kernel's configuration (the kernelspec),
never of the notebook, says which of them a cell may use. Nothing here runs anything: magics.py asks
:func:`refusal` about each line before any line of the cell runs.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError

POLICIES = ("all", "safe", "none")
DEFAULT = "all"

# What touches neither the kernel's host nor the attached identity: this kernel's own per-cell settings,
# a fresh shell of the same user in the same container, help, and looks at containers that change nothing.
SAFE_MAGICS = ("timeout", "output", "colors", "stderr", "reset", "help", "lsmagic")
SAFE_LXC = ("status", "info", "list")

# lxc-create finds `-t NAME` as lxc-NAME here (LXCTEMPLATEDIR of Debian's and upstream's builds).
TEMPLATE_DIR = "/usr/share/lxc/templates"

# Config keys that run host code, expose host paths or devices, or loosen how the host confines the
# container: each is host root for whoever writes it, so they need `all` in `%lxc config set` and
# `%lxc create --config`. Patterns are fnmatch, over the lower-cased key.
HOST_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("lxc.hook", "lxc.hook.*", "lxc.net.*.script.*"), "runs a host program as root"),
    (("lxc.mount", "lxc.mount.*"), "mounts host paths (or /proc and /sys read-write) into the container"),
    (("lxc.rootfs.*",), "chooses the host directory that becomes the container's /"),
    (("lxc.include",), "reads another host file as configuration"),
    (("lxc.log.file", "lxc.console.logfile", "lxc.console.buffer.logfile"),
     "makes LXC, as root, write to a host file of the cell's choosing"),
    (("lxc.console.path",), "hands a host terminal device to the container"),
    (("lxc.cap.*",), "gives container root host capabilities (loading kernel modules, raw I/O)"),
    (("lxc.cgroup.devices.*", "lxc.cgroup2.devices.*"), "opens host devices (disks) to the container"),
    (("lxc.cgroup.dir", "lxc.cgroup.dir.*", "lxc.cgroup.relative"), "moves the container into another host cgroup"),
    (("lxc.apparmor.*", "lxc.seccomp.*", "lxc.selinux.*"),
     "changes how the host confines the container (lxc.seccomp.profile also names a host file)"),
    (("lxc.idmap",), "decides which host users the container's users are"),
    (("lxc.namespace.*",), "shares or keeps the host's namespaces"),
    (("lxc.sysctl.*",), "sets kernel parameters, some of them host-wide (kernel.core_pattern runs a host program)"),
)
# lxc.environment is not among them: it sets variables of the container's init only, and its
# `NAME`-without-value form passes on lxc-start's variable, which the kernel starts with only PATH
# and LC_ALL (spawn.TOOL_ENV). lxc.net.N.type=phys, which moves a host interface, is a value rule below.


class MagicRefused(ConfigError):
    """A magic line the kernel's magics policy does not allow. Raised before any line of the cell ran."""


@dataclass(frozen=True)
class Request:
    """What one magic line asks for, as far as the policy cares (magics.py reads it from the argv)."""

    magic: str
    sub: str | None = None  # the %lxc subcommand
    help_only: bool = False  # `%MAGIC --help`: shows the docstring, like %help
    template: str | None = None  # %lxc create -t
    template_args: bool = False  # %lxc create ... -- ARGS
    config: tuple[tuple[str, str], ...] = ()  # keys and values written to a container's config


def allows(policy: str, magic: str, sub: str | None = None) -> bool:
    """Whether ``policy`` lets ``%magic [sub]`` run at all (before the rules about its arguments)."""
    if policy == "all":
        return True
    if policy != "safe":
        return False
    if magic == "lxc":
        return sub in SAFE_LXC
    return magic in SAFE_MAGICS


def host_key(key: str, value: str = "") -> str | None:
    """Why writing config ``key`` (= ``value``) is host root, or None for a key that stays in the container."""
    key = key.strip().lower()
    for patterns, reason in HOST_KEYS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return reason
    if fnmatch.fnmatchcase(key, "lxc.net.*.type") and value.strip().lower() == "phys":
        return "moves a host network interface into the container"
    return None


def listed_template(template: str, kinds: Sequence[str], template_dir: str = TEMPLATE_DIR) -> bool:
    """A template named from LXC's template directory (``lxc-NAME`` there), or one of the project's kinds."""
    if template in kinds:
        return True
    if "/" in template or template in ("", ".", ".."):
        return False
    return os.path.isfile(os.path.join(template_dir, f"lxc-{template}"))


def refusal(policy: str, request: Request, kinds: Sequence[str] = ()) -> str | None:
    """Why ``policy`` refuses ``request``, in a sentence; None if it may run."""
    if policy not in POLICIES:
        # A configured value the option's validator refused is kept as given (options.traits): fail closed.
        return f"`{policy}` is not a magics policy (all, safe or none), so every magic is refused"
    if policy == "all":
        return None
    if policy == "none":
        return "magics are turned off in this kernel"
    if request.help_only:
        return None  # the same text as `%help MAGIC`, which safe allows
    # The rules about arguments come first: where they apply they are the more precise reason.
    if request.template is not None and not listed_template(request.template, kinds):
        return (f"a template runs as root on the host, and without `all` only templates from {TEMPLATE_DIR} "
                f"(lxc-NAME, given as NAME) or the kinds {', '.join(kinds)} are taken, not {request.template!r}")
    if request.template_args:
        return "template arguments can name host paths (lxc-local --fstree, lxc-oci --url), so they need `all`"
    for key, value in request.config:
        reason = host_key(key, value)
        if reason is not None:
            return f"config key {key} {reason}, so it needs `all`"
    if not allows(policy, request.magic, request.sub):
        return f"`safe` allows only {safe_list()}; the others need `all`"
    return None


def safe_list() -> str:
    return ", ".join(f"%{name}" for name in SAFE_MAGICS) + f" and %lxc {'|'.join(SAFE_LXC)}"


HOW_TO_CHANGE = (
    "The policy belongs to the kernel's configuration, not to the notebook: whoever installs the kernelspec "
    "sets it (`python -m lxc_kernel.install --magics all|safe|none ...`, or `--LXCKernel.magics=...` in the "
    "argv of its kernel.json)."
)


def refused(policy: str, line: str, reason: str) -> MagicRefused:
    """The error for a refused line: what was refused, by which policy and why, and how to change it."""
    shown = line if len(line) <= 100 else line[:97] + "..."
    return MagicRefused(f"%{shown}: refused by this kernel's magics policy `{policy}`: {reason}. "
                        f"Nothing in this cell ran. {HOW_TO_CHANGE}")


def describe(policy: str) -> str:
    """One line for `%lsmagic` and `%help`: the policy in force and what it allows."""
    if policy == "all":
        return "Magics policy: all (every magic may run; in a root kernel that is root on the host)."
    if policy == "safe":
        return (f"Magics policy: safe. Allowed: {safe_list()}; the others are refused "
                "(they touch the kernel's host or the attached user).")
    return f"Magics policy: {policy}. Every magic is refused."
