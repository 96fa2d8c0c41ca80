"""A non-root user in group `incus` reaches an instance through incus-user, without sudo: the session runs as
that user (its own process, its own interpreter), in the user's restricted project, and leaves nothing behind.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import incus_support
import nbformat
import psutil
import pytest

pytestmark = pytest.mark.timeout(180)

USER = os.environ.get("LXCK_INCUS_USER", "lxck-uincus")
# An interpreter the user can run with the kernel's dependencies: root's may live under /root (0700).
PYTHON = os.environ.get("LXCK_USER_PYTHON", "/opt/lxc-kernel/venv/bin/python3")
NAME = incus_support.PREFIX + "u"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
from lxc_kernel.attach import AttachOptions
from lxc_kernel.exec_transport import ExecTransport
from lxc_kernel.session import ShellSession

t = ExecTransport(AttachOptions(sys.argv[1], env=(("TOKEN", "not-on-argv"),)))
s = ShellSession(t, setup=["cd"])
info = s.start()
out = []
r = s.run("echo $((6*7)) $TOKEN; echo err >&2; sleep 300 & sleep 301 &", lambda st, x: out.append([st, x]))
# A silent cell: the transport's liveness check (state queries in the user's project) runs as the user.
quiet = s.run("sleep 4.5; echo quiet", lambda st, x: out.append([st, x]))
assert quiet.status == 0, quiet
print(json.dumps({"status": r.status, "out": out, "host_pids": t.capabilities.host_pids,
                  "shell_host_pid": s.shell_host_pid, "pid": info.pid}))
s.close()
"""


def as_user(*argv: str, timeout: float = 120, env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    home = pwd.getpwnam(USER).pw_dir
    return subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={pwd.getpwnam(USER).pw_gid}", "--init-groups", "--",
         "env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin", f"PYTHONPATH={REPO}", *env, *argv],
        capture_output=True, text=True, timeout=timeout, cwd="/",
    )


@pytest.fixture
def user_instance() -> Iterator[str]:
    incus_support.require_incus()
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER}: run .ci/setup-incus")
    if USER not in grp.getgrnam("incus").gr_mem:
        pytest.skip(f"{USER} is not in group incus: run .ci/setup-incus")
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"no interpreter {USER} can run ({PYTHON}): run .ci/setup-users or set LXCK_USER_PYTHON")
    project = f"user-{entry.pw_uid}"
    as_user("incus", "delete", "--force", NAME)
    made = as_user("incus", "launch", "lxck-busybox", NAME)
    assert made.returncode == 0, made.stderr
    yield project
    as_user("incus", "delete", "--force", NAME)


def test_non_root_user_through_incus_user(user_instance: str) -> None:
    res = as_user(PYTHON, "-c", SCRIPT, NAME)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["status"] == 0
    assert ["stdout", "42 not-on-argv\n"] in report["out"] and ["stderr", "err\n"] in report["out"]
    # Not root: the host cannot read the instance's syscall and fd files, so input detection runs inside.
    assert report["host_pids"] is False and report["shell_host_pid"] is None
    # The instance lives in the user's restricted project, and nothing of the session is left in it.
    res = incus_support.incus("exec", "--project", user_instance, NAME, "-T", "--", "/bin/sh", "-c",
                              'for f in /proc/[0-9]*/cmdline; do [ "${f%/cmdline}" = /proc/$$ ] || '
                              '{ tr "\\0" " " < "$f"; echo; }; done 2>/dev/null')
    left = [line.strip() for line in res.stdout.splitlines() if line.strip() not in ("", "init", "/sbin/init")]
    assert not left, left


# -- a notebook through nbclient, as the user ------------------------------------------------------------

# Run by the user's interpreter: execute a notebook with nbclient, save it (also when a cell fails), and let a
# failing cell fail the run, as a CI job would.
NBCLIENT = r"""
import sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

path, kernel_name, out = sys.argv[1:4]
nb = nbformat.read(path, as_version=4)
try:
    NotebookClient(nb, kernel_name=kernel_name, timeout=60, startup_timeout=60).execute()
finally:
    nbformat.write(nb, out)
"""

