"""Every kernel option declared once: its trait, install flag, `%attach` form, `show` row and README row."""

from __future__ import annotations

import argparse
import enum
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traitlets import Bool, Dict, Float, List, TraitError, TraitType, Unicode, validate

from .attach import ELEVATED, NAMESPACES, AttachOptions, env_pairs, parse_flags, validate_env_name
from .budget import DEFAULT_SPILL_LIMIT, parse_size
from .display import POLICIES as POLICIES_DISPLAY
from .errors import ConfigError
from .hostdirs import check_output_dir
from .lxc import validate_name, validate_path
from .policy import POLICIES
from .provision import KINDS
from .users import parse_spec

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    """The value's type; each maps to one traitlets trait and one way of reading words."""

    STR = "str"
    BOOL = "bool"
    FLOAT = "float"
    ENUM = "enum"
    DICT = "dict"  # str -> str; words are KEY=VALUE
    LIST = "list"  # of str


class OptionError(ConfigError, TraitError):
    """A refused assignment. A ConfigError, so the kernel reports it like any bad option; a TraitError,
    which is what traitlets and code written for it expect a trait to raise."""


Validator = Callable[[Any], Any]


@dataclass(frozen=True)
class Attach:
    """How ``%attach`` sets an option: ``%attach LABEL METAVAR``.

    ``resets`` are the words that put the option back to its default (``root``, ``home``, ``auto``...).
    ``help`` is the option's line in ``%attach --help`` (newlines continue it in the help column);
    ``more`` adds further usage lines, such as ``env -u KEY``.
    """

    metavar: str
    help: str
    resets: tuple[str, ...] = ()
    more: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Option:
    """One kernel option. ``name`` is the LXCKernel trait; everything else says where and how it is set.

    ``validator`` takes a value of the option's kind and returns it normalised (``mount,pid`` becomes
    ``MOUNT|PID``), or raises ConfigError with a one-line reason; the empty/default value must pass.
    ``unset`` is how ``%attach show`` reads an empty value (``root``, ``(default)``); ``doc_default``
    replaces the rendered default in the README where that reads poorly.
    """

    name: str
    kind: Kind
    default: Any
    help: str
    validator: Validator | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None
    metavar: str = ""
    flag_const: str | None = None  # the value of the flag given without one (`--create-missing`)
    label: str = ""  # the word in `%attach LABEL` and `%attach show`; default: name with dashes
    attach: Attach | None = None
    shown: bool = False  # a row in `%attach show` and `%lxc info`
    unset: str = ""
    magic: str = ""  # another magic that sets it, for the README (`%timeout S|off`)
    doc_default: str = ""

    @property
    def word(self) -> str:
        return self.label or self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse attribute of the install flag."""
        return (self.flag or "").lstrip("-").replace("-", "_")

    def initial(self) -> Any:
        """The default as a fresh value (a new dict or list each time: callers mutate them)."""
        if self.kind is Kind.DICT:
            return dict(self.default)
        if self.kind is Kind.LIST:
            return list(self.default)
        return self.default

    # -- the one validator ------------------------------------------------------------------------
    def check(self, value: Any) -> Any:
        """``value`` as the kernel will hold it, or ConfigError: the kind first, then the validator."""
        value = self._of_kind(value)
        return self.validator(value) if self.validator is not None else value

    def _of_kind(self, value: Any) -> Any:
        kind = self.kind
        if kind in (Kind.STR, Kind.ENUM) and isinstance(value, str):
            if kind is Kind.ENUM and value not in self.choices:
                raise ConfigError(f"{value!r} is not one of {', '.join(self.choices)}")
            return value
        if kind is Kind.BOOL and isinstance(value, bool):
            return value
        if kind is Kind.FLOAT and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{value!r} is not a finite number")
            return float(value)
        if kind is Kind.DICT and isinstance(value, Mapping) and all(
            isinstance(key, str) and isinstance(val, str) for key, val in value.items()
        ):
            return dict(value)
        if kind is Kind.LIST and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{value!r} is not a {kind.value}")

    def parse(self, text: str) -> Any:
        """One word of text (an install flag's value, an `%attach` word) as a checked value."""
        if self.kind is Kind.BOOL:
            return self.check(on_off(text))
        if self.kind is Kind.FLOAT:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{text!r} is not a number of seconds") from None
            return self.check(number)
        if self.kind is Kind.DICT:
            return self.check(pairs([text]))
        if self.kind is Kind.LIST:
            return self.check([text])
        return self.check(text)

    # -- %attach ----------------------------------------------------------------------------------
    def from_words(self, words: Sequence[str], unset: Sequence[str], current: Any) -> tuple[Any, str]:
        """What ``%attach WORD words... [-u NAME]...`` makes of the current value, and how to say it.

        A dict or list option is changed item by item (``-u`` removes one); any other takes one word,
        where a reset word stands for the default. Raises ConfigError with the reason.
        """
        if self.kind is Kind.DICT:
            if not words and not unset:
                raise ConfigError("nothing to change")
            merged = {**current, **pairs(words)}
            for key in unset:
                merged.pop(validate_env_name(key), None)
            return self.check(merged), " ".join([*words, *(f"-u {key}" for key in unset)])
        if self.kind is Kind.LIST:
            if not words and not unset:
                raise ConfigError("nothing to change")
            names = [name for name in current if name not in unset]
            names += [name for name in words if name not in names]
            value = self.check(names)
            return value, ", ".join(value) or "(none)"
        (word,) = words
        if word.lower() in self.attach_resets:
            return self.initial(), self.attach_resets[0]
        value = self.parse(word)
        if self.kind is Kind.BOOL:
            return value, "on" if value else "off"
        return value, str(value)  # as the validator normalised it: `mount,pid` reads `MOUNT|PID`

    @property
    def attach_resets(self) -> tuple[str, ...]:
        return self.attach.resets if self.attach is not None else ()

    # -- showing ----------------------------------------------------------------------------------
    def render(self, value: Any) -> str:
        """The value as ``%attach show`` prints it."""
        if self.kind is Kind.BOOL:
            return "on" if value else "off"
        if self.kind is Kind.FLOAT:
            return f"{value:g} s" if value else (self.unset or "0")
        if self.kind is Kind.DICT:
            text = ", ".join(f"{key}={val}" for key, val in value.items())
        elif self.kind is Kind.LIST:
            text = ", ".join(value)
        else:
            text = str(value)
        return text or self.unset

    # -- traitlets --------------------------------------------------------------------------------
    def trait(self) -> TraitType[Any, Any]:
        kinds: dict[Kind, Callable[[], TraitType[Any, Any]]] = {
            Kind.STR: lambda: Unicode(self.default, help=self.help),
            Kind.BOOL: lambda: Bool(self.default, help=self.help),
            Kind.FLOAT: lambda: Float(self.default, help=self.help),
            # Not traitlets' Enum: the option's own check refuses other words, with the same message as
            # the install flag and %attach.
            Kind.ENUM: lambda: Unicode(self.default, help=f"{self.help} (one of: {', '.join(self.choices)})"),
            Kind.DICT: lambda: Dict(value_trait=Unicode(), default_value=dict(self.default), help=self.help),
            Kind.LIST: lambda: List(Unicode(), default_value=list(self.default), help=self.help),
        }
        return kinds[self.kind]().tag(config=True)


# -- word helpers (shared with magics that set an option without %attach) ------------------------------


def on_off(text: str) -> bool:
    if text.lower() in ("on", "yes", "true", "1"):
        return True
    if text.lower() in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"say on or off, not {text!r}")


