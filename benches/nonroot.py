"""Non-root kernels against root: the sudo helper's cost per lxc-* call, kernel start and the `true` round trip.

Run as root after .ci/setup-users: ``PYTHONPATH=. python3 benches/nonroot.py [--cells 100]``. It makes
``lxck-t8n-b-*`` containers (root's busybox, and lxck-uown's own) and destroys them; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from test_nonroot import OWN_USER, SUDO_HELPER, SUDO_USER, UserKernel, as_owner, as_user

from lxc_kernel.provision import destroy_container, ensure_container

CALL_LOOP = """
import subprocess, sys, time, statistics
argv = sys.argv[2:]
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times.append((time.perf_counter() - t) * 1000)
print(statistics.median(times))
"""


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": round(statistics.median(values), 2), "p95": round(values[int(len(values) * 0.95) - 1], 2)}


def kernel_figures(start: callable, cells: int) -> dict[str, object]:  # type: ignore[valid-type]
    t = time.perf_counter()
    k = start()
    ready = time.perf_counter() - t
    try:
        t = time.perf_counter()
        first = k.execute("true", timeout=60)
        assert first.status == "ok", first.errors
        first_cell = time.perf_counter() - t
        times = []
        for _ in range(cells):
            t = time.perf_counter()
            r = k.execute("true", timeout=60)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status == "ok"
        return {"start_to_ready_s": round(ready, 2), "first_cell_s": round(first_cell, 2), "true_ms": ms(times)}
    finally:
        k.shutdown()


class RootKernel:
    def __init__(self, container: str) -> None:
        from conftest import start_kernel

        self._k = start_kernel(container)

    def execute(self, code: str, timeout: float = 60):  # type: ignore[no-untyped-def]
        return self._k.execute(code, timeout)

    def shutdown(self) -> None:
        self._k.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100)
    p.add_argument("--calls", type=int, default=50)
    ns = p.parse_args()
    run = secrets.token_hex(2)
    root_ct, own_ct = f"lxck-t8n-s-b{run}", f"lxck-t8n-b-{run}"
    ensure_container(root_ct, "busybox")
    assert as_owner("lxc-create", "-n", own_ct, "-t", "busybox", timeout=120).returncode == 0
    as_owner("sed", "-i", "s/^lxc.pty.max.*/lxc.pty.max = 64/", f"/home/{OWN_USER}/.local/share/lxc/{own_ct}/config")
    assert as_owner("lxc-start", "-n", own_ct, "-d").returncode == 0
    out: dict[str, object] = {"load": os.getloadavg()}
    try:
        info = ["lxc-info", "-n", root_ct, "-s", "-H"]
        py = "/usr/bin/python3"
        root = subprocess.run([py, "-c", CALL_LOOP, str(ns.calls), *info], capture_output=True, text=True)
        sudo = as_user(SUDO_USER, py, "-c", CALL_LOOP, str(ns.calls), "sudo", "-n", SUDO_HELPER, *info)
        refused = as_user(SUDO_USER, py, "-c", CALL_LOOP.replace("check=True", "check=False"), str(ns.calls),
                          "sudo", "-n", SUDO_HELPER, "lxc-info", "-n", "lxck-test-sh")
        own = as_owner(py, "-c", CALL_LOOP, str(ns.calls), "lxc-info", "-n", own_ct, "-s", "-H")
        out["lxc_info_call_ms"] = {
            "root": float(root.stdout), "sudo_helper": float(sudo.stdout), "sudo_refused": float(refused.stdout),
            "own_user": float(own.stdout),
        }
        out["kernel_root"] = kernel_figures(lambda: RootKernel(root_ct), ns.cells)
        out["kernel_sudo"] = kernel_figures(
            lambda: UserKernel(SUDO_USER, root_ct, "--LXCKernel.sudo=True"), ns.cells)
        out["kernel_own"] = kernel_figures(lambda: UserKernel(OWN_USER, own_ct, own=True), ns.cells)
    finally:
        destroy_container(root_ct)
        as_owner("lxc-stop", "-n", own_ct, "-k")
        as_owner("lxc-destroy", "-n", own_ct, "-f")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
