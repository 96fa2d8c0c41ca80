"""A thin typed wrapper over the ``lxc-*`` tools: every call is an argv list built from validated values."""

from __future__ import annotations

import enum
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .bounded import read_tail
from .errors import ConfigError, ContainerNotReady, LxcCommandError, LxcNotInstalled
from .spawn import TOOL_ENV

if TYPE_CHECKING:
    from .ssh import SshLink

# lxc(7): a name becomes a directory under lxcpath and the default hostname, so keep to the
# portable hostname alphabet plus '_' and '.'; this also rules out every shell metacharacter.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")



# How much of an LXC log an error shows: the end says why, and a TRACE-level log (or a container that
# fails in a loop while lxc-start -d keeps its log open) grows without bound.
_LOG_TAIL = 4000


def _log_tail(path: str, start: int = 0) -> str:
    """The last _LOG_TAIL bytes of the log at ``path`` written after offset ``start``; "" if unreadable."""
    data = read_tail(path, _LOG_TAIL, start)
    return data.decode("utf-8", "replace") if data else ""


def validate_name(name: str, what: str = "container name") -> str:
    """Return ``name`` if LXC accepts it and it is safe on any command line, else raise ConfigError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith((".", "-")):
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_path(path: str, what: str = "path") -> str:
    """Absolute, printable, no NUL: the shape every ``-P``/``--lxcpath`` style option needs."""
    if not path.startswith("/") or any(ord(ch) < 32 for ch in path):
        raise ConfigError(f"invalid {what} {path!r}: it must be an absolute path")
    return path


class State(enum.Enum):
    """Container states as ``lxc-info -s`` prints them, plus MISSING for a container that doesn't exist."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    ABORTING = "ABORTING"
    FREEZING = "FREEZING"
    FROZEN = "FROZEN"
    THAWED = "THAWED"
    ERROR = "ERROR"  # Incus/LXD only: the instance failed (lxc-info never says it)
    MISSING = "MISSING"


# The root-owned helper that a sudoers rule allows (sudo_helper.py, installed by `python -m lxc_kernel.sudo
# grant`): a rule on the raw lxc-* tools would make the user root (lxc-start -s lxc.hook.pre-start=... ran a
# hook as host root; lxc-info -o FILE appended to a root-only file).
SUDO_HELPER = "/usr/local/libexec/lxc-kernel/lxck-sudo"


def sudo_hint(stderr: str) -> str:
    """What to do when sudo refused to run the helper: ``sudo -n`` fails at once instead of prompting."""
    if "password is required" in stderr or "may not run sudo" in stderr or "not allowed to execute" in stderr:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        return (f" (sudo has no rule that lets {user} run {SUDO_HELPER} without a password: root "
                f"grants one with `python3 -m lxc_kernel.sudo grant {user} --containers NAME`)")
    return ""


