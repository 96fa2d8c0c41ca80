"""Pure: what to complete at the cursor, the shell text that lists candidates, and the is_complete classifier.

Completion runs in the live shell (so it sees the cell's variables, aliases, functions, ``complete``
specs and working directory), but everything here is text in, text out. :func:`word_at` finds the
word the way readline does (its start is the last unquoted ``COMP_WORDBREAKS`` character, or the
opening quote the cursor is inside) and what kind of thing it names; for an argument it also builds
what readline hands a completion function (:class:`CompLine`: ``COMP_LINE``, ``COMP_POINT``,
``COMP_WORDS``, ``COMP_CWORD`` and ``$1 $2 $3``). The ``*_script`` functions write the short command
for bash or busybox ash, and :func:`parse_candidates` turns what it printed into typed matches.

In bash, the helper functions in :data:`BASH_HELPERS` do the work: they are defined once per shell
(on its first completion) and follow readline's order; see :func:`argument_script`.
"""

from __future__ import annotations

import enum
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .protocol import sh_quote

MAX_MATCHES = 500

# bash's default COMP_WORDBREAKS (bash 5.2: `printf %q "$COMP_WORDBREAKS"`). readline starts the word to
# complete after the last of these that is not quoted: `--file=/et` and `host:/pa` complete the part
# after `=` and `:`, and the completion function's matches replace only that part.
COMP_WORDBREAKS = " \t\n\"'@><=;|&(:"
_BLANKS = " \t\n"
# Unquoted, these end one command and start the next (`$(` through its `(`).
_SEPARATORS = ";&|(`"
# Words before the command name that are not the command: bash's reserved words that introduce one.
_RESERVED = frozenset({"if", "then", "else", "elif", "do", "while", "until", "time", "!", "{"})
# After these, the next word is a command name (`sudo gi`, `type ec`), when no completion spec says more.
_COMMAND_KEYWORDS = frozenset(
    {"exec", "command", "sudo", "nohup", "env", "xargs", "builtin", "type", "which", "man", "timeout", "nice"}
)
_ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
# Characters a completed file name needs backslash-escaped: readline's rl_filename_quote_characters in
# bash (bashline.c), so the name stays one word and `:`/`=` do not split it for the next completion.
_NEEDS_ESCAPE = re.compile(r"([ \t\n\\\"'@<>=;|&()#$`?*\[!:{~])")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SET_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)
_ASH_ALIAS_RE = re.compile(r"([^=\s/'\"]+)='")
_FUNCTION_DEF_RE = re.compile(r"(?:^|[;&|{(\s])(?:function\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*\(\s*\)", re.MULTILINE)

# busybox ash builtins (ash has no compgen): `help` in ash lists them, but not in every build.
ASH_BUILTINS = (
    ". : [ [[ alias bg break cd chdir command continue echo eval exec exit export false fg getopts hash "
    "help history jobs kill let local printf pwd read readonly return set shift source test times trap "
    "true type ulimit umask unalias unset wait"
).split()


class Kind(enum.Enum):
    COMMAND = "command"  # the command word: aliases, functions, builtins, keywords, PATH; files if none
    ARGUMENT = "argument"  # after the command word: its completion spec in bash, file names in ash
    FILE = "file"  # a command word with a `/` in it, or an assignment's value: file names
    VARIABLE = "variable"  # $NAME or ${NAME
    USER = "user"  # ~NAME (no slash yet)
    MAGIC = "magic"  # the name of a %magic
    MAGIC_ARG = "magic_arg"  # an argument of a %magic


@dataclass(frozen=True)
class CompLine:
    """What readline hands a completion function for the command around the cursor."""

    line: str  # COMP_LINE: the command, from its name to its end
    point: int  # COMP_POINT: the cursor, counted from the start of COMP_LINE
    words: tuple[str, ...]  # COMP_WORDS, split at blanks and COMP_WORDBREAKS like bash does
    cword: int  # COMP_CWORD: the index of the word with the cursor
    command: str  # $1: the command name as typed
    cur: str  # $2: readline's word up to the cursor (after an opening quote, without it)
    prev: str  # $3: the word before COMP_WORDS[COMP_CWORD]


