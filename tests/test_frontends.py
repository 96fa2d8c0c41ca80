"""Frontend features through jupyter_client, on busybox ash and GNU bash: completion, inspection,
is_complete, interactive input, rich display, the output budget."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from conftest import Kernel


def _reply(kernel: Kernel, msg_id: str, timeout: float = 10) -> dict[str, Any]:
    reply = kernel.kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=timeout)
    return reply["content"]


def complete(kernel: Kernel, code: str, pos: int | None = None) -> dict[str, Any]:
    return _reply(kernel, kernel.kc.complete(code, len(code) if pos is None else pos))


def inspect(kernel: Kernel, code: str, pos: int | None = None, detail: int = 0) -> dict[str, Any]:
    return _reply(kernel, kernel.kc.inspect(code, len(code) if pos is None else pos, detail))


def is_complete(kernel: Kernel, code: str) -> dict[str, Any]:
    return _reply(kernel, kernel.kc.is_complete(code))


# -- completion -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(kernel: Kernel) -> Kernel:
    r = kernel.execute(
        "mkdir -p /tmp/lxck-cpl/subdir && touch '/tmp/lxck-cpl/a file' /tmp/lxck-cpl/abc"
        " && cd /tmp/lxck-cpl && lxck_myvar=1 && alias lxckll='ls -l'"
    )
    assert r.status == "ok", r.reply
    return kernel


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "expected", "start"),
    [
        ("ech", "echo", 0),
        ("ls | so", "sort", 5),
        ("echo $HO", "$HOME", 5),
        ("echo ${lxck_my", "${lxck_myvar}", 5),
        ("cat a", "a\\ file", 4),
        ("cd sub", "subdir/", 3),
        ("ls /et", "/etc/", 3),
        ("lxckl", "lxckll", 0),
        ("%lx", "%lxc", 0),
    ],
)
def test_completion(prepared: Kernel, code: str, expected: str, start: int) -> None:
    reply = complete(prepared, code)
    assert reply["status"] == "ok"
    assert expected in reply["matches"], reply
    assert reply["cursor_start"] == start
    assert reply["cursor_end"] == len(code)


@pytest.mark.timeout(60)
def test_magic_subcommands_and_container_names(prepared: Kernel, containers: dict[str, str]) -> None:
    reply = complete(prepared, "%lxc sta")
    assert {"start"} <= set(reply["matches"]), reply
    reply = complete(prepared, "%lxc start lxck-test-")
    assert set(containers.values()) <= set(reply["matches"]), reply
    assert reply["cursor_start"] == len("%lxc start ")


@pytest.mark.timeout(60)
def test_completion_answers_within_200_ms(prepared: Kernel) -> None:
    times = []
    for _ in range(10):
        start = time.monotonic()
        reply = complete(prepared, "echo $HO")
        times.append(time.monotonic() - start)
        assert "$HOME" in reply["matches"]
    assert statistics.median(times) < 0.2, times


@pytest.mark.timeout(60)
def test_completion_leaves_status_and_state_alone(prepared: Kernel) -> None:
    prepared.execute("x_before=1")
    complete(prepared, "ech")
    complete(prepared, "ls a")
    r = prepared.execute('echo "$? $x_before $(pwd)"')
    assert r.stream() == "0 1 /tmp/lxck-cpl\n"


# -- inspection -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_inspect_builtin_command_variable_unknown(prepared: Kernel) -> None:
    cd = inspect(prepared, "cd /tmp", 1)
    assert cd["status"] == "ok" and cd["found"]
    assert "builtin" in cd["data"]["text/plain"]
    ls = inspect(prepared, "ls -l", 1)
    assert ls["found"] and "ls" in ls["data"]["text/plain"]
    home = inspect(prepared, "echo $HOME", 7)
    assert home["found"] and "HOME=/root" in home["data"]["text/plain"]
    unknown = inspect(prepared, "no-such-command-xyz", 3)
    assert not unknown["found"]
    magic = inspect(prepared, "%lxc start", 2)
    assert magic["found"] and "%lxc" in magic["data"]["text/plain"]


@pytest.mark.timeout(60)
def test_inspect_detail_level_1_shows_the_man_page_when_there_is_one(prepared: Kernel) -> None:
    reply = inspect(prepared, "ls", 1, detail=1)
    assert reply["found"]
    if prepared.kind == "bash":  # type: ignore[attr-defined]
        assert len(reply["data"]["text/plain"]) > 500


# -- is_complete ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("for i in 1 2; do", "incomplete"),
        ("echo 'unclosed", "incomplete"),
        ("cat <<EOF\nline", "incomplete"),
        ("fi", "invalid"),
        ("echo hi", "complete"),
    ],
)
def test_is_complete_table(kernel: Kernel, code: str, status: str) -> None:
    reply = is_complete(kernel, code)
    assert reply["status"] == status
    if code.startswith("for"):
        assert reply["indent"].strip() == "" and reply["indent"]
    # ...and the shell agrees: the complete forms run, the invalid one is a syntax error.
    if status == "complete":
        assert kernel.execute(code).status == "ok"
