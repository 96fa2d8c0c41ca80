"""Tests for provision.py: config text handling, refusal before any lxc-* call, and real throwaway containers.

Real containers are named ``lxck-tmp-`` plus a random suffix and destroyed by their fixtures; nothing else
on the host is touched. Set LXCK_TEST_DEBIAN=1 to also build a Debian container (slow, needs a mirror).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lxc_kernel import provision
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import TOOL_ENV, Container, State, Tools
from lxc_kernel.provision import (
    Mode,
    Provisioned,
    Setting,
    apply_settings,
    config_values,
    destroy_container,
    detect_kind,
    ensure_container,
    forced_mount_auto,
    hostfs_settings,
)

REPO = Path(__file__).resolve().parent.parent
PREFIX = "lxck-tmp-"

needs_lxc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("lxc-create", path=TOOL_ENV["PATH"]) is None,
    reason="needs root and LXC (apt-get install lxc)",
)


def tmp_name() -> str:
    return PREFIX + secrets.token_hex(4)


# -- pure: config text ------------------------------------------------------------------------

# What lxc-busybox (LXC 5.0.2) writes, shortened.
BUSYBOX_CONFIG = """\
# Template used to create this container: /usr/share/lxc/templates/lxc-busybox
lxc.net.0.type = empty
lxc.net.0.flags = up
lxc.rootfs.path = dir:/var/lib/lxc/x/rootfs
lxc.uts.name = "x"
lxc.tty.max = 5
lxc.pty.max = 1
lxc.cap.drop = sys_module mac_admin mac_override sys_time
lxc.mount.auto = cgroup:mixed proc:mixed sys:ro
lxc.mount.entry = /lib lib none ro,bind 0 0
"""


def test_set_replaces_every_line_of_the_key_where_it_first_appeared() -> None:
    text = "a = 1\nb = 2\na = 3\n# a = comment\n"
    assert apply_settings(text, [Setting("a", ("9",))]) == "a = 9\nb = 2\n# a = comment\n"


def test_set_appends_a_missing_key_and_can_write_an_empty_reset_line() -> None:
    assert apply_settings("b = 2\n", [Setting("m", ("", "x y"))]) == "b = 2\nm =\nm = x y\n"


def test_default_keeps_the_effective_value_once() -> None:
    text = "r = dir:/a\nk = 1\nr = dir:/b\n"
    assert apply_settings(text, [Setting("r", ("dir:/c",), Mode.DEFAULT)]) == "r = dir:/b\nk = 1\n"
    assert apply_settings("k = 1\n", [Setting("r", ("dir:/c",), Mode.DEFAULT)]) == "k = 1\nr = dir:/c\n"


def test_add_keeps_other_lines_and_adds_only_missing_values() -> None:
    text = "e = /lib lib none ro,bind 0 0\n"
    out = apply_settings(text, [Setting("e", ("/lib  lib none ro,bind 0 0", "/usr usr none ro,bind 0 0"), Mode.ADD)])
    assert out == "e = /lib lib none ro,bind 0 0\ne = /usr usr none ro,bind 0 0\n"


def test_forced_mount_auto_keeps_proc_and_sys_choices() -> None:
    assert forced_mount_auto(["cgroup:mixed proc:mixed sys:ro"]) == "cgroup:mixed:force proc:mixed sys:ro"
    assert forced_mount_auto(["proc:rw", "sys:mixed shmounts:/a:/b"]) == (
        "cgroup:mixed:force proc:rw sys:mixed shmounts:/a:/b"
    )
    assert forced_mount_auto([]) == "cgroup:mixed:force proc:mixed sys:ro"
    # An empty value resets the list: what came before it does not count.
    assert forced_mount_auto(["proc:rw", "", "sys:rw"]) == "cgroup:mixed:force proc:mixed sys:rw"


def test_busybox_fixes_raise_pty_max_force_cgroup_and_are_idempotent() -> None:
    once = apply_settings(BUSYBOX_CONFIG, provision.busybox_settings(BUSYBOX_CONFIG))
    assert config_values(once, "lxc.pty.max") == ["64"]
    assert config_values(once, "lxc.mount.auto") == ["cgroup:mixed:force proc:mixed sys:ro"]
    assert "sys_admin" in config_values(once, "lxc.cap.drop")
    assert config_values(once, "lxc.mount.entry") == ["/lib lib none ro,bind 0 0"]
    assert apply_settings(once, provision.busybox_settings(once)) == once


def test_hostfs_config_is_stable_and_never_shares_host_etc_or_root() -> None:
    settings = hostfs_settings("box", "/var/lib/lxc/box/rootfs")
    text = apply_settings("lxc.net.0.type = empty\n", settings)
    assert apply_settings(text, settings) == text
    entries = config_values(text, "lxc.mount.entry")
    assert "/usr usr none ro,bind,nosuid 0 0" in entries
    assert not [e for e in entries if e.split()[0] in ("/etc", "/root", "/home")]
    assert config_values(text, "lxc.init.cmd") == ["/usr/sbin/init.lxc -n box -- /usr/bin/sleep infinity"]
    # An overlay clone keeps its own rootfs and init command.
    clone = text.replace("dir:/var/lib/lxc/box/rootfs", "overlay:/var/lib/lxc/box/rootfs:/var/lib/lxc/c/delta")
    assert apply_settings(clone, hostfs_settings("c", "/var/lib/lxc/c/rootfs")) == clone


def test_detect_kind() -> None:
    assert detect_kind(BUSYBOX_CONFIG) == "busybox"
    assert detect_kind("# Template used to create this container: /usr/share/lxc/templates/lxc-debian\n") == "debian"
    assert detect_kind("lxc.net.0.type = empty\n# lxc-kernel: kind = hostfs\n") == "hostfs"
    assert detect_kind("# Template used to create this container: /usr/share/lxc/templates/lxc-download\n") is None
    assert detect_kind("lxc.uts.name = x\n") is None


# -- pure: bad input is refused before any lxc-* tool runs ----------------------------------------


@dataclass(frozen=True)
class RecordingTools(Tools):
    """Tools that record every call and refuse to run anything."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(self, tool: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:  # type: ignore[override]
        self.calls.append((tool, *args))
        raise AssertionError(f"{tool} ran")


