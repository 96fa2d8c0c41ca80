"""The Incus and LXD backend: one class for both clients (``incus``, and LXD's ``lxc``), their differences named."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bounded import MiB, run_bounded
from ..errors import ConfigError, ContainerNotReady, LxcCommandError, LxcNotInstalled
from ..lxc import ContainerInfo, Snapshot, State, validate_config_value
from ..spawn import TOOL_ENV
from .base import Backend, Created, LimitResult
from .classic import check_limit, is_off

if TYPE_CHECKING:
    from ..attach import AttachOptions
    from ..transport import Transport

# Incus/LXD instance names are hostnames (RFC 1123 labels): letters, digits and '-', at most 63, not
# starting or ending with '-', not all digits. No '.' or '_' (which classic LXC allows).
_INSTANCE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Remote names are the keys of the client's config.yml; projects are path-safe words.
_REMOTE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Instance config keys: dotted words (limits.memory, security.nesting, user.my-key, environment.FOO).
_KEY_RE = re.compile(r"[a-z][a-z0-9_-]*(\.[A-Za-z0-9_/-]+)+")
# An image alias or fingerprint, optionally REMOTE:.
_IMAGE_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}:)?[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")

# How much JSON a query may return: an instance list of thousands fits; a daemon gone mad does not.
_OUTPUT_LIMIT = 16 * MiB
# The client's own configuration (remotes, certificates) and which daemon it talks to: the only host
# variables the client gets (spawn.TOOL_ENV has none of the kernel's secrets).
_CLIENT_VARS = ("HOME", "XDG_CONFIG_HOME", "INCUS_CONF", "INCUS_DIR", "INCUS_SOCKET", "INCUS_PROJECT",
                "LXD_CONF", "LXD_DIR", "LXD_SOCKET")

_STATES = {s.value: s for s in State}
_SIZE_UNITS = {"K": "KiB", "M": "MiB", "G": "GiB"}


@dataclass(frozen=True)
class InstanceRef:
    """``[REMOTE:]NAME`` split and checked."""

    remote: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.remote}:{self.name}" if self.remote else self.name


def parse_ref(spec: str, what: str = "instance name") -> InstanceRef:
    """Pure: ``REMOTE:NAME`` or ``NAME`` as Incus and LXD accept it, else ConfigError."""
    if not isinstance(spec, str):
        raise ConfigError(f"invalid {what} {spec!r}")
    remote, sep, name = spec.rpartition(":")
    if sep and not _REMOTE_RE.fullmatch(remote):
        raise ConfigError(f"invalid remote {remote!r} in {spec!r}: use letters, digits, '_', '.' or '-'")
    if not _INSTANCE_RE.fullmatch(name) or name.isdigit():
        raise ConfigError(f"invalid {what} {name!r}: Incus and LXD names are 1-63 letters, digits or '-', "
                          "not starting or ending with '-' (no '.' or '_')")
    return InstanceRef(remote or None, name)


def validate_project(project: str) -> str:
    if project and not _PROJECT_RE.fullmatch(project):
        raise ConfigError(f"invalid project {project!r}: use 1-63 letters, digits, '_', '.' or '-'")
    return project


def validate_image(image: str) -> str:
    if not _IMAGE_RE.fullmatch(image):
        raise ConfigError(f"invalid image {image!r}: give an image alias or fingerprint, optionally REMOTE:ALIAS")
    return image


def incus_size(value: str) -> str:
    """Pure: ``512M`` -> ``512MiB`` (Incus reads ``512M`` as decimal megabytes), ``1048576`` -> ``1048576B``."""
    unit = value[-1:].upper()
    if unit in _SIZE_UNITS:
        return value[:-1] + _SIZE_UNITS[unit]
    return value + "B"


def limit_settings(what: str, value: str) -> tuple[str, str | None]:
    """Pure: the instance key and value for ``%lxc limit WHAT VALUE`` (None: unset the key).

    cpu is a share of CPU time, a hard quota: ``limits.cpu.allowance=50ms/100ms`` for 0.5. cpuset pins
    CPUs through ``limits.cpu``, which reads a lone number as a count of CPUs, so CPU 1 is ``1-1``.
    """
    check_limit(what, value)
    if what == "memory":
        return "limits.memory", None if is_off(value) else incus_size(value.upper())
    if what == "cpu":
        if is_off(value):
            return "limits.cpu.allowance", None
        return "limits.cpu.allowance", f"{max(1, round(float(value) * 100))}ms/100ms"
    return "limits.cpu", value if "-" in value or "," in value else f"{value}-{value}"


def parse_instance_state(name: str, data: dict[str, Any]) -> ContainerInfo:
    """Pure: ``GET /1.0/instances/NAME/state`` (or the ``state`` of ``list --format json``) as ContainerInfo."""
    status = str(data.get("status") or "").upper()
    state = _STATES.get(status, State.ERROR if status == "ERROR" else State.STOPPED)
    pid = data.get("pid")
    cpu = (data.get("cpu") or {}).get("usage")
    memory = (data.get("memory") or {}).get("usage")
    ips = []
    for iface, net in sorted((data.get("network") or {}).items()):
        if iface == "lo":
            continue
        for addr in (net or {}).get("addresses") or []:
            if addr.get("scope") == "global" and addr.get("address"):
                ips.append(str(addr["address"]))
    return ContainerInfo(
        name, state,
        pid if isinstance(pid, int) and pid > 0 else None,
        cpu if isinstance(cpu, int) and state is State.RUNNING else None,
        memory if isinstance(memory, int) and state is State.RUNNING else None,
        tuple(ips),
    )


def parse_list(text: str) -> list[dict[str, str]]:
    """Pure: ``list --format json`` as rows of the backend's list columns."""
    rows = []
    for item in json.loads(text or "[]"):
        info = parse_instance_state(item.get("name", ""), item.get("state") or {"status": item.get("status")})
        from ..transfer import format_size

        rows.append({
            "NAME": str(item.get("name", "")),
            "STATE": info.state.value,
            "PID": str(info.pid or "-"),
            "RAM": format_size(info.memory_bytes) if info.memory_bytes else "-",
            "IPV4": ", ".join(ip for ip in info.ips if ":" not in ip) or "-",
            "IPV6": ", ".join(ip for ip in info.ips if ":" in ip) or "-",
            "TYPE": str(item.get("type", "")) + (" (ephemeral)" if item.get("ephemeral") else ""),
            "LOCATION": str(item.get("location", "") or "-"),
        })
    return rows