@dataclass(frozen=True)
class Word:
    """The word being completed: ``code[start:end]`` is replaced by a match."""

    text: str
    start: int
    end: int
    kind: Kind
    brace: bool = False  # ``${NAME`` rather than ``$NAME``
    magic: tuple[str, ...] = ()  # for MAGIC_ARG: the magic's name and the words before this one
    quote: str = ""  # the quote the cursor is inside (the word starts right after it): ', " or none
    after_keyword: bool = False  # the previous word is `sudo`, `type`, `exec`...: a command name fits
    comp: CompLine | None = None  # for ARGUMENT: what a completion function is called with

    @property
    def prefix(self) -> str:
        """What the candidates must start with: no ``$``/``${``, quotes and backslash escapes removed."""
        if self.kind is Kind.VARIABLE:
            return self.text[2:] if self.brace else self.text[1:]
        if self.kind is Kind.MAGIC:
            return self.text.lstrip("%")
        if self.kind is Kind.USER:
            return self.text[1:]
        if self.quote == "'":
            return self.text
        if self.quote == '"':
            return re.sub(r'\\([\\$`"])', r"\1", self.text)
        return dequote(self.text)


@dataclass(frozen=True)
class Match:
    """One completion: the text that replaces ``code[start:end]`` and its kind for frontends' icons."""

    text: str
    type: str  # command | function | file | directory | variable | magic


def dequote(text: str) -> str:
    """The shell word ``text`` without its quotes and backslashes (no expansion)."""
    out: list[str] = []
    state = ""
    i = 0
    while i < len(text):
        c = text[i]
        if state == "'":
            if c == "'":
                state = ""
            else:
                out.append(c)
        elif c == "\\" and i + 1 < len(text) and (state == "" or text[i + 1] in '\\$`"'):
            out.append(text[i + 1])
            i += 1
        elif c in "'\"" and (state == "" or c == state):
            state = "" if state else c
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _lex(line: str) -> tuple[list[bool], str, int]:
    """Per character of ``line``: is it quoted (inside quotes, a quote character itself, or escaped by a
    backslash)? Quoted characters never end a word. Also the quote still open at the end, and where."""
    quoted = [False] * len(line)
    state, opened = "", -1
    i = 0
    while i < len(line):
        c = line[i]
        if state:
            quoted[i] = True
            if c == "\\" and state == '"' and i + 1 < len(line):
                quoted[i + 1] = True
                i += 1
            elif c == state:
                state = ""
        elif c == "\\":
            quoted[i] = True
            if i + 1 < len(line):
                quoted[i + 1] = True
                i += 1
        elif c in "'\"":
            quoted[i] = True
            state, opened = c, i
        i += 1
    return quoted, state, opened


def _is_separator(line: str, quoted: list[bool], i: int) -> bool:
    """An unquoted ``; & | ( `` that ends a command; not the ``&`` of ``2>&1``, ``&>`` or ``<&``."""
    c = line[i]
    if quoted[i] or c not in _SEPARATORS:
        return False
    if c == "&" and ((i > 0 and line[i - 1] in "<>") or (i + 1 < len(line) and line[i + 1] == ">")):
        return False
    return True


def _ends_command(line: str, quoted: list[bool], i: int) -> bool:
    return _is_separator(line, quoted, i) or (line[i] == ")" and not quoted[i])


def _shell_words(text: str, quoted: list[bool], offset: int) -> list[tuple[int, int]]:
    """Spans of the blank-separated shell words of ``text`` (``quoted`` is for the whole line, which
    ``text`` starts at ``offset`` of)."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, c in enumerate(text):
        blank = c in _BLANKS and not quoted[offset + i]
        if blank and start is not None:
            spans.append((start, i))
            start = None
        elif not blank and start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def comp_words(line: str, quoted: list[bool], offset: int, point: int) -> tuple[list[str], int]:
    """COMP_WORDS and COMP_CWORD for ``line`` with the cursor at ``point``, as bash splits them: at
    blanks, and at COMP_WORDBREAKS characters, a run of which is a word of its own (``--a=b`` is
    ``--a`` ``=`` ``b``). Quoted characters (see :func:`_lex`) split nothing."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        q = quoted[offset + i]
        if c in _BLANKS and not q:
            i += 1
            continue
        j = i + 1
        if not q and c in COMP_WORDBREAKS:
            while j < n and not quoted[offset + j] and line[j] in COMP_WORDBREAKS and line[j] not in _BLANKS:
                j += 1
        else:
            while j < n and (quoted[offset + j] or line[j] not in COMP_WORDBREAKS):
                j += 1
        spans.append((i, j))
        i = j
    # The cursor's word: one starting at the cursor, else one ending at or containing it, else a new
    # empty word at the cursor (bash: `tt a |` has COMP_WORDS tt a "" and `tt ab=|cd` points at cd).
    for k, (s, e) in enumerate(spans):
        if s == point:
            return [line[s:e] for s, e in spans], k
    for k, (s, e) in enumerate(spans):
        if s < point <= e:
            return [line[s:e] for s, e in spans], k
    k = sum(1 for s, _ in spans if s < point)
    words = [line[s:e] for s, e in spans]
    words.insert(k, "")
    return words, k


