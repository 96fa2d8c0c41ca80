"""Create the containers cells run in, idempotently: ``busybox``, ``hostfs`` (host /usr, no download), ``debian``.

``ensure_container(name, kind)`` creates a missing container, brings the settings the kernel depends on into
its config (a PTY per session, cgroup limits visible inside), and starts it. A second call changes nothing.
``python -m lxc_kernel.provision NAME --kind KIND`` does the same from a shell (``.ci/setup`` uses it).

The kinds, fastest first (times measured on a 2-core Debian 12 host, LXC 5.0.2):

``hostfs`` (about 0.02 s to create, 0.05 s to start)
    GNU bash, coreutils and python3 with no download: the host's ``/usr`` is bind-mounted read-only and
    nosuid, ``bin``/``lib``/``sbin`` are symlinks into it, and ``init.lxc`` (PID 1) runs ``sleep infinity``.
    The container gets its own small ``/etc`` (users ``root`` and ``student``, uid 1000) and its own
    writable ``/root``, ``/home``, ``/tmp``; nothing of the host's ``/etc`` or ``/root`` is visible. Needs a
    merged-/usr host (Debian 12 is). Programs the host has are the programs the container has.
``busybox`` (about 0.4 s)
    The ``lxc-busybox`` template: ``sh`` is busybox ash.
``debian`` (46 s cold here, 80-220 s on slower mirrors; about 6 s once ``/var/cache/lxc/debian`` is filled)
    The ``lxc-debian`` template, bookworm with systemd: the slow, realistic option. Needs ``debootstrap rsync
    wget distro-info debian-archive-keyring`` and a Debian mirror.

All kinds get an empty network namespace with loopback up (:data:`NET_EMPTY_CONFIG`): the stock
``/etc/lxc/default.conf`` wants the ``lxcbr0`` bridge, which is missing when ``lxc-net`` isn't running.

Every kind is unprivileged unless asked otherwise (``privileged=True``, ``--privileged``): it runs in a user
namespace where container uid/gid 0-65535 are host ids B..B+65535, B being the start of root's range in
``/etc/subuid`` and ``/etc/subgid`` (see idmap.py). busybox gets the map in its create config, and the
template chowns its files; hostfs and debian are written as for a privileged container, then their owners are
shifted on the host before the first start (lxc-debian refuses to run for an unprivileged container). The
container directory is 0770 root:B (0700 root:root when privileged), so no other host user can reach a
setuid file that root inside wrote. Root inside ``hostfs`` and ``busybox`` also runs without CAP_SYS_ADMIN,
so it cannot remount the host's read-only ``/usr`` (``/lib``, ``/usr/lib`` for busybox) writable.
"""

from __future__ import annotations

import argparse
import enum
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import idmap as ids
from .errors import ConfigError, LxcKernelError
from .lxc import TOOL_ENV, Container, State, Tools, validate_name, validate_path

KINDS = ("busybox", "hostfs", "debian")

# lxc.container.conf(5): "empty" gives the container only a loopback, and "flags = up" brings it up
# (without it `lo` stays down). "none" would share the host's network instead; don't.
NET_EMPTY_CONFIG = "lxc.net.0.type = empty\nlxc.net.0.flags = up\n"

# The busybox template writes lxc.pty.max = 1, so a second concurrent session got a host pty and `tty`
# said "not a tty" (measured, LXC 5.0.2). Each kernel holds one PTY session; 64 leaves room for many.
PTY_MAX = "64"

# lxc.container.conf(5): with cgroup namespaces LXC leaves mounting cgroups to the container's init
# unless told ":force"; busybox init and init.lxc don't, so `lxc-cgroup` limits were invisible inside.
CGROUP_AUTO = "cgroup:mixed:force"

INIT_LXC = "/usr/sbin/init.lxc"
COMMON_CONF = "/usr/share/lxc/config/common.conf"
DEBIAN_RELEASE = "bookworm"  # on the mirror "stable" now means trixie (measured, LXC 5.0.2)
KIND_MARKER = "# lxc-kernel: kind = "
STUDENT_UID = 1000

_TEMPLATE_MARKER = "# Template used to create this container: /usr/share/lxc/templates/lxc-"


