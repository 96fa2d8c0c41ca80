"""lxck-sudo: the one command an lxc-kernel sudoers rule allows; it validates every argument, then runs one lxc-* tool.

A sudoers rule on the raw ``lxc-*`` tools makes the user root: ``lxc-start -s lxc.hook.pre-start=SCRIPT`` runs
SCRIPT as host root, ``lxc-info -o FILE`` appends to any file, ``lxc-copy -m`` bind-mounts any host path, and
``lxc-attach -s NETWORK`` leaves the shell in the host's mount namespace as root. So the rule allows only this
program. It is self-contained (standard library only) and installed root-owned by
``python -m lxc_kernel.sudo grant``, whose ``#!`` line runs it with ``python3 -IS``: the caller's environment,
``PYTHONPATH`` and working directory cannot put code into it. It reads nothing of the caller but its argv and
the ``SUDO_UID`` that sudo sets (sudoers' ``env_reset`` drops everything else, and the rule carries no
``SETENV``).

What it allows: the tools and options the kernel uses (see ``TOOLS``), on containers that match the globs the
root-owned files in ``/etc/lxc-kernel/sudo.d`` grant to the calling user or one of its groups. It sets the
lxcpath (the system's, never ``-P``) and the log target itself, and refuses ``-s``/``--define``, ``-f``/
``--rcfile``, ``-m``, ``-o``, ``-l``, ``-P``, ``-p``, ``-L``, ``-c``, ``--keep-var`` and anything else it does
not know. The tool runs with an environment of its own making.
"""

from __future__ import annotations

import os
import stat
import sys

CONF_DIR = "/etc/lxc-kernel/sudo.d"
TOOL_DIR = "/usr/bin"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
RULE_LIMIT = 1 << 16
LOG_TAIL = 4000

# The checks below are written out rather than regular expressions or fnmatch: importing `re` is most of
# what this program costs before the tool runs (every lxc-* call of the kernel goes through it).
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.")


def _word(text: str, first: frozenset[str], rest: frozenset[str], longest: int) -> bool:
    return 0 < len(text) <= longest and text[0] in first and all(c in rest for c in text[1:])


def valid_name(text: str) -> bool:
    """A container name as lxc_kernel.lxc.validate_name accepts it."""
    return _word(text, _ALNUM, _ALNUM | {"_", ".", "-"}, 64) and not text.endswith((".", "-"))


def valid_number(text: str) -> bool:
    return 0 < len(text) <= 10 and all(c in "0123456789" for c in text)


def valid_env_name(text: str) -> bool:
    return _word(text, _ALNUM - set("0123456789") | {"_"}, _ALNUM | {"_"}, 128)


def valid_config_key(text: str) -> bool:
    parts = text.split(".")
    return (parts[0] == "lxc" and 2 <= len(parts) <= 9
            and all(_word(p, _ALNUM | {"_", "-"}, _ALNUM | {"_", "-"}, 64) for p in parts[1:]))


# Resource controls only: devices.* would hand the container host devices, cgroup.procs/tasks would pull any
# host process into the container's cgroup (and its freezer).
CGROUP_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "hugetlb", "freezer")


def valid_cgroup_key(text: str) -> bool:
    controller, dot, rest = text.partition(".")
    return controller in CGROUP_CONTROLLERS and bool(dot) and _word(rest, _LOWER, _LOWER, 64)


def valid_columns(text: str) -> bool:
    return all(c and c.isascii() and c.isalpha() and c.isupper() for c in text.split(",")) and text.count(",") < 16


def glob_match(name: str, glob: str) -> bool:
    """fnmatch with only ``*`` and ``?`` (what grant lets a glob hold), case-sensitive."""
    n = g = 0
    star, mark = -1, 0
    while n < len(name):
        if g < len(glob) and glob[g] in ("?", name[n]):
            n, g = n + 1, g + 1
        elif g < len(glob) and glob[g] == "*":
            star, mark, g = g, n, g + 1
        elif star >= 0:
            mark += 1
            n, g = mark, star + 1
        else:
            return False
    while g < len(glob) and glob[g] == "*":
        g += 1
    return g == len(glob)

