"""A small process that outlives a killed kernel just long enough to clean up after it.

The kernel starts it at once (:func:`start`) as ``python -m lxc_kernel.watchdog``, in its own session
(``setsid``: a SIGKILL to the kernel's process group, as ``jupyter_client`` sends, does not reach it),
handing it a pidfd of the kernel and the read end of a pipe. The watchdog

- keeps psutil handles (PID plus start time) of the kernel's descendants, looked up every
  :data:`SCAN_INTERVAL` seconds and whenever the kernel says ``scan`` (at each cell): the lxc-attach
  sessions, the stderr reader, helpers, and what runs under them;
- learns the kernel's spill directory (``spill``) from the pipe, and commands to run at its death
  (``on_death``: what the host cannot kill by PID, such as a shell on another host behind ssh);
- on ``bye`` (a clean shutdown: the kernel already closed its shells, removed its copy and its files)
  exits at once;
- when the pidfd turns readable (the kernel died, by any signal): runs the ``on_death`` commands (each
  bounded by :data:`ON_DEATH_TIMEOUT`, while the connections they need still live), kills the recorded processes that
  still are the same processes, removes the ephemeral copies whose lock the kernel held
  (ephemeral.cleanup_kernel), removes the spill directory, and exits.

Nothing here trusts a PID or a command line: the kernel is its pidfd, and every other process is a
psutil handle whose start time is checked before a signal is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import psutil

from .spawn import TOOL_ENV

log = logging.getLogger("lxc_kernel.watchdog")

SCAN_INTERVAL = 1.0  # seconds between looks at the kernel's process tree
MESSAGE_LIMIT = 1 << 16
ON_DEATH_TIMEOUT = 5.0  # seconds each on_death command may take
# What the watchdog needs of the kernel's environment: the lock directory (XDG_RUNTIME_DIR, TMPDIR),
# the lxc-* tools of a non-root user (HOME), and where the package is (PYTHONPATH).
_PASS_ENV = ("HOME", "XDG_RUNTIME_DIR", "TMPDIR", "PYTHONPATH")


class Watchdog:
    """The kernel's side: start it, tell it things, and end it at a clean shutdown."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: int) -> None:
        self.proc = proc
        self._pipe = pipe

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tell(self, **message: object) -> None:
        """One JSON line to the watchdog; a watchdog that is gone is not the kernel's problem."""
        if self._pipe < 0:
            return
        try:
            os.write(self._pipe, json.dumps(message).encode() + b"\n")
        except OSError:
            pass

    def scan(self) -> None:
        self.tell(scan=True)

    def spill_dir(self, path: str) -> None:
        self.tell(spill=path)

    def on_death(self, key: str, argv: Sequence[str] | None) -> None:
        """Run ``argv`` (PATH-only environment) if the kernel dies; a later call with the same ``key``
        replaces it, None forgets it."""
        self.tell(on_death={"key": key, "argv": list(argv) if argv is not None else None})

    def stop(self, timeout: float = 2.0) -> None:
        """A clean shutdown: say bye, wait for the watchdog to leave (and reap it); kill it if it stays."""
        self.tell(bye=True)
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(1.0)


def start() -> Watchdog | None:
    """Start the kernel's watchdog; None (and a warning) where it cannot run."""
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError) as exc:
        log.warning("no watchdog for this kernel (pidfd_open: %s): a killed kernel leaves its processes", exc)
        return None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    env = {**TOOL_ENV, **{name: os.environ[name] for name in _PASS_ENV if name in os.environ}}
    argv = [sys.executable, "-m", "lxc_kernel.watchdog", "--kernel", str(os.getpid()),
            "--pidfd", str(pidfd), "--pipe", str(read_end)]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(pidfd, read_end),
            start_new_session=True, env=env, cwd="/",
        )
    except OSError as exc:
        log.warning("could not start the watchdog: %s", exc)
        os.close(write_end)
        return None
    finally:
        os.close(pidfd)
        os.close(read_end)
    return Watchdog(proc, write_end)


# -- the watchdog process -------------------------------------------------------------------------------


