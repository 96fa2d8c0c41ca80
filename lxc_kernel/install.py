"""Kernelspec dict and the install CLI: ``python -m lxc_kernel.install --container C [options]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from .attach import ELEVATED, NAMESPACES, AttachOptions, env_pairs, parse_flags
from .errors import ConfigError
from .lxc import Tools, validate_name, validate_path

LANGUAGE = "bash"


def kernel_spec(
    *,
    display_name: str,
    python: str = "python",
    traits: dict[str, Any] | None = None,
    interrupt_mode: str = "signal",
) -> dict[str, Any]:
    """The kernel.json for one configuration; traits become ``--LXCKernel.name=value`` flags."""
    argv = [python, "-m", "lxc_kernel", "-f", "{connection_file}"]
    for name, value in (traits or {}).items():
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
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits even with exit_on_error=False in 3.11; raise so callers decide.
        raise ConfigError(f"{message}\n{self.format_usage().strip()}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lxc_kernel.install", description="Install a Jupyter kernelspec for one container.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (venv/conda)")
    where.add_argument("--prefix", metavar="P", help="install under prefix P")
    p.add_argument("--name", help="kernelspec name (default: lxc-CONTAINER)")
    p.add_argument("--display-name", help="name shown in Jupyter (default: 'LXC: CONTAINER')")
    p.add_argument("--container", help="container the shell runs in (required unless --ephemeral)")
    p.add_argument("--lxcpath", help="LXC path (lxc-* -P)")
    p.add_argument("--attach-user", metavar="NAME|UID[:GID]", help="attach as this user")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable (repeatable)")
    p.add_argument("--keep-env", action="append", default=[], metavar="NAME", help="forward a host variable")
    p.add_argument("--cwd", help="working directory inside the container")
    p.add_argument("--shell", help="shell path inside the container (default: bash, else /bin/sh)")
    p.add_argument("--namespaces", help=f"attach only to these namespaces ({'|'.join(NAMESPACES)})")
    p.add_argument("--elevated", help=f"elevated privileges ({'|'.join(ELEVATED)})")
    p.add_argument("--remount-sys-proc", action="store_true", help="lxc-attach -R")
    p.add_argument("--sudo", action="store_true", help="run lxc-* through sudo -n")
    p.add_argument("--colors", action="store_true", help="keep colour codes in output")
    p.add_argument("--stderr", choices=["separate", "merged"], help="stderr as its own stream or merged")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-cell time limit")
    p.add_argument("--output-limit", metavar="SIZE", help="output budget per cell: 200k, 2M, off (default 1M)")
    p.add_argument("--create-missing", nargs="?", const="busybox", choices=["busybox", "hostfs", "debian"],
                   metavar="KIND", help="create the container of KIND (default busybox) if it doesn't exist, "
                   "and start it")
    p.add_argument("--start-stopped", action="store_true", help="start the container if it is stopped")
    p.add_argument("--ephemeral", metavar="BASE",
                   help="each kernel runs in its own throwaway overlay copy of BASE (lxc-copy -e)")
    p.add_argument("--interrupt-mode", choices=["signal", "message"], default="signal")
    return p


def traits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Validate every option as the kernel would, and map it to LXCKernel trait values."""
    if not args.container and not args.ephemeral:
        raise ConfigError("--container is required (or --ephemeral BASE)")
    traits: dict[str, Any] = {"container": validate_name(args.container or args.ephemeral)}
    if args.ephemeral:
        traits["ephemeral"] = validate_name(args.ephemeral, "ephemeral base")
    if args.create_missing:
        traits["create_missing"] = args.create_missing
    if args.start_stopped:
        traits["start_stopped"] = True
    if args.lxcpath:
        traits["lxcpath"] = validate_path(args.lxcpath, "lxcpath")
    if args.attach_user:
        from .users import parse_spec

        parse_spec(args.attach_user)
        traits["user"] = args.attach_user
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    if env:
        traits["env"] = dict(env_pairs(env))
    if args.keep_env:
        env_pairs({name: "" for name in args.keep_env})
        traits["keep_env"] = list(args.keep_env)
    if args.cwd:
        traits["cwd"] = validate_path(args.cwd, "working directory")
    if args.shell:
        traits["shell_path"] = validate_path(args.shell, "shell")
    if args.namespaces:
        traits["namespaces"] = "|".join(parse_flags(args.namespaces, NAMESPACES, "namespace"))
    if args.elevated:
        traits["elevated"] = "|".join(parse_flags(args.elevated, ELEVATED, "privilege"))
    for flag in ("remount_sys_proc", "sudo", "colors"):
        if getattr(args, flag):
            traits[flag] = True
    if args.stderr:
        traits["stderr"] = args.stderr
    if args.timeout is not None:
        if args.timeout < 0:
            raise ConfigError("--timeout must be 0 (none) or more seconds")
        traits["cell_timeout"] = args.timeout
    if args.output_limit is not None:
        from .budget import parse_size

        try:
            parse_size(args.output_limit)
        except ValueError as exc:
            raise ConfigError(f"--output-limit: {exc}") from None
        traits["output_limit"] = args.output_limit
    # One more pass through the value object the kernel itself builds.
    AttachOptions(traits["container"], tools=Tools(lxcpath=traits.get("lxcpath")), env=env_pairs(env))
    return traits


def main(argv: Sequence[str] | None = None) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        traits = traits_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or f"lxc-{args.container or args.ephemeral + '-eph'}".lower()
    if not all(ch.isalnum() or ch in "._-" for ch in name):
        print(f"error: invalid kernelspec name {name!r}", file=sys.stderr)
        return 2
    spec = kernel_spec(
        display_name=args.display_name or (f"LXC: {args.container}" if args.container
                                           else f"LXC: ephemeral copy of {args.ephemeral}"),
        python=sys.executable,
        traits=traits,
        interrupt_mode=args.interrupt_mode,
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
