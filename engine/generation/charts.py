"""The generation charts of the Results page (and any report): TTFT against prompt length, decode tokens/s against
batch size, and perplexity increase against decode tokens/s with the Pareto frontier."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from engine.report.charts import new_figure
from engine.results import Status


def generation_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per measured generation cell: its labels and the numbers the charts draw."""
    rows = []
    for r in results:
        g = r.get("generation")
        if r.get("status") != Status.OK or not g:
            continue
        rows.append({"cell": r["cell"], "variant": r["variant"], "runtime": r["runtime"],
                     "batch_size": r["batch_size"], "prompt_len": g["prompt_len"],
                     "ttft_ms": g["ttft_ms"]["p50"], "tpot_ms": g["tpot_ms"]["p50"],
                     "decode_tokens_per_s": g["decode_tokens_per_s"], "perplexity": g["perplexity"],
                     # none without a tokenizer: such a cell has no place on the perplexity chart
                     "perplexity_increase_pct": (100.0 * g["perplexity_increase"]
                                                 if g.get("perplexity_increase") is not None else float("nan")),
                     "agreement": g["next_token_agreement"]})
    return pd.DataFrame(rows)


def is_generation_study(results: list[dict[str, Any]]) -> bool:
    return any(r.get("generation") for r in results)


def _series(frame: pd.DataFrame, keys: list[str]) -> Any:
    return frame.groupby(keys, sort=True)


def ttft_vs_prompt(frame: pd.DataFrame) -> go.Figure:
    fig = new_figure("Time to first token against prompt length (p50)", xaxis_title="prompt tokens",
                     yaxis_title="TTFT (ms)")
    for (variant, runtime, batch), part in _series(frame, ["variant", "runtime", "batch_size"]):
        part = part.sort_values("prompt_len")
        fig.add_trace(go.Scatter(x=part["prompt_len"], y=part["ttft_ms"], mode="lines+markers",
                                 name=f"{variant} · {runtime} · b{batch}"))
    return fig


def decode_vs_batch(frame: pd.DataFrame) -> go.Figure:
    fig = new_figure("Decode tokens/s against batch size (batch × 1000 / TPOT p50)", xaxis_title="batch size",
                     yaxis_title="decode tokens/s")
    for (variant, runtime, prompt), part in _series(frame, ["variant", "runtime", "prompt_len"]):
        part = part.sort_values("batch_size")
        fig.add_trace(go.Scatter(x=part["batch_size"], y=part["decode_tokens_per_s"], mode="lines+markers",
                                 name=f"{variant} · {runtime} · prompt {prompt}"))
    return fig


def frontier(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells no other beats on both decode tokens/s (higher) and perplexity increase (lower), fastest first."""
    ordered = frame.dropna(subset=["perplexity_increase_pct"]).sort_values(
        ["decode_tokens_per_s", "perplexity_increase_pct"], ascending=[False, True])
    keep, best = [], float("inf")
    for index, row in ordered.iterrows():
        if row["perplexity_increase_pct"] < best:
            keep.append(index)
            best = row["perplexity_increase_pct"]
    return ordered.loc[keep]


def perplexity_vs_decode(frame: pd.DataFrame) -> go.Figure:
    fig = new_figure("Perplexity increase over fp32 against decode tokens/s", xaxis_title="decode tokens/s",
                     yaxis_title="perplexity increase (%)")
    labels = frame["variant"] + " · " + frame["runtime"] + " · b" + frame["batch_size"].astype(str) + \
        " · p" + frame["prompt_len"].astype(str)
    fig.add_trace(go.Scatter(x=frame["decode_tokens_per_s"], y=frame["perplexity_increase_pct"], mode="markers",
                             text=labels, name="cells",
                             hovertemplate="%{text}<br>%{x:.1f} tok/s<br>%{y:+.2f}% perplexity<extra></extra>"))
    front = frontier(frame)
    fig.add_trace(go.Scatter(x=front["decode_tokens_per_s"], y=front["perplexity_increase_pct"], mode="lines",
                             name="Pareto frontier", line={"dash": "dot"}))
    return fig


def generation_figures(results: list[dict[str, Any]]) -> list[tuple[str, go.Figure]]:
    """The three charts, keyed for Streamlit; none when no generation cell has finished."""
    frame = generation_frame(results)
    if frame.empty:
        return []
    return [("gen-ttft", ttft_vs_prompt(frame)), ("gen-decode", decode_vs_batch(frame)),
            ("gen-perplexity", perplexity_vs_decode(frame))]