class Mode(enum.Enum):
    """How a :class:`Setting` treats lines of its key that are already in a config."""

    SET = "set"  # exactly these lines, where the key first appeared (later duplicates removed)
    DEFAULT = "default"  # only if the key is missing; an existing value wins, written once
    ADD = "add"  # each value present at least once; other lines of the key stay (lxc.mount.entry)


@dataclass(frozen=True)
class Setting:
    """One key of an LXC config file, and how to make it right without clobbering the user's other lines."""

    key: str
    values: tuple[str, ...]
    mode: Mode = Mode.SET


@dataclass(frozen=True)
class Provisioned:
    """What :func:`provision` did: the container, whether it was created, which keys changed, the state,
    its id map (None: privileged), and warnings for the person running it."""

    container: Container
    kind: str | None
    created: bool
    changed: tuple[str, ...]
    restart_needed: bool
    state: State
    seconds: float
    idmap: ids.IdMap | None = None
    warnings: tuple[str, ...] = ()


# -- pure config text handling ---------------------------------------------------------------


def _split(line: str) -> tuple[str, str] | None:
    """``key = value`` → (key, value); comments and blank lines → None."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    key, _, value = stripped.partition("=")
    return key.strip(), value.strip()


def _line(key: str, value: str) -> str:
    return f"{key} = {value}".rstrip()


def config_values(text: str, key: str) -> list[str]:
    """Every value of ``key`` in config ``text``, in order (an empty value resets list keys)."""
    return [kv[1] for kv in map(_split, text.splitlines()) if kv is not None and kv[0] == key]


def apply_settings(text: str, settings: Iterable[Setting]) -> str:
    """Return config ``text`` with ``settings`` applied; applying them again returns the same text."""
    lines = text.splitlines()
    for setting in settings:
        where = [i for i, line in enumerate(lines) if (kv := _split(line)) is not None and kv[0] == setting.key]
        if setting.mode is Mode.ADD:
            present = {" ".join((_split(lines[i]) or ("", ""))[1].split()) for i in where}
            lines += [_line(setting.key, v) for v in setting.values if " ".join(v.split()) not in present]
            continue
        if setting.mode is Mode.DEFAULT and where:
            # LXC lets the last line win, so that is the value that has been in effect.
            wanted = [_line(setting.key, (_split(lines[where[-1]]) or ("", ""))[1])]
        else:
            wanted = [_line(setting.key, v) for v in setting.values]
        if not where:
            lines += wanted
            continue
        for i in reversed(where):
            del lines[i]
        lines[where[0] : where[0]] = wanted
    return "\n".join(lines) + "\n"


def forced_mount_auto(values: Sequence[str]) -> str:
    """Merge ``lxc.mount.auto`` values into one with ``cgroup:mixed:force``, keeping the proc, sys and other choices.

    An empty value resets the list (lxc.container.conf(5)), so only what follows the last one counts.
    """
    last_reset = max((i for i, v in enumerate(values) if not v.strip()), default=-1)
    tokens = [t for v in values[last_reset + 1 :] for t in v.split()]
    kinds = {t.split(":")[0]: t for t in reversed(tokens)}  # first occurrence of each kind wins
    rest = [t for t in tokens if t.split(":")[0] not in ("cgroup", "cgroup-full", "proc", "sys")]
    return " ".join([CGROUP_AUTO, kinds.get("proc", "proc:mixed"), kinds.get("sys", "sys:ro"), *rest])


def detect_kind(text: str) -> str | None:
    """The kind recorded in a config: our marker, or the template comment lxc-create writes; None if unknown."""
    for line in text.splitlines():
        if line.startswith(KIND_MARKER):
            kind = line[len(KIND_MARKER) :].strip()
            return kind if kind in KINDS else None
        if line.startswith(_TEMPLATE_MARKER):
            kind = line[len(_TEMPLATE_MARKER) :].strip()
            return kind if kind in ("busybox", "debian") else None
    return None


def busybox_settings(text: str) -> list[Setting]:
    """The fixes a busybox-template config needs; they depend on what the template wrote."""
    return [
        Setting("lxc.pty.max", (PTY_MAX,)),
        Setting("lxc.mount.auto", (forced_mount_auto(config_values(text, "lxc.mount.auto")),)),
        # The template bind-mounts the host's /lib and /usr/lib read-only; with CAP_SYS_ADMIN, root
        # inside could remount them writable (measured on hostfs's /usr).
        Setting("lxc.cap.drop", ("sys_admin",), Mode.ADD),
    ]


def hostfs_settings(name: str, rootfs: str) -> list[Setting]:
    """The whole config of a hostfs container, in order (the include must precede what overrides it)."""
    return [
        # The distribution default: device allowlist, seccomp filter, capability drops, and the
        # clonehostname hook that renames /etc/hostname in clones.
        Setting("lxc.include", (COMMON_CONF,), Mode.ADD),
        Setting("lxc.rootfs.path", (f"dir:{rootfs}",), Mode.DEFAULT),
        Setting("lxc.uts.name", (name,), Mode.DEFAULT),
        Setting("lxc.autodev", ("1",), Mode.DEFAULT),
        Setting("lxc.pty.max", (PTY_MAX,)),
        # The empty value resets common.conf's list, which has "sys:mixed" and an unforced cgroup.
        Setting("lxc.mount.auto", ("", f"proc:mixed sys:ro {CGROUP_AUTO}")),
        Setting(
            "lxc.mount.entry",
            ("/usr usr none ro,bind,nosuid 0 0", "shm dev/shm tmpfs defaults,nosuid,nodev,create=dir 0 0"),
            Mode.ADD,
        ),
        # Root inside could otherwise `mount -o remount,rw /usr` and write to the host's /usr (measured).
        Setting("lxc.cap.drop", ("sys_admin",), Mode.ADD),
        # lxc-init(1) refuses to run without -n; the name is only used in its log messages, so a clone
        # that keeps the original name here works the same.
        Setting("lxc.init.cmd", (f"{INIT_LXC} -n {name} -- /usr/bin/sleep infinity",), Mode.DEFAULT),
    ]


def settings_for(kind: str, name: str, config_text: str, container_dir: str) -> list[Setting]:
    if kind == "busybox":
        return busybox_settings(config_text)
    if kind == "hostfs":
        return hostfs_settings(name, os.path.join(container_dir, "rootfs"))
    return []  # debian: debian.common.conf already has lxc.pty.max = 1024, and systemd mounts cgroups


# -- the hostfs root file system --------------------------------------------------------------

_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
student:x:1000:1000:Student:/home/student:/bin/bash
"""
_GROUP = """\
root:x:0:
tty:x:5:
staff:x:50:
users:x:100:
student:x:1000:
nogroup:x:65534:
"""
_SHADOW = "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nstudent:*:19000:0:99999:7:::\n"
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nservices: files\n"
_SHELLS = "/bin/sh\n/bin/bash\n/usr/bin/sh\n/usr/bin/bash\n"

