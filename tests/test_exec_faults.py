"""Failures under the exec transport (Incus, and LXD for the instance faults), on real instances and daemons:
the instance stopped, frozen or deleted mid-cell, the daemon killed, the cluster member hosting the instance
killed, and shutdown leaving nothing behind (no client on the host, no job in the instance, checked inside).

Only the second member (m2) is ever killed, never m1 on the default socket that other users of the machine
talk to; "the local daemon" is m2 reached through its own socket (INCUS_DIR). Every killed daemon is
started again by `.ci/setup-incus up`, by the PIDs it recorded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import incus_support
import psutil
import pytest
from incus_support import incus

from lxc_kernel.attach import AttachOptions
from lxc_kernel.errors import ContainerNotReady, LxcKernelError, ShellExited
from lxc_kernel.exec_transport import ExecTransport
from lxc_kernel.session import ShellSession

pytestmark = pytest.mark.timeout(180)

M2_DIR = os.environ.get("LXCK_INCUS_M2_DIR", "/var/lib/lxck-incus-m2")
# kind: (client, image)
KINDS = {"incus-ash": ("incus", "lxck-busybox"), "incus-bash": ("incus", "lxck-bash"), "lxd-bash": ("lxc", "lxck-bash")}


@dataclass(frozen=True)
class Instance:
    name: str
    client: str = "incus"

    def cli(self, *args: str) -> None:
        incus(*args, client=self.client)

    def resume(self) -> None:
        # LXD resumes a frozen instance with `start`.
        incus("resume" if self.client == "incus" else "start", self.name, client=self.client, check=False)

    def processes(self) -> list[str]:
        return incus_support.processes(self.name, self.client)


@pytest.fixture(params=list(KINDS))
def instance(request: pytest.FixtureRequest) -> Iterator[Instance]:
    client, image = KINDS[request.param]
    name = incus_support.launch(f"{incus_support.PREFIX}f-{request.param}", image, client=client)
    yield Instance(name, client)
    incus_support.delete(name, client)


def start(target: str | Instance, **kw: object) -> ShellSession:
    inst = target if isinstance(target, Instance) else Instance(target)
    s = ShellSession(ExecTransport(AttachOptions(inst.name), client=inst.client), **kw)  # type: ignore[arg-type]
    s.start()
    return s


def run_during(s: ShellSession, code: str, action: Callable[[], None], delay: float = 1.0,
               timeout: float = 60) -> tuple[BaseException | None, float, str]:
    """Run a cell; ``delay`` seconds in, do ``action`` from another thread. What the cell raised (or None),
    how long after the action it ended, and its output."""
    out: list[str] = []
    at: list[float] = []

    def act() -> None:
        time.sleep(delay)
        at.append(time.monotonic())
        action()

    thread = threading.Thread(target=act)
    thread.start()
    error: BaseException | None = None
    try:
        s.run(code, lambda stream, text: out.append(text), timeout=timeout)
    except LxcKernelError as exc:
        error = exc
    ended = time.monotonic()
    thread.join()
    return error, ended - at[0] if at else -1.0, "".join(out)


def assert_nothing_left(s: ShellSession, host_pids: list[int], inst: Instance | None) -> None:
    """No process the session started on the host, and (when the instance still runs) none inside."""
    gone = []
    for pid in host_pids:
        try:
            proc = psutil.Process(pid)
            gone.append(proc.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            gone.append(True)
    assert all(gone), [p for p, g in zip(host_pids, gone, strict=False) if not g]
    assert not s.alive
    if inst is not None:
        left = [cmd for cmd in inst.processes() if cmd not in ("init", "/sbin/init")]
        assert not left, left


def test_instance_stopped_mid_cell(instance: Instance) -> None:
    s = start(instance)
    pids = s.pids
    error, after, out = run_during(s, "echo before; sleep 30", lambda: instance.cli("stop", "--force", instance.name))
    assert isinstance(error, ShellExited), error
    assert "before" in out and after < 10
    assert_nothing_left(s, pids, None)


def test_instance_deleted_mid_cell(instance: Instance) -> None:
    s = start(instance)
    pids = s.pids
    error, after, _ = run_during(s, "sleep 30", lambda: instance.cli("delete", "--force", instance.name))
    assert isinstance(error, (ShellExited, ContainerNotReady)), error
    assert after < 10
    assert_nothing_left(s, pids, None)


def test_instance_frozen_mid_cell(instance: Instance) -> None:
    """A frozen instance says nothing and gives no end of file: the transport's state query ends the cell."""
    s = start(instance)
    pids = s.pids
    try:
        error, after, _ = run_during(s, "sleep 30", lambda: instance.cli("pause", instance.name))
        assert isinstance(error, ContainerNotReady) and "frozen" in str(error), error
        assert after < 10
    finally:
        instance.resume()
    assert_nothing_left(s, pids, None)
    # Once resumed, the old shell is gone (the daemon ends an exec whose client left) and a new one works.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [c for c in instance.processes() if c not in ("init", "/sbin/init")]:
        time.sleep(0.2)
    assert_nothing_left(s, [], instance)
    s2 = start(instance)
    try:
        assert s2.run("echo alive", lambda *_: None).status == 0
    finally:
        s2.close()


