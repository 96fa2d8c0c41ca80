"""The classic LXC backend: ``lxc-*`` tools through lxc.py, locally or (``ssh``) on another host."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, ContainerNotReady, LxcCommandError
from ..lxc import (
    Container,
    ContainerInfo,
    Snapshot,
    State,
    Tools,
    cgroup_v2,
    list_containers,
    list_names,
    validate_config_key,
    validate_config_value,
    validate_name,
    validate_path,
)
from ..provision import KINDS  # the kinds it knows how to make work here (PTYs, cgroups, no network)
from ..transfer import format_cgroup_bytes
from .base import Backend, Created, LimitResult

if TYPE_CHECKING:
    from ..attach import AttachOptions
    from ..transport import Transport


_MEMORY_RE = re.compile(r"[0-9]+[KMGkmg]?")
_CPUSET_RE = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")
LIMITS = ("memory", "cpu", "cpuset")


def _size(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else -1


def is_off(value: str) -> bool:
    return value.lower() in ("off", "max", "none", "-1")


def check_limit(what: str, value: str) -> None:
    """Pure: refuse a bad ``%lxc limit WHAT VALUE`` before any tool runs (every backend takes these forms)."""
    if what not in LIMITS:
        raise ConfigError(f"unknown limit {what!r}: choose from {', '.join(LIMITS)}")
    off = is_off(value)
    if what == "memory" and not off and not _MEMORY_RE.fullmatch(value):
        raise ConfigError(f"%lxc limit memory: {value!r} is not a size like 512M, 2G or 'off'")
    if what == "cpu" and not off:
        try:
            cpus = float(value)
        except ValueError:
            cpus = -1.0
        if not 0 < cpus <= 1024:
            raise ConfigError(f"%lxc limit cpu: {value!r} is not a number of CPUs like 0.5 or 2, or 'off'")
    if what == "cpuset" and not _CPUSET_RE.fullmatch(value):
        raise ConfigError(f"%lxc limit cpuset: {value!r} is not a CPU list like 0 or 0-1 or 0,2")


def cgroup_setting(what: str, value: str, *, v2: bool, period: int = 100000) -> tuple[str, str]:
    """Pure: the cgroup key and value for ``%lxc limit WHAT VALUE`` on a v1 or v2 host.

    A CPU share becomes a quota per scheduling period: the container's period when it runs, else the
    kernel's default of 100 ms.
    """
    check_limit(what, value)
    off = is_off(value)
    if what == "memory":
        return ("memory.max", "max" if off else value.upper()) if v2 else \
               ("memory.limit_in_bytes", "-1" if off else value.upper())
    if what == "cpu":
        cpus = 0.0 if off else float(value)
        if v2:
            return "cpu.max", f"max {period}" if off else f"{round(cpus * period)} {period}"
        return "cpu.cfs_quota_us", "-1" if off else str(round(cpus * period))
    return "cpuset.cpus", value


class ClassicBackend(Backend):
    """``lxc-*`` through :class:`~lxc_kernel.lxc.Tools` (lxcpath, sudo, and a remote host over ssh)."""

    name = "lxc"
    create_kinds = KINDS
    snapshot_needs_stop = True
    copy_needs_stop = True
    overlay_clones = True
    snapshot_comments = True
    list_columns = ("NAME", "STATE", "PID", "RAM", "SWAP", "IPV4", "IPV6", "AUTOSTART", "GROUPS")

    def __init__(self, tools: Tools | None = None) -> None:
        self.tools = tools or Tools()

    def describe(self) -> str:
        remote = getattr(self.tools, "remote", None)
        return f"lxc on {remote.target}" if remote is not None else "lxc"

    def record(self) -> dict[str, object]:
        return {"backend": self.name, "lxcpath": self.tools.lxcpath, "sudo": self.tools.sudo}

    def _ct(self, name: str) -> Container:
        return Container(self.validate_name(name), self.tools)

    def container(self, name: str) -> Container:
        """The lxc.py handle of ``name``, for what only the classic backend has (provisioning, users)."""
        return self._ct(name)

    # -- names ------------------------------------------------------------------------------------
    def validate_name(self, name: str, what: str = "container name") -> str:
        if isinstance(name, str) and ":" in name:
            raise ConfigError(f"invalid {what} {name!r}: REMOTE:NAME is for the incus and lxd backends; "
                              "classic LXC on another host is `--ssh HOST`")
        return validate_name(name, what)

    def validate_config_key(self, key: str) -> str:
        return validate_config_key(key)

    # -- facts --------------------------------------------------------------------------------------
    def list(self) -> list[dict[str, str]]:
        return list_containers(self.tools, self.list_columns)

    def names(self) -> list[str]:
        return list_names(self.tools)

    def state(self, name: str) -> State:
        return self._ct(name).state()

    def info(self, name: str) -> ContainerInfo:
        return self._ct(name).info()

    def init_pid(self, name: str) -> int | None:
        return self._ct(name).init_pid()

    def advice(self, name: str, state: State) -> str:
        from ..lxc import ADVICE

        return ADVICE.get(state, "wait until it is RUNNING, then run the cell again.").format(name=name)

    def require_running(self, name: str) -> None:
        self._ct(name).require_running()

    def not_running(self, names: Sequence[str]) -> list[ContainerNotReady]:
        """Two lxc-ls calls for all of ``names``, then lxc-info for the few that are not running."""
        running = set(self.tools.run("lxc-ls", "-1", "--running", log=False, timeout=10).stdout.split())
        frozen = set(self.tools.run("lxc-ls", "-1", "--frozen", log=False, timeout=10).stdout.split())
        return super().not_running([n for n in names if n not in running or n in frozen])

    def limits(self, name: str) -> list[tuple[str, str]]:
        ct = self._ct(name)
        out = []
        try:
            if cgroup_v2():
                memory = ct.cgroup("memory.max")
                quota, _, period = ct.cgroup("cpu.max").partition(" ")
            else:
                memory = ct.cgroup("memory.limit_in_bytes")
                quota, period = ct.cgroup("cpu.cfs_quota_us"), ct.cgroup("cpu.cfs_period_us")
            out.append(("memory limit", format_cgroup_bytes(_size(memory)) if memory != "max" else "unlimited"))
            q, p = _size(quota), _size(period)
            out.append(("cpu quota", f"{q / p:.2f} CPU ({quota}/{period} us)" if q > 0 and p > 0 else "unlimited"))
            out.append(("cpuset", ct.cgroup("cpuset.cpus") or "?"))
        except LxcCommandError as exc:
            out.append(("limits", f"unavailable: {exc}"))
        return out

    # -- lifecycle ------------------------------------------------------------------------------------
    def create(self, name: str, source: str, *, config: Sequence[tuple[str, str]] = (),
               template_args: Sequence[str] = (), privileged: bool = False) -> Created:
        """A kind (busybox, hostfs, debian) through provision.py, else ``lxc-create -t TEMPLATE`` with no
        network but loopback unless ``config`` says otherwise; unprivileged (root's /etc/subuid range)
        unless ``privileged``."""
        from .. import provision

        self._host_files("create")
        self.tools.require_own("%lxc create")  # templates and their config run as root
        ct = self._ct(name)
        if source.startswith("/"):
            validate_path(source, "template")
        else:
            validate_name(source, "template name")
        entries = [(validate_config_key(k), validate_config_value(v)) for k, v in config]
        text = "".join(f"{k} = {v}\n" for k, v in entries)
        if source in KINDS and not template_args:
            provision.check_extra_config(text)
            idmap = provision.provision(ct.name, source, start=False, tools=self.tools, privileged=privileged).idmap
            for key, value in entries:
                ct.config_set(key, value)
        else:
            idmap = provision.create_from_template(ct, source, config=text, template_args=template_args,
                                                   privileged=privileged)
        return Created(idmap is None, idmap.describe() if idmap is not None else "")

    def provision(self, name: str, source: str, *, start: bool = True) -> Created:
        from .. import provision

        self._host_files("create_missing")
        self.tools.require_own(f"creating the missing container {name}")
        if source not in KINDS:
            raise ConfigError(f"unknown kind {source!r}: the lxc backend creates {', '.join(KINDS)}")
        done = provision.provision(self.validate_name(name), source, start=start, tools=self.tools)
        return Created(done.idmap is None, done.idmap.describe() if done.idmap is not None else "", done.seconds)

    def privilege(self, name: str) -> str:
        from ..idmap import parse_idmap

        idmap = parse_idmap(self._ct(name).idmap_values())
        return f"no: {idmap.describe()}" if idmap else "yes: no id map, root inside is root on the host"

    def start(self, name: str, timeout: float = 10.0) -> State:
        return self._ct(name).start(timeout)

    def stop(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        return self._ct(name).stop(kill=kill, timeout=timeout)

    def restart(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        return self._ct(name).restart(kill=kill, timeout=timeout)

    def freeze(self, name: str, timeout: float = 10.0) -> State:
        return self._ct(name).freeze(timeout)

    def unfreeze(self, name: str, timeout: float = 10.0) -> State:
        return self._ct(name).unfreeze(timeout)

    def destroy(self, name: str, *, snapshots: bool = False) -> None:
        ct = self._ct(name)
        state = ct.state()
        if state is State.MISSING:
            return
        if state in (State.FROZEN, State.FREEZING):
            ct.unfreeze()  # a frozen task cannot die
        if state is not State.STOPPED:
            try:
                ct.stop(kill=True)
            except LxcCommandError:
                if ct.state() not in (State.STOPPED, State.MISSING):
                    raise
        if state is not State.STOPPED and self._ephemeral(ct):
            # LXC removes an ephemeral container just after it stops: give it a moment first.
            ct.wait(State.MISSING, 2.0)
        if ct.state() is not State.MISSING:
            ct.destroy(snapshots=snapshots)

    @staticmethod
    def _ephemeral(ct: Container) -> bool:
        try:
            return ct.config_get("lxc.ephemeral") == "1"
        except LxcCommandError:
            return ct.state() is State.MISSING

    def clones(self, name: str) -> list[str]:
        if getattr(self.tools, "remote", None) is not None:
            return []  # lxc_snapshots is a file on the other host: lxc-destroy there says if clones remain
        return self._ct(name).clones()

    # -- snapshots and copies ---------------------------------------------------------------------------
    def check_snapshot_comment(self) -> None:
        self._host_files("snapshot --comment")  # the comment travels in a file on this host

    def snapshot(self, name: str, comment: str | None = None) -> str:
        if comment:
            self.check_snapshot_comment()
        return self._ct(name).snapshot(comment=comment)

    def snapshots(self, name: str) -> list[Snapshot]:
        return self._ct(name).snapshots()

    def delete_snapshot(self, name: str, snap: str) -> None:
        self._ct(name).delete_snapshot(snap)

    def restore(self, name: str, snap: str, new: str | None = None) -> None:
        self._ct(name).restore(snap, self.validate_name(new) if new else None)

    def clone(self, src: str, new: str, *, overlay: bool = False, allow_running: bool = False) -> None:
        self._ct(src).copy(self.validate_name(new), overlay=overlay, allow_running=allow_running)

    def ephemeral_copy(self, base: str, new: str, *, allow_running: bool = False, timeout: float = 30.0) -> State:
        copy = self._ct(base).ephemeral_copy(self.validate_name(new), allow_running=allow_running, timeout=timeout)
        return copy.state()

    # -- limits, config, log ----------------------------------------------------------------------------
    def set_limit(self, name: str, what: str, value: str, *, persist: bool = False) -> LimitResult:
        check_limit(what, value)  # refuse a bad value before any lxc-* runs
        ct = self._ct(name)
        state = ct.state()
        if state is State.MISSING:
            raise ContainerNotReady(name, state.value, "it does not exist (see `%lxc list`)")
        v2 = cgroup_v2()
        live = state is State.RUNNING
        period = 100000
        if live and what == "cpu":
            period = int(ct.cgroup("cpu.max").split()[-1]) if v2 else int(ct.cgroup("cpu.cfs_period_us"))
        key, setting = cgroup_setting(what, value, v2=v2, period=period)
        done = []
        if live:
            ct.cgroup(key, setting)
            done.append(f"{key} = {ct.cgroup(key)} (live)")
        elif not persist:
            raise ContainerNotReady(name, state.value, "a live limit needs it RUNNING; add --persist to write "
                                                       "it to the config for the next start")
        if persist:
            self._host_files("limit --persist")
            config_key = ("lxc.cgroup2." if v2 else "lxc.cgroup.") + key
            ct.config_set(config_key, setting)
            done.append(f"{config_key} = {setting} (config, from the next start)")
        return LimitResult(tuple(done))

    def config_get(self, name: str, key: str) -> str:
        return self._ct(name).config_get(key)

    def _host_files(self, operation: str) -> None:
        """Config files, logs, provisioning and comments are files on the kernel's host: not where ssh leads."""
        remote = getattr(self.tools, "remote", None)
        if remote is not None:
            raise self._unsupported(f"{operation} over ssh", "the container's files are on the other host")

    def config_set(self, name: str, key: str, value: str) -> str:
        self._host_files("config set")
        ct = self._ct(name)
        state = ct.state()
        ct.config_set(key, validate_config_value(value))
        note = "; it applies at the next start (`%lxc restart`)" if state is not State.STOPPED else ""
        return f"written to {ct.config_path()}{note}"

    def log(self, name: str, lines: int = 40, level: str | None = None) -> tuple[str, list[str], str]:
        self._host_files("log")
        ct = self._ct(name)
        path = ct.log_file()
        note = ""
        if level:
            ct.config_set("lxc.log.level", level)
            ct.config_set("lxc.log.file", path)
            note = f"{ct.name}: lxc.log.level = {level}, lxc.log.file = {path} (from the next start)"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 256 * 1024))
                tail = fh.read().decode("utf-8", "replace").splitlines()[-lines:]
        except FileNotFoundError:
            missing = f"no log yet at {path}" + ("" if level else f"; `%lxc log {ct.name} --level INFO` turns one on")
            return path, [], (note + "\n" + missing).strip()
        except PermissionError:
            raise ConfigError(f"{path} is not readable by this kernel's user: the containers' logs need host "
                              "root (the kernel runs as a normal user)") from None
        return path, tail, note

    # -- the way in --------------------------------------------------------------------------------------
    def transport(self, options: AttachOptions, name: str | None = None) -> Transport:
        remote = getattr(self.tools, "remote", None)
        if remote is not None:
            # Classic LXC on another host: the same lxc-attach argv, run there over the kernel's ssh link.
            from ..ssh import SshTransport

            return SshTransport(remote, options)
        from ..attach import LxcAttachTransport

        return LxcAttachTransport(options)
