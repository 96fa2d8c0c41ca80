"""The core kernel through jupyter_client, against real busybox (ash) and GNU bash containers."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time

import pytest
from conftest import Kernel, alive, cmdline, descendants, execute, start_kernel

pytestmark = pytest.mark.timeout(120)


def test_kernel_info_declares_bash(kernel: Kernel) -> None:
    kernel.kc.kernel_info()
    reply = kernel.kc.get_shell_msg(timeout=10)
    info = reply["content"]["language_info"]
    assert info["name"] == "bash"
    assert info["mimetype"] == "text/x-sh"
    assert info["file_extension"] == ".sh"
    assert info["codemirror_mode"] == "shell"


def test_bash_or_sh_as_expected(kernel: Kernel) -> None:
    r = kernel.execute('echo "${BASH_VERSION:-none}"')
    if kernel.kind == "bash":  # type: ignore[attr-defined]
        assert r.stream().startswith("5.")
    else:
        assert r.stream() == "none\n"


def test_state_persists_between_cells(kernel: Kernel) -> None:
    assert kernel.execute("x=5; f() { echo \"f$1\"; }; alias ll='echo aliased'; cd /tmp").status == "ok"
    r = kernel.execute("echo $x; f 1; ll; pwd")
    assert r.stream() == "5\nf1\naliased\n/tmp\n"
    kernel.execute("cd")


def test_exit_status_decides_the_reply(kernel: Kernel) -> None:
    ok = kernel.execute("true")
    assert ok.status == "ok" and not ok.errors
    bad = kernel.execute("echo before; false")
    assert bad.status == "error"
    assert len(bad.errors) == 1, "exactly one error message"
    assert "exit status 1" in bad.errors[0]["evalue"]
    assert bad.reply["content"]["ename"] == bad.errors[0]["ename"]
    assert bad.stream() == "before\n"
    r = kernel.execute("sh -c 'exit 42'")
    assert "exit status 42" in r.errors[0]["evalue"]


def test_output_is_exact(kernel: Kernel) -> None:
    assert kernel.execute("printf 'a\\nb'").stream() == "a\nb"
    assert kernel.execute("printf 'x\\r\\ny\\n'").stream() == "x\ny\n"
    assert kernel.execute("printf '10%%\\r100%%\\n'").stream() == "10%\r100%\n"
    assert kernel.execute("printf '\\342'; sleep 0.3; printf '\\202\\254\\n'").stream() == "€\n"
    assert kernel.execute("printf 'bad\\377byte\\n'").stream() == "bad\ufffdbyte\n"


def test_ansi_sequences_removed(kernel: Kernel) -> None:
    code = "printf '\\033[31mred\\033[0m \\033]0;title\\007\\033[2J\\033[?2004h\\033[1;1Hx\\033(B\\n'"
    assert kernel.execute(code).stream() == "red x\n"


def test_stderr_is_its_own_stream(kernel: Kernel) -> None:
    r = kernel.execute("echo out; echo err >&2; echo out2")
    assert r.stream("stdout") == "out\nout2\n"
    assert r.stream("stderr") == "err\n"


def test_unclosed_quote_and_if_without_fi_give_syntax_errors(kernel: Kernel) -> None:
    for code in ['echo "unclosed', "echo 'single", "if true; then echo x", "for i in 1 2; do"]:
        r = kernel.execute(code, timeout=10)
        assert r.status == "error", code
        assert "syntax" in r.stream("stderr").lower() or "unexpected" in r.stream("stderr").lower(), r.stream("stderr")
    assert kernel.execute("echo still in sync").stream() == "still in sync\n"


def test_read_and_cat_get_end_of_file(kernel: Kernel) -> None:
    # A frontend without stdin (nbconvert, papermill): commands get end-of-file. With stdin allowed
    # (jupyter_client's default) they would prompt instead: see test_frontends.py.
    r = kernel.execute('read x; echo "rc=$? x=[$x]"; cat; echo after', timeout=10, allow_stdin=False)
    assert r.stream() == "rc=1 x=[]\nafter\n"
    r = kernel.execute("read a\necho next line runs", timeout=10, allow_stdin=False)
    assert "next line runs" in r.stream()


def test_heredoc_tabs_backslashes_unicode(kernel: Kernel) -> None:
    code = "cat <<'EOF'\n\ttab \\ back\\\\slash $HOME 'q' \"dq\" % ! ünï €\nEOF\nprintf '%s\\n' \"a\tb\""
    assert kernel.execute(code).stream() == "\ttab \\ back\\\\slash $HOME 'q' \"dq\" % ! ünï €\na\tb\n"


@pytest.mark.parametrize("size", [5000, 210_000])
def test_long_lines_and_big_cells_are_byte_exact(kernel: Kernel, size: int) -> None:
    rng = random.Random(size)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 \t\\'\"$%!`ü€-_=+;&|<>(){}[]"
    lines, total = [], 0
    while total < size:
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6000)))
        lines.append(line)
        total += len(line.encode()) + 1
    body = "\n".join(lines) + "\n"
    code = f"cat <<'LXCK_END' | md5sum\n{body}LXCK_END"
    r = kernel.execute(code, timeout=60)
    assert r.status == "ok", r.stream("stderr")
    assert r.stream().split()[0] == hashlib.md5(body.encode()).hexdigest()


def test_output_streams_while_the_cell_runs(kernel: Kernel) -> None:
    start = time.monotonic()
    msg_id = kernel.kc.execute("printf abc; sleep 3; echo done")
    first = None
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=10)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and first is None:
            first = (time.monotonic() - start, msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    end = time.monotonic() - start
    kernel.kc.get_shell_msg(timeout=10)
    assert first is not None and first[1] == "abc"
    assert end - first[0] > 2.0, "the partial line must arrive long before the cell ends"


def test_output_is_coalesced(kernel: Kernel) -> None:
    r = kernel.execute("seq 1 100000", timeout=60)
    text = r.stream()
    assert text == "".join(f"{i}\n" for i in range(1, 100001))
    assert len(r.of_type("stream")) < 100


def test_colors_option_keeps_sgr(containers: dict[str, str]) -> None:
    k = start_kernel(containers["bash"], "--LXCKernel.colors=True")
    try:
        r = k.execute("printf '\\033[31mred\\033[0m\\033[2K\\n'")
        assert r.stream() == "\x1b[31mred\x1b[0m\n"
    finally:
        k.shutdown()


def test_merged_stderr_keeps_order(containers: dict[str, str]) -> None:
    k = start_kernel(containers["sh"], "--LXCKernel.stderr=merged")
    try:
        r = k.execute("echo 1; echo 2 >&2; echo 3; echo 4 >&2")
        assert r.stream("stdout") == "1\n2\n3\n4\n"
        assert r.stream("stderr") == ""
    finally:
        k.shutdown()


def test_marker_lookalikes_cannot_fake_the_end(kernel: Kernel) -> None:
    # Shapes of the real markers with other tokens, plus what could reveal framing.
    code = (
        "printf '<<lxck:0123456789abcdef:E0>>'; printf '<<lxck:0123456789abcdef:S>>\\n';"
        " env; set >/dev/null; echo survived"
    )
    r = kernel.execute(code)
    assert r.status == "ok"
    assert r.stream().startswith("<<lxck:0123456789abcdef:E0>><<lxck:0123456789abcdef:S>>\n")
    assert r.stream().endswith("survived\n")


def test_custom_prompts_xtrace_and_exit_trap_do_not_desync(kernel: Kernel) -> None:
    setup = "PS1='$ >> '; PS2='more> '; PROMPT_COMMAND='echo prompt-noise'; trap 'echo bye' EXIT; set -x"
    assert kernel.execute(setup).status == "ok"
    for i in range(3):
        r = kernel.execute(f"echo value{i}")
        assert r.status == "ok"
        assert r.stream() == f"value{i}\n"
        assert "+ echo value" in r.stream("stderr")
    assert kernel.execute("set +x; trap - EXIT; unset PROMPT_COMMAND").status == "ok"
    assert kernel.execute("echo clean").stream() == "clean\n"


def test_set_e_failure_ends_the_shell_and_the_next_cell_recovers(kernel: Kernel) -> None:
    kernel.execute("keep=1")
    r = kernel.execute("set -e; false; echo not reached", timeout=15)
    assert r.status == "error"
    assert "not reached" not in r.stream()
    assert "exited with 1" in r.errors[0]["evalue"]
    r = kernel.execute('echo "fresh[${keep:-}]"')
    assert r.stream() == "fresh[]\n"


def test_exit_n_reports_and_restarts(kernel: Kernel) -> None:
    kernel.execute("gone=1")
    r = kernel.execute("exit 7", timeout=15)
    assert r.status == "error" and len(r.errors) == 1
    assert "exited with 7" in r.errors[0]["evalue"] and "state" in r.errors[0]["evalue"]
    assert kernel.execute('echo "[${gone:-}]"').stream() == "[]\n"


def test_exit_with_a_background_job_holding_the_terminal(kernel: Kernel) -> None:
    r = kernel.execute("sleep 100 & exit 3", timeout=15)
    assert r.status == "error"
    assert r.elapsed < 10
    assert kernel.execute("echo back").stream() == "back\n"


def test_background_jobs_do_not_block(kernel: Kernel) -> None:
    r = kernel.execute("sleep 100 &", timeout=10)
    assert r.status == "ok" and r.elapsed < 5
    for i in range(3):
        assert kernel.execute(f"echo {i}").stream() == f"{i}\n"
    kernel.execute("kill %1 2>/dev/null; true")


def _interrupt_after(kernel: Kernel, code: str, delay: float = 0.5) -> tuple[dict, float, list]:
    msg_id = kernel.kc.execute(code)
    time.sleep(delay)
    start = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    took = time.monotonic() - start
    outputs = []
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=10)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        outputs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return reply, took, outputs


def test_interrupt_stops_the_command_and_keeps_the_shell(kernel: Kernel) -> None:
    kernel.execute("survivor=yes")
    reply, took, outputs = _interrupt_after(kernel, "sleep 100; echo after")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert took < 2.0
    texts = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert "after" not in texts
    assert sum(m["msg_type"] == "error" for m in outputs) == 1
    assert kernel.execute("echo $survivor").stream() == "yes\n"


def test_ten_interrupts_in_a_row(kernel: Kernel) -> None:
    for _ in range(10):
        reply, _, _ = _interrupt_after(kernel, "sleep 100", delay=0.1)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.execute("echo usable").stream() == "usable\n"


def test_interrupt_a_builtin_loop(kernel: Kernel) -> None:
    reply, _, _ = _interrupt_after(kernel, "while :; do :; done")
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.execute("echo ok").stream() == "ok\n"


def test_interrupt_with_message_mode(jupyter_path: str) -> None:
    k = Kernel("lxck-test-bash-msg")
    try:
        assert k.km.kernel_spec.interrupt_mode == "message"
        k.execute("v=1")
        reply, took, _ = _interrupt_after(k, "sleep 100; echo after")
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < 2.0
        assert k.execute("echo $v").stream() == "1\n"
    finally:
        k.shutdown()


def test_host_environment_never_enters(containers: dict[str, str]) -> None:
    import os

    env = dict(os.environ, LXCK_SECRET_TOKEN="s3cr3t-value", JPY_SESSION_NAME="nb.ipynb")
    k = start_kernel(containers["bash"], env=env)
    try:
        text = k.execute("env").stream()
        assert "s3cr3t-value" not in text
        assert "JPY_" not in text and "JUPYTER" not in text and "connection" not in text
        names = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
        assert {"PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG"} <= names
        assert k.execute('echo "$HOME $USER $LOGNAME $LANG"').stream() == "/root root root C.UTF-8\n"
        assert k.execute("pwd").stream() == "/root\n"
    finally:
        k.shutdown()


def _owned_processes(kernel_pid: int) -> list[int]:
    """lxc-attach processes the kernel spawned, and the shells they carry."""
    return [p for p in descendants(kernel_pid) if cmdline(p)]


def test_shutdown_and_restart_leave_no_processes(containers: dict[str, str]) -> None:
    k = start_kernel(containers["bash"])
    try:
        k.execute("sleep 300 & echo started")
        owned = _owned_processes(k.pid)
        attach = [p for p in owned if cmdline(p)[:1] and cmdline(p)[0].endswith("lxc-attach")]
        assert len(attach) >= 2, [cmdline(p) for p in owned]  # the shell's PTY and the stderr channel
        k.km.restart_kernel(now=False)
        k.kc.wait_for_ready(timeout=30)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in owned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in owned if alive(p)], "restart left processes behind"
        k.execute("echo after restart")
        owned = _owned_processes(k.pid)
        assert owned
    finally:
        k.shutdown()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in owned) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in owned if alive(p)], "shutdown left processes behind"


# -- the container going away ------------------------------------------------------------------


@pytest.fixture
def throwaway() -> str:
    from lxc_kernel.provision import destroy_container, ensure_container

    name = f"lxck-tmp-{random.randrange(16**6):06x}"
    ensure_container(name, "busybox")
    yield name
    destroy_container(name)


def _lxc(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


def test_container_stopped_during_a_cell(throwaway: str) -> None:
    k = start_kernel(throwaway)
    try:
        assert k.execute("echo up").stream() == "up\n"
        msg_id = k.kc.execute("sleep 60; echo after")
        time.sleep(0.5)
        stopper = threading.Thread(target=_lxc, args=("lxc-stop", "-k", "-n", throwaway))
        start = time.monotonic()
        stopper.start()
        reply = k.kc.get_shell_msg(timeout=10)
        took = time.monotonic() - start
        stopper.join()
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert throwaway in reply["content"]["evalue"] and "STOPPED" in reply["content"]["evalue"]
        assert took < 2.0
        r = k.execute("echo while stopped", timeout=10)
        assert r.status == "error" and "STOPPED" in r.errors[0]["evalue"] and "start" in r.errors[0]["evalue"]
        _lxc("lxc-start", "-d", "-n", throwaway)
        _lxc("lxc-wait", "-n", throwaway, "-s", "RUNNING", "-t", "10")
        assert k.execute("echo again", timeout=15).stream() == "again\n"
    finally:
        k.shutdown()


def test_frozen_container_gives_an_error_not_a_hang(throwaway: str) -> None:
    k = start_kernel(throwaway)
    try:
        assert k.execute("echo up").stream() == "up\n"
        _lxc("lxc-freeze", "-n", throwaway)
        try:
            r = k.execute("echo frozen?", timeout=15)
            assert r.status == "error"
            assert "FROZEN" in r.errors[0]["evalue"] and "unfreeze" in r.errors[0]["evalue"]
            assert r.elapsed < 5
            r = k.execute("echo fresh attach while frozen", timeout=15)
            assert r.status == "error" and "FROZEN" in r.errors[0]["evalue"]
        finally:
            _lxc("lxc-unfreeze", "-n", throwaway)
        assert k.execute("echo thawed", timeout=15).stream() == "thawed\n"
    finally:
        k.shutdown()


def test_missing_container_and_invalid_name() -> None:
    k = start_kernel("lxck-does-not-exist")
    try:
        r = k.execute("echo hi", timeout=15)
        assert r.status == "error" and "does not exist" in r.errors[0]["evalue"]
    finally:
        k.shutdown()
    k = start_kernel("bad;name")
    try:
        r = k.execute("echo hi", timeout=15)
        assert r.status == "error" and "invalid container name" in r.errors[0]["evalue"]
        assert execute(k.kc, "echo again", timeout=15).status == "error"
    finally:
        k.shutdown()


def test_lxc_not_installed(tmp_path: object) -> None:
    import os

    env = dict(os.environ, PATH=str(tmp_path))
    k = start_kernel("lxck-test-sh", env=env)
    try:
        r = k.execute("echo hi", timeout=15)
        assert r.status == "error"
        assert "LXC is not installed" in r.errors[0]["evalue"]
    finally:
        k.shutdown()


@pytest.mark.timeout(90)
def test_shutdown_exits_on_its_own(containers: dict[str, str]) -> None:
    """Regression: ipykernel 7's atexit order made half of all shutdowns wait for SIGTERM."""
    for _ in range(5):
        k = start_kernel(containers["bash"])
        k.execute("echo hi")
        proc = k.km.provisioner.process  # type: ignore[union-attr]
        k.shutdown()
        assert proc.wait(timeout=10) == 0, "the kernel had to be killed instead of exiting"


def test_stale_session_directories_are_swept(containers: dict[str, str]) -> None:
    """A shell that ended without cleaning up (exit, a killed kernel) leaves /tmp/.lxck.<pid>.*;
    the next session removes those whose shell is gone and keeps the live ones."""
    name = containers["bash"]
    stale = "/tmp/.lxck.999999.stale1"
    subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "mkdir", "-p", stale], check=True)
    first = start_kernel(name)
    try:
        live = first.execute('printf %s "${PATH##*:}"').stream().rsplit("/", 1)[0]
        assert live.startswith("/tmp/.lxck.")
        second = start_kernel(name)
        try:
            assert second.execute("echo up").stream() == "up\n"
            listing = second.execute("ls -d /tmp/.lxck.*").stream().split()
            assert stale not in listing and live in listing
        finally:
            second.shutdown()
    finally:
        first.shutdown()
