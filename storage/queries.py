"""What the CLI, the worker and the pages ask of the database; sessions are opened by the caller."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from storage.tables import (
    FINAL_STATUSES,
    QUEUED,
    RUNNING,
    Dataset,
    Environment,
    Job,
    Model,
    Result,
    Samples,
    Study,
    Variant,
    Worker,
    utcnow,
)

# A crashed or timed-out job runs at most this many times (a killed worker counts as a crash).
MAX_ATTEMPTS = 2


# --- models, datasets, environments -------------------------------------------------------------


def get_or_create_model(s: Session, artifact: dict[str, Any], name: str, created_by: str | None = None) -> Model:
    """The model stored with these bytes, or a new row; the first uploader stays its creator."""
    model = s.scalar(select(Model).where(Model.sha256 == artifact["sha256"]))
    if model is None:
        model = Model(sha256=artifact["sha256"], name=name, format=artifact["format"],
                      size_bytes=artifact["size_bytes"], artifact=artifact, created_by=created_by)
        s.add(model)
        s.flush()
    elif model.artifact != artifact:
        model.artifact = artifact  # a new input spec (e.g. another --seq-len) for the same bytes
    return model


def get_or_create_dataset(s: Session, sha256: str, name: str, size_bytes: int,
                          created_by: str | None = None) -> Dataset:
    dataset = s.scalar(select(Dataset).where(Dataset.sha256 == sha256))
    if dataset is None:
        dataset = Dataset(sha256=sha256, name=name, size_bytes=size_bytes, created_by=created_by)
        s.add(dataset)
        s.flush()
    return dataset


def record_environment(s: Session, data: dict[str, Any]) -> int:
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    env_id = s.scalar(select(Environment.id).where(Environment.fingerprint == fingerprint))
    if env_id is None:
        env = Environment(fingerprint=fingerprint, data=data)
        s.add(env)
        s.flush()
        env_id = env.id
    return env_id


def record_variant(s: Session, model_id: int, chain: str, target: str, path: str | None, size_bytes: int) -> int:
    variant = s.scalar(select(Variant).where(Variant.model_id == model_id, Variant.chain == chain,
                                             Variant.target == target))
    if variant is None:
        variant = Variant(model_id=model_id, chain=chain, target=target, path=path, size_bytes=size_bytes)
        s.add(variant)
        s.flush()
    return variant.id


# --- studies and jobs -----------------------------------------------------------------------------


def create_study(s: Session, *, name: str, model: Model, dataset: Dataset | None, variants: list[str],
                 runtimes: list[str], batch_sizes: list[int], settings: dict[str, Any],
                 cells: list[dict[str, Any]], owner: str | None = None, created_by: str | None = None) -> Study:
    """A study and one job per cell; cells that cannot run are final at once, with their reason.

    With an `owner` (a worker id) only that worker claims the study's jobs until release_study."""
    study = Study(name=name, model_id=model.id, dataset_id=dataset.id if dataset else None, variants=variants,
                  runtimes=runtimes, batch_sizes=batch_sizes, settings=settings, owner=owner, created_by=created_by)
    s.add(study)
    s.flush()
    now = utcnow()
    for cell in cells:
        final = cell["status"] != "pending"
        s.add(Job(study_id=study.id, cell=cell["index"], variant=cell["variant"], chain=list(cell["chain"]),
                  runtime=cell["runtime"], batch_size=cell["batch_size"],
                  status=cell["status"] if final else QUEUED, error_message=cell.get("reason"),
                  finished_at=now if final else None))
    s.flush()
    if all(c["status"] != "pending" for c in cells):
        study.finished_at = now
    return study


