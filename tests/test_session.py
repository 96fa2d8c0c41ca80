"""The session core's behaviour suite, run on every transport: `local` (a real shell under a real PTY on
this host: no LXC, no root), `lxc-attach` into the busybox and bash test containers, and `ssh` (lxc-attach
on another host through one ControlMaster link: the network-namespace host's busybox container, and the bash
container through sshd on loopback; see tests/sshhost.py), and `incus exec`/LXD's `lxc exec` into busybox and
bash instances: local, on a second cluster member, and through a TLS remote (see tests/incus_support.py).

The same session, cell machine, interrupt/resync, stderr channel and input detection everywhere; a
transport either passes or the test says why not. Without LXC (or not as root) only the local ones run,
in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import time
from collections.abc import Iterator

import incus_support
import psutil
import pytest
import sshhost

from lxc_kernel.attach import AttachOptions, LxcAttachTransport
from lxc_kernel.session import RunHooks, ShellSession
from lxc_kernel.ssh import SshTransport
from lxc_kernel.transport import LocalTransport, Transport

SHELLS = {"bash": ["bash", "--noprofile", "--norc", "--noediting"], "ash": ["busybox", "sh"]}
CONTAINERS = {"lxc-sh": os.environ.get("LXCK_TEST_SH", "lxck-test-sh"),
              "lxc-bash": os.environ.get("LXCK_TEST_BASH", "lxck-test-bash")}
LXC = os.geteuid() == 0 and shutil.which("lxc-attach") is not None
pytestmark = pytest.mark.timeout(60)


def make_transport(kind: str, host_pids: bool | None = None) -> Transport:
    if kind in sshhost.HOSTS:
        if host_pids:
            pytest.skip("over ssh the host cannot see the container's processes (they are on the other host)")
        return sshhost.transport(kind)
    if kind in SHELLS:
        return LocalTransport(SHELLS[kind], **({} if host_pids is None else {"host_pids": host_pids}))
    if kind in incus_support.TARGETS:
        transport: Transport = incus_support.transport(kind)
        if host_pids is not None:
            if host_pids and not transport.capabilities.host_pids:
                pytest.skip(f"{kind}: the host cannot see this instance's processes")
            transport.capabilities = dataclasses.replace(transport.capabilities, host_pids=host_pids)
        return transport
    from conftest import ensure_test_containers

    ensure_test_containers()
    transport = LxcAttachTransport(AttachOptions(CONTAINERS[kind]))
    if host_pids is not None:
        transport.capabilities = dataclasses.replace(transport.capabilities, host_pids=host_pids)
    return transport


SSH_MISSING = sshhost.missing()
SSH_KINDS = [pytest.param(k, marks=pytest.mark.skipif(SSH_MISSING is not None, reason=SSH_MISSING or ""))
             for k in sshhost.HOSTS]
KINDS = [k for k in SHELLS if shutil.which(SHELLS[k][0])] + (list(CONTAINERS) if LXC else []) + SSH_KINDS
KINDS += list(incus_support.TARGETS)


@pytest.fixture(scope="module", autouse=True)
def _incus_instances() -> Iterator[None]:
    yield
    incus_support.cleanup()


@pytest.fixture(params=KINDS)
def session(request: pytest.FixtureRequest) -> Iterator[ShellSession]:
    s = ShellSession(make_transport(request.param), setup=["cd /"])
    s.start()
    yield s
    s.close()


def run(s: ShellSession, code: str, **kw: object) -> tuple[int, str, str, object]:
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    result = s.run(code, lambda stream, text: out[stream].append(text), **kw)  # type: ignore[arg-type]
    return result.status, "".join(out["stdout"]), "".join(out["stderr"]), result


def test_state_status_and_streams(session: ShellSession) -> None:
    assert run(session, "x=41; cd /tmp")[0] == 0
    status, out, err, _ = run(session, "echo $((x+1)) $(pwd); echo oops >&2; false")
    assert (status, out, err) == (1, "42 /tmp\n", "oops\n")


def test_user_aliases_functions_ifs_cannot_break_framing(session: ShellSession) -> None:
    """Fuzzing found `alias cat='cat -n'` broke every cell over ~1 KB, and `set +o emacs` lost the shell."""
    run(session, "alias cat='cat -n'; alias printf=false; printf() { echo hijacked; }; cat() { echo hijacked; }")
    long_cell = "echo start\n" + "# padding\n" * 200 + "echo end"
    status, out, _, _ = run(session, long_cell)
    assert (status, out) == (0, "start\nend\n")
    run(session, "set +o emacs 2>/dev/null; IFS=0123456789")
    status, out, _, _ = run(session, "(exit 130)")
    assert status == 130
    assert run(session, "echo still here")[1] == "still here\n"


def test_token_cannot_be_stolen_through_stderr(session: ShellSession) -> None:
    """A background job that reads its own fd 2 and writes back forged success in 3 of 6 cells."""
    run(session, "(while :; do dd bs=1 count=200 2>/dev/null <&2 | cat >&2; done) 2>&2 & echo $! > /tmp/.t7-steal-$$")
    try:
        for _ in range(5):
            status, _, _, _ = run(session, "sleep 0.2; (exit 7)")
            assert status == 7
    finally:
        run(session, "kill $(cat /tmp/.t7-steal-$$) 2>/dev/null; rm -f /tmp/.t7-steal-$$")


def test_interrupt_with_background_stderr_flood(session: ShellSession) -> None:
    """A job writing stderr every 0.1 s made `sleep 30` ignore the stop button; it must end in < 2 s."""
    run(session, "(while :; do echo tick >&2; sleep 0.1; done) & j=$!")
    try:
        import threading

        threading.Timer(0.5, session.request_interrupt).start()
        # Each cell has a time limit, so a lost end marker fails with what went wrong instead of hanging.
        _, _, _, result = run(session, "sleep 30", timeout=15)
        assert result.interrupted and not result.timed_out, result  # type: ignore[attr-defined]
        _, out, _, result = run(session, "echo after", timeout=10)
        assert out == "after\n" and not result.timed_out, (out, result)  # type: ignore[attr-defined]
    finally:
        run(session, "kill $j", timeout=10)


def test_timeout_ends_the_cell_and_keeps_the_shell(session: ShellSession) -> None:
    run(session, "y=kept")
    _, _, _, result = run(session, "sleep 20", timeout=0.5)
    assert result.timed_out and not result.restarted  # type: ignore[attr-defined]
    assert run(session, "echo $y")[1] == "kept\n"


def _reader_procs(session: ShellSession) -> list[psutil.Process]:
    reader = session.pids[-1]
    return psutil.Process(reader).children(recursive=True) or [psutil.Process(reader)]


def kill_reader(session: ShellSession) -> None:
    """Kill the stderr reader where the container's processes can: its `cat` inside the container (over
    ssh the host only has the client, and a killed client leaves the remote `cat` reading for a moment)."""
    kind = next((k for k, (target, _) in sshhost.HOSTS.items()
                 if isinstance(session.transport, SshTransport) and str(session.transport.link.target) == target),
                None)
    if kind is None:
        for proc in _reader_procs(session):
            proc.kill()
        return
    err = f"{session.info.session_dir}/err"  # type: ignore[union-attr]
    deadline = time.monotonic() + 15  # the reader starts a moment after the shell answers
    while not (cats := [pid for pid, _, cmd in sshhost.processes_inside(kind) if cmd.strip() == f"cat {err}"]):
        assert time.monotonic() < deadline, "no stderr reader inside"
        time.sleep(0.05)
    sshhost.inside(kind, f"kill -9 {' '.join(map(str, cats))}")


def test_killed_stderr_reader_is_replaced_without_spinning(session: ShellSession) -> None:
    """Killing the reader made the kernel spin at 100% CPU and lose stderr."""
    kill_reader(session)
    time.sleep(0.2)
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    status, _, err, _ = run(session, "sleep 2; echo back >&2")
    assert status == 0 and "back" in err
    assert sum(me.cpu_times()[:2]) - cpu0 < 0.5


def test_stderr_flood_with_reader_replaced_does_not_block(session: ShellSession) -> None:
    """Killing only the reader's `cat` blocked a cell writing 200 KB to stderr until interrupted."""
    kill_reader(session)
    status, out, err, result = run(session, "head -c 200000 /dev/zero | tr '\\0' e >&2; echo done", timeout=20)
    assert status == 0 and out == "done\n" and not result.interrupted  # type: ignore[attr-defined]
    # A killed reader may take what it had already read with it; then the cell says so.
    assert err.count("e") == 200000 or result.stderr_lost  # type: ignore[attr-defined]
    assert err.count("e") > 100000


