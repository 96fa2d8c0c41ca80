"""The Incus (and LXD) instances the transport tests run in: made on first use, deleted at the end.

`.ci/setup-incus` brings up the daemons (two cluster members, m1 on the default socket and m2 on
127.0.0.2), the images `lxck-busybox` and `lxck-bash`, and the TLS remote `R` (m1 again, over HTTPS). Without
them the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest

from lxc_kernel.attach import AttachOptions
from lxc_kernel.exec_transport import ExecTransport

PREFIX = "lxck-t9i-"
STATE_DIR = os.environ.get("LXCK_INCUS_STATE", "/var/lib/lxck-incus")
SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "setup-incus")


@dataclass(frozen=True)
class Target:
    """One way into an instance: which instance (image, member) and how it is reached (remote)."""

    instance: str
    image: str
    member: str | None = None  # --target at launch: the cluster member that runs it
    remote: str | None = None  # reached as REMOTE:NAME
    client: str = "incus"


# Every Incus instance is placed explicitly: without --target the cluster picks a member itself (it put
# "local" instances on m2 as often as not).
TARGETS = {
    "incus-ash": Target(PREFIX + "ash", "lxck-busybox", member="m1"),
    "incus-bash": Target(PREFIX + "bash", "lxck-bash", member="m1"),
    # On the second member, reached through the first (the default socket is m1's).
    "incus-m2": Target(PREFIX + "m2", "lxck-bash", member="m2"),
    # The same cluster over HTTPS: the TLS remote R (https://127.0.0.1:8443).
    "incus-R": Target(PREFIX + "r", "lxck-busybox", member="m1", remote="R"),
    # LXD 5.0.2 beside Incus (.ci/setup-lxd), through its client `lxc`.
    "lxd": Target(PREFIX + "lxd", "lxck-bash", client="lxc"),
}

_made: set[tuple[str, str]] = set()


def incus(*args: str, timeout: float = 120, check: bool = True,
          client: str = "incus") -> subprocess.CompletedProcess[str]:
    res = subprocess.run([client, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{client} {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def lxd_not_ready_reason() -> str | None:
    if os.geteuid() != 0:
        return "the LXD tests run as root"
    if shutil.which("lxd") is None or shutil.which("lxc") is None:
        return "LXD is not installed: run .ci/setup-lxd (after .ci/setup-incus)"
    try:
        res = incus("image", "info", "lxck-busybox", client="lxc", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the LXD daemon does not answer: run .ci/setup-lxd"
    return None if res.returncode == 0 else f"LXD is not set up ({res.stderr.strip()}): run .ci/setup-lxd"


def not_ready_reason() -> str | None:
    """Why the Incus tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the Incus tests run as root (the non-root path is tested through incus-user separately)"
    if shutil.which("incus") is None:
        return "Incus is not installed: run .ci/setup-incus"
    try:
        res = incus("query", "/1.0/cluster/members", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Incus daemon does not answer: run .ci/setup-incus"
    if res.returncode != 0:
        return f"the Incus daemon is not set up ({res.stderr.strip()}): run .ci/setup-incus"
    if len(json.loads(res.stdout or "[]")) < 2:
        return "the Incus cluster has no second member: run .ci/setup-incus"
    return None


_REASON: dict[str, str | None] = {}


def require_incus(client: str = "incus") -> None:
    if client not in _REASON:
        _REASON[client] = not_ready_reason() if client == "incus" else lxd_not_ready_reason()
    if _REASON[client]:
        pytest.skip(_REASON[client])


def state(instance: str, client: str = "incus") -> str:
    res = incus("query", f"/1.0/instances/{instance}/state", check=False, timeout=30, client=client)
    return json.loads(res.stdout)["status"] if res.returncode == 0 else "missing"


def ensure(target: Target) -> None:
    """The instance exists and runs (made from its image on first use)."""
    client = target.client
    current = state(target.instance, client)
    if current == "missing":
        args = ["launch", target.image, target.instance, *(["--target", target.member] if target.member else [])]
        incus(*args, client=client)
    elif current == "Frozen":
        # LXD resumes with `start` (it has no `resume`).
        incus("resume" if client == "incus" else "start", target.instance, client=client)
    elif current != "Running":
        incus("start", target.instance, client=client)
    _made.add((client, target.instance))


def transport(kind: str, **options: object) -> ExecTransport:
    target = TARGETS[kind]
    require_incus(target.client)
    ensure(target)
    return ExecTransport(AttachOptions(target.instance, **options), client=target.client,  # type: ignore[arg-type]
                         remote=target.remote)


def launch(name: str, image: str = "lxck-busybox", member: str | None = None, client: str = "incus") -> str:
    """A fresh instance for a test that damages it (on m1 unless ``member`` says otherwise; LXD has no
    cluster here); delete it with :func:`delete`."""
    require_incus(client)
    if client == "incus" and member is None:
        member = "m1"
    assert name.startswith(PREFIX)
    delete(name, client)
    args = ["launch", image, name, *(["--target", member] if member else [])]
    deadline = time.monotonic() + 60
    while True:
        res = incus(*args, check=False, client=client)
        # A member restarted by the previous test fails launches for a few seconds after it answers
        # ("Server isn't ready yet", or even a client panic on the missing event connection, Incus 6.0.4),
        # and a failed launch may leave a record behind: delete it and try again.
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
        delete(name, client)
    assert res.returncode == 0, f"incus {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}"
    return name


def delete(name: str, client: str = "incus") -> None:
    assert name.startswith(PREFIX)
    if state(name, client) == "Frozen":
        incus("resume" if client == "incus" else "start", name, check=False, client=client)
    incus("delete", "--force", name, check=False, client=client)


def cleanup() -> None:
    """Delete every instance this run made."""
    for client, name in sorted(_made):
        delete(name, client)
    _made.clear()


def processes(kind_or_name: str, client: str = "incus") -> list[str]:
    """Command lines of the processes in an instance (read inside, from its /proc)."""
    target = TARGETS.get(kind_or_name)
    name, client = (target.instance, target.client) if target else (kind_or_name, client)
    res = incus("exec", name, "-T", "--", "/bin/sh", "-c",
                'for f in /proc/[0-9]*/cmdline; do [ "${f%/cmdline}" = /proc/$$ ] || '
                '{ tr "\\0" " " < "$f"; echo; }; done 2>/dev/null', timeout=30, client=client)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def recorded_pid(daemon: str) -> int:
    """The PID .ci/setup-incus recorded for a daemon it started (m1, m2, user)."""
    with open(os.path.join(STATE_DIR, f"{daemon}.pid")) as fh:
        return int(fh.read().strip())


def restart_daemons() -> None:
    """Start again whatever daemon a fault test killed (the setup is idempotent)."""
    subprocess.run([SETUP, "up"], check=True, capture_output=True, timeout=300)
