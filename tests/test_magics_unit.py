"""Pure tests of the magics' parsing, help and documentation, and of the lxc/ephemeral output parsers.

No container is touched: the fake host below has no real lxc tools behind it, and every case here is
refused or answered before any lxc-* command would run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lxc_kernel import ephemeral, install, magics
from lxc_kernel.backends import ClassicBackend
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import ContainerInfo, Snapshot, State, Tools, parse_fancy
from lxc_kernel.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent


class FakeHost:
    """Just enough of the kernel for magics that never reach the container."""

    def __init__(self) -> None:
        # Every option trait at its default, from the same table the kernel's traits come from.
        for option in OPTIONS:
            setattr(self, option.name, option.initial())
        self.container = "lxck-t3-unit"
        self.shell_session: Any = None
        self.out: list[tuple[str, str]] = []
        # A PATH without lxc tools: anything that tried to run one would fail loudly, not silently pass.
        self.tools = Tools(lxcpath="/nonexistent-lxcpath")
        self.lifecycle = ClassicBackend(self.tools)

    def emit_text(self, text: str, stream: str = "stdout") -> None:
        self.out.append((stream, text))

    def emit_display(self, data: dict[str, str]) -> None:
        self.out.append(("display", data["text/plain"]))

    def close_session(self) -> None:
        pass

    def text(self) -> str:
        return "".join(t for _, t in self.out)


@pytest.mark.parametrize(
    ("code", "magic_lines", "body"),
    [
        ("echo hi", [], "echo hi"),
        ("%lxc info\necho hi\n%not a magic", ["lxc info"], "echo hi\n%not a magic"),
        ("\n%timeout 3\n\n  %reset\nsleep 1\n", ["timeout 3", "reset"], "sleep 1\n"),
        ("%1\n", [], "%1\n"),  # job control, not a magic
        ("%%bash\necho", [], "%%bash\necho"),
        ("%lsmagic", ["lsmagic"], ""),
    ],
)
def test_split_cell(code: str, magic_lines: list[str], body: str) -> None:
    assert magics.split_cell(code) == (magic_lines, body)


def test_unknown_magic_lists_the_known_ones() -> None:
    with pytest.raises(magics.UnknownMagic) as err:
        magics.run_line(FakeHost(), "nope 1 2")
    for name in magics.REGISTRY:
        assert f"%{name}" in str(err.value)


@pytest.mark.parametrize(
    "line",
    [
        "lxc",
        "lxc frobnicate",
        "lxc stop --bogus",
        "lxc limit memory 12X",
        "lxc limit cpu lots",
        "lxc limit cpuset 'a-b'",
        "lxc create",
        "lxc log --lines 0",
        "timeout abc",
        "timeout -5",
        "attach",
        "attach sudo maybe",
        "attach env NOEQUALS",
        "colors purple",
        "stderr sideways",
        "push onlyone",
        "reset now",
        "lxc info 'unclosed",
    ],
)
def test_bad_arguments_raise_usage_errors_not_exit(line: str) -> None:
    # argparse would call sys.exit here, which would end the kernel: it must raise instead.
    with pytest.raises(magics.UsageError) as err:
        magics.run_line(FakeHost(), line)
    assert "%" in str(err.value)


def test_usage_of_a_subcommand_shows_its_help_lines() -> None:
    with pytest.raises(magics.UsageError) as err:
        magics.run_line(FakeHost(), "lxc stop --bogus")
    assert "usage: %lxc" in str(err.value)
    assert "%lxc stop [NAME] [--kill] [--timeout S]" in str(err.value)


@pytest.mark.parametrize(
    "line",
    [
        "lxc info 'a;rm -rf /'",
        "lxc start ../etc",
        "lxc use 'x y'",
        "lxc destroy '$(reboot)'",
        "lxc clone ok-name 'bad|name'",
        "lxc snapshot --name=-dash",
        "lxc create 'na me'",
        "lxc limit show -n 'a&b'",
    ],
)
def test_invalid_container_names_are_refused_before_any_lxc_tool(line: str) -> None:
    with pytest.raises(ConfigError) as err:
        magics.run_line(FakeHost(), line)
    assert "invalid container name" in str(err.value)


def test_help_is_the_docstring_everywhere() -> None:
    for name, entry in magics.REGISTRY.items():
        assert entry.doc, f"%{name} has no docstring"
        via_help, via_flag = FakeHost(), FakeHost()
        magics.run_line(via_help, f"help {name}")
        magics.run_line(via_flag, f"{name} --help")
        assert via_help.text() == via_flag.text() == entry.doc + "\n"
    listing = FakeHost()
    magics.run_line(listing, "lsmagic")
    for entry in magics.REGISTRY.values():
        assert entry.summary in listing.text()


def test_timeout_and_colors_change_the_options() -> None:
    host = FakeHost()
    magics.run_line(host, "timeout 2.5")
    assert host.cell_timeout == 2.5
    magics.run_line(host, "timeout off")
    assert host.cell_timeout == 0.0
    magics.run_line(host, "colors on")
    assert host.colors is True


def test_readme_documents_the_magics_from_the_same_source() -> None:
    readme = (ROOT / "README.md").read_text()
    assert magics.markdown() in readme, "README is stale: regenerate with python -m lxc_kernel.magics --markdown"
    printed = subprocess.run(
        [sys.executable, "-m", "lxc_kernel.magics", "--markdown"], capture_output=True, text=True, check=True,
        cwd=ROOT,
    ).stdout
    assert printed == magics.markdown()


def test_parse_fancy_keeps_values_with_spaces() -> None:
    text = (
        "NAME   STATE   PID   IPV4                  UNPRIVILEGED \n"
        "a      RUNNING 12    10.0.3.5, 10.0.3.6    false        \n"
        "bb     STOPPED -     -                     true         \n"
    )
    rows = parse_fancy(text)
    assert rows[0] == {"NAME": "a", "STATE": "RUNNING", "PID": "12", "IPV4": "10.0.3.5, 10.0.3.6",
                       "UNPRIVILEGED": "false"}
    assert rows[1]["STATE"] == "STOPPED"


def test_container_info_parse() -> None:
    info = ContainerInfo.parse("c", "Name: c\nState: RUNNING\nPID: 42\nIP: 10.0.0.2\nIP: fe80::1\n"
                                    "CPU use: 1500000000\nMemory use: 2048\n")
    assert info == ContainerInfo("c", State.RUNNING, 42, 1500000000, 2048, ("10.0.0.2", "fe80::1"))


def test_snapshot_list_parse_with_comments() -> None:
    text = ("snap0 (/var/lib/lxc/c/snaps) 2026:11:29 10:03:25\nfirst one\n"
            "snap1 (/var/lib/lxc/c/snaps) 2026:11:29 10:04:00\n")
    assert Snapshot.parse_list(text) == [
        Snapshot("snap0", "/var/lib/lxc/c/snaps", "2026:11:29 10:03:25", "first one"),
        Snapshot("snap1", "/var/lib/lxc/c/snaps", "2026:11:29 10:04:00"),
    ]
    assert Snapshot.parse_list("No snapshots\n") == []


def test_ephemeral_names_and_orphans() -> None:
    name = ephemeral.new_name("base", pid=123)
    parsed = ephemeral.parse_name("base", name)
    assert parsed is not None and parsed.pid == 123 and str(parsed) == name
    assert ephemeral.parse_name("base", "base-eph-x-abcdef") is None
    assert ephemeral.parse_name("base", "other-eph-1-abcdef") is None
    dead = 2**22 + 7  # above the default pid_max: never a live process
    names = [f"base-eph-{dead}-abcdef", f"base-eph-{os.getpid()}-abcdef", "base", "basement-eph-1-abcdef"]
    assert ephemeral.orphans("base", names) == [f"base-eph-{dead}-abcdef"]
    with pytest.raises(ConfigError):
        ephemeral.new_name("x" * 60)


def test_install_flags_for_lifecycle_options() -> None:
    args = install.build_parser().parse_args(
        ["--container", "c1", "--create-missing", "--start-stopped", "--attach-user", "student:100",
         "--env", "A=1", "--keep-env", "LANG", "--cwd", "/tmp", "--shell", "/bin/sh", "--namespaces", "mount|pid",
         "--elevated", "CAP", "--remount-sys-proc", "--lxcpath", "/var/lib/lxc", "--sudo"]
    )
    traits = install.traits_from_args(args)
    assert traits["create_missing"] == "busybox" and traits["start_stopped"] is True
    assert traits["user"] == "student:100" and traits["namespaces"] == "MOUNT|PID"
    eph = install.traits_from_args(install.build_parser().parse_args(["--ephemeral", "base"]))
    assert eph["ephemeral"] == "base"
    with pytest.raises(ConfigError):
        install.traits_from_args(install.build_parser().parse_args([]))
    with pytest.raises(ConfigError):
        install.traits_from_args(install.build_parser().parse_args(["--ephemeral", "bad;name"]))


def test_lxc_status_is_a_subcommand() -> None:
    assert "status" in magics._LXC_COMMANDS
    assert "%lxc status [NAME]" in magics.markdown()
