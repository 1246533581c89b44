"""The queue's state machine: studies and their jobs, claims, leases, retries, cancels, and the workers."""

from __future__ import annotations

import os
import signal
import socket
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from storage.results import result_row
from storage.tables import (
    SKIPPED_STATUSES,
    FINAL_STATUSES,
    QUEUED,
    RUNNING,
    Dataset,
    Job,
    Model,
    Result,
    Study,
    Worker,
    utcnow,
)

# A crashed or timed-out job runs at most this many times (a killed worker counts as a crash).
MAX_ATTEMPTS = 2


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
                  runtime=cell["runtime"], batch_size=cell["batch_size"], machine=cell.get("machine"),
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
        s.add(result_row(job, result, environment_id, variant_id, samples))
    s.flush()
    _maybe_finish_study(s, job.study_id)
    return stored


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


def has_study(s: Session) -> bool:
    return s.scalar(select(Study.id).limit(1)) is not None


def baseline_job(s: Session, study_id: int, batch_size: int) -> Job | None:
    """The baseline cell a study's cells at `batch_size` are timed against in rounds: the first baseline cell
    (lowest index) of that batch size that is queued, running or ok — the one add_speedups will divide by
    unless it fails later (then the speedups fall back to separate timings)."""
    query = (select(Job).where(Job.study_id == study_id, Job.batch_size == batch_size, Job.variant == "baseline",
                               Job.status.in_((QUEUED, RUNNING, "ok")))
             .order_by(Job.cell).limit(1))
    return s.execute(query).scalar_one_or_none()


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


def open_studies(s: Session, user: str | None) -> int:
    """Studies `user` submitted that are neither finished nor cancelled."""
    return int(s.scalar(select(func.count()).select_from(Study).where(
        Study.created_by == user, Study.finished_at.is_(None), Study.cancelled.is_(False))) or 0)


def get_study(s: Session, study_id: int) -> Study | None:
    return s.get(Study, study_id)


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


def add_cells(s: Session, study_id: int, cells: list[dict[str, Any]]) -> list[int]:
    """Queue more cells in a study (a variant rebuilt with some layers in float): each gets the next cell index,
    its variant joins the study's list, and the study reopens. The indices given."""
    # the study's row locked (PostgreSQL; SQLite writes one at a time): two rebuilds at once never share an index
    study = s.scalar(select(Study).where(Study.id == study_id).with_for_update())
    if study is None:
        raise KeyError(study_id)
    last = s.scalar(select(func.max(Job.cell)).where(Job.study_id == study_id))
    indices = []
    for offset, cell in enumerate(cells, start=1):
        index = (last if last is not None else -1) + offset
        s.add(Job(study_id=study_id, cell=index, variant=cell["variant"], chain=list(cell["chain"]),
                  runtime=cell["runtime"], batch_size=cell["batch_size"], machine=cell.get("machine"),
                  status=QUEUED))
        if cell["variant"] not in study.variants:
            study.variants = [*study.variants, cell["variant"]]
        indices.append(index)
    study.finished_at, study.cancelled = None, False
    s.flush()
    return indices
