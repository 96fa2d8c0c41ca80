"""JupyterLab in headless Chromium (Debian's, driven by Playwright): run, complete, interrupt, display.

Slow (a Lab server and a browser), but it runs in CI. Screenshots go to ``artifacts/browser/``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASH, install_test_kernelspecs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
KERNEL = "lxck-test-bash"


def _png(width: int = 48, height: int = 32) -> bytes:
    """A small solid-colour PNG, so the screenshot shows something."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xd0\x30\x60" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/setup does)")
    root = tmp_path_factory.mktemp("lab")
    nb = {
        "cells": [], "metadata": {"kernelspec": {"name": KERNEL, "display_name": KERNEL, "language": "bash"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (root / "browser.ipynb").write_text(json.dumps(nb))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_PATH=install_test_kernelspecs())
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("JupyterLab did not start: " + (root / "lab.log").read_text()[-2000:])
            time.sleep(0.3)
    try:
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_jupyterlab_run_complete_interrupt_display(lab: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = base64.b64encode(_png()).decode()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/browser.ipynb?token={token}")

            # 1. The notebook opens on the lxc kernel; wait for Idle before typing (measured, LXC 5.0.2).
            status = page.locator(".jp-Notebook-ExecutionIndicator")
            expect(status).to_have_attribute("data-status", "idle", timeout=90_000)
            expect(page.locator(".jp-Toolbar-kernelName").first).to_contain_text(BASH)  # "LXC: <container>"

            def run_cell(code: str) -> None:
                editor = page.locator(".jp-Cell").last.locator(".cm-content")
                editor.click()
                page.keyboard.type(code)
                page.keyboard.press("Shift+Enter")

            def output(index: int):
                return page.locator(".jp-Cell").nth(index).locator(".jp-OutputArea")

            # 2. Run a cell and see its output.
            run_cell("lxck_browser_var=42; echo hello-from-$(hostname)")
            expect(output(0).first).to_contain_text("hello-from-", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1-run.png"))

            # 3. Complete a word with Tab (a variable with a single match is inserted in place).
            editor = page.locator(".jp-Cell").last.locator(".cm-content")
            editor.click()
            page.keyboard.type("echo $lxck_browser_v")
            page.wait_for_timeout(300)
            page.keyboard.press("Tab")
            # Lab lists the match from the kernel's complete_reply; Enter takes it.
            completer = page.locator(".jp-Completer")
            expect(completer).to_contain_text("$lxck_browser_var", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "2-complete.png"))
            page.keyboard.press("Enter")
            expect(editor).to_contain_text("echo $lxck_browser_var", timeout=15_000)
            page.keyboard.press("Shift+Enter")
            expect(output(1).first).to_contain_text("42", timeout=30_000)

            # 4. Interrupt a sleep with the toolbar's stop button.
            run_cell("sleep 60; echo never")
            expect(status).to_have_attribute("data-status", "busy", timeout=15_000)
            time.sleep(1)
            started = time.monotonic()
            try:
                page.locator('jp-button[data-command="notebook:interrupt-kernel"]').first.click(timeout=5_000)
                expect(status).to_have_attribute("data-status", "idle", timeout=5_000)
            except AssertionError:
                page.screenshot(path=str(ARTIFACTS / "3-interrupt-button.png"))
                raise
            expect(output(2).first).to_contain_text("KeyboardInterrupt", timeout=15_000)
            assert time.monotonic() - started < 10
            expect(status).to_have_attribute("data-status", "idle", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "3-interrupt.png"))

            # 5. Show an image through the display helper.
            run_cell(f"printf '%s' {png} | base64 -d > /tmp/lxck-browser.png && jdisplay /tmp/lxck-browser.png")
            image = page.locator(".jp-Cell").nth(3).locator(".jp-OutputArea-output img")
            expect(image).to_be_visible(timeout=30_000)
            assert image.evaluate("img => img.naturalWidth") == 48
            page.screenshot(path=str(ARTIFACTS / "4-display.png"), full_page=True)
        finally:
            browser.close()
    assert all((ARTIFACTS / f).stat().st_size > 0 for f in ("1-run.png", "2-complete.png", "3-interrupt.png",
                                                              "4-display.png"))
