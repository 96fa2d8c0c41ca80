"""Issue 8, a kernel run by a normal user, both ways, with real users made by ``.ci/setup-users``:

- through sudo: the kernel runs as ``lxck-usudo`` and reaches root's containers only through the validating
  helper (cells, ``%lxc status``, interrupt, an input prompt found from inside the container, a container
  outside the allow-list, the raw-tool escalations the helper refuses, a group grant, a user with no rule,
  a notebook run by nbclient as the user);
- with its own unprivileged containers: the kernel runs as ``lxck-uown`` inside its delegated cgroups
  (cells, freeze/unfreeze, a memory limit through ``%lxc``, the shell inside the container's cgroup).

The kernels are started as the user by the kernelspec's argv (``setpriv``, or the delegate launcher), and
driven by jupyter_client from this (root) process. The users' Python is the venv that ``.ci/setup-users``
makes (the tests' interpreter may be under /root, which the users cannot reach), with this checkout first on
PYTHONPATH. Containers are ``lxck-t8n-*`` and destroyed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import psutil
import pytest
from conftest import Result, execute
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from lxc_kernel.lxc import SUDO_HELPER
from lxc_kernel.provision import destroy_container, ensure_container

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.environ.get("LXCK_USER_VENV", "/opt/lxc-kernel/venv") + "/bin/python"
SUDO_USER, GROUP_USER, NORULE_USER, OWN_USER = "lxck-usudo", "lxck-ugrp", "lxck-unorule", "lxck-uown"
RUN = secrets.token_hex(2)
SUDO_CT = f"lxck-t8n-s-{RUN}"  # granted to lxck-usudo (lxck-t8n-s-*)
GROUP_CT = f"lxck-t8n-g-{RUN}"  # granted to %lxck-gsudo (lxck-t8n-g-*)
OWN_CT = f"lxck-t8n-own-{RUN}"  # lxck-uown's own container


def _why_skip() -> str:
    if os.geteuid() != 0:
        return "needs root (to start kernels as the test users)"
    for user in (SUDO_USER, GROUP_USER, NORULE_USER, OWN_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user} is missing: run .ci/setup-users"
    if not os.access(VENV_PYTHON, os.X_OK):
        return f"{VENV_PYTHON} is missing: run .ci/setup-users"
    if not os.path.exists(SUDO_HELPER) or shutil.which("sudo") is None:
        return "the sudo helper is not installed: run .ci/setup-users"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_skip()), reason=_why_skip() or "ok")


def as_user(user: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` with a clean environment (what the user's own shell would have)."""
    entry = pwd.getpwnam(user)
    base = {"HOME": entry.pw_dir, "USER": user, "LOGNAME": user, "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8", "PYTHONPATH": REPO}
    full = ["setpriv", f"--reuid={user}", f"--regid={entry.pw_gid}", "--init-groups", "env", "-i",
            *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()], *argv]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd="/", input=input)


