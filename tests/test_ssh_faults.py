"""The ssh transport when things go wrong, on real hosts (.ci/setup-ssh): the link cut (veth down) mid-cell
and while idle, the remote container stopped mid-cell, shutdown leaving nothing on either host, the
ControlMaster gone after the kernel is SIGKILLed; plus parse_target and the remote quoting of argv.

Kernel-level tests run a real kernel whose transport is built the test-only way in tests/ssh_kernel.py, except
the frozen and deleted mid-cell ones: a kernel with its own ``--ssh`` on a container of this module's own
(lxck-t9x-1) on the namespace host, created and destroyed here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import sshhost
from conftest import Kernel, install_test_kernelspecs

from lxc_kernel.errors import ConfigError
from lxc_kernel.session import ShellSession
from lxc_kernel.ssh import LinkDown, SshLink, SshTarget, SshTransport, parse_target

MISSING = sshhost.missing()
needs_hosts = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
pytestmark = pytest.mark.timeout(90)


# -- pure: the target and the quoting -------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "want"), [
    ("host", SshTarget(None, "host", None)),
    ("root@10.99.9.2", SshTarget("root", "10.99.9.2", None)),
    ("u_1.x-y@node-1.example.org:2222", SshTarget("u_1.x-y", "node-1.example.org", 2222)),
    ("[::1]:22", SshTarget(None, "::1", 22)),
    ("me@[fe80::1%eth0]", SshTarget("me", "fe80::1%eth0", None)),
])
def test_parse_target_accepts(spec: str, want: SshTarget) -> None:
    assert parse_target(spec) == want
    assert parse_target(str(want)) == want


@pytest.mark.parametrize("spec", [
    "", "@host", "user@", "-oProxyCommand=x", "user@-host", "host:0", "host:65536", "host:22x", "host:",
    "a b", "host;id", "$(id)@host", "user@host@other", "::1", "[host]", "ro`ot@h", "h\n", "-p22",
    "x" * 301, "user@host:22:33", "a..b",
])
def test_parse_target_refuses(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(spec)


@pytest.mark.parametrize("option", ["ProxyCommand=sh -c id", "ProxyCommand=/bin/sh", "LocalCommand=id",
                                    "SendEnv=*", "ControlPath=/tmp/x", "IdentityFile=/a b", "-v", "Port=22\n"])
def test_link_refuses_options(option: str) -> None:
    with pytest.raises(ConfigError):
        SshLink(parse_target("h"), options=[option])


HOSTILE = ["printf", "%s|", "a b", "$(touch /tmp/lxck-t9s-pwned)", "`id`", "x;id", "'", '"', "\\", "*", "-n",
           "--", "\t", "new\nline", "$HOME", "~", "a&&b", ""]


def test_wrap_keeps_each_hostile_word_one_word() -> None:
    link = SshLink(parse_target("root@h:2"), options=["IdentityFile=/k"])
    link._dir = "/tmp/lxck-ssh-x"  # no master needed to build the argv
    argv = link.wrap(HOSTILE, tty=False)
    assert argv[:4] == ["ssh", "-T", "-S", "/tmp/lxck-ssh-x/m"]
    assert argv[-3:-1] == ["--", "h"] and "BatchMode=yes" in argv and "-tt" in link.wrap(["x"], tty=True)
    assert shlex.split(argv[-1]) == HOSTILE
    assert not any(word.startswith("SendEnv") for word in argv)


@needs_hosts
def test_hostile_argv_arrives_word_for_word_on_the_remote_host() -> None:
    link = sshhost.link("ssh-lo")
    out = subprocess.run(link.wrap(HOSTILE, tty=False), capture_output=True, env=link.env(), timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "".join(f"{w}|" for w in HOSTILE[2:])
    assert not os.path.exists("/tmp/lxck-t9s-pwned")


@needs_hosts
def test_no_host_environment_reaches_the_remote_side() -> None:
    """Debian's ssh_config sends LANG and LC_*: the clients have neither, so nothing of ours travels."""
    transport = sshhost.transport("ssh-lo")
    os.environ["LC_LXCK_T9S"] = "leak"
    try:
        env = transport.run(["/usr/bin/env"], timeout=20).stdout.decode()
    finally:
        del os.environ["LC_LXCK_T9S"]
    assert "LXCK_T9S" not in env and "JPY" not in env and "LC_ALL" not in env, env


