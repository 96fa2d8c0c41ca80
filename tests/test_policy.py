"""Issue 8, the magics policy and the transfer root: which magics a cell may run, and where %push/%pull reach.

First the pure rules and the host-side path resolution (no container); then real kernels through
jupyter_client on a busybox container of this module's own (``lxck-t8p-<run>-``, destroyed at the end,
and the last check is that none is left), and a spec installed with ``--attach-user student`` on the
shared ``lxck-test-bash`` for read-only checks. No assertion depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BASH, Kernel, ensure_test_containers, install_test_kernelspecs, start_kernel
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from lxc_kernel import install, magics, policy, transfer
from lxc_kernel.options import OPTIONS
from lxc_kernel.provision import destroy_container, provision

RUN = f"lxck-t8p-{secrets.token_hex(2)}-"
HOW = "--magics"  # every refusal says how the policy is changed


# -- the pure rules ------------------------------------------------------------------------------------


class Host:
    """The option traits at their defaults (from the table), and where magic output goes; no lxc tool runs."""

    def __init__(self, magics_policy: str) -> None:
        for option in OPTIONS:
            setattr(self, option.name, option.initial())
        self.magics = magics_policy
        self.container = "lxck-t8p-unit"
        self.shell_session: Any = None
        self.out: list[str] = []
        self.closed = 0

    @property
    def tools(self) -> Any:
        raise AssertionError("no lxc tool may run in these tests")

    @property
    def lifecycle(self) -> Any:
        raise AssertionError("no backend may run in these tests")

    def emit_text(self, text: str, stream: str = "stdout") -> None:
        self.out.append(text)

    def emit_display(self, data: dict[str, str]) -> None:
        self.out.append(data["text/plain"])

    def close_session(self) -> None:
        self.closed += 1

    def text(self) -> str:
        return "".join(self.out)


SAFE_LINES = ["timeout 2.5", "output 200k", "colors on", "help", "help push", "lsmagic", "push --help",
              "lxc --help", "attach --help"]
REFUSED_UNDER_SAFE = [
    "attach user root", "attach show", "attach elevated CAP", "push /etc/shadow x", "pull x /etc/cron.d/evil",
    "lxc start", "lxc stop c1", "lxc use c1", "lxc destroy c1 --force", "lxc config get lxc.rootfs.path",
    "lxc config set lxc.uts.name x -n c1", "lxc create c2", "lxc limit memory 1G", "lxc log",
    "lxc clone a b", "lxc snapshot", "lxc", "lxc --bogus",
]


@pytest.mark.parametrize("line", SAFE_LINES)
def test_safe_runs_the_safe_magics(line: str) -> None:
    host = Host("safe")
    magics.run_line(host, line)
    assert host.text()


@pytest.mark.parametrize("line", REFUSED_UNDER_SAFE)
def test_safe_refuses_the_rest_and_changes_nothing(line: str) -> None:
    host = Host("safe")
    before = dict(vars(host))
    with pytest.raises(policy.MagicRefused) as err:
        magics.run_line(host, line)
    message = str(err.value)
    assert message.startswith(f"%{line}: refused by this kernel's magics policy `safe`")
    assert HOW in message and "kernelspec" in message and "Nothing in this cell ran" in message
    assert vars(host) == before and host.out == []


def test_a_refused_line_anywhere_in_the_cell_stops_every_line_of_it() -> None:
    host = Host("safe")
    with pytest.raises(policy.MagicRefused):
        magics.run_magics(host, ["timeout 7", "colors on", "attach user root"])
    assert host.cell_timeout == 0.0 and host.colors is False and host.user == "" and host.out == []
    magics.run_magics(host, ["timeout 7", "colors on"])
    assert host.cell_timeout == 7.0 and host.colors is True


@pytest.mark.parametrize("line", ["help", "lsmagic", "timeout 5", "push a b", "nope", "lxc status", "help --help"])
def test_none_refuses_every_magic_line(line: str) -> None:
    host = Host("none")
    with pytest.raises(policy.MagicRefused) as err:
        magics.run_line(host, line)
    assert "magics policy `none`: magics are turned off in this kernel" in str(err.value) and HOW in str(err.value)
    assert host.out == [] and host.cell_timeout == 0.0


def test_a_policy_the_validator_refused_fails_closed() -> None:
    # A bad configured value is kept as given (options.traits), so the policy must not read it as `all`.
    host = Host("sfae")
    with pytest.raises(policy.MagicRefused, match="`sfae` is not a magics policy"):
        magics.run_line(host, "timeout 5")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("lxc config set lxc.hook.pre-start /tmp/x.sh -n c1", "lxc.hook.pre-start runs a host program as root"),
        ("lxc config set LXC.Hook.Start /x -n c1", "runs a host program as root"),
        ("lxc config set lxc.mount.entry '/ mnt none bind 0 0' -n c1", "mounts host paths"),
        ("lxc create c2 --config lxc.mount.auto=proc:rw", "mounts host paths"),
        ("lxc create c2 --seccomp /etc/shadow", "lxc.seccomp.profile"),
        ("lxc create c2 -t /tmp/evil.sh", "a template runs as root on the host"),
        ("lxc create c2 -t ../evil", "a template runs as root on the host"),
        ("lxc create c2 -t no-such-template", "a template runs as root on the host"),
        ("lxc create c2 -t download -- --dist x", "template arguments"),
        # The generic reason where no argument rule applies: create is simply not in `safe`.
        ("lxc create c2 -t busybox", "`safe` allows only"),
        ("lxc create c2 -t alpine", "`safe` allows only"),
    ],
)
def test_host_keys_and_templates_say_why_they_need_all(line: str, says: str) -> None:
    with pytest.raises(policy.MagicRefused) as err:
        magics.run_line(Host("safe"), line)
    assert says in str(err.value) and "`all`" in str(err.value)


@pytest.mark.parametrize(
    "key",
    ["lxc.hook.pre-start", "lxc.hook.version", "lxc.net.0.script.up", "lxc.mount.fstab", "lxc.mount.auto",
     "lxc.rootfs.path", "lxc.include", "lxc.log.file", "lxc.console.logfile", "lxc.console.path", "lxc.cap.drop",
     "lxc.cap.keep", "lxc.cgroup.devices.allow", "lxc.cgroup2.devices.allow", "lxc.cgroup.dir.container",
     "lxc.apparmor.profile", "lxc.seccomp.profile", "lxc.selinux.context", "lxc.idmap", "lxc.namespace.keep",
     "lxc.namespace.share.net", "lxc.sysctl.kernel.core_pattern"],
)
def test_host_keys(key: str) -> None:
    assert policy.host_key(key) is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [("lxc.environment", "A=1"), ("lxc.cgroup2.memory.max", "1G"), ("lxc.cgroup.cpuset.cpus", "0"),
     ("lxc.uts.name", "x"), ("lxc.net.0.type", "veth"), ("lxc.log.level", "INFO"), ("lxc.start.auto", "1"),
     ("lxc.init.cmd", "/sbin/init"), ("lxc.tty.max", "4")],
)
def test_keys_that_stay_in_the_container(key: str, value: str) -> None:
    assert policy.host_key(key, value) is None
    assert policy.host_key("lxc.net.0.type", "phys") is not None


def test_templates_from_the_template_directory_or_the_kinds() -> None:
    kinds = ("busybox", "hostfs", "debian")
    assert policy.listed_template("hostfs", kinds) and policy.listed_template("busybox", kinds)
    for template in ("/usr/share/lxc/templates/lxc-busybox", "../busybox", "", ".."):
        assert not policy.listed_template(template, kinds)
    if os.path.isfile(os.path.join(policy.TEMPLATE_DIR, "lxc-download")):
        assert policy.listed_template("download", kinds)


def test_lsmagic_and_help_say_what_the_policy_allows() -> None:
    host = Host("safe")
    magics.run_line(host, "lsmagic")
    listing = host.text()
    for entry in magics.REGISTRY.values():
        assert entry.summary in listing
    by_name = {entry.name: next(line for line in listing.splitlines() if line.startswith(entry.summary))
               for entry in magics.REGISTRY.values()}
    for name in ("push", "pull", "attach"):
        assert by_name[name].endswith("[refused here (magics policy safe)]")
    assert by_name["lxc"].endswith("[only %lxc status, info, list here (magics policy safe)]")
    for name in policy.SAFE_MAGICS:
        assert by_name[name] == magics.REGISTRY[name].summary
    assert "Magics policy: safe. Allowed: %timeout, %output" in listing
    host = Host("safe")
    magics.run_line(host, "help attach")
    assert host.text().startswith(magics.REGISTRY["attach"].doc)
    assert "In this kernel: refused here (magics policy safe)" in host.text()
    host = Host("safe")
    magics.run_line(host, "help timeout")
    assert host.text() == magics.REGISTRY["timeout"].doc + "\n"
    host = Host("all")
    magics.run_line(host, "lsmagic")
    assert "Magics policy: all" in host.text() and "refused" not in host.text()


# -- the install CLI -------------------------------------------------------------------------------------


def _traits(*argv: str) -> dict[str, Any]:
    return install.traits_from_args(install.build_parser().parse_args(["--container", "c1", *argv]))


def test_attach_user_specs_default_to_safe() -> None:
    assert _traits("--attach-user", "student")["magics"] == "safe"
    assert _traits("--attach-user", "student", "--magics", "all")["magics"] == "all"
    assert _traits("--attach-user", "student", "--magics", "none")["magics"] == "none"
    assert "magics" not in _traits()  # the kernel's default, all
    assert _traits("--magics", "safe", "--transfer-root", "/srv/nb") == {
        "container": "c1", "magics": "safe", "transfer_root": "/srv/nb"}


# -- the host side of %push/%pull, in-process ---------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (the transfer root) beside outside/, with symlinks out of the root and inside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.txt").write_bytes(b"inside\n")
    (outside / "secret").write_bytes(b"secret\n")
    (root / "out-dir").symlink_to("../outside")
    (root / "out-file").symlink_to("../outside/secret")
    (root / "abs").symlink_to("/etc/passwd")
    (root / "to-sub").symlink_to("sub")
    (root / "to-a").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    return tmp_path


def _source(root: Path | str, path: str) -> bytes:
    with transfer.HostRoot(str(root)).source(path) as source:
        return os.read(source.fd, 1 << 16)


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a path is resolved beneath the root: openat2(RESOLVE_BENEATH), and the component walk
    used where openat2 is missing."""
    if request.param == "walk":
        monkeypatch.setattr(transfer, "_have_openat2", False)
    return str(request.param)


