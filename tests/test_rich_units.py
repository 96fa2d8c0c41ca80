"""Pure unit tests: display frames, the output budget, /proc parsing for interactive input."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import termios

import pytest

from lxc_kernel import stdin
from lxc_kernel.budget import OutputBudget, SpillDir, human, parse_size
from lxc_kernel.display import (
    HELPER_SCRIPT,
    MAX_FRAME,
    DisplayFrame,
    DisplayParser,
    OversizeFrame,
    bundle,
    inert_markdown,
)
from lxc_kernel.hostdirs import UnsafeDirectory, check_output_dir

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
    spill = SpillDir(str(tmp_path))
    budget = OutputBudget(lambda s, t: sent.append((s, t)), 1000, spill=spill)
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
    assert os.path.dirname(budget.spill_path) == spill.path
    assert os.stat(spill.path).st_mode & 0o777 == 0o700
    spill.close()
    assert not os.path.exists(spill.path) and os.listdir(tmp_path) == []


def test_budget_memory_is_bounded() -> None:
    spill = SpillDir()  # the system's temporary directory
    budget = OutputBudget(lambda s, t: None, 10_000, spill=spill)
    for _ in range(5000):
        budget.add("stdout", "y\n" * 500)
    assert budget._tail_size < 10_000  # only the tail is kept
    budget.finish()
    assert budget.spill_path is not None
    spill.close()
    assert not os.path.exists(budget.spill_path)


def test_spill_dir_total_is_capped_oldest_first(tmp_path: os.PathLike) -> None:
    spill = SpillDir(str(tmp_path), limit=50_000)
    paths = []
    for n in range(4):
        budget = OutputBudget(lambda s, t: None, 1000, spill=spill)
        budget.add("stdout", f"{n}" * 20_000)
        budget.finish()
        paths.append(budget.spill_path)
        assert spill.total <= 50_000
    assert [os.path.exists(p) for p in paths] == [False, False, True, True]  # room made for the newest
    sent: list[str] = []
    big = OutputBudget(lambda s, t: sent.append(t), 1000, spill=spill)
    big.add("stdout", "z" * 80_000)  # alone bigger than the cap: cut, and said so
    big.finish()
    assert os.path.getsize(big.spill_path) == 50_000 and "keeps at most 50.0 kB" in "".join(sent)
    spill.close()


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "group-writable", "other-owner", "file", "missing"])
def test_unsafe_output_dir_is_refused_and_unused(tmp_path: os.PathLike, kind: str) -> None:
    real = os.path.join(tmp_path, "real")
    os.mkdir(real, 0o700)
    target = os.path.join(tmp_path, "target")
    if kind == "symlink":
        os.symlink(real, target)
    elif kind == "file":
        open(target, "w").close()
    elif kind != "missing":
        os.mkdir(target)
        os.chmod(target, {"world-writable": 0o777, "group-writable": 0o770}.get(kind, 0o755))
        if kind == "other-owner":
            os.chown(target, 65534, 65534)
    reason = {"symlink": "symbolic link", "world-writable": "writable", "group-writable": "writable",
              "other-owner": "owned by uid 65534", "file": "not a directory", "missing": "does not exist"}[kind]
    with pytest.raises(UnsafeDirectory, match=reason):
        check_output_dir(target)
    sent: list[tuple[str, str]] = []
    budget = OutputBudget(lambda s, t: sent.append((s, t)), 100, spill=SpillDir(target))
    budget.add("stdout", "x\n" * 1000)
    budget.finish()
    assert budget.spill_path is None and reason in "".join(t for s, t in sent if s == "stderr")
    assert os.listdir(real) == [] and (kind != "other-owner" or os.listdir(target) == [])


def test_display_counts_against_the_budget() -> None:
    budget = OutputBudget(lambda s, t: None, 1000)
    assert budget.take(600) and budget.room() == 400
    assert not budget.take(600) and budget.displays_dropped == 1
    sent: list[str] = []
    budget.sink = lambda s, t: sent.append(t)
    budget.finish()
    assert "1 display output (600 characters) not shown" in "".join(sent)


def test_frame_cap_keeps_nothing_past_it() -> None:
    parser = DisplayParser(TOKEN, cap=1000)
    big = frame("image/png", b"x" * 200_000)
    items = [i for i in feed_all(parser, big, 4096) if not isinstance(i, str)]
    assert len(items) == 1 and isinstance(items[0], OversizeFrame) and items[0].cap == 1000
    assert abs(items[0].size - 200_000) < 5_000 and parser._payload == []
    assert feed_all(DisplayParser(TOKEN, cap=10), frame("text/plain", b"x" * 10), 7)[0] == DisplayFrame(
        "text/plain", b"x" * 10, None, False)
    over = [i for i in feed_all(DisplayParser(TOKEN, cap=MAX_FRAME * 4), frame("image/png", b"\0" * (MAX_FRAME + 1)),
                                1 << 20) if not isinstance(i, str)]
    assert over == [OversizeFrame("image/png", MAX_FRAME + 1, MAX_FRAME)]  # no cap goes past MAX_FRAME


def test_safe_display_sanitizes_html_and_refuses_active_types() -> None:
    evil = b'<b>ok</b><script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">l</a>'
    data, note = bundle(DisplayFrame("text/html", evil, None, False), "safe")
    html = data["text/html"]
    assert note is None and "<b>ok</b>" in html
    assert "script" not in html and "onerror" not in html and "javascript" not in html
    assert bundle(DisplayFrame("text/html", evil, None, False), "all")[0]["text/html"] == evil.decode()
    svg, _ = bundle(DisplayFrame("image/svg+xml", b"<svg onload='alert(1)'/>", None, False), "safe")
    assert "image/svg+xml" not in svg and svg["text/html"].startswith('<img src="data:image/svg+xml;base64,')
    for mime in ("application/javascript", "text/latex", "application/vnd.jupyter.widget-view+json"):
        data, why = bundle(DisplayFrame(mime, b"alert(1)", None, False), "safe")
        assert data == {} and why and "display=safe" in why
    md, note = bundle(DisplayFrame("text/markdown", b"[x](javascript:alert(1))", None, False), "safe")
    assert list(md) == ["text/plain"] and note
    assert bundle(DisplayFrame("text/markdown", b"# Title\n> quote & `a > b`", None, False), "safe")[0][
        "text/markdown"] == "# Title\n> quote & `a > b`"
    assert not inert_markdown("<img src=x onerror=alert(1)>") and not inert_markdown("[a]: javascript:x")


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
    """The same detection on a plain host PTY: `read` in sh waits, `sleep` does not. The read is from
    a read-only open of the terminal, as a kernel cell's is (0</dev/tty): the shell reading its own
    read-write fd 0 is waiting for its next command line, not a prompt (see the next test)."""
    import time

    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(["sh", "-c", "sleep 0.3; read x </dev/tty; echo got $x"])
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


def test_shell_reading_its_own_line_is_not_a_waiter() -> None:
    """Under load the end marker can still be in transit while the shell waits for its next line on
    its own read-write fd 0: that must never become an input request (12 kernels: 3 of 480 cells)."""
    import time

    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(["sh", "-c", "read x; echo got $x"])
    try:
        time.sleep(0.3)
        assert stdin.find_waiter(proc.pid) is None
        assert stdin.is_read_write(b"pos:\t0\nflags:\t02000002\n")
        assert not stdin.is_read_write(b"pos:\t0\nflags:\t0100000\n")
    finally:
        proc.terminate(force=True)


def test_password_with_echo_off_between_cells() -> None:
    """busybox ash keeps echo off between cells; its `read -s` also clears ECHOK."""
    plain = stdin.Waiter(1, "sh", 0, termios.ICANON | termios.ECHOK)
    secret = stdin.Waiter(1, "sh", 0, termios.ICANON)
    assert not plain.password_echo_off and secret.password_echo_off
    assert plain.password  # the echo-on rule would misread ash's plain read: hence two rules
    assert not stdin.Waiter(1, "sh", 0, None).password
