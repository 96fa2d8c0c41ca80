"""Pure unit tests: the word at the cursor (readline's rules, checked against bash 5.2 with a real terminal),
what a completion function is called with, candidate parsing and quoting, the is_complete classifier."""

from __future__ import annotations

import re

import pytest

from lxc_kernel.assist import _helper_batches, inspect_word, is_program, shell_version
from lxc_kernel.complete import (
    ALIASES_BACK,
    BASH_HELPERS,
    Completeness,
    Kind,
    Match,
    argument_script,
    classify,
    complete_names,
    dequote,
    escape,
    function_names,
    is_complete,
    magic_arg_choices,
    parse_candidates,
    quote_name,
    word_at,
)
from lxc_kernel.protocol import Handshake, frame_query
from lxc_kernel.session import INLINE_LIMIT


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        ("ec", "ec", Kind.COMMAND),
        ("ls /et", "/et", Kind.ARGUMENT),
        ("cat fo", "fo", Kind.ARGUMENT),
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
        ("cat my\\ fi", "my\\ fi", Kind.ARGUMENT),
        ("%lx", "%lx", Kind.MAGIC),
        ("%lxc sta", "sta", Kind.MAGIC_ARG),
        ("echo hi\nls /u", "/u", Kind.ARGUMENT),
        ("FOO=/us", "/us", Kind.FILE),
        ("~ro", "~ro", Kind.USER),
        ("x=$(gre", "gre", Kind.COMMAND),
        ("ls 2>&1 | gr", "gr", Kind.COMMAND),
        ("{ ec", "ec", Kind.COMMAND),
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


def texts(matches: list[Match]) -> list[str]:
    return [m.text for m in matches]


@pytest.mark.parametrize(
    ("code", "pos", "words", "cword", "line", "point", "cur", "prev"),
    [
        # What bash 5.2 gave a `complete -F` function, pressing Tab in a terminal (pexpect, `declare -p`).
        ("tt --foo=", None, ("tt", "--foo", "="), 2, "tt --foo=", 9, "", "--foo"),
        ("tt --foo=ba", None, ("tt", "--foo", "=", "ba"), 3, "tt --foo=ba", 11, "ba", "="),
        ("tt host:/pa", None, ("tt", "host", ":", "/pa"), 3, "tt host:/pa", 11, "/pa", ":"),
        ("tt 'my fi", None, ("tt", "'my fi"), 1, "tt 'my fi", 9, "my fi", "tt"),
        ('tt "my fi', None, ("tt", '"my fi'), 1, 'tt "my fi', 9, "my fi", "tt"),
        ("tt my\\ fi", None, ("tt", "my\\ fi"), 1, "tt my\\ fi", 9, "my\\ fi", "tt"),
        ("tt a b ", None, ("tt", "a", "b", ""), 3, "tt a b ", 7, "", "b"),
        ("ls; tt x y", None, ("tt", "x", "y"), 2, "tt x y", 6, "y", "x"),
        ("tt a::b", None, ("tt", "a", "::", "b"), 3, "tt a::b", 7, "b", "::"),
        ("tt x >fi", None, ("tt", "x", ">", "fi"), 3, "tt x >fi", 8, "fi", ">"),
        ("FOO=1 tt x", None, ("tt", "x"), 1, "tt x", 4, "x", "tt"),
        ("tt 'a b'c", None, ("tt", "'a b'c"), 1, "tt 'a b'c", 9, "'a b'c", "tt"),
        ("tt ab cd; ls -l", 5, ("tt", "ab", "cd"), 1, "tt ab cd", 5, "ab", "tt"),
        ("tt ab cd | wc", 5, ("tt", "ab", "cd"), 1, "tt ab cd ", 5, "ab", "tt"),
        ("tt ab=cd", 6, ("tt", "ab", "=", "cd"), 3, "tt ab=cd", 6, "", "="),
        # Better than bash 5.2, which looks up a spec for `if` or `time` here.
        ("if tt x", None, ("tt", "x"), 1, "tt x", 4, "x", "tt"),
    ],
)
def test_what_a_completion_function_gets(
    code: str, pos: int | None, words: tuple[str, ...], cword: int, line: str, point: int, cur: str, prev: str
) -> None:
    word = word_at(code, len(code) if pos is None else pos)
    assert word.kind is Kind.ARGUMENT and word.comp is not None
    c = word.comp
    assert (c.words, c.cword, c.line, c.point, c.cur, c.prev) == (words, cword, line, point, cur, prev)
    assert c.command == "tt"
    assert word.text == cur  # readline's word is what a match replaces