def test_sources_inside_the_root_open(tree: Path, resolution: str) -> None:
    root = tree / "root"
    assert _source(root, "a.txt") == b"inside\n"
    assert _source(root, str(root / "a.txt")) == b"inside\n"
    assert _source(root, f"{tree}//root/./sub/../a.txt") == b"inside\n"
    if resolution == "openat2":
        assert _source(root, "to-a") == b"inside\n"  # a symlink that stays inside is followed


@pytest.mark.parametrize(
    ("path", "says"),
    [("/etc/shadow", "is outside the transfer root"), ("../outside/secret", "leads out of the root"),
     ("sub/../../outside/secret", "leads out of the root"), ("out-dir/secret", ""), ("out-file", ""),
     ("abs", ""), ("~/x", "is outside the transfer root"), ("fifo", "not a regular file"),
     ("sub", "not a regular file")],
)
def test_sources_outside_the_root_are_refused(tree: Path, resolution: str, path: str, says: str) -> None:
    with pytest.raises(transfer.TransferError) as err:
        _source(tree / "root", path)
    assert says in str(err.value)
    if says == "" and resolution == "openat2":
        assert "leads out of the root" in str(err.value)


def test_a_source_over_the_cap_is_refused(tree: Path) -> None:
    with pytest.raises(transfer.TransferError, match="larger than 6 bytes, the most a push sends"):
        with transfer.HostRoot(str(tree / "root")).source("a.txt", max_bytes=6):
            pass


