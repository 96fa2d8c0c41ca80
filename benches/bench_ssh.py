"""``bench.py --transport ssh``: the ssh transport's figures beside its own floors and beside a local lxc-attach.

Prints ONE JSON object on stdout. Needs the hosts of ``.ci/setup-ssh`` (or ``--ssh``/``--ssh-option``)::

    python benches/bench.py --transport ssh [--ssh root@10.99.9.2] [--container lxck-t9s-remote] [--quick]

Both sides run the same kind of container (busybox), so the difference is the transport:

* ``floors``: the raw ssh floor (``ssh -S SOCKET HOST true`` through the ControlMaster, no LXC), ``lxc-attach
  -- true`` over ssh and locally, and one typed ``true`` in a bare shell under a PTY (``ssh -tt ... lxc-attach``
  and local ``lxc-attach``): what any PTY shell over each path costs, without the kernel.
* ``session``: the kernel's ShellSession in-process over each transport: start, ``true``, 15 MB, interrupt.
* ``kernel``: a real kernel through jupyter_client: start to first reply, ``true`` round trip, 15 MB, interrupt.
  Until the kernel has its own ``--ssh`` wiring the ssh kernel is the test-only tests/ssh_kernel.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import bench
from bench import SEQ_N, SEQ_TEXT_LEN, Client, interrupted_sleep, log, rnd, roundtrips, summary

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SSH_DIR = os.environ.get("LXCK_SSH_DIR", "/var/lib/lxck-ssh")


def default_options() -> list[str]:
    return [f"IdentityFile={SSH_DIR}/id_ed25519", "IdentitiesOnly=yes",
            f"UserKnownHostsFile={SSH_DIR}/known_hosts", "StrictHostKeyChecking=yes"]


def pipe_true(argv: list[str], env: dict[str, str], reps: int) -> dict[str, Any]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, timeout=30, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            return {"error": f"{argv[0]} exited {proc.returncode}: {proc.stderr[-200:]!r}", **summary(times)}
    return summary(times)


def raw_shell_true(argv: list[str], env: dict[str, str], reps: int) -> dict[str, Any]:
    """One typed ``true`` and its answer in a bare ``sh`` under a PTY: the floor of a shell round trip."""
    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(argv, cwd="/", env=env, dimensions=(24, 120))
    proc.delayafterclose = proc.delayafterterminate = 0
    buf = bytearray()

    def wait_for(needle: bytes, timeout: float, resend: bytes | None = None) -> bool:
        import select

        deadline = time.monotonic() + timeout
        next_send = time.monotonic()
        while time.monotonic() < deadline:
            if resend is not None and time.monotonic() >= next_send:
                os.write(proc.fd, resend)
                next_send = time.monotonic() + 0.2
            if select.select([proc.fd], [], [], 0.05)[0]:
                try:
                    buf.extend(os.read(proc.fd, 1 << 16))
                except OSError:
                    return False
                idx = buf.find(needle)
                if idx >= 0:
                    del buf[: idx + len(needle)]
                    return True
        return False

    try:
        if not wait_for(b"RDY42", 15.0, resend=b"stty -echo -onlcr; PS1=''; PS2=''; printf 'RDY%s\\n' 42\n"):
            return {"error": "the shell under a PTY did not answer"}
        time.sleep(0.2)
        wait_for(b"\0never", 0.1)
        buf.clear()
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            os.write(proc.fd, f"true; printf 'K%sK\\n' {i}\n".encode())
            if not wait_for(f"K{i}K".encode(), 5.0):
                return {"error": f"no answer to command {i}", **summary(times)}
            times.append(time.perf_counter() - t0)
        return summary(times)
    finally:
        bench._end_pty(proc)


def pty_seq(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``seq 1 2000000`` under a raw PTY through ``argv``, read to end of file: the throughput floor."""
    from ptyprocess import PtyProcess

    t0 = time.perf_counter()
    proc = PtyProcess.spawn(argv, cwd="/", env=env, dimensions=(24, 120))
    proc.delayafterclose = proc.delayafterterminate = 0
    try:
        size, _tail = bench._read_pty_to_eof(proc.fd, 300.0)
        elapsed = time.perf_counter() - t0
    finally:
        bench._end_pty(proc)
    return {"seconds": rnd(elapsed), "bytes": size, "mb_per_s": rnd(size / 1e6 / elapsed, 2)}


