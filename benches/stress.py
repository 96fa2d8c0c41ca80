#!/usr/bin/env python3
"""Stress suite: concurrency, fuzz, faults and soak against real containers through jupyter_client.

    python3 benches/stress.py [--quick] [--seed S] [--part concurrency|fuzz|faults|soak ...] [--keep]

* ``concurrency``: N kernels (default 30; --quick 6) on one busybox and on one bash container, each in its
  own OS process with its own client, start together and run 100 cells (--quick 20) with ``allow_stdin``
  true that set, read and check state unique to that kernel. Wrong outputs, cross-talk, unrequested
  ``input_request``s, failed starts, start time, per-cell latency, kernel RSS and CPU per cell.
* ``fuzz``: 10,000 generated cells (--quick 500), half on each container, each followed by ``echo ok``:
  random bytes, unbalanced quoting, heredocs that never end, lines of 0-100 KB, binary output, ANSI/OSC
  soup, marker look-alikes, exec/exit/set -e/trap/stty/ulimit games, background jobs. Hangs (no message
  for 10 s), desyncs (``echo ok`` not answered ``ok``), kernel deaths, unrequested prompts.
* ``faults``: on busybox, hostfs and Debian (systemd) containers (--quick: busybox), each fault
  while a cell runs and while idle, in a kernel with ``--ephemeral BASE`` (its own overlay copy, so the
  fault hits that copy only): time to the reply, whether the message names the cause, whether the kernel
  lives and the next cell works, and which of the kernel's processes and containers are left after 5 s.
* ``soak``: 10,000 cells on one kernel (--quick 1,000): small output, 1 MB output, interrupts, magics.
  RSS growth, open fds, p95 latency of the first and last tenth.

Every random choice comes from ``--seed`` (default: random, printed first): ``--seed S --part P`` replays
part P exactly as it ran in the run that printed S. The JSON goes to stdout, the markdown table to stderr
(``--out FILE`` / ``--table FILE`` also write them to files). Exit status: 0 when every goal is met, 1 when
one is missed (a hang, a desync, a kernel death, cross-talk, an unrequested prompt, a wrong output, a next
cell that fails after a fault the kernel can survive, a leftover process or container, RSS growth over
10%, fds growing), 2 for bad arguments.

Containers: ``lxck-t10-sh`` (busybox), ``lxck-t10-bash`` (hostfs), ``lxck-t10-deb`` (debian; made on first
use, about a minute, and destroyed at the end unless ``--keep``), made with ``python -m
lxc_kernel.provision``. Kernels import the ``lxc_kernel`` of this checkout (PYTHONPATH). Every kernel's
processes are tracked by PID (psutil) and killed by PID if they outlive it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, ClassVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kclient
import psutil
from kclient import Cell, Kernel, clip, containers, fd_targets, pct, summary

SPEC = "lxck-t10"
PARTS = ("concurrency", "fuzz", "faults", "soak")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FULL = {"kernels": 30, "cells": 100, "fuzz": 10000, "soak": 1000 * 10, "fault_kinds": ("busybox", "hostfs", "debian")}
QUICK = {"kernels": 6, "cells": 20, "fuzz": 500, "soak": 1000, "fault_kinds": ("busybox",)}
HANG = 10.0  # seconds without a message: a hang (the issue's figure)
EXAMPLES = 8


def log(msg: str) -> None:
    print(f"[stress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sub_rng(seed: int, *names: object) -> random.Random:
    """A generator for one part (and driver) of the run, so that ``--part`` replays it alone."""
    return random.Random(":".join([str(seed), *map(str, names)]))


def tool(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=kclient.TOOL_ENV, timeout=timeout)


# ===================================================================================================
# Concurrency: one driver process per kernel.
# ===================================================================================================
def emit(event: str, **kw: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **kw}) + "\n")
    sys.stdout.flush()


def drive_concurrency(args: argparse.Namespace) -> int:
    rng = random.Random(args.driver_seed)
    me = args.id
    tag = f"K{me}x"
    res: dict[str, Any] = {"id": me, "start_ok": False, "cells": 0, "wrong": 0, "cross_talk": 0,
                           "unrequested": 0, "hung": 0, "latencies": [], "examples": []}
    try:
        k = Kernel(SPEC, [f"--LXCKernel.container={args.container}"], cwd=args.run_dir, ready_timeout=180)
    except Exception as exc:  # a failed start is a figure
        emit("ready", ok=False, error=clip(repr(exc)))
        emit("result", **res)
        return 0
    res["start_ok"], res["start_s"] = True, round(k.start_seconds, 3)
    emit("ready", ok=True, pid=k.pid)
    sys.stdin.readline()  # "go": every kernel is up
    work = f"/tmp/lxck-t10-{tag}{rng.randrange(16**6):06x}"
    x = None
    cwd = None
    fn = False
    cpu0 = k.cpu()
    try:
        c = k.run(f"mkdir -p {work} && cd {work} && x=; pwd", timeout=120, hang=60)
        cwd = work
        for n in range(args.cells):
            value = f"{tag}{n}_{rng.randrange(10**6)}"
            kind = rng.choice(["set", "get", "cd", "file", "arith", "func", "stderr", "sleep", "ls"])
            if kind == "set":
                code, want = f"x={value}; echo \"$x\"", value + "\n"
                x = value
            elif kind == "get":
                code, want = "echo \"x=$x\"", f"x={x or ''}\n"
            elif kind == "cd":
                sub = f"{work}/d{n}"
                code, want = f"mkdir -p {sub} && cd {sub} && pwd", sub + "\n"
                cwd = sub
            elif kind == "file":
                code, want = f"echo {value} > f{n}; cat f{n}; pwd", f"{value}\n{cwd}\n"
            elif kind == "arith":
                a, b = rng.randrange(1000), rng.randrange(1000)
                code, want = f"echo {tag}$(( {a} * {b} ))", f"{tag}{a * b}\n"
            elif kind == "func":
                code, want = (f"f() {{ echo \"{tag}f:$1\"; }}; f {n}", f"{tag}f:{n}\n") if not fn else \
                    (f"f {n}", f"{tag}f:{n}\n")
                fn = True
            elif kind == "stderr":
                code, want = f"echo {value} >&2; echo out{tag}{n}", f"out{tag}{n}\n"
            elif kind == "sleep":
                code, want = f"sleep 0.{rng.randrange(1, 3)}; echo {value}", value + "\n"
            else:
                code, want = "ls; echo \"$x\"", None
            c = k.run(code, timeout=120, hang=60)
            res["cells"] += 1
            if c.seconds is not None:
                res["latencies"].append(round(c.seconds, 5))
            problems = []
            if c.hung:
                res["hung"] += 1
                problems.append("hung")
            if c.requests or c.foreign:
                res["unrequested"] += len(c.requests) + c.foreign
                problems.append("unrequested")
            others = {int(m) for m in re.findall(r"K(\d+)x", c.stdout + c.stderr)} - {me}
            if others:
                res["cross_talk"] += 1
                problems.append(f"cross-talk from {sorted(others)}")
            if want is None:
                want = None if x is None else (x + "\n")
                ok = c.status == "ok" and (want is None or c.stdout.endswith(want))
            else:
                ok = c.status == "ok" and c.stdout == want
            if kind == "stderr" and value not in c.stderr:
                ok = False
            if not ok:
                res["wrong"] += 1
                problems.append("wrong")
            if problems and len(res["examples"]) < EXAMPLES:
                res["examples"].append({"problems": problems, "want": want, **c.brief()})
        k.run(f"cd / && rm -rf {work}", timeout=60, hang=30)
        res["cpu_per_cell_ms"] = round((k.cpu() - cpu0) / max(1, res["cells"]) * 1000, 3)
        res["rss_mb"] = round(k.rss_mb(), 1)
    except Exception:
        res["error"] = clip(traceback.format_exc(), 1500)
    finally:
        res["leftovers"] = k.shutdown()
    emit("result", **res)
    return 0


class DriverProc:
    """A driver subprocess: its JSON events read by a thread into a queue."""

    def __init__(self, argv: list[str], log_path: str) -> None:
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                  env={**os.environ}, cwd="/")
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[psutil.Process] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def wait_event(self, name: str, deadline: float) -> dict[str, Any] | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if ev.get("event") == name:
                return ev
            if ev.get("event") == "eof":
                return None

    def go(self) -> None:
        with contextlib.suppress(OSError):
            assert self.p.stdin is not None
            self.p.stdin.write(b"go\n")
            self.p.stdin.flush()

    def close(self, grace: float) -> list[str]:
        """Wait for the driver; kill it and its process tree by PID when it overstays."""
        killed = []
        try:
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(self.p.pid).children(recursive=True)
                for proc in [psutil.Process(self.p.pid), *tree]:
                    killed.append(kclient.describe(proc))
                    proc.kill()
            self.p.wait(10)
        self.log.close()
        return killed


def driver_argv(part: str, container: str, idx: int, seed: str, args: argparse.Namespace, n: int) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--driver", part, "--container", container, "--id", str(idx),
            "--driver-seed", seed, "--cells", str(n), "--run-dir", args.run_dir]


def part_concurrency(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, container in (("busybox", args.sh), ("bash", args.bash)):
        log(f"concurrency: {args.kernels} kernels x {args.cells} cells on {container} ({kind})")
        t0 = time.monotonic()
        drivers = [DriverProc(driver_argv("concurrency", container, i, f"{seed}:concurrency:{kind}:{i}", args,
                                          args.cells), os.path.join(args.run_dir, f"conc-{kind}-{i}.log"))
                   for i in range(args.kernels)]
        ready = [d.wait_event("ready", time.monotonic() + 240) for d in drivers]
        log(f"  {sum(1 for r in ready if r and r.get('ok'))}/{len(drivers)} kernels up in "
            f"{time.monotonic() - t0:.1f} s")
        for d in drivers:
            d.go()
        deadline = time.monotonic() + 120 + args.cells * 10
        results = [d.wait_event("result", deadline) for d in drivers]
        killed = [k for d in drivers for k in d.close(30)]
        out[kind] = agg_concurrency(container, ready, results, killed, time.monotonic() - t0)
        log(f"  {json.dumps({k: v for k, v in out[kind].items() if k != 'examples'})}")
    return out


def agg_concurrency(container: str, ready: list[Any], results: list[Any], killed: list[str],
                    wall: float) -> dict[str, Any]:
    got = [r for r in results if r]
    lat = [x for r in got for x in r["latencies"]]

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in got)

    return {
        "container": container, "kernels": len(results), "wall_s": round(wall, 1),
        "failed_starts": sum(1 for r in ready if not (r and r.get("ok"))),
        "no_result": sum(1 for r in results if not r) + sum(1 for r in got if r.get("error")),
        "cells": total("cells"), "wrong": total("wrong"), "cross_talk": total("cross_talk"),
        "unrequested": total("unrequested"), "hangs": total("hung"),
        "start_s_max": max((r.get("start_s", 0) for r in got), default=None),
        "latency_s": summary(lat),
        "rss_mb": summary([r["rss_mb"] for r in got if "rss_mb" in r], 1),
        "cpu_per_cell_ms": summary([r["cpu_per_cell_ms"] for r in got if "cpu_per_cell_ms" in r], 2),
        "leftovers": [x for r in got for x in r.get("leftovers", [])] + killed,
        "errors": [r["error"] for r in got if r.get("error")][:3],
        "examples": [e for r in got for e in r["examples"]][:EXAMPLES],
    }


# ===================================================================================================
# Fuzz
# ===================================================================================================
BG = "BGJOB"  # every line a background job may print carries this, so `echo ok` can be judged without it
ESC = "\x1b"
MARKER_SHAPES = [
    "<<lxck:{h}:S>>", "<<lxck:{h}:E0>>", "<<lxck:{h}:E1:d>>", "<<lxck:", "<<lxck:{h}", ">>", "<<lxck-display:{h}:BEGIN "
    "text/plain b64 x 0>>", "<<lxck-display:{h}:END>>", "<<lxck:{h}SECRET:E0>>", "<<lxck:{h}:E", "<<<<lxck:{h}:S>>>>",
]


class Fuzz:
    """Generated cells by category; each returns (category, code, expected stdout or None)."""

    WEIGHTS: ClassVar[dict[str, int]] = {
        "random_bytes": 14, "unbalanced": 12, "heredoc_open": 7, "long_line": 8, "binary_out": 9, "ansi_osc": 10,
        "markers": 12, "games": 18, "background": 10}

    def __init__(self, rng: random.Random, shell: str) -> None:
        self.rng = rng
        self.shell = shell  # "busybox" or "bash"
        self.cats = list(self.WEIGHTS)
        self.weights = [self.WEIGHTS[c] for c in self.cats]

    def next(self) -> tuple[str, str, str | None]:
        cat = self.rng.choices(self.cats, self.weights)[0]
        code, want = getattr(self, cat)()
        return cat, code, want

    def hexs(self, n: int = 8) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def random_bytes(self) -> tuple[str, None]:
        n = self.rng.choice([1, 2, 5, 20, 80, 300, 2000])
        pool = self.rng.choice([range(0, 256), range(0, 32), range(32, 127), range(128, 256)])
        raw = bytes(self.rng.choice(pool) for _ in range(n))
        # Jupyter carries text: bytes that are not UTF-8 arrive as surrogate escapes or U+FFFD.
        return raw.decode("latin-1"), None

    def unbalanced(self) -> tuple[str, None]:
        r = self.rng
        parts = ['echo "abc', "echo 'abc", "echo $(echo x", "echo `date", "echo ${x", "(( 1 +", "if true; then echo",
                 "case x in", "{ echo a", "echo $((", "f() {", "while :", "for i in", "echo \\", "'", '"', "`", "$(",
                 "echo ${x:-$(", "[[ -n", "echo $'\\", "cat <<", "x=(", "echo )", "}", "fi", "done", "esac", ";;",
                 "&&", "|", "echo a |", "echo $(( 1 / 0 ))", "echo ${x?unset}", "echo ${!}", "echo ${#}", "!!"]
        return "\n".join(r.choice(parts) for _ in range(r.randint(1, 4))), None

    def heredoc_open(self) -> tuple[str, None]:
        r = self.rng
        end = r.choice(["EOF", "END", "'Q'", '"Z"', "-EOF", "X" * 50])
        body = "\n".join(r.choice(["line", "$x", "$(echo sub)", "`echo b`", "EOF ", " END", "\t-EOF", ""])
                         for _ in range(r.randint(0, 6)))
        pre = r.choice(["cat", ": ", "read x", "cat >/dev/null", "sh -c 'cat'"]) if r.random() < 0.9 else "cat"
        return f"{pre} <<{end}\n{body}", None

    def long_line(self) -> tuple[str, str | None]:
        r = self.rng
        n = r.choice([0, 1, 100, 1023, 1024, 1025, 4095, 4096, 4097, 20000, 65536, 100000])
        n = min(100000, max(0, n + r.randint(-2, 2)))
        text = "".join(r.choice("abcdefghij-_.,:") for _ in range(n))
        if r.random() < 0.5:
            return f"printf '%s\\n' '{text}'", text + "\n"
        return f": {text}", ""

    def binary_out(self) -> tuple[str, None]:
        r = self.rng
        n = r.choice([1, 10, 1000, 5000, 70000])
        choice = r.randrange(5)
        if choice == 0:
            return f"head -c {n} /dev/urandom", None
        if choice == 1:
            esc = "".join(f"\\{r.randrange(256):03o}" for _ in range(r.randint(1, 60)))
            return f"printf '{esc}'", None
        if choice == 2:
            return r.choice(["printf '\\377\\376\\303\\050\\340\\200'", "printf '\\000\\000a\\000'",
                             "printf '\\355\\240\\200'", "printf '\\360\\220\\200'"]), None
        if choice == 3:
            return f"head -c {n} /dev/zero", None
        return f"head -c {n} /dev/urandom >&2", None

    def ansi_osc(self) -> tuple[str, None]:
        r = self.rng
        seqs = ["\\033[31m", "\\033[0m", "\\033[2J", "\\033[H", "\\033[1;1H", "\\033]0;title\\007",
                "\\033]8;;http://x\\033\\\\", "\\033[", "\\033]", "\\033P", "\\033P1$r\\033\\\\", "\\033[?1049h",
                "\\033[?1049l", "\\033[6n", "\\033[c", "\\033c", "\\033[?25l", "\\033[?25h", "\\033(0", "\\033(B",
                "\\033]52;c;aGk=\\007", "\\033]4;1;?\\007", "\\033[38;5;200m", "\\r", "\\b", "\\007", "\\033[K",
                "\\033[999C", "\\033[?2004h", "\\033]133;A\\007", "\\033_x\\033\\\\", "\\033^y\\033\\\\", "\\033[1000S"]
        text = "".join(r.choice(seqs) + r.choice(["", "x", "text", "\\n"]) for _ in range(r.randint(1, 30)))
        return f"printf '{text}'" + r.choice(["", " >&2", "; echo"]), None

    def markers(self) -> tuple[str, None]:
        r = self.rng
        out = []
        for _ in range(r.randint(1, 4)):
            shape = r.choice(MARKER_SHAPES).format(h=self.hexs(r.choice([4, 8, 16, 32])))
            out.append(r.choice([f"printf '%s' '{shape}'", f"echo '{shape}'", f"printf '%s' '{shape}' >&2",
                                 f"printf '%s\\n' '{shape}' '{shape}'"]))
        if r.random() < 0.2:
            out.append(r.choice(["echo \"$__lxck_d\"", "printf '%s' \"$__lxck_x\"", "echo $LXCK_DISPLAY",
                                 "ls -a /tmp/.lxck.* >/dev/null 2>&1", "cat /proc/$$/cmdline | tr '\\0' ' '"]))
        return r.choice(["; ", "\n"]).join(out), None

    def games(self) -> tuple[str, None]:
        r = self.rng
        bash = self.shell == "bash"
        common = [
            "exit", "exit 3", "exit 255", "set -e; false", "set -e; true", "set +e", "set -u; echo ${nope-}",
            "set +u", "set -x; echo traced; set +x", "set -x", "set +x", "set -f", "set +f", "set -C", "set +C",
            "set -o pipefail 2>/dev/null; false | true", "exec true", "exec sh -c 'exit 4'", "exec 3>&1",
            "exec 3>&-", "exec >/dev/null", "exec 2>/dev/null", "exec 1>&-", "exec 2>&-", "exec 0</dev/null",
            "trap 'echo trapped' INT", "trap '' INT", "trap - INT", "trap 'exit 5' INT", "trap 'echo bye' EXIT",
            "trap - EXIT", "trap 'false' ERR 2>/dev/null", "trap '' HUP", "trap - HUP", "stty -echo", "stty echo",
            "stty raw", "stty -raw", "stty -icanon", "stty icanon", "stty sane", "stty cols 20", "stty cols 200",
            "stty -onlcr", "stty onlcr", "stty -isig", "stty isig", "stty -icrnl", "stty icrnl", "stty -opost",
            "stty opost", "stty eof ^B", "stty intr ^G", "stty intr ^C", "stty erase x", "stty erase ^?",
            "ulimit -c 0", "ulimit -s 8192", "( ulimit -n 12; ls /proc/self/fd )", "( ulimit -v 20000; ls )",
            "( ulimit -t 1; while :; do :; done )", "( ulimit -f 1; head -c 5000 /dev/zero > /tmp/.t10f ); "
            "rm -f /tmp/.t10f", "ulimit -n 256", "ulimit -n 1024", "IFS=x", "IFS=' '", "unset IFS",
            "PATH=/nowhere", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PS1='$ '", "PS2='> '", "umask 777",
            "umask 022", "cd /nowhere", "cd /", "kill -STOP $$", "kill -INT $$", "kill -WINCH $$",
            "kill -TERM $$", "kill -HUP $$", "kill -QUIT $$", "exec 27>&-", "exec 28>&-", "exec 29>&-",
            "exec 28>/dev/null", "exec 29>&-; exec 28>&-", "alias ll='ls -l'", "unalias -a",
        ]
        extra = [
            "set -o vi", "set -o emacs", "set +o emacs", "shopt -s failglob", "shopt -u failglob",
            "shopt -s nullglob", "shopt -u nullglob", "shopt -s extglob", "set -o posix", "set +o posix",
            "trap 'echo dbg >/dev/null' DEBUG", "trap - DEBUG", "trap 'false' RETURN", "trap - RETURN",
            "exec bash --noediting </dev/null", "enable -n echo; enable echo", "set -T", "set +T", "shopt -s lastpipe",
            "declare -r RO=1 2>/dev/null", "HISTFILE=/dev/null", "exec {fd}>&1; exec {fd}>&-", "set -o history",
            "set +o history", "BASH_ENV=/nowhere", "PROMPT_COMMAND='echo pc'", "unset PROMPT_COMMAND",
        ] if bash else ["exec sh </dev/null", "set -o vi", "set +o vi", "set -o emacs"]
        pool = common + extra
        code = "; ".join(r.choice(pool) for _ in range(r.randint(1, 3)))
        # An `unalias`/`stty sane` cleanup sometimes, as a user would after their game.
        if r.random() < 0.3:
            code += "\n" + r.choice(["stty sane", "unalias -a 2>/dev/null; true", "trap - INT EXIT HUP", "set +eu"])
        return code, None

    def background(self) -> tuple[str, None]:
        r = self.rng
        pool = [
            "sleep 2 &", f"(sleep 0.{r.randint(1, 9)}; echo {BG}) &", f"( echo {BG}; sleep 1; echo {BG} ) &",
            "sleep 1 & wait $!", "sleep 3 & disown 2>/dev/null", "setsid sleep 2 &", "nohup sleep 1 >/dev/null 2>&1 &",
            f"(sleep 0.2; echo {BG} >&2) &", f"for i in 1 2 3; do (echo {BG}$i) & done; wait $!",
            "(yes >/dev/null & p=$!; sleep 0.3; kill $p) &", "sleep 3 & kill %1 2>/dev/null; true",
            "sleep 4 & jobs >/dev/null", "(trap '' HUP INT; sleep 2) &", f"(exec 1>&-; sleep 0.5; echo {BG}) &",
            f"{{ sleep 0.3; echo {BG}; }} </dev/null &", "sleep 1 </dev/null >/dev/null 2>&1 &",
        ]
        return "; ".join(r.choice(pool) for _ in range(r.randint(1, 3))), None


# Errors that report a shell that ended (or lost its framing) because of the previous cell, not a desync.
ENDED = ("ShellExited", "FramingLost")


def clean_ok(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if BG not in line)


def drive_fuzz(args: argparse.Namespace) -> int:
    rng = random.Random(args.driver_seed)
    fuzz = Fuzz(rng, args.kind)
    extra = [f"--LXCKernel.container={args.container}"]
    res: dict[str, Any] = {"kind": args.kind, "cells": 0, "hangs": 0, "desyncs": 0, "deaths": 0, "unrequested": 0,
                           "wrong_echo": 0, "restarts": 0, "examples": [], "by_category": {}, "latencies": [],
                           "shell_ended_reported": 0, "ended_by": {}}

    def example(problem: str, i: int, cat: str, c: Cell, extra_info: dict[str, Any] | None = None) -> None:
        if len(res["examples"]) < 4 * EXAMPLES:
            res["examples"].append({"problem": problem, "index": i, "category": cat, **c.brief(), **(extra_info or {})})

    k = Kernel(SPEC, extra, cwd=args.run_dir, ready_timeout=180)
    leftovers: list[str] = []
    try:
        for i in range(args.cells):
            cat, code, want = fuzz.next()
            stats = res["by_category"].setdefault(cat, {"n": 0, "ok": 0})
            stats["n"] += 1
            c = k.run(code, timeout=120, hang=HANG)
            res["cells"] += 1
            if c.hung or (c.seconds or 0) > 5:
                print(f"[fuzz {args.kind}] cell {i} ({cat}) took {c.seconds} s, hung {c.hung}: {code[:200]!r}",
                      file=sys.stderr, flush=True)
            if c.status == "ok":
                stats["ok"] += 1
            if c.seconds is not None:
                res["latencies"].append(c.seconds)
            broken = False
            if c.hung:
                res["hangs"] += 1
                example("hang", i, cat, c)
                broken = True
            if c.requests or c.foreign:
                res["unrequested"] += len(c.requests) + c.foreign
                example("unrequested prompt", i, cat, c)
            if c.status == "error" and c.ename in ENDED:
                # An earlier cell ended the shell (`exec 0</dev/null` in ash exits at the next prompt) and this
                # cell says so: a reported end, not a wrong output (seed 20261130, busybox driver 1, cell 1388).
                res["shell_ended_reported"] += 1
                res["ended_by"][c.ename] = res["ended_by"].get(c.ename, 0) + 1
            elif want is not None and not c.hung and (c.status != "ok" or clean_ok(c.stdout) != want):
                res["wrong_echo"] += 1
                example("wrong output", i, cat, c, {"want_len": len(want), "got_len": c.chars["stdout"]})
            if not broken:
                ok = k.run("echo ok", timeout=120, hang=HANG)
                if ok.requests or ok.foreign:
                    res["unrequested"] += len(ok.requests) + ok.foreign
                    example("unrequested prompt in echo ok", i, cat, ok, {"after": clip(code, 300)})
                if not ok.hung and ok.status == "error" and ok.ename in ENDED:
                    # The cell ended the shell (or its framing) and the kernel said so on the next cell: not a
                    # desync if the fresh shell then answers.
                    res["shell_ended_reported"] += 1
                    res["ended_by"][ok.ename] = res["ended_by"].get(ok.ename, 0) + 1
                    ok = k.run("echo ok", timeout=120, hang=HANG)
                if ok.hung or ok.status != "ok" or clean_ok(ok.stdout) != "ok\n":
                    res["desyncs"] += 1
                    example("desync", i, cat, ok, {"after": clip(code, 300)})
                    broken = ok.hung
            if not k.alive():
                res["deaths"] += 1
                example("kernel died", i, cat, c)
                broken = True
            if broken:
                # Interrupt; a kernel that still does not answer is replaced (its leftovers counted).
                if k.alive():
                    with contextlib.suppress(Exception):
                        k.interrupt()
                    probe = k.run("echo ok", timeout=20, hang=HANG)
                    if not probe.hung and k.alive():
                        continue
                leftovers += k.shutdown()
                res["restarts"] += 1
                k = Kernel(SPEC, extra, cwd=args.run_dir, ready_timeout=180)
            if (i + 1) % 500 == 0:
                print(f"[fuzz {args.kind}] {i + 1}/{args.cells}", file=sys.stderr, flush=True)
    except Exception:
        res["error"] = clip(traceback.format_exc(), 1500)
    finally:
        leftovers += k.shutdown()
    res["leftovers"] = leftovers
    emit("result", **res)
    return 0


FUZZ_DRIVERS = 2


def merge_fuzz(kind: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One container's figures from its drivers' results (examples say which driver: replay with its seed)."""
    out: dict[str, Any] = {"kind": kind, "drivers": len(parts), "by_category": {}, "ended_by": {}, "examples": [],
                           "leftovers": []}
    for key in ("cells", "hangs", "desyncs", "deaths", "unrequested", "wrong_echo", "restarts",
                "shell_ended_reported"):
        out[key] = sum(int(p.get(key, 0)) for p in parts)
    lat: list[float] = []
    for p in parts:
        lat += p.get("latencies", [])
        out["leftovers"] += p.get("leftovers", [])
        out["examples"] += [{"driver": p["driver"], **e} for e in p.get("examples", [])]
        for name, n in p.get("ended_by", {}).items():
            out["ended_by"][name] = out["ended_by"].get(name, 0) + n
        for cat, st in p.get("by_category", {}).items():
            have = out["by_category"].setdefault(cat, {"n": 0, "ok": 0})
            have["n"] += st["n"]
            have["ok"] += st["ok"]
        if p.get("error"):
            out["error"] = (out.get("error", "") + f"[driver {p['driver']}] {p['error']}")[:3000]
    out["latency_s"] = summary(lat)
    return out


