"""Issue 7, items 1-10, on real containers: programs inside the container try to stall, spin, starve or fool
the kernel, through the real kernel and a real client (jupyter_client).

Every test asserts outcomes (a reply came, its status, the output, error names, RSS and CPU bounds with wide
margins), never wall-clock figures: the figures are in benches/hostile.py. Each test has its own
``pytest.mark.timeout`` so a hang fails instead of blocking the suite, and its own kernel, so one that a
hostile cell broke cannot fail the next test.

The shared containers (``lxck-test-sh``, busybox ash; ``lxck-test-bash``, GNU bash on hostfs) only see
damage scoped to the test's own shell (its session directory ``/tmp/.lxck.$$.*``, its stderr reader, its
own background jobs). What breaks a whole container (a full ``/tmp``, ``lxc-stop -k``, a stopped or missing
container for Tab) happens in this module's own containers, ``lxck-t7h-<run>-sh`` (busybox) and
``lxck-t7h-<run>-bash`` (hostfs), destroyed at the end.

Item 4 (unbounded host reads) is covered by tests/test_bounds.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from conftest import Kernel, Result, descendants, start_kernel

from lxc_kernel.provision import destroy_container, ensure_container

RUN = f"lxck-t7h-{secrets.token_hex(2)}-"
KINDS = {"sh": "busybox", "bash": "hostfs"}
RSS_LIMIT_KB = 150 * 1024
# A cell longer than one typed line allows: it is uploaded to a file in the session directory.
PADDING = "# padding to make this cell longer than one line (it is uploaded)\n" * 24


def start(container: str, *extra: str) -> Kernel:
    """conftest.start_kernel, tried again when the kernel dies before its first reply: on a busy machine
    another process can take a TCP port between jupyter_client choosing it and the kernel binding it
    ("Address already in use")."""
    for attempt in range(3):
        try:
            return start_kernel(container, *extra)
        except RuntimeError as exc:
            if "died before replying" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def long_cell(body: str) -> str:
    cell = f"{PADDING}{body}"
    assert len(cell) > 1500
    return cell


# -- helpers ---------------------------------------------------------------------------------------


def lxc(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout)


def state(name: str) -> str:
    """The container's state as lxc-info says it, or MISSING."""
    r = lxc("lxc-info", "-n", name, "-sH", check=False)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "MISSING"


def kernel_cpu(k: Kernel) -> float:
    t = psutil.Process(k.pid).cpu_times()
    return t.user + t.system


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def tree(pid: int) -> list[psutil.Process]:
    """The kernel's descendants now, as psutil handles (a later check compares their start times)."""
    out = []
    for p in descendants(pid):
        try:
            out.append(psutil.Process(p))
        except psutil.Error:
            continue
    return out


