"""The notebooks in notebooks/, executed the way batch users run them: nbclient and nbconvert; the quickstart
also over every other way in (frontend_ways: Incus here, on the other cluster member, the TLS remote, LXD, ssh)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import frontend_ways
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

pytestmark = pytest.mark.timeout(300)


def _outputs(nb: nbformat.NotebookNode, kind: str = "stream") -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if out.output_type == kind
    )


@pytest.fixture(scope="module", params=list(frontend_ways.WAYS))
def way_spec(request: pytest.FixtureRequest) -> Iterator[str]:
    """A kernelspec over one way in, with its own instance for this module."""
    if reason := frontend_ways.missing(request.param):
        pytest.skip(reason)
    try:
        yield frontend_ways.prepare(request.param, "n")
    finally:
        frontend_ways.cleanup(request.param, "n")


def test_quickstart_runs_over_each_way(way_spec: str) -> None:
    run_quickstart(way_spec)


@pytest.mark.parametrize("kernel_name", ["lxck-test-sh", "lxck-test-bash"])
def test_quickstart_runs_in_nbclient(jupyter_path: str, kernel_name: str) -> None:
    run_quickstart(kernel_name)


def run_quickstart(kernel_name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=60).execute()
    text = _outputs(nb)
    assert "HELLO FROM /TMP" in text
    assert "to stderr" in text
    assert "\x1b" not in text and "green text without escape codes" in text
    assert "ünïcödé ✓" in text
    assert "the kernel is still in sync" in text
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 2  # the two cells tagged raises-exception


@pytest.mark.parametrize("kernel_name", ["lxck-test-sh", "lxck-test-bash"])
def test_failing_notebook_fails_nbconvert(jupyter_path: str, kernel_name: str, tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
        f"--ExecutePreprocessor.kernel_name={kernel_name}", "--output-dir", str(tmp_path),
        str(NOTEBOOKS / "failing.ipynb"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "exit status 1" in proc.stderr
    allowed = subprocess.run([*argv, "--allow-errors"], capture_output=True, text=True, timeout=240)
    assert allowed.returncode == 0, allowed.stderr
    nb = nbformat.read(tmp_path / "failing.ipynb", as_version=4)
    assert "not reached" in _outputs(nb)
