"""Speedups with their 95% intervals (issue 13): the tables, the CSV, the charts, the recommendation among cells
tied on speed, and older studies without intervals, which keep the point estimate and today's choice."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.report import charts, tables
from engine.report.html import compare_html, study_html
from engine.report.pareto import Constraints, recommend, recommendation_note, recommendation_notes, speed_ties
from tests.report.htmltables import parse
from tests.report.studies import figures, measured, older, result, study

AT_B1 = Constraints(max_accuracy_drop=0.01, batch_size=1)
INT8_TIE = "int8-dynamic · onnxruntime (2.00× [1.80, 2.20])"


def values(data: Any) -> list[Any]:
    """A Plotly trace array: a list, or {"dtype", "bdata"} (base64) as Plotly 6 writes numpy arrays."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def frame_of(report: dict[str, Any]) -> pd.DataFrame:
    return tables.results_table(report)[tables.FRAME_COLUMNS]


def by_cell(frame: pd.DataFrame) -> dict[int, pd.Series]:
    return {int(row["cell"]): row for _, row in frame.iterrows()}


# --- the tables --------------------------------------------------------------------------------------------------


def test_speedup_text_has_the_interval_in_brackets() -> None:
    assert tables.speedup_text({"speedup": 1.8, "speedup_low": 1.6, "speedup_high": 2.0}) == "1.80× [1.60, 2.00]"
    assert tables.speedup_text({"speedup": 1.8}) == "1.80×"  # an older study: the point estimate only
    assert tables.speedup_text({"speedup": 1.8, "speedup_low": float("nan"), "speedup_high": None}) == "1.80×"
    assert tables.speedup_text({"speedup": None}) == tables.speedup_text({"speedup": float("nan")}) == tables.MISSING
    assert tables.speedup_text({"speedup_a": 0.5, "speedup_low_a": 0.45, "speedup_high_a": 0.55},
                               "_a") == "0.50× [0.45, 0.55]"
    assert tables.speedup_phrase({"speedup": 1.8, "speedup_low": 1.6, "speedup_high": 2.0},
                                 "baseline on torch") == "1.80× [1.60, 2.00] the baseline on torch"
    assert tables.speedup_phrase({"speedup": None}) is None


def test_rows_carry_the_interval_as_numbers_and_older_rows_none() -> None:
    frame = tables.results_table(measured())
    i = tables.FRAME_COLUMNS.index("speedup")
    assert tables.FRAME_COLUMNS[i:i + 4] == ["speedup", "speedup_low", "speedup_high", "speedup_method"]
    assert "speedup_ci95" not in frame.columns  # placed as two numbers, not a JSON list
    rows = by_cell(frame)
    assert (rows[1]["speedup"], rows[1]["speedup_low"], rows[1]["speedup_high"]) == (2.0, 1.8, 2.2)
    assert rows[1]["speedup_method"] == "interleaved" and rows[1]["speedup_rounds"] == 12
    assert rows[0]["speedup_method"] == "baseline" and rows[7]["speedup_method"] == "separate"
    assert rows[4]["speedup"] == pytest.approx(1.25) and tables.missing(rows[4]["speedup_low"])
    assert tables.missing(rows[4]["speedup_method"]) and tables.missing(rows[5]["speedup"])
    old = tables.results_table(older(measured()))
    assert list(old[tables.FRAME_COLUMNS].columns) == tables.FRAME_COLUMNS
    assert old["speedup_low"].isna().all() and old["speedup_method"].isna().all()


def test_csv_keeps_the_interval_numeric() -> None:
    csv = pd.read_csv(io.StringIO(tables.csv_text(measured())))
    assert {"speedup", "speedup_low", "speedup_high", "speedup_method", "speedup_rounds"} <= set(csv.columns)
    assert "speedup_ci95" not in csv.columns
    for column in ("speedup", "speedup_low", "speedup_high"):
        assert pd.api.types.is_float_dtype(csv[column]), column
    row = csv.set_index("cell").loc[1]
    assert (row["speedup"], row["speedup_low"], row["speedup_high"]) == (2.0, 1.8, 2.2)
    assert row["speedup_method"] == "interleaved" and row["speedup_rounds"] == 12
    assert pd.isna(csv.set_index("cell").loc[4, "speedup_low"])  # the older cell: no interval, not an invented one


def shown_speedups(styler: Any) -> list[str]:
    """The speedup column as the styled table displays it (what st.dataframe shows)."""
    lines = [line.split("\t") for line in styler.to_string(delimiter="\t").splitlines()]
    column = lines[0].index("speedup")
    return [line[column] for line in lines[1:]]