def word_at(code: str, cursor: int) -> Word:
    """Find the word that ends at ``cursor`` and what kind of name it is."""
    cursor = max(0, min(cursor, len(code)))
    line_start = code.rfind("\n", 0, cursor) + 1
    line_end = code.find("\n", cursor)
    line = code[line_start : len(code) if line_end < 0 else line_end]
    pos = cursor - line_start
    before = line[:pos]

    if before.lstrip().startswith("%"):
        blank = max(before.rfind(" "), before.rfind("\t"))
        text = before[blank + 1 :]
        if not before[: blank + 1].strip():
            return Word(text, cursor - len(text), cursor, Kind.MAGIC)
        words = before[: blank + 1].split()
        return Word(text, cursor - len(text), cursor, Kind.MAGIC_ARG, magic=(words[0].lstrip("%"), *words[1:]))

    quoted, _, _ = _lex(line)
    _, state, opened = _lex(before)
    # readline's word: after the quote the cursor is inside, or after the last unquoted break character.
    if state:
        start = opened + 1
    else:
        start = pos
        while start > 0 and (before[start - 1] not in COMP_WORDBREAKS or quoted[start - 1]):
            start -= 1
    text = before[start:]
    abs_start = line_start + start

    # The command around the cursor: after the last separator, past reserved words and assignments.
    cmd_start = max((i + 1 for i in range(pos) if _is_separator(line, quoted, i)), default=0)
    cmd_end = next((i for i in range(pos, len(line)) if _ends_command(line, quoted, i)), len(line))
    spans = _shell_words(before[cmd_start:], quoted, cmd_start)
    # A shell word that ends at the cursor is the one being completed: it may be the command name.
    done = [(s, e) for s, e in spans if cmd_start + e < pos]
    k = 0
    while k < len(done):
        w = before[cmd_start + done[k][0] : cmd_start + done[k][1]]
        if w in _RESERVED or _ASSIGNMENT_RE.match(w):
            k += 1
            continue
        break
    name_at = cmd_start + done[k][0] if k < len(done) else None  # the command name, when complete
    word_start = pos
    while word_start > cmd_start and (before[word_start - 1] not in _BLANKS or quoted[word_start - 1]):
        word_start -= 1
    previous = before[cmd_start + done[-1][0] : cmd_start + done[-1][1]] if done else ""
    after_keyword = previous in _COMMAND_KEYWORDS and name_at is not None

    if state != "'":
        dollar = text.rfind("$")
        if dollar >= 0 and not _escaped(text, dollar):
            rest = text[dollar + 1 :]
            brace = rest.startswith("{")
            name = rest[1:] if brace else rest
            if name == "" or _NAME_RE.fullmatch(name):
                return Word(text[dollar:], abs_start + dollar, cursor, Kind.VARIABLE, brace=brace, quote=state)
    if not state and text.startswith("~") and "/" not in text and start == word_start:
        return Word(text, abs_start, cursor, Kind.USER)

    if name_at is None:
        # The command word itself (or an assignment before it, whose value is a file name).
        shell_word = before[word_start:]
        if "/" in text or _ASSIGNMENT_RE.match(shell_word) or start != word_start:
            return Word(text, abs_start, cursor, Kind.FILE, quote=state)
        return Word(text, abs_start, cursor, Kind.COMMAND, quote=state)

    comp_line = line[name_at:cmd_end]
    point = pos - name_at
    words, cword = comp_words(comp_line, quoted, name_at, point)
    comp = CompLine(
        line=comp_line, point=point, words=tuple(words), cword=cword, command=words[0],
        cur=text, prev=words[cword - 1] if cword > 0 else "",
    )
    return Word(text, abs_start, cursor, Kind.ARGUMENT, quote=state, after_keyword=after_keyword, comp=comp)


def _escaped(text: str, index: int) -> bool:
    """Whether ``text[index]`` is preceded by an odd number of backslashes."""
    n = 0
    while index - n - 1 >= 0 and text[index - n - 1] == "\\":
        n += 1
    return n % 2 == 1


# -- the shell side ---------------------------------------------------------------------------------
#
# Output protocol of every candidate script: one candidate per line, its first character a tag.
#   c command (alias, builtin, keyword, PATH)   u function   f file   d directory   w a spec's word
#   x then f|d: a file from a fallback (`-o default`, no spec...)   o the spec's `-o` options (one line)
# The programmable script prints NONCE + "r" at once (the helpers are defined: a completion function that
# exits its subshell leaves no nonce, which is no reason to define them again), and the nonce itself after
# the completion function ran: what the function wrote to the terminal itself (/dev/tty) comes before it
# and is dropped.

