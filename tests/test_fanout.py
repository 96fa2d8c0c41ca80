"""Issue 11: `%%on` fan-out over many containers, one persistent shell per target.

The pure parts (parsing, targets, rendering, the cap) first; then real busybox and bash (hostfs)
containers, made and destroyed here (`lxck-t11-*`), through jupyter_client. No assertion is about
time: where a test must act while a cell runs, it waits for what the blocks show (`started`), and
targets that must finish wait for a file the test creates.
"""

from __future__ import annotations

import html
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SH, Kernel, Result, alive, descendants, start_kernel

from lxc_kernel import fanout, magics
from lxc_kernel.errors import ConfigError
from lxc_kernel.fanout import (
    BlockView,
    Fleet,
    InterleaveView,
    OnRequest,
    Status,
    Target,
    TargetResult,
    block_bundle,
    failure_message,
    prefix_lines,
    resolve_targets,
    summary_bundle,
)
from lxc_kernel.provision import provision

# -- pure ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("%%on web1 web2\nhostname\n", (["web1", "web2"], "hostname\n")),
        ("\n%%on 'web*' --parallel 2\necho a\necho b", (["web*", "--parallel", "2"], "echo a\necho b")),
        ("%%on web1", (["web1"], "")),
        ("%%one web1\nx", None),
        ("echo %%on web1", None),
        ("%on status", None),
    ],
)
def test_split_on_cell(code: str, expected: tuple[list[str], str] | None) -> None:
    assert magics.split_on_cell(code) == expected


def test_parse_on_takes_options_anywhere() -> None:
    request = magics.parse_on(["web1", "--parallel", "3", "db*", "--as", "student", "--continue", "--interleave",
                               "--timeout", "2.5"])
    assert request == OnRequest(("web1", "db*"), 3, 2.5, True, "student", True)
    assert magics.parse_on(["a"]) == OnRequest(("a",))


@pytest.mark.parametrize(
    "args", [[], ["a", "--parallel", "0"], ["a", "--parallel", "x"], ["a", "--timeout", "-1"], ["a", "--as", "no body"],
             ["a", "--bogus"]],
)
def test_parse_on_refuses_bad_arguments(args: list[str]) -> None:
    with pytest.raises(magics.UsageError):
        magics.parse_on(args)


def test_resolve_targets_globs_order_and_duplicates() -> None:
    listing = ["web2", "db1", "web10", "web1", "db2"]
    calls: list[int] = []

    def names() -> list[str]:
        calls.append(1)
        return listing

    assert resolve_targets(["db1", "web1"], names) == ["db1", "web1"]
    assert calls == [], "no glob, no container list"
    assert resolve_targets(["web*", "db1", "web1"], names) == ["web1", "web10", "web2", "db1"]
    assert resolve_targets(["db[12]", "we?1"], names) == ["db1", "db2", "web1"]
    assert len(calls) == 2, "the list is read once per cell"
    with pytest.raises(fanout.FanOutError, match="no container matches 'cache\\*'"):
        resolve_targets(["web1", "cache*"], names)
    with pytest.raises(ConfigError, match="remote"):
        resolve_targets(["host:web1"], names)
    with pytest.raises(ConfigError, match="invalid container name"):
        resolve_targets(["a;b"], names)


def test_prefix_lines_and_interleave_keep_partial_lines_until_their_end() -> None:
    assert prefix_lines("web1", "a\nb\n") == "web1 | a\nweb1 | b\n"
    out: list[tuple[str, str]] = []
    view = InterleaveView(lambda stream, text: out.append((stream, text)), lambda *_: None)
    a, b = Target(0, "a"), Target(1, "b")
    view.output(a, "stdout", "one\ntw")
    view.output(b, "stderr", "err\n")
    view.output(a, "stdout", "o\nthree")
    view.done(a)
    assert out == [("stdout", "a | one\n"), ("stderr", "b | err\n"), ("stdout", "a | two\n"), ("stdout", "a | three\n")]