def test_styled_table_shows_the_interval_and_keeps_numbers() -> None:
    report = measured()
    frame = frame_of(report)
    styler = tables.styled(frame, tables.shown_columns(report))
    shown = dict(zip(frame["cell"], shown_speedups(styler), strict=True))
    assert shown[1] == "2.00× [1.80, 2.20]" and shown[0] == "1.00× [1.00, 1.00]"
    assert shown[4] == "1.25×" and shown[5] == tables.MISSING
    assert pd.api.types.is_float_dtype(styler.data["speedup"])  # the table still sorts by the number
    filtered = frame[frame["batch_size"] == 8]  # a filtered frame (the Space's filters) keeps its own rows
    assert shown_speedups(tables.styled(filtered, tables.shown_columns(report))) == [
        "1.00× [1.00, 1.00]", "1.95× [1.70, 2.10]"]
    assert shown_speedups(tables.styled(frame_of(older(report)), tables.shown_columns(report)))[1] == "2.00×"


# --- the recommendation ----------------------------------------------------------------------------------------


def test_tied_cells_give_way_to_the_more_accurate() -> None:
    frame = frame_of(measured())
    best = recommend(frame, AT_B1, "cosine")
    assert best is not None and best["variant"] == "fp16" and best["batch_size"] == 1
    assert recommendation_note(best) == (f"tied on speed with {INT8_TIE} — the intervals overlap; "
                                         "picked the more accurate")
    # int8-dynamic's ties: fp16 at its batch size; not int8-static (surely slower), not fp16 at batch 8
    fastest = frame[frame["cell"] == 1].iloc[0]
    assert list(speed_ties(frame[frame["status"] == "ok"], fastest)["cell"]) == [2]


def test_without_overlap_the_fastest_wins() -> None:
    frame = frame_of(measured(fp16_interval=(1.5, 1.75)))
    best = recommend(frame, AT_B1, "cosine")
    assert best is not None and best["variant"] == "int8-dynamic"
    assert recommendation_note(best) is None and "speed_tie" not in best


def test_ties_are_only_at_the_same_batch_size() -> None:
    frame = frame_of(measured())
    best = recommend(frame, Constraints(max_accuracy_drop=0.01), "cosine")  # any batch size
    assert best is not None and (best["variant"], best["batch_size"]) == ("fp16", 1)
    note = recommendation_note(best)
    assert note is not None and "1.95×" not in note and note.count("·") == 1


def test_an_older_study_recommends_exactly_as_before() -> None:
    frame = frame_of(older(measured()))
    best = recommend(frame, AT_B1, "cosine")
    assert best is not None
    expected = frame[(frame["batch_size"] == 1) & (frame["status"] == "ok") & (frame["cosine"] >= 0.99)]
    pd.testing.assert_series_equal(best, expected.sort_values(["p50_ms", "cosine"], ascending=[True, False]).iloc[0])
    assert best["variant"] == "int8-dynamic" and recommendation_note(best) is None


def baseline_and(int8_cosine: float) -> pd.DataFrame:
    """The baseline and one variant whose interval (0.95–1.20) holds 1: not surely faster than the baseline."""
    return frame_of(study([
        result(0, "baseline", "torch", 1, 10.0, cosine=1.0, speedup=1.0, interval=(1.0, 1.0), method="baseline"),
        result(1, "int8-dynamic", "onnxruntime", 1, 9.0, cosine=int8_cosine, speedup=1.08, interval=(0.95, 1.2)),
    ]))


def test_a_speedup_that_may_be_below_one_is_said() -> None:
    # as accurate as the baseline and tied with it: the lower p50 stays, with both caveats
    best = recommend(baseline_and(1.0), AT_B1, "cosine")
    assert best is not None and best["variant"] == "int8-dynamic"
    assert recommendation_notes(best) == [
        "tied on speed with baseline · torch (1.00× [1.00, 1.00]) — the intervals overlap; kept the fastest by "
        "p50, which is no less accurate",
        "not surely faster than the baseline (interval 0.95–1.20)"]
    # less accurate and not surely faster: the baseline itself
    best = recommend(baseline_and(0.995), AT_B1, "cosine")
    assert best is not None and best["variant"] == "baseline"
    assert recommendation_notes(best) == ["tied on speed with int8-dynamic · onnxruntime (1.08× [0.95, 1.20]) — "
                                          "the intervals overlap; picked the more accurate"]
    # the baseline over the p99 budget: the variant alone, with its caveat
    best = recommend(baseline_and(0.995), Constraints(max_accuracy_drop=0.01, max_p99_ms=11.0, batch_size=1),
                     "cosine")
    assert best is not None and best["variant"] == "int8-dynamic"
    assert recommendation_notes(best) == ["not surely faster than the baseline (interval 0.95–1.20)"]
    slower = pd.Series({"speedup": 0.9, "speedup_low": 0.8, "speedup_high": 0.95})
    assert recommendation_notes(slower) == ["slower than the baseline (interval 0.80–0.95)"]