# bash helpers, defined once per shell (see ALIASES_OFF). Their locals that stay alive while a completion
# function runs are named _lk*: bash scoping is dynamic, and a function that sets `cur` or `i` without
# `local` (a common way to write one) would otherwise write into ours.
#
# __lxck_fl PREFIX [TAG]: file names that start with PREFIX (`~/` is $HOME); directories tagged d. Hidden
# files too when the name part is empty, as readline's match-hidden-files (on by default) does. It runs
# in the shell itself (a subshell would cost a fork): `local -` puts back the `set -f`/`-u` it turns off
# (bash 4.4+), and failglob is put back by hand.
_BASH_FILES = (
    "__lxck_fl() { local - p=$1 h= f t g z=; set +fu; builtin shopt -q failglob && z=1 && builtin shopt -u failglob;"
    " [[ $p == \"~/\"* ]] && h=$HOME p=$HOME/${p:2}; g=(\"$p\"*); [[ -z ${p##*/} ]] && g+=(\"$p\".*);"
    " [[ -z $z ]] || builtin shopt -s failglob; for f in \"${g[@]}\"; do case ${f##*/} in .|..) continue;; esac;"
    " [[ -e $f || -L $f ]] || continue; [[ -d $f ]] && t=d || t=f; [[ -n $h ]] && f=\"~${f:${#h}}\";"
    " builtin printf \"%s%s\\n\" \"${2-}$t\" \"$f\"; done; }"
)
# __lxck_cm PREFIX: readline's command word: aliases, functions, builtins, keywords, PATH; file names when
# none of those match (bash manual, "Programmable Completion" and the `complete` bindable command). PATH
# entries that are the same directory are scanned once: on a merged-/usr system /bin and /sbin are
# /usr/bin and /usr/sbin, and compgen -c read each twice (hostfs, 1100 programs: 1.5 -> 0.7 ms).
_BASH_COMMANDS = (
    "__lxck_cm() { local - IFS=: d e u=(); set -f; for d in $PATH; do for e in \"${u[@]}\"; do [[ $d -ef $e ]] &&"
    " continue 2; done; u+=(\"$d\"); done; local PATH=\"${u[*]}\"; builtin compgen -P u -A function -- \"$1\";"
    " builtin compgen -P c -c -- \"$1\" || __lxck_fl \"$1\"; }"
)
# __lxck_ld COMMAND, in the shell itself so that what it loads stays: bash-completion's main script the
# first time (only where the container has it, and only if nothing set a default completion yet, as a
# sourced ~/.bashrc may have), then the command's spec through its dynamic loader (`_completion_loader`).
# Both are parsed with extglob on (they need it) and alias expansion off (a cell's `alias ls=...` must not
# end up inside their functions); the user's settings are put back.
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"
_BASH_LOADER = (
    f"__lxck_ld() {{ local _lke=1 _lkz=1 _lkf={BASH_COMPLETION}; builtin shopt -q extglob || _lke=;"
    " builtin shopt -q expand_aliases || _lkz=; builtin shopt -s extglob; builtin shopt -u expand_aliases;"
    " if [[ -z ${__lxck_bc-} ]]; then __lxck_bc=1; builtin complete -p -D ||"
    " { [[ -r $_lkf ]] && builtin . \"$_lkf\"; }; fi; builtin complete -p -- \"$1\" ||"
    " { declare -F _completion_loader && _completion_loader \"$1\"; }; [[ -n $_lke ]] || builtin shopt -u extglob;"
    " [[ -z $_lkz ]] || builtin shopt -s expand_aliases; } </dev/null >/dev/null 2>&1"
)
# __lxck_pc NONCE FALLBACK CMD CWORD POINT LINE CUR PREV PREFIX WORDS...: programmable completion as
# readline does it (bash manual, "Programmable Completion"). With no spec for the command (by name, by
# basename, or the -D default) it is readline's default, file names (or command names after `sudo` and
# the like), in the shell itself. Otherwise __lxck_pd runs in a subshell: the function sees every
# variable and function of the session but changes none of them. There the spec is read by __lxck_sp and
# __lxck_ps; __lxck_pr runs its actions, -G and -W through compgen, calls its -F function with COMP_* set
# and $1 $2 $3 and reads COMPREPLY (124: the function changed the spec, start again), and reads -C's
# output; __lxck_px applies -X, __lxck_po -P, -S and -o default/dirnames/plusdirs, and prints. `compopt` is
# recorded (__lxck_co: outside readline it only fails) and `compgen` gets readline's file name dequoting
# (__lxck_cg). Alias expansion is off in there: bash parses a function's $(...) again when it runs, and a
# cell's `alias grep=...` or `alias compgen=...` would reach into bash-completion's pipelines.
_BASH_PROGRAMMABLE = (
    "__lxck_pc() { builtin printf \"%sr\\n\" \"$1\"; if { builtin complete -p -- \"$3\" ||"
    " builtin complete -p -- \"${3##*/}\" || builtin complete -p -D; } >/dev/null 2>&1; then (__lxck_pd \"$@\");"
    " else builtin printf \"%s\\n\" \"$1\" o;"
    " if [[ $2 == c ]]; then __lxck_cm \"$9\"; else __lxck_fl \"$9\" x; fi; fi; }"
)
_BASH_PROGRAMMABLE_RUN = (
    "__lxck_pd() { local _lkn=$1 _lkb=$2 _lkc=$3 _lkw=$7 _lkv=$8 _lkx=$9 _lks= _lko= _lkF= _lkC= _lkX= _lkP= _lkS="
    " _lkt _lka=() _lkg=() _lkk=(); COMP_CWORD=$4 COMP_POINT=$5 COMP_LINE=$6 COMP_TYPE=9 COMP_KEY=9; shift 9;"
    " COMP_WORDS=(\"$@\"); COMPREPLY=(); set +euf; builtin shopt -s extglob; builtin shopt -u failglob expand_aliases;"
    " compopt() { __lxck_co \"$@\"; }; compgen() { __lxck_cg \"$@\"; }; for _lkt in 1 2 3; do"
    " __lxck_sp || break; __lxck_ps; __lxck_pr; (($? == 124)) || break; done; __lxck_po; }"
)
# The spec as `complete -p` prints it, into _lks: through a file in the session directory where there is
# one (a command substitution would cost a fork).
_BASH_SPEC_READ = (
    "__lxck_sp() { local f=${__lxck_d-}/cs; _lks=; if [[ -d ${__lxck_d-} ]]; then"
    " { builtin complete -p -- \"$_lkc\" || builtin complete -p -- \"${_lkc##*/}\" || builtin complete -p -D; }"
    " >\"$f\" 2>/dev/null && IFS= builtin read -r _lks <\"$f\"; else _lks=$({ builtin complete -p -- \"$_lkc\" ||"
    " builtin complete -p -- \"${_lkc##*/}\" || builtin complete -p -D; } 2>/dev/null); fi; [[ -n $_lks ]]; }"
)
_BASH_SPEC = (
    "__lxck_ps() { local _lki; eval \"_lka=($_lks)\"; _lko= _lkF= _lkC= _lkX= _lkP= _lkS= _lkg=() _lkk=();"
    " for ((_lki=1; _lki<${#_lka[@]}-1; _lki++)); do case ${_lka[_lki]} in -o) _lko+=\" ${_lka[++_lki]} \";;"
    " -F) _lkF=${_lka[++_lki]};; -C) _lkC=${_lka[++_lki]};; -X) _lkX=${_lka[++_lki]};; -P) _lkP=${_lka[++_lki]};;"
    " -S) _lkS=${_lka[++_lki]};; -[AGW]) _lkg+=(\"${_lka[_lki]}\" \"${_lka[++_lki]}\");; -[DEI]) ;;"
    " -*) _lkg+=(\"${_lka[_lki]}\");; esac; done; }"
)
_BASH_RUN = (
    "__lxck_pr() { if ((${#_lkg[@]})) && [[ -d ${__lxck_d-} ]]; then __lxck_cg \"${_lkg[@]}\" -- \"$_lkw\""
    " >\"$__lxck_d/cw\" 2>/dev/null; builtin mapfile -t _lkk <\"$__lxck_d/cw\"; elif ((${#_lkg[@]})); then"
    " builtin mapfile -t _lkk < <(__lxck_cg \"${_lkg[@]}\" -- \"$_lkw\" 2>/dev/null); fi;"
    " if [[ -n $_lkF ]]; then COMPREPLY=(); \"$_lkF\" \"$_lkc\" \"$_lkw\" \"$_lkv\" >/dev/null 2>&1;"
    " (($? == 124)) && return 124; _lkk+=(\"${COMPREPLY[@]}\"); fi; [[ -z $_lkC ]] ||"
    " builtin mapfile -t -O ${#_lkk[@]} _lkk < <(export COMP_LINE COMP_POINT;"
    " eval \"$_lkC\" '\"$_lkc\" \"$_lkw\" \"$_lkv\"' 2>/dev/null); return 0; }"
)
_BASH_FILTER = (
    "__lxck_px() { local _lkm _lky= _lkr _lkh=(); [[ $_lkX == !* ]] && _lky=1 _lkX=${_lkX:1};"
    " _lkX=${_lkX//&/\"$_lkw\"}; for _lkm in \"${_lkk[@]}\"; do [[ $_lkm == $_lkX ]] && _lkr=1 || _lkr=;"
    " [[ $_lkr == \"$_lky\" ]] && _lkh+=(\"$_lkm\"); done; _lkk=(\"${_lkh[@]}\"); }"
)
_BASH_OUTPUT = (
    "__lxck_po() { local _lkm _lkr; [[ -z $_lkX ]] || __lxck_px; builtin printf \"%s\\n\" \"$_lkn\" \"o$_lko\";"
    " for _lkm in \"${_lkk[@]}\"; do _lkm=$_lkP$_lkm$_lkS; _lkr=w;"
    " if [[ $_lko == *\" filenames \"* && -e ${_lkm/#\\~/$HOME} ]]; then [[ -d ${_lkm/#\\~/$HOME} ]] && _lkr=d"
    " || _lkr=f; fi; builtin printf \"%s\\n\" \"$_lkr$_lkm\"; done;"
    " if [[ $_lko == *\" plusdirs \"* ]] || { ((${#_lkk[@]} == 0)) &&"
    " [[ $_lko == *@(\" default \"|\" bashdefault \"|\" dirnames \")* ]]; }; then __lxck_fl \"$_lkx\" x; fi; }"
)
# compopt outside readline fails ("not currently executing completion function"): record its -o/+o.
_BASH_COMPOPT = (
    "__lxck_co() { while (($#)); do case $1 in -o) _lko+=\" $2 \"; shift;; +o) _lko=${_lko// $2 /}; shift;; esac;"
    " shift; done; return 0; }"
)
# compgen -f/-d as it behaves during completion. readline dequotes the word when the line has quotes, and
# bash dequotes it once more when a completion function quoted it itself (bash-completion's _filedir
# does, with printf %q): pcomp_filename_completion_function in bash's pcomplete.c. Without readline
# (the kernel's bash runs with --noediting) neither happens, and `cat my\ fi` would find nothing.
_BASH_COMPGEN = (
    r"""__lxck_cg() { local _lkq= _lkj _lkd _lki=${!#}; for _lkj; do [[ $_lkj == -[fd] || $_lkj == file ||"""
    r""" $_lkj == directory ]] && _lkq=1; done; if [[ -n $_lkq && $_lki == *[\\\'\"]* ]]; then"""
    r""" [[ $_lki == "$_lkw" ]] || { __lxck_dq "$_lki"; _lki=$_lkd; };"""
    r""" [[ ${COMP_LINE:0:COMP_POINT} == *[\\\'\"]* ]] && { __lxck_dq "$_lki"; _lki=$_lkd; };"""
    r""" set -- "${@:1:$#-1}" "$_lki"; fi; builtin compgen "$@"; }"""
)
# __lxck_dq WORD: WORD without its quotes and backslashes, in _lkd (readline's bash_dequote_filename).
_BASH_DEQUOTE = (
    r"""__lxck_dq() { local w=$1 j c q=; _lkd=; for ((j=0; j<${#w}; j++)); do c=${w:j:1}; if [[ $q == "'" ]]; then"""
    r""" [[ $c == "'" ]] && q= || _lkd+=$c; elif [[ $c == "\\" ]]; then ((j++)); _lkd+=${w:j:1};"""
    r""" elif [[ $c == [\"\'] ]]; then if [[ -z $q ]]; then q=$c; elif [[ $c == "$q" ]]; then q=;"""
    r""" else _lkd+=$c; fi; else _lkd+=$c; fi; done; }"""
)
BASH_HELPERS: tuple[str, ...] = (
    _BASH_FILES, _BASH_COMMANDS, _BASH_LOADER, _BASH_PROGRAMMABLE, _BASH_PROGRAMMABLE_RUN, _BASH_SPEC_READ,
    _BASH_SPEC, _BASH_RUN, _BASH_FILTER, _BASH_OUTPUT, _BASH_COMPOPT, _BASH_COMPGEN, _BASH_DEQUOTE,
)
# Helpers are defined with alias expansion off, so aliases from earlier cells cannot reach into them:
# one query turns it off (each query's text is parsed as a whole before it runs, so the `shopt` must come
# in an earlier one), the definitions follow, and the last query puts the user's setting back.
ALIASES_OFF = (
    "{ \\builtin shopt -q expand_aliases && __lxck_ea=1 || __lxck_ea=; \\builtin shopt -u expand_aliases; } || \\:"
)
ALIASES_BACK = "{ [[ -z ${__lxck_ea-} ]] || \\builtin shopt -s expand_aliases; \\builtin unset __lxck_ea; } || \\:"