class Tracker:
    """The kernel's descendants as psutil handles, kept across scans."""

    def __init__(self, kernel_pid: int) -> None:
        self.kernel_pid = kernel_pid
        self.known: dict[int, psutil.Process] = {}

    def scan(self) -> None:
        try:
            children = psutil.Process(self.kernel_pid).children(recursive=True)
        except psutil.Error:
            return
        me = os.getpid()
        for proc in children:
            if proc.pid == me:
                continue
            old = self.known.get(proc.pid)
            if old is None or not old.is_running():
                self.known[proc.pid] = proc
        for pid, proc in list(self.known.items()):
            if not proc.is_running():
                del self.known[pid]

    def kill_all(self, grace: float = 3.0) -> int:
        """SIGKILL every recorded process that is still the same process, and what it started since."""
        victims: dict[int, psutil.Process] = {}
        for proc in list(self.known.values()):
            if not proc.is_running():
                continue
            victims[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    victims.setdefault(child.pid, child)
        from .transport import signal_for

        for proc in victims.values():
            # psutil checks the start time before signalling: a PID reused since is never hit. A sudo of a
            # non-root kernel gets SIGTERM, which it passes on to the root lxc-attach this user cannot signal.
            with contextlib.suppress(psutil.Error, PermissionError):
                proc.send_signal(signal_for(proc, signal.SIGKILL))
        with contextlib.suppress(psutil.Error):
            _, alive = psutil.wait_procs(list(victims.values()), timeout=grace)
            for proc in alive:
                with contextlib.suppress(psutil.Error, PermissionError):
                    proc.send_signal(signal.SIGKILL)
        return len(victims)


def run_on_death(commands: dict[str, list[str]]) -> None:
    for argv in commands.values():
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={"PATH": TOOL_ENV["PATH"]}, cwd="/", timeout=ON_DEATH_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("on_death command %s failed: %s", argv[:1], exc)


def cleanup(tracker: Tracker, spill_dirs: Sequence[str], on_death: dict[str, list[str]] | None = None) -> None:
    started = time.monotonic()
    run_on_death(on_death or {})
    killed = tracker.kill_all()
    from . import ephemeral, hostdirs  # the lxc-* side is needed only now

    try:
        copies = ephemeral.cleanup_kernel(tracker.kernel_pid)
    except Exception as exc:  # keep going: the spill files still go
        log.warning("ephemeral cleanup failed: %s", exc)
        copies = []
    for path in spill_dirs:
        hostdirs.remove_path(path)
    log.warning("kernel %d died: ended %d processes, removed %s in %.2f s", tracker.kernel_pid, killed,
                ", ".join(copies) or "no ephemeral copy", time.monotonic() - started)


def watch(kernel_pid: int, pidfd: int, pipe: int) -> int:
    tracker = Tracker(kernel_pid)
    spill_dirs: list[str] = []
    on_death: dict[str, list[str]] = {}
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(pipe, select.POLLIN)
    pending = b""
    next_scan = 0.0
    while True:
        now = time.monotonic()
        if now >= next_scan and not select.select([pidfd], [], [], 0)[0]:  # never look up a dead kernel's PID
            tracker.scan()
            next_scan = now + SCAN_INTERVAL
        events = poller.poll(max(0.0, next_scan - time.monotonic()) * 1000)
        for fd, _ in sorted(events, key=lambda e: e[0] != pipe):  # read the pipe first: a bye beats death
            if fd == pipe:
                try:
                    data = os.read(pipe, MESSAGE_LIMIT)
                except OSError:
                    data = b""
                if not data:
                    # The kernel closed its end: it is exiting (or gone). Its pidfd says which soon.
                    poller.unregister(pipe)
                    continue
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if message.get("bye"):
                        return 0
                    if isinstance(message.get("spill"), str):
                        spill_dirs.append(message["spill"])
                    if message.get("scan"):
                        next_scan = 0.0
                    remember(on_death, message.get("on_death"))
                pending = pending[-MESSAGE_LIMIT:]
            elif fd == pidfd:
                cleanup(tracker, spill_dirs, on_death)
                return 0


def remember(on_death: dict[str, list[str]], value: object) -> None:
    """Pure: take an ``on_death`` message ({"key": str, "argv": [str, ...] | None}) if it is well formed."""
    if not isinstance(value, dict) or not isinstance(value.get("key"), str):
        return
    argv = value.get("argv")
    if argv is None:
        on_death.pop(value["key"], None)
    elif isinstance(argv, list) and argv and all(isinstance(word, str) for word in argv):
        on_death[value["key"]] = argv


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxc_kernel.watchdog", description=__doc__.splitlines()[0])
    p.add_argument("--kernel", type=int, required=True)
    p.add_argument("--pidfd", type=int, required=True)
    p.add_argument("--pipe", type=int, required=True)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[lxc-kernel watchdog %(process)d] %(message)s")
    # The kernel's terminal or Jupyter may be gone: a signal from them must not end the cleanup.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    return watch(ns.kernel, ns.pidfd, ns.pipe)


if __name__ == "__main__":
    raise SystemExit(main())
