"""The Incus and LXD transport: the shell through ``incus exec -t`` (or LXD's ``lxc exec -t``), helpers through ``-T``.

The byte stream is the one the session already speaks; what differs is handled here (measured, Incus 6.0.4
and LXD 5.0.2, busybox ash and bash):

* **Environment.** ``exec`` passes none of the client's variables, and ``--user N`` sets no HOME or USER and
  keeps gid 0 unless ``--group N`` is given too: both are always given, and the curated environment goes on
  ``--env``. ``--env K=V`` puts the value on the client's argv *and* on the daemon's ``incusd forkexec``
  command line, which every user of that host reads (``ps``). So the variables given with ``env`` (which
  may be secrets) travel through a pipe-mode helper into a 0600 file in the instance's /tmp, which the
  shell sources and removes before anything else runs.
* **Signals.** The interactive client ignores SIGTERM, SIGINT and SIGQUIT; SIGKILL kills it but leaves the
  shell's jobs running in the instance; SIGHUP ends the session, and then bash kills its jobs but ash leaves
  them. The shell is not a host child of the client (its host parent is ``incusd forkexec``), so killing
  the client's process tree cannot reach it. A closed channel therefore also kills, from inside, every
  process of the shell's session (``NSsid`` in ``/proc/PID/status`` equal to the shell's PID).
* **Liveness.** Killing the cluster member that hosts the instance gives a session through another member
  no end of file, ever, and a state query through the surviving member answers only after 10 s ("Missing
  event connection with target cluster member"), while the instance *list* says ``Error`` for it at once.
  :meth:`ExecTransport.check_alive`, called by the session at each health tick of a silent cell, probes the
  hosting member's address (a TCP connect: refused at once when its daemon is gone) and, at most every 3 s,
  reads the instance's status from the list (error, frozen, stopped, deleted).
* **Process visibility.** A local daemon's instances are unprivileged containers whose processes the host
  sees; ``NSpid`` in ``/proc/PID/status`` maps the shell's ``$$`` to its host PID, and its host parent,
  ``incusd forkexec NAME LXCPATH ...``, says which instance and daemon it belongs to. On another member or
  remote (or for a kernel that is not root) the host sees nothing: input detection then runs inside.
* **Line endings.** One ``onlcr`` layer (``\\r\\n``) where lxc-attach has two (``\\r\\r\\n``): the client puts
  the host's terminal in raw mode, and the session's ``stty -onlcr`` clears the inner one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .attach import AUTO_SHELL, AttachOptions
from .bounded import HelperTimeout, OutputTooLarge, run_bounded
from .errors import ConfigError, ContainerNotReady, LxcKernelError
from .protocol import new_token, sh_quote
from .spawn import TOOL_ENV
from .transport import Capabilities, PtyChannel, Transport

# Which client drives which manager, and the daemon directory its local instances live under.
CLIENTS = {"incus": ("Incus", "INCUS_DIR", "/var/lib/incus"), "lxc": ("LXD", "LXD_DIR", "/var/lib/lxd")}
# The host variables the client itself needs (its configuration: remotes, certificates; which daemon it
# talks to). Nothing else of the kernel's environment reaches it, and it passes none of these inside.
CLIENT_VARS = ("HOME", "XDG_CONFIG_HOME", "INCUS_CONF", "INCUS_DIR", "INCUS_SOCKET", "LXD_CONF", "LXD_DIR",
               "LXD_SOCKET")

# Incus/LXD instance names are hostnames: letters, digits and '-', at most 63, not starting or ending
# with '-'. Remote names are keys of the client's config.yml; projects are path-safe words.
_INSTANCE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_REMOTE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

# Sourced by the shell's wrapper, then removed: the `env` values that must not be on any command line.
_ENV_FILE_WRITE = 'umask 077; f=$(mktemp /tmp/.lxck-env.XXXXXX) && cat > "$f" && printf "%s\\n" "$f"'
_ENV_FILE_SOURCE = '. "$1"; rm -f "$1"; shift; exec "$@"'
_ENV_FILE_RE = re.compile(r"/tmp/\.lxck-env\.[A-Za-z0-9]{6,32}")

# Kill every process of the shell's session, from inside (see the module docstring). $1 is the shell's
# PID inside, $2 the session's marker: if a process with that PID still runs and is not our shell (the
# PID was reused), nothing is killed. While any process still has the session's ID the kernel cannot give
# that number to a new process, so every process found with it is ours.
_END_SESSION = (
    'p=$1; if [ -e "/proc/$p" ] && ! grep -qsF "LXCK_SESSION=$2" "/proc/$p/environ"; then exit 0; fi; l=;'
    ' for s in /proc/[0-9]*/status; do while read -r k v; do case $k in NSsid:)'
    ' [ "$v" = "$p" ] && { d=${s%/status}; l="$l ${d#/proc/}"; }; break;; esac; done < "$s"; done 2>/dev/null;'
    ' [ -z "$l" ] || kill -9 $l 2>/dev/null; exit 0'
)

STATE_EVERY = 3.0  # seconds between two state queries from check_alive (a process each: ~40 ms)
STATE_TIMEOUT = 4.0  # a state query slower than this does not prove anything alone
PROBE_TIMEOUT = 1.5  # TCP connect to the member hosting the instance
END_TIMEOUT = 3.0  # the inside clean-up at close


def validate_instance(name: str) -> str:
    if not isinstance(name, str) or not _INSTANCE_RE.fullmatch(name) or name.isdigit():
        raise ConfigError(f"invalid instance name {name!r}: Incus and LXD names are 1-63 letters, digits or "
                          "'-', not starting or ending with '-' (no '.' or '_')")
    return name


@dataclass
class _Where:
    """Where the instance runs, learnt once from the daemon: its member's address, for the liveness probe."""

    location: str = ""
    address: tuple[str, int] | None = None