def _guarded(script: str) -> str:
    # `|| :`: with `set -e` from a cell, a helper that finds nothing (status 1) would end the shell;
    # errexit is ignored inside a list that has an `||` after it.
    return f"{script} || \\:"


def variables_script(word: Word, *, bash: bool) -> str:
    if bash:
        return _guarded(f"\\builtin compgen -v -- {sh_quote(word.prefix)}")
    return "set"  # parsed by parse_candidates: NAME=... lines


def users_script(word: Word, *, bash: bool) -> str:
    if bash:
        return _guarded(f"\\builtin compgen -P c -u -- {sh_quote(word.prefix)}")
    # ash has no compgen: the names of /etc/passwd, in a subshell so IFS and n r stay the user's.
    return _guarded("(set +u; while IFS=: read -r n r; do printf 'c%s\\n' \"$n\"; done </etc/passwd)")


def _ash_files(prefix: str) -> str:
    """busybox ash (no compgen, no helpers): a loop that prints the file names starting with ``prefix``."""
    if prefix.startswith("~/"):
        base, shown, name = f"\"$HOME\"/{sh_quote(prefix[2:])}", "~/%s", '"${f#"$HOME"/}"'
    else:
        base, shown, name = sh_quote(prefix), "%s", '"$f"'
    # Hidden files too when the name part is empty, as readline's match-hidden-files does.
    glob = f"{base}*" + (f" {base}.*" if not prefix.rsplit("/", 1)[-1] else "")
    return (
        f"for f in {glob}; do case ${{f##*/}} in .|..) continue;; esac; [ -e \"$f\" ] || [ -L \"$f\" ] || continue;"
        f" if [ -d \"$f\" ]; then printf 'd{shown}\\n' {name}; else printf 'f{shown}\\n' {name}; fi; done"
    )


