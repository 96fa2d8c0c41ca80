"""Pure tests of the framing and the incremental marker parser: no shell, no container."""

from __future__ import annotations

import re

import pytest

from lxc_kernel.protocol import (
    ERR_FD,
    MARK,
    CellParser,
    Handshake,
    ShellScript,
    ansi_c_quote,
    frame_cell,
    frame_query,
    frame_sync,
    new_token,
    printf_format,
)

TOKEN = "0123456789abcdef"
OLD = "fedcba9876543210"


def start(token: str = TOKEN) -> bytes:
    return f"<<lxck:{token}:S>>".encode()


def end(status: int, token: str = TOKEN) -> bytes:
    return f"<<lxck:{token}:E{status}>>".encode()


STREAM = (
    b"prompt$ " + end(0, OLD) + b"junk" + start()
    + b"out <<lxck: not a marker\n" + end(0, OLD) + b"<<lxck:" + TOKEN.encode() + b"x"[:0]
    + start() + b"tail" + end(130) + b"after"
)
EXPECTED = b"out <<lxck: not a marker\n" + end(0, OLD) + b"<<lxck:" + TOKEN.encode() + b"tail"


def feed_all(parser: CellParser, chunks: list[bytes]) -> bytes:
    return b"".join(parser.feed(c) for c in chunks)


def test_whole_stream() -> None:
    p = CellParser(TOKEN)
    # a prefix of our own marker followed by a repeated start marker is dropped cleanly
    stream = b"junk" + start() + b"hello" + start() + b" world" + end(130) + b"after"
    assert p.feed(stream) == b"hello world"
    assert p.status == 130


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 13, 64])
def test_split_at_every_offset(step: int) -> None:
    stream = b"pre" + end(0, OLD) + start() + b"a<<b" + end(0, OLD) + b"<<lxck:" + start() + b"c\n" + end(7) + b"x"
    for offset in range(step):
        p = CellParser(TOKEN)
        chunks = [stream[:offset]] + [stream[i : i + step] for i in range(offset, len(stream), step)]
        out = feed_all(p, chunks)
        assert p.status == 7
        assert out == b"a<<b" + end(0, OLD) + b"<<lxck:c\n", (step, offset)


def test_marker_split_at_every_offset_two_chunks() -> None:
    stream = start() + b"data" + end(42)
    for cut in range(len(stream) + 1):
        p = CellParser(TOKEN)
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == b"data"
        assert p.status == 42


def test_previous_cells_marker_is_output() -> None:
    p = CellParser(TOKEN)
    assert p.feed(start() + end(0, OLD) + start(OLD) + b"\n") == end(0, OLD) + start(OLD) + b"\n"
    assert not p.done


def test_malformed_status_with_our_token_fails_closed() -> None:
    p = CellParser(TOKEN)
    p.feed(start() + b"x<<lxck:" + TOKEN.encode() + b":Eabc>>")
    assert p.status == 255


def test_no_start_marker_discards_and_bounds_memory() -> None:
    p = CellParser(TOKEN)
    for _ in range(1000):
        assert p.feed(b"x" * 1000) == b""
    assert len(p._buf) < 64


def test_output_before_end_is_released_promptly() -> None:
    p = CellParser(TOKEN)
    assert p.feed(start() + b"abc") == b"abc"
    assert p.feed(b"def<") == b"def"  # only the possible marker prefix is held
    assert p.feed(b"x") == b"<x"


def test_tokens_are_fresh_and_long() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) == 16 for t in tokens)


