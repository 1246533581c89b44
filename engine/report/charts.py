"""Plotly figures of a study's results; the Results page, the HTML report and the Space draw the same ones.

Every figure starts from new_figure(), which sets its own template and colours: the ambient default
(`plotly.io.templates.default`, which importing streamlit points at placeholder colours) never applies.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from engine.report.pareto import pareto_frontier
from engine.report.tables import SPEEDUP_METHODS, noise_label, speedup_interval, speedup_text
from engine.results import Status

# Tableau 10 without its red, which marks the recommended cell: distinct on white, also for most colour-blind eyes.
COLORWAY = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
TEXT_COLOR = "#1f2430"  # the HTML report's text colour
FRONTIER_COLOR = TEXT_COLOR
RECOMMENDED_COLOR = "#d62728"
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'
NOISY_PATTERN = "/"  # hatching on the bars of noisy cells

# Where an accuracy measure cannot go: the axis padding stops there.
_BOUNDS = {"task_metric": (0.0, 1.0), "top1_agreement": (0.0, 1.0), "cosine": (-1.0, 1.0)}
_FULL_LABELS_UP_TO = 8  # Pareto points labelled "variant · runtime"; beyond this, the variant alone
_LABEL_VARIANT = (24, 16)  # longest variant name in a full and a short label; the hover has it whole
# Label placement works in pixels of a small plot area: positions that fit there fit a wider chart too.
_PLOT_PX = (700.0, 320.0)
_CHAR_PX, _LINE_PX, _GAP_PX, _MARKER_PX = 6.2, 13.0, 7.0, 7.0
_POSITIONS = ("top center", "bottom center", "middle right", "middle left", "top right", "bottom right", "top left",
              "bottom left")
_LOG_BATCH_RATIO = 10  # largest / smallest batch size from which the throughput axis is logarithmic


@lru_cache(maxsize=1)
def template() -> go.layout.Template:
    """plotly_white, taken by name, with this tool's colours and font."""
    base = go.layout.Template(pio.templates["plotly_white"])
    base.layout.update(colorway=list(COLORWAY), font={"family": FONT, "color": TEXT_COLOR},
                       paper_bgcolor="white", plot_bgcolor="white")
    return base


def new_figure(title: str, *, grid: dict[str, Any] | None = None, **layout: Any) -> go.Figure:
    """An empty figure (or make_subplots(**grid)) with this module's template, colours and title."""
    fig = make_subplots(**grid) if grid else go.Figure()
    # assigned, not update_layout(template=...): an update would merge into the ambient default template
    fig.layout.template = template()
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, **layout)
    return fig


def cell_label(frame: pd.DataFrame) -> pd.Series:
    return frame["variant"] + " · " + frame["runtime"] + " · b" + frame["batch_size"].astype(str)


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == Status.OK) & frame["p50_ms"].notna()].copy()


def _noise(frame: pd.DataFrame) -> list[str | None]:
    """Each row's "noisy ±N%", or None; frames without the noise columns (older studies) have none."""
    return [noise_label(row) for _, row in frame.iterrows()]


def _noise_suffix(label: str | None, sep: str = " ") -> str:
    return "" if label is None else f"{sep}({label})"


def _speedup_hover(row: pd.Series, baseline: str | None, sep: str = "<br>") -> str:
    """ "<br>speedup 1.80× [1.60, 2.00] vs baseline on torch" (its 95% interval where measured); "" without one."""
    if "speedup" not in row or pd.isna(row["speedup"]):
        return ""
    return f"{sep}speedup {speedup_text(row)}" + (f" vs {baseline}" if baseline else "")


