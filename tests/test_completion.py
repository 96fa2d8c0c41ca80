"""Completion and inspection like the container's own terminal (issue 12), through jupyter_client on busybox
ash and GNU bash (the hostfs container sees the host's /usr: bash-completion, git and man-db come from
.ci/setup). No timed assertions: speed is a figure of benches/complete.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Kernel, start_kernel

pytestmark = pytest.mark.timeout(120)

DIR = "/tmp/lxck-t12"


def _reply(kernel: Kernel, msg_id: str, timeout: float = 20) -> dict[str, Any]:
    """The reply to ``msg_id``, after the request's iopub `idle` (see test_frontends._reply)."""
    reply = kernel.kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=timeout)
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=timeout)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            return reply["content"]


def complete(kernel: Kernel, code: str, pos: int | None = None) -> dict[str, Any]:
    reply = _reply(kernel, kernel.kc.complete(code, len(code) if pos is None else pos))
    assert reply["status"] == "ok", reply
    return reply


def inspect(kernel: Kernel, code: str, pos: int | None = None, detail: int = 0) -> dict[str, Any]:
    return _reply(kernel, kernel.kc.inspect(code, len(code) if pos is None else pos, detail))


def types(reply: dict[str, Any]) -> dict[str, str]:
    return {t["text"]: t["type"] for t in reply["metadata"]["_jupyter_types_experimental"]}


def run(kernel: Kernel, code: str) -> str:
    r = kernel.execute(code)
    assert r.status == "ok", (code, r.reply, r.stream("stderr"))
    return r.stream()


@pytest.fixture(scope="module")
def k(kernel: Kernel) -> Iterator[Kernel]:
    """The module's kernel (one per shell kind) in a directory of awkward file names."""
    run(kernel, f"rm -rf {DIR}; mkdir -p '{DIR}/my dir' {DIR}/bin {DIR}/sub && cd {DIR}"
                " && touch alpha.txt 'a file' 'key:val' && lxck_var=1"
                # A program without a man page, on PATH.
                f" && printf '#!/bin/sh\\necho \"usage: nomanprog [--flag]\"\\n' > {DIR}/bin/nomanprog"
                f" && chmod +x {DIR}/bin/nomanprog && PATH=$PATH:{DIR}/bin")
    yield kernel
    kernel.execute(f"cd /; rm -rf {DIR}")


def bash_only(kernel: Kernel) -> None:
    if kernel.kind != "bash":  # type: ignore[attr-defined]
        pytest.skip("busybox ash has no programmable completion")


# -- readline's order ---------------------------------------------------------------------------------


def test_first_word_falls_back_to_file_names(k: Kernel) -> None:
    reply = complete(k, "alp")
    assert reply["matches"] == ["alpha.txt"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 3)
    assert types(reply) == {"alpha.txt": "file"}
    # ...but a command, where one matches, wins: no files then.
    reply = complete(k, "ech")
    assert reply["matches"] == ["echo"]


def test_arguments_complete_file_names(k: Kernel) -> None:
    reply = complete(k, "cat alph")
    assert reply["matches"] == ["alpha.txt"]
    reply = complete(k, "cat s")
    assert reply["matches"] == ["sub/"]


def test_types_in_the_metadata(k: Kernel) -> None:
    reply = complete(k, "myfunc() { :; }\nmyf")  # ash cannot list functions: it offers the cell's
    if k.kind == "bash":  # type: ignore[attr-defined]
        run(k, "myfunc() { :; }")
        reply = complete(k, "myf")
    assert types(reply)["myfunc"] == "function"
    assert types(complete(k, "ech"))["echo"] == "command"
    assert types(complete(k, "echo $lxck_v"))["$lxck_var"] == "variable"
    assert types(complete(k, "ls /et"))["/etc/"] == "directory"
    assert types(complete(k, "ls alph"))["alpha.txt"] == "file"
    assert types(complete(k, "%lx"))["%lxc"] == "magic"
    # One entry per match, in order, each replacing [cursor_start, cursor_end).
    reply = complete(k, "cat ")
    entries = reply["metadata"]["_jupyter_types_experimental"]
    assert [e["text"] for e in entries] == reply["matches"] and reply["matches"]
    assert {(e["start"], e["end"]) for e in entries} == {(reply["cursor_start"], reply["cursor_end"])}


# -- cursor_start ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "start", "match"),
    [
        ("dd if=/et", 6, "/etc/"),  # after `=`, as readline
        ("FOO=/et", 4, "/etc/"),  # an assignment's value
        ("echo a:/et", 7, "/etc/"),  # after `:`
        ("cat my\\ d", 4, "my\\ dir/"),  # an escaped blank stays in the word
        ("cat 'my d", 5, "my dir/"),  # inside an open quote: after it, nothing escaped
        ('cat "my d', 5, "my dir/"),
        ("cat a\\ f", 4, "a\\ file"),
        ("cat 'a f", 5, "a file'"),  # a file closes the quote
        ("cat key\\:v", 4, "key\\:val"),  # an escaped break character stays in the word
    ],
)
def test_cursor_start(k: Kernel, code: str, start: int, match: str) -> None:
    reply = complete(k, code)
    assert match in reply["matches"], reply
    assert (reply["cursor_start"], reply["cursor_end"]) == (start, len(code))