# (path, mode, owner uid): the directories a userland expects; /dev, /proc, /sys are mount points.
_DIRS: tuple[tuple[str, int, int], ...] = (
    ("usr", 0o755, 0),
    ("etc", 0o755, 0),
    ("dev", 0o755, 0),
    ("proc", 0o555, 0),
    ("sys", 0o555, 0),
    ("run", 0o755, 0),
    ("run/lock", 0o1777, 0),
    ("root", 0o700, 0),
    ("home", 0o755, 0),
    ("home/student", 0o755, STUDENT_UID),
    ("tmp", 0o1777, 0),
    ("var", 0o755, 0),
    ("var/tmp", 0o1777, 0),
    ("var/lib", 0o755, 0),
    ("var/log", 0o755, 0),
    ("var/cache", 0o755, 0),
    ("mnt", 0o755, 0),
    ("opt", 0o755, 0),
    ("srv", 0o755, 0),
)


def hostfs_files(name: str) -> dict[str, tuple[str, int]]:
    """The files of a new hostfs /etc: relative path → (content, mode)."""
    return {
        "etc/passwd": (_PASSWD, 0o644),
        "etc/group": (_GROUP, 0o644),
        "etc/shadow": (_SHADOW, 0o600),
        "etc/hostname": (f"{name}\n", 0o644),
        # lxc-copy rewrites the old name to the new one in /etc/hostname and /etc/hosts of a clone.
        "etc/hosts": (f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/nsswitch.conf": (_NSSWITCH, 0o644),
        "etc/shells": (_SHELLS, 0o644),
    }


def _host_usr_links() -> list[str]:
    """Top-level names that are symlinks into /usr on the host (merged /usr): bin, sbin, lib, lib64..."""
    links = []
    for entry in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", entry)
        if path.is_symlink() and os.readlink(path).lstrip("/") == f"usr/{entry}":
            links.append(entry)
    return links


def check_hostfs_host() -> None:
    """Raise ConfigError unless this host can lend its /usr: merged /usr, bash and init.lxc present."""
    if not {"bin", "sbin", "lib"} <= set(_host_usr_links()):
        raise ConfigError("the hostfs kind needs a merged-/usr host (/bin -> usr/bin); use --kind debian")
    for needed in (INIT_LXC, "/usr/bin/bash", "/usr/bin/sleep"):
        if not os.access(needed, os.X_OK):
            raise ConfigError(f"the hostfs kind needs {needed} on the host (package liblxc-common or bash)")


def populate_hostfs(rootfs: str, name: str) -> None:
    """Write the rootfs of a new, never started hostfs container; existing files are left alone.

    Only ever called before the container's first start: once it has run, root inside could have
    replaced a directory by a symlink into the host, and this code runs on the host as root.
    """
    root = Path(rootfs)
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    for rel, mode, uid in _DIRS:
        path = root / rel
        if not path.exists() and not path.is_symlink():
            path.mkdir(mode=mode)
            path.chmod(mode)  # mkdir's mode is filtered by the umask
            if uid:
                os.chown(path, uid, uid)
    for entry in _host_usr_links():
        link = root / entry
        if not link.exists() and not link.is_symlink():
            link.symlink_to(f"usr/{entry}")
    for rel, (content, mode) in hostfs_files(name).items():
        try:
            fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(root / rel, mode)
    for rel, target in (("etc/mtab", "../proc/self/mounts"), ("etc/os-release", "../usr/lib/os-release")):
        link = root / rel
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)


