"""Container managers behind one ``Backend`` interface: classic LXC (locally or over ssh), Incus and LXD."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..lxc import Tools
from .base import Backend, Created, LimitResult, NotSupported
from .classic import KINDS, ClassicBackend
from .incus import IncusBackend, parse_ref, validate_image, validate_project

__all__ = ["BACKENDS", "KINDS", "Backend", "ClassicBackend", "Created", "IncusBackend", "LimitResult", "NotSupported",
           "check_settings", "from_record", "make"]

BACKENDS = ("lxc", "incus", "lxd")
CLIENTS = {"incus": "incus", "lxd": "lxc"}


def make(kind: str, *, tools: Tools | None = None, project: str = "") -> Backend:
    """The backend named by the ``backend`` option; ``tools`` (lxcpath, sudo, ssh) serve the classic one."""
    if kind == "lxc":
        if project:
            raise ConfigError("project is for the incus and lxd backends")
        return ClassicBackend(tools)
    if kind in CLIENTS:
        return IncusBackend(CLIENTS[kind], project=project)
    raise ConfigError(f"unknown backend {kind!r}: choose from {', '.join(BACKENDS)}")


def from_record(record: dict[str, Any]) -> Backend:
    """A backend rebuilt from :meth:`Backend.record` (the ephemeral copies' lock files); classic if unsure."""
    kind = record.get("backend")
    if kind in CLIENTS:
        project = record.get("project")
        return IncusBackend(CLIENTS[kind], project=project if isinstance(project, str) else "")
    lxcpath = record.get("lxcpath")
    return ClassicBackend(Tools(lxcpath=lxcpath if isinstance(lxcpath, str) and lxcpath else None,
                                sudo=record.get("sudo") is True))


def check_settings(settings: dict[str, Any]) -> list[str]:
    """Pure: what is wrong with one configuration's backend options taken together (``backend`` with
    ``container``, ``project``, ``ssh``, ``image``, ``ephemeral``, ``lxcpath``, ``sudo``, and the
    attach options that only ``lxc-attach`` has). Each option's own validator has already run."""
    kind = settings.get("backend") or "lxc"
    errors: list[str] = []
    if kind not in BACKENDS:
        return [f"unknown backend {kind!r}: choose from {', '.join(BACKENDS)}"]
    for option in ("container", "ephemeral"):
        value = settings.get(option) or ""
        if not value:
            continue
        try:
            if kind == "lxc":
                ClassicBackend().validate_name(value, option)
            else:
                parse_ref(value, option)
        except ConfigError as exc:
            errors.append(str(exc))
    if kind == "lxc":
        if settings.get("ssh_options") and not settings.get("ssh"):
            errors.append("ssh_options go with ssh")
        for option in ("project", "image"):
            if settings.get(option):
                errors.append(f"{option} is for the incus and lxd backends")
        return errors
    try:
        validate_project(settings.get("project") or "")
        validate_image(settings.get("image") or "busybox")
    except ConfigError as exc:
        errors.append(str(exc))
    # These belong to lxc-* and lxc-attach: refused rather than silently ignored.
    for option in ("ssh", "ssh_options", "lxcpath", "sudo", "namespaces", "elevated", "remount_sys_proc"):
        if settings.get(option):
            errors.append(f"{option} is not supported by {kind}" + (
                " (ssh runs classic LXC on another host; reach an Incus/LXD server as a remote, REMOTE:NAME)"
                if option == "ssh" else ""))
    return errors
