"""How the shell is attached: a frozen value of lxc-attach options that builds the argv, and the
lxc-attach transport built from it."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .errors import ConfigError
from .lxc import Tools, validate_name, validate_path
from .spawn import TOOL_ENV
from .transport import Capabilities, PtyChannel, Transport, child_pid

# The shell when none is configured: bash if the container has it, else /bin/sh (busybox ash).
# A constant script: nothing from the user is ever spliced into it.
AUTO_SHELL = (
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash --noprofile --norc --noediting; fi; exec /bin/sh",
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMESPACES = ("MOUNT", "PID", "UTSNAME", "IPC", "USER", "NETWORK")
ELEVATED = ("CAP", "CGROUP", "LSM")

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]*\$?")


def validate_env_name(name: str) -> str:
    if not _ENV_NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid environment variable name {name!r}")
    return name


def validate_env_value(name: str, value: str) -> str:
    if "\0" in value:
        raise ConfigError(f"the value of {name} contains a NUL byte")
    return value


def parse_flags(value: str | Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"MOUNT|PID"``, ``"mount,pid"`` or a list -> validated upper-case names."""
    items = re.split(r"[|,\s]+", value) if isinstance(value, str) else list(value)
    flags = tuple(dict.fromkeys(item.strip().upper() for item in items if item.strip()))
    bad = [f for f in flags if f not in allowed]
    if bad:
        raise ConfigError(f"unknown {what} {', '.join(bad)}: choose from {', '.join(allowed)}")
    return flags


@dataclass(frozen=True)
class AttachOptions:
    """Everything that decides how ``lxc-attach`` enters the container.

    ``uid``/``gid`` are numeric: user names are resolved inside the container by the caller, because
    the container's /etc/passwd is the one that counts. ``home``/``user_name`` feed the curated
    environment.
    """

    container: str
    tools: Tools = field(default_factory=Tools)
    uid: int | None = None
    gid: int | None = None
    user_name: str = "root"
    home: str = "/root"
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    shell: str | None = None
    namespaces: tuple[str, ...] = ()
    elevated: tuple[str, ...] = ()
    remount_sys_proc: bool = False
    term: str = "xterm-256color"

    def __post_init__(self) -> None:
        validate_name(self.container)
        for key, value in self.env:
            validate_env_name(key)
            validate_env_value(key, value)
        for number, what in ((self.uid, "uid"), (self.gid, "gid")):
            if number is not None and not (0 <= number < 2**32 - 1):
                raise ConfigError(f"invalid {what} {number}")
        if self.cwd is not None:
            validate_path(self.cwd, "working directory")
        if self.shell is not None:
            validate_path(self.shell, "shell")
        parse_flags(self.namespaces, NAMESPACES, "namespace")
        parse_flags(self.elevated, ELEVATED, "privilege")
        if not re.fullmatch(r"[A-Za-z0-9.+_-]{1,64}", self.term):
            raise ConfigError(f"invalid TERM {self.term!r}")
        if self.tools.sudo and self.passed_env():
            # sudo's env_reset drops the variables lxc-attach would keep, and `sudo --preserve-env=NAMES`
            # works only where sudoers grants SETENV for the command; the other way in is argv, where
            # every user of the host reads it (`ps`). Refused rather than leaked.
            raise ConfigError(
                "env and keep_env cannot be used with sudo: the values would have to be on the host's "
                "command line, where every user can read them (sudo drops them from the environment). "
                "Put them in a file in the container and source it in a cell instead"
            )

    def with_(self, **changes: object) -> AttachOptions:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def warnings(self) -> list[str]:
        """lxc-attach(1): -s implies -e, and -e may leak host privileges into the container."""
        out = []
        if self.namespaces:
            out.append("namespaces: attaching to only some namespaces implies elevated privileges "
                       "(lxc-attach -s), which may leak host privileges into the container")
        if self.elevated:
            out.append("elevated privileges (lxc-attach -e) may leak host privileges into the container")
        return out

    def environment(self) -> dict[str, str]:
        """The curated environment of the shell: nothing from the host unless asked for."""
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": self.home,
            "USER": self.user_name,
            "LOGNAME": self.user_name,
            "TERM": self.term,
            "LANG": "C.UTF-8",
        }
        env.update(self.env)
        return env

    def passed_env(self) -> dict[str, str]:
        """The variables given with ``env``/``keep_env``. Their values may be secrets, and every user of
        the host can read a command line (``ps``), so they reach lxc-attach through its environment,
        which only root and the kernel's user can read (``/proc/PID/environ``), and its argv names them
        (``--keep-var``). PATH stays on argv: the spawn environment's PATH is what finds lxc-attach."""
        return {key: value for key, value in self.env if key != "PATH"}

    def argv(self, command: Sequence[str]) -> list[str]:
        """The lxc-attach argv that runs ``command`` (an argv inside the container), as the host that runs
        LXC runs it (a transport wraps it for a remote host). Run it with :meth:`spawn_env` as its
        environment, or the ``env`` values stay out of the shell."""
        argv = self.tools.local_argv("lxc-attach", "-n", self.container, log=True)
        # --clear-env, and the kernel also spawns lxc-attach with an environment of its own making: the
        # connection file, Jupyter's variables and any secret of the host stay out either way.
        argv.append("--clear-env")
        passed = self.passed_env()
        for key, value in self.environment().items():
            if key not in passed:
                argv += ["-v", f"{key}={value}"]
        for key in passed:
            argv += ["--keep-var", key]
        if self.uid is not None:
            # -u alone leaves gid 0 (measured, LXC 5.0.2): always pass both.
            argv += ["-u", str(self.uid), "-g", str(self.gid if self.gid is not None else self.uid)]
        elif self.gid is not None:
            argv += ["-g", str(self.gid)]
        if self.namespaces:
            argv += ["-s", "|".join(self.namespaces)]
        if self.elevated:
            # -e takes an *optional* argument (--elevated-privileges[=PRIVILEGES]): a separate "CAP" word
            # was run as the command ("Failed to exec CAP", measured), so it must be attached with "=".
            argv.append("--elevated-privileges=" + "|".join(self.elevated))
        if self.remount_sys_proc:
            argv.append("-R")
        return [*argv, "--", *command]

    def shell_command(self) -> list[str]:
        """The shell's argv inside the container."""
        return [self.shell] if self.shell else list(AUTO_SHELL)

    def shell_argv(self) -> list[str]:
        return self.argv(self.shell_command())

    def spawn_env(self) -> dict[str, str]:
        """The environment of the lxc-attach processes: the tools' PATH, and the passed variables."""
        return {**TOOL_ENV, **self.passed_env()}


