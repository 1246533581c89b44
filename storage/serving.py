"""Serving results: a `serve-bench` run of a study's cell and its load levels, in rows and back as the JSON the
report carries (`serving` in the results JSON); storage knows the JSON's shape, not the engine's types."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from storage.tables import ServingLevel, ServingRun, Study

# level keys with columns of their own; the rest of a level's JSON goes to `extra`
_LEVEL_COLUMNS = frozenset({"mode", "concurrency", "rate_rps", "requests", "errors", "throughput_rps", "items_per_s",
                            "stable"})


def add_serving_run(s: Session, run: dict[str, Any]) -> int:
    """Store a serving run's JSON (`study`, `cell`, `target`, `url`, `max_batch`, `max_delay_ms`, `settings`,
    `levels`); returns its id. KeyError when the study does not exist."""
    if s.get(Study, run["study"]) is None:
        raise KeyError(run["study"])
    row = ServingRun(study_id=run["study"], cell=run["cell"], target=run["target"], url=run.get("url"),
                     max_batch=run.get("max_batch"), max_delay_ms=run.get("max_delay_ms"),
                     settings=dict(run.get("settings") or {}))
    for position, level in enumerate(run["levels"]):
        latency = level.get("latency_ms") or {}
        row.levels.append(ServingLevel(
            position=position, mode=level["mode"], concurrency=level.get("concurrency"),
            rate_rps=level.get("rate_rps"), requests=int(level["requests"]), errors=int(level["errors"]),
            throughput_rps=level.get("throughput_rps"), items_per_s=level.get("items_per_s"),
            p50_ms=latency.get("p50"), p90_ms=latency.get("p90"), p99_ms=latency.get("p99"),
            stable=bool(level["stable"]),
            extra={**{k: v for k, v in level.items() if k not in _LEVEL_COLUMNS and k != "latency_ms"},
                   "latency_ms": {k: v for k, v in latency.items() if k not in ("p50", "p90", "p99")}}))
    s.add(row)
    s.flush()
    return row.id


def _level_json(level: ServingLevel) -> dict[str, Any]:
    extra = dict(level.extra or {})
    latency = {"p50": level.p50_ms, "p90": level.p90_ms, "p99": level.p99_ms, **(extra.pop("latency_ms", None) or {})}
    return {"mode": level.mode, "concurrency": level.concurrency, "rate_rps": level.rate_rps,
            "requests": level.requests, "errors": level.errors, "throughput_rps": level.throughput_rps,
            "items_per_s": level.items_per_s, "latency_ms": latency, "stable": level.stable, **extra}


def run_json(run: ServingRun) -> dict[str, Any]:
    return {"id": run.id, "study": run.study_id, "cell": run.cell, "target": run.target, "url": run.url,
            "max_batch": run.max_batch, "max_delay_ms": run.max_delay_ms, "settings": run.settings,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "levels": [_level_json(level) for level in run.levels]}


def study_serving(s: Session, study_id: int) -> list[dict[str, Any]]:
    """The study's serving runs, oldest first, each with its levels in the order they ran."""
    runs = s.scalars(select(ServingRun).where(ServingRun.study_id == study_id)
                     .options(selectinload(ServingRun.levels)).order_by(ServingRun.id))
    return [run_json(run) for run in runs]
