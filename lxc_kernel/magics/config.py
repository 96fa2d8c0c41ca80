"""``%lxc`` config and limits: limit (memory, cpu, cpuset, show), config get/set, log."""

from __future__ import annotations

import argparse

from ..backends.classic import check_limit
from ..errors import ConfigError
from ..lxc import State, validate_config_value
from .core import Host, MagicFailed, MagicParser, UsageError, lxc_subcommand, require_state, say, target_name


def _limit_args(li: MagicParser) -> None:
    li.add_argument("what", choices=["memory", "cpu", "cpuset", "show"])
    li.add_argument("value", nargs="?")
    li.add_argument("-n", "--name")
    li.add_argument("--persist", action="store_true")


@lxc_subcommand("limit", """
    %lxc limit memory 512M|off  /  cpu 0.5|off  /  cpuset 0-1  /  show   [-n NAME] [--persist]
                                       lxc: live through cgroups; --persist also writes the config.
                                       incus/lxd: limits.memory, limits.cpu.allowance (cpu),
                                       limits.cpu (cpuset), live and kept in the config
""", arguments=_limit_args, topic="config")
def lxc_limit(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    if ns.what == "show":
        require_state(host, name, State.RUNNING)
        say(host, "\n".join(f"{k}: {v}" for k, v in backend.limits(name)))
        return
    if ns.value is None:
        raise UsageError(f"%lxc limit {ns.what}: which value?")
    try:
        check_limit(ns.what, ns.value)  # refuse a bad value before any tool runs
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    state = require_state(host, name)
    if backend.name == "lxc" and state is not State.RUNNING and not ns.persist:
        raise MagicFailed(f"{name} is {state.value}: a live limit needs it RUNNING; add --persist to "
                          "write it to the config for the next start")
    done = backend.set_limit(name, ns.what, ns.value, persist=ns.persist)
    say(host, f"{name}: " + "; ".join(done.done))


def _config_args(cf: MagicParser) -> None:
    cf.add_argument("action", choices=["get", "set"])
    cf.add_argument("key")
    cf.add_argument("value", nargs="?")
    cf.add_argument("-n", "--name")


@lxc_subcommand("config", """
    %lxc config get KEY [-n NAME]  /  %lxc config set KEY VALUE [-n NAME]
                                       lxc: set writes the config file, for the next start;
                                       incus/lxd: instance keys (limits.*, security.*, user.*)
""", arguments=_config_args, topic="config")
def lxc_config(host: Host, ns: argparse.Namespace) -> None:
    backend = host.lifecycle
    name = target_name(host, ns.name)
    backend.validate_config_key(ns.key)
    require_state(host, name)
    if ns.action == "get":
        if ns.value is not None:
            raise UsageError("%lxc config get KEY: no value expected")
        say(host, f"{ns.key} = {backend.config_get(name, ns.key)}")
        return
    if ns.value is None:
        raise UsageError("%lxc config set KEY VALUE: which value?")
    said = backend.config_set(name, ns.key, validate_config_value(ns.value))
    say(host, f"{name}: {ns.key} = {ns.value} {said}")


def _log_args(lg: MagicParser) -> None:
    lg.add_argument("name", nargs="?")
    lg.add_argument("--lines", type=int, default=40)
    lg.add_argument("--level", type=str.upper,
                    choices=["TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "ERROR", "CRIT", "ALERT", "FATAL"])


@lxc_subcommand("log", """
    %lxc log [NAME] [--lines N] [--level LEVEL]
                                       tail of the container's log; --level sets lxc.log.level
                                       (and a log file) for the next start (lxc only)
""", arguments=_log_args, takes_container=True, topic="config")
def lxc_log(host: Host, ns: argparse.Namespace) -> None:
    if ns.lines < 1:
        raise UsageError("%lxc log --lines N: N must be at least 1")
    name = target_name(host, ns.name)
    require_state(host, name)
    where, tail, note = host.lifecycle.log(name, ns.lines, ns.level)
    if note:
        say(host, note)
    if tail or not note:
        say(host, f"==> {where} (last {len(tail)} lines) <==\n" + "\n".join(tail))
