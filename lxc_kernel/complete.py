"""Pure: what to complete at the cursor, the shell text that lists candidates, and the is_complete classifier.

Completion runs in the live shell (so it sees the cell's variables, aliases, functions and working
directory), but everything here is text in, text out: :func:`word_at` finds the word and what kind of
thing it names, :func:`candidates_script` writes a short command for bash or busybox ash that prints
one candidate per line, and :func:`parse_candidates` turns that output into the reply's matches.
"""

from __future__ import annotations

import enum
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .protocol import sh_quote

MAX_MATCHES = 500

# Characters that end a shell word when scanning left from the cursor. '=' is one too, so
# `--file=/et` and `x=$HO` complete the part after it.
_DELIMS = frozenset(" \t\n;|&<>()`\"'=")
# Before these, the next word is a command name.
_COMMAND_PRECEDERS = ("&&", "||", ";", "|", "&", "(", "`", "$(", "{", "!")
_COMMAND_KEYWORDS = frozenset(
    {"do", "then", "else", "elif", "if", "while", "until", "time", "exec", "command", "sudo", "nohup",
     "env", "xargs", "builtin", "type", "which", "man", "timeout", "nice"}
)
# Characters a completed name needs backslash-escaped to stay one word.
_NEEDS_ESCAPE = re.compile(r"([ \t\\'\"$&;|<>()*?\[\]{}!#`~])")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENTS_RE = re.compile(r"(^|[;&|\n(])\s*([A-Za-z_][A-Za-z0-9_]*=\S*\s+)+$")
_SET_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)

# busybox ash builtins (ash has no compgen): `help` in ash lists them, but not in every build.
ASH_BUILTINS = (
    ". : [ [[ alias bg break cd chdir command continue echo eval exec exit export false fg getopts hash "
    "help history jobs kill let local printf pwd read readonly return set shift source test times trap "
    "true type ulimit umask unalias unset wait"
).split()


class Kind(enum.Enum):
    COMMAND = "command"
    FILE = "file"
    VARIABLE = "variable"
    MAGIC = "magic"  # the name of a %magic
    MAGIC_ARG = "magic_arg"  # an argument of a %magic


@dataclass(frozen=True)
class Word:
    """The word being completed: ``code[start:end]`` is replaced by a match."""

    text: str
    start: int
    end: int
    kind: Kind
    brace: bool = False  # ``${NAME`` rather than ``$NAME``
    magic: tuple[str, ...] = ()  # for MAGIC_ARG: the magic's name and the words before this one

    @property
    def prefix(self) -> str:
        """What the candidates must start with: no ``$``/``${``, backslash escapes removed."""
        if self.kind is Kind.VARIABLE:
            return self.text[2:] if self.brace else self.text[1:]
        if self.kind is Kind.MAGIC:
            return self.text.lstrip("%")
        return re.sub(r"\\(.)", r"\1", self.text)


def word_at(code: str, cursor: int) -> Word:
    """Find the word that ends at ``cursor`` and what kind of name it is."""
    cursor = max(0, min(cursor, len(code)))
    start = cursor
    while start > 0 and (code[start - 1] not in _DELIMS or _escaped(code, start - 1)):
        start -= 1
    text = code[start:cursor]
    line_start = code.rfind("\n", 0, start) + 1
    line_before = code[line_start:start]

    if line_before.strip() == "" and text.startswith("%"):
        return Word(text, start, cursor, Kind.MAGIC)
    if line_before.lstrip().startswith("%"):
        words = line_before.split()
        return Word(text, start, cursor, Kind.MAGIC_ARG, magic=(words[0].lstrip("%"), *words[1:]))

    dollar = text.rfind("$")
    if dollar >= 0 and not _escaped(text, dollar):
        rest = text[dollar + 1 :]
        brace = rest.startswith("{")
        name = rest[1:] if brace else rest
        if name == "" or _NAME_RE.fullmatch(name):
            return Word(text[dollar:], start + dollar, cursor, Kind.VARIABLE, brace=brace)

    if "/" not in text and _command_position(code[:start]):
        return Word(text, start, cursor, Kind.COMMAND)
    return Word(text, start, cursor, Kind.FILE)