class ExecChannel(PtyChannel):
    """The client's PTY; closing it also ends, from inside, every process of the shell's session."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], dimensions: tuple[int, int],
                 transport: ExecTransport, marker: str) -> None:
        super().__init__(argv, env, dimensions)
        self._transport = transport
        self.marker = marker
        self.shell_pid: int | None = None  # the shell's $$ inside, once the session knows it

    def close(self) -> None:
        if not self._closed:
            # The client first: SIGHUP ends its session (SIGTERM is ignored; SIGKILL alone leaves the jobs).
            if self.alive:
                self.hangup()
                self.wait(0.5)
            self._transport.end_session(self.shell_pid, self.marker)
        super().close()


class ExecTransport(Transport):
    """``incus exec`` / ``lxc exec``: ``-t`` for the shell, ``-T`` for pipe helpers.

    ``options.container`` is the instance, on ``remote`` (``REMOTE:NAME``) when given, in ``project`` when
    given. User, group, working directory, environment, shell and TERM come from ``options``; the classic
    lxc-attach choices (namespaces, elevated privileges, -R, sudo) have no meaning here and are refused.
    """

    def __init__(self, options: AttachOptions, *, client: str = "incus", remote: str | None = None,
                 project: str | None = None) -> None:
        if client not in CLIENTS:
            raise ConfigError(f"invalid client {client!r}: choose 'incus' (Incus) or 'lxc' (LXD)")
        validate_instance(options.container)
        if remote is not None and not _REMOTE_RE.fullmatch(remote):
            raise ConfigError(f"invalid remote {remote!r}: use letters, digits, '_', '.' or '-'")
        if project is not None and not _PROJECT_RE.fullmatch(project):
            raise ConfigError(f"invalid project {project!r}: use 1-63 letters, digits, '_', '.' or '-'")
        manager = CLIENTS[client][0]
        refused = [what for what, on in (("namespaces", options.namespaces), ("elevated privileges", options.elevated),
                                         ("remount_sys_proc", options.remount_sys_proc),
                                         ("sudo", options.tools.sudo)) if on]
        if refused:
            raise ConfigError(f"{', '.join(refused)}: not supported by {manager} (these are lxc-attach options; "
                              f"{manager} runs the shell in all the instance's namespaces, and a non-root kernel "
                              f"reaches it through group `{'incus' if client == 'incus' else 'lxd'}`)")
        self.options = options
        self.client = client
        self.remote = remote
        self.project = project
        self.manager = manager
        self.name = "incus" if client == "incus" else "lxd"
        # The host sees the processes of a local daemon's instances, and reads their syscall and fd files
        # only as root. Narrowed when the shell starts (another member, another daemon).
        self.capabilities = Capabilities(host_pids=remote is None and os.geteuid() == 0, shell_is_descendant=False,
                                         eof_on_death=False)
        self._where: _Where | None = None
        self._last_state = 0.0
        self._slow = 0  # state queries in a row that got no answer in time
        self._unreachable = False

    # -- argv ------------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return f"{self.remote}:{self.options.container}" if self.remote else self.options.container

    def describe(self) -> str:
        where = f" on remote {self.remote!r}" if self.remote else ""
        project = f" (project {self.project!r})" if self.project else ""
        return f"{self.manager} instance {self.options.container!r}{where}{project}"

    def _base(self, *args: str) -> list[str]:
        return [self.client, *args, *(["--project", self.project] if self.project else [])]

    def exec_argv(self, command: Sequence[str], *, tty: bool, extra_env: Sequence[str] = ()) -> list[str]:
        """``CLIENT exec TARGET -t|-T [--user --group] --env ... -- COMMAND``: the options' user and curated
        environment, minus the ``env`` values (see :meth:`open_shell`)."""
        opts = self.options
        argv = self._base("exec", self.target)
        argv.append("-t" if tty else "-T")
        if opts.uid is not None or opts.gid is not None:
            # --user alone keeps gid 0 (measured, Incus 6.0): always pass both.
            uid = opts.uid if opts.uid is not None else 0
            argv += ["--user", str(uid), "--group", str(opts.gid if opts.gid is not None else uid)]
        passed = opts.passed_env()
        for key, value in opts.environment().items():
            if key not in passed:
                argv += ["--env", f"{key}={value}"]
        for item in extra_env:
            argv += ["--env", item]
        return [*argv, "--", *command]

    def shell_argv(self) -> list[str]:
        return self._shell_argv(new_token(), None)

    def _shell_argv(self, marker: str, env_file: str | None) -> list[str]:
        command = [self.options.shell] if self.options.shell else list(AUTO_SHELL)
        if env_file is not None:
            command = ["/bin/sh", "-c", _ENV_FILE_SOURCE, "lxck-env", env_file, *command]
        argv = self.exec_argv(command, tty=True, extra_env=[f"LXCK_SESSION={marker}"])
        if self.options.cwd:
            argv[argv.index("--"):argv.index("--")] = ["--cwd", self.options.cwd]
        return argv

    def pipe_argv(self, argv: Sequence[str]) -> list[str]:
        return self.exec_argv(argv, tty=False)

    def spawn_env(self) -> dict[str, str]:
        """The client's environment: the tools' PATH and its own configuration, nothing of the kernel's."""
        env = dict(TOOL_ENV)
        for key in CLIENT_VARS:
            if key in os.environ:
                env[key] = os.environ[key]
        if "HOME" not in env:
            try:
                env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
            except KeyError:
                pass
        return env

    # -- the shell -------------------------------------------------------------------------------
    def open_shell(self, dimensions: tuple[int, int] = (24, 120)) -> PtyChannel:
        env_file = self._write_env_file() if self.options.passed_env() else None
        marker = new_token()
        self._unreachable = False
        return ExecChannel(self._shell_argv(marker, env_file), self.spawn_env(), dimensions, self, marker)

    def _write_env_file(self) -> str:
        """The ``env`` values into a 0600 file of the shell's user in the instance, through a pipe."""
        body = "".join(f"{key}={sh_quote(value)}; export {key}\n" for key, value in self.options.passed_env().items())
        try:
            result = self.run(["/bin/sh", "-c", _ENV_FILE_WRITE], input=body.encode(), timeout=30, limit=4096,
                              what="the environment file's path")
        except LxcKernelError as exc:
            raise LxcKernelError(f"could not pass the environment variables into {self.describe()}: {exc}") from exc
        path = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode != 0 or not _ENV_FILE_RE.fullmatch(path):
            said = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
            raise LxcKernelError(f"could not write the environment variables into {self.describe()}'s /tmp: {said}")
        return path

    def shell_host_pid(self, channel: PtyChannel, shell_pid: int | None = None) -> int | None:
        """Remember the shell's PID inside (for the clean-up at close) and find it in the host's /proc."""
        if isinstance(channel, ExecChannel):
            channel.shell_pid = shell_pid
        if not self.capabilities.host_pids or shell_pid is None:
            return None
        found = find_host_pid(shell_pid, self._lxc_name(), self._local_lxcpath())
        if found is None:
            # On another cluster member or daemon: the host does not see this shell.
            self.capabilities = dataclasses.replace(self.capabilities, host_pids=False)
        return found

    def _lxc_name(self) -> str:
        """The name the daemon gives the container in liblxc: ``PROJECT_NAME`` outside the default project."""
        project = self.project or ""
        return f"{project}_{self.options.container}" if project and project != "default" else self.options.container

    def _local_lxcpath(self) -> str:
        _, var, default = CLIENTS[self.client]
        return os.path.join(os.environ.get(var) or default, "containers")

    def end_session(self, shell_pid: int | None, marker: str) -> None:
        """Kill, from inside, every process left in the shell's session (its jobs). Best effort, bounded:
        skipped when the instance is known to be unreachable (a dead cluster member would hold it)."""
        if shell_pid is None or self._unreachable:
            return
        argv = [*self._base("exec", self.target), "-T", "--", "/bin/sh", "-c", _END_SESSION, "lxck-end",
                str(shell_pid), marker]
        try:
            run_bounded(argv, timeout=END_TIMEOUT, stdout_limit=4096, env=self.spawn_env(),
                        what="the session clean-up")
        except LxcKernelError:
            pass

    # -- liveness --------------------------------------------------------------------------------
    def check_alive(self) -> None:
        """Raise ContainerNotReady when the instance cannot be running the shell any more: its cluster
        member does not answer, or it is frozen, stopped or gone. Called while a cell is silent."""
        where = self._where
        if where is not None and where.address is not None and not _reachable(where.address):
            self._unreachable = True
            raise ContainerNotReady(self.target, "unreachable", self._member_advice(where))
        now = time.monotonic()
        if now - self._last_state < STATE_EVERY:
            return
        self._last_state = now
        status, location = self._status()
        if status is None:
            # The daemon did not answer in time: slow is not dead, unless it stays so.
            self._slow += 1
            if self._slow < 2:
                return
            self._unreachable = True
            raise ContainerNotReady(self.target, "unreachable", f"{self.client} did not answer a state query "
                                    f"twice in {STATE_TIMEOUT:g} s; the shell cannot be reached")
        self._slow = 0
        if where is None:
            self._where = where = self._locate(location)
        if status == "Running":
            return
        if status == "Error":
            # What the instance list says for an instance whose member is gone (at once, where a state query
            # through the surviving member takes 10 s to fail).
            self._unreachable = True
            raise ContainerNotReady(self.target, "unreachable", self._member_advice(where))
        if status == "missing":
            raise ContainerNotReady(self.target, "gone", "it was deleted; the shell's state is lost")
        if status == "Freezing":
            status = "Frozen"  # caught mid-way; by the time anyone reads the error it is frozen
        resume = "resume" if self.client == "incus" else "start"  # LXD resumes a frozen instance with start
        advice = {"Frozen": f"resume it (`{self.client} {resume} {self.target}`)",
                  "Stopped": f"start it (`{self.client} start {self.target}`)"}.get(status, "")
        raise ContainerNotReady(self.target, status.lower(), advice or "the shell cannot run in it")

    @staticmethod
    def _member_advice(where: _Where) -> str:
        at = f" ({where.address[0]}:{where.address[1]})" if where.address else ""
        member = f"cluster member {where.location!r}{at}, which runs it," if where.location else "its daemon"
        return f"{member} does not answer. The shell's state is lost; run the cell again once it is back."

    def _status(self) -> tuple[str | None, str]:
        """The instance's status (``Running``, ``Frozen``, ``Error``..., or ``missing``) and location, from
        the instance list, which the daemon answers from its database at once even when the member that
        runs the instance is dead. None when the daemon did not answer in time."""
        name = self.options.container
        path = f"/1.0/instances?recursion=1&filter=name+eq+{name}"
        try:
            result = run_bounded(self._query_argv(path), timeout=STATE_TIMEOUT, stdout_limit=16 << 20,
                                 env=self.spawn_env(), what="the instance's state")
        except (HelperTimeout, OutputTooLarge):
            return None, ""
        if result.returncode != 0:
            said = result.stderr.decode("utf-8", "replace").strip()
            self._unreachable = True
            raise ContainerNotReady(self.target, "unreachable", f"{self.client} says: {said or 'no answer'}")
        try:
            listing = json.loads(result.stdout)
        except ValueError:
            return None, ""
        # Filtering is an API extension: without it the whole list comes back, so match the name here.
        for inst in listing if isinstance(listing, list) else []:
            if isinstance(inst, dict) and inst.get("name") == name:
                return str(inst.get("status", "")), str(inst.get("location", "") or "")
        return "missing", ""

    def _query_argv(self, path: str) -> list[str]:
        project = self.project or self._user_project()
        if project:
            path += ("&" if "?" in path else "?") + f"project={project}"
        return [self.client, "query", f"{self.remote}:{path}" if self.remote else path]

    def _user_project(self) -> str | None:
        """The project the client picks by itself for a user served by incus-user: ``user-UID`` when the
        root socket is not writable and the user socket is there. `exec` and `list` add it; `query` does
        not (measured, Incus 6.0.4: "User does not have permissions for project default")."""
        if self.remote is not None or self.client != "incus":
            return None
        var_dir = os.environ.get("INCUS_DIR") or CLIENTS["incus"][2]
        root_socket = os.environ.get("INCUS_SOCKET") or os.path.join(var_dir, "unix.socket")
        if os.access(root_socket, os.W_OK) or not os.path.exists(os.path.join(var_dir, "unix.socket.user")):
            return None
        return f"user-{os.getuid()}"

    def _locate(self, location: str) -> _Where:
        """The address of the cluster member that runs the instance, if the daemon is clustered and that
        address answers now (a kernel host that cannot reach members directly then skips the probe)."""
        if not location or location == "none":
            return _Where()
        try:
            result = run_bounded(self._query_argv(f"/1.0/cluster/members/{location}"), timeout=STATE_TIMEOUT,
                                 stdout_limit=1 << 20, env=self.spawn_env(), what="the cluster member")
            member = json.loads(result.stdout) if result.returncode == 0 else None
        except (LxcKernelError, ValueError):
            return _Where(location)
        parts = urlsplit(str(member.get("url", "")) if isinstance(member, dict) else "")
        if not parts.hostname:
            return _Where(location)
        address = (parts.hostname, parts.port or 8443)
        return _Where(location, address if _reachable(address) else None)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def find_host_pid(shell_pid: int, lxc_name: str, lxcpath: str) -> int | None:
    """The host PID of the process that is ``shell_pid`` inside container ``lxc_name`` of the daemon whose
    containers live in ``lxcpath``: the last ``NSpid`` entry names the PID inside, and the host parent is
    ``incusd forkexec NAME LXCPATH ...`` (``lxd forkexec`` for LXD). None when not exactly one matches."""
    want = str(shell_pid)
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                status = fh.read()
        except OSError:
            continue
        ns = ppid = None
        for line in status.splitlines():
            if line.startswith("PPid:"):
                ppid = line.split()[1]
            elif line.startswith("NSpid:"):
                ns = line.split()[1:]
                break
        if not ns or len(ns) < 2 or ns[-1] != want or ppid is None:
            continue
        try:
            with open(f"/proc/{ppid}/cmdline", "rb") as fh:
                parent = fh.read().split(b"\0")
        except OSError:
            continue
        if len(parent) > 3 and parent[1] == b"forkexec" and parent[2].decode() == lxc_name \
                and os.path.normpath(parent[3].decode()) == os.path.normpath(lxcpath):
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None
