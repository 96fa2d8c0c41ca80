"""Issue 7, item 4, on real containers: bytes the container controls are read with a cap and a clear error.

Container root points /etc/passwd at /dev/zero or a 200 MB file, links a pulled path to /dev/zero, or
offers a file larger than the pull's cap; the kernel must fail fast, name what it refused, stay small,
and leave nothing on the host. Each case runs on a hostfs (GNU bash) and a busybox container of this
module's own (``lxck-t7b-<run>-``), so the shared test containers are never broken; they are destroyed
at the end, and the last check is that none is left.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import Kernel, Result, start_kernel

from lxc_kernel import stdin
from lxc_kernel.provision import destroy_container, ensure_container

RUN = f"lxck-t7b-{secrets.token_hex(2)}-"
KINDS = {"bash": "hostfs", "sh": "busybox"}
# A user every kind's /etc/passwd has: the hostfs kind writes `student`, the busybox template only root.
USERS = {"bash": "student", "sh": "root"}
RSS_LIMIT_MIB = 150


def lxc_names() -> list[str]:
    return subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    for name in [n for n in lxc_names() if n.startswith(RUN)]:
        try:
            destroy_container(name)
        except Exception:
            subprocess.run(["lxc-destroy", "-n", name, "-f", "-s"], capture_output=True)
    assert [n for n in lxc_names() if n.startswith(RUN)] == []


@pytest.fixture(params=sorted(KINDS), scope="module")
def box(request: pytest.FixtureRequest) -> Iterator[str]:
    """A running container of our own, of each kind; the `kind` is in its name."""
    name = f"{RUN}{request.param}"
    ensure_container(name, KINDS[request.param])
    yield name
    destroy_container(name)


def as_container_root(name: str, script: str, timeout: float = 120) -> str:
    """Run ``script`` inside the container as its root, as a hostile cell (or an intruder) would."""
    proc = subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    return proc.stdout


def kind_of(box: str) -> str:
    return box.rsplit("-", 1)[1]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident size (VmHWM): memory freed again after a spike still counts."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def ok(k: Kernel, code: str, timeout: float = 60) -> Result:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.errors, r.stream(), r.stream("stderr"))
    return r


def fails(k: Kernel, code: str, timeout: float = 60) -> tuple[str, str, Result]:
    r = k.execute(code, timeout=timeout)
    assert r.status == "error", (code, r.stream())
    assert len(r.errors) == 1, r.errors
    return r.errors[0]["ename"], r.errors[0]["evalue"], r


# -- the container's /etc/passwd ------------------------------------------------------------------------


@pytest.fixture
def restorable_passwd(box: str) -> Iterator[Callable[[], None]]:
    """Back up the container's /etc/passwd; hand out a restore function, and restore no matter what."""
    as_container_root(box, "cp -p /etc/passwd /etc/passwd.lxck-t7b")

    def restore() -> None:
        as_container_root(box, "rm -f /etc/passwd /root/big && cp -p /etc/passwd.lxck-t7b /etc/passwd")

    try:
        yield restore
    finally:
        restore()
        as_container_root(box, "rm -f /etc/passwd.lxck-t7b")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hostile", ["dev-zero", "200MB-file"])
def test_a_huge_etc_passwd_is_refused_quickly_and_the_kernel_stays_small(
    box: str, restorable_passwd: Callable[[], None], hostile: str
) -> None:
    if hostile == "dev-zero":
        as_container_root(box, "ln -sf /dev/zero /etc/passwd")
    else:
        as_container_root(box, "head -c 200000000 /dev/zero | tr '\\0' x > /root/big && ln -sf /root/big /etc/passwd")
    user = USERS[kind_of(box)]
    k = start_kernel(box, f"--LXCKernel.user={user}")
    try:
        before = rss_mib(k.pid)
        ename, evalue, r = fails(k, "id -un", timeout=60)
        peak = peak_rss_mib(k.pid)
        print(f"\n{box} {hostile}: {r.elapsed:.2f} s, RSS {before:.0f} MiB before, peak {peak:.0f} MiB, "
              f"now {rss_mib(k.pid):.0f} MiB")
        assert ename == "OutputTooLarge"
        assert "the container's /etc/passwd is larger than 4 MiB; refusing to read more" in evalue
        assert r.elapsed < 10, f"took {r.elapsed:.1f} s"
        assert peak < RSS_LIMIT_MIB, f"kernel peak RSS {peak:.0f} MiB"
        # Everything else works as before once the file is sane again, in the same kernel.
        restorable_passwd()
        assert ok(k, "id -un").stream().strip() == user
    finally:
        k.shutdown()


# -- %pull and %push ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_kernel(box: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    # %push/%pull reach only beneath the transfer root (issue 8): here, pytest's temporary directories.
    k = start_kernel(box, f"--LXCKernel.transfer_root={tmp_path_factory.getbasetemp()}")
    k.box = box  # type: ignore[attr-defined]
    yield k
    k.shutdown()


def _no_leftovers(directory: Path, name: str) -> None:
    assert not (directory / name).exists()
    assert not list(directory.glob(".lxck-pull-*")), "a partial file was left behind"


@pytest.mark.timeout(60)
def test_pull_of_a_path_linked_to_dev_zero_is_refused_fast(root_kernel: Kernel, tmp_path: Path) -> None:
    ok(root_kernel, "ln -sf /dev/zero /root/zero-link; mkfifo /root/fifo 2>/dev/null || true")
    try:
        for path in ("/root/zero-link", "/root/fifo", "/dev/zero", "/root"):
            ename, evalue, r = fails(root_kernel, f"%pull {path} {tmp_path / 'out.bin'}", timeout=20)
            assert ename == "TransferError" and f"{path}: not a regular file" in evalue, evalue
            assert r.elapsed < 5, f"{path}: {r.elapsed:.1f} s"
            _no_leftovers(tmp_path, "out.bin")
    finally:
        ok(root_kernel, "rm -f /root/zero-link /root/fifo")