def still_alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` that still run: the same PID *and* start time, and not a zombie."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def is_attach(p: psutil.Process) -> bool:
    """An lxc-attach process (by its argv: it re-executes itself from a memfd, so its comm is not its name)."""
    try:
        argv = p.cmdline()
    except psutil.Error:
        return False
    return bool(argv) and os.path.basename(argv[0]) == "lxc-attach"


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return f"{p.pid} (gone)"


def wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := still_alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def stop_kernel(k: Kernel) -> None:
    """Shut down, then end by PID (checked against start times) whatever the kernel left behind, so a
    hostile job of a failed test cannot outlive it."""
    procs = tree(k.pid)
    try:
        k.shutdown()
    except Exception:
        pass
    for p in wait_dead(procs, 3.0):
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        if k.km.has_kernel:
            k.km.shutdown_kernel(now=True)
    except Exception:
        pass


def run(k: Kernel, code: str, timeout: float = 30, allow_stdin: bool = False) -> Result:
    """Run ``code``; its reply and iopub messages up to idle, all within ``timeout`` seconds in total
    (conftest's execute waits per message, so a stream that never stops would keep it waiting forever)."""
    kc = k.kc
    start = time.monotonic()
    deadline = start + timeout
    msg_id = kc.execute(code, allow_stdin=allow_stdin, stop_on_error=False)
    messages: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None
    idle = False
    while reply is None or not idle:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply and idle for {code[:80]!r} within {timeout} s")
        if reply is None:
            try:
                msg = kc.get_shell_msg(timeout=0.01)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
            except queue.Empty:
                pass
        try:
            msg = kc.get_iopub_msg(timeout=min(0.05, left))
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status":
            idle = idle or msg["content"]["execution_state"] == "idle"
        elif msg["msg_type"] != "execute_input":
            messages.append(msg)
    return Result(reply, messages, time.monotonic() - start)


def ok(k: Kernel, code: str, timeout: float = 30) -> Result:
    r = run(k, code, timeout)
    assert r.status == "ok", (code, r.reply["content"], r.stream("stderr")[-2000:])
    return r


@dataclass
class Counted:
    """A cell's reply and its iopub traffic, with stream text counted instead of kept."""

    reply: dict[str, Any]
    chars: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    counts: dict[str, int] = field(default_factory=dict)  # occurrences of the counted character
    stream_messages: int = 0
    others: list[dict[str, Any]] = field(default_factory=list)


def run_counting(k: Kernel, code: str, char: str, timeout: float, allow_stdin: bool) -> Counted:
    msg_id = k.kc.execute(code, allow_stdin=allow_stdin, stop_on_error=False)
    counted = Counted(reply={})
    while True:
        msg = k.kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            name, text = msg["content"]["name"], msg["content"]["text"]
            counted.stream_messages += 1
            counted.chars[name] = counted.chars.get(name, 0) + len(text)
            counted.counts[name] = counted.counts.get(name, 0) + text.count(char)
        elif kind == "status":
            if msg["content"]["execution_state"] == "idle":
                break
        elif kind != "execute_input":
            counted.others.append(msg)
    reply = k.kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.kc.get_shell_msg(timeout=timeout)
    counted.reply = reply
    return counted


@dataclass
class WithInput:
    result: Result
    requests: list[dict[str, Any]]


def run_answering(k: Kernel, code: str, answer: str = "bob", timeout: float = 30) -> WithInput:
    """Run ``code`` with stdin allowed, answering every input_request with ``answer`` (as an input box
    would), and record the requests."""
    kc = k.kc
    msg_id = kc.execute(code, allow_stdin=True, stop_on_error=False)
    requests: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None
    idle = False
    start = time.monotonic()
    deadline = start + timeout
    while not (idle and reply is not None):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {code!r} within {timeout} s (input requests: {requests})")
        try:
            msg = kc.get_stdin_msg(timeout=0.01)
        except queue.Empty:
            msg = None
        if msg is not None and msg["msg_type"] == "input_request":
            requests.append(msg["content"])
            kc.input(answer)
        try:
            msg = kc.get_iopub_msg(timeout=0.01)
        except queue.Empty:
            msg = None
        if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
            if msg["msg_type"] == "status":
                idle = idle or msg["content"]["execution_state"] == "idle"
            elif msg["msg_type"] != "execute_input":
                messages.append(msg)
        if reply is None:
            try:
                msg = kc.get_shell_msg(timeout=0.01)
            except queue.Empty:
                msg = None
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
    assert reply is not None
    return WithInput(Result(reply, messages, time.monotonic() - start), requests)


# Processes of this shell's stderr channel, found from inside the container: a `cat` holding this
# session's FIFO (/tmp/.lxck.<shell pid>.*/err), and with WHOLE=1 also the `sh` that started it, if
# there is one (the reader before 882d345 was `sh -c '... cat <&3 & while kill -0 ...'`). Scoped to
# this shell's FIFO: other kernels on the same container are left alone.
_READERS = r"""
for p in /proc/[0-9]*; do
  n=${p#/proc/}; [ "$n" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
  case "$c" in *lxck-stderr*) [ "$WHOLE" = 1 ] && echo "$n"; continue;; esac
  [ "$(cat "$p/comm" 2>/dev/null)" = cat ] || continue
  for f in "$p"/fd/*; do
    case "$(readlink "$f" 2>/dev/null)" in /tmp/.lxck.$$.*/err) echo "$n"; break;; esac
  done
done
"""


def reader_pids(k: Kernel, whole: bool) -> list[str]:
    r = ok(k, f"WHOLE={int(whole)}\n{_READERS}")
    pids = r.stream().split()
    assert pids, "found no stderr reader of this session inside the container"
    return pids


# -- item 1: a newline-less flood with stdin allowed -------------------------------------------------

FLOOD_BYTES = 40_000_000


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item1_newline_less_flood_with_stdin_streams_in_bounded_memory(containers: dict[str, str], kind: str) -> None:
    """80 MB without a newline, stdin allowed (as every interactive frontend sends): was held back whole
    until it went quiet, 27 s, 26.7 s of kernel CPU and 297 MB of RSS. Here 40 MB (the bench does 80):
    the reply comes, all of it arrives, in many stream messages, and the kernel stays under 150 MB."""
    k = start(containers[kind])
    try:
        ok(k, "%output off")  # every character must reach the client, not head and tail
        ok(k, "true")
        r = run_counting(k, f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x", "x", timeout=180, allow_stdin=True)
        assert r.reply["content"]["status"] == "ok", r.reply["content"]
        assert r.counts.get("stdout") == FLOOD_BYTES and r.chars["stdout"] == FLOOD_BYTES
        assert r.stream_messages >= 10, "a newline-less line must stream, not be held back whole"
        assert peak_rss_kb(k.pid) < RSS_LIMIT_KB
        ok(k, "echo after")  # and the shell is still in step
        assert run(k, "printf 'Name? '; echo done").stream() == "Name? done\n"
    finally:
        stop_kernel(k)


# -- item 2: the stderr channel broken from inside --------------------------------------------------


@pytest.fixture(params=["sh", "bash"])
def hk(request: pytest.FixtureRequest, containers: dict[str, str]) -> Iterator[Kernel]:
    """A fresh kernel per test on the shared busybox or bash container: hostile cells break its shell."""
    k = start(containers[request.param])
    k.kind = request.param  # type: ignore[attr-defined]
    try:
        yield k
    finally:
        stop_kernel(k)


@pytest.mark.timeout(120)
def test_item2a_killed_stderr_reader_costs_no_cpu_and_stderr_still_arrives(hk: Kernel) -> None:
    """The kernel spun at 100% CPU once the reader was killed: a `sleep 3` cell used 4.0 s of kernel CPU
    and stderr was lost. The reader is killed between cells here (by a job of the previous cell)."""
    ok(hk, "echo warm >&2")
    pids = reader_pids(hk, whole=True)
    ok(hk, f"(sleep 0.5; kill -9 {' '.join(pids)}) >/dev/null 2>&1 &")
    time.sleep(1.5)
    r = ok(hk, "echo out; echo back >&2")
    assert r.stream() == "out\n"
    assert "back" in r.stream("stderr")
    cpu0 = kernel_cpu(hk)
    r = ok(hk, "sleep 3")
    used = kernel_cpu(hk) - cpu0
    assert used < 1.0, f"a `sleep 3` cell cost {used:.2f} s of kernel CPU"
    for i in range(3):
        r = ok(hk, f"echo o{i}; echo e{i} >&2")
        assert r.stream() == f"o{i}\n" and r.stream("stderr") == f"e{i}\n"


@pytest.mark.timeout(120)
def test_item2b_killed_cat_then_200kb_of_stderr_completes(hk: Kernel) -> None:
    """Killing only the reader's `cat` made a cell writing 200 KB to stderr block until interrupted."""
    flood = "head -c 200000 /dev/zero | tr '\\0' e >&2; echo done"
    pids = reader_pids(hk, whole=False)
    # Killed in the same cell as the flood, and then a flood in the next cell.
    for code in (f"kill -9 {' '.join(pids)}; {flood}", flood):
        r = run(hk, code, timeout=60)
        assert r.status == "ok", r.reply["content"]
        assert r.stream() == "done\n"
        got = r.stream("stderr").count("e")
        # A killed reader may take what it had read with it; the cell then says stderr was lost.
        assert got == 200000 or ("stderr" in r.stream("stderr") and got > 100000), got
    r = ok(hk, "echo fine >&2")
    assert r.stream("stderr") == "fine\n"


@pytest.mark.timeout(120)
def test_item2c_removed_session_directory_is_made_again(hk: Kernel) -> None:
    """A tmp cleaner removing /tmp/.lxck.* made every later cell fail with exit status 1 without running.
    Only this shell's directory is removed: other kernels may use the same container."""
    ok(hk, "kept=yes")
    ok(hk, "rm -rf /tmp/.lxck.$$.*")
    for i in range(3):
        r = run(hk, f"echo ok{i}; echo err{i} >&2")
        assert r.status == "ok", r.reply["content"]
        assert r.stream() == f"ok{i}\n" and r.stream("stderr") == f"err{i}\n"
    r = run(hk, long_cell("echo long $kept; (exit 0)"))
    assert r.status == "ok", r.reply["content"]
    assert r.stream() == "long yes\n"
    r = run(hk, long_cell("(exit 5)"))
    assert r.status == "error" and "exit status 5" in r.reply["content"]["evalue"]
    # The helpers in the session directory came back with it.
    r = ok(hk, "echo hello | jdisplay --text")
    assert [m["content"]["data"]["text/plain"] for m in r.of_type("display_data")] == ["hello\n"]


def _interrupt_after(k: Kernel, code: str, delay: float, timeout: float = 20) -> dict[str, Any]:
    msg_id = k.kc.execute(code, allow_stdin=False, stop_on_error=False)
    time.sleep(delay)
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=timeout)
    assert reply["parent_header"]["msg_id"] == msg_id
    return reply


# A job that takes whatever is in this shell's stderr FIFO (markers included) and throws it away: a cell's
# stderr end marker may then never come.
FIFO_EATER = (
    'fifo=$(ls -d /tmp/.lxck.$$.*/err | head -n 1); (while :; do dd bs=64k count=1 <"$fifo" >/dev/null 2>&1; done) &'
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("eater", [False, True], ids=["writer", "writer+eater"])
def test_item2d_background_stderr_writer_cannot_block_interrupt_or_timeout(hk: Kernel, eater: bool) -> None:
    """A job writing to stderr every 0.1 s: a cell never returned, ignoring the stop button and `%timeout 3`.
    Before 882d345 it took a second job that eats the FIFO's content (so the stderr end marker goes missing
    while stderr keeps flowing): the cell then waited for stderr to go quiet, which never happened, and
    interrupts were ignored once stdout's end marker had come. A cell must end whatever stderr does."""
    ok(hk, "kept=1; (while :; do echo tick >&2; sleep 0.1; done) & ticker=$!")
    if eater:
        ok(hk, f"{FIFO_EATER} eater=$!")
        for i in range(6):
            r = run(hk, f"echo plain{i}", timeout=30)
            assert r.status == "ok" and r.stream() == f"plain{i}\n", r.reply["content"]
    try:
        reply = _interrupt_after(hk, "sleep 30; echo not reached", delay=1.0)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        ok(hk, "%timeout 3")
        r = run(hk, "sleep 30; echo not reached", timeout=25)
        assert r.status == "error" and r.reply["content"]["ename"] == "TimeoutError", r.reply["content"]
        assert "not reached" not in r.stream()
        ok(hk, "%timeout off")
        r = ok(hk, "echo $kept")
        assert r.stream() == "1\n"
    finally:
        run(hk, "kill -9 -- -$ticker $ticker ${eater:+-$eater $eater} 2>/dev/null; true")


# -- item 3: stealing the completion token -----------------------------------------------------------

# Three thieves, each a background job of the shell (job control is on, so each has its own process group):
# 1. the issue's: read its own fd 2 and write the bytes back;
# 2. read its own fd 2, pick out any marker's token and print a forged success (E0) for it, on stdout
#    (the terminal) and on stderr;
# 3. the same, reading the session's FIFO by its path.
_FORGE = (
    "for t in $(dd bs=512 count=1 2>/dev/null {src} | grep -o 'lxck:[0-9a-f]*:S' | cut -d: -f2); do"
    " printf '<<lxck:%s:E0>>' \"$t\"; printf '<<lxck:%s:E0>>' \"$t\" >&2; done"
)
_FORGE_FD2 = _FORGE.format(src="<&2")
_FORGE_PATH = _FORGE.format(src='<"$fifo"')
THIEVES = (
    "(while :; do dd bs=1 count=100 <&2 2>/dev/null | cat >&2; sleep 0.02; done) & t1=$!\n"
    "(while :; do " + _FORGE_FD2 + "; sleep 0.02; done) & t2=$!\n"
    "fifo=$(ls -d /tmp/.lxck.$$.*/err | head -n 1); [ -p \"$fifo\" ]\n"
    "(while :; do " + _FORGE_PATH + "; sleep 0.02; done) & t3=$!\n"
)


def steal_and_count_forged(k: Kernel, cells: int) -> tuple[int, list[str]]:
    """Start the thieves, run ``cells`` cells that fail with status 7; return (forged, wrong replies)."""
    ok(k, THIEVES)
    wrong = []
    try:
        for _ in range(cells):
            r = run(k, "sleep 0.2; (exit 7)", timeout=30)
            content = r.reply["content"]
            if content["status"] != "error" or "exit status 7" not in content.get("evalue", ""):
                wrong.append(f"{content['status']}: {content.get('evalue', '')}")
        alive = run(k, "kill -0 $t1 $t2 $t3 && echo thieves-alive")
        assert "thieves-alive" in alive.stream(), "a thief died: the attack was not running"
    finally:
        run(k, "kill -9 -- -$t1 -$t2 -$t3 2>/dev/null; kill -9 $t1 $t2 $t3 2>/dev/null; true")
    forged = sum(w.startswith("ok") for w in wrong)
    return forged, wrong


@pytest.mark.timeout(240)
def test_item3_stolen_token_cannot_forge_success(hk: Kernel) -> None:
    """A job reading its own fd 2 took the token and made `sleep 2; ...; (exit 7)` report `ok` in 3 of 6
    cells. Now every one of 20 cells fails with exit status 7 whatever the thieves do."""
    forged, wrong = steal_and_count_forged(hk, 20)
    assert forged == 0 and not wrong, wrong
    assert run(hk, "echo still in step").stream() == "still in step\n"


# A job in its own session (so no SIGTTIN stops it) that reads the shell's terminal, where the kernel types
# each cell's line: the line holds both halves of the cell's token, and the job prints a forged start and
# success marker for them on the terminal's output.
TTY_THIEF = r"""tty=$(readlink /proc/$$/fd/1); case "$tty" in /dev/pts/*) ;; *) exit 1;; esac
setsid sh -c 'while IFS= read -r l; do set -- $l; case "$1" in *__lxck_pre)
  printf "<<lxck:%s%s:S>><<lxck:%s%s:E0>>" "$2" "$3" "$2" "$3" > "$0";; esac; done < "$0"' "$tty" >/dev/null 2>&1 &
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item3_terminal_reader_cannot_forge_or_stall(containers: dict[str, str], kind: str) -> None:
    """"No channel that the cell's processes can read ever carries a token that can end or fail a cell":
    the terminal's input side is such a channel. 20 cells `sleep 0.2; (exit 7)` with a job reading it: none
    may be reported ok, and each must get its reply."""
    k = start(containers[kind])
    try:
        ok(k, TTY_THIEF)
        replies = []
        for _ in range(20):
            try:
                r = run(k, "sleep 0.2; (exit 7)", timeout=20)
            except TimeoutError:
                replies.append("no reply within 20 s")
                break
            replies.append(f"{r.status}: {r.reply['content'].get('evalue', '')}")
        assert not [r for r in replies if r.startswith("ok") or r.startswith("no reply")], replies
    finally:
        stop_kernel(k)


# -- item 5: input requests nobody asked for ---------------------------------------------------------


@pytest.mark.timeout(180)
def test_item5_no_unrequested_input_requests_and_real_prompts_still_work(hk: Kernel) -> None:
    """Under load, cells running `ls / >/dev/null` got an input_request with an empty prompt: the shell
    waiting for its next line was taken for a command waiting for input. Quiet spells are placed where
    the idle check runs (80 ms, then every 150 ms), to hit the moment the shell finishes."""
    unrequested = []
    delays = ["", "sleep 0.07; ", "sleep 0.08; ", "sleep 0.09; ", "sleep 0.22; ", "sleep 0.23; ", "sleep 0.24; "]
    for i in range(42):
        code = f"{delays[i % len(delays)]}ls / >/dev/null"
        got = run_answering(hk, code)
        assert got.result.status == "ok", got.result.reply["content"]
        if got.requests:
            unrequested.append((code, got.requests))
    assert not unrequested
    got = run_answering(hk, "read -p 'Name? ' n; echo got:$n", answer="bob")
    assert got.result.status == "ok", got.result.reply["content"]
    assert len(got.requests) == 1 and "Name?" in got.requests[0]["prompt"], got.requests
    assert not got.requests[0]["password"]
    assert "got:bob" in got.result.stream()


# -- item 9: the user's shell set-up -----------------------------------------------------------------

SETUPS = {
    "alias-cat": "alias cat='cat -n'",
    "functions": "printf() { echo hijacked; }; cat() { echo hijacked; }; mktemp() { echo hijacked; };"
                 " rm() { echo hijacked; }; stty() { echo hijacked; }; test() { return 1; }",
    "aliases": "alias printf='echo hijacked'; alias eval='echo hijacked'; alias command='echo hijacked';"
               " alias exec='echo hijacked'",
    "ifs": "IFS=0123456789",
    "bracket": "[() { return 1; }",  # bash only: ash refuses `[` as a function name
    "path": "PATH=/nonexistent",
    "no-emacs": "set +o emacs",
    "no-vi": "set +o vi",
    "everything": "alias cat='cat -n'; printf() { echo hijacked; }; IFS=0123456789; set +o emacs",
}


def _item9_cases() -> Iterator[Any]:
    for kind in ("sh", "bash"):
        for setup in SETUPS:
            marks: list[Any] = []
            if kind == "sh" and setup == "bracket":
                marks.append(pytest.mark.skip(reason="busybox ash refuses `[` as a function name"))
            yield pytest.param(kind, setup, marks=marks, id=f"{kind}-{setup}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "setup"), list(_item9_cases()))
def test_item9_user_setup_cannot_break_the_kernels_shell_code(containers: dict[str, str], kind: str,
                                                              setup: str) -> None:
    """`alias cat='cat -n'` made every cell over about 1 KB fail (syntax error near `}`); `set +o emacs`
    lost the shell. Nothing a cell redefines may break the kernel's own code: short and long (uploaded)
    cells, stdout, stderr and status stay right. (Found here after 882d345 and fixed in bd15afa: a `[`
    function broke the framing's tests, and `set +o vi` lost the shell as `set +o emacs` had.)"""
    hk = start(containers[kind])
    try:
        _check_setup(hk, kind, SETUPS[setup])
    finally:
        stop_kernel(hk)


def _check_setup(hk: Kernel, kind: str, code: str) -> None:
    ok(hk, "kept=yes")
    if kind == "sh" and "emacs" in code:
        code += " 2>/dev/null; true"  # ash may lack line editing options; the rest still applies
    r = run(hk, code)
    assert r.status == "ok", r.reply["content"]
    # Only builtins below: PATH may point nowhere. `echo` is not hijacked by any set-up.
    for i in range(2):
        r = run(hk, f"echo \"v=$kept\"; echo e{i} >&2")
        assert r.status == "ok", r.reply["content"]
        assert r.stream() == "v=yes\n" and r.stream("stderr") == f"e{i}\n"
    r = run(hk, long_cell('echo "long=$kept"; echo le >&2'))
    assert r.status == "ok", r.reply["content"]
    assert r.stream() == "long=yes\n" and r.stream("stderr") == "le\n"
    r = run(hk, long_cell("(exit 4)"))
    assert r.status == "error" and "exit status 4" in r.reply["content"]["evalue"], r.reply["content"]
    r = run(hk, "(exit 3)")
    assert r.status == "error" and "exit status 3" in r.reply["content"]["evalue"], r.reply["content"]
    r = run(hk, "echo \"end=$kept\"")
    assert r.stream() == "end=yes\n", "the shell (and its variables) must have survived"


# -- item 10: descriptors and processes --------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(180)
def test_item10a_reattach_does_not_leak_descriptors(hk: Kernel) -> None:
    """The wake pipe's two fds leaked on every re-attach until garbage collection."""
    ok(hk, "true")
    for _ in range(2):  # warm up: first-use allocations of zmq, psutil and friends
        ok(hk, "%reset")
        ok(hk, "true")
    ok(hk, "%reset")
    ok(hk, "true")
    after_one = fd_count(hk.pid)
    for _ in range(9):
        ok(hk, "%reset")
        ok(hk, "true")
    after_ten = fd_count(hk.pid)
    assert after_ten - after_one <= 3, (after_one, after_ten)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["idle", "mid-cell"])
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item10b_shutdown_leaves_no_process_behind(containers: dict[str, str], kind: str, when: str) -> None:
    """Every process the kernel started (lxc-attach, the shell, its jobs, the stderr reader) is gone after
    shutdown, checked by PID and start time, not by name."""
    k = start(containers[kind])
    seen: dict[tuple[int, float], psutil.Process] = {}

    def sample() -> None:
        for p in tree(k.pid):
            try:
                seen[(p.pid, p.create_time())] = p
            except psutil.Error:
                continue

    try:
        ok(k, "sleep 300 & sleep 301 & echo started")
        sample()
        ok(k, "echo err >&2")
        sample()
        attach = [p for p in seen.values() if is_attach(p)]
        assert len(attach) >= 2, [describe(p) for p in seen.values()]
        if when == "mid-cell":
            k.kc.execute("sleep 100", allow_stdin=False, stop_on_error=False)
            time.sleep(1.0)
            sample()
    finally:
        procs = list(seen.values())
        k.shutdown()
        alive = wait_dead(procs, 5.0)
        left = [describe(p) for p in alive]
        for p in alive:
            p.kill()
    assert not left, "shutdown left processes behind"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item10c_interrupted_attach_leaks_no_session(containers: dict[str, str], kind: str) -> None:
    """The helper install leaked the new session when it raised anything but LxcKernelError. A stop
    button pressed while `%reset` attaches a shell raises KeyboardInterrupt somewhere in the attach (the
    spawn, the handshake, the helper install), depending on when it lands: the interrupt is swept across
    the attach in 20 ms steps (from 40 ms: earlier, it may land in ipykernel before the cell starts).
    Whatever it hits, no process but the live shell's may be left. (Before 882d345, one try of 22 left a
    third lxc-attach alive.)"""
    k = start(containers[kind])
    try:
        ok(k, "true")
        for step in range(2, 28):
            delay = step * 0.02
            # The `sleep` keeps the cell running past the attach, so the interrupt never lands after the
            # reply: there ipykernel swallows it ("KeyboardInterrupt caught in kernel") with the reply.
            msg_id = k.kc.execute("%reset\nsleep 5", allow_stdin=False, stop_on_error=False)
            time.sleep(delay)
            k.km.interrupt_kernel()
            reply = k.kc.get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            ok(k, "true")  # the live session (a fresh one if the reset was cut short)
            attach = [p for p in tree(k.pid) if is_attach(p)]
            assert attach, "no lxc-attach process found under the kernel"
            # The live shell's PTY and its stderr reader; anything more is a leaked session.
            deadline = time.monotonic() + 3
            while len(still_alive(attach)) > 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            left = still_alive(attach)
            assert len(left) <= 2, (delay, reply["content"].get("ename"), [describe(p) for p in left])
    finally:
        stop_kernel(k)


# -- items 6, 7, 8: on this module's own containers --------------------------------------------------


@pytest.fixture(scope="module")
def own() -> Iterator[dict[str, str]]:
    """Two containers of this module's own, busybox and hostfs (they get /tmp filled and `lxc-stop -k`)."""
    names = {kind: f"{RUN}{kind}" for kind in KINDS}
    try:
        for kind, name in names.items():
            ensure_container(name, KINDS[kind])
        yield names
    finally:
        for name in names.values():
            destroy_container(name)


def running(name: str) -> None:
    if state(name) != "RUNNING":
        lxc("lxc-start", "-d", "-n", name)
        lxc("lxc-wait", "-n", name, "-s", "RUNNING", "-t", "20")


def in_mount_ns(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in container ``name`` with the host's capabilities and no AppArmor confinement: the
    container's profile and dropped capabilities refuse `mount` from inside, even in a privileged one."""
    return lxc("lxc-attach", "-n", name, "--elevated-privileges=CAP|LSM", "--", *argv, check=False)


@contextlib.contextmanager
def unusable_tmp(name: str, how: str) -> Iterator[Callable[[], None]]:
    """/tmp of container ``name`` becomes a full 16 KB tmpfs, or a read-only one, until the context ends
    or the function it yields is called (a lazy unmount: the shell may still hold a FIFO on it)."""
    options = "size=16k" if how == "full" else "ro,size=16k"
    mount = in_mount_ns(name, "mount", "-t", "tmpfs", "-o", options, "lxck-t7h", "/tmp")
    assert mount.returncode == 0, mount.stderr
    mounted = [True]

    def undo() -> None:
        if mounted[0]:
            umount = in_mount_ns(name, "umount", "-l", "/tmp")
            assert umount.returncode == 0, umount.stderr
            mounted[0] = False

    try:
        if how == "full":
            in_mount_ns(name, "sh", "-c", "head -c 1000000 /dev/zero > /tmp/fill")
        yield undo
    finally:
        undo()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("tmp", ["full", "read-only"])
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item6_failed_upload_fails_the_cell_and_keeps_the_shell(own: dict[str, str], kind: str, tmp: str) -> None:
    """A long cell whose upload failed raised ShellExited: the shell, its variables and working directory
    were lost and the message was misleading. Here /tmp becomes a full 16 KB tmpfs, or a read-only one."""
    name = own[kind]
    running(name)
    k = start(name)
    try:
        ok(k, "kept=yes; cd /etc")
        with unusable_tmp(name, tmp):
            r = run(k, long_cell("echo ran > /etc/lxck-t7h-ran; echo ran"))
            assert r.status == "error", r.reply["content"]
            evalue = r.reply["content"]["evalue"]
            assert "not run" in evalue, evalue
            assert "ran" not in r.stream()
            r = run(k, 'echo "$kept $(pwd)"; ls /etc/lxck-t7h-ran 2>/dev/null; true')
            assert r.status == "ok" and r.stream() == "yes /etc\n", "the shell and its state must survive"
            # Without a session directory there is no stderr FIFO: stderr may be merged into stdout now.
            r = run(k, "echo short cells still run; echo e >&2")
            assert r.status == "ok" and r.stream().startswith("short cells still run\n"), r.reply["content"]
            r = run(k, long_cell("echo again"))
            assert r.status == "error" and "not run" in r.reply["content"]["evalue"], r.reply["content"]
    finally:
        stop_kernel(k)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("tmp", ["full", "read-only"])
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item6_long_cells_run_again_once_tmp_is_usable(own: dict[str, str], kind: str, tmp: str) -> None:
    """"An upload failure fails only that cell": once /tmp is usable again, long cells run in the same
    shell, without a `%reset`. (Found here: after a read-only /tmp the session never tried to make its
    directory again; fixed in bd15afa.)"""
    name = own[kind]
    running(name)
    k = start(name)
    try:
        ok(k, "kept=yes")
        with unusable_tmp(name, tmp) as undo:
            r = run(k, long_cell("echo ran"))
            assert r.status == "error" and "not run" in r.reply["content"]["evalue"], r.reply["content"]
            undo()
            r = run(k, long_cell('echo "long cells run again: $kept"'))
            assert r.status == "ok", r.reply["content"]
            assert r.stream() == "long cells run again: yes\n"
    finally:
        stop_kernel(k)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_item7_container_stopped_mid_cell_is_named(own: dict[str, str], kind: str) -> None:
    """After `lxc-stop -k` mid-cell, 2 of 3 runs said only "the shell exited with 137". Each of 3 runs must
    name the container and say it is STOPPED."""
    name = own[kind]
    running(name)
    k = start(name)
    try:
        for attempt in range(3):
            running(name)
            r = run(k, "echo up", timeout=30)
            assert r.status == "ok" and r.stream() == "up\n", (attempt, r.reply["content"])
            msg_id = k.kc.execute("sleep 60; echo after", allow_stdin=False, stop_on_error=False)
            time.sleep(1.0)
            lxc("lxc-stop", "-k", "-n", name)
            reply = k.kc.get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            content = reply["content"]
            assert content["status"] == "error"
            assert name in content["evalue"] and "STOPPED" in content["evalue"], (attempt, content["evalue"])
    finally:
        stop_kernel(k)
        running(name)


def _requests_publish_nothing(k: Kernel, send: list[Callable[[], str]]) -> list[dict[str, Any]]:
    """Send each request, wait for its reply; return the iopub messages they caused, other than status."""
    ids = []
    replies = []
    for request in send:
        msg_id = request()
        ids.append(msg_id)
        reply = k.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = k.kc.get_shell_msg(timeout=30)
        replies.append(reply)
    time.sleep(0.5)
    published = []
    while True:
        try:
            msg = k.kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            break
        if msg["parent_header"].get("msg_id") in ids and msg["msg_type"] != "status":
            published.append(msg)
    for reply in replies:
        assert reply["content"]["status"] in ("ok", "error"), reply["content"]
    return published


@pytest.mark.timeout(180)
@pytest.mark.parametrize("target", ["missing", "stopped"])
def test_item8_tab_has_no_side_effects(own: dict[str, str], target: str) -> None:
    """Completion and inspection went through ensure_session: with the shipped spec (create_missing,
    start_stopped) pressing Tab could create and start a privileged container."""
    name = f"{RUN}absent" if target == "missing" else own["sh"]
    if target == "stopped":
        running(name)
        lxc("lxc-stop", "-k", "-n", name)
    before = state(name)
    assert before == ("MISSING" if target == "missing" else "STOPPED")
    k = start(name, "--LXCKernel.create_missing=busybox", "--LXCKernel.start_stopped=True")
    try:
        published = _requests_publish_nothing(k, [
            lambda: k.kc.complete("ec", 2),
            lambda: k.kc.complete("ls /e", 5),
            lambda: k.kc.complete("%lxc sta", 8),
            lambda: k.kc.inspect("ls", 2),
            lambda: k.kc.inspect("ls", 2, detail_level=1),
        ])
        time.sleep(1.0)
        assert state(name) == before, f"{name} went from {before} to {state(name)}"
        assert not published, [(m["msg_type"], m["content"]) for m in published]
    finally:
        stop_kernel(k)
        if target == "missing":
            destroy_container(name)  # only if a Tab created it
        else:
            running(name)