# -- creating each kind -----------------------------------------------------------------------


def _require_tool(tool: str, packages: str, kind: str) -> None:
    if shutil.which(tool, path=TOOL_ENV["PATH"]) is None:
        raise ConfigError(f"the {kind} kind needs {tool!r}: apt-get install {packages}")


def _with_config_file(text: str, action: Callable[[str], object]) -> None:
    """Run ``action(path)`` with ``text`` in a temporary file (for ``lxc-create -f``), then remove it."""
    fd, path = tempfile.mkstemp(prefix="lxck-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        action(path)
    finally:
        os.unlink(path)


def _dir_rootfs(config_text: str) -> str:
    """The rootfs directory of a ``dir`` backed container (``dir:/path`` or a plain path) from its config."""
    values = config_values(config_text, "lxc.rootfs.path")
    path = values[-1] if values else ""
    path = path[4:] if path.startswith("dir:") else path
    if not path.startswith("/") or ":" in path:
        raise ConfigError(f"cannot shift the owners of rootfs {path or '(none)'!r}: only a directory rootfs can be "
                          "made unprivileged here; use --privileged")
    return path


def check_reachable(container_dir: str, idmap: ids.IdMap) -> None:
    """Raise ConfigError unless the mapped root can walk down to ``container_dir``.

    LXC mounts an unprivileged container's rootfs as the mapped root, so every directory above it must be
    searchable by that uid; otherwise start fails with ``dir_mount: Permission denied`` (measured, LXC 5.0.2).
    """
    parent = os.path.dirname(os.path.abspath(container_dir))
    while True:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            st = None  # lxc-create makes it (0755)
        if st is not None:
            if st.st_uid == idmap.uid:
                ok = st.st_mode & 0o100
            elif st.st_gid == idmap.gid:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok:
                raise ConfigError(
                    f"an unprivileged container under {os.path.dirname(container_dir)} cannot start: its root "
                    f"(host uid {idmap.uid}) cannot enter {parent} (mode {st.st_mode & 0o7777:04o}). Use another "
                    f"lxcpath, make {parent} searchable (chmod o+x), or pass --privileged"
                )
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def make_unprivileged(ct: Container, idmap: ids.IdMap) -> ids.ShiftResult:
    """Turn a just-created privileged, never started container into an unprivileged one: shift its rootfs's
    owners, then add the map to its config. Never for a container that has run (see ``idmap.shift_tree``)."""
    config_path = ct.config_path()
    text = _read(config_path)
    result = ids.shift_tree(_dir_rootfs(text), idmap)
    _write(config_path, apply_settings(text, [Setting("lxc.idmap", idmap.config_values())]))
    return result


def _discard(ct: Container) -> None:
    """Remove a container this run created and could not finish, so that a retry starts clean."""
    try:
        ct.destroy(snapshots=True)
    except LxcKernelError:
        pass


def _create_busybox(ct: Container, container_dir: str, idmap: ids.IdMap | None) -> None:
    _require_tool("busybox", "busybox-static", "busybox")
    # With the map in the create config, lxc-busybox chowns what it writes itself (measured, 0.3 s).
    config = NET_EMPTY_CONFIG + (idmap.config_text() if idmap else "")
    _with_config_file(config, lambda path: ct.create("busybox", config_file=path, timeout=120))


def _create_debian(ct: Container, container_dir: str, idmap: ids.IdMap | None) -> None:
    for tool in ("debootstrap", "rsync", "wget"):
        _require_tool(tool, "debootstrap rsync wget distro-info debian-archive-keyring", "debian")
    # lxc-debian refuses to run for an unprivileged container ("can't be used for unprivileged containers"):
    # it is created privileged, then shifted before its first start (10.5k entries, about 0.3 s).
    _with_config_file(
        NET_EMPTY_CONFIG,
        lambda path: ct.create("debian", config_file=path, template_args=["-r", DEBIAN_RELEASE], timeout=1800),
    )
    if idmap is not None:
        try:
            make_unprivileged(ct, idmap)
        except (LxcKernelError, OSError):
            _discard(ct)
            raise


def _create_hostfs(ct: Container, container_dir: str, idmap: ids.IdMap | None) -> None:
    check_hostfs_host()
    rootfs = os.path.join(container_dir, "rootfs")
    had_dir = os.path.exists(container_dir)
    # `lxc-create -t none` only writes the config, and refuses a lxc.rootfs.path that doesn't exist
    # yet (leaving an empty container directory behind). So the rootfs is written first, and the
    # config last: until lxc-create has written it, LXC does not see a container at all.
    try:
        if not had_dir:
            os.makedirs(os.path.dirname(container_dir), 0o755, exist_ok=True)  # the lxcpath, as lxc-create would
            os.mkdir(container_dir, ids.PRIVILEGED_DIR_MODE)
        populate_hostfs(rootfs, ct.name)
        if idmap is not None:
            # About 33 entries. The host's /usr is bind-mounted at start and keeps its owners: inside it
            # shows as nobody (65534), and it still executes.
            ids.shift_tree(rootfs, idmap)
        text = (NET_EMPTY_CONFIG + KIND_MARKER + "hostfs\n" + (idmap.config_text() if idmap else "")
                + apply_settings("", hostfs_settings(ct.name, rootfs)))
        _with_config_file(text, lambda path: ct.create("none", config_file=path, timeout=60))
    except (LxcKernelError, OSError):
        if not had_dir and not os.path.exists(os.path.join(container_dir, "config")):
            shutil.rmtree(container_dir, ignore_errors=True)
        raise


_CREATE: dict[str, Callable[[Container, str, ids.IdMap | None], None]] = {
    "busybox": _create_busybox,
    "hostfs": _create_hostfs,
    "debian": _create_debian,
}


def check_extra_config(config: str) -> None:
    """Refuse ``lxc.idmap`` in config text given for a new container: the map comes from root's range."""
    if "lxc.idmap" in {kv[0] for kv in map(_split, config.splitlines()) if kv}:
        raise ConfigError("lxc.idmap is chosen by lxc-kernel (root's range in /etc/subuid); to pick another "
                          "map, create the container with lxc-create, or add --privileged for none")


def create_from_template(
    ct: Container,
    template: str,
    *,
    config: str = "",
    template_args: Sequence[str] = (),
    privileged: bool = False,
    timeout: float = 900.0,
) -> ids.IdMap | None:
    """``lxc-create`` with any template (for ``%lxc create -t TEMPLATE``), unprivileged unless asked.

    ``config`` is extra config text (``KEY = VALUE`` lines) after the empty network. lxc-busybox handles
    the map itself; any other template runs as for a privileged container (most refuse or break under
    a user namespace, lxc-debian among them), and its rootfs is then shifted. Returns the map (None:
    privileged). A container that could not be made unprivileged is removed again.
    """
    check_extra_config(config)
    container_dir = os.path.dirname(ct.config_path())
    idmap = None if privileged else ids.root_map()
    if idmap is not None:
        check_reachable(container_dir, idmap)
    in_config = idmap is not None and template in ("busybox", "/usr/share/lxc/templates/lxc-busybox")
    text = NET_EMPTY_CONFIG + (idmap.config_text() if in_config and idmap else "") + config
    _with_config_file(text, lambda path: ct.create(template, config_file=path, template_args=template_args,
                                                   timeout=timeout))
    try:
        if idmap is not None and not in_config:
            make_unprivileged(ct, idmap)
        ids.secure_container_dir(container_dir, idmap)
    except (LxcKernelError, OSError):
        _discard(ct)
        raise
    return idmap


def container_idmap(ct: Container) -> ids.IdMap | None:
    """The map of container root from the config file (None: privileged; unreadable: None too)."""
    try:
        text = Path(ct.config_path()).read_text()
    except OSError:
        return None
    return ids.parse_idmap(config_values(text, "lxc.idmap"))


PRIVILEGED_WARNING = (
    "{name} is privileged: root inside it is root on the host (uid 0 is not mapped), and LXC does not "
    "consider such containers safe against root inside. Leave out --privileged for an unprivileged one."
)


# -- public API ---------------------------------------------------------------------------------


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown container kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise LxcKernelError(f"cannot read {path}: {exc.strerror} (provisioning needs root)") from exc


def _write(path: str, text: str) -> None:
    """Replace the file atomically, keeping its mode (lxc-create writes configs 0640)."""
    mode = os.stat(path).st_mode & 0o7777
    tmp = f"{path}.lxck-tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise LxcKernelError(f"cannot write {path}: {exc.strerror} (provisioning needs root)") from exc


def _changed_keys(before: str, after: str) -> tuple[str, ...]:
    old = [kv for kv in map(_split, before.splitlines()) if kv]
    new = [kv for kv in map(_split, after.splitlines()) if kv]
    keys = {k for k, _ in old} | {k for k, _ in new}
    return tuple(sorted(k for k in keys if [kv for kv in old if kv[0] == k] != [kv for kv in new if kv[0] == k]))


def _bring_up(ct: Container, timeout: float) -> State:
    """Make the container RUNNING from whatever state it is in; return the state reached."""
    state = ct.state()
    if state is State.STARTING:
        state = ct.wait(State.RUNNING, timeout)
    elif state is State.STOPPING:
        state = ct.wait(State.STOPPED, timeout)
    if state in (State.FROZEN, State.FREEZING):
        state = ct.unfreeze(timeout)
    if state is State.STOPPED:
        state = ct.start(timeout)
    if state is not State.RUNNING:
        raise LxcKernelError(
            f"container {ct.name!r} did not start (it is {state.value}); see why with "
            f"`lxc-start -n {ct.name} -F -l DEBUG -o /dev/stderr`"
        )
    return state


def provision(
    name: str,
    kind: str = "hostfs",
    *,
    start: bool = True,
    tools: Tools | None = None,
    timeout: float = 30.0,
    privileged: bool = False,
) -> Provisioned:
    """Create ``name`` if missing, fix its config, start it if asked; report what was done.

    A new container is unprivileged unless ``privileged``. An existing one keeps whatever it is (a
    privileged container made before keeps working; the warnings say what it means). An existing
    container of another kind is refused (ConfigError); one whose kind can't be told (made outside this
    module) is only started, and its config left alone.
    """
    t0 = time.monotonic()
    validate_name(name)
    _check_kind(kind)
    tools = tools or Tools()
    if tools.lxcpath:
        validate_path(tools.lxcpath, "lxcpath")
    ct = Container(name, tools)
    config_path = ct.config_path()
    container_dir = os.path.dirname(config_path)

    created = ct.state() is State.MISSING
    warnings: list[str] = []
    if created:
        new_map = None if privileged else ids.root_map()
        if new_map is not None:
            check_reachable(container_dir, new_map)
        _CREATE[kind](ct, container_dir, new_map)
        try:
            ids.secure_container_dir(container_dir, new_map)
        except OSError:
            _discard(ct)
            raise
    before = _read(config_path)
    found = kind if created else detect_kind(before)
    if found is not None and found != kind:
        raise ConfigError(
            f"container {name!r} exists and is a {found} container, not {kind}: "
            f"use --kind {found}, another name, or destroy it first"
        )
    idmap = ids.parse_idmap(config_values(before, "lxc.idmap"))
    if idmap is None:
        warnings.append(PRIVILEGED_WARNING.format(name=name) if created else
                        f"{name} is privileged (made before containers were unprivileged by default, or with "
                        f"--privileged): root inside it is root on the host. Destroy it (--destroy) and provision "
                        f"it again to make it unprivileged.")
    if (problem := ids.dir_mode_problem(container_dir)) is not None:
        warnings.append(problem)

    changed: tuple[str, ...] = ()
    if found is not None:
        after = apply_settings(before, settings_for(found, name, before, container_dir))
        if after != before:
            _write(config_path, after)
            changed = _changed_keys(before, after)

    state = ct.state()
    # LXC reads the config at start only: a running container keeps the old settings until restarted.
    restart_needed = bool(changed) and not created and state is not State.STOPPED
    if start:
        state = _bring_up(ct, timeout)
    return Provisioned(ct, found, created, changed, restart_needed, state, time.monotonic() - t0, idmap,
                       tuple(warnings))


def ensure_container(name: str, kind: str = "hostfs", *, start: bool = True, tools: Tools | None = None) -> Container:
    """Create ``name`` (of ``kind``) if missing, fix its config idempotently, and start it unless ``start=False``."""
    return provision(name, kind, start=start, tools=tools).container


def destroy_container(name: str, tools: Tools | None = None, timeout: float = 30.0) -> bool:
    """Stop (kill) and destroy ``name`` with its snapshots; False if it did not exist."""
    ct = Container(name, tools)
    state = ct.state()
    if state is State.MISSING:
        return False
    if state in (State.FROZEN, State.FREEZING):
        ct.unfreeze()  # a frozen task cannot die, so SIGKILL would wait for a thaw
    if state is not State.STOPPED:
        ct.run("lxc-stop", "-k", check=False, timeout=timeout)
        # Not Container.stop(): an ephemeral container goes straight to MISSING, never STOPPED.
        deadline = time.monotonic() + timeout
        while (state := ct.state()) not in (State.STOPPED, State.MISSING) and time.monotonic() < deadline:
            time.sleep(0.05)
    if state is State.MISSING:  # lxc-copy -e: destroyed on stop
        return True
    if state is not State.STOPPED:
        raise LxcKernelError(f"container {name!r} did not stop within {timeout:g} s (it is {state.value})")
    ct.destroy(snapshots=True)
    return True


# -- command line -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise SystemExit(f"{self.prog}: error: {message}")


def _one_line(exc: BaseException) -> str:
    """The first line of the message, and the last line of a tool's output if there is more."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m lxc_kernel.provision",
        description="Create (if missing), configure and start an LXC container for lxc-kernel.",
    )
    parser.add_argument("name", help="container name")
    parser.add_argument("--kind", choices=KINDS, default="hostfs", help="what to create (default: hostfs)")
    parser.add_argument("--no-start", dest="start", action="store_false", help="create and configure only")
    parser.add_argument("--destroy", action="store_true", help="stop and destroy the container instead")
    parser.add_argument("--lxcpath", help="container directory (default: lxc-config lxc.lxcpath)")
    parser.add_argument("--privileged", action="store_true",
                        help="create it without a user namespace: root inside is root on the host (not safe)")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        # Refuse bad input before any lxc-* tool runs.
        validate_name(args.name)
        tools = Tools(lxcpath=validate_path(args.lxcpath, "lxcpath") if args.lxcpath else None)
        if args.destroy:
            print(f"destroyed {args.name}" if destroy_container(args.name, tools) else f"absent {args.name}")
            return 0
        done = provision(args.name, args.kind, start=args.start, tools=tools, privileged=args.privileged)
    except (LxcKernelError, OSError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    kind = done.kind or "unknown kind, config left as it was"
    verb = "created" if done.created else "exists"
    print(f"{verb} {args.name} ({kind}) in {done.seconds:.2f} s")
    print(f"unprivileged: {done.idmap.describe()}" if done.idmap else "privileged")
    for warning in done.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    if done.changed and not done.created:
        note = "; restart it to apply" if done.restart_needed else ""
        print(f"config updated: {', '.join(done.changed)}{note}")
    print(f"state {done.state.value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