def test_block_view_makes_one_display_per_target_in_order_and_completes_each() -> None:
    messages: list[tuple[str, dict[str, Any]]] = []
    view = BlockView(lambda *_: None, lambda kind, content: messages.append((kind, content)), "lxck-on-x")
    targets = [Target(0, "a"), Target(1, "b")]
    view.start(targets)
    assert [(k, c["transient"]["display_id"]) for k, c in messages] == [("display_data", "lxck-on-x-0"),
                                                                         ("display_data", "lxck-on-x-1")]
    view.output(targets[1], "stdout", "out <b>\n")
    view.output(targets[1], "stderr", "err & more\n")
    targets[1].result = TargetResult("b", Status.OK, 0, 0.01, 22)
    view.done(targets[1])
    kind, content = messages[-1]
    assert kind == "update_display_data" and content["transient"]["display_id"] == "lxck-on-x-1"
    assert content["data"]["text/plain"] == "── b: ok (exit 0, 10 ms)\nout <b>\nerr & more\n"
    page = content["data"]["text/html"]
    assert "out &lt;b&gt;" in page and '<span class="lxck-stderr"' in page and "err &amp; more" in page
    assert content["metadata"]["lxc_kernel"] == {"target": "b", "status": "ok", "exit_code": 0}


def test_a_running_block_shows_only_its_tail() -> None:
    target = Target(0, "a")
    target.chunks, target.size = [("stdout", "x" * 10_000)], 10_000
    target.result.status = Status.RUNNING
    live = block_bundle(target, live=True)["text/plain"]
    assert live.startswith("── a: running\n[... 6000 characters above")
    assert len(live) < 4200
    target.result = TargetResult("a", Status.OK, 0, 1.5, 10_000)
    assert block_bundle(target)["text/plain"] == "── a: ok (exit 0, 1.50 s)\n" + "x" * 10_000


def test_summary_table_and_failure_message() -> None:
    results = [TargetResult("web1", Status.OK, 0, 0.012, 14),
               TargetResult("web2", Status.FAILED, 3, 1.5, 0, "exit status 3"),
               TargetResult("web3", Status.ERROR, None, 0.2, 0, "container 'web3' is STOPPED")]
    bundle = summary_bundle(results)
    lines = bundle["text/plain"].splitlines()
    assert lines[0] == "3 targets: 1 ok, 1 failed (web2), 1 error (web3)"
    assert lines[1].split() == ["target", "status", "exit", "code", "duration", "bytes"]
    assert lines[2].split() == ["web1", "ok", "0", "12", "ms", "14"]
    assert lines[3].split() == ["web2", "failed", "3", "1.50", "s", "0"]
    assert lines[4].split() == ["web3", "error", "200", "ms", "0"]
    assert bundle["text/html"].count("<tr") == 4
    message = failure_message(results)
    assert message.startswith("2 of 3 targets failed - web2: exit status 3; web3: container 'web3' is STOPPED")
    assert "web1" not in message


def test_the_cap_counts_open_sessions_and_new_targets() -> None:
    fleet = Fleet()
    fleet.check_cap(["a", "b", "c"], 3)
    with pytest.raises(fanout.SessionCapReached, match=r"needs 4 new sessions .* over the cap of 3"):
        fleet.check_cap(["a", "b", "c", "d"], 3)


def test_completion_after_on() -> None:
    assert magics.arg_choices(["on"]) == (["status", "close", *magics.ON_FLAGS], True)
    choices, containers = magics.arg_choices(["on", "web1", "--parallel"])  # type: ignore[misc]
    assert (choices, containers) == ([], False)
    choices, containers = magics.arg_choices(["on", "web1", "--continue"])  # type: ignore[misc]
    assert "--continue" not in choices and "--interleave" in choices and containers
    assert magics.arg_choices(["on", "close"]) == ([], True)
    assert magics.arg_choices(["lxc", "start"]) is None


# -- real containers --------------------------------------------------------------------------------

pytestmark = pytest.mark.timeout(300)

BUSYBOX = [f"lxck-t11-c{i:02d}" for i in range(6)]
BASH = [f"lxck-t11-c{i:02d}" for i in range(6, 10)]
TEN = BUSYBOX + BASH


