#!/usr/bin/env python3
"""Issue 11 figures: `%%on` over many busybox containers, through jupyter_client. Prints ONE JSON object.

    python3 benches/fanout.py [--n 50] [--rounds 20] [--plain lxck-test-sh]

It makes N busybox containers ``lxck-t11-bNN`` (and destroys them at the end, whatever happens), installs
a kernelspec into a temporary prefix, and measures, wall-clock from execute_request to the reply with
every IOPub message of the cell read (the time a frontend waits):

* ``cold``: the first ``%%on lxck-t11-b* / hostname`` of a kernel (lxc-ls, N shells opened, run), once
  on a fresh kernel and then again after ``%on close`` (the same work), ``--cold`` times in all;
* ``warm``: the same cell again, ``--rounds`` times, with the glob (one lxc-ls per cell) and with the
  names written out; every block is checked (status ok, output = its hostname);
* ``per_target``: warm ``%%on`` of ``true`` over N, one target, and N targets; the plain single-container
  ``true`` cell beside it; the per-target overhead is (warm N - warm 1) / (N - 1);
* ``idle``: CPU seconds of the kernel, its watchdog and the shell sessions over ``--idle`` seconds with N
  sessions open and no cell running; the kernel's RSS, descriptors and process count then; ``running``:
  the same over 4 s while every target runs ``sleep 6``;
* ``close_idle``: ``%on close`` of the N idle sessions, and ``reopen``: the next cell opening them again;
* ``shutdown``: shutdown_kernel(now=False) while a ``%%on`` of ``sleep 100`` runs on all N: how long,
  the kernel's exit status, and how many of its processes were left (by PID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psutil

PREFIX = "lxck-t11-b"
KERNEL_NAME = "lxck-t11-bench"


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": round(statistics.median(ordered), 4),
        "p95": round(ordered[min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1)], 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
    }


class Kernel:
    def __init__(self) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name=KERNEL_NAME)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.pid: int = self.km.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 120) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """(seconds to the reply, the reply's content, the cell's IOPub messages)."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        messages = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            messages.append(msg)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return time.perf_counter() - t0, reply["content"], messages

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def blocks(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m["msg_type"] in ("display_data", "update_display_data"):
            display_id = m["content"].get("transient", {}).get("display_id", "")
            if display_id.startswith("lxck-on-"):
                last[display_id] = m["content"]
    return {c["metadata"]["lxc_kernel"]["target"]: c for c in last.values()}


def check_hostname(names: list[str], content: dict[str, Any], messages: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a `%%on ... hostname` cell (empty: every block ok and exact)."""
    problems = [] if content["status"] == "ok" else [f"reply {content.get('ename')}: {content.get('evalue')}"]
    got = blocks(messages)
    if list(got) != names:
        problems.append(f"blocks for {len(got)} targets, not {len(names)}")
    for name, block in got.items():
        status = block["metadata"]["lxc_kernel"]["status"]
        text = block["data"]["text/plain"].split("\n", 1)[1]
        if status != "ok" or text != f"{name}\n":
            problems.append(f"{name}: {status} {text[:80]!r}")
    return problems


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def idle_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """CPU seconds over ``seconds`` with no cell running: the kernel process itself (ipykernel's own
    threads), the watchdog, and every shell session (lxc-attach and everything under it)."""
    kernel = psutil.Process(pid)
    groups: dict[str, list[psutil.Process]] = {"kernel": [kernel], "watchdog": [], "sessions": []}
    for child in kernel.children():
        with contextlib.suppress(psutil.Error):
            key = "watchdog" if "lxc_kernel.watchdog" in " ".join(child.cmdline()) else "sessions"
            groups[key] += [child, *child.children(recursive=True)]
    before = {key: cpu_seconds(procs) for key, procs in groups.items()}
    time.sleep(seconds)
    return {
        "seconds": seconds,
        **{f"cpu_s_{key}": round(cpu_seconds(procs) - before[key], 4) for key, procs in groups.items()},
        "session_processes": len(groups["sessions"]),
    }


@contextlib.contextmanager
def containers(n: int) -> Iterator[list[str]]:
    from lxc_kernel.provision import provision

    names = [f"{PREFIX}{i:02d}" for i in range(n)]
    try:
        t0 = time.perf_counter()
        for name in names:
            provision(name, "busybox", start=True)
        log(f"{n} busybox containers in {time.perf_counter() - t0:.1f} s")
        yield names
    finally:
        for name in names:
            subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True, timeout=120)
        log("containers destroyed")


def install_spec(prefix: str, plain: str) -> str:
    subprocess.run([sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", KERNEL_NAME,
                    "--container", plain], check=True, capture_output=True, timeout=60)
    return os.path.join(prefix, "share", "jupyter")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="containers (default 50, as issue 11 asks)")
    p.add_argument("--rounds", type=int, default=20, help="warm cells per figure")
    p.add_argument("--cold", type=int, default=5, help="cold cells (first use, then after %%on close)")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    p.add_argument("--plain", default="lxck-test-sh", help="the kernel's own container (plain cells)")
    args = p.parse_args()
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "n": args.n,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    glob = f"{PREFIX}*"
    with tempfile.TemporaryDirectory(prefix="lxck-t11-bench-") as tmp, containers(args.n) as names:
        os.environ["JUPYTER_PATH"] = install_spec(tmp, args.plain)
        listed = " ".join(names)
        k = Kernel()
        try:
            k.execute("true")  # the plain shell is attached
            out["idle_before"] = {**idle_cpu(k.pid, args.idle), "kernel_fds": psutil.Process(k.pid).num_fds()}
            log(f"idle before any %%on: {out['idle_before']}")
            # -- cold: the first use of N targets ---------------------------------------------------------
            cold, problems = [], []
            for i in range(args.cold):
                if i:
                    k.execute("%on close")
                seconds, content, messages = k.execute(f"%%on {glob}\nhostname")
                cold.append(seconds)
                problems += check_hostname(names, content, messages)
            out["cold"] = {"seconds": [round(s, 4) for s in cold], **stats(cold), "problems": problems[:10],
                           "target_s": 5.0}
            log(f"cold: {stats(cold)}")
            # -- warm -------------------------------------------------------------------------------------
            for label, code in (("warm_glob", f"%%on {glob}\nhostname"), ("warm_names", f"%%on {listed}\nhostname")):
                times, problems = [], []
                for _ in range(args.rounds):
                    seconds, content, messages = k.execute(code)
                    times.append(seconds)
                    problems += check_hostname(names, content, messages)
                out[label] = {**stats(times), "problems": problems[:10], "target_s": 0.5}
                log(f"{label}: {stats(times)}")
            # -- per target overhead ----------------------------------------------------------------------
            plain = [k.execute("true")[0] for _ in range(args.rounds * 2)]
            one = [k.execute(f"%%on {names[0]}\ntrue")[0] for _ in range(args.rounds)]
            many = [k.execute(f"%%on {listed}\ntrue")[0] for _ in range(args.rounds)]
            per = (statistics.median(many) - statistics.median(one)) / (args.n - 1)
            out["per_target"] = {
                "plain_true_cell": stats(plain),
                "on_1_true": stats(one),
                f"on_{args.n}_true": stats(many),
                "per_target_s": round(per, 5),
                "per_target_vs_plain_true": round(per / statistics.median(plain), 3),
                "on_1_minus_plain_s": round(statistics.median(one) - statistics.median(plain), 5),
            }
            log(f"per target: {out['per_target']}")
            # -- idle: N sessions open, no cell ----------------------------------------------------------
            kernel = psutil.Process(k.pid)
            out["idle"] = {
                **idle_cpu(k.pid, args.idle),
                "kernel_rss_mb": round(kernel.memory_info().rss / 2**20, 1),
                "kernel_fds": kernel.num_fds(),
                "kernel_threads": kernel.num_threads(),
            }
            log(f"idle: {out['idle']}")
            # -- %on close of N idle sessions, and opening them again -----------------------------------
            seconds, content, _ = k.execute("%on close")
            out["close_idle"] = {"seconds": round(seconds, 3), "status": content["status"]}
            seconds, content, messages = k.execute(f"%%on {listed}\nhostname")
            out["reopen"] = {"seconds": round(seconds, 3), "problems": check_hostname(names, content, messages)[:5]}
            log(f"close: {out['close_idle']}, reopen: {out['reopen']}")
            # -- a long cell: what the kernel spends while N targets sleep -------------------------------
            msg_id = k.kc.execute(f"%%on {listed}\nsleep 6")
            time.sleep(1.0)  # every target is in its sleep (not a measurement)
            out["running"] = {**idle_cpu(k.pid, 4.0), "cell": "sleep 6 on every target"}
            while True:
                msg = k.kc.get_iopub_msg(timeout=60)
                if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    break
            log(f"running: {out['running']}")
            # -- shutdown while a %%on runs everywhere ----------------------------------------------------
            k.kc.execute(f"%%on {listed}\necho started; sleep 100")
            time.sleep(1.0)  # the cell reaches every shell (not a measurement)
            pids = [proc.pid for proc in tree(k.pid)[1:]]
            proc = k.km.provisioner.process  # type: ignore[union-attr]
            t0 = time.perf_counter()
            k.shutdown()
            took = time.perf_counter() - t0
            deadline = time.monotonic() + 10
            while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
            out["shutdown"] = {"seconds": round(took, 3), "exit_status": proc.poll(),
                               "processes_before": len(pids), "left_after": len(left)}
            log(f"shutdown: {out['shutdown']}")
        finally:
            with contextlib.suppress(Exception):
                if k.km.is_alive():
                    k.shutdown()
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["targets_met"] = {
        "cold_within_5s": out["cold"]["max"] <= 5.0,
        "warm_within_0.5s_median": out["warm_glob"]["median"] <= 0.5,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