# -- programmable completion (bash) ------------------------------------------------------------------


def test_complete_F_and_W_defined_in_a_cell(k: Kernel) -> None:
    bash_only(k)
    run(k, "_lxck_f() { COMPREPLY=($(compgen -W 'one two three' -- \"$2\")); }; complete -F _lxck_f fcmd;"
           " complete -W 'alpha beta gamma' wcmd; complete -o dirnames -W 'zzz' dcmd")
    reply = complete(k, "fcmd t")
    assert sorted(reply["matches"]) == ["three", "two"]
    assert reply["cursor_start"] == 5
    assert complete(k, "wcmd b")["matches"] == ["beta"]
    assert complete(k, "wcmd alpha g")["matches"] == ["gamma"]
    # -o dirnames: directories when the word list has nothing.
    assert complete(k, "dcmd s")["matches"] == ["sub/"]


def test_the_function_is_called_as_readline_calls_it(k: Kernel) -> None:
    bash_only(k)
    run(k, '_lxck_show() { COMPREPLY=("$COMP_CWORD|$COMP_POINT|${COMP_WORDS[*]}|$COMP_LINE|$COMP_TYPE|$1|$2|$3"); };'
           " complete -F _lxck_show show")
    reply = complete(k, "ls; show --foo=ba")
    assert reply["matches"] == ["3|13|show --foo = ba|show --foo=ba|9|show|ba|="]
    assert reply["cursor_start"] == len("ls; show --foo=")


def test_git_chec_loads_its_spec_on_demand(containers: dict[str, str]) -> None:
    """bash-completion is loaded by the first completion, not at start; git's spec by `git chec`."""
    kernel = start_kernel(containers["bash"])
    try:
        probe = "declare -F _completion_loader >/dev/null && echo loader; complete -p git &>/dev/null && echo git; :"
        assert run(kernel, probe) == ""
        reply = complete(kernel, "git chec")
        assert "checkout" in reply["matches"], reply
        assert reply["cursor_start"] == 4
        assert run(kernel, probe) == "loader\ngit\n"  # loaded in the shell itself: the next Tab is quick
        assert "commit" in complete(kernel, "git com")["matches"]
        assert run(kernel, "shopt -q extglob && echo on || echo off") == "off\n"  # the user's setting
        assert "status" in complete(kernel, "systemctl sta")["matches"]
    finally:
        kernel.shutdown()


def test_a_hanging_or_noisy_function_does_not_hurt_the_session(k: Kernel) -> None:
    bash_only(k)
    run(k, "x_before=7; _lxck_hang() { lxck_leak=1; cd /; sleep 100; }; complete -F _lxck_hang hang;"
           " _lxck_noisy() { echo NOISE; echo NOISE >&2; echo NOISE >/dev/tty; lxck_leak=2; COMPREPLY=(quiet); };"
           " complete -F _lxck_noisy noisy")
    shell = run(k, "echo $$")
    reply = complete(k, "hang a")  # the 500 ms deadline: ^C, then the shell is resynced
    assert reply["matches"] == []
    assert complete(k, "noisy q")["matches"] == ["quiet"]
    r = k.execute('echo "$x_before ${lxck_leak-unset} $(pwd) $$"')
    assert r.status == "ok"
    assert r.stream() == f"7 unset {DIR} {shell}"
    assert "NOISE" not in r.stream("stderr")
    assert complete(k, "fcmd o")["matches"] == ["one"]  # and completion goes on


def test_completion_functions_leave_the_session_alone(k: Kernel) -> None:
    bash_only(k)
    run(k, "_lxck_mess() { cd /; shopt -s nullglob; set -f; COMPREPLY=(ok); }; complete -F _lxck_mess mess; set -e")
    assert complete(k, "mess ")["matches"] == ["ok"]
    assert complete(k, "nomatch_zzz")["matches"] == []  # a helper that finds nothing under set -e
    out = run(k, "set +e; echo \"$(pwd) $-\"; shopt -q nullglob && echo nullglob || echo no-nullglob")
    assert out.startswith(f"{DIR} ") and "f" not in out.split()[1] and out.endswith("no-nullglob\n")