@needs_hosts
def test_env_values_are_refused_over_ssh() -> None:
    from lxc_kernel.attach import AttachOptions
    from lxc_kernel.lxc import Tools

    link = sshhost.link("ssh-ns")
    with pytest.raises(ConfigError, match="over ssh"):
        SshTransport(link, AttachOptions(sshhost.REMOTE, tools=Tools(remote=link), env=(("TOKEN", "s3cret"),)))


@needs_hosts
def test_unknown_host_key_fails_at_once_without_prompting(tmp_path: object) -> None:
    empty = os.path.join(str(tmp_path), "known_hosts")
    open(empty, "w").close()
    opts = [o for o in sshhost.options() if not o.startswith("UserKnownHostsFile")] + [f"UserKnownHostsFile={empty}"]
    link = SshLink(parse_target(sshhost.HOSTS["ssh-ns"][0]), options=opts)
    with pytest.raises(LinkDown, match="ssh exited 255"):
        link.open(timeout=20)
    assert link.pid is None and link.control_dir is None


# -- the link cut, at the session level -----------------------------------------------------------------------

@pytest.fixture
def own_session() -> Iterator[tuple[SshLink, ShellSession]]:
    link = sshhost.new_link("ssh-ns")
    session = ShellSession(sshhost.transport("ssh-ns", link), setup=["cd /"])
    session.start()
    try:
        yield link, session
    finally:
        sshhost.veth(True)
        session.close()
        link.close()


@needs_hosts
def test_link_cut_mid_cell_ends_it_with_an_error_naming_the_link(own_session: tuple[SshLink, ShellSession]) -> None:
    link, session = own_session
    threading.Timer(1.0, sshhost.veth, (False,)).start()
    out: list[str] = []
    start = time.monotonic()
    with pytest.raises(LinkDown, match=r"ssh link to root@10\.99\.9\.2 is down"):
        session.run("echo started; sleep 60", lambda _s, t: out.append(t), timeout=45)
    assert "started" in "".join(out) and time.monotonic() - start < 40
    assert not link.alive()
    sshhost.veth(True)
    link.open()  # the link comes back, and with it a fresh shell
    fresh = ShellSession(sshhost.transport("ssh-ns", link))
    fresh.start()
    try:
        assert fresh.run("echo again", lambda *_: None).status == 0
    finally:
        fresh.close()


@needs_hosts
def test_link_cut_while_idle_makes_the_next_cell_fail_clearly(own_session: tuple[SshLink, ShellSession]) -> None:
    link, session = own_session
    sshhost.veth(False)
    deadline = time.monotonic() + 30
    while link.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not link.alive(), "the master should notice the dead link by its keepalives"
    with pytest.raises(LinkDown, match="is down"):
        session.run("echo hi", lambda *_: None, timeout=20)
    from lxc_kernel.lxc import Container, Tools

    with pytest.raises(LinkDown, match="cannot run lxc-info"):
        Container(sshhost.REMOTE, Tools(remote=link)).state()


# -- a real kernel over ssh -----------------------------------------------------------------------------------