def part_fuzz(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    # Half the cells on each container, each half split over FUZZ_DRIVERS kernels (a driver process each):
    # many cells wait on sleeps and jobs, so two kernels per container keep the 2 cores busy.
    n = FUZZ_DRIVERS
    per = {"busybox": args.fuzz // 2, "bash": args.fuzz - args.fuzz // 2}
    log(f"fuzz: {args.fuzz} cells ({per['busybox']} busybox, {per['bash']} bash, {n} kernels each), "
        "each followed by echo ok")
    drivers: dict[str, list[DriverProc]] = {}
    for kind, container in (("busybox", args.sh), ("bash", args.bash)):
        drivers[kind] = []
        for j in range(n):
            cells = per[kind] // n + (1 if j < per[kind] % n else 0)
            argv = [*driver_argv("fuzz", container, j, f"{seed}:fuzz:{kind}:{j}", args, cells), "--kind", kind]
            drivers[kind].append(DriverProc(argv, os.path.join(args.run_dir, f"fuzz-{kind}-{j}.log")))
    deadline = time.monotonic() + 300 + args.fuzz * 3
    out: dict[str, Any] = {}
    for kind, procs in drivers.items():
        parts = []
        for j, d in enumerate(procs):
            r = d.wait_event("result", deadline) or {"error": "no result (driver killed)", "cells": 0}
            r["leftovers"] = r.get("leftovers", []) + d.close(30)
            r["driver"] = j
            parts.append(r)
        out[kind] = merge_fuzz(kind, parts)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    log(f"  fuzz done in {out['wall_s']} s: " + ", ".join(
        f"{kind}: " + " ".join(f"{key}={out[kind].get(key)}" for key in
                               ("cells", "hangs", "desyncs", "deaths", "unrequested", "wrong_echo"))
        for kind in drivers))
    return out


# ===================================================================================================
# Faults
# ===================================================================================================
FAULTS = ("kill_attach", "kill_stderr_reader", "lxc_stop_k", "freeze", "destroy", "oom", "exit_with_job",
          "tmp_full", "session_dir_removed", "kernel_sigkill")
# Words an error reply must contain to name the cause (any of them), per fault that is expected to fail a cell.
CAUSE = {
    "kill_attach": ("lxc-attach", "connection", "killed", "signal", "exited", "ended"),
    "lxc_stop_k": ("STOPPED", "stopped", "does not exist", "not running", "MISSING"),
    "freeze": ("FROZEN", "frozen", "unfreeze"),
    # Mid-cell, lxc-destroy -f first stops the container: STOPPED is what the kernel sees at that moment.
    "destroy": ("does not exist", "destroyed", "MISSING", "missing", "STOPPED"),
    "oom": ("out-of-memory", "OOM", "oom-kill"),
    "exit_with_job": ("exit",),
    "tmp_full": ("space", "/tmp", "full"),
}
# Faults after which the container is gone: the next cell must fail, naming the cause, not work.
GONE = {"lxc_stop_k", "destroy"}
RUN_CELL = "for i in 1 2 3 4 5 6 7 8; do echo o$i; echo e$i >&2; sleep 0.5; done"


class FaultRun:
    def __init__(self, kind: str, base: str, fault: str, when: str, run_dir: str) -> None:
        self.kind, self.base, self.fault, self.when, self.run_dir = kind, base, fault, when, run_dir
        self.rec: dict[str, Any] = {"kind": kind, "fault": fault, "when": when}
        self.k: Kernel | None = None
        self.copy: str | None = None

    # -- finding the kernel's processes, by PID --
    def shell_pid(self) -> int | None:
        """The host PID of the kernel's shell: the descendant whose innermost namespace PID is what ``$$``
        printed in the container."""
        assert self.k is not None
        c = self.k.run("echo $$", timeout=30)
        inner = c.stdout.strip()
        for p in self.k.descendants():
            with contextlib.suppress(OSError), open(f"/proc/{p.pid}/status") as fh:
                for line in fh:
                    if line.startswith("NSpid:") and line.split()[-1] == inner and len(line.split()) > 2:
                        return p.pid
        return None

    def attach_pid(self) -> int | None:
        """The kernel's child that holds the PTY (the shell's lxc-attach)."""
        assert self.k is not None
        with contextlib.suppress(psutil.Error):
            for p in self.k.process.children():
                if fd_targets(p.pid).get(0, "").startswith("/dev/pts/"):
                    return p.pid
        return None

    def reader_pids(self) -> list[int]:
        """The stderr reader: a descendant reading the session's FIFO on its stdin."""
        assert self.k is not None
        return [p.pid for p in self.k.descendants()
                if re.search(r"/tmp/\.lxck\.[0-9]+\.[^/]+/err$", fd_targets(p.pid).get(0, ""))]

    def lxc(self, *argv: str, timeout: float = 60) -> str:
        r = tool(*argv, timeout=timeout)
        return (r.stdout + r.stderr).strip()

    # -- the fault itself --
    def prepare(self) -> None:
        """What must be in place before the fault: the shell up, limits set."""
        assert self.k is not None and self.copy is not None
        if self.fault == "tmp_full":
            # A 2 MB tmpfs on the copy's /tmp before the shell starts, so its session directory is on it.
            # The containers drop CAP_SYS_ADMIN, so the host mounts it in the copy's mount namespace.
            init = self.lxc("lxc-info", "-n", self.copy, "-pH")
            self.rec["mount"] = self.lxc("nsenter", "-t", init, "-m", "--", "mount", "-t", "tmpfs", "-o",
                                         "size=2m,mode=1777", "tmpfs", "/tmp") or "ok"
        first = self.k.run("t10state=kept", timeout=60)
        self.rec["first_cell"] = first.status
        if self.fault == "oom":
            # Hybrid cgroups v1 here: the copy's memory cgroup gets a 64 MB limit; the shell is made the OOM
            # killer's first choice, then a process in the container allocates past the limit.
            self.rec["limit"] = self.lxc("lxc-cgroup", "-n", self.copy, "memory.limit_in_bytes", "64M")
            pid = self.shell_pid()
            if pid:
                with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
                    fh.write("1000")
            self.rec["shell_pid_found"] = bool(pid)
        if self.fault == "exit_with_job" and self.when == "idle":
            # The shell ends 1 s later, idle, while a job that ignores SIGHUP holds the terminal.
            self.k.run("(trap '' HUP; exec sleep 300) & (sleep 1; kill -HUP $$) >/dev/null 2>&1 &", timeout=30)

    def inject(self) -> str:
        assert self.k is not None and self.copy is not None
        f = self.fault
        if f == "kill_attach":
            pid = self.attach_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
            return f"lxc-attach {pid}"
        if f == "kill_stderr_reader":
            pids = self.reader_pids()
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return f"readers {pids}"
        if f == "lxc_stop_k":
            return self.lxc("lxc-stop", "-n", self.copy, "-k")
        if f == "freeze":
            return self.lxc("lxc-freeze", "-n", self.copy)
        if f == "destroy":
            return self.lxc("lxc-destroy", "-f", "-n", self.copy)
        if f == "oom":
            threading.Thread(target=self.lxc, args=("lxc-attach", "-n", self.copy, "--clear-env", "--", "dd",
                                                     "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"),
                             daemon=True).start()
            return "dd bs=200M"
        if f == "exit_with_job":
            return "in the cell"
        if f == "tmp_full":
            return self.lxc("lxc-attach", "-n", self.copy, "--clear-env", "--", "sh", "-c",
                            "head -c 4000000 /dev/zero > /tmp/fill; df /tmp | tail -n 1")
        if f == "session_dir_removed":
            return self.lxc("lxc-attach", "-n", self.copy, "--clear-env", "--", "sh", "-c",
                            "rm -rf /tmp/.lxck.*; ls -a /tmp")
        if f == "kernel_sigkill":
            os.kill(self.k.pid, signal.SIGKILL)
            return f"kernel {self.k.pid}"
        raise ValueError(f)

    def recover(self) -> None:
        if self.fault == "freeze" and self.copy:
            self.lxc("lxc-unfreeze", "-n", self.copy)

    def run(self) -> dict[str, Any]:
        rec = self.rec
        t0 = time.monotonic()
        self.k = k = Kernel(SPEC, [f"--LXCKernel.ephemeral={self.base}"], cwd=self.run_dir, ready_timeout=120,
                            sample=0.1)
        try:
            rec["start_s"] = round(k.start_seconds, 2)
            copies = containers(f"{self.base}-eph-{k.pid}-")
            deadline = time.monotonic() + 60
            while not copies and time.monotonic() < deadline:
                k.run("true", timeout=60)
                copies = containers(f"{self.base}-eph-{k.pid}-")
            self.copy = copies[0] if copies else None
            rec["copy"] = self.copy
            if not self.copy:
                raise RuntimeError("no ephemeral copy")
            self.prepare()
            if self.when == "running":
                code = "(trap '' HUP; exec sleep 300) & sleep 0.3; exit 3" if self.fault == "exit_with_job" \
                    else RUN_CELL
                msg_id = k.send(code)
                if self.fault != "exit_with_job":
                    time.sleep(1.0)
                t_fault = time.perf_counter()
                rec["inject"] = clip(self.inject(), 200)
                cell = k.collect(msg_id, Cell(code), timeout=45, start=t_fault) if self.fault != "kernel_sigkill" \
                    else Cell(code)
            else:
                t_fault = time.perf_counter()
                rec["inject"] = clip(self.inject(), 200)
                if self.fault == "exit_with_job":
                    time.sleep(2.0)
                elif self.fault != "kernel_sigkill":
                    time.sleep(1.0)
                code = 'echo "probe ${t10state:-lost}"'
                if self.fault == "tmp_full":
                    code = ": " + "x" * 3000 + "\n" + code
                cell = k.run(code, timeout=45) if self.fault != "kernel_sigkill" else Cell(code)
            rec["reply"] = cell.status
            rec["reply_s"] = None if cell.seconds is None else round(cell.seconds, 3)
            rec["hung"] = cell.hung if self.fault != "kernel_sigkill" else False
            message = " ".join([cell.evalue, cell.stderr, cell.stdout])
            rec["message"] = clip(" | ".join(x for x in (cell.ename + ": " + cell.evalue if cell.reply and
                                                           cell.status != "ok" else "", cell.stderr.strip()) if x), 300)
            if cell.status == "error" and self.fault in CAUSE:
                rec["names_cause"] = any(w in message for w in CAUSE[self.fault])
            if self.when == "idle" and cell.status == "ok" and "lost" in cell.stdout:
                # The shell was replaced without a word: its state is gone and the user was not told.
                rec["state_lost_silently"] = not cell.stderr.strip()
            self.recover()
            if self.fault == "kernel_sigkill":
                with contextlib.suppress(Exception):
                    k.km.provisioner.process.wait(10)  # type: ignore[union-attr]
                rec["kernel_alive"] = k.alive()
                rec["next_ok"] = None
            else:
                nxt = k.run("echo next", timeout=45)
                rec["next"] = nxt.status
                rec["next_ok"] = nxt.status == "ok" and nxt.stdout == "next\n"
                rec["next_hung"] = nxt.hung
                if self.fault in GONE:
                    rec["next_message"] = clip(nxt.evalue, 200)
                    rec["next_names_cause"] = any(w in nxt.evalue for w in CAUSE[self.fault])
                if self.fault == "tmp_full":
                    big = k.run(": " + "y" * 3000 + "\necho big", timeout=45)
                    rec["long_cell"] = big.status + (": " + clip(big.evalue, 150) if big.status != "ok" else "")
                rec["kernel_alive"] = k.alive()
        except Exception:
            rec["error"] = clip(traceback.format_exc(), 1200)
        finally:
            rec.update(self.finish())
        rec["wall_s"] = round(time.monotonic() - t0, 1)
        return rec

    def finish(self) -> dict[str, Any]:
        """Shut the kernel down (unless it was killed), then what is left of it after 5 s: processes and its
        ephemeral copy. Both are then removed by PID / name so that the next run starts clean."""
        assert self.k is not None
        k = self.k
        out: dict[str, Any] = {}
        if self.copy:
            with contextlib.suppress(Exception):
                tool("lxc-unfreeze", "-n", self.copy, timeout=30)
        k.note()
        k._stop.set()
        with contextlib.suppress(Exception):
            k.kc.stop_channels()
        if self.fault != "kernel_sigkill":
            with contextlib.suppress(Exception):
                k.km.shutdown_kernel(now=False)
        else:
            with contextlib.suppress(Exception):
                k.km.provisioner.process.wait(10)  # type: ignore[union-attr]
        t = time.monotonic()
        left = k.leftovers(5.0)
        copies = containers(f"{self.base}-eph-{k.pid}-")
        while copies and time.monotonic() < t + 5.0:
            time.sleep(0.2)
            copies = containers(f"{self.base}-eph-{k.pid}-")
        out["left_processes"] = [kclient.describe(p) for p in left]
        out["left_containers"] = copies
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for name in copies:
            tool("lxc-unfreeze", "-n", name, timeout=30)
            tool("lxc-stop", "-n", name, "-k", timeout=60)
            tool("lxc-destroy", "-f", "-n", name, timeout=60)
        with contextlib.suppress(Exception):
            k.km.cleanup_resources()
        shutil.rmtree(k.ipc_dir, ignore_errors=True)
        return out


def judge_fault(r: dict[str, Any]) -> list[str]:
    """What this fault run missed."""
    miss = []
    f = r["fault"]
    if r.get("error"):
        miss.append("suite error")
    if r.get("hung") or r.get("next_hung"):
        miss.append("hang")
    if f != "kernel_sigkill" and r.get("kernel_alive") is False:
        miss.append("kernel died")
    if f not in GONE and f != "kernel_sigkill" and r.get("next_ok") is False:
        miss.append("next cell failed")
    if f in GONE and r.get("next_names_cause") is False:
        miss.append("next error does not name the cause")
    if r.get("names_cause") is False:
        miss.append("error does not name the cause")
    if r.get("state_lost_silently"):
        miss.append("state lost without a word")
    if r.get("left_processes") or r.get("left_containers"):
        miss.append("leftovers")
    return miss


def part_faults(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    bases = {"busybox": args.sh, "hostfs": args.bash, "debian": args.deb}
    runs = []
    t0 = time.monotonic()
    faults = [f for f in FAULTS if not args.fault or f in args.fault]
    for kind in args.fault_kinds:
        if kind == "debian":
            ensure(args.deb, "debian")
        for fault in faults:
            for when in ("running", "idle"):
                r = FaultRun(kind, bases[kind], fault, when, args.run_dir).run()
                r["missed"] = judge_fault(r)
                runs.append(r)
                log(f"  fault {kind:7} {fault:19} {when:7} reply {r.get('reply')} in {r.get('reply_s')} s, "
                    f"next {r.get('next')}, alive {r.get('kernel_alive')}, missed {r['missed']}"
                    + (f" [{r.get('message', '')[:100]}]" if r.get("message") else ""))
    return {"runs": runs, "wall_s": round(time.monotonic() - t0, 1)}


# ===================================================================================================
# Soak
# ===================================================================================================
def part_soak(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = sub_rng(seed, "soak")
    n = args.soak
    log(f"soak: {n} cells on one kernel ({args.bash})")
    t0 = time.monotonic()
    k = Kernel(SPEC, [f"--LXCKernel.container={args.bash}"], cwd=args.run_dir, ready_timeout=120)
    res: dict[str, Any] = {"cells": 0, "wrong": 0, "hangs": 0, "deaths": 0, "unrequested": 0, "interrupts": 0,
                           "interrupt_s": [], "big": 0, "magics": 0, "examples": []}
    tenth = max(1, n // 10)
    lat: list[list[float]] = [[] for _ in range(10)]
    rss: list[float] = []
    fds: list[int] = []
    magics = ["%timeout", "%lxc status", "%lsmagic", "%output", "%help"]
    try:
        k.run("s=0", timeout=60)
        # Warm-up, not counted: one cell of each kind, so that what the kernel opens once and keeps (a spill
        # directory, the interrupt path) is in the baseline and only growth after it counts.
        k.run("yes abcdefghi | head -c 1000000", timeout=120)
        for magic in magics:
            k.run(magic, timeout=60)
        warm = k.send("sleep 30")
        time.sleep(0.3)
        k.interrupt()
        k.collect(warm, Cell("sleep 30"), timeout=60)
        for i in range(n):
            roll = rng.random()
            if roll < 0.02:
                kind, code, want = "big", "yes abcdefghi | head -c 1000000", None
            elif roll < 0.04:
                kind, code, want = "interrupt", "sleep 30", None
            elif roll < 0.09:
                kind, code, want = "magic", rng.choice(magics), None
            else:
                v = rng.randrange(10**9)
                kind, code, want = "small", f"s=$((s+1)); echo {v} $s", None
                want = f"{v} "  # the counter is checked below
            if kind == "interrupt":
                msg_id = k.send(code)
                time.sleep(rng.uniform(0.1, 0.4))
                ti = time.perf_counter()
                k.interrupt()
                c = k.collect(msg_id, Cell(code), timeout=60, hang=HANG, start=ti)
                res["interrupts"] += 1
                if c.seconds is not None:
                    res["interrupt_s"].append(c.seconds)
                good = not c.hung and c.status == "error"
            else:
                c = k.run(code, timeout=120, hang=HANG)
                if kind == "big":
                    res["big"] += 1
                    good = c.status == "ok" and c.chars["stdout"] == 1000000 and c.stdout[:10] == "abcdefghi\n"
                elif kind == "magic":
                    res["magics"] += 1
                    good = c.status == "ok"
                else:
                    good = c.status == "ok" and c.stdout.startswith(want) and c.stdout.endswith("\n")
                    if good and c.seconds is not None:
                        lat[min(9, i // tenth)].append(c.seconds)
            res["cells"] += 1
            if c.hung:
                res["hangs"] += 1
            if c.requests or c.foreign:
                res["unrequested"] += len(c.requests) + c.foreign
            if not good:
                res["wrong"] += 1
                if len(res["examples"]) < EXAMPLES:
                    res["examples"].append({"index": i, "kind": kind, **c.brief()})
            if not k.alive():
                res["deaths"] += 1
                break
            if c.hung:
                break
            if (i + 1) % tenth == 0:
                rss.append(round(k.rss_mb(), 2))
                fds.append(k.fds())
                if (i + 1) % (tenth * 2) == 0:
                    log(f"  soak {i + 1}/{n}: rss {rss[-1]} MB, fds {fds[-1]}")
    except Exception:
        res["error"] = clip(traceback.format_exc(), 1500)
    finally:
        res["leftovers"] = k.shutdown()
    res["interrupt_s"] = summary(res["interrupt_s"], 3)
    res["rss_mb_by_tenth"] = rss
    res["fds_by_tenth"] = fds
    if len(rss) >= 2:
        res["rss_growth_pct"] = round((rss[-1] / rss[0] - 1) * 100, 1)
        res["fd_growth"] = fds[-1] - fds[0]
    first, last = lat[0], [x for x in lat[-1]] or lat[-2]
    if first and last:
        res["p95_first_ms"] = round(pct(first, 95) * 1000, 2)
        res["p95_last_ms"] = round(pct(last, 95) * 1000, 2)
        res["median_first_ms"] = round(sorted(first)[len(first) // 2] * 1000, 2)
        res["median_last_ms"] = round(sorted(last)[len(last) // 2] * 1000, 2)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    log(f"  soak: {json.dumps({k: v for k, v in res.items() if k != 'examples'})}")
    return res


# ===================================================================================================
# Goals, table, main
# ===================================================================================================
def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of the run: (part, what, value, target, pass)."""
    out: list[dict[str, Any]] = []

    def add(part: str, what: str, value: Any, target: str, ok: bool) -> None:
        out.append({"part": part, "what": what, "value": value, "target": target, "pass": bool(ok)})

    conc = result.get("concurrency")
    if conc:
        for kind, r in conc.items():
            p = f"concurrency ({kind}, {r['kernels']} kernels x {r['cells'] // max(1, r['kernels'])} cells)"
            add(p, "failed starts, no result", f"{r['failed_starts']}, {r['no_result']}", "0, 0",
                r["failed_starts"] == 0 and r["no_result"] == 0)
            add(p, "wrong outputs / cross-talk / unrequested prompts / hangs",
                f"{r['wrong']} / {r['cross_talk']} / {r['unrequested']} / {r['hangs']}", "0 / 0 / 0 / 0",
                r["wrong"] == 0 and r["cross_talk"] == 0 and r["unrequested"] == 0 and r["hangs"] == 0)
            lat = r["latency_s"]
            add(p, "start time max; cell latency median / p95 / max",
                f"{r['start_s_max']} s; {ms(lat.get('median'))} / {ms(lat.get('p95'))} / {ms(lat.get('max'))} ms",
                "(figure)", True)
            add(p, "kernel RSS median / max; kernel CPU per cell median",
                f"{r['rss_mb'].get('median')} / {r['rss_mb'].get('max')} MB; "
                f"{r['cpu_per_cell_ms'].get('median')} ms", "(figure)", True)
            add(p, "leftover processes", len(r["leftovers"]), "0", not r["leftovers"])
    fz = result.get("fuzz")
    if fz:
        for kind in ("busybox", "bash"):
            r = fz.get(kind)
            if not r:
                continue
            p = f"fuzz ({kind}, {r.get('cells', 0)} cells + echo ok)"
            add(p, "hangs / desyncs / kernel deaths / unrequested prompts",
                f"{r.get('hangs')} / {r.get('desyncs')} / {r.get('deaths')} / {r.get('unrequested')}",
                "0 / 0 / 0 / 0", not r.get("error") and r.get("hangs") == 0 and r.get("desyncs") == 0
                and r.get("deaths") == 0 and r.get("unrequested") == 0)
            add(p, "long lines echoed wrong", r.get("wrong_echo"), "0", r.get("wrong_echo") == 0)
            ended = ", ".join(f"{k} {v}" for k, v in sorted(r.get("ended_by", {}).items())) or "0"
            add(p, "shells a cell ended, said on the next cell (then `echo ok` answered)", ended, "(figure)", True)
            lat = r.get("latency_s", {})
            add(p, "fuzz cell latency median / p95 / max",
                f"{ms(lat.get('median'))} / {ms(lat.get('p95'))} / {ms(lat.get('max'))} ms", "(figure)", True)
            add(p, "leftover processes", len(r.get("leftovers", [])), "0", not r.get("leftovers"))
    fl = result.get("faults")
    if fl:
        for r in fl["runs"]:
            p = f"fault {r['fault']} ({r['kind']}, {r['when']})"
            reply = "n/a" if r["fault"] == "kernel_sigkill" else f"{r.get('reply')} in {r.get('reply_s')} s"
            cause = {True: "names cause", False: "does NOT name cause"}.get(r.get("names_cause"), "")
            nxt = {True: "next ok", False: "next fails", None: "next n/a"}[r.get("next_ok")]
            if r["fault"] in GONE:
                nxt += " (" + ("names cause" if r.get("next_names_cause") else "cause not named") + ")"
            left = len(r.get("left_processes", [])) + len(r.get("left_containers", []))
            value = (f"{reply}{', ' + cause if cause else ''}; alive {r.get('kernel_alive')}; {nxt}; "
                     f"left after 5 s: {left}")
            add(p, "reply; cause; kernel alive; next cell; leftovers", value,
                "no hang, alive, next ok, cause named, 0 left", not r["missed"])
    sk = result.get("soak")
    if sk:
        p = f"soak ({sk.get('cells')} cells: {sk.get('big')} x 1 MB, {sk.get('interrupts')} interrupts, " \
            f"{sk.get('magics')} magics)"
        add(p, "wrong / hangs / deaths / unrequested", f"{sk['wrong']} / {sk['hangs']} / {sk['deaths']} / "
            f"{sk['unrequested']}", "0 / 0 / 0 / 0", not sk.get("error") and sk["wrong"] == 0 and sk["hangs"] == 0
            and sk["deaths"] == 0 and sk["unrequested"] == 0)
        rss = sk.get("rss_mb_by_tenth") or [None]
        add(p, "kernel RSS after first tenth -> end", f"{rss[0]} -> {rss[-1]} MB ({sk.get('rss_growth_pct')}%)",
            "<= +10%", sk.get("rss_growth_pct") is not None and sk["rss_growth_pct"] <= 10)
        fds = sk.get("fds_by_tenth") or [None]
        add(p, "kernel open fds after first tenth -> end", f"{fds[0]} -> {fds[-1]}", "flat (+2)",
            sk.get("fd_growth") is not None and sk["fd_growth"] <= 2)
        add(p, "small-cell latency p95 first -> last tenth (median)",
            f"{sk.get('p95_first_ms')} -> {sk.get('p95_last_ms')} ms ({sk.get('median_first_ms')} -> "
            f"{sk.get('median_last_ms')})", "(figure: flat)", True)
        it = sk.get("interrupt_s", {})
        add(p, "interrupt to reply median / max", f"{ms(it.get('median'))} / {ms(it.get('max'))} ms", "(figure)", True)
        add(p, "leftover processes", len(sk.get("leftovers", [])), "0", not sk.get("leftovers"))
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"stress.py seed {result['seed']}{' --quick' if result['quick'] else ''}, {result['date']}, "
             f"{result['host']['cpus']} cores, load {result['host']['load_start']} -> {result['host']['load_end']}, "
             f"{result['wall_s']} s", "",
             "| part | figure | value | goal | |", "|---|---|---|---|---|"]
    for g in result["goals"]:
        mark = "" if g["target"].startswith("(figure") else ("pass" if g["pass"] else "**MISSED**")
        lines.append(f"| {g['part']} | {g['what']} | {g['value']} | {g['target']} | {mark} |")
    return "\n".join(lines)


def ensure(name: str, kind: str) -> None:
    from lxc_kernel.provision import ensure_container

    ensure_container(name, kind)


def container_name(text: str) -> str:
    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a container name: {text!r}")
    return text


def positive(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI sizes: 6 kernels x 20 cells, 500 fuzz cells, faults on "
                   "busybox, 1,000 soak cells")
    p.add_argument("--seed", type=int, help="seed of every random choice (default: random, printed)")
    p.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--fault", action="append", choices=FAULTS, help="faults: only this one (repeatable)")
    p.add_argument("--fault-kind", action="append", choices=("busybox", "hostfs", "debian"), dest="fault_kinds_arg",
                   help="faults: only on this kind of container (repeatable)")
    p.add_argument("--kernels", type=positive, help="concurrency: kernels per container (default 30)")
    p.add_argument("--cells", type=positive, help="concurrency: cells per kernel (default 100)")
    p.add_argument("--fuzz", type=positive, help="fuzz: cells in all (default 10000)")
    p.add_argument("--soak", type=positive, help="soak: cells (default 10000)")
    p.add_argument("--sh", type=container_name, default="lxck-t10-sh", help="busybox container")
    p.add_argument("--bash", type=container_name, default="lxck-t10-bash", help="hostfs (bash) container")
    p.add_argument("--deb", type=container_name, default="lxck-t10-deb", help="Debian (systemd) container")
    p.add_argument("--keep", action="store_true", help="keep the Debian container at the end")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--table", metavar="FILE", help="also write the markdown table to FILE")
    # driver mode (internal)
    p.add_argument("--driver", choices=("concurrency", "fuzz"), help=argparse.SUPPRESS)
    p.add_argument("--container", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--driver-seed", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    return p


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    if args.driver == "concurrency":
        return drive_concurrency(args)
    if args.driver == "fuzz":
        return drive_fuzz(args)
    sizes = QUICK if args.quick else FULL
    for key in ("kernels", "cells", "fuzz", "soak"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    args.fault_kinds = tuple(args.fault_kinds_arg or sizes["fault_kinds"])
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    parts = [p for p in PARTS if not args.part or p in args.part]
    log(f"seed {args.seed} (replay: python3 benches/stress.py --seed {args.seed}{' --quick' if args.quick else ''}"
        f" --part PART); parts: {' '.join(parts)}")
    run_dir = tempfile.mkdtemp(prefix="lxck-t10-stress-")  # 0700: logs and the private kernelspec
    args.run_dir = run_dir
    os.environ["JUPYTER_PATH"] = kclient.install_plain_spec(run_dir, SPEC)
    made_deb = False
    result: dict[str, Any] = {
        "seed": args.seed, "quick": args.quick, "parts": parts,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "load_start": round(os.getloadavg()[0], 2)},
    }
    t0 = time.monotonic()
    code = 0
    try:
        ensure(args.sh, "busybox")
        ensure(args.bash, "hostfs")
        if "faults" in parts and "debian" in args.fault_kinds:
            made_deb = args.deb not in containers(args.deb)
        for part in parts:
            result[part] = globals()[f"part_{part}"](args, args.seed)
    except KeyboardInterrupt:
        result["interrupted"] = True
        code = 130
    except Exception:
        result["error"] = clip(traceback.format_exc(), 3000)
        code = 1
    finally:
        if "faults" in parts and "debian" in args.fault_kinds and not args.keep:
            from lxc_kernel.provision import destroy_container

            with contextlib.suppress(Exception):
                destroy_container(args.deb)
        result["made_debian"] = made_deb
        result["wall_s"] = round(time.monotonic() - t0, 1)
        result["host"]["load_end"] = round(os.getloadavg()[0], 2)
        result["goals"] = goals(result)
        missed = [g for g in result["goals"] if not g["pass"]]
        result["missed"] = len(missed)
        text = json.dumps(result, indent=1, default=str)
        table = markdown(result)
        print(text)
        print(table, file=sys.stderr)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text + "\n")
        if args.table:
            with open(args.table, "w") as fh:
                fh.write(table + "\n")
        log(f"{len(missed)} goal(s) missed; seed {args.seed}; logs in {run_dir}" if missed or code else
            f"all goals met; seed {args.seed}")
        if not missed and not code:
            shutil.rmtree(run_dir, ignore_errors=True)
    if code:
        return code
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