def latency_bars(frame: pd.DataFrame, baseline: str | None = None) -> go.Figure:
    """p50 per cell with whiskers up to p99; noisy cells hatched. `baseline` (tables.baseline_label) names
    what the speedups in the hover divide by."""
    ok = _ok(frame)
    labels = cell_label(ok)
    noise = _noise(ok)
    extra = [_speedup_hover(row, baseline) + (f"<br>⚠ {label}" if label else "")
             for (_, row), label in zip(ok.iterrows(), noise, strict=True)]
    title = "Latency per cell (p50, whiskers to p99)"
    if baseline:
        title += f"; speedups vs {baseline}"
    if any(noise):
        title += "; hatched: noisy"
    fig = new_figure(title, yaxis_title="ms", xaxis_tickangle=-30, height=440, margin={"b": 120})
    fig.add_bar(x=labels, y=ok["p50_ms"], name="p50",
                marker={"color": COLORWAY[0], "pattern": {"shape": [NOISY_PATTERN if n else "" for n in noise]}},
                error_y={"type": "data", "symmetric": False, "array": ok["p99_ms"] - ok["p50_ms"],
                         "arrayminus": [0] * len(ok), "color": TEXT_COLOR},
                customdata=[list(v) for v in zip(ok["p90_ms"], ok["p99_ms"], extra, strict=True)],
                hovertemplate="%{x}<br>p50 %{y:.3f} ms<br>p90 %{customdata[0]:.3f} ms"
                              "<br>p99 %{customdata[1]:.3f} ms%{customdata[2]}<extra></extra>")
    fig.add_scatter(x=labels, y=ok["p90_ms"], mode="markers", name="p90",
                    marker={"symbol": "line-ew-open", "size": 14, "color": TEXT_COLOR, "line": {"width": 2}})
    return fig


def has_speedup_intervals(frame: pd.DataFrame) -> bool:
    """Some measured cell has a 95% speedup interval (studies measured before intervals have none)."""
    ok = _ok(frame)
    return any(speedup_interval(row) is not None for _, row in ok.iterrows())


def speedup_bars(frame: pd.DataFrame, baseline: str | None = None) -> go.Figure:
    """Speedup per cell with its 95% interval as whiskers and a line at 1: a whisker that crosses the line is a cell
    not surely faster than the baseline. Cells without a speedup are left out; noisy cells hatched."""
    ok = _ok(frame)
    ok = ok[ok["speedup"].notna()] if "speedup" in ok else ok.iloc[:0]
    labels = cell_label(ok)
    noise = _noise(ok)
    hover = []
    for (_, row), label in zip(ok.iterrows(), noise, strict=True):
        method = SPEEDUP_METHODS.get(str(row.get("speedup_method")))
        hover.append(_speedup_hover(row, baseline, sep="") + (f"<br>{method}" if method else "")
                     + (f"<br>⚠ {label}" if label else ""))
    title = "Speedup per cell (whiskers: 95% interval)" + (f" vs {baseline}" if baseline else "")
    fig = new_figure(title, yaxis_title="× baseline", xaxis_tickangle=-30, height=440, margin={"b": 120},
                     showlegend=False)
    fig.add_bar(x=labels, y=ok["speedup"].astype(float), name="speedup",
                marker={"color": COLORWAY[0], "pattern": {"shape": [NOISY_PATTERN if n else "" for n in noise]}},
                customdata=hover, hovertemplate="%{x}<br>%{customdata}<extra></extra>")
    # the whiskers on a trace of their own, only where a cell has an interval: Plotly draws a missing error value
    # as a zero-length whisker, which would read as a certain speedup
    spans = [(label, float(row["speedup"]), interval) for label, (_, row) in zip(labels, ok.iterrows(), strict=True)
             if (interval := speedup_interval(row)) is not None]
    fig.add_scatter(x=[label for label, _, _ in spans], y=[value for _, value, _ in spans], mode="markers",
                    name="95% interval", marker={"size": 1, "color": TEXT_COLOR}, hoverinfo="skip",
                    error_y={"type": "data", "symmetric": False, "color": TEXT_COLOR, "thickness": 2, "width": 6,
                             "array": [max(high - value, 0.0) for _, value, (_, high) in spans],
                             "arrayminus": [max(value - low, 0.0) for _, value, (low, _) in spans]})
    fig.add_hline(y=1.0, line_dash="dash", line_color=TEXT_COLOR)
    return fig