def claim_job(s: Session, worker_id: str, lease_s: float, study_id: int | None = None) -> Job | None:
    """Atomically take the oldest queued job: no two workers ever get the same one.

    One UPDATE ... WHERE id = (SELECT ... LIMIT 1) AND status = 'queued' RETURNING: on SQLite the
    IMMEDIATE transaction serializes claimers; on PostgreSQL FOR UPDATE SKIP LOCKED lets them pass
    each other without blocking. Jobs of a study another worker owns are never taken.
    """
    now = utcnow()
    # A subquery rather than a join: FOR UPDATE then locks only the job row, never the study's.
    pick = select(Job.id).where(Job.status == QUEUED, Job.study_id.not_in(_owned_by_others(worker_id)))
    if study_id is not None:
        pick = pick.where(Job.study_id == study_id)
    pick = pick.order_by(Job.id).limit(1).with_for_update(skip_locked=True)
    claimed = s.execute(
        update(Job)
        .where(Job.id == pick.scalar_subquery(), Job.status == QUEUED)
        .values(status=RUNNING, worker_id=worker_id, attempts=Job.attempts + 1, started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s), phase="starting", fraction=0.0,
                error_type=None, error_message=None, traceback=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalar()
    if claimed is None:
        return None
    return s.get(Job, claimed, populate_existing=True)


def _owned_by_others(worker_id: str) -> Any:
    """The ids of studies another worker owns (a `bench` run's): never this worker's to run or wait for."""
    return select(Study.id).where(Study.owner.is_not(None), Study.owner != worker_id)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (CursorResult.rowcount; typed loosely by SQLAlchemy)."""
    return int(getattr(result, "rowcount", 0) or 0)


def extend_lease(s: Session, job_id: int, worker_id: str, lease_s: float) -> bool:
    """Renew the lease; False when the job is no longer this worker's or its study was cancelled."""
    renewed = _rowcount(s.execute(
        update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    ))
    if not renewed:
        return False
    cancelled = s.scalar(select(Study.cancelled).join(Job, Job.study_id == Study.id).where(Job.id == job_id))
    return not cancelled


def set_progress(s: Session, job_id: int, worker_id: str, phase: str, fraction: float) -> None:
    s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
              .values(phase=phase[:64], fraction=fraction).execution_options(synchronize_session=False))


def set_job_process(s: Session, job_id: int, worker_id: str, pgid: int | None) -> None:
    """Note (or clear, with None) the process group that runs the job now, while it is this worker's."""
    s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
              .values(pgid=pgid).execution_options(synchronize_session=False))


def finish_job(s: Session, job_id: int, worker_id: str, status: str, *, result: dict[str, Any] | None = None,
               samples: np.ndarray | None = None, error_type: str | None = None, error: str | None = None,
               traceback: str | None = None, environment_id: int | None = None,
               variant_id: int | None = None) -> str | None:
    """Write the job's end and its result in one transaction; returns the status stored, or None when
    the job was no longer this worker's (its lease expired and another worker took it)."""
    job = s.get(Job, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.worker_id != worker_id or job.status != RUNNING:
        return None
    now = utcnow()
    if status in ("crashed", "timeout") and job.attempts < MAX_ATTEMPTS:
        stored = QUEUED  # one more try: a crash can be the machine's, not the model's
    else:
        stored = status
    job.status = stored
    job.error_type, job.error_message, job.traceback = error_type, error, traceback
    job.phase, job.lease_expires_at = None, None
    job.finished_at = now if stored != QUEUED else None
    if stored == QUEUED:
        job.worker_id = None
    if status == "ok" and result is not None:
        s.add(_result_row(job, result, environment_id, variant_id, samples))
    s.flush()
    _maybe_finish_study(s, job.study_id)
    return stored


def _result_row(job: Job, r: dict[str, Any], environment_id: int | None, variant_id: int | None,
                samples: np.ndarray | None) -> Result:
    lat = r.get("latency_ms") or {}
    acc = r.get("accuracy") or {}
    fid = acc.get("fidelity") or {}
    task = acc.get("task") or {}
    known = {"latency_ms", "throughput_per_s", "load_s", "first_run_ms", "peak_host_mb", "peak_device_mb",
             "model_size_mb", "accuracy", "settings", "notes", "samples_ms"}
    extra = {k: v for k, v in r.items() if k not in known}
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


def _maybe_finish_study(s: Session, study_id: int) -> None:
    # Lock the study row first: two workers ending the last two jobs at once would each still see the
    # other's job running (READ COMMITTED on PostgreSQL) and neither would mark the study finished.
    # FOR NO KEY UPDATE: it does not conflict with the KEY SHARE locks that inserting results takes.
    s.execute(select(Study.id).where(Study.id == study_id).with_for_update(key_share=True))
    open_jobs = s.scalar(select(func.count()).select_from(Job)
                         .where(Job.study_id == study_id, Job.status.in_((QUEUED, RUNNING))))
    if not open_jobs:
        s.execute(update(Study).where(Study.id == study_id, Study.finished_at.is_(None))
                  .values(finished_at=utcnow()).execution_options(synchronize_session=False))


def requeue_job(s: Session, job_id: int, worker_id: str) -> None:
    """Give a job back to the queue without counting the attempt (its worker was asked to stop)."""
    s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
              .values(status=QUEUED, worker_id=None, lease_expires_at=None, phase=None, fraction=None,
                      attempts=Job.attempts - 1).execution_options(synchronize_session=False))