def files_script(prefix: str, *, bash: bool) -> str:
    if bash:
        return _guarded(f"\\__lxck_fl {sh_quote(prefix)}")
    # A subshell: the loop variable stays out of the user's shell, and a cell's `set -f`/`-u` is undone.
    return _guarded(f"(set +fu; {_ash_files(prefix)})")


def commands_script(word: Word, *, bash: bool) -> str:
    p = word.prefix
    if bash:
        return _guarded(f"\\__lxck_cm {sh_quote(p)}")
    # ash: aliases (`alias` prints name='value'), then a PATH scan in a subshell so neither IFS nor the
    # loop variables leak into the user's shell, then the file names, which parse_candidates keeps only
    # when no command matches (one round trip either way). Builtins come from ASH_BUILTINS; functions
    # cannot be listed in ash at all (see function_names).
    return _guarded(
        f"alias; (set +fu; p={sh_quote(p)}; IFS=:; for d in $PATH; do for f in \"$d/$p\"*; do"
        " [ -x \"$f\" ] && [ ! -d \"$f\" ] && printf 'c%s\\n' \"${f##*/}\"; done; done; unset IFS;"
        f" {_ash_files(p)})"
    )


def argument_script(word: Word, nonce: str) -> str:
    """bash: load the command's spec in the shell (bash-completion's loader), then complete (its function
    in a subshell)."""
    comp = word.comp
    assert comp is not None
    args = [nonce, "c" if word.after_keyword else "f", comp.command, str(comp.cword), str(comp.point),
            comp.line, comp.cur, comp.prev, word.prefix, *comp.words]
    quoted = " ".join(sh_quote(a) for a in args)
    return f"\\__lxck_ld {sh_quote(comp.command)} || \\:; \\__lxck_pc {quoted} || \\:"


