"""Magics and lifecycle options end to end: a real kernel (jupyter_client) on real containers.

Every container here is created by these tests under ``lxck-t3-<run>-`` and destroyed by a finalizer,
so the shared test containers are never touched; the last check is that ``lxc-ls`` shows none left.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel

from lxc_kernel import magics
from lxc_kernel.provision import destroy_container, ensure_container

RUN = f"lxck-t3-{secrets.token_hex(2)}-"
ROOT = Path(__file__).resolve().parent.parent


def lxc_names() -> list[str]:
    return subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()


def _destroy_ours(prefix: str) -> None:
    # Longest names first: clones and ephemeral copies (NAME-...) go before what they depend on.
    for name in sorted((n for n in lxc_names() if n.startswith(prefix)), key=len, reverse=True):
        try:
            destroy_container(name)
        except Exception:
            subprocess.run(["lxc-destroy", "-n", name, "-f", "-s"], capture_output=True)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    _destroy_ours(RUN)
    assert [n for n in lxc_names() if n.startswith(RUN)] == []


@pytest.fixture
def new_name() -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"{RUN}{tag}-{secrets.token_hex(2)}"
        made.append(name)
        return name

    yield make
    for name in made:
        _destroy_ours(name)


def _transfers_in(tmp_path_factory: pytest.TempPathFactory) -> str:
    # %push/%pull reach only beneath the transfer root (the kernel's cwd by default): the tests' files
    # are in pytest's temporary directories.
    return f"--LXCKernel.transfer_root={tmp_path_factory.getbasetemp()}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One hostfs container and kernel for the tests that leave the options as they found them."""
    name = f"{RUN}shared"
    ensure_container(name, "hostfs")
    k = start_kernel(name, _transfers_in(tmp_path_factory))
    k.container = name  # type: ignore[attr-defined]
    yield k
    k.shutdown()
    destroy_container(name)