def requeue_expired(s: Session, lease_s: float) -> int:
    """Jobs whose worker stopped heartbeating (killed): requeue, or end as crashed after MAX_ATTEMPTS.

    Studies whose owner is gone (no heartbeat within `lease_s`) lose their owner too, so their queued
    jobs become ordinary queue work. The process groups of expired jobs that ran on this host are killed
    before the requeue is committed: nothing of the lost run times beside its retry.
    """
    now = utcnow()
    _release_orphaned_studies(s, now - timedelta(seconds=lease_s))
    expired = and_(Job.status == RUNNING, Job.lease_expires_at < now)
    groups = _local_groups(s, expired)
    ended = set(s.scalars(
        update(Job).where(expired, Job.attempts >= MAX_ATTEMPTS)
        .values(status="crashed", finished_at=now, phase=None, lease_expires_at=None, pgid=None,
                error_type="WorkerLost", error_message=f"its worker died {MAX_ATTEMPTS} times while running it")
        .returning(Job.study_id).execution_options(synchronize_session=False)
    ))
    requeued = _rowcount(s.execute(
        update(Job).where(expired).values(status=QUEUED, worker_id=None, phase=None, lease_expires_at=None, pgid=None)
        .execution_options(synchronize_session=False)
    ))
    _kill_groups(groups)
    for study_id in ended:  # only the studies whose job just ended may be finished now
        _maybe_finish_study(s, study_id)
    return requeued


def _local_groups(s: Session, jobs: Any) -> list[int]:
    """Process groups noted on the matching jobs by workers on this host (a pgid means nothing elsewhere)."""
    query = (select(Job.pgid).join(Worker, Worker.id == Job.worker_id)
             .where(jobs, Job.pgid.is_not(None), Worker.hostname == socket.gethostname()))
    return [pgid for pgid in s.scalars(query) if pgid is not None]


def _kill_groups(pgids: list[int]) -> None:
    """SIGKILL each process group: the child of a dead worker (parent-death signal aside) and its grandchildren."""
    own = os.getpgrp()
    for pgid in pgids:
        if pgid <= 1 or pgid == own:  # never init's group or our own, whatever a row says
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or another user's process that reuses the number


def _release_orphaned_studies(s: Session, stale: datetime) -> None:
    alive = select(Worker.id).where(Worker.id == Study.owner, Worker.status != "stopped", Worker.heartbeat_at >= stale)
    registered = select(Worker.id).where(Worker.id == Study.owner)
    # An owner with no worker row yet is granted one lease from the study's creation: `bench` stores its
    # study before its worker registers, and a kill -9 in between must not strand the study for good.
    s.execute(update(Study).where(Study.owner.is_not(None), ~exists(alive),
                                  or_(exists(registered), Study.created_at < stale))
              .values(owner=None).execution_options(synchronize_session=False))


def release_study(s: Session, study_id: int, owner: str) -> None:
    """The owner lets go of its study: its queued jobs become work for any worker."""
    s.execute(update(Study).where(Study.id == study_id, Study.owner == owner).values(owner=None)
              .execution_options(synchronize_session=False))


def cancel_study(s: Session, study_id: int) -> int:
    """Skip the study's queued jobs; running ones are stopped by their worker at its next heartbeat."""
    study = s.get(Study, study_id)
    if study is None:
        raise KeyError(study_id)
    study.cancelled = True
    skipped = _rowcount(s.execute(
        update(Job).where(Job.study_id == study_id, Job.status == QUEUED)
        .values(status="cancelled", finished_at=utcnow(), error_message="the study was cancelled")
        .execution_options(synchronize_session=False)
    ))
    s.flush()
    _maybe_finish_study(s, study_id)
    return int(skipped or 0)