def latency_distribution(frame: pd.DataFrame, samples: dict[int, np.ndarray]) -> go.Figure:
    """Box plots of the raw per-iteration latencies; noisy cells named so."""
    fig = new_figure("Latency distribution (raw samples)", yaxis_title="ms", showlegend=False, height=440,
                     margin={"b": 120})
    ok = _ok(frame)
    for (_, row), noise in zip(ok.iterrows(), _noise(ok), strict=True):
        data = samples.get(int(row["cell"]))
        if data is None or not len(data):
            continue
        fig.add_box(y=data, name=f"{row['variant']} · {row['runtime']} · b{row['batch_size']}"
                    + _noise_suffix(noise), boxpoints=False, marker={"color": COLORWAY[0]})
    return fig


def accuracy_range(values: pd.Series, accuracy: str) -> list[float]:
    """The accuracy axis zoomed to the data, padded for the point labels, never past what the measure can reach."""
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    pad = 0.15 * span if span > 0 else max(abs(hi) * 0.01, 1e-3)
    floor, ceiling = _BOUNDS.get(accuracy, (float("-inf"), float("inf")))
    return [max(lo - pad, floor), min(hi + pad, ceiling)]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _point_labels(ok: pd.DataFrame, noise: list[str | None]) -> pd.Series:
    """Text beside each Pareto point: variant · runtime, or for many points the variant alone; clipped."""
    several_batches = ok["batch_size"].nunique() > 1
    full = len(ok) <= _FULL_LABELS_UP_TO
    out = []
    for (_, row), label in zip(ok.iterrows(), noise, strict=True):
        variant = _clip(str(row["variant"]), _LABEL_VARIANT[0 if full else 1])
        if full:
            text = f"{variant} · {row['runtime']}" + (f" · b{row['batch_size']}" if several_batches else "")
            out.append(text + _noise_suffix(label))
        else:
            out.append(variant + (" ⚠" if label else ""))
    return pd.Series(out, index=ok.index)


def latency_range(values: pd.Series) -> list[float]:
    """The latency axis with room for the labels of the first and last points, never below 0 ms."""
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    pad = 0.08 * span if span > 0 else max(abs(hi) * 0.1, 1e-3)
    return [max(lo - pad, 0.0), hi + pad]


Box = tuple[float, float, float, float]


def _label_box(x: float, y: float, text: str, position: str) -> Box:
    """Where Plotly draws a text at this position beside a point (pixels, y up): x0, y0, x1, y1."""
    width, height = len(text) * _CHAR_PX, _LINE_PX
    vertical, horizontal = position.split()
    x0 = x - width / 2 if horizontal == "center" else x + _GAP_PX if horizontal == "right" else x - _GAP_PX - width
    y0 = y + _GAP_PX if vertical == "top" else y - _GAP_PX - height if vertical == "bottom" else y - height / 2
    return x0, y0, x0 + width, y0 + height


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _text_positions(x: pd.Series, y: pd.Series, texts: pd.Series, x_range: list[float], y_range: list[float],
                    line: tuple[list[float], list[float]], ring: tuple[float, float] | None) -> pd.Series:
    """A textposition per point whose label covers the fewest other labels, points and frontier line.

    Greedy, left to right; first choice is toward the middle of the plot (labels of the top points below them).
    """
    width, height = _PLOT_PX
    x_span, y_span = (x_range[1] - x_range[0]) or 1.0, (y_range[1] - y_range[0]) or 1.0

    def px(vx: float, vy: float) -> tuple[float, float]:
        return (vx - x_range[0]) / x_span * width, (vy - y_range[0]) / y_span * height

    points = {i: px(float(x[i]), float(y[i])) for i in x.index}
    obstacles: list[Box] = []
    vertices = [px(vx, vy) for vx, vy in zip(*line, strict=True)]
    for (pa, qa), (pb, qb) in pairwise(vertices):
        for t in (k / 12 for k in range(1, 12)):  # the frontier as a string of small boxes
            cx, cy = pa + (pb - pa) * t, qa + (qb - qa) * t
            obstacles.append((cx - 2, cy - 2, cx + 2, cy + 2))
    if ring is not None:  # the recommended cell's ring is wider than a marker
        rx, ry = px(*ring)
        obstacles.append((rx - 2 * _MARKER_PX, ry - 2 * _MARKER_PX, rx + 2 * _MARKER_PX, ry + 2 * _MARKER_PX))
    plot: Box = (0.0, 0.0, width, height)
    positions: dict[Any, str] = {}
    for i in x.sort_values(kind="stable").index:
        cx, cy = points[i]
        markers = [(mx - _MARKER_PX, my - _MARKER_PX, mx + _MARKER_PX, my + _MARKER_PX)
                   for j, (mx, my) in points.items() if j != i]
        first = ("bottom center", "top center") if cy > height / 2 else ("top center", "bottom center")
        scored = []
        for rank, position in enumerate(first + _POSITIONS[2:]):
            box = _label_box(cx, cy, str(texts[i]), position)
            outside = (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, plot)
            covered = sum(_overlap(box, o) for o in obstacles) + sum(_overlap(box, m) for m in markers)
            scored.append((round(covered + 0.5 * outside), rank, position, box))
        _, _, positions[i], box = min(scored)
        obstacles.append(box)
    return pd.Series(positions)


