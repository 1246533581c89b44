"""The Results page offers the four report formats, the Compare page the comparison; each builds on click."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from tests.report.conftest import HOSTILE_STUDY, Seeded

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def offered(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """file name -> the data callable each download button was given (AppTest cannot click a download)."""
    seen: dict[str, Any] = {}
    original = DeltaGenerator.download_button

    def spy(self: DeltaGenerator, label: str, data: Any, file_name: str | None = None, **kwargs: Any) -> bool:
        seen[file_name or label] = data
        return original(self, label, data, file_name=file_name, **kwargs)

    bound = st.download_button  # st.download_button is the main container's method, bound at import

    def module_spy(label: str, data: Any, file_name: str | None = None, **kwargs: Any) -> bool:
        seen[file_name or label] = data
        return bound(label, data, file_name=file_name, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    monkeypatch.setattr(st, "download_button", module_spy)
    return seen


def visit(page: str, **state: Any) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, at.exception
    return at


def test_results_page_offers_every_format(seeded: Seeded, data_dir: Path, offered: dict[str, Any]) -> None:
    at = visit("results.py", results_study=seeded.study_a)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:4] == ["HTML report", "CSV", "JSON", "Hugging Face Space (.zip)"]
    stem = f"paretoscope-study-{seeded.study_a}"
    html = offered[f"{stem}.html"]()
    assert html.startswith("<!DOCTYPE html>") and HOSTILE_STUDY not in html
    assert 'id="recommendation"' in html
    assert all(f'id="chart-{c}"' in html for c in ("pareto", "latency", "distribution", "memory", "throughput"))
    csv = pd.read_csv(io.StringIO(offered[f"{stem}.csv"]()))
    assert len(csv) == 4
    report = json.loads(offered[f"{stem}.json"]())
    assert report["study"]["name"] == HOSTILE_STUDY and all(r["samples_ms"] for r in report["results"])
    with zipfile.ZipFile(io.BytesIO(offered[f"{stem}-space.zip"]())) as zf:
        names = set(zf.namelist())
    assert {f"{stem}-space/{f}" for f in ("README.md", "Dockerfile", "requirements.txt", "app.py",
                                          "data/results.json")} <= names


def test_compare_page_offers_the_comparison(seeded: Seeded, data_dir: Path, offered: dict[str, Any]) -> None:
    at = visit("compare.py")
    assert [b.proto.label for b in at.get("download_button")] == ["Comparison report (HTML)"]
    (name, build), = offered.items()
    assert name.startswith("paretoscope-compare-") and "p50_ratio" in build()