def test_typed_line_never_contains_the_whole_token() -> None:
    token, err = new_token(), new_token()
    for line in (
        frame_cell("echo hi", token, err_token=err),
        frame_cell(None, token, err_token=err, script_path="/tmp/.lxck.42.abcd/cell"),
        frame_query("echo hi", token),
        frame_sync(token, err),
        ShellScript.probe(token),
        ShellScript.bootstrap(token),
    ):
        assert token.encode() not in line and err.encode() not in line
        assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_cells_get_stderr_write_only_and_never_fd_29() -> None:
    """The token-stealing fix: fd 2 is a write-only dup of the FIFO, and fd 29 itself is closed for the cell."""
    line = frame_cell("true", TOKEN, err_token=new_token())
    assert f" 2>&{ERR_FD} {ERR_FD}>&-".encode() in line and b"2<>" not in line
    assert f"{ERR_FD}>&-".encode() in frame_cell("true", TOKEN)  # merged stderr: fd 29 still closed
    assert f"{ERR_FD}>&-".encode() in frame_query("true", TOKEN)


def test_every_typed_word_is_alias_and_function_proof() -> None:
    line = frame_cell("true", TOKEN, err_token=new_token()).decode()
    assert "\\__lxck_pre" in line and "\\__lxck_post" in line
    assert "\\command \\eval" in line and "\\command \\printf" in line
    assert '"$?"' in line  # a cell's IFS cannot split the status


def test_printf_format_is_printable_ascii_and_round_trips() -> None:
    source = "echo 'q' \"d\" \\ % ! \t tab\nnew ü € \x01 end"
    fmt = printf_format(source)
    assert all(32 <= ord(ch) < 127 for ch in fmt)
    assert not set("'%!") & set(fmt.replace("\\047", "").replace("\\045", "").replace("\\041", ""))
    decoded = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fmt.encode())
    assert decoded == source.encode()


def test_frame_refuses_unsafe_paths() -> None:
    with pytest.raises(ValueError):
        frame_cell(None, TOKEN, script_path="/tmp/x'; rm -rf /")
    with pytest.raises(ValueError):
        frame_cell(None, TOKEN, script_path="/etc/passwd")


def test_stdin_modes() -> None:
    assert b" 0</dev/null" in frame_cell("true", TOKEN)
    assert b" 0</dev/tty" in frame_cell("true", TOKEN, stdin="tty")
    assert b"0<" not in frame_cell("true", TOKEN, stdin="inherit")


def test_end_marker_flags() -> None:
    p = CellParser(TOKEN)
    assert p.feed(MARK + TOKEN.encode() + b":S>>out" + MARK + TOKEN.encode() + b":E3:d") == b"out"
    assert p.status is None  # the flags may still be arriving
    p.feed(b"e>>")
    assert (p.status, p.flags) == (3, "de")


def test_handshake_parse() -> None:
    info = Handshake.parse(b"5.2.15(1)-release\n42\ntty\n/tmp/.lxck.42.AbC123\n")
    assert info == Handshake("5.2.15(1)-release", 42, "/tmp/.lxck.42.AbC123", True) and info.shell.startswith("bash")
    assert Handshake.parse(b"\n7\nnotty\n/tmp/.lxck.7.xyzw12\n").shell == "sh"
    assert Handshake.parse(b"\n7\ntty\n\n").session_dir == ""
    assert Handshake.parse(b"\n7\ntty ansi\n\n").ansi  # /tmp unusable: no session directory
    with pytest.raises(ValueError):
        Handshake.parse(b"\n7\ntty\n/tmp/../etc\n")


def test_ansi_c_quote_round_trips_and_refuses_nul() -> None:
    source = "echo 'q' \"d\" \\ % ! \t tab\nnew ü € \x01 end"
    quoted = ansi_c_quote(source)
    assert quoted is not None and quoted.startswith("$'") and quoted.endswith("'")
    assert all(32 <= ord(ch) < 127 for ch in quoted) and "!" not in quoted and "\\047" in quoted
    body = quoted[2:-1]
    assert re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), body.encode()) == source.encode()
    assert ansi_c_quote("a\0b") is None
    assert b"$(" not in frame_cell("true", TOKEN, ansi=True)
    assert b"$(" in frame_cell("a\0b", TOKEN, ansi=True)  # NUL: the printf path
