"""One study across machines: each variant's latency on each machine kind (or node) that measured it."""

from __future__ import annotations

from typing import Any

import pandas as pd


def machine_of(row: dict[str, Any]) -> str | None:
    """The machine a result row ran on: the kind it targeted (cpu-avx512), else its node's name or host."""
    node = row.get("node") or {}
    return row.get("machine") or node.get("name") or node.get("host")


def per_machine(report: dict[str, Any]) -> pd.DataFrame | None:
    """p50 ms of every measured cell (variant · runtime · batch) on each machine, one column per machine; None when
    the study ran on fewer than two."""
    rows = [(r["variant"], r["runtime"], r["batch_size"], machine_of(r), (r.get("latency_ms") or {}).get("p50"))
            for r in report["results"] if r["status"] == "ok"]
    machines = sorted({m for *_, m, _ in rows if m})
    if len(machines) < 2:
        return None
    frame = pd.DataFrame(rows, columns=["variant", "runtime", "batch_size", "machine", "p50_ms"])
    table = frame.pivot_table(index=["variant", "runtime", "batch_size"], columns="machine", values="p50_ms",
                              aggfunc="first")
    table.columns = [f"p50 ms · {m}" for m in table.columns]
    return table.reset_index()
