"""The real kernel, through jupyter_client, with ``--LXCKernel.backend=incus`` (its shell behind
``ExecTransport``): cells, state, stderr, interrupt, a silent cell's liveness checks, and a shutdown that
leaves nothing in the instance or on the host."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import incus_support
import psutil
import pytest
from conftest import Kernel

pytestmark = pytest.mark.timeout(180)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = incus_support.PREFIX + "k"


@pytest.fixture(params=["lxck-busybox", "lxck-bash"], ids=["ash", "bash"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    incus_support.launch(NAME, request.param)
    prefix = tempfile.mkdtemp(prefix="lxck-t9i-specs-")
    spec_dir = os.path.join(prefix, "kernels", "lxck-t9i-incus")
    os.makedirs(spec_dir)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
        json.dump({"argv": [sys.executable, "-m", "lxc_kernel", "-f", "{connection_file}",
                            f"--LXCKernel.container={NAME}", "--LXCKernel.backend=incus"],
                   "display_name": "lxc (incus exec, test)", "language": "bash",
                   "env": {"PYTHONPATH": f"{REPO}:{os.path.join(REPO, 'tests')}"}}, fh)
    monkeypatch.setenv("JUPYTER_PATH", prefix)
    k = Kernel("lxck-t9i-incus")
    try:
        yield k
    finally:
        k.shutdown()
        incus_support.delete(NAME)


def test_cells_end_to_end(kernel: Kernel) -> None:
    assert kernel.execute("x=41; cd /tmp").status == "ok"
    r = kernel.execute("echo $((x+1)) $(pwd); echo oops >&2")
    assert (r.status, r.stream("stdout"), r.stream("stderr")) == ("ok", "42 /tmp\n", "oops\n")
    r = kernel.execute("false")
    assert r.status == "error"
    # A silent cell: the transport's liveness checks run at its health ticks and do not end it.
    r = kernel.execute("sleep 4; echo done", timeout=60)
    assert (r.status, r.stream("stdout")) == ("ok", "done\n")
    # Interrupt: the shell and its state survive.
    threading.Timer(1.0, kernel.km.interrupt_kernel).start()
    r = kernel.execute("sleep 30", timeout=60)
    assert r.status == "error" and r.errors and r.errors[0]["ename"] == "KeyboardInterrupt", r.reply
    assert kernel.execute("echo $x").stream("stdout") == "41\n"
    # Shutdown: no client process left on the host, no shell or job left in the instance.
    kernel.execute("sleep 300 &")
    children = psutil.Process(kernel.pid).children(recursive=True)
    assert children
    kernel.shutdown()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    deadline = time.monotonic() + 5
    left = ["?"]
    while left and time.monotonic() < deadline:
        left = [c for c in incus_support.processes(NAME) if c not in ("init", "/sbin/init")]
        time.sleep(0.2)
    assert not left, left
    kernel.shutdown = lambda: None  # type: ignore[method-assign]