@pytest.mark.timeout(60)
def test_push_onto_a_path_linked_to_dev_zero_is_refused_fast(root_kernel: Kernel, tmp_path: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(b"hello\n")
    ok(root_kernel, "ln -sf /dev/zero /root/zero-link")
    try:
        # Before: `cat > /dev/zero` worked, then `wc -c < /dev/zero` counted forever (600 s).
        ename, evalue, r = fails(root_kernel, f"%push {src} /root/zero-link", timeout=20)
        assert ename == "TransferError" and "/root/zero-link: not a regular file" in evalue, evalue
        assert r.elapsed < 5
    finally:
        ok(root_kernel, "rm -f /root/zero-link")


@pytest.mark.timeout(60)
def test_pull_max_refuses_a_larger_file_and_keeps_nothing(root_kernel: Kernel, tmp_path: Path) -> None:
    ok(root_kernel, "head -c 10000 /dev/urandom > /root/ten-k")
    try:
        ename, evalue, _ = fails(root_kernel, f"%pull --max 1K /root/ten-k {tmp_path / 'ten.bin'}")
        assert ename == "TransferError"
        assert "larger than 1 kB" in evalue and "--max" in evalue, evalue
        _no_leftovers(tmp_path, "ten.bin")
        # Exactly at the cap is fine, and byte-exact.
        out = ok(root_kernel, f"%pull --max 10k /root/ten-k {tmp_path / 'ten.bin'}").stream()
        assert "10000 bytes" in out
        got = ok(root_kernel, "sha256sum /root/ten-k").stream().split()[0]
        assert hashlib.sha256((tmp_path / "ten.bin").read_bytes()).hexdigest() == got
    finally:
        ok(root_kernel, "rm -f /root/ten-k")
    for bad in ("off", "0", "lots"):
        ename, evalue, _ = fails(root_kernel, f"%pull --max {bad} /etc/hostname {tmp_path / 'h'}")
        assert ename == "UsageError" and "--max" in evalue, evalue
        _no_leftovers(tmp_path, "h")


@pytest.mark.timeout(120)
def test_normal_pushes_and_pulls_stay_byte_exact(root_kernel: Kernel, tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"\0\r\n\r\x03\x04\x1b[31m\xff"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    try:
        ok(root_kernel, f"%push {src} /root/blob.bin\n%push {tmp_path / 'empty'} /root/empty")
        ok(root_kernel, f"%pull /root/blob.bin {tmp_path / 'back.bin'}\n%pull /root/empty {tmp_path / 'back0'}")
        assert (tmp_path / "back.bin").read_bytes() == data
        assert (tmp_path / "back0").read_bytes() == b""
        # A regular file reached through a symlink is still a regular file.
        ok(root_kernel, "ln -sf /root/blob.bin /root/blob-link")
        ok(root_kernel, f"%pull /root/blob-link {tmp_path / 'via.bin'}")
        assert (tmp_path / "via.bin").read_bytes() == data
        # A missing file says so, in the container's own words.
        _, evalue, _ = fails(root_kernel, f"%pull /root/nonexistent {tmp_path / 'x'}")
        assert "No such file" in evalue or "can't open" in evalue, evalue
        _no_leftovers(tmp_path, "x")
    finally:
        ok(root_kernel, "rm -f /root/blob.bin /root/empty /root/blob-link")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_default_cap_stops_a_pull_past_1_gib_with_a_small_kernel(root_kernel: Kernel, tmp_path: Path) -> None:
    # Sparse: 1 GiB + 1 byte of zeros costs the container no disk.
    ok(root_kernel, "rm -f /root/sparse; dd if=/dev/zero of=/root/sparse bs=1 count=1 seek=1073741824 2>/dev/null")
    try:
        ename, evalue, r = fails(root_kernel, f"%pull /root/sparse {tmp_path / 'sparse'}", timeout=120)
        assert ename == "TransferError" and "larger than 1 GiB" in evalue, evalue
        _no_leftovers(tmp_path, "sparse")
        peak = peak_rss_mib(root_kernel.pid)
        print(f"\n{root_kernel.box}: 1 GiB + 1 pull refused in {r.elapsed:.2f} s, kernel peak RSS {peak:.0f} MiB")  # type: ignore[attr-defined]
        assert peak < RSS_LIMIT_MIB
    finally:
        ok(root_kernel, "rm -f /root/sparse")


# -- /proc reads ---------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_command_lines_from_proc_are_read_by_a_prefix() -> None:
    # A process's command line can be megabytes; messages and liveness checks need its start only.
    big = ["x" * 100_000] * 10  # 1 MB (one argument may hold at most 128 KiB: MAX_ARG_STRLEN)
    proc = subprocess.Popen(["sh", "-c", "sleep 30; exit 0", "lxc_kernel", *big], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        line = ""
        while not line.startswith("sh -c") and time.monotonic() < deadline:
            line = stdin.command_line(proc.pid)
        assert line.startswith("sh -c sleep 30; exit 0 lxc_kernel xxx") and line.endswith(" ...")
        assert len(line) < 4200
        # (Ephemeral copies no longer judge a kernel alive by its command line: a lock, issue 8.)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