CELLS = [
    "echo $((6*7)); echo to-stderr >&2",
    "%lxc status",
    "cd /tmp && lxck_x=5",
    'echo "x=$lxck_x in $PWD as $(id -u)"',
]


def _notebook(path: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "lxck-t9f-user", "display_name": "lxck-t9f-user", "language": "bash"}
    nbformat.write(nb, path)


def _texts(path: str) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return ["".join(o.get("text", "") or o.get("evalue", "") for o in c.get("outputs", [])) for c in nb.cells]


def _streams(path: str, index: int) -> dict[str, str]:
    """One cell's stdout and stderr apart: they travel on separate channels, so their order in the notebook is
    whichever arrived first (stderr came first in one full run under load)."""
    cell = nbformat.read(path, as_version=4).cells[index]
    out: dict[str, str] = {"stdout": "", "stderr": ""}
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out[o["name"]] += o["text"]
    return out


def _kernels_of_user() -> list[str]:
    uid = pwd.getpwnam(USER).pw_uid
    return [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["uids", "cmdline"])
            if p.info["uids"] and p.info["uids"].real == uid]


def test_non_root_user_runs_a_notebook_through_nbclient(user_instance: str) -> None:
    """The user installs a kernelspec (--backend incus, the instance in its own project) and runs notebooks with
    nbclient: outputs, ``%lxc status``, state kept between cells; a failing cell fails the run; nothing is left."""
    home = tempfile.mkdtemp(prefix="lxck-t9f-user-")
    try:
        os.chown(home, pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid)
        os.chmod(home, 0o700)
        env = (f"JUPYTER_PATH={home}/share/jupyter", f"JUPYTER_RUNTIME_DIR={home}/runtime",
               f"JUPYTER_DATA_DIR={home}/data", f"JUPYTER_CONFIG_DIR={home}/config")
        res = as_user(PYTHON, "-m", "lxc_kernel.install", "--prefix", home, "--name", "lxck-t9f-user",
                      "--backend", "incus", "--container", NAME, env=env)
        assert res.returncode == 0, res.stderr
        with open(f"{home}/share/jupyter/kernels/lxck-t9f-user/kernel.json") as fh:
            assert json.load(fh)["argv"][0] == PYTHON
        good, bad = f"{home}/good.ipynb", f"{home}/bad.ipynb"
        _notebook(good, CELLS)
        _notebook(bad, [*CELLS[:1], "echo before; false", "echo not-reached"])
        for path in (good, bad):
            os.chown(path, pwd.getpwnam(USER).pw_uid, -1)

        res = as_user(PYTHON, "-c", NBCLIENT, good, "lxck-t9f-user", good, env=env, timeout=150)
        assert res.returncode == 0, res.stderr[-3000:]
        texts = _texts(good)
        # The first cell carries the kernel's one-time notice that it is not root (input detection inside).
        streams = _streams(good, 0)
        assert streams["stdout"] == "42\n" and streams["stderr"].endswith("to-stderr\n"), streams
        assert f"runs as {USER}, not root" in texts[0], texts
        assert "through the incus daemon" in texts[0], texts
        assert f"container {NAME}: RUNNING" in texts[1], texts
        assert texts[3] == "x=5 in /tmp as 0\n", texts

        res = as_user(PYTHON, "-c", NBCLIENT, bad, "lxck-t9f-user", bad, env=env, timeout=150)
        assert res.returncode != 0 and "CellExecutionError" in res.stderr, (res.returncode, res.stderr[-3000:])
        texts = _texts(bad)
        streams = _streams(bad, 0)
        assert streams["stdout"] == "42\n" and streams["stderr"].endswith("to-stderr\n"), streams
        assert "before" in texts[1] and texts[2] == "", texts
        left = [c for c in _kernels_of_user() if "lxc_kernel" in c or "incus" in c]
        assert not left, left
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
