"""The option table drives the traits, the install flags, `%attach`, `%attach show` and the README, with one validator.

Pure: no container is touched. Kernels are built in-process (no session starts until a cell runs).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ipykernel.kernelbase import Kernel
from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import KVArgParseConfigLoader

from lxc_kernel import install, magics, options
from lxc_kernel.backends import ClassicBackend
from lxc_kernel.errors import ConfigError
from lxc_kernel.kernel import LXCKernel
from lxc_kernel.lxc import Tools
from lxc_kernel.options import ATTACH, OPTIONS

ROOT = Path(__file__).resolve().parent.parent


class Host:
    """The option traits at their defaults (from the table), and where magic output goes."""

    def __init__(self) -> None:
        for option in OPTIONS:
            setattr(self, option.name, option.initial())
        self.shell_session: Any = None
        self.tools = Tools(lxcpath="/nonexistent-lxcpath")  # no lxc tool can run by accident
        self.lifecycle = ClassicBackend(self.tools)
        self.out: list[str] = []

    def emit_text(self, text: str, stream: str = "stdout") -> None:
        self.out.append(text)

    def close_session(self) -> None:
        pass


@pytest.fixture
def kernel() -> Iterator[LXCKernel]:
    yield LXCKernel()


def _attach(host: Host, line: str) -> str:
    """Parse and apply one `%attach` change without re-attaching (that needs a container)."""
    return magics._apply_attach(host, magics._attach_parser().parse_args(line.split()))


# -- the table is the kernel's configuration ---------------------------------------------------------


def test_the_table_is_every_configurable_trait_of_the_kernel() -> None:
    ours = set(LXCKernel.class_traits(config=True)) - set(Kernel.class_traits(config=True))
    assert ours == {option.name for option in OPTIONS}
    for option in OPTIONS:
        trait = LXCKernel.class_traits()[option.name]
        assert trait.help.startswith(option.help) and trait.metadata.get("config") is True
        assert getattr(LXCKernel(), option.name) == option.default
    help_text = LXCKernel.class_get_help()
    for option in OPTIONS:
        assert f"--LXCKernel.{option.name}=" in help_text


def test_names_words_and_flags_are_unique_and_defaults_pass_their_validators() -> None:
    every = (*OPTIONS, *options.SPEC_OPTIONS)
    for attribute in ("name", "word"):
        values = [getattr(option, attribute) for option in every]
        assert len(values) == len(set(values)), attribute
    flags = [option.flag for option in every if option.flag]
    assert len(flags) == len(set(flags))
    for option in every:
        assert option.check(option.initial()) == option.default, option.name
        assert option.help and "\n" not in option.help


def test_command_line_and_config_file_set_the_traits() -> None:
    argv = ["--LXCKernel.env=A=1 2", "--LXCKernel.env=B=", "--LXCKernel.keep_env=LANG", "--LXCKernel.keep_env=TZ",
            "--LXCKernel.colors=True", "--LXCKernel.cell_timeout=2.5", "--LXCKernel.namespaces=mount,pid",
            "--LXCKernel.stderr=merged", "--LXCKernel.container=web-1"]
    k = LXCKernel(config=KVArgParseConfigLoader(argv).load_config())
    assert k.env == {"A": "1 2", "B": ""} and k.keep_env == ["LANG", "TZ"] and k.colors is True
    assert k.cell_timeout == 2.5 and k.stderr == "merged" and k.container == "web-1"
    assert k.namespaces == "MOUNT|PID"  # normalised by the validator, as the install flag does
    config = Config()
    config.LXCKernel.cwd = "/srv"
    config.LXCKernel.user = "student"
    k = LXCKernel(config=config)
    assert k.cwd == "/srv" and k.user == "student"


def test_kernelspec_argv_from_every_install_flag_round_trips_into_the_kernel() -> None:
    args = install.build_parser().parse_args(
        ["--container", "c1", "--attach-user", "student:100", "--env", "A=1", "--env", "B=x=y", "--keep-env", "LANG",
         "--cwd", "/tmp", "--shell", "/bin/sh", "--namespaces", "mount|pid", "--elevated", "cap", "--remount-sys-proc",
         "--lxcpath", "/var/lib/lxc", "--sudo", "--colors", "--stderr", "merged", "--timeout", "30",
         "--output-limit", "2M", "--create-missing", "hostfs", "--start-stopped",
         "--magics", "none", "--transfer-root", "/srv/notebooks"]
    )
    traits = install.traits_from_args(args)
    # The incus/lxd and ssh flags don't go with a classic local container: test_backend_flags_round_trip has them.
    flags = {option.name for option in OPTIONS if option.flag} - {"ephemeral", "backend", "project", "image", "ssh",
                                                                   "ssh_options"}
    assert set(traits) == flags, "every install flag was given once"
    spec = install.kernel_spec(display_name="x", traits=traits)
    k = LXCKernel(config=KVArgParseConfigLoader(spec["argv"][5:]).load_config())
    for name, value in traits.items():
        if name not in ("env", "keep_env"):
            assert getattr(k, name) == value, name
    # --env values travel in kernel.json's env (the kernel's environment), named by keep_env: never in argv
    assert spec["env"] == {"A": "1", "B": "x=y"} and k.env == {} and k.keep_env == ["LANG", "A", "B"]
    assert k.elevated == "CAP" and k.cell_timeout == 30.0


@pytest.mark.parametrize("argv", [
    ["--backend", "incus", "--container", "r1:web-1", "--project", "p1", "--create-missing", "--image", "lxck-bb"],
    ["--backend", "lxd", "--container", "web-1", "--start-stopped"],
    ["--container", "c1", "--ssh", "student@host-2.example:2222", "--lxcpath", "/srv/lxc",
     "--ssh-option", "IdentityFile=/srv/key", "--ssh-option", "ConnectTimeout=5"],
])
def test_backend_flags_round_trip(argv: list[str]) -> None:
    traits = install.traits_from_args(install.build_parser().parse_args(argv))
    spec = install.kernel_spec(display_name="x", traits=traits)
    k = LXCKernel(config=KVArgParseConfigLoader(spec["argv"][5:]).load_config())
    for name, value in traits.items():
        assert getattr(k, name) == value, name


# -- one validator, three ways in ---------------------------------------------------------------------

# (option, the install flag's words or None, an %attach line or None, a trait value, what the refusal says)
BAD = [
    ("container", ["--container", "a;b"], None, "a;b", "invalid container name"),
    ("user", ["--attach-user", "x;y"], "user x;y", "x;y", "invalid user"),
    ("env", ["--env", "1A=v"], "env 1A=v", {"1A": "v"}, "invalid environment variable name"),
    ("env", ["--env", "NOEQUALS"], "env NOEQUALS", None, "is not KEY=VALUE"),
    ("env", None, None, {"A": "a\0b"}, "NUL"),
    ("keep_env", ["--keep-env", "1A"], "keep-env 1A", ["1A"], "invalid environment variable name"),
    ("cwd", ["--cwd", "rel/dir"], "cwd rel/dir", "rel/dir", "absolute path"),
    ("shell_path", ["--shell", "bin/sh"], "shell bin/sh", "bin/sh", "absolute path"),
    ("namespaces", ["--namespaces", "MOUNT|BOGUS"], "namespaces MOUNT|BOGUS", "MOUNT|BOGUS", "unknown namespace"),
    ("elevated", ["--elevated", "ROOT"], "elevated ROOT", "ROOT", "unknown privilege"),
    ("remount_sys_proc", None, "remount-sys-proc maybe", None, "say on or off"),
    ("lxcpath", ["--lxcpath", "var/lib/lxc"], "lxcpath var/lib/lxc", "var/lib/lxc", "absolute path"),
    ("sudo", None, "sudo maybe", None, "say on or off"),
    ("stderr", ["--stderr", "sideways"], None, "sideways", "is not one of separate, merged"),
    ("term", None, None, "x y", "invalid TERM"),
    ("cell_timeout", ["--timeout", "-1"], None, -1.0, "0 (none) or more seconds"),
    ("cell_timeout", ["--timeout", "soon"], None, None, "not a number of seconds"),
    ("startup_timeout", None, None, 0.0, "more than 0 seconds"),
    ("output_limit", ["--output-limit", "12X"], None, "12X", "not a size"),
    ("create_missing", ["--create-missing", "bogus"], None, "bogus", "unknown kind"),
    ("ephemeral", ["--ephemeral", "bad;name"], None, "bad;name", "invalid ephemeral base"),
    ("magics", ["--magics", "some"], None, "some", "is not one of all, safe, none"),
    ("transfer_root", ["--transfer-root", "notebooks"], None, "notebooks", "invalid transfer root"),
]


@pytest.mark.parametrize(("name", "flag", "attach", "value", "says"), BAD, ids=[f"{b[0]}-{b[4]}" for b in BAD])
def test_a_bad_value_is_refused_by_the_same_validator_everywhere(
    kernel: LXCKernel, name: str, flag: list[str] | None, attach: str | None, value: Any, says: str
) -> None:
    option = options.BY_NAME[name]
    if flag is not None:
        base = [] if name in ("container", "ephemeral") else ["--container", "c1"]
        with pytest.raises(ConfigError, match=f"^{option.flag}: .*{re.escape(says)}") as err:
            install.traits_from_args(install.build_parser().parse_args([*base, *flag]))
        assert "\n" not in str(err.value)
    if attach is not None:
        host = Host()
        with pytest.raises(magics.UsageError, match=f"^%attach {option.word}: .*{re.escape(says)}"):
            _attach(host, attach)
        assert getattr(host, name) == option.default, "nothing changed"
    if value is not None:
        before = getattr(kernel, name)
        with pytest.raises(ConfigError, match=f"^LXCKernel.{name}: .*{re.escape(says)}") as trait_err:
            setattr(kernel, name, value)
        assert isinstance(trait_err.value, TraitError)  # so traitlets rolls back a half-loaded config
        assert getattr(kernel, name) == before
        # From the configuration it is kept and reported, not fatal: the kernel must live to say what is wrong.
        configured = LXCKernel(config=Config({"LXCKernel": {name: value}}))
        assert getattr(configured, name) == value
        assert re.match(f"^LXCKernel.{name}: .*{re.escape(says)}", options.config_errors(configured)[name])


def test_a_bad_configured_value_is_kept_until_a_good_one_replaces_it() -> None:
    k = LXCKernel(config=Config({"LXCKernel": {"container": "bad;name", "cwd": "rel"}}))
    assert options.config_errors(k).keys() == {"container", "cwd"}
    k.cwd = "rel"  # as a failed re-attach restores it
    k.container = "good"
    assert options.config_errors(k).keys() == {"cwd"}
    with pytest.raises(ConfigError):
        k.container = "bad;name"
    assert k.container == "good" and options.config_errors(LXCKernel()) == {}


def test_a_bad_install_flag_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lxc_kernel.install", "--prefix", str(tmp_path),
                           "--container", "c1", "--timeout", "-5"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "error: --timeout: must be 0 (none) or more seconds\n"
    assert not any(tmp_path.iterdir())


# -- %attach from the table ----------------------------------------------------------------------------


def test_attach_sets_options_through_the_table() -> None:
    host = Host()
    assert _attach(host, "namespaces mount,pid") == "namespaces MOUNT|PID" and host.namespaces == "MOUNT|PID"
    assert _attach(host, "namespaces ALL") == "namespaces all" and host.namespaces == ""
    assert _attach(host, "user student:staff") == "user student:staff" and host.user == "student:staff"
    assert _attach(host, "user 0:0") == "user root" and host.user == ""
    assert _attach(host, "env A=1 B=2") == "env A=1 B=2" and host.env == {"A": "1", "B": "2"}
    assert _attach(host, "env -u A") == "env -u A" and host.env == {"B": "2"}
    assert _attach(host, "keep-env LANG TZ") == "keep-env LANG, TZ" and host.keep_env == ["LANG", "TZ"]
    assert _attach(host, "keep-env -u LANG") == "keep-env TZ" and host.keep_env == ["TZ"]
    assert _attach(host, "cwd /srv") == "cwd /srv" and host.cwd == "/srv"
    assert _attach(host, "cwd home") == "cwd home" and host.cwd == ""
    assert _attach(host, "sudo on") == "sudo on" and host.sudo is True
    assert _attach(host, "remount-sys-proc yes") == "remount-sys-proc on" and host.remount_sys_proc is True
    assert _attach(host, "shell auto") == "shell auto" and host.shell_path == ""
    assert _attach(host, "lxcpath /srv/lxc") == "lxcpath /srv/lxc" and host.lxcpath == "/srv/lxc"
    with pytest.raises(magics.UsageError, match="nothing to change"):
        _attach(host, "env")


def test_attach_show_rows_and_help_come_from_the_table() -> None:
    host = Host()
    host.env, host.cell_timeout, host.sudo = {"A": "1 2"}, 2.5, True
    magics.run_line(host, "attach show")
    shown = "".join(host.out)
    for option in OPTIONS:
        assert (f"\n{option.word} " in f"\n{shown}") is option.shown, option.name
    assert "A=1 2" in shown and "2.5 s" in shown and "(the user's home)" in shown
    doc = magics.REGISTRY["attach"].doc
    for word, option in ATTACH.items():
        assert option.attach is not None
        assert f"  %attach {word} {option.attach.metavar} " in doc
    assert doc.count("\n  %attach ") == 1 + sum(1 + len(o.attach.more) for o in ATTACH.values() if o.attach)


# -- the README -------------------------------------------------------------------------------------------


def test_readme_options_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    begin = readme.index("<!-- options:begin")
    start = readme.index("\n", begin) + 1
    end = readme.index("<!-- options:end -->")
    assert readme[start:end] == options.markdown(), \
        "README is stale: regenerate the table with python -m lxc_kernel.options --markdown"
    printed = subprocess.run(
        [sys.executable, "-m", "lxc_kernel.options", "--markdown"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert printed == options.markdown()