def test_session_dir_removed_is_made_again(session: ShellSession) -> None:
    """A tmp cleaner removing /tmp/.lxck.* made every later cell fail with status 1 without running."""
    old = session.info.session_dir  # type: ignore[union-attr]
    status, _, _, result = run(session, f"rm -rf {old}")
    assert status == 0 and "d" in result.repairs  # type: ignore[attr-defined]
    new = session.info.session_dir  # type: ignore[union-attr]
    assert new != old and run(session, f"[ -d {new} ] && [ -p {new}/err ] && echo there")[1] == "there\n"
    status, out, err, _ = run(session, "echo ok; echo err >&2")
    assert (status, out, err) == (0, "ok\n", "err\n")
    big = "echo " + "x" * 5000 + " | wc -c"
    assert run(session, big)[1].strip() == "5001"


def test_cells_cannot_close_or_steal_the_stderr_fds(session: ShellSession) -> None:
    """fds 28/29 are closed around every cell's eval and restored after it: `exec` cannot touch them."""
    run(session, "exec 28>&- 29>&-; exec 28>/tmp/.t7-fd28-$$ 29</dev/null; echo $$ > /tmp/.t7-pid")
    # ls stats what it lists, and the fd of its own directory read is gone by then ("No such file or
    # directory" on stderr, seen under load on busybox): only the names matter here.
    status, out, err, result = run(session, "echo fine >&2; ls /proc/$$/fd/ 2>/dev/null | grep -c '^2[89]$'; true")
    assert (status, out, err, result.repairs) == (0, "0\n", "fine\n", "")  # type: ignore[attr-defined]
    run(session, "rm -f /tmp/.t7-fd28-$(cat /tmp/.t7-pid) /tmp/.t7-pid")


