"""The worker with real processes: crashes, hangs, memory blow-ups, kill -9, SIGTERM and cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from engine.artifacts import intake
from engine.measure.latency import MeasureSettings
from engine.plan import StudySettings
from storage import db
from engine.report import source
from storage import queue
from storage import tables
from storage.db import session
from storage.tables import Job
from tests.storage.helpers import make_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_engines() -> Any:
    db.reset()
    yield
    db.reset()


def settings(**overrides: Any) -> dict[str, Any]:
    base = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.05, rounds=0), threads=1,
                         timeout_s=overrides.pop("timeout_s", 60), memory_limit_mb=overrides.pop("memory_mb", 2048))
    return base.to_json()


def worker(data_dir: Path, *args: str, lease_s: float = 30, slow_s: float = 3) -> subprocess.Popen[str]:
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "PARETOSCOPE_PLUGINS": "tests.engine.runtime_doubles",
           "PARETOSCOPE_WORKER_LEASE_S": str(lease_s), "PARETOSCOPE_TEST_SLOW_S": str(slow_s)}
    return subprocess.Popen([sys.executable, "-m", "engine", "worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def jobs(study_id: int) -> list[Job]:
    with session(write=False) as s:
        return list(s.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.cell)))


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_pids_dead(data_dir: Path) -> None:
    folder = data_dir / "test-pids"
    pids = [int(p.name) for p in folder.iterdir()] if folder.exists() else []
    for pid in pids:
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"process {pid} outlived its job"


def test_crash_hang_and_memory_blowup_become_rows(data_dir: Path, mlp_onnx: Path) -> None:
    artifact = intake(mlp_onnx).to_json()
    # Only the hang gets a short limit, in a study of its own: it times out however slowly a loaded machine
    # starts its interpreter, while the crash, the memory blow-up and the real cell get time to start and
    # end the way they do (a 3 s limit shared by all once made the memory hog time out on a busy CI box).
    study_id = make_study(3, ["test-segfault", "test-greedy", "onnxruntime"],
                          settings=settings(timeout_s=300, memory_mb=1024), artifact=artifact)
    hang_study = make_study(1, ["test-hang"], settings=settings(timeout_s=5), artifact=artifact)
    proc = worker(data_dir, "--until-idle")
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    segv, greedy, fine = jobs(study_id)
    (hang,) = jobs(hang_study)
    assert (segv.status, segv.error_type, segv.attempts) == ("crashed", "SIGSEGV", 2)
    assert "SIGSEGV" in (segv.error_message or "")
    assert (hang.status, hang.attempts) == ("timeout", 2)
    assert greedy.status == "oom" and greedy.attempts == 1, greedy.error_message
    assert fine.status == "ok"
    assert_pids_dead(data_dir)
    with session(write=False) as s:
        assert s.get(tables.Study, study_id).finished_at is not None
        assert s.get(tables.Study, hang_study).finished_at is not None
        rows = source.study_results(s, study_id)
    assert [r.status for r in rows] == ["crashed", "oom", "ok"]
    assert rows[2].latency_ms is not None and rows[2].latency_ms.p50 and rows[2].latency_ms.p50 > 0


def test_kill_9_of_a_worker_requeues_its_job_once(data_dir: Path, mlp_onnx: Path) -> None:
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(2, ["test-slow", "onnxruntime"], settings=settings(), artifact=artifact)
    first = worker(data_dir, lease_s=2, slow_s=4)
    wait_for(lambda: jobs(study_id)[0].status == "running", what="the first job to start")
    children = psutil.Process(first.pid).children(recursive=True)
    first.kill()
    first.wait()
    for child in children:  # the orphaned cell process: a killed worker cannot stop it
        child.kill()
    second = worker(data_dir, "--until-idle", lease_s=2, slow_s=0)
    _out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    slow, fine = jobs(study_id)
    assert (slow.status, slow.attempts) == ("ok", 2)
    assert fine.status == "ok"
    with session(write=False) as s:
        rows = source.study_results(s, study_id)
    assert len(rows) == 2 and all(r.latency_ms is not None for r in rows)


def test_sigterm_stops_the_child_requeues_the_job_and_exits_cleanly(data_dir: Path, mlp_onnx: Path) -> None:
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(1, ["test-hang"], settings=settings(timeout_s=120), artifact=artifact)
    proc = worker(data_dir)
    wait_for(lambda: (data_dir / "test-pids").exists() and any((data_dir / "test-pids").iterdir()),
             what="the cell's process to start")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    (job,) = jobs(study_id)
    assert job.status == "queued" and job.attempts == 0 and job.worker_id is None
    assert_pids_dead(data_dir)


def test_cancelling_a_study_stops_its_running_job_and_skips_the_rest(data_dir: Path, mlp_onnx: Path) -> None:
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(3, ["test-hang", "onnxruntime", "onnxruntime"], settings=settings(timeout_s=120),
                          artifact=artifact)
    proc = worker(data_dir, "--until-idle", lease_s=3)
    wait_for(lambda: jobs(study_id)[0].status == "running", what="the first job to start")
    with session() as s:
        queue.cancel_study(s, study_id)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [j.status for j in jobs(study_id)] == ["cancelled", "cancelled", "cancelled"]
    assert_pids_dead(data_dir)


def test_queued_jobs_wait_until_a_worker_starts(data_dir: Path, mlp_onnx: Path) -> None:
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(2, "onnxruntime", settings=settings(), artifact=artifact)
    time.sleep(0.5)
    assert [j.status for j in jobs(study_id)] == ["queued", "queued"]
    proc = worker(data_dir, "--max-jobs", "1")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sorted(j.status for j in jobs(study_id)) == ["ok", "queued"]
    with session(write=False) as s:
        assert s.get(tables.Study, study_id).reference is not None  # computed once, kept for the next cell


def test_dashboard_starts_one_local_worker_when_none_is_alive(data_dir: Path, mlp_onnx: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.worker import ensure_local_worker

    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(1, "onnxruntime", settings=settings(), artifact=artifact)
    monkeypatch.delenv("PARETOSCOPE_NO_AUTO_WORKER")
    pid = ensure_local_worker()
    assert pid is not None
    try:
        assert ensure_local_worker() is None  # still starting: not a second one
        wait_for(lambda: jobs(study_id)[0].status == "ok", what="the auto-started worker to run the job")
        with session(write=False) as s:
            assert len(queue.live_workers(s)) == 1
        assert ensure_local_worker() is None
    finally:
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(30)


def test_a_stop_signal_inside_a_database_call_reaches_the_worker_unwrapped(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM's handler raises wherever the main thread is; inside SQLAlchemy an Exception would come back as a
    StatementError and the worker would die with a traceback instead of requeueing its job."""
    from sqlalchemy import text
    from sqlalchemy.engine import default

    from engine.worker import WorkerStopping

    with session(write=False) as s:
        s.execute(text("select 1"))  # the engine exists and the schema is up before the signal "arrives"
    original = default.DefaultExecutionContext.create_cursor

    def interrupted(self: Any) -> Any:  # where a SIGTERM landed in a real run: SQLAlchemy opening a cursor
        raise WorkerStopping("SIGTERM")

    monkeypatch.setattr(default.DefaultExecutionContext, "create_cursor", interrupted)
    with pytest.raises(WorkerStopping), session() as s:
        s.execute(text("select 1"))
    monkeypatch.setattr(default.DefaultExecutionContext, "create_cursor", original)
    with session(write=False) as s:  # the connection pool is still usable afterwards
        assert s.execute(text("select 1")).scalar() == 1