def _local(argv: Any) -> list[str]:
    return list(argv)  # the transfer runs on this host: transfer.py knows nothing of LXC


def _pull(root: Path, path: str, data_from: str = "/etc/hostname") -> str:
    with transfer.HostRoot(str(root)).target(path, os.path.basename(data_from)) as target:
        return transfer.pull(_local, data_from, target).dest


def test_pull_targets_inside_the_root(tree: Path) -> None:
    root, data = tree / "root", Path("/etc/hostname").read_bytes()
    assert _pull(root, "new.bin") == "new.bin" and (root / "new.bin").read_bytes() == data
    assert _pull(root, "sub") == "sub/hostname" and (root / "sub/hostname").read_bytes() == data
    assert _pull(root, "to-sub") == "to-sub/hostname"  # a symlink to a directory inside: into it
    _pull(root, "to-a")
    assert not (root / "to-a").is_symlink() and (root / "a.txt").read_bytes() == b"inside\n", \
        "a link is replaced by the pulled file, never written through"
    assert not list(root.rglob(".lxck-pull-*"))


@pytest.mark.parametrize("path", ["/etc/cron.d/evil", "../outside/evil", "out-dir", "out-dir/evil", "out-file",
                                  "abs", "sub/../../outside/evil"])
def test_pull_targets_outside_the_root_are_refused(tree: Path, path: str) -> None:
    before = sorted(p.name for p in (tree / "outside").iterdir())
    with pytest.raises(transfer.TransferError, match="outside the transfer root"):
        _pull(tree / "root", path)
    assert sorted(p.name for p in (tree / "outside").iterdir()) == before
    assert (tree / "outside/secret").read_bytes() == b"secret\n"
    assert not os.path.exists("/etc/cron.d/evil")


