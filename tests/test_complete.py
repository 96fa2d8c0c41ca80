"""Pure unit tests: the word at the cursor, candidate parsing, the is_complete classifier."""

from __future__ import annotations

import pytest

from lxc_kernel.assist import inspect_word
from lxc_kernel.complete import (
    Completeness,
    Kind,
    classify,
    complete_names,
    escape,
    is_complete,
    magic_arg_choices,
    parse_candidates,
    word_at,
)


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        ("ec", "ec", Kind.COMMAND),
        ("ls /et", "/et", Kind.FILE),
        ("cat fo", "fo", Kind.FILE),
        ("echo $HO", "$HO", Kind.VARIABLE),
        ("echo ${HO", "${HO", Kind.VARIABLE),
        ('echo "$HO', "$HO", Kind.VARIABLE),
        ("x=$HO", "$HO", Kind.VARIABLE),
        ("cd /tmp; gr", "gr", Kind.COMMAND),
        ("ls | so", "so", Kind.COMMAND),
        ("if true; then ec", "ec", Kind.COMMAND),
        ("FOO=1 gr", "gr", Kind.COMMAND),
        ("echo $(ec", "ec", Kind.COMMAND),
        ("./scr", "./scr", Kind.FILE),
        ("cat my\\ fi", "my\\ fi", Kind.FILE),
        ("%lx", "%lx", Kind.MAGIC),
        ("%lxc sta", "sta", Kind.MAGIC_ARG),
        ("echo hi\nls /u", "/u", Kind.FILE),
    ],
)
def test_word_at(code: str, text: str, kind: Kind) -> None:
    word = word_at(code, len(code))
    assert (word.text, word.kind) == (text, kind)
    assert code[word.start : word.end] == text


def test_cursor_in_the_middle_completes_the_part_before_it() -> None:
    word = word_at("ls /etc/pas other", 11)
    assert (word.text, word.start, word.end) == ("/etc/pas", 3, 11)


def test_unicode_cursor_counts_code_points() -> None:
    code = "echo 'é' ; ec"
    word = word_at(code, len(code))
    assert (word.start, word.text) == (len(code) - 2, "ec")


def test_variables_bash_and_ash() -> None:
    word = word_at("echo $HO", 8)
    assert parse_candidates(word, "HOME\nHOSTNAME\n", bash=True) == ["$HOME", "$HOSTNAME"]
    ash_set = "HOME='/root'\nHOSTNAME='c1'\nPATH='/bin'\nMULTI='a\nHOX b'\n__lxck_x=''\n"
    assert parse_candidates(word, ash_set, bash=False) == ["$HOME", "$HOSTNAME"]
    brace = word_at("echo ${HO", 9)
    assert parse_candidates(brace, "HOME\n", bash=True) == ["${HOME}"]


def test_commands_ash_adds_builtins_and_aliases() -> None:
    word = word_at("ec", 2)
    assert parse_candidates(word, "ecx='ls'\n", bash=False) == ["echo", "ecx"]
    assert parse_candidates(word, "echo\necho\necx\n", bash=True) == ["echo", "ecx"]


def test_files_are_escaped_and_directories_marked() -> None:
    word = word_at("ls a", 4)
    assert parse_candidates(word, "a file\nabc/\nb\n", bash=True) == ["a\\ file", "abc/"]
    assert escape("it's $x") == "it\\'s\\ \\$x"
    assert escape("~/a b") == "~/a\\ b"


def test_magic_names_and_arguments() -> None:
    assert complete_names(word_at("%lx", 3), ["lxc", "lsmagic", "help"]) == ["%lxc"]
    subs = {"lxc": ("start", "status", "stop", "list")}
    takes = {"lxc": {"start", "stop"}, "attach": set()}
    choices, containers = magic_arg_choices(word_at("%lxc sta", 8), subs, takes)
    assert complete_names(word_at("%lxc sta", 8), choices) == ["start", "status"]
    assert not containers
    choices, containers = magic_arg_choices(word_at("%lxc start lx", 13), subs, takes)
    assert containers and choices == []
    assert magic_arg_choices(word_at("%lxc list x", 11), subs, takes) == ([], False)


@pytest.mark.parametrize(
    ("code", "status", "indent"),
    [
        ("for i in 1 2; do", "incomplete", "    "),
        ("echo 'abc", "incomplete", ""),
        ('echo "abc', "incomplete", ""),
        ("cat <<EOF\nhi", "incomplete", ""),
        ("fi", "invalid", ""),
        ("done", "invalid", ""),
        ("echo hi", "complete", ""),
        ("echo hi \\", "incomplete", None),
        ("if true; then\n  echo x", "incomplete", "  "),
        ("f() {", "incomplete", "    "),
        ("echo $(ls", "incomplete", None),
        ("cat <<EOF\nhi\nEOF", "complete", ""),
        ("%lxc list", "complete", ""),
        ("%timeout 5\nfor x in a; do", "incomplete", "    "),
        ("", "complete", ""),
    ],
)
def test_is_complete_table(code: str, status: str, indent: str | None) -> None:
    verdict = is_complete(code)
    assert verdict.status == status
    if indent is not None:
        assert verdict.indent == indent


def test_classify_reads_bash_messages() -> None:
    assert classify("x", 2, "bash: line 1: syntax error near unexpected token `fi'") == Completeness("invalid")
    assert classify("x", 2, "bash: line 2: syntax error: unexpected end of file").status == "incomplete"
    assert classify("x", 0, "").status == "complete"


def test_is_complete_without_bash_is_unknown() -> None:
    assert is_complete("echo hi", bash="/nonexistent/bash").status == "unknown"


@pytest.mark.parametrize(
    ("code", "pos", "word"),
    [("ls -l", 1, "ls"), ("echo $HOME", 7, "$HOME"), ("%lxc start", 2, "%lxc"), ("ls?", 3, "ls")],
)
def test_inspect_word(code: str, pos: int, word: str) -> None:
    assert inspect_word(code, pos) == word