# The backing stores a copy may use: both stay under the lxcpath.
BACKING = ("overlay", "overlayfs", "dir")

# tool -> (flags without a value, options with a value and how to check it). "name" values must be allowed
# containers; "-n" is required unless the tool is lxc-ls.
TOOLS: dict[str, tuple[frozenset[str], dict[str, str]]] = {
    "lxc-info": (frozenset({"-s", "-p", "-H", "-i", "-S"}), {"-n": "name", "-c": "key"}),
    "lxc-ls": (frozenset({"-1", "-f"}), {"-F": "columns"}),
    "lxc-start": (frozenset({"-d"}), {"-n": "name"}),
    "lxc-stop": (frozenset({"-k", "-W", "-r"}), {"-n": "name", "-t": "number"}),
    "lxc-freeze": (frozenset(), {"-n": "name"}),
    "lxc-unfreeze": (frozenset(), {"-n": "name"}),
    "lxc-cgroup": (frozenset(), {"-n": "name"}),
    "lxc-snapshot": (frozenset({"-L", "-C"}), {"-n": "name", "-d": "snapshot", "-r": "snapshot", "-N": "name"}),
    "lxc-copy": (frozenset({"-s", "-a", "-e", "-d"}), {"-n": "name", "-N": "name", "-B": "backing"}),
    "lxc-destroy": (frozenset({"-f", "-s"}), {"-n": "name"}),
    "lxc-attach": (frozenset({"--clear-env", "-R"}), {"-n": "name", "-v": "env", "-u": "number", "-g": "number"}),
}
LONG = {"--name": "-n", "--set-var": "-v", "--uid": "-u", "--gid": "-g", "--remount-sys-proc": "-R",
        "--daemon": "-d", "--kill": "-k", "--timeout": "-t", "--newname": "-N", "--backingstorage": "-B",
        "--allowrunning": "-a", "--ephemeral": "-e", "--force": "-f", "--snapshots": "-s"}
WHY = {
    "-s": "it defines config keys (lxc.hook.* runs host commands as root) or, for lxc-attach, leaves namespaces",
    "--define": "it defines config keys (lxc.hook.* runs host commands as root)",
    "-f": "it reads a config file of the caller's choosing (hooks run as root)",
    "--rcfile": "it reads a config file of the caller's choosing (hooks run as root)",
    "-m": "it bind-mounts host paths into the container",
    "-o": "the helper sets the log target itself (as root, -o appends to any file)",
    "--logfile": "the helper sets the log target itself (as root, -o appends to any file)",
    "-l": "the helper sets the log level itself",
    "-P": "the helper uses the system's lxcpath",
    "--lxcpath": "the helper uses the system's lxcpath",
    "-p": "it writes a file of the caller's choosing as root",
    "-L": "it writes a file of the caller's choosing as root",
    "-c": "it reads a file of the caller's choosing as root",
    "-e": "elevated privileges leak host privileges into the container",
    "--elevated-privileges": "elevated privileges leak host privileges into the container",
    "--keep-var": "the helper passes no variable of the caller's environment",
    "--keep-env": "the helper passes no variable of the caller's environment",
}


class Refused(Exception):
    """An argument this helper does not allow; the message says which and why."""


def fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"lxc-kernel sudo helper: {message}\n")
    sys.stderr.flush()
    return status


# -- who is calling, and what they may touch --------------------------------------------------------------


def caller() -> tuple[str, list[str]] | None:
    """The calling user's name and group names; None for root itself (no SUDO_UID: root ran the helper)."""
    raw = os.environ.get("SUDO_UID")
    if raw is None and os.getuid() == 0:
        return None
    if raw is None or not valid_number(raw):
        raise Refused("run it through sudo (SUDO_UID is missing or malformed)")
    uid = int(raw)
    if uid == 0:
        return None
    import grp
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise Refused(f"uid {uid} has no passwd entry") from None
    groups = []
    for gid in os.getgrouplist(entry.pw_name, entry.pw_gid):
        try:
            groups.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return entry.pw_name, groups


