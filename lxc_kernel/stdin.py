"""Detect, from the host, a command inside the container that waits for input on its terminal.

The shell's process tree is visible from the host under ``/proc`` (the shell is a child of
lxc-attach). A command waits for the user when it is in the terminal's foreground process group,
asleep, and inside a ``read`` of a terminal or a ``select``/``poll`` that watches one (GNU readline,
as in ``python3 -c 'input()'``, waits in ``select``). ``/proc/PID/syscall`` names the system call and its
arguments; for ``select``/``poll`` the fd sets are read from ``/proc/PID/mem`` (the kernel runs as root).

The terminal's mode says what kind of prompt it is: with ``ECHO`` off and ``ICANON`` on, the command
turned echo off to read a secret (``read -s``, ``getpass``, ``sudo``); a line editor (readline, ash)
turns both off and echoes by itself, so that is not a password.

Parsing is pure (``parse_stat``, ``parse_syscall``, ``fds_in_select``/``fds_in_poll``); the
``/proc`` readers around it are small and return None on any race with an exiting process.
"""

from __future__ import annotations

import os
import platform
import struct
import termios
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .bounded import read_capped
from .transport import children_of

# Syscall numbers of the waits we recognise, per architecture (asm/unistd_64.h, asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {0: "read", 17: "pread64", 19: "readv", 7: "poll", 23: "select", 270: "pselect6", 271: "ppoll"},
    "aarch64": {63: "read", 67: "pread64", 65: "readv", 72: "pselect6", 73: "ppoll"},
}
SYSCALLS = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])

_TTY_PREFIXES = ("/dev/pts/", "/dev/tty", "/dev/console")
_POLLIN = 0x001


@dataclass(frozen=True)
class Waiter:
    """A process blocked reading the terminal."""

    pid: int
    command: str  # its command line, for messages
    fd: int  # the terminal fd it reads
    lflag: int | None  # the terminal's local modes, None if they could not be read
    reads: int | None = None  # its read system calls so far (/proc/PID/io syscr): moves once a reply is read

    @property
    def echo(self) -> bool:
        """The terminal echoes what is typed (so the reply will show up in the output once)."""
        return self.lflag is not None and bool(self.lflag & termios.ECHO)

    @property
    def password(self) -> bool:
        """Echo off in canonical mode: a secret is being read (echo is on between cells)."""
        return self.lflag is not None and is_password_mode(self.lflag)

    @property
    def password_echo_off(self) -> bool:
        """The same when echo is *off* between cells (busybox ash): ECHOK cleared along with it, as
        the ``read -s`` of ash and bash do (``stty`` leaves ECHOK on)."""
        return self.lflag is not None and bool(self.lflag & termios.ICANON) and not self.lflag & (
            termios.ECHO | termios.ECHOK
        )


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    tpgid: int


def parse_stat(text: str) -> ProcStat:
    """``/proc/PID/stat``: the command name is in parentheses and may itself contain ``)`` or spaces."""
    left, _, right = text.rpartition(")")
    pid_s, _, comm = left.partition(" (")
    fields = right.split()
    return ProcStat(int(pid_s), comm, fields[0], int(fields[1]), int(fields[2]), int(fields[5]))


def parse_syscall(text: str) -> tuple[str, list[int]] | None:
    """``/proc/PID/syscall`` -> (name, args) for a recognised wait; None when running or anything else."""
    parts = text.split()
    if not parts or not parts[0].lstrip("-").isdigit():
        return None  # "running"
    name = SYSCALLS.get(int(parts[0]))
    if name is None:
        return None
    return name, [int(p, 16) for p in parts[1:7]]


