#!/usr/bin/env python3
"""Issue 7's "Done when" figures for hostile containers, through jupyter_client against a running container.

Prints ONE JSON object on stdout (progress goes to stderr)::

    python3 benches/hostile.py [--container NAME] [--quick] [--ref COMMIT]

* ``flood``: one line of 80 MB without a newline (``head -c N /dev/zero | tr '\\0' x``, output budget off), with
  ``allow_stdin`` true (what JupyterLab, Notebook and console send) and false, each in a fresh kernel so that
  its VmHWM is the peak of that case alone: seconds to the reply, characters received, stream messages,
  kernel peak RSS and kernel CPU seconds. Targets: peak <= 150 MB, time with stdin <= 1.5x without.
* ``reader_killed``: the container-side stderr reader (the ``cat`` holding the session's FIFO, found and killed
  from inside the container) is killed between cells; then a ``sleep 3`` cell: the kernel's CPU seconds for
  it (target <= 0.3 s), its wall time, and whether stderr still arrives afterwards; beside it the same cell's
  CPU with the reader intact.
* ``interrupt_with_stderr_writer``: a background job writes to stderr every 0.1 s; ``sleep 30`` is interrupted
  (``km.interrupt_kernel()``) after 1 s: seconds from the interrupt to the reply (target <= 2 s). Also
  ``%timeout 3`` with ``sleep 30``: seconds to the reply and the error name.
* ``token_theft``: three background jobs try to take the completion token (one reads its own fd 2 and writes
  it back, one reads its fd 2 and prints forged success markers, one does that reading the session's FIFO by
  path); then 100 cells ``sleep 0.2; (exit 7)``: how many were reported ``ok`` (forged; target 0) or
  otherwise wrong.
* ``stderr_eaten`` (extra): one job eats the session's stderr FIFO (so stderr end markers go missing) while
  another writes stderr every 0.1 s; ``true`` cells must still end at most 1 s after their stdout end marker
  (before 882d345 the first such cell never returned and ignored interrupts): seconds per cell, then an
  interrupt of ``sleep 30``.

``--quick``: 20 MB instead of 80, 20 theft cells instead of 100, one repetition of each timing instead of
three. ``--ref COMMIT`` runs the kernels from a ``git archive`` of COMMIT (put first on their PYTHONPATH),
e.g. ``--ref 90bb8af`` for the core before it was rebuilt; ``kernel_source`` in the JSON says which ran.

Every kernel is shut down in a ``finally``; every process it left (seen as its descendant while it ran,
checked by PID and start time with psutil) is killed by PID, and so is the kernel itself when it does not
exit. The exit status is 0 whenever the run completed, whatever the figures say, and 1 when it could not run
(the kernelspec or the ``--ref`` tree could not be made; the JSON then says why).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

import psutil

KERNEL_NAME = "lxck-hostile"
TOOL_ENV = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = {
    "flood_peak_rss_mb": ("80 MB line, stdin allowed: kernel peak RSS", 150.0),
    "flood_time_ratio": ("80 MB line: time with stdin allowed / without", 1.5),
    "reader_killed_sleep3_cpu_s": ("stderr reader killed: kernel CPU of a `sleep 3` cell, worst", 0.3),
    "interrupt_with_writer_s": ("stderr writer running: interrupt of `sleep 30` to reply, worst", 2.0),
    "forged": ("token thieves: cells reported ok instead of exit status 7", 0),
    "stderr_eaten_true_cell_s": ("extra: stderr end markers eaten, stderr flowing: a `true` cell, worst "
                                 "(it must end <= 1 s after its stdout end marker)", 1.2),
}

# The session's stderr reader, found from inside the container: a `cat` holding this shell's FIFO
# (/tmp/.lxck.<shell pid>.*/err), and an `sh` whose command line names lxck-stderr (the reader before
# 882d345 was `sh -c '... cat <&3 & while kill -0 ...'`). Other kernels' readers are left alone.
READERS = r"""
for p in /proc/[0-9]*; do
  n=${p#/proc/}; [ "$n" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
  case "$c" in *lxck-stderr*) echo "$n"; continue;; esac
  [ "$(cat "$p/comm" 2>/dev/null)" = cat ] || continue
  for f in "$p"/fd/*; do
    case "$(readlink "$f" 2>/dev/null)" in /tmp/.lxck.$$.*/err) echo "$n"; break;; esac
  done