@pytest.mark.parametrize(
    ("code", "start", "prefix", "quote"),
    [
        ("ls --file=/et", 10, "/et", ""),  # after `=`
        ("dd if=/dev/nu", 6, "/dev/nu", ""),
        ("scp host:/pa", 9, "/pa", ""),  # after `:`
        ("cat my\\ fi", 4, "my fi", ""),  # an escaped blank is part of the word
        ("cat 'my fi", 5, "my fi", "'"),  # inside an open quote: after it
        ('cat "my \\$fi', 5, "my $fi", '"'),
        ("cat 'a b'c", 4, "a bc", ""),  # closed quotes stay in the word
        ("echo \"$HO", 6, "HO", '"'),
    ],
)
def test_cursor_start_like_readline(code: str, start: int, prefix: str, quote: str) -> None:
    word = word_at(code, len(code))
    assert (word.start, word.prefix, word.quote) == (start, prefix, quote)


def test_after_keyword_a_command_name_fits() -> None:
    assert word_at("sudo gi", 7).after_keyword
    assert not word_at("sudo git chec", 13).after_keyword
    assert not word_at("cat gi", 6).after_keyword


def test_dequote() -> None:
    assert dequote("a\\ b") == "a b"
    assert dequote("'a b'c") == "a bc"
    assert dequote('"a\\$b"') == "a$b"
    assert dequote("'x") == "x"


def test_variables_bash_and_ash() -> None:
    word = word_at("echo $HO", 8)
    assert parse_candidates(word, "HOME\nHOSTNAME\n", bash=True) == [
        Match("$HOME", "variable"), Match("$HOSTNAME", "variable")
    ]
    ash_set = "HOME='/root'\nHOSTNAME='c1'\nPATH='/bin'\nMULTI='a\nHOX b'\n__lxck_x=''\n"
    assert texts(parse_candidates(word, ash_set, bash=False)) == ["$HOME", "$HOSTNAME"]
    brace = word_at("echo ${HO", 9)
    assert texts(parse_candidates(brace, "HOME\n", bash=True)) == ["${HOME}"]


def test_commands_are_typed_and_functions_win() -> None:
    word = word_at("ec", 2)
    assert parse_candidates(word, "ecx='ls'\n", bash=False) == [Match("echo", "command"), Match("ecx", "command")]
    out = "uecfn\ncecho\ncecho\ncecfn\nu__lxck_pre\n"
    assert parse_candidates(word, out, bash=True) == [Match("ecfn", "function"), Match("echo", "command")]
    # ash cannot list functions: those the cell defines are offered.
    assert Match("ecfun", "function") in parse_candidates(word, "", bash=False, functions=["ecfun", "other"])


def test_first_word_falls_back_to_files() -> None:
    word = word_at("alp", 3)
    assert parse_candidates(word, "falpha.txt\ndalpine\n", bash=True) == [
        Match("alpha.txt", "file"), Match("alpine/", "directory")
    ]


def test_files_are_escaped_and_directories_marked() -> None:
    word = word_at("ls a", 4)
    assert texts(parse_candidates(word, "fa file\ndabc\nxfb\n", bash=True)) == ["a\\ file", "abc/", "b"]
    assert escape("it's $x") == "it\\'s\\ \\$x"
    assert escape("~/a b") == "~/a\\ b"
    assert escape("a:b=c") == "a\\:b\\=c"  # readline quotes COMP_WORDBREAKS characters in file names


def test_quoting_inside_an_open_quote() -> None:
    assert quote_name("it's", "'") == "it'\\''s'"
    assert quote_name('a "b" $c', '"') == 'a \\"b\\" \\$c"'
    assert quote_name("dir", "'", directory=True) == "dir/"  # not closed: the path goes on
    word = word_at("cat 'a f", 8)
    assert texts(parse_candidates(word, "fa file\n", bash=True)) == ["a file'"]