def delete_study(s: Session, study_id: int) -> None:
    s.execute(delete(Study).where(Study.id == study_id))


def referenced_blobs(s: Session) -> set[str]:
    return set(s.scalars(select(Dataset.sha256)))


# --- workers ----------------------------------------------------------------------------------------


def register_worker(s: Session, worker_id: str, hostname: str, pid: int) -> None:
    s.add(Worker(id=worker_id, hostname=hostname, pid=pid, status="idle"))


def worker_heartbeat(s: Session, worker_id: str, status: str, job_id: int | None) -> None:
    s.execute(update(Worker).where(Worker.id == worker_id)
              .values(heartbeat_at=utcnow(), status=status, current_job_id=job_id)
              .execution_options(synchronize_session=False))


def live_workers(s: Session, within_s: float = 30.0, general: bool = False) -> list[Worker]:
    """Workers with a recent heartbeat; `general`: only those that take any study's jobs (not a `bench` run's
    worker, which owns its study and runs nothing else)."""
    since = utcnow() - timedelta(seconds=within_s)
    query = select(Worker).where(Worker.heartbeat_at >= since, Worker.status != "stopped")
    if general:
        query = query.where(Worker.id.not_in(select(Study.owner).where(Study.owner.is_not(None))))
    return list(s.scalars(query))


# --- reading ----------------------------------------------------------------------------------------


def has_study(s: Session) -> bool:
    return s.scalar(select(Study.id).limit(1)) is not None


def study_progress(s: Session, study_id: int) -> dict[str, int]:
    rows = s.execute(select(Job.status, func.count()).where(Job.study_id == study_id).group_by(Job.status))
    return {status: int(n) for status, n in rows}


# Job statuses that say a cell ran and did not succeed, and those that say it could never run here.
FAILED_STATUSES = ("failed", "timeout", "crashed", "oom")
SKIPPED_STATUSES = ("n/a", "unavailable")


def study_state(*, cancelled: bool, finished: bool, ok: int, failed: int, runnable: int = 1) -> str:
    """A study in one word: running, cancelled, failed (every cell that ran failed), partial, done, or
    "not run" (no cell could run here: every one n/a or unavailable)."""
    if cancelled:
        return "cancelled"
    if not finished:
        return "running"
    if not runnable:
        return "not run"
    if failed and not ok:
        return "failed"
    return "partial" if failed else "done"


def list_studies(s: Session) -> pd.DataFrame:
    """One row per study, newest first: name, model, cells (runnable ones apart), done/ok/failed counts, state."""
    def count(statuses: tuple[str, ...]) -> Any:
        return func.coalesce(func.sum(case((Job.status.in_(statuses), 1), else_=0)), 0)

    query = (
        select(Study.id, Study.name, Model.name.label("model"), Study.created_at, Study.finished_at,
               Study.cancelled, Study.created_by, func.count(Job.id).label("cells"),
               count(FINAL_STATUSES).label("done"), count(("ok",)).label("ok"), count(FAILED_STATUSES).label("failed"),
               count(SKIPPED_STATUSES).label("skipped"))
        .join(Model, Model.id == Study.model_id).outerjoin(Job, Job.study_id == Study.id)
        .group_by(Study.id, Model.name).order_by(Study.id.desc())
    )
    columns = ["id", "name", "model", "created_at", "finished_at", "cancelled", "created_by", "cells", "done", "ok",
               "failed", "skipped"]
    frame = pd.DataFrame(s.execute(query).mappings().all(), columns=columns)
    # work that runs: n/a and unavailable cells are rows, never work done
    frame["runnable"] = frame["cells"] - frame["skipped"]
    frame["ran"] = frame["done"] - frame["skipped"]
    frame["state"] = [study_state(cancelled=bool(c), finished=f is not None and not pd.isna(f), ok=int(k),
                                  failed=int(x), runnable=int(r))
                      for c, f, k, x, r in zip(frame["cancelled"], frame["finished_at"], frame["ok"], frame["failed"],
                                               frame["runnable"], strict=True)]
    return frame


