"""The lifecycle seam: one typed ``Backend`` per container manager, in the vocabulary of the Incus REST API."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContainerNotReady, LxcKernelError
from ..lxc import ContainerInfo, Snapshot, State

if TYPE_CHECKING:
    from ..attach import AttachOptions
    from ..transport import Transport

__all__ = ["Backend", "ContainerInfo", "NotSupported", "Snapshot", "State"]


class NotSupported(LxcKernelError):
    """An operation this backend cannot do; it never silently does something else instead."""

    def __init__(self, operation: str, backend: str, hint: str = "") -> None:
        self.operation = operation
        self.backend = backend
        super().__init__(f"{operation} is not supported by {backend}" + (f": {hint}" if hint else ""))


@dataclass(frozen=True)
class Created:
    """What ``create`` or ``provision`` made: whether root inside is root on the host, and how long it took."""

    privileged: bool
    detail: str = ""  # the id map, for messages
    seconds: float = 0.0

    @property
    def how(self) -> str:
        if self.privileged:
            return "privileged"
        return "unprivileged" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class LimitResult:
    """What ``set_limit`` did: one line per place it wrote (live, config)."""

    done: tuple[str, ...]


class Backend:
    """Lifecycle of the containers of one manager: classic ``lxc-*``, Incus or LXD.

    Every name a method takes is checked by :meth:`validate_name` before any tool runs. Methods that
    change a state wait for it (with a deadline) and return the state reached: callers report it. An
    operation the manager lacks raises :class:`NotSupported` (the defaults below), never a look-alike.
    """

    name = "backend"  # as users read it in messages: "lxc", "incus", "lxd"
    # What completion and the help offer for `%lxc create -t`: kinds (classic) or nothing (images).
    create_kinds: tuple[str, ...] = ()
    # Snapshots need the container STOPPED (classic lxc-snapshot); Incus snapshots a running instance.
    snapshot_needs_stop = False
    # Copies and restores as a new container need the source STOPPED unless asked (lxc-copy -a).
    copy_needs_stop = False
    # Copy-on-write overlay clones (lxc-copy -s -B overlay), and comments kept with snapshots.
    overlay_clones = False
    snapshot_comments = False

    # -- names ------------------------------------------------------------------------------------
    def validate_name(self, name: str, what: str = "container name") -> str:
        raise NotImplementedError

    def validate_snapshot_name(self, name: str) -> str:
        return self.validate_name(name, "snapshot name")

    def validate_config_key(self, key: str) -> str:
        raise NotImplementedError

    def short_name(self, name: str) -> str:
        """The instance's own name, without any ``REMOTE:`` prefix (what attach options carry)."""
        return name

    def describe(self) -> str:
        """For messages: ``incus (project p, remote r)``."""
        return self.name

    def record(self) -> dict[str, object]:
        """How to reach these containers again from another process (the ephemeral watchdog)."""
        return {"backend": self.name}

    def _unsupported(self, operation: str, hint: str = "") -> NotSupported:
        return NotSupported(operation, self.name, hint)

    # -- facts --------------------------------------------------------------------------------------
    list_columns: tuple[str, ...] = ("NAME", "STATE")

    def list(self) -> list[dict[str, str]]:
        """Every container as a row keyed by :attr:`list_columns`."""
        raise self._unsupported("list")

    def names(self) -> list[str]:
        return [row["NAME"] for row in self.list()]

    def state(self, name: str) -> State:
        raise self._unsupported("state")

    def info(self, name: str) -> ContainerInfo:
        raise self._unsupported("info")

    def exists(self, name: str) -> bool:
        return self.state(name) is not State.MISSING

    def init_pid(self, name: str) -> int | None:
        return self.info(name).pid

    def limits(self, name: str) -> list[tuple[str, str]]:
        """The limits in force, readable."""
        raise self._unsupported("limits")

    def not_running(self, names: Sequence[str]) -> list[ContainerNotReady]:
        """The errors of those of ``names`` that are not RUNNING (stopped, frozen, gone)."""
        errors = []
        for name in names:
            try:
                self.require_running(name)
            except ContainerNotReady as exc:
                errors.append(exc)
        return errors

    def advice(self, name: str, state: State) -> str:
        """What to do about a container that is not RUNNING, in this backend's own words."""
        return {
            State.MISSING: f"it does not exist. Create it (`%lxc create {name}`) or pick another with `%lxc use`.",
            State.STOPPED: "start it with `%lxc start`, then run the cell again.",
            State.FROZEN: "unfreeze it with `%lxc unfreeze`, then run the cell again.",
            State.FREEZING: "unfreeze it with `%lxc unfreeze`, then run the cell again.",
        }.get(state, "wait until it is RUNNING, then run the cell again.")

    def require_running(self, name: str) -> None:
        """Raise ContainerNotReady, with what to do, unless ``name`` is RUNNING."""
        state = self.state(name)
        if state is not State.RUNNING:
            raise ContainerNotReady(name, state.value, self.advice(name, state))

    def wait(self, name: str, state: State, timeout: float = 10.0,
             also: Sequence[State] = ()) -> State:
        """Poll until ``state`` (or one of ``also``) or the deadline; return the state reached."""
        deadline = time.monotonic() + timeout
        current = self.state(name)
        while current is not state and current not in also and time.monotonic() < deadline:
            time.sleep(0.05)
            current = self.state(name)
        return current

    # -- lifecycle ------------------------------------------------------------------------------------
    def create(self, name: str, source: str, *, config: Sequence[tuple[str, str]] = (),
               template_args: Sequence[str] = (), privileged: bool = False) -> Created:
        """Create ``name`` (stopped) from ``source``: a template or kind (classic), an image alias (Incus).
        Unprivileged (root inside is an unprivileged host uid) unless ``privileged``."""
        raise self._unsupported("create")

    def provision(self, name: str, source: str, *, start: bool = True) -> Created:
        """What ``create_missing`` does: create ``name`` (unprivileged) from ``source`` and start it."""
        t0 = time.monotonic()
        made = self.create(name, source)
        if start:
            self.start(name)
        return Created(made.privileged, made.detail, time.monotonic() - t0)

    def privilege(self, name: str) -> str:
        """Whether root inside ``name`` is root on the host, for ``%lxc info``: ``no: MAP`` or ``yes: ...``."""
        raise self._unsupported("privilege")

    def start(self, name: str, timeout: float = 10.0) -> State:
        raise self._unsupported("start")

    def stop(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        raise self._unsupported("stop")

    def restart(self, name: str, *, kill: bool = False, timeout: float = 30.0) -> State:
        if self.state(name) not in (State.STOPPED, State.MISSING):
            self.stop(name, kill=kill, timeout=timeout)
        return self.start(name, timeout=min(timeout, 30.0))

    def freeze(self, name: str, timeout: float = 10.0) -> State:
        raise self._unsupported("freeze")

    def unfreeze(self, name: str, timeout: float = 10.0) -> State:
        raise self._unsupported("unfreeze")

    def destroy(self, name: str, *, snapshots: bool = False) -> None:
        """Remove ``name`` whatever its state (thawed, then stopped with a kill first)."""
        raise self._unsupported("destroy")

    def clones(self, name: str) -> list[str]:
        """Containers that use ``name``'s files (classic overlay clones): destroying it needs them gone."""
        return []

    # -- snapshots and copies ---------------------------------------------------------------------------
    def snapshot(self, name: str, comment: str | None = None) -> str:
        raise self._unsupported("snapshot")

    def check_snapshot_comment(self) -> None:
        """NotSupported, before anything runs, where snapshots cannot keep a comment."""
        if not self.snapshot_comments:
            raise self._unsupported("snapshot --comment")

    def snapshots(self, name: str) -> list[Snapshot]:
        raise self._unsupported("snapshot list")

    def delete_snapshot(self, name: str, snap: str) -> None:
        raise self._unsupported("snapshot delete")

    def restore(self, name: str, snap: str, new: str | None = None) -> None:
        raise self._unsupported("restore")

    def clone(self, src: str, new: str, *, overlay: bool = False, allow_running: bool = False) -> None:
        raise self._unsupported("clone")

    def ephemeral_copy(self, base: str, new: str, *, allow_running: bool = False, timeout: float = 30.0) -> State:
        """A started copy of ``base`` that the manager destroys as soon as it stops."""
        raise self._unsupported("ephemeral copies")

    # -- limits, config, log ----------------------------------------------------------------------------
    def set_limit(self, name: str, what: str, value: str, *, persist: bool = False) -> LimitResult:
        """``what`` is memory, cpu (a number of CPUs, or off) or cpuset; ``persist`` also writes the config."""
        raise self._unsupported("limit")

    def config_get(self, name: str, key: str) -> str:
        raise self._unsupported("config get")

    def config_set(self, name: str, key: str, value: str) -> str:
        """Set ``key``; returns when it applies, for the message."""
        raise self._unsupported("config set")

    def log(self, name: str, lines: int = 40, level: str | None = None) -> tuple[str, list[str], str]:
        """(where the log is, its last ``lines`` lines, a note); ``level`` changes what is logged."""
        raise self._unsupported("log")

    # -- the way in --------------------------------------------------------------------------------------
    def transport(self, options: AttachOptions, name: str | None = None) -> Transport:
        """The transport that opens shells and helpers in ``options.container``; ``name`` is the full
        name as the backend takes it (``REMOTE:NAME``), where options carry the instance's own name."""
        raise self._unsupported("attach")

    def launcher(self, options: AttachOptions, name: str | None = None) -> Callable[[Sequence[str]], list[str]]:
        """How %push/%pull run their helper inside the container: the transport's pipe argv, so files
        move as the attached user, size-checked, whatever the backend (``incus file push`` would
        write as root, with no size cap)."""
        return self.transport(options, name).pipe_argv

    def push(self, options: AttachOptions, source: Any, container_path: str, name: str | None = None) -> Any:
        """A host file (transfer.HostRoot.source) into the container, byte-exact; a transfer.Done."""
        from .. import transfer

        return transfer.push(self.launcher(options, name), source, container_path)

    def pull(self, options: AttachOptions, container_path: str, target: Any, *, max_bytes: int,
             name: str | None = None) -> Any:
        """A container file to the host (transfer.HostRoot.target), at most ``max_bytes``; a transfer.Done."""
        from .. import transfer

        return transfer.pull(self.launcher(options, name), container_path, target, max_bytes=max_bytes)
