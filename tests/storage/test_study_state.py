"""A study's state as people read it: failed, partial, done; its errors grouped; cells queued again; busy workers."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage import catalogue

from storage import queue

from storage import tables

from storage import views
from storage.db import session
from storage.tables import Job
from tests.storage.helpers import ARTIFACT, make_study

OK = {"latency_ms": {"p50": 1.0}, "notes": [], "settings": {}}


def _end(study_id: int, outcomes: list[tuple[str, str | None]]) -> None:
    """Claim and end the study's queued jobs in order: (status, error message)."""
    for status, error in outcomes:
        with session() as s:
            job = queue.claim_job(s, "w", lease_s=60, study_id=study_id)
            assert job is not None
            queue.finish_job(s, job.id, "w", status, result=OK if status == "ok" else None,
                         error_type="RuntimeError" if status == "failed" else None, error=error)


def _row(study_id: int) -> dict:  # type: ignore[type-arg]
    with session(write=False) as s:
        frame = views.list_studies(s)
    return frame.set_index("id").loc[study_id].to_dict()


@pytest.mark.usefixtures("database")
def test_a_study_whose_every_run_cell_failed_is_failed_not_done() -> None:
    study = make_study(3)
    with session() as s:  # one cell that cannot run here is a row, not work
        s.get(Job, s.scalar(select(Job.id).where(Job.study_id == study, Job.cell == 2))).status = "n/a"
    _end(study, [("failed", "boom"), ("oom", "out of memory")])
    row = _row(study)
    assert row["state"] == "failed"
    assert (row["ok"], row["failed"], row["runnable"], row["ran"]) == (0, 2, 2, 2)
    with session(write=False) as s:
        errors = views.study_errors(s, study)
    assert list(errors["error"]) == ["RuntimeError: boom", "out of memory"]
    assert list(errors["count"]) == [1, 1]


@pytest.mark.usefixtures("database")
def test_partial_and_done_studies_and_errors_grouped_by_message() -> None:
    partial = make_study(4)
    _end(partial, [("ok", None), ("failed", "same"), ("failed", "same"), ("ok", None)])
    assert _row(partial)["state"] == "partial"
    with session(write=False) as s:
        errors = views.study_errors(s, partial)
    assert errors.iloc[0].to_dict() == {"status": "failed", "error": "RuntimeError: same", "count": 2, "cells": [1, 2]}
    done = make_study(1)
    assert _row(done)["state"] == "running"
    _end(done, [("ok", None)])
    assert _row(done)["state"] == "done"


@pytest.mark.usefixtures("database")
def test_rerun_cells_queues_them_again_and_reopens_the_study() -> None:
    study = make_study(2)
    _end(study, [("ok", None), ("ok", None)])
    with session() as s:
        assert queue.rerun_cells(s, study, [1]) == 1
    assert _row(study)["state"] == "running"
    with session(write=False) as s:
        jobs = {j.cell: j for j in s.scalars(select(Job).where(Job.study_id == study))}
        assert jobs[1].status == "queued" and jobs[1].result is None and jobs[1].attempts == 0
        assert jobs[0].status == "ok" and jobs[0].result is not None
    _end(study, [("ok", None)])
    assert _row(study)["state"] == "done"


@pytest.mark.usefixtures("database")
def test_busy_workers_counts_live_workers_with_a_running_job() -> None:
    study = make_study(2)
    with session() as s:
        queue.register_worker(s, "a", "host", 1)
        queue.register_worker(s, "b", "host", 2)
    with session() as s:
        queue.worker_heartbeat(s, "a", "idle", None)  # its own status lags: the running job counts
        queue.worker_heartbeat(s, "b", "idle", None)
        assert queue.claim_job(s, "a", lease_s=60, study_id=study) is not None
    with session(write=False) as s:
        assert views.busy_workers(s) == 1


@pytest.mark.usefixtures("database")
def test_open_jobs_of_a_study_another_worker_owns_do_not_keep_a_worker_waiting() -> None:
    owned = make_study(1)
    with session() as s:
        s.get(tables.Study, owned).owner = "bench-1"
    with session(write=False) as s:
        assert queue.has_open_jobs(s)  # the sidebar still sees queued work
        assert not queue.has_open_jobs(s, worker_id="general")  # a general --until-idle worker may stop
        assert queue.has_open_jobs(s, worker_id="bench-1")


@pytest.mark.usefixtures("database")
def test_a_study_none_of_whose_cells_can_run_is_not_a_success() -> None:
    with session() as s:
        model = catalogue.get_or_create_model(s, ARTIFACT, "m")
        study = queue.create_study(s, name="nothing", model=model, dataset=None, variants=["baseline"],
                               runtimes=["tensorrt"], batch_sizes=[1], settings={},
                               cells=[{"index": 0, "variant": "baseline", "chain": [], "runtime": "tensorrt",
                                       "batch_size": 1, "status": "unavailable", "reason": "no GPU"}]).id
    assert _row(study)["state"] == "not run"