def test_shutdown_leaves_nothing(instance: Instance) -> None:
    """Jobs that ignore SIGHUP, or sit in another process group, are killed inside at close: SIGKILL of
    the client would leave them running, and they are not the client's host descendants."""
    s = start(instance)
    s.run("sleep 300 & (trap '' HUP; exec sleep 301) & (sleep 302 &) ; echo started", lambda *_: None)
    inside = " ".join(instance.processes())
    assert "sleep 301" in inside and "sleep 302" in inside
    pids = s.pids
    s.close()
    assert_nothing_left(s, pids, instance)


def test_shutdown_with_the_client_gone_leaves_nothing(instance: Instance) -> None:
    """The client killed first (as an OOM killer would): the jobs are still ended from inside."""
    s = start(instance)
    s.run("sleep 300 &", lambda *_: None)
    pids = s.pids
    os.kill(s.pid, signal.SIGKILL)  # type: ignore[arg-type]
    time.sleep(0.2)
    s.close()
    assert_nothing_left(s, pids, instance)


@pytest.fixture
def on_m2() -> Iterator[str]:
    """An instance on the second cluster member; m2 is started again after the test, whatever happened."""
    name = incus_support.launch(f"{incus_support.PREFIX}f-m2", "lxck-busybox", member="m2")
    try:
        yield name
    finally:
        incus_support.restart_daemons()
        incus_support.delete(name)


def kill_m2() -> None:
    os.kill(incus_support.recorded_pid("m2"), signal.SIGKILL)


def test_hosting_member_killed_ends_the_cell(on_m2: str) -> None:
    """SIGKILL of the member that runs the instance gives a session through the other member no end of
    file, ever: the cell must still end with an error within 10 s."""
    s = start(on_m2)
    pids = s.pids
    error, after, out = run_during(s, "echo before; sleep 60", kill_m2)
    assert isinstance(error, ContainerNotReady) and "m2" in str(error), error
    assert after < 10, after
    assert "before" in out
    assert_nothing_left(s, pids, None)


def test_local_daemon_killed_ends_the_cell(on_m2: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon the client talks to, killed: m2 reached through its own socket."""
    monkeypatch.setenv("INCUS_DIR", M2_DIR)
    s = start(on_m2)
    assert s.shell_host_pid, "the local daemon's shell is visible in the host's /proc"
    pids = s.pids
    error, after, _ = run_during(s, "sleep 60", kill_m2)
    assert isinstance(error, (ShellExited, ContainerNotReady)), error
    assert after < 10, after
    assert_nothing_left(s, pids, None)