def as_owner(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``argv`` as lxck-uown inside its delegated cgroups (the launcher a root Jupyter uses)."""
    entry = pwd.getpwnam(OWN_USER)
    full = [sys.executable, "-m", "lxc_kernel.delegate", OWN_USER, "--run", "--", "env", "-i",
            f"HOME={entry.pw_dir}", "PATH=/usr/local/bin:/usr/bin:/bin", *argv]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd="/",
                          env={**os.environ, "PYTHONPATH": REPO})


def helper(user: str, *args: str, stderr_file: str | None = None) -> subprocess.CompletedProcess[str]:
    """The raw helper through sudo, as ``user`` would call it."""
    if stderr_file is None:
        return as_user(user, "sudo", "-n", SUDO_HELPER, *args, timeout=30)
    # stderr as a file the user opened read-only: lxc must not reopen it for writing as root.
    return as_user(user, "sh", "-c", 'f=$1; shift; exec "$@" 2<"$f"', "sh", stderr_file,
                   "sudo", "-n", SUDO_HELPER, *args, timeout=30)


class _UserKernelManager(KernelManager):
    """Writes the connection file (0600) for the kernel's user: root writes it, the user's kernel reads it."""

    owner = (0, 0)

    def write_connection_file(self, **kw: Any) -> None:
        super().write_connection_file(**kw)
        os.chown(self.connection_file, *self.owner)


class UserKernel:
    """A kernel process of ``user``: started by root's jupyter_client with a spec whose argv drops to the user."""

    def __init__(self, user: str, container: str, *traits: str, own: bool = False) -> None:
        entry = pwd.getpwnam(user)
        self.user = user
        # The connection file and the kernel's working directory: the user's, private.
        self.dir = tempfile.mkdtemp(prefix="lxck-t8n-")
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        env = [f"HOME={entry.pw_dir}", f"USER={user}", f"LOGNAME={user}", "PATH=/usr/local/bin:/usr/bin:/bin",
               f"PYTHONPATH={REPO}", "LANG=C.UTF-8"]
        kernel = [VENV_PYTHON, "-m", "lxc_kernel", "-f", "{connection_file}",
                  f"--LXCKernel.container={container}", *traits]
        if own:
            drop = [sys.executable, "-m", "lxc_kernel.delegate", user, "--run", "--"]
        else:
            drop = ["setpriv", f"--reuid={user}", f"--regid={entry.pw_gid}", "--init-groups"]
        spec_dir = os.path.join(self.dir, "specs", "k")
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
            json.dump({"argv": [*drop, "env", "-i", *env, *kernel], "display_name": "t8n", "language": "bash",
                       "interrupt_mode": "signal", "env": {"PYTHONPATH": REPO}}, fh)
        self.km = _UserKernelManager(kernel_name="k",
                                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[os.path.dirname(spec_dir)]))
        self.km.owner = (entry.pw_uid, entry.pw_gid)
        self.km.connection_file = os.path.join(self.dir, "connection.json")
        self.kc: Any = None
        try:
            self.km.start_kernel(cwd=self.dir)
            self.kc = self.km.client()  # after the start: the client copies the connection info
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=60)
        except BaseException:
            self.shutdown()  # a kernel that did not come up leaves neither a process nor its directory
            raise

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60, **kw: Any) -> Result:
        return execute(self.kc, code, timeout, **kw)

    def ok(self, code: str, timeout: float = 60) -> str:
        r = self.execute(code, timeout)
        assert r.status == "ok", (code, r.errors, r.stream("stderr"))
        return r.stream()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if self.kc is not None:
                self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=not self.km.is_alive())
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def user_kernel(user: str, container: str, *traits: str, own: bool = False) -> Iterator[UserKernel]:
    k = UserKernel(user, container, *traits, own=own)
    try:
        yield k
    finally:
        k.shutdown()