def function_names(code: str) -> list[str]:
    """Names the code defines as functions (``name() {`` or ``function name``): busybox ash cannot list
    the functions it has, so its completion offers those of the cell being edited."""
    names = _FUNCTION_DEF_RE.findall(code)
    names += re.findall(r"(?:^|[;&|{(\s])function\s+([A-Za-z_][A-Za-z0-9_.-]*)", code, re.MULTILINE)
    return sorted(set(names))


# -- reading the output -----------------------------------------------------------------------------

_TYPES = {"c": "command", "u": "function", "f": "file", "d": "directory", "w": "command"}


def parse_candidates(word: Word, output: str, *, bash: bool, nonce: str = "", functions: Iterable[str] = ()
                     ) -> list[Match]:
    """Turn the shell's output for ``word`` into sorted, unique, ready-to-insert, typed matches."""
    lines = [line.rstrip("\r") for line in output.split("\n")]
    p = word.prefix
    if word.kind is Kind.VARIABLE:
        names = [line.strip() for line in lines] if bash else _SET_LINE_RE.findall(output)
        names = [n for n in names if n.startswith(p) and _NAME_RE.fullmatch(n) and not n.startswith("__lxck")]
        shown = (f"${{{n}}}" if word.brace else f"${n}" for n in names)
        return _unique(Match(s, "variable") for s in shown)
    if word.kind is Kind.USER:
        names = [line[1:] for line in lines if line.startswith("c") and line[1:].startswith(p)]
        return _unique(Match(f"~{escape(n)}/", "directory") for n in names if n)
    if word.kind is Kind.ARGUMENT and nonce:
        if nonce not in lines:
            return []
        lines = lines[len(lines) - lines[::-1].index(nonce) :]
    options = set()
    matches: list[Match] = []
    for line in lines:
        if not line:
            continue
        tag, text = line[0], line[1:]
        if tag == "o":
            options = set(text.split())
            continue
        if not bash and word.kind is Kind.COMMAND and (alias := _ASH_ALIAS_RE.match(line)):
            tag, text = "c", alias.group(1)  # ash's `alias` prints `ll='ls -l'`
        elif tag == "x" and text[:1] in ("f", "d"):
            if text[0] == "f" and options & {"dirnames", "plusdirs"} and not options & {"default", "bashdefault"}:
                continue
            tag, text = text[0], text[1:]
        if tag not in _TYPES or not text or text.startswith("__lxck"):
            continue
        if tag == "w":
            # A spec's words go in as they are (readline quotes only `-o filenames` matches), without the
            # trailing space some functions add (git's): frontends add nothing after a match either.
            if text.strip():
                matches.append(Match(text.rstrip(" "), "command"))
            continue
        if word.kind in (Kind.COMMAND, Kind.ARGUMENT) and tag in "cu" and not text.startswith(p):
            continue
        if tag in "fd" and "noquote" not in options:
            matches.append(Match(quote_name(text, word.quote, directory=tag == "d"), _TYPES[tag]))
        elif tag in "fd":
            matches.append(Match(text + ("/" if tag == "d" and not text.endswith("/") else ""), _TYPES[tag]))
        else:
            matches.append(Match(escape(text), _TYPES[tag]))
    if word.kind is Kind.COMMAND and not bash:
        matches += [Match(n, "command") for n in ASH_BUILTINS if n.startswith(p)]
        matches += [Match(n, "function") for n in functions if n.startswith(p)]
    if word.kind is Kind.COMMAND and any(m.type in ("command", "function") for m in matches):
        matches = [m for m in matches if m.type in ("command", "function")]  # file names only as the fallback
    return _unique(matches, keep_order="nosort" in options)