def test_a_directory_swapped_for_a_symlink_after_the_open_still_lands_inside(tree: Path, resolution: str) -> None:
    """The race a check-then-open has: the kernel holds the directory it resolved, so a component
    replaced by a link out of the root between the resolution and the write changes nothing."""
    root = tree / "root"
    with transfer.HostRoot(str(root)).target("sub/file", "x") as target:
        (root / "sub").rename(root / "moved")
        (root / "sub").symlink_to("../outside")
        transfer.pull(_local, "/etc/hostname", target)
    assert (root / "moved/file").read_bytes() == Path("/etc/hostname").read_bytes()
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["secret"]


def test_the_default_root_is_the_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "root")
    assert _source("", "a.txt") == b"inside\n"
    with pytest.raises(transfer.TransferError, match=f"outside the transfer root {tree / 'root'}"):
        _source("", str(tree / "outside/secret"))
    with pytest.raises(transfer.TransferError, match="not an absolute path"):
        transfer.HostRoot("relative/dir")


# -- real kernels on a container of our own ---------------------------------------------------------------


def lxc_names() -> list[str]:
    return subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    for name in sorted((n for n in lxc_names() if n.startswith(RUN)), key=len, reverse=True):
        try:
            destroy_container(name)
        except Exception:
            subprocess.run(["lxc-destroy", "-n", name, "-f", "-s"], capture_output=True)
    assert [n for n in lxc_names() if n.startswith(RUN)] == []


