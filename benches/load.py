#!/usr/bin/env python3
"""Load test: many lxc-kernel kernels on ONE container, cells with stdin allowed, every output checked.

    python3 benches/load.py [--container NAME] [--kernels N] [--cells N] [--prompts N] [--seed S] [--quick]

It measures what issue 7 asks for: with N kernels busy on one container and ``allow_stdin`` true (as
JupyterLab, Notebook and console send it), how many ``input_request``s arrive for cells that read
nothing, how many outputs are wrong or belong to another kernel, how many cells hang, and whether a real
``read -p 'Name? '`` prompt is still detected (detected / tried).

One OS process per client: the script runs itself once per kernel in driver mode (``--driver``, internal).
Each driver starts its own kernel with ``jupyter_client.KernelManager`` from a kernelspec installed into a
private temporary prefix (``python3 -m lxc_kernel.install --prefix DIR --name lxck-load --container NAME``:
no zero-setup defaults), waits until every kernel is up, then runs its cells back to back and answers
every ``input_request`` so it never blocks (``""`` for a cell that reads nothing).

Output: ONE JSON object on stdout and a short markdown table on stderr (``--markdown``: the table on stdout
instead of the JSON; ``--out FILE`` writes the JSON to a file as well). Progress goes to stderr. The exit
status is 0 whenever the run completed, whatever the figures say; 1 when it could not run (container not
running, kernelspec install failed); 2 for bad arguments; 130 when interrupted (partial figures still printed).

The kernels run the installed ``lxc_kernel`` (an editable install: the working tree), or with ``--ref COMMIT`` a
clean ``git archive`` of that commit put first on their PYTHONPATH; ``kernel_source`` in the JSON says which.

Cleanup: every kernel is shut down in a ``finally`` of its driver, its leftover processes killed by PID
(psutil, which checks the PID was not reused); a driver that stops answering is killed by PID together
with its kernel's process tree; the temporary kernelspec prefix is removed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

KERNEL_NAME = "lxck-load"
TOOL_ENV = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOKEN_RE = re.compile(r"K(\d+)_")  # every value a driver puts in its shell carries K<driver id>_
QUICK = {"kernels": 6, "cells": 20, "prompts": 20}
FULL = {"kernels": 30, "cells": 100, "prompts": 100}
EXAMPLES = 10  # failure examples kept per kind, per driver and in the summary

# Non-prompt cell kinds and their weights. `ls` is the one issue 7 saw get an empty input_request;
# `sleep` is silent for longer than the kernel's 80 ms quiet window, so input detection runs during it.
KINDS = {"set": 14, "echo": 14, "ls": 20, "cd": 10, "pwd": 6, "arith": 10, "loop": 8, "stderr": 7,
         "sleep": 5, "file": 6}


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- small helpers ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rnd(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def summary(values: list[float], digits: int = 4) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), digits),
            "p95": round(pct(values, 95), digits), "max": round(max(values), digits)}


def clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + f"...(+{len(text) - n})"


def kill_tree(procs: list[Any]) -> list[str]:
    """SIGKILL these psutil.Process objects (psutil refuses a PID that was reused); names of the killed."""
    import psutil

    killed = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                name = f"{proc.pid}:{' '.join(proc.cmdline())[:100]}"
                proc.kill()
                killed.append(name)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return killed


def proc_snapshot(pid: int) -> list[dict[str, Any]]:
    """The kernel and its descendants: state, wait channel, system call, command (for hang reports)."""
    import psutil

    out = []
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [{"pid": pid, "gone": True}]
    for proc in procs:
        entry: dict[str, Any] = {"pid": proc.pid}
        with contextlib.suppress(Exception):
            entry["ppid"] = proc.ppid()
            entry["status"] = proc.status()
            entry["cmd"] = " ".join(proc.cmdline())[:160]
        for name in ("wchan", "syscall"):
            with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/{name}") as fh:
                entry[name] = fh.read().strip()[:80]
        out.append(entry)
    return out


# ===================================================================================================
# Driver mode: one kernel, one client, one OS process.
# ===================================================================================================
class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.id: int = args.driver
        self.args = args
        self.rng = random.Random(args.driver_seed)
        self.tag = f"K{self.id}_"
        self.dir = f"/tmp/lxck-load-{args.tag}-K{self.id}"
        self.km: Any = None
        self.kc: Any = None
        self.pid: int | None = None
        self.res: dict[str, Any] = {
            "id": self.id, "seed": args.driver_seed, "start_ok": False, "cells_run": 0, "latencies": [],
            "unrequested": 0, "unrequested_in_prompt_cells": 0, "unrequested_examples": [], "unrequested_timing": [],
            "wrong": 0, "wrong_examples": [], "cross_talk": 0, "cross_talk_examples": [],
            "prompts_tried": 0, "prompts_detected": 0, "prompts_answered": 0, "prompts_stdout_exact": 0,
            "prompts_requested_once": 0,
            "prompt_latencies": [], "prompt_failures": [], "hang": None, "kinds": {},
        }
        self.x: str | None = None  # what $x_<id> holds
        self.cwd: str | None = None  # the shell's working directory

    # -- events to the orchestrator on stdout, one JSON per line --
    def emit(self, event: str, **kw: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, "id": self.id, **kw}) + "\n")
        sys.stdout.flush()

    def dlog(self, msg: str) -> None:
        print(f"[driver {self.id} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- one cell, with every channel watched --
    def run_cell(self, code: str, answer: str | None = None) -> dict[str, Any]:
        """Execute with allow_stdin; answer input_requests (``answer`` to the first when given, else "").
        A cell ends with its execute_reply and iopub idle; no message for hang_timeout s is a hang."""
        import zmq

        kc = self.kc
        poller = zmq.Poller()
        shell, iopub, stdin = kc.shell_channel, kc.iopub_channel, kc.stdin_channel
        for ch in (shell, iopub, stdin):
            poller.register(ch.socket, zmq.POLLIN)
        cell: dict[str, Any] = {"code": code, "stdout": [], "stderr": [], "errors": [], "requests": [],
                                "reply": None, "idle": False, "hung": False, "t_reply": None}
        t0 = time.perf_counter()
        msg_id = kc.execute(code, allow_stdin=True, store_history=False)
        last = t0
        while cell["reply"] is None or not cell["idle"]:
            now = time.perf_counter()
            left = last + self.args.hang_timeout - now
            if left <= 0:
                cell["hung"] = True
                cell["waited"] = round(now - t0, 2)
                break
            events = dict(poller.poll(int(min(left, 0.5) * 1000) + 1))
            now = time.perf_counter()
            if stdin.socket in events:
                while True:
                    try:
                        msg = stdin.get_msg(timeout=0)
                    except Exception:
                        break
                    last = now
                    if msg["msg_type"] != "input_request":
                        continue
                    req = {"prompt": msg["content"].get("prompt", ""), "password": msg["content"].get("password"),
                           "t": round(now - t0, 4), "own": msg["parent_header"].get("msg_id") == msg_id}
                    first = answer is not None and not any(r["own"] for r in cell["requests"]) and req["own"]
                    cell["requests"].append(req)
                    kc.input(answer if first else "")
            if shell.socket in events:
                while True:
                    try:
                        msg = shell.get_msg(timeout=0)
                    except Exception:
                        break
                    if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply":
                        cell["reply"] = msg["content"]
                        cell["t_reply"] = now - t0
                        last = now
            if iopub.socket in events:
                while True:
                    try:
                        msg = iopub.get_msg(timeout=0)
                    except Exception:
                        break
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    last = now
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        cell["stdout" if content["name"] == "stdout" else "stderr"].append(content["text"])
                    elif kind == "error":
                        cell["errors"].append(f"{content.get('ename')}: {content.get('evalue')}")
                    elif kind == "status" and content["execution_state"] == "idle":
                        cell["idle"] = True
        cell["stdout"] = "".join(cell["stdout"])
        cell["stderr"] = "".join(cell["stderr"])
        cell["status"] = (cell["reply"] or {}).get("status", "no reply")
        return cell

    # -- the cell program --
    def value(self) -> str:
        return f"K{self.id}_{self.rng.getrandbits(40):x}"

    def next_cell(self, kind: str) -> tuple[str, str, str]:
        """(code, expected stdout, expected stderr) for one cell of ``kind``; updates the model."""
        i, d = self.id, self.dir
        if kind == "setup":
            self.x, self.cwd = self.value(), d
            return (f"mkdir -p {d}/d0 {d}/d1 {d}/d2 && cd {d} && x_{i}={self.x} && echo K{i}_up", f"K{i}_up\n", "")
        if kind == "set":
            self.x = self.value()
            return f"x_{i}={self.x}", "", ""
        if kind == "echo":
            return f'echo "$x_{i}"', f"{self.x}\n", ""
        if kind == "ls":
            return "ls / >/dev/null", "", ""
        if kind == "cd":
            self.cwd = f"{d}/d{self.rng.randrange(3)}"
            return f"cd {self.cwd} && pwd", f"{self.cwd}\n", ""
        if kind == "pwd":
            return "pwd", f"{self.cwd}\n", ""
        if kind == "arith":
            a, b, c = self.rng.randrange(1000), self.rng.randrange(1000), self.rng.randrange(1000)
            return f'echo "K{i}_$(( {a} * {b} + {c} ))"', f"K{i}_{a * b + c}\n", ""
        if kind == "loop":
            return (f'for n in 1 2 3; do\n  echo "$x_{i}.$n"\ndone',
                    "".join(f"{self.x}.{n}\n" for n in (1, 2, 3)), "")
        if kind == "stderr":
            v = self.value()
            return f"echo {v} >&2", "", f"{v}\n"
        if kind == "sleep":
            return "sleep 0.3", "", ""
        if kind == "file":
            return f"printf '%s\\n' \"$x_{i}\" > {d}/f && cat {d}/f", f"{self.x}\n", ""
        raise ValueError(kind)

    def program(self) -> list[str]:
        kinds = ["setup", *self.rng.choices(list(KINDS), weights=list(KINDS.values()), k=self.args.cells - 1)]
        # prompt tries go between cells, after the setup cell, at seeded positions
        slots = sorted(self.rng.choices(range(1, len(kinds) + 1), k=self.args.prompts))
        out, k = [], 0
        for pos, kind in enumerate(kinds):
            while k < len(slots) and slots[k] == pos:
                out.append("prompt")
                k += 1
            out.append(kind)
        out += ["prompt"] * (len(slots) - k)
        return out

    # -- checks --
    def note(self, key: str, item: dict[str, Any]) -> None:
        if len(self.res[key]) < EXAMPLES:
            self.res[key].append(item)

    def check(self, kind: str, cell: dict[str, Any], want_out: str, want_err: str | None) -> None:
        res = self.res
        unrequested = list(cell["requests"])
        if kind == "prompt" and unrequested:  # the read's own request: the first that shows its prompt
            real = next((r for r in unrequested if "Name?" in r["prompt"]), unrequested[0])
            unrequested.remove(real)
        for r in unrequested:  # when it came, and how long before the reply: where in the cell the race is
            res["unrequested_timing"].append([kind, r["t"], rnd(cell["t_reply"]), r["prompt"][:40]])
        if unrequested:
            res["unrequested"] += len(unrequested)
            if kind == "prompt":
                res["unrequested_in_prompt_cells"] += len(unrequested)
            self.note("unrequested_examples", {"n": res["cells_run"], "kind": kind, "code": clip(cell["code"], 80),
                                               "requests": unrequested, "status": cell["status"],
                                               "reply_s": rnd(cell["t_reply"])})
        text = cell["stdout"] + cell["stderr"] + "".join(r["prompt"] for r in cell["requests"])
        others = sorted({int(m) for m in TOKEN_RE.findall(text)} - {self.id})
        if others:
            res["cross_talk"] += 1
            self.note("cross_talk_examples", {"n": res["cells_run"], "kind": kind, "from_kernels": others,
                                              "stdout": clip(cell["stdout"]), "stderr": clip(cell["stderr"])})
        if kind == "start" or cell["hung"]:  # counted as a failed start, as a hang
            return
        # a prompt cell's stderr is not judged: bash's `read -p` writes the prompt there, and it shows in
        # the stream or in the input box depending on timing (see prompts.detected)
        if cell["status"] != "ok" or cell["stdout"] != want_out or (want_err is not None
                                                                      and cell["stderr"] != want_err):
            res["wrong"] += 1
            self.note("wrong_examples", {"n": res["cells_run"], "kind": kind, "code": clip(cell["code"], 120),
                                         "status": cell["status"], "errors": cell["errors"][:2],
                                         "stdout": clip(cell["stdout"]), "want_stdout": clip(want_out),
                                         "stderr": clip(cell["stderr"]), "want_stderr": clip(want_err or "")})

    def prompt(self) -> dict[str, Any]:
        name = f"K{self.id}_n{self.rng.getrandbits(32):x}"
        cell = self.run_cell("read -p 'Name? ' n; echo \"got:$n\"", answer=name)
        cell["name"] = name
        self.res["prompts_tried"] += 1
        own = [r for r in cell["requests"] if r["own"]]
        detected = len(cell["requests"]) == 1 and len(own) == 1 and "Name?" in own[0]["prompt"]
        answered = f"got:{name}\n" in cell["stdout"]
        if len(cell["requests"]) == 1 and own:
            self.res["prompts_requested_once"] += 1  # one input_request, whatever its prompt text
        if detected:
            self.res["prompts_detected"] += 1
            self.res["prompt_latencies"].append(own[0]["t"])
        if answered:
            self.res["prompts_answered"] += 1
        if cell["stdout"] == f"got:{name}\n":
            self.res["prompts_stdout_exact"] += 1
        if not detected or not answered or cell["status"] != "ok":
            self.note("prompt_failures", {"n": self.res["cells_run"], "name": name, "requests": cell["requests"],
                                          "stdout": clip(cell["stdout"]), "stderr": clip(cell["stderr"]),
                                          "status": cell["status"], "hung": cell["hung"]})
        return cell

    # -- lifecycle --
    def start(self) -> None:
        from jupyter_client import KernelManager

        t0 = time.perf_counter()
        # IPC sockets in the run's private directory: with TCP, 30 processes picking "free" ports at the same
        # time collide now and then (a kernel dies with EADDRINUSE), which is not what this script measures.
        self.km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc",
                                ip=os.path.join(self.args.run_dir, f"k{self.id}"))
        self.km.start_kernel()
        proc = getattr(self.km.provisioner, "process", None)
        self.pid = getattr(proc, "pid", None)
        create_time = None
        with contextlib.suppress(Exception):
            import psutil

            create_time = psutil.Process(self.pid).create_time()
        self.res["kernel_pid"] = self.pid
        self.emit("started", kernel_pid=self.pid, kernel_create_time=create_time)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=self.args.start_timeout)
        first = self.run_cell("true")
        self.check("start", first, "", "")
        if first["status"] != "ok":
            raise RuntimeError(f"first `true` cell: {first['status']} {first['errors'][:1]} hung={first['hung']}")
        self.res["start_s"] = round(time.perf_counter() - t0, 4)
        self.res["start_ok"] = True

    def cells(self) -> None:
        import psutil

        kproc = psutil.Process(self.pid) if self.pid else None
        cpu0 = sum(kproc.cpu_times()[:2]) if kproc else None
        t0 = time.perf_counter()
        for kind in self.program():
            if kind == "prompt":
                cell = self.prompt()
            else:
                code, want_out, want_err = self.next_cell(kind)
                cell = self.run_cell(code)
                if cell["t_reply"] is not None:
                    self.res["latencies"].append(round(cell["t_reply"], 5))
            self.check(kind, cell, *((f"got:{cell['name']}\n", None) if kind == "prompt" else (want_out, want_err)))
            self.res["cells_run"] += 1
            self.res["kinds"][kind] = self.res["kinds"].get(kind, 0) + 1
            if cell["hung"]:
                alive = self.km.is_alive()
                self.res["hang"] = {"n": self.res["cells_run"], "kind": kind, "code": clip(cell["code"], 120),
                                    "waited_s": cell["waited"], "reply": cell["reply"] is not None,
                                    "idle": cell["idle"], "requests": cell["requests"],
                                    "stdout": clip(cell["stdout"]), "stderr": clip(cell["stderr"]),
                                    "kernel_alive": alive,
                                    "processes": proc_snapshot(self.pid) if self.pid else []}
                self.dlog(f"hang in cell {self.res['cells_run']} ({kind}); giving up on this kernel")
                break
            r = self.res
            self.emit("cell", done=r["cells_run"], unrequested=r["unrequested"], wrong=r["wrong"],
                      prompts=r["prompts_tried"], detected=r["prompts_detected"])
        self.res["cells_phase_s"] = round(time.perf_counter() - t0, 3)
        if kproc is not None:
            with contextlib.suppress(psutil.Error):
                cpu = sum(kproc.cpu_times()[:2]) - cpu0
                mem = kproc.memory_full_info() if hasattr(kproc, "memory_full_info") else kproc.memory_info()
                self.res["cpu_s"] = round(cpu, 3)
                self.res["cpu_s_per_cell"] = round(cpu / max(1, self.res["cells_run"]), 5)
                self.res["rss_mb"] = round(mem.rss / 2**20, 1)
                with open(f"/proc/{self.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            self.res["hwm_mb"] = round(int(line.split()[1]) / 1024, 1)
        if not self.res["hang"]:  # tidy the container; not counted
            with contextlib.suppress(Exception):
                self.run_cell(f"cd / && rm -rf {self.dir}")

    def shutdown(self) -> None:
        import psutil

        out: dict[str, Any] = {}
        procs: list[Any] = []
        if self.pid:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
        if self.kc is not None:
            with contextlib.suppress(Exception):
                self.kc.stop_channels()
        if self.km is not None:
            kproc = getattr(self.km.provisioner, "process", None) if self.km.provisioner else None
            t0 = time.perf_counter()
            try:
                if self.km.has_kernel:
                    self.km.shutdown_kernel(now=bool(self.res["hang"]))
            except Exception as exc:
                out["error"] = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    self.km.shutdown_kernel(now=True)
            out["seconds"] = round(time.perf_counter() - t0, 3)
            out["returncode"] = kproc.poll() if kproc is not None else None
        # what is left of the kernel's tree 3 s later is killed by PID
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                  for p in procs if _exists(p)):
            time.sleep(0.05)
        out["killed"] = kill_tree(procs)
        self.res["shutdown"] = out

    def main(self) -> int:
        try:
            try:
                self.start()
            except Exception as exc:
                self.res["start_error"] = f"{type(exc).__name__}: {exc}"
                self.dlog(traceback.format_exc())
            self.emit("ready", ok=self.res["start_ok"], start_s=self.res.get("start_s"),
                      error=self.res.get("start_error"))
            if self.res["start_ok"]:
                ready, _, _ = select.select([sys.stdin], [], [], self.args.go_timeout)
                line = sys.stdin.readline() if ready else ""
                if line.strip() == "go":
                    self.cells()
                else:
                    self.res["error"] = "no go from the orchestrator"
        except Exception as exc:
            self.res["error"] = f"{type(exc).__name__}: {exc}"
            self.dlog(traceback.format_exc())
        except KeyboardInterrupt:
            self.res["error"] = "interrupted"
            self.dlog("interrupted: shutting the kernel down")
        finally:
            try:
                self.shutdown()
            except Exception as exc:
                self.res.setdefault("error", f"shutdown: {type(exc).__name__}: {exc}")
            self.emit("result", result=self.res)
        return 0


def _exists(proc: Any) -> bool:
    try:
        return proc.is_running()
    except Exception:
        return False


# ===================================================================================================
# Orchestrator mode
# ===================================================================================================
def run_quiet(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=TOOL_ENV,
                          stdin=subprocess.DEVNULL, check=False)


def repo_dir() -> str:
    import lxc_kernel

    return os.path.dirname(os.path.dirname(os.path.abspath(lxc_kernel.__file__)))


def tree_hash(pkg: str) -> str:
    digest = hashlib.sha256()
    for root, _dirs, files in sorted(os.walk(pkg)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, pkg).encode() + b"\0")
                with open(path, "rb") as fh:
                    digest.update(fh.read())
    return digest.hexdigest()[:16]


def kernel_source(export: str | None = None, ref: str | None = None) -> dict[str, Any]:
    """Which kernel code is measured. Without --ref: the installed package (editable: the working tree),
    its git commit, the lxc_kernel files that differ from it, and a hash of the sources on disk.
    With --ref: the clean export of that commit the kernels import (PYTHONPATH)."""
    out: dict[str, Any] = {}
    try:
        repo = repo_dir()
        if export is not None:
            head = run_quiet(["git", "-C", repo, "rev-parse", "--short", f"{ref}^{{commit}}"])
            out.update(ref=ref, commit=head.stdout.strip() or None, package_dir=os.path.join(export, "lxc_kernel"),
                       lxc_kernel_uncommitted=[], lxc_kernel_sha256=tree_hash(os.path.join(export, "lxc_kernel")))
            return out
        out["package_dir"] = os.path.join(repo, "lxc_kernel")
        head = run_quiet(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
        out["commit"] = head.stdout.strip() or None
        status = run_quiet(["git", "-C", repo, "status", "--porcelain", "--", "lxc_kernel"])
        out["lxc_kernel_uncommitted"] = [line for line in status.stdout.splitlines() if line.strip()]
        out["lxc_kernel_sha256"] = tree_hash(out["package_dir"])
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def export_ref(ref: str, dest: str) -> None:
    """``git archive REF lxc_kernel`` unpacked into ``dest``, for the kernels to import instead."""
    repo = repo_dir()
    sha = run_quiet(["git", "-C", repo, "rev-parse", "--verify", f"{ref}^{{commit}}"])
    if sha.returncode != 0:
        raise ValueError(f"--ref {ref!r}: not a commit of {repo}")
    os.makedirs(dest)
    archive = subprocess.Popen(["git", "-C", repo, "archive", sha.stdout.strip(), "lxc_kernel"],
                               stdout=subprocess.PIPE, env=TOOL_ENV)
    untar = subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, env=TOOL_ENV, check=False)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait(60) != 0 or untar.returncode != 0:
        raise RuntimeError(f"git archive {ref} | tar -x failed")


def host_info(container: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "container": container,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    for mod in ("jupyter_client", "ipykernel", "zmq", "psutil"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception as exc:
            info[f"{mod}_version"] = f"unavailable: {exc}"
    with contextlib.suppress(Exception):
        proc = run_quiet(["lxc-attach", "-n", container, "--clear-env", "--", "/bin/sh", "-c",
                          'if command -v bash >/dev/null; then bash -c \'echo "bash $BASH_VERSION"\'; '
                          'else busybox 2>&1 | head -1; fi'], timeout=20)
        info["container_shell"] = proc.stdout.strip()[:80]
    return info


def container_state(container: str) -> str:
    try:
        proc = run_quiet(["lxc-info", "-n", container, "-s", "-H"], timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return proc.stdout.strip() if proc.returncode == 0 else "MISSING"


class DriverProc:
    """A driver subprocess: its pipes, its events, its kernel's identity (to kill it if it must)."""

    def __init__(self, idx: int, popen: subprocess.Popen[bytes], log_path: str) -> None:
        self.id = idx
        self.popen = popen
        self.log_path = log_path
        self.buf = b""
        self.last_event = time.monotonic()
        self.kernel_pid: int | None = None
        self.kernel_create_time: float | None = None
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.progress: dict[str, Any] = {}
        self.killed = False
        self.eof = False

    def feed(self) -> None:
        try:
            data = os.read(self.popen.stdout.fileno(), 1 << 16)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.last_event = time.monotonic()
            kind = ev.get("event")
            if kind == "started":
                self.kernel_pid, self.kernel_create_time = ev.get("kernel_pid"), ev.get("kernel_create_time")
            elif kind == "ready":
                self.ready = ev
            elif kind == "cell":
                self.progress = ev
            elif kind == "result":
                self.result = ev["result"]

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.popen.stdin.write(line.encode())  # type: ignore[union-attr]
            self.popen.stdin.flush()  # type: ignore[union-attr]

    def kill(self) -> list[str]:
        """Kill the driver by PID, then its kernel's tree (only if the PID is still that kernel)."""
        import psutil

        self.killed = True
        self.eof = True  # nothing more will come from it
        killed = []
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
                killed.append(f"driver {self.popen.pid}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        if self.kernel_pid:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.kernel_pid)
                if self.kernel_create_time is None or abs(root.create_time() - self.kernel_create_time) < 0.01:
                    killed += kill_tree([*root.children(recursive=True), root])
        return killed

    def log_tail(self, n: int = 2500) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - n))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tracebacks(self) -> int:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().count(b"Traceback (most recent call last)")
        except OSError:
            return 0