def _destroy(*names: str) -> None:
    for name in names:
        subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def ten(containers: dict[str, str]) -> Iterator[list[str]]:
    """Six busybox and four bash (hostfs) containers, destroyed at the end whatever happens."""
    try:
        for name in TEN:
            provision(name, "busybox" if name in BUSYBOX else "hostfs", start=True)
        yield TEN
    finally:
        _destroy(*TEN)


@pytest.fixture(scope="module")
def kernel(ten: list[str], containers: dict[str, str]) -> Iterator[Kernel]:
    k = start_kernel(containers["sh"])
    yield k
    k.shutdown()


def ensure_running(name: str) -> None:
    """Start ``name`` again if a test stopped it (so later tests find all ten running)."""
    state = subprocess.run(["lxc-info", "-s", "-H", "-n", name], capture_output=True, text=True).stdout.strip()
    if state != "RUNNING":
        subprocess.run(["lxc-start", "-n", name], check=True, timeout=60)
        subprocess.run(["lxc-wait", "-n", name, "-s", "RUNNING", "-t", "30"], check=True, timeout=60)


class Cell:
    """A cell sent without waiting, whose messages the test reads as they come."""

    def __init__(self, kernel: Kernel, code: str) -> None:
        self.kc = kernel.kc
        self.msg_id = self.kc.execute(code)
        self.messages: list[dict[str, Any]] = []
        self.idle = False

    def _read(self, timeout: float) -> None:
        msg = self.kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        if msg["msg_type"] == "status":
            self.idle = msg["content"]["execution_state"] == "idle"
        elif msg["msg_type"] != "execute_input":
            self.messages.append(msg)

    def until(self, predicate: Callable[[Cell], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout  # a hang guard, not an assertion about time
        while not predicate(self):
            assert not self.idle, "the cell ended before the awaited output"
            assert time.monotonic() < deadline, "the awaited output did not come"
            self._read(timeout)

    def finish(self, timeout: float = 120) -> Result:
        while not self.idle:
            self._read(timeout)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != self.msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return Result(reply, self.messages)

    def blocks(self) -> dict[str, dict[str, Any]]:
        return blocks(self.messages)

    def started(self, names: list[str], count: int | None = None) -> bool:
        """``count`` (default: all) of ``names`` show ``started`` in their blocks."""
        got = self.blocks()
        shown = sum("started" in got[n]["data"]["text/plain"] for n in names if n in got)
        return shown == (len(names) if count is None else count)


def blocks(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target's block as last drawn (target name -> display content), in the order they were made."""
    by_id: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m["msg_type"] in ("display_data", "update_display_data"):
            display_id = m["content"].get("transient", {}).get("display_id")
            if display_id and display_id.startswith("lxck-on-"):
                by_id[display_id] = m["content"]
    return {c["metadata"]["lxc_kernel"]["target"]: c for c in by_id.values()}


def streams_of(block: dict[str, Any]) -> tuple[str, str, str]:
    """(header, stdout, stderr) of a block, from its HTML, where stderr is marked."""
    page = block["data"]["text/html"]
    header = html.unescape(re.search(r'<div style="font-weight: bold[^>]*>(.*?)</div>', page).group(1))  # type: ignore[union-attr]
    pre = re.search(r"<pre[^>]*>(.*)</pre>", page, re.S)
    body = pre.group(1) if pre else ""
    span = re.compile(r'<span class="lxck-stderr"[^>]*>(.*?)</span>', re.S)
    stderr = "".join(html.unescape(t) for t in span.findall(body))
    return header, html.unescape(span.sub("", body)), stderr


def summary(r: Result) -> list[list[str]]:
    tables = [m["content"]["data"]["text/plain"] for m in r.of_type("display_data")
              if "transient" not in m["content"] or not m["content"]["transient"]]
    tables = [t for t in tables if "target" in t and "status" in t]
    assert tables, "no summary table"
    return [line.split() for line in tables[-1].splitlines()[2:]]


def on(names: list[str]) -> str:
    return "%%on " + " ".join(names)


def test_ten_containers_each_block_checked(kernel: Kernel, ten: list[str]) -> None:
    body = ('echo "host=$(hostname)"; echo "shell=${BASH_VERSION:+bash}"; i=0;'
            ' while [ $i -lt 3 ]; do echo "line $i"; i=$((i+1)); done; echo "err $(hostname)" >&2')
    r = kernel.execute(f"{on(ten)}\n{body}", timeout=120)
    assert r.status == "ok", r.reply["content"]
    made = [m["content"]["metadata"]["lxc_kernel"]["target"] for m in r.of_type("display_data")
            if m["content"].get("transient", {}).get("display_id", "").startswith("lxck-on-")]
    assert made == ten, "one block per target, made in target order"
    got = blocks(r.messages)
    assert list(got) == ten
    for name in ten:
        header, out, err = streams_of(got[name])
        shell = "bash" if name in BASH else ""
        assert header.startswith(f"── {name}: ok (exit 0, "), header
        assert out == f"host={name}\nshell={shell}\nline 0\nline 1\nline 2\n", name
        assert err == f"err {name}\n", name
        assert sorted(got[name]["data"]["text/plain"].splitlines()[1:]) == sorted((out + err).splitlines())
    rows = summary(r)
    assert [row[0] for row in rows] == ten
    for row, name in zip(rows, ten, strict=True):
        shell = "bash" if name in BASH else ""
        printed = len(f"host={name}\nshell={shell}\nline 0\nline 1\nline 2\nerr {name}\n")
        assert row[1:3] == ["ok", "0"] and row[-1] == str(printed), row
    assert not r.stream("stdout") and not r.errors


def test_state_is_kept_per_target_and_plain_cells_keep_their_shell(kernel: Kernel, ten: list[str]) -> None:
    pair = [ten[0], ten[7]]  # busybox ash and bash
    assert kernel.execute(f'{on(pair)}\nx="was $(hostname)"; cd /tmp; f() {{ echo "f:$1"; }}').status == "ok"
    r = kernel.execute(f'{on(pair)}\necho "$x"; pwd; f 1')
    assert r.status == "ok"
    for name, block in blocks(r.messages).items():
        assert streams_of(block)[1] == f"was {name}\n/tmp\nf:1\n"
    plain = kernel.execute('echo "${x:-unset}"; pwd; hostname')
    assert plain.stream() == f"unset\n/root\n{SH}\n"
    status = kernel.execute("%on status")
    table = status.of_type("display_data")[0]["content"]["data"]["text/plain"]
    for name in pair:
        row = next(line.split() for line in table.splitlines() if name in line)
        assert row[1:3] == ["root", "idle"] and int(row[-4]) >= 2


def test_one_failing_target_fails_the_cell_and_is_named(kernel: Kernel, ten: list[str]) -> None:
    three = ten[1:4]
    code = f'{on(three)}\necho before; [ "$(hostname)" != {ten[2]} ]'
    r = kernel.execute(code)
    assert r.status == "error" and r.reply["content"]["ename"] == "FanOutFailed"
    evalue = r.reply["content"]["evalue"]
    assert f"{ten[2]}: exit status 1" in evalue and ten[1] not in evalue and ten[3] not in evalue
    assert len(r.errors) == 1
    got = blocks(r.messages)
    assert streams_of(got[ten[2]])[0].startswith(f"── {ten[2]}: failed (exit 1,")
    assert all(streams_of(got[n])[1] == "before\n" for n in three)
    kept = kernel.execute(code.replace("%%on ", "%%on --continue "))
    assert kept.status == "ok" and not kept.errors
    assert [row[:3] for row in summary(kept)] == [[ten[1], "ok", "0"], [ten[2], "failed", "1"], [ten[3], "ok", "0"]]


def test_a_target_stopped_mid_cell_fails_alone(kernel: Kernel, ten: list[str]) -> None:
    three = [ten[3], ten[4], ten[8]]
    victim = ten[4]
    for name in three:
        subprocess.run(["lxc-attach", "-n", name, "--", "rm", "-f", "/tmp/go"], check=True)
    cell = Cell(kernel, f"{on(three)}\necho started; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo finished")
    try:
        cell.until(lambda c: c.started(three))
        subprocess.run(["lxc-stop", "-k", "-n", victim], check=True, timeout=60)
        for name in (ten[3], ten[8]):
            subprocess.run(["lxc-attach", "-n", name, "--", "touch", "/tmp/go"], check=True)
        r = cell.finish()
        assert r.status == "error" and r.reply["content"]["ename"] == "FanOutFailed"
        evalue = r.reply["content"]["evalue"]
        assert f"{victim}:" in evalue and "stopped" in evalue.lower()
        assert ten[3] not in evalue and ten[8] not in evalue
        got = blocks(r.messages)
        for name in (ten[3], ten[8]):
            assert streams_of(got[name])[1] == "started\nfinished\n"
        assert streams_of(got[victim])[0].startswith(f"── {victim}: gone")
        assert [row[1] for row in summary(r)] == ["ok", "gone", "ok"]
        # The next cell on it opens a fresh shell once it runs again; the others kept theirs.
        ensure_running(victim)
        again = kernel.execute(f"{on(three)}\necho again; rm -f /tmp/go")
        assert again.status == "ok", again.reply["content"]
    finally:
        ensure_running(victim)


def test_a_frozen_target_fails_alone_and_the_cell_ends(kernel: Kernel, ten: list[str]) -> None:
    pair, victim = [ten[5], ten[9]], ten[5]
    subprocess.run(["lxc-attach", "-n", ten[9], "--", "rm", "-f", "/tmp/go"], check=True)
    cell = Cell(kernel, f"{on(pair)}\necho started; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo finished")
    try:
        cell.until(lambda c: c.started(pair))
        subprocess.run(["lxc-freeze", "-n", victim], check=True, timeout=60)
        subprocess.run(["lxc-attach", "-n", ten[9], "--", "touch", "/tmp/go"], check=True)
        r = cell.finish()
        assert r.status == "error" and f"{victim}: container '{victim}' is FROZEN" in r.reply["content"]["evalue"]
        assert [row[1] for row in summary(r)] == ["gone", "ok"]
        assert streams_of(blocks(r.messages)[ten[9]])[1] == "started\nfinished\n"
    finally:
        subprocess.run(["lxc-unfreeze", "-n", victim], timeout=60)
        subprocess.run(["lxc-attach", "-n", ten[9], "--", "rm", "-f", "/tmp/go"])
    assert kernel.execute(f"{on(pair)}\ntrue").status == "ok"


def test_sessions_of_containers_that_went_away_are_closed_with_a_note(kernel: Kernel, ten: list[str]) -> None:
    extra = ["lxck-t11-gone", "lxck-t11-halt"]
    try:
        for name in extra:
            provision(name, "busybox", start=True)
        assert kernel.execute(f"{on(extra)}\ntrue").status == "ok"
        _destroy(extra[0])
        subprocess.run(["lxc-stop", "-k", "-n", extra[1]], check=True, timeout=60)
        r = kernel.execute("%%on 'lxck-t11-[cgh]*' --continue\nhostname")
        assert r.status == "ok"
        assert f"{extra[0]}: the container is gone, so its %%on session was closed" in r.stream("stderr")
        got = blocks(r.messages)
        assert extra[0] not in got
        header, _, err = streams_of(got[extra[1]])
        assert header.split()[2] in ("error", "gone"), header
        assert "stopped" in err.lower()
        assert all(streams_of(got[name])[1] == f"{name}\n" for name in ten)
        table = kernel.execute("%on status").of_type("display_data")[0]["content"]["data"]["text/plain"]
        assert extra[0] not in table and extra[1] not in table
    finally:
        _destroy(*extra)


def test_interrupt_stops_every_target_and_their_shells_stay(kernel: Kernel, ten: list[str]) -> None:
    cell = Cell(kernel, f"{on(ten)}\nmark=kept; echo started; sleep 60; echo not-reached")
    cell.until(lambda c: c.started(ten))
    kernel.km.interrupt_kernel()
    r = cell.finish()
    assert r.status == "error" and r.reply["content"]["ename"] == "KeyboardInterrupt"
    got = blocks(r.messages)
    assert all(streams_of(b)[0].startswith(f"── {n}: interrupted") for n, b in got.items())
    # The shell ends the line ^C interrupted, as in a plain cell; no ^C or resync line is echoed.
    assert all(streams_of(b)[1] in ("started\n", "started\n\n") and not streams_of(b)[2] for b in got.values())
    after = kernel.execute(f"{on(ten)}\necho $mark")
    assert after.status == "ok"
    assert all(streams_of(b)[1] == "kept\n" for b in blocks(after.messages).values())


def test_interrupt_skips_targets_not_started(kernel: Kernel, ten: list[str]) -> None:
    four = ten[:4]
    cell = Cell(kernel, f"%%on --parallel 2 {' '.join(four)}\necho started; sleep 60")
    cell.until(lambda c: c.started(four, 2))
    kernel.km.interrupt_kernel()
    r = cell.finish()
    assert r.reply["content"]["ename"] == "KeyboardInterrupt"
    assert [row[1] for row in summary(r)] == ["interrupted", "interrupted", "skipped", "skipped"]


def test_globs_and_interleave(kernel: Kernel, ten: list[str]) -> None:
    r = kernel.execute(f"%%on 'lxck-t11-c0[0-2]' {ten[1]}\nhostname")
    assert r.status == "ok" and list(blocks(r.messages)) == ten[:3]
    none = kernel.execute("%%on lxck-t11-nothing*\ntrue")
    assert none.status == "error" and "no container matches 'lxck-t11-nothing*'" in none.reply["content"]["evalue"]
    assert not none.of_type("display_data"), "nothing ran"
    mixed = kernel.execute("%%on lxck-t11-c0[89] --interleave\necho hi; echo oops >&2; printf partial")
    assert mixed.status == "ok"
    out, err = mixed.stream("stdout"), mixed.stream("stderr")
    for name in ten[8:]:
        assert f"{name} | hi\n" in out and f"{name} | partial\n" in out and f"{name} | oops\n" in err
    assert "oops" not in out and "hi" not in err
    assert not [m for m in mixed.messages if m["msg_type"] == "update_display_data"]


def test_as_user_resolves_in_each_container(kernel: Kernel, ten: list[str]) -> None:
    targets = [ten[6], ten[0]]  # hostfs has `student`; busybox has only root
    r = kernel.execute(f"%%on --as student {' '.join(targets)}\nid -un; echo $HOME")
    assert r.status == "error"
    got = blocks(r.messages)
    assert streams_of(got[ten[6]])[1] == "student\n/home/student\n"
    assert streams_of(got[ten[0]])[0].startswith(f"── {ten[0]}: error")
    assert "no user 'student'" in r.reply["content"]["evalue"] and ten[6] not in r.reply["content"]["evalue"]
    back = kernel.execute(f"%%on {ten[6]}\nid -un")
    _, out, err = streams_of(blocks(back.messages)[ten[6]])
    assert out == "root\n" and "a fresh shell was opened" in err


def test_output_budget_and_timeout_apply_per_target(kernel: Kernel, ten: list[str]) -> None:
    assert kernel.execute("%output 2k").status == "ok"
    try:
        r = kernel.execute(f"{on([ten[0], ten[6]])}\nseq 1 3000")
        assert r.status == "ok"
        whole = "".join(f"{i}\n" for i in range(1, 3001))
        saved = []
        for block in blocks(r.messages).values():
            text = block["data"]["text/plain"]
            assert "output over" in text and text.endswith("2999\n3000\n") and len(text) < 4000
            saved.append(re.search(r"on the kernel's host in (/\S+?\.txt)", text).group(1))  # type: ignore[union-attr]
        assert len(set(saved)) == 2, "each target spills into its own file"
        for path in saved:
            with open(path) as fh:
                assert fh.read() == whole
        printed = len(whole)
        assert [row[-1] for row in summary(r)] == [str(printed), str(printed)]
    finally:
        kernel.execute("%output 1M")
    slow = kernel.execute(f'%%on --timeout 1 {ten[0]} {ten[1]}\n[ "$(hostname)" = {ten[0]} ] && sleep 30; echo done')
    assert slow.status == "error"
    assert f"{ten[0]}: ran longer than 1 s" in slow.reply["content"]["evalue"]
    assert [row[1] for row in summary(slow)] == ["timeout", "ok"]


def test_the_session_cap(ten: list[str], containers: dict[str, str]) -> None:
    k = start_kernel(containers["sh"], "--LXCKernel.max_fanout_sessions=3")
    try:
        assert k.execute(f"{on(ten[:3])}\ntrue").status == "ok"
        r = k.execute(f"{on([ten[3]])}\ntrue")
        assert r.status == "error" and r.reply["content"]["ename"] == "SessionCapReached"
        evalue = r.reply["content"]["evalue"]
        assert "over the cap of 3" in evalue and all(name in evalue for name in ten[:3]) and "Nothing ran" in evalue
        assert not r.of_type("display_data")
        closed = k.execute(f"%on close {ten[0]}")
        assert closed.stream() == f"closed 1 %%on session: {ten[0]}\n"
        assert k.execute(f"{on([ten[3]])}\ntrue").status == "ok"
        assert k.execute(f"{on(ten[:5])}\ntrue").reply["content"]["ename"] == "SessionCapReached"
        assert k.execute("%on close").stream().startswith("closed 3 %%on sessions")
    finally:
        k.shutdown()


def test_magics_policy_refuses_on(ten: list[str], containers: dict[str, str]) -> None:
    k = start_kernel(containers["sh"], "--LXCKernel.magics=safe")
    try:
        r = k.execute(f"{on([ten[0]])}\ntrue")
        assert r.status == "error" and r.reply["content"]["ename"] == "MagicRefused"
        assert not r.of_type("display_data")
    finally:
        k.shutdown()


def _pids_after(k: Kernel, action: Callable[[], None]) -> list[int]:
    """The kernel's descendant PIDs (lxc-attach, shells, their commands), then ``action``; those still alive."""
    pids = descendants(k.pid)
    assert len(pids) >= 20, pids  # ten targets: an lxc-attach and a shell each, plus the stderr readers
    action()
    deadline = time.monotonic() + 30  # a hang guard: processes are reaped asynchronously
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_shutdown_while_a_cell_runs_leaves_no_process(ten: list[str], containers: dict[str, str]) -> None:
    k = start_kernel(containers["sh"])
    try:
        cell = Cell(k, f"{on(ten)}\necho started; sleep 100")
        cell.until(lambda c: c.started(ten))
        left = _pids_after(k, k.shutdown)
        assert left == [], left
    finally:
        if k.km.is_alive():
            k.shutdown()


def test_restart_leaves_no_process(ten: list[str], containers: dict[str, str]) -> None:
    k = start_kernel(containers["sh"])
    try:
        assert k.execute(f"{on(ten)}\nsleep 100 >/dev/null 2>&1 & true").status == "ok"
        left = _pids_after(k, lambda: k.km.restart_kernel(now=False))
        assert left == [], left
        k.kc.wait_for_ready(timeout=30)
        assert k.execute(f"{on(ten[:2])}\necho fresh").status == "ok"
    finally:
        k.shutdown()


def test_the_fleet_notebook_runs(jupyter_path: str) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "fleet.ipynb", as_version=4)
    try:
        NotebookClient(nb, kernel_name="lxck-test-sh", timeout=120).execute()
    finally:
        _destroy("lxck-t11-web1", "lxck-t11-web2", "lxck-t11-web3", "lxck-t11-db1")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert [e.ename for e in errors] == ["FanOutFailed"]  # the cell tagged raises-exception
    plain = [o.data["text/plain"] for c in nb.cells for o in c.get("outputs", []) if o.output_type == "display_data"]
    assert any("lxck-t11-db1: bash Linux" in text for text in plain)
    assert any("site=lxck-t11-web2\n<h1>lxck-t11-web2</h1>" in text for text in plain)
    assert any("uid=1000(student)" in text for text in plain)
