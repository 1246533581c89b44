"""Every page of the dashboard under Streamlit's AppTest, from the page list app.py uses."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.measure.devices import cuda_devices
from pages import PAGES
from storage import queries as q
from storage.db import session
from tests.conftest import results_frame

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def visit(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != PAGES[0][0]:
        at.switch_page(f"pages/{page}")
        at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize(("page", "title"), [(p[0], p[1]) for p in PAGES])
def test_every_page_renders(page: str, title: str, data_dir: Path) -> None:
    at = visit(page)
    titles = [t.value for t in at.title]
    assert titles and (titles[0] == title or (page == "home.py" and titles[0] == "Paretoscope")), titles


def values(data: object) -> list:  # type: ignore[type-arg]
    """A Plotly trace array: a list, or {"dtype", "bdata"} (base64) as Plotly 6 writes numpy arrays."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)  # type: ignore[call-overload]


def test_results_charts_match_the_database(data_dir: Path) -> None:
    at = visit("results.py")
    with session(write=False) as s:
        study_id = int(q.list_studies(s)["id"].iloc[0])
        frame = results_frame(study_id)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4
    table = at.dataframe[0].value
    assert len(table) == len(frame)
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert len(specs) == 5
    bars = next(s for s in specs if "Latency per cell" in s["layout"]["title"]["text"])
    p50 = dict(zip(values(bars["data"][0]["x"]), values(bars["data"][0]["y"]), strict=True))
    for _, row in ok.iterrows():
        label = f"{row['variant']} · {row['runtime']} · b{row['batch_size']}"
        assert p50[label] == pytest.approx(row["p50_ms"])
    boxes = next(s for s in specs if "distribution" in s["layout"]["title"]["text"])
    assert len(boxes["data"]) == 4
    pareto = next(s for s in specs if "against latency" in s["layout"]["title"]["text"])
    names = [trace.get("name") for trace in pareto["data"]]
    assert "Pareto frontier" in names and "recommended" in names
    assert any("Ship" in s.value for s in at.success)


def test_recommendation_follows_the_constraints(data_dir: Path) -> None:
    at = visit("results.py")
    at.number_input[1].set_value(0.000001).run()  # a p99 budget no cell meets
    assert not at.exception
    assert any("No cell meets" in w.value for w in at.warning)


def test_benchmark_page_previews_and_submits_a_study(data_dir: Path) -> None:
    at = visit("benchmark.py")
    assert any("cells" in m.value for m in at.markdown)
    with session(write=False) as s:
        before = len(q.list_studies(s))
    at.button[0].click().run()  # "Submit study": no worker runs in tests, so its jobs stay queued
    assert not at.exception
    with session(write=False) as s:
        studies = q.list_studies(s)
        assert len(studies) == before + 1
        progress = q.study_progress(s, int(studies["id"].iloc[0]))
    assert progress.get("queued", 0) > 0
    assert at.session_state["watch_study"] == int(studies["id"].iloc[0])
    # the live view replaces the form (a short page: what one waits for stays in view), until one leaves it
    labels = [b.label for b in at.button]
    assert "Submit study" not in labels and "Set up another study" in labels, labels
    next(b for b in at.button if b.label == "Set up another study").click().run()
    assert "Submit study" in [b.label for b in at.button]
    with session() as s:
        q.cancel_study(s, int(studies["id"].iloc[0]))  # leave the seeded data as it was for other tests


def test_benchmark_page_takes_runtime_settings_and_refuses_unknown_ones(data_dir: Path) -> None:
    at = visit("benchmark.py")
    at.text_area(key="runtime_options").set_value("onnxruntime.graph_level=basic").run()
    assert [e.value for e in at.error] == ["error: runtime option 'onnxruntime.graph_level=basic': onnxruntime has "
                                           "no option 'graph_level' (its options: graph_optimization_level)"]
    assert not at.button  # nothing can be submitted while the settings are wrong
    at.text_area(key="runtime_options").set_value("onnxruntime.graph_optimization_level=basic\n").run()
    assert not at.error
    at.button[0].click().run()
    with session(write=False) as s:
        study_id = int(q.list_studies(s)["id"].iloc[0])
        settings = q.get_study(s, study_id).settings  # type: ignore[union-attr]
    assert settings["runtime_options"] == {"onnxruntime": {"graph_optimization_level": "basic"}}
    with session() as s:
        q.cancel_study(s, study_id)


def test_compare_lists_ratios_and_environment(data_dir: Path) -> None:
    at = visit("compare.py")
    with session(write=False) as s:
        studies = q.list_studies(s).set_index("name")
    at.selectbox[0].set_value(int(studies.loc["first <script>", "id"]))
    at.selectbox[1].set_value(int(studies.loc["second", "id"])).run()
    assert not at.exception
    joined = at.dataframe[0].value
    assert {"p50_ratio", "p99_ratio"} <= set(joined.columns)
    assert joined["p50_ratio"].notna().sum() == 4  # onnxruntime cells measured in both studies


def test_system_page_reports_runtimes_and_storage(data_dir: Path) -> None:
    at = visit("system.py")
    runtimes = at.dataframe[0].value if "available" in at.dataframe[0].value.columns else at.dataframe[1].value
    assert "onnxruntime-cuda" in set(runtimes["id"])
    assert runtimes.set_index("id").loc["torch-cuda", "settings"] == "device, cuda_graph, tf32"
    if cuda_devices()[0]:
        assert not any("No GPU" in i.value for i in at.info)  # the GPU table instead
    else:
        assert any("No GPU" in i.value for i in at.info)
