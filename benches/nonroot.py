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
print(" ".join(f"{t:.3f}" for t in times))
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
        loops = {
            "root": lambda n: subprocess.run([py, "-c", CALL_LOOP, str(n), *info], capture_output=True, text=True),
            "root_through_helper_without_sudo": lambda n: subprocess.run(
                [py, "-c", CALL_LOOP, str(n), SUDO_HELPER, *info], capture_output=True, text=True),
            "sudo_helper": lambda n: as_user(SUDO_USER, py, "-c", CALL_LOOP, str(n), "sudo", "-n", SUDO_HELPER, *info),
            "sudo_helper_refused": lambda n: as_user(
                SUDO_USER, py, "-c", CALL_LOOP.replace("check=True", "check=False"), str(n), "sudo", "-n",
                SUDO_HELPER, "lxc-info", "-n", "lxck-test-sh"),
            "own_user": lambda n: as_owner(py, "-c", CALL_LOOP, str(n), "lxc-info", "-n", own_ct, "-s", "-H"),
        }
        samples: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(5):  # interleaved rounds: the machine's load drifts
            for name, loop in loops.items():
                samples[name] += [float(x) for x in loop(ns.calls // 5).stdout.split()]
        out["lxc_info_call_ms"] = {name: ms(values) for name, values in samples.items()}
        from conftest import install_test_kernelspecs

        install_test_kernelspecs()  # once, before the root kernel's start is timed
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
