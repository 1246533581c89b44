"""Results rows: a finished job's result in its columns and back as a row of the results JSON (its documented
form); storage knows the JSON's shape, not the engine's types (engine/results.py is their typed codec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.tables import (
    Environment,
    Job,
    Result,
    Samples,
    Study,
)
from storage.views import study_progress


# Keys of a results JSON row that the job's own columns answer (which cell, how it ended): never a result's to set.
JOB_KEYS = frozenset({"cell", "job_id", "variant", "runtime", "batch_size", "status", "error", "attempts",
                      "machine"})
# Keys with columns of their own in the results table, and the raw samples, which have a table of their own.
_COLUMN_KEYS = frozenset({"latency_ms", "throughput_per_s", "load_s", "first_run_ms", "peak_host_mb",
                          "peak_device_mb", "model_size_mb", "accuracy", "settings", "notes", "samples_ms"})


def result_row(job: Job, r: dict[str, Any], environment_id: int | None, variant_id: int | None,
               samples: np.ndarray | None) -> Result:
    """A results JSON row's measurements as a Result of `job`: columns where the table has them, the rest (not null:
    a missing key reads back as null) in `extra`."""
    lat = r.get("latency_ms") or {}
    acc = r.get("accuracy") or {}
    fid = acc.get("fidelity") or {}
    task = acc.get("task") or {}
    extra = {k: v for k, v in r.items() if k not in _COLUMN_KEYS and k not in JOB_KEYS and v is not None}
    extra.update({k: lat[k] for k in ("p50_ci95", "iterations") if k in lat})
    if fid.get("pooled_cosine") is not None:  # encoders only: no column of its own
        extra["pooled_cosine"] = fid["pooled_cosine"]
    row = Result(
        job_id=job.id, study_id=job.study_id, environment_id=environment_id, variant_id=variant_id,
        p50_ms=lat.get("p50"), p90_ms=lat.get("p90"), p95_ms=lat.get("p95"), p99_ms=lat.get("p99"),
        mean_ms=lat.get("mean"), std_ms=lat.get("std"), min_ms=lat.get("min"), max_ms=lat.get("max"),
        throughput_per_s=r.get("throughput_per_s"), load_s=r.get("load_s"), first_run_ms=r.get("first_run_ms"),
        peak_host_mb=r.get("peak_host_mb"), peak_device_mb=r.get("peak_device_mb"),
        model_size_mb=r.get("model_size_mb"), fidelity_max_abs=fid.get("max_abs"),
        fidelity_mean_abs=fid.get("mean_abs"), fidelity_cosine=fid.get("cosine"),
        top1_agreement=fid.get("top1_agreement"), task_name=task.get("name"), task_value=task.get("value"),
        settings=r.get("settings") or {}, notes=list(r.get("notes") or []), extra=extra,
    )
    if samples is not None:
        data = np.asarray(samples, dtype="<f4")
        row.samples = Samples(count=int(data.size), data=data.tobytes())
    return row


def study_jobs(s: Session, study_id: int) -> list[tuple[Job, Result | None]]:
    query = (select(Job, Result).outerjoin(Result, Result.job_id == Job.id)
             .where(Job.study_id == study_id).order_by(Job.cell))
    return [(job, result) for job, result in s.execute(query).all()]


def result_dict(job: Job, result: Result | None) -> dict[str, Any]:
    """A job and its result as one row of the results JSON (docs/architecture.md)."""
    row: dict[str, Any] = {
        "cell": job.cell, "job_id": job.id, "variant": job.variant, "runtime": job.runtime,
        "batch_size": job.batch_size, "status": job.status, "error": job.error_text,
        "latency_ms": None, "throughput_per_s": None, "load_s": None, "first_run_ms": None, "peak_host_mb": None,
        "peak_device_mb": None, "model_size_mb": None, "accuracy": {"fidelity": None, "task": None},
        "settings": None, "notes": [job.error_message] if job.status in ("n/a", "unavailable") and
        job.error_message else [], "attempts": job.attempts,
    }
    if job.machine:  # a study that targets machine kinds (Ray): which kind this cell was for
        row["machine"] = job.machine
    if result is None:
        return row
    extra = {k: v for k, v in (result.extra or {}).items() if k not in JOB_KEYS}
    row.update({
        "latency_ms": {"p50": result.p50_ms, "p90": result.p90_ms, "p95": result.p95_ms, "p99": result.p99_ms,
                       "mean": result.mean_ms, "std": result.std_ms, "min": result.min_ms, "max": result.max_ms,
                       "p50_ci95": extra.pop("p50_ci95", None), "iterations": extra.pop("iterations", None)},
        "throughput_per_s": result.throughput_per_s, "load_s": result.load_s, "first_run_ms": result.first_run_ms,
        "peak_host_mb": result.peak_host_mb, "peak_device_mb": result.peak_device_mb,
        "model_size_mb": result.model_size_mb,
        "accuracy": {
            # a generation cell's fidelity is its next-token agreement alone: no cosine, still a fidelity
            "fidelity": None if result.fidelity_cosine is None and result.top1_agreement is None else {
                "max_abs": result.fidelity_max_abs, "mean_abs": result.fidelity_mean_abs,
                "cosine": result.fidelity_cosine, "top1_agreement": result.top1_agreement,
                "pooled_cosine": extra.pop("pooled_cosine", None)},
            "task": None if result.task_name is None else {"name": result.task_name, "value": result.task_value},
        },
        "settings": result.settings, "notes": result.notes, **extra,
    })
    return row


def study_rows(s: Session, study_id: int) -> list[dict[str, Any]]:
    """The study's rows of the results JSON, in cell order (speedups are the engine's: engine/report/speedups.py)."""
    return [result_dict(job, result) for job, result in study_jobs(s, study_id)]


def study_samples(s: Session, study_id: int) -> dict[int, np.ndarray]:
    """Raw latency samples (ms) per cell index."""
    query = (select(Job.cell, Samples.data).join(Result, Result.job_id == Job.id)
             .join(Samples, Samples.result_id == Result.id).where(Job.study_id == study_id))
    return {cell: np.frombuffer(data, dtype="<f4").astype(np.float64) for cell, data in s.execute(query)}


def study_json(s: Session, study_id: int, with_samples: bool = False) -> dict[str, Any]:
    """A stored study as the results JSON (docs/architecture.md), before the engine adds its speedups."""
    study = s.get(Study, study_id)
    if study is None:
        raise KeyError(study_id)
    rows = study_rows(s, study_id)
    env_ids = set(s.scalars(select(Result.environment_id).where(Result.study_id == study_id).distinct()))
    envs = [e.data for e in s.scalars(select(Environment).where(Environment.id.in_(env_ids - {None})))]
    if with_samples:
        samples = study_samples(s, study_id)
        for row in rows:
            got = samples.get(row["cell"])
            row["samples_ms"] = got.tolist() if got is not None else None
    return {
        "study": {
            "id": study.id, "name": study.name, "created_at": _iso(study.created_at),
            "finished_at": _iso(study.finished_at), "cancelled": study.cancelled,
            "model": {"name": study.model.name, "sha256": study.model.sha256, "format": study.model.format,
                      "size_bytes": study.model.size_bytes, "spec": study.model.artifact.get("spec"),
                      "info": study.model.artifact.get("info")},
            "variants": study.variants, "runtimes": study.runtimes, "batch_sizes": study.batch_sizes,
            "settings": study.settings, "reference": study.reference, "progress": study_progress(s, study_id),
        },
        "environment": envs[0] if len(envs) == 1 else (envs or None),
        "results": rows,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
