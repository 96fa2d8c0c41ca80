"""The jupyter_kernel_test conformance suite, against the busybox and the bash container (lxc-attach), and over
every other way in (frontend_ways: Incus here, on the other cluster member, through the TLS remote, LXD, ssh)."""

from __future__ import annotations

import unittest

import frontend_ways
import jupyter_kernel_test as jkt
import pytest
from conftest import install_test_kernelspecs

pytestmark = pytest.mark.timeout(120)


class _LxcKernelTests(jkt.KernelTests):
    kernel_name = ""
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    code_stderr = "echo 'oops' >&2"
    code_generate_error = "false"
    # Inspection and is_complete (issue 4): answered by the live shell / the host's bash -n.
    # Completion (issue 12): a command, a variable, a directory and a file after a command (in bash through
    # the command's bash-completion spec), a path as the first word.
    completion_samples = [  # noqa: RUF012
        {"text": "ech", "matches": {"echo"}},
        {"text": "echo $HOM", "matches": {"$HOME"}},
        {"text": "ls /et", "matches": {"/etc/"}},
        {"text": "cat /etc/pas", "matches": {"/etc/passwd"}},
        {"text": "/etc/gro", "matches": {"/etc/group"}},
    ]
    complete_code_samples = ["echo hi", "for i in 1 2; do echo $i; done", "cat <<EOF\nx\nEOF"]  # noqa: RUF012
    incomplete_code_samples = ["for i in 1 2; do", "echo 'unclosed", "cat <<EOF\nx", "if true; then"]  # noqa: RUF012
    invalid_code_samples = ["fi", "done", ")"]  # noqa: RUF012
    code_inspect_sample = "cd"
    # Rich output through the in-container helper (display.py).
    code_display_data = [  # noqa: RUF012
        {"code": "echo '<b>bold</b>' | jdisplay --html", "mime": "text/html"},
        {"code": "echo '# Title' | jdisplay --markdown", "mime": "text/markdown"},
    ]

    @classmethod
    def setUpClass(cls) -> None:
        if not cls.kernel_name:
            raise unittest.SkipTest("abstract base")
        install_test_kernelspecs()
        super().setUpClass()


class TestBusyboxConformance(_LxcKernelTests):
    kernel_name = "lxck-test-sh"


class TestBashConformance(_LxcKernelTests):
    kernel_name = "lxck-test-bash"


class _OverAWay(_LxcKernelTests):
    """The same suite, with a kernelspec installed for one way in and its own instance (made and deleted here)."""

    way = ""

    @classmethod
    def setUpClass(cls) -> None:
        if not cls.way:
            raise unittest.SkipTest("abstract base")
        if reason := frontend_ways.missing(cls.way):
            raise unittest.SkipTest(reason)
        cls.kernel_name = frontend_ways.prepare(cls.way, "c")
        try:
            super().setUpClass()
        except BaseException:
            frontend_ways.cleanup(cls.way, "c")
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            frontend_ways.cleanup(cls.way, "c")


for _way in frontend_ways.WAYS:
    _name = "TestConformance_" + _way.replace("-", "_")
    globals()[_name] = type(_name, (_OverAWay,), {"way": _way, "kernel_name": "", "__module__": __name__})

del _LxcKernelTests, _OverAWay  # keep pytest from collecting the abstract bases
