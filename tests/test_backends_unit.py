"""The backends' pure parts: names per backend, argv building, limits, parsers and the options checked together."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lxc_kernel.backends import ClassicBackend, IncusBackend, NotSupported, check_settings, from_record, make
from lxc_kernel.backends.classic import cgroup_setting
from lxc_kernel.backends.incus import (
    incus_size,
    limit_settings,
    parse_instance_state,
    parse_list,
    parse_ref,
    parse_snapshots,
)
from lxc_kernel.errors import ConfigError
from lxc_kernel.lxc import State, Tools


def test_not_supported_names_the_operation_and_the_backend() -> None:
    err = NotSupported("overlay clones (--snapshot)", "incus", "why")
    assert str(err) == "overlay clones (--snapshot) is not supported by incus: why"


@pytest.mark.parametrize("name", ["web1", "a", "web-1.x_y", "0abc"])
def test_classic_names(name: str) -> None:
    assert ClassicBackend().validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "x;y", "a b", "r:web", "x" * 65, "../x"])
def test_classic_refuses(name: str) -> None:
    with pytest.raises(ConfigError):
        ClassicBackend().validate_name(name)


def test_classic_refuses_a_remote_with_the_way_to_another_host() -> None:
    with pytest.raises(ConfigError, match=r"incus and lxd backends.*--ssh"):
        ClassicBackend().validate_name("r:web")


@pytest.mark.parametrize(("spec", "remote", "name"), [
    ("web1", None, "web1"), ("R:web-1", "R", "web-1"), ("my.remote:a", "my.remote", "a"), ("a1b", None, "a1b"),
])
def test_incus_refs(spec: str, remote: str | None, name: str) -> None:
    ref = parse_ref(spec)
    assert (ref.remote, ref.name, str(ref)) == (remote, name, spec)


@pytest.mark.parametrize("spec", ["web_1", "web.1", "-web", "web-", "123", "x" * 64, "R:", ":web", "a:b:c",
                                  "r;x:web", "web 1", ""])
def test_incus_refuses(spec: str) -> None:
    with pytest.raises(ConfigError):
        IncusBackend().validate_name(spec)


def test_incus_argv_puts_the_project_first_and_lxd_uses_its_client() -> None:
    assert IncusBackend(project="p1").argv("list", "--format", "json") == [
        "incus", "--project", "p1", "list", "--format", "json"]
    lxd = make("lxd")
    assert lxd.name == "lxd" and lxd.argv("start", "x") == ["lxc", "start", "x"]
    with pytest.raises(ConfigError):
        IncusBackend(project="a/b")


def test_incus_api_paths_carry_remote_and_project() -> None:
    b = IncusBackend(project="p1")
    assert b._api(parse_ref("R:web"), "/state") == "R:/1.0/instances/web/state?project=p1"
    path = IncusBackend()._api(parse_ref("web"), "/snapshots", "recursion=1")
    assert path == "/1.0/instances/web/snapshots?recursion=1"


@pytest.mark.parametrize(("what", "value", "key", "setting"), [
    ("memory", "512M", "limits.memory", "512MiB"),
    ("memory", "2g", "limits.memory", "2GiB"),
    ("memory", "off", "limits.memory", None),
    ("cpu", "0.5", "limits.cpu.allowance", "50ms/100ms"),
    ("cpu", "2", "limits.cpu.allowance", "200ms/100ms"),
    ("cpu", "off", "limits.cpu.allowance", None),
    ("cpuset", "1", "limits.cpu", "1-1"),
    ("cpuset", "0-1", "limits.cpu", "0-1"),
    ("cpuset", "0,2", "limits.cpu", "0,2"),
])
def test_incus_limits(what: str, value: str, key: str, setting: str | None) -> None:
    assert limit_settings(what, value) == (key, setting)


@pytest.mark.parametrize(("what", "value"), [("memory", "12X"), ("cpu", "lots"), ("cpu", "0"), ("cpuset", "a-b"),
                                             ("swap", "1G")])
def test_bad_limits_are_refused_by_both_backends(what: str, value: str) -> None:
    with pytest.raises(ConfigError):
        limit_settings(what, value)
    with pytest.raises(ConfigError):
        cgroup_setting(what, value, v2=True)


def test_cgroup_settings_v1_and_v2() -> None:
    assert cgroup_setting("memory", "512m", v2=True) == ("memory.max", "512M")
    assert cgroup_setting("memory", "off", v2=False) == ("memory.limit_in_bytes", "-1")
    assert cgroup_setting("cpu", "0.5", v2=True, period=200000) == ("cpu.max", "100000 200000")
    assert cgroup_setting("cpu", "off", v2=False) == ("cpu.cfs_quota_us", "-1")
    assert cgroup_setting("cpuset", "0-1", v2=True) == ("cpuset.cpus", "0-1")
    assert incus_size("1048576") == "1048576B"


STATE = {
    "status": "Running", "pid": 4242, "cpu": {"usage": 12000000}, "memory": {"usage": 2048},
    "network": {"lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
                "eth0": {"addresses": [{"family": "inet", "address": "10.1.2.3", "scope": "global"},
                                       {"family": "inet6", "address": "fd42::1", "scope": "global"},
                                       {"family": "inet6", "address": "fe80::1", "scope": "link"}]}},
}


def test_parse_instance_state() -> None:
    info = parse_instance_state("web", STATE)
    assert (info.state, info.pid, info.cpu_ns, info.memory_bytes, info.ips) == (
        State.RUNNING, 4242, 12000000, 2048, ("10.1.2.3", "fd42::1"))
    assert parse_instance_state("web", {"status": "Frozen", "pid": 1}).state is State.FROZEN
    assert parse_instance_state("web", {"status": "Stopped", "pid": -1}).pid is None
    assert parse_instance_state("web", {"status": "Error"}).state is State.ERROR


def test_parse_list_is_exact_rows() -> None:
    text = json.dumps([{"name": "ix-y", "status": "Running", "type": "container", "location": "m2",
                        "ephemeral": True, "state": STATE},
                       {"name": "ix-y2", "status": "Stopped", "type": "container", "state": {"status": "Stopped"}}])
    rows = parse_list(text)
    assert [(r["NAME"], r["STATE"]) for r in rows] == [("ix-y", "RUNNING"), ("ix-y2", "STOPPED")]
    assert rows[0]["IPV4"] == "10.1.2.3" and rows[0]["IPV6"] == "fd42::1" and rows[0]["LOCATION"] == "m2"
    assert "ephemeral" in rows[0]["TYPE"]


def test_parse_snapshots_oldest_first() -> None:
    text = json.dumps([{"name": "web/snap1", "created_at": "2026-01-02T03:04:05.1Z"},
                       {"name": "web/snap0", "created_at": "2026-01-01T00:00:00Z", "description": "first"}])
    assert [(s.name, s.time, s.comment) for s in parse_snapshots(text)] == [
        ("snap0", "2026-01-01 00:00:00", "first"), ("snap1", "2026-01-02 03:04:05", "")]


@pytest.mark.parametrize(("settings", "wanted"), [
    ({"backend": "lxc", "container": "web1"}, []),
    ({"backend": "incus", "container": "R:web-1", "project": "p1", "image": "lxck-busybox"}, []),
    ({"backend": "lxc", "container": "R:web"}, ["REMOTE:NAME is for the incus and lxd backends"]),
    ({"backend": "lxc", "project": "p1"}, ["project is for the incus and lxd backends"]),
    ({"backend": "lxc", "image": "img"}, ["image is for the incus and lxd backends"]),
    ({"backend": "incus", "container": "web_1"}, ["Incus and LXD names"]),
    ({"backend": "incus", "ssh": "h"}, ["ssh is not supported by incus"]),
    ({"backend": "lxd", "sudo": True, "namespaces": "MOUNT"}, ["sudo is not supported by lxd",
                                                               "namespaces is not supported by lxd"]),
    ({"backend": "incus", "ephemeral": "base.1"}, ["Incus and LXD names"]),
    ({"backend": "vm"}, ["unknown backend"]),
])
def test_settings_are_checked_together(settings: dict[str, object], wanted: list[str]) -> None:
    errors = check_settings(settings)
    assert len(errors) == len(wanted), errors
    for error, part in zip(errors, wanted, strict=True):
        assert part in error


def test_records_rebuild_the_backend() -> None:
    classic = ClassicBackend(Tools(lxcpath="/srv/lxc", sudo=True))
    again = from_record(classic.record())
    assert isinstance(again, ClassicBackend) and again.tools == classic.tools
    incus = from_record(IncusBackend("lxc", project="p").record())
    assert isinstance(incus, IncusBackend) and (incus.client, incus.project) == ("lxc", "p")
    assert isinstance(from_record({}), ClassicBackend)


def test_unsupported_defaults_raise_not_supported() -> None:
    b = IncusBackend()
    with pytest.raises(NotSupported, match=r"overlay clones .* not supported by incus"):
        b.clone("a", "b", overlay=True)
    with pytest.raises(NotSupported, match="snapshot --comment is not supported by incus"):
        b.snapshot("a", comment="x")
    with pytest.raises(NotSupported, match="log --level is not supported by lxd"):
        make("lxd").log("a", level="INFO")
    with pytest.raises(NotSupported, match=r"template arguments .* not supported by incus"):
        b.create("a", "img", template_args=["--release", "x"])


# -- the commands each client gets, through a fake client on PATH (no daemon) --------------------------------

FAKE = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
case "$1" in
  query) case "$2" in *snapshots*) echo '[{{"name": "n/snap0", "created_at": "2026-01-01T00:00:00Z"}}]';;
                      *) echo '{{"status": "{status}", "expanded_config": {{}}}}';; esac;;
  config) [ "$2" = get ] && echo value;;
esac
exit 0
"""


