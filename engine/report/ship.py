"""The "Which variant should I ship?" panel: the constraints' inputs and the cell to ship under them, in Streamlit.

One source for the Results page and the Hugging Face Space viewer, which gets a copy as viewer/ship.py; so it
imports only what the Space has: streamlit, pandas and the report modules the Space copies too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from engine.report.pareto import (
    DEFAULT_MAX_DROP,
    Constraints,
    accuracy_column,
    accuracy_drop_unit,
    recommend,
    recommendation_notes,
)
from engine.report.tables import speedup_phrase
from engine.results import Status

TITLE = "Which variant should I ship?"


def markdown_text(text: Any) -> str:
    """Names and messages shown as written, never as Markdown or HTML."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>&])", r"\\\1", str(text))


@dataclass(frozen=True)
class ShipChoice:
    """What the panel settled on: the constraints set, the cell to ship (None when no cell meets them) and the
    accuracy column it was judged by, with its label."""

    constraints: Constraints
    best: pd.Series | None
    accuracy: str
    accuracy_label: str


def ship_sentence(best: pd.Series, accuracy: str, accuracy_label: str, baseline: str) -> str:
    """The recommendation as Markdown: "Ship **fp16** on **onnxruntime** (batch 1): p50 …, 1.80× [1.60, 2.00] the
    baseline on torch"."""
    text = (f"Ship **{markdown_text(best['variant'])}** on **{markdown_text(best['runtime'])}** "
            f"(batch {best['batch_size']}): p50 {best['p50_ms']:.3f} ms, p99 {best['p99_ms']:.3f} ms, "
            f"{accuracy_label} {best[accuracy]:.4f}")
    # the speedup's own text is numbers and brackets only; the baseline's label names runtimes
    speedup = speedup_phrase(best, markdown_text(baseline))
    return text if speedup is None else f"{text}, {speedup}"


def ship_panel(cells: pd.DataFrame, baseline: str) -> ShipChoice:
    """Draw the panel for the cells (tables.results_table's rows) and return what it chose.

    `baseline`: what the speedups divide by, tables.baseline_label's "baseline on torch".
    """
    measured = cells[(cells["status"] == Status.OK) & cells["p50_ms"].notna()]
    accuracy, accuracy_label = accuracy_column(cells)
    st.subheader(TITLE)
    c1, c2, c3 = st.columns(3)
    drop = c1.number_input(f"Maximum accuracy drop ({accuracy_drop_unit(accuracy)})", min_value=0.0,
                           value=DEFAULT_MAX_DROP, step=0.005, format="%.4f")
    budget = c2.number_input("Maximum p99 (ms, 0 = none)", min_value=0.0, value=0.0, step=1.0)
    batch = c3.selectbox("Batch size", sorted(int(b) for b in measured["batch_size"].unique()))
    constraints = Constraints(max_accuracy_drop=drop, max_p99_ms=budget or None, batch_size=batch)
    best = recommend(cells, constraints, accuracy)
    if best is None:
        st.warning("No cell meets these constraints; loosen them.")
    else:
        st.success(ship_sentence(best, accuracy, accuracy_label, baseline))
        for note in recommendation_notes(best):
            st.warning(f"This cell was {markdown_text(note)}.", icon=":material/warning:")
    return ShipChoice(constraints, best, accuracy, accuracy_label)