def study_jobs(s: Session, study_id: int) -> list[tuple[Job, Result | None]]:
    query = (select(Job, Result).outerjoin(Result, Result.job_id == Job.id)
             .where(Job.study_id == study_id).order_by(Job.cell))
    return [(job, result) for job, result in s.execute(query).all()]


def result_dict(job: Job, result: Result | None) -> dict[str, Any]:
    """A job and its result as one row of the results JSON (ARCHITECTURE.md contract)."""
    row: dict[str, Any] = {
        "cell": job.cell, "job_id": job.id, "variant": job.variant, "runtime": job.runtime,
        "batch_size": job.batch_size, "status": job.status, "error": _error_text(job),
        "latency_ms": None, "throughput_per_s": None, "load_s": None, "first_run_ms": None, "peak_host_mb": None,
        "peak_device_mb": None, "model_size_mb": None, "accuracy": {"fidelity": None, "task": None},
        "settings": None, "notes": [job.error_message] if job.status in ("n/a", "unavailable") and
        job.error_message else [], "attempts": job.attempts,
    }
    if result is None:
        return row
    extra = dict(result.extra or {})
    row.update({
        "latency_ms": {"p50": result.p50_ms, "p90": result.p90_ms, "p95": result.p95_ms, "p99": result.p99_ms,
                       "mean": result.mean_ms, "std": result.std_ms, "min": result.min_ms, "max": result.max_ms,
                       "p50_ci95": extra.pop("p50_ci95", None), "iterations": extra.pop("iterations", None)},
        "throughput_per_s": result.throughput_per_s, "load_s": result.load_s, "first_run_ms": result.first_run_ms,
        "peak_host_mb": result.peak_host_mb, "peak_device_mb": result.peak_device_mb,
        "model_size_mb": result.model_size_mb,
        "accuracy": {
            "fidelity": None if result.fidelity_cosine is None else {
                "max_abs": result.fidelity_max_abs, "mean_abs": result.fidelity_mean_abs,
                "cosine": result.fidelity_cosine, "top1_agreement": result.top1_agreement,
                "pooled_cosine": extra.pop("pooled_cosine", None)},
            "task": None if result.task_name is None else {"name": result.task_name, "value": result.task_value},
        },
        "settings": result.settings, "notes": result.notes, **extra,
    })
    return row


def _error_text(job: Job) -> str | None:
    if job.status in ("ok", QUEUED, RUNNING):
        return None
    if job.error_type and job.status == "failed":
        return f"{job.error_type}: {job.error_message}"
    return job.error_message


