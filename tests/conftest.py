"""Shared fixtures: the two real test containers, kernelspecs pointing at them, and a client helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from lxc_kernel.install import kernel_spec
from lxc_kernel.provision import ensure_container
from lxc_kernel.session import descendants  # noqa: F401 - re-exported for tests

SH = os.environ.get("LXCK_TEST_SH", "lxck-test-sh")
BASH = os.environ.get("LXCK_TEST_BASH", "lxck-test-bash")
CONTAINERS = {"sh": SH, "bash": BASH}


_ENSURED = False


def ensure_test_containers() -> dict[str, str]:
    """The busybox and bash containers the project's setup script creates (idempotent, once per run)."""
    global _ENSURED
    if not _ENSURED:
        ensure_container(SH, "busybox")
        ensure_container(BASH, "hostfs")
        _ENSURED = True
    return dict(CONTAINERS)


@pytest.fixture(scope="session")
def containers() -> dict[str, str]:
    return ensure_test_containers()


_SPECS_DIR: str | None = None


def install_test_kernelspecs() -> str:
    """Kernelspecs `lxck-test-sh` / `lxck-test-bash` (and a message-mode one), written by the install
    CLI into a private prefix that JUPYTER_PATH points at. Idempotent within a test run."""
    global _SPECS_DIR
    if _SPECS_DIR is None:
        ensure_container(SH, "busybox")
        ensure_container(BASH, "hostfs")
        prefix = tempfile.mkdtemp(prefix="lxck-specs-")
        specs = [
            ("lxck-test-sh", SH, []),
            ("lxck-test-bash", BASH, []),
            ("lxck-test-bash-msg", BASH, ["--interrupt-mode", "message"]),
        ]
        for name, container, extra in specs:
            subprocess.run(
                [sys.executable, "-m", "lxc_kernel.install", "--prefix", prefix, "--name", name,
                 "--container", container, *extra],
                check=True, capture_output=True,
            )
        _SPECS_DIR = os.path.join(prefix, "share", "jupyter")
        plain = os.path.join(_SPECS_DIR, "kernels", "lxck-test-plain")
        os.makedirs(plain)
        with open(os.path.join(plain, "kernel.json"), "w") as fh:
            json.dump(kernel_spec(display_name="lxc-kernel tests"), fh)
    os.environ["JUPYTER_PATH"] = _SPECS_DIR
    return _SPECS_DIR


@pytest.fixture(scope="session")
def jupyter_path(containers: dict[str, str]) -> str:
    return install_test_kernelspecs()


@dataclass
class Result:
    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    def stream(self, name: str = "stdout") -> str:
        return "".join(
            m["content"]["text"] for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == msg_type]


def execute(kc: BlockingKernelClient, code: str, timeout: float = 30, **kw: Any) -> Result:
    """Run ``code`` and collect its iopub messages up to idle, plus the reply."""
    start = time.monotonic()
    msg_id = kc.execute(code, **kw)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status":
            if msg["content"]["execution_state"] == "idle":
                break
            continue
        if msg["msg_type"] != "execute_input":
            messages.append(msg)
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return Result(reply, messages, time.monotonic() - start)


class Kernel:
    """A started kernel with its manager and client."""

    def __init__(self, kernel_name: str = "lxc", extra: list[str] | None = None, env: dict[str, str] | None = None):
        self.km = KernelManager(kernel_name=kernel_name)
        kw: dict[str, Any] = {"extra_arguments": extra or []}
        if env is not None:
            kw["env"] = env
        self.km.start_kernel(**kw)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=30)

    def execute(self, code: str, timeout: float = 30, **kw: Any) -> Result:
        return execute(self.kc, code, timeout, **kw)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def start_kernel(container: str, *extra: str, env: dict[str, str] | None = None) -> Kernel:
    """A kernel like the shipped `lxc` spec but without its zero-setup defaults (create a missing
    container, start a stopped one), so that the tests see what a missing or stopped container does.
    (traitlets refuses a second value for the same option, so they can't be overridden per kernel.)"""
    install_test_kernelspecs()
    return Kernel("lxck-test-plain", [f"--LXCKernel.container={container}", *extra], env=env)


@pytest.fixture(params=["sh", "bash"], scope="module")
def kernel(request: pytest.FixtureRequest, containers: dict[str, str]) -> Iterator[Kernel]:
    """One kernel per module and shell kind (busybox ash, GNU bash)."""
    k = start_kernel(containers[request.param])
    k.kind = request.param  # type: ignore[attr-defined]
    yield k
    k.shutdown()


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