def _root_only(st: os.stat_result, path: str) -> None:
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise Refused(f"{path} must be owned by root and writable by root only")


def allowed_globs(who: tuple[str, list[str]]) -> list[str]:
    """The globs granted to the user or its groups by ``allow PRINCIPAL GLOB[,GLOB...]`` lines."""
    name, groups = who
    principals = {name} | {f"%{g}" for g in groups}
    try:
        dir_st = os.lstat(CONF_DIR)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(dir_st.st_mode):
        raise Refused(f"{CONF_DIR} is not a directory")
    _root_only(dir_st, CONF_DIR)
    out: list[str] = []
    for entry in sorted(os.listdir(CONF_DIR)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        path = os.path.join(CONF_DIR, entry)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            _root_only(st, path)
            text = os.read(fd, RULE_LIMIT).decode("utf-8", "replace")
        finally:
            os.close(fd)
        for line in text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "allow" and words[1] in principals:
                out += [g for g in words[2].split(",") if g]
    return out


class Access:
    """Which containers the caller may name: all of them for root, else the granted globs."""

    def __init__(self, who: tuple[str, list[str]] | None) -> None:
        self.who = who
        self.globs = None if who is None else allowed_globs(who)

    def allows(self, name: str) -> bool:
        return self.globs is None or any(glob_match(name, g) for g in self.globs)

    def check(self, name: str) -> str:
        if not valid_name(name):
            raise Refused(f"invalid container name {name!r}")
        if not self.allows(name):
            assert self.who is not None
            granted = ", ".join(self.globs or []) or "none"
            raise Refused(f"container {name!r} is not allowed for user {self.who[0]} (allowed: {granted}); "
                          f"root grants it with `python3 -m lxc_kernel.sudo grant {self.who[0]} --containers "
                          f"{name}`")
        return name


# -- arguments ------------------------------------------------------------------------------------------


def check_value(kind: str, value: str, access: Access) -> str:
    if kind == "name":
        return access.check(value)
    ok = {"number": valid_number, "key": valid_config_key, "columns": valid_columns, "snapshot": valid_name}.get(kind)
    if ok is not None:
        if not ok(value):
            raise Refused(f"invalid {kind} {value!r}")
        return value
    if kind == "backing":
        if value not in BACKING:
            raise Refused(f"backing store {value!r} is not one of {', '.join(BACKING)}")
        return value
    if kind == "env":
        key, sep, val = value.partition("=")
        if not sep or not valid_env_name(key) or "\0" in val or len(value) > 4096:
            raise Refused(f"invalid variable {value[:40]!r}: -v wants KEY=VALUE")
        return value
    raise Refused(f"unknown value kind {kind}")


def parse(tool: str, args: list[str], access: Access) -> tuple[list[str], list[str]]:
    """Validated options (in a canonical form) and the rest: lxc-attach's command, lxc-cgroup's KEY [VALUE]."""
    flags, valued = TOOLS[tool]
    out: list[str] = []
    rest: list[str] = []
    names = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest = args[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            rest = args[i:]
            break
        opt, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = LONG.get(opt, opt)
        if opt in flags and not eq:
            out.append(opt)
            i += 1
            continue
        if opt in valued:
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise Refused(f"{tool} {opt} needs a value")
            out += [opt, check_value(valued[opt], value, access)]
            names += opt == "-n"
            i += 1
            continue
        key = arg.split("=", 1)[0]
        why = WHY.get(key) or WHY.get(opt)
        if tool == "lxc-attach" and opt == "-s":
            why = "attaching to only some namespaces leaves the shell in the host's others, as root"
        raise Refused(f"{tool} option {key} is not allowed" + (f": {why}" if why else " through sudo"))
    if tool != "lxc-ls" and names != 1:
        raise Refused(f"{tool} needs exactly one -n NAME")
    if tool == "lxc-attach":
        if not rest:
            raise Refused("lxc-attach needs a command after --")
        if any("\0" in a for a in rest):
            raise Refused("a NUL byte in the command")
    elif tool == "lxc-cgroup":
        if not 1 <= len(rest) <= 2 or not valid_cgroup_key(rest[0]):
            raise Refused("lxc-cgroup takes KEY [VALUE] with a resource key (memory.*, cpu.*, cpuset.*, pids.*, "
                          "blkio.*, freezer.*)")
        if len(rest) == 2 and (len(rest[1]) > 256 or any(ord(c) < 32 for c in rest[1])):
            raise Refused("invalid cgroup value")
    elif rest:
        raise Refused(f"{tool} takes no arguments after its options (got {rest[0]!r})")
    return out, rest


def stderr_is_safe() -> bool:
    """lxc opens its log target as root: ``/dev/stderr`` reopens whatever fd 2 is, with write access. A
    pipe, a terminal or /dev/null is harmless; a file the caller opened read-only is not."""
    try:
        st = os.fstat(2)
    except OSError:
        return False
    if stat.S_ISFIFO(st.st_mode):
        return True
    return stat.S_ISCHR(st.st_mode) and (os.isatty(2) or st.st_rdev == os.makedev(1, 3))


def run_logged(argv: list[str], *, filter_names: Access | None = None) -> int:
    """Run the tool as a child with a private log file; on failure its tail goes to our stderr."""
    import subprocess
    import tempfile

    logdir = "/run/lxc-kernel-sudo" if os.path.isdir("/run") else None
    if logdir:
        os.makedirs(logdir, mode=0o700, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="log-", dir=logdir) as log:
        full = [argv[0], "-l", "ERROR", "-o", log.name, *argv[1:]]
        proc = subprocess.run(full, env=ENV, stdin=subprocess.DEVNULL, cwd="/",
                              stdout=subprocess.PIPE if filter_names else None)
        if filter_names is not None:
            lines = proc.stdout.decode("utf-8", "replace").splitlines(keepends=True)
            header = lines[:1] if "-f" in argv else []
            body = lines[len(header):]
            kept = [line for line in body if line.split() and filter_names.allows(line.split()[0])]
            sys.stdout.write("".join(header + kept))
            sys.stdout.flush()
        if proc.returncode != 0:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LOG_TAIL))
            said = log.read().decode("utf-8", "replace").strip()
            if said:
                sys.stderr.write(said + "\n")
        return proc.returncode


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        return fail("it must run as root, through `sudo -n`")
    if not argv:
        return fail("usage: lxck-sudo lxc-TOOL OPTIONS...")
    tool, args = argv[0], argv[1:]
    if tool == "lxc-create":
        return fail("lxc-create is not allowed through sudo (templates and config files run as root): root "
                    "creates containers, e.g. `python3 -m lxc_kernel.provision NAME --kind busybox`")
    if tool not in TOOLS:
        return fail(f"{tool!r} is not allowed (allowed: {', '.join(sorted(TOOLS))})")
    try:
        access = Access(caller())
        options, rest = parse(tool, args, access)
    except Refused as exc:
        return fail(f"refused: {exc}")
    except OSError as exc:
        return fail(f"cannot read the rules in {CONF_DIR}: {exc}")
    path = os.path.join(TOOL_DIR, tool)
    if tool == "lxc-attach":
        if "--clear-env" not in options:
            options.insert(0, "--clear-env")
        log = ["-l", "ERROR", "-o", "/dev/stderr"] if stderr_is_safe() else ["-l", "ERROR", "-o", "/dev/null"]
        os.execve(path, [path, *log, *options, "--", *rest], ENV)
    if tool == "lxc-ls":
        return run_logged([path, *options], filter_names=access)
    if tool in ("lxc-start", "lxc-copy"):
        # -d daemonizes with its log target open: a file, read back here when the start failed.
        return run_logged([path, *options])
    log = ["-l", "ERROR", "-o", "/dev/stderr"] if stderr_is_safe() else ["-l", "ERROR", "-o", "/dev/null"]
    tail = ["--", *rest] if rest else []
    os.execve(path, [path, *log, *options, *tail], ENV)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
