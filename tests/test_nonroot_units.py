"""Pure parts of the non-root kernels (issue 8): the sudo helper's argument checks, the grant files, and the
cgroup hierarchies read from mountinfo. No root, no container."""

from __future__ import annotations

import pytest

from lxc_kernel import delegate, sudo, sudo_helper
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import SUDO_HELPER, Tools


class FakeAccess(sudo_helper.Access):
    def __init__(self, globs: list[str]) -> None:
        self.who = ("alice", [])
        self.globs = globs


ACCESS = FakeAccess(["web-*", "db1"])


@pytest.mark.parametrize("tool,args", [
    ("lxc-info", ["-n", "web-1", "-s", "-H"]),
    ("lxc-info", ["-n", "db1", "-c", "lxc.log.file"]),
    ("lxc-ls", ["-f", "-F", "NAME,STATE"]),
    ("lxc-start", ["-n", "web-1", "-d"]),
    ("lxc-stop", ["-n", "web-1", "-t", "30"]),
    ("lxc-cgroup", ["-n", "web-1", "--", "memory.limit_in_bytes", "64M"]),
    ("lxc-copy", ["-n", "web-1", "-N", "web-2", "-e", "-d", "-B", "overlay", "-a"]),
    ("lxc-snapshot", ["-n", "web-1", "-r", "snap0", "-N", "web-3"]),
    ("lxc-attach", ["-n", "web-1", "--clear-env", "-v", "TERM=xterm", "-u", "1000", "-g", "1000", "--", "sh"]),
])
def test_helper_allows_what_the_kernel_uses(tool: str, args: list[str]) -> None:
    sudo_helper.parse(tool, args, ACCESS)


@pytest.mark.parametrize("tool,args,said", [
    ("lxc-start", ["-n", "web-1", "-s", "lxc.hook.pre-start=/x"], "-s"),
    ("lxc-start", ["-n", "web-1", "--define", "lxc.hook.pre-start=/x"], "--define"),
    ("lxc-info", ["-n", "web-1", "-o", "/etc/shadow"], "-o"),
    ("lxc-info", ["-n", "web-1", "--logfile=/etc/shadow"], "--logfile"),
    ("lxc-info", ["-P", "/tmp", "-n", "web-1"], "-P"),
    ("lxc-copy", ["-n", "web-1", "-N", "web-2", "-m", "bind=/:/mnt"], "-m"),
    ("lxc-copy", ["-n", "web-1", "-N", "other"], "not allowed for user alice"),
    ("lxc-copy", ["-n", "web-1", "-N", "web-2", "-B", "lvm"], "backing store"),
    ("lxc-attach", ["-n", "web-1", "-s", "NETWORK", "--", "sh"], "leaves the shell"),
    ("lxc-attach", ["-n", "web-1", "-e", "--", "sh"], "-e"),
    ("lxc-attach", ["-n", "web-1", "-f", "/tmp/rc", "--", "sh"], "-f"),
    ("lxc-attach", ["-n", "web-1", "-v", "A B=1", "--", "sh"], "invalid variable"),
    ("lxc-attach", ["-n", "web-1"], "needs a command"),
    ("lxc-cgroup", ["-n", "web-1", "devices.allow", "a"], "resource key"),
    ("lxc-cgroup", ["-n", "web-1", "cgroup.procs", "1"], "resource key"),
    ("lxc-info", ["-n", "web-1", "-n", "db1"], "exactly one -n"),
    ("lxc-info", ["-s"], "exactly one -n"),
    ("lxc-info", ["-n", "../etc"], "invalid container name"),
    ("lxc-info", ["-n", "web-1", "extra"], "no arguments"),
    ("lxc-snapshot", ["-n", "web-1", "-c", "/etc/shadow"], "-c"),
    ("lxc-ls", ["--filter", "x"], "--filter"),
])
def test_helper_refuses(tool: str, args: list[str], said: str) -> None:
    with pytest.raises(sudo_helper.Refused) as info:
        sudo_helper.parse(tool, args, ACCESS)
    assert said in str(info.value)


def test_helper_refuses_unknown_tools_and_lxc_create(capsys: pytest.CaptureFixture[str]) -> None:
    if sudo_helper.os.geteuid() != 0:
        pytest.skip("the helper refuses everything when not root")
    assert sudo_helper.main(["lxc-execute", "-n", "web-1"]) == 2
    assert sudo_helper.main(["lxc-create", "-n", "web-1", "-t", "busybox"]) == 2
    err = capsys.readouterr().err
    assert "'lxc-execute' is not allowed" in err and "lxc-create is not allowed" in err