def install_spec(prefix: str, container: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", KERNEL_NAME,
         "--container", container],
        capture_output=True, text=True, timeout=60, check=False, env=env, cwd=prefix,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lxc_kernel.install exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return os.path.join(prefix, "share", "jupyter")


def imported_from(env: dict[str, str], cwd: str) -> str:
    """Where a Python started like the kernels imports lxc_kernel from (to prove --ref took effect)."""
    proc = subprocess.run([sys.executable, "-c", "import lxc_kernel; print(lxc_kernel.__file__)"],
                          capture_output=True, text=True, timeout=30, check=False, env=env, cwd=cwd)
    return proc.stdout.strip() or proc.stderr.strip()[-200:]


def orchestrate(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    t_begin = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "lxc-kernel load",
        "args": {"container": args.container, "kernels": args.kernels, "cells": args.cells,
                 "prompts": args.prompts, "seed": args.seed, "quick": args.quick, "ref": args.ref,
                 "hang_timeout": args.hang_timeout},
        "seed": args.seed,
    }
    tmp = tempfile.mkdtemp(prefix="lxck-load-")
    drivers: list[DriverProc] = []
    cleanup: dict[str, Any] = {"drivers_killed": [], "prefix_removed": False}
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        export = None
        if args.ref:
            export = os.path.join(tmp, "src")
            try:
                export_ref(args.ref, export)
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
                return result, 2 if isinstance(exc, ValueError) else 1
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [export, os.environ.get("PYTHONPATH")]))
        result["kernel_source"] = kernel_source(export, args.ref)
        result["kernel_source"]["kernels_import_from"] = imported_from(env, tmp)
        result["host"] = host_info(args.container)
        log(f"seed {args.seed}; commit {result['kernel_source'].get('commit')}"
            f"{' (clean export)' if export else ''}; {args.kernels} kernels x {args.cells} cells, "
            f"{args.prompts} prompt tries, container {args.container}")
        state = container_state(args.container)
        result["host"]["container_state"] = state
        if state != "RUNNING":
            result["error"] = f"container {args.container} is {state}"
            return result, 1

        rng = random.Random(args.seed)
        tag = f"{rng.getrandbits(24):06x}"
        seeds = [rng.getrandbits(32) for _ in range(args.kernels)]
        share = [args.prompts // args.kernels + (1 if i < args.prompts % args.kernels else 0)
                 for i in range(args.kernels)]
        try:
            env["JUPYTER_PATH"] = install_spec(tmp, args.container, env)
        except Exception as exc:
            result["error"] = f"kernelspec install failed: {exc}"
            return result, 1

        def pump(timeout: float) -> None:
            live = {d.popen.stdout.fileno(): d for d in drivers if not d.eof}  # type: ignore[union-attr]
            if not live:
                time.sleep(timeout)
                return
            ready, _, _ = select.select(list(live), [], [], timeout)
            for fd in ready:
                live[fd].feed()

        t_go: float | None = None
        try:
            me = os.path.abspath(__file__)
            t_spawn = time.perf_counter()
            for i in range(args.kernels):
                log_path = os.path.join(tmp, f"driver-{i}.log")
                with open(log_path, "wb") as logf:
                    popen = subprocess.Popen(
                        [sys.executable, me, "--driver", str(i), "--driver-seed", str(seeds[i]), "--tag", tag,
                         "--cells", str(args.cells), "--prompts", str(share[i]),
                         "--hang-timeout", str(args.hang_timeout), "--start-timeout", str(args.start_timeout),
                         "--go-timeout", str(args.start_timeout + 120), "--run-dir", tmp],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, env=env, cwd=tmp,
                    )
                os.set_blocking(popen.stdout.fileno(), False)  # type: ignore[union-attr]
                drivers.append(DriverProc(i, popen, log_path))
            log(f"{len(drivers)} drivers spawned; kernels starting")

            # 1. every kernel up (or failed), then go: the cells of all kernels run at the same time
            deadline = time.monotonic() + args.start_timeout + 90
            while time.monotonic() < deadline and any(d.ready is None and not d.eof for d in drivers):
                pump(0.5)
            up = [d for d in drivers if d.ready and d.ready.get("ok")]
            log(f"{len(up)}/{len(drivers)} kernels up after {time.perf_counter() - t_spawn:.1f} s; go")
            for d in drivers:
                d.send("go\n" if d in up else "stop\n")
            t_go = time.perf_counter()

            # 2. cells; watchdog: a driver silent for longer than its own hang timeout (+ margin) is killed
            expected = args.kernels * args.cells + args.prompts
            next_note = time.monotonic() + 10
            while any(d.result is None and not d.eof for d in drivers):
                pump(0.5)
                now = time.monotonic()
                for d in drivers:
                    silent = now - d.last_event > args.hang_timeout + args.start_timeout
                    if d.result is None and not d.eof and not d.killed and silent:
                        log(f"driver {d.id} silent for {now - d.last_event:.0f} s: killing it and its kernel by PID")
                        cleanup["drivers_killed"].append({"id": d.id, "killed": d.kill()})
                if now >= next_note:
                    next_note = now + 10
                    done = sum(d.progress.get("done", 0) for d in drivers)
                    unreq = sum(d.progress.get("unrequested", 0) for d in drivers)
                    wrong = sum(d.progress.get("wrong", 0) for d in drivers)
                    tried = sum(d.progress.get("prompts", 0) for d in drivers)
                    det = sum(d.progress.get("detected", 0) for d in drivers)
                    log(f"{done}/{expected} cells, unrequested {unreq}, wrong {wrong}, prompts {det}/{tried}, "
                        f"load {os.getloadavg()[0]:.1f}")
            cells_wall = time.perf_counter() - t_go
            for d in drivers:
                try:
                    d.popen.wait(30)
                except subprocess.TimeoutExpired:
                    cleanup["drivers_killed"].append({"id": d.id, "killed": d.kill()})
            result.update(aggregate(args, drivers, cells_wall))
            result["kernel_source_at_end"] = kernel_source(export, args.ref)
            before, after = result["kernel_source"], result["kernel_source_at_end"]
            if before.get("lxc_kernel_sha256") != after.get("lxc_kernel_sha256"):
                result["warning"] = "lxc_kernel changed on disk during the run: kernels may run different code"
            return result, 0
        except KeyboardInterrupt:
            log("interrupted: the drivers get SIGTERM and shut their kernels down")
            result["interrupted"] = True
            for d in drivers:
                if d.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        d.popen.send_signal(signal.SIGTERM)
            until = time.monotonic() + 20
            while time.monotonic() < until and any(d.result is None and not d.eof for d in drivers):
                pump(0.5)
            result.update(aggregate(args, drivers, time.perf_counter() - (t_go or t_begin)))
            return result, 130
    finally:
        deadline = time.monotonic() + 10  # on ^C the drivers got SIGINT too: let them shut their kernels down
        for d in drivers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.popen.wait(max(0.1, deadline - time.monotonic()))
            if d.popen.poll() is None:
                cleanup["drivers_killed"].append({"id": d.id, "killed": d.kill()})
            for pipe in (d.popen.stdin, d.popen.stdout):
                with contextlib.suppress(Exception):
                    pipe.close()  # type: ignore[union-attr]
        shutil.rmtree(tmp, ignore_errors=True)
        cleanup["prefix_removed"] = not os.path.exists(tmp)
        result["cleanup"] = cleanup
        result["elapsed_total_s"] = round(time.perf_counter() - t_begin, 1)


