"""End to end in a real browser: upload an ONNX model, run a two-cell study with the worker, read the results.

Debian's chromium driven by Python Playwright (no browser download); the dashboard runs under
`streamlit run app.py` on a loopback port with a temporary data folder and starts its own worker.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dashboard(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    port = _free_port()
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir)}
    env.pop("PARETOSCOPE_NO_AUTO_WORKER", None)  # the dashboard starts its worker, as for a user
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
        _stop_workers(data_dir)


def _stop_workers(data_dir: Path) -> None:
    """The auto-started worker runs in its own session; stop it like a user would (SIGTERM)."""
    import psutil

    pid_file = data_dir / "locks" / "auto-worker.pid"
    if pid_file.is_file():
        try:
            worker = psutil.Process(int(pid_file.read_text()))
            worker.terminate()
            worker.wait(30)
        except psutil.Error:
            pass


def _browser(pw: object) -> object:
    return pw.chromium.launch(  # type: ignore[attr-defined]
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


def test_a_page_url_opened_first_on_a_fresh_server_gets_the_apps_navigation(dashboard: str) -> None:
    """Before any session ran app.py, Streamlit serves a page URL through its legacy pages/ discovery (file
    names as titles, pages/common.py listed as a page); the page hands over to app.py's navigation."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 900})  # type: ignore[attr-defined]
        page.set_default_timeout(60_000)
        page.goto(f"{dashboard}/results")
        expect(page.get_by_role("heading", name="Results")).to_be_visible()
        links = page.locator("[data-testid=stSidebarNav] a")
        expect(links).to_have_count(6)
        labels = [text.split("\n")[-1] for text in links.all_inner_texts()]
        assert labels == ["Home", "Models", "Benchmark", "Results", "Compare", "System"]
        browser.close()  # type: ignore[attr-defined]


def test_upload_run_and_read_results_in_a_browser(dashboard: str, mlp_onnx: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)

        page.goto(dashboard)
        expect(page.get_by_role("heading", name="Paretoscope")).to_be_visible()
        page.goto(f"{dashboard}/models")
        expect(page.get_by_role("heading", name="Models")).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(str(mlp_onnx))
        page.get_by_role("button", name="Upload and inspect").click()
        expect(page.get_by_text("onnx model stored")).to_be_visible(timeout=120_000)

        page.goto(f"{dashboard}/benchmark?variants=baseline,int8-dynamic&runtimes=onnxruntime&batch_sizes=1"
                  "&iterations=5&min_seconds=0.1")
        expect(page.get_by_text("2 cells")).to_be_visible()
        page.get_by_role("button", name="Submit study").click()
        expect(page.get_by_text("finished.")).to_be_visible(timeout=240_000)

        page.goto(f"{dashboard}/results")
        expect(page.get_by_role("heading", name="Results")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Ship .+ on onnxruntime"))).to_be_visible()
        expect(page.locator("[data-testid=stDataFrame]").first).to_be_visible()
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000)
        charts = page.locator(".js-plotly-plot").count()
        assert charts >= 2
        shot = Path(os.environ.get("PARETOSCOPE_SCREENSHOT_DIR", tmp_path)) / "results.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.close()