def test_programmable_output() -> None:
    word = word_at("git chec", 8)
    out = "noise from the function\nN0NCE\no nospace bashdefault default \nwcheckout \nwcherry-pick \n"
    assert parse_candidates(word, out, bash=True, nonce="N0NCE") == [
        Match("checkout", "command"), Match("cherry-pick", "command")
    ]
    assert parse_candidates(word, "wcheckout\n", bash=True, nonce="N0NCE") == []  # no nonce: the helper is gone
    # -o filenames: files quoted and typed; fallbacks of -o dirnames keep directories only.
    word = word_at("cd a", 4)
    out = "N0NCE\no filenames \nda dir\nfa file\n"
    assert parse_candidates(word, out, bash=True, nonce="N0NCE") == [
        Match("a\\ dir/", "directory"), Match("a\\ file", "file")
    ]
    out = "N0NCE\no dirnames \nxda dir\nxfa file\n"
    assert texts(parse_candidates(word, out, bash=True, nonce="N0NCE")) == ["a\\ dir/"]
    out = "N0NCE\no nosort \nwzz\nwaa\n"
    assert texts(parse_candidates(word, out, bash=True, nonce="N0NCE")) == ["zz", "aa"]


def test_function_names() -> None:
    code = "greet() { echo hi; }\nfunction bye { :; }\nx=1; two_words () { :; }"
    assert function_names(code) == ["bye", "greet", "two_words"]


def test_every_query_fits_one_line() -> None:
    """The helpers and a completion's query travel as one typed line (busybox keeps 1024 bytes)."""
    for batch in _helper_batches():
        assert len(frame_query(batch, "0" * 16)) <= INLINE_LIMIT
    defined = re.findall(r"(__lxck_\w+)\(\) \{", "".join(_helper_batches()))
    assert sorted(defined) == sorted(h.split("(")[0] for h in BASH_HELPERS)
    assert _helper_batches()[-1].endswith(ALIASES_BACK)
    word = word_at("git log --pretty=on", 19)
    assert len(frame_query(argument_script(word, "0" * 16), "0" * 16)) <= INLINE_LIMIT


def test_magic_names_and_arguments() -> None:
    assert complete_names(word_at("%lx", 3), ["lxc", "lsmagic", "help"]) == [Match("%lxc", "magic")]
    subs = {"lxc": ("start", "status", "stop", "list")}
    takes = {"lxc": {"start", "stop"}, "attach": set()}
    choices, containers = magic_arg_choices(word_at("%lxc sta", 8), subs, takes)
    assert texts(complete_names(word_at("%lxc sta", 8), choices)) == ["start", "status"]
    assert not containers
    choices, containers = magic_arg_choices(word_at("%lxc start lx", 13), subs, takes)
    assert containers and choices == []
    assert magic_arg_choices(word_at("%lxc list x", 11), subs, takes) == ([], False)


def test_shell_version_and_programs() -> None:
    assert shell_version(Handshake("5.2.15(1)-release", 1, "")) == "5.2.15"
    assert shell_version(Handshake("", 1, "")) == "sh"
    assert is_program("ls", "ls is /usr/bin/ls") and is_program("ls", "ls is hashed (/usr/bin/ls)")
    assert is_program("ls", "ls is ls")  # a busybox applet
    assert not is_program("cd", "cd is a shell builtin")
    assert not is_program("ls", "ls is aliased to `ls -l'")


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


def test_on_magic_completes_container_names_and_options() -> None:
    """`%%on web<Tab>` offers container names (the registry says they fit), `--p<Tab>` the option."""
    from lxc_kernel.assist import _on_arg_choices

    choices, containers = _on_arg_choices(word_at("%%on lxck-t", 11).magic) or ([], False)
    assert containers and "--parallel" in choices
    choices, _ = _on_arg_choices(word_at("%%on web1 --p", 13).magic) or ([], False)
    assert "--parallel" in choices
    assert _on_arg_choices(word_at("%lxc sta", 8).magic) is None