def test_a_cells_progress_moves_forward_through_its_phases() -> None:
    from engine.study import cell_fraction

    seen = [cell_fraction("queued", None, None), cell_fraction("running", None, float("nan")),
            cell_fraction("running", "reference outputs", 0.5), cell_fraction("running", "building int8-static", 0),
            cell_fraction("running", "exporting to ONNX", 0.5), cell_fraction("running", "loading", 0.0),
            cell_fraction("running", "warming up", 0.0), cell_fraction("running", "measuring", 0.5),
            cell_fraction("running", "measuring", 1.0), cell_fraction("running", "accuracy", 0.0),
            cell_fraction("running", "interleaved rounds", 0.5), cell_fraction("running", "profiling", 0.0),
            cell_fraction("ok", None, None)]
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0


def test_a_cell_dies_with_its_worker(data_dir: Path, mlp_onnx: Path) -> None:
    """kill -9 of a worker during a hanging cell: the cell goes too (parent-death signal), so it never times
    on the machine beside the job's retry."""
    artifact = intake(mlp_onnx).to_json()
    make_study(1, ["test-hang"], settings=settings(timeout_s=600), artifact=artifact)
    first = worker(data_dir)
    pids = data_dir / "test-pids"  # the hanging runtime leaves its pid there once it hangs
    wait_for(lambda: pids.exists() and any(pids.iterdir()), timeout=120, what="the cell to hang")
    cells = [psutil.Process(int(p.name)) for p in pids.iterdir()]
    first.kill()
    first.wait()
    _gone, alive = psutil.wait_procs(cells, timeout=60)
    for process in alive:
        process.kill()
    assert not alive, f"{len(alive)} process(es) of the job outlived its worker"


def test_a_failed_heartbeat_is_retried_not_the_end_of_the_thread(data_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from sqlalchemy.exc import OperationalError

    from engine.worker import Worker

    calls: list[int] = []
    second = threading.Event()

    def beat() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE workers", {}, Exception("database or disk is full"))
        second.set()

    worker = Worker(heartbeat_s=0.01)
    monkeypatch.setattr(worker, "_beat", beat)
    thread = threading.Thread(target=worker._heartbeat_loop, daemon=True)
    thread.start()
    assert second.wait(60), "the heartbeat thread died with its first database error"
    worker._stop.set()
    thread.join(60)
