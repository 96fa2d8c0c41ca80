#!/usr/bin/env python3
"""Completion latency through jupyter_client (issue 12), against the bash and the busybox test containers.

Prints ONE JSON object on stdout (progress goes to stderr)::

    python3 benches/complete.py [--bash lxck-test-bash] [--sh lxck-test-sh] [--reps 60] [--first-loads 10]

Figures, milliseconds from ``kc.complete`` to the ``complete_reply`` (the frontend's wait):

* ``cases``: per container and per request (a magic name, answered without the shell: the messaging
  floor; a command word, a variable, the first-word fallback to file
  names, file names after a command, a ``complete -F`` function and a ``complete -W`` list defined in a
  cell, ``git chec`` once its spec is loaded), ``--reps`` round trips each after one warm-up; median, p95,
  max. On bash twice: ``bash_no_loader`` in a session where bash-completion is never loaded (the cell sets
  ``__lxck_bc=1``, the kernel's own "already tried" mark, before the first completion: what a container
  without bash-completion sees) and ``bash`` with it (every command then has a spec: ``_minimal``,
  ``_longopt``..., as in a terminal).
* ``first_load``: ``--first-loads`` fresh kernels on the bash container; after one ``true`` cell (the
  shell is attached), the first ``git chec`` (defines the kernel's helpers, sources bash-completion,
  loads git's spec through ``_completion_loader``, runs it), then the first ``systemctl sta`` (loads one
  more spec, bash-completion already in).
* ``targets``: p95 without a loader <= 10 ms (every case of ``sh`` and ``bash_no_loader``), and the first
  load of a bash-completion spec < 100 ms (p95 of ``first_load.git_chec``).

The exit status is 0 whenever the run completed, whatever the figures; 1 when it could not run. Every
kernel is shut down in a ``finally`` (killed by its manager if it does not go), the temporary kernelspec
prefix is removed, and so is the scratch directory made in each container.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from jupyter_client.manager import KernelManager

SCRATCH = "/tmp/lxck-bench-complete"
SETUP = (
    f"rm -rf {SCRATCH}; mkdir -p {SCRATCH}/sub && cd {SCRATCH} && touch alpha.txt abc 'a file'"
    " && myvar=1"
)
BASH_SETUP = (
    "_lxck_f() { COMPREPLY=($(compgen -W 'one two three' -- \"$2\")); }; complete -F _lxck_f fcmd;"
    " complete -W 'alpha beta gamma' wcmd"
)
# (label, code, a match that must be there): each request is checked, a wrong answer is reported.
CASES: list[tuple[str, str, str]] = [
    ("floor_magic_no_shell", "%lx", "%lxc"),  # answered without the shell: Jupyter's and the kernel's share
    ("command", "ech", "echo"),
    ("variable", "echo $myv", "$myvar"),
    ("first_word_files", "alp", "alpha.txt"),
    ("argument_files", "cat alp", "alpha.txt"),
    ("argument_dir", "cd su", "sub/"),
]
BASH_CASES: list[tuple[str, str, str]] = [
    ("complete_F", "fcmd t", "two"),
    ("complete_W", "wcmd b", "beta"),
]
LOADED_CASES: list[tuple[str, str, str]] = [("git_chec_loaded", "git chec", "checkout")]
TARGET_NO_LOADER_P95_MS = 10.0
TARGET_FIRST_LOAD_MS = 100.0


def log(msg: str) -> None:
    print(f"[complete-bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median": round(statistics.median(ms), 2), "p95": round(pct(ms, 0.95), 2),
            "max": round(max(ms), 2), "min": round(min(ms), 2)}


class Kernel:
    """One kernel from the temporary kernelspec, with a blocking client."""

    def __init__(self, name: str) -> None:
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 60) -> str:
        msg_id = self.kc.execute(code)
        out: list[str] = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {code!r}: {reply['content']}")
        return "".join(out)

    def complete(self, code: str) -> tuple[float, list[str]]:
        """Milliseconds to the reply, and the matches."""
        t0 = time.perf_counter()
        msg_id = self.kc.complete(code, len(code))
        while True:
            msg = self.kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        return (time.perf_counter() - t0) * 1000, msg["content"]["matches"]

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        try:
            self.km.shutdown_kernel(now=False)
        except Exception:
            with contextlib.suppress(Exception):
                self.km.shutdown_kernel(now=True)


@contextlib.contextmanager
def kernelspecs(containers: dict[str, str]) -> Iterator[dict[str, str]]:
    """A kernelspec per container, installed by the project's install CLI into a temporary prefix."""
    prefix = tempfile.mkdtemp(prefix="lxck-bench-complete-")
    try:
        names = {}
        for kind, container in containers.items():
            name = f"lxck-bench-complete-{kind}"
            subprocess.run([sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", name,
                            "--container", container], check=True, capture_output=True)
            names[kind] = name
        os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
        yield names
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def measure(kernel: Kernel, cases: list[tuple[str, str, str]], reps: int) -> tuple[dict[str, Any], list[str]]:
    results: dict[str, Any] = {}
    wrong: list[str] = []
    for label, code, expected in cases:
        kernel.complete(code)  # warm-up (the first one defines the helpers / loads what it loads)
        times = []
        for _ in range(reps):
            ms, matches = kernel.complete(code)
            times.append(ms)
            if expected not in matches:
                wrong.append(f"{code!r}: {matches[:5]}")
        results[label] = {"code": code, **summary(times)}
    return results, wrong