class Prompts(RunHooks):
    """Answers every detected prompt with a name, as a frontend's input box would."""

    def __init__(self, session: ShellSession) -> None:
        self.session = session
        self.asked = 0

    def idle(self) -> None:
        if self.session.find_waiter() is not None:
            self.asked += 1
            self.session.send_input(b"alice\n")


@pytest.mark.parametrize("host_pids", [True, False], ids=["host-proc", "inside-probe"])
@pytest.mark.parametrize("kind", KINDS)
def test_input_detection_host_and_inside(kind: str, host_pids: bool) -> None:
    """Where the host cannot see the shell (ssh, sudo), the same detection runs inside the container."""
    s = ShellSession(make_transport(kind, host_pids))
    s.start()
    if host_pids and not s.shell_host_pid:
        s.close()
        pytest.skip(f"{kind}: the shell runs on another cluster member, whose processes the host cannot see")
    try:
        hooks = Prompts(s)
        out: list[str] = []
        r = s.run("read -p 'Name? ' n; echo got:$n", lambda st, t: out.append(t), stdin=True, hooks=hooks)
        assert r.status == 0 and hooks.asked == 1 and "got:alice" in "".join(out)
        quiet = Prompts(s)
        for _ in range(20):
            s.run("ls / >/dev/null; sleep 0.1", lambda st, t: None, stdin=True, hooks=quiet)
        assert quiet.asked == 0
    finally:
        s.close()


class Secrets(Prompts):
    """Records whether each detected prompt reads a secret (echo off, as `read -s` sets it)."""

    def __init__(self, session: ShellSession) -> None:
        super().__init__(session)
        self.modes: list[bool] = []

    def idle(self) -> None:
        waiter = self.session.find_waiter()
        if waiter is not None:
            self.modes.append(None if waiter.lflag is None else waiter.password or waiter.password_echo_off)
            self.session.send_input(b"alice\n")