# --- the HTML report -------------------------------------------------------------------------------------------


def test_html_report_shows_intervals_the_tie_and_the_speedup_chart() -> None:
    text = study_html(measured(), AT_B1)
    page = parse(text)
    rows = {r.cell: r.by_column() for r in page.tables["results"] if r.cell is not None}
    assert rows[1]["speedup"].text == "2.00× [1.80, 2.20]" and float(rows[1]["speedup"].value or "") == 2.0
    assert rows[4]["speedup"].text == "1.25×" and rows[5]["speedup"].text == tables.MISSING
    assert [r.cell for r in page.tables["results"] if "recommended" in r.classes] == [2]
    assert "Ship fp16 on onnxruntime (batch 1)" in text
    assert "1.80× [1.60, 2.00] the baseline on torch" in text
    assert f'id="recommendation-note">⚠ tied on speed with {INT8_TIE} — the intervals overlap; picked the more ' \
           "accurate</span>" in text

    figs = figures(text)
    hover = "speedup 2.00× [1.80, 2.20] vs baseline on torch"
    latency = figs["chart-latency"]["data"][0]
    assert any(hover in extra for _, _, extra in latency["customdata"])
    pareto = next(t for t in figs["chart-pareto"]["data"] if t.get("name") == "onnxruntime")
    assert any(hover in h for h in pareto["customdata"])
    speedup = figs["chart-speedup"]
    bars, whiskers = speedup["data"]
    labels = list(bars["x"])
    assert "int8-static · openvino · b1" not in labels  # failed: no speedup
    int8 = labels.index("int8-dynamic · onnxruntime · b1")
    assert hover in bars["customdata"][int8] and "interleaved rounds" in bars["customdata"][int8]
    assert "conservative" in bars["customdata"][labels.index("fp16 · onnxruntime · b8")]
    spans = {x: (y - below, y + above) for x, y, above, below in zip(
        whiskers["x"], values(whiskers["y"]), values(whiskers["error_y"]["array"]),
        values(whiskers["error_y"]["arrayminus"]), strict=True)}
    assert spans["int8-dynamic · onnxruntime · b1"] == pytest.approx((1.8, 2.2))
    assert spans["fp16 · onnxruntime · b8"] == pytest.approx((1.7, 2.1))
    # no interval: no whisker (not a zero-length one, which would read as certain)
    assert "prune-structured:0.5 · onnxruntime · b1" in labels and "prune-structured:0.5 · onnxruntime · b1" \
        not in spans
    assert "95% interval" in speedup["layout"]["title"]["text"]


def test_html_report_of_an_older_study_shows_point_speedups() -> None:
    text = study_html(older(measured()), AT_B1)
    rows = {r.cell: r.by_column() for r in parse(text).tables["results"] if r.cell is not None}
    assert rows[1]["speedup"].text == "2.00×" and rows[4]["speedup"].text == "1.25×"
    assert "chart-speedup" not in figures(text)  # nothing the latency chart does not already say
    assert "Ship int8-dynamic on onnxruntime" in text and 'id="recommendation-note"' not in text
    latency = figures(text)["chart-latency"]["data"][0]
    assert any("speedup 2.00× vs baseline on torch" in extra for _, _, extra in latency["customdata"])


def test_every_chart_draws_without_intervals_too() -> None:
    old = frame_of(older(measured()))
    assert not charts.has_speedup_intervals(old) and charts.has_speedup_intervals(frame_of(measured()))
    fig = charts.speedup_bars(old, "baseline on torch")
    assert len(fig.data[0].x) == 7 and not len(fig.data[1].x)  # point speedups, no whiskers


def test_comparison_shows_each_studys_speedup_with_its_interval() -> None:
    text = compare_html(measured(), older(measured()))
    rows = [r.by_column() for r in parse(text).tables["ratios"]][1:]  # the first row is the heading
    int8 = next(r for r in rows if r["variant"].text == "int8-dynamic")
    assert int8["speedup_a"].text == "2.00× [1.80, 2.20]" and int8["speedup_b"].text == "2.00×"
    joined = tables.compare_frames(frame_of(measured()), frame_of(older(measured())))
    assert {"speedup_a", "speedup_low_a", "speedup_high_b"} <= set(joined.columns)