def pairs(items: Sequence[str]) -> dict[str, str]:
    """``["A=1", "B=x y"]`` -> a dict; names are checked by the option's validator."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r} is not KEY=VALUE")
        out[key] = value
    return out


# -- validators: the checks already written elsewhere, adapted to "value in, normalised value out" ------


def _unless_empty(check: Callable[[str], object]) -> Validator:
    """Empty means "the default" for these options (home, system lxcpath, auto shell...), so it always passes."""

    def run(value: str) -> str:
        if value:
            check(value)
        return value

    return run


def _flags(allowed: Sequence[str], what: str) -> Validator:
    return lambda value: "|".join(parse_flags(value, allowed, what))


def _env(value: dict[str, str]) -> dict[str, str]:
    return dict(env_pairs(value))


def _env_names(value: list[str]) -> list[str]:
    return [validate_env_name(name) for name in dict.fromkeys(value)]


def _term(value: str) -> str:
    # attach.py checks TERM only inside AttachOptions: build one (no lxc-* runs) rather than copy its rule.
    AttachOptions("probe", term=value)
    return value


def _seconds(zero_ok: bool, what: str) -> Validator:
    def run(value: float) -> float:
        if value < 0 or (value == 0 and not zero_ok):
            raise ConfigError(what)
        return value

    return run


def _size(value: str) -> str:
    try:
        parse_size(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return value


def _whole(low: int, high: int) -> Validator:
    def run(value: float) -> float:
        if value != int(value) or not low <= value <= high:
            raise ConfigError(f"must be a whole number from {low} to {high}, not {value:g}")
        return value

    return run


def _spill_limit(value: str) -> str:
    if _size(value) and parse_size(value) == 0:
        raise ConfigError("a kernel's saved output always has a limit (try 500M or 2G)")
    return value


def _one_of(allowed: Sequence[str]) -> Validator:
    def run(value: str) -> str:
        if value and value not in allowed:
            raise ConfigError(f"unknown kind {value!r}: use one of {', '.join(allowed)}")
        return value

    return run


def _image(value: str) -> str:
    from .backends.incus import validate_image

    return validate_image(value) if value else value


def _container_name(what: str) -> Validator:
    """``NAME`` (classic LXC's alphabet) or ``REMOTE:NAME`` (incus/lxd); the backend checks the rest."""

    def run(value: str) -> str:
        if ":" in value:
            from .backends.incus import parse_ref

            parse_ref(value, what)
            return value
        return validate_name(value, what)

    return run


def _ssh_target(value: str) -> str:
    """``[USER@]HOST[:PORT]``: never an option to ssh (no leading '-'), nothing a remote shell reads."""
    from .ssh import parse_target

    parse_target(value)
    return value


def _ssh_options(value: list[str]) -> list[str]:
    from .ssh import validate_options

    return list(validate_options(value))


def _project(value: str) -> str:
    from .backends.incus import validate_project

    return validate_project(value)


# -- the table -----------------------------------------------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    Option(
        "backend", Kind.ENUM, "lxc",
        "which container manager: `lxc` (classic `lxc-*` tools, here or on the `ssh` host), `incus`, or "
        "`lxd` (its `lxc` client); see *Backends*",
        choices=("lxc", "incus", "lxd"), flag="--backend", metavar="lxc|incus|lxd", shown=True,
    ),
    Option(
        "container", Kind.STR, "lxc-kernel",
        "the container the shell runs in (1-64 of `A-Za-z0-9_.-`, checked before any tool runs); "
        "`REMOTE:NAME` on incus and lxd",
        _container_name("container name"), flag="--container", metavar="C", magic="%lxc use [REMOTE:]NAME",
    ),
    Option(
        "project", Kind.STR, "", "the Incus/LXD project of the containers (`--project`)",
        _project, flag="--project", metavar="P", shown=True, unset="(default)", doc_default="the default project",
    ),
    Option(
        "ssh", Kind.STR, "",
        "run the classic backend on another host over ssh, `[USER@]HOST[:PORT]`: the kernel's own host "
        "needs no LXC",
        _unless_empty(_ssh_target), flag="--ssh", metavar="[USER@]HOST[:PORT]", shown=True, unset="-",
        doc_default="off (this host)",
    ),
    Option(
        "ssh_options", Kind.LIST, [],
        "`-o` options of the ssh link (`IdentityFile=...`, `UserKnownHostsFile=...`, `ConnectTimeout=5`; only "
        "harmless ones: nothing that runs a command or forwards anything)",
        _ssh_options, flag="--ssh-option", metavar="KEY=VALUE", doc_default="none (`~/.ssh/config`)",
    ),
    Option(
        "user", Kind.STR, "",
        "attach as this user; names are resolved in the container's `/etc/passwd` (and `/etc/group`), "
        "and HOME, USER, LOGNAME follow",
        _unless_empty(parse_spec), flag="--attach-user", metavar="NAME|UID[:GID]", shown=True, unset="root",
        attach=Attach("NAME|UID[:GID]|root", "run as this user (names resolved in the container's\n"
                      "/etc/passwd and /etc/group); HOME, USER, LOGNAME follow", resets=("root", "0", "0:0")),
    ),
    Option(
        "env", Kind.DICT, {}, "extra variables in the shell",
        _env, flag="--env", metavar="KEY=VALUE", shown=True, unset="-", doc_default="none",
        attach=Attach("KEY=VALUE ...", "set variables in the shell's environment",
                      more=(("env -u KEY", "remove one"),)),
    ),
    Option(
        "keep_env", Kind.LIST, [], "forward these host variables, explicitly, by name",
        _env_names, flag="--keep-env", metavar="NAME", shown=True, unset="-", doc_default="none",
        attach=Attach("NAME", "forward one host variable, by name (-u NAME stops it)"),
    ),
    Option(
        "cwd", Kind.STR, "", "working directory of the shell",
        _unless_empty(lambda path: validate_path(path, "working directory")), flag="--cwd", metavar="PATH",
        shown=True, unset="(the user's home)", doc_default="the user's home",
        attach=Attach("PATH|home", "working directory the shell starts in", resets=("home", "~")),
    ),
    # Not `shell`: IPKernelApp reads kernel.shell expecting an IPython shell.
    Option(
        "shell_path", Kind.STR, "", "the shell to run",
        _unless_empty(lambda path: validate_path(path, "shell")), flag="--shell", metavar="PATH", label="shell",
        shown=True, unset="auto (bash if present, else /bin/sh)", doc_default="bash if present, else `/bin/sh`",
        attach=Attach("PATH|auto", "the shell (auto: bash if present, else /bin/sh)", resets=("auto",)),
    ),
    Option(
        "namespaces", Kind.STR, "",
        "attach to only these namespaces (`lxc-attach -s`, implies elevated privileges: a warning is shown)",
        _flags(NAMESPACES, "namespace"), flag="--namespaces", metavar="MOUNT|PID...", shown=True, unset="all",
        attach=Attach("LIST|all", "attach to only these namespaces, e.g. MOUNT|PID\n"
                      "(lxc-attach -s; implies elevated privileges)", resets=("all",)),
    ),
    Option(
        "elevated", Kind.STR, "", "`lxc-attach -e` (may leak host privileges: a warning is shown)",
        _flags(ELEVATED, "privilege"), flag="--elevated", metavar="CAP|CGROUP|LSM", shown=True, unset="none",
        attach=Attach("LIST|none", "CAP|CGROUP|LSM: keep these host privileges (lxc-attach -e)\n"
                      "WARNING: namespaces and elevated may leak host privileges\ninto the container",
                      resets=("none",)),
    ),
    Option(
        "remount_sys_proc", Kind.BOOL, False, "remount /sys and /proc for the shell (`lxc-attach -R`)",
        flag="--remount-sys-proc", shown=True,
        attach=Attach("on|off", "remount /sys and /proc for the shell (lxc-attach -R)"),
    ),
    Option(
        "lxcpath", Kind.STR, "", "where the containers live (`lxc-* -P`)",
        _unless_empty(lambda path: validate_path(path, "lxcpath")), flag="--lxcpath", metavar="P", shown=True,
        unset="(default)", doc_default="the system default",
        attach=Attach("PATH|default", "where the containers live (lxc-* -P)", resets=("default",)),
    ),
    Option(
        "sudo", Kind.BOOL, False,
        "run `lxc-*` through `sudo -n` and the root-owned helper that validates every argument "
        "(`python3 -m lxc_kernel.sudo grant` installs it), for a kernel started by a non-root user; "
        "see *Security model*",
        flag="--sudo", shown=True,
        attach=Attach("on|off", "run lxc-* through `sudo -n` and the lxc-kernel helper, for a\n"
                      "kernel that is not run by root; without a rule it fails with\n"
                      "a clear error, never a password prompt"),
    ),
    Option(
        "colors", Kind.BOOL, False,
        "keep SGR colour codes (frontends render them); all other control codes are always removed",
        flag="--colors", shown=True, magic="%colors on|off",
    ),
    Option(
        "stderr", Kind.ENUM, "separate", "stderr as its own stream, or merged into stdout",
        choices=("separate", "merged"), flag="--stderr", metavar="separate|merged", shown=True,
        magic="%stderr separate|merged",
    ),
    Option("term", Kind.STR, "xterm-256color", "TERM in the shell", _term),
    Option(
        "cell_timeout", Kind.FLOAT, 0.0,
        "per-cell time limit in seconds, 0 for none; the cell is interrupted and the error names the limit",
        _seconds(True, "must be 0 (none) or more seconds"), flag="--timeout", metavar="SECONDS", label="timeout",
        shown=True, unset="off", magic="%timeout S|off", doc_default="0 (none)",
    ),
    Option(
        "startup_timeout", Kind.FLOAT, 15.0, "seconds allowed for the shell to start",
        _seconds(False, "must be more than 0 seconds"),
    ),
    Option(
        "output_limit", Kind.STR, "1M",
        "output budget per cell (`200k`, `2M`, `off`): past it the notebook keeps the head and the tail, and "
        "the whole output is saved to a file on the kernel's host",
        _size, flag="--output-limit", metavar="SIZE", magic="%output SIZE|off",
    ),
    Option(
        "spill_limit", Kind.STR, DEFAULT_SPILL_LIMIT,
        "the most over-budget output one kernel keeps in files on its host (`500M`, `2G`); past it the oldest "
        "files are deleted. The files are removed when the kernel shuts down",
        _spill_limit,
    ),
    Option(
        "display", Kind.ENUM, "all",
        "rich output from `jdisplay`: `all`; `safe`, only images, JSON, plain text, Markdown without HTML or "
        "links, HTML cleaned of scripts, event handlers and `javascript:` URLs (by ammonia), and SVG as an "
        "image that cannot run; `off`, none. Display output counts against the output budget",
        choices=POLICIES_DISPLAY, flag="--display", metavar="all|safe|off",
        doc_default="`all`; `safe` in a spec installed with `--attach-user`",
    ),
    Option(
        "output_dir", Kind.STR, "", "where each kernel makes its private directory (0700) for over-budget output; "
        "refused unless it is a real directory of the kernel's user that nobody else can write",
        _unless_empty(check_output_dir),
        doc_default="the system's temporary directory",
    ),
    Option(
        "max_fanout_sessions", Kind.FLOAT, 64.0,
        "the most `%%on` shells open at once (one per target container, kept between cells); a `%%on` cell "
        "that needs more fails before running anything, and `%on close` ends some. At most 150: the kernel "
        "holds about five descriptors per shell",
        _whole(1, 150), doc_default="`64`",
    ),
    Option(
        "create_missing", Kind.STR, "",
        "when the container doesn't exist, create it, unprivileged, of this kind (busybox, hostfs, debian; the "
        "bare install flag means busybox) and start it; on incus/lxd, from the image `image`. A stopped one is "
        "started too. The zero-setup choice for new users",
        _one_of(KINDS), flag="--create-missing", metavar="KIND", flag_const="busybox", doc_default="off",
    ),
    Option(
        "image", Kind.STR, "",
        "incus/lxd: the image alias (or fingerprint, `REMOTE:ALIAS`) that `create_missing` creates the container "
        "from; without it, an image aliased like the kind (`busybox`)",
        _image, flag="--image", metavar="ALIAS", doc_default="the kind's name",
    ),
    Option(
        "start_stopped", Kind.BOOL, False, "start the container when it is stopped (unfreeze it when frozen)",
        flag="--start-stopped",
    ),
    Option(
        "ephemeral", Kind.STR, "",
        "each kernel runs in its own throwaway overlay copy of container BASE (`lxc-copy -e`; `copy --ephemeral` "
        "on incus/lxd), named "
        "`BASE-eph-<kernel pid>-<random>`, and `container` is ignored. The copy is destroyed when the kernel "
        "shuts down or restarts, and by the kernel's watchdog within seconds when the kernel is killed (a copy "
        "whose kernel and watchdog both died goes when the next kernel of the same BASE starts)",
        _unless_empty(_container_name("ephemeral base")), flag="--ephemeral", metavar="BASE",
        doc_default="off",
    ),
    # Not settable from a notebook (no %attach form): they guard the host against the notebook's cells.
    Option(
        "magics", Kind.ENUM, "all",
        "which magics cells may run: `all`; `safe`, only those that touch neither the host nor the attached "
        "user (%timeout, %output, %colors, %stderr, %reset, %help, %lsmagic, %lxc status|info|list); `none`, "
        "a magic line is an error. With `all` in a root kernel, whoever runs a cell is root on the host",
        choices=POLICIES, flag="--magics", metavar="all|safe|none", shown=True,
        doc_default="`all`; `safe` in a spec installed with `--attach-user`",
    ),
    Option(
        "transfer_root", Kind.STR, "",
        "the host directory `%push` reads from and `%pull` writes into: a path outside it (absolute, through "
        "`..` or a symlink) is refused, whatever the magics policy",
        _unless_empty(lambda path: validate_path(path, "transfer root")), flag="--transfer-root", metavar="DIR",
        shown=True, unset="(the kernel's working directory)",
        doc_default="the kernel's working directory (Jupyter starts it in the notebook's folder)",
    ),
)