def session_figures(transport: Any, reps: int) -> dict[str, Any]:
    """The kernel's ShellSession in-process: start, `true`, the 15 MB cell, interrupt."""
    from lxc_kernel.session import ShellSession

    session = ShellSession(transport, setup=["cd /"])
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        session.start(timeout=20)
        out["start"] = rnd(time.perf_counter() - t0)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            session.run("true", lambda *_: None)
            times.append(time.perf_counter() - t0)
        out["true"] = summary(times)
        got = [0]

        def count(_stream: str, text: str) -> None:
            got[0] += len(text)

        t0 = time.perf_counter()
        result = session.run(f"seq 1 {SEQ_N}", count, timeout=300)
        elapsed = time.perf_counter() - t0
        out["seq_15mb"] = {"seconds": rnd(elapsed), "chars": got[0], "exact_size": got[0] == SEQ_TEXT_LEN,
                           "status": result.status, "mb_per_s": rnd(got[0] / 1e6 / elapsed, 2)}
        lat = []
        for _ in range(3):
            fired: list[float] = []

            def fire(fired: list[float] = fired) -> None:
                fired.append(time.perf_counter())
                session.request_interrupt()

            threading.Timer(0.5, fire).start()
            result = session.run("sleep 100", lambda *_: None, timeout=30)
            if fired and result.interrupted:
                lat.append(time.perf_counter() - fired[0])
        out["interrupt"] = summary(lat)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        session.close()
    return out


def kernel_figures(kernel_name: str, extra: list[str], reps: int) -> dict[str, Any]:
    """A real kernel through jupyter_client: start to first reply, `true`, 15 MB (checked), interrupt."""
    client = Client(kernel_name, extra)
    out: dict[str, Any] = {"kernel_name": kernel_name}
    try:
        t0 = time.perf_counter()
        client.start()
        first = client.execute("true", timeout=60)
        out["start"] = rnd(first.t_reply - t0 if first.t_reply else None)
        if first.status != "ok":
            raise RuntimeError(f"first cell: {first.brief()}")
        out["true"] = roundtrips(client, "true", reps)
        cell = client.execute(f"seq 1 {SEQ_N}", timeout=300)
        text = cell.out()
        out["seq_15mb"] = {"reply": rnd(cell.reply_time), "bytes": len(text), "exact": text == bench.seq_expected(),
                           "mb_per_s": rnd(len(text) / 1e6 / cell.reply_time, 2) if cell.reply_time else None,
                           "status": cell.status}
        del text, cell
        lat = []
        for _ in range(3):
            cell, t_int = interrupted_sleep(client, timeout=20)
            if t_int is not None and cell.t_reply is not None:
                lat.append(cell.t_reply - t_int)
        out["interrupt"] = summary(lat)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        elapsed, leftovers, error = client.shutdown()
        out["shutdown"] = {"seconds": rnd(elapsed), "leftovers": list(leftovers.values()), "error": error}
    return out


def interleaved_true(kernels: dict[str, tuple[str, list[str]]], reps: int) -> dict[str, Any]:
    """`true` round trips on both kernels at once, alternating cell by cell: the load of a shared machine
    drifts within seconds, and alternating gives both sides the same moments."""
    clients = {name: Client(spec, extra) for name, (spec, extra) in kernels.items()}
    times: dict[str, list[float]] = {name: [] for name in clients}
    out: dict[str, Any] = {}
    try:
        for client in clients.values():
            client.start()
            client.execute("true", timeout=60)
        diffs = []
        for i in range(reps + 3):
            got = {}
            for name, client in clients.items():
                cell = client.execute("true", timeout=30)
                if i >= 3 and cell.reply_time is not None and cell.status == "ok":
                    times[name].append(cell.reply_time)
                    got[name] = cell.reply_time
            if len(got) == 2:
                diffs.append(got["ssh"] - got["lxc-attach"])
        out = {name: summary(values) for name, values in times.items()}
        out["difference_of_pairs"] = summary(diffs)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for client in clients.values():
            client.shutdown()
    return out


def ssh_kernelspec(target: str, container: str) -> str:
    """A kernelspec for the test-only ssh kernel in a private directory added to JUPYTER_PATH."""
    root = tempfile.mkdtemp(prefix="lxck-bench-ssh-")
    path = os.path.join(root, "kernels", "lxck-bench-ssh")
    os.makedirs(path)
    with open(os.path.join(path, "kernel.json"), "w") as fh:
        json.dump({
            "argv": [sys.executable, os.path.join(REPO, "tests", "ssh_kernel.py"), "-f", "{connection_file}",
                     f"--LXCKernel.container={container}", "--LXCKernel.output_limit=off"],
            "display_name": "lxc-kernel over ssh (bench)", "language": "bash", "interrupt_mode": "signal",
            "env": {"LXCK_TEST_SSH_TARGET": target,
                    "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)},
        }, fh)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (root, os.environ.get("JUPYTER_PATH")) if p)
    return root


