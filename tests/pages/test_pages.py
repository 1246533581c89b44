"""Every page of the dashboard under Streamlit's AppTest, from the page list app.py uses."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.measure.devices import cuda_devices
from engine.report import charts, ship, space, tables
from engine.report.source import load_report
from pages import PAGES
from engine.report import source
from storage import queue
from storage import views
from storage.db import session
from tests.conftest import results_frame
from tests.report import apptext
from tests.report.spaces import run_viewer

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


def test_upload_pressed_without_a_file_says_what_to_do(data_dir: Path) -> None:
    at = visit("models.py")
    next(b for b in at.button if b.label == "Upload and inspect").click().run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("No model file yet: choose one") for w in warnings), warnings


def test_serving_page_without_serving_results_says_how_to_get_them(data_dir: Path) -> None:
    at = visit("serving.py")
    assert not at.get("plotly_chart")
    assert len(at.info) == 1 and "has no serving results" in at.info[0].value and "serve-bench" in at.info[0].value


def test_serving_page_shows_a_generation_cells_levels(data_dir: Path) -> None:
    """A generative serve-bench run, stored as serve-bench stores one (no server): TTFT, TPOT, output tokens/s and
    goodput in the levels' table."""
    import streamlit as st

    from engine.deploy.serve_bench_generate import StreamTiming, generation_summary
    from storage import serving
    from storage.tables import ServingRun

    timings = [StreamTiming(0.0, (0.05, 0.07), 0.09, 4, 8), StreamTiming(0.1, (0.16, 0.2), 0.22, 4, 8)]
    level = {"mode": "closed", "concurrency": 1, "rate_rps": None, "duration_s": 1.0, "batch_size": 1,
             "requests": 2, "errors": 0, "throughput_rps": 2.0, "items_per_s": 2.0,
             "latency_ms": {"p50": 100.0, "p90": 110.0, "p99": 120.0}, "stable": True, "windows": [],
             "generation": generation_summary(timings, 1.0, ttft_ms=55.0, tpot_ms=None)}
    with session(write=False) as s:
        study_id = int(views.list_studies(s)["id"].iloc[0])  # the page's first study
    with session() as s:
        run_id = serving.add_serving_run(s, {"study": study_id, "cell": 0, "target": "local", "max_batch": 1,
                                             "max_delay_ms": 0.0, "settings": {"scenario": "generate"},
                                             "levels": [level]})
    st.cache_data.clear()  # the pages' reads are cached: read the run just stored, and leave none behind
    try:
        at = visit("serving.py")
        table = at.dataframe[0].value
        assert {"ttft_p50_ms", "tpot_p99_ms", "output_tokens_per_s", "goodput_rps"} <= set(table.columns)
        assert "batch_sizes" not in table.columns
        assert table["goodput_rps"].tolist() == [pytest.approx(1.0)]  # one of the two met the 55 ms TTFT target
        assert table["output_tokens_per_s"].tolist() == [pytest.approx(8.0)]
        assert any("TTFT" in c.value for c in at.caption) and len(at.get("plotly_chart")) == 1
    finally:
        with session() as s:  # leave the seeded data as it was for other tests
            s.delete(s.get(ServingRun, run_id))
        st.cache_data.clear()


