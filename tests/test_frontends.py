"""Frontend features through jupyter_client, on busybox ash and GNU bash: completion, inspection,
is_complete, interactive input, rich display, the output budget."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from conftest import Kernel


def _reply(kernel: Kernel, msg_id: str, timeout: float = 10, wait_idle: bool = True) -> dict[str, Any]:
    """The reply to ``msg_id``, after the request's iopub `idle`. As frontends do: ipykernel aborts an
    execute_request that arrives between an error reply and that idle (ipython/ipykernel#609)."""
    reply = kernel.kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=timeout)
    while wait_idle:
        msg = kernel.kc.get_iopub_msg(timeout=timeout)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break
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
    # The test containers' common prefix (lxck-test- unless LXCK_TEST_SH/LXCK_TEST_BASH name others).
    prefix = os.path.commonprefix(list(containers.values()))  # noqa: RUF071 - characters, not path parts
    reply = complete(prepared, f"%lxc start {prefix}")
    assert set(containers.values()) <= set(reply["matches"]), reply
    assert reply["cursor_start"] == len("%lxc start ")


@pytest.mark.timeout(60)
def test_completion_answers_every_time(prepared: Kernel) -> None:
    """Ten completions in a row, each answered right (its speed is a figure of benches/bench.py)."""
    for _ in range(10):
        reply = complete(prepared, "echo $HO")
        assert "$HOME" in reply["matches"]


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


# -- interactive input ------------------------------------------------------------------------------


def run_with_input(kernel: Kernel, code: str, replies: list[str], timeout: float = 30) -> tuple[Any, list[dict]]:
    """Execute with stdin allowed, answering each input_request with the next reply."""
    from queue import Empty

    kc = kernel.kc
    msg_id = kc.execute(code, allow_stdin=True)
    requests: list[dict] = []
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        assert time.monotonic() < deadline, f"no idle within {timeout} s; requests={requests}"
        try:
            req = kc.get_stdin_msg(timeout=0.02)
            requests.append(req["content"])
            kc.input(replies.pop(0) if replies else "\x04")
        except Empty:
            pass
        try:
            msg = kc.get_iopub_msg(timeout=0.02)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif msg["msg_type"] != "execute_input":
            messages.append(msg)
    reply = _reply(kernel, msg_id, wait_idle=False)  # its idle was read above
    from conftest import Result

    return Result({"content": reply}, messages), requests


@pytest.mark.timeout(60)
def test_read_prompts_and_gets_the_reply(kernel: Kernel) -> None:
    r, requests = run_with_input(kernel, 'read -p "Name? " n; echo "hello $n"', ["alice"])
    assert requests == [{"prompt": "Name? ", "password": False}]
    assert r.status == "ok"
    assert r.stream() == "hello alice\n"  # the echo of the reply is not repeated


@pytest.mark.timeout(60)
def test_yes_no_question_on_stdout(kernel: Kernel) -> None:
    r, requests = run_with_input(kernel, 'printf "Continue? [Y/n] "; read a; echo "answer=$a"', ["n"])
    assert [q["prompt"] for q in requests] == ["Continue? [Y/n] "]
    assert r.stream() == "answer=n\n"


@pytest.mark.timeout(60)
def test_silent_read_is_a_password_prompt(kernel: Kernel) -> None:
    r, requests = run_with_input(kernel, 'read -s -p "Password: " p; echo; echo "length ${#p}"', ["hunter2"])
    assert requests == [{"prompt": "Password: ", "password": True}]
    assert "hunter2" not in r.stream() + r.stream("stderr")
    assert r.stream().endswith("length 7\n")


@pytest.mark.timeout(60)
def test_two_reads_in_one_cell(kernel: Kernel) -> None:
    r, requests = run_with_input(kernel, 'read -p "a? " a; read -p "b? " b; echo "$a-$b"', ["1", "2"])
    assert [q["prompt"] for q in requests] == ["a? ", "b? "]
    assert r.stream() == "1-2\n"


@pytest.mark.timeout(60)
def test_python_input_and_getpass(containers: dict[str, str]) -> None:
    from conftest import start_kernel

    k = start_kernel(containers["bash"])  # busybox has no python3
    try:
        r, requests = run_with_input(k, "python3 -c 'print(\"x=\" + input(\"x? \"))'", ["42"])
        assert requests == [{"prompt": "x? ", "password": False}]  # readline's raw mode is not a password
        assert r.stream() == "x=42\n"
        r, requests = run_with_input(
            k, "python3 -c 'import getpass; print(len(getpass.getpass(\"PW: \")))'", ["secret"]
        )
        assert requests == [{"prompt": "PW: ", "password": True}]
        assert "secret" not in r.stream() and r.stream().strip() == "6"
    finally:
        k.shutdown()


