"""The benches' shared client: a kernel started through jupyter_client, its cells collected, its processes tracked.

One ``Kernel`` is one blocking client: use it from one thread of one process (the stress and load drivers
run one per OS process). ``Kernel.run`` watches shell, iopub and stdin together (zmq poller), answers every
``input_request`` so that nothing blocks, and counts those the caller did not expect. Every process seen
as the kernel's descendant (by PID and start time, psutil) is remembered, so that after shutdown whatever
is left can be named and killed by PID, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL_ENV = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
TEXT_CAP = 1 << 20  # characters of each stream kept per cell (the rest is counted)


# -- figures -----------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary(values: list[float], digits: int = 4) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), digits),
            "p95": round(pct(values, 95), digits), "max": round(max(values), digits)}


def clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + f"...(+{len(text) - n})"


# -- kernelspec --------------------------------------------------------------------------------------
def install_plain_spec(prefix: str, name: str) -> str:
    """A kernelspec NAME under PREFIX without the zero-setup defaults (the container is given per kernel
    with ``--LXCKernel.container=``); returns the directory for JUPYTER_PATH."""
    from lxc_kernel.install import kernel_spec

    spec_dir = os.path.join(prefix, "share", "jupyter", "kernels", name)
    os.makedirs(spec_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
        json.dump(kernel_spec(display_name=f"lxc-kernel ({name})"), fh)
    return os.path.join(prefix, "share", "jupyter")


def kernel_env() -> dict[str, str]:
    """The environment for kernels: this checkout first on PYTHONPATH (``python -m`` puts the working
    directory first on sys.path, so kernels are started from a neutral directory, see ``Kernel``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- processes ---------------------------------------------------------------------------------------
def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def containers(prefix: str) -> list[str]:
    """Names of LXC containers that start with ``prefix``."""
    out = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, env=TOOL_ENV, timeout=60).stdout
    return sorted(n for n in out.split() if n.startswith(prefix))


# -- cells -------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One execute_request as the client saw it."""

    code: str
    reply: dict[str, Any] | None = None
    seconds: float | None = None  # from send to reply
    idle: bool = False
    hung: bool = False  # no message at all for the hang timeout
    stdout: str = ""
    stderr: str = ""
    chars: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    errors: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # prompts of input_requests for this cell
    foreign: int = 0  # input_requests whose parent is another message

    @property
    def status(self) -> str:
        return str(self.reply.get("status")) if self.reply else "no reply"

    @property
    def ename(self) -> str:
        return str((self.reply or {}).get("ename", ""))

    @property
    def evalue(self) -> str:
        return str((self.reply or {}).get("evalue", ""))

    def brief(self) -> dict[str, Any]:
        return {"code": clip(self.code, 160), "status": self.status, "ename": self.ename,
                "evalue": clip(self.evalue), "stdout": clip(self.stdout), "stderr": clip(self.stderr),
                "requests": self.requests[:3], "seconds": None if self.seconds is None else round(self.seconds, 3),
                "hung": self.hung}