@dataclass(frozen=True)
class Tools:
    """How to invoke the lxc-* tools: which lxcpath, whether through the sudo helper, and on which host
    (``remote``: an ssh link, through which every call runs on the remote host)."""

    lxcpath: str | None = None
    sudo: bool = False
    remote: SshLink | None = None

    def argv(self, tool: str, *args: str, log: bool = True) -> list[str]:
        """The host argv: the tool's own argv, through the ssh link when the tools are remote."""
        argv = self.local_argv(tool, *args, log=log)
        return self.remote.wrap(argv, tty=False) if self.remote is not None else argv

    def local_argv(self, tool: str, *args: str, log: bool = True) -> list[str]:
        """The argv on the host that runs LXC (this one, or the remote one)."""
        if self.sudo:
            # The helper fixes the lxcpath and the log target itself and refuses -P, -o and -l from us.
            if self.lxcpath:
                raise ConfigError("lxcpath cannot be set with sudo: the sudo helper uses the system's lxcpath")
            return ["sudo", "-n", SUDO_HELPER, tool, *args]
        argv = [tool]
        if self.lxcpath:
            argv += ["-P", validate_path(self.lxcpath, "lxcpath")]
        if log:
            # Many lxc-* tools exit 1 with no message unless given a log target (measured, LXC 5.0.2).
            argv += ["-l", "ERROR", "-o", "/dev/stderr"]
        return argv + list(args)

    def require_own(self, what: str) -> None:
        """Raise a clear ConfigError for what the sudo helper does not allow: it needs host root."""
        if self.sudo:
            raise ConfigError(
                f"{what} needs host root, and this kernel reaches the containers through the sudo helper, "
                "which allows only attach, info, list, start, stop, freeze, unfreeze, cgroup limits, snapshots, "
                "copies and destroy: ask root to do it (or run a root kernel)"
            )

    def log_args(self, path: str) -> list[str]:
        """``-l ERROR -o PATH`` for a daemonizing tool; nothing through sudo (the helper logs and reports)."""
        return [] if self.sudo else ["-l", "ERROR", "-o", path]

    def run(
        self,
        tool: str,
        *args: str,
        timeout: float = 60.0,
        input: bytes | None = None,
        check: bool = True,
        log: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(tool, *args, log=log)
        if self.remote is not None and not self.remote.alive():
            raise self.remote.down_error(f"cannot run {tool}")
        try:
            proc = subprocess.run(
                argv,
                input=input.decode() if input is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.remote.env() if self.remote is not None else TOOL_ENV,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise LxcNotInstalled(argv[0]) from exc
        except subprocess.TimeoutExpired as exc:
            raise LxcCommandError(argv, -1, f"timed out after {timeout:g} s") from exc
        if self.remote is not None and proc.returncode == 255 and self.remote.lost():
            raise self.remote.down_error(f"{tool} could not run", 255, proc.stderr)
        if check and proc.returncode != 0:
            stderr = proc.stderr.rstrip() + sudo_hint(proc.stderr) if self.sudo else proc.stderr
            raise LxcCommandError(argv, proc.returncode, stderr or proc.stdout)
        return proc


ADVICE = {
    State.MISSING: "it does not exist. Create it (`%lxc create NAME` or `lxc-create`) or pick another with `%lxc use`.",
    State.STOPPED: "start it with `%lxc start` (or `lxc-start -n {name}`), then run the cell again.",
    State.FROZEN: "unfreeze it with `%lxc unfreeze` (or `lxc-unfreeze -n {name}`), then run the cell again.",
    State.FREEZING: "unfreeze it with `%lxc unfreeze` (or `lxc-unfreeze -n {name}`), then run the cell again.",
}


class Container:
    """One container, addressed by name through :class:`Tools`."""

    def __init__(self, name: str, tools: Tools | None = None) -> None:
        self.name = validate_name(name)
        self.tools = tools or Tools()

    def __repr__(self) -> str:
        return f"Container({self.name!r})"

    def run(self, tool: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.tools.run(tool, "-n", self.name, *args, **kw)  # type: ignore[arg-type]

    # -- state ------------------------------------------------------------------------------
    def state(self) -> State:
        proc = self.run("lxc-info", "-s", "-H", check=False, timeout=10)
        if proc.returncode != 0:
            if "doesn't exist" in proc.stderr or "does not exist" in proc.stderr or not proc.stderr.strip():
                return State.MISSING
            said = proc.stderr.rstrip() + sudo_hint(proc.stderr) if self.tools.sudo else proc.stderr
            raise LxcCommandError(self.tools.argv("lxc-info", "-n", self.name), proc.returncode, said)
        try:
            return State(proc.stdout.strip())
        except ValueError:
            raise LxcCommandError(["lxc-info"], 0, f"unexpected state {proc.stdout.strip()!r}") from None

    def exists(self) -> bool:
        return self.state() is not State.MISSING

    def init_pid(self) -> int | None:
        proc = self.run("lxc-info", "-p", "-H", check=False, timeout=10)
        out = proc.stdout.strip()
        return int(out) if proc.returncode == 0 and out.isdigit() else None

    def require_running(self) -> None:
        """Raise ContainerNotReady, with what to do, unless the container is RUNNING."""
        state = self.state()
        if state is not State.RUNNING:
            advice = ADVICE.get(state, "wait until it is RUNNING, then run the cell again.")
            raise ContainerNotReady(self.name, state.value, advice.format(name=self.name))

    def wait(self, state: State, timeout: float = 10.0) -> State:
        """Poll until ``state`` or the deadline; return the state reached (callers report it)."""
        deadline = time.monotonic() + timeout
        current = self.state()
        while current is not state and time.monotonic() < deadline:
            time.sleep(0.05)
            current = self.state()
        return current

    # -- lifecycle --------------------------------------------------------------------------
    def create(
        self,
        template: str,
        *,
        config_file: str | None = None,
        template_args: Sequence[str] = (),
        timeout: float = 900.0,
    ) -> subprocess.CompletedProcess[str]:
        """``lxc-create -t TEMPLATE [-f FILE] [-- ARGS...]``.

        ``template`` is a name under /usr/share/lxc/templates (``busybox``, ``debian``) or an absolute path;
        ``none`` only writes the config, and then ``lxc.rootfs.path`` must already exist (lxc-create(1)).
        """
        if template.startswith("/"):
            validate_path(template, "template")
        else:
            validate_name(template, "template name")
        args = ["-t", template]
        if config_file is not None:
            args += ["-f", validate_path(config_file, "config file")]
        if template_args:
            args += ["--", *template_args]
        return self.run("lxc-create", *args, timeout=timeout)

    def start(self, timeout: float = 10.0) -> State:
        # `lxc-start -d` daemonizes with its log file still open, so `-o /dev/stderr` kept our stderr
        # pipe open until the container stopped and subprocess.run hung: log to a file, read it back.
        # Through sudo the helper sets the log target (and the kernel may not read the config).
        configured = "" if self.tools.sudo else self._configured_log_file()
        if configured:
            # `-o` would override the container's own lxc.log.file (measured), and `%lxc log` reads that.
            offset = os.path.getsize(configured) if os.path.exists(configured) else 0
            args = ["-n", self.name, "-d"]
            proc = self.tools.run("lxc-start", *args, timeout=timeout + 5, check=False, log=False)
            if proc.returncode != 0:
                said = _log_tail(configured, start=offset)
                raise LxcCommandError(self.tools.argv("lxc-start", *args, log=False), proc.returncode,
                                      said or proc.stderr)
            return self.wait(State.RUNNING, timeout)
        with tempfile.NamedTemporaryFile("r", prefix="lxck-start-", suffix=".log") as log:
            args = ["-n", self.name, "-d", *self.tools.log_args(log.name)]
            proc = self.tools.run("lxc-start", *args, timeout=timeout + 5, check=False, log=False)
            if proc.returncode != 0:
                argv = self.tools.argv("lxc-start", *args, log=False)
                raise LxcCommandError(argv, proc.returncode, _log_tail(log.name) or proc.stderr)
        return self.wait(State.RUNNING, timeout)

    def stop(self, kill: bool = False, timeout: float = 30.0) -> State:
        args = ["-k"] if kill else ["-t", str(max(1, int(timeout)))]
        self.run("lxc-stop", *args, timeout=timeout + 10)
        # An ephemeral container (lxc.ephemeral = 1) is destroyed as it stops: MISSING is stopped too,
        # and waiting for STOPPED would sit out the whole deadline.
        deadline = time.monotonic() + 5.0
        state = self.state()
        while state not in (State.STOPPED, State.MISSING) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = self.state()
        return state

    def freeze(self, timeout: float = 10.0) -> State:
        self.run("lxc-freeze", timeout=timeout)
        return self.wait(State.FROZEN, timeout)

    def unfreeze(self, timeout: float = 10.0) -> State:
        self.run("lxc-unfreeze", timeout=timeout)
        return self.wait(State.RUNNING, timeout)

    def destroy(self, *, snapshots: bool = False, timeout: float = 120.0) -> None:
        args = ["-f"] + (["-s"] if snapshots else [])
        self.run("lxc-destroy", *args, timeout=timeout)

    def cgroup(self, key: str, value: str | None = None) -> str:
        args = [key] if value is None else ["--", key, value]
        return self.run("lxc-cgroup", *args, timeout=10).stdout.strip()

    def config_path(self) -> str:
        base = self.tools.lxcpath or _default_lxcpath()
        return os.path.join(base, self.name, "config")

    def _configured_log_file(self) -> str:
        """``lxc.log.file`` as written in the config file (read directly: no tool run per start)."""
        try:
            with open(self.config_path()) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return ""
        values = [line.split("=", 1)[1].strip() for line in lines
                  if "=" in line and line.split("=", 1)[0].strip() == "lxc.log.file"]
        return values[-1] if values else ""

    def restart(self, kill: bool = False, timeout: float = 30.0) -> State:
        if self.state() is not State.STOPPED:
            self.stop(kill=kill, timeout=timeout)
        return self.start(timeout=min(timeout, 30.0))

    # -- facts --------------------------------------------------------------------------------
    def info(self) -> ContainerInfo:
        """``lxc-info -H``: state, init PID, CPU (ns), memory (bytes) and IPs, as numbers."""
        proc = self.run("lxc-info", "-H", timeout=10)
        return ContainerInfo.parse(self.name, proc.stdout)

    def config_get(self, key: str) -> str:
        """The value of one config key as LXC reads it (``lxc-info -c KEY``; also for a stopped container)."""
        validate_config_key(key)
        proc = self.run("lxc-info", "-c", key, timeout=10)
        out = proc.stdout.strip()
        # lxc-info exits 0 for a key it doesn't know: its complaint is on stderr, and stdout lacks "KEY =".
        if not out.startswith(f"{key} ="):
            said = (proc.stderr.strip() + "\n" + out).strip() or "no output"
            raise LxcCommandError(self.tools.argv("lxc-info", "-n", self.name, "-c", key), 0, said)
        return out.partition("=")[2].strip()

    def idmap_values(self) -> list[str]:
        """Every ``lxc.idmap`` value as LXC reads the config (included files too); [] when privileged.

        ``lxc-info -c`` prints a list key's first value after ``KEY =`` and the others alone on the
        following lines (measured, LXC 5.0.2)."""
        argv = self.tools.argv("lxc-info", "-n", self.name, "-c", "lxc.idmap")
        out = self.run("lxc-info", "-c", "lxc.idmap", timeout=10).stdout.strip()
        if not out.startswith("lxc.idmap ="):
            raise LxcCommandError(argv, 0, out or "no output")
        first, *rest = out.splitlines()
        return [v for v in (first.partition("=")[2].strip(), *(line.strip() for line in rest)) if v]

    def config_set(self, key: str, value: str) -> None:
        """Write ``KEY = VALUE`` into the container's config file, replacing earlier lines of the key.

        LXC reads the file at start, so this takes effect at the next start (cgroup limits: see cgroup()).
        """
        validate_config_key(key)
        validate_config_value(value)
        self.tools.require_own("writing a container's config file")
        path = self.config_path()
        try:
            with open(path) as fh:
                text = fh.read()
        except FileNotFoundError:
            raise ContainerNotReady(self.name, State.MISSING.value, "it has no config file") from None
        lines = text.splitlines()
        where = [i for i, line in enumerate(lines) if line.split("=", 1)[0].strip() == key and "=" in line
                 and not line.lstrip().startswith("#")]
        new = f"{key} = {value}"
        if where:
            lines[where[0]] = new
            for i in reversed(where[1:]):
                del lines[i]
        else:
            lines.append(new)
        tmp = f"{path}.lxck-tmp"
        mode = os.stat(path).st_mode & 0o7777
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, path)

    def log_file(self) -> str:
        """Where this container's LXC log goes: ``lxc.log.file``, else NAME.log in its directory (where
        ``%lxc log --level`` puts it)."""
        try:
            configured = self.config_get("lxc.log.file")
        except LxcCommandError:
            configured = ""
        return configured or os.path.join(os.path.dirname(self.config_path()), f"{self.name}.log")

    # -- snapshots and copies ------------------------------------------------------------------
    def snapshots(self) -> list[Snapshot]:
        """``lxc-snapshot -L -C``: name, directory, time and comment of each snapshot."""
        out = self.run("lxc-snapshot", "-L", "-C", timeout=30).stdout
        return Snapshot.parse_list(out)

    def snapshot(self, comment: str | None = None, timeout: float = 600.0) -> str:
        """Take a snapshot (the container must be STOPPED: lxc-snapshot fails otherwise); return its name."""
        before = {s.name for s in self.snapshots()}
        if comment:
            # lxc-snapshot -c reads the comment file as root: the helper refuses it.
            self.tools.require_own("a snapshot comment")
            with tempfile.NamedTemporaryFile("w", prefix="lxck-comment-", suffix=".txt") as fh:
                fh.write(comment + "\n")
                fh.flush()
                self.run("lxc-snapshot", "-c", fh.name, timeout=timeout)
        else:
            self.run("lxc-snapshot", timeout=timeout)
        new = [s.name for s in self.snapshots() if s.name not in before]
        return new[-1] if new else "?"

    def restore(self, snapshot: str, new_name: str | None = None, timeout: float = 600.0) -> Container:
        """Restore ``snapshot`` over this container (STOPPED), or as a new container ``new_name``."""
        validate_name(snapshot, "snapshot name")
        args = ["-r", snapshot]
        if new_name is not None:
            args += ["-N", validate_name(new_name)]
        self.run("lxc-snapshot", *args, timeout=timeout)
        return Container(new_name, self.tools) if new_name else self

    def delete_snapshot(self, snapshot: str) -> None:
        validate_name(snapshot, "snapshot name")
        self.run("lxc-snapshot", "-d", snapshot, timeout=120)

    def copy(self, new_name: str, *, overlay: bool = False, allow_running: bool = False,
             timeout: float = 600.0) -> Container:
        """``lxc-copy -N NEW``: a full copy, or with ``overlay`` a copy-on-write overlay clone (``-s -B overlay``)."""
        validate_name(new_name)
        args = ["-N", new_name]
        if overlay:
            args += ["-s", "-B", "overlay"]
        if allow_running:
            args.append("-a")
        self.run("lxc-copy", *args, timeout=timeout)
        return Container(new_name, self.tools)

    def ephemeral_copy(self, new_name: str, *, allow_running: bool = False, timeout: float = 30.0) -> Container:
        """``lxc-copy -e``: a started overlay copy that LXC destroys as soon as it stops (lxc.ephemeral = 1)."""
        validate_name(new_name)
        args = ["-n", self.name, "-N", new_name, "-e", "-d", "-B", "overlay"]
        if allow_running:
            args.append("-a")
        # lxc-copy -e starts the copy daemonized, which keeps a /dev/stderr log target open (and our pipe
        # with it) for the container's lifetime, as lxc-start -d does: log to a file and read it back.
        with tempfile.NamedTemporaryFile("r", prefix="lxck-copy-", suffix=".log") as log:
            args += self.tools.log_args(log.name)
            proc = self.tools.run("lxc-copy", *args, timeout=timeout + 5, check=False, log=False)
            if proc.returncode != 0:
                raise LxcCommandError(self.tools.argv("lxc-copy", *args, log=False), proc.returncode,
                                      _log_tail(log.name) or proc.stderr)
        copy = Container(new_name, self.tools)
        copy.wait(State.RUNNING, timeout)
        return copy

    def clones(self) -> list[str]:
        """Names of the overlay clones that depend on this container (LXC refuses to destroy it then)."""
        path = os.path.join(os.path.dirname(self.config_path()), "lxc_snapshots")
        try:
            with open(path) as fh:
                lines = [line.strip() for line in fh if line.strip()]
        except OSError:
            return []
        # The file holds "lxcpath\nname\n" pairs, one per clone.
        return lines[1::2]


def _default_lxcpath() -> str:
    try:
        out = subprocess.run(
            ["lxc-config", "lxc.lxcpath"], capture_output=True, text=True, env=TOOL_ENV, timeout=10
        ).stdout.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired):
        out = ""
    return out or "/var/lib/lxc"


def list_names(tools: Tools | None = None) -> list[str]:
    """Names of all containers under the lxcpath (``lxc-ls -1``)."""
    proc = (tools or Tools()).run("lxc-ls", "-1", log=False, timeout=20)
    return [line for line in proc.stdout.split() if line]


def quote_args(argv: Sequence[str]) -> str:
    """For messages only: never passed to a shell."""
    import shlex

    return shlex.join(argv)


# -- values parsed from the tools' output ------------------------------------------------------

_CONFIG_KEY_RE = re.compile(r"lxc(\.[A-Za-z0-9_-]+)+")


def validate_config_key(key: str) -> str:
    """lxc.container.conf(5) keys: ``lxc.`` then dotted words (``lxc.cgroup.memory.limit_in_bytes``)."""
    if not _CONFIG_KEY_RE.fullmatch(key):
        raise ConfigError(f"invalid config key {key!r}: keys look like lxc.apparmor.profile")
    return key


def validate_config_value(value: str) -> str:
    # One config line per value: a newline would smuggle in another key.
    if any(ch in value for ch in "\n\r\0"):
        raise ConfigError("a config value must be a single line")
    return value


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    state: State
    pid: int | None = None
    cpu_ns: int | None = None
    memory_bytes: int | None = None
    ips: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, text: str) -> ContainerInfo:
        """Pure: parse ``lxc-info -H`` (``Key:   value`` lines; ``IP:`` repeats)."""
        fields: dict[str, str] = {}
        ips: list[str] = []
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "IP":
                ips.append(value)
            else:
                fields.setdefault(key, value)

        def number(key: str) -> int | None:
            value = fields.get(key, "")
            return int(value) if value.isdigit() else None

        try:
            state = State(fields.get("State", "MISSING"))
        except ValueError:
            state = State.MISSING
        return cls(name, state, number("PID"), number("CPU use"), number("Memory use"), tuple(ips))