# Above this many cells, only the Pareto frontier's points carry a label on the accuracy chart.
MAX_LABELLED = 40


def accuracy_vs_latency(frame: pd.DataFrame, accuracy: str, accuracy_label: str,
                        recommended: pd.Series | None = None, baseline: str | None = None) -> go.Figure:
    """Every measured cell, labelled (noisy ones hollow), the Pareto frontier on top, the recommended cell ringed;
    the hover has each cell's speedup with its interval (vs `baseline`, tables.baseline_label's text)."""
    ok = _ok(frame)
    ok = ok[ok[accuracy].notna()]
    fig = new_figure(f"{accuracy_label} against latency", xaxis_title="p50 latency (ms)", yaxis_title=accuracy_label,
                     height=480, legend={"title": {"text": "runtime"}})
    if ok.empty:
        return fig
    latencies, values = ok["p50_ms"], ok[accuracy]
    ring = None
    if recommended is not None and pd.notna(recommended.get(accuracy)):
        ring = (float(recommended["p50_ms"]), float(recommended[accuracy]))
        latencies, values = pd.concat([latencies, pd.Series([ring[0]])]), pd.concat([values, pd.Series([ring[1]])])
    y_range = accuracy_range(values, accuracy)
    x_range = latency_range(latencies)
    front = pareto_frontier(ok, "p50_ms", accuracy)
    noise = _noise(ok)
    texts = _point_labels(ok, noise)
    if len(ok) > MAX_LABELLED:
        # many cells: label the ones a reader chooses between (the frontier); hovering names the rest. The
        # placement search is quadratic, and a few hundred labels are unreadable anyway.
        texts = texts.where(ok.index.isin(front.index), "")
    labelled = texts != ""
    positions = pd.Series("top center", index=ok.index, dtype=object)
    positions[labelled] = _text_positions(ok["p50_ms"][labelled], ok[accuracy][labelled], texts[labelled], x_range,
                                          y_range, (front["p50_ms"].tolist(), front[accuracy].tolist()), ring)
    hover = cell_label(ok) + pd.Series([_noise_suffix(n) + _speedup_hover(row, baseline)
                                        for (_, row), n in zip(ok.iterrows(), noise, strict=True)], index=ok.index)
    noisy = pd.Series([n is not None for n in noise], index=ok.index)
    for i, (runtime, group) in enumerate(ok.groupby("runtime", sort=False)):
        color = COLORWAY[i % len(COLORWAY)]
        # hollow: a noisy cell's median may move on a rerun, so its place on the chart is provisional
        symbols = ["circle-open" if noisy[index] else "circle" for index in group.index]
        fig.add_scatter(x=group["p50_ms"], y=group[accuracy], mode="markers+text", name=str(runtime),
                        text=texts[group.index], textposition=positions[group.index].tolist(),
                        textfont={"size": 11, "color": color}, cliponaxis=False, customdata=hover[group.index],
                        marker={"size": 12, "color": color, "symbol": symbols, "line": {"width": 2, "color": color}},
                        hovertemplate="%{customdata}<br>p50 %{x:.3f} ms<br>" + accuracy_label
                                      + " %{y:.5f}<extra></extra>")
    # drawn after the cells, so on top of them: the line the eye should follow
    fig.add_scatter(x=front["p50_ms"], y=front[accuracy], mode="lines+markers", name="Pareto frontier",
                    line={"color": FRONTIER_COLOR, "width": 3}, marker={"size": 5, "color": FRONTIER_COLOR},
                    hoverinfo="skip")
    if recommended is not None:
        fig.add_scatter(x=[recommended["p50_ms"]], y=[recommended[accuracy]], mode="markers", name="recommended",
                        marker={"size": 24, "symbol": "circle-open", "line": {"width": 3},
                                "color": RECOMMENDED_COLOR},
                        cliponaxis=False, hoverinfo="skip")
    fig.update_xaxes(range=x_range)
    fig.update_yaxes(range=y_range)
    return fig


