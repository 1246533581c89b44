"""What the pages show: DataFrames of models, data files, studies, live jobs, workers and errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from storage.tables import (
    FAILED_STATUSES,
    SKIPPED_STATUSES,
    FINAL_STATUSES,
    RUNNING,
    Dataset,
    Job,
    Model,
    Study,
    Worker,
    utcnow,
)


def study_progress(s: Session, study_id: int) -> dict[str, int]:
    rows = s.execute(select(Job.status, func.count()).where(Job.study_id == study_id).group_by(Job.status))
    return {status: int(n) for status, n in rows}


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


def list_models(s: Session) -> pd.DataFrame:
    studies = func.count(Study.id)
    query = (select(Model.id, Model.name, Model.format, Model.size_bytes, Model.sha256, Model.created_at,
                    Model.created_by, studies.label("studies"))
             .outerjoin(Study, Study.model_id == Model.id).group_by(Model.id).order_by(Model.id.desc()))
    return pd.DataFrame(s.execute(query).mappings().all(),
                        columns=["id", "name", "format", "size_bytes", "sha256", "created_at", "created_by", "studies"])


def list_datasets(s: Session) -> pd.DataFrame:
    query = select(Dataset.id, Dataset.name, Dataset.size_bytes, Dataset.sha256, Dataset.created_at)
    return pd.DataFrame(s.execute(query.order_by(Dataset.id.desc())).mappings().all(),
                        columns=["id", "name", "size_bytes", "sha256", "created_at"])


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
    rows = [{"cell": job.cell, "status": job.status, "error": job.error_text or job.status} for job in jobs]
    if not rows:
        return pd.DataFrame(columns=["status", "error", "count", "cells"])
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["status", "error"], sort=False)["cell"].agg(["count", list]).reset_index()
    return grouped.rename(columns={"list": "cells"}).sort_values("count", ascending=False, kind="stable")
