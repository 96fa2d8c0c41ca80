"""bounded.py on real host processes (`yes`, `head -c`, `cat /dev/zero`, `sleep`): caps, deadlines, no deadlock."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lxc_kernel.bounded import (
    HelperTimeout,
    MiB,
    OutputTooLarge,
    copy_bounded,
    format_limit,
    read_capped,
    read_tail,
    run_bounded,
)
from lxc_kernel.errors import LxcKernelError

ROOT = Path(__file__).resolve().parent.parent


def _gone(pid: int, within: float = 2.0) -> bool:
    """The process has exited (a zombie counts as gone: it runs nothing)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _pid_from(path: Path) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"no pid in {path}")


def _peak_rss_mib(code: str) -> float:
    """Run ``code`` in a fresh interpreter and return its peak RSS: a freed buffer can't hide there."""
    script = code + "\nimport resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    peak = [line for line in out.stdout.splitlines() if line.startswith("PEAK ")]
    return int(peak[-1].split()[1]) / 1024


def _baseline_mib() -> float:
    return _peak_rss_mib("import lxc_kernel.bounded")


# -- the result when nothing goes over ----------------------------------------------------------------


@pytest.mark.timeout(10)
def test_small_output_comes_back_whole_with_status_and_stderr() -> None:
    r = run_bounded(["sh", "-c", "printf 'a\\0b'; echo oops >&2; exit 3"], timeout=5, stdout_limit=3)
    assert (r.stdout, r.stderr, r.returncode, r.stdout_size) == (b"a\0b", b"oops\n", 3, 3)
    assert r.argv[0] == "sh" and r.seconds < 5


@pytest.mark.timeout(10)
def test_output_exactly_at_the_limit_is_not_an_error() -> None:
    r = run_bounded(["head", "-c", "1048576", "/dev/zero"], timeout=5, stdout_limit=1 * MiB)
    assert len(r.stdout) == 1 * MiB and r.returncode == 0


@pytest.mark.timeout(10)
def test_the_child_gets_only_the_tool_environment() -> None:
    os.environ["LXCK_SECRET_FOR_TEST"] = "x"
    try:
        r = run_bounded(["env"], timeout=5, stdout_limit=64 << 10)
    finally:
        del os.environ["LXCK_SECRET_FOR_TEST"]
    assert b"LXCK_SECRET_FOR_TEST" not in r.stdout and b"PATH=" in r.stdout


# -- over the cap ---------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_endless_stdout_raises_fast_names_what_and_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(OutputTooLarge) as info:
        run_bounded(["sh", "-c", f"echo $$ > {pidfile}; exec cat /dev/zero"], timeout=30,
                    stdout_limit=4 * MiB, what="the container's /etc/passwd")
    took = time.monotonic() - t0
    assert str(info.value) == "the container's /etc/passwd is larger than 4 MiB; refusing to read more"
    assert isinstance(info.value, LxcKernelError) and info.value.limit == 4 * MiB
    assert took < 2, f"took {took:.2f} s"
    assert _gone(_pid_from(pidfile), within=0.5), "the child still runs after the cap was hit"