@pytest.mark.timeout(60)
def test_interrupt_while_waiting_for_input(kernel: Kernel) -> None:
    """Regression: the stop button while the frontend shows an input box must end the cell."""
    from queue import Empty

    kc = kernel.kc
    msg_id = kc.execute('read -p "never answered? " x; echo after', allow_stdin=True)
    kc.get_stdin_msg(timeout=10)
    start = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = _reply(kernel, msg_id, timeout=10)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - start < 3
    with pytest.raises(Empty):
        kc.get_stdin_msg(timeout=0.3)
    r = kernel.execute("echo still here")
    assert r.stream() == "still here\n"
    # Regression: bash kept the resync line typed behind ^C in its `read` buffer, and a later
    # `read` returned it even from /dev/null.
    r = kernel.execute('read -r y </dev/null; echo "rc=$? y=[$y]"', allow_stdin=False)
    assert r.stream() == "rc=1 y=[]\n"


@pytest.mark.timeout(60)
def test_interrupting_cat_with_stdin_does_not_echo_the_resync(kernel: Kernel) -> None:
    """Regression: bash restores a terminal state with echo on after ^C; the resync line must not show."""
    kc = kernel.kc
    msg_id = kc.execute("cat", allow_stdin=True)
    kc.get_stdin_msg(timeout=10)
    kernel.km.interrupt_kernel()
    reply = _reply(kernel, msg_id, timeout=10)
    assert reply["status"] == "error"
    r = kernel.execute("echo next")
    assert r.stream() == "next\n"
    assert "__lxck" not in r.stream()


@pytest.mark.timeout(60)
def test_without_stdin_read_gets_end_of_file(kernel: Kernel) -> None:
    r = kernel.execute('read -p "Name? " n; echo "rc=$? n=[$n]"', allow_stdin=False, timeout=10)
    assert r.stream() == "rc=1 n=[]\n"


@pytest.mark.timeout(60)
def test_without_stdin_a_tty_reader_fails_fast_naming_it(containers: dict[str, str]) -> None:
    """getpass reads /dev/tty, not stdin: without stdin it would hang; it must fail fast instead."""
    from conftest import start_kernel

    for name in containers.values():
        k = start_kernel(name)
        try:
            code = "sh -c 'printf \"Secret: \" >/dev/tty; read s </dev/tty'; echo after"
            start = time.monotonic()
            r = k.execute(code, allow_stdin=False, timeout=20)
            assert time.monotonic() - start < 3
            assert r.status == "error"
            assert r.errors and r.errors[0]["ename"] == "StdinNotAllowed"
            assert "sh -c" in r.errors[0]["evalue"] and "Secret:" in r.errors[0]["evalue"]
            assert "after" not in r.stream()
            assert k.execute("echo ok").stream() == "ok\n"
        finally:
            k.shutdown()


# -- rich output ------------------------------------------------------------------------------------

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.timeout(60)
def test_display_helper_shows_images_html_markdown_json(kernel: Kernel) -> None:
    code = (
        f"printf '%s' {PNG_1PX} | base64 -d > /tmp/lxck-1px.png && jdisplay /tmp/lxck-1px.png;"
        " printf '<svg xmlns=\"http://www.w3.org/2000/svg\"/>' > /tmp/lxck.svg && jdisplay /tmp/lxck.svg;"
        " echo '<b>bold</b>' | jdisplay --html; echo '# Title' | jdisplay --markdown;"
        ' echo \'{"a": [1, 2]}\' | jdisplay --json; echo done'
    )
    r = kernel.execute(code)
    assert r.status == "ok", r.reply
    data = [m["content"]["data"] for m in r.of_type("display_data")]
    assert data[0]["image/png"] == PNG_1PX
    assert data[1]["image/svg+xml"].startswith("<svg")
    assert data[2]["text/html"] == "<b>bold</b>\n"
    assert data[3]["text/markdown"] == "# Title\n"
    assert data[4]["application/json"] == {"a": [1, 2]}
    assert r.stream() == "done\n"