def memory_and_size(frame: pd.DataFrame) -> go.Figure:
    """Peak memory and model size on axes of their own: a few-MB model stays visible beside hundreds of MB."""
    ok = _ok(frame)
    labels = cell_label(ok)
    fig = new_figure("Memory and size", grid={"rows": 2, "cols": 1, "shared_xaxes": True, "vertical_spacing": 0.1,
                                              "subplot_titles": ("peak memory (MB)", "model size (MB)")},
                     barmode="group", height=560, margin={"b": 120}, legend={"orientation": "h", "y": 1.12})
    fig.add_bar(x=labels, y=ok["peak_host_mb"], name="peak host memory (MB)", marker={"color": COLORWAY[0]},
                row=1, col=1)
    if ok["peak_device_mb"].notna().any():
        fig.add_bar(x=labels, y=ok["peak_device_mb"], name="peak device memory (MB)",
                    marker={"color": COLORWAY[1]}, row=1, col=1)
    fig.add_bar(x=labels, y=ok["model_size_mb"], name="model size (MB)", marker={"color": COLORWAY[2]}, row=2, col=1)
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    fig.update_xaxes(tickangle=-30, row=2, col=1)
    return fig


def throughput_vs_batch(frame: pd.DataFrame) -> go.Figure:
    """Items/s against batch size per variant and runtime; one bar per cell when the study has one batch size."""
    ok = _ok(frame)
    batches = sorted(int(b) for b in ok["batch_size"].unique())
    if len(batches) <= 1:
        noise = _noise(ok)
        title = f"Throughput at batch size {batches[0]}" if batches else "Throughput"
        fig = new_figure(title, yaxis_title="items/s", xaxis_tickangle=-30, height=440, margin={"b": 120})
        fig.add_bar(x=cell_label(ok), y=ok["throughput_per_s"], name="items/s",
                    marker={"color": COLORWAY[0], "pattern": {"shape": [NOISY_PATTERN if n else "" for n in noise]}},
                    customdata=[_noise_suffix(n, "<br>") for n in noise],
                    hovertemplate="%{x}<br>%{y:.1f} items/s%{customdata}<extra></extra>")
        return fig
    fig = new_figure("Throughput against batch size", xaxis_title="batch size", yaxis_title="items/s", height=440)
    for (variant, runtime), group in ok.groupby(["variant", "runtime"], sort=False):
        group = group.sort_values("batch_size")
        fig.add_scatter(x=group["batch_size"], y=group["throughput_per_s"], mode="lines+markers",
                        marker={"size": 8}, name=f"{variant} · {runtime}")
    # logarithmic only across a wide range (1..64); a few nearby sizes read better evenly spaced
    wide = batches[-1] / batches[0] >= _LOG_BATCH_RATIO
    fig.update_xaxes(type="log" if wide else "linear", tickvals=batches, ticktext=[str(b) for b in batches])
    return fig


def compare_ratios(joined: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Per-cell p50 ratio B/A (below 1: B is faster)."""
    labels = cell_label(joined)
    fig = new_figure(f"p50 of {label_b} / {label_a} (below 1: {label_b} is faster)", yaxis_title="ratio",
                     xaxis_tickangle=-30, height=440, margin={"b": 120})
    fig.add_bar(x=labels, y=joined["p50_ratio"], name="p50 ratio", marker={"color": COLORWAY[0]})
    fig.add_hline(y=1.0, line_dash="dash", line_color=TEXT_COLOR)
    return fig
