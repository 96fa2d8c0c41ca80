#!/usr/bin/env python3
"""Unprivileged against privileged containers: create, start and attach times per kind. Prints ONE JSON object.

    python3 benches/unpriv.py [--runs 3] [--debian-runs 2] [--kinds busybox,hostfs,debian]

For each kind and each privilege, ``--runs`` times: ``provision(NAME, KIND, start=False, privileged=...)``
(create, with the rootfs shift for unprivileged hostfs and debian), ``Container.start`` to RUNNING, and
``lxc-attach -- true`` over pipes (the median of 10), then destroy. Containers are named
``lxck-t8u-bench-...`` and destroyed whatever happens. debian needs ``/var/cache/lxc/debian`` filled to be
measured in seconds (the first create downloads). Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

from lxc_kernel import provision
from lxc_kernel.lxc import TOOL_ENV, Container

PREFIX = "lxck-t8u-bench-"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def one(kind: str, privileged: bool) -> dict[str, Any]:
    name = f"{PREFIX}{kind[:3]}-{'p' if privileged else 'u'}-{secrets.token_hex(2)}"
    try:
        t0 = time.monotonic()
        done = provision.provision(name, kind, start=False, privileged=privileged, timeout=60)
        create = time.monotonic() - t0
        assert (done.idmap is None) == privileged, done
        t0 = time.monotonic()
        Container(name).start(60)
        start = time.monotonic() - t0
        attaches = []
        for _ in range(10):
            t0 = time.monotonic()
            subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "true"], check=True, env=TOOL_ENV,
                           stdin=subprocess.DEVNULL, timeout=30)
            attaches.append(time.monotonic() - t0)
        return {"create_ms": _ms(create), "start_ms": _ms(start), "attach_ms": _ms(statistics.median(attaches))}
    finally:
        provision.destroy_container(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--debian-runs", type=int, default=2)
    parser.add_argument("--kinds", default="busybox,hostfs,debian")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    out: dict[str, Any] = {
        "host": {"nproc": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "kinds": {},
    }
    for kind in args.kinds.split(","):
        runs = args.debian_runs if kind == "debian" else args.runs
        per: dict[str, Any] = {}
        for privileged in (False, True):
            label = "privileged" if privileged else "unprivileged"
            samples = []
            for i in range(runs):
                print(f"{kind} {label} run {i + 1}/{runs}", file=sys.stderr)
                samples.append(one(kind, privileged))
            per[label] = {key: {"median": statistics.median(s[key] for s in samples),
                                "all": [s[key] for s in samples]} for key in samples[0]}
        out["kinds"][kind] = per
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