def baseline_job(s: Session, study_id: int, batch_size: int) -> Job | None:
    """The baseline cell a study's cells at `batch_size` are timed against in rounds: the first baseline cell
    (lowest index) of that batch size that is queued, running or ok — the one add_speedups will divide by
    unless it fails later (then the speedups fall back to separate timings)."""
    query = (select(Job).where(Job.study_id == study_id, Job.batch_size == batch_size, Job.variant == "baseline",
                               Job.status.in_((QUEUED, RUNNING, "ok")))
             .order_by(Job.cell).limit(1))
    return s.execute(query).scalar_one_or_none()


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speedup of each ok cell over the baseline on the first runtime that ran it, same batch size, with its
    95% interval; `baseline_cell` names that baseline's cell, so reports can say what the speedup is against.

    `speedup_method` says how: "interleaved" when the cell was timed against that baseline in alternating rounds
    (its `paired` record: the median of the per-round ratios and their interval), "separate" for the ratio of
    the two p50s timed at different moments (interval from each median's: [base low / cell high, base high /
    cell low], blind to drift between them), "baseline" for the baseline itself.
    """
    baselines: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["cell"]):
        if row["variant"] == "baseline" and row["status"] == "ok" and row["batch_size"] not in baselines:
            baselines[row["batch_size"]] = row
    for row in rows:
        base = baselines.get(row["batch_size"])
        ok = row["status"] == "ok" and base is not None
        row.update(speedup_vs_baseline=None, speedup_ci95=None, speedup_method=None, speedup_rounds=None,
                   baseline_cell=None)
        if not ok or base is None:
            continue
        row["baseline_cell"] = base["cell"]
        paired = row.get("paired") or {}
        if row is base:
            row.update(speedup_vs_baseline=1.0, speedup_ci95=[1.0, 1.0], speedup_method="baseline")
        elif paired.get("baseline_cell") == base["cell"] and paired.get("speedup") is not None:
            row.update(speedup_vs_baseline=paired["speedup"], speedup_ci95=paired.get("ci95"),
                       speedup_method="interleaved", speedup_rounds=paired.get("rounds"))
        else:
            row["speedup_vs_baseline"] = base["latency_ms"]["p50"] / row["latency_ms"]["p50"]
            row.update(speedup_ci95=_separate_interval(base["latency_ms"].get("p50_ci95"),
                                                       row["latency_ms"].get("p50_ci95")),
                       speedup_method="separate")


def _separate_interval(base: list[float] | None, cell: list[float] | None) -> list[float] | None:
    if not base or not cell or None in (*base, *cell) or min(cell) <= 0:
        return None
    return [float(base[0]) / float(cell[1]), float(base[1]) / float(cell[0])]


def study_results(s: Session, study_id: int) -> list[dict[str, Any]]:
    rows = [result_dict(job, result) for job, result in study_jobs(s, study_id)]
    add_speedups(rows)
    return rows


def study_samples(s: Session, study_id: int) -> dict[int, np.ndarray]:
    """Raw latency samples (ms) per cell index."""
    query = (select(Job.cell, Samples.data).join(Result, Result.job_id == Job.id)
             .join(Samples, Samples.result_id == Result.id).where(Job.study_id == study_id))
    return {cell: np.frombuffer(data, dtype="<f4").astype(np.float64) for cell, data in s.execute(query)}


def results_json(s: Session, study_id: int, with_samples: bool = False) -> dict[str, Any]:
    """The results JSON of ARCHITECTURE.md for a stored study."""
    study = s.get(Study, study_id)
    if study is None:
        raise KeyError(study_id)
    rows = study_results(s, study_id)
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


def has_running_jobs(s: Session, study_id: int) -> bool:
    """A job of the study is being run by some worker now."""
    return s.scalar(select(Job.id).where(Job.study_id == study_id, Job.status == RUNNING).limit(1)) is not None


def has_open_jobs(s: Session, study_id: int | None = None, worker_id: str | None = None) -> bool:
    """Any job queued or running (in one study, or anywhere); with `worker_id`, only jobs that worker may
    ever run (a study another worker owns is that worker's to finish or to release)."""
    query = select(Job.id).where(Job.status.in_((QUEUED, RUNNING)))
    if study_id is not None:
        query = query.where(Job.study_id == study_id)
    if worker_id is not None:
        query = query.where(Job.study_id.not_in(_owned_by_others(worker_id)))
    return s.scalar(query.limit(1)) is not None



# --- models page ------------------------------------------------------------------------------------


def list_models(s: Session) -> pd.DataFrame:
    studies = func.count(Study.id)
    query = (select(Model.id, Model.name, Model.format, Model.size_bytes, Model.sha256, Model.created_at,
                    Model.created_by, studies.label("studies"))
             .outerjoin(Study, Study.model_id == Model.id).group_by(Model.id).order_by(Model.id.desc()))
    return pd.DataFrame(s.execute(query).mappings().all(),
                        columns=["id", "name", "format", "size_bytes", "sha256", "created_at", "created_by", "studies"])


def upload_bytes(s: Session, user: str | None) -> int:
    """Bytes of the models and data files `user` uploaded first (what counts against a shared server's quota)."""
    if user is None:
        return 0
    models = s.scalar(select(func.coalesce(func.sum(Model.size_bytes), 0)).where(Model.created_by == user))
    data = s.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.created_by == user))
    return int(models or 0) + int(data or 0)


def open_studies(s: Session, user: str | None) -> int:
    """Studies `user` submitted that are neither finished nor cancelled."""
    return int(s.scalar(select(func.count()).select_from(Study).where(
        Study.created_by == user, Study.finished_at.is_(None), Study.cancelled.is_(False))) or 0)


def get_model(s: Session, model_id: int) -> Model | None:
    return s.get(Model, model_id)


def rename_model(s: Session, model_id: int, name: str) -> None:
    model = s.get(Model, model_id)
    if model is None:
        raise KeyError(model_id)
    model.name = name.strip()[:255] or model.name