@pytest.mark.timeout(60)
def test_memory_stays_near_the_cap_when_a_child_prints_300_mb() -> None:
    base = _baseline_mib()
    peak = _peak_rss_mib(
        "from lxc_kernel.bounded import run_bounded, OutputTooLarge\n"
        "try:\n"
        "    run_bounded(['head', '-c', '300000000', '/dev/zero'], timeout=30, stdout_limit=4 << 20)\n"
        "except OutputTooLarge:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    assert peak - base < 30, f"peak {peak:.0f} MiB against {base:.0f} MiB for the bare import"


@pytest.mark.timeout(60)
def test_endless_stderr_is_cut_with_a_note_not_an_error_and_memory_stays_small() -> None:
    r = run_bounded(["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' e >&2; echo done"], timeout=30,
                    stdout_limit=100, stderr_limit=1000)
    assert r.returncode == 0 and r.stdout == b"done\n"
    assert b"bytes of stderr left out" in r.stderr and len(r.stderr) < 1100
    assert r.stderr.startswith(b"e" * 500) and r.stderr.endswith(b"e" * 500)
    base = _baseline_mib()
    peak = _peak_rss_mib(
        "from lxc_kernel.bounded import run_bounded\n"
        "r = run_bounded(['sh', '-c', 'head -c 300000000 /dev/zero >&2'], timeout=30, stdout_limit=0,\n"
        "                stderr_limit=1 << 20)\n"
        "assert r.returncode == 0 and len(r.stderr) < (1 << 20) + 100\n"
    )
    assert peak - base < 30, f"peak {peak:.0f} MiB against {base:.0f} MiB for the bare import"


# -- no deadlock both ways -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_big_input_and_big_output_at_once_do_not_deadlock() -> None:
    data = os.urandom(48 * MiB)
    # `cat` echoes as it reads: writing all the input before reading any output would block forever.
    r = run_bounded(["cat"], input=data, timeout=30, stdout_limit=48 * MiB)
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(data).digest()
    # Output first, then the input, then both again, with stderr flowing too.
    script = "head -c 8000000 /dev/zero; head -c 3000000 /dev/zero >&2; cat; head -c 100 /dev/zero >&2"
    r = run_bounded(["sh", "-c", script], input=data, timeout=30, stdout_limit=64 * MiB, stderr_limit=4 * MiB)
    assert r.stdout == b"\0" * 8000000 + data and len(r.stderr) == 3000100


@pytest.mark.timeout(20)
def test_a_child_that_stops_reading_its_input_is_not_an_error() -> None:
    r = run_bounded(["head", "-c", "10"], input=os.urandom(16 * MiB), timeout=10, stdout_limit=100)
    assert r.returncode == 0 and len(r.stdout) == 10


@pytest.mark.timeout(20)
def test_stdin_may_be_an_open_file(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(3 * MiB)
    src.write_bytes(data)
    with open(src, "rb") as fh:
        r = run_bounded(["wc", "-c"], stdin=fh, timeout=10, stdout_limit=100)
    assert r.stdout.split() == [str(len(data)).encode()]
    with pytest.raises(ValueError):
        run_bounded(["true"], input=b"x", stdin=0, timeout=1, stdout_limit=1)


# -- deadlines ------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_timeout_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(HelperTimeout) as info:
        run_bounded(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=0.5, stdout_limit=10,
                    what="the container's /etc/group")
    assert time.monotonic() - t0 < 2
    assert "the container's /etc/group took longer than 0.5 s" in str(info.value)
    assert isinstance(info.value, LxcKernelError)
    assert _gone(_pid_from(pidfile), within=0.5)


@pytest.mark.timeout(20)
def test_timeout_holds_while_a_grandchild_keeps_the_pipes_and_its_group_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    # The shell exits at once, but the background sleep still holds stdout: no end of file, ever.
    with pytest.raises(HelperTimeout):
        run_bounded(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started"], timeout=0.5,
                    stdout_limit=100, start_new_session=True)
    assert time.monotonic() - t0 < 2
    assert _gone(_pid_from(pidfile), within=1.0), "the group was not killed"


@pytest.mark.timeout(20)
def test_a_timeout_while_writing_input_kills_too() -> None:
    t0 = time.monotonic()
    with pytest.raises(HelperTimeout):
        run_bounded(["sleep", "30"], input=os.urandom(8 * MiB), timeout=0.5, stdout_limit=10)
    assert time.monotonic() - t0 < 2


# -- streaming to a file --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_copy_streams_to_the_file_and_stops_at_the_cap(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    with open(dest, "wb") as out:
        r = copy_bounded(["head", "-c", "5000000", "/dev/urandom"], out, max_bytes=5000000, timeout=10)
    assert r.stdout == b"" and r.stdout_size == 5000000 and dest.stat().st_size == 5000000
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with open(dest, "wb") as out, pytest.raises(OutputTooLarge) as info:
        copy_bounded(["sh", "-c", f"echo $$ > {pidfile}; exec cat /dev/zero"], out, max_bytes=1000,
                     timeout=30, what="/x")
    assert time.monotonic() - t0 < 2 and str(info.value) == "/x is larger than 1 kB; refusing to read more"
    assert dest.stat().st_size == 1000  # never a byte past the cap
    assert _gone(_pid_from(pidfile), within=0.5)


@pytest.mark.timeout(60)
def test_copy_keeps_memory_small() -> None:
    base = _baseline_mib()
    peak = _peak_rss_mib(
        "from lxc_kernel.bounded import copy_bounded\n"
        "with open('/dev/null', 'wb') as out:\n"
        "    r = copy_bounded(['head', '-c', '300000000', '/dev/zero'], out, max_bytes=1 << 30, timeout=30)\n"
        "assert r.stdout_size == 300000000\n"
    )
    assert peak - base < 30, f"peak {peak:.0f} MiB against {base:.0f} MiB for the bare import"


# -- files ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_read_capped_reads_a_prefix_of_a_huge_command_line(tmp_path: Path) -> None:
    big = "x" * 100_000
    argv = ["sh", "-c", "sleep 30; exit 0", "sh", big, big]  # the shell waits, its argv stays
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        data = b""
        while not data.startswith(b"sh\0") and time.monotonic() < deadline:  # until the exec is done
            data = read_capped(f"/proc/{proc.pid}/cmdline", 4096) or b""
        assert len(data) == 4096 and data.startswith(b"sh\0-c\0sleep 30; exit 0\0sh\0xxx")
        whole = read_capped(f"/proc/{proc.pid}/cmdline", 1 << 20)
        assert whole == b"".join(a.encode() + b"\0" for a in argv)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and its sleep
        proc.wait()
    assert read_capped(str(tmp_path / "missing"), 10) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert read_capped(str(fifo), 10) == b""  # no writer: empty, and the open does not block
    assert time.monotonic() - t0 < 1
    assert read_capped("/dev/zero", 10) == b"\0" * 10


@pytest.mark.timeout(10)
def test_read_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    tail = read_tail(str(log), 100)
    assert tail is not None and len(tail) == 100 and tail.endswith(b"line 99999\n")
    assert read_tail(str(log), 1 << 20, start=log.stat().st_size - 11) == b"line 99999\n"
    assert read_tail(str(tmp_path / "missing"), 10) is None


def test_format_limit() -> None:
    assert [format_limit(n) for n in (4 << 20, 1 << 30, 4096, 1000, 2_000_000, 1, 1536)] == [
        "4 MiB", "1 GiB", "4 KiB", "1 kB", "2 MB", "1 byte", "1536 bytes"]