class Kernel:
    """A kernel from kernelspec ``spec`` with ``extra`` arguments, its client, and every process it owned."""

    def __init__(self, spec: str, extra: list[str], env: dict[str, str] | None = None, cwd: str = "/",
                 ready_timeout: float = 90, sample: float = 0.0) -> None:
        from jupyter_client import KernelManager

        t0 = time.perf_counter()
        # IPC, not TCP: with 30 clients starting at once, jupyter_client's pick of free TCP ports raced (a
        # kernel failed to bind "Address already in use", another got a foreign client's messages: "Invalid
        # Signature"). Socket files in a private directory of this kernel cannot collide.
        self.ipc_dir = tempfile.mkdtemp(prefix="lxck-ipc-")
        self.km = KernelManager(kernel_name=spec, transport="ipc", ip=os.path.join(self.ipc_dir, "k"))
        self.km.start_kernel(extra_arguments=extra, env=env or kernel_env(), cwd=cwd)
        self.pid: int = self.km.provisioner.process.pid  # type: ignore[union-attr]
        self.process = psutil.Process(self.pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if sample > 0:
            # psutil only, no zmq: a sampler thread catches processes that leave the kernel's tree later
            # (a job that reparents to the container's init when its shell dies).
            threading.Thread(target=self._sampler, args=(sample,), daemon=True).start()
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=ready_timeout)
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.perf_counter() - t0
        self.note()

    # -- processes --
    def note(self) -> None:
        try:
            kids = self.process.children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            for p in kids:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault((p.pid, p.create_time()), p)

    def _sampler(self, every: float) -> None:
        while not self._stop.wait(every):
            self.note()

    def descendants(self) -> list[psutil.Process]:
        try:
            return self.process.children(recursive=True)
        except psutil.Error:
            return []

    def alive(self) -> bool:
        return bool(alive([self.process]))

    def cpu(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / 1048576

    def fds(self) -> int:
        return self.process.num_fds()

    # -- cells --
    def send(self, code: str, allow_stdin: bool = True) -> str:
        return self.kc.execute(code, allow_stdin=allow_stdin, store_history=False)

    def run(self, code: str, timeout: float = 60, allow_stdin: bool = True, answer: str = "",
            hang: float | None = None) -> Cell:
        return self.collect(self.send(code, allow_stdin), Cell(code), timeout, hang, answer)

    def collect(self, msg_id: str, cell: Cell, timeout: float = 60, hang: float | None = None,
                answer: str = "", start: float | None = None) -> Cell:
        """Read the three channels until the reply and idle of ``msg_id`` arrived. ``timeout``: seconds in
        all; ``hang``: seconds without any message for this cell. Either marks the cell ``hung``."""
        import zmq

        kc = self.kc
        poller = zmq.Poller()
        for ch in (kc.shell_channel, kc.iopub_channel, kc.stdin_channel):
            poller.register(ch.socket, zmq.POLLIN)
        t0 = time.perf_counter() if start is None else start
        last = time.perf_counter()
        deadline = t0 + timeout
        while cell.reply is None or not cell.idle:
            now = time.perf_counter()
            left = min(deadline - now, (last + hang - now) if hang else deadline - now)
            if left <= 0:
                cell.hung = True
                break
            events = dict(poller.poll(int(min(left, 0.5) * 1000) + 1))
            if kc.stdin_channel.socket in events:
                while (msg := _get(kc.stdin_channel)) is not None:
                    if msg["msg_type"] == "input_request":
                        if msg["parent_header"].get("msg_id") == msg_id:
                            # Not progress: a kernel asking again and again is stuck, not busy.
                            cell.requests.append(msg["content"].get("prompt", ""))
                        else:
                            cell.foreign += 1
                        kc.input(answer)
            if kc.shell_channel.socket in events:
                while (msg := _get(kc.shell_channel)) is not None:
                    if msg["parent_header"].get("msg_id") == msg_id:
                        cell.reply = msg["content"]
                        cell.seconds = time.perf_counter() - t0
                        last = time.perf_counter()
            if kc.iopub_channel.socket in events:
                while (msg := _get(kc.iopub_channel)) is not None:
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    last = time.perf_counter()
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        name, text = content["name"], content["text"]
                        cell.chars[name] = cell.chars.get(name, 0) + len(text)
                        have = getattr(cell, name)
                        if len(have) < TEXT_CAP:
                            setattr(cell, name, have + text[: TEXT_CAP - len(have)])
                    elif kind == "error":
                        cell.errors.append(content)
                    elif kind == "status" and content["execution_state"] == "idle":
                        cell.idle = True
        self.note()
        return cell

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def shutdown(self, wait: float = 3.0) -> list[str]:
        """Shut down cleanly, then kill by PID whatever is left (the kernel and every process it owned);
        returns what had to be killed."""
        self.note()
        self._stop.set()
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=False)
        left = self.leftovers(wait)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(Exception):
            self.km.cleanup_resources()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        return [describe(p) for p in left]

    def leftovers(self, wait: float) -> list[psutil.Process]:
        """The kernel and the processes it owned that are still alive after at most ``wait`` seconds."""
        procs = [*self.seen.values(), self.process]
        deadline = time.monotonic() + wait
        left = alive(procs)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = alive(procs)
        return left

    def kill_left(self, procs: list[psutil.Process]) -> None:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()


def _get(channel: Any) -> dict[str, Any] | None:
    try:
        return channel.get_msg(timeout=0)
    except Exception:
        return None