@pytest.fixture(scope="module")
def box() -> Iterator[str]:
    name = f"{RUN}box"
    provision(name, "busybox", start=True)
    yield name
    destroy_container(name)


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root`` (the kernels' transfer root) and ``outside`` beside it, with links out of the root."""
    base = tmp_path_factory.mktemp("t8p")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret\n")
    (root / "out-dir").symlink_to("../outside")
    (root / "out-file").symlink_to("../outside/secret")
    return base


def _kernel(box: str, area: Path, policy_name: str) -> Iterator[Kernel]:
    k = start_kernel(box, f"--LXCKernel.magics={policy_name}", f"--LXCKernel.transfer_root={area / 'root'}")
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def all_kernel(box: str, area: Path) -> Iterator[Kernel]:
    yield from _kernel(box, area, "all")


@pytest.fixture(scope="module")
def safe_kernel(box: str, area: Path) -> Iterator[Kernel]:
    yield from _kernel(box, area, "safe")


@pytest.fixture(scope="module")
def none_kernel(box: str, area: Path) -> Iterator[Kernel]:
    yield from _kernel(box, area, "none")


def ok(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.errors, r.stream(), r.stream("stderr"))
    return r.stream()


def fails(k: Kernel, code: str, ename: str, timeout: float = 60) -> str:
    """Run a cell that must fail with ``ename``; its evalue. Nothing may have been printed."""
    r = k.execute(code, timeout=timeout)
    assert r.status == "error" and len(r.errors) == 1, (code, r.stream())
    assert r.errors[0]["ename"] == ename, r.errors[0]
    assert r.stream() == "", (code, r.stream())
    return str(r.errors[0]["evalue"])


def config_of(name: str) -> bytes:
    return Path(f"/var/lib/lxc/{name}/config").read_bytes()


@pytest.mark.timeout(120)
def test_safe_kernel_runs_the_safe_magics(safe_kernel: Kernel, box: str) -> None:
    k = safe_kernel
    assert ok(k, "%timeout 30\n%timeout").strip().endswith("timeout: 30 s")
    assert "output budget" in ok(k, "%output 200k")
    ok(k, "%output 1M\n%timeout off\n%colors on\n%colors off")
    ok(k, "kept=42")
    assert "re-attached" in ok(k, "%stderr merged")
    assert "re-attached" in ok(k, "%stderr separate")
    assert "fresh shell" in ok(k, "%reset")
    assert f"container {box}: RUNNING" in ok(k, "%lxc status")
    info = ok(k, "%lxc info")
    assert "magics" in info and "safe" in info and "transfer-root" in info
    listing = k.execute("%lxc list")
    assert listing.status == "ok" and box in listing.of_type("display_data")[0]["content"]["data"]["text/plain"]
    assert "Magics policy: safe" in ok(k, "%lsmagic")
    assert "refused here (magics policy safe)" in ok(k, "%help push")
    assert ok(k, "%push --help").startswith("%push [--max SIZE]")


@pytest.mark.timeout(180)
def test_safe_kernel_refuses_the_rest_and_nothing_changes(safe_kernel: Kernel, box: str, area: Path) -> None:
    k = safe_kernel
    ok(k, "kept=42; echo $$ > /tmp/t8p-pid")
    pid = ok(k, "cat /tmp/t8p-pid").strip()
    config = config_of(box)
    script = area / "root" / "template.sh"
    marker = area / "template-ran"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(0o755)
    new = f"{RUN}made"
    refused = {
        "%attach user root": "`safe` allows only",
        "%push /etc/shadow /tmp/shadow": "`safe` allows only",
        "%pull /etc/hostname evil": "`safe` allows only",
        f"%lxc config set lxc.hook.pre-start {script} -n {box}": "lxc.hook.pre-start runs a host program as root",
        f"%lxc config set lxc.mount.entry '/ mnt none bind 0 0' -n {box}": "mounts host paths",
        f"%lxc create {new} -t {script}": "a template runs as root on the host",
        f"%lxc create {new}": "`safe` allows only",
        f"%lxc stop {box}": "`safe` allows only",
        f"%lxc use {BASH}": "`safe` allows only",
        "%attach elevated CAP": "`safe` allows only",
        # A refused line anywhere stops the lines before it too, and the cell's shell code.
        "%timeout 1\n%colors on\n%attach user root\ntouch /tmp/t8p-ran": "`safe` allows only",
    }
    for code, says in refused.items():
        evalue = fails(k, code, "MagicRefused")
        assert "refused by this kernel's magics policy `safe`" in evalue and says in evalue, (code, evalue)
        assert HOW in evalue and "Nothing in this cell ran" in evalue
    # Nothing changed: the same shell with its variables, the same options, config and containers.
    assert ok(k, "echo $kept $$").split() == ["42", pid]
    assert ok(k, "%timeout").strip() == "timeout: off"
    assert ok(k, "test -e /tmp/t8p-ran || echo absent; test -e /tmp/shadow || echo absent").split() == ["absent"] * 2
    assert config_of(box) == config and new not in lxc_names() and not marker.exists()
    assert not (area / "root" / "evil").exists()


@pytest.mark.timeout(60)
def test_none_kernel_refuses_every_magic_and_runs_shell_code(none_kernel: Kernel) -> None:
    k = none_kernel
    for code in ("%help", "%lsmagic", "%timeout 5\necho SHOULD_NOT_RUN", "%lxc status", "%nope", "%push --help"):
        evalue = fails(k, code, "MagicRefused")
        assert "magics policy `none`: magics are turned off in this kernel" in evalue and HOW in evalue
    assert ok(k, "echo fine").strip() == "fine"
    assert ok(k, "echo %timeout 5").strip() == "%timeout 5"  # only leading % lines are magics


@pytest.mark.timeout(120)
def test_all_kernel_allows_templates_by_path_and_host_keys(all_kernel: Kernel) -> None:
    new = f"{RUN}bypath"
    out = ok(all_kernel, f"%lxc create {new} -t /usr/share/lxc/templates/lxc-busybox")
    assert f"created {new}" in out
    out = ok(all_kernel, f"%lxc config set lxc.hook.pre-start /bin/true -n {new}")
    assert "lxc.hook.pre-start = /bin/true" in out
    assert b"lxc.hook.pre-start = /bin/true" in config_of(new)
    ok(all_kernel, f"%lxc destroy {new}")
    assert new not in lxc_names()


# -- %push / %pull and the transfer root, through the kernel -----------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(120)
def test_transfers_inside_the_root_are_byte_exact(all_kernel: Kernel, area: Path) -> None:
    root = area / "root"
    data = os.urandom(3 << 20) + b"\0\r\n\r\x03\x1b[31m\xff"
    (root / "blob.bin").write_bytes(data)
    try:
        assert f"{len(data)} bytes" in ok(all_kernel, "%push blob.bin /tmp/blob.bin")
        assert ok(all_kernel, "sha256sum /tmp/blob.bin").split()[0] == hashlib.sha256(data).hexdigest()
        ok(all_kernel, f"%pull /tmp/blob.bin {root / 'back.bin'}\n%pull /tmp/blob.bin sub")
        assert (root / "back.bin").read_bytes() == data and (root / "sub/blob.bin").read_bytes() == data
        # --max caps a push as it caps a pull; refused before anything is sent.
        evalue = fails(all_kernel, "%push --max 1M blob.bin /tmp/capped.bin", "TransferError")
        assert "larger than 1 MB, the most a push sends" in evalue and "--max" in evalue
        assert ok(all_kernel, "test -e /tmp/capped.bin || echo absent").strip() == "absent"
        assert f"{len(data)} bytes" in ok(all_kernel, "%push --max 4M blob.bin /tmp/capped.bin")
    finally:
        ok(all_kernel, "rm -f /tmp/blob.bin /tmp/capped.bin")
    assert not list(root.rglob(".lxck-pull-*"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy_name", ["all", "safe"])
def test_push_of_etc_shadow_is_refused_whatever_the_policy(
    all_kernel: Kernel, safe_kernel: Kernel, policy_name: str
) -> None:
    k = all_kernel if policy_name == "all" else safe_kernel
    evalue = fails(k, "%push /etc/shadow /tmp/shadow", "TransferError" if policy_name == "all" else "MagicRefused")
    if policy_name == "all":
        assert "/etc/shadow is outside the transfer root" in evalue
    assert ok(k, "test -e /tmp/shadow || echo absent").strip() == "absent"


@pytest.mark.timeout(120)
def test_transfers_out_of_the_root_are_refused(all_kernel: Kernel, area: Path) -> None:
    root, outside = area / "root", area / "outside"
    ok(all_kernel, "echo from-the-container > /tmp/payload")
    (root / "inside.txt").write_bytes(b"inside\n")
    secret = _sha(outside / "secret")
    pushes = {
        "/etc/shadow": "/etc/shadow is outside the transfer root",
        str(outside / "secret"): "is outside the transfer root",
        "../outside/secret": "leads out of the root",
        "sub/../../outside/secret": "leads out of the root",
        f"{root}/../outside/secret": "leads out of the root",
        "out-dir/secret": "leads out of the root",
        "out-file": "leads out of the root",
    }
    for path, says in pushes.items():
        evalue = fails(all_kernel, f"%push {path} /tmp/got", "TransferError")
        assert says in evalue, (path, evalue)
    assert ok(all_kernel, "test -e /tmp/got || echo absent").strip() == "absent"
    pulls = {
        "/etc/cron.d/evil": "/etc/cron.d/evil is outside the transfer root",
        str(outside / "evil"): "is outside the transfer root",
        "../outside/evil": "leads out of the root",
        "out-dir/evil": "leads out of the root",
        "out-dir": "is a symbolic link out of the root",
        "out-file": "is a symbolic link out of the root",
    }
    for path, says in pulls.items():
        evalue = fails(all_kernel, f"%pull /tmp/payload {path}", "TransferError")
        assert says in evalue, (path, evalue)
    assert not os.path.exists("/etc/cron.d/evil")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"] and _sha(outside / "secret") == secret
    assert (root / "out-file").is_symlink() and (root / "out-dir").is_symlink()
    assert not list(area.rglob(".lxck-pull-*"))
    ok(all_kernel, "rm -f /tmp/payload")


@pytest.mark.timeout(120)
def test_the_default_transfer_root_is_the_kernels_working_directory(box: str, area: Path, tmp_path: Path) -> None:
    """Jupyter starts a kernel in the notebook's folder; with no transfer_root, that folder is the root."""
    install_test_kernelspecs()
    (tmp_path / "notebook-data.txt").write_bytes(b"next to the notebook\n")
    km = KernelManager(kernel_name="lxck-test-plain")
    k = _started(km, extra_arguments=[f"--LXCKernel.container={box}"], cwd=str(tmp_path))
    try:
        ok(k, "%push notebook-data.txt /tmp/nb.txt")
        assert ok(k, "cat /tmp/nb.txt") == "next to the notebook\n"
        ok(k, "%pull /tmp/nb.txt copy.txt")
        assert (tmp_path / "copy.txt").read_bytes() == b"next to the notebook\n"
        evalue = fails(k, f"%push {area / 'outside' / 'secret'} /tmp/x", "TransferError")
        assert f"outside the transfer root {tmp_path}" in evalue
        ok(k, "rm -f /tmp/nb.txt")
    finally:
        k.shutdown()


# -- a spec installed with --attach-user ---------------------------------------------------------------------


def _started(km: KernelManager, **start: Any) -> Kernel:
    k = Kernel.__new__(Kernel)
    k.km = km
    km.start_kernel(**start)
    k.kc = km.client()
    k.kc.start_channels()
    k.kc.wait_for_ready(timeout=30)
    return k


@pytest.mark.timeout(120)
def test_an_attach_user_spec_is_safe_and_keeps_its_user(tmp_path: Path) -> None:
    ensure_test_containers()
    proc = subprocess.run([sys.executable, "-m", "lxc_kernel.install", "--prefix", str(tmp_path),
                           "--name", "t8p-student", "--container", BASH, "--attach-user", "student"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / "t8p-student" / "kernel.json").read_text())
    assert "--LXCKernel.magics=safe" in spec["argv"] and "--LXCKernel.user=student" in spec["argv"]
    km = KernelManager(kernel_name="t8p-student", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    k = _started(km, cwd=str(tmp_path))
    try:
        assert ok(k, "id -un").strip() == "student"
        for code in ("%attach user root", "%push /etc/shadow /tmp/t8p-shadow", "%lxc config get lxc.rootfs.path"):
            evalue = fails(k, code, "MagicRefused")
            assert "magics policy `safe`" in evalue and HOW in evalue
        assert ok(k, "id -un").strip() == "student"
        assert "RUNNING" in ok(k, "%lxc status")
        assert ok(k, "test -e /tmp/t8p-shadow || echo absent").strip() == "absent"
    finally:
        k.shutdown()
