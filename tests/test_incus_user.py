"""A non-root user in group `incus` reaches an instance through incus-user, without sudo: the session runs as
that user (its own process, its own interpreter), in the user's restricted project, and leaves nothing behind.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import incus_support
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


def as_user(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    home = pwd.getpwnam(USER).pw_dir
    return subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={pwd.getpwnam(USER).pw_gid}", "--init-groups", "--",
         "env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin", f"PYTHONPATH={REPO}", *argv],
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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
