"""Let a normal user's kernel use root's containers through sudo: ``python -m lxc_kernel.sudo grant|revoke|show``.

``grant USER|%GROUP --containers GLOB[,GLOB]`` (as root) installs the validating helper (sudo_helper.py) as
``/usr/local/libexec/lxc-kernel/lxck-sudo``, writes the allow-list line to ``/etc/lxc-kernel/sudo.d`` and a
sudoers file to ``/etc/sudoers.d`` that allows that helper and nothing else, checked with ``visudo -cf`` before
it is moved into place. ``revoke`` removes the principal's files (and the helper once nobody is granted).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .lxc import SUDO_HELPER

RULES_DIR = "/etc/lxc-kernel/sudo.d"
SUDOERS_DIR = "/etc/sudoers.d"
# useradd(8)'s default NAME_REGEX, plus the dots that some sites use.
_PRINCIPAL_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# Container names with the two fnmatch wildcards * and ?: no [...] classes, nothing a shell or sudoers reads.
_GLOB_RE = re.compile(r"[A-Za-z0-9*?][A-Za-z0-9_.*?-]{0,63}")
# The interpreter of the installed helper: the system's, root-owned, in isolated mode (-I: no PYTHONPATH, no
# user site, no current directory on sys.path), without the site module (-S: less to load per call).
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Principal:
    """A user, or a group written ``%GROUP`` as sudoers writes it."""

    name: str
    group: bool

    @classmethod
    def parse(cls, text: str) -> Principal:
        group = text.startswith("%")
        name = text[1:] if group else text
        if not _PRINCIPAL_RE.fullmatch(name) or name.endswith("$"):
            raise ConfigError(f"invalid {'group' if group else 'user'} name {name!r}")
        try:
            grp.getgrnam(name) if group else pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"no such {'group' if group else 'user'} {name!r} on this host") from None
        if not group and pwd.getpwnam(name).pw_uid == 0:
            raise ConfigError("root needs no grant")
        return cls(name, group)

    def __str__(self) -> str:
        return f"%{self.name}" if self.group else self.name

    @property
    def file_stem(self) -> str:
        # sudo skips files in sudoers.d whose names contain '.' or end in '~' (sudoers(5), @includedir).
        return f"lxc-kernel-{'g' if self.group else 'u'}-{self.name.replace('.', '_')}"

    @property
    def rules_path(self) -> str:
        return os.path.join(RULES_DIR, self.file_stem)

    @property
    def sudoers_path(self) -> str:
        return os.path.join(SUDOERS_DIR, self.file_stem)


def parse_globs(text: str) -> list[str]:
    globs = [g.strip() for g in text.split(",") if g.strip()]
    if not globs:
        raise ConfigError("--containers needs at least one container name or glob")
    for glob in globs:
        if not _GLOB_RE.fullmatch(glob):
            raise ConfigError(f"invalid container glob {glob!r}: container-name characters plus * and ?")
    return globs


def sudoers_text(principal: Principal, helper: str = SUDO_HELPER) -> str:
    """The sudoers file: the helper only, no password, no PTY layer (Debian's default ``use_pty`` puts a
    second terminal between the kernel and lxc-attach, whose ONLCR the kernel cannot then clear: every
    line ended in \\r\\r\\n, measured), and no SETENV (the caller's variables never reach the helper)."""
    return (
        "# lxc-kernel: written by `python3 -m lxc_kernel.sudo grant`; remove it with `revoke`.\n"
        f"Defaults!{helper} !use_pty\n"
        f"{principal} ALL=(root) NOPASSWD: {helper}\n"
    )


def rules_text(principal: Principal, globs: Sequence[str]) -> str:
    return (
        "# lxc-kernel: containers this principal may use through the sudo helper (`python3 -m lxc_kernel.sudo`).\n"
        f"allow {principal} {','.join(globs)}\n"
    )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("run it as root")


def _root_dir(path: str, mode: int) -> None:
    """Make ``path`` (and its missing parents) root-owned with ``mode``; refuse one that others can write."""
    os.makedirs(path, mode=mode, exist_ok=True)
    current = path
    while current != "/":
        st = os.lstat(current)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise ConfigError(f"{current} must be owned by root and writable only by root")
        current = os.path.dirname(current)


def _write_atomic(path: str, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".lxck-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install_helper(helper: str = SUDO_HELPER, python: str = SYSTEM_PYTHON) -> None:
    """Copy sudo_helper.py to ``helper``, root-owned 0755, run by ``python -I``."""
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise ConfigError(f"{python} is not an executable interpreter")
    _root_dir(os.path.dirname(helper), 0o755)
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sudo_helper.py")
    with open(source) as fh:
        body = fh.read()
    _write_atomic(helper, f"#!{python} -IS\n" + body, 0o755)


def install_sudoers(principal: Principal, helper: str = SUDO_HELPER) -> None:
    """Write the sudoers file next to its final place, have ``visudo -cf`` check it, then move it in."""
    if shutil.which("visudo") is None:
        raise ConfigError("visudo is missing: install sudo (`apt-get install sudo`)")
    fd, tmp = tempfile.mkstemp(prefix=".lxck-", dir=SUDOERS_DIR)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(sudoers_text(principal, helper))
        os.chmod(tmp, 0o440)
        check = subprocess.run(["visudo", "-cf", tmp], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise ConfigError(f"visudo refused the rule: {(check.stderr or check.stdout).strip()}")
        os.replace(tmp, principal.sudoers_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def grant(principal: Principal, globs: Sequence[str], helper: str = SUDO_HELPER) -> list[str]:
    """Install the helper, the allow-list and the sudoers rule; the files written, in order."""
    _require_root()
    install_helper(helper)
    _root_dir(RULES_DIR, 0o755)
    _write_atomic(principal.rules_path, rules_text(principal, globs), 0o644)
    install_sudoers(principal, helper)
    return [helper, principal.rules_path, principal.sudoers_path]


def granted() -> list[str]:
    """The allow lines in force, one per principal."""
    out = []
    if os.path.isdir(RULES_DIR):
        for entry in sorted(os.listdir(RULES_DIR)):
            with open(os.path.join(RULES_DIR, entry)) as fh:
                out += [line.strip() for line in fh if line.startswith("allow ")]
    return out


def revoke(principal: Principal, helper: str = SUDO_HELPER) -> list[str]:
    """Remove the principal's sudoers file (first: no rule points at a helper being removed) and allow-list;
    the helper goes when nobody is granted any more. The files removed."""
    _require_root()
    removed = []
    for path in (principal.sudoers_path, principal.rules_path):
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    others = [e for e in os.listdir(SUDOERS_DIR) if e.startswith("lxc-kernel-")] if os.path.isdir(SUDOERS_DIR) else []
    if not others and os.path.exists(helper):
        os.unlink(helper)
        removed.append(helper)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m lxc_kernel.sudo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grant", help="allow USER or %%GROUP to use these containers through the helper")
    g.add_argument("principal", metavar="USER|%GROUP")
    g.add_argument("--containers", required=True, metavar="GLOB[,GLOB]")
    r = sub.add_parser("revoke", help="remove the grant of USER or %%GROUP")
    r.add_argument("principal", metavar="USER|%GROUP")
    sub.add_parser("show", help="the grants in force")
    ns = p.parse_args(argv)
    try:
        if ns.cmd == "show":
            print("\n".join(granted()) or "no grants")
            return 0
        if ns.cmd == "grant":
            principal = Principal.parse(ns.principal)
            globs = parse_globs(ns.containers)
            for path in grant(principal, globs):
                print(f"wrote {path}")
            print(f"{principal} may now use {', '.join(globs)} through `sudo -n {SUDO_HELPER} lxc-...`; "
                  "install a kernelspec with `python3 -m lxc_kernel.install --user --sudo --container NAME`")
            return 0
        principal = _revoke_principal(ns.principal)
        removed = revoke(principal)
        print("\n".join(f"removed {path}" for path in removed) or f"{principal} had no grant")
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _revoke_principal(text: str) -> Principal:
    """Not looked up in the passwd database: a deleted user's files must still go."""
    group = text.startswith("%")
    name = text[1:] if group else text
    if not _PRINCIPAL_RE.fullmatch(name):
        raise ConfigError(f"invalid {'group' if group else 'user'} name {name!r}")
    return Principal(name, group)


if __name__ == "__main__":
    raise SystemExit(main())
