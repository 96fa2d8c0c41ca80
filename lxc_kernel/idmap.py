"""Unprivileged containers: root's subordinate id range, the ``lxc.idmap`` lines, and shifting a rootfs's owners.

A container with ``lxc.idmap = u 0 B 65536`` and ``g 0 B 65536`` runs in a user namespace: uid 0 inside is
uid B on the host, so root in the container is nobody special outside it. B comes from root's line in
``/etc/subuid`` and ``/etc/subgid``: where ``newuidmap`` is installed (package ``uidmap``), LXC uses it, and it
refuses a range that is not root's (start then fails with ``newuidmap: ... not allowed``, measured, LXC 5.0.2).

A root file system made for a privileged container has files owned by 0..65535; :func:`shift_tree` moves
them to B..B+65535 on the host, which is what the mapped ids are. Idmapped mounts (``idmap=container``)
would avoid the shift but break ``lxc-copy -e`` and ``-s`` on overlay (``ovl_mount: Invalid argument``),
and ephemeral kernels depend on those.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .bounded import read_capped
from .errors import ConfigError

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
MAP_SIZE = 65536  # ids 0..65535 inside: every id a distribution's packages use, and nobody (65534)
# The line Incus's Debian package adds for root when root has none: a later `incus` install then shares it
# instead of adding a second, overlapping one.
ROOT_START, ROOT_COUNT = 1_000_000, 1_000_000_000
_SUBID_LIMIT = 1 << 20  # /etc/subuid has a line per user; a megabyte is thousands of users

# Container directories: with 0755, any host user can walk into a rootfs and run a setuid-root file that
# root in a privileged (or idmapped) container wrote there (measured: it ran with euid 0). The mapped root
# must still traverse the directory of an unprivileged one, or `lxc-start` fails with
# `dir_mount: Permission denied` (measured, LXC 5.0.2), so it gets the group.
PRIVILEGED_DIR_MODE = 0o700
UNPRIVILEGED_DIR_MODE = 0o770


@dataclass(frozen=True)
class IdRange:
    """``start`` and ``count`` of one subordinate id range (``name:start:count``)."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end


# -- /etc/subuid and /etc/subgid (pure parts first) -----------------------------------------------------


def parse_subid(text: str) -> list[tuple[str, IdRange]]:
    """Pure: every well-formed ``name:start:count`` line of a subuid/subgid file, in order."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or line.lstrip().startswith("#") or not fields[0]:
            continue
        start, count = fields[1].strip(), fields[2].strip()
        if start.isdigit() and count.isdigit() and int(count) > 0:
            out.append((fields[0].strip(), IdRange(int(start), int(count))))
    return out


def root_ranges(text: str) -> list[IdRange]:
    """Pure: root's ranges, named ``root`` or by uid ``0`` (subuid(5) allows both)."""
    return [r for name, r in parse_subid(text) if name in ("root", "0")]


def root_line_to_add(text: str) -> str | None:
    """Pure: the line to append so that root has a range of at least :data:`MAP_SIZE` ids, or None if it has one.

    Root never gets a second line: a too-small range of root's is an error for a person to fix, and so is
    another user's range over the one this would add (that user could then map container root's files).
    """
    own = root_ranges(text)
    if any(r.count >= MAP_SIZE for r in own):
        return None
    if own:
        raise ConfigError(f"root's subordinate id range is smaller than {MAP_SIZE} ids; "
                          f"make it at least that large to create unprivileged containers")
    new = IdRange(ROOT_START, ROOT_COUNT)
    for name, r in parse_subid(text):
        if r.overlaps(new):
            raise ConfigError(f"root has no subordinate id range, and {name}'s range {r.start}-{r.end - 1} is "
                              f"where this would add one ({ROOT_START}-{ROOT_START + ROOT_COUNT - 1}): "
                              f"add a line `root:START:COUNT` that overlaps no other range")
    return f"root:{ROOT_START}:{ROOT_COUNT}"


def root_base(text: str) -> int:
    """Pure: the host id that container root maps to: the start of root's first range large enough."""
    for r in root_ranges(text):
        if r.count >= MAP_SIZE:
            return r.start
    raise ConfigError("root has no subordinate id range of at least 65536 ids")


def _read_subid(path: str) -> str:
    if not os.path.exists(path):
        return ""
    data = read_capped(path, _SUBID_LIMIT + 1)
    if data is None:
        raise ConfigError(f"cannot read {path} (creating unprivileged containers needs root)")
    if len(data) > _SUBID_LIMIT:
        raise ConfigError(f"{path} is larger than {_SUBID_LIMIT} bytes; refusing to parse it")
    return data.decode("utf-8", "replace")