def _escaped(text: str, index: int) -> bool:
    """Whether ``text[index]`` is preceded by an odd number of backslashes."""
    n = 0
    while index - n - 1 >= 0 and text[index - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _command_position(before: str) -> bool:
    stripped = before.rstrip(" \t")
    if stripped == "" or stripped.endswith("\n"):
        return True
    if stripped.endswith(_COMMAND_PRECEDERS):
        return True
    if stripped.split()[-1] in _COMMAND_KEYWORDS:
        return True
    # `FOO=bar cmd`: assignments before a command keep the command position.
    return bool(_ASSIGNMENTS_RE.search(before))


def candidates_script(word: Word, *, bash: bool) -> str | None:
    """Shell text that prints one candidate per line for ``word``; None if the shell isn't needed."""
    p = word.prefix
    if word.kind is Kind.VARIABLE:
        if bash:
            return f"compgen -v -- {sh_quote(p)}"
        return "set"  # parsed by parse_candidates: NAME=... lines
    if word.kind is Kind.COMMAND:
        if bash:
            return f"compgen -c -- {sh_quote(p)} | head -n {MAX_MATCHES * 4}"
        # PATH scan in a subshell, so neither IFS nor the loop variables leak into the user's shell.
        return (
            f"alias; (p={sh_quote(p)}; IFS=:; for d in $PATH; do for f in \"$d/$p\"*; do"
            " [ -x \"$f\" ] && [ ! -d \"$f\" ] && printf '%s\\n' \"${f##*/}\"; done; done)"
            f" | head -n {MAX_MATCHES * 4}"
        )
    if word.kind is Kind.FILE:
        if p.startswith("~/"):
            glob, shown = f"\"$HOME\"/{sh_quote(p[2:])}*", "~/%s"
            strip_home = True
        else:
            glob, shown = f"{sh_quote(p)}*", "%s"
            strip_home = False
        name = '"${f#"$HOME"/}"' if strip_home else '"$f"'
        return (
            f"(for f in {glob}; do [ -e \"$f\" ] || [ -L \"$f\" ] || continue;"
            f" if [ -d \"$f\" ]; then printf '{shown}/\\n' {name}; else printf '{shown}\\n' {name}; fi;"
            f" done) | head -n {MAX_MATCHES}"
        )
    return None


def parse_candidates(word: Word, output: str, *, bash: bool) -> list[str]:
    """Turn the shell's output for ``word`` into sorted, unique, ready-to-insert matches."""
    lines = [line.rstrip("\r") for line in output.split("\n")]
    p = word.prefix
    if word.kind is Kind.VARIABLE:
        names = [line.strip() for line in lines] if bash else _SET_LINE_RE.findall(output)
        names = [n for n in names if n.startswith(p) and _NAME_RE.fullmatch(n) and not n.startswith("__lxck")]
        if word.brace:
            return _unique(f"${{{n}}}" for n in names)
        return _unique(f"${n}" for n in names)
    if word.kind is Kind.COMMAND:
        names = []
        for line in lines:
            line = line.strip()
            if not bash and "=" in line:
                line = line.split("=", 1)[0]  # ash's `alias` prints `ll='ls -l'`
            names.append(line)
        if not bash:
            names += ASH_BUILTINS
        names = [n for n in names if n and n.startswith(p) and not n.startswith("__lxck")]
        return _unique(escape(n) for n in names)
    if word.kind is Kind.FILE:
        names = [line for line in lines if line and line.startswith(p)]
        return _unique((escape(n[:-1]) + "/") if n.endswith("/") else escape(n) for n in names)
    return []


def escape(name: str) -> str:
    """Backslash-escape what the shell would otherwise split or expand (a leading ~ stays a tilde)."""
    if name.startswith("~/"):
        return "~/" + _NEEDS_ESCAPE.sub(r"\\\1", name[2:])
    return _NEEDS_ESCAPE.sub(r"\\\1", name)


def _unique(items: Iterable[str]) -> list[str]:
    return sorted(set(items))[:MAX_MATCHES]


def complete_names(word: Word, names: Iterable[str]) -> list[str]:
    """Matches for a word from a fixed list (magic names, subcommands, container names)."""
    p = word.prefix
    if word.kind is Kind.MAGIC:
        return _unique(f"%{n}" for n in names if n.startswith(p))
    return _unique(n for n in names if n.startswith(p))


def magic_arg_choices(
    word: Word, subcommands: Mapping[str, Sequence[str]], takes_container: Mapping[str, object]
) -> tuple[list[str], bool]:
    """For ``%magic a b <word>``: (fixed choices, whether container names fit here).

    ``subcommands`` maps a magic to its subcommand names; ``takes_container`` maps a magic to a
    collection of the subcommands after which a container name comes (or True: its first argument).
    """
    name, *before = word.magic
    subs = subcommands.get(name, ())
    wants = takes_container.get(name)
    if not before:
        if wants is True:
            return list(subs), True
        return list(subs), False
    if isinstance(wants, (set, frozenset, list, tuple)) and len(before) == 1 and before[0] in wants:
        return [], True
    return [], False


# -- is_complete -----------------------------------------------------------------------------------

_INCOMPLETE_RE = re.compile(
    r"unexpected end of file|unexpected EOF|here-document at line \d+ delimited by end-of-file"
)
# After these at the end of a line, the next line is indented one more level.
_OPENERS_RE = re.compile(r"(\b(do|then|else|in)|[{(|]|&&|\|\||\)\s*[^;]*|\\)\s*$")
INDENT = "    "


@dataclass(frozen=True)
class Completeness:
    status: str  # complete | incomplete | invalid | unknown
    indent: str = ""


def strip_magic_lines(code: str) -> str:
    """Leading ``%magic`` lines are the kernel's, not the shell's: leave them out of syntax checks."""
    lines = code.split("\n")
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("%") or not lines[i].strip()):
        i += 1
    return "\n".join(lines[i:])