def aggregate(args: argparse.Namespace, drivers: list[DriverProc], cells_wall: float) -> dict[str, Any]:
    res = [d.result or {"id": d.id, "error": "no result (driver died or was killed)", "start_ok": False}
           for d in drivers]
    ok = [r for r in res if r.get("start_ok")]
    starts = [r["start_s"] for r in ok if r.get("start_s") is not None]
    lat = [x for r in res for x in r.get("latencies", [])]
    plat = [x for r in res for x in r.get("prompt_latencies", [])]

    def total(key: str) -> int:
        return sum(r.get(key, 0) for r in res)

    def examples(key: str) -> list[dict[str, Any]]:
        out = []
        for r in res:
            for item in r.get(key, []):
                if len(out) < EXAMPLES:
                    out.append({"kernel": r["id"], **item})
        return out

    rss = [r["rss_mb"] for r in res if "rss_mb" in r]
    hwm = [r["hwm_mb"] for r in res if "hwm_mb" in r]
    cpu = [r["cpu_s_per_cell"] for r in res if "cpu_s_per_cell" in r]
    hangs = [{"kernel": r["id"], **r["hang"]} for r in res if r.get("hang")]
    cells_run = total("cells_run")
    timing = [x for r in res for x in r.get("unrequested_timing", [])]
    by_kind: dict[str, int] = {}
    for kind, _t, _r, _p in timing:
        by_kind[kind] = by_kind.get(kind, 0) + 1
    out: dict[str, Any] = {
        "kernels": {"requested": args.kernels, "started": len(ok), "failed_starts": len(res) - len(ok),
                    "start_s": {"max": rnd(max(starts)) if starts else None,
                                "median": rnd(statistics.median(starts)) if starts else None},
                    "start_errors": [{"kernel": r["id"], "error": r.get("start_error") or r.get("error")}
                                     for r in res if not r.get("start_ok")][:EXAMPLES]},
        "cells": {"planned": args.kernels * args.cells + args.prompts, "run": cells_run,
                  "wall_s": round(cells_wall, 1), "per_s": round(cells_run / cells_wall, 1) if cells_wall else None,
                  "latency_s": summary(lat)},
        "unrequested_input_requests": total("unrequested"),
        "unrequested_in_prompt_cells": total("unrequested_in_prompt_cells"),
        "unrequested_by_kind": by_kind,
        "unrequested_when": {
            "after_send_s": summary([t for _k, t, _r, _p in timing]),
            "before_reply_s": summary([r - t for _k, t, r, _p in timing if r is not None]),
            "empty_prompt": sum(1 for _k, _t, _r, prompt in timing if not prompt),
        },
        "wrong_outputs": total("wrong"),
        "cross_talk": total("cross_talk"),
        "hangs": len(hangs),
        "prompts": {"tried": total("prompts_tried"), "detected": total("prompts_detected"),
                    "one_request_any_prompt": total("prompts_requested_once"),
                    "answer_echoed": total("prompts_answered"),
                    "stdout_exactly_got_line": total("prompts_stdout_exact"), "planned": args.prompts,
                    "request_latency_s": summary(plat)},
        "kernel_rss_mb": {"median": rnd(statistics.median(rss), 1) if rss else None,
                          "max": max(rss) if rss else None, "each": rss},
        "kernel_hwm_mb_max": max(hwm) if hwm else None,
        "kernel_cpu_s_per_cell": {"median": rnd(statistics.median(cpu), 5) if cpu else None,
                                  "max": max(cpu) if cpu else None},
        "examples": {"unrequested": examples("unrequested_examples"), "wrong": examples("wrong_examples"),
                     "cross_talk": examples("cross_talk_examples"), "prompt_failures": examples("prompt_failures"),
                     "hangs": hangs},
        "cell_kinds": {k: sum(r.get("kinds", {}).get(k, 0) for r in res)
                       for k in ["setup", *KINDS, "prompt"]},
        "kernel_tracebacks_in_logs": sum(d.log_tracebacks() for d in drivers),
        "shutdown": {"max_s": max((r.get("shutdown", {}).get("seconds") or 0 for r in res), default=None),
                     # -15: jupyter_client had to SIGTERM the kernel after its shutdown_reply
                     "returncodes": dict(collections.Counter(str(r.get("shutdown", {}).get("returncode"))
                                                             for r in res)),
                     "leftovers_killed": [k for r in res for k in r.get("shutdown", {}).get("killed", [])][:20]},
        "driver_errors": [{"kernel": r["id"], "error": r["error"]} for r in res if r.get("error")][:EXAMPLES],
    }
    # log tails of drivers that went wrong (their kernel's stderr is in there too)
    tails = {}
    for d, r in zip(drivers, res, strict=True):
        if (r.get("hang") or r.get("error") or not r.get("start_ok")) and len(tails) < 5:
            tails[str(d.id)] = d.log_tail()
    if tails:
        out["driver_log_tails"] = tails
    out["target"] = {
        "met": (out["kernels"]["failed_starts"] == 0 and cells_run == out["cells"]["planned"]
                and out["unrequested_input_requests"] == 0 and out["wrong_outputs"] == 0
                and out["cross_talk"] == 0 and out["hangs"] == 0
                and out["prompts"]["detected"] == out["prompts"]["tried"] == args.prompts),
        "what": "every kernel started and ran every cell; 0 unrequested input_requests, 0 wrong outputs, "
                "0 cross-talk, 0 hangs; every prompt detected",
    }
    return out