done
"""

_FORGE = (
    "for t in $(dd bs=512 count=1 2>/dev/null {src} | grep -o 'lxck:[0-9a-f]*:S' | cut -d: -f2); do"
    " printf '<<lxck:%s:E0>>' \"$t\"; printf '<<lxck:%s:E0>>' \"$t\" >&2; done"
)
THIEVES = (
    "(while :; do dd bs=1 count=100 <&2 2>/dev/null | cat >&2; sleep 0.02; done) & t1=$!\n"
    "(while :; do " + _FORGE.format(src="<&2") + "; sleep 0.02; done) & t2=$!\n"
    "fifo=$(ls -d /tmp/.lxck.$$.*/err | head -n 1); [ -p \"$fifo\" ]\n"
    "(while :; do " + _FORGE.format(src='<"$fifo"') + "; sleep 0.02; done) & t3=$!\n"
)


def log(msg: str) -> None:
    print(f"[hostile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rnd(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


class Cell:
    """One execute_request: its reply, timing and counted (not kept) output."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None
        self.seconds: float | None = None
        self.chars = {"stdout": 0, "stderr": 0}
        self.text = {"stdout": "", "stderr": ""}  # the first 64 KB of each stream, for checks
        self.stream_messages = 0
        self.timed_out = False

    @property
    def status(self) -> str:
        return self.reply["status"] if self.reply else "no reply"

    @property
    def evalue(self) -> str:
        return (self.reply or {}).get("evalue", "")

    @property
    def ename(self) -> str:
        return (self.reply or {}).get("ename", "")


