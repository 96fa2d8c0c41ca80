"""Unprivileged containers by default: root's subuid range, the id map, the rootfs shift, and every kind for real.

The pure parts (subuid parsing, ACL and capability rewriting) need nothing; the shift runs on a temporary
tree as root. The rest creates real containers named ``lxck-t8u-<run>-...`` and destroys them at the end of
the module; the debian one (debootstrap, slow) is made once and shared.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel

from lxc_kernel import idmap as ids
from lxc_kernel import provision
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import TOOL_ENV, Container, State, Tools
from lxc_kernel.provision import destroy_container

ROOT = Path(__file__).resolve().parent.parent
RUN = f"lxck-t8u-{secrets.token_hex(2)}-"
B = 1_000_000  # where the shift tests put container root
PRIV_NO = re.compile(r"^privileged +no: uid 0-65535 -> ", re.M)
PRIV_YES = re.compile(r"^privileged +yes: no id map", re.M)

needs_root_lxc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("lxc-create", path=TOOL_ENV["PATH"]) is None,
    reason="needs root and LXC (apt-get install lxc)",
)


# -- pure: /etc/subuid ------------------------------------------------------------------------------------


def test_parse_subid_keeps_well_formed_lines_only() -> None:
    text = "# comment\nroot:100000:65536\nbad line\nalice:165536:65536\n0:5:0\nbob:x:1\n\ncarol: 300000 : 10 \n"
    assert ids.parse_subid(text) == [
        ("root", ids.IdRange(100000, 65536)),
        ("alice", ids.IdRange(165536, 65536)),
        ("carol", ids.IdRange(300000, 10)),
    ]


def test_root_range_by_name_or_uid_and_the_first_large_enough_wins() -> None:
    assert ids.root_base("alice:1:70000\nroot:500:10\n0:200000:65536\nroot:900000:65536\n") == 200000
    with pytest.raises(ConfigError):
        ids.root_base("alice:100000:65536\n")


def test_root_line_is_added_only_where_root_has_none() -> None:
    assert ids.root_line_to_add("") == "root:1000000:1000000000"
    assert ids.root_line_to_add("alice:100000:65536\n") == "root:1000000:1000000000"
    assert ids.root_line_to_add("root:100000:65536\n") is None
    assert ids.root_line_to_add("0:100000:65536\n") is None
    # Never a second root line: a too-small range is for a person to fix.
    with pytest.raises(ConfigError, match="smaller than 65536"):
        ids.root_line_to_add("root:100000:1000\n")
    # Nor a range over someone else's: that user could map container root's files.
    with pytest.raises(ConfigError, match="alice's range"):
        ids.root_line_to_add("alice:1500000:65536\n")


def test_ensure_root_range_appends_once_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536")  # no final newline
    assert ids.ensure_root_range(str(path)) == 1_000_000
    assert ids.ensure_root_range(str(path)) == 1_000_000
    assert path.read_text() == "alice:100000:65536\nroot:1000000:1000000000\n"
    missing = tmp_path / "subgid"
    assert ids.ensure_root_range(str(missing)) == 1_000_000
    assert missing.read_text() == "root:1000000:1000000000\n"
    assert stat.S_IMODE(missing.stat().st_mode) == 0o644
    kept = tmp_path / "kept"
    kept.write_text("root:200000:65536\n")
    assert ids.ensure_root_range(str(kept)) == 200000 and kept.read_text() == "root:200000:65536\n"


def test_an_oversized_subuid_is_refused_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        ids.ensure_root_range(str(path))


def test_idmap_lines_and_parsing_them_back() -> None:
    m = ids.IdMap(B, B + 5)
    assert m.config_values() == (f"u 0 {B} 65536", f"g 0 {B + 5} 65536")
    assert m.config_text() == f"lxc.idmap = u 0 {B} 65536\nlxc.idmap = g 0 {B + 5} 65536\n"
    assert ids.parse_idmap(list(m.config_values())) == m
    assert ids.parse_idmap([]) is None
    # An empty value clears the list; a map without root on both sides is not a privileged one to LXC
    # either (it refuses to start), but it is not "unprivileged with a map" for us.
    assert ids.parse_idmap([*m.config_values(), ""]) is None
    assert ids.parse_idmap([f"u 0 {B} 65536"]) is None
    assert ids.parse_idmap([f"u 1000 {B} 1", f"g 0 {B + 1} 65536", f"u 0 {B} 1000"]) == ids.IdMap(B, B + 1, 1000)


# -- pure: ACLs and file capabilities -----------------------------------------------------------------------


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEFINED = 0xFFFFFFFF
ACL = _acl((0x01, 7, UNDEFINED), (0x02, 5, 1000), (0x04, 5, UNDEFINED), (0x08, 4, 50), (0x10, 7, UNDEFINED),
           (0x20, 5, UNDEFINED))


def test_shift_acl_moves_named_user_and_group_ids_only() -> None:
    shifted = ids.shift_acl(ACL, ids.IdMap(B, B + 7))
    assert shifted == _acl((0x01, 7, UNDEFINED), (0x02, 5, B + 1000), (0x04, 5, UNDEFINED), (0x08, 4, B + 7 + 50),
                           (0x10, 7, UNDEFINED), (0x20, 5, UNDEFINED))
    with pytest.raises(ValueError):
        ids.shift_acl(ACL[:-3], ids.IdMap(B, B))


def _cap_v2(permitted: int, effective: bool) -> bytes:
    return struct.pack("<IIIII", 0x02000000 | int(effective), permitted, 0, 0, 0)


def test_shift_capability_writes_v3_with_container_roots_id() -> None:
    m = ids.IdMap(B, B)
    v3 = ids.shift_capability(_cap_v2(1 << 2, True), m)
    assert v3 == struct.pack("<IIIIII", 0x03000000 | 1, 1 << 2, 0, 0, 0, B)
    own = struct.pack("<IIIIII", 0x03000000, 1 << 13, 0, 0, 0, 0)
    assert ids.shift_capability(own, m)[-4:] == struct.pack("<I", B)
    foreign = struct.pack("<IIIIII", 0x03000000, 1 << 13, 0, 0, 0, 5_000_000)
    assert ids.shift_capability(foreign, m) == foreign
    with pytest.raises(ValueError):
        ids.shift_capability(b"\x00\x00\x00\x01", m)


# -- the shift on a real tree -------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "home" / "student").mkdir(parents=True)
    os.chown(root / "home" / "student", 1000, 1000)
    (root / "etc" / "shadow").write_text("x")
    os.chown(root / "etc" / "shadow", 0, 42)
    (root / "su").write_bytes(b"\x7fELF")
    os.chmod(root / "su", 0o4755)
    (root / "wall").write_bytes(b"\x7fELF")
    os.chown(root / "wall", 0, 5)
    os.chmod(root / "wall", 0o2755)
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o2775)
    os.link(root / "su", root / "su-link")
    (root / "nobody").write_text("")
    os.chown(root / "nobody", 65534, 65534)
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (root / "escape").symlink_to(outside)
    return root


def _owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


@needs_root
def test_shift_tree_moves_owners_and_keeps_setuid_bits(tree: Path) -> None:
    m = ids.IdMap(B, B + 10)
    result = ids.shift_tree(str(tree), m)
    assert (result.entries, result.skipped) == (10, 0)  # 11 names, but the hard link is one inode
    assert _owner(tree) == (B, B + 10)
    assert _owner(tree / "home" / "student") == (B + 1000, B + 10 + 1000)
    assert _owner(tree / "etc" / "shadow") == (B, B + 10 + 42)
    assert _owner(tree / "nobody") == (B + 65534, B + 10 + 65534)
    assert stat.S_IMODE((tree / "su").stat().st_mode) == 0o4755 and _owner(tree / "su-link") == (B, B + 10)
    assert stat.S_IMODE((tree / "wall").stat().st_mode) == 0o2755
    assert stat.S_IMODE((tree / "shared").stat().st_mode) == 0o2775
    # The symlink itself is shifted; what it points to (outside the tree) is not.
    assert _owner(tree / "escape") == (B, B + 10)
    assert _owner(tree.parent / "outside") == (0, 0)
    # A second run changes nothing.
    again = ids.shift_tree(str(tree), m)
    assert (again.entries, again.skipped) == (0, 10)
    assert _owner(tree / "home" / "student") == (B + 1000, B + 10 + 1000)


@needs_root
def test_shift_tree_keeps_acls_and_file_capabilities(tree: Path) -> None:
    target = tree / "etc" / "shadow"
    try:
        os.setxattr(target, "system.posix_acl_access", ACL)
        os.setxattr(tree / "shared", "system.posix_acl_default", ACL)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {tree}: {exc}")
    os.setxattr(tree / "su", "security.capability", _cap_v2(1 << 2, True))
    m = ids.IdMap(B, B)
    ids.shift_tree(str(tree), m)
    want = ids.shift_acl(ACL, m)
    assert os.getxattr(target, "system.posix_acl_access") == want
    assert os.getxattr(tree / "shared", "system.posix_acl_default") == want
    # chown removes security.capability: it is back, as v3 with container root's id.
    assert os.getxattr(tree / "su", "security.capability") == ids.shift_capability(_cap_v2(1 << 2, True), m)
    assert stat.S_IMODE((tree / "su").stat().st_mode) == 0o4755


@needs_root
def test_shift_tree_refuses_ids_outside_the_map(tree: Path) -> None:
    os.chown(tree / "nobody", 70000, 0)
    with pytest.raises(ConfigError, match="owned by id 70000"):
        ids.shift_tree(str(tree), ids.IdMap(B, B))


@needs_root
def test_container_dir_modes_and_the_warning_for_an_open_one(tmp_path: Path) -> None:
    d = tmp_path / "ct"
    d.mkdir(mode=0o755)
    assert ids.dir_mode_problem(str(d)) is not None
    ids.secure_container_dir(str(d), None)
    assert (stat.S_IMODE(d.stat().st_mode), *_owner(d)) == (0o700, 0, 0)
    ids.secure_container_dir(str(d), ids.IdMap(B, B + 3))
    assert (stat.S_IMODE(d.stat().st_mode), *_owner(d)) == (0o770, 0, B + 3)
    assert ids.dir_mode_problem(str(d)) is None


def test_an_unreachable_lxcpath_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"cannot enter .*private"):
        provision.check_reachable(str(private / "lxc" / "ct"), ids.IdMap(B, B))
    # The owner and group bits count for the mapped root's own uid and gid.
    os.chown(private, B, 0)
    os.chown(tmp_path, 0, B)
    tmp_path.chmod(0o710)
    assert _blocker(str(private / "lxc" / "ct")) == _blocker(str(tmp_path))


def _blocker(path: str) -> str:
    """The directory check_reachable complains about for ``path`` (above ``tmp_path``: pytest's 0700 dirs)."""
    with pytest.raises(ConfigError) as err:
        provision.check_reachable(path, ids.IdMap(B, B))
    return str(err.value).split("cannot enter ")[1].split(" (mode")[0]


def test_extra_config_may_not_bring_its_own_map() -> None:
    with pytest.raises(ConfigError, match=r"lxc\.idmap is chosen"):
        provision.check_extra_config("lxc.apparmor.profile = unconfined\nlxc.idmap = u 0 0 1\n")
    provision.check_extra_config("lxc.apparmor.profile = unconfined\n")


# -- real containers ------------------------------------------------------------------------------------------


def lxc_names() -> list[str]:
    return subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True, env=TOOL_ENV).stdout.split()


