"""Resolve ``NAME|UID[:GID]`` against the container's own /etc/passwd and /etc/group."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .attach import AttachOptions
from .bounded import MiB
from .errors import ConfigError, LxcCommandError, LxcNotInstalled
from .transport import Transport

# Container root controls these files: one pointed at a 200 MB file grew the kernel by 600 MB when
# they were read whole (issue 7). Real ones are a few KiB; 4 MiB is thousands of accounts.
ACCOUNT_FILE_LIMIT = 4 * MiB

_SPEC_RE = re.compile(r"(?P<user>[A-Za-z0-9_.-]+)(?::(?P<group>[A-Za-z0-9_.-]+))?")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd(text: str) -> dict[str, Account]:
    accounts = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2].isdigit() and fields[3].isdigit():
            accounts[fields[0]] = Account(fields[0], int(fields[2]), int(fields[3]), fields[5] or "/")
    return accounts


def parse_group(text: str) -> dict[str, int]:
    groups = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            groups[fields[0]] = int(fields[2])
    return groups


def parse_spec(spec: str) -> tuple[str, str | None]:
    m = _SPEC_RE.fullmatch(spec.strip())
    if not m:
        raise ConfigError(f"invalid user {spec!r}: use NAME, UID, NAME:GROUP or UID:GID")
    return m.group("user"), m.group("group")


def lookup(spec: str, passwd: str, group: str) -> Account:
    """Pure: the account ``spec`` names. A numeric uid missing from passwd still works (lxc-attach
    accepts it), with HOME=/ and the name shown as the number."""
    user, grp = parse_spec(spec)
    accounts = parse_passwd(passwd)
    if user.isdigit():
        uid = int(user)
        found = next((a for a in accounts.values() if a.uid == uid), None)
        account = found or Account(user, uid, uid, "/")
    elif user in accounts:
        account = accounts[user]
    else:
        raise ConfigError(f"no user {user!r} in the container's /etc/passwd")
    if grp is not None:
        if grp.isdigit():
            gid = int(grp)
        else:
            groups = parse_group(group)
            if grp not in groups:
                raise ConfigError(f"no group {grp!r} in the container's /etc/group")
            gid = groups[grp]
        account = Account(account.name, account.uid, gid, account.home)
    return account


def _read_file(transport: Transport, path: str, timeout: float = 15.0) -> str:
    """The container's ``path`` (at most ACCOUNT_FILE_LIMIT bytes, else OutputTooLarge naming it), read
    through the transport's pipe channel (lxc-attach, incus exec, ssh); a missing /etc/group reads as
    empty, a missing /etc/passwd is an error."""
    argv = ["/bin/cat", path]
    try:
        proc = transport.run(argv, timeout=timeout, limit=ACCOUNT_FILE_LIMIT, what=f"the container's {path}")
    except FileNotFoundError as exc:
        raise LxcNotInstalled(transport.pipe_argv(argv)[0]) from exc
    if proc.returncode != 0 and path == "/etc/passwd":
        raise LxcCommandError(list(proc.argv), proc.returncode, proc.stderr.decode("utf-8", "replace"))
    # Account files are ASCII in practice; a stray byte must not fail the lookup of every other line.
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else ""


def resolve_user(transport: Transport, spec: str, options: AttachOptions) -> AttachOptions:
    """Options attaching as ``spec``, with HOME, USER and LOGNAME following the account. ``transport``
    reaches the container as root (the account files are read there)."""
    parse_spec(spec)  # refuse bad input before any tool runs
    account = lookup(spec, _read_file(transport, "/etc/passwd"), _read_file(transport, "/etc/group"))
    return options.with_(uid=account.uid, gid=account.gid, user_name=account.name, home=account.home)