@pytest.fixture
def own(new_name: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel on a fresh hostfs container of its own, for tests that stop, limit or re-attach it."""
    name = new_name("own")
    ensure_container(name, "hostfs")
    k = start_kernel(name, _transfers_in(tmp_path_factory))
    k.container = name  # type: ignore[attr-defined]
    yield k
    k.shutdown()


def ok(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.errors, r.stream(), r.stream("stderr"))
    return r.stream()


def fails(k: Kernel, code: str, timeout: float = 60) -> tuple[str, str, str]:
    """Run a cell that must fail: (ename, evalue, stdout)."""
    r = k.execute(code, timeout=timeout)
    assert r.status == "error", (code, r.stream())
    assert len(r.errors) == 1
    return r.errors[0]["ename"], r.errors[0]["evalue"], r.stream()


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_input_keeps_the_kernel_up_and_in_sync(shared: Kernel) -> None:
    ok(shared, "kept=42")
    ename, evalue, out = fails(shared, "%nope 1\necho SHOULD_NOT_RUN")
    assert ename == "UnknownMagic" and "%lxc" in evalue and "%attach" in evalue and "%push" in evalue
    assert "SHOULD_NOT_RUN" not in out
    ename, evalue, _ = fails(shared, "%lxc stop --bogus")
    assert ename == "UsageError" and "usage: %lxc" in evalue and "%lxc stop [NAME]" in evalue
    ename, evalue, _ = fails(shared, "%timeout soon")
    assert ename == "UsageError" and "usage: %timeout" in evalue
    ename, evalue, _ = fails(shared, "%lxc info 'a;reboot'")
    assert ename == "ConfigError" and "invalid container name" in evalue
    # A failing lxc-* tool shows its own message (LXC exits 1 silently without a log option).
    ename, evalue, _ = fails(shared, "%lxc snapshot delete snap9")
    assert ename == "LxcCommandError" and "lxc-snapshot exited 1" in evalue and "snap9" in evalue
    ename, evalue, _ = fails(shared, "%lxc config get lxc.no.such.key")
    assert "lxc.no.such.key" in evalue
    ename, evalue, _ = fails(shared, f"%lxc destroy {shared.container}")  # type: ignore[attr-defined]
    assert "--force" in evalue
    assert ok(shared, "echo $kept").strip() == "42"  # same shell: nothing above desynced or replaced it


@pytest.mark.timeout(60)
def test_invalid_names_are_refused_before_any_lxc_tool_runs(tmp_path: Path, new_name: Callable[[str], str]) -> None:
    # Wrappers on PATH log every lxc-* call the kernel makes, then run the real tool.
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in Path("/usr/bin").glob("lxc-*"):
        wrapper = bin_dir / tool.name
        wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> {log}\nexec {tool} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    name = new_name("names")
    ensure_container(name, "hostfs")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    k = start_kernel(name, env=env)
    try:
        bad = ["'bad;name'", "'$(id)'", "'x y'", "'a|b'", "../up", "-dash"]
        for arg in bad:
            for line in (f"%lxc info {arg}", f"%lxc use {arg}", f"%lxc clone {name} {arg}", f"%lxc destroy {arg}"):
                ename, evalue, _ = fails(k, line)
                assert ename in ("ConfigError", "UsageError"), (line, ename, evalue)
        ok(k, "%lxc info")  # a valid call is logged: the wrappers work
        calls = log.read_text()
        assert "lxc-info" in calls
        for arg in ("bad;name", "$(id)", "x y", "a|b", "../up", "-dash"):
            assert arg not in calls, arg
    finally:
        k.shutdown()


@pytest.mark.timeout(30)
def test_help_lsmagic_and_usage_come_from_the_docstrings(shared: Kernel) -> None:
    for name, entry in magics.REGISTRY.items():
        assert ok(shared, f"%help {name}") == entry.doc + "\n"
        assert ok(shared, f"%{name} --help") == entry.doc + "\n"
    listing = ok(shared, "%lsmagic")
    assert all(f"%{name}" in listing for name in magics.REGISTRY)


# -- %lxc info / list ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_info_shows_the_session_and_list_renders_a_table(shared: Kernel) -> None:
    pid = ok(shared, "echo $$").strip()
    info = ok(shared, "%lxc info")
    assert f"PID {pid} inside" in info and "lxc-attach PID" in info
    assert re.search(r"state\s+RUNNING", info) and "memory limit" in info and "stderr" in info
    r = shared.execute("%lxc list")
    assert r.status == "ok"
    (display,) = r.of_type("display_data")
    data = display["content"]["data"]
    assert "<table>" in data["text/html"] and shared.container in data["text/html"]  # type: ignore[attr-defined]
    assert shared.container in data["text/plain"]  # type: ignore[attr-defined]


# -- %attach ------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_attach_user_group_env_cwd_as_seen_inside(new_name: Callable[[str], str]) -> None:
    name = new_name("attach")
    ensure_container(name, "hostfs")
    k = start_kernel(name, env={**os.environ, "LXCK_T3_KEEP": "kept-value", "LXCK_T3_SECRET": "s3cret"})
    try:
        before = ok(k, "echo $$").strip()
        out = ok(k, '%attach user student\nid -u; id -g; echo "$HOME $USER $LOGNAME"; pwd; echo $$')
        assert "re-attached" in out
        lines = out.splitlines()[1:]
        assert lines[:4] == ["1000", "1000", "/home/student student student", "/home/student"]
        assert lines[4] != before
        assert ok(k, "%attach user 1000:100\nid -u; id -g").splitlines()[1:] == ["1000", "100"]
        assert ok(k, "%attach user student:staff\nid -g").splitlines()[1:] == ["50"]
        # A user the container doesn't have: refused, and the options stay as they were.
        _ename, evalue, _ = fails(k, "%attach user nosuchuser")
        assert "nosuchuser" in evalue and "left as they were" in evalue
        assert ok(k, "id -u").strip() == "1000"
        out = ok(k, "%attach env FOO=bar 'SPACED=a b'\necho \"$FOO|$SPACED\"")
        assert out.splitlines()[-1] == "bar|a b"
        assert ok(k, '%attach env -u FOO\necho "[$FOO]"').splitlines()[-1] == "[]"
        assert ok(k, "%attach cwd /tmp\npwd").splitlines()[-1] == "/tmp"
        env = ok(k, "env")
        assert "LXCK_T3_KEEP" not in env and "s3cret" not in env
        assert ok(k, "%attach keep-env LXCK_T3_KEEP\necho $LXCK_T3_KEEP").splitlines()[-1] == "kept-value"
        assert "s3cret" not in ok(k, "env")
        show = ok(k, "%attach show")
        assert "student:staff" in show and "SPACED=a b" in show and "/tmp" in show and "LXCK_T3_KEEP" in show
        r = k.execute("%attach elevated CAP\necho ok")
        assert r.status == "ok" and "leak" in r.stream("stderr")
        ok(k, "%attach elevated none\n%attach user root\n%attach cwd home")
        assert ok(k, "id -u; pwd").split() == ["0", "/root"]
    finally:
        k.shutdown()


@pytest.mark.timeout(60)
def test_sudo_without_sudo_is_a_clear_error_and_rolls_back(shared: Kernel) -> None:
    ok(shared, "kept=7")
    r = shared.execute("%attach sudo on")
    if shutil.which("sudo") is None:
        assert r.status == "error" and "sudo is not installed" in r.errors[0]["evalue"]
        assert "sudo" in ok(shared, "%attach show") and "off" in ok(shared, "%attach show").split("sudo")[1]
    else:  # root with sudo: `sudo -n` works, so it re-attaches
        assert r.status == "ok" and "re-attached" in r.stream()
        ok(shared, "%attach sudo off")
    assert ok(shared, "echo ok").strip() == "ok"


# -- everything else ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_timeout_ends_a_sleep(shared: Kernel) -> None:
    ok(shared, "mark=1")
    t0 = time.monotonic()
    ename, evalue, out = fails(shared, "%timeout 1\nsleep 30; echo after")
    assert time.monotonic() - t0 < 6
    assert ename == "TimeoutError" and "1 s" in evalue and "after" not in out
    assert ok(shared, "%timeout").strip() == "timeout: 1 s"
    assert ok(shared, "%timeout off\necho $mark").splitlines()[-1] == "1"  # the shell survived


@pytest.mark.timeout(60)
def test_reset_stderr_and_colors(shared: Kernel) -> None:
    ok(shared, "gone=yes")
    assert ok(shared, '%reset\necho "[$gone]"').splitlines()[-1] == "[]"
    r = shared.execute("%stderr merged\necho to-err >&2")
    assert r.status == "ok" and "to-err" in r.stream() and "to-err" not in r.stream("stderr")
    r = shared.execute("%stderr separate\necho to-err >&2")
    assert r.status == "ok" and "to-err" in r.stream("stderr")
    assert "\x1b[31m" in ok(shared, "%colors on\nprintf '\\033[31mred\\033[0m\\n'")
    assert ok(shared, "%colors off\nprintf '\\033[31mred\\033[0m\\n'").splitlines()[-1] == "red"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(120)
def test_push_and_pull_are_byte_exact(shared: Kernel, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    data = os.urandom(12 << 20) + b"\0\r\n\r\x03\x04\x1b[31m\xff"
    blob.write_bytes(data)
    out = ok(shared, f"%push {blob} /root/blob.bin")
    assert f"{len(data)} bytes" in out
    assert ok(shared, "sha256sum /root/blob.bin").split()[0] == hashlib.sha256(data).hexdigest()
    back = tmp_path / "back.bin"
    out = ok(shared, f"%pull /root/blob.bin {back}")
    assert f"{len(data)} bytes" in out and _sha256(back) == hashlib.sha256(data).hexdigest()
    # A relative container path is relative to the shell's working directory.
    ok(shared, "cd /tmp")
    ok(shared, f"%push {blob} rel.bin\ntest -s /tmp/rel.bin && cd")
    # Errors say what the container said, and leave no partial file behind.
    ename, evalue, _ = fails(shared, f"%pull /nonexistent/file {tmp_path / 'x.bin'}")
    assert ename == "TransferError" and "No such file" in evalue
    assert not (tmp_path / "x.bin").exists() and not list(tmp_path.glob(".lxck-pull-*"))
    ok(shared, "rm -f /root/blob.bin /tmp/rel.bin")


# -- limits -------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_memory_limit_is_enforced_and_cpu_quota_shows_in_the_cgroup(own: Kernel) -> None:
    out = ok(own, "%lxc limit memory 64M --persist")
    assert "memory.limit_in_bytes = 67108864 (live)" in out
    _ename, evalue, out = fails(own, "python3 -c \"b = b'x' * (200 << 20); print('survived')\"")
    assert "137" in evalue and "SIGKILL" in evalue and "survived" not in out
    assert ok(own, "python3 -c \"b = b'x' * (8 << 20); print('small ok')\"").strip() == "small ok"
    ok(own, "%lxc limit cpu 0.5")
    inside = ok(own, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us").split()
    assert inside == ["50000", "100000"]
    show = ok(own, "%lxc limit show")
    assert "0.50 CPU" in show and "64.0 MiB" in show
    ok(own, "%lxc limit cpuset 0")
    assert ok(own, "cat /sys/fs/cgroup/cpuset/cpuset.cpus").strip() == "0"
    assert ok(own, "%lxc config get lxc.cgroup.memory.limit_in_bytes").strip().endswith("= 64M")
    ok(own, "%lxc limit memory off\n%lxc limit cpu off")
    assert "unlimited" in ok(own, "%lxc limit show")


# -- snapshots, clones -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_snapshot_and_restore_with_a_marker_file(own: Kernel, new_name: Callable[[str], str]) -> None:
    ok(own, "echo one > /root/marker")
    _, evalue, _ = fails(own, "%lxc snapshot")
    assert "STOPPED" in evalue and "--stop" in evalue
    out = ok(own, "%lxc snapshot --stop --comment 'with marker'")
    assert "snapshot snap0" in out and "RUNNING" in out
    ok(own, "rm /root/marker")
    listing = ok(own, "%lxc snapshot list")
    assert "snap0" in listing and "with marker" in listing
    assert ok(own, "test -e /root/marker || echo absent").strip() == "absent"
    out = ok(own, "%lxc restore snap0 --stop\ncat /root/marker")
    assert "restored" in out and out.splitlines()[-1] == "one"
    copy = new_name("restored")
    ok(own, f"%lxc restore snap0 --as {copy}\n%lxc start {copy}")
    assert ok(own, f"%lxc use {copy}\ncat /root/marker; hostname").splitlines()[-2:] == ["one", copy]
    ok(own, f"%lxc use {own.container}")  # type: ignore[attr-defined]
    _ename, evalue, _ = fails(own, f"%lxc destroy {copy} --force --snapshots\n%lxc destroy {own.container} --force")  # type: ignore[attr-defined]
    assert "snapshot" in evalue and "--snapshots" in evalue
    assert copy not in lxc_names()
    ok(own, "%lxc snapshot delete snap0")
    assert "no snapshots" in ok(own, "%lxc snapshot list")


@pytest.mark.timeout(120)
def test_overlay_clone_works_and_files_travel_into_it(own: Kernel, new_name: Callable[[str], str],
                                                      tmp_path: Path) -> None:
    src = own.container  # type: ignore[attr-defined]
    clone = new_name("clone")
    ok(own, "echo from-source > /root/origin")
    _, evalue, _ = fails(own, f"%lxc clone {src} {clone} --snapshot")
    assert "--allow-running" in evalue
    out = ok(own, f"%lxc clone {src} {clone} --snapshot --allow-running\n%lxc start {clone}")
    assert "overlay clone" in out and "RUNNING" in out
    assert "/overlay/delta" in ok(own, f"%lxc config get lxc.rootfs.path -n {clone}")
    out = ok(own, f"%lxc use {clone}\nhostname; cat /root/origin")
    assert out.splitlines()[-2:] == [clone, "from-source"]
    blob = tmp_path / "b.bin"
    blob.write_bytes(os.urandom(1 << 20))
    ok(own, f"%push {blob} /root/b.bin\n%pull /root/b.bin {tmp_path / 'c.bin'}")
    assert _sha256(tmp_path / "c.bin") == _sha256(blob)
    _ename, evalue, _ = fails(own, f"%lxc destroy {src}")
    assert clone in evalue and "--clones" in evalue
    ok(own, f"%lxc use {src}\n%lxc destroy {clone}")
    assert clone not in lxc_names()


# -- kernel-level options ---------------------------------------------------------------------------


def _copies(base: str) -> list[str]:
    return [n for n in lxc_names() if n.startswith(f"{base}-eph-")]


@pytest.mark.timeout(120)
def test_ephemeral_kernel_copy_lives_and_dies_with_the_kernel(new_name: Callable[[str], str]) -> None:
    base = new_name("base")
    ensure_container(base, "hostfs")
    k = start_kernel(base, f"--LXCKernel.ephemeral={base}")
    try:
        r = k.execute("hostname; echo scratch > /root/scratch")
        assert r.status == "ok" and "destroyed when this kernel stops" in r.stream("stderr")
        (copy,) = _copies(base)
        assert r.stream().strip() == copy and copy.startswith(f"{base}-eph-{k.pid}-")
        assert "ephemeral" in ok(k, "%lxc info")
    finally:
        k.shutdown()
    assert _copies(base) == []
    assert subprocess.run(["lxc-attach", "-n", base, "--", "test", "-e", "/root/scratch"]).returncode == 1

    # SIGKILL: nothing can clean up, so the next kernel on the same base does.
    k = start_kernel(base, f"--LXCKernel.ephemeral={base}")
    ok(k, "true")
    (orphan,) = _copies(base)
    os.kill(k.pid, signal.SIGKILL)
    k.km.provisioner.process.wait(10)  # type: ignore[union-attr]
    k.kc.stop_channels()
    assert _copies(base) == [orphan]
    k2 = start_kernel(base, f"--LXCKernel.ephemeral={base}")
    try:
        assert orphan not in lxc_names()
        ok(k2, "true")
        assert len(_copies(base)) == 1
    finally:
        k2.shutdown()
    assert _copies(base) == []


@pytest.mark.timeout(120)
def test_create_missing_and_start_stopped(new_name: Callable[[str], str]) -> None:
    name = new_name("auto")
    k = start_kernel(name, "--LXCKernel.create_missing=hostfs")
    try:
        r = k.execute("hostname")
        assert r.status == "ok" and r.stream().strip() == name and "created container" in r.stream("stderr")
        subprocess.run(["lxc-stop", "-n", name, "-k"], check=True)
        r = k.execute("hostname")
        assert r.status == "ok" and "was STOPPED, now RUNNING" in r.stream("stderr")
    finally:
        k.shutdown()
    other = new_name("plain")
    k = start_kernel(other)  # not configured: a missing container is an error, not created
    try:
        _ename, evalue, _ = fails(k, "true")
        assert "does not exist" in evalue and other not in lxc_names()
    finally:
        k.shutdown()


# -- the lifecycle notebook -----------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_lifecycle_notebook_runs_with_nbclient(new_name: Callable[[str], str]) -> None:
    import nbformat
    from nbclient import NotebookClient

    demo = new_name("nb")
    nb = nbformat.read(ROOT / "notebooks" / "lifecycle.ipynb", as_version=4)
    for cell in nb.cells:  # the notebook's container names, made this run's own
        cell.source = cell.source.replace("lxck-demo", demo)
    client = NotebookClient(nb, kernel_name="lxc", timeout=120, extra_arguments=[f"--LXCKernel.container={demo}"])
    client.execute()
    text = "\n".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert f"created {demo}" in text
    assert "snapshot snap0" in text and "restored" in text and "marker survived the restore" in text
    assert "memory.limit_in_bytes" in text and "FROZEN" in text and "overlay clone" in text
    assert f"destroyed {demo}" in text
    assert not [n for n in lxc_names() if n.startswith(demo)]


@pytest.mark.timeout(90)
def test_create_with_config_entries_log_and_lifecycle(shared: Kernel, new_name: Callable[[str], str]) -> None:
    name = new_name("made")
    out = ok(shared, f"%lxc create {name} -t hostfs --apparmor unconfined --config lxc.environment=FOO=1 --start")
    assert f"created {name}" in out and "lxc.apparmor.profile = unconfined" in out and "RUNNING" in out
    assert ok(shared, f"%lxc config get lxc.apparmor.profile -n {name}").strip().endswith("= unconfined")
    assert ok(shared, f"%lxc config get lxc.net.0.type -n {name}").strip().endswith("= empty")  # no lxcbr0 needed
    _, evalue, _ = fails(shared, f"%lxc create {name}")
    assert "already exists" in evalue
    ok(shared, f"%lxc log {name} --level INFO\n%lxc restart {name} --kill")
    assert "NOTICE" in ok(shared, f"%lxc log {name} --lines 5")
    out = ok(shared, f"%lxc freeze {name}\n%lxc unfreeze {name}\n%lxc stop {name} --kill\n%lxc start {name}")
    assert [s for s in ("FROZEN", "RUNNING", "STOPPED", "RUNNING") if s in out] == ["FROZEN", "RUNNING", "STOPPED",
                                                                                  "RUNNING"]
    out = ok(shared, f"%lxc destroy {name}\necho shell-still-here")
    assert f"destroyed {name}" in out and "shell-still-here" in out and name not in lxc_names()
