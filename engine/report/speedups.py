"""Speedups over each batch size's baseline cell, with their 95% intervals: computed where reports are made."""

from __future__ import annotations

from engine.results import CellResult, Status


def add_speedups(rows: list[CellResult]) -> None:
    """Speedup of each ok cell over the baseline on the first runtime that ran it, same batch size, with its
    95% interval; `baseline_cell` names that baseline's cell, so reports can say what the speedup is against.

    `speedup_method` says how: "interleaved" when the cell was timed against that baseline in alternating rounds
    (its `paired` record: the median of the per-round ratios and their interval), "separate" for the ratio of
    the two p50s timed at different moments (interval from each median's: [base low / cell high, base high /
    cell low], blind to drift between them), "baseline" for the baseline itself.
    """
    baselines: dict[int, CellResult] = {}
    for row in sorted(rows, key=lambda r: r.cell if r.cell is not None else -1):
        if row.variant == "baseline" and row.status == Status.OK and row.batch_size not in baselines:
            baselines[row.batch_size] = row
    for row in rows:
        row.speedup_vs_baseline = row.speedup_ci95 = row.speedup_method = row.speedup_rounds = None
        row.baseline_cell = None
        base = baselines.get(row.batch_size)
        if row.status != Status.OK or base is None or row.latency_ms is None or base.latency_ms is None:
            continue
        row.baseline_cell = base.cell
        paired = row.paired
        if row is base:
            row.speedup_vs_baseline, row.speedup_ci95, row.speedup_method = 1.0, (1.0, 1.0), "baseline"
        elif paired is not None and paired.baseline_cell == base.cell and paired.speedup is not None:
            row.speedup_vs_baseline, row.speedup_ci95 = paired.speedup, paired.ci95
            row.speedup_method, row.speedup_rounds = "interleaved", paired.rounds
        elif base.latency_ms.p50 and row.latency_ms.p50:
            row.speedup_vs_baseline = base.latency_ms.p50 / row.latency_ms.p50
            row.speedup_ci95 = separate_interval(base.latency_ms.p50_ci95, row.latency_ms.p50_ci95)
            row.speedup_method = "separate"


def separate_interval(base: tuple[float, float] | None, cell: tuple[float, float] | None) -> tuple[float, float] | None:
    """The speedup's interval from two medians' intervals timed apart: [base low / cell high, base high / cell low]."""
    if not base or not cell or min(cell) <= 0:
        return None
    return base[0] / cell[1], base[1] / cell[0]
