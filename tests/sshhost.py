"""The ssh test hosts `.ci/setup-ssh` makes: whether they are there, links to them, and looks inside.

Two hosts: sshd on loopback (reaching this host's containers, here the bash one), and a network-namespace
"host" at 10.99.9.2 whose busybox container `lxck-t9s-remote` only its own sshd can reach.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess

from lxc_kernel.attach import AttachOptions
from lxc_kernel.lxc import Tools
from lxc_kernel.ssh import SshLink, SshTransport, parse_target

SSH_DIR = os.environ.get("LXCK_SSH_DIR", "/var/lib/lxck-ssh")
NS = os.environ.get("LXCK_SSH_NS", "lxck-ns9")
PORT = os.environ.get("LXCK_SSH_PORT", "2209")
REMOTE = os.environ.get("LXCK_SSH_REMOTE", "lxck-t9s-remote")
NS_ADDR = "10.99.9.2"
VETH_HOST = "lxck-v9h"
HOSTS = {
    "ssh-ns": (f"root@{NS_ADDR}", REMOTE),
    "ssh-lo": (f"root@127.0.0.1:{PORT}", os.environ.get("LXCK_TEST_BASH", "lxck-test-bash")),
}


def options() -> list[str]:
    return [f"IdentityFile={SSH_DIR}/id_ed25519", "IdentitiesOnly=yes",
            f"UserKnownHostsFile={SSH_DIR}/known_hosts", "StrictHostKeyChecking=yes", "ConnectTimeout=5"]


def missing() -> str | None:
    """Why the ssh tests cannot run here, or None when the setup is in place."""
    if os.geteuid() != 0:
        return "the ssh test hosts need root (run .ci/setup-ssh)"
    if shutil.which("ssh") is None or shutil.which("lxc-attach") is None:
        return "ssh or lxc-attach is not installed (run .ci/setup-ssh)"
    if not os.path.exists(f"{SSH_DIR}/id_ed25519") or not os.path.exists(f"/run/netns/{NS}"):
        return f"no ssh test hosts ({SSH_DIR}, netns {NS}): run .ci/setup-ssh"
    return None


_LINKS: dict[str, SshLink] = {}


def link(kind: str) -> SshLink:
    """An open link to the host of ``kind``, shared by the tests of this process (opened again if it died)."""
    lk = _LINKS.get(kind)
    if lk is None:
        lk = _LINKS[kind] = SshLink(parse_target(HOSTS[kind][0]), options=options())
    lk.open()
    return lk


def new_link(kind: str = "ssh-ns") -> SshLink:
    """A link of the caller's own (failure tests break it)."""
    lk = SshLink(parse_target(HOSTS[kind][0]), options=options())
    lk.open()
    return lk


def transport(kind: str, lk: SshLink | None = None) -> SshTransport:
    lk = lk or link(kind)
    return SshTransport(lk, AttachOptions(HOSTS[kind][1], tools=Tools(remote=lk)))


@atexit.register
def _close_all() -> None:
    for lk in _LINKS.values():
        lk.close()


def inside(kind: str, script: str) -> str:
    """Run ``script`` in the container of ``kind`` the direct way (not through the code under test)."""
    name = HOSTS[kind][1]
    argv = ["lxc-attach", "-n", name, "--clear-env", "--", "/bin/sh", "-c", script]
    if kind == "ssh-ns":
        argv = ["ip", "netns", "exec", NS, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def processes_inside(kind: str) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of every process in the container, zombies included."""
    out = inside(kind, 'for d in /proc/[0-9]*; do read -r s < $d/stat && '
                       'echo "${d#/proc/} ${s##*) }" | cut -d" " -f1,2 | tr "\\n" " "; '
                       'tr "\\0\\n" "  " < $d/cmdline; echo; done 2>/dev/null')
    procs = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0].isdigit():
            procs.append((int(parts[0]), parts[1], parts[2].strip() if len(parts) > 2 else ""))
    return procs


def remote_state(name: str = REMOTE) -> str:
    return subprocess.run(["ip", "netns", "exec", NS, "lxc-info", "-n", name, "-s", "-H"], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def start_remote(name: str = REMOTE) -> None:
    """Start the namespace host's container again, from inside the namespace (its command socket is there)."""
    if remote_state(name) != "RUNNING":
        subprocess.run(["ip", "netns", "exec", NS, "lxc-start", "-n", name, "-d"], check=True, timeout=30)
        subprocess.run(["ip", "netns", "exec", NS, "lxc-wait", "-n", name, "-s", "RUNNING", "-t", "20"],
                       check=True, timeout=30)


def veth(up: bool) -> None:
    subprocess.run(["ip", "link", "set", VETH_HOST, "up" if up else "down"], check=True, timeout=10)