@pytest.mark.timeout(60)
def test_display_id_updates_in_place(kernel: Kernel) -> None:
    r = kernel.execute("echo one | jdisplay --id progress; echo two | jdisplay --id progress")
    kinds = [(m["msg_type"], m["content"]["transient"].get("display_id")) for m in r.messages]
    assert kinds == [("display_data", "progress"), ("update_display_data", "progress")]
    r = kernel.execute("echo three | jdisplay --update --id progress")
    assert [m["msg_type"] for m in r.messages] == ["update_display_data"]


@pytest.mark.timeout(60)
def test_lookalike_frames_are_text(kernel: Kernel) -> None:
    r = kernel.execute("echo hi | jdisplay --html > /tmp/lxck-frame.txt; echo saved")
    assert not r.of_type("display_data") and r.stream() == "saved\n"
    r = kernel.execute("cat /tmp/lxck-frame.txt")  # an earlier cell's frame: wrong token now
    assert not r.of_type("display_data")
    assert "<<lxck-display:" in r.stream() and "BEGIN text/html" in r.stream()
    old = "0123456789abcdef01234567"
    fake = f"<<lxck-display:{old}:BEGIN text/html b64 - 0>>\\naGk=\\n<<lxck-display:{old}:END>>"
    r = kernel.execute(f"printf '{fake}\\n'")
    assert not r.of_type("display_data") and "BEGIN text/html" in r.stream()


# -- output budget ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_output_budget_keeps_head_and_tail_and_saves_the_rest(kernel: Kernel) -> None:
    r = kernel.execute("%output 100k\nseq 1 200000", timeout=60)
    assert r.status == "ok"
    out = r.stream()
    assert out.startswith("output budget: 100.0 kB per cell\n1\n2\n3\n")
    assert out.endswith("199999\n200000\n")
    assert len(out) < 150_000
    notice = r.stream("stderr")
    assert "left out" in notice
    path = notice.split("saved on the kernel's host in ")[1].split()[0].rstrip(".")
    with open(path) as fh:
        saved = fh.read()
    assert saved == "".join(f"{i}\n" for i in range(1, 200001))
    kernel.execute("%output 1M")


@pytest.mark.timeout(120)
def test_interrupt_during_a_flood_and_memory_stays_bounded(kernel: Kernel) -> None:
    import threading

    from conftest import descendants  # noqa: F401  (kernel pid tree helper; not needed here)

    kc = kernel.kc
    msg_id = kc.execute("yes")
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with open(f"/proc/{kernel.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(3)
    start = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = _reply(kernel, msg_id, timeout=20)
    elapsed = time.monotonic() - start
    stop.set()
    t.join()
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert elapsed < 3
    assert peak[0] < 150_000, f"peak RSS {peak[0]} kB"
    r = kernel.execute("echo alive")
    assert r.stream() == "alive\n"


# -- the demo notebook ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kernel_name", ["lxck-test-sh", "lxck-test-bash"])
def test_rich_and_input_notebook_runs_in_batch(jupyter_path: str, kernel_name: str) -> None:
    """notebooks/rich_and_input.ipynb in nbclient (no stdin): every input cell falls back, rich output shows."""
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    path = Path(__file__).resolve().parent.parent / "notebooks" / "rich_and_input.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=60).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    kinds = {mime for o in outputs if o.output_type == "display_data" for mime in o.data}
    assert {"image/svg+xml", "image/png", "text/html", "text/markdown", "application/json"} <= kinds
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Hello, batch user!" in text and "proceeding" in text and "0 characters" in text
    assert "left out" in text and "100000\n" in text
    assert not [o for o in outputs if o.output_type == "error"]


@pytest.mark.timeout(60)
def test_ash_prompt_keeps_echo_off_with_stdin_allowed(kernel: Kernel) -> None:
    """Regression: echo left on at busybox ash's prompt made it query the cursor, 21 ms per line. The
    mechanism, not a timing: with stdin allowed, ash's terminal keeps ECHO off between cells."""
    for allow in (True, False):
        for _ in range(3):
            assert kernel.execute("true", allow_stdin=allow).status == "ok"
        r = kernel.execute("stty -a </dev/tty | tr ' ' '\\n' | grep -x -- '-\\{0,1\\}echo'", allow_stdin=allow)
        if kernel.kind == "sh":  # type: ignore[attr-defined]
            assert r.stream().strip() == "-echo", (allow, r.stream())
        else:  # bash turns echo on between cells (restore_echo) and never queries the cursor
            assert r.status == "ok"