@pytest.fixture
def fake_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Writes fake ``incus`` and ``lxc`` clients that log their argv and answer queries with ``status``."""
    from lxc_kernel import spawn

    log = tmp_path / "argv.log"

    def install(status: str = "Running") -> Path:
        for client in ("incus", "lxc"):
            path = tmp_path / client
            path.write_text(FAKE.format(log=log, status=status))
            path.chmod(0o755)
        return log

    monkeypatch.setitem(spawn.TOOL_ENV, "PATH", f"{tmp_path}:{spawn.TOOL_ENV['PATH']}")
    return install


def _calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [line for line in lines if not line.startswith("query")]


@pytest.mark.parametrize(("kind", "wanted"), [
    ("incus", ["pause n", "resume n", "snapshot create n", "snapshot restore n snap0", "snapshot delete n snap0",
               "copy n/snap0 n2", "copy n n3 --stateless --instance-only", "config set n limits.memory 64MiB",
               "config unset n limits.cpu.allowance", "init lxck-busybox n4 -c limits.memory=1GiB",
               "stop n --force", "delete --force n"]),
    ("lxd", ["pause n", "start n", "snapshot n", "restore n snap0", "delete n/snap0",
             "copy n/snap0 n2", "copy n n3 --stateless --instance-only", "config set n limits.memory 64MiB",
             "config unset n limits.cpu.allowance", "init lxck-busybox n4 -c limits.memory=1GiB",
             "stop n --force", "delete --force n"]),
])
def test_each_client_gets_its_own_commands(fake_client: Callable[[str], Path], kind: str, wanted: list[str]) -> None:
    b = make(kind)
    log = fake_client("Running")
    b.freeze("n", timeout=0)  # the fake stays Running: the state reached is reported, not awaited for long
    log = fake_client("Frozen")
    b.unfreeze("n", timeout=0)
    log = fake_client("Running")
    b.snapshot("n")
    b.restore("n", "snap0")
    b.delete_snapshot("n", "snap0")
    b.restore("n", "snap0", "n2")
    b.clone("n", "n3")
    b.set_limit("n", "memory", "64M")
    b.set_limit("n", "cpu", "off")
    b.create("n4", "lxck-busybox", config=[("limits.memory", "1GiB")])
    log = fake_client("Stopped")
    b.stop("n", kill=True)
    b.destroy("n", snapshots=True)
    assert _calls(log) == wanted


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend", "incus", "--container", "web1", "--ssh", "node2"], "ssh is not supported by incus"),
    (["--container", "R:web1"], "REMOTE:NAME is for the incus and lxd backends"),
    (["--container", "web1", "--project", "p1"], "project is for the incus and lxd backends"),
    (["--backend", "lxd", "--container", "web_1"], "Incus and LXD names"),
    (["--backend", "incus", "--container", "web1", "--sudo"], "sudo is not supported by incus"),
    (["--backend", "incus", "--container", "web1", "--image", "a b"], "invalid image"),
    (["--container", "web1", "--ssh=-oProxyCommand=x"], "invalid ssh host '-oProxyCommand=x'"),
    (["--container", "web1", "--ssh", "node2", "--ssh-option", "ProxyCommand=x"], "ProxyCommand is not allowed"),
    (["--container", "web1", "--ssh-option", "ConnectTimeout=5"], "ssh_options go with ssh"),
    (["--backend", "podman", "--container", "web1"], "is not one of lxc, incus, lxd"),
])
def test_the_install_cli_refuses_options_that_do_not_fit(argv: list[str], message: str) -> None:
    from lxc_kernel import install

    with pytest.raises(ConfigError, match=re.escape(message)):
        install.traits_from_args(install.build_parser().parse_args(argv))