def test_tools_argv_through_the_helper() -> None:
    argv = Tools(sudo=True).argv("lxc-info", "-n", "web-1", "-s")
    assert argv == ["sudo", "-n", SUDO_HELPER, "lxc-info", "-n", "web-1", "-s"]  # no -P, -l, -o: the helper's
    assert Tools(sudo=True).log_args("/tmp/x") == []
    with pytest.raises(ConfigError, match="lxcpath cannot be set with sudo"):
        Tools(lxcpath="/srv/lxc", sudo=True).argv("lxc-info")
    with pytest.raises(ConfigError, match="needs host root"):
        Tools(sudo=True).require_own("writing a container's config file")


def test_sudoers_text_and_validation() -> None:
    text = sudo.sudoers_text(sudo.Principal("alice", False))
    assert f"Defaults!{SUDO_HELPER} !use_pty\n" in text
    assert f"alice ALL=(root) NOPASSWD: {SUDO_HELPER}\n" in text
    assert "SETENV" not in text
    assert "%teachers ALL=(root)" in sudo.sudoers_text(sudo.Principal("teachers", True))
    assert sudo.Principal("a.b", False).file_stem == "lxc-kernel-u-a_b"  # sudo skips names with '.'
    assert sudo.parse_globs("web-*, db1") == ["web-*", "db1"]
    for bad in ("", "a b", "web/*", "[ab]", "x;y", "ALL"[:0]):
        with pytest.raises(ConfigError):
            sudo.parse_globs(bad)
    for bad in ("Root", "a b", "%", "a:b", "x" * 40):
        with pytest.raises(ConfigError):
            sudo.Principal.parse(bad)


MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct,clone_children
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 /sub /mnt/elsewhere rw,relatime - cgroup cgroup rw,memory
"""


def test_hierarchies_from_mountinfo() -> None:
    found = delegate.hierarchies(MOUNTINFO)
    assert [(h.mount, h.key) for h in found] == [
        ("/sys/fs/cgroup/cpu", "cpu"),
        ("/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
        ("/sys/fs/cgroup/systemd", "name=systemd"),
        ("/sys/fs/cgroup/unified", ""),
    ]
    assert found[-1].v2 and not found[0].v2


def test_helper_checks_match_the_patterns_they_replace() -> None:
    """The helper avoids `re` and `fnmatch` (their import was most of its cost per call): same answers."""
    import fnmatch
    import re

    from lxc_kernel.lxc import _NAME_RE

    names = ["web-1", "a", "A.b_c-d", "-x", "x-", "x.", "a" * 64, "a" * 65, "ä", "a b", "", "lxck-t8n-s-1a2b"]
    for name in names:
        expected = bool(_NAME_RE.fullmatch(name)) and not name.endswith((".", "-"))
        assert sudo_helper.valid_name(name) == expected, name
    globs = ["*", "web-*", "w?b-*", "*-1", "a*b*c", "lxck-t8n-s-*", "db1", "**", "?"]
    for name in [*names, "abc", "aXbYc", "ab", "web-", "acb"]:
        for glob in globs:
            assert sudo_helper.glob_match(name, glob) == fnmatch.fnmatchcase(name, glob), (name, glob)
    for key in ["memory.limit_in_bytes", "cpu.cfs_quota_us", "cpuset.cpus", "devices.allow", "cgroup.procs",
                "memory.", "memory", "pids.max", "memory.Limit"]:
        expected = bool(re.fullmatch(r"(memory|cpu|cpuacct|cpuset|pids|blkio|hugetlb|freezer)\.[a-z0-9_.]{1,64}", key))
        assert sudo_helper.valid_cgroup_key(key) == expected, key
    for key in ["lxc.log.file", "lxc.cgroup.memory.limit_in_bytes", "lxc", "lxc.", "lxc.a b", "lxd.x", "lxc.idmap"]:
        assert sudo_helper.valid_config_key(key) == bool(re.fullmatch(r"lxc(\.[A-Za-z0-9_-]+){1,8}", key)), key


def test_a_prompt_reads_a_secret_by_its_words_when_the_modes_are_unknown() -> None:
    from lxc_kernel.cellio import looks_secret

    for prompt in ("Password: ", "[sudo] password for bob: ", "Enter passphrase for key: ", "API token? ",
                   "PIN: ", "Secret> ", "passcode:"):
        assert looks_secret(prompt), prompt
    for prompt in ("Name? ", "Continue? [Y/n] ", "Spinning up: ", "x? ", ""):
        assert not looks_secret(prompt), prompt
