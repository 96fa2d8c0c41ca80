"""Every ``%lxc`` subcommand through a real kernel on each backend: classic LXC and Incus (when its daemon is up).

Each backend gets its own base container (``lxck-t9b-*``, busybox), made here and destroyed at the end;
another container per test exercises what changes a container. On Incus, an operation it lacks must say
"... not supported by incus" (or lxd) and change nothing. LXD runs beside Incus where .ci/setup-lxd made it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import Kernel, Result, start_kernel

from lxc_kernel.backends import make
from lxc_kernel.lxc import State
from lxc_kernel.provision import destroy_container, provision

RUN = f"lxck-t9b-{secrets.token_hex(2)}-"
INCUS_IMAGE = "lxck-busybox"


CLIENTS = {"incus": "incus", "lxd": "lxc"}


def daemon_reason(kind: str) -> str | None:
    """Why the Incus (or LXD) backend cannot be tested here, or None."""
    client = CLIENTS[kind]
    if shutil.which(client) is None or (kind == "lxd" and shutil.which("lxd") is None):
        return f"{kind} is not installed (.ci/setup-{kind} installs it)"
    try:
        res = subprocess.run([client, "query", f"/1.0/images/aliases/{INCUS_IMAGE}"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"the {kind} daemon does not answer"
    if res.returncode != 0:
        return f"the {kind} daemon or its image {INCUS_IMAGE} is not there: {res.stderr.strip()}"
    return None


def exec_reason(kind: str = "incus") -> str | None:
    if importlib.util.find_spec("lxc_kernel.exec_transport") is None:
        return "this build has no Incus exec transport (lxc_kernel/exec_transport.py)"
    return daemon_reason(kind)


@dataclass
class Backend:
    kind: str
    base: str
    source: str  # what %lxc create takes with -t
    config_key: str  # a harmless config key and value to set and read back
    config_value: str

    def make_container(self, name: str) -> None:
        if self.kind == "lxc":
            provision(name, "busybox", start=True)
        else:
            subprocess.run([CLIENTS[self.kind], "launch", INCUS_IMAGE, name], check=True, capture_output=True,
                           timeout=120)

    def destroy(self, name: str) -> None:
        assert name.startswith("lxck-t9b-")
        if self.kind == "lxc":
            destroy_container(name)
        else:
            make(self.kind).destroy(name, snapshots=True)

    def state(self, name: str) -> State:
        return make(self.kind).state(name)


@pytest.fixture(scope="module", params=["lxc", "incus", "lxd"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind = request.param
    if kind != "lxc" and (reason := daemon_reason(kind)):
        pytest.skip(reason)
    b = (Backend("lxc", RUN + "base", "busybox", "lxc.start.delay", "3") if kind == "lxc"
         else Backend(kind, RUN + "base", INCUS_IMAGE, "user.lxck-test", "yes"))
    b.make_container(b.base)
    yield b
    b.destroy(b.base)


@pytest.fixture(scope="module")
def kernel(backend: Backend) -> Iterator[Kernel]:
    k = start_kernel(backend.base, f"--LXCKernel.backend={backend.kind}")
    yield k
    k.shutdown()


@pytest.fixture
def other(backend: Backend) -> Iterator[str]:
    """A name for a container a test creates; destroyed (with its copies) afterwards whatever happened."""
    name = RUN + secrets.token_hex(2)
    yield name
    for suffix in ("", "-b", "-c"):
        backend.destroy(name + suffix)


def ok(k: Kernel, code: str, timeout: float = 120) -> Result:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.errors, r.stream(), r.stream("stderr"))
    return r


def fails(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "error", (code, r.stream())
    return r.errors[0]["evalue"]


def test_status_info_list(kernel: Kernel, backend: Backend) -> None:
    r = ok(kernel, "%lxc status")
    assert re.match(rf"container {backend.base}: RUNNING \(init PID \d+\)", r.stream())
    r = ok(kernel, "%lxc info")
    assert re.search(r"state\s+RUNNING", r.stream()) and re.search(rf"backend\s+{backend.kind}", r.stream())
    assert "memory" in r.stream() and re.search(r"privileged\s+no: ", r.stream())
    r = ok(kernel, "%lxc list")
    table = "".join(m["content"]["data"]["text/plain"] for m in r.of_type("display_data"))
    assert re.search(rf"\* {backend.base}\s+RUNNING", table)


@pytest.mark.timeout(300)
def test_lifecycle(kernel: Kernel, backend: Backend, other: str) -> None:
    r = ok(kernel, f"%lxc create {other} -t {backend.source} --start", timeout=300)
    assert f"created {other} from" in r.stream() and f"container {other}: RUNNING" in r.stream()
    assert ", unprivileged" in r.stream() and "warning" not in r.stream("stderr")
    assert "already exists" in fails(kernel, f"%lxc create {other} -t {backend.source}")
    assert f"container {other}: FROZEN" in ok(kernel, f"%lxc freeze {other}").stream()
    assert backend.state(other) is State.FROZEN
    assert f"container {other}: RUNNING" in ok(kernel, f"%lxc unfreeze {other}").stream()
    assert f"container {other}: STOPPED" in ok(kernel, f"%lxc stop {other} --kill").stream()
    assert "already STOPPED" in ok(kernel, f"%lxc stop {other}").stream()
    assert f"container {other}: RUNNING" in ok(kernel, f"%lxc start {other}").stream()
    assert f"container {other}: RUNNING" in ok(kernel, f"%lxc restart {other} --kill").stream()
    assert f"destroyed {other}" in ok(kernel, f"%lxc destroy {other}").stream()
    assert backend.state(other) is State.MISSING
    assert "does not exist" in fails(kernel, f"%lxc start {other}")


@pytest.mark.timeout(300)
def test_snapshots_and_clones(kernel: Kernel, backend: Backend, other: str) -> None:
    ok(kernel, f"%lxc create {other} -t {backend.source} --start", timeout=300)
    r = ok(kernel, f"%lxc snapshot {other} --stop", timeout=300)
    snap = re.search(r"snapshot (\S+) of", r.stream()).group(1)  # type: ignore[union-attr]
    assert snap in ok(kernel, f"%lxc snapshot list {other}").stream()
    assert backend.state(other) is State.RUNNING  # started again (classic) or never stopped (incus)
    ok(kernel, f"%lxc restore {snap} -n {other} --as {other}-b", timeout=300)
    assert backend.state(other + "-b") is State.STOPPED
    ok(kernel, f"%lxc restore {snap} -n {other} --stop", timeout=300)
    assert backend.state(other) is State.RUNNING
    ok(kernel, f"%lxc clone {other} {other}-c --allow-running", timeout=300)
    assert backend.state(other + "-c") is State.STOPPED
    assert "snapshot" in fails(kernel, f"%lxc destroy {other}")  # it has snapshots: refused without --snapshots
    assert f"deleted snapshot {snap}" in ok(kernel, f"%lxc snapshot delete {snap} {other}").stream()
    assert "has no snapshots" in ok(kernel, f"%lxc snapshot list {other}").stream()
    for name in (other + "-b", other + "-c", other):
        ok(kernel, f"%lxc destroy {name}", timeout=300)
        assert backend.state(name) is State.MISSING


@pytest.mark.timeout(300)
def test_limits_config_log(kernel: Kernel, backend: Backend) -> None:
    r = ok(kernel, "%lxc limit memory 96M")
    assert "memory" in r.stream() and "96" in r.stream()
    assert "96" in ok(kernel, "%lxc limit show").stream()
    ok(kernel, "%lxc limit cpu 0.5")
    ok(kernel, "%lxc limit memory off")
    ok(kernel, "%lxc limit cpu off")
    assert "is not a size" in fails(kernel, "%lxc limit memory lots")
    ok(kernel, f"%lxc config set {backend.config_key} {backend.config_value}")
    r = ok(kernel, f"%lxc config get {backend.config_key}")
    assert r.stream().strip() == f"{backend.config_key} = {backend.config_value}"
    assert "invalid config key" in fails(kernel, "%lxc config get 'bad key'")
    ok(kernel, "%lxc log --lines 3")


@pytest.mark.timeout(300)
def test_use_moves_between_containers(kernel: Kernel, backend: Backend, other: str) -> None:
    ok(kernel, f"%lxc create {other} -t {backend.source}", timeout=300)
    r = ok(kernel, f"%lxc use {other}")
    assert f"moved from {backend.base} to {other}" in r.stream() and "STOPPED" in r.stream()
    assert f"container {other}: STOPPED" in ok(kernel, "%lxc status").stream()
    ok(kernel, f"%lxc use {backend.base}")
    assert "does not exist" in fails(kernel, f"%lxc use {RUN}nothing-here")
    if backend.kind == "lxc":
        assert "REMOTE:NAME is for the incus and lxd backends" in fails(kernel, "%lxc use R:web")
    else:
        assert "Incus and LXD names" in fails(kernel, "%lxc use web_1")


def test_a_remote_name_on_incus(kernel: Kernel, backend: Backend) -> None:
    if backend.kind == "lxc":
        pytest.skip("remotes are an Incus/LXD notion")
    remotes = subprocess.run([CLIENTS[backend.kind], "remote", "list", "--format", "json"], capture_output=True,
                             text=True,
                             timeout=20)
    names = [name for name, r in json.loads(remotes.stdout or "{}").items() if r.get("Protocol") in ("incus", "lxd")
             and name != "local" and r.get("Addr", "").startswith("https://127.")]
    if not names:
        pytest.skip(f"no TLS remote to the {backend.kind} daemon (.ci/setup-incus adds R to Incus only)")
    remote = names[0]
    r = ok(kernel, f"%lxc status {remote}:{backend.base}")
    assert f"container {remote}:{backend.base}: RUNNING" in r.stream()


UNSUPPORTED_ON_INCUS = [
    ("%lxc clone {base} {other} --snapshot", "overlay clones (--snapshot) is not supported by {kind}"),
    ("%lxc snapshot {base} --comment first", "snapshot --comment is not supported by {kind}"),
    ("%lxc log --level INFO", "log --level is not supported by {kind}"),
    ("%lxc create {other} -t lxck-busybox --apparmor unconfined", "--apparmor is not supported by {kind}"),
    ("%lxc create {other} -t lxck-busybox -- --release x", "template arguments (`-- ARGS`) is not supported by {kind}"),
]


@pytest.mark.parametrize(("line", "message"), UNSUPPORTED_ON_INCUS)
def test_what_incus_and_lxd_lack_says_so_and_changes_nothing(kernel: Kernel, backend: Backend, other: str, line: str,
                                                      message: str) -> None:
    if backend.kind == "lxc":
        pytest.skip("the classic backend has every %lxc operation")
    before = make(backend.kind).snapshots(backend.base)
    evalue = fails(kernel, line.format(base=backend.base, other=other))
    assert message.format(kind=backend.kind) in evalue
    assert backend.state(other) is State.MISSING
    assert make(backend.kind).snapshots(backend.base) == before


def test_cells_files_and_reset(kernel: Kernel, backend: Backend, tmp_path: object) -> None:
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    r = ok(kernel, "echo hi; hostname")
    assert r.stream().split() == ["hi", backend.base]
    r = ok(kernel, "%reset\necho after")
    assert "reset: a fresh shell" in r.stream() and r.stream().endswith("after\n")


@pytest.mark.timeout(300)
def test_files_and_users(kernel: Kernel, backend: Backend, tmp_path: object) -> None:
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    import os

    root = str(tmp_path)
    with open(os.path.join(root, "in.bin"), "wb") as fh:
        fh.write(bytes(range(256)) * 64)
    k = start_kernel(backend.base, f"--LXCKernel.backend={backend.kind}", f"--LXCKernel.transfer_root={root}")
    try:
        assert "pushed" in ok(k, "%push in.bin /tmp/lxck-t9b.bin").stream()
        assert "pulled" in ok(k, "%pull /tmp/lxck-t9b.bin out.bin").stream()
        with open(os.path.join(root, "out.bin"), "rb") as fh:
            assert fh.read() == bytes(range(256)) * 64
        # A user is looked up in the container's own /etc/passwd, through the backend's transport.
        ok(k, "grep -q '^lxckt9b:' /etc/passwd || echo 'lxckt9b:x:4321:4321:t:/tmp:/bin/sh' >> /etc/passwd")
        r = ok(k, "%attach user lxckt9b\nid -u; echo $HOME")
        assert "re-attached" in r.stream() and r.stream().split()[-2:] == ["4321", "/tmp"]
        ok(k, "%attach user root")
    finally:
        k.shutdown()


def test_fanout_on_the_backend(kernel: Kernel, backend: Backend) -> None:
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    # A name and a glob over the backend's list naming the same container: one target.
    r = ok(kernel, f"%%on {backend.base} {RUN}ba* --interleave\nhostname")
    assert r.stream().splitlines() == [f"{backend.base} | {backend.base}"]


@pytest.mark.timeout(300)
def test_ephemeral_kernel(backend: Backend) -> None:
    """Each kernel in its own throwaway copy of the base (lxc-copy -e / incus copy --ephemeral), gone at shutdown."""
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    k = start_kernel(backend.base, f"--LXCKernel.backend={backend.kind}", f"--LXCKernel.ephemeral={backend.base}")
    try:
        r = ok(k, "hostname", timeout=120)
        copy = re.search(r"ephemeral container (\S+)", r.stream("stderr")).group(1)  # type: ignore[union-attr]
        assert copy.startswith(backend.base + "-eph-") and r.stream().strip() == copy
        assert backend.state(copy) is State.RUNNING
    finally:
        k.shutdown()
    assert make(backend.kind).wait(copy, State.MISSING, 15) is State.MISSING


@pytest.mark.timeout(300)
def test_create_missing_and_start_stopped(backend: Backend, other: str) -> None:
    """The zero-setup options: a missing container is made (a kind on lxc, an image on incus) and started."""
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    extra = ["--LXCKernel.create_missing=busybox"]
    if backend.kind != "lxc":
        extra.append(f"--LXCKernel.image={INCUS_IMAGE}")
    k = start_kernel(other, f"--LXCKernel.backend={backend.kind}", *extra)
    try:
        r = ok(k, "hostname", timeout=300)
        assert r.stream().strip() == other and f"created container {other}" in r.stream("stderr")
        make(backend.kind).stop(other, kill=True)
        ok(k, "%reset")
        r = ok(k, "hostname", timeout=120)
        assert r.stream().strip() == other and "was STOPPED, now RUNNING" in r.stream("stderr")
    finally:
        k.shutdown()


@pytest.mark.timeout(180)
def test_the_watchdog_removes_the_copy_of_a_killed_kernel(backend: Backend) -> None:
    """The lock file records the backend, so the watchdog of a SIGKILLed kernel removes its copy wherever
    it lives (here: an Incus instance as well as a classic container)."""
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    k = start_kernel(backend.base, f"--LXCKernel.backend={backend.kind}", f"--LXCKernel.ephemeral={backend.base}")
    try:
        r = ok(k, "hostname", timeout=120)
        copy = re.search(r"ephemeral container (\S+)", r.stream("stderr")).group(1)  # type: ignore[union-attr]
        assert backend.state(copy) is State.RUNNING
        k.km.shutdown_kernel(now=True)  # SIGKILL to the kernel's process group; its watchdog has its own
        assert make(backend.kind).wait(copy, State.MISSING, 30) is State.MISSING
    finally:
        k.kc.stop_channels()


@pytest.mark.timeout(300)
def test_limits_and_snapshots_act_inside(backend: Backend, other: str) -> None:
    """What the magics set is what the container lives with: a live memory limit kills a larger
    allocation, and a restored snapshot brings a removed file back."""
    if backend.kind != "lxc" and (reason := exec_reason(backend.kind)):
        pytest.skip(reason)
    backend.make_container(other)
    k = start_kernel(other, f"--LXCKernel.backend={backend.kind}")
    try:
        ok(k, "%lxc limit memory 64M")
        r = k.execute("dd if=/dev/zero of=/dev/null bs=200M count=1", timeout=60)
        assert r.status == "error" and "137" in r.errors[0]["evalue"], (r.errors, r.stream())
        ok(k, "dd if=/dev/zero of=/dev/null bs=8M count=1")
        ok(k, "%lxc limit memory off")
        ok(k, "dd if=/dev/zero of=/dev/null bs=200M count=1")
        ok(k, "echo one > /root/marker")
        assert "snapshot snap0" in ok(k, "%lxc snapshot --stop", timeout=180).stream()
        ok(k, "rm /root/marker")
        r = ok(k, "%lxc restore snap0 --stop\ncat /root/marker", timeout=180)
        assert "restored" in r.stream() and r.stream().splitlines()[-1] == "one"
    finally:
        k.shutdown()


def test_completion_offers_the_backends_containers(kernel: Kernel, backend: Backend) -> None:
    """`%lxc use <Tab>` offers the backend's own containers; subcommands come from the magics registry."""
    from test_completion import complete

    reply = complete(kernel, f"%lxc use {RUN}ba")
    assert backend.base in reply["matches"]
    reply = complete(kernel, "%lxc sn")
    assert reply["matches"] == ["snapshot"]