def ensure_root_range(path: str) -> int:
    """Root's base id in ``path`` (a subuid or subgid file), after adding root's line if it has none.

    The check and the append happen under an exclusive lock on the file, so two provisioning runs cannot
    both add a line. A missing file is created 0644, as shadow-utils makes it.
    """
    text = _read_subid(path)
    if root_line_to_add(text) is None:
        return root_base(text)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot add root's range to {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = _read_subid(path)  # again, under the lock
        line = root_line_to_add(text)
        if line is not None:
            sep = "\n" if text and not text.endswith("\n") else ""
            os.write(fd, f"{sep}{line}\n".encode())
            text += f"{sep}{line}\n"
        return root_base(text)
    finally:
        os.close(fd)


# -- the map -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdMap:
    """Container uid/gid 0..size-1 are host ``uid``/``gid``..+size-1."""

    uid: int
    gid: int
    size: int = MAP_SIZE

    def config_values(self) -> tuple[str, str]:
        """The two ``lxc.idmap`` values (lxc.container.conf(5): ``u|g NSID HOSTID RANGE``)."""
        return (f"u 0 {self.uid} {self.size}", f"g 0 {self.gid} {self.size}")

    def config_text(self) -> str:
        return "".join(f"lxc.idmap = {v}\n" for v in self.config_values())

    def describe(self) -> str:
        return (f"uid 0-{self.size - 1} -> {self.uid}-{self.uid + self.size - 1}, "
                f"gid 0-{self.size - 1} -> {self.gid}-{self.gid + self.size - 1} on the host")


def root_map(subuid: str = SUBUID, subgid: str = SUBGID) -> IdMap:
    """The map for a new root-owned unprivileged container, from root's ranges (added where missing)."""
    return IdMap(ensure_root_range(subuid), ensure_root_range(subgid))


def parse_idmap(values: Sequence[str]) -> IdMap | None:
    """Pure: the map of container root from a config's ``lxc.idmap`` values; None means privileged.

    An empty value clears the list (lxc.container.conf(5)). A map that doesn't cover root on both
    sides gives None too: LXC refuses to start it, so it never runs privileged by mistake either.
    """
    last_reset = max((i for i, v in enumerate(values) if not v.strip()), default=-1)
    root: dict[str, tuple[int, int]] = {}  # "u"/"g" -> (host id, count) of the entry that maps id 0
    for value in values[last_reset + 1 :]:
        fields = value.split()
        if len(fields) == 4 and fields[0] in ("u", "g") and fields[1] == "0" and all(f.isdigit() for f in fields[2:]):
            root.setdefault(fields[0], (int(fields[2]), int(fields[3])))
    if "u" not in root or "g" not in root:
        return None
    return IdMap(root["u"][0], root["g"][0], min(root["u"][1], root["g"][1]))


# -- shifting a root file system ------------------------------------------------------------------------

_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_CAP_XATTR = "security.capability"
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")  # tag, permissions, id (linux/posix_acl_xattr.h)
_ACL_VERSION = 2
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # the tags whose entries carry an id
# linux/capability.h: struct vfs_cap_data; the revision is the top byte of magic_etc.
_CAP_REVISION_MASK = 0xFF000000
_CAP_V2, _CAP_V3 = 0x02000000, 0x03000000
_CAP_V2_SIZE, _CAP_V3_SIZE = 20, 24


def shift_acl(blob: bytes, idmap: IdMap) -> bytes:
    """Pure: a ``system.posix_acl_*`` value with the ids of its named user and group entries shifted."""
    if len(blob) < _ACL_HEADER.size or (len(blob) - _ACL_HEADER.size) % _ACL_ENTRY.size:
        raise ValueError("malformed POSIX ACL")
    (version,) = _ACL_HEADER.unpack_from(blob)
    if version != _ACL_VERSION:
        raise ValueError(f"unknown POSIX ACL version {version}")
    out = bytearray(blob)
    for offset in range(_ACL_HEADER.size, len(blob), _ACL_ENTRY.size):
        tag, perm, ident = _ACL_ENTRY.unpack_from(blob, offset)
        if tag == _ACL_USER and ident < idmap.size:
            _ACL_ENTRY.pack_into(out, offset, tag, perm, ident + idmap.uid)
        elif tag == _ACL_GROUP and ident < idmap.size:
            _ACL_ENTRY.pack_into(out, offset, tag, perm, ident + idmap.gid)
    return bytes(out)


