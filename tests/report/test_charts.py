"""The shared Plotly figures and table helpers on hand-made studies: colours that do not depend on who imported
streamlit, a readable Pareto chart, axes that fit the data, the baseline named, shared notes, noisy cells."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from engine.report import charts, tables
from engine.report.html import study_html
from engine.report.pareto import Constraints, recommend, recommendation_note
from tests.report.htmltables import parse
from tests.report.studies import EXPORTER_NOTE, STEADY, figures, noisy, result, study

PLACEHOLDER = re.compile(r"#0000[0-9a-f]{2}\b", re.IGNORECASE)  # Streamlit's theme colours, replaced by its frontend
CHART_IDS = ("chart-pareto", "chart-latency", "chart-distribution", "chart-memory", "chart-throughput")


def classification() -> dict[str, Any]:
    """Five cells at batch 1 on two runtimes, top-1 between 0.70 and 0.72, an exporter note on every ONNX cell,
    one noisy cell, one failed cell."""
    fp32 = {"dtype": "float32", "intra_op_threads": 2}
    return study([
        result(0, "baseline", "torch", 1, 10.0, task=0.72, settings=fp32, noise=STEADY),
        result(1, "baseline", "onnxruntime", 1, 8.0, task=0.72, notes=(EXPORTER_NOTE,), noise=STEADY),
        result(2, "int8-dynamic", "onnxruntime", 1, 4.0, task=0.70, notes=(EXPORTER_NOTE, "calibrated on 8 samples"),
               noise=noisy(12.3)),
        result(3, "fp16", "onnxruntime", 1, 6.0, task=0.715, notes=(EXPORTER_NOTE, EXPORTER_NOTE), noise=STEADY),
        result(4, "int8-static", "onnxruntime", 1, 0.0, status="failed", error="RuntimeError: no kernel",
               notes=(EXPORTER_NOTE,)),
    ])


def frame_of(report: dict[str, Any]) -> pd.DataFrame:
    return tables.results_table(report)[tables.FRAME_COLUMNS]


def every_chart(report: dict[str, Any]) -> list[go.Figure]:
    frame = frame_of(report)
    best = recommend(frame, Constraints(batch_size=1), "task_metric")
    return [charts.accuracy_vs_latency(frame, "task_metric", "top-1", best, "b"), charts.latency_bars(frame, "b"),
            charts.speedup_bars(frame, "b"),
            charts.latency_distribution(frame, tables.samples_by_cell(report)), charts.memory_and_size(frame),
            charts.throughput_vs_batch(frame), charts.compare_ratios(frame.assign(p50_ratio=1.0), "#1", "#2")]


# --- 1. colours of their own -----------------------------------------------------------------------------


def test_html_report_charts_keep_their_colours_after_streamlit_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit  # noqa: F401  (importing it registers the "streamlit" template and makes it the default)

    assert PLACEHOLDER.search(json.dumps(pio.templates["streamlit"].to_plotly_json()))
    monkeypatch.setattr(pio.templates, "default", "streamlit")
    figs = figures(study_html(classification()))
    assert set(figs) == set(CHART_IDS)
    for div, fig in figs.items():
        layout = fig["layout"]["template"]["layout"]
        assert layout["colorway"] == list(charts.COLORWAY), div
        assert layout["paper_bgcolor"] == "white" and layout["font"]["color"] == charts.TEXT_COLOR, div
        assert not PLACEHOLDER.search(json.dumps(fig)), (div, PLACEHOLDER.findall(json.dumps(fig))[:3])


@pytest.mark.parametrize("ambient", ["streamlit", "plotly_dark", "ggplot2", "none"])
def test_every_chart_looks_the_same_whatever_the_default_template(ambient: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit  # noqa: F401

    report = classification()
    monkeypatch.setattr(pio.templates, "default", "plotly")
    expected = [fig.to_json() for fig in every_chart(report)]
    monkeypatch.setattr(pio.templates, "default", ambient)
    assert [fig.to_json() for fig in every_chart(report)] == expected


# --- 2. the Pareto chart ----------------------------------------------------------------------------------


def pareto(report: dict[str, Any], accuracy: str = "task_metric") -> tuple[go.Figure, pd.Series | None]:
    frame = frame_of(report)
    best = recommend(frame, Constraints(max_accuracy_drop=0.01, batch_size=1), accuracy)
    return charts.accuracy_vs_latency(frame, accuracy, "top-1", best), best


def test_pareto_accuracy_axis_is_zoomed_to_the_data() -> None:
    fig, _ = pareto(classification())
    low, high = fig.layout.yaxis.range
    assert 0.68 < low < 0.70 and 0.72 < high < 0.74  # top-1 0.70..0.72, a little padding, not 0..1.5


def test_pareto_axis_padding_stops_where_the_measure_ends() -> None:
    report = study([result(0, "baseline", "onnxruntime", 1, 5.0, cosine=1.0),
                    result(1, "fp16", "onnxruntime", 1, 3.0, cosine=0.99)])
    fig, _ = pareto(report, "cosine")
    low, high = fig.layout.yaxis.range
    assert high == 1.0 and 0.98 < low < 0.99
    same = study([result(0, "baseline", "onnxruntime", 1, 5.0, task=1.0), result(1, "fp16", "onnxruntime", 1, 3.0,
                                                                                task=1.0)])
    low, high = pareto(same)[0].layout.yaxis.range
    assert low < 1.0 and high == 1.0  # one value: still a visible band, never past top-1 = 1


def test_pareto_points_are_labelled_and_noisy_ones_hollow() -> None:
    fig, _ = pareto(classification())
    cells = [t for t in fig.data if t.name in ("torch", "onnxruntime")]
    texts = [text for t in cells for text in t.text]
    assert all("text" in t.mode for t in cells) and all(t.textposition for t in cells)
    assert "baseline · torch" in texts and "fp16 · onnxruntime" in texts
    assert "int8-dynamic · onnxruntime (noisy ±12%)" in texts
    onnx = next(t for t in cells if t.name == "onnxruntime")
    symbols = dict(zip(onnx.text, onnx.marker.symbol, strict=True))
    assert symbols["int8-dynamic · onnxruntime (noisy ±12%)"] == "circle-open"
    assert symbols["fp16 · onnxruntime"] == "circle"
    assert any("noisy ±12%" in h for h in onnx.customdata)  # and in the hover


def test_pareto_frontier_is_a_solid_line_on_top_and_the_recommended_cell_ringed() -> None:
    fig, best = pareto(classification())
    names = [t.name for t in fig.data]
    front = fig.data[names.index("Pareto frontier")]
    assert names.index("Pareto frontier") > max(names.index("torch"), names.index("onnxruntime"))
    assert "lines" in front.mode and front.line.width >= 3 and front.line.dash in (None, "solid")
    assert front.line.color == charts.FRONTIER_COLOR
    assert list(front.x) == [4.0, 6.0, 8.0]  # int8-dynamic, fp16, baseline on onnxruntime
    ring = fig.data[names.index("recommended")]
    assert best is not None and list(ring.x) == [best["p50_ms"]] and ring.marker.symbol == "circle-open"


def test_many_pareto_points_get_short_labels() -> None:
    long = "prune-structured:0.5+distill+int8-static"
    report = study([result(i, long if i else "baseline", "onnxruntime", 1, 10.0 - i * 0.5, task=0.7 + i / 100)
                    for i in range(12)])
    texts = [text for t in pareto(report)[0].data if t.name == "onnxruntime" for text in t.text]
    assert len(texts) == 12 and max(len(t) for t in texts) <= 20
    assert "baseline" in texts and any(t.startswith("prune-struct") and t.endswith("…") for t in texts)


# --- 3. throughput ------------------------------------------------------------------------------------------


def test_throughput_with_one_batch_size_is_bars_on_a_linear_axis() -> None:
    fig = charts.throughput_vs_batch(frame_of(classification()))
    assert [t.type for t in fig.data] == ["bar"] and fig.layout.xaxis.type != "log"
    assert len(fig.data[0].x) == 4 and fig.data[0].marker.pattern.shape[2] == charts.NOISY_PATTERN
    assert "batch size 1" in fig.layout.title.text


@pytest.mark.parametrize(("batches", "axis"), [((1, 2, 4), "linear"), ((1, 8, 64), "log")])
def test_throughput_axis_is_log_only_across_a_wide_range(batches: tuple[int, ...], axis: str) -> None:
    rows = [result(i, "baseline", "onnxruntime", b, 1.0 + b) for i, b in enumerate(batches)]
    fig = charts.throughput_vs_batch(frame_of(study(rows)))
    assert fig.layout.xaxis.type == axis and list(fig.layout.xaxis.tickvals) == list(batches)
    assert all("markers" in t.mode for t in fig.data)


# --- 4. memory and size --------------------------------------------------------------------------------------


def test_memory_and_model_size_have_axes_of_their_own() -> None:
    fig = charts.memory_and_size(frame_of(classification()))
    by_name = {t.name: t for t in fig.data}
    assert by_name["peak host memory (MB)"].yaxis == "y"
    assert by_name["model size (MB)"].yaxis == "y2"
    assert fig.layout.yaxis2.domain != fig.layout.yaxis.domain


# --- 5. the baseline, named ----------------------------------------------------------------------------------


def test_baseline_label_names_the_row_the_speedups_divide_by() -> None:
    report = classification()
    assert tables.baseline_label(report) == "baseline on torch (fp32)"
    assert tables.baseline_label(frame_of(report)) == "baseline on torch"  # a frame carries no settings
    baseline = next(r for r in report["results"] if r["cell"] == 0)
    assert baseline["speedup_vs_baseline"] == 1.0  # storage's add_speedups picked the same row


def test_baseline_label_follows_add_speedups_per_batch_size() -> None:
    rows = [result(0, "baseline", "torch", 1, 5.0, status="failed", error="boom"),
            result(1, "baseline", "onnxruntime", 1, 4.0),
            result(2, "baseline", "torch", 8, 20.0, settings={"dtype": "bfloat16"}),
            result(3, "baseline", "onnxruntime", 8, 15.0)]
    report = study(rows)
    assert tables.baseline_label(report) == "baseline on onnxruntime at b1; torch (bf16) at b8"
    assert [r["speedup_vs_baseline"] for r in rows] == [None, 1.0, 1.0, 20.0 / 15.0]
    assert tables.baseline_label(study([result(0, "fp16", "onnxruntime", 1, 3.0)])) == "baseline (none measured)"


def test_speedup_heading_and_latency_chart_name_the_baseline() -> None:
    text = study_html(classification())
    heads = [c.text for c in parse(text).tables["results"][0].cells]
    assert "speedup vs baseline on torch (fp32)" in heads
    latency = figures(text)["chart-latency"]
    assert "baseline on torch (fp32)" in latency["layout"]["title"]["text"]
    assert "× the baseline on torch (fp32)" in text
    assert ("speedup", "speedup vs baseline", "%.2f×") in tables.shown_columns()


# --- 6. missing values ----------------------------------------------------------------------------------------


def test_no_table_shows_none_or_nan() -> None:
    report = classification()
    report["results"][0]["notes"] = []
    page = parse(study_html(report))
    for name, rows in page.tables.items():
        for row in rows:
            for text in row.texts():
                # "none" in lower case is deliberate text ("maximum p99 (ms): none"), not a leaked None
                assert text.strip() not in ("None", "nan", "NaN", "<NA>", "null", ""), (name, row.texts())
    rows = {r.cell: r.by_column() for r in page.tables["results"] if r.cell is not None}
    assert rows[0]["error"].text == tables.MISSING and rows[0]["notes"].text == tables.MISSING
    assert rows[4]["p50_ms"].text == tables.MISSING and rows[4]["error"].text == "RuntimeError: no kernel"


def test_styled_frame_for_streamlit_shows_the_dash() -> None:
    frame = frame_of(classification())
    html = tables.styled(frame, tables.shown_columns(frame)).to_html()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    assert cells and not {c.strip().lower() for c in cells} & {"none", "nan", "<na>", ""}
    assert tables.MISSING in cells and "ok ⚠ noisy ±12%" in cells and "0.700" not in cells  # top-1 as %.4f
    assert "0.7000" in cells


def test_environment_diff_shows_a_missing_field_as_the_dash() -> None:
    diff = tables.environment_diff({"a": 1, "gpu": None}, {"a": 2, "b": "x"})
    assert {d["field"]: (d["A"], d["B"]) for d in diff} == {"a": ("1", "2"), "b": (tables.MISSING, "x")}


# --- 7. a note on many cells, once ------------------------------------------------------------------------


def test_shared_notes_are_those_on_two_or_more_cells_in_first_seen_order() -> None:
    report = classification()
    report["results"][0]["notes"] = ["threads pinned", "torch note"]
    report["results"][3]["notes"].append("threads pinned")
    assert tables.shared_notes(report) == ["threads pinned", EXPORTER_NOTE]
    assert tables.note_counts(report)[EXPORTER_NOTE] == 4  # twice on cell 3 is still one cell
    frame = tables.results_table(report, without=tables.shared_notes(report))
    assert list(frame["notes"]) == ["torch note", "", "calibrated on 8 samples", "", ""]
    assert EXPORTER_NOTE in tables.results_table(report)["notes"][1]  # the CSV keeps every row whole


def test_html_report_shows_a_shared_note_once_above_the_table() -> None:
    text = study_html(classification())
    page = parse(text)
    assert "Notes for the whole study" in text
    body = text.split("<h2>Every measured field</h2>")[0]  # the raw JSON dump below repeats every field
    assert body.count("dynamo failed") == 1
    notes = {r.cell: r.by_column()["notes"].text for r in page.tables["results"] if r.cell is not None}
    assert notes[2] == "calibrated on 8 samples" and all(EXPORTER_NOTE not in n for n in notes.values())
    assert "(4 of 5 cells)" in body


# --- 8. noisy cells --------------------------------------------------------------------------------------------


def test_flat_row_reads_the_noise_flag_and_keeps_its_json() -> None:
    report = classification()
    frame = tables.results_table(report)
    assert {"noisy", "noise_pct"} <= set(tables.FRAME_COLUMNS)
    assert list(frame["noisy"]) == [False, False, True, False, None]
    assert frame["noise_pct"][2] == 12.3 and json.loads(frame["noise"][2])["noisy"] is True
    assert json.loads(frame["machine_load"][2])["cpu_count"] == 2
    old = study([result(0, "baseline", "onnxruntime", 1, 2.0)])  # measured before noise was recorded
    row = tables.flat_row(old["results"][0])
    assert row["noisy"] is None and row["noise_pct"] is None and "noise" not in row
    assert tables.noise_label(row) is None and tables.status_text(row) == "ok"


def test_noise_labels() -> None:
    assert tables.noise_label({"noisy": True, "noise_pct": 12.3}) == "noisy ±12%"
    assert tables.noise_label({"noisy": True, "noise_pct": 0.2}) == "noisy"  # flagged for the machine, not spread
    assert tables.noise_label({"noisy": False, "noise_pct": 30.0}) is None
    assert tables.noise_label({"noisy": float("nan"), "noise_pct": None}) is None
    assert tables.status_text({"status": "ok", "noisy": True, "noise_pct": 12.3}) == "ok ⚠ noisy ±12%"


def test_latency_bars_hatch_noisy_cells() -> None:
    fig = charts.latency_bars(frame_of(classification()))
    bars = fig.data[0]
    assert list(bars.marker.pattern.shape) == ["", "", charts.NOISY_PATTERN, ""]
    assert "noisy ±12%" in bars.customdata[2][2] and "hatched: noisy" in fig.layout.title.text
    steady = charts.latency_bars(frame_of(study([result(0, "baseline", "torch", 1, 1.0)])))
    assert "hatched" not in steady.layout.title.text and list(steady.data[0].marker.pattern.shape) == [""]


def test_a_noisy_recommendation_says_to_rerun() -> None:
    report = classification()
    frame = frame_of(report)
    best = recommend(frame, Constraints(max_accuracy_drop=0.05, batch_size=1), "task_metric")
    assert best is not None and best["variant"] == "int8-dynamic"  # noisy cells are still considered
    assert recommendation_note(best) == "noisy: ±12% — rerun on an idle machine"
    text = study_html(report, Constraints(max_accuracy_drop=0.05, batch_size=1))
    page = parse(text)
    rows = {r.cell: r.by_column() for r in page.tables["results"] if r.cell is not None}
    assert rows[2]["status"].text == "ok ⚠ noisy ±12%" and rows[1]["status"].text == "ok"
    assert 'id="recommendation-note"' in text and "noisy: ±12% — rerun on an idle machine" in text

    steady = frame[frame["variant"] == "fp16"].iloc[0]
    assert recommendation_note(steady) is None and recommendation_note(None) is None
    old = copy.deepcopy(report)
    for r in old["results"]:
        r.pop("noise", None)
        r.pop("machine_load", None)
    old_frame = frame_of(old)
    assert old_frame["noisy"].isna().all()
    assert recommendation_note(recommend(old_frame, Constraints(max_accuracy_drop=0.05), "task_metric")) is None
    assert 'id="recommendation-note"' not in study_html(old, Constraints(max_accuracy_drop=0.05, batch_size=1))


def test_a_crowded_accuracy_chart_labels_only_the_frontier() -> None:
    from engine.report.pareto import pareto_frontier

    n = charts.MAX_LABELLED + 10
    rows = [result(i, f"v{i}", "onnxruntime", 1, 1.0 + i * 0.1, cosine=0.9 + (i % 7) * 0.01) for i in range(n)]
    frame = frame_of(study(rows))
    fig = charts.accuracy_vs_latency(frame, "cosine", "cosine")
    labelled = [t for trace in fig.data if trace.mode == "markers+text" for t in trace.text if t]
    assert len(labelled) == len(pareto_frontier(frame, "p50_ms", "cosine"))
