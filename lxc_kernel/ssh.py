"""Classic LXC on another host over ssh: the target, one ControlMaster link the kernel owns, and the transport.

The kernel opens one OpenSSH master connection (:class:`SshLink`) and runs everything through it: the shell
(``ssh -tt ... lxc-attach ...``), the pipe helpers (``ssh -T``) and, through ``Tools(remote=link)``, every
``lxc-*`` lifecycle call. The master is the kernel's own child: never daemonized (no ``-f``, no
ControlPersist), so the kernel's watchdog sees it as a descendant and kills it if the kernel dies, and
:meth:`SshLink.close` ends it by its PID.

What differs from a local ``lxc-attach`` (measured on OpenSSH 9.2, LXC 5.0.2), and where it is handled:

- The host cannot see the remote processes, so ``Capabilities.host_pids`` is False: input detection runs
  inside the container through a pipe helper.
- A signal to the ssh client ends it in about 10 ms but leaves the container's shell behind (a ``[bash]``
  zombie, and its ``&`` jobs running): :meth:`SshTransport.end_shell` kills the shell's process tree and
  session inside the container, through the link, before the session kills the client.
- A cut link gives no EOF until the master notices (ServerAlive here: about 3 s) and then the client exits
  255: the shell's channel and every ``lxc-*`` call then raise :class:`LinkDown`, which names the link.
- Nothing of the kernel's environment travels: clients run with PATH only (Debian's ssh_config sends
  ``LANG LC_*``, and SendEnv sends only variables that exist). ``env``/``keep_env`` values are refused,
  as with sudo: over ssh they could only travel on the remote host's command line.
- BatchMode=yes: ssh never prompts (a missing key or an unknown host key is an error, not a hang).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .bounded import PipeResult
from .errors import ConfigError, LxcKernelError, LxcNotInstalled
from .spawn import TOOL_ENV, reset_child_signals
from .transport import Capabilities, PtyChannel, Transport

if TYPE_CHECKING:
    from .attach import AttachOptions

# The ssh clients' whole environment: PATH to find ssh. No LANG/LC_* (SendEnv), no SSH_AUTH_SOCK, nothing
# of the kernel's (connection file, tokens). ssh finds ~/.ssh through the password database, not $HOME.
SSH_ENV = {"PATH": TOOL_ENV["PATH"]}

# How fast a dead link is noticed: the master sends a keepalive after 1 s of silence and gives up after 3
# unanswered ones. A loaded 2-core host answered every keepalive in tests; 1 x 2 would be faster but
# tighter than the scheduling delays seen here.
ALIVE_INTERVAL = 1
ALIVE_COUNT = 3

# Options every ssh of the link gets. BatchMode: never prompt. ProxyCommand /bin/false: when the master is
# gone, a client given -S would silently open a connection of its own (ssh(1), ControlPath); this makes it
# fail at once instead, so nothing runs outside the link the kernel owns and closes.
_CLIENT_OPTIONS = ("-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ProxyCommand=/bin/false",
                   "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                   "-o", "LogLevel=ERROR")
# The master: in the foreground as the kernel's child (no ControlPersist, which would fork it away from
# the kernel and the watchdog), with keepalives so a dead link ends it.
_MASTER_OPTIONS = ("-o", "BatchMode=yes", "-o", "ControlPersist=no", "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
                   "-o", f"ServerAliveCountMax={ALIVE_COUNT}", "-o", "ForwardAgent=no", "-o", "ForwardX11=no",
                   "-o", "ClearAllForwardings=yes", "-o", "LogLevel=ERROR")

# The -o options a user may add (validated): identity, host keys, timeouts, crypto. Nothing that runs a
# command (ProxyCommand, LocalCommand, KnownHostsCommand, Match exec), forwards (ports, agent, X11,
# SendEnv/SetEnv), or takes over the control socket the kernel owns.
ALLOWED_OPTIONS = frozenset({
    "IdentityFile", "IdentitiesOnly", "CertificateFile", "UserKnownHostsFile", "GlobalKnownHostsFile",
    "StrictHostKeyChecking", "HostKeyAlias", "CheckHostIP", "HashKnownHosts", "VerifyHostKeyDNS",
    "ConnectTimeout", "ConnectionAttempts", "Compression", "Ciphers", "MACs", "KexAlgorithms",
    "HostKeyAlgorithms", "PubkeyAcceptedAlgorithms", "PreferredAuthentications", "AddressFamily",
    "IPQoS", "RekeyLimit", "TCPKeepAlive",
})

_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?")
_TARGET_RE = re.compile(r"(?:(?P<user>[^@]*)@)?(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:@\[\]]*))(?::(?P<port>[^:]*))?")
_OPTION_RE = re.compile(r"(?P<key>[A-Za-z]+)=(?P<value>[^\s\x00-\x1f\x7f]+)")


class LinkDown(LxcKernelError):
    """The ssh link to the remote host is down (or could not be opened)."""


@dataclass(frozen=True)
class SshTarget:
    """``[USER@]HOST[:PORT]``, validated: ``user``/``port`` None mean ssh's own default (config or 22)."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")

    def args(self) -> list[str]:
        """ssh's own flags for the user and port (never ``user@host``: ssh(1) would parse an odd host)."""
        out: list[str] = []
        if self.user:
            out += ["-l", self.user]
        if self.port:
            out += ["-p", str(self.port)]
        return out