def markdown(r: dict[str, Any]) -> str:
    src, k, c, p = r.get("kernel_source", {}), r.get("kernels", {}), r.get("cells", {}), r.get("prompts", {})
    lat = c.get("latency_s", {})
    rows = [
        ("container", f"{r['args']['container']} ({r.get('host', {}).get('container_shell', '?')})"),
        ("commit measured", f"{src.get('commit')}" + (
            f" (clean export of --ref {src['ref']})" if src.get("ref")
            else " + uncommitted lxc_kernel changes" if src.get("lxc_kernel_uncommitted") else "")),
        ("seed", r.get("seed")),
    ]
    if r.get("interrupted"):
        rows.append(("interrupted", "yes: partial figures"))
    if "error" in r:
        rows.append(("error", r["error"]))
    if "kernels" in r:
        rows += [
            ("kernels started / failed", f"{k.get('started')} / {k.get('failed_starts')}"),
            ("start time max / median", f"{k['start_s']['max']} s / {k['start_s']['median']} s"),
            ("cells run / planned", f"{c.get('run')} / {c.get('planned')} in {c.get('wall_s')} s "
                                    f"({c.get('per_s')} cells/s)"),
            ("cell latency median / p95 / max",
             f"{lat.get('median')} / {lat.get('p95')} / {lat.get('max')} s" if lat.get("n") else "n/a"),
            ("unrequested input_requests", r.get("unrequested_input_requests")),
            ("wrong outputs", r.get("wrong_outputs")),
            ("cross-talk", r.get("cross_talk")),
            ("hangs", r.get("hangs")),
            ("prompts detected / tried", f"{p.get('detected')} / {p.get('tried')} (one input_request, any prompt "
                                         f"text: {p.get('one_request_any_prompt')}; answer echoed back: "
                                         f"{p.get('answer_echoed')})"),
            ("kernel RSS median / max", f"{r['kernel_rss_mb']['median']} / {r['kernel_rss_mb']['max']} MB"),
            ("kernel CPU s per cell median / max",
             f"{r['kernel_cpu_s_per_cell']['median']} / {r['kernel_cpu_s_per_cell']['max']}"),
            ("target met", r.get("target", {}).get("met")),
        ]
    rows.append(("elapsed", f"{r.get('elapsed_total_s')} s"))
    lines = ["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


# ===================================================================================================
def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def container_name(text: str) -> str:
    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a container name (1-64 of A-Za-z0-9_.-): {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Defaults: 30 kernels x 100 cells, 100 prompt tries; --quick: 6 x 20, 20.")
    p.add_argument("--container", type=container_name,
                   default=os.environ.get("LXCK_TEST_BASH") or "lxck-test-bash",
                   help="running container all kernels attach to (default $LXCK_TEST_BASH or lxck-test-bash)")
    p.add_argument("--kernels", type=positive, help="kernels, one client process each (default 30)")
    p.add_argument("--cells", type=positive, help="cells per kernel, prompts not counted (default 100)")
    p.add_argument("--prompts", type=non_negative, help="read -p prompt tries in total, spread over the kernels "
                   "(default 100)")
    p.add_argument("--seed", type=int, help="seed of every random choice (default: random, printed)")
    p.add_argument("--quick", action="store_true", help="6 kernels x 20 cells, 20 prompts (unless given)")
    p.add_argument("--hang-timeout", type=float, default=60.0,
                   help="seconds without any message for a cell before it counts as a hang (default 60)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a kernel to be ready")
    p.add_argument("--ref", metavar="COMMIT", help="measure lxc_kernel as of this git commit (a clean `git archive` "
                   "export put first on the kernels' PYTHONPATH) instead of the installed working tree")
    p.add_argument("--markdown", action="store_true", help="print the markdown table on stdout instead of JSON")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    # driver mode (internal)
    p.add_argument("--driver", type=int, help=argparse.SUPPRESS)
    p.add_argument("--driver-seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tag", help=argparse.SUPPRESS)
    p.add_argument("--go-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=tempfile.gettempdir(), help=argparse.SUPPRESS)
    return p


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    # SIGTERM (and SIGINT, which a shell may have set to ignored for a background job) unwind through the
    # finally blocks: the drivers shut their kernels down, the orchestrator ends what is left by PID.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if args.hang_timeout <= 0 or args.start_timeout <= 0:
        print("error: timeouts must be positive", file=sys.stderr)
        return 2
    if args.driver is not None:
        args.prompts = args.prompts or 0
        args.cells = args.cells or 1
        return Driver(args).main()
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    result, code = orchestrate(args)
    table = markdown(result)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.markdown:
        print(table)
    else:
        print(text)
        print(table, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
