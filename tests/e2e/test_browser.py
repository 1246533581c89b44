"""End to end in a real browser: upload an ONNX model, run a two-cell study with the worker, read the results.

Debian's chromium driven by Python Playwright (no browser download); the dashboard runs under
`streamlit run app.py` on a loopback port with a temporary data folder and starts its own worker.
"""

from __future__ import annotations

import os
import re
import shutil
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


def _start(cwd: Path, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1"],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}"


def _needs_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")


@pytest.fixture
def user_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """The dashboard as a user starts it: no data-folder variable, started from another working directory
    (which holds the shipped .streamlit/config.toml, read from there), starting its own worker.
    Yields the URL and the data folder the default resolves to."""
    _needs_browser()
    home = tmp_path / "user"
    shutil.copytree(ROOT / ".streamlit", home / ".streamlit")
    env = dict(os.environ)
    for key in ("PARETOSCOPE_DATA_DIR", "PARETOSCOPE_NO_AUTO_WORKER"):
        env.pop(key, None)
    proc, url = _start(home, env, tmp_path / "streamlit.log")
    try:
        yield url, home / "data"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        _stop_workers(home / "data")


@pytest.fixture
def dashboard(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """The dashboard on the test's data folder, started from the project (its shipped config), with its worker."""
    _needs_browser()
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir)}
    env.pop("PARETOSCOPE_NO_AUTO_WORKER", None)  # the dashboard starts its worker, as for a user
    proc, url = _start(ROOT, env, tmp_path / "streamlit.log")
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
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
        expect(links).to_have_count(7)
        labels = [text.split("\n")[-1] for text in links.all_inner_texts()]
        assert labels == ["Home", "Models", "Benchmark", "Results", "Compare", "Serving", "System"]
        browser.close()  # type: ignore[attr-defined]


def _upload(page: object, url: str, model: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/models")  # type: ignore[attr-defined]
    expect(page.get_by_role("heading", name="Models")).to_be_visible()  # type: ignore[attr-defined]
    page.locator("input[type=file]").first.set_input_files(str(model))  # type: ignore[attr-defined]
    # the uploader sends the file in the background: press the button once its chip names it, no longer uploading
    # (pressed before, the form is submitted without a file, as a user who does not wait would see)
    chip = page.locator("[data-testid=stFileChipName]")  # type: ignore[attr-defined]
    expect(chip).to_have_text(model.name)
    expect(page.locator("[data-testid=stFileChipIconSpinner]")).to_have_count(0)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Upload and inspect").click()  # type: ignore[attr-defined]
    expect(page.get_by_text("model stored")).to_be_visible(timeout=120_000)  # type: ignore[attr-defined]


def _run_study(page: object, url: str, model_id: int, variants: str, runtimes: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/benchmark?model={model_id}&variants={variants}&runtimes={runtimes}"  # type: ignore[attr-defined]
              "&batch_sizes=1&iterations=5&min_seconds=0.1")
    expect(page.get_by_text("2 cells")).to_be_visible()  # type: ignore[attr-defined]
    page.get_by_role("button", name="Submit study").click()  # type: ignore[attr-defined]
    # the study's end replaces the live view: "finished" (every cell ok), "failed" or "with failures"
    expect(page.get_by_text(re.compile(r"Study #\d+ (finished|failed)"))).to_be_visible(  # type: ignore[attr-defined]
        timeout=300_000)


def test_a_users_upload_study_and_results_with_the_default_data_folder(user_dashboard: tuple[str, Path],
                                                                       mlp_onnx: Path, bert_hf_zip: Path,
                                                                       tmp_path: Path) -> None:
    """The user's path with the defaults: an HF model and an ONNX model uploaded, a two-cell study each, results
    ok; then a study whose model file went missing shows as failed, its error above the table."""
    from playwright.sync_api import expect, sync_playwright

    url, data = user_dashboard
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        page.set_default_timeout(60_000)
        outside: list[str] = []  # the dashboard works offline: no font, icon or script from another host
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:"))
                else None)
        page.goto(url)
        expect(page.get_by_role("heading", name="Paretoscope")).to_be_visible()

        _upload(page, url, bert_hf_zip)
        _run_study(page, url, 1, "baseline,int8-dynamic", "torch")
        expect(page.get_by_text("Study #1 finished: 2 of 2 cells ok")).to_be_visible()
        _upload(page, url, mlp_onnx)
        _run_study(page, url, 2, "baseline,int8-dynamic", "onnxruntime")
        expect(page.get_by_text("Study #2 finished: 2 of 2 cells ok")).to_be_visible()

        # everything landed in the default data folder, under the directory the dashboard started in
        models = sorted(p for p in (data / "models").iterdir())
        assert len(models) == 2
        assert not list((data / "tmp").glob("*/data")), "a child wrote into its scratch folder"
        assert any((data / "variants").rglob("*.onnx")), "the built int8 variant is not in the data folder"

        page.goto(f"{url}/results")
        expect(page.get_by_role("heading", name="Results")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Ship .+ on onnxruntime"))).to_be_visible()
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000)

        # the ONNX model's file goes missing: its next study fails, and says so where one looks first
        for item in models:
            if (item.is_file() and item.suffix == ".onnx") or (item.is_dir() and any(item.glob("*.onnx"))):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        _run_study(page, url, 2, "baseline,int8-dynamic", "onnxruntime")
        failed = page.get_by_text("Study #3 failed: every cell that ran failed (2).")
        expect(failed).to_be_visible()
        expect(failed).to_be_in_viewport()
        expect(page.get_by_text("the model's file is missing from the data folder").first).to_be_in_viewport()
        page.goto(f"{url}/results")
        expect(page.get_by_text("Study #3 failed").first).to_be_in_viewport()
        page.goto(url)
        expect(page.get_by_text("Study #3 failed").first).to_be_visible()
        assert not outside, outside
        shot = Path(os.environ.get("PARETOSCOPE_SCREENSHOT_DIR", tmp_path)) / "home.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()  # type: ignore[attr-defined]