def env_pairs(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((validate_env_name(k), validate_env_value(k, str(v))) for k, v in mapping.items())


def valid_user_name(name: str) -> bool:
    return bool(_USER_NAME_RE.fullmatch(name)) and len(name) <= 32


class LxcAttachTransport(Transport):
    """The classic LXC transport: ``lxc-attach`` with a PTY for the shell, over pipes for helpers.

    lxc-attach forks the shell as its direct child, so the host sees it (and its commands) in /proc,
    unless lxc-* runs through sudo: a normal user cannot read another user's ``syscall`` or ``fd``
    (measured, LXC 5.0.2), so input detection then runs inside the container instead.
    """

    name = "lxc-attach"

    def __init__(self, options: AttachOptions) -> None:
        if options.tools.remote is not None:
            raise ConfigError("these attach options are for a remote host: use ssh.SshTransport")
        self.options = options
        self.capabilities = Capabilities(host_pids=not options.tools.sudo and os.geteuid() == 0)

    def describe(self) -> str:
        return f"container {self.options.container!r}"

    def shell_argv(self) -> list[str]:
        return self.options.shell_argv()

    def pipe_argv(self, argv: Sequence[str]) -> list[str]:
        return self.options.argv(argv)

    def spawn_env(self) -> dict[str, str]:
        return self.options.spawn_env()

    def shell_host_pid(self, channel: PtyChannel, shell_pid: int | None = None) -> int | None:
        return child_pid(channel.pid) if self.capabilities.host_pids else None
