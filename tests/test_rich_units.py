"""Pure unit tests: display frames, the output budget, /proc parsing for interactive input."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import termios

import pytest

from lxc_kernel import stdin
from lxc_kernel.budget import OutputBudget, human, parse_size
from lxc_kernel.display import HELPER_SCRIPT, DisplayFrame, DisplayParser, bundle

TOKEN = "ab" * 12


def frame(mime: str, payload: bytes, ident: str = "-", update: str = "0", token: str = TOKEN) -> str:
    b64 = base64.encodebytes(payload).decode()
    return f"<<lxck-display:{token}:BEGIN {mime} b64 {ident} {update}>>\n{b64}<<lxck-display:{token}:END>>\n"


def feed_all(parser: DisplayParser, text: str, step: int) -> list[str | DisplayFrame]:
    out: list[str | DisplayFrame] = []
    for i in range(0, len(text), step):
        out += parser.feed(text[i : i + step])
    out += parser.flush()
    merged: list[str | DisplayFrame] = []
    for item in out:
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        else:
            merged.append(item)
    return merged


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_frames_split_at_any_offset(step: int) -> None:
    text = "before\n" + frame("image/png", b"\x89PNG...", "p1") + "after <<lxck not a frame\n"
    items = feed_all(DisplayParser(TOKEN), text, step)
    assert items == ["before\n", DisplayFrame("image/png", b"\x89PNG...", "p1", False), "after <<lxck not a frame\n"]


def test_wrong_token_is_text() -> None:
    text = frame("text/html", b"<b>x</b>", token="cd" * 12)
    assert feed_all(DisplayParser(TOKEN), text, 5) == [text]


def test_unterminated_frame_is_reported() -> None:
    parser = DisplayParser(TOKEN)
    parser.feed(f"<<lxck-display:{TOKEN}:BEGIN text/html b64 - 0>>\naGk=\n")
    assert parser.flush() == [] and parser.errors


def test_hex_encoding_without_base64() -> None:
    parser = DisplayParser(TOKEN)
    text = f"<<lxck-display:{TOKEN}:BEGIN text/plain hex x 1>>\n 68 69\n<<lxck-display:{TOKEN}:END>>\n"
    assert parser.feed(text) == [DisplayFrame("text/plain", b"hi", "x", True)]


def test_bundle_per_type() -> None:
    png, _ = bundle(DisplayFrame("image/png", b"\x89PNG", None, False))
    assert png["image/png"] == base64.b64encode(b"\x89PNG").decode() and "text/plain" in png
    js, _ = bundle(DisplayFrame("application/json", b'{"a": 1}', None, False))
    assert js["application/json"] == {"a": 1}
    _, err = bundle(DisplayFrame("application/json", b"{", None, False))
    assert err and "JSON" in err
    html, _ = bundle(DisplayFrame("text/html", "<i>é</i>".encode(), None, False))
    assert html["text/html"] == "<i>é</i>"


def test_helper_script_is_posix_sh() -> None:
    for shell in ("sh", "bash"):
        assert subprocess.run([shell, "-n"], input=HELPER_SCRIPT.encode(), check=False).returncode == 0


def test_helper_script_frames_a_file(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "x.svg")
    with open(path, "w") as fh:
        fh.write("<svg/>")
    proc = subprocess.run(
        ["sh", "-c", HELPER_SCRIPT, "jdisplay", "--id", "a", path],
        capture_output=True, text=True, env={"LXCK_DISPLAY": TOKEN, "PATH": "/usr/bin:/bin"}, check=True,
    )
    assert DisplayParser(TOKEN).feed(proc.stdout) == [DisplayFrame("image/svg+xml", b"<svg/>", "a", False)]
    bad = subprocess.run(["sh", "-c", HELPER_SCRIPT, "jdisplay", path], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=False)
    assert bad.returncode == 1 and "not running in an lxc-kernel cell" in bad.stderr


# -- budget ---------------------------------------------------------------------------------------


def test_parse_size_and_human() -> None:
    assert parse_size("2M") == 2_000_000 and parse_size("500k") == 500_000 and parse_size("off") == 0
    assert parse_size("1.5MB") == 1_500_000
    with pytest.raises(ValueError):
        parse_size("lots")
    assert human(2_500_000) == "2.5 MB"


def test_budget_keeps_head_and_tail_and_spills_everything(tmp_path: os.PathLike) -> None:
    sent: list[tuple[str, str]] = []
    budget = OutputBudget(lambda s, t: sent.append((s, t)), 1000, spill_dir=str(tmp_path))
    lines = [f"line {i}\n" for i in range(10_000)]
    for i in range(0, len(lines), 7):
        budget.add("stdout", "".join(lines[i : i + 7]))
    budget.finish()
    shown = "".join(t for s, t in sent if s == "stdout")
    notice = "".join(t for s, t in sent if s == "stderr")
    assert shown.startswith("line 0\nline 1\n") and shown.endswith("line 9999\n")
    assert len(shown) <= 1000 + 250
    assert budget.spill_path and "left out" in notice and budget.spill_path in notice
    with open(budget.spill_path) as fh:
        assert fh.read() == "".join(lines)


def test_budget_memory_is_bounded() -> None:
    budget = OutputBudget(lambda s, t: None, 10_000, spill_dir="/tmp/lxck-budget-test")
    for _ in range(5000):
        budget.add("stdout", "y\n" * 500)
    assert budget._tail_size < 10_000  # only the tail is kept
    budget.finish()
    assert budget.spill_path is not None
    os.unlink(budget.spill_path)


def test_no_budget_passes_everything() -> None:
    sent: list[str] = []
    budget = OutputBudget(lambda s, t: sent.append(t), 0)
    budget.add("stdout", "x" * 10_000)
    budget.finish()
    assert sent == ["x" * 10_000]


# -- /proc parsing -----------------------------------------------------------------------------------


def test_parse_stat_with_odd_command_names() -> None:
    st = stdin.parse_stat("42 (a) b (c)) S 1 42 42 34816 42 4194560 0 0")
    assert (st.pid, st.comm, st.state, st.ppid, st.pgrp, st.tpgid) == (42, "a) b (c)", "S", 1, 42, 42)


def test_parse_syscall() -> None:
    read_nr = next(nr for nr, name in stdin.SYSCALLS.items() if name == "read")
    parsed = stdin.parse_syscall(f"{read_nr} 0x0 0x7ffd 0x1 0x0 0x0 0x0 0x7ffc 0x7f00")
    assert parsed == ("read", [0, 0x7FFD, 1, 0, 0, 0])
    assert stdin.parse_syscall("running") is None
    assert stdin.parse_syscall("230 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8") is None  # clock_nanosleep


def test_fd_sets() -> None:
    bits = bytearray(8)
    bits[0] = 0b1001
    assert stdin.fds_in_select(bytes(bits), 4) == [0, 3]
    polls = struct.pack("=ihh", 0, 1, 0) + struct.pack("=ihh", 5, 4, 0) + struct.pack("=ihh", -1, 1, 0)
    assert stdin.fds_in_poll(polls) == [0]


def test_password_mode() -> None:
    assert stdin.is_password_mode(termios.ICANON)
    assert not stdin.is_password_mode(termios.ICANON | termios.ECHO)
    assert not stdin.is_password_mode(0)  # a line editor's raw mode


@pytest.mark.timeout(20)
def test_find_waiter_on_a_host_pty() -> None:
    """The same detection on a plain host PTY: `read` in sh waits, `sleep` does not."""
    import time

    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(["sh", "-c", "sleep 0.3; read x; echo got $x"])
    try:
        assert stdin.find_waiter(proc.pid) is None
        deadline = time.monotonic() + 5
        waiter = None
        while waiter is None and time.monotonic() < deadline:
            time.sleep(0.05)
            waiter = stdin.find_waiter(proc.pid)
        assert waiter is not None and waiter.fd == 0 and not waiter.password
        proc.write(b"yes\n")
        out = b""
        while b"got yes" not in out:
            try:
                out += proc.read(100)
            except EOFError:
                break
        assert b"got yes" in out
    finally:
        proc.terminate(force=True)


def test_password_with_echo_off_between_cells() -> None:
    """busybox ash keeps echo off between cells; its `read -s` also clears ECHOK."""
    plain = stdin.Waiter(1, "sh", 0, termios.ICANON | termios.ECHOK)
    secret = stdin.Waiter(1, "sh", 0, termios.ICANON)
    assert not plain.password_echo_off and secret.password_echo_off
    assert plain.password  # the echo-on rule would misread ash's plain read: hence two rules
    assert not stdin.Waiter(1, "sh", 0, None).password
