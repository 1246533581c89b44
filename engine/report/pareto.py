"""Speed against accuracy: the Pareto frontier and the cell to ship under constraints (pandas only)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from engine.report.tables import interval_text, noise_label, noise_spread, speedup_interval, speedup_text
from engine.results import Status

DEFAULT_MAX_DROP = 0.01  # what the Results page, the Space and the HTML report start from


@dataclass(frozen=True)
class Constraints:
    """What the user can afford: accuracy lost against the baseline, and a p99 latency budget."""

    max_accuracy_drop: float | None = None
    max_p99_ms: float | None = None
    batch_size: int | None = None


def accuracy_column(frame: pd.DataFrame) -> tuple[str, str]:
    """The task metric when every measured cell has one, else cosine fidelity to the fp32 reference."""
    ok = frame[frame["status"] == Status.OK]
    if len(ok) and ok["task_metric"].notna().all():
        return "task_metric", "task metric (top-1)"
    return "cosine", "fidelity (cosine to fp32)"


def accuracy_drop_unit(accuracy: str) -> str:
    """The unit of an accuracy drop on accuracy_column's column, as a number input's label says it."""
    # top-1 is stored as a fraction (0.75, not 75 %): a drop of 0.01 is one percentage point
    return "top-1 as a fraction, 0.01 = 1 point" if accuracy == "task_metric" else "of cosine"


def pareto_frontier(frame: pd.DataFrame, latency: str = "p50_ms", accuracy: str = "cosine") -> pd.DataFrame:
    """Cells no other cell beats on both latency (lower) and accuracy (higher), fastest first."""
    ok = frame[(frame["status"] == Status.OK) & frame[latency].notna() & frame[accuracy].notna()]
    ordered = ok.sort_values([latency, accuracy], ascending=[True, False])
    keep = []
    best = float("-inf")
    for index, row in ordered.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return ordered.loc[keep]


def recommend(frame: pd.DataFrame, constraints: Constraints, accuracy: str = "cosine") -> pd.Series | None:
    """The cell to ship within the constraints, or None when no cell qualifies.

    The candidate is the fastest qualifying cell by p50. Cells at its batch size whose speedup intervals overlap its
    own are tied with it on speed: the measurement cannot tell them apart. Among the candidate and its ties the most
    accurate wins, then the lowest p50; the row then carries `speed_tie`, a sentence naming the others. Without
    intervals (studies measured before them) nothing ties: the fastest cell, as ever.
    """
    ok = frame[(frame["status"] == Status.OK) & frame["p50_ms"].notna() & frame[accuracy].notna()]
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
    candidate = ok.sort_values(["p50_ms", accuracy], ascending=[True, False]).iloc[0]
    ties = speed_ties(ok, candidate)
    if ties.empty:
        return candidate
    group = pd.concat([ok.loc[[candidate.name]], ties])
    best = group.sort_values([accuracy, "p50_ms"], ascending=[False, True], kind="stable").iloc[0].copy()
    others = group.drop(index=best.name).sort_values("p50_ms", kind="stable")
    named = ", ".join(f"{row['variant']} · {row['runtime']} ({speedup_text(row)})" for _, row in others.iterrows())
    if best.name != candidate.name:  # only a strictly more accurate cell displaces the fastest one
        why = f"picked the {'more' if len(others) == 1 else 'most'} accurate"
    else:
        why = "kept the fastest by p50, which is no less accurate"
    best["speed_tie"] = f"tied on speed with {named} — the intervals overlap; {why}"
    return best


def speed_ties(cells: pd.DataFrame, cell: pd.Series) -> pd.DataFrame:
    """The other cells at the cell's batch size whose 95% speedup intervals overlap its own: as fast as far as the
    measurement can tell. None without an interval on both sides."""
    mine = speedup_interval(cell)
    if mine is None or "speedup_low" not in cells or "speedup_high" not in cells:
        return cells.iloc[:0]
    same = cells[(cells["batch_size"] == cell["batch_size"]) & (cells.index != cell.name)]
    overlap = [index for index, row in same.iterrows()
               if (theirs := speedup_interval(row)) is not None and theirs[0] <= mine[1] and mine[0] <= theirs[1]]
    return same.loc[overlap]


def recommendation_notes(best: pd.Series | None) -> list[str]:
    """Caveats to show beside the recommendation, each completing "This cell was ...": noisy timings ("noisy: ±12%
    — rerun on an idle machine"), a tie on speed with other cells, a speedup not surely above 1.

    recommend() still weighs noisy cells (their median is the best estimate there is); these say how far to trust it.
    """
    if best is None:
        return []
    notes = []
    if noise_label(best) is not None:
        message = best.get("noise_message")
        if isinstance(message, str) and message:
            notes.append(message)  # the verdict the cell recorded: what made it noisy and what to do about it
        else:
            spread = noise_spread(best)
            notes.append(f"noisy{'' if spread is None else ': ' + spread} — rerun on an idle machine")
    tie = best.get("speed_tie")
    if isinstance(tie, str) and tie:
        notes.append(tie)
    interval = speedup_interval(best)
    if interval is not None and interval[1] < 1.0:
        notes.append(f"slower than the baseline (interval {interval_text(interval)})")
    elif interval is not None and interval[0] < 1.0:
        notes.append(f"not surely faster than the baseline (interval {interval_text(interval)})")
    return notes


def recommendation_note(best: pd.Series | None) -> str | None:
    """recommendation_notes as one line, or None when there is nothing to add."""
    return "; ".join(recommendation_notes(best)) or None
