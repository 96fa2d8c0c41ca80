"""papermill with bash parameters, and `jupyter console` driven through a PTY, on both containers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import nbformat
import pexpect
import pytest
from conftest import BASH, SH, install_test_kernelspecs

SPECS = {"sh": "lxck-test-sh", "bash": "lxck-test-bash"}


def _notebook(path: str, cells: list[tuple[str, list[str]]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "lxc", "display_name": "LXC (bash)", "language": "bash"}
    nb.metadata["language_info"] = {"name": "bash"}
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, path)


def _papermill(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JUPYTER_PATH=install_test_kernelspecs())
    return subprocess.run(
        [sys.executable, "-m", "papermill", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_papermill_parameters_set_shell_variables(tmp_path: os.PathLike, kind: str) -> None:
    src, out = os.path.join(tmp_path, "in.ipynb"), os.path.join(tmp_path, "out.ipynb")
    _notebook(src, [("name=world\ncount=1", ["parameters"]), ('echo "hello $name x$count"', [])])
    proc = _papermill(src, out, "-k", SPECS[kind], "-p", "name", "it's lxc", "-p", "count", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected, "papermill's bash translator injected no cell"
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert text == "hello it's lxc x3\n"


@pytest.mark.timeout(180)
def test_papermill_failing_cell_fails_the_run(tmp_path: os.PathLike) -> None:
    src, out = os.path.join(tmp_path, "in.ipynb"), os.path.join(tmp_path, "out.ipynb")
    _notebook(src, [("echo before", []), ("echo failing; exit_code=3; (exit $exit_code)", []), ("echo never", [])])
    proc = _papermill(src, out, "-k", SPECS["bash"])
    assert proc.returncode != 0
    assert "exit status 3" in proc.stderr and '"In [2]"' in proc.stderr  # which cell, and its status
    nb = nbformat.read(out, as_version=4)
    assert not nb.cells[-1].outputs  # the run stopped at the failing cell


@pytest.mark.timeout(180)
def test_papermill_with_a_command_waiting_for_the_terminal_fails_fast(tmp_path: os.PathLike) -> None:
    src, out = os.path.join(tmp_path, "in.ipynb"), os.path.join(tmp_path, "out.ipynb")
    _notebook(src, [("sh -c 'printf \"Password: \" >/dev/tty; read p </dev/tty'", [])])
    start = time.monotonic()
    proc = _papermill(src, out, "-k", SPECS["sh"])
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "StdinNotAllowed" in proc.stderr and "Password:" in proc.stderr


# -- jupyter console through a PTY -------------------------------------------------------------------
# The full prompt_toolkit interface (--simple-prompt has no multi-line input): prompts are coloured,
# so the patterns allow escape sequences between their parts.

PROMPT = r"In \[(?:\x1b\[[0-9;]*m)*(\d+)(?:\x1b\[[0-9;]*m)*\]: "
MORE = r"\.\.\.: "


def _console(kind: str) -> pexpect.spawn:
    env = dict(os.environ, JUPYTER_PATH=install_test_kernelspecs(), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    child = pexpect.spawn(
        sys.executable, ["-m", "jupyter_console", "--kernel", SPECS[kind], "--no-confirm-exit"],
        env=env, encoding="utf-8", timeout=30, dimensions=(40, 200),
    )
    child.expect(PROMPT)
    return child


def _type(child: pexpect.spawn, line: str) -> None:
    child.send(line)
    time.sleep(0.2)  # let prompt_toolkit take the text before Enter
    child.send("\r")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sh", "bash"])
def test_console_multiline_interrupt_and_exit(kind: str) -> None:
    child = _console(kind)
    try:
        # is_complete says the `for` line is incomplete: the console asks for more lines.
        _type(child, "for i in 1 2; do")
        child.expect(MORE)
        _type(child, "echo item$i")
        child.expect(MORE)
        _type(child, "done")
        child.expect("item1\r?\nitem2")
        child.expect(PROMPT)
        # An unclosed quote continues too.
        _type(child, "echo 'a")
        child.expect(MORE)
        _type(child, "b'")
        child.expect("a\r?\nb\r?\n")
        child.expect(PROMPT)
        # ^C interrupts the running command; the shell and its variables survive.
        _type(child, "x=kept; sleep 30; echo not-printed")
        time.sleep(1.5)
        start = time.monotonic()
        child.sendintr()
        child.expect("KeyboardInterrupt")
        assert time.monotonic() - start < 5
        child.expect(PROMPT)
        _type(child, "echo x=$x")
        child.expect("x=kept")
        child.expect(PROMPT)
        assert "not-printed" not in child.before
        # Ctrl-D exits at once (--no-confirm-exit), shutting the kernel down.
        child.sendeof()
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)


@pytest.mark.timeout(90)
def test_console_answers_an_input_request() -> None:
    child = _console("bash")
    try:
        _type(child, 'read -p "Your name? " n; echo "hi $n"')
        child.expect("Your name\\? ")
        time.sleep(0.3)
        _type(child, "zoe")
        child.expect("hi zoe")
        child.expect(PROMPT)
        child.sendeof()
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)


def test_containers_are_the_test_ones() -> None:
    assert (SH, BASH) == ("lxck-test-sh", "lxck-test-bash") or os.environ.get("LXCK_TEST_SH")
