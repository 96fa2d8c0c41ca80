"""The install CLI writes kernelspecs and refuses bad options before anything reaches lxc-*."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lxc_kernel.install import kernel_spec


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lxc_kernel.install", *args], capture_output=True, text=True)


def test_writes_a_kernelspec_with_options(tmp_path: Path) -> None:
    proc = _install(
        "--prefix", str(tmp_path), "--name", "web1", "--container", "web-1", "--attach-user", "student",
        "--env", "A=1 2", "--keep-env", "HTTP_PROXY", "--cwd", "/srv", "--stderr", "merged", "--colors",
        "--interrupt-mode", "message", "--timeout", "30",
    )
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/web1/kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["argv"][1:4] == ["-m", "lxc_kernel", "-f"]
    assert spec["language"] == "bash" and spec["interrupt_mode"] == "message"
    for flag in [
        "--LXCKernel.container=web-1", "--LXCKernel.user=student", "--LXCKernel.keep_env=A",
        "--LXCKernel.keep_env=HTTP_PROXY", "--LXCKernel.cwd=/srv", "--LXCKernel.stderr=merged",
        "--LXCKernel.colors=True", "--LXCKernel.cell_timeout=30.0",
    ]:
        assert flag in spec["argv"]
    assert spec["env"] == {"A": "1 2"}  # an --env value never goes on the kernel's command line (issue 8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--container", "a;b"], "invalid container name"),
        (["--container", "c1", "--env", "NOEQUALS"], "KEY=VALUE"),
        (["--container", "c1", "--namespaces", "MOUNT|BOGUS"], "unknown namespace"),
        (["--container", "c1", "--cwd", "relative/path"], "absolute"),
        (["--container", "c1", "--attach-user", "x;y"], "invalid user"),
        (["--container", "c1", "--bogus"], "unrecognized arguments"),
        (["--container", "c1", "--timeout", "-1"], "--timeout: must be 0 (none) or more seconds"),
        (["--container", "c1", "--output-limit", "lots"], "--output-limit: not a size"),
        (["--container", "c1", "--stderr", "sideways"], "--stderr: 'sideways' is not one of separate, merged"),
        (["--container", "c1", "--create-missing", "arch"], "--create-missing: unknown kind 'arch'"),
        (["--container", "c1", "--interrupt-mode", "never"], "--interrupt-mode: 'never' is not one of"),
        ([], "required"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _install("--prefix", str(tmp_path), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "share").exists()


def test_only_given_flags_become_traits(tmp_path: Path) -> None:
    proc = _install("--prefix", str(tmp_path), "--name", "eph", "--ephemeral", "base", "--create-missing")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/eph/kernel.json").read_text())
    assert spec["argv"][5:] == ["--LXCKernel.container=base", "--LXCKernel.create_missing=busybox",
                                "--LXCKernel.ephemeral=base"]
    assert spec["interrupt_mode"] == "signal" and spec["display_name"] == "LXC: ephemeral copy of base"


def test_default_kernelspec_is_registered_by_pip_install() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("lxc")
    assert spec.argv[:3] == ["python", "-m", "lxc_kernel"] and spec.language == "bash"
    # zero setup: the default container is created (GNU bash, no download) and started on demand
    assert "--LXCKernel.create_missing=hostfs" in spec.argv and "--LXCKernel.start_stopped=True" in spec.argv


def test_kernel_spec_dict() -> None:
    spec = kernel_spec(display_name="X", traits={"container": "c", "env": {"A": "1"}, "sudo": True})
    assert "--LXCKernel.sudo=True" in spec["argv"]
    # env values stay off the kernel's command line (issue 8): kernel.json's env, forwarded by name
    assert spec["env"] == {"A": "1"} and "--LXCKernel.keep_env=A" in spec["argv"]
    assert not any("A=1" in arg for arg in spec["argv"])