def values(data: object) -> list:  # type: ignore[type-arg]
    """A Plotly trace array: a list, or {"dtype", "bdata"} (base64) as Plotly 6 writes numpy arrays."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)  # type: ignore[call-overload]


def test_results_charts_match_the_database(data_dir: Path) -> None:
    at = visit("results.py")
    with session(write=False) as s:
        study_id = int(views.list_studies(s)["id"].iloc[0])
        frame = results_frame(study_id)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4
    table = at.dataframe[0].value
    assert len(table) == len(frame)
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert len(specs) == 5 + charts.has_speedup_intervals(frame)  # the speedup chart where intervals were measured
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
        before = len(views.list_studies(s))
    at.button[0].click().run()  # "Submit study": no worker runs in tests, so its jobs stay queued
    assert not at.exception
    with session(write=False) as s:
        studies = views.list_studies(s)
        assert len(studies) == before + 1
        progress = views.study_progress(s, int(studies["id"].iloc[0]))
    assert progress.get("queued", 0) > 0
    assert at.session_state["watch_study"] == int(studies["id"].iloc[0])
    # the live view replaces the form (a short page: what one waits for stays in view), until one leaves it
    labels = [b.label for b in at.button]
    assert "Submit study" not in labels and "Set up another study" in labels, labels
    next(b for b in at.button if b.label == "Set up another study").click().run()
    assert "Submit study" in [b.label for b in at.button]
    with session() as s:
        queue.cancel_study(s, int(studies["id"].iloc[0]))  # leave the seeded data as it was for other tests


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
        study_id = int(views.list_studies(s)["id"].iloc[0])
        settings = queue.get_study(s, study_id).settings  # type: ignore[union-attr]
    assert settings["runtime_options"] == {"onnxruntime": {"graph_optimization_level": "basic"}}
    with session() as s:
        queue.cancel_study(s, study_id)


def test_compare_lists_ratios_and_environment(data_dir: Path) -> None:
    at = visit("compare.py")
    with session(write=False) as s:
        studies = views.list_studies(s).set_index("name")
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


# --- speedups with their 95% intervals (studies measured in rounds; older ones have none) ----------------------


@pytest.fixture
def intervals(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every stored study read as one measured in rounds: the baseline [1, 1], each other ok cell its speedup with a
    wide interval holding 1, so that all cells at a batch size are tied on speed (the seeded studies ran before
    the engine measured intervals)."""
    import streamlit as st

    original = source.results_json

    def measured_in_rounds(s: Any, study_id: int, with_samples: bool = False) -> dict[str, Any]:
        report = original(s, study_id, with_samples)
        for r in report["results"]:
            if r["speedup_vs_baseline"] is None:
                continue
            own = r["cell"] == r["baseline_cell"]
            speedup = r["speedup_vs_baseline"]
            low, high = (1.0, 1.0) if own else (min(speedup, 1.0) * 0.5, max(speedup, 1.0) * 2.0)
            r.update(speedup_ci95=[low, high], speedup_method="baseline" if own else "interleaved",
                     speedup_rounds=12)
        return report

    monkeypatch.setattr(source, "results_json", measured_in_rounds)
    st.cache_data.clear()  # the pages' reads are cached: read the patched ones, and leave none behind
    yield
    st.cache_data.clear()


def shown(at: AppTest, index: int = 0) -> pd.DataFrame:
    """A dataframe as the page displays it: the styler's text of each cell."""
    import pyarrow as pa

    data = at.dataframe[index].proto.arrow_data.styler.display_values
    return pa.ipc.open_stream(data).read_all().to_pandas()


def _results_page_of(name: str) -> tuple[AppTest, int]:
    """The Results page opened on the seeded study called `name`, and that study's id."""
    with session(write=False) as s:
        study_id = int(views.list_studies(s).set_index("name").loc[name, "id"])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.session_state["results_study"] = study_id
    at.switch_page("pages/results.py").run()
    return at, study_id


def test_results_page_shows_speedup_intervals_and_a_tie(data_dir: Path, intervals: None) -> None:
    at, study_id = _results_page_of("first <script>")
    at.number_input[0].set_value(1.0).run()  # any accuracy drop: every cell at batch 1 qualifies, and all are tied
    assert not at.exception, at.exception
    with session(write=False) as s:
        report = source.results_json(s, study_id)  # patched: as the page read it
    frame = tables.results_table(report)
    expected = {tables.speedup_text(row) for _, row in frame.iterrows()}
    texts = set(shown(at).astype(str).to_numpy().ravel())
    assert expected <= texts and any(t.endswith("]") and "× [" in t for t in texts)
    assert any("Ship" in s.value and "× [" in s.value for s in at.success)
    assert any(w.value.startswith("This cell was tied on speed with") and "the intervals overlap" in w.value
               for w in at.warning), [w.value for w in at.warning]
    titles = [json.loads(e.proto.spec)["layout"]["title"]["text"] for e in at.get("plotly_chart")]
    assert len(titles) == 6 and any(t.startswith("Speedup per cell") for t in titles)


def test_results_page_and_space_show_the_same_ship_panel(data_dir: Path, intervals: None, tmp_path: Path) -> None:
    at, study_id = _results_page_of("first <script>")
    assert not at.exception, at.exception
    on_page = apptext.panel(apptext.shown_elements(at), ship.TITLE)
    bundle = tmp_path / "space"
    space.write_space(load_report(study_id), bundle)  # the study as the Results page's Space download has it
    result = run_viewer(bundle, tmp_path)
    assert not result["exception"], result["exception"]
    assert on_page == apptext.panel(result["elements"], ship.TITLE)
    # the whole panel, with the drop in the unit top-1 is stored in (a fraction)
    kinds = [element[0] for element in on_page]
    assert kinds[:5] == ["subheader", "number_input", "number_input", "selectbox", "success"], on_page
    assert on_page[1][1] == "Maximum accuracy drop (top-1 as a fraction, 0.01 = 1 point)"
    assert on_page[4][1].startswith("Ship **") and "× [" in on_page[4][1]


def test_results_page_of_an_older_study_has_no_speedup_chart(data_dir: Path) -> None:
    at = visit("results.py")
    assert not any("× [" in str(v) for v in shown(at).to_numpy().ravel())
    titles = [json.loads(e.proto.spec)["layout"]["title"]["text"] for e in at.get("plotly_chart")]
    assert not any(t.startswith("Speedup per cell") for t in titles)