def parse_snapshots(text: str) -> list[Snapshot]:
    """Pure: ``GET /1.0/instances/NAME/snapshots?recursion=1``, oldest first."""
    snaps = []
    for item in json.loads(text or "[]"):
        name = str(item.get("name", "")).rpartition("/")[2]
        created = str(item.get("created_at", ""))[:19].replace("T", " ")
        snaps.append(Snapshot(name, "", created, str(item.get("description", "") or "")))
    return sorted(snaps, key=lambda s: s.time)


class IncusBackend(Backend):
    """``incus`` or LXD's ``lxc`` client (``client``), optionally in ``project``.

    Names may be ``REMOTE:NAME`` (a TLS remote, or a cluster reached through one). ``incus list NAME``
    is a regex/prefix filter (``ix-y`` also matches ``ix-y2``), so state comes from the instance's own
    ``state`` endpoint and lists are filtered here, exactly.
    """

    list_columns = ("NAME", "STATE", "PID", "RAM", "IPV4", "IPV6", "TYPE", "LOCATION")

    def __init__(self, client: str = "incus", *, project: str = "", timeout: float = 60.0) -> None:
        if client not in ("incus", "lxc"):
            raise ConfigError(f"unknown client {client!r}: incus or lxc (LXD)")
        self.client = client
        self.name = "incus" if client == "incus" else "lxd"
        self.project = validate_project(project)
        self.timeout = timeout

    def describe(self) -> str:
        return self.name + (f" (project {self.project})" if self.project else "")

    def record(self) -> dict[str, object]:
        return {"backend": self.name, "project": self.project}

    # -- names ------------------------------------------------------------------------------------
    def validate_name(self, name: str, what: str = "container name") -> str:
        parse_ref(name, what)
        return name

    def validate_snapshot_name(self, name: str) -> str:
        if not _INSTANCE_RE.fullmatch(name):
            raise ConfigError(f"invalid snapshot name {name!r}: use letters, digits or '-'")
        return name

    def validate_config_key(self, key: str) -> str:
        if not _KEY_RE.fullmatch(key):
            raise ConfigError(f"invalid config key {key!r}: keys look like limits.memory or security.nesting")
        return key

    def short_name(self, name: str) -> str:
        return parse_ref(name).name

    def ref(self, name: str) -> InstanceRef:
        return parse_ref(name)

    # -- the one runner -----------------------------------------------------------------------------
    def argv(self, *args: str) -> list[str]:
        """The client argv: ``incus [--project P] ARGS``; every ARG comes from a checked value."""
        argv = [self.client]
        if self.project:
            argv += ["--project", self.project]
        return argv + list(args)

    def env(self) -> dict[str, str]:
        return {**TOOL_ENV, **{k: os.environ[k] for k in _CLIENT_VARS if k in os.environ}}

    def run(self, *args: str, timeout: float | None = None, check: bool = True,
            limit: int = _OUTPUT_LIMIT) -> tuple[int, str, str]:
        """Run the client with a deadline and bounded output; (rc, stdout, stderr). LxcCommandError
        with argv, rc and stderr when it fails and ``check``."""
        argv = self.argv(*args)
        try:
            res = run_bounded(argv, timeout=timeout or self.timeout, stdout_limit=limit, env=self.env(),
                              what=f"the output of {self.client} {args[0] if args else ''}".strip())
        except FileNotFoundError as exc:
            raise LxcNotInstalled(argv[0]) from exc
        out = res.stdout.decode("utf-8", "replace")
        err = res.stderr.decode("utf-8", "replace")
        if check and res.returncode != 0:
            raise LxcCommandError(argv, res.returncode, err or out)
        return res.returncode, out, err

    def _api(self, ref: InstanceRef, path: str = "", query: str = "") -> str:
        """The ``incus query`` argument for an instance endpoint, with the project as a parameter."""
        params = [p for p in (query, f"project={self.project}" if self.project else "") if p]
        url = f"/1.0/instances/{ref.name}{path}" + ("?" + "&".join(params) if params else "")
        return f"{ref.remote}:{url}" if ref.remote else url

    def query(self, ref: InstanceRef, path: str = "", query: str = "", timeout: float | None = None) -> Any:
        _, out, _ = self.run("query", self._api(ref, path, query), timeout=timeout)
        return json.loads(out or "null")

    # -- facts --------------------------------------------------------------------------------------
    def list(self) -> list[dict[str, str]]:
        _, out, _ = self.run("list", "--format", "json")
        return parse_list(out)

    def names(self) -> list[str]:
        return [row["NAME"] for row in self.list()]

    def _get(self, name: str, path: str = "") -> dict[str, Any] | None:
        """``GET /1.0/instances/NAME[PATH]``, or None when there is no such instance."""
        ref = self.ref(name)
        rc, out, err = self.run("query", self._api(ref, path), check=False, timeout=20)
        if rc != 0:
            if "not found" in err.lower():
                return None
            raise LxcCommandError(self.argv("query", self._api(ref, path)), rc, err or out)
        return json.loads(out or "{}")

    def _state_data(self, name: str) -> dict[str, Any] | None:
        return self._get(name, "/state")

    def state(self, name: str) -> State:
        # The instance itself, not its /state: that one also counts processes, memory and network (0.09-0.18 s
        # against 0.04-0.07 s on a loaded 2-core host), and the health check asks often.
        data = self._get(name)
        return State.MISSING if data is None else parse_instance_state(name, {"status": data.get("status")}).state

    def info(self, name: str) -> ContainerInfo:
        data = self._state_data(name)
        return ContainerInfo(name, State.MISSING) if data is None else parse_instance_state(name, data)

    def advice(self, name: str, state: State) -> str:
        tool = self.client
        return {
            State.MISSING: f"it does not exist. Create it (`%lxc create {name} -t IMAGE` or `{tool} init`) or pick "
                           "another with `%lxc use`.",
            State.STOPPED: f"start it with `%lxc start` (or `{tool} start {name}`), then run the cell again.",
            State.FROZEN: "unfreeze it with `%lxc unfreeze`, then run the cell again.",
            State.ERROR: f"it is in an error state: see `{tool} info {name} --show-log`.",
        }.get(state, "wait until it is RUNNING, then run the cell again.")

    def not_running(self, names: Sequence[str]) -> list[ContainerNotReady]:
        """One ``list --format json`` per remote for all of ``names``, filtered here by exact name."""
        errors = []
        by_remote: dict[str | None, list[str]] = {}
        for name in names:
            by_remote.setdefault(self.ref(name).remote, []).append(name)
        for remote, wanted in by_remote.items():
            _, out, _ = self.run("list", *([f"{remote}:"] if remote else []), "--format", "json")
            states = {row["NAME"]: _STATES.get(row["STATE"], State.STOPPED) for row in parse_list(out)}
            for name in wanted:
                state = states.get(self.ref(name).name, State.MISSING)
                if state is not State.RUNNING:
                    errors.append(ContainerNotReady(name, state.value, self.advice(name, state)))
        return errors

    def config(self, name: str) -> dict[str, str]:
        """The instance's expanded configuration (profiles applied)."""
        data = self.query(self.ref(name)) or {}
        return {str(k): str(v) for k, v in (data.get("expanded_config") or {}).items()}

    def limits(self, name: str) -> list[tuple[str, str]]:
        config = self.config(name)
        return [
            ("memory limit", config.get("limits.memory", "unlimited")),
            ("cpu allowance", config.get("limits.cpu.allowance", "unlimited")),
            ("cpus", config.get("limits.cpu", "all")),
        ]

    # -- lifecycle ------------------------------------------------------------------------------------
    def _existing(self, name: str) -> State:
        state = self.state(name)
        if state is State.MISSING:
            raise ContainerNotReady(name, state.value, "it does not exist (see `%lxc list`)")
        return state

    def create(self, name: str, source: str, *, config: Sequence[tuple[str, str]] = (),
               template_args: Sequence[str] = (), privileged: bool = False) -> Created:
        """``init IMAGE NAME -c KEY=VALUE...``: a stopped instance from a local image alias. Incus/LXD
        instances are unprivileged unless ``security.privileged=true`` (``privileged``)."""
        self.validate_name(name)
        if template_args:
            raise self._unsupported("template arguments (`-- ARGS`)", "give an image alias with -t")
        args = ["init", validate_image(source), name]
        entries = list(config) + ([("security.privileged", "true")] if privileged else [])
        for key, value in entries:
            args += ["-c", f"{self.validate_config_key(key)}={validate_config_value(value)}"]
        self.run(*args, timeout=300)
        privileged = any(k == "security.privileged" and v.lower() in ("true", "1") for k, v in entries)
        return Created(privileged, "" if privileged else f"{self.name}'s id map")

    def privilege(self, name: str) -> str:
        config = self.config(name)
        if config.get("security.privileged", "").lower() in ("true", "1"):
            return "yes: security.privileged, root inside is root on the host"
        try:
            maps = json.loads(config.get("volatile.idmap.current") or "[]")
        except ValueError:
            maps = []
        uids = [m for m in maps if m.get("Isuid") and m.get("Nsid") == 0]
        if uids:
            m = uids[0]
            return f"no: uid 0-{m['Maprange'] - 1} -> {m['Hostid']}-{m['Hostid'] + m['Maprange'] - 1} on the host"
        return f"no: {self.name}'s id map"

    def start(self, name: str, timeout: float = 10.0) -> State:
        self.validate_name(name)
        self.run("start", name, timeout=timeout + 30)
        return self.wait(name, State.RUNNING, timeout)

    def stop(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        self.validate_name(name)
        args = ["stop", name] + (["--force"] if kill else ["--timeout", str(max(1, int(timeout)))])
        self.run(*args, timeout=timeout + 30)
        # An ephemeral instance is deleted as it stops: MISSING counts as stopped.
        return self.wait(name, State.STOPPED, 5.0, also=(State.MISSING,))

    def restart(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        state = self._existing(name)
        if state is State.STOPPED:
            return self.start(name, timeout=min(timeout, 30.0))
        args = ["restart", name] + (["--force"] if kill else ["--timeout", str(max(1, int(timeout)))])
        self.run(*args, timeout=timeout + 30)
        return self.wait(name, State.RUNNING, min(timeout, 30.0))

    def freeze(self, name: str, timeout: float = 10.0) -> State:
        self.validate_name(name)
        self.run("pause", name, timeout=timeout + 20)
        return self.wait(name, State.FROZEN, timeout)

    def unfreeze(self, name: str, timeout: float = 10.0) -> State:
        self.validate_name(name)
        # LXD 5.0 has no `resume`: `lxc start` thaws a frozen instance.
        self.run("resume" if self.client == "incus" else "start", name, timeout=timeout + 20)
        return self.wait(name, State.RUNNING, timeout)

    def destroy(self, name: str, *, snapshots: bool = False) -> None:
        """``delete --force``: the instance and its snapshots (Incus refuses nothing for those)."""
        state = self.state(name)
        if state is State.MISSING:
            return
        if self.snapshots(name) and not snapshots:
            raise ConfigError(f"{name} has snapshots: destroying it destroys them (add --snapshots)")
        self.run("delete", "--force", name, timeout=120)

    # -- snapshots and copies ---------------------------------------------------------------------------
    def snapshots(self, name: str) -> list[Snapshot]:
        ref = self.ref(name)
        _, out, _ = self.run("query", self._api(ref, "/snapshots", "recursion=1"), timeout=30)
        return parse_snapshots(out)

    def snapshot(self, name: str, comment: str | None = None) -> str:
        if comment:
            raise self._unsupported("snapshot --comment")
        self._existing(name)
        before = {s.name for s in self.snapshots(name)}
        # Incus and LXD name a new snapshot snapN themselves.
        self.run(*(["snapshot", "create", name] if self.client == "incus" else ["snapshot", name]), timeout=600)
        new = [s.name for s in self.snapshots(name) if s.name not in before]
        return new[-1] if new else "?"

    def delete_snapshot(self, name: str, snap: str) -> None:
        self.validate_name(name)
        self.validate_snapshot_name(snap)
        if self.client == "incus":
            self.run("snapshot", "delete", name, snap, timeout=120)
        else:
            self.run("delete", f"{name}/{snap}", timeout=120)

    def restore(self, name: str, snap: str, new: str | None = None) -> None:
        self.validate_name(name)
        self.validate_snapshot_name(snap)
        if new is not None:
            self.validate_name(new)
            self.run("copy", f"{name}/{snap}", new, timeout=600)
            return
        if self.client == "incus":
            self.run("snapshot", "restore", name, snap, timeout=600)
        else:
            self.run("restore", name, snap, timeout=600)

    def clone(self, src: str, new: str, *, overlay: bool = False, allow_running: bool = False) -> None:
        if overlay:
            raise self._unsupported("overlay clones (--snapshot)", "a copy on a copy-on-write pool (zfs, btrfs) "
                                                                   "shares its blocks already")
        self.validate_name(src)
        self.validate_name(new)
        # A running instance is copied as its files (--stateless): in a cluster, a running instance with
        # snapshots otherwise wants CRIU to migrate its state. Without its snapshots, as lxc-copy does.
        self.run("copy", src, new, "--stateless", "--instance-only", timeout=600)

    def ephemeral_copy(self, base: str, new: str, *, allow_running: bool = False, timeout: float = 30.0) -> State:
        """``copy BASE NEW --ephemeral`` then ``start``: the daemon deletes the copy when it stops."""
        self.validate_name(base)
        self.validate_name(new)
        self.run("copy", base, new, "--ephemeral", "--stateless", "--instance-only", timeout=timeout + 60)
        try:
            return self.start(new, timeout)
        except BaseException:
            self.run("delete", "--force", new, check=False, timeout=60)
            raise

    # -- limits, config, log ----------------------------------------------------------------------------
    def set_limit(self, name: str, what: str, value: str, *, persist: bool = False) -> LimitResult:
        key, setting = limit_settings(what, value)  # refuses a bad value before any tool runs
        state = self._existing(name)
        if setting is None:
            rc, out, err = self.run("config", "unset", name, key, check=False)
            if rc != 0 and "not set" not in (err + out).lower():
                raise LxcCommandError(self.argv("config", "unset", name, key), rc, err or out)
        else:
            self.run("config", "set", name, key, setting)
        where = "live and in the config" if state is State.RUNNING else "in the config, from the next start"
        return LimitResult((f"{key} = {setting if setting is not None else '(unset)'} ({where})",))

    def config_get(self, name: str, key: str) -> str:
        self.validate_name(name)
        _, out, _ = self.run("config", "get", name, self.validate_config_key(key))
        return out.strip()

    def config_set(self, name: str, key: str, value: str) -> str:
        self.validate_name(name)
        self.run("config", "set", name, self.validate_config_key(key), validate_config_value(value))
        return "set (live where the key allows it)"

    def log(self, name: str, lines: int = 40, level: str | None = None) -> tuple[str, list[str], str]:
        if level:
            raise self._unsupported("log --level", f"the daemon's log level is its own (`{self.client} monitor`)")
        self._existing(name)
        _, out, _ = self.run("info", name, "--show-log", limit=4 * MiB)
        text = out.split("Log:", 1)[1] if "Log:" in out else out
        tail = [line for line in text.strip("\n").splitlines()][-lines:]
        return f"{self.client} info {name} --show-log", tail, ""

    # -- the way in --------------------------------------------------------------------------------------
    def transport(self, options: AttachOptions, name: str | None = None) -> Transport:
        """``exec`` through the client; ``name`` is the full ``[REMOTE:]NAME`` (options carry the bare name)."""
        try:
            from ..exec_transport import ExecTransport  # type: ignore[import-not-found]
        except ImportError:
            raise self._unsupported("attaching a shell", "this build has no exec transport "
                                                         "(lxc_kernel/exec_transport.py)") from None
        remote = self.ref(name).remote if name else None
        return ExecTransport(options, client=self.client, remote=remote, project=self.project or None)