def quote_name(name: str, quote: str, *, directory: bool = False) -> str:
    """A file name as it goes after the cursor's word start: backslash-escaped outside quotes; inside an
    open quote as the quote needs it, and closed after a file (not a directory: more may follow)."""
    slash = "/" if directory and not name.endswith("/") else ""
    if quote == "'":
        return name.replace("'", "'\\''") + slash + ("" if directory else "'")
    if quote == '"':
        return re.sub(r'([\\$`"])', r"\\\1", name) + slash + ("" if directory else '"')
    return escape(name) + slash


def escape(name: str) -> str:
    """Backslash-escape what the shell would otherwise split or expand (a leading ~ stays a tilde)."""
    if name.startswith("~/"):
        return "~/" + _NEEDS_ESCAPE.sub(r"\\\1", name[2:])
    return _NEEDS_ESCAPE.sub(r"\\\1", name)


def _unique(items: Iterable[Match], keep_order: bool = False) -> list[Match]:
    """One match per text (the first type wins: a function over the same name as a command), sorted
    as readline sorts unless the spec said ``-o nosort``."""
    seen: dict[str, Match] = {}
    for m in items:
        if m.text not in seen or (m.type == "function" and seen[m.text].type == "command"):
            seen[m.text] = m
    ordered = list(seen.values()) if keep_order else sorted(seen.values(), key=lambda m: m.text)
    return ordered[:MAX_MATCHES]


def complete_names(word: Word, names: Iterable[str]) -> list[Match]:
    """Matches for a word from a fixed list (magic names, subcommands, container names)."""
    p = word.prefix
    if word.kind is Kind.MAGIC:
        return _unique(Match(f"%{n}", "magic") for n in names if n.startswith(p))
    return _unique(Match(n, "magic") for n in names if n.startswith(p))


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
