"""Launch the kernel: ``python -m lxc_kernel -f CONNECTION_FILE [--LXCKernel.container=NAME ...]``."""

from ipykernel.kernelapp import IPKernelApp

from .kernel import LXCKernel

IPKernelApp.launch_instance(kernel_class=LXCKernel)