# Fields of kernel.json that the install CLI sets: not traits, so only the install flag and the README see them.
SPEC_OPTIONS: tuple[Option, ...] = (
    Option(
        "interrupt_mode", Kind.ENUM, "signal", "how frontends deliver interrupts; both work",
        choices=("signal", "message"), flag="--interrupt-mode", metavar="signal|message",
    ),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
ATTACH: dict[str, Option] = {option.word: option for option in OPTIONS if option.attach is not None}


def check(name: str, value: Any) -> Any:
    """Validate one option by trait name: the same check the install CLI, `%attach` and the traits run."""
    return BY_NAME[name].check(value)


# -- traitlets -------------------------------------------------------------------------------------------


def traits() -> dict[str, Any]:
    """LXCKernel's configurable traits, plus one validate hook that runs each option's validator on
    every assignment (command line, config file, magics): put them in the class namespace.

    An assignment at run time (a magic, code) that fails raises OptionError and leaves the value as it
    was. A value from the configuration that fails is kept, logged, and recorded in the instance's
    ``option_errors`` (trait name -> message): refusing it would kill the kernel before its first reply,
    and the frontend would show only "kernel died" and restart it in a loop. Kept, the same validators
    report it on the first cell when the shell is attached, and `%lxc use` or `%attach` can fix it.
    """

    def _validate_option(obj: Any, proposal: Any) -> Any:
        option = BY_NAME[proposal["trait"].name]
        errors: dict[str, str] = obj.__dict__.setdefault("option_errors", {})
        if option.name in errors and proposal["value"] == obj._trait_values.get(option.name):
            # The refused config value assigned again, as a failed re-attach restores it: keep it as it is.
            return proposal["value"]
        try:
            value = option.check(proposal["value"])
        except ConfigError as exc:
            message = f"{type(obj).__name__}.{option.name}: {exc}"
            # traitlets holds this lock while it loads a config or constructor kwargs as one batch
            # (HasTraits.hold_trait_notifications), and only then.
            if not obj._cross_validation_lock:
                raise OptionError(message) from None
            errors[option.name] = message
            # The kernel's own logger may not exist yet while its config loads.
            (getattr(obj, "log", None) or log).error("bad option: %s", message)
            return proposal["value"]
        errors.pop(option.name, None)
        return value

    namespace: dict[str, Any] = {option.name: option.trait() for option in OPTIONS}
    namespace["_validate_option"] = validate(*BY_NAME)(_validate_option)
    return namespace


def config_errors(kernel: object) -> dict[str, str]:
    """The configured values the validators refused (trait name -> one-line message), kept as given."""
    errors: dict[str, str] = getattr(kernel, "__dict__", {}).get("option_errors", {})
    return dict(errors)


# -- documentation ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _flag_doc(option: Option) -> str:
    if option.flag is None:
        return ""
    if option.kind is Kind.BOOL:
        return _code(option.flag)
    value = f"[{option.metavar}]" if option.flag_const is not None else option.metavar
    repeat = " (repeat)" if option.kind in (Kind.DICT, Kind.LIST) else ""
    return _code(f"{option.flag} {value}") + repeat


def _magic_doc(option: Option) -> str:
    if option.attach is not None:
        usages = [f"%attach {option.word} {option.attach.metavar}", *(f"%attach {u}" for u, _ in option.attach.more)]
        return ", ".join(_code(u) for u in usages)
    return _code(option.magic)


def _default_doc(option: Option) -> str:
    if option.doc_default:
        return option.doc_default
    if option.kind is Kind.BOOL:
        return "off"
    return _code(option.render(option.default)) if option.default != "" else option.unset


def markdown() -> str:
    """The README's options table (between its ``options:begin``/``options:end`` markers)."""
    lines = ["| trait | install flag | magic | default | meaning |", "|---|---|---|---|---|"]
    for option in OPTIONS:
        cells = [_code(option.name), _flag_doc(option), _magic_doc(option), _default_doc(option), option.help]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    for option in SPEC_OPTIONS:
        cells = ["", _flag_doc(option), "", _code(option.default), f"kernel.json `{option.name}`: {option.help}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxc_kernel.options", description="Print the kernel's options.")
    p.add_argument("--markdown", action="store_true", help="as the README's options table")
    ns = p.parse_args(argv)
    if ns.markdown:
        sys.stdout.write(markdown())
    else:
        for option in (*OPTIONS, *SPEC_OPTIONS):
            sys.stdout.write(f"{option.name} ({option.kind.value}, default {option.default!r}): {option.help}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