_SNAPSHOT_RE = re.compile(r"(?P<name>\S+) \((?P<path>[^)]*)\) (?P<time>\d{4}:\d\d:\d\d \d\d:\d\d:\d\d)")


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: str
    time: str
    comment: str = ""

    @classmethod
    def parse_list(cls, text: str) -> list[Snapshot]:
        """Pure: parse ``lxc-snapshot -L -C`` (a header line per snapshot, comment lines after it)."""
        snaps: list[Snapshot] = []
        comment: list[str] = []
        for line in text.splitlines():
            m = _SNAPSHOT_RE.fullmatch(line.strip())
            if m:
                if snaps and comment:
                    snaps[-1] = Snapshot(snaps[-1].name, snaps[-1].path, snaps[-1].time, "\n".join(comment))
                comment = []
                snaps.append(cls(m["name"], m["path"], m["time"]))
            elif line.strip() and line.strip() != "No snapshots" and snaps:
                comment.append(line.strip())
        if snaps and comment:
            snaps[-1] = Snapshot(snaps[-1].name, snaps[-1].path, snaps[-1].time, "\n".join(comment))
        return snaps


LIST_COLUMNS = ("NAME", "STATE", "PID", "RAM", "SWAP", "AUTOSTART", "GROUPS", "INTERFACE", "IPV4", "IPV6",
                "UNPRIVILEGED")


def parse_fancy(text: str) -> list[dict[str, str]]:
    """Pure: parse ``lxc-ls -f`` output. Columns are left-aligned under their headers, so each value
    starts where its header does (values like ``10.0.3.5, 10.0.3.6`` contain spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        row = {}
        for i, name in enumerate(names):
            end = starts[i + 1] if i + 1 < len(starts) else None
            row[name] = line[starts[i] : end].strip()
        rows.append(row)
    return rows


def list_containers(tools: Tools | None = None, columns: Sequence[str] = LIST_COLUMNS) -> list[dict[str, str]]:
    """Every container with the given ``lxc-ls -f -F`` columns, as dicts keyed by column name."""
    for column in columns:
        if column not in LIST_COLUMNS:
            raise ConfigError(f"unknown lxc-ls column {column!r}: choose from {', '.join(LIST_COLUMNS)}")
    proc = (tools or Tools()).run("lxc-ls", "-f", "-F", ",".join(columns), log=False, timeout=30)
    return parse_fancy(proc.stdout)


def cgroup_v2() -> bool:
    """True on a unified (v2-only) cgroup host, where limits have other key names (memory.max, cpu.max)."""
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")