def test_an_open_tab_costs_the_dashboard_almost_no_cpu(dashboard: str) -> None:
    """The shipped configuration watches no files: with a tab open and nothing running, the Streamlit server
    is idle (a watcher over the project and its .venv cost a whole core and disturbed the measured cell)."""
    import psutil
    from playwright.sync_api import expect, sync_playwright

    port = int(dashboard.rsplit(":", 1)[1])
    server = next(c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                  and c.status == psutil.CONN_LISTEN)
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page()  # type: ignore[attr-defined]
        page.set_default_timeout(60_000)
        page.goto(dashboard)
        expect(page.get_by_role("heading", name="Paretoscope")).to_be_visible()
        expect(page.get_by_text("No studies yet")).to_be_visible()  # the page's last element: its run ended
        process = psutil.Process(server)
        before = sum(process.cpu_times()[:2])
        page.wait_for_timeout(10_000)
        used = sum(process.cpu_times()[:2]) - before
        browser.close()  # type: ignore[attr-defined]
    assert used < 0.5, f"the dashboard used {used:.2f} s of CPU in 10 s with one idle tab"


def test_the_serving_page_of_a_served_study_draws_its_chart(dashboard: str) -> None:
    """A study with two serve-bench runs (with and without batching, stored as serve-bench stores them): the
    Serving page draws their latency against throughput."""
    from playwright.sync_api import expect, sync_playwright

    from storage import serving
    from storage.db import session
    from tests.storage.helpers import make_study

    study = make_study(1, name="served")
    for max_batch in (1, 8):
        levels = [{"mode": "closed", "concurrency": c, "requests": 100 * c, "errors": 0,
                   "throughput_rps": 100.0 * c * (1 + (max_batch > 1)), "items_per_s": 100.0 * c,
                   "latency_ms": {"p50": 1.0 + c, "p90": 2.0 + c, "p99": 3.0 + c}, "stable": True,
                   "batch_sizes": {"1": 100}, "mean_batch": 1.0} for c in (1, 4, 16)]
        with session() as s:
            serving.add_serving_run(s, {"study": study, "cell": 0, "target": "local", "max_batch": max_batch,
                                        "max_delay_ms": 5.0 if max_batch > 1 else 0.0, "settings": {},
                                        "levels": levels})
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 900})  # type: ignore[attr-defined]
        page.set_default_timeout(60_000)
        page.goto(f"{dashboard}/serving")
        expect(page.get_by_role("heading", name="Serving")).to_be_visible()
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 4",
                               timeout=60_000)
        expect(page.get_by_text("run 2: batch ≤ 8 within 5 ms · p99").first).to_be_visible()
        browser.close()  # type: ignore[attr-defined]