def run(args: Any) -> dict[str, Any]:
    sys.path.insert(0, REPO)
    from lxc_kernel.attach import AttachOptions, LxcAttachTransport
    from lxc_kernel.lxc import Tools
    from lxc_kernel.ssh import SshLink, SshTransport, parse_target

    quick = args.quick
    reps = {"pipe": 10 if quick else 30, "shell": 50 if quick else 200, "kernel": 30 if quick else 200}
    remote = args.container if args.container_given else "lxck-t9s-remote"
    local = args.local_container
    options = args.ssh_option or default_options()
    result: dict[str, Any] = {"bench": "lxc-kernel --transport ssh", "quick": quick, "repetitions": reps,
                              "ssh": args.ssh, "remote_container": remote, "local_container": local,
                              "host": bench.host_info(local)}
    link = SshLink(parse_target(args.ssh), options=options)
    t0 = time.perf_counter()
    link.open()
    result["link_open"] = rnd(time.perf_counter() - t0)
    spec_root = None
    try:
        env = link.env()
        attach = ["lxc-attach", "-n", remote, "--clear-env", "--", "true"]
        shell = ["lxc-attach", "-n", remote, "--clear-env", "-v", "TERM=dumb", "--", "/bin/sh"]
        local_shell = ["lxc-attach", "-n", local, "--clear-env", "-v", "TERM=dumb", "--", "/bin/sh"]
        log("floors")
        result["floors"] = {
            "ssh_mux_true": pipe_true(link.wrap(["true"], tty=False), env, reps["pipe"]),
            "ssh_lxc_attach_true": pipe_true(link.wrap(attach, tty=False), env, reps["pipe"]),
            "local_lxc_attach_true": pipe_true(["lxc-attach", "-n", local, "--clear-env", "--", "true"],
                                               dict(bench.TOOL_ENV), reps["pipe"]),
            "ssh_pty_shell_true": raw_shell_true(link.wrap(shell, tty=True), env, reps["shell"]),
            "local_pty_shell_true": raw_shell_true(local_shell, dict(bench.TOOL_ENV), reps["shell"]),
            "ssh_pty_seq_15mb": pty_seq(link.wrap(["lxc-attach", "-n", remote, "--clear-env", "--", "seq", "1",
                                                   str(SEQ_N)], tty=True), env),
            "local_pty_seq_15mb": pty_seq(["lxc-attach", "-n", local, "--clear-env", "--", "seq", "1", str(SEQ_N)],
                                          dict(bench.TOOL_ENV)),
        }
        log("session in-process")
        result["session"] = {
            "ssh": session_figures(SshTransport(link, AttachOptions(remote, tools=Tools(remote=link))), reps["shell"]),
            "lxc-attach": session_figures(LxcAttachTransport(AttachOptions(local)), reps["shell"]),
        }
        log("kernels")
        spec_root = ssh_kernelspec(args.ssh, remote)
        local_kernel = (args.kernel, [f"--LXCKernel.container={local}", "--LXCKernel.output_limit=off"])
        result["kernel"] = {
            "ssh": kernel_figures("lxck-bench-ssh", [], reps["kernel"]),
            "lxc-attach": kernel_figures(*local_kernel, reps["kernel"]),
        }
        log("kernels side by side")
        result["kernel_true_interleaved"] = interleaved_true({"ssh": ("lxck-bench-ssh", []),
                                                              "lxc-attach": local_kernel}, reps["kernel"])
    finally:
        link.close()
        if spec_root:
            import shutil

            shutil.rmtree(spec_root, ignore_errors=True)

    def med(*path: str) -> float | None:
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return round(node * 1000, 3) if isinstance(node, (int, float)) else None

    ssh_true, local_true = med("kernel_true_interleaved", "ssh", "median"), med("kernel_true_interleaved",
                                                                                  "lxc-attach", "median")
    diff = round(ssh_true - local_true, 3) if ssh_true is not None and local_true is not None else None
    result["summary_ms"] = {
        "kernel_true_ssh (interleaved)": ssh_true,
        "kernel_true_lxc_attach (interleaved)": local_true,
        "kernel_true_difference": diff,
        "kernel_true_median_of_pair_differences": med("kernel_true_interleaved", "difference_of_pairs", "median"),
        "target_within_2ms": None if diff is None else diff <= 2.0,
        "kernel_true_ssh (own run)": med("kernel", "ssh", "true", "reply", "median"),
        "kernel_true_lxc_attach (own run)": med("kernel", "lxc-attach", "true", "reply", "median"),
        "session_true_ssh": med("session", "ssh", "true", "median"),
        "session_true_lxc_attach": med("session", "lxc-attach", "true", "median"),
        "floor_pty_shell_true_ssh": med("floors", "ssh_pty_shell_true", "median"),
        "floor_pty_shell_true_local": med("floors", "local_pty_shell_true", "median"),
        "floor_ssh_mux_true": med("floors", "ssh_mux_true", "median"),
        "kernel_start_ssh": med("kernel", "ssh", "start"),
        "kernel_start_lxc_attach": med("kernel", "lxc-attach", "start"),
        "floor_pty_seq_15mb_ssh": med("floors", "ssh_pty_seq_15mb", "seconds"),
        "floor_pty_seq_15mb_local": med("floors", "local_pty_seq_15mb", "seconds"),
        "kernel_seq_15mb_ssh": med("kernel", "ssh", "seq_15mb", "reply"),
        "kernel_seq_15mb_lxc_attach": med("kernel", "lxc-attach", "seq_15mb", "reply"),
        "kernel_interrupt_ssh": med("kernel", "ssh", "interrupt", "median"),
        "kernel_interrupt_lxc_attach": med("kernel", "lxc-attach", "interrupt", "median"),
    }
    with contextlib.suppress(Exception):
        result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result
