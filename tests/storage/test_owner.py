"""Owned studies (`bench`): only the owner claims their jobs, and an owner that is gone lets them go."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from storage import catalogue

from storage import queue
from storage.db import session
from storage.tables import Study, Worker, utcnow
from tests.storage.helpers import ARTIFACT, make_study

OWNER = "bench-host-4242-a1b2c3"
LEASE_S = 30.0


def owned_study(n_jobs: int, owner: str = OWNER) -> int:
    """A study of `n_jobs` queued cells, owned from the transaction that creates it."""
    cells = [{"index": i, "variant": "baseline", "chain": [], "runtime": "onnxruntime", "batch_size": 1,
              "status": "pending", "reason": None} for i in range(n_jobs)]
    with session() as s:
        model = catalogue.get_or_create_model(s, ARTIFACT, "model.onnx")
        study = queue.create_study(s, name="owned", model=model, dataset=None, variants=["baseline"],
                               runtimes=["onnxruntime"], batch_sizes=[1], settings={"timeout_s": 60}, cells=cells,
                               owner=owner)
        return study.id


def claim(worker_id: str, study_id: int | None = None) -> tuple[int, int] | None:
    """(study id, job id) of the job the worker claims, or None."""
    with session() as s:
        job = queue.claim_job(s, worker_id, lease_s=60, study_id=study_id)
        return (job.study_id, job.id) if job is not None else None


def owner_of(study_id: int) -> str | None:
    with session(write=False) as s:
        study = s.get(Study, study_id)
        assert study is not None
        return study.owner


def test_only_the_owner_claims_an_owned_studys_jobs(database: str) -> None:
    owned = owned_study(2)
    foreign = make_study(1, name="foreign")  # queued after the owned study: a general worker still skips to it
    picked = claim("general")
    assert picked is not None and picked[0] == foreign
    assert claim("general") is None
    assert claim("general", study_id=owned) is None  # naming the study does not bypass its owner
    first, second = claim(OWNER, study_id=owned), claim(OWNER)
    assert first is not None and second is not None and {first[0], second[0]} == {owned}
    assert claim(OWNER) is None


def test_released_study_becomes_ordinary_queue_work(database: str) -> None:
    owned = owned_study(2)
    assert claim(OWNER, study_id=owned) is not None
    with session() as s:
        queue.release_study(s, owned, "someone-else")  # only the owner lets go
    assert owner_of(owned) == OWNER
    with session() as s:
        queue.release_study(s, owned, OWNER)
    assert owner_of(owned) is None
    picked = claim("general")
    assert picked is not None and picked[0] == owned


def _backdate(study_id: int, seconds: float) -> None:
    with session() as s:
        s.execute(update(Study).where(Study.id == study_id).values(created_at=utcnow() - timedelta(seconds=seconds)))


def _worker_row(worker_id: str, heartbeat_age_s: float, status: str = "busy") -> None:
    with session() as s:
        s.add(Worker(id=worker_id, hostname="host", pid=4242, status=status,
                     heartbeat_at=utcnow() - timedelta(seconds=heartbeat_age_s)))


def _requeue_expired() -> None:
    with session() as s:
        queue.requeue_expired(s, LEASE_S)


def test_owner_killed_before_its_worker_registered_is_released_after_one_lease(database: str) -> None:
    """kill -9 between storing the study and starting the worker: no worker row ever appears."""
    fresh, old = owned_study(1, owner="never-registered-1"), owned_study(1, owner="never-registered-2")
    _backdate(old, 2 * LEASE_S)
    _requeue_expired()
    assert owner_of(fresh) == "never-registered-1"  # still within its grace: its worker may be starting
    assert owner_of(old) is None
    picked = claim("general")
    assert picked is not None and picked[0] == old


def test_owner_without_a_live_heartbeat_is_released(database: str) -> None:
    """kill -9 of a running bench: its worker row stops beating; a worker that stopped cleanly counts as gone."""
    alive, killed, stopped = owned_study(1, "alive"), owned_study(1, "killed"), owned_study(1, "stopped")
    _worker_row("alive", heartbeat_age_s=1)
    _worker_row("killed", heartbeat_age_s=2 * LEASE_S)
    _worker_row("stopped", heartbeat_age_s=1, status="stopped")
    for study_id in (alive, killed, stopped):
        _backdate(study_id, 10 * LEASE_S)  # a long run: the grace for a missing row is long over
    _requeue_expired()
    assert owner_of(alive) == "alive"
    assert owner_of(killed) is None and owner_of(stopped) is None
    claimed = [claim("general") for _ in range(3)]
    assert claimed[2] is None
    assert {picked[0] for picked in claimed[:2] if picked is not None} == {killed, stopped}
