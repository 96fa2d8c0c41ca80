"""Private directories on the kernel's host (spill files, lock files), checked through a descriptor.

A path checked and then used can be swapped in between (another user's symlink where a directory was):
every check here runs ``fstat`` on a descriptor opened with ``O_DIRECTORY|O_NOFOLLOW``, and every
file is then made relative to that descriptor (``dir_fd``), so what was checked is what gets written.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from .errors import ConfigError

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectory(ConfigError):
    """A directory the kernel must not write into: missing, a symlink, someone else's, or writable by others."""


def _normal(path: str) -> str:
    # A trailing slash makes the kernel follow a final symlink even with O_NOFOLLOW.
    return path.rstrip("/") or "/"


def open_dir(path: str, what: str, dir_fd: int | None = None) -> int:
    """An ``O_DIRECTORY|O_NOFOLLOW`` descriptor of ``path``; UnsafeDirectory says why not."""
    try:
        return os.open(_normal(path), _OPEN_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            # With O_DIRECTORY the kernel says ENOTDIR for a symlink too; the refusal stands either way,
            # this only words it (lstat of the name, after the fact).
            try:
                if stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode):
                    exc.errno = errno.ELOOP
            except OSError:
                pass
        reason = {
            errno.ELOOP: "is a symbolic link",
            errno.ENOTDIR: "is not a directory",
            errno.ENOENT: "does not exist",
            errno.EACCES: "is not accessible",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise UnsafeDirectory(f"{what} {path} {reason}") from None


def check_private(fd: int, path: str, what: str, *, group_read: bool = True) -> None:
    """The directory behind ``fd`` is owned by this process's user and nobody else may write in it
    (with ``group_read=False``: nor read it)."""
    st = os.fstat(fd)
    euid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{what} {path} is not a directory")
    if st.st_uid != euid:
        raise UnsafeDirectory(f"{what} {path} is owned by uid {st.st_uid}, not by this kernel's user (uid {euid})")
    forbidden = 0o022 if group_read else 0o077
    if st.st_mode & forbidden:
        kind = "group- or world-writable" if st.st_mode & 0o022 else "readable by others"
        raise UnsafeDirectory(f"{what} {path} is {kind} (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"use a directory only its owner can write (chmod {0o755 & ~forbidden:o})")


def check_shared_tmp(fd: int, path: str, what: str) -> None:
    """A parent like /tmp: a real directory of root or of this user; if others may write it, sticky."""
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeDirectory(f"{what} {path} is owned by uid {st.st_uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectory(f"{what} {path} is writable by others without the sticky bit")


def open_private(path: str, what: str) -> int:
    """A checked descriptor of an existing private directory (see :func:`check_private`)."""
    fd = open_dir(path, what)
    try:
        check_private(fd, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_output_dir(path: str) -> str:
    """The option validator of ``output_dir``: refuse what the kernel would refuse at use."""
    os.close(open_private(path, "output_dir"))
    return path


def make_private(parent_fd: int, prefix: str) -> tuple[str, int]:
    """Like ``tempfile.mkdtemp`` but relative to a checked parent: a new 0700 directory, its name and a
    descriptor of it (opened without following links, and checked to be ours)."""
    for _ in range(100):
        name = f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            continue
        fd = open_dir(name, "new directory", dir_fd=parent_fd)
        try:
            check_private(fd, name, "new directory", group_read=False)
        except BaseException:
            os.close(fd)
            raise
        return name, fd
    raise UnsafeDirectory("could not make a private directory: every name tried exists")


def ensure_private(path: str, what: str) -> int:
    """A checked descriptor of the private directory ``path`` (mode 0700), made if missing."""
    try:
        os.mkdir(_normal(path), 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDirectory(f"cannot make {what} {path}: {exc.strerror}") from None
    fd = open_dir(path, what)
    try:
        check_private(fd, path, what, group_read=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` under ``parent_fd`` and what is in it, never following a link."""
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError:  # a symlink or a file put there: remove that entry, nothing it points to
        try:
            os.unlink(name, dir_fd=parent_fd)
        except OSError:
            pass
        return
    try:
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)
            except IsADirectoryError:
                remove_tree(fd, entry)
            except OSError:
                pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


def remove_path(path: str) -> None:
    """Remove the directory at ``path`` (a spill directory of a dead kernel) without following links."""
    path = _normal(path)
    parent, name = os.path.split(path)
    try:
        parent_fd = os.open(parent or "/", _OPEN_DIR)
    except OSError:
        return
    try:
        remove_tree(parent_fd, name)
    finally:
        os.close(parent_fd)
