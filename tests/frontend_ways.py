"""The ways into a container the frontend tests run over: Incus here, on the other cluster member, through the
TLS remote, LXD, and classic LXC over ssh. Each gets its own instance (``lxck-t9f-*``, made by the test module
that uses it and deleted at its end) and a kernelspec written by the install CLI beside the test specs.

`.ci/setup-incus`, `.ci/setup-lxd` and `.ci/setup-ssh` bring up what these need; without it a way is skipped,
saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import incus_support
import sshhost
from conftest import install_test_kernelspecs

PREFIX = "lxck-t9f-"  # then the module's tag: c (conformance), n (notebooks), f (frontends)


@dataclass(frozen=True)
class Way:
    """How a kernel reaches its container: the backend, the container it names, and the instance behind it."""

    backend: str  # incus | lxd | lxc
    name: str  # the instance's name after PREFIX and the module's tag; or, without image, the container's
    image: str = ""  # the instance to launch (empty: the container belongs to someone else's setup)
    member: str | None = None  # --target at launch
    remote: str | None = None  # reached as REMOTE:NAME
    client: str = "incus"
    extra: tuple[str, ...] = ()

    def instance(self, tag: str) -> str:
        """The instance a test module (``tag``) uses: each module its own, so two may run at once."""
        return f"{PREFIX}{tag}-{self.name}" if self.image else self.name

    def container(self, tag: str) -> str:
        return f"{self.remote}:{self.instance(tag)}" if self.remote else self.instance(tag)


WAYS = {
    # Incus on this host's member m1 (explicit placement: the cluster otherwise picks a member itself).
    "incus": Way("incus", "local", "lxck-busybox", member="m1"),
    # On the second member m2, reached through m1's socket (the default one).
    "incus-m2": Way("incus", "m2", "lxck-bash", member="m2"),
    # The same cluster over HTTPS, the TLS remote R.
    "incus-R": Way("incus", "r", "lxck-busybox", member="m1", remote="R"),
    # LXD 5.0.2 beside Incus, through its client `lxc`.
    "lxd": Way("lxd", "lxd", "lxck-bash", client="lxc"),
    # Classic LXC on the network-namespace host, over ssh; its busybox container belongs to .ci/setup-ssh.
    "ssh": Way("lxc", sshhost.HOSTS["ssh-ns"][1],
               extra=("--ssh", sshhost.HOSTS["ssh-ns"][0], *(f"--ssh-option={o}" for o in sshhost.options()))),
}


def spec_name(way: str, tag: str) -> str:
    return f"{PREFIX}{tag}-{way.lower()}"


def missing(way: str) -> str | None:
    """Why ``way`` cannot be tested here, or None."""
    w = WAYS[way]
    if w.backend == "lxc":
        return sshhost.missing()
    reason = incus_support.not_ready_reason() if w.client == "incus" else incus_support.lxd_not_ready_reason()
    if reason or not w.remote:
        return reason
    remotes = subprocess.run(["incus", "remote", "list", "--format", "json"], capture_output=True, text=True,
                             timeout=20)
    remote = w.remote
    if remote not in json.loads(remotes.stdout or "{}"):
        return f"no Incus remote {remote}: run .ci/setup-incus"
    return None


def _client(w: Way, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([w.client, *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"{w.client} {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def prepare(way: str, tag: str) -> str:
    """Launch the way's instance for the module ``tag`` (fresh) and install its kernelspec; the spec's name."""
    w = WAYS[way]
    instance = w.instance(tag)
    if w.image:
        assert instance.startswith(PREFIX)
        launch = ["launch", w.image, instance, *(["--target", w.member] if w.member else [])]
        deadline = time.monotonic() + 60
        while True:
            _client(w, "delete", "--force", instance, check=False)
            res = _client(w, *launch, check=False)
            # A member restarted moments ago (by a fault test) fails launches for a few seconds after it
            # answers ("Server isn't ready yet", or a client panic on the missing event connection, Incus
            # 6.0.4), and may leave a record behind: delete it and try again.
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert res.returncode == 0, f"{w.client} {' '.join(launch)} exited {res.returncode}: {res.stderr.strip()}"
    elif w.backend == "lxc":
        sshhost.start_remote(instance)
    specs = install_test_kernelspecs()
    prefix = os.path.dirname(os.path.dirname(specs))
    subprocess.run([sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", spec_name(way, tag),
                    "--backend", w.backend, "--container", w.container(tag), *w.extra],
                   check=True, capture_output=True, timeout=60)
    return spec_name(way, tag)


def cleanup(way: str, tag: str) -> None:
    w = WAYS[way]
    if w.image:
        assert w.instance(tag).startswith(PREFIX)
        _client(w, "delete", "--force", w.instance(tag), check=False)
