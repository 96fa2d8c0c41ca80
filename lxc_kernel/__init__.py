"""lxc-kernel: a Jupyter kernel that runs notebook cells in a persistent shell inside an LXC container."""

__version__ = "0.1.0"
