"""Pure tests of the lxc-attach argv builder and input validation."""

from __future__ import annotations

import pytest

from lxc_kernel.attach import NAMESPACES, AttachOptions, parse_flags
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import Tools, validate_name
from lxc_kernel.users import lookup

PASSWD = "root:x:0:0:root:/root:/bin/bash\nstudent:x:1000:1000::/home/student:/bin/bash\n"
GROUP = "root:x:0:\nstaff:x:50:\nstudent:x:1000:\n"


@pytest.mark.parametrize("name", ["c1", "my-box.v2", "A_b"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a;b", "a b", "$(id)", "a/b", "../x", "x" * 65, "a`b`", "n\n"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid container name"):
        validate_name(name)


def test_default_argv_clears_env_and_sets_curated_vars() -> None:
    argv = AttachOptions("c1").argv(["/bin/sh"])
    assert argv[0] == "lxc-attach" and "--clear-env" in argv
    assert argv[argv.index("-n") + 1] == "c1"
    assert argv[-2:] == ["--", "/bin/sh"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert {s.split("=", 1)[0] for s in sets} == {"PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG"}


def test_user_namespaces_elevated_lxcpath_sudo() -> None:
    opts = AttachOptions(
        "c1", tools=Tools(lxcpath="/srv/lxc"), uid=1000, gid=50,
        namespaces=("MOUNT", "PID"), elevated=("CAP",), remount_sys_proc=True,
    )
    argv = opts.argv(["id"])
    assert argv[argv.index("-P") + 1] == "/srv/lxc"
    assert argv[argv.index("-u") + 1] == "1000" and argv[argv.index("-g") + 1] == "50"
    assert argv[argv.index("-s") + 1] == "MOUNT|PID" and "--elevated-privileges=CAP" in argv
    assert "-R" in argv
    assert len(opts.warnings) == 2
    # Through sudo every call goes to the validating helper, which fixes -P and the log target itself.
    argv = AttachOptions("c1", tools=Tools(sudo=True), uid=1000).argv(["id"])
    assert argv[:2] == ["sudo", "-n"] and argv[3] == "lxc-attach"
    assert "-P" not in argv and "-o" not in argv and "-l" not in argv
    with pytest.raises(ConfigError, match="lxcpath cannot be set with sudo"):
        AttachOptions("c1", tools=Tools(lxcpath="/srv/lxc", sudo=True)).argv(["id"])


def test_env_values_travel_in_the_environment_not_argv() -> None:
    """Issue 8: `ps` shows every argv to every user; the values go in lxc-attach's environment, by name."""
    opts = AttachOptions("c1", env=(("SECRET", "s3cr3t"), ("PATH", "/opt/bin:/bin")))
    argv = opts.argv(["sh"])
    assert not any("s3cr3t" in arg for arg in argv)
    assert argv[argv.index("--keep-var") + 1] == "SECRET" and "--clear-env" in argv
    assert "PATH=/opt/bin:/bin" in argv  # PATH stays: the spawn environment's PATH finds lxc-attach
    env = opts.spawn_env()
    assert env["SECRET"] == "s3cr3t" and env["PATH"] != "/opt/bin:/bin"
    assert set(env) == {"PATH", "LC_ALL", "SECRET"}  # nothing else of the kernel's environment


def test_env_with_sudo_is_refused_rather_than_leaked() -> None:
    with pytest.raises(ConfigError, match="cannot be used with sudo"):
        AttachOptions("c1", tools=Tools(sudo=True), env=(("A", "1"),))


def test_uid_alone_passes_gid_too() -> None:
    argv = AttachOptions("c1", uid=1000).argv(["id"])
    assert argv[argv.index("-g") + 1] == "1000"


@pytest.mark.parametrize(
    "kwargs",
    [{"env": (("BAD-NAME", "x"),)}, {"cwd": "relative"}, {"shell": "sh"}, {"term": "x;y"}, {"uid": -1}],
)
def test_bad_options_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        AttachOptions("c1", **kwargs)


def test_parse_flags() -> None:
    assert parse_flags("mount|pid", NAMESPACES, "namespace") == ("MOUNT", "PID")
    with pytest.raises(ConfigError, match="unknown namespace"):
        parse_flags("MOUNT|BOGUS", NAMESPACES, "namespace")


def test_user_lookup() -> None:
    assert lookup("student", PASSWD, GROUP).uid == 1000
    assert lookup("student:staff", PASSWD, GROUP).gid == 50
    assert lookup("1000:50", PASSWD, GROUP).home == "/home/student"
    assert lookup("4242", PASSWD, GROUP).home == "/"
    with pytest.raises(ConfigError):
        lookup("nobody-here", PASSWD, GROUP)
    with pytest.raises(ConfigError):
        lookup("x;rm", PASSWD, GROUP)