def classify(code: str, returncode: int, stderr: str) -> Completeness:
    """Read ``bash -n``'s verdict on ``code``: waiting for more input, broken, or complete."""
    body = strip_magic_lines(code)
    if not body.strip():
        return Completeness("complete")
    incomplete = bool(_INCOMPLETE_RE.search(stderr))
    # bash -n accepts a trailing backslash-newline at end of input; an interactive shell would wait.
    if not incomplete and body.endswith("\\") and _escaped(body + "x", len(body)):
        incomplete = True
    if incomplete:
        return Completeness("incomplete", indent_for(body, stderr))
    if returncode != 0:
        return Completeness("invalid")
    return Completeness("complete")


def indent_for(body: str, stderr: str) -> str:
    """The indent for the next line: none inside a quote or heredoc (spaces would become data)."""
    if "matching `'" in stderr or 'matching `"' in stderr or "here-document" in stderr:
        return ""
    last = body.rstrip("\n").split("\n")[-1]
    base = last[: len(last) - len(last.lstrip(" \t"))]
    if _OPENERS_RE.search(last):
        return base + INDENT
    return base


def is_complete(code: str, bash: str = "/bin/bash", timeout: float = 2.0) -> Completeness:
    """Ask the host's bash (``bash -n``: parse only, nothing runs) whether ``code`` is a complete cell.

    The host's bash judges both bash and busybox ash cells: what ash accepts it accepts too, for
    the constructs that decide completeness (quotes, heredocs, compound commands).
    """
    body = strip_magic_lines(code)
    if not body.strip():
        return Completeness("complete")
    try:
        proc = subprocess.run(
            [bash, "--norc", "--noprofile", "-n"],
            input=body.encode("utf-8", "surrogateescape"),
            capture_output=True,
            timeout=timeout,
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return Completeness("unknown")
    return classify(code, proc.returncode, proc.stderr.decode("utf-8", "replace"))