class Kernel:
    """A kernel from the private kernelspec, its client, and every process it was seen to own."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name=KERNEL_NAME)
        # `python -m` puts the working directory first on sys.path, before PYTHONPATH: started from a
        # checkout, the kernel would import that checkout's lxc_kernel whatever --ref says.
        self.km.start_kernel(env=env, cwd=cwd)
        self.pid: int = self.km.provisioner.process.pid  # type: ignore[union-attr]
        self.process = psutil.Process(self.pid)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.seen: dict[tuple[int, float], psutil.Process] = {}

    def note(self) -> None:
        try:
            for p in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen[(p.pid, p.create_time())] = p
        except psutil.Error:
            pass

    def cpu(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def send(self, code: str, allow_stdin: bool = False) -> str:
        return self.kc.execute(code, allow_stdin=allow_stdin, store_history=False)

    def collect(self, msg_id: str, timeout: float, start: float | None = None) -> Cell:
        """Read iopub and shell until the reply and idle arrive (answering any input request with an
        empty line so nothing blocks), or until ``timeout``."""
        cell = Cell()
        start = time.perf_counter() if start is None else start
        deadline = time.perf_counter() + timeout
        idle = False
        while cell.reply is None or not idle:
            if time.perf_counter() > deadline:
                cell.timed_out = True
                break
            with contextlib.suppress(queue.Empty):
                msg = self.kc.get_stdin_msg(timeout=0)
                if msg["msg_type"] == "input_request":
                    self.kc.input("")
            if cell.reply is None:
                with contextlib.suppress(queue.Empty):
                    msg = self.kc.get_shell_msg(timeout=0)
                    if msg["parent_header"].get("msg_id") == msg_id:
                        cell.reply = msg["content"]
                        cell.seconds = time.perf_counter() - start
            try:
                msg = self.kc.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                name, text = msg["content"]["name"], msg["content"]["text"]
                cell.stream_messages += 1
                cell.chars[name] = cell.chars.get(name, 0) + len(text)
                if len(cell.text[name]) < 65536:
                    cell.text[name] += text[: 65536 - len(cell.text[name])]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        self.note()
        return cell

    def run(self, code: str, timeout: float = 60, allow_stdin: bool = False) -> Cell:
        start = time.perf_counter()
        return self.collect(self.send(code, allow_stdin), timeout, start)

    def ok(self, code: str, timeout: float = 60) -> Cell:
        cell = self.run(code, timeout)
        if cell.status != "ok":
            raise RuntimeError(f"{code[:60]!r}: {cell.status} {cell.ename} {cell.evalue[:300]}")
        return cell

    def shutdown(self) -> list[str]:
        """Shut down cleanly, then kill by PID whatever is left: the kernel and every process it owned."""
        self.note()
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=False)
        procs = [*self.seen.values(), self.process]
        deadline = time.monotonic() + 3.0
        left = alive(procs)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = alive(procs)
        killed = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                killed.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
                p.kill()
        with contextlib.suppress(Exception):
            self.km.cleanup_resources()
        return killed


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


@contextlib.contextmanager
def kernel(env: dict[str, str], leftovers: list[str]) -> Iterator[Kernel]:
    # LXCK_HOSTILE_CWD carries the kernels' working directory alongside their environment, not into it.
    k = Kernel({k: v for k, v in env.items() if k != "LXCK_HOSTILE_CWD"}, env["LXCK_HOSTILE_CWD"])
    try:
        yield k
    finally:
        leftovers.extend(k.shutdown())


# -- the measurements --------------------------------------------------------------------------------


def bench_flood(env: dict[str, str], nbytes: int, leftovers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"bytes": nbytes}
    for allow_stdin in (True, False):
        key = "stdin_on" if allow_stdin else "stdin_off"
        log(f"flood: {nbytes / 1e6:g} MB without a newline, allow_stdin={allow_stdin}")
        with kernel(env, leftovers) as k:
            k.ok("%output off")
            k.ok("true")
            cpu0 = k.cpu()
            cell = k.run(f"head -c {nbytes} /dev/zero | tr '\\0' x", timeout=600, allow_stdin=allow_stdin)
            out[key] = {
                "status": cell.status,
                "seconds": rnd(cell.seconds),
                "chars": cell.chars["stdout"],
                "complete": cell.chars["stdout"] == nbytes,
                "stream_messages": cell.stream_messages,
                "kernel_peak_rss_mb": rnd(k.peak_rss_mb(), 1),
                "kernel_cpu_s": rnd(k.cpu() - cpu0),
            }
    on, off = out["stdin_on"]["seconds"], out["stdin_off"]["seconds"]
    out["time_ratio"] = rnd(on / off) if on and off else None
    return out


def kill_readers(k: Kernel, between_cells: bool) -> list[str]:
    """Kill this session's stderr reader from inside; [] when there is none (a kernel that never
    replaced the one killed before)."""
    pids = k.ok(READERS).text["stdout"].split()
    if not pids:
        return []
    if between_cells:
        k.ok(f"(sleep 0.3; kill -9 {' '.join(pids)}) >/dev/null 2>&1 &")
        time.sleep(1.0)
    else:
        k.ok(f"kill -9 {' '.join(pids)}")
    return pids


def bench_reader_killed(env: dict[str, str], reps: int, leftovers: list[str]) -> dict[str, Any]:
    log("reader_killed: the stderr reader killed between cells, then `sleep 3`")
    runs = []
    baseline: list[float] = []
    with kernel(env, leftovers) as k:
        k.ok("echo warm >&2")
        for _ in range(reps):  # the same cell with the reader intact: what a `sleep 3` costs anyway
            cpu0 = k.cpu()
            k.ok("sleep 3")
            baseline.append(rnd(k.cpu() - cpu0))
        for _ in range(reps):
            pids = kill_readers(k, between_cells=True)
            if not pids:
                runs.append({"killed": [], "note": "no stderr reader to kill: the killed one was not replaced"})
                break
            cpu0 = k.cpu()
            cell = k.run("sleep 3", timeout=60)
            used = k.cpu() - cpu0
            after = k.run("echo back >&2", timeout=30)
            runs.append({
                "killed": pids,
                "status": cell.status,
                "seconds": rnd(cell.seconds),
                "kernel_cpu_s": rnd(used),
                "stderr_after": after.text["stderr"],
            })
    measured = [r for r in runs if "kernel_cpu_s" in r]
    cpus = [r["kernel_cpu_s"] for r in measured if r["kernel_cpu_s"] is not None]
    return {"runs": runs, "kernel_cpu_s_max": max(cpus) if cpus else None, "reader_intact_kernel_cpu_s": baseline,
            "stderr_arrives_after": bool(measured) and len(measured) == len(runs)
            and all(r["stderr_after"].startswith("back") for r in measured)}


def bench_interrupt_with_writer(env: dict[str, str], reps: int, leftovers: list[str]) -> dict[str, Any]:
    log("interrupt_with_stderr_writer: `sleep 30` with a job writing stderr every 0.1 s")
    runs = []
    timeout_case: dict[str, Any] = {}
    with kernel(env, leftovers) as k:
        k.ok("(while :; do echo tick >&2; sleep 0.1; done) & ticker=$!")
        try:
            for _ in range(reps):
                msg_id = k.send("sleep 30")
                time.sleep(1.0)
                t0 = time.perf_counter()
                k.km.interrupt_kernel()
                cell = k.collect(msg_id, timeout=40, start=t0)
                runs.append({"seconds": rnd(cell.seconds), "ename": cell.ename, "status": cell.status})
                if cell.reply is None:
                    break  # the kernel is stuck; the rest would only wait too
            if runs and runs[-1]["status"] != "no reply":
                k.ok("%timeout 3")
                cell = k.run("sleep 30", timeout=40)
                timeout_case = {"seconds": rnd(cell.seconds), "ename": cell.ename, "status": cell.status}
                k.run("%timeout off")
        finally:
            with contextlib.suppress(Exception):
                k.run("kill -9 -- -$ticker $ticker 2>/dev/null; true", timeout=10)
    secs = [r["seconds"] for r in runs]
    worst = None if not secs or None in secs else max(secs)
    return {"runs": runs, "seconds_max": worst, "timeout_3s": timeout_case}


FIFO_EATER = (
    'fifo=$(ls -d /tmp/.lxck.$$.*/err | head -n 1); (while :; do dd bs=64k count=1 <"$fifo" >/dev/null 2>&1; done) &'
)


def bench_stderr_eaten(env: dict[str, str], cells: int, leftovers: list[str]) -> dict[str, Any]:
    log(f"stderr_eaten: {cells} `true` cells while one job eats the stderr FIFO and one writes stderr every 0.1 s")
    seconds: list[float] = []
    statuses: list[str] = []
    interrupt: dict[str, Any] = {}
    with kernel(env, leftovers) as k:
        k.ok("(while :; do echo tick >&2; sleep 0.1; done) & ticker=$!")
        try:
            started = k.run(f"{FIFO_EATER} eater=$!", timeout=30)
            statuses.append(started.status)  # this cell already runs with the eater
            for _ in range(cells if started.reply is not None else 0):
                cell = k.run("true", timeout=30)
                statuses.append(cell.status)
                if cell.reply is None:
                    break
                if cell.seconds is not None:
                    seconds.append(cell.seconds)
            if statuses and statuses[-1] != "no reply":
                msg_id = k.send("sleep 30")
                time.sleep(1.0)
                t0 = time.perf_counter()
                k.km.interrupt_kernel()
                cell = k.collect(msg_id, timeout=40, start=t0)
                interrupt = {"seconds": rnd(cell.seconds), "ename": cell.ename, "status": cell.status}
        finally:
            with contextlib.suppress(Exception):
                k.run("kill -9 -- -$ticker -$eater $ticker $eater 2>/dev/null; true", timeout=10)
    return {
        "cells": len(statuses),  # the cell that starts the eater, then the `true` cells
        "not_ok": sum(s != "ok" for s in statuses),
        "true_cell_s_median": rnd(statistics.median(seconds)) if seconds else None,
        "true_cell_s_max": rnd(max(seconds)) if seconds and len(seconds) == len(statuses) - 1 else None,
        "interrupt_sleep30": interrupt,
    }


def bench_theft(env: dict[str, str], cells: int, leftovers: list[str]) -> dict[str, Any]:
    log(f"token_theft: {cells} cells `sleep 0.2; (exit 7)` with three thieves")
    wrong: list[str] = []
    forged = 0
    seconds = []
    done = 0
    with kernel(env, leftovers) as k:
        k.ok(THIEVES)
        try:
            for _ in range(cells):
                cell = k.run("sleep 0.2; (exit 7)", timeout=30)
                done += 1
                if cell.seconds is not None:
                    seconds.append(cell.seconds)
                if cell.status == "ok":
                    forged += 1
                if cell.status != "error" or "exit status 7" not in cell.evalue:
                    wrong.append(f"{cell.status}: {cell.ename} {cell.evalue[:120]}")
                if cell.reply is None:
                    break
            thieves_alive = "yes" in k.run("kill -0 $t1 $t2 $t3 && echo yes", timeout=30).text["stdout"]
        finally:
            with contextlib.suppress(Exception):
                k.run("kill -9 -- -$t1 -$t2 -$t3 2>/dev/null; kill -9 $t1 $t2 $t3 2>/dev/null; true", timeout=10)
    return {
        "cells": done,
        "forged": forged,
        "wrong": len(wrong),
        "wrong_examples": wrong[:5],
        "thieves_alive_at_end": thieves_alive,
        "cell_seconds_median": rnd(statistics.median(seconds)) if seconds else None,
    }


# -- set-up --------------------------------------------------------------------------------------------


def container_info(name: str) -> dict[str, Any]:
    state = subprocess.run(["lxc-info", "-n", name, "-sH"], capture_output=True, text=True, env=TOOL_ENV,
                           timeout=30)
    shell = subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "/bin/sh", "-c",
                            "if command -v bash >/dev/null; then bash --version | head -n 1; else "
                            "readlink /bin/sh; fi"], capture_output=True, text=True, env=TOOL_ENV, timeout=30)
    return {"state": state.stdout.strip() or state.stderr.strip(), "shell": shell.stdout.strip()}


def install_spec(prefix: str, container: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", KERNEL_NAME,
         "--container", container],
        check=True, capture_output=True, cwd=REPO, timeout=60,
    )


def ref_tree(commit: str, into: str) -> str:
    """A clean copy of the package at ``commit`` (git archive), for the kernels' PYTHONPATH."""
    archive = subprocess.run(["git", "-C", REPO, "archive", commit, "lxc_kernel"], check=True,
                             capture_output=True, timeout=60).stdout
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True, timeout=60)
    return into