# -- classic LXC on another host: the kernel's own --ssh ---------------------------------------------------


@pytest.mark.timeout(300)
def test_the_classic_backend_over_ssh() -> None:
    """A kernel with ``--ssh``: cells and the read-only ``%lxc`` subcommands run on the namespace host (whose
    container only its own sshd reaches); what needs this host's files says "... over ssh is not supported
    by lxc". The container belongs to the ssh test setup, so nothing here changes it."""
    import sshhost

    if reason := sshhost.missing():
        pytest.skip(reason)
    target, name = sshhost.HOSTS["ssh-ns"]
    k = start_kernel(name, f"--LXCKernel.ssh={target}", *(f"--LXCKernel.ssh_options={o}" for o in sshhost.options()))
    try:
        assert ok(k, "hostname").stream().strip() == name
        assert f"container {name}: RUNNING" in ok(k, "%lxc status").stream()
        info = ok(k, "%lxc info").stream()
        assert re.search(r"state\s+RUNNING", info) and re.search(rf"ssh\s+{re.escape(target)}", info)
        table = "".join(m["content"]["data"]["text/plain"] for m in ok(k, "%lxc list").of_type("display_data"))
        assert name in table
        unsupported = [("%lxc config set lxc.start.delay 3", "config set"), ("%lxc log", "log"),
                       (f"%lxc create {RUN}x", "create"), ("%lxc snapshot --comment c --stop", "snapshot --comment")]
        for line, what in unsupported:
            assert f"{what} over ssh is not supported by lxc" in fails(k, line), line
        assert make("lxc").state(RUN + "x") is State.MISSING
        assert f"container {name}: RUNNING" in ok(k, "%lxc status").stream()  # --stop never ran
    finally:
        k.shutdown()
