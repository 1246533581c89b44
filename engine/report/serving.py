"""Serving results of a study (`serve-bench` runs): their flat table and the latency-against-throughput chart that
the Serving page and the HTML report both draw; a generation cell's levels add TTFT, TPOT, output tokens/s and
goodput."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from engine.report.charts import new_figure

SERVING_COLUMNS = ["run", "cell", "label", "server", "batching", "level", "mode", "concurrency", "rate_rps",
                   "requests", "errors", "throughput_rps", "items_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_batch",
                   "batch_sizes", "stable", "created_at", "scenario", "output_tokens_per_s", "ttft_p50_ms",
                   "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p99_ms", "goodput_rps", "goodput_fraction"]
# (column, label, format) as tables.shown_columns gives them: the HTML report's table and the page's
TABLE_COLUMNS: list[tuple[str, str, str | None]] = [
    ("run", "run", "%d"), ("batching", "batching", None), ("server", "server", None), ("level", "level", None),
    ("requests", "requests", "%d"), ("errors", "errors", "%d"), ("throughput_rps", "req/s", "%.1f"),
    ("items_per_s", "items/s", "%.1f"), ("p50_ms", "p50 ms", "%.3f"), ("p90_ms", "p90 ms", "%.3f"),
    ("p99_ms", "p99 ms", "%.3f"), ("batch_sizes", "server batch sizes", None), ("mean_batch", "mean batch", "%.2f"),
    ("stable", "stable", None)]
# a generation cell's levels (e2e latency in the p50/p99 columns; the server generates one request at a time)
GENERATION_COLUMNS: list[tuple[str, str, str | None]] = [
    ("run", "run", "%d"), ("server", "server", None), ("level", "level", None), ("requests", "requests", "%d"),
    ("errors", "errors", "%d"), ("throughput_rps", "req/s", "%.2f"), ("output_tokens_per_s", "output tok/s", "%.1f"),
    ("ttft_p50_ms", "TTFT p50 ms", "%.2f"), ("ttft_p99_ms", "TTFT p99 ms", "%.2f"),
    ("tpot_p50_ms", "TPOT p50 ms", "%.2f"), ("tpot_p99_ms", "TPOT p99 ms", "%.2f"),
    ("itl_p99_ms", "ITL p99 ms", "%.2f"),
    ("p50_ms", "e2e p50 ms", "%.1f"), ("p99_ms", "e2e p99 ms", "%.1f"), ("goodput_rps", "goodput req/s", "%.2f"),
    ("goodput_fraction", "met targets", "%.0f%%"), ("stable", "stable", None)]


def table_columns(levels: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    """The levels' table columns: a generation cell's (TTFT, TPOT, output tokens/s, goodput) or a single pass's."""
    return GENERATION_COLUMNS if (levels["scenario"] == "generate").any() else TABLE_COLUMNS


def batching_label(max_batch: int | None, max_delay_ms: float | None) -> str:
    """How a run's server batched, in words: "no batching", "batch ≤ 8 within 5 ms" or "batching unknown"."""
    if max_batch is None:
        return "batching unknown"
    if max_batch <= 1:
        return "no batching"
    return f"batch ≤ {max_batch} within {max_delay_ms:g} ms" if max_delay_ms is not None else f"batch ≤ {max_batch}"


def level_label(level: dict[str, Any]) -> str:
    return f"c={level['concurrency']}" if level["mode"] == "closed" else f"{level['rate_rps']:g}/s open"


def serving_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per level of every serving run in the report (`serving`), runs in the order they ran."""
    rows = []
    for run in report.get("serving") or []:
        batching = batching_label(run.get("max_batch"), run.get("max_delay_ms"))
        server = run.get("url") or "local bundle"
        for level in run.get("levels") or []:
            latency = level.get("latency_ms") or {}
            sizes = level.get("batch_sizes")
            gen = level.get("generation") or {}
            ttft, tpot = gen.get("ttft_ms") or {}, gen.get("tpot_ms") or {}
            fraction = gen.get("goodput_fraction")
            rows.append({
                "run": run["id"], "cell": run["cell"], "label": f"run {run['id']}: {batching}", "server": server,
                "batching": batching, "level": level_label(level), "mode": level["mode"],
                "concurrency": level.get("concurrency"), "rate_rps": level.get("rate_rps"),
                "requests": level["requests"], "errors": level["errors"],
                "throughput_rps": level.get("throughput_rps"), "items_per_s": level.get("items_per_s"),
                "p50_ms": latency.get("p50"), "p90_ms": latency.get("p90"), "p99_ms": latency.get("p99"),
                "mean_batch": level.get("mean_batch"),
                "batch_sizes": (" ".join(f"{k}: {v}" for k, v in sizes.items()) or "none") if sizes is not None
                else "unknown",
                "stable": "yes" if level.get("stable") else "no", "created_at": run.get("created_at"),
                "scenario": (run.get("settings") or {}).get("scenario") or "single-pass",
                "output_tokens_per_s": gen.get("output_tokens_per_s"),
                "ttft_p50_ms": ttft.get("p50"), "ttft_p99_ms": ttft.get("p99"), "tpot_p50_ms": tpot.get("p50"),
                "tpot_p99_ms": tpot.get("p99"),
                "itl_p99_ms": (gen.get("itl_ms") or {}).get("p99"), "goodput_rps": gen.get("goodput_rps"),
                "goodput_fraction": fraction * 100.0 if fraction is not None else None})
    return pd.DataFrame(rows, columns=SERVING_COLUMNS)


def served_cells(report: dict[str, Any]) -> list[int]:
    """Cells with serving results, in cell order."""
    return sorted({int(run["cell"]) for run in report.get("serving") or []})


def cell_label(report: dict[str, Any], cell: int) -> str:
    row = next((r for r in report.get("results") or [] if r.get("cell") == cell), None)
    if row is None:
        return f"cell {cell}"
    return f"cell {cell}: {row['variant']} on {row['runtime']}, batch {row['batch_size']}"


def latency_vs_throughput(frame: pd.DataFrame, title: str = "Serving: latency against throughput") -> go.Figure:
    """p50 (solid) and p99 (dashed) latency against requests/s, one pair of lines per run (its batching in the
    legend), each point a load level. Levels where every request failed have no latency and are left out."""
    fig = new_figure(title, xaxis_title="throughput (requests/s)", yaxis_title="latency (ms)",
                     legend={"orientation": "h", "y": -0.2}, height=480)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    for i, (run, levels) in enumerate(frame.groupby("run", sort=True)):
        measured = levels.dropna(subset=["throughput_rps", "p50_ms"]).sort_values("throughput_rps", kind="stable")
        if measured.empty:
            continue
        color = palette[i % len(palette)]
        label = str(levels["label"].iloc[0])
        hover = [f"{r.level}: {r.throughput_rps:.1f} req/s, {r.items_per_s:.1f} items/s<br>p50 {r.p50_ms:.3f} ms · "
                 f"p99 {r.p99_ms:.3f} ms · errors {r.errors} · stable {r.stable}<br>server batches: {r.batch_sizes}"
                 for r in measured.itertuples()]
        for stat, dash, symbol in (("p50_ms", "solid", "circle"), ("p99_ms", "dash", "diamond")):
            fig.add_trace(go.Scatter(
                x=measured["throughput_rps"], y=measured[stat], mode="lines+markers+text",
                name=f"{label} · {stat[:3]}", legendgroup=str(run), text=measured["level"],
                textposition="top center", line={"color": color, "dash": dash}, marker={"symbol": symbol},
                hovertext=hover, hoverinfo="text"))
    return fig
