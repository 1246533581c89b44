"""Plotly figures of a study's results; the Results page and the HTML report draw the same ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.report.pareto import pareto_frontier


def cell_label(frame: pd.DataFrame) -> pd.Series:
    return frame["variant"] + " · " + frame["runtime"] + " · b" + frame["batch_size"].astype(str)


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & frame["p50_ms"].notna()].copy()


def latency_bars(frame: pd.DataFrame) -> go.Figure:
    """p50 per cell with whiskers up to p90 and p99."""
    ok = _ok(frame)
    labels = cell_label(ok)
    fig = go.Figure()
    fig.add_bar(x=labels, y=ok["p50_ms"], name="p50",
                error_y={"type": "data", "symmetric": False, "array": ok["p99_ms"] - ok["p50_ms"],
                         "arrayminus": [0] * len(ok)},
                customdata=np.stack([ok["p90_ms"], ok["p99_ms"]], axis=-1) if len(ok) else None,
                hovertemplate="%{x}<br>p50 %{y:.3f} ms<br>p90 %{customdata[0]:.3f} ms"
                              "<br>p99 %{customdata[1]:.3f} ms<extra></extra>")
    fig.add_scatter(x=labels, y=ok["p90_ms"], mode="markers", name="p90", marker={"symbol": "line-ew-open",
                                                                                     "size": 14})
    fig.update_layout(title="Latency per cell (p50, whiskers to p99)", yaxis_title="ms", xaxis_tickangle=-30,
                      height=420, margin={"b": 120})
    return fig


def latency_distribution(frame: pd.DataFrame, samples: dict[int, np.ndarray]) -> go.Figure:
    """Box plots of the raw per-iteration latencies."""
    fig = go.Figure()
    ok = _ok(frame)
    for _, row in ok.iterrows():
        data = samples.get(int(row["cell"]))
        if data is None or not len(data):
            continue
        fig.add_box(y=data, name=f"{row['variant']} · {row['runtime']} · b{row['batch_size']}", boxpoints=False)
    fig.update_layout(title="Latency distribution (raw samples)", yaxis_title="ms", showlegend=False, height=420,
                      margin={"b": 120})
    return fig


def accuracy_vs_latency(frame: pd.DataFrame, accuracy: str, accuracy_label: str,
                        recommended: pd.Series | None = None) -> go.Figure:
    """Every measured cell, the Pareto frontier as a line, the recommended cell ringed."""
    ok = _ok(frame)
    ok = ok[ok[accuracy].notna()]
    fig = go.Figure()
    for runtime, group in ok.groupby("runtime"):
        fig.add_scatter(x=group["p50_ms"], y=group[accuracy], mode="markers", name=str(runtime),
                        text=cell_label(group), marker={"size": 11},
                        hovertemplate="%{text}<br>p50 %{x:.3f} ms<br>" + accuracy_label + " %{y:.4f}<extra></extra>")
    front = pareto_frontier(ok, "p50_ms", accuracy)
    fig.add_scatter(x=front["p50_ms"], y=front[accuracy], mode="lines", name="Pareto frontier",
                    line={"dash": "dash", "color": "black"}, hoverinfo="skip")
    if recommended is not None:
        fig.add_scatter(x=[recommended["p50_ms"]], y=[recommended[accuracy]], mode="markers", name="recommended",
                        marker={"size": 22, "symbol": "circle-open", "line": {"width": 3}, "color": "crimson"},
                        hoverinfo="skip")
    fig.update_layout(title=f"{accuracy_label} against latency", xaxis_title="p50 latency (ms)",
                      yaxis_title=accuracy_label, height=450)
    return fig


def memory_and_size(frame: pd.DataFrame) -> go.Figure:
    ok = _ok(frame)
    labels = cell_label(ok)
    fig = go.Figure()
    fig.add_bar(x=labels, y=ok["peak_host_mb"], name="peak host memory (MB)")
    fig.add_bar(x=labels, y=ok["model_size_mb"], name="model size (MB)")
    if ok["peak_device_mb"].notna().any():
        fig.add_bar(x=labels, y=ok["peak_device_mb"], name="peak device memory (MB)")
    fig.update_layout(title="Memory and size", barmode="group", yaxis_title="MB", xaxis_tickangle=-30, height=420,
                      margin={"b": 120})
    return fig


def throughput_vs_batch(frame: pd.DataFrame) -> go.Figure:
    ok = _ok(frame)
    fig = go.Figure()
    for (variant, runtime), group in ok.groupby(["variant", "runtime"]):
        group = group.sort_values("batch_size")
        fig.add_scatter(x=group["batch_size"], y=group["throughput_per_s"], mode="lines+markers",
                        name=f"{variant} · {runtime}")
    fig.update_layout(title="Throughput against batch size", xaxis_title="batch size", yaxis_title="items/s",
                      xaxis_type="log", height=420)
    return fig


def compare_ratios(joined: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Per-cell p50 ratio B/A (below 1: B is faster)."""
    labels = cell_label(joined)
    fig = go.Figure()
    fig.add_bar(x=labels, y=joined["p50_ratio"], name="p50 ratio")
    fig.add_hline(y=1.0, line_dash="dash")
    fig.update_layout(title=f"p50 of {label_b} / {label_a} (below 1: {label_b} is faster)", yaxis_title="ratio",
                      xaxis_tickangle=-30, height=420, margin={"b": 120})
    return fig