@pytest.mark.parametrize("host_pids", [True, False], ids=["host-proc", "inside-probe"])
@pytest.mark.parametrize("kind", KINDS)
def test_silent_read_is_a_secret_host_and_inside(kind: str, host_pids: bool) -> None:
    """`read -s` turns echo off: seen from the host's /proc and from inside (where a cell's stdin is
    /dev/tty, which the probe cannot reopen: the modes come from the same terminal on fd 1), except in an
    unprivileged container, where the probe may not open that terminal at all."""
    s = ShellSession(make_transport(kind, host_pids))
    s.start()
    try:
        hooks = Secrets(s)
        r = s.run("read -s -p 'PW: ' pw; echo; echo ${#pw}", lambda st, t: None, stdin=True, hooks=hooks)
        assert r.status == 0 and hooks.modes
        if hooks.modes[0] is None:
            # Only in an unprivileged container: its shell's terminal is a host pty that container root may
            # not open, so the probe cannot read the modes (cellio then goes by the prompt's words).
            assert not host_pids
            _, uid_map = s.query("cat /proc/self/uid_map")
            assert uid_map.split()[:3] != ["0", "0", "4294967295"], "modes unreadable in a privileged container"
        else:
            assert hooks.modes[0] is True
    finally:
        s.close()


@pytest.mark.parametrize("kind", KINDS)
def test_close_ends_every_process(kind: str) -> None:
    transport = make_transport(kind)
    s = ShellSession(transport)
    s.start()
    # Durations of this run only: other kernels (other tests, other helpers) share the container.
    base = 300 + secrets.randbelow(10**6)
    jobs = (f"sleep {base}.1", f"sleep {base}.2")
    s.run(f"{jobs[0]} & {jobs[1]} &", lambda *_: None)
    tree = [p for pid in s.pids for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
    shell = s.info.pid  # type: ignore[union-attr]
    session_dir = s.info.session_dir  # type: ignore[union-attr]
    ssh = kind in sshhost.HOSTS

    def ours(pid: int, cmd: str) -> bool:
        """A process of this session inside the container: its shell, its jobs, its stderr reader (`cat
        SESSION_DIR/err`) or another helper that names its session directory or its shell's PID. Not the
        `/tmp/.lxck.*` helpers of the other kernels in the same container."""
        words = cmd.split()
        return (pid == shell or cmd.strip() in jobs or bool(session_dir and session_dir in cmd)
                or ("lxck" in cmd and str(shell) in words))

    in_instance = not ssh and not transport.capabilities.shell_is_descendant
    if ssh:  # the jobs are on the other host: look for them inside the container
        assert len(tree) >= 2
        before = [(pid, cmd) for pid, state, cmd in sshhost.processes_inside(kind) if ours(pid, cmd)]
        assert set(jobs) <= {cmd.strip() for _, cmd in before}
        # The check below can see the session's own helpers: its stderr reader names the session directory.
        assert session_dir and any(session_dir in cmd for _, cmd in before), before
    elif in_instance:
        # incus exec: the shell's host parent is the daemon, not the client; check the instance itself.
        assert len(tree) >= 2 and jobs[1] in incus_support.processes(kind)
    else:
        assert len(tree) >= 4
    s.close()
    _, alive = psutil.wait_procs(tree, timeout=3)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    if ssh:
        left = [(pid, cmd) for pid, state, cmd in sshhost.processes_inside(kind) if state != "Z" and ours(pid, cmd)]
        assert not left, left
    if in_instance:
        # Nothing but the instance's init: no shell, no job, no stderr reader.
        left2 = [cmd for cmd in incus_support.processes(kind) if cmd not in ("init", "/sbin/init")]
        assert not left2, left2


def test_query_that_ignores_interrupt_keeps_the_session(session: ShellSession) -> None:
    """A completion helper stuck past its deadline must not cost the user's shell and variables."""
    from lxc_kernel.errors import ShellTimeout

    run(session, "kept=yes")
    with pytest.raises(ShellTimeout):
        session.query("trap '' INT; sleep 3", timeout=0.3)
    assert session.alive
    assert run(session, "echo $kept")[1] == "yes\n"


@pytest.mark.parametrize("kind", KINDS)
def test_overlong_typed_line_fails_at_once(kind: str) -> None:
    """busybox ash (after `stty -echo`) waited forever for a typed line over 4095 bytes, on lxc-attach and
    incus exec alike: a setup line that long is refused before it is typed, and the shell is closed."""
    from lxc_kernel.errors import LxcKernelError

    s = ShellSession(make_transport(kind), setup=["x=" + "y" * 5000])
    started = time.monotonic()
    with pytest.raises(LxcKernelError, match="cannot be typed"):
        s.start()
    assert time.monotonic() - started < 8
    assert not s.alive