def shift_capability(blob: bytes, idmap: IdMap) -> bytes:
    """Pure: a ``security.capability`` value as a v3 one whose root is container root.

    A v2 value (no root id) belongs to the initial user namespace, and the kernel ignores it inside a
    container whose root is another uid (security/commoncap.c, rootid_owns_currentns); v3 carries the
    root id it belongs to (capabilities(7), "Namespaced file capabilities").
    """
    if len(blob) < 4:
        raise ValueError("malformed file capability")
    (magic,) = struct.unpack_from("<I", blob)
    revision = magic & _CAP_REVISION_MASK
    if revision == _CAP_V2 and len(blob) == _CAP_V2_SIZE:
        rootid = 0
    elif revision == _CAP_V3 and len(blob) == _CAP_V3_SIZE:
        (rootid,) = struct.unpack_from("<I", blob, _CAP_V2_SIZE)
    else:
        raise ValueError(f"unsupported file capability revision {revision >> 24}")
    if rootid >= idmap.size:
        return blob  # already someone else's (or already shifted): leave it
    flags = magic & ~_CAP_REVISION_MASK
    return struct.pack("<I", _CAP_V3 | flags) + blob[4:_CAP_V2_SIZE] + struct.pack("<I", rootid + idmap.uid)


@dataclass(frozen=True)
class ShiftResult:
    entries: int  # entries whose owner was shifted
    skipped: int  # already shifted (a second run, or another link to a shifted inode)


def _walk(root: str, dev: int) -> Iterator[tuple[str, os.stat_result]]:
    """``root`` and everything under it, without following symlinks or entering other file systems."""
    st = os.lstat(root)
    yield root, st
    stack = [root]
    while stack:
        top = stack.pop()
        with os.scandir(top) as it:
            for entry in it:
                est = entry.stat(follow_symlinks=False)
                yield entry.path, est
                if stat.S_ISDIR(est.st_mode) and est.st_dev == dev:
                    stack.append(entry.path)


def _shift_id(ident: int, base: int, size: int, path: str) -> int | None:
    """The shifted id, or None if it already is one (a second run)."""
    if ident < size:
        return ident + base
    if base <= ident < base + size:
        return None
    raise ConfigError(f"{path} is owned by id {ident}, outside 0-{size - 1}: cannot shift this root file system")


def shift_tree(root: str, idmap: IdMap) -> ShiftResult:
    """Move the owners of ``root`` and everything under it from 0..size-1 to the map's host ids.

    Keeps what ``chown`` would lose: the setuid/setgid bits (chown clears them, so the mode is set
    again), POSIX ACLs (their named ids are shifted too) and file capabilities (chown removes
    ``security.capability``; it is written back as v3 with container root's id). Symlinks are not
    followed, and other file systems are not entered.

    Host root runs this, so it is only for a root file system no container has run yet (created just
    now), whose directories cannot be symlinks planted by root inside.
    """
    dev = os.lstat(root).st_dev
    shifted = skipped = 0
    seen: set[tuple[int, int]] = set()
    for path, st in _walk(root, dev):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        uid = _shift_id(st.st_uid, idmap.uid, idmap.size, path)
        gid = _shift_id(st.st_gid, idmap.gid, idmap.size, path)
        if uid is None and gid is None:
            skipped += 1
            continue
        is_link = stat.S_ISLNK(st.st_mode)
        xattrs = {} if is_link else _read_xattrs(path)
        os.chown(path, st.st_uid if uid is None else uid, st.st_gid if gid is None else gid,
                 follow_symlinks=False)
        if not is_link:
            for name, value in xattrs.items():
                new = shift_capability(value, idmap) if name == _CAP_XATTR else shift_acl(value, idmap)
                os.setxattr(path, name, new, follow_symlinks=False)
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))
        shifted += 1
    return ShiftResult(shifted, skipped)


def _read_xattrs(path: str) -> dict[str, bytes]:
    """The ACL and capability attributes of ``path`` that exist (one listxattr, then only those)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names if n in (*_ACL_XATTRS, _CAP_XATTR)}


def secure_container_dir(path: str, idmap: IdMap | None) -> None:
    """Make a container directory 0700 root:root (privileged) or 0770 root:<mapped root's gid>."""
    os.chown(path, 0, 0 if idmap is None else idmap.gid, follow_symlinks=False)
    os.chmod(path, PRIVILEGED_DIR_MODE if idmap is None else UNPRIVILEGED_DIR_MODE)


def dir_mode_problem(path: str) -> str | None:
    """Why a container directory lets host users in (any bit for others), or None if it doesn't."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o007:
        return (f"{path} is mode {mode:04o}: any host user can walk into its rootfs and run setuid files that "
                f"root in the container wrote; `chmod o-rwx {path}` closes that")
    return None
