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

from .errors import ConfigError, ContainerNotReady, LxcCommandError, LxcNotInstalled

# lxc(7): a name becomes a directory under lxcpath and the default hostname, so keep to the
# portable hostname alphabet plus '_' and '.'; this also rules out every shell metacharacter.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# The environment the lxc-* tools themselves run with: the kernel's PATH (to find them) and
# nothing else of the kernel's (connection file, tokens, secrets), so nothing leaks through them.
TOOL_ENV = {
    "PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}


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
    MISSING = "MISSING"


@dataclass(frozen=True)
class Tools:
    """How to invoke the lxc-* tools: which lxcpath, and whether through ``sudo -n``."""

    lxcpath: str | None = None
    sudo: bool = False

    def argv(self, tool: str, *args: str, log: bool = True) -> list[str]:
        argv = ["sudo", "-n", "--"] if self.sudo else []
        argv.append(tool)
        if self.lxcpath:
            argv += ["-P", validate_path(self.lxcpath, "lxcpath")]
        if log:
            # Many lxc-* tools exit 1 with no message unless given a log target (LXC-FACTS).
            argv += ["-l", "ERROR", "-o", "/dev/stderr"]
        return argv + list(args)

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
        try:
            proc = subprocess.run(
                argv,
                input=input.decode() if input is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=TOOL_ENV,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise LxcNotInstalled(argv[0]) from exc
        except subprocess.TimeoutExpired as exc:
            raise LxcCommandError(argv, -1, f"timed out after {timeout:g} s") from exc
        if check and proc.returncode != 0:
            stderr = proc.stderr
            if self.sudo and "password is required" in stderr:
                stderr += " (sudo -n needs a NOPASSWD rule for the lxc-* tools)"
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
            raise LxcCommandError(self.tools.argv("lxc-info", "-n", self.name), proc.returncode, proc.stderr)
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
        with tempfile.NamedTemporaryFile("r", prefix="lxck-start-", suffix=".log") as log:
            args = ["-n", self.name, "-d", "-l", "ERROR", "-o", log.name]
            proc = self.tools.run("lxc-start", *args, timeout=timeout + 5, check=False, log=False)
            if proc.returncode != 0:
                argv = self.tools.argv("lxc-start", *args, log=False)
                raise LxcCommandError(argv, proc.returncode, log.read() or proc.stderr)
        return self.wait(State.RUNNING, timeout)

    def stop(self, kill: bool = False, timeout: float = 30.0) -> State:
        args = ["-k"] if kill else ["-t", str(max(1, int(timeout)))]
        self.run("lxc-stop", *args, timeout=timeout + 10)
        return self.wait(State.STOPPED, 5.0)

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
