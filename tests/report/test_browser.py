"""The HTML reports in headless Chromium from file://, with every non-file request blocked: the charts draw."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from engine.__main__ import main
from engine.report import charts
from engine.report.html import study_html
from tests.conftest import results_frame
from tests.report.conftest import Seeded
from tests.report.studies import measured

CHROMIUM = "/usr/bin/chromium"
CHART_IDS = ("chart-pareto", "chart-latency", "chart-distribution", "chart-memory", "chart-throughput")


def _drawn(page: Any, path: Path, expected: int) -> list[str]:
    """Open the file offline; returns the requests that were attempted (and blocked) beyond file://."""
    attempted: list[str] = []

    def gate(route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    page.route("**/*", gate)
    page.goto(path.as_uri())
    # drawn: each plot has its SVG with at least one trace in it
    page.wait_for_function(
        "n => { const p = document.querySelectorAll('.js-plotly-plot');"
        " return p.length === n && [...p].every(d => d.querySelector('.main-svg .trace')); }",
        arg=expected, timeout=30_000)
    assert page.locator(".js-plotly-plot").count() == expected
    return attempted


def test_reports_draw_offline_in_chromium(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    from playwright.sync_api import sync_playwright

    study = tmp_path / "study.html"
    compare = tmp_path / "compare.html"
    for args, out in (([str(seeded.study_a)], study), ([str(seeded.study_a), "--compare", str(seeded.study_b)],
                                                        compare)):
        assert main(["report", *args, "--format", "html", "--out", str(out)], out=io.StringIO()) == 0
    frame = results_frame(seeded.study_a)
    measured_html = tmp_path / "measured.html"
    report = measured()
    for r in report["results"]:  # raw samples, so that the distribution chart has boxes to draw
        r["samples_ms"] = [r["latency_ms"]["p50"] * f for f in (0.9, 1.0, 1.1)] if r["latency_ms"] else None
    measured_html.write_text(study_html(report), encoding="utf-8")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            dialogs: list[str] = []  # an alert() would mean a user string ran as script
            context.on("page", lambda p: (p.on("pageerror", lambda exc: errors.append(str(exc))),
                                          p.on("console", lambda m: errors.append(m.text) if m.type == "error"
                                               else None),
                                          p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))))
            page = context.new_page()
            # the speedup chart where the study measured intervals (the engine's rounds), not in older studies
            expected = (*CHART_IDS, "chart-speedup") if charts.has_speedup_intervals(frame) else CHART_IDS
            assert _drawn(page, study, len(expected)) == []
            ids = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].map(d => d.id)")
            assert sorted(ids) == sorted(expected)
            bars = page.evaluate("(() => { const t = document.getElementById('chart-latency')._fullData[0];"
                                 " return [Array.from(t.x), Array.from(t.y)]; })()")
            p50 = dict(zip(*bars, strict=True))
            for _, row in frame.iterrows():
                assert p50[f"{row['variant']} · {row['runtime']} · b{row['batch_size']}"] == row["p50_ms"]
            title = page.title()
            assert title == "Paretoscope report: <script>alert(1)</script>"  # shown as text, never run

            page = context.new_page()
            assert _drawn(page, compare, 1) == []

            page = context.new_page()  # intervals: whiskers, and none where a cell has no interval
            assert _drawn(page, measured_html, len(CHART_IDS) + 1) == []
            whiskers = page.evaluate("(() => { const t = document.getElementById('chart-speedup')._fullData[1];"
                                     " return [Array.from(t.x), Array.from(t.error_y.array)]; })()")
            above = dict(zip(*whiskers, strict=True))
            assert above["int8-dynamic · onnxruntime · b1"] == pytest.approx(0.2)
            assert "prune-structured:0.5 · onnxruntime · b1" not in above
            assert errors == [] and dialogs == []
        finally:
            browser.close()