def _destroy_ours(prefix: str) -> None:
    # Longest names first: clones and ephemeral copies go before what they depend on.
    for name in sorted((n for n in lxc_names() if n.startswith(prefix)), key=len, reverse=True):
        try:
            destroy_container(name)
        except Exception:
            subprocess.run(["lxc-destroy", "-n", name, "-f", "-s"], capture_output=True, env=TOOL_ENV)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    if os.geteuid() == 0 and shutil.which("lxc-ls", path=TOOL_ENV["PATH"]):
        _destroy_ours(RUN)
        assert [n for n in lxc_names() if n.startswith(RUN)] == []


def attach(name: str, *cmd: str, user: int | None = None) -> str:
    argv = ["lxc-attach", "-n", name, "--clear-env"]
    if user is not None:
        argv += ["-u", str(user), "-g", str(user)]
    proc = subprocess.run([*argv, "--", *cmd], capture_output=True, text=True, timeout=60, env=TOOL_ENV,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (cmd, proc.returncode, proc.stderr)
    return proc.stdout


def uid_map(name: str) -> list[list[str]]:
    return [line.split() for line in attach(name, "cat", "/proc/self/uid_map").splitlines()]


def container_dir(name: str) -> Path:
    return Path(Container(name).config_path()).parent


def _root_map() -> ids.IdMap:
    """The map provisioning gives new containers here (root's ranges; read only, nothing added)."""
    try:
        return ids.IdMap(ids.root_base(Path(ids.SUBUID).read_text()), ids.root_base(Path(ids.SUBGID).read_text()))
    except (OSError, ConfigError):
        return ids.IdMap(ids.ROOT_START, ids.ROOT_START)  # what provisioning adds where root has none


MAP = _root_map()


@pytest.fixture(scope="module")
def made() -> Iterator[dict[str, str]]:
    """Containers of each kind, created on first use and shared by the module."""
    names: dict[str, str] = {}
    yield names


def _kind(made: dict[str, str], kind: str) -> str:
    if kind not in made:
        name = f"{RUN}{kind[:3]}"
        done = provision.provision(name, kind, timeout=60)
        assert done.created and done.idmap == MAP and done.state is State.RUNNING, done
        assert done.warnings == ()
        made[kind] = name
    return made[kind]


slow_debian = pytest.param("debian", marks=[pytest.mark.slow, pytest.mark.timeout(1800)])
KINDS = ["busybox", "hostfs", slow_debian]


@needs_root_lxc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_unprivileged_with_roots_range(made: dict[str, str], kind: str) -> None:
    name = _kind(made, kind)
    assert uid_map(name) == [["0", str(MAP.uid), "65536"]]
    assert [line.split() for line in attach(name, "cat", "/proc/self/gid_map").splitlines()] == [
        ["0", str(MAP.gid), "65536"]]
    # The rootfs's files are owned by the mapped ids on the host, and by root inside.
    rootfs = container_dir(name) / "rootfs"
    assert _owner(rootfs / "etc") == (MAP.uid, MAP.gid)
    assert attach(name, "stat", "-c", "%u %g", "/etc").split() == ["0", "0"]
    d = container_dir(name)
    assert (stat.S_IMODE(d.stat().st_mode), *_owner(d)) == (0o770, 0, MAP.gid)


@needs_root_lxc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_a_cell_runs_through_a_real_kernel(made: dict[str, str], kind: str) -> None:
    name = _kind(made, kind)
    k = start_kernel(name)
    try:
        r = k.execute("id -u; cat /proc/self/uid_map; echo $((6 * 7))", timeout=60)
        assert r.status == "ok", (r.errors, r.stream("stderr"))
        assert r.stream().split() == ["0", "0", str(MAP.uid), "65536", "42"]
        info = k.execute(f"%lxc info {name}", timeout=60)
        assert info.status == "ok" and re.search(rf"privileged +no: uid 0-65535 -> {MAP.uid}-", info.stream())
    finally:
        k.shutdown()


@needs_root_lxc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_a_setuid_file_root_inside_wrote_is_not_root_for_a_host_user(made: dict[str, str], kind: str) -> None:
    name = _kind(made, kind)
    attach(name, "sh", "-c", 'mkdir -p /tmp/t8u && cp /bin/id /tmp/t8u/id && chmod 4755 /tmp/t8u/id')
    planted = container_dir(name) / "rootfs" / "tmp" / "t8u" / "id"
    st = planted.stat()
    # On the host it belongs to container root's mapped uid: even reachable, it would not run as root.
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (MAP.uid, 0o4755)
    # And it is not reachable: the container directory is closed to other host users.
    # runuser drops everything; `setpriv --reuid` keeps host root's saved uid, and its exec got through.
    run = subprocess.run(["runuser", "-u", "nobody", "--", str(planted), "-u"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "Permission denied" in run.stderr, (run.stdout, run.stderr)


@needs_root_lxc
@pytest.mark.timeout(300)
def test_hostfs_honours_a_shifted_file_capability(made: dict[str, str]) -> None:
    """A v2 capability written for the host is ignored in a user namespace; shifted to v3 it works."""
    if shutil.which("setcap") is None:
        pytest.skip("setcap missing (apt-get install libcap2-bin)")
    name = f"{RUN}cap"
    provision.provision(name, "hostfs", start=False)
    rootfs = container_dir(name) / "rootfs"
    shutil.copy("/usr/bin/cat", rootfs / "opt" / "capcat")
    subprocess.run(["setcap", "cap_dac_read_search+ep", str(rootfs / "opt" / "capcat")], check=True)
    (rootfs / "root" / "secret").write_text("only root\n")
    os.chmod(rootfs / "root" / "secret", 0o600)
    ids.shift_tree(str(rootfs), MAP)  # the new files only: the rest was shifted at create
    Container(name).start(30)
    assert attach(name, "/opt/capcat", "/root/secret", user=1000) == "only root\n"
    proc = subprocess.run(["lxc-attach", "-n", name, "--clear-env", "-u", "1000", "-g", "1000", "--",
                           "cat", "/root/secret"], capture_output=True, text=True, timeout=30, env=TOOL_ENV)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr


@needs_root_lxc
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_debian_keeps_setuid_binaries_and_boots(made: dict[str, str]) -> None:
    name = _kind(made, "debian")
    assert attach(name, "stat", "-c", "%a %U", "/usr/bin/passwd", "/usr/bin/su").split() == [
        "4755", "root", "4755", "root"]
    state = subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "systemctl", "is-system-running"],
                           capture_output=True, text=True, timeout=60, env=TOOL_ENV).stdout.strip()
    assert state in ("running", "degraded", "starting"), state


def _magic_kernel(made: dict[str, str]) -> Kernel:
    return start_kernel(_kind(made, "busybox"))


def _ok(k: Kernel, code: str) -> tuple[str, str]:
    r = k.execute(code, timeout=120)
    assert r.status == "ok", (code, r.errors, r.stream(), r.stream("stderr"))
    return r.stream(), r.stream("stderr")


@needs_root_lxc
@pytest.mark.timeout(600)
def test_lxc_create_is_unprivileged_by_default_and_privileged_on_request(made: dict[str, str],
                                                                         tmp_path: Path) -> None:
    k = _magic_kernel(made)
    un, pr, tpl, clone = f"{RUN}mu", f"{RUN}mp", f"{RUN}mt", f"{RUN}mu-c"
    try:
        out, err = _ok(k, f"%lxc create {un} --start")
        assert "unprivileged" in out and "warning" not in err
        out, _ = _ok(k, f"%lxc info {un}")
        assert re.search(rf"privileged +no: uid 0-65535 -> {MAP.uid}-{MAP.uid + 65535}", out), out
        assert uid_map(un) == [["0", str(MAP.uid), "65536"]]

        out, err = _ok(k, f"%lxc create {pr} -t hostfs --privileged --start")
        assert ", privileged" in out
        assert f"warning: {pr} is privileged: root inside it is root on the host" in err
        assert PRIV_YES.search(_ok(k, f"%lxc info {pr}")[0])
        assert uid_map(pr) == [["0", "0", "4294967295"]]
        d = container_dir(pr)
        assert (stat.S_IMODE(d.stat().st_mode), *_owner(d)) == (0o700, 0, 0)

        # Any other template runs privileged, then its rootfs is shifted.
        template = tmp_path / "lxc-t8u"
        template.write_text("#!/bin/sh\nexec /usr/share/lxc/templates/lxc-busybox \"$@\"\n")
        template.chmod(0o755)
        out, _ = _ok(k, f"%lxc create {tpl} -t {template} --start")
        assert "unprivileged" in out
        assert uid_map(tpl) == [["0", str(MAP.uid), "65536"]]
        assert _owner(container_dir(tpl) / "rootfs" / "bin" / "busybox") == (MAP.uid, MAP.gid)

        fails = k.execute(f"%lxc create {RUN}mx --config 'lxc.idmap=u 0 0 1'", timeout=60)
        assert fails.status == "error" and "lxc.idmap is chosen" in fails.errors[0]["evalue"]
        assert Container(f"{RUN}mx").state() is State.MISSING

        # A copy keeps its base's map.
        _ok(k, f"%lxc stop {un} --kill")
        _ok(k, f"%lxc clone {un} {clone} --snapshot")
        _ok(k, f"%lxc start {clone}")
        assert PRIV_NO.search(_ok(k, f"%lxc info {clone}")[0])
        assert uid_map(clone) == [["0", str(MAP.uid), "65536"]]
        assert stat.S_IMODE(container_dir(clone).stat().st_mode) & 0o007 == 0
    finally:
        k.shutdown()
        for name in (clone, un, pr, tpl):
            destroy_container(name)


@needs_root_lxc
@pytest.mark.timeout(300)
def test_an_ephemeral_copy_keeps_its_bases_map(made: dict[str, str]) -> None:
    base = _kind(made, "hostfs")
    k = start_kernel(base, f"--LXCKernel.ephemeral={base}")
    try:
        out, _ = _ok(k, "hostname; cat /proc/self/uid_map")
        copy, *row = out.split()
        assert copy.startswith(f"{base}-eph-") and row == ["0", str(MAP.uid), "65536"]
        assert stat.S_IMODE(container_dir(copy).stat().st_mode) & 0o007 == 0
        assert PRIV_NO.search(_ok(k, "%lxc info")[0])
    finally:
        k.shutdown()


@needs_root_lxc
@pytest.mark.timeout(300)
def test_a_container_made_before_keeps_working_untouched() -> None:
    """Privileged, no map, a 0755 directory: what every container was before. Provisioning it again
    changes neither its config nor its directory, and says what it means."""
    name = f"{RUN}old"
    provision.provision(name, "hostfs", privileged=True, start=False)
    d = container_dir(name)
    d.chmod(0o755)
    config = Path(Container(name).config_path())
    before = config.read_text()
    done = provision.provision(name, "hostfs")
    assert (done.created, done.changed, done.idmap, done.state) == (False, (), None, State.RUNNING)
    assert config.read_text() == before and stat.S_IMODE(d.stat().st_mode) == 0o755
    assert any("is privileged" in w for w in done.warnings)
    assert any("mode 0755" in w for w in done.warnings)
    assert uid_map(name) == [["0", "0", "4294967295"]]
    k = start_kernel(name)
    try:
        out, _ = _ok(k, "id -u; echo ok")
        assert out.split() == ["0", "ok"]
        assert PRIV_YES.search(_ok(k, "%lxc info")[0])
    finally:
        k.shutdown()


@needs_root_lxc
@pytest.mark.timeout(300)
def test_provision_cli_privileged_warns_and_unprivileged_says_its_map() -> None:
    env = {**TOOL_ENV, "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lxc_kernel.provision", *args], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)

    un, pr = f"{RUN}cu", f"{RUN}cp"
    try:
        first = cli(un, "--kind", "busybox", "--no-start")
        assert first.returncode == 0 and first.stderr == "", first.stderr
        assert f"unprivileged: uid 0-65535 -> {MAP.uid}-" in first.stdout
        second = cli(pr, "--kind", "busybox", "--no-start", "--privileged")
        assert second.returncode == 0 and "\nprivileged\n" in second.stdout
        assert f"warning: {pr} is privileged: root inside it is root on the host" in second.stderr
        d = container_dir(pr)
        assert (stat.S_IMODE(d.stat().st_mode), *_owner(d)) == (0o700, 0, 0)
        # An lxcpath the mapped root cannot enter: refused before anything is made.
        private = tempfile.mkdtemp(prefix="lxck-t8u-")
        try:
            bad = cli(un, "--kind", "hostfs", "--lxcpath", os.path.join(private, "lxc"))
            assert bad.returncode == 1 and "cannot enter" in bad.stderr, bad.stderr
            assert not Path(private, "lxc", un).exists()
        finally:
            shutil.rmtree(private)
    finally:
        for name in (un, pr):
            destroy_container(name, Tools())


@needs_root_lxc
@pytest.mark.timeout(300)
def test_the_zero_setup_container_is_unprivileged() -> None:
    """What the shipped `lxc` kernelspec does on first use (create_missing)."""
    name = f"{RUN}zero"
    k = start_kernel(name, "--LXCKernel.create_missing=hostfs")
    try:
        r = k.execute("cat /proc/self/uid_map", timeout=120)
        assert r.status == "ok", (r.errors, r.stream("stderr"))
        assert f"created container {name} (hostfs, unprivileged)" in r.stream("stderr")
        assert r.stream().split() == ["0", str(MAP.uid), "65536"]
    finally:
        k.shutdown()
        destroy_container(name)