def bench_cases(spec: str, kind: str, reps: int, no_loader: bool) -> dict[str, Any]:
    kernel = Kernel(spec)
    try:
        setup = SETUP + ("; __lxck_bc=1" if no_loader else "")
        if kind == "bash":
            setup += "; " + BASH_SETUP
        kernel.execute(setup)
        cases = CASES + (BASH_CASES if kind == "bash" else []) + (LOADED_CASES if kind == "bash" and not no_loader
                                                                    else [])
        results, wrong = measure(kernel, cases, reps)
        if kind == "bash":
            loaded = kernel.execute("declare -F _completion_loader >/dev/null && echo yes || echo no").strip()
            results["bash_completion_loaded"] = loaded == "yes"
        all_ms = [v["p95"] for k, v in results.items() if isinstance(v, dict) and "p95" in v]
        return {"cases": results, "worst_case_p95": max(all_ms) if all_ms else None, "wrong_answers": wrong[:10],
                "n_wrong": len(wrong)}
    finally:
        with contextlib.suppress(Exception):
            kernel.execute(f"cd /; rm -rf {SCRATCH}")
        kernel.shutdown()


def bench_first_load(spec: str, samples: int) -> dict[str, Any]:
    git, systemctl, wrong = [], [], []
    for i in range(samples):
        kernel = Kernel(spec)
        try:
            kernel.execute("true")  # attach the shell: the figure is the completion, not the attach
            ms, matches = kernel.complete("git chec")
            git.append(ms)
            if "checkout" not in matches:
                wrong.append(f"git chec: {matches[:5]}")
            ms, matches = kernel.complete("systemctl sta")
            systemctl.append(ms)
            if "start" not in matches:
                wrong.append(f"systemctl sta: {matches[:5]}")
        finally:
            kernel.shutdown()
        log(f"first load {i + 1}/{samples}: git chec {git[-1]:.1f} ms, systemctl sta {systemctl[-1]:.1f} ms")
    return {"git_chec": summary(git), "systemctl_sta": summary(systemctl), "wrong_answers": wrong}


def host_info(containers: dict[str, str]) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().split("\n")[0]
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "containers": containers, "nproc": os.cpu_count(), "python": platform.python_version(),
        "lxc": version(["lxc-info", "--version"]), "loadavg": os.getloadavg(),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bash_completion_on_host": os.path.exists("/usr/share/bash-completion/bash_completion"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bash", default=os.environ.get("LXCK_TEST_BASH", "lxck-test-bash"))
    parser.add_argument("--sh", default=os.environ.get("LXCK_TEST_SH", "lxck-test-sh"))
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--first-loads", type=int, default=10)
    args = parser.parse_args()
    containers = {"bash": args.bash, "sh": args.sh}
    for container in containers.values():
        state = subprocess.run(["lxc-info", "-s", "-H", "-n", container], capture_output=True, text=True).stdout
        if state.strip() != "RUNNING":
            log(f"container {container} is not running ({state.strip() or 'missing'}): "
                f"python3 -m lxc_kernel.provision {container} --kind ...")
            return 1
    result: dict[str, Any] = {"host": host_info(containers), "unit": "ms"}
    with kernelspecs(containers) as specs:
        for label, kind, no_loader in (("sh", "sh", True), ("bash_no_loader", "bash", True), ("bash", "bash", False)):
            log(f"{label}: {args.reps} round trips per case")
            try:
                result[label] = bench_cases(specs[kind], kind, args.reps, no_loader)
            except Exception as exc:
                result[label] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"first loads: {args.first_loads} fresh kernels")
        try:
            result["first_load"] = bench_first_load(specs["bash"], args.first_loads)
        except Exception as exc:
            result["first_load"] = {"error": f"{type(exc).__name__}: {exc}"}
    no_loader = [result[k].get("worst_case_p95") for k in ("sh", "bash_no_loader")]
    first = result["first_load"].get("git_chec", {}).get("p95")
    result["targets"] = {
        "p95_without_loader": {"limit": TARGET_NO_LOADER_P95_MS,
                               "worst": max((x for x in no_loader if x is not None), default=None),
                               "met": all(x is not None and x <= TARGET_NO_LOADER_P95_MS for x in no_loader)},
        "first_load_of_a_spec": {"limit": TARGET_FIRST_LOAD_MS, "p95": first,
                                 "met": first is not None and first < TARGET_FIRST_LOAD_MS},
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