BAD_NAMES = ["", "-x", "a b", "x;reboot", "$(id)", "../etc", "a/b", "ends-", "ends.", "x" * 65, "tab\tname"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused_before_any_lxc_call(name: str) -> None:
    tools = RecordingTools(lxcpath="/nonexistent")
    with pytest.raises(ConfigError, match="invalid container name"):
        ensure_container(name, "hostfs", tools=tools)
    with pytest.raises(ConfigError, match="invalid container name"):
        destroy_container(name, tools=tools)
    assert tools.calls == []


def test_unknown_kind_is_refused_before_any_lxc_call() -> None:
    tools = RecordingTools(lxcpath="/nonexistent")
    with pytest.raises(ConfigError, match="unknown container kind 'alpine'"):
        ensure_container("fine-name", "alpine", tools=tools)
    assert tools.calls == []


def test_cli_refuses_an_invalid_name_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert provision.main(["x;reboot", "--kind", "busybox"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid container name 'x;reboot'" in err


def test_cli_refuses_a_relative_lxcpath(capsys: pytest.CaptureFixture[str]) -> None:
    assert provision.main(["fine-name", "--lxcpath", "relative/dir"]) == 1
    assert "invalid lxcpath" in capsys.readouterr().err


# -- helpers for real containers --------------------------------------------------------------------


def attach_argv(name: str, *cmd: str, lxcpath: str | None = None, student: bool = False) -> list[str]:
    argv = ["lxc-attach", *(["-P", lxcpath] if lxcpath else []), "-n", name, "--clear-env"]
    if student:
        argv += ["-u", "1000", "-g", "1000"]
    return [*argv, "--", *cmd]


def attach(name: str, *cmd: str, lxcpath: str | None = None, student: bool = False) -> str:
    """Run ``cmd`` over pipes; return stdout, asserting exit status 0."""
    proc = subprocess.run(
        attach_argv(name, *cmd, lxcpath=lxcpath, student=student),
        capture_output=True,
        text=True,
        timeout=30,
        env=TOOL_ENV,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (cmd, proc.returncode, proc.stderr)
    return proc.stdout


def _take_controlling_tty() -> None:
    # As ptyprocess and script(1) do. With the PTY only as its stdin/stdout (no setsid + TIOCSCTTY),
    # lxc-attach exited 0 at once and its output never reached the master side.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def pty_spawn(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` on a fresh PTY as its controlling terminal, so lxc-attach allocates one inside."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=TOOL_ENV, preexec_fn=_take_controlling_tty
        )
    finally:
        os.close(slave)
    return proc, master


def pty_read(master: int, until: bytes | None, timeout: float) -> bytes:
    """Read until ``until`` appears, or until EOF (EIO on Linux) when ``until`` is None."""
    buf = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {until!r} within {timeout} s; got {buf!r}")
        ready, _, _ = select.select([master], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every writer of the slave side has gone
            break
        if not chunk:
            break
        buf += chunk
    return buf


def pty_output(argv: list[str], timeout: float = 20) -> str:
    proc, master = pty_spawn(argv)
    try:
        out = pty_read(master, None, timeout)
        assert proc.wait(timeout) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return out.decode(errors="replace")


def config_text(name: str, tools: Tools | None = None) -> str:
    return Path(Container(name, tools).config_path()).read_text()


@pytest.fixture(scope="module")
def busybox() -> Iterator[Provisioned]:
    name = tmp_name()
    try:
        yield provision.provision(name, "busybox")
    finally:
        destroy_container(name)


@pytest.fixture(scope="module")
def hostfs() -> Iterator[Provisioned]:
    name = tmp_name()
    try:
        yield provision.provision(name, "hostfs")
    finally:
        destroy_container(name)


@pytest.fixture(params=["busybox", "hostfs"])
def either(request: pytest.FixtureRequest) -> Provisioned:
    return request.getfixturevalue(request.param)


# -- real containers ------------------------------------------------------------------------------


@needs_lxc
@pytest.mark.timeout(120)
def test_busybox_runs_ash_and_has_no_bash(busybox: Provisioned) -> None:
    name = busybox.container.name
    assert busybox.created and busybox.kind == "busybox" and busybox.state is State.RUNNING
    assert attach(name, "sh", "-c", "readlink /bin/sh; echo $((6 * 7)); command -v bash || echo no-bash").split() == [
        "busybox",
        "42",
        "no-bash",
    ]
    text = config_text(name)
    assert config_values(text, "lxc.pty.max") == ["64"]
    assert config_values(text, "lxc.mount.auto") == ["cgroup:mixed:force proc:mixed sys:ro"]
    assert config_values(text, "lxc.net.0.type") == ["empty"]


@needs_lxc
@pytest.mark.timeout(120)
def test_hostfs_has_bash_python_users_and_its_own_etc(hostfs: Provisioned) -> None:
    name = hostfs.container.name
    assert hostfs.created and hostfs.kind == "hostfs" and hostfs.state is State.RUNNING
    assert attach(name, "bash", "-c", "echo $BASH_VERSION").startswith("5.")
    assert attach(name, "/usr/bin/python3", "-c", "import ssl, sqlite3; print(6 * 7)") == "42\n"
    assert attach(name, "id", "student") == "uid=1000(student) gid=1000(student) groups=1000(student)\n"
    assert attach(name, "getent", "group", "staff") == "staff:x:50:\n"
    assert attach(name, "hostname") == f"{name}\n"
    assert attach(name, "cat", "/etc/passwd") == provision.hostfs_files(name)["etc/passwd"][0]
    assert attach(name, "ls", "-A", "/root") == ""
    assert attach(name, "stat", "-c", "%U %a", "/home/student", "/tmp") == "student 755\nroot 1777\n"
    ps = attach(name, "ps", "-eo", "pid,comm")
    assert "sleep" in ps and "init" in ps
    assert attach(name, "bash", "-c", "cd /home/student && touch f && stat -c %U f", student=True) == "student\n"


@needs_lxc
@pytest.mark.timeout(120)
def test_hostfs_root_cannot_write_or_remount_the_host_usr(hostfs: Provisioned) -> None:
    name = hostfs.container.name
    out = attach(name, "bash", "-c", "touch /usr/lxck-x 2>&1; mount -o remount,rw,bind /usr 2>&1; echo rc=$?")
    assert "Read-only file system" in out and "rc=32" in out
    assert not Path("/usr/lxck-x").exists()
    assert " ro," in attach(name, "grep", " /usr ", "/proc/mounts")


@needs_lxc
@pytest.mark.timeout(120)
def test_two_pty_sessions_each_get_a_tty(either: Provisioned) -> None:
    # lxc-busybox writes lxc.pty.max = 1: a second session then got a host pty and "not a tty".
    name = either.container.name
    holder, master = pty_spawn(attach_argv(name, "sh", "-c", "tty; exec sleep 60"))
    try:
        first = pty_read(master, b"\n", 20).decode()
        second = pty_output(attach_argv(name, "tty"))
    finally:
        holder.kill()
        holder.wait()
        os.close(master)
    assert first.startswith("/dev/pts/"), first
    assert second.startswith("/dev/pts/"), second
    assert first.split()[0] != second.split()[0]


@needs_lxc
@pytest.mark.timeout(120)
def test_cgroup_limits_are_visible_inside(either: Provisioned) -> None:
    if not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        pytest.skip("host has no cgroup v1 memory controller")
    ct = either.container
    ct.cgroup("memory.limit_in_bytes", str(300 * 2**20))
    assert attach(ct.name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes") == f"{300 * 2**20}\n"


@needs_lxc
@pytest.mark.timeout(120)
def test_second_ensure_is_a_no_op(either: Provisioned) -> None:
    ct = either.container
    config = Path(ct.config_path())
    before, mtime, pid = config.read_text(), config.stat().st_mtime_ns, ct.init_pid()
    again = provision.provision(ct.name, either.kind or "")
    assert (again.created, again.changed, again.state) == (False, (), State.RUNNING)
    assert ensure_container(ct.name, either.kind or "").name == ct.name
    assert (config.read_text(), config.stat().st_mtime_ns, ct.init_pid()) == (before, mtime, pid)


@needs_lxc
@pytest.mark.timeout(120)
def test_existing_container_of_another_kind_is_refused(busybox: Provisioned) -> None:
    name = busybox.container.name
    before = config_text(name)
    with pytest.raises(ConfigError, match="is a busybox container, not hostfs"):
        ensure_container(name, "hostfs")
    assert config_text(name) == before


@needs_lxc
@pytest.mark.timeout(120)
def test_stopped_container_is_started_and_no_start_leaves_it_stopped() -> None:
    name = tmp_name()
    try:
        done = provision.provision(name, "hostfs", start=False)
        assert (done.created, done.state) == (True, State.STOPPED)
        assert provision.provision(name, "hostfs").state is State.RUNNING
    finally:
        destroy_container(name)


@needs_lxc
@pytest.mark.timeout(120)
def test_hostfs_overlay_and_ephemeral_clones_work_and_destroy_cleans_up() -> None:
    base, clone, ephemeral = tmp_name(), tmp_name(), tmp_name()
    lxc_log = ["-l", "ERROR", "-o", "/dev/null"]
    try:
        ensure_container(base, "hostfs", start=False)
        subprocess.run(["lxc-copy", *lxc_log, "-n", base, "-N", clone, "-s"], check=True, env=TOOL_ENV, timeout=60)
        assert ensure_container(clone, "hostfs").state() is State.RUNNING
        assert config_values(config_text(clone), "lxc.rootfs.path")[0].startswith("overlay:")
        assert attach(clone, "bash", "-c", "hostname; id -u student") == f"{clone}\n1000\n"
        # lxc-copy -e starts the copy as a daemon that keeps inherited fds: give it none to hold.
        subprocess.run(
            ["lxc-copy", *lxc_log, "-n", base, "-N", ephemeral, "-e"],
            check=True,
            env=TOOL_ENV,
            timeout=60,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert Container(ephemeral).wait(State.RUNNING, 10) is State.RUNNING
        assert attach(ephemeral, "bash", "-c", "echo ok") == "ok\n"
    finally:
        for name in (ephemeral, clone, base):  # clones first: LXC refuses to destroy a base with clones
            destroy_container(name)
    for name in (ephemeral, clone, base):
        assert Container(name).state() is State.MISSING
        assert not Path(Container(name).config_path()).parent.exists()
        assert destroy_container(name) is False


@needs_lxc
@pytest.mark.timeout(120)
def test_cli_creates_reports_and_destroys_under_its_own_lxcpath() -> None:
    # Container root (a mapped uid) must walk down to its rootfs, and pytest's tmp_path is under a 0700
    # directory: the lxcpath gets a directory of its own, searchable only.
    base = tempfile.mkdtemp(prefix=PREFIX)
    os.chmod(base, 0o711)
    name, lxcpath = tmp_name(), os.path.join(base, "lxc")
    env = {**TOOL_ENV, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lxc_kernel.provision", name, "--lxcpath", lxcpath, *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)

    try:
        first = cli("--kind", "hostfs")
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith(f"created {name} (hostfs) in ") and first.stdout.endswith("state RUNNING\n")
        assert attach(name, "bash", "-c", "echo $((1 + 1))", lxcpath=lxcpath) == "2\n"
        again = cli("--kind", "hostfs")
        assert again.stdout.startswith(f"exists {name} (hostfs)"), again.stdout
        wrong = cli("--kind", "busybox")
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
        gone = cli("--destroy")
        assert (gone.returncode, gone.stdout) == (0, f"destroyed {name}\n")
        assert cli("--destroy").stdout == f"absent {name}\n"
        assert not Path(lxcpath, name).exists()
    finally:
        destroy_container(name, Tools(lxcpath=lxcpath))
        shutil.rmtree(base, ignore_errors=True)


@needs_lxc
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LXCK_TEST_DEBIAN") != "1", reason="set LXCK_TEST_DEBIAN=1 (downloads Debian)")
@pytest.mark.timeout(1800)
def test_debian_container_has_systemd_and_bash() -> None:
    name = tmp_name()
    try:
        done = provision.provision(name, "debian", timeout=60)
        assert (done.created, done.kind, done.state) == (True, "debian", State.RUNNING)
        assert attach(name, "bash", "-c", "cat /proc/1/comm; echo $BASH_VERSION").startswith("systemd\n5.")
    finally:
        destroy_container(name)
