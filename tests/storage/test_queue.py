"""The job queue under contention: atomic claims, leases, requeue, results written with their status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, text, update

from storage import queue

from storage import tables

from storage import views
from storage.db import session
from storage.tables import Job, Result, Samples, utcnow
from tests.storage.helpers import make_study

ROOT = Path(__file__).resolve().parents[2]

CLAIMER = """
import sys
from storage import queue
from storage import tables
from storage import views
from storage.db import session
worker = sys.argv[1]
claimed = []
while True:
    with session() as s:
        job = queue.claim_job(s, worker, lease_s=60)
        if job is None:
            break
        job_id = job.id
    with session() as s:
        queue.finish_job(s, job_id, worker, "ok", result={"latency_ms": {"p50": 1.0}, "notes": [], "settings": {}})
    claimed.append(job_id)
print(" ".join(map(str, claimed)))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_four_workers_claim_200_jobs_each_exactly_once(database: str) -> None:
    study_id = make_study(200)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, f"w{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT) for i in range(4)]
    claimed: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "locked" not in err
        claimed += [int(x) for x in out.split()]
    assert len(claimed) == 200
    assert len(set(claimed)) == 200
    with session(write=False) as s:
        assert views.study_progress(s, study_id) == {"ok": 200}
        assert s.scalar(select(func.count()).select_from(Result)) == 200
        assert s.scalar(select(func.max(Job.attempts))) == 1
        assert s.get(tables.Study, study_id).finished_at is not None


def test_expired_lease_is_requeued_then_given_up(database: str) -> None:
    study_id = make_study(1)
    for attempt in (1, 2):
        with session() as s:
            job = queue.claim_job(s, f"dead-{attempt}", lease_s=60)
            assert job is not None and job.attempts == attempt
            s.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        with session() as s:
            queue.requeue_expired(s, lease_s=60)
    with session(write=False) as s:
        job = s.scalars(select(Job).where(Job.study_id == study_id)).one()
        assert job.status == "crashed" and job.error_type == "WorkerLost"
        assert s.get(tables.Study, study_id).finished_at is not None


def test_crash_is_retried_once_and_a_stale_worker_cannot_overwrite(database: str) -> None:
    make_study(1)
    with session() as s:
        job_id = queue.claim_job(s, "a", lease_s=60).id  # type: ignore[union-attr]
    with session() as s:
        assert queue.finish_job(s, job_id, "a", "crashed", error="killed by SIGSEGV") == "queued"
    with session() as s:
        assert queue.claim_job(s, "b", lease_s=60).id == job_id  # type: ignore[union-attr]
    with session() as s:
        assert queue.finish_job(s, job_id, "a", "ok", result={}) is None  # "a" lost the job
        assert queue.finish_job(s, job_id, "b", "crashed", error="killed by SIGSEGV") == "crashed"


def test_cancel_skips_queued_jobs_and_stops_lease_renewal(database: str) -> None:
    study_id = make_study(3)
    with session() as s:
        running = queue.claim_job(s, "w", lease_s=60).id  # type: ignore[union-attr]
    with session() as s:
        assert queue.cancel_study(s, study_id) == 2
    with session() as s:
        assert queue.extend_lease(s, running, "w", 60) is False
        assert queue.claim_job(s, "w2", lease_s=60) is None


WRITER = """
import numpy as np
from storage import queue
from storage import tables
from storage import views
from storage.db import session
samples = np.random.default_rng(0).random(200_000).astype(np.float32)
print("ready", flush=True)
while True:
    with session() as s:
        job = queue.claim_job(s, "writer", lease_s=60)
        if job is None:
            break
        job_id = job.id
    with session() as s:
        queue.finish_job(s, job_id, "writer", "ok", samples=samples,
                     result={"latency_ms": {"p50": 1.0}, "notes": ["x" * 1000] * 50, "settings": {}})
"""


def test_kill_9_during_result_writes_leaves_no_partial_rows(data_dir: Path) -> None:
    make_study(2000)
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with session(write=False) as s:
        assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        results = s.scalar(select(func.count()).select_from(Result))
        assert results > 0, "the writer wrote nothing before it was killed"
        orphans = s.scalar(select(func.count()).select_from(Result).join(Job, Job.id == Result.job_id)
                           .where(Job.status != "ok"))
        assert orphans == 0
        assert s.scalar(select(func.count()).select_from(Samples)) == results
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "ok")) == results
        blob = s.scalars(select(Samples.data)).first()
        assert np.frombuffer(blob, dtype="<f4").size == 200_000
