"""A test launcher: the real kernel with its shell through ``ExecTransport`` (``incus exec``) instead of
lxc-attach, injected by hand, to prove cells work end to end before the backend trait wires it in.

``python -m incus_kernel -f CONNECTION_FILE --LXCKernel.container=INSTANCE`` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import json
import subprocess

import lxc_kernel.kernel as kernel_module
from lxc_kernel.errors import ContainerNotReady
from lxc_kernel.exec_transport import ExecTransport
from lxc_kernel.lxc import State


class Instance:
    """What the kernel asks of its container before attaching, answered by the Incus daemon."""

    def __init__(self, name: str) -> None:
        self.name = name

    def state(self) -> State:
        res = subprocess.run(["incus", "query", f"/1.0/instances/{self.name}/state"], capture_output=True,
                             text=True, timeout=30)
        status = json.loads(res.stdout)["status"] if res.returncode == 0 else ""
        return {"Running": State.RUNNING, "Frozen": State.FROZEN}.get(status, State.STOPPED)

    def require_running(self) -> None:
        state = self.state()
        if state is not State.RUNNING:
            raise ContainerNotReady(self.name, state.value.lower(), "start it")


class IncusKernel(kernel_module.LXCKernel):
    def target(self) -> Instance:  # type: ignore[override]
        return Instance(self.container)

    def prepare_container(self) -> None:
        """The instance is made by the test."""


kernel_module.LxcAttachTransport = ExecTransport  # type: ignore[misc,assignment]

if __name__ == "__main__":
    kernel_module.LXCKernelApp.launch_instance(kernel_class=IncusKernel)