def test_shell_options_of_a_cell_stay(k: Kernel) -> None:
    """File names are listed in the shell itself (no fork): the options it needs are put back."""
    run(k, "set -f; set -u")
    if k.kind == "bash":  # type: ignore[attr-defined]
        run(k, "shopt -s failglob")
    assert complete(k, "cat alph")["matches"] == ["alpha.txt"]
    assert complete(k, "alp")["matches"] == ["alpha.txt"]
    flags = run(k, "echo $-")
    assert "f" in flags and "u" in flags
    if k.kind == "bash":  # type: ignore[attr-defined]
        assert run(k, "shopt -q failglob && echo on; shopt -u failglob") == "on\n"
    run(k, "set +f +u")


def test_helpers_removed_by_a_cell_come_back(k: Kernel) -> None:
    bash_only(k)
    run(k, "_lxck_exit() { exit 3; }; complete -F _lxck_exit quits; unset -f __lxck_pc __lxck_fl")
    assert complete(k, "fcmd t")["matches"] == ["three", "two"]
    assert complete(k, "cat alph")["matches"] == ["alpha.txt"]
    run(k, "unset -f __lxck_cm")
    assert complete(k, "alp")["matches"] == ["alpha.txt"]
    assert complete(k, "quits x")["matches"] == []  # the function ended its subshell: nothing, and no harm
    assert run(k, "echo $x_before") == "7\n"


def test_aliases_do_not_reach_the_helpers(containers: dict[str, str]) -> None:
    """The helpers are defined after a cell's aliases exist (first completion): they must not expand them."""
    kernel = start_kernel(containers["bash"])
    try:
        run(kernel, f"mkdir -p {DIR}-aliases/sub; cd {DIR}-aliases; alias local=false builtin=false compgen=false")
        assert "sub/" in complete(kernel, "cd s")["matches"]
        assert complete(kernel, "ech")["matches"] == ["echo"]
        assert run(kernel, "shopt -q expand_aliases && echo on") == "on\n"
    finally:
        kernel.execute(f"cd /; \\rm -rf {DIR}-aliases")
        kernel.shutdown()


# -- inspection ------------------------------------------------------------------------------------


def test_inspect_a_builtin(k: Kernel) -> None:
    reply = inspect(k, "cd /tmp", 1)
    assert reply["status"] == "ok" and reply["found"]
    text = reply["data"]["text/plain"]
    assert "cd is a shell builtin" in text
    if k.kind == "bash":  # type: ignore[attr-defined]
        assert "Change the shell working directory" in text  # `help cd`


def test_inspect_a_program_with_a_man_page(k: Kernel) -> None:
    bash_only(k)  # the busybox container has no man pages
    reply = inspect(k, "ls -l", 1)
    assert reply["found"]
    text = reply["data"]["text/plain"]
    assert re.search(r"ls is (hashed \()?/usr/bin/ls", text)
    assert "NAME\n" in text and "ls - list directory contents" in text and "SYNOPSIS\n" in text
    assert "DESCRIPTION" not in text  # level 0: NAME and SYNOPSIS only
    page = inspect(k, "ls -l", 1, detail=1)["data"]["text/plain"]
    assert "DESCRIPTION" in page and "\b" not in page and "\x1b" not in page
    assert len(page) > len(text)


def test_inspect_a_program_without_a_man_page(k: Kernel) -> None:
    reply = inspect(k, "nomanprog", 3)
    assert reply["found"]
    text = reply["data"]["text/plain"]
    assert f"{DIR}/bin/nomanprog" in text and "usage: nomanprog [--flag]" in text  # --help, as the fallback
    assert "usage: nomanprog" in inspect(k, "nomanprog", 3, detail=1)["data"]["text/plain"]
    if k.kind == "sh":  # type: ignore[attr-defined]
        # busybox has no pages at all: its applets' usage is what there is.
        assert "Usage: ls" in inspect(k, "ls", 1, detail=1)["data"]["text/plain"]


def test_inspect_unknown_and_variable(k: Kernel) -> None:
    assert not inspect(k, "no_such_cmd_zz", 3)["found"]
    reply = inspect(k, "echo $lxck_var", 8)
    assert reply["found"] and "lxck_var=1" in reply["data"]["text/plain"]


# -- language_info --------------------------------------------------------------------------------------


def test_language_info_version_is_the_containers_shell(containers: dict[str, str]) -> None:
    for kind, expected in (("bash", r"5\.\d+\.\d+"), ("sh", "sh")):
        kernel = start_kernel(containers[kind])
        try:
            kernel.kc.kernel_info()
            before = kernel.kc.get_shell_msg(timeout=10)["content"]["language_info"]
            assert before["name"] == "bash" and before["version"] == ""  # no shell attached yet
            run(kernel, "true")
            kernel.kc.kernel_info()
            after = kernel.kc.get_shell_msg(timeout=10)["content"]["language_info"]
            assert re.fullmatch(expected, after["version"]), after
        finally:
            kernel.shutdown()