def fds_in_select(readfds: bytes, nfds: int) -> list[int]:
    """The fds set in a ``fd_set`` bitmap (little-endian longs, as on x86_64 and aarch64)."""
    out = []
    for fd in range(min(nfds, len(readfds) * 8)):
        if readfds[fd // 8] & (1 << (fd % 8)):
            out.append(fd)
    return out


def fds_in_poll(pollfds: bytes) -> list[int]:
    """The fds polled for input in an array of ``struct pollfd {int fd; short events; short revents;}``."""
    out = []
    for offset in range(0, len(pollfds) - 7, 8):
        fd, events, _ = struct.unpack_from("=ihh", pollfds, offset)
        if fd >= 0 and events & _POLLIN:
            out.append(fd)
    return out


def is_password_mode(lflag: int) -> bool:
    return not lflag & termios.ECHO and bool(lflag & termios.ICANON)


# -- /proc readers ----------------------------------------------------------------------------------


# /proc/PID/stat and /proc/PID/syscall are a few hundred bytes: the cap only bounds the unexpected.
_PROC_LIMIT = 4096
# Enough for a message; a container process's command line can be megabytes (issue 7).
_CMDLINE_LIMIT = 4096


def _read(path: str, binary: bool = False, limit: int = _PROC_LIMIT) -> str | bytes | None:
    raw = read_capped(path, limit)
    if raw is None or binary:
        return raw
    return raw.decode("utf-8", "replace")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents first. Through /proc/PID/task/*/children: this runs
    at every quiet spell of a cell with stdin allowed, and a walk of all of /proc grew with every
    session on the host."""
    out, todo = [root], [root]
    while todo:
        for child in children_of(todo.pop(0)):
            out.append(child)
            todo.append(child)
    return out


def _tty_fds(pid: int, fds: Iterable[int]) -> list[int]:
    out = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(_TTY_PREFIXES):
            out.append(fd)
    return out


def _is_pts(pid: int, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/pts/")
    except OSError:
        return False


def _read_mem(pid: int, address: int, size: int) -> bytes | None:
    if address == 0 or size <= 0 or size > 1 << 16:
        return None
    try:
        with open(f"/proc/{pid}/mem", "rb") as fh:
            fh.seek(address)
            return fh.read(size)
    except (OSError, ValueError, OverflowError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc/PID/stat (``T`` stopped, ``t`` traced, ``S`` asleep...)."""
    text = _read(f"/proc/{pid}/stat")
    if not isinstance(text, str) or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0] if fields else None


def waiting_fds(pid: int) -> list[int]:
    """Terminal fds that ``pid`` is blocked reading right now (empty if it isn't)."""
    text = _read(f"/proc/{pid}/syscall")
    parsed = parse_syscall(text) if isinstance(text, str) else None
    if parsed is None:
        return []
    name, args = parsed
    if name in ("read", "pread64", "readv"):
        candidates = [args[0]]
    elif name in ("select", "pselect6"):
        nfds = args[0]
        mem = _read_mem(pid, args[1], (nfds + 7) // 8) if 0 < nfds <= 4096 else None
        candidates = fds_in_select(mem, nfds) if mem else []
    else:  # poll, ppoll
        nfds = args[1]
        mem = _read_mem(pid, args[0], 8 * nfds) if 0 < nfds <= 1024 else None
        candidates = fds_in_poll(mem) if mem else []
    return _tty_fds(pid, candidates)


@contextmanager
def _terminal(pid: int, fd: int, mode: int = os.O_RDONLY) -> Iterator[int | None]:
    """The terminal ``pid`` has open as ``fd``, opened through /proc (O_NOCTTY: never adopt it), or None
    when it can't be opened; closed on exit."""
    try:
        tty = os.open(f"/proc/{pid}/fd/{fd}", mode | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        yield tty
    finally:
        os.close(tty)


def terminal_attrs(pid: int) -> tuple[int, list[Any]] | None:
    """The shell's terminal, from the host: which of its fds 0-2 it is, and its termios attributes."""
    for fd in (0, 1, 2):
        with _terminal(pid, fd) as tty:
            if tty is None:
                continue
            try:
                return fd, termios.tcgetattr(tty)
            except termios.error:
                continue
    return None


# What decides how the shell's next typed line is read: line editing characters, signals, CR/NL mapping.
# Other modes are left alone: bash itself turns ECHO back on when a job dies by a signal (it restores the
# modes it saved at startup), and the kernel discards the echo anyway.
_LINE_IFLAG = termios.ICRNL | termios.IGNCR | termios.INLCR | termios.ISTRIP | termios.IXON
_LINE_LFLAG = termios.ICANON | termios.ISIG | termios.IEXTEN
_LINE_CC = (termios.VINTR, termios.VQUIT, termios.VERASE, termios.VKILL, termios.VEOF, termios.VEOL,
            termios.VEOL2, termios.VWERASE, termios.VLNEXT, termios.VREPRINT, termios.VSUSP, termios.VSTOP)


def restore_terminal(pid: int, saved: tuple[int, list[Any]]) -> bool:
    """Put the line-reading modes and characters of the terminal of ``pid`` back to ``saved`` (from
    :func:`terminal_attrs`) if a cell changed them; True when it had to."""
    fd, attrs = saved
    with _terminal(pid, fd) as tty:
        if tty is None:
            return False
        try:
            now = termios.tcgetattr(tty)
            want = [*now[:6], list(now[6])]
            want[0] = (now[0] & ~_LINE_IFLAG) | (attrs[0] & _LINE_IFLAG)
            want[3] = (now[3] & ~_LINE_LFLAG) | (attrs[3] & _LINE_LFLAG)
            for i in _LINE_CC:
                want[6][i] = attrs[6][i]
            if want == now:
                return False
            termios.tcsetattr(tty, termios.TCSANOW, want)
            return True
        except termios.error:
            return False


def terminal_lflag(pid: int, fd: int = 0) -> int | None:
    """The local-mode flags of the terminal ``pid`` has open as ``fd``."""
    with _terminal(pid, fd) as tty:
        if tty is None:
            return None
        try:
            return termios.tcgetattr(tty)[3]
        except termios.error:
            return None


def set_echo(pid: int, on: bool, fd: int = 0) -> bool:
    """Turn the terminal's echo on or off, from the host; False if it could not be done."""
    with _terminal(pid, fd, os.O_RDWR) as tty:
        if tty is None:
            return False
        try:
            attrs = termios.tcgetattr(tty)
            attrs[3] = attrs[3] | termios.ECHO if on else attrs[3] & ~termios.ECHO
            termios.tcsetattr(tty, termios.TCSANOW, attrs)
            return True
        except termios.error:
            return False


def command_line(pid: int) -> str:
    raw = _read(f"/proc/{pid}/cmdline", binary=True, limit=_CMDLINE_LIMIT)
    if isinstance(raw, bytes) and raw:
        text = " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)
        return f"{text} ..." if len(raw) >= _CMDLINE_LIMIT else text
    comm = _read(f"/proc/{pid}/comm", limit=64)
    return comm.strip() if isinstance(comm, str) else f"pid {pid}"


def find_waiter(shell_pid: int) -> Waiter | None:
    """The process of the shell's session that waits for terminal input, if one does.

    Only the terminal's foreground process group counts: a background job reading the terminal
    would be stopped (SIGTTIN), not waiting. The shell itself is a candidate: ``read`` is a builtin.
    """
    stat_text = _read(f"/proc/{shell_pid}/stat")
    if not isinstance(stat_text, str):
        return None
    for pid in reversed(descendants(shell_pid)):  # deepest first: the reader, not its parent
        text = _read(f"/proc/{pid}/stat")
        if not isinstance(text, str):
            continue
        try:
            stat = parse_stat(text)
        except (ValueError, IndexError):
            continue
        if stat.state != "S" or (stat.tpgid > 0 and stat.pgrp != stat.tpgid):
            continue
        fds = waiting_fds(pid)
        if pid == shell_pid:
            fds = [fd for fd in fds if not own_line_read(pid, fd)]
        if not fds:
            continue
        # Read the mode through a /dev/pts link: a /dev/tty link opened from the host would mean the
        # *kernel's* controlling terminal (none), not the container's.
        lflag = None
        for owner, fd in [*((pid, fd) for fd in (*fds, 0, 1, 2)), (shell_pid, 0)]:
            if _is_pts(owner, fd):
                lflag = terminal_lflag(owner, fd)
                if lflag is not None:
                    break
        return Waiter(pid, command_line(pid), fds[0], lflag, read_count(pid))
    return None


def read_count(pid: int) -> int | None:
    """``syscr`` of /proc/PID/io: how many read system calls the process has made."""
    raw = read_capped(f"/proc/{pid}/io", 4096)
    for line in (raw or b"").decode("ascii", "replace").splitlines():
        if line.startswith("syscr:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def own_line_read(shell_pid: int, fd: int) -> bool:
    """The shell reading its *own* next command line, not a cell's ``read``.

    The shell reads commands through the read-write terminal fd it was started with; a cell with stdin
    allowed reads ``0</dev/tty``, a read-only open (protocol.frame_cell). Under load the end marker can
    still be on its way to the host while the shell already waits for the next line: that wait must not
    become an input prompt (seen: 3 of 480 cells under 12 kernels).
    """
    return is_read_write(read_capped(f"/proc/{shell_pid}/fdinfo/{fd}", 4096) or b"")


def is_read_write(fdinfo: bytes) -> bool:
    """``flags:`` of a /proc/PID/fdinfo/FD text has O_RDWR as its access mode."""
    for line in fdinfo.decode("ascii", "replace").splitlines():
        if line.startswith("flags:"):
            try:
                return int(line.split()[1], 8) & 0o3 == os.O_RDWR
            except (IndexError, ValueError):
                return False
    return False


# -- the same from inside the container, through a pipe helper (ssh, remote Incus, sudo) -------------

# For every process of the container: its stat fields; for those asleep in the foreground, the syscall,
# the fd links, the fdinfo flags, the terminal mode, and for select/poll the fd sets out of /proc/PID/mem.
# $1 = syscall numbers of select-like calls, $2 = of poll-like calls. Runs as the shell's user.
# The terminal's modes come from the first of fds 0-2 that stty can read: a cell's stdin is `0</dev/tty`,
# and /proc/PID/fd/0 then reopens /dev/tty, which is the *probe's* controlling terminal (it has none: ENXIO),
# so a `read -s` looked like a plain prompt; fd 1 is the same terminal by its /dev/pts name. In an
# unprivileged container that terminal is a host pty that container root may not open (EACCES, measured):
# the modes stay unknown there, and cellio judges a secret by the prompt's words.
_INSIDE_PROBE = r"""
sel=" $1 "; pol=" $2 "
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  { read -r l < "$d/stat"; } 2>/dev/null || continue
  c=${l#*\(}; c=${c%\)*}; r=${l##*) }
  set -- $r
  echo "P $p $1 $2 $3 $6 $c"
  [ "$1" = S ] && [ "$3" = "$6" ] || continue
  { read -r sc < "$d/syscall"; } 2>/dev/null || continue
  echo "C $p $sc"
  set -- $sc
  n=; case "$sel" in *" $1 "*) a=$(($3)); n=$(( ($2 + 7) / 8 ));; esac
  case "$pol" in *" $1 "*) a=$(($2)); n=$(( $3 * 8 ));; esac
  if [ -n "$n" ] && [ "$n" -gt 0 ] && [ "$n" -le 8192 ]; then
    printf 'M %s ' "$p"; dd if="$d/mem" bs=1 skip="$a" count="$n" 2>/dev/null | od -An -v -tx1 | tr -d ' \n'; echo
  fi
  for f in "$d"/fdinfo/*; do
    { read -r _; read -r fl; } < "$f" 2>/dev/null && echo "F $p ${f##*/} ${fl#flags:}"
  done
  ls -l "$d/fd/" 2>/dev/null | sed -n "s|.* \([0-9][0-9]*\) -> \(.*\)|L $p \1 \2|p"
  echo "T $p $(for f in 0 1 2; do stty -g < "$d/fd/$f" 2>/dev/null && break; done)"
  while read -r k v; do [ "$k" = syscr: ] && echo "I $p $v"; done < "$d/io" 2>/dev/null
done
"""
_SELECT_LIKE = {"select", "pselect6"}
_POLL_LIKE = {"poll", "ppoll"}


def find_waiter_inside(transport: Any, shell_pid: int, timeout: float = 2.0) -> Waiter | None:
    """:func:`find_waiter` for a shell the host cannot see: one pipe helper inside the container
    reads the same /proc files there, and the same pure rules decide here."""
    sel = " ".join(str(n) for n, name in SYSCALLS.items() if name in _SELECT_LIKE)
    pol = " ".join(str(n) for n, name in SYSCALLS.items() if name in _POLL_LIKE)
    try:
        result = transport.run(["/bin/sh", "-c", _INSIDE_PROBE, "lxck-probe", sel, pol], timeout=timeout,
                               limit=1 << 20, what="the input probe's report")
    except Exception:
        return None
    return waiter_from_report(result.stdout.decode("utf-8", "replace"), shell_pid)


def waiter_from_report(report: str, shell_pid: int) -> Waiter | None:
    """Pure: the waiting process, from the inside probe's report (see ``_INSIDE_PROBE``)."""
    procs: dict[int, tuple[str, int, int, int, str]] = {}
    syscalls: dict[int, str] = {}
    mem: dict[int, bytes] = {}
    flags: dict[tuple[int, int], int] = {}
    links: dict[tuple[int, int], str] = {}
    modes: dict[int, int] = {}
    reads: dict[int, int] = {}
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        head, _, tail = rest.partition(" ")
        if not head.isdigit():
            continue
        pid = int(head)
        try:
            if kind == "P":
                state, ppid, pgrp, tpgid, *comm = tail.split(" ")
                procs[pid] = (state, int(ppid), int(pgrp), int(tpgid), " ".join(comm))
            elif kind == "C":
                syscalls[pid] = tail
            elif kind == "M":
                mem[pid] = bytes.fromhex(tail.strip())
            elif kind == "F":
                fd, value = tail.split()
                flags[(pid, int(fd))] = int(value, 8)
            elif kind == "L":
                fd, _, target = tail.partition(" ")
                links[(pid, int(fd))] = target
            elif kind == "T" and tail.strip():
                modes[pid] = int(tail.strip().split(":")[3], 16)
            elif kind == "I":
                reads[pid] = int(tail.strip())
        except (ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    order, todo = [shell_pid], [shell_pid]
    while todo:
        for child in sorted(children.get(todo.pop(0), [])):
            order.append(child)
            todo.append(child)
    for pid in reversed(order):
        if pid not in procs or pid not in syscalls:
            continue
        parsed = parse_syscall(syscalls[pid])
        if parsed is None:
            continue
        name, args = parsed
        if name in ("read", "pread64", "readv"):
            candidates = [args[0]]
        elif name in _SELECT_LIKE:
            candidates = fds_in_select(mem.get(pid, b""), args[0])
        else:
            candidates = fds_in_poll(mem.get(pid, b""))
        fds = [fd for fd in candidates if links.get((pid, fd), "").startswith(_TTY_PREFIXES)]
        if pid == shell_pid:
            fds = [fd for fd in fds if flags.get((pid, fd), 0) & 0o3 != os.O_RDWR]
        if fds:
            return Waiter(pid, procs[pid][4], fds[0], modes.get(pid), reads.get(pid))
    return None
