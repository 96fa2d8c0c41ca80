"""Kernelspec dict and the install CLI: ``python -m lxc_kernel.install --container C [options]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError
from .options import OPTIONS, SPEC_OPTIONS, Kind, Option, pairs

LANGUAGE = "bash"


def kernel_spec(
    *,
    display_name: str,
    python: str = "python",
    traits: dict[str, Any] | None = None,
    interrupt_mode: str = "signal",
) -> dict[str, Any]:
    """The kernel.json for one configuration; traits become ``--LXCKernel.name=value`` flags, except the
    values of ``env``: every user of the host reads a command line (``ps``), so they go in kernel.json's
    ``env`` (the kernel's environment, readable only by its user and root) and the kernel forwards them
    to the shell by name (``keep_env``)."""
    argv = [python, "-m", "lxc_kernel", "-f", "{connection_file}"]
    traits = dict(traits or {})
    spec_env: dict[str, str] = dict(traits.pop("env", None) or {})
    if spec_env:
        kept = list(traits.get("keep_env") or [])
        traits["keep_env"] = kept + [name for name in spec_env if name not in kept]
    for name, value in traits.items():
        if isinstance(value, dict):
            argv += [f"--LXCKernel.{name}={key}={val}" for key, val in value.items()]
        elif isinstance(value, list):
            argv += [f"--LXCKernel.{name}={item}" for item in value]
        elif isinstance(value, bool):
            argv.append(f"--LXCKernel.{name}={'True' if value else 'False'}")
        else:
            argv.append(f"--LXCKernel.{name}={value}")
    return {
        "argv": argv,
        "display_name": display_name,
        "language": LANGUAGE,
        "interrupt_mode": interrupt_mode,
        "metadata": {"debugger": False},
        **({"env": spec_env} if spec_env else {}),
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits even with exit_on_error=False in 3.11; raise so callers decide.
        raise ConfigError(f"{message}\n{self.format_usage().strip()}")


def _add_flag(p: argparse.ArgumentParser, option: Option, note: str = "") -> None:
    """The install flag of one option, as the table declares it; values stay text until traits_from_args."""
    assert option.flag is not None
    help_text = (option.help + note).replace("%", "%%")  # argparse %-formats help strings
    if option.kind is Kind.BOOL:
        p.add_argument(option.flag, dest=option.dest, action="store_true", help=help_text)
    elif option.kind in (Kind.DICT, Kind.LIST):
        p.add_argument(option.flag, dest=option.dest, action="append", default=[], metavar=option.metavar,
                       help=help_text + " (repeatable)")
    elif option.flag_const is not None:
        p.add_argument(option.flag, dest=option.dest, nargs="?", const=option.flag_const, metavar=option.metavar,
                       help=help_text)
    else:
        p.add_argument(option.flag, dest=option.dest, metavar=option.metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lxc_kernel.install", description="Install a Jupyter kernelspec for one container.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (venv/conda)")
    where.add_argument("--prefix", metavar="P", help="install under prefix P")
    p.add_argument("--name", help="kernelspec name (default: lxc-CONTAINER)")
    p.add_argument("--display-name", help="name shown in Jupyter (default: 'LXC: CONTAINER')")
    for option in (*OPTIONS, *SPEC_OPTIONS):
        if option.flag is not None:
            _add_flag(p, option, " (required unless --ephemeral)" if option.name == "container" else "")
    return p


def _flag_value(option: Option, given: Any) -> Any:
    """What the user gave for one flag, through the option's own validator; ConfigError names the flag."""
    try:
        if option.kind is Kind.BOOL:
            return option.check(given)
        if option.kind is Kind.DICT:
            return option.check(pairs(given))
        if option.kind is Kind.LIST:
            return option.check(given)
        return option.parse(given)
    except ConfigError as exc:
        raise ConfigError(f"{option.flag}: {exc}") from None


def _given(args: argparse.Namespace, option: Option) -> bool:
    value = getattr(args, option.dest)
    return value not in (None, False, [])


def traits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Validate every option as the kernel would (the same validators), and map it to LXCKernel trait values.

    Only the options given become traits: the kernelspec stays short, and the kernel's defaults apply,
    except that ``--attach-user`` without ``--magics`` writes ``magics=safe``.
    """
    if not args.container and not args.ephemeral:
        raise ConfigError("--container is required (or --ephemeral BASE)")
    traits = {o.name: _flag_value(o, getattr(args, o.dest)) for o in OPTIONS if o.flag and _given(args, o)}
    if "user" in traits and "display" not in traits:
        # A spec that attaches as a named user serves people who should not own each other's browser:
        # rich output is sanitized unless the installer asks for `--display all`.
        traits["display"] = "safe"
    if "user" in traits and "magics" not in traits:
        # A spec that attaches as an unprivileged user is meant to keep cells away from the host:
        # under `all`, `%attach user root` or `%push /etc/shadow` would undo that in one line (issue 8).
        traits["magics"] = "safe"
    # The options taken together: a name the chosen backend accepts, a project only on incus/lxd, ssh only
    # on the classic backend... (the kernel runs the same check before its first shell).
    from .backends import check_settings

    if errors := check_settings(traits):
        raise ConfigError("; ".join(errors))
    # An ephemeral kernel names its base as the container too, so `%lxc` commands have a default before the copy.
    return {"container": traits.pop("container", None) or traits["ephemeral"], **traits}


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The kernel.json fields that are not traits (``interrupt_mode``), validated like the traits."""
    return {o.name: _flag_value(o, getattr(args, o.dest)) for o in SPEC_OPTIONS if _given(args, o)}


def main(argv: Sequence[str] | None = None) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        traits = traits_from_args(args)
        fields = spec_fields(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or f"lxc-{args.container or args.ephemeral + '-eph'}".lower().replace(":", "-")
    if not all(ch.isalnum() or ch in "._-" for ch in name):
        print(f"error: invalid kernelspec name {name!r}", file=sys.stderr)
        return 2
    label = {"incus": "Incus", "lxd": "LXD"}.get(args.backend or "", "LXC")
    spec = kernel_spec(
        display_name=args.display_name or (f"{label}: {args.container}" if args.container
                                           else f"{label}: ephemeral copy of {args.ephemeral}"),
        python=sys.executable,
        traits=traits,
        interrupt_mode=fields.get("interrupt_mode", "signal"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as fh:
            json.dump(spec, fh, indent=1)
        prefix = sys.prefix if args.sys_prefix else args.prefix
        dest = KernelSpecManager().install_kernel_spec(tmp, name, user=args.user, prefix=prefix)
    print(f"Installed kernelspec {name} in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