def test_compare_shows_each_studys_speedup_with_its_interval(data_dir: Path, intervals: None) -> None:
    at = visit("compare.py")
    with session(write=False) as s:
        studies = views.list_studies(s).set_index("name")
    at.selectbox[0].set_value(int(studies.loc["first <script>", "id"]))
    at.selectbox[1].set_value(int(studies.loc["second", "id"])).run()
    assert not at.exception, at.exception
    joined = at.dataframe[0].value
    assert {"speedup_a", "speedup_b"} <= set(joined.columns)
    assert joined["speedup_a"].notna().any()  # numbers underneath, sortable
    texts = shown(at)
    assert any("× [" in str(v) for v in texts["speedup_a"]) and any("× [" in str(v) for v in texts["speedup_b"])


def test_results_page_explains_a_cell(data_dir: Path) -> None:
    at, study_id = _results_page_of("first <script>")
    assert any(h.value == "Why? One cell explained" for h in at.subheader)
    picker = next(s for s in at.selectbox if s.label == "Cell")
    with session(write=False) as s:
        rows = {r["cell"]: r for r in source.results_json(s, study_id)["results"]}
    int8 = next(c for c, r in rows.items() if r["variant"] == "int8-dynamic" and r["runtime"] == "onnxruntime")
    picker.set_value(int8).run()
    assert not at.exception, at.exception
    diagnostics = rows[int8]["diagnostics"]
    # the hardware's verdict on int8 here, the time by op type and the quantization coverage of the variant
    assert [i.value for i in at.info if i.value.startswith("int8 on")] == [diagnostics["hardware"]]
    markdown = [m.value for m in at.markdown]
    assert any(m.startswith("**Where the time goes**") for m in markdown)
    assert "**What quantization covered**" in markdown
    op_types = next(d.value for d in at.dataframe if "op type" in d.value.columns)
    assert list(op_types["op type"]) == list(diagnostics["op_types"])


def test_results_page_rebuilds_a_variant_with_its_worst_layers_in_float(seeded: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(seeded, copy)  # a cell is added: the other tests keep the seeded study as it was
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(copy))
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")
    at, study_id = _results_page_of("first <script>")
    with session(write=False) as s:
        rows = {r["cell"]: r for r in source.results_json(s, study_id)["results"]}
    int8 = next(c for c, r in rows.items() if r["variant"] == "int8-dynamic" and r["runtime"] == "onnxruntime"
                and r["batch_size"] == 4)
    next(s for s in at.selectbox if s.label == "Cell").set_value(int8).run()
    assert not at.exception, at.exception
    errors = rows[int8]["diagnostics"]["layer_errors"]
    assert any(m.value.startswith("**Which layers lost accuracy**") for m in at.markdown)
    table = next(d.value for d in at.dataframe if "own error" in d.value.columns)
    assert list(table["layer"]) == [e["layer"] for e in errors]
    picker = next(m for m in at.multiselect if m.label == "Keep these layers in float")
    assert picker.value == [e["layer"] for e in errors[:3]]
    picker.set_value([errors[0]["layer"]])
    next(b for b in at.button if b.label == "Rebuild with these layers in float").click().run()
    assert not at.exception, at.exception
    with session(write=False) as s:
        after = {r["cell"]: r for r in source.results_json(s, study_id)["results"]}
        progress = views.study_progress(s, study_id)
    [new] = set(after) - set(rows)
    assert after[new]["variant"] == f"int8-dynamic:exclude={errors[0]['layer']}"
    assert (after[new]["runtime"], after[new]["batch_size"], after[new]["status"]) == ("onnxruntime", 4, "queued")
    assert progress.get("queued") == 1 and at.session_state["watch_study"] == study_id


def test_results_page_ships_the_recommended_cell_as_a_bundle(data_dir: Path) -> None:
    import io
    import zipfile

    from engine.deploy.write import bundle_zip

    at, study_id = _results_page_of("first <script>")
    assert not at.exception, at.exception
    assert any(h.value == "Ship it" for h in at.subheader)
    target = next(r for r in at.radio if r.label == "Target")
    assert target.options == ["FastAPI server (Docker)", "Triton model repository", "Hugging Face Inference Endpoint"]
    shipped = next(s.value for s in at.success if "Ship" in s.value)
    caption = next(c.value for c in at.caption if c.value.startswith("cell "))
    cell = int(caption.split()[1].rstrip(":"))
    assert f"#{cell}" in shipped or str(cell) in shipped
    names = zipfile.ZipFile(io.BytesIO(bundle_zip(study_id, cell, "fastapi"))).namelist()
    assert any(n.endswith("serve.py") for n in names) and any(n.endswith("Dockerfile") for n in names)
