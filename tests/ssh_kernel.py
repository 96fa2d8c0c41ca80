"""A test-only kernel: LXCKernel with its shell and every lxc-* call on another host through an ssh link.

Until the kernel has its own ``--ssh`` wiring, this proves a real kernel (Jupyter messaging, cells, the
watchdog, shutdown) runs over :class:`~lxc_kernel.ssh.SshTransport`. Launched by a kernelspec that
tests/test_ssh_faults.py writes: ``python tests/ssh_kernel.py -f CONNECTION_FILE --LXCKernel.container=NAME``,
with the target in ``LXCK_TEST_SSH_TARGET``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sshhost

from lxc_kernel import kernel as kernel_module
from lxc_kernel.kernel import LXCKernel, LXCKernelApp
from lxc_kernel.lxc import Tools
from lxc_kernel.ssh import SshLink, SshTransport, parse_target


class SshTestKernel(LXCKernel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link = SshLink(parse_target(os.environ["LXCK_TEST_SSH_TARGET"]), options=sshhost.options())

    @property
    def tools(self) -> Tools:
        return Tools(lxcpath=self.lxcpath or None, sudo=self.sudo, remote=self._link)

    def ensure_session(self, **kw: Any) -> Any:
        if not self._link.alive():
            self._link.open()
            if self._watchdog is not None:
                # The master is recorded now, and its control directory goes if this kernel dies.
                self._watchdog.scan()
                if self._link.control_dir:
                    self._watchdog.spill_dir(self._link.control_dir)
        session = super().ensure_session(**kw)
        if self._watchdog is not None and session.info is not None and session is not getattr(self, "_told", None):
            # If this kernel dies, its watchdog ends the shell's jobs inside, through the link, first.
            self._watchdog.on_death("shell", session.transport.end_shell_argv(session.info.pid))  # type: ignore
            self._told = session
        return session

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        reply = await super().do_shutdown(restart)
        self._link.close()
        return reply


# The kernel builds its transport by this name: here it is the ssh transport over the kernel's link.
kernel_module.LxcAttachTransport = lambda options: SshTransport(options.tools.remote, options)  # type: ignore

if __name__ == "__main__":
    LXCKernelApp.launch_instance(kernel_class=SshTestKernel)
