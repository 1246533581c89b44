"""The dashboard on an empty data folder: it explains itself and offers the demo."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_empty_data_folder_offers_the_demo(data_dir: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Paretoscope"
    assert any("No studies yet" in i.value for i in at.info)
    assert any(b.label == "Run the demo" for b in at.button)
    assert any("No live worker" in w.value for w in at.sidebar.warning)