def parse_target(spec: str) -> SshTarget:
    """``[USER@]HOST[:PORT]`` (IPv6 in brackets: ``root@[::1]:22``) -> SshTarget; ConfigError on bad input.

    Nothing that could be read as an ssh option (a leading ``-``) or by a shell gets through."""
    if not isinstance(spec, str) or not spec or len(spec) > 300:
        raise ConfigError(f"invalid ssh target {spec!r}: use [USER@]HOST[:PORT]")
    m = _TARGET_RE.fullmatch(spec)
    if m is None:
        raise ConfigError(f"invalid ssh target {spec!r}: use [USER@]HOST[:PORT] (IPv6 as [ADDRESS])")
    user, port_text = m["user"], m["port"]
    if user is not None and not _USER_RE.fullmatch(user):
        raise ConfigError(f"invalid ssh user {user!r} in {spec!r}: letters, digits, '_', '.', '-', "
                          "starting with a letter or '_'")
    if m["v6"] is not None:
        host = m["v6"]
        if ":" not in host or not _IPV6_RE.fullmatch(host):
            raise ConfigError(f"invalid IPv6 address [{host}] in ssh target {spec!r}")
    else:
        host = m["host"] or ""
        if not _HOST_RE.fullmatch(host) or len(host) > 253:
            raise ConfigError(f"invalid ssh host {host!r} in {spec!r}: a host name or IPv4 address "
                              "(IPv6 in brackets)")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"invalid ssh port {port_text!r} in {spec!r}: a number from 1 to 65535")
        port = int(port_text)
    return SshTarget(user or None, host, port)


def validate_options(options: Sequence[str]) -> tuple[str, ...]:
    """``KEY=VALUE`` ssh options from :data:`ALLOWED_OPTIONS`, one word each; ConfigError otherwise."""
    out = []
    for option in options:
        m = _OPTION_RE.fullmatch(option) if isinstance(option, str) else None
        if m is None:
            raise ConfigError(f"invalid ssh option {option!r}: use KEY=VALUE with no spaces")
        if m["key"] not in ALLOWED_OPTIONS:
            raise ConfigError(f"ssh option {m['key']} is not allowed here: choose from "
                              f"{', '.join(sorted(ALLOWED_OPTIONS))} (put others in ~/.ssh/config)")
        out.append(option)
    return tuple(out)