def ssh_kernelspec() -> str:
    specs = install_test_kernelspecs()
    path = os.path.join(specs, "kernels", "lxck-t9s-ssh")
    os.makedirs(path, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    spec = {
        "argv": [sys.executable, os.path.join(here, "ssh_kernel.py"), "-f", "{connection_file}",
                 f"--LXCKernel.container={sshhost.REMOTE}"],
        "display_name": "lxc-kernel over ssh (tests)",
        "language": "bash",
        "env": {"LXCK_TEST_SSH_TARGET": sshhost.HOSTS["ssh-ns"][0],
                "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(here), os.environ.get("PYTHONPATH")) if p)},
    }
    with open(os.path.join(path, "kernel.json"), "w") as fh:
        json.dump(spec, fh)
    return "lxck-t9s-ssh"


@pytest.fixture
def ssh_kernel() -> Iterator[Kernel]:
    sshhost.start_remote()
    k = Kernel(ssh_kernelspec())
    try:
        yield k
    finally:
        sshhost.veth(True)
        try:
            k.shutdown()
        except Exception:
            pass
        sshhost.start_remote()


def link_processes(kernel_pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(kernel_pid).children(recursive=True) if p.name() == "ssh"]
    except psutil.Error:
        return []


def master_of(kernel_pid: int) -> psutil.Process:
    masters = [p for p in link_processes(kernel_pid) if "-M" in p.cmdline()]
    assert len(masters) == 1, [p.cmdline() for p in link_processes(kernel_pid)]
    return masters[0]


@needs_hosts
def test_kernel_over_ssh_runs_cells_and_shutdown_leaves_nothing(ssh_kernel: Kernel) -> None:
    r = ssh_kernel.execute("x=5; echo $((x*2)) $(hostname); echo oops >&2; sleep 300 & sleep 301 &")
    assert r.status == "ok" and r.stream("stdout") == f"10 {sshhost.REMOTE}\n" and r.stream("stderr") == "oops\n"
    r = ssh_kernel.execute("echo $x; echo $$")
    shell = int(r.stream().split()[1])
    assert r.stream().split()[0] == "5"
    host_side = link_processes(ssh_kernel.pid)
    assert len(host_side) >= 3  # the master, the shell's client, the stderr reader's client
    master = master_of(ssh_kernel.pid).cmdline()
    control_dir = os.path.dirname(master[master.index("-S") + 1])
    ssh_kernel.shutdown()
    _, alive = psutil.wait_procs(host_side, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    assert not os.path.exists(control_dir)
    # The watchdog ended the shell's jobs inside, through the link, before it killed the master.
    left = [(pid, cmd) for pid, state, cmd in sshhost.processes_inside("ssh-ns")
            if state != "Z" and (pid == shell or cmd.strip() in ("sleep 300", "sleep 301"))]
    assert not left, left
    left = [(pid, cmd) for pid, state, cmd in sshhost.processes_inside("ssh-ns")
            if state != "Z" and (pid == shell or cmd.strip() in ("sleep 300", "sleep 301") or "lxck" in cmd)]
    assert not left, left


@needs_hosts
def test_kernel_link_cut_mid_cell_gives_an_error_naming_the_link(ssh_kernel: Kernel) -> None:
    assert ssh_kernel.execute("echo ready").stream() == "ready\n"
    threading.Timer(1.0, sshhost.veth, (False,)).start()
    r = ssh_kernel.execute("sleep 60", timeout=60)
    assert r.status == "error" and r.elapsed < 40
    assert "ssh link to root@10.99.9.2" in r.reply["content"]["evalue"], r.reply["content"]
    sshhost.veth(True)
    r = ssh_kernel.execute("echo back", timeout=60)  # the kernel opens the link again
    assert r.status == "ok" and r.stream() == "back\n", r.reply["content"]


@needs_hosts
def test_kernel_remote_container_stopped_mid_cell(ssh_kernel: Kernel) -> None:
    assert ssh_kernel.execute("echo ready").stream() == "ready\n"
    stop = ["ip", "netns", "exec", sshhost.NS, "lxc-stop", "-k", "-n", sshhost.REMOTE]
    threading.Timer(1.0, subprocess.run, (stop,), {"timeout": 30}).start()
    r = ssh_kernel.execute("sleep 60", timeout=60)
    assert r.status == "error" and r.elapsed < 40
    assert r.reply["content"]["ename"] == "ContainerNotReady" and "STOPPED" in r.reply["content"]["evalue"]
    sshhost.start_remote()
    assert ssh_kernel.execute("echo back", timeout=60).stream() == "back\n"


@needs_hosts
def test_controlmaster_gone_after_the_kernel_is_killed(ssh_kernel: Kernel) -> None:
    r = ssh_kernel.execute("sleep 300 & sleep 301 & echo $$")
    shell = int(r.stream())
    master = master_of(ssh_kernel.pid)
    control_dir = os.path.dirname(master.cmdline()[master.cmdline().index("-S") + 1])
    time.sleep(1.5)  # a watchdog look (it was also told to scan when the link opened)
    os.kill(ssh_kernel.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs([master], timeout=10)
    assert not alive or alive[0].status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 10
    while os.path.exists(control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(control_dir)
    # The watchdog ended the shell's jobs inside, through the link, before it killed the master.
    left = [(pid, cmd) for pid, state, cmd in sshhost.processes_inside("ssh-ns")
            if state != "Z" and (pid == shell or cmd.strip() in ("sleep 300", "sleep 301"))]
    assert not left, left


def test_watchdog_takes_only_well_formed_on_death_commands() -> None:
    from lxc_kernel.watchdog import remember

    commands: dict[str, list[str]] = {}
    remember(commands, {"key": "shell", "argv": ["ssh", "-T", "h", "kill"]})
    for bad in (None, "x", {"argv": ["a"]}, {"key": "k", "argv": "sh -c x"}, {"key": "k", "argv": []},
                {"key": "k", "argv": ["a", 1]}):
        remember(commands, bad)
    assert commands == {"shell": ["ssh", "-T", "h", "kill"]}
    remember(commands, {"key": "shell", "argv": ["other"]})
    assert commands == {"shell": ["other"]}
    remember(commands, {"key": "shell", "argv": None})
    assert commands == {}


@needs_hosts
def test_interrupt_reaches_the_remote_job_and_keeps_the_link(ssh_kernel: Kernel) -> None:
    """jupyter_client signals the kernel's whole process group: the master, in its own session, stays."""
    assert ssh_kernel.execute("kept=yes").status == "ok"
    master = master_of(ssh_kernel.pid)
    threading.Timer(1.0, ssh_kernel.km.interrupt_kernel).start()
    r = ssh_kernel.execute("sleep 60", timeout=30)
    assert r.status == "error" and r.reply["content"]["ename"] == "KeyboardInterrupt" and r.elapsed < 20
    assert master.is_running() and master_of(ssh_kernel.pid).pid == master.pid
    r = ssh_kernel.execute("echo $kept; ps | grep -c '[s]leep 60'", timeout=30)
    assert r.stream().split() == ["yes", "0"], r.stream()


# -- a kernel with its own --ssh, on a container of this module's own on the namespace host ------------------

OWN = "lxck-t9x-1"


def in_ns(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """An lxc-* tool run in the namespace host's network namespace (its containers' command sockets live there).
    nsenter, not `ip netns exec`: that one also mounts a fresh /sys, without the cgroup hierarchies, so a
    container started under it gets no cgroups and lxc-freeze fails ("Failed to freeze")."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{sshhost.NS}", *argv], capture_output=True, text=True,
                          timeout=120, check=check)


def ensure_own() -> None:
    """Create (busybox) and start OWN from inside the namespace, the way .ci/setup-ssh makes its container."""
    if sshhost.remote_state(OWN) != "RUNNING":
        in_ns(sys.executable, "-m", "lxc_kernel.provision", OWN, "--kind", "busybox")  # creates and starts it
        in_ns("lxc-wait", "-n", OWN, "-s", "RUNNING", "-t", "20")


@pytest.fixture(scope="module")
def own_remote() -> Iterator[str]:
    if MISSING is not None:
        pytest.skip(MISSING)
    try:
        ensure_own()
        yield OWN
    finally:
        in_ns("lxc-unfreeze", "-n", OWN, check=False)
        in_ns(sys.executable, "-m", "lxc_kernel.provision", OWN, "--destroy", check=False)


@pytest.fixture
def own_kernel(own_remote: str) -> Iterator[Kernel]:
    """A real kernel with ``--ssh root@10.99.9.2`` and the test hosts' ssh options, on OWN."""
    from conftest import start_kernel

    ensure_own()
    k = start_kernel(own_remote, f"--LXCKernel.ssh={sshhost.HOSTS['ssh-ns'][0]}",
                     *(f"--LXCKernel.ssh_options={o}" for o in sshhost.options()))
    try:
        yield k
    finally:
        try:
            k.shutdown()
        except Exception:
            pass


def act_after(delay: float, argv: list[str]) -> tuple[threading.Thread, list[float]]:
    """Run ``argv`` inside the namespace ``delay`` seconds from now; the list gets the times it started and
    ended."""
    at: list[float] = []

    def act() -> None:
        time.sleep(delay)
        at.append(time.monotonic())
        in_ns(*argv)
        at.append(time.monotonic())

    thread = threading.Thread(target=act)
    thread.start()
    return thread, at


@needs_hosts
def test_kernel_own_ssh_container_frozen_mid_cell(own_kernel: Kernel) -> None:
    """A frozen container gives no output and no end of file: the health check's lxc-info over the link
    ends the cell with an error naming FROZEN; after lxc-unfreeze the next cell gets a fresh shell."""
    assert own_kernel.execute("echo ready").stream() == "ready\n"
    thread, at = act_after(1.0, ["lxc-freeze", "-n", OWN])
    try:
        r = own_kernel.execute("echo started; sleep 60", timeout=60)
        ended = time.monotonic()
        thread.join()
        assert r.status == "error", r.reply["content"]
        content = r.reply["content"]
        assert content["ename"] == "ContainerNotReady" and "FROZEN" in content["evalue"], content
        assert "unfreeze" in content["evalue"] and "started" in r.stream()
        assert ended - at[0] < 30, ended - at[0]
        print(f"frozen: error {ended - at[1]:.2f} s after lxc-freeze ({at[1] - at[0]:.2f} s): {content['evalue']}")
    finally:
        thread.join()
        in_ns("lxc-unfreeze", "-n", OWN, check=False)
    # Thawed, the old shell's job is gone too (its ssh session ended while the container was frozen).
    deadline = time.monotonic() + 15
    while "sleep 60" in (left := own_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "sleep 60" not in left, left
    r = own_kernel.execute("echo thawed", timeout=60)
    assert r.status == "ok" and r.stream() == "thawed\n", r.reply["content"]


def own_processes() -> str:
    """The command lines of every process in OWN, looked at the direct way (lxc-attach in the namespace)."""
    return in_ns("lxc-attach", "-n", OWN, "--clear-env", "--", "/bin/ps", "-o", "pid,args").stdout


@needs_hosts
def test_kernel_own_ssh_container_deleted_mid_cell(own_kernel: Kernel) -> None:
    """lxc-destroy -f mid-cell: the cell ends with an error naming the cause, the kernel lives on (and says
    the container is missing), and after shutdown nothing of the session is left on either host."""
    assert own_kernel.execute("echo ready").stream() == "ready\n"
    host_side = link_processes(own_kernel.pid)
    master = master_of(own_kernel.pid).cmdline()
    control_dir = os.path.dirname(master[master.index("-S") + 1])
    thread, at = act_after(1.0, ["lxc-destroy", "-f", "-n", OWN])
    r = own_kernel.execute("echo started; sleep 60", timeout=90)
    ended = time.monotonic()
    thread.join()
    assert sshhost.remote_state(OWN) == "", "lxc-destroy should have removed the container"
    assert r.status == "error", r.reply["content"]
    content = r.reply["content"]
    assert content["ename"] == "ContainerNotReady" and OWN in content["evalue"], content
    assert re.search("STOPPED|does not exist|MISSING", content["evalue"]), content
    assert ended - at[0] < 40, ended - at[0]
    print(f"deleted: error {ended - at[0]:.2f} s after lxc-destroy ({at[1] - at[0]:.2f} s): {content['evalue']}")
    r = own_kernel.execute("echo after", timeout=60)
    assert r.status == "error" and OWN in r.reply["content"]["evalue"], r.reply["content"]
    assert own_kernel.km.is_alive()
    host_side += link_processes(own_kernel.pid)
    own_kernel.shutdown()
    _, alive = psutil.wait_procs(host_side, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    assert not os.path.exists(control_dir)
    # On the namespace host: no sshd session serving this kernel, nothing of the container's.
    sessions = in_ns("ps", "-eo", "pid,args", check=False).stdout
    assert OWN not in sessions, sessions
