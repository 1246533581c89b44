"""Speed against accuracy: the Pareto frontier and the cell to ship under constraints (pandas only)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from engine.report.tables import noise_label, noise_spread


@dataclass(frozen=True)
class Constraints:
    """What the user can afford: accuracy lost against the baseline, and a p99 latency budget."""

    max_accuracy_drop: float | None = None
    max_p99_ms: float | None = None
    batch_size: int | None = None


def accuracy_column(frame: pd.DataFrame) -> tuple[str, str]:
    """The task metric when every measured cell has one, else cosine fidelity to the fp32 reference."""
    ok = frame[frame["status"] == "ok"]
    if len(ok) and ok["task_metric"].notna().all():
        return "task_metric", "task metric (top-1)"
    return "cosine", "fidelity (cosine to fp32)"


def pareto_frontier(frame: pd.DataFrame, latency: str = "p50_ms", accuracy: str = "cosine") -> pd.DataFrame:
    """Cells no other cell beats on both latency (lower) and accuracy (higher), fastest first."""
    ok = frame[(frame["status"] == "ok") & frame[latency].notna() & frame[accuracy].notna()]
    ordered = ok.sort_values([latency, accuracy], ascending=[True, False])
    keep = []
    best = float("-inf")
    for index, row in ordered.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return ordered.loc[keep]


def recommend(frame: pd.DataFrame, constraints: Constraints, accuracy: str = "cosine") -> pd.Series | None:
    """The fastest cell (p50) within the constraints, or None when no cell qualifies."""
    ok = frame[(frame["status"] == "ok") & frame["p50_ms"].notna() & frame[accuracy].notna()]
    if constraints.batch_size is not None:
        ok = ok[ok["batch_size"] == constraints.batch_size]
    if ok.empty:
        return None
    if constraints.max_accuracy_drop is not None:
        base = ok[ok["variant"] == "baseline"][accuracy]
        reference = base.max() if len(base) else ok[accuracy].max()
        ok = ok[reference - ok[accuracy] <= constraints.max_accuracy_drop + 1e-12]
    if constraints.max_p99_ms is not None:
        ok = ok[ok["p99_ms"] <= constraints.max_p99_ms]
    if ok.empty:
        return None
    return ok.sort_values(["p50_ms", accuracy], ascending=[True, False]).iloc[0]


def recommendation_note(best: pd.Series | None) -> str | None:
    """A caveat to show beside the recommendation: "noisy: ±12% — rerun on an idle machine", else None.

    recommend() still weighs noisy cells (their median is the best estimate there is); this says how far to trust it.
    """
    if best is None or noise_label(best) is None:
        return None
    message = best.get("noise_message")
    if isinstance(message, str) and message:
        return message  # the verdict the cell recorded: what made it noisy and what to do about it
    spread = noise_spread(best)
    return f"noisy{'' if spread is None else ': ' + spread} — rerun on an idle machine"
