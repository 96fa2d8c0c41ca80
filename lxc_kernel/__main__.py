"""Launch the kernel: ``python -m lxc_kernel -f CONNECTION_FILE [--LXCKernel.container=NAME ...]``."""

from .kernel import LXCKernel, LXCKernelApp

LXCKernelApp.launch_instance(kernel_class=LXCKernel)