def tree_state() -> str:
    """HEAD of the working tree, and the lxc_kernel files that differ from it (others may be editing)."""
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "lxc_kernel"], capture_output=True,
                           text=True, timeout=30).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return f"HEAD {head}" + (f", uncommitted: {' '.join(changed)}" if changed else "")


def judge(result: dict[str, Any]) -> dict[str, Any]:
    flood = result.get("flood", {})
    figures = {
        "flood_peak_rss_mb": flood.get("stdin_on", {}).get("kernel_peak_rss_mb"),
        "flood_time_ratio": flood.get("time_ratio"),
        "reader_killed_sleep3_cpu_s": result.get("reader_killed", {}).get("kernel_cpu_s_max"),
        "interrupt_with_writer_s": result.get("interrupt_with_stderr_writer", {}).get("seconds_max"),
        "forged": result.get("token_theft", {}).get("forged"),
        "stderr_eaten_true_cell_s": result.get("stderr_eaten", {}).get("true_cell_s_max"),
    }
    out = {}
    for key, (what, limit) in TARGETS.items():
        value = figures[key]
        out[key] = {"what": what, "value": value, "limit": limit,
                    "pass": value is not None and value <= limit}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--container", default=os.environ.get("LXCK_TEST_BASH", "lxck-test-bash"))
    parser.add_argument("--quick", action="store_true", help="20 MB, 20 theft cells, one repetition")
    parser.add_argument("--ref", metavar="COMMIT", help="run the kernels from lxc_kernel at COMMIT")
    args = parser.parse_args(argv)

    flood_bytes = 20_000_000 if args.quick else 80_000_000
    theft_cells = 20 if args.quick else 100
    reps = 1 if args.quick else 3
    tmp = tempfile.mkdtemp(prefix="lxck-hostile-")
    status = 0
    leftovers: list[str] = []
    result: dict[str, Any] = {
        "host": {
            "container": args.container,
            **container_info(args.container),
            "nproc": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
        },
    }
    try:
        install_spec(os.path.join(tmp, "prefix"), args.container)
        env = {**os.environ, "JUPYTER_PATH": os.path.join(tmp, "prefix", "share", "jupyter")}
        os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]  # where the KernelManager looks for the spec
        env["LXCK_HOSTILE_CWD"] = tmp  # the kernels' working directory: no lxc_kernel in it
        if args.ref:
            src = ref_tree(args.ref, os.path.join(tmp, "ref"))
            env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
            env["LXCK_HOSTILE_CWD"] = src
            result["host"]["kernel_source"] = f"git archive {args.ref}"
        else:
            result["host"]["kernel_source"] = f"installed lxc_kernel (the working tree): {tree_state()}"
        for key, bench in (
            ("flood", lambda: bench_flood(env, flood_bytes, leftovers)),
            ("reader_killed", lambda: bench_reader_killed(env, reps, leftovers)),
            ("interrupt_with_stderr_writer", lambda: bench_interrupt_with_writer(env, reps, leftovers)),
            ("token_theft", lambda: bench_theft(env, theft_cells, leftovers)),
            ("stderr_eaten", lambda: bench_stderr_eaten(env, 5 if args.quick else 10, leftovers)),
        ):
            try:
                result[key] = bench()
            except Exception as exc:
                log(f"{key} failed: {exc}")
                result[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    except KeyboardInterrupt:
        result["interrupted"] = True
    except Exception as exc:  # the set-up failed: say so in the JSON, exit 1
        result["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["host"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["leftover_processes_killed"] = leftovers
    result["targets"] = judge(result)
    print(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
