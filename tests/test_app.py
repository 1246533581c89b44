"""The first dashboard page under Streamlit's AppTest: empty data folder, then a real study."""

from __future__ import annotations

import io
from pathlib import Path

from streamlit.testing.v1 import AppTest

from engine.__main__ import main

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_empty_data_folder_explains_how_to_start() -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("No studies yet" in i.value for i in at.info)


def test_lists_a_cli_study_and_its_results(tmp_path: Path, mlp_onnx: Path) -> None:
    code = main(["bench", str(mlp_onnx), "--variants", "baseline", "--runtimes", "onnxruntime,torch",
                 "--iterations", "3", "--min-seconds", "0.01", "--warmup", "1", "--threads", "1",
                 "--name", "<b>mlp</b>"], out=io.StringIO())
    assert code == 0
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    overview, results = at.dataframe[0].value, at.dataframe[1].value
    assert list(overview["name"]) == ["<b>mlp</b>"]
    assert set(results["runtime"]) == {"onnxruntime", "torch"}
    assert results.set_index("runtime").loc["torch", "status"] == "n/a"
    ort = results.set_index("runtime").loc["onnxruntime"]
    assert ort["status"] == "ok", ort["error"]
    assert ort["p50_ms"] > 0