class SshLink:
    """One OpenSSH ControlMaster connection that the kernel owns and closes."""

    def __init__(self, target: SshTarget, *, options: Sequence[str] = ()) -> None:
        self.target = target
        self.options = validate_options(options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def __repr__(self) -> str:
        return f"SshLink({str(self.target)!r})"

    def describe(self) -> str:
        return f"the ssh link to {self.target}"

    def env(self) -> dict[str, str]:
        """The environment of every ssh client of this link."""
        return dict(SSH_ENV)

    @property
    def pid(self) -> int | None:
        """The master's PID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def control_dir(self) -> str | None:
        """The private directory of the control socket while open (a watchdog removes it if the kernel dies)."""
        return self._dir

    @property
    def socket(self) -> str:
        if self._dir is None:
            raise LinkDown(f"{self.describe()} is not open")
        return os.path.join(self._dir, "m")

    def _extra(self) -> list[str]:
        return [*(word for option in self.options for word in ("-o", option)), *self.target.args()]

    def _base(self) -> list[str]:
        return [*_CLIENT_OPTIONS, *self._extra()]

    def open(self, timeout: float = 10.0) -> None:
        """Start the master (idempotent: a live link is kept, a dead one is replaced) and wait until it
        accepts sessions; LinkDown with ssh's own words if it cannot connect."""
        if self.alive():
            return
        self.close()
        if shutil.which("ssh", path=SSH_ENV["PATH"]) is None:
            raise LxcNotInstalled("ssh")
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = runtime if runtime and os.access(runtime, os.W_OK) else None
        # 0700 (mkdtemp): the socket gives whoever can reach it a shell on the remote host. Short paths:
        # a unix socket path must fit in 108 bytes.
        self._dir = tempfile.mkdtemp(prefix="lxck-ssh-", dir=base)
        log = os.path.join(self._dir, "log")
        argv = ["ssh", "-M", "-N", "-S", self.socket, "-E", log, *_MASTER_OPTIONS, *self._extra(), "--",
                self.target.host]
        # Its own session: a SIGINT that Jupyter sends the kernel's process group must not end the link.
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=SSH_ENV, cwd="/",
                                      preexec_fn=reset_child_signals, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                said = _read_log(log)
                status = self._proc.returncode
                self.close()
                raise LinkDown(f"could not open {self.describe()} (ssh exited {status}): {said or 'no message'}")
            if os.path.exists(self.socket) and self._check():
                return
            time.sleep(0.02)
        said = _read_log(log)
        self.close()
        raise LinkDown(f"could not open {self.describe()} within {timeout:g} s: {said or 'no answer'}")

    def _check(self) -> bool:
        try:
            return subprocess.run(["ssh", "-S", self.socket, "-O", "check", *self._base(), "--", self.target.host],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=SSH_ENV, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wrap(self, argv: Sequence[str], *, tty: bool) -> list[str]:
        """The host argv that runs ``argv`` on the remote host through the master. The remote user's login
        shell reads the command string, so ``argv`` is quoted into it with shlex.join (POSIX shells)."""
        return ["ssh", "-tt" if tty else "-T", "-S", self.socket, *self._base(), "--", self.target.host,
                shlex.join(argv)]

    def alive(self) -> bool:
        """The master runs (it exits when it notices the connection is gone)."""
        return self._proc is not None and self._proc.poll() is None and self._dir is not None

    def lost(self, wait: float = 1.0) -> bool:
        """After a client exited 255 (ssh's own failure): is the master gone, within ``wait`` seconds? It
        ends a moment after its clients when the connection dies."""
        deadline = time.monotonic() + wait
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.alive()

    def close(self) -> None:
        """End the master by its PID (``ssh -O exit``, then signals), reap it, remove the control dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None and self._dir is not None:
                try:
                    subprocess.run(["ssh", "-S", self.socket, "-O", "exit", *self._base(), "--", self.target.host],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=SSH_ENV, timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and proc.poll() is None:
                    proc.send_signal(sig)  # our own child, by its handle
                try:
                    proc.wait(1.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        path, self._dir = self._dir, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def down_error(self, what: str, status: int | None = None, said: str = "") -> LinkDown:
        shown = f" (ssh exited {status})" if status is not None else ""
        # ssh's first line says why; later ones come from the refused fallback connection.
        first = said.strip().splitlines()[0][:300] if said.strip() else ""
        detail = f": {first}" if first else ""
        return LinkDown(f"{what}: {self.describe()} is down{shown}{detail}. Check the network and the "
                        "remote host's sshd; the next cell opens the link again.")


def _read_log(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read()[-limit:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


# Kill the shell, what it started, and the rest of its session, inside the container: a killed ssh client
# leaves them there (the shell as a zombie, its `&` jobs running). From one look at /proc: parent and
# session of each process, then the tree below $1 plus $1's session, children first. POSIX sh (busybox ash).
_END_SHELL = r"""
s=$1
list=""
for st in /proc/[0-9]*/stat; do
  read -r line < "$st" 2>/dev/null || continue
  p=${line%% *}; rest=${line##*) }
  set -- $rest
  list="$list $p:$2:$4"
done
victims=" $s "; grew=1
while [ $grew = 1 ]; do
  grew=0
  for e in $list; do
    p=${e%%:*}; r=${e#*:}; pp=${r%%:*}; sid=${r#*:}
    case "$victims" in *" $p "*) continue;; esac
    case "$victims" in *" $pp "*) victims="$victims$p "; grew=1; continue;; esac
    [ "$sid" = "$s" ] && { victims="$victims$p "; grew=1; }
  done
done
kill -9 $victims 2>/dev/null
exit 0
"""


# Runs "$@" in the background and ends it when stdin ends (the ssh channel closed: sshd closes the command's
# stdin). The watcher gives up its stdout at once, so the helper's death alone closes the channel's stdout
# and the host sees end of file, as with a local helper. stdin is kept on fd 3 first: a background list
# of a non-interactive shell gets /dev/null as stdin before its own redirections (POSIX), so <&0 would not do.
_WATCHED = """exec 3<&0
"$@" 3<&- &
c=$!
exec >/dev/null
{ while read -r _; do :; done; kill $c 2>/dev/null; } <&3 &
w=$!
exec 3<&-
wait $c
kill $w 2>/dev/null
"""


class SshChannel(PtyChannel):
    """The shell's terminal through ``ssh -tt``: at end of file, a dead link becomes :class:`LinkDown`."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], dimensions: tuple[int, int],
                 link: SshLink) -> None:
        super().__init__(argv, env, dimensions)
        self.link = link

    def read(self) -> bytes | None:
        data = super().read()
        if data is None:
            self._raise_if_link_down()
        return data

    def _raise_if_link_down(self) -> None:
        # The client exits 255 for its own failures; the master exits within a moment of the same loss.
        status = self.exit_status(0.5)
        if status == 255 and self.link.lost():
            raise self.link.down_error("the shell's connection ended", status)


class SshTransport(Transport):
    """``lxc-attach`` on the remote host: ``ssh -tt`` for the shell, ``ssh -T`` for pipe helpers."""

    name = "ssh"

    def __init__(self, link: SshLink, options: AttachOptions) -> None:
        if options.tools.remote is not None and options.tools.remote is not link:
            raise ConfigError("the attach options name another ssh link than this transport's")
        if options.passed_env():
            # Only the remote host's command line could carry them (sshd gives the command no environment
            # of ours: no SendEnv), and every user of that host can read a command line. Refused, as with sudo.
            raise ConfigError(
                "env and keep_env cannot be used over ssh: the values would have to be on the remote host's "
                "command line, where every user of that host can read them. Put them in a file in the "
                "container and source it in a cell instead"
            )
        self.link = link
        # lxc-attach runs on the remote host: its argv is built without the link, and wrapped here.
        self.options = options.with_(tools=replace(options.tools, remote=None))
        self.capabilities = Capabilities(host_pids=False, shell_is_descendant=False)

    def describe(self) -> str:
        return f"container {self.options.container!r} on {self.link.target}"

    def spawn_env(self) -> dict[str, str]:
        return dict(SSH_ENV)

    def shell_argv(self) -> list[str]:
        return self.link.wrap(self.options.shell_argv(), tty=True)

    def pipe_argv(self, argv: Sequence[str]) -> list[str]:
        return self.link.wrap(self.options.argv(argv), tty=False)

    def open_shell(self, dimensions: tuple[int, int] = (24, 120)) -> PtyChannel:
        if not self.link.alive():
            raise self.link.down_error("cannot start the shell")
        return SshChannel(self.shell_argv(), self.spawn_env(), dimensions, self.link)

    def run(self, argv: Sequence[str], **kw: Any) -> PipeResult:
        if not self.link.alive():
            raise self.link.down_error(f"cannot run {kw.get('what', 'a helper command')}")
        return super().run(argv, **kw)

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-lived helper (the stderr reader) that ends inside when its channel closes: sshd closes the
        remote command's stdin then, but a ``cat`` of the stderr FIFO would read on (and take the next
        reader's bytes). So it runs under a watcher (``_WATCHED``) that reads stdin, a pipe the kernel holds
        open, and kills it at end of file."""
        if not self.link.alive():
            raise self.link.down_error("cannot start the stderr reader")
        return self._start_helper(self.pipe_argv(["/bin/sh", "-c", _WATCHED, "lxck-watched", *argv]),
                                  stdin=subprocess.PIPE)

    def end_spawned(self, proc: subprocess.Popen[bytes]) -> None:
        """End a helper from :meth:`spawn` inside before its client is killed: closing its stdin makes the
        watcher kill it, and the channel (so the client) closes only once it is gone. A killed client
        instead left the remote ``cat`` reading the stderr FIFO for up to 0.1 s, and what it read then was
        lost without a trace."""
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if not self.link.alive():
            return  # nothing travels any more: the caller kills the client
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass

    def end_shell_argv(self, shell_pid: int) -> list[str]:
        """The host argv that ends the shell's tree and session inside the container: for the kernel's
        watchdog (``on_death``), which runs it before it kills the master if the kernel dies."""
        return self.pipe_argv(["/bin/sh", "-c", _END_SHELL, "lxck-end", str(int(shell_pid))])

    def end_shell(self, channel: PtyChannel, shell_pid: int | None) -> None:
        """Kill the shell's tree and session inside the container (by its PID there) before the client
        goes: a signal to the ssh client would leave them behind."""
        if shell_pid is None or not self.link.alive():
            return
        try:
            super().run(["/bin/sh", "-c", _END_SHELL, "lxck-end", str(shell_pid)], timeout=3.0, limit=4096,
                        what="the cleanup helper's output")
        except LxcKernelError:
            pass