def delete_model(s: Session, model_id: int) -> None:
    """Delete a model no study uses (studies keep their model: delete them first)."""
    used = s.scalar(select(func.count()).select_from(Study).where(Study.model_id == model_id))
    if used:
        raise ValueError(f"{used} studies use this model; delete them first")
    s.execute(delete(Variant).where(Variant.model_id == model_id))
    s.execute(delete(Model).where(Model.id == model_id))


def list_datasets(s: Session) -> pd.DataFrame:
    query = select(Dataset.id, Dataset.name, Dataset.size_bytes, Dataset.sha256, Dataset.created_at)
    return pd.DataFrame(s.execute(query.order_by(Dataset.id.desc())).mappings().all(),
                        columns=["id", "name", "size_bytes", "sha256", "created_at"])


def get_study(s: Session, study_id: int) -> Study | None:
    return s.get(Study, study_id)


def live_jobs(s: Session, study_id: int) -> pd.DataFrame:
    """Per-cell state for the progress view: status, phase, fraction, start and end times."""
    query = (select(Job.cell, Job.variant, Job.runtime, Job.batch_size, Job.status, Job.phase, Job.fraction,
                    Job.attempts, Job.started_at, Job.finished_at, Job.error_message)
             .where(Job.study_id == study_id).order_by(Job.cell))
    return pd.DataFrame(s.execute(query).mappings().all(),
                        columns=["cell", "variant", "runtime", "batch_size", "status", "phase", "fraction", "attempts",
                                 "started_at", "finished_at", "error_message"])


def workers_frame(s: Session) -> pd.DataFrame:
    query = select(Worker.id, Worker.hostname, Worker.pid, Worker.status, Worker.current_job_id, Worker.started_at,
                   Worker.heartbeat_at).order_by(Worker.heartbeat_at.desc()).limit(50)
    return pd.DataFrame(s.execute(query).mappings().all(),
                        columns=["id", "hostname", "pid", "status", "current_job_id", "started_at", "heartbeat_at"])


def busy_workers(s: Session, within_s: float = 30.0) -> int:
    """Live workers running a job now (from the jobs themselves: a worker's own status lags by a heartbeat)."""
    since = utcnow() - timedelta(seconds=within_s)
    live = select(Worker.id).where(Worker.heartbeat_at >= since, Worker.status != "stopped")
    return int(s.scalar(select(func.count(func.distinct(Job.worker_id)))
                        .where(Job.status == RUNNING, Job.worker_id.in_(live))) or 0)


def study_errors(s: Session, study_id: int) -> pd.DataFrame:
    """The study's failures grouped by error: status, error text, how many cells, which cells (first first)."""
    jobs = s.scalars(select(Job).where(Job.study_id == study_id, Job.status.in_(FAILED_STATUSES)).order_by(Job.cell))
    rows = [{"cell": job.cell, "status": job.status, "error": _error_text(job) or job.status} for job in jobs]
    if not rows:
        return pd.DataFrame(columns=["status", "error", "count", "cells"])
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["status", "error"], sort=False)["cell"].agg(["count", list]).reset_index()
    return grouped.rename(columns={"list": "cells"}).sort_values("count", ascending=False, kind="stable")


def rerun_cells(s: Session, study_id: int, cells: list[int]) -> int:
    """Queue ended cells of a study again (e.g. noisy ones): their old results go, the study reopens."""
    study = s.get(Study, study_id)
    if study is None:
        raise KeyError(study_id)
    picked = select(Job.id).where(Job.study_id == study_id, Job.cell.in_(cells),
                                  Job.status.in_(FINAL_STATUSES), Job.status.not_in(SKIPPED_STATUSES))
    ids = list(s.scalars(picked))
    if not ids:
        return 0
    s.execute(delete(Result).where(Result.job_id.in_(ids)))
    s.execute(update(Job).where(Job.id.in_(ids))
              .values(status=QUEUED, worker_id=None, attempts=0, phase=None, fraction=None, started_at=None,
                      finished_at=None, lease_expires_at=None, error_type=None, error_message=None, traceback=None)
              .execution_options(synchronize_session=False))
    study.finished_at, study.cancelled = None, False
    return len(ids)