def lxc_attach_of(container: str, but: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Processes on the host that attach to ``container`` (lxc-attach, and the sudo/helper around it), but
    not those in ``but`` (another kernel's, on the same container)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "lxc-attach" in " ".join(cmd) and container in cmd and proc.pid not in but:
            out.append(proc)
    return out


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(0.1)
    return True


# -- containers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudo_containers() -> Iterator[tuple[str, str]]:
    """Root's busybox containers, one granted to the user, one to the group."""
    for name in (SUDO_CT, GROUP_CT):
        ensure_container(name, "busybox")
    yield SUDO_CT, GROUP_CT
    for name in (SUDO_CT, GROUP_CT):
        destroy_container(name)


@pytest.fixture(scope="module")
def own_container() -> Iterator[str]:
    """lxck-uown's own unprivileged busybox container, made and started by the user in its cgroups."""
    made = as_owner("lxc-create", "-n", OWN_CT, "-t", "busybox", timeout=120)
    assert made.returncode == 0, made.stderr
    as_owner("sed", "-i", "s/^lxc.pty.max.*/lxc.pty.max = 64/",
             f"{pwd.getpwnam(OWN_USER).pw_dir}/.local/share/lxc/{OWN_CT}/config")
    started = as_owner("lxc-start", "-n", OWN_CT, "-d")
    assert started.returncode == 0, started.stderr
    yield OWN_CT
    as_owner("lxc-stop", "-n", OWN_CT, "-k")
    as_owner("lxc-destroy", "-n", OWN_CT, "-f")


# -- through sudo ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sk(sudo_containers: tuple[str, str]) -> Iterator[UserKernel]:
    with user_kernel(SUDO_USER, sudo_containers[0], "--LXCKernel.sudo=True") as k:
        yield k


@pytest.mark.timeout(120)
def test_sudo_kernel_runs_cells_as_the_user(sk: UserKernel) -> None:
    assert psutil.Process(sk.pid).uids().real == pwd.getpwnam(SUDO_USER).pw_uid
    first = sk.execute("echo hello; id -u")
    assert first.status == "ok", first.errors
    assert first.stream() == "hello\n0\n"  # root inside the container
    # The one notice of what a non-root kernel does differently, once.
    assert f"runs as {SUDO_USER}, not root (through the sudo helper)" in first.stream("stderr")
    again = sk.execute("x=42; echo $x")
    assert again.stream() == "42\n" and "not root" not in again.stream("stderr")
    failed = sk.execute("false")
    assert failed.status == "error" and failed.errors[0]["ename"] == "ExitStatus"
    assert sk.ok("%lxc status").startswith(f"container {SUDO_CT}: RUNNING (init PID ")


@pytest.mark.timeout(120)
def test_sudo_kernel_interrupt(sk: UserKernel) -> None:
    msg_id = sk.kc.execute("sleep 100; echo not-reached")
    time.sleep(1.5)
    sk.km.interrupt_kernel()
    reply = sk.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = sk.kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert sk.ok("echo back; echo $x") == "back\n42\n"  # same shell


def run_with_input(k: UserKernel, code: str, replies: list[str], timeout: float = 60) -> tuple[Result, list[dict]]:
    msg_id = k.kc.execute(code, allow_stdin=True)
    requests: list[dict] = []
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        assert time.monotonic() < deadline, f"no idle within {timeout} s; requests={requests}"
        with contextlib.suppress(Empty):
            req = k.kc.get_stdin_msg(timeout=0.02)
            requests.append(req["content"])
            k.kc.input(replies.pop(0) if replies else "\x04")
        try:
            msg = k.kc.get_iopub_msg(timeout=0.02)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif msg["msg_type"] != "execute_input":
            messages.append(msg)
    reply = k.kc.get_shell_msg(timeout=timeout)
    return Result(reply, messages), requests


@pytest.mark.timeout(120)
def test_sudo_kernel_input_prompt_found_from_inside(sk: UserKernel) -> None:
    r, requests = run_with_input(sk, 'read -p "Name? " n; echo "hello $n"', ["alice"])
    assert requests == [{"prompt": "Name? ", "password": False}]
    assert r.status == "ok" and r.stream() == "hello alice\n"
    r, requests = run_with_input(sk, 'read -s -p "Password: " pw; echo; echo "got ${#pw}"', ["s3cret"])
    assert requests == [{"prompt": "Password: ", "password": True}]
    assert r.status == "ok" and "s3cret" not in r.stream() and r.stream().endswith("got 6\n")


@pytest.mark.timeout(120)
def test_sudo_container_outside_the_allow_list_is_refused(sk: UserKernel) -> None:
    r = sk.execute("%lxc status lxck-test-sh")
    assert r.status == "error"
    text = r.errors[0]["evalue"]
    assert f"'lxck-test-sh' is not allowed for user {SUDO_USER}" in text
    assert "lxc_kernel.sudo grant" in text
    # Features the helper does not allow say that they need host root.
    r = sk.execute("%lxc config set lxc.log.level INFO")
    assert r.status == "error" and "needs host root" in r.errors[0]["evalue"]
    assert sk.ok("echo still") == "still\n"


@pytest.mark.timeout(120)
def test_sudo_kernel_outside_the_allow_list_fails_clearly(sudo_containers: tuple[str, str]) -> None:
    with user_kernel(SUDO_USER, "lxck-test-sh", "--LXCKernel.sudo=True") as k:
        r = k.execute("echo hi", timeout=30)
        assert r.status == "error"
        assert "is not allowed for user lxck-usudo" in r.errors[0]["evalue"]


@pytest.mark.timeout(120)
def test_user_without_a_rule_gets_a_clear_error_not_a_prompt(sudo_containers: tuple[str, str]) -> None:
    with user_kernel(NORULE_USER, sudo_containers[0], "--LXCKernel.sudo=True") as k:
        r = k.execute("echo hi", timeout=30)  # a password prompt would hang here: sudo -n fails at once
        assert r.status == "error"
        text = r.errors[0]["evalue"]
        assert "password is required" in text
        assert f"python3 -m lxc_kernel.sudo grant {NORULE_USER}" in text


@pytest.mark.timeout(60)
def test_group_grant(sudo_containers: tuple[str, str]) -> None:
    ok = helper(GROUP_USER, "lxc-info", "-n", GROUP_CT, "-s", "-H")
    assert ok.returncode == 0 and ok.stdout.strip() == "RUNNING", ok.stderr
    refused = helper(GROUP_USER, "lxc-info", "-n", SUDO_CT, "-s", "-H")
    assert refused.returncode != 0 and f"not allowed for user {GROUP_USER}" in refused.stderr
    listed = helper(GROUP_USER, "lxc-ls", "-1")
    assert listed.stdout.split() == [GROUP_CT]  # only what the grants allow is listed


@pytest.mark.timeout(120)
def test_helper_refuses_the_raw_tool_escalations(sudo_containers: tuple[str, str], tmp_path: Any) -> None:
    """Each of these, allowed by a sudoers rule on the raw lxc-* tools, gave the user host root."""
    os.chmod(tmp_path, 0o755)
    marker = tmp_path / "hook-ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    victim = tmp_path / "root-only"
    victim.write_text("root's\n")
    victim.chmod(0o644)  # readable, so the user can open it read-only as stderr
    rcfile = tmp_path / "rc.conf"
    rcfile.write_text(f"lxc.hook.pre-start = {hook}\n")
    rcfile.chmod(0o644)
    ct = sudo_containers[0]
    cases = [
        (("lxc-start", "-n", ct, "-d", "-s", f"lxc.hook.pre-start={hook}"), "-s"),
        (("lxc-start", "-n", ct, "-d", f"--define=lxc.hook.pre-start={hook}"), "--define"),
        (("lxc-info", "-n", ct, "-o", str(victim)), "-o"),
        (("lxc-info", "-n", ct, "-l", "TRACE"), "-l"),
        (("lxc-info", "-P", str(tmp_path), "-n", ct), "-P"),
        (("lxc-start", "-n", ct, "-f", str(rcfile)), "-f"),
        (("lxc-attach", "-n", ct, "--rcfile", str(rcfile), "--", "true"), "--rcfile"),
        (("lxc-copy", "-n", ct, "-N", f"{ct}-x", "-m", f"bind={tmp_path}:/mnt"), "-m"),
        (("lxc-attach", "-n", ct, "-s", "NETWORK", "--", "touch", str(marker)), "-s"),
        (("lxc-attach", "-n", ct, "--elevated-privileges=CAP", "--", "true"), "--elevated-privileges"),
        (("lxc-attach", "-n", ct, "-L", str(victim), "--", "true"), "-L"),
        (("lxc-attach", "-n", ct, "--keep-var", "PATH", "--", "true"), "--keep-var"),
        (("lxc-start", "-n", ct, "-d", "-p", str(victim)), "-p"),
        (("lxc-snapshot", "-n", ct, "-c", "/etc/shadow"), "-c"),
        (("lxc-cgroup", "-n", ct, "devices.allow", "a"), "resource key"),
        (("lxc-cgroup", "-n", ct, "cgroup.procs", "1"), "resource key"),
        (("lxc-create", "-n", ct, "-t", "busybox"), "lxc-create is not allowed"),
        (("lxc-execute", "-n", ct, "--", "true"), "not allowed"),
        (("lxc-info", "-n", "lxck-test-sh"), "not allowed for user"),
        (("lxc-copy", "-n", ct, "-N", "lxck-test-x"), "not allowed for user"),
    ]
    for args, said in cases:
        r = helper(SUDO_USER, *args)
        assert r.returncode != 0, (args, r.stdout, r.stderr)
        assert "lxc-kernel sudo helper" in r.stderr and said in r.stderr, (args, r.stderr)
    # A log target of fd 2 that the user opened read-only is not reopened for writing by root: lxc's
    # error for a missing (but allowed) container goes nowhere.
    r = helper(SUDO_USER, "lxc-info", "-n", f"lxck-t8n-s-{RUN}-missing", stderr_file=str(victim))
    assert r.returncode != 0
    assert victim.read_text() == "root's\n"
    assert not marker.exists()
    # The caller's environment does not reach the helper (env_reset, no SETENV; python3 -I).
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "fnmatch.py").write_text(f"open({str(marker)!r}, 'w')\n")
    os.chmod(evil, 0o755)
    r = as_user(SUDO_USER, "sudo", "-n", SUDO_HELPER, "lxc-info", "-n", ct, "-s", env={"PYTHONPATH": str(evil)})
    assert r.returncode == 0 and not marker.exists()
    r = as_user(SUDO_USER, "sudo", "-n", f"PYTHONPATH={evil}", SUDO_HELPER, "lxc-info", "-n", ct, "-s")
    assert r.returncode != 0 and not marker.exists()


@pytest.mark.timeout(240)
def test_notebook_through_nbclient_as_the_user(sudo_containers: tuple[str, str]) -> None:
    """The user installs a spec with `install --sudo` and runs a notebook with nbclient, all as the user."""
    entry = pwd.getpwnam(SUDO_USER)
    work = tempfile.mkdtemp(prefix="lxck-t8n-nb-")
    os.chown(work, entry.pw_uid, entry.pw_gid)
    try:
        r = as_user(SUDO_USER, VENV_PYTHON, "-m", "lxc_kernel.install", "--prefix", f"{work}/prefix", "--name",
                    "lxc-sudo", "--sudo", "--container", sudo_containers[0])
        assert r.returncode == 0, r.stderr
        with open(f"{work}/prefix/share/jupyter/kernels/lxc-sudo/kernel.json") as fh:
            spec = json.load(fh)
        assert "--LXCKernel.sudo=True" in spec["argv"]
        script = (
            "import nbformat, nbclient, sys\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sys.argv[1:]])\n"
            "nbclient.NotebookClient(nb, kernel_name='lxc-sudo', timeout=60).execute()\n"
            "print('|'.join(''.join(o.get('text', '') for o in c.outputs) for c in nb.cells))\n"
        )
        r = as_user(SUDO_USER, VENV_PYTHON, "-c", script, "n=3; echo start", "echo $((n * 2)); id -u",
                    "%lxc status", env={"JUPYTER_PATH": f"{work}/prefix/share/jupyter"}, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        start, double, status = r.stdout.strip().split("|")
        assert start.endswith("start\n") and double == "6\n0\n"
        assert f"container {sudo_containers[0]}: RUNNING" in status
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sleepers(token: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", token]]


@pytest.mark.timeout(120)
def test_sudo_kernel_leaves_no_process(sudo_containers: tuple[str, str]) -> None:
    """A clean shutdown ends the root lxc-attach processes (which the user cannot signal) and the shell's
    background jobs (which the user cannot see: the shell kills them itself)."""
    token = f"{secrets.randbelow(10**6)}.25"
    ct = sudo_containers[0]
    others = frozenset(p.pid for p in lxc_attach_of(ct))
    with user_kernel(SUDO_USER, ct, "--LXCKernel.sudo=True") as k:
        k.ok(f"sleep {token} & echo up")
        assert lxc_attach_of(ct, others) and sleepers(token)
    assert wait_for(lambda: not lxc_attach_of(ct, others), 15), lxc_attach_of(ct, others)
    assert wait_for(lambda: not sleepers(token), 15)


@pytest.mark.timeout(120)
def test_sigkilled_sudo_kernel_leaves_no_lxc_attach(sudo_containers: tuple[str, str]) -> None:
    """The watchdog (the user) sends sudo SIGTERM, which sudo passes on to the root lxc-attach: a SIGKILLed
    sudo left the stderr reader's lxc-attach running (measured)."""
    ct = sudo_containers[0]
    others = frozenset(p.pid for p in lxc_attach_of(ct))
    with user_kernel(SUDO_USER, ct, "--LXCKernel.sudo=True") as k:
        k.ok("echo up")
        assert lxc_attach_of(ct, others)
        os.kill(k.pid, 9)
        assert wait_for(lambda: not lxc_attach_of(ct, others), 15), lxc_attach_of(ct, others)


# -- the user's own containers -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_own_container_cells_freeze_and_memory_limit(own_container: str) -> None:
    with user_kernel(OWN_USER, own_container, own=True) as k:
        first = k.execute("cat /proc/self/uid_map; id -u")
        assert first.status == "ok", (first.errors, first.stream("stderr"))
        mapping = first.stream().split()
        assert mapping[:2] == ["0", str(_subuid(OWN_USER))] and mapping[-1] == "0"  # unprivileged, root inside
        assert f"runs as {OWN_USER}, not root (with its own containers)" in first.stream("stderr")
        assert "outside" not in first.stream("stderr")  # inside the delegated cgroups
        r, requests = run_with_input(k, 'read -p "Name? " n; echo "hello $n"', ["bob"])
        assert requests == [{"prompt": "Name? ", "password": False}] and r.stream() == "hello bob\n"
        msg_id = k.kc.execute("sleep 100")
        time.sleep(1.5)
        k.km.interrupt_kernel()
        reply = k.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = k.kc.get_shell_msg(timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # The attached shell is in the container's cgroup: what makes limits and freeze reach it.
        token = f"{secrets.randbelow(10**6)}.5"
        k.ok(f"sleep {token} & echo started")
        sleeper = next(p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", token])
        with open(f"/proc/{sleeper.pid}/cgroup") as fh:
            memory = next(line for line in fh if ":memory:" in line)
        assert memory.strip().endswith(f"/lxc-kernel/{OWN_USER}/lxc.payload.{own_container}"), memory
        k.ok("kill %1 2>/dev/null; true")
        assert "FROZEN" in k.ok("%lxc freeze")
        assert "FROZEN" in k.ok("%lxc status")
        assert "RUNNING" in k.ok("%lxc unfreeze")
        assert k.ok("echo thawed") == "thawed\n"
        out = k.ok("%lxc limit memory 64M")
        assert "memory.limit_in_bytes = 67108864" in out
        # dd fills a buffer of bs bytes: 16 MB fits under the 64 MB limit, 200 MB is killed (SIGKILL).
        hog = "dd if=/dev/zero bs={} count=1 of=/dev/null 2>/dev/null; echo rc=$?"
        assert k.ok(hog.format("16M")) == "rc=0\n"
        assert k.ok(hog.format("200M")) == "rc=137\n"
        k.ok("%lxc limit memory off")
        assert k.ok(hog.format("200M")) == "rc=0\n"


def _subuid(user: str) -> int:
    with open("/etc/subuid") as fh:
        for line in fh:
            name, start, _ = line.strip().split(":")
            if name == user:
                return int(start)
    raise AssertionError(f"{user} has no subuid range")


def root_names() -> list[str]:
    return subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, timeout=30).stdout.split()


@pytest.mark.timeout(180)
def test_sudo_ephemeral_copy_removed_at_shutdown_and_after_sigkill(sudo_containers: tuple[str, str]) -> None:
    """The copy is made and removed through the helper; a SIGKILLed kernel's watchdog (the user) removes it."""
    base = sudo_containers[0]
    with user_kernel(SUDO_USER, base, "--LXCKernel.sudo=True", f"--LXCKernel.ephemeral={base}") as k:
        copy = k.ok("hostname").strip()
        assert copy.startswith(f"{base}-eph-") and copy in root_names()
    assert wait_for(lambda: copy not in root_names(), 15)
    with user_kernel(SUDO_USER, base, "--LXCKernel.sudo=True", f"--LXCKernel.ephemeral={base}") as k:
        copy = k.ok("hostname").strip()
        assert copy in root_names()
        os.kill(k.pid, 9)
        assert wait_for(lambda: copy not in root_names(), 15), f"{copy} still there"


@pytest.mark.timeout(120)
def test_own_kernel_outside_its_cgroups_says_how_to_start_it(own_container: str) -> None:
    """Started as the user without the launcher, the kernel moves itself into the v1 hierarchies but cannot
    enter cgroup2 (a move needs write access to the common ancestor): the attach fails, and says why."""
    with user_kernel(OWN_USER, own_container) as k:  # setpriv only: no delegate --run
        with open(f"/proc/{k.pid}/cgroup") as fh:
            cgroups = fh.read()
        assert f":memory:/lxc-kernel/{OWN_USER}\n" in cgroups  # moved itself in where it could
        r = k.execute("echo hi")
        assert r.status == "error" and r.errors[0]["ename"] == "ConfigError"
        assert "outside its user's delegated cgroups in unified" in r.errors[0]["evalue"]
        assert "python3 -m lxc_kernel.delegate USER --run -- jupyter lab" in r.errors[0]["evalue"]


@pytest.mark.timeout(120)
def test_grant_and_revoke(sudo_containers: tuple[str, str]) -> None:
    """grant writes a rule visudo accepts (0440) that lets the user run the helper at once; revoke takes it
    back, and the user is refused by sudo again (no prompt)."""
    grant = [sys.executable, "-m", "lxc_kernel.sudo"]
    env = {**os.environ, "PYTHONPATH": REPO}
    try:
        for bad in (["grant", "no-such-user-x", "--containers", "a*"], ["grant", NORULE_USER, "--containers", "a b"],
                    ["grant", NORULE_USER, "--containers", "[ab]"], ["grant", "%no-such-group-x", "--containers", "a"]):
            r = subprocess.run([*grant, *bad], capture_output=True, text=True, env=env, timeout=30)
            assert r.returncode == 2 and r.stderr.startswith("error: "), (bad, r.stderr)
        r = subprocess.run([*grant, "grant", NORULE_USER, "--containers", f"{SUDO_CT},other-*"], capture_output=True,
                           text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        path = f"/etc/sudoers.d/lxc-kernel-u-{NORULE_USER}"
        assert oct(os.stat(path).st_mode & 0o777) == "0o440"
        assert subprocess.run(["visudo", "-cf", path], capture_output=True).returncode == 0
        ok = helper(NORULE_USER, "lxc-info", "-n", SUDO_CT, "-s", "-H")
        assert ok.returncode == 0 and ok.stdout.strip() == "RUNNING", ok.stderr
        assert f"allow {NORULE_USER} {SUDO_CT},other-*" in subprocess.run(
            [*grant, "show"], capture_output=True, text=True, env=env, timeout=30).stdout
    finally:
        r = subprocess.run([*grant, "revoke", NORULE_USER], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "removed" in r.stdout
    refused = helper(NORULE_USER, "lxc-info", "-n", SUDO_CT, "-s", "-H")
    assert refused.returncode != 0 and "password is required" in refused.stderr
    assert os.path.exists(SUDO_HELPER)  # other users are still granted
